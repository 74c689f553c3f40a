//! `ferry convoys`: groups of jobs on one queue run at most `max_parallel` at a time (fixed or
//! adaptive), with one completion job: add (members as JSON lines, sent in chunks, sealed
//! last), show (long-poll its end), list, members, seal, cancel. `--json` prints the server's
//! JSON.

use crate::ClientOpts;
use crate::cmd::jobs::more;
use crate::output::{fail, show, table};
use clap::Subcommand;
use ferry_core::convoy::{Convoy, MaxParallel};
use ferry_core::time::format_ms;
use ferry_core::wire::{AdaptiveBody, ConvoyBody, MaxParallelBody, MemberSpec, MembersPage, OnCompleteSpec};
use std::io::BufRead;

/// Members per request (the server's default `limits.max_convoy_members_per_request`).
const CHUNK_MEMBERS: usize = 10_000;

/// `ferry convoys ...`.
#[derive(Subcommand, Debug)]
pub enum ConvoysCmd {
    /// Create a convoy from members in a file of JSON lines (or `-` for stdin), one member
    /// spec per line (a job spec without queue, depends_on, run_at, delay_ms); with `--to`,
    /// add them to an open convoy instead. Sent in chunks, sealed last unless `--open`.
    Add {
        /// The members' queue (not with --to).
        #[arg(long, required_unless_present = "to")]
        queue: Option<String>,
        /// The file of JSON lines, or `-` for stdin.
        #[arg(long)]
        members: String,
        /// The convoy's id [default: a new UUIDv7].
        #[arg(long)]
        id: Option<String>,
        /// A display name [default: the id].
        #[arg(long)]
        name: Option<String>,
        /// A fixed limit [server default 10000].
        #[arg(long, conflicts_with = "adaptive")]
        max_parallel: Option<i64>,
        /// An adaptive limit: MIN,MAX[,START].
        #[arg(long, value_delimiter = ',', num_args = 2..=3)]
        adaptive: Option<Vec<i64>>,
        /// The first dead member cancels the rest.
        #[arg(long)]
        fail_fast: bool,
        /// Leave it open for more members (`ferry convoys add --to ID`, then `seal`).
        #[arg(long)]
        open: bool,
        /// The completion job, a JSON job spec (with its queue).
        #[arg(long)]
        on_complete: Option<String>,
        /// Add to this open convoy instead of creating one.
        #[arg(long, conflicts_with_all = ["queue", "id", "name", "max_parallel", "adaptive", "fail_fast", "on_complete"])]
        to: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// One convoy; with --wait-ms, waits that long for it to end.
    Show {
        /// The convoy's id.
        id: String,
        /// Wait up to this long for it to end.
        #[arg(long)]
        wait_ms: Option<i64>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Convoys, oldest first.
    #[command(after_help = "Example: ferry convoys list --state open --queue render")]
    List {
        /// Only this state.
        #[arg(long, value_parser = ["open", "sealed", "completed", "failed", "cancelled"])]
        state: Option<String>,
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        #[command(flatten)]
        page: crate::PageArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// A convoy's members in the order added.
    #[command(after_help = "Example: ferry convoys members <id> --state held")]
    Members {
        /// The convoy's id.
        id: String,
        /// Only this job state.
        #[arg(long, value_parser = super::jobs::JOB_STATES)]
        state: Option<String>,
        #[command(flatten)]
        page: crate::PageArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Take no more members; it ends once none is live.
    Seal {
        /// The convoy's id.
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Cancel every member not running; it ends cancelled.
    Cancel {
        /// The convoy's id.
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Reads member specs, one JSON object per non-blank line.
fn read_members(path: &str) -> Result<Vec<MemberSpec>, String> {
    let reader: Box<dyn BufRead> = if path == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let f = std::fs::File::open(path).map_err(|e| format!("cannot open {path}: {e}"))?;
        Box::new(std::io::BufReader::new(f))
    };
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(|e| format!("cannot read {path}: {e}"))?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line).map_err(|e| format!("{path}:{}: not a member spec: {e}", i + 1))?,
        );
    }
    Ok(out)
}

fn limit(max_parallel: Option<i64>, adaptive: Option<Vec<i64>>) -> Option<MaxParallelBody> {
    match (max_parallel, adaptive) {
        (_, Some(a)) => Some(MaxParallelBody::Adaptive {
            adaptive: AdaptiveBody { min: a[0], max: a[1], start: a.get(2).copied() },
        }),
        (Some(n), None) => Some(MaxParallelBody::Fixed(n)),
        (None, None) => None,
    }
}

fn describe(c: &Convoy) {
    let limit = match c.max_parallel {
        MaxParallel::Fixed(n) => format!("{n}"),
        MaxParallel::Adaptive(a) => format!("{} (adaptive {}..{})", c.limit, a.min, a.max),
    };
    let n = &c.counts;
    println!("convoy {} ({}) on {}: {}", c.id, c.name, c.queue, c.state.as_str());
    println!("  limit {limit}, on_failure {}", c.on_failure.as_str());
    println!(
        "  total {}: held {}, ready {}, running {}, retrying {}, completed {}, failed {}, cancelled {}",
        n.total, n.held, n.ready, n.running, n.retrying, n.completed, n.failed, n.cancelled
    );
    if let Some(id) = c.on_complete_job_id {
        println!("  on_complete job {id}");
    }
    match c.finished_at {
        Some(t) => println!("  created {}, ended {}", format_ms(c.created_at.0), format_ms(t.0)),
        None => println!("  created {}", format_ms(c.created_at.0)),
    }
}

/// Runs `ferry convoys ...`.
pub async fn convoys(cmd: ConvoysCmd) -> i32 {
    match cmd {
        ConvoysCmd::Add {
            queue,
            members,
            id,
            name,
            max_parallel,
            adaptive,
            fail_fast,
            open,
            on_complete,
            to,
            client: o,
        } => {
            let members = match read_members(&members) {
                Ok(m) => m,
                Err(e) => return fail(e),
            };
            let client = o.client();
            let mut chunks = members.chunks(CHUNK_MEMBERS);
            // Sealed last unless --open: at once when every member fits in the create.
            let seal_last = !open && (to.is_some() || members.len() > CHUNK_MEMBERS);
            let id = match to {
                Some(id) => id,
                None => {
                    let on_complete: Option<OnCompleteSpec> =
                        match on_complete.as_deref().map(serde_json::from_str) {
                            None => None,
                            Some(Ok(spec)) => Some(spec),
                            Some(Err(e)) => return fail(format!("--on-complete is not a job spec: {e}")),
                        };
                    let body = ConvoyBody {
                        id,
                        name,
                        queue: queue.expect("clap requires --queue without --to"),
                        members: chunks.next().map(<[MemberSpec]>::to_vec).unwrap_or_default(),
                        max_parallel: limit(max_parallel, adaptive),
                        // Sealed at once only when every member fits in this request.
                        sealed: Some(!open && members.len() <= CHUNK_MEMBERS),
                        on_failure: fail_fast.then_some(ferry_core::convoy::OnFailure::FailFast),
                        on_complete,
                    };
                    match client.create_convoy(&body).await {
                        Ok(r) => r.convoy.id,
                        Err(e) => return fail(e),
                    }
                }
            };
            for chunk in chunks {
                if let Err(e) = client.add_convoy_members(&id, chunk).await {
                    return fail(e);
                }
            }
            let r =
                if seal_last { client.seal_convoy(&id).await } else { client.get_convoy(&id, None).await };
            show(o.json, r, |c| describe(&c))
        }
        ConvoysCmd::Show { id, wait_ms, client: o } => {
            show(o.json, o.client().get_convoy(&id, wait_ms).await, |c| describe(&c))
        }
        ConvoysCmd::List { state, queue, page: crate::PageArgs { limit, cursor }, client: o } => {
            let r = o
                .client()
                .list_convoys(state.as_deref(), queue.as_deref(), Some(limit), cursor.as_deref())
                .await;
            show(o.json, r, |p| {
                let rows: Vec<Vec<String>> = p
                    .convoys
                    .iter()
                    .map(|c| {
                        vec![
                            c.id.clone(),
                            c.queue.clone(),
                            c.state.as_str().to_string(),
                            c.limit.to_string(),
                            c.counts.total.to_string(),
                            c.counts.completed.to_string(),
                            c.counts.failed.to_string(),
                            format_ms(c.created_at.0),
                        ]
                    })
                    .collect();
                table(
                    &["id", "queue", "state", "limit", "total", "completed", "failed", "created_at"],
                    &rows,
                );
                more(p.next_cursor);
            })
        }
        ConvoysCmd::Members { id, state, page: crate::PageArgs { limit, cursor }, client: o } => {
            let r = o.client().convoy_members(&id, state.as_deref(), Some(limit), cursor.as_deref()).await;
            show(o.json, r, |p: MembersPage| {
                let ts = |t: Option<ferry_core::Timestamp>| t.map_or("-".into(), |t| format_ms(t.0));
                let rows: Vec<Vec<String>> = p
                    .members
                    .iter()
                    .map(|m| {
                        vec![
                            m.id.to_string(),
                            m.state.as_str().to_string(),
                            m.attempt.to_string(),
                            ts(m.started_at),
                            ts(m.finished_at),
                        ]
                    })
                    .collect();
                table(&["id", "state", "attempt", "started_at", "finished_at"], &rows);
                more(p.next_cursor);
            })
        }
        ConvoysCmd::Seal { id, client: o } => {
            show(o.json, o.client().seal_convoy(&id).await, |c| describe(&c))
        }
        ConvoysCmd::Cancel { id, client: o } => {
            show(o.json, o.client().cancel_convoy(&id).await, |c| describe(&c))
        }
    }
}
