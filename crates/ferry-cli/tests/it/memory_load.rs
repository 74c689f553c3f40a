//! Episodic memory under load and under crashes: the real `ferry serve` over real HTTP, on
//! SQLite and on PostgreSQL (a database of its own).
//!
//! - `liveness_*`: 100 writers (single episodes and batches of 5), 1,000 concurrent searchers
//!   (flat, hierarchical, filtered) and an admin loop (reconcile, repair, rebuild, stats) for
//!   `FERRY_MEMORY_LIVENESS_SECS` (default 60, the issue's) while retention retires episodes
//!   older than half the run. Every request ends within its 5 s deadline, and with a 2xx, a 503
//!   (`server_saturated`, `circuit_open`, `unavailable`) or, for a rebuild while one runs, 409
//!   `invalid_state`. The writers, searchers and admin loop each got answers; afterwards
//!   reconcile finds no mismatch, the acknowledged episodes younger than the retention horizon
//!   read back, and the server logged no panic. If the run is not over 60 s after its end (120 s
//!   at the default), the test fails with a dump: the requests still in flight (what, how long)
//!   and the server's threads (`/proc`: name, state, wait channel; `gdb` backtraces when gdb
//!   is installed).
//! - `sigkill_mid_batch_*`: `FERRY_MEMORY_KILLS` (default 20) SIGKILL/restart cycles on the same
//!   data (directory or database) while 8 clients post batches of 10 episodes, each batch
//!   carrying a token of its own in every description. After each restart every acknowledged
//!   batch is searchable (all ten episodes, by its token) and readable by id; an
//!   unacknowledged batch is all there or not at all (a batch is one transaction); reconcile
//!   is clean.
//! - `disk_full_sqlite`: SQLite on a small tmpfs a filler file makes full: adds answer 201 or
//!   503 while it is full and store again once it has room; after a restart every acknowledged
//!   episode reads back and is found by its token; reconcile is clean.
//! - `postgres_restart_mid_commit`: a private PostgreSQL cluster stopped `immediate` three
//!   times while 8 clients post batches: 201 or 503 only; afterwards the batches are whole and
//!   reconcile is clean.
//! - `read_only_file_sqlite`: the database and its WAL made immutable under a running server:
//!   adds 201 or 503; the same process stores again once they are writable; after a restart
//!   every acknowledged episode reads back and is found; reconcile is clean.

use crate::common::Server;
use crate::common::pg::TestDb;
use crate::common::private_pg::PrivatePg;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn start(db: Option<&TestDb>, dir: tempfile::TempDir, toml: &str) -> Server {
    start_on(db.map(|d| d.url.clone()), dir, toml).await
}

/// `ferry serve` on the database at `url` (SQLite in `dir` when `None`).
async fn start_on(url: Option<String>, dir: tempfile::TempDir, toml: &str) -> Server {
    std::fs::write(dir.path().join("ferry.toml"), toml).unwrap();
    let envs: &[(&str, &str)] = &[("RUST_LOG", "info,ferry_server::serve=debug")];
    tokio::task::spawn_blocking(move || match &url {
        Some(u) => Server::start_with_env(&["--database", u], dir, envs),
        None => Server::start_with_env(&[], dir, envs),
    })
    .await
    .unwrap()
}

fn assert_no_panic(server: &Server) {
    let log = server.log.lock().unwrap();
    let panics: Vec<&String> = log.iter().filter(|l| l.contains("panicked")).collect();
    assert!(panics.is_empty(), "the server panicked: {panics:?}");
}

/// An answer: status and JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: Value,
    took: Duration,
}

/// An error with its causes (reqwest's own text hides whether it was the deadline).
fn chain(what: &str, e: &dyn std::error::Error) -> String {
    let mut out = format!("{what}: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(&format!(": {c}"));
        cause = c.source();
    }
    out
}

/// Requests in flight, for the dump a stalled run prints.
struct Flight {
    born: Instant,
    next: AtomicU64,
    open: Mutex<HashMap<u64, (String, Instant)>>,
}

impl Flight {
    /// Sends `req` (described by `what`) with a 5 s deadline, registered while in flight.
    async fn send(&self, what: String, req: reqwest::RequestBuilder) -> Result<Answer, String> {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        self.open.lock().unwrap().insert(key, (what.clone(), Instant::now()));
        let t0 = Instant::now();
        let sent = format!("{what} (sent at {:.1?})", self.born.elapsed());
        let what = &sent;
        let out = async {
            let r = req.timeout(Duration::from_secs(5)).send().await.map_err(|e| chain(what, &e))?;
            let status = r.status().as_u16();
            let text = r.text().await.map_err(|e| chain(&format!("{what}: body"), &e))?;
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
            Ok(Answer { status, body, took: t0.elapsed() })
        }
        .await;
        self.open.lock().unwrap().remove(&key);
        out
    }

    fn dump(&self) -> String {
        let open = self.open.lock().unwrap();
        let mut rows: Vec<(Duration, &String)> = open.values().map(|(w, t)| (t.elapsed(), w)).collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.0));
        let mut out = format!("{} requests in flight (longest first):\n", rows.len());
        for (age, what) in rows.iter().take(40) {
            out.push_str(&format!("  {age:>10.2?}  {what}\n"));
        }
        out
    }
}

/// The server's threads: name, state and wait channel from `/proc`, and `gdb` backtraces when
/// gdb is installed.
fn thread_dump(pid: u32) -> String {
    let mut out = String::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let p = t.path();
            let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default().trim().to_string();
            let stat = read("stat");
            let state =
                stat.rsplit(')').next().unwrap_or("").split_whitespace().next().unwrap_or("?").to_string();
            out.push_str(&format!(
                "  thread {} {:<16} state {state} wchan {}\n",
                read_name(&p),
                read("comm"),
                read("wchan")
            ));
        }
    }
    if let Ok(g) = std::process::Command::new("gdb")
        .args(["-batch", "-p", &pid.to_string(), "-ex", "thread apply all bt 12"])
        .output()
    {
        out.push_str(&String::from_utf8_lossy(&g.stdout));
    }
    out
}

fn read_name(p: &std::path::Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// A tally of one kind of request: answers by status or code, and what broke the rules.
#[derive(Default)]
struct Tally {
    by: Mutex<HashMap<String, u64>>,
    bad: Mutex<Vec<String>>,
    /// Milliseconds of the successful answers.
    took_ms: Mutex<Vec<f64>>,
}

impl Tally {
    fn judge(&self, what: &str, r: &Result<Answer, String>, ok: &[u16], also: &[(u16, &str)]) -> bool {
        let key = match r {
            Ok(a) if ok.contains(&a.status) => {
                self.took_ms.lock().unwrap().push(a.took.as_secs_f64() * 1000.0);
                a.status.to_string()
            }
            Ok(a) => {
                let code = a.body["error"]["code"].as_str().unwrap_or("").to_string();
                let allowed = (a.status == 503
                    && ["server_saturated", "circuit_open", "unavailable"].contains(&code.as_str()))
                    || also.iter().any(|(s, c)| *s == a.status && *c == code);
                if !allowed {
                    self.bad.lock().unwrap().push(format!("{what}: {} {}", a.status, a.body));
                }
                format!("{} {code}", a.status)
            }
            Err(e) => {
                self.bad.lock().unwrap().push(e.clone());
                "error".into()
            }
        };
        *self.by.lock().unwrap().entry(key).or_default() += 1;
        matches!(r, Ok(a) if ok.contains(&a.status))
    }

    fn ok(&self, status: u16) -> u64 {
        self.by.lock().unwrap().get(&status.to_string()).copied().unwrap_or(0)
    }

    fn report(&self, name: &str) -> String {
        let mut ms = self.took_ms.lock().unwrap().clone();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            ms.get(((ms.len() as f64 * q) as usize).min(ms.len().saturating_sub(1))).copied().unwrap_or(0.0)
        };
        format!(
            "{name}: {:?} (successes p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms)",
            self.by.lock().unwrap(),
            at(0.5),
            at(0.99),
            ms.last().copied().unwrap_or(0.0)
        )
    }
}

const WORDS: [&str; 12] = [
    "deploy", "scrape", "rollback", "invoice", "retry", "timeout", "cache", "login", "parse", "index",
    "merge", "alert",
];

fn pick(seed: u64, n: usize) -> usize {
    (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 33) as usize % n
}

fn load_episode(ns: &str, w: usize, i: u64) -> Value {
    let words: Vec<&str> = (0..6).map(|k| WORDS[pick(i * 7 + k + w as u64 * 131, WORDS.len())]).collect();
    let status = ["success", "partial", "failure"][(i % 3) as usize];
    json!({
        "namespace": ns,
        "agent": format!("agent{}", w % 10),
        "domain": format!("d{}", i % 4),
        "task_type": format!("t{}", i % 3),
        "description": format!("{} writer{w} n{i}", words.join(" ")),
        "outcome": {"status": status},
        "tags": [format!("tag{}", i % 5)],
        "importance": (i % 10) as f64 / 10.0,
    })
}

fn search_body(ns: &str, seed: u64) -> Value {
    let text = format!("{} {}", WORDS[pick(seed, WORDS.len())], WORDS[pick(seed + 1, WORDS.len())]);
    match seed % 4 {
        0 => json!({"namespace": ns, "text": text, "k": 10}),
        1 => {
            json!({"namespace": ns, "text": text, "k": 5, "context": {"domain": format!("d{}", seed % 4), "task_type": format!("t{}", seed % 3)}})
        }
        2 => {
            json!({"namespace": ns, "text": text, "filters": {"tags_any": [format!("tag{}", seed % 5)], "outcome": "success"}})
        }
        _ => json!({"namespace": ns, "text": text, "k": 20, "mode": "flat", "diversity": {"lambda": 0.5}}),
    }
}

/// A POST's JSON answer, whatever its status.
async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> Value {
    http.post(url).json(body).send().await.unwrap().json().await.unwrap()
}

/// A whole reconcile, following `next_cursor`: (episodes checked, [fts, tags, embeddings]).
async fn reconcile_all(http: &reqwest::Client, base: &str) -> (u64, [u64; 3]) {
    let (mut checked, mut m, mut body) = (0, [0u64; 3], json!({}));
    loop {
        let r = http.post(format!("{base}/v1/memory/reconcile")).json(&body).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await.unwrap();
        checked += v["checked"].as_u64().unwrap();
        for (i, k) in ["fts", "tags", "embeddings"].iter().enumerate() {
            m[i] += v["mismatches"][k].as_u64().unwrap();
        }
        match v["next_cursor"].as_str() {
            Some(c) => body = json!({"cursor": c}),
            None => return (checked, m),
        }
    }
}

/// A reconcile past its time budget answers with a cursor; following it checks every episode
/// once; a bad cursor is 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_resumes_from_its_cursor() {
    let toml = "[memory]\nreconcile_budget_ms = 0\n[maintenance]\nbatch = 3\n";
    let mut server = start(None, tempfile::tempdir().unwrap(), toml).await;
    let http = reqwest::Client::new();
    let eps: Vec<Value> = (0..10).map(|i| load_episode("resume", 0, i)).collect();
    let r = http
        .post(server.at("/v1/memory/episodes/batch"))
        .json(&json!({"episodes": eps}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let first = post_json(&http, &server.at("/v1/memory/reconcile"), &json!({})).await;
    assert_eq!(first["checked"], 3, "{first}");
    assert!(first["next_cursor"].is_string(), "{first}");
    assert_eq!(reconcile_all(&http, &server.url).await, (10, [0, 0, 0]));
    let bad =
        http.post(server.at("/v1/memory/reconcile")).json(&json!({"cursor": "x"})).send().await.unwrap();
    assert_eq!(bad.status().as_u16(), 422);
    server.stop();
}

const WRITERS: usize = 100;
const SEARCHERS: usize = 1_000;

async fn liveness(db: Option<&TestDb>) {
    let secs = env_u64("FERRY_MEMORY_LIVENESS_SECS", 60);
    let retention_ms = secs * 1000 / 2;
    let toml = format!("[memory]\nretention_ms = {retention_ms}\nretention_interval_ms = 1000\n");
    let mut server = start(db, tempfile::tempdir().unwrap(), &toml).await;
    let base = server.url.clone();
    let http = reqwest::Client::builder().pool_max_idle_per_host(2_000).build().unwrap();
    let flight = Arc::new(Flight { born: Instant::now(), next: AtomicU64::new(0), open: Mutex::default() });
    let stop = Arc::new(AtomicBool::new(false));
    let (writes, searches, admin) =
        (Arc::new(Tally::default()), Arc::new(Tally::default()), Arc::new(Tally::default()));
    let acked: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    // Four teams' namespaces: one namespace's counters are one row every write to it updates.
    let spaces = ["live0", "live1", "live2", "live3"];
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let (http, base, flight, stop, tally, acked) =
            (http.clone(), base.clone(), flight.clone(), stop.clone(), writes.clone(), acked.clone());
        tasks.spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (path, body) = if i.is_multiple_of(2) {
                    ("/v1/memory/episodes", load_episode(spaces[w % 4], w, i))
                } else {
                    let eps: Vec<Value> =
                        (0..5).map(|k| load_episode(spaces[w % 4], w, i * 10 + k)).collect();
                    ("/v1/memory/episodes/batch", json!({"episodes": eps}))
                };
                let r = flight
                    .send(format!("writer {w}: POST {path}"), http.post(format!("{base}{path}")).json(&body))
                    .await;
                if tally.judge(&format!("writer {w} POST {path}"), &r, &[200, 201], &[]) {
                    let b = &r.as_ref().unwrap().body;
                    let mut a = acked.lock().unwrap();
                    let ids: Vec<String> = match b["ids"].as_array() {
                        Some(ids) => ids.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
                        None => b["id"].as_str().map(String::from).into_iter().collect(),
                    };
                    a.extend(ids.into_iter().map(|id| (id, Instant::now())));
                } else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                i += 1;
            }
        });
    }
    for s in 0..SEARCHERS {
        let (http, base, flight, stop, tally) =
            (http.clone(), base.clone(), flight.clone(), stop.clone(), searches.clone());
        tasks.spawn(async move {
            let mut seed = s as u64 * 1_000_003;
            while !stop.load(Ordering::Relaxed) {
                let body = search_body(spaces[s % 4], seed);
                let r = flight
                    .send(
                        format!("searcher {s}: {body}"),
                        http.post(format!("{base}/v1/memory/search")).json(&body),
                    )
                    .await;
                if !tally.judge(&format!("searcher {s} {body}"), &r, &[200], &[]) {
                    // Refused: back off as a client honouring `Retry-After` (1 s) does, with
                    // jitter, not in a tight loop spending the machine's two cores on 503s.
                    tokio::time::sleep(Duration::from_millis(1_000 + seed % 500)).await;
                }
                seed += 1;
            }
        });
    }
    {
        let (http, base, flight, stop, tally) =
            (http.clone(), base.clone(), flight.clone(), stop.clone(), admin.clone());
        tasks.spawn(async move {
            let mut round = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (what, req, ok): (&str, reqwest::RequestBuilder, &[u16]) = match round % 4 {
                    0 => (
                        "reconcile",
                        http.post(format!("{base}/v1/memory/reconcile")).json(&json!({"repair": false})),
                        &[200],
                    ),
                    1 => (
                        "repair",
                        http.post(format!("{base}/v1/memory/reconcile")).json(&json!({"repair": true})),
                        &[200],
                    ),
                    2 => ("rebuild", http.post(format!("{base}/v1/memory/rebuild")).json(&json!({})), &[202]),
                    _ => (
                        "stats",
                        http.get(format!(
                            "{base}/v1/memory/stats?namespace={}",
                            spaces[(round / 4 % 4) as usize]
                        )),
                        &[200],
                    ),
                };
                let r = flight.send(format!("admin: {what}"), req).await;
                tally.judge(&format!("admin {what}"), &r, ok, &[(409, "invalid_state")]);
                tokio::time::sleep(Duration::from_millis(200)).await;
                round += 1;
            }
        });
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let stopped = Instant::now();
    let guard = Duration::from_secs(60);
    let drained = tokio::time::timeout(guard, async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    })
    .await;
    if drained.is_err() {
        panic!(
            "the load did not finish within {guard:?} of its end ({:?} after its start)\n{}\nserver threads:\n{}",
            started.elapsed(),
            flight.dump(),
            thread_dump(server.pid())
        );
    }
    eprintln!(
        "liveness over {secs} s: {}; {}; {}",
        writes.report("writes"),
        searches.report("searches"),
        admin.report("admin")
    );
    for l in
        server.log.lock().unwrap().iter().filter(|l| l.contains("ERROR") || l.contains("closing")).take(30)
    {
        eprintln!("server: {l}");
    }
    for (name, t) in [("writes", &writes), ("searches", &searches), ("admin", &admin)] {
        let bad = t.bad.lock().unwrap();
        assert!(
            bad.is_empty(),
            "{name}: {} answers broke the rules, first {:?}",
            bad.len(),
            &bad[..bad.len().min(10)]
        );
    }
    assert!(
        writes.ok(201) > 0 && searches.ok(200) > 0 && admin.ok(200) > 0,
        "some request of every kind succeeded"
    );

    // Afterwards: consistent, and nothing acknowledged lost (but what retention retired).
    let api = |path: &str| format!("{base}{path}");
    let (checked, mismatches) = reconcile_all(&http, &base).await;
    assert_eq!(mismatches, [0, 0, 0], "after the load ({checked} checked)");
    let horizon = stopped - Duration::from_millis(retention_ms) + Duration::from_secs(5);
    let young: Vec<String> =
        acked.lock().unwrap().iter().filter(|(_, at)| *at > horizon).map(|(id, _)| id.clone()).collect();
    assert!(!young.is_empty(), "episodes acknowledged in the run's second half");
    for id in young.iter().step_by((young.len() / 300).max(1)) {
        let r = http.get(api(&format!("/v1/memory/episodes/{id}"))).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "acknowledged episode {id}");
    }
    assert_no_panic(&server);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_sqlite() {
    liveness(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_postgres() {
    let Some(db) = TestDb::create("ferry_mem_live").await else { return };
    liveness(Some(&db)).await;
}

// ---------------------------------------------------------------------------------------------
// SIGKILLs mid-batch
// ---------------------------------------------------------------------------------------------

const KILL_CLIENTS: usize = 8;
const BATCH: usize = 10;

/// The token every description of client `c`'s batch `b` carries (one of ferry's tokens).
fn batch_token(c: usize, b: u64) -> String {
    format!("kb{c}x{b}")
}

fn kill_batch(c: usize, b: u64) -> Value {
    let eps: Vec<Value> = (0..BATCH)
        .map(|j| {
            json!({
                "namespace": "kills",
                "description": format!("{} step {j} of a batch", batch_token(c, b)),
                "idempotency_key": format!("{}-{j}", batch_token(c, b)),
                "tags": [format!("client{c}")],
            })
        })
        .collect();
    json!({"episodes": eps})
}

/// What the clients saw: acknowledged batches (with their ids) and batches sent without an
/// answer; `fresh` holds those of the cycle not yet checked.
#[derive(Default, Clone)]
struct KillBook {
    acked: HashMap<(usize, u64), Vec<String>>,
    unknown: Vec<(usize, u64)>,
    fresh: Vec<(usize, u64)>,
    /// 503 answers (each batch sent again).
    refused: u64,
}

/// Episodes whose description carries `token`, by search.
async fn found(http: &reqwest::Client, base: &str, token: &str) -> Vec<String> {
    let body = json!({"namespace": "kills", "text": token, "k": 20, "mode": "flat"});
    for _ in 0..100 {
        let r = http.post(format!("{base}/v1/memory/search")).json(&body).send().await.unwrap();
        if r.status().as_u16() == 503 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await.unwrap();
        let mut ids: Vec<String> =
            v["results"].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap().to_string()).collect();
        ids.sort();
        return ids;
    }
    panic!("search for {token}: 503 for 5 s");
}

/// The batches in `which` are searchable: acknowledged ones whole, the others whole or absent;
/// reconcile is clean.
async fn check_batches(
    http: &reqwest::Client,
    base: &str,
    book: &KillBook,
    which: &[(usize, u64)],
    when: &str,
) {
    for key in which {
        let got = found(http, base, &batch_token(key.0, key.1)).await;
        match book.acked.get(key) {
            Some(ids) => {
                let mut want = ids.clone();
                want.sort();
                assert_eq!(got, want, "{when}: acknowledged batch {key:?}");
            }
            None => assert!(
                got.is_empty() || got.len() == BATCH,
                "{when}: unacknowledged batch {key:?} is partly there ({} of {BATCH})",
                got.len()
            ),
        }
    }
    let r = http.post(format!("{base}/v1/memory/reconcile")).json(&json!({})).send().await.unwrap();
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["mismatches"], json!({"fts": 0, "tags": 0, "embeddings": 0}), "{when}: {v}");
}

/// Every episode of namespace `kills`, by listing: description token to ids.
async fn listed(http: &reqwest::Client, base: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/memory/episodes?namespace=kills&limit=500");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let v: Value = http.get(url).send().await.unwrap().json().await.unwrap();
        for e in v["episodes"].as_array().unwrap() {
            let token = e["description"].as_str().unwrap().split(' ').next().unwrap().to_string();
            out.entry(token).or_default().push(e["id"].as_str().unwrap().to_string());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
}

/// The batches a restart searches for: every unanswered one and up to 40 acknowledged (the
/// final listing checks them all).
fn sample(book: &Mutex<KillBook>) -> Vec<(usize, u64)> {
    let mut b = book.lock().unwrap();
    let fresh = std::mem::take(&mut b.fresh);
    let step = (fresh.len() / 40).max(1);
    let keep = |(i, k): &(usize, &(usize, u64))| i % step == 0 || !b.acked.contains_key(k);
    fresh.iter().enumerate().filter(keep).map(|(_, k)| *k).collect()
}

/// `KILL_CLIENTS` clients posting batches (client `c` from batch `next[c]`) until `stop`; each
/// task ends with the client's next batch number. A 503 is sent again; an unanswered batch is
/// booked as unknown and ends its client.
fn batch_writers(
    http: &reqwest::Client,
    base: &str,
    book: &Arc<Mutex<KillBook>>,
    stop: &Arc<AtomicBool>,
    next: &[u64; KILL_CLIENTS],
) -> tokio::task::JoinSet<(usize, u64)> {
    let mut tasks = tokio::task::JoinSet::new();
    for (c, from) in next.iter().copied().enumerate() {
        let (http, base, book, stop) = (http.clone(), base.to_string(), book.clone(), stop.clone());
        tasks.spawn(async move {
            let mut b = from;
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .post(format!("{base}/v1/memory/episodes/batch"))
                    .json(&kill_batch(c, b))
                    .send()
                    .await;
                let answer = match r {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        r.json::<Value>().await.ok().map(|v| (s, v))
                    }
                    Err(_) => None,
                };
                let pause_ms = {
                    let mut book = book.lock().unwrap();
                    match answer {
                        Some((201, v)) => {
                            let ids = v["ids"].as_array().unwrap().iter();
                            book.acked.insert((c, b), ids.map(|x| x.as_str().unwrap().to_string()).collect());
                            book.fresh.push((c, b));
                            5
                        }
                        Some((503, _)) => {
                            book.refused += 1;
                            20
                        }
                        Some((s, v)) => panic!("batch {c}/{b}: {s} {v}"),
                        None => {
                            book.unknown.push((c, b));
                            book.fresh.push((c, b));
                            return (c, b + 1);
                        }
                    }
                };
                // Paced, so a cycle stores hundreds of batches, not thousands; a 503 is
                // sent again.
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                if pause_ms == 20 {
                    continue;
                }
                b += 1;
            }
            (c, b)
        });
    }
    tasks
}

async fn sigkill_mid_batch(db: Option<&TestDb>) {
    let kills = env_u64("FERRY_MEMORY_KILLS", 20) as usize;
    let http = reqwest::Client::new();
    let book = Arc::new(Mutex::new(KillBook::default()));
    let mut dir = tempfile::tempdir().unwrap();
    let mut next = [0u64; KILL_CLIENTS];
    for cycle in 0..kills {
        let mut server = start(db, dir, "").await;
        let base = server.url.clone();
        let seen = sample(&book);
        let snapshot = book.lock().unwrap().clone();
        let what = format!("restart {cycle}");
        within(&server, &what, check_batches(&http, &base, &snapshot, &seen, &what)).await;
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = batch_writers(&http, &base, &book, &stop, &next);
        let pause = 200 + (cycle as u64 * 7919) % 600;
        tokio::time::sleep(Duration::from_millis(pause)).await;
        assert_no_panic(&server);
        server.kill();
        stop.store(true, Ordering::Relaxed);
        let joined = tokio::time::timeout(STEP_LIMIT, async {
            while let Some(r) = tasks.join_next().await {
                let (c, b) = r.unwrap();
                // The client goes on after its last batch, answered or not: keys never repeat.
                next[c] = b;
            }
        });
        joined.await.unwrap_or_else(|_| panic!("cycle {cycle}: the writers did not end after the kill"));
        dir = server.take_dir();
        let b = book.lock().unwrap();
        eprintln!("cycle {cycle}: {} batches acknowledged, {} unanswered", b.acked.len(), b.unknown.len());
    }
    let mut server = start(db, dir, "").await;
    let base = server.url.clone();
    let seen = sample(&book);
    let all = book.lock().unwrap().clone();
    eprintln!(
        "sigkill mid-batch: {kills} kills, {} batches acknowledged, {} unanswered",
        all.acked.len(),
        all.unknown.len()
    );
    assert!(!all.acked.is_empty(), "batches were acknowledged");
    within(&server, "last restart", check_batches(&http, &base, &all, &seen, "after the last restart")).await;
    within(&server, "listing", check_listed(&http, &base, &all, &format!("after {kills} kills"))).await;
    assert_no_panic(&server);
    server.stop();
}

/// How long one check of a kill cycle may take before the test dumps the server's threads.
const STEP_LIMIT: Duration = Duration::from_secs(60);

/// Runs `step`; past `STEP_LIMIT` fails with the server's threads and its last log lines, so
/// a stall names where it stalls.
async fn within(server: &Server, what: &str, step: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(STEP_LIMIT, step).await.is_err() {
        let log = server.log.lock().unwrap();
        let tail = log.iter().rev().take(40).rev().cloned().collect::<Vec<_>>().join("\n");
        panic!("{what}: no answer in {STEP_LIMIT:?}\n{}\nlast log lines:\n{tail}", thread_dump(server.pid()));
    }
}

/// Every batch ever acknowledged is there whole, by listing; the unanswered whole or absent.
async fn check_listed(http: &reqwest::Client, base: &str, all: &KillBook, when: &str) {
    let stored = listed(http, base).await;
    for (key, ids) in &all.acked {
        let mut got = stored.get(&batch_token(key.0, key.1)).cloned().unwrap_or_default();
        let mut want = ids.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{when}: acknowledged batch {key:?}");
    }
    for key in &all.unknown {
        let n = stored.get(&batch_token(key.0, key.1)).map_or(0, Vec::len);
        assert!(n == 0 || n == BATCH, "{when}: unanswered batch {key:?}: {n} of {BATCH}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_sqlite() {
    tokio::time::timeout(Duration::from_secs(300), sigkill_mid_batch(None)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_batch_postgres() {
    let Some(db) = TestDb::create("ferry_mem_kill").await else { return };
    tokio::time::timeout(Duration::from_secs(300), sigkill_mid_batch(Some(&db))).await.unwrap();
}

/// Waits (≤ 30 s) until at least `more` batches beyond `from` are acknowledged.
async fn acked_beyond(book: &Mutex<KillBook>, from: usize, more: usize, what: &str) -> usize {
    let t0 = Instant::now();
    loop {
        let n = book.lock().unwrap().acked.len();
        if n >= from + more {
            return n;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{what}: {} of {more} batches in 30 s", n - from);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL restarted mid-commit
// ---------------------------------------------------------------------------------------------

/// PostgreSQL stopped `immediate` (a database crash) while 8 clients post batches, three
/// times, and started again: every answer is a 201 or a 503 (a 503 is sent again, with the
/// same idempotency keys); once it is back, batches store again, every acknowledged batch is
/// whole (by search and by listing), an unanswered one whole or absent, and reconcile is
/// clean. The cluster is the test's own (`PrivatePg`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_mid_commit() {
    let Some(pg) = tokio::task::spawn_blocking(|| PrivatePg::start_or_skip("postgres_restart_mid_commit"))
        .await
        .unwrap()
    else {
        return;
    };
    let pg = Arc::new(pg);
    tokio::time::timeout(Duration::from_secs(240), async {
        let mut server = start_on(Some(pg.url()), tempfile::tempdir().unwrap(), "").await;
        let base = server.url.clone();
        let http = reqwest::Client::new();
        let book = Arc::new(Mutex::new(KillBook::default()));
        let mut next = [0u64; KILL_CLIENTS];
        for cycle in 0..3 {
            let stop = Arc::new(AtomicBool::new(false));
            let mut tasks = batch_writers(&http, &base, &book, &stop, &next);
            let before = book.lock().unwrap().acked.len();
            let n = acked_beyond(&book, before, 20, &format!("cycle {cycle}: before the stop")).await;
            let p = pg.clone();
            tokio::task::spawn_blocking(move || p.down("immediate")).await.unwrap().expect("stop PostgreSQL");
            tokio::time::sleep(Duration::from_millis(300)).await;
            let p = pg.clone();
            tokio::task::spawn_blocking(move || p.up()).await.unwrap().expect("start PostgreSQL");
            acked_beyond(&book, n, 20, &format!("cycle {cycle}: after the restart")).await;
            stop.store(true, Ordering::Relaxed);
            while let Some(r) = tasks.join_next().await {
                let (c, b) = r.unwrap();
                next[c] = b;
            }
            let seen = sample(&book);
            let snapshot = book.lock().unwrap().clone();
            check_batches(&http, &base, &snapshot, &seen, &format!("after restart {cycle}")).await;
        }
        let all = book.lock().unwrap().clone();
        eprintln!(
            "postgres restart mid-commit: {} batches acknowledged, {} refused (503), {} unanswered",
            all.acked.len(),
            all.refused,
            all.unknown.len()
        );
        assert!(all.refused > 0, "no 503 while PostgreSQL was down: the restarts missed the writers");
        check_listed(&http, &base, &all, "after three PostgreSQL restarts").await;
        assert_no_panic(&server);
        server.stop();
    })
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Disk full (SQLite)
// ---------------------------------------------------------------------------------------------

/// One episode carrying its own token; (status, id when stored).
async fn add_token(http: &reqwest::Client, base: &str, n: u64) -> (u16, Option<String>) {
    let body = json!({"namespace": "full", "description": format!("dfull{n} padding {}", "x".repeat(2_000))});
    match http.post(format!("{base}/v1/memory/episodes")).json(&body).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            if s != 201 {
                let code = v["error"]["code"].as_str().unwrap_or("");
                assert!(
                    s == 503 && ["unavailable", "circuit_open", "server_saturated"].contains(&code),
                    "episode {n} on a full disk: {s} {v}"
                );
            }
            (s, v["id"].as_str().map(String::from))
        }
        Err(e) => panic!("episode {n}: {e}"),
    }
}

/// Episodes carrying their own tokens (`dfull<n>`): those acknowledged, and the next number.
#[derive(Default)]
struct Tokens {
    acked: Vec<(u64, String)>,
    n: u64,
}

impl Tokens {
    /// Adds `count` episodes that must all be stored.
    async fn stored(&mut self, http: &reqwest::Client, base: &str, count: usize) {
        for _ in 0..count {
            let (s, id) = add_token(http, base, self.n).await;
            assert_eq!(s, 201);
            self.acked.push((self.n, id.unwrap()));
            self.n += 1;
        }
    }

    /// Adds until 20 are refused or 30 s pass (a stored one is acknowledged); the refusals.
    async fn until_refused(&mut self, http: &reqwest::Client, base: &str) -> u32 {
        let (t0, mut refused) = (Instant::now(), 0);
        while refused < 20 && t0.elapsed() < Duration::from_secs(30) {
            match add_token(http, base, self.n).await {
                (201, Some(id)) => self.acked.push((self.n, id)),
                _ => {
                    refused += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            self.n += 1;
        }
        refused
    }

    /// Adds until one is stored, within 15 s of `since` (what made room).
    async fn stored_again(&mut self, http: &reqwest::Client, base: &str, since: &str) {
        let t1 = Instant::now();
        loop {
            if let (201, Some(id)) = add_token(http, base, self.n).await {
                self.acked.push((self.n, id));
                return;
            }
            self.n += 1;
            assert!(t1.elapsed() < Duration::from_secs(15), "no add stored within 15 s of {since}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops `server` cleanly and starts it again on its data: every acknowledged episode reads
    /// back and every fifth is found by its token; reconcile is clean; no panic.
    async fn check_after_restart(&self, http: &reqwest::Client, mut server: Server) -> Server {
        assert_no_panic(&server);
        server.stop();
        let server = start(None, server.take_dir(), "").await;
        for (n, id) in &self.acked {
            let r = http.get(server.at(&format!("/v1/memory/episodes/{id}"))).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200, "acknowledged episode {n} after the restart");
        }
        for (n, id) in self.acked.iter().step_by(5) {
            let body = json!({"namespace": "full", "text": format!("dfull{n}"), "k": 5});
            let v = post_json(http, &server.at("/v1/memory/search"), &body).await;
            let ids: Vec<&str> =
                v["results"].as_array().unwrap().iter().filter_map(|r| r["id"].as_str()).collect();
            assert_eq!(ids, [id.as_str()], "episode {n} found by its token");
        }
        assert_eq!(reconcile_all(http, &server.url).await.1, [0, 0, 0]);
        assert_no_panic(&server);
        server
    }
}

/// SQLite on a small tmpfs that a filler file makes full: adds answer 201 or 503 (nothing else)
/// while it is full, and the same process stores again once the filler is gone; after a clean
/// restart every acknowledged episode reads back and is found by its token, and reconcile is
/// clean. Skipped, with a printed reason, where tmpfs cannot be mounted (not root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_sqlite() {
    let fs = match crate::common::tmpfs::Tmpfs::mount(12 << 20) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED disk_full_sqlite: {why}");
            return;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), async {
        // Declared after `fs`, so the server is gone before the tmpfs is unmounted.
        let server = start(None, tempfile::tempdir_in(fs.path()).unwrap(), "").await;
        let http = reqwest::Client::new();
        let mut tokens = Tokens::default();
        tokens.stored(&http, &server.url, 20).await;
        let filler = fs.fill();
        let refused = tokens.until_refused(&http, &server.url).await;
        assert!(refused > 0, "adds on a full disk were refused ({} free)", fs.free());
        std::fs::remove_file(filler).unwrap();
        tokens.stored_again(&http, &server.url, "the disk having room").await;
        let mut server = tokens.check_after_restart(&http, server).await;
        eprintln!("disk full: {} acknowledged, {refused} refused", tokens.acked.len());
        server.stop();
    })
    .await
    .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Read-only file (SQLite)
// ---------------------------------------------------------------------------------------------

/// Sets or clears the immutable attribute (`chattr`), which refuses writes even through file
/// descriptors already open, even to root: the database turning read-only under the server.
fn immutable(path: &std::path::Path, on: bool) -> Result<(), String> {
    let out = std::process::Command::new("chattr")
        .arg(if on { "+i" } else { "-i" })
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run chattr: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("chattr on {}: {}", path.display(), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Files made immutable, made writable again when dropped (also when a test fails midway, so
/// its temporary directory can be removed).
struct Immutable(Vec<std::path::PathBuf>);

impl Immutable {
    fn set(files: Vec<std::path::PathBuf>) -> Immutable {
        for f in &files {
            immutable(f, true).unwrap();
        }
        Immutable(files)
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = immutable(f, false);
        }
    }
}

/// The SQLite database and its WAL turn read-only (immutable) under a running server: adds
/// answer 201 or 503 (nothing else), and reads 200 or the open breaker's 503; once the files
/// are writable again the same process stores again; after a clean restart every acknowledged
/// episode reads back and is found by its token, and reconcile is clean. Skipped, with a printed reason, where `chattr` cannot set the attribute (not root, or
/// a file system without it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_file_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let probe = dir.path().join("probe");
    std::fs::write(&probe, b"x").unwrap();
    if let Err(why) = immutable(&probe, true) {
        eprintln!("SKIPPED read_only_file_sqlite: {why}");
        return;
    }
    immutable(&probe, false).unwrap();
    tokio::time::timeout(Duration::from_secs(120), async {
        let server = start(None, dir, "").await;
        let http = reqwest::Client::new();
        let mut tokens = Tokens::default();
        tokens.stored(&http, &server.url, 20).await;
        let files: Vec<std::path::PathBuf> = ["ferry.db", "ferry.db-wal"]
            .iter()
            .map(|f| server.dir.path().join(f))
            .filter(|p| p.exists())
            .collect();
        assert!(!files.is_empty(), "no database file in {}", server.dir.path().display());
        let guard = Immutable::set(files);
        let refused = tokens.until_refused(&http, &server.url).await;
        let (k, id) = &tokens.acked[3];
        let r = http.get(server.at(&format!("/v1/memory/episodes/{id}"))).send().await.unwrap();
        let read_while_read_only = (r.status().as_u16(), r.text().await.unwrap());
        let body = json!({"namespace": "full", "text": format!("dfull{k}"), "k": 5});
        let r = http.post(server.at("/v1/memory/search")).json(&body).send().await.unwrap();
        let search_while_read_only = (r.status().as_u16(), r.text().await.unwrap());
        drop(guard);
        assert!(refused > 0, "adds to a read-only database were refused");
        // Reads answer, or the breaker (open after the failed writes) refuses them with a 503.
        for (what, (status, body)) in [("read", &read_while_read_only), ("search", &search_while_read_only)] {
            assert!(
                *status == 200 || (*status == 503 && body.contains("circuit_open")),
                "a {what} while the file is read-only: {status} {body}"
            );
        }
        tokens.stored_again(&http, &server.url, "the file being writable").await;
        let mut server = tokens.check_after_restart(&http, server).await;
        eprintln!("read-only file: {} acknowledged, {refused} refused", tokens.acked.len());
        server.stop();
    })
    .await
    .unwrap();
}
