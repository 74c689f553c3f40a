//! Probes and facts about the process: `/healthz` (alive), `/readyz` (the store answers),
//! `/v1/server`, and the OpenAPI document.

use crate::AppState;
use crate::error::ApiQuery;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ferry_core::wire::{Advice, AdviceHistory, AdviceQuery, HealthResponse, ServerInfo, StatsResponse};
use std::sync::Arc;

/// Liveness: the process answers HTTP.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "alive", body = HealthResponse)))]
pub async fn healthz() -> Json<HealthResponse> {
    Json(HealthResponse { status: "ok".into(), backend: None, reason: None, circuit: None })
}

/// Readiness: the store answers a read and the circuit is closed. (While the circuit is open
/// the protection layer answers 503 `circuit_open` before this runs.)
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "ready", body = HealthResponse),
    (status = 503, description = "not ready (shutting down, circuit open, store failing): retry after Retry-After seconds", body = HealthResponse)))]
pub async fn readyz(State(st): State<AppState>) -> Response {
    let backend = Some(st.store.backend().to_string());
    let circuit = Some(st.protection.breaker.state().as_str().to_string());
    // Like every 503 of this server, it says when to ask again.
    let unavailable = |reason: String, backend, circuit| {
        let body = HealthResponse { status: "unavailable".into(), backend, reason: Some(reason), circuit };
        (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], Json(body)).into_response()
    };
    if *st.shutdown.borrow() {
        return unavailable("shutting down".into(), backend, circuit);
    }
    // Not ready while the breaker is open or half-open. Readiness never probes for the
    // breaker: a read succeeds on a full disk, so only real requests decide it.
    let state = st.protection.breaker.state();
    if state != crate::protect::BreakerState::Closed {
        return unavailable("the circuit breaker around the database is open".into(), backend, circuit);
    }
    match st.store.next_due_ms().await {
        Ok(_) => {
            Json(HealthResponse { status: "ready".into(), backend, reason: None, circuit }).into_response()
        }
        Err(e) => unavailable(e.message, backend, circuit),
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String)))]
pub async fn metrics(State(st): State<AppState>) -> Response {
    let body = st.metrics.render().await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 =
        status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Version, backend, uptime and memory of this server process.
#[utoipa::path(get, path = "/v1/server", tag = "health",
    responses((status = 200, description = "facts about this server process", body = ServerInfo)))]
pub async fn server_info(State(st): State<AppState>) -> Json<ServerInfo> {
    Json(ServerInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        backend: st.store.backend().into(),
        uptime_ms: st.started.elapsed().as_millis() as u64,
        rss_bytes: rss_bytes(),
        db_bytes: st.store.storage_bytes().await.ok(),
        auth: st.tokens.active(),
        auth_mode: st.tokens.mode().into(),
    })
}

/// This API's OpenAPI 3 document, generated from the handlers.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "health",
    responses((status = 200, description = "this OpenAPI 3.1 document", body = Object)))]
pub async fn openapi(Extension(doc): Extension<Arc<crate::api::Document>>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], doc.0.clone()).into_response()
}

/// Key figures over the last minute, five minutes and hour, and current readings.
#[utoipa::path(get, path = "/v1/stats", tag = "health",
    responses((status = 200, description = "key figures by window, and current readings", body = StatsResponse)))]
pub async fn stats(State(st): State<AppState>) -> Json<StatsResponse> {
    let mut windows = std::collections::BTreeMap::new();
    for (name, d) in crate::stats::WINDOWS {
        windows.insert(name.to_string(), st.stats.window(&st, d).await);
    }
    let now = crate::stats::gauges(&st).await;
    Json(StatsResponse { backend: st.store.backend().into(), windows, now })
}

/// The scaling advisor's verdict on this node's measurements now (logged; kept in the history
/// only with `record=true`): `STAY`, `PLAN MIGRATION`, `ACT` or `MIGRATE NOW`, with its
/// justification, cause and remedy.
#[utoipa::path(get, path = "/v1/advice", tag = "health", params(AdviceQuery),
    responses((status = 200, description = "the verdict now, with its justification, cause and remedy", body = Advice),
    (status = 400, description = "bad_request: `record` is not true or false", body = ferry_core::wire::ErrorBody)))]
pub async fn advice(State(st): State<AppState>, ApiQuery(q): ApiQuery<AdviceQuery>) -> Json<Advice> {
    Json(st.advisor.advise(&st, "request", q.record.unwrap_or(false)).await)
}

/// Past verdicts of the advisor (scheduled, and requested with `record=true`), oldest first.
#[utoipa::path(get, path = "/v1/advice/history", tag = "health",
    responses((status = 200, description = "past verdicts, oldest first", body = AdviceHistory)))]
pub async fn advice_history(State(st): State<AppState>) -> Json<AdviceHistory> {
    Json(AdviceHistory { decisions: st.advisor.history() })
}

/// The health, metrics and server routes, each with the scope it needs and how a token restricted to some
/// queues is checked (`Handler`: by the handler, through [`Access`](crate::auth::Access)).
pub(super) fn routes(r: super::Routes) -> super::Routes {
    use crate::auth::Restriction::*;
    use ferry_core::Scope;
    use utoipa_axum::routes;
    r.public(routes!(healthz))
        .add(routes!(readyz), Scope::Read, Open)
        .add(routes!(metrics), Scope::Read, Refused)
        .add(routes!(server_info), Scope::Read, Open)
        .add(routes!(openapi), Scope::Read, Open)
        .add(routes!(stats), Scope::Read, Refused)
        .add(routes!(advice), Scope::Read, Refused)
        .add(routes!(advice_history), Scope::Read, Refused)
}
