//! `/mcp`'s edges, over real HTTP against the real binary: the session limit one past its
//! edge, `Origin` and `Host` checks, the body limit, auth (401 with `WWW-Authenticate`, a
//! tool's scope as the route's), `[mcp] enabled = false`, and the tool-call metrics. The
//! protocol itself is tested with the official SDKs in `tests/mcp/` (pytest).

use crate::common::Server;
use serde_json::{Value, json};
use std::time::Duration;

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

fn start(toml: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ferry.toml"), toml).unwrap();
    Server::start_with(&[], dir)
}

/// One `/mcp` answer: status, headers, and the JSON-RPC message (from JSON or the SSE stream).
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

async fn mcp(s: &Server, msg: &Value, extra: &[(&str, &str)]) -> Answer {
    let mut req = http()
        .post(s.at("/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(msg.to_string());
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("an answer");
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    let text = r.text().await.unwrap_or_default();
    // An SSE answer: the last `data:` line that holds a message.
    let body = text
        .lines()
        .rev()
        .filter_map(|l| l.strip_prefix("data:"))
        .find_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .unwrap_or_else(|| serde_json::from_str(&text).unwrap_or(Value::Null));
    Answer { status, headers, body }
}

fn initialize(id: u64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "it", "version": "1"}}})
}

/// A 2026-07-28 message: `params` with the `_meta` the revision asks of every request.
fn stateless(method: &str, params: Value) -> Value {
    let mut params = params;
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "it", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params})
}

/// A stateless request with the standard headers a modern client sends, then `extra` ones.
async fn modern_with(s: &Server, method: &str, params: Value, extra: &[(&str, &str)]) -> Answer {
    let msg = stateless(method, params);
    let name = msg["params"]["name"].as_str().map(str::to_string);
    let mut headers = vec![("mcp-protocol-version", "2026-07-28"), ("mcp-method", method)];
    if let Some(n) = &name {
        headers.push(("mcp-name", n.as_str()));
    }
    headers.extend_from_slice(extra);
    mcp(s, &msg, &headers).await
}

/// A stateless 2026-07-28 request, as a modern client sends it.
async fn modern(s: &Server, method: &str, params: Value, token: Option<&str>) -> Answer {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let auth: Vec<(&str, &str)> = bearer.iter().map(|b| ("authorization", b.as_str())).collect();
    modern_with(s, method, params, &auth).await
}

#[tokio::test]
async fn sessions_stop_at_their_limit_and_the_edge_checks_of_v1_apply() {
    let s = start("[limits]\nmax_mcp_sessions = 2\nmax_request_bytes = 65536\n");
    let mut sessions = Vec::new();
    for i in 0..2 {
        let a = mcp(&s, &initialize(i), &[]).await;
        assert_eq!(a.status, 200, "initialize {i}: {}", a.body);
        assert_eq!(a.body["result"]["protocolVersion"], "2025-06-18");
        sessions.push(a.header("mcp-session-id").to_string());
    }
    // One past the limit: 503 unavailable with Retry-After, not a third session.
    let refused = mcp(&s, &initialize(3), &[]).await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert_eq!(refused.body["error"]["code"], "unavailable");
    assert_eq!(refused.header("retry-after"), "1");
    // Stateless requests need no session, so the limit does not touch them.
    let listed = modern(&s, "tools/list", json!({}), None).await;
    assert_eq!(listed.status, 200, "{}", listed.body);
    assert!(listed.body["result"]["tools"].as_array().is_some_and(|t| t.len() > 30), "{}", listed.body);
    // Ending one makes room for one.
    let ended = http().delete(s.at("/mcp")).header("mcp-session-id", &sessions[0]).send().await.unwrap();
    assert_eq!(ended.status().as_u16(), 204);
    assert_eq!(mcp(&s, &initialize(4), &[]).await.status, 200);

    // A foreign page's Origin: 403, as for /v1.
    let foreign = mcp(&s, &initialize(5), &[("origin", "https://evil.example")]).await;
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    // With auth off, a non-loopback Host (DNS rebinding): 403.
    let rebound = mcp(&s, &initialize(6), &[("host", "evil.example")]).await;
    assert_eq!(rebound.status, 403, "{}", rebound.body);
    // One byte past max_request_bytes: 413.
    let big =
        json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list", "params": {"pad": "x".repeat(65_536)}});
    assert_eq!(mcp(&s, &big, &[]).await.status, 413);

    // Tool calls are counted by tool and outcome.
    let call = modern(&s, "tools/call", json!({"name": "jobs_get", "arguments": {"id": "nope"}}), None).await;
    assert_eq!(call.body["result"]["isError"], true, "{}", call.body);
    let metrics = http().get(s.at("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains(r#"ferry_mcp_tool_calls_total{tool="jobs_get",outcome="not_found"} 1"#),
        "{}",
        metrics.lines().filter(|l| l.contains("mcp")).collect::<Vec<_>>().join("\n")
    );
    assert!(metrics.contains("ferry_mcp_sessions 2"), "two sessions are alive");
}

#[tokio::test]
async fn with_auth_on_mcp_needs_a_token_and_each_tool_the_scope_of_its_route() {
    let s = start("");
    let mint = |body: Value, token: Option<String>| {
        let mut req = http().post(s.at("/v1/tokens")).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            req.send().await.unwrap().json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string()
        }
    };
    let admin = mint(json!({"name": "root", "scopes": ["admin"]}), None).await;
    let reader = mint(json!({"name": "reader", "scopes": ["read"]}), Some(admin.clone())).await;

    let anonymous = mcp(&s, &initialize(1), &[]).await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert!(anonymous.header("www-authenticate").starts_with("Bearer"), "{:?}", anonymous.headers);
    let forged = modern(&s, "tools/list", json!({}), Some("fy_00000000000000000000000000000000_00")).await;
    assert_eq!(forged.status, 401);

    let tools = modern(&s, "tools/list", json!({}), Some(&reader)).await;
    let names: Vec<&str> = tools.body["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"jobs_get") && names.contains(&"events_wait"), "{names:?}");
    assert!(
        !names.contains(&"jobs_enqueue") && !names.contains(&"jobs_claim"),
        "read sees no write tool: {names:?}"
    );
    let all = modern(&s, "tools/list", json!({}), Some(&admin)).await;
    assert!(all.body["result"]["tools"].as_array().unwrap().len() > names.len());

    let refused = modern(
        &s,
        "tools/call",
        json!({"name": "jobs_enqueue", "arguments": {"queue": "q", "payload": {}}}),
        Some(&reader),
    )
    .await;
    assert_eq!(refused.status, 200, "a tool's refusal is a result, not a transport failure");
    let result = &refused.body["result"];
    assert_eq!(result["isError"], true, "{}", refused.body);
    assert_eq!(result["structuredContent"]["error"]["code"], "forbidden");
    assert!(result["content"][0]["text"].as_str().unwrap().starts_with("forbidden: "));
    let jobs =
        http().get(s.at("/v1/jobs")).bearer_auth(&admin).send().await.unwrap().json::<Value>().await.unwrap();
    assert_eq!(jobs["jobs"].as_array().unwrap().len(), 0, "nothing was enqueued: {jobs}");

    let done = modern(
        &s,
        "tools/call",
        json!({"name": "jobs_enqueue", "arguments": {"queue": "q", "payload": {"n": 1}}}),
        Some(&admin),
    )
    .await;
    let id = done.body["result"]["structuredContent"]["id"].as_str().expect("an id").to_string();
    let got =
        modern(&s, "tools/call", json!({"name": "jobs_get", "arguments": {"id": id}}), Some(&reader)).await;
    assert_eq!(got.body["result"]["structuredContent"]["queue"], "q", "{}", got.body);
}

#[tokio::test]
async fn mcp_can_be_turned_off() {
    let s = start("[mcp]\nenabled = false\n");
    let a = mcp(&s, &initialize(1), &[]).await;
    assert_eq!(a.status, 404, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "not_found");
}

/// A stateless call sent so that it takes rmcp's path: a second `Accept` header is nothing the
/// fast path judges, so it hands the request on.
async fn modern_via_rmcp(s: &Server, params: Value) -> Answer {
    modern_with(s, "tools/call", params, &[("accept", "application/json")]).await
}

#[tokio::test]
async fn plain_stateless_calls_answer_as_rmcp_does_and_anything_unusual_goes_to_rmcp() {
    let s = start("");
    let made = modern(
        &s,
        "tools/call",
        json!({"name": "jobs_enqueue", "arguments": {"queue": "q", "payload": {"a": 1}}}),
        None,
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.body);
    let id = made.body["result"]["structuredContent"]["id"].as_str().expect("an id").to_string();
    // The same calls, a success and two kinds of tool error, by both paths: the same answers.
    let calls = [
        json!({"name": "jobs_get", "arguments": {"id": id}}),
        json!({"name": "jobs_get", "arguments": {"id": "00000000-0000-0000-0000-000000000000"}}),
        json!({"name": "jobs_get", "arguments": {}}),
    ];
    for call in calls {
        let fast = modern(&s, "tools/call", call.clone(), None).await;
        let slow = modern_via_rmcp(&s, call.clone()).await;
        assert_eq!((fast.status, slow.status), (200, 200), "{call}: {} / {}", fast.body, slow.body);
        assert_eq!(fast.header("content-type"), "application/json");
        assert_eq!(fast.body, slow.body, "{call}");
    }
    let gone = modern(&s, "tools/call", json!({"name": "jobs_get", "arguments": {}}), None).await;
    assert_eq!(gone.body["result"]["isError"], true, "{}", gone.body);
    // A header that disagrees with the body is rmcp's to refuse.
    let msg = stateless("tools/call", json!({"name": "jobs_get", "arguments": {"id": id}}));
    let headers =
        [("mcp-protocol-version", "2026-07-28"), ("mcp-method", "tools/call"), ("mcp-name", "queues_list")];
    let mismatch = mcp(&s, &msg, &headers).await;
    assert_eq!(mismatch.status, 400, "{}", mismatch.body);
    assert!(mismatch.body["error"].is_object(), "{}", mismatch.body);
    // An unknown tool too: a JSON-RPC error, not a tool result.
    let unknown = modern(&s, "tools/call", json!({"name": "no_such_tool", "arguments": {}}), None).await;
    assert!(unknown.body["error"].is_object(), "{}", unknown.body);
}

#[tokio::test]
async fn a_waiting_claim_whose_client_hangs_up_stops_and_takes_nothing() {
    let s = start("");
    let params =
        json!({"name": "jobs_claim", "arguments": {"queue": "hang", "worker": "w", "wait_ms": 3000}});
    let msg = stateless("tools/call", params);
    let hung_up = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap()
        .post(s.at("/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", "jobs_claim")
        .body(msg.to_string())
        .send()
        .await;
    assert!(hung_up.is_err(), "the claim waits past the client's timeout");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let made = modern(
        &s,
        "tools/call",
        json!({"name": "jobs_enqueue", "arguments": {"queue": "hang", "payload": {}}}),
        None,
    )
    .await;
    let id = made.body["result"]["structuredContent"]["id"].clone();
    // The abandoned claim stopped waiting, so the job is there for the next worker.
    let claimed = modern(
        &s,
        "tools/call",
        json!({"name": "jobs_claim", "arguments": {"queue": "hang", "worker": "w2"}}),
        None,
    )
    .await;
    let jobs = &claimed.body["result"]["structuredContent"]["jobs"];
    assert_eq!(jobs[0]["id"], id, "{}", claimed.body);
}
