//! Crash test: a child process writes under load and is killed with SIGKILL at random
//! moments, 20 times. After each kill the store is reopened and must hold every
//! acknowledged enqueue and completion, pass `PRAGMA integrity_check` and ferry's invariants.

use ferry_core::{Clock, JobState, SystemClock};
use ferry_store::prelude::*;
use ferry_store::{SqliteConfig, SqliteStore};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const CYCLES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut enqueued: Vec<Uuid> = Vec::new();
    let mut completed: Vec<Uuid> = Vec::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for cycle in 0..CYCLES {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry-crash-child"))
            .arg(&db)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start child");
        let stdout = child.stdout.take().unwrap();
        let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut lines = Vec::new();
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                if line.ends_with('\n') {
                    lines.push(std::mem::take(&mut line));
                    let _ = first_tx.send(());
                } // a torn last line was never a full promise
            }
            lines
        });
        // The kill lands at a random moment of the load, counted from the first acknowledged
        // write (the child's start-up time varies with the machine's load and the file's size).
        first_rx.recv_timeout(Duration::from_secs(60)).expect("the child acknowledged a write");
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let wait_ms = 20 + seed % 400;
        tokio::time::sleep(Duration::from_millis(wait_ms)).await;
        child.kill().expect("SIGKILL child");
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        let before = (enqueued.len(), completed.len());
        for l in lines {
            let (kind, id) = l.trim_end().split_once(' ').unwrap();
            let id = Uuid::parse_str(id).unwrap();
            match kind {
                "E" => enqueued.push(id),
                "C" => completed.push(id),
                other => panic!("unknown line kind {other}"),
            }
        }
        assert!(enqueued.len() > before.0, "cycle {cycle}: the child acknowledged nothing in {wait_ms} ms");

        // Every promise of this cycle now, every promise of all cycles at the end.
        let last = cycle + 1 == CYCLES;
        let (from_e, from_c) = if last { (0, 0) } else { before };
        let store = SqliteStore::open(SqliteConfig::new(&db), clock.clone()).unwrap();
        for id in &enqueued[from_e..] {
            store
                .get_job(*id)
                .await
                .unwrap_or_else(|e| panic!("cycle {cycle}: acknowledged job {id} lost: {e}"));
        }
        for id in &completed[from_c..] {
            let j = store.get_job(*id).await.unwrap();
            assert_eq!(j.state, JobState::Completed, "cycle {cycle}: acknowledged completion of {id} lost");
        }
        let violations = store.check_invariants().await.unwrap();
        assert!(violations.is_empty(), "cycle {cycle}: {violations:?}");
        store.close().await;
    }
    eprintln!(
        "crash test: {CYCLES} kills, {} acknowledged enqueues and {} completions verified",
        enqueued.len(),
        completed.len()
    );
}
