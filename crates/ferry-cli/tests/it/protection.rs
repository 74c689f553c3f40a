//! Protection, end to end over real HTTP against the real binary: rate limits, backpressure
//! (queue depth, pending writes, requests in flight), per-queue flow control, API tokens and
//! scopes, the refusal to listen openly without auth, the worker registry and host probing,
//! and one test per input limit that goes one past it.
//!
//! Each server gets a `ferry.toml` in its data directory (the server runs there) with small
//! limits, so every bound is reached in milliseconds. Every test body runs under a timeout:
//! a stall fails loudly instead of hanging CI.

use crate::common::{Server, error_code};
use reqwest::Method;
use serde_json::{Value, json};
use std::future::Future;
use std::time::{Duration, Instant};

/// Fails the test if `f` takes longer than `secs` (the deadlock guard).
async fn bounded<T>(secs: u64, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f).await.expect("test stalled past its time bound")
}

/// Starts a server whose `ferry.toml` holds `toml`, with extra `serve` arguments.
fn start(toml: &str, args: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ferry.toml"), toml).unwrap();
    Server::start_with(args, dir)
}

/// One answer: status, headers, JSON body (`Null` when empty or not JSON).
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[track_caller]
    fn code(&self) -> String {
        error_code(&self.body)
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

async fn call(
    s: &Server,
    method: Method,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> Answer {
    let mut req = http().request(method, s.at(path));
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("an HTTP answer");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    Answer { status, headers, body: serde_json::from_str(&text).unwrap_or(Value::Null) }
}

async fn post(s: &Server, path: &str, body: Value) -> Answer {
    call(s, Method::POST, path, Some(body), None, &[]).await
}

async fn get(s: &Server, path: &str) -> Answer {
    call(s, Method::GET, path, None, None, &[]).await
}

fn job(queue: &str) -> Value {
    json!({"queue": queue, "payload": {"n": 1}})
}

fn batch(queue: &str, n: usize) -> Value {
    json!({"jobs": (0..n).map(|_| job(queue)).collect::<Vec<_>>()})
}

async fn count(s: &Server, queue: &str, state: &str) -> u64 {
    let a = get(s, "/v1/queues").await;
    assert_eq!(a.status, 200, "{}", a.body);
    a.body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == queue)
        .map_or(0, |q| q["counts"][state].as_u64().unwrap())
}

async fn claim(s: &Server, queue: &str, worker: &str, max: u64) -> Vec<Value> {
    let a = post(s, &format!("/v1/queues/{queue}/claim"), json!({"worker": worker, "max": max})).await;
    assert_eq!(a.status, 200, "claim: {}", a.body);
    a.body["jobs"].as_array().unwrap().clone()
}

#[tokio::test]
async fn rate_limit_is_429_with_retry_after_and_ratelimit_headers() {
    let s = start("[protection]\nrate_per_sec = 1\nrate_burst = 3\n", &[]);
    bounded(30, async {
        let w1 = [("x-ferry-client", "w1")];
        for i in 0..3 {
            let a = call(&s, Method::GET, "/v1/queues", None, None, &w1).await;
            assert_eq!(a.status, 200, "request {i} within the burst");
            assert_eq!(a.header("ratelimit-limit"), Some("3"));
            assert_eq!(a.header("ratelimit-remaining"), Some(&*(2 - i).to_string()));
            assert!(a.header("ratelimit-reset").is_some());
        }
        let a = call(&s, Method::GET, "/v1/queues", None, None, &w1).await;
        assert_eq!(a.status, 429, "{}", a.body);
        assert_eq!(a.code(), "rate_limited");
        let retry: u64 = a.header("retry-after").expect("Retry-After").parse().unwrap();
        assert!((1..=2).contains(&retry), "retry after {retry}");
        assert_eq!(a.header("ratelimit-remaining"), Some("0"));
        // Another client has its own bucket; the refused one gets a token back after ~1 s.
        let a = call(&s, Method::GET, "/v1/queues", None, None, &[("x-ferry-client", "w2")]).await;
        assert_eq!(a.status, 200);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(call(&s, Method::GET, "/v1/queues", None, None, &w1).await.status, 200);
        // The liveness probe is never limited.
        for _ in 0..10 {
            assert_eq!(call(&s, Method::GET, "/healthz", None, None, &w1).await.status, 200);
        }
        let m = call(&s, Method::GET, "/metrics", None, None, &[("x-ferry-client", "scraper")]).await;
        assert_eq!(m.status, 200);
    })
    .await;
}

#[tokio::test]
async fn queue_depth_backpressure_refuses_whole_batches_with_429() {
    let s = start("[limits]\nmax_queue_depth = 10\n", &[]);
    bounded(30, async {
        assert_eq!(post(&s, "/v1/jobs", batch("q", 8)).await.status, 201);
        let a = post(&s, "/v1/jobs", batch("q", 3)).await;
        assert_eq!(a.status, 429, "{}", a.body);
        assert_eq!(a.code(), "queue_full");
        assert_eq!(a.body["error"]["field"], "queue");
        assert!(a.header("retry-after").is_some());
        assert_eq!(count(&s, "q", "ready").await, 8, "nothing of the refused batch was accepted");
        // A batch touching a full queue and another one is refused whole.
        let mixed = json!({"jobs": [job("other"), job("q"), job("q"), job("q")]});
        assert_eq!(post(&s, "/v1/jobs", mixed).await.status, 429);
        assert_eq!(count(&s, "other", "ready").await, 0);
        assert_eq!(post(&s, "/v1/jobs", batch("q", 2)).await.status, 201, "exactly up to the limit");
        assert_eq!(post(&s, "/v1/jobs", job("q")).await.status, 429, "one past it");
        // Working the queue makes room again (running jobs do not count).
        let jobs = claim(&s, "q", "w", 5).await;
        assert_eq!(jobs.len(), 5);
        tokio::time::sleep(Duration::from_millis(1200)).await; // one depth refresh
        assert_eq!(post(&s, "/v1/jobs", batch("q", 5)).await.status, 201);
        assert_eq!(post(&s, "/v1/jobs", job("q")).await.status, 429);
        // A queue's own limit wins over the default, at once.
        let a = call(&s, Method::PUT, "/v1/queues/q/limits", Some(json!({"max_depth": 12})), None, &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(post(&s, "/v1/jobs", batch("q", 2)).await.status, 201);
        assert_eq!(post(&s, "/v1/jobs", job("q")).await.status, 429);
        let m = get(&s, "/metrics").await;
        assert_eq!(m.status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_write_limit_is_503_and_nothing_is_half_accepted() {
    let s = start("[limits]\nmax_pending_writes = 120\n", &[]);
    bounded(60, async {
        let url = s.at("/v1/jobs");
        let mut tasks = Vec::new();
        for _ in 0..40 {
            let (url, body) = (url.clone(), batch("p", 100));
            tasks.push(tokio::spawn(async move {
                let r = http().post(url).json(&body).send().await.unwrap();
                let status = r.status().as_u16();
                let retry = r.headers().get("retry-after").is_some();
                let body: Value = r.json().await.unwrap();
                (status, retry, body)
            }));
        }
        let (mut ok, mut refused) = (0u64, 0u64);
        for t in tasks {
            let (status, retry, body) = t.await.unwrap();
            match status {
                201 => ok += 1,
                503 => {
                    assert_eq!(error_code(&body), "server_saturated");
                    assert!(retry, "503 without Retry-After");
                    refused += 1;
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
        assert!(ok >= 1, "some batches get through");
        assert!(refused >= 1, "40 concurrent batches of 100 against a limit of 120 must refuse some");
        assert_eq!(
            count(&s, "p", "ready").await,
            ok * 100,
            "admitted batches whole, refused ones not at all"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_bounded() {
    let s = start("[limits]\nmax_concurrent_requests = 2\n", &[]);
    bounded(30, async {
        let mut polls = Vec::new();
        for i in 0..2 {
            let url = s.at("/v1/queues/empty/claim");
            polls.push(tokio::spawn(async move {
                http()
                    .post(url)
                    .json(&json!({"worker": format!("w{i}"), "wait_ms": 1500}))
                    .send()
                    .await
                    .unwrap()
                    .status()
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let a = get(&s, "/v1/queues").await;
        assert_eq!(a.status, 503, "{}", a.body);
        assert_eq!(a.code(), "server_saturated");
        assert!(a.header("retry-after").is_some());
        assert_eq!(get(&s, "/healthz").await.status, 200, "liveness is never refused");
        for p in polls {
            assert_eq!(p.await.unwrap().as_u16(), 200);
        }
        assert_eq!(get(&s, "/v1/queues").await.status, 200, "slots come back");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_running_and_start_rate_return_fewer_jobs_never_errors() {
    let s = start("", &[]);
    bounded(60, async {
        assert_eq!(post(&s, "/v1/jobs", batch("flow", 20)).await.status, 201);
        let a =
            call(&s, Method::PUT, "/v1/queues/flow/limits", Some(json!({"max_running": 3})), None, &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.body["limits"]["max_running"], 3);
        let first = claim(&s, "flow", "a", 10).await;
        assert_eq!(first.len(), 3, "only max_running jobs run at once");
        assert!(claim(&s, "flow", "b", 10).await.is_empty(), "none while at the limit, and no error");
        let id = first[0]["id"].as_str().unwrap();
        let lease = first[0]["lease"].as_str().unwrap();
        // A long-poll waiting at the limit gets the slot a completion frees, without a wake-up.
        let url = s.at("/v1/queues/flow/claim");
        let waiting = tokio::spawn(async move {
            let t = Instant::now();
            let r = http()
                .post(url)
                .json(&json!({"worker": "b", "max": 10, "wait_ms": 5000}))
                .send()
                .await
                .unwrap();
            let body: Value = r.json().await.unwrap();
            (body["jobs"].as_array().unwrap().len(), t.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let done = post(&s, &format!("/v1/jobs/{id}/complete"), json!({"lease": lease})).await;
        assert_eq!(done.status, 200);
        let (n, waited) = waiting.await.unwrap();
        assert_eq!(n, 1, "a finished job frees exactly one slot");
        assert!(waited < Duration::from_millis(2000), "the long-poll took the slot after {waited:?}");
        assert!(claim(&s, "flow", "b", 10).await.is_empty());
        let q = get(&s, "/v1/queues").await;
        let flow =
            q.body["queues"].as_array().unwrap().iter().find(|q| q["queue"] == "flow").unwrap().clone();
        assert_eq!(flow["limits"]["max_running"], 3, "stats show the limits: {flow}");

        // Start rate: 5 per second with a burst of 5.
        assert_eq!(post(&s, "/v1/jobs", batch("rate", 30)).await.status, 201);
        let a = call(
            &s,
            Method::PUT,
            "/v1/queues/rate/limits",
            Some(json!({"max_starts_per_sec": 5.0})),
            None,
            &[],
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let started = Instant::now();
        let mut got = 0;
        while started.elapsed() < Duration::from_millis(2000) {
            got += claim(&s, "rate", "r", 100).await.len();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // burst 5 + 5/s × ~2 s = ~15; generous bounds for a slow machine.
        assert!((8..=17).contains(&got), "started {got} jobs in 2 s at 5/s");

        // Bad limits are 422 with the field.
        for (body, field) in [
            (json!({"max_running": 0}), "max_running"),
            (json!({"max_starts_per_sec": -1.0}), "max_starts_per_sec"),
            (json!({"max_depth": 0}), "max_depth"),
        ] {
            let a = call(&s, Method::PUT, "/v1/queues/flow/limits", Some(body), None, &[]).await;
            assert_eq!(a.status, 422, "{}", a.body);
            assert_eq!(a.body["error"]["field"], field);
        }
        let a = call(&s, Method::PUT, "/v1/queues/flow/limits", Some(json!({"nope": 1})), None, &[]).await;
        assert_eq!(a.status, 400, "unknown field: {}", a.body);
        // Clearing lifts the limit.
        let a = call(&s, Method::PUT, "/v1/queues/flow/limits", Some(json!({})), None, &[]).await;
        assert_eq!(a.status, 200);
        assert_eq!(claim(&s, "flow", "c", 100).await.len(), 16);
    })
    .await;
}

/// Mints a token over the API (`admin` token given when auth is already on).
async fn mint(s: &Server, admin: Option<&str>, body: Value) -> String {
    let a = call(s, Method::POST, "/v1/tokens", Some(body.clone()), admin, &[]).await;
    assert_eq!(a.status, 201, "mint {body}: {}", a.body);
    assert!(a.body.get("hash").is_none(), "the hash is never shown");
    a.body["token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn tokens_scopes_and_queue_restrictions() {
    let s = start("", &[]);
    bounded(60, async {
        // Auth is off until the first token exists; that token is minted over loopback.
        assert_eq!(get(&s, "/v1/queues").await.status, 200);
        let admin = mint(&s, None, json!({"name": "root", "scopes": ["admin"]})).await;
        let a = get(&s, "/v1/queues").await;
        assert_eq!(a.status, 401, "auth is on once a token exists: {}", a.body);
        assert_eq!(a.code(), "unauthorized");
        assert_eq!(get(&s, "/healthz").await.status, 200, "liveness needs no token");
        for path in ["/readyz", "/metrics", "/v1/openapi.json", "/v1/workers", "/v1/hosts", "/v1/events"] {
            assert_eq!(get(&s, path).await.status, 401, "{path} without a token");
        }
        let producer = mint(&s, Some(&admin), json!({"name": "p", "scopes": ["produce"]})).await;
        let worker =
            mint(&s, Some(&admin), json!({"name": "w", "scopes": ["work"], "queues": ["mine"]})).await;
        let reader = mint(&s, Some(&admin), json!({"name": "r", "scopes": ["read"]})).await;

        let bad =
            call(&s, Method::GET, "/v1/queues", None, Some("fy_00000000000000000000000000000000_x"), &[])
                .await;
        assert_eq!(bad.status, 401);
        let garbled = call(&s, Method::GET, "/v1/queues", None, Some(&format!("{admin}x")), &[]).await;
        assert_eq!(garbled.status, 401, "a wrong secret for a real id");

        let a = call(&s, Method::POST, "/v1/jobs", Some(job("mine")), Some(&producer), &[]).await;
        assert_eq!(a.status, 201);
        let id = a.body["id"].as_str().unwrap().to_string();
        let a = call(&s, Method::POST, "/v1/jobs", Some(job("mine")), Some(&reader), &[]).await;
        assert_eq!(a.status, 403, "read cannot produce");
        assert_eq!(a.code(), "forbidden");
        let a = call(
            &s,
            Method::POST,
            "/v1/queues/mine/claim",
            Some(json!({"worker": "x"})),
            Some(&producer),
            &[],
        )
        .await;
        assert_eq!(a.status, 403, "produce cannot claim");
        let a = call(&s, Method::POST, "/v1/queues/mine/pause", None, Some(&reader), &[]).await;
        assert_eq!(a.status, 403, "read cannot administer");
        assert_eq!(call(&s, Method::GET, "/v1/tokens", None, Some(&producer), &[]).await.status, 403);

        // Neither 401 nor 403 says whether a job exists.
        let unknown = "7d444840-9dc0-41d1-b245-5ffdce74fad2";
        for target in [id.as_str(), unknown] {
            let a = call(&s, Method::GET, &format!("/v1/jobs/{target}"), None, None, &[]).await;
            assert_eq!((a.status, a.code()), (401, "unauthorized".into()));
            let a =
                call(&s, Method::POST, &format!("/v1/jobs/{target}/cancel"), None, Some(&reader), &[]).await;
            assert_eq!((a.status, a.code()), (403, "forbidden".into()));
        }
        // A queue-limited worker: its queue yes, others no, and foreign or unknown jobs alike 403.
        let a =
            call(&s, Method::POST, "/v1/queues/mine/claim", Some(json!({"worker": "w"})), Some(&worker), &[])
                .await;
        assert_eq!(a.status, 200, "{}", a.body);
        let lease = a.body["jobs"][0]["lease"].as_str().unwrap().to_string();
        let a = call(
            &s,
            Method::POST,
            "/v1/queues/other/claim",
            Some(json!({"worker": "w"})),
            Some(&worker),
            &[],
        )
        .await;
        assert_eq!(a.status, 403);
        let other = call(&s, Method::POST, "/v1/jobs", Some(job("other")), Some(&producer), &[]).await;
        let other_id = other.body["id"].as_str().unwrap();
        for target in [other_id, unknown] {
            let a = call(
                &s,
                Method::POST,
                &format!("/v1/jobs/{target}/complete"),
                Some(json!({"lease": "x"})),
                Some(&worker),
                &[],
            )
            .await;
            assert_eq!((a.status, a.code()), (403, "forbidden".into()), "{target}");
        }
        let a = call(
            &s,
            Method::POST,
            &format!("/v1/jobs/{id}/complete"),
            Some(json!({"lease": lease})),
            Some(&worker),
            &[],
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.body);

        // Listing shows tokens without secrets or hashes; revoking takes effect at once.
        let list = call(&s, Method::GET, "/v1/tokens", None, Some(&admin), &[]).await;
        assert_eq!(list.status, 200);
        let tokens = list.body["tokens"].as_array().unwrap();
        assert_eq!(tokens.len(), 4);
        assert!(tokens.iter().all(|t| t.get("hash").is_none() && t.get("token").is_none()));
        let rid = tokens.iter().find(|t| t["name"] == "r").unwrap()["id"].as_str().unwrap().to_string();
        let a = call(&s, Method::DELETE, &format!("/v1/tokens/{rid}"), None, Some(&admin), &[]).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert!(a.body["revoked_at"].is_number());
        assert_eq!(call(&s, Method::GET, "/v1/queues", None, Some(&reader), &[]).await.status, 401);
        let a = call(&s, Method::DELETE, &format!("/v1/tokens/{unknown}"), None, Some(&admin), &[]).await;
        assert_eq!(a.status, 404);
        // Minting validates.
        for (body, field) in [
            (json!({"name": "", "scopes": ["read"]}), "name"),
            (json!({"name": "n", "scopes": []}), "scopes"),
            (json!({"name": "n", "scopes": ["read"], "queues": ["bad name"]}), "queues[0]"),
        ] {
            let a = call(&s, Method::POST, "/v1/tokens", Some(body), Some(&admin), &[]).await;
            assert_eq!(a.status, 422, "{}", a.body);
            assert_eq!(a.body["error"]["field"], field);
        }
        let a = call(
            &s,
            Method::POST,
            "/v1/tokens",
            Some(json!({"name": "n", "scopes": ["root"]})),
            Some(&admin),
            &[],
        )
        .await;
        assert_eq!(a.status, 400, "unknown scope: {}", a.body);
    })
    .await;
}

#[tokio::test]
async fn cli_tokens_bootstrap_auth_and_open_listeners_are_refused() {
    bounded(90, async {
        let ferry = env!("CARGO_BIN_EXE_ferry");
        // A non-loopback listener without auth configured is refused at start...
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new(ferry)
            .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
            .arg(dir.path())
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--insecure"), "the refusal says how to proceed: {err}");
        // ...unless --insecure is given.
        let mut s = Server::start_with(&["--insecure"], dir);
        assert_eq!(get(&s, "/v1/queues").await.status, 200);
        s.stop();
        let dir = s.take_dir();

        // Offline: the CLI writes the database of a stopped server.
        let out = std::process::Command::new(ferry)
            .args(["tokens", "create", "--scopes", "admin", "--name", "boot", "--data-dir"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let admin = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(admin.starts_with("fy_"), "{admin}");
        let s = Server::start_with(&["--auth", "true"], dir);
        assert_eq!(get(&s, "/v1/queues").await.status, 401);
        assert_eq!(call(&s, Method::GET, "/v1/queues", None, Some(&admin), &[]).await.status, 200);
        // Online: the CLI goes through the API with the admin token.
        let cli = |args: &[&str]| {
            std::process::Command::new(ferry)
                .args(args)
                .args(["--url", &s.url])
                .env("FERRY_TOKEN", &admin)
                .output()
                .unwrap()
        };
        let out = cli(&["tokens", "create", "--scopes", "produce,read", "--queues", "a,b"]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let produce = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let a = call(&s, Method::POST, "/v1/jobs", Some(job("a")), Some(&produce), &[]).await;
        assert_eq!(a.status, 201);
        let a = call(&s, Method::POST, "/v1/jobs", Some(job("c")), Some(&produce), &[]).await;
        assert_eq!(a.status, 403, "queue c is not the token's");
        let out = cli(&["tokens", "list", "--json"]);
        assert!(out.status.success());
        let list: Value = serde_json::from_slice(&out.stdout).unwrap();
        let id = list.as_array().unwrap().iter().find(|t| t["name"] == "produce+read").unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        let out = cli(&["tokens", "list"]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("boot") && text.contains("a,b"), "{text}");
        let out = cli(&["tokens", "revoke", &id]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(call(&s, Method::POST, "/v1/jobs", Some(job("a")), Some(&produce), &[]).await.status, 401);
        // Without the admin token the CLI gets the server's 401.
        let out = std::process::Command::new(ferry)
            .args(["tokens", "list", "--url", &s.url])
            .env_remove("FERRY_TOKEN")
            .output()
            .unwrap();
        assert!(!out.status.success());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_workers_are_lost_and_their_leases_released() {
    let s = start("[health]\nworker_timeout_ms = 1500\n", &[]);
    bounded(60, async {
        // A one-off claim that found nothing (the quick start's `curl`): its worker goes
        // quiet holding no lease, so it is marked lost without a warning.
        assert!(claim(&s, "empty", "idle", 1).await.is_empty());
        assert_eq!(
            post(&s, "/v1/jobs", json!({"queue": "w", "payload": {}, "lease_ms": 600000})).await.status,
            201
        );
        let jobs = claim(&s, "w", "doomed", 1).await;
        assert_eq!(jobs.len(), 1);
        let (id, lease) = (jobs[0]["id"].as_str().unwrap(), jobs[0]["lease"].as_str().unwrap());
        assert!(claim(&s, "w", "alive", 1).await.is_empty());
        let deadline = Instant::now() + Duration::from_secs(3);
        let seen = loop {
            let a = get(&s, "/v1/workers").await;
            let ws = a.body["workers"].as_array().unwrap().clone();
            if ws.len() == 3 || Instant::now() > deadline {
                break ws;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let doomed = seen.iter().find(|w| w["name"] == "doomed").expect("registered by its claim");
        assert_eq!(doomed["status"], "active");
        assert_eq!(doomed["jobs_in_flight"], 1);
        assert!(doomed["last_seen_ms"].as_i64().unwrap() > 0);
        // "alive" keeps heartbeating a claim loop; "doomed" goes silent and loses its job
        // long before the 10-minute lease would expire.
        let started = Instant::now();
        let mut taken = Vec::new();
        while started.elapsed() < Duration::from_secs(10) && taken.is_empty() {
            taken = claim(&s, "w", "alive", 1).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(taken.len(), 1, "the lost worker's job became claimable");
        assert_eq!(taken[0]["id"], id);
        let a = post(&s, &format!("/v1/jobs/{id}/complete"), json!({"lease": lease})).await;
        assert_eq!(a.status, 409, "the lost worker's lease is stale: {}", a.body);
        let j = get(&s, &format!("/v1/jobs/{id}")).await;
        let kinds: Vec<&str> =
            j.body["errors"].as_array().unwrap().iter().filter_map(|e| e["kind"].as_str()).collect();
        assert!(kinds.contains(&"worker_lost"), "{}", j.body);
        let ws = get(&s, "/v1/workers").await.body["workers"].as_array().unwrap().clone();
        assert_eq!(ws.iter().find(|w| w["name"] == "doomed").unwrap()["status"], "lost");
        assert_eq!(ws.iter().find(|w| w["name"] == "alive").unwrap()["status"], "active");
        assert_eq!(ws.iter().find(|w| w["name"] == "idle").unwrap()["status"], "lost");
        let warned: Vec<String> =
            s.log.lock().unwrap().iter().filter(|l| l.contains("workers lost")).cloned().collect();
        assert!(
            warned.iter().any(|l| l.contains("doomed")),
            "the worker holding a lease is reported: {warned:?}"
        );
        assert!(!warned.iter().any(|l| l.contains("idle")), "a worker without a lease is not: {warned:?}");
    })
    .await;
}

/// A tiny HTTP server: answers 200 after `delay`, on a free port; returns its URL.
async fn health_endpoint(delay: Duration, status: u16) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 2048];
                let _ = sock.read(&mut buf).await;
                tokio::time::sleep(delay).await;
                let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/health")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_are_probed_concurrently_with_damped_status() {
    let s = start(
        "[health]\nhost_probe_interval_ms = 300\nhost_probe_timeout_ms = 400\nhost_down_after = 2\nhost_up_after = 2\n",
        &[],
    );
    bounded(60, async {
        let good = health_endpoint(Duration::ZERO, 200).await;
        let slow = health_endpoint(Duration::from_secs(5), 200).await;
        let sick = health_endpoint(Duration::ZERO, 500).await;
        for (name, url) in [("good", &good), ("sick", &sick)] {
            let a = post(&s, "/v1/hosts", json!({"name": name, "health_url": url})).await;
            assert_eq!(a.status, 201, "{}", a.body);
        }
        let dup = post(&s, "/v1/hosts", json!({"name": "good", "health_url": good})).await;
        assert_eq!(dup.status, 409);
        for (body, field) in [
            (json!({"name": "x", "health_url": "ftp://a/b"}), "health_url"),
            (json!({"name": "x", "health_url": "not a url"}), "health_url"),
            (json!({"name": "", "health_url": good}), "name"),
        ] {
            let a = post(&s, "/v1/hosts", body).await;
            assert_eq!(a.status, 422, "{}", a.body);
            assert_eq!(a.body["error"]["field"], field);
        }
        // 100 hosts that never answer within the timeout: one round takes about one timeout.
        let registered = Instant::now();
        for i in 0..100 {
            let a = post(&s, "/v1/hosts", json!({"name": format!("slow{i:03}"), "health_url": slow})).await;
            assert_eq!(a.status, 201);
        }
        let reg_ms = registered.elapsed().as_millis();
        let deadline = Instant::now() + Duration::from_secs(20);
        let hosts = loop {
            let a = get(&s, "/v1/hosts").await;
            let hosts = a.body["hosts"].as_array().unwrap().clone();
            let probed_down = hosts
                .iter()
                .filter(|h| h["name"].as_str().unwrap().starts_with("slow") && h["status"] == "down")
                .count();
            let good_up = hosts.iter().any(|h| h["name"] == "good" && h["status"] == "up");
            if (probed_down == 100 && good_up) || Instant::now() > deadline {
                break hosts;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let elapsed = registered.elapsed();
        let h = |n: &str| hosts.iter().find(|h| h["name"] == n).unwrap().clone();
        assert_eq!(h("good")["status"], "up", "{}", h("good"));
        assert_eq!(h("sick")["status"], "down", "{}", h("sick"));
        assert_eq!(h("sick")["last_probe"]["status"], 500);
        let slow0 = h("slow000");
        assert_eq!(slow0["status"], "down", "{slow0}");
        assert!(slow0["last_probe"]["error"].as_str().unwrap().contains("timed out"));
        assert!(slow0["history"].as_array().unwrap().len() >= 2);
        // Two failed rounds (down_after = 2) of 100 hosts each, sequentially, would take
        // 2 × 100 × 0.4 s = 80 s; concurrently about 2 × (0.4 + 0.3) s.
        assert!(
            elapsed < Duration::from_secs(6),
            "100 hosts down after {elapsed:?} (registration took {reg_ms} ms): probes are not concurrent"
        );
        let a = call(&s, Method::DELETE, "/v1/hosts/sick", None, None, &[]).await;
        assert_eq!(a.status, 204);
        assert_eq!(call(&s, Method::DELETE, "/v1/hosts/sick", None, None, &[]).await.status, 404);
    })
    .await;
}

/// One past every input limit: a clear 413 or 422 naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_limit_is_enforced_one_past_it() {
    let s = start(
        "[limits]\nmax_payload_bytes = 100\nmax_batch = 3\nmax_queue_name_len = 8\nmax_worker_name_len = 6\n\
         max_tags = 2\nmax_tag_len = 5\nmax_unique_key_len = 10\nmax_depends_on = 1\nmax_claim = 4\n\
         max_wait_ms = 1000\nmax_page_size = 5\nmax_request_bytes = 4096\nmax_ws_message_bytes = 64\n\
         max_name_len = 6\nmax_url_len = 40\nmax_timeout_ms = 1000\n",
        &[],
    );
    bounded(60, async {
        let check = |a: Answer, status: u16, field: &str, what: &str| {
            assert_eq!(a.status, status, "{what}: {}", a.body);
            assert_eq!(a.body["error"]["field"], field, "{what}: {}", a.body);
            assert!(!a.body["error"]["message"].as_str().unwrap().is_empty());
        };
        let payload = |n: usize| json!({"s": "x".repeat(n)});
        // {"s":"..."} is 8 bytes around the string.
        assert_eq!(post(&s, "/v1/jobs", json!({"queue": "q", "payload": payload(92)})).await.status, 201);
        check(
            post(&s, "/v1/jobs", json!({"queue": "q", "payload": payload(93)})).await,
            413,
            "payload",
            "payload",
        );
        assert_eq!(post(&s, "/v1/jobs", batch("q", 3)).await.status, 201);
        check(post(&s, "/v1/jobs", batch("q", 4)).await, 413, "jobs", "batch");
        let timeout = |ms: u64| json!({"queue": "q", "payload": {}, "timeout_ms": ms});
        assert_eq!(post(&s, "/v1/jobs", timeout(1000)).await.status, 201);
        check(post(&s, "/v1/jobs", timeout(1001)).await, 422, "timeout_ms", "run deadline");
        let beats = |n: usize| {
            let item = json!({"id": "01a23b7b-8c8c-7726-982b-341f6721df1c", "lease": "1.x"});
            json!({"worker": "w", "items": vec![item; n]})
        };
        assert_eq!(post(&s, "/v1/jobs/heartbeat", beats(3)).await.status, 200);
        check(post(&s, "/v1/jobs/heartbeat", beats(4)).await, 413, "items", "heartbeat batch");
        assert_eq!(post(&s, "/v1/jobs", job("q2345678")).await.status, 201);
        check(post(&s, "/v1/jobs", job("q23456789")).await, 422, "queue", "queue name");
        let tags = |t: Vec<&str>| json!({"queue": "q", "payload": {}, "tags": t});
        assert_eq!(post(&s, "/v1/jobs", tags(vec!["a", "bbbbb"])).await.status, 201);
        check(post(&s, "/v1/jobs", tags(vec!["a", "b", "c"])).await, 422, "tags", "tag count");
        check(post(&s, "/v1/jobs", tags(vec!["bbbbbb"])).await, 422, "tags[0]", "tag length");
        let uk = |k: &str| json!({"queue": "q", "payload": {}, "unique_key": k});
        assert_eq!(post(&s, "/v1/jobs", uk("0123456789")).await.status, 201);
        check(post(&s, "/v1/jobs", uk("0123456789a")).await, 422, "unique_key", "unique key");
        let dep = post(&s, "/v1/jobs", job("q")).await.body["id"].clone();
        let deps = |d: Vec<Value>| json!({"queue": "q", "payload": {}, "depends_on": d});
        assert_eq!(post(&s, "/v1/jobs", deps(vec![dep.clone()])).await.status, 201);
        check(
            post(&s, "/v1/jobs", deps(vec![dep.clone(), dep])).await,
            422,
            "depends_on",
            "depends_on count",
        );
        let claim_body = |w: &str, max: u64, wait: u64| json!({"worker": w, "max": max, "wait_ms": wait});
        assert_eq!(post(&s, "/v1/queues/q/claim", claim_body("w12345", 4, 0)).await.status, 200);
        check(
            post(&s, "/v1/queues/q/claim", claim_body("w123456", 1, 0)).await,
            422,
            "worker",
            "worker name",
        );
        check(post(&s, "/v1/queues/q/claim", claim_body("w", 5, 0)).await, 422, "max", "claim size");
        check(post(&s, "/v1/queues/q/claim", claim_body("w", 1, 1001)).await, 422, "wait_ms", "long-poll");
        assert_eq!(get(&s, "/v1/jobs?limit=5").await.status, 200);
        check(get(&s, "/v1/jobs?limit=6").await, 422, "limit", "page size");
        let a = get(&s, "/v1/events?wait_ms=1001").await;
        assert!(a.status == 422 || a.status == 400, "event long-poll past max_wait_ms: {}", a.body);
        let big = json!({"queue": "q", "payload": {"s": "x".repeat(5000)}});
        assert_eq!(post(&s, "/v1/jobs", big).await.status, 413, "request bytes");
        check(
            post(&s, "/v1/tokens", json!({"name": "abcdefg", "scopes": ["read"]})).await,
            422,
            "name",
            "token name",
        );
        let url = format!("http://h/{}", "x".repeat(40));
        check(
            post(&s, "/v1/hosts", json!({"name": "h", "health_url": url})).await,
            413,
            "health_url",
            "host URL",
        );
        check(
            post(&s, "/v1/hosts", json!({"name": "abcdefg", "health_url": "http://h/"})).await,
            422,
            "name",
            "host name",
        );
    })
    .await;
}
