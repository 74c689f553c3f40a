//! Protection of the node and its database: the circuit breaker around storage, backpressure
//! (requests in flight, pending writes, queue depth) and per-client rate limits.
//!
//! Every request passes [`guard`] (see `api/mod.rs`) in this order: the edge checks (origin,
//! URL, media type; `edge.rs`), authentication, scope and queue restriction (`auth.rs`), the
//! body read whole within its time limit, a slot among `max_concurrent_requests`, the client's
//! token bucket, then the breaker. Refusals are cheap and carry `Retry-After`, so an overloaded node keeps
//! answering and its memory stays bounded by the limits, not by the offered load.

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ferry_core::{Error, ErrorCode, Limits, QueueLimits};
use governor::middleware::StateInformationMiddleware;
use governor::{Quota, RateLimiter, clock::Clock as _};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, TryAcquireError};

/// Breaker and rate-limit settings (`[protection]` in `ferry.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtectionConfig {
    /// Requests per second per client (token, else `X-Ferry-Client`, else address); 0 = off.
    pub rate_per_sec: u32,
    /// Burst per client; 0 means equal to `rate_per_sec`.
    pub rate_burst: u32,
    /// Consecutive storage failures that open the breaker.
    pub breaker_failures: u32,
    /// Failure share over `breaker_window_ms` that opens the breaker (with enough requests).
    pub breaker_failure_rate: f64,
    /// Requests a window needs before its failure rate counts.
    pub breaker_min_requests: u32,
    /// Length of the failure-rate window.
    pub breaker_window_ms: u64,
    /// Time the breaker stays open before letting one probe through.
    pub breaker_cooldown_ms: u64,
    /// How often queue depths are re-read for backpressure (at least every 5 s on PostgreSQL,
    /// where counting scans the jobs table).
    pub depth_refresh_ms: u64,
}

impl Default for ProtectionConfig {
    fn default() -> Self {
        ProtectionConfig {
            rate_per_sec: 0,
            rate_burst: 0,
            breaker_failures: 5,
            breaker_failure_rate: 0.5,
            breaker_min_requests: 20,
            breaker_window_ms: 10_000,
            breaker_cooldown_ms: 2_000,
            depth_refresh_ms: 1_000,
        }
    }
}

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests fail fast until the cool-down ends.
    Open,
    /// One probe is let through; its outcome closes or re-opens the breaker.
    HalfOpen,
}

impl BreakerState {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

struct BreakerInner {
    state: BreakerState,
    consecutive: u32,
    window_start: Instant,
    window_total: u32,
    window_failed: u32,
    opened_at: Instant,
    probe_sent_at: Option<Instant>,
}

/// Opens after repeated storage failures so a sick database is not hammered, and closes again
/// after one successful probe.
pub struct Breaker {
    cfg: ProtectionConfig,
    inner: Mutex<BreakerInner>,
    /// Times the breaker opened, for metrics.
    pub opened_total: AtomicU64,
}

/// A request let through the breaker; `probe` when it decides a half-open breaker.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    probe: bool,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(cfg: ProtectionConfig) -> Breaker {
        let now = Instant::now();
        Breaker {
            cfg,
            inner: Mutex::new(BreakerInner {
                state: BreakerState::Closed,
                consecutive: 0,
                window_start: now,
                window_total: 0,
                window_failed: 0,
                opened_at: now,
                probe_sent_at: None,
            }),
            opened_total: AtomicU64::new(0),
        }
    }

    fn cooldown(&self) -> Duration {
        Duration::from_millis(self.cfg.breaker_cooldown_ms)
    }

    /// The state now (an open breaker past its cool-down reports `half_open`).
    pub fn state(&self) -> BreakerState {
        let g = self.inner.lock().expect("breaker lock");
        match g.state {
            BreakerState::Open if g.opened_at.elapsed() >= self.cooldown() => BreakerState::HalfOpen,
            s => s,
        }
    }

    /// Lets a request through, or refuses it fast with 503 `circuit_open`.
    pub fn admit(&self) -> Result<Admission, Error> {
        let mut g = self.inner.lock().expect("breaker lock");
        let now = Instant::now();
        match g.state {
            BreakerState::Closed => Ok(Admission { probe: false }),
            BreakerState::Open | BreakerState::HalfOpen => {
                let cooled = now.duration_since(g.opened_at) >= self.cooldown();
                // A probe that never reported (its request vanished) is replaced after a cool-down.
                let probe_free = g.probe_sent_at.is_none_or(|t| now.duration_since(t) >= self.cooldown());
                if cooled && probe_free {
                    g.state = BreakerState::HalfOpen;
                    g.probe_sent_at = Some(now);
                    return Ok(Admission { probe: true });
                }
                let left = self.cooldown().saturating_sub(now.duration_since(g.opened_at));
                Err(Error::new(
                    ErrorCode::CircuitOpen,
                    format!(
                        "the database failed repeatedly; the circuit is open, retry in {} ms",
                        left.as_millis().max(1)
                    ),
                ))
            }
        }
    }

    /// Records the outcome of an admitted request; `ok` is false for storage failures only.
    pub fn record(&self, adm: Admission, ok: bool) {
        let mut g = self.inner.lock().expect("breaker lock");
        let now = Instant::now();
        if adm.probe || g.state == BreakerState::HalfOpen {
            if adm.probe {
                g.probe_sent_at = None;
            }
            if ok {
                if adm.probe {
                    tracing::info!("circuit closed: the probe succeeded");
                    g.state = BreakerState::Closed;
                    g.consecutive = 0;
                    g.window_start = now;
                    g.window_total = 0;
                    g.window_failed = 0;
                }
            } else {
                g.state = BreakerState::Open;
                g.opened_at = now;
            }
            return;
        }
        if g.state != BreakerState::Closed {
            return; // a request admitted before the breaker opened; the opening stands
        }
        if now.duration_since(g.window_start) >= Duration::from_millis(self.cfg.breaker_window_ms) {
            g.window_start = now;
            g.window_total = 0;
            g.window_failed = 0;
        }
        g.window_total += 1;
        if ok {
            g.consecutive = 0;
            return;
        }
        g.consecutive += 1;
        g.window_failed += 1;
        let rate_trip = g.window_total >= self.cfg.breaker_min_requests
            && f64::from(g.window_failed) / f64::from(g.window_total) > self.cfg.breaker_failure_rate;
        if g.consecutive >= self.cfg.breaker_failures.max(1) || rate_trip {
            tracing::warn!(
                consecutive = g.consecutive,
                window_failed = g.window_failed,
                window_total = g.window_total,
                "circuit opened: storage is failing"
            );
            g.state = BreakerState::Open;
            g.opened_at = now;
            self.opened_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Seconds a refused client should wait.
    pub fn retry_after_secs(&self) -> u64 {
        self.cfg.breaker_cooldown_ms.div_ceil(1000).max(1)
    }
}

/// Is this response a storage failure the breaker should count? Only errors the store raised
/// (`unavailable`, `internal`); refusals by the protection layer itself are not.
fn storage_failed(resp: &Response) -> bool {
    matches!(resp.extensions().get::<ErrorCode>(), Some(ErrorCode::Unavailable | ErrorCode::Internal))
}

type KeyedLimiter = RateLimiter<
    String,
    governor::state::keyed::DefaultKeyedStateStore<String>,
    governor::clock::DefaultClock,
    StateInformationMiddleware,
>;

/// Per-client token buckets (governor), bounded in the number of clients tracked.
pub struct ClientLimiter {
    limiter: KeyedLimiter,
    limit: u32,
    max_keys: usize,
}

impl ClientLimiter {
    fn new(cfg: &ProtectionConfig, max_keys: usize) -> Option<ClientLimiter> {
        let rate = NonZeroU32::new(cfg.rate_per_sec)?;
        let burst = NonZeroU32::new(cfg.rate_burst).unwrap_or(rate);
        let limiter = RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
            .with_middleware::<StateInformationMiddleware>();
        Some(ClientLimiter { limiter, limit: burst.get(), max_keys: max_keys.max(1) })
    }

    /// Takes one token for `key`; on refusal, the wait in seconds.
    fn check(&self, key: &str) -> Result<(u32, u64), u64> {
        let key = if self.limiter.len() >= self.max_keys {
            self.limiter.retain_recent();
            if self.limiter.len() >= self.max_keys { "(overflow)" } else { key }
        } else {
            key
        };
        match self.limiter.check_key(&key.to_string()) {
            Ok(snap) => {
                let remaining = snap.remaining_burst_capacity();
                let per_token = snap.quota().replenish_interval().as_secs_f64();
                let reset = (f64::from(self.limit - remaining.min(self.limit)) * per_token).ceil() as u64;
                Ok((remaining, reset))
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Err(wait.as_secs_f64().ceil().max(1.0) as u64)
            }
        }
    }
}

/// Last known depth of a queue, and what this node added since it was read.
#[derive(Debug, Default)]
struct Depth {
    /// Ready + scheduled jobs as last read from the store.
    stored: u64,
    /// Jobs this node committed since the reading's query started.
    committed: u64,
    /// Jobs admitted whose write has not been answered yet.
    in_flight: u64,
    limit: Option<u64>,
    /// `max_running` or `max_starts_per_sec` is set (long-polls then re-check often).
    flow: bool,
}

type Depths = std::sync::Arc<Mutex<HashMap<String, Depth>>>;

/// Queue-depth backpressure: enqueues that would take a queue past its `max_depth` are
/// refused whole. Depths are re-read every `depth_refresh_ms`; between reads this node adds
/// what it admitted (written or still being written), and a reading keeps what was committed
/// after its query began, so one node is exact (or errs on the safe side by a write racing
/// the reading) and several nodes overshoot by at most what the others admitted within one
/// refresh.
pub struct DepthGate {
    default_max: u64,
    queues: Depths,
}

/// Jobs admitted by [`DepthGate::admit`]: counted as in flight until [`DepthTicket::committed`]
/// moves them to committed, or the ticket drops (the write failed; they never existed).
#[derive(Debug)]
pub struct DepthTicket {
    queues: Depths,
    per_queue: Vec<(String, u64)>,
    committed: bool,
}

impl DepthTicket {
    /// The write committed: the jobs now count as stored until the next reading.
    pub fn committed(mut self) {
        self.committed = true;
    }
}

impl Drop for DepthTicket {
    fn drop(&mut self) {
        let mut g = self.queues.lock().expect("depth lock");
        for (q, n) in &self.per_queue {
            if let Some(d) = g.get_mut(q) {
                d.in_flight = d.in_flight.saturating_sub(*n);
                if self.committed {
                    d.committed += n;
                }
            }
        }
    }
}

impl DepthGate {
    fn new(default_max: u64) -> DepthGate {
        DepthGate { default_max, queues: Default::default() }
    }

    /// Admits `per_queue` new jobs all together, or refuses the whole batch with 429.
    pub fn admit(&self, per_queue: &HashMap<&str, u64>) -> Result<DepthTicket, Error> {
        let mut g = self.queues.lock().expect("depth lock");
        for (q, n) in per_queue {
            let d = g.get(*q);
            let (now, max) = match d {
                Some(d) => (d.stored + d.committed + d.in_flight, d.limit.unwrap_or(self.default_max)),
                None => (0, self.default_max),
            };
            if now + n > max {
                return Err(Error {
                    code: ErrorCode::QueueFull,
                    message: format!(
                        "queue {q} is full: {now} ready or scheduled jobs, {n} more would pass its limit of {max}"
                    ),
                    field: Some("queue".into()),
                    position: None,
                    details: Some(serde_json::json!({"queue": q, "depth": now, "max_depth": max})),
                });
            }
        }
        for (q, n) in per_queue {
            g.entry((*q).to_string()).or_default().in_flight += n;
        }
        let per_queue = per_queue.iter().map(|(q, n)| ((*q).to_string(), *n)).collect();
        Ok(DepthTicket { queues: self.queues.clone(), per_queue, committed: false })
    }

    /// What each queue had committed when a reading's query starts (see [`Self::refresh`]).
    fn mark(&self) -> HashMap<String, u64> {
        self.queues.lock().expect("depth lock").iter().map(|(q, d)| (q.clone(), d.committed)).collect()
    }

    /// Sets one queue's own limits at once (an API change must not wait for a refresh).
    pub fn set_limits(&self, queue: &str, limits: &QueueLimits) {
        let mut g = self.queues.lock().expect("depth lock");
        let d = g.entry(queue.to_string()).or_default();
        d.limit = limits.max_depth;
        d.flow = limits.max_running.is_some() || limits.max_starts_per_sec.is_some();
    }

    /// Whether claims on `queue` are held back by flow limits (as last read).
    pub fn flow_limited(&self, queue: &str) -> bool {
        self.queues.lock().expect("depth lock").get(queue).is_some_and(|d| d.flow)
    }

    /// Replaces the stored depths and limits with a fresh reading whose query began at
    /// `mark`: commits after it stay counted, those before it are in the reading.
    fn refresh(
        &self,
        depths: HashMap<String, u64>,
        limits: HashMap<String, QueueLimits>,
        mark: HashMap<String, u64>,
    ) {
        let mut g = self.queues.lock().expect("depth lock");
        g.retain(|q, d| depths.contains_key(q) || limits.contains_key(q) || d.in_flight > 0);
        for (q, d) in g.iter_mut() {
            d.stored = depths.get(q).copied().unwrap_or(0);
            d.committed = d.committed.saturating_sub(mark.get(q).copied().unwrap_or(0));
            let l = limits.get(q).copied().unwrap_or_default();
            d.limit = l.max_depth;
            d.flow = l.max_running.is_some() || l.max_starts_per_sec.is_some();
        }
        for (q, stored) in depths {
            g.entry(q).or_default().stored = stored;
        }
        for (q, l) in limits {
            let d = g.entry(q).or_default();
            d.limit = l.max_depth;
            d.flow = l.max_running.is_some() || l.max_starts_per_sec.is_some();
        }
    }
}

/// The node's protection state, shared by every request.
pub struct Protection {
    /// The breaker around storage.
    pub breaker: Breaker,
    /// Per-client rate limits, when configured.
    pub limiter: Option<ClientLimiter>,
    /// Queue-depth backpressure.
    pub depth: DepthGate,
    requests: std::sync::Arc<Semaphore>,
    writes: std::sync::Arc<Semaphore>,
    max_writes: usize,
    /// Refusals by reason (`rate_limited`, `queue_full`, `server_saturated`, `circuit_open`).
    pub rejected: [AtomicU64; 4],
    cfg: ProtectionConfig,
}

/// Index of a refusal reason in [`Protection::rejected`].
pub fn rejection_index(code: ErrorCode) -> Option<usize> {
    match code {
        ErrorCode::RateLimited => Some(0),
        ErrorCode::QueueFull => Some(1),
        ErrorCode::ServerSaturated => Some(2),
        ErrorCode::CircuitOpen => Some(3),
        _ => None,
    }
}

/// Names of the refusal reasons, in [`Protection::rejected`] order.
pub const REJECTION_REASONS: [&str; 4] = ["rate_limited", "queue_full", "server_saturated", "circuit_open"];

impl Protection {
    /// Protection as configured.
    pub fn new(cfg: ProtectionConfig, limits: &Limits) -> Protection {
        Protection {
            breaker: Breaker::new(cfg.clone()),
            limiter: ClientLimiter::new(&cfg, limits.max_rate_limit_keys),
            depth: DepthGate::new(limits.max_queue_depth),
            requests: std::sync::Arc::new(Semaphore::new(limits.max_concurrent_requests.max(1))),
            writes: std::sync::Arc::new(Semaphore::new(limits.max_pending_writes.max(1))),
            max_writes: limits.max_pending_writes.max(1),
            rejected: Default::default(),
            cfg,
        }
    }

    /// Reserves `n` pending writes (an enqueue of n jobs, a report of n items) until the
    /// permit drops; refuses with 503 when the node has `max_pending_writes` outstanding.
    pub fn writes(&self, n: usize) -> Result<OwnedSemaphorePermit, Error> {
        let n = n.clamp(1, self.max_writes) as u32;
        self.writes.clone().try_acquire_many_owned(n).map_err(|_| {
            Error::new(
                ErrorCode::ServerSaturated,
                format!("the server has {} writes pending; retry shortly", self.max_writes),
            )
        })
    }

    /// Writes admitted and not yet answered.
    pub fn pending_writes(&self) -> usize {
        self.max_writes - self.writes.available_permits()
    }

    /// Re-reads queue depths and limits every `depth_refresh_ms` until `stop`.
    pub async fn depth_loop(
        self: std::sync::Arc<Self>,
        store: std::sync::Arc<dyn ferry_store::Store>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let floor_ms = if store.backend() == "postgres" { 5_000 } else { 10 };
        let every = Duration::from_millis(self.cfg.depth_refresh_ms.max(floor_ms));
        loop {
            let mark = self.depth.mark();
            if let (Ok(stats), Ok(limits)) = (store.queue_stats().await, store.queue_limits().await) {
                let depths = stats
                    .iter()
                    .map(|s| {
                        let c = |st| s.counts.get(&st).copied().unwrap_or(0);
                        (s.queue.clone(), c(ferry_core::JobState::Ready) + c(ferry_core::JobState::Scheduled))
                    })
                    .collect();
                self.depth.refresh(depths, limits.into_iter().collect(), mark);
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

fn refuse(st: &AppState, e: Error, retry_after: u64) -> Response {
    if let Some(i) = rejection_index(e.code) {
        st.protection.rejected[i].fetch_add(1, Ordering::Relaxed);
    }
    let mut resp = ApiError(e).into_response();
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    resp
}

/// Who the rate limiter counts a request against: its token, else the name the client gives
/// (`X-Ferry-Client`, set by the SDK to the worker name), else its address.
fn client_key(req: &Request, principal: Option<&Principal>) -> String {
    if let Some(p) = principal {
        return format!("token:{}", p.token_id);
    }
    if let Some(name) = req.headers().get("x-ferry-client").and_then(|v| v.to_str().ok())
        && !name.is_empty()
        && name.len() <= 128
    {
        return format!("client:{name}");
    }
    match req.extensions().get::<ConnectInfo<SocketAddr>>() {
        Some(ConnectInfo(addr)) => format!("addr:{}", addr.ip()),
        None => "addr:unknown".into(),
    }
}

/// A refusal sent before the request's body was read says `Connection: close`: the server
/// closes the connection after it (the rest of the body may still be on its way), and a
/// client told so opens a new one instead of sending its next request into the closing one.
fn refuse_unread(e: Error, unread: bool) -> Response {
    let mut resp = ApiError(e).into_response();
    if unread {
        resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Marks a request made inside the server for one that already passed [`guard`] (an MCP
/// tool call), which is checked for auth, scope and the breaker but holds no second slot and
/// is not counted again by the rate limit.
#[derive(Debug, Clone, Copy)]
pub struct InProcess;

/// Ends a waiting claim early, as shutdown does, when the in-process caller gives up (an MCP
/// client cancelled its call): the claim returns what it holds, so nothing is left leased
/// unseen.
#[derive(Debug, Clone)]
pub struct StopWaiting(pub tokio::sync::watch::Receiver<bool>);

/// The middleware every request passes; see the module doc for the order of checks.
pub async fn guard(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if path == "/healthz" {
        return next.run(req).await;
    }
    // A tool call made in process for a request that passed this guard already (`/mcp`):
    // its slot, rate-limit charge and edge checks were that request's.
    let in_process = req.extensions().get::<InProcess>().is_some();
    let edge = if in_process { Ok(()) } else { crate::edge::check_sizes(&req, &st.limits) }
        .and_then(|()| crate::edge::check_host(&req, st.tokens.active(), &st.server_names))
        .and_then(|()| crate::edge::check_origin(req.headers(), &st.cors_origins))
        .and_then(|()| crate::edge::check_url(req.uri()))
        .and_then(|()| crate::edge::check_media_type(req.headers()));
    // Until the body is read, a refusal may leave some of it on the wire.
    // (HTTP/2 has no `Connection` header: a stream reset serves the same end there.)
    let unread = crate::edge::has_body(req.headers()) && req.version() <= axum::http::Version::HTTP_11;
    if let Err(e) = edge {
        return refuse_unread(e, unread);
    }
    let principal = match crate::auth::authenticate(&st, &req) {
        None => None,
        Some(check) => match check.await {
            Ok(p) => p,
            Err(e) => return refuse_unread(e, unread),
        },
    };
    // The body arrives before the request may hold a slot: a slow sender holds only its
    // connection.
    let mut req = match crate::edge::buffer_body(&st, req).await {
        Ok(r) => r,
        Err(e) => return refuse_unread(e, unread),
    };
    let _slot = match in_process {
        true => None,
        false => match st.protection.requests.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(TryAcquireError::Closed | TryAcquireError::NoPermits) => {
                let e = Error::new(ErrorCode::ServerSaturated, "too many requests in flight on this node");
                return refuse(&st, e, 1);
            }
        },
    };
    let mut headers = None;
    if let Some(limiter) = st.protection.limiter.as_ref().filter(|_| !in_process) {
        let key = client_key(&req, principal.as_ref());
        match limiter.check(&key) {
            Ok((remaining, reset)) => headers = Some((limiter.limit, remaining, reset)),
            Err(wait) => {
                let e = Error::new(
                    ErrorCode::RateLimited,
                    format!("rate limit of {} requests/s exceeded; retry in {wait} s", limiter.limit),
                );
                let mut resp = refuse(&st, e, wait);
                let h = resp.headers_mut();
                h.insert(HeaderName::from_static("ratelimit-limit"), HeaderValue::from(limiter.limit));
                h.insert(HeaderName::from_static("ratelimit-remaining"), HeaderValue::from(0));
                h.insert(HeaderName::from_static("ratelimit-reset"), HeaderValue::from(wait));
                return resp;
            }
        }
    }
    if let Some(p) = principal {
        req.extensions_mut().insert(p);
    }
    // `/readyz` deals with the breaker itself, so it can report the circuit's state.
    let uses_store = path.starts_with("/v1/") && path != "/v1/openapi.json";
    let admission = if uses_store {
        match st.protection.breaker.admit() {
            Ok(a) => Some(a),
            Err(e) => {
                let retry = st.protection.breaker.retry_after_secs();
                return refuse(&st, e, retry);
            }
        }
    } else {
        None
    };
    let mut resp = next.run(req).await;
    if let Some(a) = admission {
        st.protection.breaker.record(a, !storage_failed(&resp));
    }
    if let Some(code) = resp.extensions().get::<ErrorCode>().copied()
        && let Some(i) = rejection_index(code)
    {
        st.protection.rejected[i].fetch_add(1, Ordering::Relaxed);
    }
    if let Some((limit, remaining, reset)) = headers {
        let h = resp.headers_mut();
        h.insert(HeaderName::from_static("ratelimit-limit"), HeaderValue::from(limit));
        h.insert(HeaderName::from_static("ratelimit-remaining"), HeaderValue::from(remaining));
        h.insert(HeaderName::from_static("ratelimit-reset"), HeaderValue::from(reset));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ProtectionConfig {
        ProtectionConfig {
            breaker_failures: 3,
            breaker_cooldown_ms: 50,
            breaker_min_requests: 10,
            ..Default::default()
        }
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_and_closes_on_a_probe() {
        let b = Breaker::new(cfg());
        for _ in 0..2 {
            let a = b.admit().unwrap();
            b.record(a, false);
        }
        assert_eq!(b.state(), BreakerState::Closed);
        let a = b.admit().unwrap();
        b.record(a, true); // a success resets the run
        for _ in 0..3 {
            let a = b.admit().unwrap();
            b.record(a, false);
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit().unwrap_err().code, ErrorCode::CircuitOpen);
        std::thread::sleep(Duration::from_millis(60));
        let probe = b.admit().unwrap();
        assert!(probe.probe);
        assert_eq!(b.admit().unwrap_err().code, ErrorCode::CircuitOpen, "one probe at a time");
        b.record(probe, false);
        assert_eq!(b.admit().unwrap_err().code, ErrorCode::CircuitOpen, "failed probe re-opens");
        std::thread::sleep(Duration::from_millis(60));
        let probe = b.admit().unwrap();
        b.record(probe, true);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.admit().is_ok());
        assert_eq!(b.opened_total.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn breaker_opens_on_failure_rate() {
        let b = Breaker::new(ProtectionConfig { breaker_failures: 100, ..cfg() });
        // 4 failures of 10 (never 3 in a row, and the run limit is 100 anyway)
        for i in 0..10 {
            let a = b.admit().unwrap();
            b.record(a, i % 5 == 1 || i % 5 == 3 || i % 5 == 4);
        }
        assert_eq!(b.state(), BreakerState::Closed, "40% failures stay closed");
        // Mostly failures now: the window's share passes 50% and the breaker opens (later
        // requests are refused).
        let mut refused = 0;
        for i in 0..10 {
            match b.admit() {
                Ok(a) => b.record(a, i % 5 == 0),
                Err(_) => refused += 1,
            }
        }
        assert_eq!(b.state(), BreakerState::Open, "a failure rate over 50% opens");
        assert!(refused > 0);
    }

    #[test]
    fn depth_gate_is_all_or_nothing_and_counts_admissions() {
        let g = DepthGate::new(10);
        let one = |q, n| HashMap::from([(q, n)]);
        g.admit(&one("a", 10)).unwrap().committed();
        assert_eq!(g.admit(&one("a", 1)).unwrap_err().code, ErrorCode::QueueFull);
        let both = HashMap::from([("b", 5), ("a", 1)]);
        assert!(g.admit(&both).is_err());
        g.admit(&one("b", 10)).unwrap().committed(); // b got nothing from the refused batch
        g.set_limits("a", &QueueLimits { max_depth: Some(11), ..Default::default() });
        g.admit(&one("a", 1)).unwrap().committed();
        let mark = g.mark();
        g.refresh(HashMap::from([("a".to_string(), 3)]), HashMap::new(), mark);
        g.admit(&one("a", 7)).unwrap().committed(); // the stored depth replaced what was admitted
        assert!(g.admit(&one("a", 1)).is_err(), "limit back to the default 10 after refresh");
        // A write in flight while a reading is taken stays counted; a failed one is released.
        let g = DepthGate::new(10);
        let pending = g.admit(&one("q", 6)).unwrap();
        let mark = g.mark();
        g.refresh(HashMap::new(), HashMap::new(), mark);
        assert!(g.admit(&one("q", 5)).is_err(), "6 in flight + 5 > 10");
        drop(pending);
        g.admit(&one("q", 10)).unwrap();
        // Commits after a reading's query began are kept; those before it are in the reading.
        let g = DepthGate::new(10);
        g.admit(&one("q", 4)).unwrap().committed();
        let mark = g.mark();
        g.admit(&one("q", 3)).unwrap().committed();
        g.refresh(HashMap::from([("q".to_string(), 4)]), HashMap::new(), mark);
        assert!(g.admit(&one("q", 4)).is_err(), "4 read + 3 since > 10 - 4");
        g.admit(&one("q", 3)).unwrap();
    }

    #[test]
    fn rate_limiter_refuses_past_the_burst() {
        let l =
            ClientLimiter::new(&ProtectionConfig { rate_per_sec: 1, rate_burst: 3, ..cfg() }, 10).unwrap();
        assert_eq!(l.check("a").unwrap().0, 2);
        l.check("a").unwrap();
        assert_eq!(l.check("a").unwrap().0, 0);
        assert!(l.check("a").unwrap_err() >= 1);
        assert!(l.check("b").is_ok(), "buckets are per client");
    }
}
