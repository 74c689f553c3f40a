//! The store-wide part of the `Store` contract: the reported storage size, and the background
//! maintenance loops (reaper, scheduler, retention) running against the store. The store's
//! invariants (`check_invariants` finds nothing) are checked at the end of every rule of every
//! domain, by `Harness::finish`.

use super::{Harness, claim_one, complete, enqueue1, job, job_with, state, waiter};
use ferry_core::*;
use serde_json::value::RawValue;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The reported size is real: it grows when thousands of jobs with payloads arrive.
pub async fn storage_bytes_grow_with_data(h: Harness) {
    let before = h.store.storage_bytes().await.unwrap();
    assert!(before > 0, "an opened store occupies some bytes");
    // Random hex, so that no backend can compress it away.
    let jobs: Vec<NewJob> = (0..2_000)
        .map(|_| {
            let hex: String = (0..60).map(|_| Uuid::new_v4().simple().to_string()).collect();
            let mut j = job("sized");
            j.payload = RawValue::from_string(format!("\"{hex}\"")).unwrap();
            j
        })
        .collect();
    h.store.enqueue(jobs).await.unwrap();
    let after = h.store.storage_bytes().await.unwrap();
    assert!(after >= before + 2_000_000, "3.8 MB of payloads: {before} -> {after} bytes");
    h.finish().await;
}

pub async fn maintenance_loops_run(h: Harness) {
    use ferry_store::maintenance::{Maintenance, MaintenanceConfig};
    let cfg = MaintenanceConfig {
        reap_interval_ms: 20,
        promote_interval_ms: 20,
        retention_ms: 1_000,
        prune_interval_ms: 20,
        batch: 2,
        ..Default::default()
    };
    let m = Maintenance::spawn(h.store.clone(), cfg);
    // Reaper: an expired lease comes back without anyone calling reap.
    let id = enqueue1(&h, job_with(|s| s.lease_ms = Some(100))).await;
    claim_one(&h, "q").await;
    h.clock.advance(100);
    let deadline = Instant::now() + Duration::from_secs(5);
    while state(&h, id).await != JobState::Ready {
        assert!(Instant::now() < deadline, "reaper did not requeue the job");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Scheduler: a delayed job becomes ready and wakes a waiter.
    let delayed = enqueue1(
        &h,
        job_with(|s| {
            s.queue = "later".into();
            s.delay_ms = Some(1_000);
        }),
    )
    .await;
    let t = waiter(&h, "later").await;
    let started = Instant::now();
    h.clock.advance(1_000);
    h.store.notifier().due_at(h.clock.now_ms());
    let (jobs, _) =
        tokio::time::timeout(Duration::from_secs(5), t).await.expect("scheduler promoted").unwrap();
    assert_eq!(jobs[0].id, delayed);
    assert!(started.elapsed() < Duration::from_secs(2));
    // Retention: five old completed jobs go, in batches of two.
    for _ in 0..5 {
        let id = enqueue1(&h, job("r")).await;
        let c = claim_one(&h, "r").await;
        complete(&h, id, &c.lease).await.unwrap();
    }
    h.clock.advance(5_000);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let page = h
            .store
            .list_jobs(
                JobFilter { queue: Some("r".into()), state: None },
                PageRequest { limit: 10, cursor: None },
            )
            .await
            .unwrap();
        if page.items.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "retention did not prune");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    m.shutdown().await;
    h.finish().await;
}

/// Every rule above: `conformance_tests!` runs each against every backend. A rule missing
/// here is never called, and `dead_code` fails the build.
macro_rules! core_rules {
    () => {
        domain_tests!(core:
            storage_bytes_grow_with_data, maintenance_loops_run,
        );
    };
}
