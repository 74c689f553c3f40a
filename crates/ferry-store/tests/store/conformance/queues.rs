//! The queue part of the `Store` contract: pausing and resuming a queue, the per-state counts
//! of `queue_stats`, and flow limits (`max_running`, the start rate; setting, listing and
//! clearing a queue's limits).

use super::{Harness, claim, claim_one, complete, enqueue1, fail, job, job_with, make_dead, no_backoff};
use ferry_core::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

// ---------- pause ----------

pub async fn pause_and_resume(h: Harness) {
    enqueue1(&h, job("q")).await;
    h.store.set_paused("q", true).await.unwrap();
    assert!(claim(&h, "q", 1).await.is_empty(), "a paused queue hands out nothing");
    let stats = h.store.queue_stats().await.unwrap();
    assert!(stats.iter().find(|s| s.queue == "q").unwrap().paused);
    // Pausing a queue that has no jobs yet works too.
    h.store.set_paused("empty", true).await.unwrap();
    assert!(h.store.queue_stats().await.unwrap().iter().any(|s| s.queue == "empty" && s.paused));
    h.store.set_paused("q", false).await.unwrap();
    assert_eq!(claim(&h, "q", 1).await.len(), 1);
    assert!(!h.store.queue_stats().await.unwrap().iter().find(|s| s.queue == "q").unwrap().paused);
    h.finish().await;
}

// ---------- stats ----------

pub async fn queue_stats_counts(h: Harness) {
    for _ in 0..3 {
        enqueue1(&h, job("a")).await;
    }
    h.clock.advance(2_000);
    enqueue1(
        &h,
        job_with(|s| {
            s.queue = "a".into();
            s.delay_ms = Some(10_000);
        }),
    )
    .await;
    let c = claim_one(&h, "a").await;
    complete(&h, c.id, &c.lease).await.unwrap();
    claim_one(&h, "a").await;
    make_dead(&h, "b").await;
    let stats = h.store.queue_stats().await.unwrap();
    let a = stats.iter().find(|s| s.queue == "a").unwrap();
    let count = |s: &QueueStats, st: JobState| s.counts[&st];
    assert_eq!(count(a, JobState::Ready), 1);
    assert_eq!(count(a, JobState::Running), 1);
    assert_eq!(count(a, JobState::Completed), 1);
    assert_eq!(count(a, JobState::Scheduled), 1);
    assert_eq!(count(a, JobState::Dead), 0);
    assert_eq!(a.counts.len(), JobState::ALL.len());
    assert_eq!(a.oldest_ready_age_ms, Some(2_000));
    let b = stats.iter().find(|s| s.queue == "b").unwrap();
    assert_eq!(count(b, JobState::Dead), 1);
    assert_eq!(b.oldest_ready_age_ms, None);
    h.finish().await;
}

// ---------- flow limits ----------

fn running_limit(n: u32) -> QueueLimits {
    QueueLimits { max_running: Some(n), ..Default::default() }
}

fn rate_limit(r: f64) -> QueueLimits {
    QueueLimits { max_starts_per_sec: Some(r), ..Default::default() }
}

/// `max_running`: a claim gets at most the free slots; every way out of `running` frees one.
pub async fn limits_max_running(h: Harness) {
    h.store.enqueue((0..10).map(|_| job_with(|s| s.backoff = Some(no_backoff()))).collect()).await.unwrap();
    h.store.enqueue((0..5).map(|_| job("free")).collect()).await.unwrap();
    h.store.set_queue_limits("q", running_limit(3)).await.unwrap();
    let first = claim(&h, "q", 10).await;
    assert_eq!(first.len(), 3, "only max_running jobs start");
    assert!(claim(&h, "q", 10).await.is_empty(), "no slot left: an empty claim, not an error");
    let free = claim(&h, "free", 10).await;
    assert_eq!(free.len(), 5, "other queues are not limited");
    for j in &free {
        complete(&h, j.id, &j.lease).await.unwrap();
    }
    complete(&h, first[0].id, &first[0].lease).await.unwrap();
    assert_eq!(claim(&h, "q", 10).await.len(), 1, "a completion frees one slot");
    assert!(claim(&h, "q", 1).await.is_empty());
    fail(&h, first[1].id, &first[1].lease, true).await.unwrap();
    assert_eq!(claim(&h, "q", 10).await.len(), 1, "a failure frees one slot");
    h.store.release(first[2].id, &first[2].lease).await.unwrap();
    assert_eq!(claim(&h, "q", 10).await.len(), 1, "a release frees one slot");
    h.clock.advance(30_000);
    assert_eq!(h.store.reap_expired(100).await.unwrap().requeued, 3);
    assert_eq!(claim(&h, "q", 10).await.len(), 3, "reaped leases free their slots");
    let stats = h.store.queue_stats().await.unwrap();
    let q = stats.iter().find(|s| s.queue == "q").unwrap();
    assert_eq!((q.counts[&JobState::Running], q.limits), (3, running_limit(3)));
    // Zero: nothing starts.
    h.store.set_queue_limits("q", running_limit(0)).await.unwrap();
    h.clock.advance(30_000);
    h.store.reap_expired(100).await.unwrap();
    assert!(claim(&h, "q", 10).await.is_empty());
    h.finish().await;
}

/// `max_running` holds at every moment under concurrent claimers.
pub async fn limits_max_running_concurrent(h: Harness) {
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering::SeqCst};
    const JOBS: usize = 300;
    const CAP: u32 = 3;
    h.store.set_queue_limits("q", running_limit(CAP)).await.unwrap();
    h.store.enqueue((0..JOBS).map(|_| job("q")).collect()).await.unwrap();
    let done = Arc::new(AtomicUsize::new(0));
    // Claimed and not yet being completed: never more than what is really running.
    let held = Arc::new(AtomicI64::new(0));
    let peak = Arc::new(AtomicI64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (store, stop) = (h.store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut samples = 0;
            while !stop.load(SeqCst) {
                let stats = store.queue_stats().await.unwrap();
                let running =
                    stats.iter().find(|s| s.queue == "q").map_or(0, |s| s.counts[&JobState::Running]);
                assert!(running <= CAP as u64, "{running} jobs running with max_running = {CAP}");
                samples += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            samples
        })
    };
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (store, done, held, peak) = (h.store.clone(), done.clone(), held.clone(), peak.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while done.load(SeqCst) < JOBS {
                let req = ClaimRequest { queue: "q".into(), worker: format!("w{w}"), max: 4, lease_ms: None };
                let jobs = store.claim(req).await.unwrap();
                if jobs.is_empty() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                assert!(jobs.len() <= CAP as usize);
                let now = held.fetch_add(jobs.len() as i64, SeqCst) + jobs.len() as i64;
                peak.fetch_max(now, SeqCst);
                assert!(now <= i64::from(CAP), "{now} jobs held with max_running = {CAP}");
                tokio::task::yield_now().await;
                held.fetch_sub(jobs.len() as i64, SeqCst);
                let items = jobs
                    .iter()
                    .map(|j| CompleteItem { id: j.id, lease: j.lease.clone(), result: None, pressure: None })
                    .collect();
                for r in store.complete(items).await.unwrap() {
                    r.unwrap();
                }
                done.fetch_add(jobs.len(), SeqCst);
                seen.extend(jobs.into_iter().map(|j| j.id));
            }
            seen
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    stop.store(true, SeqCst);
    assert!(sampler.await.unwrap() > 0);
    assert_eq!(all.len(), JOBS);
    assert_eq!(all.iter().collect::<HashSet<_>>().len(), JOBS, "no job claimed twice");
    assert!(peak.load(SeqCst) >= 1);
    h.finish().await;
}

/// `max_starts_per_sec`: a token bucket (burst `max(1, rate)`) on the store's clock.
pub async fn limits_start_rate(h: Harness) {
    h.store.enqueue((0..10).map(|_| job("q")).collect()).await.unwrap();
    h.store.set_queue_limits("q", rate_limit(3.0)).await.unwrap();
    assert_eq!(claim(&h, "q", 10).await.len(), 3, "a full bucket: the burst");
    assert!(claim(&h, "q", 10).await.is_empty(), "an empty bucket: nothing");
    h.clock.advance(1_000);
    assert_eq!(claim(&h, "q", 10).await.len(), 3, "one second refills the rate");
    h.clock.advance(500);
    assert_eq!(claim(&h, "q", 10).await.len(), 1, "1.5 tokens start one job");
    h.clock.advance(500);
    assert_eq!(claim(&h, "q", 10).await.len(), 2, "the half token is kept");
    h.clock.advance(1_000);
    assert_eq!(claim(&h, "q", 1).await.len(), 1, "a claim takes only the tokens it uses");
    assert_eq!(claim(&h, "q", 10).await.len(), 0, "nothing ready is left");
    // Below one start per second the burst is one.
    h.store.enqueue((0..5).map(|_| job("slow")).collect()).await.unwrap();
    h.store.set_queue_limits("slow", rate_limit(0.5)).await.unwrap();
    assert_eq!(claim(&h, "slow", 10).await.len(), 1);
    h.clock.advance(1_000);
    assert!(claim(&h, "slow", 10).await.is_empty());
    h.clock.advance(1_000);
    assert_eq!(claim(&h, "slow", 10).await.len(), 1);
    // A long idle time refills only up to the burst.
    h.clock.advance(60_000);
    assert_eq!(claim(&h, "slow", 10).await.len(), 1);
    // Both limits: the smaller allowance wins.
    h.store.enqueue((0..10).map(|_| job("both")).collect()).await.unwrap();
    let both = QueueLimits { max_running: Some(2), max_starts_per_sec: Some(5.0), max_depth: None };
    h.store.set_queue_limits("both", both).await.unwrap();
    let got = claim(&h, "both", 10).await;
    assert_eq!(got.len(), 2);
    for j in &got {
        complete(&h, j.id, &j.lease).await.unwrap();
    }
    assert_eq!(claim(&h, "both", 10).await.len(), 2);
    assert!(claim(&h, "both", 10).await.is_empty());
    let e = h.store.set_queue_limits("q", rate_limit(-1.0)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::ValidationFailed);
    h.finish().await;
}

/// Limits are listed, shown in the stats, replaced whole and cleared by an empty value.
pub async fn limits_set_list_and_clear(h: Harness) {
    assert!(h.store.queue_limits().await.unwrap().is_empty());
    let all = QueueLimits { max_running: Some(2), max_starts_per_sec: Some(1.5), max_depth: Some(1_000) };
    h.store.set_queue_limits("empty", all).await.unwrap();
    h.store.set_queue_limits("b", running_limit(7)).await.unwrap();
    assert_eq!(
        h.store.queue_limits().await.unwrap(),
        vec![("b".to_string(), running_limit(7)), ("empty".to_string(), all)]
    );
    let stats = h.store.queue_stats().await.unwrap();
    let e = stats.iter().find(|s| s.queue == "empty").expect("a queue with limits is a known queue");
    assert_eq!((e.limits, e.paused), (all, false));
    // Replacing replaces every field.
    h.store
        .set_queue_limits("empty", QueueLimits { max_depth: Some(5), ..Default::default() })
        .await
        .unwrap();
    let stats = h.store.queue_stats().await.unwrap();
    assert_eq!(stats.iter().find(|s| s.queue == "empty").unwrap().limits.max_running, None);
    // Limits and pause live on the same row without disturbing each other.
    h.store.set_paused("b", true).await.unwrap();
    h.store.enqueue((0..10).map(|_| job("b")).collect()).await.unwrap();
    assert!(claim(&h, "b", 10).await.is_empty());
    h.store.set_paused("b", false).await.unwrap();
    assert_eq!(claim(&h, "b", 10).await.len(), 7);
    h.store.set_queue_limits("b", QueueLimits::default()).await.unwrap();
    assert_eq!(claim(&h, "b", 10).await.len(), 3, "cleared: no limit left");
    let listed: Vec<String> = h.store.queue_limits().await.unwrap().into_iter().map(|(q, _)| q).collect();
    assert_eq!(listed, vec!["empty"]);
    let stats = h.store.queue_stats().await.unwrap();
    assert!(stats.iter().find(|s| s.queue == "b").unwrap().limits.is_empty());
    // A rate cleared and set again starts with a full bucket.
    h.store.enqueue((0..10).map(|_| job("r")).collect()).await.unwrap();
    h.store.set_queue_limits("r", rate_limit(2.0)).await.unwrap();
    assert_eq!(claim(&h, "r", 10).await.len(), 2);
    h.store.set_queue_limits("r", QueueLimits::default()).await.unwrap();
    h.store.set_queue_limits("r", rate_limit(2.0)).await.unwrap();
    assert_eq!(claim(&h, "r", 10).await.len(), 2);
    h.finish().await;
}

/// Every rule above: `conformance_tests!` runs each against every backend. A rule missing
/// here is never called, and `dead_code` fails the build.
macro_rules! queues_rules {
    () => {
        domain_tests!(queues:
            pause_and_resume, queue_stats_counts, limits_max_running, limits_max_running_concurrent,
            limits_start_rate, limits_set_list_and_clear,
        );
    };
}
