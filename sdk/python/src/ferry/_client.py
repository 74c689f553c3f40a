"""`ferry.Client` and `ferry.AsyncClient`: one method per operation of the server's OpenAPI
document, the same names and arguments on both (the async one awaits). Results are the
server's JSON as parsed (typed by `ferry.types`), errors `ferry.FerryError` subclasses by
code; transient failures are retried as `ferry._http` describes.

Each method carries `__ferry_operation__` (method, path), so a test can check that every
operation of a running server's `/v1/openapi.json` has a method on both clients.

`Client` is generated from the same method list as `AsyncClient` (`async`/`await` removed):
change both together.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import quote

from ferry._events import AsyncEventSocket, AsyncEventStream, EventSocket, EventStream
from ferry._http import ALWAYS, EMPTY, NEVER, REFUSED, TEXT, AsyncTransport, SyncTransport
from ferry.types import (
    Advice,
    BatchResult,
    ClaimedJob,
    Deleted,
    EnqueueBatchResult,
    EnqueueResult,
    EventsPage,
    FailResult,
    Health,
    HeartbeatOutcome,
    HeartbeatResult,
    Host,
    Job,
    JobsPage,
    LimitsResult,
    NewToken,
    PauseResult,
    PurgeResult,
    QueueStats,
    ReplayResult,
    Schedule,
    ServerInfo,
    StateResult,
    Stats,
    TokenRecord,
    WorkerInfo,
)

__all__ = ["AsyncClient", "AsyncJobPager", "Client", "JobPager", "operation", "operations"]

DEFAULT_URL = "http://127.0.0.1:7700"

_F = TypeVar("_F", bound=Callable[..., Any])


def operation(method: str, path: str) -> Callable[[_F], _F]:
    """Marks a client method as the one for `method path` of the OpenAPI document."""

    def mark(fn: _F) -> _F:
        fn.__ferry_operation__ = (method, path)  # type: ignore[attr-defined]
        return fn

    return mark


def operations(cls: type) -> dict[tuple[str, str], list[str]]:
    """Every (method, path) a client class covers, with the names of its methods."""
    out: dict[tuple[str, str], list[str]] = {}
    for name in dir(cls):
        op = getattr(getattr(cls, name, None), "__ferry_operation__", None)
        if op is not None:
            out.setdefault(op, []).append(name)
    return out


def _seg(value: str) -> str:
    """A path segment, percent-encoded (ids and queue names pass unchanged)."""
    return quote(str(value), safe="")


def _some(**kw: Any) -> dict[str, Any]:
    """The arguments that were given (not None)."""
    return {k: v for k, v in kw.items() if v is not None}


def _csv(value: str | Sequence[str] | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return ",".join(value)


def _filters(
    queue: str | Sequence[str] | None,
    job_id: str | Sequence[str] | None,
    tag: str | Sequence[str] | None,
    type: str | Sequence[str] | None,
) -> dict[str, Any]:
    """The event filters of a query: each a comma-separated list."""
    return _some(queue=_csv(queue), job_id=_csv(job_id), tag=_csv(tag), type=_csv(type))


def _selector(ids: Sequence[str] | None, queue: str | None) -> dict[str, Any]:
    if (ids is None) == (queue is None):
        raise ValueError("give exactly one of ids or queue")
    return {"ids": list(ids)} if ids is not None else {"queue": queue}


def _default_worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _env_url(url: str | None) -> str:
    return url or os.environ.get("FERRY_URL") or DEFAULT_URL


def _env_token(token: str | None) -> str | None:
    return token if token is not None else os.environ.get("FERRY_TOKEN") or None


class _PagerBase:
    def __init__(
        self,
        transport: Any,
        path: str,
        params: Mapping[str, Any],
        *,
        cursor: str | None,
        limit: int | None,
        page_size: int | None,
    ) -> None:
        self._t = transport
        self._path = path
        self._params = _some(**params)
        self._cursor = cursor
        self._limit = limit
        size = page_size or 100
        if limit is not None:
            size = max(1, min(size, limit))
        self._size = size

    def _query(self, cursor: str | None) -> dict[str, Any]:
        q = dict(self._params)
        q["limit"] = self._size
        if cursor:
            q["cursor"] = cursor
        return q


class JobPager(_PagerBase):
    """Jobs of a list call: iterating follows `next_cursor` page by page (fetched lazily) up
    to `limit` jobs; `.page()` fetches one page, `.pages()` iterates pages."""

    def page(self, cursor: str | None = None) -> JobsPage:
        """One page from `cursor` (default the list's start)."""
        out = self._t.call("GET", self._path, params=self._query(cursor or self._cursor))
        return cast(JobsPage, out)

    def pages(self) -> Iterator[JobsPage]:
        """Every page in turn."""
        cursor = self._cursor
        while True:
            page = self.page(cursor)
            yield page
            cursor = page.get("next_cursor")
            if not cursor or not page["jobs"]:
                return

    def __iter__(self) -> Iterator[Job]:
        left = self._limit
        for page in self.pages():
            for job in page["jobs"]:
                if left is not None:
                    if left <= 0:
                        return
                    left -= 1
                yield job
            if left is not None and left <= 0:
                return


class AsyncJobPager(_PagerBase):
    """Jobs of a list call: `async for` follows `next_cursor` page by page (fetched lazily) up
    to `limit` jobs; `await .page()` fetches one page, `.pages()` iterates pages."""

    async def page(self, cursor: str | None = None) -> JobsPage:
        """One page from `cursor` (default the list's start)."""
        out = await self._t.call("GET", self._path, params=self._query(cursor or self._cursor))
        return cast(JobsPage, out)

    async def pages(self) -> AsyncIterator[JobsPage]:
        """Every page in turn."""
        cursor = self._cursor
        while True:
            page = await self.page(cursor)
            yield page
            cursor = page.get("next_cursor")
            if not cursor or not page["jobs"]:
                return

    def __aiter__(self) -> AsyncIterator[Job]:
        return _AsyncJobs(self)

    async def all(self) -> list[Job]:
        """Every job of the list (up to `limit`), as one list."""
        return [job async for job in self]


class _AsyncJobs(AsyncIterator[Job]):
    """One pass over an `AsyncJobPager` (a plain iterator: leaving it early needs no cleanup)."""

    def __init__(self, pager: AsyncJobPager) -> None:
        self._pager = pager
        self._buf: list[Job] = []
        self._i = 0
        self._cursor = pager._cursor
        self._first = True
        self._left = pager._limit

    async def __anext__(self) -> Job:
        if self._left is not None and self._left <= 0:
            raise StopAsyncIteration
        while self._i >= len(self._buf):
            if not self._first and not self._cursor:
                raise StopAsyncIteration
            page = await self._pager.page(self._cursor)
            self._first = False
            self._buf, self._i = page["jobs"], 0
            self._cursor = page.get("next_cursor") if page["jobs"] else None
        job = self._buf[self._i]
        self._i += 1
        if self._left is not None:
            self._left -= 1
        return job


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
    async def enqueue(self, queue: str, payload: Any = None, **fields: Any) -> EnqueueResult:
        """Enqueues one job; `fields` are the job spec's others (`priority`, `delay_ms`, `run_at`,
        `max_attempts`, `backoff`, `lease_ms`, `timeout_ms`, `unique_key`, `depends_on`, `tags`).

        Retried (429, 503, connection failures) only with a `unique_key`, which deduplicates
        only while the first job is unfinished (a finished job's key can be enqueued again);
        without one it is sent once and any failure raises (`retry_after` says when to try
        again), so a lost answer never enqueues twice.
        """
        body = {"queue": queue, **fields}
        if payload is not None:
            body["payload"] = payload
        retry = ALWAYS if fields.get("unique_key") else NEVER
        return cast(
            EnqueueResult, await self._t.call("POST", "/v1/jobs", body=body, has_body=True, retry=retry)
        )

    @operation("POST", "/v1/jobs")
    async def enqueue_batch(self, jobs: Sequence[Mapping[str, Any]]) -> EnqueueBatchResult:
        """Enqueues job specs (each with its `queue`) all or nothing; one id per job, in order.
        Retried (429, 503, connection failures) only when every job has a `unique_key`."""
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
        self, id: str, lease: str, *, extend_ms: int | None = None, worker: str | None = None
    ) -> HeartbeatOutcome:
        """Extends a lease (by the job's `lease_ms`, or `extend_ms`); `StaleLease` when it is
        lost. Lease-fenced, so retried."""
        body: dict[str, Any] = {"lease": lease}
        if extend_ms is not None:
            body["extend_ms"] = extend_ms
        if worker or self._name:
            body["worker"] = worker or self._name
        out = await self._t.call("POST", f"/v1/jobs/{_seg(id)}/heartbeat", body=body, has_body=True)
        return cast(HeartbeatOutcome, out)

    @operation("POST", "/v1/jobs/heartbeat")
    async def heartbeat_batch(
        self, items: list[dict[str, Any]], *, worker: str | None = None
    ) -> list[HeartbeatResult]:
        """Extends many leases at once (items `{id, lease, extend_ms?}`); one result per item,
        in order, `ok: false` with `stale_lease` for a lost one. Lease-fenced, so retried."""
        body: dict[str, Any] = {"items": items}
        if worker or self._name:
            body["worker"] = worker or self._name
        out = await self._t.call("POST", "/v1/jobs/heartbeat", body=body, has_body=True)
        return cast("list[HeartbeatResult]", out["results"])

    @operation("POST", "/v1/jobs/{id}/complete")
    async def complete(self, id: str, lease: str, result: Any = None) -> StateResult:
        """Completes a job with an optional JSON `result`; `StaleLease` if the lease was lost
        (the work is discarded). Lease-fenced, so retried."""
        body: dict[str, Any] = {"lease": lease}
        if result is not None:
            body["result"] = result
        out = await self._t.call("POST", f"/v1/jobs/{_seg(id)}/complete", body=body, has_body=True)
        return cast(StateResult, out)

    @operation("POST", "/v1/jobs/{id}/fail")
    async def fail(self, id: str, lease: str, error: str = "", *, retry: bool = True) -> FailResult:
        """Fails an attempt: retried after backoff, or dead at `max_attempts` or with
        `retry=False`. Lease-fenced, so the request itself is retried."""
        body = {"lease": lease, "error": error, "retry": retry}
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
        """Completes many jobs (items `{id, lease, result?}`), each on its own; one result per
        item, in order. Lease-fenced, so retried."""
        out = await self._t.call("POST", "/v1/jobs/complete", body={"items": items}, has_body=True)
        return cast("list[BatchResult]", out["results"])

    @operation("POST", "/v1/jobs/fail")
    async def fail_batch(self, items: list[dict[str, Any]]) -> list[BatchResult]:
        """Fails many attempts (items `{id, lease, error, retry?}`), each on its own; one result
        per item, in order. Lease-fenced, so retried."""
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
        self, name: str, scopes: Sequence[str], *, queues: Sequence[str] | None = None
    ) -> NewToken:
        """Mints a token (scopes `admin`, `produce`, `work`, `read`, optionally limited to
        queues); its secret, `token`, is shown only this once. Not retried after a connection
        failure."""
        body: dict[str, Any] = {"name": name, "scopes": list(scopes)}
        if queues is not None:
            body["queues"] = list(queues)
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
    async def advice(self) -> Advice:
        """The scaling advisor's verdict now, with its justification."""
        return cast(Advice, await self._t.call("GET", "/v1/advice"))

    @operation("GET", "/v1/advice/history")
    async def advice_history(self) -> list[Advice]:
        """The advisor's past verdicts, oldest first."""
        return cast("list[Advice]", (await self._t.call("GET", "/v1/advice/history"))["decisions"])

    @operation("GET", "/metrics")
    async def metrics(self) -> str:
        """Prometheus metrics, in the text exposition format."""
        return cast(str, await self._t.call("GET", "/metrics", kind=TEXT))

    @operation("GET", "/v1/openapi.json")
    async def openapi(self) -> dict[str, Any]:
        """The server's OpenAPI document (what this client covers)."""
        return cast("dict[str, Any]", await self._t.call("GET", "/v1/openapi.json"))


class Client:
    """A ferry server for blocking code (scripts, web handlers, threads).

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
        self._t = SyncTransport(
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
        return f"Client({self._t.url!r}, name={self._name!r})"

    def close(self) -> None:
        """Closes the connection pool."""
        self._t.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- jobs ----------------------------------------------------------------------------------

    @operation("POST", "/v1/jobs")
    def enqueue(self, queue: str, payload: Any = None, **fields: Any) -> EnqueueResult:
        """Enqueues one job; `fields` are the job spec's others (`priority`, `delay_ms`, `run_at`,
        `max_attempts`, `backoff`, `lease_ms`, `timeout_ms`, `unique_key`, `depends_on`, `tags`).

        Retried (429, 503, connection failures) only with a `unique_key`, which deduplicates
        only while the first job is unfinished (a finished job's key can be enqueued again);
        without one it is sent once and any failure raises (`retry_after` says when to try
        again), so a lost answer never enqueues twice.
        """
        body = {"queue": queue, **fields}
        if payload is not None:
            body["payload"] = payload
        retry = ALWAYS if fields.get("unique_key") else NEVER
        return cast(EnqueueResult, self._t.call("POST", "/v1/jobs", body=body, has_body=True, retry=retry))

    @operation("POST", "/v1/jobs")
    def enqueue_batch(self, jobs: Sequence[Mapping[str, Any]]) -> EnqueueBatchResult:
        """Enqueues job specs (each with its `queue`) all or nothing; one id per job, in order.
        Retried (429, 503, connection failures) only when every job has a `unique_key`."""
        jobs = list(jobs)
        retry = ALWAYS if jobs and all(j.get("unique_key") for j in jobs) else NEVER
        out = self._t.call("POST", "/v1/jobs", body={"jobs": jobs}, has_body=True, retry=retry)
        return cast(EnqueueBatchResult, out)

    @operation("POST", "/v1/import")
    def import_jobs(self, jobs: Sequence[Mapping[str, Any]]) -> EnqueueBatchResult:
        """Imports jobs from another system, all or nothing: items `{"job": spec, "state":
        "ready"|"completed", "result"?}`, each job with a `unique_key` (dedup in any state, so
        retrying is safe)."""
        out = self._t.call("POST", "/v1/import", body={"jobs": list(jobs)}, has_body=True)
        return cast(EnqueueBatchResult, out)

    @operation("POST", "/v1/queues/{queue}/claim")
    def claim(
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
        out = self._t.call("POST", path, body=body, has_body=True, wait_ms=wait_ms)
        return cast("list[ClaimedJob]", out["jobs"])

    @operation("POST", "/v1/jobs/{id}/heartbeat")
    def heartbeat(
        self, id: str, lease: str, *, extend_ms: int | None = None, worker: str | None = None
    ) -> HeartbeatOutcome:
        """Extends a lease (by the job's `lease_ms`, or `extend_ms`); `StaleLease` when it is
        lost. Lease-fenced, so retried."""
        body: dict[str, Any] = {"lease": lease}
        if extend_ms is not None:
            body["extend_ms"] = extend_ms
        if worker or self._name:
            body["worker"] = worker or self._name
        out = self._t.call("POST", f"/v1/jobs/{_seg(id)}/heartbeat", body=body, has_body=True)
        return cast(HeartbeatOutcome, out)

    @operation("POST", "/v1/jobs/heartbeat")
    def heartbeat_batch(
        self, items: list[dict[str, Any]], *, worker: str | None = None
    ) -> list[HeartbeatResult]:
        """Extends many leases at once (items `{id, lease, extend_ms?}`); one result per item,
        in order, `ok: false` with `stale_lease` for a lost one. Lease-fenced, so retried."""
        body: dict[str, Any] = {"items": items}
        if worker or self._name:
            body["worker"] = worker or self._name
        out = self._t.call("POST", "/v1/jobs/heartbeat", body=body, has_body=True)
        return cast("list[HeartbeatResult]", out["results"])

    @operation("POST", "/v1/jobs/{id}/complete")
    def complete(self, id: str, lease: str, result: Any = None) -> StateResult:
        """Completes a job with an optional JSON `result`; `StaleLease` if the lease was lost
        (the work is discarded). Lease-fenced, so retried."""
        body: dict[str, Any] = {"lease": lease}
        if result is not None:
            body["result"] = result
        out = self._t.call("POST", f"/v1/jobs/{_seg(id)}/complete", body=body, has_body=True)
        return cast(StateResult, out)

    @operation("POST", "/v1/jobs/{id}/fail")
    def fail(self, id: str, lease: str, error: str = "", *, retry: bool = True) -> FailResult:
        """Fails an attempt: retried after backoff, or dead at `max_attempts` or with
        `retry=False`. Lease-fenced, so the request itself is retried."""
        body = {"lease": lease, "error": error, "retry": retry}
        out = self._t.call("POST", f"/v1/jobs/{_seg(id)}/fail", body=body, has_body=True)
        return cast(FailResult, out)

    @operation("POST", "/v1/jobs/{id}/release")
    def release(self, id: str, lease: str) -> dict[str, Any]:
        """Gives a claimed, unstarted job back: ready at once, the attempt not counted
        (`{"id", "state"}`, a `StateResult`). Lease-fenced, so retried."""
        out = self._t.call("POST", f"/v1/jobs/{_seg(id)}/release", body={"lease": lease}, has_body=True)
        return cast("dict[str, Any]", out)

    @operation("POST", "/v1/jobs/complete")
    def complete_batch(self, items: list[dict[str, Any]]) -> list[BatchResult]:
        """Completes many jobs (items `{id, lease, result?}`), each on its own; one result per
        item, in order. Lease-fenced, so retried."""
        out = self._t.call("POST", "/v1/jobs/complete", body={"items": items}, has_body=True)
        return cast("list[BatchResult]", out["results"])

    @operation("POST", "/v1/jobs/fail")
    def fail_batch(self, items: list[dict[str, Any]]) -> list[BatchResult]:
        """Fails many attempts (items `{id, lease, error, retry?}`), each on its own; one result
        per item, in order. Lease-fenced, so retried."""
        out = self._t.call("POST", "/v1/jobs/fail", body={"items": items}, has_body=True)
        return cast("list[BatchResult]", out["results"])

    @operation("POST", "/v1/jobs/{id}/cancel")
    def cancel(self, id: str, reason: str | None = None) -> StateResult:
        """Cancels a job that is not running (`InvalidState` if it runs or has finished)."""
        body = {"reason": reason} if reason is not None else {}
        out = self._t.call("POST", f"/v1/jobs/{_seg(id)}/cancel", body=body, has_body=True)
        return cast(StateResult, out)

    @operation("GET", "/v1/jobs/{id}")
    def get_job(self, id: str) -> Job:
        """One job with its history (errors of every attempt, result, timestamps)."""
        return cast(Job, self._t.call("GET", f"/v1/jobs/{_seg(id)}"))

    @operation("GET", "/v1/jobs")
    def list_jobs(
        self,
        queue: str | None = None,
        state: str | None = None,
        *,
        limit: int | None = None,
        page_size: int | None = None,
        cursor: str | None = None,
    ) -> JobPager:
        """Jobs in insertion order, optionally of one queue and state: iterate it (pages are
        fetched lazily, following `next_cursor`) up to `limit` jobs, or call `.page()`."""
        params = {"queue": queue, "state": state}
        return JobPager(self._t, "/v1/jobs", params, cursor=cursor, limit=limit, page_size=page_size)

    # ---- queues --------------------------------------------------------------------------------

    @operation("GET", "/v1/queues")
    def queues(self) -> list[QueueStats]:
        """Every queue with its counts by state, oldest ready age, paused flag and limits."""
        return cast("list[QueueStats]", self._t.call("GET", "/v1/queues")["queues"])

    @operation("POST", "/v1/queues/{queue}/pause")
    def pause(self, queue: str) -> PauseResult:
        """Pauses a queue: claims get nothing until it resumes."""
        return cast(PauseResult, self._t.call("POST", f"/v1/queues/{_seg(queue)}/pause"))

    @operation("POST", "/v1/queues/{queue}/resume")
    def resume(self, queue: str) -> PauseResult:
        """Resumes a paused queue."""
        return cast(PauseResult, self._t.call("POST", f"/v1/queues/{_seg(queue)}/resume"))

    @operation("GET", "/v1/queues/{queue}/limits")
    def queue_limits(self, queue: str) -> LimitsResult:
        """A queue's flow limits (all unset when it has none)."""
        return cast(LimitsResult, self._t.call("GET", f"/v1/queues/{_seg(queue)}/limits"))

    @operation("PUT", "/v1/queues/{queue}/limits")
    def set_queue_limits(
        self,
        queue: str,
        *,
        max_running: int | None = None,
        max_starts_per_sec: float | None = None,
        max_depth: int | None = None,
    ) -> LimitsResult:
        """Sets a queue's flow limits across every node; the ones not given are cleared."""
        body = _some(max_running=max_running, max_starts_per_sec=max_starts_per_sec, max_depth=max_depth)
        out = self._t.call("PUT", f"/v1/queues/{_seg(queue)}/limits", body=body, has_body=True)
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
    ) -> JobPager:
        """Dead jobs, optionally of one queue: iterate it (lazy pages) or call `.page()`."""
        return JobPager(self._t, "/v1/dlq", {"queue": queue}, cursor=cursor, limit=limit, page_size=page_size)

    @operation("POST", "/v1/dlq/replay")
    def dlq_replay(self, ids: Sequence[str] | None = None, *, queue: str | None = None) -> ReplayResult:
        """Returns dead jobs to `ready` (by `ids`, or every one of `queue`)."""
        body = _selector(ids, queue)
        return cast(ReplayResult, self._t.call("POST", "/v1/dlq/replay", body=body, has_body=True))

    @operation("POST", "/v1/dlq/purge")
    def dlq_purge(self, ids: Sequence[str] | None = None, *, queue: str | None = None) -> PurgeResult:
        """Deletes dead jobs (by `ids`, or every one of `queue`)."""
        body = _selector(ids, queue)
        return cast(PurgeResult, self._t.call("POST", "/v1/dlq/purge", body=body, has_body=True))

    # ---- schedules -----------------------------------------------------------------------------

    @operation("GET", "/v1/schedules")
    def schedules(self) -> list[Schedule]:
        """Every schedule."""
        return cast("list[Schedule]", self._t.call("GET", "/v1/schedules")["schedules"])

    @operation("POST", "/v1/schedules")
    def create_schedule(
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
        out = self._t.call("POST", "/v1/schedules", body=body, has_body=True, retry=REFUSED)
        return cast(Schedule, out)

    @operation("GET", "/v1/schedules/{name}")
    def schedule(self, name: str, *, count: int | None = None) -> Schedule:
        """One schedule with its next `count` runs (default 5)."""
        params = {"count": count} if count is not None else None
        return cast(Schedule, self._t.call("GET", f"/v1/schedules/{_seg(name)}", params=params))

    @operation("PATCH", "/v1/schedules/{name}")
    def patch_schedule(self, name: str, **fields: Any) -> Schedule:
        """Changes a schedule (`cron`, `timezone`, `job`, `misfire`, `catch_up_max`, `paused`);
        absent fields stay."""
        out = self._t.call("PATCH", f"/v1/schedules/{_seg(name)}", body=fields, has_body=True)
        return cast(Schedule, out)

    @operation("DELETE", "/v1/schedules/{name}")
    def delete_schedule(self, name: str) -> Deleted:
        """Deletes a schedule (jobs it enqueued stay)."""
        return cast(Deleted, self._t.call("DELETE", f"/v1/schedules/{_seg(name)}"))

    @operation("POST", "/v1/schedules/{name}/pause")
    def pause_schedule(self, name: str) -> Schedule:
        """Pauses a schedule: its ticks are skipped until it resumes."""
        return cast(Schedule, self._t.call("POST", f"/v1/schedules/{_seg(name)}/pause"))

    @operation("POST", "/v1/schedules/{name}/resume")
    def resume_schedule(self, name: str) -> Schedule:
        """Resumes a schedule from its next tick (the paused period is not caught up)."""
        return cast(Schedule, self._t.call("POST", f"/v1/schedules/{_seg(name)}/resume"))

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
    ) -> EventStream:
        """Follows events by server-sent events, after cursor `since` (default: from now),
        filtered by queues, job ids, tags and types. Across disconnects and server restarts it
        resumes from the last delivered cursor (`Last-Event-ID`): no event is skipped or
        repeated; `.cursor` is where to resume later."""
        return EventStream(self._t, _filters(queue, job_id, tag, type), since)

    @operation("GET", "/v1/events")
    def poll_events(
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
        return cast(EventsPage, self._t.call("GET", "/v1/events", params=params, wait_ms=wait_ms))

    @operation("GET", "/v1/ws")
    def event_socket(
        self,
        *,
        since: int | None = None,
        queue: str | Sequence[str] | None = None,
        job_id: str | Sequence[str] | None = None,
        tag: str | Sequence[str] | None = None,
        type: str | Sequence[str] | None = None,
    ) -> EventSocket:
        """A WebSocket on `/v1/ws` (needs the `ws` extra): the rooms of `queue`, `job_id` and
        `tag` are joined at connect, more with `.subscribe()`; messages are events and notices."""
        params = _filters(queue, job_id, tag, type)
        params.update(_some(since=since))
        return EventSocket.connect(self._t, params)

    # ---- tokens, workers, hosts ----------------------------------------------------------------

    @operation("GET", "/v1/tokens")
    def tokens(self) -> list[TokenRecord]:
        """Every API token, revoked ones included (never their secrets)."""
        return cast("list[TokenRecord]", self._t.call("GET", "/v1/tokens")["tokens"])

    @operation("POST", "/v1/tokens")
    def create_token(
        self, name: str, scopes: Sequence[str], *, queues: Sequence[str] | None = None
    ) -> NewToken:
        """Mints a token (scopes `admin`, `produce`, `work`, `read`, optionally limited to
        queues); its secret, `token`, is shown only this once. Not retried after a connection
        failure."""
        body: dict[str, Any] = {"name": name, "scopes": list(scopes)}
        if queues is not None:
            body["queues"] = list(queues)
        return cast(NewToken, self._t.call("POST", "/v1/tokens", body=body, has_body=True, retry=REFUSED))

    @operation("DELETE", "/v1/tokens/{id}")
    def revoke_token(self, id: str) -> TokenRecord:
        """Revokes a token; returns its record."""
        return cast(TokenRecord, self._t.call("DELETE", f"/v1/tokens/{_seg(id)}"))

    @operation("GET", "/v1/workers")
    def workers(self) -> list[WorkerInfo]:
        """Workers the server has heard from, `active` or `lost`, with their jobs in flight."""
        return cast("list[WorkerInfo]", self._t.call("GET", "/v1/workers")["workers"])

    @operation("GET", "/v1/hosts")
    def hosts(self) -> list[Host]:
        """Registered hosts with their probed status and recent probes."""
        return cast("list[Host]", self._t.call("GET", "/v1/hosts")["hosts"])

    @operation("POST", "/v1/hosts")
    def create_host(self, name: str, health_url: str) -> Host:
        """Registers a host whose `health_url` (http://) the server probes."""
        body = {"name": name, "health_url": health_url}
        return cast(Host, self._t.call("POST", "/v1/hosts", body=body, has_body=True, retry=REFUSED))

    @operation("DELETE", "/v1/hosts/{name}")
    def delete_host(self, name: str) -> None:
        """Forgets a host."""
        self._t.call("DELETE", f"/v1/hosts/{_seg(name)}", kind=EMPTY)

    # ---- health and observability --------------------------------------------------------------

    @operation("GET", "/healthz")
    def health(self) -> Health:
        """Liveness: whether the process answers (no token needed)."""
        return cast(Health, self._t.call("GET", "/healthz"))

    @operation("GET", "/readyz")
    def ready(self) -> Health:
        """Readiness: `ready`, or `unavailable` with a `reason` (answered, not raised)."""
        return cast(Health, self._t.call("GET", "/readyz", retry=NEVER, accept=503))

    @operation("GET", "/v1/server")
    def server_info(self) -> ServerInfo:
        """Version, backend, uptime, memory, database size and whether auth is on."""
        return cast(ServerInfo, self._t.call("GET", "/v1/server"))

    @operation("GET", "/v1/stats")
    def stats(self) -> Stats:
        """Throughput, error rates and latencies over 1 m, 5 m and 1 h, and the backlog now."""
        return cast(Stats, self._t.call("GET", "/v1/stats"))

    @operation("GET", "/v1/advice")
    def advice(self) -> Advice:
        """The scaling advisor's verdict now, with its justification."""
        return cast(Advice, self._t.call("GET", "/v1/advice"))

    @operation("GET", "/v1/advice/history")
    def advice_history(self) -> list[Advice]:
        """The advisor's past verdicts, oldest first."""
        return cast("list[Advice]", self._t.call("GET", "/v1/advice/history")["decisions"])

    @operation("GET", "/metrics")
    def metrics(self) -> str:
        """Prometheus metrics, in the text exposition format."""
        return cast(str, self._t.call("GET", "/metrics", kind=TEXT))

    @operation("GET", "/v1/openapi.json")
    def openapi(self) -> dict[str, Any]:
        """The server's OpenAPI document (what this client covers)."""
        return cast("dict[str, Any]", self._t.call("GET", "/v1/openapi.json"))
