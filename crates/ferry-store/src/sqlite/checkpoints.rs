//! Run checkpoints as SQL over SQLite. Every write runs on the single writer: it checks (fence,
//! precondition, missing blobs) before its first statement, so a refusal never poisons the
//! group commit it shares.

use super::{SqliteStore, db_err};
use crate::checkpoint_rows::*;
use crate::effects::Effects;
use crate::{
    CheckpointFilter, CheckpointStore, CheckpointSweep, MAX_SCAN, PageKey, SweepOutcome, ThreadFilter,
};
use async_trait::async_trait;
use ferry_core::checkpoint::{
    self, Blob, Fence, NewCheckpoint, NewWrites, Node, PendingWrite, PutOutcome, Thread, ThreadPatch, Tuple,
    WritesOutcome,
};
use ferry_core::{Error, ErrorCode, Result};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use std::collections::HashSet;

fn checkpoint_row(r: &rusqlite::Row, body: bool) -> rusqlite::Result<CheckpointRow> {
    Ok(CheckpointRow {
        keys: (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?),
        texts: (r.get(4)?, r.get(5)?, r.get(6)?),
        sizes: (r.get(7)?, r.get(8)?),
        body: if body { Some((r.get(9)?, r.get(10)?)) } else { None },
    })
}

fn thread_row(r: &rusqlite::Row) -> rusqlite::Result<ThreadRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        [r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?],
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

/// Refuses a write whose lease is no longer the job's current one.
fn check_fence(conn: &Connection, now: i64, fence: &Option<Fence>) -> Result<()> {
    let Some(f) = fence else { return Ok(()) };
    let current: Option<i64> = conn
        .prepare_cached(
            "SELECT 1 FROM jobs WHERE seq = ?1 AND id = ?2 AND state = 'running' AND lease = ?3
                AND lease_expires_at > ?4",
        )
        .and_then(|mut s| {
            s.query_row(params![crate::rows::lease_seq(&f.lease), f.job_id, f.lease, now], |r| r.get(0))
                .optional()
        })
        .map_err(db_err)?;
    match current {
        Some(_) => Ok(()),
        None => Err(super::jobs::lease_failure(conn, f.job_id)?),
    }
}

fn load(conn: &Connection, thread: &str, ns: &str, id: Option<&str>) -> Result<Option<Tuple>> {
    let sql = match id {
        Some(_) => format!(
            "SELECT {CHECKPOINT_COLS} FROM checkpoints WHERE thread = ?1 AND ns = ?2 AND checkpoint_id = ?3"
        ),
        None => format!(
            "SELECT {CHECKPOINT_COLS} FROM checkpoints WHERE thread = ?1 AND ns = ?2 AND ?3 IS NULL
             ORDER BY checkpoint_id DESC LIMIT 1"
        ),
    };
    conn.prepare_cached(&sql)
        .and_then(|mut s| s.query_row(params![thread, ns, id], |r| checkpoint_row(r, true)).optional())
        .map_err(db_err)?
        .map(tuple_from)
        .transpose()
}

/// Adds a tuple's blobs (through its versions) and its pending writes in LangGraph's order.
fn complete(conn: &Connection, t: &mut Tuple) -> Result<()> {
    let mut blobs = Vec::with_capacity(t.channel_versions.len());
    let mut s = conn
        .prepare_cached(
            "SELECT type, data FROM checkpoint_blobs WHERE thread = ?1 AND ns = ?2 AND channel = ?3 AND version = ?4",
        )
        .map_err(db_err)?;
    for (channel, version) in &t.channel_versions {
        let found: Option<(String, Vec<u8>)> = s
            .query_row(params![t.thread, t.ns, channel, version], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(db_err)?;
        if let Some((type_, data)) = found {
            blobs.push(Blob { channel: channel.clone(), version: version.clone(), type_, data });
        }
    }
    let mut s = conn
        .prepare_cached(
            "SELECT task_id, channel, type, data, task_path, idx FROM checkpoint_writes
             WHERE thread = ?1 AND ns = ?2 AND checkpoint_id = ?3 ORDER BY task_path, task_id, idx",
        )
        .map_err(db_err)?;
    let rows = s
        .query_map(params![t.thread, t.ns, t.checkpoint_id], |r| {
            Ok(PendingWrite {
                task_id: r.get(0)?,
                channel: r.get(1)?,
                type_: r.get(2)?,
                data: r.get(3)?,
                task_path: r.get(4)?,
                idx: r.get(5)?,
            })
        })
        .map_err(db_err)?;
    t.pending_writes = Some(rows.collect::<rusqlite::Result<_>>().map_err(db_err)?);
    t.blobs = Some(blobs);
    Ok(())
}

fn blob_exists(conn: &Connection, thread: &str, ns: &str, channel: &str, version: &str) -> Result<bool> {
    conn.prepare_cached(
        "SELECT 1 FROM checkpoint_blobs WHERE thread = ?1 AND ns = ?2 AND channel = ?3 AND version = ?4",
    )
    .and_then(|mut s| s.query_row(params![thread, ns, channel, version], |_| Ok(())).optional())
    .map(|o| o.is_some())
    .map_err(db_err)
}

/// Creates the thread row if absent.
fn touch_thread(conn: &Connection, thread: &str, now: i64) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO threads (thread, metadata, checkpoints, blobs, writes, bytes, created_at, updated_at)
         VALUES (?1, '{}', 0, 0, 0, 0, ?2, ?2) ON CONFLICT (thread) DO NOTHING",
    )
    .and_then(|mut s| s.execute(params![thread, now]))
    .map_err(db_err)?;
    Ok(())
}

/// Moves a thread's counts by a write's deltas and marks it written.
fn bump_thread(
    conn: &Connection,
    thread: &str,
    now: i64,
    d: [i64; 4],
    job: Option<uuid::Uuid>,
) -> Result<()> {
    conn.prepare_cached(
        "UPDATE threads SET checkpoints = checkpoints + ?2, blobs = blobs + ?3, writes = writes + ?4,
            bytes = bytes + ?5, updated_at = ?6, last_job_id = coalesce(?7, last_job_id) WHERE thread = ?1",
    )
    .and_then(|mut s| s.execute(params![thread, d[0], d[1], d[2], d[3], now, job]))
    .map_err(db_err)?;
    Ok(())
}

/// Stores a checkpoint (see [`CheckpointStore::put_checkpoint`]).
pub fn put(conn: &Connection, now: i64, c: &NewCheckpoint, fx: &mut Effects) -> Result<PutOutcome> {
    check_fence(conn, now, &c.fence)?;
    let stored = load(conn, &c.thread, &c.ns, Some(&c.checkpoint_id))?;
    let mut out = match decide_put(stored.as_ref(), c)? {
        Decided::Duplicate(out) => return Ok(out),
        Decided::Write(out) => out,
    };
    let mut missing = Vec::new();
    for (channel, version) in c.unsent() {
        if !blob_exists(conn, &c.thread, &c.ns, &channel, &version)? {
            missing.push((channel, version));
        }
    }
    if !missing.is_empty() {
        return Err(checkpoint::missing_blobs(&missing));
    }
    // Decided: everything below writes.
    touch_thread(conn, &c.thread, now)?;
    let mut blob_bytes = 0;
    for b in &c.blobs {
        let n = conn
            .prepare_cached(
                "INSERT INTO checkpoint_blobs (thread, ns, channel, version, type, data) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![c.thread, c.ns, b.channel, b.version, b.type_, b.data]))
            .map_err(db_err)?;
        if n == 1 {
            out.blobs_written += 1;
            blob_bytes += b.data.len() as i64;
        }
    }
    out.blobs_shared = c.blobs.len() as u64 - out.blobs_written;
    conn.prepare_cached(
        "INSERT INTO checkpoints (thread, ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata,
            channel_versions, delta_channels, run_id, step, bytes, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (thread, ns, checkpoint_id) DO UPDATE SET parent_checkpoint_id = excluded.parent_checkpoint_id,
            type = excluded.type, checkpoint = excluded.checkpoint, metadata = excluded.metadata,
            channel_versions = excluded.channel_versions, delta_channels = excluded.delta_channels,
            run_id = excluded.run_id, step = excluded.step, bytes = excluded.bytes",
    )
    .and_then(|mut s| {
        s.execute(params![
            c.thread,
            c.ns,
            c.checkpoint_id,
            c.parent_checkpoint_id,
            c.checkpoint.type_,
            c.checkpoint.data,
            c.metadata,
            c.versions_text(),
            c.deltas_text(),
            c.run_id,
            c.step,
            c.own_bytes(),
            now
        ])
    })
    .map_err(db_err)?;
    out.replaced = stored.is_some();
    let (added, old_bytes) = stored.map_or((1, 0), |s| (0, s.bytes));
    let job = c.fence.as_ref().map(|f| f.job_id);
    bump_thread(
        conn,
        &c.thread,
        now,
        [added, out.blobs_written as i64, 0, blob_bytes + c.own_bytes() - old_bytes],
        job,
    )?;
    fx.events.push(c.event(now));
    Ok(out)
}

/// Stores pending writes (see [`CheckpointStore::put_checkpoint_writes`]).
pub fn put_writes(conn: &Connection, now: i64, w: &NewWrites) -> Result<WritesOutcome> {
    check_fence(conn, now, &w.fence)?;
    touch_thread(conn, &w.thread, now)?;
    let replaces = w.replaces();
    let (mut written, mut added, mut bytes) = (0u64, 0i64, 0i64);
    for row in &w.writes {
        let stored: Option<(String, String, Vec<u8>)> = conn
            .prepare_cached(
                "SELECT channel, type, data FROM checkpoint_writes
                 WHERE thread = ?1 AND ns = ?2 AND checkpoint_id = ?3 AND task_id = ?4 AND idx = ?5",
            )
            .and_then(|mut s| {
                s.query_row(params![w.thread, w.ns, w.checkpoint_id, w.task_id, row.idx], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })
                .optional()
            })
            .map_err(db_err)?;
        match stored {
            None => {
                conn.prepare_cached(
                    "INSERT INTO checkpoint_writes (thread, ns, checkpoint_id, task_id, idx, channel, type, data, task_path)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        w.thread,
                        w.ns,
                        w.checkpoint_id,
                        w.task_id,
                        row.idx,
                        row.channel,
                        row.value.type_,
                        row.value.data,
                        w.task_path
                    ])
                })
                .map_err(db_err)?;
                written += 1;
                added += 1;
                bytes += row.value.data.len() as i64;
            }
            Some((channel, type_, data))
                if replaces
                    && (channel != row.channel || type_ != row.value.type_ || data != row.value.data) =>
            {
                conn.prepare_cached(
                    "UPDATE checkpoint_writes SET channel = ?6, type = ?7, data = ?8
                     WHERE thread = ?1 AND ns = ?2 AND checkpoint_id = ?3 AND task_id = ?4 AND idx = ?5",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        w.thread,
                        w.ns,
                        w.checkpoint_id,
                        w.task_id,
                        row.idx,
                        row.channel,
                        row.value.type_,
                        row.value.data
                    ])
                })
                .map_err(db_err)?;
                written += 1;
                bytes += row.value.data.len() as i64 - data.len() as i64;
            }
            Some(_) => {}
        }
    }
    let job = w.fence.as_ref().map(|f| f.job_id);
    bump_thread(conn, &w.thread, now, [0, 0, added, bytes], job)?;
    Ok(WritesOutcome { written, duplicate: written == 0 })
}

/// One checkpoint, whole.
pub fn get(conn: &Connection, thread: &str, ns: &str, id: Option<&str>) -> Result<Option<Tuple>> {
    let Some(mut t) = load(conn, thread, ns, id)? else { return Ok(None) };
    complete(conn, &mut t)?;
    Ok(Some(t))
}

/// Checkpoints newest first (see [`CheckpointStore::list_checkpoints`]).
pub fn list(conn: &Connection, f: &CheckpointFilter) -> Result<(Vec<Tuple>, Option<PageKey>)> {
    let mut sql = format!("SELECT {CHECKPOINT_COLS} FROM checkpoints WHERE 1 = 1");
    let mut args: Vec<SqlValue> = Vec::new();
    let mut arg = |sql: &mut String, clause: &str, v: String| {
        args.push(SqlValue::Text(v));
        sql.push_str(&clause.replace('?', &format!("?{}", args.len())));
    };
    if let Some(t) = &f.thread {
        arg(&mut sql, " AND thread = ?", t.clone());
    }
    if let Some(ns) = &f.ns {
        arg(&mut sql, " AND ns = ?", ns.clone());
    }
    if let Some(b) = &f.before {
        arg(&mut sql, " AND checkpoint_id < ?", b.clone());
    }
    if let Some((id, thread, ns)) = &f.after {
        let n = args.len();
        args.extend([SqlValue::Text(id.clone()), SqlValue::Text(thread.clone()), SqlValue::Text(ns.clone())]);
        sql.push_str(&format!(" AND (checkpoint_id, thread, ns) < (?{}, ?{}, ?{})", n + 1, n + 2, n + 3));
    }
    sql.push_str(&format!(" ORDER BY checkpoint_id DESC, thread DESC, ns DESC LIMIT {}", MAX_SCAN));
    let mut s = conn.prepare(&sql).map_err(db_err)?;
    let mut rows = s.query(params_from_iter(args.iter())).map_err(db_err)?;
    let (mut out, mut scanned, mut bytes) = (Vec::new(), 0, 0);
    let mut last: Option<PageKey> = None;
    while let Some(r) = rows.next().map_err(db_err)? {
        scanned += 1;
        let mut t = tuple_from(checkpoint_row(r, f.full).map_err(db_err)?)?;
        last = Some((t.checkpoint_id.clone(), t.thread.clone(), t.ns.clone()));
        if f.metadata.as_ref().is_some_and(|m| !checkpoint::contains(&t.metadata, m)) {
            continue;
        }
        if f.full {
            complete(conn, &mut t)?;
            bytes += t.wire_bytes();
        }
        out.push(t);
        if out.len() >= f.limit || (f.full && bytes >= f.max_bytes) {
            return Ok((out, last));
        }
    }
    Ok((out, if scanned >= MAX_SCAN { last } else { None }))
}

/// One thread.
pub fn get_thread(conn: &Connection, thread: &str) -> Result<Option<Thread>> {
    conn.prepare_cached(&format!("SELECT {THREAD_COLS} FROM threads WHERE thread = ?1"))
        .and_then(|mut s| s.query_row([thread], thread_row).optional())
        .map_err(db_err)?
        .map(thread_from)
        .transpose()
}

/// Threads by id after the cursor.
pub fn list_threads(conn: &Connection, f: &ThreadFilter) -> Result<Vec<Thread>> {
    let mut s = conn
        .prepare_cached(&format!(
            "SELECT {THREAD_COLS} FROM threads WHERE (?1 IS NULL OR thread > ?1) AND (?2 IS NULL OR updated_at < ?2)
             ORDER BY thread LIMIT ?3"
        ))
        .map_err(db_err)?;
    let rows = s.query_map(params![f.after, f.updated_before, f.limit as i64], thread_row).map_err(db_err)?;
    rows.map(|r| r.map_err(db_err).and_then(thread_from)).collect()
}

/// Changes a thread's settings; `not_found` if absent.
pub fn patch_thread(conn: &Connection, p: &ThreadPatch) -> Result<Thread> {
    if get_thread(conn, &p.thread)?.is_none() {
        return Err(thread_not_found(&p.thread));
    }
    if let Some(m) = &p.metadata {
        conn.execute("UPDATE threads SET metadata = ?2 WHERE thread = ?1", params![p.thread, m])
            .map_err(db_err)?;
    }
    if let Some(t) = p.idle_ttl_ms {
        conn.execute("UPDATE threads SET idle_ttl_ms = ?2 WHERE thread = ?1", params![p.thread, t])
            .map_err(db_err)?;
    }
    if let Some(k) = p.keep_last {
        conn.execute(
            "UPDATE threads SET keep_last = ?2, pruned_at = NULL WHERE thread = ?1",
            params![p.thread, k],
        )
        .map_err(db_err)?;
    }
    get_thread(conn, &p.thread)?.ok_or_else(|| Error::internal("a patched thread is stored"))
}

/// Deletes a thread with all it holds; its checkpoints deleted.
pub fn delete_thread(
    conn: &Connection,
    now: i64,
    thread: &str,
    reason: &str,
    fx: &mut Effects,
) -> Result<u64> {
    let n: Option<i64> = conn
        .prepare_cached("SELECT checkpoints FROM threads WHERE thread = ?1")
        .and_then(|mut s| s.query_row([thread], |r| r.get(0)).optional())
        .map_err(db_err)?;
    let Some(n) = n else { return Ok(0) };
    for table in ["checkpoint_writes", "checkpoint_blobs", "checkpoints", "threads"] {
        conn.prepare_cached(&format!("DELETE FROM {table} WHERE thread = ?1"))
            .and_then(|mut s| s.execute([thread]))
            .map_err(db_err)?;
    }
    fx.events.push(checkpoint::thread_deleted(thread, n as u64, reason, now));
    Ok(n as u64)
}

/// Sets a thread's counts from its rows.
fn recount(conn: &Connection, thread: &str) -> Result<()> {
    conn.prepare_cached(
        "UPDATE threads SET
            checkpoints = (SELECT count(*) FROM checkpoints WHERE thread = ?1),
            blobs = (SELECT count(*) FROM checkpoint_blobs WHERE thread = ?1),
            writes = (SELECT count(*) FROM checkpoint_writes WHERE thread = ?1),
            bytes = (SELECT coalesce(sum(bytes), 0) FROM checkpoints WHERE thread = ?1)
                + (SELECT coalesce(sum(length(data)), 0) FROM checkpoint_blobs WHERE thread = ?1)
                + (SELECT coalesce(sum(length(data)), 0) FROM checkpoint_writes WHERE thread = ?1)
         WHERE thread = ?1",
    )
    .and_then(|mut s| s.execute([thread]))
    .map_err(db_err)?;
    Ok(())
}

/// Copies a thread (see [`CheckpointStore::copy_thread`]).
pub fn copy(conn: &Connection, now: i64, from: &str, to: &str) -> Result<u64> {
    let Some(src) = get_thread(conn, from)? else { return Err(thread_not_found(from)) };
    let taken: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM checkpoints WHERE thread = ?1 LIMIT 1")
        .and_then(|mut s| s.query_row([to], |r| r.get(0)).optional())
        .map_err(db_err)?;
    if taken.is_some() {
        return Err(Error::new(ErrorCode::Conflict, format!("thread {to:?} already holds checkpoints"))
            .with_details(serde_json::json!({"thread": to})));
    }
    touch_thread(conn, to, now)?;
    conn.execute(
        "UPDATE threads SET metadata = ?2, idle_ttl_ms = ?3, keep_last = ?4, updated_at = ?5 WHERE thread = ?1",
        params![to, serde_json::to_string(&src.metadata).expect("json"), src.idle_ttl_ms, src.keep_last, now],
    )
    .map_err(db_err)?;
    let copied = conn
        .execute(
            "INSERT INTO checkpoints (thread, ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata,
                channel_versions, delta_channels, run_id, step, bytes, created_at)
             SELECT ?2, ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata, channel_versions,
                delta_channels, run_id, step, bytes, created_at FROM checkpoints WHERE thread = ?1",
            params![from, to],
        )
        .map_err(db_err)?;
    conn.execute(
        "INSERT INTO checkpoint_blobs (thread, ns, channel, version, type, data)
         SELECT ?2, ns, channel, version, type, data FROM checkpoint_blobs WHERE thread = ?1 ON CONFLICT DO NOTHING",
        params![from, to],
    )
    .map_err(db_err)?;
    conn.execute(
        "INSERT INTO checkpoint_writes (thread, ns, checkpoint_id, task_id, idx, channel, type, data, task_path)
         SELECT ?2, ns, checkpoint_id, task_id, idx, channel, type, data, task_path FROM checkpoint_writes
         WHERE thread = ?1 ON CONFLICT DO NOTHING",
        params![from, to],
    )
    .map_err(db_err)?;
    recount(conn, to)?;
    Ok(copied as u64)
}

/// Deletes the blobs of `thread` no remaining checkpoint references.
fn collect_blobs(conn: &Connection, thread: &str) -> Result<()> {
    let mut s = conn
        .prepare_cached("SELECT ns, channel_versions FROM checkpoints WHERE thread = ?1")
        .map_err(db_err)?;
    let rows = s.query_map([thread], |r| Ok((r.get(0)?, r.get(1)?))).map_err(db_err)?;
    let kept = referenced(rows.collect::<rusqlite::Result<_>>().map_err(db_err)?)?;
    let mut s = conn
        .prepare_cached("SELECT ns, channel, version FROM checkpoint_blobs WHERE thread = ?1")
        .map_err(db_err)?;
    let rows = s.query_map([thread], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(db_err)?;
    let all: Vec<(String, String, String)> = rows.collect::<rusqlite::Result<_>>().map_err(db_err)?;
    for (ns, channel, version) in all.into_iter().filter(|k| !kept.contains(k)) {
        conn.prepare_cached(
            "DELETE FROM checkpoint_blobs WHERE thread = ?1 AND ns = ?2 AND channel = ?3 AND version = ?4",
        )
        .and_then(|mut s| s.execute(params![thread, ns, channel, version]))
        .map_err(db_err)?;
    }
    Ok(())
}

/// Deletes one checkpoint and its writes.
fn delete_checkpoint(conn: &Connection, thread: &str, ns: &str, id: &str) -> Result<()> {
    for table in ["checkpoint_writes", "checkpoints"] {
        conn.prepare_cached(&format!(
            "DELETE FROM {table} WHERE thread = ?1 AND ns = ?2 AND checkpoint_id = ?3"
        ))
        .and_then(|mut s| s.execute(params![thread, ns, id]))
        .map_err(db_err)?;
    }
    Ok(())
}

/// Keeps each namespace's newest `keep` checkpoints of `thread` (with their delta ancestors).
fn prune_one(conn: &Connection, now: i64, thread: &str, keep: usize) -> Result<u64> {
    assert!(keep >= 1);
    let mut s = conn
        .prepare_cached("SELECT ns, checkpoint_id, parent_checkpoint_id, delta_channels FROM checkpoints WHERE thread = ?1")
        .map_err(db_err)?;
    let rows = s
        .query_map([thread], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get::<_, String>(3)?)))
        .map_err(db_err)?;
    let mut nodes = Vec::new();
    for r in rows {
        let (ns, id, parent, deltas) = r.map_err(db_err)?;
        let delta_channels = serde_json::from_str(&deltas)
            .map_err(|e| Error::internal(format!("stored delta_channels: {e}")))?;
        nodes.push(Node { ns, id, parent, delta_channels });
    }
    let kept = checkpoint::keep_set(&nodes, keep);
    let mut deleted = 0;
    for n in nodes.iter().filter(|n| !kept.contains(&(n.ns.clone(), n.id.clone()))) {
        delete_checkpoint(conn, thread, &n.ns, &n.id)?;
        deleted += 1;
    }
    if deleted > 0 {
        let gone: HashSet<(&str, &str)> = nodes
            .iter()
            .filter(|n| !kept.contains(&(n.ns.clone(), n.id.clone())))
            .map(|n| (n.ns.as_str(), n.id.as_str()))
            .collect();
        for n in nodes.iter().filter(|n| kept.contains(&(n.ns.clone(), n.id.clone()))) {
            if n.parent.as_deref().is_some_and(|p| gone.contains(&(n.ns.as_str(), p))) {
                conn.execute(
                    "UPDATE checkpoints SET parent_checkpoint_id = NULL WHERE thread = ?1 AND ns = ?2 AND checkpoint_id = ?3",
                    params![thread, n.ns, n.id],
                )
                .map_err(db_err)?;
            }
        }
        collect_blobs(conn, thread)?;
        recount(conn, thread)?;
    }
    conn.execute("UPDATE threads SET pruned_at = ?2 WHERE thread = ?1", params![thread, now])
        .map_err(db_err)?;
    Ok(deleted)
}

/// Prunes threads (see [`CheckpointStore::prune_threads`]).
pub fn prune(conn: &Connection, now: i64, threads: &[String], keep: usize, fx: &mut Effects) -> Result<u64> {
    let mut deleted = 0;
    for t in threads {
        deleted += if keep == 0 {
            delete_thread(conn, now, t, "request", fx)?
        } else {
            prune_one(conn, now, t, keep)?
        };
    }
    Ok(deleted)
}

/// Deletes checkpoints by run (see [`CheckpointStore::delete_checkpoint_runs`]).
pub fn delete_runs(conn: &Connection, run_ids: &[String]) -> Result<u64> {
    let mut s = conn
        .prepare_cached("SELECT thread, ns, checkpoint_id FROM checkpoints WHERE run_id = ?1")
        .map_err(db_err)?;
    let mut found: Vec<(String, String, String)> = Vec::new();
    for run in run_ids {
        let rows = s.query_map([run], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(db_err)?;
        found.extend(rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)?);
    }
    let mut threads: Vec<&str> = Vec::new();
    for (thread, ns, id) in &found {
        delete_checkpoint(conn, thread, ns, id)?;
        threads.push(thread);
    }
    threads.sort_unstable();
    threads.dedup();
    for t in threads {
        collect_blobs(conn, t)?;
        recount(conn, t)?;
    }
    Ok(found.len() as u64)
}

/// One retention pass in one transaction: at most `batch` idle threads, then at most `batch`
/// threads over their `keep_last`.
pub fn sweep(conn: &Connection, now: i64, sw: &CheckpointSweep, fx: &mut Effects) -> Result<SweepOutcome> {
    let mut out = SweepOutcome::default();
    let idle: Vec<String> = {
        let mut s = conn
            .prepare_cached(
                "SELECT thread FROM threads t WHERE coalesce(idle_ttl_ms, ?2) > 0 AND updated_at + coalesce(idle_ttl_ms, ?2) <= ?1
                    AND (last_job_id IS NULL OR NOT EXISTS
                        (SELECT 1 FROM jobs j WHERE j.id = t.last_job_id AND j.state = 'running'))
                 ORDER BY updated_at LIMIT ?3",
            )
            .map_err(db_err)?;
        let rows =
            s.query_map(params![now, sw.idle_ttl_ms, sw.batch as i64], |r| r.get(0)).map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)?
    };
    for t in &idle {
        delete_thread(conn, now, t, "idle_ttl", fx)?;
        out.threads_expired += 1;
    }
    let over: Vec<(String, i64)> = {
        let mut s = conn
            .prepare_cached(
                "SELECT thread, coalesce(keep_last, ?2) FROM threads t WHERE coalesce(keep_last, ?2) > 0
                    AND checkpoints > coalesce(keep_last, ?2) AND updated_at <= ?1 - ?3
                    AND (pruned_at IS NULL OR pruned_at < updated_at)
                    AND (last_job_id IS NULL OR NOT EXISTS
                        (SELECT 1 FROM jobs j WHERE j.id = t.last_job_id AND j.state = 'running'))
                 LIMIT ?4",
            )
            .map_err(db_err)?;
        let rows = s
            .query_map(params![now, sw.keep_last, sw.grace_ms, sw.batch as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)?
    };
    for (t, keep) in &over {
        out.checkpoints_pruned += prune_one(conn, now, t, *keep as usize)?;
    }
    Ok(out)
}

/// Violations of the checkpoint invariants.
pub fn invariants(conn: &Connection) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (sql, what) in INVARIANTS {
        let mut s = conn.prepare(sql).map_err(db_err)?;
        let ids = s.query_map([], |r| r.get::<_, String>(0)).map_err(db_err)?;
        for id in ids {
            out.push(format!("{what}: {}", id.map_err(db_err)?));
        }
    }
    let mut s = conn
        .prepare("SELECT thread, ns, checkpoint_id, channel_versions FROM checkpoints")
        .map_err(db_err)?;
    let rows = s
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get(3)?))
        })
        .map_err(db_err)?;
    for r in rows {
        let (thread, ns, id, versions) = r.map_err(db_err)?;
        for (_, channel, version) in referenced(vec![(ns.clone(), versions)])? {
            if !blob_exists(conn, &thread, &ns, &channel, &version)? {
                out.push(format!(
                    "checkpoint {thread}/{ns}/{id} references a missing blob {channel}@{version}"
                ));
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl CheckpointStore for SqliteStore {
    async fn put_checkpoint(&self, c: NewCheckpoint) -> Result<PutOutcome> {
        self.write("checkpoint.put", move |conn, now, fx| put(conn, now, &c, fx)).await
    }

    async fn put_checkpoint_writes(&self, w: NewWrites) -> Result<WritesOutcome> {
        self.write("checkpoint.put_writes", move |conn, now, _| put_writes(conn, now, &w)).await
    }

    async fn get_checkpoint(&self, thread: &str, ns: &str, id: Option<&str>) -> Result<Option<Tuple>> {
        let (thread, ns, id) = (thread.to_string(), ns.to_string(), id.map(str::to_string));
        self.readers.read(move |c| get(c, &thread, &ns, id.as_deref())).await
    }

    async fn list_checkpoints(&self, filter: CheckpointFilter) -> Result<(Vec<Tuple>, Option<PageKey>)> {
        self.readers.read(move |c| list(c, &filter)).await
    }

    async fn get_thread(&self, thread: &str) -> Result<Option<Thread>> {
        let thread = thread.to_string();
        self.readers.read(move |c| get_thread(c, &thread)).await
    }

    async fn list_threads(&self, filter: ThreadFilter) -> Result<Vec<Thread>> {
        self.readers.read(move |c| list_threads(c, &filter)).await
    }

    async fn patch_thread(&self, patch: ThreadPatch) -> Result<Thread> {
        self.write("checkpoint.patch_thread", move |conn, _, _| patch_thread(conn, &patch)).await
    }

    async fn delete_thread(&self, thread: &str) -> Result<u64> {
        let thread = thread.to_string();
        self.write("checkpoint.delete_thread", move |conn, now, fx| {
            delete_thread(conn, now, &thread, "request", fx)
        })
        .await
    }

    async fn copy_thread(&self, from: &str, to: &str) -> Result<u64> {
        let (from, to) = (from.to_string(), to.to_string());
        self.write("checkpoint.copy", move |conn, now, _| copy(conn, now, &from, &to)).await
    }

    async fn prune_threads(&self, threads: Vec<String>, keep: usize) -> Result<u64> {
        self.write("checkpoint.prune", move |conn, now, fx| prune(conn, now, &threads, keep, fx)).await
    }

    async fn delete_checkpoint_runs(&self, run_ids: Vec<String>) -> Result<u64> {
        self.write("checkpoint.delete_runs", move |conn, _, _| delete_runs(conn, &run_ids)).await
    }

    async fn sweep_checkpoints(&self, sw: CheckpointSweep) -> Result<SweepOutcome> {
        self.write("checkpoint.sweep", move |conn, now, fx| sweep(conn, now, &sw, fx)).await
    }
}
