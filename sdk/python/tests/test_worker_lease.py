"""A worker that outlives its lease never has its work counted twice: after a SIGSTOP past
the lease, SIGCONT finds the handler cancelled within one heartbeat interval and the retry's
result kept; a handler that blocks the event loop past its lease finishes, and its late
completion is refused with `stale_lease` and dropped."""

from __future__ import annotations

import datetime as dt
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import ferry
from ferry.testing import FerryServer
from workers_app.harness import first_line_with, lines, start_worker, wait_for

pytestmark = pytest.mark.timeout(90)

LEASE_MS = 1500
NO_WAIT = {"base_ms": 0}  # a retry is ready as soon as the lease is reaped


def _retry_elsewhere(server: FerryServer, job_id: str, queue: str, result: Any) -> None:
    """Waits for the expired lease to be reaped, then works the retry as another worker."""
    client = server.client()
    wait_for("the lease to be reaped", lambda: client.get_job(job_id)["state"] == "ready", timeout=15)
    claimed = client.claim(queue, worker="the-other-worker", max=1, wait_ms=5000)
    assert [j["id"] for j in claimed] == [job_id]
    assert claimed[0]["attempt"] == 2
    client.complete(job_id, claimed[0]["lease"], result)


def _log_time(line: str) -> float:
    stamp = line[:23]  # logging's default asctime: 2024-05-01 12:00:00,123
    return dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_sigstop_past_the_lease_cancels_the_handler(ferry_server_any: FerryServer, tmp_path: Path) -> None:
    server = ferry_server_any
    client = server.client()
    job_id = client.enqueue("work", {"n": 1}, lease_ms=LEASE_MS, backoff=NO_WAIT)["id"]
    started = tmp_path / "started"
    out = tmp_path / "out"
    # One slot: while the job runs no claim is outstanding, so the retry cannot be handed to
    # the stopped worker's own long poll.
    worker = start_worker(
        server,
        "workers_app.app:worker",
        log=tmp_path / "worker.log",
        env={
            "APP_STARTED": str(started),
            "APP_OUT": str(out),
            "APP_SLEEP": "30",
            "APP_CONCURRENCY": "1",
        },
    )
    try:
        wait_for("the handler to start", lambda: job_id in lines(started), timeout=30)
        time.sleep(0.3)  # a heartbeat or two went through
        worker.signal(signal.SIGSTOP)
        _retry_elsewhere(server, job_id, "work", {"by": "retry"})
        resumed = time.time()
        worker.signal(signal.SIGCONT)
        line = wait_for(
            "the worker to cancel the handler",
            lambda: first_line_with(worker.text(), [job_id, "lease lost"]),
            timeout=10,
        )
        interval = LEASE_MS / 3 / 1000
        # Overdue on resume, the heartbeat loop fires at once; the margin is for a busy machine.
        assert _log_time(line) - resumed < interval + 1.0, line
        time.sleep(0.3)
        assert job_id not in lines(out)  # cancelled: the handler never finished
        job = client.get_job(job_id)
        assert job["state"] == "completed"
        assert job["result"] == {"by": "retry"}
        assert job["attempt"] == 2
        assert "stale_lease" not in worker.text()  # nothing was reported for the lost lease
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker.text()
    finally:
        worker.close()


def test_late_completion_is_refused_as_stale(ferry_server_any: FerryServer) -> None:
    server = ferry_server_any
    client = server.client()
    w = ferry.Worker(server.url, token=server.token, concurrency=1)
    entered = threading.Event()

    @w.task("blocky")
    async def blocky(n: int) -> dict[str, str]:
        entered.set()
        # Blocks the event loop (no heartbeat can go out) well past the 1 s lease: the lease
        # expires, another worker completes the retry, then this returns.
        time.sleep(4.0)
        return {"by": "late"}

    job_id = client.enqueue("blocky", {"n": 1}, lease_ms=1000, backoff=NO_WAIT)["id"]
    errors: list[BaseException] = []

    def other_worker() -> None:
        try:
            entered.wait(30)
            _retry_elsewhere(server, job_id, "blocky", {"by": "retry"})
            wait_for("the late completion to be refused", lambda: w.stats.rejected >= 1, timeout=20)
        except BaseException as e:  # surfaced below
            errors.append(e)
        finally:
            w.stop()

    t = threading.Thread(target=other_worker)
    t.start()
    w.run()
    t.join()
    assert not errors, errors
    assert w.stats.rejected == 1
    assert w.stats.completed == 0
    job = client.get_job(job_id)
    assert job["result"] == {"by": "retry"}
    assert job["attempt"] == 2
