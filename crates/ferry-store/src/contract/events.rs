//! The event domain of the storage contract: the committed event log, read by cursor and
//! pruned by age and count. (Events are written by the other domains' transactions.)

use async_trait::async_trait;
use ferry_core::{Event, Result};

/// Which stored event batches a prune pass may delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPrune {
    /// Batches older than this (epoch ms) go.
    pub before_ms: i64,
    /// Batches lying entirely before the newest `keep` events go too.
    pub keep: u64,
    /// Most batches deleted by one pass.
    pub max: usize,
}

/// The event log.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Committed events after cursor `after`, oldest first, at most `limit`.
    async fn read_events(&self, after: u64, limit: usize) -> Result<Vec<Event>>;

    /// Deletes stored event batches as `prune` says; the newest batch always stays (it carries
    /// the cursor on).
    async fn prune_events(&self, prune: EventPrune) -> Result<u64>;
}
