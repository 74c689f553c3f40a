//! The PostgreSQL backend's queue flow limits: the
//! [`QueueLimitStore`](crate::QueueLimitStore) domain of the contract.

use super::{PgStore, access};
use crate::QueueLimitStore;
use async_trait::async_trait;
use ferry_core::{QueueLimits, Result};

#[async_trait]
impl QueueLimitStore for PgStore {
    async fn set_queue_limits(&self, queue: &str, limits: QueueLimits) -> Result<()> {
        let queue = queue.to_string();
        self.tx("set_queue_limits", move |tx, now, w| {
            boxed!(access::set_limits(tx, now, &queue, &limits, w).await)
        })
        .await
    }

    async fn queue_limits(&self) -> Result<Vec<(String, QueueLimits)>> {
        self.read(|c| boxed!(access::limits(c).await)).await
    }
}
