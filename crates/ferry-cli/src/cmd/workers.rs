//! `ferry workers`: the workers registered by their claims and heartbeats.

use crate::ClientOpts;
use crate::output::{show, table};
use ferry_core::time::format_ms;

/// Runs `ferry workers`.
pub async fn workers(o: ClientOpts) -> i32 {
    show(o.json, o.client().workers().await, |r| {
        let rows: Vec<Vec<String>> = r
            .workers
            .iter()
            .map(|w| {
                vec![
                    w.name.clone(),
                    w.status.as_str().to_string(),
                    w.jobs_in_flight.to_string(),
                    format_ms(w.last_seen_ms),
                ]
            })
            .collect();
        table(&["worker", "status", "in flight", "last seen"], &rows);
    })
}
