//! Bodies of the job endpoints: enqueue, claim, heartbeat, complete, fail, release, cancel,
//! their batch forms, listing and import, each with the checks the server applies to it.

use super::{Obj, lease_present};
use crate::error::{Error, Result};
use crate::job::{ClaimRequest, ClaimedJob, Job, JobState, NewJob, Timestamp};
use crate::limits::Limits;
use crate::validate;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

pub use crate::validate::JobSpec;

/// `POST /v1/jobs` body (schema only: the handler reads the body itself): one job, or a batch.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum EnqueueBody {
    /// One job.
    One(Box<JobSpec>),
    /// Several jobs, enqueued all or nothing.
    Batch(JobBatch),
}

/// `{"jobs":[...]}`: 1..=`limits.max_batch` jobs (more is 413), enqueued all or nothing.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobBatch {
    /// The jobs, in order; an error names its index (`jobs[3].queue`).
    #[schema(min_items = 1, max_items = 10_000)]
    pub jobs: Vec<JobSpec>,
}

/// `POST /v1/jobs` 201 answer (schema only): `{"id"}` for one job, `{"ids"}` for a batch.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Enqueued {
    /// One job.
    One(EnqueueResponse),
    /// A batch.
    Batch(EnqueueBatchResponse),
}

/// `POST /v1/jobs` answer for one job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnqueueResponse {
    /// The job's id (the existing one's for a duplicate).
    pub id: uuid::Uuid,
    /// Present and true when `unique_key` matched an unfinished job.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// `POST /v1/jobs` answer for `{"jobs":[...]}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EnqueueBatchResponse {
    /// One id per job, in input order.
    pub ids: Vec<uuid::Uuid>,
    /// Indexes of jobs that were duplicates (their id is the existing job's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub duplicates: Vec<usize>,
}

/// `POST /v1/queues/{queue}/claim` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClaimBody {
    /// Who is claiming (required; absent or `null` is 422).
    #[serde(default)]
    #[schema(value_type = crate::validate::names::WorkerName, required = true)]
    pub worker: Option<String>,
    /// Most jobs to return, at most `limits.max_claim`; default 1.
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = 1, maximum = 1000)]
    pub max: Option<i64>,
    /// Lease length for these jobs, within `limits.min_lease_ms..=limits.max_lease_ms`;
    /// default each job's own `lease_ms`.
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = 10, maximum = 86_400_000)]
    pub lease_ms: Option<i64>,
    /// Long-poll: wait up to this long for a job (at most `limits.max_wait_ms`); default 0.
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = 0, maximum = 30_000)]
    pub wait_ms: Option<i64>,
}

/// A claim that passed [`ClaimBody::validate`]: what to ask the store, and how long to wait.
#[derive(Debug, Clone)]
pub struct ValidClaim {
    /// The store's request.
    pub request: ClaimRequest,
    /// Long-poll wait in milliseconds (0: answer at once).
    pub wait_ms: i64,
}

impl ClaimBody {
    /// Checks a claim of `queue` (the path's) against the limits: the queue, then `worker`,
    /// `max`, `lease_ms` and `wait_ms`, in that order.
    pub fn validate(self, queue: String, limits: &Limits) -> Result<ValidClaim> {
        validate::queue_name(&queue, limits, "queue")?;
        let worker = self.worker.ok_or_else(|| Error::invalid("worker", "worker is required"))?;
        validate::worker_name(&worker, limits, "worker")?;
        let max = self.max.unwrap_or(1);
        if max < 1 || max > limits.max_claim as i64 {
            return Err(Error::invalid("max", format!("max must be 1..={}, got {max}", limits.max_claim)));
        }
        let lease_ms = self.lease_ms.map(|ms| validate::lease_ms(ms, limits, "lease_ms")).transpose()?;
        let wait_ms = self.wait_ms.unwrap_or(0);
        if wait_ms < 0 || wait_ms > limits.max_wait_ms {
            return Err(Error::invalid(
                "wait_ms",
                format!("wait_ms must be 0..={}, got {wait_ms}", limits.max_wait_ms),
            ));
        }
        Ok(ValidClaim { request: ClaimRequest { queue, worker, max: max as usize, lease_ms }, wait_ms })
    }
}

/// `POST /v1/queues/{queue}/claim` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClaimResponse {
    /// Leased jobs, best first; empty when none was ready in time.
    pub jobs: Vec<ClaimedJob>,
}

/// `POST /v1/jobs/{id}/heartbeat` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBody {
    /// The current lease token.
    #[schema(min_length = 1)]
    pub lease: String,
    /// New lease length from now, within `limits.min_lease_ms..=limits.max_lease_ms`; default
    /// the job's `lease_ms`.
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = 10, maximum = 86_400_000)]
    pub extend_ms: Option<i64>,
    /// The worker sending it, so the registry sees it alive between claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::validate::names::WorkerName>)]
    pub worker: Option<String>,
    /// The worker's load, 0.0–1.0 (else 422): lowers its convoy's adaptive limit at 0.8+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub pressure: Option<f64>,
}

impl HeartbeatBody {
    /// Checks the lease, the extension, the worker name and the pressure; returns the checked
    /// extension.
    pub fn validate(&self, limits: &Limits) -> Result<Option<i64>> {
        lease_present(&self.lease, "lease")?;
        validate::pressure(self.pressure, "pressure")?;
        let extend = self.extend_ms.map(|ms| validate::lease_ms(ms, limits, "extend_ms")).transpose()?;
        if let Some(w) = &self.worker {
            validate::worker_name(w, limits, "worker")?;
        }
        Ok(extend)
    }
}

/// `POST /v1/jobs/{id}/complete` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBody {
    /// The current lease token.
    #[schema(min_length = 1)]
    pub lease: String,
    /// Optional JSON result, kept verbatim.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub result: Option<Box<RawValue>>,
    /// The worker's load, 0.0–1.0 (else 422): lowers its convoy's adaptive limit at 0.8+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub pressure: Option<f64>,
}

impl CompleteBody {
    /// Checks the lease, the result's size and the pressure.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        lease_present(&self.lease, "lease")?;
        validate::pressure(self.pressure, "pressure")?;
        if let Some(r) = &self.result {
            validate::json_size(r, limits.max_result_bytes, "result")?;
        }
        Ok(())
    }
}

/// `POST /v1/jobs/{id}/fail` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailBody {
    /// The current lease token.
    #[schema(min_length = 1)]
    pub lease: String,
    /// What went wrong.
    #[serde(default)]
    pub error: String,
    /// False sends the job to the dead-letter queue now; default true.
    #[serde(default)]
    pub retry: Option<bool>,
    /// The worker's load, 0.0–1.0 (else 422): lowers its convoy's adaptive limit at 0.8+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub pressure: Option<f64>,
}

impl FailBody {
    /// Checks the lease and the pressure (a long `error` is truncated by the store, never
    /// refused).
    pub fn validate(&self) -> Result<()> {
        lease_present(&self.lease, "lease")?;
        validate::pressure(self.pressure, "pressure")
    }
}

/// `POST /v1/jobs/{id}/release` body: give a claimed, unstarted job back.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseBody {
    /// The current lease token.
    #[schema(min_length = 1)]
    pub lease: String,
}

impl ReleaseBody {
    /// Checks the lease.
    pub fn validate(&self) -> Result<()> {
        lease_present(&self.lease, "lease")
    }
}

/// `POST /v1/jobs/{id}/cancel` body (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Kept as the job's `cancel_reason`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A job's id and new state.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StateResponse {
    /// Job id.
    pub id: uuid::Uuid,
    /// Its state now.
    pub state: JobState,
}

/// A batch item's job id: anything that is not a UUID names no job (404).
fn item_id(text: &str) -> Result<Uuid> {
    Uuid::parse_str(text).map_err(|_| Error::job_not_found(text))
}

/// One item of `POST /v1/jobs/complete`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteItemBody {
    /// Job id.
    pub id: String,
    /// The current lease token.
    pub lease: String,
    /// Optional JSON result.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub result: Option<Box<RawValue>>,
    /// The worker's load, 0.0–1.0 (else 422): lowers its convoy's adaptive limit at 0.8+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub pressure: Option<f64>,
}

impl CompleteItemBody {
    /// Checks item `index` (its id, lease and result size); returns its job id.
    pub fn validate(&self, index: usize, limits: &Limits) -> Result<Uuid> {
        let id = item_id(&self.id)?;
        lease_present(&self.lease, &format!("items[{index}].lease"))?;
        if let Some(r) = &self.result {
            validate::json_size(r, limits.max_result_bytes, &format!("items[{index}].result"))?;
        }
        Ok(id)
    }
}

/// `POST /v1/jobs/complete` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBatchBody {
    /// Completions, each applied on its own; at most `limits.max_batch` (else 413).
    #[schema(max_items = 10_000)]
    pub items: Vec<CompleteItemBody>,
}

/// One item of `POST /v1/jobs/fail`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailItemBody {
    /// Job id.
    pub id: String,
    /// The current lease token.
    pub lease: String,
    /// What went wrong.
    #[serde(default)]
    pub error: String,
    /// Default true.
    #[serde(default)]
    pub retry: Option<bool>,
    /// The worker's load, 0.0–1.0 (else 422): lowers its convoy's adaptive limit at 0.8+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub pressure: Option<f64>,
}

impl FailItemBody {
    /// Checks item `index` (its id and lease); returns its job id.
    pub fn validate(&self, index: usize) -> Result<Uuid> {
        let id = item_id(&self.id)?;
        lease_present(&self.lease, &format!("items[{index}].lease"))?;
        Ok(id)
    }
}

/// `POST /v1/jobs/fail` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FailBatchBody {
    /// Failures, each applied on its own; at most `limits.max_batch` (else 413).
    #[schema(max_items = 10_000)]
    pub items: Vec<FailItemBody>,
}

/// One item of `POST /v1/jobs/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatItemBody {
    /// Job id.
    pub id: String,
    /// The current lease token.
    pub lease: String,
    /// New lease length from now, within `limits.min_lease_ms..=limits.max_lease_ms`; default
    /// the job's `lease_ms`.
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 10, maximum = 86_400_000)]
    pub extend_ms: Option<i64>,
    /// The worker's load, 0.0–1.0 (else 422): lowers its convoy's adaptive limit at 0.8+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub pressure: Option<f64>,
}

impl HeartbeatItemBody {
    /// Checks item `index` (its id, lease and extension); returns what the store needs.
    pub fn validate(&self, index: usize, limits: &Limits) -> Result<crate::HeartbeatRequest> {
        let id = item_id(&self.id)?;
        lease_present(&self.lease, &format!("items[{index}].lease"))?;
        let extend_ms = self
            .extend_ms
            .map(|ms| validate::lease_ms(ms, limits, &format!("items[{index}].extend_ms")))
            .transpose()?;
        Ok(crate::HeartbeatRequest { id, lease: self.lease.clone(), extend_ms, pressure: self.pressure })
    }
}

/// `POST /v1/jobs/heartbeat` body: one lease extension per in-flight job, so a worker sends
/// one request per interval however many jobs it runs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBatchBody {
    /// The worker sending it, so the registry sees it alive between claims.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::validate::names::WorkerName>)]
    pub worker: Option<String>,
    /// Extensions, each applied on its own; at most `limits.max_batch` (else 413).
    #[schema(max_items = 10_000)]
    pub items: Vec<HeartbeatItemBody>,
}

/// `POST /v1/jobs/heartbeat` as the server reads it: every item must be a JSON object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBatchRequest {
    /// The worker sending it.
    #[serde(default)]
    pub worker: Option<String>,
    /// The items, in order.
    pub items: Vec<Obj<HeartbeatItemBody>>,
}

impl HeartbeatBatchRequest {
    /// Checks the worker name, the number of items (413 past `limits.max_batch`) and every
    /// item's `extend_ms` (a range the document states, so the whole request is refused);
    /// ids and leases are answered item by item.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        if let Some(w) = &self.worker {
            validate::worker_name(w, limits, "worker")?;
        }
        ItemsBody::<HeartbeatItemBody>::check_len(self.items.len(), limits)?;
        for (i, Obj(item)) in self.items.iter().enumerate() {
            if let Some(ms) = item.extend_ms {
                validate::lease_ms(ms, limits, &format!("items[{i}].extend_ms"))?;
            }
            validate::pressure(item.pressure, &format!("items[{i}].pressure"))?;
        }
        Ok(())
    }
}

/// The outcome of one heartbeat item.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatItemOutcome {
    /// The item's job id, as sent.
    pub id: String,
    /// Whether the lease was extended.
    pub ok: bool,
    /// The lease's new expiry, when extended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub lease_expires_at: Option<Timestamp>,
    /// Why it was not: `stale_lease` (the lease is lost: stop the work), `not_found`, or a
    /// validation error naming the item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
}

/// Answer of `POST /v1/jobs/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatBatchResponse {
    /// One outcome per item, in input order.
    pub results: Vec<HeartbeatItemOutcome>,
}

/// `{"items":[...]}` as the server reads it: every item must be a JSON object.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemsBody<T> {
    /// The items, in order.
    pub items: Vec<Obj<T>>,
}

impl<T> ItemsBody<T> {
    /// Checks the number of items against `limits.max_batch` (413 past it).
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        Self::check_len(self.items.len(), limits)
    }

    fn check_len(n: usize, limits: &Limits) -> Result<()> {
        if n > limits.max_batch {
            return Err(Error::too_large(
                "items",
                format!("{n} items; the batch limit is {}", limits.max_batch),
            ));
        }
        Ok(())
    }
}

/// The outcome of one batch item.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ItemOutcome {
    /// The item's job id, as sent.
    pub id: String,
    /// Whether the item was applied.
    pub ok: bool,
    /// The job's state after the item, when applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    /// For failures: attempts made so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// For failures: when the retry is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub run_at: Option<Timestamp>,
    /// Why the item was not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
}

/// Answer of the batch complete and fail endpoints.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    /// One outcome per item, in input order.
    pub results: Vec<ItemOutcome>,
}

/// A page of jobs.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct JobsPage {
    /// Jobs in insertion order.
    pub jobs: Vec<Job>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Query of `GET /v1/jobs` (and, without `state`, of `GET /v1/dlq`). An empty value is the
/// same as none. Other parameters are ignored.
#[derive(Debug, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only this queue (empty: every queue).
    #[param(pattern = "^[A-Za-z0-9._:-]{0,128}$", max_length = 128)]
    pub queue: Option<String>,
    /// Only this state (empty: every state).
    #[param(pattern = "^(scheduled|waiting|ready|running|completed|dead|cancelled)?$")]
    pub state: Option<String>,
    /// Page size: 1..=`limits.max_page_size`, default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page (empty: the first page): an integer in the int64
    /// range (the document's pattern says exactly that).
    pub cursor: Option<String>,
}

impl ListParams {
    /// The queue to list, checked; `None` (absent or empty) means every queue. Checked apart
    /// from [`ListParams::page`] so the server can check access to the queue in between.
    pub fn queue(&self, limits: &Limits) -> Result<Option<String>> {
        let queue = self.queue.clone().filter(|q| !q.is_empty());
        if let Some(q) = &queue {
            validate::queue_name(q, limits, "queue")?;
        }
        Ok(queue)
    }

    /// The state filter (`None`: every state) and the page size, checked.
    pub fn page(&self, limits: &Limits) -> Result<(Option<JobState>, usize)> {
        let state = match self.state.as_deref() {
            None | Some("") => None,
            Some(s) => Some(JobState::parse(s).ok_or_else(|| {
                Error::invalid("state", format!("unknown state {s:?}; one of scheduled, waiting, ready, running, completed, dead, cancelled"))
            })?),
        };
        let limit = self.limit.unwrap_or(100);
        if limit < 1 || limit > limits.max_page_size as i64 {
            return Err(Error::invalid("limit", format!("limit must be 1..={}", limits.max_page_size)));
        }
        Ok((state, limit as usize))
    }
}

/// One job of `POST /v1/import`: a job from another system, already queued or already done.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportItem {
    /// The job; its `unique_key` is required and dedups against jobs in any state.
    pub job: crate::validate::JobSpec,
    /// `ready` (default) or `completed`.
    #[serde(default)]
    #[schema(value_type = Option<ImportState>)]
    pub state: Option<String>,
    /// The result of a completed job.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>)]
    pub result: Option<Box<RawValue>>,
}

/// The state an imported job starts in (schema only: `ImportItem::state` is checked by the
/// server, 422 for any other value).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ImportState {
    /// Queued, to be run here.
    Ready,
    /// Already done elsewhere: kept as completed, with its `result`.
    Completed,
}

/// `POST /v1/import` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportBody {
    /// Jobs to import, all or nothing; at most `limits.max_batch` (else 413).
    #[schema(max_items = 10_000)]
    pub jobs: Vec<ImportItem>,
}

impl ImportBody {
    /// Checks every job (all or nothing, errors naming `jobs[i]`) and returns them as the
    /// store takes them, each marked as imported.
    pub fn validate(self, limits: &Limits) -> Result<Vec<NewJob>> {
        if self.jobs.len() > limits.max_batch {
            return Err(Error::too_large(
                "jobs",
                format!("{} jobs; the batch limit is {}", self.jobs.len(), limits.max_batch),
            ));
        }
        let mut jobs = Vec::with_capacity(self.jobs.len());
        for (i, item) in self.jobs.into_iter().enumerate() {
            let at = |e: Error| e.within(&format!("jobs[{i}]"));
            if item.job.unique_key.is_none() {
                return Err(at(Error::invalid("job.unique_key", "an imported job needs a unique_key")));
            }
            if item.job.payment.is_some() {
                return Err(at(Error::invalid("job.payment", "an imported job cannot be a paid job")));
            }
            let mut job = item.job.validate(limits).map_err(|e| at(e.within("job")))?;
            job.import = Some(match item.state.as_deref() {
                None | Some("ready") => crate::job::Import::Ready,
                Some("completed") => {
                    if let Some(r) = &item.result {
                        validate::json_size(r, limits.max_result_bytes, "result").map_err(at)?;
                    }
                    crate::job::Import::Completed { result: item.result }
                }
                Some(other) => {
                    return Err(at(Error::invalid(
                        "state",
                        format!("state must be ready or completed, not {other:?}"),
                    )));
                }
            });
            jobs.push(job);
        }
        Ok(jobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(json: &str) -> Result<ValidClaim> {
        serde_json::from_str::<ClaimBody>(json).unwrap().validate("q".into(), &Limits::default())
    }

    #[test]
    fn a_claim_checks_its_fields_in_order() {
        let field = |json: &str| claim(json).unwrap_err().field;
        assert_eq!(field(r#"{"max":0}"#).as_deref(), Some("worker"), "worker comes first");
        assert_eq!(field(r#"{"worker":"w","max":1001,"wait_ms":-1}"#).as_deref(), Some("max"));
        assert_eq!(field(r#"{"worker":"w","lease_ms":1}"#).as_deref(), Some("lease_ms"));
        assert_eq!(field(r#"{"worker":"w","wait_ms":30001}"#).as_deref(), Some("wait_ms"));
        let ok = claim(r#"{"worker":"w","max":3,"wait_ms":5}"#).unwrap();
        assert_eq!((ok.request.max, ok.wait_ms, ok.request.queue.as_str()), (3, 5, "q"));
        let bad_queue = ClaimBody::default().validate("a b".into(), &Limits::default()).unwrap_err();
        assert_eq!(bad_queue.field.as_deref(), Some("queue"));
    }

    #[test]
    fn batch_items_name_their_index() {
        let item = CompleteItemBody {
            id: Uuid::nil().to_string(),
            lease: String::new(),
            result: None,
            pressure: None,
        };
        assert_eq!(
            item.validate(4, &Limits::default()).unwrap_err().field.as_deref(),
            Some("items[4].lease")
        );
        let item = FailItemBody {
            id: "x".into(),
            lease: "l".into(),
            error: String::new(),
            retry: None,
            pressure: None,
        };
        assert_eq!(item.validate(0).unwrap_err().code.http_status(), 404);
    }
}
