//! Run-checkpoint endpoints (LangGraph's saver over HTTP): put a checkpoint with its new blobs,
//! put pending writes, read one or the newest, list, and manage threads (settings, delete,
//! copy, prune, delete by run). State is opaque typed bytes, base64 on the wire.

use crate::AppState;
use crate::error::{ApiPath, ApiQuery, ApiResult, CheckpointBody, JsonBody};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::checkpoint::{self, LATEST, PutOutcome, Thread, Tuple, WritesOutcome};
use ferry_core::wire::*;
use ferry_core::{Error, ErrorCode};
use ferry_store::{CheckpointFilter, ThreadFilter};

/// Description of a thread id in a path.
const THREAD: &str = "The thread's id (1-256 bytes, no control characters)";
/// Description of a checkpoint id in a path.
const CHECKPOINT: &str = "The checkpoint's id (1-256 bytes, no control characters; not `latest`)";

fn not_found(what: String) -> Error {
    Error::new(ErrorCode::NotFound, what)
}

/// Whether `If-None-Match: *` was sent (any other value is refused: only `*` has a meaning).
fn if_none_match(headers: &HeaderMap) -> Result<bool, Error> {
    match headers.get(header::IF_NONE_MATCH) {
        None => Ok(false),
        Some(v) if v.as_bytes().trim_ascii() == b"*" => Ok(true),
        Some(_) => Err(Error::invalid("If-None-Match", "only `If-None-Match: *` is understood here")),
    }
}

/// Store or replace a checkpoint with the blobs of its new versions (LangGraph's `put`).
#[utoipa::path(put, path = "/v1/threads/{thread}/checkpoints/{id}", tag = "checkpoints", operation_id = "put_checkpoint",
    params(("thread" = CheckpointKey, Path, description = THREAD), ("id" = CheckpointKey, Path, description = CHECKPOINT), NsQuery,
        ("If-None-Match" = Option<String>, Header, description = "`*`: a different checkpoint under this id is 409 `conflict` instead of a replace")),
    request_body = PutCheckpointBody,
    responses(
    (status = 201, description = "stored", body = PutOutcome),
    (status = 200, description = "an identical repeat (`duplicate: true`, nothing written) or a replace (`replaced: true`)", body = PutOutcome),
    (status = 400, description = "bad_request: malformed JSON or base64", body = ErrorBody),
    (status = 404, description = "not_found: `job_id` names no job", body = ErrorBody),
    (status = 409, description = "conflict (`If-None-Match: *` and other content under the id) or stale_lease (the job's lease is not current)", body = ErrorBody),
    (status = 413, description = "payload_too_large: a blob, the checkpoint with its blobs, the metadata or the body over its limit (`field`, `details.channel`)", body = ErrorBody),
    (status = 422, description = "validation_failed: a key is invalid, or referenced versions have no blob (`field` blobs, `details.missing`)", body = ErrorBody)))]
pub async fn put(
    State(st): State<AppState>,
    ApiPath((thread, id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<NsQuery>,
    headers: HeaderMap,
    CheckpointBody(body): CheckpointBody<PutCheckpointBody>,
) -> ApiResult<Response> {
    let at = PutTarget {
        thread,
        ns: q.ns.unwrap_or_default(),
        checkpoint_id: id,
        if_none_match: if_none_match(&headers)?,
    };
    let put = body.validate(at, &st.limits)?;
    let _permit = st.protection.writes(1)?;
    let out = st.store.put_checkpoint(put).await?;
    let status = if out.duplicate || out.replaced { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(out)).into_response())
}

/// Store a task's pending writes for a checkpoint (LangGraph's `put_writes`); they may precede
/// the checkpoint.
#[utoipa::path(post, path = "/v1/threads/{thread}/checkpoints/{id}/writes", tag = "checkpoints",
    operation_id = "put_checkpoint_writes",
    params(("thread" = CheckpointKey, Path, description = THREAD), ("id" = CheckpointKey, Path, description = CHECKPOINT), NsQuery),
    request_body = WritesBody,
    responses(
    (status = 201, description = "stored: regular writes not yet present are inserted; a batch of only special channels replaces", body = WritesOutcome),
    (status = 200, description = "a resent batch: nothing new (`duplicate: true`)", body = WritesOutcome),
    (status = 400, description = "bad_request: malformed JSON or base64", body = ErrorBody),
    (status = 404, description = "not_found: `job_id` names no job", body = ErrorBody),
    (status = 409, description = "stale_lease: the job's lease is not current", body = ErrorBody),
    (status = 413, description = "payload_too_large: a value or the body over its limit", body = ErrorBody),
    (status = 422, description = "validation_failed: a key or index is invalid", body = ErrorBody)))]
pub async fn put_writes(
    State(st): State<AppState>,
    ApiPath((thread, id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<NsQuery>,
    CheckpointBody(body): CheckpointBody<WritesBody>,
) -> ApiResult<Response> {
    let put = body.validate(thread, q.ns.unwrap_or_default(), id, &st.limits)?;
    let _permit = st.protection.writes(1)?;
    let out = st.store.put_checkpoint_writes(put).await?;
    let status = if out.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(out)).into_response())
}

/// A checkpoint with its blobs (through `channel_versions`) and pending writes (LangGraph's
/// `get_tuple`); id `latest`: the namespace's newest.
#[utoipa::path(get, path = "/v1/threads/{thread}/checkpoints/{id}", tag = "checkpoints", operation_id = "get_checkpoint",
    params(("thread" = CheckpointKey, Path, description = THREAD),
        ("id" = CheckpointKey, Path, description = "The checkpoint's id, or `latest` for the namespace's newest"), NsQuery),
    responses((status = 200, description = "the checkpoint", body = Tuple),
    (status = 404, description = "not_found: no such checkpoint (or none in the namespace)", body = ErrorBody)))]
pub async fn get(
    State(st): State<AppState>,
    ApiPath((thread, id)): ApiPath<(String, String)>,
    ApiQuery(q): ApiQuery<NsQuery>,
) -> ApiResult<Json<Tuple>> {
    let ns = q.ns.unwrap_or_default();
    let miss = || not_found(format!("no checkpoint {id:?} in thread {thread:?} (ns {ns:?})"));
    // Ids that cannot be stored name nothing.
    if checkpoint::check_key(&thread, &st.limits, "thread", false).is_err()
        || checkpoint::check_key(&ns, &st.limits, "ns", true).is_err()
        || checkpoint::check_key(&id, &st.limits, "id", false).is_err()
    {
        return Err(miss().into());
    }
    let want = (id != LATEST).then_some(id.as_str());
    match st.store.get_checkpoint(&thread, &ns, want).await? {
        Some(t) => Ok(Json(t)),
        None => Err(miss().into()),
    }
}

/// Encodes a page key as an opaque cursor.
fn cursor_of(key: &ferry_store::PageKey) -> String {
    use base64::Engine;
    let text = serde_json::to_string(&[&key.0, &key.1, &key.2]).expect("json");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text)
}

fn key_of(cursor: &str) -> Result<ferry_store::PageKey, Error> {
    use base64::Engine;
    let bad = || Error::invalid("cursor", "not a cursor returned by this server");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let [a, b, c]: [String; 3] = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    Ok((a, b, c))
}

/// Checkpoints newest first by id, across threads or of one (LangGraph's `list`).
#[utoipa::path(get, path = "/v1/checkpoints", tag = "checkpoints", operation_id = "list_checkpoints",
    params(CheckpointsQuery),
    responses((status = 200, description = "a page, newest first", body = CheckpointsPage),
    (status = 422, description = "validation_failed: a bad filter, limit or cursor", body = ErrorBody)))]
pub async fn list(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<CheckpointsQuery>,
) -> ApiResult<Json<CheckpointsPage>> {
    let limits = &st.limits;
    if let Some(t) = &q.thread {
        checkpoint::check_key(t, limits, "thread", false)?;
    }
    if let Some(ns) = &q.ns {
        checkpoint::check_key(ns, limits, "ns", true)?;
    }
    if let Some(b) = &q.before {
        checkpoint::check_key(b, limits, "before", false)?;
    }
    let metadata = match &q.metadata {
        None => None,
        Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v @ serde_json::Value::Object(_)) => Some(v),
            _ => return Err(Error::invalid("metadata", "metadata must be a JSON object").into()),
        },
    };
    let filter = CheckpointFilter {
        thread: q.thread,
        ns: q.ns,
        before: q.before,
        metadata,
        after: q.cursor.as_deref().map(key_of).transpose()?,
        limit: super::page_size(&st, q.limit)?,
        full: q.full.unwrap_or(false),
        max_bytes: limits.max_checkpoint_request_bytes,
    };
    let (checkpoints, next) = st.store.list_checkpoints(filter).await?;
    Ok(Json(CheckpointsPage { checkpoints, next_cursor: next.as_ref().map(cursor_of) }))
}

/// Threads by id, optionally only those idle since a time.
#[utoipa::path(get, path = "/v1/threads", tag = "checkpoints", operation_id = "list_threads", params(ThreadsQuery),
    responses((status = 200, description = "a page of threads", body = ThreadsPage),
    (status = 422, description = "validation_failed: a bad time, limit or cursor", body = ErrorBody)))]
pub async fn list_threads(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<ThreadsQuery>,
) -> ApiResult<Json<ThreadsPage>> {
    let limit = super::page_size(&st, q.limit)?;
    let updated_before = q
        .updated_before
        .as_deref()
        .map(|t| ferry_core::time::parse_rfc3339_ms(t, "updated_before"))
        .transpose()?;
    if let Some(c) = &q.cursor {
        checkpoint::check_key(c, &st.limits, "cursor", false)?;
    }
    let threads = st.store.list_threads(ThreadFilter { updated_before, after: q.cursor, limit }).await?;
    let next_cursor = (threads.len() == limit).then(|| threads.last().map(|t| t.thread.clone())).flatten();
    Ok(Json(ThreadsPage { threads, next_cursor }))
}

/// One thread's settings and counts.
#[utoipa::path(get, path = "/v1/threads/{thread}", tag = "checkpoints", operation_id = "get_thread",
    params(("thread" = CheckpointKey, Path, description = THREAD)),
    responses((status = 200, description = "the thread", body = Thread),
    (status = 404, description = "not_found: no such thread", body = ErrorBody)))]
pub async fn get_thread(
    State(st): State<AppState>,
    ApiPath(thread): ApiPath<String>,
) -> ApiResult<Json<Thread>> {
    let miss = || not_found(format!("thread {thread:?} not found"));
    if checkpoint::check_key(&thread, &st.limits, "thread", false).is_err() {
        return Err(miss().into());
    }
    st.store.get_thread(&thread).await?.map(Json).ok_or_else(|| miss().into())
}

/// Change a thread's metadata or retention (null: the server's default).
#[utoipa::path(patch, path = "/v1/threads/{thread}", tag = "checkpoints", operation_id = "patch_thread",
    params(("thread" = CheckpointKey, Path, description = THREAD)), request_body = ThreadPatchBody,
    responses((status = 200, description = "the thread after the change", body = Thread),
    (status = 404, description = "not_found: no such thread (a thread exists from its first write)", body = ErrorBody),
    (status = 413, description = "payload_too_large: metadata over its limit", body = ErrorBody),
    (status = 422, description = "validation_failed: a field is invalid (named)", body = ErrorBody)))]
pub async fn patch_thread(
    State(st): State<AppState>,
    ApiPath(thread): ApiPath<String>,
    JsonBody(body): JsonBody<ThreadPatchBody>,
) -> ApiResult<Json<Thread>> {
    let patch = body.validate(thread, &st.limits)?;
    let _permit = st.protection.writes(1)?;
    Ok(Json(st.store.patch_thread(patch).await?))
}

/// Delete a thread and everything it holds (LangGraph's `delete_thread`); 0 if absent.
#[utoipa::path(delete, path = "/v1/threads/{thread}", tag = "checkpoints", operation_id = "delete_thread",
    params(("thread" = CheckpointKey, Path, description = THREAD)),
    responses((status = 200, description = "deleted: the checkpoints it held", body = ThreadDeleted),
    (status = 422, description = "validation_failed: a bad thread id", body = ErrorBody)))]
pub async fn delete_thread(
    State(st): State<AppState>,
    ApiPath(thread): ApiPath<String>,
) -> ApiResult<Json<ThreadDeleted>> {
    checkpoint::check_key(&thread, &st.limits, "thread", false)?;
    let _permit = st.protection.writes(1)?;
    let deleted = st.store.delete_thread(&thread).await?;
    Ok(Json(ThreadDeleted { thread, deleted }))
}

/// Copy every checkpoint, blob and write of a thread to a new one (ids kept; LangGraph's
/// `copy_thread`).
#[utoipa::path(post, path = "/v1/threads/{thread}/copy", tag = "checkpoints", operation_id = "copy_thread",
    params(("thread" = CheckpointKey, Path, description = THREAD)), request_body = CopyBody,
    responses((status = 201, description = "copied", body = Copied),
    (status = 404, description = "not_found: no such source thread", body = ErrorBody),
    (status = 409, description = "conflict: the target holds checkpoints", body = ErrorBody),
    (status = 422, description = "validation_failed: a bad thread id", body = ErrorBody)))]
pub async fn copy_thread(
    State(st): State<AppState>,
    ApiPath(thread): ApiPath<String>,
    JsonBody(body): JsonBody<CopyBody>,
) -> ApiResult<Response> {
    if checkpoint::check_key(&thread, &st.limits, "thread", false).is_err() {
        return Err(not_found(format!("thread {thread:?} not found")).into());
    }
    checkpoint::check_key(&body.to, &st.limits, "to", false)?;
    let _permit = st.protection.writes(1)?;
    let copied = st.store.copy_thread(&thread, &body.to).await?;
    Ok((StatusCode::CREATED, Json(Copied { thread: body.to, copied })).into_response())
}

/// Prune threads: keep each namespace's newest checkpoint (with what its delta channels need),
/// or delete them all (LangGraph's `prune`).
#[utoipa::path(post, path = "/v1/checkpoints/prune", tag = "checkpoints", operation_id = "prune_checkpoints",
    request_body = PruneBody,
    responses((status = 200, description = "pruned: the checkpoints deleted", body = Deleted),
    (status = 413, description = "payload_too_large: more than limits.max_batch threads", body = ErrorBody),
    (status = 422, description = "validation_failed: a bad thread id", body = ErrorBody)))]
pub async fn prune(
    State(st): State<AppState>,
    JsonBody(body): JsonBody<PruneBody>,
) -> ApiResult<Json<Deleted>> {
    check_ids(&body.threads, "threads", &st.limits)?;
    let keep = match body.strategy.unwrap_or(PruneStrategy::KeepLatest) {
        PruneStrategy::KeepLatest => 1,
        PruneStrategy::Delete => 0,
    };
    let _permit = st.protection.writes(body.threads.len().max(1))?;
    Ok(Json(Deleted { deleted: st.store.prune_threads(body.threads, keep).await? }))
}

/// Delete the checkpoints (and their writes) of runs, by `metadata.run_id` (LangGraph's
/// `delete_for_runs`).
#[utoipa::path(post, path = "/v1/checkpoints/delete-runs", tag = "checkpoints", operation_id = "delete_checkpoint_runs",
    request_body = DeleteRunsBody,
    responses((status = 200, description = "deleted: the checkpoints removed", body = Deleted),
    (status = 413, description = "payload_too_large: more than limits.max_batch run ids", body = ErrorBody),
    (status = 422, description = "validation_failed: a bad run id", body = ErrorBody)))]
pub async fn delete_runs(
    State(st): State<AppState>,
    JsonBody(body): JsonBody<DeleteRunsBody>,
) -> ApiResult<Json<Deleted>> {
    check_ids(&body.run_ids, "run_ids", &st.limits)?;
    let _permit = st.protection.writes(body.run_ids.len().max(1))?;
    Ok(Json(Deleted { deleted: st.store.delete_checkpoint_runs(body.run_ids).await? }))
}

/// Deletes idle threads and applies `keep_last`, every `[checkpoints] prune_interval_ms`,
/// `batch` threads per transaction, until shutdown.
pub async fn pruner(st: AppState, batch: usize, mut stop: tokio::sync::watch::Receiver<bool>) {
    let cfg = st.checkpoints.clone();
    let every = std::time::Duration::from_millis(cfg.prune_interval_ms.max(1));
    let sweep = ferry_store::CheckpointSweep {
        batch: batch.max(1),
        idle_ttl_ms: cfg.idle_ttl_ms.max(0),
        keep_last: cfg.keep_last.max(0),
        grace_ms: cfg.prune_grace_ms.max(0),
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        loop {
            match st.store.sweep_checkpoints(sweep).await {
                Ok(o) if o.threads_expired as usize >= sweep.batch => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e.message, "checkpoint retention pass failed");
                    break;
                }
            }
        }
    }
}

/// The checkpoint routes: writes need scope `checkpoints`, reads `read`. Checkpoints belong to
/// no queue: a restricted token is refused them.
pub(super) fn routes(r: super::Routes) -> super::Routes {
    use crate::auth::Restriction::*;
    use ferry_core::Scope;
    use utoipa_axum::routes;
    r.add(routes!(put), Scope::Checkpoints, Refused)
        .add(routes!(get), Scope::Read, Refused)
        .add(routes!(put_writes), Scope::Checkpoints, Refused)
        .add(routes!(list), Scope::Read, Refused)
        .add(routes!(list_threads), Scope::Read, Refused)
        .add(routes!(get_thread), Scope::Read, Refused)
        .add(routes!(patch_thread), Scope::Checkpoints, Refused)
        .add(routes!(delete_thread), Scope::Checkpoints, Refused)
        .add(routes!(copy_thread), Scope::Checkpoints, Refused)
        .add(routes!(prune), Scope::Checkpoints, Refused)
        .add(routes!(delete_runs), Scope::Checkpoints, Refused)
}
