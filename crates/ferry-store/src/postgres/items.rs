//! Work items as PostgreSQL statements. A write takes a transaction-scoped advisory lock per
//! id it creates and row locks on every item it names, both in id order (so overlapping batches
//! never deadlock, and a create racing its own repeat sees the committed row), loads the history
//! a stale compare needs, plans in memory and writes only once every op passed.

use super::{PgStore, RowExt, pg_err};
use crate::ItemFilter;
use crate::ItemStore;
use crate::effects::Effects;
use crate::item_rows::*;
use async_trait::async_trait;
use deadpool_postgres::{ClientWrapper as Client, Transaction};
use ferry_core::item::{
    self, HistoryEntry, Item, ItemOp, ItemPatch, ItemStatus, Loaded, NewItem, OpResult, Plan,
};
use ferry_core::{Limits, Result};
use tokio_postgres::Row;

fn row(r: &Row) -> Result<ItemRow> {
    Ok((
        r.col(0)?,
        r.col(1)?,
        r.col(2)?,
        r.col(3)?,
        r.col(4)?,
        r.col(5)?,
        r.col(6)?,
        r.col(7)?,
        r.col(8)?,
        r.col(9)?,
        r.col(10)?,
    ))
}

/// Plans `ops` against the locked rows and writes the plan (nothing when any op fails).
pub async fn apply(
    tx: &Transaction<'_>,
    now: i64,
    ops: &[ItemOp],
    batch: bool,
    limits: &Limits,
    fx: &mut Effects,
) -> Result<Vec<OpResult>> {
    let ids = sorted_ids(ops);
    let mut created: Vec<&str> =
        ops.iter().filter(|o| matches!(o, ItemOp::Create(_))).map(ItemOp::id).collect();
    created.sort_unstable();
    created.dedup();
    for id in created {
        tx.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", &[&id]).await.map_err(pg_err)?;
    }
    let found = tx
        .query(&format!("SELECT {ITEM_COLS} FROM items WHERE id = ANY($1) ORDER BY id FOR UPDATE"), &[&ids])
        .await
        .map_err(pg_err)?;
    let mut rows = Vec::with_capacity(found.len());
    for r in &found {
        let (item, origin) = item_from(row(r)?)?;
        rows.push(Loaded::new(item, origin));
    }
    for (id, after) in history_needed(ops, &rows) {
        let hist = tx
            .query(
                "SELECT version, paths FROM item_history WHERE item_id = $1 AND version > $2 ORDER BY version",
                &[&id, &after],
            )
            .await
            .map_err(pg_err)?;
        let mut entries = Vec::with_capacity(hist.len());
        for h in &hist {
            entries.push((h.col::<i64>(0)?, paths_from(&h.col::<String>(1)?)?));
        }
        let l = rows.iter_mut().find(|l| l.item.id == id).expect("needed history is of a loaded item");
        l.add_history(after, entries);
    }
    let plan = item::plan(ops, rows, now, limits, batch)?;
    write(tx, &plan, limits, fx).await?;
    Ok(plan.results)
}

async fn write(tx: &Transaction<'_>, plan: &Plan, limits: &Limits, fx: &mut Effects) -> Result<()> {
    for w in &plan.writes {
        let i = &w.item;
        let (artifacts, context) = json_cols(i);
        if w.insert {
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO items (id, title, description, status, assignee, artifacts, context, version,
                        created_at, updated_at, origin) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .await
                .map_err(pg_err)?,
                &[
                    &i.id,
                    &i.title,
                    &i.description,
                    &i.status.as_str(),
                    &i.assignee,
                    &artifacts,
                    &context,
                    &i.version,
                    &i.created_at.0,
                    &i.updated_at.0,
                    &w.origin,
                ],
            )
            .await
            .map_err(pg_err)?;
        } else {
            tx.execute(
                &tx.prepare_cached(
                    "UPDATE items SET title = $2, description = $3, status = $4, assignee = $5, artifacts = $6,
                        context = $7, version = $8, updated_at = $9 WHERE id = $1",
                )
                .await
                .map_err(pg_err)?,
                &[
                    &i.id,
                    &i.title,
                    &i.description,
                    &i.status.as_str(),
                    &i.assignee,
                    &artifacts,
                    &context,
                    &i.version,
                    &i.updated_at.0,
                ],
            )
            .await
            .map_err(pg_err)?;
        }
        for h in &w.history {
            let (paths, patch) = history_cols(h);
            tx.execute(
                &tx.prepare_cached(
                    "INSERT INTO item_history (item_id, version, at, agent, mode, paths, patch, reason)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .await
                .map_err(pg_err)?,
                &[&i.id, &h.version, &h.at.0, &h.agent, &h.mode, &paths, &patch, &h.reason],
            )
            .await
            .map_err(pg_err)?;
        }
        // At least the newest entry is kept (the item's version is its newest entry's).
        let keep_from = i.version - limits.max_item_history.max(1) as i64;
        if keep_from > 0 {
            tx.execute(
                &tx.prepare_cached("DELETE FROM item_history WHERE item_id = $1 AND version <= $2")
                    .await
                    .map_err(pg_err)?,
                &[&i.id, &keep_from],
            )
            .await
            .map_err(pg_err)?;
        }
        fx.wake(&item::wake_key(&i.id));
    }
    fx.events.extend(plan.events.iter().cloned());
    Ok(())
}

/// One item.
pub async fn get(c: &Client, id: &str) -> Result<Item> {
    let r = c
        .query_opt(&format!("SELECT {ITEM_COLS} FROM items WHERE id = $1"), &[&id])
        .await
        .map_err(pg_err)?
        .ok_or_else(|| item::item_not_found(id))?;
    Ok(item_from(row(&r)?)?.0)
}

/// Items by id after the cursor, filtered.
pub async fn list(c: &Client, f: &ItemFilter) -> Result<Vec<Item>> {
    let rows = c
        .query(
            &format!(
                "SELECT {ITEM_COLS} FROM items WHERE ($1::text IS NULL OR status = $1)
                 AND ($2::text IS NULL OR assignee = $2) AND ($3::text IS NULL OR id > $3) ORDER BY id LIMIT $4"
            ),
            &[&f.status.map(ItemStatus::as_str), &f.assignee, &f.after, &(f.limit as i64)],
        )
        .await
        .map_err(pg_err)?;
    rows.iter().map(|r| Ok(item_from(row(r)?)?.0)).collect()
}

/// Kept history, newest first, below `before`.
pub async fn history(c: &Client, id: &str, before: Option<i64>, limit: usize) -> Result<Vec<HistoryEntry>> {
    get(c, id).await?;
    let rows = c
        .query(
            &format!(
                "SELECT {HISTORY_COLS} FROM item_history WHERE item_id = $1 AND version < $2
                 ORDER BY version DESC LIMIT $3"
            ),
            &[&id, &before.unwrap_or(i64::MAX), &(limit as i64)],
        )
        .await
        .map_err(pg_err)?;
    rows.iter()
        .map(|r| history_from((r.col(0)?, r.col(1)?, r.col(2)?, r.col(3)?, r.col(4)?, r.col(5)?, r.col(6)?)))
        .collect()
}

/// Items per status, across the cluster.
pub async fn counts(c: &Client) -> Result<Vec<(ItemStatus, u64)>> {
    let rows = c.query("SELECT status, count(*) FROM items GROUP BY status", &[]).await.map_err(pg_err)?;
    rows.iter().map(|r| Ok((status_of(&r.col::<String>(0)?)?, r.col::<i64>(1)? as u64))).collect()
}

/// Violations of the item invariants.
pub async fn invariants(c: &Client) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (sql, what) in INVARIANTS {
        for r in c.query(sql, &[]).await.map_err(pg_err)? {
            out.push(format!("{what}: {}", r.col::<String>(0)?));
        }
    }
    Ok(out)
}

impl PgStore {
    async fn write_items(&self, op: &'static str, ops: Vec<ItemOp>, batch: bool) -> Result<Vec<OpResult>> {
        let limits = self.limits.clone();
        self.tx(op, move |tx, now, fx| boxed!(apply(tx, now, &ops, batch, &limits, fx).await)).await
    }
}

#[async_trait]
impl ItemStore for PgStore {
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
        self.read(move |c| boxed!(get(c, &id).await)).await
    }

    async fn list_items(&self, filter: ItemFilter) -> Result<Vec<Item>> {
        self.read(move |c| boxed!(list(c, &filter).await)).await
    }

    async fn item_history(&self, id: &str, before: Option<i64>, limit: usize) -> Result<Vec<HistoryEntry>> {
        let id = id.to_string();
        self.read(move |c| boxed!(history(c, &id, before, limit).await)).await
    }

    async fn item_counts(&self) -> Result<Vec<(ItemStatus, u64)>> {
        self.read(|c| boxed!(counts(c).await)).await
    }
}
