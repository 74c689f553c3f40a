//! `ferry messages`: agent messages: send to agents by name, receive (long-poll), ack, nack,
//! and each agent's dead letters (list, replay). `--json` prints the server's JSON.

use crate::ClientOpts;
use crate::cmd::jobs::more;
use crate::output::{fail, show, table};
use clap::Subcommand;
use ferry_core::message::{Message, Recipient};
use ferry_core::time::format_ms;
use ferry_core::wire::{
    DeadPage, ReceiptResult, ReceiptResults, ReceiveBody, ReceiveResponse, ReplayedResponse, SendBody,
};
use serde_json::value::RawValue;
use uuid::Uuid;

/// `--wait-ms` when unset: no wait (answer at once, possibly empty).
const DEFAULT_WAIT_MS: i64 = 0;

/// A message body from the command line: the text as JSON when it parses, else the text as
/// a JSON string (so `ferry messages send ... hello` sends `"hello"`).
pub fn json_body(text: &str) -> Result<Box<RawValue>, String> {
    match RawValue::from_string(text.trim().to_string()) {
        Ok(v) => Ok(v),
        Err(_) => serde_json::value::to_raw_value(text).map_err(|e| format!("BODY cannot be sent: {e}")),
    }
}

/// `ferry messages ...`.
#[derive(Subcommand, Debug)]
pub enum MessagesCmd {
    /// Send a message to agents by name.
    Send {
        /// The sending agent.
        #[arg(long)]
        from: String,
        /// Recipients, comma-separated (1-100 agent names).
        #[arg(long, value_delimiter = ',', required = true)]
        to: Vec<String>,
        /// Lifetime in ms [server default: a day].
        #[arg(long)]
        ttl_ms: Option<i64>,
        /// A repeat with the same --from and key before the first expires answers the first send.
        #[arg(long)]
        dedup_key: Option<String>,
        /// Where replies should go (an agent name).
        #[arg(long)]
        reply_to: Option<String>,
        /// The conversation the message belongs to.
        #[arg(long)]
        correlation_id: Option<String>,
        /// The body: JSON text, or any other text (sent as a JSON string).
        body: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Receive messages of an agent's inbox, oldest first (each held for the visibility).
    Receive {
        /// The receiving agent.
        agent: String,
        /// Most messages to take [server default 1].
        #[arg(long)]
        max: Option<i64>,
        /// Wait up to this long for a first message (long-poll) [default 0].
        #[arg(long)]
        wait_ms: Option<i64>,
        /// How long received messages stay hidden before they come back [server default 30000].
        #[arg(long)]
        visibility_ms: Option<i64>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Ack received messages by their receipts (exit 1 if any receipt was stale).
    Ack {
        /// The receiving agent.
        agent: String,
        /// Receipts from `ferry messages receive`.
        #[arg(required = true)]
        receipts: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Hand received messages back (exit 1 if any receipt was stale).
    Nack {
        /// The receiving agent.
        agent: String,
        /// Receipts from `ferry messages receive`.
        #[arg(required = true)]
        receipts: Vec<String>,
        /// Visible again after this long [default 0].
        #[arg(long)]
        delay_ms: Option<i64>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List an agent's dead letters.
    Dead {
        /// The agent.
        agent: String,
        #[command(flatten)]
        page: crate::PageArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Put an agent's dead letters back in its inbox (all, or only the ids given).
    Replay {
        /// The agent.
        agent: String,
        /// Dead message ids [default: every dead letter].
        ids: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Runs `ferry messages ...`.
pub async fn messages(cmd: MessagesCmd) -> i32 {
    match cmd {
        MessagesCmd::Send { from, to, ttl_ms, dedup_key, reply_to, correlation_id, body, client: o } => {
            let body = match json_body(&body) {
                Ok(b) => b,
                Err(e) => return fail(e),
            };
            let send = SendBody { to, from, body, ttl_ms, dedup_key, reply_to, correlation_id };
            show(o.json, o.client().send_message(&send).await, |s| {
                let to: Vec<String> = s.recipients.iter().map(recipient).collect();
                println!(
                    "message {} sent to {}; expires {}{}",
                    s.id,
                    to.join(", "),
                    format_ms(s.expires_at.0),
                    if s.duplicate { " (duplicate)" } else { "" }
                )
            })
        }
        MessagesCmd::Receive { agent, max, wait_ms, visibility_ms, client: o } => {
            let body = ReceiveBody { max, wait_ms: Some(wait_ms.unwrap_or(DEFAULT_WAIT_MS)), visibility_ms };
            // As the server sends it: `{"messages": [...]}`.
            let r = o.client().receive(&agent, &body).await.map(|messages| ReceiveResponse { messages });
            show(o.json, r, |r| show_messages(&r.messages))
        }
        MessagesCmd::Ack { agent, receipts, client: o } => {
            let r = o.client().ack(&agent, &receipts).await;
            receipt_results(o.json, r, "acked")
        }
        MessagesCmd::Nack { agent, receipts, delay_ms, client: o } => {
            let r = o.client().nack(&agent, &receipts, delay_ms).await;
            receipt_results(o.json, r, "nacked")
        }
        MessagesCmd::Dead { agent, page: crate::PageArgs { limit, cursor }, client: o } => {
            let r = o.client().dead_messages(&agent, Some(limit), cursor.as_deref()).await;
            show(o.json, r, |p: DeadPage| {
                let rows: Vec<Vec<String>> = p
                    .messages
                    .iter()
                    .map(|m| {
                        vec![
                            m.id.to_string(),
                            m.kind.as_str().to_string(),
                            m.from.clone(),
                            m.channel.clone().unwrap_or_else(|| "-".into()),
                            m.delivery_count.to_string(),
                            format_ms(m.sent_at.0),
                            format_ms(m.dead_at.0),
                            m.body.get().to_string(),
                        ]
                    })
                    .collect();
                table(&["id", "kind", "from", "channel", "deliveries", "sent_at", "dead_at", "body"], &rows);
                more(p.next_cursor);
            })
        }
        MessagesCmd::Replay { agent, ids, client: o } => {
            let mut parsed = Vec::with_capacity(ids.len());
            for id in &ids {
                match Uuid::parse_str(id) {
                    Ok(u) => parsed.push(u),
                    Err(_) => return fail(format!("{id:?} is not a message id")),
                }
            }
            let ids = (!parsed.is_empty()).then_some(parsed);
            let r = o.client().replay_dead(&agent, ids).await.map(|replayed| ReplayedResponse { replayed });
            show(o.json, r, |r| println!("replayed {} messages", r.replayed))
        }
    }
}

/// `agent (last seen <time>)` or `agent (never received)`.
fn recipient(r: &Recipient) -> String {
    match r.last_seen_at {
        Some(t) => format!("{} (last seen {})", r.agent, format_ms(t.0)),
        None => format!("{} (never received)", r.agent),
    }
}

/// Received messages as a table: the receipt first (what ack and nack take).
fn show_messages(ms: &[Message]) {
    if ms.is_empty() {
        println!("no messages");
        return;
    }
    let rows: Vec<Vec<String>> = ms
        .iter()
        .map(|m| {
            vec![
                m.receipt.clone(),
                m.id.to_string(),
                m.kind.as_str().to_string(),
                m.from.clone(),
                m.channel.clone().unwrap_or_else(|| "-".into()),
                m.delivery_count.to_string(),
                format_ms(m.sent_at.0),
                m.correlation_id.clone().unwrap_or_else(|| "-".into()),
                m.reply_to.clone().unwrap_or_else(|| "-".into()),
                m.body.get().to_string(),
            ]
        })
        .collect();
    table(
        &[
            "receipt",
            "id",
            "kind",
            "from",
            "channel",
            "deliveries",
            "sent_at",
            "correlation_id",
            "reply_to",
            "body",
        ],
        &rows,
    );
}

/// Prints ack or nack results (`--json`: the server's `{"results": [...]}`); exit code 1 when
/// a receipt was not taken (stale: delivered again, acked or gone).
fn receipt_results(
    json: bool,
    r: Result<Vec<ReceiptResult>, ferry_client::ClientError>,
    done: &'static str,
) -> i32 {
    let failed = r.as_ref().map_or(0, |v| v.iter().filter(|x| !x.ok).count());
    let code = show(json, r.map(|results| ReceiptResults { results }), |r| {
        let rows: Vec<Vec<String>> = r
            .results
            .iter()
            .map(|x| {
                vec![
                    x.id.to_string(),
                    if x.ok { "yes".to_string() } else { "no".to_string() },
                    x.error.as_ref().map_or("-".into(), |e| e.to_string()),
                ]
            })
            .collect();
        table(&["id", done, "error"], &rows);
    });
    if code == 0 && failed > 0 {
        return fail(format!("{failed} receipt(s) not {done}"));
    }
    code
}
