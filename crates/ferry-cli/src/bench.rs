//! `ferry bench`: measures a live server over HTTP with the SDK.
//!
//! 1. end to end: N no-op jobs enqueued in batches, then worked by SDK workers (claim batches
//!    with long-poll, batched completions);
//! 2. enqueue → start latency on an idle server (one job at a time, one waiting worker);
//! 3. C concurrent clients each doing enqueue(1) → claim(1) → complete(1);
//! 4. (`agents`, only when named) work items: 1, 10, 50, 100 agents in a closed loop, each
//!    iteration create → claim (`in_progress`) → add an artifact (merge, with
//!    `expected_version`) → `done`; then 100 agents adding artifacts to one item;
//! 5. (`messages`, only when named) agent messages: a ring of agents (the largest `--agents`
//!    count) each sending to the next, receiving (long-poll) and acking, for `--fanout-secs`;
//!    then `--broadcast-agents` receivers long-polling channel `all` while one more agent
//!    broadcasts every 100 ms for `--fanout-secs` (needs the server's `[messages]
//!    rate_per_min = 0`);
//! 6. (`convoy`, only when named) convoys: `--jobs` no-op members added to one open convoy in
//!    batches of `--batch` (four requests in flight, as the e2e phase enqueues), sealed, and
//!    worked as in the e2e phase, first under `max_parallel` 10,000, then under an adaptive
//!    limit of 2048..10000 (the controller's cost: it never binds); then `--clients` clients
//!    each creating 10-member convoys and long-polling each to its end, `--rounds` times;
//!
//! 7. (`memory`, only when named) episodic memory: see `bench_memory.rs`;
//! 8. (`catchup`, only when named) readers catching up with the stored event log: see
//!    `bench_catchup.rs`;
//! 9. (`mcp`, only when named) the MCP endpoint with an rmcp client beside plain HTTP: see
//!    `bench_mcp.rs`;
//!
//! and the server's resident memory after each phase (from `GET /v1/server`).
//!
//! With several comma-separated URLs (nodes of one PostgreSQL database) producers and workers
//! are spread over the nodes, and the latency phase enqueues on the first node while the
//! worker waits on the last, so it measures cross-node wake-ups. The `soak` phase (only when
//! named) holds a steady rate for a while and reports throughput and database size per interval.

use ferry_client::{Client, ClientError, Worker};
use ferry_core::ErrorCode;
use ferry_core::item::{Artifact, ItemStatus, PatchMode};
use ferry_core::message::DEFAULT_CHANNEL;
use ferry_core::validate::JobSpec;
use ferry_core::wire::{BroadcastBody, ClaimBody, CreateItemBody, PatchItemBody, ReceiveBody, SendBody};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Options of `ferry bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Server URL, or several comma-separated nodes of one database.
    #[arg(long, env = "FERRY_URL", default_value = "http://127.0.0.1:7700", value_delimiter = ',')]
    pub(crate) url: Vec<String>,
    /// API token (scopes produce, work and read; items for `agents`; messages for `messages`),
    /// when the server has auth on.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Jobs for the end-to-end phase.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) jobs: usize,
    /// Jobs per enqueue request.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// SDK workers (each its own claim loop).
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Handlers per worker.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Jobs per claim.
    #[arg(long, default_value_t = 256)]
    claim: usize,
    /// Samples for the enqueue → start latency phase.
    #[arg(long, default_value_t = 500)]
    pub(crate) latency_samples: usize,
    /// Concurrent single-job clients (memory: searching clients, at most 32).
    #[arg(long, default_value_t = 100)]
    pub(crate) clients: usize,
    /// Memory: synthetic episodes ingested.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) memory_episodes: usize,
    /// Memory: searches per kind (flat, hierarchical; a tenth of them for the commonest term).
    #[arg(long, default_value_t = 2_000)]
    pub(crate) memory_searches: usize,
    /// Memory: search this existing namespace (one an earlier run filled: its ingest line names
    /// it) instead of ingesting; the ingest and jobs measurements are skipped.
    #[arg(long, value_name = "NAMESPACE")]
    pub(crate) memory_reuse: Option<String>,
    /// Rounds per single-job client.
    #[arg(long, default_value_t = 50)]
    pub(crate) rounds: usize,
    /// Soak: seconds to hold the steady rate [default: 1200; the memory soak 3600].
    #[arg(long)]
    pub(crate) soak_secs: Option<u64>,
    /// Soak: jobs per second enqueued (and worked).
    #[arg(long, default_value_t = 5_000)]
    soak_rate: u64,
    /// Soak: seconds between report lines.
    #[arg(long, default_value_t = 60)]
    pub(crate) soak_report_secs: u64,
    /// Memory: after its measurements, a soak (100 writers, 1,000 searching clients) for
    /// --soak-secs, ending in a go/no-go line.
    #[arg(long)]
    pub(crate) soak: bool,
    /// Memory soak: episodes per second, over the 100 writers.
    #[arg(long, default_value_t = 50)]
    pub(crate) memory_soak_writes: u64,
    /// Memory soak: searches per second, over the 1,000 searching clients.
    #[arg(long, default_value_t = 200)]
    pub(crate) memory_soak_searches: u64,
    /// Fan-out: WebSocket subscribers.
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    /// Fan-out: jobs per second flowing meanwhile.
    #[arg(long, default_value_t = 10_000)]
    fanout_rate: u64,
    /// Fan-out: seconds per measurement (without, then with subscribers); messages: seconds of
    /// the ring, then of the broadcasts.
    #[arg(long, default_value_t = 10)]
    fanout_secs: u64,
    /// Overload: jobs per enqueue request.
    #[arg(long, default_value_t = 10)]
    overload_batch: usize,
    /// Overload: seconds of offered load (after as long measuring capacity).
    #[arg(long, default_value_t = 10)]
    overload_secs: u64,
    /// Overload: offered load as a multiple of the measured capacity.
    #[arg(long, default_value_t = 10.0)]
    overload_factor: f64,
    /// Agents: agent counts, one closed-loop run each; messages: the ring has as many agents as
    /// the largest count (default 100).
    #[arg(long, value_delimiter = ',', default_values_t = [1, 10, 50, 100])]
    agents: Vec<usize>,
    /// Agents: iterations per agent, one per --agents entry [default by count: 1 → 1000,
    /// ≤10 → 500, ≤50 → 200, more → 100].
    #[arg(long, value_delimiter = ',')]
    agent_iterations: Vec<usize>,
    /// Messages: receivers long-polling channel `all` during the broadcast fan-out.
    #[arg(long, default_value_t = 1_000)]
    broadcast_agents: usize,
    /// MCP: concurrent sessions (each doing enqueue, claim, complete), one run per count; the
    /// first count also runs beside the end-to-end phase.
    #[arg(long, value_delimiter = ',', default_value = "50,100")]
    pub(crate) mcp_sessions: Vec<usize>,
    /// MCP: clients use the initialize handshake (2025-11-25 sessions) instead of the stateless
    /// 2026-07-28 revision.
    #[arg(long)]
    pub(crate) mcp_handshake: bool,
    /// Catchup: events stored, then replayed to each reader.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) catchup_events: u64,
    /// Catchup: events per long-poll page (at most the server's `limits.max_page_size`).
    #[arg(long, default_value_t = 1_000)]
    pub(crate) catchup_page: usize,
    /// Catchup: readers replaying at once (for memory, and beside the end-to-end phase).
    #[arg(long, default_value_t = 10)]
    pub(crate) catchup_readers: usize,
    /// Phases to run (e2e, latency, clients; soak, fanout, overload, agents, messages, convoy, ledger, memory, catchup and mcp only
    /// when named); e2e, latency, clients by default. `messages` needs the server started with
    /// `[messages] rate_per_min = 0`; its ring uses the largest --agents count and
    /// --fanout-secs, its broadcast fan-out --broadcast-agents and --fanout-secs.
    phases: Vec<String>,
}

pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn now_us() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros())
}

pub(crate) async fn rss(c: &Client) -> String {
    match c.server_info().await {
        Ok(i) => i.rss_bytes.map(|b| format!("{:.0} MiB", b as f64 / 1048576.0)).unwrap_or("?".into()),
        Err(e) => format!("? ({e})"),
    }
}

/// SDK workers spread over the nodes, counting the no-op jobs of one queue they handle.
struct CountingWorkers {
    done: Arc<AtomicU64>,
    stop: tokio::sync::broadcast::Sender<()>,
    handles: Vec<tokio::task::JoinHandle<Arc<ferry_client::worker::WorkerStats>>>,
}

impl CountingWorkers {
    fn spawn(a: &BenchArgs, nodes: &[Client], queue: &str, name: &str) -> CountingWorkers {
        let done = Arc::new(AtomicU64::new(0));
        let (stop, _) = tokio::sync::broadcast::channel::<()>(1);
        let handles = (0..a.workers)
            .map(|w| {
                let (done, mut stopped) = (done.clone(), stop.subscribe());
                let worker = Worker::new(nodes[w % nodes.len()].clone(), format!("{name}-{w}"))
                    .concurrency(a.concurrency)
                    .claim_batch(a.claim)
                    .wait_ms(1_000)
                    .handle(queue, move |_ctx| {
                        let done = done.clone();
                        async move {
                            done.fetch_add(1, Ordering::Relaxed);
                            Ok(None)
                        }
                    });
                tokio::spawn(worker.run(async move {
                    let _ = stopped.recv().await;
                }))
            })
            .collect();
        CountingWorkers { done, stop, handles }
    }

    /// Jobs handled so far.
    fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Stops the workers and waits for them to flush.
    async fn stop(self) {
        let _ = self.stop.send(());
        for h in self.handles {
            let _ = h.await;
        }
    }
}

/// Runs the benchmark and prints one line per figure.
pub async fn run(a: BenchArgs) -> i32 {
    let nodes: Vec<Client> = a.url.iter().map(|u| Client::new(u).with_token(a.token.clone())).collect();
    for (c, u) in nodes.iter().zip(&a.url) {
        if let Err(e) = c.ready().await {
            eprintln!("ferry: server at {u} is not ready: {e}");
            return 1;
        }
    }
    let client = nodes[0].clone();
    let node = |i: usize| nodes[i % nodes.len()].clone();
    let want = |p: &str| {
        (a.phases.is_empty()
            && !matches!(
                p,
                "soak"
                    | "fanout"
                    | "overload"
                    | "agents"
                    | "messages"
                    | "convoy"
                    | "ledger"
                    | "memory"
                    | "catchup"
                    | "mcp"
            ))
            || a.phases.iter().any(|x| x == p)
    };
    let run_id = format!("{:x}", now_us());
    println!(
        "ferry bench against {} node(s) {} (server memory at start: {})",
        nodes.len(),
        a.url.join(", "),
        rss(&client).await
    );
    if want("e2e") {
        // Several nodes: the phase runs on the first node, then the first two, and so on, so
        // one run shows what each node added.
        for used in if nodes.len() > 1 { 1..=nodes.len() } else { 1..=1 } {
            let queue = format!("bench-e2e-{run_id}-{used}");
            let Ok((enq, work, total)) = e2e(&a, &nodes[..used], &queue).await else { return 1 };
            let on =
                if nodes.len() > 1 { format!(" ({used} of {} nodes)", nodes.len()) } else { String::new() };
            println!(
                "e2e{on}       enqueue {} jobs in batches of {}: {:.0} jobs/s",
                a.jobs,
                a.batch,
                a.jobs as f64 / enq.as_secs_f64()
            );
            println!(
                "e2e{on}       work them with {} SDK workers x {} handlers, claim {}: {:.0} jobs/s",
                a.workers,
                a.concurrency,
                a.claim,
                a.jobs as f64 / work.as_secs_f64()
            );
            println!(
                "e2e{on}       end to end (enqueue + work): {:.0} jobs/s; server memory {}",
                a.jobs as f64 / total.as_secs_f64(),
                rss(&client).await
            );
        }
    }
    if want("latency") {
        let queue = format!("bench-lat-{run_id}");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let worker = Worker::new(node(nodes.len() - 1), "bench-latency")
            .concurrency(4)
            .claim_batch(1)
            .wait_ms(30_000)
            .handle(&queue, move |ctx| {
                let tx = tx.clone();
                async move {
                    let sent: u128 = ctx.payload::<String>()?.parse().unwrap_or(0);
                    let _ = tx.send((now_us().saturating_sub(sent)) as f64 / 1000.0);
                    Ok(None)
                }
            });
        let handle = tokio::spawn(worker.run(async move {
            let _ = stop_rx.await;
        }));
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut samples = Vec::with_capacity(a.latency_samples);
        for _ in 0..a.latency_samples {
            let payload = serde_json::value::to_raw_value(&now_us().to_string()).expect("json");
            let spec = JobSpec { queue: queue.clone(), payload: Some(payload), ..Default::default() };
            if let Err(e) = client.enqueue(&spec).await {
                eprintln!("ferry: enqueue failed: {e}");
                return 1;
            }
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Some(ms)) => samples.push(ms),
                _ => {
                    eprintln!("ferry: a job did not start within 5 s");
                    return 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let _ = stop_tx.send(());
        let _ = handle.await;
        samples.sort_by(|x, y| x.partial_cmp(y).expect("finite"));
        println!(
            "latency   enqueue -> start on an idle server{}, {} samples: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            if nodes.len() > 1 { " (enqueued on the first node, worked on the last)" } else { "" },
            samples.len(),
            pct(&samples, 0.5),
            pct(&samples, 0.99),
            samples.last().copied().unwrap_or(f64::NAN)
        );
    }
    if want("clients") {
        let (rate, all) =
            match single_job_clients(&nodes, a.clients, a.rounds, &format!("bench-cli-{run_id}")).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("ferry: client call failed: {e}");
                    return 1;
                }
            };
        println!(
            "clients   {} concurrent single-job clients (enqueue, claim, complete): {rate:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms; server memory {}",
            a.clients,
            pct(&all, 0.5),
            pct(&all, 0.99),
            rss(&client).await
        );
    }
    if want("soak") && soak(&a, &nodes, &run_id).await.is_err() {
        return 1;
    }
    if want("overload") && overload(&a, &nodes, &run_id).await.is_err() {
        return 1;
    }
    if want("fanout") && fanout(&a, &nodes, &run_id).await.is_err() {
        return 1;
    }
    if want("agents") && agents(&a, &nodes, &run_id).await.is_err() {
        return 1;
    }
    if want("messages") && messages(&a, &nodes, &run_id).await.is_err() {
        return 1;
    }
    if want("convoy") && convoy(&a, &nodes, &run_id).await.is_err() {
        return 1;
    }
    if want("ledger") && ledger(&a, &nodes, &run_id).await.is_err() {
        return 1;
    }
    if want("catchup") && crate::bench_catchup::catchup(&a, &nodes, &run_id).await.is_err() {
        return 1;
    }
    if want("memory") && crate::bench_memory::memory(&a, &nodes, &run_id).await.is_err() {
        return 1;
    }
    if want("mcp") && crate::bench_mcp::mcp(&a, &nodes, &run_id).await.is_err() {
        return 1;
    }
    0
}

/// The `e2e` phase on `nodes`: `a.jobs` jobs enqueued in batches (4 in flight, spread over the
/// nodes), then worked by SDK workers spread over them; (enqueue time, work time, total).
async fn e2e(a: &BenchArgs, nodes: &[Client], queue: &str) -> Result<(Duration, Duration, Duration), ()> {
    let node = |i: usize| nodes[i % nodes.len()].clone();
    let t0 = Instant::now();
    let mut left = a.jobs;
    let mut batches = Vec::new();
    while left > 0 {
        let n = left.min(a.batch);
        left -= n;
        let specs: Vec<JobSpec> =
            (0..n).map(|_| JobSpec { queue: queue.to_string(), ..Default::default() }).collect();
        batches.push(specs);
    }
    let mut sends = tokio::task::JoinSet::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    for (i, specs) in batches.into_iter().enumerate() {
        let (c, sem) = (node(i), sem.clone());
        sends.spawn(async move {
            let _p = sem.acquire().await.expect("open");
            c.enqueue_batch(&specs).await.map(|r| r.ids.len())
        });
    }
    while let Some(r) = sends.join_next().await {
        if let Err(e) = r.expect("task") {
            eprintln!("ferry: enqueue failed: {e}");
            return Err(());
        }
    }
    let enq = t0.elapsed();
    let t1 = Instant::now();
    let workers = CountingWorkers::spawn(a, nodes, queue, "bench");
    // Handlers first (cheap, local), then the server's count, so polling costs it little.
    while workers.done() < a.jobs as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut completed = 0;
    while completed < a.jobs as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let q = nodes[0].queues().await.ok().and_then(|r| r.queues.into_iter().find(|q| q.queue == queue));
        completed = q.map_or(0, |q| q.counts.get(&ferry_core::JobState::Completed).copied().unwrap_or(0));
    }
    let work = t1.elapsed();
    let total = t0.elapsed(); // before the workers' shutdown (their long-polls) is waited out
    workers.stop().await;
    Ok((enq, work, total))
}

/// `clients` SDK clients (spread over the nodes), each doing `rounds` times enqueue(1) →
/// claim(1) → complete(1) on a queue of its own; (calls/s, the calls' latencies in ms, sorted).
pub(crate) async fn single_job_clients(
    nodes: &[Client],
    clients: usize,
    rounds: usize,
    queue: &str,
) -> Result<(f64, Vec<f64>), ClientError> {
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let (client, queue) = (nodes[c % nodes.len()].clone(), format!("{queue}-{c}"));
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(rounds * 3);
            for _ in 0..rounds {
                let t = Instant::now();
                client.enqueue(&JobSpec { queue: queue.clone(), ..Default::default() }).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                let t = Instant::now();
                let body = ClaimBody { worker: Some("bench".into()), max: Some(1), ..Default::default() };
                let jobs = client.claim(&queue, &body).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                let t = Instant::now();
                client.complete(jobs[0].id, &jobs[0].lease, None).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<_, ClientError>(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.expect("task")?);
    }
    let secs = t0.elapsed().as_secs_f64();
    all.sort_by(|x, y| x.partial_cmp(y).expect("finite"));
    Ok((all.len() as f64 / secs, all))
}

/// Enqueues `jobs` jobs of `queue` in batches (4 in flight), each paid by `payer` when given, and
/// works them with SDK workers; returns the end-to-end rate.
pub(crate) async fn jobs_end_to_end(
    a: &BenchArgs,
    nodes: &[Client],
    queue: &str,
    payer: Option<&str>,
    jobs: usize,
) -> Result<f64, ClientError> {
    use ferry_core::wire::PaymentSpec;
    let t0 = Instant::now();
    let workers = CountingWorkers::spawn(a, nodes, queue, "bench-ledger");
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    let mut sends = tokio::task::JoinSet::new();
    let mut left = jobs;
    let mut i = 0;
    while left > 0 {
        let n = left.min(a.batch);
        left -= n;
        let payment = payer.map(|p| PaymentSpec { from: p.to_string(), amount: 1, ..Default::default() });
        let specs: Vec<JobSpec> = (0..n)
            .map(|_| JobSpec { queue: queue.to_string(), payment: payment.clone(), ..Default::default() })
            .collect();
        let (c, sem) = (nodes[i % nodes.len()].clone(), sem.clone());
        i += 1;
        sends.spawn(async move {
            let _p = sem.acquire().await.expect("open");
            c.enqueue_batch(&specs).await.map(|r| r.ids.len())
        });
    }
    while let Some(r) = sends.join_next().await {
        r.expect("task")?;
    }
    while workers.done() < jobs as u64 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = t0.elapsed().as_secs_f64();
    workers.stop().await;
    Ok(jobs as f64 / secs)
}

/// One client's single transfers `from` → `to` until `stop`, or `rounds` of them; latencies in ms.
async fn transfer_client(
    c: Client,
    prefix: String,
    (from, to): (String, String),
    rounds: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Result<Vec<f64>, ClientError> {
    use ferry_core::wire::TransferBody;
    let mut lat = Vec::with_capacity(rounds.min(100_000));
    let mut r = 0;
    while r < rounds && !stop.load(Ordering::Relaxed) {
        let body = TransferBody {
            id: format!("{prefix}-{r}"),
            debit_account: from.clone(),
            credit_account: to.clone(),
            amount: 1,
            ..Default::default()
        };
        let t = Instant::now();
        c.transfer(&body).await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        r += 1;
    }
    Ok(lat)
}

/// The `ledger` phase: batches of 1,000 transfers; `clients` single-transfer clients on one hot
/// pair of accounts; paid against unpaid jobs end to end; jobs beside the transfer clients; a
/// full replay.
async fn ledger(a: &BenchArgs, nodes: &[Client], run_id: &str) -> Result<(), ()> {
    use ferry_core::wire::{AccountBody, TransferBody};
    let fail = |what: &str, e: ClientError| eprintln!("ferry: ledger {what} failed: {e}");
    let acct = |name: &str| format!("bench-{run_id}-{name}");
    let strict = ferry_core::ledger::Flags { debits_must_not_exceed_credits: true, ..Default::default() };
    let accounts: Vec<AccountBody> = ["bank", "src", "dst", "payer"]
        .iter()
        .map(|n| AccountBody {
            id: acct(n),
            flags: (*n == "src" || *n == "payer").then_some(strict),
            ..Default::default()
        })
        .collect();
    let c = &nodes[0];
    c.create_accounts(&accounts).await.map_err(|e| fail("accounts", e))?;
    for to in ["src", "payer"] {
        let fund = TransferBody {
            id: format!("{}-fund", acct(to)),
            debit_account: acct("bank"),
            credit_account: acct(to),
            amount: 1 << 40,
            ..Default::default()
        };
        c.transfer(&fund).await.map_err(|e| fail("fund", e))?;
    }
    // Batches of 1,000.
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(4));
    let mut sends = tokio::task::JoinSet::new();
    let batches = a.jobs.div_ceil(1_000);
    for b in 0..batches {
        let body: Vec<TransferBody> = (0..1_000)
            .map(|i| TransferBody {
                id: format!("{}-b{b}-{i}", acct("t")),
                debit_account: acct("src"),
                credit_account: acct("dst"),
                amount: 1,
                ..Default::default()
            })
            .collect();
        let (c, sem) = (nodes[b % nodes.len()].clone(), sem.clone());
        sends.spawn(async move {
            let _p = sem.acquire().await.expect("open");
            c.transfers(&body).await.map(|t| t.len())
        });
    }
    while let Some(r) = sends.join_next().await {
        r.expect("task").map_err(|e| fail("batch", e))?;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "ledger    {} transfers in atomic batches of 1,000 (4 in flight): {:.0} transfers/s",
        batches * 1_000,
        (batches * 1_000) as f64 / secs
    );
    // One hot pair, many clients.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.clients {
        let c = nodes[i % nodes.len()].clone();
        let pair = (acct("src"), acct("dst"));
        tasks.spawn(transfer_client(c, format!("{}-h{i}", acct("t")), pair, a.rounds, stop.clone()));
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.expect("task").map_err(|e| fail("hot pair", e))?);
    }
    let secs = t0.elapsed().as_secs_f64();
    all.sort_by(|x, y| x.partial_cmp(y).expect("finite"));
    println!(
        "ledger    {} clients, single transfers on one hot pair: {:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms",
        a.clients,
        all.len() as f64 / secs,
        pct(&all, 0.5),
        pct(&all, 0.99)
    );
    // Paid against unpaid jobs.
    let unpaid = jobs_end_to_end(a, nodes, &format!("bench-ledger-{run_id}-unpaid"), None, a.jobs)
        .await
        .map_err(|e| fail("unpaid jobs", e))?;
    let payer = acct("payer");
    let paid = jobs_end_to_end(a, nodes, &format!("bench-ledger-{run_id}-paid"), Some(&payer), a.jobs)
        .await
        .map_err(|e| fail("paid jobs", e))?;
    println!(
        "ledger    jobs end to end: unpaid {unpaid:.0} jobs/s, paid {paid:.0} jobs/s ({:.2}x)",
        paid / unpaid
    );
    // Jobs beside the transfer clients.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.clients {
        let c = nodes[i % nodes.len()].clone();
        let pair = (acct("src"), acct("dst"));
        tasks.spawn(transfer_client(c, format!("{}-m{i}", acct("t")), pair, usize::MAX, stop.clone()));
    }
    let t0 = Instant::now();
    let beside = jobs_end_to_end(a, nodes, &format!("bench-ledger-{run_id}-beside"), None, a.jobs)
        .await
        .map_err(|e| fail("jobs beside transfers", e))?;
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut moved = 0;
    while let Some(r) = tasks.join_next().await {
        moved += r.expect("task").map_err(|e| fail("transfers beside jobs", e))?.len();
    }
    println!(
        "ledger    jobs end to end beside {} transfer clients: {beside:.0} jobs/s ({:.2}x unpaid alone), transfers {:.0}/s meanwhile",
        a.clients,
        beside / unpaid,
        moved as f64 / secs
    );
    // Replay.
    let t0 = Instant::now();
    let v = c.verify_ledger(true, false).await.map_err(|e| fail("verify", e))?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "ledger    full replay: {} events in {:.2} s ({:.0} events/s), ok {}; server memory {}",
        v.events_replayed,
        secs,
        v.events_replayed as f64 / secs,
        v.ok,
        rss(c).await
    );
    Ok(())
}

/// The `convoy` phase: one big convoy under a fixed, then an adaptive limit, end to end;
/// then many clients creating small convoys and waiting for each.
async fn convoy(a: &BenchArgs, nodes: &[Client], run_id: &str) -> Result<(), ()> {
    use ferry_core::wire::{AdaptiveBody, ConvoyBody, MaxParallelBody, MemberSpec};
    let fail = |what: &str, e: ClientError| eprintln!("ferry: convoy {what} failed: {e}");
    for (label, limit) in [
        ("fixed 10000", MaxParallelBody::Fixed(10_000)),
        (
            "adaptive 2048..10000",
            MaxParallelBody::Adaptive { adaptive: AdaptiveBody { min: 2048, max: 10_000, start: None } },
        ),
    ] {
        let queue = format!("bench-convoy-{run_id}-{}", label.split(' ').next().unwrap_or("x"));
        let id = format!("{queue}-c");
        let t0 = Instant::now();
        let body = ConvoyBody {
            id: Some(id.clone()),
            queue: queue.clone(),
            max_parallel: Some(limit),
            sealed: Some(false),
            ..Default::default()
        };
        nodes[0].create_convoy(&body).await.map_err(|e| fail("create", e))?;
        let workers = CountingWorkers::spawn(a, nodes, &queue, "bench-convoy");
        let mut adds = tokio::task::JoinSet::new();
        let sem = Arc::new(tokio::sync::Semaphore::new(4));
        let mut left = a.jobs;
        let mut i = 0;
        while left > 0 {
            let n = left.min(a.batch);
            left -= n;
            let (c, sem, id) = (nodes[i % nodes.len()].clone(), sem.clone(), id.clone());
            i += 1;
            adds.spawn(async move {
                let _p = sem.acquire().await.expect("open");
                c.add_convoy_members(&id, &vec![MemberSpec::default(); n]).await
            });
        }
        while let Some(r) = adds.join_next().await {
            r.expect("task").map_err(|e| fail("add", e))?;
        }
        let added = t0.elapsed();
        nodes[0].seal_convoy(&id).await.map_err(|e| fail("seal", e))?;
        let end = loop {
            let c = nodes[0].get_convoy(&id, Some(30_000)).await.map_err(|e| fail("read", e))?;
            if c.state.is_finished() {
                break c;
            }
        };
        let total = t0.elapsed();
        workers.stop().await;
        println!(
            "convoy    {label}: {} members added in {:.2} s ({:.0}/s); end to end {:.0} jobs/s; state {}, limit at the end {}; server memory {}",
            a.jobs,
            added.as_secs_f64(),
            a.jobs as f64 / added.as_secs_f64(),
            a.jobs as f64 / total.as_secs_f64(),
            end.state.as_str(),
            end.limit,
            rss(&nodes[0]).await
        );
    }
    let queue = format!("bench-convoy-{run_id}-small");
    let workers = CountingWorkers::spawn(a, nodes, &queue, "bench-convoy-small");
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..a.clients {
        let (client, queue, rounds) = (nodes[c % nodes.len()].clone(), queue.clone(), a.rounds);
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(rounds);
            for r in 0..rounds {
                let body = ConvoyBody {
                    id: Some(format!("{queue}-{c}-{r}")),
                    queue: queue.clone(),
                    members: vec![MemberSpec::default(); 10],
                    ..Default::default()
                };
                let t = Instant::now();
                client.create_convoy(&body).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
                let id = format!("{queue}-{c}-{r}");
                while !client.get_convoy(&id, Some(30_000)).await?.state.is_finished() {}
            }
            Ok::<_, ClientError>(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.expect("task").map_err(|e| fail("small", e))?);
    }
    let secs = t0.elapsed().as_secs_f64();
    workers.stop().await;
    all.sort_by(|x, y| x.partial_cmp(y).expect("finite"));
    println!(
        "convoy    {} clients creating 10-member convoys and waiting for each: {:.0} convoys/s, create p50 {:.2} ms, p99 {:.2} ms",
        a.clients,
        all.len() as f64 / secs,
        pct(&all, 0.5),
        pct(&all, 0.99)
    );
    Ok(())
}

/// Holds `rate` jobs/s (enqueued in ten batches a second, worked by SDK workers) for `secs`;
/// returns the completion rate achieved.
async fn steady_load(a: &BenchArgs, client: &Client, queue: &str, secs: u64) -> Result<f64, ()> {
    let workers = CountingWorkers::spawn(a, std::slice::from_ref(client), queue, "fan");
    let per_tick = (a.fanout_rate / 10).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // Warm up one second, then count.
    let warm = Instant::now() + Duration::from_secs(1);
    let (mut t0, mut base) = (None, 0);
    let end = warm + Duration::from_secs(secs);
    while Instant::now() < end {
        tick.tick().await;
        if t0.is_none() && Instant::now() >= warm {
            t0 = Some(Instant::now());
            base = workers.done();
        }
        let specs: Vec<JobSpec> =
            (0..per_tick).map(|_| JobSpec { queue: queue.to_string(), ..Default::default() }).collect();
        if let Err(e) = client.enqueue_batch(&specs).await {
            eprintln!("ferry: enqueue failed: {e}");
            return Err(());
        }
    }
    let rate = (workers.done() - base) as f64 / t0.map_or(1.0, |t| t.elapsed().as_secs_f64());
    workers.stop().await;
    Ok(rate)
}

/// Job throughput at a steady rate without, then with, `subscribers` WebSocket subscribers
/// receiving a probe event every 100 ms; prints the throughput drop and the delivery latency
/// (event time to arrival at each subscriber).
async fn fanout(a: &BenchArgs, nodes: &[Client], run_id: &str) -> Result<(), ()> {
    use futures_util::StreamExt;
    let client = nodes[0].clone();
    let base = a.url[0].replace("http://", "ws://");
    let without = steady_load(a, &client, &format!("bench-fan-load-a-{run_id}"), a.fanout_secs).await?;
    let probe_queue = format!("bench-fan-probe-{run_id}");
    let lat = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let mut subs = Vec::with_capacity(a.subscribers);
    for _ in 0..a.subscribers {
        let url = format!("{base}/v1/ws?queue={probe_queue}&type=job.enqueued");
        let (ws, _) = match tokio_tungstenite::connect_async(url).await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("ferry: websocket connect failed: {e}");
                return Err(());
            }
        };
        let lat = lat.clone();
        subs.push(tokio::spawn(async move {
            let (_, mut rx) = ws.split();
            while let Some(Ok(m)) = rx.next().await {
                if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                    let now = now_us() as f64 / 1000.0;
                    if let Ok(e) = serde_json::from_str::<ferry_core::Event>(&t) {
                        lat.lock().expect("latency lock").push(now - e.at.0 as f64);
                    }
                }
            }
        }));
    }
    let probing = {
        let (client, q) = (client.clone(), probe_queue.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if client.enqueue(&JobSpec { queue: q.clone(), ..Default::default() }).await.is_err() {
                    return;
                }
            }
        })
    };
    let with = steady_load(a, &client, &format!("bench-fan-load-b-{run_id}"), a.fanout_secs).await?;
    probing.abort();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for s in subs {
        s.abort();
    }
    let mut l = lat.lock().expect("latency lock").clone();
    l.sort_by(|x, y| x.partial_cmp(y).expect("finite"));
    println!(
        "fanout    {} jobs/s target: {:.0} jobs/s without subscribers, {:.0} with {} WebSocket subscribers ({:+.1}%); \
         {} deliveries, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        a.fanout_rate,
        without,
        with,
        a.subscribers,
        (with / without - 1.0) * 100.0,
        l.len(),
        pct(&l, 0.5),
        pct(&l, 0.99),
        l.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

/// Enqueues `soak_rate` jobs/s in ten batches a second, spread over the nodes, while SDK
/// workers work them; prints one line per interval: jobs enqueued and completed, backlog, and
/// the database's size, which should level off once retention or vacuum keeps pace.
async fn soak(a: &BenchArgs, nodes: &[Client], run_id: &str) -> Result<(), ()> {
    let queue = format!("bench-soak-{run_id}");
    let client = nodes[0].clone();
    let workers = CountingWorkers::spawn(a, nodes, &queue, "soak");
    let per_tick = (a.soak_rate / 10).max(1) as usize;
    let soak_secs = a.soak_secs.unwrap_or(1_200);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let t0 = Instant::now();
    let mut next_report = Duration::from_secs(a.soak_report_secs);
    let (mut enqueued, mut last_enq, mut last_done, mut i) = (0u64, 0u64, 0u64, 0usize);
    let mut failed = false;
    println!(
        "soak      {} jobs/s for {} s over {} node(s); one line per {} s",
        a.soak_rate,
        soak_secs,
        nodes.len(),
        a.soak_report_secs
    );
    while t0.elapsed() < Duration::from_secs(soak_secs) {
        tick.tick().await;
        let specs: Vec<JobSpec> =
            (0..per_tick).map(|_| JobSpec { queue: queue.clone(), ..Default::default() }).collect();
        match nodes[i % nodes.len()].enqueue_batch(&specs).await {
            Ok(r) => enqueued += r.ids.len() as u64,
            Err(e) => {
                eprintln!("ferry: enqueue failed: {e}");
                failed = true;
                break;
            }
        }
        i += 1;
        if t0.elapsed() >= next_report {
            let secs = a.soak_report_secs as f64;
            let d = workers.done();
            let info = client.server_info().await.ok();
            println!(
                "soak      t={:>5} s  enqueued {:>7.0}/s  completed {:>7.0}/s  backlog {:>7}  db {:>6.1} MiB  server memory {}",
                next_report.as_secs(),
                (enqueued - last_enq) as f64 / secs,
                (d - last_done) as f64 / secs,
                enqueued.saturating_sub(d),
                info.as_ref().and_then(|i| i.db_bytes).unwrap_or(0) as f64 / 1048576.0,
                rss(&client).await
            );
            (last_enq, last_done) = (enqueued, d);
            next_report += Duration::from_secs(a.soak_report_secs);
        }
    }
    workers.stop().await;
    if failed { Err(()) } else { Ok(()) }
}

/// Overload: measures capacity with closed-loop producers, then offers `overload_factor` times
/// that rate open-loop (each request on its own task, as independent clients would) and
/// reports what was admitted (and its latency), what was refused (429/503, and how fast),
/// what failed otherwise, and the server's peak memory.
async fn overload(a: &BenchArgs, nodes: &[Client], run_id: &str) -> Result<(), ()> {
    let client = nodes[0].clone();
    let specs = |q: &str| -> Vec<JobSpec> {
        (0..a.overload_batch).map(|_| JobSpec { queue: q.to_string(), ..Default::default() }).collect()
    };
    // 1. Capacity: 32 closed-loop producers for overload_secs.
    let queue = format!("bench-cap-{run_id}");
    let stop_at = Instant::now() + Duration::from_secs(a.overload_secs);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..32 {
        let (c, body) = (nodes[i % nodes.len()].clone(), specs(&queue));
        tasks.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop_at {
                if c.enqueue_batch(&body).await.is_ok() {
                    n += 1;
                }
            }
            n
        });
    }
    let mut done = 0;
    while let Some(r) = tasks.join_next().await {
        done += r.expect("task");
    }
    let capacity = done as f64 / a.overload_secs as f64;
    let offered = capacity * a.overload_factor;
    println!(
        "overload  capacity {capacity:.0} requests/s ({:.0} jobs/s); offering {offered:.0} requests/s for {} s",
        capacity * a.overload_batch as f64,
        a.overload_secs
    );
    // 2. Open loop at `offered` requests/s, at most 50,000 outstanding on the client side.
    let queue = format!("bench-over-{run_id}");
    let outstanding = Arc::new(tokio::sync::Semaphore::new(50_000));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u16, f64)>();
    let peak_rss = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (c, peak) = (client.clone(), peak_rss.clone());
        tokio::spawn(async move {
            loop {
                if let Ok(i) = c.server_info().await {
                    peak.fetch_max(i.rss_bytes.unwrap_or(0), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    let t0 = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / offered.max(1.0));
    let mut sent = 0u64;
    let mut dropped = 0u64;
    while t0.elapsed() < Duration::from_secs(a.overload_secs) {
        let due = (t0.elapsed().as_secs_f64() / interval.as_secs_f64()) as u64;
        while sent < due {
            sent += 1;
            let Ok(permit) = outstanding.clone().try_acquire_owned() else {
                dropped += 1;
                continue;
            };
            let (c, body, tx) = (nodes[sent as usize % nodes.len()].clone(), specs(&queue), tx.clone());
            tokio::spawn(async move {
                let t = Instant::now();
                let status = match c.enqueue_batch(&body).await {
                    Ok(_) => 201,
                    Err(ferry_client::ClientError::Api { status, .. }) => status,
                    Err(_) => 0,
                };
                let _ = tx.send((status, t.elapsed().as_secs_f64() * 1000.0));
                drop(permit);
            });
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(tx);
    let (mut admitted, mut refused, mut other) = (Vec::new(), Vec::new(), 0u64);
    while let Some((status, ms)) = rx.recv().await {
        match status {
            200 | 201 => admitted.push(ms),
            429 | 503 => refused.push(ms),
            _ => other += 1,
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    sampler.abort();
    for v in [&mut admitted, &mut refused] {
        v.sort_by(|x, y| x.partial_cmp(y).expect("finite"));
    }
    println!(
        "overload  offered {:.0} requests/s: admitted {:.0}/s (p50 {:.2} ms, p99 {:.2} ms), refused {:.0}/s (p99 {:.2} ms), other errors {other}, not sent (client cap) {dropped}; server memory peak {:.0} MiB, now {}",
        sent as f64 / secs,
        admitted.len() as f64 / secs,
        pct(&admitted, 0.5),
        pct(&admitted, 0.99),
        refused.len() as f64 / secs,
        pct(&refused, 0.99),
        peak_rss.load(Ordering::Relaxed) as f64 / 1048576.0,
        rss(&client).await
    );
    if other > 0 { Err(()) } else { Ok(()) }
}

/// The ops of one agent iteration, in order (the `agents` phase's latency rows).
const AGENT_OPS: [&str; 4] = ["create", "claim", "artifact", "done"];

/// Agents adding artifacts to one shared item (the seed's contention case).
const SHARED_AGENTS: usize = 100;

/// Distinct artifact uris each shared-item agent adds (100 × 10 = the default
/// `limits.max_artifacts`).
const SHARED_URIS: usize = 10;

/// Conflicts one write retries before the benchmark gives up on it (merge writes of status
/// and artifacts should never conflict at all).
const MAX_CONFLICT_RETRIES: u32 = 100;

/// Iterations per agent when `--agent-iterations` is not given: the seed's counts × 10.
fn default_iterations(agents: usize) -> usize {
    match agents {
        0..=1 => 1_000,
        2..=10 => 500,
        11..=50 => 200,
        _ => 100,
    }
}

/// Milliseconds since `t`.
fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// What agents saw: per-op latencies (ms, conflict retries included), calls made, conflicts.
#[derive(Default)]
struct AgentStats {
    lat: [Vec<f64>; 4],
    calls: u64,
    conflicts: u64,
}

impl AgentStats {
    fn absorb(&mut self, other: AgentStats) {
        for (all, mine) in self.lat.iter_mut().zip(other.lat) {
            all.extend(mine);
        }
        self.calls += other.calls;
        self.conflicts += other.conflicts;
    }
}

/// Sends `body` with `expected_version` = `*version`; on `version_conflict` counts it and
/// retries on the version in the conflict's `details.current`. Leaves the item's new version
/// in `*version`.
async fn cas(
    c: &Client,
    id: &str,
    mut body: PatchItemBody,
    version: &mut i64,
    s: &mut AgentStats,
) -> Result<(), ClientError> {
    let mut retries = 0;
    loop {
        body.expected_version = Some(*version);
        s.calls += 1;
        match c.patch_item(id, &body).await {
            Ok(r) => {
                *version = r.item.version;
                return Ok(());
            }
            Err(e) if e.code() == Some(ErrorCode::VersionConflict) && retries < MAX_CONFLICT_RETRIES => {
                let Some(current) = e.conflict_current() else { return Err(e) };
                s.conflicts += 1;
                retries += 1;
                *version = current.version;
            }
            Err(e) => return Err(e),
        }
    }
}

/// One agent of the closed loop: `iterations` × (create → claim → add artifact → done).
async fn agent_loop(c: Client, agent: String, iterations: usize) -> Result<AgentStats, ClientError> {
    let mut s = AgentStats::default();
    for l in &mut s.lat {
        l.reserve(iterations);
    }
    for k in 0..iterations {
        let t = Instant::now();
        s.calls += 1;
        let body = CreateItemBody { title: format!("bench {agent} {k}"), ..Default::default() };
        let item = c.create_item(&body).await?.item;
        s.lat[0].push(ms_since(t));
        // Every write carries the version the agent knows (its own item: no conflicts
        // expected), so the run also passes with `[items] require_precondition = true`.
        let mut version = item.version;
        let steps = [
            PatchItemBody { status: Some(ItemStatus::InProgress), ..Default::default() },
            PatchItemBody {
                mode: Some(PatchMode::Merge),
                artifacts_add: Some(vec![Artifact { uri: format!("bench://{agent}/{k}"), meta: None }]),
                ..Default::default()
            },
            PatchItemBody { status: Some(ItemStatus::Done), ..Default::default() },
        ];
        for (op, body) in steps.into_iter().enumerate() {
            let t = Instant::now();
            let body = PatchItemBody { agent: Some(agent.clone()), ..body };
            cas(&c, &item.id, body, &mut version, &mut s).await?;
            s.lat[op + 1].push(ms_since(t));
        }
    }
    Ok(s)
}

/// `p50/p95/p99` of `v` (sorted here), for one report line.
fn percentiles(v: &mut [f64]) -> String {
    v.sort_by(f64::total_cmp);
    format!("p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms", pct(v, 0.5), pct(v, 0.95), pct(v, 0.99))
}

/// Work items under agent load: for each `--agents` count, that many agents in a closed loop
/// (create → claim → add artifact with `expected_version` → done); prints ops/s (every call
/// counted), p50/p95/p99 per op and the conflicts seen. Then [`SHARED_AGENTS`] agents each add
/// [`SHARED_URIS`] artifacts to one item (merge, `expected_version`, retrying conflicts on
/// `details.current`): prints the conflicts (expected 0) and how many artifacts were kept.
async fn agents(a: &BenchArgs, nodes: &[Client], run_id: &str) -> Result<(), ()> {
    if a.agents.contains(&0) {
        eprintln!("ferry: --agents counts must be at least 1");
        return Err(());
    }
    if !a.agent_iterations.is_empty() && a.agent_iterations.len() != a.agents.len() {
        eprintln!(
            "ferry: --agent-iterations needs one count per --agents entry ({} given for {})",
            a.agent_iterations.len(),
            a.agents.len()
        );
        return Err(());
    }
    let client = &nodes[0];
    for (run, &n) in a.agents.iter().enumerate() {
        let iterations = a.agent_iterations.get(run).copied().unwrap_or_else(|| default_iterations(n));
        let t0 = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let c = nodes[i % nodes.len()].clone();
            tasks.spawn(agent_loop(c, format!("bench-{run_id}-{n}-{i}"), iterations));
        }
        let mut all = AgentStats::default();
        while let Some(r) = tasks.join_next().await {
            match r.expect("agent task") {
                Ok(s) => all.absorb(s),
                Err(e) => {
                    eprintln!("ferry: agent call failed: {e}");
                    return Err(());
                }
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "agents    {n} agent(s) x {iterations} iterations (create, claim, artifact, done): \
             {} calls in {secs:.1} s, {:.0} ops/s, {} conflicts; server memory {}",
            all.calls,
            all.calls as f64 / secs,
            all.conflicts,
            rss(client).await
        );
        let mut every: Vec<f64> = all.lat.iter().flatten().copied().collect();
        for (op, lat) in AGENT_OPS.iter().zip(&mut all.lat) {
            println!("agents      {op:<9} {}", percentiles(lat));
        }
        println!("agents      {:<9} {}", "all", percentiles(&mut every));
    }
    shared_item(nodes, run_id).await
}

/// [`SHARED_AGENTS`] agents each adding [`SHARED_URIS`] distinct artifacts to one item.
async fn shared_item(nodes: &[Client], run_id: &str) -> Result<(), ()> {
    let client = &nodes[0];
    let body = CreateItemBody { title: format!("bench shared item {run_id}"), ..Default::default() };
    let item = match client.create_item(&body).await {
        Ok(r) => r.item,
        Err(e) => {
            eprintln!("ferry: create failed: {e}");
            return Err(());
        }
    };
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..SHARED_AGENTS {
        let (c, id, mut version) = (nodes[i % nodes.len()].clone(), item.id.clone(), item.version);
        let agent = format!("bench-{run_id}-shared-{i}");
        tasks.spawn(async move {
            let mut s = AgentStats::default();
            for u in 0..SHARED_URIS {
                let t = Instant::now();
                let uri = format!("bench://shared/{agent}/{u}");
                let body = PatchItemBody {
                    agent: Some(agent.clone()),
                    mode: Some(PatchMode::Merge),
                    artifacts_add: Some(vec![Artifact { uri, meta: None }]),
                    ..Default::default()
                };
                cas(&c, &id, body, &mut version, &mut s).await?;
                s.lat[2].push(ms_since(t));
            }
            Ok::<_, ClientError>(s)
        });
    }
    let mut all = AgentStats::default();
    while let Some(r) = tasks.join_next().await {
        match r.expect("agent task") {
            Ok(s) => all.absorb(s),
            Err(e) => {
                eprintln!("ferry: agent call failed: {e}");
                return Err(());
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let now = match client.get_item(&item.id).await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("ferry: reading the shared item failed: {e}");
            return Err(());
        }
    };
    let wanted = SHARED_AGENTS * SHARED_URIS;
    // A fresh item: every artifact on it is one of the agents' (a set by uri).
    let kept = now.artifacts.len();
    println!(
        "agents    one item, {SHARED_AGENTS} agents x {SHARED_URIS} artifacts (merge, expected_version): \
         {} calls in {secs:.1} s, {:.0} ops/s, {} conflicts (expect 0), {kept} of {wanted} artifacts kept, \
         version {}; {}",
        all.calls,
        all.calls as f64 / secs,
        all.conflicts,
        now.version,
        percentiles(&mut all.lat[2])
    );
    if kept == wanted {
        Ok(())
    } else {
        eprintln!("ferry: {} of {wanted} artifacts were lost", wanted.saturating_sub(kept));
        Err(())
    }
}

/// Long-poll of every receive of the `messages` phase.
const RECEIVE_WAIT_MS: i64 = 1_000;

/// Lifetime of the `messages` phase's messages and broadcasts: what a run leaves unacked
/// expires soon after it.
const BENCH_MESSAGE_TTL_MS: i64 = 120_000;

/// Broadcasts of the fan-out: one per this many ms.
const BROADCAST_EVERY_MS: u64 = 100;

/// How long the fan-out waits, after the last broadcast, for every delivery.
const FANOUT_GRACE: Duration = Duration::from_secs(10);

/// A `messages` phase call's failure as one line; a 429 `rate_limited` says how to turn the
/// server's send limit off.
fn message_error(what: &str, e: &ClientError) -> String {
    if e.code() == Some(ErrorCode::RateLimited) {
        format!(
            "{what} refused with 429 rate_limited: the server limits sends per agent; start it with \
             `rate_per_min = 0` under `[messages]` in ferry.toml for this benchmark"
        )
    } else {
        format!("{what} failed: {e}")
    }
}

/// Runs `f(i, client of node i)` for each `i < n`, at most 64 at a time; the first error.
async fn each_agent<F, Fut>(nodes: &[Client], n: usize, f: F) -> Result<(), String>
where
    F: Fn(usize, Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let sem = Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let (fut, sem) = (f(i, nodes[i % nodes.len()].clone()), sem.clone());
        tasks.spawn(async move {
            let _p = sem.acquire().await.expect("open");
            fut.await
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("agent task")?;
    }
    Ok(())
}

/// Agent messages: the ring, then the broadcast fan-out (agent names unique to this run).
async fn messages(a: &BenchArgs, nodes: &[Client], run_id: &str) -> Result<(), ()> {
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("bench-{run_id}-{}", &suffix[..8]);
    let r = match ring(a, nodes, &prefix).await {
        Ok(()) => broadcast_fanout(a, nodes, &prefix).await,
        Err(e) => Err(e),
    };
    r.map_err(|e| eprintln!("ferry: {e}"))
}

/// What one ring agent saw within the measured time.
#[derive(Default)]
struct RingStats {
    /// Milliseconds of each full round (send → receive → ack).
    rounds: Vec<f64>,
    /// HTTP calls (send, receive, ack) that ended before the deadline.
    calls: u64,
    /// Milliseconds of each send and ack (the calls that do not wait for a message by design).
    ops: Vec<f64>,
}

/// One agent of the ring until `deadline`: send to `next`, receive its own inbox (long-poll,
/// one message), ack it.
async fn ring_agent(c: Client, me: String, next: String, deadline: Instant) -> Result<RingStats, String> {
    let mut s = RingStats::default();
    let receive = ReceiveBody { max: Some(1), wait_ms: Some(RECEIVE_WAIT_MS), ..Default::default() };
    let mut k = 0u64;
    'rounds: while Instant::now() < deadline {
        let t = Instant::now();
        let body = SendBody {
            to: vec![next.clone()],
            from: me.clone(),
            body: serde_json::value::to_raw_value(&k).expect("json"),
            ttl_ms: Some(BENCH_MESSAGE_TTL_MS),
            dedup_key: None,
            reply_to: None,
            correlation_id: None,
        };
        c.send_message(&body).await.map_err(|e| message_error(&format!("send from {me}"), &e))?;
        k += 1;
        if Instant::now() <= deadline {
            s.calls += 1;
            s.ops.push(ms_since(t));
        }
        let got = loop {
            let got =
                c.receive(&me, &receive).await.map_err(|e| message_error(&format!("receive of {me}"), &e))?;
            if Instant::now() <= deadline {
                s.calls += 1;
            }
            if !got.is_empty() {
                break got;
            }
            if Instant::now() >= deadline {
                // The agent before this one stopped: the round cannot end.
                break 'rounds;
            }
        };
        let receipts: Vec<String> = got.into_iter().map(|m| m.receipt).collect();
        let acked = Instant::now();
        let results = c.ack(&me, &receipts).await.map_err(|e| message_error(&format!("ack of {me}"), &e))?;
        if let Some(r) = results.iter().find(|r| !r.ok) {
            let why = r.error.as_ref().map_or("no reason given".to_string(), |e| e.to_string());
            return Err(format!("ack of {me}'s message {} refused: {why}", r.id));
        }
        if Instant::now() <= deadline {
            s.calls += 1;
            s.ops.push(ms_since(acked));
            s.rounds.push(ms_since(t));
        }
    }
    Ok(s)
}

/// The ring: N agents (the largest `--agents` count), agent i sending to agent i+1 (the last
/// to the first), each in a closed loop send → receive (long-poll, 1) → ack for
/// `--fanout-secs`; prints calls/s (every call counted) and p50/p99 of a full round.
async fn ring(a: &BenchArgs, nodes: &[Client], prefix: &str) -> Result<(), String> {
    let n = a.agents.iter().copied().max().unwrap_or(100);
    if n == 0 {
        return Err("--agents counts must be at least 1".into());
    }
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-r{i}")).collect();
    // Inboxes first, on no channel: only the ring's direct messages reach them (not this run's
    // broadcasts, nor anyone else's).
    let setup = names.clone();
    each_agent(nodes, n, |i, c| {
        let agent = setup[i].clone();
        async move {
            c.set_channels(&agent, &[])
                .await
                .map(|_| ())
                .map_err(|e| message_error(&format!("channels of {agent}"), &e))
        }
    })
    .await?;
    let secs = a.fanout_secs.max(1);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let c = nodes[i % nodes.len()].clone();
        tasks.spawn(ring_agent(c, names[i].clone(), names[(i + 1) % n].clone(), deadline));
    }
    let (mut rounds, mut ops, mut calls) = (Vec::new(), Vec::new(), 0u64);
    let mut failure = None;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(s)) => {
                rounds.extend(s.rounds);
                ops.extend(s.ops);
                calls += s.calls;
            }
            Ok(Err(e)) => {
                // Stop the others: without this agent the ring stalls anyway.
                tasks.abort_all();
                if failure.is_none() {
                    failure = Some(e);
                }
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => panic!("ring task: {e}"),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    let secs = secs as f64;
    rounds.sort_by(f64::total_cmp);
    ops.sort_by(f64::total_cmp);
    println!(
        "messages  ring of {n} agents, {secs:.0} s (send to the next, receive wait {RECEIVE_WAIT_MS} ms max 1, ack): \
         {calls} calls, {:.0} calls/s, {} rounds ({:.0}/s); round p50 {:.2} ms, p99 {:.2} ms; \
         send and ack p50 {:.2} ms, p99 {:.2} ms; server memory {}",
        calls as f64 / secs,
        rounds.len(),
        rounds.len() as f64 / secs,
        pct(&rounds, 0.5),
        pct(&rounds, 0.99),
        pct(&ops, 0.5),
        pct(&ops, 0.99),
        rss(&nodes[0]).await
    );
    Ok(())
}

/// What one fan-out receiver saw.
#[derive(Default)]
struct FanStats {
    /// Milliseconds from each broadcast's `sent_at` to the return of the receive that got it.
    lat: Vec<f64>,
    /// Acks the server refused (stale receipts).
    refused: u64,
}

/// `--broadcast-agents` receivers long-polling channel `all` (they ack what they get) while
/// one more agent broadcasts on it every 100 ms for `--fanout-secs`; prints deliveries and the
/// latency from each broadcast's `sent_at` to its receive's return (p50/p99/max).
async fn broadcast_fanout(a: &BenchArgs, nodes: &[Client], prefix: &str) -> Result<(), String> {
    let n = a.broadcast_agents;
    if n == 0 {
        return Err("--broadcast-agents must be at least 1".into());
    }
    let caster = format!("{prefix}-caster");
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-b{i}")).collect();
    // Every receiver's inbox exists, on channel `all` at its head, before the first broadcast.
    let setup = names.clone();
    each_agent(nodes, n, |i, c| {
        let agent = setup[i].clone();
        async move {
            c.set_channels(&agent, &[DEFAULT_CHANNEL.to_string()])
                .await
                .map(|_| ())
                .map_err(|e| message_error(&format!("channels of {agent}"), &e))
        }
    })
    .await?;
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut receivers = tokio::task::JoinSet::new();
    for (i, me) in names.into_iter().enumerate() {
        let c = nodes[i % nodes.len()].clone();
        let (caster, stop, delivered) = (caster.clone(), stop.clone(), delivered.clone());
        receivers.spawn(async move {
            let mut s = FanStats::default();
            let receive =
                ReceiveBody { max: Some(100), wait_ms: Some(RECEIVE_WAIT_MS), ..Default::default() };
            while !stop.load(Ordering::Relaxed) {
                let got = c
                    .receive(&me, &receive)
                    .await
                    .map_err(|e| message_error(&format!("receive of {me}"), &e))?;
                let now_ms = now_us() as f64 / 1000.0;
                if got.is_empty() {
                    continue;
                }
                for m in &got {
                    if m.from == caster && m.delivery_count == 1 {
                        s.lat.push(now_ms - m.sent_at.0 as f64);
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let receipts: Vec<String> = got.into_iter().map(|m| m.receipt).collect();
                let results =
                    c.ack(&me, &receipts).await.map_err(|e| message_error(&format!("ack of {me}"), &e))?;
                s.refused += results.iter().filter(|r| !r.ok).count() as u64;
            }
            Ok::<_, String>(s)
        });
    }
    // Let the receivers get into their long-polls.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let secs = a.fanout_secs.max(1);
    let client = &nodes[0];
    let mut tick = tokio::time::interval(Duration::from_millis(BROADCAST_EVERY_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let t0 = Instant::now();
    let (mut sent, mut failure) = (0u64, None);
    while t0.elapsed() < Duration::from_secs(secs) {
        tick.tick().await;
        let b = BroadcastBody {
            channel: Some(DEFAULT_CHANNEL.to_string()),
            from: caster.clone(),
            body: serde_json::value::to_raw_value(&sent).expect("json"),
            ttl_ms: Some(BENCH_MESSAGE_TTL_MS),
        };
        match client.broadcast(&b).await {
            Ok(_) => sent += 1,
            Err(e) => {
                failure = Some(message_error(&format!("broadcast from {caster}"), &e));
                break;
            }
        }
    }
    let expected = sent * n as u64;
    let grace = Instant::now() + FANOUT_GRACE;
    while failure.is_none() && delivered.load(Ordering::Relaxed) < expected && Instant::now() < grace {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let (mut lat, mut refused) = (Vec::with_capacity(expected as usize), 0u64);
    while let Some(r) = receivers.join_next().await {
        match r.expect("receiver task") {
            Ok(s) => {
                lat.extend(s.lat);
                refused += s.refused;
            }
            Err(e) => {
                if failure.is_none() {
                    failure = Some(e);
                }
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    lat.sort_by(f64::total_cmp);
    println!(
        "messages  fan-out: {n} receivers long-polling channel {DEFAULT_CHANNEL}, one broadcast every \
         {BROADCAST_EVERY_MS} ms for {secs} s ({sent} broadcasts): {} of {expected} deliveries, latency \
         (sent_at to receive) p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {refused} acks refused; server memory {}",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        rss(client).await
    );
    if (lat.len() as u64) < expected {
        return Err(format!(
            "{} of {expected} broadcast deliveries did not arrive within {} s of the last broadcast",
            expected - lat.len() as u64,
            FANOUT_GRACE.as_secs()
        ));
    }
    Ok(())
}
