//! The SQLite backend: WAL, one group-commit writer thread, a pool of read-only readers.
//!
//! `synchronous=FULL` (the default) makes every acknowledged write survive power loss;
//! `NORMAL` survives a process crash but may lose the last commits on power loss, for
//! roughly 4× the single-writer commit rate. Group commit pays one fsync per batch either way.

mod access;
mod checkpoints;
mod convoys;
mod counts;
mod events;
mod hosts;
mod items;
mod jobs;
mod ledger;
mod limits;
mod memory;
mod messages;
mod queues;
mod read_pool;
mod schedules;
pub mod schema;
mod tokens;
mod workers;
mod writer;

use crate::StoreCore;
use crate::effects::Effects;
use crate::events::EventBus;
use crate::notify::Notifier;
use async_trait::async_trait;
use counts::{Counts, CountsCell};
use ferry_core::{Clock, Error, ErrorCode, Limits, Result, StorageFault};
use read_pool::ReadPool;
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use std::path::PathBuf;
use std::sync::Arc;
use writer::Writer;

/// SQLite durability level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// fsync on every commit: nothing acknowledged is lost, even on power loss.
    #[default]
    Full,
    /// fsync at checkpoints only: survives process crashes, not power loss.
    Normal,
}

/// Bytes of the database file each reader maps (SQLite caps it at its compile-time maximum).
const READER_MMAP_BYTES: u64 = 1 << 30;

/// Connections that read the event log for consumers catching up. They map nothing and keep
/// a small page cache, so a reader replaying a large log costs the process a bounded amount of
/// memory (the file's pages stay in the OS cache, outside the server's RSS), and catch-up
/// never holds more than this many of the database's connections.
const LOG_READERS: usize = 2;

/// Page cache of each log reader, in KiB.
const LOG_READER_CACHE_KIB: u64 = 2_048;

/// How to open a SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// Database file; created with its directory if missing.
    pub path: PathBuf,
    /// Durability level.
    pub synchronous: Synchronous,
    /// Read-only connections in the pool.
    pub readers: usize,
    /// Most commands committed in one transaction.
    pub max_batch_ops: usize,
    /// Most commands waiting for the writer before callers wait for room.
    pub channel_capacity: usize,
    /// Input limits (error text, history length).
    pub limits: Limits,
    /// The `[ledger]` settings the store applies.
    pub ledger: crate::LedgerSettings,
}

impl SqliteConfig {
    /// Defaults for a database at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteConfig {
            path: path.into(),
            synchronous: Synchronous::Full,
            readers: 4,
            max_batch_ops: 1024,
            channel_capacity: 8192,
            limits: Limits::default(),
            ledger: crate::LedgerSettings::default(),
        }
    }
}

/// A ferry store in one SQLite file.
pub struct SqliteStore {
    writer: Writer,
    readers: Arc<ReadPool>,
    /// Reads of the event log by catching-up consumers (see [`LOG_READERS`]).
    log_readers: Arc<ReadPool>,
    notifier: Arc<Notifier>,
    clock: Arc<dyn Clock>,
    limits: Arc<Limits>,
    counts: Arc<CountsCell>,
    checkpointer: Checkpointer,
    /// Held while open: one process per database file (the in-memory counts rely on it).
    lock: std::sync::Mutex<Option<std::fs::File>>,
    path: PathBuf,
    bus: Arc<EventBus>,
    metrics: Arc<crate::metrics::StoreMetrics>,
    ledger: crate::LedgerSettings,
    /// Whether some paid job may hold funds: only then does a write that ends jobs look for
    /// holds to settle.
    paid: Arc<std::sync::atomic::AtomicBool>,
}

/// The lock file beside a database (`<db>.lock`).
pub fn lock_path(db: &std::path::Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// The writer's group step: a paid job that one of the group's commands ended is paid (or its
/// hold voided) in the same transaction, all of the group's at once (one ledger load).
fn settle_paid(
    clock: Arc<dyn Clock>,
    settings: crate::LedgerSettings,
    paid: Arc<std::sync::atomic::AtomicBool>,
) -> writer::BeforeCommit {
    Box::new(move |conn, fx| {
        if fx.jobs_ended() && paid.load(std::sync::atomic::Ordering::Relaxed) {
            // A thousand at a time (one ledger load each), until none is left open.
            while ledger::settle_ended(conn, clock.now_ms(), &settings, fx)? == ledger::SETTLE_BATCH {}
        }
        Ok(())
    })
}

/// Takes the database's exclusive process lock, or says who holds it.
pub fn lock_file(db: &std::path::Path) -> Result<std::fs::File> {
    let path = lock_path(db);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::unavailable(format!("cannot open lock file {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::new(
            ErrorCode::Unavailable,
            format!("database {} is in use by another ferry process", db.display()),
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Error::unavailable(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

/// Copies the WAL back into the database from its own thread, so the writer never pays for
/// checkpoints (SQLite's automatic checkpoint is switched off on the writer's connection).
/// A passive checkpoint never waits for anyone, so under a write rate above what it keeps up
/// with the log would only grow; past `limits.max_sqlite_wal_bytes` a truncating checkpoint
/// makes the writer wait for the copy instead (backpressure), and empties the file.
struct Checkpointer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// How often the checkpointer runs.
const CHECKPOINT_INTERVAL_MS: u64 = 200;

impl Checkpointer {
    fn spawn(conn: Connection, wal: PathBuf, max_wal_bytes: u64) -> Checkpointer {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ferry-sqlite-checkpoint".into())
            .spawn(move || {
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::park_timeout(std::time::Duration::from_millis(CHECKPOINT_INTERVAL_MS));
                    let wal_bytes = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
                    let truncate = wal_bytes > max_wal_bytes;
                    let mode = if truncate { "TRUNCATE" } else { "PASSIVE" };
                    // One row: whether it gave up on a busy lock, then the log's frames.
                    let busy =
                        conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| r.get::<_, i64>(0));
                    match (busy, truncate) {
                        (Err(e), _) => tracing::warn!(error = %e, mode, wal_bytes, "WAL checkpoint failed"),
                        (Ok(0), true) => {
                            tracing::info!(
                                wal_bytes,
                                max_wal_bytes,
                                "WAL over its limit: copied back and truncated"
                            )
                        }
                        (Ok(_), true) => {
                            tracing::warn!(wal_bytes, max_wal_bytes, "WAL over its limit, but busy: retrying")
                        }
                        (Ok(_), false) => {}
                    }
                }
            })
            .expect("spawn checkpoint thread");
        Checkpointer { stop, thread: std::sync::Mutex::new(Some(thread)) }
    }

    async fn close(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let handle = self.thread.lock().expect("checkpointer handle").take();
        if let Some(h) = handle {
            h.thread().unpark();
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
    }
}

/// Maps a SQLite error to a ferry error: busy and I/O trouble is `unavailable`, a broken
/// constraint `conflict` (as on PostgreSQL), the rest `internal`.
pub(crate) fn db_err(e: rusqlite::Error) -> Error {
    use rusqlite::ErrorCode as C;
    match &e {
        // A uniqueness the request would break (a replayed dead job whose unique key an
        // unfinished job of its queue holds): the request's conflict, not a storage failure.
        rusqlite::Error::SqliteFailure(f, _) if f.code == C::ConstraintViolation => {
            Error::new(ErrorCode::Conflict, format!("the database refused this change: {e}"))
        }
        _ => match fault_of(&e) {
            StorageFault::Other => {
                Error::internal(format!("storage error: {e}")).with_fault(StorageFault::Other)
            }
            fault => Error::unavailable(format!("storage unavailable: {e}")).with_fault(fault),
        },
    }
}

/// Infix of the temporary copies `backup` writes beside the database (`ferry.db.backup-<id>.tmp`).
const BACKUP_MARK: &str = ".backup-";

/// Deletes backup copies a crash or a killed request left beside the database (only this
/// process, holding the database's lock, can be writing one).
fn remove_stale_backups(db: &std::path::Path) {
    let (Some(dir), Some(name)) = (db.parent(), db.file_name()) else { return };
    let dir = if dir.as_os_str().is_empty() { std::path::Path::new(".") } else { dir };
    let prefix = format!("{}{BACKUP_MARK}", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(&prefix) && n.ends_with(".tmp") {
            match std::fs::remove_file(e.path()) {
                Ok(()) => tracing::warn!(file = %n, "removed a backup copy left by an interrupted backup"),
                Err(err) => tracing::warn!(file = %n, error = %err, "cannot remove a stale backup copy"),
            }
        }
    }
}

/// What a SQLite error says of the storage: busy, full, read-only, failing, or other.
pub(crate) fn fault_of(e: &rusqlite::Error) -> StorageFault {
    use rusqlite::ErrorCode as C;
    match e {
        rusqlite::Error::SqliteFailure(f, _) => match f.code {
            C::DatabaseBusy | C::DatabaseLocked => StorageFault::Busy,
            C::DiskFull => StorageFault::DiskFull,
            C::ReadOnly => StorageFault::ReadOnly,
            C::SystemIoFailure | C::CannotOpen => StorageFault::Io,
            _ => StorageFault::Other,
        },
        _ => StorageFault::Other,
    }
}

/// Runs one parameterless statement (BEGIN, COMMIT, ROLLBACK) through the statement cache, so
/// a transaction's bounds are parsed once per connection, not once per transaction.
pub(crate) fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn open_conn(path: &PathBuf, flags: OpenFlags) -> Result<Connection> {
    // Each connection is used by one thread at a time: SQLite's own mutexes are pure cost.
    let flags = flags | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(db_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(db_err)?;
    // A plan fixed at prepare time: without this, a statement like the claim's `queue = ?` is
    // prepared again whenever the bound queue changes, because the planner checks the value
    // against partial indexes' literals (7% of the writer's time with 50 queues in turn).
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(db_err)?;
    // Every domain's statements stay prepared (the ledger alone has a few dozen).
    conn.set_prepared_statement_cache_capacity(256);
    Ok(conn)
}

/// `n` read-only connections, each with a page cache of `cache_kib` and `mmap_bytes` of the
/// file mapped.
fn open_readers(path: &PathBuf, n: usize, cache_kib: u64, mmap_bytes: u64) -> Result<Vec<Connection>> {
    (0..n)
        .map(|_| {
            let r = open_conn(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            r.execute_batch(&format!(
                "PRAGMA cache_size = -{cache_kib}; PRAGMA query_only = ON; PRAGMA mmap_size = {mmap_bytes};"
            ))
            .map_err(db_err)?;
            Ok(r)
        })
        .collect()
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) the database.
    pub fn open(config: SqliteConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        assert!(config.readers >= 1);
        if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::new(
                    ErrorCode::Unavailable,
                    format!("cannot create data directory {}: {e}", dir.display()),
                )
            })?;
        }
        let lock = lock_file(&config.path)?;
        remove_stale_backups(&config.path);
        let mut conn =
            open_conn(&config.path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE)?;
        let sync = match config.synchronous {
            Synchronous::Full => "FULL",
            Synchronous::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = OFF;
             PRAGMA temp_store = MEMORY; PRAGMA cache_size = -65536; PRAGMA journal_size_limit = 67108864;
             PRAGMA wal_autocheckpoint = 0;"
        ))
        .map_err(db_err)?;
        schema::migrate(&mut conn)?;
        memory::reindex(&mut conn)?;
        // Readers map the file: pages come from the OS cache they share, not copied into each
        // reader's own cache by a read call (a search touches thousands of pages).
        let mmap = std::env::var("FERRY_SQLITE_READER_MMAP").ok().and_then(|v| v.parse::<u64>().ok());
        let readers = open_readers(&config.path, config.readers, 16_384, mmap.unwrap_or(READER_MMAP_BYTES))?;
        let log_readers = open_readers(&config.path, LOG_READERS, LOG_READER_CACHE_KIB, 0)?;
        let mut wal = config.path.clone().into_os_string();
        wal.push("-wal");
        let checkpointer = Checkpointer::spawn(
            open_conn(&config.path, OpenFlags::SQLITE_OPEN_READ_WRITE)?,
            PathBuf::from(wal),
            config.limits.max_sqlite_wal_bytes,
        );
        let notifier = Notifier::new();
        let counts = Arc::new(CountsCell::new(Counts::from_rows(jobs::count_rows(&conn)?)));
        let head: i64 = conn
            .query_row(
                "SELECT first_cursor + n - 1 FROM event_log ORDER BY first_cursor DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?
            .unwrap_or(0);
        let bus = EventBus::new(head as u64);
        let paid: bool = conn
            .query_row("SELECT EXISTS (SELECT 1 FROM jobs WHERE hold_open = 1)", [], |r| r.get(0))
            .map_err(db_err)?;
        let paid = Arc::new(std::sync::atomic::AtomicBool::new(paid));
        let metrics = Arc::new(crate::metrics::StoreMetrics::new(1));
        let sinks = writer::Sinks {
            notifier: notifier.clone(),
            counts: counts.clone(),
            bus: bus.clone(),
            metrics: metrics.clone(),
            before_commit: Some(settle_paid(clock.clone(), config.ledger, paid.clone())),
        };
        let writer = Writer::spawn(conn, sinks, config.max_batch_ops, config.channel_capacity);
        Ok(SqliteStore {
            writer,
            readers: ReadPool::new(readers),
            log_readers: ReadPool::new(log_readers),
            notifier,
            clock,
            limits: Arc::new(config.limits),
            counts,
            checkpointer,
            lock: std::sync::Mutex::new(Some(lock)),
            path: config.path.clone(),
            bus,
            metrics,
            ledger: config.ledger,
            paid,
        })
    }

    /// Runs `f` on the writer with the time of its transaction; timed and counted as `op`.
    async fn write<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, i64, &mut Effects) -> Result<T> + Send + 'static,
    {
        let clock = self.clock.clone();
        self.metrics.timed(op, self.writer.write(move |conn, fx| f(conn, clock.now_ms(), fx))).await
    }

    /// Runs `f` on the writer; timed and counted as `op`.
    async fn write_raw<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &mut Effects) -> Result<T> + Send + 'static,
    {
        self.metrics.timed(op, self.writer.write(f)).await
    }
}

fn parse_cursor(cursor: Option<String>) -> Result<Option<i64>> {
    cursor
        .map(|c| {
            c.parse::<i64>().map_err(|_| Error::invalid("cursor", "not a cursor returned by this server"))
        })
        .transpose()
}

#[async_trait]
impl StoreCore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn notifier(&self) -> &Arc<Notifier> {
        &self.notifier
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn metrics(&self) -> &Arc<crate::metrics::StoreMetrics> {
        &self.metrics
    }

    fn connections(&self) -> (usize, usize) {
        let (in_use, max) = self.readers.usage();
        (in_use + 1, max + 1) // the writer's connection is always in use
    }

    fn events(&self) -> &Arc<EventBus> {
        &self.bus
    }

    async fn backup(&self) -> Result<PathBuf> {
        // `VACUUM INTO` on a connection of its own reads one snapshot (WAL: the writer is not
        // held back) and writes a compact, self-contained copy; it refuses an existing file.
        // The copy needs about the database's size beside it: refused up front rather than
        // filling the volume the live writes need.
        let src = self.path.clone();
        let need = self.storage_bytes().await?.saturating_add(64 << 20);
        let dir = src.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        if let Ok(st) = rustix::fs::statvfs(dir) {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            if free < need {
                return Err(Error::new(
                    ErrorCode::InvalidState,
                    format!(
                        "not enough free space for a backup beside the database: it needs about {} MiB, {} MiB are free",
                        need >> 20,
                        free >> 20
                    ),
                ));
            }
        }
        let out = src.with_file_name(format!(
            "{}{BACKUP_MARK}{}.tmp",
            src.file_name().unwrap_or_default().to_string_lossy(),
            uuid::Uuid::now_v7()
        ));
        let target = out.clone();
        tokio::task::spawn_blocking(move || {
            let conn = open_conn(&src, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
            let path = target.to_str().ok_or_else(|| Error::internal("the backup path is not UTF-8"))?;
            conn.execute("VACUUM INTO ?1", [path]).map_err(db_err).inspect_err(|_| {
                let _ = std::fs::remove_file(&target);
            })?;
            Ok(())
        })
        .await
        .map_err(|e| Error::internal(format!("backup task failed: {e}")))??;
        Ok(out)
    }

    async fn storage_bytes(&self) -> Result<u64> {
        let mut total = 0;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.as_os_str().to_owned();
            p.push(suffix);
            total += std::fs::metadata(&p).map_or(0, |m| m.len());
        }
        Ok(total)
    }

    async fn check_invariants(&self) -> Result<Vec<String>> {
        let cell = self.counts.clone();
        self.readers
            .read(move |c| {
                // A full-text query first: it reloads this connection's cached FTS5 structure,
                // which `integrity_check` alone would compare, stale, with the current index.
                c.query_row(
                    "SELECT count(*) FROM episode_fts WHERE episode_fts MATCH '\"ferry\"'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .map_err(db_err)?;
                let integrity: String =
                    c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(db_err)?;
                let mut out = jobs::invariants(c)?;
                out.extend(items::invariants(c)?);
                out.extend(messages::invariants(c)?);
                out.extend(convoys::invariants(c)?);
                out.extend(ledger::invariants(c)?);
                out.extend(checkpoints::invariants(c)?);
                out.extend(memory::invariants(c)?);
                if integrity != "ok" {
                    out.insert(0, format!("integrity_check: {integrity}"));
                }
                // Compare the in-memory counts with a full count, retrying while commits land.
                for attempt in 0.. {
                    let epoch = cell.epoch();
                    let cached = cell.snapshot().nonzero();
                    let actual = Counts::from_rows(jobs::count_rows(c)?).nonzero();
                    if epoch.is_multiple_of(2) && cell.epoch() == epoch {
                        if cached != actual {
                            out.push(format!("cached counts {cached:?} differ from the table {actual:?}"));
                        }
                        break;
                    }
                    if attempt == 100 {
                        out.push("counts could not be compared: writes never paused".into());
                        break;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                Ok(out)
            })
            .await
    }

    async fn close(&self) {
        self.checkpointer.close().await;
        self.writer.close().await;
        self.lock.lock().expect("lock handle").take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_errors_name_their_storage_fault() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.db");
        Connection::open(&path).unwrap().execute_batch("CREATE TABLE t (v INTEGER UNIQUE)").unwrap();
        let ro = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let e = db_err(ro.execute("INSERT INTO t VALUES (1)", []).unwrap_err());
        assert_eq!(
            (e.code, e.storage_fault()),
            (ErrorCode::Unavailable, Some(StorageFault::ReadOnly)),
            "{e}"
        );
        let rw = Connection::open(&path).unwrap();
        rw.execute("INSERT INTO t VALUES (1)", []).unwrap();
        // A broken constraint is the request's conflict, not a fault of the storage.
        let e = db_err(rw.execute("INSERT INTO t VALUES (1)", []).unwrap_err());
        assert_eq!((e.code, e.storage_fault()), (ErrorCode::Conflict, None), "{e}");
        let e = db_err(rw.execute("INSERT INTO nowhere VALUES (1)", []).unwrap_err());
        assert_eq!((e.code, e.storage_fault()), (ErrorCode::Internal, Some(StorageFault::Other)), "{e}");
    }
}
