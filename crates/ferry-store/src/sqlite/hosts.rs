//! The SQLite backend's registered hosts: the
//! [`HostStore`](crate::HostStore) domain of the contract.

use super::{SqliteStore, access};
use crate::HostStore;
use async_trait::async_trait;
use ferry_core::{HostRecord, Result};

#[async_trait]
impl HostStore for SqliteStore {
    async fn create_host(&self, host: HostRecord) -> Result<()> {
        self.write_raw("create_host", move |c, _| access::create_host(c, &host)).await
    }

    async fn list_hosts(&self) -> Result<Vec<HostRecord>> {
        self.readers.read(access::list_hosts).await
    }

    async fn delete_host(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.write_raw("delete_host", move |c, _| access::delete_host(c, &name)).await
    }
}
