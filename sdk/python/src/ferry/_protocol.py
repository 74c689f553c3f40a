"""The slice of the client a worker needs, so the runtime runs unchanged on the real
`AsyncClient` and on `ferry.testing`'s in-memory client (the parity suite depends on it)."""

from __future__ import annotations

from typing import Any, Protocol

from ferry.types import BatchResult, ClaimedJob, EnqueueResult, HeartbeatResult


class WorkerTransport(Protocol):
    """What `ferry.Worker` calls; both clients implement it with the server's semantics."""

    async def enqueue(self, queue: str, payload: Any = None, **fields: Any) -> EnqueueResult:
        """Enqueue one job; `fields` are the job spec's other fields (`max_attempts`,
        `timeout_ms`, `lease_ms`, `unique_key`, `priority`, `delay_ms`, `tags`, ...)."""
        ...

    async def claim(
        self,
        queue: str,
        *,
        worker: str,
        max: int = 1,
        wait_ms: int = 0,
        lease_ms: int | None = None,
    ) -> list[ClaimedJob]:
        """`POST /v1/queues/{queue}/claim`: the leased jobs, possibly none."""
        ...

    async def heartbeat_batch(
        self, items: list[dict[str, Any]], *, worker: str | None = None
    ) -> list[HeartbeatResult]:
        """`POST /v1/jobs/heartbeat` with `items` of `{id, lease, extend_ms?}`: one result
        per item, in order (`ok: false` with `error.code == "stale_lease"` when lost)."""
        ...

    async def complete_batch(self, items: list[dict[str, Any]]) -> list[BatchResult]:
        """`POST /v1/jobs/complete` with `items` of `{id, lease, result?}`."""
        ...

    async def fail_batch(self, items: list[dict[str, Any]]) -> list[BatchResult]:
        """`POST /v1/jobs/fail` with `items` of `{id, lease, error, retry?}`."""
        ...

    async def release(self, id: str, lease: str) -> dict[str, Any]:
        """`POST /v1/jobs/{id}/release`: ready again, the attempt not counted."""
        ...

    async def aclose(self) -> None:
        """Closes connections."""
        ...
