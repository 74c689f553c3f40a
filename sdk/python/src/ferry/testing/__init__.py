"""Testing helpers: a real server for tests (`FerryServer`, pytest fixtures in `plugin`), an
in-memory client with the server's job semantics (`InMemoryClient`), and `eager()`, which
makes `.enqueue` run tasks inline.

Names load on first use, so importing the pytest plugin stays cheap.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import inspect
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, overload

_EXPORTS: dict[str, str] = {
    "FerryServer": "ferry.testing._server",
    "InMemoryClient": "ferry.testing._memory",
    "SyncInMemoryClient": "ferry.testing._memory",
    "ManualClock": "ferry.testing._memory",
}

if TYPE_CHECKING:
    from ferry.testing._memory import InMemoryClient as InMemoryClient
    from ferry.testing._memory import ManualClock as ManualClock
    from ferry.testing._memory import SyncInMemoryClient as SyncInMemoryClient
    from ferry.testing._server import FerryServer as FerryServer

__all__ = sorted([*_EXPORTS, "eager"])

F = TypeVar("F", bound=Callable[..., Any])


def _flag() -> contextvars.ContextVar[bool]:
    from ferry import _task

    var: contextvars.ContextVar[bool] = _task.EAGER
    return var


class _Eager:
    """The context manager and decorator `eager()` returns."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._tokens: list[contextvars.Token[bool]] = []

    def __enter__(self) -> _Eager:
        self._tokens.append(_flag().set(self._enabled))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _flag().reset(self._tokens.pop())

    def __call__(self, fn: F) -> F:
        enabled = self._enabled
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: Any, **kwargs: Any) -> Any:
                with _Eager(enabled):
                    return await fn(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            with _Eager(enabled):
                return fn(*args, **kwargs)

        return run  # type: ignore[return-value]


@overload
def eager(fn: F, /) -> F: ...


@overload
def eager(enabled: bool = True, /) -> _Eager: ...


def eager(arg: Any = True, /) -> Any:
    """Makes `task.enqueue(...)` run the task inline (serialise → validate → call) and raise at
    the call site, so unit tests need neither a server nor a worker.

    `with ferry.testing.eager(): ...`, or a decorator on a test function, sync or async
    (`@eager` or `@eager()`); `eager(False)` switches it off inside an eager block.
    """
    if callable(arg):
        return _Eager(True)(arg)
    return _Eager(bool(arg))


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ferry.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
