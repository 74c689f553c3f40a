//! The API's error contract, end to end: the real `ferry serve` binary over real HTTP.
//!
//! Every error is JSON `{"error":{"code","message","field"}}` with the right status:
//! malformed JSON and wrong types 400, unknown job 404, stale lease 409, over a size limit 413,
//! semantic errors 422. Nothing is half-written and nothing the client sends makes the server
//! answer 5xx or drop the connection.
//!
//! The expectations come from the API contract (the issue text), not from the code; a test
//! that once disagreed with the server says so in a `Regression:` comment.

use crate::common::{Server, error_code, get, post_raw};
use serde_json::{Value, json};
use std::time::Duration;

/// A well-formed job id that names no job.
const UNKNOWN_ID: &str = "7d444840-9dc0-41d1-b245-5ffdce74fad2";

const MIB: usize = 1 << 20;

/// A client that never waits forever.
fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap()
}

/// Sends raw bytes; `Err` when the server gave no HTTP answer (a dropped connection).
async fn send(method: reqwest::Method, url: &str, body: Vec<u8>) -> Result<(u16, String), String> {
    let r = client()
        .request(method, url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = r.status().as_u16();
    let text = r.text().await.map_err(|e| format!("{e:?}"))?;
    Ok((status, text))
}

/// Asserts an error answer: its status, the `{"error":{"code","message"}}` shape and, when
/// given, its `field`. Returns the error code.
#[track_caller]
fn assert_error(what: &str, got: &(u16, Value), status: u16, field: Option<&str>) -> String {
    let (st, body) = got;
    assert_eq!(*st, status, "{what}: wrong status; body {body}");
    let code = error_code(body);
    if let Some(f) = field {
        assert_eq!(body["error"]["field"].as_str(), Some(f), "{what}: wrong field; body {body}");
    }
    code
}

/// Enqueues one job and returns its id.
async fn enqueue(s: &Server, body: Value) -> String {
    let (st, r) = post_raw(&s.at("/v1/jobs"), &body.to_string()).await;
    assert_eq!(st, 201, "enqueue {body}: {r}");
    r["id"].as_str().expect("id").to_string()
}

/// Enqueues a job on `queue` and claims it: (id, lease).
async fn enqueue_and_claim(s: &Server, queue: &str) -> (String, String) {
    let id = enqueue(s, json!({"queue": queue, "payload": {"n": 1}})).await;
    let (st, r) =
        post_raw(&s.at(&format!("/v1/queues/{queue}/claim")), r#"{"worker":"w1","max":1,"lease_ms":60000}"#)
            .await;
    assert_eq!(st, 200, "claim: {r}");
    let job = &r["jobs"][0];
    assert_eq!(job["id"].as_str(), Some(id.as_str()), "claimed another job: {r}");
    (id, job["lease"].as_str().expect("lease").to_string())
}

/// Number of jobs listed on `queue`.
async fn job_count(s: &Server, queue: &str) -> usize {
    let (st, body) = get(&s.at(&format!("/v1/jobs?queue={queue}&limit=1000"))).await;
    assert_eq!(st, 200, "list {queue}: {body}");
    body["jobs"].as_array().unwrap_or_else(|| panic!("no jobs array: {body}")).len()
}

/// State of a job, as `GET /v1/jobs/{id}` reports it.
async fn job_state(s: &Server, id: &str) -> String {
    let (st, body) = get(&s.at(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(st, 200, "get {id}: {body}");
    body["state"].as_str().expect("state").to_string()
}

/// Every POST endpoint that reads a JSON body, with ids and queues that are well formed.
fn body_endpoints() -> Vec<String> {
    let mut v: Vec<String> = ["/v1/jobs", "/v1/queues/fuzz/claim"].map(String::from).to_vec();
    for action in ["heartbeat", "complete", "fail", "release", "cancel"] {
        v.push(format!("/v1/jobs/{UNKNOWN_ID}/{action}"));
    }
    v.extend(
        [
            "/v1/jobs/complete",
            "/v1/jobs/fail",
            "/v1/jobs/heartbeat",
            "/v1/dlq/replay",
            "/v1/dlq/purge",
            "/v1/items",
            "/v1/items/batch",
        ]
        .map(String::from),
    );
    v
}

/// Asserts the server never reported a panic in its output.
fn assert_no_panic(s: &Server) {
    let log = s.log.lock().unwrap();
    let bad: Vec<&String> = log.iter().filter(|l| l.contains("panicked")).collect();
    assert!(bad.is_empty(), "the server panicked: {bad:?}");
}

#[tokio::test]
async fn malformed_json_is_400_on_every_endpoint() {
    let s = Server::start();
    let bodies = [
        r#"{"queue":"#,
        r#"{queue:"q"}"#,
        r#"{"queue":"q",}"#,
        "not json",
        r#"{"lease":"x""#,
        r#"{"items":[}"#,
        r#""unterminated"#,
    ];
    let mut wrong = Vec::new();
    for path in body_endpoints() {
        for body in bodies {
            let (st, json) = post_raw(&s.at(&path), body).await;
            if st != 400 || json["error"]["code"].as_str().is_none() {
                wrong.push(format!("POST {path} {body} -> {st} {json}"));
            }
        }
    }
    assert!(wrong.is_empty(), "malformed JSON not answered 400:\n{}", wrong.join("\n"));
    assert_eq!(job_count(&s, "q").await, 0);
}

#[tokio::test]
async fn trailing_garbage_after_json_is_400_and_changes_nothing() {
    let s = Server::start();
    // Regression: the body parser once stopped after the first JSON value, so `{...} x`
    // was taken as `{...}` and written.
    let (running, lease) = enqueue_and_claim(&s, "tg").await;
    let later = enqueue(&s, json!({"queue": "tg", "delay_ms": 600_000})).await;
    let lease_json = json!({ "lease": lease }).to_string();
    let cases = [
        ("/v1/jobs".to_string(), r#"{"queue":"tg"} x"#.to_string()),
        ("/v1/jobs".to_string(), r#"{"queue":"tg"}{"queue":"tg"}"#.to_string()),
        ("/v1/jobs".to_string(), "{\"queue\":\"tg\"}\u{0}".to_string()),
        ("/v1/jobs".to_string(), r#"{"jobs":[{"queue":"tg"}]}]"#.to_string()),
        ("/v1/queues/tg/claim".to_string(), r#"{"worker":"w"} x"#.to_string()),
        (format!("/v1/jobs/{running}/heartbeat"), format!("{lease_json} x")),
        (format!("/v1/jobs/{running}/complete"), format!("{lease_json} x")),
        (format!("/v1/jobs/{later}/cancel"), r#"{"reason":"r"} x"#.to_string()),
        ("/v1/jobs/complete".to_string(), r#"{"items":[]} x"#.to_string()),
        ("/v1/jobs/heartbeat".to_string(), r#"{"items":[]} x"#.to_string()),
        ("/v1/dlq/replay".to_string(), r#"{"queue":"tg"} x"#.to_string()),
        ("/v1/dlq/purge".to_string(), r#"{"queue":"tg"}}"#.to_string()),
    ];
    let mut wrong = Vec::new();
    for (path, body) in cases {
        let (st, json) = post_raw(&s.at(&path), &body).await;
        if st != 400 || json["error"]["code"].as_str().is_none() {
            wrong.push(format!("POST {path} {body:?} -> {st} {json}"));
        }
    }
    let states = (job_state(&s, &running).await, job_state(&s, &later).await, job_count(&s, "tg").await);
    assert!(wrong.is_empty(), "trailing garbage accepted:\n{}\n(states after: {states:?})", wrong.join("\n"));
    assert_eq!(states, ("running".to_string(), "scheduled".to_string(), 2));
}

#[tokio::test]
async fn wrong_json_type_is_400_with_field() {
    let s = Server::start();
    let got = post_raw(&s.at("/v1/jobs"), r#"{"queue":"q","priority":"high"}"#).await;
    assert_error("priority as a string", &got, 400, Some("priority"));
    let got = post_raw(&s.at("/v1/jobs"), r#"{"queue":"q","max_attempts":true}"#).await;
    assert_error("max_attempts as a bool", &got, 400, Some("max_attempts"));
    let got = post_raw(&s.at("/v1/jobs"), r#"{"queue":"q","tags":"x"}"#).await;
    assert_error("tags as a string", &got, 400, Some("tags"));
    let got = post_raw(&s.at("/v1/queues/q/claim"), r#"{"worker":"w","max":"5"}"#).await;
    assert_error("claim max as a string", &got, 400, Some("max"));
    assert_eq!(job_count(&s, "q").await, 0);
}

#[tokio::test]
async fn wrong_type_inside_a_batch_names_the_index_and_inserts_nothing() {
    let s = Server::start();
    let body = r#"{"jobs":[{"queue":"bq"},{"queue":"bq","priority":"high"},{"queue":"bq"}]}"#;
    let got = post_raw(&s.at("/v1/jobs"), body).await;
    assert_error("batch with a wrong type", &got, 400, Some("jobs[1].priority"));
    assert_eq!(job_count(&s, "bq").await, 0);
}

#[tokio::test]
async fn unknown_field_in_a_job_is_400() {
    let s = Server::start();
    let got = post_raw(&s.at("/v1/jobs"), r#"{"queue":"q","priorty":5}"#).await;
    assert_error("typo priorty", &got, 400, None);
    let got = post_raw(&s.at("/v1/jobs"), r#"{"jobs":[{"queue":"q"},{"queue":"q","priorty":5}]}"#).await;
    assert_error("typo priorty in a batch", &got, 400, None);
    assert_eq!(job_count(&s, "q").await, 0);
}

#[tokio::test]
async fn missing_queue_is_4xx_with_field_queue() {
    let s = Server::start();
    // Regression: serde reports a missing field at the path of the enclosing object; the
    // server once answered without the field's own name.
    let mut wrong = Vec::new();
    for (body, field) in [
        (r#"{"payload":{"a":1}}"#, "queue"),
        (r#"{}"#, "queue"),
        (r#"{"jobs":[{"queue":"q"},{"payload":1}]}"#, "jobs[1].queue"),
    ] {
        let (st, json) = post_raw(&s.at("/v1/jobs"), body).await;
        error_code(&json);
        if !(st == 400 || st == 422) || json["error"]["field"].as_str() != Some(field) {
            wrong.push(format!("POST /v1/jobs {body} -> {st} {json} (want field {field})"));
        }
    }
    assert!(wrong.is_empty(), "missing queue answered without its field:\n{}", wrong.join("\n"));
    assert_eq!(job_count(&s, "q").await, 0);
}

#[tokio::test]
async fn negative_delay_is_422() {
    let s = Server::start();
    let got = post_raw(&s.at("/v1/jobs"), r#"{"queue":"q","delay_ms":-1}"#).await;
    assert_error("delay_ms -1", &got, 422, Some("delay_ms"));
    assert_eq!(job_count(&s, "q").await, 0);
}

#[tokio::test]
async fn bad_queue_names_in_a_job_are_422() {
    let s = Server::start();
    let long = "q".repeat(129);
    for name in ["", "a b", "a/b", "é", "q\u{0}", "q!", "tab\t", long.as_str()] {
        let got = post_raw(&s.at("/v1/jobs"), &json!({ "queue": name }).to_string()).await;
        assert_error(&format!("queue {name:?}"), &got, 422, Some("queue"));
    }
    // The edges of the rule are accepted.
    for name in ["q".repeat(128), "A-z_0.9:x".to_string(), "x".to_string()] {
        enqueue(&s, json!({ "queue": name })).await;
    }
}

#[tokio::test]
async fn claim_max_over_the_limit_is_422() {
    let s = Server::start();
    let got = post_raw(&s.at("/v1/queues/q/claim"), r#"{"worker":"w","max":1001}"#).await;
    assert_error("max 1001", &got, 422, Some("max"));
    let (st, body) = post_raw(&s.at("/v1/queues/q/claim"), r#"{"worker":"w","max":1000}"#).await;
    assert_eq!(st, 200, "max 1000 is within the limit: {body}");
}

#[tokio::test]
async fn claim_wait_over_30s_is_422() {
    let s = Server::start();
    let got = post_raw(&s.at("/v1/queues/q/claim"), r#"{"worker":"w","wait_ms":30001}"#).await;
    assert_error("wait_ms 30001", &got, 422, Some("wait_ms"));
    // 30,000 itself is allowed; a ready job makes it answer at once.
    enqueue(&s, json!({"queue": "q"})).await;
    let url = s.at("/v1/queues/q/claim");
    let claim = post_raw(&url, r#"{"worker":"w","wait_ms":30000}"#);
    let (st, body) = tokio::time::timeout(Duration::from_secs(10), claim).await.expect("claim answers");
    assert_eq!((st, body["jobs"].as_array().map(Vec::len)), (200, Some(1)), "{body}");
}

#[tokio::test]
async fn claim_without_worker_is_422() {
    let s = Server::start();
    for body in ["", "{}", r#"{"max":1}"#, r#"{"worker":null}"#] {
        let got = post_raw(&s.at("/v1/queues/q/claim"), body).await;
        assert_error(&format!("claim {body:?}"), &got, 422, Some("worker"));
    }
}

#[tokio::test]
async fn claim_on_a_bad_queue_name_is_422() {
    let s = Server::start();
    let long = "q".repeat(129);
    for name in ["a%20b", "q!", "%C3%A9", long.as_str()] {
        let got = post_raw(&s.at(&format!("/v1/queues/{name}/claim")), r#"{"worker":"w"}"#).await;
        assert_error(&format!("claim on {name:?}"), &got, 422, Some("queue"));
    }
}

#[tokio::test]
async fn pause_and_resume_of_a_bad_queue_name_are_422() {
    let s = Server::start();
    let long = "q".repeat(129);
    for action in ["pause", "resume"] {
        for name in ["a%20b", "q!", "%C3%A9", long.as_str()] {
            let got = post_raw(&s.at(&format!("/v1/queues/{name}/{action}")), "").await;
            assert_error(&format!("{action} {name:?}"), &got, 422, Some("queue"));
        }
    }
}

#[tokio::test]
async fn payload_over_1_mib_is_413_with_field_payload() {
    let s = Server::start();
    let payload = "x".repeat(MIB + 10);
    let got = post_raw(&s.at("/v1/jobs"), &json!({"queue": "big", "payload": payload}).to_string()).await;
    assert_error("1 MiB + 10 payload", &got, 413, Some("payload"));
    let body = json!({"jobs": [{"queue": "big"}, {"queue": "big", "payload": payload}]}).to_string();
    let got = post_raw(&s.at("/v1/jobs"), &body).await;
    assert_error("1 MiB + 10 payload in a batch", &got, 413, Some("jobs[1].payload"));
    assert_eq!(job_count(&s, "big").await, 0);
    // A payload well under the limit is accepted.
    enqueue(&s, json!({"queue": "big", "payload": "x".repeat(MIB - 1024)})).await;
}

#[tokio::test]
async fn batch_of_10001_jobs_is_413_and_inserts_nothing() {
    let s = Server::start();
    let jobs: Vec<Value> = (0..10_001).map(|_| json!({"queue": "many"})).collect();
    let got = post_raw(&s.at("/v1/jobs"), &json!({ "jobs": jobs }).to_string()).await;
    assert_error("10,001 jobs", &got, 413, None);
    assert_eq!(job_count(&s, "many").await, 0);
}

/// How a raw request sends its body.
#[derive(Debug, Clone, Copy)]
enum Framing {
    /// `Content-Length` and `Expect: 100-continue`: only the head is sent.
    Expect,
    /// `Content-Length`, then the whole body.
    Length,
    /// `Transfer-Encoding: chunked`, no declared length.
    Chunked,
}

/// Sends a JSON body of `len` bytes over a raw TCP connection, writing it while reading the
/// answer (a server may answer and close before the body is sent; reqwest then reports only
/// its broken pipe). Returns the status and the body of the answer.
async fn raw_post(base: &str, path: &str, len: usize, framing: Framing) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.strip_prefix("http://").expect("http URL");
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut rd, mut wr) = stream.into_split();
    let head = match framing {
        Framing::Expect => format!("Content-Length: {len}\r\nExpect: 100-continue\r\n"),
        Framing::Length => format!("Content-Length: {len}\r\n"),
        Framing::Chunked => "Transfer-Encoding: chunked\r\n".to_string(),
    };
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{head}\r\n");
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        if let Framing::Expect = framing {
            return Ok(());
        }
        // `{"queue":"q","payload":"xxx…"}` of exactly `len` bytes.
        let (open, close) = (br#"{"queue":"q","payload":""#.as_slice(), br#""}"#.as_slice());
        let mut left = len - open.len() - close.len();
        let mut pieces = vec![open.to_vec()];
        while left > 0 {
            let n = left.min(256 * 1024);
            pieces.push(vec![b'x'; n]);
            left -= n;
        }
        pieces.push(close.to_vec());
        for p in pieces {
            match framing {
                Framing::Chunked => {
                    wr.write_all(format!("{:x}\r\n", p.len()).as_bytes()).await?;
                    wr.write_all(&p).await?;
                    wr.write_all(b"\r\n").await?;
                }
                _ => wr.write_all(&p).await?,
            }
        }
        if let Framing::Chunked = framing {
            wr.write_all(b"0\r\n\r\n").await?;
        }
        wr.flush().await
    });
    let mut got = Vec::new();
    let read = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let want = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if head.starts_with("http/1.1 100") {
                    got.drain(..end + 4);
                    continue;
                }
                if want.is_some_and(|w| got.len() >= end + 4 + w) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read).await.expect("an answer within 30 s");
    writer.abort();
    let text = String::from_utf8_lossy(&got).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).expect("status line");
    (status, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_over_32_mib_is_413() {
    let s = Server::start();
    let len = 32 * MIB + 1;
    for path in ["/v1/jobs", "/v1/jobs/complete", "/v1/queues/q/claim"] {
        for framing in [Framing::Expect, Framing::Length, Framing::Chunked] {
            let (st, body) = raw_post(&s.url, path, len, framing).await;
            let json: Value = serde_json::from_str(&body)
                .unwrap_or_else(|_| panic!("{path} {framing:?}: non-JSON answer ({st}): {body}"));
            assert_error(&format!("32 MiB + 1 body to {path}, {framing:?}"), &(st, json), 413, None);
        }
    }
    assert_eq!(job_count(&s, "q").await, 0);
    let (st, _) = get(&s.at("/healthz")).await;
    assert_eq!(st, 200);
    assert_no_panic(&s);
}

#[tokio::test]
async fn batch_with_one_invalid_job_inserts_none() {
    let s = Server::start();
    let cases = [
        (json!([{"queue": "aon"}, {"queue": "aon", "delay_ms": -5}, {"queue": "aon"}]), "jobs[1].delay_ms"),
        (json!([{"queue": "aon"}, {"queue": "aon"}, {"queue": "a b"}]), "jobs[2].queue"),
        (json!([{"queue": "aon", "max_attempts": 0}, {"queue": "aon"}]), "jobs[0].max_attempts"),
    ];
    for (jobs, field) in cases {
        let got = post_raw(&s.at("/v1/jobs"), &json!({ "jobs": jobs }).to_string()).await;
        assert_error(&format!("batch {jobs}"), &got, 422, Some(field));
        assert_eq!(job_count(&s, "aon").await, 0, "a rejected batch left jobs behind: {jobs}");
    }
    // The same batch without the bad job goes in whole.
    let (st, r) = post_raw(&s.at("/v1/jobs"), r#"{"jobs":[{"queue":"aon"},{"queue":"aon"}]}"#).await;
    assert_eq!((st, r["ids"].as_array().map(Vec::len)), (201, Some(2)), "{r}");
    assert_eq!(job_count(&s, "aon").await, 2);
}

#[tokio::test]
async fn duplicate_unique_key_is_200_with_the_same_id() {
    let s = Server::start();
    let body = r#"{"queue":"u","unique_key":"k1"}"#;
    let (st, first) = post_raw(&s.at("/v1/jobs"), body).await;
    assert_eq!(st, 201, "{first}");
    let (st, again) = post_raw(&s.at("/v1/jobs"), body).await;
    assert_eq!(st, 200, "{again}");
    assert_eq!(again["id"], first["id"]);
    assert_eq!(again["duplicate"], json!(true));
    assert_eq!(job_count(&s, "u").await, 1);
}

#[tokio::test]
async fn unknown_jobs_are_404() {
    let s = Server::start();
    for id in [UNKNOWN_ID, "not-a-uuid", "123", "7d444840-9dc0-41d1-b245-5ffdce74fad2x"] {
        let got = get(&s.at(&format!("/v1/jobs/{id}"))).await;
        assert_error(&format!("GET job {id}"), &got, 404, None);
        let got = post_raw(&s.at(&format!("/v1/jobs/{id}/cancel")), "").await;
        assert_error(&format!("cancel {id}"), &got, 404, None);
        for (action, body) in [
            ("heartbeat", r#"{"lease":"x"}"#),
            ("complete", r#"{"lease":"x"}"#),
            ("fail", r#"{"lease":"x","error":"e"}"#),
        ] {
            let got = post_raw(&s.at(&format!("/v1/jobs/{id}/{action}")), body).await;
            assert_error(&format!("{action} {id}"), &got, 404, None);
        }
    }
}

#[tokio::test]
async fn unknown_routes_are_404_json() {
    let s = Server::start();
    for path in ["/", "/v1", "/v1/nope", "/v2/jobs", "/v1/queues/q/nope", "/v1/jobs/a/b/c"] {
        let got = get(&s.at(path)).await;
        assert_error(&format!("GET {path}"), &got, 404, None);
        let got = post_raw(&s.at(path), "{}").await;
        assert_error(&format!("POST {path}"), &got, 404, None);
    }
}

#[tokio::test]
async fn stale_lease_is_409_on_heartbeat_complete_and_fail() {
    let s = Server::start();
    let (id, lease) = enqueue_and_claim(&s, "fence").await;
    for (action, body) in [
        ("heartbeat", json!({"lease": "not-the-lease", "extend_ms": 60000})),
        ("complete", json!({"lease": "not-the-lease", "result": {"ok": true}})),
        ("fail", json!({"lease": "not-the-lease", "error": "boom", "retry": false})),
    ] {
        let got = post_raw(&s.at(&format!("/v1/jobs/{id}/{action}")), &body.to_string()).await;
        assert_error(&format!("{action} with a wrong lease"), &got, 409, None);
    }
    // Nothing was recorded: the job is still running and its real lease still works.
    assert_eq!(job_state(&s, &id).await, "running");
    let (st, body) =
        post_raw(&s.at(&format!("/v1/jobs/{id}/complete")), &json!({ "lease": lease }).to_string()).await;
    assert_eq!((st, body["state"].as_str()), (200, Some("completed")), "{body}");
}

#[tokio::test]
async fn cancel_of_a_running_job_is_409() {
    let s = Server::start();
    let (id, _lease) = enqueue_and_claim(&s, "cq").await;
    let got = post_raw(&s.at(&format!("/v1/jobs/{id}/cancel")), r#"{"reason":"stop"}"#).await;
    assert_error("cancel running", &got, 409, None);
    assert_eq!(job_state(&s, &id).await, "running");
}

/// Checks a batch answer: 200, one result per item, item 0 applied, the rest refused.
#[track_caller]
fn assert_first_ok_rest_refused(what: &str, got: &(u16, Value), ids: &[&str]) {
    let (st, body) = got;
    assert_eq!(*st, 200, "{what}: {body}");
    let results = body["results"].as_array().unwrap_or_else(|| panic!("{what}: no results: {body}"));
    assert_eq!(results.len(), ids.len(), "{what}: {body}");
    for (i, (r, id)) in results.iter().zip(ids).enumerate() {
        assert_eq!(r["id"].as_str(), Some(*id), "{what}: item {i} id: {body}");
        if i == 0 {
            assert_eq!(r["ok"], json!(true), "{what}: item 0 should apply: {body}");
            assert!(r.get("error").is_none_or(Value::is_null), "{what}: item 0 has an error: {body}");
        } else {
            assert_eq!(r["ok"], json!(false), "{what}: item {i} should be refused: {body}");
            let e = &r["error"];
            assert!(e["code"].as_str().is_some_and(|c| !c.is_empty()), "{what}: item {i} code: {body}");
            assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: item {i} msg: {body}");
        }
    }
}

#[tokio::test]
async fn batch_complete_reports_each_item() {
    let s = Server::start();
    let (good, lease) = enqueue_and_claim(&s, "bc").await;
    let (stale, _) = enqueue_and_claim(&s, "bc").await;
    let ids = [good.as_str(), stale.as_str(), UNKNOWN_ID, "not-a-uuid"];
    let body = json!({"items": [
        {"id": good, "lease": lease, "result": 1},
        {"id": stale, "lease": "not-the-lease"},
        {"id": UNKNOWN_ID, "lease": "x"},
        {"id": "not-a-uuid", "lease": "x"},
    ]});
    let got = post_raw(&s.at("/v1/jobs/complete"), &body.to_string()).await;
    assert_first_ok_rest_refused("batch complete", &got, &ids);
    assert_eq!(job_state(&s, &good).await, "completed");
    assert_eq!(job_state(&s, &stale).await, "running");
}

#[tokio::test]
async fn batch_heartbeat_reports_each_item() {
    let s = Server::start();
    let (good, lease) = enqueue_and_claim(&s, "bh").await;
    let (stale, _) = enqueue_and_claim(&s, "bh").await;
    let before = get(&s.at(&format!("/v1/jobs/{good}"))).await.1["lease_expires_at"].clone();
    let ids = [good.as_str(), stale.as_str(), UNKNOWN_ID, "not-a-uuid"];
    let body = json!({"worker": "w1", "items": [
        {"id": good, "lease": lease, "extend_ms": 120000},
        {"id": stale, "lease": "1.not-the-lease"},
        {"id": UNKNOWN_ID, "lease": "x"},
        {"id": "not-a-uuid", "lease": "x"},
    ]});
    let got = post_raw(&s.at("/v1/jobs/heartbeat"), &body.to_string()).await;
    assert_first_ok_rest_refused("batch heartbeat", &got, &ids);
    let results = &got.1["results"];
    assert_eq!(results[1]["error"]["code"], "stale_lease", "{results}");
    assert_eq!(results[2]["error"]["code"], "not_found", "{results}");
    let after = &results[0]["lease_expires_at"];
    assert!(after.as_str() > before.as_str(), "the lease was extended: {before} -> {after}");
    assert_eq!(get(&s.at(&format!("/v1/jobs/{good}"))).await.1["lease_expires_at"], *after);
    // An extension out of the documented range refuses the whole request, naming its item.
    let body =
        json!({"items": [{"id": good, "lease": lease}, {"id": UNKNOWN_ID, "lease": "x", "extend_ms": 9}]});
    let (st, r) = post_raw(&s.at("/v1/jobs/heartbeat"), &body.to_string()).await;
    assert_eq!((st, r["error"]["field"].as_str()), (422, Some("items[1].extend_ms")), "{r}");
}

#[tokio::test]
async fn batch_fail_reports_each_item() {
    let s = Server::start();
    let (good, lease) = enqueue_and_claim(&s, "bf").await;
    let (stale, _) = enqueue_and_claim(&s, "bf").await;
    let ids = [good.as_str(), stale.as_str(), UNKNOWN_ID, "not-a-uuid"];
    let body = json!({"items": [
        {"id": good, "lease": lease, "error": "boom", "retry": false},
        {"id": stale, "lease": "not-the-lease", "error": "boom"},
        {"id": UNKNOWN_ID, "lease": "x", "error": "boom"},
        {"id": "not-a-uuid", "lease": "x", "error": "boom"},
    ]});
    let got = post_raw(&s.at("/v1/jobs/fail"), &body.to_string()).await;
    assert_first_ok_rest_refused("batch fail", &got, &ids);
    assert_eq!(job_state(&s, &good).await, "dead");
    assert_eq!(job_state(&s, &stale).await, "running");
}

#[tokio::test]
async fn list_query_errors_are_422() {
    let s = Server::start();
    enqueue(&s, json!({"queue": "lq"})).await;
    for (query, field) in [
        ("state=bogus", "state"),
        ("state=RUNNING!", "state"),
        ("limit=1001", "limit"),
        ("cursor=garbage", "cursor"),
        ("cursor=%7B%7D", "cursor"),
        ("queue=a%20b", "queue"),
    ] {
        let got = get(&s.at(&format!("/v1/jobs?{query}"))).await;
        assert_error(&format!("GET /v1/jobs?{query}"), &got, 422, Some(field));
    }
    for (query, field) in [("queue=a%20b", "queue"), ("limit=1001", "limit"), ("cursor=garbage", "cursor")] {
        let got = get(&s.at(&format!("/v1/dlq?{query}"))).await;
        assert_error(&format!("GET /v1/dlq?{query}"), &got, 422, Some(field));
    }
    let (st, body) = get(&s.at("/v1/jobs?queue=lq&state=ready&limit=1000")).await;
    assert_eq!((st, body["jobs"].as_array().map(Vec::len)), (200, Some(1)), "{body}");
}

#[tokio::test]
async fn dlq_selector_needs_exactly_one_of_ids_or_queue() {
    let s = Server::start();
    for action in ["replay", "purge"] {
        let path = s.at(&format!("/v1/dlq/{action}"));
        for body in ["{}", r#"{"ids":[],"queue":"q"}"#, r#"{"ids":["x"],"queue":"q"}"#] {
            let got = post_raw(&path, body).await;
            assert_error(&format!("{action} {body}"), &got, 422, None);
        }
        let got = post_raw(&path, r#"{"queue":"a b"}"#).await;
        assert_error(&format!("{action} bad queue"), &got, 422, Some("queue"));
    }
}

#[tokio::test]
async fn array_instead_of_object_is_400() {
    let s = Server::start();
    // Regression: derived serde accepts a JSON array as a struct's fields in order, so
    // `["q"]` was once taken as `{"queue":"q"}` and `["w"]` as `{"worker":"w"}`.
    let later = enqueue(&s, json!({"queue": "other", "delay_ms": 600_000})).await;
    let mut wrong = Vec::new();
    for (path, body) in [
        ("/v1/jobs".to_string(), r#"["arr"]"#),
        ("/v1/jobs".to_string(), r#"{"jobs":[["arr"]]}"#),
        ("/v1/queues/arr/claim".to_string(), r#"["w"]"#),
        (format!("/v1/jobs/{later}/cancel"), r#"["why"]"#),
        ("/v1/dlq/purge".to_string(), r#"[null,"arr"]"#),
    ] {
        let (st, body_out) = post_raw(&s.at(&path), body).await;
        if st != 400 || body_out.get("error").is_none() {
            wrong.push(format!("POST {path} {body} -> {st} {body_out}"));
        }
    }
    assert!(wrong.is_empty(), "arrays accepted as objects:\n{}", wrong.join("\n"));
    assert_eq!(job_count(&s, "arr").await, 0);
    assert_eq!(job_state(&s, &later).await, "scheduled");
}

#[tokio::test]
async fn undecodable_path_segments_answer_json_errors() {
    let s = Server::start();
    // `%FF` decodes to a byte that is not UTF-8. A job id that is not a UUID names no job
    // (404); a queue name outside `[A-Za-z0-9._:-]` is invalid (422). Either way, JSON.
    let mut wrong = Vec::new();
    let cases = [
        ("GET", "/v1/jobs/%FF".to_string(), "", 404),
        ("POST", "/v1/jobs/%FF/cancel".to_string(), "", 404),
        ("POST", "/v1/jobs/%FF/complete".to_string(), r#"{"lease":"x"}"#, 404),
        ("POST", "/v1/queues/%FF/claim".to_string(), r#"{"worker":"w"}"#, 422),
        ("POST", "/v1/queues/%FF/pause".to_string(), "", 422),
    ];
    for (method, path, body, want) in cases {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (st, text) = send(method.clone(), &s.at(&path), body.into()).await.expect("an answer");
        let json: Option<Value> = serde_json::from_str(&text).ok();
        let shaped = json.as_ref().and_then(|j| j["error"]["code"].as_str()).is_some();
        if st != want || !shaped {
            wrong.push(format!("{method} {path} -> {st} {text:?}"));
        }
    }
    // Regression: axum's own `Path` extractor once answered these, in plain text.
    assert!(wrong.is_empty(), "non-contract answers:\n{}", wrong.join("\n"));
}

#[tokio::test]
async fn deeply_nested_payload_never_breaks_the_server() {
    let s = Server::start();
    let depth = 10_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let body = format!(r#"{{"queue":"deep","payload":{nested}}}"#);
    let (st, text) = send(reqwest::Method::POST, &s.at("/v1/jobs"), body.into_bytes()).await.expect("answer");
    assert!(st == 201 || (400..500).contains(&st), "enqueue deep payload: {st} {text}");
    if st == 201 {
        // The job is stored: every read of it still answers (the body is too deep for this
        // test's JSON parser, so only statuses are checked).
        let id = serde_json::from_str::<Value>(&text).unwrap()["id"].as_str().unwrap().to_string();
        for (method, path, body) in [
            ("GET", format!("/v1/jobs/{id}"), ""),
            ("GET", "/v1/jobs?queue=deep".to_string(), ""),
            ("POST", "/v1/queues/deep/claim".to_string(), r#"{"worker":"w"}"#),
            ("GET", "/v1/queues".to_string(), ""),
        ] {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let (st, text) = send(m, &s.at(&path), body.into()).await.expect("answer");
            assert_eq!(st, 200, "{method} {path}: {}", &text[..text.len().min(300)]);
        }
    } else {
        error_code(&serde_json::from_str(&text).unwrap());
    }
    assert_no_panic(&s);
}

/// Bodies that are invalid for every POST endpoint. (Valid JSON followed by garbage is checked
/// on its own, in `trailing_garbage_after_json_is_400_and_changes_nothing`.)
fn garbage_bodies() -> Vec<(String, Vec<u8>)> {
    let deep = 10_000;
    let mut v: Vec<(String, Vec<u8>)> = [
        "",
        " ",
        "\n\t\r ",
        "null",
        "true",
        "false",
        "0",
        "123",
        "-1",
        "1e400",
        "\"string\"",
        "[]",
        "[null]",
        "[1,2,3]",
        "{}",
        "{",
        "}",
        "[",
        "{\"queue\":",
        "{\"queue\"}",
        "{\"queue\":\"q\"",
        "{'queue':'q'}",
        "{queue:q}",
        "{\"queue\":\"q\",}",
        "{\"queue\":null}",
        "{\"queue\":1}",
        "{\"queue\":[]}",
        "{\"queue\":{}}",
        "{\"queue\":\"q\",\"priority\":\"high\"}",
        "{\"queue\":\"q\",\"priority\":1e400}",
        "{\"queue\":\"q\",\"priority\":-1e400}",
        "{\"queue\":\"q\",\"priority\":99999999999999999999999999}",
        "{\"queue\":\"q\",\"priority\":1.5}",
        "{\"queue\":\"q\",\"priority\":NaN}",
        "{\"queue\":\"q\",\"priority\":Infinity}",
        "{\"queue\":\"q\",\"delay_ms\":-1}",
        "{\"queue\":\"\\ud800\"}",
        "{\"queue\":\"q\\u0000\"}",
        "{\"queue\":\"q\",\"queue\":\"q\"}",
        "{\"queue\":\"q\",\"payload\":[[[[",
        "{\"jobs\":null}",
        "{\"jobs\":[]}",
        "{\"jobs\":{}}",
        "{\"jobs\":[null]}",
        "{\"jobs\":[{\"queue\":\"q\"},1]}",
        "{\"items\":null}",
        "{\"items\":[{}]}",
        "{\"items\":[{\"id\":1,\"lease\":2}]}",
        "{\"ids\":\"x\"}",
        "{\"ids\":[1]}",
        "{\"worker\":null,\"max\":-1}",
        "{\"worker\":\"w\",\"max\":0}",
        "{\"worker\":\"w\",\"wait_ms\":-1}",
        "{\"lease\":null}",
        "{\"lease\":\"\"}",
        "{\"lease\":\"x\",\"extend_ms\":-5}",
        "{\"reason\":5}",
    ]
    .iter()
    .map(|b| (format!("{b:?}"), b.as_bytes().to_vec()))
    .collect();
    let big = |name: &str, body: String| (name.to_string(), body.into_bytes());
    v.push(big("nested arrays x10000", format!("{}{}", "[".repeat(deep), "]".repeat(deep))));
    v.push(big("unclosed arrays x10000", "[".repeat(deep)));
    v.push(big("nested objects x10000", format!("{}1{}", "{\"a\":".repeat(deep), "}".repeat(deep))));
    v.push(big("nested jobs x10000", format!("{{\"jobs\":{}{}}}", "[".repeat(deep), "]".repeat(deep))));
    v.push(big("5000-digit number", "1".repeat(5000)));
    v.push(big("5000-digit max", format!("{{\"worker\":\"w\",\"max\":{}}}", "9".repeat(5000))));
    v.push(big("long queue name", format!("{{\"queue\":\"{}\"}}", "q".repeat(100_000))));
    for (name, bytes) in [
        ("invalid UTF-8", &b"\xff\xfe\xfd"[..]),
        ("invalid UTF-8 in queue", b"{\"queue\":\"\xff\"}"),
        ("invalid UTF-8 in payload", b"{\"queue\":\"q\",\"payload\":\"\xc3\x28\"}"),
        ("invalid UTF-8 key", b"{\"\xc3\x28\":1}"),
        ("UTF-16 body", b"\xff\xfe{\x00}\x00"),
        ("UTF-8 BOM", b"\xef\xbb\xbf{\"queue\":\"q\",\"priority\":\"x\"}"),
        ("NUL bytes", b"\0\0\0"),
    ] {
        v.push((name.to_string(), bytes.to_vec()));
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_bodies_get_4xx_json_errors_and_never_5xx() {
    let s = Server::start();
    let bodies = garbage_bodies();
    assert!(bodies.len() >= 50, "{} garbage bodies", bodies.len());
    let mut wrong = Vec::new();
    let mut answered = 0;
    for path in body_endpoints() {
        for (name, body) in &bodies {
            let url = s.at(&path);
            match send(reqwest::Method::POST, &url, body.clone()).await {
                Err(e) => wrong.push(format!("POST {path} {name}: no HTTP answer: {e}")),
                Ok((st, text)) => {
                    answered += 1;
                    let shaped = serde_json::from_str::<Value>(&text).ok().is_some_and(|j| {
                        j["error"]["code"].as_str().is_some()
                            && j["error"]["message"].as_str().is_some_and(|m| !m.is_empty())
                    });
                    if !(400..500).contains(&st) || !shaped {
                        let cut = &text[..text.len().min(200)];
                        wrong.push(format!("POST {path} {name}: {st} {cut}"));
                    }
                }
            }
        }
    }
    // Pause and resume take no body: whatever is sent, the answer is never a 5xx and is JSON.
    for path in ["/v1/queues/fuzz/pause", "/v1/queues/fuzz/resume"] {
        for (name, body) in &bodies {
            match send(reqwest::Method::POST, &s.at(path), body.clone()).await {
                Err(e) => wrong.push(format!("POST {path} {name}: no HTTP answer: {e}")),
                Ok((st, text)) => {
                    if st >= 500 || serde_json::from_str::<Value>(&text).is_err() {
                        wrong.push(format!("POST {path} {name}: {st} {text}"));
                    }
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {answered} answers broke the contract:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(job_count(&s, "q").await, 0, "garbage created jobs");
    let (st, body) = get(&s.at("/healthz")).await;
    assert_eq!((st, body["status"].as_str()), (200, Some("ok")));
    assert_no_panic(&s);
}

/// A syntax error after a comma leaves the parser without a key name: the error names the
/// part of the path it knows, never a placeholder.
#[tokio::test]
async fn malformed_json_names_only_known_fields() {
    let s = Server::start();
    let cases = [
        ("/v1/jobs", r#"{"queue":"q",}"#, None),
        ("/v1/jobs", r#"{"jobs":[{"queue":"q",}]}"#, Some("jobs")),
        ("/v1/jobs/complete", r#"{"items":[{"id":"x",}]}"#, Some("items[0]")),
    ];
    for (path, body, field) in cases {
        let (st, e) = post_raw(&s.at(path), body).await;
        assert_eq!(st, 400, "{path} {body}: {e}");
        assert_eq!(e["error"]["field"].as_str(), field, "{path} {body}: {e}");
    }
}
