"""`python -m ferry.bench` runs each mode end to end against the real server and prints what
it promises (figures, not timings: the machine decides those)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ferry.testing import FerryServer

pytestmark = pytest.mark.timeout(90)


def bench(server: FerryServer | None, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "ferry.bench", *args]
    if server is not None:
        cmd += ["--url", server.url, "--token", server.token]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=80)


@pytest.mark.parametrize("mode", ["asyncio", "threads"])
def test_throughput_modes(ferry_server: FerryServer, mode: str) -> None:
    out = bench(ferry_server, "--mode", mode, "--jobs", "300", "--batch", "100", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert (r["mode"], r["jobs"], r["concurrency"], r["completed"], r["dead"]) == (mode, 300, 16, 300, 0)
    assert r["jobs_per_s"] > 0 and r["enqueue_jobs_per_s"] > 0 and r["max_rss_mb"] > 0
    assert r["worker"]["completed"] == 300 and r["worker"]["failed"] == 0
    # Every job ran once, in a fresh queue of its own.
    with ferry_server.client() as c:
        [q] = [q for q in c.queues() if q["queue"] == r["queue"]]
        assert q["counts"]["completed"] == 300


def test_latency_mode(ferry_server: FerryServer) -> None:
    out = bench(ferry_server, "--mode", "latency", "--jobs", "30", "--json")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["mode"] == "latency" and r["jobs"] == 30
    assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]


def test_null_mode_and_human_output() -> None:
    out = bench(None, "--mode", "null", "--jobs", "3000")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("mode         null")
    [dispatch] = [line for line in lines if line.startswith("dispatch")]
    assert float(dispatch.split()[1]) > 0 and "jobs/s" in dispatch
    assert any(line.startswith("max RSS") and line.endswith("MB") for line in lines)


def test_bad_server_exits_1() -> None:
    out = bench(None, "--url", "http://127.0.0.1:9", "--mode", "asyncio", "--jobs", "10", "--timeout", "5")
    assert out.returncode == 1 and out.stderr.startswith("ferry.bench: ")
