//! Convoys (issue #18) end to end: the real `ferry serve` over real HTTP, with raw JSON so that
//! the wire contract itself is what is checked (`/work/convoy-contract.md`, the issue's "Tests"
//! section). Each scenario runs on SQLite and on PostgreSQL (a database of its own); the
//! multi-node case on three PostgreSQL nodes sharing one database. Every test ends by stopping
//! its server(s) with SIGTERM and running the store's own `check_invariants` on the database.
//!
//! - `limit_is_never_exceeded_*`: `FERRY_CONVOY_MEMBERS` members under `max_parallel: 50`, 8 SDK
//!   workers x 64 handlers (1 ms each). A sampler reads `GET /v1/convoys/{id}` every 10 ms and
//!   never sees ready + running above 50; the workers' own in-flight count (one atomic across
//!   all of them) never passes 50; every member ran once, has one `job.completed` event and
//!   `attempt` 1; the convoy ends `completed` and its `on_complete` job exists exactly once.
//! - `kill_storm_*`: 200 convoys of 100 members (fixed and adaptive limits, open ones sealed
//!   later, `fail_fast` ones, a quarter with a member failing for good, retried members), created
//!   and worked while the server is SIGKILLed and restarted `FERRY_CONVOY_KILL_CYCLES` times.
//!   After every restart each acknowledged create is there whole and no fixed limit is exceeded;
//!   at the end every convoy has ended in the state its members call for, its counts equal its
//!   members' states, it has exactly one `on_complete` job (key `convoy:<id>:complete`, payload
//!   matching the convoy, `failed_ids` its dead members), every completed member one
//!   `job.completed` event, and `check_invariants` is clean.
//! - `edges_*`: an empty sealed convoy completes at once (with and without `on_complete`, and
//!   its events); `fail_fast` with one member dying; 1,001 dead members with
//!   `limits.max_convoy_failed_ids = 1000` (1,000 ids, `failed_total` 1,001; the same with a
//!   bound of 3); an open convoy ends only after its seal (long-poll woken by the seal); cancel;
//!   a repeated id (200 `duplicate`, 409 `conflict` with `details.fields`); member `unique_key`
//!   dedup; `held` in `GET /v1/jobs/{id}`, `?state=held` and queue counts; every request bound
//!   one past its edge (422 with the field), among them `max_convoy_parallel`,
//!   `max_convoy_members_per_request` and `max_convoy_members` on a server with small values;
//!   `pressure` out of range; a queue-restricted token (403 on unknown, foreign and foreign
//!   `on_complete` convoys alike, on every route).
//! - `adaptive_limit_settles_*`: a test worker of 64 handlers whose jobs take 20 ms while at most
//!   32 run and double with every 4 more (a job counts as running from its claim until its
//!   report is answered), `FERRY_CONVOY_ADAPTIVE_MEMBERS` members under `{adaptive: {min: 1,
//!   max: 200}}`: over the last 5,000 completions (a quarter when fewer members) the limit stays
//!   within 24..=40, both by the events (`job.completed` and `convoy.limit_changed` merged in log
//!   order) and by a sampler; every change is an event (each `from` is the previous `to`, the
//!   last `to` is the convoy's limit, `increase` adds 1, lowering multiplies by 0.75).
//! - `pressure_lowers_the_limit_*`, `failures_lower_the_limit_*`: `{min: 1, max: 100, start:
//!   50}` and 200 members, `pressure: 0.9` on every report, or a third of the members failing
//!   their first attempt (retryable): a `convoy.limit_changed` with that reason lowers it.
//! - `limit_holds_on_three_postgres_nodes_with_one_killed`: the first case with its members
//!   added through the three nodes and SDK workers on each; one node is SIGKILLed a fifth of the
//!   way through: samplers on the other two never see more than 50, each member is completed
//!   once (one `job.completed`), the `on_complete` job exists once.
//!
//! Sizes (the issue's by default; CI runs on 2 cores):
//! - `FERRY_CONVOY_MEMBERS` (default 10,000): members of the fixed-limit and multi-node cases.
//! - `FERRY_CONVOY_KILL_CYCLES` (default 20), `FERRY_CONVOY_KILL_CONVOYS` (default 200),
//!   `FERRY_CONVOY_KILL_MEMBERS` (default 100): the kill storm.
//! - `FERRY_CONVOY_ADAPTIVE_MEMBERS` (default 20,000): the adaptive case.
//!
//! Expected run time per backend on a 2-core machine: fixed limit 10-20 s, kill storm 45-90 s,
//! edges 5-15 s, adaptive 30-50 s, pressure and failures 3-6 s each, three nodes 20-40 s.
//!
//! PostgreSQL tests use `FERRY_TEST_PG_URL` (see `common::pg`) and are skipped with a printed
//! reason without it, unless `FERRY_REQUIRE_PG=1`. Every test body runs under a deadline.

use crate::common::Server;
use crate::common::pg::TestDb;
use ferry_client::{Client, JobContext, Worker, WorkerStats};
use ferry_core::{Clock, SystemClock};
use ferry_store::{PgConfig, PgStore, SqliteConfig, SqliteStore, StoreCore};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A size from the environment, or its default.
fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a count")),
        Err(_) => default,
    }
}

/// Members of the fixed-limit and three-node cases.
fn members_knob() -> usize {
    env_usize("FERRY_CONVOY_MEMBERS", 10_000).max(1)
}

/// SIGKILLs of the kill storm.
fn kill_cycles() -> usize {
    env_usize("FERRY_CONVOY_KILL_CYCLES", 20)
}

/// Members of the adaptive case.
fn adaptive_members() -> usize {
    env_usize("FERRY_CONVOY_ADAPTIVE_MEMBERS", 20_000).max(4)
}

/// Fails the test if `f` takes longer than `limit` (the deadlock guard).
async fn bounded<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not finished within {limit:?} (deadlock guard)"))
}

#[track_caller]
fn assert_none(what: &str, errors: &[String]) {
    assert!(
        errors.is_empty(),
        "{what}: {} failures, first ones:\n{}",
        errors.len(),
        errors.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Asserts that the server never logged a panic.
fn assert_no_panic(server: &Server) {
    let log = server.log.lock().unwrap();
    let panics: Vec<String> = log
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("panicked"))
        .map(|(i, _)| log[i..(i + 3).min(log.len())].join("\n"))
        .collect();
    assert!(panics.is_empty(), "the server panicked: {panics:#?}");
}

/// Stops `server` with SIGTERM (a clean exit asserted) and hands back its data directory.
async fn stop_clean(mut server: Server) -> tempfile::TempDir {
    assert_no_panic(&server);
    let (status, dir) = tokio::task::spawn_blocking(move || {
        let status = server.stop();
        (status, server.take_dir())
    })
    .await
    .unwrap();
    assert!(status.success(), "ferry serve exited with {status} after SIGTERM");
    dir
}

/// Where a test's servers keep their data: a data directory each (SQLite), or one PostgreSQL
/// database of the test's own that all of its servers share.
struct Backend {
    db: Option<TestDb>,
    /// The start of every server's `ferry.toml` (the PostgreSQL pool size).
    base: String,
    /// The rest of the `ferry.toml` of the test's usual servers.
    toml: String,
}

impl Backend {
    fn sqlite(toml: &str) -> Backend {
        Backend { db: None, base: String::new(), toml: toml.to_string() }
    }

    /// A fresh database; `None` (skipped) without PostgreSQL.
    async fn postgres(prefix: &str, pool: usize, toml: &str) -> Option<Backend> {
        let db = TestDb::create(prefix).await?;
        Some(Backend { db: Some(db), base: format!("pg_pool_size = {pool}\n"), toml: toml.to_string() })
    }

    fn database(&self) -> Option<String> {
        self.db.as_ref().map(|d| d.url.clone())
    }

    /// A server with the test's usual config on a fresh data directory.
    async fn start(&self) -> Server {
        self.start_in(tempfile::tempdir().unwrap(), &self.toml).await
    }

    /// A server with `toml` (after the base) on a fresh data directory.
    async fn start_with(&self, toml: &str) -> Server {
        self.start_in(tempfile::tempdir().unwrap(), toml).await
    }

    /// A server on `dir` with `toml` (after the base), started off the async threads.
    async fn start_in(&self, dir: tempfile::TempDir, toml: &str) -> Server {
        std::fs::write(dir.path().join("ferry.toml"), format!("{}{toml}", self.base)).unwrap();
        let database = self.database();
        tokio::task::spawn_blocking(move || match &database {
            Some(url) => Server::start_with(&["--database", url.as_str()], dir),
            None => Server::start_with(&[], dir),
        })
        .await
        .unwrap()
    }

    /// Stops `server` with SIGTERM and runs the store's `check_invariants` on its database.
    async fn stop_and_check(&self, server: Server) {
        let dir = stop_clean(server).await;
        self.check_store(dir.path()).await;
    }

    /// `check_invariants` of the database (SQLite: the one in `data_dir`) finds nothing.
    async fn check_store(&self, data_dir: &std::path::Path) {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let violations = match self.database() {
            Some(url) => {
                let store =
                    PgStore::open(PgConfig::new(url), clock).await.expect("open the PostgreSQL store");
                let v = store.check_invariants().await.expect("check_invariants runs");
                store.close().await;
                v
            }
            None => {
                let config = SqliteConfig::new(data_dir.join("ferry.db"));
                let store = SqliteStore::open(config, clock).expect("open the SQLite store");
                let v = store.check_invariants().await.expect("check_invariants runs");
                store.close().await;
                v
            }
        };
        assert_none("check_invariants", &violations);
    }
}

/// A test on SQLite and one on PostgreSQL (a database of its own) running `scenario(&backend)`
/// under `secs` seconds; the scenario starts (and restarts) its servers itself, their
/// `ferry.toml` being `toml`.
macro_rules! both_backends {
    ($scenario:ident, $sqlite:ident, $postgres:ident, $secs:expr, $toml:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            let be = Backend::sqlite($toml);
            bounded(Duration::from_secs($secs), stringify!($sqlite), $scenario(&be)).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            let Some(be) = Backend::postgres(concat!("ferry_cv_", stringify!($scenario)), 16, $toml).await
            else {
                return;
            };
            bounded(Duration::from_secs($secs), stringify!($postgres), $scenario(&be)).await;
        }
    };
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

/// One answer: status and JSON body (`Null` when empty or not JSON).
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    /// The error code of an error body, or "".
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// The field an error names, or "".
    fn field(&self) -> &str {
        self.body["error"]["field"].as_str().unwrap_or("")
    }

    fn brief(&self) -> String {
        let mut s = format!("{} {}", self.status, self.body);
        if s.len() > 600 {
            let cut = (0..=600).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
            s.truncate(cut);
            s.push_str("...");
        }
        s
    }
}

/// Asserts a success with `status` and returns the body.
#[track_caller]
fn ok<'a>(a: &'a Answer, status: u16, what: &str) -> &'a Value {
    assert_eq!(a.status, status, "{what}: expected {status}, got {}", a.brief());
    &a.body
}

/// Asserts an error answer (`status`, `code`, the error shape) and returns its `details`.
#[track_caller]
fn refused<'a>(a: &'a Answer, status: u16, code: &str, what: &str) -> &'a Value {
    assert_eq!((a.status, a.code()), (status, code), "{what}: expected {status} {code}, got {}", a.brief());
    let m = a.body["error"]["message"].as_str();
    assert!(m.is_some_and(|m| !m.is_empty()), "{what}: an error without a message: {}", a.brief());
    &a.body["error"]["details"]
}

/// Asserts a 422 `validation_failed` naming `field`.
#[track_caller]
fn refused_field(a: &Answer, field: &str, what: &str) {
    refused(a, 422, "validation_failed", what);
    assert_eq!(a.field(), field, "{what}: the field named: {}", a.brief());
}

/// Asserts a 422 `validation_failed` naming `max_parallel` or a field inside it.
#[track_caller]
fn refused_max_parallel(a: &Answer, what: &str) {
    refused(a, 422, "validation_failed", what);
    assert!(a.field().starts_with("max_parallel"), "{what}: the field named: {}", a.brief());
}

/// The API of one node, with an optional bearer token.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(base: &str) -> Api {
        Api::with(client(), base)
    }

    fn with(http: reqwest::Client, base: &str) -> Api {
        Api { http, base: base.trim_end_matches('/').to_string(), token: None }
    }

    /// One per node, sharing a connection pool.
    fn all(urls: &[String]) -> Vec<Api> {
        let http = client();
        urls.iter().map(|u| Api::with(http.clone(), u)).collect()
    }

    /// The same node, calling with `token`.
    fn as_token(&self, token: &str) -> Api {
        Api { http: self.http.clone(), base: self.base.clone(), token: Some(token.to_string()) }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `req`; a transport error (a killed server, a lost answer) is `Err`.
    async fn try_send(&self, req: reqwest::RequestBuilder) -> Result<Answer, String> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let r = req.send().await.map_err(|e| format!("transport: {e}"))?;
        let status = r.status().as_u16();
        let text = r.text().await.map_err(|e| format!("transport (body): {e}"))?;
        Ok(Answer { status, body: serde_json::from_str(&text).unwrap_or(Value::Null) })
    }

    async fn try_get(&self, path: &str) -> Result<Answer, String> {
        self.try_send(self.http.get(self.url(path))).await
    }

    async fn try_post(&self, path: &str, body: &Value) -> Result<Answer, String> {
        self.try_send(self.http.post(self.url(path)).json(body)).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.try_get(path).await.unwrap_or_else(|e| panic!("GET {path} at {}: {e}", self.base))
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        self.try_post(path, body).await.unwrap_or_else(|e| panic!("POST {path} at {}: {e}", self.base))
    }

    /// `POST /v1/convoys` answered 201: the whole answer (`convoy`, `ids`, `duplicates`).
    async fn created(&self, body: Value) -> Value {
        let a = self.post("/v1/convoys", &body).await;
        ok(&a, 201, &format!("create convoy {}", body["id"])).clone()
    }

    /// `GET /v1/convoys/{id}` (200 asserted).
    async fn convoy(&self, id: &str) -> Value {
        let a = self.get(&format!("/v1/convoys/{id}")).await;
        ok(&a, 200, &format!("GET convoy {id}")).clone()
    }

    /// Long-polls the convoy until it has ended; fails after `limit`.
    async fn wait_end(&self, id: &str, limit: Duration) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let a = self.get(&format!("/v1/convoys/{id}?wait_ms=5000")).await;
            let v = ok(&a, 200, &format!("GET convoy {id} (waiting for its end)")).clone();
            if ended(&v) {
                return v;
            }
            assert!(Instant::now() < deadline, "convoy {id} did not end within {limit:?}: {v}");
        }
    }

    /// Every item under `key` of the list at `path`, page by page (1,000 a page).
    async fn paged(&self, path: &str, key: &str) -> Vec<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let target = match &cursor {
                Some(c) => format!("{path}{sep}limit=1000&cursor={}", pct(c)),
                None => format!("{path}{sep}limit=1000"),
            };
            let a = self.get(&target).await;
            let b = ok(&a, 200, &format!("GET {target}"));
            let page =
                b[key].as_array().unwrap_or_else(|| panic!("GET {target}: no {key} array: {}", a.brief()));
            out.extend(page.iter().cloned());
            match b["next_cursor"].as_str() {
                Some(c) => {
                    assert!(
                        !page.is_empty(),
                        "GET {target}: an empty page with a next cursor: {}",
                        a.brief()
                    );
                    cursor = Some(c.to_string());
                }
                None => return out,
            }
        }
    }

    /// Every member of a convoy, in the order added.
    async fn members(&self, id: &str) -> Vec<Value> {
        self.paged(&format!("/v1/convoys/{id}/members"), "members").await
    }

    /// Every convoy, by id.
    async fn convoys(&self) -> HashMap<String, Value> {
        let all = self.paged("/v1/convoys", "convoys").await;
        all.into_iter()
            .map(|v| (v["id"].as_str().unwrap_or_else(|| panic!("a view without id: {v}")).to_string(), v))
            .collect()
    }

    /// Every job of `GET /v1/jobs?<query>`.
    async fn jobs(&self, query: &str) -> Vec<Value> {
        self.paged(&format!("/v1/jobs?{query}"), "jobs").await
    }

    /// `GET /v1/jobs/{id}` (200 asserted).
    async fn job(&self, id: &str) -> Value {
        let a = self.get(&format!("/v1/jobs/{id}")).await;
        ok(&a, 200, &format!("GET job {id}")).clone()
    }

    /// The event log's head: events after it are new.
    async fn head(&self) -> u64 {
        let a = self.get("/v1/events?wait_ms=0").await;
        ok(&a, 200, "the event head")["next_cursor"]
            .as_u64()
            .unwrap_or_else(|| panic!("no next_cursor: {}", a.brief()))
    }

    /// The events of `types` after `since`, read until a read finds nothing new and `enough`
    /// holds for what was read (so the last read shows nothing right behind it); fails after
    /// `limit`.
    async fn events(
        &self,
        since: u64,
        types: &str,
        limit: Duration,
        enough: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        let mut out: Vec<Value> = Vec::new();
        let mut at = since;
        loop {
            let path = format!("/v1/events?since={at}&type={types}&limit=1000&wait_ms=200");
            let a = self.get(&path).await;
            let b = ok(&a, 200, &format!("GET {path}"));
            let page = b["events"]
                .as_array()
                .unwrap_or_else(|| panic!("GET {path}: no events array: {}", a.brief()));
            let empty = page.is_empty();
            out.extend(page.iter().cloned());
            at = b["next_cursor"]
                .as_u64()
                .unwrap_or_else(|| panic!("GET {path}: no next_cursor: {}", a.brief()));
            if empty {
                if enough(out.as_slice()) {
                    return out;
                }
                assert!(
                    Instant::now() < deadline,
                    "events {types} since {since}: not all there after {limit:?} ({} read)",
                    out.len()
                );
            }
        }
    }

    /// Claims up to `max` jobs of `queue` (lease one minute).
    async fn claim(&self, queue: &str, max: usize) -> Vec<Value> {
        let body = json!({"worker": "convoy-test", "max": max, "lease_ms": 60_000});
        let a = self.post(&format!("/v1/queues/{queue}/claim"), &body).await;
        ok(&a, 200, &format!("claim {queue}"))["jobs"]
            .as_array()
            .unwrap_or_else(|| panic!("claim {queue}: no jobs array: {}", a.brief()))
            .clone()
    }

    /// Completes a claimed job (200 asserted).
    async fn complete(&self, job: &Value) {
        let id = id_of(job);
        let a = self.post(&format!("/v1/jobs/{id}/complete"), &json!({"lease": job["lease"]})).await;
        ok(&a, 200, &format!("complete {id}"));
    }

    /// Fails a claimed job (200 asserted); the answer.
    async fn fail(&self, job: &Value, retry: bool) -> Value {
        let id = id_of(job);
        let body = json!({"lease": job["lease"], "error": "planned failure", "retry": retry});
        let a = self.post(&format!("/v1/jobs/{id}/fail"), &body).await;
        ok(&a, 200, &format!("fail {id}")).clone()
    }
}

/// Percent-encodes a query value (cursors are opaque).
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A job's (or member's) id.
#[track_caller]
fn id_of(j: &Value) -> String {
    j["id"].as_str().unwrap_or_else(|| panic!("no id: {j}")).to_string()
}

/// The strings of a JSON array.
#[track_caller]
fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap_or_else(|| panic!("not a string: {s}")).to_string())
        .collect()
}

/// The member ids of a create or add answer.
#[track_caller]
fn ids_of(answer: &Value) -> Vec<String> {
    strings(&answer["ids"])
}

/// Whether a convoy view is terminal.
fn ended(v: &Value) -> bool {
    matches!(v["state"].as_str(), Some("completed" | "failed" | "cancelled"))
}

/// Whether an event is about convoy `id`.
fn about(e: &Value, id: &str) -> bool {
    e["subject"] == json!({"kind": "convoy", "id": id})
}

const COUNT_KEYS: [&str; 8] =
    ["total", "held", "ready", "running", "retrying", "completed", "failed", "cancelled"];

/// A view's `counts`, every key asserted.
#[track_caller]
fn counts(view: &Value) -> BTreeMap<String, u64> {
    COUNT_KEYS
        .iter()
        .map(|k| {
            let n =
                view["counts"][*k].as_u64().unwrap_or_else(|| panic!("counts.{k} is not a count: {view}"));
            (k.to_string(), n)
        })
        .collect()
}

/// Counts with these values, zero elsewhere.
fn expect_counts(nonzero: &[(&str, u64)]) -> BTreeMap<String, u64> {
    let mut c: BTreeMap<String, u64> = COUNT_KEYS.iter().map(|k| (k.to_string(), 0)).collect();
    for (k, n) in nonzero {
        c.insert(k.to_string(), *n);
    }
    c
}

/// All-zero counts, as JSON.
fn zero_counts() -> Value {
    json!(expect_counts(&[]))
}

/// The counts a convoy's members call for (`scheduled` is `retrying`, `dead` is `failed`).
#[track_caller]
fn member_counts(members: &[Value]) -> BTreeMap<String, u64> {
    let mut c = expect_counts(&[("total", members.len() as u64)]);
    for m in members {
        let key = match m["state"].as_str() {
            Some("held") => "held",
            Some("ready") => "ready",
            Some("running") => "running",
            Some("scheduled") => "retrying",
            Some("completed") => "completed",
            Some("dead") => "failed",
            Some("cancelled") => "cancelled",
            _ => panic!("a member in no member state: {m}"),
        };
        *c.get_mut(key).expect("a count key") += 1;
    }
    c
}

/// The convoy's `on_complete` job, checked: the only job of `queue` keyed
/// `convoy:<id>:complete`, the one the view names, its payload `{"convoy": {id, name, state,
/// counts, failed_ids, failed_total}, "payload": own}` matching the view (and `failed_ids` equal
/// to `failed` when given).
async fn check_on_complete(
    api: &Api,
    view: &Value,
    queue: &str,
    own: &Value,
    failed: Option<&BTreeSet<String>>,
) -> Value {
    let id = view["id"].as_str().unwrap_or_else(|| panic!("a view without id: {view}"));
    let key = format!("convoy:{id}:complete");
    let jobs = api.jobs(&format!("queue={queue}")).await;
    let keyed: Vec<&Value> = jobs.iter().filter(|j| j["unique_key"] == key.as_str()).collect();
    assert_eq!(keyed.len(), 1, "exactly one on_complete job keyed {key} on {queue}: {keyed:?}");
    let job = keyed[0].clone();
    assert!(view["on_complete_job_id"].is_string(), "an ended convoy with on_complete names its job: {view}");
    assert_eq!(job["id"], view["on_complete_job_id"], "the view names its on_complete job: {view}");
    assert_eq!(job["queue"], queue, "{job}");
    let c = &job["payload"]["convoy"];
    let keys: BTreeSet<&str> = c
        .as_object()
        .unwrap_or_else(|| panic!("no payload.convoy: {job}"))
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["counts", "failed_ids", "failed_total", "id", "name", "state"]),
        "payload.convoy of the on_complete job: {job}"
    );
    for k in ["id", "name", "state", "counts", "failed_total"] {
        assert_eq!(c[k], view[k], "payload.convoy.{k} of the on_complete job: {job} against {view}");
    }
    assert_eq!(job["payload"]["payload"], *own, "the on_complete spec's own payload: {job}");
    if let Some(f) = failed {
        let got: BTreeSet<String> = strings(&c["failed_ids"]).into_iter().collect();
        assert_eq!(&got, f, "failed_ids of the on_complete job: {job}");
    }
    job
}

/// Creates convoy `base` (its `id` set) with `members`: one sealed create if they fit in one
/// `chunk`, else created open with the first chunk, the rest added a chunk at a time, then
/// sealed; requests go to `apis` in turn. Returns the member ids in order.
async fn create_in_chunks(apis: &[Api], base: Value, members: Vec<Value>, chunk: usize) -> Vec<String> {
    let id = base["id"].as_str().expect("a convoy id").to_string();
    let chunks: Vec<&[Value]> = members.chunks(chunk.max(1)).collect();
    let mut body = base;
    body["members"] = json!(chunks.first().copied().unwrap_or(&[]));
    body["sealed"] = json!(chunks.len() <= 1);
    let mut ids = ids_of(&apis[0].created(body).await);
    for (k, part) in chunks.iter().enumerate().skip(1) {
        let api = &apis[k % apis.len()];
        let a = api.post(&format!("/v1/convoys/{id}/members"), &json!({ "members": part })).await;
        ids.extend(ids_of(ok(&a, 201, &format!("add chunk {k} to {id}"))));
    }
    if chunks.len() > 1 {
        let api = &apis[chunks.len() % apis.len()];
        ok(&api.post(&format!("/v1/convoys/{id}/seal"), &json!({})).await, 200, &format!("seal {id}"));
    }
    assert_eq!(ids.len(), members.len(), "one id per member of {id}");
    ids
}

// ---------------------------------------------------------------------------------------------
// Samplers and workers
// ---------------------------------------------------------------------------------------------

/// What a sampler of `GET /v1/convoys/{id}` saw.
#[derive(Debug, Default)]
struct Samples {
    taken: usize,
    /// Most ready + running members seen at once.
    busiest: u64,
    /// Views that broke the rule checked.
    violations: Vec<String>,
    /// Failed reads.
    errors: Vec<String>,
}

/// Reads the convoy every `every` from `apis` in turn until `stop`, checking each view with
/// `check`.
fn spawn_sampler(
    apis: Vec<Api>,
    id: String,
    every: Duration,
    stop: Arc<AtomicBool>,
    check: impl Fn(&Value) -> Option<String> + Send + 'static,
) -> JoinHandle<Samples> {
    tokio::spawn(async move {
        let mut s = Samples::default();
        let path = format!("/v1/convoys/{id}");
        let mut turn = 0usize;
        while !stop.load(Ordering::SeqCst) {
            let api = &apis[turn % apis.len()];
            turn += 1;
            match api.try_get(&path).await {
                Ok(a) if a.status == 200 => {
                    let c = &a.body["counts"];
                    match (c["ready"].as_u64(), c["running"].as_u64()) {
                        (Some(ready), Some(running)) => {
                            s.taken += 1;
                            s.busiest = s.busiest.max(ready + running);
                            if let Some(v) = check(&a.body) {
                                s.violations.push(v);
                            }
                        }
                        _ => s.errors.push(format!("GET {path} at {}: no counts: {}", api.base, a.brief())),
                    }
                }
                Ok(a) => s.errors.push(format!("GET {path} at {}: {}", api.base, a.brief())),
                Err(e) => s.errors.push(format!("GET {path} at {}: {e}", api.base)),
            }
            tokio::time::sleep(every).await;
        }
        s
    })
}

/// Handlers of one convoy running at once across every worker of a test, the most seen, and
/// how often each job ran.
#[derive(Default)]
struct Flight {
    now: AtomicUsize,
    peak: AtomicUsize,
    runs: Mutex<HashMap<uuid::Uuid, u32>>,
}

/// Takes one job off `Flight::now` when dropped (also when its handler is cancelled).
struct Landing(Arc<Flight>);

impl Drop for Landing {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An SDK worker on `url` with `handlers` handlers for `queue`: each counts itself in `flight`
/// while it runs and takes `pace(n)`, `n` being the handlers running at its start (itself
/// included). Returns its shutdown switch and its task.
fn sdk_worker(
    url: &str,
    name: String,
    queue: &str,
    handlers: usize,
    flight: Arc<Flight>,
    pace: fn(usize) -> Duration,
) -> (tokio::sync::oneshot::Sender<()>, JoinHandle<Arc<WorkerStats>>) {
    let worker = Worker::new(Client::new(url), name).concurrency(handlers).claim_batch(handlers).handle(
        queue,
        move |ctx: JobContext| {
            let flight = flight.clone();
            async move {
                let n = flight.now.fetch_add(1, Ordering::SeqCst) + 1;
                let _landing = Landing(flight.clone());
                flight.peak.fetch_max(n, Ordering::SeqCst);
                *flight.runs.lock().unwrap().entry(ctx.id).or_default() += 1;
                tokio::time::sleep(pace(n)).await;
                Ok(None)
            }
        },
    );
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(worker.run(async move {
        let _ = rx.await;
    }));
    (tx, handle)
}

/// A test worker over plain HTTP with `slots` handlers, until `stop`: claims what its free
/// handlers can take from `queue`; a job counts as running (in `flight`) from its claim until
/// its report is answered, takes `pace(n)` with `n` jobs running when it was claimed (itself
/// included), then fails if its payload says `flaky` and this is its first attempt (retryable)
/// or completes; every report carries `pressure` when given. Returns the answers it did not
/// expect.
async fn raw_worker(
    api: Api,
    queue: String,
    slots: usize,
    pace: fn(usize) -> Duration,
    pressure: Option<f64>,
    flight: Arc<Flight>,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut running = tokio::task::JoinSet::new();
    let path = format!("/v1/queues/{queue}/claim");
    while !stop.load(Ordering::SeqCst) {
        while running.try_join_next().is_some() {}
        let free = slots.saturating_sub(running.len());
        if free == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
            continue;
        }
        let a = api.post(&path, &json!({"worker": "raw", "max": free, "wait_ms": 100})).await;
        let jobs = match a.body["jobs"].as_array() {
            Some(jobs) if a.status == 200 => jobs.clone(),
            _ => {
                errors.lock().unwrap().push(format!("claim {queue}: {}", a.brief()));
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        for j in jobs {
            let n = flight.now.fetch_add(1, Ordering::SeqCst) + 1;
            let landing = Landing(flight.clone());
            flight.peak.fetch_max(n, Ordering::SeqCst);
            let (api, errors) = (api.clone(), errors.clone());
            running.spawn(async move {
                let _landing = landing;
                tokio::time::sleep(pace(n)).await;
                let id = id_of(&j);
                let mut body = json!({"lease": j["lease"]});
                if let Some(p) = pressure {
                    body["pressure"] = json!(p);
                }
                let verb = if j["payload"]["flaky"] == true && j["attempt"] == 1 {
                    body["error"] = json!("flaky by design");
                    body["retry"] = json!(true);
                    "fail"
                } else {
                    "complete"
                };
                let a = api.post(&format!("/v1/jobs/{id}/{verb}"), &body).await;
                if a.status != 200 {
                    errors.lock().unwrap().push(format!("{verb} {id}: {}", a.brief()));
                }
            });
        }
    }
    while running.join_next().await.is_some() {}
    std::mem::take(&mut *errors.lock().unwrap())
}

// ---------------------------------------------------------------------------------------------
// 1. A fixed limit is never exceeded
// ---------------------------------------------------------------------------------------------

/// The fixed limit of the first and last cases.
const FIXED: u64 = 50;
/// SDK workers of the first and last cases, and handlers each.
const WORKERS: usize = 8;
const HANDLERS: usize = 64;

/// More than `FIXED` ready + running in one view.
fn fixed_violation(v: &Value) -> Option<String> {
    let c = counts(v);
    let busy = c["ready"] + c["running"];
    (busy > FIXED).then(|| format!("ready {} + running {} = {busy} > {FIXED}: {v}", c["ready"], c["running"]))
}

/// A fixed-limit run's facts, for `check_fixed_run`.
struct FixedRun<'a> {
    id: &'a str,
    queue: &'a str,
    done_queue: &'a str,
    ids: &'a [String],
    /// The event head before the convoy was created.
    since: u64,
    /// The on_complete spec's own payload.
    own: Value,
    /// No node was killed: every member ran exactly once, on its first attempt.
    once: bool,
}

/// The checks after a fixed-limit run: the convoy completed with every count right, the
/// sampler and the workers never saw more than `FIXED`, every member ran (once, if `once`),
/// was completed exactly once (one `job.completed` event) and is listed completed, one
/// `convoy.created` and one `convoy.completed` event, one `on_complete` job.
async fn check_fixed_run(api: &Api, view: &Value, run: &FixedRun<'_>, samples: &Samples, flight: &Flight) {
    let n = run.ids.len() as u64;
    let id = run.id;
    assert_eq!(view["state"], "completed", "{view}");
    assert_eq!(counts(view), expect_counts(&[("total", n), ("completed", n)]), "counts of {id}: {view}");
    for (k, want) in [("failed_total", json!(0)), ("limit", json!(FIXED)), ("max_parallel", json!(FIXED))] {
        assert_eq!(view[k], want, "{k} of {id}: {view}");
    }
    assert_eq!(view["sealed"], true, "{view}");
    assert!(view["finished_at"].is_string(), "an ended convoy has finished_at: {view}");

    // Never more than the limit: seen from the server and from the workers.
    assert_none("sampler reads", &samples.errors);
    assert_none("ready + running over the limit (sampler)", &samples.violations);
    assert!(samples.taken >= 10, "the sampler read the convoy only {} times", samples.taken);
    let peak = flight.peak.load(Ordering::SeqCst) as u64;
    assert!(peak <= FIXED, "the workers ran {peak} handlers of the convoy at once, over {FIXED}");

    let mut errors = Vec::new();
    let runs: HashMap<String, u32> =
        flight.runs.lock().unwrap().iter().map(|(k, v)| (k.to_string(), *v)).collect();
    for m in run.ids {
        match runs.get(m) {
            None => errors.push(format!("member {m} never ran")),
            Some(k) if run.once && *k != 1 => errors.push(format!("member {m} ran {k} times")),
            Some(_) => {}
        }
    }
    assert_eq!(runs.len(), run.ids.len(), "the workers ran jobs that are no members");
    assert_none("runs", &errors);

    // Each member completed exactly once: one job.completed event each, none for another job.
    let types = "job.completed,convoy.created,convoy.completed";
    let events = api
        .events(run.since, types, Duration::from_secs(60), |evs| {
            let done = evs.iter().filter(|e| e["type"] == "job.completed").count() as u64;
            done >= n && evs.iter().any(|e| e["type"] == "convoy.completed" && about(e, id))
        })
        .await;
    let mut per_job: HashMap<String, u32> = HashMap::new();
    for e in events.iter().filter(|e| e["type"] == "job.completed") {
        if e["queue"] != run.queue {
            errors.push(format!("a job.completed of another queue: {e}"));
            continue;
        }
        let j = e["job_id"].as_str().unwrap_or_else(|| panic!("job.completed without job_id: {e}"));
        *per_job.entry(j.to_string()).or_default() += 1;
    }
    for m in run.ids {
        match per_job.get(m).copied().unwrap_or(0) {
            1 => {}
            k => errors.push(format!("member {m}: {k} job.completed events")),
        }
    }
    if per_job.len() != run.ids.len() {
        errors.push(format!("job.completed events for {} jobs, {} members", per_job.len(), run.ids.len()));
    }
    assert_none("one job.completed per member", &errors);
    let created: Vec<&Value> =
        events.iter().filter(|e| e["type"] == "convoy.created" && about(e, id)).collect();
    assert_eq!(created.len(), 1, "one convoy.created: {created:?}");
    assert_eq!(created[0]["data"]["queue"], run.queue, "{}", created[0]);
    assert_eq!(created[0]["data"]["limit"], FIXED, "{}", created[0]);
    let finished: Vec<&Value> =
        events.iter().filter(|e| e["type"] == "convoy.completed" && about(e, id)).collect();
    assert_eq!(finished.len(), 1, "one convoy.completed: {finished:?}");
    let d = &finished[0]["data"];
    assert_eq!(d["state"], "completed", "{}", finished[0]);
    assert_eq!(d["counts"], view["counts"], "{}", finished[0]);
    assert_eq!(d["on_complete_job_id"], view["on_complete_job_id"], "{}", finished[0]);

    // Every member listed, in order, completed (on its first attempt when nothing was killed).
    let members = api.members(id).await;
    let listed: Vec<String> = members.iter().map(id_of).collect();
    assert!(listed == run.ids, "the members listing is the members in the order added");
    for m in &members {
        if m["state"] != "completed" {
            errors.push(format!("member not completed: {m}"));
        }
        let attempt = m["attempt"].as_u64().unwrap_or(0);
        if attempt == 0 || (run.once && attempt != 1) {
            errors.push(format!("member with attempt {attempt}: {m}"));
        }
    }
    assert_none("members", &errors);

    // The on_complete job, exactly once.
    check_on_complete(api, view, run.done_queue, &run.own, Some(&BTreeSet::new())).await;
    let all = api.jobs(&format!("queue={}", run.done_queue)).await;
    assert_eq!(all.len(), 1, "{} holds only the on_complete job: {all:?}", run.done_queue);
}

both_backends!(
    limit_is_never_exceeded,
    limit_is_never_exceeded_sqlite,
    limit_is_never_exceeded_postgres,
    180 + members_knob() as u64 / 50,
    ""
);

/// `FERRY_CONVOY_MEMBERS` members under `max_parallel: 50`, 8 SDK workers x 64 handlers of
/// 1 ms, a sampler every 10 ms: never over 50, each member completed once, one on_complete.
async fn limit_is_never_exceeded(be: &Backend) {
    let server = be.start().await;
    let api = Api::new(&server.url);
    let n = members_knob();
    let (id, queue, done_queue) = ("lim", "lim-q", "lim-done");
    let own = json!({ "members": n });
    let since = api.head().await;
    let members: Vec<Value> = (0..n).map(|i| json!({"payload": {"i": i}})).collect();
    let base = json!({"id": id, "queue": queue, "max_parallel": FIXED,
        "on_complete": {"queue": done_queue, "payload": own}});
    let ids = create_in_chunks(std::slice::from_ref(&api), base, members, 10_000).await;

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_sampler(
        vec![api.clone()],
        id.to_string(),
        Duration::from_millis(10),
        stop.clone(),
        fixed_violation,
    );
    let flight = Arc::new(Flight::default());
    let t0 = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            sdk_worker(&server.url, format!("lim-{w}"), queue, HANDLERS, flight.clone(), |_| {
                Duration::from_millis(1)
            })
        })
        .collect();
    let view = api.wait_end(id, Duration::from_secs(120 + n as u64 / 50)).await;
    let took = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.await.unwrap();
    let mut reported = 0;
    for (tx, handle) in workers {
        let _ = tx.send(());
        reported += handle.await.unwrap().completed.load(Ordering::Relaxed);
    }
    let run = FixedRun { id, queue, done_queue, ids: &ids, since, own, once: true };
    check_fixed_run(&api, &view, &run, &samples, &flight).await;
    eprintln!(
        "convoy limit: {n} members in {took:?} ({reported} completions reported), {} samples, busiest \
         ready + running {}, workers' peak {}",
        samples.taken,
        samples.busiest,
        flight.peak.load(Ordering::SeqCst)
    );
    be.stop_and_check(server).await;
}

// ---------------------------------------------------------------------------------------------
// 2. The kill storm
// ---------------------------------------------------------------------------------------------

/// Queues the kill storm's convoys are spread over, and the queue of their on_complete jobs
/// (never worked, so they can be counted).
const KS_QUEUES: usize = 4;
const KS_DONE: &str = "ks-done";

/// One convoy of the kill storm.
struct Plan {
    id: String,
    body: Value,
    members: usize,
    /// Its fixed `max_parallel` (None: adaptive).
    fixed: Option<u64>,
    /// Created open, sealed by a later request.
    open: bool,
    /// One member fails for good (`retry: false`): the convoy ends `failed`.
    doomed: bool,
}

/// Convoy `i`: on queue `ks-q<i % 4>`; every fifth (from 1) adaptive `{min: 2, max: 20}`, the
/// others `max_parallel: 10`; every eighth `fail_fast`; every fourth doomed; every tenth (from
/// 5) created open. Members: lease 2 s (a killed server's leases expire soon), 5 attempts,
/// every tenth (from 3) fails its first attempt (retryable).
fn ks_plans(convoys: usize, members: usize) -> Vec<Plan> {
    (0..convoys)
        .map(|i| {
            let id = format!("ks-{i:04}");
            let (doomed, open) = (i % 4 == 0, i % 10 == 5);
            let fixed = if i % 5 == 1 { None } else { Some(10) };
            let list: Vec<Value> = (0..members)
                .map(|j| {
                    json!({
                        "payload": {"c": i, "j": j, "fail": doomed && j == members / 2, "flaky": j % 10 == 3},
                        "max_attempts": 5,
                        "lease_ms": 2_000,
                        "backoff": {"base_ms": 50, "jitter": "none"}
                    })
                })
                .collect();
            let mut body = json!({
                "id": id,
                "queue": format!("ks-q{}", i % KS_QUEUES),
                "members": list,
                "sealed": !open,
                "on_complete": {"queue": KS_DONE, "payload": {"c": i}}
            });
            body["max_parallel"] = match fixed {
                Some(m) => json!(m),
                None => json!({"adaptive": {"min": 2, "max": 20}}),
            };
            if i % 8 == 0 {
                body["on_failure"] = json!("fail_fast");
            }
            Plan { id, body, members, fixed, open, doomed }
        })
        .collect()
}

/// What the kill storm was told.
#[derive(Default)]
struct Storm {
    /// Convoys whose create was acknowledged (201, or 200 `duplicate` for a repeat).
    created: BTreeSet<usize>,
    /// Open convoys whose seal was acknowledged.
    sealed: BTreeSet<usize>,
    /// Reports answered `ok: true`.
    reports: usize,
    /// Answers other than a success, a 503 (starting or stopping) or a stale lease.
    bad: Vec<String>,
}

/// Creates (and seals, for open ones) every convoy not yet acknowledged, pass after pass until
/// all are or `stop`. A transport error or a 503 ends a pass (the server is gone or not ready);
/// the next one repeats the request: a create whose answer was lost must then be 200
/// `duplicate`.
async fn ks_creator(api: Api, plans: Arc<Vec<Plan>>, storm: Arc<Mutex<Storm>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        ks_create_pass(&api, &plans, &storm, &stop).await;
        let all = {
            let s = storm.lock().unwrap();
            s.created.len() == plans.len()
                && plans.iter().enumerate().all(|(i, p)| !p.open || s.sealed.contains(&i))
        };
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ks_create_pass(api: &Api, plans: &[Plan], storm: &Mutex<Storm>, stop: &AtomicBool) {
    for (i, p) in plans.iter().enumerate() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let (created, sealed) = {
            let s = storm.lock().unwrap();
            (s.created.contains(&i), s.sealed.contains(&i))
        };
        if !created {
            match api.try_post("/v1/convoys", &p.body).await {
                Ok(a) if a.status == 201 || (a.status == 200 && a.body["duplicate"] == true) => {
                    let mut s = storm.lock().unwrap();
                    if a.body["convoy"]["counts"]["total"] != p.members as u64 {
                        s.bad.push(format!(
                            "create {} answered a convoy without its members: {}",
                            p.id,
                            a.brief()
                        ));
                    }
                    if a.status == 201 && a.body["ids"].as_array().map_or(0, Vec::len) != p.members {
                        s.bad.push(format!("create {}: not one id per member: {}", p.id, a.brief()));
                    }
                    s.created.insert(i);
                }
                Ok(a) if a.status == 503 => return,
                Ok(a) => {
                    storm.lock().unwrap().bad.push(format!("create {}: {}", p.id, a.brief()));
                    return;
                }
                Err(_) => return,
            }
        }
        if p.open && !sealed {
            match api.try_post(&format!("/v1/convoys/{}/seal", p.id), &json!({})).await {
                Ok(a) if a.status == 200 => {
                    storm.lock().unwrap().sealed.insert(i);
                }
                Ok(a) if a.status == 503 => return,
                Ok(a) => {
                    storm.lock().unwrap().bad.push(format!("seal {}: {}", p.id, a.brief()));
                    return;
                }
                Err(_) => return,
            }
        }
    }
}

/// Works `queue` over plain HTTP until `stop`: claims up to 50 (lease 2 s), takes 2 ms, fails
/// members marked `fail` for good and `flaky` ones on their first attempt (retryable), completes
/// the rest, all in batches.
async fn ks_worker(api: Api, queue: String, storm: Arc<Mutex<Storm>>, stop: Arc<AtomicBool>) {
    let claim = json!({"worker": format!("ks-worker-{queue}"), "max": 50, "wait_ms": 200, "lease_ms": 2_000});
    let claim_path = format!("/v1/queues/{queue}/claim");
    while !stop.load(Ordering::SeqCst) {
        let jobs = match api.try_post(&claim_path, &claim).await {
            Ok(a) if a.status == 200 => a.body["jobs"].as_array().cloned().unwrap_or_default(),
            Ok(a) => {
                if a.status != 503 {
                    storm.lock().unwrap().bad.push(format!("claim {queue}: {}", a.brief()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if jobs.is_empty() {
            continue;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        for j in &jobs {
            let p = &j["payload"];
            if p["fail"] == true {
                failed.push(
                    json!({"id": j["id"], "lease": j["lease"], "error": "planned failure", "retry": false}),
                );
            } else if p["flaky"] == true && j["attempt"] == 1 {
                failed.push(
                    json!({"id": j["id"], "lease": j["lease"], "error": "flaky by design", "retry": true}),
                );
            } else {
                done.push(json!({"id": j["id"], "lease": j["lease"]}));
            }
        }
        for (report_path, items) in [("/v1/jobs/complete", done), ("/v1/jobs/fail", failed)] {
            if items.is_empty() {
                continue;
            }
            let n = items.len();
            match api.try_post(report_path, &json!({ "items": items })).await {
                Ok(a) if a.status == 200 => {
                    let results = a.body["results"].as_array().cloned().unwrap_or_default();
                    let mut s = storm.lock().unwrap();
                    if results.len() != n {
                        s.bad.push(format!("{report_path}: not one result per item: {}", a.brief()));
                    }
                    for r in &results {
                        if r["ok"] == true {
                            s.reports += 1;
                        } else if r["error"]["code"] != "stale_lease" {
                            s.bad.push(format!("{report_path} item: {r}"));
                        }
                    }
                }
                Ok(a) if a.status == 503 => {}
                Ok(a) => storm.lock().unwrap().bad.push(format!("{report_path}: {}", a.brief())),
                // Killed: the outcome is unknown; the lease expires if it was not applied.
                Err(_) => {}
            }
        }
    }
}

/// Waits until `/readyz` answers 200.
async fn wait_ready(api: &Api) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !api.try_get("/readyz").await.is_ok_and(|a| a.status == 200) {
        assert!(Instant::now() < deadline, "{} not ready within 30 s", api.base);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A fixed-limit convoy holding more slots (ready + running + retrying) than its limit.
fn slot_error(p: &Plan, v: &Value, when: &str) -> Option<String> {
    let m = p.fixed?;
    let c = counts(v);
    let slots = c["ready"] + c["running"] + c["retrying"];
    (slots > m).then(|| format!("{when}: {} holds {slots} slots over max_parallel {m}: {v}", p.id))
}

/// After a restart: every acknowledged create is there with all its members, every
/// acknowledged seal held, and no fixed limit is exceeded.
async fn ks_check_acknowledged(api: &Api, plans: &[Plan], storm: &Mutex<Storm>, when: &str) {
    let (created, sealed) = {
        let s = storm.lock().unwrap();
        (s.created.clone(), s.sealed.clone())
    };
    let views = api.convoys().await;
    let mut errors = Vec::new();
    for (i, p) in plans.iter().enumerate() {
        let Some(v) = views.get(&p.id) else {
            if created.contains(&i) {
                errors.push(format!("{when}: the acknowledged convoy {} is gone", p.id));
            }
            continue;
        };
        if v["counts"]["total"] != p.members as u64 {
            errors.push(format!("{when}: {} has not all its {} members: {v}", p.id, p.members));
        }
        if sealed.contains(&i) && v["sealed"] != true {
            errors.push(format!("{when}: {} was sealed (acknowledged) but is not: {v}", p.id));
        }
        errors.extend(slot_error(p, v, when));
    }
    assert_none(&format!("{when}: acknowledged convoys"), &errors);
}

/// The end of the storm: every convoy ended in the state its members call for, counts equal
/// to its members' states, exactly one on_complete job matching it, one `job.completed` event
/// per completed member and none for the others.
async fn ks_final_checks(api: &Api, plans: &[Plan], storm: &Mutex<Storm>) -> BTreeMap<String, usize> {
    {
        let s = storm.lock().unwrap();
        assert_none("unexpected answers during the storm", &s.bad);
    }
    let views = api.convoys().await;
    let done_jobs = api.jobs(&format!("queue={KS_DONE}")).await;
    let mut by_key: HashMap<String, Vec<&Value>> = HashMap::new();
    for j in &done_jobs {
        by_key.entry(j["unique_key"].as_str().unwrap_or("").to_string()).or_default().push(j);
    }
    let events = api.events(0, "job.completed", Duration::from_secs(60), |_| true).await;
    let mut completions: HashMap<String, u32> = HashMap::new();
    for e in &events {
        let j = e["job_id"].as_str().unwrap_or_else(|| panic!("job.completed without job_id: {e}"));
        *completions.entry(j.to_string()).or_default() += 1;
    }
    let mut errors = Vec::new();
    let mut states: BTreeMap<String, usize> = BTreeMap::new();
    for (i, p) in plans.iter().enumerate() {
        let v = views.get(&p.id).unwrap_or_else(|| panic!("convoy {} is gone", p.id));
        let state = v["state"].as_str().unwrap_or("?").to_string();
        *states.entry(state.clone()).or_default() += 1;
        let members = api.members(&p.id).await;
        if members.len() != p.members {
            errors.push(format!("{}: {} members listed, not {}", p.id, members.len(), p.members));
        }
        let (theirs, mine) = (counts(v), member_counts(&members));
        if theirs != mine {
            errors.push(format!("{}: counts {theirs:?} but its members say {mine:?}", p.id));
        }
        let live: Vec<&Value> = members
            .iter()
            .filter(|m| !matches!(m["state"].as_str(), Some("completed" | "dead" | "cancelled")))
            .collect();
        if !live.is_empty() {
            errors.push(format!("{} ended ({state}) with live members: {live:?}", p.id));
        }
        let dead: BTreeSet<String> = members.iter().filter(|m| m["state"] == "dead").map(id_of).collect();
        let want = if dead.is_empty() { "completed" } else { "failed" };
        if state != want || (p.doomed && state != "failed") {
            errors.push(format!("{} ended {state}, its members call for {want}: {v}", p.id));
        }
        if v["failed_total"] != dead.len() as u64 || v["sealed"] != true {
            errors.push(format!("{}: failed_total or sealed wrong ({} dead): {v}", p.id, dead.len()));
        }
        let key = format!("convoy:{}:complete", p.id);
        match by_key.get(&key).map(Vec::as_slice) {
            Some([job]) => {
                let c = &job["payload"]["convoy"];
                let failed_ids: BTreeSet<String> = c["failed_ids"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                if job["id"] != v["on_complete_job_id"]
                    || c["id"] != v["id"]
                    || c["state"] != v["state"]
                    || c["counts"] != v["counts"]
                    || c["failed_total"] != v["failed_total"]
                    || failed_ids != dead
                    || job["payload"]["payload"] != json!({ "c": i })
                {
                    errors.push(format!(
                        "{}: the on_complete job does not match the convoy: {job} / {v}",
                        p.id
                    ));
                }
            }
            other => {
                let k = other.map_or(0, |s| s.len());
                errors.push(format!("{}: {k} on_complete jobs keyed {key}", p.id));
            }
        }
        for m in &members {
            let mid = id_of(m);
            let k = completions.get(&mid).copied().unwrap_or(0);
            let want = u32::from(m["state"] == "completed");
            if k != want {
                errors.push(format!("{}: member {mid} ({}) has {k} job.completed events", p.id, m["state"]));
            }
        }
        errors.extend(slot_error(p, v, "at the end"));
    }
    if done_jobs.len() != plans.len() {
        errors.push(format!("{KS_DONE} holds {} jobs for {} convoys", done_jobs.len(), plans.len()));
    }
    assert_none("the convoys after the storm", &errors);
    states
}

both_backends!(kill_storm, kill_storm_sqlite, kill_storm_postgres, 300 + 20 * kill_cycles() as u64, "");

/// `FERRY_CONVOY_KILL_CONVOYS` convoys of `FERRY_CONVOY_KILL_MEMBERS` members created and worked
/// while the server is SIGKILLed `FERRY_CONVOY_KILL_CYCLES` times (after 0.3-1.2 s of load
/// each); then the last server finishes them all.
async fn kill_storm(be: &Backend) {
    let cycles = kill_cycles();
    let plans = Arc::new(ks_plans(
        env_usize("FERRY_CONVOY_KILL_CONVOYS", 200),
        env_usize("FERRY_CONVOY_KILL_MEMBERS", 100).max(1),
    ));
    let storm = Arc::new(Mutex::new(Storm::default()));
    let mut dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    for cycle in 0..=cycles {
        let mut server = be.start_in(dir, &be.toml).await;
        let api = Api::new(&server.url);
        wait_ready(&api).await;
        ks_check_acknowledged(&api, &plans, &storm, &format!("after kill {cycle}")).await;
        assert_no_panic(&server);
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks =
            vec![tokio::spawn(ks_creator(api.clone(), plans.clone(), storm.clone(), stop.clone()))];
        for q in 0..KS_QUEUES {
            for _ in 0..2 {
                let queue = format!("ks-q{q}");
                tasks.push(tokio::spawn(ks_worker(api.clone(), queue, storm.clone(), stop.clone())));
            }
        }
        if cycle == cycles {
            // The last server: everything gets created, sealed and worked to its end.
            let deadline = Instant::now() + Duration::from_secs(240);
            loop {
                let views = api.convoys().await;
                let left = plans.iter().filter(|p| !views.get(&p.id).is_some_and(ended)).count();
                if left == 0 {
                    break;
                }
                assert!(Instant::now() < deadline, "{left} convoys not ended 240 s after the last kill");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            stop.store(true, Ordering::SeqCst);
            for t in tasks {
                t.await.unwrap();
            }
            assert_no_panic(&server);
            let states = ks_final_checks(&api, &plans, &storm).await;
            let reports = storm.lock().unwrap().reports;
            eprintln!(
                "convoy kill storm: {cycles} kills, {} convoys ended {states:?} in {:?}, \
                 {reports} reports acknowledged",
                plans.len(),
                t0.elapsed()
            );
            be.stop_and_check(server).await;
            break;
        }
        let load_ms = 300 + (cycle as u64 * 397) % 900;
        tokio::time::sleep(Duration::from_millis(load_ms)).await;
        assert_no_panic(&server);
        server.kill();
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.unwrap();
        }
        dir = server.take_dir();
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Edges
// ---------------------------------------------------------------------------------------------

/// A server with small convoy limits (every test of it gives `max_parallel`, whose default
/// would be over `max_convoy_parallel` here).
const SMALL_LIMITS: &str = "[limits]\nmax_convoy_parallel = 8\nmax_convoy_members_per_request = 10\n\
                            max_convoy_members = 25\nmax_convoy_failed_ids = 3\n";

both_backends!(edges, edges_sqlite, edges_postgres, 240, "[limits]\nmax_convoy_failed_ids = 1000\n");

async fn edges(be: &Backend) {
    let server = be.start().await;
    let api = Api::new(&server.url);
    empty_convoy(&api).await;
    fail_fast(&api).await;
    failed_ids_bound(&api, 1_000, "fids-1000").await;
    open_convoy(&api).await;
    cancel_convoy(&api).await;
    repeats(&api).await;
    held_members(&api).await;
    refusals(&api).await;
    pressure_refusals(&api).await;

    // A server with small limits (on the same database with PostgreSQL).
    let small = be.start_with(SMALL_LIMITS).await;
    let small_api = Api::new(&small.url);
    small_limits(&small_api).await;
    failed_ids_bound(&small_api, 3, "fids-3").await;
    be.stop_and_check(small).await;

    // Last: minting the first token turns auth on.
    restricted_tokens(&api).await;
    be.stop_and_check(server).await;
}

/// An empty sealed convoy ends `completed` in its create's answer, with its on_complete job
/// and events; without `on_complete` it names no job.
async fn empty_convoy(api: &Api) {
    let since = api.head().await;
    let body = json!({"id": "empty-1", "queue": "empty-q", "members": [],
        "on_complete": {"queue": "empty-done", "payload": {"k": 1}}});
    let b = api.created(body).await;
    assert_eq!(b["ids"], json!([]), "{b}");
    assert_eq!(b["duplicates"], json!([]), "{b}");
    let v = &b["convoy"];
    assert_eq!(v["state"], "completed", "an empty sealed convoy ends at once: {v}");
    let fields = [
        ("id", json!("empty-1")),
        ("name", json!("empty-1")),
        ("queue", json!("empty-q")),
        ("sealed", json!(true)),
        ("on_failure", json!("continue")),
        ("max_parallel", json!(10_000)),
        ("limit", json!(10_000)),
        ("failed_total", json!(0)),
        ("counts", zero_counts()),
    ];
    for (k, want) in fields {
        assert_eq!(v[k], want, "{k} of an empty convoy (defaults): {v}");
    }
    assert!(v["created_at"].is_string() && v["finished_at"].is_string(), "timestamps: {v}");
    assert_eq!(v["on_complete"]["queue"], "empty-done", "the on_complete spec as sent: {v}");
    assert_eq!(v["on_complete"]["payload"], json!({"k": 1}), "the on_complete spec as sent: {v}");
    let job = check_on_complete(api, v, "empty-done", &json!({"k": 1}), Some(&BTreeSet::new())).await;
    assert_eq!(job["state"], "ready", "{job}");
    assert!(job.get("convoy_id").is_none(), "the on_complete job is no member: {job}");
    let again = api.convoy("empty-1").await;
    assert_eq!(
        (&again["state"], &again["on_complete_job_id"]),
        (&v["state"], &v["on_complete_job_id"]),
        "{again}"
    );

    // Without on_complete (and without `members`): it ends too, naming no job.
    let b2 = api.created(json!({"id": "empty-2", "queue": "empty-q"})).await;
    let v2 = &b2["convoy"];
    assert_eq!(v2["state"], "completed", "{v2}");
    assert!(v2.get("on_complete_job_id").is_none() && v2.get("on_complete").is_none(), "{v2}");

    // Events: created, then completed, for each.
    let events = api
        .events(since, "convoy.created,convoy.completed", Duration::from_secs(30), |evs| {
            ["empty-1", "empty-2"]
                .iter()
                .all(|id| evs.iter().any(|e| e["type"] == "convoy.completed" && about(e, id)))
        })
        .await;
    for (id, job_id) in [("empty-1", v["on_complete_job_id"].clone()), ("empty-2", Value::Null)] {
        let mine: Vec<&Value> = events.iter().filter(|e| about(e, id)).collect();
        let kinds: Vec<&str> = mine.iter().map(|e| e["type"].as_str().unwrap_or("")).collect();
        assert_eq!(kinds, ["convoy.created", "convoy.completed"], "{id}'s events: {mine:#?}");
        let d = &mine[0]["data"];
        assert_eq!(
            (&d["name"], &d["queue"], &d["limit"], &d["sealed"]),
            (&json!(id), &json!("empty-q"), &json!(10_000), &json!(true)),
            "convoy.created data: {}",
            mine[0]
        );
        let d = &mine[1]["data"];
        assert_eq!(
            (&d["state"], &d["counts"], &d["on_complete_job_id"]),
            (&json!("completed"), &zero_counts(), &job_id),
            "convoy.completed data: {}",
            mine[1]
        );
    }
}

/// `fail_fast`, 20 members of one attempt under `max_parallel: 2`: the first dead member seals
/// the convoy and cancels every member not running; the running one finishes and counts; the
/// convoy ends `failed` with the dead member in `failed_ids`.
async fn fail_fast(api: &Api) {
    let members: Vec<Value> = (0..20).map(|i| json!({"payload": {"i": i}, "max_attempts": 1})).collect();
    let b = api
        .created(json!({"id": "ff-1", "queue": "ff-q", "max_parallel": 2, "on_failure": "fail_fast",
            "members": members, "on_complete": {"queue": "ff-done"}}))
        .await;
    let ids = ids_of(&b);
    assert_eq!(b["convoy"]["on_failure"], "fail_fast", "{b}");
    assert_eq!(counts(&b["convoy"]), expect_counts(&[("total", 20), ("ready", 2), ("held", 18)]), "{b}");
    let claimed = api.claim("ff-q", 10).await;
    assert_eq!(claimed.len(), 2, "only the limit's 2 members are handed out: {claimed:?}");
    let (dying, living) = (&claimed[0], &claimed[1]);
    let out = api.fail(dying, false).await;
    assert_eq!(out["state"], "dead", "{out}");

    let v = api.convoy("ff-1").await;
    assert_eq!(v["state"], "sealed", "fail_fast seals; a running member keeps it from ending: {v}");
    assert_eq!(v["sealed"], true, "{v}");
    let want = expect_counts(&[("total", 20), ("failed", 1), ("running", 1), ("cancelled", 18)]);
    assert_eq!(counts(&v), want, "{v}");
    let members = api.members("ff-1").await;
    assert!(members.iter().map(id_of).eq(ids.iter().cloned()), "members in the order added: {members:?}");
    for m in &members {
        let want = if m["id"] == dying["id"] {
            "dead"
        } else if m["id"] == living["id"] {
            "running"
        } else {
            "cancelled"
        };
        assert_eq!(m["state"], want, "after the first death: {m}");
    }
    let a = api.post("/v1/convoys/ff-1/members", &json!({"members": [{}]})).await;
    refused(&a, 409, "invalid_state", "add to a convoy fail_fast sealed");

    api.complete(living).await;
    let v = api.wait_end("ff-1", Duration::from_secs(30)).await;
    assert_eq!(v["state"], "failed", "{v}");
    let want = expect_counts(&[("total", 20), ("completed", 1), ("failed", 1), ("cancelled", 18)]);
    assert_eq!(counts(&v), want, "{v}");
    assert_eq!(v["failed_total"], 1, "{v}");
    check_on_complete(api, &v, "ff-done", &Value::Null, Some(&BTreeSet::from([id_of(dying)]))).await;
    let a = api.post("/v1/convoys/ff-1/cancel", &json!({})).await;
    refused(&a, 409, "invalid_state", "cancel a failed convoy");
}

/// `bound + 1` members dying (the last one after the others): the on_complete payload lists the
/// first `bound` of them and `failed_total` all.
async fn failed_ids_bound(api: &Api, bound: usize, id: &str) {
    let n = bound + 1;
    let (queue, done) = (format!("{id}-q"), format!("{id}-done"));
    let members: Vec<Value> = (0..n).map(|i| json!({"payload": {"i": i}, "max_attempts": 1})).collect();
    api.created(json!({"id": id, "queue": queue, "max_parallel": n, "members": members,
        "on_complete": {"queue": done}}))
        .await;
    let mut claimed = Vec::new();
    while claimed.len() < n {
        let got = api.claim(&queue, 1_000).await;
        assert!(!got.is_empty(), "{id}: only {} of {n} members handed out", claimed.len());
        claimed.extend(got);
    }
    let last = claimed.pop().expect("a member");
    for chunk in claimed.chunks(1_000) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|j| json!({"id": j["id"], "lease": j["lease"], "error": "planned failure", "retry": false}))
            .collect();
        let a = api.post("/v1/jobs/fail", &json!({ "items": items })).await;
        let results =
            ok(&a, 200, "fail a batch of members")["results"].as_array().cloned().unwrap_or_default();
        assert!(
            results.len() == chunk.len() && results.iter().all(|r| r["ok"] == true),
            "{id}: every fail applied: {}",
            a.brief()
        );
    }
    let v = api.convoy(id).await;
    assert_eq!(v["state"], "sealed", "one member still running: {v}");
    assert_eq!(
        counts(&v),
        expect_counts(&[("total", n as u64), ("failed", bound as u64), ("running", 1)]),
        "{v}"
    );
    api.fail(&last, false).await;
    let v = api.wait_end(id, Duration::from_secs(30)).await;
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(counts(&v), expect_counts(&[("total", n as u64), ("failed", n as u64)]), "{v}");
    assert_eq!(v["failed_total"], n as u64, "{v}");
    let job = check_on_complete(api, &v, &done, &Value::Null, None).await;
    let ids = strings(&job["payload"]["convoy"]["failed_ids"]);
    assert_eq!(ids.len(), bound, "failed_ids holds the bound's {bound} ids");
    let set: BTreeSet<String> = ids.into_iter().collect();
    let first: BTreeSet<String> = claimed.iter().map(id_of).collect();
    assert_eq!(set.len(), bound, "failed_ids are distinct");
    assert!(set == first, "failed_ids are the first {bound} dead members (not the last, {})", id_of(&last));
    assert_eq!(
        job["payload"]["convoy"]["failed_total"], n as u64,
        "{}",
        job["payload"]["convoy"]["failed_total"]
    );
}

/// An open convoy: member `unique_key` dedup on create and add, it stays open (and a long-poll
/// waits) with every member done, takes more members, and ends only when sealed (waking a
/// long-poll); then a second seal is 200, adding is 409, unknown convoys are 404.
async fn open_convoy(api: &Api) {
    let b = api
        .created(json!({"id": "open-1", "queue": "open-q", "sealed": false,
            "on_complete": {"queue": "open-done"},
            "members": [{"payload": {"i": 0}, "unique_key": "u0"},
                {"payload": {"i": 1}, "unique_key": "u0"}]}))
        .await;
    let ids = ids_of(&b);
    assert_eq!(b["duplicates"], json!([1]), "the second member repeats the first's unique_key: {b}");
    assert_eq!(ids.len(), 2, "{b}");
    assert_eq!(ids[0], ids[1], "a duplicate member answers the first one's id: {b}");
    let v = &b["convoy"];
    assert_eq!((&v["state"], &v["sealed"]), (&json!("open"), &json!(false)), "{v}");
    assert_eq!(counts(v), expect_counts(&[("total", 1), ("ready", 1)]), "{v}");

    let got = api.claim("open-q", 10).await;
    assert_eq!(got.len(), 1, "{got:?}");
    api.complete(&got[0]).await;
    let v = api.convoy("open-1").await;
    assert_eq!(v["state"], "open", "an open convoy does not end when its members do: {v}");
    assert_eq!(counts(&v), expect_counts(&[("total", 1), ("completed", 1)]), "{v}");
    assert!(v.get("finished_at").is_none() && v.get("on_complete_job_id").is_none(), "{v}");
    let t = Instant::now();
    let a = api.get("/v1/convoys/open-1?wait_ms=300").await;
    assert_eq!(ok(&a, 200, "a long-poll on an open convoy")["state"], "open", "{}", a.brief());
    assert!(t.elapsed() >= Duration::from_millis(250), "the long-poll ended after {:?}", t.elapsed());

    let a = api
        .post(
            "/v1/convoys/open-1/members",
            &json!({"members": [{"unique_key": "u0"}, {"payload": {"i": 2}}]}),
        )
        .await;
    let added = ok(&a, 201, "add to an open convoy").clone();
    let new_ids = ids_of(&added);
    assert_eq!(added["duplicates"], json!([0]), "u0 is taken for the convoy's life: {added}");
    assert_eq!((new_ids.len(), &new_ids[0]), (2, &ids[0]), "{added}");
    let got = api.claim("open-q", 10).await;
    assert_eq!(got.iter().map(id_of).collect::<Vec<_>>(), [new_ids[1].clone()], "{got:?}");
    api.complete(&got[0]).await;
    let v = api.convoy("open-1").await;
    assert_eq!(v["state"], "open", "{v}");
    assert_eq!(counts(&v), expect_counts(&[("total", 2), ("completed", 2)]), "{v}");

    // The seal ends it at once, and wakes a waiting GET.
    let waiter = {
        let api = api.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let a = api.get("/v1/convoys/open-1?wait_ms=10000").await;
            (t.elapsed(), a)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let a = api.post("/v1/convoys/open-1/seal", &json!({})).await;
    let v = ok(&a, 200, "seal open-1").clone();
    assert_eq!(
        (&v["state"], &v["sealed"]),
        (&json!("completed"), &json!(true)),
        "sealing with no live member ends it: {v}"
    );
    let (took, a) = waiter.await.unwrap();
    assert_eq!(ok(&a, 200, "the waiting GET")["state"], "completed", "{}", a.brief());
    assert!(took < Duration::from_secs(5), "the seal woke the waiting GET only after {took:?}");
    check_on_complete(api, &v, "open-done", &Value::Null, Some(&BTreeSet::new())).await;

    let a = api.post("/v1/convoys/open-1/seal", &json!({})).await;
    assert_eq!(ok(&a, 200, "seal again")["state"], "completed", "{}", a.brief());
    let a = api.post("/v1/convoys/open-1/members", &json!({"members": [{}]})).await;
    refused(&a, 409, "invalid_state", "add after the seal");
    let a = api.post("/v1/convoys/open-1/cancel", &json!({})).await;
    refused(&a, 409, "invalid_state", "cancel a completed convoy");
    refused(&api.get("/v1/convoys/nope").await, 404, "not_found", "GET an unknown convoy");
    let a = api.post("/v1/convoys/nope/members", &json!({"members": [{}]})).await;
    refused(&a, 404, "not_found", "add to an unknown convoy");

    // A convoy sealed from the start refuses members while it runs.
    api.created(json!({"id": "sealed-1", "queue": "sealed-q", "members": [{}]})).await;
    let a = api.post("/v1/convoys/sealed-1/members", &json!({"members": [{}]})).await;
    refused(&a, 409, "invalid_state", "add to a sealed convoy");
    let a = api.post("/v1/convoys/sealed-1/cancel", &json!({})).await;
    assert_eq!(
        ok(&a, 200, "cancel sealed-1")["state"],
        "cancelled",
        "nothing running: it ends at once: {}",
        a.brief()
    );
}

/// Cancel: seals and cancels every member not running; ends `cancelled` once the running one
/// finishes (at once when none runs); again: 200.
async fn cancel_convoy(api: &Api) {
    let members: Vec<Value> = (0..5).map(|i| json!({"payload": {"i": i}})).collect();
    api.created(json!({"id": "cx-1", "queue": "cx-q", "max_parallel": 2, "members": members,
        "on_complete": {"queue": "cx-done", "payload": {"why": "cancel"}}}))
        .await;
    let got = api.claim("cx-q", 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let a = api.post("/v1/convoys/cx-1/cancel", &json!({})).await;
    let v = ok(&a, 200, "cancel cx-1").clone();
    assert_eq!(
        (&v["state"], &v["sealed"]),
        (&json!("sealed"), &json!(true)),
        "a running member keeps it live: {v}"
    );
    assert_eq!(counts(&v), expect_counts(&[("total", 5), ("running", 1), ("cancelled", 4)]), "{v}");
    let a = api.post("/v1/convoys/cx-1/cancel", &json!({})).await;
    ok(&a, 200, "cancel cx-1 again");
    api.complete(&got[0]).await;
    let v = api.wait_end("cx-1", Duration::from_secs(30)).await;
    assert_eq!(v["state"], "cancelled", "{v}");
    assert_eq!(counts(&v), expect_counts(&[("total", 5), ("completed", 1), ("cancelled", 4)]), "{v}");
    check_on_complete(api, &v, "cx-done", &json!({"why": "cancel"}), Some(&BTreeSet::new())).await;
    let a = api.post("/v1/convoys/cx-1/cancel", &json!({})).await;
    assert_eq!(ok(&a, 200, "cancel a cancelled convoy")["state"], "cancelled", "{}", a.brief());

    api.created(json!({"id": "cx-2", "queue": "cx-q", "max_parallel": 1, "members": [{}, {}, {}],
        "on_complete": {"queue": "cx-done"}}))
        .await;
    let a = api.post("/v1/convoys/cx-2/cancel", &json!({})).await;
    let v = ok(&a, 200, "cancel cx-2").clone();
    assert_eq!(v["state"], "cancelled", "nothing running: it ends at once: {v}");
    assert_eq!(counts(&v), expect_counts(&[("total", 3), ("cancelled", 3)]), "{v}");
    check_on_complete(api, &v, "cx-done", &Value::Null, Some(&BTreeSet::new())).await;
}

/// A repeated id: 200 `duplicate`, nothing added; `name`, `queue` or `max_parallel` differing:
/// 409 `conflict` naming them in `details.fields`. Member `unique_key` dedup is per convoy.
async fn repeats(api: &Api) {
    let body = json!({"id": "rep-1", "name": "first", "queue": "rep-q", "max_parallel": 5,
        "members": [{"payload": {"i": 0}}, {"payload": {"i": 1}}]});
    assert_eq!(ids_of(&api.created(body.clone()).await).len(), 2);
    let mut other_members = body.clone();
    other_members["members"] = json!([{"payload": {"i": 9}}]);
    for (b, what) in
        [(body.clone(), "the same create again"), (other_members, "the same id with other members")]
    {
        let a = api.post("/v1/convoys", &b).await;
        let again = ok(&a, 200, what);
        assert_eq!(again["duplicate"], true, "{what}: {again}");
        assert_eq!((&again["ids"], &again["duplicates"]), (&json!([]), &json!([])), "{what}: {again}");
        assert_eq!(again["convoy"]["id"], "rep-1", "{what}: {again}");
        assert_eq!(again["convoy"]["counts"]["total"], 2, "{what} adds nothing: {again}");
    }
    let changes = [
        (json!({"name": "second", "max_parallel": 6}), vec!["max_parallel", "name"]),
        (json!({"queue": "rep-other"}), vec!["queue"]),
        (json!({"max_parallel": {"adaptive": {"min": 1, "max": 5}}}), vec!["max_parallel"]),
    ];
    for (change, fields) in changes {
        let mut b = body.clone();
        for (k, v) in change.as_object().unwrap() {
            b[k] = v.clone();
        }
        let a = api.post("/v1/convoys", &b).await;
        let details = refused(&a, 409, "conflict", &format!("the same id with {change}"));
        let mut got = strings(&details["fields"]);
        got.sort();
        assert_eq!(got, fields, "details.fields of the conflict with {change}: {}", a.brief());
    }
    let v = api.convoy("rep-1").await;
    let kept = (&v["name"], &v["queue"], &v["max_parallel"], &v["counts"]["total"]);
    assert_eq!(kept, (&json!("first"), &json!("rep-q"), &json!(5), &json!(2)), "nothing changed: {v}");

    let b = api
        .created(json!({"id": "rep-2", "queue": "rep-q",
            "members": [{"unique_key": "k"}, {"unique_key": "k"}, {"unique_key": "k2"}]}))
        .await;
    let ids = ids_of(&b);
    assert_eq!(b["duplicates"], json!([1]), "{b}");
    assert!(ids[0] == ids[1] && ids[2] != ids[0], "{b}");
    assert_eq!(b["convoy"]["counts"]["total"], 2, "{b}");
    let b3 = api.created(json!({"id": "rep-3", "queue": "rep-q", "members": [{"unique_key": "k"}]})).await;
    assert_eq!(b3["duplicates"], json!([]), "a member's unique_key is its convoy's alone: {b3}");
    assert_ne!(ids_of(&b3)[0], ids[0], "{b3}");
}

/// The queue counts of `queue` from `GET /v1/queues`.
async fn queue_counts(api: &Api, queue: &str) -> Value {
    let a = api.get("/v1/queues").await;
    let b = ok(&a, 200, "GET /v1/queues");
    b["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|q| q["queue"] == queue))
        .map(|q| q["counts"].clone())
        .unwrap_or_else(|| panic!("no queue {queue}: {}", a.brief()))
}

/// Members over the limit are `held`: in `GET /v1/jobs/{id}` (with `convoy_id`), in
/// `?state=held` and in queue counts; a held member can be cancelled; only the slot's member is
/// handed out, and its end releases the next.
async fn held_members(api: &Api) {
    let members: Vec<Value> = (0..3).map(|i| json!({"payload": {"i": i}})).collect();
    let b =
        api.created(json!({"id": "held-1", "queue": "held-q", "max_parallel": 1, "members": members})).await;
    let ids = ids_of(&b);
    for (k, state) in [(0, "ready"), (1, "held"), (2, "held")] {
        let j = api.job(&ids[k]).await;
        assert_eq!((&j["state"], &j["convoy_id"]), (&json!(state), &json!("held-1")), "member {k}: {j}");
    }
    let a = api.post("/v1/jobs", &json!({"queue": "plain-q"})).await;
    let plain = ok(&a, 201, "a plain job")["id"].as_str().expect("an id").to_string();
    assert!(api.job(&plain).await.get("convoy_id").is_none(), "a plain job has no convoy_id");
    let held: BTreeSet<String> = api.jobs("queue=held-q&state=held").await.iter().map(id_of).collect();
    assert_eq!(held, BTreeSet::from([ids[1].clone(), ids[2].clone()]), "?state=held");
    let q = queue_counts(api, "held-q").await;
    assert_eq!((&q["held"], &q["ready"]), (&json!(2), &json!(1)), "queue counts include held: {q}");

    let a = api.post(&format!("/v1/jobs/{}/cancel", ids[2]), &json!({})).await;
    assert_eq!(ok(&a, 200, "cancel a held member")["state"], "cancelled", "{}", a.brief());
    let v = api.convoy("held-1").await;
    assert_eq!(
        counts(&v),
        expect_counts(&[("total", 3), ("ready", 1), ("held", 1), ("cancelled", 1)]),
        "{v}"
    );
    for (k, member) in ids.iter().enumerate().take(2) {
        let got = api.claim("held-q", 10).await;
        assert_eq!(
            got.iter().map(id_of).collect::<Vec<_>>(),
            std::slice::from_ref(member),
            "only member {k} is handed out"
        );
        api.complete(&got[0]).await;
    }
    let v = api.wait_end("held-1", Duration::from_secs(30)).await;
    assert_eq!(v["state"], "completed", "a cancelled member does not cancel its convoy: {v}");
    assert_eq!(counts(&v), expect_counts(&[("total", 3), ("completed", 2), ("cancelled", 1)]), "{v}");
}

/// Every request bound one past its edge on the default limits (422 `validation_failed` naming
/// the field), the edges themselves accepted, nothing refused stored.
async fn refusals(api: &Api) {
    let base = |extra: Value| {
        let mut b = json!({"queue": "ref-q"});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let over: Vec<Value> = (0..10_001).map(|_| json!({})).collect();
    let long = "x".repeat(129);
    let dep = "0190b4d2-0000-7000-8000-000000000000";
    let cases = [
        (base(json!({"max_parallel": 10_001})), "max_parallel"),
        (base(json!({"max_parallel": 0})), "max_parallel"),
        (base(json!({ "members": over })), "members"),
        (base(json!({"members": [{"queue": "other"}]})), "members[0].queue"),
        (base(json!({"members": [{}, {"run_at": "2030-01-01T00:00:00Z"}]})), "members[1].run_at"),
        (base(json!({"members": [{}, {}, {"delay_ms": 10}]})), "members[2].delay_ms"),
        (base(json!({"members": [{"depends_on": [dep]}]})), "members[0].depends_on"),
        (base(json!({"on_complete": {"queue": "x", "unique_key": "k"}})), "on_complete.unique_key"),
        (base(json!({"on_complete": {"queue": "x", "depends_on": [dep]}})), "on_complete.depends_on"),
        (base(json!({ "id": long })), "id"),
        (base(json!({"id": "a/b"})), "id"),
        (base(json!({"id": ""})), "id"),
        (base(json!({ "name": long })), "name"),
        (base(json!({"name": "a\u{7}b"})), "name"),
    ];
    for (body, field) in cases {
        let a = api.post("/v1/convoys", &body).await;
        refused_field(&a, field, &format!("create refused for {field}"));
    }
    let adaptive = [
        json!({"min": 0, "max": 5}),
        json!({"min": 5, "max": 4}),
        json!({"min": 1, "max": 10_001}),
        json!({"min": 3, "max": 9, "start": 2}),
        json!({"min": 3, "max": 9, "start": 10}),
    ];
    for bad in adaptive {
        let a = api.post("/v1/convoys", &base(json!({"max_parallel": {"adaptive": bad}}))).await;
        refused_max_parallel(&a, &format!("adaptive {bad}"));
    }
    let a = api.post("/v1/convoys", &base(json!({"on_failure": "sometimes"}))).await;
    assert!(matches!(a.status, 400 | 422), "on_failure \"sometimes\": {}", a.brief());
    let a =
        api.post("/v1/convoys", &base(json!({"id": "ref-bad", "members": [{}, {"queue": "other"}]}))).await;
    refused_field(&a, "members[1].queue", "a create with one bad member");
    refused(&api.get("/v1/convoys/ref-bad").await, 404, "not_found", "a refused create stores nothing");

    // The edges are accepted.
    let b = api.created(base(json!({"id": "ref-edge", "max_parallel": 10_000}))).await;
    assert_eq!(b["convoy"]["limit"], 10_000, "{b}");
    let b =
        api.created(base(json!({"id": "ref-ad", "max_parallel": {"adaptive": {"min": 3, "max": 9}}}))).await;
    assert_eq!(
        b["convoy"]["max_parallel"],
        json!({"adaptive": {"min": 3, "max": 9, "start": 3}}),
        "start defaults to min: {b}"
    );
    assert_eq!(b["convoy"]["limit"], 3, "{b}");
    let b = api
        .created(base(
            json!({"id": "ref-ad2", "max_parallel": {"adaptive": {"min": 3, "max": 9, "start": 5}}}),
        ))
        .await;
    assert_eq!(b["convoy"]["limit"], 5, "{b}");
    api.created(base(json!({"id": "y".repeat(128), "name": "n".repeat(128)}))).await;
    let nulls = json!({"queue": null, "depends_on": null, "run_at": null, "delay_ms": null});
    let b = api.created(base(json!({"id": "ref-null", "members": [nulls]}))).await;
    assert_eq!(ids_of(&b).len(), 1, "null fields are absent ones: {b}");

    // Adding: the same member rules, 1..=10,000 members.
    api.created(base(json!({"id": "ref-open", "sealed": false}))).await;
    let adds = [
        (json!({"members": []}), "members"),
        (json!({ "members": over }), "members"),
        (json!({"members": [{"queue": "other"}]}), "members[0].queue"),
        (json!({"members": [{}, {"depends_on": [dep]}]}), "members[1].depends_on"),
    ];
    for (body, field) in adds {
        let a = api.post("/v1/convoys/ref-open/members", &body).await;
        refused_field(&a, field, &format!("add refused for {field}"));
    }
    assert_eq!(api.convoy("ref-open").await["counts"]["total"], 0, "refused adds add nothing");

    // Reads: wait_ms and page sizes.
    refused_field(
        &api.get("/v1/convoys/ref-open?wait_ms=30001").await,
        "wait_ms",
        "wait_ms past max_wait_ms",
    );
    refused_field(&api.get("/v1/convoys?limit=1001").await, "limit", "a convoy page past max_page_size");
    let a = api.get("/v1/convoys/ref-open/members?limit=1001").await;
    refused_field(&a, "limit", "a member page past max_page_size");
    let a = api.post("/v1/convoys/ref-open/cancel", &json!({})).await;
    assert_eq!(ok(&a, 200, "cancel ref-open")["state"], "cancelled", "{}", a.brief());
}

/// `pressure` outside 0.0..=1.0 on a heartbeat, a complete, a fail and batch items: 422 naming
/// it (nothing applied); inside, accepted.
async fn pressure_refusals(api: &Api) {
    for _ in 0..3 {
        ok(&api.post("/v1/jobs", &json!({"queue": "pr-q"})).await, 201, "enqueue on pr-q");
    }
    let jobs = api.claim("pr-q", 3).await;
    assert_eq!(jobs.len(), 3, "{jobs:?}");
    let (a, b, c) = (&jobs[0], &jobs[1], &jobs[2]);
    let path = |j: &Value, verb: &str| format!("/v1/jobs/{}/{verb}", id_of(j));
    for (verb, extra) in [("heartbeat", json!({})), ("complete", json!({})), ("fail", json!({"error": "x"}))]
    {
        for bad in [json!(1.5), json!(-0.1)] {
            let mut body = extra.clone();
            body["lease"] = a["lease"].clone();
            body["pressure"] = bad.clone();
            let answer = api.post(&path(a, verb), &body).await;
            refused_field(&answer, "pressure", &format!("{verb} with pressure {bad}"));
        }
    }
    let item = json!({"id": b["id"], "lease": b["lease"], "pressure": 1.5});
    let answer = api.post("/v1/jobs/complete", &json!({"items": [item]})).await;
    refused_field(&answer, "items[0].pressure", "a batch complete item with pressure 1.5");
    let item = json!({"id": b["id"], "lease": b["lease"], "error": "x", "pressure": 1.5});
    let answer = api.post("/v1/jobs/fail", &json!({"items": [item]})).await;
    refused_field(&answer, "items[0].pressure", "a batch fail item with pressure 1.5");

    let answer = api.post(&path(a, "heartbeat"), &json!({"lease": a["lease"], "pressure": 0.5})).await;
    ok(&answer, 200, "a heartbeat with pressure 0.5");
    let answer = api.post(&path(a, "complete"), &json!({"lease": a["lease"], "pressure": 1.0})).await;
    assert_eq!(ok(&answer, 200, "complete with pressure 1.0")["state"], "completed", "{}", answer.brief());
    let item = json!({"id": b["id"], "lease": b["lease"], "pressure": 0.0});
    let answer = api.post("/v1/jobs/complete", &json!({"items": [item]})).await;
    assert_eq!(
        ok(&answer, 200, "a batch complete with pressure 0.0")["results"][0]["ok"],
        true,
        "{}",
        answer.brief()
    );
    let body = json!({"lease": c["lease"], "error": "x", "retry": false, "pressure": 0.8});
    let answer = api.post(&path(c, "fail"), &body).await;
    assert_eq!(ok(&answer, 200, "fail with pressure 0.8")["state"], "dead", "{}", answer.brief());
}

/// `SMALL_LIMITS`: `max_convoy_parallel`, `max_convoy_members_per_request` and
/// `max_convoy_members` one past their edges (422 naming the field), the edges accepted.
async fn small_limits(api: &Api) {
    let list = |n: usize| -> Vec<Value> { (0..n).map(|i| json!({"payload": {"i": i}})).collect() };
    let a = api.post("/v1/convoys", &json!({"queue": "sm-q", "max_parallel": 9})).await;
    refused_field(&a, "max_parallel", "max_parallel 9 over max_convoy_parallel 8");
    let a = api
        .post("/v1/convoys", &json!({"queue": "sm-q", "max_parallel": {"adaptive": {"min": 1, "max": 9}}}))
        .await;
    refused_max_parallel(&a, "adaptive max 9 over max_convoy_parallel 8");
    let b = api.created(json!({"id": "sm-8", "queue": "sm-q", "max_parallel": 8})).await;
    assert_eq!(b["convoy"]["limit"], 8, "{b}");
    let a = api.post("/v1/convoys", &json!({"queue": "sm-q", "max_parallel": 8, "members": list(11)})).await;
    refused_field(&a, "members", "11 members over max_convoy_members_per_request 10");

    api.created(
        json!({"id": "sm-open", "queue": "sm-q", "max_parallel": 8, "sealed": false, "members": list(10)}),
    )
    .await;
    let add = |n: usize| json!({ "members": list(n) });
    for (n, accepted, what) in [
        (11, false, "11 members in one add"),
        (10, true, "10 more (20)"),
        (6, false, "6 more: 26 over max_convoy_members 25"),
        (5, true, "5 more (25)"),
        (1, false, "one more: 26"),
    ] {
        let a = api.post("/v1/convoys/sm-open/members", &add(n)).await;
        if accepted {
            assert_eq!(ids_of(ok(&a, 201, what)).len(), n, "{what}: {}", a.brief());
        } else {
            refused_field(&a, "members", what);
        }
    }
    let v = api.convoy("sm-open").await;
    assert_eq!(v["counts"]["total"], 25, "{v}");
    let a = api.post("/v1/convoys/sm-open/cancel", &json!({})).await;
    assert_eq!(ok(&a, 200, "cancel sm-open")["state"], "cancelled", "{}", a.brief());
}

/// Mints a token through `api` (tokenless for the first one): its secret (201 asserted).
async fn mint(api: &Api, body: Value) -> String {
    let a = api.post("/v1/tokens", &body).await;
    ok(&a, 201, &format!("mint {body}"))["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token secret: {}", a.brief()))
        .to_string()
}

/// A token restricted to queue `tk-a`: works on its convoys (an on_complete on `tk-a` too), is
/// refused a convoy or an on_complete on another queue, and gets the same 403 on every route
/// of an unknown convoy, a foreign one and one whose on_complete is foreign, changing nothing.
async fn restricted_tokens(api: &Api) {
    let root = api.as_token(&mint(api, json!({"name": "root", "scopes": ["admin"]})).await);
    root.created(json!({"id": "tk-foreign", "queue": "tk-b", "max_parallel": 1, "members": [{}]})).await;
    root.created(
        json!({"id": "tk-mixed", "queue": "tk-a", "members": [{}], "on_complete": {"queue": "tk-b"}}),
    )
    .await;
    let ra = root.as_token(
        &mint(&root, json!({"name": "ra", "scopes": ["produce", "read"], "queues": ["tk-a"]})).await,
    );

    ra.created(json!({"id": "tk-own", "queue": "tk-a", "sealed": false, "members": [{}],
        "on_complete": {"queue": "tk-a"}}))
        .await;
    ok(&ra.get("/v1/convoys/tk-own").await, 200, "GET its own convoy");
    ok(&ra.get("/v1/convoys/tk-own/members").await, 200, "its own convoy's members");
    ok(&ra.post("/v1/convoys/tk-own/members", &json!({"members": [{}]})).await, 201, "add to its own convoy");
    ok(&ra.post("/v1/convoys/tk-own/seal", &json!({})).await, 200, "seal its own convoy");

    let a = ra
        .post("/v1/convoys", &json!({"id": "tk-bad", "queue": "tk-a", "on_complete": {"queue": "tk-b"}}))
        .await;
    refused(&a, 403, "forbidden", "a convoy whose on_complete is on another queue");
    let a = ra.post("/v1/convoys", &json!({"id": "tk-bad", "queue": "tk-b"})).await;
    refused(&a, 403, "forbidden", "a convoy on another queue");
    refused(&root.get("/v1/convoys/tk-bad").await, 404, "not_found", "a refused create stores nothing");

    // Unknown, foreign, and foreign through its on_complete: the same 403 on every route.
    let mut seen: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for id in ["tk-nope", "tk-foreign", "tk-mixed"] {
        let routes = [
            ("GET", format!("/v1/convoys/{id}"), Value::Null),
            ("GET", format!("/v1/convoys/{id}/members"), Value::Null),
            ("POST", format!("/v1/convoys/{id}/members"), json!({"members": [{}]})),
            ("POST", format!("/v1/convoys/{id}/seal"), json!({})),
            ("POST", format!("/v1/convoys/{id}/cancel"), json!({})),
        ];
        for (method, path, body) in routes {
            let a = if method == "GET" { ra.get(&path).await } else { ra.post(&path, &body).await };
            refused(&a, 403, "forbidden", &format!("{method} {path} with a token of tk-a"));
            let text = a.body.to_string();
            assert!(!text.contains("tk-b"), "{method} {path}: the refusal names the foreign queue: {text}");
            let route = format!("{method} {}", path.replace(id, "<id>"));
            seen.entry(route).or_default().insert(text.replace(id, "<id>"));
        }
    }
    for (route, bodies) in &seen {
        assert_eq!(
            bodies.len(),
            1,
            "{route}: unknown and foreign convoys are refused differently: {bodies:#?}"
        );
    }
    for id in ["tk-foreign", "tk-mixed"] {
        let v = root.convoy(id).await;
        assert_eq!(
            (&v["state"], &v["counts"]["total"]),
            (&json!("sealed"), &json!(1)),
            "{id} unchanged: {v}"
        );
    }

    // Lists hold only what the token may see (or are refused).
    let a = ra.get("/v1/convoys").await;
    if a.status != 403 {
        let list = ok(&a, 200, "list convoys with a token of tk-a")["convoys"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for v in &list {
            assert!(v["queue"] == "tk-a" && v["id"] != "tk-foreign", "a convoy beyond tk-a listed: {v}");
        }
    }

    // Scopes: a read-only token reads and writes nothing; no token at all is 401.
    let rr = root.as_token(&mint(&root, json!({"name": "rr", "scopes": ["read"], "queues": ["tk-a"]})).await);
    ok(&rr.get("/v1/convoys/tk-own").await, 200, "GET with a read token");
    refused(
        &rr.post("/v1/convoys", &json!({"queue": "tk-a"})).await,
        403,
        "forbidden",
        "create with a read token",
    );
    let a = rr.post("/v1/convoys/tk-own/cancel", &json!({})).await;
    refused(&a, 403, "forbidden", "cancel with a read token");
    assert_eq!(api.get("/v1/convoys/tk-own").await.status, 401, "no token once auth is on");
}

// ---------------------------------------------------------------------------------------------
// 4. The adaptive limit
// ---------------------------------------------------------------------------------------------

/// The test worker's run time with `n` jobs running at once (itself included): `base_ms` up to
/// 32, doubled for every 4 more.
fn slowdown_from(base_ms: u64, n: usize) -> Duration {
    let doublings = n.saturating_sub(32).div_ceil(4).min(8) as u32;
    Duration::from_millis(base_ms << doublings)
}

/// The issue's worker: 20 ms up to 32 at once.
fn slowdown(n: usize) -> Duration {
    slowdown_from(20, n)
}

/// The same worker at an 80 ms base, for PostgreSQL (`FERRY_CONVOY_PG_BASE_MS=20` runs the
/// issue's 20 ms there too). The server samples a run from the claim's transaction to the
/// report's, so on PostgreSQL each sample also carries the claim's commit and both HTTP trips,
/// 15–25 ms on this machine class and more on a slow draw or a loaded PostgreSQL: at a 20 ms
/// base that overhead alone decides whether 33 jobs look 1.5× slower (the limit wandered
/// 23–41); at 40 ms a slow draw (a CI run, and this machine on 2026-12-04, three tries each)
/// still lowered 26 → 19 with the handlers at their base time. At 80 ms (half the completions
/// per second at the same limit) the handlers' own slowdown decides, as the scenario means;
/// the band is the same.
fn slowdown_pg(n: usize) -> Duration {
    let base = std::env::var("FERRY_CONVOY_PG_BASE_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(80);
    slowdown_from(base, n)
}

/// The limit's history read from the events of one convoy, in log order.
#[derive(Debug, Default)]
struct Walk {
    errors: Vec<String>,
    changes: usize,
    reasons: BTreeMap<String, usize>,
    /// The limit in force at each `job.completed` of the convoy's queue, in order.
    at_completion: Vec<u64>,
    /// The limit after the last event.
    last: Option<u64>,
}

/// Walks `events` in cursor order: `convoy.created` sets the limit, each `convoy.limit_changed`
/// must start from it (a change without an event would break the chain), stay within
/// `min..=max`, add 1 for `increase` and take `max(min, from * 3 / 4)` for a lowering;
/// `job.completed` events of `queue` record the limit in force.
fn walk_limit(events: &[Value], id: &str, queue: &str, min: u64, max: u64) -> Walk {
    let mut sorted: Vec<&Value> = events.iter().collect();
    sorted.sort_by_key(|e| e["cursor"].as_u64().unwrap_or(0));
    let mut w = Walk::default();
    let mut limit: Option<u64> = None;
    for e in sorted {
        match e["type"].as_str().unwrap_or("") {
            "job.completed" if e["queue"] == queue => match limit {
                Some(l) => w.at_completion.push(l),
                None => w.errors.push(format!("a completion before convoy.created: {e}")),
            },
            "convoy.created" if about(e, id) => {
                limit = e["data"]["limit"].as_u64();
                if limit.is_none() {
                    w.errors.push(format!("convoy.created without data.limit: {e}"));
                }
            }
            "convoy.limit_changed" if about(e, id) => {
                let d = &e["data"];
                let (Some(from), Some(to)) = (d["from"].as_u64(), d["to"].as_u64()) else {
                    w.errors.push(format!("convoy.limit_changed without from and to: {e}"));
                    continue;
                };
                let reason = d["reason"].as_str().unwrap_or("").to_string();
                w.changes += 1;
                *w.reasons.entry(reason.clone()).or_default() += 1;
                if Some(from) != limit {
                    w.errors.push(format!(
                        "a change from {from} while the limit was {limit:?} (a change without an event?): {e}"
                    ));
                }
                if from == to || !(min..=max).contains(&to) {
                    w.errors.push(format!("a change to {to} (from {from}, within {min}..={max}): {e}"));
                }
                let want = match reason.as_str() {
                    "increase" => Some(from + 1),
                    "run_time" | "failures" | "pressure" => Some((from * 3 / 4).max(min)),
                    _ => None,
                };
                if want != Some(to) {
                    w.errors.push(format!("{reason:?} from {from} should give {want:?}, not {to}: {e}"));
                }
                limit = Some(to);
            }
            _ => {}
        }
    }
    w.last = limit;
    w
}

/// A view of the adaptive case that breaks a rule: ready members while the slots (ready +
/// running + retrying) are over the limit (a lower limit takes surplus ready ones back to
/// held), or a limit outside 24..=40 once `tail_from` members completed.
fn adaptive_violation(v: &Value, tail_from: u64) -> Option<String> {
    let c = counts(v);
    let Some(limit) = v["limit"].as_u64() else { return Some(format!("a view without limit: {v}")) };
    let slots = c["ready"] + c["running"] + c["retrying"];
    if c["ready"] > 0 && slots > limit {
        return Some(format!("{} ready while {slots} slots are over the limit {limit}: {v}", c["ready"]));
    }
    if c["completed"] >= tail_from && !(24..=40).contains(&limit) {
        return Some(format!("limit {limit} after {} completions: {v}", c["completed"]));
    }
    None
}

both_backends!(
    adaptive_limit_settles,
    adaptive_limit_settles_sqlite,
    adaptive_limit_settles_postgres,
    240 + adaptive_members() as u64 / 100,
    ""
);

/// `FERRY_CONVOY_ADAPTIVE_MEMBERS` members under `{adaptive: {min: 1, max: 200}}`, worked by
/// the 64-handler test worker that slows down past 32 jobs at once: over the last 5,000
/// completions (a quarter, when fewer) the limit stays within 24..=40; every change is an event.
async fn adaptive_limit_settles(be: &Backend) {
    let server = be.start().await;
    let api = Api::new(&server.url);
    let n = adaptive_members();
    let tail = (n / 4).min(5_000);
    let (id, queue) = ("ad-1", "ad-q");
    let since = api.head().await;
    let members: Vec<Value> = (0..n).map(|i| json!({"payload": {"i": i}})).collect();
    let base = json!({"id": id, "queue": queue, "max_parallel": {"adaptive": {"min": 1, "max": 200}}});
    create_in_chunks(std::slice::from_ref(&api), base, members, 10_000).await;
    let v = api.convoy(id).await;
    assert_eq!(v["max_parallel"], json!({"adaptive": {"min": 1, "max": 200, "start": 1}}), "{v}");
    assert_eq!(v["limit"], 1, "an adaptive limit starts at start (= min): {v}");

    let stop = Arc::new(AtomicBool::new(false));
    let tail_from = (n - tail) as u64;
    let sampler =
        spawn_sampler(vec![api.clone()], id.to_string(), Duration::from_millis(50), stop.clone(), move |v| {
            adaptive_violation(v, tail_from)
        });
    let flight = Arc::new(Flight::default());
    let t0 = Instant::now();
    let worker = tokio::spawn(raw_worker(
        api.clone(),
        queue.to_string(),
        64,
        if be.db.is_some() { slowdown_pg } else { slowdown },
        None,
        flight.clone(),
        stop.clone(),
    ));
    let view = api.wait_end(id, Duration::from_secs(180 + n as u64 / 100)).await;
    let took = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.await.unwrap();
    assert_none("the test worker's reports", &worker.await.unwrap());
    assert_eq!(view["state"], "completed", "{view}");
    assert_eq!(counts(&view), expect_counts(&[("total", n as u64), ("completed", n as u64)]), "{view}");
    assert_none("sampler reads", &samples.errors);
    assert_none("views of the adaptive convoy", &samples.violations);

    let types = "job.completed,convoy.created,convoy.limit_changed,convoy.completed";
    let events = api
        .events(since, types, Duration::from_secs(60), |evs| {
            evs.iter().filter(|e| e["type"] == "job.completed").count() >= n
                && evs.iter().any(|e| e["type"] == "convoy.completed" && about(e, id))
        })
        .await;
    let w = walk_limit(&events, id, queue, 1, 200);
    assert_none("the chain of convoy.limit_changed events", &w.errors);
    assert_eq!(w.at_completion.len(), n, "one job.completed per member");
    assert_eq!(w.last, view["limit"].as_u64(), "the last change's `to` is the convoy's limit: {view}");
    let mut outside = Vec::new();
    for (k, l) in w.at_completion.iter().enumerate().skip(n - tail) {
        if !(24..=40).contains(l) {
            outside.push(format!("completion {}: limit {l}", k + 1));
        }
    }
    assert_none(&format!("the limit over the last {tail} completions (24..=40)"), &outside);
    assert!(
        w.reasons.get("run_time").is_some_and(|k| *k > 0),
        "the slowdown never lowered the limit: {:?}",
        w.reasons
    );
    let tail_limits = &w.at_completion[n - tail..];
    eprintln!(
        "convoy adaptive: {n} members in {took:?}, {} changes {:?}, limit over the last {tail} \
         within {:?}..={:?}, {} samples, worker peak {}",
        w.changes,
        w.reasons,
        tail_limits.iter().min(),
        tail_limits.iter().max(),
        samples.taken,
        flight.peak.load(Ordering::SeqCst)
    );
    be.stop_and_check(server).await;
}

both_backends!(
    pressure_lowers_the_limit,
    pressure_lowers_the_limit_sqlite,
    pressure_lowers_the_limit_postgres,
    120,
    ""
);

async fn pressure_lowers_the_limit(be: &Backend) {
    lowered_by(be, "pressure").await;
}

both_backends!(
    failures_lower_the_limit,
    failures_lower_the_limit_sqlite,
    failures_lower_the_limit_postgres,
    120,
    ""
);

async fn failures_lower_the_limit(be: &Backend) {
    lowered_by(be, "failures").await;
}

/// 200 members of 20 ms under `{adaptive: {min: 1, max: 100, start: 50}}`, with `pressure: 0.9`
/// on every report (`reason` "pressure") or a third of the members failing their first attempt
/// (retryable, 3 attempts; `reason` "failures"): a `convoy.limit_changed` with that reason
/// lowers the limit; with pressure on every report it ends below 50.
async fn lowered_by(be: &Backend, reason: &str) {
    let server = be.start().await;
    let api = Api::new(&server.url);
    let (id, queue) = (format!("low-{reason}"), format!("low-{reason}-q"));
    let since = api.head().await;
    let flaky = reason == "failures";
    let members: Vec<Value> = (0..200)
        .map(|i| {
            json!({"payload": {"i": i, "flaky": flaky && i % 3 == 0}, "max_attempts": 3,
                "backoff": {"base_ms": 10, "jitter": "none"}})
        })
        .collect();
    let b = api
        .created(json!({"id": id, "queue": queue, "members": members,
            "max_parallel": {"adaptive": {"min": 1, "max": 100, "start": 50}}}))
        .await;
    assert_eq!(b["convoy"]["limit"], 50, "{b}");
    let stop = Arc::new(AtomicBool::new(false));
    let pressure = (reason == "pressure").then_some(0.9);
    let worker = tokio::spawn(raw_worker(
        api.clone(),
        queue.clone(),
        64,
        |_| Duration::from_millis(20),
        pressure,
        Arc::new(Flight::default()),
        stop.clone(),
    ));
    let view = api.wait_end(&id, Duration::from_secs(90)).await;
    stop.store(true, Ordering::SeqCst);
    assert_none("the test worker's reports", &worker.await.unwrap());
    assert_eq!(view["state"], "completed", "{view}");
    assert_eq!(counts(&view), expect_counts(&[("total", 200), ("completed", 200)]), "{view}");

    let events = api
        .events(
            since,
            "convoy.created,convoy.limit_changed,convoy.completed",
            Duration::from_secs(30),
            |evs| evs.iter().any(|e| e["type"] == "convoy.completed" && about(e, &id)),
        )
        .await;
    let w = walk_limit(&events, &id, &queue, 1, 100);
    assert_none("the chain of convoy.limit_changed events", &w.errors);
    assert_eq!(w.last, view["limit"].as_u64(), "the last change's `to` is the convoy's limit: {view}");
    let lowered: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "convoy.limit_changed" && about(e, &id) && e["data"]["reason"] == reason)
        .collect();
    assert!(!lowered.is_empty(), "no convoy.limit_changed with reason {reason}: {:?}", w.reasons);
    let d = &lowered[0]["data"];
    assert!(d["to"].as_u64() < d["from"].as_u64(), "{reason} lowers the limit: {}", lowered[0]);
    if reason == "pressure" {
        assert!(
            d["pressure"].as_f64().is_some_and(|p| p >= 0.8),
            "the mean pressure reported: {}",
            lowered[0]
        );
        assert!(w.last.is_some_and(|l| l < 50), "pressure on every report leaves the limit below 50: {view}");
    } else {
        assert!(d["failed"].as_u64().is_some_and(|f| f > 0), "the failures counted: {}", lowered[0]);
    }
    eprintln!("convoy {reason}: {} changes {:?}, limit {} at the end", w.changes, w.reasons, view["limit"]);
    be.stop_and_check(server).await;
}

// ---------------------------------------------------------------------------------------------
// 5. Three PostgreSQL nodes, one killed
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_holds_on_three_postgres_nodes_with_one_killed() {
    let Some(be) = Backend::postgres("ferry_cv_3nodes", 6, "").await else { return };
    let n = members_knob();
    let test = "limit_holds_on_three_postgres_nodes_with_one_killed";
    bounded(Duration::from_secs(240 + n as u64 / 50), test, three_nodes(&be, n)).await;
}

/// The fixed-limit case on three nodes: members added through each, SDK workers on each, node 2
/// SIGKILLed once a fifth is done (its workers stop with it; their jobs' 2 s leases expire and
/// the others finish them). Samplers on nodes 0 and 1 never see more than 50, every member is
/// completed once, the on_complete job exists once.
async fn three_nodes(be: &Backend, n: usize) {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(be.start().await);
    }
    let urls: Vec<String> = nodes.iter().map(|s| s.url.clone()).collect();
    let apis = Api::all(&urls);
    let (id, queue, done_queue) = ("mn", "mn-q", "mn-done");
    let own = json!({ "members": n });
    let since = apis[0].head().await;
    let members: Vec<Value> = (0..n).map(|i| json!({"payload": {"i": i}, "lease_ms": 2_000})).collect();
    let base = json!({"id": id, "queue": queue, "max_parallel": FIXED,
        "on_complete": {"queue": done_queue, "payload": own}});
    let ids = create_in_chunks(&apis, base, members, n.div_ceil(3).clamp(1, 10_000)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_sampler(
        apis[..2].to_vec(),
        id.to_string(),
        Duration::from_millis(10),
        stop.clone(),
        fixed_violation,
    );
    let flight = Arc::new(Flight::default());
    let t0 = Instant::now();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let node = w % 3;
        let (tx, handle) =
            sdk_worker(&urls[node], format!("mn-{w}"), queue, HANDLERS, flight.clone(), |_| {
                Duration::from_millis(1)
            });
        workers.push((node, tx, handle));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let v = apis[0].convoy(id).await;
        if v["counts"]["completed"].as_u64().unwrap_or(0) >= (n / 5) as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "a fifth of the members not done within 120 s: {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    nodes[2].kill();
    let mut survivors = Vec::new();
    for (node, tx, handle) in workers {
        if node == 2 {
            // Its unsent reports are given up in the background; the leases expire.
            let _ = tx.send(());
            drop(handle);
        } else {
            survivors.push((tx, handle));
        }
    }
    let view = apis[0].wait_end(id, Duration::from_secs(120 + n as u64 / 50)).await;
    let took = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.await.unwrap();
    for (tx, handle) in survivors {
        let _ = tx.send(());
        handle.await.unwrap();
    }
    let run = FixedRun { id, queue, done_queue, ids: &ids, since, own, once: false };
    check_fixed_run(&apis[0], &view, &run, &samples, &flight).await;
    let reruns = flight.runs.lock().unwrap().values().filter(|k| **k > 1).count();
    eprintln!(
        "convoy on 3 nodes: {n} members in {took:?}, {reruns} ran again after the kill, {} samples, \
         busiest {}",
        samples.taken, samples.busiest
    );
    let killed = nodes.pop().expect("node 2");
    assert_no_panic(&killed);
    drop(killed);
    let second = nodes.pop().expect("node 1");
    stop_clean(second).await;
    be.stop_and_check(nodes.pop().expect("node 0")).await;
}
