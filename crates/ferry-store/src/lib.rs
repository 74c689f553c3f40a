//! ferry-store: durable storage for ferry behind one [`Store`] contract, the sum of one trait
//! per domain (`contract/`).
//!
//! Every backend (SQLite and PostgreSQL) implements every domain and passes the same
//! conformance suite (`tests/store/conformance`, one file per domain). Nothing backend-specific leaks above the
//! contract: the server, the maintenance loops and the long-poll claim only see `dyn Store`.

pub mod backup;
mod checkpoint_rows;
mod contract;
mod convoy_rows;
mod effects;
pub mod events;
mod item_rows;
mod ledger_rows;
pub mod maintenance;
pub mod memory_rows;
mod message_rows;
pub mod metrics;
pub mod migrate;
pub mod notify;
pub mod postgres;
mod rows;
pub mod sqlite;

use ferry_core::{ClaimRequest, ClaimedJob, Result};
use std::time::Duration;

pub use contract::{
    AccountFilter, AgentFilter, CheckpointFilter, CheckpointStore, CheckpointSweep, ConvoyStore, EventPrune,
    EventStore, HostStore, ItemFilter, ItemStore, JobStore, LedgerStore, LostWorker, MAX_SCAN, MessageStore,
    MessageSweep, PageKey, QueueLimitStore, QueueStore, ScheduleStore, Store, StoreCore, SweepOutcome,
    ThreadFilter, TokenStore, WorkerStore,
};
pub use contract::{
    CandidateQuery, CandidateSet, DerivedPass, EpisodeFilter, EpisodeList, MemoryStore, PassMode, PassOutcome,
};
pub use events::EventBus;
pub use ledger_rows::LedgerSettings;

/// Every domain trait, for code that calls a concrete store (`SqliteStore`, `PgStore`) rather
/// than `dyn Store`: `use ferry_store::prelude::*;`.
pub mod prelude {
    pub use crate::{
        CheckpointStore, ConvoyStore, EventStore, HostStore, ItemStore, JobStore, LedgerStore, MemoryStore,
        QueueLimitStore, QueueStore, ScheduleStore, Store, StoreCore, TokenStore, WorkerStore,
    };
}
pub use notify::Notifier;
pub use postgres::{PgConfig, PgStore};
pub use sqlite::{SqliteConfig, SqliteStore, Synchronous};

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
