//! HTTP request and response bodies, shared by the server and the client so both sides of
//! the wire use one definition. Field names here are the public API: they do not change.

use crate::error::Error;
use crate::job::{ClaimedJob, Job, JobState, QueueStats, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

/// `POST /v1/jobs` answer for one job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnqueueResponse {
    /// The job's id (the existing one's for a duplicate).
    pub id: uuid::Uuid,
    /// Present and true when `unique_key` matched an unfinished job.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// `POST /v1/jobs` answer for `{"jobs":[...]}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnqueueBatchResponse {
    /// One id per job, in input order.
    pub ids: Vec<uuid::Uuid>,
    /// Indexes of jobs that were duplicates (their id is the existing job's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<usize>,
}

/// `POST /v1/queues/{queue}/claim` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    /// Who is claiming (required; absent or `null` is 422).
    #[serde(default)]
    #[schema(value_type = crate::validate::names::WorkerName, required = true)]
    pub worker: Option<String>,
    /// Most jobs to return, at most `limits.max_claim`; default 1.
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max: Option<i64>,
    /// Lease length for these jobs, within `limits.min_lease_ms..=limits.max_lease_ms`;
    /// default each job's own `lease_ms`.
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = 10, maximum = 86_400_000)]
    pub lease_ms: Option<i64>,
    /// Long-poll: wait up to this long for a job (at most `limits.max_wait_ms`); default 0.
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = 0, maximum = 30_000)]
    pub wait_ms: Option<i64>,
}

/// `POST /v1/queues/{queue}/claim` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClaimResponse {
    /// Leased jobs, best first; empty when none was ready in time.
    pub jobs: Vec<ClaimedJob>,
}

/// `POST /v1/jobs/{id}/heartbeat` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    /// The current lease token.
    #[schema(min_length = 1)]
    pub lease: String,
    /// New lease length from now, within `limits.min_lease_ms..=limits.max_lease_ms`; default
    /// the job's `lease_ms`.
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = 10, maximum = 86_400_000)]
    pub extend_ms: Option<i64>,
    /// The worker sending it, so the registry sees it alive between claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::validate::names::WorkerName>)]
    pub worker: Option<String>,
}

/// `POST /v1/jobs/{id}/complete` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    /// The current lease token.
    #[schema(min_length = 1)]
    pub lease: String,
    /// Optional JSON result, kept verbatim.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub result: Option<Box<RawValue>>,
}

/// `POST /v1/jobs/{id}/fail` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailBody {
    /// The current lease token.
    #[schema(min_length = 1)]
    pub lease: String,
    /// What went wrong.
    #[serde(default)]
    pub error: String,
    /// False sends the job to the dead-letter queue now; default true.
    #[serde(default)]
    pub retry: Option<bool>,
}

/// `POST /v1/jobs/{id}/release` body: give a claimed, unstarted job back.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    /// The current lease token.
    #[schema(min_length = 1)]
    pub lease: String,
}

/// `POST /v1/jobs/{id}/cancel` body (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Kept as the job's `cancel_reason`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A job's id and new state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StateResponse {
    /// Job id.
    pub id: uuid::Uuid,
    /// Its state now.
    pub state: JobState,
}

/// One item of `POST /v1/jobs/complete`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteItemBody {
    /// Job id.
    pub id: String,
    /// The current lease token.
    pub lease: String,
    /// Optional JSON result.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub result: Option<Box<RawValue>>,
}

/// `POST /v1/jobs/complete` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBatchBody {
    /// Completions, each applied on its own; at most `limits.max_batch` (else 413).
    #[schema(max_items = 10_000)]
    pub items: Vec<CompleteItemBody>,
}

/// One item of `POST /v1/jobs/fail`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailItemBody {
    /// Job id.
    pub id: String,
    /// The current lease token.
    pub lease: String,
    /// What went wrong.
    #[serde(default)]
    pub error: String,
    /// Default true.
    #[serde(default)]
    pub retry: Option<bool>,
}

/// `POST /v1/jobs/fail` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailBatchBody {
    /// Failures, each applied on its own; at most `limits.max_batch` (else 413).
    #[schema(max_items = 10_000)]
    pub items: Vec<FailItemBody>,
}

/// The outcome of one batch item.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ItemOutcome {
    /// The item's job id, as sent.
    pub id: String,
    /// Whether the item was applied.
    pub ok: bool,
    /// The job's state after the item, when applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    /// For failures: attempts made so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// For failures: when the retry is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub run_at: Option<Timestamp>,
    /// Why the item was not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
}

/// Answer of the batch complete and fail endpoints.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    /// One outcome per item, in input order.
    pub results: Vec<ItemOutcome>,
}

/// A page of jobs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobsPage {
    /// Jobs in insertion order.
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `GET /v1/queues` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueuesResponse {
    /// Every known queue.
    pub queues: Vec<QueueStats>,
}

/// Answer of pause and resume.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PauseResponse {
    /// Queue name.
    pub queue: String,
    /// Whether it is paused now.
    pub paused: bool,
}

/// Which dead jobs a replay or purge applies to: `ids` or `queue`, exactly one (the other
/// absent or `null`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DlqSelectorBody {
    /// These dead jobs (ids that name no dead job are skipped); at most `limits.max_batch`
    /// (else 413).
    #[serde(default)]
    #[schema(max_items = 10_000)]
    pub ids: Option<Vec<String>>,
    /// Every dead job of this queue.
    #[serde(default)]
    #[schema(value_type = Option<crate::validate::names::QueueName>)]
    pub queue: Option<String>,
}

/// `POST /v1/dlq/replay` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReplayResponse {
    /// Jobs returned to `ready`.
    pub replayed: u64,
}

/// `POST /v1/dlq/purge` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PurgeResponse {
    /// Dead jobs deleted.
    pub purged: u64,
}

/// Every error response: `{"error":{"code","message","field"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: Error,
}

/// `GET /healthz` and `GET /readyz` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// `ok`, `ready` or `unavailable`.
    pub status: String,
    /// Storage backend, on `/readyz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Why the server is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Circuit breaker state on `/readyz`: `closed`, `open` or `half_open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit: Option<String>,
}

/// `GET /v1/server` answer: facts about the running process.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerInfo {
    /// ferry version.
    pub version: String,
    /// Storage backend.
    pub backend: String,
    /// Milliseconds since start.
    pub uptime_ms: u64,
    /// Resident memory of the server process, when the OS tells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// Bytes the database occupies (SQLite file + WAL, or ferry's PostgreSQL tables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_bytes: Option<u64>,
    /// Whether requests need a token, so a client can tell an open server from a guarded one.
    #[serde(default)]
    pub auth: bool,
    /// Why auth is on or off (`on (configured)`, `on (a token exists)`, ...).
    #[serde(default)]
    pub auth_mode: String,
}

/// One job of `POST /v1/import`: a job from another system, already queued or already done.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportItem {
    /// The job; its `unique_key` is required and dedups against jobs in any state.
    pub job: crate::validate::JobSpec,
    /// `ready` (default) or `completed`.
    #[serde(default)]
    #[schema(value_type = Option<ImportState>)]
    pub state: Option<String>,
    /// The result of a completed job.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub result: Option<Box<RawValue>>,
}

/// The state an imported job starts in (schema only: `ImportItem::state` is checked by the
/// server, 422 for any other value).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportState {
    /// Queued, to be run here.
    Ready,
    /// Already done elsewhere: kept as completed, with its `result`.
    Completed,
}

/// `POST /v1/import` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    /// Jobs to import, all or nothing; at most `limits.max_batch` (else 413).
    #[schema(max_items = 10_000)]
    pub jobs: Vec<ImportItem>,
}

/// `GET /v1/events` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventsResponse {
    /// Matching events, oldest first.
    pub events: Vec<crate::Event>,
    /// Pass as `since` next time (it moves past events that did not match, too).
    pub next_cursor: u64,
}
