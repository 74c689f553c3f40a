//! The convoy commands as PostgreSQL statements, and the hook the job commands call when a
//! member moves (`member_moved`). The rules are those of the SQLite backend
//! (`sqlite/convoys.rs`, decisions in `convoy_rows`); what differs is how they are kept with
//! several writers: every change to a convoy locks its row first (`FOR UPDATE`), as flow
//! limits lock the queue row, so its counters, slots and controller move one transaction at a
//! time on every node. Lock order is member rows, then the convoy row, then (under that lock)
//! other members of that convoy; a job cancel that could break it locks the convoy first.

use super::{PgStore, RowExt, pg_err};
use crate::ConvoyStore;
use crate::convoy_rows::*;
use crate::effects::Effects;
use crate::rows::*;
use async_trait::async_trait;
use deadpool_postgres::{ClientWrapper as Client, Transaction};
use ferry_core::convoy::{
    self, Convoy, ConvoyCreated, ConvoyFilter, ConvoyGauges, ConvoyState, MemberView, NewConvoy,
};
use ferry_core::{
    EnqueueOutcome, Error, EventType, JobState, Limits, NewJob, Page, PageRequest, Result, Timestamp,
};
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

fn decode(r: &Row) -> Result<StoredConvoy> {
    Ok(StoredConvoy {
        seq: r.col(0)?,
        id: r.col(1)?,
        name: r.col(2)?,
        queue: r.col(3)?,
        max_parallel: r.col(4)?,
        on_failure: r.col(5)?,
        on_complete: r.col(6)?,
        state: r.col(7)?,
        cancelling: r.col(8)?,
        counters: [r.col(9)?, r.col(10)?, r.col(11)?, r.col(12)?, r.col(13)?, r.col(14)?, r.col(15)?],
        tuner: r.col(16)?,
        progress_at: r.col(17)?,
        on_complete_job_id: r.col(18)?,
        created_at: r.col(19)?,
        finished_at: r.col(20)?,
    })
}

fn live(r: &Row) -> Result<[i64; 3]> {
    Ok([r.col(21)?, r.col(22)?, r.col(23)?])
}

/// The convoy row, locked for the rest of the transaction.
async fn lock(tx: &Transaction<'_>, id: &str) -> Result<Option<ConvoyRow>> {
    let sql = format!("SELECT {CONVOY_COLS} FROM convoys c WHERE c.id = $1 FOR UPDATE");
    let row = tx.query_opt(&tx.prepare_cached(&sql).await.map_err(pg_err)?, &[&id]).await.map_err(pg_err)?;
    row.map(|r| decode(&r)?.decode()).transpose()
}

/// True when the convoy tunes its limit (read without a lock: the kind never changes).
async fn is_adaptive(tx: &Transaction<'_>, id: &str) -> Result<bool> {
    let stmt =
        tx.prepare_cached("SELECT tuner IS NOT NULL FROM convoys WHERE id = $1").await.map_err(pg_err)?;
    Ok(tx
        .query_opt(&stmt, &[&id])
        .await
        .map_err(pg_err)?
        .map(|r| r.col::<bool>(0))
        .transpose()?
        .unwrap_or(false))
}

async fn view<C: GenericClient + Sync>(c: &C, id: &str) -> Result<Option<Convoy>> {
    let sql = format!("SELECT {CONVOY_COLS}, {LIVE_COUNTS} FROM convoys c WHERE c.id = $1");
    let row = c.query_opt(sql.as_str(), &[&id]).await.map_err(pg_err)?;
    row.map(|r| Ok(decode(&r)?.decode()?.view(live(&r)?))).transpose()
}

async fn live_counts(tx: &Transaction<'_>, id: &str) -> Result<[i64; 3]> {
    let sql = format!("SELECT {LIVE_COUNTS} FROM (SELECT $1::text AS id) c");
    let r = tx.query_one(&tx.prepare_cached(&sql).await.map_err(pg_err)?, &[&id]).await.map_err(pg_err)?;
    Ok([r.col(0)?, r.col(1)?, r.col(2)?])
}

async fn save(tx: &Transaction<'_>, row: &ConvoyRow) -> Result<()> {
    let stmt = tx
        .prepare_cached(
            "UPDATE convoys SET state = $1, cancelling = $2, lim = $3, total = $4, held = $5, slots = $6,
                completed = $7, failed = $8, cancelled = $9, tuner = $10, progress_at = $11,
                on_complete_job_id = $12, finished_at = $13
             WHERE seq = $14",
        )
        .await
        .map_err(pg_err)?;
    tx.execute(
        &stmt,
        &[
            &row.state.as_str(),
            &row.cancelling,
            &row.limit,
            &row.total,
            &row.held,
            &row.slots,
            &row.completed,
            &row.failed,
            &row.cancelled,
            &row.tuner_json(),
            &row.progress_at,
            &row.on_complete_job_id,
            &row.finished_at,
            &row.seq,
        ],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

/// Inserts members under the convoy's lock: each `ready` while a slot is free, else `held`;
/// a `unique_key` an earlier member holds answers that member's id. One statement inserts
/// them all.
async fn insert_members(
    tx: &Transaction<'_>,
    now: i64,
    row: &mut ConvoyRow,
    members: Vec<NewJob>,
    w: &mut Effects,
) -> Result<Vec<EnqueueOutcome>> {
    let keys: Vec<&str> = members.iter().filter_map(|m| m.unique_key.as_deref()).collect();
    let mut known: std::collections::HashMap<String, Uuid> = if keys.is_empty() {
        Default::default()
    } else {
        let stmt = tx
            .prepare_cached("SELECT key, job_id FROM convoy_keys WHERE convoy_id = $1 AND key = ANY($2)")
            .await
            .map_err(pg_err)?;
        let rows = tx.query(&stmt, &[&row.id, &keys]).await.map_err(pg_err)?;
        rows.iter().map(|r| Ok((r.col::<String>(0)?, r.col::<Uuid>(1)?))).collect::<Result<_>>()?
    };
    let mut out = Vec::with_capacity(members.len());
    let mut b = Batch::default();
    let (mut new_keys, mut new_key_ids) = (Vec::new(), Vec::new());
    for job in members {
        debug_assert!(job.depends_on.is_empty() && job.queue == row.queue);
        if let Some(key) = &job.unique_key
            && let Some(id) = known.get(key)
        {
            out.push(EnqueueOutcome { id: *id, duplicate: true });
            continue;
        }
        let id = Uuid::now_v7();
        let state = row.admit();
        if let Some(key) = &job.unique_key {
            known.insert(key.clone(), id);
            new_keys.push(key.clone());
            new_key_ids.push(id);
        }
        w.moved(&row.queue, None, Some(state), 1);
        w.events.push(enqueued_event(now, &row.queue, id, &job.tags, state));
        b.push(id, job, state);
        out.push(EnqueueOutcome { id, duplicate: false });
    }
    if !b.ids.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO jobs (id, queue, state, priority, run_at, payload, max_attempts, backoff_base_ms,
                    backoff_factor, backoff_max_ms, backoff_jitter, lease_ms, tags, created_at, updated_at,
                    timeout_ms, convoy_id)
                 SELECT id, $1, state, priority, $2, payload, max_attempts, base, factor, max_ms, jitter, lease_ms,
                    tags, $2, $2, timeout_ms, $3
                 FROM unnest($4::uuid[], $5::text[], $6::int[], $7::text[], $8::int[], $9::bigint[],
                    $10::float8[], $11::bigint[], $12::float8[], $13::bigint[], $14::text[], $15::bigint[])
                    AS x(id, state, priority, payload, max_attempts, base, factor, max_ms, jitter, lease_ms, tags,
                         timeout_ms)",
            )
            .await
            .map_err(pg_err)?;
        tx.execute(
            &stmt,
            &[
                &row.queue,
                &now,
                &row.id,
                &b.ids,
                &b.states,
                &b.priorities,
                &b.payloads,
                &b.max_attempts,
                &b.base_ms,
                &b.factors,
                &b.max_ms,
                &b.jitters,
                &b.lease_ms,
                &b.tags,
                &b.timeout_ms,
            ],
        )
        .await
        .map_err(pg_err)?;
    }
    if !new_keys.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO convoy_keys (convoy_id, key, job_id) SELECT $1, k, j FROM unnest($2::text[], $3::uuid[]) AS x(k, j)",
            )
            .await
            .map_err(pg_err)?;
        tx.execute(&stmt, &[&row.id, &new_keys, &new_key_ids]).await.map_err(pg_err)?;
    }
    if out.iter().any(|o| !o.duplicate) && row.slots > 0 {
        w.wake(&row.queue);
    }
    Ok(out)
}

/// Members inserted together with one `unnest` statement.
#[derive(Default)]
struct Batch {
    ids: Vec<Uuid>,
    states: Vec<&'static str>,
    priorities: Vec<i32>,
    payloads: Vec<String>,
    max_attempts: Vec<i32>,
    base_ms: Vec<i64>,
    factors: Vec<f64>,
    max_ms: Vec<i64>,
    jitters: Vec<f64>,
    lease_ms: Vec<i64>,
    tags: Vec<Option<String>>,
    timeout_ms: Vec<Option<i64>>,
}

impl Batch {
    fn push(&mut self, id: Uuid, job: NewJob, state: JobState) {
        self.ids.push(id);
        self.states.push(state.as_str());
        self.priorities.push(job.priority);
        self.payloads.push(job.payload.get().to_string());
        self.max_attempts.push(job.max_attempts as i32);
        self.base_ms.push(job.backoff.base_ms);
        self.factors.push(job.backoff.factor);
        self.max_ms.push(job.backoff.max_ms);
        self.jitters.push(job.backoff.jitter.0);
        self.lease_ms.push(job.lease_ms);
        self.tags.push(list_json(&job.tags));
        self.timeout_ms.push(job.timeout_ms);
    }
}

/// Creates a convoy (or answers a repeat), its first members, and ends it at once when it is
/// sealed and empty. A create racing its repeat on another node waits on the id's advisory
/// lock, then sees the first as a repeat.
pub async fn create(
    tx: &Transaction<'_>,
    now: i64,
    c: NewConvoy,
    limits: &Limits,
    w: &mut Effects,
) -> Result<ConvoyCreated> {
    tx.execute("SELECT pg_advisory_xact_lock(hashtextextended('convoy:' || $1, 0))", &[&c.id])
        .await
        .map_err(pg_err)?;
    if let Some(existing) = lock(tx, &c.id).await? {
        let fields = differing(&existing, &c);
        if !fields.is_empty() {
            return Err(convoy::conflict(&c.id, fields));
        }
        let v = view(&**tx, &c.id).await?.expect("locked in this transaction");
        return Ok(ConvoyCreated { convoy: v, members: Vec::new(), duplicate: true });
    }
    if c.members.len() as u64 > limits.max_convoy_members {
        return Err(Error::invalid(
            "members",
            format!("{} members; a convoy takes at most {}", c.members.len(), limits.max_convoy_members),
        ));
    }
    let mut row = new_row(&c, now);
    let stmt = tx
        .prepare_cached(
            "INSERT INTO convoys (id, name, queue, max_parallel, on_failure, on_complete, state, lim, tuner,
                progress_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
             RETURNING seq",
        )
        .await
        .map_err(pg_err)?;
    let r = tx
        .query_one(
            &stmt,
            &[
                &row.id,
                &row.name,
                &row.queue,
                &row.max_parallel_json(),
                &row.on_failure.as_str(),
                &row.on_complete_json(),
                &row.state.as_str(),
                &row.limit,
                &row.tuner_json(),
                &now,
            ],
        )
        .await
        .map_err(pg_err)?;
    row.seq = r.col(0)?;
    w.events.push(row.created_event(now));
    let members = insert_members(tx, now, &mut row, c.members, w).await?;
    settle(tx, now, &mut row, limits, w).await?;
    save(tx, &row).await?;
    let v = view(&**tx, &row.id).await?.expect("written in this transaction");
    Ok(ConvoyCreated { convoy: v, members, duplicate: false })
}

/// Adds members to an open convoy.
pub async fn add(
    tx: &Transaction<'_>,
    now: i64,
    id: &str,
    members: Vec<NewJob>,
    limits: &Limits,
    w: &mut Effects,
) -> Result<Vec<EnqueueOutcome>> {
    let mut row = lock(tx, id).await?.ok_or_else(|| convoy::not_found(id))?;
    if row.state != ConvoyState::Open {
        return Err(not_open(&row));
    }
    if row.total as u64 + members.len() as u64 > limits.max_convoy_members {
        return Err(too_many_members(&row, members.len(), limits.max_convoy_members));
    }
    let out = insert_members(tx, now, &mut row, members, w).await?;
    progress(tx, now, &mut row, w).await?;
    save(tx, &row).await?;
    Ok(out)
}

/// Seals a convoy; it ends now if no member is live.
pub async fn seal(
    tx: &Transaction<'_>,
    now: i64,
    id: &str,
    limits: &Limits,
    w: &mut Effects,
) -> Result<Convoy> {
    let mut row = lock(tx, id).await?.ok_or_else(|| convoy::not_found(id))?;
    if row.state == ConvoyState::Open {
        row.state = ConvoyState::Sealed;
        settle(tx, now, &mut row, limits, w).await?;
        save(tx, &row).await?;
    }
    Ok(view(&**tx, id).await?.expect("locked in this transaction"))
}

/// Seals a convoy and cancels every member not running.
pub async fn cancel(
    tx: &Transaction<'_>,
    now: i64,
    id: &str,
    limits: &Limits,
    w: &mut Effects,
) -> Result<Convoy> {
    let mut row = lock(tx, id).await?.ok_or_else(|| convoy::not_found(id))?;
    match row.state {
        ConvoyState::Cancelled => {}
        ConvoyState::Completed | ConvoyState::Failed => return Err(already_ended(&row)),
        ConvoyState::Open | ConvoyState::Sealed if row.cancelling => {}
        ConvoyState::Open | ConvoyState::Sealed => {
            row.cancelling = true;
            row.state = ConvoyState::Sealed;
            cancel_rest(tx, now, &mut row, w).await?;
            settle(tx, now, &mut row, limits, w).await?;
            save(tx, &row).await?;
        }
    }
    Ok(view(&**tx, id).await?.expect("locked in this transaction"))
}

/// Cancels every member of `row` that is held, ready or waiting out a retry.
async fn cancel_rest(tx: &Transaction<'_>, now: i64, row: &mut ConvoyRow, w: &mut Effects) -> Result<()> {
    let reason = cancel_reason(row);
    let stmt = tx
        .prepare_cached(
            "UPDATE jobs SET state = 'cancelled', cancel_reason = $1, lease = NULL, finished_at = $2,
                updated_at = $2
             WHERE convoy_id = $3 AND state = $4
             RETURNING seq, id, has_dependants, tags",
        )
        .await
        .map_err(pg_err)?;
    for from in [JobState::Held, JobState::Ready, JobState::Scheduled] {
        let rows = tx.query(&stmt, &[&reason, &now, &row.id, &from.as_str()]).await.map_err(pg_err)?;
        row.moved(Some(from), JobState::Cancelled, rows.len() as i64);
        for r in rows {
            let (seq, id): (i64, Uuid) = (r.col(0)?, r.col(1)?);
            w.events.push(
                job_event(EventType::JobCancelled, now, &row.queue, id, event_tags(r.col(3)?))
                    .with(serde_json::json!({ "reason": reason })),
            );
            if r.col::<bool>(2)? {
                super::jobs::cancel_dependants(tx, now, seq, id, JobState::Cancelled, w).await?;
            }
        }
    }
    Ok(())
}

/// Brings `row` in line with its limit, ends it when it is done, and records progress.
/// Members other transactions hold (a claim in flight) are skipped, never waited for. The
/// picks are CTEs: PostgreSQL runs a locking CTE once, whereas an `IN (SELECT … LIMIT n FOR
/// UPDATE)` subquery may be run again by the plan and move more than n rows.
async fn settle(
    tx: &Transaction<'_>,
    now: i64,
    row: &mut ConvoyRow,
    limits: &Limits,
    w: &mut Effects,
) -> Result<()> {
    let surplus = row.surplus();
    if surplus > 0 {
        let stmt = tx
            .prepare_cached(
                "WITH picked AS (SELECT seq FROM jobs WHERE convoy_id = $2 AND state = 'ready'
                                 ORDER BY priority, seq DESC LIMIT $3 FOR UPDATE SKIP LOCKED)
                 UPDATE jobs SET state = 'held', updated_at = $1 FROM picked
                 WHERE jobs.seq = picked.seq AND jobs.state = 'ready'",
            )
            .await
            .map_err(pg_err)?;
        let n = tx.execute(&stmt, &[&now, &row.id, &surplus]).await.map_err(pg_err)? as i64;
        row.moved(Some(JobState::Ready), JobState::Held, n);
    }
    let free = row.releasable();
    if free > 0 {
        let stmt = tx
            .prepare_cached(
                "WITH picked AS (SELECT seq FROM jobs WHERE convoy_id = $2 AND state = 'held'
                                 ORDER BY priority DESC, seq LIMIT $3 FOR UPDATE SKIP LOCKED)
                 UPDATE jobs SET state = 'ready', run_at = $1, updated_at = $1 FROM picked
                 WHERE jobs.seq = picked.seq AND jobs.state = 'held'",
            )
            .await
            .map_err(pg_err)?;
        let n = tx.execute(&stmt, &[&now, &row.id, &free]).await.map_err(pg_err)? as i64;
        row.moved(Some(JobState::Held), JobState::Ready, n);
        if n > 0 {
            w.wake(&row.queue);
        }
    }
    if row.is_live() && row.is_done() {
        finish(tx, now, row, limits, w).await?;
    }
    progress(tx, now, row, w).await
}

async fn progress(tx: &Transaction<'_>, now: i64, row: &mut ConvoyRow, w: &mut Effects) -> Result<()> {
    if row.progress_due(now) {
        let live = live_counts(tx, &row.id).await?;
        w.events.push(row.progress_event(now, live));
        row.progress_at = now;
    }
    Ok(())
}

/// Ends `row`: its state, the completion job (keyed, so enqueued once), the event.
async fn finish(
    tx: &Transaction<'_>,
    now: i64,
    row: &mut ConvoyRow,
    limits: &Limits,
    w: &mut Effects,
) -> Result<()> {
    let state = row.final_state();
    if let Some(on_complete) = &row.on_complete {
        let stmt = tx
            .prepare_cached(
                "SELECT id FROM jobs WHERE convoy_id = $1 AND state = 'dead' ORDER BY seq LIMIT $2",
            )
            .await
            .map_err(pg_err)?;
        let rows =
            tx.query(&stmt, &[&row.id, &(limits.max_convoy_failed_ids as i64)]).await.map_err(pg_err)?;
        let failed_ids = rows.iter().map(|r| r.col(0)).collect::<Result<Vec<Uuid>>>()?;
        let job = on_complete.job(&row.summary(state, failed_ids));
        let out = super::jobs::enqueue(tx, now, vec![job], &crate::LedgerSettings::default(), w).await?;
        row.on_complete_job_id = Some(out[0].id);
    }
    row.state = state;
    row.finished_at = Some(now);
    w.events.push(row.completed_event(now));
    w.wake(&convoy::wake_key(&row.id));
    Ok(())
}

/// A member of convoy `convoy_id` moved (called by the job commands in their transaction,
/// the member's row already locked): locks the convoy and applies the move.
pub async fn member_moved(
    tx: &Transaction<'_>,
    now: i64,
    convoy_id: &str,
    mv: Move,
    limits: &Limits,
    w: &mut Effects,
) -> Result<()> {
    members_moved(tx, now, vec![(convoy_id.to_string(), mv)], limits, w).await
}

/// Several members moved in one transaction (a batch of completions): each convoy is locked
/// (in id order, so two batches never wait on each other), settled and written once.
pub async fn members_moved(
    tx: &Transaction<'_>,
    now: i64,
    mut moves: Vec<(String, Move)>,
    limits: &Limits,
    w: &mut Effects,
) -> Result<()> {
    moves.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rest = moves.as_slice();
    while let Some((convoy_id, _)) = rest.first() {
        let n = rest.iter().take_while(|(c, _)| c == convoy_id).count();
        let (group, tail) = rest.split_at(n);
        rest = tail;
        if group.iter().all(|(_, mv)| mv.from == mv.to) && !is_adaptive(tx, convoy_id).await? {
            // Only pressure reports, which a fixed limit ignores: no lock on the convoy.
            continue;
        }
        let Some(mut row) = lock(tx, convoy_id).await? else { continue };
        if !row.is_live() {
            continue;
        }
        for (_, mv) in group {
            row.moved(Some(mv.from), mv.to, 1);
            if let Some(p) = mv.pressure {
                row.pressure(p);
            }
            if let Some((started_at, failed)) = mv.attempt
                && let Some(change) = row.sample(now, started_at, failed)
            {
                w.events.push(row.limit_event(now, &change));
                crate::metrics::limit_changed(change.reason);
            }
            if mv.to == JobState::Dead && row.fails_fast() {
                row.state = ConvoyState::Sealed;
                cancel_rest(tx, now, &mut row, w).await?;
            }
        }
        if row.is_stopping() {
            // A member of a cancelled or failed-fast convoy that went back to retry stops here.
            cancel_rest(tx, now, &mut row, w).await?;
        }
        settle(tx, now, &mut row, limits, w).await?;
        save(tx, &row).await?;
    }
    Ok(())
}

/// Where a replayed dead member (already set `ready`) goes: `held` in its live convoy, or
/// `ready` on its own when the convoy ended (it leaves the convoy).
pub async fn replay_member(
    tx: &Transaction<'_>,
    now: i64,
    seq: i64,
    convoy_id: &str,
    limits: &Limits,
    w: &mut Effects,
) -> Result<JobState> {
    let Some(mut row) = lock(tx, convoy_id).await?.filter(|r| r.is_live()) else {
        tx.execute("UPDATE jobs SET convoy_id = NULL WHERE seq = $1", &[&seq]).await.map_err(pg_err)?;
        return Ok(JobState::Ready);
    };
    tx.execute("UPDATE jobs SET state = 'held' WHERE seq = $1", &[&seq]).await.map_err(pg_err)?;
    row.moved(Some(JobState::Dead), JobState::Held, 1);
    settle(tx, now, &mut row, limits, w).await?;
    save(tx, &row).await?;
    Ok(JobState::Held)
}

async fn list(c: &Client, filter: &ConvoyFilter, limit: usize, cursor: Option<i64>) -> Result<Page<Convoy>> {
    let mut sql = format!(
        "SELECT {CONVOY_COLS}, {LIVE_COUNTS} FROM convoys c WHERE c.seq > $1 AND ($2::text IS NULL OR c.queue = $2)"
    );
    if let Some(state) = filter.state {
        sql.push_str(&format!(" AND c.state = '{}'", state.as_str()));
    }
    sql.push_str(" ORDER BY c.seq LIMIT $3");
    let rows = c
        .query(sql.as_str(), &[&cursor.unwrap_or(0), &filter.queue, &(limit as i64 + 1)])
        .await
        .map_err(pg_err)?;
    let more = rows.len() > limit;
    let mut items = Vec::with_capacity(rows.len().min(limit));
    let mut last: i64 = 0;
    for r in rows.iter().take(limit) {
        let row = decode(r)?.decode()?;
        last = row.seq;
        items.push(row.view(live(r)?));
    }
    Ok(Page { items, next_cursor: more.then(|| last.to_string()) })
}

async fn members(
    c: &Client,
    id: &str,
    state: Option<JobState>,
    limit: usize,
    cursor: Option<i64>,
) -> Result<Page<MemberView>> {
    if c.query_opt("SELECT 1 FROM convoys WHERE id = $1", &[&id]).await.map_err(pg_err)?.is_none() {
        return Err(convoy::not_found(id));
    }
    let mut sql =
        "SELECT seq, id, state, attempt, started_at, finished_at FROM jobs WHERE convoy_id = $1 AND seq > $2"
            .to_string();
    if let Some(st) = state {
        sql.push_str(&format!(" AND state = '{}'", st.as_str()));
    }
    sql.push_str(" ORDER BY seq LIMIT $3");
    let rows =
        c.query(sql.as_str(), &[&id, &cursor.unwrap_or(0), &(limit as i64 + 1)]).await.map_err(pg_err)?;
    let more = rows.len() > limit;
    let mut items = Vec::with_capacity(rows.len().min(limit));
    let mut last: i64 = 0;
    for r in rows.iter().take(limit) {
        last = r.col(0)?;
        items.push(MemberView {
            id: r.col(1)?,
            state: state_of(r.col(2)?)?,
            attempt: r.col::<i32>(3)? as u32,
            started_at: r.col::<Option<i64>>(4)?.map(Timestamp),
            finished_at: r.col::<Option<i64>>(5)?.map(Timestamp),
        });
    }
    Ok(Page { items, next_cursor: more.then(|| last.to_string()) })
}

async fn prune(tx: &Transaction<'_>, before_ms: i64, max: usize) -> Result<u64> {
    let rows = tx
        .query(
            "DELETE FROM convoys WHERE seq IN (SELECT seq FROM convoys WHERE finished_at <= $1 LIMIT $2
                FOR UPDATE SKIP LOCKED)
             RETURNING id",
            &[&before_ms, &(max as i64)],
        )
        .await
        .map_err(pg_err)?;
    let ids = rows.iter().map(|r| r.col(0)).collect::<Result<Vec<String>>>()?;
    tx.execute("DELETE FROM convoy_keys WHERE convoy_id = ANY($1)", &[&ids]).await.map_err(pg_err)?;
    // Members outlive their convoy as plain jobs: a new convoy of the same id shares nothing.
    tx.execute("UPDATE jobs SET convoy_id = NULL WHERE convoy_id = ANY($1)", &[&ids])
        .await
        .map_err(pg_err)?;
    Ok(ids.len() as u64)
}

async fn gauges(c: &Client) -> Result<ConvoyGauges> {
    let r = c
        .query_one(
            "SELECT count(*) FILTER (WHERE state = 'open'), count(*) FILTER (WHERE state = 'sealed'),
                coalesce(sum(held), 0)::bigint
             FROM convoys WHERE finished_at IS NULL",
            &[],
        )
        .await
        .map_err(pg_err)?;
    Ok(ConvoyGauges {
        open: r.col::<i64>(0)? as u64,
        sealed: r.col::<i64>(1)? as u64,
        held: r.col::<i64>(2)? as u64,
    })
}

/// The convoy invariants, each as a count of violating convoys.
pub async fn invariants(c: &Client) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (what, cond) in INVARIANTS {
        let n: i64 = c
            .query_one(format!("SELECT count(*) FROM convoys c WHERE {cond}").as_str(), &[])
            .await
            .map_err(pg_err)?
            .col(0)?;
        if n > 0 {
            out.push(format!("{n} × {what}"));
        }
    }
    Ok(out)
}

fn cursor_of(page: &PageRequest) -> Result<Option<i64>> {
    page.cursor
        .as_ref()
        .map(|c| {
            c.parse::<i64>().map_err(|_| Error::invalid("cursor", "not a cursor returned by this server"))
        })
        .transpose()
}

#[async_trait]
impl ConvoyStore for PgStore {
    async fn create_convoy(&self, c: NewConvoy) -> Result<ConvoyCreated> {
        let limits = self.limits.clone();
        self.tx("convoy_create", move |tx, now, w| boxed!(create(tx, now, c, &limits, w).await)).await
    }

    async fn add_convoy_members(&self, id: &str, members: Vec<NewJob>) -> Result<Vec<EnqueueOutcome>> {
        let (id, limits) = (id.to_string(), self.limits.clone());
        self.tx("convoy_add", move |tx, now, w| boxed!(add(tx, now, &id, members, &limits, w).await)).await
    }

    async fn seal_convoy(&self, id: &str) -> Result<Convoy> {
        let (id, limits) = (id.to_string(), self.limits.clone());
        self.tx("convoy_seal", move |tx, now, w| boxed!(seal(tx, now, &id, &limits, w).await)).await
    }

    async fn cancel_convoy(&self, id: &str) -> Result<Convoy> {
        let (id, limits) = (id.to_string(), self.limits.clone());
        self.tx("convoy_cancel", move |tx, now, w| boxed!(cancel(tx, now, &id, &limits, w).await)).await
    }

    async fn get_convoy(&self, id: &str) -> Result<Convoy> {
        let id = id.to_string();
        self.read(move |c| boxed!(view(&**c, &id).await?.ok_or_else(|| convoy::not_found(&id)))).await
    }

    async fn list_convoys(&self, filter: ConvoyFilter, page: PageRequest) -> Result<Page<Convoy>> {
        let (limit, cursor) = (page.limit, cursor_of(&page)?);
        self.read(move |c| boxed!(list(c, &filter, limit, cursor).await)).await
    }

    async fn convoy_members(
        &self,
        id: &str,
        state: Option<JobState>,
        page: PageRequest,
    ) -> Result<Page<MemberView>> {
        let (id, limit, cursor) = (id.to_string(), page.limit, cursor_of(&page)?);
        self.read(move |c| boxed!(members(c, &id, state, limit, cursor).await)).await
    }

    async fn prune_convoys(&self, before_ms: i64, max: usize) -> Result<u64> {
        self.tx("convoy_prune", move |tx, _, _| boxed!(prune(tx, before_ms, max).await)).await
    }

    async fn convoy_gauges(&self) -> Result<ConvoyGauges> {
        self.read(|c| boxed!(gauges(c).await)).await
    }
}
