//! Schedule endpoints: create, list, show (with the next runs), change, delete, pause, resume.
//! The firing itself is a maintenance pass (`ferry_store::maintenance`), on every node.

use crate::AppState;
use crate::auth::Access;
use crate::error::{ApiPath, ApiQuery, ApiResult, JsonBody};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ferry_core::schedule::{
    self, CronSpec, DeletedResponse, Schedule, SchedulePatch, ScheduleSpec, SchedulesResponse,
};
use ferry_core::validate::names::QueueName;
use ferry_core::wire::{ErrorBody, NextQuery};
use ferry_core::{Error, Timestamp};

/// Description of a schedule name in a path.
const SCHEDULE: &str = "The schedule's name (the rules of a queue name)";
/// Description of 404 on a schedule route.
const NO_SCHEDULE: &str = "not_found: no such schedule";

fn with_next_runs(mut s: Schedule, count: usize) -> Schedule {
    if let (Some(next), Ok(cron)) = (s.next_run_at, CronSpec::parse(&s.cron, &s.timezone)) {
        let mut runs = vec![next];
        runs.extend(cron.upcoming(next.0, count.saturating_sub(1)).into_iter().map(Timestamp));
        s.next_runs = runs;
    }
    s
}

/// Create a schedule: a cron expression (5 or 6 fields, or `@daily`...) in an IANA time
/// zone, the job each tick enqueues, and a misfire policy. 409 if the name exists; 422 with
/// `position` for a bad expression.
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules", request_body = ScheduleSpec, responses(
    (status = 201, description = "created, with its next runs", body = Schedule),
    (status = 409, description = "conflict: a schedule has this name", body = ErrorBody),
    (status = 422, description = "validation_failed: a field is invalid (named; `position` for a cron expression)", body = ErrorBody)))]
pub async fn create(
    State(st): State<AppState>,
    access: Access,
    JsonBody(spec): JsonBody<ScheduleSpec>,
) -> ApiResult<(StatusCode, Json<Schedule>)> {
    access.check(&spec.job.queue)?;
    let s = schedule::from_spec(spec, st.store.clock().now_ms(), &st.limits)?;
    let s = st.store.create_schedule(s).await?;
    Ok((StatusCode::CREATED, Json(with_next_runs(s, 5))))
}

/// Every schedule.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules", operation_id = "list_schedules",
    responses((status = 200, description = "every schedule the token may see", body = SchedulesResponse)))]
pub async fn list(State(st): State<AppState>, access: Access) -> ApiResult<Json<SchedulesResponse>> {
    let mut schedules = st.store.list_schedules().await?;
    schedules.retain(|s| access.allows(queue_of(s)));
    Ok(Json(SchedulesResponse { schedules }))
}

/// The queue a schedule's ticks enqueue into.
fn queue_of(s: &Schedule) -> &str {
    s.job.get("queue").and_then(|q| q.as_str()).unwrap_or_default()
}

fn check_name(st: &AppState, name: &str) -> Result<(), Error> {
    ferry_core::validate::queue_name(name, &st.limits, "name")
}

/// The schedule `name`, if the caller may touch its queue. For a restricted caller an unknown
/// schedule is the same 403 as a foreign one, so it never learns which names exist.
async fn load(st: &AppState, access: &Access, name: &str) -> Result<Schedule, Error> {
    check_name(st, name)?;
    match st.store.get_schedule(name).await {
        Ok(s) => {
            access.check(queue_of(&s))?;
            Ok(s)
        }
        Err(e) if e.code == ferry_core::ErrorCode::NotFound && access.is_restricted() => {
            Err(Error::new(ferry_core::ErrorCode::Forbidden, "this token may not do this"))
        }
        Err(e) => Err(e),
    }
}

/// One schedule with its next runs (`count`, default 5).
#[utoipa::path(get, path = "/v1/schedules/{name}", tag = "schedules", operation_id = "get_schedule",
    params(("name" = QueueName, Path, description = SCHEDULE), NextQuery),
    responses((status = 200, description = "the schedule with its next runs", body = Schedule),
    (status = 404, description = NO_SCHEDULE, body = ErrorBody)))]
pub async fn get(
    State(st): State<AppState>,
    access: Access,
    ApiPath(name): ApiPath<String>,
    ApiQuery(q): ApiQuery<NextQuery>,
) -> ApiResult<Json<Schedule>> {
    check_name(&st, &name)?;
    let count = q.validate()?;
    Ok(Json(with_next_runs(load(&st, &access, &name).await?, count)))
}

async fn change(
    st: &AppState,
    access: &Access,
    name: &str,
    patch: SchedulePatch,
) -> ApiResult<Json<Schedule>> {
    if let Some(job) = &patch.job {
        access.check(&job.queue)?;
    }
    let current = load(st, access, name).await?;
    let s = schedule::apply_patch(current, patch, st.store.clock().now_ms(), &st.limits)?;
    Ok(Json(with_next_runs(st.store.update_schedule(s).await?, 5)))
}

/// Change a schedule; absent fields stay. A new expression or zone, or a resume, waits for
/// the next tick from now (a paused period is not caught up).
#[utoipa::path(patch, path = "/v1/schedules/{name}", tag = "schedules",
    params(("name" = QueueName, Path, description = SCHEDULE)), request_body = SchedulePatch,
    responses((status = 200, description = "the changed schedule", body = Schedule),
    (status = 404, description = NO_SCHEDULE, body = ErrorBody),
    (status = 422, description = "validation_failed: a field is invalid (named; `position` for a cron expression)", body = ErrorBody)))]
pub async fn patch(
    State(st): State<AppState>,
    access: Access,
    ApiPath(name): ApiPath<String>,
    JsonBody(p): JsonBody<SchedulePatch>,
) -> ApiResult<Json<Schedule>> {
    change(&st, &access, &name, p).await
}

/// Delete a schedule (jobs it already enqueued stay).
#[utoipa::path(delete, path = "/v1/schedules/{name}", tag = "schedules",
    params(("name" = QueueName, Path, description = SCHEDULE)),
    responses((status = 200, description = "deleted", body = DeletedResponse),
    (status = 404, description = NO_SCHEDULE, body = ErrorBody)))]
pub async fn delete(
    State(st): State<AppState>,
    access: Access,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<DeletedResponse>> {
    load(&st, &access, &name).await?;
    st.store.delete_schedule(&name).await?;
    Ok(Json(DeletedResponse { name, deleted: true }))
}

/// Pause a schedule: its ticks are ignored until it resumes.
#[utoipa::path(post, path = "/v1/schedules/{name}/pause", tag = "schedules", operation_id = "pause_schedule",
    params(("name" = QueueName, Path, description = SCHEDULE)),
    responses((status = 200, description = "paused", body = Schedule),
    (status = 404, description = NO_SCHEDULE, body = ErrorBody)))]
pub async fn pause(
    State(st): State<AppState>,
    access: Access,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Schedule>> {
    change(&st, &access, &name, SchedulePatch { paused: Some(true), ..Default::default() }).await
}

/// Resume a schedule from its next tick after now.
#[utoipa::path(post, path = "/v1/schedules/{name}/resume", tag = "schedules", operation_id = "resume_schedule",
    params(("name" = QueueName, Path, description = SCHEDULE)),
    responses((status = 200, description = "resumed", body = Schedule),
    (status = 404, description = NO_SCHEDULE, body = ErrorBody)))]
pub async fn resume(
    State(st): State<AppState>,
    access: Access,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<Schedule>> {
    change(&st, &access, &name, SchedulePatch { paused: Some(false), ..Default::default() }).await
}

/// The schedule routes, each with the scope it needs and how a token restricted to some
/// queues is checked (`Handler`: by the handler, through [`Access`](crate::auth::Access)).
pub(super) fn routes(r: super::Routes) -> super::Routes {
    use crate::auth::Restriction::*;
    use ferry_core::Scope;
    use utoipa_axum::routes;
    r.add(routes!(create), Scope::Admin, Handler)
        .add(routes!(list), Scope::Read, Handler)
        .add(routes!(get), Scope::Read, Handler)
        .add(routes!(patch), Scope::Admin, Handler)
        .add(routes!(delete), Scope::Admin, Handler)
        .add(routes!(pause), Scope::Admin, Handler)
        .add(routes!(resume), Scope::Admin, Handler)
}
