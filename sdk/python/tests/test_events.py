"""`events()` follows server-sent events and resumes after a disconnect from the last cursor
it delivered: across a SIGKILLed and restarted server, no event is skipped or repeated."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import ferry
from ferry.testing import FerryServer

N = 20


def _enqueue(server: FerryServer, start: int, n: int) -> None:
    with server.client() as c:
        c.enqueue_batch([{"queue": "ev", "payload": {"n": i}} for i in range(start, start + n)])


def _check(events: list[dict[str, Any]]) -> None:
    cursors = [e["cursor"] for e in events]
    assert cursors == list(range(1, 2 * N + 1)), "contiguous and unique"
    assert [e["type"] for e in events] == ["job.enqueued"] * (2 * N)


@pytest.mark.timeout(60)
def test_sse_resumes_across_a_server_restart(ferry_server_any: FerryServer) -> None:
    server = ferry_server_any
    _enqueue(server, 0, N)
    got: list[dict[str, Any]] = []
    with server.client() as c, c.events(since=0) as stream:
        for ev in stream:
            got.append(dict(ev))
            if len(got) == N // 2:
                server.kill()  # mid-stream: half the stored events delivered
                server.restart()
                _enqueue(server, N, N)
            if len(got) == 2 * N:
                break
        assert stream.cursor == 2 * N
        assert stream.reconnects >= 1
    _check(got)


@pytest.mark.timeout(60)
def test_async_sse_resumes_across_a_server_restart(ferry_server_any: FerryServer) -> None:
    server = ferry_server_any
    _enqueue(server, 0, N)

    async def run() -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        async with server.async_client() as c, c.events(since=0) as stream:
            async for ev in stream:
                got.append(dict(ev))
                if len(got) == N // 2:
                    await asyncio.to_thread(server.kill)
                    # The stream notices while the server is down, and backs off.
                    restart = asyncio.create_task(asyncio.to_thread(server.restart))
                    await asyncio.sleep(0.2)
                    await restart
                    await asyncio.to_thread(_enqueue, server, N, N)
                if len(got) == 2 * N:
                    break
            assert stream.reconnects >= 1
        return got

    _check(asyncio.run(run()))


@pytest.mark.timeout(30)
def test_without_since_the_stream_starts_at_its_first_read(ferry_server: FerryServer) -> None:
    _enqueue(ferry_server, 0, 3)
    with ferry_server.client() as c:
        stream = c.events(queue="ev", type="job.enqueued")
        c.enqueue("other")  # filtered out
        deadline = time.monotonic() + 10

        def later() -> None:
            time.sleep(0.3)
            c.enqueue("ev", {"late": True})

        t = threading.Thread(target=later)
        t.start()
        try:
            ev = next(stream)
        finally:
            t.join()
            stream.close()
        assert time.monotonic() < deadline
        assert ev["queue"] == "ev" and ev["cursor"] == 5


@pytest.mark.timeout(30)
def test_websocket_rooms_and_ping(ferry_server: FerryServer) -> None:
    async def run() -> None:
        async with ferry_server.async_client() as c:
            sock = await c.event_socket(since=0)
            try:
                await sock.subscribe("queue:ws")
                notice = await sock.recv(timeout=10)
                assert notice is not None and notice["type"] == "subscribed"
                assert notice["rooms"] == ["queue:ws"]
                await c.enqueue("ws", {"x": 1})
                ev = await sock.recv(timeout=10)
                assert ev is not None and ev["type"] == "job.enqueued" and ev["queue"] == "ws"
                await sock.ping()
                pong = await sock.recv(timeout=10)
                assert pong is not None and pong["type"] == "pong" and pong["cursor"] >= ev["cursor"]
            finally:
                await sock.aclose()

    asyncio.run(run())


@pytest.mark.timeout(30)
def test_refused_streams_raise_the_servers_error(ferry_server: FerryServer) -> None:
    bad = ferry.Client(ferry_server.url, "not-a-token", retries=0)
    with pytest.raises(ferry.Unauthorized):
        next(bad.events(since=0))
    with pytest.raises(ferry.Unauthorized):
        bad.event_socket()
    bad.close()

    async def run() -> None:
        async with ferry_server.async_client() as c:
            with pytest.raises(ferry.ValidationFailed) as info:
                await c.event_socket(type="no.such.type")
            assert info.value.field == "type"
            with pytest.raises(ferry.ValidationFailed):
                await c.events(since=0, type="no.such.type").__anext__()

    asyncio.run(run())
