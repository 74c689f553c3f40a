//! What a store measures about itself, for `/metrics`, `/v1/stats` and the advisor: job
//! transitions by queue (counted from the events of this node's own commits, so several
//! PostgreSQL nodes can be summed), writes by operation and outcome with their latency, the
//! size of group commits, waits for the writer or a connection, and the writer's busy time.

use ferry_core::measure::{BATCH_BOUNDS, CounterVec, Histogram, JOB_BOUNDS_SECONDS, LATENCY_BOUNDS_SECONDS};
use ferry_core::{Error, ErrorCode, Event, EventType, Result, StorageFault};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Job outcomes counted per queue, in [`StoreMetrics::jobs`] order.
pub const JOB_OUTCOMES: [&str; 8] =
    ["enqueued", "started", "completed", "failed", "retried", "dead", "cancelled", "replayed"];

fn outcome_index(kind: EventType) -> Option<usize> {
    Some(match kind {
        EventType::JobEnqueued => 0,
        EventType::JobStarted => 1,
        EventType::JobCompleted => 2,
        EventType::JobFailed => 3,
        EventType::JobRetried => 4,
        EventType::JobDead => 5,
        EventType::JobCancelled => 6,
        EventType::JobReplayed => 7,
        _ => return None,
    })
}

/// A store's measurements.
#[derive(Debug)]
pub struct StoreMetrics {
    /// Job transitions by queue, [`JOB_OUTCOMES`] order.
    pub jobs: CounterVec<8>,
    /// Store calls that write, by operation: `[ok, error]`.
    pub writes: CounterVec<2>,
    /// Latency of writing calls as their callers see it (queueing for the writer included).
    pub write_seconds: Histogram,
    /// Commands per committed transaction (group commit; 1 per call on PostgreSQL).
    pub batch_ops: Histogram,
    /// Writes that had to wait: the SQLite writer's queue was full, or no PostgreSQL
    /// connection was free within 1 ms.
    pub busy_waits: AtomicU64,
    /// Time spent in those waits, in microseconds.
    pub busy_wait_us: AtomicU64,
    /// Time writers spent inside transactions, in microseconds (summed over connections).
    pub busy_us: AtomicU64,
    /// Writers that can work at once (1 for SQLite, the pool size for PostgreSQL): busy time
    /// over wall time and this is the writers' utilization.
    pub writers: u32,
    /// Enqueue (or due time) → start, from `job.started` events.
    pub job_wait_seconds: Histogram,
    /// Start → completion, from `job.completed` events.
    pub job_run_seconds: Histogram,
    /// Send → first receive of a message, observed by the server from each receive.
    pub message_wait_seconds: Histogram,
    /// Reports refused because the lease was not the job's current one.
    pub stale_leases: AtomicU64,
    /// Failed writes by their [`StorageFault`], in [`StorageFault::ALL`] order: the advisor
    /// tells a full disk from a busy writer by them.
    pub write_faults: [AtomicU64; StorageFault::ALL.len()],
    /// Whether writing calls are timed and counted (off only to measure what that costs).
    timing: std::sync::atomic::AtomicBool,
}

impl StoreMetrics {
    /// Empty measurements for a store with `writers` concurrent writers.
    pub fn new(writers: u32) -> StoreMetrics {
        StoreMetrics {
            jobs: CounterVec::new(10_000),
            writes: CounterVec::new(100),
            write_seconds: Histogram::new(LATENCY_BOUNDS_SECONDS),
            batch_ops: Histogram::new(BATCH_BOUNDS),
            busy_waits: AtomicU64::new(0),
            busy_wait_us: AtomicU64::new(0),
            busy_us: AtomicU64::new(0),
            writers: writers.max(1),
            job_wait_seconds: Histogram::new(JOB_BOUNDS_SECONDS),
            job_run_seconds: Histogram::new(JOB_BOUNDS_SECONDS),
            message_wait_seconds: Histogram::new(JOB_BOUNDS_SECONDS),
            stale_leases: AtomicU64::new(0),
            write_faults: Default::default(),
            timing: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// Turns the timing of writing calls on or off (`instrument = false` turns it off).
    pub fn set_timing(&self, on: bool) {
        self.timing.store(on, Relaxed);
    }

    /// Runs a writing call, timing it and counting it as `op` with its outcome; the backends'
    /// write and transaction primitives call this, so every write is measured once.
    pub async fn timed<T>(&self, op: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
        if !self.timing.load(Relaxed) {
            return call.await;
        }
        let started = Instant::now();
        let out = call.await;
        self.write(op, started.elapsed(), out.as_ref().err());
        out
    }

    /// Counts the items of a batch's answer refused for a stale lease, and passes it on.
    pub fn stale_items<T>(&self, answer: Result<Vec<Result<T>>>) -> Result<Vec<Result<T>>> {
        if let (true, Ok(items)) = (self.timing.load(Relaxed), &answer) {
            let stale = |r: &&Result<T>| r.as_ref().is_err_and(|e| e.code == ErrorCode::StaleLease);
            self.stale_leases.fetch_add(items.iter().filter(stale).count() as u64, Relaxed);
        }
        answer
    }

    /// Counts the events of one committed transaction (called after the commit).
    pub fn committed(&self, events: &[Event]) {
        let mut run: Option<(&str, [u64; 8])> = None;
        for e in events {
            let (Some(i), Some(q)) = (outcome_index(e.kind), e.queue.as_deref()) else { continue };
            match &mut run {
                Some((rq, counts)) if *rq == q => counts[i] += 1,
                _ => {
                    if let Some((rq, counts)) = run.take() {
                        self.flush(rq, &counts);
                    }
                    let mut counts = [0u64; 8];
                    counts[i] = 1;
                    run = Some((q, counts));
                }
            }
            let ms = |key: &str| e.data.as_ref().and_then(|d| d.get(key)).and_then(|v| v.as_i64());
            match e.kind {
                EventType::JobStarted => {
                    if let Some(w) = ms("waited_ms") {
                        self.job_wait_seconds.observe(w.max(0) as f64 / 1000.0);
                    }
                }
                EventType::JobCompleted => {
                    if let Some(r) = ms("run_ms") {
                        self.job_run_seconds.observe(r.max(0) as f64 / 1000.0);
                    }
                }
                _ => {}
            }
        }
        if let Some((q, counts)) = run {
            self.flush(q, &counts);
        }
    }

    fn flush(&self, queue: &str, counts: &[u64; 8]) {
        let c = self.jobs.get(queue);
        for (i, n) in counts.iter().enumerate() {
            if *n > 0 {
                c[i].fetch_add(*n, Relaxed);
            }
        }
    }

    /// Records one writing call.
    pub fn write(&self, op: &'static str, took: Duration, err: Option<&Error>) {
        let failed = err.is_some_and(crate::rows::is_storage_error);
        if err.is_some_and(|e| e.code == ErrorCode::StaleLease) {
            self.stale_leases.fetch_add(1, Relaxed);
        }
        self.writes.add(op, usize::from(failed), 1);
        if failed {
            let fault = err.and_then(Error::storage_fault).unwrap_or(StorageFault::Other);
            let i = StorageFault::ALL.iter().position(|f| *f == fault).expect("every fault is listed");
            self.write_faults[i].fetch_add(1, Relaxed);
        }
        self.write_seconds.observe(took.as_secs_f64());
    }

    /// Records a wait for the writer or a connection.
    pub fn waited(&self, took: Duration) {
        self.busy_waits.fetch_add(1, Relaxed);
        self.busy_wait_us.fetch_add(took.as_micros() as u64, Relaxed);
    }

    /// Records a transaction of `ops` commands that kept a writer busy for `took`.
    pub fn transaction(&self, ops: usize, took: Duration) {
        self.batch_ops.observe(ops as f64);
        self.busy_us.fetch_add(took.as_micros() as u64, Relaxed);
    }
}

/// Adaptive convoy limit moves by reason ([`ferry_core::convoy::LimitReason::ALL`] order),
/// counted by the node whose transaction decided them (process-wide: every store of the
/// process adds here).
static LIMIT_CHANGES: [std::sync::atomic::AtomicU64; 4] = [const { std::sync::atomic::AtomicU64::new(0) }; 4];

/// Counts one adaptive limit move.
pub fn limit_changed(reason: ferry_core::convoy::LimitReason) {
    let i = ferry_core::convoy::LimitReason::ALL.iter().position(|r| *r == reason).expect("a known reason");
    LIMIT_CHANGES[i].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Adaptive convoy limit moves so far, by reason.
pub fn limit_changes() -> Vec<(ferry_core::convoy::LimitReason, u64)> {
    ferry_core::convoy::LimitReason::ALL
        .iter()
        .zip(&LIMIT_CHANGES)
        .map(|(r, n)| (*r, n.load(std::sync::atomic::Ordering::Relaxed)))
        .collect()
}
