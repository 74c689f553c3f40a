//! `ferry watch`: prints events live (long-poll, so it works through any proxy), one line
//! each, or one JSON object per line with `--json`.

use crate::ClientOpts;
use crate::output::fail;

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
    let mut since = a.since;
    let mut printed = 0u64;
    loop {
        let r = match c.events(since, 25_000, &filters).await {
            Ok(r) => r,
            Err(e) => return fail(e),
        };
        for e in r.events {
            if a.client.json {
                println!("{}", serde_json::to_string(&e).expect("serializable"));
            } else {
                println!(
                    "{:>8}  {}  {:<15} {:<20} {}{}",
                    e.cursor,
                    ferry_core::time::format_ms(e.at.0),
                    e.kind.as_str(),
                    e.queue.as_deref().unwrap_or("-"),
                    e.job_id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
                    e.data.map(|d| format!("  {d}")).unwrap_or_default()
                );
            }
            printed += 1;
            if a.count.is_some_and(|n| printed >= n) {
                return 0;
            }
        }
        since = Some(r.next_cursor);
    }
}
