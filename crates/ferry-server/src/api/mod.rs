//! The router: every route is registered through `utoipa-axum`, so the OpenAPI document at
//! `/v1/openapi.json` is generated from the same handler list that serves requests and cannot
//! miss a route.

pub mod access;
pub mod dlq;
mod doc;
pub mod events;
pub mod health;
pub mod jobs;
pub mod queues;
pub mod schedules;

use crate::AppState;
use crate::error::ApiError;
use axum::response::IntoResponse;
use ferry_core::{Error, ErrorCode};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

#[derive(OpenApi)]
#[openapi(info(title = "ferry", description = "Durable job queue and coordination server"))]
struct ApiDoc;

/// Builds the HTTP router and its OpenAPI document.
pub fn router(state: AppState) -> (axum::Router, utoipa::openapi::OpenApi) {
    let state_origins = state.cors_origins.clone();
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(jobs::enqueue, jobs::list))
        .routes(routes!(jobs::get))
        .routes(routes!(jobs::claim))
        .routes(routes!(jobs::heartbeat))
        .routes(routes!(jobs::complete))
        .routes(routes!(jobs::fail))
        .routes(routes!(jobs::release))
        .routes(routes!(jobs::cancel))
        .routes(routes!(jobs::complete_batch))
        .routes(routes!(jobs::fail_batch))
        .routes(routes!(jobs::import))
        .routes(routes!(queues::list))
        .routes(routes!(queues::pause))
        .routes(routes!(queues::resume))
        .routes(routes!(dlq::list))
        .routes(routes!(dlq::replay))
        .routes(routes!(dlq::purge))
        .routes(routes!(schedules::create, schedules::list))
        .routes(routes!(schedules::get, schedules::patch, schedules::delete))
        .routes(routes!(schedules::pause))
        .routes(routes!(schedules::resume))
        .routes(routes!(events::poll))
        .routes(routes!(events::stream))
        .routes(routes!(events::ws))
        .routes(routes!(access::create_token, access::list_tokens))
        .routes(routes!(access::revoke_token))
        .routes(routes!(access::set_queue_limits, access::get_queue_limits))
        .routes(routes!(access::workers))
        .routes(routes!(access::create_host, access::list_hosts))
        .routes(routes!(access::delete_host))
        .routes(routes!(health::metrics))
        .routes(routes!(health::stats))
        .routes(routes!(health::advice))
        .routes(routes!(health::advice_history))
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::server_info))
        .routes(routes!(health::openapi))
        .with_state(state.clone())
        .split_for_parts();
    let mut api = api;
    doc::complete(&mut api);
    let doc = api.clone();
    let router = router
        .layer(axum::Extension(std::sync::Arc::new(doc)))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::protect::guard))
        .layer(axum::middleware::from_fn_with_state(state, crate::observe::observe))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError(Error::internal("the server hit a bug handling this request")).into_response()
        }));
    (with_cors(router, &state_origins), api)
}

/// Lets the browser origins listed in `cors_origins` call the API (preflights included);
/// without a list no CORS header is sent and browsers keep other sites out.
fn with_cors(router: axum::Router, origins: &[String]) -> axum::Router {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    let list: Vec<axum::http::HeaderValue> = origins.iter().filter_map(|o| o.parse().ok()).collect();
    if list.is_empty() {
        return router;
    }
    let allow = if origins.iter().any(|o| o == "*") { AllowOrigin::any() } else { AllowOrigin::list(list) };
    router
        .layer(CorsLayer::new().allow_origin(allow).allow_methods(Any).allow_headers(Any).expose_headers(Any))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError(Error::new(ErrorCode::NotFound, format!("no route {}", uri.path())))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> impl IntoResponse {
    let body = ferry_core::wire::ErrorBody {
        error: Error::new(ErrorCode::BadRequest, format!("{method} is not allowed on {}", uri.path())),
    };
    (axum::http::StatusCode::METHOD_NOT_ALLOWED, axum::Json(body))
}
