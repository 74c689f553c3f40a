//! The PostgreSQL backend's the worker registry: the
//! [`WorkerStore`](crate::WorkerStore) domain of the contract.

use super::{PgStore, access};
use crate::{LostWorker, WorkerStore};
use async_trait::async_trait;
use ferry_core::{Result, WorkerInfo};

#[async_trait]
impl WorkerStore for PgStore {
    async fn touch_workers(&self, seen: Vec<(String, i64)>) -> Result<()> {
        self.tx("touch_workers", move |tx, _, _| boxed!(access::touch_workers(tx, seen).await)).await
    }

    async fn list_workers(&self) -> Result<Vec<WorkerInfo>> {
        self.read(|c| boxed!(access::list_workers(c).await)).await
    }

    async fn release_lost_workers(&self, silent_before_ms: i64, max: usize) -> Result<Vec<LostWorker>> {
        let limits = self.limits.clone();
        self.tx("release_lost_workers", move |tx, now, w| {
            boxed!(access::release_lost_workers(tx, now, silent_before_ms, max, &limits, w).await)
        })
        .await
    }
}
