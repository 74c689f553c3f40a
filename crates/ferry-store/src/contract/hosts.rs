//! The host domain of the storage contract: hosts registered for health probing.

use async_trait::async_trait;
use ferry_core::{HostRecord, Result};

/// Registered hosts.
#[async_trait]
pub trait HostStore: Send + Sync {
    /// Registers a host to probe; `conflict` if the name is taken.
    async fn create_host(&self, host: HostRecord) -> Result<()>;

    /// Every registered host, by name.
    async fn list_hosts(&self) -> Result<Vec<HostRecord>>;

    /// Forgets a host; `not_found` if absent.
    async fn delete_host(&self, name: &str) -> Result<()>;
}
