//! `ferry bench mcp`: the MCP endpoint measured with an rmcp client (revision 2026-07-28,
//! stateless; `--mcp-handshake` for 2025-11-25 sessions), beside the same operations over
//! plain HTTP taken back to back.
//!
//! 1. idle round trips: `jobs_get`, and enqueue → claim → complete, one at a time;
//! 2. for each `--mcp-sessions` count: that many MCP sessions each doing enqueue(1) →
//!    claim(1) → complete(1) `--rounds` times, then the same over HTTP with as many SDK clients;
//! 3. `ferry bench e2e` alone, then with `--mcp-sessions`' first count of sessions running the
//!    loop of 2 beside it: the drop is reported.

use crate::bench::{BenchArgs, jobs_end_to_end, pct, single_job_clients};
use ferry_client::Client;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, JsonObject, ProtocolVersion};
use rmcp::service::{ClientLifecycleMode, ClientServiceExt, RoleClient, RunningService};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

type Session = RunningService<RoleClient, ()>;

/// Opens one MCP client on `url` (the server's base URL): stateless on 2026-07-28, or a
/// handshake session (`--mcp-handshake`).
async fn connect(a: &BenchArgs, url: &str) -> Result<Session, String> {
    let mut config =
        StreamableHttpClientTransportConfig::with_uri(format!("{}/mcp", url.trim_end_matches('/')));
    if let Some(t) = &a.token {
        config = config.auth_header(t.clone());
    }
    // rmcp's default HTTP client opens a connection per request (no idle pool, to dodge a
    // delayed-ACK stall after unread bodies); ferry answers with whole JSON bodies, so a
    // pooled client keeps one connection per session, as an agent's long-lived client would.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .retry(reqwest::retry::never())
        .no_proxy()
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let transport = StreamableHttpClientTransport::with_client(http, config);
    let connected = if a.mcp_handshake {
        ().serve(transport).await
    } else {
        let modern =
            ClientLifecycleMode::Discover { preferred_versions: vec![ProtocolVersion::V_2026_07_28] };
        ().serve_with_lifecycle(transport, modern).await
    };
    connected.map_err(|e| format!("MCP connect: {e}"))
}

/// Calls `tool` and returns its structured result; an `isError` result is an error.
async fn call(s: &Session, tool: &'static str, args: Value) -> Result<Value, String> {
    let Value::Object(args) = args else { return Err("arguments must be an object".into()) };
    let params = CallToolRequestParams::new(tool).with_arguments(JsonObject::from_iter(args));
    let r = s.call_tool(params).await.map_err(|e| format!("{tool}: {e}"))?;
    let body = r.structured_content.unwrap_or(Value::Null);
    if r.is_error == Some(true) {
        return Err(format!("{tool}: {body}"));
    }
    Ok(body)
}

/// One enqueue → claim → complete over MCP on `queue`; the three calls' durations in ms.
async fn one_job(s: &Session, queue: &str) -> Result<[f64; 3], String> {
    let t = Instant::now();
    call(s, "jobs_enqueue", json!({"queue": queue, "payload": {}})).await?;
    let enq = t.elapsed().as_secs_f64() * 1000.0;
    let t = Instant::now();
    let claimed = call(s, "jobs_claim", json!({"queue": queue, "worker": "bench-mcp", "max": 1})).await?;
    let claim = t.elapsed().as_secs_f64() * 1000.0;
    let job = &claimed["jobs"][0];
    let (Some(id), Some(lease)) = (job["id"].as_str(), job["lease"].as_str()) else {
        return Err(format!("jobs_claim returned no job: {claimed}"));
    };
    let t = Instant::now();
    call(s, "jobs_complete", json!({"id": id, "lease": lease})).await?;
    Ok([enq, claim, t.elapsed().as_secs_f64() * 1000.0])
}

/// `sessions` MCP sessions each doing `rounds` single-job loops; (calls/s, sorted latencies).
async fn mcp_loops(a: &BenchArgs, sessions: usize, queue: &str) -> Result<(f64, Vec<f64>), String> {
    let mut open = Vec::with_capacity(sessions);
    for i in 0..sessions {
        open.push(connect(a, &a.url[i % a.url.len()]).await?);
    }
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, s) in open.into_iter().enumerate() {
        let (queue, rounds) = (format!("{queue}-{i}"), a.rounds);
        tasks.spawn(async move {
            let mut lat = Vec::with_capacity(rounds * 3);
            for _ in 0..rounds {
                lat.extend(one_job(&s, &queue).await?);
            }
            let _ = s.cancel().await;
            Ok::<_, String>(lat)
        });
    }
    let mut all = Vec::new();
    while let Some(r) = tasks.join_next().await {
        all.extend(r.map_err(|e| e.to_string())??);
    }
    let secs = t0.elapsed().as_secs_f64();
    all.sort_by(|x, y| x.partial_cmp(y).expect("finite"));
    Ok((all.len() as f64 / secs, all))
}

/// The `mcp` phase.
pub(crate) async fn mcp(a: &BenchArgs, nodes: &[Client], run_id: &str) -> Result<(), ()> {
    let fail = |e: String| eprintln!("ferry: bench mcp: {e}");
    // 1. Idle round trips.
    let s = connect(a, &a.url[0]).await.map_err(fail)?;
    let queue = format!("bench-mcp-idle-{run_id}");
    let id =
        call(&s, "jobs_enqueue", json!({"queue": queue, "payload": {}})).await.map_err(fail)?["id"].clone();
    let mut gets = Vec::with_capacity(a.latency_samples);
    let mut loops = Vec::with_capacity(a.latency_samples);
    for _ in 0..a.latency_samples {
        let t = Instant::now();
        call(&s, "jobs_get", json!({"id": id})).await.map_err(fail)?;
        gets.push(t.elapsed().as_secs_f64() * 1000.0);
        let t = Instant::now();
        one_job(&s, &format!("{queue}-loop")).await.map_err(fail)?;
        loops.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let _ = s.cancel().await;
    for (what, v) in [("jobs_get", &mut gets), ("enqueue -> claim -> complete", &mut loops)] {
        v.sort_by(|x, y| x.partial_cmp(y).expect("finite"));
        println!(
            "mcp       idle round trip of {what}, {} samples: p50 {:.2} ms, p99 {:.2} ms",
            v.len(),
            pct(v, 0.5),
            pct(v, 0.99)
        );
    }
    // 2. Concurrent sessions, then as many HTTP clients, back to back.
    for &n in &a.mcp_sessions {
        let (rate, lat) = mcp_loops(a, n, &format!("bench-mcp-{run_id}-{n}")).await.map_err(fail)?;
        let (http_rate, http_lat) =
            single_job_clients(nodes, n, a.rounds, &format!("bench-mcp-http-{run_id}-{n}"))
                .await
                .map_err(|e| fail(e.to_string()))?;
        println!(
            "mcp       {n} sessions x {} rounds of enqueue(1), claim(1), complete(1): {rate:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms; \
             HTTP with {n} clients: {http_rate:.0} calls/s, p50 {:.2} ms, p99 {:.2} ms; MCP/HTTP {:.2}",
            a.rounds,
            pct(&lat, 0.5),
            pct(&lat, 0.99),
            pct(&http_lat, 0.5),
            pct(&http_lat, 0.99),
            rate / http_rate
        );
    }
    // 3. e2e alone, then beside the first count of sessions looping.
    let alone = jobs_end_to_end(a, nodes, &format!("bench-mcp-e2e-{run_id}-alone"), None, a.jobs)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let n = a.mcp_sessions.first().copied().unwrap_or(50);
    let stop = Arc::new(AtomicBool::new(false));
    let mut busy = tokio::task::JoinSet::new();
    for i in 0..n {
        let s = connect(a, &a.url[i % a.url.len()]).await.map_err(fail)?;
        let (stop, queue) = (stop.clone(), format!("bench-mcp-beside-{run_id}-{i}"));
        busy.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = one_job(&s, &queue).await {
                    eprintln!("ferry: bench mcp: a session beside e2e failed: {e}");
                    break;
                }
            }
            let _ = s.cancel().await;
        });
    }
    let beside = jobs_end_to_end(a, nodes, &format!("bench-mcp-e2e-{run_id}-beside"), None, a.jobs).await;
    stop.store(true, Ordering::Relaxed);
    while busy.join_next().await.is_some() {}
    let beside = beside.map_err(|e| fail(e.to_string()))?;
    println!(
        "mcp       e2e alone {alone:.0} jobs/s; beside {n} looping MCP sessions {beside:.0} jobs/s ({:.0}% of alone)",
        beside / alone * 100.0
    );
    Ok(())
}
