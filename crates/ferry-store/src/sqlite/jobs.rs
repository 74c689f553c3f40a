//! The job commands as SQL over one SQLite connection.
//!
//! Write functions run on the writer thread inside the writer's transaction (see `writer`),
//! nothing else writing meanwhile; each checks everything before it writes, because a command
//! that fails after writing poisons the whole batch (the writer rolls it back and its batch
//! mates are answered `unavailable`). Read functions run on a read-only connection.

use super::counts::Counts;
use super::db_err;
use super::{SqliteStore, parse_cursor};
use crate::JobStore;
use crate::convoy_rows::Move;
use crate::effects::Effects;
use crate::rows::*;
use async_trait::async_trait;
use ferry_core::validate::DEFAULT_TIMEOUT_MS;
use ferry_core::{
    Backoff, ClaimRequest, ClaimedJob, CompleteItem, DeadSelector, EnqueueOutcome, Error, ErrorCode, Event,
    EventType, FailItem, FailOutcome, HeartbeatOutcome, Jitter, Job, JobFilter, JobState, Limits, NewJob,
    Page, QueueStats, ReapOutcome, Replayed, Result, Timestamp,
};
use ferry_core::{HeartbeatRequest, PageRequest};
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Inserts a batch; duplicates by unique key return the existing id. All or nothing: every
/// dependency is resolved before the first insert, so a refused batch has written nothing.
pub fn enqueue(
    conn: &Connection,
    now: i64,
    mut jobs: Vec<NewJob>,
    settings: &crate::LedgerSettings,
    fx: &mut Effects,
) -> Result<Vec<EnqueueOutcome>> {
    let batch = jobs.len() > 1;
    let mut out = Vec::with_capacity(jobs.len());
    let mut find_unique = conn
        .prepare_cached(&format!(
            "SELECT id FROM jobs WHERE queue = ?1 AND unique_key = ?2 AND state NOT IN {FINISHED}"
        ))
        .map_err(db_err)?;
    let mut find_dep = conn.prepare_cached("SELECT seq, state FROM jobs WHERE id = ?1").map_err(db_err)?;
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO jobs (id, queue, state, priority, run_at, payload, max_attempts, backoff_base_ms,
                backoff_factor, backoff_max_ms, backoff_jitter, lease_ms, unique_key, tags, depends_on,
                pending_deps, cancel_reason, created_at, updated_at, finished_at, timeout_ms, payment, hold_open)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?18, ?19, ?20,
                ?21, ?22)",
        )
        .map_err(db_err)?;
    let mut add_dep = conn
        .prepare_cached("INSERT OR IGNORE INTO job_deps (dep_seq, job_seq) VALUES (?1, ?2)")
        .map_err(db_err)?;
    let mut mark_dep =
        conn.prepare_cached("UPDATE jobs SET has_dependants = 1 WHERE seq = ?1").map_err(db_err)?;
    // Check first, then write: every dependency is resolved before anything is inserted, so
    // a rejected batch has written nothing (the writer relies on this; see `writer`).
    let mut resolved = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        let mut pending = Vec::new();
        let mut cancel_reason: Option<String> = None;
        for (j, dep) in job.depends_on.iter().enumerate() {
            let found: Option<(i64, String)> =
                find_dep.query_row([dep], |r| Ok((r.get(0)?, r.get(1)?))).optional().map_err(db_err)?;
            let Some((dep_seq, dep_state)) = found else {
                let e = Error::invalid(format!("depends_on[{j}]"), format!("no job {dep} to depend on"));
                return Err(if batch { e.within(&format!("jobs[{i}]")) } else { e });
            };
            match state_of(&dep_state)? {
                JobState::Completed => {}
                JobState::Dead | JobState::Cancelled => {
                    cancel_reason.get_or_insert_with(|| format!("dependency {dep} is {dep_state}"));
                }
                _ => pending.push(dep_seq),
            }
        }
        resolved.push((pending, cancel_reason));
    }
    // Ids are chosen before anything is written, so the holds of paid jobs (which name their
    // job) are planned, and refused, before the first insert too.
    let ids: Vec<Uuid> = jobs.iter().map(|_| Uuid::now_v7()).collect();
    let mut holds = Vec::new();
    let mut keys_seen = std::collections::HashSet::new();
    for (i, job) in jobs.iter_mut().enumerate() {
        let fresh = match &job.unique_key {
            Some(key) => {
                keys_seen.insert((job.queue.clone(), key.clone()))
                    && find_unique
                        .query_row(params![job.queue, key], |r| r.get::<_, Uuid>(0))
                        .optional()
                        .map_err(db_err)?
                        .is_none()
            }
            None => true,
        };
        if let Some(p) = job.payment.as_mut()
            && fresh
            && resolved[i].1.is_none()
        {
            p.hold = ferry_core::ledger::hold_id(ids[i], 0);
            holds.push((i, ids[i], p.clone()));
        }
    }
    super::ledger::hold_jobs(conn, now, &holds, settings, fx)?;
    let held: std::collections::HashSet<usize> = holds.iter().map(|(i, ..)| *i).collect();
    for (i, (job, (pending, cancel_reason))) in jobs.into_iter().zip(resolved).enumerate() {
        if let Some(key) = &job.unique_key {
            // An import dedups against jobs in any state, so a re-run creates nothing.
            let existing: Option<Uuid> = if job.import.is_some() {
                conn.prepare_cached(
                    "SELECT id FROM jobs WHERE queue = ?1 AND unique_key = ?2 AND unique_key IS NOT NULL
                     ORDER BY seq DESC LIMIT 1",
                )
                .and_then(|mut s| s.query_row(params![job.queue, key], |r| r.get(0)).optional())
                .map_err(db_err)?
            } else {
                find_unique.query_row(params![job.queue, key], |r| r.get(0)).optional().map_err(db_err)?
            };
            if let Some(id) = existing {
                out.push(EnqueueOutcome { id, duplicate: true });
                continue;
            }
        }
        let run_at = job.run_at.resolve(now);
        let state = initial_state(&job, run_at, now, !pending.is_empty(), cancel_reason.is_some());
        let id = ids[i];
        let pending_deps = if state == JobState::Waiting { pending.len() as i64 } else { 0 };
        let payment =
            job.payment.as_ref().filter(|_| held.contains(&i)).map(crate::ledger_rows::payment_text);
        insert
            .execute(params![
                id,
                job.queue,
                state.as_str(),
                job.priority,
                run_at,
                job.payload.get(),
                job.max_attempts,
                job.backoff.base_ms,
                job.backoff.factor,
                job.backoff.max_ms,
                job.backoff.jitter.0,
                job.lease_ms,
                job.unique_key,
                list_json(&job.tags),
                list_json(&job.depends_on),
                pending_deps,
                cancel_reason,
                now,
                (state.is_finished()).then_some(now),
                job.timeout_ms,
                payment,
                i64::from(held.contains(&i)),
            ])
            .map_err(db_err)?;
        if let Some(ferry_core::Import::Completed { result }) = &job.import {
            conn.prepare_cached("UPDATE jobs SET result = ?1, attempt = 1, started_at = ?2 WHERE seq = ?3")
                .and_then(|mut s| {
                    s.execute(params![result.as_ref().map(|r| r.get()), now, conn.last_insert_rowid()])
                })
                .map_err(db_err)?;
        }
        if state == JobState::Waiting {
            let seq = conn.last_insert_rowid();
            for dep_seq in pending {
                add_dep.execute([dep_seq, seq]).map_err(db_err)?;
                mark_dep.execute([dep_seq]).map_err(db_err)?;
            }
        }
        fx.moved(&job.queue, None, Some(state), 1);
        fx.event(enqueued_event(now, &job.queue, id, &job.tags, state));
        match state {
            JobState::Ready => fx.wake(&job.queue),
            JobState::Scheduled => fx.due(run_at),
            _ => {}
        }
        out.push(EnqueueOutcome { id, duplicate: false });
    }
    Ok(out)
}

/// Leases up to `req.max` ready jobs, best first, within the queue's flow limits: at most
/// `max_running` running (`running` counts them, exactly: the writer is serial) and one
/// token of the start-rate bucket per job, the bucket stored back on the queue row.
pub fn claim(
    conn: &Connection,
    now: i64,
    req: &ClaimRequest,
    running: impl FnOnce() -> i64,
    fx: &mut Effects,
) -> Result<Vec<ClaimedJob>> {
    let queue: Option<(bool, Flow)> = conn
        .prepare_cached(
            "SELECT paused, max_running, max_starts_per_sec, max_depth, tokens, tokens_at FROM queues WHERE name = ?1",
        )
        .and_then(|mut s| {
            s.query_row([&req.queue], |r| {
                Ok((
                    r.get(0)?,
                    Flow {
                        limits: limits_from(r.get(1)?, r.get(2)?, r.get(3)?),
                        tokens: r.get(4)?,
                        tokens_at: r.get(5)?,
                    },
                ))
            })
            .optional()
        })
        .map_err(db_err)?;
    let (paused, flow) = queue.unwrap_or_default();
    if paused {
        return Ok(Vec::new());
    }
    let max = if flow.limits_claims() { flow.allowance(req.max, running, now) } else { req.max };
    if max == 0 {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease = seq || '.' || lower(hex(randomblob(12))),
                lease_expires_at = ?1 + coalesce(?2, lease_ms), worker = ?3, started_at = ?1, updated_at = ?1
             WHERE seq IN (SELECT seq FROM jobs WHERE queue = ?4 AND state = 'ready'
                           ORDER BY priority DESC, run_at, seq LIMIT ?5)
             RETURNING seq, id, payload, attempt, max_attempts, priority, tags, lease, lease_expires_at, run_at,
                timeout_ms",
        )
        .map_err(db_err)?;
    let mut rows =
        stmt.query(params![now, req.lease_ms, req.worker, req.queue, max as i64]).map_err(db_err)?;
    let mut jobs: Vec<(i64, i64, ClaimedJob)> = Vec::with_capacity(max.min(1024));
    while let Some(r) = rows.next().map_err(db_err)? {
        let job = ClaimedJob {
            id: r.get(1).map_err(db_err)?,
            queue: req.queue.clone(),
            payload: raw(r.get(2).map_err(db_err)?)?,
            attempt: r.get(3).map_err(db_err)?,
            max_attempts: r.get(4).map_err(db_err)?,
            priority: r.get(5).map_err(db_err)?,
            tags: json_list(r.get(6).map_err(db_err)?)?,
            lease: r.get(7).map_err(db_err)?,
            lease_expires_at: Timestamp(r.get(8).map_err(db_err)?),
            timeout_ms: r.get::<_, Option<i64>>(10).map_err(db_err)?.unwrap_or(DEFAULT_TIMEOUT_MS),
        };
        jobs.push((r.get(0).map_err(db_err)?, r.get(9).map_err(db_err)?, job));
    }
    drop(rows);
    if let Some(tokens) = flow.tokens_now(now).filter(|_| !jobs.is_empty()) {
        conn.prepare_cached("UPDATE queues SET tokens = ?1, tokens_at = ?2 WHERE name = ?3")
            .and_then(|mut s| s.execute(params![tokens - jobs.len() as f64, now, req.queue]))
            .map_err(db_err)?;
    }
    fx.moved(&req.queue, Some(JobState::Ready), Some(JobState::Running), jobs.len() as i64);
    for (_, run_at, j) in &jobs {
        fx.event(job_event(EventType::JobStarted, now, &j.queue, j.id, j.tags.clone()).with(
            serde_json::json!({ "attempt": j.attempt, "worker": req.worker, "waited_ms": now - run_at }),
        ));
    }
    // RETURNING order is unspecified: restore the claim order.
    jobs.sort_by(|a, b| b.2.priority.cmp(&a.2.priority).then(a.1.cmp(&b.1)).then(a.0.cmp(&b.0)));
    Ok(jobs.into_iter().map(|(_, _, j)| j).collect())
}

/// Extends a live lease.
pub fn heartbeat(conn: &Connection, now: i64, req: &HeartbeatRequest) -> Result<HeartbeatOutcome> {
    let (id, lease) = (req.id, req.lease.as_str());
    let expires: Option<(i64, Option<String>)> = conn
        .prepare_cached(
            "UPDATE jobs SET lease_expires_at = ?1 + coalesce(?2, lease_ms), updated_at = ?1
             WHERE seq = ?5 AND id = ?3 AND state = 'running' AND lease = ?4 AND lease_expires_at > ?1
             RETURNING lease_expires_at, convoy_id",
        )
        .and_then(|mut s| {
            s.query_row(params![now, req.extend_ms, id, lease, lease_seq(lease)], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
        })
        .map_err(db_err)?;
    match expires {
        Some((t, convoy_id)) => {
            if let (Some(cid), Some(p)) = (convoy_id, req.pressure) {
                super::convoys::member_pressure(conn, &cid, p)?;
            }
            Ok(HeartbeatOutcome { id, lease_expires_at: Timestamp(t) })
        }
        None => Err(lease_failure(conn, id)?),
    }
}

/// Returns a leased job to `ready` without counting the attempt.
pub fn release(conn: &Connection, now: i64, id: Uuid, lease: &str, fx: &mut Effects) -> Result<JobState> {
    let queue: Option<String> = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'ready', attempt = attempt - 1, lease = NULL, lease_expires_at = NULL,
                started_at = NULL, updated_at = ?1
             WHERE seq = ?2 AND id = ?3 AND state = 'running' AND lease = ?4 AND lease_expires_at > ?1
             RETURNING queue",
        )
        .and_then(|mut s| s.query_row(params![now, lease_seq(lease), id, lease], |r| r.get(0)).optional())
        .map_err(db_err)?;
    match queue {
        Some(q) => {
            fx.moved(&q, Some(JobState::Running), Some(JobState::Ready), 1);
            fx.wake(&q);
            Ok(JobState::Ready)
        }
        None => Err(lease_failure(conn, id)?),
    }
}

/// The error for a lease check that matched no row: not found, or stale.
pub(crate) fn lease_failure(conn: &Connection, id: Uuid) -> Result<Error> {
    let exists: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM jobs WHERE id = ?1")
        .and_then(|mut s| s.query_row([id], |r| r.get(0)).optional())
        .map_err(db_err)?;
    Ok(if exists.is_some() { Error::stale_lease(id) } else { Error::job_not_found(id) })
}

/// Records one completion; a repeat with the lease that completed the job succeeds again. A
/// completed member's move is pushed to `moves`, for the caller to apply once per convoy.
pub fn complete(
    conn: &Connection,
    now: i64,
    item: CompleteItem,
    moves: &mut Vec<(String, Move)>,
    fx: &mut Effects,
) -> Result<()> {
    // seq, has_dependants, queue, tags, started_at, convoy_id
    type Done = (i64, bool, String, Option<String>, Option<i64>, Option<String>);
    let done: Option<Done> = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'completed', result = ?1, lease_expires_at = NULL, finished_at = ?2,
                updated_at = ?2
             WHERE seq = ?5 AND id = ?3 AND state = 'running' AND lease = ?4 AND lease_expires_at > ?2
             RETURNING seq, has_dependants, queue, tags, started_at, convoy_id",
        )
        .and_then(|mut s| {
            let seq = lease_seq(&item.lease);
            s.query_row(params![item.result.as_ref().map(|r| r.get()), now, item.id, item.lease, seq], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get::<_, Option<i64>>(4)?, r.get(5)?))
            })
            .optional()
        })
        .map_err(db_err)?;
    match done {
        Some((seq, has_dependants, queue, tags, started_at, convoy_id)) => {
            fx.moved(&queue, Some(JobState::Running), Some(JobState::Completed), 1);
            fx.event(completed_event(now, &queue, item.id, event_tags(tags), started_at));
            if has_dependants {
                resolve_dependants(conn, now, seq, fx)?;
            }
            if let Some(cid) = convoy_id {
                let mv = Move {
                    from: JobState::Running,
                    to: JobState::Completed,
                    attempt: Some((started_at, false)),
                    pressure: item.pressure,
                };
                moves.push((cid, mv));
            }
            Ok(())
        }
        None => {
            let row: Option<(String, Option<String>)> = conn
                .prepare_cached("SELECT state, lease FROM jobs WHERE id = ?1")
                .and_then(|mut s| s.query_row([item.id], |r| Ok((r.get(0)?, r.get(1)?))).optional())
                .map_err(db_err)?;
            match row {
                None => Err(Error::job_not_found(item.id)),
                Some((state, Some(lease))) if state == "completed" && lease == item.lease => Ok(()),
                Some(_) => Err(Error::stale_lease(item.id)),
            }
        }
    }
}

/// A dependency completed: count it off its dependants; those with none left become due.
fn resolve_dependants(conn: &Connection, now: i64, dep_seq: i64, fx: &mut Effects) -> Result<()> {
    let dependants: Vec<i64> = conn
        .prepare_cached("DELETE FROM job_deps WHERE dep_seq = ?1 RETURNING job_seq")
        .and_then(|mut s| s.query_map([dep_seq], |r| r.get(0))?.collect())
        .map_err(db_err)?;
    let mut step = conn
        .prepare_cached(
            "UPDATE jobs SET pending_deps = pending_deps - 1, updated_at = ?1,
                state = CASE WHEN pending_deps > 1 THEN 'waiting'
                             WHEN run_at > ?1 THEN 'scheduled' ELSE 'ready' END
             WHERE seq = ?2 AND state = 'waiting'
             RETURNING state, queue, run_at",
        )
        .map_err(db_err)?;
    for seq in dependants {
        let row: Option<(String, String, i64)> = step
            .query_row([now, seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()
            .map_err(db_err)?;
        match row.as_ref().map(|(s, q, t)| (s.as_str(), q, *t)) {
            Some(("ready", q, _)) => {
                fx.moved(q, Some(JobState::Waiting), Some(JobState::Ready), 1);
                fx.wake(q);
            }
            Some(("scheduled", q, t)) => {
                fx.moved(q, Some(JobState::Waiting), Some(JobState::Scheduled), 1);
                fx.due(t);
            }
            _ => {}
        }
    }
    Ok(())
}

/// A job died or was cancelled: cancel every waiting job that depends on it, transitively.
pub(super) fn cancel_dependants(
    conn: &Connection,
    now: i64,
    root_seq: i64,
    root_id: Uuid,
    root_state: JobState,
    fx: &mut Effects,
) -> Result<()> {
    let mut take =
        conn.prepare_cached("DELETE FROM job_deps WHERE dep_seq = ?1 RETURNING job_seq").map_err(db_err)?;
    let mut cancel = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'cancelled', cancel_reason = ?1, pending_deps = 0, finished_at = ?2,
                updated_at = ?2
             WHERE seq = ?3 AND state = 'waiting'
             RETURNING seq, id, has_dependants, queue, tags",
        )
        .map_err(db_err)?;
    let mut stack = vec![(root_seq, root_id, root_state)];
    while let Some((seq, id, state)) = stack.pop() {
        let reason = format!("dependency {id} is {state}");
        let dependants: Vec<i64> =
            take.query_map([seq], |r| r.get(0)).and_then(|m| m.collect()).map_err(db_err)?;
        for job_seq in dependants {
            let row: Option<(i64, Uuid, bool, String, Option<String>)> = cancel
                .query_row(params![reason, now, job_seq], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })
                .optional()
                .map_err(db_err)?;
            if let Some((s, i, has_dependants, queue, tags)) = row {
                fx.moved(&queue, Some(JobState::Waiting), Some(JobState::Cancelled), 1);
                fx.event(
                    job_event(EventType::JobCancelled, now, &queue, i, event_tags(tags))
                        .with(serde_json::json!({ "reason": reason })),
                );
                if has_dependants {
                    stack.push((s, i, JobState::Cancelled));
                }
            }
        }
    }
    Ok(())
}

fn load_leased(conn: &Connection, id: Uuid) -> Result<Option<Leased>> {
    conn.prepare_cached(
        "SELECT seq, state, lease, lease_expires_at, attempt, max_attempts, backoff_base_ms, backoff_factor,
            backoff_max_ms, backoff_jitter, queue, worker, errors, has_dependants, run_at, tags, started_at,
            convoy_id
         FROM jobs WHERE id = ?1",
    )
    .and_then(|mut s| {
        s.query_row([id], |r| {
            Ok((
                r.get::<_, String>(1)?,
                Leased {
                    seq: r.get(0)?,
                    state: JobState::Ready,
                    lease: r.get(2)?,
                    lease_expires_at: r.get(3)?,
                    attempt: r.get(4)?,
                    max_attempts: r.get(5)?,
                    backoff: Backoff {
                        base_ms: r.get(6)?,
                        factor: r.get(7)?,
                        max_ms: r.get(8)?,
                        jitter: Jitter(r.get(9)?),
                    },
                    queue: r.get(10)?,
                    worker: r.get(11)?,
                    errors: r.get(12)?,
                    has_dependants: r.get(13)?,
                    run_at: r.get(14)?,
                    tags: r.get(15)?,
                    started_at: r.get(16)?,
                    convoy_id: r.get(17)?,
                },
            ))
        })
        .optional()
    })
    .map_err(db_err)?
    .map(|(state, mut l)| {
        l.state = state_of(&state)?;
        Ok(l)
    })
    .transpose()
}

/// Records one failure: a retry after backoff, or the dead-letter queue.
pub fn fail(
    conn: &Connection,
    now: i64,
    item: FailItem,
    limits: &Limits,
    u: f64,
    fx: &mut Effects,
) -> Result<FailOutcome> {
    let id = item.id;
    let Some(job) = load_leased(conn, id)? else {
        return Err(Error::job_not_found(id));
    };
    let message = item.error.clone();
    let pressure = item.pressure;
    let (state, run_at, errors) = match decide_failure(&job, item, now, limits, u)? {
        FailDecision::Repeat(outcome) => return Ok(outcome),
        FailDecision::Stale => return Err(Error::stale_lease(id)),
        FailDecision::Apply { state, run_at, errors } => (state, run_at, errors),
    };
    conn.prepare_cached(
        "UPDATE jobs SET state = ?1, run_at = ?2, lease_expires_at = NULL, errors = ?3, updated_at = ?4,
            finished_at = ?5
         WHERE seq = ?6",
    )
    .and_then(|mut s| {
        s.execute(params![
            state.as_str(),
            run_at,
            errors,
            now,
            (state == JobState::Dead).then_some(now),
            job.seq
        ])
    })
    .map_err(db_err)?;
    fx.moved(&job.queue, Some(JobState::Running), Some(state), 1);
    for e in failure_events(&job, id, now, state, run_at, &message) {
        fx.event(e);
    }
    match state {
        JobState::Dead if job.has_dependants => {
            cancel_dependants(conn, now, job.seq, id, JobState::Dead, fx)?
        }
        JobState::Ready => fx.wake(&job.queue),
        JobState::Scheduled => fx.due(run_at),
        _ => {}
    }
    if let Some(cid) = &job.convoy_id {
        let mv = Move { from: JobState::Running, to: state, attempt: Some((job.started_at, true)), pressure };
        super::convoys::member_moved(conn, now, cid, mv, limits, fx)?;
    }
    let run_at = (state == JobState::Scheduled).then_some(Timestamp(run_at));
    Ok(FailOutcome { id, state, attempt: job.attempt, run_at })
}

/// Cancels a job that is not running (idempotent for an already cancelled job).
pub fn cancel(
    conn: &Connection,
    now: i64,
    id: Uuid,
    reason: &str,
    limits: &Limits,
    fx: &mut Effects,
) -> Result<JobState> {
    let Some(job) = load_leased(conn, id)? else {
        return Err(Error::job_not_found(id));
    };
    match job.state {
        JobState::Cancelled => return Ok(JobState::Cancelled),
        JobState::Running => {
            return Err(Error::new(
                ErrorCode::InvalidState,
                format!("job {id} is running; only a job that is not running can be cancelled"),
            ));
        }
        JobState::Completed | JobState::Dead => {
            return Err(Error::new(ErrorCode::InvalidState, format!("job {id} is already {}", job.state)));
        }
        JobState::Scheduled | JobState::Waiting | JobState::Ready | JobState::Held => {}
    }
    conn.prepare_cached(
        "UPDATE jobs SET state = 'cancelled', cancel_reason = ?1, pending_deps = 0, lease = NULL,
            finished_at = ?2, updated_at = ?2
         WHERE seq = ?3",
    )
    .and_then(|mut s| s.execute(params![reason, now, job.seq]))
    .map_err(db_err)?;
    fx.moved(&job.queue, Some(job.state), Some(JobState::Cancelled), 1);
    fx.event(
        job_event(EventType::JobCancelled, now, &job.queue, id, event_tags(job.tags.clone()))
            .with(serde_json::json!({ "reason": reason })),
    );
    if job.has_dependants {
        cancel_dependants(conn, now, job.seq, id, JobState::Cancelled, fx)?;
    }
    if let Some(cid) = &job.convoy_id {
        let mv = Move { from: job.state, to: JobState::Cancelled, attempt: None, pressure: None };
        super::convoys::member_moved(conn, now, cid, mv, limits, fx)?;
    }
    Ok(JobState::Cancelled)
}

/// Returns expired leases to ready (or dead), checking state and lease in the same statement.
pub fn reap(
    conn: &Connection,
    now: i64,
    max: usize,
    limits: &Limits,
    fx: &mut Effects,
) -> Result<ReapOutcome> {
    let expired: Vec<(Uuid, String)> = conn
        .prepare_cached(
            "SELECT id, lease FROM jobs WHERE state = 'running' AND lease_expires_at <= ?1
             ORDER BY lease_expires_at LIMIT ?2",
        )
        .and_then(|mut s| s.query_map(params![now, max as i64], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(db_err)?;
    let mut out = ReapOutcome::default();
    for (id, lease) in expired {
        match take_back(conn, now, id, &lease, Expiry::LeaseExpired, limits, fx)? {
            Some(JobState::Dead) => out.dead += 1,
            Some(_) => out.requeued += 1,
            None => {}
        }
    }
    Ok(out)
}

/// Takes back the lease `lease` of running job `id` before its worker reported (lease
/// expired, or worker lost): the attempt counts, the job goes back to `ready`, or to `dead`
/// when no attempt is left (its waiting dependants cancelled), with `why` in its history and
/// the `job.failed` + `job.retried`/`job.dead` events. The update re-checks state and lease, so
/// a job finished meanwhile is left alone (None).
pub(super) fn take_back(
    conn: &Connection,
    now: i64,
    id: Uuid,
    lease: &str,
    why: Expiry,
    limits: &Limits,
    fx: &mut Effects,
) -> Result<Option<JobState>> {
    let Some(job) = load_leased(conn, id)? else { return Ok(None) };
    let (state, errors) = decide_expiry(&job, now, limits, why)?;
    let finished = (state == JobState::Dead).then_some(now);
    let changed = conn
        .prepare_cached(
            "UPDATE jobs SET state = ?1, lease = NULL, lease_expires_at = NULL, errors = ?2, updated_at = ?3,
                finished_at = ?4
             WHERE seq = ?5 AND state = 'running' AND lease = ?6",
        )
        .and_then(|mut s| s.execute(params![state.as_str(), errors, now, finished, job.seq, lease]))
        .map_err(db_err)?;
    if changed == 0 {
        return Ok(None);
    }
    fx.moved(&job.queue, Some(JobState::Running), Some(state), 1);
    for e in failure_events(&job, id, now, state, now, why.summary()) {
        fx.event(e);
    }
    if state == JobState::Dead {
        if job.has_dependants {
            cancel_dependants(conn, now, job.seq, id, JobState::Dead, fx)?;
        }
    } else {
        fx.wake(&job.queue);
    }
    if let Some(cid) = &job.convoy_id {
        let mv = Move {
            from: JobState::Running,
            to: state,
            attempt: Some((job.started_at, true)),
            pressure: None,
        };
        super::convoys::member_moved(conn, now, cid, mv, limits, fx)?;
    }
    Ok(Some(state))
}

/// Moves due scheduled jobs to ready.
pub fn promote(conn: &Connection, now: i64, max: usize, fx: &mut Effects) -> Result<u64> {
    let queues: Vec<String> = conn
        .prepare_cached(
            "UPDATE jobs SET state = 'ready', updated_at = ?1
             WHERE seq IN (SELECT seq FROM jobs WHERE state = 'scheduled' AND run_at <= ?1 ORDER BY run_at LIMIT ?2)
             RETURNING queue",
        )
        .and_then(|mut s| s.query_map(params![now, max as i64], |r| r.get(0))?.collect())
        .map_err(db_err)?;
    for q in &queues {
        fx.moved(q, Some(JobState::Scheduled), Some(JobState::Ready), 1);
        fx.wake(q);
    }
    Ok(queues.len() as u64)
}

/// Deletes finished (completed, cancelled) jobs older than `before_ms`, at most `max`.
pub fn prune(conn: &Connection, before_ms: i64, max: usize, fx: &mut Effects) -> Result<u64> {
    let gone: Vec<(String, String)> = conn
        .prepare_cached(
            "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE state IN ('completed', 'cancelled')
                AND finished_at <= ?1 LIMIT ?2)
             RETURNING queue, state",
        )
        .and_then(|mut s| {
            s.query_map(params![before_ms, max as i64], |r| Ok((r.get(0)?, r.get(1)?)))?.collect()
        })
        .map_err(db_err)?;
    for (queue, state) in &gone {
        fx.moved(queue, Some(state_of(state)?), None, 1);
    }
    Ok(gone.len() as u64)
}

type DeadRow = (i64, Uuid, String, Option<String>);

/// Dead jobs a replay may bring back: none whose unique key an unfinished job of its queue
/// holds now (it stays dead; replaying it would break the key's uniqueness).
const REPLAYABLE: &str = "AND NOT EXISTS (SELECT 1 FROM jobs h WHERE h.queue = jobs.queue
    AND h.unique_key = jobs.unique_key AND h.state NOT IN ('completed', 'dead', 'cancelled'))";

fn dead_seqs(conn: &Connection, selector: &DeadSelector, max: usize, replay: bool) -> Result<Vec<DeadRow>> {
    let map = |r: &Row| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?));
    let only = if replay { REPLAYABLE } else { "" };
    match selector {
        DeadSelector::Ids(ids) => {
            let mut s = conn
                .prepare_cached(&format!(
                    "SELECT seq, id, queue, tags FROM jobs WHERE id = ?1 AND state = 'dead' {only}"
                ))
                .map_err(db_err)?;
            let mut out = Vec::new();
            for id in ids.iter().take(max) {
                if let Some(row) = s.query_row([id], map).optional().map_err(db_err)? {
                    out.push(row);
                }
            }
            Ok(out)
        }
        DeadSelector::Queue(q) => conn
            .prepare_cached(&format!(
                "SELECT seq, id, queue, tags FROM jobs WHERE queue = ?1 AND state = 'dead' {only}
                 ORDER BY seq LIMIT ?2"
            ))
            .and_then(|mut s| s.query_map(params![q, max as i64], map)?.collect())
            .map_err(db_err),
    }
}

/// Dead jobs back to ready: attempts reset, history kept. A paid job places a new hold first;
/// refused, it stays dead (and is listed).
pub fn replay(
    conn: &Connection,
    now: i64,
    selector: &DeadSelector,
    max: usize,
    limits: &Limits,
    settings: &crate::LedgerSettings,
    fx: &mut Effects,
) -> Result<Replayed> {
    let rows = dead_seqs(conn, selector, max, true)?;
    // Checked again per row: two dead jobs of one key may be selected together; the first
    // brought back holds the key, and the second stays dead (check before write: a broken
    // constraint would poison the writer's whole batch).
    let mut s = conn
        .prepare_cached(&format!(
            "UPDATE jobs SET state = 'ready', attempt = 0, lease = NULL, run_at = ?1, finished_at = NULL,
                updated_at = ?1
             WHERE seq = ?2 {REPLAYABLE}"
        ))
        .map_err(db_err)?;
    let mut still =
        conn.prepare_cached(&format!("SELECT 1 FROM jobs WHERE seq = ?1 {REPLAYABLE}")).map_err(db_err)?;
    let mut paid = conn
        .prepare_cached("SELECT payment FROM jobs WHERE seq = ?1 AND payment IS NOT NULL")
        .map_err(db_err)?;
    let mut out = Replayed::default();
    let mut payments = Vec::new();
    for (seq, id, ..) in &rows {
        if let Some(text) = paid.query_row([seq], |r| r.get::<_, String>(0)).optional().map_err(db_err)? {
            let mut p = crate::ledger_rows::payment_from(&text)?;
            p.hold = ferry_core::ledger::hold_id(*id, crate::ledger_rows::hold_number(&p.hold) + 1);
            payments.push((*seq, *id, p));
        }
    }
    let mut book =
        super::ledger::holds_book(conn, now, payments.iter().map(|(_, id, p)| (*id, p)), settings)?;
    let mut convoy_of = conn.prepare_cached("SELECT convoy_id FROM jobs WHERE seq = ?1").map_err(db_err)?;
    for (seq, id, queue, tags) in rows {
        if let Some((_, _, p)) = payments.iter().find(|(s, ..)| *s == seq) {
            if still.query_row([seq], |_| Ok(())).optional().map_err(db_err)?.is_none() {
                continue;
            }
            if let Err(e) = super::ledger::hold_one(&mut book, id, p) {
                out.refused.push((id, e));
                continue;
            }
            conn.prepare_cached("UPDATE jobs SET payment = ?2, hold_open = 1 WHERE seq = ?1")
                .and_then(|mut u| u.execute(params![seq, crate::ledger_rows::payment_text(p)]))
                .map_err(db_err)?;
        }
        if s.execute(params![now, seq]).map_err(db_err)? == 0 {
            continue;
        }
        let convoy_id: Option<String> = convoy_of.query_row([seq], |r| r.get(0)).map_err(db_err)?;
        let state = match convoy_id {
            Some(cid) => super::convoys::replay_member(conn, now, seq, &cid, limits, fx)?,
            None => JobState::Ready,
        };
        fx.moved(&queue, Some(JobState::Dead), Some(state), 1);
        fx.event(job_event(EventType::JobReplayed, now, &queue, id, event_tags(tags)));
        fx.wake(&queue);
        out.ids.push(id);
    }
    if let Some(book) = book {
        super::ledger::store(conn, book, settings, fx)?;
    }
    Ok(out)
}

/// Deletes dead jobs.
pub fn purge(conn: &Connection, selector: &DeadSelector, max: usize, fx: &mut Effects) -> Result<u64> {
    let rows = dead_seqs(conn, selector, max, false)?;
    let mut del = conn.prepare_cached("DELETE FROM jobs WHERE seq = ?1").map_err(db_err)?;
    let mut del_deps = conn.prepare_cached("DELETE FROM job_deps WHERE dep_seq = ?1").map_err(db_err)?;
    for (seq, _, queue, _) in &rows {
        del.execute([seq]).map_err(db_err)?;
        del_deps.execute([seq]).map_err(db_err)?;
        fx.moved(queue, Some(JobState::Dead), None, 1);
    }
    Ok(rows.len() as u64)
}

/// Pauses or resumes a queue.
pub fn set_paused(conn: &Connection, now: i64, queue: &str, paused: bool, fx: &mut Effects) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO queues (name, paused, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
    )
    .and_then(|mut s| s.execute(params![queue, paused, now]))
    .map_err(db_err)?;
    fx.event(queue_event(now, queue, paused));
    if !paused {
        fx.wake(queue);
    }
    Ok(())
}

fn job_from_row(r: &Row) -> Result<(i64, Job)> {
    let g = |e| db_err(e);
    let state: String = r.get(3).map_err(g)?;
    let ts = |i: usize| -> Result<Option<Timestamp>> {
        Ok(r.get::<_, Option<i64>>(i).map_err(db_err)?.map(Timestamp))
    };
    Ok((
        r.get(0).map_err(g)?,
        Job {
            id: r.get(1).map_err(g)?,
            queue: r.get(2).map_err(g)?,
            state: state_of(&state)?,
            payload: raw(r.get(4).map_err(g)?)?,
            priority: r.get(5).map_err(g)?,
            attempt: r.get(6).map_err(g)?,
            max_attempts: r.get(7).map_err(g)?,
            backoff: Backoff {
                base_ms: r.get(8).map_err(g)?,
                factor: r.get(9).map_err(g)?,
                max_ms: r.get(10).map_err(g)?,
                jitter: Jitter(r.get(11).map_err(g)?),
            },
            lease_ms: r.get(12).map_err(g)?,
            unique_key: r.get(13).map_err(g)?,
            depends_on: json_list(r.get(14).map_err(g)?)?,
            tags: json_list(r.get(15).map_err(g)?)?,
            run_at: Timestamp(r.get(16).map_err(g)?),
            created_at: Timestamp(r.get(17).map_err(g)?),
            updated_at: Timestamp(r.get(18).map_err(g)?),
            started_at: ts(19)?,
            finished_at: ts(20)?,
            lease_expires_at: ts(21)?,
            worker: r.get(22).map_err(g)?,
            result: r.get::<_, Option<String>>(23).map_err(g)?.map(raw).transpose()?,
            errors: json_list(r.get(24).map_err(g)?)?,
            cancel_reason: r.get(25).map_err(g)?,
            timeout_ms: r.get::<_, Option<i64>>(26).map_err(g)?.unwrap_or(DEFAULT_TIMEOUT_MS),
            convoy_id: r.get(27).map_err(g)?,
            payment: r
                .get::<_, Option<String>>(28)
                .map_err(g)?
                .map(|p| crate::ledger_rows::payment_from(&p))
                .transpose()?,
        },
    ))
}

/// One job by id.
pub fn get(conn: &Connection, id: Uuid) -> Result<Job> {
    let mut s = conn.prepare_cached(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = ?1")).map_err(db_err)?;
    let mut rows = s.query([id]).map_err(db_err)?;
    match rows.next().map_err(db_err)? {
        Some(r) => Ok(job_from_row(r)?.1),
        None => Err(Error::job_not_found(id)),
    }
}

/// One page of jobs after `cursor` (a `seq`), in insertion order.
///
/// The state is written into the SQL as a literal (it comes from an enum), so SQLite can use
/// the partial index of that state.
pub fn list(conn: &Connection, filter: &JobFilter, limit: usize, cursor: Option<i64>) -> Result<Page<Job>> {
    let mut sql = format!("SELECT {JOB_COLS} FROM jobs WHERE seq > ?1");
    if filter.queue.is_some() {
        sql.push_str(" AND queue = ?2");
    }
    if let Some(state) = filter.state {
        sql.push_str(&format!(" AND state = '{}'", state.as_str()));
    }
    sql.push_str(" ORDER BY seq LIMIT ?3");
    let mut s = conn.prepare_cached(&sql).map_err(db_err)?;
    s.raw_bind_parameter(1, cursor.unwrap_or(0)).map_err(db_err)?;
    if let Some(q) = &filter.queue {
        s.raw_bind_parameter(2, q).map_err(db_err)?;
    }
    s.raw_bind_parameter(3, limit as i64 + 1).map_err(db_err)?;
    let mut rows = s.raw_query();
    let mut items = Vec::with_capacity(limit.min(1024));
    let mut last_seq = 0;
    let mut more = false;
    while let Some(r) = rows.next().map_err(db_err)? {
        if items.len() == limit {
            more = true;
            break;
        }
        let (seq, job) = job_from_row(r)?;
        last_seq = seq;
        items.push(job);
    }
    Ok(Page { items, next_cursor: more.then(|| last_seq.to_string()) })
}

/// Every queue's counts by state, counted from the table (slow: for start-up and checks).
pub fn count_rows(conn: &Connection) -> Result<Vec<(String, JobState, i64)>> {
    let mut s = conn
        .prepare_cached("SELECT queue, state, count(*) FROM jobs GROUP BY queue, state")
        .map_err(db_err)?;
    let rows: Vec<(String, String, i64)> = s
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .and_then(|m| m.collect())
        .map_err(db_err)?;
    rows.into_iter().map(|(q, st, n)| Ok((q, state_of(&st)?, n))).collect()
}

/// Queue stats from the in-memory counts plus the oldest ready job and pause flags.
pub fn stats(conn: &Connection, now: i64, counts: &Counts) -> Result<Vec<QueueStats>> {
    let mut by_queue: BTreeMap<String, QueueStats> = BTreeMap::new();
    let blank = |q: &str| QueueStats {
        queue: q.to_string(),
        counts: JobState::ALL.iter().map(|s| (*s, 0)).collect(),
        oldest_ready_age_ms: None,
        paused: false,
        limits: Default::default(),
    };
    for (q, c) in counts.iter() {
        if c.iter().all(|n| *n == 0) {
            continue;
        }
        let entry = by_queue.entry(q.clone()).or_insert_with(|| blank(q));
        for st in JobState::ALL {
            entry.counts.insert(st, c[st.index()].max(0) as u64);
        }
    }
    let mut s = conn
        .prepare_cached("SELECT queue, min(run_at) FROM jobs WHERE state = 'ready' GROUP BY queue")
        .map_err(db_err)?;
    let mut rows = s.query([]).map_err(db_err)?;
    while let Some(r) = rows.next().map_err(db_err)? {
        let q: String = r.get(0).map_err(db_err)?;
        let oldest: i64 = r.get(1).map_err(db_err)?;
        by_queue.entry(q.clone()).or_insert_with(|| blank(&q)).oldest_ready_age_ms =
            Some((now - oldest).max(0));
    }
    let mut s = conn
        .prepare_cached("SELECT name, paused, max_running, max_starts_per_sec, max_depth FROM queues")
        .map_err(db_err)?;
    let mut rows = s.query([]).map_err(db_err)?;
    while let Some(r) = rows.next().map_err(db_err)? {
        let q: String = r.get(0).map_err(db_err)?;
        let entry = by_queue.entry(q.clone()).or_insert_with(|| blank(&q));
        entry.paused = r.get(1).map_err(db_err)?;
        entry.limits =
            limits_from(r.get(2).map_err(db_err)?, r.get(3).map_err(db_err)?, r.get(4).map_err(db_err)?);
    }
    Ok(by_queue.into_values().collect())
}

/// Earliest run_at of scheduled jobs.
pub fn next_due(conn: &Connection) -> Result<Option<i64>> {
    conn.prepare_cached("SELECT min(run_at) FROM jobs WHERE state = 'scheduled'")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(db_err)
}

/// ferry's own invariants, each as a count of violating rows.
pub fn invariants(conn: &Connection) -> Result<Vec<String>> {
    let checks = INVARIANT_CHECKS;
    let mut out = Vec::new();
    for &(what, cond) in checks {
        let n: i64 = conn
            .query_row(&format!("SELECT count(*) FROM jobs WHERE {cond}"), [], |r| r.get(0))
            .map_err(db_err)?;
        if n > 0 {
            out.push(format!("{n} × {what}"));
        }
    }
    let dup: i64 = conn
        .query_row(
            &format!(
                "SELECT count(*) FROM (SELECT queue, unique_key FROM jobs WHERE unique_key IS NOT NULL
                 AND state NOT IN {FINISHED} GROUP BY queue, unique_key HAVING count(*) > 1)"
            ),
            [],
            |r| r.get(0),
        )
        .map_err(db_err)?;
    if dup > 0 {
        out.push(format!("{dup} × unique key held by two unfinished jobs"));
    }
    Ok(out)
}

/// Events after cursor `after`: the batch holding `after + 1`, then the ones after it.
pub fn read_events(conn: &Connection, after: u64, limit: usize) -> Result<Vec<Event>> {
    // From the batch holding the first cursor after `after`, row by row, decoding only the
    // events returned and stopping once there are `limit` of them: memory and work per read
    // are bounded by `limit`, not by the size of the batches.
    let mut stmt = conn
        .prepare_cached(
            "SELECT first_cursor, body FROM event_log
             WHERE first_cursor >= coalesce((SELECT max(first_cursor) FROM event_log WHERE first_cursor <= ?1), 0)
             ORDER BY first_cursor LIMIT ?2",
        )
        .map_err(db_err)?;
    let max_rows = crate::events::MAX_BATCH_ROWS_PER_READ as i64;
    let mut rows = stmt.query(params![crate::events::cursor_bound(after), max_rows]).map_err(db_err)?;
    let limit = limit.max(1);
    let mut out = Vec::with_capacity(limit.min(1_024));
    while out.len() < limit {
        let Some(row) = rows.next().map_err(db_err)? else { break };
        let first: i64 = row.get(0).map_err(db_err)?;
        let body = row
            .get_ref(1)
            .map_err(db_err)?
            .as_str()
            .map_err(|e| Error::internal(format!("event batch {first}: {e}")))?;
        crate::events::decode_into(first, body, after, limit, &mut out)?;
    }
    Ok(out)
}

/// Deletes old event batches (see `Store::prune_events`).
pub fn prune_events(conn: &Connection, before_ms: i64, keep: u64, max: usize) -> Result<u64> {
    let n = conn
        .prepare_cached(
            "DELETE FROM event_log WHERE id IN (
                SELECT id FROM event_log
                WHERE first_cursor < (SELECT max(first_cursor) FROM event_log)
                  AND (at < ?1 OR first_cursor + n - 1
                       <= (SELECT first_cursor + n - 1 FROM event_log ORDER BY first_cursor DESC LIMIT 1) - ?2)
                ORDER BY first_cursor LIMIT ?3)",
        )
        .and_then(|mut s| s.execute(params![before_ms, keep.min(i64::MAX as u64) as i64, max as i64]))
        .map_err(db_err)?;
    Ok(n as u64)
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn enqueue(&self, jobs: Vec<NewJob>) -> Result<Vec<EnqueueOutcome>> {
        let settings = self.ledger;
        if jobs.iter().any(|j| j.payment.is_some()) {
            self.paid.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.write("enqueue", move |c, now, fx| super::jobs::enqueue(c, now, jobs, &settings, fx)).await
    }

    async fn claim(&self, req: ClaimRequest) -> Result<Vec<ClaimedJob>> {
        assert!(req.max >= 1, "claim max is validated above the store");
        let (clock, counts) = (self.clock.clone(), self.counts.clone());
        let claim = self.writer.write_after(move |c, pending, fx| {
            // Committed counts plus this transaction's earlier commands: exact, read only when
            // the queue limits running jobs.
            let running =
                || counts.get(&req.queue, JobState::Running) + pending.get(&req.queue, JobState::Running);
            super::jobs::claim(c, clock.now_ms(), &req, running, fx)
        });
        self.metrics.timed("claim", claim).await
    }

    async fn heartbeat(&self, items: Vec<HeartbeatRequest>) -> Result<Vec<Result<HeartbeatOutcome>>> {
        let out = self
            .write("heartbeat", move |c, now, _| each_item(items, |req| super::jobs::heartbeat(c, now, &req)))
            .await;
        self.metrics.stale_items(out)
    }

    async fn release(&self, id: Uuid, lease: &str) -> Result<JobState> {
        let lease = lease.to_string();
        self.write("release", move |c, now, fx| super::jobs::release(c, now, id, &lease, fx)).await
    }

    async fn complete(&self, items: Vec<CompleteItem>) -> Result<Vec<Result<()>>> {
        let limits = self.limits.clone();
        let out = self
            .write("complete", move |c, now, fx| {
                let mut moves = Vec::new();
                let out = each_item(items, |item| super::jobs::complete(c, now, item, &mut moves, fx))?;
                super::convoys::members_moved(c, now, moves, &limits, fx)?;
                Ok(out)
            })
            .await;
        self.metrics.stale_items(out)
    }

    async fn fail(&self, items: Vec<FailItem>) -> Result<Vec<Result<FailOutcome>>> {
        let limits = self.limits.clone();
        let out = self
            .write("fail", move |c, now, fx| {
                each_item(items, |item| super::jobs::fail(c, now, item, &limits, rand::random(), fx))
            })
            .await;
        self.metrics.stale_items(out)
    }

    async fn cancel(&self, id: Uuid, reason: &str) -> Result<JobState> {
        let (reason, limits) = (reason.to_string(), self.limits.clone());
        self.write("cancel", move |c, now, fx| super::jobs::cancel(c, now, id, &reason, &limits, fx)).await
    }

    async fn get_job(&self, id: Uuid) -> Result<Job> {
        self.readers.read(move |c| super::jobs::get(c, id)).await
    }

    async fn list_jobs(&self, filter: JobFilter, page: PageRequest) -> Result<Page<Job>> {
        let (limit, cursor) = (page.limit, parse_cursor(page.cursor)?);
        self.readers.read(move |c| super::jobs::list(c, &filter, limit, cursor)).await
    }

    async fn replay_dead(&self, selector: DeadSelector, max: usize) -> Result<Replayed> {
        let (limits, settings) = (self.limits.clone(), self.ledger);
        self.write("replay_dead", move |c, now, fx| {
            super::jobs::replay(c, now, &selector, max, &limits, &settings, fx)
        })
        .await
    }

    async fn purge_dead(&self, selector: DeadSelector, max: usize) -> Result<u64> {
        self.write("purge_dead", move |c, _, fx| super::jobs::purge(c, &selector, max, fx)).await
    }

    async fn reap_expired(&self, max: usize) -> Result<ReapOutcome> {
        let limits = self.limits.clone();
        self.write("reap_expired", move |c, now, fx| super::jobs::reap(c, now, max, &limits, fx)).await
    }

    async fn promote_due(&self, max: usize) -> Result<u64> {
        self.write("promote_due", move |c, now, fx| super::jobs::promote(c, now, max, fx)).await
    }

    async fn next_due_ms(&self) -> Result<Option<i64>> {
        self.readers.read(super::jobs::next_due).await
    }

    async fn prune_finished(&self, before_ms: i64, max: usize) -> Result<u64> {
        self.write("prune_finished", move |c, _, fx| super::jobs::prune(c, before_ms, max, fx)).await
    }
}
