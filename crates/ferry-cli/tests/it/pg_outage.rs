//! Database outage: a private PostgreSQL cluster is stopped and restarted under load. While it
//! is down ferry answers 503 with `Retry-After` (never another 5xx), `/readyz` says
//! unavailable; once it is back ferry reconnects by itself, and no acknowledged job is lost.
//!
//! The cluster is this test's own (initdb into a temp dir, run as the `postgres` user, on a
//! free port), so stopping it disturbs no other test. Skipped with a printed reason where the
//! PostgreSQL server binaries or root are missing, unless `FERRY_REQUIRE_PG=1`.

use crate::common::Server;
use crate::common::private_pg::PrivatePg;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Tally {
    acked: Vec<String>,
    unavailable_with_retry_after: usize,
    other_errors: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_load_gives_503s_then_recovers_without_loss() {
    let Some(pg) = tokio::task::spawn_blocking(|| PrivatePg::start_or_skip("pg_outage")).await.unwrap()
    else {
        return;
    };
    let server = Server::start_with(&["--database", &pg.url()], tempfile::tempdir().unwrap());
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for p in 0..4 {
        let (http, tally, stop, url) = (http.clone(), tally.clone(), stop.clone(), server.at("/v1/jobs"));
        producers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let body = format!(r#"{{"queue":"outage","payload":{p}}}"#);
                match http.post(&url).header("content-type", "application/json").body(body).send().await {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let retry_after = r.headers().contains_key("retry-after");
                        let text = r.text().await.unwrap_or_default();
                        let mut t = tally.lock().unwrap();
                        match status {
                            201 => {
                                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                                t.acked.push(v["id"].as_str().unwrap().to_string());
                            }
                            503 if retry_after => t.unavailable_with_retry_after += 1,
                            _ => t.other_errors.push(format!("{status} {text}")),
                        }
                    }
                    Err(e) => tally.lock().unwrap().other_errors.push(format!("transport: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before = tally.lock().unwrap().acked.len();
    assert!(before > 0, "no job was accepted before the outage");

    // Outage: stop the database for a while.
    let pg = tokio::task::spawn_blocking(move || {
        pg.down("fast").expect("pg_ctl stop");
        pg
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let ready = http.get(server.at("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 503, "/readyz while the database is down");
    let during = tally.lock().unwrap().unavailable_with_retry_after;
    assert!(during > 0, "no 503 with Retry-After while the database was down");

    // Recovery: start it again; ferry reconnects by itself.
    let pg = tokio::task::spawn_blocking(move || {
        pg.up().expect("pg_ctl start");
        pg
    })
    .await
    .unwrap();
    let restarted = Instant::now();
    let acked_at_restart = tally.lock().unwrap().acked.len();
    loop {
        if tally.lock().unwrap().acked.len() > acked_at_restart + 50 {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(30),
            "ferry did not recover after the database restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("outage: recovered {:?} after the database came back", restarted.elapsed());
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.await.unwrap();
    }
    let tally = std::mem::take(&mut *tally.lock().unwrap());
    assert!(
        tally.other_errors.is_empty(),
        "answers other than 201 or 503+Retry-After: {:?}",
        &tally.other_errors[..tally.other_errors.len().min(5)]
    );
    let ready = http.get(server.at("/readyz")).send().await.unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    // Nothing acknowledged is lost.
    for id in &tally.acked {
        let r = http.get(server.at(&format!("/v1/jobs/{id}"))).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "acknowledged job {id} lost");
    }
    eprintln!(
        "outage: {} jobs acknowledged, {} answers were 503 with Retry-After",
        tally.acked.len(),
        tally.unavailable_with_retry_after
    );
    drop(server);
    drop(pg);
}
