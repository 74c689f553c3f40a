//! `ferry backup` and `ferry restore` (#24, part 3) against real servers: a backup taken while
//! producers and a worker keep writing is one consistent point of the source (whole batches in
//! each producer's order, everything acknowledged before it began, the source's event log up
//! to that point byte for byte, ferry's invariants), and a restore of it serves exactly what
//! the copy holds; a restore refuses a running target and keeps what it replaces; PostgreSQL
//! is sent to its own tools.

use crate::common::Server;
use ferry_core::{Clock, SystemClock};
use ferry_store::{SqliteConfig, SqliteStore, StoreCore};
use rusqlite::{Connection, OpenFlags};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const PRODUCERS: usize = 2;
const BATCH_JOBS: usize = 200;

fn ferry(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env_remove("FERRY_URL")
        .env_remove("FERRY_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn open_ro(path: &Path) -> Connection {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap()
}

/// Every table's row count and an FNV-1a checksum of its rows in a fixed order.
fn tables(path: &Path) -> BTreeMap<String, (u64, u64)> {
    let conn = open_ro(path);
    let names: Vec<String> = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut out = BTreeMap::new();
    for name in names {
        let cols: i64 = conn
            .query_row(&format!("SELECT count(*) FROM pragma_table_info('{name}')"), [], |r| r.get(0))
            .unwrap();
        let order: Vec<String> = (1..=cols).map(|i| i.to_string()).collect();
        let mut stmt =
            conn.prepare(&format!("SELECT * FROM \"{name}\" ORDER BY {}", order.join(", "))).unwrap();
        let mut rows = stmt.query([]).unwrap();
        let (mut n, mut sum) = (0u64, 0xcbf2_9ce4_8422_2325u64);
        while let Some(row) = rows.next().unwrap() {
            n += 1;
            for i in 0..cols as usize {
                for b in format!("{:?}|", row.get_ref(i).unwrap()).bytes() {
                    sum = (sum ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
        out.insert(name, (n, sum));
    }
    out
}

/// `(first_cursor, n, at, body)` of every stored event batch, in order.
type EventRows = Vec<(i64, i64, i64, String)>;

fn event_log(path: &Path, through: Option<i64>) -> EventRows {
    let conn = open_ro(path);
    let mut stmt = conn
        .prepare(
            "SELECT first_cursor, n, at, body FROM event_log WHERE first_cursor <= ?1 ORDER BY first_cursor",
        )
        .unwrap();
    stmt.query_map([through.unwrap_or(i64::MAX)], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Producer `p`'s batches present in the copy, each with its number of jobs.
fn batches(path: &Path) -> BTreeMap<(i64, i64), i64> {
    let conn = open_ro(path);
    let mut stmt = conn
        .prepare(
            "SELECT json_extract(payload, '$.p'), json_extract(payload, '$.b'), count(*) FROM jobs \
             WHERE queue = 'load' GROUP BY 1, 2",
        )
        .unwrap();
    stmt.query_map([], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?))).unwrap().map(Result::unwrap).collect()
}

async fn check_invariants(db: &Path) -> Vec<String> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = SqliteStore::open(SqliteConfig::new(db), clock).expect("open the restored store");
    let v = store.check_invariants().await.expect("check_invariants runs");
    store.close().await;
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_is_one_consistent_point_and_restores_exactly() {
    let mut source = Server::start();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Acknowledged batches of each producer, with when the acknowledgement arrived.
    let acked: Arc<std::sync::Mutex<Vec<(usize, usize, Instant)>>> = Default::default();
    let mut load = Vec::new();
    for p in 0..PRODUCERS {
        let (http, url, stop, acked) = (http.clone(), source.url.clone(), stop.clone(), acked.clone());
        load.push(tokio::spawn(async move {
            let mut b = 0;
            while !stop.load(Ordering::Relaxed) {
                let jobs: Vec<Value> = (0..BATCH_JOBS)
                    .map(|i| json!({"queue": "load", "payload": {"p": p, "b": b, "i": i}}))
                    .collect();
                let r =
                    http.post(format!("{url}/v1/jobs")).json(&json!({"jobs": jobs})).send().await.unwrap();
                assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
                acked.lock().unwrap().push((p, b, Instant::now()));
                b += 1;
            }
        }));
    }
    {
        // A worker moves jobs along meanwhile, so leases, completions and events change too.
        let (http, url, stop) = (http.clone(), source.url.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = http
                    .post(format!("{url}/v1/queues/load/claim"))
                    .json(&json!({"worker": "w", "max": 100}))
                    .send()
                    .await
                    .unwrap();
                let claimed: Value = r.json().await.unwrap();
                let items: Vec<Value> = claimed["jobs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|j| json!({"id": j["id"], "lease": j["lease"], "result": {"ok": true}}))
                    .collect();
                if !items.is_empty() {
                    let r = http
                        .post(format!("{url}/v1/jobs/complete"))
                        .json(&json!({"items": items}))
                        .send()
                        .await;
                    assert_eq!(r.unwrap().status().as_u16(), 200);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.db");
    let began = Instant::now();
    let (code, out, err) = tokio::task::spawn_blocking({
        let (url, copy) = (source.url.clone(), copy.clone());
        move || ferry(&["backup", "--to", copy.to_str().unwrap(), "--url", &url])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with(&format!("backup written to {}: ", copy.display())), "{out}");
    assert!(out.contains("integrity ok"), "{out}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let written_after = acked.iter().filter(|(_, _, at)| *at > began).count();
    assert!(written_after > 0, "the load kept writing while the backup ran");

    // Whole batches, each producer's a prefix, everything acknowledged before it began.
    let present = batches(&copy);
    assert!(!present.is_empty());
    for p in 0..PRODUCERS as i64 {
        let mine: Vec<i64> = present.keys().filter(|(q, _)| *q == p).map(|(_, b)| *b).collect();
        let expect: Vec<i64> = (0..mine.len() as i64).collect();
        assert_eq!(mine, expect, "producer {p}: the copy holds a prefix of its batches");
    }
    for ((p, b), n) in &present {
        assert_eq!(*n, BATCH_JOBS as i64, "batch {p}/{b} is whole in the copy");
    }
    for (p, b, at) in &acked {
        if *at < began {
            assert!(
                present.contains_key(&(*p as i64, *b as i64)),
                "batch {p}/{b} was acknowledged before the backup"
            );
        }
    }
    eprintln!("backup: {} batches in the copy, {written_after} acknowledged after it began", present.len());

    // The source's event log up to the copy's last batch is the copy's, byte for byte.
    source.stop();
    let mine = event_log(&copy, None);
    let last = mine.last().map(|r| r.0).expect("the copy has events");
    assert_eq!(
        mine,
        event_log(&source.dir.path().join("ferry.db"), Some(last)),
        "the event log up to the backup"
    );
    assert!(
        event_log(&source.dir.path().join("ferry.db"), None).len() > mine.len(),
        "the source went on past the backup's point"
    );

    // Restored: the same rows and checksums as the copy, ferry's invariants hold, and a
    // server on it answers with what the copy holds.
    let restored = tempfile::tempdir().unwrap();
    let (code, out, err) = ferry(&[
        "restore",
        "--from",
        copy.to_str().unwrap(),
        "--data-dir",
        restored.path().to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let db = restored.path().join("ferry.db");
    let want = tables(&copy);
    assert!(want["jobs"].0 >= (present.len() * BATCH_JOBS) as u64);
    assert_eq!(tables(&db), want, "row counts and checksums of every table");
    assert_eq!(check_invariants(&db).await, Vec::<String>::new());
    let server = Server::start_with(&[], restored);
    let stats: Value = http.get(server.at("/v1/queues")).send().await.unwrap().json().await.unwrap();
    let load = stats["queues"].as_array().unwrap().iter().find(|q| q["queue"] == "load").unwrap().clone();
    let total: u64 = load["counts"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, (present.len() * BATCH_JOBS) as u64, "{load}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_refuses_a_running_target_and_keeps_what_it_replaces() {
    let mut s = Server::start();
    let (code, out, err) = tokio::task::spawn_blocking({
        let url = s.url.clone();
        move || ferry(&["enqueue", "q", "{\"n\":1}", "--url", &url])
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("b.db");
    let copy_s = copy.to_str().unwrap();
    let data = s.dir.path().to_str().unwrap().to_string();
    assert_eq!(ferry(&["backup", "--to", copy_s, "--url", &s.url]).0, 0);
    let left: Vec<String> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".backup-"))
        .collect();
    assert!(left.is_empty(), "the server's copy is deleted once sent: {left:?}");
    // A job after the backup: the restore must take the directory back to one.
    let (code, _, err) = ferry(&["enqueue", "q", "{\"n\":2}", "--url", &s.url]);
    assert_eq!(code, 0, "{err}");
    // The file is not overwritten by accident.
    let (code, _, err) = ferry(&["backup", "--to", copy_s, "--url", &s.url]);
    assert_eq!(code, 1);
    assert!(err.contains("exists; pass --force to replace it"), "{err}");
    // A running server's directory is refused.
    let (code, _, err) = ferry(&["restore", "--from", copy_s, "--data-dir", &data, "--force"]);
    assert_eq!(code, 1);
    assert!(err.contains("is in use by another ferry process; stop the server first, then restore"), "{err}");
    s.stop();
    // A database there needs --force, and the old one (with its WAL) is kept.
    let (code, _, err) = ferry(&["restore", "--from", copy_s, "--data-dir", &data]);
    assert_eq!(code, 1);
    assert!(err.contains("already holds a database; pass --force"), "{err}");
    let (code, out, err) = ferry(&["restore", "--from", copy_s, "--data-dir", &data, "--force"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("the database it replaced is kept as "), "{out}");
    let kept: BTreeSet<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("before-restore"))
        .collect();
    assert!(!kept.is_empty(), "{kept:?}");
    // The kept database, read with its WAL, still has both jobs.
    let db = kept.iter().find(|n| !n.ends_with("-wal") && !n.ends_with("-shm")).unwrap();
    let info = ferry_store::backup::verify(&Path::new(&data).join(db)).unwrap();
    assert_eq!(info.jobs, 2, "the replaced database is kept whole");
    // Not a ferry database, or a damaged one: refused before anything is touched.
    std::fs::write(dir.path().join("junk.db"), b"not a database at all, not even close").unwrap();
    let (code, _, err) = ferry(&[
        "restore",
        "--from",
        dir.path().join("junk.db").to_str().unwrap(),
        "--data-dir",
        &data,
        "--force",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("restore refused: "), "{err}");
    let s = Server::start_with(&[], s.take_dir());
    let jobs: Value = reqwest::get(s.at("/v1/jobs?queue=q")).await.unwrap().json().await.unwrap();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 1, "{jobs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backups_are_sent_to_its_own_tools() {
    let Some(db) = crate::common::pg::TestDb::create("ferry_bk").await else { return };
    let s = Server::start_with(&["--database", &db.url], tempfile::tempdir().unwrap());
    let r = reqwest::get(s.at("/v1/backup")).await.unwrap();
    assert_eq!(r.status().as_u16(), 409);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_state", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("pg_dump"), "{body}");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("pg.db");
    let (code, _, err) = ferry(&["backup", "--to", copy.to_str().unwrap(), "--url", &s.url]);
    assert_eq!(code, 1);
    assert!(err.contains("pg_dump"), "{err}");
    assert!(!copy.exists() && !dir.path().join("pg.db.part").exists(), "no file is left behind");
}
