//! The worker domain of the storage contract: the registry of workers heard from, and the
//! release of a silent worker's leases.

use async_trait::async_trait;
use ferry_core::{Result, WorkerInfo};

/// The worker registry.
#[async_trait]
pub trait WorkerStore: Send + Sync {
    /// Records that workers were heard from (name, epoch ms): registers new ones, moves
    /// `last_seen` forward, and marks them `active` again.
    async fn touch_workers(&self, seen: Vec<(String, i64)>) -> Result<()>;

    /// Every registered worker with its jobs in flight, by name.
    async fn list_workers(&self) -> Result<Vec<WorkerInfo>>;

    /// Marks `active` workers last seen before `silent_before_ms` as `lost` and releases
    /// their leases at once (each running job is handled as an expired lease would be, with
    /// the error kind `worker_lost`); returns the workers marked lost (at most `max`, by name)
    /// with the leases each held.
    async fn release_lost_workers(&self, silent_before_ms: i64, max: usize) -> Result<Vec<LostWorker>>;
}

/// A worker marked lost and the leases it held: only one that held some lost work, so only
/// that one is worth a warning (an idle worker going quiet is normal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LostWorker {
    /// Its name.
    pub name: String,
    /// Leases released with it.
    pub leases_released: u64,
}
