//! `ferry mcp`: bridges an MCP client that speaks only stdio to a server's `/mcp`.
//!
//! Each JSON-RPC line from stdin is POSTed to `/mcp` (with the bearer token, the handshake
//! session's id and the negotiated revision), and whatever the server answers (JSON, or an SSE
//! stream of messages) is written to stdout, a message per line. The bridge keeps no state of
//! its own beyond that session: it never opens a database. While the server is unreachable a
//! tool call is answered with an `isError` result (`unavailable`), other requests with a
//! JSON-RPC error; when a restarted server no longer knows the session, the bridge replays
//! the client's `initialize` and goes on. It exits 0 when stdin closes.

use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// Options of `ferry mcp`.
#[derive(clap::Args, Debug)]
pub(crate) struct McpArgs {
    /// Server URL (its `/mcp` is used).
    #[arg(long, env = "FERRY_URL", default_value = "http://127.0.0.1:7700")]
    url: String,
    /// API token, when the server has auth on.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Longest line read from stdin, in bytes (a message bigger than any body the server takes).
const MAX_LINE_BYTES: usize = 64 << 20;
/// How long in-flight calls may still answer once stdin has closed.
const DRAIN_ON_EOF: Duration = Duration::from_secs(2);

/// What every message's task shares.
struct Bridge {
    http: reqwest::Client,
    endpoint: String,
    token: Option<String>,
    out: mpsc::UnboundedSender<String>,
    session: Mutex<Session>,
    /// In-flight requests by JSON-RPC id, so a `notifications/cancelled` can drop its HTTP call.
    inflight: Mutex<HashMap<String, tokio::task::AbortHandle>>,
    /// Bumped by each new session, so the listener of an older one stops.
    generation: Arc<AtomicU64>,
}

/// The handshake session, if the client made one.
#[derive(Default, Clone)]
struct Session {
    id: Option<String>,
    revision: Option<String>,
    /// The client's `initialize` request, replayed when the server forgot the session.
    initialize: Option<Value>,
}

/// Why a POST did not produce messages.
enum Failure {
    /// The server could not be reached (or its connection broke).
    Unreachable(String),
    /// The server no longer knows the session (it restarted).
    SessionGone,
    /// Any other HTTP answer without JSON-RPC messages: its status and body.
    Http(u16, String),
}

/// Runs the bridge until stdin closes; the exit code.
pub(crate) async fn run(args: McpArgs) -> i32 {
    let http = match reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ferry mcp: {e}");
            return 2;
        }
    };
    let (out, mut rx) = mpsc::unbounded_channel::<String>();
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = rx.recv().await {
            if stdout.write_all(line.as_bytes()).await.is_err() || stdout.write_all(b"\n").await.is_err() {
                return;
            }
            let _ = stdout.flush().await;
        }
    });
    let bridge = Arc::new(Bridge {
        http,
        endpoint: format!("{}/mcp", args.url.trim_end_matches('/')),
        token: args.token,
        out,
        session: Mutex::new(Session::default()),
        inflight: Mutex::new(HashMap::new()),
        generation: Arc::new(AtomicU64::new(0)),
    });
    let mut tasks = tokio::task::JoinSet::new();
    let mut lines = tokio::io::BufReader::with_capacity(1 << 16, tokio::io::stdin()).lines();
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) | Err(_) => break,
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.len() > MAX_LINE_BYTES {
            bridge.send(rpc_error(&Value::Null, -32600, "message too large"));
            continue;
        }
        let msg: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                bridge.send(rpc_error(&Value::Null, -32700, &format!("parse error: {e}")));
                continue;
            }
        };
        bridge.cancel_if_asked(&msg);
        let b = bridge.clone();
        let id = msg.get("id").filter(|_| msg.get("method").is_some()).map(Value::to_string);
        let handle = tasks.spawn(async move { b.forward(msg).await });
        if let Some(id) = id {
            bridge.inflight.lock().expect("inflight lock").insert(id, handle);
        }
        while tasks.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(DRAIN_ON_EOF, async { while tasks.join_next().await.is_some() {} }).await;
    bridge.end_session().await;
    drop(bridge);
    let _ = writer.await;
    0
}

impl Bridge {
    fn send(&self, msg: Value) {
        let _ = self.out.send(msg.to_string());
    }

    /// A `notifications/cancelled` drops the HTTP call of the request it names (the server
    /// then cancels it, on every revision); it is forwarded too, for handshake sessions.
    fn cancel_if_asked(&self, msg: &Value) {
        if msg["method"] == "notifications/cancelled"
            && let Some(id) = msg["params"].get("requestId")
            && let Some(h) = self.inflight.lock().expect("inflight lock").remove(&id.to_string())
        {
            h.abort();
        }
    }

    /// Sends one client message and writes what comes back.
    async fn forward(self: Arc<Self>, msg: Value) {
        let is_request = msg.get("id").is_some() && msg.get("method").is_some();
        if msg["method"] == "initialize" {
            self.session.lock().expect("session lock").initialize = Some(msg.clone());
        }
        let mut outcome = self.post(&msg).await;
        if matches!(outcome, Err(Failure::SessionGone)) && msg["method"] != "initialize" {
            outcome = match self.reinitialize().await {
                Ok(()) => self.post(&msg).await,
                Err(f) => Err(f),
            };
        }
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        if is_request {
            self.inflight.lock().expect("inflight lock").remove(&id.to_string());
        }
        let failure = match outcome {
            Ok(()) => return,
            Err(f) => f,
        };
        if !is_request {
            return;
        }
        let (code, message) = match failure {
            Failure::Unreachable(why) => {
                ("unavailable", format!("ferry at {} is unreachable: {why}", self.endpoint))
            }
            Failure::SessionGone => ("unavailable", "the server lost this MCP session; retry".to_string()),
            Failure::Http(status, body) => (status_code(status), describe(status, &body)),
        };
        if msg["method"] == "tools/call" && code == "unavailable" {
            let text = format!("{code}: {message}");
            let mut result = json!({
                "content": [{"type": "text", "text": text}],
                "structuredContent": {"error": {"code": code, "message": message}},
                "isError": true,
            });
            // 2026-07-28 results say what they are; handshake-era ones have no such field.
            if msg["params"]["_meta"].get("io.modelcontextprotocol/protocolVersion").is_some() {
                result["resultType"] = json!("complete");
            }
            self.send(json!({"jsonrpc": "2.0", "id": id, "result": result}));
        } else {
            self.send(rpc_error(&id, -32603, &format!("{code}: {message}")));
        }
    }

    /// A POST of `msg` to `/mcp` with the token, accepting JSON or an SSE stream.
    fn post_request(&self, msg: &Value) -> reqwest::RequestBuilder {
        let req = self
            .http
            .post(&self.endpoint)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(msg.to_string());
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// POSTs `msg` and writes the JSON-RPC messages of the answer.
    async fn post(&self, msg: &Value) -> Result<(), Failure> {
        let session = self.session.lock().expect("session lock").clone();
        let mut req = self.post_request(msg);
        if let Some(s) = &session.id {
            req = req.header("mcp-session-id", s);
        }
        if let Some(v) = msg["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"]
            .as_str()
            .or(session.revision.as_deref())
        {
            req = req.header("mcp-protocol-version", v);
        }
        if let Some(m) = msg["method"].as_str() {
            req = req.header("mcp-method", m);
        }
        if let Some(name) = name_header(msg) {
            req = req.header("mcp-name", name);
        }
        let resp = req.send().await.map_err(|e| Failure::Unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        if status == 404 && session.id.is_some() {
            return Err(Failure::SessionGone);
        }
        if msg["method"] == "initialize"
            && let Some(id) = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok())
        {
            self.session.lock().expect("session lock").id = Some(id.to_string());
            self.generation.fetch_add(1, Ordering::Relaxed);
        }
        let is_sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("text/event-stream"));
        if !(200..300).contains(&status) {
            let body = resp.text().await.unwrap_or_default();
            if let Ok(v) = serde_json::from_str::<Value>(&body)
                && v.get("jsonrpc").is_some()
            {
                self.send(v);
                return Ok(());
            }
            return Err(Failure::Http(status, body));
        }
        if is_sse {
            self.relay_stream(resp).await.map_err(Failure::Unreachable)
        } else {
            let body = resp.bytes().await.map_err(|e| Failure::Unreachable(e.to_string()))?;
            if !body.is_empty() {
                match serde_json::from_slice::<Value>(&body) {
                    Ok(Value::Array(msgs)) => msgs.into_iter().for_each(|m| self.note_and_send(m)),
                    Ok(m) => self.note_and_send(m),
                    Err(e) => return Err(Failure::Http(status, e.to_string())),
                }
            }
            Ok(())
        }
    }

    /// Writes each `data:` message of an SSE answer until the stream ends.
    async fn relay_stream(&self, resp: reqwest::Response) -> Result<(), String> {
        let mut stream = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            buf.extend_from_slice(&chunk.map_err(|e| e.to_string())?);
            while let Some(end) = find_event_end(&buf) {
                let event: Vec<u8> = buf.drain(..end.1).collect();
                let data = sse_data(&event[..end.0]);
                if !data.trim().is_empty()
                    && let Ok(m) = serde_json::from_str::<Value>(&data)
                {
                    self.note_and_send(m);
                }
            }
        }
        Ok(())
    }

    /// Remembers the revision an `initialize` result agreed on, then writes the message.
    fn note_and_send(&self, m: Value) {
        if let Some(v) = m["result"]["protocolVersion"].as_str()
            && m["result"].get("serverInfo").is_some()
        {
            let id = {
                let mut s = self.session.lock().expect("session lock");
                s.revision = Some(v.to_string());
                s.id.clone()
            };
            if let Some(id) = id {
                self.listen(id);
            }
        }
        self.send(m);
    }

    /// Relays what the server sends on its own (resource updates) over the session's GET
    /// stream, reopened after a break, until the session changes.
    fn listen(&self, id: String) {
        let (http, endpoint, token, out) =
            (self.http.clone(), self.endpoint.clone(), self.token.clone(), self.out.clone());
        let revision = self.session.lock().expect("session lock").revision.clone();
        let (generations, mine) = (self.generation.clone(), self.generation.load(Ordering::Relaxed));
        tokio::spawn(async move {
            while generations.load(Ordering::Relaxed) == mine {
                let mut req =
                    http.get(&endpoint).header("accept", "text/event-stream").header("mcp-session-id", &id);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                if let Some(r) = &revision {
                    req = req.header("mcp-protocol-version", r);
                }
                match req.send().await {
                    Ok(resp) if resp.status().is_success() => {
                        let mut stream = resp.bytes_stream();
                        let mut buf: Vec<u8> = Vec::new();
                        while let Some(Ok(chunk)) = stream.next().await {
                            buf.extend_from_slice(&chunk);
                            while let Some(end) = find_event_end(&buf) {
                                let event: Vec<u8> = buf.drain(..end.1).collect();
                                let data = sse_data(&event[..end.0]);
                                if !data.trim().is_empty() && out.send(data).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    // The session is gone (404) or the server refuses a stream: stop.
                    Ok(resp) if resp.status().is_client_error() => return,
                    _ => {}
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Replays the client's `initialize` and `notifications/initialized` for a new session.
    async fn reinitialize(&self) -> Result<(), Failure> {
        let init = {
            let mut s = self.session.lock().expect("session lock");
            s.id = None;
            s.initialize.clone()
        };
        let Some(init) = init else { return Err(Failure::SessionGone) };
        // The replayed answer is not the client's to see: it asked once already.
        let id = self.post_quiet(&init).await?;
        self.session.lock().expect("session lock").id = Some(id.clone());
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.listen(id);
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let _ = self.post(&note).await;
        Ok(())
    }

    /// POSTs an `initialize` without relaying its answer; the new session's id.
    async fn post_quiet(&self, init: &Value) -> Result<String, Failure> {
        let resp = self.post_request(init).send().await.map_err(|e| Failure::Unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let id = resp.headers().get("mcp-session-id").and_then(|v| v.to_str().ok()).map(str::to_string);
        let _ = resp.bytes().await;
        match id {
            Some(id) if (200..300).contains(&status) => Ok(id),
            _ => Err(Failure::Http(status, "the server did not start a new session".into())),
        }
    }

    /// Ends the handshake session, if any (best effort: the server ends idle ones anyway).
    async fn end_session(&self) {
        let id = self.session.lock().expect("session lock").id.clone();
        if let Some(id) = id {
            let mut req = self.http.delete(&self.endpoint).header("mcp-session-id", id);
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), req.send()).await;
        }
    }
}

/// The end of the first complete SSE event in `buf`: (end of its lines, end with the blank line).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, i + 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The joined `data:` lines of one SSE event.
fn sse_data(event: &[u8]) -> String {
    let text = String::from_utf8_lossy(event);
    let mut data = Vec::new();
    for line in text.lines() {
        if let Some(d) = line.strip_prefix("data:") {
            data.push(d.strip_prefix(' ').unwrap_or(d));
        }
    }
    data.join("\n")
}

/// The `Mcp-Name` header the 2026-07-28 revision asks of a request naming a tool, prompt,
/// resource or task: the name as it is, or Base64-wrapped when it would not survive as a
/// header value.
fn name_header(msg: &Value) -> Option<String> {
    let key = match msg["method"].as_str()? {
        "tools/call" | "prompts/get" => "name",
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => "uri",
        "tasks/get" | "tasks/update" | "tasks/cancel" => "taskId",
        _ => return None,
    };
    let v = msg["params"][key].as_str()?;
    let plain = v.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !v.starts_with([' ', '\t'])
        && !v.ends_with([' ', '\t'])
        && !v.starts_with("=?base64?");
    if plain {
        return Some(v.to_string());
    }
    use base64::Engine;
    Some(format!("=?base64?{}?=", base64::engine::general_purpose::STANDARD.encode(v)))
}

fn rpc_error(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// The ferry error code of an HTTP refusal.
fn status_code(status: u16) -> &'static str {
    match status {
        401 => "unauthorized",
        403 => "forbidden",
        413 => "payload_too_large",
        429 => "rate_limited",
        502..=504 => "unavailable",
        _ => "bad_request",
    }
}

/// The message of a ferry error body, or the status and body as they came.
fn describe(status: u16, body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("HTTP {status}: {}", body.chars().take(200).collect::<String>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_split_and_their_data_joined() {
        let buf = b"id: 0\nretry: 3000\ndata: \n\ndata: {\"a\":1}\r\n\r\npartial";
        let (end, next) = find_event_end(buf).unwrap();
        assert_eq!(sse_data(&buf[..end]), "");
        let rest = &buf[next..];
        let (end, next) = find_event_end(rest).unwrap();
        assert_eq!(sse_data(&rest[..end]), "{\"a\":1}");
        assert_eq!(find_event_end(&rest[next..]), None);
    }
}
