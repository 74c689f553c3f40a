//! Convoys: a group of jobs on one queue run at most `limit` at a time, with one `on_complete`
//! job enqueued exactly once when the group ends.
//!
//! Pure types shared by the stores, the server and the client, and the rules that need no
//! database: the fixed or adaptive limit, the adaptive controller ([`Tuner`]), the payload of
//! the completion job. The stores keep a convoy's counters on its row and move its members
//! (ordinary jobs with a `convoy_id`) between `held` and the slot-holding states.

use crate::backoff::Backoff;
use crate::error::{Error, ErrorCode, Result};
use crate::job::{JobState, NewJob, RunAt, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::VecDeque;
use utoipa::ToSchema;
use uuid::Uuid;

/// Samples per controller window: the limit is judged once per this many attempt ends.
pub const WINDOW_SAMPLES: usize = 20;
/// Samples the controller's long window keeps (its baseline run time).
pub const LONG_SAMPLES: usize = 500;
/// A window whose median run time exceeds the baseline by more than this lowers the limit.
pub const RUN_TIME_RATIO: f64 = 1.5;
/// Failed share of a window above which the limit is lowered.
pub const MAX_FAILED_SHARE: f64 = 0.10;
/// Mean reported pressure at or above which the limit is lowered.
pub const HIGH_PRESSURE: f64 = 0.8;
/// Factor a lowering applies (rounded down).
pub const DECREASE: f64 = 0.75;
/// Shortest interval between two `convoy.progress` events of one convoy.
pub const PROGRESS_INTERVAL_MS: i64 = 1_000;

named_enum! {
    /// Where a convoy is in its life: it takes members while `open`, runs them once `sealed`,
    /// then ends once.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
    pub enum ConvoyState {
        /// Takes members until sealed.
        Open = "open";
        /// Takes no more members; ends when every member is terminal.
        Sealed = "sealed";
        /// Every member ended, none dead.
        Completed = "completed";
        /// Every member ended, at least one dead.
        Failed = "failed";
        /// Cancelled by a user.
        Cancelled = "cancelled";
    }
}

impl ConvoyState {
    /// Terminal states never change again.
    pub fn is_finished(self) -> bool {
        matches!(self, ConvoyState::Completed | ConvoyState::Failed | ConvoyState::Cancelled)
    }
}

named_enum! {
    /// What a dead member does to its convoy.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
    pub enum OnFailure {
        /// The others run on; the convoy ends `failed`.
        Continue = "continue";
        /// The first dead member seals the convoy and cancels every member not running.
        FailFast = "fail_fast";
    }
}

// `named_enum!` passes only doc attributes to variants, so `#[default]` cannot be derived.
#[allow(clippy::derivable_impls)]
impl Default for OnFailure {
    fn default() -> Self {
        OnFailure::Continue
    }
}

named_enum! {
    /// Why the adaptive limit moved.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
    pub enum LimitReason {
        /// A window ran at the baseline's pace with no failure.
        Increase = "increase";
        /// A window's median run time exceeded 1.5 × the baseline's.
        RunTime = "run_time";
        /// Over 10% of a window's attempts failed.
        Failures = "failures";
        /// Members reported a mean pressure of 0.8 or more.
        Pressure = "pressure";
    }
}

/// Bounds of an adaptive limit: 1 ≤ `min` ≤ `start` ≤ `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Adaptive {
    /// The lowest the limit goes.
    pub min: u32,
    /// The highest the limit goes.
    pub max: u32,
    /// Where it starts (default `min`).
    pub start: u32,
}

/// How many members may hold a slot: a fixed number, or one the controller tunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxParallel {
    /// At most this many, always.
    Fixed(u32),
    /// Tuned within the bounds from members' run times, failures and pressure.
    Adaptive(Adaptive),
}

impl MaxParallel {
    /// The limit a new convoy starts with.
    pub fn start(self) -> u32 {
        match self {
            MaxParallel::Fixed(n) => n,
            MaxParallel::Adaptive(a) => a.start,
        }
    }

    /// The adaptive bounds, if tuned.
    pub fn adaptive(self) -> Option<Adaptive> {
        match self {
            MaxParallel::Fixed(_) => None,
            MaxParallel::Adaptive(a) => Some(a),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum MaxParallelWire {
    Fixed(u32),
    Adaptive { adaptive: Adaptive },
}

impl Serialize for MaxParallel {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match *self {
            MaxParallel::Fixed(n) => MaxParallelWire::Fixed(n),
            MaxParallel::Adaptive(adaptive) => MaxParallelWire::Adaptive { adaptive },
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for MaxParallel {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Ok(match MaxParallelWire::deserialize(d)? {
            MaxParallelWire::Fixed(n) => MaxParallel::Fixed(n),
            MaxParallelWire::Adaptive { adaptive } => MaxParallel::Adaptive(adaptive),
        })
    }
}

/// A convoy's members by where they are; kept on the convoy, so they outlive pruned members.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ConvoyCounts {
    /// Members ever added.
    pub total: u64,
    /// Over the limit, waiting for a slot.
    pub held: u64,
    /// Holding a slot, claimable.
    pub ready: u64,
    /// Holding a slot, leased by a worker.
    pub running: u64,
    /// Holding a slot, waiting out a retry's backoff.
    pub retrying: u64,
    /// Ended completed.
    pub completed: u64,
    /// Ended dead.
    pub failed: u64,
    /// Ended cancelled.
    pub cancelled: u64,
}

/// The completion job, validated when the convoy is created and enqueued when it ends.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OnComplete {
    /// Its queue (any queue).
    pub queue: String,
    /// Its own payload, handed on under `payload`.
    #[schema(value_type = serde_json::Value)]
    pub payload: Box<RawValue>,
    /// Its priority.
    pub priority: i32,
    /// When due, as an absolute time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub run_at: Option<Timestamp>,
    /// When due, counted from the convoy's end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<i64>,
    /// Attempts before it is dead.
    pub max_attempts: u32,
    /// Retry spacing.
    pub backoff: Backoff,
    /// Lease per claim.
    pub lease_ms: i64,
    /// Run deadline per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<i64>,
    /// Labels.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl OnComplete {
    /// From a validated job spec; `unique_key` and `depends_on` are refused (the convoy owns
    /// the first, and the second could never be met in the ending transaction).
    pub fn from_job(job: NewJob) -> Result<OnComplete> {
        if job.unique_key.is_some() {
            return Err(Error::invalid("unique_key", "on_complete takes no unique_key (ferry sets one)"));
        }
        if !job.depends_on.is_empty() {
            return Err(Error::invalid("depends_on", "on_complete takes no depends_on"));
        }
        let (run_at, delay_ms) = match job.run_at {
            RunAt::Now => (None, None),
            RunAt::At(t) => (Some(Timestamp(t)), None),
            RunAt::Delay(d) => (None, Some(d)),
        };
        Ok(OnComplete {
            queue: job.queue,
            payload: job.payload,
            priority: job.priority,
            run_at,
            delay_ms,
            max_attempts: job.max_attempts,
            backoff: job.backoff,
            lease_ms: job.lease_ms,
            timeout_ms: job.timeout_ms,
            tags: job.tags,
        })
    }

    /// The job to enqueue when convoy `summary` ends: keyed `convoy:<id>:complete`, its
    /// payload `{"convoy": summary, "payload": own}`.
    pub fn job(&self, summary: &ConvoySummary) -> NewJob {
        let payload = format!(
            "{{\"convoy\":{},\"payload\":{}}}",
            serde_json::to_string(summary).expect("a summary serializes"),
            self.payload.get()
        );
        NewJob {
            queue: self.queue.clone(),
            payload: RawValue::from_string(payload).expect("two JSON values in an object are JSON"),
            priority: self.priority,
            run_at: match (self.run_at, self.delay_ms) {
                (Some(t), _) => RunAt::At(t.0),
                (None, Some(d)) => RunAt::Delay(d),
                (None, None) => RunAt::Now,
            },
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            lease_ms: self.lease_ms,
            timeout_ms: self.timeout_ms,
            unique_key: Some(completion_key(&summary.id)),
            depends_on: Vec::new(),
            tags: self.tags.clone(),
            import: None,
            payment: None,
        }
    }
}

/// The unique key of a convoy's completion job.
pub fn completion_key(id: &str) -> String {
    format!("convoy:{id}:complete")
}

/// The wake-up key a convoy's long-polls wait on (a `/` is in no convoy id or queue name).
pub fn wake_key(id: &str) -> String {
    format!("convoy/{id}")
}

/// What the completion job is told about its convoy.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConvoySummary {
    /// The convoy's id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// How it ended.
    pub state: ConvoyState,
    /// Its final counts.
    pub counts: ConvoyCounts,
    /// The first `limits.max_convoy_failed_ids` dead members.
    pub failed_ids: Vec<Uuid>,
    /// Every dead member.
    pub failed_total: u64,
}

/// Everything ferry knows about a convoy.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Convoy {
    /// The convoy's id (UUIDv7, or the client's own).
    pub id: String,
    /// Its name.
    pub name: String,
    /// The queue of every member.
    pub queue: String,
    /// A fixed limit, or `{"adaptive": {min, max, start}}`.
    #[schema(value_type = serde_json::Value)]
    pub max_parallel: MaxParallel,
    /// False while it takes members.
    pub sealed: bool,
    /// What a dead member does.
    pub on_failure: OnFailure,
    /// The job enqueued once when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_complete: Option<OnComplete>,
    /// Where it is in its life.
    pub state: ConvoyState,
    /// Most members holding a slot now.
    pub limit: u32,
    /// Members by where they are.
    pub counts: ConvoyCounts,
    /// Dead members in all.
    pub failed_total: u64,
    /// The completion job, once it ended with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_complete_job_id: Option<Uuid>,
    /// When it was created.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
}

/// A validated `POST /v1/convoys`.
#[derive(Debug, Clone)]
pub struct NewConvoy {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The members' queue.
    pub queue: String,
    /// Its limit.
    pub max_parallel: MaxParallel,
    /// False: open, taking members until sealed.
    pub sealed: bool,
    /// What a dead member does.
    pub on_failure: OnFailure,
    /// The completion job.
    pub on_complete: Option<OnComplete>,
    /// The first members, each with the convoy's queue.
    pub members: Vec<NewJob>,
}

/// What a create did.
#[derive(Debug, Clone)]
pub struct ConvoyCreated {
    /// The convoy as it is now.
    pub convoy: Convoy,
    /// One outcome per member added (none for a repeat).
    pub members: Vec<crate::EnqueueOutcome>,
    /// True when the id existed with the same name, queue and limit: nothing was added.
    pub duplicate: bool,
}

/// One member as its convoy lists it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberView {
    /// The job id.
    pub id: Uuid,
    /// Its job state.
    pub state: JobState,
    /// Attempts started.
    pub attempt: u32,
    /// Start of its latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    /// When it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<Timestamp>,
}

/// Which convoys a list returns.
#[derive(Debug, Clone, Default)]
pub struct ConvoyFilter {
    /// Only this state.
    pub state: Option<ConvoyState>,
    /// Only this queue.
    pub queue: Option<String>,
}

/// Cluster-wide convoy gauges, read at scrape.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConvoyGauges {
    /// Convoys taking members.
    pub open: u64,
    /// Convoys sealed and running.
    pub sealed: u64,
    /// Members waiting for a slot, over every live convoy.
    pub held: u64,
}

/// A conflicting repeat of a create: which of the identifying fields differ.
pub fn conflict(id: &str, fields: Vec<&'static str>) -> Error {
    Error::new(ErrorCode::Conflict, format!("convoy {id} exists with another {}", fields.join(", ")))
        .with_details(serde_json::json!({ "fields": fields }))
}

/// The error for an unknown convoy.
pub fn not_found(id: &str) -> Error {
    Error::new(ErrorCode::NotFound, format!("convoy {id} not found"))
}

/// A limit move the controller decided, with the figures behind it (`convoy.limit_changed`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LimitChange {
    /// The limit before.
    pub from: u32,
    /// The limit after.
    pub to: u32,
    /// Why.
    pub reason: LimitReason,
    /// The window's median run time.
    pub p50_ms: u32,
    /// The long window's median run time (the baseline).
    pub long_p50_ms: u32,
    /// Failed attempts in the window.
    pub failed: u32,
    /// The window's mean reported pressure (0 when none was reported).
    pub pressure: f64,
}

/// The adaptive limit's controller, stored with its convoy so every node applies one limit
/// and a restart resumes it. AIMD on run time: +1 per window at the baseline's pace, × 0.75
/// on a slowdown, failures or pressure; a window that lowered the limit never joins the
/// baseline (except at `min`), so a slowdown cannot raise its own baseline (Netflix
/// concurrency-limits PR #134).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tuner {
    /// Attempts started before this (the last change) are not sampled.
    pub since_ms: i64,
    /// Run times of the current window.
    pub window: Vec<u32>,
    /// Failed attempts in the current window.
    pub failed: u32,
    /// Sum and number of pressure reports in the current window.
    pub pressure_sum: f64,
    /// Number of pressure reports in the current window.
    pub pressure_n: u32,
    /// The baseline: run times of the last [`LONG_SAMPLES`] judged windows.
    pub long: VecDeque<u32>,
}

impl Tuner {
    /// A controller that samples attempts started from `now_ms` on.
    pub fn new(now_ms: i64) -> Tuner {
        Tuner { since_ms: now_ms, ..Tuner::default() }
    }

    /// Notes a member's reported pressure (0.0–1.0).
    pub fn pressure(&mut self, p: f64) {
        debug_assert!((0.0..=1.0).contains(&p));
        self.pressure_sum += p;
        self.pressure_n += 1;
    }

    /// Samples one attempt end; every [`WINDOW_SAMPLES`] samples judges `limit` within
    /// `bounds` and returns the move, if the limit changes.
    pub fn sample(
        &mut self,
        now_ms: i64,
        started_ms: i64,
        failed: bool,
        limit: u32,
        bounds: Adaptive,
    ) -> Option<LimitChange> {
        if started_ms < self.since_ms {
            return None;
        }
        let run_ms = (now_ms - started_ms).clamp(0, i64::from(u32::MAX)) as u32;
        self.window.push(run_ms);
        self.failed += u32::from(failed);
        if self.window.len() < WINDOW_SAMPLES {
            return None;
        }
        let p50 = median(self.window.iter().copied());
        let long_p50 = if self.long.is_empty() { p50 } else { median(self.long.iter().copied()) };
        let pressure =
            if self.pressure_n == 0 { 0.0 } else { self.pressure_sum / f64::from(self.pressure_n) };
        let failed_share = f64::from(self.failed) / self.window.len() as f64;
        let reason = if f64::from(p50) > RUN_TIME_RATIO * f64::from(long_p50) {
            Some(LimitReason::RunTime)
        } else if failed_share > MAX_FAILED_SHARE {
            Some(LimitReason::Failures)
        } else if pressure >= HIGH_PRESSURE {
            Some(LimitReason::Pressure)
        } else if self.failed == 0 {
            Some(LimitReason::Increase)
        } else {
            None
        };
        let to = match reason {
            Some(LimitReason::Increase) => limit.saturating_add(1),
            Some(_) => (f64::from(limit) * DECREASE).floor() as u32,
            None => limit,
        }
        .clamp(bounds.min, bounds.max);
        let lowered = reason.is_some_and(|r| r != LimitReason::Increase);
        if !lowered || limit <= bounds.min {
            self.long.extend(self.window.iter().copied());
            while self.long.len() > LONG_SAMPLES {
                self.long.pop_front();
            }
        }
        let change = LimitChange {
            from: limit,
            to,
            reason: reason.unwrap_or(LimitReason::Increase),
            p50_ms: p50,
            long_p50_ms: long_p50,
            failed: self.failed,
            pressure,
        };
        self.window.clear();
        self.failed = 0;
        self.pressure_sum = 0.0;
        self.pressure_n = 0;
        if to == limit {
            return None;
        }
        self.since_ms = now_ms;
        Some(change)
    }
}

fn median(values: impl Iterator<Item = u32>) -> u32 {
    let mut v: Vec<u32> = values.collect();
    assert!(!v.is_empty(), "a median needs samples");
    let mid = v.len() / 2;
    *v.select_nth_unstable(mid).1
}

/// Checks a convoy id: 1..=`max` of `[A-Za-z0-9._:-]` (a queue name's characters).
pub fn check_id(id: &str, max: usize, field: &str) -> Result<()> {
    crate::validate::plain_name(id, max, field, "a convoy id")
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Adaptive = Adaptive { min: 1, max: 200, start: 1 };

    /// Feeds `n` samples of `run_ms` started after the last change.
    fn feed(t: &mut Tuner, now: &mut i64, limit: u32, run_ms: i64, failed: bool) -> Option<LimitChange> {
        let mut out = None;
        for _ in 0..WINDOW_SAMPLES {
            *now += 1_000;
            if let Some(c) = t.sample(*now, *now - run_ms, failed, limit, B) {
                out = Some(c);
            }
        }
        out
    }

    #[test]
    fn steady_run_times_raise_by_one_per_window() {
        let (mut t, mut now) = (Tuner::new(0), 0);
        let c = feed(&mut t, &mut now, 10, 20, false).expect("a change");
        assert_eq!((c.from, c.to, c.reason), (10, 11, LimitReason::Increase));
        assert_eq!(t.long.len(), WINDOW_SAMPLES);
    }

    #[test]
    fn a_slowdown_lowers_and_stays_out_of_the_baseline() {
        let (mut t, mut now) = (Tuner::new(0), 0);
        feed(&mut t, &mut now, 32, 20, false);
        let c = feed(&mut t, &mut now, 33, 40, false).expect("a change");
        assert_eq!((c.from, c.to, c.reason), (33, 24, LimitReason::RunTime));
        assert_eq!((c.p50_ms, c.long_p50_ms), (40, 20));
        assert_eq!(t.long.len(), WINDOW_SAMPLES, "the slow window did not join the baseline");
    }

    #[test]
    fn failures_and_pressure_lower_the_limit() {
        let (mut t, mut now) = (Tuner::new(0), 0);
        feed(&mut t, &mut now, 40, 20, false);
        assert_eq!(feed(&mut t, &mut now, 41, 20, true).unwrap().reason, LimitReason::Failures);
        let (mut t, mut now) = (Tuner::new(0), 0);
        for _ in 0..5 {
            t.pressure(0.9);
        }
        let c = feed(&mut t, &mut now, 40, 20, false).unwrap();
        assert_eq!((c.to, c.reason), (30, LimitReason::Pressure));
    }

    #[test]
    fn attempts_started_before_a_change_are_not_sampled() {
        let mut t = Tuner::new(5_000);
        assert_eq!(t.sample(6_000, 4_000, false, 3, B), None);
        assert!(t.window.is_empty());
    }

    #[test]
    fn the_limit_stays_within_bounds() {
        let b = Adaptive { min: 4, max: 5, start: 4 };
        let mut t = Tuner::new(0);
        let mut now = 0;
        let mut limit = 5;
        for _ in 0..WINDOW_SAMPLES {
            now += 1;
            if let Some(c) = t.sample(now, now - 20, false, limit, b) {
                limit = c.to;
            }
        }
        assert_eq!(limit, 5, "no move past max");
        for _ in 0..WINDOW_SAMPLES {
            now += 1;
            if let Some(c) = t.sample(now, now - 20, true, limit, b) {
                limit = c.to;
            }
        }
        assert_eq!(limit, 4, "× 0.75 of 5 is 3, held at min");
    }

    #[test]
    fn max_parallel_reads_both_forms() {
        let f: MaxParallel = serde_json::from_str("50").unwrap();
        assert_eq!(f, MaxParallel::Fixed(50));
        let a: MaxParallel = serde_json::from_str(r#"{"adaptive":{"min":1,"max":9,"start":2}}"#).unwrap();
        assert_eq!(a.start(), 2);
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"adaptive":{"min":1,"max":9,"start":2}}"#);
    }
}
