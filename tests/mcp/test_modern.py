"""The 2026-07-28 revision (2.x SDK, stateless): a waiting call cancelled by its client ends at
once and leaves nothing leased; two agents with least-privilege tokens coordinate through MCP
alone (on PostgreSQL, each on its own node)."""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from ferry.testing import FerryServer
from ferry.testing._server import _free_port, find_binary

from conftest import MODERN, call_ok, error_of, http, mcp_url, new_token, run, session

pytestmark = pytest.mark.skipif(not MODERN, reason="the 2026-07-28 revision needs the 2.x SDK")


def metric(server: Any, name: str, **labels: str) -> float:
    """One sample of `/metrics` (0 when absent)."""
    req = urllib.request.Request(server.url + "/metrics")
    req.add_header("Authorization", f"Bearer {server.token}")
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read().decode()
    for line in body.splitlines():
        m = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    return 0.0


def test_a_cancelled_claim_wait_ends_at_once_and_leaves_nothing_leased(ferry_server) -> None:
    server = ferry_server
    timings: dict[str, float] = {}

    async def main() -> None:
        async with session(mcp_url(server), server.token) as c:
            await c.list_tools()  # the client checks results against the listed output schemas

            async def claim() -> None:
                timings["started"] = time.monotonic()
                await c.call_tool("jobs_claim", {"queue": "cq", "worker": "w", "wait_ms": 10000, "lease_ms": 60000})
                timings["returned"] = time.monotonic()

            async with anyio.create_task_group() as tg:
                tg.start_soon(claim)
                await anyio.sleep(0.1)
                timings["cancelled"] = time.monotonic()
                tg.cancel_scope.cancel()
            timings["ended"] = time.monotonic()
            assert "returned" not in timings, "the claim answered instead of being cancelled"
            assert timings["ended"] - timings["cancelled"] < 0.2, timings
            # The session goes on serving.
            await call_ok(c, "queues_stats")

    run(main)
    # The server ended its wait too: the call is recorded, about 100 ms long, not 10 s.
    deadline = time.monotonic() + 2
    while metric(server, "ferry_mcp_tool_call_duration_seconds_count", tool="jobs_claim") < 1:
        assert time.monotonic() < deadline, "the cancelled claim is still waiting on the server"
        time.sleep(0.02)
    took = metric(server, "ferry_mcp_tool_call_duration_seconds_sum", tool="jobs_claim")
    assert took < 0.3, f"the server waited {took:.3f} s after a cancel at 0.1 s"
    # A job enqueued now is not taken by the abandoned wait: ready, never started, and a fresh
    # claim gets it.
    status, job = http(server, "POST", "/v1/jobs", {"queue": "cq", "payload": {"after": "cancel"}})
    assert status == 201
    time.sleep(0.2)
    status, queues = http(server, "GET", "/v1/queues")
    counts = next(q["counts"] for q in queues["queues"] if q["queue"] == "cq")
    assert (counts["running"], counts["ready"]) == (0, 1), counts
    status, seen = http(server, "GET", f"/v1/jobs/{job['id']}")
    assert seen["state"] == "ready" and seen["attempt"] == 0 and "started_at" not in seen, seen
    status, claimed = http(server, "POST", "/v1/queues/cq/claim", {"worker": "fresh"})
    assert [j["id"] for j in claimed["jobs"]] == [job["id"]], claimed


@contextlib.contextmanager
def second_node(first: FerryServer) -> Iterator[FerryServer]:
    """Another `ferry serve` on `first`'s PostgreSQL database (its own data directory and port)."""
    tmp = Path(tempfile.mkdtemp(prefix="ferry-test-node-"))
    (tmp / "data").mkdir()
    node = FerryServer(
        binary=find_binary(),
        tmp_dir=tmp,
        port=_free_port(),
        database_url=first.database_url,
        pg_admin_url=None,
        pg_database=None,
        config_path=None,
        serve_args=[],
    )
    node.token = first.token
    try:
        node._launch(60.0, new_port_on_conflict=True)
        yield node
    finally:
        node.close()


def test_two_agents_coordinate_through_mcp_alone(ferry_server_any) -> None:
    """A (produce, read, items) files a task as a work item and a job pointing at it, then sleeps
    in `events_wait`; B (work, read, items) claims the job, works the item, completes the job with
    a result; A wakes within 1 s and reads the result and the item. Each has only its token and
    MCP; on PostgreSQL each talks to its own node."""
    node_a = ferry_server_any
    token_a, _ = new_token(node_a, ["produce", "read", "items"])
    token_b, _ = new_token(node_a, ["work", "read", "items"])
    with contextlib.ExitStack() as stack:
        # (Started after the tokens exist: a node learns of a token minted elsewhere on its next
        # reload of the token table.)
        node_b = stack.enter_context(second_node(node_a)) if node_a.database_url else node_a
        _agents(node_a, node_b, token_a, token_b)


def _agents(node_a: Any, node_b: Any, token_a: str, token_b: str) -> None:
    marks: dict[str, float] = {}
    seen: dict[str, Any] = {}

    async def agent_a(ready: anyio.Event, filed: dict[str, Any]) -> None:
        async with session(mcp_url(node_a), token_a) as a:
            item = (
                await call_ok(
                    a,
                    "items_create",
                    {"title": "Summarize the incident", "agent": "alice", "context": {"incident": 42}},
                )
            )["item"]
            # A may not do B's part.
            assert error_of(await a.call_tool("jobs_claim", {"queue": "tasks", "worker": "a"}))["code"] == "forbidden"
            cursor = (await call_ok(a, "events_wait", {"wait_ms": 0}))["next_cursor"]
            job = await call_ok(a, "jobs_enqueue", {"queue": "tasks", "payload": {"item": item["id"]}})
            filed.update(item=item["id"], job=job["id"])
            ready.set()
            waited = await call_ok(
                a, "events_wait", {"since": cursor, "job_id": job["id"], "type": "job.completed", "wait_ms": 10000}
            )
            marks["woke"] = time.monotonic()
            assert [e["type"] for e in waited["events"]] == ["job.completed"], waited
            seen["job"] = await call_ok(a, "jobs_get", {"id": job["id"]})
            seen["item"] = (await call_ok(a, "items_get", {"id": item["id"]}))["item"]

    async def agent_b(ready: anyio.Event, filed: dict[str, Any]) -> None:
        async with session(mcp_url(node_b), token_b) as b:
            await b.list_tools()
            # B may not file work.
            assert error_of(await b.call_tool("jobs_enqueue", {"queue": "tasks"}))["code"] == "forbidden"
            await ready.wait()
            await anyio.sleep(0.3)  # A is asleep in events_wait by now
            [job] = (await call_ok(b, "jobs_claim", {"queue": "tasks", "worker": "bob", "wait_ms": 5000}))["jobs"]
            assert job["id"] == filed["job"]
            item_id = job["payload"]["item"]
            item = (await call_ok(b, "items_get", {"id": item_id}))["item"]
            assert item["context"] == {"incident": 42}
            moved = await call_ok(
                b,
                "items_update",
                {
                    "id": item_id,
                    "expected_version": item["version"],
                    "status": "in_progress",
                    "assignee": "bob",
                    "agent": "bob",
                },
            )
            done = await call_ok(
                b,
                "items_update",
                {
                    "id": item_id,
                    "expected_version": moved["item"]["version"],
                    "status": "done",
                    "agent": "bob",
                    "context": {"summary": "disk full"},
                },
            )
            assert done["item"]["status"] == "done"
            await call_ok(
                b,
                "jobs_complete",
                {"id": job["id"], "lease": job["lease"], "result": {"summary": "disk full", "item": item_id}},
            )
            marks["completed"] = time.monotonic()

    async def main() -> None:
        ready = anyio.Event()
        filed: dict[str, Any] = {}
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(agent_a, ready, filed)
                tg.start_soon(agent_b, ready, filed)

    run(main)
    assert marks["woke"] - marks["completed"] < 1.0, marks
    assert seen["job"]["state"] == "completed" and seen["job"]["result"] == {
        "summary": "disk full",
        "item": seen["item"]["id"],
    }
    assert (seen["item"]["status"], seen["item"]["assignee"], seen["item"]["context"]["summary"]) == (
        "done",
        "bob",
        "disk full",
    )


def test_a_listen_subscription_hears_of_its_job_and_only_of_it(ferry_server_any) -> None:
    """`subscriptions/listen` (2026-07-28): a stream subscribed to `ferry://jobs/{id}` is told
    within 1 s that the job completed, and nothing of another job's changes."""
    server = ferry_server_any

    async def main() -> None:
        async with session(mcp_url(server), server.token) as c:
            job = await call_ok(c, "jobs_enqueue", {"queue": "lq", "payload": {"n": 1}})
            other = await call_ok(c, "jobs_enqueue", {"queue": "lq2", "payload": {"n": 2}})
            uri = f"ferry://jobs/{job['id']}"
            [claimed] = (await call_ok(c, "jobs_claim", {"queue": "lq", "worker": "w"}))["jobs"]
            async with c.listen(resource_subscriptions=[uri, "ferry://nothing/here"]) as sub:
                assert sub.honored.resource_subscriptions == [uri], sub.honored
                # Another job's change first: it must not reach this stream.
                await call_ok(c, "jobs_cancel", {"id": other["id"]})
                with anyio.move_on_after(0.3) as quiet:
                    stray = await sub.__anext__()
                    raise AssertionError(f"another job's change reached the stream: {stray}")
                assert quiet.cancelled_caught
                completed_at = time.monotonic()
                await call_ok(c, "jobs_complete", {"id": claimed["id"], "lease": claimed["lease"]})
                with anyio.fail_after(1):
                    event = await sub.__anext__()
                assert getattr(event, "uri", None) == uri, event
                assert time.monotonic() - completed_at < 1

    run(main)
