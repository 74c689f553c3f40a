//! The agent-message domain of the storage contract: inboxes with visibility, receipts and dead
//! letters, and broadcasts stored once per channel and read past per-agent cursors.

use async_trait::async_trait;
use ferry_core::Result;
use ferry_core::message::{
    AgentInfo, BroadcastSent, ChannelCursor, DeadMessage, NewBroadcast, NewMessage, Receipt, ReceiptOutcome,
    Received, SendRate, Sent,
};
use ferry_core::wire::ReceiveRequest;
use uuid::Uuid;

/// Which inboxes a list returns.
#[derive(Debug, Clone, Default)]
pub struct AgentFilter {
    /// Only these names (a token restricted to agents); `None`: all.
    pub names: Option<Vec<String>>,
    /// Names after this one (the page cursor).
    pub after: Option<String>,
    /// Page size.
    pub limit: usize,
}

/// One maintenance pass over messages.
#[derive(Debug, Clone, Copy)]
pub struct MessageSweep {
    /// Most rows each step of the pass deletes or moves.
    pub batch: usize,
    /// Dead letters older than this are deleted.
    pub dead_retention_ms: i64,
    /// Deliveries a message gets before it goes dead (overdue ones are moved by the pass).
    pub max_deliveries: u32,
}

/// Inboxes and broadcasts. Rules every backend keeps:
/// - a send is all or nothing: a full inbox (`limits.max_inbox_depth` ready + in flight) or an
///   empty send bucket refuses the whole send and writes nothing;
/// - a receipt is a fencing token: an ack or nack with an older one answers `stale_lease` and
///   changes nothing; nothing is delivered after its ack was answered;
/// - nothing expired is delivered; a broadcast is never handed to its sender;
/// - broadcast sequences grow in commit order per channel, so a cursor never passes a row that
///   commits later; a cursor passes only broadcasts acked, dead, expired or the agent's own.
#[async_trait]
pub trait MessageStore: Send + Sync {
    /// Stores a message for every recipient (naming their inboxes); a repeat of `from` +
    /// `dedup_key` before the first expires answers the first send with `duplicate: true`.
    async fn send_message(&self, msg: NewMessage, rate: SendRate) -> Result<Sent>;

    /// Stores one broadcast row for its channel and numbers it.
    async fn send_broadcast(&self, b: NewBroadcast, rate: SendRate) -> Result<BroadcastSent>;

    /// Hands out up to `req.max` visible messages, oldest first, holding them for
    /// `req.visibility_ms`; one past its `max_deliveries` goes dead instead. Names the inbox.
    async fn receive_messages(
        &self,
        agent: &str,
        req: ReceiveRequest,
        max_deliveries: u32,
    ) -> Result<Received>;

    /// Acks held messages: one outcome per receipt, in order.
    async fn ack_messages(&self, agent: &str, receipts: Vec<Receipt>) -> Result<Vec<ReceiptOutcome>>;

    /// Hands held messages back, visible after `delay_ms`: one outcome per receipt.
    async fn nack_messages(
        &self,
        agent: &str,
        receipts: Vec<Receipt>,
        delay_ms: i64,
    ) -> Result<Vec<ReceiptOutcome>>;

    /// An agent's dead letters after position `after`, each with its position (the page cursor).
    async fn dead_messages(
        &self,
        agent: &str,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, DeadMessage)>>;

    /// Puts dead letters (`ids`, or all) back in the inbox with a fresh count and ttl.
    async fn replay_dead_messages(&self, agent: &str, ids: Option<Vec<Uuid>>) -> Result<u64>;

    /// Replaces an agent's subscriptions (new ones start at their channel's head); names the
    /// inbox.
    async fn set_channels(&self, agent: &str, channels: Vec<String>) -> Result<Vec<ChannelCursor>>;

    /// Inboxes by name, with their counts.
    async fn list_agents(&self, filter: AgentFilter) -> Result<Vec<AgentInfo>>;

    /// One inbox with its channels; `not_found` if no send or receive named it.
    async fn get_agent(&self, name: &str) -> Result<AgentInfo>;

    /// Deliveries by state (`ready`, `in_flight`, `dead`) across the cluster.
    async fn message_counts(&self) -> Result<Vec<(&'static str, u64)>>;

    /// Moves overdue deliveries to dead letters and deletes expired rows, `sweep.batch` per
    /// step; returns the rows touched.
    async fn sweep_messages(&self, sweep: MessageSweep) -> Result<u64>;
}
