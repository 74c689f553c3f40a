//! The storage contract: one trait per domain, and [`Store`], their sum. Every backend
//! implements each domain in that domain's file (`sqlite/<domain>.rs`, `postgres/<domain>.rs`)
//! and passes the conformance suite's file for it (`tests/store/conformance/<domain>.rs`).
//!
//! Rules every implementation keeps:
//! - each call is atomic: a batch enqueue inserts all jobs or none;
//! - `complete`, `fail` and `heartbeat` change a job only when it is `running`, its lease
//!   token matches and the lease has not expired; otherwise they answer `stale_lease`;
//! - background passes (`reap_expired`, `promote_due`, `prune_finished`) are safe to run
//!   concurrently from several nodes, and the reaper never overwrites a finished job;
//! - wake-ups go to [`StoreCore::notifier`] only after the change is durable;
//! - every writing call is timed and counted by its `op` name in [`StoreCore::metrics`], by
//!   the backend's write and transaction primitives.

mod checkpoints;
mod convoys;
mod events;
mod hosts;
mod items;
mod jobs;
mod ledger;
mod limits;
mod memory;
mod messages;
mod queues;
mod schedules;
mod tokens;
mod workers;

pub use checkpoints::{
    CheckpointFilter, CheckpointStore, CheckpointSweep, MAX_SCAN, PageKey, SweepOutcome, ThreadFilter,
};
pub use convoys::ConvoyStore;
pub use events::{EventPrune, EventStore};
pub use hosts::HostStore;
pub use items::{ItemFilter, ItemStore};
pub use jobs::JobStore;
pub use ledger::{AccountFilter, LedgerStore};
pub use limits::QueueLimitStore;
pub use memory::{
    CandidateQuery, CandidateSet, DerivedPass, EpisodeFilter, EpisodeList, MemoryStore, PassMode, PassOutcome,
};
pub use messages::{AgentFilter, MessageStore, MessageSweep};
pub use queues::QueueStore;
pub use schedules::ScheduleStore;
pub use tokens::TokenStore;
pub use workers::{LostWorker, WorkerStore};

use crate::metrics::StoreMetrics;
use crate::{EventBus, Notifier};
use async_trait::async_trait;
use ferry_core::{Clock, Result};
use std::sync::Arc;
use std::time::Duration;

/// What every backend has whatever the domain: its name, clock, wake-ups, event bus,
/// connections, size, self-check and shutdown.
#[async_trait]
pub trait StoreCore: Send + Sync + 'static {
    /// Short backend name for logs and metrics (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;

    /// Wakes long-polling claimers; backends signal it after each commit.
    fn notifier(&self) -> &Arc<Notifier>;

    /// The clock every timestamp of this store comes from.
    fn clock(&self) -> &Arc<dyn Clock>;

    /// What this store measured about itself, writes by operation included.
    fn metrics(&self) -> &Arc<StoreMetrics>;

    /// Database connections in use and the most there can be.
    fn connections(&self) -> (usize, usize);

    /// How often a long-poll should re-check even without a wake-up; `None` when wake-ups
    /// cannot be lost (one process), some interval when they can (several nodes).
    fn fallback_poll(&self) -> Option<Duration> {
        None
    }

    /// The bus this node's subscribers hear committed events on (events of every node, with
    /// PostgreSQL).
    fn events(&self) -> &Arc<EventBus>;

    /// Bytes the database occupies (file and WAL, or ferry's tables with their indexes), so
    /// operators and the soak benchmark can see whether it grows.
    async fn storage_bytes(&self) -> Result<u64>;

    /// Writes a consistent copy of the whole database beside it, online (writes go on), and
    /// returns its path; the caller owns the file. Only a file database can: PostgreSQL is
    /// backed up with its own tools, so the default refuses.
    async fn backup(&self) -> Result<std::path::PathBuf> {
        Err(ferry_core::Error::new(
            ferry_core::ErrorCode::InvalidState,
            format!(
                "online backup through the API is for SQLite; back up {} with its own tools (pg_dump, \
                 or the provider's snapshots and point-in-time recovery)",
                self.backend()
            ),
        ))
    }

    /// Checks storage integrity and ferry's invariants; returns every violation found.
    async fn check_invariants(&self) -> Result<Vec<String>>;

    /// Flushes pending writes and stops accepting new ones.
    async fn close(&self);
}

/// Declares [`Store`] as the sum of the domain traits, and implements it for every type that
/// implements them all (one list, so the two cannot differ).
macro_rules! store_is_the_sum_of {
    ($($domain:ident),+) => {
        /// The whole storage contract: every domain's trait. The server, the maintenance loops
        /// and the long-poll claim see only `dyn Store`; nothing backend-specific leaks above it.
        pub trait Store: StoreCore $(+ $domain)+ {}

        impl<T: StoreCore $(+ $domain)+> Store for T {}
    };
}

store_is_the_sum_of!(
    JobStore,
    QueueStore,
    QueueLimitStore,
    ScheduleStore,
    EventStore,
    TokenStore,
    WorkerStore,
    HostStore,
    ItemStore,
    MessageStore,
    ConvoyStore,
    LedgerStore,
    CheckpointStore,
    MemoryStore
);
