//! The edge of every request, before it may hold a request slot: cross-site refusal, the
//! media type of bodies, NUL in the URL, and the body itself, read whole within its time limit
//! and checked for depth and NUL characters (`ferry_core::json_text`).
//!
//! A request that has not finished sending its body holds nothing but its connection (bounded
//! by `limits.max_connections`), so slow clients cannot starve the request slots.

use crate::AppState;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Method, header};
use ferry_core::{Error, ErrorCode};
use std::time::Duration;

/// Refuses a request a browser sent on behalf of another site: an `Origin` that is not this
/// server's own (nor listed in `cors_origins`), or `Sec-Fetch-Site: cross-site`. Requests
/// without these headers (curl, SDKs) are not browsers' and pass.
pub fn check_origin(headers: &HeaderMap, cors_origins: &[String]) -> Result<(), Error> {
    let origin = headers.get(header::ORIGIN).map(|v| v.to_str().unwrap_or("null"));
    if let Some(o) = origin
        && cors_origins.iter().any(|c| c == o || c == "*")
    {
        return Ok(());
    }
    let cross_site = headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site");
    let foreign = origin.is_some_and(|o| {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        let authority = o.split_once("://").map(|(_, a)| a.trim_end_matches('/'));
        authority.is_none_or(|a| !a.eq_ignore_ascii_case(host))
    });
    if cross_site || foreign {
        return Err(Error::new(
            ErrorCode::Forbidden,
            "cross-site request refused: the Origin is not this server's (list it in cors_origins to allow it)",
        ));
    }
    Ok(())
}

/// While auth is off, refuses a request for a host name other than `localhost` or those in
/// `server_names` (IP addresses always pass): a page served from a name the attacker controls,
/// re-pointed at 127.0.0.1 (DNS rebinding), would otherwise be this server's own origin.
pub fn check_host(req: &Request, auth_on: bool, server_names: &[String]) -> Result<(), Error> {
    if auth_on {
        return Ok(());
    }
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).or_else(|| req.uri().host());
    let Some(host) = host else { return Ok(()) };
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    let known = name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || server_names.iter().any(|n| n.eq_ignore_ascii_case(name));
    if known {
        return Ok(());
    }
    Err(Error::new(
        ErrorCode::Forbidden,
        format!(
            "requests for host {name:?} are refused while auth is off (a guard against DNS rebinding): \
             list it in server_names, or turn auth on"
        ),
    ))
}

/// Whether the request says it carries a body.
pub fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
}

/// 415 unless a request with a body says it is JSON (`application/json`, or `+json`), which a
/// cross-site form or `text/plain` fetch cannot say without a CORS preflight.
pub fn check_media_type(headers: &HeaderMap) -> Result<(), Error> {
    if !has_body(headers) {
        return Ok(());
    }
    let essence = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    match essence.as_deref() {
        Some("application/json") => Ok(()),
        Some(t) if t.starts_with("application/") && t.ends_with("+json") => Ok(()),
        other => Err(Error::new(
            ErrorCode::UnsupportedMediaType,
            format!(
                "a request body must be JSON with Content-Type: application/json (got {})",
                other.unwrap_or("none")
            ),
        )),
    }
}

/// 414 and 431 (with the JSON error body, which the HTTP layer's own refusals lack) for a
/// request target or headers over their limits.
pub fn check_sizes(req: &Request, limits: &ferry_core::Limits) -> Result<(), Error> {
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > limits.max_uri_bytes {
        return Err(Error::new(
            ErrorCode::UriTooLong,
            format!(
                "the request target is {uri_len} bytes; the limit is {} (limits.max_uri_bytes)",
                limits.max_uri_bytes
            ),
        ));
    }
    let header_len: usize = req.headers().iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum();
    if header_len > limits.max_header_bytes {
        return Err(Error::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "the request headers are {header_len} bytes; the limit is {} (limits.max_header_bytes)",
                limits.max_header_bytes
            ),
        ));
    }
    Ok(())
}

/// 422 when the path or query string holds an encoded NUL, which no backend stores.
pub fn check_url(uri: &axum::http::Uri) -> Result<(), Error> {
    let has_nul = |s: &str| s.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1] == b'0' && w[2] == b'0');
    if has_nul(uri.path()) {
        return Err(Error::invalid("path", "the path must not contain NUL characters (%00)"));
    }
    if uri.query().is_some_and(has_nul) {
        return Err(Error::invalid("query", "the query string must not contain NUL characters (%00)"));
    }
    Ok(())
}

/// Reads the whole body within `body_read_timeout_ms` and the size limit, checks its JSON
/// text, and gives the request back with the body in memory.
pub async fn buffer_body(st: &AppState, req: Request) -> Result<Request, Error> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS)
        && !has_body(req.headers())
    {
        return Ok(req);
    }
    let limits = &st.limits;
    let (parts, body) = req.into_parts();
    let limit = crate::error::body_limit(&parts.method, parts.uri.path(), limits);
    let read = crate::error::read_body_of(&parts.headers, body, limit);
    let bytes = tokio::time::timeout(Duration::from_millis(limits.body_read_timeout_ms), read)
        .await
        .map_err(|_| {
            Error::new(
                ErrorCode::RequestTimeout,
                format!("the request body did not arrive within {} ms", limits.body_read_timeout_ms),
            )
        })??;
    ferry_core::json_text::check(&bytes, limits.max_json_depth)?;
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn origins_other_than_the_servers_own_are_refused_unless_listed() {
        let none: Vec<String> = Vec::new();
        assert!(check_origin(&headers(&[("host", "127.0.0.1:7700")]), &none).is_ok());
        let own = headers(&[("host", "127.0.0.1:7700"), ("origin", "http://127.0.0.1:7700")]);
        assert!(check_origin(&own, &none).is_ok());
        let evil = headers(&[("host", "127.0.0.1:7700"), ("origin", "http://evil.example")]);
        assert_eq!(check_origin(&evil, &none).unwrap_err().code, ErrorCode::Forbidden);
        assert!(check_origin(&evil, &["http://evil.example".to_string()]).is_ok());
        let null = headers(&[("host", "127.0.0.1:7700"), ("origin", "null")]);
        assert!(check_origin(&null, &none).is_err());
        let fetch = headers(&[("host", "127.0.0.1:7700"), ("sec-fetch-site", "cross-site")]);
        assert!(check_origin(&fetch, &none).is_err());
    }

    #[test]
    fn unknown_host_names_are_refused_while_auth_is_off() {
        let req = |host: &'static str| {
            axum::http::Request::builder().uri("/v1/jobs").header("host", host).body(Body::empty()).unwrap()
        };
        let names = vec!["ferry.internal".to_string()];
        for ok in ["127.0.0.1:7700", "localhost:7700", "[::1]:7700", "10.0.0.5", "FERRY.internal:80"] {
            assert!(check_host(&req(ok), false, &names).is_ok(), "{ok}");
        }
        assert_eq!(
            check_host(&req("evil.example:7700"), false, &names).unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert!(check_host(&req("evil.example:7700"), true, &names).is_ok(), "a token guards it then");
    }

    #[test]
    fn bodies_must_be_json() {
        assert!(check_media_type(&headers(&[])).is_ok());
        assert!(
            check_media_type(&headers(&[("content-length", "0"), ("content-type", "text/plain")])).is_ok()
        );
        let plain = headers(&[("content-length", "2"), ("content-type", "text/plain")]);
        assert_eq!(check_media_type(&plain).unwrap_err().code, ErrorCode::UnsupportedMediaType);
        assert!(check_media_type(&headers(&[("content-length", "2")])).is_err());
        let json = headers(&[("content-length", "2"), ("content-type", "Application/JSON; charset=utf-8")]);
        assert!(check_media_type(&json).is_ok());
        let chunked =
            headers(&[("transfer-encoding", "chunked"), ("content-type", "application/merge-patch+json")]);
        assert!(check_media_type(&chunked).is_ok());
    }

    #[test]
    fn encoded_nul_in_the_url_is_refused() {
        let uri = |s: &str| s.parse::<axum::http::Uri>().unwrap();
        assert!(check_url(&uri("/v1/jobs?queue=a")).is_ok());
        assert_eq!(check_url(&uri("/v1/jobs?queue=a%00")).unwrap_err().field.as_deref(), Some("query"));
        assert_eq!(check_url(&uri("/v1/schedules/a%00b")).unwrap_err().field.as_deref(), Some("path"));
    }
}
