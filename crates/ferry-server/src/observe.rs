//! Request observation: every request gets a request id (the client's `x-request-id` when it
//! sends a sane one), a tracing span carrying it (so every log line of the request names it),
//! the id echoed in the response, and its route, status and duration counted for `/metrics`.

use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use ferry_core::measure::{CounterVec, Histogram, HistogramSnapshot, LATENCY_BOUNDS_SECONDS};
use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;
use tracing::Instrument;

/// HTTP measurements of this node.
#[derive(Debug)]
pub struct HttpMetrics {
    /// Requests by `method route status` (routes are templates, so cardinality is bounded).
    pub requests: CounterVec<1>,
    durations: RwLock<HashMap<String, Arc<Histogram>>>,
    /// Requests being served now.
    pub in_flight: AtomicI64,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: CounterVec::new(1_000),
            durations: RwLock::new(HashMap::new()),
            in_flight: AtomicI64::new(0),
        }
    }
}

impl HttpMetrics {
    fn duration(&self, route: &str) -> Arc<Histogram> {
        if let Some(h) = self.durations.read().expect("http lock").get(route) {
            return h.clone();
        }
        let mut w = self.durations.write().expect("http lock");
        let route = if w.len() >= 200 && !w.contains_key(route) { "(other)" } else { route };
        w.entry(route.to_string()).or_insert_with(|| Arc::new(Histogram::new(LATENCY_BOUNDS_SECONDS))).clone()
    }

    /// Durations per route.
    pub fn durations(&self) -> Vec<(String, HistogramSnapshot)> {
        let mut v: Vec<_> = self
            .durations
            .read()
            .expect("http lock")
            .iter()
            .map(|(k, h)| (k.clone(), h.snapshot()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Durations of every route together, except long-polls and streams (whose duration is
    /// the client's choice, not the server's speed).
    pub fn api_latency(&self) -> HistogramSnapshot {
        let mut all = HistogramSnapshot::default();
        for (route, h) in self.durations() {
            if !is_long_lived(&route) {
                all.add(&h);
            }
        }
        all
    }
}

/// Routes whose duration is set by the client (long-polls, streams).
pub fn is_long_lived(route: &str) -> bool {
    route.ends_with("/claim")
        || route.starts_with("GET /v1/events")
        || route == "GET /v1/ws"
        || route == "GET /metrics"
        || route == "GET /v1/items/{id}"
        || route == "POST /v1/agents/{agent}/receive"
        || route == "GET /v1/convoys/{id}"
}

fn request_id(req: &Request) -> String {
    match req.headers().get("x-request-id").and_then(|v| v.to_str().ok()) {
        Some(id) if !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()) => {
            id.to_string()
        }
        _ => uuid::Uuid::new_v4().simple().to_string(),
    }
}

/// Status counted for a request whose client went away before it was answered (nginx's code).
const CLIENT_CLOSED: u16 = 499;

/// One request in flight: counted in when made, and counted out (with its status, or 499 when
/// the client disconnected and the request was dropped) whichever way it ends.
struct InFlight {
    http: Arc<HttpMetrics>,
    key: String,
    started: Instant,
    status: Option<u16>,
}

impl InFlight {
    fn new(http: Arc<HttpMetrics>, key: String, started: Instant) -> InFlight {
        http.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { http, key, started, status: None }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let http = &self.http;
        http.in_flight.fetch_sub(1, Ordering::Relaxed);
        let status = self.status.unwrap_or(CLIENT_CLOSED);
        http.requests.add(&format!("{} {status}", self.key), 0, 1);
        http.duration(&self.key).observe(self.started.elapsed().as_secs_f64());
    }
}

/// The outermost middleware: request id, span, metrics.
pub async fn observe(State(st): State<AppState>, req: Request, next: Next) -> Response {
    if !st.instrument {
        return next.run(req).await;
    }
    let started = Instant::now();
    let id = request_id(&req);
    let route = req.extensions().get::<MatchedPath>().map_or("(unmatched)", |m| m.as_str()).to_string();
    let method = req.method().clone();
    let span = tracing::info_span!("request", request_id = %id, method = %method, route = %route);
    let mut counted = InFlight::new(st.http.clone(), format!("{method} {route}"), started);
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    counted.status = Some(status);
    drop(counted);
    span.in_scope(|| {
        tracing::debug!(status, duration_ms = started.elapsed().as_secs_f64() * 1000.0, "request served");
    });
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(HeaderName::from_static("x-request-id"), v);
    }
    resp
}

/// The audit log: every committed job, queue and schedule transition as one log line (target
/// `ferry::audit`), in cursor order. A gap (the bus outran this task) is filled from the
/// stored event log, so the audit trail has no holes while the events are retained.
pub async fn audit_loop(store: Arc<dyn ferry_store::Store>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut rx = store.events().subscribe();
    let mut next = store.events().head() + 1;
    loop {
        let batch = tokio::select! {
            r = rx.recv() => r,
            _ = stop.changed() => return,
        };
        let events: Vec<ferry_core::Event> = match batch {
            Ok(b) if b.first().is_some_and(|e| e.cursor <= next) => {
                b.iter().filter(|e| e.cursor >= next).cloned().collect()
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                match store.read_events(next - 1, 10_000).await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(target: "ferry::audit", error = %e.message, "audit log cannot read missed events");
                        continue;
                    }
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        for e in events {
            next = e.cursor + 1;
            tracing::info!(
                target: "ferry::audit",
                cursor = e.cursor,
                event = e.kind.as_str(),
                queue = e.queue.as_deref().unwrap_or(""),
                job = %e.job_id.map(|j| j.to_string()).unwrap_or_default(),
                at_ms = e.at.0,
                "transition"
            );
        }
    }
}
