//! HTTP face of errors and input: every failure becomes `{"error":{"code","message","field"}}`
//! with its status, and request bodies and query strings are parsed here, with the path of the
//! offending field and with the body limit enforced while streaming.

use crate::AppState;
use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use ferry_core::wire::ErrorBody;
use ferry_core::{Error, ErrorCode};
use serde::de::DeserializeOwned;

/// A ferry error on its way out as an HTTP response.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if self.0.code == ErrorCode::ServerSaturated {
            // Load shed on purpose and counted in `ferry_http_requests_total`; a warning per
            // refusal would add a log flood to the overload it answers.
            tracing::debug!(code = self.0.code.as_str(), message = %self.0.message, "request shed");
        } else if status.is_server_error() {
            tracing::warn!(code = self.0.code.as_str(), message = %self.0.message, "request failed");
        }
        let code = self.0.code;
        let wait_s = self
            .0
            .details
            .as_ref()
            .and_then(|d| d.get("retry_after_ms"))
            .and_then(|v| v.as_i64())
            .map_or(1, |ms| ((ms + 999) / 1000).max(1));
        let retry = matches!(
            code,
            ErrorCode::Unavailable
                | ErrorCode::RateLimited
                | ErrorCode::QueueFull
                | ErrorCode::ServerSaturated
                | ErrorCode::CircuitOpen
        );
        // A refusal by policy (the ledger's writes while its balances are unverified) is not a
        // storage failure: it must not feed the circuit breaker.
        let deliberate = self
            .0
            .details
            .as_ref()
            .is_some_and(|d| d.get("reason").and_then(|r| r.as_str()) == Some("ledger_unverified"));
        let mut resp = (status, Json(ErrorBody { error: self.0 })).into_response();
        // The protection layer reads the code: storage failures feed the circuit breaker.
        if !deliberate {
            resp.extensions_mut().insert(code);
        }
        if retry {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait_s));
        }
        // RFC 9110: a 401 names the scheme that would pass (MCP clients read it too).
        if code == ErrorCode::Unauthorized {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"ferry\""));
        }
        resp
    }
}

/// Result type of every handler.
pub type ApiResult<T> = Result<T, ApiError>;

/// Parses JSON with the path of the failing field: syntax and type errors are 400, a missing
/// required field is 422. Text after the JSON value is malformed input, not ignored.
pub fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8], prefix: &str) -> Result<T, Error> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let mut path = e.path().to_string();
        // A segment the parser could not name (a key cut off by a syntax error) prints as `?`:
        // the field is the part before it, or none.
        if let Some(unnamed) = path.find('?') {
            path.truncate(unnamed);
            while path.ends_with('.') && path.len() > 1 {
                path.pop();
            }
            if path.is_empty() {
                path.push('.');
            }
        }
        let inner = e.into_inner();
        let msg = inner.to_string();
        let missing = inner.is_data() && msg.starts_with("missing field");
        let mut field = match (prefix, path.as_str()) {
            ("", ".") => None,
            ("", p) => Some(p.to_string()),
            (pre, ".") => Some(pre.to_string()),
            (pre, p) if p.starts_with('[') => Some(format!("{pre}{p}")),
            (pre, p) => Some(format!("{pre}.{p}")),
        };
        if missing && let Some(name) = msg.split('`').nth(1) {
            // The path names the object; the missing key is the field.
            field = Some(match field {
                Some(f) => format!("{f}.{name}"),
                None => name.to_string(),
            });
        }
        let code = if missing { ErrorCode::ValidationFailed } else { ErrorCode::BadRequest };
        let message =
            if inner.is_syntax() || inner.is_eof() { format!("malformed JSON: {msg}") } else { msg };
        Error { code, message, field, position: None, details: None }
    })?;
    de.end().map_err(|e| {
        Error::new(ErrorCode::BadRequest, format!("malformed JSON: {e} (text after the JSON value)"))
    })?;
    Ok(value)
}

/// Every request body is read as an [`Obj`], so an array of the fields in order is refused.
pub use ferry_core::wire::Obj;

/// Reads the whole body, refusing (413) as soon as it passes the limit: a declared
/// Content-Length over the limit is refused before reading, a streamed body is cut off.
pub async fn read_body(req: Request, limit: usize) -> Result<axum::body::Bytes, Error> {
    let (parts, body) = req.into_parts();
    read_body_of(&parts.headers, body, limit).await
}

/// [`read_body`] for a request already split into its parts.
pub async fn read_body_of(
    headers: &axum::http::HeaderMap,
    body: axum::body::Body,
    limit: usize,
) -> Result<axum::body::Bytes, Error> {
    let too_large = || Error::too_large("body", format!("request body is over the {limit}-byte limit"));
    if let Some(len) =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        && len > limit
    {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|_| too_large())
}

/// A JSON body of `T`; an empty body is `T::default()` when `T` allows it (see [`OptionalJson`]).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state.limits.max_request_bytes).await?;
        let Obj(value) = parse_json(&bytes, "")?;
        Ok(JsonBody(value))
    }
}

/// A JSON body of a checkpoint write route, whose size limit is
/// `limits.max_checkpoint_request_bytes` instead of `limits.max_request_bytes`.
pub struct CheckpointBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for CheckpointBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state.limits.max_checkpoint_request_bytes).await?;
        let Obj(value) = parse_json(&bytes, "")?;
        Ok(CheckpointBody(value))
    }
}

/// The body of `POST /v1/memory/episodes`, whose size limit is `limits.max_episode_bytes`.
pub struct EpisodeBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for EpisodeBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state.limits.max_episode_bytes).await?;
        let Obj(value) = parse_json(&bytes, "")?;
        Ok(EpisodeBody(value))
    }
}

/// The body limit of a request: the checkpoint write routes and the episode route have their own.
pub fn body_limit(method: &axum::http::Method, path: &str, limits: &ferry_core::Limits) -> usize {
    let checkpoint_write = path.starts_with("/v1/threads/")
        && path.contains("/checkpoints/")
        && (*method == axum::http::Method::PUT || *method == axum::http::Method::POST);
    if checkpoint_write {
        limits.max_checkpoint_request_bytes
    } else if path == "/v1/memory/episodes" && *method == axum::http::Method::POST {
        limits.max_episode_bytes
    } else {
        limits.max_request_bytes
    }
}

/// A JSON body that may be absent (empty, or JSON `null`), standing for `T::default()`.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state.limits.max_request_bytes).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) || bytes.trim_ascii() == b"null" {
            return Ok(OptionalJson(T::default()));
        }
        let Obj(value) = parse_json(&bytes, "")?;
        Ok(OptionalJson(value))
    }
}

/// Path parameters of `T`; an undecodable segment is a JSON error: 422 for a queue name,
/// 404 for anything else (a job id that cannot be decoded names no job).
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state).await.map(|p| ApiPath(p.0)).map_err(|e| {
            let text = e.body_text();
            ApiError(if text.contains("`queue`") {
                Error::invalid("queue", format!("bad queue name in the path: {text}"))
            } else {
                Error::new(ErrorCode::NotFound, format!("no such resource: {text}"))
            })
        })
    }
}

/// Query-string parameters of `T`; a malformed query is a JSON 400.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state).await.map(|q| ApiQuery(q.0)).map_err(
            |e| ApiError(Error::new(ErrorCode::BadRequest, format!("bad query string: {}", e.body_text()))),
        )
    }
}
