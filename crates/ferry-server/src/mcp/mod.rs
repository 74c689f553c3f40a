//! `/mcp`: the Model Context Protocol endpoint, so agents use ferry as tools with no glue code.
//!
//! Built on the official SDK (`rmcp`'s Streamable HTTP service): the 2026-07-28 revision
//! statelessly, and the `initialize` handshake of 2025-11-25 and 2025-06-18 with sessions kept
//! on this node. `/mcp` passes the same guard as `/v1` (auth with any valid token, rate limit,
//! body size, `Origin` and `Host`); each tool call then runs its route through the server's
//! own router in process with the caller's token ([`call`]), so scopes, restrictions,
//! validation, events and metrics are the API's. What it deliberately does not do: keep
//! sessions across nodes (a load balancer keeps them sticky), or OAuth.

mod call;
mod fast;
mod resources;
pub mod tools;

use crate::AppState;
use crate::auth::Principal;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use ferry_core::{Error, ErrorCode};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, Implementation, JsonObject,
    ListResourceTemplatesResult, ListResourcesResult, ListToolsResult, PaginatedRequestParams,
    ProtocolVersion, ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities, ServerConfig,
    SubscriptionFilter,
};
use rmcp::service::{RequestContext, SubscriptionContext};
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::Value;
use std::borrow::Cow;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tools::ToolDef;
use tower::ServiceExt;

/// The revisions served: the current one (stateless) and the two handshake ones before it.
const REVISIONS: &[ProtocolVersion] =
    &[ProtocolVersion::V_2026_07_28, ProtocolVersion::V_2025_11_25, ProtocolVersion::V_2025_06_18];

/// What the tool calls of every session share.
struct Shared {
    state: AppState,
    catalog: tools::Catalog,
    /// The server's router, set once it is built (it contains `/mcp` itself).
    router: OnceLock<axum::Router>,
}

/// The MCP server handler: one per stateless request or handshake session.
#[derive(Clone)]
struct Handler(Arc<Shared>);

/// The mounted endpoint: rmcp's service and its sessions.
#[derive(Clone)]
pub struct Endpoint {
    service: StreamableHttpService<Handler, LocalSessionManager>,
    sessions: Arc<LocalSessionManager>,
    shared: Arc<Shared>,
}

impl Endpoint {
    /// The endpoint for `state`, with tools cut from the OpenAPI document `doc`.
    pub fn new(state: AppState, doc: &Value, policies: &crate::auth::Policies) -> Endpoint {
        let shared = Arc::new(Shared {
            catalog: tools::Catalog::new(doc, policies),
            state: state.clone(),
            router: OnceLock::new(),
        });
        let mut sessions = LocalSessionManager::default();
        sessions.session_config.keep_alive = Some(Duration::from_millis(state.mcp.session_idle_ms));
        let sessions = Arc::new(sessions);
        let stop = CancellationToken::new();
        let mut shutdown = state.shutdown.clone();
        let on_stop = stop.clone();
        tokio::spawn(async move {
            let _ = shutdown.wait_for(|s| *s).await;
            on_stop.cancel();
        });
        // Host, Origin and body size are the guard's (the same as `/v1`), so rmcp's own
        // checks are opened up to it rather than kept twice with other rules.
        let config = StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            .disable_allowed_origins()
            .with_max_request_body_bytes(state.limits.max_request_bytes)
            // A stateless (2026-07-28) answer that is one message goes back as plain JSON, not
            // an SSE stream of one event.
            .with_json_response(true)
            .with_cancellation_token(stop);
        let handler = Handler(shared.clone());
        let service = StreamableHttpService::new(move || Ok(handler.clone()), sessions.clone(), config);
        Endpoint { service, sessions, shared }
    }

    /// Gives tool calls the router to run their routes through (the one serving `/mcp`).
    pub fn attach(&self, router: axum::Router) {
        let _ = self.shared.router.set(router);
    }

    /// Handshake sessions alive on this node.
    pub fn sessions(&self) -> usize {
        self.sessions.sessions.try_read().map_or(0, |s| s.len())
    }
}

/// `GET`, `POST` and `DELETE /mcp`: answers a plain stateless tool call itself ([`fast`]),
/// refuses a new handshake session past `limits.max_mcp_sessions`, and hands the rest to rmcp.
pub async fn endpoint(State(ep): State<Endpoint>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return ApiError(Error::new(ErrorCode::BadRequest, e.to_string())).into_response(),
    };
    if let Some(call) = fast::recognise(&parts, &bytes, &ep.shared.catalog) {
        return fast::answer(ep.shared.clone(), call).await;
    }
    if parts.method == Method::POST && !parts.headers.contains_key("mcp-session-id") && is_initialize(&bytes)
    {
        let max = ep.shared.state.limits.max_mcp_sessions;
        if ep.sessions.sessions.read().await.len() >= max {
            let e = Error::new(
                ErrorCode::Unavailable,
                format!("this node keeps its maximum of {max} MCP sessions (limits.max_mcp_sessions)"),
            );
            return ApiError(e).into_response();
        }
    }
    let delete = parts.method == Method::DELETE;
    let req = Request::from_parts(parts, axum::body::Body::from(bytes));
    let mut resp = match ep.service.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    ep.shared.state.metrics.mcp_sessions(ep.sessions());
    // rmcp answers an ended session 202; clients expect 200 or 204 for a DELETE that worked.
    if delete && resp.status() == axum::http::StatusCode::ACCEPTED {
        *resp.status_mut() = axum::http::StatusCode::NO_CONTENT;
    }
    resp.map(axum::body::Body::new)
}

/// Whether a POST body is an `initialize` request (alone or first in a batch).
fn is_initialize(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Msg<'a> {
        #[serde(borrow)]
        method: Option<Cow<'a, str>>,
    }
    serde_json::from_slice::<Msg>(body).is_ok_and(|m| m.method.as_deref() == Some("initialize"))
}

/// The caller of a request, as the guard authenticated it (`None` with auth off).
fn caller(ctx: &RequestContext<RoleServer>) -> (Option<Principal>, Option<HeaderValue>) {
    let parts = ctx.extensions.get::<axum::http::request::Parts>();
    let principal = parts.and_then(|p| p.extensions.get::<Principal>().cloned());
    let auth = parts.and_then(|p| p.headers.get(header::AUTHORIZATION).cloned());
    (principal, auth)
}

impl Shared {
    fn router(&self) -> Result<axum::Router, McpError> {
        self.router.get().cloned().ok_or_else(|| McpError::internal_error("the server is starting", None))
    }

    /// Runs one tool call for the caller holding `auth`; `cancel` is the client's cancel (or
    /// its disconnect), which a waiting tool hears while it runs.
    async fn run_tool(
        &self,
        def: &ToolDef,
        arguments: JsonObject,
        auth: Option<HeaderValue>,
        cancel: &CancellationToken,
    ) -> Result<CallToolResult, McpError> {
        let started = Instant::now();
        let router = self.router()?;
        let result = match call::request(def, arguments, auth.as_ref()) {
            Err(e) => call::error(e),
            Ok(req) => {
                // Only a call that can wait needs to hear of its cancel while it runs.
                let stop = def.waits.then(|| stop_on_cancel(cancel, &self.state));
                let answer = call::run(router.clone(), req, stop).await;
                if cancel.is_cancelled() && def.tool.name == "jobs_claim" {
                    release_claimed(&router, &answer.body, auth.as_ref()).await;
                }
                call::result(answer)
            }
        };
        let metrics = &self.state.metrics;
        metrics.mcp_call(&def.tool.name, &call::outcome(&result), started.elapsed().as_secs_f64());
        Ok(result)
    }
}

impl ServerHandler for Handler {
    fn get_info(&self) -> ServerConfig {
        let caps = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources()
            .enable_resources_subscribe()
            .build();
        ServerConfig::new(caps)
            .with_server_info(Implementation::new("ferry", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "ferry is a durable job queue and coordination server. Take work with jobs_claim and \
                 finish it with jobs_complete or jobs_fail; share tasks as work items (items_*); talk to \
                 other agents with messages_send and messages_receive; sleep until something happens \
                 with events_wait.",
            )
    }

    fn supported_protocol_versions(&self) -> Cow<'static, [ProtocolVersion]> {
        Cow::Borrowed(REVISIONS)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let (who, _) = caller(&ctx);
        let tools =
            self.0.catalog.tools.iter().filter(|t| t.visible_to(who.as_ref())).map(|t| t.tool.clone());
        Ok(ListToolsResult::with_all_items(tools.collect()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let Some(def) = self.0.catalog.get(&request.name).cloned() else {
            return Err(McpError::invalid_params(format!("no tool named {}", request.name), None));
        };
        let (_, auth) = caller(&ctx);
        let result = self.0.run_tool(&def, request.arguments.unwrap_or_default(), auth, &ctx.ct).await?;
        Ok(CallToolResponse::Complete(result))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(resources::fixed()))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        Ok(ListResourceTemplatesResult::with_all_items(resources::templates()))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let (_, auth) = caller(&ctx);
        resources::read(&self.0.router()?, &request.uri, auth.as_ref()).await
    }

    fn accepted_subscription_filter(&self, requested: &SubscriptionFilter) -> Option<SubscriptionFilter> {
        let uris = requested.resource_subscriptions.iter().flatten().filter(|u| resources::known(u)).cloned();
        Some(SubscriptionFilter::builder().resource_subscriptions(uris).build())
    }

    async fn listen(&self, ctx: SubscriptionContext) -> Result<(), McpError> {
        let (_, auth) = caller(ctx.request_context());
        let router = self.0.router()?;
        resources::listen(&self.0.state, router, auth, ctx).await
    }

    #[allow(deprecated)]
    async fn subscribe(
        &self,
        request: rmcp::model::SubscribeRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<(), McpError> {
        let (_, auth) = caller(&ctx);
        let router = self.0.router()?;
        resources::subscribe(&self.0.state, router, request.uri, auth, ctx.peer.clone()).await
    }
}

/// A watch that turns true when the client cancels the call or the server shuts down, so a
/// waiting claim or long-poll returns at once with what it holds.
fn stop_on_cancel(cancel: &CancellationToken, st: &AppState) -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let ct = cancel.clone();
    let mut shutdown = st.shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = ct.cancelled() => {}
            _ = shutdown.wait_for(|s| *s) => {}
            _ = tx.closed() => return,
        }
        let _ = tx.send(true);
    });
    rx
}

/// Gives back the jobs a claim took as its caller cancelled it: nobody will see their leases.
async fn release_claimed(router: &axum::Router, body: &Value, auth: Option<&HeaderValue>) {
    for job in body["jobs"].as_array().into_iter().flatten() {
        let (Some(id), Some(lease)) = (job["id"].as_str(), job["lease"].as_str()) else { continue };
        let release = serde_json::json!({ "lease": lease });
        let status =
            match call::in_process(Method::POST, &format!("/v1/jobs/{id}/release"), Some(&release), auth) {
                Ok(req) => call::send(router.clone(), req).await.0,
                Err(_) => continue,
            };
        if !status.is_success() {
            tracing::warn!(job = id, %status, "could not release a job claimed by a cancelled MCP call");
        }
    }
}
