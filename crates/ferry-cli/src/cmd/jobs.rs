//! `ferry enqueue` (one job, or JSON lines with `--batch`) and `ferry jobs` (show, list,
//! cancel).

use crate::ClientOpts;
use crate::output::{fail, print_json, show, table};
use clap::{Args, Subcommand};
use ferry_client::{Client, ClientError};
use ferry_core::validate::JobSpec;
use ferry_core::wire::PaymentSpec;
use ferry_core::{Job, time::format_ms};
use serde_json::value::RawValue;
use std::io::{BufRead, IsTerminal, Read};
use std::path::PathBuf;

/// A job as one table row, under [`JOB_HEADERS`].
pub fn job_row(j: &Job) -> Vec<String> {
    vec![
        j.id.to_string(),
        j.queue.clone(),
        j.state.to_string(),
        j.priority.to_string(),
        format!("{}/{}", j.attempt, j.max_attempts),
        format_ms(j.run_at.0),
    ]
}

/// Headers of a job table.
pub const JOB_HEADERS: [&str; 6] = ["id", "queue", "state", "priority", "attempts", "run_at"];

/// Prints where the next page starts, when there is one.
pub fn more(next_cursor: Option<String>) {
    if let Some(c) = next_cursor {
        println!("more: --cursor {c}");
    }
}

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
    /// Run deadline per attempt: workers cancel and retry a handler still running after it.
    #[arg(long)]
    pub timeout_ms: Option<i64>,
    /// Deduplication key.
    #[arg(long)]
    pub unique_key: Option<String>,
    /// A tag (repeatable).
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// A job id this job waits for (repeatable).
    #[arg(long = "depends-on")]
    pub depends_on: Vec<String>,
    /// Pay for the job from this ledger account: the amount is held when it is enqueued and
    /// paid to the worker that completes it (needs --pay-amount; with --batch, every line
    /// without its own payment).
    #[arg(long, requires = "pay_amount")]
    pub pay_from: Option<String>,
    /// The amount held, then paid (needs --pay-from).
    #[arg(long, requires = "pay_from")]
    pub pay_amount: Option<i64>,
    #[command(flatten)]
    pub client: ClientOpts,
}

impl EnqueueArgs {
    /// `payment` of the jobs, from --pay-from and --pay-amount (clap requires both or neither).
    fn payment(&self) -> Option<PaymentSpec> {
        let (from, amount) = self.pay_from.clone().zip(self.pay_amount)?;
        Some(PaymentSpec { from, amount, ..PaymentSpec::default() })
    }
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
        timeout_ms: a.timeout_ms,
        unique_key: a.unique_key.clone(),
        depends_on: (!a.depends_on.is_empty()).then(|| a.depends_on.clone()),
        tags: (!a.tags.is_empty()).then(|| a.tags.clone()),
        payment: a.payment(),
    };
    show(a.client.json, client.enqueue(&spec).await, |r| {
        println!("{}{}", r.id, if r.duplicate { " (duplicate)" } else { "" })
    })
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
    let payment = a.payment();
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
        let mut spec = match &a.queue {
            Some(q) => match raw(&line, &format!("line {}", n + 1)) {
                Ok(p) => JobSpec { queue: q.clone(), payload: Some(p), ..Default::default() },
                Err(e) => return fail(e),
            },
            None => match serde_json::from_str::<JobSpec>(&line) {
                Ok(s) => s,
                Err(e) => return fail(format!("line {} is not a job object: {e}", n + 1)),
            },
        };
        if spec.payment.is_none() {
            spec.payment = payment.clone();
        }
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
    #[command(after_help = "Example: ferry jobs list --queue emails --state dead")]
    List {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only this state.
        #[arg(long, value_parser = JOB_STATES)]
        state: Option<String>,
        #[command(flatten)]
        page: crate::PageArgs,
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

/// The job states `--state` takes (`JobState::ALL`'s names), listed by `--help`.
pub const JOB_STATES: [&str; 8] =
    ["scheduled", "waiting", "held", "ready", "running", "completed", "dead", "cancelled"];

/// Runs `ferry jobs`.
pub async fn jobs(cmd: JobsCmd) -> i32 {
    match cmd {
        JobsCmd::Show { id, client: o } => show(o.json, o.client().get_job(&id).await, |j| show_job(&j)),
        JobsCmd::List { queue, state, page: crate::PageArgs { limit, cursor }, client: o } => {
            let r = o
                .client()
                .list_jobs(queue.as_deref(), state.as_deref(), Some(limit), cursor.as_deref())
                .await;
            show(o.json, r, |p| {
                table(&JOB_HEADERS, &p.jobs.iter().map(job_row).collect::<Vec<_>>());
                more(p.next_cursor);
            })
        }
        JobsCmd::Cancel { id, reason, client: o } => {
            show(o.json, o.client().cancel(&id, reason.as_deref()).await, |r| {
                println!("{} {}", r.id, r.state)
            })
        }
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
