//! Server configuration: defaults, then `ferry.toml`, then `FERRY_*` environment variables,
//! then command-line flags (the CLI applies the last two).

use ferry_core::{Error, ErrorCode, Limits};
use ferry_store::Synchronous;
use ferry_store::maintenance::MaintenanceConfig;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Everything `ferry serve` can be told.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub listen: String,
    /// Directory of the embedded SQLite database (used when `database` is not set).
    pub data_dir: PathBuf,
    /// A SQLite path or `sqlite:` URL, or a `postgres://` URL.
    pub database: Option<String>,
    /// SQLite durability: `full` (default) or `normal`.
    pub synchronous: Synchronous,
    /// PostgreSQL connections per node.
    pub pg_pool_size: usize,
    /// Log filter, e.g. `info` or `ferry_server=debug,info`.
    pub log: String,
    /// Input and resource limits.
    pub limits: Limits,
    /// Reaper, scheduler and retention settings.
    pub maintenance: MaintenanceConfig,
    /// API tokens required: `true`, `false`, or unset = required once any token exists.
    pub auth: Option<bool>,
    /// Allows a non-loopback listener without auth.
    pub insecure: bool,
    /// Circuit breaker, rate limits and backpressure refresh.
    pub protection: crate::protect::ProtectionConfig,
    /// Worker timeout and host probing.
    pub health: crate::health::HealthConfig,
    /// Log lines as `json`, `text`, or `auto` (JSON unless writing to a terminal).
    pub log_format: String,
    /// Also write logs (always JSON) to this file, rotated by size.
    pub log_file: Option<PathBuf>,
    /// Size at which the log file is rotated.
    pub log_file_max_bytes: usize,
    /// Rotated log files kept (`<file>.1` is the newest).
    pub log_files_kept: usize,
    /// Log every job state transition (target `ferry::audit`).
    pub audit_log: bool,
    /// How often figures are sampled for `/v1/stats` windows and the advisor.
    pub stats_sample_ms: u64,
    /// The scaling advisor's schedule and thresholds.
    pub advisor: crate::advisor::AdvisorConfig,
    /// Time store calls and count HTTP requests (on by default; off only to measure its cost).
    pub instrument: bool,
    /// Browser origins (`https://app.example`) allowed to call the API besides the server's
    /// own; others are refused with 403, so a web page cannot drive a loopback server.
    pub cors_origins: Vec<String>,
    /// Host names (`Host` header) answered while auth is off, besides `localhost` and IP
    /// addresses; others get 403 (a web page re-pointed at this server by DNS rebinding).
    pub server_names: Vec<String>,
    /// Work-item settings.
    pub items: ItemsConfig,
    /// Agent-message settings.
    pub messages: MessagesConfig,
    /// Ledger settings.
    pub ledger: LedgerConfig,
    /// Run-checkpoint retention.
    pub checkpoints: CheckpointsConfig,
    /// Read-only SQLite connections (also the concurrent memory searches on SQLite).
    pub sqlite_readers: usize,
    /// Episodic memory: search bounds, backpressure, switches, retention.
    pub memory: crate::api::memory::MemoryConfig,
    /// The MCP endpoint at `/mcp`.
    pub mcp: McpConfig,
    /// PostgreSQL group commit.
    pub postgres: PostgresConfig,
}

/// `[postgres]`: how a node shares transactions among concurrent job commands.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresConfig {
    /// Longest a request waits for batch mates (only while recent batches were larger than
    /// what is waiting; a lone request on an idle node never waits). 0: never wait.
    pub max_gather_us: u64,
    /// Group-commit transactions in flight at once per node (each holds a pooled connection).
    pub commit_lanes: usize,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig { max_gather_us: 500, commit_lanes: 4 }
    }
}

impl PostgresConfig {
    /// Longest `max_gather_us`: past 0.1 s a request's wait would dwarf its commit.
    pub const MAX_GATHER_US: u64 = 100_000;
    /// Most `commit_lanes`: each holds a connection of its own.
    pub const MAX_COMMIT_LANES: usize = 64;

    /// Refuses settings outside their bounds, naming the key.
    pub fn check(&self) -> Result<(), Error> {
        if self.max_gather_us > Self::MAX_GATHER_US {
            return Err(Error::invalid(
                "postgres.max_gather_us",
                format!("postgres.max_gather_us is at most {} (0.1 s)", Self::MAX_GATHER_US),
            ));
        }
        if !(1..=Self::MAX_COMMIT_LANES).contains(&self.commit_lanes) {
            return Err(Error::invalid(
                "postgres.commit_lanes",
                format!("postgres.commit_lanes is from 1 to {}", Self::MAX_COMMIT_LANES),
            ));
        }
        Ok(())
    }
}

/// `[mcp]`: the Model Context Protocol endpoint, so agents reach ferry as tools.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct McpConfig {
    /// Serve `/mcp` (off: 404, as for any unknown path).
    pub enabled: bool,
    /// A handshake session unused this long is ended (its client re-initializes).
    pub session_idle_ms: u64,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig { enabled: true, session_idle_ms: 600_000 }
    }
}

/// `[checkpoints]`: retention of run checkpoints (each also settable per thread).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckpointsConfig {
    /// Threads not written for this long are deleted; 0: never.
    pub idle_ttl_ms: i64,
    /// Checkpoints kept per namespace of a thread; 0: all.
    pub keep_last: i64,
    /// How often the retention pass runs.
    pub prune_interval_ms: u64,
    /// Threads written this recently are left alone by `keep_last`.
    pub prune_grace_ms: i64,
}

impl Default for CheckpointsConfig {
    fn default() -> Self {
        CheckpointsConfig { idle_ttl_ms: 0, keep_last: 0, prune_interval_ms: 60_000, prune_grace_ms: 300_000 }
    }
}

/// `[ledger]`: expiry and verify passes, snapshots, and the ledger paid jobs use.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LedgerConfig {
    /// How often due pending transfers are expired (and paid jobs left open settled).
    pub expire_interval_ms: u64,
    /// A snapshot of the balances every this many ledger events.
    pub snapshot_every: i64,
    /// How often a full verify replays the whole chain (failing, it refuses ledger writes).
    pub verify_interval_ms: u64,
    /// The ledger of paid jobs' holds and payments (and of `escrow`).
    pub jobs_ledger: u32,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            expire_interval_ms: 1_000,
            snapshot_every: 1_000,
            verify_interval_ms: 86_400_000,
            jobs_ledger: 1,
        }
    }
}

impl LedgerConfig {
    /// What the store applies.
    pub fn settings(&self) -> ferry_store::LedgerSettings {
        ferry_store::LedgerSettings {
            snapshot_every: self.snapshot_every.max(1),
            jobs_ledger: self.jobs_ledger.max(1),
        }
    }
}

/// `[messages]`: the send limit, deliveries before a dead letter, retention and the sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagesConfig {
    /// Sends and broadcasts per minute per sending agent, across every node (0: no limit).
    pub rate_per_min: u32,
    /// Sends an idle agent may make at once.
    pub rate_burst: u32,
    /// Deliveries of a message before it goes to the agent's dead letters (at least 1).
    pub max_deliveries: u32,
    /// How long dead letters are kept.
    pub dead_retention_ms: i64,
    /// How often expired messages are deleted (and overdue ones moved to dead letters).
    pub sweep_interval_ms: u64,
}

impl Default for MessagesConfig {
    fn default() -> Self {
        MessagesConfig {
            rate_per_min: 100,
            rate_burst: 20,
            max_deliveries: 5,
            dead_retention_ms: 7 * 24 * 3_600_000,
            sweep_interval_ms: 60_000,
        }
    }
}

impl MessagesConfig {
    /// The send bucket.
    pub fn rate(&self) -> ferry_core::message::SendRate {
        ferry_core::message::SendRate { per_min: self.rate_per_min, burst: self.rate_burst }
    }
}

/// `[items]`: how work-item writes are checked.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ItemsConfig {
    /// Refuse (428 `precondition_required`) item writes without `If-Match` or `expected_version`.
    pub require_precondition: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:7700".into(),
            data_dir: PathBuf::from("./ferry-data"),
            database: None,
            synchronous: Synchronous::Full,
            pg_pool_size: 16,
            log: "info".into(),
            limits: Limits::default(),
            maintenance: MaintenanceConfig::default(),
            auth: None,
            insecure: false,
            protection: Default::default(),
            health: Default::default(),
            log_format: "auto".into(),
            log_file: None,
            log_file_max_bytes: 100 << 20,
            log_files_kept: 5,
            audit_log: false,
            stats_sample_ms: 5_000,
            advisor: Default::default(),
            instrument: true,
            cors_origins: Vec::new(),
            server_names: Vec::new(),
            items: ItemsConfig::default(),
            messages: MessagesConfig::default(),
            ledger: LedgerConfig::default(),
            checkpoints: CheckpointsConfig::default(),
            mcp: McpConfig::default(),
            postgres: PostgresConfig::default(),
            sqlite_readers: 4,
            memory: Default::default(),
        }
    }
}

/// Where the data lives, resolved from `database` and `data_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// An embedded SQLite file.
    Sqlite(PathBuf),
    /// A PostgreSQL database shared by any number of nodes.
    Postgres(String),
}

impl Config {
    /// Reads a TOML file; unknown keys are errors so typos do not pass silently.
    pub fn from_file(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(ErrorCode::ValidationFailed, format!("cannot read {}: {e}", path.display()))
        })?;
        toml::from_str(&text).map_err(|e| {
            Error::new(ErrorCode::ValidationFailed, format!("invalid config {}: {e}", path.display()))
        })
    }

    /// The database this configuration points at.
    pub fn database(&self) -> Result<Database, Error> {
        let Some(url) = self.database.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(Database::Sqlite(self.data_dir.join("ferry.db")));
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Database::Postgres(url.to_string()));
        }
        let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
        if path.is_empty() {
            return Err(Error::new(ErrorCode::ValidationFailed, "the database URL names no file"));
        }
        Ok(Database::Sqlite(PathBuf::from(path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_resolution() {
        let mut c = Config::default();
        assert_eq!(c.database().unwrap(), Database::Sqlite(PathBuf::from("./ferry-data/ferry.db")));
        for (url, path) in
            [("sqlite:///tmp/a.db", "/tmp/a.db"), ("sqlite:b.db", "b.db"), ("/x/c.db", "/x/c.db")]
        {
            c.database = Some(url.into());
            assert_eq!(c.database().unwrap(), Database::Sqlite(PathBuf::from(path)));
        }
        c.database = Some("postgres://localhost/db".into());
        assert_eq!(c.database().unwrap(), Database::Postgres("postgres://localhost/db".into()));
        c.database = Some("sqlite:".into());
        assert!(c.database().is_err());
    }

    #[test]
    fn postgres_group_commit_settings_are_bounded() {
        let mut p = PostgresConfig::default();
        p.check().unwrap();
        p.max_gather_us = PostgresConfig::MAX_GATHER_US;
        p.check().unwrap();
        p.max_gather_us += 1;
        assert!(p.check().unwrap_err().to_string().contains("postgres.max_gather_us"));
        p.max_gather_us = 0;
        p.commit_lanes = PostgresConfig::MAX_COMMIT_LANES;
        p.check().unwrap();
        for lanes in [0, PostgresConfig::MAX_COMMIT_LANES + 1] {
            p.commit_lanes = lanes;
            assert!(p.check().unwrap_err().to_string().contains("postgres.commit_lanes"));
        }
    }

    #[test]
    fn toml_is_strict() {
        let c: Config = toml::from_str("listen = \"0.0.0.0:1\"\n[limits]\nmax_batch = 5\n").unwrap();
        assert_eq!((c.listen.as_str(), c.limits.max_batch), ("0.0.0.0:1", 5));
        assert!(toml::from_str::<Config>("lisen = 1").is_err());
    }
}
