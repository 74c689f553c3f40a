//! ferry-client: a Rust client for every ferry endpoint, and a worker runtime on top of it.
//!
//! `Client` is a thin typed layer over HTTP (one connection pool, JSON bodies from
//! `ferry_core::wire`), with one method per endpoint of the OpenAPI document; `stream` reads
//! the event streams (server-sent events and WebSocket); `worker` runs handlers with claims,
//! heartbeats and batched reports.

pub mod stream;
pub mod worker;

pub use stream::{EventSocket, EventStream};
pub use worker::{JobContext, JobError, Worker, WorkerStats};

use ferry_core::checkpoint::{PutOutcome, Thread, Tuple, WritesOutcome};
use ferry_core::item::Item;
use ferry_core::ledger::{Account, Transfer, Verification};
use ferry_core::memory::{AddOutcome, Episode};
use ferry_core::message::{AgentInfo, BroadcastSent, ChannelCursor, Message, Sent};
use ferry_core::schedule::{DeletedResponse, Schedule, SchedulePatch, ScheduleSpec, SchedulesResponse};
use ferry_core::validate::JobSpec;
use ferry_core::wire::*;
use ferry_core::{
    ClaimedJob, Error, ErrorCode, FailOutcome, HeartbeatOutcome, Job, QueueLimits, TokenRecord,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use uuid::Uuid;

/// What can go wrong talking to ferry.
#[derive(Debug, Clone)]
pub enum ClientError {
    /// The server answered with an error body.
    Api {
        /// HTTP status.
        status: u16,
        /// The server's error.
        error: Error,
    },
    /// The request did not get an answer (connection refused, reset, timeout); the text says
    /// where it went and what to check.
    Transport(String),
    /// The answer was not what the API promises.
    Decode(String),
    /// The request cannot be made as given (a server URL without `http://`): retrying cannot
    /// help, so it is not transient.
    Invalid(String),
}

/// What [`Client::backup`] received, verified against what the server stated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupReceipt {
    /// Bytes written.
    pub bytes: u64,
    /// Their lower-case hex SHA-256.
    pub sha256: String,
}

impl ClientError {
    /// Worth retrying: no answer, or the server said "later" (429, 502, 503, 504).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport(_) => true,
            ClientError::Api { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            ClientError::Decode(_) | ClientError::Invalid(_) => false,
        }
    }

    /// The API error code, if the server answered with one.
    pub fn code(&self) -> Option<ferry_core::ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            _ => None,
        }
    }

    /// The item as it is now, from a `version_conflict`, `precondition_failed` or
    /// `invalid_state` answer's `details.current`: what a retry builds on without a GET.
    pub fn conflict_current(&self) -> Option<Item> {
        match self {
            ClientError::Api { error, .. } => {
                let current = error.details.as_ref()?.get("current")?;
                Item::deserialize(current).ok()
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Api { status: 401, error } => {
                write!(f, "401: {error}; pass a token with --token or FERRY_TOKEN")
            }
            ClientError::Api { status, error } => write!(f, "{status}: {error}"),
            ClientError::Transport(e) | ClientError::Invalid(e) => write!(f, "{e}"),
            ClientError::Decode(e) => write!(f, "unexpected answer from ferry: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// Result of every client call.
pub type Result<T> = std::result::Result<T, ClientError>;

/// A ferry server at one base URL.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    name: Option<String>,
}

impl Client {
    /// A client for `base_url` (e.g. `http://127.0.0.1:7700`).
    pub fn new(base_url: &str) -> Client {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("HTTP client");
        Client { http, base: base_url.trim_end_matches('/').to_string(), token: None, name: None }
    }

    /// This client, sending `token` as `Authorization: Bearer` (servers with auth on need one).
    pub fn with_token(mut self, token: Option<String>) -> Client {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// This client, naming itself `name` (`X-Ferry-Client`: the rate limiter's key without a
    /// token; heartbeats carry it so the worker registry sees the worker alive).
    pub fn named(mut self, name: impl Into<String>) -> Client {
        self.name = Some(name.into());
        self
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// `req` with this client's token and name.
    fn identify(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        match &self.name {
            Some(n) => req.header("x-ferry-client", n),
            None => req,
        }
    }

    /// Sends with this client's token and name; a 4xx/5xx becomes `ClientError::Api` with the
    /// server's error body. Returns the status and the raw body.
    async fn fetch(&self, req: reqwest::RequestBuilder) -> Result<(u16, bytes::Bytes)> {
        let resp = self.identify(req).send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status().as_u16();
        let url = resp.url().to_string();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        if status >= 400 {
            return Err(api_error(status, &bytes, &url));
        }
        Ok((status, bytes))
    }

    /// A request that got no answer, said so that a person knows what to check: the URL it
    /// went to, the cause at the bottom of the error chain, and for a refused connection
    /// whether the server runs at all.
    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        if e.is_builder() {
            let hint = if self.base.contains("://") {
                String::new()
            } else {
                format!(": a server URL starts with http:// or https://, e.g. http://{}", self.base)
            };
            return ClientError::Invalid(format!(
                "invalid ferry URL {:?}{hint} (--url / FERRY_URL)",
                self.base
            ));
        }
        let mut cause: &dyn std::error::Error = e;
        let mut refused = false;
        while let Some(next) = cause.source() {
            if let Some(io) = next.downcast_ref::<std::io::Error>() {
                refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
            }
            cause = next;
        }
        if refused {
            return ClientError::Transport(format!(
                "cannot reach ferry at {}: connection refused; is ferry serve running? (--url / FERRY_URL)",
                self.base
            ));
        }
        let why = if e.is_timeout() { "timed out".to_string() } else { cause.to_string() };
        let what = if e.is_connect() { "cannot reach ferry at" } else { "lost the answer from ferry at" };
        ClientError::Transport(format!("{what} {}: {why}", self.base))
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<(u16, T)> {
        let (status, bytes) = self.fetch(req).await?;
        serde_json::from_slice(&bytes).map(|v| (status, v)).map_err(|e| ClientError::Decode(e.to_string()))
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Decode(e.to_string()))?;
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes);
        Ok(self.send(req).await?.1)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str, query: &[(&str, String)]) -> Result<T> {
        self.get_with(path, query).await
    }

    async fn get_with<Q: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, query: &Q) -> Result<T> {
        Ok(self.send(self.http.get(format!("{}{path}", self.base)).query(query)).await?.1)
    }

    async fn put<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let req = self.http.put(format!("{}{path}", self.base)).json(body);
        Ok(self.send(req).await?.1)
    }

    /// Creates a schedule.
    pub async fn create_schedule(&self, spec: &ScheduleSpec) -> Result<Schedule> {
        self.post("/v1/schedules", spec).await
    }

    /// Every schedule.
    pub async fn schedules(&self) -> Result<SchedulesResponse> {
        self.get("/v1/schedules", &[]).await
    }

    /// One schedule with its next `count` runs.
    pub async fn schedule(&self, name: &str, count: usize) -> Result<Schedule> {
        self.get_with(&format!("/v1/schedules/{name}"), &NextQuery { count: Some(count) }).await
    }

    /// Changes a schedule.
    pub async fn patch_schedule(&self, name: &str, patch: &SchedulePatch) -> Result<Schedule> {
        let req = self.http.patch(format!("{}/v1/schedules/{name}", self.base)).json(patch);
        Ok(self.send(req).await?.1)
    }

    /// Deletes a schedule.
    pub async fn delete_schedule(&self, name: &str) -> Result<DeletedResponse> {
        Ok(self.send(self.http.delete(format!("{}/v1/schedules/{name}", self.base))).await?.1)
    }

    /// Pauses (`true`) or resumes a schedule.
    pub async fn pause_schedule(&self, name: &str, paused: bool) -> Result<Schedule> {
        let op = if paused { "pause" } else { "resume" };
        self.post(&format!("/v1/schedules/{name}/{op}"), &serde_json::json!({})).await
    }

    /// Events after `since` matching `filters` (`queue`, `job_id`, `tag`, `type`), waiting up
    /// to `wait_ms` for one.
    pub async fn events(
        &self,
        since: Option<u64>,
        wait_ms: i64,
        filters: &[(&str, String)],
    ) -> Result<EventsResponse> {
        let mut q: Vec<(&str, String)> = filters.to_vec();
        if let Some(s) = since {
            q.push(("since", s.to_string()));
        }
        q.push(("wait_ms", wait_ms.to_string()));
        self.get("/v1/events", &q).await
    }

    /// Enqueues one job.
    pub async fn enqueue(&self, job: &JobSpec) -> Result<EnqueueResponse> {
        self.post("/v1/jobs", job).await
    }

    /// Enqueues a batch, all or nothing.
    pub async fn enqueue_batch(&self, jobs: &[JobSpec]) -> Result<EnqueueBatchResponse> {
        #[derive(Serialize)]
        struct Batch<'a> {
            jobs: &'a [JobSpec],
        }
        self.post("/v1/jobs", &Batch { jobs }).await
    }

    /// Imports jobs from another system (dedup by unique key in any state).
    pub async fn import(&self, jobs: Vec<ImportItem>) -> Result<EnqueueBatchResponse> {
        self.post("/v1/import", &ImportBody { jobs }).await
    }

    /// Claims jobs of `queue` (long-polls when `body.wait_ms` is set).
    pub async fn claim(&self, queue: &str, body: &ClaimBody) -> Result<Vec<ClaimedJob>> {
        let r: ClaimResponse = self.post(&format!("/v1/queues/{queue}/claim"), body).await?;
        Ok(r.jobs)
    }

    /// Extends a lease.
    pub async fn heartbeat(&self, id: Uuid, lease: &str, extend_ms: Option<i64>) -> Result<HeartbeatOutcome> {
        self.heartbeat_with(id, lease, extend_ms, None).await
    }

    /// Extends a lease and reports the worker's load (0.0–1.0) for its convoy's adaptive limit.
    pub async fn heartbeat_with(
        &self,
        id: Uuid,
        lease: &str,
        extend_ms: Option<i64>,
        pressure: Option<f64>,
    ) -> Result<HeartbeatOutcome> {
        self.post(
            &format!("/v1/jobs/{id}/heartbeat"),
            &HeartbeatBody { lease: lease.into(), extend_ms, worker: self.name.clone(), pressure },
        )
        .await
    }

    /// Completes a job.
    pub async fn complete(
        &self,
        id: Uuid,
        lease: &str,
        result: Option<serde_json::Value>,
    ) -> Result<StateResponse> {
        let result = result.map(|v| serde_json::value::to_raw_value(&v).expect("JSON value"));
        self.post(
            &format!("/v1/jobs/{id}/complete"),
            &CompleteBody { lease: lease.into(), result, pressure: None },
        )
        .await
    }

    /// Fails a job (retry after backoff unless `retry` is false).
    pub async fn fail(&self, id: Uuid, lease: &str, error: &str, retry: bool) -> Result<FailOutcome> {
        let body = FailBody { lease: lease.into(), error: error.into(), retry: Some(retry), pressure: None };
        self.post(&format!("/v1/jobs/{id}/fail"), &body).await
    }

    /// Gives a claimed, unstarted job back.
    pub async fn release(&self, id: Uuid, lease: &str) -> Result<StateResponse> {
        self.post(&format!("/v1/jobs/{id}/release"), &ReleaseBody { lease: lease.into() }).await
    }

    /// Completes many jobs; one outcome per item.
    pub async fn complete_batch(&self, items: Vec<CompleteItemBody>) -> Result<BatchResponse> {
        self.post("/v1/jobs/complete", &CompleteBatchBody { items }).await
    }

    /// Fails many jobs; one outcome per item.
    pub async fn fail_batch(&self, items: Vec<FailItemBody>) -> Result<BatchResponse> {
        self.post("/v1/jobs/fail", &FailBatchBody { items }).await
    }

    /// Extends many leases in one request (a worker's whole in-flight set); one outcome per
    /// item, a lost lease as `ok: false` with `stale_lease`.
    pub async fn heartbeat_batch(&self, items: Vec<HeartbeatItemBody>) -> Result<HeartbeatBatchResponse> {
        self.post("/v1/jobs/heartbeat", &HeartbeatBatchBody { worker: self.name.clone(), items }).await
    }

    /// Cancels a job that is not running.
    pub async fn cancel(&self, id: &str, reason: Option<&str>) -> Result<StateResponse> {
        self.post(&format!("/v1/jobs/{id}/cancel"), &CancelBody { reason: reason.map(String::from) }).await
    }

    /// One job with its history.
    pub async fn get_job(&self, id: &str) -> Result<Job> {
        self.get(&format!("/v1/jobs/{id}"), &[]).await
    }

    /// One page of jobs.
    pub async fn list_jobs(
        &self,
        queue: Option<&str>,
        state: Option<&str>,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<JobsPage> {
        let params = ListParams {
            queue: queue.map(String::from),
            state: state.map(String::from),
            limit: limit.map(|l| l as i64),
            cursor: cursor.map(String::from),
        };
        self.get_with("/v1/jobs", &params).await
    }

    /// Stats of every queue.
    pub async fn queues(&self) -> Result<QueuesResponse> {
        self.get("/v1/queues", &[]).await
    }

    /// Pauses a queue.
    pub async fn pause(&self, queue: &str) -> Result<PauseResponse> {
        self.post(&format!("/v1/queues/{queue}/pause"), &serde_json::json!({})).await
    }

    /// Resumes a queue.
    pub async fn resume(&self, queue: &str) -> Result<PauseResponse> {
        self.post(&format!("/v1/queues/{queue}/resume"), &serde_json::json!({})).await
    }

    /// One page of the dead-letter queue.
    pub async fn dlq(
        &self,
        queue: Option<&str>,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<JobsPage> {
        let params = DlqParams {
            queue: queue.map(String::from),
            limit: limit.map(|l| l as i64),
            cursor: cursor.map(String::from),
        };
        self.get_with("/v1/dlq", &params).await
    }

    /// Replays dead jobs selected by ids or queue.
    pub async fn dlq_replay(&self, selector: &DlqSelectorBody) -> Result<ReplayResponse> {
        self.post("/v1/dlq/replay", selector).await
    }

    /// Purges dead jobs selected by ids or queue.
    pub async fn dlq_purge(&self, selector: &DlqSelectorBody) -> Result<PurgeResponse> {
        self.post("/v1/dlq/purge", selector).await
    }

    /// Version, backend, uptime and memory of the server.
    pub async fn server_info(&self) -> Result<ServerInfo> {
        self.get("/v1/server", &[]).await
    }

    /// `GET /healthz`: whether the process answers at all.
    pub async fn health(&self) -> Result<HealthResponse> {
        self.get("/healthz", &[]).await
    }

    /// `GET /readyz`.
    pub async fn ready(&self) -> Result<HealthResponse> {
        self.get("/readyz", &[]).await
    }

    /// The Prometheus metrics, in the text exposition format.
    pub async fn metrics(&self) -> Result<String> {
        let (_, bytes) = self.fetch(self.http.get(format!("{}/metrics", self.base))).await?;
        String::from_utf8(bytes.to_vec()).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// The server's OpenAPI 3.1 document.
    pub async fn openapi(&self) -> Result<serde_json::Value> {
        self.get("/v1/openapi.json", &[]).await
    }

    /// Key figures over the last minute, five minutes and hour, and current readings.
    pub async fn stats(&self) -> Result<StatsResponse> {
        self.get("/v1/stats", &[]).await
    }

    /// The scaling advisor's verdict now (the server records it in its history).
    pub async fn advice(&self, record: bool) -> Result<Advice> {
        let q: &[(&str, String)] = if record { &[("record", "true".to_string())] } else { &[] };
        self.get("/v1/advice", q).await
    }

    /// Streams a consistent copy of the server's SQLite database (`GET /v1/backup`, admin) into
    /// `out`, checking that what arrived has the size and SHA-256 the server stated; a short or
    /// altered copy is an error, so a receipt means the bytes written are the server's copy.
    pub async fn backup(&self, out: &mut (dyn std::io::Write + Send)) -> Result<BackupReceipt> {
        use sha2::Digest;
        let req = self.http.get(format!("{}/v1/backup", self.base));
        let mut resp = self.identify(req).send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let url = resp.url().to_string();
            let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
            return Err(api_error(status, &bytes, &url));
        }
        let stated = resp
            .headers()
            .get("x-ferry-backup-sha256")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| ClientError::Decode("the backup answer has no x-ferry-backup-sha256".into()))?;
        let length = resp.content_length();
        let mut digest = sha2::Sha256::new();
        let mut bytes = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.unreachable(&e))? {
            digest.update(&chunk);
            bytes += chunk.len() as u64;
            out.write_all(&chunk)
                .map_err(|e| ClientError::Invalid(format!("cannot write the backup: {e}")))?;
        }
        let sha256: String = digest.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if sha256 != stated || length.is_some_and(|n| n != bytes) {
            return Err(ClientError::Decode(format!(
                "the backup arrived altered or short: {bytes} bytes with SHA-256 {sha256}, the server sent \
                 {length:?} bytes with SHA-256 {stated}"
            )));
        }
        Ok(BackupReceipt { bytes, sha256 })
    }

    /// The advisor's past verdicts, oldest first.
    pub async fn advice_history(&self) -> Result<AdviceHistory> {
        self.get("/v1/advice/history", &[]).await
    }

    /// Workers registered by their claims and heartbeats.
    pub async fn workers(&self) -> Result<WorkersResponse> {
        self.get("/v1/workers", &[]).await
    }

    /// Mints an API token; the answer holds its secret, shown only this once.
    pub async fn create_token(&self, body: &TokenBody) -> Result<NewToken> {
        self.post("/v1/tokens", body).await
    }

    /// Every API token, revoked ones included (never their secrets; `hash` is empty).
    pub async fn tokens(&self) -> Result<TokensResponse> {
        self.get("/v1/tokens", &[]).await
    }

    /// Revokes a token; returns its record.
    pub async fn revoke_token(&self, id: Uuid) -> Result<TokenRecord> {
        Ok(self.send(self.http.delete(format!("{}/v1/tokens/{id}", self.base))).await?.1)
    }

    /// A queue's flow limits (all unset when it has none).
    pub async fn queue_limits(&self, queue: &str) -> Result<LimitsResponse> {
        self.get(&format!("/v1/queues/{queue}/limits"), &[]).await
    }

    /// Sets a queue's flow limits; the unset ones are cleared.
    pub async fn set_queue_limits(&self, queue: &str, limits: &QueueLimits) -> Result<LimitsResponse> {
        self.put(&format!("/v1/queues/{queue}/limits"), limits).await
    }

    /// Registered hosts with their probed status.
    pub async fn hosts(&self) -> Result<HostsResponse> {
        self.get("/v1/hosts", &[]).await
    }

    /// Registers a host whose health URL the server probes.
    pub async fn create_host(&self, body: &HostBody) -> Result<HostView> {
        self.post("/v1/hosts", body).await
    }

    /// Forgets a host.
    pub async fn delete_host(&self, name: &str) -> Result<()> {
        self.fetch(self.http.delete(format!("{}/v1/hosts/{name}", self.base))).await.map(|_| ())
    }

    /// Server-sent events (`GET /v1/events/stream`) matching `query`, from `last_event_id`
    /// when given (it wins over `query.since`).
    pub async fn event_stream(&self, query: &EventQuery, last_event_id: Option<u64>) -> Result<EventStream> {
        let mut req = self.http.get(format!("{}/v1/events/stream", self.base)).query(query);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = self.identify(req).send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status().as_u16();
        if status >= 400 {
            let url = resp.url().to_string();
            let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
            return Err(api_error(status, &bytes, &url));
        }
        Ok(EventStream::new(resp))
    }

    /// A WebSocket on `GET /v1/ws`: the rooms `query` names are joined at connect; more are
    /// joined and left with [`EventSocket::subscribe`] and [`EventSocket::unsubscribe`].
    pub async fn event_socket(&self, query: &EventQuery) -> Result<EventSocket> {
        let req = self
            .identify(self.http.get(format!("{}/v1/ws", self.base)).query(query))
            .build()
            .map_err(|e| self.unreachable(&e))?;
        EventSocket::connect(req).await
    }

    /// Creates a convoy with its first members (a repeat of its `id` answers `duplicate`).
    pub async fn create_convoy(&self, body: &ConvoyBody) -> Result<ConvoyCreatedResponse> {
        self.post("/v1/convoys", body).await
    }

    /// Adds members to an open convoy.
    pub async fn add_convoy_members(&self, id: &str, members: &[MemberSpec]) -> Result<MembersAdded> {
        self.post(&format!("/v1/convoys/{id}/members"), &MembersBody { members: members.to_vec() }).await
    }

    /// Seals a convoy: it takes no more members and ends once none is live.
    pub async fn seal_convoy(&self, id: &str) -> Result<ferry_core::convoy::Convoy> {
        self.post(&format!("/v1/convoys/{id}/seal"), &serde_json::json!({})).await
    }

    /// Cancels a convoy: every member not running is cancelled.
    pub async fn cancel_convoy(&self, id: &str) -> Result<ferry_core::convoy::Convoy> {
        self.post(&format!("/v1/convoys/{id}/cancel"), &serde_json::json!({})).await
    }

    /// One convoy; with `wait_ms`, once it ended or when the wait is over.
    pub async fn get_convoy(&self, id: &str, wait_ms: Option<i64>) -> Result<ferry_core::convoy::Convoy> {
        self.get_with(&format!("/v1/convoys/{id}"), &ConvoyWaitQuery { wait_ms }).await
    }

    /// One page of convoys, oldest first.
    pub async fn list_convoys(
        &self,
        state: Option<&str>,
        queue: Option<&str>,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<ConvoysPage> {
        let mut q: Vec<(&str, String)> = Vec::new();
        q.extend(state.map(|s| ("state", s.to_string())));
        q.extend(queue.map(|s| ("queue", s.to_string())));
        q.extend(limit.map(|l| ("limit", l.to_string())));
        q.extend(cursor.map(|c| ("cursor", c.to_string())));
        self.get("/v1/convoys", &q).await
    }

    /// One page of a convoy's members, in the order added.
    pub async fn convoy_members(
        &self,
        id: &str,
        state: Option<&str>,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<MembersPage> {
        let mut q: Vec<(&str, String)> = Vec::new();
        q.extend(state.map(|s| ("state", s.to_string())));
        q.extend(limit.map(|l| ("limit", l.to_string())));
        q.extend(cursor.map(|c| ("cursor", c.to_string())));
        self.get(&format!("/v1/convoys/{id}/members"), &q).await
    }

    /// Creates a work item; `duplicate` in the answer tells an exact repeat (200) from a new
    /// item (201).
    pub async fn create_item(&self, body: &CreateItemBody) -> Result<ItemResponse> {
        self.post("/v1/items", body).await
    }

    /// One work item as it is now.
    pub async fn get_item(&self, id: &str) -> Result<Item> {
        let r: ItemResponse = self.get(&format!("/v1/items/{id}"), &[]).await?;
        Ok(r.item)
    }

    /// One work item once its version is above `version_gt`, or as it is when `wait_ms` ends
    /// (a long-poll: watch an item without a stream).
    pub async fn wait_item(&self, id: &str, version_gt: i64, wait_ms: i64) -> Result<Item> {
        let q = GetItemQuery { wait_version_gt: Some(version_gt), wait_ms: Some(wait_ms) };
        let r: ItemResponse = self.get_with(&format!("/v1/items/{id}"), &q).await?;
        Ok(r.item)
    }

    /// One page of work items, by id, filtered by `query`.
    pub async fn list_items(&self, query: &ItemsQuery) -> Result<ItemsPage> {
        self.get_with("/v1/items", query).await
    }

    /// One page of an item's kept versions, newest first: who changed which paths, and how.
    pub async fn item_history(
        &self,
        id: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<HistoryPage> {
        let q = HistoryQuery { limit, cursor: cursor.map(String::from) };
        self.get_with(&format!("/v1/items/{id}/history"), &q).await
    }

    /// Patches a work item (one compare-and-set when `body.expected_version` is set; a
    /// conflict is 409 `version_conflict` with `details.current`).
    pub async fn patch_item(&self, id: &str, body: &PatchItemBody) -> Result<PatchItemResponse> {
        let req = self.http.patch(format!("{}/v1/items/{id}", self.base)).json(body);
        Ok(self.send(req).await?.1)
    }

    /// Patches a work item with `If-Match: "version"` (HTTP's conditional write: strict unless
    /// `body.mode` says merge; a conflict is 412 `precondition_failed`).
    pub async fn patch_item_if_match(
        &self,
        id: &str,
        version: i64,
        body: &PatchItemBody,
    ) -> Result<PatchItemResponse> {
        let req = self
            .http
            .patch(format!("{}/v1/items/{id}", self.base))
            .header(reqwest::header::IF_MATCH, format!("\"{version}\""))
            .json(body);
        Ok(self.send(req).await?.1)
    }

    /// Applies item ops in order in one transaction, all or nothing (the failing op's error
    /// names it as `ops[i]`).
    pub async fn batch_items(&self, body: &BatchItemsBody) -> Result<BatchItemsResponse> {
        self.post("/v1/items/batch", body).await
    }

    /// Sends a message to agents by name (`duplicate` in the answer tells a repeat of an
    /// earlier send with the same `from` and `dedup_key`).
    pub async fn send_message(&self, body: &SendBody) -> Result<Sent> {
        self.post("/v1/messages", body).await
    }

    /// Broadcasts a message on a channel (default `all`).
    pub async fn broadcast(&self, body: &BroadcastBody) -> Result<BroadcastSent> {
        self.post("/v1/broadcasts", body).await
    }

    /// Receives messages of `agent`'s inbox, oldest first (long-polls when `body.wait_ms` is
    /// set); each is held for the visibility and comes with a receipt to ack or nack.
    pub async fn receive(&self, agent: &str, body: &ReceiveBody) -> Result<Vec<Message>> {
        let r: ReceiveResponse = self.post(&format!("/v1/agents/{agent}/receive"), body).await?;
        Ok(r.messages)
    }

    /// Acks received messages by their receipts; one result per receipt, a stale one as
    /// `ok: false` with `stale_lease`.
    pub async fn ack(&self, agent: &str, receipts: &[String]) -> Result<Vec<ReceiptResult>> {
        let body = AckBody { receipts: receipts.to_vec() };
        let r: ReceiptResults = self.post(&format!("/v1/agents/{agent}/ack"), &body).await?;
        Ok(r.results)
    }

    /// Hands received messages back, visible again after `delay_ms` (default 0); one result
    /// per receipt.
    pub async fn nack(
        &self,
        agent: &str,
        receipts: &[String],
        delay_ms: Option<i64>,
    ) -> Result<Vec<ReceiptResult>> {
        let body = NackBody { receipts: receipts.to_vec(), delay_ms };
        let r: ReceiptResults = self.post(&format!("/v1/agents/{agent}/nack"), &body).await?;
        Ok(r.results)
    }

    /// One page of `agent`'s dead letters.
    pub async fn dead_messages(
        &self,
        agent: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<DeadPage> {
        let q = PageQuery { limit, cursor: cursor.map(String::from) };
        self.get_with(&format!("/v1/agents/{agent}/dead"), &q).await
    }

    /// Puts `agent`'s dead letters (only `ids` when given) back in its inbox; returns how many.
    pub async fn replay_dead(&self, agent: &str, ids: Option<Vec<Uuid>>) -> Result<u64> {
        let body = ReplayMessagesBody { ids };
        let r: ReplayedResponse = self.post(&format!("/v1/agents/{agent}/dead/replay"), &body).await?;
        Ok(r.replayed)
    }

    /// Sets every channel `agent` is subscribed to; returns the subscriptions with their cursors.
    pub async fn set_channels(&self, agent: &str, channels: &[String]) -> Result<Vec<ChannelCursor>> {
        let body = ChannelsBody { channels: channels.to_vec() };
        let r: ChannelsResponse = self.put(&format!("/v1/agents/{agent}/channels"), &body).await?;
        Ok(r.channels)
    }

    /// One page of agents (inboxes), by name.
    pub async fn list_agents(&self, limit: Option<usize>, cursor: Option<&str>) -> Result<AgentsPage> {
        let q = PageQuery { limit, cursor: cursor.map(String::from) };
        self.get_with("/v1/agents", &q).await
    }

    /// One agent's inbox counts and channels (404 `not_found` if no send or receive named it).
    pub async fn get_agent(&self, name: &str) -> Result<AgentInfo> {
        self.get(&format!("/v1/agents/{name}"), &[]).await
    }

    /// Creates a ledger account (a repeat with the same fields answers it with `duplicate`).
    pub async fn create_account(&self, body: &AccountBody) -> Result<Account> {
        self.post("/v1/ledger/accounts", body).await
    }

    /// Creates ledger accounts all or nothing, in one request (the failing one's error names
    /// it as `accounts[i]`).
    pub async fn create_accounts(&self, accounts: &[AccountBody]) -> Result<Vec<Account>> {
        #[derive(Serialize)]
        struct Batch<'a> {
            accounts: &'a [AccountBody],
        }
        let r: AccountsResponse = self.post("/v1/ledger/accounts", &Batch { accounts }).await?;
        Ok(r.accounts)
    }

    /// Closes a ledger account: it takes no new transfers, its pending ones still settle.
    pub async fn close_account(&self, id: &str) -> Result<Account> {
        self.post(&format!("/v1/ledger/accounts/{}/close", segment(id)), &serde_json::json!({})).await
    }

    /// One ledger account with its balances.
    pub async fn account(&self, id: &str) -> Result<Account> {
        self.get(&format!("/v1/ledger/accounts/{}", segment(id)), &[]).await
    }

    /// One page of ledger accounts in id order (only `ledger`'s when given).
    pub async fn accounts(
        &self,
        ledger: Option<u32>,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<AccountsPage> {
        let mut q: Vec<(&str, String)> = Vec::new();
        q.extend(ledger.map(|l| ("ledger", l.to_string())));
        q.extend(limit.map(|l| ("limit", l.to_string())));
        q.extend(cursor.map(|c| ("cursor", c.to_string())));
        self.get("/v1/ledger/accounts", &q).await
    }

    /// Makes one transfer; its `id` is the idempotency key (a repeat answers the original with
    /// `duplicate`, other fields are a 409 `conflict`, a refusal a 409 `invalid_state`).
    pub async fn transfer(&self, body: &TransferBody) -> Result<Transfer> {
        self.post("/v1/ledger/transfers", body).await
    }

    /// Makes transfers all or nothing in one request: one error (with `details.index`) and
    /// nothing written, not even a refusal.
    pub async fn transfers(&self, transfers: &[TransferBody]) -> Result<Vec<Transfer>> {
        let r: TransfersResponse =
            self.post("/v1/ledger/transfers", &TransferBatch { transfers, atomic: true }).await?;
        Ok(r.transfers)
    }

    /// Makes transfers each on its own in one request (`atomic: false`): one result per
    /// transfer, in input order, a refused one remembered as refused.
    pub async fn transfers_each(&self, transfers: &[TransferBody]) -> Result<Vec<TransferResult>> {
        let r: TransferResults =
            self.post("/v1/ledger/transfers", &TransferBatch { transfers, atomic: false }).await?;
        Ok(r.results)
    }

    /// Posts a pending transfer: all of it when `amount` is `None`, else that much (the rest
    /// is released).
    pub async fn post_transfer(&self, id: &str, amount: Option<i64>) -> Result<Transfer> {
        self.post(&format!("/v1/ledger/transfers/{}/post", segment(id)), &PostBody { amount }).await
    }

    /// Voids a pending transfer, releasing what it held.
    pub async fn void_transfer(&self, id: &str) -> Result<Transfer> {
        self.post(&format!("/v1/ledger/transfers/{}/void", segment(id)), &serde_json::json!({})).await
    }

    /// One transfer as it is now (a refused one too, with its `reason`).
    pub async fn get_transfer(&self, id: &str) -> Result<Transfer> {
        self.get(&format!("/v1/ledger/transfers/{}", segment(id)), &[]).await
    }

    /// One page of an account's statement: the transfers it is a side of, oldest first.
    pub async fn statement(
        &self,
        account: &str,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<TransfersPage> {
        let mut q: Vec<(&str, String)> = Vec::new();
        q.extend(limit.map(|l| ("limit", l.to_string())));
        q.extend(cursor.map(|c| ("cursor", c.to_string())));
        self.get(&format!("/v1/ledger/accounts/{}/transfers", segment(account)), &q).await
    }

    /// One page of the ledger's own event chain (the audit trail), oldest first.
    pub async fn ledger_events(
        &self,
        limit: Option<usize>,
        cursor: Option<&str>,
    ) -> Result<LedgerEventsPage> {
        let mut q: Vec<(&str, String)> = Vec::new();
        q.extend(limit.map(|l| ("limit", l.to_string())));
        q.extend(cursor.map(|c| ("cursor", c.to_string())));
        self.get("/v1/ledger/events", &q).await
    }

    /// Replays the ledger (from the first event with `full`, else from the last snapshot) and
    /// checks it against the live balances; `repair` (scope `admin`) rewrites them from an
    /// intact chain.
    pub async fn verify_ledger(&self, full: bool, repair: bool) -> Result<Verification> {
        self.post("/v1/ledger/verify", &VerifyBody { full, repair }).await
    }

    /// Read-modify-write of a work item as `agent`: reads it, sends `f`'s patch with
    /// `expected_version` set to the version read and `agent` set, and on 409
    /// `version_conflict` reruns `f` on the conflict's `details.current` (no extra GET), up to
    /// [`UPDATE_ATTEMPTS`] attempts with [`UPDATE_JITTER_MS`] of random sleep between them.
    /// `invalid_state` and every other error are returned at once (a retry cannot fix them).
    pub async fn update<F>(&self, id: &str, agent: &str, mut f: F) -> Result<PatchItemResponse>
    where
        F: FnMut(&Item) -> PatchItemBody,
    {
        let mut item = self.get_item(id).await?;
        let mut attempt = 1;
        loop {
            let mut body = f(&item);
            body.agent = Some(agent.to_string());
            body.expected_version = Some(item.version);
            match self.patch_item(id, &body).await {
                Ok(r) => return Ok(r),
                Err(e) if attempt < UPDATE_ATTEMPTS && e.code() == Some(ErrorCode::VersionConflict) => {
                    attempt += 1;
                    let (lo, hi) = UPDATE_JITTER_MS;
                    tokio::time::sleep(Duration::from_millis(rand::random_range(lo..=hi))).await;
                    item = match e.conflict_current() {
                        Some(current) => current,
                        // A conflict without a readable `current` (not this server's answer):
                        // read it instead.
                        None => self.get_item(id).await?,
                    };
                }
                Err(e) => return Err(e),
            }
        }
    }
    // ---- checkpoints ----

    /// Stores a checkpoint with the blobs of its new versions in namespace `ns`; a byte-identical
    /// repeat answers `duplicate`, other content `replaced` (or 409 `conflict` with
    /// `if_none_match`).
    pub async fn put_checkpoint(
        &self,
        thread: &str,
        ns: &str,
        id: &str,
        body: &PutCheckpointBody,
        if_none_match: bool,
    ) -> Result<PutOutcome> {
        let url = format!("{}/v1/threads/{}/checkpoints/{}", self.base, segment(thread), segment(id));
        let mut req = self.http.put(url).query(&[("ns", ns)]).json(body);
        if if_none_match {
            req = req.header(reqwest::header::IF_NONE_MATCH, "*");
        }
        Ok(self.send(req).await?.1)
    }

    /// Stores a task's pending writes for a checkpoint (they may precede it).
    pub async fn put_checkpoint_writes(
        &self,
        thread: &str,
        ns: &str,
        id: &str,
        body: &WritesBody,
    ) -> Result<WritesOutcome> {
        let url = format!("{}/v1/threads/{}/checkpoints/{}/writes", self.base, segment(thread), segment(id));
        Ok(self.send(self.http.post(url).query(&[("ns", ns)]).json(body)).await?.1)
    }

    /// One checkpoint with its blobs and pending writes; `None`: the namespace's newest.
    pub async fn checkpoint(&self, thread: &str, ns: &str, id: Option<&str>) -> Result<Tuple> {
        let path = format!("/v1/threads/{}/checkpoints/{}", segment(thread), segment(id.unwrap_or("latest")));
        self.get(&path, &[("ns", ns.to_string())]).await
    }

    /// One page of checkpoints, newest first (`query` as the list endpoint takes it).
    pub async fn checkpoints(&self, query: &[(&str, String)]) -> Result<CheckpointsPage> {
        self.get("/v1/checkpoints", query).await
    }

    /// One page of threads by id.
    pub async fn threads(&self, query: &[(&str, String)]) -> Result<ThreadsPage> {
        self.get("/v1/threads", query).await
    }

    /// One thread's settings and counts.
    pub async fn thread(&self, thread: &str) -> Result<Thread> {
        self.get(&format!("/v1/threads/{}", segment(thread)), &[]).await
    }

    /// Changes a thread's metadata or retention.
    pub async fn patch_thread(&self, thread: &str, body: &ThreadPatchBody) -> Result<Thread> {
        let req = self.http.patch(format!("{}/v1/threads/{}", self.base, segment(thread))).json(body);
        Ok(self.send(req).await?.1)
    }

    /// Deletes a thread with everything it holds.
    pub async fn delete_thread(&self, thread: &str) -> Result<ThreadDeleted> {
        Ok(self.send(self.http.delete(format!("{}/v1/threads/{}", self.base, segment(thread)))).await?.1)
    }

    /// Copies a thread to `to` (which must hold no checkpoints).
    pub async fn copy_thread(&self, thread: &str, to: &str) -> Result<Copied> {
        self.post(&format!("/v1/threads/{}/copy", segment(thread)), &CopyBody { to: to.into() }).await
    }

    /// Prunes threads: `KeepLatest` keeps each namespace's newest checkpoint, `Delete` all.
    pub async fn prune_checkpoints(&self, threads: &[String], strategy: PruneStrategy) -> Result<Deleted> {
        self.post("/v1/checkpoints/prune", &PruneBody { threads: threads.to_vec(), strategy: Some(strategy) })
            .await
    }

    /// Deletes the checkpoints of runs, by `metadata.run_id`.
    pub async fn delete_checkpoint_runs(&self, run_ids: &[String]) -> Result<Deleted> {
        self.post("/v1/checkpoints/delete-runs", &DeleteRunsBody { run_ids: run_ids.to_vec() }).await
    }
}

/// Episodic memory.
impl Client {
    /// Stores an episode: 201 `{id, created_at}`, or a resend's stored id with `duplicate`.
    pub async fn add_episode(&self, body: &EpisodeBody) -> Result<AddOutcome> {
        self.post("/v1/memory/episodes", body).await
    }

    /// Stores episodes, all or none; their ids in order.
    pub async fn add_episodes(&self, episodes: Vec<EpisodeBody>) -> Result<EpisodeIds> {
        self.post("/v1/memory/episodes/batch", &EpisodeBatchBody { episodes }).await
    }

    /// One episode.
    pub async fn episode(&self, id: Uuid) -> Result<Episode> {
        self.get(&format!("/v1/memory/episodes/{id}"), &[]).await
    }

    /// A page of episodes, newest first (`query`: the list's filters, `limit`, `cursor`).
    pub async fn episodes(&self, query: &EpisodeListQuery) -> Result<EpisodePage> {
        self.get_with("/v1/memory/episodes", query).await
    }

    /// Changes an episode's tags or importance; with `if_version`, only at that version (else
    /// 412 `precondition_failed`).
    pub async fn patch_episode(
        &self,
        id: Uuid,
        body: &EpisodePatchBody,
        if_version: Option<i64>,
    ) -> Result<Episode> {
        let mut req = self.http.patch(format!("{}/v1/memory/episodes/{id}", self.base)).json(body);
        if let Some(v) = if_version {
            req = req.header(reqwest::header::IF_MATCH, format!("\"{v}\""));
        }
        Ok(self.send(req).await?.1)
    }

    /// Deletes an episode (404 if absent).
    pub async fn delete_episode(&self, id: Uuid) -> Result<()> {
        self.fetch(self.http.delete(format!("{}/v1/memory/episodes/{id}", self.base))).await.map(|_| ())
    }

    /// Searches a namespace.
    pub async fn search_memory(&self, body: &SearchBody) -> Result<SearchResult> {
        self.post("/v1/memory/search", body).await
    }

    /// Counts of a namespace (or of all).
    pub async fn memory_stats(&self, namespace: Option<&str>) -> Result<MemoryStats> {
        let q: Vec<(&str, String)> = namespace.map(|n| ("namespace", n.to_string())).into_iter().collect();
        self.get("/v1/memory/stats", &q).await
    }

    /// Compares every derived row with its episode; `repair` rewrites those that differ.
    pub async fn reconcile_memory(&self, body: &ReconcileBody) -> Result<ReconcileReport> {
        self.post("/v1/memory/reconcile", body).await
    }

    /// Starts a rebuild of every derived row (progress in [`Client::memory_stats`]).
    pub async fn rebuild_memory(&self, body: &RebuildBody) -> Result<RebuildProgress> {
        self.post("/v1/memory/rebuild", body).await
    }
}

/// Attempts [`Client::update`] makes in total before a `version_conflict` is returned (the
/// seed's policy: enough for contention between a few writers, short enough to surface a
/// hot item instead of hammering it).
pub const UPDATE_ATTEMPTS: u32 = 3;

/// Range (inclusive, in ms) of the random sleep between [`Client::update`] attempts, so
/// writers that conflicted together do not retry in lockstep.
pub const UPDATE_JITTER_MS: (u64, u64) = (2, 50);

/// `{"transfers": [...], "atomic": bool}` borrowing the transfers (no copy of a large batch).
#[derive(Serialize)]
struct TransferBatch<'a> {
    transfers: &'a [TransferBody],
    atomic: bool,
}

/// A ledger id as one URL path segment: every byte outside `[A-Za-z0-9._~:-]` percent-encoded,
/// so an id's own `%` (as in `worker:gpu%20box`) reaches the server as `%`, not as an escape.
fn segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b':' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The error a 4xx/5xx answer stands for: the server's error body, or its text.
fn api_error(status: u16, bytes: &[u8], url: &str) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => ClientError::Api { status, error: b.error },
        Err(_) => ClientError::Api { status, error: foreign_error(status, bytes, url) },
    }
}

/// An error answer without ferry's error body: something else answered at that address (a
/// proxy, another web server). The code follows the status, so a proxy's 502/503 stays
/// transient; the text says what answered and what to check.
fn foreign_error(status: u16, bytes: &[u8], url: &str) -> Error {
    use ferry_core::ErrorCode as C;
    let code = match status {
        401 => C::Unauthorized,
        403 => C::Forbidden,
        404 => C::NotFound,
        413 => C::PayloadTooLarge,
        429 => C::RateLimited,
        502..=504 => C::Unavailable,
        400..=499 => C::BadRequest,
        _ => C::Internal,
    };
    let text = String::from_utf8_lossy(bytes);
    let snippet: String = text.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(60).collect();
    let shown = if snippet.is_empty() { "an empty body".to_string() } else { format!("{snippet:?}…") };
    Error::new(
        code,
        format!(
            "{url} answered {status} with {shown}, which is not ferry's API: is --url / FERRY_URL pointing at a ferry server?"
        ),
    )
}
