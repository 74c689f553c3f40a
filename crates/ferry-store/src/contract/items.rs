//! The work-item domain of the storage contract: items changed by compare-and-set, with their
//! kept history.

use async_trait::async_trait;
use ferry_core::Result;
use ferry_core::item::{HistoryEntry, Item, ItemOp, ItemPatch, ItemStatus, NewItem, OpResult};

/// Which items a list returns.
#[derive(Debug, Clone, Default)]
pub struct ItemFilter {
    /// Only this status.
    pub status: Option<ItemStatus>,
    /// Only this assignee.
    pub assignee: Option<String>,
    /// Ids after this one (the page cursor).
    pub after: Option<String>,
    /// Page size.
    pub limit: usize,
}

/// Work items: every write is planned by `ferry_core::item::plan` against the rows it
/// names, so both backends refuse and merge alike; a refused op writes nothing.
#[async_trait]
pub trait ItemStore: Send + Sync {
    /// Creates an item, or answers the duplicate of an identical create (409 `conflict` when
    /// the id holds other content).
    async fn create_item(&self, item: NewItem) -> Result<OpResult>;

    /// One compare-and-set write; `changed: false` when it changed nothing.
    async fn patch_item(&self, patch: ItemPatch) -> Result<OpResult>;

    /// Applies `ops` in order in one transaction: all or nothing, the first failing op's
    /// error (field `ops[i]`) answering for the batch.
    async fn batch_items(&self, ops: Vec<ItemOp>) -> Result<Vec<OpResult>>;

    /// One item; `not_found` if absent.
    async fn get_item(&self, id: &str) -> Result<Item>;

    /// Items by id, filtered.
    async fn list_items(&self, filter: ItemFilter) -> Result<Vec<Item>>;

    /// Kept history of an item, newest first, versions below `before` (all when `None`);
    /// `not_found` if the item is absent.
    async fn item_history(&self, id: &str, before: Option<i64>, limit: usize) -> Result<Vec<HistoryEntry>>;

    /// Items per status, across the cluster.
    async fn item_counts(&self) -> Result<Vec<(ItemStatus, u64)>>;
}
