//! ferry-server: the HTTP API over a [`Store`], plus the process around it (listener,
//! background maintenance, graceful shutdown).
//!
//! Handlers live in `api/`, one file per resource; they validate input, call the store and
//! shape the answer. Nothing here knows which backend it talks to.

mod advisor;
mod api;
mod auth;
mod config;
mod edge;
mod error;
mod events;
mod health;
mod mcp;
mod metrics;
mod observe;
mod protect;
mod serve;
mod state;
mod stats;

pub use auth::mint;
pub use config::{Config, Database};
pub(crate) use state::AppState;

use ferry_core::{Clock, Error, ErrorCode, SystemClock};
use ferry_store::maintenance::Maintenance;
use ferry_store::{PgConfig, PgStore, SqliteConfig, SqliteStore, Store};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;

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

/// Refuses a listen address that is not `host:port` (a bare port such as `7702`, say) with
/// the form it needs, before anything else is checked or opened.
pub fn check_listen(listen: &str) -> Result<(), Error> {
    let port_ok = |p: &str| !p.is_empty() && p.parse::<u16>().is_ok();
    let ok = match listen.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port_ok(port),
        None => false,
    };
    if ok {
        return Ok(());
    }
    let example = if port_ok(listen) { listen } else { "7700" };
    Err(Error::new(
        ErrorCode::ValidationFailed,
        format!(
            "listen address {listen:?} is not host:port; give e.g. 127.0.0.1:{example} (this machine only) \
             or 0.0.0.0:{example} (every interface, with auth) (--listen / FERRY_LISTEN / listen in ferry.toml)"
        ),
    ))
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
            config.postgres.check()?;
            let mut cfg = PgConfig::new(&url);
            cfg.limits = config.limits.clone();
            cfg.pool_size = config.pg_pool_size.max(1);
            cfg.ledger = config.ledger.settings();
            cfg.max_gather_us = config.postgres.max_gather_us;
            cfg.commit_lanes = config.postgres.commit_lanes;
            let store = PgStore::open(cfg, clock).await?;
            Ok((measured(config, Arc::new(store)), format!("postgres database {}", redact(&url))))
        }
        Database::Sqlite(path) => {
            let mut cfg = SqliteConfig::new(&path);
            cfg.synchronous = config.synchronous;
            cfg.readers = config.sqlite_readers.max(1);
            cfg.limits = config.limits.clone();
            cfg.ledger = config.ledger.settings();
            let store = SqliteStore::open(cfg, clock)?;
            Ok((measured(config, Arc::new(store)), format!("sqlite database {}", path.display())))
        }
    }
}

/// The store, its writes timed per call unless instrumentation is off (`instrument = false`,
/// kept so its cost can be measured).
fn measured(config: &Config, store: Arc<dyn Store>) -> Arc<dyn Store> {
    store.metrics().set_timing(config.instrument);
    store
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
    check_listen(&config.listen)?;
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
    tokio::spawn(api::messages::sweeper(state.clone(), config.maintenance.batch, stop_rx.clone()));
    tokio::spawn(api::checkpoints::pruner(state.clone(), config.maintenance.batch, stop_rx.clone()));
    tokio::spawn(api::memory::retention(state.clone(), config.maintenance.batch, stop_rx.clone()));
    api::ledger::check_at_start(&state).await;
    tokio::spawn(api::ledger::passes(state.clone(), config.maintenance.batch, stop_rx.clone()));
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
