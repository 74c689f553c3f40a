//! The storage conformance suite: the specification of [`Store`], written once and run
//! against every backend (as River's driver test suite is).
//!
//! A backend's test file provides `async fn harness(clock) -> Option<Harness>` (None skips,
//! with a printed reason, when the backend's service is absent and not required) and calls
//! `conformance_tests!(harness);`, which expands to one test per rule below.

#![allow(dead_code)]

pub mod json_props;
pub mod props;

use ferry_core::validate::JobSpec;
use ferry_core::*;
use ferry_store::{Store, claim_wait};
use serde_json::value::RawValue;
use std::any::Any;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Start of test time: 2025-01-01T00:00:00Z.
pub const T0: i64 = 1_735_689_600_000;

/// A store under test with the clock it reads.
pub struct Harness {
    pub store: Arc<dyn Store>,
    pub clock: Arc<ManualClock>,
    /// Keeps the backend's resources (temp dir, database) alive until the test ends.
    pub guard: Box<dyn Any + Send + Sync>,
}

impl Harness {
    /// Runs the invariant check every test ends with, then closes the store.
    pub async fn finish(self) {
        let violations = self.store.check_invariants().await.expect("invariant check runs");
        assert!(violations.is_empty(), "invariants violated: {violations:?}");
        self.store.close().await;
    }
}

macro_rules! conformance_tests {
    ($make:path) => {
        conformance_tests!(@each $make;
            enqueue_and_get, payload_is_kept_verbatim, batch_is_all_or_nothing, claim_order,
            claim_respects_max_and_hands_distinct_leases, complete_requires_current_lease,
            complete_is_idempotent_for_its_own_lease, release_returns_job_uncounted, heartbeat_extends_live_lease_only,
            fail_retries_with_backoff, fail_until_dead_keeps_history, fail_without_retry_is_dead,
            fail_repeat_answers_same_outcome, dlq_replay_by_ids_and_queue, dlq_replay_keeps_unique_keys_unique, dlq_purge,
            reaper_requeues_expired_leases, reaper_kills_at_max_attempts, reaper_never_overwrites_completed,
            unique_jobs, dependencies_release_dependants, dependency_death_cascades,
            dependency_cancel_cascades, enqueue_with_finished_dependencies, unknown_dependency_is_rejected,
            cancel_rules, pause_and_resume, queue_stats_counts, delayed_jobs, retention_prunes_in_batches,
            wakeup_on_enqueue, wakeup_on_retry_due, wakeup_on_dependency, wakeup_on_resume,
            claim_wait_times_out_empty, concurrent_claimers_each_job_once, list_pagination_and_filters,
            error_text_is_truncated_and_history_bounded, imports_dedup_in_any_state, maintenance_loops_run, storage_bytes_grow_with_data,
            events_record_every_transition, events_cursor_is_gap_free_under_concurrency, events_prune_keeps_the_newest,
            schedule_crud, schedule_fires_each_tick_once, schedule_misfire_policies, schedule_concurrent_firing_exactly_once,
            limits_max_running, limits_max_running_concurrent, limits_start_rate, limits_set_list_and_clear,
            tokens_round_trip_and_revoke, workers_registry_and_in_flight, lost_workers_release_their_leases, hosts_crud,
            property_state_machine, property_json_round_trips);
    };
    (@each $make:path; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let clock = ferry_core::ManualClock::new(crate::conformance::T0);
                if let Some(h) = $make(clock).await {
                    crate::conformance::$name(h).await;
                }
            }
        )*
    };
}

// ---------- helpers ----------

pub fn spec(queue: &str) -> JobSpec {
    JobSpec { queue: queue.into(), ..Default::default() }
}

pub fn job(queue: &str) -> NewJob {
    spec(queue).validate(&Limits::default()).unwrap()
}

pub fn job_with(f: impl FnOnce(&mut JobSpec)) -> NewJob {
    let mut s = spec("q");
    f(&mut s);
    s.validate(&Limits::default()).unwrap()
}

pub fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_string()).unwrap()
}

pub async fn enqueue1(h: &Harness, j: NewJob) -> Uuid {
    h.store.enqueue(vec![j]).await.unwrap()[0].id
}

pub async fn claim(h: &Harness, queue: &str, max: usize) -> Vec<ClaimedJob> {
    h.store
        .claim(ClaimRequest { queue: queue.into(), worker: "w1".into(), max, lease_ms: None })
        .await
        .unwrap()
}

pub async fn claim_one(h: &Harness, queue: &str) -> ClaimedJob {
    let mut jobs = claim(h, queue, 1).await;
    assert_eq!(jobs.len(), 1, "expected one job to claim in {queue}");
    jobs.pop().unwrap()
}

pub async fn complete(h: &Harness, id: Uuid, lease: &str) -> Result<()> {
    h.store
        .complete(vec![CompleteItem { id, lease: lease.into(), result: None }])
        .await
        .unwrap()
        .pop()
        .unwrap()
}

pub async fn fail(h: &Harness, id: Uuid, lease: &str, retry: bool) -> Result<FailOutcome> {
    h.store
        .fail(vec![FailItem { id, lease: lease.into(), error: "boom".into(), retry }])
        .await
        .unwrap()
        .pop()
        .unwrap()
}

pub async fn state(h: &Harness, id: Uuid) -> JobState {
    h.store.get_job(id).await.unwrap().state
}

pub fn no_backoff() -> Backoff {
    Backoff { base_ms: 0, factor: 1.0, max_ms: 0, jitter: Jitter(0.0) }
}

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
        .complete(vec![CompleteItem { id, lease: c.lease, result: Some(raw(r#"{"ok":true}"#)) }])
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
    let page =
        h.store.list_jobs(JobFilter { queue: Some("b2".into()), state: None }, 100, None).await.unwrap();
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
    let e = h.store.heartbeat(id, "nope", None).await.unwrap_err();
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
        CompleteItem { id: cs[0].id, lease: cs[0].lease.clone(), result: None },
        CompleteItem { id: cs[1].id, lease: "stale".into(), result: None },
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
    let hb = h.store.heartbeat(id, &c.lease, None).await.unwrap();
    assert_eq!(hb.lease_expires_at, Timestamp(T0 + 900 + 1_000));
    let hb = h.store.heartbeat(id, &c.lease, Some(5_000)).await.unwrap();
    assert_eq!(hb.lease_expires_at, Timestamp(T0 + 900 + 5_000));
    h.clock.advance(5_000);
    // Expired (even before the reaper ran): stale everywhere.
    assert_eq!(h.store.heartbeat(id, &c.lease, None).await.unwrap_err().code, ErrorCode::StaleLease);
    assert_eq!(complete(&h, id, &c.lease).await.unwrap_err().code, ErrorCode::StaleLease);
    assert_eq!(h.store.heartbeat(Uuid::now_v7(), "x", None).await.unwrap_err().code, ErrorCode::NotFound);
    h.finish().await;
}

// ---------- failures, retries, DLQ ----------

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
            .fail(vec![FailItem { id, lease: c.lease, error: format!("err {attempt}"), retry: true }])
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
    let dlq =
        h.store.list_jobs(JobFilter { queue: None, state: Some(JobState::Dead) }, 10, None).await.unwrap();
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

async fn make_dead(h: &Harness, queue: &str) -> Uuid {
    let id = enqueue1(h, job(queue)).await;
    let c = claim_one(h, queue).await;
    assert_eq!(c.id, id);
    fail(h, id, &c.lease, false).await.unwrap();
    id
}

pub async fn dlq_replay_by_ids_and_queue(h: Harness) {
    let a = make_dead(&h, "qa").await;
    let b = make_dead(&h, "qb").await;
    let b2 = make_dead(&h, "qb").await;
    let alive = enqueue1(&h, job("qa")).await;
    let replayed = h.store.replay_dead(DeadSelector::Ids(vec![a, alive, Uuid::now_v7()]), 100).await.unwrap();
    assert_eq!(replayed, vec![a], "only dead jobs are replayed");
    let j = h.store.get_job(a).await.unwrap();
    assert_eq!((j.state, j.attempt, j.errors.len()), (JobState::Ready, 0, 1), "attempts reset, history kept");
    assert!(j.finished_at.is_none());
    let replayed = h.store.replay_dead(DeadSelector::Queue("qb".into()), 1).await.unwrap();
    assert_eq!(replayed, vec![b], "replay is bounded by max");
    let replayed = h.store.replay_dead(DeadSelector::Queue("qb".into()), 100).await.unwrap();
    assert_eq!(replayed, vec![b2]);
    let c = claim_one(&h, "qb").await;
    assert_eq!((c.id, c.attempt), (b, 1));
    h.finish().await;
}

/// Claims the next job of `q` and fails it for good.
async fn kill_one(h: &Harness) -> Uuid {
    let c = claim_one(h, "q").await;
    let f = FailItem { id: c.id, lease: c.lease, error: "boom".into(), retry: false };
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
    let replayed = h.store.replay_dead(DeadSelector::Queue("q".into()), 100).await.unwrap();
    assert_eq!(replayed, vec![dead_a1], "one of the two a's, and not b (its key is held)");
    for (id, state) in [
        (dead_a1, JobState::Ready),
        (dead_a2, JobState::Dead),
        (dead_b, JobState::Dead),
        (holder_b, JobState::Ready),
    ] {
        assert_eq!(h.store.get_job(id).await.unwrap().state, state);
    }
    assert!(h.store.replay_dead(DeadSelector::Ids(vec![dead_a2, dead_b]), 100).await.unwrap().is_empty());
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

// ---------- unique, dependencies, cancel, pause ----------

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

async fn waiter(h: &Harness, queue: &str) -> tokio::task::JoinHandle<(Vec<ClaimedJob>, Duration)> {
    let store = h.store.clone();
    let req = ClaimRequest { queue: queue.into(), worker: "w".into(), max: 10, lease_ms: None };
    let t = tokio::spawn(async move {
        let start = Instant::now();
        let jobs = claim_wait(store.as_ref(), req, Duration::from_secs(10)).await.unwrap();
        (jobs, start.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(50)).await; // let it park
    t
}

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
                    .map(|j| CompleteItem { id: j.id, lease: j.lease.clone(), result: None })
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
        let page = h.store.list_jobs(JobFilter::default(), 10, cursor).await.unwrap();
        pages += 1;
        got.extend(page.items.iter().map(|j| j.id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(got, ids, "insertion order, nothing skipped or repeated");
    let other =
        h.store.list_jobs(JobFilter { queue: Some("other".into()), state: None }, 100, None).await.unwrap();
    assert_eq!(other.items.len(), 5);
    assert!(other.next_cursor.is_none());
    claim(&h, "main", 3).await;
    let running = JobFilter { queue: Some("main".into()), state: Some(JobState::Running) };
    assert_eq!(h.store.list_jobs(running, 100, None).await.unwrap().items.len(), 3);
    let by_state = JobFilter { queue: None, state: Some(JobState::Ready) };
    assert_eq!(h.store.list_jobs(by_state, 100, None).await.unwrap().items.len(), 22);
    let e = h.store.list_jobs(JobFilter::default(), 10, Some("garbage".into())).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::ValidationFailed);
    h.finish().await;
}

pub async fn error_text_is_truncated_and_history_bounded(h: Harness) {
    // The store's limits are the defaults: 4,096 bytes of text per error.
    let id = enqueue1(&h, job_with(|s| s.backoff = Some(no_backoff()))).await;
    let c = claim_one(&h, "q").await;
    let long = "x".repeat(10_000);
    h.store.fail(vec![FailItem { id, lease: c.lease, error: long, retry: true }]).await.unwrap()[0]
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

// ---------- background loops with the real scheduler ----------

/// Waits until the bus has published up to `cursor` (PostgreSQL numbers events shortly after
/// commit), then reads the stored log after `after`.
async fn events_after(h: &Harness, after: u64, at_least: usize) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = h.store.read_events(after, 100_000).await.unwrap();
        if got.len() >= at_least {
            return got;
        }
        assert!(Instant::now() < deadline, "expected {at_least} events after {after}, have {}", got.len());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
        let n = h.store.prune_events(h.clock.now_ms() + 1, u64::MAX, 2).await.unwrap();
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
    h.store.prune_events(0, 1, 100).await.unwrap();
    let left = h.store.read_events(0, 100).await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].cursor, last + 2);
    h.finish().await;
}

fn schedule_spec(name: &str, cron: &str, misfire: &str) -> ferry_core::schedule::ScheduleSpec {
    ferry_core::schedule::ScheduleSpec {
        name: name.into(),
        cron: cron.into(),
        timezone: None,
        job: spec("ticks"),
        misfire: Some(misfire.into()),
        catch_up_max: Some(5),
        paused: None,
    }
}

async fn add_schedule(h: &Harness, name: &str, cron: &str, misfire: &str) -> ferry_core::schedule::Schedule {
    let s = ferry_core::schedule::from_spec(
        schedule_spec(name, cron, misfire),
        h.clock.now_ms(),
        &Limits::default(),
    )
    .unwrap();
    h.store.create_schedule(s).await.unwrap()
}

async fn tick_jobs(h: &Harness) -> Vec<Job> {
    let page =
        h.store.list_jobs(JobFilter { queue: Some("ticks".into()), state: None }, 1000, None).await.unwrap();
    page.items
}

pub async fn schedule_crud(h: Harness) {
    let s = add_schedule(&h, "nightly", "0 3 * * *", "skip").await;
    assert_eq!(s.next_run_at, Some(Timestamp(T0 + 3 * 3_600_000)));
    let dup =
        ferry_core::schedule::from_spec(schedule_spec("nightly", "@hourly", "skip"), T0, &Limits::default());
    let e = h.store.create_schedule(dup.unwrap()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(h.store.get_schedule("nightly").await.unwrap(), s);
    add_schedule(&h, "another", "@hourly", "run_once").await;
    let names: Vec<String> = h.store.list_schedules().await.unwrap().into_iter().map(|s| s.name).collect();
    assert_eq!(names, ["another", "nightly"]);
    let patched = ferry_core::schedule::apply_patch(
        s,
        ferry_core::schedule::SchedulePatch { paused: Some(true), ..Default::default() },
        T0,
        &Limits::default(),
    )
    .unwrap();
    h.store.update_schedule(patched).await.unwrap();
    let got = h.store.get_schedule("nightly").await.unwrap();
    assert!(got.paused);
    assert_eq!(got.next_run_at, None, "a paused schedule waits for no tick");
    assert_eq!(
        h.store.next_schedule_ms().await.unwrap(),
        Some(T0 + 3_600_000),
        "only the hourly one is active"
    );
    h.store.delete_schedule("nightly").await.unwrap();
    assert_eq!(h.store.get_schedule("nightly").await.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(h.store.delete_schedule("nightly").await.unwrap_err().code, ErrorCode::NotFound);
    h.finish().await;
}

/// Hours of an hourly schedule in milliseconds: one job per tick, keyed by its tick.
pub async fn schedule_fires_each_tick_once(h: Harness) {
    add_schedule(&h, "hourly", "0 * * * *", "catch_up").await;
    assert_eq!(h.store.fire_schedules(10).await.unwrap(), 0, "nothing due yet");
    for hour in 1..=3 {
        h.clock.advance(3_600_000);
        assert_eq!(h.store.fire_schedules(10).await.unwrap(), 1);
        assert_eq!(h.store.fire_schedules(10).await.unwrap(), 0, "a tick fires once");
        let jobs = tick_jobs(&h).await;
        assert_eq!(jobs.len(), hour);
        assert_eq!(
            jobs.last().unwrap().unique_key.as_deref(),
            Some(&*format!("schedule:hourly:{}", T0 + hour as i64 * 3_600_000))
        );
    }
    let s = h.store.get_schedule("hourly").await.unwrap();
    assert_eq!(s.last_run_at, Some(Timestamp(T0 + 3 * 3_600_000)));
    assert_eq!(s.next_run_at, Some(Timestamp(T0 + 4 * 3_600_000)));
    let fired =
        events_after(&h, 0, 6).await.into_iter().filter(|e| e.kind == EventType::ScheduleFired).count();
    assert_eq!(fired, 3);
    h.finish().await;
}

/// Downtime of 5 h 30 min: skip runs nothing, run_once one job, catch_up the newest five.
pub async fn schedule_misfire_policies(h: Harness) {
    add_schedule(&h, "s-skip", "0 * * * *", "skip").await;
    add_schedule(&h, "s-once", "0 * * * *", "run_once").await;
    add_schedule(&h, "s-catch", "0 * * * *", "catch_up").await;
    h.clock.advance(11 * 1_800_000);
    h.store.fire_schedules(10).await.unwrap();
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for j in tick_jobs(&h).await {
        let key = j.unique_key.unwrap();
        *by.entry(key.split(':').nth(1).unwrap().to_string()).or_default() += 1;
    }
    assert_eq!(by.get("s-skip"), None);
    assert_eq!(by.get("s-once"), Some(&1));
    assert_eq!(by.get("s-catch"), Some(&5), "capped at catch_up_max");
    for name in ["s-skip", "s-once", "s-catch"] {
        let s = h.store.get_schedule(name).await.unwrap();
        assert_eq!(s.next_run_at, Some(Timestamp(T0 + 6 * 3_600_000)), "{name} waits for the next tick");
    }
    h.finish().await;
}

/// Many concurrent firing passes (as from several nodes) enqueue each tick once.
pub async fn schedule_concurrent_firing_exactly_once(h: Harness) {
    for i in 0..20 {
        add_schedule(&h, &format!("c{i}"), "*/10 * * * * *", "catch_up").await;
    }
    for _ in 0..3 {
        h.clock.advance(10_000);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let store = h.store.clone();
            tasks.push(tokio::spawn(async move { store.fire_schedules(5).await.unwrap() }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        while h.store.next_schedule_ms().await.unwrap().is_some_and(|t| t <= h.clock.now_ms()) {
            total += h.store.fire_schedules(100).await.unwrap();
        }
        assert_eq!(total, 20, "one job per schedule per tick");
    }
    let keys: HashSet<String> = tick_jobs(&h).await.into_iter().filter_map(|j| j.unique_key).collect();
    assert_eq!(keys.len(), 60);
    h.finish().await;
}

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
        let page =
            h.store.list_jobs(JobFilter { queue: Some("r".into()), state: None }, 10, None).await.unwrap();
        if page.items.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "retention did not prune");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    m.shutdown().await;
    h.finish().await;
}

pub async fn property_state_machine(h: Harness) {
    props::run(h).await;
}

pub async fn property_json_round_trips(h: Harness) {
    json_props::run(h).await;
}

// ---------- flow limits ----------

pub async fn claim_as(h: &Harness, queue: &str, worker: &str, max: usize) -> Vec<ClaimedJob> {
    h.store
        .claim(ClaimRequest { queue: queue.into(), worker: worker.into(), max, lease_ms: None })
        .await
        .unwrap()
}

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
                    .map(|j| CompleteItem { id: j.id, lease: j.lease.clone(), result: None })
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

// ---------- tokens, workers, hosts ----------

fn token(name: &str, created_at: i64, scopes: Vec<Scope>, queues: Option<Vec<String>>) -> TokenRecord {
    TokenRecord {
        id: Uuid::new_v4(),
        name: name.into(),
        hash: format!("{:064x}", rand_hash(name)),
        scopes,
        queues,
        created_at,
        revoked_at: None,
    }
}

fn rand_hash(seed: &str) -> u128 {
    seed.bytes().fold(0xcbf2_9ce4_8422_2325_u128, |h, b| (h ^ u128::from(b)).wrapping_mul(0x0100_0000_01b3))
}

pub async fn tokens_round_trip_and_revoke(h: Harness) {
    assert!(h.store.list_tokens().await.unwrap().is_empty());
    let producer =
        token("ci-producer", T0, vec![Scope::Produce, Scope::Read], Some(vec!["a".into(), "b".into()]));
    let admin = token("admin", T0 + 1, vec![Scope::Admin], None);
    let old = token("old", T0 - 5, vec![Scope::Work], Some(vec![]));
    for t in [&producer, &admin, &old] {
        h.store.create_token(t.clone()).await.unwrap();
    }
    assert_eq!(h.store.list_tokens().await.unwrap(), vec![old.clone(), producer.clone(), admin.clone()]);
    let e = h.store.create_token(admin.clone()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    h.clock.advance(100);
    let revoked = h.store.revoke_token(producer.id).await.unwrap();
    assert_eq!(revoked, TokenRecord { revoked_at: Some(T0 + 100), ..producer.clone() });
    h.clock.advance(100);
    let again = h.store.revoke_token(producer.id).await.unwrap();
    assert_eq!(again.revoked_at, Some(T0 + 100), "a second revocation keeps the first time");
    let listed = h.store.list_tokens().await.unwrap();
    assert_eq!(listed[1], revoked, "revoked tokens are listed");
    assert_eq!(listed[2].revoked_at, None);
    let e = h.store.revoke_token(Uuid::new_v4()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    h.finish().await;
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
    assert_eq!(lost, vec!["w1".to_string()], "only the worker silent since before the cut-off");
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
    assert_eq!(h.store.release_lost_workers(T0 + 1, 3).await.unwrap().len(), 3);
    assert_eq!(h.store.release_lost_workers(T0 + 1, 3).await.unwrap().len(), 2);
    h.finish().await;
}

pub async fn hosts_crud(h: Harness) {
    assert!(h.store.list_hosts().await.unwrap().is_empty());
    let host = |name: &str| HostRecord {
        name: name.into(),
        health_url: format!("http://{name}.internal:8080/health"),
        created_at: T0,
    };
    h.store.create_host(host("db")).await.unwrap();
    h.store.create_host(host("api")).await.unwrap();
    let e = h
        .store
        .create_host(HostRecord { health_url: "http://other/".into(), ..host("db") })
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(h.store.list_hosts().await.unwrap(), vec![host("api"), host("db")]);
    h.store.delete_host("api").await.unwrap();
    assert_eq!(h.store.delete_host("api").await.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(h.store.list_hosts().await.unwrap(), vec![host("db")]);
    h.finish().await;
}
