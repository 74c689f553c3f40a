//! Work-item endpoints: create, show (with a long-poll for a newer version), list, history,
//! compare-and-set patch and atomic batches. Every write is planned by the store against the
//! rows it names; a conflict is answered with what a retry needs (`details.current`).

use crate::AppState;
use crate::auth::Access;
use crate::error::{ApiPath, ApiQuery, ApiResult, JsonBody};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::item::{self, Item, ItemOp, OpResult};
use ferry_core::wire::*;
use ferry_core::{Error, ErrorCode};
use ferry_store::ItemFilter;
use std::time::Duration;

/// Description of an item id in a path.
const ITEM_ID: &str = "The item's id (1-128 of A-Z a-z 0-9 . _ : -)";
/// Description of 404 on an item route.
const NO_ITEM: &str = "not_found: no such item";

/// Counts the conflicts a retrying client acts on, by kind.
fn count_conflict(st: &AppState, e: &Error) {
    let kind = match e.code {
        ErrorCode::VersionConflict => "version_conflict",
        ErrorCode::PreconditionFailed => "precondition_failed",
        ErrorCode::InvalidState
            if e.details.as_ref().and_then(|d| d.get("reason")).and_then(|r| r.as_str())
                == Some("assigned_to_other") =>
        {
            "assigned_to_other"
        }
        _ => return,
    };
    st.metrics.conflict(kind);
}

/// Answers `item` with its version as the `ETag`.
fn with_etag(status: StatusCode, item: &Item, body: impl serde::Serialize) -> Response {
    let mut r = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", item.version)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

fn check_id(st: &AppState, id: &str) -> Result<(), Error> {
    // An id that cannot exist names no item.
    item_id(id, &st.limits, "id").map_err(|_| item::item_not_found(id))
}

/// Create an item (201), or answer an identical repeat (200 `duplicate: true`); the same id
/// with other content is 409 `conflict`.
#[utoipa::path(post, path = "/v1/items", tag = "items", operation_id = "create_item", request_body = CreateItemBody,
    responses(
    (status = 201, description = "created; `ETag` is its version", body = ItemResponse),
    (status = 200, description = "an identical create was made before: that item, `duplicate: true`", body = ItemResponse),
    (status = 409, description = "conflict: the id holds an item with other content", body = ErrorBody),
    (status = 413, description = "payload_too_large: a text, the context or an artifact is over its limit", body = ErrorBody),
    (status = 422, description = "validation_failed: a field is invalid (named)", body = ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    access: Access,
    JsonBody(body): JsonBody<CreateItemBody>,
) -> ApiResult<Response> {
    access.check_agent(body.agent.as_deref())?;
    let new = body.validate(&st.limits)?;
    let _permit = st.protection.writes(1)?;
    let out = st.store.create_item(new).await?;
    let status = if out.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    Ok(with_etag(status, &out.item, ItemResponse { duplicate: out.duplicate, item: out.item.clone() }))
}

/// One item; with `wait_version_gt`, waits up to `wait_ms` for a newer version (woken by the
/// commit that makes it, on any node) and then answers the item as it is.
#[utoipa::path(get, path = "/v1/items/{id}", tag = "items", operation_id = "get_item",
    params(("id" = ferry_core::validate::names::ItemId, Path, description = ITEM_ID), GetItemQuery),
    responses((status = 200, description = "the item; `ETag` is its version", body = ItemResponse),
    (status = 404, description = NO_ITEM, body = ErrorBody)))]
pub async fn get(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<GetItemQuery>,
) -> ApiResult<Response> {
    check_id(&st, &id)?;
    let wait_ms = q.wait_ms.unwrap_or(0);
    if wait_ms < 0 || wait_ms > st.limits.max_wait_ms {
        return Err(
            Error::invalid("wait_ms", format!("wait_ms must be 0..={}", st.limits.max_wait_ms)).into()
        );
    }
    let item = match q.wait_version_gt {
        Some(v) if wait_ms > 0 => wait_for(&st, &id, v, Duration::from_millis(wait_ms as u64)).await?,
        _ => st.store.get_item(&id).await?,
    };
    Ok(with_etag(StatusCode::OK, &item, ItemResponse { item: item.clone(), duplicate: false }))
}

/// Reads item `id` until its version passes `after` or `wait` ends, parked on its wake-up.
async fn wait_for(st: &AppState, id: &str, after: i64, wait: Duration) -> Result<Item, Error> {
    let deadline = tokio::time::Instant::now() + wait;
    let notify = st.store.notifier().queue(&item::wake_key(id));
    let mut stop = st.shutdown.clone();
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let item = st.store.get_item(id).await?;
        let now = tokio::time::Instant::now();
        if item.version > after || now >= deadline || *stop.borrow() {
            return Ok(item);
        }
        let until = st.store.fallback_poll().map_or(deadline, |p| deadline.min(now + p));
        tokio::select! {
            _ = tokio::time::sleep_until(until) => {}
            _ = &mut notified => {}
            _ = stop.changed() => {}
        }
    }
}

/// Items by id, filtered by `status` and `assignee`, cursor-paginated.
#[utoipa::path(get, path = "/v1/items", tag = "items", operation_id = "list_items", params(ItemsQuery),
    responses((status = 200, description = "a page of items", body = ItemsPage)))]
pub async fn list(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<ItemsQuery>,
) -> ApiResult<Json<ItemsPage>> {
    let limit = super::page_size(&st, q.limit)?;
    if let Some(a) = &q.assignee {
        agent_name(a, &st.limits, "assignee")?;
    }
    let after = q.cursor.filter(|c| !c.is_empty());
    let filter = ItemFilter { status: q.status, assignee: q.assignee, after, limit };
    let items = st.store.list_items(filter).await?;
    let next_cursor = (items.len() == limit).then(|| items.last().map(|i| i.id.clone())).flatten();
    Ok(Json(ItemsPage { items, next_cursor }))
}

/// The kept versions of an item (the last `limits.max_item_history`), newest first, each with
/// its changed paths and the merge patch from the version before.
#[utoipa::path(get, path = "/v1/items/{id}/history", tag = "items", operation_id = "item_history",
    params(("id" = ferry_core::validate::names::ItemId, Path, description = ITEM_ID), HistoryQuery),
    responses((status = 200, description = "a page of history, newest first", body = HistoryPage),
    (status = 404, description = NO_ITEM, body = ErrorBody)))]
pub async fn history(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> ApiResult<Json<HistoryPage>> {
    check_id(&st, &id)?;
    let limit = super::page_size(&st, q.limit)?;
    let before = match q.cursor.filter(|c| !c.is_empty()) {
        Some(c) => Some(
            c.parse::<i64>().map_err(|_| Error::invalid("cursor", "not a cursor returned by this server"))?,
        ),
        None => None,
    };
    let history = st.store.item_history(&id, before, limit).await?;
    let next_cursor = match history.last() {
        Some(h) if history.len() == limit && h.version > 1 => Some(h.version.to_string()),
        _ => None,
    };
    Ok(Json(HistoryPage { history, next_cursor }))
}

/// The version an `If-Match` header names, if one was sent (items and episodes).
pub(super) fn if_match(headers: &HeaderMap) -> Result<Option<i64>, Error> {
    match headers.get(header::IF_MATCH) {
        None => Ok(None),
        Some(v) => {
            let text = v.to_str().map_err(|_| Error::invalid("If-Match", "If-Match is not text"))?;
            parse_if_match(text).map(Some)
        }
    }
}

/// Change an item in one compare-and-set: `expected_version` in the body (a conflict is 409
/// `version_conflict`) or `If-Match: "N"` (strict unless `mode` is `merge`; a conflict is 412
/// `precondition_failed`). `merge` (the default) conflicts only when a path the write touches
/// changed since; `strict` on any change. Conflicts carry `details.current`.
#[utoipa::path(patch, path = "/v1/items/{id}", tag = "items", operation_id = "patch_item",
    params(("id" = ferry_core::validate::names::ItemId, Path, description = ITEM_ID),
        ("If-Match" = Option<String>, Header, description = "`\"<version>\"`: write only if the item is at this version")),
    request_body = PatchItemBody,
    responses((status = 200, description = "written (or `changed: false`); `ETag` is the version", body = PatchItemResponse),
    (status = 404, description = NO_ITEM, body = ErrorBody),
    (status = 409, description = "version_conflict (details: expected_version, actual_version, conflicting_paths, current), or invalid_state: a refused move (details: from, to, current; reason assigned_to_other)", body = ErrorBody),
    (status = 412, description = "precondition_failed: If-Match does not hold (details as version_conflict)", body = ErrorBody),
    (status = 413, description = "payload_too_large: a text, the context or an artifact is over its limit", body = ErrorBody),
    (status = 422, description = "validation_failed: a field is invalid (named)", body = ErrorBody),
    (status = 428, description = "precondition_required: the server requires If-Match or expected_version", body = ErrorBody)))]
pub async fn patch(
    State(st): State<AppState>,
    access: Access,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<PatchItemBody>,
) -> ApiResult<Response> {
    access.check_agent(body.agent.as_deref())?;
    check_id(&st, &id)?;
    let version = if_match(&headers)?;
    if st.items.require_precondition && version.is_none() && body.expected_version.is_none() {
        return Err(precondition_required().into());
    }
    let p = body.validate(id, version, &st.limits)?;
    let _permit = st.protection.writes(1)?;
    let out: OpResult = st.store.patch_item(p).await.inspect_err(|e| count_conflict(&st, e))?;
    Ok(with_etag(
        StatusCode::OK,
        &out.item,
        PatchItemResponse { changed: out.changed, item: out.item.clone() },
    ))
}

/// Apply create, patch and check ops in order in one transaction: all compares pass and every
/// op is written, or nothing is and the first failing op's error answers (`field: ops[i]`).
#[utoipa::path(post, path = "/v1/items/batch", tag = "items", operation_id = "batch_items", request_body = BatchItemsBody,
    responses((status = 200, description = "every op applied: the item after each, in op order", body = BatchItemsResponse),
    (status = 404, description = "not_found: an op names no item (field ops[i])", body = ErrorBody),
    (status = 409, description = "an op's conflict (field ops[i], its details); nothing written", body = ErrorBody),
    (status = 413, description = "payload_too_large: more than limits.max_batch ops, or an op's field over its limit", body = ErrorBody),
    (status = 422, description = "validation_failed: an op is invalid (field ops[i]...)", body = ErrorBody),
    (status = 428, description = "precondition_required: a patch op without expected_version on a server requiring one", body = ErrorBody)))]
pub async fn batch(
    State(st): State<AppState>,
    access: Access,
    JsonBody(body): JsonBody<BatchItemsBody>,
) -> ApiResult<Json<BatchItemsResponse>> {
    for op in &body.ops {
        match op {
            BatchOp::Create(c) => access.check_agent(c.agent.as_deref())?,
            BatchOp::Patch(p) => access.check_agent(p.agent.as_deref())?,
            BatchOp::Check(_) => {}
        }
    }
    let ops: Vec<ItemOp> = body.validate(&st.limits, st.items.require_precondition)?;
    let _permit = st.protection.writes(ops.len())?;
    let out = st.store.batch_items(ops).await.inspect_err(|e| count_conflict(&st, e))?;
    Ok(Json(BatchItemsResponse { items: out.into_iter().map(|r| r.item).collect() }))
}

/// The item routes: writes need scope `items`, reads `read`. Items belong to no queue: a token
/// restricted to queues is refused them; one restricted to agents reads them and writes only
/// as one of its agents (`Handler`, through [`Access`]).
pub(super) fn routes(r: super::Routes) -> super::Routes {
    use crate::auth::Restriction::*;
    use ferry_core::{ResourceKind, Scope};
    use utoipa_axum::routes;
    r.add(routes!(create), Scope::Items, Agents(ResourceKind::Agent))
        .add(routes!(list), Scope::Read, Agents(ResourceKind::Agent))
        .add(routes!(get), Scope::Read, Agents(ResourceKind::Agent))
        .add(routes!(history), Scope::Read, Agents(ResourceKind::Agent))
        .add(routes!(patch), Scope::Items, Agents(ResourceKind::Agent))
        .add(routes!(batch), Scope::Items, Agents(ResourceKind::Agent))
}
