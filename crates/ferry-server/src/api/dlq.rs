//! The dead-letter queue: list dead jobs, replay them (attempts reset, history kept), purge.

use crate::AppState;
use crate::api::jobs::list_filter;
use crate::auth::Access;
use crate::error::{ApiQuery, ApiResult, JsonBody};
use axum::Json;
use axum::extract::State;
use ferry_core::wire::{
    DlqParams, DlqSelectorBody, ErrorBody, JobsPage, ListParams, PurgeResponse, RefusedReplay, ReplayResponse,
};
use ferry_core::{DeadSelector, Error};

/// Dead jobs, optionally of one queue, cursor-paginated.
#[utoipa::path(get, path = "/v1/dlq", tag = "dlq", operation_id = "list_dlq", params(DlqParams),
    responses((status = 200, description = "a page of dead jobs", body = JobsPage)))]
pub async fn list(
    State(st): State<AppState>,
    access: Access,
    ApiQuery(p): ApiQuery<DlqParams>,
) -> ApiResult<Json<JobsPage>> {
    let p = ListParams::from(p);
    let (filter, limit) = list_filter(&p, &st, &access)?;
    let page = st
        .store
        .list_jobs(filter, ferry_core::PageRequest { limit, cursor: p.cursor.filter(|c| !c.is_empty()) })
        .await?;
    Ok(Json(JobsPage { jobs: page.items, next_cursor: page.next_cursor }))
}

/// The dead jobs a request selects. A restricted caller names one of its queues, or ids of
/// which only its own queues' jobs count: a foreign id is skipped exactly like an unknown one.
async fn selector(body: DlqSelectorBody, st: &AppState, access: &Access) -> Result<DeadSelector, Error> {
    match body.validate(&st.limits)? {
        DeadSelector::Queue(q) => {
            access.check(&q)?;
            Ok(DeadSelector::Queue(q))
        }
        DeadSelector::Ids(ids) if access.is_restricted() => {
            let mut own = Vec::with_capacity(ids.len());
            for id in ids {
                match access.check_job(st.store.as_ref(), id).await {
                    Ok(()) => own.push(id),
                    Err(e) if e.code == ferry_core::ErrorCode::Forbidden => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(DeadSelector::Ids(own))
        }
        sel => Ok(sel),
    }
}

/// Rows per write when a replay or purge selects a whole queue.
const DLQ_STEP: usize = 1_000;

/// Return dead jobs to ready: by `ids` or by `queue`.
#[utoipa::path(post, path = "/v1/dlq/replay", tag = "dlq", request_body = DlqSelectorBody,
    responses((status = 200, description = "how many dead jobs are ready again", body = ReplayResponse),
    (status = 409, description = "conflict: an unfinished job of its queue holds a dead job's unique_key (nothing replayed)", body = ErrorBody),
    (status = 413, description = "payload_too_large: too many ids", body = ErrorBody)))]
pub async fn replay(
    State(st): State<AppState>,
    access: Access,
    JsonBody(body): JsonBody<DlqSelectorBody>,
) -> ApiResult<Json<ReplayResponse>> {
    let sel = selector(body, &st, &access).await?;
    let mut replayed = 0u64;
    let mut refused = Vec::new();
    match sel {
        DeadSelector::Ids(ids) => {
            let out = st.store.replay_dead(DeadSelector::Ids(ids), usize::MAX).await?;
            replayed += out.ids.len() as u64;
            refused.extend(out.refused);
        }
        DeadSelector::Queue(q) => loop {
            // Until a step replays nothing: a step may bring back fewer than it selected (of two
            // dead jobs with one unique key, only the first), so a short step is not the end.
            let out = st.store.replay_dead(DeadSelector::Queue(q.clone()), DLQ_STEP).await?;
            replayed += out.ids.len() as u64;
            let n = out.ids.len();
            for (id, e) in out.refused {
                if !refused.iter().any(|(r, _)| *r == id) {
                    refused.push((id, e));
                }
            }
            if n == 0 {
                break;
            }
        },
    }
    let refused = refused.into_iter().map(|(id, error)| RefusedReplay { id, error }).collect();
    Ok(Json(ReplayResponse { replayed, refused }))
}

/// Delete dead jobs: by `ids` or by `queue`.
#[utoipa::path(post, path = "/v1/dlq/purge", tag = "dlq", request_body = DlqSelectorBody,
    responses((status = 200, description = "how many dead jobs were deleted", body = PurgeResponse),
    (status = 413, description = "payload_too_large: too many ids", body = ErrorBody)))]
pub async fn purge(
    State(st): State<AppState>,
    access: Access,
    JsonBody(body): JsonBody<DlqSelectorBody>,
) -> ApiResult<Json<PurgeResponse>> {
    let sel = selector(body, &st, &access).await?;
    let mut purged = 0u64;
    match sel {
        DeadSelector::Ids(ids) => purged += st.store.purge_dead(DeadSelector::Ids(ids), usize::MAX).await?,
        DeadSelector::Queue(q) => loop {
            let n = st.store.purge_dead(DeadSelector::Queue(q.clone()), DLQ_STEP).await?;
            purged += n;
            if (n as usize) < DLQ_STEP {
                break;
            }
        },
    }
    Ok(Json(PurgeResponse { purged }))
}

/// The dead-letter routes, each with the scope it needs and how a token restricted to some
/// queues is checked (`Handler`: by the handler, through [`Access`](crate::auth::Access)).
pub(super) fn routes(r: super::Routes) -> super::Routes {
    use crate::auth::Restriction::*;
    use ferry_core::Scope;
    use utoipa_axum::routes;
    r.add(routes!(list), Scope::Read, Handler).add(routes!(replay), Scope::Admin, Handler).add(
        routes!(purge),
        Scope::Admin,
        Handler,
    )
}
