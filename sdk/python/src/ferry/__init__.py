"""ferry: a client for every endpoint of the ferry server, and decorator workers with its
guarantees (leases, fencing, release on shutdown).

Names load on first use, so `import ferry` stays cheap for scripts that only enqueue.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Each public name and the module that defines it. The client helper adds its error classes
# here (one per server error code); the worker helper adds the runtime's names.
_EXPORTS: dict[str, str] = {
    "Client": "ferry._client",
    "AsyncClient": "ferry._client",
    "FerryError": "ferry._errors",
    "BadRequest": "ferry._errors",
    "ValidationFailed": "ferry._errors",
    "Unauthorized": "ferry._errors",
    "Forbidden": "ferry._errors",
    "NotFound": "ferry._errors",
    "StaleLease": "ferry._errors",
    "InvalidState": "ferry._errors",
    "Conflict": "ferry._errors",
    "VersionConflict": "ferry._errors",
    "PreconditionFailed": "ferry._errors",
    "PreconditionRequired": "ferry._errors",
    "PayloadTooLarge": "ferry._errors",
    "UnsupportedMediaType": "ferry._errors",
    "RequestTimeout": "ferry._errors",
    "UriTooLong": "ferry._errors",
    "HeadersTooLarge": "ferry._errors",
    "RateLimited": "ferry._errors",
    "QueueFull": "ferry._errors",
    "ServerSaturated": "ferry._errors",
    "CircuitOpen": "ferry._errors",
    "Unavailable": "ferry._errors",
    "SchemaTooNew": "ferry._errors",
    "Internal": "ferry._errors",
    "FerryConnectionError": "ferry._errors",
    "Worker": "ferry._worker",
    "task": "ferry._task",
    "Task": "ferry._task",
    "current_job": "ferry._context",
    "JobContext": "ferry._context",
    "JobCancelled": "ferry._context",
    "PayloadInvalid": "ferry._validate",
    "WorkerStats": "ferry._worker",
}

if TYPE_CHECKING:
    from ferry._client import AsyncClient as AsyncClient
    from ferry._client import Client as Client
    from ferry._context import JobCancelled as JobCancelled
    from ferry._context import JobContext as JobContext
    from ferry._context import current_job as current_job
    from ferry._errors import BadRequest as BadRequest
    from ferry._errors import CircuitOpen as CircuitOpen
    from ferry._errors import Conflict as Conflict
    from ferry._errors import FerryConnectionError as FerryConnectionError
    from ferry._errors import FerryError as FerryError
    from ferry._errors import Forbidden as Forbidden
    from ferry._errors import HeadersTooLarge as HeadersTooLarge
    from ferry._errors import Internal as Internal
    from ferry._errors import InvalidState as InvalidState
    from ferry._errors import NotFound as NotFound
    from ferry._errors import PayloadTooLarge as PayloadTooLarge
    from ferry._errors import PreconditionFailed as PreconditionFailed
    from ferry._errors import PreconditionRequired as PreconditionRequired
    from ferry._errors import QueueFull as QueueFull
    from ferry._errors import RateLimited as RateLimited
    from ferry._errors import RequestTimeout as RequestTimeout
    from ferry._errors import SchemaTooNew as SchemaTooNew
    from ferry._errors import ServerSaturated as ServerSaturated
    from ferry._errors import StaleLease as StaleLease
    from ferry._errors import Unauthorized as Unauthorized
    from ferry._errors import Unavailable as Unavailable
    from ferry._errors import UnsupportedMediaType as UnsupportedMediaType
    from ferry._errors import UriTooLong as UriTooLong
    from ferry._errors import ValidationFailed as ValidationFailed
    from ferry._errors import VersionConflict as VersionConflict
    from ferry._task import Task as Task
    from ferry._task import task as task
    from ferry._validate import PayloadInvalid as PayloadInvalid
    from ferry._worker import Worker as Worker
    from ferry._worker import WorkerStats as WorkerStats

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ferry' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
