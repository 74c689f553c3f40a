//! Security contract, end to end over real HTTP against the real binary, on SQLite and (where
//! storage is involved) PostgreSQL:
//!
//! 1. Auth does not switch itself off: the first token turns it on for good (revocations and
//!    restarts keep it on); only `auth = false` / `--auth false` turns it off.
//! 2. Client mistakes (NUL characters anywhere in the input) are 422 naming the field, on both
//!    backends alike, and never count as storage failures for the circuit breaker.
//! 3. JSON nesting is bounded by `limits.max_json_depth` (64) over the whole body, and what is
//!    accepted reads back.
//! 4. Cross-site requests: bodies must say they are JSON (415), foreign origins are refused
//!    (403) unless listed in `cors_origins`, WebSocket upgrades included.
//! 5. Small defects: no leak of in-flight requests when clients go away (counted as 499),
//!    impossible crons and host-dependent time zones, `-0`, 414/431 with JSON bodies, the host
//!    allow-list, event cursors out of range, and exact queue depth under concurrent producers.
//!
//! Every test body runs under a timeout, so a stall fails loudly instead of hanging CI.

use crate::common::pg::TestDb;
use crate::common::{Server, error_code};
use reqwest::Method;
use serde_json::{Value, json};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Never fires during a test (midnight on January 1st).
const CRON: &str = "0 0 1 1 *";

/// Fails the test if `f` takes longer than `secs` (the stall guard).
async fn bounded<T>(secs: u64, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f).await.expect("test stalled past its time bound")
}

// ---------------------------------------------------------------------------------------------
// Servers

/// Which backend a test body runs on, for messages.
fn backend(db: Option<&str>) -> &'static str {
    if db.is_some() { "postgres" } else { "sqlite" }
}

/// `serve` arguments: `--database <url>` on PostgreSQL, then `extra`.
fn serve_args<'a>(db: Option<&'a str>, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = Vec::new();
    if let Some(url) = db {
        args.extend(["--database", url]);
    }
    args.extend_from_slice(extra);
    args
}

/// Starts a server whose data directory (its working directory) holds `ferry.toml` = `toml`.
fn start(db: Option<&str>, toml: &str, extra: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ferry.toml"), toml).unwrap();
    Server::start_with(&serve_args(db, extra), dir)
}

/// Stops `s` gracefully and starts a new server on the same data directory (and database).
fn restart(s: &mut Server, db: Option<&str>, extra: &[&str]) -> Server {
    let status = s.stop();
    assert!(status.success(), "[{}] server did not exit cleanly on SIGTERM: {status}", backend(db));
    Server::start_with(&serve_args(db, extra), s.take_dir())
}

/// The first log line matching `pred`, waiting up to 5 s for the output reader to see it.
async fn log_line(s: &Server, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = s.log.lock().unwrap().iter().find(|l| pred(l)).cloned();
        if let Some(l) = found {
            return l;
        }
        if Instant::now() > deadline {
            panic!("no log line {what}; the server logged: {:#?}", s.log.lock().unwrap());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The startup line of `s` ("ferry listening on ...").
async fn startup_line(s: &Server) -> String {
    log_line(s, "\"ferry listening on\"", |l| l.contains("ferry listening on")).await
}

// ---------------------------------------------------------------------------------------------
// Requests and answers

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// One answer: status, headers, raw text and JSON body (`Null` when empty or not JSON).
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error code (panics, showing the body, unless it is the error shape).
    fn code(&self) -> String {
        error_code(&self.body)
    }

    /// `error.field`, or "" when there is none.
    fn field(&self) -> &str {
        self.body["error"]["field"].as_str().unwrap_or("")
    }

    /// Status and the start of the body, for messages.
    fn brief(&self) -> String {
        let text: String = self.text.chars().take(400).collect();
        format!("{} {text}", self.status)
    }
}

async fn send(req: reqwest::RequestBuilder) -> Answer {
    let r = req.send().await.expect("an HTTP answer");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer { status, headers, text, body }
}

/// A request with an optional raw JSON body (sent as `application/json`) and bearer token.
async fn call(s: &Server, method: Method, path: &str, body: Option<&str>, token: Option<&str>) -> Answer {
    let mut req = http().request(method, s.at(path));
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_string());
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    send(req).await
}

async fn get(s: &Server, path: &str) -> Answer {
    call(s, Method::GET, path, None, None).await
}

async fn post(s: &Server, path: &str, body: &Value) -> Answer {
    call(s, Method::POST, path, Some(&body.to_string()), None).await
}

/// POSTs JSON text as it is (for `\u0000` escapes, `-0` and nesting serde would not write).
async fn post_text(s: &Server, path: &str, body: &str) -> Answer {
    call(s, Method::POST, path, Some(body), None).await
}

/// Enqueues a valid job and returns its id.
async fn enqueue(s: &Server, queue: &str) -> String {
    let a = post(s, "/v1/jobs", &json!({"queue": queue, "payload": {"n": 1}})).await;
    assert_eq!(a.status, 201, "enqueue into {queue}: {}", a.brief());
    a.body["id"].as_str().expect("an id").to_string()
}

/// Jobs of `queue` in `state`, from `GET /v1/queues`.
async fn count(s: &Server, queue: &str, state: &str) -> u64 {
    let a = get(s, "/v1/queues").await;
    assert_eq!(a.status, 200, "GET /v1/queues: {}", a.brief());
    a.body["queues"]
        .as_array()
        .expect("a queue list")
        .iter()
        .find(|q| q["queue"] == queue)
        .map_or(0, |q| q["counts"][state].as_u64().unwrap_or(0))
}

/// `/metrics` as text.
async fn metrics(s: &Server) -> String {
    let a = get(s, "/metrics").await;
    assert_eq!(a.status, 200, "/metrics: {}", a.brief());
    a.text
}

/// The value of one series (`name{labels}` exactly as exported) in a metrics text.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.split_whitespace().next()?.parse().ok())
}

/// `levels` nested containers, alternating objects and arrays, around a string.
fn nested(levels: usize) -> Value {
    let mut v = json!("bottom");
    for i in 0..levels {
        v = if i % 2 == 0 { json!({ "k": v, "i": i }) } else { json!([i, v]) };
    }
    v
}

/// `levels` nested arrays as JSON text.
fn arrays(levels: usize) -> String {
    format!("{}{}", "[".repeat(levels), "]".repeat(levels))
}

// ---------------------------------------------------------------------------------------------
// 1. Auth does not switch itself off

async fn auth_does_not_switch_itself_off(db: Option<&str>) {
    let be = backend(db);
    let mut s = start(db, "", &[]);
    let anon_list = |s: &Server| {
        let url = s.at("/v1/jobs");
        async move { send(http().get(url)).await }
    };
    let anon_mint = |s: &Server| {
        let url = s.at("/v1/tokens");
        async move {
            send(
                http()
                    .post(url)
                    .header("content-type", "application/json")
                    .body(r#"{"name":"sneaky","scopes":["admin"]}"#),
            )
            .await
        }
    };
    let refused = |a: &Answer, what: &str| {
        assert_eq!(a.status, 401, "[{be}] {what} must be 401: {}", a.brief());
        assert_eq!(a.code(), "unauthorized", "[{be}] {what}");
    };

    // No token yet: open, and /v1/server says so.
    let info = get(&s, "/v1/server").await;
    assert_eq!(info.status, 200, "[{be}] /v1/server before any token: {}", info.brief());
    assert_eq!(info.body["auth"], false, "[{be}] auth is off before any token: {}", info.body);
    assert_eq!(anon_list(&s).await.status, 200, "[{be}] no token yet: open");

    // The first token is minted anonymously and turns auth on, with a warning in the log.
    let root =
        call(&s, Method::POST, "/v1/tokens", Some(r#"{"name":"root","scopes":["admin"]}"#), None).await;
    assert_eq!(root.status, 201, "[{be}] the first token is minted anonymously: {}", root.brief());
    let root_token = root.body["token"].as_str().expect("the secret, shown once").to_string();
    let root_id = root.body["id"].as_str().expect("the token id").to_string();
    let warn = log_line(&s, "at WARN saying \"auth is now on\"", |l| {
        l.contains("WARN") && l.contains("auth is now on")
    })
    .await;
    assert!(!warn.is_empty());
    refused(&anon_list(&s).await, "GET /v1/jobs without a token once a token exists");
    refused(&anon_mint(&s).await, "an anonymous POST /v1/tokens once a token exists");

    let keep = call(
        &s,
        Method::POST,
        "/v1/tokens",
        Some(r#"{"name":"keep","scopes":["admin"]}"#),
        Some(&root_token),
    )
    .await;
    assert_eq!(keep.status, 201, "[{be}] second token minted with the first: {}", keep.brief());
    let keep_token = keep.body["token"].as_str().unwrap().to_string();
    let keep_id = keep.body["id"].as_str().unwrap().to_string();
    let info = call(&s, Method::GET, "/v1/server", None, Some(&root_token)).await;
    assert_eq!(info.status, 200, "[{be}] /v1/server with a token: {}", info.brief());
    assert_eq!(info.body["auth"], true, "[{be}] {}", info.body);
    assert!(
        info.body["auth_mode"].as_str().is_some_and(|m| !m.is_empty()),
        "[{be}] /v1/server has an auth_mode string: {}",
        info.body
    );

    // Revoking the first token (with itself) leaves auth on.
    let a = call(&s, Method::DELETE, &format!("/v1/tokens/{root_id}"), None, Some(&root_token)).await;
    assert_eq!(a.status, 200, "[{be}] revoke the first token: {}", a.brief());
    refused(&anon_list(&s).await, "GET /v1/jobs without a token after the first token was revoked");
    refused(&anon_mint(&s).await, "an anonymous POST /v1/tokens after the first token was revoked");
    refused(
        &call(&s, Method::GET, "/v1/jobs", None, Some(&root_token)).await,
        "GET /v1/jobs with the revoked token",
    );
    let a = call(&s, Method::GET, "/v1/jobs", None, Some(&keep_token)).await;
    assert_eq!(a.status, 200, "[{be}] the remaining token still works: {}", a.brief());
    // Tokens are reloaded from the store every second: still on after a reload. (A wait, not
    // a poll: this checks that nothing changes.)
    tokio::time::sleep(Duration::from_millis(1300)).await;
    refused(&anon_list(&s).await, "GET /v1/jobs without a token after a token reload");

    // A restart on the same data keeps it on.
    s = restart(&mut s, db, &[]);
    let line = startup_line(&s).await;
    assert!(line.contains("auth on"), "[{be}] the startup line says auth is on after a restart: {line}");
    refused(&anon_list(&s).await, "GET /v1/jobs without a token after a restart");
    refused(&anon_mint(&s).await, "an anonymous POST /v1/tokens after a restart");
    let info = call(&s, Method::GET, "/v1/server", None, Some(&keep_token)).await;
    assert_eq!(info.status, 200, "[{be}] /v1/server after a restart: {}", info.brief());
    assert_eq!(info.body["auth"], true, "[{be}] auth is on after a restart: {}", info.body);
    assert!(info.body["auth_mode"].as_str().is_some_and(|m| !m.is_empty()), "[{be}] {}", info.body);

    // Every token revoked: still on, before and after another restart.
    let a = call(&s, Method::DELETE, &format!("/v1/tokens/{keep_id}"), None, Some(&keep_token)).await;
    assert_eq!(a.status, 200, "[{be}] revoke the last token: {}", a.brief());
    refused(&anon_list(&s).await, "GET /v1/jobs without a token once every token is revoked");
    refused(&anon_mint(&s).await, "an anonymous POST /v1/tokens once every token is revoked");
    s = restart(&mut s, db, &[]);
    let line = startup_line(&s).await;
    assert!(line.contains("auth on"), "[{be}] auth on after a restart with every token revoked: {line}");
    refused(&anon_list(&s).await, "GET /v1/jobs without a token, every token revoked, after a restart");
    refused(&anon_mint(&s).await, "an anonymous POST /v1/tokens, every token revoked, after a restart");

    // Only an explicit `--auth false`, or `auth = false` in the config, turns it off.
    let off = |s: &Server, how: &'static str| {
        let (list, info) = (s.at("/v1/jobs"), s.at("/v1/server"));
        async move {
            let a = send(http().get(list)).await;
            assert_eq!(a.status, 200, "[{be}] {how} turns auth off even with tokens: {}", a.brief());
            let i = send(http().get(info)).await;
            assert_eq!(i.status, 200, "[{be}] /v1/server with {how}: {}", i.brief());
            assert_eq!(i.body["auth"], false, "[{be}] /v1/server with {how}: {}", i.body);
            assert!(i.body["auth_mode"].as_str().is_some_and(|m| !m.is_empty()), "[{be}] {}", i.body);
        }
    };
    s = restart(&mut s, db, &["--auth", "false"]);
    let line = startup_line(&s).await;
    assert!(line.contains("auth off"), "[{be}] startup line with --auth false: {line}");
    off(&s, "--auth false").await;
    assert!(s.stop().success());
    let dir = s.take_dir();
    std::fs::write(dir.path().join("ferry.toml"), "auth = false\n").unwrap();
    s = Server::start_with(&serve_args(db, &[]), dir);
    let line = startup_line(&s).await;
    assert!(line.contains("auth off"), "[{be}] startup line with auth = false in ferry.toml: {line}");
    off(&s, "auth = false in ferry.toml").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_does_not_switch_itself_off_sqlite() {
    bounded(90, auth_does_not_switch_itself_off(None)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn auth_does_not_switch_itself_off_postgres() {
    let Some(db) = TestDb::create("ferry_sec_auth").await else { return };
    bounded(90, auth_does_not_switch_itself_off(Some(&db.url))).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Client mistakes never trip the breaker

/// One client mistake: a request and the field its 422 must name.
struct Mistake<'a> {
    what: &'static str,
    method: Method,
    path: String,
    body: Option<&'a str>,
    /// What the answer's `error.field` must be.
    field: &'static str,
}

async fn client_mistakes_never_trip_the_breaker(db: Option<&str>) {
    let be = backend(db);
    let s = start(db, "", &[]);
    let ready = enqueue(&s, "q").await;

    // A producer of valid jobs, the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (url, stop, accepted) = (s.at("/v1/jobs"), stop.clone(), accepted.clone());
        tokio::spawn(async move {
            let client = http();
            let mut other = Vec::new();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let a = send(client.post(url.as_str()).json(&json!({"queue": "live", "payload": {"n": n}})))
                    .await;
                if a.status == 201 {
                    accepted.fetch_add(1, Ordering::Relaxed);
                } else {
                    other.push(a.brief());
                }
            }
            other
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "[{be}] the valid producer got no 201 in 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let cancel = format!("/v1/jobs/{ready}/cancel");
    let post_at = |what, path: &str, body, field| Mistake {
        what,
        method: Method::POST,
        path: path.to_string(),
        body: Some(body),
        field,
    };
    let cases = [
        post_at(
            "NUL in unique_key",
            "/v1/jobs",
            r#"{"queue":"q","payload":{},"unique_key":"k\u0000"}"#,
            "unique_key",
        ),
        post_at("NUL in a tag", "/v1/jobs", r#"{"queue":"q","payload":{},"tags":["t\u0000"]}"#, "tags[0]"),
        post_at("NUL in a cancel reason", &cancel, r#"{"reason":"a\u0000"}"#, "reason"),
        post_at(
            "NUL in a batch job",
            "/v1/jobs",
            r#"{"jobs":[{"queue":"q"},{"queue":"q","unique_key":"\u0000"}]}"#,
            "jobs[1].unique_key",
        ),
        Mistake {
            what: "%00 in a query string",
            method: Method::GET,
            path: "/v1/jobs?queue=a%00".into(),
            body: None,
            field: "query",
        },
        // Last: if it were accepted, the token would turn auth on.
        post_at("NUL in a token name", "/v1/tokens", r#"{"name":"a\u0000","scopes":["read"]}"#, "name"),
    ];
    let mut wrong = Vec::new();
    for m in &cases {
        for i in 0..10 {
            let a = call(&s, m.method.clone(), &m.path, m.body, None).await;
            if a.status != 422 || a.field() != m.field {
                let want = format!("field {:?}", m.field);
                wrong.push(format!("{} (try {i}): want 422 with {want}, got {}", m.what, a.brief()));
            }
        }
    }

    // The breaker saw no storage failure, and the producer no refusal.
    let r = get(&s, "/readyz").await;
    let m = metrics(&s).await;
    stop.store(true, Ordering::Relaxed);
    let refused = producer.await.unwrap();
    assert!(
        wrong.is_empty(),
        "[{be}] client mistakes not answered 422 with the field:\n{}",
        wrong.join("\n")
    );
    assert_eq!(r.status, 200, "[{be}] /readyz after 80 client mistakes: {}", r.brief());
    assert_eq!(r.body["circuit"], "closed", "[{be}] /readyz reports the circuit: {}", r.body);
    for (series, want) in [
        ("ferry_circuit_state{state=\"open\"}", 0.0),
        ("ferry_circuit_state{state=\"half_open\"}", 0.0),
        ("ferry_circuit_state{state=\"closed\"}", 1.0),
        ("ferry_circuit_opened_total", 0.0),
    ] {
        let got = metric(&m, series);
        assert_eq!(got, Some(want), "[{be}] {series} in /metrics; circuit lines: {:?}", circuit_lines(&m));
    }
    assert!(
        refused.is_empty(),
        "[{be}] valid enqueues were refused while the mistakes came in ({} accepted): {:?}",
        accepted.load(Ordering::Relaxed),
        refused.iter().take(5).collect::<Vec<_>>()
    );
    // Nothing of the refused inputs was stored: the cancel target is still ready, alone in q.
    let j = get(&s, &format!("/v1/jobs/{ready}")).await;
    assert_eq!(j.body["state"], "ready", "[{be}] a refused cancel changes nothing: {}", j.brief());
    assert_eq!(count(&s, "q", "ready").await, 1, "[{be}] no refused job (nor half a batch) was stored");

    // Opaque JSON (a payload) is stored as JSON text, where NUL stays the escape `\u0000`:
    // accepted, and read back unchanged, on both backends.
    for body in [r#"{"queue":"q","payload":{"a":"x\u0000"}}"#, r#"{"queue":"q","payload":{"a\u0000":1}}"#] {
        let a = call(&s, Method::POST, "/v1/jobs", Some(body), None).await;
        assert_eq!(a.status, 201, "[{be}] NUL inside a payload is storable JSON text: {}", a.brief());
        let id = a.body["id"].as_str().unwrap().to_string();
        let j = get(&s, &format!("/v1/jobs/{id}")).await;
        let sent: Value = serde_json::from_str(body).unwrap();
        assert_eq!(j.body["payload"], sent["payload"], "[{be}] a payload with NUL reads back changed");
    }
    let t = get(&s, "/v1/tokens").await;
    assert_eq!(t.status, 200, "[{be}] no token was minted, so auth is still off: {}", t.brief());
}

fn circuit_lines(m: &str) -> Vec<&str> {
    m.lines().filter(|l| l.starts_with("ferry_circuit")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn client_mistakes_never_trip_the_breaker_sqlite() {
    bounded(60, client_mistakes_never_trip_the_breaker(None)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn client_mistakes_never_trip_the_breaker_postgres() {
    let Some(db) = TestDb::create("ferry_sec_nul").await else { return };
    bounded(60, client_mistakes_never_trip_the_breaker(Some(&db.url))).await;
}

// ---------------------------------------------------------------------------------------------
// 3. Depth limits

async fn json_depth_is_bounded(db: Option<&str>) {
    let be = backend(db);
    let s = start(db, "", &[]);
    let deep = |a: &Answer, prefix: &str, what: &str| {
        assert_eq!(a.status, 422, "[{be}] {what}: {}", a.brief());
        assert!(
            a.field().starts_with(prefix),
            "[{be}] {what}: field should point into {prefix}: {}",
            a.brief()
        );
    };

    // A job payload 100 levels deep (101 with the body).
    let body = format!(r#"{{"queue":"q","payload":{}}}"#, nested(100));
    deep(&post_text(&s, "/v1/jobs", &body).await, "payload", "a payload nested 100 levels");
    // 100,000 levels: refused as a client mistake, not a parser error or a crash.
    let body = format!(r#"{{"queue":"q","payload":{}}}"#, arrays(100_000));
    deep(&post_text(&s, "/v1/jobs", &body).await, "payload", "a payload nested 100,000 levels");
    assert_eq!(get(&s, "/healthz").await.status, 200, "[{be}] alive after a 100,000-deep body");
    let r = get(&s, "/readyz").await;
    assert_eq!(r.status, 200, "[{be}] ready after a 100,000-deep body: {}", r.brief());
    enqueue(&s, "q").await;

    // Schedules: 127 levels refused, and the list still reads.
    let body =
        format!(r#"{{"name":"deep","cron":"{CRON}","job":{{"queue":"q","payload":{}}}}}"#, nested(127));
    deep(&post_text(&s, "/v1/schedules", &body).await, "job.payload", "a schedule payload nested 127 levels");
    let a = get(&s, "/v1/schedules").await;
    assert_eq!(a.status, 200, "[{be}] GET /v1/schedules after a too-deep schedule: {}", a.brief());
    assert!(a.body["schedules"].as_array().is_some_and(|l| l.is_empty()), "[{be}] {}", a.body);

    // 60 levels (62 with the body and the job) is accepted and reads back identical.
    let payload = nested(60);
    let a = post(
        &s,
        "/v1/schedules",
        &json!({"name": "deep60", "cron": CRON, "job": {"queue": "q", "payload": payload}}),
    )
    .await;
    assert_eq!(a.status, 201, "[{be}] a schedule payload nested 60 levels: {}", a.brief());
    let a = get(&s, "/v1/schedules/deep60").await;
    assert_eq!(a.status, 200, "[{be}] GET /v1/schedules/deep60: {}", a.brief());
    assert!(a.body["job"]["payload"] == payload, "[{be}] the 60-level schedule payload reads back changed");
    let a = get(&s, "/v1/schedules").await;
    assert_eq!(a.status, 200, "[{be}] GET /v1/schedules with a 60-level schedule: {}", a.brief());
    // And a job with it.
    let a = post(&s, "/v1/jobs", &json!({"queue": "q", "payload": payload})).await;
    assert_eq!(a.status, 201, "[{be}] a job payload nested 60 levels: {}", a.brief());
    let j = get(&s, &format!("/v1/jobs/{}", a.body["id"].as_str().unwrap())).await;
    assert_eq!(j.status, 200, "[{be}] GET of the 60-level job: {}", j.brief());
    assert!(j.body["payload"] == payload, "[{be}] the 60-level job payload reads back changed");
    drop(s);

    // One past a configured limit: depth 8 (the body and 7 arrays) in, depth 9 out.
    let conf = tempfile::tempdir().unwrap();
    let path = conf.path().join("depth.toml");
    std::fs::write(&path, "[limits]\nmax_json_depth = 8\n").unwrap();
    let path = path.to_str().unwrap();
    let s = Server::start_with(&serve_args(db, &["--config", path]), tempfile::tempdir().unwrap());
    let a = post_text(&s, "/v1/jobs", &format!(r#"{{"queue":"q","payload":{}}}"#, arrays(7))).await;
    assert_eq!(a.status, 201, "[{be}] a body of depth 8 with max_json_depth = 8: {}", a.brief());
    let a = post_text(&s, "/v1/jobs", &format!(r#"{{"queue":"q","payload":{}}}"#, arrays(8))).await;
    deep(&a, "payload", "a body of depth 9 with max_json_depth = 8");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_depth_is_bounded_sqlite() {
    bounded(60, json_depth_is_bounded(None)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_depth_is_bounded_postgres() {
    let Some(db) = TestDb::create("ferry_sec_depth").await else { return };
    bounded(60, json_depth_is_bounded(Some(&db.url))).await;
}

// ---------------------------------------------------------------------------------------------
// 4. Cross-site requests

/// A schedule body (JSON) named `name`.
fn schedule(name: &str) -> String {
    json!({"name": name, "cron": CRON, "job": {"queue": "q", "payload": {}}}).to_string()
}

/// POSTs a schedule as JSON with extra headers.
async fn post_schedule(s: &Server, name: &str, headers: &[(&str, &str)]) -> Answer {
    let mut req =
        http().post(s.at("/v1/schedules")).header("content-type", "application/json").body(schedule(name));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req).await
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_requests_are_refused() {
    let s = start(None, "", &[]);
    bounded(60, async {
        // Bodies must say they are JSON.
        let job = json!({"queue": "q", "payload": {}}).to_string();
        let a =
            send(http().post(s.at("/v1/jobs")).header("content-type", "text/plain").body(job.clone())).await;
        assert_eq!(a.status, 415, "text/plain JSON body: {}", a.brief());
        assert_eq!(a.code(), "unsupported_media_type");
        let a = send(http().post(s.at("/v1/jobs")).body(job)).await;
        assert_eq!(a.status, 415, "a body without Content-Type: {}", a.brief());
        assert_eq!(a.code(), "unsupported_media_type");
        assert_eq!(count(&s, "q", "ready").await, 0, "a 415 enqueues nothing");
        // A POST without a body needs no Content-Type.
        let id = enqueue(&s, "q").await;
        let a = send(http().post(s.at(&format!("/v1/jobs/{id}/cancel")))).await;
        assert_ne!(a.status, 415, "a cancel without a body is not a media-type error: {}", a.brief());
        assert_eq!(a.status, 200, "a cancel without a body: {}", a.brief());

        // Foreign origins are refused, the server's own is not.
        let a = post_schedule(&s, "evil", &[("origin", "http://evil.example")]).await;
        assert_eq!(a.status, 403, "Origin: http://evil.example: {}", a.brief());
        assert_eq!(a.code(), "forbidden");
        let a = post_schedule(&s, "fetch", &[("sec-fetch-site", "cross-site")]).await;
        assert_eq!(a.status, 403, "Sec-Fetch-Site: cross-site: {}", a.brief());
        let a = post_schedule(&s, "own", &[("origin", s.url.as_str())]).await;
        assert_eq!(a.status, 201, "Origin: {} (the server's own): {}", s.url, a.brief());
        for name in ["evil", "fetch"] {
            let a = get(&s, &format!("/v1/schedules/{name}")).await;
            assert_eq!(a.status, 404, "the refused schedule {name} was not created: {}", a.brief());
        }

        // A WebSocket upgrade from a foreign origin is refused too (and one without is not).
        let ws = format!("{}/v1/ws", s.url.replacen("http://", "ws://", 1));
        let mut req = ws.as_str().into_client_request().unwrap();
        req.headers_mut().insert("origin", "http://evil.example".parse().unwrap());
        match tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(req)).await {
            Ok(Err(tungstenite::Error::Http(resp))) => {
                assert_eq!(resp.status().as_u16(), 403, "WebSocket upgrade from http://evil.example")
            }
            Ok(Ok(_)) => panic!("a WebSocket upgrade from http://evil.example was accepted"),
            Ok(Err(e)) => panic!("WebSocket upgrade from http://evil.example: not a 403 but {e}"),
            Err(_) => panic!("WebSocket upgrade from http://evil.example timed out"),
        }
        let req = ws.as_str().into_client_request().unwrap();
        let (mut socket, _) =
            tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(req))
                .await
                .expect("WebSocket handshake in time")
                .expect("a WebSocket upgrade without Origin is accepted");
        let _ = socket.close(None).await;
    })
    .await;

    // Origins listed in cors_origins may call, and get the CORS header.
    let s = start(None, "cors_origins = [\"http://app.example\"]\n", &[]);
    bounded(30, async {
        let a = post_schedule(&s, "app", &[("origin", "http://app.example")]).await;
        assert_eq!(a.status, 201, "Origin listed in cors_origins: {}", a.brief());
        assert_eq!(
            a.header("access-control-allow-origin"),
            Some("http://app.example"),
            "the listed origin gets Access-Control-Allow-Origin; headers: {:?}",
            a.headers
        );
        let a = post_schedule(&s, "evil", &[("origin", "http://evil.example")]).await;
        assert_eq!(a.status, 403, "an unlisted origin beside a listed one: {}", a.brief());
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 5. Small defects

/// (a) Clients that go away mid-long-poll leave no request counted in flight; they are 499s.
#[tokio::test(flavor = "multi_thread")]
async fn abandoned_long_polls_do_not_leak_in_flight_requests() {
    let s = start(None, "", &[]);
    bounded(60, async {
        const CLAIM_499: &str =
            "ferry_http_requests_total{method=\"POST\",route=\"/v1/queues/{queue}/claim\",status=\"499\"}";
        const IN_FLIGHT: &str = "ferry_http_requests_in_flight";
        // Raw connections, so dropping one closes its socket for sure (no client pool between).
        let addr = s.url.trim_start_matches("http://").to_string();
        let body = json!({"worker": "w", "wait_ms": 20_000}).to_string();
        let started = Instant::now();
        let mut conns = Vec::new();
        for _ in 0..20 {
            let mut c = tokio::net::TcpStream::connect(addr.as_str()).await.expect("connect");
            let req = format!(
                "POST /v1/queues/empty/claim HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\n\r\n{body}",
                body.len()
            );
            c.write_all(req.as_bytes()).await.unwrap();
            conns.push(c);
        }
        // All 20 are being served (plus the scrape itself), and at least 300 ms passed.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let m = metrics(&s).await;
            let n = metric(&m, IN_FLIGHT).expect("ferry_http_requests_in_flight in /metrics");
            if n >= 21.0 {
                break;
            }
            assert!(Instant::now() < deadline, "only {n} requests in flight with 20 long-polls open");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(left) = Duration::from_millis(300).checked_sub(started.elapsed()) {
            tokio::time::sleep(left).await;
        }
        drop(conns);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let m = metrics(&s).await;
            let (n, gone) = (metric(&m, IN_FLIGHT).unwrap_or(-1.0), metric(&m, CLAIM_499).unwrap_or(0.0));
            if n <= 1.0 && gone >= 20.0 {
                break;
            }
            if Instant::now() > deadline {
                let lines: Vec<&str> = m
                    .lines()
                    .filter(|l| l.starts_with("ferry_http_requests_") && !l.contains("_bucket"))
                    .collect();
                panic!(
                    "5 s after 20 long-poll clients went away: {n} requests in flight (want <= 1), \
                     {gone} claims counted as 499 (want 20); HTTP series: {lines:#?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
}

/// (b) A cron that never fires and host-dependent time zones are 422.
#[tokio::test(flavor = "multi_thread")]
async fn impossible_crons_and_host_time_zones_are_refused() {
    let s = start(None, "", &[]);
    bounded(30, async {
        let a =
            post(&s, "/v1/schedules", &json!({"name": "feb30", "cron": "0 0 30 2 *", "job": {"queue": "q"}}))
                .await;
        assert_eq!((a.status, a.field()), (422, "cron"), "cron 0 0 30 2 * never fires: {}", a.brief());
        for tz in ["localtime", "posixrules"] {
            let body = json!({"name": "tz", "cron": CRON, "timezone": tz, "job": {"queue": "q"}});
            let a = post(&s, "/v1/schedules", &body).await;
            assert_eq!((a.status, a.field()), (422, "timezone"), "timezone {tz}: {}", a.brief());
        }
        let a = get(&s, "/v1/schedules").await;
        assert!(
            a.body["schedules"].as_array().is_some_and(|l| l.is_empty()),
            "nothing was created: {}",
            a.body
        );
    })
    .await;
}

/// (c) A priority written `-0` is priority 0.
#[tokio::test(flavor = "multi_thread")]
async fn negative_zero_priority_is_zero() {
    let s = start(None, "", &[]);
    bounded(30, async {
        let a = post_text(&s, "/v1/jobs", r#"{"queue":"q","priority":-0}"#).await;
        assert_eq!(a.status, 201, "priority -0: {}", a.brief());
        let j = get(&s, &format!("/v1/jobs/{}", a.body["id"].as_str().unwrap())).await;
        assert_eq!(j.body["priority"].as_i64(), Some(0), "the job's priority: {}", j.brief());
    })
    .await;
}

/// (d) An over-long request target and over-large headers get 414 and 431 with JSON bodies.
#[tokio::test(flavor = "multi_thread")]
async fn long_targets_and_large_headers_get_json_errors() {
    let s = start(None, "", &[]);
    bounded(30, async {
        let query = format!("pad={}", "a".repeat(20_000 - 4));
        let a = get(&s, &format!("/v1/jobs?{query}")).await;
        assert_eq!(a.status, 414, "a 20,000-byte query string: {}", a.brief());
        assert_eq!(a.code(), "uri_too_long", "{}", a.brief());
        let a = send(http().get(s.at("/v1/jobs")).header("x-pad", "a".repeat(70_000))).await;
        assert_eq!(a.status, 431, "70 KB of headers: {}", a.brief());
        assert_eq!(a.code(), "headers_too_large", "{}", a.brief());
        assert_eq!(get(&s, "/v1/jobs").await.status, 200, "the server answers normal requests after");
    })
    .await;
}

/// (e) `[health] allowed_hosts` limits the hosts ferry may be told to probe.
#[tokio::test(flavor = "multi_thread")]
async fn host_probes_are_limited_to_allowed_hosts() {
    let s = start(None, "[health]\nallowed_hosts = [\"127.0.0.1\"]\n", &[]);
    bounded(30, async {
        let a = post(&s, "/v1/hosts", &json!({"name": "h", "health_url": "http://example.com/health"})).await;
        assert_eq!((a.status, a.field()), (422, "health_url"), "a host not in allowed_hosts: {}", a.brief());
        let a = post(&s, "/v1/hosts", &json!({"name": "h", "health_url": "http://127.0.0.1:9/health"})).await;
        assert_eq!(a.status, 201, "an allowed host: {}", a.brief());
    })
    .await;
}

/// (f) An event cursor out of range is 422, one that is not a number 400.
#[tokio::test(flavor = "multi_thread")]
async fn event_cursors_out_of_range_are_422() {
    let s = start(None, "", &[]);
    bounded(30, async {
        let a = get(&s, "/v1/events?since=99999999999999999999").await;
        assert_eq!((a.status, a.field()), (422, "since"), "since past i64: {}", a.brief());
        let a = get(&s, "/v1/events?since=abc").await;
        assert_eq!(a.status, 400, "since=abc: {}", a.brief());
        error_code(&a.body);
        // The top of the range is a cursor like any other: nothing after it, no overflow.
        for since in [i64::MAX, i64::MAX - 1] {
            let a = get(&s, &format!("/v1/events?since={since}")).await;
            assert_eq!(a.status, 200, "since={since}: {}", a.brief());
            assert_eq!(a.body["events"], serde_json::json!([]), "since={since}");
        }
    })
    .await;
}

/// (g) 20 producers racing into a queue with `max_depth` 500 stop at 500, not beyond.
async fn queue_depth_is_exact(db: Option<&str>) {
    let be = backend(db);
    let s = start(db, "", &[]);
    let a = call(&s, Method::PUT, "/v1/queues/d/limits", Some(r#"{"max_depth":500}"#), None).await;
    assert_eq!(a.status, 200, "[{be}] set max_depth: {}", a.brief());
    let mut producers = Vec::new();
    for p in 0..20 {
        let url = s.at("/v1/jobs");
        producers.push(tokio::spawn(async move {
            let client = http();
            let mut accepted = 0u64;
            for n in 0..1_000 {
                let a =
                    send(client.post(url.as_str()).json(&json!({"queue": "d", "payload": {"p": p, "n": n}})))
                        .await;
                match a.status {
                    201 => accepted += 1,
                    429 if a.code() == "queue_full" => return Ok(accepted),
                    _ => return Err(format!("producer {p}: {}", a.brief())),
                }
            }
            Err(format!("producer {p}: no 429 after 1,000 enqueues"))
        }));
    }
    let mut accepted = 0;
    let mut bad = Vec::new();
    for p in producers {
        match p.await.unwrap() {
            Ok(n) => accepted += n,
            Err(e) => bad.push(e),
        }
    }
    assert!(bad.is_empty(), "[{be}] producers saw answers other than 201 and 429 queue_full: {bad:#?}");
    let ready = count(&s, "d", "ready").await;
    assert!(ready <= 500, "[{be}] {ready} ready jobs in a queue with max_depth 500 ({accepted} accepted)");
    assert!(ready >= 480, "[{be}] only {ready} ready jobs before 429s with max_depth 500");
    assert_eq!(ready, accepted, "[{be}] every 201 is a stored job");
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_depth_is_exact_sqlite() {
    bounded(60, queue_depth_is_exact(None)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_depth_is_exact_postgres() {
    let Some(db) = TestDb::create("ferry_sec_depth_limit").await else { return };
    bounded(60, queue_depth_is_exact(Some(&db.url))).await;
}
