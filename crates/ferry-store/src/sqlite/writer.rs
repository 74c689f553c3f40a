//! The single SQLite writer: one thread owns the write connection and commits every
//! concurrent command of a moment in one transaction (group commit).
//!
//! Invariants:
//! - only this thread writes, so `SQLITE_BUSY` never reaches a caller;
//! - each command runs inside its own savepoint: a failing command is rolled back alone and
//!   the others of its batch still commit;
//! - a caller is answered only after the transaction that holds its command is durable, and
//!   wake-ups are sent after that commit too;
//! - the queue of pending commands is bounded (`channel_capacity`): callers wait for room.

use crate::notify::Notifier;
use ferry_core::{Error, Result};
use rusqlite::Connection;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Side effects a command asks for once its transaction commits.
#[derive(Debug, Default)]
pub(crate) struct Effects {
    /// Queues that gained ready jobs.
    pub wake: Vec<String>,
    /// Earliest `run_at` of jobs that became scheduled.
    pub due_ms: Option<i64>,
}

impl Effects {
    /// Asks for the claimers of `queue` to be woken.
    pub fn wake(&mut self, queue: &str) {
        if !self.wake.iter().any(|q| q == queue) {
            self.wake.push(queue.to_string());
        }
    }

    /// Notes that a job became due at `at_ms`.
    pub fn due(&mut self, at_ms: i64) {
        self.due_ms = Some(self.due_ms.map_or(at_ms, |d| d.min(at_ms)));
    }

    fn merge(&mut self, other: Effects) {
        for q in other.wake {
            self.wake(&q);
        }
        if let Some(d) = other.due_ms {
            self.due(d);
        }
    }
}

type Reply = Box<dyn FnOnce(Result<()>) + Send>;
type Op = Box<dyn FnOnce(&Connection, &mut Effects) -> Reply + Send>;

enum Msg {
    Op(Op),
    Close(oneshot::Sender<()>),
}

/// Counters the writer keeps about itself (for benchmarks and, later, metrics).
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Transactions committed.
    pub commits: std::sync::atomic::AtomicU64,
    /// Commands executed.
    pub ops: std::sync::atomic::AtomicU64,
    /// Time spent inside transactions, in microseconds.
    pub busy_us: std::sync::atomic::AtomicU64,
}

/// Handle to the writer thread.
pub(crate) struct Writer {
    tx: mpsc::Sender<Msg>,
    thread: std::sync::Mutex<Option<JoinHandle<()>>>,
    pub stats: Arc<WriterStats>,
}

impl Writer {
    /// Starts the writer thread on `conn`.
    pub fn spawn(conn: Connection, notifier: Arc<Notifier>, max_batch_ops: usize, capacity: usize) -> Writer {
        assert!(max_batch_ops >= 1 && capacity >= 1);
        let (tx, rx) = mpsc::channel(capacity);
        let stats = Arc::new(WriterStats::default());
        let thread_stats = stats.clone();
        let thread = std::thread::Builder::new()
            .name("ferry-sqlite-writer".into())
            .spawn(move || run(conn, rx, notifier, max_batch_ops, thread_stats))
            .expect("spawn writer thread");
        Writer { tx, thread: std::sync::Mutex::new(Some(thread)), stats }
    }

    /// Runs `f` in the next group-commit transaction and returns its result once durable.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Effects) -> Result<T> + Send + 'static,
    {
        let (reply_tx, reply_rx) = oneshot::channel::<Result<T>>();
        let op: Op = Box::new(move |conn, fx| {
            let mut local = Effects::default();
            let outcome = in_savepoint(conn, |c| f(c, &mut local));
            if outcome.is_ok() {
                fx.merge(local);
            }
            Box::new(move |commit: Result<()>| {
                let _ = reply_tx.send(commit.and(outcome));
            })
        });
        self.tx.send(Msg::Op(op)).await.map_err(|_| Error::unavailable("the storage writer has stopped"))?;
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

fn in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    conn.prepare_cached("SAVEPOINT op").and_then(|mut s| s.execute([])).map_err(super::db_err)?;
    let outcome = match catch_unwind(AssertUnwindSafe(|| f(conn))) {
        Ok(r) => r,
        Err(_) => Err(Error::internal("a storage command panicked; it was rolled back")),
    };
    let end = if outcome.is_ok() { "RELEASE op" } else { "ROLLBACK TO op" };
    conn.prepare_cached(end).and_then(|mut s| s.execute([])).map_err(super::db_err)?;
    if outcome.is_err() {
        conn.prepare_cached("RELEASE op").and_then(|mut s| s.execute([])).map_err(super::db_err)?;
    }
    outcome
}

fn run(
    conn: Connection,
    mut rx: mpsc::Receiver<Msg>,
    notifier: Arc<Notifier>,
    max_batch_ops: usize,
    stats: Arc<WriterStats>,
) {
    use std::sync::atomic::Ordering::Relaxed;
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
        let mut fx = Effects::default();
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "writer could not begin a transaction");
            ops.clear(); // dropping an op answers its caller `unavailable`
            continue;
        }
        let n_ops = ops.len();
        for op in ops.drain(..) {
            replies.push(op(&conn, &mut fx));
        }
        let commit = conn.execute_batch("COMMIT").map_err(|e| {
            tracing::error!(error = %e, "writer commit failed; the batch is rolled back");
            let _ = conn.execute_batch("ROLLBACK");
            Error::unavailable(format!("storage commit failed: {e}"))
        });
        stats.commits.fetch_add(1, Relaxed);
        stats.ops.fetch_add(n_ops as u64, Relaxed);
        stats.busy_us.fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        if commit.is_ok() {
            for q in &fx.wake {
                notifier.wake(q);
            }
            if let Some(d) = fx.due_ms {
                notifier.due_at(d);
            }
        }
        for reply in replies.drain(..) {
            reply(commit.clone());
        }
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
