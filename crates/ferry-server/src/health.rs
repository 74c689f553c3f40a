//! Health of what ferry coordinates: the worker registry (fed by claims and heartbeats,
//! flushed to the store every second; silent workers are marked lost and their leases
//! released) and registered hosts, probed concurrently with a per-probe timeout, with
//! flapping damped (`host_down_after` failures to go down, `host_up_after` successes to come up).

use ferry_core::HostRecord;
use ferry_core::wire::{HostStatus, HostView, ProbeResult};
use ferry_store::Store;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Worker and host health settings (`[health]` in `ferry.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// A worker silent this long is marked lost and its leases are released.
    pub worker_timeout_ms: u64,
    /// Time between two probe rounds of the registered hosts.
    pub host_probe_interval_ms: u64,
    /// Timeout of one probe.
    pub host_probe_timeout_ms: u64,
    /// Consecutive failed probes that mark a host down.
    pub host_down_after: u32,
    /// Consecutive good probes that mark a host up.
    pub host_up_after: u32,
    /// Probe results kept per host.
    pub host_history: usize,
    /// Host names (or IP addresses) a registered `health_url` may point at; empty allows any.
    /// Registering a host makes this server send it requests, so a server reachable by
    /// untrusted clients should list the hosts it may probe.
    pub allowed_hosts: Vec<String>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            worker_timeout_ms: 60_000,
            host_probe_interval_ms: 10_000,
            host_probe_timeout_ms: 2_000,
            host_down_after: 3,
            host_up_after: 2,
            host_history: 20,
            allowed_hosts: Vec::new(),
        }
    }
}

/// Workers heard from since the last flush (name → epoch ms), bounded.
pub struct WorkerSightings {
    seen: Mutex<HashMap<String, i64>>,
    max: usize,
}

impl WorkerSightings {
    /// Keeps at most `max` names between flushes; past it, sightings wait for the next flush
    /// of a name already held (a flood of names cannot grow memory).
    pub fn new(max: usize) -> WorkerSightings {
        WorkerSightings { seen: Mutex::new(HashMap::new()), max: max.max(1) }
    }

    /// Notes that `worker` was heard from at `now_ms`.
    pub fn note(&self, worker: &str, now_ms: i64) {
        let mut g = self.seen.lock().expect("sightings lock");
        if let Some(t) = g.get_mut(worker) {
            *t = (*t).max(now_ms);
        } else if g.len() < self.max {
            g.insert(worker.to_string(), now_ms);
        }
    }

    fn drain(&self) -> Vec<(String, i64)> {
        std::mem::take(&mut *self.seen.lock().expect("sightings lock")).into_iter().collect()
    }

    /// Flushes sightings every second and releases lost workers' leases, until `stop`.
    pub async fn run(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        cfg: HealthConfig,
        mut stop: watch::Receiver<bool>,
    ) {
        let timeout_ms = cfg.worker_timeout_ms.max(1) as i64;
        let check_every = Duration::from_millis((cfg.worker_timeout_ms / 4).clamp(10, 1_000));
        let mut last_flush = Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(check_every) => {}
                _ = stop.changed() => {
                    let _ = store.touch_workers(self.drain()).await;
                    return;
                }
            }
            if last_flush.elapsed() >= Duration::from_millis(1_000).min(check_every * 2) {
                last_flush = Instant::now();
                let seen = self.drain();
                if !seen.is_empty()
                    && let Err(e) = store.touch_workers(seen.clone()).await
                {
                    tracing::warn!(error = %e.message, "cannot record worker sightings");
                    for (w, t) in seen {
                        self.note(&w, t);
                    }
                    continue;
                }
            }
            let now = store.clock().now_ms();
            match store.release_lost_workers(now - timeout_ms, 1_000).await {
                Ok(lost) => report_lost(lost, timeout_ms),
                Err(e) => tracing::warn!(error = %e.message, "cannot check for lost workers"),
            }
        }
    }
}

/// Warns of the silent workers that held leases (their jobs were taken back); workers that
/// held none only went quiet, which idle workers and one-off claims (a `curl`) do, so they are
/// noted at debug level.
fn report_lost(lost: Vec<ferry_store::LostWorker>, timeout_ms: i64) {
    let (holding, idle): (Vec<_>, Vec<_>) = lost.into_iter().partition(|w| w.leases_released > 0);
    if !holding.is_empty() {
        let leases: u64 = holding.iter().map(|w| w.leases_released).sum();
        let names: Vec<&str> = holding.iter().map(|w| w.name.as_str()).collect();
        tracing::warn!(workers = ?names, leases, "workers lost: silent past {timeout_ms} ms, leases released");
    }
    if !idle.is_empty() {
        let names: Vec<&str> = idle.iter().map(|w| w.name.as_str()).collect();
        tracing::debug!(workers = ?names, "idle workers silent past {timeout_ms} ms marked lost (they held no lease)");
    }
}

#[derive(Default)]
struct HostState {
    status: Option<HostStatus>,
    fails: u32,
    oks: u32,
    changed_at_ms: Option<i64>,
    history: VecDeque<ProbeResult>,
}

/// This node's probe results for the registered hosts.
pub struct HostProber {
    cfg: HealthConfig,
    http: reqwest::Client,
    state: Mutex<HashMap<String, HostState>>,
    /// Woken when a host is registered, so its first probe does not wait a full interval.
    pub wake: tokio::sync::Notify,
}

impl HostProber {
    /// Whether `host` may be probed (`[health] allowed_hosts`, empty = any).
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        self.cfg.allowed_hosts.is_empty()
            || self.cfg.allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(host))
    }

    /// A prober with the configured timeout.
    pub fn new(cfg: HealthConfig) -> HostProber {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.host_probe_timeout_ms.max(1)))
            .pool_max_idle_per_host(1)
            .build()
            .expect("probe HTTP client");
        HostProber { cfg, http, state: Mutex::new(HashMap::new()), wake: tokio::sync::Notify::new() }
    }

    async fn probe(&self, url: &str, at_ms: i64) -> ProbeResult {
        let started = Instant::now();
        let res = self.http.get(url).send().await;
        let latency_ms = started.elapsed().as_millis() as u64;
        match res {
            Ok(r) if r.status().is_success() => {
                ProbeResult { at_ms, ok: true, latency_ms, status: Some(r.status().as_u16()), error: None }
            }
            Ok(r) => ProbeResult {
                at_ms,
                ok: false,
                latency_ms,
                status: Some(r.status().as_u16()),
                error: Some(format!("status {}", r.status().as_u16())),
            },
            Err(e) => {
                let error = if e.is_timeout() {
                    format!("timed out after {} ms", self.cfg.host_probe_timeout_ms)
                } else {
                    format!("unreachable: {e}")
                };
                ProbeResult { at_ms, ok: false, latency_ms, status: None, error: Some(error) }
            }
        }
    }

    fn record(&self, name: &str, r: ProbeResult) {
        let mut g = self.state.lock().expect("hosts lock");
        let h = g.entry(name.to_string()).or_default();
        if r.ok {
            h.oks += 1;
            h.fails = 0;
        } else {
            h.fails += 1;
            h.oks = 0;
        }
        let next = if h.oks >= self.cfg.host_up_after.max(1) {
            Some(HostStatus::Up)
        } else if h.fails >= self.cfg.host_down_after.max(1) {
            Some(HostStatus::Down)
        } else {
            None
        };
        if let Some(next) = next
            && h.status != Some(next)
        {
            tracing::info!(host = name, status = ?next, "host status changed");
            h.status = Some(next);
            h.changed_at_ms = Some(r.at_ms);
        }
        h.history.push_back(r);
        while h.history.len() > self.cfg.host_history.max(1) {
            h.history.pop_front();
        }
    }

    /// Probes every host at once; a round takes about one timeout however many hosts there are.
    pub async fn round(&self, hosts: &[HostRecord], now_ms: i64) {
        let probes =
            hosts.iter().map(|h| async move { (h.name.clone(), self.probe(&h.health_url, now_ms).await) });
        for (name, r) in futures_util::future::join_all(probes).await {
            self.record(&name, r);
        }
        let names: std::collections::HashSet<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
        self.state.lock().expect("hosts lock").retain(|n, _| names.contains(n.as_str()));
    }

    /// The view of `hosts` with their probe state.
    pub fn view(&self, hosts: Vec<HostRecord>) -> Vec<HostView> {
        let g = self.state.lock().expect("hosts lock");
        hosts
            .into_iter()
            .map(|h| {
                let s = g.get(&h.name);
                HostView {
                    status: s.and_then(|s| s.status).unwrap_or(HostStatus::Unknown),
                    consecutive_failures: s.map_or(0, |s| s.fails),
                    consecutive_successes: s.map_or(0, |s| s.oks),
                    last_probe: s.and_then(|s| s.history.back().cloned()),
                    changed_at_ms: s.and_then(|s| s.changed_at_ms),
                    history: s.map(|s| s.history.iter().cloned().collect()).unwrap_or_default(),
                    name: h.name,
                    health_url: h.health_url,
                }
            })
            .collect()
    }

    /// Probes every `host_probe_interval_ms` (or at once when a host is added) until `stop`.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>, mut stop: watch::Receiver<bool>) {
        let every = Duration::from_millis(self.cfg.host_probe_interval_ms.max(10));
        loop {
            match store.list_hosts().await {
                Ok(hosts) if !hosts.is_empty() => self.round(&hosts, store.clock().now_ms()).await,
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e.message, "cannot list hosts to probe"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = self.wake.notified() => {}
                _ = stop.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(ok: bool) -> ProbeResult {
        ProbeResult { at_ms: 0, ok, latency_ms: 1, status: None, error: None }
    }

    #[test]
    fn flapping_is_damped() {
        let p = HostProber::new(HealthConfig {
            host_down_after: 3,
            host_up_after: 2,
            host_history: 4,
            ..Default::default()
        });
        let host = HostRecord { name: "a".into(), health_url: "http://x".into(), created_at: 0 };
        let status = || p.view(vec![host.clone()])[0].status;
        assert_eq!(status(), HostStatus::Unknown);
        p.record("a", r(true));
        assert_eq!(status(), HostStatus::Unknown);
        p.record("a", r(true));
        assert_eq!(status(), HostStatus::Up);
        for ok in [false, false, true, false, false] {
            p.record("a", r(ok));
            assert_eq!(status(), HostStatus::Up, "fewer than 3 failures in a row keep it up");
        }
        p.record("a", r(false));
        assert_eq!(status(), HostStatus::Down);
        p.record("a", r(true));
        assert_eq!(status(), HostStatus::Down, "one success does not bring it up");
        p.record("a", r(true));
        assert_eq!(status(), HostStatus::Up);
        assert_eq!(p.view(vec![host])[0].history.len(), 4, "history is bounded");
    }
}
