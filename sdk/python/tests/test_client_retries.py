"""Retries against the real server: calls wait out a SIGKILLed and restarted server, 429s are
retried no sooner than `Retry-After`, and an enqueue without `unique_key` is never repeated
after a connection failure (it might have been written)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest

import ferry
from ferry.testing import FerryServer


def restart_later(server: FerryServer, delay: float) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)
        server.restart()

    t = threading.Thread(target=run)
    t.start()
    return t


@pytest.mark.timeout(60)
def test_calls_wait_out_a_killed_and_restarted_server(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    c.enqueue("q", {"n": 1})
    ferry_server.kill()
    t = restart_later(ferry_server, 0.5)
    started = time.monotonic()
    try:
        assert c.server_info()["backend"] == "sqlite"
        assert time.monotonic() - started >= 0.4, "it waited for the restart"
        # Keyed enqueues are retried too; the key makes a repeat harmless.
        t.join()  # the restart has returned (it may lag the first answer by a poll)
        ferry_server.kill()
        t = restart_later(ferry_server, 0.5)
        out = c.enqueue("q", {"n": 2}, unique_key="k-2")
        assert not out.get("duplicate")
    finally:
        t.join()
    assert [j["payload"]["n"] for j in c.list_jobs("q")] == [1, 2]


@pytest.mark.timeout(60)
def test_a_long_poll_in_flight_survives_a_server_crash(ferry_server: FerryServer) -> None:
    async def run() -> list[Any]:
        async with ferry_server.async_client(name="poller") as c:
            claim = asyncio.create_task(c.claim("q", worker="poller", wait_ms=10_000))
            await asyncio.sleep(0.3)  # the claim is waiting on the server
            await asyncio.to_thread(ferry_server.kill)
            await asyncio.to_thread(ferry_server.restart)
            await c.enqueue("q", {"after": "restart"}, unique_key="after")
            return await asyncio.wait_for(claim, 20)

    jobs = asyncio.run(run())
    assert [j["payload"] for j in jobs] == [{"after": "restart"}]


@pytest.mark.timeout(60)
def test_a_plain_enqueue_is_not_retried_after_a_connection_failure(ferry_server: FerryServer) -> None:
    c = ferry_server.client(retry_budget=2.0)
    ferry_server.kill()
    started = time.monotonic()
    with pytest.raises(ferry.FerryConnectionError) as info:
        c.enqueue("q", {"plain": True})
    assert time.monotonic() - started < 1.0, "raised at once, not after backoff"
    assert info.value.code == "connection_failed" and info.value.status is None
    assert isinstance(info.value.__cause__, httpx.TransportError)
    with pytest.raises(ferry.FerryConnectionError):
        c.enqueue_batch([{"queue": "q", "unique_key": "a"}, {"queue": "q"}])
    assert time.monotonic() - started < 1.5, "a batch with one unkeyed job is not retried either"
    # With a key on every job it is retried, until the budget runs out.
    started = time.monotonic()
    with pytest.raises(ferry.FerryConnectionError):
        c.enqueue("q", {"keyed": True}, unique_key="k")
    assert 0.5 <= time.monotonic() - started < 10, "retried with backoff"
    ferry_server.restart()
    assert list(c.list_jobs("q")) == []


@pytest.mark.timeout(60)
def test_429_is_retried_after_retry_after(ferry_server_factory: Any) -> None:
    server = ferry_server_factory(config={"protection": {"rate_per_sec": 1, "rate_burst": 1}})
    c = server.client()
    c.server_info()
    started = time.monotonic()
    c.server_info()  # refused with Retry-After: 1, then admitted
    assert time.monotonic() - started >= 0.9
    # A keyed enqueue waits the refusal out; one without a key is sent once and raises.
    started = time.monotonic()
    c.enqueue("q", {"n": 1}, unique_key="one")
    assert time.monotonic() - started >= 0.9
    started = time.monotonic()
    with pytest.raises(ferry.RateLimited) as info:
        c.enqueue("q", {"n": 2})
    assert time.monotonic() - started < 0.9, "an enqueue without unique_key is not retried"
    assert info.value.retry_after is not None and info.value.retry_after >= 1
    time.sleep(info.value.retry_after)
    assert [j["payload"] for j in c.list_jobs("q")] == [{"n": 1}]


@pytest.mark.timeout(60)
def test_queue_full_backpressure_waits_for_room(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    c.set_queue_limits("bounded", max_depth=1)
    c.enqueue("bounded", {"n": 1})

    def drain() -> None:
        time.sleep(0.5)
        with ferry_server.client() as w:
            job = w.claim("bounded", worker="drainer")[0]
            w.complete(job["id"], job["lease"])

    with pytest.raises(ferry.QueueFull):
        c.enqueue("bounded", {"n": 2})  # no key: sent once
    t = threading.Thread(target=drain)
    t.start()
    started = time.monotonic()
    try:
        c.enqueue("bounded", {"n": 2}, unique_key="two")  # 429 queue_full until the first is taken
    finally:
        t.join()
    assert time.monotonic() - started >= 0.5
    assert [j["payload"]["n"] for j in c.list_jobs("bounded")] == [1, 2]


def test_retry_budget_bounds_the_wait(ferry_server: FerryServer) -> None:
    c = ferry_server.client(retry_budget=1.0)
    ferry_server.kill()
    started = time.monotonic()
    with pytest.raises(ferry.FerryConnectionError):
        c.get_job("01a23b7e-6111-7287-ac43-2daeaab38e6a")
    assert 0.25 <= time.monotonic() - started < 3
    started = time.monotonic()
    with pytest.raises(ferry.FerryConnectionError):
        ferry_server.client(retries=0).server_info()
    assert time.monotonic() - started < 1


def test_unique_key_deduplicates_only_while_the_first_job_is_unfinished(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    first = c.enqueue("q", unique_key="once")
    assert c.enqueue("q", unique_key="once") == {"id": first["id"], "duplicate": True}
    job = c.claim("q")[0]
    assert c.enqueue("q", unique_key="once")["id"] == first["id"], "running is unfinished"
    c.complete(job["id"], job["lease"])
    again = c.enqueue("q", unique_key="once")
    assert again["id"] != first["id"] and not again.get("duplicate"), "a finished job's key is free"


@pytest.mark.timeout(60)
def test_pooled_connections_of_a_restarted_server_are_not_reused(ferry_server: FerryServer) -> None:
    async def run() -> None:
        async with ferry_server.async_client() as c:
            await c.enqueue("pool", {"n": 1})  # leaves a keep-alive connection in the pool
            # Blocks the event loop: it cannot see the old connection close before the send.
            ferry_server.kill()
            ferry_server.restart()
            await c.enqueue("pool", {"n": 2})  # not retryable: it must go on a fresh connection
            assert [j["payload"]["n"] async for j in c.list_jobs("pool")] == [1, 2]

    asyncio.run(run())


def test_pooled_connections_of_a_restarted_server_are_not_reused_sync(ferry_server: FerryServer) -> None:
    c = ferry_server.client()
    c.enqueue("pool", {"n": 1})
    ferry_server.kill()
    ferry_server.restart()
    c.enqueue("pool", {"n": 2})
    assert [j["payload"]["n"] for j in c.list_jobs("pool")] == [1, 2]
