//! Resources: `ferry://queues`, `ferry://jobs/{id}` and `ferry://items/{id}`, read through the
//! routes that serve them; their changes are pushed from the event hub, by
//! `resources/subscribe` on the handshake revisions and `subscriptions/listen` on 2026-07-28.

use crate::AppState;
use crate::events::{Feed, Item};
use axum::http::{HeaderValue, Request, header};
use ferry_core::event::{EventFilter, Room, Subject, SubjectKind};
use rmcp::model::{
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ResourceTemplate,
    ResourceUpdatedNotificationParam,
};
use rmcp::service::{Peer, SubscriptionContext};
use rmcp::{ErrorData as McpError, RoleServer};
use tower::ServiceExt;

/// Resources at fixed addresses.
pub fn fixed() -> Vec<Resource> {
    vec![
        Resource::new("ferry://queues", "queues")
            .with_description("Every queue with its jobs counted by state (GET /v1/queues)")
            .with_mime_type("application/json"),
    ]
}

/// Resources by id.
pub fn templates() -> Vec<ResourceTemplate> {
    vec![
        ResourceTemplate::new("ferry://jobs/{id}", "job")
            .with_description("One job (GET /v1/jobs/{id}); subscribe to hear of its changes")
            .with_mime_type("application/json"),
        ResourceTemplate::new("ferry://items/{id}", "item")
            .with_description("One work item (GET /v1/items/{id}); subscribe to hear of its changes")
            .with_mime_type("application/json"),
    ]
}

/// Whether `uri` names a resource ferry serves (for a subscription's filter).
pub fn known(uri: &str) -> bool {
    route(uri).is_ok()
}

/// The route a resource is read through and the event subject it changes with.
fn route(uri: &str) -> Result<(String, Option<Subject>), McpError> {
    let not_found = || McpError::resource_not_found(format!("no resource {uri}"), None);
    if uri == "ferry://queues" {
        return Ok(("/v1/queues".into(), None));
    }
    let rest = uri.strip_prefix("ferry://").ok_or_else(not_found)?;
    let (kind, id) = rest.split_once('/').ok_or_else(not_found)?;
    if id.is_empty() || id.contains('/') {
        return Err(not_found());
    }
    let encoded = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC).to_string();
    match kind {
        "jobs" => Ok((format!("/v1/jobs/{encoded}"), Some(Subject::new(SubjectKind::Job, id)))),
        "items" => Ok((format!("/v1/items/{encoded}"), Some(Subject::new(SubjectKind::Item, id)))),
        _ => Err(not_found()),
    }
}

/// Reads `uri` with the caller's token; a route's 404 or 403 is the protocol's not-found.
pub async fn read(
    router: &axum::Router,
    uri: &str,
    auth: Option<&HeaderValue>,
) -> Result<ReadResourceResponse, McpError> {
    let (path, _) = route(uri)?;
    let text = get(router, &path, auth).await.map_err(|(status, body)| match status {
        404 | 403 => McpError::resource_not_found(format!("no resource {uri}"), None),
        _ => McpError::internal_error(format!("reading {uri}: {body}"), None),
    })?;
    let contents = ResourceContents::text(text, uri).with_mime_type("application/json");
    Ok(ReadResourceResult::new(vec![contents]).into())
}

async fn get(router: &axum::Router, path: &str, auth: Option<&HeaderValue>) -> Result<String, (u16, String)> {
    let mut req = Request::get(path).body(axum::body::Body::empty()).expect("a valid request");
    if let Some(a) = auth {
        req.headers_mut().insert(header::AUTHORIZATION, a.clone());
    }
    req.extensions_mut().insert(crate::protect::InProcess);
    let resp = match router.clone().oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if status.is_success() { Ok(text) } else { Err((status.as_u16(), text)) }
}

/// Subscribes the session to `uri`'s changes: the caller must be able to read it; each event
/// of its subject then sends `notifications/resources/updated` until the session ends.
pub async fn subscribe(
    st: &AppState,
    router: axum::Router,
    uri: String,
    auth: Option<HeaderValue>,
    peer: Peer<RoleServer>,
) -> Result<(), McpError> {
    let (_, subject) = route(&uri)?;
    read(&router, &uri, auth.as_ref()).await?;
    // A job or an item: its own room; the queues: every event (counts change with each).
    let filter = subject.map(|s| {
        let mut f = EventFilter::default();
        f.join(Room::Subject(s));
        f
    });
    let feed = Feed::open(&st.hub, filter, None).map_err(|e| McpError::internal_error(e.message, None))?;
    let mut shutdown = st.shutdown.clone();
    tokio::spawn(async move {
        let mut feed = feed;
        loop {
            tokio::select! {
                next = feed.next() => match next {
                    Ok(Item::Event(_)) | Ok(Item::Lagged(_)) => {
                        let note = ResourceUpdatedNotificationParam::new(uri.clone());
                        if peer.notify_resource_updated(note).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                _ = shutdown.changed() => return,
            }
        }
    });
    Ok(())
}

/// Serves one `subscriptions/listen` stream (2026-07-28): each accepted resource must be
/// readable by the caller; then every event of its subject (any event, for the queues) sends
/// `notifications/resources/updated` for it, until the client cancels or the server stops.
pub async fn listen(
    st: &AppState,
    router: axum::Router,
    auth: Option<HeaderValue>,
    ctx: SubscriptionContext,
) -> Result<(), McpError> {
    let uris = ctx.accepted().resource_subscriptions.clone().unwrap_or_default();
    let mut watched: Vec<(Option<Subject>, String)> = Vec::with_capacity(uris.len());
    for uri in uris {
        read(&router, &uri, auth.as_ref()).await?;
        watched.push((route(&uri)?.1, uri));
    }
    // One feed for all of them: their rooms, or every event when the queues are watched.
    let filter = (!watched.iter().any(|(s, _)| s.is_none())).then(|| {
        let mut f = EventFilter::default();
        for (s, _) in &watched {
            f.join(Room::Subject(s.clone().expect("rooms only")));
        }
        f
    });
    if watched.is_empty() {
        ctx.cancelled().await;
        return Ok(());
    }
    let mut feed =
        Feed::open(&st.hub, filter, None).map_err(|e| McpError::internal_error(e.message, None))?;
    let mut shutdown = st.shutdown.clone();
    loop {
        let subject = tokio::select! {
            next = feed.next() => match next {
                Ok(Item::Event(d)) => Some(d.event.subject.clone()),
                // Fell behind: anything may have changed.
                Ok(Item::Lagged(_)) => None,
                Err(e) => return Err(McpError::internal_error(e.message, None)),
            },
            _ = ctx.cancelled() => return Ok(()),
            _ = shutdown.changed() => return Ok(()),
        };
        for (watched_subject, uri) in &watched {
            let hit = match (watched_subject, &subject) {
                (Some(w), Some(s)) => w == s,
                _ => true,
            };
            if hit && ctx.sink().notify_resource_updated(uri.clone()).await.is_err() {
                return Ok(());
            }
        }
    }
}
