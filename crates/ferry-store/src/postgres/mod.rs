//! The PostgreSQL backend: several ferry nodes on one database.
//!
//! Every call is one transaction on a pooled connection, except the job commands (enqueue,
//! claim, complete, fail, heartbeat), which this node's group committer (`committer.rs`)
//! gathers from concurrent requests into shared transactions. Claims use `FOR UPDATE SKIP LOCKED`,
//! so concurrent claimers on any node never block on or double-lease a row; every
//! read-then-write locks its row first (`FOR UPDATE`), and lease checks sit in the same
//! statement as the change. Wake-ups cross nodes with `pg_notify` (one per queue per committed
//! transaction, delivered at commit) to a `LISTEN`ing connection on each node; claimers also
//! re-check every `fallback_poll`, so a lost notification only delays a job.

/// Boxes an async block for the transaction and read primitives (declared before the domain
/// modules, which use it).
macro_rules! boxed {
    ($body:expr) => {
        Box::pin(async move { $body })
    };
}

mod access;
mod checkpoints;
mod committer;
mod convoys;
mod events;
mod hosts;
mod items;
mod jobs;
mod ledger;
mod limits;
mod memory;
mod messages;
mod queues;
mod schedules;
pub mod schema;
mod tokens;
mod workers;

use crate::StoreCore;
use crate::effects::Effects;
use crate::events::EventBus;
use crate::notify::Notifier;
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use ferry_core::{Clock, Error, ErrorCode, Limits, Result, StorageFault};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::types::FromSql;
use tokio_postgres::{NoTls, Row};

/// How to reach the database.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// `postgres://user@host:port/db` (libpq-style key=value strings work too).
    pub url: String,
    /// A schema to keep ferry's tables in (created if missing); `None` is the default
    /// search path. Tests use one schema per run.
    pub schema: Option<String>,
    /// Most pooled connections of this node.
    pub pool_size: usize,
    /// How often a long-poll re-checks without a notification.
    pub fallback_poll_ms: u64,
    /// Input limits (error text, history length).
    pub limits: Limits,
    /// How often this node checks ferry's hot tables for dead row versions and vacuums them
    /// (one node at a time); 0 leaves it to autovacuum alone.
    pub vacuum_interval_ms: u64,
    /// The `[ledger]` settings the store applies.
    pub ledger: crate::LedgerSettings,
    /// Longest the group committer holds a request back to gather batch mates (only while
    /// recent batches were larger than what is waiting; a lone request on an idle node is
    /// never held).
    pub max_gather_us: u64,
    /// Transactions of the group committer in flight at once (each on a pooled connection).
    pub commit_lanes: usize,
}

impl PgConfig {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        PgConfig {
            url: url.into(),
            schema: None,
            pool_size: 16,
            fallback_poll_ms: 1_000,
            limits: Limits::default(),
            vacuum_interval_ms: 10_000,
            ledger: crate::LedgerSettings::default(),
            max_gather_us: 500,
            commit_lanes: 4,
        }
    }
}

/// A ferry store in PostgreSQL.
pub struct PgStore {
    pool: Pool,
    /// Connections for memory searches only (`pool_size / 2`).
    search_pool: Pool,
    notifier: Arc<Notifier>,
    clock: Arc<dyn Clock>,
    limits: Arc<Limits>,
    /// The NOTIFY channel of inbox wake-ups (agents and broadcast channels), apart from queues'.
    msg_channel: String,
    fallback_poll: Duration,
    bus: Arc<EventBus>,
    /// Effects this node's event sequencer after a commit that recorded events.
    sequence: Arc<tokio::sync::Notify>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    metrics: Arc<crate::metrics::StoreMetrics>,
    /// The `[ledger]` settings the store applies.
    ledger: crate::LedgerSettings,
    /// Whether some paid job may hold funds: only then does a transaction that ends jobs look
    /// for holds to settle (the ledger's expiry pass settles any left over, and turns this on
    /// once another node has placed the cluster's first hold).
    paid: Arc<std::sync::atomic::AtomicBool>,
    /// This node's batcher of ledger transfer, post and void writes.
    ledger_batch: ledger::Batcher,
    /// What write transactions do last and after they commit.
    sinks: Sinks,
    /// This node's group committer of job commands.
    committer: committer::Committer,
}

/// Maps a PostgreSQL error: lost connections and server shutdowns are `unavailable`.
pub(crate) fn pg_err(e: tokio_postgres::Error) -> Error {
    let transient = e.is_closed()
        || e.code().is_some_and(|c| {
            let s = c.code();
            s.starts_with("08") || s.starts_with("57P") || s == "53300" || s == "40001" || s == "40P01"
        })
        || (e.code().is_none() && {
            // No SQLSTATE: a connection-level failure, unless it is our own (de)serialization.
            let msg = e.to_string();
            !msg.starts_with("error serializing") && !msg.starts_with("error deserializing")
        });
    let class = e.code().map(|c| &c.code()[..2]);
    if transient {
        let busy = e.code().is_some_and(|c| matches!(c.code(), "53300" | "40001" | "40P01"));
        let fault = if busy { StorageFault::Busy } else { StorageFault::Unreachable };
        Error::unavailable(format!("database unavailable: {e}")).with_fault(fault)
    } else if class == Some("22") {
        // A data exception (a value the database cannot store) is the input's fault, not the
        // storage's: a 422 that never counts toward the circuit breaker.
        Error::new(ErrorCode::ValidationFailed, format!("the database cannot store this value: {e}"))
    } else if class == Some("23") {
        Error::new(ErrorCode::Conflict, format!("the database refused this change: {e}"))
    } else {
        // `db error` alone names nothing: the server's own message says what went wrong.
        let detail = e.as_db_error().map_or_else(|| e.to_string(), |d| format!("{e}: {}", d.message()));
        let fault = match e.code().map(|c| c.code()) {
            Some("53100") => StorageFault::DiskFull,
            Some("25006") => StorageFault::ReadOnly,
            Some("58030") => StorageFault::Io,
            Some("55P03" | "57014") => StorageFault::Busy,
            _ => StorageFault::Other,
        };
        Error::internal(format!("database error: {detail}")).with_fault(fault)
    }
}

/// Where a connection was looked for (host:port, database, user), for messages.
pub(crate) fn target(pg: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let ports = pg.get_ports();
    let hosts: Vec<String> = pg
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() { "localhost:5432".to_string() } else { hosts.join(",") };
    let user = pg.get_user().unwrap_or("(the OS user)");
    let db = pg.get_dbname().unwrap_or(user);
    format!("{hosts}, database {db}, user {user}")
}

/// A failed connection, said with where it was looked for and the cause underneath.
pub(crate) fn unreachable(pg: &tokio_postgres::Config, e: &tokio_postgres::Error) -> Error {
    let mut cause = match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => e.to_string(),
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let text = s.to_string();
        if !cause.contains(&text) {
            cause = format!("{cause}: {text}");
        }
        source = s.source();
    }
    Error::unavailable(format!(
        "cannot connect to PostgreSQL at {}: {cause}; is PostgreSQL running there, and is the URL right? \
         (--database / FERRY_DATABASE_URL)",
        target(pg)
    ))
    .with_fault(StorageFault::Unreachable)
}

pub(crate) fn pool_err(e: deadpool_postgres::PoolError) -> Error {
    match e {
        // Every pooled connection stayed busy for `limits.max_pool_wait_ms`: load, not an
        // outage, so the breaker does not count it.
        deadpool_postgres::PoolError::Timeout(_) => Error::new(
            ErrorCode::ServerSaturated,
            "no database connection came free within limits.max_pool_wait_ms; retry shortly",
        ),
        // The pool could not open a connection: say why, not only that an object failed.
        // (A connection that cannot be opened is an outage whatever the reason: 503, counted by
        // the breaker.)
        deadpool_postgres::PoolError::Backend(e) => {
            let why = e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_string());
            Error::unavailable(format!("database unavailable: cannot open a connection: {why}"))
                .with_fault(StorageFault::Unreachable)
        }
        e => Error::unavailable(format!("database unavailable: {e}")).with_fault(StorageFault::Unreachable),
    }
}

/// Reads columns without panicking: a type or index mismatch is an internal error.
pub(crate) trait RowExt {
    /// Column `i` as a `T`; a mismatch names the column.
    fn col<'a, T: FromSql<'a>>(&'a self, i: usize) -> Result<T>;
}

impl RowExt for Row {
    fn col<'a, T: FromSql<'a>>(&'a self, i: usize) -> Result<T> {
        self.try_get(i).map_err(|e| {
            let name = self.columns().get(i).map_or("?", |c| c.name());
            Error::internal(format!("cannot read column {i} ({name}): {e}"))
        })
    }
}

fn valid_schema(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 63
        || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(Error::invalid("schema", "a schema name is 1–63 of [a-z0-9_]"));
    }
    Ok(())
}

/// The body of one transaction: runs on it with the time and collects its effects.
trait TxBody<T>:
    for<'a> FnOnce(
    &'a deadpool_postgres::Transaction<'a>,
    i64,
    &'a mut Effects,
) -> futures_util::future::BoxFuture<'a, Result<T>>
{
}

impl<T, F> TxBody<T> for F where
    F: for<'a> FnOnce(
        &'a deadpool_postgres::Transaction<'a>,
        i64,
        &'a mut Effects,
    ) -> futures_util::future::BoxFuture<'a, Result<T>>
{
}

/// What every write transaction does last (its events, ledger settlements and cross-node
/// wake-ups, written in it) and after it commits (local wake-ups, metrics, the sequencer):
/// shared by one-call transactions and the group committer.
#[derive(Clone)]
pub(crate) struct Sinks {
    notifier: Arc<Notifier>,
    metrics: Arc<crate::metrics::StoreMetrics>,
    /// Effects this node's event sequencer after a commit that recorded events.
    sequence: Arc<tokio::sync::Notify>,
    channel: String,
    msg_channel: String,
    ledger: crate::LedgerSettings,
    paid: Arc<std::sync::atomic::AtomicBool>,
}

impl Sinks {
    /// Settles the holds of paid jobs `fx` ended, records its events and sends its wake-ups
    /// to the other nodes, all in `tx`.
    async fn before_commit(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        now: i64,
        fx: &mut Effects,
    ) -> Result<()> {
        // A paid job that ended in this transaction is paid (or its hold voided) in it.
        if fx.jobs_ended() && self.paid.load(std::sync::atomic::Ordering::Relaxed) {
            while ledger::settle_ended(tx, now, &self.ledger, fx).await? == 1_000 {}
        }
        if !fx.events.is_empty() {
            let at = fx.events.last().map_or(now, |e| e.at.0);
            tx.execute(
                &tx.prepare_cached("INSERT INTO event_log (n, at, body) VALUES ($1, $2, $3)")
                    .await
                    .map_err(pg_err)?,
                &[&(fx.events.len() as i32), &at, &crate::events::encode(&fx.events)],
            )
            .await
            .map_err(pg_err)?;
        }
        if !fx.wake.is_empty() {
            // Inbox keys (`agent/…`, `channel/…`) go on their own channel: queue wake-ups
            // never carry them, nor they queue names.
            let (inbox, queues): (Vec<&String>, Vec<&String>) =
                fx.wake.iter().partition(|k| k.starts_with("agent/") || k.starts_with("channel/"));
            for (channel, keys) in [(&self.channel, queues), (&self.msg_channel, inbox)] {
                if !keys.is_empty() {
                    tx.execute(
                        &tx.prepare_cached("SELECT pg_notify($1, q) FROM unnest($2::text[]) AS q")
                            .await
                            .map_err(pg_err)?,
                        &[channel, &keys],
                    )
                    .await
                    .map_err(pg_err)?;
                }
            }
        }
        Ok(())
    }

    /// Announces a committed transaction's effects on this node.
    fn after_commit(&self, fx: &Effects) {
        self.metrics.committed(&fx.events);
        for q in &fx.wake {
            self.notifier.wake(q);
        }
        if let Some(d) = fx.due_ms {
            self.notifier.due_at(d);
        }
        if !fx.events.is_empty() {
            self.sequence.notify_one();
        }
    }
}

impl PgStore {
    /// Connects, creates the schema if asked, migrates, and starts listening for wake-ups.
    pub async fn open(config: PgConfig, clock: Arc<dyn Clock>) -> Result<Self> {
        assert!(config.pool_size >= 1);
        let mut pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| Error::new(ErrorCode::ValidationFailed, format!("bad PostgreSQL URL: {e}")))?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(Duration::from_secs(10));
        }
        let (channel, events_channel, msg_channel) = match &config.schema {
            Some(s) => {
                valid_schema(s)?;
                let (client, conn) = pg.connect(NoTls).await.map_err(|e| unreachable(&pg, &e))?;
                let driver = tokio::spawn(conn);
                client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {s}")).await.map_err(pg_err)?;
                drop(client);
                let _ = driver.await;
                pg.options(format!("-c search_path={s}"));
                (format!("ferry_wake_{s}"), format!("ferry_events_{s}"), format!("ferry_msg_{s}"))
            }
            None => ("ferry_wake".to_string(), "ferry_events".to_string(), "ferry_msg".to_string()),
        };
        // One connection first, so that an unreachable database is reported with where it was
        // looked for and why it failed, not as a pool's failure to create an object; closed
        // cleanly (its driver runs to the end), so the server logs no unexpected EOF.
        let (probe, conn) = pg.connect(NoTls).await.map_err(|e| unreachable(&pg, &e))?;
        let driver = tokio::spawn(conn);
        drop(probe);
        let _ = driver.await;
        let wait = Duration::from_millis(config.limits.max_pool_wait_ms.max(1));
        let pool = build_pool(&pg, config.pool_size, wait, "connection pool")?;
        // Memory searches read through connections of their own (as many as the server's
        // search permits), so writers queued on a namespace's counters cannot starve them.
        let search_pool =
            build_pool(&search_config(&pg), (config.pool_size / 2).max(1), wait, "search connection pool")?;
        // The committer's connections of its own, one per lane: its statements are few and
        // run thousands of times a second, so they keep their generic plans (planning was a
        // third of PostgreSQL's time per batch); reads keep custom plans on the main pool.
        let lanes = config.commit_lanes.max(1);
        let mut commit_pg = pg.clone();
        let options = match pg.get_options() {
            Some(o) => format!("{o} -c plan_cache_mode=force_generic_plan"),
            None => "-c plan_cache_mode=force_generic_plan".to_string(),
        };
        commit_pg.options(options);
        let commit_pool = build_pool(&commit_pg, lanes, wait, "commit connection pool")?;
        {
            let mut client = pool.get().await.map_err(pool_err)?;
            schema::migrate(&mut client).await?;
        }
        let head = events::head(&*pool.get().await.map_err(pool_err)?).await?;
        let paid: bool = pool
            .get()
            .await
            .map_err(pool_err)?
            .query_one("SELECT EXISTS (SELECT 1 FROM jobs WHERE hold_open = 1)", &[])
            .await
            .map_err(pg_err)?
            .col(0)?;
        let bus = EventBus::new(head);
        let notifier = Notifier::new();
        let sequence = Arc::new(tokio::sync::Notify::new());
        let tail = Arc::new(tokio::sync::Notify::new());
        let mut tasks = vec![
            tokio::spawn(listen(
                pg,
                [channel.clone(), msg_channel.clone()],
                events_channel.clone(),
                notifier.clone(),
                tail.clone(),
            )),
            tokio::spawn(events::sequencer(
                pool.clone(),
                events_channel,
                msg_channel.clone(),
                clock.clone(),
                sequence.clone(),
            )),
            tokio::spawn(events::tailer(pool.clone(), bus.clone(), tail)),
        ];
        if config.vacuum_interval_ms > 0 {
            tasks.push(tokio::spawn(vacuum_loop(
                pool.clone(),
                Duration::from_millis(config.vacuum_interval_ms),
            )));
        }
        let metrics = Arc::new(crate::metrics::StoreMetrics::new(config.pool_size.max(1) as u32));
        let paid = Arc::new(std::sync::atomic::AtomicBool::new(paid));
        let limits = Arc::new(config.limits);
        let sinks = Sinks {
            notifier: notifier.clone(),
            metrics: metrics.clone(),
            sequence: sequence.clone(),
            channel: channel.clone(),
            msg_channel: msg_channel.clone(),
            ledger: config.ledger,
            paid: paid.clone(),
        };
        let (committer, task) = committer::Committer::start(committer::Settings {
            pool: commit_pool,
            clock: clock.clone(),
            limits: limits.clone(),
            sinks: sinks.clone(),
            max_gather: Duration::from_micros(config.max_gather_us),
            lanes,
        });
        tasks.push(task);
        Ok(PgStore {
            pool,
            search_pool,
            notifier,
            clock,
            limits,
            msg_channel,
            fallback_poll: Duration::from_millis(config.fallback_poll_ms),
            bus,
            sequence,
            tasks,
            metrics,
            ledger: config.ledger,
            paid,
            ledger_batch: ledger::Batcher::default(),
            sinks,
            committer,
        })
    }

    /// Drops a schema and everything in it (test clean-up).
    pub async fn drop_schema(url: &str, schema: &str) -> Result<()> {
        valid_schema(schema)?;
        let (client, conn) = tokio_postgres::connect(url, NoTls).await.map_err(pg_err)?;
        let driver = tokio::spawn(conn);
        client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.map_err(pg_err)?;
        drop(client);
        let _ = driver.await;
        Ok(())
    }

    /// Runs `f` in one transaction, then announces its wake-ups on this node and, through
    /// `pg_notify` inside the same transaction, on every other node; timed and counted as `op`.
    async fn tx<T, F: TxBody<T>>(&self, op: &'static str, f: F) -> Result<T> {
        self.metrics.timed(op, self.run_tx(f)).await
    }

    async fn run_tx<T, F: TxBody<T>>(&self, f: F) -> Result<T> {
        let asked = std::time::Instant::now();
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let started = std::time::Instant::now();
        if started - asked > Duration::from_millis(1) {
            self.metrics.waited(started - asked);
        }
        let tx = client.transaction().await.map_err(pg_err)?;
        let mut fx = Effects::default();
        let now = self.clock.now_ms();
        let out = match self.body(&tx, now, &mut fx, f).await {
            Ok(out) => out,
            Err(e) => {
                // Dropping a transaction only queues its ROLLBACK: the rows it locked would
                // stay locked after the caller saw the error, and a next call's `SKIP LOCKED`
                // would pass them over. Roll back before answering.
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        tx.commit().await.map_err(pg_err)?;
        self.metrics.transaction(1, started.elapsed());
        self.sinks.after_commit(&fx);
        Ok(out)
    }

    /// Runs a transaction's body, then writes its events and wake-ups in the same transaction.
    async fn body<T, F: TxBody<T>>(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        now: i64,
        fx: &mut Effects,
        f: F,
    ) -> Result<T> {
        let out = f(tx, now, fx).await?;
        self.sinks.before_commit(tx, now, fx).await?;
        Ok(out)
    }

    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        F: for<'a> FnOnce(
            &'a deadpool_postgres::ClientWrapper,
        ) -> futures_util::future::BoxFuture<'a, Result<T>>,
    {
        read_on(&self.pool, f).await
    }

    /// Runs `f` on a connection of the search pool.
    async fn search_read<T, F>(&self, f: F) -> Result<T>
    where
        F: for<'a> FnOnce(
            &'a deadpool_postgres::ClientWrapper,
        ) -> futures_util::future::BoxFuture<'a, Result<T>>,
    {
        read_on(&self.search_pool, f).await
    }
}

/// Runs `f` on a connection of `pool`.
async fn read_on<T, F>(pool: &Pool, f: F) -> Result<T>
where
    F: for<'a> FnOnce(&'a deadpool_postgres::ClientWrapper) -> futures_util::future::BoxFuture<'a, Result<T>>,
{
    let client = pool.get().await.map_err(pool_err)?;
    f(&client).await
}

/// `work_mem` of the search pool's connections. A rare pair's postings ANDed with a filter's
/// range make a bitmap over up to every heap page of the history; at PostgreSQL's default 4 MB
/// it turns lossy past ~100,000 pages and every row of those pages is rechecked (110 ms at
/// 1,000,000 episodes). The search pool holds at most `pg_pool_size / 2` connections, each
/// with one bitmap at a time.
const SEARCH_WORK_MEM: &str = "32MB";

/// The search pool's connection settings: `pg`'s, with [`SEARCH_WORK_MEM`].
fn search_config(pg: &tokio_postgres::Config) -> tokio_postgres::Config {
    let mut search = pg.clone();
    let options = match pg.get_options() {
        Some(o) => format!("{o} -c work_mem={SEARCH_WORK_MEM}"),
        None => format!("-c work_mem={SEARCH_WORK_MEM}"),
    };
    search.options(options);
    search
}

/// A pool of at most `size` connections to `pg` whose callers wait at most `wait` for one.
fn build_pool(pg: &tokio_postgres::Config, size: usize, wait: Duration, what: &str) -> Result<Pool> {
    let mgr =
        Manager::from_config(pg.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(mgr)
        .max_size(size)
        .wait_timeout(Some(wait))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| Error::internal(format!("cannot build the {what}: {e}")))
}

/// Keeps one `LISTEN` connection per node, reconnecting after failures, and turns each
/// notification into a local wake-up of its queue, or of the event tailer.
async fn listen(
    pg: tokio_postgres::Config,
    wake_channels: [String; 2],
    events_channel: String,
    notifier: Arc<Notifier>,
    tail: Arc<tokio::sync::Notify>,
) {
    use futures_util::StreamExt;
    loop {
        match pg.connect(NoTls).await {
            Ok((client, mut conn)) => {
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                let (channel_of_events, tail) = (events_channel.clone(), tail.clone());
                let driver = tokio::spawn(async move {
                    let mut stream = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(msg) = stream.next().await {
                        match msg {
                            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                                if n.channel() == channel_of_events {
                                    tail.notify_one();
                                } else if tx.send(n.payload().to_string()).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(_) => return,
                        }
                    }
                });
                let [queues, inboxes] = &wake_channels;
                let listen = format!("LISTEN {queues}; LISTEN {inboxes}; LISTEN {events_channel}");
                if client.batch_execute(&listen).await.is_ok() {
                    while let Some(queue) = rx.recv().await {
                        notifier.wake(&queue);
                    }
                }
                driver.abort();
                tracing::warn!("PostgreSQL LISTEN connection lost; reconnecting");
            }
            Err(e) => tracing::warn!(error = %e, "cannot open the PostgreSQL LISTEN connection; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Advisory lock key letting one node vacuum at a time ("fvac" in ASCII).
const VACUUM_LOCK: i64 = 0x6676_6163;

/// Dead row versions, new rows or changed rows a table may gather before ferry vacuums and
/// analyses it: the larger of this and a tenth of its live rows.
const VACUUM_MIN_ROWS: i64 = 20_000;

/// Every claim and completion leaves a dead row version in `jobs`; claims walk past them until
/// a vacuum clears them, so throughput and table size depend on it. Autovacuum may be off or
/// too slow for a table that turns over thousands of times a second, so each node checks the
/// counts on a timer and, holding an advisory lock, vacuums what needs it. Inserts count too:
/// an append-mostly table (episodes) needs its statistics for good plans and its visibility map
/// for index-only scans, and with autovacuum off nothing else gives them.
async fn vacuum_loop(pool: Pool, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Ok(client) = pool.get().await else { continue };
        let locked = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&VACUUM_LOCK])
            .await
            .is_ok_and(|r| matches!(r.col::<bool>(0), Ok(true)));
        if !locked {
            continue;
        }
        match vacuum_due(&client).await {
            Ok(tables) => {
                for table in tables {
                    let started = std::time::Instant::now();
                    match client.batch_execute(&format!("VACUUM (ANALYZE) {table}")).await {
                        Ok(()) => {
                            tracing::info!(table, ms = started.elapsed().as_millis() as u64, "vacuumed")
                        }
                        Err(e) => tracing::warn!(table, error = %e, "vacuum failed"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read table statistics"),
        }
        let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&VACUUM_LOCK]).await;
    }
}

/// ferry's tables holding enough dead row versions, new rows or changes since their last
/// `ANALYZE` (each past a tenth of the table, and at least `VACUUM_MIN_ROWS`) to vacuum.
async fn vacuum_due(client: &deadpool_postgres::ClientWrapper) -> Result<Vec<String>> {
    let rows = client
        .query(
            "SELECT relname::text FROM pg_stat_user_tables
             WHERE schemaname = current_schema() AND relname IN ('jobs', 'event_log', 'job_deps', 'items', 'item_history',
                                                                 'deliveries', 'agents', 'channel_cursors', 'messages',
                                                                 'convoys',
                                                                 'ledger_accounts', 'ledger_transfers', 'ledger_head', 'threads', 'checkpoints', 'checkpoint_blobs', 'checkpoint_writes',
                                                                 'episodes', 'episode_tags', 'episode_vectors', 'memory_namespaces')
               AND (n_dead_tup > greatest($1, n_live_tup / 10)
                    OR n_ins_since_vacuum > greatest($1, n_live_tup / 10)
                    OR n_mod_since_analyze > greatest($1, n_live_tup / 10))",
            &[&VACUUM_MIN_ROWS],
        )
        .await
        .map_err(pg_err)?;
    rows.iter().map(|r| r.col(0)).collect()
}

#[async_trait]
impl StoreCore for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
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
        let st = self.pool.status();
        (st.size.saturating_sub(st.available), st.max_size)
    }

    fn fallback_poll(&self) -> Option<Duration> {
        Some(self.fallback_poll)
    }

    fn events(&self) -> &Arc<EventBus> {
        &self.bus
    }

    async fn storage_bytes(&self) -> Result<u64> {
        self.read(|c| boxed!(jobs::storage_bytes(c).await)).await
    }

    async fn check_invariants(&self) -> Result<Vec<String>> {
        self.read(|c| {
            boxed!({
                let mut out = jobs::invariants(c).await?;
                out.extend(items::invariants(c).await?);
                out.extend(messages::invariants(c).await?);
                out.extend(convoys::invariants(c).await?);
                out.extend(ledger::invariants(c).await?);
                out.extend(checkpoints::invariants(c).await?);
                out.extend(memory::invariants(c).await?);
                Ok(out)
            })
        })
        .await
    }

    async fn close(&self) {
        for t in &self.tasks {
            t.abort();
        }
        self.pool.close();
    }
}
