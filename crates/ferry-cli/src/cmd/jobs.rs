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
    /// With --batch, skip this many input lines first: resumes a run that stopped, from the
    /// line count it printed.
    #[arg(long, default_value_t = 0, requires = "batch")]
    pub skip: usize,
    /// With --batch, use this payload field as each job's unique key, so that a re-run
    /// enqueues nothing twice while the first run's jobs are unfinished.
    #[arg(long, requires = "batch")]
    pub unique_key_field: Option<String>,
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

/// Where a `--batch` run stands: what is committed, by input line, so that a failure can say
/// how to resume.
struct BatchRun {
    /// Jobs acknowledged by the server (duplicates included).
    sent: usize,
    /// Of those, duplicates of unfinished jobs with the same unique key.
    dups: usize,
    /// Input lines (counted from the first, skipped ones included) through which every job is
    /// committed: what `--skip` takes to resume.
    committed_lines: usize,
    /// Jobs read and not yet sent, with their input line numbers.
    pending: Vec<(usize, JobSpec)>,
}

impl BatchRun {
    /// Why the run stopped, what was committed, and how to resume.
    fn stopped(&self, why: String, a: &EnqueueArgs) -> i32 {
        let skip = self.committed_lines;
        let idempotent = match &a.unique_key_field {
            Some(_) => {
                "; re-running with the same --unique-key-field enqueues nothing twice while those jobs are unfinished"
            }
            None => ", or add --unique-key-field FIELD so that a re-run skips jobs already enqueued",
        };
        fail(format!(
            "{why}\n{} jobs were committed ({} duplicates), from input lines 1-{skip}; nothing after line {skip} was. \
             Fix the input and resume with --skip {skip}{idempotent}",
            self.sent, self.dups
        ))
    }
}

/// Input lines in `path`, for the progress bar's length (None for stdin).
fn count_lines(path: Option<&PathBuf>) -> Option<u64> {
    let f = std::fs::File::open(path?).ok()?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, f);
    let mut n = 0u64;
    loop {
        let buf = r.fill_buf().ok()?;
        if buf.is_empty() {
            return Some(n);
        }
        n += buf.iter().filter(|b| **b == b'\n').count() as u64;
        let len = buf.len();
        r.consume(len);
    }
}

/// A bar counting jobs with a whole-number rate (a spinner when the total is unknown).
fn jobs_bar(total: Option<u64>) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let rate = |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{:.0} jobs/s", s.per_sec());
    };
    let (bar, template) = match total {
        Some(n) => {
            (indicatif::ProgressBar::new(n), "{bar:40} {human_pos}/{human_len} lines  {rate}  eta {eta}")
        }
        None => (indicatif::ProgressBar::new_spinner(), "{spinner} {human_pos} lines  {rate}"),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template).expect("template").with_key("rate", rate),
    );
    Some(bar)
}

/// The payload field named by `--unique-key-field`, as a unique key.
fn key_from(spec: &JobSpec, field: &str) -> Result<String, String> {
    let payload = spec.payload.as_ref().map_or("null", |p| p.get());
    let v: serde_json::Value = serde_json::from_str(payload).map_err(|e| e.to_string())?;
    match v.get(field) {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(n @ serde_json::Value::Number(_)) => Ok(n.to_string()),
        _ => Err(format!("its payload has no string or number field {field:?} (--unique-key-field)")),
    }
}

async fn flush(client: &Client, run: &mut BatchRun) -> Result<(), String> {
    let Some(&(last, _)) = run.pending.last() else { return Ok(()) };
    let lines: Vec<usize> = run.pending.iter().map(|(n, _)| *n).collect();
    let specs: Vec<JobSpec> = run.pending.drain(..).map(|(_, s)| s).collect();
    match client.enqueue_batch(&specs).await {
        Ok(r) => {
            run.sent += r.ids.len();
            run.dups += r.duplicates.len();
            run.committed_lines = last;
            Ok(())
        }
        Err(e) => {
            // A refused batch is refused whole; name the line of the job it points at.
            let at = match &e {
                ClientError::Api { error, .. } => error
                    .field
                    .as_deref()
                    .and_then(|f| f.strip_prefix("jobs["))
                    .and_then(|f| f.split(']').next())
                    .and_then(|i| i.parse::<usize>().ok())
                    .and_then(|i| lines.get(i)),
                _ => None,
            };
            // Without an answer the batch may have been committed all the same.
            let maybe = match &e {
                ClientError::Api { .. } => "",
                _ => {
                    " (no answer came: that batch may have been committed too; a re-run with --unique-key-field is safe)"
                }
            };
            Err(match at {
                Some(line) => format!("line {line}: {e}"),
                None => format!("lines {}-{last}: {e}{maybe}", lines[0]),
            })
        }
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
    let bar = jobs_bar(count_lines(a.file.as_ref()).map(|n| n.saturating_sub(a.skip as u64)));
    let chunk = a.chunk.clamp(1, 10_000);
    let payment = a.payment();
    let mut run = BatchRun { sent: 0, dups: 0, committed_lines: a.skip, pending: Vec::with_capacity(chunk) };
    // Line numbers count from the input's first line, skipped ones included.
    for (i, line) in reader.lines().skip(a.skip).enumerate() {
        let at = a.skip + i + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => return run.stopped(format!("cannot read line {at}: {e}"), a),
        };
        if let Some(b) = &bar {
            b.inc(1);
        }
        if line.trim().is_empty() {
            if run.pending.is_empty() {
                run.committed_lines = at;
            }
            continue;
        }
        let parsed = match &a.queue {
            Some(q) => raw(&line, &format!("line {at}")).map(|p| JobSpec {
                queue: q.clone(),
                payload: Some(p),
                ..Default::default()
            }),
            None => serde_json::from_str::<JobSpec>(&line)
                .map_err(|e| format!("line {at} is not a job object: {e}")),
        };
        let mut spec = match parsed {
            Ok(s) => s,
            Err(why) => {
                // What was read before the bad line is sent, so the resume point is that line.
                if let Err(e) = flush(client, &mut run).await {
                    return run.stopped(e, a);
                }
                return run.stopped(why, a);
            }
        };
        if spec.payment.is_none() {
            spec.payment = payment.clone();
        }
        if let (Some(field), None) = (&a.unique_key_field, &spec.unique_key) {
            match key_from(&spec, field) {
                Ok(k) => spec.unique_key = Some(k),
                Err(why) => {
                    if let Err(e) = flush(client, &mut run).await {
                        return run.stopped(e, a);
                    }
                    return run.stopped(format!("line {at}: {why}"), a);
                }
            }
        }
        run.pending.push((at, spec));
        if run.pending.len() == chunk
            && let Err(e) = flush(client, &mut run).await
        {
            return run.stopped(e, a);
        }
    }
    if let Err(e) = flush(client, &mut run).await {
        return run.stopped(e, a);
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if a.client.json {
        print_json(&serde_json::json!({"enqueued": run.sent, "duplicates": run.dups}));
    } else {
        println!("enqueued {} jobs ({} duplicates)", run.sent, run.dups);
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
