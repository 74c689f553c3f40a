//! The PostgreSQL backend's queues (counts and the pause switch): the
//! [`QueueStore`](crate::QueueStore) domain of the contract.

use super::{PgStore, jobs};
use crate::QueueStore;
use async_trait::async_trait;
use ferry_core::{QueueStats, Result};

#[async_trait]
impl QueueStore for PgStore {
    async fn queue_stats(&self) -> Result<Vec<QueueStats>> {
        let now = self.clock.now_ms();
        self.read(move |c| boxed!(jobs::stats(c, now).await)).await
    }

    async fn set_paused(&self, queue: &str, paused: bool) -> Result<()> {
        let queue = queue.to_string();
        self.tx("set_paused", move |tx, now, w| boxed!(jobs::set_paused(tx, now, &queue, paused, w).await))
            .await
    }
}
