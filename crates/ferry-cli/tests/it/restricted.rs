//! Restricted tokens stay inside their queues, end to end over real HTTP against the real
//! binary (SQLite, and PostgreSQL when reachable).
//!
//! The contract: every resource a request touches (path, query, body, each batch item, each
//! room, each filter) is checked against the token's queue restriction before any read or
//! write; lists and streams are filtered to the allowed queues, or refused with 403 where
//! filtering is not meaningful (`/metrics`, `*` rooms).
//!
//! The test builds the same fixture in queues `a` and `b` (ready jobs with a tag and a unique
//! key, running jobs with their leases, dead jobs, a schedule, queue limits, a worker seen, and
//! the events all of that makes), mints tokens restricted to `a` (admin, produce, work, read)
//! and walks every operation of `/v1/openapi.json` with attack variants aimed at `b`. After
//! each variant it fails on any answer that:
//! - reveals something of `b`: the body carries one of b's secrets (its job ids and leases,
//!   schedule name, tag, worker name, unique keys, the b-only token, `"queue":"b"`,
//!   `queue="b"`). A 4xx may echo what the request itself sent; a 2xx may not (a batch item
//!   refused with `ok: false` may echo its own id);
//! - tells b's real resource from a nonexistent one of the same kind (a fresh UUIDv7 job id,
//!   queue `zz`, schedule `nosuch`, an unused tag or unique key): status, error code and the
//!   shape of the answer must be the same;
//! - changes `b`: b's jobs, its schedules (and any schedule enqueueing into b), its paused flag
//!   and limits, and the tokens that cover b are snapshotted with an unrestricted admin token
//!   before and after each variant. A change is reported, then b's fixture is rebuilt (new
//!   ids) so one hole does not mask the next;
//! - is not the refusal the contract asks for (`Refused`: a 4xx or, on a socket, an error or
//!   close; `Forbidden`: 403 `forbidden`).
//!
//! Reads run first (for every token), then writes, then destructive operations (complete,
//! fail, release, cancel, DLQ replay/purge, deletes). An operation of the document with no
//! entry in the walk table fails the test, so a new route cannot go unwalked. Positive controls
//! at the end show the restricted tokens can still do all of this to `a`.

use crate::common::Server;
use crate::common::pg::TestDb;
use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Never fires during a test (midnight on January 1st).
const CRON: &str = "0 0 1 1 *";

/// Leases and the worker timeout outlive the test, so nothing of the fixture moves by itself.
const LONG_LEASE_MS: u64 = 3_600_000;

/// Tokens limited to `a` that walk the API (read, produce, work, admin).
const WALKERS: usize = 4;

const CONFIG: &str = "[health]\nworker_timeout_ms = 3600000\nhost_probe_interval_ms = 3600000\n";

/// Operations of the document that are not walked, with the reason.
const SKIPPED: &[&str] = &[
    // Public liveness probe: answers without a token, always `{"status":"ok"}`; names nothing.
    "GET /healthz",
    // The API description: the same document for every caller; names no queue, job or token.
    "GET /v1/openapi.json",
];

/// Fails the test if `f` takes longer than its bound (a stall fails loudly).
async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(420), f).await.expect("the walk stalled past its time bound")
}

fn start(database: Option<&str>) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ferry.toml"), CONFIG).unwrap();
    match database {
        Some(url) => Server::start_with(&["--database", url], dir),
        None => Server::start_with(&[], dir),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_tokens_stay_inside_their_queues_sqlite() {
    let s = start(None);
    bounded(walk(&s, "sqlite")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restricted_tokens_stay_inside_their_queues_postgres() {
    let Some(db) = TestDb::create("ferry_restricted").await else { return };
    let s = start(Some(&db.url));
    bounded(walk(&s, "postgres")).await;
    drop(s);
    drop(db);
}

// ---------------------------------------------------------------------------------------------
// Requests and answers

/// One request of a variant.
#[derive(Debug, Clone)]
enum Call {
    Http {
        method: Method,
        target: String,
        body: Option<Value>,
    },
    /// `GET` of a server-sent-events stream, read for about a second.
    Sse {
        target: String,
    },
    /// A WebSocket upgrade, then optionally one message; read for under a second.
    Ws {
        target: String,
        msg: Option<Value>,
    },
}

impl Call {
    /// Everything the request itself carries (what an error may echo), decoded.
    fn sent(&self) -> String {
        let (target, extra) = match self {
            Call::Http { target, body, .. } => (target, body.as_ref().map(Value::to_string)),
            Call::Sse { target } => (target, None),
            Call::Ws { target, msg } => (target, msg.as_ref().map(Value::to_string)),
        };
        format!("{target} {} {}", percent_decoded(target), extra.unwrap_or_default())
    }

    fn is_read(&self) -> bool {
        match self {
            Call::Http { method, .. } => *method == Method::GET,
            Call::Sse { .. } | Call::Ws { .. } => true,
        }
    }
}

fn get(target: impl Into<String>) -> Call {
    Call::Http { method: Method::GET, target: target.into(), body: None }
}

fn post(target: impl Into<String>, body: Value) -> Call {
    Call::Http { method: Method::POST, target: target.into(), body: Some(body) }
}

fn req(method: Method, target: impl Into<String>, body: Option<Value>) -> Call {
    Call::Http { method, target: target.into(), body }
}

fn sse_call(target: String) -> Call {
    Call::Sse { target }
}

fn ws_call(target: impl Into<String>, msg: Option<Value>) -> Call {
    Call::Ws { target: target.into(), msg }
}

/// What a variant must get besides "nothing of b".
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Filtering or refusing are both fine.
    Any,
    /// A 4xx, or on a socket an `error` reply or a close.
    Refused,
    /// 403 `forbidden` (or on a socket an `error` reply or a close).
    Forbidden,
}

/// One attack variant of an operation.
#[derive(Debug, Clone)]
struct Variant {
    name: String,
    call: Call,
    /// The same request against a nonexistent resource of the same kind: must answer alike.
    twin: Option<Call>,
    expect: Expect,
    /// `POST /v1/tokens`: a token minted must be limited to queue `a`.
    narrow: bool,
}

fn v(name: impl Into<String>, call: Call) -> Variant {
    Variant { name: name.into(), call, twin: None, expect: Expect::Any, narrow: false }
}

impl Variant {
    fn twin(mut self, twin: Call) -> Variant {
        self.twin = Some(twin);
        self
    }

    fn refused(mut self) -> Variant {
        self.expect = Expect::Refused;
        self
    }

    fn forbidden(mut self) -> Variant {
        self.expect = Expect::Forbidden;
        self
    }

    fn narrow(mut self) -> Variant {
        self.narrow = true;
        self
    }
}

/// An answer: `status` is 101 for an accepted WebSocket, 0 when there was no HTTP answer.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    /// The JSON body; on a socket the reply to our message (or `{"closed":code}`).
    json: Value,
    /// Text that must hold no secret of b at all (2xx bodies, stream events).
    strict: String,
    /// Text that may echo what the request sent, nothing more (4xx bodies, socket replies).
    lenient: String,
}

impl Answer {
    fn http(status: u16, text: String) -> Answer {
        let json: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let (strict, lenient) = if (400..500).contains(&status) {
            (String::new(), text)
        } else if (200..300).contains(&status) {
            (without_refused_items(&json).unwrap_or(text), String::new())
        } else {
            (text, String::new())
        };
        Answer { status, json, strict, lenient }
    }

    fn broken(why: String) -> Answer {
        Answer { status: 0, json: Value::Null, strict: String::new(), lenient: why }
    }

    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The answer, shortened for a message.
    fn brief(&self) -> String {
        let text = format!("{}{}", self.strict, self.lenient).replace('\n', " ");
        let mut out: String = text.chars().take(300).collect();
        if text.chars().count() > 300 {
            out.push('…');
        }
        out
    }

    /// Why the answer is not the refusal asked for, if it is not.
    fn violates(&self, e: Expect) -> Option<String> {
        let socket_refused =
            self.status == 101 && (self.json["type"] == "error" || self.json.get("closed").is_some());
        match e {
            Expect::Any => None,
            Expect::Refused if (400..500).contains(&self.status) || socket_refused => None,
            Expect::Refused => Some(format!(
                "expected a refusal (4xx, or an error reply / close on the socket), got {}",
                self.status
            )),
            Expect::Forbidden
                if (self.status == 403 && self.json["error"]["code"] == "forbidden") || socket_refused =>
            {
                None
            }
            Expect::Forbidden => Some(format!("expected 403 forbidden, got {}", self.status)),
        }
    }
}

/// A batch answer with the ids and messages of refused items blanked (they echo the request;
/// whether they tell anything is checked by the twin).
fn without_refused_items(v: &Value) -> Option<String> {
    let mut v = v.clone();
    for item in v.get_mut("results")?.as_array_mut()? {
        if item["ok"] == false {
            item["id"] = json!("");
            if let Some(e) = item.get_mut("error").and_then(Value::as_object_mut) {
                e.insert("message".into(), json!(""));
            }
        }
    }
    Some(v.to_string())
}

fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(h) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(h);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The secrets of b an answer reveals.
fn leaks(secrets: &[String], sent: &str, a: &Answer) -> Vec<String> {
    let found: BTreeSet<&String> = secrets
        .iter()
        .filter(|s| {
            a.strict.contains(s.as_str()) || (a.lenient.contains(s.as_str()) && !sent.contains(s.as_str()))
        })
        .collect();
    let mut out: Vec<String> = found.iter().take(6).map(|s| s.to_string()).collect();
    if found.len() > 6 {
        out.push(format!("and {} more", found.len() - 6));
    }
    out
}

/// Keys whose values differ between any two requests (ids, times, cursors, messages).
const VOLATILE: &[&str] = &[
    "id",
    "ids",
    "job_id",
    "message",
    "cursor",
    "next_cursor",
    "at",
    "created_at",
    "updated_at",
    "run_at",
    "next_run_at",
    "next_runs",
    "started_at",
    "finished_at",
    "lease",
    "lease_expires_at",
    "payload",
    "unique_key",
    "depends_on",
    "name",
];

/// String values kept when comparing twins (they say what happened).
const KEPT: &[&str] = &["code", "type", "state", "field", "queue"];

/// The answer with volatile values dropped: twins must have the same shape.
fn shape(v: &Value, key: Option<&str>) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !VOLATILE.contains(&k.as_str()))
                .map(|(k, x)| (k.clone(), shape(x, Some(k.as_str()))))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(|x| shape(x, key)).collect()),
        Value::String(s) if key.is_some_and(|k| KEPT.contains(&k)) => Value::String(s.clone()),
        Value::String(_) => json!("s"),
        other => other.clone(),
    }
}

fn parity(a: &Answer) -> (u16, Value) {
    (a.status, shape(&a.json, None))
}

fn minted_for_a_only(token: &Value) -> bool {
    token["queues"].as_array().is_some_and(|qs| !qs.is_empty() && qs.iter().all(|q| q == "a"))
}

/// A UUIDv7 (now, random bits) that names no job.
fn fresh_id() -> String {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let (r1, r2): (u64, u64) = (rand::random(), rand::random());
    let hi = (ms << 16) | 0x7000 | (r1 & 0x0fff);
    let lo = (0b10u64 << 62) | (r2 >> 2);
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        hi >> 32,
        (hi >> 16) & 0xffff,
        hi & 0xffff,
        lo >> 48,
        lo & 0xffff_ffff_ffff
    )
}

/// The id with its first character percent-encoded (the same id once the path is decoded).
fn encoded(id: &str) -> String {
    format!("%{:02X}{}", id.as_bytes()[0], &id[1..])
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_else(|| panic!("expected a string, got {v}")).to_string()
}

fn short(v: Option<&Value>) -> String {
    let s = v.map_or_else(|| "absent".to_string(), Value::to_string);
    if s.chars().count() > 120 { format!("{}…", s.chars().take(120).collect::<String>()) } else { s }
}

// ---------------------------------------------------------------------------------------------
// The fixture

/// One queue's share of the fixture.
#[derive(Debug, Clone)]
struct Side {
    /// Ready jobs, tagged; `ukeys[i]` is the unique key of `ready[i]`. Beyond the first two,
    /// two per walker for the unique-key oracles, so no walker sees a job an earlier one made.
    ready: Vec<String>,
    ukeys: Vec<String>,
    /// (id, lease), claimed by `worker-<q>` with a long lease.
    running: Vec<(String, String)>,
    dead: Vec<String>,
    /// A ready job the stream variants cancel to make a b event (replaced each time).
    trigger: String,
}

impl Side {
    fn secrets(&self) -> Vec<String> {
        let mut s: Vec<String> = self.ready.clone();
        s.extend(self.running.iter().flat_map(|(id, lease)| [id.clone(), lease.clone()]));
        s.extend(self.dead.iter().cloned());
        s.push(self.trigger.clone());
        s
    }
}

struct Fx {
    /// An unrestricted admin token for the fixture and the snapshots (never a target).
    ops: String,
    /// The first, unrestricted admin token (a revocation target).
    root_id: String,
    /// A token limited to b (a revocation target; its name and id are b's).
    tok_b_id: String,
    a: Side,
    b: Side,
    generation: i64,
    /// Everything of b an answer to a restricted token must not carry.
    secrets: Vec<String>,
}

struct Tokens {
    root: String,
    ra: String,
    rp: String,
    rw: String,
    rr: String,
}

#[derive(Default)]
struct Report {
    fails: Vec<String>,
    notes: Vec<String>,
}

struct Ctx<'a> {
    s: &'a Server,
    http: reqwest::Client,
    backend: &'static str,
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum Read {
    Message,
    Timeout,
    Closed,
}

/// Reads one socket message into `ans` (replies are lenient, events strict).
async fn ws_read(ws: &mut Ws, ans: &mut Answer, until: Instant) -> Read {
    let left = until.saturating_duration_since(Instant::now());
    let closed = |ans: &mut Answer, code: Option<u16>| {
        if ans.json.is_null() {
            ans.json = json!({ "closed": code });
        }
        Read::Closed
    };
    match tokio::time::timeout(left, ws.next()).await {
        Err(_) => Read::Timeout,
        Ok(None | Some(Err(_))) => closed(ans, None),
        Ok(Some(Ok(Message::Close(c)))) => closed(ans, c.map(|c| u16::from(c.code))),
        Ok(Some(Ok(Message::Text(t)))) => {
            let m: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
            if matches!(m["type"].as_str(), Some("subscribed" | "unsubscribed" | "error" | "pong")) {
                if ans.json.is_null() {
                    ans.json = m;
                }
                ans.lenient.push_str(&t);
                ans.lenient.push('\n');
            } else {
                ans.strict.push_str(&t);
                ans.strict.push('\n');
            }
            Read::Message
        }
        Ok(Some(Ok(_))) => Read::Message,
    }
}

impl Ctx<'_> {
    async fn call(&self, token: &str, method: Method, target: &str, body: Option<&Value>) -> Answer {
        let mut r = self.http.request(method, self.s.at(target)).bearer_auth(token);
        if let Some(b) = body {
            r = r.json(b); // also sets Content-Type: application/json
        }
        match r.send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                Answer::http(status, r.text().await.unwrap_or_default())
            }
            Err(e) => Answer::broken(format!("no HTTP answer: {e}")),
        }
    }

    /// A fixture step with the unrestricted token: must succeed.
    async fn must(&self, token: &str, method: Method, target: &str, body: Option<Value>) -> Value {
        let a = self.call(token, method.clone(), target, body.as_ref()).await;
        assert!(
            a.ok(),
            "[{}] fixture step {method} {target} failed: {} {}",
            self.backend,
            a.status,
            a.brief()
        );
        a.json
    }

    async fn enqueue(&self, token: &str, job: Value) -> String {
        text(&self.must(token, Method::POST, "/v1/jobs", Some(job)).await["id"])
    }

    /// Mints a token: (secret, id).
    async fn mint(&self, admin: Option<&str>, body: Value) -> (String, String) {
        let mut r = self.http.post(self.s.at("/v1/tokens")).json(&body);
        if let Some(t) = admin {
            r = r.bearer_auth(t);
        }
        let r = r.send().await.expect("an HTTP answer");
        let status = r.status().as_u16();
        let a = Answer::http(status, r.text().await.unwrap());
        assert_eq!(a.status, 201, "[{}] mint {body}: {}", self.backend, a.brief());
        assert_eq!(a.json["queues"], body.get("queues").cloned().unwrap_or(Value::Null), "{}", a.json);
        (text(&a.json["token"]), text(&a.json["id"]))
    }

    /// Builds one queue's jobs: 3 running, 2 dead, ready ones with unique keys, 1 trigger.
    async fn side(&self, ops: &str, q: &str, generation: i64) -> Side {
        let (tag, worker) = (format!("tag-{q}"), format!("worker-{q}"));
        // Newer generations claim first, ahead of leftovers of older ones.
        let priority = 10_000 + generation * 10;
        let claim = |max: u64| json!({"worker": worker, "max": max, "lease_ms": LONG_LEASE_MS, "wait_ms": 0});
        let mut want = BTreeSet::new();
        for i in 0..3 {
            let job = json!({"queue": q, "payload": {"generation": generation, "running": i},
                "priority": priority, "tags": [tag], "lease_ms": LONG_LEASE_MS});
            want.insert(self.enqueue(ops, job).await);
        }
        let got = self.must(ops, Method::POST, &format!("/v1/queues/{q}/claim"), Some(claim(3))).await;
        let running: Vec<(String, String)> =
            got["jobs"].as_array().unwrap().iter().map(|j| (text(&j["id"]), text(&j["lease"]))).collect();
        let ids: BTreeSet<String> = running.iter().map(|(id, _)| id.clone()).collect();
        assert_eq!(ids, want, "[{}] fixture: the claim took {q}'s new jobs", self.backend);

        let mut want = BTreeSet::new();
        for i in 0..2 {
            let job = json!({"queue": q, "payload": {"generation": generation, "dead": i},
                "priority": priority, "max_attempts": 1, "tags": [tag]});
            want.insert(self.enqueue(ops, job).await);
        }
        let got = self.must(ops, Method::POST, &format!("/v1/queues/{q}/claim"), Some(claim(2))).await;
        let mut dead = Vec::new();
        for j in got["jobs"].as_array().unwrap() {
            let id = text(&j["id"]);
            let body = json!({"lease": j["lease"], "error": "fixture failure", "retry": false});
            let out = self.must(ops, Method::POST, &format!("/v1/jobs/{id}/fail"), Some(body)).await;
            assert_eq!(out["state"], "dead", "[{}] fixture: {out}", self.backend);
            dead.push(id);
        }
        assert_eq!(
            dead.iter().cloned().collect::<BTreeSet<_>>(),
            want,
            "[{}] fixture: dead jobs",
            self.backend
        );

        let ukeys: Vec<String> = (0..2 + 2 * WALKERS).map(|i| format!("ukey-{q}-{generation}-{i}")).collect();
        let mut ready = Vec::new();
        for k in &ukeys {
            ready.push(
                self.enqueue(ops, json!({"queue": q, "payload": {}, "tags": [tag], "unique_key": k})).await,
            );
        }
        let trigger = self.enqueue(ops, json!({"queue": q, "payload": {}, "tags": [tag]})).await;
        Side { ready, ukeys, running, dead, trigger }
    }

    async fn schedule(&self, ops: &str, q: &str) {
        let spec = json!({"name": format!("sched-{q}"), "cron": CRON, "job": {"queue": q, "tags": [format!("tag-{q}")]}});
        self.must(ops, Method::POST, "/v1/schedules", Some(spec)).await;
    }

    async fn setup(&self) -> (Fx, Tokens) {
        // The first token may be minted without one; from then on auth is on.
        let (root, root_id) = self.mint(None, json!({"name": "root", "scopes": ["admin"]})).await;
        let r = Some(root.as_str());
        let (ops, _) = self.mint(r, json!({"name": "ops", "scopes": ["admin"]})).await;
        let (ra, _) = self.mint(r, json!({"name": "ra", "scopes": ["admin"], "queues": ["a"]})).await;
        let (rp, _) = self.mint(r, json!({"name": "rp", "scopes": ["produce"], "queues": ["a"]})).await;
        let (rw, _) = self.mint(r, json!({"name": "rw", "scopes": ["work"], "queues": ["a"]})).await;
        let (rr, _) = self.mint(r, json!({"name": "rr", "scopes": ["read"], "queues": ["a"]})).await;
        let (_, tok_b_id) = self.mint(r, json!({"name": "tok-b", "scopes": ["read"], "queues": ["b"]})).await;
        let host = json!({"name": "host-1", "health_url": "http://127.0.0.1:9/health"});
        self.must(&ops, Method::POST, "/v1/hosts", Some(host)).await;
        for q in ["a", "b"] {
            let limits = json!({"max_depth": 100_000});
            self.must(&ops, Method::PUT, &format!("/v1/queues/{q}/limits"), Some(limits)).await;
            self.schedule(&ops, q).await;
        }
        // b's schedules whose names the name oracle tries, one per walker.
        for who in 0..WALKERS {
            let spec = json!({"name": format!("sched-b-o{who}"), "cron": CRON, "job": {"queue": "b"}});
            self.must(&ops, Method::POST, "/v1/schedules", Some(spec)).await;
        }
        let a = self.side(&ops, "a", 0).await;
        let b = self.side(&ops, "b", 0).await;
        // Claims register their workers; wait until both are listed.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let w = self.must(&ops, Method::GET, "/v1/workers", None).await.to_string();
            if w.contains("worker-a") && w.contains("worker-b") {
                break;
            }
            assert!(Instant::now() < deadline, "[{}] workers never listed: {w}", self.backend);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut secrets: Vec<String> =
            ["\"queue\":\"b\"", "queue=\"b\"", "tag-b", "worker-b", "sched-b", "ukey-b-", "tok-b"]
                .map(String::from)
                .to_vec();
        secrets.extend(b.secrets());
        secrets.push(tok_b_id.clone());
        let fx = Fx { ops, root_id, tok_b_id, a, b, generation: 0, secrets };
        (fx, Tokens { root, ra, rp, rw, rr })
    }

    /// b's state, as the unrestricted token sees it.
    async fn snapshot(&self, fx: &Fx) -> BTreeMap<String, Value> {
        let ops = fx.ops.as_str();
        let mut m = BTreeMap::new();
        let jobs = self.must(ops, Method::GET, "/v1/jobs?queue=b&limit=1000", None).await;
        for j in jobs["jobs"].as_array().unwrap() {
            m.insert(format!("b job {}", text(&j["id"])), j.clone());
        }
        let schedules = self.must(ops, Method::GET, "/v1/schedules", None).await;
        for s in schedules["schedules"].as_array().unwrap() {
            if s["name"] == "sched-b" || s["job"]["queue"] == "b" {
                let mut s = s.clone();
                s.as_object_mut().unwrap().remove("next_runs");
                m.insert(format!("schedule {} (enqueueing into {})", text(&s["name"]), s["job"]["queue"]), s);
            }
        }
        let queues = self.must(ops, Method::GET, "/v1/queues", None).await;
        if let Some(q) = queues["queues"].as_array().unwrap().iter().find(|q| q["queue"] == "b") {
            m.insert("queue b".into(), json!({"paused": q["paused"], "limits": q["limits"]}));
        }
        let tokens = self.must(ops, Method::GET, "/v1/tokens", None).await;
        for t in tokens["tokens"].as_array().unwrap() {
            let qs = &t["queues"];
            if qs.is_null() || qs.as_array().is_some_and(|qs| qs.iter().any(|q| q == "b")) {
                m.insert(
                    format!("token {} ({}, queues {qs})", text(&t["name"]), text(&t["id"])),
                    json!({"revoked_at": t["revoked_at"]}),
                );
            }
        }
        m
    }

    /// Rebuilds b after a variant changed it (new ids), so the next hole is not masked.
    async fn repair(&self, fx: &mut Fx) {
        let ops = fx.ops.clone();
        let _ = self.call(&ops, Method::POST, "/v1/queues/b/resume", None).await;
        self.must(&ops, Method::PUT, "/v1/queues/b/limits", Some(json!({"max_depth": 100_000}))).await;
        for q in ["a", "b"] {
            let _ = self.call(&ops, Method::DELETE, &format!("/v1/schedules/sched-{q}"), None).await;
            self.schedule(&ops, q).await;
        }
        let tokens = self.must(&ops, Method::GET, "/v1/tokens", None).await;
        let alive = tokens["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == fx.tok_b_id.as_str() && t["revoked_at"].is_null());
        if !alive {
            let body = json!({"name": "tok-b", "scopes": ["read"], "queues": ["b"]});
            let (_, id) = self.mint(Some(&ops), body).await;
            fx.secrets.push(id.clone());
            fx.tok_b_id = id;
        }
        fx.generation += 1;
        let side = self.side(&ops, "b", fx.generation).await;
        fx.secrets.extend(side.secrets());
        fx.b = side;
    }

    /// Makes b events while a stream is open: pause and resume b, cancel the trigger job,
    /// enqueue the next one (all tagged `tag-b`).
    async fn trigger_b(&self, fx: &mut Fx) {
        let ops = fx.ops.clone();
        let _ = self.call(&ops, Method::POST, "/v1/queues/b/pause", None).await;
        let _ = self.call(&ops, Method::POST, "/v1/queues/b/resume", None).await;
        let cancel = format!("/v1/jobs/{}/cancel", fx.b.trigger);
        let _ = self.call(&ops, Method::POST, &cancel, Some(&json!({"reason": "trigger"}))).await;
        let id = self.enqueue(&ops, json!({"queue": "b", "payload": {}, "tags": ["tag-b"]})).await;
        fx.secrets.push(id.clone());
        fx.b.trigger = id;
    }

    async fn ws_connect(&self, token: &str, target: &str) -> Result<Ws, Answer> {
        let url = format!("{}{target}", self.s.url.replacen("http://", "ws://", 1));
        let mut request = url.into_client_request().expect("a WebSocket request");
        request.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("a header"));
        match tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(request)).await {
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                let body = resp.body().as_deref().map(|b| String::from_utf8_lossy(b).into_owned());
                Err(Answer::http(resp.status().as_u16(), body.unwrap_or_default()))
            }
            Ok(Err(e)) => Err(Answer::broken(format!("WebSocket handshake failed: {e}"))),
            Err(_) => Err(Answer::broken("WebSocket handshake timed out".into())),
        }
    }

    async fn run(&self, fx: &mut Fx, token: &str, call: &Call, trigger: bool) -> Answer {
        match call {
            Call::Http { method, target, body } => {
                self.call(token, method.clone(), target, body.as_ref()).await
            }
            Call::Sse { target } => {
                let started = Instant::now();
                let mut r = match self.http.get(self.s.at(target)).bearer_auth(token).send().await {
                    Ok(r) => r,
                    Err(e) => return Answer::broken(format!("no HTTP answer: {e}")),
                };
                let status = r.status().as_u16();
                if status != 200 {
                    return Answer::http(status, r.text().await.unwrap_or_default());
                }
                if trigger {
                    self.trigger_b(fx).await;
                }
                let until =
                    (started + Duration::from_secs(1)).max(Instant::now() + Duration::from_millis(500));
                let mut body = String::new();
                while let Ok(Ok(Some(chunk))) =
                    tokio::time::timeout(until.saturating_duration_since(Instant::now()), r.chunk()).await
                {
                    body.push_str(&String::from_utf8_lossy(&chunk));
                }
                Answer { status, json: Value::Null, strict: body, lenient: String::new() }
            }
            Call::Ws { target, msg } => {
                let mut ws = match self.ws_connect(token, target).await {
                    Ok(ws) => ws,
                    Err(a) => return a,
                };
                let mut ans =
                    Answer { status: 101, json: Value::Null, strict: String::new(), lenient: String::new() };
                let mut open = true;
                if let Some(m) = msg {
                    if ws.send(Message::Text(m.to_string().into())).await.is_err() {
                        ans.json = json!({"closed": null});
                        open = false;
                    }
                    let until = Instant::now() + Duration::from_secs(3);
                    while open && ans.json.is_null() {
                        match ws_read(&mut ws, &mut ans, until).await {
                            Read::Message => {}
                            Read::Timeout => break,
                            Read::Closed => open = false,
                        }
                    }
                }
                if open {
                    if trigger {
                        self.trigger_b(fx).await;
                    }
                    let until = Instant::now() + Duration::from_millis(700);
                    while let Read::Message = ws_read(&mut ws, &mut ans, until).await {}
                }
                let _ = ws.close(None).await;
                ans
            }
        }
    }

    /// Sends a variant (and its twin) with a restricted token and checks the answers.
    async fn check(&self, fx: &mut Fx, label: &str, token: &str, v: &Variant, report: &mut Report) {
        let ans = self.run(fx, token, &v.call, true).await;
        if ans.status == 0 || ans.status >= 500 {
            report.fails.push(format!("{label}: no proper answer ({}): {}", ans.status, ans.brief()));
        }
        let leaked = leaks(&fx.secrets, &v.call.sent(), &ans);
        if !leaked.is_empty() {
            report.fails.push(format!(
                "{label}: the answer ({}) reveals b's {}: {}",
                ans.status,
                leaked.join(", "),
                ans.brief()
            ));
        }
        if let Some(why) = ans.violates(v.expect) {
            report.fails.push(format!("{label}: {why}: {}", ans.brief()));
        }
        if v.narrow && ans.ok() && !minted_for_a_only(&ans.json) {
            report.fails.push(format!("{label}: minted a token reaching beyond queue a: {}", ans.brief()));
        }
        if let Some(twin) = &v.twin {
            let other = self.run(fx, token, twin, false).await;
            if parity(&ans) != parity(&other) {
                report.fails.push(format!(
                    "{label}: answers b's real resource differently from a nonexistent one \
                     (existence leaks): real {} {} / nonexistent {} {}",
                    ans.status,
                    ans.brief(),
                    other.status,
                    other.brief()
                ));
            }
            let leaked = leaks(&fx.secrets, &twin.sent(), &other);
            if !leaked.is_empty() {
                report.fails.push(format!(
                    "{label} (nonexistent twin): the answer reveals b's {}: {}",
                    leaked.join(", "),
                    other.brief()
                ));
            }
        }
        if v.expect == Expect::Any && !v.call.is_read() && ans.ok() {
            report.notes.push(format!("{label}: accepted ({}): {}", ans.status, ans.brief()));
        }
    }

    /// The restricted tokens can do the same things to `a` (so the walk cannot pass vacuously).
    async fn positive_controls(&self, fx: &mut Fx, t: &Tokens, report: &mut Report) {
        let pre = format!("[{}] positive control", self.backend);
        let a = fx.a.clone();
        let ops = fx.ops.clone();
        let mut fail = |what: &str, ans: &Answer| {
            report.fails.push(format!("{pre}: {what}: {} {}", ans.status, ans.brief()));
        };
        let r = self.call(&t.ra, Method::GET, "/v1/jobs?queue=a&limit=1000", None).await;
        let good = r.ok() && a.ready.iter().all(|id| r.strict.contains(id.as_str()));
        if !good {
            fail("the admin token for a lists a's jobs", &r);
        }
        let r = self.call(&t.rr, Method::GET, &format!("/v1/jobs/{}", a.ready[0]), None).await;
        let good = r.ok() && r.json["id"] == a.ready[0].as_str();
        if !good {
            fail("the read token for a shows a's job", &r);
        }
        let r = self.call(&t.ra, Method::GET, "/v1/events?queue=a&since=0&limit=1000", None).await;
        let good = r.ok() && r.strict.contains(a.ready[0].as_str());
        if !good {
            fail("the admin token for a reads a's events", &r);
        }
        let r = self.call(&t.rr, Method::GET, "/v1/dlq?queue=a", None).await;
        let good = r.ok() && a.dead.iter().all(|id| r.strict.contains(id.as_str()));
        if !good {
            fail("the read token for a lists a's dead jobs", &r);
        }
        let r = self.call(&t.rr, Method::GET, "/v1/queues?queue=a", None).await;
        let listed = r.json["queues"].as_array().is_some_and(|qs| qs.iter().any(|q| q["queue"] == "a"));
        let good = r.ok() && listed;
        if !good {
            fail("the read token for a sees queue a's stats", &r);
        }
        let r = self.call(&t.ra, Method::GET, "/v1/schedules?queue=a", None).await;
        let good = r.ok() && r.strict.contains("sched-a");
        if !good {
            fail("the admin token for a lists a's schedule", &r);
        }
        let job = json!({"queue": "a", "payload": {"control": true}});
        let r = self.call(&t.rp, Method::POST, "/v1/jobs?queue=a", Some(&job)).await;
        if r.status != 201 {
            fail("the produce token for a enqueues into a", &r);
        }
        let claim = json!({"worker": "worker-a", "max": 1, "lease_ms": LONG_LEASE_MS, "wait_ms": 0});
        let r = self.call(&t.rw, Method::POST, "/v1/queues/a/claim?queue=a", Some(&claim)).await;
        let good = r.ok() && r.json["jobs"][0]["queue"] == "a";
        if !good {
            fail("the work token for a claims from a", &r);
        }
        let (id0, lease0) = &a.running[0];
        let beat = json!({"lease": lease0, "extend_ms": LONG_LEASE_MS});
        let r =
            self.call(&t.rw, Method::POST, &format!("/v1/jobs/{id0}/heartbeat?queue=a"), Some(&beat)).await;
        if !r.ok() {
            fail("the work token for a heartbeats a's job", &r);
        }
        let (id1, lease1) = &a.running[1];
        let items = json!({"items": [{"id": id1, "lease": lease1, "result": {"ok": true}}]});
        let r = self.call(&t.ra, Method::POST, "/v1/jobs/complete?queue=a", Some(&items)).await;
        let good = r.ok() && r.json["results"][0]["ok"] == true;
        if !good {
            fail("the admin token for a batch-completes a's running job", &r);
        }
        let r = self.call(&t.ra, Method::POST, "/v1/dlq/purge?queue=a", Some(&json!({"queue": "a"}))).await;
        let good = r.ok() && r.json["purged"] == a.dead.len();
        if !good {
            fail("the admin token for a purges a's dead jobs", &r);
        }
        let left = self.must(&ops, Method::GET, "/v1/dlq?queue=a", None).await;
        if left["jobs"].as_array().is_none_or(|j| !j.is_empty()) {
            report.fails.push(format!("{pre}: a's DLQ is not empty after the purge: {left}"));
        }
        // Streams: SSE replays a's events; a WebSocket subscribed to queue:a gets a new one.
        let sse = self.run(fx, &t.ra, &sse_call("/v1/events/stream?queue=a&since=0".into()), false).await;
        let good = sse.status == 200 && sse.strict.contains(a.ready[0].as_str());
        if !good {
            report.fails.push(format!("{pre}: SSE of a shows a's events: {} {}", sse.status, sse.brief()));
        }
        match self.ws_connect(&t.ra, "/v1/ws?queue=a").await {
            Err(e) => report.fails.push(format!("{pre}: WebSocket of a: {} {}", e.status, e.brief())),
            Ok(mut ws) => {
                let mut ans =
                    Answer { status: 101, json: Value::Null, strict: String::new(), lenient: String::new() };
                let sub = json!({"op": "subscribe", "rooms": ["queue:a"]});
                ws.send(Message::Text(sub.to_string().into())).await.unwrap();
                let until = Instant::now() + Duration::from_secs(3);
                while ans.json.is_null() {
                    if !matches!(ws_read(&mut ws, &mut ans, until).await, Read::Message) {
                        break;
                    }
                }
                let id = self.enqueue(&ops, json!({"queue": "a", "payload": {}, "tags": ["tag-a"]})).await;
                let until = Instant::now() + Duration::from_secs(3);
                while !ans.strict.contains(id.as_str()) {
                    if !matches!(ws_read(&mut ws, &mut ans, until).await, Read::Message) {
                        break;
                    }
                }
                if ans.json["type"] != "subscribed" || !ans.strict.contains(id.as_str()) {
                    report.fails.push(format!(
                        "{pre}: a WebSocket of the admin token for a subscribes to queue:a and gets a's \
                         event: reply {}, messages {}",
                        ans.json,
                        ans.brief()
                    ));
                }
                let _ = ws.close(None).await;
            }
        }
    }
}

/// Read (0), write (1) or destructive (2): reads run first, destructive operations last.
fn phase_of(key: &str) -> u8 {
    if key.starts_with("GET ") {
        0
    } else if key.starts_with("DELETE ")
        || ["complete", "fail", "release", "cancel", "/v1/dlq/"].iter().any(|w| key.contains(w))
    {
        2
    } else {
        1
    }
}

fn operations(doc: &Value) -> Vec<String> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths in the OpenAPI document") {
        for m in ["get", "put", "post", "delete", "options", "head", "patch", "trace"] {
            if item.get(m).is_some() {
                ops.push(format!("{} {path}", m.to_uppercase()));
            }
        }
    }
    ops.sort();
    ops
}

// ---------------------------------------------------------------------------------------------
// The walk table: every operation of the document, its attack variants against b.

/// `who`: the walker (0..WALKERS), so oracles that create something in `a` use their own key.
fn variants(key: &str, fx: &Fx, who: usize) -> Option<Vec<Variant>> {
    let b = &fx.b;
    let (enqueue_key, import_key) = (&b.ukeys[2 + 2 * who], &b.ukeys[3 + 2 * who]);
    let (run0, lease0) = (b.running[0].0.as_str(), b.running[0].1.as_str());
    let (run1, lease1) = (b.running[1].0.as_str(), b.running[1].1.as_str());
    let (run2, lease2) = (b.running[2].0.as_str(), b.running[2].1.as_str());
    let (ready0, ready1) = (b.ready[0].as_str(), b.ready[1].as_str());
    let (dead0, dead1) = (b.dead[0].as_str(), b.dead[1].as_str());
    let trigger = b.trigger.as_str();
    let (n1, n2) = (fresh_id(), fresh_id());
    let (n1, n2) = (n1.as_str(), n2.as_str());
    let r: u32 = rand::random();
    // A job action on b's job, then with the id percent-encoded, then without `?queue=a`.
    let act = |action: &str, id: &str, body: Value| {
        let at = |id: &str, query: &str| format!("/v1/jobs/{id}/{action}{query}");
        vec![
            v(format!("{action} b's job"), post(at(id, "?queue=a"), body.clone()))
                .twin(post(at(n1, "?queue=a"), body.clone()))
                .refused(),
            v(
                format!("{action} b's job, its id percent-encoded"),
                post(at(encoded(id).as_str(), "?queue=a"), body.clone()),
            )
            .twin(post(at(encoded(n1).as_str(), "?queue=a"), body.clone()))
            .refused(),
            v(format!("{action} b's job without ?queue"), post(at(id, ""), body.clone()))
                .twin(post(at(n1, ""), body))
                .refused(),
        ]
    };
    let queue_act = |method: Method, action: &str, body: Option<Value>| {
        vec![
            v(
                format!("{action} b"),
                req(method.clone(), format!("/v1/queues/b/{action}?queue=a"), body.clone()),
            )
            .twin(req(method.clone(), format!("/v1/queues/zz/{action}?queue=a"), body.clone()))
            .refused(),
            v(
                format!("{action} b, its name percent-encoded"),
                req(method.clone(), format!("/v1/queues/%62/{action}?queue=a"), body.clone()),
            )
            .twin(req(method, format!("/v1/queues/%7A%7A/{action}?queue=a"), body))
            .refused(),
        ]
    };
    let schedule_act = |method: Method, suffix: &str, body: Option<Value>| {
        let what = format!("{method} b's schedule{suffix}");
        vec![
            v(
                what.clone(),
                req(method.clone(), format!("/v1/schedules/sched-b{suffix}?queue=a"), body.clone()),
            )
            .twin(req(method.clone(), format!("/v1/schedules/nosuch{suffix}?queue=a"), body.clone()))
            .refused(),
            v(
                format!("{what} without ?queue"),
                req(method.clone(), format!("/v1/schedules/sched-b{suffix}"), body.clone()),
            )
            .twin(req(method, format!("/v1/schedules/nosuch{suffix}"), body))
            .refused(),
        ]
    };
    let dlq = |op: &str| {
        let at = |query: &str| format!("/v1/dlq/{op}{query}");
        vec![
            v(format!("{op} b's DLQ by queue"), post(at("?queue=a"), json!({"queue": "b"}))).refused(),
            v(format!("{op} b's DLQ by queue without ?queue"), post(at(""), json!({"queue": "b"}))).refused(),
            v(format!("{op} b's dead jobs by id"), post(at("?queue=a"), json!({"ids": [dead0, dead1]})))
                .twin(post(at("?queue=a"), json!({"ids": [n1, n2]}))),
        ]
    };
    let reads = |path: &str| {
        vec![
            v(format!("{path}?queue=a"), get(format!("{path}?queue=a"))),
            v(format!("{path} without ?queue"), get(path)),
        ]
    };
    let events = |path: &str, call: fn(String) -> Call| {
        vec![
            v("a's events", call(format!("{path}?queue=a&since=0"))),
            v("every event, no queue named", call(format!("{path}?since=0"))),
            v("a's events or those tagged b's tag", call(format!("{path}?queue=a&tag=tag-b&since=0"))),
            v("a's events or those of b's job", call(format!("{path}?queue=a&job_id={trigger}&since=0"))),
        ]
    };
    let sub = |rooms: Value| Some(json!({"op": "subscribe", "rooms": rooms}));
    let vs = match key {
        "POST /v1/jobs" => vec![
            v("enqueue into b", post("/v1/jobs?queue=a", json!({"queue": "b", "payload": {}}))).refused(),
            v("enqueue into b without ?queue", post("/v1/jobs", json!({"queue": "b"}))).refused(),
            v(
                "batch into a and b",
                post("/v1/jobs?queue=a", json!({"jobs": [{"queue": "a"}, {"queue": "b"}]})),
            ),
            v(
                "existence oracle: enqueue into a with b's unique_key",
                post("/v1/jobs?queue=a", json!({"queue": "a", "unique_key": enqueue_key})),
            )
            .twin(post("/v1/jobs?queue=a", json!({"queue": "a", "unique_key": format!("ukey-none-{r}")}))),
            v(
                "existence oracle: enqueue into a depending on b's ready job",
                post("/v1/jobs?queue=a", json!({"queue": "a", "depends_on": [ready1]})),
            )
            .twin(post("/v1/jobs?queue=a", json!({"queue": "a", "depends_on": [n1]}))),
            v(
                "existence oracle: enqueue into a depending on b's dead job",
                post("/v1/jobs?queue=a", json!({"queue": "a", "depends_on": [dead0]})),
            )
            .twin(post("/v1/jobs?queue=a", json!({"queue": "a", "depends_on": [n1]}))),
        ],
        "GET /v1/jobs" => vec![
            v("list a", get("/v1/jobs?queue=a&limit=1000")),
            v("list without a queue", get("/v1/jobs?limit=1000")),
            v("list b", get("/v1/jobs?queue=b")).refused(),
            v("list b, percent-encoded", get("/v1/jobs?queue=%62")).refused(),
            v("list a and b (queue twice)", get("/v1/jobs?queue=a&queue=b")),
            v("list b and a (queue twice)", get("/v1/jobs?queue=b&queue=a")),
            v("list a's dead jobs", get("/v1/jobs?queue=a&state=dead&limit=1000")),
        ],
        "GET /v1/jobs/{id}" => {
            let mut out = Vec::new();
            for (what, id) in [("ready", ready0), ("running", run0), ("dead", dead0)] {
                out.push(
                    v(format!("show b's {what} job"), get(format!("/v1/jobs/{id}?queue=a")))
                        .twin(get(format!("/v1/jobs/{n1}?queue=a")))
                        .refused(),
                );
                out.push(
                    v(
                        format!("show b's {what} job, its id percent-encoded"),
                        get(format!("/v1/jobs/{}?queue=a", encoded(id))),
                    )
                    .twin(get(format!("/v1/jobs/{}?queue=a", encoded(n1))))
                    .refused(),
                );
            }
            out.push(
                v("show b's job without ?queue", get(format!("/v1/jobs/{ready0}")))
                    .twin(get(format!("/v1/jobs/{n1}")))
                    .refused(),
            );
            out
        }
        "POST /v1/queues/{queue}/claim" => queue_act(
            Method::POST,
            "claim",
            Some(json!({"worker": "worker-x", "max": 10, "lease_ms": LONG_LEASE_MS, "wait_ms": 0})),
        ),
        "POST /v1/jobs/{id}/heartbeat" => {
            act("heartbeat", run0, json!({"lease": lease0, "extend_ms": 2 * LONG_LEASE_MS}))
        }
        "POST /v1/jobs/{id}/complete" => act("complete", run0, json!({"lease": lease0, "result": {"x": 1}})),
        "POST /v1/jobs/{id}/fail" => {
            act("fail", run0, json!({"lease": lease0, "error": "x", "retry": false}))
        }
        "POST /v1/jobs/{id}/release" => act("release", run0, json!({"lease": lease0})),
        "POST /v1/jobs/{id}/cancel" => act("cancel", ready0, json!({"reason": "x"})),
        "POST /v1/jobs/complete" => {
            let items = |id: &str| json!({"items": [{"id": id, "lease": lease1, "result": {}}]});
            vec![
                v(
                    "batch-complete b's running job with its real lease",
                    post("/v1/jobs/complete?queue=a", items(run1)),
                )
                .twin(post("/v1/jobs/complete?queue=a", items(n1))),
                v("batch-complete b's running job without ?queue", post("/v1/jobs/complete", items(run1)))
                    .twin(post("/v1/jobs/complete", items(n1))),
            ]
        }
        "POST /v1/jobs/heartbeat" => {
            let items = |id: &str| json!({"worker": "worker-x", "items": [{"id": id, "lease": lease0}]});
            vec![
                v(
                    "batch-heartbeat b's running job with its real lease",
                    post("/v1/jobs/heartbeat?queue=a", items(run0)),
                )
                .twin(post("/v1/jobs/heartbeat?queue=a", items(n1))),
                v("batch-heartbeat b's running job without ?queue", post("/v1/jobs/heartbeat", items(run0)))
                    .twin(post("/v1/jobs/heartbeat", items(n1))),
            ]
        }
        "POST /v1/jobs/fail" => {
            let items =
                |id: &str| json!({"items": [{"id": id, "lease": lease2, "error": "x", "retry": false}]});
            vec![
                v(
                    "batch-fail b's running job with its real lease",
                    post("/v1/jobs/fail?queue=a", items(run2)),
                )
                .twin(post("/v1/jobs/fail?queue=a", items(n1))),
                v("batch-fail b's running job without ?queue", post("/v1/jobs/fail", items(run2)))
                    .twin(post("/v1/jobs/fail", items(n1))),
            ]
        }
        "POST /v1/import" => {
            let one = |job: Value| json!({"jobs": [{"job": job}]});
            vec![
                v("import a ready job into b", post("/v1/import?queue=a", one(json!({"queue": "b", "unique_key": format!("imp-{r}-1")})))).refused(),
                v(
                    "import a completed job into b",
                    post(
                        "/v1/import?queue=a",
                        json!({"jobs": [{"job": {"queue": "b", "unique_key": format!("imp-{r}-2")}, "state": "completed", "result": {"ok": true}}]}),
                    ),
                )
                .refused(),
                v(
                    "import into a and b at once",
                    post(
                        "/v1/import?queue=a",
                        json!({"jobs": [{"job": {"queue": "a", "unique_key": format!("imp-{r}-3")}}, {"job": {"queue": "b", "unique_key": format!("imp-{r}-4")}}]}),
                    ),
                ),
                v("import into b without ?queue", post("/v1/import", one(json!({"queue": "b", "unique_key": format!("imp-{r}-5")})))).refused(),
                v("existence oracle: import into a with b's unique_key", post("/v1/import?queue=a", one(json!({"queue": "a", "unique_key": import_key}))))
                    .twin(post("/v1/import?queue=a", one(json!({"queue": "a", "unique_key": format!("imp-{r}-6")})))),
            ]
        }
        "GET /v1/queues" => reads("/v1/queues"),
        "POST /v1/queues/{queue}/pause" => queue_act(Method::POST, "pause", None),
        "POST /v1/queues/{queue}/resume" => queue_act(Method::POST, "resume", None),
        "PUT /v1/queues/{queue}/limits" => queue_act(Method::PUT, "limits", Some(json!({"max_running": 1}))),
        "GET /v1/queues/{queue}/limits" => queue_act(Method::GET, "limits", None),
        "GET /v1/dlq" => vec![
            v("a's DLQ", get("/v1/dlq?queue=a")),
            v("DLQ without ?queue", get("/v1/dlq")),
            v("b's DLQ", get("/v1/dlq?queue=b")).refused(),
        ],
        "POST /v1/dlq/replay" => dlq("replay"),
        "POST /v1/dlq/purge" => dlq("purge"),
        "POST /v1/schedules" => vec![
            v(
                "create a schedule enqueueing into b",
                post(
                    "/v1/schedules?queue=a",
                    json!({"name": format!("evil-{r}"), "cron": CRON, "job": {"queue": "b"}}),
                ),
            )
            .refused(),
            v(
                "create a schedule enqueueing into b without ?queue",
                post(
                    "/v1/schedules",
                    json!({"name": format!("evil2-{r}"), "cron": CRON, "job": {"queue": "b"}}),
                ),
            )
            .refused(),
            // Schedule names are global identifiers (as token ids are): creating one under a
            // name that is taken answers 409 whoever holds it, which says the name is taken and
            // nothing more (not its queue, nor its content: the secrets scan checks the answer,
            // and b's schedule must stay unchanged). Documented in the README's threat model.
            v(
                "create a schedule for a under a name b's schedule holds",
                post(
                    "/v1/schedules?queue=a",
                    json!({"name": format!("sched-b-o{who}"), "cron": CRON, "job": {"queue": "a"}}),
                ),
            ),
        ],
        "GET /v1/schedules" => reads("/v1/schedules"),
        "GET /v1/schedules/{name}" => schedule_act(Method::GET, "", None),
        "PATCH /v1/schedules/{name}" => {
            let mut out = schedule_act(Method::PATCH, "", Some(json!({"cron": "0 0 2 1 *", "paused": true})));
            out.push(
                v(
                    "retarget a's schedule to b",
                    req(Method::PATCH, "/v1/schedules/sched-a?queue=a", Some(json!({"job": {"queue": "b"}}))),
                )
                .refused(),
            );
            out
        }
        "DELETE /v1/schedules/{name}" => schedule_act(Method::DELETE, "", None),
        "POST /v1/schedules/{name}/pause" => schedule_act(Method::POST, "/pause", None),
        "POST /v1/schedules/{name}/resume" => schedule_act(Method::POST, "/resume", None),
        "GET /v1/events" => {
            let mut out = events("/v1/events", |t| get(format!("{t}&wait_ms=0&limit=1000")));
            out.extend([
                v("b's events", get("/v1/events?queue=b&since=0&wait_ms=0")).refused(),
                v("a's and b's events (one list)", get("/v1/events?queue=a,b&since=0&wait_ms=0")),
                v(
                    "a's events or those tagged b's tag (twin: unused tag)",
                    get("/v1/events?queue=a&tag=tag-b&since=0&wait_ms=0"),
                )
                .twin(get("/v1/events?queue=a&tag=tag-zz&since=0&wait_ms=0")),
                v(
                    "a's events or those of b's ready job",
                    get(format!("/v1/events?queue=a&job_id={ready0}&since=0&wait_ms=0")),
                )
                .twin(get(format!("/v1/events?queue=a&job_id={n1}&since=0&wait_ms=0"))),
                v(
                    "a's events or those of b's dead job",
                    get(format!("/v1/events?queue=a&job_id={dead0}&since=0&wait_ms=0")),
                )
                .twin(get(format!("/v1/events?queue=a&job_id={n1}&since=0&wait_ms=0"))),
                v("a's dead-job events", get("/v1/events?queue=a&type=job.dead&since=0&wait_ms=0")),
            ]);
            out
        }
        "GET /v1/events/stream" => events("/v1/events/stream", sse_call),
        "GET /v1/ws" => vec![
            v("subscribe to every event (*)", ws_call("/v1/ws?queue=a", sub(json!(["*"])))).refused(),
            v("subscribe to queue:b", ws_call("/v1/ws?queue=a", sub(json!(["queue:b"])))).refused(),
            v(
                "subscribe to queue:b (room form)",
                ws_call("/v1/ws?queue=a", Some(json!({"op": "subscribe", "room": "queue:b"}))),
            )
            .refused(),
            v("subscribe to b's tag", ws_call("/v1/ws?queue=a", sub(json!(["tag:tag-b"])))),
            v("subscribe to b's job", ws_call("/v1/ws?queue=a", sub(json!([format!("job:{trigger}")]))))
                .twin(ws_call("/v1/ws?queue=a", sub(json!([format!("job:{n1}")])))),
            v(
                "a's events or those tagged b's tag, by query",
                ws_call("/v1/ws?queue=a&tag=tag-b&since=0", None),
            ),
            v("connect to b's events", ws_call("/v1/ws?queue=b&since=0", None)).refused(),
            v(
                "connect naming no queue, then subscribe to queue:b",
                ws_call("/v1/ws", sub(json!(["queue:b"]))),
            )
            .refused(),
        ],
        "POST /v1/tokens" => vec![
            v(
                "mint an unrestricted admin token",
                post("/v1/tokens?queue=a", json!({"name": format!("esc-{r}"), "scopes": ["admin"]})),
            )
            .narrow(),
            v(
                "mint a token for b",
                post(
                    "/v1/tokens?queue=a",
                    json!({"name": format!("esc-{r}"), "scopes": ["read"], "queues": ["b"]}),
                ),
            )
            .narrow(),
            v(
                "mint a token for a and b",
                post(
                    "/v1/tokens?queue=a",
                    json!({"name": format!("esc-{r}"), "scopes": ["produce"], "queues": ["a", "b"]}),
                ),
            )
            .narrow(),
        ],
        "GET /v1/tokens" => reads("/v1/tokens"),
        "DELETE /v1/tokens/{id}" => vec![
            v(
                "revoke the token limited to b",
                req(Method::DELETE, format!("/v1/tokens/{}?queue=a", fx.tok_b_id), None),
            )
            .twin(req(Method::DELETE, format!("/v1/tokens/{n1}?queue=a"), None))
            .refused(),
            v(
                "revoke the unrestricted root token",
                req(Method::DELETE, format!("/v1/tokens/{}?queue=a", fx.root_id), None),
            )
            .twin(req(Method::DELETE, format!("/v1/tokens/{n1}?queue=a"), None))
            .refused(),
        ],
        "GET /v1/workers" => reads("/v1/workers"),
        // Hosts belong to no queue: nothing of b to reveal or change; a 2xx is only noted.
        "POST /v1/hosts" => vec![v(
            "register a host",
            post(
                "/v1/hosts?queue=a",
                json!({"name": format!("host-{r}"), "health_url": "http://127.0.0.1:9/health"}),
            ),
        )],
        "GET /v1/hosts" => reads("/v1/hosts"),
        // Work items belong to no queue: a token restricted to queues is refused them all.
        "POST /v1/items" => vec![
            v("create an item", post("/v1/items?queue=a", json!({"title": "t"}))).forbidden(),
            v("repeat an item's create", post("/v1/items", json!({"id": "item-b", "title": "t"})))
                .forbidden(),
        ],
        "GET /v1/items" => vec![v("list items", get("/v1/items?queue=a")).forbidden()],
        "GET /v1/items/{id}" => vec![
            v("read an item", get("/v1/items/item-b?queue=a")).forbidden(),
            v("long-poll an item", get("/v1/items/item-b?wait_version_gt=9&wait_ms=10")).forbidden(),
        ],
        "GET /v1/items/{id}/history" => {
            vec![v("read an item's history", get("/v1/items/item-b/history")).forbidden()]
        }
        "PATCH /v1/items/{id}" => vec![
            v("change an item", req(Method::PATCH, "/v1/items/item-b?queue=a", Some(json!({"title": "x"}))))
                .forbidden(),
        ],
        "POST /v1/items/batch" => vec![
            v(
                "batch-change items",
                post(
                    "/v1/items/batch?queue=a",
                    json!({"ops": [{"op": "patch", "id": "item-b", "title": "x"}]}),
                ),
            )
            .forbidden(),
        ],
        // Messages belong to agents, not queues: a token restricted to queues is refused them all,
        // for agents that exist (`b-agent`, named by the setup below) and unknown ones alike.
        "POST /v1/messages" => vec![
            v(
                "send as an agent",
                post("/v1/messages?queue=a", json!({"to": ["b-agent"], "from": "a", "body": {}})),
            )
            .forbidden(),
        ],
        "POST /v1/broadcasts" => {
            vec![
                v("broadcast as an agent", post("/v1/broadcasts?queue=a", json!({"from": "a", "body": {}})))
                    .forbidden(),
            ]
        }
        "GET /v1/agents" => vec![v("list agents", get("/v1/agents?queue=a")).forbidden()],
        "GET /v1/agents/{agent}" => vec![
            v("read an agent", get("/v1/agents/b-agent")).forbidden(),
            v("read an unknown agent", get("/v1/agents/nosuch-agent")).forbidden(),
        ],
        "GET /v1/agents/{agent}/dead" => {
            vec![v("read dead letters", get("/v1/agents/b-agent/dead")).forbidden()]
        }
        "POST /v1/agents/{agent}/receive" => vec![
            v("receive", post("/v1/agents/b-agent/receive", json!({}))).forbidden(),
            v("receive as an unknown agent", post("/v1/agents/nosuch-agent/receive", json!({}))).forbidden(),
        ],
        "POST /v1/agents/{agent}/ack" => {
            vec![v("ack", post("/v1/agents/b-agent/ack", json!({"receipts": ["x"]}))).forbidden()]
        }
        "POST /v1/agents/{agent}/nack" => {
            vec![v("nack", post("/v1/agents/b-agent/nack", json!({"receipts": ["x"]}))).forbidden()]
        }
        "POST /v1/agents/{agent}/dead/replay" => {
            vec![v("replay dead letters", post("/v1/agents/b-agent/dead/replay", json!({}))).forbidden()]
        }
        "PUT /v1/agents/{agent}/channels" => vec![
            v(
                "set channels",
                req(Method::PUT, "/v1/agents/b-agent/channels", Some(json!({"channels": ["x"]}))),
            )
            .forbidden(),
        ],
        "POST /v1/convoys" => vec![
            v("create a convoy on b", post("/v1/convoys", json!({"queue": "b", "members": [{}]})))
                .forbidden(),
            v(
                "create a convoy on a that completes on b",
                post("/v1/convoys", json!({"queue": "a", "on_complete": {"queue": "b"}})),
            )
            .forbidden(),
        ],
        "GET /v1/convoys" => vec![
            v("list b's convoys", get("/v1/convoys?queue=b")).forbidden(),
            v("list convoys (narrowed to a)", get("/v1/convoys")),
        ],
        "GET /v1/convoys/{id}" => {
            vec![v("read an unknown convoy", get("/v1/convoys/nosuch-convoy")).forbidden()]
        }
        "GET /v1/convoys/{id}/members" => {
            vec![v("list an unknown convoy's members", get("/v1/convoys/nosuch-convoy/members")).forbidden()]
        }
        "POST /v1/convoys/{id}/members" => vec![
            v(
                "add to an unknown convoy",
                post("/v1/convoys/nosuch-convoy/members", json!({"members": [{}]})),
            )
            .forbidden(),
        ],
        "POST /v1/convoys/{id}/seal" => {
            vec![v("seal an unknown convoy", post("/v1/convoys/nosuch-convoy/seal", json!({}))).forbidden()]
        }
        "POST /v1/convoys/{id}/cancel" => {
            vec![
                v("cancel an unknown convoy", post("/v1/convoys/nosuch-convoy/cancel", json!({})))
                    .forbidden(),
            ]
        }
        // The ledger is not narrowed to queues: a restricted token reaches none of it.
        "POST /v1/ledger/accounts" => {
            vec![v("create an account", post("/v1/ledger/accounts", json!({"id": "acct-1"}))).forbidden()]
        }
        "GET /v1/ledger/accounts" => vec![v("list accounts", get("/v1/ledger/accounts")).forbidden()],
        "GET /v1/ledger/accounts/{id}" => {
            vec![v("read an account", get("/v1/ledger/accounts/acct-1")).forbidden()]
        }
        "POST /v1/ledger/accounts/{id}/close" => {
            vec![v("close an account", post("/v1/ledger/accounts/acct-1/close", json!({}))).forbidden()]
        }
        "GET /v1/ledger/accounts/{id}/transfers" => {
            vec![v("read a statement", get("/v1/ledger/accounts/acct-1/transfers")).forbidden()]
        }
        "POST /v1/ledger/transfers" => vec![
            v(
                "transfer",
                post(
                    "/v1/ledger/transfers",
                    json!({"id": "t-1", "debit_account": "acct-1", "credit_account": "acct-2", "amount": 1}),
                ),
            )
            .forbidden(),
        ],
        "GET /v1/ledger/transfers/{id}" => {
            vec![v("read a transfer", get("/v1/ledger/transfers/t-1")).forbidden()]
        }
        "POST /v1/ledger/transfers/{id}/post" => {
            vec![v("post a transfer", post("/v1/ledger/transfers/t-1/post", json!({}))).forbidden()]
        }
        "POST /v1/ledger/transfers/{id}/void" => {
            vec![v("void a transfer", post("/v1/ledger/transfers/t-1/void", json!({}))).forbidden()]
        }
        "GET /v1/ledger/events" => vec![v("read the ledger's events", get("/v1/ledger/events")).forbidden()],
        "POST /v1/ledger/verify" => {
            vec![v("verify the ledger", post("/v1/ledger/verify", json!({}))).forbidden()]
        }
        // Checkpoints are not narrowed to queues: a restricted token reaches none of them.
        "PUT /v1/threads/{thread}/checkpoints/{id}" => vec![
            v(
                "put a checkpoint",
                req(
                    Method::PUT,
                    "/v1/threads/th-1/checkpoints/cp-1",
                    Some(json!({"checkpoint": {"type": "msgpack", "data": ""}})),
                ),
            )
            .forbidden(),
        ],
        "GET /v1/threads/{thread}/checkpoints/{id}" => {
            vec![v("read a checkpoint", get("/v1/threads/th-1/checkpoints/latest")).forbidden()]
        }
        "POST /v1/threads/{thread}/checkpoints/{id}/writes" => vec![
            v(
                "put writes",
                post(
                    "/v1/threads/th-1/checkpoints/cp-1/writes",
                    json!({"task_id": "t", "writes": [{"channel": "c", "type": "msgpack", "data": ""}]}),
                ),
            )
            .forbidden(),
        ],
        "GET /v1/checkpoints" => vec![v("list checkpoints", get("/v1/checkpoints")).forbidden()],
        "GET /v1/threads" => vec![v("list threads", get("/v1/threads")).forbidden()],
        "GET /v1/threads/{thread}" => vec![v("read a thread", get("/v1/threads/th-1")).forbidden()],
        "PATCH /v1/threads/{thread}" => {
            vec![
                v("change a thread", req(Method::PATCH, "/v1/threads/th-1", Some(json!({"keep_last": 1}))))
                    .forbidden(),
            ]
        }
        "DELETE /v1/threads/{thread}" => {
            vec![v("delete a thread", req(Method::DELETE, "/v1/threads/th-1", None)).forbidden()]
        }
        "POST /v1/threads/{thread}/copy" => {
            vec![v("copy a thread", post("/v1/threads/th-1/copy", json!({"to": "th-2"}))).forbidden()]
        }
        "POST /v1/checkpoints/prune" => {
            vec![v("prune threads", post("/v1/checkpoints/prune", json!({"threads": ["th-1"]}))).forbidden()]
        }
        "POST /v1/checkpoints/delete-runs" => {
            vec![v("delete runs", post("/v1/checkpoints/delete-runs", json!({"run_ids": ["r"]}))).forbidden()]
        }
        // Memory is narrowed to namespaces, not queues: a queue-restricted token reaches none.
        "POST /v1/memory/episodes" => {
            vec![v("add an episode", post("/v1/memory/episodes", json!({"namespace": "a"}))).forbidden()]
        }
        "POST /v1/memory/episodes/batch" => vec![
            v("add episodes", post("/v1/memory/episodes/batch", json!({"episodes": [{"namespace": "a"}]})))
                .forbidden(),
        ],
        "GET /v1/memory/episodes" => vec![v("list episodes", get("/v1/memory/episodes")).forbidden()],
        "GET /v1/memory/episodes/{id}" => {
            vec![
                v("read an episode", get("/v1/memory/episodes/01900000-0000-7000-8000-000000000000"))
                    .forbidden(),
            ]
        }
        "PATCH /v1/memory/episodes/{id}" => vec![
            v(
                "change an episode",
                req(
                    Method::PATCH,
                    "/v1/memory/episodes/01900000-0000-7000-8000-000000000000",
                    Some(json!({"importance": 1})),
                ),
            )
            .forbidden(),
        ],
        "DELETE /v1/memory/episodes/{id}" => vec![
            v(
                "delete an episode",
                req(Method::DELETE, "/v1/memory/episodes/01900000-0000-7000-8000-000000000000", None),
            )
            .forbidden(),
        ],
        "POST /v1/memory/search" => {
            vec![v("search memory", post("/v1/memory/search", json!({"namespace": "a"}))).forbidden()]
        }
        "GET /v1/memory/stats" => vec![v("memory stats", get("/v1/memory/stats")).forbidden()],
        "POST /v1/memory/reconcile" => {
            vec![v("reconcile memory", post("/v1/memory/reconcile", json!({}))).forbidden()]
        }
        "POST /v1/memory/rebuild" => {
            vec![v("rebuild memory", post("/v1/memory/rebuild", json!({}))).forbidden()]
        }
        "DELETE /v1/hosts/{name}" => vec![
            v("remove a host", req(Method::DELETE, "/v1/hosts/host-1?queue=a", None)),
            v("remove an unknown host", req(Method::DELETE, "/v1/hosts/nosuch-host?queue=a", None)),
        ],
        "GET /metrics" => vec![
            v("metrics", get("/metrics?queue=a")).forbidden(),
            v("metrics without ?queue", get("/metrics")).forbidden(),
        ],
        "GET /v1/backup" => vec![v("a copy of the whole database", get("/v1/backup")).forbidden()],
        "GET /v1/stats" => reads("/v1/stats"),
        "GET /v1/advice" => reads("/v1/advice"),
        "GET /v1/advice/history" => reads("/v1/advice/history"),
        "GET /readyz" => reads("/readyz"),
        "GET /v1/server" => reads("/v1/server"),
        _ => return None,
    };
    Some(vs)
}

async fn walk(s: &Server, backend: &'static str) {
    let ctx = Ctx {
        s,
        http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
        backend,
    };
    let (mut fx, tokens) = ctx.setup().await;
    let doc = ctx.must(&tokens.root, Method::GET, "/v1/openapi.json", None).await;
    let mut keys = operations(&doc);
    assert!(keys.len() >= 40, "only {} operations in the OpenAPI document", keys.len());
    let mut report = Report::default();
    for k in &keys {
        if !SKIPPED.contains(&k.as_str()) && variants(k, &fx, 0).is_none() {
            report.fails.push(format!(
                "[{backend}] {k} is in /v1/openapi.json but has no entry in the walk table (add its variants)"
            ));
        }
    }
    keys.retain(|k| !SKIPPED.contains(&k.as_str()) && variants(k, &fx, 0).is_some());
    let walkers: [(&str, String); WALKERS] = [
        ("read token for a", tokens.rr.clone()),
        ("produce token for a", tokens.rp.clone()),
        ("work token for a", tokens.rw.clone()),
        ("admin token for a", tokens.ra.clone()),
    ];
    let mut base = ctx.snapshot(&fx).await;
    let mut sent = 0usize;
    for phase in 0..3 {
        for (who, (name, token)) in walkers.iter().enumerate() {
            for key in keys.iter().filter(|k| phase_of(k) == phase) {
                let mut i = 0;
                while let Some(variant) = variants(key, &fx, who).and_then(|vs| vs.into_iter().nth(i)) {
                    i += 1;
                    sent += 1;
                    let label = format!("[{backend}] {name}: {key} — {}", variant.name);
                    ctx.check(&mut fx, &label, token, &variant, &mut report).await;
                    let after = ctx.snapshot(&fx).await;
                    // Streams cannot change anything; their trigger changed b on purpose.
                    let stream = !matches!(variant.call, Call::Http { .. });
                    let changed = if stream { Vec::new() } else { diff(&base, &after) };
                    if changed.is_empty() {
                        base = after;
                    } else {
                        report.fails.push(format!("{label}: changed b: {}", changed.join("; ")));
                        ctx.repair(&mut fx).await;
                        base = ctx.snapshot(&fx).await;
                    }
                }
            }
        }
    }
    assert!(sent > 300, "[{backend}] only {sent} variants sent");
    ctx.positive_controls(&mut fx, &tokens, &mut report).await;
    for n in &report.notes {
        eprintln!("note: {n}");
    }
    assert!(
        report.fails.is_empty(),
        "[{backend}] {} problem(s) with tokens restricted to queue a ({sent} variants sent):\n{}",
        report.fails.len(),
        report.fails.join("\n")
    );
}

/// What changed in b between two snapshots.
fn diff(before: &BTreeMap<String, Value>, after: &BTreeMap<String, Value>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, was) in before {
        match after.get(k) {
            None => out.push(format!("{k} is gone")),
            Some(now) if now != was => {
                let fields = match (was.as_object(), now.as_object()) {
                    (Some(a), Some(b)) => a
                        .keys()
                        .chain(b.keys())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .filter(|f| a.get(*f) != b.get(*f))
                        .map(|f| format!("{f} {} -> {}", short(a.get(f)), short(b.get(f))))
                        .collect::<Vec<_>>()
                        .join(", "),
                    _ => format!("{} -> {}", short(Some(was)), short(Some(now))),
                };
                out.push(format!("{k} changed ({fields})"));
            }
            Some(_) => {}
        }
    }
    for (k, now) in after {
        if !before.contains_key(k) {
            out.push(format!("{k} appeared ({})", short(Some(now))));
        }
    }
    out
}
