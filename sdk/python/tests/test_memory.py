"""The in-memory client's semantics, case by case (the parity suite checks that they match the
real server's; these cover what is awkward to provoke there: lease expiry and backoff on a
manual clock, long-poll wake-ups, dependencies, the DLQ)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

import ferry
from ferry.testing import InMemoryClient, ManualClock, SyncInMemoryClient

pytestmark = pytest.mark.timeout(30)

T = TypeVar("T")
NO_JITTER = {"base_ms": 1000, "factor": 2, "jitter": 0}
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


def run(fn: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(fn())  # type: ignore[arg-type]


def client(**kw: Any) -> tuple[InMemoryClient, ManualClock]:
    clock = ManualClock(1_700_000_000_000)
    return InMemoryClient(clock=clock, seed=7, **kw), clock


def test_lifecycle_and_shapes() -> None:
    async def go() -> None:
        c, _ = client()
        r = await c.enqueue("q", {"n": 1}, tags=["a"], timeout_ms=5_000)
        assert set(r) == {"id"}
        [job] = await c.claim("q", worker="w1", lease_ms=2_000)
        assert set(job) == CLAIMED_KEYS
        assert (job["id"], job["attempt"], job["max_attempts"], job["timeout_ms"]) == (r["id"], 1, 5, 5_000)
        assert job["payload"] == {"n": 1} and job["tags"] == ["a"]
        assert job["lease_expires_at"] == "2023-11-14T22:13:22.000Z"
        assert job["lease"].startswith("1.")
        running = await c.get_job(r["id"])
        assert running["state"] == "running" and running["worker"] == "w1"
        [res] = await c.complete_batch([{"id": job["id"], "lease": job["lease"], "result": [1, 2]}])
        assert res == {"id": job["id"], "ok": True, "state": "completed"}
        done = await c.get_job(r["id"])
        assert done["state"] == "completed" and done["result"] == [1, 2]
        assert done["finished_at"] == "2023-11-14T22:13:20.000Z"
        assert "lease_expires_at" not in done
        assert done["backoff"] == {"base_ms": 1000, "factor": 2.0, "max_ms": 3_600_000, "jitter": 0.25}
        # A repeat of the completion with the same lease succeeds again; it changes nothing.
        [again] = await c.complete_batch([{"id": job["id"], "lease": job["lease"], "result": 9}])
        assert again["ok"] is True and (await c.get_job(r["id"]))["result"] == [1, 2]

    run(go)


def test_payload_is_copied_through_json() -> None:
    async def go() -> None:
        c, _ = client()
        payload: dict[str, Any] = {"t": (1, 2), "n": None}
        await c.enqueue("q", payload)
        payload["t"] = "changed"
        [job] = await c.claim("q", worker="w")
        assert job["payload"] == {"t": [1, 2], "n": None}
        with pytest.raises(TypeError):
            await c.enqueue("q", {"x": object()})

    run(go)


def test_timeout_ms_defaults_and_limits() -> None:
    async def go() -> None:
        c, _ = client()
        r = await c.enqueue("q")
        [job] = await c.claim("q", worker="w")
        assert job["timeout_ms"] == 86_400_000
        assert (await c.get_job(r["id"]))["timeout_ms"] == 86_400_000
        await c.enqueue("q", timeout_ms=7 * 86_400_000)
        with pytest.raises(ferry.ValidationFailed) as e:
            await c.enqueue("q", timeout_ms=7 * 86_400_000 + 1)
        assert e.value.field == "timeout_ms" and e.value.status == 422

    run(go)


def test_release_gives_the_attempt_back() -> None:
    async def go() -> None:
        c, _ = client()
        r = await c.enqueue("q", max_attempts=1)
        for _ in range(3):
            [job] = await c.claim("q", worker="w")
            assert job["attempt"] == 1
            assert await c.release(job["id"], job["lease"]) == {"id": r["id"], "state": "ready"}
            got = await c.get_job(r["id"])
            assert (got["state"], got["attempt"]) == ("ready", 0)
            assert "started_at" not in got
            with pytest.raises(ferry.StaleLease):
                await c.release(job["id"], job["lease"])
        with pytest.raises(ferry.NotFound):
            await c.release("01890000-0000-7000-8000-000000000000", "1.x")
        with pytest.raises(ferry.NotFound):
            await c.release("not-a-uuid", "1.x")

    run(go)


def test_fencing_old_lease_is_stale_after_reclaim() -> None:
    async def go() -> None:
        c, clock = client()
        r = await c.enqueue("q", max_attempts=3)
        [first] = await c.claim("q", worker="a", lease_ms=1_000)
        clock.advance(1_000)  # the lease lapses at exactly its expiry
        hb = await c.heartbeat_batch([{"id": first["id"], "lease": first["lease"]}])
        assert hb[0]["ok"] is False and hb[0]["error"]["code"] == "stale_lease"
        got = await c.get_job(r["id"])
        assert (got["state"], got["attempt"]) == ("ready", 1)
        assert got["errors"][-1]["kind"] == "lease_expired" and got["errors"][-1]["worker"] == "a"
        [second] = await c.claim("q", worker="b")
        assert second["attempt"] == 2 and second["lease"] != first["lease"]
        [late] = await c.complete_batch([{"id": first["id"], "lease": first["lease"]}])
        assert late["ok"] is False and late["error"]["code"] == "stale_lease"
        [late_fail] = await c.fail_batch([{"id": first["id"], "lease": first["lease"], "error": "x"}])
        assert late_fail["error"]["code"] == "stale_lease"
        [ok] = await c.complete_batch([{"id": second["id"], "lease": second["lease"], "result": "b"}])
        assert ok["ok"] is True
        assert (await c.get_job(r["id"]))["result"] == "b"

    run(go)


def test_lease_expiry_with_no_attempt_left_is_dead() -> None:
    async def go() -> None:
        c, clock = client()
        r = await c.enqueue("q", max_attempts=1, lease_ms=500)
        await c.claim("q", worker="w")
        clock.advance(499)
        assert (await c.get_job(r["id"]))["state"] == "running"
        clock.advance(1)
        got = await c.get_job(r["id"])
        assert got["state"] == "dead" and got["finished_at"]
        assert [j["id"] for j in await c.dlq().all()] == [r["id"]]

    run(go)


def test_heartbeat_extends_the_lease() -> None:
    async def go() -> None:
        c, clock = client()
        await c.enqueue("q", lease_ms=1_000)
        [job] = await c.claim("q", worker="w")
        for _ in range(5):
            clock.advance(900)
            [hb] = await c.heartbeat_batch([{"id": job["id"], "lease": job["lease"]}], worker="w")
            assert hb["ok"] is True and set(hb) == {"id", "ok", "lease_expires_at"}
        [hb] = await c.heartbeat_batch([{"id": job["id"], "lease": job["lease"], "extend_ms": 5_000}])
        clock.advance(4_000)
        single = await c.heartbeat(job["id"], job["lease"])
        assert set(single) == {"id", "lease_expires_at"}
        clock.advance(999)
        [done] = await c.complete_batch([{"id": job["id"], "lease": job["lease"]}])
        assert done["ok"] is True

    run(go)


def test_heartbeat_batch_answers_each_item() -> None:
    async def go() -> None:
        c, _ = client()
        await c.enqueue("q")
        await c.enqueue("q")
        a, b = await c.claim("q", worker="w", max=2)
        await c.complete_batch([{"id": b["id"], "lease": b["lease"]}])
        out = await c.heartbeat_batch(
            [
                {"id": a["id"], "lease": a["lease"]},
                {"id": b["id"], "lease": b["lease"]},
                {"id": "zz", "lease": "x"},
                {"id": a["id"], "lease": ""},
                {"id": a["id"], "lease": a["lease"], "extend_ms": 1},
            ]
        )
        assert [r["ok"] for r in out] == [True, False, False, False, False]
        assert [r.get("error", {}).get("code") for r in out] == [
            None,
            "stale_lease",
            "not_found",
            "validation_failed",
            "validation_failed",
        ]
        assert out[2]["id"] == "zz"
        assert out[3]["error"]["field"] == "items[3].lease"
        assert out[4]["error"]["field"] == "items[4].extend_ms"
        with pytest.raises(ferry.PayloadTooLarge) as e:
            await c.heartbeat_batch([{"id": a["id"], "lease": a["lease"]}] * 10_001)
        assert e.value.field == "items"

    run(go)


def test_fail_retries_after_backoff_then_dead() -> None:
    async def go() -> None:
        c, clock = client()
        r = await c.enqueue("q", max_attempts=3, backoff=NO_JITTER)
        [j] = await c.claim("q", worker="w")
        [out] = await c.fail_batch([{"id": j["id"], "lease": j["lease"], "error": "boom"}])
        assert out == {
            "id": j["id"],
            "ok": True,
            "state": "scheduled",
            "attempt": 1,
            "run_at": "2023-11-14T22:13:21.000Z",
        }
        # The same report again answers the same outcome (a retried HTTP call is harmless).
        [again] = await c.fail_batch([{"id": j["id"], "lease": j["lease"], "error": "boom"}])
        assert again == out
        assert await c.claim("q", worker="w") == []
        clock.advance(999)
        assert await c.claim("q", worker="w") == []
        clock.advance(1)
        [j] = await c.claim("q", worker="w")
        assert j["attempt"] == 2
        [out] = await c.fail_batch([{"id": j["id"], "lease": j["lease"], "error": "boom"}])
        assert (out["state"], out["run_at"]) == ("scheduled", "2023-11-14T22:13:23.000Z")  # 2 s later
        clock.advance(2_000)
        [j] = await c.claim("q", worker="w")
        [out] = await c.fail_batch([{"id": j["id"], "lease": j["lease"], "error": "last"}])
        assert (out["state"], out["attempt"]) == ("dead", 3) and "run_at" not in out
        got = await c.get_job(r["id"])
        assert [e["message"] for e in got["errors"]] == ["boom", "boom", "last"]
        assert [e["attempt"] for e in got["errors"]] == [1, 2, 3]

    run(go)


def test_fail_without_retry_is_dead_at_once() -> None:
    async def go() -> None:
        c, _ = client()
        r = await c.enqueue("q", max_attempts=5)
        [j] = await c.claim("q", worker="w")
        [out] = await c.fail_batch([{"id": j["id"], "lease": j["lease"], "error": "bad", "retry": False}])
        assert (out["state"], out["attempt"]) == ("dead", 1)
        assert (await c.get_job(r["id"]))["state"] == "dead"

    run(go)


def test_zero_delay_retry_is_ready_and_retry_backoff_off() -> None:
    async def go() -> None:
        c, _ = client()
        await c.enqueue("q", backoff={"base_ms": 0})
        [j] = await c.claim("q", worker="w")
        [out] = await c.fail_batch([{"id": j["id"], "lease": j["lease"]}])
        assert out["state"] == "ready" and "run_at" not in out
        c2, _ = client(retry_backoff=False)
        await c2.enqueue("q")  # the default backoff (1 s) is skipped
        [j] = await c2.claim("q", worker="w")
        [out] = await c2.fail_batch([{"id": j["id"], "lease": j["lease"]}])
        assert out["state"] == "ready"
        assert len(await c2.claim("q", worker="w")) == 1

    run(go)


def test_jitter_shortens_within_its_fraction() -> None:
    async def go() -> None:
        c, _ = client()
        for _ in range(20):
            await c.enqueue("q", backoff={"base_ms": 10_000, "jitter": 0.5}, max_attempts=2)
        jobs = await c.claim("q", worker="w", max=20)
        outs = await c.fail_batch([{"id": j["id"], "lease": j["lease"]} for j in jobs])
        delays = {(await c.get_job(o["id"]))["run_at"] for o in outs}
        assert len(delays) > 1  # drawn per job
        for o in outs:
            assert "2023-11-14T22:13:25.000Z" <= o["run_at"] <= "2023-11-14T22:13:30.000Z"

    run(go)


def test_unique_key_dedups_only_while_unfinished() -> None:
    async def go() -> None:
        c, _ = client()
        a = await c.enqueue("q", 1, unique_key="k")
        b = await c.enqueue("q", 2, unique_key="k")
        assert b == {"id": a["id"], "duplicate": True}
        other = await c.enqueue("other", 2, unique_key="k")  # keys are per queue
        assert "duplicate" not in other
        [j] = await c.claim("q", worker="w")
        dup = await c.enqueue("q", 3, unique_key="k")  # running is unfinished
        assert dup["id"] == a["id"]
        await c.complete_batch([{"id": j["id"], "lease": j["lease"]}])
        fresh = await c.enqueue("q", 4, unique_key="k")
        assert fresh["id"] != a["id"] and "duplicate" not in fresh
        batch = await c.enqueue_batch(
            [
                {"queue": "q", "unique_key": "k"},
                {"queue": "q", "unique_key": "n"},
                {"queue": "q", "unique_key": "n"},
            ]
        )
        assert batch["ids"][0] == fresh["id"] and batch["ids"][1] == batch["ids"][2]
        assert batch["duplicates"] == [0, 2]
        assert "duplicates" not in await c.enqueue_batch([{"queue": "q"}])

    run(go)


def test_claim_order_priority_then_run_at_then_insertion() -> None:
    async def go() -> None:
        c, clock = client()
        low = await c.enqueue("q", "low", priority=-1)
        first = await c.enqueue("q", "first")
        later = await c.enqueue("q", "delayed", delay_ms=100)
        second = await c.enqueue("q", "second")
        high = await c.enqueue("q", "high", priority=10)
        clock.advance(100)
        jobs = await c.claim("q", worker="w", max=10)
        ids = [j["id"] for j in jobs]
        assert ids == [high["id"], first["id"], second["id"], later["id"], low["id"]]

    run(go)


def test_delay_and_run_at() -> None:
    async def go() -> None:
        c, clock = client()
        r = await c.enqueue("q", delay_ms=5_000)
        assert (await c.get_job(r["id"]))["state"] == "scheduled"
        at = await c.enqueue("q", run_at="2023-11-14T22:13:21Z")
        assert (await c.get_job(at["id"]))["run_at"] == "2023-11-14T22:13:21.000Z"
        assert await c.claim("q", worker="w") == []
        clock.advance(1_000)
        assert [j["id"] for j in await c.claim("q", worker="w")] == [at["id"]]
        clock.advance(4_000)
        assert [j["id"] for j in await c.claim("q", worker="w")] == [r["id"]]
        with pytest.raises(ferry.ValidationFailed) as e:
            await c.enqueue("q", delay_ms=1, run_at="2023-11-14T22:13:21Z")
        assert e.value.field == "delay_ms"

    run(go)


def test_validation_errors_name_the_field() -> None:
    async def go() -> None:
        c, _ = client()
        cases: list[tuple[dict[str, Any], type[ferry.FerryError], str]] = [
            ({"max_attempts": 0}, ferry.ValidationFailed, "max_attempts"),
            ({"lease_ms": 5}, ferry.ValidationFailed, "lease_ms"),
            ({"priority": 2**31}, ferry.ValidationFailed, "priority"),
            ({"tags": [""]}, ferry.ValidationFailed, "tags[0]"),
            ({"unique_key": ""}, ferry.ValidationFailed, "unique_key"),
            ({"backoff": {"factor": 0.5}}, ferry.ValidationFailed, "backoff.factor"),
            ({"depends_on": ["nope"]}, ferry.ValidationFailed, "depends_on[0]"),
            ({"bogus": 1}, ferry.BadRequest, "bogus"),
            ({"priority": 1.5}, ferry.BadRequest, "priority"),
        ]
        for fields, cls, field in cases:
            with pytest.raises(cls) as e:
                await c.enqueue("q", **fields)
            assert e.value.field == field, fields
        with pytest.raises(ferry.ValidationFailed) as e:
            await c.enqueue("bad queue")
        assert e.value.field == "queue"
        with pytest.raises(ferry.ValidationFailed) as e:
            await c.enqueue_batch([{"queue": "q"}, {"queue": "q", "max_attempts": 0}])
        assert e.value.field == "jobs[1].max_attempts"
        assert await c.list_jobs().all() == []  # all or nothing
        with pytest.raises(ferry.PayloadTooLarge):
            await c.enqueue("q", "x" * (1 << 20))
        with pytest.raises(ferry.PayloadTooLarge) as e:
            await c.enqueue_batch([{"queue": "q"}] * 10_001)
        assert e.value.field == "jobs"
        for kw, field in [
            ({"max": 0}, "max"),
            ({"wait_ms": 30_001}, "wait_ms"),
            ({"lease_ms": 1}, "lease_ms"),
        ]:
            with pytest.raises(ferry.ValidationFailed) as e:
                await c.claim("q", worker="w", **kw)
            assert e.value.field == field
        with pytest.raises(ferry.ValidationFailed) as e:
            await c.claim("q", worker="w\n")
        assert e.value.field == "worker"

    run(go)


def test_cancel_rules() -> None:
    async def go() -> None:
        c, _ = client()
        r = await c.enqueue("q")
        assert await c.cancel(r["id"], "no longer needed") == {"id": r["id"], "state": "cancelled"}
        assert (await c.get_job(r["id"]))["cancel_reason"] == "no longer needed"
        assert (await c.cancel(r["id"]))["state"] == "cancelled"  # idempotent
        run_ = await c.enqueue("q", unique_key="u")
        [j] = await c.claim("q", worker="w")
        with pytest.raises(ferry.InvalidState):
            await c.cancel(run_["id"])
        await c.complete_batch([{"id": j["id"], "lease": j["lease"]}])
        with pytest.raises(ferry.InvalidState):
            await c.cancel(run_["id"])
        with pytest.raises(ferry.NotFound):
            await c.cancel("01890000-0000-7000-8000-000000000000")
        s = await c.enqueue("q", delay_ms=60_000, unique_key="s")
        await c.cancel(s["id"])
        assert "duplicate" not in await c.enqueue("q", unique_key="s")  # a cancelled job frees its key

    run(go)


def test_dependencies_wait_and_cancel() -> None:
    async def go() -> None:
        c, _ = client()
        parent = await c.enqueue("q", "p", max_attempts=1)
        child = await c.enqueue("q", "c", depends_on=[parent["id"]])
        grandchild = await c.enqueue("q", "g", depends_on=[child["id"]])
        assert (await c.get_job(child["id"]))["state"] == "waiting"
        [p] = await c.claim("q", worker="w", max=5)
        assert p["id"] == parent["id"]
        await c.complete_batch([{"id": p["id"], "lease": p["lease"]}])
        assert (await c.get_job(child["id"]))["state"] == "ready"
        [ch] = await c.claim("q", worker="w")
        await c.fail_batch([{"id": ch["id"], "lease": ch["lease"], "retry": False}])
        g = await c.get_job(grandchild["id"])
        assert g["state"] == "cancelled" and g["cancel_reason"] == f"dependency {child['id']} is dead"
        late = await c.enqueue("q", depends_on=[child["id"]])
        assert (await c.get_job(late["id"]))["state"] == "cancelled"
        with pytest.raises(ferry.ValidationFailed) as e:
            await c.enqueue("q", depends_on=["01890000-0000-7000-8000-000000000000"])
        assert e.value.field == "depends_on[0]"

    run(go)


def test_dlq_replay_and_purge() -> None:
    async def go() -> None:
        c, _ = client()
        ids = [(await c.enqueue("q", i, max_attempts=1, unique_key=f"k{i}"))["id"] for i in range(3)]
        jobs = await c.claim("q", worker="w", max=3)
        await c.fail_batch([{"id": j["id"], "lease": j["lease"], "retry": False} for j in jobs])
        assert [j["id"] for j in await c.dlq("q").all()] == ids
        holder = await c.enqueue("q", unique_key="k0")  # holds k0 now: job 0 cannot come back
        out = await c.dlq_replay(queue="q")
        assert out == {"replayed": 2}
        got = await c.get_job(ids[1])
        assert (got["state"], got["attempt"], len(got["errors"])) == ("ready", 0, 1)
        assert (await c.enqueue("q", unique_key="k1"))["id"] == ids[1]
        assert await c.dlq_purge(ids=[ids[0], ids[1], "junk"]) == {"purged": 1}
        with pytest.raises(ferry.NotFound):
            await c.get_job(ids[0])
        assert holder["id"] != ids[0]
        with pytest.raises(ValueError):
            await c.dlq_replay()

    run(go)


def test_list_pages_and_queue_counts() -> None:
    async def go() -> None:
        c, _ = client()
        ids = (await c.enqueue_batch([{"queue": "a", "payload": i} for i in range(250)]))["ids"]
        await c.enqueue("b")
        page = await c.list_jobs("a", page_size=100).page()
        assert len(page["jobs"]) == 100 and page["next_cursor"]
        last = await c.list_jobs("a", page_size=100).page("200")
        assert len(last["jobs"]) == 50 and "next_cursor" not in last
        assert [j["id"] for j in await c.list_jobs("a").all()] == ids
        assert len(await c.list_jobs("a", limit=120).all()) == 120
        await c.claim("a", worker="w", max=10)
        assert len([j async for j in c.list_jobs("a", "running")]) == 10
        counts = {q["queue"]: q["counts"] for q in await c.queues()}
        assert counts["a"]["ready"] == 240 and counts["a"]["running"] == 10 and counts["b"]["ready"] == 1
        with pytest.raises(ferry.ValidationFailed):
            await c.list_jobs(state="bogus").all()

    run(go)


def test_pause_stops_claims() -> None:
    async def go() -> None:
        c, _ = client()
        await c.enqueue("q")
        await c.pause("q")
        assert await c.claim("q", worker="w") == []
        await c.resume("q")
        assert len(await c.claim("q", worker="w")) == 1

    run(go)


def test_long_poll_wakes_on_enqueue_and_times_out() -> None:
    async def go() -> None:
        c = InMemoryClient()
        t0 = time.monotonic()
        assert await c.claim("q", worker="w", wait_ms=200) == []
        assert 0.18 <= time.monotonic() - t0 < 2

        async def later() -> None:
            await asyncio.sleep(0.05)
            await c.enqueue("q", "hi")

        task = asyncio.create_task(later())
        t0 = time.monotonic()
        [job] = await c.claim("q", worker="w", wait_ms=10_000)
        assert job["payload"] == "hi" and time.monotonic() - t0 < 2
        await task
        # A delayed job wakes a waiting claim when it falls due (no enqueue to wake it).
        await c.enqueue("q", "later", delay_ms=150)
        t0 = time.monotonic()
        [job] = await c.claim("q", worker="w", wait_ms=10_000)
        assert job["payload"] == "later" and 0.1 <= time.monotonic() - t0 < 2

    run(go)


def test_long_poll_wakes_on_manual_clock_and_cancels_cleanly() -> None:
    async def go() -> None:
        c, clock = client()
        await c.enqueue("q", delay_ms=60_000)
        waiting = asyncio.create_task(c.claim("q", worker="w", wait_ms=10_000))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        clock.advance(60_000)
        jobs = await asyncio.wait_for(waiting, 2)
        assert len(jobs) == 1
        stuck = asyncio.create_task(c.claim("q", worker="w", wait_ms=10_000))
        await asyncio.sleep(0.02)
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        assert "q" not in c._engine.waiters

    run(go)


def test_concurrent_claimers_get_each_job_once() -> None:
    async def go() -> None:
        c = InMemoryClient()
        seen: list[str] = []

        async def worker(name: str) -> None:
            while True:
                jobs = await c.claim("q", worker=name, max=7, wait_ms=100)
                if not jobs:
                    return
                seen.extend(j["id"] for j in jobs)
                await c.complete_batch([{"id": j["id"], "lease": j["lease"]} for j in jobs])

        tasks = [asyncio.create_task(worker(f"w{i}")) for i in range(8)]
        ids = []
        for _ in range(10):
            ids += (await c.enqueue_batch([{"queue": "q", "payload": i} for i in range(100)]))["ids"]
            await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert sorted(seen) == sorted(ids) and len(set(seen)) == 1000
        counts = (await c.queues())[0]["counts"]
        assert counts["completed"] == 1000

    run(go)


def test_sync_facade_shares_the_store_and_long_polls_across_threads() -> None:
    c = SyncInMemoryClient()
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.extend(c.claim("q", worker="w", wait_ms=5_000)))
    t.start()
    time.sleep(0.05)
    r = c.enqueue("q", {"x": 1})
    t.join(5)
    assert [j["id"] for j in got] == [r["id"]]
    [out] = c.complete_batch([{"id": got[0]["id"], "lease": got[0]["lease"]}])
    assert out["ok"] is True and c.get_job(r["id"])["state"] == "completed"
    with pytest.raises(ferry.StaleLease):
        c.release(r["id"], got[0]["lease"])
    assert [j["id"] for j in c.list_jobs(state="completed")] == [r["id"]]

    async def from_async() -> None:
        a = InMemoryClient()
        a.sync().enqueue("s", 1)
        assert len(await a.claim("s", worker="w")) == 1

    run(from_async)


def test_single_job_forms() -> None:
    async def go() -> None:
        c, _ = client()
        r = await c.enqueue("q", max_attempts=1)
        [j] = await c.claim("q", worker="w")
        with pytest.raises(ferry.StaleLease):
            await c.complete(j["id"], "1.nope")
        with pytest.raises(ferry.ValidationFailed) as e:
            await c.complete(j["id"], "")
        assert e.value.field == "lease"
        out = await c.fail(j["id"], j["lease"], "x")
        assert out == {"id": r["id"], "state": "dead", "attempt": 1}

    run(go)


def test_eager_runs_enqueue_inline() -> None:
    from ferry._task import EAGER
    from ferry.testing import eager

    worker = ferry.Worker(client=InMemoryClient())
    calls: list[dict[str, Any]] = []

    @worker.task("eager.add")
    def add(a: int, b: int = 1) -> int:
        calls.append({"a": a, "b": b, "job": ferry.current_job().queue})
        return a + b

    @worker.task("eager.fails")
    def fails() -> None:
        raise KeyError("at the call site")

    @worker.task("eager.async")
    async def double(n: int) -> int:
        return n * 2

    with eager():
        assert EAGER.get() is True
        assert add.enqueue(a=2) == 3
        with pytest.raises(KeyError, match="at the call site"):
            fails.enqueue()
        with pytest.raises(ValueError) as e:  # validated as a worker would
            add.enqueue(a="two")
        assert getattr(e.value, "field", None) == "a"
        with eager(False):
            assert EAGER.get() is False
        assert EAGER.get() is True
    assert EAGER.get() is False
    assert calls == [{"a": 2, "b": 1, "job": "eager.add"}]

    @eager
    def bare() -> int:
        return int(add.enqueue(a=10, b=5))

    @eager()
    async def in_async() -> int:
        return int(await double.aenqueue(n=21))

    assert bare() == 15
    assert asyncio.run(in_async()) == 42
    assert EAGER.get() is False
    # Outside eager mode, enqueue goes to the worker's client.
    r = add.enqueue(a=1)
    assert set(r) == {"id"}
