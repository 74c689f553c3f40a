//! Work items (issue #16) end to end: the real `ferry serve` over real HTTP, with raw JSON so
//! that the wire contract itself is what is checked (`/work/items-contract.md`, the issue's
//! "Tests" section). Most scenarios run on SQLite, on PostgreSQL, and where the issue asks for
//! it on three PostgreSQL nodes sharing one database (writers spread over the nodes).
//!
//! - `basics_*`: create (201, `ETag: "1"`), repeat (200 `duplicate`), same id with another
//!   body (409 `conflict`), get, list with filters and cursor paging, history newest first with
//!   `paths` and `patch`, merge patches of `context`, `artifacts_add`/`artifacts_remove`, and
//!   `changed: false` for writes that change nothing.
//! - `conflict_bodies_*`, `require_precondition_sqlite`: 409 `version_conflict`, 412
//!   `precondition_failed` (their `details`, `current` equal to a following GET, a table of
//!   `conflicting_paths` cases), 422 for disagreeing preconditions, 428 when required.
//! - `transition_table_*`: every (from, to) pair of the six statuses, merge, strict and strict
//!   with `reopen`, against the contract's table written out here independently.
//! - `races_*`: `done` against `cancelled` from `in_progress` (1,000 trials), 10 agents
//!   claiming one item.
//! - `atomic_batch_*`: 1,000 ops with one failing compare write nothing (versions, history,
//!   events); a successful batch answers one item per op.
//! - `no_lost_update_*`: N writers x M read-modify-write increments of `context.n` (strict,
//!   then merge), merge writers on distinct keys (0 conflicts), 100 agents adding artifacts to
//!   one item (0 conflicts, all kept).
//! - `overlapping_batches_postgres_3_nodes`: batches over the same items in opposite orders on
//!   three nodes all finish (no deadlock).
//! - `long_poll_*`: `?wait_version_gt=N&wait_ms=` wakes on a commit (through another node on
//!   PostgreSQL), or answers the current item when the wait ends.
//! - `sqlite_conflicting_item_writes_do_not_fail_job_writes`: refused item writes in the
//!   SQLite writer's group commits next to job writes: every job write commits.
//! - `sigkill_loop_keeps_acknowledged_item_writes` (SQLite) and
//!   `postgres_restart_keeps_acknowledged_item_writes` (a private cluster stopped and started
//!   under load): every acknowledged write survives with its version, history is contiguous.
//! - `limits_*`: every item limit one past its edge (413 or 422 naming the field), and
//!   `limits.max_item_history` (kept entries; a merge write older than them is judged strict).
//! - `events_*`: one event per committed change, none for `changed: false`.
//!
//! Sizes (CI runs on 2 cores; the full sizes are a local soak, set through these):
//! - `FERRY_ITEMS_WRITERS` (default 64) and `FERRY_ITEMS_INCREMENTS` (default 5 on SQLite, 2
//!   on PostgreSQL, where each refused attempt is a transaction waiting on the row lock): the no
//!   lost update writers. The issue says 64 x 1,000; under full contention that is millions of
//!   requests (every commit makes the other writers' versions stale), far too slow for CI.
//! - `FERRY_ITEMS_AGENTS` (default 100) and `FERRY_ITEMS_ARTIFACTS` (default 20): artifacts
//!   per agent on one item (the 100 x 100 rewrites an ever larger row 10,000 times).
//! - `FERRY_ITEMS_RACE_TRIALS` (default 1,000): done-against-cancelled trials.
//! - `FERRY_ITEMS_KILL_CYCLES` (default 5; the issue says 20): SIGKILLs of the fault test, under
//!   `FERRY_ITEMS_WRITERS` writers.
//!
//! PostgreSQL tests use `FERRY_TEST_PG_URL` (see `common::pg`) and are skipped with a printed
//! reason without it, unless `FERRY_REQUIRE_PG=1`. Every test body runs under a deadline.

use crate::common::Server;
use crate::common::pg::TestDb;
use crate::common::private_pg::PrivatePg;
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// Fails the test if `f` takes longer than `limit` (the deadlock guard).
async fn bounded<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not finished within {limit:?} (deadlock guard)"))
}

/// Polls `check` every 20 ms until it is true; fails with `what` after `limit`.
async fn eventually<Fut: Future<Output = bool>>(limit: Duration, what: &str, mut check: impl FnMut() -> Fut) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let panics: Vec<&String> = log.iter().filter(|l| l.contains("panicked")).collect();
    assert!(panics.is_empty(), "the server panicked: {panics:#?}");
}

/// Starts `ferry serve` on `dir` (with `toml` as its `ferry.toml`), off the async threads.
async fn start_in(dir: tempfile::TempDir, toml: Option<&str>, database: Option<&str>) -> Server {
    if let Some(t) = toml {
        std::fs::write(dir.path().join("ferry.toml"), t).unwrap();
    }
    let database = database.map(str::to_string);
    tokio::task::spawn_blocking(move || match &database {
        Some(url) => Server::start_with(&["--database", url.as_str()], dir),
        None => Server::start_with(&[], dir),
    })
    .await
    .unwrap()
}

/// One or more nodes on one database (SQLite: one node). Nodes stop before the database is
/// dropped (fields drop in order).
struct Cluster {
    nodes: Vec<Server>,
    _db: Option<TestDb>,
}

impl Cluster {
    async fn sqlite(toml: Option<&str>) -> Cluster {
        Cluster { nodes: vec![start_in(tempfile::tempdir().unwrap(), toml, None).await], _db: None }
    }

    /// `nodes` servers on a fresh PostgreSQL database; `None` (skipped) without PostgreSQL.
    /// Several nodes get small pools, so parallel tests stay under the server's connections.
    async fn postgres(prefix: &str, nodes: usize, toml: Option<&str>) -> Option<Cluster> {
        let db = TestDb::create(prefix).await?;
        let pool = if nodes > 1 { "pg_pool_size = 6\n" } else { "" };
        let toml = format!("{pool}{}", toml.unwrap_or(""));
        let mut servers = Vec::new();
        for _ in 0..nodes {
            servers.push(start_in(tempfile::tempdir().unwrap(), Some(&toml), Some(&db.url)).await);
        }
        Some(Cluster { nodes: servers, _db: Some(db) })
    }

    fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.url.clone()).collect()
    }

    fn assert_no_panic(&self) {
        self.nodes.iter().for_each(assert_no_panic);
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// One answer: status, `ETag`, whether `Retry-After` was sent, and the JSON body (`Null` when
/// empty or not JSON).
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    etag: Option<String>,
    retry_after: bool,
    body: Value,
}

impl Answer {
    /// The error code of an error body, or "".
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// The error's `details`.
    fn details(&self) -> &Value {
        &self.body["error"]["details"]
    }

    /// The item of a one-item answer.
    fn item(&self) -> &Value {
        &self.body["item"]
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

/// Asserts a success with `status` and returns the answer's item.
#[track_caller]
fn ok<'a>(a: &'a Answer, status: u16, what: &str) -> &'a Value {
    assert_eq!(a.status, status, "{what}: expected {status}, got {}", a.brief());
    a.item()
}

/// Asserts an error answer (`status`, `code`, the error shape) and returns its `details`.
#[track_caller]
fn refused<'a>(a: &'a Answer, status: u16, code: &str, what: &str) -> &'a Value {
    assert_eq!((a.status, a.code()), (status, code), "{what}: expected {status} {code}, got {}", a.brief());
    let m = a.body["error"]["message"].as_str();
    assert!(m.is_some_and(|m| !m.is_empty()), "{what}: an error without a message: {}", a.brief());
    a.details()
}

/// Asserts an error naming `field`, with `status` and `code`.
#[track_caller]
fn refused_field(a: &Answer, status: u16, code: &str, field: &str, what: &str) {
    refused(a, status, code, what);
    assert_eq!(a.body["error"]["field"].as_str(), Some(field), "{what}: the field named: {}", a.brief());
}

/// The API of one node.
#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(base: &str) -> Api {
        Api::with(client(), base)
    }

    fn with(http: reqwest::Client, base: &str) -> Api {
        Api { http, base: base.trim_end_matches('/').to_string() }
    }

    /// One per node, sharing a connection pool.
    fn all(urls: &[String]) -> Vec<Api> {
        let http = client();
        urls.iter().map(|u| Api::with(http.clone(), u)).collect()
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn try_send(&self, req: reqwest::RequestBuilder) -> Result<Answer, String> {
        let r = req.send().await.map_err(|e| format!("transport: {e}"))?;
        let status = r.status().as_u16();
        let header = |n: &str| r.headers().get(n).and_then(|v| v.to_str().ok()).map(str::to_string);
        let (etag, retry_after) = (header("etag"), header("retry-after").is_some());
        let text = r.text().await.map_err(|e| format!("transport (body): {e}"))?;
        Ok(Answer { status, etag, retry_after, body: serde_json::from_str(&text).unwrap_or(Value::Null) })
    }

    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Answer {
        self.try_send(req).await.unwrap_or_else(|e| panic!("{what} at {}: {e}", self.base))
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(&format!("GET {path}"), self.http.get(self.url(path))).await
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(&format!("POST {path}"), self.http.post(self.url(path)).json(body)).await
    }

    async fn create(&self, body: Value) -> Answer {
        self.post("/v1/items", &body).await
    }

    /// Creates an item and returns it (201 asserted).
    async fn created(&self, body: Value) -> Value {
        let a = self.create(body.clone()).await;
        ok(&a, 201, &format!("create {body}")).clone()
    }

    fn patch_req(&self, id: &str, body: &Value) -> reqwest::RequestBuilder {
        self.http.patch(self.url(&format!("/v1/items/{id}"))).json(body)
    }

    async fn patch(&self, id: &str, body: Value) -> Answer {
        self.send(&format!("PATCH {id} {body}"), self.patch_req(id, &body)).await
    }

    async fn patch_if(&self, id: &str, if_match: &str, body: Value) -> Answer {
        let req = self.patch_req(id, &body).header("if-match", if_match);
        self.send(&format!("PATCH {id} If-Match {if_match} {body}"), req).await
    }

    /// Patches and returns the item (200 and `changed: true` asserted).
    async fn patched(&self, id: &str, body: Value) -> Value {
        let a = self.patch(id, body.clone()).await;
        ok(&a, 200, &format!("patch {id} {body}"));
        assert_eq!(a.body["changed"], true, "patch {id} {body} changed the item: {}", a.brief());
        a.item().clone()
    }

    /// The item (200 asserted).
    async fn item(&self, id: &str) -> Value {
        let a = self.get(&format!("/v1/items/{id}")).await;
        ok(&a, 200, &format!("get {id}")).clone()
    }

    async fn batch(&self, ops: Vec<Value>) -> Answer {
        self.post("/v1/items/batch", &json!({"ops": ops, "atomic": true})).await
    }

    /// Every kept history entry of `id`, newest first, read page by page (`limit` a page).
    async fn history_paged(&self, id: &str, limit: usize) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let q = match &cursor {
                Some(c) => format!("/v1/items/{id}/history?limit={limit}&cursor={}", encode(c)),
                None => format!("/v1/items/{id}/history?limit={limit}"),
            };
            let a = self.get(&q).await;
            assert_eq!(a.status, 200, "history of {id}: {}", a.brief());
            let page =
                a.body["history"].as_array().unwrap_or_else(|| panic!("no history array: {}", a.brief()));
            assert!(page.len() <= limit, "a history page longer than its limit: {}", a.brief());
            out.extend(page.iter().cloned());
            match a.body["next_cursor"].as_str() {
                Some(c) => {
                    assert!(!page.is_empty(), "an empty history page with a next cursor: {}", a.brief());
                    cursor = Some(c.to_string());
                }
                None => {
                    assert!(
                        a.body["next_cursor"].is_null(),
                        "next_cursor is a string or null: {}",
                        a.brief()
                    );
                    return out;
                }
            }
        }
    }

    async fn history(&self, id: &str) -> Vec<Value> {
        self.history_paged(id, 1000).await
    }

    /// Every item of `GET /v1/items?<query>`, page by page (`limit` a page).
    async fn list(&self, query: &str, limit: usize) -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        let mut cursor: Option<String> = None;
        let sep = if query.is_empty() { "" } else { "&" };
        loop {
            let q = match &cursor {
                Some(c) => format!("/v1/items?{query}{sep}limit={limit}&cursor={}", encode(c)),
                None => format!("/v1/items?{query}{sep}limit={limit}"),
            };
            let a = self.get(&q).await;
            assert_eq!(a.status, 200, "{q}: {}", a.brief());
            let page = a.body["items"].as_array().unwrap_or_else(|| panic!("no items array: {}", a.brief()));
            assert!(page.len() <= limit, "a page longer than its limit: {q}");
            out.extend(page.iter().cloned());
            match a.body["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return out,
            }
        }
    }

    /// The events of the log after `since`, up to and including cursor `to`.
    async fn events_between(&self, since: u64, to: u64) -> Vec<Value> {
        let mut out = Vec::new();
        let mut at = since;
        while at < to {
            let a = self.get(&format!("/v1/events?since={at}&limit=1000")).await;
            assert_eq!(a.status, 200, "events since {at}: {}", a.brief());
            let events = a.body["events"].as_array().unwrap();
            assert!(!events.is_empty(), "events since {at} end before cursor {to}: {}", a.brief());
            for e in events {
                let c = e["cursor"].as_u64().unwrap();
                if c <= to {
                    out.push(e.clone());
                }
                at = at.max(c);
            }
        }
        out
    }

    /// Creates the marker item `id` and waits until its `item.created` event is in the log
    /// (PostgreSQL numbers events after commit); returns its cursor. Events of every commit
    /// answered before the marker was created come before it.
    async fn marker(&self, id: &str, since: u64) -> u64 {
        self.created(json!({"id": id, "title": "marker"})).await;
        let mut at = since;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let a =
                self.get(&format!("/v1/events?since={at}&limit=1000&type=item.created&wait_ms=1000")).await;
            assert_eq!(a.status, 200, "events: {}", a.brief());
            for e in a.body["events"].as_array().unwrap() {
                if e["subject"] == json!({"kind": "item", "id": id}) {
                    return e["cursor"].as_u64().unwrap();
                }
            }
            at = a.body["next_cursor"].as_u64().unwrap_or(at);
            assert!(Instant::now() < deadline, "the marker {id}'s item.created event never showed");
        }
    }
}

/// Percent-encodes a query value (cursors are opaque).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The item events about `id` among `events`.
fn about<'a>(events: &'a [Value], id: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["subject"] == json!({"kind": "item", "id": id})).collect()
}

fn sorted(v: &Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

fn strs(list: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = list.iter().map(|s| s.to_string()).collect();
    out.sort();
    out
}

/// A test on SQLite and one on PostgreSQL (a database of its own) running `scenario(&urls)`
/// under `secs` seconds, each server started with `toml` as its `ferry.toml`.
macro_rules! both_backends {
    ($scenario:ident, $sqlite:ident, $postgres:ident, $secs:expr, $toml:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            let c = Cluster::sqlite($toml).await;
            bounded(Duration::from_secs($secs), stringify!($sqlite), $scenario(&c.urls())).await;
            c.assert_no_panic();
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            let Some(c) = Cluster::postgres(concat!("ferry_", stringify!($scenario)), 1, $toml).await else {
                return;
            };
            bounded(Duration::from_secs($secs), stringify!($postgres), $scenario(&c.urls())).await;
            c.assert_no_panic();
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Basics: create, get, list, history, merge patches, artifacts, no-op writes
// ---------------------------------------------------------------------------------------------

both_backends!(basics, basics_sqlite, basics_postgres, 60, None);

async fn basics(urls: &[String]) {
    let api = Api::new(&urls[0]);
    let body = json!({
        "id": "basic-1",
        "title": "Write the report",
        "description": "first draft",
        "context": {"a": {"b": 1}, "keep": true},
        "artifacts": [{"uri": "s3://bucket/x", "meta": {"k": 1}}],
        "agent": "alice",
    });
    let a = api.create(body.clone()).await;
    let item = ok(&a, 201, "create").clone();
    assert_eq!(a.etag.as_deref(), Some("\"1\""), "ETag of a created item: {}", a.brief());
    assert_ne!(a.body["duplicate"], true, "a first create is not a duplicate: {}", a.brief());
    for (field, want) in [
        ("id", json!("basic-1")),
        ("title", json!("Write the report")),
        ("description", json!("first draft")),
        ("status", json!("todo")),
        ("assignee", Value::Null),
        ("artifacts", json!([{"uri": "s3://bucket/x", "meta": {"k": 1}}])),
        ("context", json!({"a": {"b": 1}, "keep": true})),
        ("version", json!(1)),
    ] {
        assert_eq!(item[field], want, "created item's {field}: {item}");
    }
    assert!(item["created_at"].is_string() && item["updated_at"].is_string(), "timestamps: {item}");

    // An exact repeat answers the first result; another body under the same id is a conflict.
    let again = api.create(body.clone()).await;
    assert_eq!(ok(&again, 200, "repeated create"), &item, "a repeat answers the stored item");
    assert_eq!(again.body["duplicate"], true, "a repeat says duplicate: {}", again.brief());
    let mut other = body.clone();
    other["title"] = json!("Another title");
    refused(&api.create(other).await, 409, "conflict", "same id, another body");
    assert_eq!(api.item("basic-1").await, item, "the conflicting create changed nothing");

    // Server ids are UUIDv7; defaults.
    let s = api.created(json!({"title": "no id given"})).await;
    let sid = s["id"].as_str().unwrap().to_string();
    assert_eq!(uuid::Uuid::parse_str(&sid).map(|u| u.get_version_num()).ok(), Some(7), "server id {sid}");
    assert_eq!(
        (&s["description"], &s["status"], &s["assignee"], &s["artifacts"], &s["context"]),
        (&json!(""), &json!("todo"), &Value::Null, &json!([]), &json!({})),
        "defaults: {s}"
    );
    // Created in_progress: needs its agent, who becomes the assignee; terminal starts are refused.
    refused_field(
        &api.create(json!({"title": "x", "status": "in_progress"})).await,
        422,
        "validation_failed",
        "agent",
        "created in_progress without agent",
    );
    let held =
        api.created(json!({"id": "held", "title": "x", "status": "in_progress", "agent": "carol"})).await;
    assert_eq!(held["assignee"], "carol", "created in_progress: assigned to its agent: {held}");
    let d = api.create(json!({"title": "x", "status": "done"})).await;
    refused_field(&d, 422, "validation_failed", "status", "created done");
    let blocked = api.created(json!({"id": "blocked", "title": "x", "status": "blocked"})).await;
    assert_eq!(blocked["status"], "blocked");

    // Get.
    let g = api.get("/v1/items/basic-1").await;
    assert_eq!(ok(&g, 200, "get"), &item);
    assert_eq!(g.etag.as_deref(), Some("\"1\""), "ETag of a read item");
    refused(&api.get("/v1/items/no-such-item").await, 404, "not_found", "get of an unknown item");
    refused(
        &api.patch("no-such-item", json!({"title": "t"})).await,
        404,
        "not_found",
        "patch of an unknown item",
    );

    // PATCH: RFC 7396 merge of context (null deletes, objects merge, arrays are replaced).
    let p = api
        .patch("basic-1", json!({"agent": "bob", "context": {"a": {"c": 2}, "keep": null, "new": [1, 2]}}))
        .await;
    let v2 = ok(&p, 200, "merge patch").clone();
    assert_eq!(p.body["changed"], true, "{}", p.brief());
    assert_eq!(p.etag.as_deref(), Some("\"2\""), "ETag after a write");
    assert_eq!(v2["context"], json!({"a": {"b": 1, "c": 2}, "new": [1, 2]}), "merged context");
    assert_eq!(v2["version"], 2);
    assert_eq!(v2["created_at"], item["created_at"], "created_at never changes");
    assert_eq!(
        (&v2["title"], &v2["artifacts"]),
        (&item["title"], &item["artifacts"]),
        "untouched fields kept"
    );
    let v3 = api.patched("basic-1", json!({"context": {"new": [3]}})).await;
    assert_eq!(v3["context"]["new"], json!([3]), "arrays are replaced whole");

    // Artifacts: add or replace by uri (in place), remove by uri (absent uris ignored).
    let v4 = api
        .patched(
            "basic-1",
            json!({"artifacts_add": [{"uri": "s3://bucket/y"}, {"uri": "s3://bucket/x", "meta": {"k": 2}}]}),
        )
        .await;
    assert_eq!(
        v4["artifacts"],
        json!([{"uri": "s3://bucket/x", "meta": {"k": 2}}, {"uri": "s3://bucket/y"}]),
        "artifacts added in order, replaced in place"
    );
    let v5 =
        api.patched("basic-1", json!({"artifacts_remove": ["s3://bucket/y", "s3://bucket/absent"]})).await;
    assert_eq!(v5["artifacts"], json!([{"uri": "s3://bucket/x", "meta": {"k": 2}}]));
    assert_eq!(v5["version"], 5);

    // Writes that change nothing: 200 changed false, version and ETag kept.
    for noop in [
        json!({"context": {"a": {"b": 1}}}),
        json!({"context": {"gone": null}}),
        json!({"title": "Write the report"}),
        json!({"artifacts_remove": ["s3://bucket/absent"]}),
        json!({"artifacts_add": [{"uri": "s3://bucket/x", "meta": {"k": 2}}]}),
        json!({"expected_version": 5}),
        json!({"expected_version": 5, "mode": "strict", "status": "todo"}),
        json!({}),
    ] {
        let a = api.patch("basic-1", noop.clone()).await;
        assert_eq!(
            ok(&a, 200, &format!("no-op {noop}")),
            &v5,
            "a no-op write {noop} answers the item as it was"
        );
        assert_eq!(a.body["changed"], false, "no-op {noop}: {}", a.brief());
        assert_eq!(a.etag.as_deref(), Some("\"5\""), "no-op {noop}: ETag kept");
    }
    let v6 =
        api.patched("basic-1", json!({"title": "Final report", "agent": "bob", "reason": "renamed"})).await;
    assert_eq!(v6["version"], 6, "no-op writes used no version");

    // History: newest first, every version once, paths and merge patches.
    let h = api.history("basic-1").await;
    let versions: Vec<i64> = h.iter().map(|e| e["version"].as_i64().unwrap()).collect();
    assert_eq!(versions, [6, 5, 4, 3, 2, 1], "history versions, newest first (no entry for no-op writes)");
    for e in &h {
        assert!(e["at"].is_string(), "history entry without `at`: {e}");
    }
    let first = &h[5];
    assert_eq!((&first["mode"], &first["agent"]), (&json!("create"), &json!("alice")), "{first}");
    for (k, v) in [
        ("title", json!("Write the report")),
        ("description", json!("first draft")),
        ("status", json!("todo")),
        ("context", json!({"a": {"b": 1}, "keep": true})),
        ("artifacts", json!([{"uri": "s3://bucket/x", "meta": {"k": 1}}])),
    ] {
        assert_eq!(first["patch"][k], v, "version 1's patch holds the item's {k}: {first}");
    }
    assert!(sorted(&first["paths"]).contains(&"/title".to_string()), "version 1 paths: {first}");
    let e2 = &h[4];
    assert_eq!((&e2["mode"], &e2["agent"]), (&json!("merge"), &json!("bob")), "{e2}");
    assert_eq!(sorted(&e2["paths"]), strs(&["/context/a/c", "/context/keep", "/context/new"]), "{e2}");
    assert_eq!(e2["patch"], json!({"context": {"a": {"c": 2}, "keep": null, "new": [1, 2]}}), "{e2}");
    assert_eq!(h[3]["patch"], json!({"context": {"new": [3]}}), "{}", h[3]);
    assert_eq!(sorted(&h[2]["paths"]), strs(&["/artifacts"]), "{}", h[2]);
    assert_eq!(h[2]["patch"], json!({"artifacts": v4["artifacts"]}), "arrays are patched whole: {}", h[2]);
    assert_eq!(sorted(&h[0]["paths"]), strs(&["/title"]), "{}", h[0]);
    assert_eq!(h[0]["patch"], json!({"title": "Final report"}), "{}", h[0]);
    assert_eq!(h[0]["reason"], "renamed", "{}", h[0]);
    assert_eq!(api.history_paged("basic-1", 4).await, h, "history read 4 at a time");
    refused(&api.get("/v1/items/no-such-item/history").await, 404, "not_found", "history of an unknown item");

    // History across status moves: their paths and patches.
    let todo = api.patched("held", json!({"status": "todo", "agent": "carol"})).await;
    assert_eq!(todo["assignee"], Value::Null, "a move back to todo clears the assignee: {todo}");
    let hh = api.history("held").await;
    assert_eq!(sorted(&hh[0]["paths"]), strs(&["/assignee", "/status"]), "{}", hh[0]);
    assert_eq!(hh[0]["patch"], json!({"status": "todo", "assignee": null}), "{}", hh[0]);
    let claimed = api.patched("held", json!({"status": "in_progress", "agent": "dave"})).await;
    assert_eq!(claimed["assignee"], "dave", "a claim sets the assignee to the claiming agent");
    let hh = api.history("held").await;
    assert_eq!(sorted(&hh[0]["paths"]), strs(&["/assignee", "/status"]), "{}", hh[0]);
    assert_eq!(hh[0]["patch"], json!({"status": "in_progress", "assignee": "dave"}), "{}", hh[0]);
    assert_eq!(hh.len(), 3, "held: created, to todo, claimed");

    // List: filters, ordered by id, cursor paging.
    for i in 0..10 {
        let id = format!("list-{i:02}");
        if i % 3 == 0 {
            api.created(json!({"id": id, "title": "listed", "status": "in_progress", "agent": "erin"})).await;
        } else {
            api.created(json!({"id": id, "title": "listed"})).await;
        }
    }
    let all = api.list("", 3).await;
    let ids: Vec<String> = all.iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "listed by id, without repeats: {ids:?}");
    let expected: BTreeSet<String> = ["basic-1", "held", "blocked", sid.as_str()]
        .into_iter()
        .map(str::to_string)
        .chain((0..10).map(|i| format!("list-{i:02}")))
        .collect();
    assert_eq!(ids.iter().cloned().collect::<BTreeSet<_>>(), expected, "every item listed once");
    assert_eq!(all.iter().find(|i| i["id"] == "basic-1").unwrap(), &v6, "a listed item is the item");
    assert_eq!(api.list("", 1000).await, all, "one page or pages of 3: the same list");
    let erin: Vec<Value> = api.list("assignee=erin", 2).await;
    let erin_ids: Vec<&str> = erin.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(erin_ids, ["list-00", "list-03", "list-06", "list-09"], "assignee filter");
    let running = api.list("status=in_progress", 2).await;
    let running_ids: Vec<&str> = running.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(running_ids, ["held", "list-00", "list-03", "list-06", "list-09"], "status filter");
    assert!(running.iter().all(|i| i["status"] == "in_progress"), "status filter: {running:?}");
    let todos = api.list("status=todo", 100).await;
    assert!(todos.iter().all(|i| i["status"] == "todo"), "status filter");
    assert_eq!(todos.len(), 2 + 6, "todo items: basic-1, the server-id one, six list items");
    assert_eq!(api.list("status=blocked&assignee=nobody", 10).await, Vec::<Value>::new(), "filters combine");
    assert_eq!(api.list("status=blocked", 10).await.len(), 1);
    assert!(api.list("status=done", 10).await.is_empty());
    let bad = api.get("/v1/items?status=sleeping").await;
    assert!(
        (400..500).contains(&bad.status) && !bad.code().is_empty(),
        "unknown status filter: {}",
        bad.brief()
    );
}

// ---------------------------------------------------------------------------------------------
// Conflict bodies: 409, 412, 422, 428 and a table of conflicting paths
// ---------------------------------------------------------------------------------------------

both_backends!(conflict_bodies, conflict_bodies_sqlite, conflict_bodies_postgres, 60, None);

/// Checks a conflict's `details` and that `current` is what a following GET answers.
async fn check_conflict(
    api: &Api,
    a: &Answer,
    want: (u16, &str),
    id: &str,
    expected: i64,
    paths: &[&str],
    what: &str,
) {
    let d = refused(a, want.0, want.1, what).clone();
    assert_eq!(d["item_id"], id, "{what}: details.item_id: {d}");
    assert_eq!(d["expected_version"], expected, "{what}: details.expected_version: {d}");
    let now = api.item(id).await;
    assert_eq!(d["actual_version"], now["version"], "{what}: details.actual_version: {d}");
    assert_eq!(d["current"], now, "{what}: details.current is the item a following GET answers");
    assert_eq!(sorted(&d["conflicting_paths"]), strs(paths), "{what}: conflicting_paths");
}

async fn conflict_bodies(urls: &[String]) {
    let api = Api::new(&urls[0]);
    let base = json!({"x": 1, "y": 1, "a": {"b": {"c": {"d": 1}}}});
    // (case, first write at version 1, second write also at version 1, paths it conflicts on)
    let deep = json!({"context": {"a": {"b": {"c": {"d": 2}}}}});
    let claim = json!({"status": "in_progress", "agent": "a1"});
    let cases: Vec<(&str, Value, Value, Option<Vec<&str>>)> = vec![
        ("merge: disjoint context keys", json!({"context": {"x": 2}}), json!({"context": {"y": 2}}), None),
        (
            "merge: the same context key",
            json!({"context": {"x": 2}}),
            json!({"context": {"x": 3}}),
            Some(vec!["/context/x"]),
        ),
        (
            "merge: a change below depth 3 counts at depth 3",
            deep.clone(),
            json!({"context": {"a": {"b": {"c": {"e": 1}}}}}),
            Some(vec!["/context/a/b/c"]),
        ),
        ("merge: a sibling at depth 3", deep.clone(), json!({"context": {"a": {"b": {"z": 1}}}}), None),
        (
            "merge: deleting a parent of a changed path",
            deep.clone(),
            json!({"context": {"a": null}}),
            Some(vec!["/context/a/b/c"]),
        ),
        (
            "merge: title against title",
            json!({"title": "one"}),
            json!({"title": "two"}),
            Some(vec!["/title"]),
        ),
        ("merge: title against description", json!({"title": "one"}), json!({"description": "d"}), None),
        (
            "merge: assignee against assignee",
            json!({"assignee": "bob"}),
            json!({"assignee": "carol"}),
            Some(vec!["/assignee"]),
        ),
        ("merge: status never conflicts", claim.clone(), json!({"status": "cancelled"}), None),
        ("merge: context against a status move", claim.clone(), json!({"context": {"x": 5}}), None),
        (
            "merge: artifacts never conflict",
            json!({"artifacts_add": [{"uri": "u1"}]}),
            json!({"artifacts_add": [{"uri": "u2"}], "artifacts_remove": ["u1"]}),
            None,
        ),
        (
            "strict: a change elsewhere",
            json!({"context": {"x": 2}}),
            json!({"mode": "strict", "context": {"y": 2}}),
            Some(vec!["/context/x"]),
        ),
        (
            "strict: every changed path is listed",
            json!({"title": "one", "context": {"a": {"b": {"c": {"d": 2}}}}}),
            json!({"mode": "strict", "description": "d"}),
            Some(vec!["/context/a/b/c", "/title"]),
        ),
        (
            "strict: a status move",
            claim.clone(),
            json!({"mode": "strict", "context": {"x": 5}}),
            Some(vec!["/assignee", "/status"]),
        ),
    ];
    for (i, (case, first, second, conflict)) in cases.into_iter().enumerate() {
        let id = format!("cf-{i:02}");
        api.created(json!({"id": id, "title": "base", "context": base})).await;
        let mut w1 = first.clone();
        w1["expected_version"] = json!(1);
        let after = api.patched(&id, w1).await;
        assert_eq!(after["version"], 2, "{case}");
        let mut w2 = second.clone();
        w2["expected_version"] = json!(1);
        let a = api.patch(&id, w2).await;
        match conflict {
            None => {
                let item = ok(&a, 200, case);
                assert_eq!(
                    (a.body["changed"].clone(), item["version"].clone()),
                    (json!(true), json!(3)),
                    "{case}: {}",
                    a.brief()
                );
                if case.contains("artifacts") {
                    assert_eq!(item["artifacts"], json!([{"uri": "u2"}]), "{case}: both writes applied");
                }
                if case.contains("disjoint") {
                    assert_eq!(
                        (&item["context"]["x"], &item["context"]["y"]),
                        (&json!(2), &json!(2)),
                        "{case}"
                    );
                }
            }
            Some(paths) => {
                check_conflict(&api, &a, (409, "version_conflict"), &id, 1, &paths, case).await;
                assert_eq!(api.item(&id).await, after, "{case}: a refused write changes nothing");
            }
        }
    }

    // If-Match: strict unless the body says merge; a conflict is 412 with the same details.
    let id = "cf-http";
    api.created(json!({"id": id, "title": "base", "context": base})).await;
    api.patched(id, json!({"context": {"x": 2}})).await;
    let a = api.patch_if(id, "\"1\"", json!({"context": {"y": 2}})).await;
    check_conflict(&api, &a, (412, "precondition_failed"), id, 1, &["/context/x"], "stale If-Match").await;
    let a = api.patch_if(id, "\"1\"", json!({"mode": "merge", "context": {"x": 9}})).await;
    check_conflict(&api, &a, (412, "precondition_failed"), id, 1, &["/context/x"], "stale If-Match, merge")
        .await;
    let a = api.patch_if(id, "\"1\"", json!({"mode": "merge", "context": {"y": 2}})).await;
    assert_eq!(ok(&a, 200, "If-Match in merge mode, disjoint key")["version"], 3);
    assert_eq!(a.etag.as_deref(), Some("\"3\""));
    // The ETag goes back as If-Match as it is.
    let etag = a.etag.clone().unwrap();
    let a = api.patch_if(id, &etag, json!({"title": "retitled"})).await;
    assert_eq!(ok(&a, 200, "If-Match: the ETag sent back")["version"], 4);
    // If-Match and a different body expected_version: 422 naming expected_version.
    let a = api.patch_if(id, "\"4\"", json!({"expected_version": 3, "title": "t"})).await;
    refused_field(&a, 422, "validation_failed", "expected_version", "If-Match and expected_version disagree");
    let a = api.patch_if(id, "\"4\"", json!({"expected_version": 4, "title": "agreed"})).await;
    assert_eq!(ok(&a, 200, "If-Match and expected_version agree")["version"], 5);
    // A version from the future conflicts too (nothing to merge against).
    let a = api.patch(id, json!({"expected_version": 9, "context": {"z": 1}})).await;
    check_conflict(&api, &a, (409, "version_conflict"), id, 9, &[], "expected_version ahead of the item")
        .await;
    refused(
        &api.patch("no-such-item", json!({"expected_version": 1, "title": "t"})).await,
        404,
        "not_found",
        "unknown item",
    );
    let h = api.history(id).await;
    assert_eq!(h.len(), 5, "refused writes left no history: {h:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_precondition_sqlite() {
    let c = Cluster::sqlite(Some("[items]\nrequire_precondition = true\n")).await;
    bounded(Duration::from_secs(30), "require_precondition", async {
        let api = Api::new(&c.urls()[0]);
        api.created(json!({"id": "rp", "title": "t"})).await;
        let a = api.patch("rp", json!({"title": "no precondition"})).await;
        refused(&a, 428, "precondition_required", "a write without precondition");
        let a = api.batch(vec![json!({"op": "patch", "id": "rp", "title": "no precondition"})]).await;
        refused(&a, 428, "precondition_required", "a batch patch without precondition");
        assert_eq!(api.item("rp").await["version"], 1, "refused writes changed nothing");
        assert_eq!(
            ok(
                &api.patch("rp", json!({"expected_version": 1, "title": "t2"})).await,
                200,
                "expected_version"
            )["version"],
            2
        );
        assert_eq!(
            ok(&api.patch_if("rp", "\"2\"", json!({"title": "t3"})).await, 200, "If-Match")["version"],
            3
        );
        let a =
            api.batch(vec![json!({"op": "patch", "id": "rp", "expected_version": 3, "title": "t4"})]).await;
        assert_eq!(a.status, 200, "a batch patch with its precondition: {}", a.brief());
    })
    .await;
    c.assert_no_panic();
}

// ---------------------------------------------------------------------------------------------
// The transition table, exhaustively; races
// ---------------------------------------------------------------------------------------------

const STATUSES: [&str; 6] = ["todo", "in_progress", "blocked", "done", "failed", "cancelled"];
const AGENT: &str = "agent-1";

fn terminal(s: &str) -> bool {
    matches!(s, "done" | "failed" | "cancelled")
}

/// The contract's table: the moves allowed without `reopen`.
fn movable(from: &str, to: &str) -> bool {
    matches!(
        (from, to),
        ("todo", "in_progress")
            | ("in_progress", "blocked" | "done" | "failed" | "todo")
            | ("blocked", "in_progress")
    ) || (to == "cancelled" && !terminal(from))
}

/// Creates item `id` and moves it along allowed moves to `status`; returns it.
async fn item_in(api: &Api, id: &str, status: &str) -> Value {
    let (start, then) = match status {
        "todo" | "blocked" => (status, None),
        "in_progress" => ("in_progress", None),
        "done" | "failed" => ("in_progress", Some(status)),
        "cancelled" => ("todo", Some("cancelled")),
        other => panic!("no status {other}"),
    };
    let mut item = api.created(json!({"id": id, "title": "moves", "status": start, "agent": AGENT})).await;
    if let Some(to) = then {
        item = api.patched(id, json!({"status": to, "agent": AGENT})).await;
    }
    assert_eq!(item["status"], status, "set-up of {id}");
    item
}

both_backends!(transition_table, transition_table_sqlite, transition_table_postgres, 90, None);

/// Every (from, to) pair, as a merge write, a strict write and a strict write with `reopen`:
/// allowed moves commit; the others are 409 `invalid_state` and leave the item as it was.
async fn transition_table(urls: &[String]) {
    let api = Api::new(&urls[0]);
    let variants = [("merge", false), ("strict", false), ("strict", true)];
    let mut cells = Vec::new();
    for from in STATUSES {
        for to in STATUSES {
            for (mode, reopen) in variants {
                cells.push((from, to, mode, reopen));
            }
        }
    }
    let n = cells.len();
    let failures: Vec<String> = futures_util::stream::iter(cells)
        .map(|(from, to, mode, reopen)| {
            let api = api.clone();
            async move {
                let id = format!("tt-{from}-{to}-{mode}{}", if reopen { "-reopen" } else { "" });
                let before = item_in(&api, &id, from).await;
                let v = before["version"].as_i64().unwrap();
                let mut body = json!({"status": to, "agent": AGENT, "mode": mode, "expected_version": v});
                if reopen {
                    body["reopen"] = json!(true);
                }
                let a = api.patch(&id, body.clone()).await;
                let cell = format!("{from} -> {to} ({mode}{}): {body}", if reopen { ", reopen" } else { "" });
                let allowed = movable(from, to) || (reopen && terminal(from) && !terminal(to));
                let now = api.item(&id).await;
                let mut bad = Vec::new();
                if from == to {
                    if (a.status, &a.body["changed"]) != (200, &json!(false)) || now != before {
                        bad.push(format!("{cell}: same status must be 200 changed false, got {}", a.brief()));
                    }
                } else if allowed {
                    let item = a.item();
                    if a.status != 200
                        || a.body["changed"] != true
                        || item["status"] != to
                        || item["version"] != v + 1
                    {
                        bad.push(format!("{cell}: allowed, got {}", a.brief()));
                    } else if item != &now {
                        bad.push(format!("{cell}: the answer {item} is not what GET reads: {now}"));
                    } else {
                        let want = match to {
                            "in_progress" => json!(AGENT),
                            "todo" => Value::Null,
                            _ => before["assignee"].clone(),
                        };
                        if item["assignee"] != want {
                            bad.push(format!("{cell}: assignee {} (want {want})", item["assignee"]));
                        }
                    }
                } else {
                    let d = a.details();
                    if (a.status, a.code()) != (409, "invalid_state") {
                        bad.push(format!("{cell}: refused moves are 409 invalid_state, got {}", a.brief()));
                    } else if d["item_id"] != id.as_str()
                        || d["from"] != from
                        || d["to"] != to
                        || d["current"] != before
                    {
                        bad.push(format!("{cell}: details {{item_id, from, to, current}} wrong: {d}"));
                    }
                    if now != before {
                        bad.push(format!("{cell}: a refused move changed the item: {now}"));
                    }
                }
                bad
            }
        })
        .buffer_unordered(8)
        .concat()
        .await;
    assert_none(&format!("transition table ({n} cells)"), &failures);

    // `reopen` needs a strict write.
    item_in(&api, "tt-reopen-merge", "done").await;
    let a = api.patch("tt-reopen-merge", json!({"status": "todo", "reopen": true, "mode": "merge"})).await;
    refused_field(&a, 422, "validation_failed", "reopen", "reopen in a merge write");
    // A move to in_progress needs the claiming agent.
    api.created(json!({"id": "tt-no-agent", "title": "t"})).await;
    let a = api.patch("tt-no-agent", json!({"status": "in_progress"})).await;
    refused_field(&a, 422, "validation_failed", "agent", "a claim without agent");
}

both_backends!(races, races_sqlite, races_postgres, 120, None);

/// `done` against `cancelled` from `in_progress`, both without precondition: exactly one wins
/// (the other move starts from a terminal status). Then 10 agents claim one item at once.
async fn races(urls: &[String]) {
    let api = Api::new(&urls[0]);
    let trials = env_usize("FERRY_ITEMS_RACE_TRIALS", 1_000);
    let ids: Vec<String> = (0..trials).map(|t| format!("race-{t:05}")).collect();
    for chunk in ids.chunks(1_000) {
        let ops: Vec<Value> = chunk
            .iter()
            .map(|id| {
                json!({"op": "create", "id": id, "title": "race", "status": "in_progress", "agent": "racer"})
            })
            .collect();
        let a = api.batch(ops).await;
        assert_eq!(a.status, 200, "creating the race items: {}", a.brief());
    }
    let outcomes: Vec<Result<(String, &str), String>> = futures_util::stream::iter(ids.clone())
        .map(|id| {
            let api = api.clone();
            async move {
                let (d, c) = tokio::join!(
                    api.patch(&id, json!({"status": "done", "agent": "racer"})),
                    api.patch(&id, json!({"status": "cancelled", "agent": "canceller"})),
                );
                let won = |a: &Answer| a.status == 200 && a.body["changed"] == true;
                let lost = |a: &Answer, from: &str, to: &str| {
                    a.status == 409
                        && a.code() == "invalid_state"
                        && a.details()["from"] == from
                        && a.details()["to"] == to
                        && a.details()["current"]["status"] == from
                };
                if won(&d) && lost(&c, "done", "cancelled") {
                    Ok((id, "done"))
                } else if won(&c) && lost(&d, "cancelled", "done") {
                    Ok((id, "cancelled"))
                } else {
                    Err(format!("{id}: not exactly one winner: done {} / cancelled {}", d.brief(), c.brief()))
                }
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let failures: Vec<String> = outcomes.iter().filter_map(|o| o.clone().err()).collect();
    assert_none(&format!("done against cancelled, {trials} trials"), &failures);
    let winners: BTreeMap<String, &str> = outcomes.into_iter().map(Result::unwrap).collect();
    let listed = |status: &'static str| {
        let api = api.clone();
        async move { api.list(&format!("status={status}"), 1000).await }
    };
    for status in ["done", "cancelled"] {
        let got: BTreeSet<String> =
            listed(status).await.iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
        let want: BTreeSet<String> =
            winners.iter().filter(|(_, s)| **s == status).map(|(id, _)| id.clone()).collect();
        assert_eq!(got, want, "items {status} are those whose {status} won");
    }
    assert!(listed("in_progress").await.is_empty(), "every race item ended");
    let done = winners.values().filter(|s| **s == "done").count();
    eprintln!("races: {trials} trials, done won {done}, cancelled won {}", trials - done);

    // Ten agents claim a todo item at once: one wins, nine hear who.
    for round in 0..10 {
        let id = format!("claim-{round}");
        api.created(json!({"id": id, "title": "claim me"})).await;
        let answers =
            futures_util::future::join_all((0..10).map(|a| {
                let (api, id) = (api.clone(), id.clone());
                async move {
                    api.patch(&id, json!({"status": "in_progress", "agent": format!("claimer-{a}")})).await
                }
            }))
            .await;
        let winners: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: one claim wins: {:?}",
            answers.iter().map(Answer::brief).collect::<Vec<_>>()
        );
        let holder = winners[0].item()["assignee"].clone();
        assert!(
            holder.as_str().is_some_and(|h| h.starts_with("claimer-")),
            "the winner holds it: {}",
            winners[0].brief()
        );
        for a in answers.iter().filter(|a| a.status != 200) {
            let d = refused(a, 409, "invalid_state", &format!("round {round}: a lost claim"));
            assert_eq!(
                (&d["reason"], &d["assignee"]),
                (&json!("assigned_to_other"), &holder),
                "round {round}: {d}"
            );
            assert_eq!(
                (&d["from"], &d["to"]),
                (&json!("in_progress"), &json!("in_progress")),
                "round {round}: {d}"
            );
        }
        let item = api.item(&id).await;
        assert_eq!(
            (&item["assignee"], &item["version"]),
            (&holder, &json!(2)),
            "round {round}: one claim committed"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Atomic batches; events
// ---------------------------------------------------------------------------------------------

both_backends!(atomic_batch, atomic_batch_sqlite, atomic_batch_postgres, 90, None);

/// 1,000 ops with one failing compare (or move) write nothing: versions, history and events are
/// as before. A batch that passes answers one item per op.
async fn atomic_batch(urls: &[String]) {
    let api = Api::new(&urls[0]);
    const N: usize = 1_000;
    let ids: Vec<String> = (0..N).map(|i| format!("b-{i:04}")).collect();
    let ops: Vec<Value> =
        ids.iter().map(|id| json!({"op": "create", "id": id, "title": "batched"})).collect();
    let a = api.batch(ops).await;
    assert_eq!(a.status, 200, "a batch of 1,000 creates: {}", a.brief());
    let created = a.body["items"].as_array().unwrap();
    assert_eq!(created.len(), N, "one item per op");
    for (item, id) in created.iter().zip(&ids) {
        assert_eq!((&item["id"], &item["version"]), (&json!(id), &json!(1)), "op order: {item}");
    }
    let c0 = api.marker("marker-0", 0).await;

    let patch =
        |id: &str, n: i64| json!({"op": "patch", "id": id, "expected_version": 1, "context": {"n": n}});
    // A failing compare as the last op, after 999 patches that would pass.
    let mut ops: Vec<Value> = ids.iter().map(|id| patch(id, 1)).collect();
    ops[N - 1] = json!({"op": "check", "id": ids[N - 1], "expected_version": 7});
    let a = api.batch(ops).await;
    refused_field(&a, 409, "version_conflict", &format!("ops[{}]", N - 1), "a failing check");
    let d = a.details();
    assert_eq!(
        (&d["item_id"], &d["expected_version"], &d["actual_version"]),
        (&json!(ids[N - 1]), &json!(7), &json!(1)),
        "{d}"
    );
    assert_eq!(d["current"], created[N - 1], "details.current of the failing op");
    // A refused move in the middle; and a patch repeated on one item whose second compare fails.
    let mut ops: Vec<Value> = ids.iter().map(|id| patch(id, 2)).collect();
    ops[500] = json!({"op": "patch", "id": ids[500], "status": "done"});
    let a = api.batch(ops).await;
    refused_field(&a, 409, "invalid_state", "ops[500]", "a refused move in a batch");
    let mut ops: Vec<Value> = ids.iter().map(|id| patch(id, 3)).collect();
    ops.push(patch(&ids[3], 4));
    let a = api.batch(ops).await;
    refused_field(
        &a,
        409,
        "version_conflict",
        &format!("ops[{N}]"),
        "a second patch of one item at its old version",
    );
    let a = api.post("/v1/items/batch", &json!({"ops": [patch(&ids[0], 5)], "atomic": false})).await;
    refused_field(&a, 422, "validation_failed", "atomic", "atomic: false");

    // Nothing was written.
    let c1 = api.marker("marker-1", c0).await;
    let items = api.list("", 1000).await;
    let unchanged: Vec<String> = items
        .iter()
        .filter(|i| i["id"].as_str().unwrap().starts_with("b-"))
        .filter(|i| i["version"] != 1 || i["context"] != json!({}))
        .map(|i| i.to_string())
        .collect();
    assert_none("items changed by refused batches", &unchanged);
    for i in [0, 3, 500, 998, 999] {
        let h = api.history(&ids[i]).await;
        assert_eq!(h.len(), 1, "{}: history after refused batches: {h:?}", ids[i]);
    }
    let events = api.events_between(c0, c1).await;
    let items_events: Vec<&Value> = events.iter().filter(|e| e["subject"]["kind"] == "item").collect();
    assert_eq!(items_events.len(), 1, "only the marker's event between the markers: {items_events:?}");

    // A batch that passes: 1,000 patches, a compare that sees the batch's own write, a create.
    let mut ops: Vec<Value> = ids.iter().map(|id| patch(id, 1)).collect();
    ops.push(json!({"op": "check", "id": ids[0], "expected_version": 2}));
    ops.push(json!({"op": "create", "id": "b-new", "title": "made in a batch"}));
    let a = api.batch(ops).await;
    assert_eq!(a.status, 200, "a passing batch: {}", a.brief());
    let out = a.body["items"].as_array().unwrap();
    assert_eq!(out.len(), N + 2, "one item per op");
    for (item, id) in out.iter().zip(&ids) {
        assert_eq!(
            (&item["id"], &item["version"], &item["context"]),
            (&json!(id), &json!(2), &json!({"n": 1})),
            "{item}"
        );
    }
    assert_eq!((&out[N]["id"], &out[N]["version"]), (&json!(ids[0]), &json!(2)), "the check's item");
    assert_eq!(
        (&out[N + 1]["id"], &out[N + 1]["version"]),
        (&json!("b-new"), &json!(1)),
        "the create's item"
    );
    assert_eq!(api.item(&ids[777]).await, out[777], "the batch's answer is what GET reads");
    let c2 = api.marker("marker-2", c1).await;
    let events = api.events_between(c1, c2).await;
    let updated: Vec<&Value> =
        events.iter().filter(|e| e["type"] == "item.updated" && e["subject"]["kind"] == "item").collect();
    assert_eq!(updated.len(), N, "one item.updated per patched item");
    assert!(
        updated.iter().all(|e| e["data"]["version"] == 2 && e["data"]["paths"] == json!(["/context/n"])),
        "item.updated data: {}",
        updated[0]
    );
    assert_eq!(about(&events, "b-new").len(), 1, "the batch's create has its event");
}

both_backends!(events, events_sqlite, events_postgres, 60, None);

/// One event per committed change, in the item's room, none for a write that changes nothing.
async fn events(urls: &[String]) {
    let api = Api::new(&urls[0]);
    let c0 = api.marker("ev-marker-0", 0).await;
    let id = "ev-1";
    api.created(json!({"id": id, "title": "eventful", "agent": "ev-agent"})).await;
    api.patched(id, json!({"agent": "ev-agent", "context": {"a": {"b": 1}}})).await;
    let a = api.patch(id, json!({"agent": "ev-agent", "context": {"a": {"b": 1}}})).await;
    assert_eq!(a.body["changed"], false, "{}", a.brief());
    api.patched(id, json!({"agent": "ev-agent", "status": "in_progress"})).await;
    api.patched(id, json!({"agent": "ev-agent", "status": "blocked", "reason": "waiting on review"})).await;
    let a = api.patch(id, json!({"agent": "ev-agent", "status": "blocked", "title": "eventful"})).await;
    assert_eq!(a.body["changed"], false, "{}", a.brief());
    api.patched(id, json!({"agent": "other", "title": "renamed", "artifacts_add": [{"uri": "file:///out"}]}))
        .await;
    let refused_write = api.patch(id, json!({"expected_version": 1, "title": "stale"})).await;
    assert_eq!(refused_write.status, 409, "{}", refused_write.brief());
    let c1 = api.marker("ev-marker-1", c0).await;

    let all = api.events_between(c0, c1).await;
    let mine = about(&all, id);
    let kinds: Vec<&str> = mine.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["item.created", "item.updated", "item.status_changed", "item.status_changed", "item.updated"],
        "one event per committed change, none for changed: false or a refused write"
    );
    let data: Vec<&Value> = mine.iter().map(|e| &e["data"]).collect();
    assert_eq!((&data[1]["version"], &data[1]["agent"]), (&json!(2), &json!("ev-agent")), "{}", data[1]);
    assert_eq!(sorted(&data[1]["paths"]), strs(&["/context/a/b"]), "{}", data[1]);
    for (d, (from, to, version)) in
        data[2..4].iter().zip([("todo", "in_progress", 3), ("in_progress", "blocked", 4)])
    {
        assert_eq!(
            (&d["from"], &d["to"], &d["version"], &d["agent"]),
            (&json!(from), &json!(to), &json!(version), &json!("ev-agent")),
            "item.status_changed data: {d}"
        );
    }
    assert_eq!(data[3]["reason"], "waiting on review", "a status move's reason: {}", data[3]);
    assert_eq!((&data[4]["version"], &data[4]["agent"]), (&json!(5), &json!("other")), "{}", data[4]);
    assert_eq!(sorted(&data[4]["paths"]), strs(&["/artifacts", "/title"]), "{}", data[4]);
    let cursors: Vec<u64> = mine.iter().map(|e| e["cursor"].as_u64().unwrap()).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]), "in commit order: {cursors:?}");
    assert_eq!(api.item(id).await["version"], 5, "five versions, five events");
}

// ---------------------------------------------------------------------------------------------
// No lost update; overlapping batches
// ---------------------------------------------------------------------------------------------

/// A jittered pause before retrying a conflict (2–50 ms, growing with the attempts, like the
/// clients' policy): under full contention immediate retries only burn the two cores.
async fn backoff(rng: &mut StdRng, attempt: u32) {
    let cap = (2u64 << attempt.min(5)).min(50);
    tokio::time::sleep(Duration::from_micros(rng.random_range(500..=cap * 1000))).await;
}

/// Runs `writers` tasks (`f(w)`) at once and joins them; a task's error fails the test.
async fn run_writers<F, Fut>(writers: usize, what: &str, f: F) -> Vec<usize>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<usize, String>> + Send + 'static,
{
    let tasks: Vec<_> = (0..writers).map(|w| tokio::spawn(f(w))).collect();
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for t in tasks {
        match t.await.expect("writer task") {
            Ok(n) => out.push(n),
            Err(e) => errors.push(e),
        }
    }
    assert_none(what, &errors);
    out
}

/// `writers` x `increments` read-modify-write increments of `context.n` with
/// `expected_version` in `mode`, retried from `details.current` on conflict; returns the
/// conflicts seen.
async fn increments(apis: &[Api], id: &str, mode: &'static str, writers: usize, per_writer: usize) -> usize {
    apis[0].created(json!({"id": id, "title": "counter", "context": {"n": 0}})).await;
    let conflicts: usize = run_writers(writers, &format!("{mode} increments"), |w| {
        let api = apis[w % apis.len()].clone();
        let id = id.to_string();
        async move {
            let mut rng = StdRng::seed_from_u64(w as u64);
            let mut item = api.item(&id).await;
            let (mut done, mut conflicts, mut attempt) = (0, 0, 0u32);
            while done < per_writer {
                let (v, n) = (item["version"].as_i64().unwrap(), item["context"]["n"].as_i64().unwrap());
                let body = json!({
                    "agent": format!("w{w}"), "mode": mode, "expected_version": v, "context": {"n": n + 1},
                });
                let a = api.try_send(api.patch_req(&id, &body)).await?;
                match (a.status, a.code()) {
                    (200, _) => {
                        let next = a.item();
                        let (version, count) = (&next["version"], &next["context"]["n"]);
                        if a.body["changed"] != true || *version != v + 1 || *count != n + 1 {
                            return Err(format!("w{w}: {body} answered {}", a.brief()));
                        }
                        item = next.clone();
                        done += 1;
                        attempt = 0;
                    }
                    (409, "version_conflict") => {
                        let d = a.details();
                        if d["conflicting_paths"] != json!(["/context/n"]) || d["expected_version"] != v {
                            return Err(format!("w{w}: unexpected conflict details {}", a.brief()));
                        }
                        item = d["current"].clone();
                        conflicts += 1;
                        backoff(&mut rng, attempt).await;
                        attempt += 1;
                    }
                    _ => return Err(format!("w{w}: {body} answered {}", a.brief())),
                }
            }
            Ok(conflicts)
        }
    })
    .await
    .into_iter()
    .sum();
    let item = apis[0].item(id).await;
    let total = (writers * per_writer) as i64;
    assert_eq!(item["context"]["n"], total, "{mode}: {writers} x {per_writer} increments, none lost");
    assert_eq!(item["version"], total + 1, "{mode}: one version per increment plus the creation");
    conflicts
}

/// Merge writers each incrementing a key of their own: never a conflict.
async fn distinct_keys(apis: &[Api], id: &str, writers: usize, per_writer: usize) {
    apis[0].created(json!({"id": id, "title": "keys"})).await;
    let conflicts: usize = run_writers(writers, "distinct keys", |w| {
        let api = apis[w % apis.len()].clone();
        let id = id.to_string();
        async move {
            let mut v = api.item(&id).await["version"].as_i64().unwrap();
            let mut conflicts = 0;
            let mut k = 0;
            while k < per_writer {
                let key = format!("w{w}");
                let body = json!({"agent": key, "expected_version": v, "context": {&key: k + 1}});
                let a = api.try_send(api.patch_req(&id, &body)).await?;
                match (a.status, a.code()) {
                    (200, _) if a.body["changed"] == true && a.item()["context"][&key] == k + 1 => {
                        v = a.item()["version"].as_i64().unwrap();
                        k += 1;
                    }
                    (409, "version_conflict") => {
                        conflicts += 1;
                        v = a.details()["current"]["version"].as_i64().unwrap();
                    }
                    _ => return Err(format!("w{w}: {body} answered {}", a.brief())),
                }
            }
            Ok(conflicts)
        }
    })
    .await
    .into_iter()
    .sum();
    assert_eq!(conflicts, 0, "merge writers on distinct keys never conflict");
    let item = apis[0].item(id).await;
    for w in 0..writers {
        assert_eq!(item["context"][format!("w{w}")], per_writer, "writer {w}'s key");
    }
    assert_eq!(item["version"], (1 + writers * per_writer) as i64, "one version per write");
}

/// `agents` agents adding `per_agent` artifacts each to one item (merge, `expected_version`):
/// never a conflict, every artifact kept.
async fn artifacts(apis: &[Api], id: &str, agents: usize, per_agent: usize) {
    apis[0].created(json!({"id": id, "title": "outputs"})).await;
    let conflicts: usize = run_writers(agents, "artifacts", |a| {
        let api = apis[a % apis.len()].clone();
        let id = id.to_string();
        async move {
            let mut v = api.item(&id).await["version"].as_i64().unwrap();
            let (mut conflicts, mut j) = (0, 0);
            while j < per_agent {
                let uri = format!("a{a}/{j}");
                let body =
                    json!({"agent": format!("a{a}"), "expected_version": v, "artifacts_add": [{"uri": uri}]});
                let r = api.try_send(api.patch_req(&id, &body)).await?;
                match (r.status, r.code()) {
                    (200, _) if r.body["changed"] == true => {
                        v = r.item()["version"].as_i64().unwrap();
                        j += 1;
                    }
                    (409, "version_conflict") => {
                        conflicts += 1;
                        v = r.details()["current"]["version"].as_i64().unwrap();
                    }
                    _ => return Err(format!("a{a}: {body} answered {}", r.brief())),
                }
            }
            Ok(conflicts)
        }
    })
    .await
    .into_iter()
    .sum();
    assert_eq!(conflicts, 0, "artifacts never conflict");
    let item = apis[0].item(id).await;
    let uris: BTreeSet<String> = item["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["uri"].as_str().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> =
        (0..agents).flat_map(|a| (0..per_agent).map(move |j| format!("a{a}/{j}"))).collect();
    assert_eq!(item["artifacts"].as_array().unwrap().len(), agents * per_agent, "no artifact twice");
    assert_eq!(uris, want, "every artifact kept");
    assert_eq!(item["version"], (1 + agents * per_agent) as i64);
}

/// The sizes of the no lost update tests, and the config their servers need (room for every
/// artifact on one item).
fn lost_update_sizes(pg: bool) -> (usize, usize, usize, usize, String) {
    let incs = env_usize("FERRY_ITEMS_INCREMENTS", if pg { 2 } else { 5 });
    let writers = env_usize("FERRY_ITEMS_WRITERS", 64);
    let (agents, per) = (env_usize("FERRY_ITEMS_AGENTS", 100), env_usize("FERRY_ITEMS_ARTIFACTS", 20));
    let toml = format!("[limits]\nmax_artifacts = {}\n", (agents * per).max(1_000));
    (writers, incs, agents, per, toml)
}

async fn no_lost_update(urls: &[String], pg: bool) {
    let apis = Api::all(urls);
    let (writers, incs, agents, per, _) = lost_update_sizes(pg);
    let t = Instant::now();
    let strict = increments(&apis, "n-strict", "strict", writers, incs).await;
    let merge = increments(&apis, "n-merge", "merge", writers, incs).await;
    eprintln!(
        "no lost update on {} node(s): {writers} x {incs} increments, conflicts retried: {strict} strict, \
         {merge} merge ({:?})",
        urls.len(),
        t.elapsed()
    );
    distinct_keys(&apis, "n-keys", writers, incs).await;
    artifacts(&apis, "n-artifacts", agents, per).await;
    eprintln!("no lost update on {} node(s): all done in {:?}", urls.len(), t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lost_update_sqlite() {
    let c = Cluster::sqlite(Some(&lost_update_sizes(false).4)).await;
    bounded(Duration::from_secs(180), "no_lost_update_sqlite", no_lost_update(&c.urls(), false)).await;
    c.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lost_update_postgres() {
    let Some(c) = Cluster::postgres("ferry_items_nlu", 1, Some(&lost_update_sizes(true).4)).await else {
        return;
    };
    bounded(Duration::from_secs(180), "no_lost_update_postgres", no_lost_update(&c.urls(), true)).await;
    c.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lost_update_postgres_3_nodes() {
    let Some(c) = Cluster::postgres("ferry_items_nlu3", 3, Some(&lost_update_sizes(true).4)).await else {
        return;
    };
    bounded(Duration::from_secs(180), "no_lost_update_postgres_3_nodes", no_lost_update(&c.urls(), true))
        .await;
    c.assert_no_panic();
}

/// Batches over the same items in opposite (and shuffled) orders from three nodes: all finish
/// (PostgreSQL locks rows in id order), every op applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_batches_postgres_3_nodes() {
    let Some(c) = Cluster::postgres("ferry_items_overlap", 3, None).await else { return };
    let apis = Api::all(&c.urls());
    const ITEMS: usize = 40;
    const TASKS: usize = 12;
    const ROUNDS: usize = 10;
    let ids: Vec<String> = (0..ITEMS).map(|i| format!("ov-{i:02}")).collect();
    let a = apis[0]
        .batch(ids.iter().map(|id| json!({"op": "create", "id": id, "title": "shared"})).collect())
        .await;
    assert_eq!(a.status, 200, "{}", a.brief());
    bounded(Duration::from_secs(90), "overlapping batches (a deadlock?)", async {
        run_writers(TASKS, "overlapping batches", |t| {
            let api = apis[t % apis.len()].clone();
            let ids = ids.clone();
            async move {
                let mut rng = StdRng::seed_from_u64(t as u64);
                let key = format!("t{t}");
                for r in 0..ROUNDS {
                    let mut order: Vec<&String> = ids.iter().collect();
                    match t % 3 {
                        0 => {}
                        1 => order.reverse(),
                        _ => {
                            for i in (1..order.len()).rev() {
                                order.swap(i, rng.random_range(0..=i));
                            }
                        }
                    }
                    let ops: Vec<Value> = order
                        .iter()
                        .map(|id| json!({"op": "patch", "id": id, "agent": key, "context": {&key: r}}))
                        .collect();
                    let req = api.http.post(api.url("/v1/items/batch")).json(&json!({"ops": ops}));
                    let a = api.try_send(req).await?;
                    if a.status != 200 || a.body["items"].as_array().map(Vec::len) != Some(ITEMS) {
                        return Err(format!("task {t} round {r}: {}", a.brief()));
                    }
                }
                Ok(0)
            }
        })
        .await;
    })
    .await;
    for id in &ids {
        let item = apis[2].item(id).await;
        assert_eq!(item["version"], (1 + TASKS * ROUNDS) as i64, "{id}: every batch's patch applied");
        for t in 0..TASKS {
            assert_eq!(item["context"][format!("t{t}")], ROUNDS - 1, "{id}: task {t}'s last round");
        }
    }
    c.assert_no_panic();
}

// ---------------------------------------------------------------------------------------------
// Long-polls; refused item writes beside job writes in SQLite's group commits; limits
// ---------------------------------------------------------------------------------------------

/// A wait that ends answers the current item; a commit (through the last node) wakes waiters
/// on the first node's item at once.
async fn long_poll(urls: &[String]) {
    let apis = Api::all(urls);
    let (writer, reader) = (&apis[0], &apis[apis.len() - 1]);
    writer.created(json!({"id": "lp", "title": "watched"})).await;
    let t = Instant::now();
    let a = reader.get("/v1/items/lp?wait_version_gt=1&wait_ms=300").await;
    let waited = t.elapsed();
    assert_eq!(ok(&a, 200, "a wait that ends")["version"], 1, "the current item when the wait ends");
    assert_eq!(a.etag.as_deref(), Some("\"1\""));
    assert!(waited >= Duration::from_millis(250), "the long-poll waited for its wait_ms: {waited:?}");

    for (round, version) in [(0, 2), (1, 3)] {
        // Waiters, then a commit through the other node.
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let r = reader.clone();
                let after = version - 1;
                tokio::spawn(async move {
                    let t = Instant::now();
                    let a = r.get(&format!("/v1/items/lp?wait_version_gt={after}&wait_ms=5000")).await;
                    (t.elapsed(), a)
                })
            })
            .collect();
        // Lets the polls start waiting; the assertions hold either way (a poll that starts
        // after the commit answers at once).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let item = writer.patched("lp", json!({"context": {"round": round}})).await;
        for w in waiters {
            let (took, a) = bounded(Duration::from_secs(10), "a long-poll", w).await.unwrap();
            assert_eq!(ok(&a, 200, "a woken long-poll"), &item, "round {round}: the waiter sees the commit");
            assert_eq!(a.etag, Some(format!("\"{version}\"")));
            assert!(
                took < Duration::from_millis(4_000),
                "round {round}: woken by the commit, not the 5 s wait: {took:?}"
            );
        }
    }
    // Already newer: at once.
    let t = Instant::now();
    let a = reader.get("/v1/items/lp?wait_version_gt=1&wait_ms=5000").await;
    assert_eq!(ok(&a, 200, "already newer")["version"], 3);
    assert!(
        t.elapsed() < Duration::from_millis(4_000),
        "no wait for a version already there: {:?}",
        t.elapsed()
    );
    let a = reader.get("/v1/items/lp?wait_version_gt=1&wait_ms=30001").await;
    refused_field(&a, 422, "validation_failed", "wait_ms", "wait_ms over limits.max_wait_ms");
    refused(
        &reader.get("/v1/items/nope?wait_version_gt=1&wait_ms=100").await,
        404,
        "not_found",
        "waiting on no item",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_sqlite() {
    let c = Cluster::sqlite(None).await;
    bounded(Duration::from_secs(60), "long_poll_sqlite", long_poll(&c.urls())).await;
    c.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_postgres_across_nodes() {
    let Some(c) = Cluster::postgres("ferry_items_lp", 2, None).await else { return };
    bounded(Duration::from_secs(60), "long_poll_postgres_across_nodes", long_poll(&c.urls())).await;
    c.assert_no_panic();
}

/// Refused item writes (stale versions, a refused move, a context grown past its limit, a
/// batch whose last compare fails) fired while jobs are enqueued and completed: the SQLite
/// writer answers them without poisoning the job writes that share their group commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_conflicting_item_writes_do_not_fail_job_writes() {
    const PRODUCERS: usize = 4;
    const JOBS: usize = 100;
    const FIRERS: usize = 4;
    const SHOTS: usize = 100;
    let c = Cluster::sqlite(None).await;
    let api = Api::new(&c.urls()[0]);
    bounded(Duration::from_secs(120), "job writes beside refused item writes", async {
        api.created(json!({"id": "gc", "title": "contended"})).await;
        api.patched("gc", json!({"context": {"x": 1}})).await;
        api.created(json!({"id": "gc-big", "title": "big", "context": {"k": "x".repeat(260_000)}})).await;
        let total = PRODUCERS * JOBS;
        let completed = Arc::new(AtomicUsize::new(0));
        let mut tasks: Vec<tokio::task::JoinHandle<Vec<String>>> = Vec::new();
        for p in 0..PRODUCERS {
            let api = api.clone();
            tasks.push(tokio::spawn(async move {
                let mut bad = Vec::new();
                for j in 0..JOBS {
                    let job = json!({"queue": "gc-jobs", "payload": {"p": p, "j": j}});
                    let a = api.post("/v1/jobs", &job).await;
                    if a.status != 201 {
                        bad.push(format!("enqueue: {}", a.brief()));
                    }
                }
                bad
            }));
        }
        for w in 0..2 {
            let (api, completed) = (api.clone(), completed.clone());
            tasks.push(tokio::spawn(async move {
                let mut bad = Vec::new();
                while completed.load(Ordering::SeqCst) < total {
                    let claim = json!({"worker": format!("gc-w{w}"), "max": 10, "wait_ms": 100});
                    let a = api.post("/v1/queues/gc-jobs/claim", &claim).await;
                    if a.status != 200 {
                        bad.push(format!("claim: {}", a.brief()));
                        continue;
                    }
                    for j in a.body["jobs"].as_array().unwrap() {
                        let url = format!("/v1/jobs/{}/complete", j["id"].as_str().unwrap());
                        let done = api.post(&url, &json!({"lease": j["lease"]})).await;
                        if done.status == 200 {
                            completed.fetch_add(1, Ordering::SeqCst);
                        } else {
                            bad.push(format!("complete: {}", done.brief()));
                        }
                    }
                }
                bad
            }));
        }
        let fired = Arc::new(AtomicUsize::new(0));
        for f in 0..FIRERS {
            let (api, completed, fired) = (api.clone(), completed.clone(), fired.clone());
            tasks.push(tokio::spawn(async move {
                let mut bad = Vec::new();
                let mut s = 0;
                let stale = json!({"expected_version": 1, "context": {"x": 9}});
                let grow = json!({"context": {"j": "y".repeat(5_000)}});
                let ops = vec![
                    json!({"op": "patch", "id": "gc", "expected_version": 2, "context": {"y": 1}}),
                    json!({"op": "check", "id": "gc", "expected_version": 1}),
                ];
                // At least SHOTS each, and on until every job is done (a bound keeps it finite).
                while s < SHOTS || (completed.load(Ordering::SeqCst) < total && s < 50 * SHOTS) {
                    let (a, want, field) = match (s + f) % 5 {
                        0 => (api.patch("gc", stale.clone()).await, (409, "version_conflict"), None),
                        1 => (
                            api.patch_if("gc", "\"1\"", stale.clone()).await,
                            (412, "precondition_failed"),
                            None,
                        ),
                        2 => (api.patch("gc", json!({"status": "done"})).await, (409, "invalid_state"), None),
                        3 => (
                            api.patch("gc-big", grow.clone()).await,
                            (413, "payload_too_large"),
                            Some("context"),
                        ),
                        _ => (api.batch(ops.clone()).await, (409, "version_conflict"), Some("ops[1]")),
                    };
                    if (a.status, a.code()) != want || field.is_some_and(|f| a.body["error"]["field"] != f) {
                        bad.push(format!("refused item write: want {want:?} {field:?}, got {}", a.brief()));
                    }
                    s += 1;
                }
                fired.fetch_add(s, Ordering::SeqCst);
                bad
            }));
        }
        let mut bad = Vec::new();
        for t in tasks {
            bad.extend(t.await.unwrap());
        }
        assert_none("job writes and refused item writes", &bad);
        assert_eq!(completed.load(Ordering::SeqCst), total, "every job completed");
        let q = api.get("/v1/queues").await;
        let queues = q.body["queues"].as_array().unwrap_or_else(|| panic!("queues: {}", q.brief()));
        let queue = queues.iter().find(|q| q["queue"] == "gc-jobs").expect("the gc-jobs queue");
        let counts = queue["counts"].clone();
        assert_eq!(counts["completed"], total, "queue counts: {counts}");
        let gc = api.item("gc").await;
        let want = (&json!(2), &json!({"x": 1}));
        assert_eq!((&gc["version"], &gc["context"]), want, "refused writes changed nothing: {gc}");
        assert_eq!(api.history("gc").await.len(), 2);
        assert_eq!(api.item("gc-big").await["version"], 1);
        let fired = fired.load(Ordering::SeqCst);
        eprintln!("group commit: {total} jobs enqueued and completed beside {fired} refused item writes");
    })
    .await;
    c.assert_no_panic();
}

both_backends!(limits, limits_sqlite, limits_postgres, 60, Some("[limits]\nmax_item_history = 5\n"));

/// Every item limit at its edge (accepted) and one past it (413 for sizes, 422 for counts and
/// names, naming the field), on creates and patches; `max_item_history` (5 here).
async fn limits(urls: &[String]) {
    let api = Api::new(&urls[0]);
    let too_large =
        |a: &Answer, field: &str, what: &str| refused_field(a, 413, "payload_too_large", field, what);
    let invalid =
        |a: &Answer, field: &str, what: &str| refused_field(a, 422, "validation_failed", field, what);

    api.created(json!({"id": "l-title", "title": "t".repeat(512)})).await;
    too_large(&api.create(json!({"title": "t".repeat(513)})).await, "title", "title of 513 bytes");
    too_large(
        &api.patch("l-title", json!({"title": "t".repeat(513)})).await,
        "title",
        "patched title of 513 bytes",
    );

    api.created(json!({"id": "l-desc", "title": "d", "description": "d".repeat(65_536)})).await;
    too_large(
        &api.create(json!({"title": "d", "description": "d".repeat(65_537)})).await,
        "description",
        "description",
    );
    too_large(
        &api.patch("l-desc", json!({"description": "d".repeat(65_537)})).await,
        "description",
        "patched description",
    );

    // {"k":"xx..."} serializes to 8 + n bytes.
    let ctx = |n: usize| json!({"k": "x".repeat(n)});
    api.created(json!({"id": "l-ctx", "title": "c", "context": ctx(262_144 - 8)})).await;
    too_large(
        &api.create(json!({"title": "c", "context": ctx(262_144 - 7)})).await,
        "context",
        "context of 262,145 bytes",
    );
    too_large(
        &api.patch("l-ctx", json!({"context": {"j": 1}})).await,
        "context",
        "a merge growing the context past the limit",
    );
    assert_eq!(api.item("l-ctx").await["version"], 1, "the refused merge changed nothing");
    let a = api.patch("l-ctx", json!({"context": {"k": "short", "j": 1}})).await;
    assert_eq!(ok(&a, 200, "a smaller context")["version"], 2);

    let arts = |n: usize| (0..n).map(|i| json!({"uri": format!("u/{i}")})).collect::<Vec<_>>();
    api.created(json!({"id": "l-arts", "title": "a", "artifacts": arts(1_000)})).await;
    invalid(
        &api.create(json!({"title": "a", "artifacts": arts(1_001)})).await,
        "artifacts",
        "1,001 artifacts",
    );
    invalid(
        &api.patch("l-arts", json!({"artifacts_add": [{"uri": "u/1000"}]})).await,
        "artifacts_add",
        "the 1,001st artifact",
    );
    let a = api.patch("l-arts", json!({"artifacts_add": [{"uri": "u/5", "meta": {"m": 1}}]})).await;
    assert_eq!(
        ok(&a, 200, "replacing an artifact at the limit")["artifacts"].as_array().unwrap().len(),
        1_000
    );

    // {"uri":"uu..."} serializes to 10 + n bytes.
    api.created(json!({"id": "l-art", "title": "a", "artifacts": [{"uri": "u".repeat(4_086)}]})).await;
    let a = api.create(json!({"title": "a", "artifacts": [{"uri": "u".repeat(4_087)}]})).await;
    too_large(&a, "artifacts[0]", "an artifact of 4,097 bytes");
    let a = api.patch("l-art", json!({"artifacts_add": [{"uri": "v".repeat(4_087)}]})).await;
    too_large(&a, "artifacts_add[0]", "an added artifact of 4,097 bytes");

    let long_id = "i".repeat(128);
    api.created(json!({"id": long_id, "title": "id"})).await;
    assert_eq!(api.item(&long_id).await["id"], long_id.as_str());
    invalid(
        &api.create(json!({"id": "i".repeat(129), "title": "id"})).await,
        "id",
        "an id of 129 characters",
    );
    invalid(&api.create(json!({"id": "a b", "title": "id"})).await, "id", "an id with a space");

    api.created(
        json!({"id": "l-agent", "title": "a", "agent": "a".repeat(128), "assignee": "b".repeat(128)}),
    )
    .await;
    invalid(
        &api.create(json!({"title": "a", "agent": "a".repeat(129)})).await,
        "agent",
        "an agent of 129 characters",
    );
    invalid(
        &api.create(json!({"title": "a", "assignee": "a".repeat(129)})).await,
        "assignee",
        "an assignee of 129",
    );
    invalid(
        &api.patch("l-agent", json!({"agent": "a".repeat(129), "title": "x"})).await,
        "agent",
        "a patch's agent of 129",
    );
    invalid(
        &api.patch("l-agent", json!({"assignee": "a".repeat(129)})).await,
        "assignee",
        "a patch's assignee of 129",
    );
    assert_eq!(api.item("l-agent").await["version"], 1, "refused patches changed nothing");

    // History: the last 5 versions are kept.
    api.created(json!({"id": "l-hist", "title": "h", "context": {"a": 0}})).await;
    for i in 1..=7 {
        api.patched("l-hist", json!({"context": {"a": i}})).await;
    }
    let versions = |h: &[Value]| h.iter().map(|e| e["version"].as_i64().unwrap()).collect::<Vec<_>>();
    assert_eq!(versions(&api.history("l-hist").await), [8, 7, 6, 5, 4], "max_item_history = 5 entries kept");
    assert_eq!(versions(&api.history_paged("l-hist", 2).await), [8, 7, 6, 5, 4], "kept history, 2 a page");
    // A merge write older than the kept history is judged strict: a conflict, though the key
    // it writes never changed. Within the kept history the same write merges.
    let a = api.patch("l-hist", json!({"expected_version": 1, "context": {"z": 1}})).await;
    let d = refused(&a, 409, "version_conflict", "a merge write older than the kept history");
    assert_eq!((&d["expected_version"], &d["actual_version"]), (&json!(1), &json!(8)), "{d}");
    assert_eq!(d["current"], api.item("l-hist").await);
    let a = api.patch("l-hist", json!({"expected_version": 5, "context": {"z": 1}})).await;
    assert_eq!(ok(&a, 200, "a merge write within the kept history")["version"], 9);
    assert_eq!(versions(&api.history("l-hist").await), [9, 8, 7, 6, 5]);
}

// ---------------------------------------------------------------------------------------------
// Faults: SIGKILL loop (SQLite), PostgreSQL restarted under load
// ---------------------------------------------------------------------------------------------

/// What key writers were promised.
#[derive(Default, Clone)]
struct KeyLedger {
    /// Acknowledged writes that made a version: (item, version, key, value).
    versions: Vec<(String, i64, String, i64)>,
    /// Per (item, key): (highest value acknowledged or read back, highest value sent).
    keys: BTreeMap<(String, String), (i64, i64)>,
    acks: usize,
    unavailable: usize,
    bad: Vec<String>,
}

/// Writes `context.<key>` = start+1, start+2, ... on item `id` (merge, `expected_version`),
/// each value sent until acknowledged, until `stop`. A 503 with `Retry-After` or a lost
/// connection is retried with the same value (so a write whose answer was lost shows up as
/// `changed: false` or as a conflict on its own key, with its value in `current`).
async fn key_writer(
    api: Api,
    id: String,
    key: String,
    (start, mut version): (i64, i64),
    ledger: Arc<Mutex<KeyLedger>>,
    stop: Arc<AtomicBool>,
) {
    let mut k = start;
    while !stop.load(Ordering::SeqCst) {
        let next = k + 1;
        ledger.lock().unwrap().keys.entry((id.clone(), key.clone())).or_default().1 = next;
        let body = json!({"agent": key, "expected_version": version, "context": {&key: next}});
        let answer = api.try_send(api.patch_req(&id, &body)).await;
        let pause = {
            let mut l = ledger.lock().unwrap();
            let mut acked = |l: &mut KeyLedger| {
                l.acks += 1;
                l.keys.get_mut(&(id.clone(), key.clone())).unwrap().0 = next;
                k = next;
            };
            match answer {
                Ok(a) if a.status == 200 && a.item()["context"][&key] == next => {
                    version = a.item()["version"].as_i64().unwrap();
                    if a.body["changed"] == true {
                        l.versions.push((id.clone(), version, key.clone(), next));
                    }
                    acked(&mut l);
                    None
                }
                Ok(a)
                    if a.status == 409
                        && a.code() == "version_conflict"
                        && a.details()["current"]["context"][&key] == next =>
                {
                    // The value was written by an attempt whose answer was lost.
                    version = a.details()["current"]["version"].as_i64().unwrap();
                    acked(&mut l);
                    None
                }
                Ok(a)
                    if a.status == 503
                        && a.retry_after
                        && matches!(a.code(), "unavailable" | "circuit_open") =>
                {
                    l.unavailable += 1;
                    Some(Duration::from_millis(50))
                }
                Ok(a) => {
                    l.bad.push(format!("{id} {key}: {body} answered {}", a.brief()));
                    Some(Duration::from_millis(50))
                }
                // The server is gone (killed) or the answer was lost: the outcome is unknown.
                Err(_) => Some(Duration::from_millis(20)),
            }
        };
        if let Some(p) = pause {
            tokio::time::sleep(p).await;
        }
    }
}

/// Checks the promises: every item's history is contiguous and ends at its version; every
/// acknowledged write is in its version's history entry; every key holds at least its
/// acknowledged value and at most the last value sent. Returns the items by id.
async fn check_keys(api: &Api, ledger: &KeyLedger, ids: &[String], when: &str) -> BTreeMap<String, Value> {
    let mut items = BTreeMap::new();
    let mut histories: BTreeMap<String, BTreeMap<i64, Value>> = BTreeMap::new();
    let mut bad = Vec::new();
    for id in ids {
        let item = api.item(id).await;
        let v = item["version"].as_i64().unwrap();
        let h = api.history_paged(id, 50).await;
        let got: Vec<i64> = h.iter().map(|e| e["version"].as_i64().unwrap()).collect();
        let kept = (v as usize).min(1_000) as i64;
        let want: Vec<i64> = (v - kept + 1..=v).rev().collect();
        if got != want {
            let first = got.iter().zip(&want).position(|(g, w)| g != w);
            bad.push(format!(
                "{id} at version {v}: history not contiguous (first difference at {first:?}, {} entries)",
                got.len()
            ));
        }
        histories.insert(id.clone(), h.into_iter().map(|e| (e["version"].as_i64().unwrap(), e)).collect());
        items.insert(id.clone(), item);
    }
    for (id, version, key, value) in &ledger.versions {
        let v = items[id]["version"].as_i64().unwrap();
        match histories[id].get(version) {
            _ if *version > v => bad.push(format!("{id}: acknowledged version {version} lost (now at {v})")),
            Some(e) if e["patch"] != json!({"context": {key: value}}) => {
                bad.push(format!("{id} version {version}: acknowledged {key} = {value}, history says {e}"))
            }
            Some(_) => {}
            None if *version > v - 1_000 => {
                bad.push(format!("{id}: no history entry for acknowledged version {version}"))
            }
            None => {}
        }
    }
    for ((id, key), (acked, sent)) in &ledger.keys {
        let value = items[id]["context"][key].as_i64().unwrap_or(0);
        if value < *acked || value > *sent {
            bad.push(format!("{id}: {key} = {value}, acknowledged {acked}, last sent {sent}"));
        }
    }
    assert_none(&format!("{when}: acknowledged item writes"), &bad);
    items
}

/// The value of `key` on `item` and the item's version, where a writer resumes.
fn resume_at(item: &Value, key: &str) -> (i64, i64) {
    (item["context"][key].as_i64().unwrap_or(0), item["version"].as_i64().unwrap())
}

/// SIGKILL the SQLite server again and again under concurrent writers: after every restart,
/// every acknowledged write is there with its version, and histories are contiguous.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_keeps_acknowledged_item_writes() {
    let cycles = env_usize("FERRY_ITEMS_KILL_CYCLES", 5);
    let writers = env_usize("FERRY_ITEMS_WRITERS", 64);
    const ITEMS: usize = 16;
    bounded(Duration::from_secs(60 + 20 * cycles as u64), "sigkill loop", async {
        let ids: Vec<String> = (0..ITEMS).map(|i| format!("k-{i:02}")).collect();
        let ledger = Arc::new(Mutex::new(KeyLedger::default()));
        let mut dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        for cycle in 0..=cycles {
            let mut server = start_in(dir, None, None).await;
            let api = Api::new(&server.url);
            if cycle == 0 {
                for id in &ids {
                    api.created(json!({"id": id, "title": "crash-tested"})).await;
                }
            }
            let snapshot = ledger.lock().unwrap().clone();
            let items = check_keys(&api, &snapshot, &ids, &format!("after kill {cycle}")).await;
            assert_no_panic(&server);
            if cycle == cycles {
                let status = tokio::task::spawn_blocking(move || server.stop()).await.unwrap();
                assert!(status.success(), "ferry serve exited with {status} after SIGTERM");
                break;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let acks_before = ledger.lock().unwrap().acks;
            let tasks: Vec<_> = (0..writers)
                .map(|w| {
                    let (id, key) = (ids[w % ITEMS].clone(), format!("w{w}"));
                    let at = resume_at(&items[&id], &key);
                    tokio::spawn(key_writer(api.clone(), id, key, at, ledger.clone(), stop.clone()))
                })
                .collect();
            let l = ledger.clone();
            eventually(Duration::from_secs(30), &format!("cycle {cycle}: 200 writes acknowledged"), || {
                let n = l.lock().unwrap().acks;
                async move { n >= acks_before + 200 }
            })
            .await;
            server.kill();
            stop.store(true, Ordering::SeqCst);
            for t in tasks {
                t.await.unwrap();
            }
            dir = server.take_dir();
        }
        let l = ledger.lock().unwrap();
        assert_none("answers other than 200, 503 or a conflict on the writer's own lost write", &l.bad);
        eprintln!(
            "sigkill: {cycles} kills in {:?}, {} writes acknowledged ({} with their version)",
            t0.elapsed(),
            l.acks,
            l.versions.len()
        );
    })
    .await;
}

/// A private PostgreSQL cluster stopped and started under writers: 503 with `Retry-After`
/// while it is down, then the writes resume, and no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_keeps_acknowledged_item_writes() {
    const ITEMS: usize = 4;
    const WRITERS: usize = 16;
    let test = "postgres_restart_keeps_acknowledged_item_writes";
    let Some(pg) = tokio::task::spawn_blocking(move || PrivatePg::start_or_skip(test)).await.unwrap() else {
        return;
    };
    let pg = Arc::new(pg);
    let toml = "[protection]\nbreaker_failures = 3\nbreaker_cooldown_ms = 500\n";
    let server = start_in(tempfile::tempdir().unwrap(), Some(toml), Some(&pg.url())).await;
    bounded(Duration::from_secs(150), test, async {
        let api = Api::new(&server.url);
        let ids: Vec<String> = (0..ITEMS).map(|i| format!("pr-{i}")).collect();
        for id in &ids {
            api.created(json!({"id": id, "title": "outage-tested"})).await;
        }
        let ledger = Arc::new(Mutex::new(KeyLedger::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (id, key) = (ids[w % ITEMS].clone(), format!("w{w}"));
                tokio::spawn(key_writer(api.clone(), id, key, (0, 1), ledger.clone(), stop.clone()))
            })
            .collect();
        let read = |f: fn(&KeyLedger) -> usize| f(&ledger.lock().unwrap());
        eventually(Duration::from_secs(20), "writes acknowledged before the outage", || {
            let n = read(|l| l.acks);
            async move { n >= 50 }
        })
        .await;
        let p = pg.clone();
        tokio::task::spawn_blocking(move || p.down("fast")).await.unwrap().expect("stop PostgreSQL");
        eventually(Duration::from_secs(30), "503 with Retry-After while PostgreSQL is down", || {
            let n = read(|l| l.unavailable);
            async move { n >= 1 }
        })
        .await;
        let p = pg.clone();
        tokio::task::spawn_blocking(move || p.up()).await.unwrap().expect("start PostgreSQL again");
        let back = read(|l| l.acks);
        eventually(Duration::from_secs(30), "writes resume after PostgreSQL is back", || {
            let n = read(|l| l.acks);
            async move { n >= back + 50 }
        })
        .await;
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.unwrap();
        }
        let snapshot = ledger.lock().unwrap().clone();
        assert_none(
            "answers other than 200 or 503 (unavailable, circuit_open) with Retry-After",
            &snapshot.bad,
        );
        check_keys(&api, &snapshot, &ids, "after the PostgreSQL restart").await;
        eprintln!(
            "postgres restart: {} writes acknowledged, {} answered 503 while it was down",
            snapshot.acks, snapshot.unavailable
        );
    })
    .await;
    assert_no_panic(&server);
    drop(server);
    drop(pg);
}
