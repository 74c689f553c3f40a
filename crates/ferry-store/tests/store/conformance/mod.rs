//! The storage conformance suite: the specification of [`Store`], written once and run
//! against every backend (as River's driver test suite is), one file per domain of the
//! contract. This module holds what every domain shares: the [`Harness`] and the helpers.
//!
//! A backend's test file provides `async fn harness(clock, limits) -> Option<Harness>` (None
//! skips, with a printed reason, when the backend's service is absent and not required; the
//! store is opened with `limits`) and calls `conformance_tests!(harness);`, which expands to
//! one test per rule, named `<backend>::<domain>::<rule>`.
//!
//! A rule is a `pub async fn <rule>(h: Harness)` in its domain's file, and that file ends with
//! one `<domain>_rules!` macro listing its rules; a rule listed as `rule [limits = expr]` runs
//! on a store opened with those limits (`Limits::default()` otherwise). Only those lists call
//! rules, and `dead_code` is denied here, so a rule left out of its list is an unused function
//! and the build fails; so does a domain whose macro `conformance_tests!` does not expand (its
//! rules are unused, the macro too). Every backend expands the same `conformance_tests!`, and
//! must (a constant below reads the marker it defines in each), so a rule runs against all of
//! them or the build fails.
//! A file here that is not declared a module is not compiled at all: a test catches that.

#![deny(dead_code, unused_macros)]

#[macro_use]
pub mod checkpoints;
#[macro_use]
pub mod convoys;
#[macro_use]
pub mod core;
#[macro_use]
pub mod events;
#[macro_use]
pub mod hosts;
#[macro_use]
pub mod items;
#[macro_use]
pub mod jobs;
#[macro_use]
pub mod json_props;
#[macro_use]
pub mod ledger;
#[macro_use]
pub mod memory;
#[macro_use]
pub mod messages;
#[macro_use]
pub mod props;
#[macro_use]
pub mod queues;
#[macro_use]
pub mod schedules;
#[macro_use]
pub mod tokens;
#[macro_use]
pub mod workers;

use ferry_core::validate::JobSpec;
use ferry_core::*;
use ferry_store::{Store, claim_wait};
use serde_json::value::RawValue;
use std::any::Any;
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

/// Expands, in a backend's test module, to one module of tests per domain: `<domain>::<rule>`
/// for every rule of every domain. `$make` is the backend's `harness`.
macro_rules! conformance_tests {
    ($make:path) => {
        /// The backend's harness, under the one name every domain's tests call: a fresh store
        /// reading `clock`, opened with `limits`.
        async fn conformance_harness(
            clock: std::sync::Arc<ferry_core::ManualClock>,
            limits: ferry_core::Limits,
        ) -> Option<crate::conformance::Harness> {
            $make(clock, limits).await
        }

        /// Read by the conformance module: this backend runs the whole suite.
        pub const RUNS_THE_CONFORMANCE_SUITE: () = ();

        checkpoints_rules!();
        convoys_rules!();
        core_rules!();
        events_rules!();
        hosts_rules!();
        items_rules!();
        jobs_rules!();
        json_props_rules!();
        ledger_rules!();
        memory_rules!();
        messages_rules!();
        props_rules!();
        queues_rules!();
        schedules_rules!();
        tokens_rules!();
        workers_rules!();
    };
}

/// One domain's tests against the backend whose module expands it: `mod $domain`, with a test
/// per rule running `crate::conformance::$domain::$rule` on a fresh harness. A rule written
/// `rule [limits = expr]` gets a store opened with `expr`'s limits; the others the defaults.
macro_rules! domain_tests {
    (@limits) => {
        ferry_core::Limits::default()
    };
    (@limits $limits:expr) => {
        $limits
    };
    ($domain:ident: $($rule:ident $([limits = $limits:expr])?),* $(,)?) => {
        mod $domain {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $rule() {
                    let clock = ferry_core::ManualClock::new(crate::conformance::T0);
                    let limits: ferry_core::Limits = domain_tests!(@limits $($limits)?);
                    if let Some(h) = super::conformance_harness(clock, limits).await {
                        crate::conformance::$domain::$rule(h).await;
                    }
                }
            )*
        }
    };
}

// The backends: each must expand `conformance_tests!`, which defines the marker read here.
const _: [(); 2] = [crate::postgres::RUNS_THE_CONFORMANCE_SUITE, crate::sqlite::RUNS_THE_CONFORMANCE_SUITE];

/// Every file in this directory is compiled: a domain file not declared with `mod` above would
/// hold rules nothing checks, let alone runs.
#[test]
fn every_file_here_is_a_declared_module() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/store/conformance");
    let this = include_str!("mod.rs");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_str().unwrap();
        if path.extension().is_some_and(|e| e == "rs") && name != "mod" {
            assert!(this.contains(&format!("\npub mod {name};\n")), "{} is not a module", path.display());
        }
    }
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
        .complete(vec![CompleteItem { id, lease: lease.into(), result: None, pressure: None }])
        .await
        .unwrap()
        .pop()
        .unwrap()
}

pub async fn heartbeat(h: &Harness, req: HeartbeatRequest) -> Result<HeartbeatOutcome> {
    h.store.heartbeat(vec![req]).await.unwrap().pop().unwrap()
}

pub async fn fail(h: &Harness, id: Uuid, lease: &str, retry: bool) -> Result<FailOutcome> {
    h.store
        .fail(vec![FailItem { id, lease: lease.into(), error: "boom".into(), retry, pressure: None }])
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

async fn make_dead(h: &Harness, queue: &str) -> Uuid {
    let id = enqueue1(h, job(queue)).await;
    let c = claim_one(h, queue).await;
    assert_eq!(c.id, id);
    fail(h, id, &c.lease, false).await.unwrap();
    id
}

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

/// Waits until the bus has published up to `cursor` (PostgreSQL numbers events shortly after
/// commit), then reads the stored log after `after`.
/// The first stored event of `kind` after `after`, waited for: on PostgreSQL events are
/// numbered by a sequencer pass after their commit, so the one a test wants may not be
/// readable yet when others already are.
async fn event_of(h: &Harness, after: u64, kind: ferry_core::EventType) -> Event {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = h.store.read_events(after, 100_000).await.unwrap();
        if let Some(e) = got.into_iter().find(|e| e.kind == kind) {
            return e;
        }
        assert!(Instant::now() < deadline, "no {kind:?} event after {after} within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
