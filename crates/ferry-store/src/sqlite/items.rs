//! Work items as SQL over SQLite. A write loads the rows its ops name (and the history a stale
//! compare needs), plans every op in memory, and writes only once all passed: a conflict is
//! an answer, never a poisoned group commit.

use super::{SqliteStore, db_err};
use crate::ItemFilter;
use crate::ItemStore;
use crate::effects::Effects;
use crate::item_rows::*;
use async_trait::async_trait;
use ferry_core::item::{
    self, HistoryEntry, Item, ItemOp, ItemPatch, ItemStatus, Loaded, NewItem, OpResult, Plan,
};
use ferry_core::{Limits, Result};
use rusqlite::{Connection, OptionalExtension, params};

fn row(r: &rusqlite::Row) -> rusqlite::Result<ItemRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

fn load(conn: &Connection, id: &str) -> Result<Option<(Item, String)>> {
    conn.prepare_cached(&format!("SELECT {ITEM_COLS} FROM items WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id], row).optional())
        .map_err(db_err)?
        .map(item_from)
        .transpose()
}

fn paths_after(conn: &Connection, id: &str, after: i64) -> Result<Vec<(i64, Vec<String>)>> {
    let mut s = conn
        .prepare_cached(
            "SELECT version, paths FROM item_history WHERE item_id = ?1 AND version > ?2 ORDER BY version",
        )
        .map_err(db_err)?;
    let rows = s
        .query_map(params![id, after], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .map_err(db_err)?;
    let mut out = Vec::new();
    for r in rows {
        let (v, p) = r.map_err(db_err)?;
        out.push((v, paths_from(&p)?));
    }
    Ok(out)
}

/// Plans `ops` against the stored rows and writes the plan (nothing when any op fails).
pub fn apply(
    conn: &Connection,
    now: i64,
    ops: &[ItemOp],
    batch: bool,
    limits: &Limits,
    fx: &mut Effects,
) -> Result<Vec<OpResult>> {
    let mut rows = Vec::new();
    for id in sorted_ids(ops) {
        if let Some((item, origin)) = load(conn, &id)? {
            rows.push(Loaded::new(item, origin));
        }
    }
    for (id, after) in history_needed(ops, &rows) {
        let entries = paths_after(conn, &id, after)?;
        let l = rows.iter_mut().find(|l| l.item.id == id).expect("needed history is of a loaded item");
        l.add_history(after, entries);
    }
    let plan = item::plan(ops, rows, now, limits, batch)?;
    write(conn, &plan, limits, fx)?;
    Ok(plan.results)
}

fn write(conn: &Connection, plan: &Plan, limits: &Limits, fx: &mut Effects) -> Result<()> {
    for w in &plan.writes {
        let i = &w.item;
        let (artifacts, context) = json_cols(i);
        let (id, status) = (&i.id, i.status.as_str());
        let written = if w.insert {
            conn.prepare_cached(
                "INSERT INTO items (id, title, description, status, assignee, artifacts, context, version,
                    created_at, updated_at, origin) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    i.title,
                    i.description,
                    status,
                    i.assignee,
                    artifacts,
                    context,
                    i.version,
                    i.created_at.0,
                    i.updated_at.0,
                    w.origin
                ])
            })
        } else {
            conn.prepare_cached(
                "UPDATE items SET title = ?2, description = ?3, status = ?4, assignee = ?5, artifacts = ?6,
                    context = ?7, version = ?8, updated_at = ?9 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id,
                    i.title,
                    i.description,
                    status,
                    i.assignee,
                    artifacts,
                    context,
                    i.version,
                    i.updated_at.0
                ])
            })
        };
        written.map_err(db_err)?;
        for h in &w.history {
            let (paths, patch) = history_cols(h);
            conn.prepare_cached(
                "INSERT INTO item_history (item_id, version, at, agent, mode, paths, patch, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .and_then(|mut s| {
                s.execute(params![i.id, h.version, h.at.0, h.agent, h.mode, paths, patch, h.reason])
            })
            .map_err(db_err)?;
        }
        // At least the newest entry is kept (the item's version is its newest entry's).
        let keep_from = i.version - limits.max_item_history.max(1) as i64;
        if keep_from > 0 {
            conn.prepare_cached("DELETE FROM item_history WHERE item_id = ?1 AND version <= ?2")
                .and_then(|mut s| s.execute(params![i.id, keep_from]))
                .map_err(db_err)?;
        }
        fx.wake(&item::wake_key(&i.id));
    }
    fx.events.extend(plan.events.iter().cloned());
    Ok(())
}

/// One item.
pub fn get(conn: &Connection, id: &str) -> Result<Item> {
    load(conn, id)?.map(|(i, _)| i).ok_or_else(|| item::item_not_found(id))
}

/// Items by id after the cursor, filtered.
pub fn list(conn: &Connection, f: &ItemFilter) -> Result<Vec<Item>> {
    let mut s = conn
        .prepare_cached(&format!(
            "SELECT {ITEM_COLS} FROM items WHERE (?1 IS NULL OR status = ?1) AND (?2 IS NULL OR assignee = ?2)
             AND (?3 IS NULL OR id > ?3) ORDER BY id LIMIT ?4"
        ))
        .map_err(db_err)?;
    let rows = s
        .query_map(params![f.status.map(ItemStatus::as_str), f.assignee, f.after, f.limit as i64], row)
        .map_err(db_err)?;
    rows.map(|r| r.map_err(db_err).and_then(item_from).map(|(i, _)| i)).collect()
}

/// Kept history, newest first, below `before`.
pub fn history(conn: &Connection, id: &str, before: Option<i64>, limit: usize) -> Result<Vec<HistoryEntry>> {
    get(conn, id)?;
    let mut s = conn
        .prepare_cached(&format!(
            "SELECT {HISTORY_COLS} FROM item_history WHERE item_id = ?1 AND version < ?2 ORDER BY version DESC LIMIT ?3"
        ))
        .map_err(db_err)?;
    let rows = s
        .query_map(params![id, before.unwrap_or(i64::MAX), limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
        })
        .map_err(db_err)?;
    rows.map(|r| r.map_err(db_err).and_then(history_from)).collect()
}

/// Items per status.
pub fn counts(conn: &Connection) -> Result<Vec<(ItemStatus, u64)>> {
    let mut s = conn.prepare_cached("SELECT status, count(*) FROM items GROUP BY status").map_err(db_err)?;
    let rows = s.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).map_err(db_err)?;
    rows.map(|r| {
        let (s, n) = r.map_err(db_err)?;
        Ok((status_of(&s)?, n as u64))
    })
    .collect()
}

/// Violations of the item invariants.
pub fn invariants(conn: &Connection) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (sql, what) in INVARIANTS {
        let mut s = conn.prepare(sql).map_err(db_err)?;
        let ids = s.query_map([], |r| r.get::<_, String>(0)).map_err(db_err)?;
        for id in ids {
            out.push(format!("{what}: {}", id.map_err(db_err)?));
        }
    }
    Ok(out)
}

impl SqliteStore {
    async fn write_items(&self, op: &'static str, ops: Vec<ItemOp>, batch: bool) -> Result<Vec<OpResult>> {
        let limits = self.limits.clone();
        self.write(op, move |c, now, fx| apply(c, now, &ops, batch, &limits, fx)).await
    }
}

#[async_trait]
impl ItemStore for SqliteStore {
    async fn create_item(&self, item: NewItem) -> Result<OpResult> {
        let mut out = self.write_items("create_item", vec![ItemOp::Create(item)], false).await?;
        Ok(out.remove(0))
    }

    async fn patch_item(&self, patch: ItemPatch) -> Result<OpResult> {
        let mut out = self.write_items("patch_item", vec![ItemOp::Patch(patch)], false).await?;
        Ok(out.remove(0))
    }

    async fn batch_items(&self, ops: Vec<ItemOp>) -> Result<Vec<OpResult>> {
        self.write_items("batch_items", ops, true).await
    }

    async fn get_item(&self, id: &str) -> Result<Item> {
        let id = id.to_string();
        self.readers.read(move |c| get(c, &id)).await
    }

    async fn list_items(&self, filter: ItemFilter) -> Result<Vec<Item>> {
        self.readers.read(move |c| list(c, &filter)).await
    }

    async fn item_history(&self, id: &str, before: Option<i64>, limit: usize) -> Result<Vec<HistoryEntry>> {
        let id = id.to_string();
        self.readers.read(move |c| history(c, &id, before, limit)).await
    }

    async fn item_counts(&self) -> Result<Vec<(ItemStatus, u64)>> {
        self.readers.read(counts).await
    }
}
