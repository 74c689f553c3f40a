//! `ferry schedules`: cron schedules: list, add, rm, pause, resume, and their next runs.

use crate::ClientOpts;
use crate::output::{fail, show};
use clap::Subcommand;
use ferry_core::schedule::{Schedule, ScheduleSpec};
use ferry_core::validate::JobSpec;

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

fn changed(o: &ClientOpts, r: Result<Schedule, ferry_client::ClientError>, what: &str) -> i32 {
    show(o.json, r, |s| println!("schedule {} {what}; next run {}", s.name, ts(s.next_run_at)))
}

/// Runs `ferry schedules ...`.
pub async fn schedules(cmd: SchedulesCmd) -> i32 {
    match cmd {
        SchedulesCmd::List { client: o } => show(o.json, o.client().schedules().await, |r| {
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
        }),
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
            changed(&o, o.client().create_schedule(&spec).await, "created")
        }
        SchedulesCmd::Rm { name, client: o } => {
            show(o.json, o.client().delete_schedule(&name).await, |r| println!("schedule {} deleted", r.name))
        }
        SchedulesCmd::Pause { name, client: o } => {
            changed(&o, o.client().pause_schedule(&name, true).await, "paused")
        }
        SchedulesCmd::Resume { name, client: o } => {
            changed(&o, o.client().pause_schedule(&name, false).await, "resumed")
        }
        SchedulesCmd::Next { name, count, client: o } => {
            show(o.json, o.client().schedule(&name, count).await.map(|s| s.next_runs), |runs| {
                for t in runs {
                    println!("{}", ferry_core::time::format_ms(t.0));
                }
            })
        }
    }
}
