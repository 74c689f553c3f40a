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


def test_checkpoints_mode(ferry_server: FerryServer) -> None:
    pytest.importorskip("langgraph.checkpoint.sqlite.aio")
    from ferry._bench_checkpoints import _human

    ferry = f"ferry={ferry_server.url}@{ferry_server.token}"
    args = ["--puts", "20", "--duration-s", "1", "--concurrency", "4"]
    args += ["--preload", "40", "--preload-per-thread", "10"]
    out = bench(None, "checkpoints", "--ferry", ferry, "--sqlite-saver", *args, "--json", "--quiet")
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert list(r["savers"]) == ["ferry", "sqlite-saver"]
    assert r["workload"]["puts"] == 20 and r["workload"]["concurrency"] == 4
    for s in r["savers"].values():
        for figure in ("put", "put_writes", "get_tuple", "get_tuple_preloaded"):
            f = s[figure]
            assert f["n"] == 20 and 0 < f["p50_ms"] <= f["p99_ms"], (figure, f)
        assert s["preload"]["checkpoints"] == 40 and s["preload"]["puts_per_s"] > 0
        c = s["concurrent"]
        assert c["concurrency"] == 4 and c["puts_per_s"] > 0 and c["put_writes_per_s"] > 0
        assert c["errors"] >= 0 and 0 <= c["errors_pct"] <= 100
    f = r["savers"]["ferry"]
    errors = [f[k]["errors"] for k in ("preload", "put", "put_writes", "get_tuple", "concurrent")]
    assert errors == [0] * 5
    # The ferry server's threads were deleted afterwards.
    with ferry_server.client() as client:
        assert list(client.list_threads()) == []
    # Human output: one line per saver per figure.
    lines = _human(r)
    for label in ("put, sequential", "put_writes, sequential", "get_tuple latest", "preload"):
        assert len([line for line in lines if line.startswith(label)]) == 2, label
    assert any(line.split()[:1] == ["sqlite-saver"] for line in lines)


def test_checkpoints_arguments() -> None:
    from ferry._bench_checkpoints import parse_ferry

    s = parse_ferry("pg=http://127.0.0.1:7700@fy_abc_123")
    assert (s.name, s.url, s.token) == ("pg", "http://127.0.0.1:7700", "fy_abc_123")
    s = parse_ferry("a=http://u:p@host:7700")
    assert (s.url, s.token) == ("http://u:p@host:7700", None)
    out = bench(None, "checkpoints")
    assert out.returncode == 2 and "give at least one saver" in out.stderr
    out = bench(None, "checkpoints", "--ferry", "nourl")
    assert out.returncode == 2 and "NAME=URL" in out.stderr


@pytest.mark.pg
def test_checkpoints_postgres_saver(pg_url: str) -> None:
    pytest.importorskip("langgraph.checkpoint.postgres.aio")
    import psycopg

    def bench_dbs() -> set[str]:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            rows = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'ferry_bench_%'")
            return {str(r[0]) for r in rows.fetchall()}

    before = bench_dbs()
    args = ["--puts", "10", "--duration-s", "1", "--concurrency", "4", "--json", "--quiet"]
    out = bench(None, "checkpoints", "--postgres-saver-url", pg_url, *args)
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)["savers"]["postgres-saver"]
    assert s["kind"] == "postgres-saver" and s["put"]["n"] == s["get_tuple"]["n"] == 10
    assert s["put"]["errors"] == s["concurrent"]["errors"] == 0 and s["concurrent"]["puts_per_s"] > 0
    # Its fresh database was dropped.
    assert bench_dbs() <= before
