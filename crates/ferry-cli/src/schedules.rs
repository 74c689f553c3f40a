//! `ferry schedules ...` (cron schedules) and `ferry watch` (live events), over the HTTP API.

use crate::ClientOpts;
use clap::Subcommand;
use ferry_core::schedule::{Schedule, ScheduleSpec};
use ferry_core::validate::JobSpec;
use serde::Serialize;

fn fail(e: impl std::fmt::Display) -> i32 {
    eprintln!("ferry: {e}");
    1
}

fn print_json<T: Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

fn ts(t: Option<ferry_core::Timestamp>) -> String {
    t.map(|t| ferry_core::time::format_ms(t.0)).unwrap_or_else(|| "-".into())
}

/// `ferry schedules ...`.
#[derive(Subcommand, Debug)]
pub enum SchedulesCmd {
    /// Every schedule with its next run.
    List {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Create a schedule.
    Add {
        /// Schedule name.
        name: String,
        /// Cron expression (5 or 6 fields, or @hourly, @daily...).
        #[arg(long)]
        cron: String,
        /// Queue its jobs go to.
        #[arg(long)]
        queue: String,
        /// IANA time zone (default UTC).
        #[arg(long = "tz", alias = "timezone")]
        timezone: Option<String>,
        /// The jobs' payload (JSON).
        #[arg(long)]
        payload: Option<String>,
        /// skip, run_once (default) or catch_up.
        #[arg(long)]
        misfire: Option<String>,
        /// Most missed ticks catch_up enqueues.
        #[arg(long)]
        catch_up_max: Option<u32>,
        /// Create it paused.
        #[arg(long)]
        paused: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Delete a schedule.
    Rm {
        /// Schedule name.
        name: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Pause a schedule.
    Pause {
        /// Schedule name.
        name: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Resume a schedule from its next tick.
    Resume {
        /// Schedule name.
        name: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// The next runs of a schedule.
    Next {
        /// Schedule name.
        name: String,
        /// How many.
        #[arg(long, default_value_t = 5)]
        count: usize,
        #[command(flatten)]
        client: ClientOpts,
    },
}

fn show(o: &ClientOpts, r: Result<Schedule, ferry_client::ClientError>, what: &str) -> i32 {
    match r {
        Ok(s) if o.json => {
            print_json(&s);
            0
        }
        Ok(s) => {
            println!("schedule {} {what}; next run {}", s.name, ts(s.next_run_at));
            0
        }
        Err(e) => fail(e),
    }
}

/// Runs `ferry schedules ...`.
pub async fn schedules(cmd: SchedulesCmd) -> i32 {
    match cmd {
        SchedulesCmd::List { client: o } => match o.client().schedules().await {
            Ok(r) if o.json => {
                print_json(&r);
                0
            }
            Ok(r) => {
                println!(
                    "{:<24} {:<20} {:<16} {:<9} {:<7} {:<24}",
                    "name", "cron", "timezone", "misfire", "paused", "next run"
                );
                for s in r.schedules {
                    println!(
                        "{:<24} {:<20} {:<16} {:<9} {:<7} {:<24}",
                        s.name,
                        s.cron,
                        s.timezone,
                        s.misfire.as_str(),
                        if s.paused { "yes" } else { "no" },
                        ts(s.next_run_at)
                    );
                }
                0
            }
            Err(e) => fail(e),
        },
        SchedulesCmd::Add {
            name,
            cron,
            queue,
            timezone,
            payload,
            misfire,
            catch_up_max,
            paused,
            client: o,
        } => {
            let payload = match payload.map(serde_json::value::RawValue::from_string).transpose() {
                Ok(p) => p,
                Err(e) => return fail(format!("--payload is not JSON: {e}")),
            };
            let spec = ScheduleSpec {
                name,
                cron,
                timezone,
                job: JobSpec { queue, payload, ..Default::default() },
                misfire,
                catch_up_max,
                paused: paused.then_some(true),
            };
            show(&o, o.client().create_schedule(&spec).await, "created")
        }
        SchedulesCmd::Rm { name, client: o } => match o.client().delete_schedule(&name).await {
            Ok(r) if o.json => {
                print_json(&r);
                0
            }
            Ok(r) => {
                println!("schedule {} deleted", r.name);
                0
            }
            Err(e) => fail(e),
        },
        SchedulesCmd::Pause { name, client: o } => {
            show(&o, o.client().pause_schedule(&name, true).await, "paused")
        }
        SchedulesCmd::Resume { name, client: o } => {
            show(&o, o.client().pause_schedule(&name, false).await, "resumed")
        }
        SchedulesCmd::Next { name, count, client: o } => match o.client().schedule(&name, count).await {
            Ok(s) if o.json => {
                print_json(&s.next_runs);
                0
            }
            Ok(s) => {
                for t in s.next_runs {
                    println!("{}", ferry_core::time::format_ms(t.0));
                }
                0
            }
            Err(e) => fail(e),
        },
    }
}

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
