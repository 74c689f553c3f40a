//! The schedule part of the `Store` contract: creating, reading, listing, pausing and deleting
//! schedules, firing each cron tick exactly once (also from concurrent firing passes), and the
//! misfire policies after downtime.

use super::{Harness, T0, events_after, spec};
use ferry_core::*;
use std::collections::HashSet;

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
    let page = h
        .store
        .list_jobs(
            JobFilter { queue: Some("ticks".into()), state: None },
            PageRequest { limit: 1000, cursor: None },
        )
        .await
        .unwrap();
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

/// Every rule above: `conformance_tests!` runs each against every backend. A rule missing
/// here is never called, and `dead_code` fails the build.
macro_rules! schedules_rules {
    () => {
        domain_tests!(schedules:
            schedule_crud, schedule_fires_each_tick_once, schedule_misfire_policies,
            schedule_concurrent_firing_exactly_once,
        );
    };
}
