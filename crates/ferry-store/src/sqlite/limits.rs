//! The SQLite backend's queue flow limits: the
//! [`QueueLimitStore`](crate::QueueLimitStore) domain of the contract.

use super::{SqliteStore, access};
use crate::QueueLimitStore;
use async_trait::async_trait;
use ferry_core::{QueueLimits, Result};

#[async_trait]
impl QueueLimitStore for SqliteStore {
    async fn set_queue_limits(&self, queue: &str, limits: QueueLimits) -> Result<()> {
        let queue = queue.to_string();
        self.write("set_queue_limits", move |c, now, fx| access::set_limits(c, now, &queue, &limits, fx))
            .await
    }

    async fn queue_limits(&self) -> Result<Vec<(String, QueueLimits)>> {
        self.readers.read(access::limits).await
    }
}
