//! The router: every route is registered through `utoipa-axum`, so the OpenAPI document at
//! `/v1/openapi.json` is generated from the same handler list that serves requests and cannot
//! miss a route.

pub mod access;
pub mod backup;
pub mod checkpoints;
pub mod convoys;
pub mod dlq;
mod doc;
pub mod events;
pub mod health;
pub mod items;
pub mod jobs;
pub mod ledger;
pub mod memory;
pub mod messages;
pub mod queues;
pub mod schedules;

use crate::AppState;
use crate::auth::{Policies, Policy, Restriction};
use crate::error::ApiError;
use axum::response::IntoResponse;
use ferry_core::Scope;
use ferry_core::{Error, ErrorCode};
use utoipa::OpenApi;
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

#[derive(OpenApi)]
#[openapi(info(title = "ferry", description = "Durable job queue and coordination server"))]
struct ApiDoc;

/// The router under construction, with what each route asks of its caller. Routes are added
/// only through [`Routes::add`] and [`Routes::public`], so none exists without a declared
/// scope and restriction.
pub struct Routes {
    router: OpenApiRouter<AppState>,
    policies: Policies,
}

impl Routes {
    /// Adds one handler's route (from `routes!`), which needs `scope` and checks a restricted
    /// token as `restriction` says.
    pub fn add(self, route: UtoipaMethodRouter<AppState>, scope: Scope, restriction: Restriction) -> Routes {
        self.declare(route, Policy::needs(scope, restriction))
    }

    /// Adds a route anyone may call, token or not (the liveness probe).
    pub fn public(self, route: UtoipaMethodRouter<AppState>) -> Routes {
        self.declare(route, Policy::PUBLIC)
    }

    fn declare(mut self, route: UtoipaMethodRouter<AppState>, policy: Policy) -> Routes {
        assert_eq!(route.1.paths.len(), 1, "one handler per declaration, so its policy is unambiguous");
        for (path, item) in &route.1.paths {
            let methods = doc::methods(item);
            assert_eq!(methods.len(), 1, "{path}: one handler per declaration");
            for m in methods {
                self.policies.declare(m, path, policy);
            }
        }
        self.router = self.router.routes(route);
        self
    }
}

/// Default page size of the lists that take `?limit=`.
const DEFAULT_PAGE: usize = 100;

/// A list's page size: `limit` (default 100), 1..=`limits.max_page_size` (422 past it).
fn page_size(st: &AppState, limit: Option<usize>) -> Result<usize, ferry_core::Error> {
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    if limit == 0 || limit > st.limits.max_page_size {
        return Err(ferry_core::Error::invalid(
            "limit",
            format!("limit must be 1..={}", st.limits.max_page_size),
        ));
    }
    Ok(limit)
}

/// Every route, each with its OpenAPI operation, its scope and its restriction (declared in
/// its domain's file).
fn routes() -> Routes {
    let r = Routes { router: OpenApiRouter::with_openapi(ApiDoc::openapi()), policies: Policies::default() };
    let r = jobs::routes(r);
    let r = queues::routes(r);
    let r = dlq::routes(r);
    let r = schedules::routes(r);
    let r = events::routes(r);
    let r = access::routes(r);
    let r = items::routes(r);
    let r = messages::routes(r);
    let r = convoys::routes(r);
    let r = ledger::routes(r);
    let r = checkpoints::routes(r);
    let r = memory::routes(r);
    let r = backup::routes(r);
    health::routes(r)
}

/// The OpenAPI document as served: JSON text, made once at startup.
pub struct Document(pub String);

/// Builds the HTTP router and its OpenAPI document (with the server's configured limits).
pub fn router(state: AppState) -> (axum::Router, serde_json::Value) {
    let state_origins = state.cors_origins.clone();
    let Routes { router, mut policies } = routes();
    let (router, api) = router.with_state(state.clone()).split_for_parts();
    let doc = doc::complete(&api, &state.limits);
    let text = serde_json::to_string(&doc).expect("the OpenAPI document serializes");
    // `/mcp` stays out of the document: it is a protocol endpoint, not a REST route.
    let mcp = state.mcp.enabled.then(|| crate::mcp::Endpoint::new(state.clone(), &doc, &policies));
    let router = match &mcp {
        Some(ep) => {
            for m in [axum::http::Method::GET, axum::http::Method::POST, axum::http::Method::DELETE] {
                policies.declare(m, "/mcp", Policy::ANY_TOKEN);
            }
            let methods = axum::routing::get(crate::mcp::endpoint)
                .post(crate::mcp::endpoint)
                .delete(crate::mcp::endpoint);
            router.merge(axum::Router::new().route("/mcp", methods).with_state(ep.clone()))
        }
        None => router,
    };
    let router = router
        .layer(axum::Extension(std::sync::Arc::new(Document(text))))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::protect::guard))
        // Outside the guard, which reads each request's policy from it.
        .layer(axum::Extension(std::sync::Arc::new(policies)))
        .layer(axum::middleware::from_fn_with_state(state, crate::observe::observe))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError(Error::internal("the server hit a bug handling this request")).into_response()
        }));
    let router = with_cors(router, &state_origins);
    if let Some(ep) = &mcp {
        ep.attach(router.clone());
    }
    (router, doc)
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use serde_json::{Value, json};
    use tower::ServiceExt;

    /// The document lists the wire names of the enums declared by `named_enum!` (a proc-macro
    /// derive that did not see a macro-made `serde(rename)` would list the Rust names).
    #[test]
    fn documented_enums_use_their_wire_names() {
        let (_, api) = routes().router.split_for_parts();
        let doc = serde_json::to_value(&api).unwrap();
        let names = |schema: &str| doc["components"]["schemas"][schema]["enum"].clone();
        let wire = |all: Vec<&str>| serde_json::json!(all);
        assert_eq!(names("EventType"), wire(ferry_core::EventType::ALL.iter().map(|t| t.as_str()).collect()));
        assert_eq!(
            names("SubjectKind"),
            wire(ferry_core::SubjectKind::ALL.iter().map(|k| k.as_str()).collect())
        );
        assert_eq!(names("Scope"), wire(Scope::ALL.iter().map(|s| s.as_str()).collect()));
    }

    /// Two schemas of one name would be merged silently (the last wins): the item's artifact
    /// and the episode's keep their own names and shapes.
    #[test]
    fn schemas_of_one_name_are_not_merged() {
        let (_, api) = routes().router.split_for_parts();
        let doc = serde_json::to_value(&api).unwrap();
        let props = |name: &str| doc["components"]["schemas"][name]["properties"].clone();
        assert!(props("Artifact").get("meta").is_some(), "the item's artifact");
        assert!(props("EpisodeArtifact").get("kind").is_some(), "the episode's artifact");
    }

    /// Every operation in the OpenAPI document has a declared scope and restriction, and
    /// nothing is declared that the document does not describe.
    #[test]
    fn every_documented_route_declares_its_scope() {
        let Routes { router, policies } = routes();
        let (_, api) = router.split_for_parts();
        let mut operations = 0;
        for (path, item) in &api.paths.paths {
            for method in doc::methods(item) {
                assert!(policies.is_declared(&method, path), "{method} {path} has no declared scope");
                operations += 1;
            }
        }
        assert_eq!(policies.all().count(), operations, "a declared route is missing from the document");
        assert!(operations >= 44, "the document lists every route ({operations})");
        let healthz = policies.of(&axum::http::Method::GET, Some("/healthz"));
        assert_eq!(healthz, Policy::PUBLIC, "only the liveness probe is public");
        let public = policies.all().filter(|p| p.public).count();
        assert_eq!(public, 1);
    }

    struct App {
        router: axum::Router,
        _dir: tempfile::TempDir,
        _stop: tokio::sync::watch::Sender<bool>,
    }

    async fn app() -> App {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config { data_dir: dir.path().to_path_buf(), ..Default::default() };
        let clock: std::sync::Arc<dyn ferry_core::Clock> = std::sync::Arc::new(ferry_core::SystemClock);
        let (store, _) = crate::open_store(&config, clock).await.unwrap();
        let (stop, rx) = tokio::sync::watch::channel(false);
        App { router: router(AppState::new(store, &config, rx)).0, _dir: dir, _stop: stop }
    }

    async fn call(app: &App, method: &str, uri: &str, body: Option<&str>) -> (u16, Value) {
        let mut req = Request::builder().method(method).uri(uri).header("host", "127.0.0.1");
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).unwrap();
        let resp = app.router.clone().oneshot(req).await.unwrap();
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn enqueue(app: &App, job: Value) -> String {
        let (status, body) = call(app, "POST", "/v1/jobs", Some(&job.to_string())).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn cancel_takes_no_body_null_or_an_object() {
        let app = app().await;
        for body in [None, Some("null"), Some(" null "), Some("{}"), Some(r#"{"reason":"done"}"#)] {
            let id = enqueue(&app, json!({"queue": "q"})).await;
            let (status, out) = call(&app, "POST", &format!("/v1/jobs/{id}/cancel"), body).await;
            assert_eq!((status, out["state"].as_str()), (200, Some("cancelled")), "{body:?}: {out}");
        }
        let id = enqueue(&app, json!({"queue": "q"})).await;
        let (status, _) = call(&app, "POST", &format!("/v1/jobs/{id}/cancel"), Some("[]")).await;
        assert_eq!(status, 400, "an array is not a cancel body");
    }

    #[tokio::test]
    async fn integers_may_be_whole_floats() {
        let app = app().await;
        enqueue(&app, json!({"queue": "q", "priority": -5.0, "max_attempts": 3e0, "delay_ms": 0.0})).await;
        let (status, out) =
            call(&app, "POST", "/v1/queues/q/claim", Some(r#"{"worker":"w","max":2.0,"lease_ms":1e4}"#))
                .await;
        assert_eq!(status, 200, "{out}");
        assert_eq!(out["jobs"][0]["priority"], -5);
        let (status, out) = call(&app, "PUT", "/v1/queues/q/limits", Some(r#"{"max_running":3.0}"#)).await;
        assert_eq!((status, &out["limits"]["max_running"]), (200, &json!(3)), "{out}");
        for bad in [r#"{"max_running":1.5}"#, r#"{"max_running":4294967296.0}"#, r#"{"max_running":-1}"#] {
            let (status, out) = call(&app, "PUT", "/v1/queues/q/limits", Some(bad)).await;
            assert_eq!(status, 400, "{bad}: {out}");
        }
    }

    #[tokio::test]
    async fn queue_depth_past_int64_is_refused() {
        let app = app().await;
        let (status, out) =
            call(&app, "PUT", "/v1/queues/q/limits", Some(r#"{"max_depth":9223372036854775808}"#)).await;
        assert_eq!((status, out["error"]["field"].as_str()), (422, Some("max_depth")), "{out}");
        let (status, out) =
            call(&app, "PUT", "/v1/queues/q/limits", Some(r#"{"max_depth":9223372036854775807}"#)).await;
        assert_eq!((status, &out["limits"]["max_depth"]), (200, &json!(i64::MAX)), "{out}");
    }

    #[tokio::test]
    async fn the_stream_checks_wait_and_limit_like_the_long_poll() {
        let app = app().await;
        for (query, field) in [("wait_ms=30001", "wait_ms"), ("wait_ms=-1", "wait_ms"), ("limit=0", "limit")]
        {
            for path in ["/v1/events", "/v1/events/stream"] {
                let (status, out) = call(&app, "GET", &format!("{path}?{query}"), None).await;
                assert_eq!(
                    (status, out["error"]["field"].as_str()),
                    (422, Some(field)),
                    "{path}?{query}: {out}"
                );
            }
        }
    }

    #[tokio::test]
    async fn names_are_counted_in_characters() {
        let app = app().await;
        let e = "é";
        enqueue(&app, json!({"queue": "q", "unique_key": e.repeat(256), "tags": [e.repeat(64)]})).await;
        for job in [
            json!({"queue": "q", "unique_key": e.repeat(257)}),
            json!({"queue": "q", "tags": [e.repeat(65)]}),
        ] {
            let (status, out) = call(&app, "POST", "/v1/jobs", Some(&job.to_string())).await;
            assert_eq!(status, 422, "{out}");
        }
        let claim = |w: String| json!({"worker": w}).to_string();
        assert_eq!(call(&app, "POST", "/v1/queues/q/claim", Some(&claim(e.repeat(128)))).await.0, 200);
        assert_eq!(call(&app, "POST", "/v1/queues/q/claim", Some(&claim(e.repeat(129)))).await.0, 422);
        let token = |n: String| json!({"name": n, "scopes": ["read"]}).to_string();
        let (status, out) = call(&app, "POST", "/v1/tokens", Some(&token(e.repeat(129)))).await;
        assert_eq!((status, out["error"]["field"].as_str()), (422, Some("name")), "{out}");
        assert_eq!(call(&app, "POST", "/v1/tokens", Some(&token(e.repeat(128)))).await.0, 201);
    }

    #[tokio::test]
    async fn a_dead_job_whose_unique_key_is_taken_again_stays_dead_on_replay() {
        let app = app().await;
        let dead = enqueue(&app, json!({"queue": "q", "unique_key": "k", "max_attempts": 1})).await;
        let (_, claimed) = call(&app, "POST", "/v1/queues/q/claim", Some(r#"{"worker":"w"}"#)).await;
        let fail = json!({"lease": claimed["jobs"][0]["lease"], "retry": false}).to_string();
        assert_eq!(call(&app, "POST", &format!("/v1/jobs/{dead}/fail"), Some(&fail)).await.0, 200);
        let holder = enqueue(&app, json!({"queue": "q", "unique_key": "k"})).await;
        for selector in [json!({"ids": [dead]}), json!({"queue": "q"})] {
            let (status, out) = call(&app, "POST", "/v1/dlq/replay", Some(&selector.to_string())).await;
            assert_eq!((status, out["replayed"].as_u64()), (200, Some(0)), "{selector}: {out}");
        }
        for (id, state) in [(dead, "dead"), (holder, "ready")] {
            let (_, job) = call(&app, "GET", &format!("/v1/jobs/{id}"), None).await;
            assert_eq!(job["state"], state, "nothing changed: {job}");
        }
    }

    #[tokio::test]
    async fn the_served_document_is_the_completed_one() {
        let app = app().await;
        let (status, doc) = call(&app, "GET", "/v1/openapi.json", None).await;
        assert_eq!(status, 200);
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        assert_eq!(doc["paths"]["/healthz"]["get"]["security"], json!([]));
        assert!(doc["components"]["schemas"]["JobTemplate"].is_object());
        assert!(doc["paths"]["/v1/jobs/{id}/cancel"]["post"]["responses"]["404"].is_object());
    }
}
