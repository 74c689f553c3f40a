//! Completes the generated OpenAPI document with what every route shares, so that it lists
//! every status a route can answer: the refusals of the request path (`protect::guard`,
//! `edge.rs`, `auth.rs`) apply to all routes alike and are added here once, not per handler.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, ResponseBuilder};

/// Statuses any guarded route can answer, with what they mean.
const EVERY_ROUTE: &[(&str, &str)] = &[
    ("401", "unauthorized: a valid API token is required"),
    ("403", "forbidden: the token lacks the scope or queue, or a cross-site request"),
    ("414", "uri_too_long: the request target is over limits.max_uri_bytes"),
    ("422", "validation_failed: a parameter is invalid (the field is named)"),
    ("431", "headers_too_large: the headers are over limits.max_header_bytes"),
    ("429", "rate_limited or queue_full: retry after Retry-After seconds"),
    ("503", "server_saturated, circuit_open or unavailable: retry after Retry-After seconds"),
];

/// Statuses a route with a request body can answer besides.
const BODY_ROUTES: &[(&str, &str)] = &[
    ("400", "bad_request: malformed JSON or a wrong type"),
    ("408", "request_timeout: the body did not arrive within limits.body_read_timeout_ms"),
    ("413", "payload_too_large: over a size limit (the field is named)"),
    ("415", "unsupported_media_type: a body must be Content-Type: application/json"),
];

/// Statuses that carry `Retry-After`.
const RETRY: [&str; 2] = ["429", "503"];

fn error_response(status: &str, description: &str) -> RefOr<utoipa::openapi::Response> {
    let mut r = ResponseBuilder::new()
        .description(description)
        .content("application/json", Content::new(Some(Ref::from_schema_name("ErrorBody"))));
    if RETRY.contains(&status) {
        let seconds = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0));
        r = r.header(
            "Retry-After",
            HeaderBuilder::new()
                .schema(Some(seconds))
                .description(Some("seconds to wait before retrying"))
                .build(),
        );
    }
    RefOr::T(r.build())
}

fn complete_operation(op: &mut Operation) {
    let mut add = |list: &[(&str, &str)]| {
        for (status, description) in list {
            op.responses
                .responses
                .entry((*status).to_string())
                .or_insert_with(|| error_response(status, description));
        }
    };
    add(EVERY_ROUTE);
    if op.request_body.is_some() {
        add(BODY_ROUTES);
    }
}

/// Adds the shared refusals to every operation but `/healthz`, which passes no guard.
pub fn complete(doc: &mut OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        if path == "/healthz" {
            continue;
        }
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
        {
            complete_operation(op);
        }
    }
}
