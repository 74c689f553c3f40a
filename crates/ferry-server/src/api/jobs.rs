//! Job endpoints: enqueue, claim (with long-poll), heartbeat, complete, fail, release,
//! cancel, show and list.

use crate::AppState;
use crate::auth::Access;
use crate::error::{
    ApiError, ApiPath, ApiQuery, ApiResult, JsonBody, Obj, OptionalJson, parse_json, read_body,
};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use ferry_core::validate::names::QueueName;
use ferry_core::validate::{self, JobSpec};
use ferry_core::wire::*;
use ferry_core::{CompleteItem, Error, FailItem, Job, JobFilter, JobState, NewJob};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use uuid::Uuid;

/// Description of a job id in a path.
const JOB_ID: &str = "The job's id; anything that is not a job id names no job (404)";
/// Description of 404 on a job route.
const NO_JOB: &str = "not_found: no such job";
/// Description of 409 on a lease-fenced route.
const STALE: &str = "stale_lease: the lease is not the job's current one (nothing changed)";

/// A job id from the path; anything that is not a UUID names no job (404).
fn path_id(text: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(text).map_err(|_| ApiError(Error::job_not_found(text)))
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow, default)]
    jobs: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody<'a> {
    #[serde(borrow)]
    jobs: &'a RawValue,
}

/// Enqueue one job (201 `{"id"}`, or 200 `{"id","duplicate":true}`) or a batch
/// `{"jobs":[...]}` (201 `{"ids":[...]}`), all or nothing.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = EnqueueBody, responses(
    (status = 201, description = "enqueued: `{\"id\"}` for one job, `{\"ids\"}` for a batch", body = Enqueued),
    (status = 200, description = "one job whose `unique_key` matched an unfinished job: that job's id", body = EnqueueResponse),
    (status = 403, description = "forbidden: a paid job needs scopes ledger and produce", body = ErrorBody),
    (status = 409, description = "invalid_state: a paid job's hold is refused (`details.reason`: exceeds_credits, account_closed; a batch whole, with `details.index`)", body = ErrorBody),
    (status = 413, description = "payload_too_large: a payload, or the batch, is over its limit", body = ErrorBody),
    (status = 422, description = "validation_failed: a field is invalid (named, e.g. `jobs[3].queue`; `payment.from` for an unknown account)", body = ErrorBody),
    (status = 503, description = "unavailable: ledger writes are refused, so paid jobs are too (`details.accounts`)", body = ErrorBody)))]
pub async fn enqueue(State(st): State<AppState>, access: Access, req: Request) -> ApiResult<Response> {
    let bytes = read_body(req, st.limits.max_request_bytes).await?;
    let Obj(probe): Obj<Probe> = parse_json(&bytes, "")?;
    if probe.jobs.is_some() {
        let Obj(batch): Obj<BatchBody> = parse_json(&bytes, "")?;
        let specs: Vec<Obj<JobSpec>> = parse_json(batch.jobs.get().as_bytes(), "jobs")?;
        let mut jobs = validate::batch(specs.into_iter().map(|o| o.0).collect(), &st.limits)?;
        paid(&st, &access, &mut jobs, true)?;
        let (_permit, ticket) = admit(&st, &access, &jobs).await?;
        let out = st.store.enqueue(jobs).await?;
        ticket.committed();
        let duplicates = out.iter().enumerate().filter(|(_, o)| o.duplicate).map(|(i, _)| i).collect();
        let body = EnqueueBatchResponse { ids: out.iter().map(|o| o.id).collect(), duplicates };
        return Ok((StatusCode::CREATED, Json(body)).into_response());
    }
    let Obj(spec): Obj<JobSpec> = parse_json(&bytes, "")?;
    let job = spec.validate(&st.limits)?;
    let mut jobs = vec![job];
    paid(&st, &access, &mut jobs, false)?;
    let (_permit, ticket) = admit(&st, &access, &jobs).await?;
    let out = st.store.enqueue(jobs).await?;
    ticket.committed();
    let o = out[0];
    let status = if o.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(EnqueueResponse { id: o.id, duplicate: o.duplicate })).into_response())
}

/// Paid jobs: the caller needs scopes `ledger` and `produce`, the ledger must take writes, and
/// each payment's ledger is the jobs' one (`[ledger] jobs_ledger`).
fn paid(st: &AppState, access: &Access, jobs: &mut [NewJob], batch: bool) -> Result<(), Error> {
    if jobs.iter().all(|j| j.payment.is_none()) {
        return Ok(());
    }
    if !(access.has(ferry_core::Scope::Ledger) && access.has(ferry_core::Scope::Produce)) {
        return Err(Error::new(
            ferry_core::ErrorCode::Forbidden,
            "a paid job needs a token with scopes ledger and produce",
        ));
    }
    st.ledger_guard.check()?;
    for (i, j) in jobs.iter_mut().enumerate() {
        if let Some(p) = j.payment.as_mut() {
            p.resolve(st.ledger.jobs_ledger)
                .map_err(|e| if batch { e.within(&format!("jobs[{i}]")) } else { e })?;
        }
    }
    Ok(())
}

/// Admission of new jobs: the caller's queues (and those of the jobs they depend on), then
/// queue depth, then pending writes. The permit is held until the store answers.
async fn admit(
    st: &AppState,
    access: &Access,
    jobs: &[NewJob],
) -> Result<(OwnedSemaphorePermit, crate::protect::DepthTicket), Error> {
    check_new_jobs(st, access, jobs).await?;
    let mut per_queue: HashMap<&str, u64> = HashMap::new();
    for j in jobs {
        *per_queue.entry(j.queue.as_str()).or_default() += 1;
    }
    let permit = st.protection.writes(jobs.len())?;
    let ticket = st.protection.depth.admit(&per_queue)?;
    Ok((permit, ticket))
}

/// A restricted caller may create jobs only in its queues, depending only on its queues' jobs.
async fn check_new_jobs(st: &AppState, access: &Access, jobs: &[NewJob]) -> Result<(), Error> {
    if !access.is_restricted() {
        return Ok(());
    }
    for j in jobs {
        access.check(&j.queue)?;
    }
    for dep in jobs.iter().flat_map(|j| j.depends_on.iter()) {
        access.check_job(st.store.as_ref(), *dep).await?;
    }
    Ok(())
}

/// Lease up to `max` ready jobs; with `wait_ms`, wait for one (woken, not polling).
#[utoipa::path(post, path = "/v1/queues/{queue}/claim", tag = "jobs", request_body = ClaimBody,
    params(("queue" = QueueName, Path, description = "The queue to claim from")),
    responses((status = 200, description = "the leased jobs, possibly none", body = ClaimResponse)))]
pub async fn claim(
    State(st): State<AppState>,
    peer: Option<Extension<axum::extract::ConnectInfo<std::net::SocketAddr>>>,
    stop: Option<Extension<crate::protect::StopWaiting>>,
    ApiPath(queue): ApiPath<String>,
    OptionalJson(body): OptionalJson<ClaimBody>,
) -> ApiResult<Json<ClaimResponse>> {
    let ValidClaim { request: req, wait_ms } = body.validate(queue, &st.limits)?;
    st.sightings.note(&req.worker, st.store.clock().now_ms());
    if let Some(Extension(axum::extract::ConnectInfo(addr))) = peer {
        st.stats.claim_from(addr.ip());
    }
    let jobs = if wait_ms == 0 {
        st.store.claim(req).await?
    } else {
        let wait = Duration::from_millis(wait_ms as u64);
        let poll = st.protection.depth.flow_limited(&req.queue).then_some(Duration::from_millis(100));
        let stop = stop.map_or_else(|| st.shutdown.clone(), |Extension(s)| s.0);
        ferry_store::claim_wait_until(st.store.as_ref(), req, wait, stop, poll).await?
    };
    Ok(Json(ClaimResponse { jobs }))
}

/// Extend a live lease.
#[utoipa::path(post, path = "/v1/jobs/{id}/heartbeat", tag = "jobs", request_body = HeartbeatBody,
    params(("id" = String, Path, description = JOB_ID)),
    responses((status = 200, description = "the lease's new expiry", body = ferry_core::HeartbeatOutcome),
    (status = 404, description = NO_JOB, body = ErrorBody),
    (status = 409, description = STALE, body = ErrorBody)))]
pub async fn heartbeat(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<HeartbeatBody>,
) -> ApiResult<Json<ferry_core::HeartbeatOutcome>> {
    let id = path_id(&id)?;
    let extend = body.validate(&st.limits)?;
    let req =
        ferry_core::HeartbeatRequest { id, lease: body.lease, extend_ms: extend, pressure: body.pressure };
    let mut out = st.store.heartbeat(vec![req]).await?;
    if let Some(w) = &body.worker {
        st.sightings.note(w, st.store.clock().now_ms());
    }
    Ok(Json(out.pop().expect("one outcome per item")?))
}

/// Extend many leases at once (one request per interval for all of a worker's jobs); each
/// item's outcome is reported on its own, a lost lease as `ok: false` with `stale_lease`.
#[utoipa::path(post, path = "/v1/jobs/heartbeat", tag = "jobs", request_body = HeartbeatBatchBody,
    responses((status = 200, description = "one outcome per item, in order", body = HeartbeatBatchResponse),
    (status = 413, description = "payload_too_large: too many items", body = ErrorBody)))]
pub async fn heartbeat_batch(
    State(st): State<AppState>,
    access: Access,
    JsonBody(body): JsonBody<HeartbeatBatchRequest>,
) -> ApiResult<Json<HeartbeatBatchResponse>> {
    body.validate(&st.limits)?;
    let checked: Vec<_> = body
        .items
        .into_iter()
        .enumerate()
        .map(|(i, Obj(it))| (it.id.clone(), it.validate(i, &st.limits)))
        .collect();
    let checked = only_allowed(&st, &access, checked, |h| h.id).await?;
    let results = run_batch(checked, |items| st.store.heartbeat(items), heartbeat_outcome).await?;
    if let Some(w) = &body.worker {
        st.sightings.note(w, st.store.clock().now_ms());
    }
    Ok(Json(HeartbeatBatchResponse { results }))
}

fn heartbeat_outcome(
    id: String,
    r: ferry_core::Result<ferry_core::HeartbeatOutcome>,
) -> HeartbeatItemOutcome {
    match r {
        Ok(o) => {
            HeartbeatItemOutcome { id, ok: true, lease_expires_at: Some(o.lease_expires_at), error: None }
        }
        Err(e) => HeartbeatItemOutcome { id, ok: false, lease_expires_at: None, error: Some(e) },
    }
}

/// Record a completion (fenced by the lease).
#[utoipa::path(post, path = "/v1/jobs/{id}/complete", tag = "jobs", request_body = CompleteBody,
    params(("id" = String, Path, description = JOB_ID)),
    responses((status = 200, description = "completed", body = StateResponse),
    (status = 404, description = NO_JOB, body = ErrorBody),
    (status = 409, description = STALE, body = ErrorBody),
    (status = 413, description = "payload_too_large: `result` is over limits.max_result_bytes", body = ErrorBody)))]
pub async fn complete(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<CompleteBody>,
) -> ApiResult<Json<StateResponse>> {
    let id = path_id(&id)?;
    body.validate(&st.limits)?;
    let item = CompleteItem { id, lease: body.lease, result: body.result, pressure: body.pressure };
    let mut out = st.store.complete(vec![item]).await?;
    out.pop().expect("one outcome per item")?;
    Ok(Json(StateResponse { id, state: JobState::Completed }))
}

/// Record a failure: retry after backoff, or dead.
#[utoipa::path(post, path = "/v1/jobs/{id}/fail", tag = "jobs", request_body = FailBody,
    params(("id" = String, Path, description = JOB_ID)),
    responses((status = 200, description = "the job's new state: scheduled, ready or dead", body = ferry_core::FailOutcome),
    (status = 404, description = NO_JOB, body = ErrorBody),
    (status = 409, description = STALE, body = ErrorBody)))]
pub async fn fail(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<FailBody>,
) -> ApiResult<Json<ferry_core::FailOutcome>> {
    let id = path_id(&id)?;
    body.validate()?;
    let item = FailItem {
        id,
        lease: body.lease,
        error: body.error,
        retry: body.retry.unwrap_or(true),
        pressure: body.pressure,
    };
    let mut out = st.store.fail(vec![item]).await?;
    Ok(Json(out.pop().expect("one outcome per item")?))
}

/// Give a claimed job back unstarted (ready again, the attempt not counted).
#[utoipa::path(post, path = "/v1/jobs/{id}/release", tag = "jobs", request_body = ReleaseBody,
    params(("id" = String, Path, description = JOB_ID)),
    responses((status = 200, description = "ready again", body = StateResponse),
    (status = 404, description = NO_JOB, body = ErrorBody),
    (status = 409, description = STALE, body = ErrorBody)))]
pub async fn release(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    JsonBody(body): JsonBody<ReleaseBody>,
) -> ApiResult<Json<StateResponse>> {
    let id = path_id(&id)?;
    body.validate()?;
    let state = st.store.release(id, &body.lease).await?;
    Ok(Json(StateResponse { id, state }))
}

/// Cancel a job that is not running (409 if it is running or finished). The body is optional:
/// none, `null` and `{}` all mean "no reason".
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", request_body = Option<CancelBody>,
    params(("id" = String, Path, description = JOB_ID)),
    responses((status = 200, description = "cancelled", body = StateResponse),
    (status = 404, description = NO_JOB, body = ErrorBody),
    (status = 409, description = "invalid_state: the job is running or finished", body = ErrorBody)))]
pub async fn cancel(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    req: Request,
) -> ApiResult<Json<StateResponse>> {
    let bytes = read_body(req, st.limits.max_request_bytes).await?;
    let text = bytes.trim_ascii();
    let body = if text.is_empty() || text == b"null" {
        CancelBody::default()
    } else {
        let Obj(body): Obj<CancelBody> = parse_json(&bytes, "")?;
        body
    };
    let id = path_id(&id)?;
    let reason = body.reason.unwrap_or_else(|| "cancelled by request".into());
    let reason = validate::truncate_error(reason, &st.limits);
    let state = st.store.cancel(id, &reason).await?;
    Ok(Json(StateResponse { id, state }))
}

/// One job: state, attempts, error history, result, timestamps.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", operation_id = "get_job",
    params(("id" = String, Path, description = JOB_ID)),
    responses((status = 200, description = "the job", body = Job), (status = 404, description = NO_JOB, body = ErrorBody)))]
pub async fn get(State(st): State<AppState>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Job>> {
    Ok(Json(st.store.get_job(path_id(&id)?).await?))
}

/// Validates list parameters into a filter and a page size. A restricted caller lists one of
/// its queues: the one it names, or its only one.
pub fn list_filter(p: &ListParams, st: &AppState, access: &Access) -> ApiResult<(JobFilter, usize)> {
    let mut queue = p.queue(&st.limits)?;
    if let Some(q) = &queue {
        access.check(q)?;
    } else if let Some(qs) = access.queues() {
        match qs {
            [only] => queue = Some(only.clone()),
            _ => {
                return Err(Error::new(
                    ferry_core::ErrorCode::Forbidden,
                    "this token is limited to some queues: name one with ?queue=",
                )
                .into());
            }
        }
    }
    let (state, limit) = p.page(&st.limits)?;
    Ok((JobFilter { queue, state }, limit))
}

/// Jobs in insertion order, filtered, cursor-paginated.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs", operation_id = "list_jobs", params(ListParams),
    responses((status = 200, description = "a page of jobs", body = JobsPage)))]
pub async fn list(
    State(st): State<AppState>,
    access: Access,
    ApiQuery(p): ApiQuery<ListParams>,
) -> ApiResult<Json<JobsPage>> {
    let (filter, limit) = list_filter(&p, &st, &access)?;
    let page = st
        .store
        .list_jobs(filter, ferry_core::PageRequest { limit, cursor: p.cursor.filter(|c| !c.is_empty()) })
        .await?;
    Ok(Json(JobsPage { jobs: page.items, next_cursor: page.next_cursor }))
}

/// A batch item's outcome: applied (`ok` builds it) or refused with its error.
fn item_outcome<O>(
    ok: impl Fn(String, O) -> ItemOutcome,
) -> impl Fn(String, ferry_core::Result<O>) -> ItemOutcome {
    move |id, r| match r {
        Ok(o) => ok(id, o),
        Err(e) => ItemOutcome { id, ok: false, state: None, attempt: None, run_at: None, error: Some(e) },
    }
}

/// Runs a batch whose items were checked one by one: the valid ones go to the store in one
/// call, and every item gets its outcome back in input order (`outcome` turns an item's id
/// and result, or its error, into what the answer lists).
async fn run_batch<S, O, R, Fut>(
    checked: Vec<(String, Result<S, Error>)>,
    call: impl FnOnce(Vec<S>) -> Fut,
    outcome: impl Fn(String, ferry_core::Result<O>) -> R,
) -> ApiResult<Vec<R>>
where
    Fut: std::future::Future<Output = ferry_core::Result<Vec<ferry_core::Result<O>>>>,
{
    let mut results: Vec<Option<R>> = Vec::with_capacity(checked.len());
    let mut valid = Vec::with_capacity(checked.len());
    let mut slots = Vec::with_capacity(checked.len());
    for (i, (id, item)) in checked.into_iter().enumerate() {
        match item {
            Ok(item) => {
                slots.push((i, id));
                valid.push(item);
                results.push(None);
            }
            Err(e) => results.push(Some(outcome(id, Err(e)))),
        }
    }
    let outcomes = if valid.is_empty() { Vec::new() } else { call(valid).await? };
    assert_eq!(outcomes.len(), slots.len(), "the store answers every item");
    for ((i, id), r) in slots.into_iter().zip(outcomes) {
        results[i] = Some(outcome(id, r));
    }
    Ok(results.into_iter().map(|r| r.expect("every item answered")).collect())
}

/// For a restricted caller, turns each item whose job is not in its queues (or does not exist)
/// into a `forbidden` outcome before anything is written.
async fn only_allowed<T>(
    st: &AppState,
    access: &Access,
    checked: Vec<(String, Result<T, Error>)>,
    id_of: impl Fn(&T) -> Uuid,
) -> Result<Vec<(String, Result<T, Error>)>, Error> {
    if !access.is_restricted() {
        return Ok(checked);
    }
    let mut out = Vec::with_capacity(checked.len());
    for (text, item) in checked {
        let item = match item {
            Ok(it) => match access.check_job(st.store.as_ref(), id_of(&it)).await {
                Ok(()) => Ok(it),
                Err(e) if e.code == ferry_core::ErrorCode::Forbidden => Err(e),
                Err(e) => return Err(e),
            },
            Err(e) => Err(e),
        };
        out.push((text, item));
    }
    Ok(out)
}

/// Complete many jobs; each item's outcome is reported on its own.
#[utoipa::path(post, path = "/v1/jobs/complete", tag = "jobs", request_body = CompleteBatchBody,
    responses((status = 200, description = "one outcome per item, in order", body = BatchResponse),
    (status = 413, description = "payload_too_large: too many items, or a `result` over its limit", body = ErrorBody)))]
pub async fn complete_batch(
    State(st): State<AppState>,
    access: Access,
    JsonBody(body): JsonBody<ItemsBody<CompleteItemBody>>,
) -> ApiResult<Json<BatchResponse>> {
    body.validate(&st.limits)?;
    for (i, Obj(it)) in body.items.iter().enumerate() {
        validate::pressure(it.pressure, &format!("items[{i}].pressure"))?;
    }
    let checked: Vec<_> = body
        .items
        .into_iter()
        .enumerate()
        .map(|(i, Obj(it))| {
            let item = it.validate(i, &st.limits).map(|id| CompleteItem {
                id,
                lease: it.lease,
                result: it.result,
                pressure: it.pressure,
            });
            (it.id, item)
        })
        .collect();
    let checked = only_allowed(&st, &access, checked, |c| c.id).await?;
    let results = run_batch(
        checked,
        |items| st.store.complete(items),
        item_outcome(|id, ()| ItemOutcome {
            id,
            ok: true,
            state: Some(JobState::Completed),
            attempt: None,
            run_at: None,
            error: None,
        }),
    )
    .await?;
    Ok(Json(BatchResponse { results }))
}

/// Fail many jobs; each item's outcome is reported on its own.
#[utoipa::path(post, path = "/v1/jobs/fail", tag = "jobs", request_body = FailBatchBody,
    responses((status = 200, description = "one outcome per item, in order", body = BatchResponse),
    (status = 413, description = "payload_too_large: too many items", body = ErrorBody)))]
pub async fn fail_batch(
    State(st): State<AppState>,
    access: Access,
    JsonBody(body): JsonBody<ItemsBody<FailItemBody>>,
) -> ApiResult<Json<BatchResponse>> {
    body.validate(&st.limits)?;
    for (i, Obj(it)) in body.items.iter().enumerate() {
        validate::pressure(it.pressure, &format!("items[{i}].pressure"))?;
    }
    let checked: Vec<_> = body
        .items
        .into_iter()
        .enumerate()
        .map(|(i, Obj(it))| {
            let item = it.validate(i).map(|id| FailItem {
                id,
                lease: it.lease,
                error: it.error,
                retry: it.retry.unwrap_or(true),
                pressure: it.pressure,
            });
            (it.id, item)
        })
        .collect();
    let checked = only_allowed(&st, &access, checked, |f| f.id).await?;
    let results = run_batch(
        checked,
        |items| st.store.fail(items),
        item_outcome(|id, o: ferry_core::FailOutcome| ItemOutcome {
            id,
            ok: true,
            state: Some(o.state),
            attempt: Some(o.attempt),
            run_at: o.run_at,
            error: None,
        }),
    )
    .await?;
    Ok(Json(BatchResponse { results }))
}

/// Import jobs from another system (used by `ferry import-dir`): each needs a `unique_key`,
/// which dedups against jobs in any state, so importing twice creates nothing new.
#[utoipa::path(post, path = "/v1/import", tag = "jobs", request_body = ImportBody, responses(
    (status = 200, description = "one id per job (the existing job's for a duplicate)", body = EnqueueBatchResponse),
    (status = 413, description = "payload_too_large: too many jobs, or a payload or result over its limit", body = ErrorBody)))]
pub async fn import(
    State(st): State<AppState>,
    access: Access,
    JsonBody(body): JsonBody<ImportBody>,
) -> ApiResult<Json<EnqueueBatchResponse>> {
    let jobs = body.validate(&st.limits)?;
    if jobs.is_empty() {
        return Ok(Json(EnqueueBatchResponse { ids: Vec::new(), duplicates: Vec::new() }));
    }
    check_new_jobs(&st, &access, &jobs).await?;
    let _permit = st.protection.writes(jobs.len())?;
    let out = st.store.enqueue(jobs).await?;
    let duplicates = out.iter().enumerate().filter(|(_, o)| o.duplicate).map(|(i, _)| i).collect();
    Ok(Json(EnqueueBatchResponse { ids: out.iter().map(|o| o.id).collect(), duplicates }))
}

/// The job routes, each with the scope it needs and how a token restricted to some
/// queues is checked (`Handler`: by the handler, through [`Access`](crate::auth::Access)).
pub(super) fn routes(r: super::Routes) -> super::Routes {
    use crate::auth::Restriction::*;
    use ferry_core::ResourceKind;
    use ferry_core::Scope;
    use utoipa_axum::routes;
    r.add(routes!(enqueue), Scope::Produce, Handler)
        .add(routes!(list), Scope::Read, Handler)
        .add(routes!(get), Scope::Read, PathJob)
        .add(routes!(claim), Scope::Work, Path(ResourceKind::Queue))
        .add(routes!(heartbeat), Scope::Work, PathJob)
        .add(routes!(complete), Scope::Work, PathJob)
        .add(routes!(fail), Scope::Work, PathJob)
        .add(routes!(release), Scope::Work, PathJob)
        .add(routes!(cancel), Scope::Produce, PathJob)
        .add(routes!(complete_batch), Scope::Work, Handler)
        .add(routes!(fail_batch), Scope::Work, Handler)
        .add(routes!(heartbeat_batch), Scope::Work, Handler)
        .add(routes!(import), Scope::Produce, Handler)
}
