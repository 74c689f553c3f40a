//! Agent messages: inboxes built from the job engine's mechanics (visibility timeout = lease,
//! receipt = fencing token, `max_deliveries` = `max_attempts`, dead letters + replay = DLQ),
//! and broadcasts stored once per channel and fanned out on read through per-agent cursors.
//!
//! Pure types shared by the store, the server and the client: what a send, a receive or an ack
//! asks for and what it answers. The rules that move messages live in the stores, which keep
//! them in their own tables (an agent `x` and a queue `x` share nothing).

use crate::Timestamp;
use crate::error::{Error, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

/// The channel every new inbox is subscribed to.
pub const DEFAULT_CHANNEL: &str = "all";

named_enum! {
    /// How a message reached an inbox.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
    pub enum MessageKind {
        /// Sent to this agent by name (one delivery row per recipient).
        Direct = "direct";
        /// Read from a subscribed channel past the agent's cursor.
        Broadcast = "broadcast";
    }
}

/// A held delivery's proof: the message and the fencing token of this delivery. An ack or nack
/// with an older receipt (the message was delivered again since) changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Receipt {
    /// The message or broadcast id.
    pub id: Uuid,
    /// The delivery's fencing token (grows with every delivery and nack).
    pub token: i64,
}

impl Receipt {
    /// The wire form, `<id hex>.<token>`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.id.simple(), self.token)
    }

    /// Parses the wire form; `None` for anything this server did not hand out.
    pub fn parse(s: &str) -> Option<Receipt> {
        let (id, token) = s.split_once('.')?;
        if id.len() != 32 {
            return None;
        }
        let id = Uuid::try_parse(id).ok()?;
        let token = token.parse::<i64>().ok().filter(|t| *t > 0)?;
        Some(Receipt { id, token })
    }
}

/// A validated send (`POST /v1/messages`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewMessage {
    /// The message id (UUIDv7, chosen by the server).
    pub id: Uuid,
    /// Recipients, deduplicated, in the order given.
    pub to: Vec<String>,
    /// The sending agent.
    pub from: String,
    /// The body as JSON text.
    pub body: String,
    /// Lifetime from the send.
    pub ttl_ms: i64,
    /// Repeats with the same `from` and key answer the first send until it expires.
    pub dedup_key: Option<String>,
    /// Where replies should go.
    pub reply_to: Option<String>,
    /// The conversation this message belongs to.
    pub correlation_id: Option<String>,
}

/// A validated broadcast (`POST /v1/broadcasts`).
#[derive(Debug, Clone, PartialEq)]
pub struct NewBroadcast {
    /// The broadcast id (UUIDv7).
    pub id: Uuid,
    /// The channel (default `all`).
    pub channel: String,
    /// The sending agent (never handed its own broadcast).
    pub from: String,
    /// The body as JSON text.
    pub body: String,
    /// Lifetime from the send.
    pub ttl_ms: i64,
}

/// The per-sender token bucket: `rate_per_min` tokens a minute up to `burst`; 0 turns it off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SendRate {
    /// Tokens added per minute.
    pub per_min: u32,
    /// Most tokens held (the burst).
    pub burst: u32,
}

impl SendRate {
    /// No limit.
    pub const OFF: SendRate = SendRate { per_min: 0, burst: 0 };

    /// Whether sends are limited at all.
    pub fn is_on(&self) -> bool {
        self.per_min > 0 && self.burst > 0
    }

    /// Tokens held at `now_ms` after holding `tokens` at `at_ms` (None: a full bucket).
    pub fn refill(&self, tokens: Option<f64>, at_ms: i64, now_ms: i64) -> f64 {
        let burst = f64::from(self.burst);
        match tokens {
            None => burst,
            Some(t) => {
                let elapsed = (now_ms - at_ms).max(0) as f64;
                (t + elapsed * f64::from(self.per_min) / 60_000.0).min(burst)
            }
        }
    }

    /// Milliseconds until a bucket holding `tokens` holds one.
    pub fn wait_ms(&self, tokens: f64) -> i64 {
        let missing = (1.0 - tokens).max(0.0);
        (missing * 60_000.0 / f64::from(self.per_min.max(1))).ceil() as i64
    }
}

/// A recipient as a send answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Recipient {
    /// The agent.
    pub agent: String,
    /// Its latest receive, ack or nack, to the second; null if it never received.
    #[schema(value_type = Option<String>)]
    pub last_seen_at: Option<Timestamp>,
}

/// What a send answers (the first answer again for a duplicate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Sent {
    /// The message id.
    pub id: Uuid,
    /// When it stops being delivered.
    #[schema(value_type = String)]
    pub expires_at: Timestamp,
    /// Each recipient and when it was last heard from.
    pub recipients: Vec<Recipient>,
    /// True when this repeats an earlier send with the same `from` and `dedup_key`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// What a broadcast answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BroadcastSent {
    /// The broadcast id.
    pub id: Uuid,
    /// Its channel.
    pub channel: String,
    /// Its place in the channel (readers' cursors pass it in this order).
    pub seq: i64,
    /// When it stops being delivered.
    #[schema(value_type = String)]
    pub expires_at: Timestamp,
}

/// One delivered message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Message {
    /// The message or broadcast id.
    pub id: Uuid,
    /// `direct` or `broadcast`.
    pub kind: MessageKind,
    /// The broadcast's channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The sending agent.
    pub from: String,
    /// The body as sent.
    #[schema(value_type = serde_json::Value)]
    pub body: Box<RawValue>,
    /// When it was sent.
    #[schema(value_type = String)]
    pub sent_at: Timestamp,
    /// When it stops being delivered.
    #[schema(value_type = String)]
    pub expires_at: Timestamp,
    /// Where replies should go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The conversation it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Ack or nack with this; it goes stale when the message is delivered again.
    pub receipt: String,
    /// Deliveries so far, this one included.
    pub delivery_count: u32,
}

/// A message in an agent's dead letters.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadMessage {
    /// The message or broadcast id.
    pub id: Uuid,
    /// `direct` or `broadcast`.
    pub kind: MessageKind,
    /// The broadcast's channel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// The sending agent.
    pub from: String,
    /// The body as sent.
    #[schema(value_type = serde_json::Value)]
    pub body: Box<RawValue>,
    /// When it was sent.
    #[schema(value_type = String)]
    pub sent_at: Timestamp,
    /// When it went dead.
    #[schema(value_type = String)]
    pub dead_at: Timestamp,
    /// Where replies should go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The conversation it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Deliveries it had.
    pub delivery_count: u32,
}

/// An agent's position in one channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChannelCursor {
    /// The channel.
    pub channel: String,
    /// The last broadcast of the channel this agent has passed.
    pub seq: i64,
}

/// An inbox as the agent list shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentInfo {
    /// The agent's name.
    pub name: String,
    /// Messages it could receive now (direct, redeliverable, and channel broadcasts past its cursors).
    pub ready: u64,
    /// Messages received and not yet acked within their visibility.
    pub in_flight: u64,
    /// Dead letters.
    pub dead: u64,
    /// Its latest receive, ack or nack, to the second.
    #[schema(value_type = Option<String>)]
    pub last_seen_at: Option<Timestamp>,
    /// Its channels (only on `GET /v1/agents/{agent}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<ChannelCursor>>,
}

/// One receipt's outcome in an ack or nack.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceiptOutcome {
    /// The message the receipt names.
    pub id: Uuid,
    /// `None`: done; otherwise why not (`stale_lease`).
    pub error: Option<Error>,
}

/// What a receive delivered, and the send-to-first-receive waits it observed.
#[derive(Debug, Clone, Default)]
pub struct Received {
    /// The messages, oldest first.
    pub messages: Vec<Message>,
    /// Milliseconds from send to this first delivery, for the messages received the first time.
    pub first_waits_ms: Vec<i64>,
}

/// The notifier key a receive of agent `name` waits on (`/` is in no name, so no queue or item
/// key can be the same).
pub fn wake_agent(name: &str) -> String {
    format!("agent/{name}")
}

/// The notifier key receivers subscribed to `channel` wait on.
pub fn wake_channel(channel: &str) -> String {
    format!("channel/{channel}")
}

/// 404 for an agent no send or receive has named.
pub fn agent_not_found(name: &str) -> Error {
    Error::new(ErrorCode::NotFound, format!("agent {name:?} not found"))
}

/// The `stale_lease` a receipt gets once its message was delivered again, acked or is gone.
pub fn stale_receipt() -> Error {
    Error::new(
        ErrorCode::StaleLease,
        "the receipt is stale: the message was acked, nacked or delivered again",
    )
}

/// Seconds precision of `last_seen_at` (kept to the second, so a busy agent rewrites it rarely).
pub fn to_second(ms: i64) -> i64 {
    ms - ms.rem_euclid(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_and_refuse_foreign_text() {
        let r = Receipt { id: Uuid::now_v7(), token: 42 };
        assert_eq!(Receipt::parse(&r.encode()), Some(r));
        assert_eq!(Receipt::parse("nope"), None);
        assert_eq!(Receipt::parse(&format!("{}.0", r.id.simple())), None);
        assert_eq!(Receipt::parse(&format!("{}.x", r.id.simple())), None);
        assert_eq!(Receipt::parse(&format!("{}.1", r.id)), None, "hyphenated ids are not receipts");
    }

    #[test]
    fn the_send_bucket_refills_per_minute_up_to_its_burst() {
        let r = SendRate { per_min: 100, burst: 20 };
        assert_eq!(r.refill(None, 0, 0), 20.0);
        assert_eq!(r.refill(Some(0.0), 0, 600), 1.0);
        assert_eq!(r.refill(Some(0.0), 0, 60_000), 20.0);
        assert_eq!(r.wait_ms(0.0), 600);
        assert_eq!(r.wait_ms(0.5), 300);
        assert!(!SendRate::OFF.is_on());
    }

    #[test]
    fn wake_keys_never_meet_queue_names() {
        assert!(crate::validate::plain_name("agent/x", 128, "q", "queue name").is_err());
        assert_ne!(wake_agent("x"), "agent:x");
    }
}
