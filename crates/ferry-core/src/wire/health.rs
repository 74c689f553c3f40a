//! Bodies of the probes and process facts: `/healthz`, `/readyz` and `/v1/server`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /healthz` and `GET /readyz` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HealthResponse {
    /// `ok`, `ready` or `unavailable`.
    pub status: String,
    /// Storage backend, on `/readyz`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// Why the server is not ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Circuit breaker state on `/readyz`: `closed`, `open` or `half_open`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit: Option<String>,
}

/// `GET /v1/server` answer: facts about the running process.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerInfo {
    /// ferry version.
    pub version: String,
    /// Storage backend.
    pub backend: String,
    /// Milliseconds since start.
    pub uptime_ms: u64,
    /// Resident memory of the server process, when the OS tells.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rss_bytes: Option<u64>,
    /// Bytes the database occupies (SQLite file + WAL, or ferry's PostgreSQL tables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_bytes: Option<u64>,
    /// Whether requests need a token, so a client can tell an open server from a guarded one.
    #[serde(default)]
    pub auth: bool,
    /// Why auth is on or off (`on (configured)`, `on (a token exists)`, ...).
    #[serde(default)]
    pub auth_mode: String,
}
