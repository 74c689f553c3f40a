//! Queue endpoints: stats for every queue, pause and resume.

use crate::AppState;
use crate::auth::Access;
use crate::error::{ApiPath, ApiResult};
use axum::Json;
use axum::extract::State;
use ferry_core::validate;
use ferry_core::validate::names::QueueName;
use ferry_core::wire::{PauseResponse, QueuesResponse};

/// Every known queue: counts by state, age of the oldest ready job, paused flag.
#[utoipa::path(get, path = "/v1/queues", tag = "queues", operation_id = "list_queues",
    responses((status = 200, description = "every queue the token may see", body = QueuesResponse)))]
pub async fn list(State(st): State<AppState>, access: Access) -> ApiResult<Json<QueuesResponse>> {
    let mut queues = st.store.queue_stats().await?;
    queues.retain(|q| access.allows(&q.queue));
    Ok(Json(QueuesResponse { queues }))
}

async fn set(st: AppState, queue: String, paused: bool) -> ApiResult<Json<PauseResponse>> {
    validate::queue_name(&queue, &st.limits, "queue")?;
    st.store.set_paused(&queue, paused).await?;
    Ok(Json(PauseResponse { queue, paused }))
}

/// Pause a queue: claims return nothing until it is resumed.
#[utoipa::path(post, path = "/v1/queues/{queue}/pause", tag = "queues", operation_id = "pause_queue",
    params(("queue" = QueueName, Path, description = "The queue")),
    responses((status = 200, description = "paused", body = PauseResponse)))]
pub async fn pause(
    State(st): State<AppState>,
    ApiPath(queue): ApiPath<String>,
) -> ApiResult<Json<PauseResponse>> {
    set(st, queue, true).await
}

/// Resume a paused queue (wakes its waiting claimers).
#[utoipa::path(post, path = "/v1/queues/{queue}/resume", tag = "queues", operation_id = "resume_queue",
    params(("queue" = QueueName, Path, description = "The queue")),
    responses((status = 200, description = "resumed", body = PauseResponse)))]
pub async fn resume(
    State(st): State<AppState>,
    ApiPath(queue): ApiPath<String>,
) -> ApiResult<Json<PauseResponse>> {
    set(st, queue, false).await
}

/// The queue routes, each with the scope it needs and how a token restricted to some
/// queues is checked (`Handler`: by the handler, through [`Access`](crate::auth::Access)).
pub(super) fn routes(r: super::Routes) -> super::Routes {
    use crate::auth::Restriction::*;
    use ferry_core::ResourceKind;
    use ferry_core::Scope;
    use utoipa_axum::routes;
    r.add(routes!(list), Scope::Read, Handler)
        .add(routes!(pause), Scope::Admin, Path(ResourceKind::Queue))
        .add(routes!(resume), Scope::Admin, Path(ResourceKind::Queue))
}
