"""Helpers the worker tests share: start a `ferry-worker` subprocess against a test server,
poll until something holds, read what the server recorded."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ferry.testing import FerryServer

TESTS_DIR = Path(__file__).resolve().parent.parent


def worker_command() -> list[str]:
    """The `ferry-worker` script beside this Python, else `python -m ferry.cli`."""
    script = Path(sys.executable).with_name("ferry-worker")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "ferry.cli"]


class WorkerProcess:
    """A `ferry-worker` subprocess whose stderr goes to a log file."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        if self.proc.poll() is None:
            for sig in (signal.SIGCONT, signal.SIGKILL):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=10)


def start_worker(
    server: FerryServer,
    target: str,
    *args: str,
    log: Path,
    env: dict[str, str] | None = None,
) -> WorkerProcess:
    """Starts `ferry-worker target args...` against `server`, from the tests directory so
    `workers_app` imports."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("FERRY_", "APP_"))}
    full_env.update(server.env())
    full_env["PYTHONUNBUFFERED"] = "1"
    if env:
        full_env.update(env)
    with open(log, "ab") as f:
        proc = subprocess.Popen(
            [*worker_command(), target, *args],
            cwd=TESTS_DIR,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=f,
        )
    return WorkerProcess(proc, log)


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Polls `check` until it returns something truthy; AssertionError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def lines(path: Path) -> list[str]:
    """The non-empty lines of a file (none if it does not exist yet)."""
    try:
        return [x for x in path.read_text().splitlines() if x]
    except FileNotFoundError:
        return []


def counts(server: FerryServer, queue: str) -> dict[str, int]:
    """The queue's job counts by state (all zero before its first job)."""
    for q in server.client().queues():
        if q["queue"] == queue:
            return dict(q["counts"])
    return collections.defaultdict(int)


def enqueue_many(server: FerryServer, queue: str, n: int, **fields: Any) -> list[str]:
    """Enqueues `n` jobs `{"n": i}` in batches of 1,000; their ids in order."""
    client = server.client()
    ids: list[str] = []
    for start in range(0, n, 1000):
        batch = [{"queue": queue, "payload": {"n": i}, **fields} for i in range(start, min(n, start + 1000))]
        ids.extend(client.enqueue_batch(batch)["ids"])
    return ids


def completions(server: FerryServer, queue: str) -> collections.Counter[str]:
    """How many `job.completed` events the server recorded per job id of `queue`."""
    client = server.client()
    seen: collections.Counter[str] = collections.Counter()
    cursor = 0
    while True:
        page = client.poll_events(since=cursor, queue=queue, type="job.completed", limit=1000)
        for e in page["events"]:
            job_id = e.get("job_id")
            if job_id:
                seen[job_id] += 1
        if not page["events"] or page["next_cursor"] == cursor:
            return seen
        cursor = page["next_cursor"]


def all_jobs(server: FerryServer, queue: str) -> list[dict[str, Any]]:
    """Every job of `queue`, as the server lists them."""
    return [dict(j) for j in server.client().list_jobs(queue=queue, page_size=1000)]


def first_line_with(text: str, needles: Sequence[str]) -> str | None:
    """The first line of `text` containing all of `needles`."""
    for line in text.splitlines():
        if all(n in line for n in needles):
            return line
    return None
