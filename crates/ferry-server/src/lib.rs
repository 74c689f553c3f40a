//! ferry-server: the HTTP API over a [`Store`], plus the process around it (listener,
//! background maintenance, graceful shutdown).
//!
//! Handlers live in `api/`, one file per resource; they validate input, call the store and
//! shape the answer. Nothing here knows which backend it talks to.

pub mod api;
pub mod config;
pub mod error;
pub mod events;

pub use config::{Config, Database};

use ferry_core::{Clock, Error, ErrorCode, Limits, SystemClock};
use ferry_store::maintenance::Maintenance;
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
}

/// Opens the configured store.
pub async fn open_store(config: &Config, clock: Arc<dyn Clock>) -> Result<(Arc<dyn Store>, String), Error> {
    match config.database()? {
        Database::Postgres(url) => {
            let mut cfg = PgConfig::new(&url);
            cfg.limits = config.limits.clone();
            cfg.pool_size = config.pg_pool_size.max(1);
            let store = PgStore::open(cfg, clock).await?;
            Ok((Arc::new(store), format!("postgres database {}", redact(&url))))
        }
        Database::Sqlite(path) => {
            let mut cfg = SqliteConfig::new(&path);
            cfg.synchronous = config.synchronous;
            cfg.limits = config.limits.clone();
            let store = SqliteStore::open(cfg, clock)?;
            Ok((Arc::new(store), format!("sqlite database {}", path.display())))
        }
    }
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
    let listener = tokio::net::TcpListener::bind(&config.listen).await.map_err(|e| {
        Error::new(ErrorCode::Unavailable, format!("cannot listen on {}: {e}", config.listen))
    })?;
    let addr = listener.local_addr().map_err(|e| Error::internal(e.to_string()))?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let hub = events::Hub::new(store.clone(), config.limits.event_buffer, config.limits.max_subscribers);
    tokio::spawn(hub.clone().run(stop_rx.clone()));
    let state = AppState {
        store: store.clone(),
        limits: Arc::new(config.limits.clone()),
        shutdown: stop_rx,
        started: Instant::now(),
        hub,
    };
    let maintenance = Maintenance::spawn(store.clone(), config.maintenance.clone());
    let app = api::router(state).0;
    tracing::info!("ferry listening on http://{addr} with {where_data}");
    let graceful = async move {
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = stop_tx.send(true);
    };
    let served = axum::serve(listener, app).with_graceful_shutdown(graceful).await;
    maintenance.shutdown().await;
    store.close().await;
    tracing::info!("ferry stopped");
    served.map_err(|e| Error::internal(format!("server error: {e}")))
}
