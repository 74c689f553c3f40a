//! Key figures over time windows (`GET /v1/stats`, `ferry stats`, and the advisor's input):
//! every `sample_ms` a sampler copies the node's cumulative counters and histograms; a window
//! is the difference between the newest sample and the one a window-length earlier (or the
//! oldest kept, with the seconds actually covered reported).

use crate::AppState;
use ferry_core::measure::HistogramSnapshot;
use ferry_core::wire::{Gauges, WindowStats};
use ferry_core::{JobState, StorageFault};
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// The store ops the advisor's checkpoint rules count (LangGraph's puts and put_writes).
pub const CHECKPOINT_WRITE_OPS: [&str; 2] = ["checkpoint.put", "checkpoint.put_writes"];

/// Cumulative values at one moment.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    jobs: [u64; 8],
    writes_ok: u64,
    writes_err: u64,
    checkpoint_writes: [u64; 2],
    write_latency: HistogramSnapshot,
    api_latency: HistogramSnapshot,
    http_total: u64,
    http_5xx: u64,
    job_wait: HistogramSnapshot,
    busy_us: u64,
    busy_waits: u64,
    rejections: u64,
    dlq: u64,
    write_faults: [u64; StorageFault::ALL.len()],
}

/// The node's samples and the hosts its claims came from.
pub struct Stats {
    samples: Mutex<VecDeque<Sample>>,
    sample_every: Duration,
    keep: usize,
    claim_hosts: Mutex<HashMap<IpAddr, Instant>>,
}

impl Stats {
    /// Samples every `sample_ms`, keeping `keep_ms` of history.
    pub fn new(sample_ms: u64, keep_ms: u64) -> Stats {
        let sample_ms = sample_ms.max(10);
        Stats {
            samples: Mutex::new(VecDeque::new()),
            sample_every: Duration::from_millis(sample_ms),
            keep: (keep_ms / sample_ms) as usize + 2,
            claim_hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Notes the host a claim came from (bounded: at most 10,000 hosts remembered).
    pub fn claim_from(&self, ip: IpAddr) {
        let mut g = self.claim_hosts.lock().expect("hosts lock");
        if g.len() < 10_000 || g.contains_key(&ip) {
            g.insert(ip, Instant::now());
        }
    }

    fn hosts_since(&self, since: Instant) -> u64 {
        let mut g = self.claim_hosts.lock().expect("hosts lock");
        g.retain(|_, t| t.elapsed() < Duration::from_secs(2 * 3600));
        g.values().filter(|t| **t >= since).count() as u64
    }

    async fn take(st: &AppState) -> Sample {
        let m = st.store.metrics();
        let [writes_ok, writes_err] = m.writes.totals();
        let mut checkpoint_writes = [0u64; 2];
        for (op, [ok, err]) in m.writes.snapshot() {
            if CHECKPOINT_WRITE_OPS.contains(&op.as_str()) {
                checkpoint_writes[0] += ok;
                checkpoint_writes[1] += err;
            }
        }
        let (mut http_total, mut http_5xx) = (0, 0);
        for (key, [n]) in st.http.requests.snapshot() {
            http_total += n;
            if key.rsplit(' ').next().is_some_and(|s| s.starts_with('5')) {
                http_5xx += n;
            }
        }
        let dlq = st
            .store
            .queue_stats()
            .await
            .map(|qs| qs.iter().map(|q| q.counts.get(&JobState::Dead).copied().unwrap_or(0)).sum())
            .unwrap_or(0);
        Sample {
            at: Instant::now(),
            jobs: m.jobs.totals(),
            writes_ok,
            writes_err,
            checkpoint_writes,
            write_latency: m.write_seconds.snapshot(),
            api_latency: st.http.api_latency(),
            http_total,
            http_5xx,
            job_wait: m.job_wait_seconds.snapshot(),
            busy_us: m.busy_us.load(Relaxed),
            busy_waits: m.busy_waits.load(Relaxed),
            rejections: st.protection.rejected.iter().map(|r| r.load(Relaxed)).sum(),
            dlq,
            write_faults: std::array::from_fn(|i| m.write_faults[i].load(Relaxed)),
        }
    }

    /// Takes a sample now.
    pub async fn sample(&self, st: &AppState) {
        let s = Stats::take(st).await;
        let mut g = self.samples.lock().expect("samples lock");
        g.push_back(s);
        while g.len() > self.keep {
            g.pop_front();
        }
    }

    /// Samples every `sample_ms` until `stop`.
    pub async fn run(self: std::sync::Arc<Self>, st: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            self.sample(&st).await;
            tokio::select! {
                _ = tokio::time::sleep(self.sample_every) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// The figures over the last `window` (fresh sample included), writers counted by `writers`.
    pub async fn window(&self, st: &AppState, window: Duration) -> WindowStats {
        let now = Stats::take(st).await;
        let start = {
            let g = self.samples.lock().expect("samples lock");
            let cutoff = now.at.checked_sub(window);
            g.iter().find(|s| cutoff.is_none_or(|c| s.at >= c)).or_else(|| g.back()).cloned()
        };
        let Some(start) = start else { return WindowStats::default() };
        let secs = now.at.duration_since(start.at).as_secs_f64();
        let writers = f64::from(st.store.metrics().writers);
        let hosts = self.hosts_since(start.at);
        diff(&start, &now, secs, writers, hosts)
    }
}

fn diff(a: &Sample, b: &Sample, secs: f64, writers: f64, claim_hosts: u64) -> WindowStats {
    let per = |x: u64, y: u64| if secs > 0.0 { y.saturating_sub(x) as f64 / secs } else { 0.0 };
    let share = |num: u64, den: u64| if den > 0 { num as f64 / den as f64 } else { 0.0 };
    let ms = |v: Option<f64>| v.map(|s| (s * 1000.0 * 1000.0).round() / 1000.0);
    let writes = (b.writes_ok + b.writes_err).saturating_sub(a.writes_ok + a.writes_err);
    let write_errors = b.writes_err.saturating_sub(a.writes_err);
    let requests = b.http_total.saturating_sub(a.http_total);
    let api = b.api_latency.since(&a.api_latency);
    let wait = b.job_wait.since(&a.job_wait);
    WindowStats {
        seconds: (secs * 1000.0).round() / 1000.0,
        enqueued_per_sec: per(a.jobs[0], b.jobs[0]),
        started_per_sec: per(a.jobs[1], b.jobs[1]),
        completed_per_sec: per(a.jobs[2], b.jobs[2]),
        failed_per_sec: per(a.jobs[3], b.jobs[3]),
        dead_per_sec: per(a.jobs[5], b.jobs[5]),
        writes_per_sec: per(0, writes),
        write_error_rate: share(write_errors, writes),
        write_p99_ms: ms(b.write_latency.since(&a.write_latency).quantile(0.99)),
        requests_per_sec: per(0, requests),
        http_error_rate: share(b.http_5xx.saturating_sub(a.http_5xx), requests),
        latency_p50_ms: ms(api.quantile(0.5)),
        latency_p95_ms: ms(api.quantile(0.95)),
        latency_p99_ms: ms(api.quantile(0.99)),
        job_wait_p50_ms: ms(wait.quantile(0.5)),
        job_wait_p99_ms: ms(wait.quantile(0.99)),
        writer_utilization: if secs > 0.0 {
            (b.busy_us.saturating_sub(a.busy_us) as f64 / 1e6 / secs / writers).min(1.0)
        } else {
            0.0
        },
        busy_wait_share: share(b.busy_waits.saturating_sub(a.busy_waits), writes),
        rejections_per_sec: per(a.rejections, b.rejections),
        dlq_growth: b.dlq as i64 - a.dlq as i64,
        claim_hosts,
        checkpoint_writes_per_sec: per(
            a.checkpoint_writes[0] + a.checkpoint_writes[1],
            b.checkpoint_writes[0] + b.checkpoint_writes[1],
        ),
        write_fault_rates: StorageFault::ALL
            .iter()
            .enumerate()
            .map(|(i, f)| (f.as_str().to_string(), b.write_faults[i].saturating_sub(a.write_faults[i])))
            .filter(|(_, n)| *n > 0)
            .map(|(f, n)| (f, share(n, writes)))
            .collect(),
        checkpoint_write_error_rate: share(
            b.checkpoint_writes[1].saturating_sub(a.checkpoint_writes[1]),
            (b.checkpoint_writes[0] + b.checkpoint_writes[1])
                .saturating_sub(a.checkpoint_writes[0] + a.checkpoint_writes[1]),
        ),
    }
}

/// Current readings from the store.
pub async fn gauges(st: &AppState) -> Gauges {
    let mut g = Gauges::default();
    if let Ok(qs) = st.store.queue_stats().await {
        for q in qs {
            let c = |s| q.counts.get(&s).copied().unwrap_or(0);
            g.backlog += c(JobState::Ready) + c(JobState::Scheduled);
            g.running += c(JobState::Running);
            g.dlq += c(JobState::Dead);
            let age_s = q.oldest_ready_age_ms.unwrap_or(0) as f64 / 1000.0;
            if age_s > g.oldest_ready_age_s {
                g.oldest_ready_age_s = age_s;
                g.oldest_ready_queue = Some(q.queue.clone());
            }
        }
    }
    g.db_bytes = st.metrics.sizes().await.iter().map(|(_, b)| b).sum();
    g.hosts = st.store.list_hosts().await.map_or(0, |h| h.len() as u64);
    if let Some((free, total)) = st.metrics.disk_space() {
        (g.disk_free_bytes, g.disk_total_bytes) = (Some(free), Some(total));
    }
    g.workers_active = st
        .store
        .list_workers()
        .await
        .map_or(0, |w| w.iter().filter(|w| w.status == ferry_core::WorkerStatus::Active).count() as u64);
    g
}

/// The standard windows.
pub const WINDOWS: [(&str, Duration); 3] =
    [("1m", Duration::from_secs(60)), ("5m", Duration::from_secs(300)), ("1h", Duration::from_secs(3600))];
