//! Bodies of the event endpoints: the long-poll answer, the query the three delivery
//! endpoints share (with its checks), and the WebSocket and server-sent-event messages.

use crate::error::{Error, Result};
use crate::event::{Event, EventFilter, EventType, Room, SubjectKind};
use crate::limits::Limits;
use crate::validate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /v1/events` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventsResponse {
    /// Matching events, oldest first.
    pub events: Vec<crate::Event>,
    /// Pass as `since` next time (it moves past events that did not match, too).
    pub next_cursor: u64,
}

/// Filters and position shared by the three delivery endpoints. Any other parameter is 400.
/// The lists are comma-separated; blanks around an item, and empty items, are ignored; the
/// rooms named (queues, job ids and tags together) are at most `limits.max_rooms`.
#[derive(Debug, Default, Clone, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Deliver events after this cursor; without it, only events from now on.
    #[param(value_type = Option<i64>, minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    pub since: Option<String>,
    /// Long-poll: how long to wait for a first event (0..=`limits.max_wait_ms`, default 0).
    /// The streams check it the same way and do not use it.
    #[param(minimum = 0, maximum = 30_000)]
    pub wait_ms: Option<i64>,
    /// Long-poll: most events returned (1..=`limits.max_page_size`, default 100). The streams
    /// check it the same way and do not use it.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Queues, comma-separated.
    pub queue: Option<String>,
    /// Job ids, comma-separated.
    pub job_id: Option<String>,
    /// Tags, comma-separated, each at most `limits.max_tag_len` characters.
    pub tag: Option<String>,
    /// Event types, comma-separated (`job.completed,job.dead`).
    #[serde(rename = "type")]
    #[param(rename = "type")]
    pub kind: Option<String>,
}

/// The items of a comma-separated list, trimmed, empty ones left out.
fn list(v: &Option<String>) -> Vec<&str> {
    v.as_deref().map(|s| s.split(',').map(str::trim).filter(|x| !x.is_empty()).collect()).unwrap_or_default()
}

impl EventQuery {
    /// The long-poll's `wait_ms` and `limit`, checked on every delivery endpoint so that the
    /// same query means the same thing (and is refused the same way) on each.
    pub fn window(&self, limits: &Limits) -> Result<(i64, usize)> {
        let wait_ms = self.wait_ms.unwrap_or(0);
        if !(0..=limits.max_wait_ms).contains(&wait_ms) {
            return Err(Error::invalid(
                "wait_ms",
                format!("wait_ms must be 0..={}, got {wait_ms}", limits.max_wait_ms),
            ));
        }
        let limit = self.limit.unwrap_or(100);
        if limit == 0 || limit > limits.max_page_size {
            return Err(Error::invalid("limit", format!("limit must be 1..={}", limits.max_page_size)));
        }
        Ok((wait_ms, limit))
    }

    /// The filter the query names (rooms and types), checked; who may see what is the
    /// server's business, applied afterwards.
    pub fn filter(&self, limits: &Limits) -> Result<EventFilter> {
        let mut f = EventFilter::default();
        for (kind, param) in [("queue", &self.queue), ("job", &self.job_id), ("tag", &self.tag)] {
            let field = if kind == "job" { "job_id" } else { kind };
            for id in list(param) {
                f.join(room_of(kind, id, limits, field)?);
            }
        }
        for t in list(&self.kind) {
            f.types.push(EventType::parse(t).ok_or_else(|| {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                Error::invalid("type", format!("unknown event type {t:?}; known: {}", known.join(", ")))
            })?);
        }
        if f.rooms.len() > limits.max_rooms {
            return Err(Error::invalid(
                "queue",
                format!("at most {} rooms (queues, job ids, tags) at once", limits.max_rooms),
            ));
        }
        Ok(f)
    }
}

/// The room of `kind` (a subject kind or `tag`) and `id`, the id checked as that kind's names
/// are; `field` names it in an error.
pub fn room_of(kind: &str, id: &str, limits: &Limits, field: &str) -> Result<Room> {
    if kind == "tag" {
        if id.is_empty() || id.chars().count() > limits.max_tag_len {
            return Err(Error::invalid(field, format!("a tag is 1..={} characters", limits.max_tag_len)));
        }
        return Ok(Room::Tag(id.to_string()));
    }
    let kind = SubjectKind::parse(kind).ok_or_else(|| {
        let known: Vec<&str> = SubjectKind::ALL.iter().map(|k| k.as_str()).chain(["tag"]).collect();
        Error::invalid(field, format!("unknown room kind {kind:?} ({})", known.join(", ")))
    })?;
    match kind {
        SubjectKind::Queue | SubjectKind::Schedule | SubjectKind::Namespace => {
            validate::queue_name(id, limits, field)?
        }
        SubjectKind::Item => super::items::item_id(id, limits, field)?,
        SubjectKind::Agent => super::messages::inbox_name(id, limits, field)?,
        SubjectKind::Convoy => crate::convoy::check_id(id, limits.max_name_len, field)?,
        SubjectKind::Account => crate::ledger::valid_id(id, limits.max_ledger_id_len)
            .map_err(|m| Error::invalid(field, format!("an account id {m}")))?,
        SubjectKind::Thread => crate::checkpoint::check_key(id, limits, field, false)?,
        SubjectKind::Job => {}
    }
    Room::of(kind, id).map_err(|m| Error::invalid(field, m))
}

/// A client's WebSocket message on `/v1/ws` (the name appears in the server's "bad message"
/// errors, so it stays).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientMsg {
    /// `subscribe`, `unsubscribe` or `ping`.
    pub op: String,
    /// Rooms: `<kind>:<id>` (`queue:<name>`, `job:<id>`, `schedule:<name>`), `tag:<t>`, or
    /// `*` for every event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
    /// One room (same as a one-element `rooms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
}

/// A control message of the event streams (WebSocket replies, and the `lagged` and `error`
/// messages that end a WebSocket or server-sent-event stream); events themselves arrive as
/// [`Event`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Notice {
    /// Rooms joined; `rooms` is every room the connection is in now.
    Subscribed {
        /// The connection's rooms.
        rooms: Vec<String>,
        /// The cursor the stream is at.
        cursor: u64,
    },
    /// Rooms left; `rooms` is every room the connection is still in.
    Unsubscribed {
        /// The connection's rooms.
        rooms: Vec<String>,
        /// The cursor the stream is at.
        cursor: u64,
    },
    /// Answer to a `ping`.
    Pong {
        /// The cursor the stream is at.
        cursor: u64,
    },
    /// The consumer fell behind its buffer: resume from `cursor` (the stream ends).
    Lagged {
        /// Where to resume.
        cursor: u64,
    },
    /// A request failed, or the stream failed (then it ends).
    Error {
        /// What went wrong.
        error: Error,
    },
}

/// One message of an event stream, as a client reads it: a control message or an event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StreamMessage {
    /// A reply or an end-of-stream notice.
    Notice(Notice),
    /// An event.
    Event(Event),
}

impl StreamMessage {
    /// Parses one message. Events, nearly every message, are decoded directly: the untagged
    /// enum would first buffer each into a generic tree and decode it a second time.
    pub fn parse(text: &str) -> serde_json::Result<StreamMessage> {
        match serde_json::from_str::<Event>(text) {
            Ok(e) => Ok(StreamMessage::Event(e)),
            Err(_) => serde_json::from_str(text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_messages_parse_as_the_server_writes_them() {
        // The server writes its notices with `serde_json::json!` (keys sorted).
        let m: StreamMessage =
            serde_json::from_str(r#"{"cursor":7,"rooms":["queue:a"],"type":"subscribed"}"#).unwrap();
        assert!(matches!(m, StreamMessage::Notice(Notice::Subscribed { cursor: 7, .. })));
        let m: StreamMessage = serde_json::from_str(r#"{"cursor":3,"type":"lagged"}"#).unwrap();
        assert!(matches!(m, StreamMessage::Notice(Notice::Lagged { cursor: 3 })));
        let m: StreamMessage =
            serde_json::from_str(r#"{"error":{"code":"bad_request","message":"x"},"type":"error"}"#).unwrap();
        assert!(matches!(m, StreamMessage::Notice(Notice::Error { .. })));
        let e = r#"{"cursor":9,"type":"job.enqueued","subject":{"kind":"queue","id":"q"},"at":"2024-01-01T00:00:00.000Z","queue":"q"}"#;
        match serde_json::from_str::<StreamMessage>(e).unwrap() {
            StreamMessage::Event(ev) => assert_eq!((ev.cursor, ev.queue.as_deref()), (9, Some("q"))),
            other => panic!("not an event: {other:?}"),
        }
        for text in [r#"{"cursor":3,"type":"lagged"}"#, e] {
            let (a, b) =
                (StreamMessage::parse(text).unwrap(), serde_json::from_str::<StreamMessage>(text).unwrap());
            assert_eq!(serde_json::to_value(a).unwrap(), serde_json::to_value(b).unwrap());
        }
        assert!(StreamMessage::parse("{}").is_err());
    }

    #[test]
    fn the_query_is_checked_like_before() {
        let l = Limits::default();
        let q = EventQuery { wait_ms: Some(30_001), ..Default::default() };
        assert_eq!(q.window(&l).unwrap_err().field.as_deref(), Some("wait_ms"));
        let q = EventQuery { kind: Some("job.nope".into()), ..Default::default() };
        assert_eq!(q.filter(&l).unwrap_err().field.as_deref(), Some("type"));
        let q = EventQuery { queue: Some(" a , ,b".into()), ..Default::default() };
        assert_eq!(q.filter(&l).unwrap().queues().collect::<Vec<_>>(), ["a", "b"]);
    }
}
