"""An in-memory stand-in for the ferry server's job API, for unit tests that should not start
the binary: the same methods as `ferry.AsyncClient` for the job lifecycle (it satisfies
`WorkerTransport`), the same dict shapes, the same error classes, and the server's semantics.

Semantics follow `ferry-store` (`sqlite/jobs.rs`, `rows.rs`): a claim increments `attempt`
and hands out a fencing token `<seq>.<random>`; heartbeat, complete, fail and release must
present the live, unexpired lease (else `stale_lease`; an unknown id is `not_found`); a repeated
complete or fail with the lease that finished the job answers the same again; release
returns the job to `ready` and takes the attempt back; an expired lease is taken back (the
attempt counts: `ready`, or `dead` with none left); a failure with attempts left is retried
after the job's backoff (`scheduled`, or `ready` when the delay is 0), else, or with
`retry: false`, it is `dead`; a `unique_key` deduplicates while its job is unfinished; claims
take the highest priority, then the earliest `run_at`, then the oldest.

Differences, by design: expired leases are taken back and due jobs promoted the moment any
call looks (the server's reaper runs every second); no worker-lost release (the server's
`health.worker_timeout_ms`); no queue depth, rate or running limits (pause and resume are
kept); no events, schedules, imports, tokens or auth; a `bad_request` names the same field
but its message is not serde's. Payloads are copied through JSON on the way in and out, as
the wire would.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import os
import random
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, cast

from ferry.types import (
    BatchResult,
    ClaimedJob,
    EnqueueBatchResult,
    EnqueueResult,
    FailResult,
    HeartbeatOutcome,
    HeartbeatResult,
    Job,
    PauseResult,
    PurgeResult,
    QueueStats,
    ReplayResult,
    StateResult,
)

if TYPE_CHECKING:
    from ferry._client import AsyncJobPager, JobPager

__all__ = ["InMemoryClient", "ManualClock", "SyncInMemoryClient"]

DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_LEASE_MS = 30_000
DEFAULT_TIMEOUT_MS = 86_400_000
DEFAULT_BACKOFF: dict[str, Any] = {"base_ms": 1_000, "factor": 2.0, "max_ms": 3_600_000, "jitter": 0.25}

# The server's default `[limits]` (ferry-core/src/limits.rs) that the job API checks.
MAX_PAYLOAD_BYTES = 1 << 20
MAX_RESULT_BYTES = 1 << 20
MAX_BATCH = 10_000
MAX_QUEUE_NAME_LEN = 128
MAX_WORKER_NAME_LEN = 128
MAX_TAGS = 32
MAX_TAG_LEN = 64
MAX_UNIQUE_KEY_LEN = 256
MAX_DEPENDS_ON = 100
MAX_ERROR_LEN = 4096
MAX_ERROR_HISTORY = 1000
MAX_CLAIM = 1000
MAX_WAIT_MS = 30_000
MIN_LEASE_MS = 10
MAX_LEASE_MS = 86_400_000
MAX_TIMEOUT_MS = 7 * 86_400_000
MAX_ATTEMPTS = 1000
MAX_DELAY_MS = 366 * 86_400_000
MAX_PAGE_SIZE = 1000

_FINISHED = frozenset({"completed", "dead", "cancelled"})
_STATES = ("scheduled", "waiting", "ready", "running", "completed", "dead", "cancelled")
_SPEC_FIELDS = frozenset(
    {
        "queue",
        "payload",
        "priority",
        "run_at",
        "delay_ms",
        "max_attempts",
        "backoff",
        "lease_ms",
        "timeout_ms",
        "unique_key",
        "depends_on",
        "tags",
    }
)
_STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "request_timeout": 408,
    "stale_lease": 409,
    "invalid_state": 409,
    "conflict": 409,
    "payload_too_large": 413,
    "validation_failed": 422,
    "rate_limited": 429,
    "queue_full": 429,
    "internal": 500,
    "unavailable": 503,
}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class _Refused(Exception):
    """A request the server would refuse; becomes a `ferry.FerryError` (or a batch item's
    `error`) at the API boundary."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        """The wire's `error` object."""
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out

    def within(self, prefix: str) -> _Refused:
        """Prefixes the field path, as the server's `Error::within` does."""
        f = self.field
        self.field = prefix if f is None else (prefix + f if f.startswith("[") else f"{prefix}.{f}")
        return self


def _to_ferry_error(r: _Refused) -> Exception:
    """The exception the real client raises for the same answer."""
    from ferry import _errors

    return _errors.error_from(r.body(), status=_STATUS.get(r.code, 400))


def _not_found(job_id: object) -> _Refused:
    return _Refused("not_found", f"job {job_id} not found")


def _stale(job_id: object) -> _Refused:
    return _Refused(
        "stale_lease",
        f"lease for job {job_id} is not current (expired, or the job was re-leased or finished)",
    )


def _invalid(field: str, message: str) -> _Refused:
    return _Refused("validation_failed", message, field)


def format_ms(ms: int) -> str:
    """Epoch milliseconds as the server writes them: RFC 3339 UTC with milliseconds."""
    dt = _EPOCH + timedelta(milliseconds=ms)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}Z"


def parse_ms(text: str, field: str) -> int:
    """RFC 3339 text into epoch milliseconds (`validation_failed` naming `field` if not)."""
    t = text.strip()
    if t.endswith(("Z", "z")):
        t = t[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(t)
    except ValueError:
        raise _invalid(field, f"not an RFC 3339 timestamp: {text!r}") from None
    if dt.tzinfo is None:
        raise _invalid(field, f"not an RFC 3339 timestamp: {text!r} has no offset")
    delta = dt - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _uuid7(now_ms: int) -> str:
    """A UUIDv7 string (time-ordered, as the server's ids)."""
    rand = int.from_bytes(os.urandom(10), "big")
    value = (now_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= (rand >> 68 & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return str(uuid.UUID(int=value))


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _whole(value: Any, field: str, lo: int | None = None, hi: int | None = None) -> int:
    """An integer field as serde reads it: an int, or a float without a fraction."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Refused("bad_request", f"{field}: invalid type: expected an integer", field)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")) or value != int(value):
            raise _Refused(
                "bad_request", f"{field}: invalid type: floating point, expected an integer", field
            )
        value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise _Refused("bad_request", f"{field}: invalid value: integer {value}, expected an integer", field)
    return int(value)


def _check_queue(name: Any, field: str) -> str:
    if not isinstance(name, str):
        raise _Refused("bad_request", f"{field}: invalid type: expected a string", field)
    if not name:
        raise _invalid(field, "queue name must not be empty")
    if len(name.encode()) > MAX_QUEUE_NAME_LEN:
        raise _invalid(field, f"queue name is {len(name.encode())} bytes; the limit is {MAX_QUEUE_NAME_LEN}")
    for c in name:
        if not ((c.isascii() and c.isalnum()) or c in "._:-"):
            raise _invalid(field, f"queue name may use only A-Z a-z 0-9 . _ : - (found {c!r})")
    return name


def _is_control(c: str) -> bool:
    o = ord(c)
    return o < 0x20 or 0x7F <= o <= 0x9F


def _check_worker(name: Any, field: str) -> str:
    if not isinstance(name, str):
        raise _Refused("bad_request", f"{field}: invalid type: expected a string", field)
    if not name:
        raise _invalid(field, "worker name must not be empty")
    if len(name) > MAX_WORKER_NAME_LEN:
        raise _invalid(field, f"worker name is {len(name)} characters; the limit is {MAX_WORKER_NAME_LEN}")
    if any(_is_control(c) for c in name):
        raise _invalid(field, "worker name must not contain control characters")
    return name


def _check_lease_ms(raw: Any, field: str) -> int:
    ms = _whole(raw, field)
    if ms < MIN_LEASE_MS or ms > MAX_LEASE_MS:
        raise _invalid(field, f"lease must be {MIN_LEASE_MS}..={MAX_LEASE_MS} ms, got {ms}")
    return ms


def _check_lease(lease: Any, field: str) -> str:
    if not isinstance(lease, str):
        raise _Refused("bad_request", f"{field}: invalid type: expected a string", field)
    if not lease:
        raise _invalid(field, "lease must not be empty")
    return lease


def _truncate_error(message: str) -> str:
    raw = message.encode()
    if len(raw) <= MAX_ERROR_LEN:
        return message
    return raw[:MAX_ERROR_LEN].decode(errors="ignore") + "…[truncated]"


def _backoff_delay_ms(backoff: dict[str, Any], attempt: int, u: float) -> int:
    """`Backoff::delay_ms` of ferry-core: `min(max_ms, base_ms * factor ** (attempt - 1))`, then
    shortened by up to its `jitter` fraction (`u` is the uniform draw)."""
    exp = min(max(attempt - 1, 0), 1000)
    try:
        raw = float(backoff["base_ms"]) * float(backoff["factor"]) ** exp
    except OverflowError:
        raw = float("inf")
    max_ms = float(backoff["max_ms"])
    capped = min(raw, max_ms) if raw != float("inf") else max_ms
    capped = max(capped, 0.0)
    jitter = min(max(float(backoff["jitter"]), 0.0), 1.0)
    delay = capped * (1.0 - jitter * min(max(u, 0.0), 1.0))
    return round(delay)


@dataclass(eq=False)
class _Job:
    seq: int
    id: str
    queue: str
    state: str
    payload: str
    priority: int
    max_attempts: int
    backoff: dict[str, Any]
    lease_ms: int
    timeout_ms: int | None
    unique_key: str | None
    depends_on: list[str]
    tags: list[str]
    run_at: int
    created_at: int
    updated_at: int
    attempt: int = 0
    started_at: int | None = None
    finished_at: int | None = None
    lease_expires_at: int | None = None
    worker: str | None = None
    lease: str | None = None
    result: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    cancel_reason: str | None = None
    pending_deps: set[str] = field(default_factory=set)
    dependants: list[str] = field(default_factory=list)
    token: int = 0

    def view(self) -> Job:
        """The `Job` object of `GET /v1/jobs/{id}`."""
        out: dict[str, Any] = {
            "id": self.id,
            "queue": self.queue,
            "state": self.state,
            "payload": json.loads(self.payload),
            "priority": self.priority,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "backoff": dict(self.backoff),
            "lease_ms": self.lease_ms,
        }
        out["timeout_ms"] = self.timeout_ms if self.timeout_ms is not None else DEFAULT_TIMEOUT_MS
        if self.unique_key is not None:
            out["unique_key"] = self.unique_key
        out["depends_on"] = list(self.depends_on)
        out["tags"] = list(self.tags)
        out["run_at"] = format_ms(self.run_at)
        out["created_at"] = format_ms(self.created_at)
        out["updated_at"] = format_ms(self.updated_at)
        for key, ms in (
            ("started_at", self.started_at),
            ("finished_at", self.finished_at),
            ("lease_expires_at", self.lease_expires_at),
        ):
            if ms is not None:
                out[key] = format_ms(ms)
        if self.worker is not None:
            out["worker"] = self.worker
        if self.result is not None:
            out["result"] = json.loads(self.result)
        out["errors"] = [dict(e) for e in self.errors]
        if self.cancel_reason is not None:
            out["cancel_reason"] = self.cancel_reason
        return cast(Job, out)


@dataclass
class _Spec:
    queue: str
    payload: str
    priority: int
    run_at: int | None
    delay_ms: int
    max_attempts: int
    backoff: dict[str, Any]
    lease_ms: int
    timeout_ms: int | None
    unique_key: str | None
    depends_on: list[str]
    tags: list[str]


def _check_backoff(raw: Any) -> dict[str, Any]:
    if raw is None:
        return dict(DEFAULT_BACKOFF)
    if not isinstance(raw, dict):
        raise _Refused("bad_request", "backoff: invalid type: expected an object", "backoff")
    unknown = set(raw) - {"base_ms", "factor", "max_ms", "jitter"}
    if unknown:
        name = sorted(unknown)[0]
        raise _Refused("bad_request", f"backoff: unknown field `{name}`", "backoff")
    b = dict(DEFAULT_BACKOFF)
    if "base_ms" in raw:
        b["base_ms"] = _whole(raw["base_ms"], "backoff.base_ms")
    if "max_ms" in raw:
        b["max_ms"] = _whole(raw["max_ms"], "backoff.max_ms")
    if "factor" in raw:
        f = raw["factor"]
        if isinstance(f, bool) or not isinstance(f, (int, float)):
            raise _Refused("bad_request", "backoff.factor: invalid type: expected a number", "backoff")
        b["factor"] = float(f)
    if "jitter" in raw:
        j = raw["jitter"]
        names = {"full": 1.0, "equal": 0.5, "none": 0.0}
        if isinstance(j, str):
            if j not in names:
                raise _Refused(
                    "bad_request",
                    f"jitter must be a number in 0..=1 or one of full, equal, none; got {j!r}",
                    "backoff",
                )
            b["jitter"] = names[j]
        elif isinstance(j, bool) or not isinstance(j, (int, float)):
            raise _Refused("bad_request", "backoff.jitter: invalid type: expected a number", "backoff")
        else:
            b["jitter"] = float(j)
    if b["base_ms"] < 0:
        raise _invalid("backoff.base_ms", "base_ms must be ≥ 0")
    if b["max_ms"] < 0 or b["max_ms"] > MAX_DELAY_MS:
        raise _invalid("backoff.max_ms", f"max_ms must be 0..={MAX_DELAY_MS}")
    factor = b["factor"]
    if not (factor == factor and 1.0 <= factor <= 100.0):
        raise _invalid("backoff.factor", "factor must be in 1..=100")
    jitter = b["jitter"]
    if not (jitter == jitter and 0.0 <= jitter <= 1.0):
        raise _invalid("backoff.jitter", "jitter must be in 0..=1")
    return b


def _check_spec(spec: dict[str, Any]) -> _Spec:
    """`JobSpec::validate`: every field checked in the server's order."""
    unknown = [k for k in spec if k not in _SPEC_FIELDS]
    if unknown:
        raise _Refused("bad_request", f"unknown field `{unknown[0]}`", unknown[0])
    if "queue" not in spec:
        raise _Refused("bad_request", "missing field `queue`", "queue")
    queue = _check_queue(spec["queue"], "queue")
    payload = _dumps(spec.get("payload"))
    if len(payload.encode()) > MAX_PAYLOAD_BYTES:
        n = len(payload.encode())
        raise _Refused(
            "payload_too_large", f"payload is {n} bytes; the limit is {MAX_PAYLOAD_BYTES}", "payload"
        )
    priority = 0
    if spec.get("priority") is not None:
        priority = _whole(spec["priority"], "priority")
        if not -(2**31) <= priority < 2**31:
            raise _invalid("priority", f"priority must fit in an i32, got {priority}")
    run_at_text = spec.get("run_at")
    delay = spec.get("delay_ms")
    run_at: int | None = None
    delay_ms = 0
    if run_at_text is not None and delay is not None:
        raise _invalid("delay_ms", "give run_at or delay_ms, not both")
    if run_at_text is not None:
        if not isinstance(run_at_text, str):
            raise _Refused("bad_request", "run_at: invalid type: expected a string", "run_at")
        run_at = parse_ms(run_at_text, "run_at")
    elif delay is not None:
        delay_ms = _whole(delay, "delay_ms")
        if delay_ms < 0:
            raise _invalid("delay_ms", f"delay_ms must be ≥ 0, got {delay_ms}")
        if delay_ms > MAX_DELAY_MS:
            raise _invalid("delay_ms", f"delay_ms is {delay_ms}; the limit is {MAX_DELAY_MS}")
    max_attempts = DEFAULT_MAX_ATTEMPTS
    if spec.get("max_attempts") is not None:
        max_attempts = _whole(spec["max_attempts"], "max_attempts")
        if not 1 <= max_attempts <= MAX_ATTEMPTS:
            raise _invalid("max_attempts", f"max_attempts must be 1..={MAX_ATTEMPTS}, got {max_attempts}")
    backoff = _check_backoff(spec.get("backoff"))
    lease_ms = DEFAULT_LEASE_MS
    if spec.get("lease_ms") is not None:
        lease_ms = _check_lease_ms(spec["lease_ms"], "lease_ms")
    timeout_ms: int | None = None
    if spec.get("timeout_ms") is not None:
        timeout_ms = _whole(spec["timeout_ms"], "timeout_ms")
        if not 1 <= timeout_ms <= MAX_TIMEOUT_MS:
            raise _invalid("timeout_ms", f"timeout_ms must be 1..={MAX_TIMEOUT_MS}, got {timeout_ms}")
    unique_key = spec.get("unique_key")
    if unique_key is not None:
        if not isinstance(unique_key, str):
            raise _Refused("bad_request", "unique_key: invalid type: expected a string", "unique_key")
        if not unique_key:
            raise _invalid("unique_key", "unique_key must not be empty")
        if len(unique_key) > MAX_UNIQUE_KEY_LEN:
            raise _invalid(
                "unique_key",
                f"unique_key is {len(unique_key)} characters; the limit is {MAX_UNIQUE_KEY_LEN}",
            )
    deps_raw = spec.get("depends_on") or []
    if not isinstance(deps_raw, list):
        raise _Refused("bad_request", "depends_on: invalid type: expected a sequence", "depends_on")
    if len(deps_raw) > MAX_DEPENDS_ON:
        raise _invalid("depends_on", f"{len(deps_raw)} dependencies; the limit is {MAX_DEPENDS_ON}")
    depends_on: list[str] = []
    for i, text in enumerate(deps_raw):
        try:
            dep = str(uuid.UUID(str(text)))
        except ValueError:
            raise _invalid(f"depends_on[{i}]", f"{text!r} is not a job id (a UUID)") from None
        if dep not in depends_on:
            depends_on.append(dep)
    tags = spec.get("tags") or []
    if not isinstance(tags, list):
        raise _Refused("bad_request", "tags: invalid type: expected a sequence", "tags")
    if len(tags) > MAX_TAGS:
        raise _invalid("tags", f"{len(tags)} tags; the limit is {MAX_TAGS}")
    for i, tag in enumerate(tags):
        if not isinstance(tag, str) or not tag or len(tag) > MAX_TAG_LEN or any(_is_control(c) for c in tag):
            raise _invalid(
                f"tags[{i}]", f"a tag is 1..={MAX_TAG_LEN} characters, none of them a control character"
            )
    return _Spec(
        queue=queue,
        payload=payload,
        priority=priority,
        run_at=run_at,
        delay_ms=delay_ms,
        max_attempts=max_attempts,
        backoff=backoff,
        lease_ms=lease_ms,
        timeout_ms=timeout_ms,
        unique_key=unique_key,
        depends_on=depends_on,
        tags=list(tags),
    )


class ManualClock:
    """A clock tests move by hand, so lease expiry and backoff need no sleeping."""

    def __init__(self, start_ms: int | None = None) -> None:
        self._now = int(time.time() * 1000) if start_ms is None else start_ms
        self._listeners: list[Callable[[], None]] = []

    def __call__(self) -> int:
        return self._now

    def advance(self, ms: float) -> None:
        """Moves time forward by `ms` (milliseconds); waiting claims look again."""
        self._now += int(ms)
        for listener in list(self._listeners):
            listener()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Calls `listener` after every `advance`."""
        self._listeners.append(listener)


def _wall_clock() -> int:
    return int(time.time() * 1000)


class _Engine:
    """The store: every job, its indexes, and the state machine. Thread-safe (one lock)."""

    def __init__(self, clock: Callable[[], int], rng: random.Random, retry_backoff: bool) -> None:
        self.clock = clock
        self.rng = rng
        self.retry_backoff = retry_backoff
        self.lock = threading.RLock()
        self.jobs: dict[str, _Job] = {}
        self.order: list[_Job | None] = []  # by seq - 1; None once purged
        self.unique: dict[tuple[str, str], str] = {}
        self.ready: dict[str, list[tuple[int, int, int, str, int]]] = {}
        self.scheduled: list[tuple[int, int, str, int]] = []
        self.leases: list[tuple[int, int, str, str]] = []
        self.counts: dict[str, dict[str, int]] = {}
        self.paused: set[str] = set()
        self.waiters: dict[str, list[Callable[[], None]]] = {}
        self.claims = 0

    # -- indexes ------------------------------------------------------------------------------

    def _move(self, job: _Job, state: str, now: int) -> None:
        """Sets `job.state` (keeping counts, the unique index and the queues' heaps right)."""
        old = job.state
        c = self.counts.setdefault(job.queue, dict.fromkeys(_STATES, 0))
        if old:
            c[old] -= 1
        c[state] += 1
        job.state = state
        job.updated_at = now
        job.token += 1
        if state in _FINISHED:
            job.finished_at = now
            if job.unique_key is not None and self.unique.get((job.queue, job.unique_key)) == job.id:
                del self.unique[(job.queue, job.unique_key)]
        else:
            job.finished_at = None
        if state == "ready":
            heap = self.ready.setdefault(job.queue, [])
            heapq.heappush(heap, (-job.priority, job.run_at, job.seq, job.id, job.token))
            self._wake(job.queue)
        elif state == "scheduled":
            heapq.heappush(self.scheduled, (job.run_at, job.seq, job.id, job.token))

    def _wake(self, queue: str) -> None:
        for w in self.waiters.pop(queue, []):
            w()

    def remove_waiter(self, queue: str, waiter: Callable[[], None]) -> None:
        """Forgets a waiter that stopped waiting (woken, timed out or cancelled)."""
        with self.lock:
            ws = self.waiters.get(queue)
            if ws is not None and waiter in ws:
                ws.remove(waiter)
                if not ws:
                    del self.waiters[queue]

    def wake_all(self) -> None:
        with self.lock:
            queues = list(self.waiters)
            for q in queues:
                self._wake(q)

    def tick(self, now: int) -> None:
        """Promotes due scheduled jobs and takes back expired leases (the server's scheduler
        and reaper, run whenever anything looks)."""
        sched = self.scheduled
        while sched and sched[0][0] <= now:
            _, _, jid, token = heapq.heappop(sched)
            job = self.jobs.get(jid)
            if job is not None and job.state == "scheduled" and job.token == token:
                self._move(job, "ready", now)
        leases = self.leases
        while leases and leases[0][0] <= now:
            _, _, jid, lease = heapq.heappop(leases)
            job = self.jobs.get(jid)
            if (
                job is not None
                and job.state == "running"
                and job.lease == lease
                and job.lease_expires_at is not None
                and job.lease_expires_at <= now
            ):
                self._take_back(job, now)

    def _take_back(self, job: _Job, now: int) -> None:
        expired = job.lease_expires_at if job.lease_expires_at is not None else now
        self._push_error(job, now, "lease_expired", f"lease expired at {format_ms(expired)}")
        job.lease = None
        job.lease_expires_at = None
        state = "dead" if job.attempt >= job.max_attempts else "ready"
        self._move(job, state, now)
        if state == "dead":
            self._cancel_dependants(job, now)

    def _push_error(self, job: _Job, now: int, kind: str, message: str) -> None:
        rec: dict[str, Any] = {"attempt": job.attempt, "at": format_ms(now)}
        if job.worker is not None:
            rec["worker"] = job.worker
        rec["kind"] = kind
        rec["message"] = message
        job.errors.append(rec)
        if len(job.errors) > MAX_ERROR_HISTORY:
            del job.errors[: len(job.errors) - MAX_ERROR_HISTORY]

    def next_wakeup_ms(self) -> int | None:
        """When a scheduled job falls due or a lease lapses next (either may make a job ready)."""
        times = []
        if self.scheduled:
            times.append(self.scheduled[0][0])
        if self.leases:
            times.append(self.leases[0][0])
        return min(times) if times else None

    # -- commands -----------------------------------------------------------------------------

    def enqueue(self, specs: list[dict[str, Any]], batch: bool) -> list[tuple[str, bool]]:
        if batch:
            if not specs:
                raise _invalid("jobs", "a batch needs at least one job")
            if len(specs) > MAX_BATCH:
                raise _Refused(
                    "payload_too_large", f"{len(specs)} jobs; the batch limit is {MAX_BATCH}", "jobs"
                )
        checked: list[_Spec] = []
        for i, raw in enumerate(specs):
            try:
                if not isinstance(raw, dict):
                    raise _Refused("bad_request", "invalid type: expected a job object")
                checked.append(_check_spec(raw))
            except _Refused as e:
                raise (e.within(f"jobs[{i}]") if batch else e) from None
        with self.lock:
            now = self.clock()
            self.tick(now)
            # Dependencies are resolved before anything is written: a refused batch writes nothing.
            resolved: list[tuple[list[str], str | None]] = []
            for i, s in enumerate(checked):
                pending: list[str] = []
                reason: str | None = None
                for j, dep in enumerate(s.depends_on):
                    d = self.jobs.get(dep)
                    if d is None:
                        missing = _invalid(f"depends_on[{j}]", f"no job {dep} to depend on")
                        raise (missing.within(f"jobs[{i}]") if batch else missing)
                    if d.state in ("dead", "cancelled"):
                        reason = reason or f"dependency {dep} is {d.state}"
                    elif d.state != "completed":
                        pending.append(dep)
                resolved.append((pending, reason))
            out: list[tuple[str, bool]] = []
            for s, (pending, reason) in zip(checked, resolved, strict=True):
                if s.unique_key is not None:
                    existing = self.unique.get((s.queue, s.unique_key))
                    if existing is not None:
                        out.append((existing, True))
                        continue
                run_at = s.run_at if s.run_at is not None else now + s.delay_ms
                if reason is not None:
                    state = "cancelled"
                elif pending:
                    state = "waiting"
                elif run_at > now:
                    state = "scheduled"
                else:
                    state = "ready"
                seq = len(self.order) + 1
                job = _Job(
                    seq=seq,
                    id=_uuid7(now),
                    queue=s.queue,
                    state="",
                    payload=s.payload,
                    priority=s.priority,
                    max_attempts=s.max_attempts,
                    backoff=s.backoff,
                    lease_ms=s.lease_ms,
                    timeout_ms=s.timeout_ms,
                    unique_key=s.unique_key,
                    depends_on=s.depends_on,
                    tags=s.tags,
                    run_at=run_at,
                    created_at=now,
                    updated_at=now,
                    cancel_reason=reason,
                )
                self.order.append(job)
                self.jobs[job.id] = job
                if s.unique_key is not None and state not in _FINISHED:
                    self.unique[(s.queue, s.unique_key)] = job.id
                if state == "waiting":
                    job.pending_deps = set(pending)
                    for dep in pending:
                        self.jobs[dep].dependants.append(job.id)
                self._move(job, state, now)
                out.append((job.id, False))
            return out

    def claim(self, queue: str, worker: str, max_jobs: int, lease_ms: int | None) -> list[ClaimedJob]:
        with self.lock:
            now = self.clock()
            self.tick(now)
            if queue in self.paused:
                return []
            heap = self.ready.get(queue)
            out: list[ClaimedJob] = []
            while heap and len(out) < max_jobs:
                _, _, _, jid, token = heapq.heappop(heap)
                job = self.jobs.get(jid)
                if job is None or job.state != "ready" or job.token != token:
                    continue
                job.attempt += 1
                job.lease = f"{job.seq}.{secrets.token_hex(12)}"
                job.lease_expires_at = now + (lease_ms if lease_ms is not None else job.lease_ms)
                job.worker = worker
                job.started_at = now
                self._move(job, "running", now)
                heapq.heappush(self.leases, (job.lease_expires_at, job.seq, job.id, job.lease))
                claimed: ClaimedJob = {
                    "id": job.id,
                    "queue": job.queue,
                    "payload": json.loads(job.payload),
                    "attempt": job.attempt,
                    "max_attempts": job.max_attempts,
                    "priority": job.priority,
                    "tags": list(job.tags),
                    "lease": job.lease,
                    "lease_expires_at": format_ms(job.lease_expires_at),
                    "timeout_ms": job.timeout_ms if job.timeout_ms is not None else DEFAULT_TIMEOUT_MS,
                }
                out.append(claimed)
            self.claims += len(out)
            return out

    def _live(self, job_id: str, lease: str, now: int) -> _Job:
        """The running job `job_id` if `lease` is its live lease; else stale or not found."""
        job = self.jobs.get(job_id)
        if job is None:
            raise _not_found(job_id)
        if (
            job.state != "running"
            or job.lease != lease
            or job.lease_expires_at is None
            or job.lease_expires_at <= now
        ):
            raise _stale(job_id)
        return job

    def heartbeat(self, job_id: str, lease: str, extend_ms: int | None) -> int:
        with self.lock:
            now = self.clock()
            self.tick(now)
            job = self._live(job_id, lease, now)
            job.lease_expires_at = now + (extend_ms if extend_ms is not None else job.lease_ms)
            job.updated_at = now
            heapq.heappush(self.leases, (job.lease_expires_at, job.seq, job.id, lease))
            return job.lease_expires_at

    def complete(self, job_id: str, lease: str, result: str | None) -> None:
        with self.lock:
            now = self.clock()
            self.tick(now)
            job = self.jobs.get(job_id)
            if job is None:
                raise _not_found(job_id)
            if job.state == "completed" and job.lease == lease:
                return  # a repeat of the completion that finished it
            job = self._live(job_id, lease, now)
            job.result = result
            job.lease_expires_at = None
            self._move(job, "completed", now)
            for dep_id in job.dependants:
                d = self.jobs.get(dep_id)
                if d is None or d.state != "waiting":
                    continue
                d.pending_deps.discard(job.id)
                if not d.pending_deps:
                    self._move(d, "scheduled" if d.run_at > now else "ready", now)
                else:
                    d.updated_at = now
            job.dependants = []

    def fail(self, job_id: str, lease: str, error: str, retry: bool) -> dict[str, Any]:
        with self.lock:
            now = self.clock()
            self.tick(now)
            job = self.jobs.get(job_id)
            if job is None:
                raise _not_found(job_id)
            ours = job.lease == lease
            if (
                job.state != "running"
                or not ours
                or job.lease_expires_at is None
                or job.lease_expires_at <= now
            ):
                if ours and job.state in ("scheduled", "ready", "dead"):
                    return self._fail_outcome(job)  # a repeat of the report that moved it on
                raise _stale(job_id)
            self._push_error(job, now, "failed", _truncate_error(error))
            job.lease_expires_at = None
            if not retry or job.attempt >= job.max_attempts:
                self._move(job, "dead", now)
                self._cancel_dependants(job, now)
            else:
                delay = _backoff_delay_ms(job.backoff, job.attempt, self.rng.random())
                if not self.retry_backoff:
                    delay = 0
                job.run_at = now + delay
                self._move(job, "scheduled" if delay > 0 else "ready", now)
            return self._fail_outcome(job)

    @staticmethod
    def _fail_outcome(job: _Job) -> dict[str, Any]:
        out: dict[str, Any] = {"id": job.id, "ok": True, "state": job.state, "attempt": job.attempt}
        if job.state == "scheduled":
            out["run_at"] = format_ms(job.run_at)
        return out

    def release(self, job_id: str, lease: str) -> None:
        with self.lock:
            now = self.clock()
            self.tick(now)
            job = self._live(job_id, lease, now)
            job.attempt -= 1
            job.lease = None
            job.lease_expires_at = None
            job.started_at = None
            self._move(job, "ready", now)

    def cancel(self, job_id: str, reason: str) -> None:
        with self.lock:
            now = self.clock()
            self.tick(now)
            job = self.jobs.get(job_id)
            if job is None:
                raise _not_found(job_id)
            if job.state == "cancelled":
                return
            if job.state == "running":
                raise _Refused(
                    "invalid_state",
                    f"job {job_id} is running; only a job that is not running can be cancelled",
                )
            if job.state in ("completed", "dead"):
                raise _Refused("invalid_state", f"job {job_id} is already {job.state}")
            job.cancel_reason = _truncate_error(reason)
            job.pending_deps = set()
            job.lease = None
            self._move(job, "cancelled", now)
            self._cancel_dependants(job, now)

    def _cancel_dependants(self, root: _Job, now: int) -> None:
        stack = [root]
        while stack:
            job = stack.pop()
            reason = f"dependency {job.id} is {job.state}"
            for dep_id in job.dependants:
                d = self.jobs.get(dep_id)
                if d is None or d.state != "waiting":
                    continue
                d.cancel_reason = reason
                d.pending_deps = set()
                self._move(d, "cancelled", now)
                stack.append(d)
            job.dependants = []

    def replay(self, ids: list[str] | None, queue: str | None, max_jobs: int) -> list[str]:
        with self.lock:
            now = self.clock()
            self.tick(now)
            if ids is not None:
                chosen = [self.jobs[i] for i in ids[:max_jobs] if i in self.jobs]
            else:
                chosen = [j for j in self.order if j is not None and j.queue == queue and j.state == "dead"]
            out = []
            for job in chosen:
                if job.state != "dead":
                    continue
                if job.unique_key is not None:
                    if (job.queue, job.unique_key) in self.unique:
                        continue  # an unfinished job holds its key: it stays dead
                    self.unique[(job.queue, job.unique_key)] = job.id
                job.attempt = 0
                job.lease = None
                job.run_at = now
                self._move(job, "ready", now)
                out.append(job.id)
            return out

    def purge(self, ids: list[str] | None, queue: str | None, max_jobs: int) -> int:
        with self.lock:
            if ids is not None:
                chosen = [self.jobs[i] for i in ids[:max_jobs] if i in self.jobs]
            else:
                chosen = [j for j in self.order if j is not None and j.queue == queue and j.state == "dead"]
            n = 0
            for job in chosen:
                if job.state != "dead" or n >= max_jobs:
                    continue
                self.counts[job.queue]["dead"] -= 1
                del self.jobs[job.id]
                self.order[job.seq - 1] = None
                n += 1
            return n

    # -- reads --------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        with self.lock:
            self.tick(self.clock())
            job = self.jobs.get(job_id)
            if job is None:
                raise _not_found(job_id)
            return job.view()

    def page(
        self, queue: str | None, state: str | None, limit: int, cursor: str | None
    ) -> tuple[list[Job], str | None]:
        if queue:
            _check_queue(queue, "queue")
        if state and state not in _STATES:
            raise _invalid(
                "state",
                f"unknown state {state!r}; one of " + ", ".join(_STATES),
            )
        if not 1 <= limit <= MAX_PAGE_SIZE:
            raise _invalid("limit", f"limit must be 1..={MAX_PAGE_SIZE}")
        start = 0
        if cursor:
            try:
                start = int(cursor)
            except ValueError:
                raise _Refused("bad_request", f"cursor {cursor!r} is not a cursor", "cursor") from None
        with self.lock:
            self.tick(self.clock())
            items: list[Job] = []
            last = 0
            for job in self.order[max(start, 0) :]:
                if job is None or (queue and job.queue != queue) or (state and job.state != state):
                    continue
                if len(items) == limit:
                    return items, str(last)
                items.append(job.view())
                last = job.seq
            return items, None

    def queue_stats(self) -> list[dict[str, Any]]:
        with self.lock:
            now = self.clock()
            self.tick(now)
            out = []
            for q in sorted(set(self.counts) | self.paused):
                c = self.counts.get(q, dict.fromkeys(_STATES, 0))
                if all(n == 0 for n in c.values()) and q not in self.paused:
                    continue
                stats: dict[str, Any] = {"queue": q, "counts": dict(c)}
                oldest = [j.run_at for j in self._ready_jobs(q)]
                if oldest:
                    stats["oldest_ready_age_ms"] = max(now - min(oldest), 0)
                stats["paused"] = q in self.paused
                out.append(stats)
            return out

    def _ready_jobs(self, queue: str) -> Iterator[_Job]:
        for _, _, _, jid, token in self.ready.get(queue, []):
            job = self.jobs.get(jid)
            if job is not None and job.state == "ready" and job.token == token:
                yield job

    def set_paused(self, queue: str, paused: bool) -> None:
        _check_queue(queue, "queue")
        with self.lock:
            if paused:
                self.paused.add(queue)
            else:
                self.paused.discard(queue)
                self._wake(queue)


def _check_claim(
    queue: str, worker: Any, max_jobs: Any, lease_ms: Any, wait_ms: Any
) -> tuple[int, int | None, int]:
    """`ClaimBody::validate`: the queue, then `worker`, `max`, `lease_ms` and `wait_ms`."""
    _check_queue(queue, "queue")
    if worker is None:
        raise _invalid("worker", "worker is required")
    _check_worker(worker, "worker")
    m = _whole(max_jobs, "max")
    if m < 1 or m > MAX_CLAIM:
        raise _invalid("max", f"max must be 1..={MAX_CLAIM}, got {m}")
    lease = None if lease_ms is None else _check_lease_ms(lease_ms, "lease_ms")
    w = _whole(wait_ms, "wait_ms")
    if w < 0 or w > MAX_WAIT_MS:
        raise _invalid("wait_ms", f"wait_ms must be 0..={MAX_WAIT_MS}, got {w}")
    return m, lease, w


def _job_id(text: Any) -> str:
    """A batch item's or a path's id: anything that is not a UUID names no job (404)."""
    try:
        return str(uuid.UUID(str(text)))
    except ValueError:
        raise _not_found(text) from None


def _result_text(result: Any, field: str) -> str | None:
    if result is None:
        return None
    text = _dumps(result)
    if len(text.encode()) > MAX_RESULT_BYTES:
        n = len(text.encode())
        raise _Refused("payload_too_large", f"{field} is {n} bytes; the limit is {MAX_RESULT_BYTES}", field)
    return text


def _items_limit(items: list[dict[str, Any]]) -> None:
    if len(items) > MAX_BATCH:
        raise _Refused("payload_too_large", f"{len(items)} items; the batch limit is {MAX_BATCH}", "items")


def _item_error(item: Any, e: _Refused) -> dict[str, Any]:
    raw_id = item.get("id") if isinstance(item, dict) else None
    return {"id": "" if raw_id is None else str(raw_id), "ok": False, "error": e.body()}


def _default_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _Pages:
    """Answers the list endpoints (`GET /v1/jobs`, `GET /v1/dlq`) for the real client's pagers,
    so iterating, `.page()` and `limit` behave exactly as on the server."""

    def __init__(self, core: _Core) -> None:
        self._core = core

    def answer(self, path: str, params: Mapping[str, Any] | None) -> dict[str, Any]:
        p = dict(params or {})
        state = "dead" if path == "/v1/dlq" else p.get("state")
        limit = _whole(p.get("limit", 100), "limit")
        return self._core._page(p.get("queue"), state, limit, p.get("cursor"))


class _AsyncPages(_Pages):
    async def call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, **_: Any) -> Any:
        return self.answer(path, params)


class _SyncPages(_Pages):
    def call(self, method: str, path: str, *, params: Mapping[str, Any] | None = None, **_: Any) -> Any:
        return self.answer(path, params)


class _Core:
    """What the async and the sync faces share: every call but the long-poll wait."""

    def __init__(
        self,
        *,
        clock: Callable[[], int] | None = None,
        seed: int | None = None,
        retry_backoff: bool = True,
        name: str | None = None,
        _engine: _Engine | None = None,
    ) -> None:
        if _engine is None:
            _engine = _Engine(clock or _wall_clock, random.Random(seed), retry_backoff)
            if isinstance(clock, ManualClock):
                clock.subscribe(_engine.wake_all)
        self._engine = _engine
        self._name = name
        self._worker = name or _default_worker()

    @property
    def name(self) -> str | None:
        """The client's name (the default worker name of claims), as `AsyncClient.name`."""
        return self._name

    @property
    def claims(self) -> int:
        """Jobs handed out by claims so far (for tests that count claims)."""
        return self._engine.claims

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except _Refused as e:
            raise _to_ferry_error(e) from None

    # -- producer side --------------------------------------------------------------------------

    def _enqueue(self, queue: str, payload: Any, fields: dict[str, Any]) -> EnqueueResult:
        spec = {"queue": queue, "payload": payload, **fields}
        [(jid, dup)] = self._call(self._engine.enqueue, [spec], False)
        out: EnqueueResult = {"id": jid}
        if dup:
            out["duplicate"] = True
        return out

    def _enqueue_batch(self, jobs: Sequence[Mapping[str, Any]]) -> EnqueueBatchResult:
        outcomes = self._call(self._engine.enqueue, [dict(j) for j in jobs], True)
        out: EnqueueBatchResult = {"ids": [jid for jid, _ in outcomes]}
        dups = [i for i, (_, dup) in enumerate(outcomes) if dup]
        if dups:
            out["duplicates"] = dups
        return out

    def _cancel(self, job_id: str, reason: str | None) -> StateResult:
        jid = self._call(_job_id, job_id)
        self._call(self._engine.cancel, jid, "cancelled by request" if reason is None else reason)
        return {"id": jid, "state": "cancelled"}

    # -- worker side ----------------------------------------------------------------------------

    def _claim_args(
        self, queue: str, worker: str | None, max_jobs: Any, lease_ms: Any, wait_ms: Any
    ) -> tuple[str, int, int | None, int]:
        name = worker or self._worker
        m, lease, wait = self._call(_check_claim, queue, name, max_jobs, lease_ms, wait_ms)
        return name, m, lease, wait

    def _heartbeat_batch(self, items: list[dict[str, Any]], worker: str | None) -> list[HeartbeatResult]:
        self._call(_items_limit, items)
        if worker is not None:
            self._call(_check_worker, worker, "worker")
        out: list[HeartbeatResult] = []
        for i, item in enumerate(items):
            try:
                jid = _job_id(item.get("id"))
                lease = _check_lease(item.get("lease"), f"items[{i}].lease")
                extend = item.get("extend_ms")
                extend = None if extend is None else _check_lease_ms(extend, f"items[{i}].extend_ms")
                expires = self._engine.heartbeat(jid, lease, extend)
                out.append({"id": str(item.get("id")), "ok": True, "lease_expires_at": format_ms(expires)})
            except _Refused as e:
                out.append(_item_error(item, e))  # type: ignore[arg-type]
        return out

    def _complete_batch(self, items: list[dict[str, Any]]) -> list[BatchResult]:
        self._call(_items_limit, items)
        out: list[BatchResult] = []
        for i, item in enumerate(items):
            try:
                jid = _job_id(item.get("id"))
                lease = _check_lease(item.get("lease"), f"items[{i}].lease")
                result = _result_text(item.get("result"), f"items[{i}].result")
                self._engine.complete(jid, lease, result)
                out.append({"id": str(item.get("id")), "ok": True, "state": "completed"})
            except _Refused as e:
                out.append(_item_error(item, e))  # type: ignore[arg-type]
        return out

    def _fail_batch(self, items: list[dict[str, Any]]) -> list[BatchResult]:
        self._call(_items_limit, items)
        out: list[BatchResult] = []
        for i, item in enumerate(items):
            try:
                jid = _job_id(item.get("id"))
                lease = _check_lease(item.get("lease"), f"items[{i}].lease")
                error = item.get("error") or ""
                retry = item.get("retry")
                res = self._engine.fail(jid, lease, str(error), True if retry is None else bool(retry))
                res["id"] = str(item.get("id"))
                out.append(res)  # type: ignore[arg-type]
            except _Refused as e:
                out.append(_item_error(item, e))  # type: ignore[arg-type]
        return out

    def _release(self, job_id: str, lease: str) -> dict[str, Any]:
        jid = self._call(_job_id, job_id)
        self._call(_check_lease, lease, "lease")
        self._call(self._engine.release, jid, lease)
        return {"id": jid, "state": "ready"}

    def _single(self, kind: str, job_id: str, item: dict[str, Any]) -> dict[str, Any]:
        """The single-job forms (`POST /v1/jobs/{id}/complete` ...): the batch's outcome, raised."""
        jid = self._call(_job_id, job_id)
        self._call(_check_lease, item.get("lease"), "lease")
        item = {"id": jid, **item}
        results: list[Any]
        if kind == "complete":
            results = self._complete_batch([item])
        elif kind == "fail":
            results = self._fail_batch([item])
        else:
            results = self._heartbeat_batch([item], None)
        res: dict[str, Any] = dict(results[0])
        if not res["ok"]:
            err = res["error"]
            field = err.get("field")
            if isinstance(field, str) and field.startswith("items[0]."):
                field = field[len("items[0].") :]
            raise _to_ferry_error(_Refused(err["code"], err["message"], field))
        res.pop("ok", None)
        return res

    def _heartbeat_item(self, lease: str, extend_ms: int | None) -> dict[str, Any]:
        item: dict[str, Any] = {"lease": lease}
        if extend_ms is not None:
            item["extend_ms"] = extend_ms
        return item

    # -- reads ----------------------------------------------------------------------------------

    def _get_job(self, job_id: str) -> Job:
        return self._call(lambda: self._engine.get(_job_id(job_id)))  # type: ignore[no-any-return]

    def _page(self, queue: str | None, state: str | None, limit: int, cursor: str | None) -> dict[str, Any]:
        items, nxt = self._call(self._engine.page, queue, state, limit, cursor)
        out: dict[str, Any] = {"jobs": items}
        if nxt is not None:
            out["next_cursor"] = nxt
        return out

    def _dlq_select(
        self, ids: Sequence[str] | None, queue: str | None
    ) -> tuple[list[str] | None, str | None]:
        if (ids is None) == (queue is None):
            raise ValueError("give exactly one of ids or queue")
        if ids is not None:
            if len(ids) > MAX_BATCH:
                raise _to_ferry_error(
                    _Refused("payload_too_large", f"{len(ids)} ids; the limit is {MAX_BATCH}", "ids")
                )
            good = []
            for i in ids:
                try:
                    good.append(str(uuid.UUID(str(i))))
                except ValueError:
                    continue
            return good, None
        self._call(_check_queue, queue, "queue")
        return None, queue

    def _replay(self, ids: Sequence[str] | None, queue: str | None) -> ReplayResult:
        sel_ids, sel_queue = self._dlq_select(ids, queue)
        return {"replayed": len(self._engine.replay(sel_ids, sel_queue, MAX_BATCH))}

    def _purge(self, ids: Sequence[str] | None, queue: str | None) -> PurgeResult:
        sel_ids, sel_queue = self._dlq_select(ids, queue)
        return {"purged": self._engine.purge(sel_ids, sel_queue, MAX_BATCH)}

    def _queues(self) -> list[QueueStats]:
        return self._engine.queue_stats()  # type: ignore[return-value]

    def _set_paused(self, queue: str, paused: bool) -> PauseResult:
        self._call(self._engine.set_paused, queue, paused)
        return {"queue": queue, "paused": paused}


class InMemoryClient(_Core):
    """An `AsyncClient` stand-in with the server's job semantics and no server, for fast
    tests of workers and producers (`Worker(client=InMemoryClient())`)."""

    def __init__(
        self,
        *,
        clock: Callable[[], int] | None = None,
        seed: int | None = None,
        retry_backoff: bool = True,
        name: str | None = None,
    ) -> None:
        """`clock` returns epoch milliseconds (a `ManualClock` lets tests move time);
        `retry_backoff=False` makes every retry due at once; `seed` fixes the jitter draws;
        `name` is the default worker name of claims."""
        super().__init__(clock=clock, seed=seed, retry_backoff=retry_backoff, name=name)

    def __repr__(self) -> str:
        return f"InMemoryClient(name={self._name!r})"

    def sync(self) -> SyncInMemoryClient:
        """The same store behind `ferry.Client`'s blocking methods (for threads and sync code)."""
        return SyncInMemoryClient(name=self._name, _engine=self._engine)

    async def __aenter__(self) -> InMemoryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Nothing to close; kept for `WorkerTransport`."""

    async def enqueue(self, queue: str, payload: Any = None, **fields: Any) -> EnqueueResult:
        """`POST /v1/jobs` for one job; `fields` are the job spec's others."""
        return self._enqueue(queue, payload, fields)

    async def enqueue_batch(self, jobs: Sequence[Mapping[str, Any]]) -> EnqueueBatchResult:
        """`POST /v1/jobs` with `{"jobs": [...]}`: all or nothing, `{"ids", "duplicates"?}`."""
        return self._enqueue_batch(jobs)

    async def claim(
        self,
        queue: str,
        *,
        worker: str | None = None,
        max: int = 1,
        wait_ms: int = 0,
        lease_ms: int | None = None,
    ) -> list[ClaimedJob]:
        """`POST /v1/queues/{queue}/claim`, long-polling up to `wait_ms` without spinning."""
        name, m, lease, wait = self._claim_args(queue, worker, max, lease_ms, wait_ms)
        eng = self._engine
        jobs: list[ClaimedJob] = eng.claim(queue, name, m, lease)
        if jobs or wait == 0:
            return jobs
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait / 1000
        while True:
            fut: asyncio.Future[None] = loop.create_future()

            def wake(fut: asyncio.Future[None] = fut) -> None:
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                    loop.call_soon_threadsafe(_resolve, fut)

            with eng.lock:
                jobs = eng.claim(queue, name, m, lease)
                if jobs:
                    return jobs
                eng.waiters.setdefault(queue, []).append(wake)
                due = eng.next_wakeup_ms()
                now = eng.clock()
            remaining = deadline - loop.time()
            timeout = remaining if due is None else min(remaining, _larger(0.001, (due - now) / 1000))
            try:
                if timeout > 0:
                    await asyncio.wait({fut}, timeout=timeout)
            finally:
                eng.remove_waiter(queue, wake)
            if loop.time() >= deadline:
                return eng.claim(queue, name, m, lease)

    async def heartbeat(
        self, id: str, lease: str, *, extend_ms: int | None = None, worker: str | None = None
    ) -> HeartbeatOutcome:
        """`POST /v1/jobs/{id}/heartbeat`: `{"id", "lease_expires_at"}`."""
        return self._single("heartbeat", id, self._heartbeat_item(lease, extend_ms))  # type: ignore[return-value]

    async def heartbeat_batch(
        self, items: list[dict[str, Any]], *, worker: str | None = None
    ) -> list[HeartbeatResult]:
        """`POST /v1/jobs/heartbeat`: one result per item, in order."""
        return self._heartbeat_batch(items, worker)

    async def complete(self, id: str, lease: str, result: Any = None) -> StateResult:
        """`POST /v1/jobs/{id}/complete`: `{"id", "state": "completed"}`."""
        return self._single("complete", id, {"lease": lease, "result": result})  # type: ignore[return-value]

    async def fail(self, id: str, lease: str, error: str = "", *, retry: bool = True) -> FailResult:
        """`POST /v1/jobs/{id}/fail`: `{"id", "state", "attempt", "run_at"?}`."""
        item = {"lease": lease, "error": error, "retry": retry}
        return self._single("fail", id, item)  # type: ignore[return-value]

    async def release(self, id: str, lease: str) -> dict[str, Any]:
        """`POST /v1/jobs/{id}/release`: ready again, the attempt not counted."""
        return self._release(id, lease)

    async def complete_batch(self, items: list[dict[str, Any]]) -> list[BatchResult]:
        """`POST /v1/jobs/complete`: one outcome per item, in order."""
        return self._complete_batch(items)

    async def fail_batch(self, items: list[dict[str, Any]]) -> list[BatchResult]:
        """`POST /v1/jobs/fail`: one outcome per item, in order."""
        return self._fail_batch(items)

    async def cancel(self, id: str, reason: str | None = None) -> StateResult:
        """`POST /v1/jobs/{id}/cancel`: only a job that is not running."""
        return self._cancel(id, reason)

    async def get_job(self, id: str) -> Job:
        """`GET /v1/jobs/{id}`."""
        return self._get_job(id)

    def list_jobs(
        self,
        queue: str | None = None,
        state: str | None = None,
        *,
        limit: int | None = None,
        page_size: int | None = None,
        cursor: str | None = None,
    ) -> AsyncJobPager:
        """`GET /v1/jobs` as the real client's pager: `async for`, `.page()`, `.all()`."""
        from ferry._client import AsyncJobPager

        params = {"queue": queue, "state": state}
        return AsyncJobPager(
            _AsyncPages(self), "/v1/jobs", params, cursor=cursor, limit=limit, page_size=page_size
        )

    async def queues(self) -> list[QueueStats]:
        """`GET /v1/queues`: every queue's counts by state."""
        return self._queues()

    async def pause(self, queue: str) -> PauseResult:
        """`POST /v1/queues/{queue}/pause`: claims hand out nothing."""
        return self._set_paused(queue, True)

    async def resume(self, queue: str) -> PauseResult:
        """`POST /v1/queues/{queue}/resume`."""
        return self._set_paused(queue, False)

    def dlq(
        self,
        queue: str | None = None,
        *,
        limit: int | None = None,
        page_size: int | None = None,
        cursor: str | None = None,
    ) -> AsyncJobPager:
        """`GET /v1/dlq` as the real client's pager."""
        from ferry._client import AsyncJobPager

        return AsyncJobPager(
            _AsyncPages(self), "/v1/dlq", {"queue": queue}, cursor=cursor, limit=limit, page_size=page_size
        )

    async def dlq_replay(self, ids: Sequence[str] | None = None, *, queue: str | None = None) -> ReplayResult:
        """`POST /v1/dlq/replay`: dead jobs back to ready, attempts reset, history kept."""
        return self._replay(ids, queue)

    async def dlq_purge(self, ids: Sequence[str] | None = None, *, queue: str | None = None) -> PurgeResult:
        """`POST /v1/dlq/purge`: dead jobs deleted."""
        return self._purge(ids, queue)


def _larger(a: float, b: float) -> float:
    return a if a > b else b


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class SyncInMemoryClient(_Core):
    """A `ferry.Client` stand-in (blocking methods) over an in-memory store; `InMemoryClient.sync`
    shares one with an async client."""

    def __init__(
        self,
        *,
        clock: Callable[[], int] | None = None,
        seed: int | None = None,
        retry_backoff: bool = True,
        name: str | None = None,
        _engine: _Engine | None = None,
    ) -> None:
        """As `InMemoryClient`."""
        super().__init__(clock=clock, seed=seed, retry_backoff=retry_backoff, name=name, _engine=_engine)

    def __repr__(self) -> str:
        return f"SyncInMemoryClient(name={self._name!r})"

    def __enter__(self) -> SyncInMemoryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Nothing to close."""

    def enqueue(self, queue: str, payload: Any = None, **fields: Any) -> EnqueueResult:
        """`POST /v1/jobs` for one job."""
        return self._enqueue(queue, payload, fields)

    def enqueue_batch(self, jobs: Sequence[Mapping[str, Any]]) -> EnqueueBatchResult:
        """`POST /v1/jobs` with `{"jobs": [...]}`."""
        return self._enqueue_batch(jobs)

    def claim(
        self,
        queue: str,
        *,
        worker: str | None = None,
        max: int = 1,
        wait_ms: int = 0,
        lease_ms: int | None = None,
    ) -> list[ClaimedJob]:
        """`POST /v1/queues/{queue}/claim`, long-polling on an event, not a spin."""
        name, m, lease, wait = self._claim_args(queue, worker, max, lease_ms, wait_ms)
        eng = self._engine
        deadline = time.monotonic() + wait / 1000
        while True:
            event = threading.Event()
            with eng.lock:
                jobs: list[ClaimedJob] = eng.claim(queue, name, m, lease)
                if jobs or wait == 0:
                    return jobs
                eng.waiters.setdefault(queue, []).append(event.set)
                due = eng.next_wakeup_ms()
                now = eng.clock()
            remaining = deadline - time.monotonic()
            timeout = remaining if due is None else min(remaining, _larger(0.001, (due - now) / 1000))
            try:
                if timeout > 0:
                    event.wait(timeout)
            finally:
                eng.remove_waiter(queue, event.set)
            if time.monotonic() >= deadline:
                return eng.claim(queue, name, m, lease)

    def heartbeat(
        self, id: str, lease: str, *, extend_ms: int | None = None, worker: str | None = None
    ) -> HeartbeatOutcome:
        """`POST /v1/jobs/{id}/heartbeat`."""
        return self._single("heartbeat", id, self._heartbeat_item(lease, extend_ms))  # type: ignore[return-value]

    def heartbeat_batch(
        self, items: list[dict[str, Any]], *, worker: str | None = None
    ) -> list[HeartbeatResult]:
        """`POST /v1/jobs/heartbeat`."""
        return self._heartbeat_batch(items, worker)

    def complete(self, id: str, lease: str, result: Any = None) -> StateResult:
        """`POST /v1/jobs/{id}/complete`."""
        return self._single("complete", id, {"lease": lease, "result": result})  # type: ignore[return-value]

    def fail(self, id: str, lease: str, error: str = "", *, retry: bool = True) -> FailResult:
        """`POST /v1/jobs/{id}/fail`."""
        item = {"lease": lease, "error": error, "retry": retry}
        return self._single("fail", id, item)  # type: ignore[return-value]

    def release(self, id: str, lease: str) -> dict[str, Any]:
        """`POST /v1/jobs/{id}/release`."""
        return self._release(id, lease)

    def complete_batch(self, items: list[dict[str, Any]]) -> list[BatchResult]:
        """`POST /v1/jobs/complete`."""
        return self._complete_batch(items)

    def fail_batch(self, items: list[dict[str, Any]]) -> list[BatchResult]:
        """`POST /v1/jobs/fail`."""
        return self._fail_batch(items)

    def cancel(self, id: str, reason: str | None = None) -> StateResult:
        """`POST /v1/jobs/{id}/cancel`."""
        return self._cancel(id, reason)

    def get_job(self, id: str) -> Job:
        """`GET /v1/jobs/{id}`."""
        return self._get_job(id)

    def list_jobs(
        self,
        queue: str | None = None,
        state: str | None = None,
        *,
        limit: int | None = None,
        page_size: int | None = None,
        cursor: str | None = None,
    ) -> JobPager:
        """`GET /v1/jobs` as the real client's pager: iterate it, or `.page()`."""
        from ferry._client import JobPager

        params = {"queue": queue, "state": state}
        return JobPager(_SyncPages(self), "/v1/jobs", params, cursor=cursor, limit=limit, page_size=page_size)

    def queues(self) -> list[QueueStats]:
        """`GET /v1/queues`."""
        return self._queues()

    def pause(self, queue: str) -> PauseResult:
        """`POST /v1/queues/{queue}/pause`."""
        return self._set_paused(queue, True)

    def resume(self, queue: str) -> PauseResult:
        """`POST /v1/queues/{queue}/resume`."""
        return self._set_paused(queue, False)

    def dlq(
        self,
        queue: str | None = None,
        *,
        limit: int | None = None,
        page_size: int | None = None,
        cursor: str | None = None,
    ) -> JobPager:
        """`GET /v1/dlq` as the real client's pager."""
        from ferry._client import JobPager

        return JobPager(
            _SyncPages(self), "/v1/dlq", {"queue": queue}, cursor=cursor, limit=limit, page_size=page_size
        )

    def dlq_replay(self, ids: Sequence[str] | None = None, *, queue: str | None = None) -> ReplayResult:
        """`POST /v1/dlq/replay`."""
        return self._replay(ids, queue)

    def dlq_purge(self, ids: Sequence[str] | None = None, *, queue: str | None = None) -> PurgeResult:
        """`POST /v1/dlq/purge`."""
        return self._purge(ids, queue)


if TYPE_CHECKING:
    from ferry._protocol import WorkerTransport

    def _is_a_worker_transport(c: InMemoryClient) -> WorkerTransport:
        return c  # mypy checks that the in-memory client satisfies the protocol
