//! The job commands as PostgreSQL statements, one transaction per call (see `mod.rs`).
//!
//! The rules are those of the SQLite backend (`sqlite/jobs.rs`); what differs is how they are
//! kept with several writers: claims skip locked rows, read-then-write locks the row first,
//! dependencies are read `FOR SHARE` so a dependency cannot finish unseen, and unique keys
//! are settled by the partial unique index (`ON CONFLICT DO NOTHING`).
//!
//! A lease is checked as `CASE WHEN state = 'running' THEN … END`, never as plain conditions:
//! the group committer's generic plans, built from statistics taken while few jobs ran, would
//! otherwise serve the lookup from the `jobs_running` partial index and walk every running job
//! (seen: 3 s for one batch of 500 completions) instead of using the primary key.

use super::PgStore;
use super::committer::{Done, Work};
use super::{RowExt, pg_err};
use crate::JobStore;
use crate::convoy_rows::Move;
use crate::effects::Effects;
use crate::rows::*;
use async_trait::async_trait;
use deadpool_postgres::{ClientWrapper as Client, Transaction};
use ferry_core::validate::DEFAULT_TIMEOUT_MS;
use ferry_core::{
    Backoff, ClaimRequest, ClaimedJob, CompleteItem, DeadSelector, EnqueueOutcome, Error, ErrorCode,
    EventType, FailItem, FailOutcome, HeartbeatOutcome, Jitter, Job, JobFilter, JobState, Limits, NewJob,
    Page, QueueStats, ReapOutcome, Result, Timestamp,
};
use ferry_core::{HeartbeatRequest, PageRequest};
use std::collections::BTreeMap;
use tokio_postgres::Row;
use uuid::Uuid;

/// Inserts a batch; all or nothing (the caller's transaction).
pub async fn enqueue(
    tx: &Transaction<'_>,
    now: i64,
    jobs: Vec<NewJob>,
    settings: &crate::LedgerSettings,
    w: &mut Effects,
) -> Result<Vec<EnqueueOutcome>> {
    let batch = jobs.len() > 1;
    let find_dep =
        tx.prepare_cached("SELECT seq, state FROM jobs WHERE id = $1 FOR SHARE").await.map_err(pg_err)?;
    let find_unique = tx
        .prepare(&format!(
            "SELECT id FROM jobs WHERE queue = $1 AND unique_key = $2 AND state NOT IN {FINISHED}"
        ))
        .await
        .map_err(pg_err)?;
    let insert = tx
        .prepare(&format!(
            "INSERT INTO jobs (id, queue, state, priority, run_at, payload, max_attempts, backoff_base_ms,
                backoff_factor, backoff_max_ms, backoff_jitter, lease_ms, unique_key, tags, depends_on,
                pending_deps, cancel_reason, created_at, updated_at, finished_at, timeout_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $18, $19, $20)
             ON CONFLICT (queue, unique_key) WHERE unique_key IS NOT NULL AND state NOT IN {FINISHED} DO NOTHING
             RETURNING seq"
        ))
        .await
        .map_err(pg_err)?;
    let mut resolved = Vec::with_capacity(jobs.len());
    for (i, job) in jobs.iter().enumerate() {
        let mut pending = Vec::new();
        let mut cancel_reason: Option<String> = None;
        for (j, dep) in job.depends_on.iter().enumerate() {
            let Some(row) = tx.query_opt(&find_dep, &[dep]).await.map_err(pg_err)? else {
                let e = Error::invalid(format!("depends_on[{j}]"), format!("no job {dep} to depend on"));
                return Err(if batch { e.within(&format!("jobs[{i}]")) } else { e });
            };
            let (dep_seq, dep_state): (i64, String) = (row.col(0)?, row.col(1)?);
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
    let mut out = Vec::with_capacity(jobs.len());
    let mut simple = SimpleBatch::default();
    let mut holds = Vec::new();
    for (i, (mut job, (pending, cancel_reason))) in jobs.into_iter().zip(resolved).enumerate() {
        if is_plain(&job) {
            // The common case goes into one multi-row insert.
            out.push(simple.push_plain(job, now, w));
            continue;
        }
        // Keep insertion order: what was batched so far goes in before this job.
        simple.flush(tx, now).await?;
        if let Some(key) = &job.unique_key
            && let Some(row) = if job.import.is_some() {
                let any = tx
                    .prepare_cached(
                        "SELECT id FROM jobs WHERE queue = $1 AND unique_key = $2 AND unique_key IS NOT NULL
                         ORDER BY seq DESC LIMIT 1",
                    )
                    .await
                    .map_err(pg_err)?;
                tx.query_opt(&any, &[&job.queue, key]).await.map_err(pg_err)?
            } else {
                tx.query_opt(&find_unique, &[&job.queue, key]).await.map_err(pg_err)?
            }
        {
            out.push(EnqueueOutcome { id: row.col(0)?, duplicate: true });
            continue;
        }
        let run_at = job.run_at.resolve(now);
        let state = initial_state(&job, run_at, now, !pending.is_empty(), cancel_reason.is_some());
        let id = Uuid::now_v7();
        let pending_deps: i32 = if state == JobState::Waiting { pending.len() as i32 } else { 0 };
        let row = tx
            .query_opt(
                &insert,
                &[
                    &id,
                    &job.queue,
                    &state.as_str(),
                    &job.priority,
                    &run_at,
                    &job.payload.get(),
                    &(job.max_attempts as i32),
                    &job.backoff.base_ms,
                    &job.backoff.factor,
                    &job.backoff.max_ms,
                    &job.backoff.jitter.0,
                    &job.lease_ms,
                    &job.unique_key,
                    &list_json(&job.tags),
                    &list_json(&job.depends_on),
                    &pending_deps,
                    &cancel_reason,
                    &now,
                    &state.is_finished().then_some(now),
                    &job.timeout_ms,
                ],
            )
            .await
            .map_err(pg_err)?;
        let Some(row) = row else {
            // Another node inserted the same unique key since we looked: it holds the key.
            let key = job.unique_key.as_ref().expect("only a unique key conflicts");
            let existing = tx.query_one(&find_unique, &[&job.queue, key]).await.map_err(pg_err)?;
            out.push(EnqueueOutcome { id: existing.col(0)?, duplicate: true });
            continue;
        };
        if let Some(p) = job.payment.as_mut()
            && state != JobState::Cancelled
        {
            // The hold is placed below, after every insert, in this transaction.
            p.hold = ferry_core::ledger::hold_id(id, 0);
            let seq: i64 = row.col(0)?;
            let set = tx
                .prepare_cached("UPDATE jobs SET payment = $2, hold_open = 1 WHERE seq = $1")
                .await
                .map_err(pg_err)?;
            tx.execute(&set, &[&seq, &crate::ledger_rows::payment_text(p)]).await.map_err(pg_err)?;
            holds.push((i, id, p.clone()));
        }
        if let Some(ferry_core::Import::Completed { result }) = &job.import {
            let seq: i64 = row.col(0)?;
            let set = tx
                .prepare_cached("UPDATE jobs SET result = $1, attempt = 1, started_at = $2 WHERE seq = $3")
                .await
                .map_err(pg_err)?;
            tx.execute(&set, &[&result.as_ref().map(|r| r.get()), &now, &seq]).await.map_err(pg_err)?;
        }
        if state == JobState::Waiting {
            let seq: i64 = row.col(0)?;
            for dep_seq in pending {
                tx.execute(
                    &tx.prepare_cached(
                        "INSERT INTO job_deps (dep_seq, job_seq) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    )
                    .await
                    .map_err(pg_err)?,
                    &[&dep_seq, &seq],
                )
                .await
                .map_err(pg_err)?;
                tx.execute(
                    &tx.prepare_cached("UPDATE jobs SET has_dependants = TRUE WHERE seq = $1")
                        .await
                        .map_err(pg_err)?,
                    &[&dep_seq],
                )
                .await
                .map_err(pg_err)?;
            }
        }
        match state {
            JobState::Ready => w.wake(&job.queue),
            JobState::Scheduled => w.due(run_at),
            _ => {}
        }
        w.events.push(enqueued_event(now, &job.queue, id, &job.tags, state));
        out.push(EnqueueOutcome { id, duplicate: false });
    }
    simple.flush(tx, now).await?;
    super::ledger::hold_jobs(tx, now, &holds, settings, w).await?;
    Ok(out)
}

/// Whether `job` can go into a shared multi-row insert: nothing about it can be refused
/// once its request was validated (no unique key, dependency, import or payment).
pub(super) fn is_plain(job: &NewJob) -> bool {
    job.unique_key.is_none() && job.depends_on.is_empty() && job.import.is_none() && job.payment.is_none()
}

/// Inserts the plain jobs of several requests with one statement; each request's outcomes.
pub(super) async fn enqueue_plain(
    tx: &Transaction<'_>,
    now: i64,
    requests: &[&[NewJob]],
    w: &mut Effects,
) -> Result<Vec<Vec<EnqueueOutcome>>> {
    let mut simple = SimpleBatch::default();
    let mut out = Vec::with_capacity(requests.len());
    for jobs in requests {
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in jobs.iter() {
            outcomes.push(simple.push_plain(job.clone(), now, w));
        }
        out.push(outcomes);
    }
    simple.flush(tx, now).await?;
    Ok(out)
}

/// Jobs without unique key or dependencies, inserted together with one `unnest` statement.
#[derive(Default)]
struct SimpleBatch {
    ids: Vec<Uuid>,
    queues: Vec<String>,
    states: Vec<&'static str>,
    priorities: Vec<i32>,
    run_ats: Vec<i64>,
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

impl SimpleBatch {
    /// Adds a plain job ([`is_plain`]): its id, state, event and wake-up decided now, its row
    /// written at the next flush.
    fn push_plain(&mut self, job: NewJob, now: i64, w: &mut Effects) -> EnqueueOutcome {
        debug_assert!(is_plain(&job));
        let run_at = job.run_at.resolve(now);
        let state = initial_state(&job, run_at, now, false, false);
        match state {
            JobState::Ready => w.wake(&job.queue),
            _ => w.due(run_at),
        }
        let id = Uuid::now_v7();
        w.events.push(enqueued_event(now, &job.queue, id, &job.tags, state));
        self.push(id, job, state, run_at);
        EnqueueOutcome { id, duplicate: false }
    }

    fn push(&mut self, id: Uuid, job: NewJob, state: JobState, run_at: i64) {
        self.ids.push(id);
        self.states.push(state.as_str());
        self.priorities.push(job.priority);
        self.run_ats.push(run_at);
        self.payloads.push(job.payload.get().to_string());
        self.max_attempts.push(job.max_attempts as i32);
        self.base_ms.push(job.backoff.base_ms);
        self.factors.push(job.backoff.factor);
        self.max_ms.push(job.backoff.max_ms);
        self.jitters.push(job.backoff.jitter.0);
        self.lease_ms.push(job.lease_ms);
        self.tags.push(list_json(&job.tags));
        self.timeout_ms.push(job.timeout_ms);
        self.queues.push(job.queue);
    }

    async fn flush(&mut self, tx: &Transaction<'_>, now: i64) -> Result<()> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let stmt = tx
            .prepare_cached(
                "INSERT INTO jobs (id, queue, state, priority, run_at, payload, max_attempts, backoff_base_ms,
                    backoff_factor, backoff_max_ms, backoff_jitter, lease_ms, tags, created_at, updated_at, timeout_ms)
                 SELECT id, queue, state, priority, run_at, payload, max_attempts, base, factor, max_ms, jitter,
                    lease_ms, tags, $14, $14, timeout_ms
                 FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int[], $5::bigint[], $6::text[], $7::int[],
                    $8::bigint[], $9::float8[], $10::bigint[], $11::float8[], $12::bigint[], $13::text[],
                    $15::bigint[])
                    AS x(id, queue, state, priority, run_at, payload, max_attempts, base, factor, max_ms, jitter,
                         lease_ms, tags, timeout_ms)",
            )
            .await
            .map_err(pg_err)?;
        tx.execute(
            &stmt,
            &[
                &self.ids,
                &self.queues,
                &self.states,
                &self.priorities,
                &self.run_ats,
                &self.payloads,
                &self.max_attempts,
                &self.base_ms,
                &self.factors,
                &self.max_ms,
                &self.jitters,
                &self.lease_ms,
                &self.tags,
                &now,
                &self.timeout_ms,
            ],
        )
        .await
        .map_err(pg_err)?;
        *self = SimpleBatch::default();
        Ok(())
    }
}

/// The pause flag and flow limits of a queue row (absent: neither).
async fn queue_flow(tx: &Transaction<'_>, queue: &str, lock: bool) -> Result<(bool, Flow)> {
    let sql = if lock {
        "SELECT paused, max_running, max_starts_per_sec, max_depth, tokens, tokens_at FROM queues
         WHERE name = $1 FOR UPDATE"
    } else {
        "SELECT paused, max_running, max_starts_per_sec, max_depth, tokens, tokens_at FROM queues WHERE name = $1"
    };
    let row =
        tx.query_opt(&tx.prepare_cached(sql).await.map_err(pg_err)?, &[&queue]).await.map_err(pg_err)?;
    let Some(r) = row else { return Ok(Default::default()) };
    let limits = limits_from(r.col(1)?, r.col(2)?, r.col(3)?);
    Ok((r.col(0)?, Flow { limits, tokens: r.col(4)?, tokens_at: r.col(5)? }))
}

/// Leases up to `req.max` ready jobs, best first, skipping rows other claimers hold.
///
/// A queue with flow limits is claimed with its row locked (`FOR UPDATE`): limited claims
/// of one queue take turns across every node, so the running count read under the lock
/// (committed claims only grow it, and they all hold the lock first) and the token bucket
/// stored on the row are exact. Unlimited queues take no lock.
pub async fn claim(
    tx: &Transaction<'_>,
    now: i64,
    req: &ClaimRequest,
    w: &mut Effects,
) -> Result<Vec<ClaimedJob>> {
    let (mut paused, mut flow) = queue_flow(tx, &req.queue, false).await?;
    if !paused && flow.limits_claims() {
        // Read again under the lock: the limits may have changed since.
        (paused, flow) = queue_flow(tx, &req.queue, true).await?;
    }
    if paused {
        return Ok(Vec::new());
    }
    let mut max = req.max;
    if flow.limits_claims() {
        let running: i64 = if flow.limits.max_running.is_some() {
            tx.query_one(
                &tx.prepare_cached("SELECT count(*) FROM jobs WHERE queue = $1 AND state = 'running'")
                    .await
                    .map_err(pg_err)?,
                &[&req.queue],
            )
            .await
            .map_err(pg_err)?
            .col(0)?
        } else {
            0
        };
        max = flow.allowance(max, || running, now);
        if max == 0 {
            return Ok(Vec::new());
        }
    }
    let claim = tx
        .prepare_cached(
            "UPDATE jobs SET state = 'running', attempt = attempt + 1,
                lease = seq::text || '.' || replace(gen_random_uuid()::text, '-', ''),
                lease_expires_at = $1 + coalesce($2, lease_ms), worker = $3, started_at = $1, updated_at = $1
             WHERE seq = ANY(ARRAY(SELECT seq FROM jobs WHERE queue = $4 AND state = 'ready'
                                   ORDER BY priority DESC, run_at, seq LIMIT $5 FOR UPDATE SKIP LOCKED))
             RETURNING seq, id, payload, attempt, max_attempts, priority, tags, lease, lease_expires_at, run_at,
                timeout_ms",
        )
        .await
        .map_err(pg_err)?;
    let rows = tx
        .query(&claim, &[&now, &req.lease_ms, &req.worker, &req.queue, &(max as i64)])
        .await
        .map_err(pg_err)?;
    if let Some(tokens) = flow.tokens_now(now).filter(|_| !rows.is_empty()) {
        tx.execute(
            &tx.prepare_cached("UPDATE queues SET tokens = $1, tokens_at = $2 WHERE name = $3")
                .await
                .map_err(pg_err)?,
            &[&(tokens - rows.len() as f64), &now, &req.queue],
        )
        .await
        .map_err(pg_err)?;
    }
    let jobs = rows.iter().map(|r| claimed_from(r, 0, &req.queue)).collect::<Result<Vec<_>>>()?;
    Ok(started(now, &req.worker, jobs, w))
}

/// A claimed row whose columns from `at` are seq, id, payload, attempt, max_attempts, priority,
/// tags, lease, lease_expires_at, run_at, timeout_ms: (seq, run_at, the job).
fn claimed_from(r: &Row, at: usize, queue: &str) -> Result<(i64, i64, ClaimedJob)> {
    let job = ClaimedJob {
        id: r.col(at + 1)?,
        queue: queue.to_string(),
        payload: raw(r.col(at + 2)?)?,
        attempt: r.col::<i32>(at + 3)? as u32,
        max_attempts: r.col::<i32>(at + 4)? as u32,
        priority: r.col(at + 5)?,
        tags: json_list(r.col(at + 6)?)?,
        lease: r.col(at + 7)?,
        lease_expires_at: Timestamp(r.col(at + 8)?),
        timeout_ms: r.col::<Option<i64>>(at + 10)?.unwrap_or(DEFAULT_TIMEOUT_MS),
    };
    Ok((r.col(at)?, r.col(at + 9)?, job))
}

/// One claim's jobs, best first, with their `job.started` events.
fn started(
    now: i64,
    worker: &str,
    mut jobs: Vec<(i64, i64, ClaimedJob)>,
    w: &mut Effects,
) -> Vec<ClaimedJob> {
    jobs.sort_by(|a, b| b.2.priority.cmp(&a.2.priority).then(a.1.cmp(&b.1)).then(a.0.cmp(&b.0)));
    for (_, run_at, j) in &jobs {
        w.events.push(
            job_event(EventType::JobStarted, now, &j.queue, j.id, j.tags.clone()).with(
                serde_json::json!({ "attempt": j.attempt, "worker": worker, "waited_ms": now - run_at }),
            ),
        );
    }
    jobs.into_iter().map(|(_, _, j)| j).collect()
}

/// Queues of `queues` whose claims must each run alone: paused ones (`true`: nothing to
/// hand out) and those with flow limits (`false`: claimed under their row's lock).
pub(super) async fn held_queues(tx: &Transaction<'_>, queues: &[&str]) -> Result<Vec<(String, bool)>> {
    let rows = tx
        .query(
            &tx.prepare_cached(
                "SELECT name, paused FROM queues WHERE name = ANY($1)
                   AND (paused OR max_running IS NOT NULL OR max_starts_per_sec IS NOT NULL)",
            )
            .await
            .map_err(pg_err)?,
            &[&queues],
        )
        .await
        .map_err(pg_err)?;
    rows.iter().map(|r| Ok((r.col(0)?, r.col(1)?))).collect()
}

/// Claims of several requests, each on a different queue that is neither paused nor limited,
/// in one statement; each request's jobs, best first.
pub(super) async fn claim_many(
    tx: &Transaction<'_>,
    now: i64,
    reqs: &[&ClaimRequest],
    w: &mut Effects,
) -> Result<Vec<Vec<ClaimedJob>>> {
    debug_assert!({
        let mut q: Vec<&str> = reqs.iter().map(|r| r.queue.as_str()).collect();
        q.sort_unstable();
        q.windows(2).all(|p| p[0] != p[1])
    });
    let queues: Vec<&str> = reqs.iter().map(|r| r.queue.as_str()).collect();
    let maxes: Vec<i64> = reqs.iter().map(|r| r.max as i64).collect();
    let workers: Vec<&str> = reqs.iter().map(|r| r.worker.as_str()).collect();
    let leases: Vec<Option<i64>> = reqs.iter().map(|r| r.lease_ms).collect();
    let order: Vec<i32> = (0..reqs.len() as i32).collect();
    let stmt = tx
        .prepare_cached(
            // Locked rows are gathered into arrays and joined back through `unnest`: a join
            // with the lateral's rows would be planned from its generic estimate (a tenth of
            // the table per `LIMIT`) as a hash join over a scan of every job.
            "WITH picked AS (
                SELECT array_agg(p.seq) AS seqs, array_agg(x.i) AS idx
                FROM unnest($2::text[], $3::bigint[], $6::int[]) AS x(queue, max, i)
                CROSS JOIN LATERAL (SELECT seq FROM jobs WHERE queue = x.queue AND state = 'ready'
                                    ORDER BY priority DESC, run_at, seq LIMIT x.max FOR UPDATE SKIP LOCKED) p
             )
             UPDATE jobs AS j SET state = 'running', attempt = j.attempt + 1,
                lease = j.seq::text || '.' || replace(gen_random_uuid()::text, '-', ''),
                lease_expires_at = $1 + coalesce(($5::bigint[])[c.i + 1], j.lease_ms),
                worker = ($4::text[])[c.i + 1], started_at = $1, updated_at = $1
             FROM unnest((SELECT seqs FROM picked), (SELECT idx FROM picked)) AS c(seq, i)
             WHERE j.seq = c.seq
             RETURNING c.i, j.seq, j.id, j.payload, j.attempt, j.max_attempts, j.priority, j.tags, j.lease,
                j.lease_expires_at, j.run_at, j.timeout_ms",
        )
        .await
        .map_err(pg_err)?;
    let rows = tx.query(&stmt, &[&now, &queues, &maxes, &workers, &leases, &order]).await.map_err(pg_err)?;
    let mut got: Vec<Vec<(i64, i64, ClaimedJob)>> = (0..reqs.len()).map(|_| Vec::new()).collect();
    for r in rows {
        let i = r.col::<i32>(0)? as usize;
        let req = reqs.get(i).ok_or_else(|| Error::internal("a claim row names no request"))?;
        got[i].push(claimed_from(&r, 1, &req.queue)?);
    }
    Ok(reqs.iter().zip(got).map(|(req, jobs)| started(now, &req.worker, jobs, w)).collect())
}

pub(crate) async fn lease_failure(tx: &Transaction<'_>, id: Uuid) -> Result<Error> {
    let exists = tx
        .query_opt(&tx.prepare_cached("SELECT 1 FROM jobs WHERE id = $1").await.map_err(pg_err)?, &[&id])
        .await
        .map_err(pg_err)?;
    Ok(if exists.is_some() { Error::stale_lease(id) } else { Error::job_not_found(id) })
}

/// Extends a live lease.
/// A member's reported pressure is pushed to `moves` (a move from running to running).
pub async fn heartbeat(
    tx: &Transaction<'_>,
    now: i64,
    req: &HeartbeatRequest,
    moves: &mut Vec<(String, Move)>,
) -> Result<HeartbeatOutcome> {
    let (id, lease) = (req.id, req.lease.as_str());
    let row = tx
        .query_opt(
            "UPDATE jobs SET lease_expires_at = $1 + coalesce($2, lease_ms), updated_at = $1
             WHERE seq = $5 AND id = $3 AND lease = $4
                AND CASE WHEN state = 'running' THEN lease_expires_at > $1 ELSE false END
             RETURNING lease_expires_at, convoy_id",
            &[&now, &req.extend_ms, &id, &lease, &lease_seq(lease)],
        )
        .await
        .map_err(pg_err)?;
    match row {
        Some(r) => {
            if let (Some(cid), Some(p)) = (r.col::<Option<String>>(1)?, req.pressure) {
                let (from, to) = (JobState::Running, JobState::Running);
                moves.push((cid, Move { from, to, attempt: None, pressure: Some(p) }));
            }
            Ok(HeartbeatOutcome { id, lease_expires_at: Timestamp(r.col(0)?) })
        }
        None => Err(lease_failure(tx, id).await?),
    }
}

/// Returns a leased job to `ready` without counting the attempt.
pub async fn release(
    tx: &Transaction<'_>,
    now: i64,
    id: Uuid,
    lease: &str,
    w: &mut Effects,
) -> Result<JobState> {
    let row = tx
        .query_opt(
            "UPDATE jobs SET state = 'ready', attempt = attempt - 1, lease = NULL, lease_expires_at = NULL,
                started_at = NULL, updated_at = $1
             WHERE seq = $2 AND id = $3 AND lease = $4
                AND CASE WHEN state = 'running' THEN lease_expires_at > $1 ELSE false END
             RETURNING queue",
            &[&now, &lease_seq(lease), &id, &lease],
        )
        .await
        .map_err(pg_err)?;
    match row {
        Some(r) => {
            w.wake(r.col::<&str>(0)?);
            Ok(JobState::Ready)
        }
        None => Err(lease_failure(tx, id).await?),
    }
}

/// Records a batch of completions with one statement; items it did not apply are looked at
/// one by one (a repeat of an applied completion, a stale lease, an unknown job).
pub async fn complete_many(
    tx: &Transaction<'_>,
    now: i64,
    items: Vec<CompleteItem>,
    limits: &Limits,
    w: &mut Effects,
) -> Result<Vec<Result<()>>> {
    let ids: Vec<Uuid> = items.iter().map(|i| i.id).collect();
    let leases: Vec<&str> = items.iter().map(|i| i.lease.as_str()).collect();
    let seqs: Vec<i64> = items.iter().map(|i| lease_seq(&i.lease)).collect();
    let results: Vec<Option<&str>> = items.iter().map(|i| i.result.as_ref().map(|r| r.get())).collect();
    let rows = tx
        .query(
            &tx.prepare_cached(
                "UPDATE jobs AS j SET state = 'completed', result = x.result, lease_expires_at = NULL,
                    finished_at = $1, updated_at = $1
                 FROM unnest($2::uuid[], $3::text[], $4::bigint[], $5::text[]) AS x(id, lease, seq, result)
                 WHERE j.seq = x.seq AND j.id = x.id AND j.lease = x.lease
                    AND CASE WHEN j.state = 'running' THEN j.lease_expires_at > $1 ELSE false END
                 RETURNING j.id, j.lease, j.seq, j.has_dependants, j.queue, j.tags, j.started_at, j.convoy_id",
            )
            .await
            .map_err(pg_err)?,
            &[&now, &ids, &leases, &seqs, &results],
        )
        .await
        .map_err(pg_err)?;
    let mut done = std::collections::HashSet::with_capacity(rows.len());
    let mut members: Vec<(String, Uuid, Option<i64>)> = Vec::new();
    for r in &rows {
        done.insert((r.col::<Uuid>(0)?, r.col::<String>(1)?));
        w.events.push(completed_event(now, r.col(4)?, r.col(0)?, event_tags(r.col(5)?), r.col(6)?));
        if r.col::<bool>(3)? {
            resolve_dependants(tx, now, r.col(2)?, w).await?;
        }
        if let Some(cid) = r.col::<Option<String>>(7)? {
            members.push((cid, r.col(0)?, r.col(6)?));
        }
    }
    let moves = members
        .into_iter()
        .map(|(cid, id, started_at)| {
            let pressure = items.iter().find(|i| i.id == id).and_then(|i| i.pressure);
            let attempt = Some((started_at, false));
            (cid, Move { from: JobState::Running, to: JobState::Completed, attempt, pressure })
        })
        .collect();
    super::convoys::members_moved(tx, now, moves, limits, w).await?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if done.remove(&(item.id, item.lease.clone())) {
            out.push(Ok(()));
        } else {
            out.push(complete(tx, now, item, limits, w).await);
        }
    }
    Ok(out)
}

/// Records one completion; a repeat with the lease that completed the job succeeds again.
pub async fn complete(
    tx: &Transaction<'_>,
    now: i64,
    item: CompleteItem,
    limits: &Limits,
    w: &mut Effects,
) -> Result<()> {
    let result = item.result.as_ref().map(|r| r.get());
    let row = tx
        .query_opt(
            "UPDATE jobs SET state = 'completed', result = $1, lease_expires_at = NULL, finished_at = $2,
                updated_at = $2
             WHERE seq = $5 AND id = $3 AND lease = $4
                AND CASE WHEN state = 'running' THEN lease_expires_at > $2 ELSE false END
             RETURNING seq, has_dependants, queue, tags, started_at, convoy_id",
            &[&result, &now, &item.id, &item.lease, &lease_seq(&item.lease)],
        )
        .await
        .map_err(pg_err)?;
    match row {
        Some(r) => {
            w.events.push(completed_event(now, r.col(2)?, item.id, event_tags(r.col(3)?), r.col(4)?));
            if r.col::<bool>(1)? {
                resolve_dependants(tx, now, r.col(0)?, w).await?;
            }
            if let Some(cid) = r.col::<Option<String>>(5)? {
                let attempt = Some((r.col(4)?, false));
                let mv = Move {
                    from: JobState::Running,
                    to: JobState::Completed,
                    attempt,
                    pressure: item.pressure,
                };
                super::convoys::member_moved(tx, now, &cid, mv, limits, w).await?;
            }
            Ok(())
        }
        None => {
            let row = tx
                .query_opt("SELECT state, lease FROM jobs WHERE id = $1", &[&item.id])
                .await
                .map_err(pg_err)?;
            match row {
                None => Err(Error::job_not_found(item.id)),
                Some(r)
                    if r.col::<&str>(0)? == "completed" && r.col::<Option<&str>>(1)? == Some(&item.lease) =>
                {
                    Ok(())
                }
                Some(_) => Err(Error::stale_lease(item.id)),
            }
        }
    }
}

async fn resolve_dependants(tx: &Transaction<'_>, now: i64, dep_seq: i64, w: &mut Effects) -> Result<()> {
    let rows = tx
        .query(
            "UPDATE jobs SET pending_deps = pending_deps - 1, updated_at = $1,
                state = CASE WHEN pending_deps > 1 THEN 'waiting' WHEN run_at > $1 THEN 'scheduled' ELSE 'ready' END
             WHERE seq = ANY(ARRAY(SELECT job_seq FROM job_deps WHERE dep_seq = $2)) AND state = 'waiting'
             RETURNING state, queue, run_at",
            &[&now, &dep_seq],
        )
        .await
        .map_err(pg_err)?;
    tx.execute(
        &tx.prepare_cached("DELETE FROM job_deps WHERE dep_seq = $1").await.map_err(pg_err)?,
        &[&dep_seq],
    )
    .await
    .map_err(pg_err)?;
    for r in rows {
        match r.col::<&str>(0)? {
            "ready" => w.wake(r.col::<&str>(1)?),
            "scheduled" => w.due(r.col(2)?),
            _ => {}
        }
    }
    Ok(())
}

pub(super) async fn cancel_dependants(
    tx: &Transaction<'_>,
    now: i64,
    root_seq: i64,
    root_id: Uuid,
    root_state: JobState,
    w: &mut Effects,
) -> Result<()> {
    let mut stack = vec![(root_seq, root_id, root_state)];
    while let Some((seq, id, state)) = stack.pop() {
        let reason = format!("dependency {id} is {state}");
        let rows = tx
            .query(
                "UPDATE jobs SET state = 'cancelled', cancel_reason = $1, pending_deps = 0, finished_at = $2,
                    updated_at = $2
                 WHERE seq = ANY(ARRAY(SELECT job_seq FROM job_deps WHERE dep_seq = $3)) AND state = 'waiting'
                 RETURNING seq, id, has_dependants, queue, tags",
                &[&reason, &now, &seq],
            )
            .await
            .map_err(pg_err)?;
        tx.execute(
            &tx.prepare_cached("DELETE FROM job_deps WHERE dep_seq = $1").await.map_err(pg_err)?,
            &[&seq],
        )
        .await
        .map_err(pg_err)?;
        for r in rows {
            w.events.push(
                job_event(EventType::JobCancelled, now, r.col(3)?, r.col(1)?, event_tags(r.col(4)?))
                    .with(serde_json::json!({ "reason": reason })),
            );
            if r.col::<bool>(2)? {
                stack.push((r.col(0)?, r.col(1)?, JobState::Cancelled));
            }
        }
    }
    Ok(())
}

async fn lock_job(tx: &Transaction<'_>, id: Uuid) -> Result<Option<Leased>> {
    let Some(r) = tx
        .query_opt(
            "SELECT seq, state, lease, lease_expires_at, attempt, max_attempts, backoff_base_ms, backoff_factor,
                backoff_max_ms, backoff_jitter, queue, worker, errors, has_dependants, run_at, tags, started_at,
                convoy_id
             FROM jobs WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await
        .map_err(pg_err)?
    else {
        return Ok(None);
    };
    Ok(Some(Leased {
        seq: r.col(0)?,
        state: state_of(r.col(1)?)?,
        lease: r.col(2)?,
        lease_expires_at: r.col(3)?,
        attempt: r.col::<i32>(4)? as u32,
        max_attempts: r.col::<i32>(5)? as u32,
        backoff: Backoff {
            base_ms: r.col(6)?,
            factor: r.col(7)?,
            max_ms: r.col(8)?,
            jitter: Jitter(r.col(9)?),
        },
        queue: r.col(10)?,
        worker: r.col(11)?,
        errors: r.col(12)?,
        has_dependants: r.col(13)?,
        run_at: r.col(14)?,
        tags: r.col(15)?,
        started_at: r.col(16)?,
        convoy_id: r.col(17)?,
    }))
}

/// Records one failure: a retry after backoff, or the dead-letter queue.
/// A member's move is pushed to `moves`: the caller applies them once every member row is
/// locked (member rows, then convoys in id order: the lock order that keeps batches from
/// deadlocking).
pub async fn fail(
    tx: &Transaction<'_>,
    now: i64,
    item: FailItem,
    limits: &Limits,
    u: f64,
    moves: &mut Vec<(String, Move)>,
    w: &mut Effects,
) -> Result<FailOutcome> {
    let Some(job) = lock_job(tx, item.id).await? else {
        return Err(Error::job_not_found(item.id));
    };
    let id = item.id;
    let message = item.error.clone();
    let pressure = item.pressure;
    let (state, run_at, errors) = match decide_failure(&job, item, now, limits, u)? {
        FailDecision::Repeat(outcome) => return Ok(outcome),
        FailDecision::Stale => return Err(Error::stale_lease(id)),
        FailDecision::Apply { state, run_at, errors } => (state, run_at, errors),
    };
    tx.execute(
        &tx.prepare_cached(
            "UPDATE jobs SET state = $1, run_at = $2, lease_expires_at = NULL, errors = $3, updated_at = $4,
            finished_at = $5
         WHERE seq = $6",
        )
        .await
        .map_err(pg_err)?,
        &[&state.as_str(), &run_at, &errors, &now, &(state == JobState::Dead).then_some(now), &job.seq],
    )
    .await
    .map_err(pg_err)?;
    w.events.extend(failure_events(&job, id, now, state, run_at, &message));
    match state {
        JobState::Dead if job.has_dependants => {
            cancel_dependants(tx, now, job.seq, id, JobState::Dead, w).await?
        }
        JobState::Ready => w.wake(&job.queue),
        JobState::Scheduled => w.due(run_at),
        _ => {}
    }
    if let Some(cid) = job.convoy_id {
        moves.push((
            cid,
            Move { from: JobState::Running, to: state, attempt: Some((job.started_at, true)), pressure },
        ));
    }
    let run_at = (state == JobState::Scheduled).then_some(Timestamp(run_at));
    Ok(FailOutcome { id, state, attempt: job.attempt, run_at })
}

/// Cancels a job that is not running (idempotent for an already cancelled job).
pub async fn cancel(
    tx: &Transaction<'_>,
    now: i64,
    id: Uuid,
    reason: &str,
    limits: &Limits,
    w: &mut Effects,
) -> Result<JobState> {
    // A member's convoy is locked before the member (the order of convoy-wide cancels), so a
    // job cancel and a convoy cancel never wait on each other.
    let convoy: Option<Option<String>> = tx
        .query_opt("SELECT convoy_id FROM jobs WHERE id = $1", &[&id])
        .await
        .map_err(pg_err)?
        .map(|r| r.col(0))
        .transpose()?;
    if let Some(Some(cid)) = &convoy {
        tx.execute("SELECT 1 FROM convoys WHERE id = $1 FOR UPDATE", &[cid]).await.map_err(pg_err)?;
    }
    let Some(job) = lock_job(tx, id).await? else {
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
    tx.execute(&tx.prepare_cached("UPDATE jobs SET state = 'cancelled', cancel_reason = $1, pending_deps = 0, lease = NULL, finished_at = $2,
            updated_at = $2
         WHERE seq = $3").await.map_err(pg_err)?,
        &[&reason, &now, &job.seq],
    )
    .await
    .map_err(pg_err)?;
    w.events.push(
        job_event(EventType::JobCancelled, now, &job.queue, id, event_tags(job.tags.clone()))
            .with(serde_json::json!({ "reason": reason })),
    );
    if job.has_dependants {
        cancel_dependants(tx, now, job.seq, id, JobState::Cancelled, w).await?;
    }
    if let Some(cid) = &job.convoy_id {
        let mv = Move { from: job.state, to: JobState::Cancelled, attempt: None, pressure: None };
        super::convoys::member_moved(tx, now, cid, mv, limits, w).await?;
    }
    Ok(JobState::Cancelled)
}

/// Returns expired leases to ready (or dead); rows other nodes are reaping are skipped, and
/// the update re-checks state and lease.
pub async fn reap(
    tx: &Transaction<'_>,
    now: i64,
    max: usize,
    limits: &Limits,
    w: &mut Effects,
) -> Result<ReapOutcome> {
    let expired = tx
        .query(
            "SELECT id FROM jobs WHERE state = 'running' AND lease_expires_at <= $1
             ORDER BY lease_expires_at LIMIT $2 FOR UPDATE SKIP LOCKED",
            &[&now, &(max as i64)],
        )
        .await
        .map_err(pg_err)?;
    let mut out = ReapOutcome::default();
    let mut moves = Vec::new();
    for r in expired {
        match take_back(tx, now, r.col(0)?, Expiry::LeaseExpired, limits, &mut moves, w).await? {
            Some(JobState::Dead) => out.dead += 1,
            Some(_) => out.requeued += 1,
            None => {}
        }
    }
    super::convoys::members_moved(tx, now, moves, limits, w).await?;
    Ok(out)
}

/// Takes back the lease of running job `id` before its worker reported (lease expired, or
/// worker lost): locks the row and re-checks it (still running, and expired or held by the
/// lost worker), then the attempt counts and the job goes back to `ready`, or to `dead` when
/// no attempt is left (its waiting dependants cancelled), with `why` in its history and the
/// `job.failed` + `job.retried`/`job.dead` events. None when the job moved on meanwhile.
pub(super) async fn take_back(
    tx: &Transaction<'_>,
    now: i64,
    id: Uuid,
    why: Expiry<'_>,
    limits: &Limits,
    moves: &mut Vec<(String, Move)>,
    w: &mut Effects,
) -> Result<Option<JobState>> {
    let Some(job) = lock_job(tx, id).await? else { return Ok(None) };
    let still_due = match why {
        Expiry::LeaseExpired => job.lease_expires_at.is_some_and(|t| t <= now),
        Expiry::WorkerLost(name) => job.worker.as_deref() == Some(name),
    };
    if job.state != JobState::Running || !still_due {
        return Ok(None);
    }
    let (state, errors) = decide_expiry(&job, now, limits, why)?;
    let changed = tx
        .execute(
            &tx.prepare_cached(
                "UPDATE jobs SET state = $1, lease = NULL, lease_expires_at = NULL, errors = $2, updated_at = $3,
                    finished_at = $4
                 WHERE seq = $5 AND lease = $6 AND CASE WHEN state = 'running' THEN true ELSE false END",
            )
            .await
            .map_err(pg_err)?,
            &[&state.as_str(), &errors, &now, &(state == JobState::Dead).then_some(now), &job.seq, &job.lease],
        )
        .await
        .map_err(pg_err)?;
    if changed == 0 {
        return Ok(None);
    }
    w.events.extend(failure_events(&job, id, now, state, now, why.summary()));
    if state == JobState::Dead {
        if job.has_dependants {
            cancel_dependants(tx, now, job.seq, id, JobState::Dead, w).await?;
        }
    } else {
        w.wake(&job.queue);
    }
    if let Some(cid) = job.convoy_id {
        let attempt = Some((job.started_at, true));
        moves.push((cid, Move { from: JobState::Running, to: state, attempt, pressure: None }));
    }
    Ok(Some(state))
}

/// Moves due scheduled jobs to ready.
pub async fn promote(tx: &Transaction<'_>, now: i64, max: usize, w: &mut Effects) -> Result<u64> {
    let rows = tx
        .query(
            "UPDATE jobs SET state = 'ready', updated_at = $1
             WHERE seq IN (SELECT seq FROM jobs WHERE state = 'scheduled' AND run_at <= $1
                           ORDER BY run_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING queue",
            &[&now, &(max as i64)],
        )
        .await
        .map_err(pg_err)?;
    for r in &rows {
        w.wake(r.col::<&str>(0)?);
    }
    Ok(rows.len() as u64)
}

/// Deletes finished jobs older than `before_ms`, at most `max`.
pub async fn prune(tx: &Transaction<'_>, before_ms: i64, max: usize) -> Result<u64> {
    tx.execute(
        &tx.prepare_cached(
            "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE state IN ('completed', 'cancelled')
            AND finished_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
        )
        .await
        .map_err(pg_err)?,
        &[&before_ms, &(max as i64)],
    )
    .await
    .map_err(pg_err)
}

/// Dead jobs a replay may bring back: none whose unique key an unfinished job of its queue
/// holds now (it stays dead; replaying it would break the key's uniqueness).
const REPLAYABLE: &str = "AND NOT EXISTS (SELECT 1 FROM jobs h WHERE h.queue = jobs.queue
    AND h.unique_key = jobs.unique_key AND h.state NOT IN ('completed', 'dead', 'cancelled'))";

async fn dead_rows(
    tx: &Transaction<'_>,
    selector: &DeadSelector,
    max: usize,
    replay: bool,
) -> Result<Vec<(i64, Uuid, String, Option<String>)>> {
    let only = if replay { REPLAYABLE } else { "" };
    let rows = match selector {
        DeadSelector::Ids(ids) => {
            let ids: Vec<Uuid> = ids.iter().take(max).copied().collect();
            let sql = format!(
                "SELECT seq, id, queue, tags FROM jobs WHERE id = ANY($1) AND state = 'dead' {only}
                 ORDER BY seq FOR UPDATE"
            );
            tx.query(&tx.prepare_cached(&sql).await.map_err(pg_err)?, &[&ids]).await
        }
        DeadSelector::Queue(q) => {
            let sql = format!(
                "SELECT seq, id, queue, tags FROM jobs WHERE queue = $1 AND state = 'dead' {only}
                 ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED"
            );
            tx.query(
                &tx.prepare_cached(&sql).await.map_err(pg_err)?,
                &[q, &(max.min(i64::MAX as usize) as i64)],
            )
            .await
        }
    }
    .map_err(pg_err)?;
    rows.iter().map(|r| Ok((r.col(0)?, r.col(1)?, r.col(2)?, r.col(3)?))).collect()
}

/// Dead jobs back to ready: attempts reset, history kept. A paid job places a new hold first;
/// refused, it stays dead (and is listed).
pub async fn replay(
    tx: &Transaction<'_>,
    now: i64,
    selector: &DeadSelector,
    max: usize,
    limits: &Limits,
    settings: &crate::LedgerSettings,
    w: &mut Effects,
) -> Result<ferry_core::Replayed> {
    let rows = dead_rows(tx, selector, max, true).await?;
    // Row by row, checked again: two dead jobs of one key may be selected together; the first
    // brought back holds the key and the second stays dead.
    let update = tx
        .prepare_cached(&format!(
            "UPDATE jobs SET state = 'ready', attempt = 0, lease = NULL, run_at = $1, finished_at = NULL,
                updated_at = $1
             WHERE seq = $2 {REPLAYABLE}"
        ))
        .await
        .map_err(pg_err)?;
    let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let mut payments = Vec::new();
    for r in tx
        .query(
            "SELECT seq, id, payment FROM jobs WHERE seq = ANY($1) AND payment IS NOT NULL ORDER BY seq",
            &[&seqs],
        )
        .await
        .map_err(pg_err)?
    {
        let mut p = crate::ledger_rows::payment_from(&r.col::<String>(2)?)?;
        let id: Uuid = r.col(1)?;
        p.hold = ferry_core::ledger::hold_id(id, crate::ledger_rows::hold_number(&p.hold) + 1);
        payments.push((r.col::<i64>(0)?, id, p));
    }
    let mut refused = Vec::new();
    let mut replayed = Vec::with_capacity(rows.len());
    let mut members = Vec::new();
    let (paid_rows, rows): (Vec<_>, Vec<_>) =
        rows.into_iter().partition(|r| payments.iter().any(|p| p.0 == r.0));
    for row in rows {
        if tx.execute(&update, &[&now, &row.0]).await.map_err(pg_err)? == 1 {
            let convoy =
                tx.query_one("SELECT convoy_id FROM jobs WHERE seq = $1", &[&row.0]).await.map_err(pg_err)?;
            if let Some(cid) = convoy.col::<Option<String>>(0)? {
                members.push((cid, row.0));
            }
            replayed.push(row);
        }
    }
    // Convoys in id order, as every batch locks them; then the ledger (its head, then its
    // accounts), as job commands settle holds last: convoy rows are never locked under the head.
    members.sort();
    for (cid, seq) in members {
        super::convoys::replay_member(tx, now, seq, &cid, limits, w).await?;
    }
    if !paid_rows.is_empty() {
        let mut book =
            super::ledger::holds_book(tx, now, payments.iter().map(|(_, id, p)| (*id, p)), settings).await?;
        for row in paid_rows {
            let Some((_, id, p)) = payments.iter().find(|(s, ..)| *s == row.0) else { continue };
            let still = tx
                .query_opt(&format!("SELECT 1 FROM jobs WHERE seq = $1 {REPLAYABLE}"), &[&row.0])
                .await
                .map_err(pg_err)?;
            if still.is_none() {
                continue;
            }
            if let Err(e) = super::ledger::hold_one(&mut book, *id, p) {
                refused.push((*id, e));
                continue;
            }
            tx.execute(
                "UPDATE jobs SET payment = $2, hold_open = 1 WHERE seq = $1",
                &[&row.0, &crate::ledger_rows::payment_text(p)],
            )
            .await
            .map_err(pg_err)?;
            if tx.execute(&update, &[&now, &row.0]).await.map_err(pg_err)? == 1 {
                replayed.push(row);
            }
        }
        if let Some(book) = book {
            super::ledger::store(tx, book, settings, w).await?;
        }
    }
    let rows = replayed;
    for (_, id, q, tags) in &rows {
        w.wake(q);
        w.events.push(job_event(EventType::JobReplayed, now, q, *id, event_tags(tags.clone())));
    }
    // Keep the caller's order for ids.
    let mut ids: Vec<Uuid> = rows.into_iter().map(|r| r.1).collect();
    if let DeadSelector::Ids(order) = selector {
        ids.sort_by_key(|id| order.iter().position(|o| o == id));
    }
    Ok(ferry_core::Replayed { ids, refused })
}

/// Deletes dead jobs.
pub async fn purge(tx: &Transaction<'_>, selector: &DeadSelector, max: usize) -> Result<u64> {
    let rows = dead_rows(tx, selector, max, false).await?;
    let seqs: Vec<i64> = rows.iter().map(|r| r.0).collect();
    tx.execute(&tx.prepare_cached("DELETE FROM jobs WHERE seq = ANY($1)").await.map_err(pg_err)?, &[&seqs])
        .await
        .map_err(pg_err)?;
    tx.execute(
        &tx.prepare_cached("DELETE FROM job_deps WHERE dep_seq = ANY($1)").await.map_err(pg_err)?,
        &[&seqs],
    )
    .await
    .map_err(pg_err)?;
    Ok(rows.len() as u64)
}

/// Pauses or resumes a queue.
pub async fn set_paused(
    tx: &Transaction<'_>,
    now: i64,
    queue: &str,
    paused: bool,
    w: &mut Effects,
) -> Result<()> {
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO queues (name, paused, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = excluded.updated_at",
        )
        .await
        .map_err(pg_err)?,
        &[&queue, &paused, &now],
    )
    .await
    .map_err(pg_err)?;
    w.events.push(queue_event(now, queue, paused));
    if !paused {
        w.wake(queue);
    }
    Ok(())
}

fn job_from_row(r: &Row) -> Result<(i64, Job)> {
    let ts = |i: usize| r.col::<Option<i64>>(i).map(|t| t.map(Timestamp));
    Ok((
        r.col(0)?,
        Job {
            id: r.col(1)?,
            queue: r.col(2)?,
            state: state_of(r.col(3)?)?,
            payload: raw(r.col(4)?)?,
            priority: r.col(5)?,
            attempt: r.col::<i32>(6)? as u32,
            max_attempts: r.col::<i32>(7)? as u32,
            backoff: Backoff {
                base_ms: r.col(8)?,
                factor: r.col(9)?,
                max_ms: r.col(10)?,
                jitter: Jitter(r.col(11)?),
            },
            lease_ms: r.col(12)?,
            unique_key: r.col(13)?,
            depends_on: json_list(r.col(14)?)?,
            tags: json_list(r.col(15)?)?,
            run_at: Timestamp(r.col(16)?),
            created_at: Timestamp(r.col(17)?),
            updated_at: Timestamp(r.col(18)?),
            started_at: ts(19)?,
            finished_at: ts(20)?,
            lease_expires_at: ts(21)?,
            worker: r.col(22)?,
            result: r.col::<Option<String>>(23)?.map(raw).transpose()?,
            errors: json_list(r.col(24)?)?,
            cancel_reason: r.col(25)?,
            timeout_ms: r.col::<Option<i64>>(26)?.unwrap_or(DEFAULT_TIMEOUT_MS),
            convoy_id: r.col(27)?,
            payment: r
                .col::<Option<String>>(28)?
                .map(|p| crate::ledger_rows::payment_from(&p))
                .transpose()?,
        },
    ))
}

/// One job by id.
pub async fn get(c: &Client, id: Uuid) -> Result<Job> {
    let row = c
        .query_opt(
            &c.prepare_cached(&format!("SELECT {JOB_COLS} FROM jobs WHERE id = $1")).await.map_err(pg_err)?,
            &[&id],
        )
        .await
        .map_err(pg_err)?;
    match row {
        Some(r) => Ok(job_from_row(&r)?.1),
        None => Err(Error::job_not_found(id)),
    }
}

/// One page of jobs after `cursor`, in insertion order.
pub async fn list(c: &Client, filter: &JobFilter, limit: usize, cursor: Option<i64>) -> Result<Page<Job>> {
    let mut sql = format!("SELECT {JOB_COLS} FROM jobs WHERE seq > $1 AND ($2::text IS NULL OR queue = $2)");
    if let Some(state) = filter.state {
        sql.push_str(&format!(" AND state = '{}'", state.as_str()));
    }
    sql.push_str(" ORDER BY seq LIMIT $3");
    let rows = c
        .query(
            &c.prepare_cached(&sql).await.map_err(pg_err)?,
            &[&cursor.unwrap_or(0), &filter.queue, &(limit as i64 + 1)],
        )
        .await
        .map_err(pg_err)?;
    let more = rows.len() > limit;
    let mut items = Vec::with_capacity(limit.min(rows.len()));
    let mut last = 0;
    for r in rows.iter().take(limit) {
        let (seq, job) = job_from_row(r)?;
        last = seq;
        items.push(job);
    }
    Ok(Page { items, next_cursor: more.then(|| last.to_string()) })
}

/// Counts by queue and state, oldest ready age, pause flags.
pub async fn stats(c: &Client, now: i64) -> Result<Vec<QueueStats>> {
    let mut by_queue: BTreeMap<String, QueueStats> = BTreeMap::new();
    let blank = |q: &str| QueueStats {
        queue: q.to_string(),
        counts: JobState::ALL.iter().map(|s| (*s, 0)).collect(),
        oldest_ready_age_ms: None,
        paused: false,
        limits: Default::default(),
    };
    for r in c
        .query(
            &c.prepare_cached("SELECT queue, state, count(*) FROM jobs GROUP BY queue, state")
                .await
                .map_err(pg_err)?,
            &[],
        )
        .await
        .map_err(pg_err)?
    {
        let q: String = r.col(0)?;
        let st = state_of(r.col(1)?)?;
        by_queue.entry(q.clone()).or_insert_with(|| blank(&q)).counts.insert(st, r.col::<i64>(2)? as u64);
    }
    for r in c
        .query("SELECT queue, min(run_at) FROM jobs WHERE state = 'ready' GROUP BY queue", &[])
        .await
        .map_err(pg_err)?
    {
        let q: String = r.col(0)?;
        let oldest: i64 = r.col(1)?;
        by_queue.entry(q.clone()).or_insert_with(|| blank(&q)).oldest_ready_age_ms =
            Some((now - oldest).max(0));
    }
    for r in c
        .query(
            &c.prepare_cached("SELECT name, paused, max_running, max_starts_per_sec, max_depth FROM queues")
                .await
                .map_err(pg_err)?,
            &[],
        )
        .await
        .map_err(pg_err)?
    {
        let q: String = r.col(0)?;
        let entry = by_queue.entry(q.clone()).or_insert_with(|| blank(&q));
        entry.paused = r.col(1)?;
        entry.limits = limits_from(r.col(2)?, r.col(3)?, r.col(4)?);
    }
    Ok(by_queue.into_values().collect())
}

/// Earliest run_at of scheduled jobs.
pub async fn next_due(c: &Client) -> Result<Option<i64>> {
    let r = c
        .query_one(
            &c.prepare_cached("SELECT min(run_at) FROM jobs WHERE state = 'scheduled'")
                .await
                .map_err(pg_err)?,
            &[],
        )
        .await
        .map_err(pg_err)?;
    r.col(0)
}

/// Size of ferry's tables in the current schema, indexes and TOAST included.
pub async fn storage_bytes(c: &Client) -> Result<u64> {
    let r = c
        .query_one(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c
             WHERE c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace",
            &[],
        )
        .await
        .map_err(pg_err)?;
    Ok(r.col::<i64>(0)?.max(0) as u64)
}

/// ferry's invariants, each as a count of violating rows.
pub async fn invariants(c: &Client) -> Result<Vec<String>> {
    let checks = INVARIANT_CHECKS;
    let mut out = Vec::new();
    for &(what, cond) in checks {
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM jobs WHERE {cond}"), &[])
            .await
            .map_err(pg_err)?
            .col(0)?;
        if n > 0 {
            out.push(format!("{n} × {what}"));
        }
    }
    Ok(out)
}

/// Completions of one request or of a batch of them; a storage error fails them all.
pub(super) async fn complete_batch(
    tx: &Transaction<'_>,
    now: i64,
    items: Vec<CompleteItem>,
    limits: &Limits,
    w: &mut Effects,
) -> Result<Vec<Result<()>>> {
    let out = complete_many(tx, now, items, limits, w).await?;
    if let Some(Err(e)) = out.iter().find(|r| matches!(r, Err(e) if is_storage_error(e))) {
        return Err(e.clone());
    }
    Ok(out)
}

/// Failures of one request, item by item; a storage error fails them all.
pub(super) async fn fail_batch(
    tx: &Transaction<'_>,
    now: i64,
    items: Vec<FailItem>,
    limits: &Limits,
    w: &mut Effects,
) -> Result<Vec<Result<FailOutcome>>> {
    let mut out = Vec::with_capacity(items.len());
    let mut moves = Vec::new();
    for item in items {
        let u: f64 = rand::random();
        match fail(tx, now, item, limits, u, &mut moves, w).await {
            Err(e) if is_storage_error(&e) => return Err(e),
            r => out.push(r),
        }
    }
    super::convoys::members_moved(tx, now, moves, limits, w).await?;
    Ok(out)
}

/// Lease extensions of one request, item by item; a storage error fails them all.
pub(super) async fn heartbeat_batch(
    tx: &Transaction<'_>,
    now: i64,
    items: Vec<HeartbeatRequest>,
    limits: &Limits,
    w: &mut Effects,
) -> Result<Vec<Result<HeartbeatOutcome>>> {
    let mut out = Vec::with_capacity(items.len());
    let mut moves = Vec::new();
    for req in items {
        match heartbeat(tx, now, &req, &mut moves).await {
            Err(e) if is_storage_error(&e) => return Err(e),
            r => out.push(r),
        }
    }
    super::convoys::members_moved(tx, now, moves, limits, w).await?;
    Ok(out)
}

#[async_trait]
impl JobStore for PgStore {
    async fn enqueue(&self, new: Vec<NewJob>) -> Result<Vec<EnqueueOutcome>> {
        let settings = self.ledger;
        if new.iter().any(|j| j.payment.is_some()) {
            // A hold may be refused after the jobs went in: this request needs its own
            // transaction, which its refusal rolls back.
            self.paid.store(true, std::sync::atomic::Ordering::Relaxed);
            return self
                .tx("enqueue", move |tx, now, w| {
                    boxed!(super::jobs::enqueue(tx, now, new, &settings, w).await)
                })
                .await;
        }
        match self.grouped("enqueue", Work::Enqueue(new)).await? {
            Done::Enqueue(out) => Ok(out),
            _ => Err(mismatch()),
        }
    }

    async fn claim(&self, req: ClaimRequest) -> Result<Vec<ClaimedJob>> {
        assert!(req.max >= 1, "claim max is validated above the store");
        match self.grouped("claim", Work::Claim(req)).await? {
            Done::Claim(out) => Ok(out),
            _ => Err(mismatch()),
        }
    }

    async fn heartbeat(&self, items: Vec<HeartbeatRequest>) -> Result<Vec<Result<HeartbeatOutcome>>> {
        let out = match self.grouped("heartbeat", Work::Heartbeat(items)).await {
            Ok(Done::Heartbeat(out)) => Ok(out),
            Ok(_) => Err(mismatch()),
            Err(e) => Err(e),
        };
        self.metrics.stale_items(out)
    }

    async fn release(&self, id: Uuid, lease: &str) -> Result<JobState> {
        let lease = lease.to_string();
        self.tx("release", move |tx, now, w| boxed!(super::jobs::release(tx, now, id, &lease, w).await)).await
    }

    async fn complete(&self, items: Vec<CompleteItem>) -> Result<Vec<Result<()>>> {
        let out = match self.grouped("complete", Work::Complete(items)).await {
            Ok(Done::Complete(out)) => Ok(out),
            Ok(_) => Err(mismatch()),
            Err(e) => Err(e),
        };
        self.metrics.stale_items(out)
    }

    async fn fail(&self, items: Vec<FailItem>) -> Result<Vec<Result<FailOutcome>>> {
        let out = match self.grouped("fail", Work::Fail(items)).await {
            Ok(Done::Fail(out)) => Ok(out),
            Ok(_) => Err(mismatch()),
            Err(e) => Err(e),
        };
        self.metrics.stale_items(out)
    }

    async fn cancel(&self, id: Uuid, reason: &str) -> Result<JobState> {
        let reason = reason.to_string();
        let limits = self.limits.clone();
        self.tx("cancel", move |tx, now, w| {
            boxed!(super::jobs::cancel(tx, now, id, &reason, &limits, w).await)
        })
        .await
    }

    async fn get_job(&self, id: Uuid) -> Result<Job> {
        self.read(move |c| boxed!(super::jobs::get(c, id).await)).await
    }

    async fn list_jobs(&self, filter: JobFilter, page: PageRequest) -> Result<Page<Job>> {
        let limit = page.limit;
        let cursor = page
            .cursor
            .map(|c| {
                c.parse::<i64>().map_err(|_| Error::invalid("cursor", "not a cursor returned by this server"))
            })
            .transpose()?;
        self.read(move |c| boxed!(super::jobs::list(c, &filter, limit, cursor).await)).await
    }

    async fn replay_dead(&self, selector: DeadSelector, max: usize) -> Result<ferry_core::Replayed> {
        let (limits, settings) = (self.limits.clone(), self.ledger);
        self.tx("replay_dead", move |tx, now, w| {
            boxed!(super::jobs::replay(tx, now, &selector, max, &limits, &settings, w).await)
        })
        .await
    }

    async fn purge_dead(&self, selector: DeadSelector, max: usize) -> Result<u64> {
        self.tx("purge_dead", move |tx, _, _| boxed!(super::jobs::purge(tx, &selector, max).await)).await
    }

    async fn reap_expired(&self, max: usize) -> Result<ReapOutcome> {
        let limits = self.limits.clone();
        self.tx("reap_expired", move |tx, now, w| boxed!(super::jobs::reap(tx, now, max, &limits, w).await))
            .await
    }

    async fn promote_due(&self, max: usize) -> Result<u64> {
        self.tx("promote_due", move |tx, now, w| boxed!(super::jobs::promote(tx, now, max, w).await)).await
    }

    async fn next_due_ms(&self) -> Result<Option<i64>> {
        self.read(|c| boxed!(super::jobs::next_due(c).await)).await
    }

    async fn prune_finished(&self, before_ms: i64, max: usize) -> Result<u64> {
        self.tx("prune_finished", move |tx, _, _| boxed!(super::jobs::prune(tx, before_ms, max).await)).await
    }
}

/// A batched command answered with another kind's outcome (a bug in the committer).
fn mismatch() -> Error {
    Error::internal("the committer answered a command with another kind's outcome")
}

impl PgStore {
    /// Runs `work` in this node's group committer, timed and counted as `op`.
    async fn grouped(&self, op: &'static str, work: Work) -> Result<Done> {
        self.metrics.timed(op, self.committer.run(work)).await
    }
}
