//! The job part of the `Store` contract: enqueue (batches, payloads kept verbatim, unique keys,
//! dependencies, delays, imports), claim (order, leases, `claim_wait` and what wakes it), the
//! worker's reports (complete, fail, heartbeat, release), cancel, the lease reaper, retention,
//! the dead-letter queue (replay, purge), listing with pagination, and error truncation.

use super::{
    Harness, T0, claim, claim_one, complete, enqueue1, fail, heartbeat, job, job_with, make_dead, no_backoff,
    raw, state, waiter,
};
use ferry_core::*;
use ferry_store::claim_wait;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use uuid::Uuid;

// ---------- enqueue and get ----------

pub async fn enqueue_and_get(h: Harness) {
    let out = h.store.enqueue(vec![job("emails")]).await.unwrap();
    assert_eq!(out.len(), 1);
    assert!(!out[0].duplicate);
    let j = h.store.get_job(out[0].id).await.unwrap();
    assert_eq!(j.id, out[0].id);
    assert_eq!(j.queue, "emails");
    assert_eq!(j.state, JobState::Ready);
    assert_eq!((j.priority, j.attempt, j.max_attempts, j.lease_ms), (0, 0, 5, 30_000));
    assert_eq!(j.backoff, Backoff::default());
    assert_eq!(j.run_at, Timestamp(T0));
    assert_eq!(j.created_at, Timestamp(T0));
    assert!(j.errors.is_empty() && j.result.is_none() && j.lease_expires_at.is_none());
    let missing = h.store.get_job(Uuid::now_v7()).await.unwrap_err();
    assert_eq!(missing.code, ErrorCode::NotFound);
    h.finish().await;
}

pub async fn payload_is_kept_verbatim(h: Harness) {
    let payload = r#"{"b": [1, 2.50, "ü"], "a": null}"#;
    let id = enqueue1(
        &h,
        job_with(|s| {
            s.payload = Some(raw(payload));
            s.tags = Some(vec!["t1".into(), "t2".into()]);
            s.priority = Some(-7);
            s.unique_key = Some("k".into());
        }),
    )
    .await;
    let j = h.store.get_job(id).await.unwrap();
    assert_eq!(j.payload.get(), payload);
    assert_eq!(j.tags, vec!["t1", "t2"]);
    assert_eq!(j.priority, -7);
    assert_eq!(j.unique_key.as_deref(), Some("k"));
    let c = claim_one(&h, "q").await;
    assert_eq!(c.payload.get(), payload);
    assert_eq!(c.tags, vec!["t1", "t2"]);
    h.store
        .complete(vec![CompleteItem {
            id,
            lease: c.lease,
            result: Some(raw(r#"{"ok":true}"#)),
            pressure: None,
        }])
        .await
        .unwrap()[0]
        .clone()
        .unwrap();
    assert_eq!(h.store.get_job(id).await.unwrap().result.unwrap().get(), r#"{"ok":true}"#);
    h.finish().await;
}

pub async fn batch_is_all_or_nothing(h: Harness) {
    let jobs = (0..100).map(|_| job("b")).collect();
    let out = h.store.enqueue(jobs).await.unwrap();
    assert_eq!(out.iter().map(|o| o.id).collect::<HashSet<_>>().len(), 100);
    let mut bad: Vec<NewJob> = (0..5).map(|_| job("b2")).collect();
    bad[2].depends_on = vec![Uuid::now_v7()];
    let e = h.store.enqueue(bad).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::ValidationFailed);
    assert_eq!(e.field.as_deref(), Some("jobs[2].depends_on[0]"));
    let page = h
        .store
        .list_jobs(
            JobFilter { queue: Some("b2".into()), state: None },
            PageRequest { limit: 100, cursor: None },
        )
        .await
        .unwrap();
    assert!(page.items.is_empty(), "a failed batch inserts nothing");
    h.finish().await;
}

// ---------- claim ----------

pub async fn claim_order(h: Harness) {
    let low_old = enqueue1(&h, job_with(|s| s.priority = Some(1))).await;
    h.clock.advance(10);
    let high = enqueue1(&h, job_with(|s| s.priority = Some(5))).await;
    let low_new = enqueue1(&h, job_with(|s| s.priority = Some(1))).await;
    let earlier = enqueue1(&h, job_with(|s| s.run_at = Some(time::format_ms(T0 - 1000)))).await; // priority 0, past
    let low_same_ms = enqueue1(&h, job_with(|s| s.priority = Some(1))).await;
    let got: Vec<Uuid> = claim(&h, "q", 10).await.into_iter().map(|j| j.id).collect();
    assert_eq!(got, vec![high, low_old, low_new, low_same_ms, earlier]);
    h.finish().await;
}

pub async fn claim_respects_max_and_hands_distinct_leases(h: Harness) {
    for _ in 0..5 {
        enqueue1(&h, job("q")).await;
    }
    let a = claim(&h, "q", 2).await;
    assert_eq!(a.len(), 2);
    let b = claim(&h, "q", 10).await;
    assert_eq!(b.len(), 3);
    assert!(claim(&h, "q", 10).await.is_empty());
    assert!(claim(&h, "other", 10).await.is_empty());
    let leases: HashSet<_> = a.iter().chain(&b).map(|j| j.lease.clone()).collect();
    assert_eq!(leases.len(), 5);
    for j in a.iter().chain(&b) {
        assert_eq!(j.attempt, 1);
        assert_eq!(j.lease_expires_at, Timestamp(T0 + 30_000));
        let full = h.store.get_job(j.id).await.unwrap();
        assert_eq!(full.state, JobState::Running);
        assert_eq!(full.worker.as_deref(), Some("w1"));
        assert_eq!(full.started_at, Some(Timestamp(T0)));
    }
    // A claim may override the lease length.
    enqueue1(&h, job("q")).await;
    let c = h
        .store
        .claim(ClaimRequest { queue: "q".into(), worker: "w".into(), max: 1, lease_ms: Some(500) })
        .await;
    assert_eq!(c.unwrap()[0].lease_expires_at, Timestamp(T0 + 500));
    h.finish().await;
}

pub async fn complete_requires_current_lease(h: Harness) {
    let id = enqueue1(&h, job("q")).await;
    let c = claim_one(&h, "q").await;
    let e = complete(&h, id, "not-the-lease").await.unwrap_err();
    assert_eq!(e.code, ErrorCode::StaleLease);
    assert_eq!(state(&h, id).await, JobState::Running, "a stale complete changes nothing");
    let e = complete(&h, Uuid::now_v7(), &c.lease).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    let e =
        heartbeat(&h, HeartbeatRequest { id, lease: "nope".to_string(), extend_ms: None, pressure: None })
            .await
            .unwrap_err();
    assert_eq!(e.code, ErrorCode::StaleLease);
    let e = fail(&h, id, "nope", true).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::StaleLease);
    complete(&h, id, &c.lease).await.unwrap();
    let j = h.store.get_job(id).await.unwrap();
    assert_eq!(j.state, JobState::Completed);
    assert_eq!(j.finished_at, Some(Timestamp(T0)));
    assert!(j.lease_expires_at.is_none());
    // Batch: each item on its own.
    let ids: Vec<Uuid> =
        h.store.enqueue(vec![job("q"), job("q")]).await.unwrap().iter().map(|o| o.id).collect();
    let cs = claim(&h, "q", 2).await;
    let items = vec![
        CompleteItem { id: cs[0].id, lease: cs[0].lease.clone(), result: None, pressure: None },
        CompleteItem { id: cs[1].id, lease: "stale".into(), result: None, pressure: None },
    ];
    let out = h.store.complete(items).await.unwrap();
    assert!(out[0].is_ok());
    assert_eq!(out[1].as_ref().unwrap_err().code, ErrorCode::StaleLease);
    assert_eq!(state(&h, cs[1].id).await, JobState::Running);
    assert!(ids.contains(&cs[0].id));
    h.finish().await;
}

pub async fn complete_is_idempotent_for_its_own_lease(h: Harness) {
    let id = enqueue1(&h, job("q")).await;
    let c = claim_one(&h, "q").await;
    complete(&h, id, &c.lease).await.unwrap();
    complete(&h, id, &c.lease).await.expect("a repeated completion with the same lease succeeds");
    assert_eq!(complete(&h, id, "other").await.unwrap_err().code, ErrorCode::StaleLease);
    assert_eq!(fail(&h, id, &c.lease, true).await.unwrap_err().code, ErrorCode::StaleLease);
    assert_eq!(state(&h, id).await, JobState::Completed);
    h.finish().await;
}

pub async fn release_returns_job_uncounted(h: Harness) {
    let id = enqueue1(&h, job("q")).await;
    let c = claim_one(&h, "q").await;
    assert_eq!(h.store.release(id, "wrong").await.unwrap_err().code, ErrorCode::StaleLease);
    assert_eq!(h.store.release(Uuid::now_v7(), &c.lease).await.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(h.store.release(id, &c.lease).await.unwrap(), JobState::Ready);
    let j = h.store.get_job(id).await.unwrap();
    assert_eq!((j.state, j.attempt, j.errors.len()), (JobState::Ready, 0, 0));
    assert!(j.started_at.is_none());
    assert_eq!(complete(&h, id, &c.lease).await.unwrap_err().code, ErrorCode::StaleLease);
    assert_eq!(h.store.release(id, &c.lease).await.unwrap_err().code, ErrorCode::StaleLease);
    let again = claim_one(&h, "q").await;
    assert_eq!((again.id, again.attempt), (id, 1));
    h.finish().await;
}

pub async fn heartbeat_extends_live_lease_only(h: Harness) {
    let id = enqueue1(&h, job_with(|s| s.lease_ms = Some(1_000))).await;
    let c = claim_one(&h, "q").await;
    assert_eq!(c.lease_expires_at, Timestamp(T0 + 1_000));
    h.clock.advance(900);
    let hb = heartbeat(&h, HeartbeatRequest { id, lease: c.lease.clone(), extend_ms: None, pressure: None })
        .await
        .unwrap();
    assert_eq!(hb.lease_expires_at, Timestamp(T0 + 900 + 1_000));
    let hb = heartbeat(
        &h,
        HeartbeatRequest { id, lease: c.lease.clone(), extend_ms: Some(5_000), pressure: None },
    )
    .await
    .unwrap();
    assert_eq!(hb.lease_expires_at, Timestamp(T0 + 900 + 5_000));
    h.clock.advance(5_000);
    // Expired (even before the reaper ran): stale everywhere.
    assert_eq!(
        heartbeat(&h, HeartbeatRequest { id, lease: c.lease.clone(), extend_ms: None, pressure: None })
            .await
            .unwrap_err()
            .code,
        ErrorCode::StaleLease
    );
    assert_eq!(complete(&h, id, &c.lease).await.unwrap_err().code, ErrorCode::StaleLease);
    assert_eq!(
        heartbeat(
            &h,
            HeartbeatRequest { id: Uuid::now_v7(), lease: "x".to_string(), extend_ms: None, pressure: None }
        )
        .await
        .unwrap_err()
        .code,
        ErrorCode::NotFound
    );
    h.finish().await;
}

// ---------- failures, retries, DLQ ----------

pub async fn heartbeat_batch_answers_each_item(h: Harness) {
    h.store.enqueue(vec![job("q"), job("q")]).await.unwrap();
    let cs = claim(&h, "q", 2).await;
    let done = cs[1].clone();
    complete(&h, done.id, &done.lease).await.unwrap();
    h.clock.advance(100);
    let items = vec![
        HeartbeatRequest { id: cs[0].id, lease: cs[0].lease.clone(), extend_ms: Some(2_000), pressure: None },
        HeartbeatRequest { id: done.id, lease: done.lease.clone(), extend_ms: None, pressure: None },
        HeartbeatRequest { id: cs[0].id, lease: "1.stale".into(), extend_ms: None, pressure: None },
        HeartbeatRequest { id: Uuid::now_v7(), lease: "x".into(), extend_ms: None, pressure: None },
    ];
    let out = h.store.heartbeat(items).await.unwrap();
    assert_eq!(out.len(), 4, "one outcome per item, in order");
    assert_eq!(out[0].as_ref().unwrap().lease_expires_at, Timestamp(T0 + 100 + 2_000));
    assert_eq!(out[1].as_ref().unwrap_err().code, ErrorCode::StaleLease, "a finished job's lease is stale");
    assert_eq!(out[2].as_ref().unwrap_err().code, ErrorCode::StaleLease);
    assert_eq!(out[3].as_ref().unwrap_err().code, ErrorCode::NotFound);
    let j = h.store.get_job(cs[0].id).await.unwrap();
    assert_eq!(j.lease_expires_at, Some(Timestamp(T0 + 100 + 2_000)), "the live item was applied");
    assert!(h.store.heartbeat(Vec::new()).await.unwrap().is_empty());
    h.finish().await;
}

pub async fn timeout_is_stored_and_claimed(h: Harness) {
    let set = enqueue1(&h, job_with(|s| s.timeout_ms = Some(5_000))).await;
    let unset = enqueue1(&h, job("q")).await;
    assert_eq!(h.store.get_job(set).await.unwrap().timeout_ms, 5_000);
    assert_eq!(h.store.get_job(unset).await.unwrap().timeout_ms, ferry_core::validate::DEFAULT_TIMEOUT_MS);
    let batch: Vec<NewJob> = (0..3).map(|i| job_with(|s| s.timeout_ms = Some(1_000 + i))).collect();
    h.store.enqueue(batch).await.unwrap();
    let cs = claim(&h, "q", 5).await;
    let timeouts: Vec<i64> = cs.iter().map(|c| c.timeout_ms).collect();
    assert_eq!(timeouts, vec![5_000, ferry_core::validate::DEFAULT_TIMEOUT_MS, 1_000, 1_001, 1_002]);
    h.finish().await;
}

pub async fn fail_retries_with_backoff(h: Harness) {
    let b = Backoff { base_ms: 1_000, factor: 3.0, max_ms: 5_000, jitter: Jitter(0.0) };
    let id = enqueue1(&h, job_with(|s| s.backoff = Some(b))).await;
    let expected_delays = [1_000, 3_000, 5_000];
    for (i, delay) in expected_delays.iter().enumerate() {
        let c = claim_one(&h, "q").await;
        assert_eq!(c.attempt, i as u32 + 1);
        let now = h.clock.now_ms();
        let out = fail(&h, id, &c.lease, true).await.unwrap();
        assert_eq!(out.state, JobState::Scheduled);
        assert_eq!(out.attempt, i as u32 + 1);
        assert_eq!(out.run_at, Some(Timestamp(now + delay)));
        h.clock.advance(delay - 1);
        assert_eq!(h.store.promote_due(100).await.unwrap(), 0);
        assert!(claim(&h, "q", 1).await.is_empty(), "not due yet");
        assert_eq!(h.store.next_due_ms().await.unwrap(), Some(now + delay));
        h.clock.advance(1);
        assert_eq!(h.store.promote_due(100).await.unwrap(), 1);
        assert_eq!(state(&h, id).await, JobState::Ready);
    }
    assert_eq!(h.store.next_due_ms().await.unwrap(), None);
    // Zero backoff retries straight to ready.
    let id2 = enqueue1(&h, job_with(|s| s.backoff = Some(no_backoff()))).await;
    let _ = claim(&h, "q", 10).await; // drains id (attempt 4) too
    let c = h.store.get_job(id2).await.unwrap();
    assert_eq!(c.state, JobState::Running);
    h.finish().await;
}

pub async fn fail_until_dead_keeps_history(h: Harness) {
    let id = enqueue1(
        &h,
        job_with(|s| {
            s.max_attempts = Some(3);
            s.backoff = Some(no_backoff());
        }),
    )
    .await;
    for attempt in 1..=3u32 {
        let c = h
            .store
            .claim(ClaimRequest { queue: "q".into(), worker: format!("w{attempt}"), max: 1, lease_ms: None })
            .await
            .unwrap()
            .pop()
            .unwrap();
        h.clock.advance(10);
        let out = h
            .store
            .fail(vec![FailItem {
                id,
                lease: c.lease,
                error: format!("err {attempt}"),
                retry: true,
                pressure: None,
            }])
            .await
            .unwrap()
            .pop()
            .unwrap()
            .unwrap();
        assert_eq!(out.state, if attempt < 3 { JobState::Ready } else { JobState::Dead });
    }
    let j = h.store.get_job(id).await.unwrap();
    assert_eq!(j.state, JobState::Dead);
    assert_eq!(j.attempt, 3);
    assert!(j.finished_at.is_some());
    assert_eq!(j.errors.len(), 3);
    for (i, e) in j.errors.iter().enumerate() {
        assert_eq!(e.attempt, i as u32 + 1);
        assert_eq!(e.worker.as_deref(), Some(format!("w{}", i + 1).as_str()));
        assert_eq!(e.message, format!("err {}", i + 1));
        assert_eq!(e.kind, "failed");
        assert_eq!(e.at, Timestamp(T0 + 10 * (i as i64 + 1)));
    }
    let dlq = h
        .store
        .list_jobs(
            JobFilter { queue: None, state: Some(JobState::Dead) },
            PageRequest { limit: 10, cursor: None },
        )
        .await
        .unwrap();
    assert_eq!(dlq.items.iter().map(|j| j.id).collect::<Vec<_>>(), vec![id]);
    h.finish().await;
}

pub async fn fail_without_retry_is_dead(h: Harness) {
    let id = enqueue1(&h, job("q")).await;
    let c = claim_one(&h, "q").await;
    let out = fail(&h, id, &c.lease, false).await.unwrap();
    assert_eq!((out.state, out.attempt, out.run_at), (JobState::Dead, 1, None));
    h.finish().await;
}

pub async fn fail_repeat_answers_same_outcome(h: Harness) {
    let id = enqueue1(&h, job("q")).await;
    let c = claim_one(&h, "q").await;
    let first = fail(&h, id, &c.lease, true).await.unwrap();
    let again = fail(&h, id, &c.lease, true).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(h.store.get_job(id).await.unwrap().errors.len(), 1, "a repeat records nothing new");
    assert_eq!(complete(&h, id, &c.lease).await.unwrap_err().code, ErrorCode::StaleLease);
    h.finish().await;
}

pub async fn dlq_replay_by_ids_and_queue(h: Harness) {
    let a = make_dead(&h, "qa").await;
    let b = make_dead(&h, "qb").await;
    let b2 = make_dead(&h, "qb").await;
    let alive = enqueue1(&h, job("qa")).await;
    let replayed =
        h.store.replay_dead(DeadSelector::Ids(vec![a, alive, Uuid::now_v7()]), 100).await.unwrap().ids;
    assert_eq!(replayed, vec![a], "only dead jobs are replayed");
    let j = h.store.get_job(a).await.unwrap();
    assert_eq!((j.state, j.attempt, j.errors.len()), (JobState::Ready, 0, 1), "attempts reset, history kept");
    assert!(j.finished_at.is_none());
    let replayed = h.store.replay_dead(DeadSelector::Queue("qb".into()), 1).await.unwrap().ids;
    assert_eq!(replayed, vec![b], "replay is bounded by max");
    let replayed = h.store.replay_dead(DeadSelector::Queue("qb".into()), 100).await.unwrap().ids;
    assert_eq!(replayed, vec![b2]);
    let c = claim_one(&h, "qb").await;
    assert_eq!((c.id, c.attempt), (b, 1));
    h.finish().await;
}

/// Claims the next job of `q` and fails it for good.
async fn kill_one(h: &Harness) -> Uuid {
    let c = claim_one(h, "q").await;
    let f = FailItem { id: c.id, lease: c.lease, error: "boom".into(), retry: false, pressure: None };
    h.store.fail(vec![f]).await.unwrap().pop().unwrap().unwrap();
    c.id
}

/// A dead job whose unique key an unfinished job of its queue holds now stays dead on replay,
/// and of two dead jobs with one key only the first comes back; nothing fails.
pub async fn dlq_replay_keeps_unique_keys_unique(h: Harness) {
    let keyed = |k: &str| {
        job_with(|s| {
            s.unique_key = Some(k.into());
            s.max_attempts = Some(1);
        })
    };
    enqueue1(&h, keyed("a")).await;
    let dead_a1 = kill_one(&h).await;
    enqueue1(&h, keyed("a")).await;
    let dead_a2 = kill_one(&h).await;
    enqueue1(&h, keyed("b")).await;
    let dead_b = kill_one(&h).await;
    let holder_b = enqueue1(&h, keyed("b")).await;
    let replayed = h.store.replay_dead(DeadSelector::Queue("q".into()), 100).await.unwrap().ids;
    assert_eq!(replayed, vec![dead_a1], "one of the two a's, and not b (its key is held)");
    for (id, state) in [
        (dead_a1, JobState::Ready),
        (dead_a2, JobState::Dead),
        (dead_b, JobState::Dead),
        (holder_b, JobState::Ready),
    ] {
        assert_eq!(h.store.get_job(id).await.unwrap().state, state);
    }
    assert!(h.store.replay_dead(DeadSelector::Ids(vec![dead_a2, dead_b]), 100).await.unwrap().ids.is_empty());
    h.finish().await;
}

pub async fn dlq_purge(h: Harness) {
    let a = make_dead(&h, "qa").await;
    let b = make_dead(&h, "qb").await;
    let c = make_dead(&h, "qb").await;
    let alive = enqueue1(&h, job("qa")).await;
    assert_eq!(h.store.purge_dead(DeadSelector::Ids(vec![a, alive]), 100).await.unwrap(), 1);
    assert_eq!(h.store.get_job(a).await.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(state(&h, alive).await, JobState::Ready);
    assert_eq!(h.store.purge_dead(DeadSelector::Queue("qb".into()), 100).await.unwrap(), 2);
    assert_eq!(h.store.get_job(b).await.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(h.store.get_job(c).await.unwrap_err().code, ErrorCode::NotFound);
    h.finish().await;
}

// ---------- lease expiry ----------

pub async fn reaper_requeues_expired_leases(h: Harness) {
    let id = enqueue1(&h, job_with(|s| s.lease_ms = Some(1_000))).await;
    let c = claim_one(&h, "q").await;
    h.clock.advance(999);
    assert_eq!(h.store.reap_expired(100).await.unwrap(), ReapOutcome::default());
    h.clock.advance(1);
    assert_eq!(h.store.reap_expired(100).await.unwrap(), ReapOutcome { requeued: 1, dead: 0 });
    let j = h.store.get_job(id).await.unwrap();
    assert_eq!((j.state, j.attempt), (JobState::Ready, 1));
    assert_eq!(j.errors.len(), 1);
    assert_eq!(j.errors[0].kind, "lease_expired");
    assert_eq!(j.errors[0].worker.as_deref(), Some("w1"));
    // The old token is stale everywhere, even though the job was never completed.
    assert_eq!(complete(&h, id, &c.lease).await.unwrap_err().code, ErrorCode::StaleLease);
    assert_eq!(fail(&h, id, &c.lease, true).await.unwrap_err().code, ErrorCode::StaleLease);
    let c2 = claim_one(&h, "q").await;
    assert_eq!((c2.id, c2.attempt), (id, 2));
    assert_ne!(c2.lease, c.lease);
    assert_eq!(complete(&h, id, &c.lease).await.unwrap_err().code, ErrorCode::StaleLease);
    complete(&h, id, &c2.lease).await.unwrap();
    h.finish().await;
}

pub async fn reaper_kills_at_max_attempts(h: Harness) {
    let id = enqueue1(
        &h,
        job_with(|s| {
            s.max_attempts = Some(1);
            s.lease_ms = Some(100);
        }),
    )
    .await;
    let dependant = enqueue1(&h, job_with(|s| s.depends_on = Some(vec![id.to_string()]))).await;
    claim_one(&h, "q").await;
    h.clock.advance(100);
    assert_eq!(h.store.reap_expired(100).await.unwrap(), ReapOutcome { requeued: 0, dead: 1 });
    assert_eq!(state(&h, id).await, JobState::Dead);
    let d = h.store.get_job(dependant).await.unwrap();
    assert_eq!(d.state, JobState::Cancelled);
    assert!(d.cancel_reason.unwrap().contains(&id.to_string()));
    h.finish().await;
}

pub async fn reaper_never_overwrites_completed(h: Harness) {
    let id = enqueue1(&h, job_with(|s| s.lease_ms = Some(100))).await;
    let c = claim_one(&h, "q").await;
    complete(&h, id, &c.lease).await.unwrap();
    h.clock.advance(1_000);
    assert_eq!(h.store.reap_expired(100).await.unwrap(), ReapOutcome::default());
    let j = h.store.get_job(id).await.unwrap();
    assert_eq!(j.state, JobState::Completed);
    assert!(j.errors.is_empty());
    h.finish().await;
}

/// A refused write releases the rows it locked before it answers: the reaper's next pass
/// (which skips locked rows) must see the job a refused cancel just looked at. Repeated,
/// since the window was a race (PostgreSQL rolled back on drop, after the caller moved on).
pub async fn refused_write_holds_no_lock_after_answering(h: Harness) {
    for _ in 0..100 {
        let id = enqueue1(&h, job_with(|s| s.lease_ms = Some(100))).await;
        claim_one(&h, "q").await;
        assert_eq!(h.store.cancel(id, "user").await.unwrap_err().code, ErrorCode::InvalidState);
        h.clock.advance(100);
        assert_eq!(h.store.reap_expired(100).await.unwrap(), ReapOutcome { requeued: 1, dead: 0 });
        h.store.cancel(id, "done").await.unwrap();
    }
    h.finish().await;
}

// ---------- unique, dependencies, cancel ----------

pub async fn unique_jobs(h: Harness) {
    let first = h.store.enqueue(vec![job_with(|s| s.unique_key = Some("u1".into()))]).await.unwrap()[0];
    assert!(!first.duplicate);
    let again = h.store.enqueue(vec![job_with(|s| s.unique_key = Some("u1".into()))]).await.unwrap()[0];
    assert_eq!(again, EnqueueOutcome { id: first.id, duplicate: true });
    // Within one batch too.
    let out = h
        .store
        .enqueue(vec![
            job_with(|s| s.unique_key = Some("u2".into())),
            job_with(|s| s.unique_key = Some("u2".into())),
        ])
        .await
        .unwrap();
    assert_eq!(out[1], EnqueueOutcome { id: out[0].id, duplicate: true });
    // Once the holder finishes, the key is free again.
    let c = claim_one(&h, "q").await;
    assert_eq!(c.id, first.id);
    complete(&h, first.id, &c.lease).await.unwrap();
    let third = h.store.enqueue(vec![job_with(|s| s.unique_key = Some("u1".into()))]).await.unwrap()[0];
    assert!(!third.duplicate);
    assert_ne!(third.id, first.id);
    h.finish().await;
}

pub async fn dependencies_release_dependants(h: Harness) {
    let a = enqueue1(&h, job("q")).await;
    let b = enqueue1(&h, job("q")).await;
    let c = enqueue1(&h, job_with(|s| s.depends_on = Some(vec![a.to_string(), b.to_string()]))).await;
    assert_eq!(state(&h, c).await, JobState::Waiting);
    let claimed = claim(&h, "q", 10).await;
    assert_eq!(claimed.len(), 2, "a waiting job is not claimable");
    complete(&h, claimed[0].id, &claimed[0].lease).await.unwrap();
    assert_eq!(state(&h, c).await, JobState::Waiting);
    complete(&h, claimed[1].id, &claimed[1].lease).await.unwrap();
    assert_eq!(state(&h, c).await, JobState::Ready);
    assert_eq!(h.store.get_job(c).await.unwrap().depends_on, vec![a, b]);
    assert_eq!(claim_one(&h, "q").await.id, c);
    h.finish().await;
}

pub async fn dependency_death_cascades(h: Harness) {
    let a = enqueue1(&h, job("q")).await;
    let b = enqueue1(&h, job_with(|s| s.depends_on = Some(vec![a.to_string()]))).await;
    let c = enqueue1(&h, job_with(|s| s.depends_on = Some(vec![b.to_string()]))).await;
    let other = enqueue1(&h, job_with(|s| s.queue = "other".into())).await;
    let ca = claim_one(&h, "q").await;
    fail(&h, a, &ca.lease, false).await.unwrap();
    let jb = h.store.get_job(b).await.unwrap();
    assert_eq!(jb.state, JobState::Cancelled);
    assert_eq!(jb.cancel_reason.as_deref(), Some(format!("dependency {a} is dead").as_str()));
    let jc = h.store.get_job(c).await.unwrap();
    assert_eq!(jc.state, JobState::Cancelled);
    assert_eq!(jc.cancel_reason.as_deref(), Some(format!("dependency {b} is cancelled").as_str()));
    assert_eq!(state(&h, other).await, JobState::Ready);
    h.finish().await;
}

pub async fn dependency_cancel_cascades(h: Harness) {
    let a = enqueue1(&h, job_with(|s| s.delay_ms = Some(60_000))).await;
    let b = enqueue1(&h, job_with(|s| s.depends_on = Some(vec![a.to_string()]))).await;
    assert_eq!(h.store.cancel(a, "not needed").await.unwrap(), JobState::Cancelled);
    let ja = h.store.get_job(a).await.unwrap();
    assert_eq!(ja.cancel_reason.as_deref(), Some("not needed"));
    let jb = h.store.get_job(b).await.unwrap();
    assert_eq!(jb.state, JobState::Cancelled);
    assert!(jb.cancel_reason.unwrap().contains("cancelled"));
    h.finish().await;
}

pub async fn enqueue_with_finished_dependencies(h: Harness) {
    let a = enqueue1(&h, job("q")).await;
    let ca = claim_one(&h, "q").await;
    complete(&h, a, &ca.lease).await.unwrap();
    let b = enqueue1(&h, job_with(|s| s.depends_on = Some(vec![a.to_string()]))).await;
    assert_eq!(state(&h, b).await, JobState::Ready, "a completed dependency is already satisfied");
    let dead = make_dead(&h, "dq").await;
    let c = enqueue1(&h, job_with(|s| s.depends_on = Some(vec![dead.to_string()]))).await;
    let jc = h.store.get_job(c).await.unwrap();
    assert_eq!(jc.state, JobState::Cancelled);
    assert!(jc.cancel_reason.unwrap().contains("dead"));
    let delayed = enqueue1(
        &h,
        job_with(|s| {
            s.depends_on = Some(vec![a.to_string()]);
            s.delay_ms = Some(5_000);
        }),
    )
    .await;
    assert_eq!(state(&h, delayed).await, JobState::Scheduled);
    h.finish().await;
}

pub async fn unknown_dependency_is_rejected(h: Harness) {
    let e = h.store.enqueue(vec![job_with(|s| s.depends_on = Some(vec![Uuid::now_v7().to_string()]))]).await;
    let e = e.unwrap_err();
    assert_eq!(e.code, ErrorCode::ValidationFailed);
    assert_eq!(e.field.as_deref(), Some("depends_on[0]"));
    h.finish().await;
}

pub async fn cancel_rules(h: Harness) {
    let ready = enqueue1(&h, job("q")).await;
    let running = enqueue1(&h, job("q2")).await;
    let c = claim_one(&h, "q2").await;
    assert_eq!(h.store.cancel(ready, "user").await.unwrap(), JobState::Cancelled);
    assert_eq!(h.store.cancel(ready, "again").await.unwrap(), JobState::Cancelled, "idempotent");
    assert_eq!(h.store.get_job(ready).await.unwrap().cancel_reason.as_deref(), Some("user"));
    assert!(claim(&h, "q", 1).await.is_empty());
    assert_eq!(h.store.cancel(running, "user").await.unwrap_err().code, ErrorCode::InvalidState);
    complete(&h, running, &c.lease).await.unwrap();
    assert_eq!(h.store.cancel(running, "user").await.unwrap_err().code, ErrorCode::InvalidState);
    assert_eq!(h.store.cancel(Uuid::now_v7(), "user").await.unwrap_err().code, ErrorCode::NotFound);
    h.finish().await;
}

// ---------- delays and retention ----------

pub async fn delayed_jobs(h: Harness) {
    let d = enqueue1(&h, job_with(|s| s.delay_ms = Some(5_000))).await;
    let at = enqueue1(&h, job_with(|s| s.run_at = Some(time::format_ms(T0 + 3_000)))).await;
    assert_eq!(state(&h, d).await, JobState::Scheduled);
    assert_eq!(h.store.get_job(d).await.unwrap().run_at, Timestamp(T0 + 5_000));
    assert!(claim(&h, "q", 10).await.is_empty());
    assert_eq!(h.store.next_due_ms().await.unwrap(), Some(T0 + 3_000));
    h.clock.advance(3_000);
    assert_eq!(h.store.promote_due(10).await.unwrap(), 1);
    assert_eq!(claim_one(&h, "q").await.id, at);
    h.clock.advance(2_000);
    assert_eq!(h.store.promote_due(10).await.unwrap(), 1);
    assert_eq!(claim_one(&h, "q").await.id, d);
    h.finish().await;
}

pub async fn retention_prunes_in_batches(h: Harness) {
    let mut done = Vec::new();
    for _ in 0..5 {
        let id = enqueue1(&h, job("q")).await;
        let c = claim_one(&h, "q").await;
        complete(&h, id, &c.lease).await.unwrap();
        done.push(id);
    }
    let cancelled = enqueue1(&h, job("q")).await;
    h.store.cancel(cancelled, "x").await.unwrap();
    let dead = make_dead(&h, "q").await;
    h.clock.advance(10_000);
    let recent = enqueue1(&h, job("q")).await;
    let c = claim_one(&h, "q").await;
    complete(&h, recent, &c.lease).await.unwrap();
    let cutoff = h.clock.now_ms() - 5_000;
    assert_eq!(h.store.prune_finished(cutoff, 2).await.unwrap(), 2);
    assert_eq!(h.store.prune_finished(cutoff, 2).await.unwrap(), 2);
    assert_eq!(h.store.prune_finished(cutoff, 2).await.unwrap(), 2);
    assert_eq!(h.store.prune_finished(cutoff, 2).await.unwrap(), 0);
    for id in done.iter().chain([&cancelled]) {
        assert_eq!(h.store.get_job(*id).await.unwrap_err().code, ErrorCode::NotFound);
    }
    assert_eq!(state(&h, dead).await, JobState::Dead, "dead jobs stay until purged");
    assert_eq!(state(&h, recent).await, JobState::Completed);
    h.finish().await;
}

// ---------- wake-ups ----------

async fn assert_woken(t: tokio::task::JoinHandle<(Vec<ClaimedJob>, Duration)>, started: Instant) {
    let (jobs, _) = tokio::time::timeout(Duration::from_secs(5), t)
        .await
        .expect("woken well before its timeout")
        .unwrap();
    assert_eq!(jobs.len(), 1);
    assert!(started.elapsed() < Duration::from_secs(2), "woken by a notification, not a timeout");
}

pub async fn wakeup_on_enqueue(h: Harness) {
    let t = waiter(&h, "wq").await;
    let started = Instant::now();
    enqueue1(&h, job("wq")).await;
    assert_woken(t, started).await;
    h.finish().await;
}

pub async fn wakeup_on_retry_due(h: Harness) {
    let id =
        enqueue1(&h, job_with(|s| s.backoff = Some(Backoff { jitter: Jitter(0.0), ..Backoff::default() })))
            .await;
    let c = claim_one(&h, "q").await;
    fail(&h, id, &c.lease, true).await.unwrap();
    let t = waiter(&h, "q").await;
    let started = Instant::now();
    h.clock.advance(1_000);
    assert_eq!(h.store.promote_due(10).await.unwrap(), 1);
    assert_woken(t, started).await;
    h.finish().await;
}

pub async fn wakeup_on_dependency(h: Harness) {
    let a = enqueue1(&h, job("first")).await;
    enqueue1(
        &h,
        job_with(|s| {
            s.queue = "then".into();
            s.depends_on = Some(vec![a.to_string()]);
        }),
    )
    .await;
    let c = claim_one(&h, "first").await;
    let t = waiter(&h, "then").await;
    let started = Instant::now();
    complete(&h, a, &c.lease).await.unwrap();
    assert_woken(t, started).await;
    h.finish().await;
}

pub async fn wakeup_on_resume(h: Harness) {
    h.store.set_paused("pq", true).await.unwrap();
    enqueue1(&h, job("pq")).await;
    let t = waiter(&h, "pq").await;
    let started = Instant::now();
    h.store.set_paused("pq", false).await.unwrap();
    assert_woken(t, started).await;
    h.finish().await;
}

pub async fn claim_wait_times_out_empty(h: Harness) {
    let req = ClaimRequest { queue: "idle".into(), worker: "w".into(), max: 1, lease_ms: None };
    let start = Instant::now();
    let jobs = claim_wait(h.store.as_ref(), req, Duration::from_millis(200)).await.unwrap();
    assert!(jobs.is_empty());
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert!(start.elapsed() < Duration::from_secs(3));
    h.finish().await;
}

// ---------- concurrency ----------

pub async fn concurrent_claimers_each_job_once(h: Harness) {
    const JOBS: usize = 10_000;
    const WORKERS: usize = 16;
    for chunk in 0..(JOBS / 1_000) {
        let batch = (0..1_000)
            .map(|i| job_with(|s| s.payload = Some(raw(&format!("{}", chunk * 1_000 + i)))))
            .collect();
        h.store.enqueue(batch).await.unwrap();
    }
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let store = h.store.clone();
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                let req =
                    ClaimRequest { queue: "q".into(), worker: format!("w{w}"), max: 50, lease_ms: None };
                let jobs = store.claim(req).await.unwrap();
                if jobs.is_empty() {
                    return seen;
                }
                let items = jobs
                    .iter()
                    .map(|j| CompleteItem { id: j.id, lease: j.lease.clone(), result: None, pressure: None })
                    .collect();
                for r in store.complete(items).await.unwrap() {
                    r.unwrap();
                }
                seen.extend(jobs.into_iter().map(|j| j.id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), JOBS, "every job claimed");
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), JOBS, "no job claimed twice");
    let stats = h.store.queue_stats().await.unwrap();
    assert_eq!(stats[0].counts[&JobState::Completed], JOBS as u64);
    h.finish().await;
}

// ---------- listing ----------

pub async fn list_pagination_and_filters(h: Harness) {
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(enqueue1(&h, job(if i % 5 == 0 { "other" } else { "main" })).await);
    }
    let mut got = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = h.store.list_jobs(JobFilter::default(), PageRequest { limit: 10, cursor }).await.unwrap();
        pages += 1;
        got.extend(page.items.iter().map(|j| j.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(got, ids, "insertion order, nothing skipped or repeated");
    let other = h
        .store
        .list_jobs(
            JobFilter { queue: Some("other".into()), state: None },
            PageRequest { limit: 100, cursor: None },
        )
        .await
        .unwrap();
    assert_eq!(other.items.len(), 5);
    assert!(other.next_cursor.is_none());
    claim(&h, "main", 3).await;
    let running = JobFilter { queue: Some("main".into()), state: Some(JobState::Running) };
    assert_eq!(
        h.store.list_jobs(running, PageRequest { limit: 100, cursor: None }).await.unwrap().items.len(),
        3
    );
    let by_state = JobFilter { queue: None, state: Some(JobState::Ready) };
    assert_eq!(
        h.store.list_jobs(by_state, PageRequest { limit: 100, cursor: None }).await.unwrap().items.len(),
        22
    );
    let e = h
        .store
        .list_jobs(JobFilter::default(), PageRequest { limit: 10, cursor: Some("garbage".into()) })
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::ValidationFailed);
    h.finish().await;
}

pub async fn error_text_is_truncated_and_history_bounded(h: Harness) {
    // The store's limits are the defaults: 4,096 bytes of text per error.
    let id = enqueue1(&h, job_with(|s| s.backoff = Some(no_backoff()))).await;
    let c = claim_one(&h, "q").await;
    let long = "x".repeat(10_000);
    h.store
        .fail(vec![FailItem { id, lease: c.lease, error: long, retry: true, pressure: None }])
        .await
        .unwrap()[0]
        .clone()
        .unwrap();
    let j = h.store.get_job(id).await.unwrap();
    assert!(j.errors[0].message.len() < 4_200);
    assert!(j.errors[0].message.ends_with("[truncated]"));
    h.finish().await;
}

// ---------- imports ----------

pub async fn imports_dedup_in_any_state(h: Harness) {
    let mut done = job_with(|s| s.unique_key = Some("import:a".into()));
    done.import = Some(Import::Completed { result: Some(raw(r#"{"sent":1}"#)) });
    let mut waiting = job_with(|s| s.unique_key = Some("import:b".into()));
    waiting.import = Some(Import::Ready);
    let out = h.store.enqueue(vec![done.clone(), waiting.clone()]).await.unwrap();
    let a = h.store.get_job(out[0].id).await.unwrap();
    assert_eq!((a.state, a.attempt), (JobState::Completed, 1));
    assert_eq!(a.result.unwrap().get(), r#"{"sent":1}"#);
    assert!(a.finished_at.is_some() && a.started_at.is_some());
    assert_eq!(state(&h, out[1].id).await, JobState::Ready);
    // Importing the same files again creates nothing, whatever state the jobs are in now.
    let again = h.store.enqueue(vec![done, waiting]).await.unwrap();
    assert_eq!(
        again,
        vec![
            EnqueueOutcome { id: out[0].id, duplicate: true },
            EnqueueOutcome { id: out[1].id, duplicate: true }
        ]
    );
    let c = claim_one(&h, "q").await;
    assert_eq!(c.id, out[1].id);
    let stats = h.store.queue_stats().await.unwrap();
    assert_eq!(stats[0].counts[&JobState::Completed], 1);
    h.finish().await;
}

/// Every rule above: `conformance_tests!` runs each against every backend. A rule missing
/// here is never called, and `dead_code` fails the build.
macro_rules! jobs_rules {
    () => {
        domain_tests!(jobs:
            enqueue_and_get, payload_is_kept_verbatim, batch_is_all_or_nothing, claim_order,
            claim_respects_max_and_hands_distinct_leases, complete_requires_current_lease,
            complete_is_idempotent_for_its_own_lease, release_returns_job_uncounted,
            heartbeat_extends_live_lease_only, heartbeat_batch_answers_each_item, timeout_is_stored_and_claimed,
            fail_retries_with_backoff, fail_until_dead_keeps_history,
            fail_without_retry_is_dead, fail_repeat_answers_same_outcome, dlq_replay_by_ids_and_queue,
            dlq_replay_keeps_unique_keys_unique, dlq_purge, reaper_requeues_expired_leases,
            reaper_kills_at_max_attempts, reaper_never_overwrites_completed,
            refused_write_holds_no_lock_after_answering, unique_jobs,
            dependencies_release_dependants, dependency_death_cascades, dependency_cancel_cascades,
            enqueue_with_finished_dependencies, unknown_dependency_is_rejected, cancel_rules, delayed_jobs,
            retention_prunes_in_batches, wakeup_on_enqueue, wakeup_on_retry_due, wakeup_on_dependency,
            wakeup_on_resume, claim_wait_times_out_empty, concurrent_claimers_each_job_once,
            list_pagination_and_filters, error_text_is_truncated_and_history_bounded,
            imports_dedup_in_any_state,
        );
    };
}
