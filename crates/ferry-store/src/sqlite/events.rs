//! The SQLite backend's the event log: the
//! [`EventStore`](crate::EventStore) domain of the contract.

use super::{SqliteStore, jobs};
use crate::{EventPrune, EventStore};
use async_trait::async_trait;
use ferry_core::{Event, Result};

#[async_trait]
impl EventStore for SqliteStore {
    async fn read_events(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.log_readers.read(move |c| jobs::read_events(c, after, limit)).await
    }

    async fn prune_events(&self, prune: EventPrune) -> Result<u64> {
        let EventPrune { before_ms, keep, max } = prune;
        self.write_raw("prune_events", move |c, _| jobs::prune_events(c, before_ms, keep, max)).await
    }
}
