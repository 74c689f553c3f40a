"""What `ferry.AsyncClient` (`_client.py`) and `ferry.Client` (`_client_sync.py`, generated from
it) share: the `@operation` marker, argument helpers, the pagers' common part, the retry
classes of the work-items writes, the base64 of checkpoints' typed values, and the wire form
of episodes.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Generic, TypeVar, cast
from urllib.parse import quote

from ferry._http import ALWAYS, NEVER, REFUSED

__all__ = ["DEFAULT_URL", "operation", "operations"]

DEFAULT_URL = "http://127.0.0.1:7700"

_F = TypeVar("_F", bound=Callable[..., Any])
_P = TypeVar("_P")  # a page (a TypedDict)
_T = TypeVar("_T")  # one row of a page


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


class _PagerBase(Generic[_P, _T]):
    """A list call's arguments; `_key` names the page's list of rows."""

    _key: ClassVar[str] = "jobs"

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

    def _rows(self, page: _P) -> list[_T]:
        return cast("list[_T]", cast("Mapping[str, Any]", page)[self._key])

    @staticmethod
    def _next(page: _P) -> str | None:
        return cast("str | None", cast("Mapping[str, Any]", page).get("next_cursor"))


# ---- work items --------------------------------------------------------------------------------

# The fields of a merge-mode PATCH that conflict when changed since `expected_version` (`status`
# and the artifacts never do), and what only rides along with a write.
_MERGE_CHECKED = frozenset(
    {"title", "description", "assignee", "context", "agent", "expected_version", "mode", "reason"}
)


def _patch_retry(body: Mapping[str, Any], if_match: int | None) -> int:
    """The retry class of an item PATCH (or a batch's patch op).

    `ALWAYS` when a repeat after a lost answer cannot apply twice: the write carries the version
    it read (`expected_version` or `If-Match`) and is `strict` (any change since conflicts, its
    own first application included; an `If-Match` write without `mode` is strict) or, in merge
    mode, touches only paths that conflict when
    changed since (title, description, assignee, context: a first application changed them, so
    the repeat conflicts; one that changed nothing bumped no version and the repeat is the same
    no-op). So it applies once or answers `version_conflict` / `precondition_failed`.

    Otherwise `REFUSED`: without a precondition the last write wins (a repeat would undo a
    writer in between), and merge-mode `status` and artifact changes never conflict (a repeated
    `in_progress → blocked` could undo someone's `blocked → in_progress`).
    """
    if if_match is None and body.get("expected_version") is None:
        return REFUSED
    mode = body.get("mode")
    if mode == "strict" or (mode is None and if_match is not None):
        return ALWAYS
    return ALWAYS if set(body) <= _MERGE_CHECKED else REFUSED


def _batch_retry(ops: Sequence[Mapping[str, Any]]) -> int:
    """A batch is retried as its least safe op: a create without `id` is never repeated (it
    would make a second item), a patch as `_patch_retry` says, checks and creates with an `id`
    (a repeat is a duplicate) always."""
    retry = ALWAYS
    for op in ops:
        kind = op.get("op")
        if kind == "create":
            if not op.get("id"):
                return NEVER
        elif kind == "patch":
            body = {k: v for k, v in op.items() if k not in ("op", "id")}
            retry = max(retry, _patch_retry(body, None))
        elif kind != "check":
            retry = max(retry, REFUSED)
    return retry


def _if_match(version: int | None) -> dict[str, str] | None:
    return None if version is None else {"if-match": f'"{version}"'}


def _jitter() -> float:
    """Seconds between two attempts of `update_item`: 2 to 50 ms."""
    return random.uniform(0.002, 0.05)


# ---- checkpoints -------------------------------------------------------------------------------

# Typed values travel as `{"type", "data"}` with `data` in standard base64; the methods take and
# give raw bytes.


def _b64(data: bytes | bytearray | memoryview) -> str:
    """Standard, padded base64 of `data`."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, not {type(data).__name__}")
    return base64.b64encode(data).decode("ascii")


def _typed(value: Mapping[str, Any] | Sequence[Any]) -> dict[str, str]:
    """The wire form of a typed value given as `{"type", "data"}` or a `(type, data)` pair (what
    a LangGraph serializer's `dumps_typed` returns)."""
    if isinstance(value, Mapping):
        type_, data = value["type"], value["data"]
    else:
        type_, data = value
    return {"type": str(type_), "data": _b64(data)}


def _blobs_out(blobs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"channel": b["channel"], "version": str(b["version"]), "type": b["type"], "data": _b64(b["data"])}
        for b in blobs
    ]


def _writes_out(writes: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for w in writes:
        row: dict[str, Any] = {"channel": w["channel"], "type": w["type"], "data": _b64(w["data"])}
        if w.get("idx") is not None:
            row["idx"] = w["idx"]
        out.append(row)
    return out


def _fence(job_id: str | None, lease: str | None) -> dict[str, str]:
    """`job_id` and `lease` for a lease-fenced checkpoint write: both or neither."""
    if (job_id is None) != (lease is None):
        raise ValueError("give both job_id and lease, or neither")
    return {} if job_id is None or lease is None else {"job_id": job_id, "lease": lease}


def _unb64(row: dict[str, Any]) -> None:
    if isinstance(row.get("data"), str):
        row["data"] = base64.b64decode(row["data"], validate=True)


def _record(row: Any) -> Any:
    """A checkpoint as the server sent it, its typed values' `data` decoded to bytes (in place)."""
    if isinstance(row, dict):
        cp = row.get("checkpoint")
        if isinstance(cp, dict):
            _unb64(cp)
        for key in ("blobs", "pending_writes"):
            for item in row.get(key) or ():
                _unb64(item)
    return row


def _json_param(value: Mapping[str, Any] | None) -> str | None:
    """A JSON object as one query parameter (compact; URL-encoded by the transport)."""
    if value is None:
        return None
    return json.dumps(dict(value), separators=(",", ":"), ensure_ascii=False, allow_nan=False)


# ---- episodic memory ---------------------------------------------------------------------------


def _vector(values: Sequence[float] | Any) -> list[float]:
    """An embedding as a JSON list of floats (a numpy array's `float32`s are not JSON)."""
    return [float(x) for x in values]


def _outcome(outcome: str | Mapping[str, Any]) -> dict[str, Any]:
    """An episode's wire `outcome`: a status alone (`"success"`) or `{status, summary?, reward?}`."""
    return {"status": outcome} if isinstance(outcome, str) else dict(outcome)


def _episode_out(episode: Mapping[str, Any]) -> dict[str, Any]:
    """An episode body as sent: its fields left as given, but an `embedding` as a list of
    floats and a bare `outcome` status as `{"status"}`; None values are not sent."""
    out = {k: v for k, v in episode.items() if v is not None}
    if "embedding" in out:
        out["embedding"] = _vector(out["embedding"])
    if "outcome" in out:
        out["outcome"] = _outcome(out["outcome"])
    for key in ("steps", "artifacts"):
        if key in out:
            out[key] = [dict(x) for x in out[key]]
    if "tags" in out:
        out["tags"] = list(out["tags"])
    if "metadata" in out:
        out["metadata"] = dict(out["metadata"])
    return out
