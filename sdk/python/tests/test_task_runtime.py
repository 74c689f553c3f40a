"""Tasks on a real server: timeouts retried until the job is dead, wrong-typed payloads dead at
once naming the field (pydantic's and the built-in validator), `.enqueue` carrying the
decorator's options, `current_job()` in async and thread handlers, hooks, log records
carrying the job id, and `drain()`."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest

import ferry
from ferry.testing import FerryServer, InMemoryClient

pytestmark = pytest.mark.timeout(60)

NO_WAIT = {"base_ms": 0}  # retries are due at once


def _has_pydantic() -> bool:
    try:
        import pydantic  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize("kind", ["asyncio", "threads"])
def test_timeouts_are_retried_then_dead(ferry_server: FerryServer, kind: str) -> None:
    w = ferry.Worker(ferry_server.url, token=ferry_server.token)
    entered: list[int] = []

    if kind == "asyncio":

        @w.task("slow", retries=3, timeout_ms=200, backoff=NO_WAIT)
        async def slow_async(n: int) -> None:
            entered.append(ferry.current_job().attempt)
            await asyncio.sleep(30)

        task: ferry.Task[Any, Any] = slow_async
    else:

        @w.task("slow", retries=3, timeout_ms=200, backoff=NO_WAIT)
        def slow_threads(n: int) -> None:
            job = ferry.current_job()
            entered.append(job.attempt)
            while True:  # Python code: the raised JobCancelled lands between two sleeps
                time.sleep(0.01)

        task = slow_threads

    job_id = task.enqueue(n=1)["id"]
    started = time.monotonic()
    w.drain(timeout=30)
    took = time.monotonic() - started
    job = ferry_server.client().get_job(job_id)
    assert job["state"] == "dead"
    assert job["attempt"] == 4
    assert job["max_attempts"] == 4
    assert job["timeout_ms"] == 200
    assert [e["message"] for e in job["errors"]] == ["timed out after 200 ms"] * 4
    assert entered == [1, 2, 3, 4]
    assert w.stats.timed_out == 4
    assert took < 20


@pytest.mark.parametrize("validator", ["pydantic", "builtin"])
def test_a_wrong_typed_payload_is_dead_at_once(ferry_server: FerryServer, validator: str) -> None:
    if validator == "pydantic" and not _has_pydantic():
        pytest.skip("pydantic not installed")
    w = ferry.Worker(ferry_server.url, token=ferry_server.token)
    ran: list[int] = []

    @w.task("typed", retries=5)
    def typed(count: int, names: list[str]) -> None:
        ran.append(count)

    typed.use_validator(pydantic=validator == "pydantic")
    client = ferry_server.client()
    # Enqueued around `.enqueue` (which would refuse it): another producer's bad job.
    bad = client.enqueue("typed", {"count": 1, "names": ["a", 2]}, max_attempts=6)["id"]
    w.drain(timeout=20)  # not a handler error: nothing is re-raised
    assert w.stats.invalid == 1
    job = client.get_job(bad)
    assert job["state"] == "dead"
    assert job["attempt"] == 1
    assert len(job["errors"]) == 1
    assert job["errors"][0]["message"].startswith("invalid payload: names[1]: ")
    assert ran == []
    # `.enqueue` validates before sending.
    with pytest.raises(ferry.PayloadInvalid) as info:
        typed.enqueue(count="three", names=[])
    assert info.value.field == "count"


def test_enqueue_carries_the_decorator_options(ferry_server: FerryServer) -> None:
    w = ferry.Worker(ferry_server.url, token=ferry_server.token)

    @w.task("opts", retries=3, timeout_ms=60_000, lease_ms=30_000, priority=7, tags=["t"])
    async def opts(x: int) -> int:
        return x

    client = ferry_server.client()
    job = client.get_job(opts.enqueue(x=1)["id"])
    assert (job["max_attempts"], job["timeout_ms"], job["lease_ms"], job["priority"], job["tags"]) == (
        4,
        60_000,
        30_000,
        7,
        ["t"],
    )
    later = client.get_job(opts.with_options(delay_ms=60_000).enqueue(x=2)["id"])
    assert later["state"] == "scheduled"

    async def via_async() -> str:
        return str((await opts.aenqueue(x=3))["id"])

    assert client.get_job(asyncio.run(via_async()))["payload"] == {"x": 3}


@pytest.mark.parametrize("kind", ["asyncio", "threads"])
def test_current_job_hooks_and_log_records(
    ferry_server: FerryServer, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[tuple[str, str, Any]] = []

    def before(job: ferry.JobContext) -> None:
        events.append(("before", job.id, ferry.current_job().id))

    async def after(job: ferry.JobContext, result: Any) -> None:
        events.append(("after", job.id, result))

    def on_error(job: ferry.JobContext, exc: BaseException) -> None:
        events.append(("error", job.id, str(exc)))

    w = ferry.Worker(
        ferry_server.url, token=ferry_server.token, before=before, after=after, on_error=on_error
    )
    seen: dict[int, dict[str, Any]] = {}
    log = logging.getLogger("tests.app")

    def look(n: int) -> dict[str, Any]:
        job = ferry.current_job()
        log.warning("handling %d", n)
        return {
            "id": job.id,
            "queue": job.queue,
            "attempt": job.attempt,
            "left": job.deadline - time.time(),
            "cancelled": job.cancelled,
            "thread": threading.current_thread().name,
        }

    if kind == "asyncio":

        @w.task("ctx", lease_ms=30_000, backoff=NO_WAIT)
        async def ctx_async(n: int) -> int:
            seen[n] = look(n)
            await ferry.current_job().aheartbeat(progress=0.5)
            await asyncio.sleep(0)
            seen[n]["after_await"] = ferry.current_job().id
            if n == 3:
                raise ValueError("three")
            return n

        task: ferry.Task[Any, Any] = ctx_async
    else:

        @w.task("ctx", lease_ms=30_000, backoff=NO_WAIT)
        def ctx_threads(n: int) -> int:
            seen[n] = look(n)
            ferry.current_job().heartbeat(progress=0.5)
            seen[n]["after_await"] = ferry.current_job().id
            if n == 3:
                raise ValueError("three")
            return n

        task = ctx_threads

    ids = {n: task.enqueue(n=n)["id"] for n in (1, 2, 3)}
    caplog.set_level(logging.WARNING, logger="tests.app")
    with pytest.raises(ValueError, match="three"):
        w.drain(timeout=20)
    for n in (1, 2):
        assert seen[n]["id"] == ids[n] == seen[n]["after_await"]
        assert seen[n]["queue"] == "ctx"
        assert seen[n]["attempt"] == 1
        assert 20 < seen[n]["left"] <= 31  # the 30 s lease bounds the deadline
        assert seen[n]["cancelled"] is False
        assert seen[n]["thread"].startswith("ferry-worker" if kind == "threads" else "MainThread")
    records = {r.getMessage(): getattr(r, "job_id", None) for r in caplog.records if r.name == "tests.app"}
    assert records["handling 1"] == ids[1]
    assert records["handling 2"] == ids[2]
    assert ("before", ids[1], ids[1]) in events
    assert ("after", ids[1], 1) in events
    assert ("after", ids[2], 2) in events
    assert ("error", ids[3], "three") in events
    client = ferry_server.client()
    assert client.get_job(ids[1])["result"] == 1
    failed = client.get_job(ids[3])
    assert failed["errors"][0]["message"] == "ValueError: three"


def test_drain_on_the_in_memory_client_and_follow_up_enqueues() -> None:
    mem = InMemoryClient()
    w = ferry.Worker(client=mem)
    done: list[int] = []

    @w.task("second")
    def second(n: int) -> None:
        done.append(n)

    @w.task("first")
    async def first(n: int) -> None:
        await second.aenqueue(n=n * 10)  # through the worker's own client

    async def run() -> None:
        for i in range(3):
            await mem.enqueue("first", {"n": i})
        await w.adrain(timeout=10)

    asyncio.run(run())
    assert sorted(done) == [0, 10, 20]
    assert w.stats.completed == 6


def test_drain_reraises_the_first_handler_error() -> None:
    mem = InMemoryClient()
    w = ferry.Worker(client=mem)

    @w.task("fails")
    async def fails() -> None:
        raise KeyError("nope")

    async def run() -> None:
        await mem.enqueue("fails")
        await w.adrain(timeout=10)

    with pytest.raises(KeyError, match="nope"):
        asyncio.run(run())
    assert w.stats.failed == 1


def test_small_server_limits_are_respected(ferry_server_factory: Any) -> None:
    # Batches and claims larger than the server allows are split, not fatal.
    server = ferry_server_factory(config={"limits": {"max_batch": 3, "max_claim": 4}})
    w = ferry.Worker(server.url, token=server.token, concurrency=10)

    @w.task("limited", lease_ms=600)
    async def limited(n: int) -> int:
        await asyncio.sleep(0.5)  # past a third of the lease: heartbeats go out
        return n

    client = server.client()
    ids = [limited.enqueue(n=i)["id"] for i in range(20)]
    w.drain(timeout=30)
    jobs = [client.get_job(i) for i in ids]
    assert [j["state"] for j in jobs] == ["completed"] * 20
    assert {j["attempt"] for j in jobs} == {1}
    assert w.stats.lease_lost == 0
