//! The hot path of the stateless revision: a plain 2026-07-28 `tools/call` is answered here,
//! as one JSON message, without rmcp's per-request machinery (a message parsed twice, a
//! service and its serve loop spawned, channels, a second service built to look up the
//! tool). That machinery cost more CPU per call than the tool's own route.
//!
//! Only requests that leave nothing to judge are taken: the standard headers present once and
//! agreeing with the body, the `_meta` keys the revision requires, a known tool, no
//! `Mcp-Param-*` headers, no session. Everything else, including every malformed request,
//! goes on to rmcp, which stays the one reference for the protocol's rules and errors.

use super::Shared;
use super::tools::ToolDef;
use axum::body::Body;
use axum::http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, request::Parts};
use axum::response::Response;
use rmcp::model::{CallToolResult, JsonObject};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The one revision served statelessly.
const REVISION: &str = "2026-07-28";

/// A `tools/call` this module answers.
pub(super) struct FastCall {
    id: Value,
    def: Arc<ToolDef>,
    arguments: JsonObject,
    /// The caller's bearer token, which the route is run with.
    auth: Option<HeaderValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Message<'a> {
    jsonrpc: &'a str,
    id: Value,
    method: &'a str,
    params: Params,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    name: String,
    #[serde(default)]
    arguments: Option<JsonObject>,
    #[serde(rename = "_meta")]
    meta: JsonObject,
}

/// The JSON-RPC response, its fields in rmcp's order.
#[derive(Serialize)]
struct Reply<'a> {
    jsonrpc: &'static str,
    id: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<&'a CallToolResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a rmcp::ErrorData>,
}

/// The call in `body`, if the request is one this module takes (see the module's doc).
pub(super) fn recognise(parts: &Parts, body: &[u8], catalog: &super::tools::Catalog) -> Option<FastCall> {
    let h = &parts.headers;
    if parts.method != Method::POST
        || h.contains_key("mcp-session-id")
        || only(h, "mcp-protocol-version")? != REVISION
        || only(h, "mcp-method")? != "tools/call"
        || !only(h, CONTENT_TYPE.as_str())?.starts_with("application/json")
        || !accepts_both(only(h, ACCEPT.as_str())?)
        || h.keys().any(|k| k.as_str().starts_with("mcp-param-"))
    {
        return None;
    }
    let msg: Message = serde_json::from_slice(body).ok()?;
    let meta = &msg.params.meta;
    let well_formed = msg.jsonrpc == "2.0"
        && msg.method == "tools/call"
        && (msg.id.is_string() || msg.id.is_i64() || msg.id.is_u64())
        && only(h, "mcp-name")? == msg.params.name
        && meta.get("io.modelcontextprotocol/protocolVersion").and_then(Value::as_str) == Some(REVISION)
        && meta.get("io.modelcontextprotocol/clientCapabilities").is_some_and(Value::is_object);
    if !well_formed {
        return None;
    }
    let def = catalog.get(&msg.params.name)?.clone();
    let auth = h.get(AUTHORIZATION).cloned();
    Some(FastCall { id: msg.id, def, arguments: msg.params.arguments.unwrap_or_default(), auth })
}

/// The value of header `name` when it is sent exactly once as visible ASCII.
fn only<'h>(h: &'h HeaderMap, name: &str) -> Option<&'h str> {
    let mut values = h.get_all(name).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return None;
    }
    first.to_str().ok()
}

/// Whether `accept` lists both JSON and SSE, with no parameters to weigh.
fn accepts_both(accept: &str) -> bool {
    let types: Vec<&str> = accept.split(',').map(str::trim).collect();
    !accept.contains(';') && types.contains(&"application/json") && types.contains(&"text/event-stream")
}

/// Runs `call` and answers its JSON-RPC response. A waiting tool runs in its own task so a
/// client that hangs up cancels it (its claim returns, and what it took is released) rather
/// than dropping it mid-flight.
pub(super) async fn answer(shared: Arc<Shared>, call: FastCall) -> Response {
    let FastCall { id, def, arguments, auth } = call;
    let outcome = if def.waits {
        let cancel = CancellationToken::new();
        let on_hangup = cancel.clone().drop_guard();
        let task = tokio::spawn(async move { shared.run_tool(&def, arguments, auth, &cancel).await });
        let outcome = task.await;
        on_hangup.disarm();
        match outcome {
            Ok(r) => r,
            Err(e) => Err(rmcp::ErrorData::internal_error(format!("the tool call failed: {e}"), None)),
        }
    } else {
        shared.run_tool(&def, arguments, auth, &CancellationToken::new()).await
    };
    let (result, error) = match &outcome {
        Ok(r) => (Some(r), None),
        Err(e) => (None, Some(e)),
    };
    let reply = Reply { jsonrpc: "2.0", id: &id, result, error };
    let body = serde_json::to_vec(&reply).expect("a JSON-RPC message serializes");
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
