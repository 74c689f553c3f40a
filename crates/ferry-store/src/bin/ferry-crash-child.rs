//! Test support for the crash test (`tests/crash.rs`): writes to a SQLite store under
//! concurrent load and prints a line for every acknowledged write, until it is killed.
//!
//! `E <id>` means the enqueue of job `<id>` was acknowledged; `C <id>` that its completion
//! was. Lines are printed only after the store answered, so every printed line is a promise
//! the parent checks after the SIGKILL.

use ferry_core::validate::JobSpec;
use ferry_core::{ClaimRequest, Clock, CompleteItem, FailItem, Limits, SystemClock};
use ferry_store::{SqliteConfig, SqliteStore, Store};
use std::io::Write;
use std::sync::{Arc, Mutex};

fn main() {
    let path = std::env::args().nth(1).expect("usage: ferry-crash-child DB_PATH");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(SqliteConfig::new(path), clock).unwrap());
        let out = Arc::new(Mutex::new(std::io::stdout()));
        let mut tasks = Vec::new();
        for p in 0..4u64 {
            let (store, out) = (store.clone(), out.clone());
            tasks.push(tokio::spawn(async move {
                for n in 0u64.. {
                    let size = 1 + ((n * 7 + p) % 40) as usize;
                    let jobs = (0..size)
                        .map(|i| {
                            let spec = JobSpec {
                                queue: "crash".into(),
                                lease_ms: Some(3_600_000),
                                unique_key: (i == 0 && n % 5 == 0).then(|| format!("u{p}-{}", n % 50)),
                                ..Default::default()
                            };
                            spec.validate(&Limits::default()).unwrap()
                        })
                        .collect();
                    let ids = store.enqueue(jobs).await.unwrap();
                    {
                        let mut o = out.lock().unwrap();
                        for e in ids {
                            writeln!(o, "E {}", e.id).unwrap();
                        }
                        o.flush().unwrap();
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
                }
            }));
        }
        for w in 0..4u64 {
            let (store, out) = (store.clone(), out.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let req = ClaimRequest {
                        queue: "crash".into(),
                        worker: format!("w{w}"),
                        max: 20,
                        lease_ms: None,
                    };
                    let jobs = store.claim(req).await.unwrap();
                    if jobs.is_empty() {
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                        continue;
                    }
                    let (fail, done): (Vec<_>, Vec<_>) =
                        jobs.into_iter().enumerate().partition(|(i, _)| i % 10 == 9);
                    let items: Vec<CompleteItem> = done
                        .iter()
                        .map(|(_, j)| CompleteItem {
                            id: j.id,
                            lease: j.lease.clone(),
                            result: None,
                            pressure: None,
                        })
                        .collect();
                    let fails = fail.iter().map(|(_, j)| FailItem {
                        id: j.id,
                        lease: j.lease.clone(),
                        error: "x".into(),
                        retry: true,
                        pressure: None,
                    });
                    store.fail(fails.collect()).await.unwrap();
                    let results = store.complete(items.clone()).await.unwrap();
                    let mut o = out.lock().unwrap();
                    for (item, r) in items.iter().zip(results) {
                        r.unwrap();
                        writeln!(o, "C {}", item.id).unwrap();
                    }
                    o.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}
