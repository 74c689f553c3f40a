//! The PostgreSQL backend's registered hosts: the
//! [`HostStore`](crate::HostStore) domain of the contract.

use super::{PgStore, access};
use crate::HostStore;
use async_trait::async_trait;
use ferry_core::{HostRecord, Result};

#[async_trait]
impl HostStore for PgStore {
    async fn create_host(&self, host: HostRecord) -> Result<()> {
        self.tx("create_host", move |tx, _, _| boxed!(access::create_host(tx, &host).await)).await
    }

    async fn list_hosts(&self) -> Result<Vec<HostRecord>> {
        self.read(|c| boxed!(access::list_hosts(c).await)).await
    }

    async fn delete_host(&self, name: &str) -> Result<()> {
        let name = name.to_string();
        self.tx("delete_host", move |tx, _, _| boxed!(access::delete_host(tx, &name).await)).await
    }
}
