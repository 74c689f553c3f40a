//! Administration endpoints: API tokens (`/v1/tokens`), queue flow limits
//! (`/v1/queues/{queue}/limits`), the worker registry (`/v1/workers`) and probed hosts
//! (`/v1/hosts`).

use crate::AppState;
use crate::error::{ApiError, ApiPath, ApiResult, JsonBody};
use crate::health::HostView;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ferry_core::validate::names::QueueName;
use ferry_core::wire::ErrorBody;
use ferry_core::{Error, ErrorCode, HostRecord, QueueLimits, Scope, TokenRecord, WorkerInfo, validate};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// `POST /v1/tokens` body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// Human name: 1..=`limits.max_name_len` characters.
    #[schema(min_length = 1, max_length = 128)]
    pub name: String,
    /// Scopes: `admin`, `produce`, `work`, `read` (at least one).
    #[schema(min_items = 1)]
    pub scopes: Vec<Scope>,
    /// Limit the token to these queues: 1..=`limits.max_tags` of them.
    #[serde(default)]
    #[schema(value_type = Option<Vec<QueueName>>, min_items = 1, max_items = 32)]
    pub queues: Option<Vec<String>>,
}

/// A new token: the secret is shown here once and never again.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct NewToken {
    /// The secret to send as `Authorization: Bearer <token>`.
    pub token: String,
    /// The stored record.
    #[serde(flatten)]
    pub record: TokenRecord,
}

/// `GET /v1/tokens` answer.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct TokensResponse {
    /// Every token, revoked ones included, oldest first; secrets are never shown.
    pub tokens: Vec<TokenRecord>,
}

/// Mint an API token (scope `admin`; open while auth is off, to mint the first one).
#[utoipa::path(post, path = "/v1/tokens", tag = "access", request_body = TokenBody, responses(
    (status = 201, description = "the new token, with its secret (shown only here)", body = NewToken)))]
pub async fn create_token(
    State(st): State<AppState>,
    JsonBody(body): JsonBody<TokenBody>,
) -> ApiResult<(StatusCode, Json<NewToken>)> {
    let now = st.store.clock().now_ms();
    let (record, token) = crate::auth::mint(&body.name, &body.scopes, body.queues, &st.limits, now)?;
    if st.store.list_tokens().await?.len() >= st.limits.max_tokens {
        return Err(
            Error::invalid("name", format!("at most {} tokens may exist", st.limits.max_tokens)).into()
        );
    }
    st.store.create_token(record.clone()).await?;
    st.tokens.reload(st.store.as_ref()).await?;
    tracing::info!(token = %record.id, name = %record.name, "API token created");
    Ok((StatusCode::CREATED, Json(NewToken { token, record })))
}

/// Every API token (never their secrets).
#[utoipa::path(get, path = "/v1/tokens", tag = "access",
    responses((status = 200, description = "every token, without secrets", body = TokensResponse)))]
pub async fn list_tokens(State(st): State<AppState>) -> ApiResult<Json<TokensResponse>> {
    Ok(Json(TokensResponse { tokens: st.store.list_tokens().await? }))
}

/// Revoke a token; it authenticates nothing from then on (on every node within ~1 s).
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "access",
    params(("id" = String, Path, description = "The token's id; anything that is not one names no token (404)")),
    responses((status = 200, description = "the revoked token", body = TokenRecord),
    (status = 404, description = "not_found: no such token", body = ErrorBody)))]
pub async fn revoke_token(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<TokenRecord>> {
    let id = Uuid::parse_str(&id)
        .map_err(|_| ApiError(Error::new(ErrorCode::NotFound, format!("no token {id}"))))?;
    let rec = st.store.revoke_token(id).await?;
    st.tokens.reload(st.store.as_ref()).await?;
    tracing::info!(token = %rec.id, name = %rec.name, "API token revoked");
    Ok(Json(rec))
}

/// `PUT /v1/queues/{queue}/limits` answer.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct LimitsResponse {
    /// The queue.
    pub queue: String,
    /// Its limits now.
    pub limits: QueueLimits,
}

/// Set a queue's flow limits (`max_running`, `max_starts_per_sec`, `max_depth`); an empty
/// object clears them. Enforced across every node.
#[utoipa::path(put, path = "/v1/queues/{queue}/limits", tag = "queues", request_body = QueueLimits,
    params(("queue" = QueueName, Path, description = "The queue")),
    responses((status = 200, description = "the queue's limits now", body = LimitsResponse)))]
pub async fn set_queue_limits(
    State(st): State<AppState>,
    ApiPath(queue): ApiPath<String>,
    JsonBody(limits): JsonBody<QueueLimits>,
) -> ApiResult<Json<LimitsResponse>> {
    validate::queue_name(&queue, &st.limits, "queue")?;
    if limits.max_running == Some(0) {
        return Err(Error::invalid(
            "max_running",
            "max_running must be at least 1 (pause the queue to stop it)",
        )
        .into());
    }
    if let Some(r) = limits.max_starts_per_sec
        && !(r.is_finite() && r > 0.0 && r <= 1e6)
    {
        return Err(Error::invalid(
            "max_starts_per_sec",
            "max_starts_per_sec must be > 0 and at most 1000000",
        )
        .into());
    }
    // Depths are counted in i64 by both stores: a larger limit could not be kept as given.
    if let Some(d) = limits.max_depth
        && (d == 0 || d > i64::MAX as u64)
    {
        return Err(Error::invalid("max_depth", format!("max_depth must be 1..={}", i64::MAX)).into());
    }
    st.store.set_queue_limits(&queue, limits).await?;
    st.protection.depth.set_limits(&queue, &limits);
    Ok(Json(LimitsResponse { queue, limits }))
}

/// A queue's flow limits.
#[utoipa::path(get, path = "/v1/queues/{queue}/limits", tag = "queues",
    params(("queue" = QueueName, Path, description = "The queue")),
    responses((status = 200, description = "the queue's limits (`{}`: none)", body = LimitsResponse)))]
pub async fn get_queue_limits(
    State(st): State<AppState>,
    ApiPath(queue): ApiPath<String>,
) -> ApiResult<Json<LimitsResponse>> {
    validate::queue_name(&queue, &st.limits, "queue")?;
    let limits = st.store.queue_limits().await?.into_iter().find(|(q, _)| *q == queue).map(|(_, l)| l);
    Ok(Json(LimitsResponse { queue, limits: limits.unwrap_or_default() }))
}

/// `GET /v1/workers` answer.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct WorkersResponse {
    /// Every registered worker, by name.
    pub workers: Vec<WorkerInfo>,
}

/// Workers registered by their claims and heartbeats: last seen, jobs in flight, status.
#[utoipa::path(get, path = "/v1/workers", tag = "health",
    responses((status = 200, description = "every registered worker", body = WorkersResponse)))]
pub async fn workers(State(st): State<AppState>) -> ApiResult<Json<WorkersResponse>> {
    Ok(Json(WorkersResponse { workers: st.store.list_workers().await? }))
}

/// `POST /v1/hosts` body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HostBody {
    /// Unique name: 1..=`limits.max_name_len` characters, none of them a control character.
    #[schema(pattern = r"^[^\x00-\x1f\x7f-\x9f]{1,128}$", min_length = 1, max_length = 128)]
    pub name: String,
    /// `http://` URL that answers 2xx when the host is healthy; at most `limits.max_url_len`
    /// bytes (else 413), its host allowed by `[health] allowed_hosts`.
    #[schema(pattern = "^[Hh][Tt][Tt][Pp]://")]
    pub health_url: String,
}

/// `GET /v1/hosts` answer.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct HostsResponse {
    /// Every registered host with its damped status and recent probes.
    pub hosts: Vec<HostView>,
}

/// Register a host whose health URL this server probes.
#[utoipa::path(post, path = "/v1/hosts", tag = "health", request_body = HostBody, responses(
    (status = 201, description = "registered", body = HostView),
    (status = 409, description = "conflict: a host has this name", body = ErrorBody),
    (status = 413, description = "payload_too_large: `health_url` is over limits.max_url_len", body = ErrorBody)))]
pub async fn create_host(
    State(st): State<AppState>,
    JsonBody(body): JsonBody<HostBody>,
) -> ApiResult<(StatusCode, Json<HostView>)> {
    let l = &st.limits;
    let chars = body.name.chars().count();
    if chars == 0 || chars > l.max_name_len || body.name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "name",
            format!("name must be 1..={} characters, none of them a control character", l.max_name_len),
        )
        .into());
    }
    if body.health_url.len() > l.max_url_len {
        return Err(
            Error::too_large("health_url", format!("health_url is over {} bytes", l.max_url_len)).into()
        );
    }
    let parsed = reqwest::Url::parse(&body.health_url)
        .map_err(|e| Error::invalid("health_url", format!("not a URL: {e}")))?;
    if parsed.scheme() != "http" || parsed.host_str().is_none() {
        return Err(Error::invalid("health_url", "health_url must be an http:// URL with a host").into());
    }
    if !st.prober.allows(parsed.host_str().unwrap_or_default()) {
        return Err(Error::invalid(
            "health_url",
            "this server may not probe that host (it is not in [health] allowed_hosts)",
        )
        .into());
    }
    if st.store.list_hosts().await?.len() >= l.max_hosts {
        return Err(Error::invalid("name", format!("at most {} hosts may be registered", l.max_hosts)).into());
    }
    let rec =
        HostRecord { name: body.name, health_url: body.health_url, created_at: st.store.clock().now_ms() };
    st.store.create_host(rec.clone()).await?;
    st.prober.wake.notify_one();
    Ok((StatusCode::CREATED, Json(st.prober.view(vec![rec]).remove(0))))
}

/// Registered hosts with their status, latest probe and history.
#[utoipa::path(get, path = "/v1/hosts", tag = "health",
    responses((status = 200, description = "every registered host", body = HostsResponse)))]
pub async fn list_hosts(State(st): State<AppState>) -> ApiResult<Json<HostsResponse>> {
    let hosts = st.store.list_hosts().await?;
    Ok(Json(HostsResponse { hosts: st.prober.view(hosts) }))
}

/// Forget a host.
#[utoipa::path(delete, path = "/v1/hosts/{name}", tag = "health",
    params(("name" = String, Path, description = "The host's name")),
    responses((status = 204, description = "forgotten"), (status = 404, description = "not_found: no such host", body = ErrorBody)))]
pub async fn delete_host(
    State(st): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<StatusCode> {
    st.store.delete_host(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The token, queue limit, worker and host routes, each with the scope it needs and how a token restricted to some
/// queues is checked (`Handler`: by the handler, through [`Access`](crate::auth::Access)).
pub(super) fn routes(r: super::Routes) -> super::Routes {
    use crate::auth::Restriction::*;
    use ferry_core::ResourceKind;
    use ferry_core::Scope;
    use utoipa_axum::routes;
    r.add(routes!(create_token), Scope::Admin, Refused)
        .add(routes!(list_tokens), Scope::Admin, Refused)
        .add(routes!(revoke_token), Scope::Admin, Refused)
        .add(routes!(set_queue_limits), Scope::Admin, Path(ResourceKind::Queue))
        .add(routes!(get_queue_limits), Scope::Read, Path(ResourceKind::Queue))
        .add(routes!(workers), Scope::Read, Refused)
        .add(routes!(create_host), Scope::Admin, Refused)
        .add(routes!(list_hosts), Scope::Read, Refused)
        .add(routes!(delete_host), Scope::Admin, Refused)
}
