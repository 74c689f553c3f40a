//! Several `ferry serve` processes on one PostgreSQL database: 100,000 jobs from producers
//! spread over three nodes, worked by 16 SDK workers spread over them; one node is SIGKILLed
//! mid-run, its leases expire, and the other nodes finish every job. Nothing is lost and every
//! completion is recorded once.
//!
//! Needs PostgreSQL (`FERRY_TEST_PG_URL`, default `postgres://postgres@127.0.0.1:5432/postgres`):
//! skipped with a printed reason without it, unless `FERRY_REQUIRE_PG=1`.

use crate::common::Server;
use crate::common::pg::TestDb;
use ferry_client::{Client, Worker};
use ferry_core::JobState;
use ferry_core::validate::JobSpec;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const JOBS: usize = 100_000;
const WORKERS: usize = 16;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_finish_every_job_after_one_is_killed() {
    let Some(db) = TestDb::create("ferry_mn").await else { return };
    let mut nodes: Vec<Server> =
        (0..3).map(|_| Server::start_with(&["--database", &db.url], tempfile::tempdir().unwrap())).collect();
    let clients: Vec<Client> = nodes.iter().map(|n| Client::new(&n.url)).collect();

    // Producers: 100 batches of 1,000, spread over the three nodes.
    let mut producers = tokio::task::JoinSet::new();
    for p in 0..4usize {
        let clients = clients.clone();
        producers.spawn(async move {
            let mut ids = Vec::new();
            for b in (p..JOBS / 1_000).step_by(4) {
                let jobs: Vec<JobSpec> = (0..1_000)
                    .map(|_| JobSpec { queue: "mn".into(), lease_ms: Some(3_000), ..Default::default() })
                    .collect();
                ids.extend(clients[b % 3].enqueue_batch(&jobs).await.unwrap().ids);
            }
            ids
        });
    }

    // 16 SDK workers: 6 on node 0, 5 on node 1, 5 on node 2 (the one that dies).
    let runs: Arc<Mutex<HashMap<uuid::Uuid, u32>>> = Arc::default();
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let node = [0, 1, 2][w % 3];
        let runs = runs.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let worker = Worker::new(clients[node].clone(), format!("mn-{w}"))
            .concurrency(8)
            .claim_batch(50)
            .handle("mn", move |ctx| {
                let runs = runs.clone();
                async move {
                    *runs.lock().unwrap().entry(ctx.id).or_default() += 1;
                    Ok(None)
                }
            });
        let handle = tokio::spawn(worker.run(async move {
            let _ = stop_rx.await;
        }));
        workers.push((node, stop_tx, handle));
    }

    let mut enqueued = Vec::new();
    while let Some(ids) = producers.join_next().await {
        enqueued.extend(ids.unwrap());
    }
    assert_eq!(enqueued.len(), JOBS);

    // Kill node 2 once a good share of the work is done; its workers go with it.
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = completed(&clients[0]).await;
        if done >= (JOBS / 10) as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "too slow before the kill: {done} done");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nodes[2].kill();
    let mut survivors = Vec::new();
    for (node, stop, handle) in workers {
        if node == 2 {
            handle.abort();
        } else {
            survivors.push((stop, handle));
        }
    }

    // The other nodes reap the dead node's leases and finish every job.
    let deadline = Instant::now() + Duration::from_secs(400);
    loop {
        let done = completed(&clients[0]).await;
        if done == JOBS as u64 {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of {JOBS} jobs completed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (stop, handle) in survivors {
        let _ = stop.send(());
        let _ = handle.await;
    }
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), JOBS, "every job ran");
    let reruns = runs.values().filter(|n| **n > 1).count();
    eprintln!("multi-node: {JOBS} jobs, {reruns} ran again after the kill (at-least-once)");
    // Exactly-once recording: each job is completed once, none is left in another state.
    let q = clients[1].queues().await.unwrap().queues.into_iter().find(|q| q.queue == "mn").unwrap();
    assert_eq!(q.counts[&JobState::Completed], JOBS as u64);
    assert_eq!(q.counts.values().sum::<u64>(), JOBS as u64, "{:?}", q.counts);
    for id in enqueued.iter().step_by(997) {
        let j = clients[0].get_job(&id.to_string()).await.unwrap();
        assert_eq!(j.state, JobState::Completed);
    }
    for n in nodes.iter_mut().take(2) {
        assert!(n.stop().success());
    }
    drop(db);
}

async fn completed(c: &Client) -> u64 {
    c.queues()
        .await
        .ok()
        .and_then(|r| r.queues.into_iter().find(|q| q.queue == "mn"))
        .map_or(0, |q| q.counts.get(&JobState::Completed).copied().unwrap_or(0))
}
