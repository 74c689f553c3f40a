//! Observability, end to end against the real binary: `/metrics` values checked against a
//! known workload (and `promtool check metrics` on the output), `/v1/stats` windows, the
//! advisor's verdict from a real workload (and its history across a restart), request ids on
//! every log line of a request, size-rotated log files, and the audit log.

use crate::common::Server;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

async fn bounded<T>(secs: u64, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f).await.expect("test stalled past its time bound")
}

fn start(toml: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ferry.toml"), toml).unwrap();
    Server::start_with(&[], dir)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

async fn post(s: &Server, path: &str, body: Value) -> (u16, Value) {
    let r = http().post(s.at(path)).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn get_json(s: &Server, path: &str) -> Value {
    let r = http().get(s.at(path)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "{path}");
    r.json().await.unwrap()
}

async fn scrape(s: &Server) -> String {
    let r = http().get(s.at("/metrics")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    r.text().await.unwrap()
}

/// Sample name with labels → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

fn value(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

/// Enqueues `n` jobs on `queue` in batches, claims them all, completes `n - failed` and fails
/// `failed` without retry.
async fn workload(s: &Server, queue: &str, n: usize, failed: usize) {
    for chunk in 0..n.div_ceil(500) {
        let k = 500.min(n - chunk * 500);
        let jobs: Vec<Value> = (0..k).map(|_| json!({"queue": queue, "payload": {}})).collect();
        assert_eq!(post(s, "/v1/jobs", json!({"jobs": jobs})).await.0, 201);
    }
    let mut claimed = Vec::new();
    while claimed.len() < n {
        let (st, body) =
            post(s, &format!("/v1/queues/{queue}/claim"), json!({"worker": "w", "max": 1000})).await;
        assert_eq!(st, 200);
        claimed.extend(body["jobs"].as_array().unwrap().iter().cloned());
    }
    let (to_fail, to_complete) = claimed.split_at(failed);
    let items: Vec<Value> = to_complete.iter().map(|j| json!({"id": j["id"], "lease": j["lease"]})).collect();
    for chunk in items.chunks(1000) {
        let (st, body) = post(s, "/v1/jobs/complete", json!({"items": chunk})).await;
        assert_eq!(st, 200, "{body}");
    }
    let items: Vec<Value> = to_fail
        .iter()
        .map(|j| json!({"id": j["id"], "lease": j["lease"], "error": "boom", "retry": false}))
        .collect();
    if !items.is_empty() {
        assert_eq!(post(s, "/v1/jobs/fail", json!({"items": items})).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_match_the_workload_and_pass_promtool() {
    let s = start("");
    bounded(60, async {
        workload(&s, "warmup", 10, 0).await;
        let before = samples(&scrape(&s).await);
        workload(&s, "m", 1000, 7).await;
        // A stale report counts as a conflict.
        let (st, _) = post(&s, "/v1/jobs", json!({"queue": "m", "payload": {}})).await;
        assert_eq!(st, 201);
        let text = scrape(&s).await;
        let after = samples(&text);
        let grew = |k: &str| value(&after, k) - value(&before, k);
        assert_eq!(grew(r#"ferry_jobs_enqueued_total{queue="m"}"#), 1001.0);
        assert_eq!(grew(r#"ferry_jobs_started_total{queue="m"}"#), 1000.0);
        assert_eq!(grew(r#"ferry_jobs_completed_total{queue="m"}"#), 993.0);
        assert_eq!(grew(r#"ferry_jobs_failed_total{queue="m"}"#), 7.0);
        assert_eq!(grew(r#"ferry_jobs_dead_total{queue="m"}"#), 7.0);
        assert_eq!(grew(r#"ferry_jobs_retried_total{queue="m"}"#), 0.0);
        assert_eq!(value(&after, r#"ferry_queue_jobs{queue="m",state="completed"}"#), 993.0);
        assert_eq!(value(&after, r#"ferry_queue_jobs{queue="m",state="ready"}"#), 1.0);
        assert_eq!(value(&after, r#"ferry_dlq_jobs{queue="m"}"#), 7.0);
        assert_eq!(grew("ferry_job_wait_seconds_count"), 1000.0);
        assert_eq!(grew("ferry_job_run_seconds_count"), 993.0);
        assert_eq!(grew(r#"ferry_store_writes_total{op="enqueue",status="ok"}"#), 3.0);
        assert!(grew(r#"ferry_http_requests_total{method="POST",route="/v1/jobs",status="201"}"#) >= 3.0);
        assert!(value(&after, r#"ferry_db_size_bytes{file="db"}"#) > 0.0);
        assert_eq!(value(&after, r#"ferry_circuit_state{state="closed"}"#), 1.0);
        assert!(value(&after, "ferry_disk_total_bytes") > 0.0);
        assert!(grew("ferry_store_batch_size_count") >= 1.0);
        // The exposition is valid for Prometheus' own checker.
        match std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
        {
            Ok(mut child) => {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
                let out = child.wait_with_output().unwrap();
                assert!(
                    out.status.success(),
                    "promtool check metrics: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Err(e) => {
                assert!(std::env::var("FERRY_REQUIRE_PROMTOOL").is_err(), "promtool is required here: {e}");
                eprintln!("skipping promtool check metrics: promtool not found ({e})");
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_windows_and_a_real_verdict_with_history() {
    let s = start("stats_sample_ms = 200\n");
    bounded(60, async {
        workload(&s, "adv", 300, 0).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stats = get_json(&s, "/v1/stats").await;
        for w in ["1m", "5m", "1h"] {
            let x = &stats["windows"][w];
            assert!(x["seconds"].as_f64().unwrap() > 0.0, "{w}: {x}");
            assert!(x["completed_per_sec"].as_f64().unwrap() > 0.0, "{w}: {x}");
            assert!(x["writer_utilization"].as_f64().unwrap() > 0.0, "{w}: {x}");
            assert_eq!(x["write_error_rate"], 0.0);
            assert!(x["latency_p99_ms"].as_f64().is_some(), "{w}: {x}");
            assert_eq!(x["claim_hosts"], 1, "{x}");
        }
        assert_eq!(stats["backend"], "sqlite");
        let advice = get_json(&s, "/v1/advice").await;
        assert_eq!(advice["verdict"], "STAY", "{advice}");
        let text = advice["justification"].as_str().unwrap();
        assert!(text.starts_with("STAY - "), "{text}");
        for metric in [
            "storage write errors",
            "write errors from a busy writer",
            "disk free",
            "writer utilization",
            "hosts claiming",
            "busy waits",
            "database",
            "DLQ growth",
            "oldest ready",
            "registered hosts",
            "checkpoint writes",
        ] {
            assert!(text.contains(metric), "{metric:?} missing: {text}");
        }
        assert_eq!(advice["findings"].as_array().unwrap().len(), 14);
        assert_eq!(advice["cause"], "every measurement is within its threshold");
        assert_eq!(advice["remedy"], "no change needed");
        // The CLI shows the same, a line per finding; asking records nothing...
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["advise", "--url", &s.url])
            .output()
            .unwrap();
        assert!(out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.starts_with("STAY: every measurement is within its threshold\nremedy: no change needed\n")
        );
        let lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with("  STAY ")).collect();
        assert_eq!(lines.len(), 14, "{stdout}");
        assert!(lines.iter().any(|l| l.contains("writer utilization") && l.contains("<= 70%")), "{stdout}");
        assert_eq!(get_json(&s, "/v1/advice/history").await["decisions"].as_array().unwrap().len(), 0);
        // ...unless asked to.
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["advise", "--record", "--url", &s.url])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(get_json(&s, "/v1/advice/history").await["decisions"].as_array().unwrap().len(), 1);
        let recorded = get_json(&s, "/v1/advice?record=true").await;
        assert_eq!(recorded["verdict"], "STAY");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["stats", "--url", &s.url])
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("completed/s"));
        let hist = get_json(&s, "/v1/advice/history").await;
        assert_eq!(hist["decisions"].as_array().unwrap().len(), 2);
        assert!(s.log.lock().unwrap().iter().any(|l| l.contains("scaling advice") && l.contains("STAY - ")));
    })
    .await;
    // A threshold under the measured writer utilization turns the same kind of workload into
    // PLAN MIGRATION, and the history survives a restart.
    let mut s = start("stats_sample_ms = 200\n[advisor]\nwriter_utilization_plan = 0.000001\n");
    bounded(60, async {
        workload(&s, "adv", 300, 0).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let advice = get_json(&s, "/v1/advice?record=true").await;
        assert_eq!(advice["verdict"], "PLAN MIGRATION", "{advice}");
        assert!(advice["justification"].as_str().unwrap().starts_with("PLAN MIGRATION - writer utilization"));
        assert!(advice["cause"].as_str().unwrap().starts_with("the single writer is busy"), "{advice}");
        assert!(advice["remedy"].as_str().unwrap().contains("PostgreSQL"));
        assert!(advice["action"].as_str().unwrap().contains("PostgreSQL"));
    })
    .await;
    s.stop();
    let dir = s.take_dir();
    let s = Server::start_with(&[], dir);
    bounded(30, async {
        let hist = get_json(&s, "/v1/advice/history").await;
        let d = hist["decisions"].as_array().unwrap();
        assert_eq!(d.len(), 1, "{hist}");
        assert_eq!(d[0]["verdict"], "PLAN MIGRATION");
        assert_eq!(d[0]["trigger"], "request");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_rotated_log_files_and_the_audit_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("logs/ferry.log");
    std::fs::write(
        dir.path().join("ferry.toml"),
        format!(
            "log = \"debug,hyper=info,h2=info,tokio_postgres=info\"\nlog_format = \"json\"\naudit_log = true\n\
             log_file = \"{}\"\nlog_file_max_bytes = 20000\nlog_files_kept = 2\n",
            log.display()
        ),
    )
    .unwrap();
    let s = Server::start_with(&[], dir);
    bounded(60, async {
        let r = http()
            .post(s.at("/v1/jobs"))
            .header("x-request-id", "req-abc-123")
            .json(&json!({"queue": "a", "payload": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["x-request-id"], "req-abc-123", "a client's request id is kept");
        let r = http().get(s.at("/v1/queues")).send().await.unwrap();
        let generated = r.headers()["x-request-id"].to_str().unwrap().to_string();
        assert!(generated.len() >= 16);
        workload(&s, "a2", 50, 1).await;
        for _ in 0..300 {
            http().get(s.at("/v1/queues")).send().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Every line logged inside the request carries its id (stdout is JSON here).
        let lines = s.log.lock().unwrap().clone();
        let of_request: Vec<&String> = lines.iter().filter(|l| l.contains("req-abc-123")).collect();
        assert!(!of_request.is_empty(), "no log line names the request");
        for l in &of_request {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|_| panic!("not a JSON line: {l}"));
            assert_eq!(v["span"]["request_id"], "req-abc-123", "{l}");
        }
        assert!(lines.iter().any(|l| l.contains(&generated)));
        // The audit log names each transition.
        for event in ["job.enqueued", "job.started", "job.completed", "job.failed", "job.dead"] {
            assert!(
                lines.iter().any(|l| l.contains("ferry::audit") && l.contains(event)),
                "no audit line for {event}"
            );
        }
        // The file sink rotated by size and kept two old files.
        let logs = log.parent().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(logs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["ferry.log", "ferry.log.1", "ferry.log.2"], "rotated files");
        for n in &names[1..] {
            let len = std::fs::metadata(logs.join(n)).unwrap().len();
            assert!((20_000..25_000).contains(&len), "{n} is {len} bytes");
        }
        let first = std::fs::read_to_string(logs.join("ferry.log.1")).unwrap();
        assert!(first.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "file lines are JSON");
    })
    .await;
}

/// A queue nobody consumes is a matter of workers, not of a migration: the advisor says ACT,
/// names the queue, and asks for workers; once one claims but too slowly, it asks for more.
async fn backlog_is_a_matter_of_workers(args: &[&str], backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("ferry.toml"),
        "stats_sample_ms = 100\n[advisor]\noldest_ready_age_s = 0.5\ndisk_free_share = 0.0\n",
    )
    .unwrap();
    let s = Server::start_with(args, dir);
    bounded(60, async {
        let jobs: Vec<Value> = (0..3).map(|_| json!({"queue": "orphans", "payload": {}})).collect();
        assert_eq!(post(&s, "/v1/jobs", json!({"jobs": jobs})).await.0, 201);
        tokio::time::sleep(Duration::from_millis(800)).await;
        let advice = get_json(&s, "/v1/advice").await;
        assert_eq!(advice["backend"], backend);
        assert_eq!(advice["verdict"], "ACT", "{advice}");
        let cause = advice["cause"].as_str().unwrap();
        assert!(cause.starts_with("no worker is consuming: queue \"orphans\" has waited"), "{advice}");
        assert!(cause.contains("with 0 active workers"), "{advice}");
        assert!(
            advice["remedy"].as_str().unwrap().starts_with("start workers for queue \"orphans\""),
            "{advice}"
        );
        assert!(!advice["action"].as_str().unwrap().contains("migrate"), "{advice}");
        // One worker takes one job and leaves two waiting.
        let (st, body) = post(&s, "/v1/queues/orphans/claim", json!({"worker": "slow", "max": 1})).await;
        assert_eq!((st, body["jobs"].as_array().unwrap().len()), (200, 1), "{body}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let advice = get_json(&s, "/v1/advice").await;
        assert_eq!(advice["verdict"], "ACT", "{advice}");
        assert!(
            advice["cause"].as_str().unwrap().starts_with("too few consumers: queue \"orphans\""),
            "{advice}"
        );
        assert!(advice["cause"].as_str().unwrap().contains("while 1 workers start"), "{advice}");
        assert!(
            advice["remedy"].as_str().unwrap().starts_with("add workers for queue \"orphans\""),
            "{advice}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_is_a_matter_of_workers_sqlite() {
    backlog_is_a_matter_of_workers(&[], "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_is_a_matter_of_workers_postgres() {
    let Some(db) = crate::common::pg::TestDb::create("ferry_adv").await else { return };
    backlog_is_a_matter_of_workers(&["--database", &db.url], "postgres").await;
}

/// A nearly full volume (here: a threshold over any real free share) is answered with the
/// volume and retention, never a migration; under the threshold nothing is said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nearly_full_disk_is_answered_with_space_not_a_migration() {
    for (share, verdict) in [("0.0", "STAY"), ("1.01", "ACT")] {
        let s = start(&format!("[advisor]\ndisk_free_share = {share}\n"));
        bounded(30, async {
            let advice = get_json(&s, "/v1/advice").await;
            assert_eq!(advice["verdict"], verdict, "{advice}");
            let disk =
                advice["findings"].as_array().unwrap().iter().find(|f| f["metric"] == "disk_free_share");
            let disk = disk.unwrap_or_else(|| panic!("no disk finding: {advice}"));
            assert_eq!(disk["verdict"], verdict, "{disk}");
            if verdict == "ACT" {
                assert!(
                    disk["cause"].as_str().unwrap().starts_with("the volume holding the database has"),
                    "{disk}"
                );
                assert!(
                    advice["remedy"].as_str().unwrap().starts_with("free or grow the volume"),
                    "{advice}"
                );
                assert!(!advice["action"].as_str().unwrap().contains("PostgreSQL"), "{advice}");
            }
            let stats = get_json(&s, "/v1/stats").await;
            assert!(stats["now"]["disk_total_bytes"].as_u64().unwrap() > 0, "{stats}");
        })
        .await;
    }
}
