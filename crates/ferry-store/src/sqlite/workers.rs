//! The SQLite backend's the worker registry: the
//! [`WorkerStore`](crate::WorkerStore) domain of the contract.

use super::{SqliteStore, access};
use crate::{LostWorker, WorkerStore};
use async_trait::async_trait;
use ferry_core::{Result, WorkerInfo};

#[async_trait]
impl WorkerStore for SqliteStore {
    async fn touch_workers(&self, seen: Vec<(String, i64)>) -> Result<()> {
        self.write_raw("touch_workers", move |c, _| access::touch_workers(c, seen)).await
    }

    async fn list_workers(&self) -> Result<Vec<WorkerInfo>> {
        self.readers.read(access::list_workers).await
    }

    async fn release_lost_workers(&self, silent_before_ms: i64, max: usize) -> Result<Vec<LostWorker>> {
        let limits = self.limits.clone();
        self.write("release_lost_workers", move |c, now, fx| {
            access::release_lost_workers(c, now, silent_before_ms, max, &limits, fx)
        })
        .await
    }
}
