//! The SQLite backend's queues (counts and the pause switch): the
//! [`QueueStore`](crate::QueueStore) domain of the contract.

use super::{SqliteStore, jobs};
use crate::QueueStore;
use async_trait::async_trait;
use ferry_core::{QueueStats, Result};

#[async_trait]
impl QueueStore for SqliteStore {
    async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        let now = self.clock.now_ms();
        let counts = self.counts.snapshot();
        self.readers.read(move |c| jobs::stats(c, now, &counts)).await
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        let queue = queue.to_string();
        self.write("set_paused", move |c, now, fx| jobs::set_paused(c, now, &queue, paused, fx)).await
    }
}
