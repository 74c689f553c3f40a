"""The Python SDK's benchmark, run back to back with `ferry bench e2e` for BENCHMARKS.md:

    python -m ferry.bench --url URL [--token T] [--mode asyncio|threads|latency|null]
                          [--jobs 20000] [--concurrency 16] [--batch 1000] [--json]

- `asyncio` / `threads`: enqueue `--jobs` no-op jobs in batches of `--batch` into a fresh queue,
  then one worker (this process) at `--concurrency` works them, `async def` handlers on the
  event loop or plain `def` ones in the thread pool; jobs/s from the worker's first claim to
  the server reporting every job completed (`GET /v1/queues`, asked as soon as the worker has
  every report acknowledged, and once a second meanwhile).
- `latency`: an idle worker long-polls; jobs are enqueued one at a time (default 500) and
  each one's enqueue-call-start -> handler-start time is measured (p50, p99).
- `null`: the worker runtime alone, on an in-process transport that hands out pre-made claimed
  jobs at once and accepts every report: the SDK's own dispatch overhead (no server needed).

Each mode also prints this process's peak RSS (the worker's, since the worker runs here).
Human output is one line per figure; `--json` prints one JSON object.

`python -m ferry.bench checkpoints ...` (the first word `checkpoints`, options of its own)
compares LangGraph checkpoint savers (ferry servers, SqliteSaver, PostgresSaver) on one
workload: `python -m ferry.bench checkpoints --help`, and ferry/_bench_checkpoints.py.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import secrets
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferry._client import AsyncClient
    from ferry.types import BatchResult, ClaimedJob, EnqueueResult, HeartbeatResult

__all__ = ["NullTransport", "main", "run_bench"]

MODES = ("asyncio", "threads", "latency", "null")
LOCAL_CHECK_S = 0.005


def max_rss_mb() -> float:
    """Peak resident set size of this process, in MB (ru_maxrss is KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024


class _FirstClaim:
    """The worker's client, noting when its first claim starts (the throughput clock's zero)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self.first: float | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def claim(self, queue: str, **kw: Any) -> list[ClaimedJob]:
        if self.first is None:
            self.first = time.perf_counter()
        return await self._client.claim(queue, **kw)


class NullTransport:
    """A `WorkerTransport` with no server: claims hand out pre-made jobs at once until `jobs`
    were handed out, reports are accepted and counted. Measures the worker runtime alone."""

    def __init__(self, queue: str, jobs: int) -> None:
        self.queue = queue
        self.total = jobs
        self.handed = 0
        self.completed = 0
        self.failed = 0
        self.first: float | None = None
        self.done = asyncio.Event()
        expires = datetime.now(timezone.utc) + timedelta(hours=1)
        self._expires = expires.strftime("%Y-%m-%dT%H:%M:%S.000Z")
        self._prefix = secrets.token_hex(4)

    def _job(self, i: int) -> ClaimedJob:
        return {
            "id": f"{self._prefix}-{i}",
            "queue": self.queue,
            "payload": {"i": i},
            "attempt": 1,
            "max_attempts": 5,
            "priority": 0,
            "tags": [],
            "lease": f"{i}.null",
            "lease_expires_at": self._expires,
            "timeout_ms": 86_400_000,
        }

    async def enqueue(self, queue: str, payload: Any = None, **fields: Any) -> EnqueueResult:
        """Accepted and dropped."""
        return {"id": f"{self._prefix}-enqueued"}

    async def claim(
        self,
        queue: str,
        *,
        worker: str | None = None,
        max: int = 1,
        wait_ms: int = 0,
        lease_ms: int | None = None,
    ) -> list[ClaimedJob]:
        """Up to `max` jobs at once; once all were handed out, none (after a short wait)."""
        if self.first is None:
            self.first = time.perf_counter()
        n = min(max, self.total - self.handed)
        if n <= 0:
            await asyncio.sleep(min(wait_ms, 50) / 1000)  # a short long-poll: shutdown stays quick
            return []
        start = self.handed
        self.handed += n
        return [self._job(i) for i in range(start, start + n)]

    async def heartbeat_batch(
        self, items: list[dict[str, Any]], *, worker: str | None = None
    ) -> list[HeartbeatResult]:
        """Every lease extended."""
        return [{"id": it["id"], "ok": True, "lease_expires_at": self._expires} for it in items]

    async def complete_batch(self, items: list[dict[str, Any]]) -> list[BatchResult]:
        """Counted; `done` is set once every job reported."""
        self.completed += len(items)
        self._check()
        return [{"id": it["id"], "ok": True, "state": "completed"} for it in items]

    async def fail_batch(self, items: list[dict[str, Any]]) -> list[BatchResult]:
        """Counted as failures (a benchmark's no-op handler should have none)."""
        self.failed += len(items)
        self._check()
        return [{"id": it["id"], "ok": True, "state": "dead", "attempt": 1} for it in items]

    async def release(self, id: str, lease: str) -> dict[str, Any]:
        """Accepted."""
        return {"id": id, "state": "ready"}

    async def aclose(self) -> None:
        """Nothing to close."""

    def _check(self) -> None:
        if self.completed + self.failed >= self.total:
            self.done.set()


def _noop_async() -> Any:
    async def noop(i: int) -> None:
        return None

    return noop


def _noop_sync() -> Any:
    def noop(i: int) -> None:
        return None

    return noop


async def _stop(worker: Any, task: asyncio.Task[None]) -> None:
    worker.stop()
    try:
        await asyncio.wait_for(task, 30)
    except asyncio.TimeoutError:  # pragma: no cover - a stuck worker must not hang the bench
        task.cancel()


async def _counts(client: AsyncClient, queue: str) -> dict[str, int]:
    for q in await client.queues():
        if q["queue"] == queue:
            return dict(q["counts"])
    return {}


async def _enqueue_all(client: AsyncClient, queue: str, jobs: int, batch: int) -> float:
    t0 = time.perf_counter()
    for start in range(0, jobs, batch):
        specs = [{"queue": queue, "payload": {"i": i}} for i in range(start, min(jobs, start + batch))]
        await client.enqueue_batch(specs)
    return time.perf_counter() - t0


async def bench_throughput(
    url: str, token: str | None, mode: str, jobs: int, concurrency: int, batch: int, timeout: float
) -> dict[str, Any]:
    """Enqueue `jobs`, then one worker at `concurrency` works them until the server reports
    them completed; jobs/s from the first claim."""
    from ferry._client import AsyncClient
    from ferry._worker import Worker

    queue = f"bench-py-{mode}-{secrets.token_hex(4)}"
    producer = AsyncClient(url, token, name="ferry-bench-producer")
    worker_client = AsyncClient(url, token, name=f"ferry-bench-{mode}")
    try:
        enqueue_s = await _enqueue_all(producer, queue, jobs, batch)
        timed = _FirstClaim(worker_client)
        worker = Worker(client=timed, concurrency=concurrency, name=f"ferry-bench-{mode}")
        worker.task(queue)(_noop_async() if mode == "asyncio" else _noop_sync())
        task = asyncio.create_task(worker.arun())
        deadline = time.perf_counter() + timeout
        counts: dict[str, int] = {}
        end = 0.0
        stats = worker.stats
        next_poll = time.perf_counter() + 1.0
        try:
            while True:
                await asyncio.sleep(LOCAL_CHECK_S)
                if task.done():
                    task.result()  # the worker stopped on its own: raise what stopped it
                    raise RuntimeError("the worker stopped before the jobs were done")
                # The server is asked once the worker saw every report acknowledged (and once a
                # second meanwhile), so polling does not slow the worker it measures.
                now = time.perf_counter()
                if stats.completed + stats.failed < jobs and now < next_poll:
                    continue
                next_poll = now + 1.0
                counts = await _counts(producer, queue)
                end = time.perf_counter()
                if counts.get("completed", 0) + counts.get("dead", 0) >= jobs:
                    break
                if end > deadline:
                    raise TimeoutError(f"not done after {timeout:.0f} s: {counts}")
        finally:
            await _stop(worker, task)
        start = timed.first if timed.first is not None else end
        seconds = end - start
        return {
            "mode": mode,
            "jobs": jobs,
            "concurrency": concurrency,
            "batch": batch,
            "queue": queue,
            "enqueue_jobs_per_s": round(jobs / enqueue_s, 1) if enqueue_s > 0 else None,
            "seconds": round(seconds, 3),
            "jobs_per_s": round(jobs / seconds, 1) if seconds > 0 else None,
            "completed": counts.get("completed", 0),
            "dead": counts.get("dead", 0),
            "worker": worker.stats.as_dict(),
            "max_rss_mb": round(max_rss_mb(), 1),
        }
    finally:
        await producer.aclose()
        await worker_client.aclose()


def _percentile(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return float("nan")
    k = max(0, min(len(sorted_ms) - 1, round(p / 100 * len(sorted_ms) + 0.5) - 1))
    return sorted_ms[k]


async def bench_latency(
    url: str, token: str | None, jobs: int, concurrency: int, timeout: float
) -> dict[str, Any]:
    """An idle worker; jobs enqueued one at a time; enqueue-call-start -> handler-start."""
    from ferry._client import AsyncClient
    from ferry._worker import Worker

    queue = f"bench-py-latency-{secrets.token_hex(4)}"
    producer = AsyncClient(url, token, name="ferry-bench-producer")
    worker_client = AsyncClient(url, token, name="ferry-bench-latency")
    started: dict[int, float] = {}
    waiting: dict[int, asyncio.Future[None]] = {}
    loop = asyncio.get_running_loop()

    async def handler(i: int) -> None:
        started[i] = time.perf_counter()
        fut = waiting.get(i)
        if fut is not None and not fut.done():
            fut.set_result(None)

    worker = Worker(client=worker_client, concurrency=concurrency, name="ferry-bench-latency")
    worker.task(queue)(handler)
    task = asyncio.create_task(worker.arun())
    samples: list[float] = []
    warmup = 20
    try:
        await asyncio.sleep(0.3)  # the worker is long-polling, idle
        for i in range(-warmup, jobs):
            fut: asyncio.Future[None] = loop.create_future()
            waiting[i] = fut
            t0 = time.perf_counter()
            await producer.enqueue(queue, {"i": i})
            await asyncio.wait_for(fut, timeout)
            if i >= 0:
                samples.append((started[i] - t0) * 1000)
            del waiting[i]
            await asyncio.sleep(0.005)  # the report goes out, the worker is idle again
    finally:
        await _stop(worker, task)
        await producer.aclose()
        await worker_client.aclose()
    samples.sort()
    return {
        "mode": "latency",
        "jobs": jobs,
        "concurrency": concurrency,
        "queue": queue,
        "p50_ms": round(_percentile(samples, 50), 2),
        "p99_ms": round(_percentile(samples, 99), 2),
        "max_ms": round(samples[-1], 2) if samples else None,
        "mean_ms": round(statistics.fmean(samples), 2) if samples else None,
        "max_rss_mb": round(max_rss_mb(), 1),
    }


async def bench_null(
    jobs: int, concurrency: int, timeout: float, handlers: str = "asyncio"
) -> dict[str, Any]:
    """The worker runtime on `NullTransport`: jobs/s of dispatch alone."""
    from ferry._worker import Worker

    queue = "bench-null"
    transport = NullTransport(queue, jobs)
    worker = Worker(client=transport, concurrency=concurrency, name="ferry-bench-null")
    worker.task(queue)(_noop_async() if handlers == "asyncio" else _noop_sync())
    task = asyncio.create_task(worker.arun())
    try:
        await asyncio.wait_for(transport.done.wait(), timeout)
        end = time.perf_counter()
    finally:
        await _stop(worker, task)
    start = transport.first if transport.first is not None else end
    seconds = end - start
    return {
        "mode": "null",
        "handlers": handlers,
        "jobs": jobs,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "jobs_per_s": round(jobs / seconds, 1) if seconds > 0 else None,
        "completed": transport.completed,
        "failed": transport.failed,
        "max_rss_mb": round(max_rss_mb(), 1),
    }


def run_bench(
    *,
    url: str | None,
    token: str | None,
    mode: str,
    jobs: int | None = None,
    concurrency: int = 16,
    batch: int = 1000,
    timeout: float = 300.0,
    null_handlers: str = "asyncio",
) -> dict[str, Any]:
    """Runs one mode and returns its figures (what `--json` prints)."""
    import os

    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    url = url or os.environ.get("FERRY_URL") or "http://127.0.0.1:7700"
    token = token if token is not None else os.environ.get("FERRY_TOKEN") or None
    if mode == "null":
        return asyncio.run(bench_null(jobs or 20_000, concurrency, timeout, null_handlers))
    if mode == "latency":
        return asyncio.run(bench_latency(url, token, jobs or 500, concurrency, timeout=min(timeout, 30.0)))
    return asyncio.run(bench_throughput(url, token, mode, jobs or 20_000, concurrency, batch, timeout))


def _human(r: dict[str, Any]) -> list[str]:
    mode = r["mode"]
    lines = [f"mode         {mode} (concurrency {r['concurrency']})"]
    if mode in ("asyncio", "threads"):
        lines += [
            f"enqueue      {r['enqueue_jobs_per_s']:.0f} jobs/s "
            f"({r['jobs']} jobs in batches of {r['batch']})",
            f"end to end   {r['jobs_per_s']:.0f} jobs/s ({r['jobs']} jobs, first claim to the server "
            f"reporting them done: {r['seconds']:.2f} s)",
            f"completed    {r['completed']} (dead {r['dead']})",
        ]
    elif mode == "latency":
        lines += [
            f"latency p50  {r['p50_ms']:.2f} ms (enqueue call start -> handler start, {r['jobs']} jobs)",
            f"latency p99  {r['p99_ms']:.2f} ms",
            f"latency max  {r['max_ms']:.2f} ms",
        ]
    else:
        lines += [
            f"dispatch     {r['jobs_per_s']:.0f} jobs/s ({r['jobs']} jobs on a null transport, "
            f"{r['handlers']} handlers, {r['seconds']:.2f} s)",
        ]
    lines.append(f"max RSS      {r['max_rss_mb']:.1f} MB")
    return lines


def main(argv: list[str] | None = None) -> int:
    """`python -m ferry.bench` (`python -m ferry.bench checkpoints ...`: the checkpoint savers'
    benchmark)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["checkpoints"]:
        from ferry._bench_checkpoints import main as checkpoints_main

        return checkpoints_main(args[1:])
    p = argparse.ArgumentParser(prog="python -m ferry.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", help="the server (default $FERRY_URL, else http://127.0.0.1:7700)")
    p.add_argument("--token", help="API token (default $FERRY_TOKEN)")
    p.add_argument("--mode", choices=MODES, default="asyncio")
    p.add_argument("--jobs", type=int, help="jobs (default 20000; latency: 500)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--batch", type=int, default=1000, help="jobs per enqueue call")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before giving up")
    p.add_argument(
        "--null-handlers",
        choices=("asyncio", "threads"),
        default="asyncio",
        help="null mode: async handlers (default) or plain ones in the thread pool",
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of lines")
    a = p.parse_args(args)
    if a.jobs is not None and a.jobs < 1:
        p.error("--jobs must be >= 1")
    if a.concurrency < 1 or a.batch < 1:
        p.error("--concurrency and --batch must be >= 1")
    try:
        r = run_bench(
            url=a.url,
            token=a.token,
            mode=a.mode,
            jobs=a.jobs,
            concurrency=a.concurrency,
            batch=a.batch,
            timeout=a.timeout,
            null_handlers=a.null_handlers,
        )
    except Exception as e:
        print(f"ferry.bench: {e}", file=sys.stderr)
        return 1
    if a.json:
        print(json.dumps(r))
    else:
        print("\n".join(_human(r)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
