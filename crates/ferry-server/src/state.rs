//! [`AppState`]: what every handler and middleware can reach, built once per server from its
//! store and configuration.

use crate::config::{Config, Database};
use crate::{advice_history_path, advisor, auth, events, health, metrics, observe, protect, stats};
use ferry_core::Limits;
use ferry_store::Store;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The storage backend.
    pub store: Arc<dyn Store>,
    /// Input limits.
    pub limits: Arc<Limits>,
    /// Turns true when shutdown begins, so long-polls return at once.
    pub shutdown: watch::Receiver<bool>,
    /// When the server started.
    pub started: Instant,
    /// Routes committed events to this node's subscribers.
    pub hub: Arc<events::Hub>,
    /// Breaker, backpressure and rate limits.
    pub protection: Arc<protect::Protection>,
    /// API tokens known to this node.
    pub tokens: Arc<auth::Tokens>,
    /// Workers heard from since the last flush to the store.
    pub sightings: Arc<health::WorkerSightings>,
    /// Probe results of registered hosts.
    pub prober: Arc<health::HostProber>,
    /// The Prometheus registry.
    pub metrics: Arc<metrics::Metrics>,
    /// HTTP request counts and durations.
    pub http: Arc<observe::HttpMetrics>,
    /// Samples of the node's figures for time windows.
    pub stats: Arc<stats::Stats>,
    /// The scaling advisor and its decision history.
    pub advisor: Arc<advisor::Advisor>,
    /// Whether requests are measured (see `Config::instrument`).
    pub instrument: bool,
    /// Browser origins allowed besides the server's own (`cors_origins`).
    pub cors_origins: Arc<[String]>,
    /// Host names answered while auth is off besides `localhost` and IPs (`server_names`).
    pub server_names: Arc<[String]>,
    /// Work-item settings (`[items]`).
    pub items: crate::config::ItemsConfig,
    /// Agent-message settings (`[messages]`).
    pub messages: crate::config::MessagesConfig,
    /// Ledger settings (`[ledger]`).
    pub ledger: crate::config::LedgerConfig,
    /// Checkpoint retention (`[checkpoints]`).
    pub checkpoints: crate::config::CheckpointsConfig,
    /// Whether ledger writes are refused (balances unverified).
    pub ledger_guard: Arc<crate::api::ledger::LedgerGuard>,
    /// Memory settings, the search gate and the rebuild's progress.
    pub memory: Arc<crate::api::memory::Memory>,
    /// The one backup a node makes at a time.
    pub backups: Arc<crate::api::backup::Backups>,
    /// MCP endpoint settings (`[mcp]`).
    pub mcp: crate::config::McpConfig,
}

impl AppState {
    /// State for `store` as configured, with its background loops not yet started.
    pub fn new(store: Arc<dyn Store>, config: &Config, shutdown: watch::Receiver<bool>) -> AppState {
        let hub = events::Hub::new(
            store.clone(),
            config.limits.event_buffer,
            config.limits.max_subscribers,
            config.limits.max_catchup_events_per_s,
        );
        let protection = Arc::new(protect::Protection::new(config.protection.clone(), &config.limits));
        let http = Arc::new(observe::HttpMetrics::default());
        AppState {
            http: http.clone(),
            store: store.clone(),
            limits: Arc::new(config.limits.clone()),
            shutdown,
            started: Instant::now(),
            hub,
            metrics: Arc::new(metrics::Metrics::new(
                protection.clone(),
                http,
                store.clone(),
                match config.database() {
                    Ok(Database::Sqlite(p)) => Some(p),
                    _ => None,
                },
            )),
            protection,
            tokens: Arc::new(auth::Tokens::new(config.auth)),
            sightings: Arc::new(health::WorkerSightings::new(config.limits.max_rate_limit_keys)),
            stats: Arc::new(stats::Stats::new(
                config.stats_sample_ms,
                3_600_000.max(config.advisor.window_ms),
            )),
            advisor: Arc::new(advisor::Advisor::new(config.advisor.clone(), advice_history_path(config))),
            instrument: config.instrument,
            cors_origins: config.cors_origins.as_slice().into(),
            server_names: config.server_names.as_slice().into(),
            items: config.items.clone(),
            messages: config.messages.clone(),
            ledger: config.ledger.clone(),
            checkpoints: config.checkpoints.clone(),
            ledger_guard: Default::default(),
            memory: Arc::new(crate::api::memory::Memory::new(
                config.memory.clone(),
                // Searches hold a read connection: as many as SQLite's readers, or half the pool.
                if config.database().is_ok_and(|d| matches!(d, crate::config::Database::Postgres(_))) {
                    (config.pg_pool_size / 2).max(1)
                } else {
                    config.sqlite_readers.max(1)
                },
                config.maintenance.batch,
            )),
            prober: Arc::new(health::HostProber::new(config.health.clone())),
            backups: Default::default(),
            mcp: config.mcp.clone(),
        }
    }
}
