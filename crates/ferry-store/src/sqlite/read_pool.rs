//! A small pool of read-only SQLite connections; reads never wait for the writer (WAL).

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

    /// Runs `f` on a pooled connection in a blocking task.
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
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&conn)))
                .unwrap_or_else(|_| Err(Error::internal("a read panicked")));
            pool.conns.lock().expect("read pool lock").push(conn);
            drop(permit);
            out
        })
        .await
        .map_err(|e| Error::internal(format!("read task failed: {e}")))?
    }
}
