"""The `initialize` handshake (1.x SDK, sessions on the node): resource subscriptions pushed
from the event hub, a restarted server's session-not-found, a server killed during a claim wait."""

from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime
from typing import Any

import anyio
import pytest

from conftest import MODERN, call_ok, http, is_error, mcp_url, run, session, structured

pytestmark = pytest.mark.skipif(MODERN, reason="the initialize handshake is the 1.x SDK's")


def test_a_job_subscription_is_notified_of_its_completion(ferry_server) -> None:
    server = ferry_server
    status, job = http(server, "POST", "/v1/jobs", {"queue": "sub", "payload": {"n": 1}})
    assert status == 201
    uri = f"ferry://jobs/{job['id']}"
    status, claimed = http(server, "POST", "/v1/queues/sub/claim", {"worker": "w"})
    [lease] = [j["lease"] for j in claimed["jobs"]]
    updates: list[tuple[float, str]] = []
    got = anyio.Event()

    async def on_message(message: Any) -> None:
        root = getattr(message, "root", None)
        if getattr(root, "method", None) == "notifications/resources/updated":
            updates.append((time.monotonic(), str(root.params.uri)))
            got.set()

    marks: dict[str, float] = {}

    async def main() -> None:
        from pydantic import AnyUrl

        async with session(mcp_url(server), server.token, message_handler=on_message) as s:
            caps = s.get_server_capabilities()
            assert caps is not None and caps.resources is not None and caps.resources.subscribe, caps
            await s.subscribe_resource(AnyUrl(uri))
            await anyio.sleep(0.3)
            assert updates == [], f"notified before anything changed: {updates}"
            marks["before"] = time.monotonic()
            status, done = await anyio.to_thread.run_sync(
                lambda: http(server, "POST", f"/v1/jobs/{job['id']}/complete", {"lease": lease, "result": 1})
            )
            marks["after"] = time.monotonic()
            assert status == 200, done
            with anyio.move_on_after(1.0):
                await got.wait()
            # Reading it now shows the change.
            r = await s.read_resource(AnyUrl(uri))
            assert json.loads(r.contents[0].text)["state"] == "completed"

    run(main)
    assert updates, "no notifications/resources/updated within 1 s of the completion"
    when, which = updates[0]
    assert which == uri
    assert marks["before"] <= when <= marks["after"] + 1.0, (marks, updates)


def test_a_restarted_server_answers_session_not_found_then_a_new_session_works(ferry_server) -> None:
    server = ferry_server
    statuses: list[tuple[str, int]] = []

    async def on_response(response: Any) -> None:
        statuses.append((response.request.method, response.status_code))

    async def main() -> None:
        async with session(mcp_url(server), server.token, event_hooks={"response": [on_response]}) as s:
            await call_ok(s, "queues_stats")
            await anyio.to_thread.run_sync(server.restart)
            statuses.clear()
            with anyio.fail_after(10):
                try:
                    r = await s.call_tool("queues_stats", {})
                except Exception as e:  # the 1.x client raises McpError("Session terminated")
                    failure: Any = e
                else:
                    failure = r if is_error(r) else None
            assert failure is not None, "the old session still answered after a restart"
            assert ("POST", 404) in statuses, f"expected HTTP 404 (session not found), saw {statuses}"
        # The client starts over: a new handshake, a new session.
        async with session(mcp_url(server), server.token) as s:
            assert "queues" in await call_ok(s, "queues_stats")

    run(main)


def stamp(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def test_a_server_killed_during_a_claim_wait_loses_no_job(ferry_server) -> None:
    """SIGKILL while a `jobs_claim` waits (a job arriving as it dies): after a restart, any job the
    wait took is ready again once its lease ends, and a new session claims it."""
    server = ferry_server
    lease_ms = 1500
    outcome: dict[str, Any] = {}

    async def main() -> None:
        async with session(mcp_url(server), server.token) as s:
            await s.list_tools()

            async def claim() -> None:
                # The 1.x client does not notice the connection dying under a streamed answer: it
                # would wait forever, so the wait is bounded here.
                try:
                    with anyio.fail_after(3):
                        r = await s.call_tool(
                            "jobs_claim", {"queue": "k", "worker": "doomed", "wait_ms": 10000, "lease_ms": lease_ms}
                        )
                    outcome["result"] = structured(r)
                except BaseException as e:  # the connection dies with the server
                    outcome["error"] = e
                    if not isinstance(e, Exception):
                        raise

            async with anyio.create_task_group() as tg:
                tg.start_soon(claim)
                await anyio.sleep(0.3)

                def enqueue_and_kill() -> None:
                    status, job = http(server, "POST", "/v1/jobs", {"queue": "k", "payload": {"x": 1}})
                    assert status == 201
                    outcome["job"] = job["id"]
                    server.kill()

                await anyio.to_thread.run_sync(enqueue_and_kill)

    with contextlib.suppress(Exception):  # the session's transport may fail with the server
        run(main)
    assert "job" in outcome, outcome
    assert (
        "result" not in outcome
        or outcome["result"]["jobs"] == []
        or outcome["result"]["jobs"][0]["id"] == outcome["job"]
    ), outcome
    job_id = outcome["job"]
    server.restart()
    restarted = time.monotonic()
    status, job = http(server, "GET", f"/v1/jobs/{job_id}")
    assert status == 200, job
    if job["state"] == "running":
        # Taken by the dead wait: held no longer than its lease.
        assert job["worker"] == "doomed", job
        held = stamp(job["lease_expires_at"]) - stamp(job["started_at"])
        assert abs(held - lease_ms / 1000) < 0.5, job

    async def again() -> None:
        async with session(mcp_url(server), server.token) as s:
            r = await call_ok(s, "jobs_claim", {"queue": "k", "worker": "fresh", "wait_ms": lease_ms + 3000})
            outcome["claimed"] = r["jobs"]

    run(again)
    assert [j["id"] for j in outcome["claimed"]] == [job_id], outcome
    assert time.monotonic() - restarted < lease_ms / 1000 + 3.5
