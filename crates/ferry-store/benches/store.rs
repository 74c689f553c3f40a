//! Store-level benchmark (stand-alone, not Criterion): `cargo bench -p ferry-store --bench store`.
//!
//! Scenarios (all on a fresh SQLite file, `synchronous=FULL` unless FERRY_BENCH_SYNC=normal):
//! - `enqueue`: 1,000,000 jobs in batches of 10,000 from one caller;
//! - `lifecycle`: 4 producers (batches of 1,000) and 16 workers (claim 100, complete 100)
//!   move 200,000 jobs through enqueue → claim → complete;
//! - `single`: 1, 10, 50, 100 concurrent callers each doing enqueue(1) → claim(1) →
//!   complete(1); latency of every call and total call rate;
//! - `memory`: 1,000,000 jobs through the lifecycle, RSS sampled every 100,000.
//!
//! Pass scenario names as arguments to run a subset; `FERRY_BENCH_RUNS` repeats each (default 3)
//! and the median is printed.

use ferry_core::validate::JobSpec;
use ferry_core::{ClaimRequest, Clock, CompleteItem, Limits, NewJob, SystemClock};
use ferry_store::prelude::*;
use ferry_store::{SqliteConfig, SqliteStore, Synchronous};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn open(dir: &tempfile::TempDir) -> Arc<SqliteStore> {
    let mut cfg = SqliteConfig::new(dir.path().join("bench.db"));
    if std::env::var("FERRY_BENCH_SYNC").as_deref() == Ok("normal") {
        cfg.synchronous = Synchronous::Normal;
    }
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Arc::new(SqliteStore::open(cfg, clock).unwrap())
}

fn job(i: u64) -> NewJob {
    let payload = serde_json::value::RawValue::from_string(format!(r#"{{"n":{i}}}"#)).unwrap();
    JobSpec { queue: "bench".into(), payload: Some(payload), ..Default::default() }
        .validate(&Limits::default())
        .unwrap()
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

async fn enqueue_bench() -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let total = 1_000_000u64;
    let batches: Vec<Vec<NewJob>> =
        (0..total / 10_000).map(|b| (0..10_000).map(|i| job(b * 10_000 + i)).collect()).collect();
    let start = Instant::now();
    for batch in batches {
        store.enqueue(batch).await.unwrap();
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    store.close().await;
    rate
}

async fn lifecycle(
    store: Arc<SqliteStore>,
    total: u64,
    workers: usize,
    mut on_progress: impl FnMut(u64),
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let producers = 4u64;
    let mut tasks = Vec::new();
    for p in 0..producers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let per = total / producers;
            for b in 0..per / 1_000 {
                let batch = (0..1_000).map(|i| job(p * per + b * 1_000 + i)).collect();
                store.enqueue(batch).await.unwrap();
            }
        }));
    }
    for w in 0..workers {
        let (store, done) = (store.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let req =
                ClaimRequest { queue: "bench".into(), worker: format!("w{w}"), max: 100, lease_ms: None };
            while done.load(Ordering::Relaxed) < total {
                let jobs = store.claim(req.clone()).await.unwrap();
                if jobs.is_empty() {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    continue;
                }
                let n = jobs.len() as u64;
                let items = jobs
                    .into_iter()
                    .map(|j| CompleteItem { id: j.id, lease: j.lease, result: None, pressure: None })
                    .collect();
                for r in store.complete(items).await.unwrap() {
                    r.unwrap();
                }
                done.fetch_add(n, Ordering::Relaxed);
            }
        }));
    }
    let mut last_report = 0;
    while done.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let d = done.load(Ordering::Relaxed);
        if d / 100_000 > last_report {
            last_report = d / 100_000;
            on_progress(d);
        }
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    for t in tasks {
        t.await.unwrap();
    }
    rate
}

async fn single(callers: usize) -> (f64, f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let per_caller = (4_000 / callers).max(40);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..callers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_caller * 3);
            let queue = format!("q{c}");
            for i in 0..per_caller {
                let mut j = job(i as u64);
                j.queue = queue.clone();
                let t = Instant::now();
                store.enqueue(vec![j]).await.unwrap();
                lat.push(t.elapsed().as_micros() as u64);
                let t = Instant::now();
                let req = ClaimRequest { queue: queue.clone(), worker: "w".into(), max: 1, lease_ms: None };
                let claimed = store.claim(req).await.unwrap();
                lat.push(t.elapsed().as_micros() as u64);
                let t = Instant::now();
                let item = CompleteItem {
                    id: claimed[0].id,
                    lease: claimed[0].lease.clone(),
                    result: None,
                    pressure: None,
                };
                store.complete(vec![item]).await.unwrap()[0].clone().unwrap();
                lat.push(t.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let ops = all.len() as f64 / secs;
    store.close().await;
    (ops, pct(&all, 0.5), pct(&all, 0.99))
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let want = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    let runs: usize = std::env::var("FERRY_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let sync = std::env::var("FERRY_BENCH_SYNC").unwrap_or_else(|_| "full".into());
    println!("ferry store benchmark: sqlite synchronous={sync}, {runs} runs per scenario, medians");
    rt.block_on(async {
        if want("enqueue") {
            let rates: Vec<f64> = futures_runs(runs, enqueue_bench).await;
            println!(
                "enqueue   batch 10,000 x 100: {:>9.0} jobs/s (runs: {})",
                median(rates.clone()),
                fmt(&rates)
            );
        }
        if want("lifecycle") {
            let mut rates = Vec::new();
            for _ in 0..runs {
                let dir = tempfile::tempdir().unwrap();
                let store = open(&dir);
                rates.push(lifecycle(store.clone(), 200_000, 16, |_| {}).await);
                store.close().await;
            }
            println!(
                "lifecycle 16 workers, claim 100: {:>9.0} jobs/s (runs: {})",
                median(rates.clone()),
                fmt(&rates)
            );
        }
        if want("single") {
            for callers in [1, 10, 50, 100] {
                let mut res = Vec::new();
                for _ in 0..runs {
                    res.push(single(callers).await);
                }
                let ops = median(res.iter().map(|r| r.0).collect());
                let p50 = median(res.iter().map(|r| r.1).collect());
                let p99 = median(res.iter().map(|r| r.2).collect());
                println!(
                    "single    {callers:>3} callers: {ops:>9.0} ops/s  p50 {p50:>6.2} ms  p99 {p99:>6.2} ms"
                );
            }
        }
        if want("memory") {
            let dir = tempfile::tempdir().unwrap();
            let store = open(&dir);
            let mut samples = vec![(0u64, rss_mib())];
            let rate = lifecycle(store.clone(), 1_000_000, 16, |d| samples.push((d, rss_mib()))).await;
            samples.push((1_000_000, rss_mib()));
            store.close().await;
            let line: Vec<String> = samples.iter().map(|(d, m)| format!("{}k:{m:.0}", d / 1000)).collect();
            println!(
                "memory    1,000,000 jobs at {rate:.0} jobs/s; RSS MiB by jobs done: {}",
                line.join(" ")
            );
        }
    });
}

async fn futures_runs<F, Fut>(runs: usize, f: F) -> Vec<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let mut out = Vec::new();
    for _ in 0..runs {
        out.push(f().await);
    }
    out
}

fn fmt(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(", ")
}
