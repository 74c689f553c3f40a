//! The convoy commands as SQL over one SQLite connection, and the hook the job commands call
//! when a member moves (`member_moved`). Write functions run on the writer thread; the
//! writer is serial, so a convoy row read here cannot change before this command commits.
//! Each checks before it writes (a failing command poisons its batch mates).

use super::{SqliteStore, db_err, parse_cursor};
use crate::ConvoyStore;
use crate::convoy_rows::*;
use crate::effects::Effects;
use crate::rows::*;
use async_trait::async_trait;
use ferry_core::convoy::{
    self, Convoy, ConvoyCreated, ConvoyFilter, ConvoyGauges, ConvoyState, MemberView, NewConvoy,
};
use ferry_core::{
    EnqueueOutcome, Error, EventType, JobState, Limits, NewJob, Page, PageRequest, Result, Timestamp,
};
use rusqlite::{Connection, OptionalExtension, Row, params};
use uuid::Uuid;

fn decode(r: &Row) -> rusqlite::Result<StoredConvoy> {
    Ok(StoredConvoy {
        seq: r.get(0)?,
        id: r.get(1)?,
        name: r.get(2)?,
        queue: r.get(3)?,
        max_parallel: r.get(4)?,
        on_failure: r.get(5)?,
        on_complete: r.get(6)?,
        state: r.get(7)?,
        cancelling: r.get(8)?,
        counters: [r.get(9)?, r.get(10)?, r.get(11)?, r.get(12)?, r.get(13)?, r.get(14)?, r.get(15)?],
        tuner: r.get(16)?,
        progress_at: r.get(17)?,
        on_complete_job_id: r.get(18)?,
        created_at: r.get(19)?,
        finished_at: r.get(20)?,
    })
}

fn live(r: &Row) -> rusqlite::Result<[i64; 3]> {
    Ok([r.get(21)?, r.get(22)?, r.get(23)?])
}

fn load(conn: &Connection, id: &str) -> Result<Option<ConvoyRow>> {
    conn.prepare_cached(&format!("SELECT {CONVOY_COLS} FROM convoys c WHERE c.id = ?1"))
        .and_then(|mut s| s.query_row([id], decode).optional())
        .map_err(db_err)?
        .map(StoredConvoy::decode)
        .transpose()
}

fn load_view(conn: &Connection, id: &str) -> Result<Option<Convoy>> {
    let row = conn
        .prepare_cached(&format!("SELECT {CONVOY_COLS}, {LIVE_COUNTS} FROM convoys c WHERE c.id = ?1"))
        .and_then(|mut s| s.query_row([id], |r| Ok((decode(r)?, live(r)?))).optional())
        .map_err(db_err)?;
    row.map(|(stored, live)| Ok(stored.decode()?.view(live))).transpose()
}

fn live_counts(conn: &Connection, id: &str) -> Result<[i64; 3]> {
    conn.prepare_cached(&format!("SELECT {LIVE_COUNTS} FROM (SELECT ?1 AS id) c"))
        .and_then(|mut s| s.query_row([id], |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?])))
        .map_err(db_err)
}

fn save(conn: &Connection, row: &ConvoyRow) -> Result<()> {
    conn.prepare_cached(
        "UPDATE convoys SET state = ?1, cancelling = ?2, lim = ?3, total = ?4, held = ?5, slots = ?6,
            completed = ?7, failed = ?8, cancelled = ?9, tuner = ?10, progress_at = ?11,
            on_complete_job_id = ?12, finished_at = ?13
         WHERE seq = ?14",
    )
    .and_then(|mut s| {
        s.execute(params![
            row.state.as_str(),
            row.cancelling,
            row.limit,
            row.total,
            row.held,
            row.slots,
            row.completed,
            row.failed,
            row.cancelled,
            row.tuner_json(),
            row.progress_at,
            row.on_complete_job_id,
            row.finished_at,
            row.seq
        ])
    })
    .map_err(db_err)?;
    Ok(())
}

/// Inserts members (already validated, on the convoy's queue): each `ready` while a slot is
/// free, else `held`; a `unique_key` an earlier member holds answers that member's id.
fn insert_members(
    conn: &Connection,
    now: i64,
    row: &mut ConvoyRow,
    members: Vec<NewJob>,
    fx: &mut Effects,
) -> Result<Vec<EnqueueOutcome>> {
    let mut find_key = conn
        .prepare_cached("SELECT job_id FROM convoy_keys WHERE convoy_id = ?1 AND key = ?2")
        .map_err(db_err)?;
    let mut add_key = conn
        .prepare_cached("INSERT INTO convoy_keys (convoy_id, key, job_id) VALUES (?1, ?2, ?3)")
        .map_err(db_err)?;
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO jobs (id, queue, state, priority, run_at, payload, max_attempts, backoff_base_ms,
                backoff_factor, backoff_max_ms, backoff_jitter, lease_ms, tags, created_at, updated_at,
                timeout_ms, convoy_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?5, ?5, ?14, ?15)",
        )
        .map_err(db_err)?;
    let mut out = Vec::with_capacity(members.len());
    for job in members {
        debug_assert!(job.depends_on.is_empty() && job.queue == row.queue);
        if let Some(key) = &job.unique_key
            && let Some(id) =
                find_key.query_row(params![row.id, key], |r| r.get(0)).optional().map_err(db_err)?
        {
            out.push(EnqueueOutcome { id, duplicate: true });
            continue;
        }
        let id = Uuid::now_v7();
        let state = row.admit();
        insert
            .execute(params![
                id,
                row.queue,
                state.as_str(),
                job.priority,
                now,
                job.payload.get(),
                job.max_attempts,
                job.backoff.base_ms,
                job.backoff.factor,
                job.backoff.max_ms,
                job.backoff.jitter.0,
                job.lease_ms,
                list_json(&job.tags),
                job.timeout_ms,
                row.id,
            ])
            .map_err(db_err)?;
        if let Some(key) = &job.unique_key {
            add_key.execute(params![row.id, key, id]).map_err(db_err)?;
        }
        fx.moved(&row.queue, None, Some(state), 1);
        fx.event(enqueued_event(now, &row.queue, id, &job.tags, state));
        out.push(EnqueueOutcome { id, duplicate: false });
    }
    if out.iter().any(|o| !o.duplicate) && row.slots > 0 {
        fx.wake(&row.queue);
    }
    Ok(out)
}

/// Creates a convoy (or answers a repeat), its first members, and ends it at once when it is
/// sealed and empty.
pub fn create(
    conn: &Connection,
    now: i64,
    c: NewConvoy,
    limits: &Limits,
    fx: &mut Effects,
) -> Result<ConvoyCreated> {
    if let Some(existing) = load(conn, &c.id)? {
        let fields = differing(&existing, &c);
        if !fields.is_empty() {
            return Err(convoy::conflict(&c.id, fields));
        }
        let view = load_view(conn, &c.id)?.expect("read in this transaction");
        return Ok(ConvoyCreated { convoy: view, members: Vec::new(), duplicate: true });
    }
    if c.members.len() as u64 > limits.max_convoy_members {
        return Err(Error::invalid(
            "members",
            format!("{} members; a convoy takes at most {}", c.members.len(), limits.max_convoy_members),
        ));
    }
    let mut row = new_row(&c, now);
    conn.prepare_cached(
        "INSERT INTO convoys (id, name, queue, max_parallel, on_failure, on_complete, state, lim, tuner,
            progress_at, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
    )
    .and_then(|mut s| {
        s.execute(params![
            row.id,
            row.name,
            row.queue,
            row.max_parallel_json(),
            row.on_failure.as_str(),
            row.on_complete_json(),
            row.state.as_str(),
            row.limit,
            row.tuner_json(),
            now
        ])
    })
    .map_err(db_err)?;
    row.seq = conn.last_insert_rowid();
    fx.event(row.created_event(now));
    let members = insert_members(conn, now, &mut row, c.members, fx)?;
    settle(conn, now, &mut row, limits, fx)?;
    save(conn, &row)?;
    let view = load_view(conn, &row.id)?.expect("written in this transaction");
    Ok(ConvoyCreated { convoy: view, members, duplicate: false })
}

/// Adds members to an open convoy.
pub fn add(
    conn: &Connection,
    now: i64,
    id: &str,
    members: Vec<NewJob>,
    limits: &Limits,
    fx: &mut Effects,
) -> Result<Vec<EnqueueOutcome>> {
    let mut row = load(conn, id)?.ok_or_else(|| convoy::not_found(id))?;
    if row.state != ConvoyState::Open {
        return Err(not_open(&row));
    }
    if row.total as u64 + members.len() as u64 > limits.max_convoy_members {
        return Err(too_many_members(&row, members.len(), limits.max_convoy_members));
    }
    let out = insert_members(conn, now, &mut row, members, fx)?;
    progress(conn, now, &mut row, fx)?;
    save(conn, &row)?;
    Ok(out)
}

/// Seals a convoy; it ends now if no member is live.
pub fn seal(conn: &Connection, now: i64, id: &str, limits: &Limits, fx: &mut Effects) -> Result<Convoy> {
    let mut row = load(conn, id)?.ok_or_else(|| convoy::not_found(id))?;
    if row.state == ConvoyState::Open {
        row.state = ConvoyState::Sealed;
        settle(conn, now, &mut row, limits, fx)?;
        save(conn, &row)?;
    }
    Ok(load_view(conn, id)?.expect("read in this transaction"))
}

/// Seals a convoy and cancels every member not running.
pub fn cancel(conn: &Connection, now: i64, id: &str, limits: &Limits, fx: &mut Effects) -> Result<Convoy> {
    let mut row = load(conn, id)?.ok_or_else(|| convoy::not_found(id))?;
    match row.state {
        ConvoyState::Cancelled => {}
        ConvoyState::Completed | ConvoyState::Failed => return Err(already_ended(&row)),
        ConvoyState::Open | ConvoyState::Sealed if row.cancelling => {}
        ConvoyState::Open | ConvoyState::Sealed => {
            row.cancelling = true;
            row.state = ConvoyState::Sealed;
            cancel_rest(conn, now, &mut row, fx)?;
            settle(conn, now, &mut row, limits, fx)?;
            save(conn, &row)?;
        }
    }
    Ok(load_view(conn, id)?.expect("read in this transaction"))
}

/// Cancels every member of `row` that is held, ready or waiting out a retry.
fn cancel_rest(conn: &Connection, now: i64, row: &mut ConvoyRow, fx: &mut Effects) -> Result<()> {
    let reason = cancel_reason(row);
    let mut stmt = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'cancelled', cancel_reason = ?1, lease = NULL, finished_at = ?2,
                updated_at = ?2
             WHERE convoy_id = ?3 AND state = ?4
             RETURNING seq, id, has_dependants, tags",
        )
        .map_err(db_err)?;
    for from in [JobState::Held, JobState::Ready, JobState::Scheduled] {
        let rows: Vec<(i64, Uuid, bool, Option<String>)> = stmt
            .query_map(params![reason, now, row.id, from.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .and_then(|m| m.collect())
            .map_err(db_err)?;
        row.moved(Some(from), JobState::Cancelled, rows.len() as i64);
        fx.moved(&row.queue, Some(from), Some(JobState::Cancelled), rows.len() as i64);
        for (seq, id, has_dependants, tags) in rows {
            fx.event(
                job_event(EventType::JobCancelled, now, &row.queue, id, event_tags(tags))
                    .with(serde_json::json!({ "reason": reason })),
            );
            if has_dependants {
                super::jobs::cancel_dependants(conn, now, seq, id, JobState::Cancelled, fx)?;
            }
        }
    }
    Ok(())
}

/// Brings `row` in line with its limit (surplus ready members back to held, free slots to
/// held members), ends it when it is done, and records progress.
fn settle(conn: &Connection, now: i64, row: &mut ConvoyRow, limits: &Limits, fx: &mut Effects) -> Result<()> {
    let surplus = row.surplus();
    if surplus > 0 {
        let n = conn
            .prepare_cached(
                "UPDATE jobs SET state = 'held', updated_at = ?1
                 WHERE seq IN (SELECT seq FROM jobs WHERE convoy_id = ?2 AND state = 'ready'
                               ORDER BY priority, seq DESC LIMIT ?3)",
            )
            .and_then(|mut s| s.execute(params![now, row.id, surplus]))
            .map_err(db_err)? as i64;
        row.moved(Some(JobState::Ready), JobState::Held, n);
        fx.moved(&row.queue, Some(JobState::Ready), Some(JobState::Held), n);
    }
    let free = row.releasable();
    if free > 0 {
        let n = conn
            .prepare_cached(
                "UPDATE jobs SET state = 'ready', run_at = ?1, updated_at = ?1
                 WHERE seq IN (SELECT seq FROM jobs WHERE convoy_id = ?2 AND state = 'held'
                               ORDER BY priority DESC, seq LIMIT ?3)",
            )
            .and_then(|mut s| s.execute(params![now, row.id, free]))
            .map_err(db_err)? as i64;
        row.moved(Some(JobState::Held), JobState::Ready, n);
        fx.moved(&row.queue, Some(JobState::Held), Some(JobState::Ready), n);
        if n > 0 {
            fx.wake(&row.queue);
        }
    }
    if row.is_live() && row.is_done() {
        finish(conn, now, row, limits, fx)?;
    }
    progress(conn, now, row, fx)
}

fn progress(conn: &Connection, now: i64, row: &mut ConvoyRow, fx: &mut Effects) -> Result<()> {
    if row.progress_due(now) {
        let live = live_counts(conn, &row.id)?;
        fx.event(row.progress_event(now, live));
        row.progress_at = now;
    }
    Ok(())
}

/// Ends `row`: its state, the completion job (keyed, so enqueued once), the event.
fn finish(conn: &Connection, now: i64, row: &mut ConvoyRow, limits: &Limits, fx: &mut Effects) -> Result<()> {
    let state = row.final_state();
    if let Some(on_complete) = &row.on_complete {
        let failed_ids: Vec<Uuid> = conn
            .prepare_cached(
                "SELECT id FROM jobs WHERE convoy_id = ?1 AND state = 'dead' ORDER BY seq LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(params![row.id, limits.max_convoy_failed_ids as i64], |r| r.get(0))?.collect()
            })
            .map_err(db_err)?;
        let job = on_complete.job(&row.summary(state, failed_ids));
        let out = super::jobs::enqueue(conn, now, vec![job], &crate::LedgerSettings::default(), fx)?;
        row.on_complete_job_id = Some(out[0].id);
    }
    row.state = state;
    row.finished_at = Some(now);
    fx.event(row.completed_event(now));
    fx.wake(&convoy::wake_key(&row.id));
    Ok(())
}

/// A member of convoy `convoy_id` moved (called by the job commands in their transaction):
/// the counters, the adaptive limit, fail-fast, released slots and the end follow.
pub fn member_moved(
    conn: &Connection,
    now: i64,
    convoy_id: &str,
    mv: Move,
    limits: &Limits,
    fx: &mut Effects,
) -> Result<()> {
    members_moved(conn, now, vec![(convoy_id.to_string(), mv)], limits, fx)
}

/// Several members moved in one command (a batch of completions): each convoy is read,
/// settled and written once for all of its moves.
pub fn members_moved(
    conn: &Connection,
    now: i64,
    mut moves: Vec<(String, Move)>,
    limits: &Limits,
    fx: &mut Effects,
) -> Result<()> {
    moves.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rest = moves.as_slice();
    while let Some((convoy_id, _)) = rest.first() {
        let n = rest.iter().take_while(|(c, _)| c == convoy_id).count();
        let (group, tail) = rest.split_at(n);
        rest = tail;
        let Some(mut row) = load(conn, convoy_id)? else { continue };
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
                fx.event(row.limit_event(now, &change));
                crate::metrics::limit_changed(change.reason);
            }
            if mv.to == JobState::Dead && row.fails_fast() {
                row.state = ConvoyState::Sealed;
                cancel_rest(conn, now, &mut row, fx)?;
            }
        }
        if row.is_stopping() {
            // A member of a cancelled or failed-fast convoy that went back to retry stops here.
            cancel_rest(conn, now, &mut row, fx)?;
        }
        settle(conn, now, &mut row, limits, fx)?;
        save(conn, &row)?;
    }
    Ok(())
}

/// A member's worker reported its load with a heartbeat.
pub fn member_pressure(conn: &Connection, convoy_id: &str, p: f64) -> Result<()> {
    let Some(mut row) = load(conn, convoy_id)? else { return Ok(()) };
    if row.pressure(p) {
        save(conn, &row)?;
    }
    Ok(())
}

/// Where a replayed dead member (already set `ready` by the replay) goes: `held` in its live
/// convoy (a free slot releases it at once), or `ready` on its own when the convoy ended (it
/// leaves the convoy). The caller counts the move from `dead` to the state returned.
pub fn replay_member(
    conn: &Connection,
    now: i64,
    seq: i64,
    convoy_id: &str,
    limits: &Limits,
    fx: &mut Effects,
) -> Result<JobState> {
    let row = load(conn, convoy_id)?.filter(|r| r.is_live());
    let Some(mut row) = row else {
        conn.prepare_cached("UPDATE jobs SET convoy_id = NULL WHERE seq = ?1")
            .and_then(|mut s| s.execute([seq]))
            .map_err(db_err)?;
        return Ok(JobState::Ready);
    };
    conn.prepare_cached("UPDATE jobs SET state = 'held' WHERE seq = ?1")
        .and_then(|mut s| s.execute([seq]))
        .map_err(db_err)?;
    row.moved(Some(JobState::Dead), JobState::Held, 1);
    settle(conn, now, &mut row, limits, fx)?;
    save(conn, &row)?;
    Ok(JobState::Held)
}

/// One page of convoys after `cursor` (a `seq`).
pub fn list(
    conn: &Connection,
    filter: &ConvoyFilter,
    limit: usize,
    cursor: Option<i64>,
) -> Result<Page<Convoy>> {
    let mut sql = format!("SELECT {CONVOY_COLS}, {LIVE_COUNTS} FROM convoys c WHERE c.seq > ?1");
    if filter.queue.is_some() {
        sql.push_str(" AND c.queue = ?2");
    }
    if let Some(state) = filter.state {
        sql.push_str(&format!(" AND c.state = '{}'", state.as_str()));
    }
    sql.push_str(" ORDER BY c.seq LIMIT ?3");
    let mut s = conn.prepare_cached(&sql).map_err(db_err)?;
    s.raw_bind_parameter(1, cursor.unwrap_or(0)).map_err(db_err)?;
    if let Some(q) = &filter.queue {
        s.raw_bind_parameter(2, q).map_err(db_err)?;
    }
    s.raw_bind_parameter(3, limit as i64 + 1).map_err(db_err)?;
    let mut rows = s.raw_query();
    let mut items = Vec::new();
    let mut more = false;
    let mut last = 0;
    while let Some(r) = rows.next().map_err(db_err)? {
        if items.len() == limit {
            more = true;
            break;
        }
        let row = decode(r).map_err(db_err)?.decode()?;
        last = row.seq;
        items.push(row.view(live(r).map_err(db_err)?));
    }
    Ok(Page { items, next_cursor: more.then(|| last.to_string()) })
}

/// One page of a convoy's members after `cursor` (a job `seq`).
pub fn members(
    conn: &Connection,
    id: &str,
    state: Option<JobState>,
    limit: usize,
    cursor: Option<i64>,
) -> Result<Page<MemberView>> {
    let exists: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM convoys WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .map_err(db_err)?;
    if exists.is_none() {
        return Err(convoy::not_found(id));
    }
    let mut sql =
        "SELECT seq, id, state, attempt, started_at, finished_at FROM jobs WHERE convoy_id = ?1 AND seq > ?2"
            .to_string();
    if let Some(st) = state {
        sql.push_str(&format!(" AND state = '{}'", st.as_str()));
    }
    sql.push_str(" ORDER BY seq LIMIT ?3");
    // seq, id, state, attempt, started_at, finished_at
    type MemberRow = (i64, Uuid, String, u32, Option<i64>, Option<i64>);
    let rows: Vec<MemberRow> = conn
        .prepare_cached(&sql)
        .and_then(|mut s| {
            s.query_map(params![id, cursor.unwrap_or(0), limit as i64 + 1], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })?
            .collect()
        })
        .map_err(db_err)?;
    let more = rows.len() > limit;
    let mut items = Vec::with_capacity(rows.len().min(limit));
    let mut last = 0;
    for (seq, id, st, attempt, started, finished) in rows.into_iter().take(limit) {
        last = seq;
        items.push(MemberView {
            id,
            state: state_of(&st)?,
            attempt,
            started_at: started.map(Timestamp),
            finished_at: finished.map(Timestamp),
        });
    }
    Ok(Page { items, next_cursor: more.then(|| last.to_string()) })
}

/// Deletes convoys that ended at or before `before_ms`, with their member keys; their
/// members stay, as plain jobs.
pub fn prune(conn: &Connection, before_ms: i64, max: usize) -> Result<u64> {
    let ids: Vec<String> = conn
        .prepare_cached(
            "DELETE FROM convoys WHERE seq IN (SELECT seq FROM convoys WHERE finished_at <= ?1 LIMIT ?2)
             RETURNING id",
        )
        .and_then(|mut s| s.query_map(params![before_ms, max as i64], |r| r.get(0))?.collect())
        .map_err(db_err)?;
    let mut keys = conn.prepare_cached("DELETE FROM convoy_keys WHERE convoy_id = ?1").map_err(db_err)?;
    // Members outlive their convoy as plain jobs: a new convoy of the same id shares nothing.
    let mut detach =
        conn.prepare_cached("UPDATE jobs SET convoy_id = NULL WHERE convoy_id = ?1").map_err(db_err)?;
    for id in &ids {
        keys.execute([id]).map_err(db_err)?;
        detach.execute([id]).map_err(db_err)?;
    }
    Ok(ids.len() as u64)
}

/// Live convoys by state and their held members.
pub fn gauges(conn: &Connection) -> Result<ConvoyGauges> {
    conn.prepare_cached(
        "SELECT coalesce(sum(state = 'open'), 0), coalesce(sum(state = 'sealed'), 0), coalesce(sum(held), 0)
         FROM convoys WHERE finished_at IS NULL",
    )
    .and_then(|mut s| {
        s.query_row([], |r| {
            Ok(ConvoyGauges {
                open: r.get::<_, i64>(0)? as u64,
                sealed: r.get::<_, i64>(1)? as u64,
                held: r.get::<_, i64>(2)? as u64,
            })
        })
    })
    .map_err(db_err)
}

/// The convoy invariants, each as a count of violating convoys.
pub fn invariants(conn: &Connection) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (what, cond) in INVARIANTS {
        let n: i64 = conn
            .query_row(&format!("SELECT count(*) FROM convoys c WHERE {cond}"), [], |r| r.get(0))
            .map_err(db_err)?;
        if n > 0 {
            out.push(format!("{n} × {what}"));
        }
    }
    Ok(out)
}

#[async_trait]
impl ConvoyStore for SqliteStore {
    async fn create_convoy(&self, convoy: NewConvoy) -> Result<ConvoyCreated> {
        let limits = self.limits.clone();
        self.write("convoy_create", move |c, now, fx| create(c, now, convoy, &limits, fx)).await
    }

    async fn add_convoy_members(&self, id: &str, members: Vec<NewJob>) -> Result<Vec<EnqueueOutcome>> {
        let (id, limits) = (id.to_string(), self.limits.clone());
        self.write("convoy_add", move |c, now, fx| add(c, now, &id, members, &limits, fx)).await
    }

    async fn seal_convoy(&self, id: &str) -> Result<Convoy> {
        let (id, limits) = (id.to_string(), self.limits.clone());
        self.write("convoy_seal", move |c, now, fx| seal(c, now, &id, &limits, fx)).await
    }

    async fn cancel_convoy(&self, id: &str) -> Result<Convoy> {
        let (id, limits) = (id.to_string(), self.limits.clone());
        self.write("convoy_cancel", move |c, now, fx| cancel(c, now, &id, &limits, fx)).await
    }

    async fn get_convoy(&self, id: &str) -> Result<Convoy> {
        let id = id.to_string();
        self.readers.read(move |c| load_view(c, &id)?.ok_or_else(|| convoy::not_found(&id))).await
    }

    async fn list_convoys(&self, filter: ConvoyFilter, page: PageRequest) -> Result<Page<Convoy>> {
        let (limit, cursor) = (page.limit, parse_cursor(page.cursor)?);
        self.readers.read(move |c| list(c, &filter, limit, cursor)).await
    }

    async fn convoy_members(
        &self,
        id: &str,
        state: Option<JobState>,
        page: PageRequest,
    ) -> Result<Page<MemberView>> {
        let (id, limit, cursor) = (id.to_string(), page.limit, parse_cursor(page.cursor)?);
        self.readers.read(move |c| members(c, &id, state, limit, cursor)).await
    }

    async fn prune_convoys(&self, before_ms: i64, max: usize) -> Result<u64> {
        self.write("convoy_prune", move |c, _, _| prune(c, before_ms, max)).await
    }

    async fn convoy_gauges(&self) -> Result<ConvoyGauges> {
        self.readers.read(gauges).await
    }
}
