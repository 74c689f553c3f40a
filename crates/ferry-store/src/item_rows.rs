//! What both backends share about work-item rows: the column lists, the decoding of a row,
//! the encodings of JSON columns, which loaded items need their history read before a batch
//! is planned, and the invariants to check.

use ferry_core::item::{Artifact, HistoryEntry, Item, ItemOp, ItemStatus, Loaded};
use ferry_core::{Error, Result, Timestamp};
use serde_json::{Map, Value};

/// Columns of `items`, in [`ItemRow`]'s order.
pub const ITEM_COLS: &str =
    "id, title, description, status, assignee, artifacts, context, version, created_at, updated_at, origin";

/// One `items` row as read.
pub type ItemRow = (String, String, String, String, Option<String>, String, String, i64, i64, i64, String);

/// Columns of `item_history`, in [`HistoryRow`]'s order (after `item_id`).
pub const HISTORY_COLS: &str = "version, at, agent, mode, paths, patch, reason";

/// One `item_history` row as read.
pub type HistoryRow = (i64, i64, Option<String>, String, String, String, Option<String>);

fn corrupt(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("stored item is corrupt: {e}"))
}

/// A stored status name.
pub fn status_of(text: &str) -> Result<ItemStatus> {
    ItemStatus::parse(text).ok_or_else(|| corrupt(format!("unknown status {text:?}")))
}

/// Decodes a row into the item and its create digest.
pub fn item_from(r: ItemRow) -> Result<(Item, String)> {
    let (
        id,
        title,
        description,
        status,
        assignee,
        artifacts,
        context,
        version,
        created_at,
        updated_at,
        origin,
    ) = r;
    let artifacts: Vec<Artifact> = serde_json::from_str(&artifacts).map_err(corrupt)?;
    let context: Map<String, Value> = serde_json::from_str(&context).map_err(corrupt)?;
    let item = Item {
        id,
        title,
        description,
        status: status_of(&status)?,
        assignee,
        artifacts,
        context,
        version,
        created_at: Timestamp(created_at),
        updated_at: Timestamp(updated_at),
    };
    Ok((item, origin))
}

/// The JSON columns of an item: (artifacts, context).
pub fn json_cols(item: &Item) -> (String, String) {
    (
        serde_json::to_string(&item.artifacts).expect("artifacts serialize"),
        serde_json::to_string(&item.context).expect("context serializes"),
    )
}

/// Decodes a history row.
pub fn history_from(r: HistoryRow) -> Result<HistoryEntry> {
    let (version, at, agent, mode, paths, patch, reason) = r;
    Ok(HistoryEntry {
        version,
        at: Timestamp(at),
        agent,
        mode,
        paths: serde_json::from_str(&paths).map_err(corrupt)?,
        patch: serde_json::from_str(&patch).map_err(corrupt)?,
        reason,
    })
}

/// The JSON columns of a history entry: (paths, patch).
pub fn history_cols(h: &HistoryEntry) -> (String, String) {
    (serde_json::to_string(&h.paths).expect("paths serialize"), h.patch.to_string())
}

/// Decodes the stored paths of one version.
pub fn paths_from(text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(corrupt)
}

/// The distinct ids `ops` name, sorted: the order rows are locked in (so overlapping batches
/// never wait on each other in a cycle).
pub fn sorted_ids(ops: &[ItemOp]) -> Vec<String> {
    let mut ids: Vec<String> = ops.iter().map(|o| o.id().to_string()).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// For each loaded item some op compares against an older version of: the oldest such version
/// (history after it must be read before planning).
pub fn history_needed(ops: &[ItemOp], rows: &[Loaded]) -> Vec<(String, i64)> {
    let mut out: Vec<(String, i64)> = Vec::new();
    for op in ops {
        let Some(e) = op.expected_version() else { continue };
        let Some(l) = rows.iter().find(|l| l.item.id == op.id()) else { continue };
        if e >= l.item.version {
            continue;
        }
        match out.iter_mut().find(|(id, _)| id == op.id()) {
            Some((_, min)) => *min = (*min).min(e),
            None => out.push((op.id().to_string(), e)),
        }
    }
    out
}

/// The item invariants as (SQL over both backends returning offending ids, what they break).
pub const INVARIANTS: [(&str, &str); 2] = [
    (
        "SELECT i.id FROM items i
         WHERE i.version <> coalesce((SELECT max(h.version) FROM item_history h WHERE h.item_id = i.id), -1)
         LIMIT 10",
        "item version is not its newest history entry",
    ),
    (
        "SELECT id FROM items WHERE status = 'in_progress' AND assignee IS NULL LIMIT 10",
        "in_progress item without an assignee",
    ),
];
