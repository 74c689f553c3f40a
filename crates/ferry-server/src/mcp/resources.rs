//! Resources: `ferry://queues`, `ferry://jobs/{id}` and `ferry://items/{id}`, read through the
//! routes that serve them; their changes are pushed from the event hub, by
//! `resources/subscribe` on the handshake revisions and `subscriptions/listen` on 2026-07-28.

use crate::AppState;
use crate::events::{Feed, Item};
use axum::http::{HeaderValue, Method};
use ferry_core::event::{EventFilter, Room, Subject, SubjectKind};
use rmcp::model::{
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ResourceTemplate,
    ResourceUpdatedNotificationParam,
};
use rmcp::service::{Peer, SubscriptionContext};
use rmcp::{ErrorData as McpError, RoleServer};

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
    let req = super::call::in_process(Method::GET, path, None, auth).map_err(|e| (400, e.message))?;
    let (status, _, bytes) = super::call::send(router.clone(), req).await;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if status.is_success() { Ok(text) } else { Err((status.as_u16(), text)) }
}

/// The resources a subscription watches, each with the subject whose events change it
/// (`None`: the queues, changed by any event); the caller must be able to read each.
async fn watched(
    router: &axum::Router,
    uris: Vec<String>,
    auth: Option<&HeaderValue>,
) -> Result<Vec<(Option<Subject>, String)>, McpError> {
    let mut watched = Vec::with_capacity(uris.len());
    for uri in uris {
        read(router, &uri, auth).await?;
        watched.push((route(&uri)?.1, uri));
    }
    Ok(watched)
}

/// One feed for all `watched`: their rooms, or every event when the queues are among them.
fn feed_for(st: &AppState, watched: &[(Option<Subject>, String)]) -> Result<Feed, McpError> {
    let filter = watched.iter().map(|(s, _)| s.clone()).collect::<Option<Vec<Subject>>>().map(|subjects| {
        let mut f = EventFilter::default();
        for s in subjects {
            f.join(Room::Subject(s));
        }
        f
    });
    Feed::open(&st.hub, filter, None).map_err(|e| McpError::internal_error(e.message, None))
}

/// Calls `notify` with each watched resource an event changes (all of them after a lag),
/// until `stop` resolves, the server shuts down or `notify` returns false; a failing feed is
/// an error.
async fn pump<F, Fut>(
    mut feed: Feed,
    watched: &[(Option<Subject>, String)],
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    stop: impl std::future::Future<Output = ()>,
    mut notify: F,
) -> Result<(), ferry_core::Error>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    tokio::pin!(stop);
    loop {
        let subject = tokio::select! {
            next = feed.next() => match next {
                Ok(Item::Event(d)) => Some(d.event.subject.clone()),
                // Fell behind: anything may have changed.
                Ok(Item::Lagged(_)) => None,
                Err(e) => return Err(e),
            },
            _ = &mut stop => return Ok(()),
            _ = shutdown.changed() => return Ok(()),
        };
        for (watched_subject, uri) in watched {
            let hit = match (watched_subject, &subject) {
                (Some(w), Some(s)) => w == s,
                _ => true,
            };
            if hit && !notify(uri.clone()).await {
                return Ok(());
            }
        }
    }
}

/// Subscribes the session to `uri`'s changes (`resources/subscribe`, handshake revisions):
/// the caller must be able to read it; each event of its subject then sends
/// `notifications/resources/updated` until the session ends.
pub async fn subscribe(
    st: &AppState,
    router: axum::Router,
    uri: String,
    auth: Option<HeaderValue>,
    peer: Peer<RoleServer>,
) -> Result<(), McpError> {
    let watched = watched(&router, vec![uri], auth.as_ref()).await?;
    let feed = feed_for(st, &watched)?;
    let shutdown = st.shutdown.clone();
    tokio::spawn(async move {
        let notify = |uri: String| {
            let peer = peer.clone();
            async move { peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(uri)).await.is_ok() }
        };
        let _ = pump(feed, &watched, shutdown, std::future::pending(), notify).await;
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
    let watched = watched(&router, uris, auth.as_ref()).await?;
    if watched.is_empty() {
        ctx.cancelled().await;
        return Ok(());
    }
    let feed = feed_for(st, &watched)?;
    let ctx = &ctx;
    let notify = |uri: String| async move { ctx.sink().notify_resource_updated(uri).await.is_ok() };
    pump(feed, &watched, st.shutdown.clone(), ctx.cancelled(), notify)
        .await
        .map_err(|e| McpError::internal_error(e.message, None))
}
