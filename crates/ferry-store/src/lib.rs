//! ferry-store: durable storage for ferry behind one [`Store`] trait.
//!
//! Every backend (SQLite and PostgreSQL) implements the same trait and passes the same
//! conformance suite (`tests/conformance`). Nothing backend-specific leaks above this trait:
//! the server, the maintenance loops and the long-poll claim only see `dyn Store`.

pub mod events;
pub mod maintenance;
pub mod measured;
pub mod metrics;
pub mod migrate;
pub mod notify;
pub mod postgres;
mod rows;
pub mod sqlite;

use async_trait::async_trait;
use ferry_core::schedule::Schedule;
use ferry_core::{
    ClaimRequest, ClaimedJob, Clock, CompleteItem, DeadSelector, EnqueueOutcome, Event, FailItem,
    FailOutcome, HeartbeatOutcome, HostRecord, Job, JobFilter, JobState, NewJob, Page, QueueLimits,
    QueueStats, ReapOutcome, Result, TokenRecord, WorkerInfo,
};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub use events::EventBus;
pub use notify::Notifier;
pub use postgres::{PgConfig, PgStore};
pub use sqlite::{SqliteConfig, SqliteStore, Synchronous};

/// The storage contract every backend fulfils; the conformance suite is its specification.
///
/// Rules every implementation keeps:
/// - each call is atomic: a batch enqueue inserts all jobs or none;
/// - `complete`, `fail` and `heartbeat` change a job only when it is `running`, its lease
///   token matches and the lease has not expired; otherwise they answer `stale_lease`;
/// - background passes (`reap_expired`, `promote_due`, `prune_finished`) are safe to run
///   concurrently from several nodes, and the reaper never overwrites a finished job;
/// - wake-ups go to [`Store::notifier`] only after the change is durable.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short backend name for logs and metrics (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Wakes long-polling claimers; backends signal it after each commit.
    fn notifier(&self) -> &Arc<Notifier>;

    /// The clock every timestamp of this store comes from.
    fn clock(&self) -> &Arc<dyn Clock>;

    /// What this store measured about itself (wrap it in [`measured::Measured`] to also time
    /// every writing call).
    fn metrics(&self) -> &Arc<metrics::StoreMetrics>;

    /// Database connections in use and the most there can be.
    fn connections(&self) -> (usize, usize);

    /// How often a long-poll should re-check even without a wake-up; `None` when wake-ups
    /// cannot be lost (one process), some interval when they can (several nodes).
    fn fallback_poll(&self) -> Option<Duration> {
        None
    }

    /// Inserts jobs all-or-nothing; duplicates by `unique_key` return the existing id.
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<EnqueueOutcome>>;

    /// Leases up to `max` ready jobs of one queue, best first; empty when paused, fewer
    /// (possibly none, never an error) when the queue's flow limits allow fewer.
    async fn claim(&self, req: ClaimRequest) -> Result<Vec<ClaimedJob>>;

    /// Extends a lease by `extend_ms` (default: the job's `lease_ms`) from now.
    async fn heartbeat(&self, id: Uuid, lease: &str, extend_ms: Option<i64>) -> Result<HeartbeatOutcome>;

    /// Gives a claimed job back unstarted: `ready` again, the attempt not counted.
    async fn release(&self, id: Uuid, lease: &str) -> Result<JobState>;

    /// Records completions; each item succeeds or fails on its own.
    async fn complete(&self, items: Vec<CompleteItem>) -> Result<Vec<Result<()>>>;

    /// Records failures (retry after backoff, or dead); each item on its own.
    async fn fail(&self, items: Vec<FailItem>) -> Result<Vec<Result<FailOutcome>>>;

    /// Cancels a job that is not running; its waiting dependants are cancelled too.
    async fn cancel(&self, id: Uuid, reason: &str) -> Result<JobState>;

    /// One job with its history; `not_found` when absent.
    async fn get_job(&self, id: Uuid) -> Result<Job>;

    /// Jobs in insertion order, filtered, one page at a time.
    async fn list_jobs(&self, filter: JobFilter, limit: usize, cursor: Option<String>) -> Result<Page<Job>>;

    /// Counts by state, oldest ready age and pause flag for every known queue.
    async fn queue_stats(&self) -> Result<Vec<QueueStats>>;

    /// Pauses or resumes a queue; resuming wakes its claimers.
    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()>;

    /// Returns up to `max` dead jobs to `ready` with attempts reset and history kept.
    async fn replay_dead(&self, selector: DeadSelector, max: usize) -> Result<Vec<Uuid>>;

    /// Deletes up to `max` dead jobs.
    async fn purge_dead(&self, selector: DeadSelector, max: usize) -> Result<u64>;

    /// Returns up to `max` jobs whose lease expired to `ready` (or `dead`).
    async fn reap_expired(&self, max: usize) -> Result<ReapOutcome>;

    /// Moves up to `max` due `scheduled` jobs to `ready` and wakes their queues.
    async fn promote_due(&self, max: usize) -> Result<u64>;

    /// The earliest `run_at` among scheduled jobs.
    async fn next_due_ms(&self) -> Result<Option<i64>>;

    /// Deletes up to `max` completed or cancelled jobs finished at or before `before_ms`.
    async fn prune_finished(&self, before_ms: i64, max: usize) -> Result<u64>;

    /// The bus this node's subscribers hear committed events on (events of every node, with
    /// PostgreSQL).
    fn events(&self) -> &Arc<EventBus>;

    /// Committed events after cursor `after`, oldest first, at most `limit`.
    async fn read_events(&self, after: u64, limit: usize) -> Result<Vec<Event>>;

    /// Deletes up to `max` stored event batches that are older than `before_ms` or lie
    /// entirely before the newest `keep` events; the newest batch always stays (it carries the
    /// cursor on).
    async fn prune_events(&self, before_ms: i64, keep: u64, max: usize) -> Result<u64>;

    /// Stores a new schedule; `conflict` if the name is taken, 422 past `max_schedules`.
    async fn create_schedule(&self, s: Schedule) -> Result<Schedule>;

    /// Replaces an existing schedule; `not_found` if absent.
    async fn update_schedule(&self, s: Schedule) -> Result<Schedule>;

    /// One schedule; `not_found` if absent.
    async fn get_schedule(&self, name: &str) -> Result<Schedule>;

    /// Every schedule, by name.
    async fn list_schedules(&self) -> Result<Vec<Schedule>>;

    /// Deletes a schedule; `not_found` if absent.
    async fn delete_schedule(&self, name: &str) -> Result<()>;

    /// Enqueues the jobs of up to `max` due schedules, each tick exactly once even when every
    /// node runs this (the schedule row is locked, and each job's unique key holds its tick);
    /// returns the jobs enqueued.
    async fn fire_schedules(&self, max: usize) -> Result<u64>;

    /// The earliest next tick of any active schedule.
    async fn next_schedule_ms(&self) -> Result<Option<i64>>;

    /// Bytes the database occupies (file and WAL, or ferry's tables with their indexes), so
    /// operators and the soak benchmark can see whether it grows.
    async fn storage_bytes(&self) -> Result<u64>;

    /// Replaces a queue's flow limits (an empty value clears them); creates the queue row if
    /// needed. Claims honour `max_running` and `max_starts_per_sec` across every node; a
    /// negative or non-finite rate is refused (422).
    async fn set_queue_limits(&self, queue: &str, limits: QueueLimits) -> Result<()>;

    /// Every queue that has a limit set, by name.
    async fn queue_limits(&self) -> Result<Vec<(String, QueueLimits)>>;

    /// Stores a new API token (only its hash); `conflict` if its id exists.
    async fn create_token(&self, token: TokenRecord) -> Result<()>;

    /// Every token, revoked ones included, oldest first.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>>;

    /// Revokes a token (idempotent: the first revocation time stays) and returns it;
    /// `not_found` if no such id.
    async fn revoke_token(&self, id: Uuid) -> Result<TokenRecord>;

    /// Records that workers were heard from (name, epoch ms): registers new ones, moves
    /// `last_seen` forward, and marks them `active` again.
    async fn touch_workers(&self, seen: Vec<(String, i64)>) -> Result<()>;

    /// Every registered worker with its jobs in flight, by name.
    async fn list_workers(&self) -> Result<Vec<WorkerInfo>>;

    /// Marks `active` workers last seen before `silent_before_ms` as `lost` and releases
    /// their leases at once (each running job is handled as an expired lease would be, with
    /// the error kind `worker_lost`); returns the names marked lost (at most `max`).
    async fn release_lost_workers(&self, silent_before_ms: i64, max: usize) -> Result<Vec<String>>;

    /// Registers a host to probe; `conflict` if the name is taken.
    async fn create_host(&self, host: HostRecord) -> Result<()>;

    /// Every registered host, by name.
    async fn list_hosts(&self) -> Result<Vec<HostRecord>>;

    /// Forgets a host; `not_found` if absent.
    async fn delete_host(&self, name: &str) -> Result<()>;

    /// Checks storage integrity and ferry's invariants; returns every violation found.
    async fn check_invariants(&self) -> Result<Vec<String>>;

    /// Flushes pending writes and stops accepting new ones.
    async fn close(&self);
}

/// Long-poll claim: returns as soon as jobs are available, woken by the notifier, or an
/// empty list once `wait` has passed.
pub async fn claim_wait(store: &dyn Store, req: ClaimRequest, wait: Duration) -> Result<Vec<ClaimedJob>> {
    let (_keep, never) = tokio::sync::watch::channel(false);
    claim_wait_until(store, req, wait, never, None).await
}

/// [`claim_wait`] that also returns (empty-handed) once `stop` turns true, as on shutdown.
/// A claim already sent to the store always completes and its jobs are returned, so no job
/// is leased without being handed out. `poll` re-checks at least that often: a queue held
/// back by its flow limits frees slots and tokens without any wake-up.
pub async fn claim_wait_until(
    store: &dyn Store,
    req: ClaimRequest,
    wait: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
    poll: Option<Duration>,
) -> Result<Vec<ClaimedJob>> {
    let deadline = tokio::time::Instant::now() + wait;
    let notify = store.notifier().queue(&req.queue);
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let jobs = store.claim(req.clone()).await?;
        let now = tokio::time::Instant::now();
        if !jobs.is_empty() || now >= deadline || *stop.borrow() {
            return Ok(jobs);
        }
        let until = match (store.fallback_poll(), poll) {
            (Some(a), Some(b)) => deadline.min(now + a.min(b)),
            (Some(p), None) | (None, Some(p)) => deadline.min(now + p),
            (None, None) => deadline,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = &mut notified => {}
            _ = stop.changed() => return Ok(Vec::new()),
        }
    }
}
