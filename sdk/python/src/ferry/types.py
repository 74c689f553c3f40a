"""Wire shapes as TypedDicts: results are the server's JSON as parsed, with no copying, so
typing costs nothing at run time."""

from __future__ import annotations

import sys
from typing import Any, TypedDict

if sys.version_info >= (3, 11):
    from typing import NotRequired
else:  # httpx's anyio brings typing_extensions on 3.10
    from typing_extensions import NotRequired


class ErrorInfo(TypedDict):
    """The `error` object of a failed request or batch item."""

    code: str
    message: str
    field: NotRequired[str]
    position: NotRequired[int]
    details: NotRequired[dict[str, Any]]


class ClaimedJob(TypedDict):
    """A job handed to a worker, with the lease it must present to finish it."""

    id: str
    queue: str
    payload: Any
    attempt: int
    max_attempts: int
    priority: int
    tags: list[str]
    lease: str
    lease_expires_at: str
    timeout_ms: NotRequired[int]


class EnqueueResult(TypedDict):
    """`POST /v1/jobs` for one job."""

    id: str
    duplicate: NotRequired[bool]


class BatchResult(TypedDict):
    """One item's outcome in `POST /v1/jobs/complete` and `/v1/jobs/fail`."""

    id: str
    ok: bool
    state: NotRequired[str]
    attempt: NotRequired[int]
    run_at: NotRequired[str]
    error: NotRequired[ErrorInfo]


class HeartbeatResult(TypedDict):
    """One item's outcome in `POST /v1/jobs/heartbeat`."""

    id: str
    ok: bool
    lease_expires_at: NotRequired[str]
    error: NotRequired[ErrorInfo]


# ---- jobs --------------------------------------------------------------------------------------


class EnqueueBatchResult(TypedDict):
    """`POST /v1/jobs` for `{"jobs": [...]}`: one id per job, in order."""

    ids: list[str]
    duplicates: NotRequired[list[int]]


class StateResult(TypedDict):
    """A job's id and its state after the call (complete, release, cancel)."""

    id: str
    state: str


class FailResult(TypedDict):
    """`POST /v1/jobs/{id}/fail`: `scheduled` (retry at `run_at`), `ready` or `dead`."""

    id: str
    state: str
    attempt: int
    run_at: NotRequired[str | None]


class HeartbeatOutcome(TypedDict):
    """`POST /v1/jobs/{id}/heartbeat`: the lease's new expiry."""

    id: str
    lease_expires_at: str


class ErrorRecord(TypedDict):
    """One failed attempt in a job's history."""

    attempt: int
    at: str
    kind: str
    message: str
    worker: NotRequired[str | None]


class Job(TypedDict):
    """A job with its history (`GET /v1/jobs/{id}`, lists)."""

    id: str
    queue: str
    state: str
    payload: Any
    priority: int
    attempt: int
    max_attempts: int
    backoff: dict[str, Any]
    lease_ms: int
    timeout_ms: NotRequired[int]
    unique_key: NotRequired[str | None]
    depends_on: list[str]
    tags: list[str]
    run_at: str
    created_at: str
    updated_at: str
    started_at: NotRequired[str | None]
    finished_at: NotRequired[str | None]
    lease_expires_at: NotRequired[str | None]
    worker: NotRequired[str | None]
    result: NotRequired[Any]
    errors: list[ErrorRecord]
    cancel_reason: NotRequired[str | None]
    convoy_id: NotRequired[str]


class JobsPage(TypedDict):
    """One page of jobs; pass `next_cursor` back for the next (absent on the last)."""

    jobs: list[Job]
    next_cursor: NotRequired[str | None]


class ReplayResult(TypedDict):
    """`POST /v1/dlq/replay`."""

    replayed: int


class PurgeResult(TypedDict):
    """`POST /v1/dlq/purge`."""

    purged: int


# ---- convoys -----------------------------------------------------------------------------------


class ConvoyCounts(TypedDict):
    """A convoy's members by where they are (kept on the convoy: they outlive pruned members).
    `ready`, `running` and `retrying` (waiting out a retry's backoff) hold a slot; `held`
    wait for one; `failed` are dead members."""

    total: int
    held: int
    ready: int
    running: int
    retrying: int
    completed: int
    failed: int
    cancelled: int


class AdaptiveBounds(TypedDict):
    """The bounds of a self-tuning convoy limit: 1 ≤ `min` ≤ `start` ≤ `max`."""

    min: int
    max: int
    start: NotRequired[int]


class AdaptiveParallel(TypedDict):
    """`max_parallel` of a convoy whose limit the server tunes."""

    adaptive: AdaptiveBounds


class Convoy(TypedDict):
    """A convoy: members on `queue` run at most `limit` at a time (`max_parallel`, a number or
    adaptive bounds); `state` is `open`, `sealed`, then `completed`, `failed` or `cancelled`.
    `on_complete_job_id` and `finished_at` appear once it ended."""

    id: str
    name: str
    queue: str
    max_parallel: int | AdaptiveParallel
    sealed: bool
    on_failure: str
    on_complete: NotRequired[dict[str, Any]]
    state: str
    limit: int
    counts: ConvoyCounts
    failed_total: int
    on_complete_job_id: NotRequired[str | None]
    created_at: str
    finished_at: NotRequired[str | None]


class ConvoyCreated(TypedDict):
    """`POST /v1/convoys`: the convoy, one job id per member in order, and the indexes of
    members whose `unique_key` matched an earlier member; a repeated `id` answers
    `duplicate: true` with `ids` and `duplicates` empty (nothing added)."""

    convoy: Convoy
    ids: list[str]
    duplicates: list[int]
    duplicate: NotRequired[bool]


class ConvoyMembersAdded(TypedDict):
    """`POST /v1/convoys/{id}/members`: one job id per member in order, and the indexes of
    members whose `unique_key` matched an earlier member (nothing added for them)."""

    ids: list[str]
    duplicates: list[int]


class ConvoyMember(TypedDict):
    """One member of a convoy: its job's id, job `state` (`held` while over the limit) and
    `attempt`."""

    id: str
    state: str
    attempt: int
    started_at: NotRequired[str | None]
    finished_at: NotRequired[str | None]


class ConvoyMembersPage(TypedDict):
    """One page of a convoy's members, in the order added; pass `next_cursor` back."""

    members: list[ConvoyMember]
    next_cursor: NotRequired[str | None]


class ConvoysPage(TypedDict):
    """One page of convoys, oldest first; pass `next_cursor` back."""

    convoys: list[Convoy]
    next_cursor: NotRequired[str | None]


class ConvoySummary(TypedDict):
    """How a convoy ended, as its `on_complete` job receives it: the first
    `limits.max_convoy_failed_ids` dead members' ids in `failed_ids`, all of them counted in
    `failed_total`."""

    id: str
    name: str
    state: str
    counts: ConvoyCounts
    failed_ids: list[str]
    failed_total: int


class ConvoyCompletePayload(TypedDict):
    """The payload of a convoy's `on_complete` job (unique key `convoy:<id>:complete`): the
    convoy's summary and the spec's own `payload` (None when it had none)."""

    convoy: ConvoySummary
    payload: Any


# ---- queues ------------------------------------------------------------------------------------


class QueueLimits(TypedDict, total=False):
    """A queue's flow limits across every node (unset: none)."""

    max_running: int | None
    max_starts_per_sec: float | None
    max_depth: int | None


class QueueStats(TypedDict):
    """`GET /v1/queues`: counts by state, oldest ready age, paused, limits."""

    queue: str
    counts: dict[str, int]
    paused: bool
    oldest_ready_age_ms: NotRequired[int | None]
    limits: NotRequired[QueueLimits]


class PauseResult(TypedDict):
    """Pause and resume of a queue."""

    queue: str
    paused: bool


class LimitsResult(TypedDict):
    """`GET`/`PUT /v1/queues/{queue}/limits`."""

    queue: str
    limits: QueueLimits


# ---- events ------------------------------------------------------------------------------------


class Subject(TypedDict):
    """What an event is about: a `job`, a `queue` or a `schedule`."""

    kind: str
    id: str


class Event(TypedDict):
    """One state change; `cursor` grows by one per event, with no gaps."""

    cursor: int
    type: str
    subject: Subject
    at: str
    queue: NotRequired[str | None]
    job_id: NotRequired[str | None]
    tags: NotRequired[list[str]]
    data: NotRequired[dict[str, Any] | None]


class EventsPage(TypedDict):
    """`GET /v1/events` (long-poll): pass `next_cursor` back as `since`."""

    events: list[Event]
    next_cursor: int


# ---- schedules ---------------------------------------------------------------------------------


class Schedule(TypedDict):
    """A cron schedule with its next runs."""

    name: str
    cron: str
    timezone: str
    job: dict[str, Any]
    misfire: str
    catch_up_max: int
    paused: bool
    created_at: str
    updated_at: str
    last_run_at: NotRequired[str | None]
    next_run_at: NotRequired[str | None]
    next_runs: NotRequired[list[str]]


class Deleted(TypedDict):
    """`DELETE /v1/schedules/{name}`."""

    name: str
    deleted: bool


# ---- work items --------------------------------------------------------------------------------


class Artifact(TypedDict):
    """An output of a work item, keyed by `uri`; `meta` is absent when none was given."""

    uri: str
    meta: NotRequired[Any]


class Item(TypedDict):
    """A work item: shared task state that agents change by compare-and-set. `status` is one
    of `todo`, `in_progress`, `blocked`, `done`, `failed`, `cancelled`; `version` is 1 at
    creation and grows by one per change (the `ETag`)."""

    id: str
    title: str
    description: str
    status: str
    assignee: str | None
    artifacts: list[Artifact]
    context: dict[str, Any]
    version: int
    created_at: str
    updated_at: str


class ItemResult(TypedDict):
    """`POST /v1/items`: the item, and `duplicate: true` when it repeated an earlier create."""

    item: Item
    duplicate: NotRequired[bool]


class PatchItemResult(TypedDict):
    """`PATCH /v1/items/{id}`: the item after the write; `changed` is false when it changed
    nothing (no new version)."""

    item: Item
    changed: bool


class ItemsPage(TypedDict):
    """One page of items (ordered by id); pass `next_cursor` back for the next."""

    items: list[Item]
    next_cursor: NotRequired[str | None]


class HistoryEntry(TypedDict):
    """One version of an item: who wrote it (`agent`), how (`mode`: `create`, `merge`,
    `strict`), the changed `paths` (JSON Pointers, context cut at depth 3) and the RFC 7396
    `patch` from the version before."""

    version: int
    at: str
    agent: str | None
    mode: str
    paths: list[str]
    patch: dict[str, Any]
    reason: NotRequired[str]


class HistoryPage(TypedDict):
    """One page of an item's history, newest first."""

    history: list[HistoryEntry]
    next_cursor: NotRequired[str | None]


class ConflictDetails(TypedDict):
    """`details` of `version_conflict` (409) and `precondition_failed` (412)."""

    item_id: str
    expected_version: int
    actual_version: int
    conflicting_paths: list[str]
    current: Item


# ---- agent messages ----------------------------------------------------------------------------


class Recipient(TypedDict):
    """A recipient of a send: `last_seen_at` is its latest receive, ack or nack (to the
    second), null if it never received."""

    agent: str
    last_seen_at: str | None


class SendResult(TypedDict):
    """`POST /v1/messages`: the message id, when it expires, each recipient; `duplicate: true`
    when it repeated an earlier send with the same `from` and `dedup_key` (the first answer)."""

    id: str
    expires_at: str
    recipients: list[Recipient]
    duplicate: NotRequired[bool]


class BroadcastResult(TypedDict):
    """`POST /v1/broadcasts`: one row however many agents read it; `seq` is its place in the
    channel."""

    id: str
    channel: str
    seq: int
    expires_at: str


# `from` (the sending agent) is a Python keyword: only the functional form can name it.
_Sent = TypedDict("_Sent", {"from": str})


class Message(_Sent):
    """A received message from agent `from` (`kind` `direct` or `broadcast`, with its
    `channel`): ack or nack it with `receipt`, which goes stale when the message is delivered
    again; `delivery_count` counts this delivery."""

    id: str
    kind: str
    channel: NotRequired[str]
    body: Any
    sent_at: str
    expires_at: str
    reply_to: NotRequired[str]
    correlation_id: NotRequired[str]
    receipt: str
    delivery_count: int


class ReceiptResult(TypedDict):
    """One receipt's outcome in an ack or nack: `ok: false` with `error.code` `stale_lease`
    when the message was delivered again, acked or gone since (nothing changed)."""

    id: str
    ok: bool
    error: NotRequired[ErrorInfo]


class DeadMessage(_Sent):
    """A message (from agent `from`) in an agent's dead letters, after `[messages]
    max_deliveries` unacked deliveries."""

    id: str
    kind: str
    channel: NotRequired[str]
    body: Any
    sent_at: str
    dead_at: str
    reply_to: NotRequired[str]
    correlation_id: NotRequired[str]
    delivery_count: int


class DeadMessagesPage(TypedDict):
    """One page of an agent's dead letters, oldest death first; pass `next_cursor` back."""

    messages: list[DeadMessage]
    next_cursor: NotRequired[str | None]


class ChannelCursor(TypedDict):
    """An agent's position in a channel: the last broadcast `seq` it has passed."""

    channel: str
    seq: int


class AgentInfo(TypedDict):
    """An inbox: messages `ready` now (broadcasts past its cursors included), `in_flight`
    (received, not acked within their visibility), `dead`; `channels` only from `get_agent`."""

    name: str
    ready: int
    in_flight: int
    dead: int
    last_seen_at: str | None
    channels: NotRequired[list[ChannelCursor]]


class AgentsPage(TypedDict):
    """One page of agents, by name; pass `next_cursor` back for the next."""

    agents: list[AgentInfo]
    next_cursor: NotRequired[str | None]


# ---- checkpoints (LangGraph) -------------------------------------------------------------------
#
# On the wire a typed value is `{"type", "data"}` with `data` in standard base64; the client
# methods take and return `data` as raw `bytes` (they encode and decode the base64), so these
# shapes carry bytes where the JSON carries text.


class TypedBytes(TypedDict):
    """An opaque serialized value: `type` names the serializer (LangGraph's `msgpack`,
    `msgpack+aes`, `json`, `pickle`, ...; `empty` means "version exists, no value"), `data`
    its bytes. The server never decodes either."""

    type: str
    data: bytes


class CheckpointBlob(TypedDict):
    """A channel's value at one version (`type` `empty` when the channel had none): stored
    once per (thread, ns, channel, version) and shared by every checkpoint listing that
    version."""

    channel: str
    version: str
    type: str
    data: bytes


class CheckpointWriteInput(TypedDict):
    """One write sent by `put_checkpoint_writes`: `idx` defaults to LangGraph's (the special
    channels' negative index, else the position in the batch)."""

    channel: str
    type: str
    data: bytes
    idx: NotRequired[int]


class CheckpointWrite(TypedDict):
    """A pending write of a checkpoint, as read: the task that made it, its channel, value,
    the task's `task_path` and its `idx`."""

    task_id: str
    channel: str
    type: str
    data: bytes
    task_path: str
    idx: int


class CheckpointPutResult(TypedDict):
    """`PUT /v1/threads/{thread}/checkpoints/{id}`: `blobs_written` new blobs stored,
    `blobs_shared` versions served by blobs stored before; `duplicate: true` when the same
    checkpoint was stored already (nothing written), `replaced: true` when other content was
    replaced."""

    thread: str
    ns: str
    checkpoint_id: str
    blobs_written: int
    blobs_shared: int
    duplicate: NotRequired[bool]
    replaced: NotRequired[bool]


class CheckpointWritesResult(TypedDict):
    """`POST .../checkpoints/{id}/writes`: how many writes were stored; `duplicate: true` when
    the batch had been stored already (nothing new)."""

    written: int
    duplicate: NotRequired[bool]


class CheckpointRecord(TypedDict):
    """A stored checkpoint: its parent, the serialized checkpoint, JSON `metadata`, the
    `channel_versions` (version strings), the channels whose values are deltas, and (from
    `get_checkpoint`, or `list_checkpoints(full=True)`) the `checkpoint`, one blob per
    `channel_versions` entry and the pending writes sorted by (task_path, task_id, idx).
    `bytes` is its stored size."""

    thread: str
    ns: str
    checkpoint_id: str
    parent_checkpoint_id: str | None
    checkpoint: NotRequired[TypedBytes]
    metadata: dict[str, Any]
    channel_versions: dict[str, str]
    delta_channels: list[str]
    blobs: NotRequired[list[CheckpointBlob]]
    pending_writes: NotRequired[list[CheckpointWrite]]
    bytes: int
    created_at: str


class CheckpointsPage(TypedDict):
    """One page of checkpoints, newest first by id; pass `next_cursor` back for the next."""

    checkpoints: list[CheckpointRecord]
    next_cursor: NotRequired[str | None]


class CheckpointThread(TypedDict):
    """A checkpoint thread: its JSON `metadata`, retention (`idle_ttl_ms`, `keep_last`: null
    is the server's default), what it holds (`checkpoints`, `blobs`, `writes`, `bytes` stored)
    and the job whose lease last wrote to it."""

    thread: str
    metadata: dict[str, Any]
    idle_ttl_ms: int | None
    keep_last: int | None
    checkpoints: int
    blobs: int
    writes: int
    bytes: int
    created_at: str
    updated_at: str
    last_job_id: str | None


class CheckpointThreadsPage(TypedDict):
    """One page of checkpoint threads, by thread id; pass `next_cursor` back for the next."""

    threads: list[CheckpointThread]
    next_cursor: NotRequired[str | None]


class ThreadDeleted(TypedDict):
    """`DELETE /v1/threads/{thread}`: how many checkpoints went (0 for an unknown thread)."""

    thread: str
    deleted: int


class ThreadCopied(TypedDict):
    """`POST /v1/threads/{thread}/copy`: the target thread and how many checkpoints were
    copied."""

    thread: str
    copied: int


class CheckpointsDeleted(TypedDict):
    """`POST /v1/checkpoints/prune` and `/v1/checkpoints/delete-runs`: checkpoints deleted."""

    deleted: int


# ---- episodic memory ---------------------------------------------------------------------------


class EpisodeStep(TypedDict):
    """One tool call or action of an episode: the `tool` (a name), what was done (`action`,
    searchable) and how it ended (`status`, free text such as `ok`)."""

    tool: str
    action: str
    status: str
    latency_ms: NotRequired[int | None]
    tokens: NotRequired[int | None]


class EpisodeOutcome(TypedDict):
    """How an episode ended: `status` `success`, `partial`, `failure` or `abandoned`, a
    `summary` (searchable) and a `reward` in [-1, 1]."""

    status: str
    summary: NotRequired[str]
    reward: NotRequired[float | None]


class EpisodeArtifact(TypedDict):
    """Something an episode produced or used, by reference (`kind` a name such as `file`,
    `pr`; `sha256` lower-case hex)."""

    kind: str
    uri: str
    sha256: NotRequired[str | None]


class Episode(TypedDict):
    """A stored episode: what an agent did (`description`, `steps`), how it ended (`outcome`),
    where (`domain`, `task_type`: hierarchical search's levels) and its `embedding`, when one
    was given. Only `tags` and `importance` change after creation; `version` is 1 at creation
    and grows by one per change (the `ETag`). Fields sent as null are absent."""

    id: str
    version: int
    created_at: str
    updated_at: str
    namespace: str
    agent: NotRequired[str | None]
    domain: NotRequired[str | None]
    task_type: NotRequired[str | None]
    description: str
    steps: list[EpisodeStep]
    outcome: NotRequired[EpisodeOutcome | None]
    artifacts: list[EpisodeArtifact]
    metadata: dict[str, Any]
    importance: float
    tags: list[str]
    embedding: NotRequired[list[float] | None]
    started_at: NotRequired[str | None]
    ended_at: NotRequired[str | None]
    job_id: NotRequired[str | None]
    idempotency_key: NotRequired[str | None]


class EpisodeAdded(TypedDict):
    """`POST /v1/memory/episodes`: the episode's id and when it was stored; a resend of its
    `idempotency_key` (or `id`) with the same body answers the stored id with `duplicate:
    true` and no `created_at`."""

    id: str
    created_at: NotRequired[str | None]
    duplicate: NotRequired[bool]


class EpisodesAdded(TypedDict):
    """`POST /v1/memory/episodes/batch`: each episode's id in the order sent (a resend's is the
    stored one)."""

    ids: list[str]


class EpisodesPage(TypedDict):
    """One page of episodes, newest first; pass `next_cursor` back for the next."""

    episodes: list[Episode]
    next_cursor: NotRequired[str | None]


class ScoreComponents(TypedDict):
    """The terms of a search result's score, unweighted: `text` (BM25) and `vector` (cosine)
    min-max normalized over the candidates, `recency` 0.5^(age / half-life), `importance`,
    and `outcome` (1 success, 0.5 partial, else 0)."""

    text: float
    vector: float
    recency: float
    importance: float
    outcome: float


class SearchHit(TypedDict):
    """One result of a memory search: the episode, its `score` (the weighted sum of the
    `components`)."""

    id: str
    score: float
    components: ScoreComponents
    episode: Episode


# `lambda` (MMR's trade-off) is a Python keyword: only the functional form can name it.
_Lambda = TypedDict("_Lambda", {"lambda": float | None})


class SearchDiversity(_Lambda):
    """MMR's figures: the `lambda` used (null when diversity was off) and the results' mean
    pairwise dissimilarity."""

    score: float


class SearchFeatures(TypedDict):
    """Which of a search's features ran (the server's `[memory]` switches, less the request's
    `disable`)."""

    hierarchical: bool
    diversity: bool
    recency: bool
    vectors: bool


class SearchResult(TypedDict):
    """`POST /v1/memory/search`: the results best first, and how they were found: `served_by`
    `hierarchical` or `flat`, the `level` candidates came from (`task_type`, `domain` or
    `namespace`), why the search widened or fell back (`fallback_reason`), and whether a
    bound cut the candidates (`truncated`)."""

    results: list[SearchHit]
    served_by: str
    level: str
    fallback_reason: NotRequired[str | None]
    candidates_scored: int
    truncated: bool
    diversity: SearchDiversity
    features: SearchFeatures
    took_ms: float


class RebuildProgress(TypedDict):
    """A memory rebuild's progress: whether one runs, episodes rewritten of `total`, its
    namespace (null: all) and why the last one stopped early, if it did."""

    running: bool
    done: int
    total: int
    namespace: NotRequired[str | None]
    error: NotRequired[str | None]


class MemoryStats(TypedDict):
    """`GET /v1/memory/stats`: episodes stored (of one namespace, or of every one the caller may
    read), their size as sent, the embedding dimension (null: none yet, or several
    namespaces), the oldest and newest `created_at`, and the rebuild's progress."""

    episodes: int
    bytes: int
    embedding_dims: NotRequired[int | None]
    oldest_at: NotRequired[str | None]
    newest_at: NotRequired[str | None]
    rebuild: RebuildProgress


class MemoryMismatches(TypedDict):
    """Derived rows of episodes that differ from what the episodes say, by kind."""

    fts: int
    tags: int
    embeddings: int


class ReconcileReport(TypedDict):
    """`POST /v1/memory/reconcile`: episodes checked, mismatched derived rows, rows rewritten
    (with `repair`)."""

    checked: int
    mismatches: MemoryMismatches
    repaired: int
    next_cursor: NotRequired[str | None]


# ---- access, workers, hosts --------------------------------------------------------------------


class TokenRecord(TypedDict):
    """An API token as listed (never its secret); times in epoch ms."""

    id: str
    name: str
    scopes: list[str]
    queues: NotRequired[list[str] | None]
    agents: NotRequired[list[str] | None]
    namespaces: NotRequired[list[str] | None]
    created_at: int
    revoked_at: NotRequired[int | None]


class NewToken(TokenRecord):
    """A minted token: `token` is the secret, shown only this once."""

    token: str


class WorkerInfo(TypedDict):
    """A worker the server has heard from (by claims and heartbeats)."""

    name: str
    first_seen_ms: int
    last_seen_ms: int
    jobs_in_flight: int
    status: str


class Probe(TypedDict):
    """One health probe of a host."""

    at_ms: int
    ok: bool
    latency_ms: int
    status: NotRequired[int | None]
    error: NotRequired[str | None]


class Host(TypedDict):
    """A registered host with its damped status and recent probes."""

    name: str
    health_url: str
    status: str
    consecutive_failures: int
    consecutive_successes: int
    last_probe: NotRequired[Probe | None]
    changed_at_ms: NotRequired[int | None]
    history: list[Probe]


# ---- health and observability ------------------------------------------------------------------


class Health(TypedDict):
    """`/healthz` and `/readyz`: `ok`, `ready` or `unavailable` (with `reason`)."""

    status: str
    backend: NotRequired[str | None]
    reason: NotRequired[str | None]
    circuit: NotRequired[str | None]


class ServerInfo(TypedDict):
    """`GET /v1/server`: version, backend, uptime, memory, database size, auth."""

    version: str
    backend: str
    uptime_ms: int
    rss_bytes: NotRequired[int | None]
    db_bytes: NotRequired[int | None]
    auth: NotRequired[bool]
    auth_mode: NotRequired[str]


class Stats(TypedDict):
    """`GET /v1/stats`: figures per window (`1m`, `5m`, `1h`) and readings now."""

    backend: str
    windows: dict[str, dict[str, Any]]
    now: dict[str, Any]


class BackupReceipt(TypedDict):
    """What `backup` wrote: its size and SHA-256, both checked against the server's."""

    bytes: int
    sha256: str


class Advice(TypedDict):
    """The scaling advisor's verdict (`STAY`, `PLAN MIGRATION`, `ACT`, `MIGRATE NOW`), its
    cause and the remedy that fixes it."""

    verdict: str
    justification: str
    cause: str
    remedy: str
    action: str
    findings: list[dict[str, Any]]
    backend: str
    at_ms: int
    window_s: float
    trigger: str
