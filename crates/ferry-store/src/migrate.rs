//! `ferry migrate`: copies a SQLite database into PostgreSQL, or back (the rollback), table
//! by table, in batches, then verifies row counts and checksums per table.
//!
//! [`TABLES`] is the one registry of migrated tables; a test compares it with the tables both
//! schemas really have, so a table added later cannot be forgotten here. The copy is
//! resumable: with `resume`, each table continues after the highest key already copied (small
//! tables are copied again whole); without it a non-empty target is refused.

use crate::postgres::{PgConfig, PgStore, pg_err};
use crate::sqlite::{db_err, lock_file};
use ferry_core::{Clock, Error, ErrorCode, Result, SystemClock};
use rusqlite::OpenFlags;
use std::path::Path;
use std::sync::Arc;
use tokio_postgres::types::ToSql;

/// How a column is stored, so values cross between the two databases unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    /// 64-bit integer (SQLite INTEGER, PostgreSQL BIGINT).
    I64,
    /// 32-bit integer (PostgreSQL INTEGER).
    I32,
    /// Boolean (SQLite 0/1).
    Bool,
    /// Double.
    F64,
    /// Text.
    Text,
    /// UUID (SQLite 16-byte BLOB).
    Uuid,
    /// Raw bytes (SQLite BLOB, PostgreSQL BYTEA), checksummed byte for byte.
    Bytes,
}

/// One migrated table: its columns in key order first.
#[derive(Debug)]
pub struct Table {
    /// Table name (the same in both schemas).
    pub name: &'static str,
    /// Columns with their types.
    pub columns: &'static [(&'static str, Col)],
    /// Key columns (a prefix of `columns`), the copy order.
    pub key: &'static [&'static str],
    /// Large tables resume after the last copied key; small ones are copied again whole.
    pub resumable: bool,
    /// A PostgreSQL identity column: values are copied as they are, then its sequence moves
    /// past them.
    pub identity: Option<&'static str>,
}

use Col::*;

/// Every table ferry keeps, except `ferry_meta` (each database keeps its own schema version).
pub const TABLES: &[Table] = &[
    Table {
        name: "jobs",
        columns: &[
            ("seq", I64),
            ("id", Uuid),
            ("queue", Text),
            ("state", Text),
            ("priority", I32),
            ("run_at", I64),
            ("payload", Text),
            ("attempt", I32),
            ("max_attempts", I32),
            ("backoff_base_ms", I64),
            ("backoff_factor", F64),
            ("backoff_max_ms", I64),
            ("backoff_jitter", F64),
            ("lease_ms", I64),
            ("unique_key", Text),
            ("tags", Text),
            ("depends_on", Text),
            ("pending_deps", I32),
            ("has_dependants", Bool),
            ("lease", Text),
            ("lease_expires_at", I64),
            ("worker", Text),
            ("result", Text),
            ("errors", Text),
            ("cancel_reason", Text),
            ("created_at", I64),
            ("updated_at", I64),
            ("started_at", I64),
            ("finished_at", I64),
            ("timeout_ms", I64),
            ("convoy_id", Text),
            ("payment", Text),
            ("hold_open", I64),
        ],
        key: &["seq"],
        resumable: true,
        identity: Some("seq"),
    },
    Table {
        name: "job_deps",
        columns: &[("dep_seq", I64), ("job_seq", I64)],
        key: &["dep_seq", "job_seq"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "queues",
        columns: &[
            ("name", Text),
            ("paused", Bool),
            ("updated_at", I64),
            ("max_running", I64),
            ("max_starts_per_sec", F64),
            ("max_depth", I64),
            ("tokens", F64),
            ("tokens_at", I64),
        ],
        key: &["name"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "event_log",
        columns: &[("id", I64), ("first_cursor", I64), ("n", I32), ("at", I64), ("body", Text)],
        key: &["id"],
        resumable: true,
        identity: Some("id"),
    },
    Table {
        name: "schedules",
        columns: &[
            ("name", Text),
            ("cron", Text),
            ("timezone", Text),
            ("job", Text),
            ("misfire", Text),
            ("catch_up_max", I32),
            ("paused", Bool),
            ("next_run_at", I64),
            ("last_run_at", I64),
            ("created_at", I64),
            ("updated_at", I64),
        ],
        key: &["name"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "api_tokens",
        columns: &[
            ("id", Uuid),
            ("name", Text),
            ("hash", Text),
            ("scopes", Text),
            ("queues", Text),
            ("created_at", I64),
            ("revoked_at", I64),
            ("agents", Text),
            ("namespaces", Text),
        ],
        key: &["id"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "workers",
        columns: &[("name", Text), ("first_seen_ms", I64), ("last_seen_ms", I64), ("status", Text)],
        key: &["name"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "hosts",
        columns: &[("name", Text), ("health_url", Text), ("created_at", I64)],
        key: &["name"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "items",
        columns: &[
            ("id", Text),
            ("title", Text),
            ("description", Text),
            ("status", Text),
            ("assignee", Text),
            ("artifacts", Text),
            ("context", Text),
            ("version", I64),
            ("created_at", I64),
            ("updated_at", I64),
            ("origin", Text),
        ],
        key: &["id"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "item_history",
        columns: &[
            ("item_id", Text),
            ("version", I64),
            ("at", I64),
            ("agent", Text),
            ("mode", Text),
            ("paths", Text),
            ("patch", Text),
            ("reason", Text),
        ],
        key: &["item_id", "version"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "agents",
        columns: &[
            ("name", Text),
            ("created_at", I64),
            ("last_seen_at", I64),
            ("tokens", F64),
            ("tokens_at", I64),
        ],
        key: &["name"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "messages",
        columns: &[
            ("id", Uuid),
            ("sender", Text),
            ("body", Text),
            ("sent_at", I64),
            ("expires_at", I64),
            ("reply_to", Text),
            ("correlation_id", Text),
            ("dedup_key", Text),
            ("answer", Text),
        ],
        key: &["id"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "convoys",
        columns: &[
            ("seq", I64),
            ("id", Text),
            ("name", Text),
            ("queue", Text),
            ("max_parallel", Text),
            ("on_failure", Text),
            ("on_complete", Text),
            ("state", Text),
            ("cancelling", Bool),
            ("lim", I64),
            ("total", I64),
            ("held", I64),
            ("slots", I64),
            ("completed", I64),
            ("failed", I64),
            ("cancelled", I64),
            ("tuner", Text),
            ("progress_at", I64),
            ("on_complete_job_id", Uuid),
            ("created_at", I64),
            ("finished_at", I64),
        ],
        key: &["seq"],
        resumable: true,
        identity: Some("seq"),
    },
    Table {
        name: "convoy_keys",
        columns: &[("convoy_id", Text), ("key", Text), ("job_id", Uuid)],
        key: &["convoy_id", "key"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "deliveries",
        columns: &[
            ("ord", I64),
            ("agent", Text),
            ("msg_id", Uuid),
            ("kind", Text),
            ("state", Text),
            ("visible_at", I64),
            ("receipt", I64),
            ("delivery_count", I64),
            ("expires_at", I64),
            ("ttl_ms", I64),
            ("dead_at", I64),
        ],
        key: &["ord"],
        resumable: true,
        identity: Some("ord"),
    },
    Table {
        name: "broadcasts",
        columns: &[
            ("serial", I64),
            ("id", Uuid),
            ("channel", Text),
            ("seq", I64),
            ("sender", Text),
            ("body", Text),
            ("sent_at", I64),
            ("expires_at", I64),
        ],
        key: &["serial"],
        resumable: true,
        identity: Some("serial"),
    },
    Table {
        name: "channels",
        columns: &[("name", Text), ("head", I64)],
        key: &["name"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "channel_cursors",
        columns: &[("agent", Text), ("channel", Text), ("seq", I64)],
        key: &["agent", "channel"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "ledger_accounts",
        columns: &[
            ("id", Text),
            ("ledger", I64),
            ("code", I64),
            ("flags", I64),
            ("metadata", Text),
            ("debits_posted", I64),
            ("credits_posted", I64),
            ("debits_pending", I64),
            ("credits_pending", I64),
            ("created_at", I64),
            ("closed_at", I64),
            ("last_seq", I64),
        ],
        key: &["id"],
        resumable: false, // a text key: copied again whole on --resume
        identity: None,
    },
    Table {
        name: "ledger_transfers",
        columns: &[
            ("id", Text),
            ("debit_account", Text),
            ("credit_account", Text),
            ("ledger", I64),
            ("amount", I64),
            ("code", I64),
            ("metadata", Text),
            ("pending", I64),
            ("timeout_ms", I64),
            ("state", Text),
            ("reason", Text),
            ("posted_amount", I64),
            ("expires_at", I64),
            ("job_id", Text),
            ("seq", I64),
            ("created_at", I64),
            ("settled_at", I64),
        ],
        key: &["id"],
        resumable: false, // a text key: copied again whole on --resume
        identity: None,
    },
    Table {
        name: "ledger_events",
        columns: &[("seq", I64), ("kind", Text), ("at", I64), ("data", Text), ("hash", Text)],
        key: &["seq"],
        resumable: true,
        identity: None,
    },
    Table {
        name: "ledger_head",
        columns: &[("id", I64), ("seq", I64), ("hash", Text), ("digest", Text)],
        key: &["id"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "ledger_snapshots",
        columns: &[("seq", I64), ("at", I64), ("hash", Text), ("digest", Text), ("totals", Text)],
        key: &["seq"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "ledger_snapshot_accounts",
        columns: &[
            ("account_id", Text),
            ("snapshot_seq", I64),
            ("ledger", I64),
            ("debits_posted", I64),
            ("credits_posted", I64),
            ("debits_pending", I64),
            ("credits_pending", I64),
        ],
        key: &["account_id", "snapshot_seq"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "threads",
        columns: &[
            ("thread", Text),
            ("metadata", Text),
            ("idle_ttl_ms", I64),
            ("keep_last", I64),
            ("checkpoints", I64),
            ("blobs", I64),
            ("writes", I64),
            ("bytes", I64),
            ("last_job_id", Uuid),
            ("pruned_at", I64),
            ("created_at", I64),
            ("updated_at", I64),
        ],
        key: &["thread"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "checkpoints",
        columns: &[
            ("thread", Text),
            ("ns", Text),
            ("checkpoint_id", Text),
            ("parent_checkpoint_id", Text),
            ("type", Text),
            ("checkpoint", Bytes),
            ("metadata", Text),
            ("channel_versions", Text),
            ("delta_channels", Text),
            ("run_id", Text),
            ("step", I64),
            ("bytes", I64),
            ("created_at", I64),
        ],
        key: &["thread", "ns", "checkpoint_id"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "checkpoint_blobs",
        columns: &[
            ("thread", Text),
            ("ns", Text),
            ("channel", Text),
            ("version", Text),
            ("type", Text),
            ("data", Bytes),
        ],
        key: &["thread", "ns", "channel", "version"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "checkpoint_writes",
        columns: &[
            ("thread", Text),
            ("ns", Text),
            ("checkpoint_id", Text),
            ("task_id", Text),
            ("idx", I64),
            ("channel", Text),
            ("type", Text),
            ("data", Bytes),
            ("task_path", Text),
        ],
        key: &["thread", "ns", "checkpoint_id", "task_id", "idx"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "episodes",
        columns: &[
            ("seq", I64),
            ("id", Uuid),
            ("namespace", Text),
            ("agent", Text),
            ("domain", Text),
            ("task_type", Text),
            ("outcome", Text),
            ("at", I64),
            ("importance", F64),
            ("tags", Text),
            ("version", I64),
            ("created_at", I64),
            ("updated_at", I64),
            ("idempotency_key", Text),
            ("body_hash", Text),
            ("bytes", I64),
            ("content", Text),
            ("embedding", Bytes),
        ],
        key: &["seq"],
        resumable: true,
        identity: Some("seq"),
    },
    Table {
        name: "episode_tags",
        columns: &[("seq", I64), ("tag", Text)],
        key: &["seq", "tag"],
        resumable: false,
        identity: None,
    },
    Table {
        name: "episode_vectors",
        columns: &[("seq", I64), ("vec", Bytes)],
        key: &["seq"],
        resumable: true,
        identity: None,
    },
    Table {
        name: "memory_namespaces",
        columns: &[("namespace", Text), ("episodes", I64), ("bytes", I64), ("dims", I32)],
        key: &["namespace"],
        resumable: false,
        identity: None,
    },
];

/// PostgreSQL columns no SQLite table has, derived after the copy: an episode's tokens and the
/// `tsvector` generated from them.
pub const PG_ONLY_COLUMNS: &[(&str, &str)] = &[("episodes", "terms"), ("episodes", "tsv")];

/// SQLite's search rows of episodes (the scan rows, the FTS5 table and its shadow tables): not
/// copied; after the copy they are derived again from each episode itself.
pub const SQLITE_ONLY: &[&str] = &[
    "episode_scan",
    "episode_fts",
    "episode_fts_config",
    "episode_fts_data",
    "episode_fts_docsize",
    "episode_fts_idx",
];

/// Tables that exist in both schemas but are deliberately not copied, with the reason.
pub const NOT_COPIED: &[(&str, &str)] = &[("ferry_meta", "each database records its own schema version")];

/// One value in transit.
#[derive(Debug, Clone, PartialEq)]
enum Val {
    Null(Col),
    I64(i64),
    I32(i32),
    Bool(bool),
    F64(f64),
    Text(String),
    Uuid(uuid::Uuid),
    Bytes(Vec<u8>),
}

impl Val {
    fn to_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Val::Null(c) => null_of(*c),
            Val::I64(v) => v,
            Val::I32(v) => v,
            Val::Bool(v) => v,
            Val::F64(v) => v,
            Val::Text(v) => v,
            Val::Uuid(v) => v,
            Val::Bytes(v) => v,
        }
    }

    /// Canonical bytes for the checksum: equal values give equal bytes on both sides.
    fn feed(&self, h: &mut Fnv) {
        match self {
            Val::Null(_) => h.write(b"N"),
            Val::I64(v) => h.write(format!("i{v}").as_bytes()),
            Val::I32(v) => h.write(format!("i{v}").as_bytes()),
            Val::Bool(v) => h.write(if *v { b"t" } else { b"f" }),
            Val::F64(v) => h.write(format!("f{:x}", v.to_bits()).as_bytes()),
            Val::Text(v) => {
                h.write(format!("s{}:", v.len()).as_bytes());
                h.write(v.as_bytes())
            }
            Val::Uuid(v) => h.write(v.as_bytes()),
            Val::Bytes(v) => {
                h.write(format!("b{}:", v.len()).as_bytes());
                h.write(v)
            }
        }
        h.write(b"|");
    }
}

/// A typed NULL: PostgreSQL checks a parameter's type even when it is NULL.
fn null_of(col: Col) -> &'static (dyn ToSql + Sync) {
    static I64_: Option<i64> = None;
    static I32_: Option<i32> = None;
    static BOOL_: Option<bool> = None;
    static F64_: Option<f64> = None;
    static TEXT_: Option<String> = None;
    static UUID_: Option<uuid::Uuid> = None;
    static BYTES_: Option<Vec<u8>> = None;
    match col {
        I64 => &I64_,
        I32 => &I32_,
        Bool => &BOOL_,
        F64 => &F64_,
        Text => &TEXT_,
        Uuid => &UUID_,
        Bytes => &BYTES_,
    }
}

/// FNV-1a, 64 bit: a fixed, dependency-free checksum of a table's rows in key order.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn sqlite_val(row: &rusqlite::Row, i: usize, col: Col) -> Result<Val> {
    use rusqlite::types::ValueRef;
    let v = row.get_ref(i).map_err(db_err)?;
    Ok(match (v, col) {
        (ValueRef::Null, c) => Val::Null(c),
        (ValueRef::Integer(n), I64) => Val::I64(n),
        (ValueRef::Integer(n), I32) => {
            Val::I32(i32::try_from(n).map_err(|_| Error::internal(format!("{n} overflows i32")))?)
        }
        (ValueRef::Integer(n), Bool) => Val::Bool(n != 0),
        (ValueRef::Integer(n), F64) => Val::F64(n as f64),
        (ValueRef::Real(f), F64) => Val::F64(f),
        (ValueRef::Text(t), Text) => Val::Text(String::from_utf8_lossy(t).into_owned()),
        (ValueRef::Blob(b), Bytes) => Val::Bytes(b.to_vec()),
        (ValueRef::Blob(b), Uuid) => Val::Uuid(
            uuid::Uuid::from_slice(b).map_err(|e| Error::internal(format!("bad stored uuid: {e}")))?,
        ),
        (other, c) => {
            return Err(Error::internal(format!("unexpected SQLite value {other:?} for a {c:?} column")));
        }
    })
}

fn pg_val(row: &tokio_postgres::Row, i: usize, col: Col) -> Result<Val> {
    use crate::postgres::RowExt;
    let opt = match col {
        I64 => row.col::<Option<i64>>(i)?.map(Val::I64),
        I32 => row.col::<Option<i32>>(i)?.map(Val::I32),
        Bool => row.col::<Option<bool>>(i)?.map(Val::Bool),
        F64 => row.col::<Option<f64>>(i)?.map(Val::F64),
        Text => row.col::<Option<String>>(i)?.map(Val::Text),
        Uuid => row.col::<Option<uuid::Uuid>>(i)?.map(Val::Uuid),
        Bytes => row.col::<Option<Vec<u8>>>(i)?.map(Val::Bytes),
    };
    Ok(opt.unwrap_or(Val::Null(col)))
}

/// What the caller is told while the copy runs.
#[derive(Debug, Clone)]
pub enum Progress {
    /// A table starts: its name, rows in the source, rows already in the target.
    Table { name: &'static str, total: u64, skipped: u64 },
    /// More rows of the current table were copied.
    Rows(u64),
    /// A table was verified: rows and checksum on both sides.
    Verified { name: &'static str, rows: u64, checksum: u64 },
}

/// Options of a migration.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Continue an interrupted copy instead of refusing a non-empty target.
    pub resume: bool,
    /// Rows per INSERT.
    pub batch: usize,
    /// Target schema (None: the default search path).
    pub schema: Option<String>,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        MigrateOptions { resume: false, batch: 1_000, schema: None }
    }
}

/// Per-table outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableReport {
    /// Table name.
    pub name: &'static str,
    /// Rows in the source (and, verified, in the target).
    pub rows: u64,
    /// Rows copied by this run.
    pub copied: u64,
    /// FNV-1a checksum of the rows in key order, equal on both sides.
    pub checksum: u64,
}

/// Copies the SQLite database at `from` into the PostgreSQL database at `to`.
pub async fn sqlite_to_postgres(
    from: &Path,
    to: &str,
    opts: &MigrateOptions,
    mut progress: impl FnMut(Progress),
) -> Result<Vec<TableReport>> {
    assert!(opts.batch >= 1);
    if !from.exists() {
        return Err(Error::invalid("from", format!("no SQLite database at {}", from.display())));
    }
    if from.is_dir() {
        // A data directory: name the database file inside it (and leave no lock file behind).
        let inside = from.join("ferry.db");
        let hint = if inside.is_file() {
            format!("pass the database file inside it: --from {}", inside.display())
        } else {
            format!("it holds no ferry.db; pass the SQLite database file (e.g. {})", inside.display())
        };
        return Err(Error::invalid("from", format!("{} is a directory; {hint}", from.display())));
    }
    // A running server holds this lock: copying a database that is still changing is refused.
    let _lock = lock_file(from).map_err(|e| {
        Error::new(
            ErrorCode::InvalidState,
            format!("{}; stop the server first (online migration is not implemented)", e.message),
        )
    })?;
    let src =
        rusqlite::Connection::open_with_flags(from, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(db_err)?;
    let version: String = src
        .query_row("SELECT value FROM ferry_meta WHERE key = 'schema_version'", [], |r| r.get(0))
        .map_err(|e| Error::invalid("from", format!("{} is not a ferry database: {e}", from.display())))?;
    if version != crate::sqlite::schema::SCHEMA_VERSION.to_string() {
        return Err(Error::invalid(
            "from",
            format!(
                "source schema version {version} is not the one this ferry writes; open it with `ferry serve` first"
            ),
        ));
    }
    // Create (or check) the target schema through the backend itself.
    let mut cfg = PgConfig::new(to);
    cfg.schema = opts.schema.clone();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = PgStore::open(cfg, clock).await?;
    crate::StoreCore::close(&store).await;
    let mut pg: tokio_postgres::Config =
        to.parse().map_err(|e| Error::invalid("to", format!("bad PostgreSQL URL: {e}")))?;
    if let Some(s) = &opts.schema {
        pg.options(format!("-c search_path={s}"));
    }
    let (mut client, conn) =
        pg.connect(tokio_postgres::NoTls).await.map_err(|e| crate::postgres::unreachable(&pg, &e))?;
    let driver = tokio::spawn(conn);

    if !opts.resume {
        for t in TABLES {
            let n: i64 = client
                .query_one(&format!("SELECT count(*) FROM {}", t.name), &[])
                .await
                .map_err(pg_err)?
                .get(0);
            refuse_filled(t.name, n, "migrate into an empty database")?;
        }
    }

    let mut reports = Vec::new();
    for t in TABLES {
        let cols: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
        let col_list = cols.join(", ");
        let key_list = t.key.join(", ");
        let total: i64 =
            src.query_row(&format!("SELECT count(*) FROM {}", t.name), [], |r| r.get(0)).map_err(db_err)?;
        // Where to start: after the last copied key (resumable) or from scratch.
        let mut after: Option<i64> = None;
        let mut skipped = 0u64;
        if opts.resume {
            if t.resumable {
                let max: Option<i64> = client
                    .query_one(&format!("SELECT max({key_list}) FROM {}", t.name), &[])
                    .await
                    .map_err(pg_err)?
                    .get(0);
                after = max;
                skipped = client
                    .query_one(&format!("SELECT count(*) FROM {}", t.name), &[])
                    .await
                    .map_err(pg_err)?
                    .get::<_, i64>(0) as u64;
            } else {
                client.execute(&format!("DELETE FROM {}", t.name), &[]).await.map_err(pg_err)?;
            }
        }
        progress(Progress::Table { name: t.name, total: total as u64, skipped });
        let overriding = if t.identity.is_some() { " OVERRIDING SYSTEM VALUE" } else { "" };
        let mut copied = 0u64;
        let mut stmt = src
            .prepare(&format!(
                "SELECT {col_list} FROM {} {} ORDER BY {key_list}",
                t.name,
                if after.is_some() { format!("WHERE {} > ?1", t.key[0]) } else { String::new() }
            ))
            .map_err(db_err)?;
        let mut rows = match after {
            Some(a) => stmt.query([a]),
            None => stmt.query([]),
        }
        .map_err(db_err)?;
        let mut batch: Vec<Vec<Val>> = Vec::with_capacity(opts.batch);
        loop {
            let row = rows.next().map_err(db_err)?;
            if let Some(r) = row {
                let vals = t
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, (_, c))| sqlite_val(r, i, *c))
                    .collect::<Result<Vec<_>>>()?;
                batch.push(vals);
            }
            let done = row.is_none();
            if batch.len() == opts.batch || (done && !batch.is_empty()) {
                let n = cols.len();
                let placeholders: Vec<String> = (0..batch.len())
                    .map(|r| {
                        format!(
                            "({})",
                            (1..=n).map(|c| format!("${}", r * n + c)).collect::<Vec<_>>().join(", ")
                        )
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO {} ({col_list}){overriding} VALUES {}",
                    t.name,
                    placeholders.join(", ")
                );
                let params: Vec<&(dyn ToSql + Sync)> = batch.iter().flatten().map(Val::to_sql).collect();
                let tx = client.transaction().await.map_err(pg_err)?;
                tx.execute(&sql, &params).await.map_err(pg_err)?;
                tx.commit().await.map_err(pg_err)?;
                copied += batch.len() as u64;
                progress(Progress::Rows(batch.len() as u64));
                batch.clear();
            }
            if done {
                break;
            }
        }
        drop(rows);
        drop(stmt);
        if let Some(col) = t.identity {
            let table = t.name;
            client
                .execute(
                    &format!(
                        "SELECT setval(pg_get_serial_sequence('{table}', '{col}'), GREATEST((SELECT max({col}) FROM {table}), 1))"
                    ),
                    &[],
                )
                .await
                .map_err(pg_err)?;
        }
        // Verify: same row count and the same checksum over every row in key order.
        let (n_src, h_src) = verified(t, sqlite_checksum(&src, t)?, pg_checksum(&client, t).await?)?;
        progress(Progress::Verified { name: t.name, rows: n_src, checksum: h_src });
        reports.push(TableReport { name: t.name, rows: n_src, copied, checksum: h_src });
    }
    drop(client);
    let _ = driver.await;
    rebuild_memory(to, opts).await?;
    Ok(reports)
}

/// Refuses a target table that already holds `n` rows unless resuming; `hint` says where to
/// migrate instead.
fn refuse_filled(table: &str, n: i64, hint: &str) -> Result<()> {
    if n > 0 {
        return Err(Error::new(
            ErrorCode::InvalidState,
            format!("the target already has {n} rows in {table}; {hint}, or pass --resume"),
        ));
    }
    Ok(())
}

/// The source's `(rows, checksum)` of `t` when the target's are the same; an error naming
/// both otherwise.
fn verified(t: &Table, src: (u64, u64), dst: (u64, u64)) -> Result<(u64, u64)> {
    let ((n_src, h_src), (n_dst, h_dst)) = (src, dst);
    if src != dst {
        return Err(Error::internal(format!(
            "verification failed for {}: source {n_src} rows (checksum {h_src:016x}), target {n_dst} rows (checksum {h_dst:016x})",
            t.name
        )));
    }
    Ok(src)
}

/// The row count and checksum of `t` in a SQLite database, in key order.
fn sqlite_checksum(conn: &rusqlite::Connection, t: &Table) -> Result<(u64, u64)> {
    let cols: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
    let sql = format!("SELECT {} FROM {} ORDER BY {}", cols.join(", "), t.name, t.key.join(", "));
    let mut stmt = conn.prepare(&sql).map_err(db_err)?;
    let mut rows = stmt.query([]).map_err(db_err)?;
    let (mut h, mut n) = (Fnv::new(), 0u64);
    while let Some(r) = rows.next().map_err(db_err)? {
        for (i, (_, c)) in t.columns.iter().enumerate() {
            sqlite_val(r, i, *c)?.feed(&mut h);
        }
        n += 1;
    }
    Ok((n, h.0))
}

/// The row count and checksum of `t` in PostgreSQL, in key order.
async fn pg_checksum(client: &tokio_postgres::Client, t: &Table) -> Result<(u64, u64)> {
    let cols: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
    let sql = format!("SELECT {} FROM {} ORDER BY {}", cols.join(", "), t.name, t.key.join(", "));
    let no_params: [&(dyn ToSql + Sync); 0] = [];
    let stream = client.query_raw(&sql, no_params.iter().map(|p| *p as &dyn ToSql)).await.map_err(pg_err)?;
    futures_util::pin_mut!(stream);
    let (mut h, mut n) = (Fnv::new(), 0u64);
    while let Some(r) = futures_util::TryStreamExt::try_next(&mut stream).await.map_err(pg_err)? {
        for (i, (_, c)) in t.columns.iter().enumerate() {
            pg_val(&r, i, *c)?.feed(&mut h);
        }
        n += 1;
    }
    Ok((n, h.0))
}

impl Val {
    /// The value as SQLite stores it (booleans 0/1, UUIDs as 16 bytes).
    fn to_sqlite(&self) -> rusqlite::types::Value {
        use rusqlite::types::Value as V;
        match self {
            Val::Null(_) => V::Null,
            Val::I64(v) => V::Integer(*v),
            Val::I32(v) => V::Integer(i64::from(*v)),
            Val::Bool(v) => V::Integer(i64::from(*v)),
            Val::F64(v) => V::Real(*v),
            Val::Text(v) => V::Text(v.clone()),
            Val::Uuid(v) => V::Blob(v.as_bytes().to_vec()),
            Val::Bytes(v) => V::Blob(v.clone()),
        }
    }
}

/// Copies the PostgreSQL database at `from` into the SQLite database at `to` (created if
/// missing): the rollback of [`sqlite_to_postgres`], with the same registry, batches,
/// progress, verification and `resume`. The servers using `from` must be stopped (nothing
/// can lock a PostgreSQL database for us); `to` is locked against a server for the whole copy.
pub async fn postgres_to_sqlite(
    from: &str,
    to: &Path,
    opts: &MigrateOptions,
    mut progress: impl FnMut(Progress),
) -> Result<Vec<TableReport>> {
    assert!(opts.batch >= 1);
    if to.is_dir() {
        return Err(Error::invalid(
            "to",
            format!(
                "{} is a directory; name the database file, e.g. {}",
                to.display(),
                to.join("ferry.db").display()
            ),
        ));
    }
    let mut pg: tokio_postgres::Config =
        from.parse().map_err(|e| Error::invalid("from", format!("bad PostgreSQL URL: {e}")))?;
    if let Some(s) = &opts.schema {
        pg.options(format!("-c search_path={s}"));
    }
    let (client, conn) =
        pg.connect(tokio_postgres::NoTls).await.map_err(|e| crate::postgres::unreachable(&pg, &e))?;
    let driver = tokio::spawn(conn);
    let version: Option<String> = client
        .query_opt("SELECT value FROM ferry_meta WHERE key = 'schema_version'", &[])
        .await
        .map_err(|e| Error::invalid("from", format!("{from} is not a ferry database: {e}")))?
        .map(|r| r.get(0));
    let want = crate::postgres::schema::SCHEMA_VERSION.to_string();
    if version.as_deref() != Some(want.as_str()) {
        return Err(Error::invalid(
            "from",
            format!(
                "source schema version {} is not the one this ferry writes ({want}); open it with `ferry serve` first",
                version.as_deref().unwrap_or("(none)")
            ),
        ));
    }
    // Create (or migrate) the target schema through the backend itself, then hold its lock.
    let store = crate::SqliteStore::open(crate::SqliteConfig::new(to), Arc::new(SystemClock))?;
    crate::StoreCore::close(&store).await;
    drop(store);
    let _lock = lock_file(to)
        .map_err(|e| Error::new(ErrorCode::InvalidState, format!("{}; stop the server first", e.message)))?;
    let mut dst = rusqlite::Connection::open(to).map_err(db_err)?;
    dst.busy_timeout(std::time::Duration::from_secs(5)).map_err(db_err)?;
    if !opts.resume {
        for t in TABLES {
            let n: i64 = dst
                .query_row(&format!("SELECT count(*) FROM {}", t.name), [], |r| r.get(0))
                .map_err(db_err)?;
            refuse_filled(t.name, n, "migrate into a new file")?;
        }
    }
    let mut reports = Vec::new();
    for t in TABLES {
        let cols: Vec<&str> = t.columns.iter().map(|c| c.0).collect();
        let col_list = cols.join(", ");
        let key_list = t.key.join(", ");
        let total: i64 =
            client.query_one(&format!("SELECT count(*) FROM {}", t.name), &[]).await.map_err(pg_err)?.get(0);
        let mut after: Option<i64> = None;
        let mut skipped = 0u64;
        if opts.resume {
            if t.resumable {
                after = dst
                    .query_row(&format!("SELECT max({key_list}) FROM {}", t.name), [], |r| r.get(0))
                    .map_err(db_err)?;
                skipped = dst
                    .query_row(&format!("SELECT count(*) FROM {}", t.name), [], |r| r.get::<_, i64>(0))
                    .map_err(db_err)? as u64;
            } else {
                dst.execute(&format!("DELETE FROM {}", t.name), []).map_err(db_err)?;
            }
        }
        progress(Progress::Table { name: t.name, total: total as u64, skipped });
        let sql = format!(
            "SELECT {col_list} FROM {} {} ORDER BY {key_list}",
            t.name,
            if after.is_some() { format!("WHERE {} > $1", t.key[0]) } else { String::new() }
        );
        let params: Vec<&(dyn ToSql + Sync)> = match &after {
            Some(a) => vec![a],
            None => vec![],
        };
        let stream = client.query_raw(&sql, params.iter().map(|p| *p as &dyn ToSql)).await.map_err(pg_err)?;
        futures_util::pin_mut!(stream);
        let insert = format!(
            "INSERT INTO {} ({col_list}) VALUES ({})",
            t.name,
            (1..=cols.len()).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
        );
        let mut copied = 0u64;
        let mut batch: Vec<Vec<Val>> = Vec::with_capacity(opts.batch);
        loop {
            let row = futures_util::TryStreamExt::try_next(&mut stream).await.map_err(pg_err)?;
            if let Some(r) = &row {
                let vals = t
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, (_, c))| pg_val(r, i, *c))
                    .collect::<Result<Vec<_>>>()?;
                batch.push(vals);
            }
            let done = row.is_none();
            if batch.len() == opts.batch || (done && !batch.is_empty()) {
                // One transaction per batch: an interruption leaves whole batches, which
                // `resume` continues after.
                let tx = dst.transaction().map_err(db_err)?;
                {
                    let mut stmt = tx.prepare_cached(&insert).map_err(db_err)?;
                    for vals in &batch {
                        let values: Vec<rusqlite::types::Value> = vals.iter().map(Val::to_sqlite).collect();
                        stmt.execute(rusqlite::params_from_iter(values)).map_err(db_err)?;
                    }
                }
                tx.commit().map_err(db_err)?;
                copied += batch.len() as u64;
                progress(Progress::Rows(batch.len() as u64));
                batch.clear();
            }
            if done {
                break;
            }
        }
        let (n_src, h_src) = verified(t, pg_checksum(&client, t).await?, sqlite_checksum(&dst, t)?)?;
        progress(Progress::Verified { name: t.name, rows: n_src, checksum: h_src });
        reports.push(TableReport { name: t.name, rows: n_src, copied, checksum: h_src });
    }
    drop(client);
    let _ = driver.await;
    drop(dst);
    drop(_lock);
    // The search rows SQLite keeps beside each episode (FTS, scan rows) are derived again.
    let store = crate::SqliteStore::open(crate::SqliteConfig::new(to), Arc::new(SystemClock))?;
    let out = rebuild_derived(&store, opts.batch).await;
    crate::StoreCore::close(&store).await;
    out?;
    Ok(reports)
}

/// Rewrites every episode's derived rows in `store`, batch by batch.
async fn rebuild_derived(store: &dyn crate::MemoryStore, batch: usize) -> Result<()> {
    let mut after = 0;
    loop {
        let pass = crate::DerivedPass { namespace: None, after, batch, mode: crate::PassMode::Rewrite };
        match store.memory_pass(pass).await?.next {
            Some(n) => after = n,
            None => return Ok(()),
        }
    }
}

/// Derives every copied episode's tokens (and tag and vector rows) in PostgreSQL, batch by batch.
async fn rebuild_memory(to: &str, opts: &MigrateOptions) -> Result<()> {
    let mut cfg = PgConfig::new(to);
    cfg.schema = opts.schema.clone();
    let store = PgStore::open(cfg, Arc::new(SystemClock)).await?;
    let out = rebuild_derived(&store, opts.batch).await;
    crate::StoreCore::close(&store).await;
    out
}
