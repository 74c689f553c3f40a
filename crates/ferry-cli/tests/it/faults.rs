//! Fault injection against the real `ferry serve` binary over real HTTP.
//!
//! - `sigkill_under_mixed_load_loses_nothing`: 20 SIGKILLs of a server under mixed load
//!   (producers enqueueing single jobs and small batches, workers claiming, completing one by
//!   one and in batches, failing with and without retry, abandoning leases). After each restart
//!   every acknowledged enqueue exists, every acknowledged completion is `completed` with the
//!   attempt of the lease that completed it, and every job has been completed at most once: one
//!   `job.completed` event per completed job, a repeated completion with the completing lease
//!   answers 200 again and every other lease of the job is `stale_lease` (the rule of
//!   ARCHITECTURE.md "Idempotent reports" and the conformance suite). Finally the queue is
//!   drained, the server stopped with SIGTERM and restarted: every job is as it was.
//! - `sqlite_disk_full_opens_the_breaker_and_recovers`: the data directory is a small tmpfs that
//!   a filler file makes full. Enqueues answer 201 or 503 (`unavailable`, then `circuit_open`,
//!   both with `Retry-After`), `/readyz` and `/metrics` show the circuit open; once the filler is
//!   gone the same process accepts writes again and closes the circuit. Skipped (with a printed
//!   reason) where tmpfs cannot be mounted.
//! - `postgres_outage_opens_and_closes_the_breaker`: the same story with a private PostgreSQL
//!   cluster stopped and started under load. Skipped without PostgreSQL server binaries, unless
//!   `FERRY_REQUIRE_PG=1`.
//! - `fuzzed_requests_never_5xx_or_hang`: every path and method of `/v1/openapi.json` gets a
//!   few hundred generated requests (odd path parameters, query strings, bodies shaped by the
//!   OpenAPI schemas and mutated, random JSON, bytes, truncated and deeply nested JSON, huge
//!   numbers, wrong content types), sent byte for byte over TCP so paths are not normalized.
//!   Every answer arrives in time, is JSON (errors in the error shape), and is never a 5xx
//!   other than 503; the server answers `/healthz` at the end and logged no panic.
//!
//! Randomness is seeded; each test prints its seed and takes it back from `FERRY_FAULTS_SEED`
//! to replay a run. Every test body runs under a timeout (the deadlock guard), so a stall fails
//! loudly instead of hanging CI.

use crate::common::Server;
use crate::common::private_pg::PrivatePg;
use crate::common::tmpfs::Tmpfs;
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------------
// Shared helpers
// ---------------------------------------------------------------------------------------------

/// Fails the test if `f` takes longer than `limit` (the deadlock guard).
async fn bounded<T>(limit: Duration, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("test stalled: not finished within {limit:?} (deadlock guard)"))
}

/// The run's seed: `FERRY_FAULTS_SEED` if set, else a fresh one; printed either way.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("FERRY_FAULTS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: seed {seed} (replay with FERRY_FAULTS_SEED={seed})");
    seed
}

/// `[protection]` that opens the breaker after 3 storage failures and probes after 500 ms.
const BREAKER_TOML: &str = "[protection]\nbreaker_failures = 3\nbreaker_cooldown_ms = 500\n";

/// Starts `ferry serve` on `dir` (with `toml` as its `ferry.toml`) off the async threads.
async fn start(dir: tempfile::TempDir, toml: Option<&str>, args: &[&str]) -> Server {
    if let Some(t) = toml {
        std::fs::write(dir.path().join("ferry.toml"), t).unwrap();
    }
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Server::start_with(&args, dir)
    })
    .await
    .unwrap()
}

/// Stops the server with SIGTERM, checks it exited cleanly, and hands back its data directory.
async fn stop_cleanly(mut server: Server) -> tempfile::TempDir {
    tokio::task::spawn_blocking(move || {
        let status = server.stop();
        assert!(status.success(), "ferry serve exited with {status} after SIGTERM");
        server.take_dir()
    })
    .await
    .unwrap()
}

/// Asserts that the server never logged a panic.
fn assert_no_panic(server: &Server) {
    let log = server.log.lock().unwrap();
    let panics: Vec<&String> = log.iter().filter(|l| l.contains("panicked")).collect();
    assert!(panics.is_empty(), "the server panicked: {panics:#?}");
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap()
}

/// One answer: status, `Retry-After`, and the body as JSON (`Null` when empty or not JSON).
#[derive(Debug)]
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
}

/// POSTs `body` as JSON; a transport error becomes a message naming the URL.
async fn post_json(http: &reqwest::Client, url: String, body: Value) -> Result<Answer, String> {
    send(http.post(&url).json(&body)).await.map_err(|e| format!("POST {url}: {e}"))
}

async fn send(req: reqwest::RequestBuilder) -> Result<Answer, reqwest::Error> {
    let r = req.send().await?;
    let status = r.status().as_u16();
    let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
    let text = r.text().await?;
    Ok(Answer { status, retry_after, body: serde_json::from_str(&text).unwrap_or(Value::Null) })
}

/// Runs `f` over `items`, `n` at a time, and returns the error messages it produced.
async fn failures<T, Fut>(items: Vec<T>, n: usize, f: impl FnMut(T) -> Fut) -> Vec<String>
where
    Fut: Future<Output = Result<(), String>>,
{
    let out: Vec<Result<(), String>> =
        futures_util::stream::iter(items).map(f).buffer_unordered(n).collect().await;
    out.into_iter().filter_map(Result::err).collect()
}

#[track_caller]
fn assert_none(what: &str, errors: &[String]) {
    assert!(
        errors.is_empty(),
        "{what}: {} failures, first ones: {:#?}",
        errors.len(),
        &errors[..errors.len().min(8)]
    );
}

/// Polls `check` every 20 ms until it is true; fails with `what` after `limit`.
async fn eventually<Fut: Future<Output = bool>>(limit: Duration, what: &str, mut check: impl FnMut() -> Fut) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 1. SIGKILL under mixed load
// ---------------------------------------------------------------------------------------------

const CYCLES: usize = 20;
const CRASH_QUEUE: &str = "crash";

/// What the crash test's clients were promised (acknowledged with a 2xx).
#[derive(Default)]
struct Ledger {
    /// Acknowledged enqueues, in order.
    enqueued: Vec<String>,
    /// Every lease handed out per job, with the attempt it started.
    leases: HashMap<String, Vec<(String, u64)>>,
    /// Acknowledged completions: job → the lease that completed it.
    completed: HashMap<String, String>,
    /// The same jobs in the order their completion was first acknowledged.
    completion_order: Vec<String>,
    /// Completions acknowledged for two different leases of one job (must stay empty).
    completed_twice: Vec<String>,
    /// Answers outside the documented outcomes (must stay empty).
    unexpected: Vec<String>,
}

impl Ledger {
    fn claimed(&mut self, id: &str, lease: &str, attempt: u64) {
        self.leases.entry(id.to_string()).or_default().push((lease.to_string(), attempt));
    }

    fn completion(&mut self, id: &str, lease: &str) {
        match self.completed.get(id) {
            Some(first) if first == lease => {} // a repeat of the same report
            Some(first) => {
                self.completed_twice.push(format!("{id}: completed with {first} and with {lease}"))
            }
            None => {
                self.completed.insert(id.to_string(), lease.to_string());
                self.completion_order.push(id.to_string());
            }
        }
    }

    /// The attempt a lease of `id` started.
    fn attempt(&self, id: &str, lease: &str) -> Option<u64> {
        self.leases.get(id)?.iter().find(|(l, _)| l == lease).map(|(_, a)| *a)
    }

    /// Merges one cycle's ledger (double completions across cycles are caught here).
    fn absorb(&mut self, cycle: Ledger) {
        self.enqueued.extend(cycle.enqueued);
        for (id, leases) in cycle.leases {
            self.leases.entry(id).or_default().extend(leases);
        }
        for id in cycle.completion_order {
            let lease = &cycle.completed[&id];
            self.completion(&id, lease);
        }
        self.completed_twice.extend(cycle.completed_twice);
        self.unexpected.extend(cycle.unexpected);
    }
}

fn crash_job(rng: &mut StdRng, producer: usize) -> Value {
    json!({
        "queue": CRASH_QUEUE,
        "payload": {"producer": producer, "n": rng.random::<u32>()},
        "max_attempts": 3,
        "lease_ms": 1500,
        "backoff": {"base_ms": 50, "factor": 1.0, "max_ms": 50, "jitter": 0.0},
    })
}

/// Enqueues single jobs and batches of 2–5 until `stop`; records each acknowledged id.
async fn producer(
    http: reqwest::Client,
    base: String,
    p: usize,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    while !stop.load(Ordering::Relaxed) {
        let body = if rng.random_bool(0.3) {
            let n = rng.random_range(2..=5);
            json!({"jobs": (0..n).map(|_| crash_job(&mut rng, p)).collect::<Vec<_>>()})
        } else {
            crash_job(&mut rng, p)
        };
        match send(http.post(format!("{base}/v1/jobs")).json(&body)).await {
            Ok(a) if a.status == 201 => {
                let ids: Vec<String> = match a.body.get("ids") {
                    Some(ids) => {
                        ids.as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect()
                    }
                    None => vec![a.body["id"].as_str().unwrap().to_string()],
                };
                ledger.lock().unwrap().enqueued.extend(ids);
            }
            Ok(a) => ledger.lock().unwrap().unexpected.push(format!("enqueue: {} {}", a.status, a.body)),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await, // being killed
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(2..10))).await;
    }
}

/// Files a report's answer: 200 is a promise (`on_ok`), 409 `stale_lease` is expected now and
/// then (a lease can expire), anything else is unexpected; transport errors come from the kill.
fn report_answer(
    ledger: &Mutex<Ledger>,
    what: &str,
    r: Result<Answer, reqwest::Error>,
    on_ok: impl FnOnce(&mut Ledger),
) {
    let mut l = ledger.lock().unwrap();
    match r {
        Ok(a) if a.status == 200 => on_ok(&mut l),
        Ok(a) if a.status == 409 && a.code() == "stale_lease" => {}
        Ok(a) => l.unexpected.push(format!("{what}: {} {}", a.status, a.body)),
        Err(_) => {}
    }
}

/// Claims and, per job: completes it (alone or in a batch), fails it (with or without retry)
/// or abandons it (its lease expires), until `stop`.
async fn worker(
    http: reqwest::Client,
    base: String,
    w: usize,
    ledger: Arc<Mutex<Ledger>>,
    stop: Arc<AtomicBool>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let name = format!("crash-worker-{w}");
    while !stop.load(Ordering::Relaxed) {
        let claim = json!({"worker": name, "max": rng.random_range(1..=4), "wait_ms": 100});
        let a = match send(http.post(format!("{base}/v1/queues/{CRASH_QUEUE}/claim")).json(&claim)).await {
            Ok(a) if a.status == 200 => a,
            Ok(a) => {
                ledger.lock().unwrap().unexpected.push(format!("claim: {} {}", a.status, a.body));
                continue;
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let mut jobs = Vec::new();
        for j in a.body["jobs"].as_array().unwrap() {
            let (id, lease) =
                (j["id"].as_str().unwrap().to_string(), j["lease"].as_str().unwrap().to_string());
            ledger.lock().unwrap().claimed(&id, &lease, j["attempt"].as_u64().unwrap());
            jobs.push((id, lease));
        }
        let mut batch = Vec::new();
        for (id, lease) in jobs {
            let url = |verb: &str| format!("{base}/v1/jobs/{id}/{verb}");
            match rng.random_range(0..100) {
                0..50 => {
                    let r = send(
                        http.post(url("complete")).json(&json!({"lease": lease, "result": {"by": name}})),
                    )
                    .await;
                    report_answer(&ledger, "complete", r, |l| l.completion(&id, &lease));
                }
                50..70 => batch.push((id, lease)),
                70..95 => {
                    let retry = rng.random_bool(0.8);
                    let body = json!({"lease": lease, "error": "injected failure", "retry": retry});
                    let r = send(http.post(url("fail")).json(&body)).await;
                    report_answer(&ledger, "fail", r, |_| {});
                }
                _ => {} // abandoned: the reaper hands it out again once the lease expires
            }
        }
        if !batch.is_empty() {
            let items: Vec<Value> =
                batch.iter().map(|(id, lease)| json!({"id": id, "lease": lease})).collect();
            let r = send(http.post(format!("{base}/v1/jobs/complete")).json(&json!({"items": items}))).await;
            if let Ok(a) = &r
                && a.status == 200
            {
                let mut l = ledger.lock().unwrap();
                for (res, (id, lease)) in a.body["results"].as_array().unwrap().iter().zip(&batch) {
                    assert_eq!(res["id"].as_str(), Some(id.as_str()), "batch results come in input order");
                    if res["ok"] == json!(true) {
                        l.completion(id, lease);
                    } else if res["error"]["code"] != "stale_lease" {
                        l.unexpected.push(format!("batch complete item: {res}"));
                    }
                }
            } else {
                report_answer(&ledger, "batch complete", r, |_| {});
            }
        }
    }
}

/// Every job of the crash queue: id → (state, attempt), read page by page.
async fn all_jobs(http: &reqwest::Client, server: &Server) -> HashMap<String, (String, u64)> {
    let mut jobs = HashMap::new();
    let mut cursor = String::new();
    loop {
        let query = [("queue", CRASH_QUEUE), ("limit", "1000"), ("cursor", cursor.as_str())];
        let a = send(http.get(server.at("/v1/jobs")).query(&query)).await.expect("list jobs");
        assert_eq!(a.status, 200, "list jobs: {}", a.body);
        for j in a.body["jobs"].as_array().unwrap() {
            let state = j["state"].as_str().unwrap().to_string();
            jobs.insert(j["id"].as_str().unwrap().to_string(), (state, j["attempt"].as_u64().unwrap()));
        }
        match a.body["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => return jobs,
        }
    }
}

/// `job.completed` events seen so far, per job, and where to continue reading.
#[derive(Default)]
struct CompletedEvents {
    cursor: u64,
    per_job: HashMap<String, u32>,
}

impl CompletedEvents {
    /// Reads the events recorded since the last call; returns how many there were.
    async fn catch_up(&mut self, http: &reqwest::Client, server: &Server) -> usize {
        let mut n = 0;
        loop {
            let url = server.at(&format!("/v1/events?since={}&type=job.completed&limit=1000", self.cursor));
            let a = send(http.get(url)).await.expect("read events");
            assert_eq!(a.status, 200, "read events: {}", a.body);
            let events = a.body["events"].as_array().unwrap();
            for e in events {
                *self.per_job.entry(e["job_id"].as_str().unwrap().to_string()).or_default() += 1;
            }
            n += events.len();
            self.cursor = a.body["next_cursor"].as_u64().unwrap();
            if events.is_empty() {
                return n;
            }
        }
    }
}

/// Checks every promise after a restart. `new_jobs` and `new_completions` index the promises
/// made since the previous check: those jobs are also fetched one by one, and those
/// completions are reported again (same lease: 200; any other lease: `stale_lease`).
async fn check_promises(
    http: &reqwest::Client,
    server: &Server,
    ledger: &Ledger,
    events: &mut CompletedEvents,
    when: &str,
    (new_jobs, new_completions): (usize, usize),
) {
    assert_none(&format!("{when}: answers outside the documented outcomes"), &ledger.unexpected);
    assert_none(&format!("{when}: completions acknowledged for two leases"), &ledger.completed_twice);
    let jobs = all_jobs(http, server).await;
    let lost: Vec<String> = ledger
        .enqueued
        .iter()
        .filter(|id| !jobs.contains_key(*id))
        .map(|id| format!("job {id} lost"))
        .collect();
    assert_none(&format!("{when}: acknowledged enqueues"), &lost);
    let fetched = failures(ledger.enqueued[new_jobs..].to_vec(), 8, |id| async move {
        let a =
            send(http.get(server.at(&format!("/v1/jobs/{id}")))).await.map_err(|e| format!("{id}: {e}"))?;
        if a.status == 200 && a.body["id"] == json!(id) {
            Ok(())
        } else {
            Err(format!("GET job {id}: {} {}", a.status, a.body))
        }
    })
    .await;
    assert_none(&format!("{when}: GET of acknowledged jobs"), &fetched);

    let mut wrong = Vec::new();
    for (id, lease) in &ledger.completed {
        let attempt = ledger.attempt(id, lease).expect("a completed lease was claimed");
        match jobs.get(id) {
            Some((state, a)) if state == "completed" && *a == attempt => {}
            other => {
                wrong.push(format!("{id}: completed with the lease of attempt {attempt}, now {other:?}"))
            }
        }
    }
    assert_none(&format!("{when}: acknowledged completions"), &wrong);

    // Exactly one `job.completed` event per completed job, none for the others.
    events.catch_up(http, server).await;
    let mut counted = Vec::new();
    for (id, (state, _)) in &jobs {
        let n = events.per_job.get(id).copied().unwrap_or(0);
        if n != u32::from(state == "completed") {
            counted.push(format!("{id} is {state} with {n} job.completed events"));
        }
    }
    counted.extend(
        events
            .per_job
            .keys()
            .filter(|id| !jobs.contains_key(*id))
            .map(|id| format!("event for unknown job {id}")),
    );
    assert_none(&format!("{when}: completions recorded once"), &counted);

    let reports = failures(ledger.completion_order[new_completions..].to_vec(), 8, |id| async move {
        let lease = &ledger.completed[&id];
        let url = |verb: &str| server.at(&format!("/v1/jobs/{id}/{verb}"));
        let a = post_json(http, url("complete"), json!({"lease": lease})).await?;
        if a.status != 200 {
            return Err(format!("{id}: repeating the acknowledged completion: {} {}", a.status, a.body));
        }
        let a = post_json(http, url("fail"), json!({"lease": lease, "error": "late"})).await?;
        if (a.status, a.code()) != (409, "stale_lease") {
            return Err(format!("{id}: failing a completed job: {} {}", a.status, a.body));
        }
        for (other, _) in ledger.leases[&id].iter().filter(|(l, _)| l != lease) {
            let a = post_json(http, url("complete"), json!({"lease": other})).await?;
            if (a.status, a.code()) != (409, "stale_lease") {
                return Err(format!(
                    "{id}: completing again with older lease {other}: {} {}",
                    a.status, a.body
                ));
            }
        }
        Ok(())
    })
    .await;
    assert_none(&format!("{when}: reports after completion"), &reports);
}

/// Per-state counts of the crash queue from `/v1/queues`.
async fn queue_counts(http: &reqwest::Client, server: &Server) -> BTreeMap<String, u64> {
    let a = send(http.get(server.at("/v1/queues"))).await.expect("queues");
    assert_eq!(a.status, 200, "queues: {}", a.body);
    let q = a.body["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["queue"] == CRASH_QUEUE)
        .expect("the crash queue");
    q["counts"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect()
}

/// Claims and completes until no job of the crash queue is left unfinished.
async fn drain(http: &reqwest::Client, server: &Server, ledger: &mut Ledger) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let claim = json!({"worker": "drainer", "max": 100, "wait_ms": 200});
        let a = send(http.post(server.at(&format!("/v1/queues/{CRASH_QUEUE}/claim"))).json(&claim))
            .await
            .unwrap();
        assert_eq!(a.status, 200, "drain claim: {}", a.body);
        let jobs = a.body["jobs"].as_array().unwrap().clone();
        for j in &jobs {
            let (id, lease) = (j["id"].as_str().unwrap(), j["lease"].as_str().unwrap());
            ledger.claimed(id, lease, j["attempt"].as_u64().unwrap());
            let a =
                send(http.post(server.at(&format!("/v1/jobs/{id}/complete"))).json(&json!({"lease": lease})))
                    .await
                    .unwrap();
            assert_eq!(a.status, 200, "drain complete {id}: {}", a.body);
            ledger.completion(id, lease);
        }
        if jobs.is_empty() {
            let c = queue_counts(http, server).await;
            if ["ready", "scheduled", "running", "waiting"]
                .iter()
                .all(|s| c.get(*s).copied().unwrap_or(0) == 0)
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the crash queue did not drain: {:?}",
            queue_counts(http, server).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_mixed_load_loses_nothing() {
    bounded(Duration::from_secs(180), async {
        let t0 = Instant::now();
        let mut rng = StdRng::seed_from_u64(seed("sigkill_under_mixed_load_loses_nothing"));
        let http = client();
        let mut ledger = Ledger::default();
        let mut events = CompletedEvents::default();
        let mut checked = (0, 0);
        let mut dir = tempfile::tempdir().unwrap();
        for cycle in 0..CYCLES {
            let mut server = start(dir, None, &[]).await;
            check_promises(&http, &server, &ledger, &mut events, &format!("after kill {cycle}"), checked).await;
            checked = (ledger.enqueued.len(), ledger.completion_order.len());

            let this = Arc::new(Mutex::new(Ledger::default()));
            let stop = Arc::new(AtomicBool::new(false));
            let mut load = Vec::new();
            for i in 0..3 {
                let (url, seed) = (server.url.clone(), rng.random());
                load.push(tokio::spawn(producer(http.clone(), url, i, this.clone(), stop.clone(), seed)));
                let (url, seed) = (server.url.clone(), rng.random());
                load.push(tokio::spawn(worker(http.clone(), url, i, this.clone(), stop.clone(), seed)));
            }
            let load_ms = rng.random_range(200..=1500);
            tokio::time::sleep(Duration::from_millis(load_ms)).await;
            server.kill();
            stop.store(true, Ordering::Relaxed);
            for t in load {
                t.await.unwrap();
            }
            let this = std::mem::take(&mut *this.lock().unwrap());
            assert!(!this.enqueued.is_empty(), "cycle {cycle}: no enqueue acknowledged in {load_ms} ms");
            ledger.absorb(this);
            dir = server.take_dir();
        }

        // After the last kill: check, finish every job, stop cleanly, and compare.
        let server = start(dir, None, &[]).await;
        check_promises(&http, &server, &ledger, &mut events, &format!("after kill {CYCLES}"), checked).await;
        checked = (ledger.enqueued.len(), ledger.completion_order.len());
        drain(&http, &server, &mut ledger).await;
        let (jobs, counts) = (all_jobs(&http, &server).await, queue_counts(&http, &server).await);
        assert_no_panic(&server);
        let server = start(stop_cleanly(server).await, None, &[]).await;
        let (jobs_after, counts_after) = (all_jobs(&http, &server).await, queue_counts(&http, &server).await);
        assert_eq!(counts, counts_after, "per-state counts before SIGTERM and after the restart");
        let changed: Vec<String> = jobs
            .iter()
            .filter(|(id, v)| jobs_after.get(*id) != Some(v))
            .map(|(id, v)| format!("{id}: {v:?} before, {:?} after", jobs_after.get(id)))
            .collect();
        assert_none("jobs changed across a clean restart", &changed);
        assert_eq!(jobs.len(), jobs_after.len(), "jobs appeared across a clean restart");
        check_promises(&http, &server, &ledger, &mut events, "after the clean restart", (0, checked.1)).await;
        assert_no_panic(&server);
        eprintln!(
            "sigkill: {CYCLES} kills in {:?}: {} acknowledged enqueues, {} acknowledged completions, {} leases; final {counts:?}",
            t0.elapsed(),
            ledger.enqueued.len(),
            ledger.completed.len(),
            ledger.leases.values().map(Vec::len).sum::<usize>(),
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 2 and 3. The circuit breaker: a full disk (SQLite) and a database outage (PostgreSQL)
// ---------------------------------------------------------------------------------------------

/// Answers of a load that runs into a storage failure.
#[derive(Default)]
struct Outcomes {
    /// Acknowledged (201) job ids.
    acked: Vec<String>,
    /// Acknowledged completions.
    completed: Vec<String>,
    /// 503 refusals with `Retry-After`, by error code.
    refused: BTreeMap<String, usize>,
    /// Anything else: the test fails on these.
    bad: Vec<String>,
}

impl Outcomes {
    /// Files a refusal: only 503 with `Retry-After` and code `unavailable` or `circuit_open` is
    /// allowed (`also` lets a caller accept one more documented answer, e.g. `stale_lease`).
    fn refusal(&mut self, what: &str, a: &Answer, also: Option<(u16, &str)>) {
        let code = a.code();
        if a.status == 503 && a.retry_after.is_some() && matches!(code, "unavailable" | "circuit_open") {
            *self.refused.entry(code.to_string()).or_default() += 1;
        } else if also != Some((a.status, code)) {
            self.bad.push(format!("{what}: {} retry-after {:?} {}", a.status, a.retry_after, a.body));
        }
    }

    /// Files an enqueue answer; true if it was acknowledged.
    fn enqueue(&mut self, r: Result<Answer, reqwest::Error>) -> bool {
        match r {
            Ok(a) if a.status == 201 => {
                self.acked.push(a.body["id"].as_str().expect("201 with an id").to_string());
                true
            }
            Ok(a) => {
                self.refusal("enqueue", &a, None);
                false
            }
            Err(e) => {
                self.bad.push(format!("enqueue: transport error {e}"));
                false
            }
        }
    }
}

fn payload_job(queue: &str, payload_bytes: usize) -> Value {
    json!({"queue": queue, "payload": {"blob": "x".repeat(payload_bytes)}})
}

/// Enqueues `payload_bytes` jobs every few ms until `stop`.
async fn enqueue_loop(
    http: reqwest::Client,
    base: String,
    payload_bytes: usize,
    out: Arc<Mutex<Outcomes>>,
    stop: Arc<AtomicBool>,
) {
    let body = payload_job("faults", payload_bytes);
    while !stop.load(Ordering::Relaxed) {
        let r = send(http.post(format!("{base}/v1/jobs")).json(&body)).await;
        out.lock().unwrap().enqueue(r);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Claims and completes jobs until `stop`, filing every answer.
async fn work_loop(http: reqwest::Client, base: String, out: Arc<Mutex<Outcomes>>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let claim = json!({"worker": "fault-worker", "max": 5});
        let a = match send(http.post(format!("{base}/v1/queues/faults/claim")).json(&claim)).await {
            Ok(a) if a.status == 200 => a,
            Ok(a) => {
                out.lock().unwrap().refusal("claim", &a, None);
                continue;
            }
            Err(e) => {
                out.lock().unwrap().bad.push(format!("claim: transport error {e}"));
                continue;
            }
        };
        for j in a.body["jobs"].as_array().unwrap() {
            let (id, lease) = (j["id"].as_str().unwrap(), j["lease"].as_str().unwrap());
            let r =
                send(http.post(format!("{base}/v1/jobs/{id}/complete")).json(&json!({"lease": lease}))).await;
            let mut o = out.lock().unwrap();
            match r {
                Ok(a) if a.status == 200 => o.completed.push(id.to_string()),
                // A lease can expire while the store is unavailable.
                Ok(a) => o.refusal("complete", &a, Some((409, "stale_lease"))),
                Err(e) => o.bad.push(format!("complete: transport error {e}")),
            }
        }
    }
}

/// What a watcher of `/metrics` (every 10 ms) and `/readyz` (every 50 ms) saw.
#[derive(Default, Debug)]
struct BreakerSeen {
    /// `/metrics` had `ferry_circuit_state{state="open"} 1`.
    metric_open: usize,
    /// `/readyz` answered 503 with `"circuit":"open"`.
    readyz_open: usize,
    /// `/readyz` answers as "status circuit" → count.
    readyz: BTreeMap<String, usize>,
    /// Anything wrong with the probes themselves.
    bad: Vec<String>,
}

async fn watch_breaker(
    http: reqwest::Client,
    base: String,
    seen: Arc<Mutex<BreakerSeen>>,
    stop: Arc<AtomicBool>,
) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        match http.get(format!("{base}/metrics")).send().await {
            Ok(r) => {
                let text = r.text().await.unwrap_or_default();
                if text.contains("ferry_circuit_state{state=\"open\"} 1") {
                    seen.lock().unwrap().metric_open += 1;
                }
            }
            Err(e) => seen.lock().unwrap().bad.push(format!("/metrics: {e}")),
        }
        if i.is_multiple_of(5) {
            match send(http.get(format!("{base}/readyz"))).await {
                Ok(a) => {
                    let circuit = a.body["circuit"].as_str().unwrap_or("?").to_string();
                    let mut s = seen.lock().unwrap();
                    if a.status == 503 && circuit == "open" {
                        s.readyz_open += 1;
                    }
                    if !matches!(a.status, 200 | 503) {
                        s.bad.push(format!("/readyz: {} {}", a.status, a.body));
                    }
                    *s.readyz.entry(format!("{} {circuit}", a.status)).or_default() += 1;
                }
                Err(e) => seen.lock().unwrap().bad.push(format!("/readyz: {e}")),
            }
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Background load plus the breaker watcher, stopped together.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    out: Arc<Mutex<Outcomes>>,
    seen: Arc<Mutex<BreakerSeen>>,
}

impl Load {
    fn start(
        http: &reqwest::Client,
        server: &Server,
        producers: usize,
        payload_bytes: usize,
        worker: bool,
    ) -> Load {
        let (stop, out, seen) = (Arc::new(AtomicBool::new(false)), Arc::default(), Arc::default());
        let mut tasks = Vec::new();
        for _ in 0..producers {
            tasks.push(tokio::spawn(enqueue_loop(
                http.clone(),
                server.url.clone(),
                payload_bytes,
                Arc::clone(&out),
                stop.clone(),
            )));
        }
        if worker {
            tasks.push(tokio::spawn(work_loop(
                http.clone(),
                server.url.clone(),
                Arc::clone(&out),
                stop.clone(),
            )));
        }
        tasks.push(tokio::spawn(watch_breaker(
            http.clone(),
            server.url.clone(),
            Arc::clone(&seen),
            stop.clone(),
        )));
        Load { stop, tasks, out, seen }
    }

    /// Asserts that nothing was refused and the breaker was never seen open.
    #[track_caller]
    fn assert_closed_so_far(&self, when: &str) {
        let clean = self.out.lock().unwrap().refused.is_empty() && {
            let s = self.seen.lock().unwrap();
            s.metric_open == 0 && s.readyz_open == 0
        };
        assert!(clean, "{when}: refusals or an open breaker already: {}", self.describe());
    }

    fn acked(&self) -> usize {
        self.out.lock().unwrap().acked.len()
    }

    fn refused(&self, code: &str) -> usize {
        self.out.lock().unwrap().refused.get(code).copied().unwrap_or(0)
    }

    /// A one-line account for assertion messages.
    fn describe(&self) -> String {
        let (o, s) = (self.out.lock().unwrap(), self.seen.lock().unwrap());
        format!(
            "acked {}, refused {:?}, bad {}, metric open {}x, readyz {:?}",
            o.acked.len(),
            o.refused,
            o.bad.len(),
            s.metric_open,
            s.readyz
        )
    }

    async fn finish(self) -> (Outcomes, BreakerSeen) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let out = std::mem::take(&mut *self.out.lock().unwrap());
        let seen = std::mem::take(&mut *self.seen.lock().unwrap());
        (out, seen)
    }
}

/// Waits until the breaker has been seen open three ways: a `circuit_open` refusal, `/readyz`
/// 503 with `"circuit":"open"`, and the open state in `/metrics`.
async fn see_breaker_open(load: &Load, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let seen = {
            let s = load.seen.lock().unwrap();
            load.refused("circuit_open") > 0 && s.readyz_open > 0 && s.metric_open > 0
        };
        if seen {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the breaker was not seen open within {limit:?}: {}",
            load.describe()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `/readyz` is 200 with a closed circuit.
async fn ready_and_closed(http: &reqwest::Client, server: &Server) -> bool {
    send(http.get(server.at("/readyz"))).await.is_ok_and(|a| a.status == 200 && a.body["circuit"] == "closed")
}

/// Every acknowledged job exists and every acknowledged completion is `completed`.
async fn check_acknowledged(http: &reqwest::Client, server: &Server, out: &Outcomes, when: &str) {
    let completed: std::collections::HashSet<&String> = out.completed.iter().collect();
    let lost = failures(out.acked.clone(), 8, |id| {
        let must_be_completed = completed.contains(&id);
        async move {
            let a = send(http.get(server.at(&format!("/v1/jobs/{id}"))))
                .await
                .map_err(|e| format!("{id}: {e}"))?;
            if a.status != 200 {
                return Err(format!("acknowledged job {id}: {} {}", a.status, a.body));
            }
            if must_be_completed && a.body["state"] != "completed" {
                return Err(format!("acknowledged completion of {id} lost: {}", a.body["state"]));
            }
            Ok(())
        }
    })
    .await;
    assert_none(&format!("{when}: acknowledged writes"), &lost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_disk_full_opens_the_breaker_and_recovers() {
    bounded(Duration::from_secs(120), async {
        let fs = match Tmpfs::mount(8 << 20) {
            Ok(fs) => fs,
            Err(why) => {
                eprintln!("SKIPPED sqlite_disk_full_opens_the_breaker_and_recovers: {why}");
                return;
            }
        };
        // Declared after `fs`, so the server is gone before the tmpfs is unmounted.
        let server = start(tempfile::tempdir_in(fs.path()).unwrap(), Some(BREAKER_TOML), &[]).await;
        let http = client();
        let mut before = Outcomes::default();
        for _ in 0..5 {
            let r = send(http.post(server.at("/v1/jobs")).json(&payload_job("faults", 100))).await;
            assert!(before.enqueue(r), "an enqueue failed before the disk was full: {:?}", before.bad);
        }

        assert!(ready_and_closed(&http, &server).await, "/readyz before the disk is full");
        let filler = fs.fill();
        eprintln!("disk full: {} bytes free", fs.free());
        let load = Load::start(&http, &server, 2, 100 << 10, false);
        see_breaker_open(&load, Duration::from_secs(30)).await;
        let (mut out, seen) = load.finish().await;
        eprintln!(
            "disk full: refused {:?}, acked {} after filling, readyz {:?}",
            out.refused,
            out.acked.len(),
            seen.readyz
        );
        assert!(
            out.refused.get("unavailable").is_some_and(|n| *n > 0),
            "no `unavailable` before the circuit opened"
        );

        // Room again: the same process recovers.
        std::fs::remove_file(&filler).unwrap();
        let room = Instant::now();
        let body = payload_job("faults", 100 << 10);
        loop {
            let r = send(http.post(server.at("/v1/jobs")).json(&body)).await;
            if out.enqueue(r) {
                break;
            }
            assert!(
                room.elapsed() < Duration::from_secs(10),
                "no enqueue succeeded within 10 s of the disk having room"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eventually(
            Duration::from_secs(10),
            "/readyz is 200 with a closed circuit once the disk has room",
            || ready_and_closed(&http, &server),
        )
        .await;
        for _ in 0..5 {
            let r = send(http.post(server.at("/v1/jobs")).json(&body)).await;
            assert!(out.enqueue(r), "an enqueue failed after recovery: {:?}", out.bad.last());
        }
        eprintln!("disk full: recovered {:?} after the filler was deleted", room.elapsed());
        // The advisor names the full disk from the failed writes of the window, and its remedy
        // is the volume, not a migration (the writer was idle throughout).
        let advice: Value = http.get(server.at("/v1/advice")).send().await.unwrap().json().await.unwrap();
        eprintln!("disk full: advice {advice}");
        assert_eq!(advice["verdict"], "ACT", "{advice}");
        let cause = advice["cause"].as_str().unwrap();
        assert!(cause.contains("writes fail because the disk holding the database is full"), "{advice}");
        assert!(advice["remedy"].as_str().unwrap().starts_with("free or grow the volume"), "{advice}");
        assert!(!advice["action"].as_str().unwrap().contains("PostgreSQL"), "{advice}");
        let metrics = http.get(server.at("/metrics")).send().await.unwrap().text().await.unwrap();
        let full = metrics
            .lines()
            .find_map(|l| l.strip_prefix("ferry_store_write_faults_total{fault=\"disk_full\"} "))
            .and_then(|v| v.parse::<f64>().ok());
        assert!(full.is_some_and(|n| n > 0.0), "no disk_full write faults counted");
        assert_none("answers other than 201 or 503 unavailable/circuit_open with Retry-After", &out.bad);
        assert_none("breaker probes", &seen.bad);
        out.acked.extend(before.acked);
        check_acknowledged(&http, &server, &out, "disk full, before restart").await;
        assert_no_panic(&server);

        let server = start(stop_cleanly(server).await, None, &[]).await;
        assert!(ready_and_closed(&http, &server).await, "/readyz after the restart");
        check_acknowledged(&http, &server, &out, "disk full, after restart").await;
        assert_no_panic(&server);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_opens_and_closes_the_breaker() {
    bounded(Duration::from_secs(150), async {
        let pg = match tokio::task::spawn_blocking(PrivatePg::start).await.unwrap() {
            Ok(pg) => Arc::new(pg),
            Err(why) if std::env::var("FERRY_REQUIRE_PG").as_deref() == Ok("1") => {
                panic!("PostgreSQL is required (FERRY_REQUIRE_PG=1) but {why}")
            }
            Err(why) => {
                eprintln!("SKIPPED postgres_outage_opens_and_closes_the_breaker: {why}; set FERRY_REQUIRE_PG=1 to fail instead");
                return;
            }
        };
        let server = start(tempfile::tempdir().unwrap(), Some(BREAKER_TOML), &["--database", &pg.url()]).await;
        let http = client();
        let load = Load::start(&http, &server, 3, 64, true);
        eventually(Duration::from_secs(15), "jobs are acknowledged before the outage", || {
            let n = load.acked();
            async move { n >= 50 }
        })
        .await;

        load.assert_closed_so_far("before the outage");
        let (p, outage) = (pg.clone(), Instant::now());
        tokio::task::spawn_blocking(move || p.down("fast")).await.unwrap().expect("stop PostgreSQL");
        see_breaker_open(&load, Duration::from_secs(30)).await;
        assert!(load.refused("unavailable") > 0, "no `unavailable` before the circuit opened: {}", load.describe());
        eprintln!("outage: breaker seen open {:?} after `pg_ctl stop` began: {}", outage.elapsed(), load.describe());

        let p = pg.clone();
        tokio::task::spawn_blocking(move || p.up()).await.unwrap().expect("start PostgreSQL again");
        let back = Instant::now();
        let acked_when_back = load.acked();
        eventually(Duration::from_secs(30), "/readyz is 200 with a closed circuit after PostgreSQL is back", || {
            ready_and_closed(&http, &server)
        })
        .await;
        eventually(Duration::from_secs(30), "enqueues succeed again after PostgreSQL is back", || {
            let n = load.acked();
            async move { n >= acked_when_back + 20 }
        })
        .await;
        eprintln!("outage: recovered {:?} after PostgreSQL restarted", back.elapsed());
        let (out, seen) = load.finish().await;
        assert_none("answers other than 2xx or 503 unavailable/circuit_open with Retry-After", &out.bad);
        assert_none("breaker probes", &seen.bad);
        check_acknowledged(&http, &server, &out, "after the outage").await;
        assert_no_panic(&server);
        eprintln!(
            "outage: {} enqueues and {} completions acknowledged, refusals {:?}, readyz {:?}",
            out.acked.len(),
            out.completed.len(),
            out.refused,
            seen.readyz
        );
        drop(server);
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// 4. Fuzzed requests
// ---------------------------------------------------------------------------------------------

/// Requests per operation (path and method) of the OpenAPI document.
const FUZZ_PER_OP: usize = 300;
/// Time budget of the fuzz pass; operations are interleaved, so each gets its share.
const FUZZ_BUDGET: Duration = Duration::from_secs(25);
/// Longest request target sent (all ASCII, as generated).
const MAX_TARGET: usize = 60_000;
/// Longest acceptable wait for one answer.
const ANSWER_LIMIT: Duration = Duration::from_secs(5);

/// An answer read off the socket by [`raw_request`].
struct RawAnswer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawAnswer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn io_error(what: String) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, what)
}

/// Sends one HTTP/1.1 request byte for byte (a URL library would normalize `..` and
/// re-encode the path) and reads the answer by its framing; `head_only` stops after the
/// headers (an event stream never ends).
async fn raw_request(
    addr: &str,
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
    head_only: bool,
) -> std::io::Result<RawAnswer> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let mut msg = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\n");
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        msg += &format!("content-length: {}\r\n", body.len());
    }
    for (k, v) in headers {
        msg += &format!("{k}: {v}\r\n");
    }
    msg += "\r\n";
    let mut bytes = msg.into_bytes();
    bytes.extend_from_slice(body);
    // The server may answer before reading a large body; its answer still counts.
    let write_error = stream.write_all(&bytes).await.err();
    let mut r = tokio::io::BufReader::new(stream);
    let mut line = Vec::new();
    if r.read_until(b'\n', &mut line).await? == 0 {
        return Err(write_error.unwrap_or_else(|| io_error("closed without an answer".into())));
    }
    let status_line = String::from_utf8_lossy(&line).to_string();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io_error(format!("bad status line {status_line:?}")))?;
    let mut answer = RawAnswer { status, headers: Vec::new(), body: Vec::new() };
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await? == 0 {
            return Err(io_error("closed inside the headers".into()));
        }
        let l = String::from_utf8_lossy(&line).trim_end().to_string();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| io_error(format!("bad header line {l:?}")))?;
        answer.headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    if head_only || matches!(status, 100..=199 | 204 | 304) {
        return Ok(answer);
    }
    let chunked =
        answer.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = answer.header("content-length").and_then(|v| v.parse::<usize>().ok());
    if chunked {
        loop {
            line.clear();
            r.read_until(b'\n', &mut line).await?;
            let text = String::from_utf8_lossy(&line);
            let size = text.trim().split(';').next().unwrap_or("");
            let size =
                usize::from_str_radix(size, 16).map_err(|_| io_error(format!("bad chunk size {text:?}")))?;
            if size == 0 {
                break;
            }
            let start = answer.body.len();
            answer.body.resize(start + size, 0);
            r.read_exact(&mut answer.body[start..]).await?;
            line.clear();
            r.read_until(b'\n', &mut line).await?;
        }
    } else if let Some(n) = length {
        answer.body.resize(n, 0);
        r.read_exact(&mut answer.body).await?;
    } else {
        r.read_to_end(&mut answer.body).await?;
    }
    Ok(answer)
}

/// How an operation's answers are judged.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Judge {
    /// JSON, errors in the error shape.
    Json,
    /// Only the status (SSE and WebSocket: the headers are read, the stream is dropped).
    Stream,
    /// Only the status (`/metrics` is Prometheus text, `/v1/backup` a SQLite file).
    Text,
}

/// One path and method of the OpenAPI document.
struct Op {
    method: String,
    path: String,
    query: Vec<String>,
    body: Option<Value>,
    judge: Judge,
}

fn operations(doc: &Value) -> Vec<Op> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths in the OpenAPI document") {
        for (method, op) in item.as_object().unwrap() {
            if !matches!(method.as_str(), "get" | "post" | "put" | "patch" | "delete") {
                continue;
            }
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            let query = params
                .iter()
                .filter(|p| p["in"] == "query")
                .filter_map(|p| p["name"].as_str().map(str::to_string))
                .collect();
            let judge = match path.as_str() {
                "/v1/events/stream" | "/v1/ws" => Judge::Stream,
                // Prometheus text, and the database file a backup streams.
                "/metrics" | "/v1/backup" => Judge::Text,
                _ => Judge::Json,
            };
            let body = op["requestBody"]["content"]["application/json"].get("schema").cloned();
            ops.push(Op { method: method.to_uppercase(), path: path.clone(), query, body, judge });
        }
    }
    ops
}

/// Values that reach deep into the handlers: existing jobs, leases, queues, schedules.
#[derive(Default)]
struct Known {
    job_ids: Vec<String>,
    leases: Vec<String>,
    names: Vec<String>,
    properties: Vec<String>,
}

/// Marks a number to be written as a literal no JSON number type holds.
const HUGE: &str = "@@huge-number@@";
const HUGE_LITERALS: &[&str] = &[
    "123456789012345678901234567890123456789",
    "-99999999999999999999999999",
    "1e999999",
    "-1e-999999",
    "1.7976931348623157e309",
    "18446744073709551616",
    "-9223372036854775809",
];
/// Characters that break naive parsers and encoders.
const ODD_CHARS: &str = "\u{0}\u{1}\u{7f}\u{85}éß中🦀\u{202e}\u{200b}\u{feff}\u{fffd}\u{ffff}\u{10ffff}\u{301}\"\\/%?#&=+ \n\r\t<>{}';*:,.";

/// A request generator over one seeded RNG.
struct Fuzz<'a> {
    rng: StdRng,
    doc: &'a Value,
    known: &'a Known,
}

/// Follows `$ref`s into `components/schemas`.
fn resolve<'a>(doc: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..8 {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => schema = doc.pointer(r.trim_start_matches('#')).unwrap_or(&Value::Null),
            None => break,
        }
    }
    schema
}

/// Percent-encodes everything but the unreserved characters.
fn encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

impl Fuzz<'_> {
    fn one_in(&mut self, n: u32) -> bool {
        self.rng.random_range(0..n) == 0
    }

    fn pick<'s>(&mut self, list: &[&'s str]) -> &'s str {
        list.choose(&mut self.rng).copied().unwrap_or("")
    }

    /// One of `|`-separated alternatives.
    fn one_of(&mut self, alternatives: &str) -> String {
        let list: Vec<&str> = alternatives.split('|').collect();
        self.pick(&list).to_string()
    }

    fn word(&mut self) -> String {
        let n = self.rng.random_range(1..16);
        (0..n).map(|_| self.rng.random_range(b'a'..=b'z') as char).collect()
    }

    /// A string meant to upset a parser: empty, huge, unicode, controls, separators.
    fn nasty_string(&mut self) -> String {
        match self.rng.random_range(0..9) {
            0 => String::new(),
            1 => "a".repeat(self.rng.random_range(1_000..20_000)),
            2 => "🦀é".repeat(self.rng.random_range(100..3_000)),
            3 => self.one_of("..|.|../../etc/passwd|%2e%2e|%00|*|null|true|-1|0|1e999|NaN|' OR '1'='1|\"; DROP TABLE jobs; --|${jndi:ldap://x}|$(id)|{id}|\\|/|//"),
            4 => {
                let n = self.rng.random_range(1..40);
                let odd: Vec<char> = ODD_CHARS.chars().collect();
                (0..n).map(|_| *odd.choose(&mut self.rng).unwrap()).collect()
            }
            5 => {
                let n = self.rng.random_range(1..20);
                (0..n)
                    .map(|_| char::from_u32(self.rng.random_range(0..0x11_0000)).unwrap_or('\u{fffd}'))
                    .collect()
            }
            _ => self.word(),
        }
    }

    /// A string for a field, by its name: usually one that field could take, sometimes not.
    fn field_string(&mut self, field: &str) -> String {
        if self.one_in(3) {
            return self.nasty_string();
        }
        let known = self.known;
        let from = |rng: &mut StdRng, v: &[String]| v.choose(rng).cloned().unwrap_or_default();
        match field {
            "id" | "ids" | "job_id" | "depends_on" => {
                if self.one_in(3) {
                    uuid::Uuid::now_v7().to_string()
                } else {
                    from(&mut self.rng, &known.job_ids)
                }
            }
            "lease" => from(&mut self.rng, &known.leases),
            "queue" | "queues" | "name" | "worker" | "tag" | "tags" => from(&mut self.rng, &known.names),
            "cron" => self.one_of("* * * * *|*/5 * * * * *|@daily|@yearly|61 * * * *|0 0 30 2 *|0 0 29 2 1|* * *|@never"),
            "timezone" => self.one_of("UTC|Europe/Paris|America/St_Johns|Mars/Olympus|+05:00|"),
            "run_at" => self.one_of("2030-01-01T00:00:00Z|1970-01-01T00:00:00Z|9999-12-31T23:59:59Z|0000-01-01T00:00:00Z|2024-02-30T00:00:00Z|yesterday"),
            "misfire" => self.one_of("skip|run_once|catch_up|sometimes"),
            "health_url" => self.one_of("http://127.0.0.1:9/health|https://127.0.0.1/|http://|ftp://127.0.0.1/|not a url"),
            "scopes" => self.one_of("admin|produce|work|read|root"),
            "state" => self.one_of("ready|running|completed|dead|cancelled|scheduled|waiting|zombie"),
            "type" => self.one_of("job.completed|job.enqueued,job.dead|queue.paused|job.exploded"),
            "jitter" => self.one_of("full|equal|none|half"),
            "op" => self.one_of("subscribe|unsubscribe|ping|explode"),
            "rooms" => self.one_of("*|queue:fuzz|job:nope|tag:|bogus"),
            _ => self.word(),
        }
    }

    /// A number for a field: edge values, or a marker for a literal too large for any type.
    fn number(&mut self, field: &str) -> Value {
        if field == "wait_ms" {
            // Valid long-polls stay short, so every answer is due within ANSWER_LIMIT.
            return [json!(0), json!(1), json!(250), json!(-1), json!(30_001), json!(i64::MAX), json!(0.5)]
                .choose(&mut self.rng)
                .cloned()
                .unwrap();
        }
        match self.rng.random_range(0..12) {
            0 => json!(0),
            1 => json!(-1),
            2 => json!(self.rng.random_range(1..100)),
            3 => json!(self.rng.random::<i64>()),
            4 => json!(i64::MAX),
            5 => json!(i64::MIN),
            6 => json!(u64::MAX),
            7 => json!(0.5),
            8 => json!(1e300),
            9 => json!(9_007_199_254_740_993u64),
            10 => json!(HUGE),
            _ => json!(self.rng.random_range(1..100_000)),
        }
    }

    /// Any JSON value of random shape, up to `depth` levels.
    fn random_json(&mut self, depth: u32) -> Value {
        if depth == 0 || self.one_in(3) {
            return match self.rng.random_range(0..6) {
                0 => Value::Null,
                1 => json!(self.rng.random_bool(0.5)),
                2 => self.number(""),
                3 => json!(self.nasty_string()),
                _ => json!(self.word()),
            };
        }
        let n = self.rng.random_range(0..6);
        if self.rng.random_bool(0.5) {
            Value::Array((0..n).map(|_| self.random_json(depth - 1)).collect())
        } else {
            let known = self.known;
            (0..n)
                .map(|_| {
                    let key = if self.rng.random_bool(0.6) {
                        known.properties.choose(&mut self.rng).cloned().unwrap_or_default()
                    } else {
                        self.nasty_string()
                    };
                    (key, self.random_json(depth - 1))
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        }
    }

    /// A value shaped by `schema`, mutated now and then.
    fn shaped(&mut self, schema: &Value, field: &str, depth: u32) -> Value {
        let schema = resolve(self.doc, schema);
        if depth == 0 || self.one_in(12) {
            return self.random_json(2);
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(alts) = schema.get(key).and_then(Value::as_array) {
                let alt = alts.choose(&mut self.rng).cloned().unwrap_or(Value::Null);
                return self.shaped(&alt, field, depth - 1);
            }
        }
        if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
            let mut merged = serde_json::Map::new();
            for part in all {
                match self.shaped(part, field, depth - 1) {
                    Value::Object(m) => merged.extend(m),
                    other => return other,
                }
            }
            return Value::Object(merged);
        }
        let types: Vec<&str> = match &schema["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ if schema.get("properties").is_some() => vec!["object"],
            _ => vec![],
        };
        let ty = if types.len() > 1 && !self.one_in(5) {
            types.iter().copied().find(|t| *t != "null").unwrap_or("null")
        } else {
            types.choose(&mut self.rng).copied().unwrap_or("any")
        };
        match ty {
            "object" => {
                let required: Vec<&str> = schema["required"]
                    .as_array()
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                let mut m = serde_json::Map::new();
                if let Some(props) = schema["properties"].as_object() {
                    for (k, s) in props {
                        let keep = if required.contains(&k.as_str()) {
                            !self.one_in(10)
                        } else {
                            self.rng.random_bool(0.6)
                        };
                        if keep {
                            m.insert(k.clone(), self.shaped(s, k, depth - 1));
                        }
                    }
                } else if let Some(extra) = schema.get("additionalProperties").filter(|v| v.is_object()) {
                    for _ in 0..self.rng.random_range(0..4) {
                        let k = self.word();
                        m.insert(k, self.shaped(extra, field, depth - 1));
                    }
                }
                if self.one_in(10) {
                    m.insert(self.nasty_string(), self.random_json(2));
                }
                Value::Object(m)
            }
            "array" => {
                let items = schema.get("items").cloned().unwrap_or(Value::Null);
                // Long arrays only near the top, so they do not multiply.
                let long = depth >= 5 && self.one_in(20);
                let n = if long { self.rng.random_range(100..2_000) } else { self.rng.random_range(0..4) };
                Value::Array((0..n).map(|_| self.shaped(&items, field, depth - 1)).collect())
            }
            "string" => json!(self.field_string(field)),
            "integer" | "number" => self.number(field),
            "boolean" => json!(self.rng.random_bool(0.5)),
            "null" => Value::Null,
            _ if field == "payload" || field == "result" => self.random_json(4),
            _ => self.random_json(3),
        }
    }

    /// Serializes `v`, writing the huge-number markers as literals.
    fn text(&mut self, v: &Value) -> Vec<u8> {
        let mut s = v.to_string();
        while let Some(i) = s.find(&format!("\"{HUGE}\"")) {
            let lit = self.pick(HUGE_LITERALS);
            s.replace_range(i..i + HUGE.len() + 2, lit);
        }
        s.into_bytes()
    }

    /// A request body and the content type to send it with.
    fn body(&mut self, schema: Option<&Value>) -> (Vec<u8>, Option<String>) {
        let shaped = |f: &mut Self| match schema {
            Some(s) => f.shaped(s, "", 6),
            None => f.random_json(4),
        };
        let body = match self.rng.random_range(0..40) {
            0..3 => Vec::new(),
            3..20 => {
                let v = shaped(self);
                self.text(&v)
            }
            20..25 => {
                let v = self.random_json(5);
                self.text(&v)
            }
            25..28 => {
                // Deep nesting, at the top or inside a payload.
                let depth = *[100usize, 129, 1_000, 100_000].choose(&mut self.rng).unwrap();
                let (open, close) = if self.rng.random_bool(0.5) { ("[", "]") } else { ("{\"a\":", "}") };
                let nest = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                let body = if self.rng.random_bool(0.5) {
                    nest
                } else {
                    format!("{{\"queue\":\"fuzz\",\"payload\":{nest},\"result\":{nest}}}")
                };
                body.into_bytes()
            }
            28..31 => {
                let n = self.rng.random_range(1..2_000);
                (0..n).map(|_| self.rng.random::<u8>()).collect()
            }
            31..35 => {
                let v = shaped(self);
                let mut t = self.text(&v);
                t.truncate(self.rng.random_range(0..t.len().max(1)));
                t
            }
            35..39 => self
                .one_of("[]|\"x\"|42|null|{}|true|{\"\":{}}|\u{feff}{}| |{}{}|{\"a\":1,\"a\":2}")
                .into_bytes(),
            _ => {
                // Over the payload limit (1 MiB), now and then.
                if self.one_in(5) {
                    let big = "p".repeat(1_100_000);
                    format!("{{\"queue\":\"fuzz\",\"payload\":\"{big}\",\"result\":\"x\"}}").into_bytes()
                } else {
                    b"{\"queue\":\"fuzz\",\"payload\":{}}".to_vec()
                }
            }
        };
        let ct = match self.rng.random_range(0..20) {
            0 => None,
            1 => Some("text/plain".to_string()),
            2 => Some("application/x-www-form-urlencoded".to_string()),
            3 => Some("multipart/form-data; boundary=xyz".to_string()),
            4 => Some("application/json; charset=utf-16".to_string()),
            5 => Some(self.one_of("application/jsonx|*/*|;;;|application/|application/json, text/plain")),
            _ => Some("application/json".to_string()),
        };
        (body, ct)
    }

    /// A path parameter's value, ready for the request target.
    fn path_value(&mut self, name: &str) -> String {
        match self.rng.random_range(0..10) {
            0..3 => encode(self.field_string(name).as_bytes()),
            3 => String::new(),
            4 => self.one_of("..|.|%2e%2e|..%2f..%2f|%2F|%00|%|%zz|%FF%FE|a/b|%E2%80%AE"),
            5 => {
                let n = self.rng.random_range(1..64);
                encode(&(0..n).map(|_| self.rng.random::<u8>()).collect::<Vec<_>>())
            }
            6 => "x".repeat(self.rng.random_range(1_000..12_000)),
            _ => encode(self.nasty_string().chars().take(2_000).collect::<String>().as_bytes()),
        }
    }

    /// A query string (with its `?`), or nothing.
    fn query(&mut self, params: &[String]) -> String {
        if self.one_in(2) {
            return String::new();
        }
        let n = self.rng.random_range(1..5);
        let pairs: Vec<String> = (0..n)
            .map(|_| {
                let key = match params.choose(&mut self.rng) {
                    Some(k) if self.rng.random_bool(0.75) => k.clone(),
                    _ => encode(self.nasty_string().as_bytes()),
                };
                let value = match self.rng.random_range(0..8) {
                    0 => self.one_of("%|%G1|%FF%FE||a=b=c|%00|+|;"),
                    1 => "9".repeat(self.rng.random_range(20..5_000)),
                    2 => encode(self.nasty_string().as_bytes()),
                    _ if key == "wait_ms" => self.number("wait_ms").to_string(),
                    3 | 4 => self.number(&key).to_string().replace(&format!("\"{HUGE}\""), "1e999"),
                    _ => encode(self.field_string(&key).as_bytes()),
                };
                format!("{key}={value}")
            })
            .collect();
        format!("?{}", pairs.join(if self.one_in(10) { ";" } else { "&" }))
    }

    /// Headers beside the content type: bogus tokens, client names, resume cursors.
    fn headers(&mut self) -> Vec<(String, String)> {
        let mut h = Vec::new();
        let printable = |f: &mut Self, n: usize| -> String {
            (0..n).map(|_| f.rng.random_range(0x21u8..0x7f) as char).collect()
        };
        if self.one_in(8) {
            let t = printable(self, 40);
            h.push(("authorization".to_string(), format!("Bearer {t}")));
        }
        if self.one_in(8) {
            let n = self.rng.random_range(0..300);
            h.push(("x-ferry-client".to_string(), printable(self, n)));
        }
        if self.one_in(8) {
            let v = self.one_of("0|-1|abc|18446744073709551616|5");
            h.push(("last-event-id".to_string(), v));
        }
        h
    }
}

/// What one generated request looks like, for a finding's message.
fn describe(method: &str, target: &str, ct: &Option<String>, body: &[u8]) -> String {
    let t: String = target.chars().take(200).collect();
    let b: String = String::from_utf8_lossy(body).chars().take(200).collect();
    format!("{method} {t} [content-type {ct:?}] body ({} bytes) {b:?}", body.len())
}

/// Judges one answer; `None` when it is acceptable.
/// Judges one answer: `None` when acceptable, else the kind of problem and what was answered.
fn judge(op: &Op, answer: &RawAnswer) -> Option<(String, String)> {
    let status = answer.status;
    let body: String = String::from_utf8_lossy(&answer.body).chars().take(300).collect();
    let problem = |kind: String| Some((kind, format!("{status} {body:?}")));
    if status >= 500 && status != 503 {
        return problem(format!("answered {status}"));
    }
    if status == 503 && op.path != "/readyz" && answer.header("retry-after").is_none() {
        return problem("503 without Retry-After".into());
    }
    if op.judge != Judge::Json || status == 204 {
        return None;
    }
    let Ok(v) = serde_json::from_slice::<Value>(&answer.body) else {
        return problem(format!("{status} with a body that is not JSON"));
    };
    let message = v["error"]["message"].as_str().is_some_and(|m| !m.is_empty());
    if status >= 400 && !(v["error"]["code"].is_string() && message) {
        return problem(format!("{status} without the error shape"));
    }
    None
}

/// Tallies of the fuzz pass.
#[derive(Default)]
struct FuzzTally {
    sent: BTreeMap<String, usize>,
    statuses: BTreeMap<u16, usize>,
    /// Connections reset while a large body was sent (tolerated).
    resets: usize,
    /// Problems by kind: how many, and the first request that showed it.
    findings: BTreeMap<String, (usize, String)>,
}

impl FuzzTally {
    fn finding(&mut self, kind: String, example: impl FnOnce() -> String) {
        self.findings.entry(kind).or_insert_with(|| (0, example())).0 += 1;
    }
}

/// Creates a few jobs (some claimed), a schedule and a host, so generated requests can hit
/// things that exist.
async fn seed_state(http: &reqwest::Client, server: &Server) -> Known {
    let mut known =
        Known { names: vec!["fuzz".into(), "fuzz-schedule".into(), "fuzz-host".into()], ..Known::default() };
    for i in 0..6 {
        let a = send(http.post(server.at("/v1/jobs")).json(&json!({"queue": "fuzz", "payload": {"i": i}})))
            .await
            .unwrap();
        assert_eq!(a.status, 201, "seed enqueue: {}", a.body);
        known.job_ids.push(a.body["id"].as_str().unwrap().to_string());
    }
    let claim = json!({"worker": "fuzz-worker", "max": 3, "lease_ms": 600_000});
    let a = send(http.post(server.at("/v1/queues/fuzz/claim")).json(&claim)).await.unwrap();
    assert_eq!(a.status, 200, "seed claim: {}", a.body);
    known.leases =
        a.body["jobs"].as_array().unwrap().iter().map(|j| j["lease"].as_str().unwrap().to_string()).collect();
    known.leases.push("not-a-lease".into());
    let schedule = json!({"name": "fuzz-schedule", "cron": "0 0 * * *", "job": {"queue": "fuzz"}});
    let a = send(http.post(server.at("/v1/schedules")).json(&schedule)).await.unwrap();
    assert_eq!(a.status, 201, "seed schedule: {}", a.body);
    let host = json!({"name": "fuzz-host", "health_url": "http://127.0.0.1:9/health"});
    let a = send(http.post(server.at("/v1/hosts")).json(&host)).await.unwrap();
    assert_eq!(a.status, 201, "seed host: {}", a.body);
    known
}

/// Every property name in the document's schemas (keys for random objects).
fn property_names(doc: &Value) -> Vec<String> {
    let mut names = std::collections::BTreeSet::new();
    for schema in doc["components"]["schemas"].as_object().into_iter().flat_map(|m| m.values()) {
        if let Some(props) = schema["properties"].as_object() {
            names.extend(props.keys().cloned());
        }
    }
    names.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_requests_never_5xx_or_hang() {
    bounded(Duration::from_secs(90), async {
        let (t0, seed) = (Instant::now(), seed("fuzzed_requests_never_5xx_or_hang"));
        let dir = tempfile::tempdir().unwrap();
        // Auth stays off even if a generated request mints a token; hosts are probed rarely.
        let toml = "auth = false\n[health]\nhost_probe_interval_ms = 60000\n";
        let server = start(dir, Some(toml), &[]).await;
        let http = client();
        let a = send(http.get(server.at("/v1/openapi.json"))).await.unwrap();
        assert_eq!(a.status, 200, "openapi.json");
        let doc = Arc::new(a.body);
        let ops = Arc::new(operations(&doc));
        assert!(ops.len() >= 20, "only {} operations in the OpenAPI document", ops.len());
        let mut known = seed_state(&http, &server).await;
        known.properties = property_names(&doc);
        let known = Arc::new(known);

        let addr = server.url.trim_start_matches("http://").to_string();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tally = Arc::new(Mutex::new(FuzzTally::default()));
        let deadline = Instant::now() + FUZZ_BUDGET;
        let mut senders = Vec::new();
        for _ in 0..6 {
            let (ops, doc, known, next, tally, addr) =
                (ops.clone(), doc.clone(), known.clone(), next.clone(), tally.clone(), addr.clone());
            senders.push(tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= ops.len() * FUZZ_PER_OP || Instant::now() >= deadline {
                        return;
                    }
                    // Round robin over operations, so a cut-off leaves each its share.
                    let op = &ops[n % ops.len()];
                    let mut f = Fuzz {
                        rng: StdRng::seed_from_u64(seed ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
                        doc: &doc,
                        known: &known,
                    };
                    let mut path = String::new();
                    for (i, part) in op.path.split('{').enumerate() {
                        match part.split_once('}') {
                            Some((name, rest)) if i > 0 => path += &(f.path_value(name) + rest),
                            _ => path += part,
                        }
                    }
                    let mut target = path + &f.query(&op.query);
                    // Beyond 64 KiB hyper refuses the request line itself (414, empty body),
                    // before any of ferry's code runs.
                    target.truncate(MAX_TARGET);
                    let method = if f.one_in(20) {
                        f.pick(&["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "FOO"])
                            .to_string()
                    } else {
                        op.method.clone()
                    };
                    let (body, ct) = if method == "GET" && !f.one_in(10) {
                        (Vec::new(), None)
                    } else {
                        f.body(op.body.as_ref())
                    };
                    let mut headers = f.headers();
                    if let Some(ct) = &ct {
                        headers.push(("content-type".into(), ct.clone()));
                    }
                    let head_only = op.judge == Judge::Stream;
                    let what = describe(&method, &target, &ct, &body);
                    let sent = tokio::time::timeout(
                        ANSWER_LIMIT,
                        raw_request(&addr, &method, &target, &headers, &body, head_only),
                    )
                    .await;
                    let mut t = tally.lock().unwrap();
                    *t.sent.entry(format!("{} {}", op.method, op.path)).or_default() += 1;
                    match sent {
                        Err(_) => t.finding(format!("no answer within {ANSWER_LIMIT:?}"), || what),
                        // A server that answers without reading a large body closes the
                        // connection with the body unread, which resets it (ordinary HTTP).
                        Ok(Err(e))
                            if body.len() > 16 << 10
                                && matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) =>
                        {
                            t.resets += 1
                        }
                        Ok(Err(e)) => {
                            t.finding(format!("transport error {:?}", e.kind()), || format!("{what}: {e}"))
                        }
                        Ok(Ok(answer)) => {
                            *t.statuses.entry(answer.status).or_default() += 1;
                            if let Some((kind, answered)) = judge(op, &answer) {
                                t.finding(kind, || format!("{what} → {answered}"));
                            }
                        }
                    }
                }
            }));
        }
        for s in senders {
            s.await.unwrap();
        }
        let tally = std::mem::take(&mut *tally.lock().unwrap());
        let total: usize = tally.sent.values().sum();
        eprintln!(
            "fuzz: {total} requests over {} operations in {:?}, statuses {:?}, {} resets with a large body",
            ops.len(),
            t0.elapsed(),
            tally.statuses,
            tally.resets
        );
        assert!(
            tally.findings.is_empty(),
            "fuzzed requests found problems (kind: count, first request → answer):\n{}",
            tally
                .findings
                .iter()
                .map(|(k, (n, ex))| format!("- {k}: {n}, e.g. {ex}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let thin: Vec<String> = ops
            .iter()
            .map(|op| format!("{} {}", op.method, op.path))
            .filter(|k| tally.sent.get(k).copied().unwrap_or(0) < 50)
            .collect();
        assert!(thin.is_empty(), "operations with fewer than 50 requests in {FUZZ_BUDGET:?}: {thin:?}");
        assert!(
            tally.statuses.keys().any(|s| (200..300).contains(s)),
            "no request succeeded: the generator is too blunt"
        );
        let a = send(http.get(server.at("/healthz"))).await.expect("/healthz after the fuzz pass");
        assert_eq!(a.status, 200, "/healthz after the fuzz pass: {}", a.body);
        assert_no_panic(&server);
    })
    .await;
}
