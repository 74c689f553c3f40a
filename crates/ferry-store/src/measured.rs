//! [`Measured`]: a store wrapped so that every writing call is timed and counted by operation
//! and outcome in the inner store's [`StoreMetrics`]. Backend-agnostic, so both backends are
//! measured the same way; reads pass straight through.

use crate::metrics::StoreMetrics;
use crate::{EventBus, Notifier, Store};
use async_trait::async_trait;
use ferry_core::schedule::Schedule;
use ferry_core::{
    ClaimRequest, ClaimedJob, Clock, CompleteItem, DeadSelector, EnqueueOutcome, ErrorCode, Event, FailItem,
    FailOutcome, HeartbeatOutcome, HostRecord, Job, JobFilter, JobState, NewJob, Page, QueueLimits,
    QueueStats, ReapOutcome, Result, TokenRecord, WorkerInfo,
};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// A store whose writes are measured.
pub struct Measured {
    inner: Arc<dyn Store>,
}

impl Measured {
    /// Wraps `inner`.
    pub fn wrap(inner: Arc<dyn Store>) -> Arc<dyn Store> {
        Arc::new(Measured { inner })
    }
}

macro_rules! timed {
    ($self:ident, $op:literal, $call:expr) => {{
        let started = Instant::now();
        let out = $call.await;
        $self.inner.metrics().write($op, started.elapsed(), out.as_ref().err());
        out
    }};
}

impl Measured {
    fn stale_items<T>(&self, items: &[Result<T>]) {
        let n = items.iter().filter(|r| r.as_ref().is_err_and(|e| e.code == ErrorCode::StaleLease)).count();
        self.inner.metrics().stale_leases.fetch_add(n as u64, Relaxed);
    }
}

#[async_trait]
impl Store for Measured {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn notifier(&self) -> &Arc<Notifier> {
        self.inner.notifier()
    }
    fn clock(&self) -> &Arc<dyn Clock> {
        self.inner.clock()
    }
    fn fallback_poll(&self) -> Option<Duration> {
        self.inner.fallback_poll()
    }
    fn metrics(&self) -> &Arc<StoreMetrics> {
        self.inner.metrics()
    }
    fn connections(&self) -> (usize, usize) {
        self.inner.connections()
    }
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<EnqueueOutcome>> {
        timed!(self, "enqueue", self.inner.enqueue(jobs))
    }
    async fn claim(&self, req: ClaimRequest) -> Result<Vec<ClaimedJob>> {
        timed!(self, "claim", self.inner.claim(req))
    }
    async fn heartbeat(&self, id: Uuid, lease: &str, extend_ms: Option<i64>) -> Result<HeartbeatOutcome> {
        timed!(self, "heartbeat", self.inner.heartbeat(id, lease, extend_ms))
    }
    async fn release(&self, id: Uuid, lease: &str) -> Result<JobState> {
        timed!(self, "release", self.inner.release(id, lease))
    }
    async fn complete(&self, items: Vec<CompleteItem>) -> Result<Vec<Result<()>>> {
        let out = timed!(self, "complete", self.inner.complete(items));
        if let Ok(items) = &out {
            self.stale_items(items);
        }
        out
    }
    async fn fail(&self, items: Vec<FailItem>) -> Result<Vec<Result<FailOutcome>>> {
        let out = timed!(self, "fail", self.inner.fail(items));
        if let Ok(items) = &out {
            self.stale_items(items);
        }
        out
    }
    async fn cancel(&self, id: Uuid, reason: &str) -> Result<JobState> {
        timed!(self, "cancel", self.inner.cancel(id, reason))
    }
    async fn get_job(&self, id: Uuid) -> Result<Job> {
        self.inner.get_job(id).await
    }
    async fn list_jobs(&self, filter: JobFilter, limit: usize, cursor: Option<String>) -> Result<Page<Job>> {
        self.inner.list_jobs(filter, limit, cursor).await
    }
    async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        self.inner.queue_stats().await
    }
    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        timed!(self, "set_paused", self.inner.set_paused(queue, paused))
    }
    async fn replay_dead(&self, selector: DeadSelector, max: usize) -> Result<Vec<Uuid>> {
        timed!(self, "replay_dead", self.inner.replay_dead(selector, max))
    }
    async fn purge_dead(&self, selector: DeadSelector, max: usize) -> Result<u64> {
        timed!(self, "purge_dead", self.inner.purge_dead(selector, max))
    }
    async fn reap_expired(&self, max: usize) -> Result<ReapOutcome> {
        timed!(self, "reap_expired", self.inner.reap_expired(max))
    }
    async fn promote_due(&self, max: usize) -> Result<u64> {
        timed!(self, "promote_due", self.inner.promote_due(max))
    }
    async fn next_due_ms(&self) -> Result<Option<i64>> {
        self.inner.next_due_ms().await
    }
    async fn prune_finished(&self, before_ms: i64, max: usize) -> Result<u64> {
        timed!(self, "prune_finished", self.inner.prune_finished(before_ms, max))
    }
    fn events(&self) -> &Arc<EventBus> {
        self.inner.events()
    }
    async fn read_events(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.inner.read_events(after, limit).await
    }
    async fn prune_events(&self, before_ms: i64, keep: u64, max: usize) -> Result<u64> {
        timed!(self, "prune_events", self.inner.prune_events(before_ms, keep, max))
    }
    async fn create_schedule(&self, s: Schedule) -> Result<Schedule> {
        timed!(self, "create_schedule", self.inner.create_schedule(s))
    }
    async fn update_schedule(&self, s: Schedule) -> Result<Schedule> {
        timed!(self, "update_schedule", self.inner.update_schedule(s))
    }
    async fn get_schedule(&self, name: &str) -> Result<Schedule> {
        self.inner.get_schedule(name).await
    }
    async fn list_schedules(&self) -> Result<Vec<Schedule>> {
        self.inner.list_schedules().await
    }
    async fn delete_schedule(&self, name: &str) -> Result<()> {
        timed!(self, "delete_schedule", self.inner.delete_schedule(name))
    }
    async fn fire_schedules(&self, max: usize) -> Result<u64> {
        timed!(self, "fire_schedules", self.inner.fire_schedules(max))
    }
    async fn next_schedule_ms(&self) -> Result<Option<i64>> {
        self.inner.next_schedule_ms().await
    }
    async fn storage_bytes(&self) -> Result<u64> {
        self.inner.storage_bytes().await
    }
    async fn set_queue_limits(&self, queue: &str, limits: QueueLimits) -> Result<()> {
        timed!(self, "set_queue_limits", self.inner.set_queue_limits(queue, limits))
    }
    async fn queue_limits(&self) -> Result<Vec<(String, QueueLimits)>> {
        self.inner.queue_limits().await
    }
    async fn create_token(&self, token: TokenRecord) -> Result<()> {
        timed!(self, "create_token", self.inner.create_token(token))
    }
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.inner.list_tokens().await
    }
    async fn revoke_token(&self, id: Uuid) -> Result<TokenRecord> {
        timed!(self, "revoke_token", self.inner.revoke_token(id))
    }
    async fn touch_workers(&self, seen: Vec<(String, i64)>) -> Result<()> {
        timed!(self, "touch_workers", self.inner.touch_workers(seen))
    }
    async fn list_workers(&self) -> Result<Vec<WorkerInfo>> {
        self.inner.list_workers().await
    }
    async fn release_lost_workers(&self, silent_before_ms: i64, max: usize) -> Result<Vec<String>> {
        timed!(self, "release_lost_workers", self.inner.release_lost_workers(silent_before_ms, max))
    }
    async fn create_host(&self, host: HostRecord) -> Result<()> {
        timed!(self, "create_host", self.inner.create_host(host))
    }
    async fn list_hosts(&self) -> Result<Vec<HostRecord>> {
        self.inner.list_hosts().await
    }
    async fn delete_host(&self, name: &str) -> Result<()> {
        timed!(self, "delete_host", self.inner.delete_host(name))
    }
    async fn check_invariants(&self) -> Result<Vec<String>> {
        self.inner.check_invariants().await
    }
    async fn close(&self) {
        self.inner.close().await
    }
}
