//! The worker runtime: register an async handler per queue, run up to N at once, claim in
//! batches with long-poll, heartbeat while a handler runs, report results in batches.
//!
//! Safety rules it keeps:
//! - a handler whose heartbeat learns the lease is gone (409/404) is cancelled (its future is
//!   dropped) and its result discarded: a timed-out job never runs beside its retry;
//! - a handler still running at its job's `timeout_ms` is cancelled and the job failed as
//!   retryable (`timed out after N ms`);
//! - it claims only as many jobs as it has free handler slots, and a job that arrives after
//!   shutdown began is released unstarted (not failed, its attempt not counted);
//! - reports are retried on transient errors (connection loss, 429/5xx) with backoff;
//! - shutdown stops claiming, lets running handlers finish and flushes every report.

use crate::{Client, ClientError};
use ferry_core::ClaimedJob;
use ferry_core::wire::{ClaimBody, CompleteItemBody, FailItemBody};
use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc, watch};
use uuid::Uuid;

/// What a handler sees of its job.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// Job id.
    pub id: Uuid,
    /// Its queue.
    pub queue: String,
    /// 1 on the first run.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The producer's payload, verbatim.
    pub payload: Box<RawValue>,
    /// Its tags.
    pub tags: Vec<String>,
    /// The run deadline of this attempt: past it the handler is cancelled and the job failed
    /// (retryable).
    pub timeout_ms: i64,
    pressure: Arc<AtomicU64>,
}

/// No pressure reported (a bit pattern no `f64` in 0..=1 has).
const NO_PRESSURE: u64 = u64::MAX;

/// The pressure a handler set, if any.
fn pressure_of(cell: &AtomicU64) -> Option<f64> {
    let bits = cell.load(Ordering::Relaxed);
    (bits != NO_PRESSURE).then(|| f64::from_bits(bits))
}

impl JobContext {
    /// Reports this worker's load (0.0–1.0, clamped) with the next heartbeat and the job's
    /// report, so a convoy with an adaptive limit lowers it at 0.8 and above.
    pub fn set_pressure(&self, pressure: f64) {
        let p = if pressure.is_finite() { pressure.clamp(0.0, 1.0) } else { 1.0 };
        self.pressure.store(p.to_bits(), Ordering::Relaxed);
    }

    /// The payload parsed as `T`.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, JobError> {
        serde_json::from_str(self.payload.get()).map_err(|e| JobError::fatal(format!("bad payload: {e}")))
    }
}

/// A handler's failure: retried (with the job's backoff) unless marked fatal.
#[derive(Debug, Clone)]
pub struct JobError {
    /// Recorded in the job's error history.
    pub message: String,
    /// False sends the job to the dead-letter queue at once.
    pub retry: bool,
}

impl JobError {
    /// A failure worth retrying.
    pub fn retry(message: impl Into<String>) -> Self {
        JobError { message: message.into(), retry: true }
    }

    /// A failure that retrying cannot fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        JobError { message: message.into(), retry: false }
    }
}

impl<E: std::fmt::Display> From<E> for JobError {
    fn from(e: E) -> Self {
        JobError::retry(e.to_string())
    }
}

/// A handler's outcome: an optional JSON result, or an error.
pub type HandlerResult = Result<Option<serde_json::Value>, JobError>;
type Handler = Arc<dyn Fn(JobContext) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

/// Counts of what a worker did, returned when it stops.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Completions acknowledged by the server.
    pub completed: AtomicU64,
    /// Failures acknowledged by the server.
    pub failed: AtomicU64,
    /// Handlers cancelled because their lease was lost.
    pub lease_lost: AtomicU64,
    /// Jobs released unstarted at shutdown.
    pub released: AtomicU64,
    /// Handlers cancelled at their job's `timeout_ms` (and failed as retryable).
    pub timed_out: AtomicU64,
    /// Reports the server refused (stale lease): the job was handled elsewhere.
    pub rejected: AtomicU64,
}

/// A worker process: handlers per queue, shared concurrency.
pub struct Worker {
    client: Client,
    name: String,
    handlers: HashMap<String, Handler>,
    concurrency: usize,
    claim_batch: usize,
    wait_ms: i64,
    report_batch: usize,
}

/// Longest a report is retried before it is given up (the lease is long gone by then).
const REPORT_RETRY_LIMIT: u32 = 12;

impl Worker {
    /// A worker named `name` (recorded on each job it runs).
    pub fn new(client: Client, name: impl Into<String>) -> Worker {
        let name = name.into();
        Worker {
            client: client.named(name.clone()),
            name,
            handlers: HashMap::new(),
            concurrency: 8,
            claim_batch: 100,
            wait_ms: 1_000,
            report_batch: 500,
        }
    }

    /// Registers the handler of `queue`.
    pub fn handle<F, Fut>(mut self, queue: &str, f: F) -> Self
    where
        F: Fn(JobContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.handlers.insert(queue.to_string(), Arc::new(move |ctx| Box::pin(f(ctx))));
        self
    }

    /// Handlers run at once, across all queues (default 8).
    pub fn concurrency(mut self, n: usize) -> Self {
        assert!(n >= 1);
        self.concurrency = n;
        self
    }

    /// Most jobs per claim (default 100).
    pub fn claim_batch(mut self, n: usize) -> Self {
        assert!(n >= 1);
        self.claim_batch = n;
        self
    }

    /// Long-poll wait per claim (default 1,000 ms; shutdown waits for at most one of these).
    pub fn wait_ms(mut self, ms: i64) -> Self {
        self.wait_ms = ms;
        self
    }

    /// Runs until `shutdown` resolves, then stops claiming, finishes running handlers and
    /// flushes reports.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Arc<WorkerStats> {
        let stats = Arc::new(WorkerStats::default());
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (report_tx, report_rx) = mpsc::channel::<Report>(self.concurrency * 4 + self.report_batch);
        let reporter =
            tokio::spawn(reporter(self.client.clone(), report_rx, self.report_batch, stats.clone()));
        let mut fetchers = Vec::new();
        for (queue, handler) in &self.handlers {
            let f = Fetcher {
                client: self.client.clone(),
                name: self.name.clone(),
                queue: queue.clone(),
                handler: handler.clone(),
                slots: slots.clone(),
                claim_batch: self.claim_batch,
                wait_ms: self.wait_ms,
                stop: stop_rx.clone(),
                reports: report_tx.clone(),
                stats: stats.clone(),
            };
            fetchers.push(tokio::spawn(f.run()));
        }
        drop(report_tx);
        shutdown.await;
        let _ = stop_tx.send(true);
        for f in fetchers {
            let _ = f.await; // each fetcher waits for its own handlers
        }
        let _ = reporter.await;
        stats
    }
}

enum Report {
    Done(CompleteItemBody),
    Failed(FailItemBody),
}

struct Fetcher {
    client: Client,
    name: String,
    queue: String,
    handler: Handler,
    slots: Arc<Semaphore>,
    claim_batch: usize,
    wait_ms: i64,
    stop: watch::Receiver<bool>,
    reports: mpsc::Sender<Report>,
    stats: Arc<WorkerStats>,
}

impl Fetcher {
    async fn run(mut self) {
        let mut running = tokio::task::JoinSet::new();
        let mut backoff = Duration::from_millis(50);
        loop {
            if *self.stop.borrow() {
                break;
            }
            // Wait for one free slot, then take as many more as are free, up to the batch.
            let first = tokio::select! {
                p = self.slots.clone().acquire_owned() => p.expect("semaphore open"),
                _ = self.stop.changed() => break,
            };
            let mut permits = vec![first];
            while permits.len() < self.claim_batch {
                match self.slots.clone().try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let body = ClaimBody {
                worker: Some(self.name.clone()),
                max: Some(permits.len() as i64),
                lease_ms: None,
                wait_ms: Some(self.wait_ms),
            };
            let jobs = match self.client.claim(&self.queue, &body).await {
                Ok(jobs) => {
                    backoff = Duration::from_millis(50);
                    jobs
                }
                Err(e) => {
                    tracing::warn!(queue = %self.queue, error = %e, "claim failed; backing off");
                    drop(permits);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.stop.changed() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            for job in jobs {
                let permit = permits.pop().expect("never more jobs than permits");
                if *self.stop.borrow() {
                    // Shutdown began while the claim was in flight: give the job back unstarted.
                    if self.client.release(job.id, &job.lease).await.is_ok() {
                        self.stats.released.fetch_add(1, Ordering::Relaxed);
                    }
                    continue;
                }
                let (client, handler, reports, stats) =
                    (self.client.clone(), self.handler.clone(), self.reports.clone(), self.stats.clone());
                running.spawn(async move {
                    run_one(client, handler, job, reports, stats).await;
                    drop(permit);
                });
            }
            while running.try_join_next().is_some() {}
        }
        while running.join_next().await.is_some() {}
    }
}

/// Runs one job's handler beside its heartbeat; reports the outcome unless the lease was lost.
async fn run_one(
    client: Client,
    handler: Handler,
    job: ClaimedJob,
    reports: mpsc::Sender<Report>,
    stats: Arc<WorkerStats>,
) {
    let ctx = JobContext {
        id: job.id,
        queue: job.queue.clone(),
        attempt: job.attempt,
        max_attempts: job.max_attempts,
        payload: job.payload.clone(),
        tags: job.tags.clone(),
        timeout_ms: job.timeout_ms,
        pressure: Arc::new(AtomicU64::new(NO_PRESSURE)),
    };
    let load = ctx.pressure.clone();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let lease_left = (job.lease_expires_at.0 - now_ms).max(30);
    let beat_every = Duration::from_millis((lease_left / 3).max(10) as u64);
    let heartbeat = async {
        loop {
            tokio::time::sleep(beat_every).await;
            match client.heartbeat_with(job.id, &job.lease, None, pressure_of(&load)).await {
                Ok(_) => {}
                Err(e) if e.is_transient() => {
                    tracing::warn!(job = %job.id, error = %e, "heartbeat failed; will retry")
                }
                Err(e) => {
                    tracing::warn!(job = %job.id, error = %e, "lease lost; cancelling the handler");
                    return;
                }
            }
        }
    };
    let timeout = Duration::from_millis(job.timeout_ms.max(1) as u64);
    let outcome = tokio::select! {
        r = handler(ctx) => Some(r),
        _ = heartbeat => None,
        _ = tokio::time::sleep(timeout) => {
            stats.timed_out.fetch_add(1, Ordering::Relaxed);
            Some(Err(JobError::retry(format!("timed out after {} ms", job.timeout_ms))))
        }
    };
    let report = match outcome {
        None => {
            stats.lease_lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Some(Ok(result)) => Report::Done(CompleteItemBody {
            id: job.id.to_string(),
            lease: job.lease,
            result: result.map(|v| serde_json::value::to_raw_value(&v).expect("JSON value")),
            pressure: pressure_of(&load),
        }),
        Some(Err(e)) => Report::Failed(FailItemBody {
            id: job.id.to_string(),
            lease: job.lease,
            error: e.message,
            retry: Some(e.retry),
            pressure: pressure_of(&load),
        }),
    };
    let _ = reports.send(report).await;
}

/// Sends reports in batches: whatever has queued up while the previous batch was in flight.
async fn reporter(client: Client, mut rx: mpsc::Receiver<Report>, max: usize, stats: Arc<WorkerStats>) {
    let mut buf = Vec::with_capacity(max);
    while rx.recv_many(&mut buf, max).await > 0 {
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        for r in buf.drain(..) {
            match r {
                Report::Done(c) => done.push(c),
                Report::Failed(f) => failed.push(f),
            }
        }
        if !done.is_empty() {
            let n = done.len();
            let r = with_retry(|| client.complete_batch(done.clone())).await;
            count(r, n, &stats.completed, &stats);
        }
        if !failed.is_empty() {
            let n = failed.len();
            let r = with_retry(|| client.fail_batch(failed.clone())).await;
            count(r, n, &stats.failed, &stats);
        }
    }
}

fn count(
    r: Result<ferry_core::wire::BatchResponse, ClientError>,
    n: usize,
    ok: &AtomicU64,
    stats: &WorkerStats,
) {
    match r {
        Ok(resp) => {
            for o in resp.results {
                if o.ok {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    stats.rejected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, reports = n, "reports given up; their leases will expire and the jobs rerun");
        }
    }
}

/// Retries transient failures with exponential backoff and jitter.
async fn with_retry<T, F, Fut>(mut f: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ClientError>>,
{
    let mut delay_ms = 50u64;
    let mut tries = 0;
    loop {
        match f().await {
            Err(e) if e.is_transient() && tries < REPORT_RETRY_LIMIT => {
                tries += 1;
                let jitter = rand::random::<u64>() % (delay_ms / 2 + 1);
                tokio::time::sleep(Duration::from_millis(delay_ms / 2 + jitter)).await;
                delay_ms = (delay_ms * 2).min(5_000);
            }
            other => return other,
        }
    }
}
