//! `ferry broadcasts`: send a broadcast on a channel (every agent subscribed to it receives it
//! once, the sender excepted). `--json` prints the server's JSON.

use crate::ClientOpts;
use crate::cmd::messages::json_body;
use crate::output::{fail, show};
use clap::Subcommand;
use ferry_core::time::format_ms;
use ferry_core::wire::BroadcastBody;

/// `ferry broadcasts ...`.
#[derive(Subcommand, Debug)]
pub enum BroadcastsCmd {
    /// Broadcast a message on a channel.
    Send {
        /// The sending agent (never handed its own broadcast).
        #[arg(long)]
        from: String,
        /// The channel [server default: all].
        #[arg(long)]
        channel: Option<String>,
        /// Lifetime in ms [server default: a day].
        #[arg(long)]
        ttl_ms: Option<i64>,
        /// The body: JSON text, or any other text (sent as a JSON string).
        body: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Runs `ferry broadcasts ...`.
pub async fn broadcasts(cmd: BroadcastsCmd) -> i32 {
    match cmd {
        BroadcastsCmd::Send { from, channel, ttl_ms, body, client: o } => {
            let body = match json_body(&body) {
                Ok(b) => b,
                Err(e) => return fail(e),
            };
            let b = BroadcastBody { channel, from, body, ttl_ms };
            show(o.json, o.client().broadcast(&b).await, |s| {
                println!(
                    "broadcast {} on {} seq {}; expires {}",
                    s.id,
                    s.channel,
                    s.seq,
                    format_ms(s.expires_at.0)
                )
            })
        }
    }
}
