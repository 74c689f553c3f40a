//! The event log part of the `Store` contract: every state change is an event, stored and
//! published on the bus in the same order, with gap-free cursors under concurrent writers;
//! pruning never removes the newest event, so cursors carry on.

use super::{Harness, claim_one, complete, enqueue1, events_after, fail, job, job_with};
use ferry_core::*;
use std::collections::HashSet;
use std::time::Duration;
use uuid::Uuid;

/// Every state change is an event, in order, with the job's queue and tags.
pub async fn events_record_every_transition(h: Harness) {
    let start = h.store.events().head();
    let mut bus = h.store.events().subscribe();
    let tagged = enqueue1(&h, job_with(|s| s.tags = Some(vec!["vip".into()]))).await;
    let c = claim_one(&h, "q").await;
    complete(&h, c.id, &c.lease).await.unwrap();
    let failing = enqueue1(&h, job_with(|s| s.max_attempts = Some(2))).await;
    let c = claim_one(&h, "q").await;
    fail(&h, c.id, &c.lease, true).await.unwrap();
    h.clock.advance(3_600_000);
    h.store.promote_due(100).await.unwrap();
    let c = claim_one(&h, "q").await;
    fail(&h, c.id, &c.lease, true).await.unwrap();
    h.store.replay_dead(DeadSelector::Ids(vec![failing]), 10).await.unwrap();
    let cancelled = enqueue1(&h, job_with(|s| s.delay_ms = Some(60_000))).await;
    h.store.cancel(cancelled, "no longer needed").await.unwrap();
    h.store.set_paused("q", true).await.unwrap();
    h.store.set_paused("q", false).await.unwrap();
    let got = events_after(&h, start, 15).await;
    let kinds: Vec<&str> = got.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "job.enqueued",
            "job.started",
            "job.completed",
            "job.enqueued",
            "job.started",
            "job.failed",
            "job.retried",
            "job.started",
            "job.failed",
            "job.dead",
            "job.replayed",
            "job.enqueued",
            "job.cancelled",
            "queue.paused",
            "queue.resumed"
        ]
    );
    for (i, e) in got.iter().enumerate() {
        assert_eq!(e.cursor, start + 1 + i as u64, "cursors grow by one");
        assert_eq!(e.queue.as_deref(), Some("q"));
    }
    assert_eq!(got[0].job_id, Some(tagged));
    assert_eq!(got[2].tags, vec!["vip".to_string()], "a completion carries the job's tags");
    assert_eq!(got[5].data.as_ref().unwrap()["attempt"], 1);
    assert_eq!(got[9].job_id, Some(failing));
    // The bus saw the same events, in the same order.
    let mut live = Vec::new();
    while live.len() < got.len() {
        let batch = tokio::time::timeout(Duration::from_secs(10), bus.recv()).await.unwrap().unwrap();
        live.extend(batch.iter().cloned());
    }
    assert_eq!(live, got);
    // Resuming mid-way yields exactly the rest.
    let rest = h.store.read_events(start + 7, 100).await.unwrap();
    assert_eq!(rest, got[7..].to_vec());
    assert_eq!(h.store.read_events(start + 7, 3).await.unwrap(), got[7..10].to_vec());
    h.finish().await;
}

/// Concurrent writers: the stored log and the bus both hold every event exactly once, with
/// cursors 1, 2, 3... in the order the bus published them.
pub async fn events_cursor_is_gap_free_under_concurrency(h: Harness) {
    let start = h.store.events().head();
    let mut bus = h.store.events().subscribe();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = h.store.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let jobs = (0..4).map(|_| job(&format!("c{t}"))).collect();
                store.enqueue(jobs).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stored = events_after(&h, start, 800).await;
    assert_eq!(stored.len(), 800);
    let mut live = Vec::new();
    while live.len() < 800 {
        let batch = tokio::time::timeout(Duration::from_secs(10), bus.recv()).await.unwrap().unwrap();
        live.extend(batch.iter().cloned());
    }
    assert_eq!(live, stored);
    let ids: HashSet<Uuid> = stored.iter().filter_map(|e| e.job_id).collect();
    assert_eq!(ids.len(), 800, "one event per job");
    for (i, e) in stored.iter().enumerate() {
        assert_eq!(e.cursor, start + 1 + i as u64);
    }
    h.finish().await;
}

/// Pruning removes old batches but never the newest, so cursors carry on after it.
pub async fn events_prune_keeps_the_newest(h: Harness) {
    for _ in 0..5 {
        enqueue1(&h, job("p")).await;
        h.clock.advance(1_000);
    }
    let all = events_after(&h, 0, 5).await;
    let last = all.last().unwrap().cursor;
    // By age: everything older than now is eligible, yet the newest batch stays.
    let mut pruned = 0;
    loop {
        let n = h
            .store
            .prune_events(ferry_store::EventPrune { before_ms: h.clock.now_ms() + 1, keep: u64::MAX, max: 2 })
            .await
            .unwrap();
        pruned += n;
        if n == 0 {
            break;
        }
    }
    assert!(pruned >= 4, "old batches go: {pruned}");
    let left = h.store.read_events(0, 100).await.unwrap();
    assert_eq!(left.last().map(|e| e.cursor), Some(last), "the newest event stays");
    enqueue1(&h, job("p")).await;
    let next = events_after(&h, last, 1).await;
    assert_eq!(next[0].cursor, last + 1, "cursors continue after pruning");
    // By count: keep the newest 1 event.
    enqueue1(&h, job("p")).await;
    events_after(&h, last + 1, 1).await;
    h.store.prune_events(ferry_store::EventPrune { before_ms: 0, keep: 1, max: 100 }).await.unwrap();
    let left = h.store.read_events(0, 100).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].cursor, last + 2);
    h.finish().await;
}

/// Every rule above: `conformance_tests!` runs each against every backend. A rule missing
/// here is never called, and `dead_code` fails the build.
macro_rules! events_rules {
    () => {
        domain_tests!(events:
            events_record_every_transition, events_cursor_is_gap_free_under_concurrency,
            events_prune_keeps_the_newest,
        );
    };
}
