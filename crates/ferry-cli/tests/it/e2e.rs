//! End-to-end tests: the real `ferry serve` binary over real HTTP on a real SQLite file.
//! The whole job lifecycle, long-poll wake-ups, fencing after lease expiry, DLQ and replay,
//! unique and dependent jobs, graceful shutdown, the SDK worker, the OpenAPI document and
//! the CLI.

use crate::common::{Server, error_code, get, post_raw};
use ferry_client::{Client, Worker};
use ferry_core::JobState;
use ferry_core::validate::JobSpec;
use ferry_core::wire::ClaimBody;
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn spec(queue: &str) -> JobSpec {
    JobSpec { queue: queue.into(), ..Default::default() }
}

fn claim_body(max: i64) -> ClaimBody {
    ClaimBody { worker: Some("t".into()), max: Some(max), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_lifecycle_over_http() {
    let s = Server::start();
    let (st, body) = post_raw(
        &s.at("/v1/jobs"),
        r#"{"queue":"emails","payload":{"to":"a@b.c"},"priority":3,"tags":["x"]}"#,
    )
    .await;
    assert_eq!(st, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let (st, body) =
        post_raw(&s.at("/v1/queues/emails/claim"), r#"{"worker":"w1","max":5,"lease_ms":60000}"#).await;
    assert_eq!(st, 200);
    let job = &body["jobs"][0];
    for field in ["id", "queue", "payload", "attempt", "priority", "tags", "lease", "lease_expires_at"] {
        assert!(job.get(field).is_some(), "claim answer lacks {field}: {job}");
    }
    assert_eq!(job["id"], id.as_str());
    assert_eq!(job["payload"], json!({"to":"a@b.c"}));
    assert_eq!((job["attempt"].as_u64(), job["priority"].as_i64()), (Some(1), Some(3)));
    let lease = job["lease"].as_str().unwrap();
    let (st, hb) = post_raw(
        &s.at(&format!("/v1/jobs/{id}/heartbeat")),
        &json!({"lease": lease, "extend_ms": 90000}).to_string(),
    )
    .await;
    assert_eq!(st, 200, "{hb}");
    let (st, done) = post_raw(
        &s.at(&format!("/v1/jobs/{id}/complete")),
        &json!({"lease": lease, "result": {"sent": 1}}).to_string(),
    )
    .await;
    assert_eq!((st, done["state"].as_str()), (200, Some("completed")));
    let (st, shown) = get(&s.at(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(st, 200);
    assert_eq!(shown["state"], "completed");
    assert_eq!(shown["result"], json!({"sent": 1}));
    assert_eq!(shown["attempt"], 1);
    for field in ["created_at", "started_at", "finished_at", "errors"] {
        assert!(shown.get(field).is_some(), "job lacks {field}: {shown}");
    }
    // Repeat with the same lease: still success (exactly-once recording, idempotent report).
    let (st, _) =
        post_raw(&s.at(&format!("/v1/jobs/{id}/complete")), &json!({"lease": lease}).to_string()).await;
    assert_eq!(st, 200);
    let (_, queues) = get(&s.at("/v1/queues")).await;
    let q = &queues["queues"][0];
    assert_eq!(
        (q["queue"].as_str(), q["counts"]["completed"].as_u64(), q["paused"].as_bool()),
        (Some("emails"), Some(1), Some(false))
    );
    let (_, list) = get(&s.at("/v1/jobs?queue=emails&state=completed&limit=10")).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_claim_is_woken_by_enqueue() {
    let s = Server::start();
    let c = Client::new(&s.url);
    let claimer = {
        let c = c.clone();
        tokio::spawn(async move {
            let body = ClaimBody {
                worker: Some("w".into()),
                max: Some(1),
                wait_ms: Some(10_000),
                ..Default::default()
            };
            let jobs = c.claim("lp", &body).await.unwrap();
            (jobs, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    c.enqueue(&spec("lp")).await.unwrap();
    let (jobs, got) = tokio::time::timeout(Duration::from_secs(5), claimer).await.unwrap().unwrap();
    assert_eq!(jobs.len(), 1);
    let latency = got.duration_since(sent);
    assert!(latency < Duration::from_millis(500), "woken after {latency:?}");
    // With nothing to claim, the long-poll returns an empty list once its wait is over.
    let t = Instant::now();
    let body = ClaimBody { worker: Some("w".into()), max: Some(1), wait_ms: Some(300), ..Default::default() };
    assert!(c.claim("lp", &body).await.unwrap().is_empty());
    assert!(t.elapsed() >= Duration::from_millis(300) && t.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_lease_is_fenced_with_409_and_job_is_requeued() {
    let s = Server::start();
    let c = Client::new(&s.url);
    let id = c.enqueue(&JobSpec { lease_ms: Some(200), ..spec("fence") }).await.unwrap().id;
    let job = c.claim("fence", &claim_body(1)).await.unwrap().remove(0);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let (st, body) =
        post_raw(&s.at(&format!("/v1/jobs/{id}/complete")), &json!({"lease": job.lease}).to_string()).await;
    assert_eq!((st, error_code(&body).as_str()), (409, "stale_lease"));
    // The reaper (every second) returns it to ready with `lease_expired` in its history.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let j = c.get_job(&id.to_string()).await.unwrap();
        if j.state == JobState::Ready {
            assert_eq!(j.errors[0].kind, "lease_expired");
            break;
        }
        assert!(Instant::now() < deadline, "reaper never requeued the job");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let again = c.claim("fence", &claim_body(1)).await.unwrap().remove(0);
    assert_eq!(again.attempt, 2);
    let (st, _) = post_raw(
        &s.at(&format!("/v1/jobs/{id}/fail")),
        &json!({"lease": job.lease, "error": "late"}).to_string(),
    )
    .await;
    assert_eq!(st, 409, "the old lease stays stale");
    c.complete(id, &again.lease, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_queue_and_replay() {
    let s = Server::start();
    let c = Client::new(&s.url);
    let id = c
        .enqueue(&JobSpec {
            max_attempts: Some(2),
            backoff: Some(ferry_core::Backoff { base_ms: 0, ..Default::default() }),
            ..spec("dlq")
        })
        .await
        .unwrap()
        .id;
    for attempt in 1..=2 {
        let j = c.claim("dlq", &claim_body(1)).await.unwrap().remove(0);
        let out = c.fail(id, &j.lease, &format!("boom {attempt}"), true).await.unwrap();
        assert_eq!(out.state, if attempt == 1 { JobState::Ready } else { JobState::Dead });
    }
    let (st, page) = get(&s.at("/v1/dlq?queue=dlq")).await;
    assert_eq!(st, 200);
    assert_eq!(page["jobs"][0]["id"], id.to_string());
    assert_eq!(page["jobs"][0]["errors"].as_array().unwrap().len(), 2);
    let (st, r) = post_raw(&s.at("/v1/dlq/replay"), &json!({"ids": [id]}).to_string()).await;
    assert_eq!((st, r["replayed"].as_u64()), (200, Some(1)));
    let j = c.get_job(&id.to_string()).await.unwrap();
    assert_eq!((j.state, j.attempt, j.errors.len()), (JobState::Ready, 0, 2));
    // Kill it again without retry, then replay by queue and purge by queue.
    let l = c.claim("dlq", &claim_body(1)).await.unwrap().remove(0);
    c.fail(id, &l.lease, "fatal", false).await.unwrap();
    let (_, r) = post_raw(&s.at("/v1/dlq/replay"), r#"{"queue":"dlq"}"#).await;
    assert_eq!(r["replayed"], 1);
    let l = c.claim("dlq", &claim_body(1)).await.unwrap().remove(0);
    c.fail(id, &l.lease, "fatal", false).await.unwrap();
    let (_, r) = post_raw(&s.at("/v1/dlq/purge"), r#"{"queue":"dlq"}"#).await;
    assert_eq!(r["purged"], 1);
    let (st, _) = get(&s.at(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(st, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_and_dependent_jobs() {
    let s = Server::start();
    let (st, a) = post_raw(&s.at("/v1/jobs"), r#"{"queue":"u","unique_key":"k1"}"#).await;
    assert_eq!(st, 201);
    let (st, b) = post_raw(&s.at("/v1/jobs"), r#"{"queue":"u","unique_key":"k1"}"#).await;
    assert_eq!(st, 200);
    assert_eq!((b["id"].clone(), b["duplicate"].as_bool()), (a["id"].clone(), Some(true)));
    let parent = a["id"].as_str().unwrap();
    let (st, child) =
        post_raw(&s.at("/v1/jobs"), &json!({"queue": "then", "depends_on": [parent]}).to_string()).await;
    assert_eq!(st, 201);
    let child = child["id"].as_str().unwrap().to_string();
    let (_, j) = get(&s.at(&format!("/v1/jobs/{child}"))).await;
    assert_eq!(j["state"], "waiting");
    let c = Client::new(&s.url);
    let waiter = {
        let c = c.clone();
        tokio::spawn(async move {
            let body = ClaimBody {
                worker: Some("w".into()),
                max: Some(1),
                wait_ms: Some(10_000),
                ..Default::default()
            };
            c.claim("then", &body).await.unwrap()
        })
    };
    let p = c.claim("u", &claim_body(1)).await.unwrap().remove(0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.complete(p.id, &p.lease, None).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(3), waiter)
        .await
        .expect("dependency resolution wakes")
        .unwrap();
    assert_eq!(got[0].id.to_string(), child);
    // A batch with a duplicate inside it reports the duplicate's index.
    let (st, r) = post_raw(
        &s.at("/v1/jobs"),
        r#"{"jobs":[{"queue":"u","unique_key":"k2"},{"queue":"u","unique_key":"k2"}]}"#,
    )
    .await;
    assert_eq!(st, 201);
    assert_eq!(r["ids"][0], r["ids"][1]);
    assert_eq!(r["duplicates"], json!([1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_cancel() {
    let s = Server::start();
    let c = Client::new(&s.url);
    c.enqueue(&spec("pq")).await.unwrap();
    let (st, r) = post_raw(&s.at("/v1/queues/pq/pause"), "").await;
    assert_eq!((st, r["paused"].as_bool()), (200, Some(true)));
    assert!(c.claim("pq", &claim_body(1)).await.unwrap().is_empty());
    let (st, _) = post_raw(&s.at("/v1/queues/pq/resume"), "").await;
    assert_eq!(st, 200);
    let running = c.claim("pq", &claim_body(1)).await.unwrap().remove(0);
    let (st, body) = post_raw(&s.at(&format!("/v1/jobs/{}/cancel", running.id)), "").await;
    assert_eq!((st, error_code(&body).as_str()), (409, "invalid_state"));
    let id = c.enqueue(&JobSpec { delay_ms: Some(60_000), ..spec("pq") }).await.unwrap().id;
    let (st, r) = post_raw(&s.at(&format!("/v1/jobs/{id}/cancel")), r#"{"reason":"not needed"}"#).await;
    assert_eq!((st, r["state"].as_str()), (200, Some("cancelled")));
    assert_eq!(c.get_job(&id.to_string()).await.unwrap().cancel_reason.as_deref(), Some("not needed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_loses_nothing_and_data_survives_restart() {
    let mut s = Server::start();
    let c = Client::new(&s.url);
    // A long-poll in flight must not hold shutdown for its whole wait.
    let lp = {
        let c = c.clone();
        tokio::spawn(async move {
            let body = ClaimBody {
                worker: Some("w".into()),
                max: Some(1),
                wait_ms: Some(30_000),
                ..Default::default()
            };
            c.claim("idle", &body).await
        })
    };
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut producers = Vec::new();
    for p in 0..4 {
        let (c, acked) = (c.clone(), acked.clone());
        producers.push(tokio::spawn(async move {
            for i in 0.. {
                let jobs: Vec<JobSpec> = (0..20).map(|_| spec(&format!("g{p}"))).collect();
                match c.enqueue_batch(&jobs).await {
                    Ok(r) => acked.lock().unwrap().extend(r.ids),
                    Err(_) => return i,
                }
            }
            unreachable!()
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let st = s.stop();
        (st, s)
    })
    .await
    .unwrap();
    assert!(status.0.success(), "ferry exits 0 after SIGTERM: {:?}", status.0);
    assert!(t.elapsed() < Duration::from_secs(10), "shutdown took {:?}", t.elapsed());
    let lp = tokio::time::timeout(Duration::from_secs(5), lp).await.expect("long-poll ended").unwrap();
    assert!(lp.map(|j| j.is_empty()).unwrap_or(true));
    for p in producers {
        p.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(!acked.is_empty());
    let mut stopped = status.1;
    let s = Server::start_with(&[], stopped.take_dir());
    let c = Client::new(&s.url);
    for id in &acked {
        c.get_job(&id.to_string()).await.unwrap_or_else(|e| panic!("acknowledged job {id} lost: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_worker_completes_10000_jobs_exactly_once_with_8_handlers() {
    let s = Server::start();
    let c = Client::new(&s.url);
    let mut ids = Vec::new();
    for _ in 0..10 {
        let jobs: Vec<JobSpec> = (0..1_000).map(|_| spec("sdk")).collect();
        ids.extend(c.enqueue_batch(&jobs).await.unwrap().ids);
    }
    let seen: Arc<Mutex<HashMap<uuid::Uuid, u32>>> = Arc::default();
    let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let max_in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = {
        let (seen, in_flight, max_in_flight) = (seen.clone(), in_flight.clone(), max_in_flight.clone());
        Worker::new(c.clone(), "sdk-test").concurrency(8).handle("sdk", move |ctx| {
            let (seen, in_flight, max_in_flight) = (seen.clone(), in_flight.clone(), max_in_flight.clone());
            async move {
                let now = in_flight.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                max_in_flight.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                *seen.lock().unwrap().entry(ctx.id).or_default() += 1;
                tokio::task::yield_now().await;
                in_flight.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                Ok(Some(json!({"ok": true})))
            }
        })
    };
    let run = tokio::spawn(worker.run(async move {
        let _ = stop_rx.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let q = c.queues().await.unwrap().queues.into_iter().find(|q| q.queue == "sdk").unwrap();
        if q.counts[&JobState::Completed] == 10_000 {
            break;
        }
        assert!(Instant::now() < deadline, "not done: {:?}", q.counts);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(());
    let stats = run.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 10_000);
    assert!(seen.values().all(|n| *n == 1), "a job ran twice");
    assert!(ids.iter().all(|id| seen.contains_key(id)));
    assert_eq!(stats.completed.load(std::sync::atomic::Ordering::SeqCst), 10_000);
    assert!(max_in_flight.load(std::sync::atomic::Ordering::SeqCst) <= 8, "more than 8 handlers at once");
    let j = c.get_job(&ids[0].to_string()).await.unwrap();
    assert_eq!(j.result.unwrap().get(), r#"{"ok":true}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_worker_retries_failures_and_heartbeats_long_handlers() {
    let s = Server::start();
    let c = Client::new(&s.url);
    let flaky = c
        .enqueue(&JobSpec {
            backoff: Some(ferry_core::Backoff { base_ms: 10, ..Default::default() }),
            ..spec("flaky")
        })
        .await
        .unwrap()
        .id;
    // Lease 300 ms, handler 1.2 s: only heartbeats keep it alive.
    let slow = c.enqueue(&JobSpec { lease_ms: Some(300), ..spec("slow") }).await.unwrap().id;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::new(c.clone(), "w")
        .wait_ms(200)
        .handle("flaky", |ctx| async move {
            if ctx.attempt < 3 {
                Err(ferry_client::JobError::retry(format!("try {}", ctx.attempt)))
            } else {
                Ok(None)
            }
        })
        .handle("slow", |_| async move {
            tokio::time::sleep(Duration::from_millis(1_200)).await;
            Ok(None)
        });
    let run = tokio::spawn(worker.run(async move {
        let _ = stop_rx.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (a, b) =
            (c.get_job(&flaky.to_string()).await.unwrap(), c.get_job(&slow.to_string()).await.unwrap());
        if a.state == JobState::Completed && b.state == JobState::Completed {
            assert_eq!((a.attempt, a.errors.len()), (3, 2));
            assert_eq!((b.attempt, b.errors.len()), (1, 0), "the slow job's lease never lapsed");
            break;
        }
        assert!(Instant::now() < deadline, "jobs not done: {:?} {:?}", a.state, b.state);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(());
    let stats = run.await.unwrap();
    assert_eq!(stats.lease_lost.load(std::sync::atomic::Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_covers_every_route() {
    let s = Server::start();
    let (st, doc) = get(&s.at("/v1/openapi.json")).await;
    assert_eq!(st, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let expected = [
        ("post", "/v1/jobs"),
        ("get", "/v1/jobs"),
        ("get", "/v1/jobs/{id}"),
        ("post", "/v1/queues/{queue}/claim"),
        ("post", "/v1/jobs/{id}/heartbeat"),
        ("post", "/v1/jobs/{id}/complete"),
        ("post", "/v1/jobs/{id}/fail"),
        ("post", "/v1/jobs/{id}/release"),
        ("post", "/v1/jobs/{id}/cancel"),
        ("post", "/v1/jobs/complete"),
        ("post", "/v1/jobs/fail"),
        ("post", "/v1/jobs/heartbeat"),
        ("post", "/v1/import"),
        ("get", "/v1/queues"),
        ("post", "/v1/queues/{queue}/pause"),
        ("post", "/v1/queues/{queue}/resume"),
        ("get", "/v1/dlq"),
        ("post", "/v1/dlq/replay"),
        ("post", "/v1/dlq/purge"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/v1/server"),
        ("get", "/v1/openapi.json"),
        ("post", "/v1/schedules"),
        ("get", "/v1/schedules"),
        ("get", "/v1/schedules/{name}"),
        ("patch", "/v1/schedules/{name}"),
        ("delete", "/v1/schedules/{name}"),
        ("post", "/v1/schedules/{name}/pause"),
        ("post", "/v1/schedules/{name}/resume"),
        ("get", "/v1/events"),
        ("get", "/v1/events/stream"),
        ("get", "/v1/ws"),
        ("post", "/v1/tokens"),
        ("get", "/v1/tokens"),
        ("delete", "/v1/tokens/{id}"),
        ("put", "/v1/queues/{queue}/limits"),
        ("get", "/v1/queues/{queue}/limits"),
        ("get", "/v1/workers"),
        ("post", "/v1/hosts"),
        ("get", "/v1/hosts"),
        ("delete", "/v1/hosts/{name}"),
        ("get", "/metrics"),
        ("get", "/v1/stats"),
        ("get", "/v1/advice"),
        ("get", "/v1/advice/history"),
        ("get", "/v1/backup"),
        ("post", "/v1/items"),
        ("get", "/v1/items"),
        ("get", "/v1/items/{id}"),
        ("get", "/v1/items/{id}/history"),
        ("patch", "/v1/items/{id}"),
        ("post", "/v1/items/batch"),
        ("post", "/v1/messages"),
        ("post", "/v1/broadcasts"),
        ("post", "/v1/agents/{agent}/receive"),
        ("post", "/v1/agents/{agent}/ack"),
        ("post", "/v1/agents/{agent}/nack"),
        ("get", "/v1/agents/{agent}/dead"),
        ("post", "/v1/agents/{agent}/dead/replay"),
        ("put", "/v1/agents/{agent}/channels"),
        ("get", "/v1/agents"),
        ("get", "/v1/agents/{agent}"),
        ("post", "/v1/convoys"),
        ("get", "/v1/convoys"),
        ("get", "/v1/convoys/{id}"),
        ("get", "/v1/convoys/{id}/members"),
        ("post", "/v1/convoys/{id}/members"),
        ("post", "/v1/convoys/{id}/seal"),
        ("post", "/v1/convoys/{id}/cancel"),
        ("post", "/v1/ledger/accounts"),
        ("get", "/v1/ledger/accounts"),
        ("get", "/v1/ledger/accounts/{id}"),
        ("post", "/v1/ledger/accounts/{id}/close"),
        ("get", "/v1/ledger/accounts/{id}/transfers"),
        ("post", "/v1/ledger/transfers"),
        ("get", "/v1/ledger/transfers/{id}"),
        ("post", "/v1/ledger/transfers/{id}/post"),
        ("post", "/v1/ledger/transfers/{id}/void"),
        ("get", "/v1/ledger/events"),
        ("post", "/v1/ledger/verify"),
        ("put", "/v1/threads/{thread}/checkpoints/{id}"),
        ("get", "/v1/threads/{thread}/checkpoints/{id}"),
        ("post", "/v1/threads/{thread}/checkpoints/{id}/writes"),
        ("get", "/v1/checkpoints"),
        ("get", "/v1/threads"),
        ("get", "/v1/threads/{thread}"),
        ("patch", "/v1/threads/{thread}"),
        ("delete", "/v1/threads/{thread}"),
        ("post", "/v1/threads/{thread}/copy"),
        ("post", "/v1/checkpoints/prune"),
        ("post", "/v1/checkpoints/delete-runs"),
        ("post", "/v1/memory/episodes"),
        ("post", "/v1/memory/episodes/batch"),
        ("get", "/v1/memory/episodes"),
        ("get", "/v1/memory/episodes/{id}"),
        ("patch", "/v1/memory/episodes/{id}"),
        ("delete", "/v1/memory/episodes/{id}"),
        ("post", "/v1/memory/search"),
        ("get", "/v1/memory/stats"),
        ("post", "/v1/memory/reconcile"),
        ("post", "/v1/memory/rebuild"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in expected {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} missing from the OpenAPI document"
        );
        // And the route really is served (not a 404 from the fallback).
        let url = s.at(&path
            .replace("{id}", "00000000-0000-7000-8000-000000000000")
            .replace("{queue}", "q")
            .replace("{name}", "s")
            .replace("{agent}", "ag")
            .replace("{thread}", "th"));
        let resp = match method {
            "get" => crate::common::http().get(&url).send().await,
            "patch" => crate::common::http().patch(&url).body("{}").send().await,
            "delete" => crate::common::http().delete(&url).send().await,
            "put" => crate::common::http().put(&url).body("{}").send().await,
            _ => crate::common::http().post(&url).body("{}").send().await,
        };
        let resp = resp.unwrap();
        if path == "/v1/events/stream" {
            // An endless stream: its status and content type are the proof.
            assert_eq!(resp.status(), 200);
            continue;
        }
        let body: serde_json::Value = resp.json().await.unwrap_or(json!({}));
        assert!(
            body["error"]["message"].as_str().is_none_or(|m| !m.starts_with("no route")),
            "{method} {path} is not routed"
        );
    }
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(documented, expected.len(), "the document and this list disagree: update both");
}

fn ferry_cli(url: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env("FERRY_URL", url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    drop(input);
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_commands_work_and_fail_with_the_servers_message() {
    let s = Server::start();
    let url = s.url.clone();
    tokio::task::spawn_blocking(move || {
        let (code, out, err) = ferry_cli(&url, &["enqueue", "cli", r#"{"n":1}"#, "--json"], None);
        assert_eq!(code, 0, "{err}");
        let id = serde_json::from_str::<serde_json::Value>(&out).unwrap()["id"].as_str().unwrap().to_string();
        let (code, out, _) =
            ferry_cli(&url, &["enqueue", "cli", "--priority", "2"], Some(r#"{"from":"stdin"}"#));
        assert_eq!(code, 0);
        assert_eq!(out.trim().len(), 36, "prints the new id: {out}");
        let lines: String = (0..2500).map(|i| format!("{{\"n\":{i}}}\n")).collect();
        let (code, out, err) = ferry_cli(&url, &["enqueue", "bulk", "--batch"], Some(&lines));
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("enqueued 2500"), "{out}");
        let (code, out, _) = ferry_cli(&url, &["jobs", "show", &id], None);
        assert_eq!(code, 0);
        assert!(out.contains("ready") && out.contains(r#"{"n":1}"#), "{out}");
        let (code, out, _) = ferry_cli(&url, &["jobs", "list", "--queue", "cli"], None);
        assert_eq!(code, 0);
        assert!(out.starts_with("ID") && out.lines().count() == 3, "{out}");
        let (code, out, _) = ferry_cli(&url, &["queues", "list", "--json"], None);
        assert_eq!(code, 0);
        let qs: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(qs["queues"].as_array().unwrap().len(), 2);
        let (code, out, _) = ferry_cli(&url, &["queues", "pause", "cli"], None);
        assert_eq!((code, out.trim()), (0, "cli paused"));
        let (code, _, _) = ferry_cli(&url, &["jobs", "cancel", &id, "--reason", "test"], None);
        assert_eq!(code, 0);
        let (code, _, err) = ferry_cli(&url, &["jobs", "show", "00000000-0000-7000-8000-000000000000"], None);
        assert_eq!(code, 1);
        assert!(err.contains("not found"), "{err}");
        let (code, _, err) = ferry_cli(&url, &["enqueue", "bad queue", "1"], None);
        assert_eq!(code, 1);
        assert!(err.contains("queue name"), "{err}");
        let (code, out, _) = ferry_cli(&url, &["dlq", "list"], None);
        assert_eq!(code, 0);
        assert!(out.starts_with("ID"));
        let (code, _, err) = ferry_cli(&url, &["dlq", "replay"], None);
        // Neither ids nor a queue: refused before any request, naming the flags.
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("<--id <IDS>|--queue <QUEUE>>"), "{err}");
    })
    .await
    .unwrap();
    let (code, out, _) = ferry_cli("http://127.0.0.1:1", &["--help"], None);
    assert_eq!(code, 0);
    for cmd in ["serve", "enqueue", "jobs", "dlq", "queues", "bench"] {
        assert!(out.contains(cmd), "--help lacks {cmd}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_convoys_add_show_members_seal_and_cancel() {
    let s = Server::start();
    let url = s.url.clone();
    tokio::task::spawn_blocking(move || {
        let json = |out: &str| serde_json::from_str::<serde_json::Value>(out).unwrap();
        let lines: String = (0..5).map(|i| format!("{{\"payload\":{{\"i\":{i}}}}}\n")).collect();
        let args = [
            "convoys",
            "add",
            "--queue",
            "cq",
            "--members",
            "-",
            "--id",
            "cv-1",
            "--max-parallel",
            "2",
            "--on-complete",
            r#"{"queue":"cq-done"}"#,
            "--json",
        ];
        let (code, out, err) = ferry_cli(&url, &args, Some(&lines));
        assert_eq!(code, 0, "{err}");
        let v = json(&out);
        assert_eq!((v["state"].as_str(), v["limit"].as_i64()), (Some("sealed"), Some(2)), "{v}");
        assert_eq!((v["counts"]["ready"].as_i64(), v["counts"]["held"].as_i64()), (Some(2), Some(3)), "{v}");
        let (code, out, _) =
            ferry_cli(&url, &["convoys", "members", "cv-1", "--state", "held", "--json"], None);
        assert_eq!(code, 0);
        assert_eq!(json(&out)["members"].as_array().unwrap().len(), 3, "{out}");
        let (code, out, _) = ferry_cli(&url, &["convoys", "show", "cv-1"], None);
        assert_eq!(code, 0);
        assert!(out.contains("convoy cv-1") && out.contains("held 3"), "{out}");

        // Open, added to with --to (sealed last), then cancelled.
        let one = "{\"payload\":1}\n";
        let (code, _, err) = ferry_cli(
            &url,
            &["convoys", "add", "--queue", "cq", "--members", "-", "--id", "cv-2", "--open"],
            Some(one),
        );
        assert_eq!(code, 0, "{err}");
        let (code, out, _) = ferry_cli(&url, &["convoys", "show", "cv-2", "--json"], None);
        assert_eq!((code, json(&out)["state"].as_str()), (0, Some("open")), "{out}");
        let (code, out, err) =
            ferry_cli(&url, &["convoys", "add", "--to", "cv-2", "--members", "-", "--json"], Some(one));
        assert_eq!(code, 0, "{err}");
        let v = json(&out);
        assert_eq!((v["state"].as_str(), v["counts"]["total"].as_i64()), (Some("sealed"), Some(2)), "{v}");
        let (code, out, _) = ferry_cli(&url, &["convoys", "cancel", "cv-2", "--json"], None);
        assert_eq!((code, json(&out)["state"].as_str()), (0, Some("cancelled")), "{out}");
        let (code, _, err) =
            ferry_cli(&url, &["convoys", "add", "--to", "cv-2", "--members", "-"], Some(one));
        assert_eq!(code, 1);
        assert!(err.contains("cancelled"), "{err}");
        let (code, out, _) =
            ferry_cli(&url, &["convoys", "list", "--queue", "cq", "--state", "cancelled"], None);
        assert_eq!(code, 0);
        assert!(out.contains("cv-2") && !out.contains("cv-1"), "{out}");
        let (code, _, err) = ferry_cli(&url, &["convoys", "seal", "nosuch"], None);
        assert_eq!(code, 1);
        assert!(err.contains("not found"), "{err}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_worker_enforces_timeout_ms_and_retries() {
    let s = Server::start();
    let c = Client::new(&s.url);
    let backoff = Some(ferry_core::Backoff { base_ms: 10, ..Default::default() });
    // The handler outlives its 200 ms deadline on the first two attempts, then is quick.
    let spec = JobSpec { timeout_ms: Some(200), max_attempts: Some(3), backoff, ..spec("deadline") };
    let id = c.enqueue(&spec).await.unwrap().id;
    let got = c.get_job(&id.to_string()).await.unwrap();
    assert_eq!(got.timeout_ms, 200, "timeout_ms round trip");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker = Worker::new(c.clone(), "w").wait_ms(200).handle("deadline", |ctx| async move {
        assert_eq!(ctx.timeout_ms, 200);
        if ctx.attempt < 3 {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        Ok(None)
    });
    let run = tokio::spawn(worker.run(async move {
        let _ = stop_rx.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(20);
    let j = loop {
        let j = c.get_job(&id.to_string()).await.unwrap();
        if j.state == JobState::Completed {
            break j;
        }
        assert!(Instant::now() < deadline, "not done: {:?} after {:?}", j.state, j.errors);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = stop_tx.send(());
    let stats = run.await.unwrap();
    assert_eq!(j.attempt, 3);
    let messages: Vec<&str> = j.errors.iter().map(|e| e.message.as_str()).collect();
    assert_eq!(messages, ["timed out after 200 ms", "timed out after 200 ms"]);
    assert_eq!(stats.timed_out.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// `timeout_ms` is accepted wherever a job spec is: enqueue (one and a batch), import and a
/// schedule's job, whose ticks carry it; 0 is refused everywhere, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_ms_is_accepted_wherever_a_job_spec_is() {
    let s = Server::start();
    let timeout_of = async |id: &str| get(&s.at(&format!("/v1/jobs/{id}"))).await.1["timeout_ms"].clone();
    let (st, one) = post_raw(&s.at("/v1/jobs"), r#"{"queue":"tq","timeout_ms":1500}"#).await;
    assert_eq!(st, 201, "{one}");
    assert_eq!(timeout_of(one["id"].as_str().unwrap()).await, 1500);
    let (st, batch) =
        post_raw(&s.at("/v1/jobs"), r#"{"jobs":[{"queue":"tq","timeout_ms":7},{"queue":"tq"}]}"#).await;
    assert_eq!(st, 201, "{batch}");
    assert_eq!(timeout_of(batch["ids"][0].as_str().unwrap()).await, 7);
    assert_eq!(timeout_of(batch["ids"][1].as_str().unwrap()).await, 86_400_000, "the default");
    let (st, imported) = post_raw(
        &s.at("/v1/import"),
        r#"{"jobs":[{"job":{"queue":"tq","unique_key":"imp-1","timeout_ms":2500}}]}"#,
    )
    .await;
    assert_eq!(st, 200, "{imported}");
    assert_eq!(timeout_of(imported["ids"][0].as_str().unwrap()).await, 2500);
    let bad = [
        ("/v1/jobs", r#"{"queue":"tq","timeout_ms":0}"#, "timeout_ms"),
        ("/v1/jobs", r#"{"jobs":[{"queue":"tq"},{"queue":"tq","timeout_ms":0}]}"#, "jobs[1].timeout_ms"),
        (
            "/v1/schedules",
            r#"{"name":"tsb","cron":"@daily","job":{"queue":"ts","timeout_ms":0}}"#,
            "job.timeout_ms",
        ),
    ];
    for (path, body, field) in bad {
        let (st, e) = post_raw(&s.at(path), body).await;
        assert_eq!((st, e["error"]["field"].as_str()), (422, Some(field)), "{path} {body}: {e}");
    }
    let (st, sched) = post_raw(
        &s.at("/v1/schedules"),
        r#"{"name":"tsch","cron":"* * * * * *","job":{"queue":"ts","timeout_ms":4321}}"#,
    )
    .await;
    assert_eq!(st, 201, "{sched}");
    assert_eq!(sched["job"]["timeout_ms"], 4321, "the template keeps it: {sched}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let ticked = loop {
        let (_, page) = get(&s.at("/v1/jobs?queue=ts")).await;
        if let Some(j) = page["jobs"].get(0) {
            break j.clone();
        }
        assert!(Instant::now() < deadline, "the schedule never ticked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ticked["timeout_ms"], 4321, "{ticked}");
}
