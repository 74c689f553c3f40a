//! The conformance suite against the SQLite backend, plus SQLite-only checks (schema
//! versioning and reopening).

use crate::conformance::{self, Harness};
use ferry_core::{Clock, ErrorCode, Limits, ManualClock, SystemClock};
use ferry_store::prelude::*;
use ferry_store::{SqliteConfig, SqliteStore};
use std::sync::Arc;

async fn harness(clock: Arc<ManualClock>, limits: Limits) -> Option<Harness> {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = SqliteConfig::new(dir.path().join("ferry.db"));
    cfg.limits = limits;
    let store = SqliteStore::open(cfg, clock.clone()).unwrap();
    Some(Harness { store: Arc::new(store), clock, guard: Box::new(dir) })
}

conformance_tests!(harness);

#[tokio::test]
async fn migrations_are_idempotent_and_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/dir/ferry.db");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let id = {
        let s = SqliteStore::open(SqliteConfig::new(&path), clock.clone()).unwrap();
        let id = s.enqueue(vec![conformance::job("q")]).await.unwrap()[0].id;
        s.close().await;
        id
    };
    for _ in 0..2 {
        let s = SqliteStore::open(SqliteConfig::new(&path), clock.clone()).unwrap();
        assert_eq!(s.get_job(id).await.unwrap().queue, "q");
        s.close().await;
    }
}

#[tokio::test]
async fn newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.db");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    SqliteStore::open(SqliteConfig::new(&path), clock.clone()).unwrap().close().await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE ferry_meta SET value = '999' WHERE key = 'schema_version'", []).unwrap();
    drop(conn);
    let err = SqliteStore::open(SqliteConfig::new(&path), clock).err().expect("refused");
    assert_eq!(err.code, ErrorCode::SchemaTooNew);
    assert!(err.message.contains("999"), "{}", err.message);
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.db");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let first = SqliteStore::open(SqliteConfig::new(&path), clock.clone()).unwrap();
    let err = SqliteStore::open(SqliteConfig::new(&path), clock.clone()).err().expect("refused while open");
    assert!(err.message.contains("in use"), "{}", err.message);
    first.close().await;
    SqliteStore::open(SqliteConfig::new(&path), clock).unwrap().close().await;
}

/// A database written by the release before events had a `subject` (fixtures/, made by
/// `make-events-v0.1.sh`) opens, and its events read back as that release served them, plus
/// the subject each one was about.
#[tokio::test]
async fn events_written_by_the_previous_release_still_decode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.db");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/store/fixtures/events-v0.1.db"), &path)
        .unwrap();
    let want: Vec<serde_json::Value> =
        serde_json::from_str(include_str!("fixtures/events-v0.1.json")).expect("fixture is JSON");
    let s = SqliteStore::open(SqliteConfig::new(&path), Arc::new(SystemClock)).unwrap();
    let got = s.read_events(0, 1000).await.unwrap();
    assert_eq!(got.len(), want.len());
    let mut types = std::collections::HashSet::new();
    for (e, want) in got.iter().zip(&want) {
        let mut json = serde_json::to_value(e).unwrap();
        let subject = json.as_object_mut().unwrap().remove("subject").expect("every event has a subject");
        assert_eq!(&json, want, "event {} reads back as the previous release served it", e.cursor);
        let expected = match e.kind.as_str() {
            "schedule.fired" => serde_json::json!({"kind": "schedule", "id": "tick"}),
            "queue.paused" | "queue.resumed" => serde_json::json!({"kind": "queue", "id": want["queue"]}),
            _ => serde_json::json!({"kind": "job", "id": want["job_id"]}),
        };
        assert_eq!(subject, expected, "event {}", e.cursor);
        types.insert(e.kind);
    }
    // That release had the job, queue and schedule types (codes 0..=10); later ones came after.
    let of_that_release = ferry_core::EventType::ALL.iter().filter(|t| t.code() <= 10).count();
    assert_eq!(types.len(), of_that_release, "the fixture holds every type of that release");
    s.close().await;
}

/// Writes about 4 MiB (100 jobs of 40 KB payloads), then the WAL file's size a moment later.
async fn wal_after_writes(max_wal_bytes: u64, wait: std::time::Duration) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.db");
    let mut cfg = SqliteConfig::new(&path);
    cfg.limits.max_sqlite_wal_bytes = max_wal_bytes;
    let s = SqliteStore::open(cfg, Arc::new(SystemClock)).unwrap();
    let payload = format!("\"{}\"", "x".repeat(40_000));
    for _ in 0..10 {
        let jobs = (0..10)
            .map(|_| conformance::job_with(|j| j.payload = Some(conformance::raw(&payload))))
            .collect();
        s.enqueue(jobs).await.unwrap();
    }
    let wal_len = || std::fs::metadata(dir.path().join("ferry.db-wal")).map(|m| m.len()).unwrap_or(0);
    let deadline = std::time::Instant::now() + wait;
    let mut len = wal_len();
    while std::time::Instant::now() < deadline && len > max_wal_bytes {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        len = wal_len();
    }
    s.close().await;
    len
}

#[tokio::test]
async fn the_wal_is_truncated_once_past_its_limit() {
    // One past the edge: 4 MiB written under a 2 MiB limit is copied back and truncated.
    let limit = 2 << 20;
    let len = wal_after_writes(limit, std::time::Duration::from_secs(10)).await;
    assert!(len <= limit, "the WAL stayed at {len} bytes over its {limit}-byte limit");
    // Under the default limit the same writes leave the log as it is: passive checkpoints
    // copy it back but never shrink the file.
    let len = wal_after_writes(1 << 30, std::time::Duration::from_millis(600)).await;
    assert!(len > limit, "a WAL of {len} bytes under the default limit: the limit above did the truncating");
}
