"""10,000 jobs through one worker at concurrency 8, with asyncio handlers and with thread
handlers: every job handled exactly once, and the server agrees (10,000 completed, none dead,
every one on its first attempt)."""

from __future__ import annotations

import collections
import time

import pytest

import ferry
from ferry.testing import FerryServer
from workers_app.harness import all_jobs, counts, enqueue_many

N = 10_000

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("mode", ["asyncio", "threads"])
def test_ten_thousand_jobs_once_each(ferry_server_any: FerryServer, mode: str) -> None:
    server = ferry_server_any
    ids = enqueue_many(server, "bulk", N)
    worker = ferry.Worker(server.url, token=server.token, concurrency=8)
    handled: collections.Counter[str] = collections.Counter()

    def note() -> None:
        handled[ferry.current_job().id] += 1
        if len(handled) == N:
            worker.stop()

    if mode == "asyncio":

        @worker.task("bulk")
        async def bulk_async(n: int) -> int:
            note()
            return n

    else:

        @worker.task("bulk")
        def bulk_threads(n: int) -> int:
            note()
            return n

    started = time.monotonic()
    worker.run()
    took = time.monotonic() - started
    print(f"{mode}: {N} jobs in {took:.2f} s ({N / took:.0f} jobs/s), {worker.stats}")

    assert set(handled) == set(ids)
    assert max(handled.values()) == 1
    assert worker.stats.completed == N
    c = counts(server, "bulk")
    assert c["completed"] == N
    assert c["dead"] == 0
    jobs = all_jobs(server, "bulk")
    assert len(jobs) == N
    assert {j["state"] for j in jobs} == {"completed"}
    assert {j["attempt"] for j in jobs} == {1}
    assert all(j["result"] == j["payload"]["n"] for j in jobs)
