"""The worker runtime: claim jobs for the registered tasks, run them (async handlers on the
event loop, plain ones in a thread pool), keep their leases alive, report their outcomes.

Guarantees it keeps, as the Rust SDK's worker does:
- it claims no more jobs than it has free handler slots (long-poll, one loop per queue), so
  no job waits on this worker with a lease ticking;
- one heartbeat loop extends every held lease in one `POST /v1/jobs/heartbeat` per interval
  (a third of the shortest lease); a job whose lease is reported stale or unknown, or whose
  lease deadline passed without a successful heartbeat, has its handler cancelled (task
  cancellation; in a thread, `JobCancelled` raised into it) and its result dropped, so a job
  never keeps running beside its retry;
- a handler past its job's `timeout_ms` is cancelled and failed as retryable;
- completions and failures go in batches (100 items or 5 ms), and a job's lease is kept
  alive until its report is acknowledged, so a server outage only delays reports;
- on SIGTERM/SIGINT it stops claiming, releases claims that arrive after that unstarted
  (their attempt not counted), lets running handlers finish for up to `shutdown_timeout`
  (heartbeating them), then cancels and releases the rest; a second signal exits at once.

Per job the hot path allocates the JobContext, the handler's task (or a thread-pool queue
item) and the report item; there is no per-job heartbeat task or timer unless the job sets a
`timeout_ms` below the default day.
"""

from __future__ import annotations

import asyncio
import contextvars
import ctypes
import datetime as _dt
import logging
import os
import queue as _queue
import random
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from ferry._context import _CURRENT, JobCancelled, JobContext, install_log_factory
from ferry._errors import FerryError
from ferry._task import _TRANSPORT, Task, job_fields, make_task, to_json
from ferry._validate import PayloadInvalid

if TYPE_CHECKING:
    from ferry._protocol import WorkerTransport
    from ferry.types import ClaimedJob

__all__ = ["Worker", "WorkerStats"]

P = ParamSpec("P")
R = TypeVar("R")

log = logging.getLogger("ferry.worker")

DEFAULT_TIMEOUT_MS = 86_400_000
REPORT_BATCH = 100
REPORT_DELAY = 0.005
HEARTBEAT_CHUNK = 1000
CLAIMERS_PER_QUEUE = 2
# Errors that no amount of waiting fixes: the worker stops and says why.
FATAL_CODES = frozenset(
    {
        "unauthorized",
        "forbidden",
        "bad_request",
        "validation_failed",
        "not_found",
        "unsupported_media_type",
        "schema_too_new",
        "payload_too_large",
        "uri_too_long",
        "headers_too_large",
    }
)
# A report item refused for these codes belongs to a job that is no longer this worker's.
GONE_CODES = frozenset({"stale_lease", "not_found", "invalid_state"})

Hook = Callable[..., Any]


def _is_transient(err: FerryError) -> bool:
    return err.code not in FATAL_CODES and err.code not in GONE_CODES


def _worker_name() -> str:
    host = socket.gethostname()[:100]  # the server takes names of up to 128 characters
    return f"{host}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


# ---- timestamps ---------------------------------------------------------------------------

_ts_cache: dict[str, float] = {}


def _parse_ts(text: str) -> float:
    """Epoch seconds of the server's RFC 3339 timestamps (`2024-05-01T12:00:00.123Z`); the
    whole-second part is cached, since a claim's leases all end within a second or two."""
    if len(text) >= 20 and text[-1] == "Z" and text[10] == "T":
        head = text[:19]
        base = _ts_cache.get(head)
        if base is None:
            try:
                base = _dt.datetime.fromisoformat(head).replace(tzinfo=_dt.timezone.utc).timestamp()
            except ValueError:
                return time.time()
            if len(_ts_cache) > 256:
                _ts_cache.clear()
            _ts_cache[head] = base
        frac = text[19:-1]
        if frac:
            try:
                return base + float(frac)
            except ValueError:
                return base
        return base
    try:
        return _dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


# ---- stats --------------------------------------------------------------------------------


class WorkerStats:
    """What a worker did, for logs, tests and benchmarks."""

    __slots__ = (
        "claimed",
        "completed",
        "failed",
        "invalid",
        "lease_lost",
        "rejected",
        "released",
        "timed_out",
    )

    def __init__(self) -> None:
        self.claimed = 0
        self.completed = 0
        self.failed = 0
        self.invalid = 0
        self.lease_lost = 0
        self.rejected = 0
        self.released = 0
        self.timed_out = 0

    def as_dict(self) -> dict[str, int]:
        """The counters by name."""
        return {k: getattr(self, k) for k in self.__slots__}

    def __repr__(self) -> str:
        return f"WorkerStats({', '.join(f'{k}={v}' for k, v in self.as_dict().items())})"


# ---- the worker ---------------------------------------------------------------------------


class Worker:
    """Runs decorated tasks against a ferry server with its lease guarantees; `run()` for a
    process of its own (signals handled), `await arun()` inside an app, `drain()` in tests.

    `url`/`token` default to `FERRY_URL`/`FERRY_TOKEN`; `client` is any `WorkerTransport`
    (`ferry.testing.InMemoryClient` in tests). `concurrency` handlers run at once (async ones
    on the loop, plain ones on as many threads) and the worker never holds more leases than
    that; `queues` limits it to some of its tasks; `processes` forks that many copies.
    Hooks, sync or async, run in the job's context: `before(job)`, `after(job, result)`,
    `on_error(job, exc)`; an exception in `before` fails the attempt.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        token: str | None = None,
        client: WorkerTransport | None = None,
        concurrency: int = 8,
        queues: Iterable[str] | None = None,
        name: str | None = None,
        shutdown_timeout: float = 25.0,
        processes: int = 1,
        before: Hook | None = None,
        after: Hook | None = None,
        on_error: Hook | None = None,
        wait_ms: int = 1000,
        claim_max: int = 1000,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if processes < 1:
            raise ValueError("processes must be >= 1")
        self.url = url
        self.token = token
        self.client = client
        self.concurrency = concurrency
        self.queues: list[str] | None = list(queues) if queues is not None else None
        self.name = name
        self.shutdown_timeout = shutdown_timeout
        self.processes = processes
        self.before = before
        self.after = after
        self.on_error = on_error
        self.wait_ms = wait_ms
        self.claim_max = claim_max
        self.stats = WorkerStats()
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._run: _Run | None = None
        self._stop_requested = False
        self._child_index: int | None = None

    def __repr__(self) -> str:
        return f"<ferry.Worker queues={sorted(self._tasks)} concurrency={self.concurrency}>"

    # ---- tasks ------------------------------------------------------------------------------

    def task(
        self,
        name: str | None = None,
        /,
        *,
        queue: str | None = None,
        retries: int | None = None,
        max_attempts: int | None = None,
        timeout_ms: int | None = None,
        lease_ms: int | None = None,
        **fields: Any,
    ) -> Callable[[Callable[P, R]], Task[P, R]]:
        """Declares a task this worker runs: the queue is `name` (default the function's
        name); `retries=3` allows 4 attempts; `timeout_ms`, `lease_ms` and any other keyword
        go on each enqueued job."""
        spec = job_fields(
            retries=retries,
            max_attempts=max_attempts,
            timeout_ms=timeout_ms,
            lease_ms=lease_ms,
            fields=fields,
        )

        def decorate(fn: Callable[P, R]) -> Task[P, R]:
            t = make_task(fn, name, queue, spec, self)
            self.include(t)
            return t

        return decorate

    def include(self, *tasks: Task[Any, Any]) -> None:
        """Adds tasks declared elsewhere (`@ferry.task`) to this worker."""
        for t in tasks:
            existing = self._tasks.get(t.name)
            if existing is not None and existing.fn is not t.fn:
                raise ValueError(f"this worker already has a task for queue {t.name!r}")
            self._tasks[t.name] = t

    @property
    def tasks(self) -> dict[str, Task[Any, Any]]:
        """The tasks by queue."""
        return dict(self._tasks)

    def _selected(self, queue: str | None = None) -> dict[str, Task[Any, Any]]:
        names = [queue] if queue is not None else self.queues
        if names is None:
            return dict(self._tasks)
        out: dict[str, Task[Any, Any]] = {}
        for q in names:
            t = self._tasks.get(q)
            if t is None:
                raise ValueError(
                    f"no task for queue {q!r} (tasks: {', '.join(sorted(self._tasks)) or 'none'})"
                )
            out[q] = t
        return out

    # ---- running ----------------------------------------------------------------------------

    def run(self) -> None:
        """Runs until SIGTERM/SIGINT (or `stop()`), then shuts down gracefully; with
        `processes > 1`, that many worker processes under a supervisor that forwards signals.
        Raises when the worker cannot go on (a bad token, say)."""
        if self.processes > 1:
            from ferry._pool import supervise

            if supervise(self) != 0:
                raise RuntimeError("a worker process failed (its error is above)")
            return
        asyncio.run(self.arun(handle_signals=True))

    async def arun(self, *, handle_signals: bool = False) -> None:
        """Runs on the current event loop until `stop()` (or, with `handle_signals`, SIGTERM or
        SIGINT), then shuts down gracefully."""
        tasks = self._selected()
        if not tasks:
            raise ValueError("this worker has no tasks")
        run = await self._start(tasks, drain=False)
        if handle_signals:
            run.install_signals()
        try:
            await run.main()
        finally:
            run.remove_signals()
            await self._finish(run)
        if run.fatal is not None:
            raise run.fatal

    def stop(self) -> None:
        """Begins a graceful shutdown (thread-safe; a second call cancels running handlers)."""
        run = self._run
        if run is None:
            self._stop_requested = True
            return
        if threading.get_ident() == run.loop_thread:
            run.request_stop()
        else:
            run.loop.call_soon_threadsafe(run.request_stop)

    def drain(self, queue: str | None = None, timeout: float = 5.0) -> None:
        """Runs this worker until `queue` (default: all its queues) has no job due and nothing
        is in flight, then returns; re-raises the first handler error; TimeoutError after
        `timeout` seconds. For tests, with the in-memory client or a real server."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("drain() cannot run inside an event loop: use `await worker.adrain()`")
        asyncio.run(self.adrain(queue, timeout))

    async def adrain(self, queue: str | None = None, timeout: float = 5.0) -> None:
        """`drain` for async tests."""
        tasks = self._selected(queue)
        if not tasks:
            raise ValueError("this worker has no tasks")
        run = await self._start(tasks, drain=True)
        try:
            await run.drain(timeout)
        finally:
            await self._finish(run)
        if run.first_error is not None:
            raise run.first_error
        if run.fatal is not None:
            raise run.fatal

    async def _start(self, tasks: dict[str, Task[Any, Any]], *, drain: bool) -> _Run:
        if self._run is not None:
            raise RuntimeError("this worker is running already")
        install_log_factory()
        for t in tasks.values():
            t.prepare()
        name = self.name
        if name is None:
            name = _worker_name()
        elif self._child_index is not None:
            name = f"{name}:{self._child_index}"
        owned = self.client is None
        client: WorkerTransport
        if self.client is not None:
            client = self.client
        else:
            from ferry._client import AsyncClient

            client = AsyncClient(self.url, self.token, name=name, retry_budget=10.0)
        run = _Run(self, client, owned, name, tasks, drain)
        self._run = run
        if self._stop_requested:
            self._stop_requested = False
            run.stopping = True
        return run

    async def _finish(self, run: _Run) -> None:
        self._run = None
        if run.owned:
            try:
                await run.client.aclose()
            except Exception:  # pragma: no cover - closing never matters more than the result
                log.debug("closing the client failed", exc_info=True)


# ---- one run ------------------------------------------------------------------------------


def _set_result(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Run:
    """The state of one `arun`/`adrain`: slots, held leases, report buffers, loops."""

    def __init__(
        self,
        worker: Worker,
        client: WorkerTransport,
        owned: bool,
        name: str,
        tasks: dict[str, Task[Any, Any]],
        drain: bool,
    ) -> None:
        self.worker = worker
        self.stats = worker.stats
        self.client = client
        self.owned = owned
        self.name = name
        self.tasks = tasks
        self.draining = drain
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.concurrency = worker.concurrency
        self.claim_max = max(1, min(worker.claim_max, worker.concurrency, 1000))
        self.wait_ms = worker.wait_ms
        self.before = worker.before
        self.after = worker.after
        self.on_error = worker.on_error
        self.hooks = worker.before is not None or worker.after is not None or worker.on_error is not None
        self.free = worker.concurrency
        self.slot_waiters: deque[asyncio.Future[None]] = deque()
        self.inflight: dict[str, JobContext] = {}
        self.running = 0
        self.change: asyncio.Future[None] | None = None
        self.stopping = False
        self.stop_fut: asyncio.Future[None] = self.loop.create_future()
        self.signals = 0
        self.installed: list[int] = []
        self.fatal: BaseException | None = None
        self.first_error: BaseException | None = None
        self.done_buf: list[JobContext] = []
        self.fail_buf: list[JobContext] = []
        self.flush_handle: asyncio.TimerHandle | None = None
        self.flush_soon = False
        # Items per report and heartbeat request: lowered if the server's `limits.max_batch`
        # turns out smaller (a 413 naming `items`).
        self.batch_max = REPORT_BATCH
        self.batch_max_hb = HEARTBEAT_CHUNK
        self.sending_done = 0
        self.sending_fail = 0
        self.sent: asyncio.Future[None] | None = None
        self.background: set[asyncio.Task[Any]] = set()
        self.hb_interval = 1.0
        self.hb_wake: asyncio.Future[None] | None = None
        self.hb_sending = False
        self.hb_stop = False
        self.hb_warned = 0.0
        self.pool: _ThreadPool | None = None

    # ---- lifecycle --------------------------------------------------------------------------

    def install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: SIGTERM/SIGINT are not handled by this worker")
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.loop.add_signal_handler(sig, self.on_signal, sig)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - non-POSIX loops
                continue
            self.installed.append(sig)

    def remove_signals(self) -> None:
        for sig in self.installed:
            self.loop.remove_signal_handler(sig)
        self.installed.clear()

    def on_signal(self, sig: int) -> None:
        self.signals += 1
        if self.signals == 1:
            log.info(
                "%s: stopping (up to %.0f s for %d running jobs; a second signal exits at once)",
                signal.Signals(sig).name,
                self.worker.shutdown_timeout,
                self.running,
            )
            self.request_stop()
            return
        sys.stderr.write(f"ferry-worker: second {signal.Signals(sig).name}: exiting at once\n")
        sys.stderr.flush()
        os._exit(1)

    def request_stop(self) -> None:
        if self.stopping:
            if self.running:
                self.cancel_running("shutdown")
            return
        self.stopping = True
        self.wake_slot_waiters()
        _set_result(self.stop_fut)

    def fail_run(self, err: BaseException) -> None:
        if self.fatal is None:
            self.fatal = err
        self.request_stop()

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        t: asyncio.Task[Any] = self.loop.create_task(coro)  # type: ignore[arg-type]
        self.background.add(t)
        t.add_done_callback(self.background.discard)
        return t

    async def main(self) -> None:
        token = _TRANSPORT.set((self.client, self.loop))
        try:
            hb = self.loop.create_task(self.heartbeat_loop())
            # Two claim loops per queue: while one claim is in flight, slots that free up are
            # claimed by the other, so a worker whose handlers finish one by one (threads)
            # still keeps every slot busy.
            claimers = CLAIMERS_PER_QUEUE if self.concurrency >= CLAIMERS_PER_QUEUE * len(self.tasks) else 1
            loops = [
                self.loop.create_task(self.claim_loop(q, t))
                for q, t in self.tasks.items()
                for _ in range(claimers)
            ]
            for t in [hb, *loops]:
                t.add_done_callback(self.loop_ended)
            log.info(
                "worker %s: queues %s, concurrency %d",
                self.name,
                ", ".join(self.tasks),
                self.concurrency,
            )
            if not self.stopping:
                await self.stop_fut
            await self.shutdown(loops)
            self.hb_stop = True
            self.wake_heartbeats()
            await hb
        finally:
            _TRANSPORT.reset(token)
        log.info("worker %s stopped: %s", self.name, self.stats)

    def loop_ended(self, t: asyncio.Task[None]) -> None:
        """A claim or heartbeat loop died of a bug: stop rather than hang."""
        if not t.cancelled() and t.exception() is not None:
            log.error("worker loop failed", exc_info=t.exception())
            self.fail_run(t.exception() or RuntimeError("worker loop failed"))

    async def shutdown(self, loops: list[asyncio.Task[None]]) -> None:
        """Stops claiming, waits for running handlers (heartbeating them) up to the shutdown
        timeout, cancels the rest, flushes every report and releases what is left."""
        self.stopping = True
        self.wake_slot_waiters()
        deadline = time.monotonic() + self.worker.shutdown_timeout
        # Claims in flight return within their long-poll wait; what they bring is released.
        if loops:
            _, pending = await asyncio.wait(loops, timeout=max(0.0, deadline - time.monotonic()))
            for t in pending:
                t.cancel()
        if self.running:
            await self.wait_idle(deadline)
        if self.running:
            log.warning("shutdown timeout: cancelling %d running jobs and releasing them", self.running)
            self.cancel_running("shutdown")
            await self.wait_idle(time.monotonic() + 2.0)
        await self.flush_and_wait(time.monotonic() + 10.0)
        # Whatever still holds a lease (a thread stuck in C code, an unacknowledged report)
        # goes back now rather than when its lease expires.
        left = [r for r in self.inflight.values() if not r._done]
        if left:
            await asyncio.gather(*(self.release(r) for r in left), return_exceptions=True)
        if self.background:
            await asyncio.wait(list(self.background), timeout=5.0)
        if self.pool is not None:
            self.pool.shutdown()

    async def wait_idle(self, deadline: float) -> None:
        while self.running and time.monotonic() < deadline:
            fut = self.change_future()
            try:
                await asyncio.wait_for(asyncio.shield(fut), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return

    def change_future(self) -> asyncio.Future[None]:
        fut = self.change
        if fut is None or fut.done():
            fut = self.change = self.loop.create_future()
        return fut

    # ---- slots ------------------------------------------------------------------------------

    async def take_slots(self, most: int) -> int:
        while self.free <= 0:
            if self.stopping:
                return 0
            fut = self.loop.create_future()
            self.slot_waiters.append(fut)
            await fut
        if self.stopping:
            return 0
        n = self.free if self.free < most else most
        self.free -= n
        return n

    def free_slot(self, rec: JobContext) -> None:
        """The job no longer holds a lease of this worker: its slot takes a new job."""
        if rec._held:
            rec._held = False
            self.free += 1
            if self.slot_waiters:
                self.wake_slot_waiters()
            change = self.change
            if change is not None and not change.done():
                change.set_result(None)

    def give_slots(self, n: int) -> None:
        self.free += n
        if self.slot_waiters:
            self.wake_slot_waiters()

    def wake_slot_waiters(self) -> None:
        waiters = self.slot_waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)

    # ---- claiming ---------------------------------------------------------------------------

    async def claim_loop(self, queue: str, task: Task[Any, Any]) -> None:
        idle = False
        backoff = 0.05
        while not self.stopping:
            # An idle queue probes with one slot, so it does not hold the others' slots
            # through its long poll.
            n = await self.take_slots(1 if idle else self.claim_max)
            if n == 0:
                break
            try:
                jobs = await self.claim(queue, n, self.wait_ms)
            except FerryError as e:
                self.give_slots(n)
                if not _is_transient(e):
                    log.error("claim on %s refused: %s", queue, e)
                    self.fail_run(e)
                    return
                log.warning("claim on %s failed (%s); retrying in %.2f s", queue, e, backoff)
                await self.sleep_unless_stopping(backoff * random.uniform(0.5, 1.0))
                backoff = min(backoff * 2, 2.0)
                continue
            except BaseException:
                self.give_slots(n)
                raise
            backoff = 0.05
            got = len(jobs)
            if got < n:
                self.give_slots(n - got)
            idle = got == 0
            if not got:
                continue
            self.stats.claimed += got
            if self.stopping:
                # Arrived after shutdown began: back to the queue unstarted, attempt uncounted.
                self.give_slots(got)
                await asyncio.gather(*(self.release_job(j) for j in jobs), return_exceptions=True)
                break
            self.start_jobs(jobs, task)

    async def claim(self, queue: str, n: int, wait_ms: int) -> list[ClaimedJob]:
        """Claims up to `n` jobs; when the server's `limits.max_claim` is lower, learns it."""
        while True:
            try:
                return await self.client.claim(queue, worker=self.name, max=n, wait_ms=wait_ms)
            except FerryError as e:
                if e.code != "validation_failed" or e.field != "max" or n <= 1:
                    raise
                n = max(1, n // 2)
                self.claim_max = min(self.claim_max, n)

    async def sleep_unless_stopping(self, seconds: float) -> None:
        if self.stopping:
            return
        await asyncio.wait([self.stop_fut], timeout=seconds)

    async def release_job(self, job: ClaimedJob) -> None:
        try:
            await self.client.release(job["id"], job["lease"])
            self.stats.released += 1
        except FerryError as e:
            log.warning("releasing job %s failed: %s (it runs again when its lease expires)", job["id"], e)

    async def release(self, rec: JobContext) -> None:
        if self.inflight.get(rec.id) is rec:
            del self.inflight[rec.id]
        try:
            await self.client.release(rec.id, rec.lease)
            self.stats.released += 1
        except FerryError as e:
            _log_job(logging.WARNING, rec, "releasing job %s failed: %s", rec.id, e)
        finally:
            self.free_slot(rec)

    # ---- dispatch ---------------------------------------------------------------------------

    def start_jobs(self, jobs: list[ClaimedJob], task: Task[Any, Any]) -> None:
        now = time.monotonic()
        wall = time.time()
        loop = self.loop
        inflight = self.inflight
        name = self.name
        validate = task.validate
        fn = task.fn
        is_async = task.is_async
        new = JobContext.__new__
        shortest = self.hb_interval
        for job in jobs:
            rec = new(JobContext)
            rec.id = job_id = job["id"]
            rec.queue = job["queue"]
            rec.attempt = job["attempt"]
            rec.max_attempts = job["max_attempts"]
            rec.tags = job["tags"]
            rec.lease = job["lease"]
            payload = rec.payload = job["payload"]
            timeout_ms = job.get("timeout_ms") or DEFAULT_TIMEOUT_MS
            rec.timeout_ms = timeout_ms
            rec.worker = name
            rec.cancelled = False
            rec.progress = None
            rec._run = self
            rec._started = now
            expires = _parse_ts(job["lease_expires_at"])
            left = expires - wall
            if left < 0.03:
                left = 0.03
            rec._lease_wall = expires
            rec._lease_deadline = now + left
            interval = left / 3.0
            rec._interval = interval
            rec._beat_at = now + interval
            if interval < shortest:
                shortest = interval
            rec._timeout_at = now + timeout_ms / 1000.0
            rec._task = None
            rec._thread = 0
            rec._reason = None
            rec._done = False
            rec._held = True
            rec._value = None
            rec._retry = True
            inflight[job_id] = rec
            try:
                kwargs = validate(payload)
            except PayloadInvalid as e:
                self.stats.invalid += 1
                _log_job(logging.WARNING, rec, "job %s: invalid payload: %s", job_id, e)
                rec._done = True
                rec._value = f"invalid payload: {e}"
                rec._retry = False
                self.push(self.fail_buf, rec)
                continue
            except Exception as e:
                rec._done = True
                rec._value = f"validating the payload failed: {type(e).__name__}: {e}"
                self.push(self.fail_buf, rec)
                continue
            rec._timer = (
                loop.call_at(rec._timeout_at, self.on_timeout, rec)
                if timeout_ms < DEFAULT_TIMEOUT_MS
                else None
            )
            self.running += 1
            if is_async:
                token = _CURRENT.set(rec)
                try:
                    rec._task = loop.create_task(self.run_async(rec, fn, kwargs))
                finally:
                    _CURRENT.reset(token)
            else:
                pool = self.pool
                if pool is None:
                    pool = self.pool = _ThreadPool(self)
                pool.submit(rec, fn, kwargs)
        if shortest < self.hb_interval:
            self.hb_interval = shortest
            self.wake_heartbeats()

    async def run_async(self, rec: JobContext, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        try:
            if self.hooks and self.before is not None:
                await _maybe_await(self.before(rec))
            value = await fn(**kwargs)
        except asyncio.CancelledError:
            if rec._reason is None:
                rec._reason = "cancelled"
            self.finished(rec, False, JobCancelled("cancelled"))
            return
        except BaseException as e:
            if self.on_error is not None and rec._reason is None:
                await _run_hook_async(self.on_error, rec, e)
            self.finished(rec, False, e)
            return
        if self.after is not None and rec._reason is None:
            await _run_hook_async(self.after, rec, value)
        self.finished(rec, True, value)

    def finished(self, rec: JobContext, ok: bool, value: Any) -> None:
        """A handler ended (on the loop): queue its report (its slot is free once the server
        has the report, so a worker never holds more leases than its concurrency)."""
        self.running -= 1
        if rec._timer is not None:
            rec._timer.cancel()
            rec._timer = None
        rec._done = True
        change = self.change
        if change is not None and not change.done():
            change.set_result(None)
        reason = rec._reason
        if reason is not None:
            if reason == "lease":
                self.free_slot(rec)
                return  # the job is someone else's now; its result is dropped
            if reason == "shutdown":
                self.spawn(self.release(rec))
                return
            if reason == "timeout":
                self.stats.timed_out += 1
                rec._value = f"timed out after {rec.timeout_ms} ms"
            else:
                rec._value = "cancelled"
            rec._retry = True
            self.push(self.fail_buf, rec)
            return
        if ok:
            if value is not None and type(value) not in (str, int, float, bool, dict, list):
                value = to_json(value)
            rec._value = value
            self.push(self.done_buf, rec)
            return
        err: BaseException = value
        rec._value = _error_text(err)
        rec._retry = not isinstance(err, PayloadInvalid)
        if self.draining and self.first_error is None:
            self.first_error = err
        _log_job(logging.WARNING, rec, "job %s failed: %s", rec.id, rec._value, exc_info=err)
        self.push(self.fail_buf, rec)

    # ---- cancelling -------------------------------------------------------------------------

    def cancel(self, rec: JobContext) -> None:
        rec.cancelled = True
        if rec._done:
            return
        t = rec._task
        if t is not None:
            t.cancel()
            # A task cancelled before its first step never enters its handler's try block:
            # account for it here (a no-op when the handler saw the cancellation itself).
            t.add_done_callback(lambda _: self.cancelled_before_start(rec))
        elif self.pool is not None:
            self.pool.interrupt(rec)

    def cancelled_before_start(self, rec: JobContext) -> None:
        if not rec._done:
            self.finished(rec, False, JobCancelled(rec._reason or "cancelled"))

    def on_timeout(self, rec: JobContext) -> None:
        rec._timer = None
        if rec._done or rec._reason is not None:
            return
        rec._reason = "timeout"
        _log_job(logging.WARNING, rec, "job %s: timed out after %d ms; cancelling it", rec.id, rec.timeout_ms)
        self.cancel(rec)

    def lose(self, rec: JobContext, why: str) -> None:
        """The lease is gone: stop the handler and drop whatever it produces."""
        if self.inflight.get(rec.id) is rec:
            del self.inflight[rec.id]
        if rec._done:
            _log_job(logging.DEBUG, rec, "job %s: lease ended (%s) before its report landed", rec.id, why)
            return
        rec._reason = "lease"
        self.stats.lease_lost += 1
        _log_job(logging.WARNING, rec, "job %s: lease lost (%s); cancelling its handler", rec.id, why)
        self.cancel(rec)

    def cancel_running(self, reason: str) -> None:
        for rec in list(self.inflight.values()):
            if not rec._done and rec._reason is None:
                rec._reason = reason
                self.cancel(rec)

    # ---- reports ----------------------------------------------------------------------------

    def push(self, buf: list[JobContext], rec: JobContext) -> None:
        """Queues a report. A batch goes out at the end of this loop iteration when no batch of
        its kind is in flight (so handlers finishing together share one), else when it holds
        100 items or 5 ms after its first item, whichever comes first."""
        buf.append(rec)
        n = len(buf)
        if n >= self.batch_max:
            self.flush()
        elif n == 1:
            busy = self.sending_done if buf is self.done_buf else self.sending_fail
            if busy:
                if self.flush_handle is None:
                    self.flush_handle = self.loop.call_later(REPORT_DELAY, self.flush)
            elif not self.flush_soon:
                self.flush_soon = True
                self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_soon = False
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        step = self.batch_max
        if self.done_buf:
            batch = self.done_buf
            self.done_buf = []
            for i in range(0, len(batch), step):
                self.sending_done += 1
                self.spawn(self.send(batch[i : i + step], True))
        if self.fail_buf:
            batch = self.fail_buf
            self.fail_buf = []
            for i in range(0, len(batch), step):
                self.sending_fail += 1
                self.spawn(self.send(batch[i : i + step], False))

    async def flush_and_wait(self, deadline: float) -> None:
        self.flush()
        while (self.sending_done or self.sending_fail) and time.monotonic() < deadline:
            fut = self.sent
            if fut is None or fut.done():
                fut = self.sent = self.loop.create_future()
            try:
                await asyncio.wait_for(asyncio.shield(fut), timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return
            self.flush()

    async def send(self, recs: list[JobContext], done: bool) -> None:
        try:
            await self.send_batch(recs, done)
        except Exception:
            log.exception("sending %d reports failed", len(recs))
            for r in recs:
                self.forget(r)
        finally:
            if done:
                self.sending_done -= 1
                pending = bool(self.done_buf)
            else:
                self.sending_fail -= 1
                pending = bool(self.fail_buf)
            if pending and not self.flush_soon:
                # What queued while this batch was in flight goes now.
                self.flush_soon = True
                self.loop.call_soon(self.flush)
            fut = self.sent
            if fut is not None and not fut.done():
                fut.set_result(None)

    def forget(self, r: JobContext) -> None:
        """Done with a job, acknowledged or not: no more heartbeats, its slot is free."""
        if self.inflight.get(r.id) is r:
            del self.inflight[r.id]
        self.free_slot(r)

    async def send_batch(self, recs: list[JobContext], done: bool) -> None:
        items = [_item(r, done) for r in recs]
        call = self.client.complete_batch if done else self.client.fail_batch
        backoff = 0.1
        while True:
            try:
                results = await call(items)
                break
            except (TypeError, ValueError):
                if not done:
                    raise
                # A result that is not JSON spoils the batch: fail those jobs, send the rest.
                good, bad = _split_unencodable(recs, items)
                for r, err in bad:
                    r._value = f"the result is not JSON: {err}"
                    r._retry = False
                    self.push(self.fail_buf, r)
                if not good:
                    return
                recs = [r for r, _ in good]
                items = [i for _, i in good]
                continue
            except FerryError as e:
                held = []
                for r in recs:
                    if self.inflight.get(r.id) is r:
                        held.append(r)
                    else:
                        self.forget(r)  # its lease lapsed meanwhile: nothing left to report
                if _is_transient(e) and held:
                    log.warning("reporting %d jobs failed (%s); retrying in %.1f s", len(held), e, backoff)
                    await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
                    backoff = min(backoff * 2, 2.0)
                    recs = held
                    items = [_item(r, done) for r in recs]
                    continue
                recs = held
                if e.code == "payload_too_large" and len(recs) > 1:
                    half = len(recs) // 2
                    self.batch_max = min(self.batch_max, half)
                    await self.send_batch(recs[:half], done)
                    await self.send_batch(recs[half:], done)
                    return
                if e.code in ("validation_failed", "payload_too_large") and done and len(recs) == 1:
                    r = recs[0]
                    r._value = f"the server refused the result: {e.message}"
                    r._retry = False
                    self.push(self.fail_buf, r)
                    return
                if recs:
                    log.error("reporting %d jobs failed: %s; they rerun when leases expire", len(recs), e)
                for r in recs:
                    self.forget(r)
                return
        stats = self.stats
        for r, res in zip(recs, results, strict=False):
            if res["ok"]:
                if done:
                    stats.completed += 1
                else:
                    stats.failed += 1
                self.forget(r)
                continue
            error: dict[str, Any] = dict(res.get("error") or {})
            code = str(error.get("code", "unknown"))
            if done and code in ("validation_failed", "payload_too_large"):
                r._value = f"the server refused the result: {error.get('message', code)}"
                r._retry = False
                self.push(self.fail_buf, r)
                continue
            stats.rejected += 1
            self.forget(r)
            _log_job(
                logging.WARNING,
                r,
                "%s of job %s dropped: %s (%s)",
                "completion" if done else "failure",
                r.id,
                code,
                error.get("message", ""),
            )

    # ---- heartbeats -------------------------------------------------------------------------

    def wake_heartbeats(self) -> None:
        fut = self.hb_wake
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def heartbeat_loop(self) -> None:
        loop = self.loop
        while not self.hb_stop:
            fut = self.hb_wake = loop.create_future()
            handle = loop.call_later(self.hb_interval, _set_result, fut)
            await fut
            handle.cancel()
            if self.hb_stop:
                return
            self.heartbeat_tick()

    def heartbeat_tick(self) -> None:
        now = time.monotonic()
        due: list[JobContext] = []
        lost: list[JobContext] = []
        late: list[JobContext] = []
        shortest = 0.0
        for rec in self.inflight.values():
            if rec._lease_deadline <= now:
                lost.append(rec)
                continue
            iv = rec._interval
            if not shortest or iv < shortest:
                shortest = iv
            if rec._beat_at <= now + iv * 0.5:
                due.append(rec)
            if rec._timer is None and not rec._done and rec._reason is None and rec._timeout_at <= now:
                late.append(rec)
        for rec in lost:
            self.lose(rec, "its lease deadline passed without a successful heartbeat")
        for rec in late:
            self.on_timeout(rec)
        self.hb_interval = max(0.01, shortest) if shortest else 1.0
        if due and not self.hb_sending:
            self.hb_sending = True
            self.spawn(self.send_heartbeats(due))

    async def send_heartbeats(self, recs: list[JobContext]) -> None:
        try:
            i = 0
            while i < len(recs):
                step = self.batch_max_hb
                await self.beat(recs[i : i + step])
                i += step
        finally:
            self.hb_sending = False

    async def beat(self, recs: list[JobContext]) -> None:
        items = [{"id": r.id, "lease": r.lease} for r in recs]
        try:
            results = await self.client.heartbeat_batch(items, worker=self.name)
        except FerryError as e:
            if e.code == "payload_too_large" and len(recs) > 1:
                # Over the server's `limits.max_batch`: halves until they fit.
                half = len(recs) // 2
                self.batch_max_hb = min(self.batch_max_hb, half)
                await self.beat(recs[:half])
                await self.beat(recs[half:])
                return
            now = time.monotonic()
            if now - self.hb_warned > 5.0:
                self.hb_warned = now
                log.warning(
                    "heartbeat of %d jobs failed: %s (leases are kept until they lapse)", len(recs), e
                )
            if not _is_transient(e) and e.code in FATAL_CODES:
                self.fail_run(e)
            return
        now = time.monotonic()
        wall = time.time()
        inflight = self.inflight
        for r, res in zip(recs, results, strict=False):
            if inflight.get(r.id) is not r:
                continue
            if res["ok"]:
                expires = _parse_ts(res["lease_expires_at"])
                r._lease_wall = expires
                r._lease_deadline = now + (expires - wall)
                r._beat_at = now + r._interval
                continue
            code = str(dict(res.get("error") or {}).get("code", "unknown"))
            if code in GONE_CODES:
                self.lose(r, code)
            else:
                _log_job(logging.WARNING, r, "heartbeat of job %s refused: %s", r.id, code)

    async def beat_one(self, rec: JobContext) -> None:
        if self.inflight.get(rec.id) is rec:
            await self.beat([rec])

    def beat_soon(self, rec: JobContext) -> None:
        self.spawn(self.beat_one(rec))

    # ---- draining ---------------------------------------------------------------------------

    async def drain(self, timeout: float) -> None:
        token = _TRANSPORT.set((self.client, self.loop))
        hb = self.loop.create_task(self.heartbeat_loop())
        deadline = time.monotonic() + timeout
        try:
            await self.drain_loop(deadline)
        finally:
            if self.running:
                # After a handler error, jobs already running finish (within the timeout)
                # so what a test sees does not depend on which handler failed first.
                await self.wait_idle(deadline)
            if self.running:
                self.cancel_running("shutdown")
                await self.wait_idle(time.monotonic() + 2.0)
            await self.flush_and_wait(time.monotonic() + 10.0)
            if self.background:
                await asyncio.wait(list(self.background), timeout=5.0)
            self.hb_stop = True
            self.wake_heartbeats()
            await hb
            if self.pool is not None:
                self.pool.shutdown()
            _TRANSPORT.reset(token)

    async def drain_round(self) -> bool:
        got_any = False
        for q, t in self.tasks.items():
            if self.first_error is not None or self.fatal is not None:
                break
            if self.free <= 0:
                break
            n = self.free if self.free < self.claim_max else self.claim_max
            self.free -= n
            try:
                jobs = await self.claim(q, n, 0)
            except BaseException:
                self.give_slots(n)
                raise
            if len(jobs) < n:
                self.give_slots(n - len(jobs))
            if jobs:
                got_any = True
                self.stats.claimed += len(jobs)
                self.start_jobs(jobs, t)
        return got_any

    async def drain_loop(self, deadline: float) -> None:
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("drain: jobs were still due or running at the timeout")
            if self.first_error is not None or self.fatal is not None:
                return
            if await self.drain_round():
                await asyncio.sleep(0)
                continue
            if self.running or self.free <= 0:
                await self.wait_change(deadline)
                continue
            # Nothing running and nothing claimable: once every report has landed (a failed
            # job's retry may become due, a handler may have enqueued more), look once more.
            await self.flush_and_wait(deadline)
            if self.first_error is not None:
                return
            if not await self.drain_round() and not self.running:
                return

    async def wait_change(self, deadline: float) -> None:
        fut = self.change_future()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("drain: jobs were still due or running at the timeout")
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout=remaining)
        except asyncio.TimeoutError:
            raise TimeoutError("drain: jobs were still due or running at the timeout") from None


# ---- helpers ------------------------------------------------------------------------------


def _item(r: JobContext, done: bool) -> dict[str, Any]:
    if done:
        if r._value is None:
            return {"id": r.id, "lease": r.lease}
        return {"id": r.id, "lease": r.lease, "result": r._value}
    return {"id": r.id, "lease": r.lease, "error": r._value, "retry": r._retry}


def _split_unencodable(
    recs: list[JobContext], items: list[dict[str, Any]]
) -> tuple[list[tuple[JobContext, dict[str, Any]]], list[tuple[JobContext, str]]]:
    import json

    good: list[tuple[JobContext, dict[str, Any]]] = []
    bad: list[tuple[JobContext, str]] = []
    for r, i in zip(recs, items, strict=True):
        try:
            json.dumps(i, allow_nan=False)
        except (TypeError, ValueError) as e:
            bad.append((r, str(e)))
        else:
            good.append((r, i))
    return good, bad


def _error_text(err: BaseException) -> str:
    text = str(err)
    name = type(err).__name__
    return f"{name}: {text}" if text else name


def _log_job(
    level: int, rec: JobContext, msg: str, *args: Any, exc_info: BaseException | None = None
) -> None:
    if not log.isEnabledFor(level):
        return
    token = _CURRENT.set(rec)
    try:
        log.log(level, msg, *args, exc_info=exc_info)
    finally:
        _CURRENT.reset(token)


async def _maybe_await(value: Any) -> Any:
    if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
        return await value
    return value


async def _run_hook_async(hook: Hook, rec: JobContext, arg: Any) -> None:
    try:
        await _maybe_await(hook(rec, arg))
    except Exception:
        _log_job(logging.ERROR, rec, "hook %r failed for job %s", hook, rec.id, exc_info=sys.exc_info()[1])


# ---- the thread pool ----------------------------------------------------------------------

_set_async_exc = ctypes.pythonapi.PyThreadState_SetAsyncExc
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)
_set_async_exc.restype = ctypes.c_int


def _noop() -> None:
    return None


class _ThreadPool:
    """Runs plain handlers on `concurrency` daemon threads, each in a copy of the dispatching
    context; results return to the loop in bursts (one wake-up for all that finished since
    the last), and a handler is cancelled by raising `JobCancelled` into its thread."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.loop = run.loop
        self.q: _queue.SimpleQueue[
            tuple[JobContext, Callable[..., Any], dict[str, Any], contextvars.Context] | None
        ] = _queue.SimpleQueue()
        self.results: deque[tuple[JobContext, bool, Any]] = deque()
        self.pending = False
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        for i in range(run.concurrency):
            t = threading.Thread(target=self.work, name=f"ferry-worker-{i}", daemon=True)
            t.start()
            self.threads.append(t)

    def submit(self, rec: JobContext, fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        self.q.put((rec, fn, kwargs, contextvars.copy_context()))

    def work(self) -> None:
        q = self.q
        results = self.results
        call_soon = self.loop.call_soon_threadsafe
        deliver = self.deliver
        while True:
            try:
                item = q.get()
                if item is None:
                    return
                rec, fn, kwargs, ctx = item
                ok, value = ctx.run(self.call, rec, fn, kwargs)
                results.append((rec, ok, value))
                if not self.pending:
                    self.pending = True
                    call_soon(deliver)
            except JobCancelled:
                continue  # a cancellation that landed after its handler returned
            except RuntimeError:
                return  # the loop closed under us
            except BaseException:  # pragma: no cover - the thread must outlive any surprise
                log.exception("worker thread error")

    def call(self, rec: JobContext, fn: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[bool, Any]:
        _CURRENT.set(rec)
        run = self.run
        try:
            try:
                with self.lock:
                    if rec.cancelled:
                        raise JobCancelled(rec._reason or "cancelled")
                    rec._thread = threading.get_ident()
                if run.hooks and run.before is not None:
                    _run_hook_sync(run, run.before, rec)
                value = fn(**kwargs)
            finally:
                with self.lock:
                    rec._thread = 0
                try:
                    _noop()  # a JobCancelled raised into us just now lands here, not later
                except JobCancelled:
                    if rec._reason is not None:
                        raise
            if run.after is not None and rec._reason is None:
                try:
                    _run_hook_sync(run, run.after, rec, value)
                except Exception:
                    log.exception("after hook failed for job %s", rec.id)
            return True, value
        except BaseException as e:
            if run.on_error is not None and rec._reason is None and not isinstance(e, JobCancelled):
                try:
                    _run_hook_sync(run, run.on_error, rec, e)
                except Exception:
                    log.exception("on_error hook failed for job %s", rec.id)
            return False, e

    def deliver(self) -> None:
        self.pending = False
        results = self.results
        finished = self.run.finished
        while results:
            rec, ok, value = results.popleft()
            if not ok and isinstance(value, JobCancelled) and rec._reason is None:
                rec._reason = "cancelled"
            finished(rec, ok, value)

    def interrupt(self, rec: JobContext) -> None:
        with self.lock:
            rec.cancelled = True
            tid = rec._thread
            if tid:
                _set_async_exc(tid, JobCancelled)

    def shutdown(self) -> None:
        for _ in self.threads:
            self.q.put(None)


def _run_hook_sync(run: _Run, hook: Hook, *args: Any) -> None:
    value = hook(*args)
    if asyncio.iscoroutine(value):
        asyncio.run_coroutine_threadsafe(value, run.loop).result()
