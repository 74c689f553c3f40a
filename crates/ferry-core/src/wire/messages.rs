//! Bodies of the agent-message endpoints (`/v1/messages`, `/v1/broadcasts`, `/v1/agents`), and
//! their checks: what a send, a receive, an ack or a channel change may hold.

use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::message::{AgentInfo, ChannelCursor, DeadMessage, Message, NewBroadcast, NewMessage, Receipt};
use crate::validate;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Default lifetime of a message or broadcast: a day.
pub const DEFAULT_MESSAGE_TTL_MS: i64 = 86_400_000;
/// Default visibility of a received message.
pub const DEFAULT_VISIBILITY_MS: i64 = 30_000;

/// Checks an agent or channel name: a plain name that a URL path can address.
pub fn inbox_name(name: &str, limits: &Limits, field: &str) -> Result<()> {
    validate::plain_name(name, limits.max_agent_name_len, field, "agent name")?;
    if name == "." || name == ".." {
        return Err(Error::invalid(field, "an agent name may not be . or .."));
    }
    Ok(())
}

fn ttl(ttl_ms: Option<i64>, limits: &Limits) -> Result<i64> {
    let ttl = ttl_ms.unwrap_or(DEFAULT_MESSAGE_TTL_MS.min(limits.max_message_ttl_ms));
    if ttl < 1 || ttl > limits.max_message_ttl_ms {
        return Err(Error::invalid("ttl_ms", format!("ttl_ms must be 1..={}", limits.max_message_ttl_ms)));
    }
    Ok(ttl)
}

fn key(k: &Option<String>, limits: &Limits, field: &str) -> Result<()> {
    if let Some(k) = k
        && (k.is_empty() || k.len() > limits.max_unique_key_len)
    {
        return Err(Error::invalid(
            field,
            format!("{field} must be 1..={} bytes", limits.max_unique_key_len),
        ));
    }
    Ok(())
}

/// A body as stored: within its size, and readable by every receiver. JSON's grammar allows
/// numbers no double holds (`1e999999`) and lone surrogate escapes (`"\ud800"`), which common
/// parsers (serde_json's, JavaScript's `JSON.parse` for the former) refuse or turn into
/// something else: a message every receive would fail to read is refused at the send (422).
fn body_text(body: Box<RawValue>, limits: &Limits) -> Result<String> {
    validate::json_size(&body, limits.max_message_bytes, "body")?;
    serde_json::from_str::<serde_json::Value>(body.get())
        .map_err(|e| Error::invalid("body", format!("body is JSON no receiver could read back: {e}")))?;
    Ok(body.get().to_string())
}

/// `POST /v1/messages` body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendBody {
    /// Recipients: 1..=`limits.max_recipients` agent names.
    #[schema(value_type = Vec<crate::validate::names::AgentName>, min_items = 1, max_items = 100)]
    pub to: Vec<String>,
    /// The sending agent (a token restricted to agents must name one of its own).
    #[schema(value_type = crate::validate::names::AgentName)]
    pub from: String,
    /// Any JSON, at most `limits.max_message_bytes` serialized (else 413).
    #[schema(value_type = serde_json::Value)]
    pub body: Box<RawValue>,
    /// Lifetime: default a day, at most `limits.max_message_ttl_ms`.
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1, maximum = 604_800_000)]
    pub ttl_ms: Option<i64>,
    /// A repeat with the same `from` and key before the first expires answers the first send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 256)]
    pub dedup_key: Option<String>,
    /// Where replies should go (an agent name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::validate::names::AgentName>)]
    pub reply_to: Option<String>,
    /// The conversation it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 256)]
    pub correlation_id: Option<String>,
}

impl SendBody {
    /// Checks every field and returns the send the store takes.
    pub fn validate(self, limits: &Limits) -> Result<NewMessage> {
        inbox_name(&self.from, limits, "from")?;
        if self.to.is_empty() || self.to.len() > limits.max_recipients {
            return Err(Error::invalid("to", format!("to must list 1..={} agents", limits.max_recipients)));
        }
        let mut to: Vec<String> = Vec::with_capacity(self.to.len());
        for (i, a) in self.to.into_iter().enumerate() {
            inbox_name(&a, limits, &format!("to[{i}]"))?;
            if !to.contains(&a) {
                to.push(a);
            }
        }
        if let Some(r) = &self.reply_to {
            inbox_name(r, limits, "reply_to")?;
        }
        key(&self.dedup_key, limits, "dedup_key")?;
        key(&self.correlation_id, limits, "correlation_id")?;
        Ok(NewMessage {
            id: Uuid::now_v7(),
            to,
            from: self.from,
            ttl_ms: ttl(self.ttl_ms, limits)?,
            body: body_text(self.body, limits)?,
            dedup_key: self.dedup_key,
            reply_to: self.reply_to,
            correlation_id: self.correlation_id,
        })
    }
}

/// `POST /v1/broadcasts` body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BroadcastBody {
    /// The channel (named like agents); default `all`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::validate::names::AgentName>)]
    pub channel: Option<String>,
    /// The sending agent (never handed its own broadcast).
    #[schema(value_type = crate::validate::names::AgentName)]
    pub from: String,
    /// Any JSON, at most `limits.max_message_bytes` serialized (else 413).
    #[schema(value_type = serde_json::Value)]
    pub body: Box<RawValue>,
    /// Lifetime: default a day, at most `limits.max_message_ttl_ms`.
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1, maximum = 604_800_000)]
    pub ttl_ms: Option<i64>,
}

impl BroadcastBody {
    /// Checks every field and returns the broadcast the store takes.
    pub fn validate(self, limits: &Limits) -> Result<NewBroadcast> {
        inbox_name(&self.from, limits, "from")?;
        let channel = self.channel.unwrap_or_else(|| crate::message::DEFAULT_CHANNEL.to_string());
        inbox_name(&channel, limits, "channel")?;
        Ok(NewBroadcast {
            id: Uuid::now_v7(),
            channel,
            from: self.from,
            ttl_ms: ttl(self.ttl_ms, limits)?,
            body: body_text(self.body, limits)?,
        })
    }
}

/// `POST /v1/agents/{agent}/receive` body (`{}` takes the defaults).
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveBody {
    /// Most messages to take: 1..=`limits.max_claim`, default 1.
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1, maximum = 1000)]
    pub max: Option<i64>,
    /// Wait up to this long for a first message (long-poll), ≤ `limits.max_wait_ms`.
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 0, maximum = 30000)]
    pub wait_ms: Option<i64>,
    /// How long received messages stay hidden from other receives (default 30,000).
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 10, maximum = 86_400_000)]
    pub visibility_ms: Option<i64>,
}

/// A checked receive: how many, how long to wait and to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceiveRequest {
    /// Most messages.
    pub max: usize,
    /// Long-poll wait.
    pub wait_ms: i64,
    /// Visibility of what is received.
    pub visibility_ms: i64,
}

impl ReceiveBody {
    /// Checks the numbers against the limits.
    pub fn validate(&self, limits: &Limits) -> Result<ReceiveRequest> {
        let max = self.max.unwrap_or(1);
        if max < 1 || max > limits.max_claim as i64 {
            return Err(Error::invalid("max", format!("max must be 1..={}", limits.max_claim)));
        }
        let wait_ms = self.wait_ms.unwrap_or(0);
        if wait_ms < 0 || wait_ms > limits.max_wait_ms {
            return Err(Error::invalid("wait_ms", format!("wait_ms must be 0..={}", limits.max_wait_ms)));
        }
        let visibility_ms =
            validate::lease_ms(self.visibility_ms.unwrap_or(DEFAULT_VISIBILITY_MS), limits, "visibility_ms")?;
        Ok(ReceiveRequest { max: max as usize, wait_ms, visibility_ms })
    }
}

/// `POST /v1/agents/{agent}/receive` answer.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct ReceiveResponse {
    /// What was received, oldest first (none when the wait ended empty).
    pub messages: Vec<Message>,
}

/// Parses receipts, naming the first malformed one.
fn receipts(rs: &[String], limits: &Limits) -> Result<Vec<Receipt>> {
    if rs.is_empty() {
        return Err(Error::invalid("receipts", "receipts must not be empty"));
    }
    if rs.len() > limits.max_batch {
        return Err(Error::too_large(
            "receipts",
            format!("{} receipts; the batch limit is {}", rs.len(), limits.max_batch),
        ));
    }
    rs.iter()
        .enumerate()
        .map(|(i, r)| {
            Receipt::parse(r).ok_or_else(|| {
                Error::invalid(format!("receipts[{i}]"), "not a receipt this server handed out")
            })
        })
        .collect()
}

/// A receipt as handed out by a receive: the message id in 32 hex digits, a dot, the delivery's
/// fencing token.
#[derive(ToSchema)]
#[schema(pattern = r"^[0-9a-f]{32}\.[1-9][0-9]{0,17}$", min_length = 34, max_length = 51)]
pub struct ReceiptText(pub String);

/// `POST /v1/agents/{agent}/ack` body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// Receipts of the messages done with (1..=`limits.max_batch`).
    #[schema(value_type = Vec<ReceiptText>, min_items = 1, max_items = 10000)]
    pub receipts: Vec<String>,
}

impl AckBody {
    /// The parsed receipts.
    pub fn validate(&self, limits: &Limits) -> Result<Vec<Receipt>> {
        receipts(&self.receipts, limits)
    }
}

/// `POST /v1/agents/{agent}/nack` body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NackBody {
    /// Receipts of the messages to hand back (1..=`limits.max_batch`).
    #[schema(value_type = Vec<ReceiptText>, min_items = 1, max_items = 10000)]
    pub receipts: Vec<String>,
    /// Visible again after this long (default 0), ≤ `limits.max_delay_ms`.
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 0, maximum = 31_622_400_000_i64)]
    pub delay_ms: Option<i64>,
}

impl NackBody {
    /// The parsed receipts and the delay.
    pub fn validate(&self, limits: &Limits) -> Result<(Vec<Receipt>, i64)> {
        let delay = self.delay_ms.unwrap_or(0);
        if delay < 0 || delay > limits.max_delay_ms {
            return Err(Error::invalid("delay_ms", format!("delay_ms must be 0..={}", limits.max_delay_ms)));
        }
        Ok((receipts(&self.receipts, limits)?, delay))
    }
}

/// One receipt's outcome.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct ReceiptResult {
    /// The message the receipt named.
    pub id: Uuid,
    /// Whether it was acked (or nacked).
    pub ok: bool,
    /// Why not (`stale_lease`: delivered again, acked or gone since).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
}

/// Ack and nack answers: one result per receipt, in order.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct ReceiptResults {
    /// One per receipt.
    pub results: Vec<ReceiptResult>,
}

/// `?limit=&cursor=` of the dead-letter and agent lists.
#[derive(Debug, Default, Deserialize, Serialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Page size, 1..=`limits.max_page_size` (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /v1/agents/{agent}/dead` answer.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct DeadPage {
    /// Dead letters, oldest death first.
    pub messages: Vec<DeadMessage>,
    /// Cursor of the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// `POST /v1/agents/{agent}/dead/replay` body (`{}`: every dead letter).
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayMessagesBody {
    /// Only these messages (1..=`limits.max_batch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, max_items = 10000)]
    pub ids: Option<Vec<Uuid>>,
}

impl ReplayMessagesBody {
    /// Checks the id count.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        if let Some(ids) = &self.ids
            && (ids.is_empty() || ids.len() > limits.max_batch)
        {
            return Err(Error::invalid("ids", format!("ids must hold 1..={}", limits.max_batch)));
        }
        Ok(())
    }
}

/// `POST /v1/agents/{agent}/dead/replay` answer.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct ReplayedResponse {
    /// Dead letters put back in the inbox.
    pub replayed: u64,
}

/// `PUT /v1/agents/{agent}/channels` body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelsBody {
    /// Every channel to be subscribed to (0..=`limits.max_agent_channels`; may drop `all`).
    #[schema(value_type = Vec<crate::validate::names::AgentName>, max_items = 64)]
    pub channels: Vec<String>,
}

impl ChannelsBody {
    /// The channels, checked and deduplicated.
    pub fn validate(self, limits: &Limits) -> Result<Vec<String>> {
        if self.channels.len() > limits.max_agent_channels {
            return Err(Error::invalid(
                "channels",
                format!("at most {} channels", limits.max_agent_channels),
            ));
        }
        let mut out: Vec<String> = Vec::new();
        for (i, c) in self.channels.into_iter().enumerate() {
            inbox_name(&c, limits, &format!("channels[{i}]"))?;
            if !out.contains(&c) {
                out.push(c);
            }
        }
        Ok(out)
    }
}

/// `PUT /v1/agents/{agent}/channels` answer.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct ChannelsResponse {
    /// The subscriptions now, with each cursor.
    pub channels: Vec<ChannelCursor>,
}

/// `GET /v1/agents` answer.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct AgentsPage {
    /// Inboxes by name.
    pub agents: Vec<AgentInfo>,
    /// Cursor of the next page; null on the last.
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.into()).unwrap()
    }

    #[test]
    fn a_send_is_checked_at_each_limit() {
        let l = Limits::default();
        let send = |to: Vec<String>, ttl: Option<i64>| SendBody {
            to,
            from: "a".into(),
            body: raw("{}"),
            ttl_ms: ttl,
            dedup_key: None,
            reply_to: None,
            correlation_id: None,
        };
        let ok = send(vec!["b".into(), "b".into()], None).validate(&l).unwrap();
        assert_eq!(ok.to, ["b"], "recipients are deduplicated");
        assert_eq!(ok.ttl_ms, DEFAULT_MESSAGE_TTL_MS);
        let many: Vec<String> = (0..=l.max_recipients).map(|i| format!("a{i}")).collect();
        assert_eq!(send(many, None).validate(&l).unwrap_err().field.as_deref(), Some("to"));
        let e = send(vec!["b".into()], Some(l.max_message_ttl_ms + 1)).validate(&l).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("ttl_ms"));
        assert_eq!(send(vec!["x/y".into()], None).validate(&l).unwrap_err().field.as_deref(), Some("to[0]"));
    }

    #[test]
    fn bodies_a_receiver_cannot_read_are_refused() {
        let l = Limits::default();
        let b = |body: &str| {
            BroadcastBody { channel: None, from: "a".into(), body: raw(body), ttl_ms: None }.validate(&l)
        };
        assert!(b(r#"{"n": 123456789012345678901234567890}"#).is_ok(), "a large number reads as a double");
        for bad in [r#"{"n": 1e999999}"#, r#"{"s": "\ud800"}"#] {
            assert_eq!(b(bad).unwrap_err().field.as_deref(), Some("body"), "{bad}");
        }
    }

    #[test]
    fn receipts_are_parsed_or_named() {
        let l = Limits::default();
        let r = Receipt { id: Uuid::now_v7(), token: 3 }.encode();
        assert_eq!(AckBody { receipts: vec![r.clone()] }.validate(&l).unwrap().len(), 1);
        let e = AckBody { receipts: vec![r, "x".into()] }.validate(&l).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("receipts[1]"));
    }
}
