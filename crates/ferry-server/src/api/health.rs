//! Probes and facts about the process: `/healthz` (alive), `/readyz` (the store answers),
//! `/v1/server`, and the OpenAPI document.

use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use ferry_core::wire::{HealthResponse, ServerInfo};
use std::sync::Arc;

/// Liveness: the process answers HTTP.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = HealthResponse)))]
pub async fn healthz() -> Json<HealthResponse> {
    Json(HealthResponse { status: "ok".into(), backend: None, reason: None })
}

/// Readiness: the store answers a read.
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, body = HealthResponse), (status = 503, body = HealthResponse)))]
pub async fn readyz(State(st): State<AppState>) -> (StatusCode, Json<HealthResponse>) {
    let backend = Some(st.store.backend().to_string());
    if *st.shutdown.borrow() {
        let body =
            HealthResponse { status: "unavailable".into(), backend, reason: Some("shutting down".into()) };
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body));
    }
    match st.store.next_due_ms().await {
        Ok(_) => (StatusCode::OK, Json(HealthResponse { status: "ready".into(), backend, reason: None })),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(HealthResponse { status: "unavailable".into(), backend, reason: Some(e.message) }),
        ),
    }
}

fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 =
        status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Version, backend, uptime and memory of this server process.
#[utoipa::path(get, path = "/v1/server", tag = "health", responses((status = 200, body = ServerInfo)))]
pub async fn server_info(State(st): State<AppState>) -> Json<ServerInfo> {
    Json(ServerInfo {
        version: env!("CARGO_PKG_VERSION").into(),
        backend: st.store.backend().into(),
        uptime_ms: st.started.elapsed().as_millis() as u64,
        rss_bytes: rss_bytes(),
        db_bytes: st.store.storage_bytes().await.ok(),
    })
}

/// This API's OpenAPI 3 document, generated from the handlers.
#[utoipa::path(get, path = "/v1/openapi.json", tag = "health", responses((status = 200, description = "OpenAPI document")))]
pub async fn openapi(
    Extension(doc): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Json<utoipa::openapi::OpenApi> {
    Json((*doc).clone())
}
