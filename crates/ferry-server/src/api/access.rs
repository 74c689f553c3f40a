//! Administration endpoints: API tokens (`/v1/tokens`), queue flow limits
//! (`/v1/queues/{queue}/limits`), the worker registry (`/v1/workers`) and probed hosts
//! (`/v1/hosts`).

use crate::AppState;
use crate::error::{ApiError, ApiPath, ApiResult, JsonBody};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ferry_core::validate::names::QueueName;
use ferry_core::wire::{
    ErrorBody, HostBody, HostView, HostsResponse, LimitsResponse, NewToken, TokenBody, TokensResponse,
    WorkersResponse,
};
use ferry_core::{Error, ErrorCode, HostRecord, QueueLimits, TokenRecord, validate};
use uuid::Uuid;

/// Mint an API token (scope `admin`; open while auth is off, to mint the first one).
#[utoipa::path(post, path = "/v1/tokens", tag = "access", request_body = TokenBody, responses(
    (status = 201, description = "the new token, with its secret (shown only here)", body = NewToken)))]
pub async fn create_token(
    State(st): State<AppState>,
    JsonBody(body): JsonBody<TokenBody>,
) -> ApiResult<(StatusCode, Json<NewToken>)> {
    let now = st.store.clock().now_ms();
    let (record, token) = crate::auth::mint(body, &st.limits, now)?;
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
    limits.validate()?;
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

/// Workers registered by their claims and heartbeats: last seen, jobs in flight, status.
#[utoipa::path(get, path = "/v1/workers", tag = "health",
    responses((status = 200, description = "every registered worker", body = WorkersResponse)))]
pub async fn workers(State(st): State<AppState>) -> ApiResult<Json<WorkersResponse>> {
    Ok(Json(WorkersResponse { workers: st.store.list_workers().await? }))
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
    let host = body.validate(l)?;
    if !st.prober.allows(&host) {
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
