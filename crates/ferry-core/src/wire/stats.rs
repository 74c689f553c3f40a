//! Bodies of `GET /v1/stats`: a node's key figures over time windows, and its current
//! readings (also the scaling advisor's input).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Figures over one window.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct WindowStats {
    /// Seconds the window actually covers (less than asked right after start).
    pub seconds: f64,
    /// Jobs enqueued per second.
    pub enqueued_per_sec: f64,
    /// Jobs started per second.
    pub started_per_sec: f64,
    /// Jobs completed per second.
    pub completed_per_sec: f64,
    /// Failed attempts per second.
    pub failed_per_sec: f64,
    /// Jobs dead per second.
    pub dead_per_sec: f64,
    /// Store writes per second.
    pub writes_per_sec: f64,
    /// Share of store writes that failed (0..1).
    pub write_error_rate: f64,
    /// Store write latency p99, ms.
    pub write_p99_ms: Option<f64>,
    /// HTTP requests per second.
    pub requests_per_sec: f64,
    /// Share of HTTP answers that were 5xx (0..1).
    pub http_error_rate: f64,
    /// API latency (long-polls and streams excluded) p50, ms.
    pub latency_p50_ms: Option<f64>,
    /// API latency p95, ms.
    pub latency_p95_ms: Option<f64>,
    /// API latency p99, ms.
    pub latency_p99_ms: Option<f64>,
    /// Enqueue → start p50, ms.
    pub job_wait_p50_ms: Option<f64>,
    /// Enqueue → start p99, ms.
    pub job_wait_p99_ms: Option<f64>,
    /// Share of time the writers were busy (0..1).
    pub writer_utilization: f64,
    /// Writes that waited for the writer or a connection, as a share of writes (0..1).
    pub busy_wait_share: f64,
    /// Requests refused by protection per second.
    pub rejections_per_sec: f64,
    /// Growth of the dead-letter queue over the window, in jobs.
    pub dlq_growth: i64,
    /// Distinct hosts that claimed jobs from this node in the window.
    pub claim_hosts: u64,
    /// Checkpoint puts and put_writes per second (`checkpoint.put|checkpoint.put_writes`).
    #[serde(default)]
    pub checkpoint_writes_per_sec: f64,
    /// Share of those that failed in storage (0..1).
    #[serde(default)]
    pub checkpoint_write_error_rate: f64,
    /// Share of store writes that failed, by what the database said (`disk_full`,
    /// `read_only`, `io_error`, `busy`, `unreachable`, `other`; only those seen): the sum is
    /// `write_error_rate`.
    #[serde(default)]
    pub write_fault_rates: std::collections::BTreeMap<String, f64>,
}

/// Current readings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Gauges {
    /// Ready + scheduled jobs.
    pub backlog: u64,
    /// Running jobs.
    pub running: u64,
    /// Dead jobs.
    pub dlq: u64,
    /// Age of the oldest ready job, seconds.
    pub oldest_ready_age_s: f64,
    /// Database bytes (file + WAL, or tables).
    pub db_bytes: u64,
    /// Registered hosts.
    pub hosts: u64,
    /// Free bytes on the filesystem holding the database (SQLite; absent on PostgreSQL).
    #[serde(default)]
    pub disk_free_bytes: Option<u64>,
    /// Size of that filesystem, bytes.
    #[serde(default)]
    pub disk_total_bytes: Option<u64>,
    /// Workers heard from and not lost (the registry behind `GET /v1/workers`).
    #[serde(default)]
    pub workers_active: u64,
    /// The queue holding the oldest ready job.
    #[serde(default)]
    pub oldest_ready_queue: Option<String>,
}

/// `GET /v1/stats` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatsResponse {
    /// Storage backend.
    pub backend: String,
    /// `1m`, `5m`, `1h`.
    pub windows: std::collections::BTreeMap<String, WindowStats>,
    /// Readings now.
    pub now: Gauges,
}
