"""One suite of behaviour tests that runs unchanged on the in-memory client and on the real
server (`ferry serve`, SQLite, auth on): if `ferry.testing.InMemoryClient` drifts from the
server's semantics, the `memory` half of a test here fails where the `server` half passes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

import ferry
from ferry.testing import FerryServer, InMemoryClient

pytestmark = pytest.mark.timeout(60)

Make = Callable[[], Any]  # () -> an async context manager yielding a client

CLAIMED_KEYS = {
    "id",
    "queue",
    "payload",
    "attempt",
    "max_attempts",
    "priority",
    "tags",
    "lease",
    "lease_expires_at",
    "timeout_ms",
}
JOB_KEYS = {
    "id",
    "queue",
    "state",
    "payload",
    "priority",
    "attempt",
    "max_attempts",
    "backoff",
    "lease_ms",
    "timeout_ms",
    "depends_on",
    "tags",
    "run_at",
    "created_at",
    "updated_at",
    "errors",
}
NO_WAIT = {"base_ms": 0}  # retries ready at once, on both backends
UNKNOWN_ID = "01890000-0000-7000-8000-000000000000"


@pytest.fixture(params=["memory", "server"])
def make(request: pytest.FixtureRequest) -> Iterator[Make]:
    """A factory of clients for one backend; every client of a test shares one store."""
    if request.param == "memory":
        store = InMemoryClient(name="parity")

        @asynccontextmanager
        async def memory() -> AsyncIterator[Any]:
            yield store

        yield memory
    else:
        server: FerryServer = request.getfixturevalue("ferry_server")

        @asynccontextmanager
        async def real() -> AsyncIterator[Any]:
            client = server.async_client(name="parity")
            try:
                yield client
            finally:
                await client.aclose()

        yield real


def run(make: Make, body: Callable[[Any], Awaitable[None]]) -> None:
    async def go() -> None:
        async with make() as c:
            await body(c)

    asyncio.run(go())


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def test_enqueue_claim_complete(make: Make) -> None:
    async def body(c: Any) -> None:
        r = await c.enqueue("p.basic", {"n": 1, "s": "é"}, tags=["t1"], priority=3)
        assert set(r) == {"id"}
        got = await c.get_job(r["id"])
        assert set(got) >= JOB_KEYS and got["state"] == "ready" and got["attempt"] == 0
        [job] = await c.claim("p.basic", worker="w1", max=5)
        assert set(job) == CLAIMED_KEYS
        assert (job["id"], job["payload"], job["tags"], job["priority"]) == (
            r["id"],
            {"n": 1, "s": "é"},
            ["t1"],
            3,
        )
        assert (job["attempt"], job["max_attempts"]) == (1, 5)
        running = await c.get_job(r["id"])
        assert (running["state"], running["worker"], running["attempt"]) == ("running", "w1", 1)
        assert await c.claim("p.basic", worker="w1") == []
        [res] = await c.complete_batch([{"id": job["id"], "lease": job["lease"], "result": {"ok": True}}])
        assert res == {"id": r["id"], "ok": True, "state": "completed"}
        done = await c.get_job(r["id"])
        assert (done["state"], done["result"], done["errors"]) == ("completed", {"ok": True}, [])
        assert "finished_at" in done and "lease_expires_at" not in done
        # A repeat with the lease that completed it is accepted again (a retried report).
        [again] = await c.complete_batch([{"id": job["id"], "lease": job["lease"]}])
        assert again["ok"] is True
        assert (await c.complete(job["id"], job["lease"])) == {"id": r["id"], "state": "completed"}

    run(make, body)


def test_fail_retry_then_dead(make: Make) -> None:
    async def body(c: Any) -> None:
        r = await c.enqueue("p.retry", max_attempts=3, backoff=NO_WAIT)
        for attempt in (1, 2):
            [job] = await c.claim("p.retry", worker="w")
            assert job["attempt"] == attempt
            [out] = await c.fail_batch([{"id": job["id"], "lease": job["lease"], "error": f"boom {attempt}"}])
            assert out == {"id": r["id"], "ok": True, "state": "ready", "attempt": attempt}
        [job] = await c.claim("p.retry", worker="w")
        out = await c.fail(job["id"], job["lease"], "boom 3")
        assert out == {"id": r["id"], "state": "dead", "attempt": 3}
        dead = await c.get_job(r["id"])
        assert dead["state"] == "dead" and dead["attempt"] == 3
        assert [(e["attempt"], e["kind"], e["message"], e["worker"]) for e in dead["errors"]] == [
            (1, "failed", "boom 1", "w"),
            (2, "failed", "boom 2", "w"),
            (3, "failed", "boom 3", "w"),
        ]
        assert [j["id"] for j in await c.dlq("p.retry").all()] == [r["id"]]
        assert await c.claim("p.retry", worker="w") == []
        # Replayed: attempts reset, history kept.
        assert await c.dlq_replay([r["id"]]) == {"replayed": 1}
        back = await c.get_job(r["id"])
        assert (back["state"], back["attempt"], len(back["errors"])) == ("ready", 0, 3)

    run(make, body)


def test_backoff_schedules_the_retry(make: Make) -> None:
    async def body(c: Any) -> None:
        r = await c.enqueue("p.backoff", backoff={"base_ms": 60_000, "jitter": 0})
        [job] = await c.claim("p.backoff", worker="w")
        [out] = await c.fail_batch([{"id": job["id"], "lease": job["lease"], "error": "later"}])
        assert (out["state"], out["attempt"]) == ("scheduled", 1) and "run_at" in out
        got = await c.get_job(r["id"])
        assert got["state"] == "scheduled" and got["run_at"] == out["run_at"]
        assert await c.claim("p.backoff", worker="w") == []

    run(make, body)


def test_retry_false_is_dead_at_once(make: Make) -> None:
    async def body(c: Any) -> None:
        r = await c.enqueue("p.noretry", max_attempts=10)
        [job] = await c.claim("p.noretry", worker="w")
        [out] = await c.fail_batch(
            [{"id": job["id"], "lease": job["lease"], "error": "bad input", "retry": False}]
        )
        assert (out["state"], out["attempt"]) == ("dead", 1)
        assert (await c.get_job(r["id"]))["state"] == "dead"

    run(make, body)


def test_stale_lease_is_fenced(make: Make) -> None:
    async def body(c: Any) -> None:
        r = await c.enqueue("p.stale", backoff=NO_WAIT)
        [first] = await c.claim("p.stale", worker="a")
        await c.fail_batch([{"id": first["id"], "lease": first["lease"], "error": "x"}])
        [second] = await c.claim("p.stale", worker="b")
        assert second["lease"] != first["lease"] and second["attempt"] == 2
        [late] = await c.complete_batch([{"id": first["id"], "lease": first["lease"], "result": "a"}])
        assert late["ok"] is False and late["error"]["code"] == "stale_lease" and late["id"] == r["id"]
        with pytest.raises(ferry.StaleLease) as e:
            await c.complete(first["id"], first["lease"])
        assert e.value.status == 409 and e.value.code == "stale_lease"
        with pytest.raises(ferry.StaleLease):
            await c.release(first["id"], first["lease"])
        with pytest.raises(ferry.StaleLease):
            await c.heartbeat(first["id"], first["lease"])
        unknown = await c.complete_batch([{"id": UNKNOWN_ID, "lease": "1.x"}, {"id": "nope", "lease": "1.x"}])
        assert [u["error"]["code"] for u in unknown] == ["not_found", "not_found"]
        assert [u["id"] for u in unknown] == [UNKNOWN_ID, "nope"]
        with pytest.raises(ferry.NotFound):
            await c.release(UNKNOWN_ID, "1.x")
        with pytest.raises(ferry.NotFound):
            await c.get_job(UNKNOWN_ID)
        [ok] = await c.complete_batch([{"id": second["id"], "lease": second["lease"], "result": "b"}])
        assert ok["ok"] is True
        assert (await c.get_job(r["id"]))["result"] == "b"

    run(make, body)


def test_release_does_not_count_the_attempt(make: Make) -> None:
    async def body(c: Any) -> None:
        r = await c.enqueue("p.release", max_attempts=1)
        for _ in range(3):
            [job] = await c.claim("p.release", worker="w")
            assert job["attempt"] == 1
            assert await c.release(job["id"], job["lease"]) == {"id": r["id"], "state": "ready"}
            got = await c.get_job(r["id"])
            assert (got["state"], got["attempt"]) == ("ready", 0)
        [job] = await c.claim("p.release", worker="w")
        [done] = await c.complete_batch([{"id": job["id"], "lease": job["lease"]}])
        assert done["ok"] is True

    run(make, body)


def test_unique_key_dedups_while_unfinished(make: Make) -> None:
    async def body(c: Any) -> None:
        first = await c.enqueue("p.unique", {"v": 1}, unique_key="order-7")
        dup = await c.enqueue("p.unique", {"v": 2}, unique_key="order-7")
        assert dup == {"id": first["id"], "duplicate": True}
        [job] = await c.claim("p.unique", worker="w")
        assert job["payload"] == {"v": 1}
        assert (await c.enqueue("p.unique", unique_key="order-7"))["id"] == first["id"]  # running
        batch = await c.enqueue_batch([{"queue": "p.unique", "unique_key": "order-7"}, {"queue": "p.unique"}])
        assert batch["ids"][0] == first["id"] and batch["duplicates"] == [0]
        await c.complete_batch([{"id": job["id"], "lease": job["lease"]}])
        fresh = await c.enqueue("p.unique", {"v": 3}, unique_key="order-7")
        assert fresh["id"] != first["id"] and "duplicate" not in fresh

    run(make, body)


def test_priority_then_age(make: Make) -> None:
    async def body(c: Any) -> None:
        low = await c.enqueue("p.prio", "low", priority=-5)
        a = await c.enqueue("p.prio", "a")
        high = await c.enqueue("p.prio", "high", priority=10)
        b = await c.enqueue("p.prio", "b")
        jobs = await c.claim("p.prio", worker="w", max=10)
        assert [j["id"] for j in jobs] == [high["id"], a["id"], b["id"], low["id"]]

    run(make, body)


def test_heartbeat_batch_per_item(make: Make) -> None:
    async def body(c: Any) -> None:
        await c.enqueue_batch([{"queue": "p.hb", "lease_ms": 5_000}, {"queue": "p.hb"}])
        a, b = await c.claim("p.hb", worker="w", max=2)
        await c.complete_batch([{"id": b["id"], "lease": b["lease"]}])
        out = await c.heartbeat_batch(
            [
                {"id": a["id"], "lease": a["lease"], "extend_ms": 20_000},
                {"id": b["id"], "lease": b["lease"]},
                {"id": UNKNOWN_ID, "lease": "1.x"},
                {"id": a["id"], "lease": ""},
            ],
            worker="w",
        )
        assert [r["ok"] for r in out] == [True, False, False, False]
        assert [r["id"] for r in out] == [a["id"], b["id"], UNKNOWN_ID, a["id"]]
        assert set(out[0]) == {"id", "ok", "lease_expires_at"}
        assert out[0]["lease_expires_at"] > a["lease_expires_at"]
        assert [r["error"]["code"] for r in out[1:]] == ["stale_lease", "not_found", "validation_failed"]
        assert out[3]["error"]["field"] == "items[3].lease"
        assert (await c.get_job(a["id"]))["lease_expires_at"] == out[0]["lease_expires_at"]
        assert await c.heartbeat_batch([]) == []

    run(make, body)


def test_timeout_ms_round_trip(make: Make) -> None:
    async def body(c: Any) -> None:
        set_ = await c.enqueue("p.timeout", timeout_ms=1_234)
        default = await c.enqueue("p.timeout")
        assert (await c.get_job(set_["id"]))["timeout_ms"] == 1_234
        assert (await c.get_job(default["id"]))["timeout_ms"] == 86_400_000
        jobs = await c.claim("p.timeout", worker="w", max=2)
        assert [j["timeout_ms"] for j in jobs] == [1_234, 86_400_000]
        with pytest.raises(ferry.ValidationFailed) as e:
            await c.enqueue("p.timeout", timeout_ms=0)
        assert e.value.field == "timeout_ms"

    run(make, body)


def test_lease_expiry_returns_the_job(make: Make) -> None:
    async def body(c: Any) -> None:
        r = await c.enqueue("p.expire", max_attempts=2, lease_ms=100)
        [first] = await c.claim("p.expire", worker="gone")

        async def ready() -> bool:
            return bool((await c.get_job(r["id"]))["state"] == "ready")

        await until(ready)  # the server's reaper runs every second
        got = await c.get_job(r["id"])
        assert got["attempt"] == 1 and got["errors"][-1]["kind"] == "lease_expired"
        [second] = await c.claim("p.expire", worker="w", lease_ms=100)
        assert second["attempt"] == 2
        [late] = await c.complete_batch([{"id": first["id"], "lease": first["lease"]}])
        assert late["error"]["code"] == "stale_lease"

        async def dead() -> bool:
            return bool((await c.get_job(r["id"]))["state"] == "dead")

        await until(dead)  # no attempt left
        assert [e["kind"] for e in (await c.get_job(r["id"]))["errors"]] == ["lease_expired"] * 2

    run(make, body)


def test_delay_and_long_poll(make: Make) -> None:
    async def body(c: Any) -> None:
        r = await c.enqueue("p.delay", delay_ms=300)
        assert (await c.get_job(r["id"]))["state"] == "scheduled"
        assert await c.claim("p.delay", worker="w") == []
        t0 = time.monotonic()
        [job] = await c.claim("p.delay", worker="w", wait_ms=10_000)
        assert job["id"] == r["id"] and time.monotonic() - t0 < 5

        async def later() -> None:
            await asyncio.sleep(0.1)
            await c.enqueue("p.delay", "woken")

        task = asyncio.create_task(later())
        [woken] = await c.claim("p.delay", worker="w", wait_ms=10_000)
        await task
        assert woken["payload"] == "woken"
        t0 = time.monotonic()
        assert await c.claim("p.delay", worker="w", wait_ms=200) == []
        assert time.monotonic() - t0 >= 0.15

    run(make, body)


def test_cancel(make: Make) -> None:
    async def body(c: Any) -> None:
        r = await c.enqueue("p.cancel", delay_ms=60_000)
        assert await c.cancel(r["id"], "not needed") == {"id": r["id"], "state": "cancelled"}
        assert (await c.get_job(r["id"]))["cancel_reason"] == "not needed"
        running = await c.enqueue("p.cancel")
        [job] = await c.claim("p.cancel", worker="w")
        with pytest.raises(ferry.InvalidState):
            await c.cancel(running["id"])
        await c.complete_batch([{"id": job["id"], "lease": job["lease"]}])
        with pytest.raises(ferry.InvalidState):
            await c.cancel(running["id"])

    run(make, body)


def test_validation_errors(make: Make) -> None:
    async def body(c: Any) -> None:
        with pytest.raises(ferry.ValidationFailed) as e:
            await c.enqueue("p.valid", max_attempts=0)
        assert (e.value.field, e.value.status) == ("max_attempts", 422)
        with pytest.raises(ferry.ValidationFailed) as e:
            await c.enqueue("bad queue name")
        assert e.value.field == "queue"
        with pytest.raises(ferry.ValidationFailed) as e:
            await c.enqueue_batch([{"queue": "p.valid"}, {"queue": "p.valid", "lease_ms": 1}])
        assert e.value.field == "jobs[1].lease_ms"
        assert await c.list_jobs("p.valid").all() == []
        with pytest.raises(ferry.ValidationFailed) as e:
            await c.claim("p.valid", worker="w", max=0)
        assert e.value.field == "max"
        with pytest.raises(ferry.BadRequest):
            await c.enqueue("p.valid", bogus=1)

    run(make, body)


def test_list_pages(make: Make) -> None:
    async def body(c: Any) -> None:
        ids = (await c.enqueue_batch([{"queue": "p.list", "payload": i} for i in range(25)]))["ids"]
        assert [j["id"] for j in await c.list_jobs("p.list", page_size=10).all()] == ids
        page = await c.list_jobs("p.list", page_size=10).page()
        assert len(page["jobs"]) == 10 and page["next_cursor"]
        await c.claim("p.list", worker="w", max=4)
        assert len(await c.list_jobs("p.list", "running").all()) == 4
        [stats] = [q for q in await c.queues() if q["queue"] == "p.list"]
        assert (stats["counts"]["ready"], stats["counts"]["running"], stats["paused"]) == (21, 4, False)

    run(make, body)


def test_worker_drain(make: Make) -> None:
    async def body(c: Any) -> None:
        worker = ferry.Worker(client=c, concurrency=4, name="parity-worker")
        seen: list[int] = []

        @worker.task("p.drain", retries=2, lease_ms=5_000)
        async def add(n: int) -> int:
            seen.append(n)
            return n * 2

        @worker.task("p.drain_sync")
        def plain(n: int) -> int:
            return n + 1

        ids = [(await add.aenqueue(n=n))["id"] for n in range(20)]
        sync_id = (await plain.aenqueue(n=41))["id"]
        await worker.adrain("p.drain", timeout=20)
        assert sorted(seen) == list(range(20))
        for i, jid in enumerate(ids):
            got = await c.get_job(jid)
            assert (got["state"], got["result"], got["attempt"], got["max_attempts"]) == (
                "completed",
                i * 2,
                1,
                3,
            )
        await worker.adrain("p.drain_sync", timeout=20)
        assert (await c.get_job(sync_id))["result"] == 42

    run(make, body)


def test_worker_drain_reraises_the_first_handler_error(make: Make) -> None:
    async def body(c: Any) -> None:
        worker = ferry.Worker(client=c, concurrency=2)

        @worker.task("p.boom", max_attempts=1)
        async def boom(n: int) -> None:
            raise RuntimeError(f"boom {n}")

        r = await boom.aenqueue(n=1)
        with pytest.raises(RuntimeError, match="boom 1"):
            await worker.adrain("p.boom", timeout=20)

        async def dead() -> bool:
            return bool((await c.get_job(r["id"]))["state"] == "dead")

        await until(dead)
        got = await c.get_job(r["id"])
        assert got["errors"][0]["kind"] == "failed" and "boom 1" in got["errors"][0]["message"]

    run(make, body)


def test_worker_invalid_payload_is_dead_naming_the_field(make: Make) -> None:
    async def body(c: Any) -> None:
        worker = ferry.Worker(client=c)

        @worker.task("p.typed", retries=5)
        async def typed(n: int) -> int:
            return n

        r = await c.enqueue("p.typed", {"n": "not a number"})
        await worker.adrain("p.typed", timeout=20)  # not a handler error: nothing re-raised
        got = await c.get_job(r["id"])
        assert (got["state"], got["attempt"]) == ("dead", 1)
        assert got["errors"][0]["message"].startswith("invalid payload: n:")

    run(make, body)
