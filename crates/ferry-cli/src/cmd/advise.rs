//! `ferry advise`: the scaling advisor's verdict (STAY, PLAN MIGRATION, ACT or MIGRATE NOW),
//! its cause and remedy and one line per finding, or with `--history` its past verdicts.

use crate::ClientOpts;
use crate::cmd::stats::num;
use crate::output::{show, table};

/// Options of `ferry advise`.
#[derive(clap::Args, Debug)]
pub struct AdviseArgs {
    /// Show past decisions instead of evaluating now.
    #[arg(long, conflicts_with = "record")]
    history: bool,
    /// Keep this verdict in the server's history (by default it is only shown and logged).
    #[arg(long)]
    record: bool,
    #[command(flatten)]
    client: ClientOpts,
}

/// Runs `ferry advise`.
pub async fn advise(a: AdviseArgs) -> i32 {
    let (json, c) = (a.client.json, a.client.client());
    if a.history {
        return show(json, c.advice_history().await, |h| {
            let rows: Vec<Vec<String>> = h
                .decisions
                .into_iter()
                .map(|d| vec![ferry_core::time::format_ms(d.at_ms), d.trigger, d.justification])
                .collect();
            table(&["at", "trigger", "verdict"], &rows);
        });
    }
    show(json, c.advice(a.record).await, |v| {
        println!("{}: {}", v.verdict.as_str(), v.cause);
        println!("remedy: {}", v.remedy);
        for f in &v.findings {
            match f.verdict {
                ferry_core::wire::Verdict::Stay => println!("  {:<14} {}", f.verdict.as_str(), f.text),
                _ => println!("  {:<14} {}: {} -> {}", f.verdict.as_str(), f.text, f.cause, f.remedy),
            }
        }
        println!("(over the last {} s of measurements on {})", num(Some(v.window_s), 0), v.backend);
    })
}
