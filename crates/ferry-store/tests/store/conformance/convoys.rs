//! The convoy part of the `Store` contract: members over the limit wait `held` and are released
//! by priority, then order added; an empty sealed convoy ends at once, an open one only after
//! its seal; repeated creates (duplicate or `conflict`); member unique keys per convoy; retries
//! keep their slot, dead members free it; `fail_fast`, convoy cancel and member cancel; expired
//! leases; the member and failed-id limits; the adaptive limit on run times and on reported
//! pressure (on the virtual clock); replays of dead members; lists, member pages, pruning and
//! gauges; the events. Invariants are checked mid-run too, while members are held.

use super::{Harness, T0, claim, claim_one, complete, events_after, fail, heartbeat, job, raw, spec, state};
use ferry_core::convoy::{
    Adaptive, Convoy, ConvoyCounts, ConvoyFilter, ConvoyGauges, ConvoyState, LimitChange, LimitReason,
    MaxParallel, NewConvoy, OnComplete, OnFailure, WINDOW_SAMPLES, completion_key,
};
use ferry_core::validate::JobSpec;
use ferry_core::*;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use uuid::Uuid;

// ---------- helpers ----------

/// The members' queue (rules with several convoys give each its own).
const Q: &str = "cq";

/// The queue of every completion job.
const AFTER: &str = "after";

/// The limits `a_convoy_takes_at_most_max_convoy_members` runs under: three members a convoy.
pub fn few_members() -> Limits {
    Limits { max_convoy_members: 3, ..Limits::default() }
}

/// The limits `failed_ids_are_bounded` runs under: two failed ids in a completion payload.
pub fn two_failed_ids() -> Limits {
    Limits { max_convoy_failed_ids: 2, ..Limits::default() }
}

/// A member on `queue` (a convoy's members are jobs on its queue), shaped by `f`.
fn member_with(queue: &str, f: impl FnOnce(&mut JobSpec)) -> NewJob {
    let mut s = spec(queue);
    f(&mut s);
    s.validate(&Limits::default()).unwrap()
}

/// `n` plain members on `queue`.
fn members(queue: &str, n: usize) -> Vec<NewJob> {
    (0..n).map(|_| job(queue)).collect()
}

/// A sealed `continue` convoy named as its id, without completion job.
fn new_convoy(id: &str, queue: &str, max_parallel: MaxParallel, members: Vec<NewJob>) -> NewConvoy {
    NewConvoy {
        id: id.into(),
        name: id.into(),
        queue: queue.into(),
        max_parallel,
        sealed: true,
        on_failure: OnFailure::Continue,
        on_complete: None,
        members,
    }
}

/// `c` with a completion job on [`AFTER`] whose own payload is `{"n":7}`.
fn with_completion(mut c: NewConvoy) -> NewConvoy {
    let own = member_with(AFTER, |s| s.payload = Some(raw(r#"{"n":7}"#)));
    c.on_complete = Some(OnComplete::from_job(own).unwrap());
    c
}

/// Creates a new convoy: the convoy and its members' ids, in order.
async fn create(h: &Harness, c: NewConvoy) -> (Convoy, Vec<Uuid>) {
    let out = h.store.create_convoy(c).await.unwrap();
    assert!(!out.duplicate, "a new convoy");
    let ids = out.members.iter().map(|o| o.id).collect();
    (out.convoy, ids)
}

async fn get(h: &Harness, id: &str) -> Convoy {
    h.store.get_convoy(id).await.unwrap()
}

fn page(limit: usize) -> PageRequest {
    PageRequest { limit, cursor: None }
}

/// Claims and completes the ready jobs of `queue` one at a time until none is left; the ids in
/// the order they ran.
async fn drain(h: &Harness, queue: &str) -> Vec<Uuid> {
    let mut ran = Vec::new();
    loop {
        let Some(c) = claim(h, queue, 1).await.pop() else { return ran };
        complete(h, c.id, &c.lease).await.unwrap();
        ran.push(c.id);
    }
}

/// Runs `n` members of `queue` one after another, each `run_ms` long on the virtual clock.
async fn run_members(h: &Harness, queue: &str, n: usize, run_ms: i64) {
    for _ in 0..n {
        let c = claim_one(h, queue).await;
        h.clock.advance(run_ms);
        complete(h, c.id, &c.lease).await.unwrap();
    }
}

/// The invariants hold now, not only at the end of a rule.
async fn clean(h: &Harness) {
    let violations = h.store.check_invariants().await.unwrap();
    assert!(violations.is_empty(), "invariants violated: {violations:?}");
}

/// The completion job of ended convoy `c` (on its own queue, keyed `convoy:<id>:complete`, no
/// member), and its payload.
async fn completion(h: &Harness, c: &Convoy) -> Value {
    let id = c.on_complete_job_id.expect("the convoy ended with its completion job");
    let j = h.store.get_job(id).await.unwrap();
    assert_eq!(j.queue, AFTER);
    assert_eq!(j.unique_key, Some(completion_key(&c.id)));
    assert_eq!(j.convoy_id, None, "the completion job is no member");
    serde_json::from_str(j.payload.get()).unwrap()
}

/// The events about convoy `id` after cursor `start`, once `done` holds for them (PostgreSQL
/// numbers events shortly after commit).
async fn events_of(h: &Harness, start: u64, id: &str, done: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (mut got, mut after) = (Vec::new(), start);
        loop {
            let batch = events_after(h, after, 0).await;
            let Some(last) = batch.last() else { break };
            after = last.cursor;
            got.extend(
                batch.into_iter().filter(|e| e.subject.kind == SubjectKind::Convoy && e.subject.id == id),
            );
        }
        if done(got.as_slice()) {
            return got;
        }
        assert!(Instant::now() < deadline, "convoy {id}: expected events, have {got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The first `n` `convoy.limit_changed` of convoy `id` after `start`, decoded.
async fn limit_changes(h: &Harness, start: u64, id: &str, n: usize) -> Vec<LimitChange> {
    let is_change = |e: &Event| e.kind == EventType::ConvoyLimitChanged;
    events_of(h, start, id, |es| es.iter().filter(|e| is_change(e)).count() >= n)
        .await
        .into_iter()
        .filter(is_change)
        .map(|e| serde_json::from_value(e.data.expect("a limit change has data")).unwrap())
        .collect()
}

/// The ids of the convoys a list with this filter returns.
async fn listed(h: &Harness, state: Option<ConvoyState>, queue: Option<&str>) -> Vec<String> {
    let filter = ConvoyFilter { state, queue: queue.map(String::from) };
    h.store.list_convoys(filter, page(100)).await.unwrap().items.into_iter().map(|c| c.id).collect()
}

// ---------- the limit and held members ----------

/// Members over the limit are `held` (a state of its own: listed, counted, never claimed); a
/// freed slot goes to the held member of highest priority, then the first added.
pub async fn held_members_wait_for_a_slot(h: Harness) {
    let ms = [0, 0, 1, 5, 5].iter().map(|&p| member_with(Q, |s| s.priority = Some(p))).collect();
    let (c, ids) = create(&h, new_convoy("c1", Q, MaxParallel::Fixed(2), ms)).await;
    assert_eq!((c.state, c.sealed, c.limit), (ConvoyState::Sealed, true, 2));
    assert_eq!(c.counts, ConvoyCounts { total: 5, held: 3, ready: 2, ..Default::default() });
    assert_eq!((c.finished_at, c.on_complete_job_id), (None, None));
    for (i, id) in ids.iter().enumerate() {
        let j = h.store.get_job(*id).await.unwrap();
        assert_eq!(j.state, if i < 2 { JobState::Ready } else { JobState::Held }, "member {i}");
        assert_eq!((j.queue.as_str(), j.convoy_id.as_deref()), (Q, Some("c1")));
    }
    let held = h
        .store
        .list_jobs(JobFilter { queue: Some(Q.into()), state: Some(JobState::Held) }, page(10))
        .await
        .unwrap();
    assert_eq!(held.items.iter().map(|j| j.id).collect::<Vec<_>>(), ids[2..].to_vec());
    let stats = h.store.queue_stats().await.unwrap();
    let q = stats.iter().find(|s| s.queue == Q).expect("the convoy's queue has stats");
    assert_eq!((q.counts[&JobState::Held], q.counts[&JobState::Ready]), (3, 2));
    clean(&h).await;

    let running = claim(&h, Q, 10).await;
    assert_eq!(running.iter().map(|j| j.id).collect::<Vec<_>>(), ids[..2].to_vec(), "only the limit's worth");
    assert!(claim(&h, Q, 10).await.is_empty());
    assert_eq!(
        get(&h, "c1").await.counts,
        ConvoyCounts { total: 5, held: 3, running: 2, ..Default::default() }
    );

    complete(&h, running[0].id, &running[0].lease).await.unwrap();
    assert_eq!(state(&h, ids[3]).await, JobState::Ready, "the highest priority first, though added later");
    assert_eq!(state(&h, ids[4]).await, JobState::Held);
    assert_eq!(state(&h, ids[2]).await, JobState::Held);
    assert_eq!(
        get(&h, "c1").await.counts,
        ConvoyCounts { total: 5, held: 2, ready: 1, running: 1, completed: 1, ..Default::default() }
    );
    complete(&h, running[1].id, &running[1].lease).await.unwrap();
    assert_eq!(state(&h, ids[4]).await, JobState::Ready, "same priority: the first added");
    assert_eq!(state(&h, ids[2]).await, JobState::Held);
    clean(&h).await;

    assert_eq!(drain(&h, Q).await, vec![ids[3], ids[4], ids[2]]);
    let c = get(&h, "c1").await;
    assert_eq!(c.state, ConvoyState::Completed);
    assert_eq!(c.counts, ConvoyCounts { total: 5, completed: 5, ..Default::default() });
    assert_eq!((c.finished_at, c.on_complete_job_id), (Some(Timestamp(T0)), None));
    h.finish().await;
}

// ---------- ending ----------

/// An empty sealed convoy ends `completed` in its create, with its completion job; one without
/// a completion job ends without.
pub async fn an_empty_sealed_convoy_ends_at_once(h: Harness) {
    let mut nc = with_completion(new_convoy("e1", Q, MaxParallel::Fixed(3), Vec::new()));
    nc.name = "nightly".into();
    let (c, ids) = create(&h, nc).await;
    assert!(ids.is_empty());
    assert_eq!((c.state, c.sealed), (ConvoyState::Completed, true));
    assert_eq!(c.finished_at, Some(Timestamp(T0)));
    assert_eq!(c.counts, ConvoyCounts::default());
    assert_eq!(c.failed_total, 0);
    let v = completion(&h, &c).await;
    let counts = ConvoyCounts::default();
    assert_eq!(
        v,
        json!({
            "convoy": {"id": "e1", "name": "nightly", "state": "completed", "counts": counts,
                "failed_ids": [], "failed_total": 0},
            "payload": {"n": 7}
        })
    );
    assert_eq!(state(&h, c.on_complete_job_id.unwrap()).await, JobState::Ready);
    assert_eq!(get(&h, "e1").await.on_complete_job_id, c.on_complete_job_id);

    let (c, _) = create(&h, new_convoy("e2", Q, MaxParallel::Fixed(3), Vec::new())).await;
    assert_eq!((c.state, c.on_complete_job_id), (ConvoyState::Completed, None));
    let after =
        h.store.list_jobs(JobFilter { queue: Some(AFTER.into()), state: None }, page(10)).await.unwrap();
    assert_eq!(after.items.len(), 1, "one completion job, e1's");
    h.finish().await;
}

/// An open convoy takes members and outlives them; its seal ends it (once); a sealed or ended
/// convoy takes no more (`invalid_state`); unknown convoys are `not_found`.
pub async fn an_open_convoy_ends_only_after_its_seal(h: Harness) {
    let mut nc = with_completion(new_convoy("o1", Q, MaxParallel::Fixed(10), members(Q, 1)));
    nc.sealed = false;
    let (c, first) = create(&h, nc).await;
    assert_eq!((c.state, c.sealed), (ConvoyState::Open, false));
    let more = h.store.add_convoy_members("o1", members(Q, 2)).await.unwrap();
    assert_eq!(more.len(), 2);
    assert!(more.iter().all(|o| !o.duplicate));
    for o in &more {
        assert_eq!(h.store.get_job(o.id).await.unwrap().convoy_id.as_deref(), Some("o1"));
    }
    assert_eq!(get(&h, "o1").await.counts, ConvoyCounts { total: 3, ready: 3, ..Default::default() });
    let mut all = first.clone();
    all.extend(more.iter().map(|o| o.id));
    assert_eq!(drain(&h, Q).await, all);
    let c = get(&h, "o1").await;
    assert_eq!(
        (c.state, c.finished_at, c.on_complete_job_id),
        (ConvoyState::Open, None, None),
        "it outlives them"
    );

    h.clock.advance(1_000);
    let c = h.store.seal_convoy("o1").await.unwrap();
    assert_eq!((c.state, c.sealed), (ConvoyState::Completed, true));
    assert_eq!(c.finished_at, Some(Timestamp(T0 + 1_000)));
    assert_eq!(c.counts, ConvoyCounts { total: 3, completed: 3, ..Default::default() });
    assert_eq!(completion(&h, &c).await["convoy"]["state"], "completed");
    let again = h.store.seal_convoy("o1").await.unwrap();
    assert_eq!((again.state, again.on_complete_job_id), (ConvoyState::Completed, c.on_complete_job_id));
    let e = h.store.add_convoy_members("o1", members(Q, 1)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidState);

    // Sealed while members are live: it ends with the last of them.
    let mut nc = new_convoy("o2", "cq2", MaxParallel::Fixed(10), members("cq2", 1));
    nc.sealed = false;
    create(&h, nc).await;
    let c = h.store.seal_convoy("o2").await.unwrap();
    assert_eq!((c.state, c.sealed, c.finished_at), (ConvoyState::Sealed, true, None));
    let e = h.store.add_convoy_members("o2", members("cq2", 1)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidState);
    drain(&h, "cq2").await;
    assert_eq!(get(&h, "o2").await.state, ConvoyState::Completed);

    for e in [
        h.store.add_convoy_members("nope", members(Q, 1)).await.unwrap_err(),
        h.store.seal_convoy("nope").await.unwrap_err(),
        h.store.cancel_convoy("nope").await.unwrap_err(),
        h.store.get_convoy("nope").await.unwrap_err(),
        h.store.convoy_members("nope", None, page(10)).await.unwrap_err(),
    ] {
        assert_eq!(e.code, ErrorCode::NotFound);
    }
    let jobs = h.store.list_jobs(JobFilter { queue: Some(Q.into()), state: None }, page(100)).await.unwrap();
    assert_eq!(jobs.items.len(), 3, "refused adds added nothing");
    h.finish().await;
}

// ---------- repeats and keys ----------

/// A create repeating an id with the same name, queue and limit adds nothing (`duplicate`); one
/// that differs in any of them is a `conflict` naming the fields.
pub async fn a_repeated_create_adds_nothing(h: Harness) {
    let (first, _) = create(&h, new_convoy("r1", Q, MaxParallel::Fixed(3), members(Q, 2))).await;
    let again =
        h.store.create_convoy(new_convoy("r1", Q, MaxParallel::Fixed(3), members(Q, 5))).await.unwrap();
    assert!(again.duplicate);
    assert!(again.members.is_empty());
    assert_eq!((again.convoy.counts, again.convoy.created_at), (first.counts, first.created_at));

    let mut renamed = new_convoy("r1", Q, MaxParallel::Fixed(3), members(Q, 1));
    renamed.name = "other".into();
    let moved = new_convoy("r1", "elsewhere", MaxParallel::Fixed(4), members("elsewhere", 1));
    let adaptive = MaxParallel::Adaptive(Adaptive { min: 1, max: 3, start: 3 });
    let mut all = new_convoy("r1", "elsewhere", adaptive, Vec::new());
    all.name = "other".into();
    for (c, fields) in [
        (renamed, json!(["name"])),
        (moved, json!(["queue", "max_parallel"])),
        (all, json!(["name", "queue", "max_parallel"])),
    ] {
        let e = h.store.create_convoy(c).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        assert_eq!(e.details.as_ref().map(|d| &d["fields"]), Some(&fields), "{e:?}");
    }
    assert_eq!(get(&h, "r1").await.counts.total, 2);
    let jobs = h.store.list_jobs(JobFilter { queue: Some(Q.into()), state: None }, page(100)).await.unwrap();
    assert_eq!(jobs.items.len(), 2, "no repeat added a member");
    let elsewhere = h
        .store
        .list_jobs(JobFilter { queue: Some("elsewhere".into()), state: None }, page(100))
        .await
        .unwrap();
    assert!(elsewhere.items.is_empty());
    assert_eq!(drain(&h, Q).await.len(), 2);
    assert_eq!(get(&h, "r1").await.state, ConvoyState::Completed);
    h.finish().await;
}

/// A member's unique key dedups within its convoy, across adds and for the convoy's life; the
/// same key in another convoy, or on a plain job of the same queue, is no duplicate.
pub async fn member_keys_dedup_within_their_convoy(h: Harness) {
    let keyed = |k: &str| member_with(Q, |s| s.unique_key = Some(k.into()));
    let mut nc = new_convoy("u1", Q, MaxParallel::Fixed(10), vec![keyed("a"), keyed("b"), keyed("a")]);
    nc.sealed = false;
    let out = h.store.create_convoy(nc).await.unwrap().members;
    assert_eq!(out.len(), 3);
    assert!(!out[0].duplicate && !out[1].duplicate);
    assert_ne!(out[0].id, out[1].id);
    assert_eq!(out[2], EnqueueOutcome { id: out[0].id, duplicate: true });
    let added = h.store.add_convoy_members("u1", vec![keyed("b"), keyed("c")]).await.unwrap();
    assert_eq!(added[0], EnqueueOutcome { id: out[1].id, duplicate: true });
    assert!(!added[1].duplicate);
    assert_eq!(get(&h, "u1").await.counts.total, 3);

    let (_, u2) = create(&h, new_convoy("u2", Q, MaxParallel::Fixed(10), vec![keyed("a")])).await;
    assert_ne!(u2[0], out[0].id, "another convoy's key is its own");
    let plain = h.store.enqueue(vec![keyed("a")]).await.unwrap()[0];
    assert!(!plain.duplicate, "a plain job does not collide with a member's key");
    assert_ne!(plain.id, out[0].id);
    assert_eq!(h.store.get_job(plain.id).await.unwrap().convoy_id, None);

    assert_eq!(drain(&h, Q).await.len(), 5);
    assert_eq!(state(&h, out[0].id).await, JobState::Completed);
    let again = h.store.add_convoy_members("u1", vec![keyed("a")]).await.unwrap();
    assert_eq!(again, vec![EnqueueOutcome { id: out[0].id, duplicate: true }], "for the convoy's life");
    assert_eq!(get(&h, "u1").await.counts.total, 3);
    assert_eq!(h.store.seal_convoy("u1").await.unwrap().state, ConvoyState::Completed);
    assert_eq!(get(&h, "u2").await.state, ConvoyState::Completed);
    h.finish().await;
}

// ---------- failures, cancels, expiry ----------

/// A member waiting out a retry keeps its slot; a dead one frees it, and the convoy ends
/// `failed` with the dead member's id in its completion payload.
pub async fn a_retry_keeps_its_slot_and_a_dead_member_frees_it(h: Harness) {
    let retry = Backoff { base_ms: 1_000, factor: 1.0, max_ms: 1_000, jitter: Jitter(0.0) };
    let ms = (0..3).map(|_| member_with(Q, |s| s.backoff = Some(retry))).collect();
    let (_, ids) = create(&h, with_completion(new_convoy("f1", Q, MaxParallel::Fixed(1), ms))).await;
    let c = claim_one(&h, Q).await;
    assert_eq!(c.id, ids[0]);
    assert_eq!(fail(&h, c.id, &c.lease, true).await.unwrap().state, JobState::Scheduled);
    assert_eq!(
        get(&h, "f1").await.counts,
        ConvoyCounts { total: 3, held: 2, retrying: 1, ..Default::default() }
    );
    assert_eq!(state(&h, ids[1]).await, JobState::Held, "a retrying member keeps its slot");
    assert!(claim(&h, Q, 10).await.is_empty());
    clean(&h).await;

    h.clock.advance(1_000);
    assert_eq!(h.store.promote_due(10).await.unwrap(), 1);
    let c = claim_one(&h, Q).await;
    assert_eq!((c.id, c.attempt), (ids[0], 2));
    assert_eq!(fail(&h, c.id, &c.lease, false).await.unwrap().state, JobState::Dead);
    assert_eq!(
        get(&h, "f1").await.counts,
        ConvoyCounts { total: 3, held: 1, ready: 1, failed: 1, ..Default::default() }
    );
    assert_eq!(state(&h, ids[1]).await, JobState::Ready, "a dead member frees its slot");
    clean(&h).await;

    assert_eq!(drain(&h, Q).await, ids[1..].to_vec(), "the others run on");
    let c = get(&h, "f1").await;
    assert_eq!((c.state, c.failed_total), (ConvoyState::Failed, 1));
    let counts = ConvoyCounts { total: 3, completed: 2, failed: 1, ..Default::default() };
    assert_eq!(c.counts, counts);
    let v = completion(&h, &c).await;
    assert_eq!(v["convoy"]["state"], "failed");
    assert_eq!(v["convoy"]["counts"], json!(counts));
    assert_eq!(v["convoy"]["failed_ids"], json!([ids[0]]));
    assert_eq!(v["convoy"]["failed_total"], 1);
    h.finish().await;
}

/// Under `fail_fast` the first dead member seals the convoy and cancels every member not
/// running (ready and held); the running one finishes and counts; it ends `failed`.
pub async fn fail_fast_cancels_every_member_not_running(h: Harness) {
    let mut nc = with_completion(new_convoy("ff", Q, MaxParallel::Fixed(3), members(Q, 5)));
    nc.on_failure = OnFailure::FailFast;
    nc.sealed = false;
    let (_, ids) = create(&h, nc).await;
    let running = claim(&h, Q, 2).await;
    assert_eq!(running.iter().map(|j| j.id).collect::<Vec<_>>(), ids[..2].to_vec());
    // Now: 0 and 1 running, 2 ready, 3 and 4 held.
    assert_eq!(fail(&h, ids[0], &running[0].lease, false).await.unwrap().state, JobState::Dead);
    let c = get(&h, "ff").await;
    assert_eq!((c.state, c.sealed), (ConvoyState::Sealed, true), "the first dead member seals it");
    assert_eq!(
        c.counts,
        ConvoyCounts { total: 5, running: 1, failed: 1, cancelled: 3, ..Default::default() }
    );
    assert_eq!(state(&h, ids[1]).await, JobState::Running, "a running member runs on");
    for id in &ids[2..] {
        let j = h.store.get_job(*id).await.unwrap();
        assert_eq!(j.state, JobState::Cancelled);
        assert!(j.cancel_reason.is_some());
    }
    let e = h.store.add_convoy_members("ff", members(Q, 1)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidState);
    clean(&h).await;

    complete(&h, ids[1], &running[1].lease).await.unwrap();
    let c = get(&h, "ff").await;
    assert_eq!(c.state, ConvoyState::Failed);
    assert_eq!(
        c.counts,
        ConvoyCounts { total: 5, completed: 1, failed: 1, cancelled: 3, ..Default::default() }
    );
    let v = completion(&h, &c).await;
    assert_eq!(v["convoy"]["state"], "failed");
    assert_eq!(v["convoy"]["failed_ids"], json!([ids[0]]));
    h.finish().await;
}

/// A convoy cancel seals it and cancels every member not running (held, ready, retrying); the
/// running ones finish and it ends `cancelled`. Again: fine; on a completed or failed convoy:
/// `invalid_state`.
pub async fn cancel_lets_running_members_finish(h: Harness) {
    let retry = Backoff { base_ms: 1_000, factor: 1.0, max_ms: 1_000, jitter: Jitter(0.0) };
    let ms = (0..5).map(|_| member_with(Q, |s| s.backoff = Some(retry))).collect();
    let (_, ids) = create(&h, with_completion(new_convoy("cc", Q, MaxParallel::Fixed(3), ms))).await;
    let running = claim(&h, Q, 2).await;
    assert_eq!(running.iter().map(|j| j.id).collect::<Vec<_>>(), ids[..2].to_vec());
    assert_eq!(fail(&h, ids[1], &running[1].lease, true).await.unwrap().state, JobState::Scheduled);
    assert_eq!(
        get(&h, "cc").await.counts,
        ConvoyCounts { total: 5, held: 2, ready: 1, running: 1, retrying: 1, ..Default::default() }
    );

    let c = h.store.cancel_convoy("cc").await.unwrap();
    assert_eq!((c.state, c.sealed, c.finished_at), (ConvoyState::Sealed, true, None));
    assert_eq!(c.counts, ConvoyCounts { total: 5, running: 1, cancelled: 4, ..Default::default() });
    assert_eq!(state(&h, ids[0]).await, JobState::Running);
    for id in &ids[1..] {
        assert_eq!(state(&h, *id).await, JobState::Cancelled);
    }
    let again = h.store.cancel_convoy("cc").await.unwrap();
    assert_eq!((again.state, again.counts), (ConvoyState::Sealed, c.counts));
    clean(&h).await;

    complete(&h, ids[0], &running[0].lease).await.unwrap();
    let c = get(&h, "cc").await;
    assert_eq!(c.state, ConvoyState::Cancelled);
    assert_eq!(c.counts, ConvoyCounts { total: 5, completed: 1, cancelled: 4, ..Default::default() });
    assert!(c.finished_at.is_some());
    assert_eq!(completion(&h, &c).await["convoy"]["state"], "cancelled");
    assert_eq!(h.store.cancel_convoy("cc").await.unwrap().state, ConvoyState::Cancelled);

    // Nothing running: it ends in the cancel.
    create(&h, new_convoy("cn", "cq2", MaxParallel::Fixed(1), members("cq2", 2))).await;
    let c = h.store.cancel_convoy("cn").await.unwrap();
    assert_eq!((c.state, c.on_complete_job_id), (ConvoyState::Cancelled, None));
    assert_eq!(c.counts, ConvoyCounts { total: 2, cancelled: 2, ..Default::default() });

    // Ended otherwise: refused.
    create(&h, new_convoy("cd", "cq3", MaxParallel::Fixed(1), members("cq3", 1))).await;
    drain(&h, "cq3").await;
    create(&h, new_convoy("cf", "cq4", MaxParallel::Fixed(1), members("cq4", 1))).await;
    let c = claim_one(&h, "cq4").await;
    fail(&h, c.id, &c.lease, false).await.unwrap();
    for (id, ended) in [("cd", ConvoyState::Completed), ("cf", ConvoyState::Failed)] {
        assert_eq!(get(&h, id).await.state, ended);
        assert_eq!(h.store.cancel_convoy(id).await.unwrap_err().code, ErrorCode::InvalidState);
        assert_eq!(get(&h, id).await.state, ended);
    }
    h.finish().await;
}

/// A held member is cancelled like any job not running (held count down, nothing released); a
/// cancelled ready member's slot goes to a held one; the convoy still ends `completed`.
pub async fn cancelling_a_member_frees_what_it_held(h: Harness) {
    let (_, ids) = create(&h, new_convoy("cm", Q, MaxParallel::Fixed(2), members(Q, 4))).await;
    assert_eq!(h.store.cancel(ids[3], "not needed").await.unwrap(), JobState::Cancelled);
    assert_eq!(
        get(&h, "cm").await.counts,
        ConvoyCounts { total: 4, held: 1, ready: 2, cancelled: 1, ..Default::default() }
    );
    assert_eq!(state(&h, ids[2]).await, JobState::Held);
    assert_eq!(h.store.cancel(ids[0], "not needed").await.unwrap(), JobState::Cancelled);
    assert_eq!(state(&h, ids[2]).await, JobState::Ready, "the freed slot goes to the held member");
    assert_eq!(
        get(&h, "cm").await.counts,
        ConvoyCounts { total: 4, ready: 2, cancelled: 2, ..Default::default() }
    );
    clean(&h).await;

    let c = claim_one(&h, Q).await;
    assert_eq!(c.id, ids[1]);
    assert_eq!(h.store.cancel(ids[1], "no").await.unwrap_err().code, ErrorCode::InvalidState);
    complete(&h, c.id, &c.lease).await.unwrap();
    assert_eq!(drain(&h, Q).await, vec![ids[2]]);
    let c = get(&h, "cm").await;
    assert_eq!(c.state, ConvoyState::Completed, "cancelled members neither fail nor cancel it");
    assert_eq!(c.counts, ConvoyCounts { total: 4, completed: 2, cancelled: 2, ..Default::default() });
    h.finish().await;
}

/// An expired lease sends the member back to `ready` in its slot; at its last attempt it dies
/// and frees the slot.
pub async fn an_expired_lease_keeps_its_slot_until_the_last_attempt(h: Harness) {
    let first = member_with(Q, |s| {
        s.lease_ms = Some(1_000);
        s.max_attempts = Some(2);
    });
    let (_, ids) = create(&h, new_convoy("lx", Q, MaxParallel::Fixed(1), vec![first, job(Q)])).await;
    let c = claim_one(&h, Q).await;
    assert_eq!(c.id, ids[0]);
    h.clock.advance(1_000);
    assert_eq!(h.store.reap_expired(10).await.unwrap(), ReapOutcome { requeued: 1, dead: 0 });
    assert_eq!((state(&h, ids[0]).await, state(&h, ids[1]).await), (JobState::Ready, JobState::Held));
    assert_eq!(
        get(&h, "lx").await.counts,
        ConvoyCounts { total: 2, held: 1, ready: 1, ..Default::default() }
    );

    let c = claim_one(&h, Q).await;
    assert_eq!((c.id, c.attempt), (ids[0], 2));
    h.clock.advance(1_000);
    assert_eq!(h.store.reap_expired(10).await.unwrap(), ReapOutcome { requeued: 0, dead: 1 });
    assert_eq!((state(&h, ids[0]).await, state(&h, ids[1]).await), (JobState::Dead, JobState::Ready));
    assert_eq!(
        get(&h, "lx").await.counts,
        ConvoyCounts { total: 2, ready: 1, failed: 1, ..Default::default() }
    );
    clean(&h).await;

    assert_eq!(drain(&h, Q).await, vec![ids[1]]);
    let c = get(&h, "lx").await;
    assert_eq!((c.state, c.failed_total), (ConvoyState::Failed, 1));
    h.finish().await;
}

// ---------- limits ----------

/// `limits.max_convoy_members` bounds a convoy's members over its life, at create and at add.
pub async fn a_convoy_takes_at_most_max_convoy_members(h: Harness) {
    let e =
        h.store.create_convoy(new_convoy("big", Q, MaxParallel::Fixed(10), members(Q, 4))).await.unwrap_err();
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::ValidationFailed, Some("members")));
    assert_eq!(h.store.get_convoy("big").await.unwrap_err().code, ErrorCode::NotFound);
    let jobs = h.store.list_jobs(JobFilter { queue: Some(Q.into()), state: None }, page(10)).await.unwrap();
    assert!(jobs.items.is_empty(), "a refused create adds nothing");

    let mut nc = new_convoy("big", Q, MaxParallel::Fixed(10), members(Q, 2));
    nc.sealed = false;
    create(&h, nc).await;
    let e = h.store.add_convoy_members("big", members(Q, 2)).await.unwrap_err();
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::ValidationFailed, Some("members")));
    assert_eq!(get(&h, "big").await.counts.total, 2);
    assert_eq!(h.store.add_convoy_members("big", members(Q, 1)).await.unwrap().len(), 1);
    let e = h.store.add_convoy_members("big", members(Q, 1)).await.unwrap_err();
    assert_eq!((e.code, e.field.as_deref()), (ErrorCode::ValidationFailed, Some("members")));
    assert_eq!(get(&h, "big").await.counts.total, 3);
    h.store.seal_convoy("big").await.unwrap();
    assert_eq!(drain(&h, Q).await.len(), 3);
    assert_eq!(get(&h, "big").await.state, ConvoyState::Completed);

    let (c, _) = create(&h, new_convoy("full", "cq2", MaxParallel::Fixed(10), members("cq2", 3))).await;
    assert_eq!(c.counts.total, 3, "exactly the limit is fine");
    drain(&h, "cq2").await;
    h.finish().await;
}

/// The completion payload names the first `limits.max_convoy_failed_ids` dead members, in the
/// order added, and counts them all.
pub async fn failed_ids_are_bounded(h: Harness) {
    let (_, ids) =
        create(&h, with_completion(new_convoy("fi", Q, MaxParallel::Fixed(10), members(Q, 3)))).await;
    for c in claim(&h, Q, 10).await {
        assert_eq!(fail(&h, c.id, &c.lease, false).await.unwrap().state, JobState::Dead);
    }
    let c = get(&h, "fi").await;
    assert_eq!((c.state, c.failed_total, c.counts.failed), (ConvoyState::Failed, 3, 3));
    let v = completion(&h, &c).await;
    assert_eq!(v["convoy"]["failed_ids"], json!([ids[0], ids[1]]));
    assert_eq!(v["convoy"]["failed_total"], 3);
    h.finish().await;
}

// ---------- the adaptive limit ----------

/// Every 20 attempt ends judge the limit: +1 at the baseline's pace, × 0.75 (rounded down,
/// never under `min`) when the median run time passes 1.5 × the baseline's; a lowering window
/// stays out of the baseline except at `min`; each change is a `convoy.limit_changed`, and a
/// raised limit releases held members at once.
pub async fn the_adaptive_limit_follows_run_times(h: Harness) {
    let start = h.store.events().head();
    let bounds = Adaptive { min: 1, max: 10, start: 2 };
    let (c, _) = create(&h, new_convoy("ad", Q, MaxParallel::Adaptive(bounds), members(Q, 110))).await;
    assert_eq!((c.limit, c.counts.ready, c.counts.held), (2, 2, 108));

    run_members(&h, Q, WINDOW_SAMPLES - 1, 20).await;
    assert_eq!(get(&h, "ad").await.limit, 2, "judged once per window");
    run_members(&h, Q, 1, 20).await;
    let c = get(&h, "ad").await;
    assert_eq!((c.limit, c.counts.ready, c.counts.held), (3, 3, 87), "steady: one more, released at once");
    clean(&h).await;

    run_members(&h, Q, WINDOW_SAMPLES, 100).await;
    let c = get(&h, "ad").await;
    assert_eq!((c.limit, c.counts.ready, c.counts.held), (2, 2, 68), "slower: 3 × 0.75, rounded down");
    run_members(&h, Q, WINDOW_SAMPLES, 100).await;
    let c = get(&h, "ad").await;
    assert_eq!((c.limit, c.counts.ready, c.counts.held), (1, 1, 49), "2 × 0.75, rounded down");
    run_members(&h, Q, WINDOW_SAMPLES, 100).await;
    let c = get(&h, "ad").await;
    assert_eq!((c.limit, c.counts.ready, c.counts.held), (1, 1, 29), "never under min");
    clean(&h).await;
    // That window, at min, joined the baseline (20 × 20 ms, 20 × 100 ms): 100 ms is its pace now.
    run_members(&h, Q, WINDOW_SAMPLES, 100).await;
    let c = get(&h, "ad").await;
    assert_eq!((c.limit, c.counts.ready, c.counts.held), (2, 2, 8));

    let changes = limit_changes(&h, start, "ad", 4).await;
    let moves: Vec<(u32, u32, LimitReason, u32, u32)> =
        changes.iter().map(|c| (c.from, c.to, c.reason, c.p50_ms, c.long_p50_ms)).collect();
    assert_eq!(
        moves,
        vec![
            (2, 3, LimitReason::Increase, 20, 20),
            (3, 2, LimitReason::RunTime, 100, 20),
            (2, 1, LimitReason::RunTime, 100, 20),
            (1, 2, LimitReason::Increase, 100, 100),
        ]
    );
    assert!(changes.iter().all(|c| c.failed == 0 && c.pressure == 0.0), "{changes:?}");

    let c = h.store.cancel_convoy("ad").await.unwrap();
    assert_eq!(c.state, ConvoyState::Cancelled);
    assert_eq!(c.counts, ConvoyCounts { total: 110, completed: 100, cancelled: 10, ..Default::default() });
    h.finish().await;
}

/// A mean `pressure` of 0.8 or more over a window, reported on heartbeats or with completions,
/// lowers the adaptive limit (× 0.75, reason `pressure`), and a lower limit takes surplus ready
/// members back to `held`.
pub async fn reported_pressure_lowers_the_adaptive_limit(h: Harness) {
    let start = h.store.events().head();
    let bounds = Adaptive { min: 1, max: 10, start: 8 };
    create(&h, new_convoy("pr", Q, MaxParallel::Adaptive(bounds), members(Q, 50))).await;
    for _ in 0..WINDOW_SAMPLES {
        let c = claim_one(&h, Q).await;
        h.clock.advance(10);
        let hb = HeartbeatRequest { id: c.id, lease: c.lease.clone(), extend_ms: None, pressure: Some(0.9) };
        heartbeat(&h, hb).await.unwrap();
        h.clock.advance(10);
        complete(&h, c.id, &c.lease).await.unwrap();
    }
    let c = get(&h, "pr").await;
    assert_eq!(c.limit, 6);
    assert_eq!(
        c.counts,
        ConvoyCounts { total: 50, held: 24, ready: 6, completed: 20, ..Default::default() },
        "the surplus ready member went back to held"
    );
    clean(&h).await;

    for _ in 0..WINDOW_SAMPLES {
        let c = claim_one(&h, Q).await;
        h.clock.advance(20);
        let item = CompleteItem { id: c.id, lease: c.lease, result: None, pressure: Some(0.9) };
        h.store.complete(vec![item]).await.unwrap().pop().unwrap().unwrap();
    }
    let c = get(&h, "pr").await;
    assert_eq!(c.limit, 4);
    assert_eq!(c.counts, ConvoyCounts { total: 50, held: 6, ready: 4, completed: 40, ..Default::default() });
    clean(&h).await;

    let changes = limit_changes(&h, start, "pr", 2).await;
    let moves: Vec<(u32, u32, LimitReason, u32, u32)> =
        changes.iter().map(|c| (c.from, c.to, c.reason, c.p50_ms, c.failed)).collect();
    assert_eq!(moves, vec![(8, 6, LimitReason::Pressure, 20, 0), (6, 4, LimitReason::Pressure, 20, 0)]);
    assert!(changes.iter().all(|c| (c.pressure - 0.9).abs() < 1e-9), "{changes:?}");

    assert_eq!(h.store.cancel_convoy("pr").await.unwrap().state, ConvoyState::Cancelled);
    h.finish().await;
}

// ---------- replay ----------

/// A replayed dead member of a live convoy rejoins it (held while the slots are full, else
/// ready; no longer counted failed); one of an ended convoy comes back on its own.
pub async fn replayed_members_rejoin_a_live_convoy_only(h: Harness) {
    let (_, ids) = create(&h, new_convoy("rp", "rq", MaxParallel::Fixed(1), members("rq", 3))).await;
    let c = claim_one(&h, "rq").await;
    fail(&h, c.id, &c.lease, false).await.unwrap();
    assert_eq!(
        get(&h, "rp").await.counts,
        ConvoyCounts { total: 3, held: 1, ready: 1, failed: 1, ..Default::default() }
    );
    assert_eq!(h.store.replay_dead(DeadSelector::Ids(vec![ids[0]]), 10).await.unwrap().ids, vec![ids[0]]);
    let j = h.store.get_job(ids[0]).await.unwrap();
    assert_eq!(
        (j.state, j.attempt, j.convoy_id.as_deref()),
        (JobState::Held, 0, Some("rp")),
        "the slot is taken"
    );
    assert_eq!(
        get(&h, "rp").await.counts,
        ConvoyCounts { total: 3, held: 2, ready: 1, ..Default::default() }
    );
    clean(&h).await;
    assert_eq!(drain(&h, "rq").await, vec![ids[1], ids[0], ids[2]], "back in its place, by order added");
    let c = get(&h, "rp").await;
    assert_eq!((c.state, c.failed_total), (ConvoyState::Completed, 0));

    // A free slot takes it at once.
    let (_, ids) = create(&h, new_convoy("rp3", "rq3", MaxParallel::Fixed(2), members("rq3", 2))).await;
    let running = claim(&h, "rq3", 2).await;
    fail(&h, ids[0], &running[0].lease, false).await.unwrap();
    h.store.replay_dead(DeadSelector::Ids(vec![ids[0]]), 10).await.unwrap();
    assert_eq!(state(&h, ids[0]).await, JobState::Ready);
    assert_eq!(
        get(&h, "rp3").await.counts,
        ConvoyCounts { total: 2, ready: 1, running: 1, ..Default::default() }
    );
    assert_eq!(drain(&h, "rq3").await, vec![ids[0]]);
    complete(&h, ids[1], &running[1].lease).await.unwrap();
    assert_eq!(get(&h, "rp3").await.state, ConvoyState::Completed);

    // Ended: it leaves the convoy, whose counts stay as they ended.
    let (_, ids) = create(&h, new_convoy("rp2", "rq2", MaxParallel::Fixed(1), members("rq2", 1))).await;
    let c = claim_one(&h, "rq2").await;
    fail(&h, c.id, &c.lease, false).await.unwrap();
    assert_eq!(get(&h, "rp2").await.state, ConvoyState::Failed);
    h.store.replay_dead(DeadSelector::Queue("rq2".into()), 10).await.unwrap();
    let j = h.store.get_job(ids[0]).await.unwrap();
    assert_eq!((j.state, j.convoy_id), (JobState::Ready, None));
    assert_eq!(drain(&h, "rq2").await, vec![ids[0]]);
    let c = get(&h, "rp2").await;
    assert_eq!(c.state, ConvoyState::Failed);
    assert_eq!(c.counts, ConvoyCounts { total: 1, failed: 1, ..Default::default() });
    h.finish().await;
}

// ---------- reading, pruning, gauges ----------

/// Convoys list oldest first by state and queue, a page at a time; members list in the order
/// added, by state, a page at a time; pruning deletes ended convoys finished by the cutoff and
/// never live ones; the gauges count live convoys and held members.
pub async fn lists_pages_prunes_and_gauges(h: Harness) {
    let mut l1 = new_convoy("l1", "lq1", MaxParallel::Fixed(5), members("lq1", 1));
    l1.sealed = false;
    create(&h, l1).await;
    create(&h, new_convoy("l2", "lq2", MaxParallel::Fixed(5), members("lq2", 1))).await;
    create(&h, new_convoy("l3", "lq1", MaxParallel::Fixed(5), Vec::new())).await;
    let (_, m) = create(&h, new_convoy("l4", "lq1", MaxParallel::Fixed(1), members("lq1", 2))).await;

    assert_eq!(listed(&h, None, None).await, ["l1", "l2", "l3", "l4"]);
    assert_eq!(listed(&h, Some(ConvoyState::Open), None).await, ["l1"]);
    assert_eq!(listed(&h, Some(ConvoyState::Sealed), None).await, ["l2", "l4"]);
    assert_eq!(listed(&h, Some(ConvoyState::Completed), None).await, ["l3"]);
    assert!(listed(&h, Some(ConvoyState::Failed), None).await.is_empty());
    assert_eq!(listed(&h, None, Some("lq1")).await, ["l1", "l3", "l4"]);
    assert_eq!(listed(&h, Some(ConvoyState::Sealed), Some("lq1")).await, ["l4"]);
    assert!(listed(&h, None, Some("none")).await.is_empty());
    let p1 = h.store.list_convoys(ConvoyFilter::default(), page(3)).await.unwrap();
    assert_eq!(p1.items.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["l1", "l2", "l3"]);
    assert_eq!(p1.items[1].counts, ConvoyCounts { total: 1, ready: 1, ..Default::default() });
    let next = PageRequest { limit: 3, cursor: Some(p1.next_cursor.expect("more to come")) };
    let p2 = h.store.list_convoys(ConvoyFilter::default(), next).await.unwrap();
    assert_eq!(p2.items.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["l4"]);
    assert_eq!(p2.next_cursor, None);
    assert_eq!(h.store.convoy_gauges().await.unwrap(), ConvoyGauges { open: 1, sealed: 2, held: 1 });

    let first = h.store.convoy_members("l4", None, page(1)).await.unwrap();
    assert_eq!(first.items.len(), 1);
    assert_eq!((first.items[0].id, first.items[0].state, first.items[0].attempt), (m[0], JobState::Ready, 0));
    assert_eq!((first.items[0].started_at, first.items[0].finished_at), (None, None));
    let next = PageRequest { limit: 1, cursor: Some(first.next_cursor.expect("a second member")) };
    let second = h.store.convoy_members("l4", None, next).await.unwrap();
    assert_eq!((second.items[0].id, second.items[0].state), (m[1], JobState::Held));
    assert_eq!(second.next_cursor, None);
    let held = h.store.convoy_members("l4", Some(JobState::Held), page(10)).await.unwrap();
    assert_eq!(held.items.iter().map(|v| v.id).collect::<Vec<_>>(), vec![m[1]]);
    let ready = h.store.convoy_members("l4", Some(JobState::Ready), page(10)).await.unwrap();
    assert_eq!(ready.items.iter().map(|v| v.id).collect::<Vec<_>>(), vec![m[0]]);
    assert!(h.store.convoy_members("l3", None, page(10)).await.unwrap().items.is_empty());

    h.clock.advance(1_000);
    let running = claim(&h, "lq1", 10).await;
    assert_eq!(running.len(), 2, "l1's member and l4's first");
    h.clock.advance(500);
    for c in &running {
        complete(&h, c.id, &c.lease).await.unwrap();
    }
    let done = h.store.convoy_members("l4", Some(JobState::Completed), page(10)).await.unwrap();
    assert_eq!(done.items.len(), 1);
    let v = &done.items[0];
    assert_eq!((v.id, v.attempt), (m[0], 1));
    assert_eq!((v.started_at, v.finished_at), (Some(Timestamp(T0 + 1_000)), Some(Timestamp(T0 + 1_500))));
    assert_eq!(drain(&h, "lq1").await, vec![m[1]]);
    assert_eq!(get(&h, "l4").await.state, ConvoyState::Completed);
    assert_eq!(h.store.convoy_gauges().await.unwrap(), ConvoyGauges { open: 1, sealed: 1, held: 0 });

    assert_eq!(h.store.prune_convoys(T0, 10).await.unwrap(), 1, "l3, ended at T0");
    assert_eq!(h.store.get_convoy("l3").await.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(h.store.convoy_members("l3", None, page(10)).await.unwrap_err().code, ErrorCode::NotFound);
    assert_eq!(h.store.prune_convoys(T0 + 1_499, 10).await.unwrap(), 0);
    assert_eq!(h.store.prune_convoys(T0 + 1_500, 10).await.unwrap(), 1, "l4");
    assert_eq!(h.store.prune_convoys(T0 + 1_000_000, 10).await.unwrap(), 0, "live convoys stay");
    assert_eq!(listed(&h, None, None).await, ["l1", "l2"]);

    assert_eq!(h.store.seal_convoy("l1").await.unwrap().state, ConvoyState::Completed);
    assert_eq!(h.store.cancel_convoy("l2").await.unwrap().state, ConvoyState::Cancelled);
    assert_eq!(h.store.convoy_gauges().await.unwrap(), ConvoyGauges::default());
    h.finish().await;
}

// ---------- events ----------

/// `convoy.created` (name, queue, limit, sealed), `convoy.progress` (counts; a second apart at
/// most), `convoy.completed` (state, counts, on_complete_job_id: null without one).
pub async fn events_mark_creation_progress_and_end(h: Harness) {
    let start = h.store.events().head();
    let (_, ids) =
        create(&h, with_completion(new_convoy("ev", Q, MaxParallel::Fixed(1), members(Q, 2)))).await;
    let c = claim_one(&h, Q).await;
    h.clock.advance(1_000);
    complete(&h, c.id, &c.lease).await.unwrap();
    let c = claim_one(&h, Q).await;
    assert_eq!(c.id, ids[1]);
    complete(&h, c.id, &c.lease).await.unwrap();
    let ended = get(&h, "ev").await;
    assert_eq!(ended.state, ConvoyState::Completed);
    create(&h, new_convoy("ev0", Q, MaxParallel::Fixed(1), Vec::new())).await;

    let done = |es: &[Event]| es.iter().any(|e| e.kind == EventType::ConvoyCompleted);
    let events = events_of(&h, start, "ev", done).await;
    let kinds: Vec<EventType> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventType::ConvoyCreated, EventType::ConvoyProgress, EventType::ConvoyCompleted]);
    assert!(events.iter().all(|e| e.queue.as_deref() == Some(Q)));
    assert_eq!(events[0].data, Some(json!({"name": "ev", "queue": Q, "limit": 1, "sealed": true})));
    let midway = ConvoyCounts { total: 2, ready: 1, completed: 1, ..Default::default() };
    assert_eq!(events[1].data, Some(json!({ "counts": midway })));
    let last = ConvoyCounts { total: 2, completed: 2, ..Default::default() };
    assert!(ended.on_complete_job_id.is_some());
    assert_eq!(
        events[2].data,
        Some(json!({"state": "completed", "counts": last, "on_complete_job_id": ended.on_complete_job_id}))
    );

    let events = events_of(&h, start, "ev0", done).await;
    let kinds: Vec<EventType> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventType::ConvoyCreated, EventType::ConvoyCompleted]);
    let data = events[1].data.as_ref().unwrap();
    assert_eq!((&data["state"], &data["on_complete_job_id"]), (&json!("completed"), &Value::Null));
    h.finish().await;
}

/// Every rule above: `conformance_tests!` runs each against every backend. A rule missing
/// here is never called, and `dead_code` fails the build.
macro_rules! convoys_rules {
    () => {
        domain_tests!(convoys:
            held_members_wait_for_a_slot, an_empty_sealed_convoy_ends_at_once,
            an_open_convoy_ends_only_after_its_seal, a_repeated_create_adds_nothing,
            member_keys_dedup_within_their_convoy, a_retry_keeps_its_slot_and_a_dead_member_frees_it,
            fail_fast_cancels_every_member_not_running, cancel_lets_running_members_finish,
            cancelling_a_member_frees_what_it_held, an_expired_lease_keeps_its_slot_until_the_last_attempt,
            a_convoy_takes_at_most_max_convoy_members [limits = crate::conformance::convoys::few_members()],
            failed_ids_are_bounded [limits = crate::conformance::convoys::two_failed_ids()],
            the_adaptive_limit_follows_run_times, reported_pressure_lowers_the_adaptive_limit,
            replayed_members_rejoin_a_live_convoy_only, lists_pages_prunes_and_gauges,
            events_mark_creation_progress_and_end,
        );
    };
}
