//! Convoy endpoints (`/v1/convoys`): create a group of jobs run under a fixed or adaptive
//! limit, add to it while open, seal or cancel it, and read it (long-polling its end), its
//! members and the list. The rules live in the stores; members are jobs, worked through the
//! job endpoints.

use super::page_size;
use crate::AppState;
use crate::auth::Access;
use crate::error::{ApiPath, ApiQuery, ApiResult, JsonBody};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ferry_core::convoy::{self, Convoy, ConvoyFilter};
use ferry_core::wire::{
    ConvoyBody, ConvoyCreatedResponse, ConvoyListQuery, ConvoyWaitQuery, ConvoysPage, ErrorBody,
    MembersAdded, MembersBody, MembersPage, MembersQuery,
};
use ferry_core::{Error, ErrorCode, PageRequest, validate};
use std::time::Duration;

const ID: &str = "The convoy's id";
const NO_CONVOY: &str = "not_found: no such convoy (403 to a queue-restricted token)";

fn check_id(st: &AppState, id: &str) -> Result<(), Error> {
    convoy::check_id(id, st.limits.max_name_len, "id").map_err(|_| convoy::not_found(id))
}

/// Create a convoy with its first members (all or nothing); a repeat of its `id` adds nothing.
#[utoipa::path(post, path = "/v1/convoys", tag = "convoys", operation_id = "create_convoy",
    request_body = ConvoyBody,
    responses((status = 201, description = "created", body = ConvoyCreatedResponse),
    (status = 200, description = "a repeat of an existing id: nothing added (`duplicate`)", body = ConvoyCreatedResponse),
    (status = 409, description = "conflict: the id exists with another name, queue or max_parallel (`details.fields`)", body = ErrorBody),
    (status = 422, description = "validation_failed: a field is invalid (named), or too many members", body = ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    access: Access,
    JsonBody(body): JsonBody<ConvoyBody>,
) -> ApiResult<(StatusCode, Json<ConvoyCreatedResponse>)> {
    access.check(&body.queue)?;
    if let Some(q) = body.on_complete.as_ref().map(|o| o.queue.as_str()) {
        access.check(q)?;
    }
    let new = body.validate(&st.limits)?;
    let _permit = st.protection.writes(new.members.len().max(1))?;
    let out = st.store.create_convoy(new).await?;
    let status = if out.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    let duplicates = out.members.iter().enumerate().filter(|(_, o)| o.duplicate).map(|(i, _)| i).collect();
    Ok((
        status,
        Json(ConvoyCreatedResponse {
            convoy: out.convoy,
            ids: out.members.iter().map(|o| o.id).collect(),
            duplicates,
            duplicate: out.duplicate,
        }),
    ))
}

/// Add members to an open convoy (all or nothing).
#[utoipa::path(post, path = "/v1/convoys/{id}/members", tag = "convoys", operation_id = "add_convoy_members",
    params(("id" = String, Path, description = ID)), request_body = MembersBody,
    responses((status = 201, description = "added", body = MembersAdded),
    (status = 404, description = NO_CONVOY, body = ErrorBody),
    (status = 409, description = "invalid_state: the convoy is sealed", body = ErrorBody),
    (status = 422, description = "validation_failed: a member is invalid (named), or too many", body = ErrorBody)))]
pub async fn add(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<MembersBody>,
) -> ApiResult<(StatusCode, Json<MembersAdded>)> {
    check_id(&st, &id)?;
    let convoy = st.store.get_convoy(&id).await?;
    let members = ferry_core::wire::members(body.members, &convoy.queue, &st.limits, true)?;
    let _permit = st.protection.writes(members.len())?;
    let out = st.store.add_convoy_members(&id, members).await?;
    let duplicates = out.iter().enumerate().filter(|(_, o)| o.duplicate).map(|(i, _)| i).collect();
    Ok((StatusCode::CREATED, Json(MembersAdded { ids: out.iter().map(|o| o.id).collect(), duplicates })))
}

/// Take no more members; the convoy ends as soon as no member is live.
#[utoipa::path(post, path = "/v1/convoys/{id}/seal", tag = "convoys", operation_id = "seal_convoy",
    params(("id" = String, Path, description = ID)),
    responses((status = 200, description = "the convoy", body = Convoy),
    (status = 404, description = NO_CONVOY, body = ErrorBody)))]
pub async fn seal(State(st): State<AppState>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Convoy>> {
    check_id(&st, &id)?;
    let _permit = st.protection.writes(1)?;
    Ok(Json(st.store.seal_convoy(&id).await?))
}

/// Seal the convoy and cancel every member not running; it ends `cancelled`.
#[utoipa::path(post, path = "/v1/convoys/{id}/cancel", tag = "convoys", operation_id = "cancel_convoy",
    params(("id" = String, Path, description = ID)),
    responses((status = 200, description = "the convoy", body = Convoy),
    (status = 404, description = NO_CONVOY, body = ErrorBody),
    (status = 409, description = "invalid_state: it already completed or failed", body = ErrorBody)))]
pub async fn cancel(State(st): State<AppState>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Convoy>> {
    check_id(&st, &id)?;
    let _permit = st.protection.writes(1)?;
    Ok(Json(st.store.cancel_convoy(&id).await?))
}

/// One convoy with its counts; with `wait_ms`, waits that long for it to end (woken by the
/// commit that ends it, on any node) and answers it as it is then.
#[utoipa::path(get, path = "/v1/convoys/{id}", tag = "convoys", operation_id = "get_convoy",
    params(("id" = String, Path, description = ID), ConvoyWaitQuery),
    responses((status = 200, description = "the convoy", body = Convoy),
    (status = 404, description = NO_CONVOY, body = ErrorBody)))]
pub async fn get(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<ConvoyWaitQuery>,
) -> ApiResult<Json<Convoy>> {
    check_id(&st, &id)?;
    let wait_ms = q.wait_ms.unwrap_or(0);
    if wait_ms < 0 || wait_ms > st.limits.max_wait_ms {
        return Err(
            Error::invalid("wait_ms", format!("wait_ms must be 0..={}", st.limits.max_wait_ms)).into()
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms as u64);
    let notify = st.store.notifier().queue(&convoy::wake_key(&id));
    let mut stop = st.shutdown.clone();
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let c = st.store.get_convoy(&id).await?;
        let now = tokio::time::Instant::now();
        if c.state.is_finished() || now >= deadline || *stop.borrow() {
            return Ok(Json(c));
        }
        let until = st.store.fallback_poll().map_or(deadline, |p| deadline.min(now + p));
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = &mut notified => {}
            _ = stop.changed() => {}
        }
    }
}

/// A convoy's members in the order added, optionally of one job state.
#[utoipa::path(get, path = "/v1/convoys/{id}/members", tag = "convoys", operation_id = "convoy_members",
    params(("id" = String, Path, description = ID), MembersQuery),
    responses((status = 200, description = "a page of members", body = MembersPage),
    (status = 404, description = NO_CONVOY, body = ErrorBody)))]
pub async fn members(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<MembersQuery>,
) -> ApiResult<Json<MembersPage>> {
    check_id(&st, &id)?;
    let limit = page_size(&st, q.limit)?;
    let page = PageRequest { limit, cursor: q.cursor.filter(|c| !c.is_empty()) };
    let page = st.store.convoy_members(&id, q.state, page).await?;
    Ok(Json(MembersPage { members: page.items, next_cursor: page.next_cursor }))
}

/// Convoys oldest first, by state and queue (a queue-restricted token names its queue).
#[utoipa::path(get, path = "/v1/convoys", tag = "convoys", operation_id = "list_convoys", params(ConvoyListQuery),
    responses((status = 200, description = "a page of convoys", body = ConvoysPage),
    (status = 403, description = "forbidden: a token limited to several queues must name one", body = ErrorBody)))]
pub async fn list(
    State(st): State<AppState>,
    access: Access,
    ApiQuery(q): ApiQuery<ConvoyListQuery>,
) -> ApiResult<Json<ConvoysPage>> {
    let mut queue = q.queue;
    if let Some(name) = &queue {
        validate::queue_name(name, &st.limits, "queue")?;
        access.check(name)?;
    } else if let Some(qs) = access.queues() {
        match qs {
            [only] => queue = Some(only.clone()),
            _ => {
                return Err(Error::new(
                    ErrorCode::Forbidden,
                    "this token is limited to some queues: name one with ?queue=",
                )
                .into());
            }
        }
    }
    let limit = page_size(&st, q.limit)?;
    let page = PageRequest { limit, cursor: q.cursor.filter(|c| !c.is_empty()) };
    let page = st.store.list_convoys(ConvoyFilter { state: q.state, queue }, page).await?;
    Ok(Json(ConvoysPage { convoys: page.items, next_cursor: page.next_cursor }))
}

pub(super) fn routes(r: super::Routes) -> super::Routes {
    use crate::auth::Restriction::*;
    use ferry_core::Scope;
    use utoipa_axum::routes;
    r.add(routes!(create), Scope::Produce, Handler)
        .add(routes!(list), Scope::Read, Handler)
        .add(routes!(get), Scope::Read, PathConvoy)
        .add(routes!(members), Scope::Read, PathConvoy)
        .add(routes!(add), Scope::Produce, PathConvoy)
        .add(routes!(seal), Scope::Produce, PathConvoy)
        .add(routes!(cancel), Scope::Produce, PathConvoy)
}
