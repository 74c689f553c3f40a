//! Group commit: many requests share one transaction, and each still gets its own answer.
//!
//! 64 concurrent single-job clients on one node mix, in the same gather windows, plain
//! enqueues, enqueues racing for 4 unique keys, enqueues refused for a missing dependency,
//! claims, completions, completions with a stale lease, failures and heartbeats. Every answer
//! is checked against what that client alone should get, and afterwards every job against
//! what was acknowledged: nothing committed for a refused request, nothing lost for an
//! accepted one, and the node's batch-size histogram proves requests did share transactions.
//! A second test SIGKILLs a PostgreSQL node while 64 clients enqueue and claim: every
//! acknowledged enqueue is found on another node, and no job was leased twice.
//!
//! PostgreSQL (`FERRY_TEST_PG_URL`) is required under `FERRY_REQUIRE_PG=1`; the first test
//! also runs on SQLite.

use crate::common::Server;
use crate::common::pg::TestDb;
use ferry_client::{Client, ClientError};
use ferry_core::JobState;
use ferry_core::validate::JobSpec;
use ferry_core::wire::ClaimBody;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const CLIENTS: usize = 64;
const ROUNDS: usize = 25;
const UNIQUE_KEYS: usize = 4;

/// What a client expects of a job it finished.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Completed,
    Dead,
}

#[derive(Default)]
struct Seen {
    /// Per unique key: every id answered for it, and how many answers were not duplicates.
    unique: HashMap<String, (HashSet<uuid::Uuid>, usize)>,
    /// Every job a client finished, with the state it must be in.
    finished: Vec<(uuid::Uuid, Expect)>,
    stale_refused: usize,
}

fn code(e: &ClientError) -> String {
    match e {
        ClientError::Api { error, .. } => error.code.as_str().to_string(),
        other => format!("{other}"),
    }
}

async fn mixed_clients(url: &str) -> Seen {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let (client, seen) = (Client::new(url), seen.clone());
        tasks.spawn(async move {
            let queue = format!("gc-{c}");
            for round in 0..ROUNDS {
                // A plain job of its own queue: enqueue, claim, then one of four endings.
                let id =
                    client.enqueue(&JobSpec { queue: queue.clone(), ..Default::default() }).await.unwrap().id;
                let body = ClaimBody { worker: Some(format!("w{c}")), max: Some(1), ..Default::default() };
                let jobs = client.claim(&queue, &body).await.unwrap();
                assert_eq!(jobs.len(), 1, "client {c} round {round}: its own queue holds its one job");
                let job = &jobs[0];
                assert_eq!(job.id, id);
                let expect = match (c + round) % 4 {
                    0 => {
                        client.complete(id, &job.lease, None).await.unwrap();
                        Expect::Completed
                    }
                    1 => {
                        // A lease that is not this job's: refused, and the job stays running.
                        let wrong = format!(
                            "{}.00000000000000000000000000000000",
                            job.lease.split('.').next().unwrap()
                        );
                        let e = client.complete(id, &wrong, None).await.unwrap_err();
                        assert_eq!(code(&e), "stale_lease", "client {c} round {round}");
                        seen.lock().unwrap().stale_refused += 1;
                        let j = client.get_job(&id.to_string()).await.unwrap();
                        assert_eq!(j.state, JobState::Running, "a refused completion changed nothing");
                        client.complete(id, &job.lease, None).await.unwrap();
                        Expect::Completed
                    }
                    2 => {
                        let out = client.fail(id, &job.lease, "boom 42", false).await.unwrap();
                        assert_eq!(out.state, JobState::Dead);
                        Expect::Dead
                    }
                    _ => {
                        client.heartbeat(id, &job.lease, Some(60_000)).await.unwrap();
                        client.complete(id, &job.lease, None).await.unwrap();
                        Expect::Completed
                    }
                };
                seen.lock().unwrap().finished.push((id, expect));

                // A unique key that every client races for.
                let key = format!("k{}", round % UNIQUE_KEYS);
                let spec = JobSpec {
                    queue: "gc-unique".into(),
                    unique_key: Some(key.clone()),
                    ..Default::default()
                };
                let r = client.enqueue(&spec).await.unwrap();
                {
                    let mut s = seen.lock().unwrap();
                    let entry = s.unique.entry(key).or_default();
                    entry.0.insert(r.id);
                    entry.1 += usize::from(!r.duplicate);
                }

                // A job refused for a dependency that does not exist: nothing of it is kept.
                let spec = JobSpec {
                    queue: "gc-refused".into(),
                    depends_on: Some(vec![uuid::Uuid::now_v7().to_string()]),
                    ..Default::default()
                };
                let e = client.enqueue(&spec).await.unwrap_err();
                assert_eq!(code(&e), "validation_failed", "client {c} round {round}: {e}");
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("a client failed");
    }
    Arc::try_unwrap(seen).ok().expect("clients done").into_inner().unwrap()
}

/// Checks every acknowledged outcome against the server, and that requests shared
/// transactions (the batch-size histogram's mean is above 1).
async fn verify(url: &str, seen: &Seen) {
    let client = Client::new(url);
    assert_eq!(seen.finished.len(), CLIENTS * ROUNDS);
    assert_eq!(seen.stale_refused, CLIENTS * ROUNDS / 4);
    for (id, expect) in &seen.finished {
        let job = client.get_job(&id.to_string()).await.unwrap();
        let want = match expect {
            Expect::Completed => JobState::Completed,
            Expect::Dead => JobState::Dead,
        };
        assert_eq!(job.state, want, "job {id}");
        assert_eq!(job.attempt, 1, "job {id} was run once");
    }
    for (key, (ids, fresh)) in &seen.unique {
        assert_eq!(ids.len(), 1, "key {key}: every enqueue named one live job, got {ids:?}");
        assert_eq!(*fresh, 1, "key {key}: exactly one enqueue created it");
    }
    let unique = client.list_jobs(Some("gc-unique"), None, Some(100), None).await.unwrap();
    assert_eq!(unique.jobs.len(), UNIQUE_KEYS, "one job per unique key");
    let refused = client.list_jobs(Some("gc-refused"), None, Some(100), None).await.unwrap();
    assert!(refused.jobs.is_empty(), "a refused enqueue left {} jobs", refused.jobs.len());

    let metrics = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics"))
    };
    let (sum, count) = (value("ferry_store_batch_size_sum"), value("ferry_store_batch_size_count"));
    assert!(count > 0.0 && sum / count > 1.5, "requests did not share transactions: {sum} / {count}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_batch_mates_each_get_their_own_answer() {
    let Some(db) = TestDb::create("ferry_gc").await else { return };
    let server = Server::start_with(&["--database", &db.url], tempfile::tempdir().unwrap());
    let seen = mixed_clients(&server.url).await;
    verify(&server.url, &seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_batch_mates_each_get_their_own_answer() {
    let server = Server::start();
    let seen = mixed_clients(&server.url).await;
    verify(&server.url, &seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_batch_loses_no_acknowledged_write() {
    let Some(db) = TestDb::create("ferry_gck").await else { return };
    let mut doomed = Server::start_with(&["--database", &db.url], tempfile::tempdir().unwrap());
    let survivor = Server::start_with(&["--database", &db.url], tempfile::tempdir().unwrap());
    let acked: Arc<Mutex<Vec<uuid::Uuid>>> = Arc::default();
    let leased: Arc<Mutex<Vec<uuid::Uuid>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let (client, acked, leased) = (Client::new(&doomed.url), acked.clone(), leased.clone());
        tasks.spawn(async move {
            for _ in 0..10_000 {
                let spec = JobSpec { queue: "gck".into(), lease_ms: Some(60_000), ..Default::default() };
                match client.enqueue(&spec).await {
                    Ok(r) => acked.lock().unwrap().push(r.id),
                    Err(_) => return,
                }
                if c % 2 == 0 {
                    let body =
                        ClaimBody { worker: Some(format!("k{c}")), max: Some(1), ..Default::default() };
                    match client.claim("gck", &body).await {
                        Ok(jobs) => leased.lock().unwrap().extend(jobs.iter().map(|j| j.id)),
                        Err(_) => return,
                    }
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    doomed.kill();
    while tasks.join_next().await.is_some() {}
    let acked = acked.lock().unwrap().clone();
    let leased = leased.lock().unwrap().clone();
    assert!(acked.len() > 500, "too little load before the kill: {}", acked.len());

    let client = Client::new(&survivor.url);
    for id in &acked {
        client.get_job(&id.to_string()).await.unwrap_or_else(|e| panic!("acknowledged job {id} lost: {e}"));
    }
    let distinct: HashSet<_> = leased.iter().collect();
    assert_eq!(distinct.len(), leased.len(), "a job was leased twice");
    // What the survivor hands out now was never handed out before (leases last 60 s).
    let body = ClaimBody { worker: Some("after".into()), max: Some(1_000), ..Default::default() };
    let again = client.claim("gck", &body).await.unwrap();
    for j in &again {
        assert!(!distinct.contains(&j.id), "job {} leased twice across the kill", j.id);
    }
}
