"""LangGraph checkpoint savers that keep a graph's checkpoints on a ferry server (needs the
`langgraph` extra: `pip install 'ferry-client[langgraph]'`).

```python
from ferry.langgraph import FerrySaver, AsyncFerrySaver

graph = builder.compile(checkpointer=FerrySaver(ferry.Client(url, token)))
graph.invoke(inputs, {"configurable": {"thread_id": "t-1"}})

async with AsyncFerrySaver(url=url, token=token) as saver:  # inside a running event loop
    graph = builder.compile(checkpointer=saver)
    await graph.ainvoke(inputs, {"configurable": {"thread_id": "t-1"}})
```

`FerrySaver` uses a blocking `ferry.Client` (its async methods run the blocking calls in a
worker thread); `AsyncFerrySaver` uses a `ferry.AsyncClient` (its sync methods work only from
another thread than its event loop's, as LangGraph's own async savers do).

How a checkpoint is stored (the server never decodes a value):

- the checkpoint itself, serialized by the saver's `serde` with its `channel_values` left out,
  and its metadata as JSON (computed as LangGraph's savers do: the config's plain
  `metadata`/`configurable` entries merged in, never the whole config);
- each channel's value as a blob per (channel, version), sent only for `new_versions` (a
  channel whose version did not move is served by the blob stored earlier, so an unchanged
  large value is stored once however many checkpoints follow): a channel with no value at
  its new version is sent as type `empty`;
- the channels a `DeltaChannel` rebuilds from writes (its `counters_since_delta_snapshot`
  keys without a value here) as `delta_channels`, so the server's pruning keeps what they
  need.

Reading overlays the blobs on the checkpoint's own `channel_values` (a checkpoint imported from
another saver may carry its values inline). Versions follow PostgresSaver's string scheme.

Fencing: a run inside a ferry job can pass its job id and lease in the config,
`{"configurable": {"thread_id": ..., "ferry_job_id": job_id, "ferry_lease": lease}}`; every
checkpoint and write is then refused with `ferry.StaleLease` (nothing written) once the lease
is no longer the job's. Neither key goes into the metadata.

Failures are the client's `ferry.FerryError`s; 429 and 503 answers and connection failures are
retried as the client does (after `Retry-After`). Calls for one thread are sent in the order
they were made (a lock per thread).
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from types import TracebackType
from typing import Any, cast

try:
    from langchain_core.runnables import RunnableConfig
    from langgraph.checkpoint.base import (
        WRITES_IDX_MAP,
        BaseCheckpointSaver,
        ChannelVersions,
        Checkpoint,
        CheckpointMetadata,
        CheckpointTuple,
        get_checkpoint_id,
        get_serializable_checkpoint_metadata,
    )
    from langgraph.checkpoint.serde.base import SerializerProtocol
except ImportError as exc:  # pragma: no cover - without the extra
    raise ImportError(
        "ferry.langgraph needs the `langgraph` extra: pip install 'ferry-client[langgraph]'"
    ) from exc

from ferry._client import AsyncClient, Client
from ferry._errors import NotFound, ValidationFailed
from ferry.types import CheckpointBlob, CheckpointRecord, CheckpointWriteInput

__all__ = ["JOB_ID_KEY", "LEASE_KEY", "AsyncFerrySaver", "FerrySaver"]

JOB_ID_KEY = "ferry_job_id"
"""The `config["configurable"]` key of the ferry job whose lease fences the writes."""
LEASE_KEY = "ferry_lease"
"""The `config["configurable"]` key of that job's lease."""

_STRATEGIES = ("keep_latest", "delete")
# Rows per page of a listing: each row is a whole checkpoint with its values.
_PAGE = 20
_EMPTY = ("empty", b"")


def _configurable(config: RunnableConfig | None) -> Mapping[str, Any]:
    return cast("Mapping[str, Any]", (config or {}).get("configurable") or {})


def _thread_of(config: RunnableConfig) -> str:
    thread = _configurable(config).get("thread_id")
    if thread is None:
        raise ValueError('the config has no "thread_id" in "configurable"')
    return str(thread)


def _ns_of(config: RunnableConfig) -> str:
    return str(_configurable(config).get("checkpoint_ns") or "")


def _fence_of(config: RunnableConfig) -> dict[str, str]:
    """`job_id` and `lease` from the config (both or neither)."""
    conf = _configurable(config)
    job_id, lease = conf.get(JOB_ID_KEY), conf.get(LEASE_KEY)
    if job_id is None and lease is None:
        return {}
    if job_id is None or lease is None:
        raise ValueError(f'give both "{JOB_ID_KEY}" and "{LEASE_KEY}" in "configurable", or neither')
    return {"job_id": str(job_id), "lease": str(lease)}


def _contains(have: Any, want: Any) -> bool:
    """PostgreSQL's JSON containment (`have @> want`), for the rows filtered here."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(k in have and _contains(have[k], v) for k, v in want.items())
    if isinstance(want, (list, tuple)):
        return isinstance(have, (list, tuple)) and all(any(_contains(h, w) for h in have) for w in want)
    if isinstance(have, bool) or isinstance(want, bool):
        return have is want
    return bool(have == want)


def _config(thread: str, ns: str, checkpoint_id: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread, "checkpoint_ns": ns, "checkpoint_id": checkpoint_id}}


class _Put:
    """One `put`'s request: what `put_checkpoint` takes, and the blobs to add when the server
    names versions it lacks."""

    __slots__ = ("checkpoint", "kwargs", "ns", "thread")

    def __init__(self, thread: str, ns: str, checkpoint: Checkpoint, kwargs: dict[str, Any]) -> None:
        self.thread = thread
        self.ns = ns
        self.checkpoint = checkpoint
        self.kwargs = kwargs

    @property
    def config(self) -> RunnableConfig:
        """The config `put` returns: the stored checkpoint's."""
        return _config(self.thread, self.ns, self.checkpoint["id"])


class _ListPlan:
    """How a `list` call is served: the `list_checkpoints` arguments, or one `get_checkpoint`
    (a config naming a checkpoint in one namespace), and what is filtered here."""

    __slots__ = ("before", "checkpoint_id", "filter", "ns", "thread")

    def __init__(
        self,
        config: RunnableConfig | None,
        filter: dict[str, Any] | None,
        before: RunnableConfig | None,
    ) -> None:
        conf = _configurable(config)
        self.thread = str(conf["thread_id"]) if conf.get("thread_id") is not None else None
        ns = conf.get("checkpoint_ns")
        self.ns = None if ns is None else str(ns)
        self.checkpoint_id = get_checkpoint_id(config) if config and conf else None
        self.filter = dict(filter) if filter else None
        self.before = get_checkpoint_id(before) if before and _configurable(before) else None

    @property
    def exact(self) -> bool:
        """Whether one `get_checkpoint` serves it."""
        return self.checkpoint_id is not None and self.thread is not None and self.ns is not None

    @property
    def locked(self) -> tuple[str, ...]:
        """The thread whose lock each page is fetched under (none for every thread)."""
        return () if self.thread is None else (self.thread,)

    def keeps(self, checkpoint_id: str, metadata: Any) -> bool:
        """Whether a row passes the filters the server did not apply (all of them for one
        fetched by id)."""
        if self.checkpoint_id is not None and checkpoint_id != self.checkpoint_id:
            return False
        if self.before is not None and not checkpoint_id.encode() < self.before.encode():
            return False
        return self.filter is None or _contains(metadata, self.filter)

    def list_kwargs(self, limit: int | None) -> dict[str, Any]:
        """`list_checkpoints`' arguments (no `limit` when ids are filtered here)."""
        return {
            "thread": self.thread,
            "ns": self.ns,
            "before": self.before,
            "metadata": self.filter,
            "full": True,
            "limit": None if self.checkpoint_id is not None else limit,
            "page_size": _PAGE,
        }

    def take(self, records: Sequence[CheckpointRecord], left: int | None) -> list[CheckpointRecord]:
        """The rows of a page the list yields, at most `left`."""
        out = [r for r in records if self.checkpoint_id in (None, r["checkpoint_id"])]
        return out if left is None else out[:left]


def _exact(tup: CheckpointTuple | None, plan: _ListPlan, limit: int | None) -> bool:
    """Whether the tuple fetched for a list naming one checkpoint is listed."""
    if tup is None or (limit is not None and limit <= 0):
        return False
    return plan.keeps(tup.config["configurable"]["checkpoint_id"], tup.metadata)


def _check_prune(thread_ids: Sequence[str], strategy: str) -> list[str]:
    if isinstance(thread_ids, str):
        raise TypeError("thread_ids must be a sequence of thread ids, not a str")
    if strategy not in _STRATEGIES:
        raise ValueError(f"unknown prune strategy {strategy!r}: use 'keep_latest' or 'delete'")
    return [str(t) for t in thread_ids]


class _FerrySaverBase(BaseCheckpointSaver[str]):
    """What both savers share: versions, and turning LangGraph's calls into the checkpoint
    routes' arguments and their answers back."""

    def get_next_version(self, current: str | None, channel: None) -> str:
        """The next version of a channel: PostgresSaver's scheme, a zero-padded counter and a
        random fraction (`"00000000000000000000000000000002.0.8431..."`), increasing as
        strings. Integer versions (from older checkpoints) continue from their value."""
        if current is None:
            current_v = 0
        elif isinstance(current, int):
            current_v = current
        else:
            current_v = int(str(current).split(".")[0])
        return f"{current_v + 1:032}.{random.random():016}"

    def _put_request(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> _Put:
        conf = _configurable(config)
        thread, ns = _thread_of(config), _ns_of(config)
        fence = _fence_of(config)
        # The fencing keys are transport, not metadata: leave them out of the merge.
        clean = cast(
            "RunnableConfig",
            {**config, "configurable": {k: v for k, v in conf.items() if k not in (JOB_ID_KEY, LEASE_KEY)}},
        )
        md: dict[str, Any] = dict(get_serializable_checkpoint_metadata(clean, metadata))
        values = checkpoint["channel_values"]
        versions = checkpoint["channel_versions"]
        blobs = [self._blob(values, ch, ver) for ch, ver in new_versions.items()]
        counters = md.get("counters_since_delta_snapshot") or {}
        delta = [ch for ch in counters if ch in versions and ch not in values]
        body = self.serde.dumps_typed({**checkpoint, "channel_values": {}})
        kwargs: dict[str, Any] = {
            "checkpoint": body,
            "metadata": md,
            "channel_versions": {ch: str(v) for ch, v in versions.items()},
            "blobs": blobs,
            "parent_checkpoint_id": conf.get("checkpoint_id"),
            "ns": ns,
            "delta_channels": delta or None,
            **fence,
        }
        return _Put(thread, ns, checkpoint, kwargs)

    def _blob(self, values: Mapping[str, Any], channel: str, version: Any) -> CheckpointBlob:
        type_, data = self.serde.dumps_typed(values[channel]) if channel in values else _EMPTY
        return {"channel": channel, "version": str(version), "type": type_, "data": data}

    def _missing(self, put: _Put, err: ValidationFailed) -> bool:
        """On a refusal naming versions with no blob (a caller's `new_versions` that left out
        a version never stored), adds their blobs from the checkpoint; whether it did."""
        missing = (err.details or {}).get("missing") if err.field == "blobs" else None
        if not missing:
            return False
        values = put.checkpoint["channel_values"]
        put.kwargs["blobs"] = [
            *put.kwargs["blobs"],
            *(self._blob(values, m["channel"], m["version"]) for m in missing),
        ]
        return True

    def _writes_request(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str
    ) -> tuple[str, str, dict[str, Any]]:
        checkpoint_id = get_checkpoint_id(config)
        if not checkpoint_id:
            raise ValueError('put_writes needs "checkpoint_id" in the config\'s "configurable"')
        rows: list[CheckpointWriteInput] = []
        for idx, (channel, value) in enumerate(writes):
            type_, data = self.serde.dumps_typed(value)
            rows.append(
                {"channel": channel, "type": type_, "data": data, "idx": WRITES_IDX_MAP.get(channel, idx)}
            )
        kwargs: dict[str, Any] = {
            "task_id": task_id,
            "writes": rows,
            "task_path": task_path,
            "ns": _ns_of(config),
            **_fence_of(config),
        }
        return _thread_of(config), checkpoint_id, kwargs

    def _tuple(self, record: CheckpointRecord) -> CheckpointTuple:
        """A stored checkpoint as LangGraph reads it: the blobs' values (not `empty`)
        overlaid on the checkpoint's own `channel_values`, pending writes in the server's
        (task_path, task_id, idx) order."""
        loads = self.serde.loads_typed
        body = record["checkpoint"]
        checkpoint = cast(Checkpoint, loads((body["type"], body["data"])))
        values = dict(checkpoint.get("channel_values") or {})
        for blob in record.get("blobs") or ():
            if blob["type"] != "empty":
                values[blob["channel"]] = loads((blob["type"], blob["data"]))
        checkpoint["channel_values"] = values
        thread, ns = record["thread"], record["ns"]
        parent = record.get("parent_checkpoint_id")
        return CheckpointTuple(
            config=_config(thread, ns, record["checkpoint_id"]),
            checkpoint=checkpoint,
            metadata=cast(CheckpointMetadata, record["metadata"]),
            parent_config=_config(thread, ns, parent) if parent else None,
            pending_writes=[
                (w["task_id"], w["channel"], loads((w["type"], w["data"])))
                for w in record.get("pending_writes") or ()
            ],
        )


class _ThreadLocks:
    """One lock per thread id, dropped when no call holds or waits for it."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._locks: dict[str, list[Any]] = {}  # thread -> [lock, users]
        self._guard = threading.Lock()

    def _take(self, thread: str) -> Any:
        with self._guard:
            entry = self._locks.get(thread)
            if entry is None:
                entry = self._locks[thread] = [self._factory(), 0]
            entry[1] += 1
            return entry[0]

    def _drop(self, thread: str) -> None:
        with self._guard:
            entry = self._locks[thread]
            entry[1] -= 1
            if entry[1] == 0:
                del self._locks[thread]

    def __len__(self) -> int:
        return len(self._locks)

    @contextmanager
    def hold(self, *threads: str) -> Iterator[None]:
        """Holds the locks of `threads` (taken in sorted order, so two calls cannot deadlock)."""
        with ExitStack() as stack:
            for thread in sorted(set(threads)):
                lock = self._take(thread)
                stack.callback(self._drop, thread)
                lock.acquire()
                stack.callback(lock.release)
            yield

    @asynccontextmanager
    async def ahold(self, *threads: str) -> AsyncIterator[None]:
        """`hold` for asyncio locks."""
        async with AsyncExitStack() as stack:
            for thread in sorted(set(threads)):
                lock = self._take(thread)
                stack.callback(self._drop, thread)
                await lock.acquire()
                stack.callback(lock.release)
            yield


class FerrySaver(_FerrySaverBase):
    """A LangGraph checkpointer on a ferry server, through a blocking `ferry.Client`.

    Give a `client`, or `url` and `token` (default `FERRY_URL` and `FERRY_TOKEN`) for one the
    saver makes and closes with `close()` (or as a context manager). `serde` is LangGraph's
    serializer (default `JsonPlusSerializer`; an `EncryptedSerializer` encrypts every value
    before it leaves the process). The token needs scope `checkpoints` (writes) and `read`.

    The async methods run the blocking calls in a worker thread, so `ainvoke` works too;
    `AsyncFerrySaver` avoids the threads.
    """

    client: Client

    def __init__(
        self,
        client: Client | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        serde: SerializerProtocol | None = None,
    ) -> None:
        super().__init__(serde=serde)
        if client is not None and (url is not None or token is not None):
            raise ValueError("give a client, or url and token, not both")
        self._owns_client = client is None
        self.client = client if client is not None else Client(url, token, name="langgraph")
        self._locks = _ThreadLocks(threading.Lock)

    def close(self) -> None:
        """Closes the client if the saver made it."""
        if self._owns_client:
            self.client.close()

    def __enter__(self) -> FerrySaver:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- sync --------------------------------------------------------------------------------

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint `config` names (`checkpoint_id`), else the thread's latest in its
        namespace (`checkpoint_ns`, default ""), with its values and pending writes; None if
        there is none."""
        thread = _thread_of(config)
        with self._locks.hold(thread):
            try:
                record = self.client.get_checkpoint(
                    thread, get_checkpoint_id(config) or "latest", ns=_ns_of(config)
                )
            except NotFound:
                return None
        return self._tuple(record)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints newest first by id: of `config`'s thread (every thread when None) and
        namespace (every namespace when `checkpoint_ns` is absent), whose metadata contains
        `filter` (PostgreSQL `@>` semantics), with ids below `before`'s, at most `limit`.
        Fetched a page at a time."""
        plan = _ListPlan(config, filter, before)
        if plan.exact:
            tup = self.get_tuple(cast(RunnableConfig, config))
            if _exact(tup, plan, limit):
                yield cast(CheckpointTuple, tup)
            return
        pager = self.client.list_checkpoints(**plan.list_kwargs(limit))
        left, cursor = limit, None
        while left is None or left > 0:
            with self._locks.hold(*plan.locked):
                page = pager.page(cursor)
            records = page["checkpoints"]
            for record in plan.take(records, left):
                yield self._tuple(record)
                if left is not None:
                    left -= 1
            cursor = page.get("next_cursor")
            if not cursor or not records:
                return

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Stores `checkpoint` as a child of `config`'s `checkpoint_id`, with a blob for each
        channel in `new_versions`; the stored checkpoint's config. `ferry.StaleLease` when the
        config's lease is no longer its job's."""
        put = self._put_request(config, checkpoint, metadata, new_versions)
        with self._locks.hold(put.thread):
            try:
                self.client.put_checkpoint(put.thread, checkpoint["id"], **put.kwargs)
            except ValidationFailed as err:
                if not self._missing(put, err):
                    raise
                self.client.put_checkpoint(put.thread, checkpoint["id"], **put.kwargs)
        return put.config

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Stores task `task_id`'s pending `writes` (channel, value) on `config`'s checkpoint.
        A repeat keeps the first regular writes; special channels (errors, interrupts, ...)
        replace."""
        thread, checkpoint_id, kwargs = self._writes_request(config, writes, task_id, task_path)
        with self._locks.hold(thread):
            self.client.put_checkpoint_writes(thread, checkpoint_id, **kwargs)

    def delete_thread(self, thread_id: str) -> None:
        """Deletes every checkpoint, blob and write of a thread (a no-op for an unknown one)."""
        thread = str(thread_id)
        with self._locks.hold(thread):
            self.client.delete_thread(thread)

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Deletes the checkpoints (and their writes) whose `metadata.run_id` is in
        `run_ids`, in every thread and namespace."""
        ids = [str(r) for r in run_ids]
        if ids:
            self.client.delete_checkpoint_runs(ids)

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copies every checkpoint of a thread (ids, parents, metadata, values, writes, every
        namespace) to a thread with none (`ferry.Conflict` if it has some); an unknown source
        copies nothing."""
        src, dst = str(source_thread_id), str(target_thread_id)
        if src == dst:
            return
        with self._locks.hold(src, dst):
            try:
                self.client.copy_thread(src, dst)
            except NotFound:
                return

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """`keep_latest`: keeps each namespace's latest checkpoint of each thread (with the
        ancestors its delta channels are rebuilt from); `delete`: deletes the threads."""
        threads = _check_prune(thread_ids, strategy)
        if threads:
            with self._locks.hold(*threads):
                self.client.prune_checkpoints(threads, strategy)

    # ---- async (the blocking calls in a worker thread) -----------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """`get_tuple` in a worker thread."""
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """`list`, each page fetched in a worker thread."""
        rows = self.list(config, filter=filter, before=before, limit=limit)
        end = object()
        while True:
            row = await asyncio.to_thread(next, rows, end)
            if row is end:
                return
            yield cast(CheckpointTuple, row)

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """`put` in a worker thread."""
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """`put_writes` in a worker thread."""
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        """`delete_thread` in a worker thread."""
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """`delete_for_runs` in a worker thread."""
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """`copy_thread` in a worker thread."""
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """`prune` in a worker thread (the arguments checked at once)."""
        _check_prune(thread_ids, strategy)
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)


class AsyncFerrySaver(_FerrySaverBase):
    """A LangGraph checkpointer on a ferry server, through a `ferry.AsyncClient`: make it
    inside the event loop that runs the graph.

    Give a `client`, or `url` and `token` (default `FERRY_URL` and `FERRY_TOKEN`) for one the
    saver makes and closes with `aclose()` (or as an async context manager). `serde` as for
    `FerrySaver`.

    The sync methods (`invoke`, `get_state`) work only from another thread than the event
    loop's (they wait for the loop to make the call), as LangGraph's `AsyncPostgresSaver`
    does; from the loop's own thread they raise `asyncio.InvalidStateError`.
    """

    client: AsyncClient
    loop: asyncio.AbstractEventLoop | None

    def __init__(
        self,
        client: AsyncClient | None = None,
        *,
        url: str | None = None,
        token: str | None = None,
        serde: SerializerProtocol | None = None,
    ) -> None:
        super().__init__(serde=serde)
        if client is not None and (url is not None or token is not None):
            raise ValueError("give a client, or url and token, not both")
        self._owns_client = client is None
        self.client = client if client is not None else AsyncClient(url, token, name="langgraph")
        self._locks = _ThreadLocks(asyncio.Lock)
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:
            self.loop = None  # bound by the first async call

    async def aclose(self) -> None:
        """Closes the client if the saver made it."""
        if self._owns_client:
            await self.client.aclose()

    async def __aenter__(self) -> AsyncFerrySaver:
        self._bind()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def _bind(self) -> None:
        # The loop the sync methods hand their calls to: the one the saver is used in.
        self.loop = asyncio.get_running_loop()

    # ---- async -------------------------------------------------------------------------------

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint `config` names (`checkpoint_id`), else the thread's latest in its
        namespace (`checkpoint_ns`, default ""), with its values and pending writes; None if
        there is none."""
        self._bind()
        thread = _thread_of(config)
        async with self._locks.ahold(thread):
            try:
                record = await self.client.get_checkpoint(
                    thread, get_checkpoint_id(config) or "latest", ns=_ns_of(config)
                )
            except NotFound:
                return None
        return self._tuple(record)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """Checkpoints newest first by id: of `config`'s thread (every thread when None) and
        namespace (every namespace when `checkpoint_ns` is absent), whose metadata contains
        `filter` (PostgreSQL `@>` semantics), with ids below `before`'s, at most `limit`.
        Fetched a page at a time."""
        self._bind()
        plan = _ListPlan(config, filter, before)
        if plan.exact:
            tup = await self.aget_tuple(cast(RunnableConfig, config))
            if _exact(tup, plan, limit):
                yield cast(CheckpointTuple, tup)
            return
        pager = self.client.list_checkpoints(**plan.list_kwargs(limit))
        left, cursor = limit, None
        while left is None or left > 0:
            async with self._locks.ahold(*plan.locked):
                page = await pager.page(cursor)
            records = page["checkpoints"]
            for record in plan.take(records, left):
                yield self._tuple(record)
                if left is not None:
                    left -= 1
            cursor = page.get("next_cursor")
            if not cursor or not records:
                return

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Stores `checkpoint` as a child of `config`'s `checkpoint_id`, with a blob for each
        channel in `new_versions`; the stored checkpoint's config. `ferry.StaleLease` when the
        config's lease is no longer its job's."""
        self._bind()
        put = self._put_request(config, checkpoint, metadata, new_versions)
        async with self._locks.ahold(put.thread):
            try:
                await self.client.put_checkpoint(put.thread, checkpoint["id"], **put.kwargs)
            except ValidationFailed as err:
                if not self._missing(put, err):
                    raise
                await self.client.put_checkpoint(put.thread, checkpoint["id"], **put.kwargs)
        return put.config

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Stores task `task_id`'s pending `writes` (channel, value) on `config`'s checkpoint.
        A repeat keeps the first regular writes; special channels (errors, interrupts, ...)
        replace."""
        self._bind()
        thread, checkpoint_id, kwargs = self._writes_request(config, writes, task_id, task_path)
        async with self._locks.ahold(thread):
            await self.client.put_checkpoint_writes(thread, checkpoint_id, **kwargs)

    async def adelete_thread(self, thread_id: str) -> None:
        """Deletes every checkpoint, blob and write of a thread (a no-op for an unknown one)."""
        self._bind()
        thread = str(thread_id)
        async with self._locks.ahold(thread):
            await self.client.delete_thread(thread)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Deletes the checkpoints (and their writes) whose `metadata.run_id` is in
        `run_ids`, in every thread and namespace."""
        self._bind()
        ids = [str(r) for r in run_ids]
        if ids:
            await self.client.delete_checkpoint_runs(ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copies every checkpoint of a thread (ids, parents, metadata, values, writes, every
        namespace) to a thread with none (`ferry.Conflict` if it has some); an unknown source
        copies nothing."""
        self._bind()
        src, dst = str(source_thread_id), str(target_thread_id)
        if src == dst:
            return
        async with self._locks.ahold(src, dst):
            try:
                await self.client.copy_thread(src, dst)
            except NotFound:
                return

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """`keep_latest`: keeps each namespace's latest checkpoint of each thread (with the
        ancestors its delta channels are rebuilt from); `delete`: deletes the threads."""
        self._bind()
        threads = _check_prune(thread_ids, strategy)
        if threads:
            async with self._locks.ahold(*threads):
                await self.client.prune_checkpoints(threads, strategy)

    # ---- sync (waiting for the event loop, from another thread) ---------------------------------

    def _wait(self, make: Callable[[], Any], what: str) -> Any:
        """Runs the coroutine `make()` on the saver's loop and waits for its result; refused on
        the loop's own thread (it would wait for itself)."""
        loop = self.loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is not None and running is loop:
            raise asyncio.InvalidStateError(
                f"synchronous calls to AsyncFerrySaver are only allowed from another thread than its "
                f"event loop's: use `await saver.a{what}(...)` or `await graph.ainvoke(...)`"
            )
        if loop is None or loop.is_closed() or not loop.is_running():
            raise asyncio.InvalidStateError(
                "AsyncFerrySaver's event loop is not running: make the saver inside the loop that "
                "runs the graph, or use FerrySaver for synchronous code"
            )
        future: Future[Any] = asyncio.run_coroutine_threadsafe(make(), loop)
        return future.result()

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """`aget_tuple`, waited for from another thread."""
        return cast("CheckpointTuple | None", self._wait(lambda: self.aget_tuple(config), "get_tuple"))

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """`alist`, each row waited for from another thread."""
        rows = self.alist(config, filter=filter, before=before, limit=limit)
        end = object()

        async def step() -> Any:
            return await anext(rows, end)

        while True:
            row = self._wait(step, "list")
            if row is end:
                return
            yield cast(CheckpointTuple, row)

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """`aput`, waited for from another thread."""
        out = self._wait(lambda: self.aput(config, checkpoint, metadata, new_versions), "put")
        return cast(RunnableConfig, out)

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """`aput_writes`, waited for from another thread."""
        self._wait(lambda: self.aput_writes(config, writes, task_id, task_path), "put_writes")

    def delete_thread(self, thread_id: str) -> None:
        """`adelete_thread`, waited for from another thread."""
        self._wait(lambda: self.adelete_thread(thread_id), "delete_thread")

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """`adelete_for_runs`, waited for from another thread."""
        self._wait(lambda: self.adelete_for_runs(run_ids), "delete_for_runs")

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """`acopy_thread`, waited for from another thread."""
        self._wait(lambda: self.acopy_thread(source_thread_id, target_thread_id), "copy_thread")

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """`aprune`, waited for from another thread (the arguments checked at once)."""
        _check_prune(thread_ids, strategy)
        self._wait(lambda: self.aprune(thread_ids, strategy=strategy), "prune")
