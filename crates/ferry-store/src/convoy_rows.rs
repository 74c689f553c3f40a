//! What both backends share about convoys: the stored row and every decision on it (which
//! counter a member's move changes, how many held members a free slot releases, when the
//! convoy ends and how), the events, and the invariants. Each backend keeps only its SQL.
//!
//! Counters on the row: `total`, `held`, `slots` (members `ready`, `running` or waiting out a
//! retry as `scheduled`), `completed`, `failed` (dead), `cancelled`. Claims move members
//! inside `slots` and never touch the row; the live split of `slots` is counted from the jobs
//! when a convoy is read.

use ferry_core::convoy::{
    self, Convoy, ConvoyCounts, ConvoyState, ConvoySummary, LimitChange, MaxParallel, OnComplete, OnFailure,
    Tuner,
};
use ferry_core::{Error, ErrorCode, Event, EventType, JobState, Result, Subject, SubjectKind, Timestamp};
use uuid::Uuid;

/// Columns of a convoy row, in the order both backends decode them, then its live counts.
pub const CONVOY_COLS: &str = "c.seq, c.id, c.name, c.queue, c.max_parallel, c.on_failure, c.on_complete,
    c.state, c.cancelling, c.lim, c.total, c.held, c.slots, c.completed, c.failed, c.cancelled, c.tuner,
    c.progress_at, c.on_complete_job_id, c.created_at, c.finished_at";

/// The live split of a convoy's slots, counted from its members in the same statement.
pub const LIVE_COUNTS: &str = "(SELECT count(*) FROM jobs j WHERE j.convoy_id = c.id AND j.state = 'ready'),
    (SELECT count(*) FROM jobs j WHERE j.convoy_id = c.id AND j.state = 'running'),
    (SELECT count(*) FROM jobs j WHERE j.convoy_id = c.id AND j.state = 'scheduled')";

/// A member's move, as the job commands report it.
#[derive(Debug, Clone, Copy)]
pub struct Move {
    /// Where it was.
    pub from: JobState,
    /// Where it is now.
    pub to: JobState,
    /// Start of the attempt that ended, when this move ends one (a sample for the adaptive
    /// limit), with whether it failed.
    pub attempt: Option<(Option<i64>, bool)>,
    /// The load its worker reported with it.
    pub pressure: Option<f64>,
}

/// A convoy row as stored, decoded.
#[derive(Debug, Clone)]
pub struct ConvoyRow {
    /// Row key (list order).
    pub seq: i64,
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The members' queue.
    pub queue: String,
    /// The limit's kind and bounds.
    pub max_parallel: MaxParallel,
    /// What a dead member does.
    pub on_failure: OnFailure,
    /// The completion job.
    pub on_complete: Option<OnComplete>,
    /// Where it is.
    pub state: ConvoyState,
    /// Cancelled by a user: it ends `cancelled`.
    pub cancelling: bool,
    /// The current limit.
    pub limit: i64,
    /// Members ever added.
    pub total: i64,
    /// Members waiting for a slot.
    pub held: i64,
    /// Members holding a slot.
    pub slots: i64,
    /// Members completed.
    pub completed: i64,
    /// Members dead.
    pub failed: i64,
    /// Members cancelled.
    pub cancelled: i64,
    /// The adaptive controller (None for a fixed limit).
    pub tuner: Option<Tuner>,
    /// When the last `convoy.progress` was recorded.
    pub progress_at: i64,
    /// The completion job, once enqueued.
    pub on_complete_job_id: Option<Uuid>,
    /// Created.
    pub created_at: i64,
    /// Ended.
    pub finished_at: Option<i64>,
}

/// A convoy row's stored columns, as each backend reads them, before decoding.
pub struct StoredConvoy {
    /// `seq`.
    pub seq: i64,
    /// `id`, `name`, `queue`.
    pub id: String,
    /// `name`.
    pub name: String,
    /// `queue`.
    pub queue: String,
    /// `max_parallel` (JSON).
    pub max_parallel: String,
    /// `on_failure`.
    pub on_failure: String,
    /// `on_complete` (JSON).
    pub on_complete: Option<String>,
    /// `state`.
    pub state: String,
    /// `cancelling`.
    pub cancelling: bool,
    /// `lim`, `total`, `held`, `slots`, `completed`, `failed`, `cancelled`.
    pub counters: [i64; 7],
    /// `tuner` (JSON).
    pub tuner: Option<String>,
    /// `progress_at`.
    pub progress_at: i64,
    /// `on_complete_job_id`.
    pub on_complete_job_id: Option<Uuid>,
    /// `created_at`.
    pub created_at: i64,
    /// `finished_at`.
    pub finished_at: Option<i64>,
}

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("stored convoy {what} is corrupt: {e}"))
}

impl StoredConvoy {
    /// Decodes the JSON and enum columns.
    pub fn decode(self) -> Result<ConvoyRow> {
        let [limit, total, held, slots, completed, failed, cancelled] = self.counters;
        Ok(ConvoyRow {
            seq: self.seq,
            id: self.id,
            name: self.name,
            queue: self.queue,
            max_parallel: serde_json::from_str(&self.max_parallel).map_err(|e| corrupt("limit", e))?,
            on_failure: OnFailure::parse(&self.on_failure)
                .ok_or_else(|| corrupt("policy", &self.on_failure))?,
            on_complete: self
                .on_complete
                .map(|t| serde_json::from_str(&t).map_err(|e| corrupt("completion job", e)))
                .transpose()?,
            state: ConvoyState::parse(&self.state).ok_or_else(|| corrupt("state", &self.state))?,
            cancelling: self.cancelling,
            limit,
            total,
            held,
            slots,
            completed,
            failed,
            cancelled,
            tuner: self
                .tuner
                .map(|t| serde_json::from_str(&t).map_err(|e| corrupt("controller", e)))
                .transpose()?,
            progress_at: self.progress_at,
            on_complete_job_id: self.on_complete_job_id,
            created_at: self.created_at,
            finished_at: self.finished_at,
        })
    }
}

/// Which counter a member in `state` is under (none for `waiting`, which no member is).
fn bucket(row: &mut ConvoyRow, state: JobState) -> Option<&mut i64> {
    match state {
        JobState::Held => Some(&mut row.held),
        JobState::Ready | JobState::Running | JobState::Scheduled => Some(&mut row.slots),
        JobState::Completed => Some(&mut row.completed),
        JobState::Dead => Some(&mut row.failed),
        JobState::Cancelled => Some(&mut row.cancelled),
        JobState::Waiting => None,
    }
}

/// What a freshly created convoy stores.
pub fn new_row(c: &ferry_core::convoy::NewConvoy, now: i64) -> ConvoyRow {
    ConvoyRow {
        seq: 0,
        id: c.id.clone(),
        name: c.name.clone(),
        queue: c.queue.clone(),
        max_parallel: c.max_parallel,
        on_failure: c.on_failure,
        on_complete: c.on_complete.clone(),
        state: if c.sealed { ConvoyState::Sealed } else { ConvoyState::Open },
        cancelling: false,
        limit: i64::from(c.max_parallel.start()),
        total: 0,
        held: 0,
        slots: 0,
        completed: 0,
        failed: 0,
        cancelled: 0,
        tuner: c.max_parallel.adaptive().map(|_| Tuner::new(now)),
        progress_at: now,
        on_complete_job_id: None,
        created_at: now,
        finished_at: None,
    }
}

impl ConvoyRow {
    /// True until it ends.
    pub fn is_live(&self) -> bool {
        !self.state.is_finished()
    }

    /// Notes that `n` members moved from `from` (None: added) to `to`. The new state is
    /// counted first: a move applied after its member was already cancelled in the same
    /// transaction (fail-fast) nets to zero without a counter passing below it.
    pub fn moved(&mut self, from: Option<JobState>, to: JobState, n: i64) {
        if let Some(t) = bucket(self, to) {
            *t += n;
        }
        match from {
            None => self.total += n,
            Some(f) => {
                if let Some(c) = bucket(self, f) {
                    *c -= n;
                    debug_assert!(
                        *c >= 0,
                        "convoy {}: the {f} count went negative ({f} -> {to}, {n})",
                        self.id
                    );
                }
            }
        }
    }

    /// The state a new member takes: `ready` while a slot is free, else `held`.
    pub fn admit(&mut self) -> JobState {
        let state = if self.slots < self.limit { JobState::Ready } else { JobState::Held };
        self.moved(None, state, 1);
        state
    }

    /// Samples an attempt end for the adaptive limit and applies the move it decides.
    pub fn sample(&mut self, now: i64, started_at: Option<i64>, failed: bool) -> Option<LimitChange> {
        let (Some(bounds), Some(started)) = (self.max_parallel.adaptive(), started_at) else { return None };
        let tuner = self.tuner.get_or_insert_with(|| Tuner::new(self.created_at));
        let change = tuner.sample(now, started, failed, self.limit as u32, bounds)?;
        self.limit = i64::from(change.to);
        Some(change)
    }

    /// Notes a member's reported pressure; true when the controller uses it.
    pub fn pressure(&mut self, p: f64) -> bool {
        if self.max_parallel.adaptive().is_none() || !self.is_live() {
            return false;
        }
        self.tuner.get_or_insert_with(|| Tuner::new(self.created_at)).pressure(p);
        true
    }

    /// Ready members to take back to `held` after the limit fell below the slots in use.
    pub fn surplus(&self) -> i64 {
        (self.slots - self.limit).max(0)
    }

    /// Held members a free slot releases now.
    pub fn releasable(&self) -> i64 {
        if !self.is_live() { 0 } else { self.held.min(self.limit - self.slots).max(0) }
    }

    /// True once it is sealed and no member is live: it ends in this transaction.
    pub fn is_done(&self) -> bool {
        self.state == ConvoyState::Sealed && self.held == 0 && self.slots == 0
    }

    /// How it ends: cancelled by a user, failed with a dead member, else completed.
    pub fn final_state(&self) -> ConvoyState {
        if self.cancelling {
            ConvoyState::Cancelled
        } else if self.failed > 0 {
            ConvoyState::Failed
        } else {
            ConvoyState::Completed
        }
    }

    /// True while it winds down: cancelled, or failed fast; no member starts again.
    pub fn is_stopping(&self) -> bool {
        self.is_live() && (self.cancelling || (self.on_failure == OnFailure::FailFast && self.failed > 0))
    }

    /// True when this dead member should seal the convoy and cancel the rest (fail_fast).
    pub fn fails_fast(&self) -> bool {
        self.on_failure == OnFailure::FailFast && self.is_live() && !self.cancelling && self.failed == 1
    }

    /// Counts with the live split of slots (`ready`, `running`, `scheduled` members).
    pub fn counts(&self, live: [i64; 3]) -> ConvoyCounts {
        let n = |v: i64| v.max(0) as u64;
        ConvoyCounts {
            total: n(self.total),
            held: n(self.held),
            ready: n(live[0]),
            running: n(live[1]),
            retrying: n(live[2]),
            completed: n(self.completed),
            failed: n(self.failed),
            cancelled: n(self.cancelled),
        }
    }

    /// The convoy as the API shows it.
    pub fn view(&self, live: [i64; 3]) -> Convoy {
        Convoy {
            id: self.id.clone(),
            name: self.name.clone(),
            queue: self.queue.clone(),
            max_parallel: self.max_parallel,
            sealed: self.state != ConvoyState::Open,
            on_failure: self.on_failure,
            on_complete: self.on_complete.clone(),
            state: self.state,
            limit: self.limit.max(0) as u32,
            counts: self.counts(live),
            failed_total: self.failed.max(0) as u64,
            on_complete_job_id: self.on_complete_job_id,
            created_at: Timestamp(self.created_at),
            finished_at: self.finished_at.map(Timestamp),
        }
    }

    /// What the completion job is told.
    pub fn summary(&self, state: ConvoyState, failed_ids: Vec<Uuid>) -> ConvoySummary {
        ConvoySummary {
            id: self.id.clone(),
            name: self.name.clone(),
            state,
            counts: self.counts([0; 3]),
            failed_ids,
            failed_total: self.failed.max(0) as u64,
        }
    }

    /// True when a `convoy.progress` is due (at most one a second).
    pub fn progress_due(&self, now: i64) -> bool {
        self.is_live() && now - self.progress_at >= convoy::PROGRESS_INTERVAL_MS
    }

    /// The JSON columns as stored.
    pub fn max_parallel_json(&self) -> String {
        serde_json::to_string(&self.max_parallel).expect("a limit serializes")
    }

    /// The completion job as stored.
    pub fn on_complete_json(&self) -> Option<String> {
        self.on_complete.as_ref().map(|o| serde_json::to_string(o).expect("a job serializes"))
    }

    /// The controller as stored.
    pub fn tuner_json(&self) -> Option<String> {
        self.tuner.as_ref().map(|t| serde_json::to_string(t).expect("a controller serializes"))
    }

    fn event(&self, kind: EventType, now: i64, data: serde_json::Value) -> Event {
        Event::queue(kind, now, &self.queue)
            .about(Subject::new(SubjectKind::Convoy, self.id.clone()))
            .with(data)
    }

    /// `convoy.created`.
    pub fn created_event(&self, now: i64) -> Event {
        self.event(
            EventType::ConvoyCreated,
            now,
            serde_json::json!({ "name": self.name, "queue": self.queue, "limit": self.limit,
                "sealed": self.state != ConvoyState::Open }),
        )
    }

    /// `convoy.progress`.
    pub fn progress_event(&self, now: i64, live: [i64; 3]) -> Event {
        self.event(EventType::ConvoyProgress, now, serde_json::json!({ "counts": self.counts(live) }))
    }

    /// `convoy.limit_changed`.
    pub fn limit_event(&self, now: i64, c: &LimitChange) -> Event {
        self.event(EventType::ConvoyLimitChanged, now, serde_json::to_value(c).expect("a change serializes"))
    }

    /// `convoy.completed`.
    pub fn completed_event(&self, now: i64) -> Event {
        self.event(
            EventType::ConvoyCompleted,
            now,
            serde_json::json!({ "state": self.state, "counts": self.counts([0; 3]),
                "on_complete_job_id": self.on_complete_job_id }),
        )
    }
}

/// The error for adding to a convoy that no longer takes members.
pub fn not_open(row: &ConvoyRow) -> Error {
    Error::new(
        ErrorCode::InvalidState,
        format!("convoy {} is {}; it takes no more members", row.id, row.state.as_str()),
    )
    .with_details(serde_json::json!({ "convoy_id": row.id, "current": row.state }))
}

/// The error for cancelling a convoy that already ended otherwise.
pub fn already_ended(row: &ConvoyRow) -> Error {
    Error::new(ErrorCode::InvalidState, format!("convoy {} already {}", row.id, row.state.as_str()))
        .with_details(serde_json::json!({ "convoy_id": row.id, "current": row.state }))
}

/// The error for a convoy past `limits.max_convoy_members`.
pub fn too_many_members(row: &ConvoyRow, adding: usize, max: u64) -> Error {
    Error::invalid(
        "members",
        format!("convoy {} has {} members; {adding} more would pass the limit of {max}", row.id, row.total),
    )
}

/// Which identifying fields of a repeat differ from the stored convoy.
pub fn differing(row: &ConvoyRow, c: &ferry_core::convoy::NewConvoy) -> Vec<&'static str> {
    let mut out = Vec::new();
    if row.name != c.name {
        out.push("name");
    }
    if row.queue != c.queue {
        out.push("queue");
    }
    if row.max_parallel != c.max_parallel {
        out.push("max_parallel");
    }
    out
}

/// The reason a cancelled member carries.
pub fn cancel_reason(row: &ConvoyRow) -> String {
    if row.cancelling {
        format!("convoy {} was cancelled", row.id)
    } else {
        format!("convoy {} failed fast", row.id)
    }
}

/// Convoy invariants as (what, SQL condition over `convoys c`), counted by both backends.
pub const INVARIANTS: &[(&str, &str)] = &[
    (
        "live convoy whose held count differs from its held members",
        "c.finished_at IS NULL AND c.held <> (SELECT count(*) FROM jobs j WHERE j.convoy_id = c.id AND j.state = 'held')",
    ),
    (
        "live convoy whose slot count differs from its members holding slots",
        "c.finished_at IS NULL AND c.slots <> (SELECT count(*) FROM jobs j WHERE j.convoy_id = c.id
            AND j.state IN ('ready', 'running', 'scheduled'))",
    ),
    (
        "convoy whose counts do not add up to its total",
        "c.total <> c.held + c.slots + c.completed + c.failed + c.cancelled",
    ),
    (
        "convoy with more members in a state than its count says",
        "c.completed < (SELECT count(*) FROM jobs j WHERE j.convoy_id = c.id AND j.state = 'completed')
         OR c.failed < (SELECT count(*) FROM jobs j WHERE j.convoy_id = c.id AND j.state = 'dead')
         OR c.cancelled < (SELECT count(*) FROM jobs j WHERE j.convoy_id = c.id AND j.state = 'cancelled')",
    ),
    ("fixed convoy with more slots than its limit", "c.tuner IS NULL AND c.slots > c.lim"),
    (
        "convoy holding members while slots are free",
        "c.finished_at IS NULL AND c.held > 0 AND c.slots < c.lim",
    ),
    (
        "ended convoy that is unsealed, has live members or no end time",
        "c.state IN ('completed', 'failed', 'cancelled') AND (c.held <> 0 OR c.slots <> 0 OR c.finished_at IS NULL)",
    ),
    ("live convoy with an end time", "c.state IN ('open', 'sealed') AND c.finished_at IS NOT NULL"),
    (
        "ended convoy with a completion job but not exactly one job keyed for it",
        "c.finished_at IS NOT NULL AND c.on_complete IS NOT NULL AND (c.on_complete_job_id IS NULL
            OR (SELECT count(*) FROM jobs j WHERE j.unique_key = 'convoy:' || c.id || ':complete') > 1
            OR ((SELECT count(*) FROM jobs j WHERE j.unique_key = 'convoy:' || c.id || ':complete') = 0
                AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = c.on_complete_job_id)))",
    ),
];
