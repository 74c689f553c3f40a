//! ferry-server: the HTTP API over a [`Store`], plus the process around it (listener,
//! background maintenance, graceful shutdown).
//!
//! Handlers live in `api/`, one file per resource; they validate input, call the store and
//! shape the answer. Nothing here knows which backend it talks to.

pub mod advisor;
pub mod api;
pub mod auth;
pub mod config;
pub mod edge;
pub mod error;
pub mod events;
pub mod health;
pub mod metrics;
pub mod observe;
pub mod protect;
pub mod serve;
pub mod stats;

pub use config::{Config, Database};

use ferry_core::{Clock, Error, ErrorCode, Limits, SystemClock};
use ferry_store::maintenance::Maintenance;
use ferry_store::measured::Measured;
use ferry_store::{PgConfig, PgStore, SqliteConfig, SqliteStore, Store};
use std::future::Future;
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
}

impl AppState {
    /// State for `store` as configured, with its background loops not yet started.
    pub fn new(store: Arc<dyn Store>, config: &Config, shutdown: watch::Receiver<bool>) -> AppState {
        let hub = events::Hub::new(store.clone(), config.limits.event_buffer, config.limits.max_subscribers);
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
            prober: Arc::new(health::HostProber::new(config.health.clone())),
        }
    }
}

/// Where the advisor keeps its decisions: beside the SQLite file, or in the data directory
/// when one exists (a PostgreSQL node may have none; its history then lives in memory).
fn advice_history_path(config: &Config) -> Option<std::path::PathBuf> {
    let dir = match config.database() {
        Ok(Database::Sqlite(p)) => p.parent().map(|d| d.to_path_buf()).unwrap_or_default(),
        _ => config.data_dir.clone(),
    };
    let dir = if dir.as_os_str().is_empty() { std::path::PathBuf::from(".") } else { dir };
    dir.is_dir().then(|| dir.join("advice-history.jsonl"))
}

/// Whether `listen` binds only the loopback interface.
pub fn is_loopback(listen: &str) -> bool {
    let host = listen.rsplit_once(':').map_or(listen, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Opens the configured store.
pub async fn open_store(config: &Config, clock: Arc<dyn Clock>) -> Result<(Arc<dyn Store>, String), Error> {
    match config.database()? {
        Database::Postgres(url) => {
            let mut cfg = PgConfig::new(&url);
            cfg.limits = config.limits.clone();
            cfg.pool_size = config.pg_pool_size.max(1);
            let store = PgStore::open(cfg, clock).await?;
            Ok((measured(config, Arc::new(store)), format!("postgres database {}", redact(&url))))
        }
        Database::Sqlite(path) => {
            let mut cfg = SqliteConfig::new(&path);
            cfg.synchronous = config.synchronous;
            cfg.limits = config.limits.clone();
            let store = SqliteStore::open(cfg, clock)?;
            Ok((measured(config, Arc::new(store)), format!("sqlite database {}", path.display())))
        }
    }
}

/// The store, timed per call unless instrumentation is off (`instrument = false`, kept so
/// its cost can be measured).
fn measured(config: &Config, store: Arc<dyn Store>) -> Arc<dyn Store> {
    if config.instrument { Measured::wrap(store) } else { store }
}

/// The URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{user}{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_string(),
    }
}

/// Runs the server until `shutdown` resolves, then stops accepting, lets in-flight requests
/// finish (long-polls return early), stops the background loops and flushes the writer.
pub async fn run(config: Config, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (store, where_data) = open_store(&config, clock).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let state = AppState::new(store.clone(), &config, stop_rx.clone());
    state.tokens.reload(store.as_ref()).await?;
    if !is_loopback(&config.listen) && !config.insecure && !state.tokens.active() {
        store.close().await;
        return Err(Error::new(
            ErrorCode::ValidationFailed,
            format!(
                "refusing to listen on {} without auth: create a token (ferry tokens create --scopes admin) \
                 and set auth = true, or pass --insecure",
                config.listen
            ),
        ));
    }
    let listener = match serve::bind(&config.listen, config.limits.listen_backlog).await {
        Ok(l) => l,
        Err(e) => {
            store.close().await;
            return Err(e);
        }
    };
    let addr = listener.local_addr().map_err(|e| Error::internal(e.to_string()))?;
    tokio::spawn(state.hub.clone().run(stop_rx.clone()));
    tokio::spawn(state.protection.clone().depth_loop(store.clone(), stop_rx.clone()));
    tokio::spawn(state.tokens.clone().refresh_loop(store.clone(), stop_rx.clone()));
    let workers =
        tokio::spawn(state.sightings.clone().run(store.clone(), config.health.clone(), stop_rx.clone()));
    tokio::spawn(state.prober.clone().run(store.clone(), stop_rx.clone()));
    tokio::spawn(state.stats.clone().run(state.clone(), stop_rx.clone()));
    tokio::spawn(state.advisor.clone().run(state.clone(), stop_rx.clone()));
    if config.audit_log {
        tokio::spawn(observe::audit_loop(store.clone(), stop_rx.clone()));
    }
    let auth_note = format!("auth {}", state.tokens.mode());
    let maintenance = Maintenance::spawn(store.clone(), config.maintenance.clone());
    let app = api::router(state).0;
    tracing::info!("ferry listening on http://{addr} with {where_data} ({auth_note})");
    tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop_tx.send(true);
    });
    serve::serve(listener, app, Arc::new(config.limits.clone()), stop_rx, std::time::Duration::from_secs(60))
        .await;
    let _ = workers.await;
    maintenance.shutdown().await;
    store.close().await;
    tracing::info!("ferry stopped");
    Ok(())
}
