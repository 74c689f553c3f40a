//! What both backends share about stored rows: the encodings of stored columns, the
//! invariant checks, the decisions that turn a failure or an expired lease into the job's
//! next state, and a queue's flow limits (the claim allowance and its token bucket). Each
//! backend keeps only its SQL.

use ferry_core::validate::truncate_error;
use ferry_core::{
    Backoff, Error, ErrorRecord, Event, EventType, FailItem, FailOutcome, JobState, Limits, NewJob,
    QueueLimits, Result, Timestamp, TokenRecord, WorkerStatus,
};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use uuid::Uuid;

/// Storage failures may strike mid-write and roll the whole transaction back; logical errors
/// (stale lease, not found) belong to one item and may not.
pub fn is_storage_error(e: &Error) -> bool {
    matches!(e.code, ferry_core::ErrorCode::Unavailable | ferry_core::ErrorCode::Internal)
}

/// Applies a per-item batch (complete, fail, heartbeat) inside one transaction: each item's
/// logical error is its own outcome; a storage error stops the batch and fails it whole.
pub fn each_item<T, R>(items: Vec<T>, mut apply: impl FnMut(T) -> Result<R>) -> Result<Vec<Result<R>>> {
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        match apply(item) {
            Err(e) if is_storage_error(&e) => return Err(e),
            r => out.push(r),
        }
    }
    Ok(out)
}

/// The finished states, as an SQL list.
pub const FINISHED: &str = "('completed', 'dead', 'cancelled')";

/// Stored JSON text back into a raw value.
pub fn raw(text: String) -> Result<Box<RawValue>> {
    RawValue::from_string(text).map_err(|e| Error::internal(format!("stored JSON is corrupt: {e}")))
}

/// A stored JSON list (NULL is empty).
pub fn json_list<T: serde::de::DeserializeOwned>(text: Option<String>) -> Result<Vec<T>> {
    match text {
        None => Ok(Vec::new()),
        Some(t) => {
            serde_json::from_str(&t).map_err(|e| Error::internal(format!("stored JSON is corrupt: {e}")))
        }
    }
}

/// A list as stored JSON (empty is NULL).
pub fn list_json<T: serde::Serialize>(items: &[T]) -> Option<String> {
    (!items.is_empty()).then(|| serde_json::to_string(items).expect("serializable"))
}

/// A stored state name.
pub fn state_of(text: &str) -> Result<JobState> {
    JobState::parse(text).ok_or_else(|| Error::internal(format!("unknown stored state {text:?}")))
}

/// The row a lease token names: tokens are `<seq>.<random>`, so a lease check finds its row
/// by key instead of through the id index. A malformed token yields a seq that matches
/// nothing, and is then reported stale like any other wrong token.
pub fn lease_seq(lease: &str) -> i64 {
    lease.split_once('.').and_then(|(seq, _)| seq.parse().ok()).unwrap_or(-1)
}

/// Appends to a stored error history, keeping the newest `max_error_history` entries.
pub fn push_error(errors: Option<String>, record: ErrorRecord, limits: &Limits) -> Result<String> {
    let mut list: Vec<ErrorRecord> = json_list(errors)?;
    list.push(record);
    if list.len() > limits.max_error_history {
        let drop = list.len() - limits.max_error_history;
        list.drain(..drop);
    }
    Ok(serde_json::to_string(&list).expect("serializable"))
}

/// The columns of a job a failure or an expiry needs, read (and locked, where that applies)
/// before deciding.
#[derive(Debug)]
pub struct Leased {
    /// Row key.
    pub seq: i64,
    /// Current state.
    pub state: JobState,
    /// Current or last lease token.
    pub lease: Option<String>,
    /// Lease expiry while running.
    pub lease_expires_at: Option<i64>,
    /// Attempts started.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Retry spacing.
    pub backoff: Backoff,
    /// Its queue.
    pub queue: String,
    /// Worker of the current attempt.
    pub worker: Option<String>,
    /// Stored error history.
    pub errors: Option<String>,
    /// Whether other jobs wait for it.
    pub has_dependants: bool,
    /// Due time.
    pub run_at: i64,
    /// Stored tags (JSON list), carried onto its events.
    pub tags: Option<String>,
    /// Start of the current or last attempt.
    pub started_at: Option<i64>,
    /// The convoy it is a member of.
    pub convoy_id: Option<String>,
}

/// What a failure report does.
#[derive(Debug)]
pub enum FailDecision {
    /// A repeat of the report that already moved the job on: answer the same outcome.
    Repeat(FailOutcome),
    /// The lease is not the job's live one.
    Stale,
    /// Move the job to `state` (due at `run_at`) with this error history.
    Apply {
        /// `scheduled`, `ready` or `dead`.
        state: JobState,
        /// When it is due (unchanged for `dead`).
        run_at: i64,
        /// The history with this failure appended.
        errors: String,
    },
}

/// Decides a failure report against the job as read; `u` is the jitter draw.
pub fn decide_failure(
    job: &Leased,
    item: FailItem,
    now: i64,
    limits: &Limits,
    u: f64,
) -> Result<FailDecision> {
    let ours = job.lease.as_deref() == Some(item.lease.as_str());
    if job.state != JobState::Running || !ours || job.lease_expires_at.is_none_or(|t| t <= now) {
        if ours && matches!(job.state, JobState::Scheduled | JobState::Ready | JobState::Dead) {
            let run_at = (job.state == JobState::Scheduled).then_some(Timestamp(job.run_at));
            return Ok(FailDecision::Repeat(FailOutcome {
                id: item.id,
                state: job.state,
                attempt: job.attempt,
                run_at,
            }));
        }
        return Ok(FailDecision::Stale);
    }
    let record = ErrorRecord {
        attempt: job.attempt,
        at: Timestamp(now),
        worker: job.worker.clone(),
        kind: "failed".into(),
        message: truncate_error(item.error, limits),
    };
    let errors = push_error(job.errors.clone(), record, limits)?;
    let (state, run_at) = if !item.retry || job.attempt >= job.max_attempts {
        (JobState::Dead, job.run_at)
    } else {
        let delay = job.backoff.delay_ms(job.attempt, u);
        if delay > 0 { (JobState::Scheduled, now + delay) } else { (JobState::Ready, now) }
    };
    Ok(FailDecision::Apply { state, run_at, errors })
}

/// Why a running job's lease is taken back before the worker reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry<'a> {
    /// The lease ran out (the reaper).
    LeaseExpired,
    /// The worker holding it went silent and was marked lost (`release_lost_workers`).
    WorkerLost(&'a str),
}

impl Expiry<'_> {
    /// The error text its events carry.
    pub fn summary(self) -> &'static str {
        match self {
            Expiry::LeaseExpired => "lease expired",
            Expiry::WorkerLost(_) => "worker lost",
        }
    }
}

/// Decides a lease taken back (expired, or its worker lost): back to `ready`, or `dead` with
/// no attempts left; returns the new state and the history with `lease_expired` (or
/// `worker_lost`) appended.
pub fn decide_expiry(job: &Leased, now: i64, limits: &Limits, why: Expiry) -> Result<(JobState, String)> {
    let (kind, message) = match why {
        Expiry::LeaseExpired => (
            "lease_expired",
            format!("lease expired at {}", ferry_core::time::format_ms(job.lease_expires_at.unwrap_or(now))),
        ),
        Expiry::WorkerLost(worker) => (
            "worker_lost",
            format!("worker {worker:?} went silent and was marked lost; its lease was released"),
        ),
    };
    let record = ErrorRecord {
        attempt: job.attempt,
        at: Timestamp(now),
        worker: job.worker.clone(),
        kind: kind.into(),
        message,
    };
    let errors = push_error(job.errors.clone(), record, limits)?;
    let state = if job.attempt >= job.max_attempts { JobState::Dead } else { JobState::Ready };
    Ok((state, errors))
}

/// Columns of a full job row, in the order both backends decode them.
pub const JOB_COLS: &str = "seq, id, queue, state, payload, priority, attempt, max_attempts, backoff_base_ms,
    backoff_factor, backoff_max_ms, backoff_jitter, lease_ms, unique_key, depends_on, tags, run_at, created_at,
    updated_at, started_at, finished_at, lease_expires_at, worker, result, errors, cancel_reason, timeout_ms,
    convoy_id, payment";

/// ferry's invariants as (what, SQL condition of violating rows); both backends count them.
pub const INVARIANT_CHECKS: &[(&str, &str)] = &[
    ("running job without a lease", "state = 'running' AND (lease IS NULL OR lease_expires_at IS NULL)"),
    ("job with a live lease that is not running", "state != 'running' AND lease_expires_at IS NOT NULL"),
    (
        "finished job without finished_at",
        "state IN ('completed', 'dead', 'cancelled') AND finished_at IS NULL",
    ),
    (
        "unfinished job with finished_at",
        "state NOT IN ('completed', 'dead', 'cancelled') AND finished_at IS NOT NULL",
    ),
    ("waiting job with no pending dependency", "state = 'waiting' AND pending_deps <= 0"),
    ("non-waiting job with pending dependencies", "state != 'waiting' AND pending_deps != 0"),
    ("attempts over max_attempts", "attempt > max_attempts"),
    ("completed job without a recorded attempt", "state = 'completed' AND attempt < 1"),
    (
        "unknown state",
        "state NOT IN ('scheduled', 'waiting', 'held', 'ready', 'running', 'completed', 'dead', 'cancelled')",
    ),
];

/// Tags as stored, for an event (unreadable tags give none rather than failing the write).
pub fn event_tags(stored: Option<String>) -> Vec<String> {
    json_list(stored).unwrap_or_default()
}

/// A job event at `now`.
pub fn job_event(kind: EventType, now: i64, queue: &str, id: Uuid, tags: Vec<String>) -> Event {
    Event::job(kind, now, queue, id, tags)
}

/// The event of a completion, with the run time when the start is known.
pub fn completed_event(now: i64, queue: &str, id: Uuid, tags: Vec<String>, started_at: Option<i64>) -> Event {
    let e = job_event(EventType::JobCompleted, now, queue, id, tags);
    match started_at {
        Some(s) => e.with(serde_json::json!({ "run_ms": now - s })),
        None => e,
    }
}

/// The event a new job gets, with the state it entered.
pub fn enqueued_event(now: i64, queue: &str, id: Uuid, tags: &[String], state: JobState) -> Event {
    job_event(EventType::JobEnqueued, now, queue, id, tags.to_vec())
        .with(serde_json::json!({ "state": state.as_str() }))
}

/// The events of a failed attempt or an expired lease that moved the job to `state`:
/// `job.failed` then `job.retried` (with when it runs) or `job.dead`.
pub fn failure_events(
    job: &Leased,
    id: Uuid,
    now: i64,
    state: JobState,
    run_at: i64,
    error: &str,
) -> [Event; 2] {
    let tags = event_tags(job.tags.clone());
    let mut short = error.to_string();
    if short.len() > 200 {
        let mut cut = 200;
        while !short.is_char_boundary(cut) {
            cut -= 1;
        }
        short.truncate(cut);
    }
    let failed = job_event(EventType::JobFailed, now, &job.queue, id, tags.clone())
        .with(serde_json::json!({ "attempt": job.attempt, "error": short }));
    let next = if state == JobState::Dead {
        job_event(EventType::JobDead, now, &job.queue, id, tags)
            .with(serde_json::json!({ "attempt": job.attempt }))
    } else {
        job_event(EventType::JobRetried, now, &job.queue, id, tags)
            .with(serde_json::json!({ "attempt": job.attempt, "run_at": Timestamp(run_at) }))
    };
    [failed, next]
}

/// The state a new job starts in, decided here once for both backends: an import of a
/// completed job is `completed`; a job with a dead or cancelled dependency is `cancelled`; one
/// with unfinished dependencies `waiting`; one due later `scheduled`; else `ready`.
pub fn initial_state(job: &NewJob, run_at: i64, now: i64, waits: bool, dependency_failed: bool) -> JobState {
    if matches!(job.import, Some(ferry_core::Import::Completed { .. })) {
        JobState::Completed
    } else if dependency_failed {
        JobState::Cancelled
    } else if waits {
        JobState::Waiting
    } else if run_at > now {
        JobState::Scheduled
    } else {
        JobState::Ready
    }
}

/// A queue paused or resumed.
pub fn queue_event(now: i64, queue: &str, paused: bool) -> Event {
    Event::queue(if paused { EventType::QueuePaused } else { EventType::QueueResumed }, now, queue)
}

/// Columns of a schedule row, in the order `schedule_from` reads them.
pub const SCHEDULE_COLS: &str = "name, cron, timezone, job, misfire, catch_up_max, paused, next_run_at, last_run_at, created_at, updated_at";

/// A schedule's stored columns, in [`SCHEDULE_COLS`] order.
pub type ScheduleRow =
    (String, String, String, String, String, i64, bool, Option<i64>, Option<i64>, i64, i64);

/// A schedule from its stored columns.
pub fn schedule_from(r: ScheduleRow) -> Result<ferry_core::schedule::Schedule> {
    let (
        name,
        cron,
        timezone,
        job,
        misfire,
        catch_up_max,
        paused,
        next_run_at,
        last_run_at,
        created_at,
        updated_at,
    ) = r;
    Ok(ferry_core::schedule::Schedule {
        job: serde_json::from_str(&job)
            .map_err(|e| Error::internal(format!("stored schedule {name} is corrupt: {e}")))?,
        misfire: ferry_core::schedule::Misfire::parse(&misfire)
            .ok_or_else(|| Error::internal(format!("stored schedule {name} has misfire {misfire:?}")))?,
        name,
        cron,
        timezone,
        catch_up_max: catch_up_max.clamp(1, u32::MAX as i64) as u32,
        paused,
        next_run_at: next_run_at.map(Timestamp),
        last_run_at: last_run_at.map(Timestamp),
        created_at: Timestamp(created_at),
        updated_at: Timestamp(updated_at),
        next_runs: Vec::new(),
    })
}

/// The `schedule.fired` event of one tick.
pub fn fired_event(
    now: i64,
    schedule: &str,
    tick: i64,
    job: &ferry_core::EnqueueOutcome,
    queue: &str,
    tags: &[String],
) -> Event {
    job_event(EventType::ScheduleFired, now, queue, job.id, tags.to_vec())
        .with(serde_json::json!({
            "schedule": schedule, "tick": Timestamp(tick), "duplicate": job.duplicate
        }))
        .about(ferry_core::Subject::new(ferry_core::SubjectKind::Schedule, schedule))
}

/// The error for a schedule that is not there.
pub fn schedule_not_found(name: &str) -> Error {
    Error::new(ferry_core::ErrorCode::NotFound, format!("schedule {name:?} not found"))
}

/// A queue's stored flow limits and the state of its start-rate token bucket.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flow {
    /// The limits as set.
    pub limits: QueueLimits,
    /// Tokens in the bucket at `tokens_at` (None: never drawn from, so full).
    pub tokens: Option<f64>,
    /// When `tokens` was stored, epoch ms.
    pub tokens_at: Option<i64>,
}

impl Flow {
    /// True when claims of this queue are limited (and so must count and lock).
    pub fn limits_claims(&self) -> bool {
        self.limits.max_running.is_some() || self.limits.max_starts_per_sec.is_some()
    }

    /// Tokens in the bucket at `now`: refilled at the rate since `tokens_at`, capped at the
    /// burst `max(1, rate)`; None without a rate.
    pub fn tokens_now(&self, now: i64) -> Option<f64> {
        let rate = self.limits.max_starts_per_sec?;
        let burst = rate.max(1.0);
        Some(match (self.tokens, self.tokens_at) {
            (Some(t), Some(at)) => (t + (now - at).max(0) as f64 / 1_000.0 * rate).min(burst),
            _ => burst,
        })
    }

    /// How many of `max` jobs a claim may start, given `running` jobs of the queue and the
    /// bucket's tokens at `now` (whole tokens only).
    pub fn allowance(&self, max: usize, running: impl FnOnce() -> i64, now: i64) -> usize {
        let mut n = max;
        if let Some(cap) = self.limits.max_running {
            n = n.min((i64::from(cap) - running()).max(0) as usize);
        }
        if let Some(tokens) = self.tokens_now(now) {
            // A hair of slack so 2.9999999 (float refill) counts as 3.
            n = n.min((tokens + 1e-9).floor().max(0.0) as usize);
        }
        n
    }
}

/// Checks limits before they are stored (the rate must be a finite, non-negative number).
pub fn check_limits(limits: &QueueLimits) -> Result<()> {
    match limits.max_starts_per_sec {
        Some(r) if !r.is_finite() || r < 0.0 => {
            Err(Error::invalid("max_starts_per_sec", "must be a finite number of at least 0"))
        }
        _ => Ok(()),
    }
}

/// Limits from their stored columns (`max_running`, `max_starts_per_sec`, `max_depth`).
pub fn limits_from(max_running: Option<i64>, rate: Option<f64>, max_depth: Option<i64>) -> QueueLimits {
    QueueLimits {
        max_running: max_running.map(|n| n.clamp(0, u32::MAX as i64) as u32),
        max_starts_per_sec: rate,
        max_depth: max_depth.map(|n| n.max(0) as u64),
    }
}

/// Limits as stored columns.
pub fn limits_cols(l: &QueueLimits) -> (Option<i64>, Option<f64>, Option<i64>) {
    (l.max_running.map(i64::from), l.max_starts_per_sec, l.max_depth.map(|n| n.min(i64::MAX as u64) as i64))
}

/// Columns of an API token row, in the order `token_from` reads them.
pub const TOKEN_COLS: &str = "id, name, hash, scopes, queues, created_at, revoked_at, agents, namespaces";

/// A token's stored columns, in [`TOKEN_COLS`] order.
pub type TokenRow =
    (Uuid, String, String, String, Option<String>, i64, Option<i64>, Option<String>, Option<String>);

/// A token as stored columns: scopes and queues as JSON lists (an empty queue list stays
/// `[]`, unlike "no restriction", which is NULL).
pub fn token_cols(t: &TokenRecord) -> (String, Option<String>, Option<String>, Option<String>) {
    let list = |l: &Option<Vec<String>>| l.as_ref().map(|q| serde_json::to_string(q).expect("serializable"));
    (
        serde_json::to_string(&t.scopes).expect("serializable"),
        list(&t.queues),
        list(&t.agents),
        list(&t.namespaces),
    )
}

/// A token from its stored columns.
pub fn token_from(r: TokenRow) -> Result<TokenRecord> {
    let (id, name, hash, scopes, queues, created_at, revoked_at, agents, namespaces) = r;
    let corrupt = |e: serde_json::Error| Error::internal(format!("stored token {id} is corrupt: {e}"));
    Ok(TokenRecord {
        id,
        name,
        hash,
        scopes: serde_json::from_str(&scopes).map_err(corrupt)?,
        queues: queues.map(|q| serde_json::from_str(&q)).transpose().map_err(corrupt)?,
        agents: agents.map(|q| serde_json::from_str(&q)).transpose().map_err(corrupt)?,
        namespaces: namespaces.map(|q| serde_json::from_str(&q)).transpose().map_err(corrupt)?,
        created_at,
        revoked_at,
    })
}

/// The error for a token that is not there.
pub fn token_not_found(id: Uuid) -> Error {
    Error::new(ferry_core::ErrorCode::NotFound, format!("token {id} not found"))
}

/// A stored worker status.
pub fn worker_status(text: &str) -> Result<WorkerStatus> {
    match text {
        "active" => Ok(WorkerStatus::Active),
        "lost" => Ok(WorkerStatus::Lost),
        other => Err(Error::internal(format!("unknown stored worker status {other:?}"))),
    }
}

/// Worker sightings folded to the (earliest, latest) per name, in name order (one row each,
/// locked in the same order by every writer).
pub fn sightings(seen: Vec<(String, i64)>) -> BTreeMap<String, (i64, i64)> {
    let mut out = BTreeMap::new();
    for (name, ms) in seen {
        let e = out.entry(name).or_insert((ms, ms));
        *e = (e.0.min(ms), e.1.max(ms));
    }
    out
}

/// The error for a host name already registered.
pub fn host_exists(name: &str) -> Error {
    Error::new(ferry_core::ErrorCode::Conflict, format!("host {name:?} exists already"))
}

/// The error for a host that is not there.
pub fn host_not_found(name: &str) -> Error {
    Error::new(ferry_core::ErrorCode::NotFound, format!("host {name:?} not found"))
}
