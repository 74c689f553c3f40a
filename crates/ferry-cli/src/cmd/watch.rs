//! `ferry watch`: prints events live (long-poll, so it works through any proxy), one line
//! each, or one JSON object per line with `--json`.

use crate::ClientOpts;
use crate::output::fail;
use std::io::Write as _;

/// Options of `ferry watch`.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// Only events of these queues (comma-separated).
    #[arg(long)]
    queue: Option<String>,
    /// Only events of these jobs (comma-separated ids).
    #[arg(long)]
    job: Option<String>,
    /// Only events of jobs with these tags (comma-separated).
    #[arg(long)]
    tag: Option<String>,
    /// Only these event types (comma-separated, e.g. job.completed,job.dead).
    #[arg(long = "type")]
    kind: Option<String>,
    /// Start after this cursor (default: from now on).
    #[arg(long)]
    since: Option<u64>,
    /// Stop after this many events (default: run until interrupted).
    #[arg(long)]
    count: Option<u64>,
    /// Events per request while catching up (at most the server's `limits.max_page_size`).
    #[arg(long, default_value_t = 1_000)]
    page: usize,
    #[command(flatten)]
    client: ClientOpts,
}

/// Prints events live (long-poll, so it works through any proxy), one line each.
pub async fn watch(a: WatchArgs) -> i32 {
    let c = a.client.client();
    let mut filters = Vec::new();
    for (k, v) in [("queue", &a.queue), ("job_id", &a.job), ("tag", &a.tag), ("type", &a.kind)] {
        if let Some(v) = v {
            filters.push((k, v.clone()));
        }
    }
    filters.push(("limit", a.page.to_string()));
    let mut since = a.since;
    let mut printed = 0u64;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    loop {
        let r = match c.events(since, 25_000, &filters).await {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        for e in r.events {
            let written = if a.client.json {
                writeln!(out, "{}", serde_json::to_string(&e).expect("serializable"))
            } else {
                writeln!(
                    out,
                    "{:>8}  {}  {:<15} {:<20} {}{}",
                    e.cursor,
                    ferry_core::time::format_ms(e.at.0),
                    e.kind.as_str(),
                    e.queue.as_deref().unwrap_or("-"),
                    e.job_id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                    e.data.map(|d| format!("  {d}")).unwrap_or_default()
                )
            };
            if written.is_err() {
                return 0; // the reader went away (a closed pipe)
            }
            printed += 1;
            if a.count.is_some_and(|n| printed >= n) {
                let _ = out.flush();
                return 0;
            }
        }
        // Written out before waiting for more, so a live watch shows each page as it comes.
        if out.flush().is_err() {
            return 0;
        }
        since = Some(r.next_cursor);
    }
}
