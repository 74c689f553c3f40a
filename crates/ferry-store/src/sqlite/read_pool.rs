//! A small pool of read-only SQLite connections; reads never wait for the writer (WAL). Each
//! read runs in one read transaction, so all of its statements see the same snapshot.

use ferry_core::{Error, Result};
use rusqlite::Connection;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// Read-only connections handed to blocking tasks one at a time.
pub(crate) struct ReadPool {
    conns: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
    size: usize,
}

impl ReadPool {
    /// Wraps already-opened read-only connections.
    pub fn new(conns: Vec<Connection>) -> Arc<Self> {
        assert!(!conns.is_empty(), "a read pool needs a connection");
        let permits = Arc::new(Semaphore::new(conns.len()));
        let size = conns.len();
        Arc::new(ReadPool { conns: Mutex::new(conns), permits, size })
    }

    /// Connections in use and the pool's size.
    pub fn usage(&self) -> (usize, usize) {
        (self.size - self.permits.available_permits(), self.size)
    }

    /// Runs `f` on a pooled connection in a blocking task, inside one read transaction: a read
    /// of several statements (a reconcile page, a search's window and candidates) never sees a
    /// write land between two of them.
    pub async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let permit =
            self.permits.clone().acquire_owned().await.map_err(|_| Error::unavailable("read pool closed"))?;
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn =
                pool.conns.lock().expect("read pool lock").pop().expect("a permit implies a connection");
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| snapshot(&conn, f)))
                .unwrap_or_else(|_| Err(Error::internal("a read panicked")));
            if !conn.is_autocommit() {
                // A read that failed or panicked inside its transaction: end it before the
                // connection serves again (nothing was written, so nothing is lost).
                let _ = super::exec_cached(&conn, "ROLLBACK");
            }
            pool.conns.lock().expect("read pool lock").push(conn);
            drop(permit);
            out
        })
        .await
        .map_err(|e| Error::internal(format!("read task failed: {e}")))?
    }
}

/// Runs `f` inside a deferred transaction on a read-only connection: the snapshot is taken at
/// its first statement and held until `COMMIT`, which only releases it.
fn snapshot<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
    super::exec_cached(conn, "BEGIN").map_err(super::db_err)?;
    let out = f(conn)?;
    super::exec_cached(conn, "COMMIT").map_err(super::db_err)?;
    Ok(out)
}
