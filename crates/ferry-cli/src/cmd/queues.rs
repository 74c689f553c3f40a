//! `ferry queues`: every queue with its counts, pause and resume, and a queue's flow limits.

use crate::ClientOpts;
use crate::output::{show, table};
use clap::Subcommand;
use ferry_core::QueueLimits;

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
        QueuesCmd::List { client: o } => show(o.json, o.client().queues().await, |r| {
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
        }),
        QueuesCmd::Pause { queue, client: o } => pause(&o, &queue, true).await,
        QueuesCmd::Resume { queue, client: o } => pause(&o, &queue, false).await,
        QueuesCmd::Limit { queue, max_running, max_starts_per_sec, max_depth, clear, client: o } => {
            let limits = QueueLimits { max_running, max_starts_per_sec, max_depth };
            let c = o.client();
            let r = if limits.is_empty() && !clear {
                c.queue_limits(&queue).await
            } else {
                c.set_queue_limits(&queue, &limits).await
            };
            // The limits are JSON either way: they are what a script reads back.
            show(true, r, |_| {})
        }
    }
}

async fn pause(o: &ClientOpts, queue: &str, paused: bool) -> i32 {
    let c = o.client();
    let r = if paused { c.pause(queue).await } else { c.resume(queue).await };
    show(o.json, r, |r| println!("{} {}", r.queue, if r.paused { "paused" } else { "resumed" }))
}
