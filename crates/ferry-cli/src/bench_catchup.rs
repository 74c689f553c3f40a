//! `ferry bench catchup`: how fast a reader that fell behind catches up with the stored event
//! log, what each such reader costs the server in memory, and what ten of them cost the job
//! flow beside them.
//!
//! 1. fill: `--catchup-events` events (jobs enqueued and worked, three events each) after the
//!    log's head at the start;
//! 2. replay those events to one reader from the head at the start, over long-poll (pages of
//!    `--catchup-page`), SSE and WebSocket, each reading every event (decoded by the SDK);
//! 3. `--catchup-readers` readers (the three transports in turn) replaying at once: the
//!    server's RSS growth per reader (peak during the replay over the RSS before it);
//! 4. the end-to-end phase (`--jobs`) alone, beside those readers replaying in a loop, and
//!    alone again: the ratio of its rate beside them to the mean of the two alone.
//!
//! RSS is the server's own figure (`GET /v1/server`), sampled every 100 ms.

use crate::bench::{BenchArgs, jobs_end_to_end};
use ferry_client::{Client, ClientError, EventSocket, EventStream};
use ferry_core::wire::{EventQuery, Notice, StreamMessage};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The three ways to read events.
#[derive(Clone, Copy, Debug)]
enum Transport {
    LongPoll,
    Sse,
    WebSocket,
}

impl Transport {
    const ALL: [Transport; 3] = [Transport::LongPoll, Transport::Sse, Transport::WebSocket];

    fn name(self) -> &'static str {
        match self {
            Transport::LongPoll => "long-poll",
            Transport::Sse => "SSE",
            Transport::WebSocket => "WebSocket",
        }
    }
}

/// What a reader replays: the events after `from` up to `to`, then again from `from` while
/// `again` holds.
#[derive(Clone)]
struct Replay {
    from: u64,
    to: u64,
    page: usize,
    again: Option<Arc<AtomicBool>>,
    /// Events read, by every reader sharing this counter.
    read: Arc<AtomicU64>,
}

fn failed(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// `n` readers of `r`, spread over the nodes, the three transports in turn.
fn spawn_readers(nodes: &[Client], n: usize, r: &Replay) -> tokio::task::JoinSet<Result<(), String>> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        set.spawn(reader(nodes[i % nodes.len()].clone(), Transport::ALL[i % 3], r.clone()));
    }
    set
}

/// Reads `r.from`..=`r.to` once (or in a loop), counting every event.
async fn reader(c: Client, t: Transport, r: Replay) -> Result<(), String> {
    loop {
        match t {
            Transport::LongPoll => long_poll(&c, &r).await?,
            Transport::Sse => sse(&c, &r).await?,
            Transport::WebSocket => socket(&c, &r).await?,
        }
        if !r.again.as_ref().is_some_and(|a| a.load(Ordering::Relaxed)) {
            return Ok(());
        }
    }
}

async fn long_poll(c: &Client, r: &Replay) -> Result<(), String> {
    let mut since = r.from;
    let limit = [("limit", r.page.to_string())];
    while since < r.to {
        let page = c.events(Some(since), 0, &limit).await.map_err(|e| failed("long-poll", e))?;
        let n = page.events.iter().filter(|e| e.cursor <= r.to).count();
        r.read.fetch_add(n as u64, Ordering::Relaxed);
        if page.next_cursor <= since {
            return Err(format!(
                "long-poll: no progress after cursor {since} (the log ends before {})",
                r.to
            ));
        }
        since = page.next_cursor;
    }
    Ok(())
}

async fn sse(c: &Client, r: &Replay) -> Result<(), String> {
    let q = EventQuery { since: Some(r.from.to_string()), ..Default::default() };
    let s = c.event_stream(&q, None).await.map_err(|e| failed("SSE", e))?;
    count_stream(r, Stream::Sse(s)).await.map_err(|e| failed("SSE", e))
}

async fn socket(c: &Client, r: &Replay) -> Result<(), String> {
    let q = EventQuery { since: Some(r.from.to_string()), ..Default::default() };
    let mut ws = c.event_socket(&q).await.map_err(|e| failed("WebSocket", e))?;
    ws.subscribe(&["*"]).await.map_err(|e| failed("WebSocket", e))?;
    count_stream(r, Stream::Ws(ws)).await.map_err(|e| failed("WebSocket", e))
}

/// Either live stream, read the same way.
enum Stream {
    Sse(EventStream),
    Ws(EventSocket),
}

impl Stream {
    async fn next(&mut self) -> Option<Result<StreamMessage, ClientError>> {
        match self {
            Stream::Sse(s) => s.next().await,
            Stream::Ws(s) => s.next().await,
        }
    }
}

/// Counts the events of a stream until `r.to` (or one past it) arrives, then closes it.
async fn count_stream(r: &Replay, mut s: Stream) -> Result<(), String> {
    let out = loop {
        match s.next().await {
            Some(Ok(StreamMessage::Event(e))) => {
                if e.cursor > r.to {
                    break Ok(());
                }
                r.read.fetch_add(1, Ordering::Relaxed);
                if e.cursor == r.to {
                    break Ok(());
                }
            }
            Some(Ok(StreamMessage::Notice(Notice::Subscribed { .. }))) => {}
            Some(Ok(StreamMessage::Notice(n))) => break Err(format!("the server ended the stream: {n:?}")),
            Some(Err(e)) => break Err(e.to_string()),
            None => break Err("the stream ended early".into()),
        }
    };
    if let Stream::Ws(ws) = s {
        ws.close().await;
    }
    out
}

/// The server's RSS in bytes, sampled until stopped; yields the peak.
struct RssPeak {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl RssPeak {
    fn start(c: Client) -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_bytes(&c).await);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak.max(rss_bytes(&c).await)
        });
        RssPeak { stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(0)
    }
}

async fn rss_bytes(c: &Client) -> u64 {
    c.server_info().await.ok().and_then(|i| i.rss_bytes).unwrap_or(0)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

/// The log's head now: where a reader that starts from now on begins.
async fn head(c: &Client) -> Result<u64, ClientError> {
    Ok(c.events(None, 0, &[("limit", "1".to_string())]).await?.next_cursor)
}

/// Runs the catch-up phase; one line per figure.
pub(crate) async fn catchup(a: &BenchArgs, nodes: &[Client], run_id: &str) -> Result<(), ()> {
    run(a, nodes, run_id).await.map_err(|e| eprintln!("ferry: catchup: {e}"))
}

async fn run(a: &BenchArgs, nodes: &[Client], run_id: &str) -> Result<(), String> {
    let c = nodes[0].clone();
    let events = a.catchup_events.max(1);
    let from = head(&c).await.map_err(|e| failed("reading the head", e))?;
    // Three events a job (enqueued, started, completed); a second round covers any shortfall.
    let t = Instant::now();
    let mut round = 0;
    loop {
        let now = head(&c).await.map_err(|e| failed("reading the head", e))?;
        if now >= from + events {
            break;
        }
        let jobs = ((from + events - now) as usize).div_ceil(3);
        jobs_end_to_end(a, nodes, &format!("bench-catchup-{run_id}-{round}"), None, jobs)
            .await
            .map_err(|e| failed("filling the log", e))?;
        round += 1;
    }
    let to = from + events;
    println!(
        "catchup   filled {events} events (cursors {}..={to}) in {:.1} s; server memory {:.0} MiB",
        from + 1,
        t.elapsed().as_secs_f64(),
        mib(rss_bytes(&c).await)
    );
    let replay = |again: Option<Arc<AtomicBool>>| Replay {
        from,
        to,
        page: a.catchup_page,
        again,
        read: Arc::new(AtomicU64::new(0)),
    };
    for t in Transport::ALL {
        let r = replay(None);
        let before = rss_bytes(&c).await;
        let peak = RssPeak::start(c.clone());
        let t0 = Instant::now();
        reader(c.clone(), t, r.clone()).await?;
        let secs = t0.elapsed().as_secs_f64();
        let peak = peak.finish().await;
        let read = r.read.load(Ordering::Relaxed);
        if read != events {
            return Err(format!("{}: read {read} events, expected {events}", t.name()));
        }
        println!(
            "catchup   one reader, {:<9} {} events: {:.0} events/s; server RSS {:.0} -> peak {:.0} MiB (+{:.1})",
            t.name(),
            read,
            read as f64 / secs,
            mib(before),
            mib(peak),
            mib(peak.saturating_sub(before))
        );
    }
    let n = a.catchup_readers.max(1);
    let r = replay(None);
    let before = rss_bytes(&c).await;
    let peak = RssPeak::start(c.clone());
    let t0 = Instant::now();
    let mut set = spawn_readers(nodes, n, &r);
    while let Some(res) = set.join_next().await {
        res.map_err(|e| failed("reader task", e))??;
    }
    let secs = t0.elapsed().as_secs_f64();
    let peak = peak.finish().await;
    println!(
        "catchup   {n} readers at once (long-poll, SSE, WebSocket in turn): {:.0} events/s in all; server RSS {:.0} -> peak {:.0} MiB, +{:.1} MiB per reader",
        r.read.load(Ordering::Relaxed) as f64 / secs,
        mib(before),
        mib(peak),
        mib(peak.saturating_sub(before)) / n as f64
    );
    beside_e2e(a, nodes, run_id, n, replay(Some(Arc::new(AtomicBool::new(true))))).await
}

/// The end-to-end rate alone, beside `n` looping readers, and alone again.
async fn beside_e2e(
    a: &BenchArgs,
    nodes: &[Client],
    run_id: &str,
    n: usize,
    r: Replay,
) -> Result<(), String> {
    let e2e = |i: usize| {
        let queue = format!("bench-catchup-e2e-{run_id}-{i}");
        async move { jobs_end_to_end(a, nodes, &queue, None, a.jobs).await.map_err(|e| failed("e2e", e)) }
    };
    let alone_before = e2e(0).await?;
    let again = r.again.clone().expect("looping readers");
    let mut set = spawn_readers(nodes, n, &r);
    // Let every reader be mid-replay before the jobs start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let read0 = r.read.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let beside = e2e(1).await;
    let read = r.read.load(Ordering::Relaxed) - read0;
    let secs = t0.elapsed().as_secs_f64();
    again.store(false, Ordering::Relaxed);
    while let Some(res) = set.join_next().await {
        res.map_err(|e| failed("reader task", e))??;
    }
    let beside = beside?;
    let alone_after = e2e(2).await?;
    let alone = (alone_before + alone_after) / 2.0;
    println!(
        "catchup   e2e {} jobs alone: {alone_before:.0}, then {alone_after:.0} jobs/s; beside {n} replaying readers ({:.0} events/s in all): {beside:.0} jobs/s = {:.0}% of alone",
        a.jobs,
        read as f64 / secs,
        100.0 * beside / alone
    );
    Ok(())
}
