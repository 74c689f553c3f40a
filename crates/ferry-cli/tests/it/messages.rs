//! Agent messages (issue #17) end to end: the real `ferry serve` over real HTTP, with raw JSON
//! so that the wire contract itself is what is checked (`/work/msg-contract.md`). Scenarios run
//! on SQLite and on PostgreSQL (a database of their own), the rate limit also on three
//! PostgreSQL nodes sharing one database.
//!
//! - `basics_*`: send, receive, ack (and a stale second ack), agent info, 404 for an unknown
//!   agent, dedup, nack, visibility timeout, send order.
//! - `dead_letters_*`: `max_deliveries` unacked deliveries move a message to dead letters;
//!   replay brings it back with its count reset.
//! - `broadcast_*`: every subscriber of `all` receives a broadcast exactly once, the sender never.
//! - `rate_limit_*`: 21 concurrent sends against a burst of 20: exactly one 429 `rate_limited`.
//! - `depth_cap_*`: `limits.max_inbox_depth`: 429 `queue_full` naming the agent, nothing written.
//! - `namespaces_*`: agent `x` and queue `x` are apart; an enqueue does not wake a receive.
//! - `long_poll_*`: a waiting receive is woken by a send.
//! - `limits_sqlite`: every message limit one past its edge (422 or 413 naming the field).
//! - `agent_tokens_sqlite`: tokens restricted to agents (and to queues) on message, job and
//!   item routes.
//! - `slow_broadcasters_postgres_3_nodes`: broadcasts whose commits are held back among fast
//!   ones; no reader's cursor skips one.
//! - `exactly_once_after_ack_*`: many agents receiving (visibility 100 ms) while acking at once,
//!   late, after a nack, or never: every sent message delivered at least once, none by a
//!   receive sent after its ack was answered, the never-acked ones dead after exactly 5
//!   deliveries, nothing acked among the dead letters.
//! - `sigkill_loop_keeps_acknowledged_messages` (SQLite): SIGKILLs under direct sends,
//!   broadcasts, receives and acks on one data directory: no acknowledged send lost, nothing
//!   redelivered after its ack was answered, cursors resume, inboxes drain to empty.
//! - `events_*`: `message.sent` per recipient, `broadcast.sent`, `message.dead`, no bodies, no
//!   event for receives, acks or nacks.
//! - `expiry_*`: a message and a broadcast past their `ttl_ms` are not delivered.
//!
//! Sizes (CI runs on 2 cores; the full sizes are a local soak, set through these):
//! - `FERRY_MSG_BROADCAST_AGENTS` (default 100) receivers of the broadcast test.
//! - `FERRY_MSG_AGENTS` (default 20; the issue says 100) and `FERRY_MSG_TOTAL` (default 2,000;
//!   the issue says 100,000): agents and messages of `exactly_once_after_ack_*`, whose deadline
//!   is 120 s plus 1 s per 500 messages.
//! - `FERRY_MSG_KILL_CYCLES` (default 5; the issue says 20): SIGKILLs of the kill loop, whose
//!   deadline is 60 s plus 20 s a cycle.
//!
//! PostgreSQL tests use `FERRY_TEST_PG_URL` (see `common::pg`) and are skipped with a printed
//! reason without it, unless `FERRY_REQUIRE_PG=1`. Every test body runs under a deadline.

use crate::common::Server;
use crate::common::pg::TestDb;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// The config of most tests: no send rate limit.
const NO_RATE: &str = "[messages]\nrate_per_min = 0\n";

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
    reqwest::Client::builder().timeout(Duration::from_secs(40)).build().unwrap()
}

/// One answer: status, whether `Retry-After` was sent, and the JSON body (`Null` when empty or
/// not JSON).
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    body: Value,
}

impl Answer {
    /// The error code of an error body, or "".
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
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

/// Asserts an error naming `field`, with `status` and `code`.
#[track_caller]
fn refused_field(a: &Answer, status: u16, code: &str, field: &str, what: &str) {
    refused(a, status, code, what);
    assert_eq!(a.body["error"]["field"].as_str(), Some(field), "{what}: the field named: {}", a.brief());
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

    async fn send(&self, what: &str, req: reqwest::RequestBuilder) -> Answer {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let r = req.send().await.unwrap_or_else(|e| panic!("{what} at {}: transport: {e}", self.base));
        let status = r.status().as_u16();
        let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        let text = r.text().await.unwrap_or_else(|e| panic!("{what} at {}: body: {e}", self.base));
        Answer { status, retry_after, body: serde_json::from_str(&text).unwrap_or(Value::Null) }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(&format!("GET {path}"), self.http.get(self.url(path))).await
    }

    async fn post(&self, path: &str, body: &Value) -> Answer {
        self.send(&format!("POST {path} {body}"), self.http.post(self.url(path)).json(body)).await
    }

    async fn put(&self, path: &str, body: &Value) -> Answer {
        self.send(&format!("PUT {path} {body}"), self.http.put(self.url(path)).json(body)).await
    }

    /// `POST /v1/messages`.
    async fn message(&self, body: Value) -> Answer {
        self.post("/v1/messages", &body).await
    }

    /// Sends `body` from `from` to `to` and returns the message id (201 asserted).
    async fn sent(&self, from: &str, to: &[&str], body: Value) -> String {
        let a = self.message(json!({"to": to, "from": from, "body": body})).await;
        let b = ok(&a, 201, &format!("send {from} -> {to:?}"));
        b["id"].as_str().unwrap_or_else(|| panic!("a send answer without id: {}", a.brief())).to_string()
    }

    /// `POST /v1/agents/{agent}/receive` with `body`: the messages (200 asserted).
    async fn receive(&self, agent: &str, body: Value) -> Vec<Value> {
        let a = self.post(&format!("/v1/agents/{agent}/receive"), &body).await;
        ok(&a, 200, &format!("receive {agent} {body}"));
        a.body["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("receive {agent}: no messages array: {}", a.brief()))
            .clone()
    }

    /// Acks or nacks (`verb`) `receipts` of `agent`: the per-receipt results (200 asserted).
    async fn settle(&self, agent: &str, verb: &str, receipts: &[&str]) -> Vec<Value> {
        let a = self.post(&format!("/v1/agents/{agent}/{verb}"), &json!({ "receipts": receipts })).await;
        ok(&a, 200, &format!("{verb} {agent} {receipts:?}"));
        let results = a.body["results"]
            .as_array()
            .unwrap_or_else(|| panic!("{verb} {agent}: no results array: {}", a.brief()))
            .clone();
        assert_eq!(results.len(), receipts.len(), "{verb} {agent}: one result a receipt: {}", a.brief());
        results
    }

    /// Acks one receipt and asserts it was current.
    async fn acked(&self, agent: &str, receipt: &str) {
        let r = self.settle(agent, "ack", &[receipt]).await;
        assert_eq!(r[0]["ok"], true, "ack {agent} {receipt}: {}", r[0]);
    }

    /// `GET /v1/agents/{agent}` (200 asserted).
    async fn agent(&self, agent: &str) -> Value {
        let a = self.get(&format!("/v1/agents/{agent}")).await;
        ok(&a, 200, &format!("GET agent {agent}")).clone()
    }
}

/// The receipt of a received message.
#[track_caller]
fn receipt(m: &Value) -> String {
    m["receipt"].as_str().unwrap_or_else(|| panic!("a message without a receipt string: {m}")).to_string()
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
            let Some(c) = Cluster::postgres(concat!("ferry_msg_", stringify!($scenario)), 1, $toml).await
            else {
                return;
            };
            bounded(Duration::from_secs($secs), stringify!($postgres), $scenario(&c.urls())).await;
            c.assert_no_panic();
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Basics: send, receive, ack, agent info, dedup, nack, visibility, order
// ---------------------------------------------------------------------------------------------

both_backends!(basics, basics_sqlite, basics_postgres, 60, Some(NO_RATE));

async fn basics(urls: &[String]) {
    let api = Api::new(&urls[0]);

    // Send, receive, ack; a second ack of the same receipt is stale.
    let a = api.message(json!({"to": ["b"], "from": "a", "body": {"n": 1}})).await;
    let sent = ok(&a, 201, "send a -> b").clone();
    let id = sent["id"].as_str().expect("an id").to_string();
    assert!(sent["expires_at"].is_string(), "expires_at: {sent}");
    assert_eq!(sent["recipients"], json!([{"agent": "b", "last_seen_at": null}]), "recipients: {sent}");
    assert!(
        !matches!(sent.get("duplicate"), Some(Value::Bool(true))),
        "a first send is no duplicate: {sent}"
    );

    let got = api.receive("b", json!({})).await;
    assert_eq!(got.len(), 1, "b receives one message: {got:?}");
    let m = &got[0];
    assert_eq!(m["id"], id.as_str(), "{m}");
    assert_eq!(m["kind"], "direct", "{m}");
    assert_eq!(m["from"], "a", "{m}");
    assert_eq!(m["body"], json!({"n": 1}), "{m}");
    assert_eq!(m["delivery_count"], 1, "{m}");
    let r = receipt(m);

    let first = api.settle("b", "ack", &[r.as_str()]).await;
    assert_eq!(first[0]["ok"], true, "the first ack: {}", first[0]);
    let again = api.settle("b", "ack", &[r.as_str()]).await;
    assert_eq!(again[0]["ok"], false, "the second ack: {}", again[0]);
    assert_eq!(again[0]["error"]["code"], "stale_lease", "the second ack: {}", again[0]);

    let info = api.agent("b").await;
    assert_eq!(info["name"], "b", "{info}");
    for count in ["ready", "in_flight", "dead"] {
        assert_eq!(info[count], 0, "{count} of b: {info}");
    }
    assert!(info["last_seen_at"].is_string(), "b received, so it was seen: {info}");
    let channels = info["channels"].as_array().unwrap_or_else(|| panic!("no channels array: {info}"));
    assert_eq!(channels.len(), 1, "{info}");
    assert_eq!(channels[0]["channel"], "all", "{info}");
    assert!(channels[0].get("seq").is_some(), "{info}");

    let nobody = api.get("/v1/agents/nobody").await;
    refused(&nobody, 404, "not_found", "GET an agent never named");

    // Dedup: the same from + dedup_key answers the first send again.
    let body = json!({"to": ["b"], "from": "a", "body": {"n": 2}, "dedup_key": "k1"});
    let d1 = api.message(body.clone()).await;
    let d1 = ok(&d1, 201, "the first send with k1").clone();
    let d2 = api.message(body).await;
    let d2 = ok(&d2, 200, "the repeat with k1").clone();
    assert_eq!(d2["duplicate"], true, "{d2}");
    assert_eq!(d2["id"], d1["id"], "the repeat names the first message: {d1} {d2}");
    let got = api.receive("b", json!({"max": 10})).await;
    assert_eq!(got.len(), 1, "a deduplicated send is stored once: {got:?}");
    assert_eq!(got[0]["id"], d1["id"]);
    api.acked("b", &receipt(&got[0])).await;

    // Nack: the message comes back at once, counted, with a new receipt; the old one is stale.
    let nid = api.sent("a", &["n"], json!({"n": 3})).await;
    let got = api.receive("n", json!({})).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let old = receipt(&got[0]);
    let nacked = api.settle("n", "nack", &[old.as_str()]).await;
    assert_eq!(nacked[0]["ok"], true, "nack: {}", nacked[0]);
    let got = api.receive("n", json!({})).await;
    assert_eq!(got.len(), 1, "the nacked message is back: {got:?}");
    assert_eq!(got[0]["id"], nid.as_str());
    assert_eq!(got[0]["delivery_count"], 2, "{}", got[0]);
    let new = receipt(&got[0]);
    assert_ne!(new, old, "a new delivery has a new receipt");
    let stale = api.settle("n", "ack", &[old.as_str()]).await;
    assert_eq!(stale[0]["ok"], false, "the old receipt: {}", stale[0]);
    assert_eq!(stale[0]["error"]["code"], "stale_lease", "the old receipt: {}", stale[0]);
    api.acked("n", &new).await;

    // Visibility: an unacked message comes back once its visibility ends.
    let vid = api.sent("a", &["v"], json!({"n": 4})).await;
    let got = api.receive("v", json!({"visibility_ms": 50})).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["delivery_count"], 1, "{}", got[0]);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let got = api.receive("v", json!({})).await;
    assert_eq!(got.len(), 1, "the message is visible again: {got:?}");
    assert_eq!(got[0]["id"], vid.as_str());
    assert_eq!(got[0]["delivery_count"], 2, "{}", got[0]);
    api.acked("v", &receipt(&got[0])).await;

    // Order: oldest first.
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(api.sent("a", &["c"], json!({"i": i})).await);
    }
    let got = api.receive("c", json!({"max": 10})).await;
    let got_ids: Vec<&str> = got.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(got_ids, ids.iter().map(String::as_str).collect::<Vec<_>>(), "send order: {got:?}");
    for (i, m) in got.iter().enumerate() {
        assert_eq!(m["body"], json!({"i": i}), "{m}");
    }
}

// ---------------------------------------------------------------------------------------------
// Dead letters: max_deliveries unacked deliveries, then replay
// ---------------------------------------------------------------------------------------------

both_backends!(
    dead_letters,
    dead_letters_sqlite,
    dead_letters_postgres,
    60,
    Some("[messages]\nrate_per_min = 0\nmax_deliveries = 2\n")
);

async fn dead_letters(urls: &[String]) {
    let api = Api::new(&urls[0]);
    let id = api.sent("a", &["d"], json!({"doomed": true})).await;
    for delivery in 1..=2 {
        let got = api.receive("d", json!({})).await;
        assert_eq!(got.len(), 1, "delivery {delivery}: {got:?}");
        assert_eq!(got[0]["id"], id.as_str());
        assert_eq!(got[0]["delivery_count"], delivery, "{}", got[0]);
        let r = api.settle("d", "nack", &[receipt(&got[0]).as_str()]).await;
        assert_eq!(r[0]["ok"], true, "nack {delivery}: {}", r[0]);
    }
    let got = api.receive("d", json!({})).await;
    assert!(got.is_empty(), "past max_deliveries the message is dead, not delivered: {got:?}");

    let dead = api.get("/v1/agents/d/dead").await;
    let dead = ok(&dead, 200, "GET dead of d").clone();
    let list = dead["messages"].as_array().unwrap_or_else(|| panic!("no messages array: {dead}"));
    assert_eq!(list.len(), 1, "one dead message: {dead}");
    assert_eq!(list[0]["id"], id.as_str(), "{dead}");
    assert_eq!(list[0]["from"], "a", "{dead}");
    assert_eq!(list[0]["body"], json!({"doomed": true}), "{dead}");
    assert!(list[0]["dead_at"].is_string(), "{dead}");
    assert_eq!(api.agent("d").await["dead"], 1, "the agent counts its dead message");

    let replayed = api.post("/v1/agents/d/dead/replay", &json!({})).await;
    assert_eq!(ok(&replayed, 200, "replay d")["replayed"], 1, "{}", replayed.brief());
    let got = api.receive("d", json!({})).await;
    assert_eq!(got.len(), 1, "the replayed message is delivered: {got:?}");
    assert_eq!(got[0]["id"], id.as_str());
    assert_eq!(got[0]["delivery_count"], 1, "replay resets the count: {}", got[0]);
    api.acked("d", &receipt(&got[0])).await;
    let dead = api.get("/v1/agents/d/dead").await;
    assert_eq!(ok(&dead, 200, "GET dead of d after replay")["messages"], json!([]), "{}", dead.brief());
}

// ---------------------------------------------------------------------------------------------
// Broadcast: every subscriber once, never the sender
// ---------------------------------------------------------------------------------------------

both_backends!(broadcast, broadcast_sqlite, broadcast_postgres, 120, Some(NO_RATE));

async fn broadcast(urls: &[String]) {
    let api = Api::new(&urls[0]);
    let n = env_usize("FERRY_MSG_BROADCAST_AGENTS", 100);
    let agents: Vec<String> = (1..=n).map(|i| format!("r{i}")).collect();

    // Name every receiver first (subscribed to `all` at its head).
    futures_util::stream::iter(agents.iter().map(|r| {
        let api = api.clone();
        async move {
            let a = api.put(&format!("/v1/agents/{r}/channels"), &json!({"channels": ["all"]})).await;
            let b = ok(&a, 200, &format!("PUT channels of {r}"));
            let cs = b["channels"].as_array().unwrap_or_else(|| panic!("no channels array: {}", a.brief()));
            assert_eq!(cs.len(), 1, "{r}: {}", a.brief());
            assert_eq!(cs[0]["channel"], "all", "{r}: {}", a.brief());
        }
    }))
    .buffer_unordered(16)
    .collect::<Vec<()>>()
    .await;

    let a = api.post("/v1/broadcasts", &json!({"from": "caster", "body": {}})).await;
    let sent = ok(&a, 201, "broadcast from caster").clone();
    let id = sent["id"].as_str().unwrap_or_else(|| panic!("no id: {sent}")).to_string();
    assert_eq!(sent["channel"], "all", "{sent}");
    assert!(sent["seq"].is_u64() || sent["seq"].is_i64(), "seq: {sent}");
    assert!(sent["expires_at"].is_string(), "expires_at: {sent}");

    let errors: Vec<String> = futures_util::stream::iter(agents.iter().map(|r| {
        let api = api.clone();
        let id = id.clone();
        async move {
            let got = api.receive(r, json!({"max": 10})).await;
            if got.len() != 1 {
                return Some(format!("{r} received {} messages: {got:?}", got.len()));
            }
            let m = &got[0];
            if m["id"] != id.as_str()
                || m["kind"] != "broadcast"
                || m["channel"] != "all"
                || m["from"] != "caster"
            {
                return Some(format!("{r} received another message than the broadcast: {m}"));
            }
            api.acked(r, &receipt(m)).await;
            let again = api.receive(r, json!({"max": 10})).await;
            if !again.is_empty() {
                return Some(format!("{r} received the broadcast twice: {again:?}"));
            }
            None
        }
    }))
    .buffer_unordered(16)
    .filter_map(|e| async move { e })
    .collect()
    .await;
    assert!(
        errors.is_empty(),
        "{} receivers failed, first ones:\n{}",
        errors.len(),
        errors[..errors.len().min(12)].join("\n")
    );

    let own = api.receive("caster", json!({"max": 10})).await;
    assert!(own.is_empty(), "the caster never receives its own broadcast: {own:?}");
}

// ---------------------------------------------------------------------------------------------
// Rate limit: a burst of 20, the 21st concurrent send refused
// ---------------------------------------------------------------------------------------------

/// A burst of 20, refilled at 1 a minute so no token comes back while the 21 sends run (refill
/// at 100 a minute is checked on a virtual clock in the store conformance rules).
const RATE: &str = "[messages]\nrate_per_min = 1\nrate_burst = 20\n";

both_backends!(rate_limit, rate_limit_sqlite, rate_limit_postgres, 60, Some(RATE));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_postgres_3_nodes() {
    let Some(c) = Cluster::postgres("ferry_msg_rate3", 3, Some(RATE)).await else { return };
    bounded(Duration::from_secs(60), "rate_limit_postgres_3_nodes", rate_limit(&c.urls())).await;
    c.assert_no_panic();
}

/// 21 concurrent sends from one agent, spread over the nodes: exactly 20 stored, one 429
/// `rate_limited` with `Retry-After` (the bucket is in the database, shared by every node).
async fn rate_limit(urls: &[String]) {
    let apis = Api::all(urls);
    // One request per node first, so connections are open before the burst starts.
    for api in &apis {
        ok(&api.get("/v1/agents/nobody").await, 404, "warm-up");
    }
    let answers = futures_util::future::join_all((0..21).map(|i| {
        let api = apis[i % apis.len()].clone();
        async move { api.message(json!({"to": ["sink"], "from": "chatty", "body": {"i": i}})).await }
    }))
    .await;
    let created = answers.iter().filter(|a| a.status == 201).count();
    let limited: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    let briefs: Vec<String> = answers.iter().map(Answer::brief).collect();
    assert_eq!((created, limited.len()), (20, 1), "20 created and 1 refused: {briefs:#?}");
    let a = limited[0];
    refused(a, 429, "rate_limited", "the 21st send");
    let after = a.retry_after.as_deref().unwrap_or_else(|| panic!("429 without Retry-After: {}", a.brief()));
    assert!(after.trim().parse::<u64>().is_ok(), "Retry-After is whole seconds: {after:?}");

    // Nothing of the refused send was stored; another sender has a bucket of its own.
    let got = apis[0].receive("sink", json!({"max": 100})).await;
    assert_eq!(got.len(), 20, "the stored sends: {got:?}");
    apis[0].sent("quiet", &["sink"], json!({})).await;
}

// ---------------------------------------------------------------------------------------------
// Depth cap: limits.max_inbox_depth
// ---------------------------------------------------------------------------------------------

both_backends!(
    depth_cap,
    depth_cap_sqlite,
    depth_cap_postgres,
    60,
    Some("[messages]\nrate_per_min = 0\n[limits]\nmax_inbox_depth = 10\n")
);

async fn depth_cap(urls: &[String]) {
    let api = Api::new(&urls[0]);
    for i in 0..10 {
        api.sent("a", &["d"], json!({"i": i})).await;
    }
    let full = api.message(json!({"to": ["d"], "from": "a", "body": {"i": 10}})).await;
    let details = refused(&full, 429, "queue_full", "the 11th message to d");
    assert_eq!(details["agent"], "d", "details name the full inbox: {}", full.brief());

    // One full recipient refuses the whole send: nothing is written for the other.
    let both = api.message(json!({"to": ["e", "d"], "from": "a", "body": {}})).await;
    let details = refused(&both, 429, "queue_full", "a send to e and the full d");
    assert_eq!(details["agent"], "d", "{}", both.brief());
    refused(&api.get("/v1/agents/e").await, 404, "not_found", "e after the refused send");

    let info = api.agent("d").await;
    assert_eq!(info["ready"], 10, "d holds its 10 messages: {info}");

    // In-flight messages count too; acking makes room.
    let got = api.receive("d", json!({"max": 1})).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let still = api.message(json!({"to": ["d"], "from": "a", "body": {}})).await;
    refused(&still, 429, "queue_full", "a send to d with one message in flight");
    api.acked("d", &receipt(&got[0])).await;
    api.sent("a", &["d"], json!({"room": true})).await;
}

// ---------------------------------------------------------------------------------------------
// Namespaces: agent x and queue x are apart
// ---------------------------------------------------------------------------------------------

both_backends!(namespaces, namespaces_sqlite, namespaces_postgres, 60, Some(NO_RATE));

async fn namespaces(urls: &[String]) {
    let api = Api::new(&urls[0]);
    let job = api.post("/v1/jobs", &json!({"queue": "x", "payload": {}})).await;
    let job_id = ok(&job, 201, "enqueue on x")["id"].as_str().expect("a job id").to_string();
    let msg_id = api.sent("a", &["x"], json!({"for": "agent x"})).await;

    let got = api.receive("x", json!({"max": 10})).await;
    assert_eq!(got.len(), 1, "agent x receives only its message: {got:?}");
    assert_eq!(got[0]["id"], msg_id.as_str());
    assert_eq!(got[0]["kind"], "direct");

    let claim = api.post("/v1/queues/x/claim", &json!({"worker": "w1", "max": 10, "lease_ms": 60000})).await;
    let jobs = ok(&claim, 200, "claim on x")["jobs"].as_array().expect("a jobs array").clone();
    assert_eq!(jobs.len(), 1, "queue x hands out only its job: {}", claim.brief());
    assert_eq!(jobs[0]["id"], job_id.as_str());

    // An enqueue on queue y (or agent:y) does not end a wait of agent y.
    ok(&api.put("/v1/agents/y/channels", &json!({"channels": ["all"]})).await, 200, "name agent y");
    let waiter = {
        let api = api.clone();
        tokio::spawn(async move {
            let t = Instant::now();
            let got = api.receive("y", json!({"wait_ms": 1000})).await;
            (t.elapsed(), got)
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    for queue in ["y", "agent:y", "agent/y"] {
        let a = api.post("/v1/jobs", &json!({"queue": queue, "payload": {}})).await;
        if queue != "agent/y" {
            ok(&a, 201, &format!("enqueue on {queue}"));
        }
    }
    let (took, got) = waiter.await.unwrap();
    assert!(got.is_empty(), "agent y has no message: {got:?}");
    assert!(took >= Duration::from_millis(900), "the wait ended early ({took:?}): an enqueue woke it");
}

// ---------------------------------------------------------------------------------------------
// Long poll: a send wakes a waiting receive
// ---------------------------------------------------------------------------------------------

both_backends!(long_poll, long_poll_sqlite, long_poll_postgres, 60, Some(NO_RATE));

async fn long_poll(urls: &[String]) {
    let api = Api::new(&urls[0]);
    let t = Instant::now();
    let waiter = {
        let api = api.clone();
        tokio::spawn(async move { api.receive("w", json!({"wait_ms": 10000})).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let id = api.sent("a", &["w"], json!({"wake": true})).await;
    let got = waiter.await.unwrap();
    let took = t.elapsed();
    assert_eq!(got.len(), 1, "the waiting receive gets the message: {got:?}");
    assert_eq!(got[0]["id"], id.as_str());
    assert!(took < Duration::from_secs(3), "the send woke the wait only after {took:?}");
}

// ---------------------------------------------------------------------------------------------
// Limits: every message limit one past its edge
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_sqlite() {
    let c = Cluster::sqlite(Some(NO_RATE)).await;
    bounded(Duration::from_secs(60), "limits_sqlite", limits(&c.urls()[0])).await;
    c.assert_no_panic();
    let small =
        Cluster::sqlite(Some("[messages]\nrate_per_min = 0\n[limits]\nmax_message_bytes = 100\n")).await;
    bounded(Duration::from_secs(30), "limits_sqlite (max_message_bytes)", message_bytes(&small.urls()[0]))
        .await;
    small.assert_no_panic();
}

async fn limits(url: &str) {
    let api = Api::new(url);
    let send = |extra: Value| {
        let mut body = json!({"to": ["b"], "from": "a", "body": {}});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let many: Vec<String> = (0..101).map(|i| format!("r{i}")).collect();
    let sends = [
        (send(json!({"to": []})), "to"),
        (send(json!({"to": many})), "to"),
        (send(json!({"ttl_ms": 0})), "ttl_ms"),
        (send(json!({"ttl_ms": 604_800_001_i64})), "ttl_ms"),
        (send(json!({"dedup_key": "k".repeat(257)})), "dedup_key"),
        (send(json!({"from": "a/b"})), "from"),
    ];
    for (body, field) in sends {
        let a = api.message(body.clone()).await;
        refused_field(&a, 422, "validation_failed", field, &format!("send {body}"));
    }
    // The edges themselves are accepted.
    let edge: Vec<String> = (0..100).map(|i| format!("r{i}")).collect();
    ok(&api.message(send(json!({"to": edge}))).await, 201, "100 recipients");
    ok(&api.message(send(json!({"ttl_ms": 604_800_000_i64}))).await, 201, "the longest ttl");
    ok(&api.message(send(json!({"dedup_key": "k".repeat(256)}))).await, 201, "the longest dedup_key");
    // Nothing refused was stored.
    let got = api.receive("b", json!({"max": 100})).await;
    assert_eq!(got.len(), 2, "b holds only the two accepted sends to it: {got:?}");

    let receives = [
        (json!({"max": 0}), "max"),
        (json!({"max": 1001}), "max"),
        (json!({"wait_ms": 30001}), "wait_ms"),
        (json!({"visibility_ms": 9}), "visibility_ms"),
    ];
    for (body, field) in receives {
        let a = api.post("/v1/agents/b/receive", &body).await;
        refused_field(&a, 422, "validation_failed", field, &format!("receive {body}"));
    }

    let acks = [(json!({"receipts": []}), "receipts"), (json!({"receipts": ["nope"]}), "receipts[0]")];
    for (body, field) in acks {
        for verb in ["ack", "nack"] {
            let a = api.post(&format!("/v1/agents/b/{verb}"), &body).await;
            refused_field(&a, 422, "validation_failed", field, &format!("{verb} {body}"));
        }
    }

    let channels: Vec<String> = (0..65).map(|i| format!("c{i}")).collect();
    let a = api.put("/v1/agents/b/channels", &json!({ "channels": channels })).await;
    refused_field(&a, 422, "validation_failed", "channels", "65 channels");
    let a = api.put("/v1/agents/b/channels", &json!({ "channels": &channels[..64] })).await;
    ok(&a, 200, "64 channels");
}

/// `limits.max_message_bytes = 100`: a body of 200 bytes is 413 naming `body`.
async fn message_bytes(url: &str) {
    let api = Api::new(url);
    let big = json!({"s": "x".repeat(200)});
    let a = api.message(json!({"to": ["b"], "from": "a", "body": big})).await;
    refused_field(&a, 413, "payload_too_large", "body", "a 200-byte message body");
    let a = api.post("/v1/broadcasts", &json!({"from": "a", "body": big})).await;
    refused_field(&a, 413, "payload_too_large", "body", "a 200-byte broadcast body");
    ok(&api.message(json!({"to": ["b"], "from": "a", "body": {"s": "small"}})).await, 201, "a small body");
}

// ---------------------------------------------------------------------------------------------
// Tokens restricted to agents (and to queues)
// ---------------------------------------------------------------------------------------------

/// Mints a token through `api` (tokenless for the first one): its secret (201 asserted).
async fn mint(api: &Api, body: Value) -> String {
    let a = api.post("/v1/tokens", &body).await;
    let b = ok(&a, 201, &format!("mint {body}"));
    b["token"].as_str().unwrap_or_else(|| panic!("no token secret: {}", a.brief())).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_tokens_sqlite() {
    let c = Cluster::sqlite(Some(NO_RATE)).await;
    bounded(Duration::from_secs(60), "agent_tokens_sqlite", agent_tokens(&c.urls()[0])).await;
    c.assert_no_panic();
}

async fn agent_tokens(url: &str) {
    let anon = Api::new(url);
    // The first token may be minted without one; from then on auth is on.
    let root = anon.as_token(&mint(&anon, json!({"name": "root", "scopes": ["admin"]})).await);
    root.sent("b", &["a"], json!({"from": "b"})).await;
    root.sent("zz0", &["b"], json!({})).await;
    let ag = root.as_token(
        &mint(&root, json!({"name": "ag", "scopes": ["messages", "read", "items"], "agents": ["a"]})).await,
    );

    // Sends: only as a.
    ok(&ag.message(json!({"to": ["b"], "from": "a", "body": {}})).await, 201, "send as a");
    let a = ag.message(json!({"to": ["a"], "from": "b", "body": {}})).await;
    refused(&a, 403, "forbidden", "send as b");
    let a = ag.post("/v1/broadcasts", &json!({"from": "b", "body": {}})).await;
    refused(&a, 403, "forbidden", "broadcast as b");

    // Its own inbox works; another agent's, known or not, is the same 403.
    let got = ag.receive("a", json!({})).await;
    assert_eq!(got.len(), 1, "a's message from b: {got:?}");
    ag.acked("a", &receipt(&got[0])).await;
    let known = ag.post("/v1/agents/b/receive", &json!({})).await;
    refused(&known, 403, "forbidden", "receive as b");
    let unknown = ag.post("/v1/agents/zz/receive", &json!({})).await;
    refused(&unknown, 403, "forbidden", "receive as zz (never named)");
    assert_eq!(known.body, unknown.body, "a known and an unknown agent are refused alike");
    for (path, body) in
        [("/v1/agents/b/ack", json!({"receipts": ["nope"]})), ("/v1/agents/b/dead/replay", json!({}))]
    {
        refused(&ag.post(path, &body).await, 403, "forbidden", path);
    }
    refused(
        &ag.put("/v1/agents/b/channels", &json!({"channels": ["all"]})).await,
        403,
        "forbidden",
        "channels of b",
    );
    refused(&ag.get("/v1/agents/b").await, 403, "forbidden", "GET agent b");
    refused(&ag.get("/v1/agents/b/dead").await, 403, "forbidden", "GET dead of b");
    ok(&ag.get("/v1/agents/a").await, 200, "GET agent a");

    // The agent list holds only its own agents.
    let list = ag.get("/v1/agents").await;
    let names: BTreeSet<&str> = ok(&list, 200, "GET /v1/agents")["agents"]
        .as_array()
        .unwrap_or_else(|| panic!("no agents array: {}", list.brief()))
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["a"]), "{}", list.brief());
    let all = root.get("/v1/agents").await;
    assert!(
        ok(&all, 200, "GET /v1/agents as root")["agents"].as_array().unwrap().len() >= 3,
        "{}",
        all.brief()
    );

    // Job routes are closed to a token restricted to agents, even with every scope.
    refused(&ag.post("/v1/jobs", &json!({"queue": "q", "payload": {}})).await, 403, "forbidden", "enqueue");
    let ag_admin =
        root.as_token(&mint(&root, json!({"name": "ag-admin", "scopes": ["admin"], "agents": ["a"]})).await);
    refused(
        &ag_admin.post("/v1/jobs", &json!({"queue": "q", "payload": {}})).await,
        403,
        "forbidden",
        "enqueue (admin)",
    );
    let claim = json!({"worker": "w1", "max": 1, "lease_ms": 60000});
    refused(&ag_admin.post("/v1/queues/q/claim", &claim).await, 403, "forbidden", "claim (admin)");

    // Item writes must name one of its agents.
    let a = ag.post("/v1/items", &json!({"id": "it-a", "title": "t", "agent": "a"})).await;
    ok(&a, 201, "create an item as a");
    let a = ag.post("/v1/items", &json!({"id": "it-b", "title": "t", "agent": "b"})).await;
    refused(&a, 403, "forbidden", "create an item as b");
    let a = ag.post("/v1/items", &json!({"id": "it-none", "title": "t"})).await;
    refused(&a, 403, "forbidden", "create an item without agent");
    ok(&ag.get("/v1/items/it-a").await, 200, "read an item");

    // A token restricted to queues gets no message route.
    let qa = root.as_token(&mint(&root, json!({"name": "qa", "scopes": ["admin"], "queues": ["q"]})).await);
    refused(
        &qa.post("/v1/agents/a/receive", &json!({})).await,
        403,
        "forbidden",
        "receive with a queue token",
    );
    let a = qa.message(json!({"to": ["b"], "from": "a", "body": {}})).await;
    refused(&a, 403, "forbidden", "send with a queue token");
    // The list either refuses it or names no agent (it is restricted to none).
    let list = qa.get("/v1/agents").await;
    if list.status != 403 {
        assert_eq!(list.status, 200, "list agents with a queue token: {}", list.brief());
        assert_eq!(list.body["agents"], json!([]), "a queue token sees no agent: {}", list.brief());
    }
}

// ---------------------------------------------------------------------------------------------
// Slow broadcasters on three PostgreSQL nodes: no cursor skips a broadcast that commits late
// ---------------------------------------------------------------------------------------------

/// Broadcasters `slow-*` hold their transaction open 300 ms after inserting (the
/// `FERRY_TEST_HOLD_BROADCAST` hook) while `fast-*` ones commit at once, all on channel `all`
/// through three nodes; readers subscribed before the first send, receiving throughout on every
/// node, each get every broadcast exactly once (a sequence handed out before a late commit
/// would let a cursor pass it).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_broadcasters_postgres_3_nodes() {
    let Some(db) = TestDb::create("ferry_msg_slow").await else { return };
    let toml = "pg_pool_size = 6\n[messages]\nrate_per_min = 0\n";
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ferry.toml"), toml).unwrap();
        let url = db.url.clone();
        nodes.push(
            tokio::task::spawn_blocking(move || {
                Server::start_with_env(
                    &["--database", url.as_str()],
                    dir,
                    &[("FERRY_TEST_HOLD_BROADCAST", "slow-*:300")],
                )
            })
            .await
            .unwrap(),
        );
    }
    let urls: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    bounded(Duration::from_secs(120), "slow_broadcasters_postgres_3_nodes", async {
        let apis = Api::all(&urls);
        let readers: Vec<String> = (0..3).map(|i| format!("reader-{i}")).collect();
        for r in &readers {
            ok(
                &apis[0].put(&format!("/v1/agents/{r}/channels"), &json!({"channels": ["all"]})).await,
                200,
                "subscribe",
            );
        }
        let done = Arc::new(AtomicBool::new(false));
        // Readers receive (and ack) on every node while the broadcasts commit.
        let mut tasks = Vec::new();
        for (i, r) in readers.iter().enumerate() {
            let (api, r, done) = (apis[i % apis.len()].clone(), r.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut seen: Vec<String> = Vec::new();
                let mut quiet_rounds = 0;
                loop {
                    let got = api.receive(&r, json!({"max": 100, "wait_ms": 200})).await;
                    for m in &got {
                        seen.push(m["id"].as_str().unwrap().to_string());
                        api.acked(&r, m["receipt"].as_str().unwrap()).await;
                    }
                    if done.load(Ordering::SeqCst) && got.is_empty() {
                        quiet_rounds += 1;
                        if quiet_rounds >= 3 {
                            return seen;
                        }
                    }
                }
            }));
        }
        let sends = futures_util::future::join_all((0..24).map(|i| {
            let api = apis[i % apis.len()].clone();
            let from = if i % 3 == 0 { format!("slow-{i}") } else { format!("fast-{i}") };
            async move {
                let a = api.post("/v1/broadcasts", &json!({"from": from, "body": {"i": i}})).await;
                ok(&a, 201, "broadcast")["id"].as_str().unwrap().to_string()
            }
        }))
        .await;
        done.store(true, Ordering::SeqCst);
        let mut sent = sends.clone();
        sent.sort();
        for t in tasks {
            let mut seen = t.await.unwrap();
            let n = seen.len();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), n, "a broadcast delivered twice after its ack");
            assert_eq!(seen, sent, "every broadcast reaches every reader, late commits included");
        }
    })
    .await;
    for n in &nodes {
        assert_no_panic(n);
    }
}

// ---------------------------------------------------------------------------------------------
// Exactly once after ack, at least once before
// ---------------------------------------------------------------------------------------------

#[track_caller]
fn assert_none(what: &str, errors: &[String]) {
    assert!(
        errors.is_empty(),
        "{what}: {} failures, first ones:\n{}",
        errors.len(),
        errors.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
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

/// One delivery of a message to an agent: when the receive that got it was sent, and its count.
#[derive(Debug, Clone)]
struct Delivery {
    started: Instant,
    count: u64,
}

/// What one agent saw of one message.
#[derive(Debug, Default)]
struct Seen {
    deliveries: Vec<Delivery>,
    /// When the earliest ack answered `ok: true` was answered.
    acked_at: Option<Instant>,
}

/// Deliveries and acks by (agent, message id).
type Ledger = Arc<Mutex<HashMap<(String, String), Seen>>>;

/// Records a delivery of `m` to `agent` by a receive sent at `started`; returns its id and count.
#[track_caller]
fn record_delivery(
    l: &mut HashMap<(String, String), Seen>,
    agent: &str,
    m: &Value,
    started: Instant,
) -> (String, u64) {
    let id = m["id"].as_str().unwrap_or_else(|| panic!("{agent}: a message without id: {m}")).to_string();
    let count = m["delivery_count"].as_u64().unwrap_or_else(|| panic!("{agent}: no delivery_count: {m}"));
    l.entry((agent.to_string(), id.clone())).or_default().deliveries.push(Delivery { started, count });
    (id, count)
}

/// Records an ack of `id` by `agent` answered `ok: true` at `at`.
fn record_ack(l: &mut HashMap<(String, String), Seen>, agent: &str, id: &str, at: Instant) {
    let s = l.entry((agent.to_string(), id.to_string())).or_default();
    s.acked_at = Some(s.acked_at.map_or(at, |t| t.min(at)));
}

/// Deliveries by a receive sent after the agent's ack of the message was answered.
fn delivered_after_ack(l: &HashMap<(String, String), Seen>) -> Vec<String> {
    let mut out = Vec::new();
    for ((agent, id), seen) in l {
        let Some(acked) = seen.acked_at else { continue };
        for d in seen.deliveries.iter().filter(|d| d.started > acked) {
            out.push(format!(
                "{agent}: {id} delivered again (delivery_count {}) by a receive sent {:?} after its ack was answered",
                d.count,
                d.started - acked
            ));
        }
    }
    out.sort();
    out
}

/// Every dead letter of `agent`, page by page (7 a page, so the cursor is used).
async fn all_dead(api: &Api, agent: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/agents/{agent}/dead?limit=7&cursor={}", pct(c)),
            None => format!("/v1/agents/{agent}/dead?limit=7"),
        };
        let a = api.get(&path).await;
        let b = ok(&a, 200, &format!("GET {path}"));
        let page = b["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("GET {path}: no messages array: {}", a.brief()));
        assert!(page.len() <= 7, "GET {path}: more than the limit: {}", a.brief());
        out.extend(page.iter().cloned());
        match b["next_cursor"].as_str() {
            Some(c) => {
                assert!(!page.is_empty(), "GET {path}: an empty page with a next cursor: {}", a.brief());
                cursor = Some(c.to_string());
            }
            None => return out,
        }
    }
}

/// `max_deliveries = 5`, no rate limit.
const FIVE_DELIVERIES: &str = "[messages]\nrate_per_min = 0\nmax_deliveries = 5\n";

both_backends!(
    exactly_once_after_ack,
    exactly_once_after_ack_sqlite,
    exactly_once_after_ack_postgres,
    120 + env_usize("FERRY_MSG_TOTAL", 2_000) as u64 / 500,
    Some(FIVE_DELIVERIES)
);

/// Sends `FERRY_MSG_TOTAL` messages (body `{"n": i}`) from 8 senders to `FERRY_MSG_AGENTS`
/// agents while one receiver per agent receives (visibility 100 ms) and, by `n % 10`: 0 never
/// acks, 1 nacks the first delivery and acks the second, 2 acks 150 ms late (past the
/// visibility; if the ack is stale the message comes back and that delivery is acked at once),
/// else acks at once. Every sent message is delivered at least once, none by a receive sent
/// after its ack was answered, the never-acked ones end dead after exactly 5 deliveries and the
/// others acked.
async fn exactly_once_after_ack(urls: &[String]) {
    const SENDERS: usize = 8;
    let api = Api::new(&urls[0]);
    let agents_n = env_usize("FERRY_MSG_AGENTS", 20).max(1);
    let total = env_usize("FERRY_MSG_TOTAL", 2_000);
    let agents: Vec<String> = (0..agents_n).map(|i| format!("a{i}")).collect();
    let ledger = Ledger::default();
    let done = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();

    let receivers: Vec<_> = agents
        .iter()
        .map(|a| tokio::spawn(once_receiver(api.clone(), a.clone(), ledger.clone(), done.clone())))
        .collect();
    let senders: Vec<_> = (0..SENDERS)
        .map(|k| {
            let (api, agents) = (api.clone(), agents.clone());
            tokio::spawn(async move {
                let from = format!("s{k}");
                let mut sent = Vec::new();
                for i in (k..total).step_by(SENDERS) {
                    let to = agents[i % agents.len()].clone();
                    let id = api.sent(&from, &[to.as_str()], json!({ "n": i })).await;
                    sent.push((id, to, i));
                }
                sent
            })
        })
        .collect();
    let mut sent: Vec<(String, String, usize)> = Vec::new();
    for s in senders {
        sent.extend(s.await.unwrap());
    }
    assert_eq!(sent.len(), total);
    let sending = t0.elapsed();

    // The end: no inbox holds anything ready or in flight (every message acked or dead).
    let named = &agents[..agents.len().min(total)];
    loop {
        // A receiver ends only when told to: one ended early panicked (shown when joined).
        if receivers.iter().any(|r| r.is_finished()) {
            break;
        }
        let mut clear = true;
        for a in named {
            let info = api.agent(a).await;
            if info["ready"] != 0 || info["in_flight"] != 0 {
                clear = false;
                break;
            }
        }
        if clear {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    done.store(true, Ordering::SeqCst);
    let mut errors = Vec::new();
    for r in receivers {
        errors.extend(r.await.unwrap());
    }
    assert_none("receivers (acks and nacks of receipts no other receive replaced)", &errors);

    let to_of: HashMap<&str, (&str, usize)> =
        sent.iter().map(|(id, to, n)| (id.as_str(), (to.as_str(), *n))).collect();
    assert_eq!(to_of.len(), total, "every 201 answer names a message of its own");
    let mut never: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    let deliveries = {
        let l = ledger.lock().unwrap();
        let mut errors = Vec::new();
        for (agent, id) in l.keys() {
            if to_of.get(id.as_str()).is_none_or(|(to, _)| *to != agent.as_str()) {
                errors.push(format!("{agent} received {id}, which no 201 answer sent to it"));
            }
        }
        for (id, to, n) in &sent {
            let Some(seen) = l.get(&(to.clone(), id.clone())).filter(|s| !s.deliveries.is_empty()) else {
                errors.push(format!("{to}: message {n} ({id}) was never delivered"));
                continue;
            };
            let counts: Vec<u64> = seen.deliveries.iter().map(|d| d.count).collect();
            let (fine, expected) = match n % 10 {
                0 => (counts == [1, 2, 3, 4, 5], "[1, 2, 3, 4, 5] (never acked)"),
                1 => (counts == [1, 2], "[1, 2] (nacked once, then acked)"),
                2 => (counts == [1] || counts == [1, 2], "[1] or [1, 2] (acked late)"),
                _ => (counts == [1], "[1] (acked at once)"),
            };
            if !fine {
                errors.push(format!(
                    "{to}: message {n} ({id}) delivered with counts {counts:?}, not {expected}"
                ));
            }
            if n % 10 == 0 {
                never.entry(to.as_str()).or_default().insert(id.as_str());
            } else if seen.acked_at.is_none() {
                errors.push(format!("{to}: message {n} ({id}) was never acked"));
            }
        }
        assert_none("deliveries", &errors);
        assert_none("deliveries after the ack was answered", &delivered_after_ack(&l));
        l.values().map(|s| s.deliveries.len()).sum::<usize>()
    };

    // Never-acked messages are dead after 5 deliveries; nothing acked is.
    let mut errors = Vec::new();
    for a in named {
        let dead = all_dead(&api, a).await;
        let mut ids = BTreeSet::new();
        for m in &dead {
            let id = m["id"].as_str().unwrap_or_else(|| panic!("a dead letter without id: {m}"));
            if !ids.insert(id) {
                errors.push(format!("{a}: {id} listed twice among the dead letters"));
            }
            if m["delivery_count"] != 5 {
                errors.push(format!("{a}: dead letter {id} after {} deliveries, not 5", m["delivery_count"]));
            }
        }
        let expected = never.remove(a.as_str()).unwrap_or_default();
        if ids != expected {
            errors.push(format!(
                "{a}: dead letters {ids:?} are not the never-acked messages {expected:?} (acked ones dead: {:?})",
                ids.difference(&expected).collect::<Vec<_>>()
            ));
        }
    }
    assert_none("dead letters", &errors);
    eprintln!(
        "exactly once: {total} messages to {} agents sent in {sending:?}, settled in {:?}, {deliveries} deliveries",
        agents.len(),
        t0.elapsed()
    );
}

/// The receiver of one agent in `exactly_once_after_ack` until `done`: the errors it saw.
async fn once_receiver(api: Api, agent: String, ledger: Ledger, done: Arc<AtomicBool>) -> Vec<String> {
    let mut late = Vec::new();
    let mut errors = Vec::new();
    while !done.load(Ordering::SeqCst) {
        let started = Instant::now();
        let got = api.receive(&agent, json!({"max": 20, "wait_ms": 200, "visibility_ms": 100})).await;
        let (mut now, mut nack) = (Vec::new(), Vec::new());
        {
            let mut l = ledger.lock().unwrap();
            for m in &got {
                let (id, count) = record_delivery(&mut l, &agent, m, started);
                let n = m["body"]["n"].as_u64().unwrap_or_else(|| panic!("{agent}: no body.n: {m}"));
                let r = receipt(m);
                match (n % 10, count) {
                    (0, _) => {}
                    (1, 1) => nack.push((id, r)),
                    (2, 1) => {
                        let (api, agent, ledger) = (api.clone(), agent.clone(), ledger.clone());
                        late.push(tokio::spawn(async move {
                            tokio::time::sleep(Duration::from_millis(150)).await;
                            let res = api.settle(&agent, "ack", &[r.as_str()]).await;
                            let at = Instant::now();
                            if res[0]["ok"] == true {
                                record_ack(&mut ledger.lock().unwrap(), &agent, &id, at);
                                None
                            } else if res[0]["error"]["code"] == "stale_lease" {
                                None
                            } else {
                                Some(format!("{agent}: the late ack of {id}: {}", res[0]))
                            }
                        }));
                    }
                    _ => now.push((id, r)),
                }
            }
        }
        for (verb, list) in [("nack", &nack), ("ack", &now)] {
            if list.is_empty() {
                continue;
            }
            let receipts: Vec<&str> = list.iter().map(|(_, r)| r.as_str()).collect();
            let res = api.settle(&agent, verb, &receipts).await;
            let at = Instant::now();
            let mut l = ledger.lock().unwrap();
            for ((id, _), r) in list.iter().zip(&res) {
                if r["ok"] != true {
                    errors.push(format!("{agent}: {verb} of {id} right after its receive: {r}"));
                } else if verb == "ack" {
                    record_ack(&mut l, &agent, id, at);
                }
            }
        }
    }
    for t in late {
        errors.extend(t.await.unwrap());
    }
    errors
}

// ---------------------------------------------------------------------------------------------
// SIGKILL loop (SQLite): acknowledged sends survive, nothing comes back after its ack
// ---------------------------------------------------------------------------------------------

impl Api {
    /// `POST path` with `body`; a transport error (a killed server, a lost answer) is `Err`.
    async fn try_post(&self, path: &str, body: &Value) -> Result<Answer, String> {
        let mut req = self.http.post(self.url(path)).json(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.map_err(|e| format!("transport: {e}"))?;
        let status = r.status().as_u16();
        let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        let text = r.text().await.map_err(|e| format!("transport (body): {e}"))?;
        Ok(Answer { status, retry_after, body: serde_json::from_str(&text).unwrap_or(Value::Null) })
    }
}

/// The sends of the kill loop answered 201, and answers that should not have been.
#[derive(Default)]
struct KillSends {
    /// Direct messages: (recipient, id).
    direct: Vec<(String, String)>,
    /// Broadcasts on `all`.
    broadcasts: Vec<String>,
    /// 201 answers so far (direct and broadcast).
    created: usize,
    /// Answers other than a success or a 503 with `Retry-After`.
    bad: Vec<String>,
}

/// Whether `a` is a 503 `unavailable` with `Retry-After` (benign while the server starts).
fn unavailable(a: &Answer) -> bool {
    a.status == 503 && a.retry_after.is_some()
}

/// Sends until `stop`: direct messages from `s<k>` to the readers in turn, or (`k` None)
/// broadcasts from `caster` on `all`. A transport error is an unknown outcome, not a failure.
async fn kill_sender(
    api: Api,
    k: Option<usize>,
    readers: Vec<String>,
    cycle: usize,
    sends: Arc<Mutex<KillSends>>,
    stop: Arc<AtomicBool>,
) {
    let mut j = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let body = json!({"cycle": cycle, "k": k, "j": j});
        let (path, req, to) = match k {
            Some(k) => {
                let to = readers[(k + j) % readers.len()].clone();
                ("/v1/messages", json!({"to": [&to], "from": format!("s{k}"), "body": body}), Some(to))
            }
            None => ("/v1/broadcasts", json!({"from": "caster", "channel": "all", "body": body}), None),
        };
        j += 1;
        let answer = api.try_post(path, &req).await;
        let pause = {
            let mut s = sends.lock().unwrap();
            match answer {
                Ok(a) if a.status == 201 => {
                    let id =
                        a.body["id"].as_str().unwrap_or_else(|| panic!("no id: {}", a.brief())).to_string();
                    match to {
                        Some(to) => s.direct.push((to, id)),
                        None => s.broadcasts.push(id),
                    }
                    s.created += 1;
                    None
                }
                Ok(a) if unavailable(&a) => Some(Duration::from_millis(50)),
                Ok(a) => {
                    s.bad.push(format!("POST {path} {req} answered {}", a.brief()));
                    Some(Duration::from_millis(50))
                }
                Err(_) => Some(Duration::from_millis(20)),
            }
        };
        if let Some(p) = pause {
            tokio::time::sleep(p).await;
        }
    }
}

/// Receives for `agent` until `stop` (visibility 500 ms) and acks every message at once,
/// recording deliveries and the acks answered `ok: true`.
async fn kill_receiver(
    api: Api,
    agent: String,
    ledger: Ledger,
    sends: Arc<Mutex<KillSends>>,
    stop: Arc<AtomicBool>,
) {
    let path = format!("/v1/agents/{agent}/receive");
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let got = match api.try_post(&path, &json!({"max": 20, "wait_ms": 200, "visibility_ms": 500})).await {
            Ok(a) if a.status == 200 => a.body["messages"]
                .as_array()
                .unwrap_or_else(|| panic!("receive {agent}: no messages array: {}", a.brief()))
                .clone(),
            other => {
                if let Some(a) = other.as_ref().ok().filter(|a| !unavailable(a)) {
                    sends.lock().unwrap().bad.push(format!("receive {agent} answered {}", a.brief()));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        if got.is_empty() {
            continue;
        }
        let mut ids = Vec::new();
        {
            let mut l = ledger.lock().unwrap();
            for m in &got {
                ids.push(record_delivery(&mut l, &agent, m, started).0);
            }
        }
        let receipts: Vec<String> = got.iter().map(receipt).collect();
        let answer = api.try_post(&format!("/v1/agents/{agent}/ack"), &json!({ "receipts": receipts })).await;
        let at = Instant::now();
        match answer {
            Ok(a) if a.status == 200 => {
                let results = a.body["results"].as_array().cloned().unwrap_or_default();
                let mut l = ledger.lock().unwrap();
                if results.len() != ids.len() {
                    sends
                        .lock()
                        .unwrap()
                        .bad
                        .push(format!("ack {agent}: not one result a receipt: {}", a.brief()));
                }
                for (id, r) in ids.iter().zip(&results) {
                    if r["ok"] == true {
                        record_ack(&mut l, &agent, id, at);
                    } else {
                        // No receive of this agent ran since the one that handed out the receipt.
                        sends
                            .lock()
                            .unwrap()
                            .bad
                            .push(format!("ack {agent} of {id} right after its receive: {r}"));
                    }
                }
            }
            Ok(a) if unavailable(&a) => {}
            Ok(a) => sends.lock().unwrap().bad.push(format!("ack {agent} answered {}", a.brief())),
            // Killed: the outcome is unknown; unacked, the messages come back.
            Err(_) => {}
        }
    }
}

/// Receives and acks everything `agent` holds, waiting out visibilities left by the last kill,
/// until it shows nothing ready or in flight.
async fn drain(api: &Api, agent: &str, ledger: &Ledger) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let started = Instant::now();
        let got = api.receive(agent, json!({"max": 100, "wait_ms": 0, "visibility_ms": 500})).await;
        if !got.is_empty() {
            let ids: Vec<String> = {
                let mut l = ledger.lock().unwrap();
                got.iter().map(|m| record_delivery(&mut l, agent, m, started).0).collect()
            };
            let receipts: Vec<String> = got.iter().map(receipt).collect();
            let refs: Vec<&str> = receipts.iter().map(String::as_str).collect();
            let results = api.settle(agent, "ack", &refs).await;
            let at = Instant::now();
            let mut l = ledger.lock().unwrap();
            for (id, r) in ids.iter().zip(&results) {
                assert_eq!(r["ok"], true, "drain {agent}: the ack of {id}: {r}");
                record_ack(&mut l, agent, id, at);
            }
            continue;
        }
        let info = api.agent(agent).await;
        if info["ready"] == 0 && info["in_flight"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{agent} still holds messages after draining 20 s: {info}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `FERRY_MSG_KILL_CYCLES` SIGKILLs of a SQLite server on one data directory, each after about
/// 200 acknowledged sends (4 senders of direct messages to readers `r0`..`r3`, one broadcaster
/// on `all`) while the readers receive and ack. Every 201 message reaches its recipient and
/// every 201 broadcast every reader; nothing is delivered by a receive sent after the agent's
/// ack was answered; in the end the inboxes hold nothing (cursors resumed past every
/// broadcast).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loop_keeps_acknowledged_messages() {
    let cycles = env_usize("FERRY_MSG_KILL_CYCLES", 5);
    let limit = Duration::from_secs(60 + 20 * cycles as u64);
    bounded(limit, "sigkill_loop_keeps_acknowledged_messages", async {
        let readers: Vec<String> = (0..4).map(|i| format!("r{i}")).collect();
        let ledger = Ledger::default();
        let sends = Arc::new(Mutex::new(KillSends::default()));
        let mut dir = tempfile::tempdir().unwrap();
        let t0 = Instant::now();
        for cycle in 0..=cycles {
            let mut server = start_in(dir, Some(NO_RATE), None).await;
            let api = Api::new(&server.url);
            if cycle == 0 {
                // Subscribed before the first broadcast, so every broadcast is theirs.
                for r in &readers {
                    let a = api.put(&format!("/v1/agents/{r}/channels"), &json!({"channels": ["all"]})).await;
                    ok(&a, 200, &format!("subscribe {r}"));
                }
            }
            assert_no_panic(&server);
            if cycle == cycles {
                for r in &readers {
                    drain(&api, r, &ledger).await;
                }
                check_kill_loop(&api, &readers, &ledger, &sends).await;
                assert_no_panic(&server);
                let status = tokio::task::spawn_blocking(move || server.stop()).await.unwrap();
                assert!(status.success(), "ferry serve exited with {status} after SIGTERM");
                break;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let before = sends.lock().unwrap().created;
            let mut tasks = Vec::new();
            for k in (0..readers.len()).map(Some).chain([None]) {
                let (api, readers, sends, stop) = (api.clone(), readers.clone(), sends.clone(), stop.clone());
                tasks.push(tokio::spawn(kill_sender(api, k, readers, cycle, sends, stop)));
            }
            for r in &readers {
                let (api, r, ledger, sends, stop) =
                    (api.clone(), r.clone(), ledger.clone(), sends.clone(), stop.clone());
                tasks.push(tokio::spawn(kill_receiver(api, r, ledger, sends, stop)));
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let created = sends.lock().unwrap().created;
                if created >= before + 200 {
                    break;
                }
                assert!(Instant::now() < deadline, "cycle {cycle}: not 200 sends acknowledged within 30 s");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            server.kill();
            stop.store(true, Ordering::SeqCst);
            for t in tasks {
                t.await.unwrap();
            }
            dir = server.take_dir();
        }
        let s = sends.lock().unwrap();
        eprintln!(
            "sigkill messages: {cycles} kills in {:?}, {} direct and {} broadcasts acknowledged",
            t0.elapsed(),
            s.direct.len(),
            s.broadcasts.len()
        );
    })
    .await;
}

/// The kill loop's checks, after the drain.
async fn check_kill_loop(api: &Api, readers: &[String], ledger: &Ledger, sends: &Arc<Mutex<KillSends>>) {
    {
        let s = sends.lock().unwrap();
        assert_none("answers other than a success or 503 unavailable", &s.bad);
        let l = ledger.lock().unwrap();
        let delivered = |agent: &str, id: &str| {
            l.get(&(agent.to_string(), id.to_string())).is_some_and(|seen| !seen.deliveries.is_empty())
        };
        let mut errors = Vec::new();
        for (to, id) in &s.direct {
            if !delivered(to.as_str(), id.as_str()) {
                errors.push(format!("{to} never received the acknowledged message {id}"));
            }
        }
        for id in &s.broadcasts {
            for r in readers {
                if !delivered(r.as_str(), id.as_str()) {
                    errors.push(format!("{r} never received the acknowledged broadcast {id}"));
                }
            }
        }
        assert_none("acknowledged sends lost", &errors);
        assert_none("deliveries after the ack was answered", &delivered_after_ack(&l));
    }
    for r in readers {
        let info = api.agent(r).await;
        for count in ["ready", "in_flight", "dead"] {
            assert_eq!(info[count], 0, "{count} of {r} after the drain: {info}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Events: message.sent, broadcast.sent, message.dead, and nothing for receives, acks, nacks
// ---------------------------------------------------------------------------------------------

both_backends!(
    events,
    events_sqlite,
    events_postgres,
    60,
    Some("[messages]\nrate_per_min = 0\nmax_deliveries = 1\n")
);

/// Creates the item `id` and waits until its `item.created` event is in the log (PostgreSQL
/// numbers events after commit); returns its cursor. Events of every commit answered before
/// the item was created come before it.
async fn marker(api: &Api, id: &str, since: u64) -> u64 {
    ok(&api.post("/v1/items", &json!({"id": id, "title": "marker"})).await, 201, "create the marker item");
    let mut at = since;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = api.get(&format!("/v1/events?since={at}&limit=1000&type=item.created&wait_ms=1000")).await;
        let b = ok(&a, 200, "events");
        for e in b["events"].as_array().unwrap_or_else(|| panic!("no events array: {}", a.brief())) {
            if e["subject"] == json!({"kind": "item", "id": id}) {
                return e["cursor"].as_u64().unwrap_or_else(|| panic!("an event without cursor: {e}"));
            }
        }
        at = b["next_cursor"].as_u64().unwrap_or(at);
        assert!(Instant::now() < deadline, "the marker {id}'s item.created event never showed");
    }
}

/// The events after `since` up to cursor `to` (included), of the comma-separated `types` if
/// given.
async fn events_until(api: &Api, since: u64, to: u64, types: Option<&str>) -> Vec<Value> {
    let filter = types.map(|t| format!("&type={t}")).unwrap_or_default();
    let mut out = Vec::new();
    let mut at = since;
    while at < to {
        let a = api.get(&format!("/v1/events?since={at}&limit=1000{filter}")).await;
        let b = ok(&a, 200, &format!("events since {at}{filter}"));
        for e in b["events"].as_array().unwrap_or_else(|| panic!("no events array: {}", a.brief())) {
            if e["cursor"].as_u64().is_some_and(|c| c <= to) {
                out.push(e.clone());
            }
        }
        let next = b["next_cursor"].as_u64().unwrap_or_else(|| panic!("no next_cursor: {}", a.brief()));
        assert!(next > at, "events since {at}{filter} end before cursor {to}: {}", a.brief());
        at = next;
    }
    out
}

/// a sends to b and c and broadcasts; b nacks both deliveries and, with `max_deliveries = 1`,
/// its next receive moves them to dead letters; c acks both. The log holds one `message.sent`
/// per recipient, one `broadcast.sent` about a and one `message.dead` per dead letter about b,
/// no body, and no other event (none for receives, acks or nacks).
async fn events(urls: &[String]) {
    const SECRET: &str = "a body never in an event";
    let api = Api::new(&urls[0]);
    let head = api.get("/v1/events?wait_ms=0").await;
    let c0 = ok(&head, 200, "the event head")["next_cursor"]
        .as_u64()
        .unwrap_or_else(|| panic!("no next_cursor: {}", head.brief()));

    let id = api.sent("a", &["b", "c"], json!({ "secret": SECRET })).await;
    let a = api.post("/v1/broadcasts", &json!({"from": "a", "body": {"secret": SECRET}})).await;
    let cast = ok(&a, 201, "broadcast from a").clone();
    let bid = cast["id"].as_str().unwrap_or_else(|| panic!("no id: {cast}")).to_string();

    // b: one delivery each, nacked; past max_deliveries the next receive makes them dead.
    let got = api.receive("b", json!({"max": 10})).await;
    let mut ids: Vec<&str> = got.iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.sort();
    let mut both = vec![id.as_str(), bid.as_str()];
    both.sort();
    assert_eq!(ids, both, "b receives the message and the broadcast: {got:?}");
    let receipts: Vec<String> = got.iter().map(receipt).collect();
    let refs: Vec<&str> = receipts.iter().map(String::as_str).collect();
    for r in api.settle("b", "nack", &refs).await {
        assert_eq!(r["ok"], true, "nack: {r}");
    }
    let again = api.receive("b", json!({"max": 10})).await;
    assert!(again.is_empty(), "past max_deliveries nothing is delivered: {again:?}");
    let dead = all_dead(&api, "b").await;
    let mut dead_ids: Vec<&str> = dead.iter().map(|m| m["id"].as_str().unwrap()).collect();
    dead_ids.sort();
    assert_eq!(dead_ids, both, "both are b's dead letters: {dead:?}");

    // c acks both; the sender gets nothing.
    let got = api.receive("c", json!({"max": 10})).await;
    assert_eq!(got.len(), 2, "c receives the message and the broadcast: {got:?}");
    for m in &got {
        api.acked("c", &receipt(m)).await;
    }
    let own = api.receive("a", json!({"max": 10})).await;
    assert!(own.is_empty(), "a receives nothing: {own:?}");

    let c1 = marker(&api, "msg-events-marker", c0).await;
    let all = events_until(&api, c0, c1, None).await;
    let typed = events_until(&api, c0, c1, Some("message.sent,broadcast.sent,message.dead")).await;

    // Every event is one of ours or the marker's.
    let agent_event = |e: &&Value| e["subject"]["kind"] == "agent";
    let others: Vec<&Value> = all
        .iter()
        .filter(|e| !agent_event(e) && e["subject"] != json!({"kind": "item", "id": "msg-events-marker"}))
        .collect();
    assert!(others.is_empty(), "events other than the messages' and the marker's: {others:#?}");
    let mine: Vec<&Value> = all.iter().filter(agent_event).collect();
    assert_eq!(mine, typed.iter().collect::<Vec<_>>(), "the type filter keeps exactly the agent events");
    for e in &all {
        assert!(!e.to_string().contains(SECRET), "an event carries a message body: {e}");
    }

    let kinds: Vec<&str> = mine.iter().map(|e| e["type"].as_str().unwrap_or("")).collect();
    assert_eq!(
        kinds,
        ["message.sent", "message.sent", "broadcast.sent", "message.dead", "message.dead"],
        "one event per recipient, per broadcast and per dead letter, none per receive, ack or nack: {mine:#?}"
    );
    let subject =
        |e: &Value| (e["subject"]["kind"].clone(), e["subject"]["id"].as_str().unwrap_or("").to_string());
    let mut recipients: Vec<String> = mine[..2].iter().map(|e| subject(e).1).collect();
    recipients.sort();
    assert_eq!(recipients, ["b", "c"], "message.sent is about each recipient: {mine:#?}");
    for e in &mine[..2] {
        assert_eq!(e["data"]["id"], id.as_str(), "message.sent data: {e}");
        assert_eq!(e["data"]["from"], "a", "message.sent data: {e}");
    }
    let b = mine[2];
    assert_eq!(subject(b), (json!("agent"), "a".to_string()), "broadcast.sent is about the sender: {b}");
    assert_eq!(b["data"]["id"], bid.as_str(), "{b}");
    assert_eq!(b["data"]["channel"], "all", "{b}");
    assert_eq!(b["data"]["seq"], cast["seq"], "broadcast.sent names the broadcast's seq: {b}");
    let mut dead_events: Vec<(String, String)> = Vec::new();
    for e in &mine[3..] {
        assert_eq!(subject(e), (json!("agent"), "b".to_string()), "message.dead is about b: {e}");
        let id = e["data"]["id"].as_str().unwrap_or_else(|| panic!("message.dead without data.id: {e}"));
        dead_events.push((id.to_string(), e["data"]["kind"].as_str().unwrap_or("").to_string()));
    }
    dead_events.sort();
    let mut expected = vec![(id.clone(), "direct".to_string()), (bid.clone(), "broadcast".to_string())];
    expected.sort();
    assert_eq!(dead_events, expected, "one message.dead per dead letter, with its kind: {mine:#?}");
}

// ---------------------------------------------------------------------------------------------
// Expiry: nothing expired is delivered
// ---------------------------------------------------------------------------------------------

both_backends!(expiry, expiry_sqlite, expiry_postgres, 60, Some(NO_RATE));

/// A message and a broadcast with `ttl_ms: 200` are not delivered 400 ms later (nor counted),
/// while ones without a ttl sent alongside are.
async fn expiry(urls: &[String]) {
    let api = Api::new(&urls[0]);
    // x2 is subscribed to `all` before the broadcasts.
    ok(&api.put("/v1/agents/x2/channels", &json!({"channels": ["all"]})).await, 200, "subscribe x2");

    let short = |to: &str| json!({"to": [to], "from": "a", "body": {"short": true}, "ttl_ms": 200});
    ok(&api.message(short("x1")).await, 201, "a short-lived message to x1");
    ok(&api.message(short("x3")).await, 201, "a short-lived message to x3");
    let kept = api.sent("a", &["x3"], json!({"short": false})).await;
    let a = api.post("/v1/broadcasts", &json!({"from": "a", "body": {"short": true}, "ttl_ms": 200})).await;
    ok(&a, 201, "a short-lived broadcast");
    tokio::time::sleep(Duration::from_millis(400)).await;

    let got = api.receive("x1", json!({"max": 10})).await;
    assert!(got.is_empty(), "an expired message is not delivered: {got:?}");
    let got = api.receive("x2", json!({"max": 10})).await;
    assert!(got.is_empty(), "an expired broadcast is not delivered: {got:?}");
    let got = api.receive("x3", json!({"max": 10})).await;
    let ids: Vec<&str> = got.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [kept.as_str()], "only the unexpired message is delivered: {got:?}");
    api.acked("x3", &receipt(&got[0])).await;

    // A later broadcast reaches x2; the expired one does not come with it.
    let a = api.post("/v1/broadcasts", &json!({"from": "a", "body": {"short": false}})).await;
    let live = ok(&a, 201, "a broadcast without ttl")["id"].as_str().unwrap().to_string();
    let got = api.receive("x2", json!({"max": 10})).await;
    let ids: Vec<&str> = got.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [live.as_str()], "only the unexpired broadcast is delivered: {got:?}");
    api.acked("x2", &receipt(&got[0])).await;

    // x1 and x3 are subscribed to `all` too: the live broadcast waits for them (ready 1); the
    // expired message and broadcast are counted nowhere.
    for (agent, ready) in [("x1", 1), ("x2", 0), ("x3", 1)] {
        let info = api.agent(agent).await;
        assert_eq!(info["ready"], ready, "ready of {agent}: only the live broadcast is counted: {info}");
        for count in ["in_flight", "dead"] {
            assert_eq!(info[count], 0, "{count} of {agent}: expired messages are not counted: {info}");
        }
    }
}
