//! The single SQLite writer: one thread owns the write connection and commits every
//! concurrent command of a moment in one transaction (group commit).
//!
//! Invariants:
//! - only this thread writes, so `SQLITE_BUSY` never reaches a caller;
//! - a command that fails must fail before it writes (check, then write): the writer
//!   verifies this with `total_changes`; a command that fails after writing, or fails with a
//!   storage error, or panics, poisons its transaction, which is rolled back whole (its batch
//!   mates are answered `unavailable` and may retry). This replaces a savepoint per command,
//!   whose page copying cost a fifth of the writer's time;
//! - a caller is answered only after the transaction that holds its command is durable, and
//!   wake-ups are sent after that commit too;
//! - the queue of pending commands is bounded (`channel_capacity`): callers wait for room.

use super::counts::{CountsCell, Deltas};
use crate::effects::Effects;
use crate::events::EventBus;
use crate::notify::Notifier;
use ferry_core::{Error, Result, StorageFault};
use rusqlite::Connection;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

type Reply = Box<dyn FnOnce(Result<()>) + Send>;
/// Runs once per transaction after its commands, before its events are numbered: what a group
/// does as a whole (settling the holds of the paid jobs its commands ended). An error rolls the
/// group back, its commands answered `unavailable`.
pub(crate) type BeforeCommit = Box<dyn Fn(&Connection, &mut Effects) -> Result<()> + Send>;
/// A command: runs on the writer's connection, says whether it poisoned the transaction (and
/// with which fault, passed on to its batch mates), and returns how to answer its caller once
/// the commit outcome is known.
type Op = Box<dyn FnOnce(&Connection, &mut Effects) -> (Option<StorageFault>, Reply) + Send>;

enum Msg {
    Op(Op),
    Close(oneshot::Sender<()>),
}

/// Handle to the writer thread.
pub(crate) struct Writer {
    tx: mpsc::Sender<Msg>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<crate::metrics::StoreMetrics>,
}

impl Writer {
    /// Starts the writer thread on `conn`.
    pub fn spawn(conn: Connection, sinks: Sinks, max_batch_ops: usize, capacity: usize) -> Writer {
        assert!(max_batch_ops >= 1 && capacity >= 1);
        let (tx, rx) = mpsc::channel(capacity);
        let metrics = sinks.metrics.clone();
        let thread = std::thread::Builder::new()
            .name("ferry-sqlite-writer".into())
            .spawn(move || run(conn, rx, sinks, max_batch_ops))
            .expect("spawn writer thread");
        Writer { tx, thread: std::sync::Mutex::new(Some(thread)), metrics }
    }

    /// Runs `f` in the next group-commit transaction and returns its result once durable.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Effects) -> Result<T> + Send + 'static,
    {
        self.write_after(move |conn, _, fx| f(conn, fx)).await
    }

    /// [`Writer::write`] where `f` also sees the count changes of the commands before it in
    /// the same transaction (not committed yet, so not in the counts): committed counts plus
    /// these are the exact counts `f` runs against.
    pub async fn write_after<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Deltas, &mut Effects) -> Result<T> + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel::<Result<T>>();
        let op: Op = Box::new(move |conn, fx| {
            let before = conn.total_changes();
            let mut local = Effects::default();
            let outcome = match catch_unwind(AssertUnwindSafe(|| f(conn, &fx.deltas, &mut local))) {
                Ok(r) => r,
                Err(_) => Err(Error::internal("a storage command panicked; its transaction was rolled back")),
            };
            let poisoned = match &outcome {
                Ok(_) => {
                    fx.merge(local);
                    None
                }
                Err(e) if crate::rows::is_storage_error(e) || conn.total_changes() != before => {
                    Some(e.storage_fault().unwrap_or(StorageFault::Other))
                }
                Err(_) => None,
            };
            (
                poisoned,
                Box::new(move |commit: Result<()>| {
                    // A command's own error wins over its transaction's fate.
                    let _ = reply_tx.send(match (outcome, commit) {
                        (Err(e), _) | (Ok(_), Err(e)) => Err(e),
                        (Ok(v), Ok(())) => Ok(v),
                    });
                }),
            )
        });
        match self.tx.try_send(Msg::Op(op)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(op)) => {
                // The writer's queue is full: this write waits (a busy wait, measured).
                let started = Instant::now();
                self.tx.send(op).await.map_err(|_| Error::unavailable("the storage writer has stopped"))?;
                self.metrics.waited(started.elapsed());
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Error::unavailable("the storage writer has stopped"));
            }
        }
        reply_rx.await.map_err(|_| Error::unavailable("the storage writer stopped before committing"))?
    }

    /// Finishes queued commands and stops the thread.
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let handle = self.thread.lock().expect("writer handle").take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// Where the effects of a commit go, and the group step before it.
pub(crate) struct Sinks {
    /// Wakes claimers after a commit.
    pub notifier: Arc<Notifier>,
    /// The in-memory counts the commit moves.
    pub counts: Arc<CountsCell>,
    /// Publishes the committed events.
    pub bus: Arc<EventBus>,
    /// Times transactions.
    pub metrics: Arc<crate::metrics::StoreMetrics>,
    /// Runs once per transaction before its events are numbered.
    pub before_commit: Option<BeforeCommit>,
}

fn run(conn: Connection, mut rx: mpsc::Receiver<Msg>, sinks: Sinks, max_batch_ops: usize) {
    let Sinks { notifier, counts, bus, metrics, before_commit } = sinks;
    let mut ops: Vec<Op> = Vec::with_capacity(max_batch_ops);
    let mut replies: Vec<Reply> = Vec::with_capacity(max_batch_ops);
    let mut closing: Option<oneshot::Sender<()>> = None;
    while closing.is_none() {
        match rx.blocking_recv() {
            None => break,
            Some(Msg::Close(done)) => closing = Some(done),
            Some(Msg::Op(op)) => ops.push(op),
        }
        while ops.len() < max_batch_ops && closing.is_none() {
            match rx.try_recv() {
                Ok(Msg::Op(op)) => ops.push(op),
                Ok(Msg::Close(done)) => closing = Some(done),
                Err(_) => break,
            }
        }
        if ops.is_empty() {
            continue;
        }
        let started = Instant::now();
        let n_ops = ops.len();
        let mut pending = ops.drain(..);
        // One transaction per pass; a poisoned transaction is rolled back and the commands
        // not yet run continue in a fresh one.
        loop {
            let mut fx = Effects::default();
            if let Err(e) = super::exec_cached(&conn, "BEGIN IMMEDIATE") {
                tracing::error!(error = %e, "writer could not begin a transaction");
                pending.by_ref().for_each(drop); // dropping an op answers its caller `unavailable`
                break;
            }
            let mut poisoned: Option<StorageFault> = None;
            for op in pending.by_ref() {
                let (bad, reply) = op(&conn, &mut fx);
                replies.push(reply);
                if bad.is_some() {
                    poisoned = bad;
                    break;
                }
            }
            if poisoned.is_none()
                && let Some(hook) = &before_commit
            {
                let hooked = catch_unwind(AssertUnwindSafe(|| hook(&conn, &mut fx)));
                if !matches!(hooked, Ok(Ok(()))) {
                    tracing::error!("the writer's group step failed; the batch is rolled back");
                    let fault = match hooked {
                        Ok(Err(e)) => e.storage_fault(),
                        _ => None,
                    };
                    poisoned = Some(fault.unwrap_or(StorageFault::Other));
                }
            }
            // The group's events, numbered after the last committed cursor, in one row.
            let head = bus.head();
            if poisoned.is_none() && !fx.events.is_empty() {
                for (i, e) in fx.events.iter_mut().enumerate() {
                    e.cursor = head + 1 + i as u64;
                }
                let at = fx.events.last().map_or(0, |e| e.at.0);
                let insert = conn.prepare_cached(
                    "INSERT INTO event_log (first_cursor, n, at, body) VALUES (?1, ?2, ?3, ?4)",
                );
                if let Err(e) = insert.and_then(|mut s| {
                    s.execute(rusqlite::params![
                        head as i64 + 1,
                        fx.events.len() as i64,
                        at,
                        crate::events::encode(&fx.events)
                    ])
                }) {
                    tracing::error!(error = %e, "writer could not record events; the batch is rolled back");
                    poisoned = Some(super::fault_of(&e));
                }
            }
            counts.begin_commit();
            let commit = if let Some(fault) = poisoned {
                let _ = super::exec_cached(&conn, "ROLLBACK");
                Err(Error::unavailable(
                    "a storage command failed mid-write; its group of writes was rolled back, retry",
                )
                .with_fault(fault))
            } else {
                super::exec_cached(&conn, "COMMIT").map_err(|e| {
                    tracing::error!(error = %e, "writer commit failed; the batch is rolled back");
                    let _ = super::exec_cached(&conn, "ROLLBACK");
                    Error::unavailable(format!("storage commit failed: {e}")).with_fault(super::fault_of(&e))
                })
            };
            counts.end_commit(commit.is_ok().then_some(&fx.deltas));
            if commit.is_ok() {
                for q in &fx.wake {
                    notifier.wake(q);
                }
                if let Some(d) = fx.due_ms {
                    notifier.due_at(d);
                }
                metrics.committed(&fx.events);
                bus.publish(std::mem::take(&mut fx.events));
            }
            for reply in replies.drain(..) {
                // The poisoning command keeps its own error; its batch mates get `commit`'s.
                reply(commit.clone());
            }
            if pending.len() == 0 {
                break;
            }
        }
        drop(pending);
        metrics.transaction(n_ops, started.elapsed());
    }
    // Answer whatever is still queued as unavailable by dropping it, then stop.
    rx.close();
    while rx.try_recv().is_ok() {}
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)");
    drop(conn);
    if let Some(done) = closing {
        let _ = done.send(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::ErrorCode;

    fn writer() -> (Writer, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("w.db")).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (v INTEGER)").unwrap();
        let metrics = Arc::new(crate::metrics::StoreMetrics::new(1));
        let sinks = Sinks {
            notifier: Notifier::new(),
            counts: Default::default(),
            bus: EventBus::new(0),
            metrics,
            before_commit: None,
        };
        (Writer::spawn(conn, sinks, 64, 64), dir)
    }

    async fn count(w: &Writer, v: i64) -> i64 {
        w.write(move |c, _| {
            Ok(c.query_row("SELECT count(*) FROM t WHERE v = ?1", [v], |r| r.get(0)).unwrap())
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_command_failing_after_writing_is_rolled_back_with_its_batch() {
        let (w, _dir) = writer();
        let w = Arc::new(w);
        let good = {
            let w = w.clone();
            tokio::spawn(async move {
                w.write(|c, _| {
                    c.execute("INSERT INTO t VALUES (1)", []).map(|_| ()).map_err(super::super::db_err)
                })
                .await
            })
        };
        let bad = w
            .write(|c, _| -> Result<()> {
                c.execute("INSERT INTO t VALUES (2)", []).unwrap();
                Err(Error::invalid("x", "logical error after a write"))
            })
            .await;
        assert_eq!(
            bad.unwrap_err().message,
            "logical error after a write",
            "the command keeps its own error"
        );
        let good = good.await.unwrap();
        assert_eq!(count(&w, 2).await, 0, "the failed command's write is gone");
        assert_eq!(
            count(&w, 1).await,
            i64::from(good.is_ok()),
            "a batch mate is committed iff it was told so"
        );
        // A logical error before any write leaves its batch mates alone.
        w.write(|_, _| -> Result<()> { Err(Error::invalid("x", "early")) }).await.unwrap_err();
        w.write(|c, _| c.execute("INSERT INTO t VALUES (3)", []).map(|_| ()).map_err(super::super::db_err))
            .await
            .unwrap();
        assert_eq!(count(&w, 3).await, 1);
        // A panic is contained and rolled back.
        let e = w
            .write(|c, _| -> Result<()> {
                c.execute("INSERT INTO t VALUES (4)", []).unwrap();
                panic!("bug")
            })
            .await
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Internal);
        assert_eq!(count(&w, 4).await, 0);
        w.close().await;
    }
}
