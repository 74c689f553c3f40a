//! `ferry migrate`: a SQLite database of 200,000 jobs in mixed states is copied into a fresh
//! PostgreSQL database (interrupted by SIGKILL once, then resumed), verified, and served from
//! PostgreSQL. Also: a non-empty target and a source still in use are refused, and the table
//! registry matches the tables both schemas really have.

use crate::common::Server;
use crate::common::pg::TestDb;
use ferry_client::Client;
use ferry_core::validate::JobSpec;
use ferry_core::wire::ClaimBody;
use ferry_core::{ClaimRequest, Clock, CompleteItem, FailItem, JobState, Limits, SystemClock};
use ferry_store::prelude::*;
use ferry_store::{SqliteConfig, SqliteStore};
use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

fn spec(queue: &str) -> ferry_core::NewJob {
    JobSpec {
        queue: queue.into(),
        payload: Some(serde_json::value::to_raw_value(&serde_json::json!({"k": queue})).unwrap()),
        ..Default::default()
    }
    .validate(&Limits::default())
    .unwrap()
}

/// Builds a SQLite database with 200,000 jobs in every state; returns the counts per queue.
async fn build_source(path: &std::path::Path) -> BTreeMap<String, BTreeMap<JobState, u64>> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = SqliteStore::open(SqliteConfig::new(path), clock).unwrap();
    for b in 0..19 {
        let jobs = (0..10_000).map(|i| spec(if i % 2 == 0 { "even" } else { "odd" })).collect();
        let _ = b;
        store.enqueue(jobs).await.unwrap();
    }
    // 10,000 more: delayed, unique, tagged, and dependants of a running parent.
    let parent = store.enqueue(vec![spec("parent")]).await.unwrap()[0].id;
    let mut extra = Vec::new();
    for i in 0..9_999 {
        let mut j = spec("extra");
        match i % 4 {
            0 => j.run_at = ferry_core::RunAt::Delay(3_600_000),
            1 => j.unique_key = Some(format!("u{i}")),
            2 => j.depends_on = vec![parent],
            _ => {
                j.tags = vec!["t".into()];
                j.timeout_ms = Some(12_345);
            }
        }
        extra.push(j);
    }
    store.enqueue(extra).await.unwrap();
    let claim = |queue: &str, max: usize| ClaimRequest {
        queue: queue.into(),
        worker: "w".into(),
        max,
        lease_ms: Some(3_600_000),
    };
    store.claim(claim("parent", 1)).await.unwrap();
    for _ in 0..20 {
        let jobs = store.claim(claim("even", 1_000)).await.unwrap();
        let items = jobs
            .iter()
            .map(|j| CompleteItem {
                id: j.id,
                lease: j.lease.clone(),
                result: Some(serde_json::value::to_raw_value(&1).unwrap()),
                pressure: None,
            })
            .collect();
        store.complete(items).await.unwrap();
    }
    for _ in 0..5 {
        let jobs = store.claim(claim("odd", 1_000)).await.unwrap();
        let items = jobs
            .iter()
            .map(|j| FailItem {
                id: j.id,
                lease: j.lease.clone(),
                error: "boom".into(),
                retry: false,
                pressure: None,
            })
            .collect();
        store.fail(items).await.unwrap();
    }
    store.claim(claim("odd", 3_000)).await.unwrap(); // left running
    let ready = store
        .list_jobs(
            ferry_core::JobFilter { queue: Some("odd".into()), state: Some(JobState::Ready) },
            ferry_core::PageRequest { limit: 100, cursor: None },
        )
        .await
        .unwrap();
    for j in ready.items {
        store.cancel(j.id, "test").await.unwrap();
    }
    store.set_paused("extra", true).await.unwrap();
    let stats = store.queue_stats().await.unwrap();
    assert!(store.check_invariants().await.unwrap().is_empty());
    store.close().await;
    let total: u64 = stats.iter().flat_map(|q| q.counts.values()).sum();
    assert_eq!(total, 200_000);
    stats.into_iter().map(|q| (q.queue, q.counts)).collect()
}

fn ferry(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferry")).args(args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_jobs_move_to_postgres_and_are_served_from_there() {
    let Some(db) = TestDb::create("ferry_mig").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("ferry.db");
    let expected = build_source(&src).await;
    let src_str = src.to_str().unwrap().to_string();

    // A source in use by a running server is refused.
    {
        let data = tempfile::tempdir().unwrap();
        let _server = Server::start_with(&["--database", &src_str], data);
        let out = ferry(&["migrate", "--from", &src_str, "--to", &db.url]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("in use"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // First run: interrupted by SIGKILL part-way (if it is not done by then).
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["migrate", "--from", &src_str, "--to", &db.url, "--batch", "500"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once part of the jobs table has arrived.
    let (watch, conn) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let mut copied_at_kill = 0i64;
    for _ in 0..600 {
        if let Ok(r) = watch.query_one("SELECT count(*) FROM jobs", &[]).await {
            copied_at_kill = r.get(0);
            if copied_at_kill >= 20_000 {
                break;
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("migrate: first run killed with {copied_at_kill} jobs copied");

    // Without --resume a non-empty target is refused; with it the copy completes and verifies.
    let out = ferry(&["migrate", "--from", &src_str, "--to", &db.url]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success() || err.contains("verified"), "{err}");
    if !out.status.success() {
        assert!(err.contains("--resume"), "{err}");
        let out = ferry(&["migrate", "--from", &src_str, "--to", &db.url, "--resume"]);
        let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        eprintln!("{stderr}{stdout}");
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains("migration complete"), "{stdout}");
        assert!(stdout.lines().any(|l| l.starts_with("jobs") && l.contains("200000")), "{stdout}");
    }

    // Served from PostgreSQL: same counts, and the jobs work.
    let server = Server::start_with(&["--database", &db.url], tempfile::tempdir().unwrap());
    let c = Client::new(&server.url);
    let got: BTreeMap<String, BTreeMap<JobState, u64>> =
        c.queues().await.unwrap().queues.into_iter().map(|q| (q.queue, q.counts)).collect();
    assert_eq!(got, expected, "counts per queue and state survive the migration");
    let paused = c.queues().await.unwrap().queues.into_iter().find(|q| q.queue == "extra").unwrap().paused;
    assert!(paused, "queue settings survive");
    let extra = c.list_jobs(Some("extra"), None, Some(8), None).await.unwrap().jobs;
    let timeouts: Vec<i64> = extra.iter().map(|j| j.timeout_ms).collect();
    let default = ferry_core::validate::DEFAULT_TIMEOUT_MS;
    assert_eq!(
        timeouts,
        [default, default, default, 12_345].repeat(2),
        "run deadlines survive (NULL stays default)"
    );
    let ready = c
        .claim("even", &ClaimBody { worker: Some("pg".into()), max: Some(1), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(ready.len(), 1);
    c.complete(ready[0].id, &ready[0].lease, None).await.unwrap();
    let dead = c.dlq(Some("odd"), Some(1), None).await.unwrap().jobs.remove(0);
    assert_eq!((dead.errors.len(), dead.errors[0].message.as_str()), (1, "boom"));
    // New jobs get fresh sequence numbers after the copied ones.
    let id = c.enqueue(&JobSpec { queue: "new".into(), ..Default::default() }).await.unwrap().id;
    assert_eq!(c.get_job(&id.to_string()).await.unwrap().state, JobState::Ready);
    drop(server);
    drop(db);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_registry_matches_both_schemas() {
    let Some(db) = TestDb::create("ferry_mig").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    SqliteStore::open(SqliteConfig::new(dir.path().join("f.db")), clock.clone()).unwrap().close().await;
    let pg = ferry_store::PgStore::open(ferry_store::PgConfig::new(&db.url), clock).await.unwrap();
    pg.close().await;
    let mut registered: Vec<&str> = ferry_store::migrate::TABLES.iter().map(|t| t.name).collect();
    registered.extend(ferry_store::migrate::NOT_COPIED.iter().map(|t| t.0));
    registered.sort();
    let mut with_fts = registered.clone();
    with_fts.extend(ferry_store::migrate::SQLITE_ONLY);
    with_fts.sort();
    let conn = rusqlite_tables(&dir.path().join("f.db"));
    assert_eq!(conn, with_fts, "SQLite tables vs the migration registry");
    let (client, c) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(c);
    let mut pg_tables: Vec<String> = client
        .query("SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    pg_tables.sort();
    assert_eq!(pg_tables, registered, "PostgreSQL tables vs the migration registry");
    // And every registered column exists on both sides.
    for t in ferry_store::migrate::TABLES {
        let cols: Vec<String> = client
            .query(
                "SELECT column_name::text FROM information_schema.columns WHERE table_name = $1",
                &[&t.name],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let derived =
            ferry_store::migrate::PG_ONLY_COLUMNS.iter().filter(|(table, _)| *table == t.name).count();
        assert_eq!(cols.len(), t.columns.len() + derived, "{}: PostgreSQL has {cols:?}", t.name);
    }
    drop(client);
    drop(db);
}

fn rusqlite_tables(path: &std::path::Path) -> Vec<String> {
    let out = Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print('\\n'.join(sorted(r[0] for r in c.execute(\"select name from sqlite_master where type='table'\"))))"])
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect()
}

/// The rows and checksums of the summary table `ferry migrate` prints, by table.
fn summary(stdout: &str) -> BTreeMap<String, (String, String)> {
    stdout
        .lines()
        .skip_while(|l| !l.starts_with("TABLE"))
        .skip(1)
        .take_while(|l| !l.starts_with("migration complete"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].to_string(), (f[1].to_string(), f[3].to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_thousand_jobs_go_to_postgres_and_back_unchanged() {
    let Some(db) = TestDb::create("ferry_back").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("ferry.db");
    let expected = build_source(&src).await;
    let src_str = src.to_str().unwrap().to_string();
    let out = ferry(&["migrate", "--from", &src_str, "--to", &db.url]);
    let there = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{there}{}", String::from_utf8_lossy(&out.stderr));

    // Back into a new file: the same rows and checksums for every table, both ways.
    let back = dir.path().join("back/ferry.db");
    std::fs::create_dir_all(back.parent().unwrap()).unwrap();
    let back_str = back.to_str().unwrap().to_string();
    // A directory as the target is named as such.
    let out = ferry(&["migrate", "--from", &db.url, "--to", back.parent().unwrap().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is a directory; name the database file"));
    let out = ferry(&["migrate", "--from", &db.url, "--to", &back_str, "--batch", "700"]);
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("verified jobs: 200000 rows"), "{stderr}");
    assert!(
        stdout.contains(&format!("migration complete: start ferry with --database {back_str}")),
        "{stdout}"
    );
    let (a, b) = (summary(&there), summary(&stdout));
    assert!(a.len() >= 30, "{there}");
    assert_eq!(a, b, "rows and checksums per table: SQLite -> PostgreSQL vs PostgreSQL -> SQLite");

    // A second run into the same file is refused; --resume after a lost part completes it.
    let out = ferry(&["migrate", "--from", &db.url, "--to", &back_str]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --resume"));
    {
        let conn = rusqlite::Connection::open(&back).unwrap();
        conn.execute("DELETE FROM jobs WHERE seq > (SELECT max(seq) - 50000 FROM jobs)", []).unwrap();
    }
    let out = ferry(&["migrate", "--from", &db.url, "--to", &back_str, "--resume"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(summary(&stdout), a, "after --resume");
    assert!(
        stdout.lines().any(|l| l.starts_with("jobs") && l.split_whitespace().nth(2) == Some("50000")),
        "{stdout}"
    );

    // The original's invariants hold in the copy, and a server on it serves the same jobs.
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = SqliteStore::open(SqliteConfig::new(&back), clock).unwrap();
    assert_eq!(store.check_invariants().await.unwrap(), Vec::<String>::new());
    store.close().await;
    let server = Server::start_with(&["--database", &back_str], tempfile::tempdir().unwrap());
    let c = Client::new(&server.url);
    let got: BTreeMap<String, BTreeMap<JobState, u64>> =
        c.queues().await.unwrap().queues.into_iter().map(|q| (q.queue, q.counts)).collect();
    assert_eq!(got, expected, "counts per queue and state after the round trip");
}
