//! The client commands: each builds one or more API calls through `ferry-client` and prints a
//! table (or JSON with `--json`). Errors print the server's message and exit 1.

use crate::ClientOpts;
use clap::{Args, Subcommand};
use ferry_client::{Client, ClientError};
use ferry_core::validate::JobSpec;
use ferry_core::wire::DlqSelectorBody;
use ferry_core::{Job, time::format_ms};
use serde::Serialize;
use serde_json::value::RawValue;
use std::io::{BufRead, IsTerminal, Read};
use std::path::PathBuf;

/// Prints a failure and returns the exit code.
pub(crate) fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("ferry: {e}");
    1
}

pub(crate) fn print_json<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

/// Prints rows under headers with columns padded to their widest cell.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn job_row(j: &Job) -> Vec<String> {
    vec![
        j.id.to_string(),
        j.queue.clone(),
        j.state.to_string(),
        j.priority.to_string(),
        format!("{}/{}", j.attempt, j.max_attempts),
        format_ms(j.run_at.0),
    ]
}

const JOB_HEADERS: [&str; 6] = ["id", "queue", "state", "priority", "attempts", "run_at"];

/// `ferry enqueue`.
#[derive(Args, Debug)]
pub struct EnqueueArgs {
    /// Queue name (required unless --batch lines carry their own).
    pub queue: Option<String>,
    /// JSON payload; `-` or absent reads --file or stdin.
    pub payload: Option<String>,
    /// Read the payload (or, with --batch, the lines) from this file.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Read JSON lines: each a job object, or (with a queue argument) a payload.
    #[arg(long)]
    pub batch: bool,
    /// Jobs per request with --batch.
    #[arg(long, default_value_t = 1000)]
    pub chunk: usize,
    /// Higher runs first.
    #[arg(long)]
    pub priority: Option<i64>,
    /// Run after this many milliseconds.
    #[arg(long)]
    pub delay_ms: Option<i64>,
    /// Run at this RFC 3339 time.
    #[arg(long)]
    pub run_at: Option<String>,
    /// Attempts before the job is dead.
    #[arg(long)]
    pub max_attempts: Option<i64>,
    /// Lease length per claim.
    #[arg(long)]
    pub lease_ms: Option<i64>,
    /// Deduplication key.
    #[arg(long)]
    pub unique_key: Option<String>,
    /// A tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// A job id this job waits for (repeatable).
    #[arg(long = "depends-on")]
    pub depends_on: Vec<String>,
    #[command(flatten)]
    pub client: ClientOpts,
}

fn read_input(file: &Option<PathBuf>) -> Result<String, String> {
    match file {
        Some(p) => std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display())),
        None => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).map_err(|e| format!("cannot read stdin: {e}"))?;
            Ok(s)
        }
    }
}

fn raw(text: &str, what: &str) -> Result<Box<RawValue>, String> {
    RawValue::from_string(text.trim().to_string()).map_err(|e| format!("{what} is not valid JSON: {e}"))
}

/// Runs `ferry enqueue`.
pub async fn enqueue(a: EnqueueArgs) -> i32 {
    let client = a.client.client();
    if a.batch {
        return enqueue_batch(&client, &a).await;
    }
    let Some(queue) = a.queue.clone() else { return fail("a queue name is required") };
    let text = match a.payload.as_deref() {
        Some("-") | None if a.file.is_some() || !std::io::stdin().is_terminal() => {
            match read_input(&a.file) {
                Ok(t) => t,
                Err(e) => return fail(e),
            }
        }
        Some(p) => p.to_string(),
        None => "null".to_string(),
    };
    let payload = match raw(if text.trim().is_empty() { "null" } else { &text }, "the payload") {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let spec = JobSpec {
        queue,
        payload: Some(payload),
        priority: a.priority,
        run_at: a.run_at.clone(),
        delay_ms: a.delay_ms,
        max_attempts: a.max_attempts,
        backoff: None,
        lease_ms: a.lease_ms,
        unique_key: a.unique_key.clone(),
        depends_on: (!a.depends_on.is_empty()).then(|| a.depends_on.clone()),
        tags: (!a.tags.is_empty()).then(|| a.tags.clone()),
    };
    match client.enqueue(&spec).await {
        Ok(r) if a.client.json => {
            print_json(&r);
            0
        }
        Ok(r) => {
            println!("{}{}", r.id, if r.duplicate { " (duplicate)" } else { "" });
            0
        }
        Err(e) => fail(e),
    }
}

async fn enqueue_batch(client: &Client, a: &EnqueueArgs) -> i32 {
    let reader: Box<dyn BufRead> = match &a.file {
        Some(p) => match std::fs::File::open(p) {
            Ok(f) => Box::new(std::io::BufReader::new(f)),
            Err(e) => return fail(format!("cannot read {}: {e}", p.display())),
        },
        None => Box::new(std::io::BufReader::new(std::io::stdin())),
    };
    let total_bytes = a.file.as_ref().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len());
    let bar = match total_bytes {
        Some(n) if n > 1 << 20 && std::io::stderr().is_terminal() => {
            let b = indicatif::ProgressBar::new(n);
            b.set_style(
                indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {per_sec} eta {eta}")
                    .expect("template"),
            );
            Some(b)
        }
        _ => None,
    };
    let chunk = a.chunk.clamp(1, 10_000);
    let mut pending: Vec<JobSpec> = Vec::with_capacity(chunk);
    let (mut sent, mut dups) = (0usize, 0usize);
    let flush =
        async |pending: &mut Vec<JobSpec>, sent: &mut usize, dups: &mut usize| -> Result<(), ClientError> {
            if pending.is_empty() {
                return Ok(());
            }
            let r = client.enqueue_batch(pending).await?;
            *sent += r.ids.len();
            *dups += r.duplicates.len();
            pending.clear();
            Ok(())
        };
    for (n, line) in reader.lines().enumerate() {
        let line = match line {
            Ok(l) => l,
            Err(e) => return fail(format!("cannot read line {}: {e}", n + 1)),
        };
        if let Some(b) = &bar {
            b.inc(line.len() as u64 + 1);
        }
        if line.trim().is_empty() {
            continue;
        }
        let spec = match &a.queue {
            Some(q) => match raw(&line, &format!("line {}", n + 1)) {
                Ok(p) => JobSpec { queue: q.clone(), payload: Some(p), ..Default::default() },
                Err(e) => return fail(e),
            },
            None => match serde_json::from_str::<JobSpec>(&line) {
                Ok(s) => s,
                Err(e) => return fail(format!("line {} is not a job object: {e}", n + 1)),
            },
        };
        pending.push(spec);
        if pending.len() == chunk
            && let Err(e) = flush(&mut pending, &mut sent, &mut dups).await
        {
            return fail(format!("{e} (after {sent} jobs were enqueued)"));
        }
    }
    if let Err(e) = flush(&mut pending, &mut sent, &mut dups).await {
        return fail(format!("{e} (after {sent} jobs were enqueued)"));
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if a.client.json {
        print_json(&serde_json::json!({"enqueued": sent, "duplicates": dups}));
    } else {
        println!("enqueued {sent} jobs ({dups} duplicates)");
    }
    0
}

/// `ferry jobs ...`.
#[derive(Subcommand, Debug)]
pub enum JobsCmd {
    /// Show one job with its error history.
    Show {
        /// Job id.
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List jobs, oldest first.
    List {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only this state.
        #[arg(long)]
        state: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Continue from a previous page's cursor.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Cancel a job that is not running.
    Cancel {
        /// Job id.
        id: String,
        /// Why (kept on the job).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Runs `ferry jobs`.
pub async fn jobs(cmd: JobsCmd) -> i32 {
    match cmd {
        JobsCmd::Show { id, client: o } => match o.client().get_job(&id).await {
            Ok(j) if o.json => {
                print_json(&j);
                0
            }
            Ok(j) => {
                show_job(&j);
                0
            }
            Err(e) => fail(e),
        },
        JobsCmd::List { queue, state, limit, cursor, client: o } => {
            let c = o.client();
            match c.list_jobs(queue.as_deref(), state.as_deref(), Some(limit), cursor.as_deref()).await {
                Ok(p) if o.json => {
                    print_json(&p);
                    0
                }
                Ok(p) => {
                    table(&JOB_HEADERS, &p.jobs.iter().map(job_row).collect::<Vec<_>>());
                    if let Some(c) = p.next_cursor {
                        println!("more: --cursor {c}");
                    }
                    0
                }
                Err(e) => fail(e),
            }
        }
        JobsCmd::Cancel { id, reason, client: o } => match o.client().cancel(&id, reason.as_deref()).await {
            Ok(r) if o.json => {
                print_json(&r);
                0
            }
            Ok(r) => {
                println!("{} {}", r.id, r.state);
                0
            }
            Err(e) => fail(e),
        },
    }
}

fn show_job(j: &Job) {
    let opt = |t: Option<ferry_core::Timestamp>| t.map(|t| format_ms(t.0)).unwrap_or_else(|| "-".into());
    let rows = [
        ("id", j.id.to_string()),
        ("queue", j.queue.clone()),
        ("state", j.state.to_string()),
        ("priority", j.priority.to_string()),
        ("attempts", format!("{}/{}", j.attempt, j.max_attempts)),
        ("run_at", format_ms(j.run_at.0)),
        ("created_at", format_ms(j.created_at.0)),
        ("started_at", opt(j.started_at)),
        ("finished_at", opt(j.finished_at)),
        ("lease_expires_at", opt(j.lease_expires_at)),
        ("worker", j.worker.clone().unwrap_or_else(|| "-".into())),
        ("tags", j.tags.join(",")),
        ("unique_key", j.unique_key.clone().unwrap_or_else(|| "-".into())),
        ("payload", j.payload.get().to_string()),
        ("result", j.result.as_ref().map(|r| r.get().to_string()).unwrap_or_else(|| "-".into())),
        ("cancel_reason", j.cancel_reason.clone().unwrap_or_else(|| "-".into())),
    ];
    for (k, v) in rows {
        println!("{k:<17}{v}");
    }
    if !j.errors.is_empty() {
        println!("errors:");
        let rows: Vec<Vec<String>> = j
            .errors
            .iter()
            .map(|e| {
                vec![
                    e.attempt.to_string(),
                    format_ms(e.at.0),
                    e.worker.clone().unwrap_or_default(),
                    e.kind.clone(),
                    e.message.clone(),
                ]
            })
            .collect();
        table(&["attempt", "at", "worker", "kind", "message"], &rows);
    }
}

/// Which dead jobs: `--id` (repeatable) or `--queue`.
#[derive(Args, Debug)]
pub struct DlqSelect {
    /// A dead job's id (repeatable).
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// Every dead job of this queue.
    #[arg(long)]
    pub queue: Option<String>,
}

impl DlqSelect {
    fn body(self) -> DlqSelectorBody {
        DlqSelectorBody { ids: (!self.ids.is_empty()).then_some(self.ids), queue: self.queue }
    }
}

/// `ferry dlq ...`.
#[derive(Subcommand, Debug)]
pub enum DlqCmd {
    /// List dead jobs.
    List {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Continue from a previous page's cursor.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Return dead jobs to ready (attempts reset, history kept).
    Replay {
        #[command(flatten)]
        select: DlqSelect,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Delete dead jobs.
    Purge {
        #[command(flatten)]
        select: DlqSelect,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Runs `ferry dlq`.
pub async fn dlq(cmd: DlqCmd) -> i32 {
    match cmd {
        DlqCmd::List { queue, limit, cursor, client: o } => {
            match o.client().dlq(queue.as_deref(), Some(limit), cursor.as_deref()).await {
                Ok(p) if o.json => {
                    print_json(&p);
                    0
                }
                Ok(p) => {
                    let rows: Vec<Vec<String>> = p
                        .jobs
                        .iter()
                        .map(|j| {
                            let mut r = job_row(j);
                            r.push(j.errors.last().map(|e| e.message.clone()).unwrap_or_default());
                            r
                        })
                        .collect();
                    table(&["id", "queue", "state", "priority", "attempts", "run_at", "last error"], &rows);
                    if let Some(c) = p.next_cursor {
                        println!("more: --cursor {c}");
                    }
                    0
                }
                Err(e) => fail(e),
            }
        }
        DlqCmd::Replay { select, client: o } => match o.client().dlq_replay(&select.body()).await {
            Ok(r) if o.json => {
                print_json(&r);
                0
            }
            Ok(r) => {
                println!("replayed {} jobs", r.replayed);
                0
            }
            Err(e) => fail(e),
        },
        DlqCmd::Purge { select, client: o } => match o.client().dlq_purge(&select.body()).await {
            Ok(r) if o.json => {
                print_json(&r);
                0
            }
            Ok(r) => {
                println!("purged {} jobs", r.purged);
                0
            }
            Err(e) => fail(e),
        },
    }
}

/// `ferry queues ...`.
#[derive(Subcommand, Debug)]
pub enum QueuesCmd {
    /// Every queue with its counts by state.
    List {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Pause a queue (claims return nothing).
    Pause {
        /// Queue name.
        queue: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Resume a paused queue.
    Resume {
        /// Queue name.
        queue: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Set a queue's flow limits (unset ones are cleared); with none given, show them.
    Limit {
        /// Queue name.
        queue: String,
        /// Most jobs running at once across all workers and nodes.
        #[arg(long)]
        max_running: Option<u32>,
        /// Most job starts per second across all nodes.
        #[arg(long)]
        max_starts_per_sec: Option<f64>,
        /// Most ready + scheduled jobs before enqueues get 429.
        #[arg(long)]
        max_depth: Option<u64>,
        /// Clear every limit.
        #[arg(long)]
        clear: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Runs `ferry queues`.
pub async fn queues(cmd: QueuesCmd) -> i32 {
    match cmd {
        QueuesCmd::List { client: o } => match o.client().queues().await {
            Ok(r) if o.json => {
                print_json(&r);
                0
            }
            Ok(r) => {
                use ferry_core::JobState::*;
                let rows: Vec<Vec<String>> = r
                    .queues
                    .iter()
                    .map(|q| {
                        let mut row = vec![q.queue.clone()];
                        for st in [Ready, Scheduled, Waiting, Running, Completed, Dead, Cancelled] {
                            row.push(q.counts.get(&st).copied().unwrap_or(0).to_string());
                        }
                        row.push(
                            q.oldest_ready_age_ms
                                .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
                                .unwrap_or("-".into()),
                        );
                        row.push(if q.paused { "yes".into() } else { "no".into() });
                        row
                    })
                    .collect();
                table(
                    &[
                        "queue",
                        "ready",
                        "scheduled",
                        "waiting",
                        "running",
                        "completed",
                        "dead",
                        "cancelled",
                        "oldest ready",
                        "paused",
                    ],
                    &rows,
                );
                0
            }
            Err(e) => fail(e),
        },
        QueuesCmd::Pause { queue, client: o } => pause(&o, &queue, true).await,
        QueuesCmd::Resume { queue, client: o } => pause(&o, &queue, false).await,
        QueuesCmd::Limit { queue, max_running, max_starts_per_sec, max_depth, clear, client: o } => {
            let path = format!("/v1/queues/{queue}/limits");
            let none = max_running.is_none() && max_starts_per_sec.is_none() && max_depth.is_none();
            let r = if none && !clear {
                o.client().call_json(ferry_client::Method::GET, &path, None).await
            } else {
                let body = serde_json::json!({
                    "max_running": max_running, "max_starts_per_sec": max_starts_per_sec, "max_depth": max_depth
                });
                o.client().call_json(ferry_client::Method::PUT, &path, Some(&body)).await
            };
            match r {
                Ok(v) => {
                    print_json(&v);
                    0
                }
                Err(e) => fail(e),
            }
        }
    }
}

async fn pause(o: &ClientOpts, queue: &str, paused: bool) -> i32 {
    let c = o.client();
    let r = if paused { c.pause(queue).await } else { c.resume(queue).await };
    match r {
        Ok(r) if o.json => {
            print_json(&r);
            0
        }
        Ok(r) => {
            println!("{} {}", r.queue, if r.paused { "paused" } else { "resumed" });
            0
        }
        Err(e) => fail(e),
    }
}
