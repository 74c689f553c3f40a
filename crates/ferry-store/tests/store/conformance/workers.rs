//! The worker registry part of the `Store` contract: workers are recorded as they are heard
//! from, with their jobs in flight; a worker silent past the cut-off is lost, and its leases
//! are released as expired leases are.

use super::{Harness, T0, complete, enqueue1, fail, job, job_with, state};
use ferry_core::*;
use ferry_store::LostWorker;
use std::time::{Duration, Instant};
use uuid::Uuid;

pub async fn claim_as(h: &Harness, queue: &str, worker: &str, max: usize) -> Vec<ClaimedJob> {
    h.store
        .claim(ClaimRequest { queue: queue.into(), worker: worker.into(), max, lease_ms: None })
        .await
        .unwrap()
}

fn worker<'a>(ws: &'a [WorkerInfo], name: &str) -> &'a WorkerInfo {
    ws.iter().find(|w| w.name == name).unwrap_or_else(|| panic!("worker {name} not listed"))
}

pub async fn workers_registry_and_in_flight(h: Harness) {
    assert!(h.store.list_workers().await.unwrap().is_empty());
    h.store
        .touch_workers(vec![("w2".into(), T0 + 5), ("w1".into(), T0), ("w1".into(), T0 + 3)])
        .await
        .unwrap();
    h.store.touch_workers(vec![("w1".into(), T0 + 1)]).await.unwrap();
    h.store.touch_workers(Vec::new()).await.unwrap();
    let ws = h.store.list_workers().await.unwrap();
    assert_eq!(ws.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(), ["w1", "w2"]);
    let w1 = worker(&ws, "w1");
    assert_eq!((w1.first_seen_ms, w1.last_seen_ms), (T0, T0 + 3), "last_seen only moves forward");
    assert_eq!(worker(&ws, "w2").first_seen_ms, T0 + 5);
    assert_eq!((w1.status, w1.jobs_in_flight), (WorkerStatus::Active, 0));
    h.store.enqueue((0..4).map(|_| job("q")).collect()).await.unwrap();
    let by_w1 = claim_as(&h, "q", "w1", 2).await;
    claim_as(&h, "q", "w2", 1).await;
    let ws = h.store.list_workers().await.unwrap();
    assert_eq!((worker(&ws, "w1").jobs_in_flight, worker(&ws, "w2").jobs_in_flight), (2, 1));
    complete(&h, by_w1[0].id, &by_w1[0].lease).await.unwrap();
    let ws = h.store.list_workers().await.unwrap();
    assert_eq!(worker(&ws, "w1").jobs_in_flight, 1, "finished jobs are not in flight");
    h.finish().await;
}

pub async fn lost_workers_release_their_leases(h: Harness) {
    h.store.touch_workers(vec![("w1".into(), T0), ("w2".into(), T0 + 10_000)]).await.unwrap();
    let a = enqueue1(&h, job("q")).await;
    let b = enqueue1(&h, job_with(|s| s.max_attempts = Some(1))).await;
    let dependant = enqueue1(&h, job_with(|s| s.depends_on = Some(vec![b.to_string()]))).await;
    let held = claim_as(&h, "q", "w1", 2).await;
    assert_eq!(held.iter().map(|j| j.id).collect::<Vec<_>>(), [a, b]);
    let other = enqueue1(&h, job("q")).await;
    let kept = claim_as(&h, "q", "w2", 1).await;
    assert_eq!(kept[0].id, other);
    h.clock.advance(20_000); // the leases (30 s) are still live
    let lost = h.store.release_lost_workers(T0 + 5_000, 10).await.unwrap();
    let w1_lost = LostWorker { name: "w1".into(), leases_released: 2 };
    assert_eq!(lost, vec![w1_lost], "only the worker silent since before the cut-off, with its leases");
    // Its jobs come back at once, handled as expired leases are.
    let ja = h.store.get_job(a).await.unwrap();
    assert_eq!((ja.state, ja.attempt, ja.errors.len()), (JobState::Ready, 1, 1));
    assert_eq!(ja.errors[0].kind, "worker_lost");
    assert_eq!(ja.errors[0].worker.as_deref(), Some("w1"));
    assert_eq!(ja.errors[0].at, Timestamp(T0 + 20_000));
    assert!(ja.lease_expires_at.is_none());
    assert_eq!(state(&h, b).await, JobState::Dead, "no attempt left: dead");
    assert_eq!(state(&h, dependant).await, JobState::Cancelled, "and its dependants cancelled");
    let again = claim_as(&h, "q", "w3", 10).await;
    assert_eq!(again.iter().map(|j| j.id).collect::<Vec<_>>(), [a], "claimable at once");
    assert_eq!(again[0].attempt, 2);
    assert_eq!(complete(&h, a, &held[0].lease).await.unwrap_err().code, ErrorCode::StaleLease);
    assert_eq!(fail(&h, b, &held[1].lease, true).await.unwrap_err().code, ErrorCode::StaleLease);
    complete(&h, a, &again[0].lease).await.unwrap();
    // The same events as the reaper's. PostgreSQL numbers events after commit: wait for the
    // newest one (a's completion), then every earlier one is there too.
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let all = h.store.read_events(0, 100_000).await.unwrap();
        if all.iter().any(|e| e.job_id == Some(a) && e.kind == EventType::JobCompleted) {
            break all;
        }
        assert!(Instant::now() < deadline, "a's completion event never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let of = |id: Uuid| {
        events
            .iter()
            .filter(|e| e.job_id == Some(id))
            .map(|e| e.kind.as_str())
            .filter(|k| !matches!(*k, "job.enqueued" | "job.started" | "job.completed"))
            .collect::<Vec<_>>()
    };
    assert_eq!(of(a), ["job.failed", "job.retried"]);
    assert_eq!(of(b), ["job.failed", "job.dead"]);
    assert_eq!(of(dependant), ["job.cancelled"]);
    let failed = events.iter().find(|e| e.job_id == Some(a) && e.kind == EventType::JobFailed).unwrap();
    assert_eq!(failed.data.as_ref().unwrap()["error"], "worker lost");
    // The active worker and its job are untouched.
    let ws = h.store.list_workers().await.unwrap();
    assert_eq!((worker(&ws, "w1").status, worker(&ws, "w1").jobs_in_flight), (WorkerStatus::Lost, 0));
    assert_eq!((worker(&ws, "w2").status, worker(&ws, "w2").jobs_in_flight), (WorkerStatus::Active, 1));
    assert_eq!(state(&h, other).await, JobState::Running);
    complete(&h, other, &kept[0].lease).await.unwrap();
    // Lost once is not lost twice; heard from again, it is active again.
    assert!(h.store.release_lost_workers(T0 + 5_000, 10).await.unwrap().is_empty());
    h.store.touch_workers(vec![("w1".into(), T0 + 20_000)]).await.unwrap();
    let ws = h.store.list_workers().await.unwrap();
    assert_eq!(
        (worker(&ws, "w1").status, worker(&ws, "w1").last_seen_ms),
        (WorkerStatus::Active, T0 + 20_000)
    );
    // `max` bounds one pass.
    h.store.touch_workers((0..5).map(|i| (format!("x{i}"), T0)).collect()).await.unwrap();
    let first = h.store.release_lost_workers(T0 + 1, 3).await.unwrap();
    assert_eq!(first.len(), 3);
    assert!(first.iter().all(|w| w.leases_released == 0), "idle workers held nothing: {first:?}");
    assert_eq!(h.store.release_lost_workers(T0 + 1, 3).await.unwrap().len(), 2);
    h.finish().await;
}

/// Every rule above: `conformance_tests!` runs each against every backend. A rule missing
/// here is never called, and `dead_code` fails the build.
macro_rules! workers_rules {
    () => {
        domain_tests!(workers:
            workers_registry_and_in_flight, lost_workers_release_their_leases,
        );
    };
}
