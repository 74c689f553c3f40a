"""Crashes lose nothing. A `ferry-worker` working 10,000 jobs is SIGKILLed at ~30% and ~70%
and restarted each time: every job completes once on the server, none is lost or dead, and
only jobs the worker held at a kill run again (at most concurrency x kills). The server
SIGKILLed and restarted mid-run: the worker backs off, carries on, and loses nothing."""

from __future__ import annotations

import collections
import signal
import time
from pathlib import Path

import pytest

from ferry.testing import FerryServer
from workers_app.harness import (
    WorkerProcess,
    all_jobs,
    completions,
    counts,
    enqueue_many,
    lines,
    start_worker,
    wait_for,
)

pytestmark = pytest.mark.timeout(120)

CONCURRENCY = 8
SPEC = {"lease_ms": 2000, "backoff": {"base_ms": 0}}


def _worker(server: FerryServer, tmp_path: Path, out: Path, n: int) -> WorkerProcess:
    return start_worker(
        server,
        "workers_app.app:worker",
        "--concurrency",
        str(CONCURRENCY),
        log=tmp_path / f"worker-{n}.log",
        env={"APP_OUT": str(out)},
    )


def test_sigkilled_workers_lose_nothing(ferry_server: FerryServer, tmp_path: Path) -> None:
    server = ferry_server
    total = 10_000
    ids = enqueue_many(server, "work", total, **SPEC)
    out = tmp_path / "out"
    started = time.monotonic()
    workers = [_worker(server, tmp_path, out, 0)]
    try:
        for i, fraction in enumerate((0.3, 0.7)):
            wait_for(f"{fraction:.0%} handled", lambda f=fraction: len(lines(out)) >= total * f, timeout=60)
            workers[-1].kill()
            print(f"kill {i + 1} at {time.monotonic() - started:.1f} s")
            workers.append(_worker(server, tmp_path, out, i + 1))
        wait_for("every job completed", lambda: counts(server, "work")["completed"] == total, timeout=90)
        print(f"all completed at {time.monotonic() - started:.1f} s")
        last = workers[-1]
        last.signal(signal.SIGTERM)
        assert last.wait(timeout=30) == 0, last.text()
    finally:
        for w in workers:
            w.close()
    took = time.monotonic() - started

    handled = collections.Counter(lines(out))
    assert set(handled) == set(ids), "a job was lost"
    repeated = {j for j, n in handled.items() if n > 1}
    kills = 2
    assert sum(handled[j] - 1 for j in repeated) <= CONCURRENCY * kills, repeated
    jobs = {j["id"]: j for j in all_jobs(server, "work")}
    assert {j["state"] for j in jobs.values()} == {"completed"}
    assert counts(server, "work")["dead"] == 0
    # Only jobs whose lease a kill left behind ran again, each on a later attempt.
    rerun = {i for i, j in jobs.items() if j["attempt"] > 1}
    assert repeated <= rerun
    assert len(rerun) <= CONCURRENCY * kills, len(rerun)
    assert all(e["kind"] == "lease_expired" for i in rerun for e in jobs[i]["errors"])
    # The server recorded each completion once.
    done = completions(server, "work")
    assert set(done) == set(ids)
    assert set(done.values()) == {1}
    print(f"10,000 jobs, 2 worker kills: {took:.1f} s; {len(rerun)} rerun, {len(repeated)} handled twice")


def test_server_killed_and_restarted_mid_run(ferry_server: FerryServer, tmp_path: Path) -> None:
    server = ferry_server
    total = 3_000
    ids = enqueue_many(server, "work", total, **SPEC)
    out = tmp_path / "out"
    worker = _worker(server, tmp_path, out, 0)
    try:
        wait_for("a third handled", lambda: len(lines(out)) >= total // 3, timeout=60)
        server.kill()
        time.sleep(3.0)  # past the 2 s leases: the worker's held jobs will run again
        assert worker.proc.poll() is None, worker.text()  # backing off, not dead
        server.restart()
        wait_for("every job completed", lambda: counts(server, "work")["completed"] == total, timeout=90)
        assert worker.proc.poll() is None, worker.text()
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker.text()
    finally:
        worker.close()
    assert set(lines(out)) == set(ids)
    c = counts(server, "work")
    assert c["completed"] == total
    assert c["dead"] == 0
