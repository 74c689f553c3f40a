//! `ferry stats` and `ferry advise`: the node's key figures over 1 m / 5 m / 1 h, and the
//! scaling advisor's verdict (`--history` for past ones), for people without Prometheus.

use crate::ClientOpts;
use crate::commands::{fail, print_json, table};
use ferry_client::Method;
use serde_json::Value;

fn num(v: &Value, digits: usize) -> String {
    match v.as_f64() {
        Some(x) => format!("{x:.digits$}"),
        None => "-".into(),
    }
}

fn pct(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| format!("{:.2}%", x * 100.0))
}

/// Runs `ferry stats`.
pub async fn stats(o: ClientOpts) -> i32 {
    let v = match o.client().call_json(Method::GET, "/v1/stats", None).await {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if o.json {
        print_json(&v);
        return 0;
    }
    let names = ["1m", "5m", "1h"];
    let w = |name: &str, key: &str| &v["windows"][name][key];
    let rows: Vec<Vec<String>> = [
        ("seconds covered", "seconds", 0, false),
        ("enqueued/s", "enqueued_per_sec", 1, false),
        ("started/s", "started_per_sec", 1, false),
        ("completed/s", "completed_per_sec", 1, false),
        ("failed/s", "failed_per_sec", 1, false),
        ("dead/s", "dead_per_sec", 2, false),
        ("requests/s", "requests_per_sec", 1, false),
        ("HTTP 5xx", "http_error_rate", 0, true),
        ("latency p50 ms", "latency_p50_ms", 2, false),
        ("latency p95 ms", "latency_p95_ms", 2, false),
        ("latency p99 ms", "latency_p99_ms", 2, false),
        ("enqueue→start p50 ms", "job_wait_p50_ms", 1, false),
        ("enqueue→start p99 ms", "job_wait_p99_ms", 1, false),
        ("store writes/s", "writes_per_sec", 1, false),
        ("write errors", "write_error_rate", 0, true),
        ("write p99 ms", "write_p99_ms", 2, false),
        ("writer utilization", "writer_utilization", 0, true),
        ("busy waits", "busy_wait_share", 0, true),
        ("rejections/s", "rejections_per_sec", 2, false),
        ("DLQ growth", "dlq_growth", 0, false),
        ("hosts claiming", "claim_hosts", 0, false),
    ]
    .iter()
    .map(|(label, key, digits, share)| {
        let mut row = vec![label.to_string()];
        for n in names {
            row.push(if *share { pct(w(n, key)) } else { num(w(n, key), *digits) });
        }
        row
    })
    .collect();
    table(&["", "1m", "5m", "1h"], &rows);
    let now = &v["now"];
    println!(
        "now: backlog {}  running {}  DLQ {}  oldest ready {} s  database {:.1} MiB  hosts {}  ({})",
        now["backlog"],
        now["running"],
        now["dlq"],
        num(&now["oldest_ready_age_s"], 0),
        now["db_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
        now["hosts"],
        v["backend"].as_str().unwrap_or("?")
    );
    0
}

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
    let path = if a.history { "/v1/advice/history" } else { "/v1/advice" };
    let v = match a.client.client().call_json(Method::GET, path, None).await {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    if a.client.json {
        print_json(&v);
        return 0;
    }
    if a.history {
        let rows: Vec<Vec<String>> = v["decisions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                vec![
                    d["at_ms"].as_i64().map_or("-".into(), ferry_core::time::format_ms),
                    d["trigger"].as_str().unwrap_or("").into(),
                    d["justification"].as_str().unwrap_or("").into(),
                ]
            })
            .collect();
        table(&["at", "trigger", "verdict"], &rows);
        return 0;
    }
    println!("{}", v["justification"].as_str().unwrap_or(""));
    println!("action: {}", v["action"].as_str().unwrap_or(""));
    println!(
        "(over the last {} s of measurements on {})",
        num(&v["window_s"], 0),
        v["backend"].as_str().unwrap_or("?")
    );
    0
}
