//! The job domain of the storage contract: the lifecycle of a job from enqueue to its end,
//! the dead-letter queue, and the background passes that move jobs on time.

use async_trait::async_trait;
use ferry_core::{
    ClaimRequest, ClaimedJob, CompleteItem, DeadSelector, EnqueueOutcome, FailItem, FailOutcome,
    HeartbeatOutcome, HeartbeatRequest, Job, JobFilter, JobState, NewJob, Page, PageRequest, ReapOutcome,
    Replayed, Result,
};
use uuid::Uuid;

/// Jobs: enqueue, lease, finish, cancel, read, and the passes over them.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Inserts jobs all-or-nothing; duplicates by `unique_key` return the existing id.
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<EnqueueOutcome>>;

    /// Leases up to `max` ready jobs of one queue, best first; empty when paused, fewer
    /// (possibly none, never an error) when the queue's flow limits allow fewer.
    async fn claim(&self, req: ClaimRequest) -> Result<Vec<ClaimedJob>>;

    /// Extends leases by `extend_ms` (default: each job's `lease_ms`) from now, in one
    /// transaction; each item succeeds or fails on its own (`stale_lease`, `not_found`).
    async fn heartbeat(&self, items: Vec<HeartbeatRequest>) -> Result<Vec<Result<HeartbeatOutcome>>>;

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
    async fn list_jobs(&self, filter: JobFilter, page: PageRequest) -> Result<Page<Job>>;

    /// Returns up to `max` dead jobs to `ready` with attempts reset and history kept; a paid
    /// job holds its payment again (`job:<id>:hold:<n>`) or, refused, stays dead.
    async fn replay_dead(&self, selector: DeadSelector, max: usize) -> Result<Replayed>;

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
}
