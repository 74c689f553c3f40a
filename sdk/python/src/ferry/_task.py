"""Decorated tasks: a function that stays callable as itself, plus its queue, its job options
(`retries=3` is `max_attempts=4`; `timeout_ms`, `lease_ms` and any other job field), a payload
validator built from its type hints, and `.enqueue` / `.aenqueue`.

`@ferry.task(...)` registers the task globally so `ferry-worker package` finds it by
importing the package; `@worker.task(...)` registers it on one worker only. In eager mode
(`ferry.testing.eager()`, which sets `EAGER`) `.enqueue` runs the task inline through the
same serialise → validate → call path a worker uses, raising at the call site.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import functools
import inspect
import json
import re
import threading
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from ferry._context import _CURRENT, JobContext
from ferry._validate import PayloadInvalid, Validator, make_validator

if TYPE_CHECKING:
    from ferry._client import AsyncClient, Client
    from ferry._protocol import WorkerTransport
    from ferry._worker import Worker

__all__ = ["EAGER", "PayloadInvalid", "Task", "registered_tasks", "task"]

P = ParamSpec("P")
R = TypeVar("R")

EAGER: ContextVar[bool] = ContextVar("ferry_eager", default=False)
"""True inside `ferry.testing.eager()`: `.enqueue` runs the task inline."""

# The transport and loop of the worker run this context belongs to: a handler's `.aenqueue`
# goes through its worker's client (the in-memory one in tests), and a thread handler's
# `.enqueue` is run on the worker's loop.
_TRANSPORT: ContextVar[tuple[WorkerTransport, asyncio.AbstractEventLoop] | None] = ContextVar(
    "ferry_transport", default=None
)

_REGISTRY: dict[str, Task[Any, Any]] = {}
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# Where module-level tasks enqueue when no worker is running them: set by a worker's or the
# CLI's `--url/--token`, else `FERRY_URL`/`FERRY_TOKEN`.
_defaults: dict[str, str | None] = {"url": None, "token": None}
_sync_clients: dict[tuple[str | None, str | None], Client] = {}
_clients_lock = threading.Lock()


def configure(url: str | None = None, token: str | None = None) -> None:
    """Sets the server module-level tasks enqueue to outside a worker (the CLI's `--url`)."""
    _defaults["url"] = url
    _defaults["token"] = token


def _sync_client(url: str | None, token: str | None) -> Client:
    key = (url or _defaults["url"], token or _defaults["token"])
    with _clients_lock:
        client = _sync_clients.get(key)
        if client is None:
            from ferry._client import Client

            client = Client(key[0], key[1])
            _sync_clients[key] = client
        return client


def to_json(value: Any) -> Any:
    """`value` as JSON-ready data: dataclasses, pydantic models, enums, tuples and sets become
    objects, values and arrays; everything else is returned unchanged."""
    t = type(value)
    if t in (str, int, float, bool) or value is None:
        return value
    if t is dict:
        return {k: to_json(v) for k, v in value.items()}
    if t is list or t is tuple or t is set or t is frozenset:
        return [to_json(v) for v in value]
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v) for v in value]
    return value


class Task(Generic[P, R]):
    """A job handler that is still its function: call it to run it here, `.enqueue(**kw)` to
    run it on a worker. `name` is its queue; `job_fields` its job options."""

    name: str
    fn: Callable[P, R]
    job_fields: dict[str, Any]
    is_async: bool

    def __init__(
        self,
        fn: Callable[P, R],
        name: str,
        job_fields: dict[str, Any],
        *,
        owner: Worker | None = None,
        validator: Validator | None = None,
    ) -> None:
        if not _QUEUE_NAME.match(name):
            raise ValueError(f"task name {name!r} is not a queue name (1..128 of A-Z a-z 0-9 . _ : -)")
        for p in inspect.signature(fn).parameters.values():
            if p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
                raise TypeError(
                    f"task {name}: positional-only parameter {p.name!r} cannot come from a payload"
                )
        self.fn = fn
        self.name = name
        self.job_fields = job_fields
        self.is_async = inspect.iscoroutinefunction(fn)
        self._owner = owner
        self._validator = validator
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<ferry.Task {self.name} ({getattr(self.fn, '__qualname__', self.fn)})>"

    # ---- validation -------------------------------------------------------------------------

    def validate(self, payload: Any) -> dict[str, Any]:
        """The keyword arguments a payload calls the function with; `PayloadInvalid` (naming
        the field) when it does not fit the type hints."""
        v = self._validator
        if v is None:
            v = self._validator = make_validator(self.fn)
        return v(payload)

    def prepare(self) -> None:
        """Builds the validator now (a worker does this at start, so the first job does not
        pay for building a pydantic schema)."""
        if self._validator is None:
            self._validator = make_validator(self.fn)

    def use_validator(self, *, pydantic: bool | None = None) -> None:
        """Rebuilds the validator (pydantic's, the built-in one, or by the environment if None),
        for tests that compare the two."""
        self._validator = make_validator(self.fn, use_pydantic=pydantic)

    # ---- options ----------------------------------------------------------------------------

    def with_options(self, **fields: Any) -> Task[P, R]:
        """This task with more job fields for its enqueues (`delay_ms`, `unique_key`,
        `priority`, `tags`, ...); the original is unchanged and nothing is registered."""
        return Task(
            self.fn, self.name, {**self.job_fields, **fields}, owner=self._owner, validator=self._validator
        )

    # ---- enqueueing -------------------------------------------------------------------------

    def _payload(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        payload: dict[str, Any] = to_json(kwargs)
        self.validate(payload)
        return payload

    def enqueue(self, **kwargs: Any) -> Any:
        """Validates `kwargs` and enqueues them as one job with this task's options; returns
        `{"id", ...}`. In eager mode runs the task inline and returns its result."""
        if EAGER.get():
            return self._eager(kwargs)
        payload = self._payload(kwargs)
        bound = _TRANSPORT.get()
        if bound is not None:
            # Inside a worker: a thread handler enqueues through the worker's own client.
            transport, loop = bound
            if _on_loop(loop):
                raise RuntimeError(
                    f"{self.name}.enqueue() would block the event loop: use `await {self.name}.aenqueue()`"
                )
            coro = transport.enqueue(self.name, payload, **self.job_fields)
            return asyncio.run_coroutine_threadsafe(coro, loop).result()
        owner = self._owner
        if owner is not None and owner.client is not None:
            sync = getattr(owner.client, "sync", None)
            if callable(sync):
                return sync().enqueue(self.name, payload, **self.job_fields)
            return _run_blocking(owner.client.enqueue(self.name, payload, **self.job_fields))
        url = owner.url if owner is not None else None
        token = owner.token if owner is not None else None
        return _sync_client(url, token).enqueue(self.name, payload, **self.job_fields)

    async def aenqueue(self, **kwargs: Any) -> Any:
        """`enqueue` for async code (in eager mode, awaits the task inline)."""
        if EAGER.get():
            return await self._aeager(kwargs)
        payload = self._payload(kwargs)
        bound = _TRANSPORT.get()
        if bound is not None and _on_loop(bound[1]):
            return await bound[0].enqueue(self.name, payload, **self.job_fields)
        owner = self._owner
        if owner is not None and owner.client is not None:
            return await owner.client.enqueue(self.name, payload, **self.job_fields)
        client = _async_client(owner.url if owner else None, owner.token if owner else None)
        try:
            return await client.enqueue(self.name, payload, **self.job_fields)
        finally:
            await client.aclose()

    # ---- eager mode -------------------------------------------------------------------------

    def _eager_args(self, kwargs: dict[str, Any]) -> tuple[dict[str, Any], JobContext]:
        payload = json.loads(json.dumps(to_json(kwargs)))
        args = self.validate(payload)
        attempts = int(self.job_fields.get("max_attempts", 1))
        ctx = JobContext(
            str(uuid.uuid4()),
            self.name,
            attempt=1,
            max_attempts=attempts,
            tags=list(self.job_fields.get("tags", [])),
            payload=payload,
            timeout_ms=int(self.job_fields.get("timeout_ms", 86_400_000)),
            worker="eager",
        )
        return args, ctx

    def _eager(self, kwargs: dict[str, Any]) -> Any:
        args, ctx = self._eager_args(kwargs)
        token = _CURRENT.set(ctx)
        try:
            result: Any = self.fn(**args)  # type: ignore[call-arg]
            if self.is_async:
                try:
                    asyncio.get_running_loop()
                except RuntimeError:
                    return asyncio.run(result)
                result.close()
                raise RuntimeError(
                    f"{self.name} is async: in async code use `await {self.name}.aenqueue(...)` in eager mode"
                )
            return result
        finally:
            _CURRENT.reset(token)

    async def _aeager(self, kwargs: dict[str, Any]) -> Any:
        args, ctx = self._eager_args(kwargs)
        token = _CURRENT.set(ctx)
        try:
            result: Any = self.fn(**args)  # type: ignore[call-arg]
            if self.is_async:
                return await result
            return result
        finally:
            _CURRENT.reset(token)


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _run_blocking(aw: Awaitable[Any]) -> Any:
    async def wrap() -> Any:
        return await aw

    return asyncio.run(wrap())


def _async_client(url: str | None, token: str | None) -> AsyncClient:
    from ferry._client import AsyncClient

    return AsyncClient(url or _defaults["url"], token or _defaults["token"])


def job_fields(
    *,
    retries: int | None,
    max_attempts: int | None,
    timeout_ms: int | None,
    lease_ms: int | None,
    fields: dict[str, Any],
) -> dict[str, Any]:
    """The job spec fields a decorator's options mean."""
    out: dict[str, Any] = {}
    if retries is not None and max_attempts is not None and max_attempts != retries + 1:
        raise ValueError("give retries or max_attempts, not both (retries=3 means max_attempts=4)")
    if retries is not None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        out["max_attempts"] = retries + 1
    elif max_attempts is not None:
        out["max_attempts"] = max_attempts
    if timeout_ms is not None:
        out["timeout_ms"] = timeout_ms
    if lease_ms is not None:
        out["lease_ms"] = lease_ms
    out.update(fields)
    return out


def make_task(
    fn: Callable[P, R],
    name: str | None,
    queue: str | None,
    fields: dict[str, Any],
    owner: Worker | None,
) -> Task[P, R]:
    """A Task from decorator arguments (`name` and `queue` both name the queue)."""
    if name is not None and queue is not None and name != queue:
        raise ValueError(f"task name {name!r} and queue {queue!r} differ: the name is the queue")
    return Task(fn, name or queue or fn.__name__, fields, owner=owner)


def register(t: Task[Any, Any]) -> None:
    """Adds a module-level task to the global registry `ferry-worker package` reads."""
    existing = _REGISTRY.get(t.name)
    if existing is not None and (
        getattr(existing.fn, "__module__", None),
        getattr(existing.fn, "__qualname__", None),
    ) != (getattr(t.fn, "__module__", None), getattr(t.fn, "__qualname__", None)):
        raise ValueError(
            f"two tasks named {t.name!r}: {existing.fn.__module__}.{existing.fn.__qualname__} and "
            f"{t.fn.__module__}.{t.fn.__qualname__}"
        )
    _REGISTRY[t.name] = t  # a reloaded module replaces its own task


def registered_tasks() -> list[Task[Any, Any]]:
    """Every `@ferry.task` registered so far, in registration order."""
    return list(_REGISTRY.values())


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(
    name: str | None = None,
    /,
    *,
    queue: str | None = None,
    retries: int | None = None,
    max_attempts: int | None = None,
    timeout_ms: int | None = None,
    lease_ms: int | None = None,
    **fields: Any,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(
    name: Any = None,
    /,
    *,
    queue: str | None = None,
    retries: int | None = None,
    max_attempts: int | None = None,
    timeout_ms: int | None = None,
    lease_ms: int | None = None,
    **fields: Any,
) -> Any:
    """Declares a module-level task (found by `ferry-worker package`): the queue is `name`
    (default the function's name); `retries=3` allows 4 attempts; `timeout_ms` and `lease_ms`
    and any other keyword (`priority`, `tags`, `backoff`, ...) go on each enqueued job."""
    spec = job_fields(
        retries=retries, max_attempts=max_attempts, timeout_ms=timeout_ms, lease_ms=lease_ms, fields=fields
    )
    if callable(name):
        t = make_task(name, None, queue, spec, None)
        register(t)
        return t

    def decorate(fn: Callable[P, R]) -> Task[P, R]:
        t = make_task(fn, name, queue, spec, None)
        register(t)
        return t

    return decorate
