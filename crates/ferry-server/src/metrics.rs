//! `GET /metrics`: the node's measurements in the Prometheus text format (prometheus-client).
//!
//! Values that already live elsewhere (breaker state, refusal counts, pending writes) are read
//! at scrape time by a collector rather than copied on every change, so the hot path pays
//! nothing for them.

use crate::observe::HttpMetrics;
use crate::protect::{BreakerState, Protection, REJECTION_REASONS};
use ferry_store::Store;
use ferry_store::metrics::JOB_OUTCOMES;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

/// prometheus-client writes OpenMetrics, where a counter family `x` has samples `x_total`;
/// the Prometheus text format (which `/metrics` serves, and `promtool check metrics` reads)
/// names the family `x_total` too, and has no `# EOF`.
fn to_prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::HashSet<&str> =
        open_metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(open_metrics.len() + counters.len() * 16);
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Kinds of item conflict counted in `ferry_conflicts_total{kind}` (besides `stale_lease`).
pub const CONFLICT_KINDS: [&str; 5] =
    ["version_conflict", "precondition_failed", "assigned_to_other", "stale_receipt", "transfer"];

/// The node's metric registry.
pub struct Metrics {
    registry: Registry,
    conflicts: Arc<[std::sync::atomic::AtomicU64; CONFLICT_KINDS.len()]>,
    store: Arc<dyn Store>,
    scrape: Arc<Mutex<Scrape>>,
    sqlite_path: Option<PathBuf>,
    memory: MemoryMetrics,
    mcp: McpMetrics,
}

/// MCP tool calls by tool and outcome, their durations, and the handshake sessions alive.
struct McpMetrics {
    calls: Family<Labels, Counter>,
    seconds: Family<Labels, Histogram, fn() -> Histogram>,
    sessions: Gauge,
}

/// One label, as prometheus-client families take it.
type Labels = Vec<(String, String)>;

/// Memory search timings and counts, and the last reconcile's mismatches.
struct MemoryMetrics {
    search_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    searches: Family<Labels, Counter>,
    mismatches: Gauge,
}

fn search_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

/// What a scrape reads from the database first (the collectors cannot wait).
#[derive(Debug, Default)]
struct Scrape {
    queues: Vec<ferry_core::QueueStats>,
    /// (file, bytes): `db` and `wal` for SQLite, `tables` for PostgreSQL.
    sizes: Vec<(&'static str, u64)>,
    /// Free and total bytes of the data directory's filesystem (SQLite).
    disk: Option<(u64, u64)>,
    /// Work items by status, across the cluster.
    items: Vec<(ferry_core::item::ItemStatus, u64)>,
    /// Inbox deliveries by state, across the cluster.
    inbox: Vec<(&'static str, u64)>,
    /// Live convoys and their held members, across the cluster.
    convoys: ferry_core::convoy::ConvoyGauges,
    /// Pending ledger transfers, across the cluster.
    ledger_pending: u64,
}

/// Free and total bytes of the filesystem holding `path`.
pub fn disk_space(path: &std::path::Path) -> Option<(u64, u64)> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let st = rustix::fs::statvfs(dir).ok()?;
    Some((st.f_bavail.saturating_mul(st.f_frsize), st.f_blocks.saturating_mul(st.f_frsize)))
}

struct StoreCollector {
    store: Arc<dyn Store>,
    scrape: Arc<Mutex<Scrape>>,
    conflicts: Arc<[std::sync::atomic::AtomicU64; CONFLICT_KINDS.len()]>,
}

impl std::fmt::Debug for StoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreCollector")
    }
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn counter_f(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    h: &ferry_core::measure::HistogramSnapshot,
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Histogram)?;
    encode_histogram(&mut m, h)
}

impl prometheus_client::collector::Collector for StoreCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = self.store.metrics();
        let jobs = m.jobs.snapshot();
        for (i, outcome) in JOB_OUTCOMES.iter().enumerate() {
            let name = format!("ferry_jobs_{outcome}");
            let help = format!("Jobs {outcome}, by queue (this node's commits)");
            let mut f =
                enc.encode_descriptor(&name, &help, None, prometheus_client::metrics::MetricType::Counter)?;
            for (queue, counts) in &jobs {
                ConstCounter::new(counts[i]).encode(f.encode_family(&[("queue", queue.as_str())])?)?;
            }
        }
        let scrape = self.scrape.lock().expect("scrape lock");
        let mut f = enc.encode_descriptor(
            "ferry_queue_jobs",
            "Jobs per queue and state",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for q in &scrape.queues {
            for (state, n) in &q.counts {
                ConstGauge::new(*n as i64)
                    .encode(f.encode_family(&[("queue", q.queue.as_str()), ("state", state.as_str())])?)?;
            }
        }
        let mut f = enc.encode_descriptor(
            "ferry_items",
            "Work items per status (cluster-wide)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for status in ferry_core::item::ItemStatus::ALL {
            let n = scrape.items.iter().find(|(s, _)| s == status).map_or(0, |(_, n)| *n);
            ConstGauge::new(n as i64).encode(f.encode_family(&[("status", status.as_str())])?)?;
        }
        let mut f = enc.encode_descriptor(
            "ferry_inbox_messages",
            "Messages in agent inboxes per state (cluster-wide; broadcasts not yet read are not counted)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for state in ["ready", "in_flight", "dead"] {
            let n = scrape.inbox.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n);
            ConstGauge::new(n as i64).encode(f.encode_family(&[("state", state)])?)?;
        }
        let mut f = enc.encode_descriptor(
            "ferry_convoys",
            "Live convoys per state (cluster-wide)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        ConstGauge::new(scrape.convoys.open as i64).encode(f.encode_family(&[("state", "open")])?)?;
        ConstGauge::new(scrape.convoys.sealed as i64).encode(f.encode_family(&[("state", "sealed")])?)?;
        let f = enc.encode_descriptor(
            "ferry_convoy_held_jobs",
            "Convoy members waiting for a slot (cluster-wide)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        ConstGauge::new(scrape.convoys.held as i64).encode(f)?;
        let f = enc.encode_descriptor(
            "ferry_ledger_pending_transfers",
            "Pending ledger transfers, holds of paid jobs included (cluster-wide)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        ConstGauge::new(scrape.ledger_pending as i64).encode(f)?;
        let f = enc.encode_descriptor(
            "ferry_ledger_writes_refused",
            "1 while this node refuses ledger writes (balances disagree with their chain)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        ConstGauge::new(i64::from(crate::api::ledger::WRITES_REFUSED.load(Ordering::Relaxed))).encode(f)?;
        let mut f = enc.encode_descriptor(
            "ferry_convoy_limit_changes",
            "Adaptive convoy limit moves by reason (this node's commits)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (reason, n) in ferry_store::metrics::limit_changes() {
            ConstCounter::new(n).encode(f.encode_family(&[("reason", reason.as_str())])?)?;
        }
        let mut f = enc.encode_descriptor(
            "ferry_dlq_jobs",
            "Dead jobs (the dead-letter queue) per queue",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for q in &scrape.queues {
            let dead = q.counts.get(&ferry_core::JobState::Dead).copied().unwrap_or(0);
            ConstGauge::new(dead as i64).encode(f.encode_family(&[("queue", q.queue.as_str())])?)?;
        }
        let mut f = enc.encode_descriptor(
            "ferry_queue_oldest_ready_age_seconds",
            "Age of the oldest ready job per queue (0 when none is ready)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for q in &scrape.queues {
            let age = q.oldest_ready_age_ms.unwrap_or(0).max(0) as f64 / 1000.0;
            ConstGauge::new(age).encode(f.encode_family(&[("queue", q.queue.as_str())])?)?;
        }
        let mut f = enc.encode_descriptor(
            "ferry_db_size_bytes",
            "Database size: file and WAL (SQLite) or ferry's tables with indexes (PostgreSQL)",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (file, bytes) in &scrape.sizes {
            ConstGauge::new(*bytes as i64).encode(f.encode_family(&[("file", *file)])?)?;
        }
        if let Some((free, total)) = scrape.disk {
            gauge(
                &mut enc,
                "ferry_disk_free_bytes",
                "Free bytes on the data directory's filesystem",
                free as i64,
            )?;
            gauge(
                &mut enc,
                "ferry_disk_total_bytes",
                "Size of the data directory's filesystem",
                total as i64,
            )?;
        }
        drop(scrape);
        let c = ConstCounter::new(0u64);
        let mut f = enc.encode_descriptor(
            "ferry_store_writes",
            "Store calls that write, by operation and status",
            None,
            c.metric_type(),
        )?;
        for (op, [ok, err]) in m.writes.snapshot() {
            ConstCounter::new(ok).encode(f.encode_family(&[("op", op.as_str()), ("status", "ok")])?)?;
            ConstCounter::new(err).encode(f.encode_family(&[("op", op.as_str()), ("status", "error")])?)?;
        }
        histogram(
            &mut enc,
            "ferry_store_write_duration_seconds",
            "Latency of writing store calls, queueing included",
            &m.write_seconds.snapshot(),
        )?;
        histogram(
            &mut enc,
            "ferry_store_batch_size",
            "Commands per committed transaction (group commit)",
            &m.batch_ops.snapshot(),
        )?;
        counter(
            &mut enc,
            "ferry_store_busy_waits",
            "Writes that waited for the writer or a connection",
            m.busy_waits.load(Ordering::Relaxed),
        )?;
        counter_f(
            &mut enc,
            "ferry_store_busy_wait_seconds",
            "Time writes spent waiting for the writer or a connection",
            m.busy_wait_us.load(Ordering::Relaxed) as f64 / 1e6,
        )?;
        counter_f(
            &mut enc,
            "ferry_store_writer_busy_seconds",
            "Time writers spent inside transactions (summed over writers)",
            m.busy_us.load(Ordering::Relaxed) as f64 / 1e6,
        )?;
        gauge(&mut enc, "ferry_store_writers", "Writers that can work at once", i64::from(m.writers))?;
        histogram(
            &mut enc,
            "ferry_job_wait_seconds",
            "Enqueue (or due time) to start of a job",
            &m.job_wait_seconds.snapshot(),
        )?;
        histogram(
            &mut enc,
            "ferry_job_run_seconds",
            "Start to completion of a job",
            &m.job_run_seconds.snapshot(),
        )?;
        histogram(
            &mut enc,
            "ferry_message_wait_seconds",
            "Send (or broadcast) to first receive of a message",
            &m.message_wait_seconds.snapshot(),
        )?;
        let c = ConstCounter::new(m.stale_leases.load(Ordering::Relaxed));
        let mut f = enc.encode_descriptor(
            "ferry_conflicts",
            "Writes refused because another write came first: a stale lease (fencing), an item's version, \
             an item held by another agent, a message receipt delivered again",
            None,
            c.metric_type(),
        )?;
        c.encode(f.encode_family(&[("kind", "stale_lease")])?)?;
        for (i, kind) in CONFLICT_KINDS.iter().enumerate() {
            ConstCounter::new(self.conflicts[i].load(Ordering::Relaxed))
                .encode(f.encode_family(&[("kind", *kind)])?)?;
        }
        let c = ConstCounter::new(0u64);
        let mut f = enc.encode_descriptor(
            "ferry_store_write_faults",
            "Failed store writes by what the database said: disk_full, read_only, io_error (the \
             storage itself), busy (a lock or writer past its timeout), unreachable, other",
            None,
            c.metric_type(),
        )?;
        for (i, fault) in ferry_core::StorageFault::ALL.iter().enumerate() {
            ConstCounter::new(m.write_faults[i].load(Ordering::Relaxed))
                .encode(f.encode_family(&[("fault", fault.as_str())])?)?;
        }
        let (in_use, max) = self.store.connections();
        gauge(&mut enc, "ferry_db_connections_in_use", "Database connections in use", in_use as i64)?;
        gauge(&mut enc, "ferry_db_connections_max", "Database connections there can be", max as i64)?;
        Ok(())
    }
}

struct ProtectionCollector(Arc<Protection>);

struct HttpCollector(Arc<HttpMetrics>);

impl std::fmt::Debug for HttpCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpCollector")
    }
}

/// Encodes a histogram snapshot under `name` (in the family opened by the caller).
pub fn encode_histogram(
    m: &mut prometheus_client::encoding::MetricEncoder<'_>,
    h: &ferry_core::measure::HistogramSnapshot,
) -> Result<(), std::fmt::Error> {
    // prometheus-client accumulates the per-bucket counts itself, and writes the bound
    // f64::MAX as +Inf.
    let buckets: Vec<(f64, u64)> = h
        .counts
        .iter()
        .enumerate()
        .map(|(i, c)| (h.bounds.get(i).copied().unwrap_or(f64::MAX), *c))
        .collect();
    m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(h.sum, h.count(), &buckets, None)
}

impl prometheus_client::collector::Collector for HttpCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let http = &self.0;
        let c = ConstCounter::new(0u64);
        let mut m = enc.encode_descriptor(
            "ferry_http_requests",
            "HTTP requests by route and status",
            None,
            c.metric_type(),
        )?;
        for (key, [n]) in http.requests.snapshot() {
            let mut parts = key.splitn(3, ' ');
            let (method, route, status) =
                (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            ConstCounter::new(n).encode(m.encode_family(&[
                ("method", method),
                ("route", route),
                ("status", status),
            ])?)?;
        }
        let mut m = enc.encode_descriptor(
            "ferry_http_request_duration_seconds",
            "HTTP request duration by route",
            None,
            prometheus_client::metrics::MetricType::Histogram,
        )?;
        for (key, h) in http.durations() {
            let (method, route) = key.split_once(' ').unwrap_or(("", &key));
            let labels = [("method", method), ("route", route)];
            let mut f = m.encode_family(&labels)?;
            encode_histogram(&mut f, &h)?;
        }
        let g = ConstGauge::new(http.in_flight.load(Ordering::Relaxed));
        g.encode(enc.encode_descriptor(
            "ferry_http_requests_in_flight",
            "HTTP requests being served (connections in use)",
            None,
            g.metric_type(),
        )?)?;
        Ok(())
    }
}

impl std::fmt::Debug for ProtectionCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProtectionCollector")
    }
}

impl prometheus_client::collector::Collector for ProtectionCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let p = &self.0;
        let rejected = ConstCounter::new(0u64);
        let mut m = enc.encode_descriptor(
            "ferry_rejections",
            "Requests refused by protection, by reason",
            None,
            rejected.metric_type(),
        )?;
        for (i, reason) in REJECTION_REASONS.iter().enumerate() {
            let c = ConstCounter::new(p.rejected[i].load(Ordering::Relaxed));
            c.encode(m.encode_family(&[("reason", *reason)])?)?;
        }
        // The ledger's refusals, by `details.reason`.
        for (i, reason) in ferry_core::ledger::Reason::ALL.iter().enumerate() {
            let c = ConstCounter::new(crate::api::ledger::REFUSALS[i].load(Ordering::Relaxed));
            c.encode(m.encode_family(&[("reason", reason.as_str())])?)?;
        }
        let state = p.breaker.state();
        let g = ConstGauge::new(0i64);
        let mut m = enc.encode_descriptor(
            "ferry_circuit_state",
            "Circuit breaker around the database: 1 for the current state",
            None,
            g.metric_type(),
        )?;
        for s in [BreakerState::Closed, BreakerState::HalfOpen, BreakerState::Open] {
            ConstGauge::new(i64::from(s == state)).encode(m.encode_family(&[("state", s.as_str())])?)?;
        }
        let opened = ConstCounter::new(p.breaker.opened_total.load(Ordering::Relaxed));
        opened.encode(enc.encode_descriptor(
            "ferry_circuit_opened",
            "Times the circuit breaker opened",
            None,
            opened.metric_type(),
        )?)?;
        let pending = ConstGauge::new(p.pending_writes() as i64);
        pending.encode(enc.encode_descriptor(
            "ferry_pending_writes",
            "Job writes admitted and not yet answered by the store",
            None,
            pending.metric_type(),
        )?)?;
        Ok(())
    }
}

impl Metrics {
    /// A registry with this node's collectors.
    pub fn new(
        protection: Arc<Protection>,
        http: Arc<HttpMetrics>,
        store: Arc<dyn Store>,
        sqlite_path: Option<PathBuf>,
    ) -> Metrics {
        let mut registry = Registry::default();
        let scrape = Arc::new(Mutex::new(Scrape::default()));
        let conflicts: Arc<[std::sync::atomic::AtomicU64; CONFLICT_KINDS.len()]> = Arc::default();
        registry.register_collector(Box::new(StoreCollector {
            store: store.clone(),
            scrape: scrape.clone(),
            conflicts: conflicts.clone(),
        }));
        registry.register_collector(Box::new(ProtectionCollector(protection)));
        registry.register_collector(Box::new(HttpCollector(http)));
        let memory = MemoryMetrics {
            search_seconds: Family::new_with_constructor(search_histogram),
            searches: Family::default(),
            mismatches: Gauge::default(),
        };
        registry.register(
            "ferry_memory_search_duration_seconds",
            "Memory searches by how they were served",
            memory.search_seconds.clone(),
        );
        registry.register(
            "ferry_memory_searches",
            "Memory searches by the level that served them",
            memory.searches.clone(),
        );
        registry.register(
            "ferry_memory_reconcile_mismatches",
            "Derived memory rows that differed from their episodes at the last reconcile",
            memory.mismatches.clone(),
        );
        let mcp = McpMetrics {
            calls: Family::default(),
            seconds: Family::new_with_constructor(search_histogram),
            sessions: Gauge::default(),
        };
        registry.register(
            "ferry_mcp_tool_calls",
            "MCP tool calls by tool and outcome (`ok` or the error code)",
            mcp.calls.clone(),
        );
        registry.register(
            "ferry_mcp_tool_call_duration_seconds",
            "MCP tool call durations by tool",
            mcp.seconds.clone(),
        );
        registry.register(
            "ferry_mcp_sessions",
            "MCP handshake sessions alive on this node",
            mcp.sessions.clone(),
        );
        Metrics { registry, conflicts, store, scrape, sqlite_path, memory, mcp }
    }

    /// Records one MCP tool call.
    pub fn mcp_call(&self, tool: &str, outcome: &str, seconds: f64) {
        let labels = vec![("tool".into(), tool.into()), ("outcome".into(), outcome.into())];
        self.mcp.calls.get_or_create(&labels).inc();
        self.mcp.seconds.get_or_create(&vec![("tool".into(), tool.into())]).observe(seconds);
    }

    /// Sets the number of MCP handshake sessions alive.
    pub fn mcp_sessions(&self, n: usize) {
        self.mcp.sessions.set(n as i64);
    }

    /// Records one memory search.
    pub fn memory_search(&self, served_by: &str, level: &str, seconds: f64) {
        self.memory
            .search_seconds
            .get_or_create(&vec![("served_by".into(), served_by.into())])
            .observe(seconds);
        self.memory.searches.get_or_create(&vec![("level".into(), level.into())]).inc();
    }

    /// Records the mismatches the last reconcile found (0 after a repair).
    pub fn memory_mismatches(&self, n: u64) {
        self.memory.mismatches.set(n as i64);
    }

    /// Counts one conflict of `kind` (one of [`CONFLICT_KINDS`]).
    pub fn conflict(&self, kind: &str) {
        if let Some(i) = CONFLICT_KINDS.iter().position(|k| *k == kind) {
            self.conflicts[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Database sizes: SQLite's file and WAL, or PostgreSQL's tables.
    pub async fn sizes(&self) -> Vec<(&'static str, u64)> {
        match &self.sqlite_path {
            Some(p) => {
                let len = |p: &std::path::Path| std::fs::metadata(p).map_or(0, |m| m.len());
                let mut wal = p.as_os_str().to_owned();
                wal.push("-wal");
                vec![("db", len(p)), ("wal", len(std::path::Path::new(&wal)))]
            }
            None => self.store.storage_bytes().await.map(|b| vec![("tables", b)]).unwrap_or_default(),
        }
    }

    /// Free and total bytes of the filesystem holding the SQLite database (None on PostgreSQL).
    pub fn disk_space(&self) -> Option<(u64, u64)> {
        self.sqlite_path.as_deref().and_then(disk_space)
    }

    /// The text exposition (reads queue counts and database sizes first).
    pub async fn render(&self) -> String {
        let queues = self.store.queue_stats().await.unwrap_or_default();
        let sizes = self.sizes().await;
        let disk = self.disk_space();
        let items = self.store.item_counts().await.unwrap_or_default();
        let inbox = self.store.message_counts().await.unwrap_or_default();
        let convoys = self.store.convoy_gauges().await.unwrap_or_default();
        let ledger_pending = self.store.pending_transfers().await.unwrap_or_default();
        *self.scrape.lock().expect("scrape lock") =
            Scrape { queues, sizes, disk, items, inbox, convoys, ledger_pending };
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("metrics encode to a String");
        to_prometheus_text(&out)
    }
}
