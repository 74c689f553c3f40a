"""The LangGraph checkpoint store against the real server (SQLite, and PostgreSQL when
configured): the client's checkpoint methods (new, duplicate, replaced and `If-None-Match`
puts, a version with no blob, writes kept once or replaced, listing by thread, namespace,
metadata containment, `before`, pages, threads read, patched, deleted and copied, pruning,
deleting runs, input checks), LangGraph's conformance suite on both savers, real graphs
(subgraphs, interrupt and resume, a fork from a past checkpoint, parallel tasks failing and
retried) giving the same states and history as `InMemorySaver`, a `DeltaChannel` graph read
the same after pruning, one large unchanged channel stored once, lease fencing, concurrent
writers, and a thread imported from a `SqliteSaver` file; and what the methods send (no
server).

Scale with FERRY_CP_DEDUP_STEPS (default 1000), FERRY_CP_CLIENTS (32), FERRY_CP_THREADS (200),
FERRY_CP_STEPS (50), the issue's sizes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import operator
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, TypeVar

import pytest

pytest.importorskip("langgraph.checkpoint.conformance", reason="needs the langgraph-test extra")

from langgraph.checkpoint.base import BaseCheckpointSaver, Checkpoint
from langgraph.checkpoint.base.id import uuid6
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, RetryPolicy, interrupt
from typing_extensions import TypedDict

import ferry
from ferry._http import ALWAYS, REFUSED
from ferry.langgraph import AsyncFerrySaver, FerrySaver
from ferry.testing import FerryServer

pytestmark = pytest.mark.timeout(180)

DEDUP_STEPS = int(os.environ.get("FERRY_CP_DEDUP_STEPS", "1000"))
CLIENTS = int(os.environ.get("FERRY_CP_CLIENTS", "32"))
THREADS = int(os.environ.get("FERRY_CP_THREADS", "200"))
STEPS = int(os.environ.get("FERRY_CP_STEPS", "50"))

MIB = 1 << 20
T = TypeVar("T")


def _tid(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _blob(channel: str, version: str, data: bytes = b"v", type: str = "msgpack") -> dict[str, Any]:
    return {"channel": channel, "version": version, "type": type, "data": data}


def _put(c: ferry.Client, thread: str, cid: str, **kw: Any) -> dict[str, Any]:
    """A put with defaults: one channel `x` at version 1."""
    args: dict[str, Any] = {
        "checkpoint": ("msgpack", b"body-" + cid.encode()),
        "metadata": {"source": "loop", "step": 0},
        "channel_versions": {"x": "1"},
        "blobs": [_blob("x", "1")],
    }
    args.update(kw)
    return dict(c.put_checkpoint(thread, cid, **args))


def _ids(rows: Any) -> list[str]:
    return [r["checkpoint_id"] for r in rows]


# ---- client methods ----------------------------------------------------------------------------


def test_a_put_is_new_then_a_duplicate_replaced_or_refused(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    t = _tid()
    first = _put(c, t, "cp-1")
    assert (first["thread"], first["ns"], first["checkpoint_id"]) == (t, "", "cp-1")
    assert first["blobs_written"] == 1 and not first.get("duplicate") and not first.get("replaced")

    again = _put(c, t, "cp-1")
    assert again["duplicate"] is True and again["blobs_written"] == 0
    assert _put(c, t, "cp-1", if_none_match=True)["duplicate"] is True, "the same content is no conflict"

    with pytest.raises(ferry.Conflict) as info:
        _put(c, t, "cp-1", metadata={"source": "loop", "step": 9}, if_none_match=True)
    assert (info.value.status, info.value.code) == (409, "conflict")
    assert c.get_checkpoint(t, "cp-1")["metadata"] == {"source": "loop", "step": 0}, "nothing written"

    replaced = _put(c, t, "cp-1", metadata={"source": "loop", "step": 9})
    assert replaced["replaced"] is True
    got = c.get_checkpoint(t, "cp-1")
    assert got["metadata"] == {"source": "loop", "step": 9}
    assert got["checkpoint"] == {"type": "msgpack", "data": b"body-cp-1"}, "data comes back as bytes"
    assert got["blobs"] == [{"channel": "x", "version": "1", "type": "msgpack", "data": b"v"}]
    assert got["parent_checkpoint_id"] is None and got["pending_writes"] == []
    assert got["bytes"] > 0 and got["created_at"]


def test_every_version_needs_a_blob_sent_or_stored(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    t = _tid()
    _put(
        c,
        t,
        "cp-1",
        channel_versions={"x": "1", "e": "1"},
        blobs=[_blob("x", "1"), _blob("e", "1", b"", "empty")],
    )
    with pytest.raises(ferry.ValidationFailed) as info:
        _put(c, t, "cp-2", parent_checkpoint_id="cp-1", channel_versions={"x": "1", "y": 2}, blobs=[])
    err = info.value
    assert (err.status, err.field) == (422, "blobs")
    assert (err.details or {})["missing"] == [{"channel": "y", "version": "2"}]
    with pytest.raises(ferry.NotFound):
        c.get_checkpoint(t, "cp-2")

    # x@1 was stored by cp-1: only the new version is sent; an int version becomes a string.
    out = _put(
        c,
        t,
        "cp-2",
        parent_checkpoint_id="cp-1",
        channel_versions={"x": "1", "y": 2},
        blobs=[_blob("y", "2", b"why")],
    )
    assert out["blobs_written"] == 1
    got = c.get_checkpoint(t, "latest")
    assert got["checkpoint_id"] == "cp-2" and got["parent_checkpoint_id"] == "cp-1"
    assert got["channel_versions"] == {"x": "1", "y": "2"}
    assert sorted((b["channel"], b["version"], b["data"]) for b in got["blobs"]) == [
        ("x", "1", b"v"),
        ("y", "2", b"why"),
    ]
    # An `empty` blob is a version with no value: returned as such.
    first = c.get_checkpoint(t, "cp-1")
    assert {b["channel"]: b["type"] for b in first["blobs"]} == {"x": "msgpack", "e": "empty"}


def test_writes_are_kept_once_and_special_channels_replace(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    t = _tid()
    w = c.put_checkpoint_writes  # writes may come before their checkpoint
    regular = [
        {"channel": "a", "type": "msgpack", "data": b"1"},
        {"channel": "b", "type": "msgpack", "data": b"2"},
    ]
    assert w(t, "cp-1", task_id="task-b", writes=regular, task_path="~1") == {"written": 2}
    assert w(t, "cp-1", task_id="task-b", writes=regular, task_path="~1") == {"written": 0, "duplicate": True}
    changed = [{"channel": "a", "type": "msgpack", "data": b"X"}]
    assert w(t, "cp-1", task_id="task-b", writes=changed, task_path="~1")["duplicate"] is True, "kept once"

    err1 = [{"channel": "__error__", "type": "msgpack", "data": b"e1"}]
    assert w(t, "cp-1", task_id="task-a", writes=err1, task_path="~2")["written"] == 1
    err2 = [{"channel": "__error__", "type": "msgpack", "data": b"e2"}]
    assert w(t, "cp-1", task_id="task-a", writes=err2, task_path="~2")["written"] == 1, "specials replace"
    intr = [
        {"channel": "__interrupt__", "type": "msgpack", "data": b"i"},
        {"channel": "c", "type": "json", "data": b"3"},
    ]
    w(t, "cp-1", task_id="task-a", writes=intr, task_path="~2")
    explicit = [{"channel": "d", "type": "msgpack", "data": b"4", "idx": 7}]
    w(t, "cp-1", task_id="task-c", writes=explicit)

    _put(c, t, "cp-1")
    got = c.get_checkpoint(t, "cp-1")["pending_writes"]
    assert [(p["task_path"], p["task_id"], p["idx"], p["channel"], p["type"], p["data"]) for p in got] == [
        ("", "task-c", 7, "d", "msgpack", b"4"),
        ("~1", "task-b", 0, "a", "msgpack", b"1"),
        ("~1", "task-b", 1, "b", "msgpack", b"2"),
        ("~2", "task-a", -3, "__interrupt__", "msgpack", b"i"),
        ("~2", "task-a", -1, "__error__", "msgpack", b"e2"),
        ("~2", "task-a", 1, "c", "json", b"3"),
    ]
    other_ns = c.put_checkpoint_writes(t, "cp-1", task_id="task-b", writes=regular, ns="child:1")
    assert other_ns == {"written": 2}, "writes are kept per namespace"


def test_checkpoints_are_listed_by_thread_namespace_metadata_and_pages(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    a, b = _tid("a"), _tid("b")
    for i in range(1, 5):
        md = {
            "source": "input" if i % 2 else "loop",
            "step": i,
            "run_id": "r",
            "tags": ["x", f"t{i}"],
            "nested": {"k": i % 2, "z": True},
        }
        parent = f"cp-{i - 1}" if i > 1 else None
        _put(c, a, f"cp-{i}", metadata=md, parent_checkpoint_id=parent)
    _put(c, a, "cp-9", ns="child:1", metadata={"source": "loop", "step": 1})
    _put(c, b, "cp-5", metadata={"source": "loop", "step": 5})
    c.put_checkpoint_writes(
        a, "cp-4", task_id="t", writes=[{"channel": "w", "type": "msgpack", "data": b"!"}]
    )

    assert _ids(c.list_checkpoints(a)) == ["cp-9", "cp-4", "cp-3", "cp-2", "cp-1"], "every namespace"
    assert _ids(c.list_checkpoints(a, ns="")) == ["cp-4", "cp-3", "cp-2", "cp-1"]
    assert _ids(c.list_checkpoints(a, ns="child:1")) == ["cp-9"]
    assert _ids(c.list_checkpoints(a, ns="", before="cp-3")) == ["cp-2", "cp-1"]
    assert _ids(c.list_checkpoints(a, ns="", limit=2)) == ["cp-4", "cp-3"]
    assert _ids(c.list_checkpoints(a, ns="", before="cp-4", limit=1)) == ["cp-3"]
    assert _ids(c.list_checkpoints(a, metadata={"source": "input"})) == ["cp-3", "cp-1"]
    assert _ids(c.list_checkpoints(a, metadata={"source": "input", "step": 3})) == ["cp-3"]
    assert _ids(c.list_checkpoints(a, metadata={"nested": {"k": 0}})) == ["cp-4", "cp-2"], "containment"
    assert _ids(c.list_checkpoints(a, metadata={"tags": ["t2"]})) == ["cp-2"], "array containment"
    assert _ids(c.list_checkpoints(a, metadata={"nested": {"z": 1}})) == [], "true is not 1"
    assert _ids(c.list_checkpoints(a, metadata={"step": 99})) == []
    assert _ids(c.list_checkpoints(_tid("none"))) == []
    everywhere = _ids(c.list_checkpoints(metadata={"step": 5}))
    assert everywhere == ["cp-5"]
    both = [(r["thread"], r["checkpoint_id"]) for r in c.list_checkpoints() if r["thread"] in (a, b)]
    assert both[:2] == [(a, "cp-9"), (b, "cp-5")], "newest first by id across threads"

    # Pages: the cursor follows; plain rows lack the heavy fields, `full` adds them.
    first = c.list_checkpoints(a, ns="", page_size=3).page()
    assert _ids(first["checkpoints"]) == ["cp-4", "cp-3", "cp-2"] and first["next_cursor"]
    rest = c.list_checkpoints(a, ns="", cursor=first["next_cursor"]).page()
    assert _ids(rest["checkpoints"]) == ["cp-1"] and not rest.get("next_cursor")
    assert _ids(c.list_checkpoints(a, ns="", page_size=1)) == ["cp-4", "cp-3", "cp-2", "cp-1"]
    plain = first["checkpoints"][0]
    assert "checkpoint" not in plain and "blobs" not in plain and "pending_writes" not in plain
    assert plain["metadata"]["step"] == 4 and plain["channel_versions"] == {"x": "1"}
    assert plain["parent_checkpoint_id"] == "cp-3" and plain["delta_channels"] == []
    full = c.list_checkpoints(a, ns="", full=True, limit=1).page()["checkpoints"][0]
    assert full["checkpoint"] == {"type": "msgpack", "data": b"body-cp-4"}
    assert [b["data"] for b in full["blobs"]] == [b"v"]
    assert [(p["channel"], p["data"]) for p in full["pending_writes"]] == [("w", b"!")]


def test_threads_are_read_patched_listed_deleted_and_copied(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    t, copy = _tid(), _tid("copy")
    with pytest.raises(ferry.NotFound):
        c.get_thread(t)
    with pytest.raises(ferry.NotFound):
        c.patch_thread(t, keep_last=5)
    _put(c, t, "cp-1", channel_versions={"x": "1"})
    made = c.patch_thread(t, metadata={"owner": "ann"}, keep_last=5, idle_ttl_ms=60_000)
    assert (made["thread"], made["metadata"], made["keep_last"], made["idle_ttl_ms"]) == (
        t,
        {"owner": "ann"},
        5,
        60_000,
    )
    assert made["checkpoints"] == 1
    reset = c.patch_thread(t, keep_last=None)
    assert reset["keep_last"] is None and reset["idle_ttl_ms"] == 60_000, "left-out fields stay"

    _put(
        c, t, "cp-2", parent_checkpoint_id="cp-1", channel_versions={"x": "2"}, blobs=[_blob("x", "2", b"2")]
    )
    _put(c, t, "cp-3", ns="child:1")
    c.put_checkpoint_writes(
        t, "cp-2", task_id="k", writes=[{"channel": "w", "type": "msgpack", "data": b"!"}]
    )
    shown = c.get_thread(t)
    assert (shown["checkpoints"], shown["blobs"], shown["writes"]) == (3, 3, 1)
    assert shown["bytes"] > 0 and shown["created_at"] and shown["updated_at"] and shown["last_job_id"] is None
    assert shown["metadata"] == {"owner": "ann"}

    later = (datetime.now(timezone.utc) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert t in {th["thread"] for th in c.list_threads(updated_before=later)}
    assert t not in {th["thread"] for th in c.list_threads(updated_before="2000-01-01T00:00:00Z")}
    assert len(c.list_threads(limit=1).page()["threads"]) == 1

    assert c.copy_thread(t, copy) == {"thread": copy, "copied": 3}
    assert _ids(c.list_checkpoints(copy)) == _ids(c.list_checkpoints(t)), "ids are kept"
    copied = c.get_checkpoint(copy, "cp-2")
    assert copied["parent_checkpoint_id"] == "cp-1" and [b["data"] for b in copied["blobs"]] == [b"2"]
    assert [p["data"] for p in copied["pending_writes"]] == [b"!"]
    with pytest.raises(ferry.Conflict):
        c.copy_thread(t, copy)
    with pytest.raises(ferry.NotFound):
        c.copy_thread(_tid("none"), _tid("to"))

    assert c.delete_thread(t) == {"thread": t, "deleted": 3}
    assert c.delete_thread(t) == {"thread": t, "deleted": 0}
    with pytest.raises(ferry.NotFound):
        c.get_checkpoint(t)
    assert _ids(c.list_checkpoints(copy)) == ["cp-3", "cp-2", "cp-1"], "the copy stays"


def test_prune_keeps_each_namespaces_latest_and_runs_are_deleted(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    t, other = _tid(), _tid("other")
    for i in range(1, 4):
        _put(
            c, t, f"cp-{i}", parent_checkpoint_id=f"cp-{i - 1}" if i > 1 else None, metadata={"run_id": "r1"}
        )
    for i in (5, 6):
        _put(c, t, f"cp-{i}", ns="child:1", metadata={"run_id": "r2"})
    _put(c, other, "cp-1", metadata={"run_id": "r1"})
    c.put_checkpoint_writes(
        t, "cp-3", task_id="k", writes=[{"channel": "w", "type": "msgpack", "data": b"!"}]
    )

    assert c.prune_checkpoints([t]) == {"deleted": 3}
    assert _ids(c.list_checkpoints(t)) == ["cp-6", "cp-3"]
    kept = c.get_checkpoint(t, "cp-3")
    assert kept["parent_checkpoint_id"] is None, "the deleted parent is unlinked"
    assert [p["data"] for p in kept["pending_writes"]] == [b"!"] and [b["data"] for b in kept["blobs"]] == [
        b"v"
    ]
    assert c.prune_checkpoints([t], "keep_latest") == {"deleted": 0}
    assert c.prune_checkpoints([]) == {"deleted": 0}
    with pytest.raises(ferry.FerryError) as info:
        c.prune_checkpoints([t], "everything")
    assert info.value.status in (400, 422)

    assert c.delete_checkpoint_runs(["r1"]) == {"deleted": 2}
    assert _ids(c.list_checkpoints(t)) == ["cp-6"] and _ids(c.list_checkpoints(other)) == []
    assert c.delete_checkpoint_runs(["nope"]) == {"deleted": 0}
    assert c.prune_checkpoints([t, _tid("none")], "delete") == {"deleted": 1}
    assert _ids(c.list_checkpoints(t)) == []


def test_checkpoint_input_is_checked(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    t = _tid()
    with pytest.raises(ferry.ValidationFailed) as info:
        _put(c, t, "latest")
    assert info.value.status == 422
    good = {
        "checkpoint": {"type": "msgpack", "data": base64.b64encode(b"x").decode()},
        "metadata": {},
        "channel_versions": {"x": "1"},
        "blobs": [{"channel": "x", "version": "1", "type": "msgpack", "data": "dg=="}],
    }
    path = f"/v1/threads/{t}/checkpoints/cp-1"
    for bad in (
        {**good, "checkpoint": {"type": "msgpack", "data": "not base64!"}},
        {**good, "blobs": [{"channel": "x", "version": "1", "type": "msgpack", "data": "dg="}]},
    ):
        with pytest.raises(ferry.BadRequest) as bad_info:
            c._t.call("PUT", path, params={"ns": ""}, body=bad, has_body=True)
        assert bad_info.value.status == 400
    bad_write = {"task_id": "k", "writes": [{"channel": "w", "type": "msgpack", "data": "%%%"}]}
    with pytest.raises(ferry.BadRequest):
        c._t.call("POST", f"{path}/writes", params={"ns": ""}, body=bad_write, has_body=True)
    with pytest.raises((ferry.ValidationFailed, ferry.BadRequest)):
        _put(c, "x" * 257, "cp-1")  # keys are 1 to 256 bytes
    with pytest.raises(ValueError, match="both"):
        _put(c, t, "cp-1", job_id=str(uuid.uuid4()))
    with pytest.raises(ferry.NotFound):
        _put(c, t, "cp-1", job_id=str(uuid.uuid4()), lease="nope")
    assert _ids(c.list_checkpoints(t)) == [], "nothing was written"
    c._t.call("PUT", path, params={"ns": ""}, body=good, has_body=True)
    assert c.get_checkpoint(t)["checkpoint"]["data"] == b"x"


# ---- LangGraph's conformance suite -------------------------------------------------------------

CAPABILITIES = {
    "put",
    "put_writes",
    "get_tuple",
    "list",
    "delete_thread",
    "delete_for_runs",
    "copy_thread",
    "prune",
}


@pytest.mark.timeout(300)
def test_both_savers_pass_the_conformance_suite(ferry_server_any: FerryServer) -> None:
    server = ferry_server_any

    @checkpointer_test(name="AsyncFerrySaver")
    async def async_saver() -> Any:
        async with AsyncFerrySaver(server.async_client()) as saver:
            yield saver
            await saver.client.aclose()

    @checkpointer_test(name="FerrySaver")
    async def sync_saver() -> Any:
        with server.client() as client:
            yield FerrySaver(client)

    for registered in (async_saver, sync_saver):
        report = asyncio.run(validate(registered))
        results = {cap: (r.detected, r.passed) for cap, r in report.results.items()}
        assert set(results) == CAPABILITIES, results
        assert all(detected and passed for detected, passed in results.values()), (registered.name, results)
        assert report.passed_all() and report.conformance_level() == "FULL"


# ---- real graphs, the same as on InMemorySaver -------------------------------------------------


class LoopThread:
    """An event loop in a thread, so the async saver runs graphs from plain test code."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=120)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Runner:
    """Runs graphs on one saver, blocking (`invoke`) or through asyncio (`ainvoke` on a loop
    thread), behind one interface."""

    def __init__(self, saver: BaseCheckpointSaver[Any], loop: LoopThread | None = None) -> None:
        self.saver = saver
        self.loop = loop

    def invoke(self, app: Any, inp: Any, config: dict[str, Any], **kw: Any) -> Any:
        if self.loop is None:
            return app.invoke(inp, config, **kw)
        return self.loop.run(app.ainvoke(inp, config, **kw))

    def state(self, app: Any, config: dict[str, Any], subgraphs: bool = False) -> Any:
        if self.loop is None:
            return app.get_state(config, subgraphs=subgraphs)
        return self.loop.run(app.aget_state(config, subgraphs=subgraphs))

    def history(self, app: Any, config: dict[str, Any]) -> list[Any]:
        if self.loop is None:
            return list(app.get_state_history(config))

        async def collect() -> list[Any]:
            return [s async for s in app.aget_state_history(config)]

        return self.loop.run(collect())

    def update(self, app: Any, config: dict[str, Any], values: Any, as_node: str | None = None) -> Any:
        if self.loop is None:
            return app.update_state(config, values, as_node=as_node)
        return self.loop.run(app.aupdate_state(config, values, as_node=as_node))


@pytest.fixture(params=["sync", "async"])
def runner(request: pytest.FixtureRequest, ferry_server_any: FerryServer) -> Iterator[Runner]:
    """A `Runner` on `FerrySaver` (sync) or `AsyncFerrySaver` (async) for the server."""
    if request.param == "sync":
        yield Runner(FerrySaver(ferry_server_any.client()))
        return
    loop = LoopThread()

    async def make() -> AsyncFerrySaver:
        return AsyncFerrySaver(ferry_server_any.async_client())

    saver = loop.run(make())
    try:
        yield Runner(saver, loop)
    finally:
        loop.run(saver.client.aclose())
        loop.close()


def snapshot(s: Any) -> tuple[Any, ...]:
    """What a state shows, without its ids and times (which differ between two runs)."""
    tasks = [(t.name, t.error is not None, [i.value for i in t.interrupts]) for t in s.tasks]
    md = s.metadata or {}
    return (s.values, s.next, md.get("source"), md.get("step"), tasks, s.parent_config is None)


def same_as_memory(ours: Runner, scenario: Callable[[Runner, dict[str, Any]], list[Any]]) -> list[Any]:
    """Runs `scenario` on the ferry saver and on InMemorySaver (each on a fresh thread) and
    checks they saw the same; what it saw."""
    reference = scenario(Runner(InMemorySaver()), {"configurable": {"thread_id": _tid("mem")}})
    seen = scenario(ours, {"configurable": {"thread_id": _tid("ferry")}})
    assert seen == reference
    return seen


class Log(TypedDict, total=False):
    log: Annotated[list[str], operator.add]
    answer: str


def test_subgraph_interrupt_and_resume(runner: Runner) -> None:
    def ask(state: Log) -> Log:
        answer = interrupt({"question": "go?", "seen": list(state.get("log", []))})
        return {"log": [f"child:{answer}"], "answer": str(answer)}

    child = StateGraph(Log)
    child.add_node("ask", ask)
    child.add_node("after", lambda s: {"log": ["child-after"]})
    child.add_edge(START, "ask")
    child.add_edge("ask", "after")
    child.add_edge("after", END)
    sub = child.compile()

    def scenario(r: Runner, config: dict[str, Any]) -> list[Any]:
        parent = StateGraph(Log)
        parent.add_node("pre", lambda s: {"log": ["pre"]})
        parent.add_node("child", sub)
        parent.add_node("post", lambda s: {"log": [f"post:{s.get('answer')}"]})
        parent.add_edge(START, "pre")
        parent.add_edge("pre", "child")
        parent.add_edge("child", "post")
        parent.add_edge("post", END)
        app = parent.compile(checkpointer=r.saver)
        seen: list[Any] = []
        out = r.invoke(app, {"log": ["in"]}, config)
        seen.append(sorted(out))
        waiting = r.state(app, config, subgraphs=True)
        seen.append(snapshot(waiting))
        (task,) = waiting.tasks
        seen.append(snapshot(task.state))  # the child graph's own state, from its namespace
        seen.append(r.invoke(app, Command(resume="yes"), config))
        seen.append(snapshot(r.state(app, config)))
        seen.append([snapshot(s) for s in r.history(app, config)])
        return seen

    seen = same_as_memory(runner, scenario)
    # The child shares the parent's schema: its whole `log` is added back to the parent's.
    log = ["in", "pre", "in", "pre", "child:yes", "child-after", "post:yes"]
    assert seen[3] == {"log": log, "answer": "yes"}


def test_a_fork_from_a_past_checkpoint(runner: Runner) -> None:
    def scenario(r: Runner, config: dict[str, Any]) -> list[Any]:
        g = StateGraph(Log)
        for name in ("a", "b", "c"):
            g.add_node(name, lambda s, name=name: {"log": [name]})
        g.add_edge(START, "a")
        g.add_edge("a", "b")
        g.add_edge("b", "c")
        g.add_edge("c", END)
        app = g.compile(checkpointer=r.saver)
        seen: list[Any] = [r.invoke(app, {"log": ["in"]}, config)]
        before_b = next(s for s in r.history(app, config) if s.next == ("b",))
        seen.append(snapshot(before_b))
        replay = r.invoke(app, None, before_b.config)  # re-runs b and c from there
        seen.append(replay)
        forked = r.update(app, before_b.config, {"log": ["edited"]})
        seen.append(snapshot(r.state(app, forked)))
        seen.append(r.invoke(app, None, forked))
        seen.append(snapshot(r.state(app, config)))
        seen.append([snapshot(s) for s in r.history(app, config)])
        seen.append(len(r.history(app, {"configurable": {**config["configurable"]}})))
        return seen

    seen = same_as_memory(runner, scenario)
    assert seen[4] == {"log": ["in", "a", "edited", "b", "c"]}


def test_parallel_tasks_one_failing_then_retried(runner: Runner) -> None:
    calls: dict[str, int] = {}

    def node(name: str, fail_times: int, delay: float = 0.0) -> Callable[[Log], Log]:
        def run(state: Log) -> Log:
            calls[name] = calls.get(name, 0) + 1
            if calls[name] <= fail_times:
                time.sleep(delay)  # the other tasks of the step finish first
                raise RuntimeError(f"{name} fails")
            return {"log": [name]}

        return run

    def graph(r: Runner, flaky: Callable[[Log], Log], retry: RetryPolicy | None) -> Any:
        g = StateGraph(Log)
        g.add_node("ok", node("ok", 0))
        g.add_node("flaky", flaky, retry_policy=retry)
        g.add_node("join", node("join", 0))
        for name in ("ok", "flaky"):
            g.add_edge(START, name)
            g.add_edge(name, "join")
        g.add_edge("join", END)
        return g.compile(checkpointer=r.saver)

    def retried(r: Runner, config: dict[str, Any]) -> list[Any]:
        calls.clear()
        policy = RetryPolicy(max_attempts=3, initial_interval=0.01, jitter=False, retry_on=RuntimeError)
        app = graph(r, node("flaky", 2), policy)
        seen: list[Any] = [r.invoke(app, {"log": ["in"]}, config), dict(calls)]
        seen.append([snapshot(s) for s in r.history(app, config)])
        return seen

    seen = same_as_memory(runner, retried)
    assert seen[1] == {"ok": 1, "flaky": 3, "join": 1}
    assert sorted(seen[0]["log"]) == ["flaky", "in", "join", "ok"]

    def resumed(r: Runner, config: dict[str, Any]) -> list[Any]:
        calls.clear()
        app = graph(r, node("flaky", 1, delay=0.3), None)
        with pytest.raises(RuntimeError, match="flaky fails"):
            r.invoke(app, {"log": ["in"]}, config)
        seen: list[Any] = [snapshot(r.state(app, config)), dict(calls)]
        # The run resumes from the failed step: the task that succeeded is not run again (its
        # writes were kept as the checkpoint's pending writes).
        seen.append(r.invoke(app, None, config))
        seen.append(dict(calls))
        seen.append([snapshot(s) for s in r.history(app, config)])
        return seen

    seen = same_as_memory(runner, resumed)
    assert seen[1] == {"ok": 1, "flaky": 1}
    assert seen[3] == {"ok": 1, "flaky": 2, "join": 1}
    assert sorted(seen[2]["log"]) == ["flaky", "in", "join", "ok"]


# ---- DeltaChannel, pruned --------------------------------------------------------------------


try:
    from langgraph.channels.delta import DeltaChannel
except ImportError:  # an older langgraph: the test is skipped
    DeltaChannel = None


def _extend(state: list[str], writes: list[list[str]]) -> list[str]:
    out = list(state)
    for w in writes:
        out.extend(w)
    return out


if DeltaChannel is not None:

    class Items(TypedDict):
        items: Annotated[list[str], DeltaChannel(_extend, snapshot_frequency=3)]


@pytest.mark.skipif(DeltaChannel is None, reason="this langgraph has no DeltaChannel")
def test_a_delta_channel_reads_the_same_after_pruning(ferry_server_any: FerryServer) -> None:
    g = StateGraph(Items)
    g.add_node("a", lambda s: {"items": ["n"]})
    g.add_edge(START, "a")
    g.add_edge("a", END)

    c = ferry_server_any.client()
    saver = FerrySaver(c)
    app = g.compile(checkpointer=saver)
    mem = g.compile(checkpointer=InMemorySaver())
    config: dict[str, Any] = {"configurable": {"thread_id": _tid("delta")}}
    mem_config: dict[str, Any] = {"configurable": {"thread_id": "mem"}}
    for i in range(4):
        app.invoke({"items": [f"in{i}"]}, config)
        mem.invoke({"items": [f"in{i}"]}, mem_config)
    before = app.get_state(config).values
    assert before == mem.get_state(mem_config).values and len(before["items"]) == 8
    head = c.get_checkpoint(config["configurable"]["thread_id"])
    assert head["delta_channels"] == ["items"], "the head rebuilds `items` from its ancestors"
    held = c.get_thread(config["configurable"]["thread_id"])["checkpoints"]

    deleted = c.prune_checkpoints([config["configurable"]["thread_id"]], "keep_latest")["deleted"]
    assert 0 < deleted < held
    assert app.get_state(config).values == before, "the ancestors `items` needs were kept"
    app.invoke({"items": ["more"]}, config)
    mem.invoke({"items": ["more"]}, mem_config)
    assert app.get_state(config).values == mem.get_state(mem_config).values


# ---- an unchanged channel is stored once ------------------------------------------------------


class Big(TypedDict, total=False):
    big: bytes
    n: int
    stop: int


def test_an_unchanged_large_channel_is_stored_once(ferry_server_any: FerryServer) -> None:
    steps = DEDUP_STEPS
    g = StateGraph(Big)
    g.add_node("tick", lambda s: {"n": s["n"] + 1})
    g.add_edge(START, "tick")
    g.add_conditional_edges("tick", lambda s: "tick" if s["n"] < s["stop"] else END)
    c = ferry_server_any.client()
    app = g.compile(checkpointer=FerrySaver(c))
    thread = _tid("dedup")
    config: dict[str, Any] = {"configurable": {"thread_id": thread}, "recursion_limit": steps + 10}
    big = os.urandom(MIB)

    # One step: LangGraph itself holds an input as the `__start__` channel's value and as
    # the start task's writes, besides the `big` channel: a few copies, once.
    assert app.invoke({"big": big, "n": 0, "stop": 1}, config)["n"] == 1
    loaded = c.get_thread(thread)
    assert MIB <= loaded["bytes"] < 4 * MIB, loaded

    # `steps` more checkpoints that all list `big` at its unchanged version: the value is
    # stored once, so they add far less than one more copy (not `steps` MiB).
    out = app.invoke({"n": 0, "stop": steps}, config)
    assert out["n"] == steps and out["big"] == big
    shown = c.get_thread(thread)
    assert shown["checkpoints"] >= loaded["checkpoints"] + steps
    grown = shown["bytes"] - loaded["bytes"]
    assert 0 < grown < MIB, f"{steps} checkpoints with an unchanged MiB added {grown} bytes"
    head = c.get_checkpoint(thread)
    assert {b["channel"]: len(b["data"]) for b in head["blobs"]}["big"] > MIB - 1, "the head reads it"


# ---- fencing ----------------------------------------------------------------------------------


def test_a_stale_lease_is_refused_and_writes_nothing(ferry_server_any: FerryServer) -> None:
    c = ferry_server_any.client()
    c.enqueue("lg-fence", {"n": 1})
    (job,) = c.claim("lg-fence", lease_ms=60_000)
    thread = _tid("fence")
    config: dict[str, Any] = {
        "configurable": {"thread_id": thread, "ferry_job_id": job["id"], "ferry_lease": job["lease"]}
    }
    g = StateGraph(Log)
    g.add_node("a", lambda s: {"log": ["a"]})
    g.add_edge(START, "a")
    g.add_edge("a", END)
    saver = FerrySaver(c)
    app = g.compile(checkpointer=saver)
    assert app.invoke({"log": ["in"]}, config) == {"log": ["in", "a"]}
    shown = c.get_thread(thread)
    assert shown["last_job_id"] == job["id"]
    md = c.get_checkpoint(thread)["metadata"]
    assert "ferry_lease" not in md and "ferry_job_id" not in md, "the fence is not metadata"
    held = shown["checkpoints"]

    c.complete(job["id"], job["lease"])  # the lease is no longer the job's
    with pytest.raises(ferry.StaleLease) as info:
        app.invoke({"log": ["again"]}, config)
    assert (info.value.code, info.value.status) == ("stale_lease", 409)
    assert c.get_thread(thread)["checkpoints"] == held, "nothing written"

    latest = saver.get_tuple(config)
    assert latest is not None
    stale = {**latest.checkpoint, "id": str(uuid6(clock_seq=5))}
    with pytest.raises(ferry.StaleLease):
        saver.put(
            latest.config | {"configurable": {**config["configurable"], **latest.config["configurable"]}},
            stale,
            {"source": "loop", "step": 9},
            {},
        )
    with pytest.raises(ferry.StaleLease):
        saver.put_writes(
            {"configurable": {**config["configurable"], "checkpoint_id": stale["id"]}},
            [("log", ["x"])],
            "task",
        )
    assert saver.get_tuple({"configurable": {"thread_id": thread, "checkpoint_id": stale["id"]}}) is None
    assert c.get_thread(thread)["writes"] == shown["writes"]


# ---- concurrent writers -----------------------------------------------------------------------


def _checkpoint(values: dict[str, Any], versions: dict[str, Any]) -> Checkpoint:
    return {
        "v": 4,
        "id": str(uuid6(clock_seq=-1)),
        "ts": datetime.now(timezone.utc).isoformat(),
        "channel_values": values,
        "channel_versions": versions,
        "versions_seen": {},
        "updated_channels": None,
    }


@pytest.mark.timeout(300)
def test_concurrent_puts_are_all_readable(ferry_server_any: FerryServer) -> None:
    server = ferry_server_any

    async def chain(saver: AsyncFerrySaver, thread: str, who: str, acked: list[tuple[str, str, int]]) -> None:
        config: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
        version: str | None = None
        for step in range(STEPS):
            version = saver.get_next_version(version, None)
            cp = _checkpoint({"n": step, "who": who}, {"n": version, "who": version})
            config = dict(
                await saver.aput(
                    config, cp, {"source": "loop", "step": step, "who": who}, cp["channel_versions"]
                )
            )
            await saver.aput_writes(config, [("n", step)], f"task-{who}")
            acked.append((thread, cp["id"], step))

    async def run() -> None:
        savers = [AsyncFerrySaver(server.async_client()) for _ in range(CLIENTS)]
        try:
            acked: list[tuple[str, str, int]] = []
            threads = [_tid("cc") for _ in range(THREADS)]
            await asyncio.gather(*(chain(savers[i % CLIENTS], t, t, acked) for i, t in enumerate(threads)))
            # Two writers on one thread, interleaved: both chains are kept whole.
            shared = _tid("shared")
            await asyncio.gather(
                chain(savers[0], shared, "w1", acked), chain(savers[-1], shared, "w2", acked)
            )
            assert len(acked) == (THREADS + 2) * STEPS
            reader = savers[len(savers) // 2]
            for thread, cid, step in acked:
                tup = await reader.aget_tuple({"configurable": {"thread_id": thread, "checkpoint_id": cid}})
                assert tup is not None, (thread, cid)
                assert tup.checkpoint["channel_values"]["n"] == step
                assert [(w[1], w[2]) for w in tup.pending_writes or []] == [("n", step)]
            rows = [t async for t in reader.alist({"configurable": {"thread_id": shared}})]
            ids = [t.checkpoint["id"] for t in rows]
            assert ids == sorted(ids, reverse=True) and len(ids) == 2 * STEPS
            assert {t.metadata["who"] for t in rows} == {"w1", "w2"}
            for who in ("w1", "w2"):
                mine = [t for t in rows if t.metadata["who"] == who]
                parents = [
                    t.parent_config["configurable"]["checkpoint_id"] if t.parent_config else None
                    for t in mine
                ]
                assert parents == [t.checkpoint["id"] for t in mine[1:]] + [None], "each chain is linked"
            latest = await reader.aget_tuple({"configurable": {"thread_id": shared}})
            assert latest is not None and latest.checkpoint["id"] == max(ids)
        finally:
            for s in savers:
                await s.client.aclose()

    asyncio.run(run())


# ---- PostgreSQL restarted under load ----------------------------------------------------------


class PrivatePg:
    """A PostgreSQL cluster of this test's own (initdb into a temp dir, run as `postgres` on a
    free port), so stopping it disturbs no other test."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not bins or shutil.which("runuser") is None:
            raise RuntimeError("no PostgreSQL server binaries or runuser")
        self.bin = bins[-1].parent
        # Under /tmp itself: pytest's own temp dirs are private to their owner.
        self.dir = Path(tempfile.mkdtemp(prefix="ferry-pg-"))
        if subprocess.run(["chown", "-R", "postgres:postgres", str(self.dir)]).returncode != 0:
            raise RuntimeError("cannot hand a directory to the postgres user (not root?)")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self._run("initdb", "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres")
        self.up()

    def _run(self, program: str, *args: str) -> None:
        cmd = ["runuser", "-u", "postgres", "--", str(self.bin / program), *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{program}: {out.stderr}")

    def up(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        log = str(self.dir / "pg.log")
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-o", opts, "-l", log, "-w", "start")

    def down(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", mode, "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"


@pytest.mark.pg
def test_postgres_restarted_under_load_loses_no_acknowledged_put() -> None:
    """Savers keep putting while PostgreSQL is stopped and started again: their retries (after
    503 and `Retry-After`) carry every put through, and each acknowledged one reads back."""
    if not os.environ.get("FERRY_TEST_PG_URL"):
        pytest.skip("FERRY_TEST_PG_URL is not set")
    try:
        pg = PrivatePg()
    except RuntimeError as e:
        if os.environ.get("FERRY_REQUIRE_PG") == "1":
            raise
        pytest.skip(str(e))
    server = FerryServer.start(pg_url=pg.url)
    try:

        async def writer(saver: AsyncFerrySaver, thread: str, stop: asyncio.Event, acked: list[Any]) -> None:
            config: dict[str, Any] = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
            version: str | None = None
            step = 0
            while not stop.is_set():
                version = saver.get_next_version(version, None)
                cp = _checkpoint({"n": step}, {"n": version})
                config = dict(
                    await saver.aput(config, cp, {"source": "loop", "step": step}, cp["channel_versions"])
                )
                acked.append((thread, cp["id"], step))
                step += 1

        async def run() -> None:
            saver = AsyncFerrySaver(server.async_client())
            stop, acked = asyncio.Event(), []
            tasks = [asyncio.create_task(writer(saver, _tid("pgr"), stop, acked)) for _ in range(4)]
            await asyncio.sleep(1.0)
            before = len(acked)
            await asyncio.to_thread(pg.down, "fast")
            await asyncio.sleep(1.5)
            await asyncio.to_thread(pg.up)
            await asyncio.sleep(2.0)
            stop.set()
            await asyncio.gather(*tasks)
            assert before > 0 and len(acked) > before, "puts went on before and after the restart"
            for thread, cid, step in acked:
                tup = await saver.aget_tuple({"configurable": {"thread_id": thread, "checkpoint_id": cid}})
                assert tup is not None and tup.checkpoint["channel_values"]["n"] == step, (thread, cid)
            await saver.client.aclose()

        asyncio.run(run())
    finally:
        server.close()
        with contextlib.suppress(RuntimeError):
            pg.down("immediate")
        shutil.rmtree(pg.dir, ignore_errors=True)


# ---- a thread imported from SqliteSaver -------------------------------------------------------


def test_a_thread_imported_from_a_sqlite_file_resumes(ferry_server_any: FerryServer, tmp_path: Path) -> None:
    sqlite_saver = pytest.importorskip("langgraph.checkpoint.sqlite")

    def ask(state: Log) -> Log:
        return {"log": [f"asked:{interrupt('go?')}"]}

    g = StateGraph(Log)
    g.add_node("a", lambda s: {"log": ["a"]})
    g.add_node("ask", ask)
    g.add_edge(START, "a")
    g.add_edge("a", "ask")
    g.add_edge("ask", END)
    thread = _tid("imported")
    config: dict[str, Any] = {"configurable": {"thread_id": thread}}
    conn = sqlite3.connect(tmp_path / "cp.sqlite", check_same_thread=False)
    try:
        local = sqlite_saver.SqliteSaver(conn)
        local_app = g.compile(checkpointer=local)
        local_app.invoke({"log": ["in"]}, config)
        waiting = local_app.get_state(config)

        # `ferry checkpoints import` sends the file's rows as they are (each checkpoint keeps
        # its values inline); a second import adds nothing.
        c = ferry_server_any.client()
        n_cps = conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
        n_writes = conn.execute("SELECT count(*) FROM writes").fetchone()[0]
        file = str(tmp_path / "cp.sqlite")
        url, token = ferry_server_any.url, ferry_server_any.token
        cmd = [os.environ["FERRY_BIN"], "checkpoints", "import", "--langgraph-sqlite", file]
        cmd += ["--url", url, "--token", token]
        first = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert first.returncode == 0, first.stderr
        assert first.stdout.strip() == (
            f"checkpoints: {n_cps} written, 0 already present; writes: {n_writes} written, 0 already present"
        )
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert again.stdout.strip() == (
            f"checkpoints: 0 written, {n_cps} already present; writes: 0 written, {n_writes} already present"
        )

        ours = g.compile(checkpointer=FerrySaver(c))
        assert snapshot(ours.get_state(config)) == snapshot(waiting)
        assert [snapshot(s) for s in ours.get_state_history(config)] == [
            snapshot(s) for s in local_app.get_state_history(config)
        ]
        assert ours.invoke(Command(resume="yes"), config) == local_app.invoke(Command(resume="yes"), config)
        assert ours.get_state(config).values == {"log": ["in", "a", "asked:yes"]}
    finally:
        conn.close()


# ---- the savers' own behaviour ----------------------------------------------------------------


def test_saver_arguments_and_the_metadata_sent(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    saver = FerrySaver(c)
    with pytest.raises(TypeError):
        saver.prune("a-thread")
    with pytest.raises(ValueError, match="strategy"):
        saver.prune(["a"], strategy="nope")
    with pytest.raises(ValueError):
        FerrySaver(c, url="http://x")
    saver.prune([])
    saver.delete_for_runs([])
    saver.copy_thread(_tid("none"), target := _tid("target"))  # an unknown source: no-op
    assert saver.get_tuple({"configurable": {"thread_id": target}}) is None
    v1 = saver.get_next_version(None, None)
    v2 = saver.get_next_version(v1, None)
    assert v1.startswith("0" * 31 + "1.") and v2.startswith("0" * 31 + "2.") and v1 < v2
    assert saver.get_next_version(7, None).startswith("0" * 30 + "08.")  # type: ignore[arg-type]

    thread = _tid()
    config: dict[str, Any] = {
        "configurable": {"thread_id": thread, "checkpoint_ns": "", "user_key": "u1", "__secret": object()},
        "metadata": {"run_id": "r-1"},
    }
    cp = _checkpoint({"a": "x"}, {"a": v1, "gone": v1})
    out = saver.put(config, cp, {"source": "input", "step": -1, "writes": {"x": 1}}, {"a": v1, "gone": v1})
    assert out == {"configurable": {"thread_id": thread, "checkpoint_ns": "", "checkpoint_id": cp["id"]}}
    got = c.get_checkpoint(thread)
    assert got["metadata"] == {"source": "input", "step": -1, "user_key": "u1", "run_id": "r-1"}
    assert {b["channel"]: b["type"] for b in got["blobs"]} == {"a": "msgpack", "gone": "empty"}
    assert (
        JsonPlusSerializer().loads_typed((got["checkpoint"]["type"], got["checkpoint"]["data"]))[
            "channel_values"
        ]
        == {}
    ), "values travel as blobs only"
    tup = saver.get_tuple({"configurable": {"thread_id": thread}})
    assert tup is not None and tup.checkpoint["channel_values"] == {"a": "x"}
    assert tup.checkpoint["channel_versions"] == {"a": v1, "gone": v1}

    # A caller's new_versions that leaves out a version never stored: the saver sends it.
    cp2 = _checkpoint({"a": "x", "b": [1, 2]}, {"a": v1, "b": v1})
    saver.put(out, cp2, {"source": "loop", "step": 0}, {})
    tup2 = saver.get_tuple({"configurable": {"thread_id": thread}})
    assert tup2 is not None and tup2.checkpoint["channel_values"] == {"a": "x", "b": [1, 2]}
    assert tup2.parent_config == out
    listed = list(
        saver.list({"configurable": {"thread_id": thread, "checkpoint_ns": "", "checkpoint_id": cp["id"]}})
    )
    assert [t.checkpoint["id"] for t in listed] == [cp["id"]]
    assert list(saver.list(None, filter={"user_key": "u1"})) != []
    assert len(saver._locks) == 0, "a thread's lock goes with its last call"


def test_the_async_saver_refuses_sync_calls_on_its_loop(ferry_server: FerryServer) -> None:
    async def run() -> None:
        async with AsyncFerrySaver(url=ferry_server.url, token=ferry_server.token) as saver:
            with pytest.raises(asyncio.InvalidStateError):
                saver.get_tuple({"configurable": {"thread_id": "t"}})
            assert await saver.aget_tuple({"configurable": {"thread_id": "t"}}) is None
            # From another thread the sync methods wait for the loop.
            got = await asyncio.to_thread(saver.get_tuple, {"configurable": {"thread_id": "t"}})
            assert got is None
            assert (
                await asyncio.to_thread(lambda: list(saver.list({"configurable": {"thread_id": "t"}}))) == []
            )
            with pytest.raises(TypeError):
                await saver.aprune("t")

    asyncio.run(run())
    detached = AsyncFerrySaver(url=ferry_server.url, token=ferry_server.token)
    with pytest.raises(asyncio.InvalidStateError):
        detached.get_tuple({"configurable": {"thread_id": "t"}})


# ---- what the methods send (no server) --------------------------------------------------------


class _Recorder:
    """A transport that records calls and answers a canned checkpoint."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    def call(self, method: str, path: str, **kw: Any) -> Any:
        self.calls.append((method, path, kw))
        typed = {"type": "msgpack", "data": base64.b64encode(b"\x00\xff").decode()}
        record = {
            "checkpoint": dict(typed),
            "blobs": [{"channel": "c", "version": "1", **typed}],
            "pending_writes": [{"task_id": "t", "channel": "c", "task_path": "", "idx": 0, **typed}],
        }
        return {
            **record,
            "checkpoints": [dict(record, checkpoint=dict(typed))],
            "threads": [],
            "next_cursor": None,
        }

    def close(self) -> None:
        pass

    def last(self) -> tuple[str, str, dict[str, Any]]:
        return self.calls[-1]


def test_what_the_checkpoint_methods_send() -> None:
    rec = _Recorder()
    c = ferry.Client("http://127.0.0.1:9", token="t", name="wire")
    c._t.close()
    c._t = rec  # type: ignore[assignment]

    c.put_checkpoint(
        "th/1",
        "cp 1",
        checkpoint=("msgpack", b"\x01\x02"),
        metadata={"step": 1},
        channel_versions={"a": 1, "b": "2"},
        blobs=[{"channel": "a", "version": "1", "type": "msgpack", "data": b"\xff"}],
        if_none_match=True,
        delta_channels=["d"],
        job_id="j",
        lease="l",
        ns="child:1",
    )
    method, path, kw = rec.last()
    assert (method, path) == ("PUT", "/v1/threads/th%2F1/checkpoints/cp%201")
    assert kw["params"] == {"ns": "child:1"} and kw["headers"] == {"if-none-match": "*"}
    assert kw.get("retry", ALWAYS) == ALWAYS
    assert kw["body"] == {
        "parent_checkpoint_id": None,
        "checkpoint": {"type": "msgpack", "data": "AQI="},
        "metadata": {"step": 1},
        "channel_versions": {"a": "1", "b": "2"},
        "blobs": [{"channel": "a", "version": "1", "type": "msgpack", "data": "/w=="}],
        "delta_channels": ["d"],
        "job_id": "j",
        "lease": "l",
    }
    c.put_checkpoint(
        "t", "c", checkpoint={"type": "x", "data": b""}, metadata={}, channel_versions={}, blobs=[]
    )
    assert rec.last()[2]["headers"] is None and rec.last()[2]["params"] == {"ns": ""}
    assert "job_id" not in rec.last()[2]["body"] and "delta_channels" not in rec.last()[2]["body"]
    with pytest.raises(TypeError):
        c.put_checkpoint("t", "c", checkpoint=("x", "text"), metadata={}, channel_versions={}, blobs=[])  # type: ignore[arg-type]

    c.put_checkpoint_writes("t", "c", task_id="k", writes=[{"channel": "w", "type": "json", "data": b"{}"}])
    method, path, kw = rec.last()
    assert (method, path, kw["params"]) == ("POST", "/v1/threads/t/checkpoints/c/writes", {"ns": ""})
    assert kw["body"] == {
        "task_id": "k",
        "task_path": "",
        "writes": [{"channel": "w", "type": "json", "data": "e30="}],
    }

    got = c.get_checkpoint("t")
    assert rec.last()[:2] == ("GET", "/v1/threads/t/checkpoints/latest")
    assert got["checkpoint"]["data"] == b"\x00\xff" and got["blobs"][0]["data"] == b"\x00\xff"
    assert got["pending_writes"][0]["data"] == b"\x00\xff"

    rows = list(c.list_checkpoints("t", metadata={"k": [1]}, full=True, before="z", limit=5))
    method, path, kw = rec.last()
    assert (method, path) == ("GET", "/v1/checkpoints")
    assert kw["params"] == {"thread": "t", "before": "z", "metadata": '{"k":[1]}', "full": "true", "limit": 5}
    assert rows[0]["checkpoint"]["data"] == b"\x00\xff"
    list(c.list_checkpoints())
    assert rec.last()[2]["params"] == {"limit": 100}

    list(c.list_threads(updated_before="2030-01-01T00:00:00Z"))
    assert rec.last()[:2] == ("GET", "/v1/threads")
    c.get_thread("a b")
    assert rec.last()[:2] == ("GET", "/v1/threads/a%20b")
    c.patch_thread("t", keep_last=None)
    assert rec.last()[:2] == ("PATCH", "/v1/threads/t") and rec.last()[2]["body"] == {"keep_last": None}
    c.patch_thread("t", metadata={"m": 1}, idle_ttl_ms=5)
    assert rec.last()[2]["body"] == {"metadata": {"m": 1}, "idle_ttl_ms": 5}
    c.delete_thread("t")
    assert rec.last()[:2] == ("DELETE", "/v1/threads/t")
    c.copy_thread("t", "u")
    method, path, kw = rec.last()
    assert (method, path, kw["body"], kw["retry"]) == ("POST", "/v1/threads/t/copy", {"to": "u"}, REFUSED)
    c.prune_checkpoints(("a", "b"))
    assert rec.last()[1:] == ("/v1/checkpoints/prune", rec.last()[2])
    assert rec.last()[2]["body"] == {"threads": ["a", "b"], "strategy": "keep_latest"}
    c.delete_checkpoint_runs(["r"])
    assert rec.last()[1] == "/v1/checkpoints/delete-runs" and rec.last()[2]["body"] == {"run_ids": ["r"]}


class _SlowClient:
    """An `AsyncClient` stand-in whose checkpoint writes take a while and record when they
    run."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    async def _call(self, thread: str, what: str, delay: float) -> dict[str, Any]:
        self.events.append(("start", thread, what))
        await asyncio.sleep(delay)
        self.events.append(("end", thread, what))
        return {}

    async def put_checkpoint(self, thread: str, checkpoint_id: str, **kw: Any) -> dict[str, Any]:
        return await self._call(thread, f"put:{kw['metadata']['step']}", 0.05)

    async def put_checkpoint_writes(self, thread: str, checkpoint_id: str, **kw: Any) -> dict[str, Any]:
        return await self._call(thread, f"writes:{kw['task_id']}", 0.01)


def test_one_threads_calls_are_sent_in_order() -> None:
    async def run() -> list[tuple[str, str, str]]:
        client = _SlowClient()
        saver = AsyncFerrySaver(client)  # type: ignore[arg-type]
        version = saver.get_next_version(None, None)

        def put(thread: str, step: int) -> Any:
            cp = _checkpoint({"a": step}, {"a": version})
            config = {"configurable": {"thread_id": thread, "checkpoint_ns": ""}}
            return saver.aput(config, cp, {"source": "loop", "step": step}, {"a": version})

        def writes(thread: str, task: str) -> Any:
            config = {"configurable": {"thread_id": thread, "checkpoint_ns": "", "checkpoint_id": "c"}}
            return saver.aput_writes(config, [("a", 1)], task)

        await asyncio.gather(put("t1", 1), writes("t1", "k1"), put("t2", 1), put("t1", 2), writes("t1", "k2"))
        assert len(saver._locks) == 0
        return client.events

    events = asyncio.run(run())
    t1 = [(e, what) for e, thread, what in events if thread == "t1"]
    assert t1 == [
        (e, what) for what in ("put:1", "writes:k1", "put:2", "writes:k2") for e in ("start", "end")
    ], "one at a time, in the order they were made"
    assert events.index(("start", "t2", "put:1")) < events.index(("end", "t1", "put:1")), (
        "threads run at once"
    )
