//! The job model: states, the validated inputs the store accepts, and the views it returns.
//!
//! Inputs (`NewJob`, `ClaimRequest`, `CompleteItem`, `FailItem`) are always validated (see
//! `validate`) before they reach a store; views serialize straight to the wire format.

use crate::backoff::Backoff;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::fmt;
use uuid::Uuid;

/// Where a job is in its life; see the state diagram in ARCHITECTURE.md.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Due in the future (delayed, or waiting out a retry backoff).
    Scheduled,
    /// Waiting for its dependencies to complete.
    Waiting,
    /// A convoy member over its convoy's limit, waiting for a slot (not in the queue's depth).
    Held,
    /// Claimable now.
    Ready,
    /// Leased by a worker.
    Running,
    /// Finished successfully; its result is recorded exactly once.
    Completed,
    /// Attempts exhausted or failed without retry: the dead-letter queue.
    Dead,
    /// Cancelled by a user or because a dependency died or was cancelled.
    Cancelled,
}

impl JobState {
    /// Every state, in display order.
    pub const ALL: [JobState; 8] = [
        JobState::Scheduled,
        JobState::Waiting,
        JobState::Held,
        JobState::Ready,
        JobState::Running,
        JobState::Completed,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// The stored and wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Waiting => "waiting",
            JobState::Held => "held",
            JobState::Ready => "ready",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Position in [`JobState::ALL`], for per-state arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Parses a stored or wire name.
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Terminal states never change again (except a dead job replayed by a user).
    pub fn is_finished(self) -> bool {
        matches!(self, JobState::Completed | JobState::Dead | JobState::Cancelled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Milliseconds since the Unix epoch, written on the wire as RFC 3339 UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::time::format_ms(self.0))
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        crate::time::parse_rfc3339_ms(&s, "timestamp")
            .map(Timestamp)
            .map_err(|e| serde::de::Error::custom(e.message))
    }
}

/// When a new job becomes due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunAt {
    /// As soon as possible.
    Now,
    /// At an absolute time (epoch ms).
    At(i64),
    /// After a delay from the moment the store accepts it.
    Delay(i64),
}

impl RunAt {
    /// The due time in epoch ms, given the store's `now`.
    pub fn resolve(self, now: i64) -> i64 {
        match self {
            RunAt::Now => now,
            RunAt::At(t) => t,
            RunAt::Delay(d) => now.saturating_add(d),
        }
    }
}

/// A validated job, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// Queue name, validated.
    pub queue: String,
    /// Any JSON, kept as the exact text the producer sent.
    pub payload: Box<RawValue>,
    /// Higher runs first.
    pub priority: i32,
    /// When the job becomes due.
    pub run_at: RunAt,
    /// Attempts before the job is dead.
    pub max_attempts: u32,
    /// Retry spacing.
    pub backoff: Backoff,
    /// Lease length granted per claim.
    pub lease_ms: i64,
    /// Run deadline per attempt; `None` stores NULL, read back as the default.
    pub timeout_ms: Option<i64>,
    /// Deduplication key while a job with it is unfinished.
    pub unique_key: Option<String>,
    /// Jobs that must complete first.
    pub depends_on: Vec<Uuid>,
    /// Free-form labels for filtering and events.
    pub tags: Vec<String>,
    /// Set only by imports from other systems (`ferry import-dir`).
    pub import: Option<Import>,
    /// A paid job's payment (its hold is placed in the enqueue's transaction).
    pub payment: Option<crate::ledger::Payment>,
}

/// How an imported job arrives; its `unique_key` then dedups against jobs in any state, so
/// importing the same file twice never creates two jobs.
#[derive(Debug, Clone)]
pub enum Import {
    /// Waiting to run (a queued or a claimed-but-unfinished file).
    Ready,
    /// Already done elsewhere, with its result.
    Completed {
        /// The recorded result.
        result: Option<Box<RawValue>>,
    },
}

/// What an enqueue did for one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnqueueOutcome {
    /// The new job's id, or the existing one's for a duplicate.
    pub id: Uuid,
    /// True when `unique_key` matched an unfinished job and nothing was inserted.
    pub duplicate: bool,
}

/// A request to lease up to `max` ready jobs of one queue.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The queue to claim from.
    pub queue: String,
    /// Who is claiming; recorded on the job and in its error history.
    pub worker: String,
    /// Most jobs to hand out (≥ 1).
    pub max: usize,
    /// Overrides each job's own `lease_ms` when set.
    pub lease_ms: Option<i64>,
}

/// A lease extension: the job, the lease its worker holds, and for how long from now.
#[derive(Debug, Clone, PartialEq)]
pub struct HeartbeatRequest {
    /// Job id.
    pub id: Uuid,
    /// The lease token the worker holds.
    pub lease: String,
    /// New lease length from now; `None`: the job's own `lease_ms`.
    pub extend_ms: Option<i64>,
    /// The worker's load (0.0–1.0), for its convoy's adaptive limit.
    pub pressure: Option<f64>,
}

/// One page of a list: at most `limit` items after `cursor` (a cursor from the previous page).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// Most items on the page.
    pub limit: usize,
    /// Where the previous page ended; `None` for the first page.
    pub cursor: Option<String>,
}

/// A job handed to a worker, with the lease it must present to finish it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClaimedJob {
    /// Job id.
    pub id: Uuid,
    /// Its queue.
    pub queue: String,
    /// The producer's payload, verbatim.
    #[schema(value_type = serde_json::Value)]
    pub payload: Box<RawValue>,
    /// 1 on the first run, 2 on the first retry, …
    pub attempt: u32,
    /// Attempts allowed in all.
    pub max_attempts: u32,
    /// Its priority.
    pub priority: i32,
    /// Its tags.
    pub tags: Vec<String>,
    /// The fencing token: complete, fail and heartbeat must present it.
    pub lease: String,
    /// When the lease lapses unless extended by a heartbeat.
    #[schema(value_type = String, format = DateTime)]
    pub lease_expires_at: Timestamp,
    /// The run deadline of this attempt: a worker cancels and fails (retryable) a handler still
    /// running after this long.
    pub timeout_ms: i64,
}

/// Completion of one leased job.
#[derive(Debug, Clone)]
pub struct CompleteItem {
    /// Job id.
    pub id: Uuid,
    /// The current lease token.
    pub lease: String,
    /// Optional JSON result, kept verbatim.
    pub result: Option<Box<RawValue>>,
    /// The worker's load (0.0–1.0), for its convoy's adaptive limit.
    pub pressure: Option<f64>,
}

/// Failure of one leased job.
#[derive(Debug, Clone)]
pub struct FailItem {
    /// Job id.
    pub id: Uuid,
    /// The current lease token.
    pub lease: String,
    /// What went wrong (truncated to the limit, never rejected).
    pub error: String,
    /// False sends the job straight to the dead-letter queue.
    pub retry: bool,
    /// The worker's load (0.0–1.0), for its convoy's adaptive limit.
    pub pressure: Option<f64>,
}

/// The state a failed job moved to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FailOutcome {
    /// Job id.
    pub id: Uuid,
    /// `scheduled` (retry after backoff), `ready` (retry now) or `dead`.
    pub state: JobState,
    /// Attempts made so far.
    pub attempt: u32,
    /// When the retry is due, if one is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub run_at: Option<Timestamp>,
}

/// A renewed lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatOutcome {
    /// Job id.
    pub id: Uuid,
    /// The new expiry.
    #[schema(value_type = String, format = DateTime)]
    pub lease_expires_at: Timestamp,
}

/// One entry of a job's error history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorRecord {
    /// The attempt that failed.
    pub attempt: u32,
    /// When it was recorded.
    #[schema(value_type = String, format = DateTime)]
    pub at: Timestamp,
    /// The worker holding the lease, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// `failed` (reported by the worker), `lease_expired` (found by the reaper) or
    /// `worker_lost` (its worker went silent and was marked lost).
    pub kind: String,
    /// The worker's error text, or a description of what ferry saw.
    pub message: String,
}

/// Everything ferry knows about a job.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Job {
    /// Job id (UUIDv7).
    pub id: Uuid,
    /// Its queue.
    pub queue: String,
    /// Current state.
    pub state: JobState,
    /// The producer's payload, verbatim.
    #[schema(value_type = serde_json::Value)]
    pub payload: Box<RawValue>,
    /// Higher runs first.
    pub priority: i32,
    /// Attempts started so far.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Retry spacing.
    pub backoff: Backoff,
    /// Lease length per claim.
    pub lease_ms: i64,
    /// Run deadline per attempt (86,400,000 when the producer set none).
    pub timeout_ms: i64,
    /// Deduplication key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unique_key: Option<String>,
    /// Dependencies.
    pub depends_on: Vec<Uuid>,
    /// Labels.
    pub tags: Vec<String>,
    /// When it is (or was) due.
    #[schema(value_type = String, format = DateTime)]
    pub run_at: Timestamp,
    /// When it was enqueued.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// Last state change.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// Start of the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    /// When it reached a finished state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
    /// Lease expiry while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub lease_expires_at: Option<Timestamp>,
    /// Worker of the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Completion result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    pub result: Option<Box<RawValue>>,
    /// Every failure, oldest first.
    pub errors: Vec<ErrorRecord>,
    /// Why it was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// The convoy this job is a member of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convoy_id: Option<String>,
    /// A paid job's payment, with its current hold transfer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<crate::ledger::Payment>,
}

/// Which jobs a list call returns.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this state.
    pub state: Option<JobState>,
}

/// One page of a cursor-paginated list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items, oldest first.
    pub items: Vec<T>,
    /// Pass back as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Which dead jobs a replay or purge applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadSelector {
    /// These jobs (those not dead are skipped).
    Ids(Vec<Uuid>),
    /// Every dead job of this queue.
    Queue(String),
}

/// A queue's counts and state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QueueStats {
    /// Queue name.
    pub queue: String,
    /// Jobs per state (every state present, zero included).
    pub counts: BTreeMap<JobState, u64>,
    /// Age of the oldest ready job, if any is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_ready_age_ms: Option<i64>,
    /// Paused queues hand out nothing.
    pub paused: bool,
    /// The queue's flow limits, if any is set.
    #[serde(default, skip_serializing_if = "crate::QueueLimits::is_empty")]
    pub limits: crate::QueueLimits,
}

/// What a DLQ replay did: the jobs ready again, and paid jobs left dead because their new
/// hold was refused.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Replayed {
    /// Jobs returned to `ready` (or `held`, for convoy members).
    pub ids: Vec<Uuid>,
    /// Paid jobs left dead, with why their hold was refused.
    pub refused: Vec<(Uuid, crate::Error)>,
}

/// Counts of what one reaper pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReapOutcome {
    /// Expired leases returned to ready.
    pub requeued: u64,
    /// Expired leases whose job had no attempts left.
    pub dead: u64,
}
