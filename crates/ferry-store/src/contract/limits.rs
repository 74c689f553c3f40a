//! The queue-limit domain of the storage contract: flow limits every node's claims honour.

use async_trait::async_trait;
use ferry_core::{QueueLimits, Result};

/// Per-queue flow limits (most running, start rate, depth).
#[async_trait]
pub trait QueueLimitStore: Send + Sync {
    /// Replaces a queue's flow limits (an empty value clears them); creates the queue row if
    /// needed. Claims honour `max_running` and `max_starts_per_sec` across every node; a
    /// negative or non-finite rate is refused (422).
    async fn set_queue_limits(&self, queue: &str, limits: QueueLimits) -> Result<()>;

    /// Every queue that has a limit set, by name.
    async fn queue_limits(&self) -> Result<Vec<(String, QueueLimits)>>;
}
