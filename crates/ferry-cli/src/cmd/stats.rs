//! `ferry stats`: the node's key figures over 1 m / 5 m / 1 h and its current readings, for
//! people without Prometheus.

use crate::ClientOpts;
use crate::output::{show, table};
use ferry_core::wire::{StatsResponse, WindowStats};

/// One figure of a window, `None` when not measured.
type Figure = fn(&WindowStats) -> Option<f64>;

/// A figure with `digits` decimals, or `-`.
pub fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.digits$}"))
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{:.2}%", x * 100.0))
}

/// Runs `ferry stats`.
pub async fn stats(o: ClientOpts) -> i32 {
    show(o.json, o.client().stats().await, print)
}

fn print(r: StatsResponse) {
    // Label, figure, decimals, and whether it is a share (printed as a percentage).
    let figures: [(&str, Figure, usize, bool); 21] = [
        ("seconds covered", |w| Some(w.seconds), 0, false),
        ("enqueued/s", |w| Some(w.enqueued_per_sec), 1, false),
        ("started/s", |w| Some(w.started_per_sec), 1, false),
        ("completed/s", |w| Some(w.completed_per_sec), 1, false),
        ("failed/s", |w| Some(w.failed_per_sec), 1, false),
        ("dead/s", |w| Some(w.dead_per_sec), 2, false),
        ("requests/s", |w| Some(w.requests_per_sec), 1, false),
        ("HTTP 5xx", |w| Some(w.http_error_rate), 0, true),
        ("latency p50 ms", |w| w.latency_p50_ms, 2, false),
        ("latency p95 ms", |w| w.latency_p95_ms, 2, false),
        ("latency p99 ms", |w| w.latency_p99_ms, 2, false),
        ("enqueue→start p50 ms", |w| w.job_wait_p50_ms, 1, false),
        ("enqueue→start p99 ms", |w| w.job_wait_p99_ms, 1, false),
        ("store writes/s", |w| Some(w.writes_per_sec), 1, false),
        ("write errors", |w| Some(w.write_error_rate), 0, true),
        ("write p99 ms", |w| w.write_p99_ms, 2, false),
        ("writer utilization", |w| Some(w.writer_utilization), 0, true),
        ("busy waits", |w| Some(w.busy_wait_share), 0, true),
        ("rejections/s", |w| Some(w.rejections_per_sec), 2, false),
        ("DLQ growth", |w| Some(w.dlq_growth as f64), 0, false),
        ("hosts claiming", |w| Some(w.claim_hosts as f64), 0, false),
    ];
    let names = ["1m", "5m", "1h"];
    let rows: Vec<Vec<String>> = figures
        .iter()
        .map(|(label, figure, digits, share)| {
            let mut row = vec![label.to_string()];
            for n in names {
                let v = r.windows.get(n).and_then(figure);
                row.push(if *share { pct(v) } else { num(v, *digits) });
            }
            row
        })
        .collect();
    table(&["", "1m", "5m", "1h"], &rows);
    let now = &r.now;
    println!(
        "now: backlog {}  running {}  DLQ {}  oldest ready {} s  database {:.1} MiB  hosts {}  ({})",
        now.backlog,
        now.running,
        now.dlq,
        num(Some(now.oldest_ready_age_s), 0),
        now.db_bytes as f64 / 1048576.0,
        now.hosts,
        r.backend
    );
}
