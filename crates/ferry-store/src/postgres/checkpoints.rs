//! Run checkpoints as PostgreSQL statements. Every write to a thread first locks its row
//! (created if absent), so writers of one thread take turns while other threads' writers run
//! in parallel; checks then see a settled thread, and a refusal rolls back its transaction.

use super::{PgStore, RowExt, pg_err};
use crate::checkpoint_rows::*;
use crate::effects::Effects;
use crate::{
    CheckpointFilter, CheckpointStore, CheckpointSweep, MAX_SCAN, PageKey, SweepOutcome, ThreadFilter,
};
use async_trait::async_trait;
use deadpool_postgres::{ClientWrapper as Client, Transaction};
use ferry_core::checkpoint::{
    self, Blob, Fence, NewCheckpoint, NewWrites, Node, PendingWrite, PutOutcome, Thread, ThreadPatch, Tuple,
    WritesOutcome,
};
use ferry_core::{Error, ErrorCode, Result};
use std::collections::HashSet;
use std::sync::LazyLock;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient as _, Row, Statement};

fn checkpoint_row(r: &Row, body: bool) -> Result<CheckpointRow> {
    Ok(CheckpointRow {
        keys: (r.col(0)?, r.col(1)?, r.col(2)?, r.col(3)?),
        texts: (r.col(4)?, r.col(5)?, r.col(6)?),
        sizes: (r.col(7)?, r.col(8)?),
        body: if body { Some((r.col(9)?, r.col(10)?)) } else { None },
    })
}

fn thread_row(r: &Row) -> Result<ThreadRow> {
    Ok((
        r.col(0)?,
        r.col(1)?,
        r.col(2)?,
        r.col(3)?,
        [r.col(4)?, r.col(5)?, r.col(6)?, r.col(7)?],
        r.col(8)?,
        r.col(9)?,
        r.col(10)?,
    ))
}

/// A pooled client or a transaction: runs statements prepared once per connection (deadpool's
/// statement cache), so a hot statement costs one round trip, not a Parse and an Execute.
trait Conn: Sync {
    /// The tokio-postgres handle that runs the statements.
    type Raw: tokio_postgres::GenericClient + Sync;
    fn raw(&self) -> &Self::Raw;
    fn prep(&self, sql: &str) -> impl Future<Output = Result<Statement>> + Send;
}

impl Conn for Client {
    type Raw = tokio_postgres::Client;
    fn raw(&self) -> &tokio_postgres::Client {
        self
    }
    async fn prep(&self, sql: &str) -> Result<Statement> {
        self.prepare_cached(sql).await.map_err(pg_err)
    }
}

impl<'a> Conn for Transaction<'a> {
    type Raw = tokio_postgres::Transaction<'a>;
    fn raw(&self) -> &tokio_postgres::Transaction<'a> {
        self
    }
    async fn prep(&self, sql: &str) -> Result<Statement> {
        self.prepare_cached(sql).await.map_err(pg_err)
    }
}

/// The opening of every write to a thread, as one pipeline: create-or-lock the thread's row,
/// check the fence (when the write carries one), then `next` (the caller's first statement,
/// prepared and not yet polled). All three go out before any answer is awaited; the server
/// runs them in that order, so `next` runs with the thread's row locked.
async fn locked<T>(
    tx: &Transaction<'_>,
    thread: &str,
    now: i64,
    fence: &Option<Fence>,
    next: impl Future<Output = std::result::Result<T, tokio_postgres::Error>>,
) -> Result<T> {
    let lock = tx
        .prep(
            "INSERT INTO threads (thread, metadata, checkpoints, blobs, writes, bytes, created_at, updated_at)
             VALUES ($1, '{}', 0, 0, 0, 0, $2, $2) ON CONFLICT (thread) DO UPDATE SET updated_at = threads.updated_at",
        )
        .await?;
    let fenced = match fence {
        Some(f) => {
            let stmt = tx
                .prep(
                    "SELECT 1 FROM jobs WHERE seq = $1 AND id = $2 AND state = 'running' AND lease = $3
                        AND lease_expires_at > $4 FOR SHARE",
                )
                .await?;
            Some((stmt, f, crate::rows::lease_seq(&f.lease)))
        }
        None => None,
    };
    let fence_check = async {
        match &fenced {
            Some((stmt, f, seq)) => {
                tx.query_opt(stmt, &[seq, &f.job_id, &f.lease, &now]).await.map(|r| r.is_some())
            }
            None => Ok(true),
        }
    };
    let lock_args: [&(dyn ToSql + Sync); 2] = [&thread, &now];
    let (_, current, out) =
        tokio::try_join!(tx.execute(&lock, &lock_args), fence_check, next).map_err(pg_err)?;
    match fence {
        Some(f) if !current => Err(super::jobs::lease_failure(tx, f.job_id).await?),
        _ => Ok(out),
    }
}

async fn bump_thread(
    tx: &Transaction<'_>,
    thread: &str,
    now: i64,
    d: [i64; 4],
    job: Option<uuid::Uuid>,
) -> Result<()> {
    let stmt = tx
        .prep(
            "UPDATE threads SET checkpoints = checkpoints + $2, blobs = blobs + $3, writes = writes + $4,
                bytes = bytes + $5, updated_at = $6, last_job_id = coalesce($7, last_job_id) WHERE thread = $1",
        )
        .await?;
    tx.execute(&stmt, &[&thread, &d[0], &d[1], &d[2], &d[3], &now, &job]).await.map_err(pg_err)?;
    Ok(())
}

/// One checkpoint row by `(thread, ns, checkpoint_id)`.
static SELECT_BY_ID: LazyLock<String> = LazyLock::new(|| {
    format!("SELECT {CHECKPOINT_COLS} FROM checkpoints WHERE thread = $1 AND ns = $2 AND checkpoint_id = $3")
});

/// A namespace's newest checkpoint row.
static SELECT_LATEST: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {CHECKPOINT_COLS} FROM checkpoints WHERE thread = $1 AND ns = $2 ORDER BY checkpoint_id DESC LIMIT 1"
    )
});

async fn load<C: Conn>(c: &C, thread: &str, ns: &str, id: Option<&str>) -> Result<Option<Tuple>> {
    let row = match id {
        Some(id) => {
            let stmt = c.prep(&SELECT_BY_ID).await?;
            c.raw().query_opt(&stmt, &[&thread, &ns, &id]).await.map_err(pg_err)?
        }
        None => {
            let stmt = c.prep(&SELECT_LATEST).await?;
            c.raw().query_opt(&stmt, &[&thread, &ns]).await.map_err(pg_err)?
        }
    };
    row.map(|r| checkpoint_row(&r, true).and_then(tuple_from)).transpose()
}

async fn complete<C: Conn>(c: &C, t: &mut Tuple) -> Result<()> {
    let (channels, versions): (Vec<&str>, Vec<&str>) =
        t.channel_versions.iter().map(|(c, v)| (c.as_str(), v.as_str())).unzip();
    let blobs_stmt = c
        .prep(
            "SELECT b.channel, b.version, b.type, b.data FROM checkpoint_blobs b
             JOIN unnest($3::text[], $4::text[]) AS v(channel, version)
               ON b.channel = v.channel AND b.version = v.version
             WHERE b.thread = $1 AND b.ns = $2 ORDER BY b.channel",
        )
        .await?;
    let writes_stmt = c
        .prep(
            "SELECT task_id, channel, type, data, task_path, idx FROM checkpoint_writes
             WHERE thread = $1 AND ns = $2 AND checkpoint_id = $3 ORDER BY task_path, task_id, idx",
        )
        .await?;
    // One pipeline: both reads go out before either answer is awaited.
    let blobs_args: [&(dyn ToSql + Sync); 4] = [&t.thread, &t.ns, &channels, &versions];
    let writes_args: [&(dyn ToSql + Sync); 3] = [&t.thread, &t.ns, &t.checkpoint_id];
    let (rows, write_rows) =
        tokio::try_join!(c.raw().query(&blobs_stmt, &blobs_args), c.raw().query(&writes_stmt, &writes_args))
            .map_err(pg_err)?;
    let mut blobs = Vec::with_capacity(rows.len());
    for r in &rows {
        blobs.push(Blob { channel: r.col(0)?, version: r.col(1)?, type_: r.col(2)?, data: r.col(3)? });
    }
    let mut writes = Vec::with_capacity(write_rows.len());
    for r in &write_rows {
        writes.push(PendingWrite {
            task_id: r.col(0)?,
            channel: r.col(1)?,
            type_: r.col(2)?,
            data: r.col(3)?,
            task_path: r.col(4)?,
            idx: r.col(5)?,
        });
    }
    t.blobs = Some(blobs);
    t.pending_writes = Some(writes);
    Ok(())
}

/// Stores a checkpoint (see [`CheckpointStore::put_checkpoint`]): three round trips (the
/// thread lock with the stored row's read, then the blobs, the thread's counters and the
/// checkpoint row together), each statement prepared once per connection.
pub async fn put(tx: &Transaction<'_>, now: i64, c: &NewCheckpoint, fx: &mut Effects) -> Result<PutOutcome> {
    let read = tx.prep(&SELECT_BY_ID).await?;
    let row =
        locked(tx, &c.thread, now, &c.fence, tx.query_opt(&read, &[&c.thread, &c.ns, &c.checkpoint_id]))
            .await?;
    let stored = row.map(|r| checkpoint_row(&r, true).and_then(tuple_from)).transpose()?;
    let mut out = match decide_put(stored.as_ref(), c)? {
        Decided::Duplicate(out) => return Ok(out),
        Decided::Write(out) => out,
    };
    let unsent = c.unsent();
    let (unsent_channels, unsent_versions): (Vec<&str>, Vec<&str>) =
        unsent.iter().map(|(c, v)| (c.as_str(), v.as_str())).unzip();
    let missing_stmt = tx
        .prep(
            "SELECT v.channel, v.version FROM unnest($3::text[], $4::text[]) AS v(channel, version)
             WHERE NOT EXISTS (SELECT 1 FROM checkpoint_blobs b WHERE b.thread = $1 AND b.ns = $2
                AND b.channel = v.channel AND b.version = v.version)",
        )
        .await?;
    // The sent blobs (first write wins) and the thread's counters in one statement: the rows
    // the insert returns are the blobs it stored.
    let blobs_stmt = tx
        .prep(
            "WITH b AS (
                INSERT INTO checkpoint_blobs (thread, ns, channel, version, type, data)
                SELECT $1, $2, v.channel, v.version, v.type, v.data
                FROM unnest($3::text[], $4::text[], $5::text[], $6::bytea[]) AS v(channel, version, type, data)
                ON CONFLICT DO NOTHING RETURNING octet_length(data)::bigint AS n),
             s AS (SELECT count(*)::bigint AS k, coalesce(sum(n), 0)::bigint AS bytes FROM b)
             UPDATE threads SET checkpoints = threads.checkpoints + $7, blobs = threads.blobs + s.k,
                bytes = threads.bytes + s.bytes + $8, updated_at = $9, last_job_id = coalesce($10, threads.last_job_id)
             FROM s WHERE threads.thread = $1 RETURNING s.k",
        )
        .await?;
    let row_stmt = tx
        .prep(
            "INSERT INTO checkpoints (thread, ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata,
                channel_versions, delta_channels, run_id, step, bytes, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (thread, ns, checkpoint_id) DO UPDATE SET parent_checkpoint_id = EXCLUDED.parent_checkpoint_id,
                type = EXCLUDED.type, checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata,
                channel_versions = EXCLUDED.channel_versions, delta_channels = EXCLUDED.delta_channels,
                run_id = EXCLUDED.run_id, step = EXCLUDED.step, bytes = EXCLUDED.bytes",
        )
        .await?;
    let channels: Vec<&str> = c.blobs.iter().map(|b| b.channel.as_str()).collect();
    let versions: Vec<&str> = c.blobs.iter().map(|b| b.version.as_str()).collect();
    let types: Vec<&str> = c.blobs.iter().map(|b| b.type_.as_str()).collect();
    let datas: Vec<&[u8]> = c.blobs.iter().map(|b| b.data.as_slice()).collect();
    let (added, old_bytes) = stored.as_ref().map_or((1i64, 0), |s| (0, s.bytes));
    let (versions_text, deltas_text, own_bytes) = (c.versions_text(), c.deltas_text(), c.own_bytes());
    let own_delta = own_bytes - old_bytes;
    let job = c.fence.as_ref().map(|f| f.job_id);
    let missing_check = async {
        if unsent.is_empty() {
            return Ok(Vec::new());
        }
        tx.query(&missing_stmt, &[&c.thread, &c.ns, &unsent_channels, &unsent_versions]).await
    };
    let blobs_args: [&(dyn ToSql + Sync); 10] =
        [&c.thread, &c.ns, &channels, &versions, &types, &datas, &added, &own_delta, &now, &job];
    let row_args: [&(dyn ToSql + Sync); 13] = [
        &c.thread,
        &c.ns,
        &c.checkpoint_id,
        &c.parent_checkpoint_id,
        &c.checkpoint.type_,
        &c.checkpoint.data,
        &c.metadata,
        &versions_text,
        &deltas_text,
        &c.run_id,
        &c.step,
        &own_bytes,
        &now,
    ];
    // One pipeline; a refusal (a missing blob) rolls the other two back with the transaction.
    let (missing, counted, _) = tokio::try_join!(
        missing_check,
        tx.query_one(&blobs_stmt, &blobs_args),
        tx.execute(&row_stmt, &row_args),
    )
    .map_err(pg_err)?;
    if !missing.is_empty() {
        let mut pairs = Vec::with_capacity(missing.len());
        for r in &missing {
            pairs.push((r.col::<String>(0)?, r.col::<String>(1)?));
        }
        pairs.sort();
        return Err(checkpoint::missing_blobs(&pairs));
    }
    out.blobs_written = counted.col::<i64>(0)? as u64;
    out.blobs_shared = c.blobs.len() as u64 - out.blobs_written;
    out.replaced = stored.is_some();
    fx.events.push(c.event(now));
    Ok(out)
}

/// Stores pending writes (see [`CheckpointStore::put_checkpoint_writes`]). Regular writes are
/// kept once (the first wins), in one statement pipelined behind the thread's lock; writes to
/// special channels replace a differing stored one, row by row.
pub async fn put_writes(tx: &Transaction<'_>, now: i64, w: &NewWrites) -> Result<WritesOutcome> {
    let job = w.fence.as_ref().map(|f| f.job_id);
    if !w.replaces() {
        let stmt = tx
            .prep(
                "WITH w AS (
                    INSERT INTO checkpoint_writes (thread, ns, checkpoint_id, task_id, idx, channel, type, data, task_path)
                    SELECT $1, $2, $3, $4, v.idx, v.channel, v.type, v.data, $5
                    FROM unnest($6::bigint[], $7::text[], $8::text[], $9::bytea[]) AS v(idx, channel, type, data)
                    ON CONFLICT DO NOTHING RETURNING octet_length(data)::bigint AS n),
                 s AS (SELECT count(*)::bigint AS k, coalesce(sum(n), 0)::bigint AS bytes FROM w)
                 UPDATE threads SET writes = threads.writes + s.k, bytes = threads.bytes + s.bytes, updated_at = $10,
                    last_job_id = coalesce($11, threads.last_job_id)
                 FROM s WHERE threads.thread = $1 RETURNING s.k",
            )
            .await?;
        let idxs: Vec<i64> = w.writes.iter().map(|r| r.idx).collect();
        let channels: Vec<&str> = w.writes.iter().map(|r| r.channel.as_str()).collect();
        let types: Vec<&str> = w.writes.iter().map(|r| r.value.type_.as_str()).collect();
        let datas: Vec<&[u8]> = w.writes.iter().map(|r| r.value.data.as_slice()).collect();
        let args: [&(dyn ToSql + Sync); 11] = [
            &w.thread,
            &w.ns,
            &w.checkpoint_id,
            &w.task_id,
            &w.task_path,
            &idxs,
            &channels,
            &types,
            &datas,
            &now,
            &job,
        ];
        let row = locked(tx, &w.thread, now, &w.fence, tx.query_one(&stmt, &args)).await?;
        let written = row.col::<i64>(0)? as u64;
        return Ok(WritesOutcome { written, duplicate: written == 0 });
    }
    locked(tx, &w.thread, now, &w.fence, async { Ok(()) }).await?;
    let read = tx
        .prep(
            "SELECT channel, type, data FROM checkpoint_writes
             WHERE thread = $1 AND ns = $2 AND checkpoint_id = $3 AND task_id = $4 AND idx = $5",
        )
        .await?;
    let insert = tx
        .prep(
            "INSERT INTO checkpoint_writes (thread, ns, checkpoint_id, task_id, idx, channel, type, data, task_path)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .await?;
    let update = tx
        .prep(
            "UPDATE checkpoint_writes SET channel = $6, type = $7, data = $8
             WHERE thread = $1 AND ns = $2 AND checkpoint_id = $3 AND task_id = $4 AND idx = $5",
        )
        .await?;
    let (mut written, mut added, mut bytes) = (0u64, 0i64, 0i64);
    for row in &w.writes {
        // The insert's parameters; the update takes the first eight (all but `task_path`).
        let args: [&(dyn ToSql + Sync); 9] = [
            &w.thread,
            &w.ns,
            &w.checkpoint_id,
            &w.task_id,
            &row.idx,
            &row.channel,
            &row.value.type_,
            &row.value.data,
            &w.task_path,
        ];
        let stored = tx.query_opt(&read, &args[..5]).await.map_err(pg_err)?;
        match stored {
            None => {
                tx.execute(&insert, &args).await.map_err(pg_err)?;
                written += 1;
                added += 1;
                bytes += row.value.data.len() as i64;
            }
            Some(r) => {
                let (channel, type_, data): (String, String, Vec<u8>) = (r.col(0)?, r.col(1)?, r.col(2)?);
                if channel != row.channel || type_ != row.value.type_ || data != row.value.data {
                    tx.execute(&update, &args[..8]).await.map_err(pg_err)?;
                    written += 1;
                    bytes += row.value.data.len() as i64 - data.len() as i64;
                }
            }
        }
    }
    bump_thread(tx, &w.thread, now, [0, 0, added, bytes], job).await?;
    Ok(WritesOutcome { written, duplicate: written == 0 })
}

/// Checkpoints newest first (see [`CheckpointStore::list_checkpoints`]).
pub async fn list(c: &Client, f: &CheckpointFilter) -> Result<(Vec<Tuple>, Option<PageKey>)> {
    let mut sql = format!("SELECT {CHECKPOINT_COLS} FROM checkpoints WHERE true");
    let mut args: Vec<&(dyn ToSql + Sync)> = Vec::new();
    if let Some(t) = &f.thread {
        args.push(t);
        sql.push_str(&format!(" AND thread = ${}", args.len()));
    }
    if let Some(ns) = &f.ns {
        args.push(ns);
        sql.push_str(&format!(" AND ns = ${}", args.len()));
    }
    if let Some(b) = &f.before {
        args.push(b);
        sql.push_str(&format!(" AND checkpoint_id < ${}", args.len()));
    }
    if let Some((id, thread, ns)) = &f.after {
        args.extend([id as &(dyn ToSql + Sync), thread, ns]);
        let n = args.len();
        sql.push_str(&format!(" AND (checkpoint_id, thread, ns) < (${}, ${}, ${})", n - 2, n - 1, n));
    }
    let meta = f.metadata.as_ref().map(|m| m.to_string());
    if let Some(m) = &meta {
        // A quick pass on the stored text cast to jsonb; the model's containment decides.
        args.push(m);
        sql.push_str(&format!(" AND metadata::jsonb @> ${}::text::jsonb", args.len()));
    }
    sql.push_str(&format!(" ORDER BY checkpoint_id DESC, thread DESC, ns DESC LIMIT {MAX_SCAN}"));
    let rows = c.query(&sql, &args).await.map_err(pg_err)?;
    let (mut out, mut bytes) = (Vec::new(), 0);
    let mut last: Option<PageKey> = None;
    for r in &rows {
        let mut t = tuple_from(checkpoint_row(r, f.full)?)?;
        last = Some((t.checkpoint_id.clone(), t.thread.clone(), t.ns.clone()));
        if f.metadata.as_ref().is_some_and(|m| !checkpoint::contains(&t.metadata, m)) {
            continue;
        }
        if f.full {
            complete(c, &mut t).await?;
            bytes += t.wire_bytes();
        }
        out.push(t);
        if out.len() >= f.limit || (f.full && bytes >= f.max_bytes) {
            return Ok((out, last));
        }
    }
    Ok((out, if rows.len() >= MAX_SCAN { last } else { None }))
}

async fn get_thread<C: Conn>(c: &C, thread: &str) -> Result<Option<Thread>> {
    let stmt = c.prep(&format!("SELECT {THREAD_COLS} FROM threads WHERE thread = $1")).await?;
    c.raw()
        .query_opt(&stmt, &[&thread])
        .await
        .map_err(pg_err)?
        .map(|r| thread_row(&r).and_then(thread_from))
        .transpose()
}

async fn list_threads(c: &Client, f: &ThreadFilter) -> Result<Vec<Thread>> {
    let rows = c
        .query(
            &format!(
                "SELECT {THREAD_COLS} FROM threads WHERE ($1::text IS NULL OR thread > $1) AND ($2::bigint IS NULL OR updated_at < $2)
                 ORDER BY thread LIMIT $3"
            ),
            &[&f.after, &f.updated_before, &(f.limit as i64)],
        )
        .await
        .map_err(pg_err)?;
    rows.iter().map(|r| thread_row(r).and_then(thread_from)).collect()
}

async fn patch_thread(tx: &Transaction<'_>, p: &ThreadPatch) -> Result<Thread> {
    let found = tx
        .query_opt("SELECT 1 FROM threads WHERE thread = $1 FOR UPDATE", &[&p.thread])
        .await
        .map_err(pg_err)?;
    if found.is_none() {
        return Err(thread_not_found(&p.thread));
    }
    if let Some(m) = &p.metadata {
        tx.execute("UPDATE threads SET metadata = $2 WHERE thread = $1", &[&p.thread, m])
            .await
            .map_err(pg_err)?;
    }
    if let Some(t) = p.idle_ttl_ms {
        tx.execute("UPDATE threads SET idle_ttl_ms = $2 WHERE thread = $1", &[&p.thread, &t])
            .await
            .map_err(pg_err)?;
    }
    if let Some(k) = p.keep_last {
        tx.execute("UPDATE threads SET keep_last = $2, pruned_at = NULL WHERE thread = $1", &[&p.thread, &k])
            .await
            .map_err(pg_err)?;
    }
    get_thread(tx, &p.thread).await?.ok_or_else(|| Error::internal("a patched thread is stored"))
}

async fn delete_thread(
    tx: &Transaction<'_>,
    now: i64,
    thread: &str,
    reason: &str,
    fx: &mut Effects,
) -> Result<u64> {
    let row = tx
        .query_opt("SELECT checkpoints FROM threads WHERE thread = $1 FOR UPDATE", &[&thread])
        .await
        .map_err(pg_err)?;
    let Some(row) = row else { return Ok(0) };
    let n: i64 = row.col(0)?;
    for table in ["checkpoint_writes", "checkpoint_blobs", "checkpoints", "threads"] {
        tx.execute(&format!("DELETE FROM {table} WHERE thread = $1"), &[&thread]).await.map_err(pg_err)?;
    }
    fx.events.push(checkpoint::thread_deleted(thread, n as u64, reason, now));
    Ok(n as u64)
}

async fn recount(tx: &Transaction<'_>, thread: &str) -> Result<()> {
    tx.execute(
        "UPDATE threads SET
            checkpoints = (SELECT count(*) FROM checkpoints WHERE thread = $1),
            blobs = (SELECT count(*) FROM checkpoint_blobs WHERE thread = $1),
            writes = (SELECT count(*) FROM checkpoint_writes WHERE thread = $1),
            bytes = (SELECT coalesce(sum(bytes), 0) FROM checkpoints WHERE thread = $1)
                + (SELECT coalesce(sum(octet_length(data)), 0) FROM checkpoint_blobs WHERE thread = $1)
                + (SELECT coalesce(sum(octet_length(data)), 0) FROM checkpoint_writes WHERE thread = $1)
         WHERE thread = $1",
        &[&thread],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

async fn copy(tx: &Transaction<'_>, now: i64, from: &str, to: &str) -> Result<u64> {
    // Both rows locked in id order, so two opposite copies cannot deadlock.
    let mut pair = [from, to];
    pair.sort_unstable();
    tx.query("SELECT 1 FROM threads WHERE thread = ANY($1) ORDER BY thread FOR UPDATE", &[&pair.to_vec()])
        .await
        .map_err(pg_err)?;
    let Some(src) = get_thread(tx, from).await? else { return Err(thread_not_found(from)) };
    let taken =
        tx.query_opt("SELECT 1 FROM checkpoints WHERE thread = $1 LIMIT 1", &[&to]).await.map_err(pg_err)?;
    if taken.is_some() {
        return Err(Error::new(ErrorCode::Conflict, format!("thread {to:?} already holds checkpoints"))
            .with_details(serde_json::json!({"thread": to})));
    }
    locked(tx, to, now, &None, async { Ok(()) }).await?;
    let meta = serde_json::to_string(&src.metadata).expect("json");
    tx.execute(
        "UPDATE threads SET metadata = $2, idle_ttl_ms = $3, keep_last = $4, updated_at = $5 WHERE thread = $1",
        &[&to, &meta, &src.idle_ttl_ms, &src.keep_last, &now],
    )
    .await
    .map_err(pg_err)?;
    let copied = tx
        .execute(
            "INSERT INTO checkpoints (thread, ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata,
                channel_versions, delta_channels, run_id, step, bytes, created_at)
             SELECT $2, ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata, channel_versions,
                delta_channels, run_id, step, bytes, created_at FROM checkpoints WHERE thread = $1",
            &[&from, &to],
        )
        .await
        .map_err(pg_err)?;
    tx.execute(
        "INSERT INTO checkpoint_blobs (thread, ns, channel, version, type, data)
         SELECT $2, ns, channel, version, type, data FROM checkpoint_blobs WHERE thread = $1 ON CONFLICT DO NOTHING",
        &[&from, &to],
    )
    .await
    .map_err(pg_err)?;
    tx.execute(
        "INSERT INTO checkpoint_writes (thread, ns, checkpoint_id, task_id, idx, channel, type, data, task_path)
         SELECT $2, ns, checkpoint_id, task_id, idx, channel, type, data, task_path FROM checkpoint_writes
         WHERE thread = $1 ON CONFLICT DO NOTHING",
        &[&from, &to],
    )
    .await
    .map_err(pg_err)?;
    recount(tx, to).await?;
    Ok(copied)
}

async fn collect_blobs(tx: &Transaction<'_>, thread: &str) -> Result<()> {
    let rows = tx
        .query("SELECT ns, channel_versions FROM checkpoints WHERE thread = $1", &[&thread])
        .await
        .map_err(pg_err)?;
    let mut pairs = Vec::with_capacity(rows.len());
    for r in &rows {
        pairs.push((r.col::<String>(0)?, r.col::<String>(1)?));
    }
    let kept = referenced(pairs)?;
    let rows = tx
        .query("SELECT ns, channel, version FROM checkpoint_blobs WHERE thread = $1", &[&thread])
        .await
        .map_err(pg_err)?;
    for r in &rows {
        let key: (String, String, String) = (r.col(0)?, r.col(1)?, r.col(2)?);
        if !kept.contains(&key) {
            tx.execute(
                "DELETE FROM checkpoint_blobs WHERE thread = $1 AND ns = $2 AND channel = $3 AND version = $4",
                &[&thread, &key.0, &key.1, &key.2],
            )
            .await
            .map_err(pg_err)?;
        }
    }
    Ok(())
}

async fn delete_checkpoint(tx: &Transaction<'_>, thread: &str, ns: &str, id: &str) -> Result<()> {
    for table in ["checkpoint_writes", "checkpoints"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE thread = $1 AND ns = $2 AND checkpoint_id = $3"),
            &[&thread, &ns, &id],
        )
        .await
        .map_err(pg_err)?;
    }
    Ok(())
}

async fn prune_one(tx: &Transaction<'_>, now: i64, thread: &str, keep: usize) -> Result<u64> {
    assert!(keep >= 1);
    let locked = tx
        .query_opt("SELECT 1 FROM threads WHERE thread = $1 FOR UPDATE", &[&thread])
        .await
        .map_err(pg_err)?;
    if locked.is_none() {
        return Ok(0);
    }
    let rows = tx
        .query("SELECT ns, checkpoint_id, parent_checkpoint_id, delta_channels FROM checkpoints WHERE thread = $1", &[&thread])
        .await
        .map_err(pg_err)?;
    let mut nodes = Vec::with_capacity(rows.len());
    for r in &rows {
        let deltas: String = r.col(3)?;
        let delta_channels = serde_json::from_str(&deltas)
            .map_err(|e| Error::internal(format!("stored delta_channels: {e}")))?;
        nodes.push(Node { ns: r.col(0)?, id: r.col(1)?, parent: r.col(2)?, delta_channels });
    }
    let kept = checkpoint::keep_set(&nodes, keep);
    let is_kept = |n: &Node| kept.contains(&(n.ns.clone(), n.id.clone()));
    let gone: HashSet<(&str, &str)> =
        nodes.iter().filter(|n| !is_kept(n)).map(|n| (n.ns.as_str(), n.id.as_str())).collect();
    for (ns, id) in &gone {
        delete_checkpoint(tx, thread, ns, id).await?;
    }
    if !gone.is_empty() {
        for n in nodes.iter().filter(|n| is_kept(n)) {
            if n.parent.as_deref().is_some_and(|p| gone.contains(&(n.ns.as_str(), p))) {
                tx.execute(
                    "UPDATE checkpoints SET parent_checkpoint_id = NULL WHERE thread = $1 AND ns = $2 AND checkpoint_id = $3",
                    &[&thread, &n.ns, &n.id],
                )
                .await
                .map_err(pg_err)?;
            }
        }
        collect_blobs(tx, thread).await?;
        recount(tx, thread).await?;
    }
    tx.execute("UPDATE threads SET pruned_at = $2 WHERE thread = $1", &[&thread, &now])
        .await
        .map_err(pg_err)?;
    Ok(gone.len() as u64)
}

async fn prune(
    tx: &Transaction<'_>,
    now: i64,
    threads: &[String],
    keep: usize,
    fx: &mut Effects,
) -> Result<u64> {
    let mut sorted: Vec<&String> = threads.iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut deleted = 0;
    for t in sorted {
        deleted += if keep == 0 {
            delete_thread(tx, now, t, "request", fx).await?
        } else {
            prune_one(tx, now, t, keep).await?
        };
    }
    Ok(deleted)
}

async fn delete_runs(tx: &Transaction<'_>, run_ids: &[String]) -> Result<u64> {
    let rows = tx
        .query(
            "SELECT thread, ns, checkpoint_id FROM checkpoints WHERE run_id = ANY($1) ORDER BY thread",
            &[&run_ids],
        )
        .await
        .map_err(pg_err)?;
    let mut threads: Vec<String> = Vec::new();
    for r in &rows {
        let (thread, ns, id): (String, String, String) = (r.col(0)?, r.col(1)?, r.col(2)?);
        if threads.last() != Some(&thread) {
            tx.query("SELECT 1 FROM threads WHERE thread = $1 FOR UPDATE", &[&thread])
                .await
                .map_err(pg_err)?;
            threads.push(thread.clone());
        }
        delete_checkpoint(tx, &thread, &ns, &id).await?;
    }
    for t in &threads {
        collect_blobs(tx, t).await?;
        recount(tx, t).await?;
    }
    Ok(rows.len() as u64)
}

async fn sweep(
    tx: &Transaction<'_>,
    now: i64,
    sw: &CheckpointSweep,
    fx: &mut Effects,
) -> Result<SweepOutcome> {
    let mut out = SweepOutcome::default();
    let batch = sw.batch as i64;
    let rows = tx
        .query(
            "SELECT thread FROM threads t WHERE coalesce(idle_ttl_ms, $2) > 0 AND updated_at + coalesce(idle_ttl_ms, $2) <= $1
                AND (last_job_id IS NULL OR NOT EXISTS
                    (SELECT 1 FROM jobs j WHERE j.id = t.last_job_id AND j.state = 'running'))
             ORDER BY thread LIMIT $3 FOR UPDATE SKIP LOCKED",
            &[&now, &sw.idle_ttl_ms, &batch],
        )
        .await
        .map_err(pg_err)?;
    for r in &rows {
        let t: String = r.col(0)?;
        delete_thread(tx, now, &t, "idle_ttl", fx).await?;
        out.threads_expired += 1;
    }
    let rows = tx
        .query(
            "SELECT thread, coalesce(keep_last, $2) FROM threads t WHERE coalesce(keep_last, $2) > 0
                AND checkpoints > coalesce(keep_last, $2) AND updated_at <= $1::bigint - $3::bigint
                AND (pruned_at IS NULL OR pruned_at < updated_at)
                AND (last_job_id IS NULL OR NOT EXISTS
                    (SELECT 1 FROM jobs j WHERE j.id = t.last_job_id AND j.state = 'running'))
             ORDER BY thread LIMIT $4 FOR UPDATE SKIP LOCKED",
            &[&now, &sw.keep_last, &sw.grace_ms, &batch],
        )
        .await
        .map_err(pg_err)?;
    for r in &rows {
        let (t, keep): (String, i64) = (r.col(0)?, r.col(1)?);
        out.checkpoints_pruned += prune_one(tx, now, &t, keep as usize).await?;
    }
    Ok(out)
}

/// Violations of the checkpoint invariants.
pub async fn invariants(c: &Client) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (sql, what) in INVARIANTS {
        for r in c.query(*sql, &[]).await.map_err(pg_err)? {
            out.push(format!("{what}: {}", r.col::<String>(0)?));
        }
    }
    let rows = c
        .query("SELECT thread, ns, checkpoint_id, channel_versions FROM checkpoints", &[])
        .await
        .map_err(pg_err)?;
    let blobs =
        c.query("SELECT thread, ns, channel, version FROM checkpoint_blobs", &[]).await.map_err(pg_err)?;
    let mut stored = HashSet::with_capacity(blobs.len());
    for b in &blobs {
        stored.insert((b.col::<String>(0)?, b.col::<String>(1)?, b.col::<String>(2)?, b.col::<String>(3)?));
    }
    for r in &rows {
        let (thread, ns, id, versions): (String, String, String, String) =
            (r.col(0)?, r.col(1)?, r.col(2)?, r.col(3)?);
        for (_, channel, version) in referenced(vec![(ns.clone(), versions)])? {
            if !stored.contains(&(thread.clone(), ns.clone(), channel.clone(), version.clone())) {
                out.push(format!(
                    "checkpoint {thread}/{ns}/{id} references a missing blob {channel}@{version}"
                ));
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl CheckpointStore for PgStore {
    async fn put_checkpoint(&self, c: NewCheckpoint) -> Result<PutOutcome> {
        self.tx("checkpoint.put", move |tx, now, fx| boxed!(put(tx, now, &c, fx).await)).await
    }

    async fn put_checkpoint_writes(&self, w: NewWrites) -> Result<WritesOutcome> {
        self.tx("checkpoint.put_writes", move |tx, now, _| boxed!(put_writes(tx, now, &w).await)).await
    }

    async fn get_checkpoint(&self, thread: &str, ns: &str, id: Option<&str>) -> Result<Option<Tuple>> {
        let (thread, ns, id) = (thread.to_string(), ns.to_string(), id.map(str::to_string));
        self.read(move |c| {
            boxed!({
                let Some(mut t) = load(c, &thread, &ns, id.as_deref()).await? else { return Ok(None) };
                complete(c, &mut t).await?;
                Ok(Some(t))
            })
        })
        .await
    }

    async fn list_checkpoints(&self, filter: CheckpointFilter) -> Result<(Vec<Tuple>, Option<PageKey>)> {
        self.read(move |c| boxed!(list(c, &filter).await)).await
    }

    async fn get_thread(&self, thread: &str) -> Result<Option<Thread>> {
        let thread = thread.to_string();
        self.read(move |c| boxed!(get_thread(c, &thread).await)).await
    }

    async fn list_threads(&self, filter: ThreadFilter) -> Result<Vec<Thread>> {
        self.read(move |c| boxed!(list_threads(c, &filter).await)).await
    }

    async fn patch_thread(&self, patch: ThreadPatch) -> Result<Thread> {
        self.tx("checkpoint.patch_thread", move |tx, _, _| boxed!(patch_thread(tx, &patch).await)).await
    }

    async fn delete_thread(&self, thread: &str) -> Result<u64> {
        let thread = thread.to_string();
        self.tx("checkpoint.delete_thread", move |tx, now, fx| {
            boxed!(delete_thread(tx, now, &thread, "request", fx).await)
        })
        .await
    }

    async fn copy_thread(&self, from: &str, to: &str) -> Result<u64> {
        let (from, to) = (from.to_string(), to.to_string());
        self.tx("checkpoint.copy", move |tx, now, _| boxed!(copy(tx, now, &from, &to).await)).await
    }

    async fn prune_threads(&self, threads: Vec<String>, keep: usize) -> Result<u64> {
        self.tx("checkpoint.prune", move |tx, now, fx| boxed!(prune(tx, now, &threads, keep, fx).await)).await
    }

    async fn delete_checkpoint_runs(&self, run_ids: Vec<String>) -> Result<u64> {
        self.tx("checkpoint.delete_runs", move |tx, _, _| boxed!(delete_runs(tx, &run_ids).await)).await
    }

    async fn sweep_checkpoints(&self, sw: CheckpointSweep) -> Result<SweepOutcome> {
        self.tx("checkpoint.sweep", move |tx, now, fx| boxed!(sweep(tx, now, &sw, fx).await)).await
    }
}
