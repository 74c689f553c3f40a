//! `ferry dlq`: list dead jobs, replay them (attempts reset, history kept), purge them.

use crate::ClientOpts;
use crate::cmd::jobs::{job_row, more};
use crate::output::{show, table};
use clap::{Args, Subcommand};
use ferry_core::wire::DlqSelectorBody;

/// Which dead jobs: `--id` (repeatable) or `--queue`; one of them is required, so that a bare
/// `ferry dlq purge` is refused by naming the flags, before any request.
#[derive(Args, Debug)]
#[group(required = true, multiple = true)]
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
    #[command(after_help = "Example:\n  ferry dlq list --queue emails --limit 20")]
    List {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
        #[command(flatten)]
        page: crate::PageArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Return dead jobs to ready (attempts reset, history kept).
    #[command(
        after_help = "Examples:\n  ferry dlq replay --queue emails\n  ferry dlq replay --id 01J9Z... --id 01J9Y..."
    )]
    Replay {
        #[command(flatten)]
        select: DlqSelect,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Delete dead jobs.
    #[command(after_help = "Examples:\n  ferry dlq purge --queue emails\n  ferry dlq purge --id 01J9Z...")]
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
        DlqCmd::List { queue, page: crate::PageArgs { limit, cursor }, client: o } => {
            let r = o.client().dlq(queue.as_deref(), Some(limit), cursor.as_deref()).await;
            show(o.json, r, |p| {
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
                more(p.next_cursor);
            })
        }
        DlqCmd::Replay { select, client: o } => {
            show(o.json, o.client().dlq_replay(&select.body()).await, |r| {
                println!("replayed {} jobs", r.replayed)
            })
        }
        DlqCmd::Purge { select, client: o } => {
            show(o.json, o.client().dlq_purge(&select.body()).await, |r| println!("purged {} jobs", r.purged))
        }
    }
}
