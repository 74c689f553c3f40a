//! What both backends share about agent messages: a delivery row as read, how it becomes a
//! wire message, the checks a send makes before it writes, the events it records, when a cursor
//! may pass a broadcast, and the invariants `check_invariants` runs.

use ferry_core::message::{DeadMessage, Message, MessageKind, NewMessage, Receipt, SendRate, Sent};
use ferry_core::{Error, ErrorCode, Event, EventType, Limits, Result, Subject, SubjectKind, Timestamp};
use serde_json::json;
use serde_json::value::RawValue;
use uuid::Uuid;

/// Columns of a delivery joined with its message or broadcast (see [`DELIVERY_JOIN`]), in the
/// order both backends read them into a [`DeliveryRow`].
pub const DELIVERY_COLS: &str =
    "d.ord, d.msg_id, d.kind, d.state, d.receipt, d.delivery_count, d.expires_at, d.dead_at,
    coalesce(m.sender, b.sender), coalesce(m.body, b.body), coalesce(m.sent_at, b.sent_at), m.reply_to,
    m.correlation_id, b.channel, b.seq";

/// A delivery with its direct message or its broadcast.
pub const DELIVERY_JOIN: &str = "deliveries d LEFT JOIN messages m ON d.kind = 'direct' AND m.id = d.msg_id
    LEFT JOIN broadcasts b ON d.kind = 'broadcast' AND b.id = d.msg_id";

/// A delivery joined with its message or broadcast; `ord: None` for an unread broadcast (no
/// delivery row yet).
#[derive(Debug, Clone)]
pub struct DeliveryRow {
    /// The delivery's position (send order), when it has a row.
    pub ord: Option<i64>,
    /// The message or broadcast id.
    pub id: Uuid,
    /// `direct` or `broadcast`.
    pub kind: String,
    /// The latest receipt token handed out (0: none yet).
    pub receipt: i64,
    /// Deliveries so far.
    pub delivery_count: u32,
    /// When it stops being delivered.
    pub expires_at: i64,
    /// When it went dead.
    pub dead_at: Option<i64>,
    /// The sender.
    pub from: String,
    /// The body as JSON text.
    pub body: String,
    /// When it was sent.
    pub sent_at: i64,
    /// Where replies go.
    pub reply_to: Option<String>,
    /// The conversation.
    pub correlation_id: Option<String>,
    /// A broadcast's channel.
    pub channel: Option<String>,
    /// A broadcast's sequence.
    pub seq: Option<i64>,
}

impl DeliveryRow {
    /// An unread broadcast, from its row.
    pub fn unread(
        id: Uuid,
        channel: String,
        seq: i64,
        from: String,
        body: String,
        sent_at: i64,
        expires_at: i64,
    ) -> DeliveryRow {
        DeliveryRow {
            ord: None,
            id,
            kind: "broadcast".into(),
            receipt: 0,
            delivery_count: 0,
            expires_at,
            dead_at: None,
            from,
            body,
            sent_at,
            reply_to: None,
            correlation_id: None,
            channel: Some(channel),
            seq: Some(seq),
        }
    }

    fn kind(&self) -> MessageKind {
        if self.kind == "broadcast" { MessageKind::Broadcast } else { MessageKind::Direct }
    }

    fn body(&self) -> Result<Box<RawValue>> {
        RawValue::from_string(self.body.clone())
            .map_err(|e| Error::internal(format!("a stored message body is not JSON: {e}")))
    }

    /// The wire message of this delivery, held with `receipt`, delivered `count` times.
    pub fn into_message(self, receipt: Receipt, count: u32) -> Result<Message> {
        Ok(Message {
            id: self.id,
            kind: self.kind(),
            body: self.body()?,
            channel: self.channel,
            from: self.from,
            sent_at: Timestamp(self.sent_at),
            expires_at: Timestamp(self.expires_at),
            reply_to: self.reply_to,
            correlation_id: self.correlation_id,
            receipt: receipt.encode(),
            delivery_count: count,
        })
    }

    /// The dead letter of this delivery.
    pub fn into_dead(self) -> Result<DeadMessage> {
        Ok(DeadMessage {
            id: self.id,
            kind: self.kind(),
            body: self.body()?,
            channel: self.channel,
            from: self.from,
            sent_at: Timestamp(self.sent_at),
            dead_at: Timestamp(self.dead_at.unwrap_or(0)),
            reply_to: self.reply_to,
            correlation_id: self.correlation_id,
            delivery_count: self.delivery_count,
        })
    }
}

/// Refuses a send when `from`'s bucket holds less than one token.
pub fn check_bucket(from: &str, rate: SendRate, held: f64) -> Result<()> {
    if held >= 1.0 {
        return Ok(());
    }
    let wait_ms = rate.wait_ms(held);
    Err(Error::new(
        ErrorCode::RateLimited,
        format!("agent {from:?} sends at most {} messages a minute (burst {})", rate.per_min, rate.burst),
    )
    .with_details(json!({ "agent": from, "retry_after_ms": wait_ms })))
}

/// Refuses a send to an inbox holding `limits.max_inbox_depth` messages.
pub fn check_depth(agent: &str, depth: u64, limits: &Limits) -> Result<()> {
    if depth < limits.max_inbox_depth {
        return Ok(());
    }
    Err(Error::new(
        ErrorCode::QueueFull,
        format!("agent {agent:?} holds {} messages (limits.max_inbox_depth)", limits.max_inbox_depth),
    )
    .with_details(json!({ "agent": agent })))
}

/// The stored first answer of a send, as text.
pub fn answer_text(sent: &Sent) -> String {
    serde_json::to_string(sent).expect("a send answer serializes")
}

/// The first answer again, marked a duplicate.
pub fn duplicate(answer: &str) -> Result<Sent> {
    let mut sent: Sent = serde_json::from_str(answer)
        .map_err(|e| Error::internal(format!("a stored send answer does not parse: {e}")))?;
    sent.duplicate = true;
    Ok(sent)
}

fn agent_event(kind: EventType, agent: &str, at: i64, data: serde_json::Value) -> Event {
    Event {
        cursor: 0,
        kind,
        subject: Subject::new(SubjectKind::Agent, agent),
        at: Timestamp(at),
        queue: None,
        job_id: None,
        tags: Vec::new(),
        data: Some(data),
    }
}

/// One `message.sent` per recipient.
pub fn sent_events(m: &NewMessage, at: i64) -> impl Iterator<Item = Event> + '_ {
    m.to.iter()
        .map(move |a| agent_event(EventType::MessageSent, a, at, json!({ "id": m.id, "from": m.from })))
}

/// `broadcast.sent`, about the sender.
pub fn broadcast_event(id: Uuid, from: &str, channel: &str, seq: i64, at: i64) -> Event {
    agent_event(EventType::BroadcastSent, from, at, json!({ "id": id, "channel": channel, "seq": seq }))
}

/// `message.dead`, about the agent whose dead letters took it.
pub fn dead_event(agent: &str, id: Uuid, kind: &str, at: i64) -> Event {
    agent_event(EventType::MessageDead, agent, at, json!({ "id": id, "kind": kind }))
}

/// Whether a receive of an existing agent can answer "nothing" without writing: `?1` the
/// agent, `?2` now. One row (none for an unknown agent): its `last_seen_at` (a receive
/// rewrites it when the second changed), whether a delivery is visible (overdue ones
/// included: they go dead on the write path), whether a broadcast waits past a cursor.
pub const IDLE_CHECK: &str = "SELECT a.last_seen_at,
    EXISTS (SELECT 1 FROM deliveries d WHERE d.agent = a.name AND d.state IN ('ready', 'in_flight')
            AND d.visible_at <= ?2 AND d.expires_at > ?2),
    EXISTS (SELECT 1 FROM channel_cursors c JOIN broadcasts b ON b.channel = c.channel AND b.seq > c.seq
            WHERE c.agent = a.name AND b.sender <> a.name AND b.expires_at > ?2
              AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.agent = a.name AND e.msg_id = b.id))
    FROM agents a WHERE a.name = ?1";

/// Whether an [`IDLE_CHECK`] row lets a receive at `now` answer empty without a write.
pub fn idle(last_seen_at: Option<i64>, visible: bool, unread: bool, now: i64) -> bool {
    last_seen_at == Some(ferry_core::message::to_second(now)) && !visible && !unread
}

/// Whether `agent`'s cursor may pass a broadcast: its own, expired, acked or dead.
pub fn passable(agent: &str, sender: &str, expires_at: i64, state: Option<&str>, now: i64) -> bool {
    sender == agent || expires_at <= now || matches!(state, Some("acked" | "dead"))
}

/// Invariant queries (each returns one text column naming a violation) with what they check.
pub const INVARIANTS: &[(&str, &str)] = &[
    (
        "SELECT d.agent || ' ' || d.kind FROM deliveries d WHERE
            (d.kind = 'direct' AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = d.msg_id))
         OR (d.kind = 'broadcast' AND NOT EXISTS (SELECT 1 FROM broadcasts b WHERE b.id = d.msg_id))",
        "a delivery without its message",
    ),
    (
        "SELECT c.agent || ' ' || c.channel FROM channel_cursors c LEFT JOIN channels h ON h.name = c.channel
         WHERE c.seq > coalesce(h.head, 0)",
        "a cursor past its channel's head",
    ),
    (
        "SELECT d.agent FROM deliveries d WHERE d.state NOT IN ('ready', 'in_flight', 'acked', 'dead')
            OR (d.state = 'dead') <> (d.dead_at IS NOT NULL)",
        "a delivery in no known state",
    ),
];
