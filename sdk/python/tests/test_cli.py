"""`ferry-worker`: its errors (`ferry-worker: <message>`, exit 1), package discovery of
`@ferry.task` functions, and `--processes`."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from ferry.testing import FerryServer
from workers_app.harness import TESTS_DIR, counts, start_worker, wait_for, worker_command

pytestmark = pytest.mark.timeout(60)


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FERRY_")}
    full_env["FERRY_URL"] = "http://127.0.0.1:9"  # never reached: these fail before connecting
    full_env.update(env or {})
    return subprocess.run(
        [*worker_command(), *args],
        cwd=TESTS_DIR,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["no_such_module:worker"],
            "ferry-worker: cannot import 'no_such_module': no module named 'no_such_module'",
        ),
        (["workers_app.app:nothing"], "ferry-worker: module 'workers_app.app' has no attribute 'nothing'"),
        (["workers_app.app:MODE"], "ferry-worker: workers_app.app:MODE is a str, not a ferry.Worker"),
        (["workers_app.broken:worker"], "this module is broken on purpose"),
        (["workers_app.app:worker", "--queues", "work,nope"], "ferry-worker: no task for queue 'nope'"),
        (["workers_app.app:worker", "--concurrency", "0"], "ferry-worker: --concurrency must be at least 1"),
        (["workers_app.app:worker", "--concurrency", "many"], "ferry-worker: argument --concurrency"),
        (["workers_app.harness"], "ferry-worker: no @ferry.task found in 'workers_app.harness'"),
        ([], "ferry-worker: the following arguments are required: target"),
    ],
)
def test_errors_exit_1_with_a_message(args: list[str], message: str) -> None:
    proc = _run(*args)
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ferry-worker: "), proc.stderr
    assert message in proc.stderr, proc.stderr


def test_a_bad_token_stops_the_worker(ferry_server: FerryServer, tmp_path: Path) -> None:
    worker = start_worker(
        ferry_server,
        "workers_app.app:worker",
        "--token",
        "not-a-token",
        log=tmp_path / "worker.log",
    )
    try:
        assert worker.wait(timeout=30) == 1
        assert "ferry-worker: " in worker.text()
        assert "unauthorized" in worker.text()
    finally:
        worker.close()


def test_package_runs_every_task(ferry_server: FerryServer, tmp_path: Path) -> None:
    client = ferry_server.client()
    a = client.enqueue("pkg-first", {"n": 41})["id"]
    b = client.enqueue("pkg-second", {"text": "shout"})["id"]
    worker = start_worker(ferry_server, "workers_app.pkg", log=tmp_path / "worker.log")
    try:
        wait_for(
            "both tasks to run",
            lambda: client.get_job(a)["state"] == "completed" and client.get_job(b)["state"] == "completed",
            timeout=30,
        )
        assert client.get_job(a)["result"] == 42
        assert client.get_job(b)["result"] == "SHOUT"
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker.text()
    finally:
        worker.close()


def test_processes_share_the_work(ferry_server: FerryServer, tmp_path: Path) -> None:
    client = ferry_server.client()
    ids = [client.enqueue("cpu", {"n": 200_000})["id"] for _ in range(40)]
    worker = start_worker(
        ferry_server, "workers_app.cpu:worker", "--processes", "2", log=tmp_path / "worker.log"
    )
    try:
        wait_for("all jobs done", lambda: counts(ferry_server, "cpu")["completed"] == len(ids), timeout=45)
        pids = {client.get_job(j)["result"] for j in ids}
        assert len(pids) == 2, pids
        assert worker.pid not in pids  # the supervisor only supervises
        worker.signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, worker.text()
    finally:
        worker.close()
