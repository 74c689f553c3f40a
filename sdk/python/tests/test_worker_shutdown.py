"""SIGTERM drains a worker: running jobs finish, jobs that arrive after the signal go back
to the queue unstarted at once (attempt not counted), and it exits 0 well within
`shutdown_timeout`; a second signal exits at once."""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
from pathlib import Path

import pytest

import ferry
from ferry.testing import FerryServer
from workers_app.harness import lines, start_worker, wait_for

pytestmark = pytest.mark.timeout(90)


def test_sigterm_finishes_running_jobs_and_releases_new_claims(
    ferry_server: FerryServer, tmp_path: Path
) -> None:
    server = ferry_server
    client = server.client()
    started = tmp_path / "started"
    out = tmp_path / "out"
    worker = start_worker(
        server,
        "workers_app.app:worker",
        log=tmp_path / "worker.log",
        env={"APP_STARTED": str(started), "APP_OUT": str(out), "APP_SLEEP": "2", "APP_CONCURRENCY": "4"},
    )
    try:
        running = [client.enqueue("work", {"n": i})["id"] for i in range(2)]
        wait_for("both handlers to start", lambda: set(running) <= set(lines(started)), timeout=30)
        time.sleep(0.2)  # the two free slots are back in a long poll
        signalled = time.monotonic()
        worker.signal(signal.SIGTERM)
        time.sleep(0.3)
        # Enqueued after the signal: the outstanding long polls may still hand them over;
        # the worker must give them straight back.
        late = [client.enqueue("work", {"n": 10 + i})["id"] for i in range(3)]
        enqueued = time.monotonic()

        def all_ready() -> bool:
            return all(client.get_job(j)["state"] == "ready" for j in late)

        wait_for("the late jobs to be ready", all_ready, timeout=5, interval=0.02)
        assert time.monotonic() - enqueued < 1.5  # "within 1 s", with room for a busy machine
        for j in late:
            job = client.get_job(j)
            assert job["attempt"] == 0, job  # a release does not count the attempt
            assert job["errors"] == []
        assert worker.wait(timeout=25) == 0, worker.text()
        took = time.monotonic() - signalled
        assert took < 25, took
        for j in running:
            job = client.get_job(j)
            assert job["state"] == "completed", job
            assert job["attempt"] == 1
        assert sorted(lines(out)) == sorted(running)
        assert not set(late) & set(lines(started))
        stats = re.search(r"released=(\d+)", worker.text())
        assert stats is not None, worker.text()
        print(f"released {stats.group(1)} late claims; exited {took:.2f} s after SIGTERM")
    finally:
        worker.close()


def test_second_signal_exits_at_once(ferry_server: FerryServer, tmp_path: Path) -> None:
    server = ferry_server
    client = server.client()
    started = tmp_path / "started"
    worker = start_worker(
        server,
        "workers_app.app:worker",
        log=tmp_path / "worker.log",
        env={"APP_STARTED": str(started), "APP_SLEEP": "60"},
    )
    try:
        job_id = client.enqueue("work", {"n": 1})["id"]
        wait_for("the handler to start", lambda: job_id in lines(started), timeout=30)
        worker.signal(signal.SIGTERM)
        time.sleep(0.5)
        assert worker.proc.poll() is None  # still waiting for the 60 s handler
        second = time.monotonic()
        worker.signal(signal.SIGINT)
        code = worker.wait(timeout=10)
        assert time.monotonic() - second < 2.0
        assert code != 0
        assert "exiting at once" in worker.text()
    finally:
        worker.close()


@pytest.mark.parametrize("kind", ["asyncio", "threads"])
def test_past_the_shutdown_timeout_running_jobs_are_cancelled_and_released(
    ferry_server: FerryServer, kind: str
) -> None:
    w = ferry.Worker(ferry_server.url, token=ferry_server.token, shutdown_timeout=0.5)
    started = threading.Event()
    cancelled: list[bool] = []

    if kind == "asyncio":

        @w.task("stuck")
        async def stuck_async() -> None:
            started.set()
            try:
                await asyncio.sleep(30)
            finally:
                cancelled.append(ferry.current_job().cancelled)

    else:

        @w.task("stuck")
        def stuck_threads() -> None:
            started.set()
            try:
                while True:
                    time.sleep(0.01)
            finally:
                cancelled.append(ferry.current_job().cancelled)

    job_id = ferry_server.client().enqueue("stuck")["id"]

    def stop_when_started() -> None:
        started.wait(30)
        w.stop()

    threading.Thread(target=stop_when_started).start()
    began = time.monotonic()
    w.run()
    assert time.monotonic() - began < 10
    assert cancelled == [True]
    job = ferry_server.client().get_job(job_id)
    assert (job["state"], job["attempt"], job["errors"]) == ("ready", 0, [])
    assert w.stats.released == 1
