"""`ferry.AsyncClient`: one method per operation of the server's OpenAPI document. Results are
the server's JSON as parsed (typed by `ferry.types`), errors `ferry.FerryError` subclasses by
code; transient failures are retried as `ferry._http` describes.

Each method carries `__ferry_operation__` (method, path), so a test can check that every
operation of a running server's `/v1/openapi.json` has a method on both clients.

This module is the single source of both clients: `ferry.Client` (and its pagers) in
`_client_sync.py` is generated from it by `scripts/gen_sync.py` (`async`/`await` removed,
`Async*` names renamed, `asyncio` becomes `time`; a line ending in `# unasync: remove` is
left out). Edit this file, then run `python scripts/gen_sync.py`; a test fails while the
generated module is not current.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from types import EllipsisType
from typing import Any, TypeVar, cast

from ferry._client_base import (
    _batch_retry,
    _blobs_out,
    _default_worker,
    _env_token,
    _env_url,
    _episode_out,
    _fence,
    _filters,
    _if_match,
    _jitter,
    _json_param,
    _PagerBase,
    _patch_retry,
    _record,
    _seg,
    _selector,
    _some,
    _typed,
    _vector,
    _writes_out,
    operation,
    operations,
)
from ferry._client_sync import (  # unasync: remove
    AgentPager,
    CheckpointPager,
    CheckpointThreadPager,
    Client,
    DeadMessagePager,
    EpisodePager,
    HistoryPager,
    ItemPager,
    JobPager,
)
from ferry._errors import VersionConflict
from ferry._events import AsyncEventSocket, AsyncEventStream
from ferry._http import ALWAYS, EMPTY, NEVER, REFUSED, TEXT, AsyncTransport
from ferry.types import (
    Advice,
    AgentInfo,
    AgentsPage,
    BackupReceipt,
    BatchResult,
    BroadcastResult,
    ChannelCursor,
    CheckpointBlob,
    CheckpointPutResult,
    CheckpointRecord,
    CheckpointsDeleted,
    CheckpointsPage,
    CheckpointThread,
    CheckpointThreadsPage,
    CheckpointWriteInput,
    CheckpointWritesResult,
    ClaimedJob,
    Convoy,
    ConvoyCreated,
    ConvoyMembersAdded,
    ConvoyMembersPage,
    ConvoysPage,
    DeadMessage,
    DeadMessagesPage,
    Deleted,
    EnqueueBatchResult,
    EnqueueResult,
    Episode,
    EpisodeAdded,
    EpisodesAdded,
    EpisodesPage,
    EventsPage,
    FailResult,
    Health,
    HeartbeatOutcome,
    HeartbeatResult,
    HistoryEntry,
    HistoryPage,
    Host,
    Item,
    ItemResult,
    ItemsPage,
    Job,
    JobsPage,
    LimitsResult,
    MemoryStats,
    Message,
    NewToken,
    PatchItemResult,
    PauseResult,
    PurgeResult,
    QueueStats,
    RebuildProgress,
    ReceiptResult,
    ReconcileReport,
    ReplayResult,
    Schedule,
    SearchResult,
    SendResult,
    ServerInfo,
    StateResult,
    Stats,
    ThreadCopied,
    ThreadDeleted,
    TokenRecord,
    TypedBytes,
    WorkerInfo,
)

__all__ = [  # unasync: remove
    "AgentPager",
    "AsyncAgentPager",
    "AsyncCheckpointPager",
    "AsyncCheckpointThreadPager",
    "AsyncClient",
    "AsyncDeadMessagePager",
    "AsyncEpisodePager",
    "AsyncHistoryPager",
    "AsyncItemPager",
    "AsyncJobPager",
    "CheckpointPager",
    "CheckpointThreadPager",
    "Client",
    "DeadMessagePager",
    "EpisodePager",
    "HistoryPager",
    "ItemPager",
    "JobPager",
    "operation",
    "operations",
]

_P = TypeVar("_P")
_T = TypeVar("_T")


class _AsyncPager(_PagerBase[_P, _T]):
    """Rows of a list call: iterating it (`async for`) follows `next_cursor` page by page
    (fetched lazily) up to `limit` rows; `await .page()` fetches one page, `.pages()` iterates
    pages, `await .all()` gives every row as a list."""

    async def page(self, cursor: str | None = None) -> _P:
        """One page from `cursor` (default the list's start)."""
        out = await self._t.call("GET", self._path, params=self._query(cursor or self._cursor))
        return cast(_P, out)

    async def pages(self) -> AsyncIterator[_P]:
        """Every page in turn."""
        cursor = self._cursor
        while True:
            page = await self.page(cursor)
            yield page
            cursor = self._next(page)
            if not cursor or not self._rows(page):
                return

    def __aiter__(self) -> AsyncIterator[_T]:
        return _AsyncRows(self)

    async def all(self) -> list[_T]:
        """Every row of the list (up to `limit`), as one list."""
        return [row async for row in self]


class _AsyncRows(AsyncIterator[_T]):
    """One pass over a pager (a plain iterator: leaving it early needs no cleanup)."""

    def __init__(self, pager: _AsyncPager[Any, _T]) -> None:
        self._pager = pager
        self._buf: list[_T] = []
        self._i = 0
        self._cursor = pager._cursor
        self._first = True
        self._left = pager._limit

    async def __anext__(self) -> _T:
        if self._left is not None and self._left <= 0:
            raise StopAsyncIteration
        while self._i >= len(self._buf):
            if not self._first and not self._cursor:
                raise StopAsyncIteration
            page = await self._pager.page(self._cursor)
            self._first = False
            self._buf, self._i = self._pager._rows(page), 0
            self._cursor = self._pager._next(page) if self._buf else None
        row = self._buf[self._i]
        self._i += 1
        if self._left is not None:
            self._left -= 1
        return row


class AsyncJobPager(_AsyncPager[JobsPage, Job]):
    """Jobs of a list call (`list_jobs`, `dlq`): iterating it (`async for`) follows
    `next_cursor` lazily up to `limit` jobs; `await .page()` fetches one page (`{"jobs",
    "next_cursor"}`)."""

    _key = "jobs"


class AsyncItemPager(_AsyncPager[ItemsPage, Item]):
    """Work items of `list_items`, ordered by id: iterating it (`async for`) follows
    `next_cursor` lazily up to `limit` items; `await .page()` fetches one page (`{"items",
    "next_cursor"}`)."""

    _key = "items"


class AsyncHistoryPager(_AsyncPager[HistoryPage, HistoryEntry]):
    """A work item's versions, newest first: iterating it (`async for`) follows `next_cursor`
    lazily up to `limit` entries; `await .page()` fetches one page (`{"history",
    "next_cursor"}`)."""

    _key = "history"


class AsyncDeadMessagePager(_AsyncPager[DeadMessagesPage, DeadMessage]):
    """An agent's dead letters, oldest death first: iterating it (`async for`) follows
    `next_cursor` lazily up to `limit` messages; `await .page()` fetches one page
    (`{"messages", "next_cursor"}`)."""

    _key = "messages"


class AsyncAgentPager(_AsyncPager[AgentsPage, AgentInfo]):
    """Agents (inboxes) by name: iterating it (`async for`) follows `next_cursor` lazily up to
    `limit` agents; `await .page()` fetches one page (`{"agents", "next_cursor"}`)."""

    _key = "agents"


class AsyncCheckpointPager(_AsyncPager[CheckpointsPage, CheckpointRecord]):
    """Checkpoints of `list_checkpoints`, newest first by id: iterating it (`async for`)
    follows `next_cursor` lazily up to `limit` checkpoints; `await .page()` fetches one page
    (`{"checkpoints", "next_cursor"}`). Typed values' `data` come decoded to bytes."""

    _key = "checkpoints"

    async def page(self, cursor: str | None = None) -> CheckpointsPage:
        """One page from `cursor` (default the list's start)."""
        out = await super().page(cursor)
        for row in out["checkpoints"]:
            _record(row)
        return out


class AsyncCheckpointThreadPager(_AsyncPager[CheckpointThreadsPage, CheckpointThread]):
    """Checkpoint threads of `list_threads`, by id: iterating it (`async for`) follows
    `next_cursor` lazily up to `limit` threads; `await .page()` fetches one page (`{"threads",
    "next_cursor"}`)."""

    _key = "threads"


class AsyncEpisodePager(_AsyncPager[EpisodesPage, Episode]):
    """Episodes of `list_episodes`, newest first: iterating it (`async for`) follows
    `next_cursor` lazily up to `limit` episodes; `await .page()` fetches one page
    (`{"episodes", "next_cursor"}`)."""

    _key = "episodes"


def _max_parallel(max_parallel: int | None, adaptive: Sequence[int] | Mapping[str, Any] | None) -> Any:
    """`create_convoy`'s wire `max_parallel`: a number, `{"adaptive": {min, max, start?}}`, or
    None (not sent: the server's default)."""
    if adaptive is None:
        return max_parallel
    if max_parallel is not None:
        raise ValueError("give max_parallel or adaptive, not both")
    if isinstance(adaptive, Mapping):
        return {"adaptive": dict(adaptive)}
    bounds = list(adaptive)
    if len(bounds) not in (2, 3):
        raise ValueError("adaptive is (min, max) or (min, max, start)")
    return {"adaptive": dict(zip(("min", "max", "start"), bounds, strict=False))}


class AsyncClient:
    """A ferry server for asyncio code (what `ferry.Worker` uses).

    `url` and `token` default to `FERRY_URL` (else http://127.0.0.1:7700) and `FERRY_TOKEN`;
    `name` is sent as `X-Ferry-Client` (the rate limiter's key, the worker registry's name).
    `retries` more attempts within `retry_budget` seconds wait out 429, 503 and connection
    failures (see each method for what is safe to repeat); `timeout` is per request, added
    to a long-poll's wait.
    """

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        name: str | None = None,
        timeout: float = 30.0,
        retries: int = 8,
        retry_budget: float = 30.0,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._t = AsyncTransport(
            _env_url(url), _env_token(token), name, timeout, retries, retry_budget, headers
        )
        self._name = name
        self._worker = name or _default_worker()
        self._claim_paths: dict[str, str] = {}

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self._t.url

    @property
    def name(self) -> str | None:
        """The name sent as `X-Ferry-Client`."""
        return self._name

    def __repr__(self) -> str:
        return f"AsyncClient({self._t.url!r}, name={self._name!r})"

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._t.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # ---- jobs ----------------------------------------------------------------------------------

    @operation("POST", "/v1/jobs")
    async def enqueue(
        self,
        queue: str,
        payload: Any = None,
        *,
        payment: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> EnqueueResult:
        """Enqueues one job; `fields` are the job spec's others (`priority`, `delay_ms`, `run_at`,
        `max_attempts`, `backoff`, `lease_ms`, `timeout_ms`, `unique_key`, `depends_on`, `tags`).

        `payment` (`{"from", "amount", "ledger"?, "code"?}`) makes it a paid job (the token
        needs scopes `ledger` and `produce`): a hold `job:<id>:hold` from the ledger account
        `from` to `escrow` is placed with the job, paid to `worker:<name>` of the worker that
        completes it, voided if it dies or is cancelled. Too little `available` raises
        `InvalidState` (`details["reason"]` `exceeds_credits`, or `account_closed`) and
        enqueues nothing; an unknown `from` is `ValidationFailed` (`payment.from`).

        Retried (429, 503, connection failures) only with a `unique_key`, which deduplicates
        only while the first job is unfinished (a finished job's key can be enqueued again);
        without one it is sent once and any failure raises (`retry_after` says when to try
        again), so a lost answer never enqueues twice (nor holds a payment twice).
        """
        body = {"queue": queue, **fields}
        if payload is not None:
            body["payload"] = payload
        if payment is not None:
            body["payment"] = dict(payment)
        retry = ALWAYS if fields.get("unique_key") else NEVER
        return cast(
            EnqueueResult, await self._t.call("POST", "/v1/jobs", body=body, has_body=True, retry=retry)
        )

    @operation("POST", "/v1/jobs")
    async def enqueue_batch(self, jobs: Sequence[Mapping[str, Any]]) -> EnqueueBatchResult:
        """Enqueues job specs (each with its `queue`, and its own `payment` if paid: see
        `enqueue`) all or nothing; one id per job, in order. A refused payment raises its
        error with `details["index"]` and enqueues nothing. Retried (429, 503, connection
        failures) only when every job has a `unique_key`."""
        jobs = list(jobs)
        retry = ALWAYS if jobs and all(j.get("unique_key") for j in jobs) else NEVER
        out = await self._t.call("POST", "/v1/jobs", body={"jobs": jobs}, has_body=True, retry=retry)
        return cast(EnqueueBatchResult, out)

    @operation("POST", "/v1/import")
    async def import_jobs(self, jobs: Sequence[Mapping[str, Any]]) -> EnqueueBatchResult:
        """Imports jobs from another system, all or nothing: items `{"job": spec, "state":
        "ready"|"completed", "result"?}`, each job with a `unique_key` (dedup in any state, so
        retrying is safe)."""
        out = await self._t.call("POST", "/v1/import", body={"jobs": list(jobs)}, has_body=True)
        return cast(EnqueueBatchResult, out)

    @operation("POST", "/v1/queues/{queue}/claim")
    async def claim(
        self,
        queue: str,
        *,
        worker: str | None = None,
        max: int = 1,
        wait_ms: int = 0,
        lease_ms: int | None = None,
    ) -> list[ClaimedJob]:
        """Leases up to `max` jobs of `queue`, long-polling up to `wait_ms` for the first;
        `worker` defaults to the client's `name`. Retried: a lost answer only delays its jobs
        until their lease expires."""
        body: dict[str, Any] = {"worker": worker or self._worker, "max": max}
        if wait_ms:
            body["wait_ms"] = wait_ms
        if lease_ms is not None:
            body["lease_ms"] = lease_ms
        path = self._claim_paths.get(queue)
        if path is None:
            path = self._claim_paths[queue] = f"/v1/queues/{_seg(queue)}/claim"
        out = await self._t.call("POST", path, body=body, has_body=True, wait_ms=wait_ms)
        return cast("list[ClaimedJob]", out["jobs"])

    @operation("POST", "/v1/jobs/{id}/heartbeat")
    async def heartbeat(
        self,
        id: str,
        lease: str,
        *,
        extend_ms: int | None = None,
        worker: str | None = None,
        pressure: float | None = None,
    ) -> HeartbeatOutcome:
        """Extends a lease (by the job's `lease_ms`, or `extend_ms`); `StaleLease` when it is
        lost. `pressure` (0.0 to 1.0) reports the worker's load to an adaptive convoy.
        Lease-fenced, so retried."""
        body: dict[str, Any] = {"lease": lease}
        if extend_ms is not None:
            body["extend_ms"] = extend_ms
        if pressure is not None:
            body["pressure"] = pressure
        if worker or self._name:
            body["worker"] = worker or self._name
        out = await self._t.call("POST", f"/v1/jobs/{_seg(id)}/heartbeat", body=body, has_body=True)
        return cast(HeartbeatOutcome, out)

    @operation("POST", "/v1/jobs/heartbeat")
    async def heartbeat_batch(
        self, items: list[dict[str, Any]], *, worker: str | None = None
    ) -> list[HeartbeatResult]:
        """Extends many leases at once (items `{id, lease, extend_ms?, pressure?}`); one result per item,
        in order, `ok: false` with `stale_lease` for a lost one. Lease-fenced, so retried."""
        body: dict[str, Any] = {"items": items}
        if worker or self._name:
            body["worker"] = worker or self._name
        out = await self._t.call("POST", "/v1/jobs/heartbeat", body=body, has_body=True)
        return cast("list[HeartbeatResult]", out["results"])

    @operation("POST", "/v1/jobs/{id}/complete")
    async def complete(
        self, id: str, lease: str, result: Any = None, *, pressure: float | None = None
    ) -> StateResult:
        """Completes a job with an optional JSON `result`; `StaleLease` if the lease was lost
        (the work is discarded). `pressure` (0.0 to 1.0) reports the worker's load to an
        adaptive convoy. Lease-fenced, so retried."""
        body: dict[str, Any] = {"lease": lease}
        if result is not None:
            body["result"] = result
        if pressure is not None:
            body["pressure"] = pressure
        out = await self._t.call("POST", f"/v1/jobs/{_seg(id)}/complete", body=body, has_body=True)
        return cast(StateResult, out)

    @operation("POST", "/v1/jobs/{id}/fail")
    async def fail(
        self, id: str, lease: str, error: str = "", *, retry: bool = True, pressure: float | None = None
    ) -> FailResult:
        """Fails an attempt: retried after backoff, or dead at `max_attempts` or with
        `retry=False`; `pressure` (0.0 to 1.0) reports the worker's load to an adaptive convoy.
        Lease-fenced, so the request itself is retried."""
        body: dict[str, Any] = {"lease": lease, "error": error, "retry": retry}
        if pressure is not None:
            body["pressure"] = pressure
        out = await self._t.call("POST", f"/v1/jobs/{_seg(id)}/fail", body=body, has_body=True)
        return cast(FailResult, out)

    @operation("POST", "/v1/jobs/{id}/release")
    async def release(self, id: str, lease: str) -> dict[str, Any]:
        """Gives a claimed, unstarted job back: ready at once, the attempt not counted
        (`{"id", "state"}`, a `StateResult`). Lease-fenced, so retried."""
        out = await self._t.call("POST", f"/v1/jobs/{_seg(id)}/release", body={"lease": lease}, has_body=True)
        return cast("dict[str, Any]", out)

    @operation("POST", "/v1/jobs/complete")
    async def complete_batch(self, items: list[dict[str, Any]]) -> list[BatchResult]:
        """Completes many jobs (items `{id, lease, result?, pressure?}`), each on its own; one
        result per item, in order. Lease-fenced, so retried."""
        out = await self._t.call("POST", "/v1/jobs/complete", body={"items": items}, has_body=True)
        return cast("list[BatchResult]", out["results"])

    @operation("POST", "/v1/jobs/fail")
    async def fail_batch(self, items: list[dict[str, Any]]) -> list[BatchResult]:
        """Fails many attempts (items `{id, lease, error, retry?, pressure?}`), each on its own;
        one result per item, in order. Lease-fenced, so retried."""
        out = await self._t.call("POST", "/v1/jobs/fail", body={"items": items}, has_body=True)
        return cast("list[BatchResult]", out["results"])

    @operation("POST", "/v1/jobs/{id}/cancel")
    async def cancel(self, id: str, reason: str | None = None) -> StateResult:
        """Cancels a job that is not running (`InvalidState` if it runs or has finished)."""
        body = {"reason": reason} if reason is not None else {}
        out = await self._t.call("POST", f"/v1/jobs/{_seg(id)}/cancel", body=body, has_body=True)
        return cast(StateResult, out)

    @operation("GET", "/v1/jobs/{id}")
    async def get_job(self, id: str) -> Job:
        """One job with its history (errors of every attempt, result, timestamps)."""
        return cast(Job, await self._t.call("GET", f"/v1/jobs/{_seg(id)}"))

    @operation("GET", "/v1/jobs")
    def list_jobs(
        self,
        queue: str | None = None,
        state: str | None = None,
        *,
        limit: int | None = None,
        page_size: int | None = None,
        cursor: str | None = None,
    ) -> AsyncJobPager:
        """Jobs in insertion order, optionally of one queue and state: iterate it (pages are
        fetched lazily, following `next_cursor`) up to `limit` jobs, or call `.page()`."""
        params = {"queue": queue, "state": state}
        return AsyncJobPager(self._t, "/v1/jobs", params, cursor=cursor, limit=limit, page_size=page_size)

    # ---- queues --------------------------------------------------------------------------------

    @operation("GET", "/v1/queues")
    async def queues(self) -> list[QueueStats]:
        """Every queue with its counts by state, oldest ready age, paused flag and limits."""
        return cast("list[QueueStats]", (await self._t.call("GET", "/v1/queues"))["queues"])

    @operation("POST", "/v1/queues/{queue}/pause")
    async def pause(self, queue: str) -> PauseResult:
        """Pauses a queue: claims get nothing until it resumes."""
        return cast(PauseResult, await self._t.call("POST", f"/v1/queues/{_seg(queue)}/pause"))

    @operation("POST", "/v1/queues/{queue}/resume")
    async def resume(self, queue: str) -> PauseResult:
        """Resumes a paused queue."""
        return cast(PauseResult, await self._t.call("POST", f"/v1/queues/{_seg(queue)}/resume"))

    @operation("GET", "/v1/queues/{queue}/limits")
    async def queue_limits(self, queue: str) -> LimitsResult:
        """A queue's flow limits (all unset when it has none)."""
        return cast(LimitsResult, await self._t.call("GET", f"/v1/queues/{_seg(queue)}/limits"))

    @operation("PUT", "/v1/queues/{queue}/limits")
    async def set_queue_limits(
        self,
        queue: str,
        *,
        max_running: int | None = None,
        max_starts_per_sec: float | None = None,
        max_depth: int | None = None,
    ) -> LimitsResult:
        """Sets a queue's flow limits across every node; the ones not given are cleared."""
        body = _some(max_running=max_running, max_starts_per_sec=max_starts_per_sec, max_depth=max_depth)
        out = await self._t.call("PUT", f"/v1/queues/{_seg(queue)}/limits", body=body, has_body=True)
        return cast(LimitsResult, out)

    # ---- dead-letter queue ---------------------------------------------------------------------

    @operation("GET", "/v1/dlq")
    def dlq(
        self,
        queue: str | None = None,
        *,
        limit: int | None = None,
        page_size: int | None = None,
        cursor: str | None = None,
    ) -> AsyncJobPager:
        """Dead jobs, optionally of one queue: iterate it (lazy pages) or call `.page()`."""
        return AsyncJobPager(
            self._t, "/v1/dlq", {"queue": queue}, cursor=cursor, limit=limit, page_size=page_size
        )

    @operation("POST", "/v1/dlq/replay")
    async def dlq_replay(self, ids: Sequence[str] | None = None, *, queue: str | None = None) -> ReplayResult:
        """Returns dead jobs to `ready` (by `ids`, or every one of `queue`)."""
        body = _selector(ids, queue)
        return cast(ReplayResult, await self._t.call("POST", "/v1/dlq/replay", body=body, has_body=True))

    @operation("POST", "/v1/dlq/purge")
    async def dlq_purge(self, ids: Sequence[str] | None = None, *, queue: str | None = None) -> PurgeResult:
        """Deletes dead jobs (by `ids`, or every one of `queue`)."""
        body = _selector(ids, queue)
        return cast(PurgeResult, await self._t.call("POST", "/v1/dlq/purge", body=body, has_body=True))

    # ---- convoys -------------------------------------------------------------------------------

    @operation("POST", "/v1/convoys")
    async def create_convoy(
        self,
        queue: str,
        members: Sequence[Mapping[str, Any]] | None = None,
        *,
        id: str | None = None,
        name: str | None = None,
        max_parallel: int | None = None,
        adaptive: Sequence[int] | Mapping[str, Any] | None = None,
        sealed: bool = True,
        on_failure: str | None = None,
        on_complete: Mapping[str, Any] | None = None,
    ) -> ConvoyCreated:
        """Creates a convoy, so a fan-out of jobs runs under one parallelism limit and ends in
        one `on_complete` job; `{"convoy", "ids", "duplicates"}`.

        `members` are job specs without `queue`, `depends_on`, `run_at`, `delay_ms` (a
        member's `unique_key` dedups within the convoy: `duplicates` lists their indexes).
        At most `max_parallel` (default 10,000) run at once, or a limit tuned within
        `adaptive` (`(min, max)`, `(min, max, start)` or a dict of those keys; not both).
        `sealed=False` keeps it open for `add_convoy_members` until `seal_convoy`;
        `on_failure` is `continue` (default) or `fail_fast`; `on_complete` is a job spec
        (with its `queue`, no `unique_key` or `depends_on`) enqueued once when it ends. `id`
        is the client's (1 to 128 of `[A-Za-z0-9._:-]`), else the server's UUIDv7; the same
        `id` again answers the convoy with `duplicate: true`, `ids` empty, nothing added
        (`Conflict` with `details["fields"]` when `name`, `queue` or `max_parallel` differ).

        Retried (429, 503, connection failures) with an `id` (a repeat is a duplicate: after
        a lost answer the member ids come from `convoy_members`); without one only when the
        server refused it before writing (429, 503 `server_saturated`/`circuit_open`)."""
        body: dict[str, Any] = {"queue": queue, "sealed": sealed}
        if members is not None:
            body["members"] = [dict(m) for m in members]
        body.update(
            _some(
                id=id,
                name=name,
                max_parallel=_max_parallel(max_parallel, adaptive),
                on_failure=on_failure,
            )
        )
        if on_complete is not None:
            body["on_complete"] = dict(on_complete)
        retry = ALWAYS if id else REFUSED
        out = await self._t.call("POST", "/v1/convoys", body=body, has_body=True, retry=retry)
        return cast(ConvoyCreated, out)

    @operation("POST", "/v1/convoys/{id}/members")
    async def add_convoy_members(self, id: str, members: Sequence[Mapping[str, Any]]) -> ConvoyMembersAdded:
        """Adds member specs to an open convoy, all or nothing; `{"ids", "duplicates"}`
        (indexes whose `unique_key` matched an earlier member: nothing added for them).
        `InvalidState` once it is sealed or ended, `NotFound` for an unknown convoy. Retried
        (429, 503, connection failures) only when every member has a `unique_key`; otherwise
        only when the server refused it before writing."""
        specs = [dict(m) for m in members]
        retry = ALWAYS if specs and all(m.get("unique_key") for m in specs) else REFUSED
        path = f"/v1/convoys/{_seg(id)}/members"
        out = await self._t.call("POST", path, body={"members": specs}, has_body=True, retry=retry)
        return cast(ConvoyMembersAdded, out)

    @operation("POST", "/v1/convoys/{id}/seal")
    async def seal_convoy(self, id: str) -> Convoy:
        """Seals a convoy, so it ends once its members have (at once if none is live); the
        convoy. Sealing again changes nothing, so retried."""
        return cast(Convoy, await self._t.call("POST", f"/v1/convoys/{_seg(id)}/seal"))

    @operation("POST", "/v1/convoys/{id}/cancel")
    async def cancel_convoy(self, id: str) -> Convoy:
        """Stops a convoy: seals it and cancels every member not running (running ones finish);
        it ends `cancelled` once none is live. The convoy; `InvalidState` once it completed or
        failed. Cancelling again changes nothing, so retried."""
        return cast(Convoy, await self._t.call("POST", f"/v1/convoys/{_seg(id)}/cancel"))

    @operation("GET", "/v1/convoys/{id}")
    async def get_convoy(self, id: str, *, wait_ms: int | None = None) -> Convoy:
        """One convoy with its `state`, `limit` and `counts`. With `wait_ms`, a long-poll:
        answers once the convoy has ended, or when `wait_ms` ends (then as it is)."""
        path = f"/v1/convoys/{_seg(id)}"
        out = await self._t.call("GET", path, params=_some(wait_ms=wait_ms) or None, wait_ms=wait_ms or 0)
        return cast(Convoy, out)

    @operation("GET", "/v1/convoys")
    async def list_convoys(
        self,
        *,
        state: str | None = None,
        queue: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> ConvoysPage:
        """One page of convoys, oldest first, optionally of one `state` (`open`, `sealed`,
        `completed`, `failed`, `cancelled`) and `queue`: `{"convoys", "next_cursor"}`; pass
        `next_cursor` back as `cursor` for the next."""
        params = _some(state=state, queue=queue, limit=limit, cursor=cursor)
        return cast(ConvoysPage, await self._t.call("GET", "/v1/convoys", params=params or None))

    @operation("GET", "/v1/convoys/{id}/members")
    async def convoy_members(
        self, id: str, *, state: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> ConvoyMembersPage:
        """One page of a convoy's members in the order added, optionally of one job `state`
        (`held`, `ready`, `running`, `scheduled`, `completed`, `dead`, `cancelled`):
        `{"members", "next_cursor"}`; pass `next_cursor` back as `cursor` for the next."""
        params = _some(state=state, limit=limit, cursor=cursor)
        path = f"/v1/convoys/{_seg(id)}/members"
        return cast(ConvoyMembersPage, await self._t.call("GET", path, params=params or None))

    # ---- ledger --------------------------------------------------------------------------------

    @operation("POST", "/v1/ledger/accounts")
    async def create_account(
        self,
        id: str,
        *,
        ledger: int | None = None,
        code: int | None = None,
        flags: str | Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Creates a ledger account; the account (`balance` = credits - debits posted,
        `available` = balance - debits pending, the four sums, `flags`, `created_at`).

        `id` is 1 to 512 bytes of `[A-Za-z0-9._:%-]` (not `escrow` nor `worker:...`:
        ferry's own); `ledger` 1 to 2^32-1 (default 1); `code` 0 to 65535 (default 0);
        `flags` names of `debits_must_not_exceed_credits` or `credits_must_not_exceed_debits`,
        and `closed`; `metadata` a JSON object (at most `limits.max_ledger_metadata_bytes`
        serialized, else `PayloadTooLarge`). The same id and fields again answer the account
        with `duplicate: true`; other fields raise `Conflict` with `details["fields"]`.
        Idempotent by `id`, so retried."""
        body: dict[str, Any] = {"id": id}
        body.update(_some(ledger=ledger, code=code))
        if flags is not None:
            body["flags"] = [flags] if isinstance(flags, str) else list(flags)
        if metadata is not None:
            body["metadata"] = dict(metadata)
        out = await self._t.call("POST", "/v1/ledger/accounts", body=body, has_body=True)
        return cast("dict[str, Any]", out)

    @operation("POST", "/v1/ledger/accounts")
    async def create_accounts(self, accounts: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Creates accounts (`{"id", "ledger"?, "code"?, "flags"?, "metadata"?}` each, as
        `create_account`) all or nothing; the accounts in order, repeats with `duplicate:
        true`. A failing one raises its error with `field` `accounts[i]...` and
        `details["index"]`, and nothing is created. Idempotent by id, so retried."""
        body = {"accounts": [dict(a) for a in accounts]}
        out = await self._t.call("POST", "/v1/ledger/accounts", body=body, has_body=True)
        return cast("list[dict[str, Any]]", out["accounts"])

    @operation("POST", "/v1/ledger/accounts/{id}/close")
    async def close_account(self, id: str) -> dict[str, Any]:
        """Closes an account: no new transfers (refused with `InvalidState`, `details["reason"]`
        `account_closed`), its pending ones still post or void; the account, its `flags` with
        `closed`. Closing again answers `duplicate: true`, so retried."""
        return cast("dict[str, Any]", await self._t.call("POST", f"/v1/ledger/accounts/{_seg(id)}/close"))

    @operation("GET", "/v1/ledger/accounts/{id}")
    async def get_account(self, id: str) -> dict[str, Any]:
        """One account with its balances (ferry's `escrow` and `worker:<name>` ones too);
        `NotFound` for an unknown id."""
        return cast("dict[str, Any]", await self._t.call("GET", f"/v1/ledger/accounts/{_seg(id)}"))

    @operation("GET", "/v1/ledger/accounts")
    async def list_accounts(
        self, *, ledger: int | None = None, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        """One page of accounts in id order, optionally of one `ledger`: `{"accounts",
        "next_cursor"}`; pass `next_cursor` back as `cursor` for the next (None at the end)."""
        params = _some(ledger=ledger, limit=limit, cursor=cursor)
        return cast("dict[str, Any]", await self._t.call("GET", "/v1/ledger/accounts", params=params or None))

    @operation("POST", "/v1/ledger/transfers")
    async def transfer(
        self,
        id: str,
        debit_account: str,
        credit_account: str,
        amount: int,
        *,
        ledger: int | None = None,
        code: int | None = None,
        metadata: Mapping[str, Any] | None = None,
        pending: bool = False,
        timeout_ms: int | None = None,
    ) -> dict[str, Any]:
        """Moves `amount` (1 to 2^53-1) from `debit_account` to `credit_account` (two
        accounts of one `ledger`, default theirs); the transfer with its `state` and `seq`.

        `id` is the client's idempotency key (not starting `job:`): the same id and fields
        again answer the transfer with `duplicate: true`, other fields raise `Conflict` with
        `details["fields"]`. `pending=True` only holds the amount (`state` `pending`) until
        `post_transfer` or `void_transfer`, or until `timeout_ms` passes (then `expired`,
        the hold released). A flag or a closed account refuses it with `InvalidState`
        (`details["reason"]` `exceeds_credits`, `exceeds_debits`, `account_closed`,
        `overflow`); the refusal is kept under its id, and any repeat of that id raises
        `InvalidState` with reason `id_already_failed` and `details["original_reason"]`. An
        unknown account is `NotFound` (not kept). Crediting a missing `worker:` account
        creates it. Idempotent by `id`, so retried."""
        body: dict[str, Any] = {
            "id": id,
            "debit_account": debit_account,
            "credit_account": credit_account,
            "amount": amount,
        }
        body.update(_some(ledger=ledger, code=code))
        if metadata is not None:
            body["metadata"] = dict(metadata)
        if pending:
            body["pending"] = True
        if timeout_ms is not None:
            body["timeout_ms"] = timeout_ms
        out = await self._t.call("POST", "/v1/ledger/transfers", body=body, has_body=True)
        return cast("dict[str, Any]", out)

    @operation("POST", "/v1/ledger/transfers")
    async def transfers(
        self, transfers: Sequence[Mapping[str, Any]], *, atomic: bool = True
    ) -> list[dict[str, Any]]:
        """Makes many transfers (`{"id", "debit_account", "credit_account", "amount", ...}`
        each, as `transfer`) in one write.

        `atomic=True`: all or nothing; the transfers in order (repeats with `duplicate:
        true`). One that fails raises its error with `details["index"]` (and `field`
        `transfers[i]...` for invalid input), and nothing is written, not even that refusal.
        `atomic=False`: each on its own; one result per transfer, in order: `{"id", "ok":
        true, "duplicate"?, "transfer"}` or `{"id", "ok": false, "error"}` (a refusal is
        kept under its id, as for `transfer`). Idempotent by id, so retried."""
        body = {"transfers": [dict(t) for t in transfers], "atomic": atomic}
        out = await self._t.call("POST", "/v1/ledger/transfers", body=body, has_body=True)
        return cast("list[dict[str, Any]]", out["transfers" if atomic else "results"])

    @operation("POST", "/v1/ledger/transfers/{id}/post")
    async def post_transfer(self, id: str, amount: int | None = None) -> dict[str, Any]:
        """Posts a pending transfer: all of it, or `amount` of it (the rest released; more than
        held is `ValidationFailed`); the transfer, `state` `posted` with `posted_amount`. A
        repeat (no amount, or the same) answers `duplicate: true`, so retried; another amount
        raises `InvalidState` (`pending_already_posted`), as do a voided (`pending_already_voided`),
        expired (`pending_expired`) or not pending one (`not_pending`)."""
        path = f"/v1/ledger/transfers/{_seg(id)}/post"
        out = await self._t.call("POST", path, body=_some(amount=amount), has_body=True)
        return cast("dict[str, Any]", out)

    @operation("POST", "/v1/ledger/transfers/{id}/void")
    async def void_transfer(self, id: str) -> dict[str, Any]:
        """Voids a pending transfer, releasing its hold; the transfer, `state` `voided`. A
        repeat answers `duplicate: true`, so retried; a posted or expired one raises
        `InvalidState` (`details["reason"]`)."""
        return cast("dict[str, Any]", await self._t.call("POST", f"/v1/ledger/transfers/{_seg(id)}/void"))

    @operation("GET", "/v1/ledger/transfers/{id}")
    async def get_transfer(self, id: str) -> dict[str, Any]:
        """One transfer (a refused one too: `state` `refused` with its `reason`, no `seq`);
        `NotFound` for an unknown id."""
        return cast("dict[str, Any]", await self._t.call("GET", f"/v1/ledger/transfers/{_seg(id)}"))

    @operation("GET", "/v1/ledger/accounts/{id}/transfers")
    async def statement(
        self, account: str, *, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        """One page of an account's statement: the transfers debiting or crediting it, oldest
        first (by `seq`; refused ones left out): `{"transfers", "next_cursor"}`; pass
        `next_cursor` back as `cursor` for the next. `NotFound` for an unknown account."""
        params = _some(limit=limit, cursor=cursor)
        path = f"/v1/ledger/accounts/{_seg(account)}/transfers"
        return cast("dict[str, Any]", await self._t.call("GET", path, params=params or None))

    @operation("GET", "/v1/ledger/events")
    async def ledger_events(self, *, limit: int | None = None, cursor: str | None = None) -> dict[str, Any]:
        """One page of the ledger's audit trail, oldest first: `{"events", "next_cursor"}`,
        each event `{"seq", "type", "at", "data", "hash"}` (`seq` from 1 with no gap; `hash`
        the hex SHA-256 of the previous event's hash and `"{seq}\\n{type}\\n{at_ms}\\n{data}"`).
        Never pruned."""
        params = _some(limit=limit, cursor=cursor)
        return cast("dict[str, Any]", await self._t.call("GET", "/v1/ledger/events", params=params or None))

    @operation("POST", "/v1/ledger/verify")
    async def verify_ledger(self, *, full: bool = False, repair: bool = False) -> dict[str, Any]:
        """Replays the ledger's events (from the last snapshot, or from the first with `full`)
        checking the chain, the snapshots' digests, conservation and the live balances:
        `{"ok", "head_seq", "digest", "problems", "repaired"}`. `repair=True` (scope `admin`)
        rewrites balances from an intact chain and lifts a refusal of ledger writes. It can
        take long on a long chain: the client's `timeout` bounds it. Retried, but with
        `repair` only when the server refused it before writing."""
        body = {"full": full, "repair": repair}
        retry = REFUSED if repair else ALWAYS
        out = await self._t.call("POST", "/v1/ledger/verify", body=body, has_body=True, retry=retry)
        return cast("dict[str, Any]", out)

    # ---- schedules -----------------------------------------------------------------------------

    @operation("GET", "/v1/schedules")
    async def schedules(self) -> list[Schedule]:
        """Every schedule."""
        return cast("list[Schedule]", (await self._t.call("GET", "/v1/schedules"))["schedules"])

    @operation("POST", "/v1/schedules")
    async def create_schedule(
        self,
        name: str,
        cron: str,
        job: Mapping[str, Any],
        *,
        timezone: str | None = None,
        misfire: str | None = None,
        catch_up_max: int | None = None,
        paused: bool | None = None,
    ) -> Schedule:
        """Creates a cron schedule enqueueing `job` (a job spec without `run_at`, `delay_ms`,
        `unique_key`) at each tick; `Conflict` if the name exists, `ValidationFailed` with
        `position` for a bad expression. Not retried after a connection failure."""
        body = {"name": name, "cron": cron, "job": dict(job)}
        body.update(_some(timezone=timezone, misfire=misfire, catch_up_max=catch_up_max, paused=paused))
        out = await self._t.call("POST", "/v1/schedules", body=body, has_body=True, retry=REFUSED)
        return cast(Schedule, out)

    @operation("GET", "/v1/schedules/{name}")
    async def schedule(self, name: str, *, count: int | None = None) -> Schedule:
        """One schedule with its next `count` runs (default 5)."""
        params = {"count": count} if count is not None else None
        return cast(Schedule, await self._t.call("GET", f"/v1/schedules/{_seg(name)}", params=params))

    @operation("PATCH", "/v1/schedules/{name}")
    async def patch_schedule(self, name: str, **fields: Any) -> Schedule:
        """Changes a schedule (`cron`, `timezone`, `job`, `misfire`, `catch_up_max`, `paused`);
        absent fields stay."""
        out = await self._t.call("PATCH", f"/v1/schedules/{_seg(name)}", body=fields, has_body=True)
        return cast(Schedule, out)

    @operation("DELETE", "/v1/schedules/{name}")
    async def delete_schedule(self, name: str) -> Deleted:
        """Deletes a schedule (jobs it enqueued stay)."""
        return cast(Deleted, await self._t.call("DELETE", f"/v1/schedules/{_seg(name)}"))

    @operation("POST", "/v1/schedules/{name}/pause")
    async def pause_schedule(self, name: str) -> Schedule:
        """Pauses a schedule: its ticks are skipped until it resumes."""
        return cast(Schedule, await self._t.call("POST", f"/v1/schedules/{_seg(name)}/pause"))

    @operation("POST", "/v1/schedules/{name}/resume")
    async def resume_schedule(self, name: str) -> Schedule:
        """Resumes a schedule from its next tick (the paused period is not caught up)."""
        return cast(Schedule, await self._t.call("POST", f"/v1/schedules/{_seg(name)}/resume"))

    # ---- work items ----------------------------------------------------------------------------

    @operation("POST", "/v1/items")
    async def create_item(
        self,
        title: str,
        *,
        id: str | None = None,
        description: str | None = None,
        status: str | None = None,
        assignee: str | None = None,
        artifacts: Sequence[Mapping[str, Any]] | None = None,
        context: Mapping[str, Any] | None = None,
        agent: str | None = None,
    ) -> ItemResult:
        """Creates a work item (`status` `todo` by default, or `blocked`, or `in_progress`,
        which needs `agent` and assigns it); `{"item"}`, with `duplicate: true` when the same
        create was made before. `id` is the client's (1 to 128 of `[A-Za-z0-9._:-]`), else the
        server's UUIDv7; the same id with another body is `Conflict`.

        Retried (429, 503, connection failures) only with an `id`: a repeat of a create that
        was written answers it as a duplicate. Without one it is sent once (a lost answer may
        have made the item)."""
        body = _some(id=id, title=title, description=description, status=status, assignee=assignee)
        if artifacts is not None:
            body["artifacts"] = [dict(a) for a in artifacts]
        if context is not None:
            body["context"] = dict(context)
        if agent is not None:
            body["agent"] = agent
        retry = ALWAYS if id else NEVER
        out = await self._t.call("POST", "/v1/items", body=body, has_body=True, retry=retry)
        return cast(ItemResult, out)

    @operation("GET", "/v1/items/{id}")
    async def get_item(self, id: str, *, wait_version_gt: int | None = None, wait_ms: int = 0) -> Item:
        """One work item. With `wait_version_gt=N` and `wait_ms`, a long-poll: answers once the
        item's version is above N, or when `wait_ms` ends (then the item as it is)."""
        params = _some(wait_version_gt=wait_version_gt, wait_ms=wait_ms or None)
        out = await self._t.call("GET", f"/v1/items/{_seg(id)}", params=params or None, wait_ms=wait_ms)
        return cast(Item, out["item"])

    @operation("GET", "/v1/items")
    def list_items(
        self,
        status: str | None = None,
        assignee: str | None = None,
        *,
        limit: int | None = None,
        page_size: int | None = None,
        cursor: str | None = None,
    ) -> AsyncItemPager:
        """Work items ordered by id, optionally of one status and assignee: iterate it (pages
        are fetched lazily, following `next_cursor`) up to `limit` items, or call `.page()`."""
        params = {"status": status, "assignee": assignee}
        return AsyncItemPager(self._t, "/v1/items", params, cursor=cursor, limit=limit, page_size=page_size)

    @operation("GET", "/v1/items/{id}/history")
    def item_history(
        self,
        id: str,
        *,
        limit: int | None = None,
        page_size: int | None = None,
        cursor: str | None = None,
    ) -> AsyncHistoryPager:
        """A work item's versions, newest first (`{version, at, agent, mode, paths, patch,
        reason?}`): iterate it (lazy pages) up to `limit` entries, or call `.page()`."""
        path = f"/v1/items/{_seg(id)}/history"
        return AsyncHistoryPager(self._t, path, {}, cursor=cursor, limit=limit, page_size=page_size)

    @operation("PATCH", "/v1/items/{id}")
    async def patch_item(
        self,
        id: str,
        *,
        agent: str | None = None,
        expected_version: int | None = None,
        if_match: int | None = None,
        mode: str | None = None,
        title: str | None = None,
        description: str | None = None,
        assignee: str | None = None,
        unassign: bool = False,
        status: str | None = None,
        reopen: bool | None = None,
        reason: str | None = None,
        context: Mapping[str, Any] | None = None,
        artifacts_add: Sequence[Mapping[str, Any]] | None = None,
        artifacts_remove: Sequence[str] | None = None,
    ) -> PatchItemResult:
        """Changes a work item; `{"item", "changed"}`. Arguments left None are not sent.

        `context` is an RFC 7396 merge patch (a None value removes a key); `artifacts_add`
        (`{uri, meta?}`) adds or replaces by uri, `artifacts_remove` removes uris; `unassign`
        clears the assignee. A move to `in_progress` needs `agent` and assigns it.

        Compare-and-set: `expected_version` (a stale one raises `VersionConflict`, 409) or
        `if_match` (sent as `If-Match: "N"`; `PreconditionFailed`, 412), both carrying the
        `current` item. `mode="merge"` (the default, but for `if_match`) conflicts only on
        paths this write touches that changed since (never on `status` or artifacts);
        `"strict"` (the default with `if_match`) on any change since, and alone may `reopen` a
        terminal item. A refused move raises `InvalidState` (`details.reason`
        `assigned_to_other` when another agent holds it).

        Retried after a connection failure only when a repeat cannot apply twice: with a
        precondition, and strict or touching only conflict-checked fields (title, description,
        assignee, context); otherwise only when the server refused it before writing (429,
        503 `server_saturated`/`circuit_open`)."""
        body = _some(
            agent=agent,
            expected_version=expected_version,
            mode=mode,
            title=title,
            description=description,
            assignee=assignee,
            status=status,
            reopen=reopen,
            reason=reason,
        )
        if unassign:
            body["assignee"] = None
        if context is not None:
            body["context"] = dict(context)
        if artifacts_add is not None:
            body["artifacts_add"] = [dict(a) for a in artifacts_add]
        if artifacts_remove is not None:
            body["artifacts_remove"] = list(artifacts_remove)
        return await self._patch_item(id, body, if_match)

    async def _patch_item(self, id: str, body: dict[str, Any], if_match: int | None) -> PatchItemResult:
        out = await self._t.call(
            "PATCH",
            f"/v1/items/{_seg(id)}",
            body=body,
            has_body=True,
            retry=_patch_retry(body, if_match),
            headers=_if_match(if_match),
        )
        return cast(PatchItemResult, out)

    async def update_item(
        self,
        id: str,
        agent: str | None,
        fn: Callable[[Item], Mapping[str, Any] | None],
        *,
        mode: str | None = None,
        attempts: int = 3,
    ) -> PatchItemResult:
        """Read, change, compare-and-set: gets the item, calls `fn(item)` for a patch (a dict
        of `patch_item`'s wire fields: `title`, `status`, `context`, `artifacts_add`, ...; an
        empty one or None writes nothing) and writes it with the read `expected_version`.
        On `VersionConflict` it calls `fn` again on the conflict's `current` item and writes
        that, 2 to 50 ms later (random), up to `attempts` writes in all; the last conflict is
        raised. Any other error (`InvalidState` included) is raised at once, not retried."""
        item = await self.get_item(id)
        attempt = 1
        while True:
            patch = fn(item)
            if not patch:
                return {"item": item, "changed": False}
            body = dict(patch)
            body["expected_version"] = item["version"]
            if agent is not None:
                body["agent"] = agent
            if mode is not None:
                body.setdefault("mode", mode)
            try:
                return await self._patch_item(id, body, None)
            except VersionConflict as err:
                if attempt >= attempts:
                    raise
                attempt += 1
                current = err.current
                item = current if current is not None else await self.get_item(id)
                await asyncio.sleep(_jitter())

    @operation("POST", "/v1/items/batch")
    async def batch_items(self, ops: Sequence[Mapping[str, Any]], *, atomic: bool = True) -> list[Item]:
        """Applies ops all or nothing; one item per op, in order. An op is `{"op": "create",
        ...create_item's fields}`, `{"op": "patch", "id", ...patch_item's wire fields}` or
        `{"op": "check", "id", "expected_version"}`. A failing op writes nothing and raises
        its error with `field` `ops[i]`. Retried as its least safe op (see `create_item` and
        `patch_item`; checks always)."""
        ops = [dict(op) for op in ops]
        body = {"ops": ops, "atomic": atomic}
        out = await self._t.call("POST", "/v1/items/batch", body=body, has_body=True, retry=_batch_retry(ops))
        return cast("list[Item]", out["items"])

    # ---- agent messages ------------------------------------------------------------------------

    @operation("POST", "/v1/messages")
    async def send_message(
        self,
        to: str | Sequence[str],
        from_: str,
        body: Any,
        *,
        ttl_ms: int | None = None,
        dedup_key: str | None = None,
        reply_to: str | None = None,
        correlation_id: str | None = None,
    ) -> SendResult:
        """Sends `body` (any JSON, None for null) from agent `from_` to the inboxes of `to` (an
        agent or 1 to 100 of them), all or nothing; `{"id", "expires_at", "recipients"}`, each
        recipient with its `last_seen_at`. `ttl_ms` defaults to a day. A repeat with the same
        `from_` and `dedup_key` before the first expires answers the first send with
        `duplicate: true`. `QueueFull` (`details["agent"]`) when a recipient's inbox is full,
        `RateLimited` past the sender's rate (`retry_after`).

        Retried (429, 503, connection failures) with a `dedup_key`; without one only when the
        server refused it before writing (429, 503 `server_saturated`/`circuit_open`): a lost
        answer may have sent it."""
        recipients = [to] if isinstance(to, str) else list(to)
        payload: dict[str, Any] = {"to": recipients, "from": from_, "body": body}
        payload.update(
            _some(ttl_ms=ttl_ms, dedup_key=dedup_key, reply_to=reply_to, correlation_id=correlation_id)
        )
        retry = ALWAYS if dedup_key else REFUSED
        out = await self._t.call("POST", "/v1/messages", body=payload, has_body=True, retry=retry)
        return cast(SendResult, out)

    @operation("POST", "/v1/broadcasts")
    async def broadcast(
        self, from_: str, body: Any, *, channel: str | None = None, ttl_ms: int | None = None
    ) -> BroadcastResult:
        """Broadcasts `body` from agent `from_` on `channel` (default `all`): stored once, each
        subscriber receives it once (never its sender); `{"id", "channel", "seq",
        "expires_at"}`. Retried only when the server refused it before writing (429, 503
        `server_saturated`/`circuit_open`)."""
        payload: dict[str, Any] = {"from": from_, "body": body}
        payload.update(_some(channel=channel, ttl_ms=ttl_ms))
        out = await self._t.call("POST", "/v1/broadcasts", body=payload, has_body=True, retry=REFUSED)
        return cast(BroadcastResult, out)

    @operation("POST", "/v1/agents/{agent}/receive")
    async def receive(
        self,
        agent: str,
        *,
        max: int | None = None,
        wait_ms: int = 0,
        visibility_ms: int | None = None,
    ) -> list[Message]:
        """Receives up to `max` (default 1) messages of `agent`'s inbox, oldest first,
        long-polling up to `wait_ms` for a first. Each is hidden from other receives for
        `visibility_ms` (default 30 s); unacked, it comes back with `delivery_count` + 1 and a
        new `receipt`. Retried: a lost answer only delays its messages until their visibility
        ends."""
        payload = _some(max=max, wait_ms=wait_ms or None, visibility_ms=visibility_ms)
        path = f"/v1/agents/{_seg(agent)}/receive"
        out = await self._t.call("POST", path, body=payload, has_body=True, wait_ms=wait_ms)
        return cast("list[Message]", out["messages"])

    @operation("POST", "/v1/agents/{agent}/ack")
    async def ack(self, agent: str, receipts: str | Sequence[str]) -> list[ReceiptResult]:
        """Acknowledges received messages by receipt: done, never delivered again. One result
        per receipt, in order; `ok: false` with `error.code` `stale_lease` for a receipt that
        went stale (delivered again, acked or gone). Receipt-fenced, so retried."""
        payload = {"receipts": [receipts] if isinstance(receipts, str) else list(receipts)}
        out = await self._t.call("POST", f"/v1/agents/{_seg(agent)}/ack", body=payload, has_body=True)
        return cast("list[ReceiptResult]", out["results"])

    @operation("POST", "/v1/agents/{agent}/nack")
    async def nack(
        self, agent: str, receipts: str | Sequence[str], *, delay_ms: int | None = None
    ) -> list[ReceiptResult]:
        """Hands received messages back: visible again after `delay_ms` (default 0), the
        receipts stale; the delivery still counts towards `max_deliveries`. One result per
        receipt, in order (`stale_lease` as for `ack`). Receipt-fenced, so retried."""
        payload: dict[str, Any] = {"receipts": [receipts] if isinstance(receipts, str) else list(receipts)}
        if delay_ms is not None:
            payload["delay_ms"] = delay_ms
        out = await self._t.call("POST", f"/v1/agents/{_seg(agent)}/nack", body=payload, has_body=True)
        return cast("list[ReceiptResult]", out["results"])

    @operation("GET", "/v1/agents/{agent}/dead")
    def dead_messages(
        self,
        agent: str,
        *,
        limit: int | None = None,
        page_size: int | None = None,
        cursor: str | None = None,
    ) -> AsyncDeadMessagePager:
        """`agent`'s dead letters (delivered `[messages] max_deliveries` times unacked), oldest
        death first: iterate it (lazy pages) up to `limit` messages, or call `.page()`."""
        path = f"/v1/agents/{_seg(agent)}/dead"
        return AsyncDeadMessagePager(self._t, path, {}, cursor=cursor, limit=limit, page_size=page_size)

    @operation("POST", "/v1/agents/{agent}/dead/replay")
    async def replay_dead(self, agent: str, ids: Sequence[str] | None = None) -> int:
        """Puts `agent`'s dead letters (those of `ids`, else every one) back in its inbox, the
        delivery count reset and the ttl restarted; how many."""
        payload = {"ids": list(ids)} if ids is not None else {}
        path = f"/v1/agents/{_seg(agent)}/dead/replay"
        out = await self._t.call("POST", path, body=payload, has_body=True)
        return cast(int, out["replayed"])

    @operation("PUT", "/v1/agents/{agent}/channels")
    async def set_channels(self, agent: str, channels: Sequence[str]) -> list[ChannelCursor]:
        """Sets every channel `agent` is subscribed to (up to 64; leaving out `all` drops it);
        a new one starts at its head (older broadcasts are not received). The subscriptions
        now, each with its cursor."""
        payload = {"channels": list(channels)}
        path = f"/v1/agents/{_seg(agent)}/channels"
        out = await self._t.call("PUT", path, body=payload, has_body=True)
        return cast("list[ChannelCursor]", out["channels"])

    @operation("GET", "/v1/agents")
    def list_agents(
        self, *, limit: int | None = None, page_size: int | None = None, cursor: str | None = None
    ) -> AsyncAgentPager:
        """Agents (inboxes) by name with their `ready`, `in_flight` and `dead` counts and
        `last_seen_at` (a token restricted to agents sees only its own): iterate it (lazy
        pages) up to `limit` agents, or call `.page()`."""
        return AsyncAgentPager(self._t, "/v1/agents", {}, cursor=cursor, limit=limit, page_size=page_size)

    @operation("GET", "/v1/agents/{agent}")
    async def get_agent(self, name: str) -> AgentInfo:
        """One agent's inbox counts and `channels` (each with its cursor); `NotFound` for a
        name no send or receive ever used."""
        return cast(AgentInfo, await self._t.call("GET", f"/v1/agents/{_seg(name)}"))

    # ---- checkpoints (LangGraph) ---------------------------------------------------------------
    #
    # A LangGraph checkpoint store (`ferry.langgraph` builds savers on these). Typed values
    # (the checkpoint, blobs, writes) travel as `{"type", "data"}` with `data` in base64: these
    # methods take `data` as raw bytes and encode it, and decode it back to bytes in what they
    # return. `ns` is the checkpoint namespace ("" for a graph's root, `child:<task>` for a
    # subgraph's).

    @operation("PUT", "/v1/threads/{thread}/checkpoints/{id}")
    async def put_checkpoint(
        self,
        thread: str,
        checkpoint_id: str,
        *,
        checkpoint: TypedBytes | tuple[str, bytes],
        metadata: Mapping[str, Any],
        channel_versions: Mapping[str, str | int],
        blobs: Sequence[CheckpointBlob],
        parent_checkpoint_id: str | None = None,
        ns: str = "",
        delta_channels: Sequence[str] | None = None,
        job_id: str | None = None,
        lease: str | None = None,
        if_none_match: bool = False,
    ) -> CheckpointPutResult:
        """Stores checkpoint `checkpoint_id` of `thread` (in namespace `ns`): the serialized
        `checkpoint` (`{"type", "data"}` or a `(type, data)` pair, `data` raw bytes), its JSON
        `metadata` (at most 64 KiB), `channel_versions` (channel to version string; ints
        become their decimal string) and `blobs` (`{"channel", "version", "type", "data"}`,
        `data` raw bytes), one for every *new* version (type `empty`, data `b""` when the
        channel has no value then). A version sent before (by any checkpoint of the thread
        and ns) need not be sent again: blobs are stored once per version.

        The answer has `duplicate: true` when the same content was stored under this id
        (nothing written), `replaced: true` when other content was replaced; with
        `if_none_match` (`If-None-Match: *`) other content raises `Conflict` instead. A
        version with no blob sent or stored raises `ValidationFailed` (`field` `blobs`,
        `details["missing"]` the `{"channel", "version"}` pairs); sizes past the limits
        `PayloadTooLarge`. With `job_id` and `lease` (both or neither) the write is fenced:
        `StaleLease` unless `lease` is the job's current lease (nothing written), `NotFound`
        for an unknown job. Idempotent by id, so retried."""
        body: dict[str, Any] = {
            "parent_checkpoint_id": parent_checkpoint_id,
            "checkpoint": _typed(checkpoint),
            "metadata": dict(metadata),
            "channel_versions": {k: str(v) for k, v in channel_versions.items()},
            "blobs": _blobs_out(blobs),
        }
        if delta_channels is not None:
            body["delta_channels"] = list(delta_channels)
        body.update(_fence(job_id, lease))
        out = await self._t.call(
            "PUT",
            f"/v1/threads/{_seg(thread)}/checkpoints/{_seg(checkpoint_id)}",
            params={"ns": ns},
            body=body,
            has_body=True,
            headers={"if-none-match": "*"} if if_none_match else None,
        )
        return cast(CheckpointPutResult, out)

    @operation("POST", "/v1/threads/{thread}/checkpoints/{id}/writes")
    async def put_checkpoint_writes(
        self,
        thread: str,
        checkpoint_id: str,
        *,
        task_id: str,
        writes: Sequence[CheckpointWriteInput],
        task_path: str = "",
        ns: str = "",
        job_id: str | None = None,
        lease: str | None = None,
    ) -> CheckpointWritesResult:
        """Stores task `task_id`'s pending `writes` on checkpoint `checkpoint_id` (which may not
        be stored yet): each `{"channel", "type", "data", "idx"?}`, `data` raw bytes, `idx`
        defaulting to LangGraph's (`__error__` -1, `__scheduled__` -2, `__interrupt__` -3,
        `__resume__` -4, else the position in `writes`). A regular write is kept if its
        (task_id, idx) is new; a batch of only special channels replaces. `{"written"}`;
        a resent batch answers `written: 0, duplicate: true`. Fenced by `job_id` and `lease`
        as `put_checkpoint`. Idempotent, so retried."""
        body: dict[str, Any] = {"task_id": task_id, "task_path": task_path, "writes": _writes_out(writes)}
        body.update(_fence(job_id, lease))
        path = f"/v1/threads/{_seg(thread)}/checkpoints/{_seg(checkpoint_id)}/writes"
        out = await self._t.call("POST", path, params={"ns": ns}, body=body, has_body=True)
        return cast(CheckpointWritesResult, out)

    @operation("GET", "/v1/threads/{thread}/checkpoints/{id}")
    async def get_checkpoint(
        self, thread: str, checkpoint_id: str = "latest", *, ns: str = ""
    ) -> CheckpointRecord:
        """One checkpoint of `thread` in namespace `ns` (`latest`: the one with the greatest
        id) with its `checkpoint`, one blob per `channel_versions` entry (type `empty`
        included) and its pending writes sorted by (task_path, task_id, idx), every `data`
        decoded to bytes. `NotFound` when there is none."""
        path = f"/v1/threads/{_seg(thread)}/checkpoints/{_seg(checkpoint_id)}"
        return cast(CheckpointRecord, _record(await self._t.call("GET", path, params={"ns": ns})))

    @operation("GET", "/v1/checkpoints")
    def list_checkpoints(
        self,
        thread: str | None = None,
        *,
        ns: str | None = None,
        before: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        full: bool = False,
        limit: int | None = None,
        page_size: int | None = None,
        cursor: str | None = None,
    ) -> AsyncCheckpointPager:
        """Checkpoints newest first by id (byte order), of one `thread` or all, of one
        namespace `ns` or all (None), with ids below `before`, whose metadata contains
        `metadata` (PostgreSQL `@>` semantics: nested objects and arrays by containment).
        Without `full` the rows have no `checkpoint`, `blobs` nor `pending_writes`. Iterate it
        (pages of up to `page_size`, at most 1000, fetched lazily) up to `limit` rows, or call
        `.page()`."""
        params = {
            "thread": thread,
            "ns": ns,
            "before": before,
            "metadata": _json_param(metadata),
            "full": "true" if full else None,
        }
        return AsyncCheckpointPager(
            self._t, "/v1/checkpoints", params, cursor=cursor, limit=limit, page_size=page_size
        )

    @operation("GET", "/v1/threads")
    def list_threads(
        self,
        *,
        updated_before: str | None = None,
        limit: int | None = None,
        page_size: int | None = None,
        cursor: str | None = None,
    ) -> AsyncCheckpointThreadPager:
        """Checkpoint threads by id, optionally only those last updated before `updated_before`
        (RFC 3339): iterate it (lazy pages) up to `limit` threads, or call `.page()`."""
        params = {"updated_before": updated_before}
        return AsyncCheckpointThreadPager(
            self._t, "/v1/threads", params, cursor=cursor, limit=limit, page_size=page_size
        )

    @operation("GET", "/v1/threads/{thread}")
    async def get_thread(self, thread: str) -> CheckpointThread:
        """One checkpoint thread: its metadata, retention settings, counts and stored `bytes`;
        `NotFound` if absent."""
        return cast(CheckpointThread, await self._t.call("GET", f"/v1/threads/{_seg(thread)}"))

    @operation("PATCH", "/v1/threads/{thread}")
    async def patch_thread(
        self,
        thread: str,
        *,
        metadata: Mapping[str, Any] | EllipsisType | None = ...,
        idle_ttl_ms: int | EllipsisType | None = ...,
        keep_last: int | EllipsisType | None = ...,
    ) -> CheckpointThread:
        """Sets a thread's `metadata` (a JSON object), `idle_ttl_ms` and `keep_last`, creating
        the thread if absent; the thread. Arguments left out are not sent (they stay); None
        sends null (the server's default). Retried: a repeat sets the same."""
        body: dict[str, Any] = {}
        if metadata is not ...:
            body["metadata"] = None if metadata is None else dict(metadata)
        if idle_ttl_ms is not ...:
            body["idle_ttl_ms"] = idle_ttl_ms
        if keep_last is not ...:
            body["keep_last"] = keep_last
        out = await self._t.call("PATCH", f"/v1/threads/{_seg(thread)}", body=body, has_body=True)
        return cast(CheckpointThread, out)

    @operation("DELETE", "/v1/threads/{thread}")
    async def delete_thread(self, thread: str) -> ThreadDeleted:
        """Deletes a thread with its checkpoints, blobs and writes in every namespace;
        `{"thread", "deleted"}` (checkpoints; 0 if absent, so a repeat after a lost answer
        says 0). Retried."""
        return cast(ThreadDeleted, await self._t.call("DELETE", f"/v1/threads/{_seg(thread)}"))

    @operation("POST", "/v1/threads/{thread}/copy")
    async def copy_thread(self, thread: str, to: str) -> ThreadCopied:
        """Copies every checkpoint of `thread` (ids, parents, metadata, blobs and writes, all
        namespaces) to thread `to`, at once; `{"thread": to, "copied"}`. `NotFound` for an
        unknown source, `Conflict` when `to` has checkpoints. Retried only when the server
        refused it before writing (429, 503 `server_saturated`/`circuit_open`): a repeat of a
        copy that was made conflicts."""
        path = f"/v1/threads/{_seg(thread)}/copy"
        out = await self._t.call("POST", path, body={"to": to}, has_body=True, retry=REFUSED)
        return cast(ThreadCopied, out)

    @operation("POST", "/v1/checkpoints/prune")
    async def prune_checkpoints(
        self, threads: Sequence[str], strategy: str = "keep_latest"
    ) -> CheckpointsDeleted:
        """Prunes `threads`: `keep_latest` keeps each namespace's latest checkpoint (and what
        it needs to be read), `delete` deletes them all; `{"deleted"}` (checkpoints). A
        repeat changes nothing more, so retried."""
        body = {"threads": list(threads), "strategy": strategy}
        out = await self._t.call("POST", "/v1/checkpoints/prune", body=body, has_body=True)
        return cast(CheckpointsDeleted, out)

    @operation("POST", "/v1/checkpoints/delete-runs")
    async def delete_checkpoint_runs(self, run_ids: Sequence[str]) -> CheckpointsDeleted:
        """Deletes every checkpoint (with its writes) whose `metadata.run_id` is one of
        `run_ids`, in any thread or namespace; `{"deleted"}`. Retried."""
        body = {"run_ids": list(run_ids)}
        out = await self._t.call("POST", "/v1/checkpoints/delete-runs", body=body, has_body=True)
        return cast(CheckpointsDeleted, out)

    # ---- episodic memory -----------------------------------------------------------------------
    #
    # Episodes: what an agent did and how it ended, kept per `namespace` and searched by text
    # (BM25), by embedding (cosine), recency, importance and outcome. Writes and searches need
    # the token scope `memory`, reads `read`, `reconcile_memory` and `rebuild_memory` `admin`; a
    # token limited to namespaces reaches only their episodes (`Forbidden` otherwise, for an
    # absent id too).

    @operation("POST", "/v1/memory/episodes")
    async def add_episode(
        self,
        namespace: str,
        description: str | None = None,
        *,
        id: str | None = None,
        agent: str | None = None,
        domain: str | None = None,
        task_type: str | None = None,
        steps: Sequence[Mapping[str, Any]] | None = None,
        outcome: str | Mapping[str, Any] | None = None,
        importance: float | None = None,
        tags: Sequence[str] | None = None,
        artifacts: Sequence[Mapping[str, Any]] | None = None,
        metadata: Mapping[str, Any] | None = None,
        embedding: Sequence[float] | None = None,
        started_at: str | None = None,
        ended_at: str | None = None,
        job_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> EpisodeAdded:
        """Stores an episode in `namespace` (1 to 128 of `[A-Za-z0-9._:-]`); `{"id",
        "created_at"}`. Arguments left None are not sent.

        `description` and the steps' `action`s and the outcome's `summary` are searchable
        text; `agent`, `domain` and `task_type` are names (`domain`, then `task_type`, are
        hierarchical search's levels); `steps` are `{"tool", "action", "status",
        "latency_ms"?, "tokens"?}`; `outcome` a status (`success`, `partial`, `failure`,
        `abandoned`) or `{"status", "summary"?, "reward"?}` (reward in [-1, 1]);
        `importance` in [0, 1] (default 0.5); `artifacts` `{"kind", "uri", "sha256"?}`;
        `metadata` a JSON object; `embedding` any sequence of numbers (a numpy array too),
        the namespace's first fixing its dimension (another is `ValidationFailed`);
        `started_at` and `ended_at` RFC 3339 (recency counts from `ended_at`, else from
        storing); `id` keeps a UUID of the caller's (an import), else the server's UUIDv7.

        A resend with the same `idempotency_key` (per namespace) or `id` and the same body
        answers the stored id with `duplicate: true`, nothing written; with another body it
        raises `Conflict` (`details["id"]`). Every violation is in `ValidationFailed`'s
        `details["violations"]` (`field` the first). Retried (429, 503, connection failures)
        with an `idempotency_key` or `id`; without one only when the server refused it before
        writing (429, 503 `server_saturated`/`circuit_open`)."""
        body = _episode_out(
            {
                "namespace": namespace,
                "id": id,
                "agent": agent,
                "domain": domain,
                "task_type": task_type,
                "description": description,
                "steps": steps,
                "outcome": outcome,
                "importance": importance,
                "tags": tags,
                "artifacts": artifacts,
                "metadata": metadata,
                "embedding": embedding,
                "started_at": started_at,
                "ended_at": ended_at,
                "job_id": job_id,
                "idempotency_key": idempotency_key,
            }
        )
        retry = ALWAYS if idempotency_key or id else REFUSED
        out = await self._t.call("POST", "/v1/memory/episodes", body=body, has_body=True, retry=retry)
        return cast(EpisodeAdded, out)

    @operation("POST", "/v1/memory/episodes/batch")
    async def add_episodes(self, episodes: Sequence[Mapping[str, Any]]) -> EpisodesAdded:
        """Stores 1 to `limits.max_memory_batch` (100) episodes all or nothing: each a dict of
        `add_episode`'s fields with its `namespace` (an `embedding` may be a numpy array, an
        `outcome` a bare status); `{"ids"}` in order, a resend's the stored one. A failing
        episode raises its error (`ValidationFailed` with `field` `episodes[i]...`, `Conflict`
        for a key that holds another body) and stores none. Retried (429, 503, connection
        failures) only when every episode has an `idempotency_key` or `id`; otherwise only
        when the server refused it before writing."""
        body = [_episode_out(e) for e in episodes]
        keyed = bool(body) and all(e.get("idempotency_key") or e.get("id") for e in body)
        retry = ALWAYS if keyed else REFUSED
        out = await self._t.call(
            "POST", "/v1/memory/episodes/batch", body={"episodes": body}, has_body=True, retry=retry
        )
        return cast(EpisodesAdded, out)

    @operation("GET", "/v1/memory/episodes/{id}")
    async def get_episode(self, id: str) -> Episode:
        """One episode (its `version` is the `ETag`); `NotFound` if absent."""
        return cast(Episode, await self._t.call("GET", f"/v1/memory/episodes/{_seg(id)}"))

    @operation("GET", "/v1/memory/episodes")
    def list_episodes(
        self,
        namespace: str | None = None,
        *,
        agent: str | None = None,
        domain: str | None = None,
        task_type: str | None = None,
        tag: str | None = None,
        outcome: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int | None = None,
        page_size: int | None = None,
        cursor: str | None = None,
    ) -> AsyncEpisodePager:
        """Episodes newest first, of one `namespace` (or of every one the token may read), one
        `agent`, `domain`, `task_type`, carrying `tag`, with `outcome` status, that ended
        (else were stored) at or after `since` and before `until` (RFC 3339): iterate it
        (pages of up to `page_size`, fetched lazily) up to `limit` episodes, or call
        `.page()`."""
        params = {
            "namespace": namespace,
            "agent": agent,
            "domain": domain,
            "task_type": task_type,
            "tag": tag,
            "outcome": outcome,
            "since": since,
            "until": until,
        }
        return AsyncEpisodePager(
            self._t, "/v1/memory/episodes", params, cursor=cursor, limit=limit, page_size=page_size
        )

    @operation("PATCH", "/v1/memory/episodes/{id}")
    async def patch_episode(
        self,
        id: str,
        *,
        tags: Sequence[str] | None = None,
        importance: float | None = None,
        if_match: int | None = None,
    ) -> Episode:
        """Replaces an episode's `tags` and/or `importance` (nothing else of an episode
        changes; arguments left None are not sent); the episode, `version` + 1. With
        `if_match` (sent as `If-Match: "N"`) it writes only at version N, else raises
        `PreconditionFailed` (`details["actual_version"]`). `NotFound` if absent.

        Retried after a connection failure only with `if_match` (a repeat of a write that
        applied raises `PreconditionFailed`); otherwise only when the server refused it
        before writing (a repeat could undo a writer in between)."""
        body: dict[str, Any] = {}
        if tags is not None:
            body["tags"] = list(tags)
        if importance is not None:
            body["importance"] = importance
        out = await self._t.call(
            "PATCH",
            f"/v1/memory/episodes/{_seg(id)}",
            body=body,
            has_body=True,
            retry=ALWAYS if if_match is not None else REFUSED,
            headers=_if_match(if_match),
        )
        return cast(Episode, out)

    @operation("DELETE", "/v1/memory/episodes/{id}")
    async def delete_episode(self, id: str) -> None:
        """Deletes an episode with its derived rows; `NotFound` if absent (so a repeat after a
        lost answer raises it). Retried."""
        await self._t.call("DELETE", f"/v1/memory/episodes/{_seg(id)}", kind=EMPTY)

    @operation("POST", "/v1/memory/search")
    async def search_memory(
        self,
        namespace: str,
        text: str | None = None,
        *,
        embedding: Sequence[float] | None = None,
        k: int = 10,
        filters: Mapping[str, Any] | None = None,
        context: Mapping[str, Any] | None = None,
        weights: Mapping[str, float] | None = None,
        half_life_ms: int | None = None,
        diversity: float | None = None,
        mode: str | None = None,
        disable: Sequence[str] | None = None,
    ) -> SearchResult:
        """The `k` (1 to 100) episodes of `namespace` best matching `text` and/or `embedding`
        (of the namespace's dimension; a numpy array too), best first, each with its `score`
        and unweighted `components`, and how the search ran (`served_by`, `level`,
        `fallback_reason`, `candidates_scored`, `truncated`, `diversity`, `features`).

        `filters` always apply: `{"agents", "domain", "task_type", "tags_all", "tags_any",
        "outcome" (a status or a list), "since", "until"}`. `context` (`{"domain",
        "task_type"?}`) starts a hierarchical search at that level, widening to the domain
        and the namespace while candidates are few (`mode` `auto`, the default, or
        `hierarchical`; `flat` ignores it). `weights` (`{"text", "vector", "recency",
        "importance", "outcome"}`, each 0 to 1000; default 1, 1, 1, 0.5, 0.5) weigh the
        score's terms; `half_life_ms` is recency's (default 6 days); `diversity` is MMR's
        lambda in [0, 1] (default 0.7; 1 is plain score order); `disable` turns features off
        for this search (`hierarchical`, `diversity`, `recency`, `vectors`). A read, so
        retried."""
        body: dict[str, Any] = {"namespace": namespace, "k": k}
        if text is not None:
            body["text"] = text
        if embedding is not None:
            body["embedding"] = _vector(embedding)
        if filters is not None:
            body["filters"] = dict(filters)
        if context is not None:
            body["context"] = dict(context)
        if weights is not None:
            body["weights"] = dict(weights)
        if half_life_ms is not None:
            body["half_life_ms"] = half_life_ms
        if diversity is not None:
            body["diversity"] = {"lambda": diversity}
        if mode is not None:
            body["mode"] = mode
        if disable is not None:
            body["disable"] = list(disable)
        out = await self._t.call("POST", "/v1/memory/search", body=body, has_body=True)
        return cast(SearchResult, out)

    @operation("GET", "/v1/memory/stats")
    async def memory_stats(self, namespace: str | None = None) -> MemoryStats:
        """Episodes stored in `namespace` (default: every one the token may read), their
        `bytes`, `embedding_dims`, the oldest and newest `created_at`, and the rebuild's
        progress (`rebuild`)."""
        params = _some(namespace=namespace)
        return cast(MemoryStats, await self._t.call("GET", "/v1/memory/stats", params=params or None))

    @operation("POST", "/v1/memory/reconcile")
    async def reconcile_memory(
        self, namespace: str | None = None, *, repair: bool = False
    ) -> ReconcileReport:
        """Recomputes every derived row (full-text, tags, vectors) of the episodes of
        `namespace` (default all) and counts those that differ: `{"checked", "mismatches":
        {"fts", "tags", "embeddings"}, "repaired"}`; `repair=True` rewrites them. Scope
        `admin`. Retried, but with `repair` only when the server refused it before writing.
        Follows the server's `next_cursor` until every episode was checked."""
        body: dict[str, Any] = {"repair": repair}
        if namespace is not None:
            body["namespace"] = namespace
        retry = REFUSED if repair else ALWAYS
        total: ReconcileReport = {
            "checked": 0,
            "mismatches": {"fts": 0, "tags": 0, "embeddings": 0},
            "repaired": 0,
            "next_cursor": None,
        }
        while True:  # the server answers within its time budget, with a cursor to go on from
            out = await self._t.call("POST", "/v1/memory/reconcile", body=body, has_body=True, retry=retry)
            part = cast(ReconcileReport, out)
            total["checked"] += part["checked"]
            total["repaired"] += part["repaired"]
            m, got = total["mismatches"], part["mismatches"]
            m["fts"], m["tags"] = m["fts"] + got["fts"], m["tags"] + got["tags"]
            m["embeddings"] += got["embeddings"]
            if not part.get("next_cursor"):
                return total
            body["cursor"] = part["next_cursor"]

    @operation("POST", "/v1/memory/rebuild")
    async def rebuild_memory(self, namespace: str | None = None) -> RebuildProgress:
        """Starts rewriting every derived row of `namespace` (default all) in the background;
        its progress at the start (`{"running": true, "done": 0, "total"}`; later in
        `memory_stats()["rebuild"]`). `InvalidState` while one runs. Scope `admin`. Retried
        only when the server refused it before starting (a repeat of one that started raises
        `InvalidState` while it runs)."""
        body = _some(namespace=namespace)
        out = await self._t.call("POST", "/v1/memory/rebuild", body=body, has_body=True, retry=REFUSED)
        return cast(RebuildProgress, out)

    # ---- events --------------------------------------------------------------------------------

    @operation("GET", "/v1/events/stream")
    def events(
        self,
        *,
        since: int | None = None,
        queue: str | Sequence[str] | None = None,
        job_id: str | Sequence[str] | None = None,
        tag: str | Sequence[str] | None = None,
        type: str | Sequence[str] | None = None,
    ) -> AsyncEventStream:
        """Follows events by server-sent events, after cursor `since` (default: from now),
        filtered by queues, job ids, tags and types. Across disconnects and server restarts it
        resumes from the last delivered cursor (`Last-Event-ID`): no event is skipped or
        repeated; `.cursor` is where to resume later."""
        return AsyncEventStream(self._t, _filters(queue, job_id, tag, type), since)

    @operation("GET", "/v1/events")
    async def poll_events(
        self,
        *,
        since: int | None = None,
        wait_ms: int = 0,
        limit: int | None = None,
        queue: str | Sequence[str] | None = None,
        job_id: str | Sequence[str] | None = None,
        tag: str | Sequence[str] | None = None,
        type: str | Sequence[str] | None = None,
    ) -> EventsPage:
        """One long-poll: events after `since` (waiting up to `wait_ms` for a first); pass
        `next_cursor` back as `since`."""
        params = _filters(queue, job_id, tag, type)
        params.update(_some(since=since, wait_ms=wait_ms or None, limit=limit))
        return cast(EventsPage, await self._t.call("GET", "/v1/events", params=params, wait_ms=wait_ms))

    @operation("GET", "/v1/ws")
    async def event_socket(
        self,
        *,
        since: int | None = None,
        queue: str | Sequence[str] | None = None,
        job_id: str | Sequence[str] | None = None,
        tag: str | Sequence[str] | None = None,
        type: str | Sequence[str] | None = None,
    ) -> AsyncEventSocket:
        """A WebSocket on `/v1/ws` (needs the `ws` extra): the rooms of `queue`, `job_id` and
        `tag` are joined at connect, more with `.subscribe()`; messages are events and notices."""
        params = _filters(queue, job_id, tag, type)
        params.update(_some(since=since))
        return await AsyncEventSocket.connect(self._t, params)

    # ---- tokens, workers, hosts ----------------------------------------------------------------

    @operation("GET", "/v1/tokens")
    async def tokens(self) -> list[TokenRecord]:
        """Every API token, revoked ones included (never their secrets)."""
        return cast("list[TokenRecord]", (await self._t.call("GET", "/v1/tokens"))["tokens"])

    @operation("POST", "/v1/tokens")
    async def create_token(
        self,
        name: str,
        scopes: Sequence[str],
        *,
        queues: Sequence[str] | None = None,
        agents: Sequence[str] | None = None,
        namespaces: Sequence[str] | None = None,
    ) -> NewToken:
        """Mints a token (scopes `admin`, `produce`, `work`, `read`, `items`, `messages`,
        `ledger`, `checkpoints`, `memory`), optionally limited to queues, to agents (it then
        sends only as, and reads only the inboxes of, its agents; work-item writes must name
        one as `agent`) or to memory namespaces (it reaches only their episodes); its secret,
        `token`, is shown only this once. Not retried after a connection failure."""
        body: dict[str, Any] = {"name": name, "scopes": list(scopes)}
        if queues is not None:
            body["queues"] = list(queues)
        if agents is not None:
            body["agents"] = list(agents)
        if namespaces is not None:
            body["namespaces"] = list(namespaces)
        return cast(
            NewToken, await self._t.call("POST", "/v1/tokens", body=body, has_body=True, retry=REFUSED)
        )

    @operation("DELETE", "/v1/tokens/{id}")
    async def revoke_token(self, id: str) -> TokenRecord:
        """Revokes a token; returns its record."""
        return cast(TokenRecord, await self._t.call("DELETE", f"/v1/tokens/{_seg(id)}"))

    @operation("GET", "/v1/workers")
    async def workers(self) -> list[WorkerInfo]:
        """Workers the server has heard from, `active` or `lost`, with their jobs in flight."""
        return cast("list[WorkerInfo]", (await self._t.call("GET", "/v1/workers"))["workers"])

    @operation("GET", "/v1/hosts")
    async def hosts(self) -> list[Host]:
        """Registered hosts with their probed status and recent probes."""
        return cast("list[Host]", (await self._t.call("GET", "/v1/hosts"))["hosts"])

    @operation("POST", "/v1/hosts")
    async def create_host(self, name: str, health_url: str) -> Host:
        """Registers a host whose `health_url` (http://) the server probes."""
        body = {"name": name, "health_url": health_url}
        return cast(Host, await self._t.call("POST", "/v1/hosts", body=body, has_body=True, retry=REFUSED))

    @operation("DELETE", "/v1/hosts/{name}")
    async def delete_host(self, name: str) -> None:
        """Forgets a host."""
        await self._t.call("DELETE", f"/v1/hosts/{_seg(name)}", kind=EMPTY)

    # ---- health and observability --------------------------------------------------------------

    @operation("GET", "/healthz")
    async def health(self) -> Health:
        """Liveness: whether the process answers (no token needed)."""
        return cast(Health, await self._t.call("GET", "/healthz"))

    @operation("GET", "/readyz")
    async def ready(self) -> Health:
        """Readiness: `ready`, or `unavailable` with a `reason` (answered, not raised)."""
        return cast(Health, await self._t.call("GET", "/readyz", retry=NEVER, accept=503))

    @operation("GET", "/v1/server")
    async def server_info(self) -> ServerInfo:
        """Version, backend, uptime, memory, database size and whether auth is on."""
        return cast(ServerInfo, await self._t.call("GET", "/v1/server"))

    @operation("GET", "/v1/stats")
    async def stats(self) -> Stats:
        """Throughput, error rates and latencies over 1 m, 5 m and 1 h, and the backlog now."""
        return cast(Stats, await self._t.call("GET", "/v1/stats"))

    @operation("GET", "/v1/advice")
    async def advice(self, *, record: bool = False) -> Advice:
        """The scaling advisor's verdict now, with its cause and remedy (`record` keeps it in
        the history)."""
        params = {"record": "true"} if record else None
        return cast(Advice, await self._t.call("GET", "/v1/advice", params=params))

    @operation("GET", "/v1/advice/history")
    async def advice_history(self) -> list[Advice]:
        """The advisor's past verdicts, oldest first."""
        return cast("list[Advice]", (await self._t.call("GET", "/v1/advice/history"))["decisions"])

    @operation("GET", "/v1/backup")
    async def backup(self, to: str | os.PathLike[str]) -> BackupReceipt:
        """A consistent copy of the server's SQLite database (admin scope), taken online and
        written to `to` once its size and SHA-256 match what the server stated."""
        out = await self._t.download("/v1/backup", Path(to), "x-ferry-backup-sha256")
        return cast(BackupReceipt, out)

    @operation("GET", "/metrics")
    async def metrics(self) -> str:
        """Prometheus metrics, in the text exposition format."""
        return cast(str, await self._t.call("GET", "/metrics", kind=TEXT))

    @operation("GET", "/v1/openapi.json")
    async def openapi(self) -> dict[str, Any]:
        """The server's OpenAPI document (what this client covers)."""
        return cast("dict[str, Any]", await self._t.call("GET", "/v1/openapi.json"))
