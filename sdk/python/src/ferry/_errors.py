"""The exceptions a ferry call raises: one class per server error code, chosen by the body's
`error.code` (never by the HTTP status, which several codes share), so callers branch with
`except ferry.StaleLease:` rather than by comparing strings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, cast

if TYPE_CHECKING:
    from ferry.types import Item

__all__ = [
    "CODES",
    "BadRequest",
    "CircuitOpen",
    "Conflict",
    "FerryConnectionError",
    "FerryError",
    "Forbidden",
    "HeadersTooLarge",
    "Internal",
    "InvalidState",
    "NotFound",
    "PayloadTooLarge",
    "PreconditionFailed",
    "PreconditionRequired",
    "QueueFull",
    "RateLimited",
    "RequestTimeout",
    "SchemaTooNew",
    "ServerSaturated",
    "StaleLease",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
    "UriTooLong",
    "ValidationFailed",
    "VersionConflict",
    "error_from",
]


class FerryError(Exception):
    """Any failure of a ferry call; subclasses name the server's error code."""

    code_name: ClassVar[str | None] = None

    code: str
    status: int | None
    message: str
    field: str | None
    details: dict[str, Any] | None
    retry_after: float | None
    position: int | None

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        field: str | None = None,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
        position: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code or self.code_name or "unknown"
        self.status = status
        self.message = message
        self.field = field
        self.details = details
        self.retry_after = retry_after
        self.position = position

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        status = f"{self.status} " if self.status else ""
        return f"{status}{self.code}: {self.message}{where}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, message={self.message!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword-only fields survive pickling (errors cross process pools).
        return (_rebuild, (type(self), self.message, self.__dict__.copy()))


def _rebuild(cls: type[FerryError], message: str, state: dict[str, Any]) -> FerryError:
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    err.__dict__.update(state)
    return err


class BadRequest(FerryError):
    """400: malformed JSON, a wrong type, an unknown parameter."""

    code_name = "bad_request"


class ValidationFailed(FerryError):
    """422: well-formed but invalid input; `field` names it (`position` for a cron text)."""

    code_name = "validation_failed"


class Unauthorized(FerryError):
    """401: a missing or invalid token."""

    code_name = "unauthorized"


class Forbidden(FerryError):
    """403: the token lacks the scope, queue or agent (or a cross-site request)."""

    code_name = "forbidden"


class NotFound(FerryError):
    """404: no such job, schedule, work item, agent, host, token or route."""

    code_name = "not_found"


class StaleLease(FerryError):
    """409: the lease is no longer the job's (expired, re-leased or finished): drop the work."""

    code_name = "stale_lease"


class InvalidState(FerryError):
    """409: the operation does not apply to the job's current state."""

    code_name = "invalid_state"


class Conflict(FerryError):
    """409: the thing to create exists already (a schedule's name, say)."""

    code_name = "conflict"


class _StaleVersion:
    """What a refused compare-and-set on a work item carries in `details`: the item's
    `expected_version` and `actual_version`, the `conflicting_paths` (JSON Pointers) changed
    since, and the `current` item (write again from it)."""

    details: dict[str, Any] | None

    @property
    def current(self) -> Item | None:
        """The item as it is now (`details.current`)."""
        return cast("Item | None", (self.details or {}).get("current"))

    @property
    def expected_version(self) -> int | None:
        """The version the write expected."""
        return cast("int | None", (self.details or {}).get("expected_version"))

    @property
    def actual_version(self) -> int | None:
        """The item's version when the write arrived."""
        return cast("int | None", (self.details or {}).get("actual_version"))

    @property
    def conflicting_paths(self) -> list[str]:
        """The paths the write touches that changed since `expected_version` (every changed
        path for a strict write)."""
        return cast("list[str]", (self.details or {}).get("conflicting_paths") or [])


class VersionConflict(_StaleVersion, FerryError):
    """409: a work item changed since the body's `expected_version` (`current`,
    `conflicting_paths`, ... from `details`): read it again and retry (`update_item` does)."""

    code_name = "version_conflict"


class PreconditionFailed(_StaleVersion, FerryError):
    """412: a work item's version is not the `If-Match` one (same `details` as
    `VersionConflict`)."""

    code_name = "precondition_failed"


class PreconditionRequired(FerryError):
    """428: the server requires `expected_version` or `If-Match` on every item PATCH."""

    code_name = "precondition_required"


class PayloadTooLarge(FerryError):
    """413: over a size or batch limit; `field` names it."""

    code_name = "payload_too_large"


class UnsupportedMediaType(FerryError):
    """415: a body that is not `application/json`."""

    code_name = "unsupported_media_type"


class RequestTimeout(FerryError):
    """408: the request body did not arrive in time."""

    code_name = "request_timeout"


class UriTooLong(FerryError):
    """414: the path and query are over the server's limit."""

    code_name = "uri_too_long"


class HeadersTooLarge(FerryError):
    """431: the headers are over the server's limit."""

    code_name = "headers_too_large"


class RateLimited(FerryError):
    """429: this client (or, for a send or broadcast, the sending agent) is over its rate;
    `retry_after` says when to come back."""

    code_name = "rate_limited"


class QueueFull(FerryError):
    """429: the queue holds its `max_depth` (backpressure; `details` has the depth), or a
    recipient's inbox holds `limits.max_inbox_depth` messages (`details["agent"]` names it;
    nothing was sent to anyone)."""

    code_name = "queue_full"


class ServerSaturated(FerryError):
    """503: the server has its maximum of pending writes or requests; retry later."""

    code_name = "server_saturated"


class CircuitOpen(FerryError):
    """503: the database failed repeatedly; the server fails fast until it recovers."""

    code_name = "circuit_open"


class Unavailable(FerryError):
    """503: the database refuses work for now (outage, shutdown)."""

    code_name = "unavailable"


class SchemaTooNew(FerryError):
    """500: the database was written by a newer ferry."""

    code_name = "schema_too_new"


class Internal(FerryError):
    """500: a server bug or an unexpected storage failure."""

    code_name = "internal"


class FerryConnectionError(FerryError):
    """No answer from the server (refused, reset, timed out) after the retry budget."""

    code_name = "connection_failed"


# Every server error code and its class: the OpenAPI document's `ErrorCode` enum, exactly.
CODES: dict[str, type[FerryError]] = {
    cls.code_name: cls
    for cls in (
        BadRequest,
        ValidationFailed,
        Unauthorized,
        Forbidden,
        NotFound,
        StaleLease,
        InvalidState,
        Conflict,
        VersionConflict,
        PreconditionFailed,
        PreconditionRequired,
        PayloadTooLarge,
        UnsupportedMediaType,
        RequestTimeout,
        UriTooLong,
        HeadersTooLarge,
        RateLimited,
        QueueFull,
        ServerSaturated,
        CircuitOpen,
        Unavailable,
        SchemaTooNew,
        Internal,
    )
    if cls.code_name
}


def error_from(error: Any, *, status: int | None = None, retry_after: float | None = None) -> FerryError:
    """The exception for a server `error` object (`{"code","message",...}`), by its code; an
    unknown code (a newer server) is a plain `FerryError` carrying that code."""
    if not isinstance(error, dict):
        return FerryError(f"unexpected error body: {error!r}", code="unknown", status=status)
    code = error.get("code")
    code = code if isinstance(code, str) else "unknown"
    cls = CODES.get(code, FerryError)
    message = error.get("message")
    field = error.get("field")
    position = error.get("position")
    details = error.get("details")
    return cls(
        message if isinstance(message, str) else code,
        code=code,
        status=status,
        field=field if isinstance(field, str) else None,
        details=details if isinstance(details, dict) else None,
        retry_after=retry_after,
        position=position if isinstance(position, int) else None,
    )
