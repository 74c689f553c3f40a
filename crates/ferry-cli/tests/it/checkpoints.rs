//! Run checkpoints (LangGraph's saver over HTTP) end to end: the real `ferry serve` over real
//! HTTP, with raw JSON so that the wire contract itself is what is checked
//! (`/work/checkpoints-contract.md`). Typed bytes travel as standard padded base64; this file
//! carries its own tiny encoder and decoder (`b64`, `unb64`), so every byte sent is compared
//! with every byte read back. Scenarios run on SQLite and on PostgreSQL (a database of their
//! own). Every test that ends with an intact store stops its server with SIGTERM and runs the
//! store's own `check_invariants` on the database (every version a checkpoint references has
//! its blob; each thread's counts match its rows).
//!
//! - `round_trip_*`: a put with blobs holding all 256 byte values (201, `blobs_written`), the
//!   identical repeat (200 `duplicate`), other content (200 `replaced`), `If-None-Match: *`
//!   with other content (409 `conflict`) and with the same (200 `duplicate`), a version
//!   without a blob (422, `field` `blobs`, `details.missing`; also a version stored only in
//!   another namespace), blobs shared between checkpoints (first write wins), integer
//!   versions; pending writes (default indexes, `__interrupt__` at -3, insert-if-absent, a
//!   batch of only special channels replacing, explicit indexes, writes before their
//!   checkpoint); GET by id and `latest` (blobs through `channel_versions`, pending writes in
//!   (task_path, task_id, idx) order, `bytes`); `GET /v1/checkpoints` by thread, namespace,
//!   `before`, `metadata` containment, `limit` and `cursor` paging, `full=true` (each entry
//!   equal to its GET); threads: get (counts, `bytes`), 404, PATCH (404 when absent, a reset
//!   with null), list with paging and `updated_before`, delete (then 0); copy (201, 409, 404);
//!   prune `keep_latest` (a delta channel keeps its ancestor) and `delete`; delete-runs; the
//!   `checkpoint.put` and `thread.deleted` events with subject `{kind: thread, id}` from
//!   `GET /v1/events?type=checkpoint.put,thread.deleted`.
//! - `limits_sqlite`: a server with small `[limits]` (keys 16 bytes, blobs 1,000, a checkpoint
//!   with its blobs 2,500, metadata 200, checkpoint request bodies 20,000, 5 channels, task
//!   paths 10): each at its edge (accepted) and one past (413 naming `blobs[i].data` with
//!   `details.channel`, `checkpoint.data`, `writes[0].data`, `metadata`, `body`; 422 naming
//!   the key or the count), bytes not characters, control characters (C0, DEL, C1) in every
//!   key (422), `latest` as an id (422), bad base64 (400 naming the field), a fence half sent
//!   (422); scopes: `read` and queue-restricted tokens get 403 on every write (the restricted
//!   one on reads too), a `checkpoints` token writes, no token 401.
//! - `fencing_*`: a put and writes under a claimed job's lease (201, the thread's
//!   `last_job_id`); after the job completed the same lease gets 409 `stale_lease` and nothing
//!   is written (the checkpoint is 404, the thread's counts and the fenced checkpoint
//!   unchanged, no thread created); an unknown job 404.
//! - `kill_under_put_load_*`: `FERRY_CP_KILLS` SIGKILL/restart cycles on the same data
//!   directory (PostgreSQL: the same database) while `FERRY_CP_KILL_CLIENTS` clients each
//!   drive a thread of their own: chained checkpoints with two blobs each (one new version per
//!   step, one shared by all) and one writes call per step (a regular channel and
//!   `__interrupt__`). An answer lost to a kill is resent after the restart (a put is
//!   idempotent: 201, or 200 `duplicate`). After each restart, the puts acknowledged before the
//!   kill read back by id with every blob their `channel_versions` name and their
//!   acknowledged writes; at the end every acknowledged put and write does, each thread's
//!   counts lie between the acknowledged and the sent, and the store invariants hold.
//! - `migrate_byte_for_byte` (PostgreSQL): a SQLite server filled with `FERRY_CP_MIGRATE_THREADS`
//!   threads of two namespaces each (chained checkpoints, binary blobs, delta channels, regular
//!   and special writes, thread settings, a thread holding only writes) is stopped, `ferry
//!   migrate` copies it into a fresh PostgreSQL database, and a server on PostgreSQL serves the
//!   same: the full checkpoint list (`full=true`, paged by 7 and by 1,000), every checkpoint by
//!   id, the thread list and every thread, all equal to what SQLite served (and every blob
//!   equal to the bytes first sent); a new put there finds the migrated blobs.
//! - `import_langgraph_sqlite`: a LangGraph `SqliteSaver` file built with rusqlite in its exact
//!   schema (threads, namespaces, parents, writes with idx -3 and -1) is imported by `ferry
//!   checkpoints import --langgraph-sqlite FILE --url URL --token T` (exit 0, `checkpoints: N
//!   written, 0 already present; writes: M written, 0 already present`), then again (`0
//!   written, N already present; writes: 0 written, M already present`); each checkpoint
//!   reads back with the file's type, bytes, metadata, parent and writes (the file's idx).
//!   `ferry checkpoints threads|show|history|rm|prune --json` each exit 0 with JSON.
//!
//! Sizes (CI runs on 2 cores and may set smaller ones):
//! - `FERRY_CP_KILLS` (default 20, the issue's): SIGKILLs of the put-load test.
//! - `FERRY_CP_KILL_CLIENTS` (default 8): concurrent clients (threads) of the put-load test.
//! - `FERRY_CP_MIGRATE_THREADS` (default 4): threads of the migration test (12 checkpoints
//!   each).
//!
//! Expected run time per backend on a 2-core machine (estimates): round trip, limits,
//! fencing and import 3-15 s each; the put-load test 25-60 s at 20 kills (a start, 0.2-0.8 s
//! of load and a read-back per cycle; PostgreSQL starts are the slower part); migrate 10-30 s.
//!
//! PostgreSQL tests use `FERRY_TEST_PG_URL` (see `common::pg`) and are skipped with a printed
//! reason without it, unless `FERRY_REQUIRE_PG=1`. Every test body runs under a deadline.
//!
//! Beyond the contract, these tests assume what the implementation does today: blobs are
//! stored per namespace (LangGraph's `(thread, ns, channel, version)`), so a version stored in
//! another namespace is missing; a replace emits `checkpoint.put` (a duplicate does not) and
//! copying a thread emits none; a thread's `bytes` is its checkpoints' `bytes` plus its blobs'
//! and writes' decoded sizes; a refused put (missing blobs, conflict, stale lease) creates no
//! thread; `thread.deleted` data is `{deleted, reason: "request"}` for a DELETE and a prune
//! with `delete`; a body error's `field` is its JSON path (`checkpoint.data`, `blobs[0].data`);
//! ids in URL paths are percent-decoded by the server.

use crate::common::Server;
use crate::common::pg::TestDb;
use ferry_core::{Clock, SystemClock};
use ferry_store::{PgConfig, PgStore, SqliteConfig, SqliteStore, StoreCore};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// SIGKILLs of the put-load test.
fn cp_kills() -> usize {
    env_usize("FERRY_CP_KILLS", 20)
}

/// Concurrent clients of the put-load test.
fn kill_clients() -> usize {
    env_usize("FERRY_CP_KILL_CLIENTS", 8).max(1)
}

/// Threads of the migration test.
fn migrate_threads() -> usize {
    env_usize("FERRY_CP_MIGRATE_THREADS", 4).max(1)
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

/// SIGKILLs `server` and hands back its data directory.
fn kill_keep_dir(mut server: Server) -> tempfile::TempDir {
    assert_no_panic(&server);
    server.kill();
    server.take_dir()
}

/// Where a test's servers keep their data: a data directory each (SQLite), or one PostgreSQL
/// database of the test's own that all of its servers share.
struct Backend {
    db: Option<TestDb>,
    /// The start of every server's `ferry.toml` (the PostgreSQL pool size).
    base: String,
    /// The rest of the `ferry.toml` of the test's servers.
    toml: String,
}

impl Backend {
    fn sqlite(toml: &str) -> Backend {
        Backend { db: None, base: String::new(), toml: toml.to_string() }
    }

    /// A fresh database; `None` (skipped) without PostgreSQL.
    async fn postgres(prefix: &str, pool: usize, toml: &str) -> Option<Backend> {
        let db = TestDb::create(prefix).await?;
        Some(Backend::on(db, pool, toml))
    }

    /// Servers on an existing database.
    fn on(db: TestDb, pool: usize, toml: &str) -> Backend {
        Backend { db: Some(db), base: format!("pg_pool_size = {pool}\n"), toml: toml.to_string() }
    }

    fn database(&self) -> Option<String> {
        self.db.as_ref().map(|d| d.url.clone())
    }

    /// A server with the test's config on a fresh data directory.
    async fn start(&self) -> Server {
        self.start_in(tempfile::tempdir().unwrap()).await
    }

    /// A server with the test's config on `dir`, started off the async threads.
    async fn start_in(&self, dir: tempfile::TempDir) -> Server {
        std::fs::write(dir.path().join("ferry.toml"), format!("{}{}", self.base, self.toml)).unwrap();
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

/// A test on SQLite and one on PostgreSQL (a database of its own, named from `$prefix`) running
/// `scenario(&backend)` under `secs` seconds; the scenario starts (and restarts) its servers
/// itself, their `ferry.toml` being `toml`.
macro_rules! both_backends {
    ($scenario:ident, $sqlite:ident, $postgres:ident, $prefix:literal, $secs:expr, $toml:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            let be = Backend::sqlite($toml);
            bounded(Duration::from_secs($secs), stringify!($sqlite), $scenario(&be)).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            let Some(be) = Backend::postgres($prefix, 16, $toml).await else {
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

    /// The error's `details` (`Null` when none).
    fn details(&self) -> &Value {
        &self.body["error"]["details"]
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
    a.details()
}

/// Asserts a 422 `validation_failed` naming `field`.
#[track_caller]
fn invalid(a: &Answer, field: &str, what: &str) {
    refused(a, 422, "validation_failed", what);
    assert_eq!(a.field(), field, "{what}: the field named: {}", a.brief());
}

/// Asserts a 413 `payload_too_large` naming `field`.
#[track_caller]
fn too_large(a: &Answer, field: &str, what: &str) {
    refused(a, 413, "payload_too_large", what);
    assert_eq!(a.field(), field, "{what}: the field named: {}", a.brief());
}

/// Asserts a 400 `bad_request` naming `field`.
#[track_caller]
fn bad_request(a: &Answer, field: &str, what: &str) {
    refused(a, 400, "bad_request", what);
    assert_eq!(a.field(), field, "{what}: the field named: {}", a.brief());
}

/// Asserts that every field of `want` (an object) is in `got` with that value.
#[track_caller]
fn assert_fields(got: &Value, want: &Value, what: &str) {
    for (k, v) in want.as_object().expect("the expected fields are an object") {
        assert_eq!(&got[k.as_str()], v, "{what}: field {k} of {got}");
    }
}

/// Percent-encodes an id for a URL path segment (`%` too: the server decodes the path).
fn seg(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Percent-encodes a query value.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `/v1/threads/{thread}/checkpoints/{id}?ns=`.
fn cp_path(thread: &str, ns: &str, id: &str) -> String {
    format!("/v1/threads/{}/checkpoints/{}?ns={}", seg(thread), seg(id), pct(ns))
}

/// `/v1/threads/{thread}/checkpoints/{id}/writes?ns=`.
fn writes_path(thread: &str, ns: &str, id: &str) -> String {
    format!("/v1/threads/{}/checkpoints/{}/writes?ns={}", seg(thread), seg(id), pct(ns))
}

/// The checkpoint API of one server, with an optional bearer token.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    fn new(base: &str) -> Api {
        Api { http: client(), base: base.trim_end_matches('/').to_string(), token: None }
    }

    /// The same server, calling with `token`.
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

    /// Sends `req` (a transport error fails the test).
    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Answer {
        self.try_send(req).await.unwrap_or_else(|e| panic!("{what} at {}: {e}", self.base))
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(&format!("GET {path}"), self.http.get(self.url(path))).await
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(&format!("POST {path}"), self.http.post(self.url(path)).json(body)).await
    }

    async fn put(&self, path: &str, body: &Value) -> Answer {
        self.send(&format!("PUT {path}"), self.http.put(self.url(path)).json(body)).await
    }

    async fn patch(&self, path: &str, body: &Value) -> Answer {
        self.send(&format!("PATCH {path}"), self.http.patch(self.url(path)).json(body)).await
    }

    async fn delete(&self, path: &str) -> Answer {
        self.send(&format!("DELETE {path}"), self.http.delete(self.url(path))).await
    }

    /// Sends `body` as it is (a JSON content type), with `method`.
    async fn raw(&self, method: reqwest::Method, path: &str, body: String) -> Answer {
        let req = self
            .http
            .request(method.clone(), self.url(path))
            .header("content-type", "application/json")
            .body(body);
        self.send(&format!("{method} {path} (raw body)"), req).await
    }

    /// `PUT` a checkpoint.
    async fn put_cp(&self, thread: &str, ns: &str, id: &str, body: &Value) -> Answer {
        self.put(&cp_path(thread, ns, id), body).await
    }

    /// `PUT` a checkpoint with `If-None-Match: *`.
    async fn put_cp_inm(&self, thread: &str, ns: &str, id: &str, body: &Value) -> Answer {
        let path = cp_path(thread, ns, id);
        let req = self.http.put(self.url(&path)).header("if-none-match", "*").json(body);
        self.send(&format!("PUT {path} (If-None-Match: *)"), req).await
    }

    /// `POST` pending writes.
    async fn put_writes(&self, thread: &str, ns: &str, id: &str, body: &Value) -> Answer {
        self.post(&writes_path(thread, ns, id), body).await
    }

    /// `GET` a checkpoint (or `latest`), whatever the answer.
    async fn get_cp(&self, thread: &str, ns: &str, id: &str) -> Answer {
        self.get(&cp_path(thread, ns, id)).await
    }

    /// `GET` a checkpoint answered 200: the tuple.
    async fn tuple(&self, thread: &str, ns: &str, id: &str) -> Value {
        let a = self.get_cp(thread, ns, id).await;
        ok(&a, 200, &format!("GET checkpoint {thread}/{ns:?}/{id}")).clone()
    }

    /// `GET /v1/threads/{thread}`, whatever the answer.
    async fn get_thread(&self, thread: &str) -> Answer {
        self.get(&format!("/v1/threads/{}", seg(thread))).await
    }

    /// `GET /v1/threads/{thread}` answered 200: the thread.
    async fn thread(&self, thread: &str) -> Value {
        let a = self.get_thread(thread).await;
        ok(&a, 200, &format!("GET thread {thread}")).clone()
    }

    /// Every item under `key` of the list at `path`, `limit` a page, following `next_cursor`.
    async fn paged(&self, path: &str, key: &str, limit: usize) -> Vec<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100_000 {
            let target = match &cursor {
                Some(c) => format!("{path}{sep}limit={limit}&cursor={}", pct(c)),
                None => format!("{path}{sep}limit={limit}"),
            };
            let a = self.get(&target).await;
            let b = ok(&a, 200, &format!("GET {target}"));
            let page =
                b[key].as_array().unwrap_or_else(|| panic!("GET {target}: no {key} array: {}", a.brief()));
            assert!(page.len() <= limit, "GET {target}: a page over its limit: {}", a.brief());
            out.extend(page.iter().cloned());
            match b["next_cursor"].as_str() {
                Some(c) => {
                    assert!(
                        cursor.as_deref() != Some(c),
                        "GET {target}: the cursor did not move: {}",
                        a.brief()
                    );
                    cursor = Some(c.to_string());
                }
                None => {
                    assert!(b["next_cursor"].is_null(), "GET {target}: next_cursor: {}", a.brief());
                    return out;
                }
            }
        }
        panic!("GET {path}: more than 100,000 pages");
    }

    /// `GET /v1/checkpoints?<query>`, every page.
    async fn checkpoints(&self, query: &str, limit: usize) -> Vec<Value> {
        let path =
            if query.is_empty() { "/v1/checkpoints".to_string() } else { format!("/v1/checkpoints?{query}") };
        self.paged(&path, "checkpoints", limit).await
    }

    /// `GET /v1/threads?<query>`, every page.
    async fn threads(&self, query: &str, limit: usize) -> Vec<Value> {
        let path = if query.is_empty() { "/v1/threads".to_string() } else { format!("/v1/threads?{query}") };
        self.paged(&path, "threads", limit).await
    }

    /// Every event of `types` (comma-separated) so far, oldest first (long-poll without waiting).
    async fn events(&self, types: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut since = 0u64;
        for _ in 0..10_000 {
            let path = format!("/v1/events?since={since}&limit=1000&type={types}");
            let a = self.get(&path).await;
            let b = ok(&a, 200, &format!("GET {path}"));
            let page = b["events"].as_array().unwrap_or_else(|| panic!("GET {path}: {}", a.brief()));
            out.extend(page.iter().cloned());
            let next = b["next_cursor"].as_u64().unwrap_or_else(|| panic!("GET {path}: {}", a.brief()));
            if next <= since {
                return out;
            }
            since = next;
        }
        panic!("GET /v1/events: more than 10,000 pages");
    }

    /// Waits until `/readyz` answers 200.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.try_send(self.http.get(self.url("/readyz"))).await;
            if r.is_ok_and(|a| a.status == 200) {
                return;
            }
            assert!(Instant::now() < deadline, "{} not ready within 60 s", self.base);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST /v1/jobs` answered 201: the job's id.
    async fn enqueue(&self, spec: Value) -> String {
        let a = self.post("/v1/jobs", &spec).await;
        ok(&a, 201, &format!("enqueue {spec}"))["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no job id: {}", a.brief()))
            .to_string()
    }

    /// Claims the one ready job of `queue` as `worker` (lease one minute).
    async fn claim_one(&self, queue: &str, worker: &str) -> Value {
        let body = json!({"worker": worker, "max": 1, "lease_ms": 60_000});
        let a = self.post(&format!("/v1/queues/{queue}/claim"), &body).await;
        let jobs = ok(&a, 200, &format!("claim {queue}"))["jobs"]
            .as_array()
            .unwrap_or_else(|| panic!("claim {queue}: no jobs array: {}", a.brief()))
            .clone();
        assert_eq!(jobs.len(), 1, "one job of {queue} to claim: {}", a.brief());
        jobs[0].clone()
    }

    /// Completes a claimed job (200 asserted).
    async fn complete(&self, job: &Value) {
        let id = job["id"].as_str().unwrap_or_else(|| panic!("no job id: {job}"));
        let a = self.post(&format!("/v1/jobs/{id}/complete"), &json!({"lease": job["lease"]})).await;
        ok(&a, 200, &format!("complete {id}"));
    }
}

/// Mints a token through `api` (tokenless for the first one, which turns auth on): its secret.
async fn mint(api: &Api, body: Value) -> String {
    let a = api.post("/v1/tokens", &body).await;
    ok(&a, 201, &format!("mint {body}"))["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token secret: {}", a.brief()))
        .to_string()
}

/// Runs the `ferry` CLI (no `FERRY_URL` or `FERRY_TOKEN` from the environment): its exit code,
/// standard output and standard error.
async fn cli(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(&args)
            .env_remove("FERRY_URL")
            .env_remove("FERRY_TOKEN")
            .env("NO_COLOR", "1")
            .output()
            .expect("run the ferry CLI");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// Runs the `ferry` CLI, asserting exit 0: its standard output as JSON.
async fn cli_json(args: &[&str]) -> Value {
    let (code, out, err) = cli(args).await;
    assert_eq!(code, 0, "ferry {}: exit {code}: {out}{err}", args.join(" "));
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("ferry {}: stdout is not JSON ({e}): {out}{err}", args.join(" ")))
}

/// The standard base64 alphabet.
const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
fn b64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b1 = chunk.get(1).copied().unwrap_or(0);
        let b2 = chunk.get(2).copied().unwrap_or(0);
        let n = (u32::from(chunk[0]) << 16) | (u32::from(b1) << 8) | u32::from(b2);
        for i in 0..4usize {
            if i <= chunk.len() {
                out.push(char::from(B64[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard padded base64 (anything else fails the test).
#[track_caller]
fn unb64(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    assert!(bytes.len().is_multiple_of(4), "base64 of a length not a multiple of 4: {text:?}");
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for quad in bytes.chunks(4) {
        let pad = quad.iter().rev().take_while(|c| **c == b'=').count();
        assert!(pad <= 2, "bad base64 padding: {text:?}");
        let mut n = 0u32;
        for (i, c) in quad.iter().enumerate() {
            let v = if *c == b'=' {
                0
            } else {
                B64.iter().position(|x| x == c).unwrap_or_else(|| panic!("not base64: {text:?}")) as u32
            };
            n |= v << (18 - 6 * i);
        }
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&three[..3 - pad]);
    }
    out
}

/// A small deterministic generator (SplitMix64).
struct Mix(u64);

impl Mix {
    fn new(seed: u64) -> Mix {
        Mix(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    fn step(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `n` pseudo-random bytes from `seed`.
fn bytes_of(seed: u64, n: usize) -> Vec<u8> {
    let mut m = Mix::new(seed);
    (0..n).map(|_| (m.step() >> 24) as u8).collect()
}

/// Typed bytes: `{"type", "data"}`.
fn typed(type_: &str, data: &[u8]) -> Value {
    json!({"type": type_, "data": b64(data)})
}

/// A blob of a put (and of a tuple as read).
fn blob(channel: &str, version: &str, type_: &str, data: &[u8]) -> Value {
    json!({"channel": channel, "version": version, "type": type_, "data": b64(data)})
}

/// A write of a writes body (its index LangGraph's default).
fn write(channel: &str, type_: &str, data: &[u8]) -> Value {
    json!({"channel": channel, "type": type_, "data": b64(data)})
}

/// A write of a writes body at an explicit index.
fn write_at(channel: &str, type_: &str, data: &[u8], idx: i64) -> Value {
    json!({"channel": channel, "type": type_, "data": b64(data), "idx": idx})
}

/// A pending write as a tuple lists it.
fn pending(task_id: &str, task_path: &str, channel: &str, type_: &str, data: &[u8], idx: i64) -> Value {
    json!({"task_id": task_id, "channel": channel, "type": type_, "data": b64(data), "task_path": task_path, "idx": idx})
}

/// A put body.
fn cp_body(parent: Option<&str>, data: &[u8], metadata: Value, versions: Value, blobs: Vec<Value>) -> Value {
    json!({
        "parent_checkpoint_id": parent,
        "checkpoint": typed("msgpack", data),
        "metadata": metadata,
        "channel_versions": versions,
        "blobs": blobs,
    })
}

/// A JSON object of `pairs` (keys computed at run time).
fn obj(pairs: &[(&str, Value)]) -> Value {
    Value::Object(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
}

/// The (checkpoint_id, ns) of each entry of a list.
fn keys_of(list: &[Value]) -> Vec<(String, String)> {
    list.iter()
        .map(|e| {
            (
                e["checkpoint_id"].as_str().unwrap_or("?").to_string(),
                e["ns"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

fn keys(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(id, ns)| (id.to_string(), ns.to_string())).collect()
}

/// The ids of a list of threads.
fn thread_ids(list: &[Value]) -> Vec<String> {
    list.iter().map(|t| t["thread"].as_str().unwrap_or("?").to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// 1. Round trip
// ---------------------------------------------------------------------------------------------

/// The round trip's main thread, and its child namespace.
const RT: &str = "rt-a";
const CHILD: &str = "child:1";

both_backends!(round_trip, round_trip_sqlite, round_trip_postgres, "ferry_cp_rt", 120, "");

async fn round_trip(be: &Backend) {
    let server = be.start().await;
    let api = Api::new(&server.url);
    api.wait_ready().await;
    let every: Vec<u8> = (0..=255u8).collect();
    let every_rev: Vec<u8> = every.iter().rev().copied().collect();
    let (cp1, cp2, cp3, cp4) = (every.clone(), bytes_of(2, 300), bytes_of(3, 1_000), bytes_of(4, 17));
    let (m2, m3) = (bytes_of(12, 500), bytes_of(13, 700));

    // Puts: new, duplicate, replaced, conflict.
    let meta1 = json!({"source": "input", "step": -1, "run_id": "run-1", "parents": {}});
    let b1 = cp_body(
        None,
        &cp1,
        meta1,
        json!({"messages": "1", "__start__": 1}),
        vec![blob("messages", "1", "msgpack", &every_rev), blob("__start__", "1", "empty", &[])],
    );
    let a = api.put_cp(RT, "", "0001", &b1).await;
    let out = ok(&a, 201, "a new checkpoint");
    assert_fields(
        out,
        &json!({"thread": RT, "ns": "", "checkpoint_id": "0001", "blobs_written": 2, "blobs_shared": 0}),
        "a new checkpoint",
    );
    assert!(out["duplicate"] != true && out["replaced"] != true, "a new checkpoint: {}", a.brief());
    let a = api.put_cp(RT, "", "0001", &b1).await;
    let out = ok(&a, 200, "an identical repeat");
    assert_eq!((&out["duplicate"], &out["blobs_written"]), (&json!(true), &json!(0)), "{}", a.brief());
    assert_ne!(out["replaced"], true, "an identical repeat: {}", a.brief());

    let meta1r = json!({"source": "loop", "step": 0, "run_id": "run-1", "tags": ["x", "y"], "writes": {"n": {"a": 1}}});
    let mut b1r = b1.clone();
    b1r["metadata"] = meta1r.clone();
    let a = api.put_cp(RT, "", "0001", &b1r).await;
    let out = ok(&a, 200, "other content under the id");
    assert_eq!(out["replaced"], true, "other content: {}", a.brief());
    assert_ne!(out["duplicate"], true, "other content: {}", a.brief());
    refused(
        &api.put_cp_inm(RT, "", "0001", &b1).await,
        409,
        "conflict",
        "If-None-Match: * and other content",
    );
    let a = api.put_cp_inm(RT, "", "0001", &b1r).await;
    assert_eq!(ok(&a, 200, "If-None-Match: * and the same content")["duplicate"], true, "{}", a.brief());
    assert_eq!(api.tuple(RT, "", "0001").await["metadata"], meta1r, "the replace is stored, the 409 is not");

    // A version without a blob, sent or stored.
    let meta2 = json!({"source": "loop", "step": 1, "run_id": "run-1"});
    let mut b2 =
        cp_body(Some("0001"), &cp2, meta2.clone(), json!({"messages": "2", "__start__": "1"}), vec![]);
    let a = api.put_cp(RT, "", "0002", &b2).await;
    invalid(&a, "blobs", "a version without a blob");
    assert_eq!(a.details()["missing"], json!([{"channel": "messages", "version": "2"}]), "{}", a.brief());
    refused(&api.get_cp(RT, "", "0002").await, 404, "not_found", "a refused put writes nothing");
    b2["blobs"] = json!([blob("messages", "2", "msgpack", &m2)]);
    let a = api.put_cp(RT, "", "0002", &b2).await;
    assert_fields(ok(&a, 201, "0002"), &json!({"blobs_written": 1, "blobs_shared": 0}), "0002");

    // A stored version sent again is shared: the first write wins.
    let meta3 = json!({"source": "loop", "step": 2, "run_id": "run-2", "tags": ["y"]});
    let mut b3 = cp_body(
        Some("0002"),
        &cp3,
        meta3.clone(),
        json!({"messages": "3", "__start__": "1"}),
        vec![blob("messages", "3", "msgpack", &m3), blob("__start__", "1", "msgpack", &[9, 9, 9])],
    );
    b3["delta_channels"] = json!(["messages"]);
    let a = api.put_cp(RT, "", "0003", &b3).await;
    assert_fields(ok(&a, 201, "0003"), &json!({"blobs_written": 1, "blobs_shared": 1}), "0003");

    // Writes may precede their checkpoint.
    let early = bytes_of(20, 40);
    let wearly = json!({"task_id": "task-early", "writes": [write("messages", "msgpack", &early)]});
    let a = api.put_writes(RT, "", "0004", &wearly).await;
    assert_eq!(ok(&a, 201, "writes before their checkpoint")["written"], 1, "{}", a.brief());
    let meta4 = json!({"source": "update", "step": 3, "run_id": "run-2"});
    let b4 = cp_body(Some("0003"), &cp4, meta4.clone(), json!({"messages": "3", "__start__": "1"}), vec![]);
    let a = api.put_cp(RT, "", "0004", &b4).await;
    assert_fields(ok(&a, 201, "0004"), &json!({"blobs_written": 0, "blobs_shared": 0}), "0004");

    // Writes of 0003: default indexes, insert-if-absent, special channels replacing.
    let wa = json!({"task_id": "task-a", "task_path": "b",
        "writes": [write("messages", "msgpack", &every), write("__interrupt__", "msgpack", &[1, 2, 3])]});
    let a = api.put_writes(RT, "", "0003", &wa).await;
    assert_eq!(ok(&a, 201, "two writes")["written"], 2, "{}", a.brief());
    let a = api.put_writes(RT, "", "0003", &wa).await;
    assert_eq!(ok(&a, 200, "a resent batch"), &json!({"written": 0, "duplicate": true}), "{}", a.brief());
    let other =
        json!({"task_id": "task-a", "task_path": "b", "writes": [write("messages", "msgpack", &[7])]});
    let a = api.put_writes(RT, "", "0003", &other).await;
    assert_eq!(ok(&a, 200, "a regular write again")["written"], 0, "insert-if-absent: {}", a.brief());
    let special = json!({"task_id": "task-a", "task_path": "b", "writes": [write("__interrupt__", "msgpack", &[4, 5, 6])]});
    let a = api.put_writes(RT, "", "0003", &special).await;
    assert_eq!(ok(&a, 201, "only special channels")["written"], 1, "they replace: {}", a.brief());
    let specials = json!({"task_id": "task-a", "task_path": "b",
        "writes": [write("__error__", "json", b"\"boom\""), write("__resume__", "msgpack", &[0])]});
    let a = api.put_writes(RT, "", "0003", &specials).await;
    assert_eq!(ok(&a, 201, "__error__ and __resume__")["written"], 2, "{}", a.brief());
    let wz = json!({"task_id": "task-z", "task_path": "a",
        "writes": [write_at("x", "msgpack", &[5], 5), write_at("y", "msgpack", &[2], 2)]});
    let a = api.put_writes(RT, "", "0003", &wz).await;
    assert_eq!(ok(&a, 201, "explicit indexes")["written"], 2, "{}", a.brief());
    let want_writes3 = json!([
        pending("task-z", "a", "y", "msgpack", &[2], 2),
        pending("task-z", "a", "x", "msgpack", &[5], 5),
        pending("task-a", "b", "__resume__", "msgpack", &[0], -4),
        pending("task-a", "b", "__interrupt__", "msgpack", &[4, 5, 6], -3),
        pending("task-a", "b", "__error__", "json", b"\"boom\"", -1),
        pending("task-a", "b", "messages", "msgpack", &every, 0),
    ]);

    // A child namespace: its own blobs.
    let inner = bytes_of(30, 64);
    let metac = json!({"source": "loop", "step": 1, "run_id": "run-3", "parents": {"": "0002"}});
    let bc = cp_body(
        None,
        &bytes_of(31, 10),
        metac,
        json!({"inner": "1"}),
        vec![blob("inner", "1", "msgpack", &inner)],
    );
    ok(&api.put_cp(RT, CHILD, "0002", &bc).await, 201, "a checkpoint of a child namespace");
    let a = api
        .put_cp(RT, CHILD, "0003", &cp_body(Some("0002"), &[1], json!({}), json!({"messages": "1"}), vec![]))
        .await;
    invalid(&a, "blobs", "a version stored only in another namespace");
    assert_eq!(a.details()["missing"], json!([{"channel": "messages", "version": "1"}]), "{}", a.brief());

    // Reads: by id, latest, per namespace.
    let got = api.tuple(RT, "", "0003").await;
    let want3 = json!({
        "thread": RT, "ns": "", "checkpoint_id": "0003", "parent_checkpoint_id": "0002",
        "checkpoint": typed("msgpack", &cp3),
        "metadata": meta3,
        "channel_versions": {"__start__": "1", "messages": "3"},
        "delta_channels": ["messages"],
        "blobs": [blob("__start__", "1", "empty", &[]), blob("messages", "3", "msgpack", &m3)],
        "pending_writes": want_writes3,
        "bytes": cp3.len() + meta3.to_string().len(),
    });
    assert_fields(&got, &want3, "GET 0003");
    assert!(got["created_at"].as_str().is_some_and(|s| !s.is_empty()), "created_at: {got}");
    let latest = api.tuple(RT, "", "latest").await;
    let want4 = json!({
        "checkpoint_id": "0004", "parent_checkpoint_id": "0003",
        "checkpoint": typed("msgpack", &cp4), "metadata": meta4,
        "channel_versions": {"__start__": "1", "messages": "3"}, "delta_channels": [],
        "blobs": [blob("__start__", "1", "empty", &[]), blob("messages", "3", "msgpack", &m3)],
        "pending_writes": [pending("task-early", "", "messages", "msgpack", &early, 0)],
        "bytes": cp4.len() + meta4.to_string().len(),
    });
    assert_fields(&latest, &want4, "GET latest");
    let first = api.tuple(RT, "", "0001").await;
    let want1 = json!({
        "parent_checkpoint_id": null, "checkpoint": typed("msgpack", &cp1), "metadata": meta1r,
        "channel_versions": {"__start__": "1", "messages": "1"},
        "blobs": [blob("__start__", "1", "empty", &[]), blob("messages", "1", "msgpack", &every_rev)],
        "pending_writes": [],
    });
    assert_fields(&first, &want1, "GET 0001 (integer versions read back as strings)");
    let second = api.tuple(RT, "", "0002").await;
    assert_fields(
        &second,
        &json!({"parent_checkpoint_id": "0001", "metadata": meta2,
            "blobs": [blob("__start__", "1", "empty", &[]), blob("messages", "2", "msgpack", &m2)]}),
        "GET 0002",
    );
    let child = api.tuple(RT, CHILD, "latest").await;
    assert_fields(
        &child,
        &json!({"ns": CHILD, "checkpoint_id": "0002", "parent_checkpoint_id": null,
            "blobs": [blob("inner", "1", "msgpack", &inner)]}),
        "GET latest of the child namespace",
    );
    refused(&api.get_cp(RT, "", "0009").await, 404, "not_found", "an unknown id");
    refused(&api.get_cp(RT, "nope", "latest").await, 404, "not_found", "latest of an empty namespace");
    refused(&api.get_cp("rt-none", "", "latest").await, 404, "not_found", "latest of an unknown thread");

    // Lists.
    let all = api.checkpoints(&format!("thread={RT}"), 100).await;
    let want_all = keys(&[("0004", ""), ("0003", ""), ("0002", CHILD), ("0002", ""), ("0001", "")]);
    assert_eq!(keys_of(&all), want_all, "newest first by id, every namespace");
    for e in &all {
        assert!(
            e.get("checkpoint").is_none() && e.get("blobs").is_none() && e.get("pending_writes").is_none(),
            "an entry without full has no bytes, blobs or writes: {e}"
        );
        assert!(e["metadata"].is_object() && e["channel_versions"].is_object(), "{e}");
    }
    assert_eq!(api.checkpoints(&format!("thread={RT}"), 2).await, all, "paged by 2, the same");
    assert_eq!(api.checkpoints(&format!("thread={RT}"), 1).await, all, "paged by 1, the same");
    let root = api.checkpoints(&format!("thread={RT}&ns="), 100).await;
    assert_eq!(keys_of(&root), keys(&[("0004", ""), ("0003", ""), ("0002", ""), ("0001", "")]), "ns=");
    let ch = api.checkpoints(&format!("thread={RT}&ns={}", pct(CHILD)), 100).await;
    assert_eq!(keys_of(&ch), keys(&[("0002", CHILD)]), "ns={CHILD}");
    let before = api.checkpoints(&format!("thread={RT}&before=0003"), 100).await;
    assert_eq!(keys_of(&before), keys(&[("0002", CHILD), ("0002", ""), ("0001", "")]), "before=0003");
    let before_root = api.checkpoints(&format!("thread={RT}&ns=&before=0003"), 100).await;
    assert_eq!(keys_of(&before_root), keys(&[("0002", ""), ("0001", "")]), "ns=&before=0003");
    let filters: Vec<(Value, Vec<(String, String)>)> = vec![
        (json!({"source": "loop"}), keys(&[("0003", ""), ("0002", CHILD), ("0002", ""), ("0001", "")])),
        (json!({"tags": ["y"]}), keys(&[("0003", ""), ("0001", "")])),
        (json!({"writes": {"n": {}}}), keys(&[("0001", "")])),
        (json!({"step": 2}), keys(&[("0003", "")])),
        (json!({"run_id": "run-2", "source": "update"}), keys(&[("0004", "")])),
        (json!({"parents": {"": "0002"}}), keys(&[("0002", CHILD)])),
        (json!({"source": "nope"}), Vec::new()),
    ];
    for (pattern, want) in filters {
        let got = api.checkpoints(&format!("thread={RT}&metadata={}", pct(&pattern.to_string())), 100).await;
        assert_eq!(keys_of(&got), want, "metadata containing {pattern}");
        let paged = api.checkpoints(&format!("thread={RT}&metadata={}", pct(&pattern.to_string())), 1).await;
        assert_eq!(keys_of(&paged), want, "metadata containing {pattern}, paged by 1");
    }
    let full = api.checkpoints(&format!("thread={RT}&full=true"), 100).await;
    assert_eq!(keys_of(&full), want_all, "full=true");
    assert_eq!(api.checkpoints(&format!("thread={RT}&full=true"), 2).await, full, "full=true paged by 2");
    for e in &full {
        let id = e["checkpoint_id"].as_str().unwrap_or("?");
        let ns = e["ns"].as_str().unwrap_or("?");
        assert_eq!(e, &api.tuple(RT, ns, id).await, "a full entry equals its GET ({ns:?}/{id})");
    }
    let everywhere = api.checkpoints("", 100).await;
    assert_eq!(keys_of(&everywhere), want_all, "no thread filter: every thread (only {RT} so far)");

    // The thread: counts and bytes.
    let mut stored_blobs: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    let (mut own_bytes, mut write_bytes, mut writes) = (0usize, 0usize, 0usize);
    for e in &full {
        own_bytes += e["bytes"].as_u64().unwrap_or_else(|| panic!("bytes: {e}")) as usize;
        for b in e["blobs"].as_array().unwrap_or_else(|| panic!("blobs: {e}")) {
            let key = (
                e["ns"].as_str().unwrap_or("?").to_string(),
                b["channel"].as_str().unwrap_or("?").to_string(),
                b["version"].as_str().unwrap_or("?").to_string(),
            );
            stored_blobs.insert(key, unb64(b["data"].as_str().unwrap_or("")).len());
        }
        for w in e["pending_writes"].as_array().unwrap_or_else(|| panic!("pending_writes: {e}")) {
            writes += 1;
            write_bytes += unb64(w["data"].as_str().unwrap_or("")).len();
        }
    }
    assert_eq!((stored_blobs.len(), writes), (5, 7), "the blobs and writes the round trip stored");
    let th = api.thread(RT).await;
    let want_th = json!({
        "thread": RT, "metadata": {}, "idle_ttl_ms": null, "keep_last": null, "checkpoints": 5,
        "blobs": 5, "writes": 7, "last_job_id": null,
        "bytes": own_bytes + write_bytes + stored_blobs.values().sum::<usize>(),
    });
    assert_fields(&th, &want_th, "GET thread");
    assert!(th["created_at"].is_string() && th["updated_at"].is_string(), "{th}");
    refused(&api.get_thread("rt-none").await, 404, "not_found", "GET of an absent thread");
    refused(
        &api.patch("/v1/threads/rt-none", &json!({"metadata": {"a": 1}})).await,
        404,
        "not_found",
        "PATCH of an absent thread",
    );
    refused(&api.get_thread("rt-none").await, 404, "not_found", "a refused PATCH creates no thread");
    let a = api
        .patch(
            &format!("/v1/threads/{RT}"),
            &json!({"metadata": {"owner": "tests"}, "idle_ttl_ms": 3_600_000, "keep_last": 10}),
        )
        .await;
    assert_fields(
        ok(&a, 200, "PATCH"),
        &json!({"thread": RT, "metadata": {"owner": "tests"}, "idle_ttl_ms": 3_600_000, "keep_last": 10,
            "checkpoints": 5}),
        "PATCH",
    );
    let a = api.patch(&format!("/v1/threads/{RT}"), &json!({"keep_last": null})).await;
    let want_patched = json!({"metadata": {"owner": "tests"}, "idle_ttl_ms": 3_600_000, "keep_last": null});
    assert_fields(ok(&a, 200, "PATCH keep_last null"), &want_patched, "PATCH keep_last null");
    assert_fields(&api.thread(RT).await, &want_patched, "GET after the PATCHes");

    // Copy.
    let a = api.post(&format!("/v1/threads/{RT}/copy"), &json!({"to": "rt-copy"})).await;
    assert_eq!(ok(&a, 201, "copy"), &json!({"thread": "rt-copy", "copied": 5}), "{}", a.brief());
    let copy = api.checkpoints("thread=rt-copy&full=true", 100).await;
    assert_eq!(copy.len(), full.len(), "every checkpoint copied");
    for (c, o) in copy.iter().zip(&full) {
        let mut o = o.clone();
        o["thread"] = json!("rt-copy");
        assert_eq!(c, &o, "the copy of {} {}", o["ns"], o["checkpoint_id"]);
    }
    let rt_bytes = api.thread(RT).await["bytes"].clone();
    let tc = api.thread("rt-copy").await;
    assert_fields(
        &tc,
        &json!({"checkpoints": 5, "blobs": 5, "writes": 7, "bytes": rt_bytes}),
        "the copied thread",
    );
    refused(
        &api.post(&format!("/v1/threads/{RT}/copy"), &json!({"to": "rt-copy"})).await,
        409,
        "conflict",
        "a copy onto a thread with checkpoints",
    );
    refused(
        &api.post("/v1/threads/rt-none/copy", &json!({"to": "rt-copy2"})).await,
        404,
        "not_found",
        "a copy of an unknown thread",
    );

    // Prune keep_latest: a delta channel keeps the ancestor holding its value.
    let p = |id: &str, parent: Option<&str>, ver: &str, delta: bool| {
        let mut b = cp_body(
            parent,
            id.as_bytes(),
            json!({"step": 0}),
            json!({"messages": ver}),
            vec![blob("messages", ver, "msgpack", ver.as_bytes())],
        );
        if delta {
            b["delta_channels"] = json!(["messages"]);
        }
        b
    };
    let prune_puts = [
        ("", "p1", None, "1", false),
        ("", "p2", Some("p1"), "2", false),
        ("", "p3", Some("p2"), "3", true),
        ("sub", "s1", None, "1", false),
        ("sub", "s2", Some("s1"), "2", false),
    ];
    for (ns, id, parent, ver, delta) in prune_puts {
        ok(&api.put_cp("rt-p", ns, id, &p(id, parent, ver, delta)).await, 201, &format!("rt-p {ns:?}/{id}"));
    }
    let a = api.post("/v1/checkpoints/prune", &json!({"threads": ["rt-p"], "strategy": "keep_latest"})).await;
    assert_eq!(ok(&a, 200, "prune keep_latest"), &json!({"deleted": 2}), "{}", a.brief());
    assert_eq!(
        keys_of(&api.checkpoints("thread=rt-p", 100).await),
        keys(&[("s2", "sub"), ("p3", ""), ("p2", "")]),
        "each namespace's newest, and p2 for p3's delta channel"
    );
    assert_eq!(api.tuple("rt-p", "", "p3").await["blobs"], json!([blob("messages", "3", "msgpack", b"3")]));
    assert_eq!(api.tuple("rt-p", "", "p2").await["blobs"], json!([blob("messages", "2", "msgpack", b"2")]));
    assert_eq!(
        api.tuple("rt-p", "sub", "s2").await["blobs"],
        json!([blob("messages", "2", "msgpack", b"2")])
    );
    refused(&api.get_cp("rt-p", "", "p1").await, 404, "not_found", "a pruned checkpoint");
    let a = api.post("/v1/checkpoints/prune", &json!({"threads": ["rt-p"]})).await;
    assert_eq!(ok(&a, 200, "prune again (default keep_latest)"), &json!({"deleted": 0}), "{}", a.brief());
    assert_eq!(api.thread("rt-p").await["checkpoints"], 3);

    // Prune delete.
    ok(&api.put_cp("rt-q", "", "q1", &p("q1", None, "1", false)).await, 201, "q1");
    ok(&api.put_cp("rt-q", "", "q2", &p("q2", Some("q1"), "2", false)).await, 201, "q2");
    let a = api
        .post("/v1/checkpoints/prune", &json!({"threads": ["rt-q", "rt-none"], "strategy": "delete"}))
        .await;
    assert_eq!(ok(&a, 200, "prune delete"), &json!({"deleted": 2}), "{}", a.brief());
    refused(&api.get_thread("rt-q").await, 404, "not_found", "a thread pruned with delete");

    // Delete by run.
    let runs = [("r1", None, "dr-1"), ("r2", Some("r1"), "dr-1"), ("r3", Some("r2"), "dr-2")];
    for (id, parent, run) in runs {
        let b = cp_body(parent, b"r", json!({"run_id": run, "step": 1}), json!({}), vec![]);
        ok(&api.put_cp("rt-runs", "", id, &b).await, 201, &format!("rt-runs {id}"));
    }
    let a = api.post("/v1/checkpoints/delete-runs", &json!({"run_ids": ["dr-1", "dr-none"]})).await;
    assert_eq!(ok(&a, 200, "delete-runs"), &json!({"deleted": 2}), "{}", a.brief());
    assert_eq!(keys_of(&api.checkpoints("thread=rt-runs", 100).await), keys(&[("r3", "")]), "run dr-2 kept");
    assert_eq!(api.thread("rt-runs").await["checkpoints"], 1);

    // Delete a thread; then again.
    let a = api.delete("/v1/threads/rt-copy").await;
    assert_eq!(ok(&a, 200, "DELETE"), &json!({"thread": "rt-copy", "deleted": 5}), "{}", a.brief());
    let a = api.delete("/v1/threads/rt-copy").await;
    assert_eq!(ok(&a, 200, "DELETE again"), &json!({"thread": "rt-copy", "deleted": 0}), "{}", a.brief());
    refused(&api.get_thread("rt-copy").await, 404, "not_found", "a deleted thread");
    refused(&api.get_cp("rt-copy", "", "latest").await, 404, "not_found", "a deleted thread's latest");

    // Thread list.
    let want_threads = vec![RT.to_string(), "rt-p".to_string(), "rt-runs".to_string()];
    assert_eq!(thread_ids(&api.threads("", 100).await), want_threads, "GET /v1/threads");
    assert_eq!(thread_ids(&api.threads("", 1).await), want_threads, "GET /v1/threads paged by 1");
    let past = pct("2000-01-01T00:00:00Z");
    assert!(api.threads(&format!("updated_before={past}"), 100).await.is_empty(), "updated_before the past");
    let future = pct("2999-01-01T00:00:00Z");
    assert_eq!(thread_ids(&api.threads(&format!("updated_before={future}"), 2).await), want_threads);

    // Events.
    let deadline = Instant::now() + Duration::from_secs(15);
    let evs = loop {
        let evs = api.events("checkpoint.put,thread.deleted").await;
        let done = evs.iter().any(|e| e["type"] == "thread.deleted" && e["subject"]["id"] == "rt-copy");
        if done || Instant::now() > deadline {
            break evs;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for e in &evs {
        assert!(e["type"] == "checkpoint.put" || e["type"] == "thread.deleted", "only the asked types: {e}");
        assert_eq!(e["subject"]["kind"], "thread", "{e}");
        assert!(e["cursor"].is_u64() && e["at"].is_string(), "{e}");
    }
    let of = |kind: &str, thread: &str| -> Vec<Value> {
        evs.iter().filter(|e| e["type"] == kind && e["subject"]["id"] == thread).cloned().collect()
    };
    let puts = of("checkpoint.put", RT);
    assert_eq!(
        puts.len(),
        6,
        "one event per stored or replaced put, none for repeats or refusals: {puts:#?}"
    );
    let ones: Vec<&Value> = puts.iter().filter(|e| e["data"]["checkpoint_id"] == "0001").collect();
    assert_eq!(ones.len(), 2, "0001: the put and the replace: {puts:#?}");
    assert_eq!(
        ones[0]["data"],
        json!({"ns": "", "checkpoint_id": "0001", "parent_checkpoint_id": null, "step": -1}),
        "{}",
        ones[0]
    );
    assert_eq!(ones[1]["data"]["step"], 0, "the replace: {}", ones[1]);
    assert!(
        puts.iter().any(|e| e["data"]
            == json!({"ns": "", "checkpoint_id": "0002", "parent_checkpoint_id": "0001", "step": 1})),
        "the put of 0002: {puts:#?}"
    );
    assert!(
        puts.iter().any(|e| e["data"]["ns"] == CHILD && e["data"]["checkpoint_id"] == "0002"),
        "the put in the child namespace: {puts:#?}"
    );
    for (thread, n) in [("rt-p", 5), ("rt-q", 2), ("rt-runs", 3)] {
        assert_eq!(of("checkpoint.put", thread).len(), n, "checkpoint.put events of {thread}");
    }
    let gone = of("thread.deleted", "rt-copy");
    assert_eq!(gone.len(), 1, "one thread.deleted for rt-copy (none for the second DELETE): {gone:#?}");
    assert_eq!(gone[0]["data"], json!({"deleted": 5, "reason": "request"}), "{}", gone[0]);
    let gone = of("thread.deleted", "rt-q");
    assert_eq!(gone.len(), 1, "{gone:#?}");
    assert_eq!(gone[0]["data"]["deleted"], 2, "{}", gone[0]);
    assert!(of("thread.deleted", "rt-none").is_empty(), "no event for an absent thread");

    be.stop_and_check(server).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Limits, keys, base64 and scopes
// ---------------------------------------------------------------------------------------------

const LIMITS_TOML: &str = "[limits]
max_checkpoint_key_bytes = 16
max_blob_bytes = 1000
max_checkpoint_bytes = 2500
max_checkpoint_metadata_bytes = 200
max_checkpoint_request_bytes = 20000
max_checkpoint_channels = 5
max_task_path_bytes = 10
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_sqlite() {
    let be = Backend::sqlite(LIMITS_TOML);
    bounded(Duration::from_secs(120), "limits_sqlite", limits(&be)).await;
}

/// The smallest put: a checkpoint and nothing else.
fn small(data: &[u8]) -> Value {
    json!({"checkpoint": typed("msgpack", data)})
}

/// A writes body.
fn wbody(task: &str, path: &str, writes: Vec<Value>) -> Value {
    json!({"task_id": task, "task_path": path, "writes": writes})
}

/// `body` as text padded with spaces to exactly `n` bytes.
fn padded(body: &Value, n: usize) -> String {
    let t = body.to_string();
    assert!(t.len() <= n, "{} bytes do not fit in {n}", t.len());
    format!("{t}{}", " ".repeat(n - t.len()))
}

/// `n` channels at version 1: their `channel_versions` and blobs.
fn channels(n: usize) -> (Value, Value) {
    let names: Vec<String> = (0..n).map(|i| format!("ch{i}")).collect();
    let versions = Value::Object(names.iter().map(|c| (c.clone(), json!("1"))).collect());
    let blobs = Value::Array(names.iter().map(|c| blob(c, "1", "msgpack", b"v")).collect());
    (versions, blobs)
}

async fn limits(be: &Backend) {
    let server = be.start().await;
    let api = Api::new(&server.url);
    api.wait_ready().await;
    let s = small(b"cp");
    let w1 = wbody("t", "", vec![write("c", "msgpack", b"w")]);

    // Keys: 16 bytes, not 17 (bytes, not characters).
    let (k16, k17) = ("k".repeat(16), "k".repeat(17));
    let e16 = "é".repeat(8);
    let e17 = format!("{e16}x");
    ok(&api.put_cp(&k16, "", "c1", &s).await, 201, "a 16-byte thread");
    invalid(&api.put_cp(&k17, "", "c1", &s).await, "thread", "a 17-byte thread");
    ok(&api.put_cp(&e16, "", "c1", &s).await, 201, "a thread of 8 two-byte characters");
    invalid(&api.put_cp(&e17, "", "c1", &s).await, "thread", "17 bytes in 9 characters");
    refused(&api.get_cp(&k17, "", "c1").await, 404, "not_found", "GET with a 17-byte thread");
    ok(&api.put_cp("lim", "", &k16, &s).await, 201, "a 16-byte checkpoint id");
    invalid(&api.put_cp("lim", "", &k17, &s).await, "checkpoint_id", "a 17-byte checkpoint id");
    ok(&api.put_cp("lim", &k16, "c1", &s).await, 201, "a 16-byte namespace");
    invalid(&api.put_cp("lim", &k17, "c1", &s).await, "ns", "a 17-byte namespace");
    ok(&api.put_cp("lim", "", "c1", &s).await, 201, "lim/c1");
    let mut b = s.clone();
    b["channel_versions"] = obj(&[(k16.as_str(), json!(k16))]);
    b["blobs"] = json!([blob(&k16, &k16, &k16, b"v")]);
    ok(&api.put_cp("lim", "", "c2", &b).await, 201, "a 16-byte channel, version and type");
    b["channel_versions"] = obj(&[(k17.as_str(), json!("1"))]);
    b["blobs"] = json!([blob(&k17, "1", "msgpack", b"v")]);
    invalid(&api.put_cp("lim", "", "c3", &b).await, "channel_versions", "a 17-byte channel");
    b["channel_versions"] = json!({"c": k17});
    b["blobs"] = json!([blob("c", &k17, "msgpack", b"v")]);
    invalid(&api.put_cp("lim", "", "c3", &b).await, "channel_versions.c", "a 17-byte version");
    let mut b = s.clone();
    b["blobs"] = json!([blob(&k17, "1", "msgpack", b"v")]);
    invalid(&api.put_cp("lim", "", "c3", &b).await, "blobs[0].channel", "a 17-byte blob channel");
    b["blobs"] = json!([blob("c", &k17, "msgpack", b"v")]);
    invalid(&api.put_cp("lim", "", "c3", &b).await, "blobs[0].version", "a 17-byte blob version");
    b["blobs"] = json!([blob("c", "1", &k17, b"v")]);
    invalid(&api.put_cp("lim", "", "c3", &b).await, "blobs[0].type", "a 17-byte blob type");
    let mut b = s.clone();
    b["checkpoint"]["type"] = json!(k17);
    invalid(&api.put_cp("lim", "", "c3", &b).await, "checkpoint.type", "a 17-byte checkpoint type");
    b["checkpoint"]["type"] = json!("");
    invalid(&api.put_cp("lim", "", "c3", &b).await, "checkpoint.type", "an empty checkpoint type");
    let mut b = s.clone();
    b["parent_checkpoint_id"] = json!(k17);
    invalid(&api.put_cp("lim", "", "c3", &b).await, "parent_checkpoint_id", "a 17-byte parent");
    let mut b = s.clone();
    b["delta_channels"] = json!([k17]);
    invalid(&api.put_cp("lim", "", "c3", &b).await, "delta_channels[0]", "a 17-byte delta channel");
    let mut b = s.clone();
    b["channel_versions"] = json!({"": "1"});
    invalid(&api.put_cp("lim", "", "c3", &b).await, "channel_versions", "an empty channel");
    let a = api.put_writes("lim", "", "c1", &wbody(&k16, "", vec![write("c", "msgpack", b"w")])).await;
    ok(&a, 201, "a 16-byte task id");
    let a = api.put_writes("lim", "", "c1", &wbody(&k17, "", vec![write("c", "msgpack", b"w")])).await;
    invalid(&a, "task_id", "a 17-byte task id");
    let a = api.put_writes("lim", "", "c1", &wbody("t", "", vec![write(&k17, "msgpack", b"w")])).await;
    invalid(&a, "writes[0].channel", "a 17-byte write channel");
    let a = api.put_writes("lim", "", "c1", &wbody("t", "", vec![write("c", &k17, b"w")])).await;
    invalid(&a, "writes[0].type", "a 17-byte write type");
    refused(&api.get_cp("lim", "", "c3").await, 404, "not_found", "no refused put was stored");

    // Control characters in every key.
    let bad_paths = [
        ("a\u{1}b", "", "c1", "thread", "a thread with U+0001"),
        ("a\u{85}", "", "c1", "thread", "a thread with U+0085 (C1)"),
        ("lim", "a\nb", "c1", "ns", "a namespace with a newline"),
        ("lim", "", "a\tb", "checkpoint_id", "a checkpoint id with a tab"),
    ];
    for (thread, ns, id, field, what) in bad_paths {
        invalid(&api.put_cp(thread, ns, id, &s).await, field, what);
        invalid(&api.put_writes(thread, ns, id, &w1).await, field, &format!("writes: {what}"));
    }
    let mut b = s.clone();
    b["channel_versions"] = json!({"a\u{7f}": "1"});
    invalid(&api.put_cp("lim", "", "c3", &b).await, "channel_versions", "a channel with DEL");
    let mut b = s.clone();
    b["blobs"] = json!([blob("c", "1\u{1b}", "msgpack", b"v")]);
    invalid(&api.put_cp("lim", "", "c3", &b).await, "blobs[0].version", "a version with ESC");
    let a = api.put_writes("lim", "", "c1", &wbody("t\u{1b}", "", vec![write("c", "msgpack", b"w")])).await;
    invalid(&a, "task_id", "a task id with ESC");
    let a = api.put_writes("lim", "", "c1", &wbody("t", "p\u{1}", vec![write("c", "msgpack", b"w")])).await;
    invalid(&a, "task_path", "a task path with U+0001");

    // `latest` is no id.
    invalid(&api.put_cp("lim", "", "latest", &s).await, "checkpoint_id", "`latest` as an id");
    invalid(&api.put_writes("lim", "", "latest", &w1).await, "checkpoint_id", "writes to `latest`");
    let mut b = s.clone();
    b["parent_checkpoint_id"] = json!("latest");
    invalid(&api.put_cp("lim", "", "c3", &b).await, "parent_checkpoint_id", "`latest` as a parent");

    // Blobs: 1,000 bytes, not 1,001.
    let mut b = s.clone();
    b["channel_versions"] = json!({"big": "1"});
    b["blobs"] = json!([blob("big", "1", "msgpack", &bytes_of(1, 1_000))]);
    ok(&api.put_cp("lim", "", "s1", &b).await, 201, "a 1,000-byte blob");
    b["channel_versions"] = json!({"big": "2"});
    b["blobs"] = json!([blob("big", "2", "msgpack", &bytes_of(2, 1_001))]);
    let a = api.put_cp("lim", "", "s2", &b).await;
    too_large(&a, "blobs[0].data", "a 1,001-byte blob");
    assert_eq!(a.details()["channel"], "big", "{}", a.brief());
    refused(&api.get_cp("lim", "", "s2").await, 404, "not_found", "a refused blob writes nothing");

    // A checkpoint with its blobs: 2,500 bytes, not 2,501.
    let three = |cp: usize| {
        let mut b = small(&bytes_of(3, cp));
        b["channel_versions"] = json!({"c0": "1", "c1": "1", "c2": "1"});
        b["blobs"] = json!([
            blob("c0", "1", "msgpack", &bytes_of(4, 800)),
            blob("c1", "1", "msgpack", &bytes_of(5, 800)),
            blob("c2", "1", "msgpack", &bytes_of(6, 800)),
        ]);
        b
    };
    ok(&api.put_cp("lim-sz", "", "t1", &three(100)).await, 201, "100 + 3 x 800 = 2,500 bytes");
    let a = api.put_cp("lim-sz", "", "t2", &three(101)).await;
    too_large(&a, "blobs[2].data", "101 + 3 x 800 = 2,501 bytes");
    assert_eq!(a.details()["channel"], "c2", "{}", a.brief());
    ok(&api.put_cp("lim-sz", "", "t3", &small(&bytes_of(7, 2_500))).await, 201, "a 2,500-byte checkpoint");
    let a = api.put_cp("lim-sz", "", "t4", &small(&bytes_of(8, 2_501))).await;
    too_large(&a, "checkpoint.data", "a 2,501-byte checkpoint");
    refused(&api.get_cp("lim-sz", "", "t2").await, 404, "not_found", "nothing of the 2,501 bytes");

    // Metadata: 200 bytes serialized, not 201 ({"s":"..."} is 8 bytes around the string).
    let meta = |n: usize| json!({"s": "x".repeat(n)});
    assert_eq!(meta(192).to_string().len(), 200);
    let mut b = s.clone();
    b["metadata"] = meta(192);
    ok(&api.put_cp("lim", "", "m1", &b).await, 201, "200 bytes of metadata");
    b["metadata"] = meta(193);
    too_large(&api.put_cp("lim", "", "m2", &b).await, "metadata", "201 bytes of metadata");
    ok(
        &api.patch("/v1/threads/lim", &json!({"metadata": meta(192)})).await,
        200,
        "200 bytes of thread metadata",
    );
    too_large(
        &api.patch("/v1/threads/lim", &json!({"metadata": meta(193)})).await,
        "metadata",
        "201 bytes of thread metadata",
    );

    // Write values: 1,000 bytes, not 1,001.
    let a = api
        .put_writes("lim", "", "c1", &wbody("wv", "", vec![write("c", "msgpack", &bytes_of(9, 1_000))]))
        .await;
    ok(&a, 201, "a 1,000-byte write");
    let a = api
        .put_writes("lim", "", "c1", &wbody("wv2", "", vec![write("c", "msgpack", &bytes_of(10, 1_001))]))
        .await;
    too_large(&a, "writes[0].data", "a 1,001-byte write");
    assert_eq!(a.details()["channel"], "c", "{}", a.brief());

    // Bodies: 20,000 bytes, not 20,001.
    let a = api.raw(reqwest::Method::PUT, &cp_path("lim", "", "body1"), padded(&s, 20_000)).await;
    ok(&a, 201, "a 20,000-byte put body");
    let a = api.raw(reqwest::Method::PUT, &cp_path("lim", "", "body2"), padded(&s, 20_001)).await;
    too_large(&a, "body", "a 20,001-byte put body");
    let wb = wbody("tb", "", vec![write("c", "msgpack", b"w")]);
    let a = api.raw(reqwest::Method::POST, &writes_path("lim", "", "c1"), padded(&wb, 20_000)).await;
    ok(&a, 201, "a 20,000-byte writes body");
    let wb = wbody("tb2", "", vec![write("c", "msgpack", b"w")]);
    let a = api.raw(reqwest::Method::POST, &writes_path("lim", "", "c1"), padded(&wb, 20_001)).await;
    too_large(&a, "body", "a 20,001-byte writes body");
    refused(&api.get_cp("lim", "", "body2").await, 404, "not_found", "an oversized body writes nothing");

    // Counts: 5 channels, not 6.
    let mut b = s.clone();
    let (v, bl) = channels(5);
    b["channel_versions"] = v;
    b["blobs"] = bl;
    ok(&api.put_cp("lim", "", "n1", &b).await, 201, "5 channels");
    let (v, bl) = channels(6);
    b["channel_versions"] = v;
    b["blobs"] = bl.clone();
    invalid(&api.put_cp("lim", "", "n2", &b).await, "channel_versions", "6 channel versions");
    let mut b = s.clone();
    b["blobs"] = bl;
    invalid(&api.put_cp("lim", "", "n2", &b).await, "blobs", "6 blobs");
    let mut b = s.clone();
    b["delta_channels"] = json!(["d0", "d1", "d2", "d3", "d4"]);
    ok(&api.put_cp("lim", "", "n3", &b).await, 201, "5 delta channels");
    b["delta_channels"] = json!(["d0", "d1", "d2", "d3", "d4", "d5"]);
    invalid(&api.put_cp("lim", "", "n4", &b).await, "delta_channels", "6 delta channels");
    let ws = |n: usize| -> Vec<Value> { (0..n).map(|i| write(&format!("w{i}"), "msgpack", b"w")).collect() };
    ok(&api.put_writes("lim", "", "c1", &wbody("t5", "", ws(5))).await, 201, "5 writes");
    invalid(&api.put_writes("lim", "", "c1", &wbody("t6", "", ws(6))).await, "writes", "6 writes");
    invalid(&api.put_writes("lim", "", "c1", &wbody("t0", "", ws(0))).await, "writes", "no writes");
    let twice = wbody("t2", "", vec![write_at("a", "msgpack", b"1", 1), write_at("b", "msgpack", b"2", 1)]);
    invalid(&api.put_writes("lim", "", "c1", &twice).await, "writes[1].idx", "one index twice");

    // Task paths: 10 bytes, not 11.
    let a = api.put_writes("lim", "", "c1", &wbody("tp", &"p".repeat(10), ws(1))).await;
    ok(&a, 201, "a 10-byte task path");
    let a = api.put_writes("lim", "", "c1", &wbody("tp2", &"p".repeat(11), ws(1))).await;
    invalid(&a, "task_path", "an 11-byte task path");

    // Base64: standard, padded.
    let bad64 = [
        ("!!!!", "not base64"),
        ("AAE", "unpadded"),
        ("-_-_", "the URL-safe alphabet"),
        ("AAE=\n", "a newline"),
    ];
    for (data, what) in bad64 {
        let mut b = s.clone();
        b["checkpoint"]["data"] = json!(data);
        bad_request(
            &api.put_cp("lim", "", "b64", &b).await,
            "checkpoint.data",
            &format!("checkpoint: {what}"),
        );
        let mut b = s.clone();
        b["blobs"] = json!([{"channel": "c", "version": "1", "type": "msgpack", "data": data}]);
        bad_request(&api.put_cp("lim", "", "b64", &b).await, "blobs[0].data", &format!("blob: {what}"));
        let w = json!({"task_id": "t", "writes": [{"channel": "c", "type": "msgpack", "data": data}]});
        bad_request(&api.put_writes("lim", "", "c1", &w).await, "writes[0].data", &format!("write: {what}"));
    }
    refused(&api.get_cp("lim", "", "b64").await, 404, "not_found", "bad base64 writes nothing");
    let mut b = s.clone();
    let plus_slash = [0xfb, 0xef, 0xbe, 0xff, 0xfe, 0x00];
    assert_eq!(b64(&plus_slash), "++++//4A");
    b["checkpoint"]["data"] = json!("++++//4A");
    ok(&api.put_cp("lim", "", "b64ok", &b).await, 201, "padded standard base64 with + and /");
    assert_eq!(api.tuple("lim", "", "b64ok").await["checkpoint"], typed("msgpack", &plus_slash));

    // A fence is both fields or neither.
    let mut b = s.clone();
    b["job_id"] = json!("00000000-0000-4000-8000-000000000001");
    invalid(&api.put_cp("lim", "", "f1", &b).await, "lease", "job_id without lease");
    b["lease"] = json!("");
    invalid(&api.put_cp("lim", "", "f1", &b).await, "lease", "an empty lease");
    let mut b = s.clone();
    b["lease"] = json!("1.x");
    invalid(&api.put_cp("lim", "", "f1", &b).await, "job_id", "lease without job_id");
    let mut w = w1.clone();
    w["job_id"] = json!("00000000-0000-4000-8000-000000000001");
    invalid(&api.put_writes("lim", "", "c1", &w).await, "lease", "writes: job_id without lease");

    // Scopes (minting the first token turns auth on).
    let root_token = mint(&api, json!({"name": "root", "scopes": ["admin"]})).await;
    let root = api.as_token(&root_token);
    let reader = api.as_token(&mint(&root, json!({"name": "reader", "scopes": ["read"]})).await);
    let writer = api.as_token(&mint(&root, json!({"name": "writer", "scopes": ["checkpoints"]})).await);
    let both = api.as_token(&mint(&root, json!({"name": "both", "scopes": ["checkpoints", "read"]})).await);
    let restricted = api.as_token(
        &mint(&root, json!({"name": "restricted", "scopes": ["checkpoints", "read"], "queues": ["lim-q"]}))
            .await,
    );
    assert_eq!(api.put_cp("lim", "", "sc0", &s).await.status, 401, "no token once auth is on");
    for (who, t) in [("read", &reader), ("queue-restricted", &restricted)] {
        let what = |op: &str| format!("{op} with a {who} token");
        refused(&t.put_cp("lim", "", "sc1", &s).await, 403, "forbidden", &what("PUT"));
        refused(&t.put_writes("lim", "", "c1", &w1).await, 403, "forbidden", &what("writes"));
        refused(
            &t.patch("/v1/threads/lim", &json!({"metadata": {}})).await,
            403,
            "forbidden",
            &what("PATCH"),
        );
        refused(&t.delete("/v1/threads/lim").await, 403, "forbidden", &what("DELETE"));
        refused(
            &t.post("/v1/threads/lim/copy", &json!({"to": "lim-c"})).await,
            403,
            "forbidden",
            &what("copy"),
        );
        refused(
            &t.post("/v1/checkpoints/prune", &json!({"threads": ["lim"]})).await,
            403,
            "forbidden",
            &what("prune"),
        );
        refused(
            &t.post("/v1/checkpoints/delete-runs", &json!({"run_ids": ["x"]})).await,
            403,
            "forbidden",
            &what("delete-runs"),
        );
    }
    refused(&restricted.get_cp("lim", "", "c1").await, 403, "forbidden", "a queue-restricted token reads");
    refused(&restricted.get("/v1/checkpoints?thread=lim").await, 403, "forbidden", "a queue-restricted list");
    ok(&reader.get_cp("lim", "", "c1").await, 200, "a read token reads a checkpoint");
    ok(&reader.get("/v1/threads/lim").await, 200, "a read token reads a thread");
    ok(&reader.get("/v1/checkpoints?thread=lim").await, 200, "a read token lists");
    refused(&reader.get_cp("lim", "", "sc1").await, 404, "not_found", "no forbidden put was stored");
    ok(&writer.put_cp("lim", "", "sc2", &s).await, 201, "a checkpoints token puts");
    ok(&writer.put_writes("lim", "", "sc2", &w1).await, 201, "a checkpoints token writes");
    ok(&both.get_cp("lim", "", "sc2").await, 200, "a checkpoints + read token reads");
    ok(&root.put_cp("lim", "", "sc3", &s).await, 201, "an admin token puts");
    be.stop_and_check(server).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Lease fencing
// ---------------------------------------------------------------------------------------------

both_backends!(fencing, fencing_sqlite, fencing_postgres, "ferry_cp_fence", 120, "");

async fn fencing(be: &Backend) {
    let server = be.start().await;
    let api = Api::new(&server.url);
    api.wait_ready().await;
    let job_id = api.enqueue(json!({"queue": "cp-fence"})).await;
    let job = api.claim_one("cp-fence", "fence-w").await;
    assert_eq!(job["id"], job_id.as_str(), "{job}");
    let lease = job["lease"].as_str().unwrap_or_else(|| panic!("no lease: {job}")).to_string();
    let fenced = |mut b: Value| {
        b["job_id"] = json!(job_id);
        b["lease"] = json!(lease);
        b
    };

    let b1 = fenced(cp_body(
        None,
        b"f1",
        json!({"step": 0}),
        json!({"state": "1"}),
        vec![blob("state", "1", "msgpack", b"s1")],
    ));
    ok(&api.put_cp("ft", "", "f1", &b1).await, 201, "a put under the current lease");
    assert_eq!(api.thread("ft").await["last_job_id"], job_id.as_str(), "the thread names its job");
    let w1 = fenced(json!({"task_id": "t1", "writes": [write("state", "msgpack", b"w1")]}));
    let a = api.put_writes("ft", "", "f1", &w1).await;
    assert_eq!(ok(&a, 201, "writes under the current lease")["written"], 1, "{}", a.brief());
    api.complete(&job).await;

    // The lease is no longer current: nothing is written.
    let before = api.thread("ft").await;
    let f1 = api.tuple("ft", "", "f1").await;
    let b2 = fenced(cp_body(
        Some("f1"),
        b"f2",
        json!({"step": 1}),
        json!({"state": "2"}),
        vec![blob("state", "2", "msgpack", b"s2")],
    ));
    refused(&api.put_cp("ft", "", "f2", &b2).await, 409, "stale_lease", "a put after the job completed");
    refused(&api.get_cp("ft", "", "f2").await, 404, "not_found", "the stale put wrote nothing");
    let mut b1x = b1.clone();
    b1x["metadata"] = json!({"step": 9});
    refused(&api.put_cp("ft", "", "f1", &b1x).await, 409, "stale_lease", "a replace after the job completed");
    let w2 = fenced(json!({"task_id": "t2", "writes": [write("state", "msgpack", b"w2")]}));
    refused(&api.put_writes("ft", "", "f1", &w2).await, 409, "stale_lease", "writes after the job completed");
    refused(
        &api.put_writes("ft", "", "f2", &w2).await,
        409,
        "stale_lease",
        "writes before a checkpoint, stale",
    );
    let after = api.thread("ft").await;
    for k in ["checkpoints", "blobs", "writes", "bytes"] {
        assert_eq!(after[k], before[k], "{k} of the thread unchanged by the stale writes: {after}");
    }
    assert_eq!(api.tuple("ft", "", "f1").await, f1, "f1 unchanged by the stale writes");
    refused(&api.put_cp("ft-new", "", "f1", &b2).await, 409, "stale_lease", "a stale put on a new thread");
    refused(
        &api.put_writes("ft-new", "", "f1", &w2).await,
        409,
        "stale_lease",
        "stale writes on a new thread",
    );
    refused(&api.get_thread("ft-new").await, 404, "not_found", "a stale write creates no thread");

    // An unknown job.
    let unknown = "00000000-0000-4000-8000-00000000abcd";
    let mut b3 = b2.clone();
    b3["job_id"] = json!(unknown);
    refused(&api.put_cp("ft", "", "f3", &b3).await, 404, "not_found", "a put fenced by an unknown job");
    let mut w3 = w2.clone();
    w3["job_id"] = json!(unknown);
    refused(&api.put_writes("ft", "", "f1", &w3).await, 404, "not_found", "writes fenced by an unknown job");
    refused(&api.get_cp("ft", "", "f3").await, 404, "not_found", "nothing written for an unknown job");

    // Without a fence the thread goes on; its last job stays named.
    let b2u = cp_body(
        Some("f1"),
        b"f2",
        json!({"step": 1}),
        json!({"state": "2"}),
        vec![blob("state", "2", "msgpack", b"s2")],
    );
    ok(&api.put_cp("ft", "", "f2", &b2u).await, 201, "an unfenced put");
    assert_eq!(api.thread("ft").await["last_job_id"], job_id.as_str(), "the last fenced job");
    be.stop_and_check(server).await;
}

// ---------------------------------------------------------------------------------------------
// 4. SIGKILLs under put load
// ---------------------------------------------------------------------------------------------

fn kill_thread(c: usize) -> String {
    format!("kt-{c}")
}

fn kill_id(step: usize) -> String {
    format!("{step:06}")
}

fn kill_seed(c: usize, step: usize, part: u64) -> u64 {
    ((c as u64) << 40) ^ ((step as u64) << 8) ^ part
}

/// Checkpoint `step` of client `c`: its bytes.
fn kill_cp(c: usize, step: usize) -> Vec<u8> {
    bytes_of(kill_seed(c, step, 1), 40 + step % 50)
}

/// The new version of channel `state` at `step`.
fn kill_state(c: usize, step: usize) -> Vec<u8> {
    bytes_of(kill_seed(c, step, 2), 100 + (step * 7) % 150)
}

/// Channel `shared` at version 1, sent with every put (stored once).
fn kill_shared(c: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..=255u8).collect();
    v.extend(bytes_of(kill_seed(c, 0, 3), 64));
    v
}

/// Write `k` of `step`.
fn kill_write(c: usize, step: usize, k: u64) -> Vec<u8> {
    bytes_of(kill_seed(c, step, 4 + k), 20 + step % 30)
}

const KILL_TASK_PATH: &str = "~__pregel_pull, node";

fn kill_put_body(c: usize, step: usize) -> Value {
    let id = kill_id(step);
    let parent = step.checked_sub(1).map(kill_id);
    cp_body(
        parent.as_deref(),
        &kill_cp(c, step),
        json!({"source": "loop", "step": step, "client": c}),
        json!({"state": id.clone(), "shared": "1"}),
        vec![
            blob("state", &id, "msgpack", &kill_state(c, step)),
            blob("shared", "1", "msgpack", &kill_shared(c)),
        ],
    )
}

fn kill_writes_body(c: usize, step: usize) -> Value {
    json!({
        "task_id": format!("task-{step}"),
        "task_path": KILL_TASK_PATH,
        "writes": [
            write("state", "msgpack", &kill_write(c, step, 0)),
            write("__interrupt__", "msgpack", &kill_write(c, step, 1)),
        ],
    })
}

/// The pending writes of `step` once its writes are stored.
fn kill_pending(c: usize, step: usize) -> Value {
    let task = format!("task-{step}");
    json!([
        pending(&task, KILL_TASK_PATH, "__interrupt__", "msgpack", &kill_write(c, step, 1), -3),
        pending(&task, KILL_TASK_PATH, "state", "msgpack", &kill_write(c, step, 0), 0),
    ])
}

/// What the clients of the kill test were told.
#[derive(Default)]
struct KillBook {
    /// Per client: the step it is at, and whether that step's put is acknowledged.
    next: Vec<(usize, bool)>,
    /// Acknowledged puts and writes, (client, step).
    puts: BTreeSet<(usize, usize)>,
    writes: BTreeSet<(usize, usize)>,
    /// Puts acknowledged since the last restart.
    recent: Vec<(usize, usize)>,
    acks: usize,
    resent: usize,
    bad: Vec<String>,
}

/// What an answer shows.
enum Judged {
    Acked,
    /// Lost (transport error, 429, 503): resend.
    Unknown,
    Bad(String),
}

fn judge_put(r: &Result<Answer, String>) -> Judged {
    let Ok(a) = r else { return Judged::Unknown };
    match a.status {
        201 if a.body["duplicate"] != true && a.body["replaced"] != true => Judged::Acked,
        200 if a.body["duplicate"] == true => Judged::Acked,
        429 | 503 => Judged::Unknown,
        _ => Judged::Bad(a.brief()),
    }
}

fn judge_writes(r: &Result<Answer, String>) -> Judged {
    let Ok(a) = r else { return Judged::Unknown };
    match a.status {
        201 if a.body["written"] == 2 => Judged::Acked,
        200 if a.body["duplicate"] == true && a.body["written"] == 0 => Judged::Acked,
        429 | 503 => Judged::Unknown,
        _ => Judged::Bad(a.brief()),
    }
}

/// Client `c`: its thread's puts and writes, one request at a time, until `stop`; an unknown
/// outcome is resent (puts and writes are idempotent).
async fn kill_client(api: Api, c: usize, book: Arc<Mutex<KillBook>>, stop: Arc<AtomicBool>) {
    let thread = kill_thread(c);
    let mut lost = false;
    while !stop.load(Ordering::SeqCst) {
        let (step, put_done) = book.lock().unwrap().next[c];
        let id = kill_id(step);
        if lost {
            book.lock().unwrap().resent += 1;
        }
        if !put_done {
            let req = api.http.put(api.url(&cp_path(&thread, "", &id))).json(&kill_put_body(c, step));
            let r = api.try_send(req).await;
            match judge_put(&r) {
                Judged::Acked => {
                    lost = false;
                    let mut b = book.lock().unwrap();
                    b.next[c].1 = true;
                    b.puts.insert((c, step));
                    b.recent.push((c, step));
                    b.acks += 1;
                }
                Judged::Unknown => {
                    lost = true;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Judged::Bad(e) => {
                    book.lock().unwrap().bad.push(format!("put {thread}/{id}: {e}"));
                    return;
                }
            }
        } else {
            let req = api.http.post(api.url(&writes_path(&thread, "", &id))).json(&kill_writes_body(c, step));
            let r = api.try_send(req).await;
            match judge_writes(&r) {
                Judged::Acked => {
                    lost = false;
                    let mut b = book.lock().unwrap();
                    b.writes.insert((c, step));
                    b.next[c] = (step + 1, false);
                    b.acks += 1;
                }
                Judged::Unknown => {
                    lost = true;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Judged::Bad(e) => {
                    book.lock().unwrap().bad.push(format!("writes {thread}/{id}: {e}"));
                    return;
                }
            }
        }
    }
}

/// Checks a GET of acknowledged put `step` of client `c`: `None` when it reads back whole.
fn kill_judge_tuple(c: usize, step: usize, writes_acked: bool, r: &Result<Answer, String>) -> Option<String> {
    let what = format!("{}/{}", kill_thread(c), kill_id(step));
    let a = match r {
        Ok(a) => a,
        Err(e) => return Some(format!("GET {what}: {e}")),
    };
    if a.status != 200 {
        return Some(format!("GET {what} (acknowledged): {}", a.brief()));
    }
    let t = &a.body;
    let parent = step.checked_sub(1).map(kill_id);
    let blobs = json!([
        blob("shared", "1", "msgpack", &kill_shared(c)),
        blob("state", &kill_id(step), "msgpack", &kill_state(c, step)),
    ]);
    if t["checkpoint"] != typed("msgpack", &kill_cp(c, step))
        || t["parent_checkpoint_id"] != json!(parent)
        || t["channel_versions"] != json!({"shared": "1", "state": kill_id(step)})
    {
        return Some(format!("GET {what}: not the checkpoint acknowledged: {}", a.brief()));
    }
    if t["blobs"] != blobs {
        return Some(format!("GET {what}: blobs {} instead of {blobs}", t["blobs"]));
    }
    let want = kill_pending(c, step);
    let pw = &t["pending_writes"];
    let fine = if writes_acked { *pw == want } else { *pw == want || *pw == json!([]) };
    if !fine {
        return Some(format!("GET {what}: pending_writes {pw} (writes acknowledged: {writes_acked})"));
    }
    None
}

both_backends!(
    kill_under_put_load,
    kill_under_put_load_sqlite,
    kill_under_put_load_postgres,
    "ferry_cp_kill",
    300 + 20 * cp_kills() as u64,
    ""
);

/// Clients put and write while the server is SIGKILLed `FERRY_CP_KILLS` times (after 0.2-0.8 s
/// of load and at least 40 new acknowledgements each); each restart and the end check what was
/// acknowledged.
async fn kill_under_put_load(be: &Backend) {
    let (cycles, clients) = (cp_kills(), kill_clients());
    let book = Arc::new(Mutex::new(KillBook { next: vec![(0, false); clients], ..KillBook::default() }));
    let mut dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    for cycle in 0..=cycles {
        let server = be.start_in(dir).await;
        let api = Api::new(&server.url);
        api.wait_ready().await;
        assert_no_panic(&server);
        if cycle > 0 {
            kill_check_restart(&api, &book, cycle).await;
        }
        if cycle == cycles {
            kill_final_checks(&api, &book).await;
            {
                let b = book.lock().unwrap();
                eprintln!(
                    "checkpoint kills: {cycles} kills in {:?}, {} puts and {} writes acknowledged, {} resends",
                    t0.elapsed(),
                    b.puts.len(),
                    b.writes.len(),
                    b.resent
                );
            }
            be.stop_and_check(server).await;
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let before = book.lock().unwrap().acks;
        let tasks: Vec<JoinHandle<()>> = (0..clients)
            .map(|c| tokio::spawn(kill_client(api.clone(), c, book.clone(), stop.clone())))
            .collect();
        let load = Duration::from_millis(200 + (cycle as u64 * 397) % 600);
        let started = Instant::now();
        loop {
            let (acks, bad) = {
                let b = book.lock().unwrap();
                (b.acks, b.bad.len())
            };
            if bad > 0 || (started.elapsed() >= load && acks >= before + 40) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "cycle {cycle}: not 40 acknowledgements in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        dir = kill_keep_dir(server);
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.unwrap();
        }
        assert_none("unexpected answers under the kills", &book.lock().unwrap().bad);
    }
}

/// After a restart: the puts acknowledged before the kill (the last 16 and every fifth) read
/// back whole, and each thread's latest is at least its last acknowledged put.
/// What a restart check reads: the chosen puts, the acknowledged writes, each thread's last put.
type RestartPick = (Vec<(usize, usize)>, BTreeSet<(usize, usize)>, BTreeMap<usize, usize>);

async fn kill_check_restart(api: &Api, book: &Mutex<KillBook>, cycle: usize) {
    let (chosen, writes, last): RestartPick = {
        let mut b = book.lock().unwrap();
        let recent = std::mem::take(&mut b.recent);
        let n = recent.len();
        let chosen = recent
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i + 16 >= n || i % 5 == 0)
            .map(|(_, k)| k)
            .collect();
        let mut last = BTreeMap::new();
        for (c, step) in &b.puts {
            last.insert(*c, *step);
        }
        (chosen, b.writes.clone(), last)
    };
    let mut errors = Vec::new();
    for (c, step) in chosen {
        let req = api.http.get(api.url(&cp_path(&kill_thread(c), "", &kill_id(step))));
        let r = api.try_send(req).await;
        if let Some(e) = kill_judge_tuple(c, step, writes.contains(&(c, step)), &r) {
            errors.push(format!("after kill {cycle}: {e}"));
        }
    }
    for (c, step) in last {
        let latest = api.tuple(&kill_thread(c), "", "latest").await;
        let id = latest["checkpoint_id"].as_str().unwrap_or("");
        if id < kill_id(step).as_str() {
            errors.push(format!(
                "after kill {cycle}: latest of {} is {id}, before {}",
                kill_thread(c),
                kill_id(step)
            ));
        }
    }
    assert_none("acknowledged checkpoints after a restart", &errors);
}

/// Every acknowledged put reads back whole with its acknowledged writes (8 readers at once);
/// each thread holds between the acknowledged and the sent checkpoints and writes.
async fn kill_final_checks(api: &Api, book: &Mutex<KillBook>) {
    let (puts, writes, clients) = {
        let b = book.lock().unwrap();
        assert_none("unexpected answers under the kills", &b.bad);
        (b.puts.clone(), b.writes.clone(), b.next.len())
    };
    let mut errors = Vec::new();
    let mut set = tokio::task::JoinSet::new();
    for c in 0..clients {
        let api = api.clone();
        let mine: Vec<usize> = puts.iter().filter(|k| k.0 == c).map(|k| k.1).collect();
        let w: BTreeSet<usize> = writes.iter().filter(|k| k.0 == c).map(|k| k.1).collect();
        set.spawn(async move {
            let mut errs = Vec::new();
            for (i, step) in mine.iter().enumerate() {
                if i != *step {
                    errs.push(format!("{}: acknowledged puts are not 0..n: {i} is {step}", kill_thread(c)));
                }
                let req = api.http.get(api.url(&cp_path(&kill_thread(c), "", &kill_id(*step))));
                let r = api.try_send(req).await;
                if let Some(e) = kill_judge_tuple(c, *step, w.contains(step), &r) {
                    errs.push(e);
                }
            }
            errs
        });
    }
    while let Some(r) = set.join_next().await {
        errors.extend(r.unwrap());
    }
    for c in 0..clients {
        let acked_puts = puts.iter().filter(|k| k.0 == c).count() as i64;
        let acked_writes = writes.iter().filter(|k| k.0 == c).count() as i64;
        let a = api.get_thread(&kill_thread(c)).await;
        if a.status == 404 && acked_puts == 0 {
            continue;
        }
        let th = ok(&a, 200, &format!("GET thread {}", kill_thread(c)));
        let n = th["checkpoints"].as_i64().unwrap_or(-1);
        if !(acked_puts..=acked_puts + 1).contains(&n) {
            errors.push(format!("{}: {n} checkpoints, {acked_puts} acknowledged: {th}", kill_thread(c)));
        }
        let w = th["writes"].as_i64().unwrap_or(-1);
        if !(2 * acked_writes..=2 * acked_writes + 2).contains(&w) {
            errors.push(format!("{}: {w} writes, {} acknowledged: {th}", kill_thread(c), 2 * acked_writes));
        }
        let blobs = th["blobs"].as_i64().unwrap_or(-1);
        if n > 0 && blobs != n + 1 {
            errors.push(format!(
                "{}: {blobs} blobs for {n} checkpoints (one new each, one shared): {th}",
                kill_thread(c)
            ));
        }
    }
    assert_none("the checkpoints after the kills", &errors);
}

// ---------------------------------------------------------------------------------------------
// 5. ferry migrate: SQLite -> PostgreSQL, byte for byte
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_byte_for_byte() {
    let Some(db) = TestDb::create("ferry_cp_mig").await else { return };
    bounded(Duration::from_secs(240), "migrate_byte_for_byte", migrate_scenario(db)).await;
}

/// Every view the migration test compares.
#[derive(Debug, PartialEq)]
struct Served {
    full: Vec<Value>,
    threads: Vec<Value>,
    each_thread: Vec<Value>,
    per_thread: Vec<Vec<Value>>,
}

/// What a server serves: the full list (paged by 7 and by 1,000, which must agree), the thread
/// list, each thread, and each thread's full list (paged by 3); every checkpoint by id equals
/// its list entry.
async fn served(api: &Api) -> Served {
    let full = api.checkpoints("full=true", 7).await;
    assert_eq!(api.checkpoints("full=true", 1_000).await, full, "the full list paged by 7 and by 1,000");
    for e in &full {
        let (thread, ns, id) = (
            e["thread"].as_str().unwrap_or("?"),
            e["ns"].as_str().unwrap_or("?"),
            e["checkpoint_id"].as_str().unwrap_or("?"),
        );
        assert_eq!(&api.tuple(thread, ns, id).await, e, "GET {thread}/{ns:?}/{id} equals its list entry");
    }
    let threads = api.threads("", 2).await;
    let mut each_thread = Vec::new();
    let mut per_thread = Vec::new();
    for id in thread_ids(&threads) {
        each_thread.push(api.thread(&id).await);
        per_thread.push(api.checkpoints(&format!("thread={}&full=true", pct(&id)), 3).await);
    }
    Served { full, threads, each_thread, per_thread }
}

async fn migrate_scenario(db: TestDb) {
    let sqlite = Backend::sqlite("");
    let server = sqlite.start().await;
    let api = Api::new(&server.url);
    api.wait_ready().await;
    let n = migrate_threads();
    // (thread, ns, channel, version) -> the bytes first sent.
    let mut sent: BTreeMap<(String, String, String, String), Vec<u8>> = BTreeMap::new();
    let every: Vec<u8> = (0..=255u8).collect();
    for t in 0..n {
        let thread = format!("mg-{t}");
        for ns in [String::new(), format!("sub:{t}")] {
            let half: u64 = if ns.is_empty() { 0 } else { 5 };
            let mut parent: Option<String> = None;
            for k in 0..6usize {
                let id = format!("{k:04}");
                let seed = (t as u64 * 100 + k as u64) * 10 + half;
                let big = bytes_of(seed, 200 + 97 * k);
                let mut blobs = vec![blob("big", &id, "msgpack", &big)];
                sent.insert((thread.clone(), ns.clone(), "big".into(), id.clone()), big);
                if k == 0 {
                    blobs.push(blob("const", "1", "bytes", &every));
                    blobs.push(blob("none", "1", "empty", &[]));
                    sent.insert((thread.clone(), ns.clone(), "const".into(), "1".into()), every.clone());
                    sent.insert((thread.clone(), ns.clone(), "none".into(), "1".into()), Vec::new());
                }
                let meta = json!({"source": "loop", "step": k, "run_id": format!("run-{t}"), "parents": {},
                    "nested": {"list": [1, "two", null, true], "text": "é \u{2603}"}});
                let mut body = cp_body(
                    parent.as_deref(),
                    &bytes_of(seed + 1, 50 + k),
                    meta,
                    json!({"big": id.clone(), "const": "1", "none": "1"}),
                    blobs,
                );
                if k % 2 == 1 {
                    body["delta_channels"] = json!(["big"]);
                }
                ok(&api.put_cp(&thread, &ns, &id, &body).await, 201, &format!("{thread}/{ns:?}/{id}"));
                let w = json!({"task_id": format!("task-{k}"), "task_path": "~p", "writes": [
                    write("big", "msgpack", &bytes_of(seed + 2, 30)),
                    write("__interrupt__", "msgpack", &bytes_of(seed + 3, 5)),
                ]});
                ok(&api.put_writes(&thread, &ns, &id, &w).await, 201, &format!("writes of {thread}/{id}"));
                if k % 3 == 0 {
                    let s =
                        json!({"task_id": "task-s", "writes": [write("__error__", "json", b"{\"e\":1}")]});
                    ok(&api.put_writes(&thread, &ns, &id, &s).await, 201, &format!("special writes of {id}"));
                }
                parent = Some(id);
            }
        }
    }
    let a = api
        .patch(
            "/v1/threads/mg-0",
            &json!({"metadata": {"team": "a"}, "keep_last": 100, "idle_ttl_ms": 86_400_000}),
        )
        .await;
    ok(&a, 200, "PATCH mg-0");
    let w = json!({"task_id": "t", "writes": [write("x", "msgpack", &every)]});
    ok(&api.put_writes("mg-w", "", "0001", &w).await, 201, "a thread holding only writes");

    let before = served(&api).await;
    assert_eq!(before.full.len(), n * 2 * 6, "every checkpoint listed");
    assert_eq!(before.threads.len(), n + 1, "every thread listed");
    let mut errors = Vec::new();
    for e in &before.full {
        let thread = e["thread"].as_str().unwrap_or("?").to_string();
        let ns = e["ns"].as_str().unwrap_or("?").to_string();
        for b in e["blobs"].as_array().cloned().unwrap_or_default() {
            let key = (
                thread.clone(),
                ns.clone(),
                b["channel"].as_str().unwrap_or("?").to_string(),
                b["version"].as_str().unwrap_or("?").to_string(),
            );
            let got = unb64(b["data"].as_str().unwrap_or(""));
            if sent.get(&key) != Some(&got) {
                errors.push(format!("blob {key:?} of {} reads back other bytes", e["checkpoint_id"]));
            }
        }
        if e["blobs"].as_array().map(Vec::len) != Some(3) {
            errors.push(format!("{thread}/{ns:?}/{}: not 3 blobs: {}", e["checkpoint_id"], e["blobs"]));
        }
    }
    assert_none("SQLite serves what was sent", &errors);
    let dir = stop_clean(server).await;
    sqlite.check_store(dir.path()).await;

    let from = dir.path().join("ferry.db").display().to_string();
    let to = db.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["migrate", "--from", from.as_str(), "--to", to.as_str()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "ferry migrate: {text}");

    let pg = Backend::on(db, 8, "");
    let server = pg.start().await;
    let api = Api::new(&server.url);
    api.wait_ready().await;
    let after = served(&api).await;
    assert_eq!(after.full.len(), before.full.len(), "as many checkpoints on PostgreSQL");
    for (a, b) in after.full.iter().zip(&before.full) {
        assert_eq!(a, b, "{} {:?} {} on PostgreSQL", b["thread"], b["ns"], b["checkpoint_id"]);
    }
    assert_eq!(after, before, "PostgreSQL serves what SQLite served");

    // The migrated blobs are found by new puts.
    let b = cp_body(
        Some("0005"),
        b"after",
        json!({"step": 6}),
        json!({"big": "0005", "const": "1", "none": "1"}),
        vec![],
    );
    let a = api.put_cp("mg-0", "", "0006", &b).await;
    assert_fields(ok(&a, 201, "a put on PostgreSQL"), &json!({"blobs_written": 0}), "a put on PostgreSQL");
    let big5 = sent[&("mg-0".to_string(), String::new(), "big".to_string(), "0005".to_string())].clone();
    let want = json!([
        blob("big", "0005", "msgpack", &big5),
        blob("const", "1", "bytes", &every),
        blob("none", "1", "empty", &[]),
    ]);
    assert_eq!(api.tuple("mg-0", "", "0006").await["blobs"], want, "the new checkpoint's blobs, migrated");
    pg.stop_and_check(server).await;
}

// ---------------------------------------------------------------------------------------------
// 6. ferry checkpoints import --langgraph-sqlite
// ---------------------------------------------------------------------------------------------

/// LangGraph's `SqliteSaver` schema, exactly.
const SAVER_SCHEMA: &str = "
CREATE TABLE checkpoints (thread_id TEXT NOT NULL, checkpoint_ns TEXT NOT NULL DEFAULT '', checkpoint_id TEXT NOT NULL, parent_checkpoint_id TEXT, type TEXT, checkpoint BLOB, metadata BLOB, PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id));
CREATE TABLE writes (thread_id TEXT NOT NULL, checkpoint_ns TEXT NOT NULL DEFAULT '', checkpoint_id TEXT NOT NULL, task_id TEXT NOT NULL, idx INTEGER NOT NULL, channel TEXT NOT NULL, type TEXT, value BLOB, task_path TEXT NOT NULL DEFAULT '', PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx));
";

/// A row of the saver's `checkpoints`.
struct LgCheckpoint {
    thread: String,
    ns: String,
    id: String,
    parent: Option<String>,
    type_: String,
    data: Vec<u8>,
    metadata: Value,
}

/// A row of the saver's `writes`.
struct LgWrite {
    thread: String,
    ns: String,
    id: String,
    task_id: String,
    idx: i64,
    channel: String,
    type_: String,
    value: Vec<u8>,
    task_path: String,
}

/// A checkpoint id as LangGraph makes them (uuid6, sortable).
fn lg_id(n: u32) -> String {
    format!("1ef4f797-8335-6428-8001-{n:012x}")
}

/// The saver file's rows: two threads, two namespaces, parents, writes with idx -3 and -1.
fn saver_rows() -> (Vec<LgCheckpoint>, Vec<LgWrite>) {
    let every: Vec<u8> = (0..=255u8).collect();
    let cp = |thread: &str,
              ns: &str,
              id: u32,
              parent: Option<u32>,
              type_: &str,
              data: Vec<u8>,
              metadata: Value| {
        LgCheckpoint {
            thread: thread.into(),
            ns: ns.into(),
            id: lg_id(id),
            parent: parent.map(lg_id),
            type_: type_.into(),
            data,
            metadata,
        }
    };
    let cps = vec![
        cp(
            "lg-a",
            "",
            1,
            None,
            "msgpack",
            every.clone(),
            json!({"source": "input", "step": -1,
            "writes": {"__start__": {"messages": ["hi"]}}, "parents": {}, "thread_id": "lg-a"}),
        ),
        cp(
            "lg-a",
            "",
            2,
            Some(1),
            "msgpack",
            bytes_of(502, 500),
            json!({"source": "loop", "step": 0,
            "writes": null, "parents": {}, "note": "é \u{2603}"}),
        ),
        cp(
            "lg-a",
            "",
            3,
            Some(2),
            "msgpack",
            bytes_of(503, 1_200),
            json!({"source": "loop", "step": 1,
            "writes": {"agent": {"messages": [1, 2]}}, "parents": {}}),
        ),
        cp(
            "lg-a",
            "tools:7",
            0x101,
            None,
            "json",
            b"{\"v\":1}".to_vec(),
            json!({"source": "loop", "step": 0,
            "parents": {"": lg_id(2)}, "langgraph_node": "tools"}),
        ),
        cp("lg-b", "", 0x201, None, "msgpack", bytes_of(504, 64), json!({"source": "input", "step": -1})),
        cp("lg-b", "", 0x202, Some(0x201), "msgpack", Vec::new(), json!({"source": "loop", "step": 0})),
    ];
    let w = |thread: &str,
             ns: &str,
             id: u32,
             task_id: &str,
             idx: i64,
             channel: &str,
             type_: &str,
             value: Vec<u8>,
             path: &str| {
        LgWrite {
            thread: thread.into(),
            ns: ns.into(),
            id: lg_id(id),
            task_id: task_id.into(),
            idx,
            channel: channel.into(),
            type_: type_.into(),
            value,
            task_path: path.into(),
        }
    };
    let writes = vec![
        w("lg-a", "", 2, "t-agent", 0, "messages", "msgpack", bytes_of(601, 80), "~__pregel_pull, agent"),
        w(
            "lg-a",
            "",
            2,
            "t-agent",
            1,
            "branch:to:tools",
            "msgpack",
            bytes_of(602, 3),
            "~__pregel_pull, agent",
        ),
        w(
            "lg-a",
            "",
            2,
            "t-human",
            -3,
            "__interrupt__",
            "msgpack",
            bytes_of(603, 40),
            "~__pregel_pull, human",
        ),
        w("lg-a", "", 3, "t-tool", 0, "messages", "msgpack", every.clone(), "~__pregel_push, 0, False"),
        w("lg-a", "tools:7", 0x101, "t-sub", 0, "x", "json", b"1".to_vec(), ""),
        w("lg-b", "", 0x201, "t-b", -1, "__error__", "msgpack", bytes_of(604, 12), "~__pregel_pull, node"),
        w("lg-b", "", 0x201, "t-b", 0, "value", "msgpack", bytes_of(605, 7), "~__pregel_pull, node"),
    ];
    (cps, writes)
}

/// Writes the rows into a new `SqliteSaver` file (metadata as JSON bytes in a BLOB).
fn write_saver(path: &std::path::Path, cps: &[LgCheckpoint], writes: &[LgWrite]) {
    let conn = rusqlite::Connection::open(path).expect("create the SqliteSaver file");
    conn.execute_batch(SAVER_SCHEMA).expect("the SqliteSaver schema");
    for c in cps {
        let metadata = serde_json::to_vec(&c.metadata).unwrap();
        conn.execute(
            "INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            rusqlite::params![c.thread, c.ns, c.id, c.parent, c.type_, c.data, metadata],
        )
        .expect("insert a checkpoint");
    }
    for w in writes {
        conn.execute(
            "INSERT INTO writes (thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, value, task_path)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            rusqlite::params![w.thread, w.ns, w.id, w.task_id, w.idx, w.channel, w.type_, w.value, w.task_path],
        )
        .expect("insert a write");
    }
    drop(conn);
}

/// `head` then `tail`.
fn args_of<'a>(head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
    head.iter().chain(tail).copied().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_langgraph_sqlite() {
    let be = Backend::sqlite("");
    bounded(Duration::from_secs(120), "import_langgraph_sqlite", import_langgraph(&be)).await;
}

async fn import_langgraph(be: &Backend) {
    let server = be.start().await;
    let api = Api::new(&server.url);
    api.wait_ready().await;
    let token = mint(&api, json!({"name": "importer", "scopes": ["admin"]})).await;
    let root = api.as_token(&token);
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("checkpoints.sqlite");
    let (cps, writes) = saver_rows();
    write_saver(&file, &cps, &writes);
    let file = file.display().to_string();
    let conn = ["--url", server.url.as_str(), "--token", token.as_str()];

    let import = args_of(&["checkpoints", "import", "--langgraph-sqlite", file.as_str()], &conn);
    let (code, out, err) = cli(&import).await;
    assert_eq!(code, 0, "the first import: {out}{err}");
    let (n, m) = (cps.len(), writes.len());
    let first =
        format!("checkpoints: {n} written, 0 already present; writes: {m} written, 0 already present");
    assert!(out.contains(&first), "the first import prints {first:?}: {out}{err}");
    let (code, out, err) = cli(&import).await;
    assert_eq!(code, 0, "the second import: {out}{err}");
    let second =
        format!("checkpoints: 0 written, {n} already present; writes: 0 written, {m} already present");
    assert!(out.contains(&second), "the second import prints {second:?}: {out}{err}");

    // Each checkpoint as the file holds it.
    for c in &cps {
        let t = root.tuple(&c.thread, &c.ns, &c.id).await;
        let what = format!("{}/{:?}/{}", c.thread, c.ns, c.id);
        assert_eq!(t["checkpoint"]["type"], c.type_.as_str(), "{what}: {t}");
        assert_eq!(unb64(t["checkpoint"]["data"].as_str().unwrap_or("?")), c.data, "{what}: the bytes");
        assert_eq!(t["metadata"], c.metadata, "{what}: the metadata");
        assert_eq!(t["parent_checkpoint_id"], json!(c.parent), "{what}: the parent");
        assert_eq!(
            (&t["channel_versions"], &t["blobs"]),
            (&json!({}), &json!([])),
            "{what}: values stay inline"
        );
        let mut want: Vec<&LgWrite> =
            writes.iter().filter(|w| w.thread == c.thread && w.ns == c.ns && w.id == c.id).collect();
        want.sort_by(|a, b| (&a.task_path, &a.task_id, a.idx).cmp(&(&b.task_path, &b.task_id, b.idx)));
        let want: Vec<Value> = want
            .iter()
            .map(|w| pending(&w.task_id, &w.task_path, &w.channel, &w.type_, &w.value, w.idx))
            .collect();
        assert_eq!(t["pending_writes"], Value::Array(want), "{what}: the writes at the file's indexes");
    }
    let ids: Vec<String> = cps.iter().filter(|c| c.thread == "lg-a").map(|c| c.id.clone()).collect();
    assert_eq!(root.thread("lg-a").await["checkpoints"], ids.len(), "lg-a's checkpoints");

    // The CLI's other commands, as JSON.
    let v = cli_json(&args_of(&["checkpoints", "threads", "--json"], &conn)).await;
    let listed = v["threads"].as_array().map(|l| thread_ids(l)).unwrap_or_default();
    assert_eq!(listed, ["lg-a", "lg-b"], "threads: {v}");
    let v = cli_json(&args_of(&["checkpoints", "show", "lg-a", "--json"], &conn)).await;
    assert_fields(&v, &json!({"thread": "lg-a", "checkpoints": 4, "writes": 5}), "show lg-a");
    let v = cli_json(&args_of(&["checkpoints", "show", "lg-a", "latest", "--json"], &conn)).await;
    assert_fields(&v, &json!({"thread": "lg-a", "ns": "", "checkpoint_id": lg_id(3)}), "show lg-a latest");
    let v = cli_json(&args_of(&["checkpoints", "history", "lg-a", "--json"], &conn)).await;
    assert_eq!(v["checkpoints"].as_array().map(Vec::len), Some(4), "history lg-a: {v}");
    let v = cli_json(&args_of(&["checkpoints", "rm", "lg-b", "--json"], &conn)).await;
    assert_eq!(v, json!({"thread": "lg-b", "deleted": 2}), "rm lg-b");
    let v = cli_json(&args_of(&["checkpoints", "prune", "lg-a", "--json"], &conn)).await;
    assert_eq!(v, json!({"deleted": 2}), "prune lg-a keeps each namespace's newest");
    refused(&root.get_thread("lg-b").await, 404, "not_found", "lg-b removed");
    assert_eq!(
        keys_of(&root.checkpoints("thread=lg-a", 100).await),
        keys(&[(lg_id(0x101).as_str(), "tools:7"), (lg_id(3).as_str(), "")]),
        "lg-a after the prune"
    );
    be.stop_and_check(server).await;
}
