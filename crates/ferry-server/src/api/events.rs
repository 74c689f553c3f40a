//! Event delivery: long-poll (`GET /v1/events`), SSE (`GET /v1/events/stream`) and
//! WebSocket (`GET /v1/ws`), all with the same event JSON and the same filters, all resuming
//! from a cursor through [`Feed`].
//!
//! Filters are query parameters, each a comma-separated list: `queue`, `job_id`, `tag` (rooms:
//! an event passes if it belongs to any named room, or to any room when none is named) and
//! `type` (restricts to those event types). A consumer too slow for its buffer gets a
//! `lagged` message with the cursor to resume from, then the stream ends.

use crate::AppState;
use crate::auth::Access;
use crate::error::{ApiQuery, ApiResult};
use crate::events::{Delivered, Feed, Item};
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use ferry_core::wire::room_of;
use ferry_core::wire::{ClientMsg, ErrorBody, EventQuery, EventsResponse};
use ferry_core::{Error, ErrorCode, EventFilter, EventType, Room, Subject, SubjectKind};
use futures_util::SinkExt;
use std::sync::Arc;
use std::time::Duration;

/// Builds and validates a filter from the query; a restricted caller names only its queues and
/// sees only their events (all of them when it names no room).
pub fn filter_of(q: &EventQuery, st: &AppState, access: &Access) -> Result<EventFilter, Error> {
    let mut f = q.filter(&st.limits)?;
    restrict(&mut f, access)?;
    Ok(f)
}

/// Narrows `f` to what `access` may see: 403 for a foreign queue room, and no firehose.
fn restrict(f: &mut EventFilter, access: &Access) -> Result<(), Error> {
    let Some(allowed) = access.queues() else { return Ok(()) };
    for q in f.queues() {
        access.check(q)?;
    }
    if f.is_firehose() {
        for q in allowed {
            f.join(Room::Subject(Subject::new(SubjectKind::Queue, q.clone())));
        }
    }
    f.within = Some(allowed.to_vec());
    Ok(())
}

/// Events after `since`, filtered; waits up to `wait_ms` for a first one. `next_cursor` is
/// where to continue (it moves past events that did not match, too).
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventQuery),
    responses((status = 200, description = "the events after `since` (possibly none) and where to continue", body = EventsResponse)))]
pub async fn poll(
    State(st): State<AppState>,
    access: Access,
    stop: Option<axum::Extension<crate::protect::StopWaiting>>,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> ApiResult<Response> {
    let filter = filter_of(&q, &st, &access)?;
    let (wait_ms, limit) = q.window(&st.limits)?;
    let mut feed = Feed::open(&st.hub, Some(filter), cursor_of(q.since.as_deref(), "since")?)?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms as u64);
    let mut shutdown = stop.map_or_else(|| st.shutdown.clone(), |axum::Extension(s)| s.0);
    let mut events: Vec<Arc<Delivered>> = Vec::new();
    // Stored events first (no waiting), then, if none matched, the first live one.
    while events.len() < limit {
        match feed.next_stored().await? {
            Some(Item::Event(d)) => events.push(d),
            Some(Item::Lagged(_)) | None => break,
        }
    }
    if events.is_empty() && wait_ms > 0 {
        tokio::select! {
            r = tokio::time::timeout_at(deadline, feed.next()) => {
                if let Ok(Ok(Item::Event(d))) = r {
                    events.push(d);
                } else if let Ok(Err(e)) = r {
                    return Err(e.into());
                }
            }
            _ = shutdown.changed() => {}
        }
    }
    // The events' JSON is written once per event (`Delivered`) and joined here, so a page
    // of a thousand costs no second serialization.
    let mut body = String::with_capacity(32 + events.iter().map(|d| d.json.len() + 1).sum::<usize>());
    body.push_str("{\"events\":[");
    for (i, d) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&d.json);
    }
    body.push_str(&format!("],\"next_cursor\":{}}}", feed.cursor()));
    Ok(([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// A cursor from the query: 400 if it is not a number, 422 past the int64 range cursors live in.
fn cursor_of(text: Option<&str>, field: &str) -> Result<Option<u64>, Error> {
    let Some(t) = text.map(str::trim) else { return Ok(None) };
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::new(
            ErrorCode::BadRequest,
            format!("{field} must be a cursor (a number), not {t:?}"),
        )
        .within(field));
    }
    match t.parse::<i64>() {
        Ok(n) => Ok(Some(n as u64)),
        Err(_) => Err(Error::invalid(field, format!("{field} must be 0..={}", i64::MAX))),
    }
}

fn resume_from(q: &EventQuery, headers: &HeaderMap) -> Result<Option<u64>, Error> {
    match headers.get("last-event-id") {
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<i64>().ok()) {
            Some(n) if n >= 0 => Ok(Some(n as u64)),
            _ => Err(Error::invalid("Last-Event-ID", "Last-Event-ID must be a cursor (a number)")),
        },
        None => cursor_of(q.since.as_deref(), "since"),
    }
}

/// Server-sent events: each event's `id` is its cursor, so a reconnecting `EventSource`
/// resumes with `Last-Event-ID` (which wins over `since`). A `lagged` event carries the
/// cursor to resume from, then the stream ends.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events", params(EventQuery),
    responses((status = 200, description = "server-sent events: each `data` is an event's JSON, its `id` the cursor",
        content_type = "text/event-stream", body = String),
    (status = 422, description = "validation_failed: a parameter, or `Last-Event-ID`, is invalid", body = ErrorBody)))]
pub async fn stream(
    State(st): State<AppState>,
    access: Access,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventQuery>,
) -> ApiResult<Response> {
    let filter = filter_of(&q, &st, &access)?;
    q.window(&st.limits)?;
    let since = resume_from(&q, &headers)?;
    let feed = Feed::open(&st.hub, Some(filter), since)?;
    let shutdown = st.shutdown.clone();
    let s =
        futures_util::stream::unfold((feed, shutdown, false), |(mut feed, mut shutdown, done)| async move {
            if done || *shutdown.borrow() {
                return None;
            }
            let first = tokio::select! {
                r = tokio::time::timeout(SSE_KEEP_ALIVE, feed.next()) => r,
                _ = shutdown.changed() => return None,
            };
            let mut out = String::new();
            let done = match first {
                // Nothing for a while: a comment keeps proxies from closing the idle stream.
                Err(_) => {
                    out.push_str(":\n\n");
                    false
                }
                Ok(Ok(Item::Event(d))) => {
                    sse_event(&mut out, &d);
                    // What else is at hand goes in the same write.
                    while out.len() < STREAM_CHUNK_BYTES {
                        let Some(d) = feed.next_ready() else { break };
                        sse_event(&mut out, &d);
                    }
                    false
                }
                Ok(Ok(Item::Lagged(c))) => {
                    let data = serde_json::json!({ "type": "lagged", "cursor": c });
                    out.push_str(&format!("event: lagged\nid: {c}\ndata: {data}\n\n"));
                    true
                }
                Ok(Err(e)) => {
                    let data = serde_json::json!({ "type": "error", "error": e });
                    out.push_str(&format!("event: error\ndata: {data}\n\n"));
                    true
                }
            };
            Some((Ok::<_, std::convert::Infallible>(axum::body::Bytes::from(out)), (feed, shutdown, done)))
        });
    Ok((
        [
            (axum::http::header::CONTENT_TYPE, "text/event-stream"),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
            (axum::http::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        axum::body::Body::from_stream(s),
    )
        .into_response())
}

/// Idle time after which a stream sends a keep-alive comment.
const SSE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Most bytes of events a stream writes at once (past it the write ends with the event that
/// crossed it): what is ready goes out together, so a consumer catching up gets a few large
/// writes, not one per event.
const STREAM_CHUNK_BYTES: usize = 64 << 10;

/// Appends one event in SSE framing; its JSON is one line (compact JSON escapes newlines).
fn sse_event(out: &mut String, d: &crate::events::Delivered) {
    debug_assert!(!d.json.contains('\n'));
    use std::fmt::Write as _;
    let _ = write!(out, "id: {}\ndata: {}\n\n", d.event.cursor, d.json);
}

/// Applies a room change to the filter; `None` means no room yet.
fn change_rooms(
    current: Option<&EventFilter>,
    types: &[EventType],
    rooms: &[String],
    join: bool,
    (st, access): (&AppState, &Access),
) -> Result<Option<EventFilter>, Error> {
    let mut f = current.cloned().unwrap_or_default();
    let mut all = current.is_some_and(|c| c.is_firehose());
    for (i, name) in rooms.iter().enumerate() {
        let field = format!("rooms[{i}]");
        if name == "*" {
            if join && access.is_restricted() {
                // Every event is not something a token limited to some queues may see.
                return Err(Error::new(ErrorCode::Forbidden, "this token may not do this"));
            }
            all = join;
            continue;
        }
        let (kind, id) = name.split_once(':').ok_or_else(|| {
            Error::invalid(&field, format!("{name:?} is not a room (<kind>:<id>, tag:<t>, *)"))
        })?;
        let r = room_of(kind, id, &st.limits, &field)?;
        if let Room::Subject(s) = &r
            && join
            && s.kind == SubjectKind::Queue
        {
            access.check(&s.id)?;
        }
        if let Room::Subject(s) = &r
            && join
            && s.kind == SubjectKind::Namespace
        {
            access.check_in(ferry_core::ResourceKind::Namespace, &s.id)?;
        }
        f.rooms.retain(|x| *x != r);
        if join {
            f.rooms.push(r);
        }
    }
    if f.rooms.len() > st.limits.max_rooms {
        return Err(Error::invalid("rooms", format!("at most {} rooms per connection", st.limits.max_rooms)));
    }
    f.types = types.to_vec();
    f.within = access.queues().map(<[String]>::to_vec);
    let named = !f.rooms.is_empty();
    Ok(if all {
        // Every event: the rooms no longer narrow anything.
        Some(EventFilter { types: f.types, within: f.within, ..Default::default() })
    } else if named {
        Some(f)
    } else {
        None
    })
}

fn rooms_of(f: Option<&EventFilter>) -> Vec<String> {
    let Some(f) = f else { return Vec::new() };
    if f.is_firehose() {
        return vec!["*".into()];
    }
    f.rooms.iter().map(Room::name).collect()
}

/// WebSocket: join rooms with `{"op":"subscribe","rooms":["queue:mail","job:<id>","tag:vip"]}`
/// (or `"*"` for all), leave with `{"op":"unsubscribe",...}`; events arrive as the same JSON
/// as elsewhere. Query filters (`queue`, `job_id`, `tag`) join rooms at connect, `type`
/// restricts types, `since` resumes (with no room named at connect, the stored events wait
/// for the first subscribe, so `since` then `subscribe ["*"]` replays everything). Replies: `subscribed`, `unsubscribed`, `pong`, `error`,
/// and `lagged` (with the cursor to resume from) before the server closes a connection too
/// slow for its buffer.
#[utoipa::path(get, path = "/v1/ws", tag = "events", params(EventQuery),
    responses((status = 101, description = "switching to the WebSocket protocol"),
    (status = 400, description = "bad_request: not a WebSocket upgrade request, or a malformed query string", body = ErrorBody)))]
pub async fn ws(
    State(st): State<AppState>,
    access: Access,
    ApiQuery(q): ApiQuery<EventQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let upgrade = upgrade.map_err(|e| {
        ferry_core::Error::new(
            ferry_core::ErrorCode::BadRequest,
            format!("not a WebSocket upgrade: {}", e.body_text()),
        )
    })?;
    q.window(&st.limits)?;
    // Rooms named in the query join at connect; naming none joins none (not everything).
    let mut query_filter = q.filter(&st.limits)?;
    for name in query_filter.queues() {
        access.check(name)?;
    }
    query_filter.within = access.queues().map(<[String]>::to_vec);
    let types = query_filter.types.clone();
    let initial = if query_filter.is_firehose() { None } else { Some(query_filter) };
    let feed = Feed::open(&st.hub, initial, cursor_of(q.since.as_deref(), "since")?)?;
    let max = st.limits.max_ws_message_bytes;
    Ok(upgrade
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| session(socket, feed, types, (st, access)))
        .into_response())
}

fn reply(v: serde_json::Value) -> Message {
    Message::Text(v.to_string().into())
}

async fn session(
    mut socket: WebSocket,
    mut feed: Feed,
    types: Vec<EventType>,
    (st, access): (AppState, Access),
) {
    let mut shutdown = st.shutdown.clone();
    loop {
        tokio::select! {
            item = feed.next() => match item {
                Ok(Item::Event(d)) => {
                    // What else is at hand is queued with it and flushed once.
                    let (mut next, mut bytes) = (Some(d), 0);
                    while let Some(d) = next {
                        bytes += d.json.len();
                        if socket.feed(Message::Text(d.json.clone().into())).await.is_err() {
                            return;
                        }
                        next = if bytes < STREAM_CHUNK_BYTES { feed.next_ready() } else { None };
                    }
                    if socket.flush().await.is_err() {
                        return;
                    }
                }
                Ok(Item::Lagged(c)) => {
                    let _ = socket.send(reply(serde_json::json!({ "type": "lagged", "cursor": c }))).await;
                    let _ = socket.send(Message::Close(Some(CloseFrame { code: 4008, reason: "lagged".into() }))).await;
                    return;
                }
                Err(e) => {
                    let _ = socket.send(reply(serde_json::json!({ "type": "error", "error": e }))).await;
                    return;
                }
            },
            msg = socket.recv() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Binary(_))) => {
                        let e = Error::new(ErrorCode::BadRequest, "send JSON text messages");
                        let _ = socket.send(reply(serde_json::json!({ "type": "error", "error": e }))).await;
                        continue;
                    }
                    Some(Ok(_)) => continue, // ping/pong are answered by the library
                    Some(Err(_)) | None => return,
                };
                let answer = match serde_json::from_str::<ClientMsg>(&text) {
                    Err(e) => Err(Error::new(ErrorCode::BadRequest, format!("bad message: {e}"))),
                    Ok(m) if m.op == "ping" => Ok(serde_json::json!({ "type": "pong", "cursor": feed.cursor() })),
                    Ok(m) if m.op == "subscribe" || m.op == "unsubscribe" => {
                        let join = m.op == "subscribe";
                        let rooms: Vec<String> = m.rooms.into_iter().chain(m.room).collect();
                        change_rooms(feed.filter(), &types, &rooms, join, (&st, &access)).map(|f| {
                            feed.set_filter(f);
                            serde_json::json!({
                                "type": if join { "subscribed" } else { "unsubscribed" },
                                "rooms": rooms_of(feed.filter()),
                                "cursor": feed.cursor(),
                            })
                        })
                    }
                    Ok(m) => Err(Error::invalid("op", format!("unknown op {:?} (subscribe, unsubscribe, ping)", m.op))),
                };
                let out = match answer {
                    Ok(v) => v,
                    Err(e) => serde_json::json!({ "type": "error", "error": e }),
                };
                if socket.send(reply(out)).await.is_err() {
                    return;
                }
            }
            _ = shutdown.changed() => {
                let _ = socket.send(Message::Close(Some(CloseFrame { code: 1001, reason: "server shutting down".into() }))).await;
                return;
            }
        }
    }
}

/// The event delivery routes, each with the scope it needs and how a token restricted to some
/// queues is checked (`Handler`: by the handler, through [`Access`](crate::auth::Access)).
pub(super) fn routes(r: super::Routes) -> super::Routes {
    use crate::auth::Restriction::*;
    use ferry_core::Scope;
    use utoipa_axum::routes;
    r.add(routes!(poll), Scope::Read, Handler).add(routes!(stream), Scope::Read, Handler).add(
        routes!(ws),
        Scope::Read,
        Handler,
    )
}
