//! Property test of the job state machine over a real store: random operation sequences,
//! checked against a small model of leases, then against the store's own invariants.
//!
//! Safety properties checked at every step: a claim never hands out a job that is running,
//! finished or cancelled; a lease is honoured exactly while it is the job's latest one and
//! unexpired (a repeat of the worker's own final report is answered the same); a completed
//! job stays completed; attempts count up by one per claim.

use super::{Harness, heartbeat};
use ferry_core::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug, Clone)]
enum Op {
    Enqueue { priority: i8, delay_ms: Option<u16>, max_attempts: u8 },
    Claim { max: u8 },
    Complete { pick: u8, older: bool },
    Fail { pick: u8, older: bool, retry: bool },
    Heartbeat { pick: u8 },
    Cancel { pick: u8 },
    Advance { ms: u16 },
    Reap,
    Promote,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<i8>(), proptest::option::of(0u16..3_000), 1u8..4)
            .prop_map(|(priority, delay_ms, max_attempts)| Op::Enqueue { priority, delay_ms, max_attempts }),
        3 => (1u8..4).prop_map(|max| Op::Claim { max }),
        3 => (any::<u8>(), any::<bool>()).prop_map(|(pick, older)| Op::Complete { pick, older }),
        2 => (any::<u8>(), any::<bool>(), any::<bool>()).prop_map(|(pick, older, retry)| Op::Fail { pick, older, retry }),
        1 => any::<u8>().prop_map(|pick| Op::Heartbeat { pick }),
        1 => any::<u8>().prop_map(|pick| Op::Cancel { pick }),
        2 => (0u16..2_500).prop_map(|ms| Op::Advance { ms }),
        1 => Just(Op::Reap),
        1 => Just(Op::Promote),
    ]
}

#[derive(Debug, Default)]
struct ModelJob {
    id: uuid::Uuid,
    max_attempts: u32,
    claims: u32,
    current: Option<(String, i64)>,
    leases: Vec<String>,
    completed_with: Option<String>,
    failed_with: Option<String>,
    dead: bool,
    cancelled: bool,
}

impl ModelJob {
    fn finished(&self) -> bool {
        self.completed_with.is_some() || self.dead || self.cancelled
    }
    fn pick_lease(&self, older: bool) -> String {
        match (older, self.leases.len()) {
            (_, 0) => "never-issued".into(),
            (true, n) if n >= 2 => self.leases[n - 2].clone(),
            (_, n) => self.leases[n - 1].clone(),
        }
    }
    fn live(&self, lease: &str, now: i64) -> bool {
        matches!(&self.current, Some((l, exp)) if l == lease && *exp > now)
    }
}

static CASE: AtomicUsize = AtomicUsize::new(0);

async fn run_case(h: &Harness, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let queue = format!("prop{}", CASE.fetch_add(1, Ordering::SeqCst));
    let backoff = Backoff { base_ms: 100, factor: 2.0, max_ms: 1_000, jitter: Jitter(0.0) };
    let mut jobs: Vec<ModelJob> = Vec::new();
    for op in ops {
        let now = h.clock.now_ms();
        match op {
            Op::Enqueue { priority, delay_ms, max_attempts } => {
                let spec = validate::JobSpec {
                    queue: queue.clone(),
                    priority: Some(priority.into()),
                    delay_ms: delay_ms.map(i64::from),
                    max_attempts: Some(max_attempts.into()),
                    backoff: Some(backoff),
                    lease_ms: Some(1_000),
                    ..Default::default()
                };
                let id =
                    h.store.enqueue(vec![spec.validate(&Limits::default()).unwrap()]).await.unwrap()[0].id;
                jobs.push(ModelJob { id, max_attempts: max_attempts.into(), ..Default::default() });
            }
            Op::Claim { max } => {
                let req = ClaimRequest {
                    queue: queue.clone(),
                    worker: "p".into(),
                    max: max.into(),
                    lease_ms: None,
                };
                let claimed = h.store.claim(req).await.unwrap();
                prop_assert!(claimed.len() <= max as usize);
                for c in claimed {
                    let m = jobs.iter_mut().find(|m| m.id == c.id).expect("claimed a job of this case");
                    prop_assert!(m.current.is_none(), "claimed a running job {}", c.id);
                    prop_assert!(!m.finished(), "claimed a finished job {}", c.id);
                    prop_assert_eq!(c.attempt, m.claims + 1);
                    prop_assert!(!m.leases.contains(&c.lease), "lease token reused");
                    m.claims += 1;
                    m.current = Some((c.lease.clone(), c.lease_expires_at.0));
                    m.leases.push(c.lease);
                    m.failed_with = None;
                }
            }
            Op::Complete { pick, older } if !jobs.is_empty() => {
                let n = jobs.len();
                let m = &mut jobs[pick as usize % n];
                let lease = m.pick_lease(older);
                let expect_ok = m.live(&lease, now) || m.completed_with.as_deref() == Some(lease.as_str());
                let item = CompleteItem { id: m.id, lease: lease.clone(), result: None, pressure: None };
                let got = h.store.complete(vec![item]).await.unwrap().pop().unwrap();
                match got {
                    Ok(()) => {
                        prop_assert!(expect_ok, "complete accepted a stale lease");
                        m.completed_with = Some(lease);
                        m.current = None;
                    }
                    Err(e) => {
                        prop_assert!(!expect_ok, "complete refused a live lease: {e}");
                        prop_assert_eq!(e.code, ErrorCode::StaleLease);
                    }
                }
            }
            Op::Fail { pick, older, retry } if !jobs.is_empty() => {
                let n = jobs.len();
                let m = &mut jobs[pick as usize % n];
                let lease = m.pick_lease(older);
                let repeat = m.failed_with.as_deref() == Some(lease.as_str());
                let expect_ok = m.live(&lease, now) || repeat;
                let item =
                    FailItem { id: m.id, lease: lease.clone(), error: "e".into(), retry, pressure: None };
                match h.store.fail(vec![item]).await.unwrap().pop().unwrap() {
                    Ok(out) => {
                        prop_assert!(expect_ok, "fail accepted a stale lease");
                        if !repeat {
                            let dead = !retry || m.claims >= m.max_attempts;
                            prop_assert_eq!(out.state == JobState::Dead, dead);
                            m.dead = dead;
                            m.current = None;
                            m.failed_with = Some(lease);
                        }
                    }
                    Err(e) => {
                        prop_assert!(!expect_ok, "fail refused a live lease: {e}");
                        prop_assert_eq!(e.code, ErrorCode::StaleLease);
                    }
                }
            }
            Op::Heartbeat { pick } if !jobs.is_empty() => {
                let n = jobs.len();
                let m = &mut jobs[pick as usize % n];
                let lease = m.pick_lease(false);
                let expect_ok = m.live(&lease, now);
                match heartbeat(
                    h,
                    HeartbeatRequest { id: m.id, lease: lease.clone(), extend_ms: None, pressure: None },
                )
                .await
                {
                    Ok(hb) => {
                        prop_assert!(expect_ok, "heartbeat accepted a stale lease");
                        m.current = Some((lease, hb.lease_expires_at.0));
                    }
                    Err(e) => {
                        prop_assert!(!expect_ok, "heartbeat refused a live lease: {e}");
                        prop_assert_eq!(e.code, ErrorCode::StaleLease);
                    }
                }
            }
            Op::Cancel { pick } if !jobs.is_empty() => {
                let n = jobs.len();
                let m = &mut jobs[pick as usize % n];
                let got = h.store.cancel(m.id, "prop").await;
                if m.current.is_some() || m.completed_with.is_some() || m.dead {
                    prop_assert_eq!(got.unwrap_err().code, ErrorCode::InvalidState);
                } else {
                    prop_assert_eq!(got.unwrap(), JobState::Cancelled);
                    m.cancelled = true;
                    m.failed_with = None;
                }
            }
            Op::Advance { ms } => h.clock.advance(ms.into()),
            Op::Reap => {
                // Reaping is global: other cases' leftovers may be reaped too, so check
                // this case's jobs one by one.
                let out = h.store.reap_expired(10_000).await.unwrap();
                let mut expected = ReapOutcome::default();
                for m in jobs.iter_mut() {
                    if matches!(&m.current, Some((_, exp)) if *exp <= now) {
                        m.current = None;
                        m.dead = m.claims >= m.max_attempts;
                        let want = if m.dead { JobState::Dead } else { JobState::Ready };
                        prop_assert_eq!(h.store.get_job(m.id).await.unwrap().state, want);
                        if m.dead {
                            expected.dead += 1;
                        } else {
                            expected.requeued += 1;
                        }
                    }
                }
                prop_assert!(out.dead >= expected.dead && out.requeued >= expected.requeued);
            }
            Op::Promote => {
                h.store.promote_due(10_000).await.unwrap();
            }
            _ => {}
        }
    }
    for m in &jobs {
        let j = h.store.get_job(m.id).await.unwrap();
        if m.completed_with.is_some() {
            prop_assert_eq!(j.state, JobState::Completed);
        }
        if m.dead {
            prop_assert_eq!(j.state, JobState::Dead);
        }
        if m.cancelled {
            prop_assert_eq!(j.state, JobState::Cancelled);
        }
        prop_assert_eq!(j.attempt, m.claims);
        prop_assert_eq!(j.state == JobState::Running, m.current.is_some());
    }
    let violations = h.store.check_invariants().await.unwrap();
    prop_assert!(violations.is_empty(), "invariants: {:?}", violations);
    Ok(())
}

/// Runs the property over one store, each case in a queue of its own.
pub async fn property_state_machine(h: Harness) {
    run_property(&h, "state machine", proptest::collection::vec(op(), 1..60), run_case);
    h.finish().await;
}

/// Runs `FERRY_PROPTEST_CASES` (default 48) cases of `strategy` through `check` on one store
/// (from inside a multi-threaded runtime); panics with the minimal failing case.
pub fn run_property<'a, S, F, Fut>(h: &'a Harness, what: &str, strategy: S, check: F)
where
    S: Strategy,
    F: Fn(&'a Harness, S::Value) -> Fut,
    Fut: std::future::Future<Output = Result<(), TestCaseError>>,
{
    let handle = tokio::runtime::Handle::current();
    let cases: u32 = std::env::var("FERRY_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48);
    let result = tokio::task::block_in_place(|| {
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        runner.run(&strategy, |v| handle.block_on(check(h, v))).map_err(|e| e.to_string())
    });
    if let Err(e) = result {
        panic!("{what} property failed: {e}");
    }
}

/// Every rule above: `conformance_tests!` runs each against every backend. A rule missing
/// here is never called, and `dead_code` fails the build.
macro_rules! props_rules {
    () => {
        domain_tests!(props:
            property_state_machine,
        );
    };
}
