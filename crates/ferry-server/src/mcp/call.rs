//! One tool call: its arguments become the wrapped route's request (path, query, JSON body),
//! which runs through the server's own router in process with the caller's token, and the
//! route's answer becomes the tool's result (an error body: `isError`, never a transport fault).

use super::tools::ToolDef;
use crate::protect::{InProcess, StopWaiting};
use axum::body::Body;
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use ferry_core::{Error, ErrorCode};
use rmcp::model::{CallToolResult, ContentBlock, JsonObject};
use serde_json::{Value, json};
use tower::ServiceExt;

/// Characters escaped in a path segment or a query value.
const COMPONENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// The route's answer to one call.
pub struct Answer {
    /// Its HTTP status.
    pub status: StatusCode,
    /// Its JSON body (`{}` when it had none).
    pub body: Value,
    /// The body as the route wrote it, when it is the body's text.
    pub text: Option<String>,
}

/// Builds the route's request from the call's arguments; a missing path parameter or an
/// argument the route does not take is `validation_failed` naming it.
pub fn request(def: &ToolDef, args: JsonObject, auth: Option<&HeaderValue>) -> Result<Request<Body>, Error> {
    let mut args = args;
    let mut path = def.path.to_string();
    for name in &def.path_params {
        let value = args.remove(name).ok_or_else(|| Error::invalid(name, format!("{name} is required")))?;
        let text = scalar(name, &value)?;
        if text.is_empty() {
            return Err(Error::invalid(name, format!("{name} must not be empty")));
        }
        let encoded = percent_encoding::utf8_percent_encode(&text, COMPONENT).to_string();
        path = path.replace(&format!("{{{name}}}"), &encoded);
    }
    let mut headers = Vec::new();
    for name in &def.header_params {
        if let Some(value) = args.remove(name).filter(|v| !v.is_null()) {
            let text = scalar(name, &value)?;
            let value = HeaderValue::from_str(&text)
                .map_err(|_| Error::invalid(name, format!("{name} must be visible ASCII")))?;
            headers.push((name.clone(), value));
        }
    }
    let mut query = Vec::new();
    for name in &def.query_params {
        if let Some(value) = args.remove(name).filter(|v| !v.is_null()) {
            let text = match &value {
                Value::Array(items) => {
                    items.iter().map(|v| scalar(name, v)).collect::<Result<Vec<_>, _>>()?.join(",")
                }
                v => scalar(name, v)?,
            };
            query.push(format!("{name}={}", percent_encoding::utf8_percent_encode(&text, COMPONENT)));
        }
    }
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query.join("&"));
    }
    let body = if def.has_body {
        Some(Value::Object(args))
    } else if let Some(extra) = args.keys().next() {
        return Err(Error::invalid(extra, format!("{} takes no argument {extra}", def.tool.name)));
    } else {
        None
    };
    let mut req = in_process(def.method.clone(), &path, body.as_ref(), auth)?;
    for (name, value) in headers {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| Error::invalid(&name, e.to_string()))?;
        req.headers_mut().insert(name, value);
    }
    Ok(req)
}

/// A path or query value as text: strings as they are, numbers and booleans written out.
fn scalar(name: &str, v: &Value) -> Result<String, Error> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(Error::invalid(name, format!("{name} must be a string, a number or a boolean"))),
    }
}

/// A request for `path` made inside the server for a caller whose `/mcp` request passed the
/// guard: its bearer token goes along, and the request is marked [`InProcess`].
pub fn in_process(
    method: Method,
    path: &str,
    body: Option<&Value>,
    auth: Option<&HeaderValue>,
) -> Result<Request<Body>, Error> {
    let mut req = Request::builder().method(method).uri(path);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    if let Some(a) = auth {
        req = req.header(header::AUTHORIZATION, a.clone());
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(serde_json::to_vec(b).expect("JSON serializes")));
    let mut req = req.body(body).map_err(|e| Error::invalid("arguments", e.to_string()))?;
    req.extensions_mut().insert(InProcess);
    Ok(req)
}

/// Runs an in-process request through `router` (the server's own): its status, headers and body.
pub async fn send(router: axum::Router, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let resp = match router.oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let (parts, body) = resp.into_parts();
    (parts.status, parts.headers, axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default())
}

/// Runs `req` through `router` and reads its answer; `stop` ends a wait early.
pub async fn run(
    router: axum::Router,
    mut req: Request<Body>,
    stop: Option<tokio::sync::watch::Receiver<bool>>,
) -> Answer {
    if let Some(stop) = stop {
        req.extensions_mut().insert(StopWaiting(stop));
    }
    let (status, headers, bytes) = send(router, req).await;
    let retry = retry_after_ms(&headers);
    let mut body = if bytes.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({"text": String::from_utf8_lossy(&bytes)}))
    };
    // The route's own JSON text serves as the result's text (no second serialization), unless
    // the error gains details here.
    let mut text = (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned());
    if let (Some(ms), Some(err)) = (retry, body.get_mut("error").and_then(Value::as_object_mut)) {
        let details = err.entry("details").or_insert_with(|| json!({}));
        if let Some(d) = details.as_object_mut() {
            d.entry("retry_after_ms").or_insert(json!(ms));
            text = None;
        }
    }
    Answer { status, body, text }
}

fn retry_after_ms(h: &HeaderMap) -> Option<u64> {
    let secs: u64 = h.get(header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(secs * 1000)
}

/// The tool result of an answer: the route's JSON as `structuredContent` and as text, flagged
/// `isError` (with `<code>: <message>` as its text) when the route answered with an error.
pub fn result(answer: Answer) -> CallToolResult {
    if answer.status.is_success() {
        let text = answer.text.unwrap_or_else(|| answer.body.to_string());
        let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
        r.structured_content = Some(answer.body);
        return r;
    }
    let body = match answer.body.get("error") {
        Some(e) if e.is_object() => answer.body,
        _ => {
            json!({"error": {"code": "internal", "message": format!("the route answered {}", answer.status)}})
        }
    };
    error_with_body(body)
}

/// A tool result for an error the tool layer found itself (bad arguments).
pub fn error(e: Error) -> CallToolResult {
    error_with_body(json!({ "error": e }))
}

fn error_with_body(body: Value) -> CallToolResult {
    let e = &body["error"];
    let text =
        format!("{}: {}", e["code"].as_str().unwrap_or("internal"), e["message"].as_str().unwrap_or(""));
    let mut r = CallToolResult::error(vec![ContentBlock::text(text)]);
    r.structured_content = Some(body);
    r
}

/// The code of an error result, for metrics (`ok` for a success).
pub fn outcome(r: &CallToolResult) -> String {
    if r.is_error != Some(true) {
        return "ok".into();
    }
    let code = r.structured_content.as_ref().and_then(|b| b["error"]["code"].as_str());
    code.unwrap_or(ErrorCode::Internal.as_str()).to_string()
}
