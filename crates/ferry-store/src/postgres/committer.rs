//! The per-node group committer: job commands of concurrent requests share one transaction.
//!
//! On PostgreSQL each commit costs a WAL flush and a handful of round trips; SQLite's single
//! writer already shares one commit among every caller waiting at that moment. This does the
//! same for enqueues, claims, completions, failures and heartbeats: requests queue here, a
//! batch of them runs in one transaction (enqueues of plain jobs in one `INSERT … unnest`,
//! completions in one `UPDATE … FROM unnest`, the first claim of each queue in one `UPDATE`), and each
//! caller is answered with its own outcome once that transaction committed.
//!
//! Invariants:
//! - a caller is answered only after the transaction holding its work committed (or with the
//!   error that kept it from committing);
//! - one request's failure never fails its batch mates: every batched command decides before
//!   it writes, so its own error (a stale lease, a missing dependency) leaves the transaction
//!   whole; a database error that aborts the transaction rolls the batch back and every
//!   request runs again in a transaction of its own, so each gets the answer it would have had
//!   alone;
//! - at most `lanes` transactions are in flight; requests that arrive meanwhile wait for the
//!   next free lane and go in one batch, so a busy node commits as soon as a commit returns;
//! - a request is held back at most `max_gather` (only while recent batches were larger than
//!   what is waiting), so a lone request on an idle node starts at once;
//! - the queue is bounded (`limits.max_pending_writes`): past it, callers get 503
//!   `server_saturated`.
//!
//! What it does not batch: commands that may write before they can fail (enqueues with a
//! payment), and every rarer command (release, cancel, replay, maintenance), which keep a
//! transaction each.

use super::{Sinks, jobs, pg_err, pool_err};
use crate::effects::Effects;
use crate::rows::is_storage_error;
use deadpool_postgres::{Pool, Transaction};
use ferry_core::{
    ClaimRequest, ClaimedJob, Clock, CompleteItem, EnqueueOutcome, Error, ErrorCode, FailItem, FailOutcome,
    HeartbeatOutcome, HeartbeatRequest, Limits, NewJob, Result, StorageFault,
};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Most requests in one transaction: a batch's statements stay short enough to hold few
/// locks for long, and a rolled-back batch re-runs a bounded number of requests alone.
const MAX_BATCH_REQUESTS: usize = 256;

/// Times a batch is retried whole after a deadlock or serialization failure before its
/// requests run alone.
const BUSY_RETRIES: usize = 2;

/// One job command as data, so a rolled-back batch can run it again.
#[derive(Clone)]
pub(super) enum Work {
    /// Jobs to insert, all or nothing (none with a payment).
    Enqueue(Vec<NewJob>),
    Claim(ClaimRequest),
    Complete(Vec<CompleteItem>),
    Fail(Vec<FailItem>),
    Heartbeat(Vec<HeartbeatRequest>),
}

/// A command's answer, of the same kind as its [`Work`].
pub(super) enum Done {
    Enqueue(Vec<EnqueueOutcome>),
    Claim(Vec<ClaimedJob>),
    Complete(Vec<Result<()>>),
    Fail(Vec<Result<FailOutcome>>),
    Heartbeat(Vec<Result<HeartbeatOutcome>>),
}

struct Request {
    work: Work,
    reply: oneshot::Sender<Result<Done>>,
}

/// What the committer needs of the store.
pub(super) struct Settings {
    pub pool: Pool,
    pub clock: Arc<dyn Clock>,
    pub limits: Arc<Limits>,
    pub sinks: Sinks,
    pub max_gather: Duration,
    pub lanes: usize,
}

/// A handle to this node's committer task.
pub(super) struct Committer {
    sender: mpsc::Sender<Request>,
}

impl Committer {
    /// Starts the committer task (returned, so the store can stop it).
    pub fn start(settings: Settings) -> (Committer, tokio::task::JoinHandle<()>) {
        assert!(settings.lanes >= 1);
        let (sender, rx) = mpsc::channel(settings.limits.max_pending_writes.max(1));
        let task = tokio::spawn(gather(rx, Arc::new(settings)));
        (Committer { sender }, task)
    }

    /// Runs `work` in this node's next batch and returns its answer once committed.
    pub async fn run(&self, work: Work) -> Result<Done> {
        let (reply, answer) = oneshot::channel();
        match self.sender.try_send(Request { work, reply }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(Error::new(
                    ErrorCode::ServerSaturated,
                    "this node has limits.max_pending_writes writes waiting to commit; retry shortly",
                ));
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Error::unavailable("the PostgreSQL committer has stopped"));
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(Error::unavailable("the transaction carrying this write was interrupted; retry it"))
        })
    }
}

/// Takes requests off the queue in batches, one batch per free lane.
async fn gather(mut rx: mpsc::Receiver<Request>, settings: Arc<Settings>) {
    let lanes = Arc::new(Semaphore::new(settings.lanes));
    // How many requests recent batches carried: while it is above what is waiting, a batch
    // waits up to `max_gather` for more (load is arriving); after a quiet spell it falls to 1
    // and nothing waits.
    let mut recent = 1.0_f64;
    loop {
        let Ok(lane) = lanes.clone().acquire_owned().await else { return };
        let Some(first) = rx.recv().await else { return };
        let mut batch = vec![first];
        drain(&mut rx, &mut batch);
        let want = (recent.round() as usize).min(MAX_BATCH_REQUESTS);
        if batch.len() < want && !settings.max_gather.is_zero() {
            let deadline = tokio::time::Instant::now() + settings.max_gather;
            while batch.len() < want {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(r)) => {
                        batch.push(r);
                        drain(&mut rx, &mut batch);
                    }
                    Ok(None) | Err(_) => break,
                }
            }
        }
        recent = 0.7 * recent + 0.3 * batch.len() as f64;
        // A caller that gave up before its turn is not written for.
        batch.retain(|r| !r.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let settings = settings.clone();
        tokio::spawn(async move {
            settings.commit(batch).await;
            drop(lane);
        });
    }
}

/// Moves what is already queued into `batch`, up to [`MAX_BATCH_REQUESTS`].
fn drain(rx: &mut mpsc::Receiver<Request>, batch: &mut Vec<Request>) {
    while batch.len() < MAX_BATCH_REQUESTS {
        match rx.try_recv() {
            Ok(r) => batch.push(r),
            Err(_) => break,
        }
    }
}

impl Settings {
    /// Commits `batch` and answers each request: together if it can, else each alone.
    async fn commit(&self, batch: Vec<Request>) {
        let (work, replies): (Vec<Work>, Vec<_>) = batch.into_iter().map(|r| (r.work, r.reply)).unzip();
        let mut tries = 0;
        let err = loop {
            match self.transaction(&work).await {
                Ok(answers) => {
                    for (reply, a) in replies.into_iter().zip(answers) {
                        let _ = reply.send(a);
                    }
                    return;
                }
                Err(e) if e.storage_fault() == Some(StorageFault::Busy) && tries < BUSY_RETRIES => {
                    tries += 1;
                }
                Err(e) => break e,
            }
        };
        if work.len() == 1 || err.storage_fault() == Some(StorageFault::Unreachable) {
            // Alone already, or the database cannot be reached: every request gets the error.
            for reply in replies {
                let _ = reply.send(Err(err.clone()));
            }
            return;
        }
        // One request's database error must not fail the others: each runs on its own.
        for (w, reply) in work.into_iter().zip(replies) {
            let answer = match self.transaction(std::slice::from_ref(&w)).await {
                Ok(mut a) => a.pop().unwrap_or_else(|| Err(Error::internal("a batch of one gave no answer"))),
                Err(e) => Err(e),
            };
            let _ = reply.send(answer);
        }
    }

    /// Runs `work` in one transaction: each request's answer, or why it did not commit.
    async fn transaction(&self, work: &[Work]) -> Result<Vec<Result<Done>>> {
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let started = Instant::now();
        let tx = client.transaction().await.map_err(pg_err)?;
        let now = self.clock.now_ms();
        let mut fx = Effects::default();
        let out = match self.apply(&tx, now, work, &mut fx).await {
            Ok(out) => out,
            Err(e) => {
                // Roll back before answering: the rows it locked would stay locked otherwise.
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        tx.commit().await.map_err(pg_err)?;
        self.sinks.metrics.transaction(work.len(), started.elapsed());
        self.sinks.after_commit(&fx);
        Ok(out)
    }

    /// Applies every request in `tx`; an error means the transaction must roll back.
    async fn apply(
        &self,
        tx: &Transaction<'_>,
        now: i64,
        work: &[Work],
        fx: &mut Effects,
    ) -> Result<Vec<Result<Done>>> {
        let mut out: Vec<Option<Result<Done>>> = (0..work.len()).map(|_| None).collect();
        self.enqueues(tx, now, work, &mut out, fx).await?;
        self.claims(tx, now, work, &mut out, fx).await?;
        self.completions(tx, now, work, &mut out, fx).await?;
        for (i, w) in work.iter().enumerate() {
            match w {
                Work::Fail(items) => {
                    let r = jobs::fail_batch(tx, now, items.clone(), &self.limits, fx).await?;
                    out[i] = Some(Ok(Done::Fail(r)));
                }
                Work::Heartbeat(items) => {
                    let r = jobs::heartbeat_batch(tx, now, items.clone(), &self.limits, fx).await?;
                    out[i] = Some(Ok(Done::Heartbeat(r)));
                }
                _ => {}
            }
        }
        self.sinks.before_commit(tx, now, fx).await?;
        // PostgreSQL answers COMMIT of an aborted transaction with a silent rollback: if some
        // answer is an error, make sure it did not abort the transaction unseen (one round trip,
        // only then) before anyone is told their work committed.
        if out.iter().any(|o| o.as_ref().is_some_and(has_error)) && !alive(tx).await {
            return Err(Error::internal("a batched command aborted its transaction"));
        }
        out.into_iter()
            .map(|o| o.ok_or_else(|| Error::internal("a batched request was not applied")))
            .collect::<Result<Vec<_>>>()
    }

    /// Enqueues: plain jobs of every request in one insert, the others request by request.
    async fn enqueues(
        &self,
        tx: &Transaction<'_>,
        now: i64,
        work: &[Work],
        out: &mut [Option<Result<Done>>],
        fx: &mut Effects,
    ) -> Result<()> {
        let mut plain: Vec<(usize, &[NewJob])> = Vec::new();
        for (i, w) in work.iter().enumerate() {
            let Work::Enqueue(jobs) = w else { continue };
            if jobs.iter().all(jobs::is_plain) {
                plain.push((i, jobs));
                continue;
            }
            let mut own = Effects::default();
            match jobs::enqueue(tx, now, jobs.clone(), &self.sinks.ledger, &mut own).await {
                Ok(r) => {
                    fx.merge(own);
                    out[i] = Some(Ok(Done::Enqueue(r)));
                }
                // A missing dependency is found before anything is written: the transaction
                // is whole unless the error came from the database.
                Err(e) if !is_storage_error(&e) && alive(tx).await => out[i] = Some(Err(e)),
                Err(e) => return Err(e),
            }
        }
        if !plain.is_empty() {
            let lists: Vec<&[NewJob]> = plain.iter().map(|(_, j)| *j).collect();
            let answers = jobs::enqueue_plain(tx, now, &lists, fx).await?;
            for ((i, _), a) in plain.into_iter().zip(answers) {
                out[i] = Some(Ok(Done::Enqueue(a)));
            }
        }
        Ok(())
    }

    /// Claims: the first claim of each queue that is neither paused nor limited goes into one
    /// statement; further claims of a queue follow it one by one (a statement must not meet
    /// its own locks), and a limited queue's claims run alone, each reading its count and
    /// tokens under the queue's lock.
    async fn claims(
        &self,
        tx: &Transaction<'_>,
        now: i64,
        work: &[Work],
        out: &mut [Option<Result<Done>>],
        fx: &mut Effects,
    ) -> Result<()> {
        let claims: Vec<(usize, &ClaimRequest)> = work
            .iter()
            .enumerate()
            .filter_map(|(i, w)| if let Work::Claim(r) = w { Some((i, r)) } else { None })
            .collect();
        if claims.is_empty() {
            return Ok(());
        }
        let mut queues: Vec<&str> = claims.iter().map(|(_, r)| r.queue.as_str()).collect();
        queues.sort_unstable();
        queues.dedup();
        let held = jobs::held_queues(tx, &queues).await?;
        let mut first: Vec<(usize, &ClaimRequest)> = Vec::new();
        let mut rest: Vec<(usize, &ClaimRequest)> = Vec::new();
        for (i, req) in claims {
            match held.iter().find(|(q, _)| *q == req.queue) {
                Some((_, true)) => out[i] = Some(Ok(Done::Claim(Vec::new()))),
                Some((_, false)) => rest.push((i, req)),
                None if first.iter().any(|(_, f)| f.queue == req.queue) => rest.push((i, req)),
                None => first.push((i, req)),
            }
        }
        if !first.is_empty() {
            let reqs: Vec<&ClaimRequest> = first.iter().map(|(_, r)| *r).collect();
            let got = jobs::claim_many(tx, now, &reqs, fx).await?;
            for ((i, _), jobs) in first.into_iter().zip(got) {
                out[i] = Some(Ok(Done::Claim(jobs)));
            }
        }
        for (i, req) in rest {
            out[i] = Some(Ok(Done::Claim(jobs::claim(tx, now, req, fx).await?)));
        }
        Ok(())
    }

    /// Completions of every request in one statement, answered request by request.
    async fn completions(
        &self,
        tx: &Transaction<'_>,
        now: i64,
        work: &[Work],
        out: &mut [Option<Result<Done>>],
        fx: &mut Effects,
    ) -> Result<()> {
        let mut owners = Vec::new();
        let mut items = Vec::new();
        for (i, w) in work.iter().enumerate() {
            if let Work::Complete(list) = w {
                owners.push((i, list.len()));
                items.extend(list.iter().cloned());
            }
        }
        if items.is_empty() {
            return Ok(());
        }
        let mut answers = jobs::complete_batch(tx, now, items, &self.limits, fx).await?.into_iter();
        for (i, n) in owners {
            out[i] = Some(Ok(Done::Complete(answers.by_ref().take(n).collect())));
        }
        Ok(())
    }
}

/// Whether an answer is, or holds, an error.
fn has_error(answer: &Result<Done>) -> bool {
    match answer {
        Err(_) => true,
        Ok(Done::Enqueue(_) | Done::Claim(_)) => false,
        Ok(Done::Complete(items)) => items.iter().any(|r| r.is_err()),
        Ok(Done::Fail(items)) => items.iter().any(|r| r.is_err()),
        Ok(Done::Heartbeat(items)) => items.iter().any(|r| r.is_err()),
    }
}

/// Whether `tx` still takes statements (a database error aborts it until rollback).
async fn alive(tx: &Transaction<'_>) -> bool {
    tx.simple_query("SELECT 1").await.is_ok()
}
