//! `ferry bench memory`: episodic memory on a live server. Ingests `--memory-episodes`
//! synthetic 30-word episodes in batches of 100 (four in flight) and compares the rate with a
//! batch enqueue of jobs measured in the same run; then `--memory-searches` searches (text and
//! filters, from `--clients` concurrent clients) with their p50/p99, the commonest term's p99,
//! the server's resident memory before and after, and the jobs' end-to-end rate alone and
//! beside a second ingest (its cost to the jobs). With `--soak`, a soak follows: 100 writers and
//! 1,000 searching clients at steady rates for `--soak-secs` (an hour by default), one report
//! line per interval and a go/no-go line at the end.

use crate::bench::{BenchArgs, jobs_end_to_end, pct, rss};
use ferry_client::{Client, ClientError};
use ferry_core::validate::JobSpec;
use ferry_core::wire::{EpisodeBody, OutcomeBody, SearchBody, SearchContext, SearchFilters};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A deterministic generator (xorshift): the same corpus every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A word index with a Zipf-like skew over `n` words (small indexes are common).
    fn word(&mut self, n: u64) -> u64 {
        let u = (self.next() % 1_000_000) as f64 / 1_000_000.0;
        ((n as f64).powf(u) - 1.0) as u64
    }
}

const VOCABULARY: u64 = 5_000;
const DOMAINS: u64 = 10;
const TASK_TYPES: u64 = 5;
const AGENTS: u64 = 20;

/// The `i`th synthetic episode: 30 words (one of them `task`, in every episode), a domain,
/// task type, agent, outcome and tag.
fn episode(ns: &str, i: u64, rng: &mut Rng) -> EpisodeBody {
    let mut words: Vec<String> = (0..29).map(|_| format!("w{}", rng.word(VOCABULARY))).collect();
    words.insert((i % 30) as usize, "task".into());
    let status = [
        ferry_core::memory::OutcomeStatus::Success,
        ferry_core::memory::OutcomeStatus::Partial,
        ferry_core::memory::OutcomeStatus::Failure,
    ][(i % 3) as usize];
    EpisodeBody {
        namespace: ns.to_string(),
        agent: Some(format!("agent{}", i % AGENTS)),
        domain: Some(format!("d{}", i % DOMAINS)),
        task_type: Some(format!("t{}", (i / DOMAINS) % TASK_TYPES)),
        description: Some(words.join(" ")),
        outcome: Some(OutcomeBody { status, summary: String::new(), reward: None }),
        importance: Some((i % 10) as f64 / 10.0),
        tags: vec![format!("tag{}", i % 7)],
        ..Default::default()
    }
}

/// Ingests `n` episodes from `start` in batches of 100, four in flight; episodes per second.
async fn ingest(nodes: &[Client], ns: &str, start: u64, n: u64) -> Result<f64, ClientError> {
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    let mut sends = tokio::task::JoinSet::new();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ start.wrapping_mul(0x9e37_79b9_7f4a_7c15).max(1));
    let mut i = start;
    while i < start + n {
        let batch: Vec<EpisodeBody> =
            (i..(i + 100).min(start + n)).map(|k| episode(ns, k, &mut rng)).collect();
        i += batch.len() as u64;
        let (c, sem) = (nodes[(i as usize / 100) % nodes.len()].clone(), sem.clone());
        sends.spawn(async move {
            let _p = sem.acquire().await.expect("open");
            c.add_episodes(batch).await
        });
    }
    while let Some(r) = sends.join_next().await {
        r.expect("task")?;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// Enqueues `n` no-op jobs in batches of 1,000, four in flight; jobs per second.
async fn enqueue_rate(nodes: &[Client], queue: &str, n: usize) -> Result<f64, ClientError> {
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    let mut sends = tokio::task::JoinSet::new();
    for (i, chunk) in (0..n).collect::<Vec<_>>().chunks(1_000).enumerate() {
        let specs: Vec<JobSpec> =
            chunk.iter().map(|_| JobSpec { queue: queue.to_string(), ..Default::default() }).collect();
        let (c, sem) = (nodes[i % nodes.len()].clone(), sem.clone());
        sends.spawn(async move {
            let _p = sem.acquire().await.expect("open");
            c.enqueue_batch(&specs).await
        });
    }
    while let Some(r) = sends.join_next().await {
        r.expect("task")?;
    }
    Ok(n as f64 / t0.elapsed().as_secs_f64())
}

/// `count` searches from `clients` concurrent clients; (client p50, p99, server p99) in ms.
async fn searches(
    nodes: &[Client],
    ns: &str,
    count: usize,
    clients: usize,
    make: impl Fn(u64) -> SearchBody + Send + Sync + 'static,
) -> Result<(f64, f64, f64), ClientError> {
    let make = Arc::new(make);
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (client, make) = (nodes[c % nodes.len()].clone(), make.clone());
        let per = count / clients + usize::from(c < count % clients);
        let _ = ns;
        tasks.spawn(async move {
            let (mut lat, mut took) = (Vec::with_capacity(per), Vec::with_capacity(per));
            for k in 0..per {
                let body = make((c * 1_000_003 + k) as u64);
                let t = Instant::now();
                let r = client.search_memory(&body).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                took.push(r.took_ms);
            }
            Ok::<_, ClientError>((lat, took))
        });
    }
    let (mut lat, mut took) = (Vec::new(), Vec::new());
    while let Some(r) = tasks.join_next().await {
        let (l, t) = r.expect("task")?;
        lat.extend(l);
        took.extend(t);
    }
    lat.sort_by(f64::total_cmp);
    took.sort_by(f64::total_cmp);
    Ok((pct(&lat, 0.5), pct(&lat, 0.99), pct(&took, 0.99)))
}

/// The memory phase.
pub async fn memory(a: &BenchArgs, nodes: &[Client], run_id: &str) -> Result<(), ()> {
    let fail = |what: &str, e: ClientError| eprintln!("ferry: memory {what} failed: {e}");
    let (ns, n) = match &a.memory_reuse {
        Some(ns) => {
            let stats = nodes[0].memory_stats(Some(ns)).await.map_err(|e| fail("stats", e))?;
            println!("memory    searching namespace {ns} as it is: {} episodes", stats.episodes);
            (ns.clone(), stats.episodes)
        }
        None => {
            let ns = format!("bench-mem-{run_id}");
            let n = a.memory_episodes as u64;
            let enq = enqueue_rate(nodes, &format!("bench-mem-jobs-{run_id}"), 20_000)
                .await
                .map_err(|e| fail("enqueue", e))?;
            let rss0 = rss(&nodes[0]).await;
            let rate = ingest(nodes, &ns, 0, n).await.map_err(|e| fail("ingest", e))?;
            println!(
                "memory    ingest {n} 30-word episodes in batches of 100 into {ns}: {rate:.0} episodes/s = {:.3} x the batch enqueue rate ({enq:.0} jobs/s); server memory {rss0} before, {} after",
                rate / enq,
                rss(&nodes[0]).await
            );
            (ns, n)
        }
    };
    let vocab_word = |seed: u64| {
        let mut r = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        format!("w{}", r.word(VOCABULARY))
    };
    let ns2 = ns.clone();
    let flat = move |seed: u64| SearchBody {
        namespace: ns2.clone(),
        text: Some(format!("{} {}", vocab_word(seed), vocab_word(seed + 1))),
        filters: seed
            .is_multiple_of(2)
            .then(|| SearchFilters { domain: Some(format!("d{}", seed % DOMAINS)), ..Default::default() }),
        k: Some(10),
        ..Default::default()
    };
    let (p50, p99, server) = searches(nodes, &ns, a.memory_searches, a.clients.min(32), flat)
        .await
        .map_err(|e| fail("search", e))?;
    println!(
        "memory    {} flat searches (2 terms, half with a domain filter) from {} clients at {n} episodes: p50 {p50:.2} ms, p99 {p99:.2} ms (server p99 {server:.2} ms)",
        a.memory_searches,
        a.clients.min(32)
    );
    let ns3 = ns.clone();
    let hier = move |seed: u64| SearchBody {
        namespace: ns3.clone(),
        text: Some(format!("w{} w{}", seed % 50, seed % 97)),
        context: Some(SearchContext {
            domain: Some(format!("d{}", seed % DOMAINS)),
            task_type: Some(format!("t{}", seed % TASK_TYPES)),
        }),
        k: Some(10),
        ..Default::default()
    };
    let (p50, p99, server) = searches(nodes, &ns, a.memory_searches, a.clients.min(32), hier)
        .await
        .map_err(|e| fail("search", e))?;
    println!(
        "memory    {} hierarchical searches (domain and task type) at {n} episodes: p50 {p50:.2} ms, p99 {p99:.2} ms (server p99 {server:.2} ms)",
        a.memory_searches
    );
    let ns4 = ns.clone();
    let common = move |_seed: u64| SearchBody {
        namespace: ns4.clone(),
        text: Some("task".into()),
        k: Some(10),
        ..Default::default()
    };
    let (p50, p99, server) = searches(nodes, &ns, (a.memory_searches / 10).max(10), 4, common)
        .await
        .map_err(|e| fail("search", e))?;
    println!(
        "memory    the commonest term (in every episode) at {n} episodes: p50 {p50:.2} ms, p99 {p99:.2} ms (server p99 {server:.2} ms)"
    );
    if a.memory_reuse.is_some() {
        return if a.soak { soak(a, nodes, &ns, n).await } else { Ok(()) };
    }
    // Ingest beside the jobs' end to end: its cost to their rate.
    let alone = jobs_end_to_end(a, nodes, &format!("bench-mem-e2e-{run_id}-a"), None, a.jobs)
        .await
        .map_err(|e| fail("e2e", e))?;
    let beside_nodes = nodes.to_vec();
    let (ns5, extra) = (format!("{ns}-beside"), (n / 4).max(1_000));
    let side = tokio::spawn(async move { ingest(&beside_nodes, &ns5, 0, extra).await });
    let with = jobs_end_to_end(a, nodes, &format!("bench-mem-e2e-{run_id}-b"), None, a.jobs)
        .await
        .map_err(|e| fail("e2e", e))?;
    let side_rate = side.await.expect("task").map_err(|e| fail("ingest", e))?;
    println!(
        "memory    jobs end to end {alone:.0} jobs/s alone, {with:.0} jobs/s beside an ingest of {extra} episodes ({side_rate:.0}/s): {:.2}x",
        with / alone
    );
    if a.soak {
        return soak(a, nodes, &ns, n).await;
    }
    Ok(())
}

/// Soak writers and searching clients (the go/no-go load).
const SOAK_WRITERS: u64 = 100;
const SOAK_SEARCHERS: u64 = 1_000;

/// What the soak's clients saw in one report interval: latencies in ms, and failures.
#[derive(Default)]
struct SoakTally {
    writes: Vec<f64>,
    searches: Vec<f64>,
    /// The searches' own `took_ms`: the server's share of their latency (a gap to `searches`
    /// is time outside the handler: HTTP, scheduling, the load generator itself).
    took: Vec<f64>,
    /// Of the errors, the server's "later" (429/503): refusals under load.
    refused: u64,
    /// Errors by request and kind (`search 503 server_saturated`, `write transport`); their
    /// sum is the error count.
    kinds: std::collections::BTreeMap<String, u64>,
}

/// One soak request's outcome: for a search, the server's `took_ms`.
type SoakOutcome = Result<Option<f64>, ClientError>;

impl SoakTally {
    fn record(tally: &Mutex<SoakTally>, write: bool, started: Instant, r: SoakOutcome) {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut t = tally.lock().expect("tally");
        match (write, r) {
            (true, Ok(_)) => t.writes.push(ms),
            (false, Ok(took)) => {
                t.searches.push(ms);
                t.took.extend(took);
            }
            (w, Err(e)) => {
                t.refused += u64::from(matches!(e, ClientError::Api { status: 429 | 503, .. }));
                let kind = match &e {
                    ClientError::Api { status, error } => format!("{status} {}", error.code.as_str()),
                    ClientError::Transport(_) => "transport".into(),
                    ClientError::Decode(_) => "decode".into(),
                    ClientError::Invalid(_) => "invalid".into(),
                };
                *t.kinds.entry(format!("{} {kind}", if w { "write" } else { "search" })).or_default() += 1;
            }
        }
    }

    fn absorb(&mut self, other: SoakTally) {
        self.writes.extend(other.writes);
        self.searches.extend(other.searches);
        self.took.extend(other.took);
        self.refused += other.refused;
        for (k, n) in other.kinds {
            *self.kinds.entry(k).or_default() += n;
        }
    }

    /// (write p99, search p99, the searches' server p99, error share) in ms and percent.
    fn figures(&mut self) -> (f64, f64, f64, f64) {
        self.writes.sort_by(f64::total_cmp);
        self.searches.sort_by(f64::total_cmp);
        self.took.sort_by(f64::total_cmp);
        let errors: u64 = self.kinds.values().sum();
        let all = self.writes.len() as u64 + self.searches.len() as u64 + errors;
        let share = 100.0 * errors as f64 / all.max(1) as f64;
        (pct(&self.writes, 0.99), pct(&self.searches, 0.99), pct(&self.took, 0.99), share)
    }

    /// The errors by kind, or `none`.
    fn kinds_line(&self) -> String {
        if self.kinds.is_empty() {
            return "none".into();
        }
        self.kinds.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", ")
    }
}

/// The server's SQLite WAL size, from its metrics (`-` on PostgreSQL or when unreadable): a
/// log that grows between reports means checkpoints do not keep up with the readers.
async fn wal(c: &Client) -> String {
    let text = c.metrics().await.unwrap_or_default();
    let line = text.lines().find(|l| l.starts_with("ferry_db_size_bytes{file=\"wal\"}"));
    match line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse::<f64>().ok()) {
        Some(b) => format!("{:.1} MiB", b / 1_048_576.0),
        None => "-".into(),
    }
}

/// Sleeps about `mean` (uniform in half to one and a half of it), so clients do not march in step.
async fn jittered(mean: Duration, rng: &mut Rng) {
    let ms = mean.as_millis().max(2) as u64;
    tokio::time::sleep(Duration::from_millis(ms / 2 + rng.next() % (ms + 1))).await;
}

/// The soak: `SOAK_WRITERS` writers adding `--memory-soak-writes` episodes/s in all and
/// `SOAK_SEARCHERS` clients searching `--memory-soak-searches` times/s in all, over the
/// ingested namespace, for `--soak-secs`. Go: query p99 < 100 ms, errors < 0.01%, write p99
/// < 50 ms.
async fn soak(a: &BenchArgs, nodes: &[Client], ns: &str, ingested: u64) -> Result<(), ()> {
    let secs = a.soak_secs.unwrap_or(3_600);
    let write_every = Duration::from_secs_f64(SOAK_WRITERS as f64 / a.memory_soak_writes.max(1) as f64);
    let search_every = Duration::from_secs_f64(SOAK_SEARCHERS as f64 / a.memory_soak_searches.max(1) as f64);
    println!(
        "memory    soak {secs} s: {SOAK_WRITERS} writers ({} episodes/s), {SOAK_SEARCHERS} searching clients ({} searches/s); one line per {} s",
        a.memory_soak_writes, a.memory_soak_searches, a.soak_report_secs
    );
    let tally = Arc::new(Mutex::new(SoakTally::default()));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..SOAK_WRITERS {
        let (c, tally, ns) = (nodes[w as usize % nodes.len()].clone(), tally.clone(), ns.to_string());
        tasks.spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (w + 1));
            let mut i = ingested + w;
            while Instant::now() < deadline {
                jittered(write_every, &mut rng).await;
                let t = Instant::now();
                let r = c.add_episode(&episode(&ns, i, &mut rng)).await.map(|_| None);
                SoakTally::record(&tally, true, t, r);
                i += SOAK_WRITERS;
            }
        });
    }
    for s in 0..SOAK_SEARCHERS {
        let (c, tally, ns) = (nodes[s as usize % nodes.len()].clone(), tally.clone(), ns.to_string());
        tasks.spawn(async move {
            let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ (s + 1));
            while Instant::now() < deadline {
                jittered(search_every, &mut rng).await;
                let body = SearchBody {
                    namespace: ns.clone(),
                    text: Some(format!("w{} w{}", rng.word(VOCABULARY), rng.word(VOCABULARY))),
                    filters: (s % 2 == 0).then(|| SearchFilters {
                        domain: Some(format!("d{}", s % DOMAINS)),
                        ..Default::default()
                    }),
                    k: Some(10),
                    ..Default::default()
                };
                let t = Instant::now();
                let r = c.search_memory(&body).await.map(|r| Some(r.took_ms));
                SoakTally::record(&tally, false, t, r);
            }
        });
    }
    let mut total = SoakTally::default();
    let every = Duration::from_secs(a.soak_report_secs.max(1));
    let t0 = Instant::now();
    while Instant::now() < deadline {
        tokio::time::sleep(every.min(deadline.saturating_duration_since(Instant::now()))).await;
        let mut part = std::mem::take(&mut *tally.lock().expect("tally"));
        let (w99, s99, took99, err) = part.figures();
        println!(
            "memory    soak t={:>5} s  writes {:>5.0}/s (p99 {w99:.2} ms)  searches {:>5.0}/s (p99 {s99:.2} ms, server {took99:.2} ms)  errors {err:.4}% ({})  server memory {}  WAL {}",
            t0.elapsed().as_secs(),
            part.writes.len() as f64 / every.as_secs_f64(),
            part.searches.len() as f64 / every.as_secs_f64(),
            part.kinds_line(),
            rss(&nodes[0]).await,
            wal(&nodes[0]).await
        );
        total.absorb(part);
    }
    while tasks.join_next().await.is_some() {}
    total.absorb(std::mem::take(&mut *tally.lock().expect("tally")));
    let (w99, s99, took99, err) = total.figures();
    let go = s99 < 100.0 && err < 0.01 && w99 < 50.0;
    println!(
        "memory    soak go/no-go: {} ({} writes, {} searches; query p99 {s99:.2} ms < 100 (server {took99:.2} ms), errors {err:.4}% < 0.01% ({} refused), write p99 {w99:.2} ms < 50)",
        if go { "GO" } else { "NO-GO" },
        total.writes.len(),
        total.searches.len(),
        total.refused
    );
    println!("memory    soak errors by kind: {}", total.kinds_line());
    if go { Ok(()) } else { Err(()) }
}
