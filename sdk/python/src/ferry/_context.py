"""What a running handler knows about its job: `ferry.current_job()` reads a ContextVar that the
worker sets in the handler's own context (an asyncio task's, or the copy a thread-pool thread
runs in), so concurrent handlers never see each other's job, unlike thread-locals shared by
a pool. The same record is the runtime's per-job state, so a job costs one object.

Log records made while a handler runs carry `job_id` (a record factory installed by the
worker), so `%(job_id)s` works in any format.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ferry._worker import _Run

__all__ = ["JobCancelled", "JobContext", "current_job", "install_log_factory"]


class JobCancelled(BaseException):
    """Raised inside a handler the worker stopped: its lease was lost, it ran past `timeout_ms`,
    or shutdown ran out of time. A BaseException, like asyncio's CancelledError, so a broad
    `except Exception` in user code does not swallow it."""


class JobContext:
    """The running job as its handler sees it (`ferry.current_job()`): who it is, which
    attempt, how long it may still run, and a way to say it is alive."""

    __slots__ = (
        "_beat_at",
        "_done",
        "_held",
        "_interval",
        "_lease_deadline",
        "_lease_wall",
        "_reason",
        "_retry",
        "_run",
        "_started",
        "_task",
        "_thread",
        "_timeout_at",
        "_timer",
        "_value",
        "attempt",
        "cancelled",
        "id",
        "lease",
        "max_attempts",
        "payload",
        "progress",
        "queue",
        "tags",
        "timeout_ms",
        "worker",
    )

    id: str
    queue: str
    attempt: int
    max_attempts: int
    tags: list[str]
    lease: str
    payload: Any
    timeout_ms: int
    worker: str
    cancelled: bool
    progress: Any

    def __init__(
        self,
        id: str,
        queue: str,
        *,
        attempt: int = 1,
        max_attempts: int = 1,
        tags: list[str] | None = None,
        lease: str = "",
        payload: Any = None,
        timeout_ms: int = 86_400_000,
        worker: str = "",
    ) -> None:
        self.id = id
        self.queue = queue
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.tags = tags if tags is not None else []
        self.lease = lease
        self.payload = payload
        self.timeout_ms = timeout_ms
        self.worker = worker
        self.cancelled = False
        self.progress = None
        now = time.monotonic()
        self._run: _Run | None = None
        self._started = now
        self._lease_wall = time.time() + timeout_ms / 1000.0
        self._lease_deadline = now + timeout_ms / 1000.0
        self._interval = 1.0
        self._beat_at = now + 1.0
        self._timeout_at = now + timeout_ms / 1000.0
        self._task: asyncio.Task[None] | None = None
        self._thread = 0
        self._timer: asyncio.TimerHandle | None = None
        self._reason: str | None = None
        self._done = False
        self._held = False
        self._value: Any = None
        self._retry = True

    @property
    def deadline(self) -> float:
        """When this run must end, as `time.time()` seconds: the lease's expiry (pushed on by
        each heartbeat) or `timeout_ms` after the start, whichever comes first."""
        timeout_wall = time.time() + (self._timeout_at - time.monotonic())
        return min(self._lease_wall, timeout_wall)

    def time_left(self) -> float:
        """Seconds until `deadline` (negative once it passed), for handlers that pace themselves."""
        return self.deadline - time.time()

    def heartbeat(self, progress: Any = None) -> None:
        """Extends the lease now (beyond the worker's own heartbeats, e.g. before a long step)
        and records `progress` on this context. From a thread handler it waits for the answer
        and raises `JobCancelled` if the lease turned out to be lost; from the event loop it is
        sent in the background (use `aheartbeat` to wait)."""
        if progress is not None:
            self.progress = progress
        run = self._run
        if run is None:
            return
        if run.loop_thread == threading.get_ident():
            run.beat_soon(self)
            return
        fut = asyncio.run_coroutine_threadsafe(run.beat_one(self), run.loop)
        fut.result()
        if self.cancelled:
            raise JobCancelled(f"job {self.id}: {self._reason or 'cancelled'}")

    async def aheartbeat(self, progress: Any = None) -> None:
        """`heartbeat` for async handlers: waits for the server's answer and raises
        `asyncio.CancelledError` through the task when the lease is lost."""
        if progress is not None:
            self.progress = progress
        run = self._run
        if run is None:
            return
        await run.beat_one(self)

    def __repr__(self) -> str:
        return f"JobContext(id={self.id!r}, queue={self.queue!r}, attempt={self.attempt})"


_CURRENT: ContextVar[JobContext | None] = ContextVar("ferry_current_job", default=None)


def current_job() -> JobContext:
    """The job the calling handler runs (in async handlers, thread handlers and the hooks);
    RuntimeError outside one."""
    job = _CURRENT.get()
    if job is None:
        raise RuntimeError("ferry.current_job() called outside a running job")
    return job


_installed = False
_install_lock = threading.Lock()


def install_log_factory() -> None:
    """Makes every log record carry `job_id` (the running job's id, or "-"), so a handler's
    log lines can be traced to its job whatever logger it uses. Idempotent; chains the
    factory already installed."""
    global _installed
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()
        get = _CURRENT.get

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if not hasattr(record, "job_id"):
                job = get()
                record.job_id = job.id if job is not None else "-"
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


class JobIdFilter(logging.Filter):
    """Adds `job_id` to records on a handler, for programs that replace the record factory."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            job = _CURRENT.get()
            record.job_id = job.id if job is not None else "-"
        return True
