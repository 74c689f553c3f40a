//! `ferry advise`: the scaling advisor's verdict (STAY, PLAN MIGRATION or MIGRATE NOW) and
//! why, or with `--history` its past verdicts.

use crate::ClientOpts;
use crate::cmd::stats::num;
use crate::output::{show, table};

/// Options of `ferry advise`.
#[derive(clap::Args, Debug)]
pub struct AdviseArgs {
    /// Show past decisions instead of evaluating now.
    #[arg(long)]
    history: bool,
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
    show(json, c.advice().await, |v| {
        println!("{}", v.justification);
        println!("action: {}", v.action);
        println!("(over the last {} s of measurements on {})", num(Some(v.window_s), 0), v.backend);
    })
}
