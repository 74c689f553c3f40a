//! The queue domain of the storage contract: a queue's counts and its pause switch.

use async_trait::async_trait;
use ferry_core::{QueueStats, Result};

/// Queues: what they hold and whether they hand out jobs.
#[async_trait]
pub trait QueueStore: Send + Sync {
    /// Counts by state, oldest ready age and pause flag for every known queue.
    async fn queue_stats(&self) -> Result<Vec<QueueStats>>;

    /// Pauses or resumes a queue; resuming wakes its claimers.
    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()>;
}
