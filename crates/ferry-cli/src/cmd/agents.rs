//! `ferry agents`: agent inboxes: list with counts, show one (with its channels), and set the
//! channels an agent is subscribed to. `--json` prints the server's JSON.

use crate::ClientOpts;
use crate::cmd::jobs::more;
use crate::output::{show, table};
use clap::Subcommand;
use ferry_core::message::{AgentInfo, ChannelCursor};
use ferry_core::time::format_ms;
use ferry_core::wire::ChannelsResponse;

/// `ferry agents ...`.
#[derive(Subcommand, Debug)]
pub enum AgentsCmd {
    /// List agents (inboxes) by name with their counts.
    List {
        #[command(flatten)]
        page: crate::PageArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show one agent: counts, last seen, channels and their cursors.
    Show {
        /// The agent.
        agent: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Set the channels an agent is subscribed to: exactly these (any other is dropped).
    Channels {
        /// The agent.
        agent: String,
        /// The channels (`all` is the default one; leave it out to stop receiving it).
        #[arg(required_unless_present = "none")]
        channels: Vec<String>,
        /// Unsubscribe from every channel.
        #[arg(long, conflicts_with = "channels")]
        none: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Runs `ferry agents ...`.
pub async fn agents(cmd: AgentsCmd) -> i32 {
    match cmd {
        AgentsCmd::List { page: crate::PageArgs { limit, cursor }, client: o } => {
            show(o.json, o.client().list_agents(Some(limit), cursor.as_deref()).await, |p| {
                let rows: Vec<Vec<String>> = p
                    .agents
                    .iter()
                    .map(|a| {
                        vec![
                            a.name.clone(),
                            a.ready.to_string(),
                            a.in_flight.to_string(),
                            a.dead.to_string(),
                            last_seen(a),
                        ]
                    })
                    .collect();
                table(&["name", "ready", "in_flight", "dead", "last_seen_at"], &rows);
                more(p.next_cursor);
            })
        }
        AgentsCmd::Show { agent, client: o } => {
            show(o.json, o.client().get_agent(&agent).await, |a| show_agent(&a))
        }
        AgentsCmd::Channels { agent, channels, none: _, client: o } => {
            // As the server sends it: `{"channels": [...]}`.
            let r = o
                .client()
                .set_channels(&agent, &channels)
                .await
                .map(|channels| ChannelsResponse { channels });
            show(o.json, r, |r| show_channels(&r.channels))
        }
    }
}

fn last_seen(a: &AgentInfo) -> String {
    a.last_seen_at.map_or("-".into(), |t| format_ms(t.0))
}

fn show_agent(a: &AgentInfo) {
    let rows = [
        ("name", a.name.clone()),
        ("ready", a.ready.to_string()),
        ("in_flight", a.in_flight.to_string()),
        ("dead", a.dead.to_string()),
        ("last_seen_at", last_seen(a)),
    ];
    for (k, v) in rows {
        println!("{k:<14}{v}");
    }
    match a.channels.as_deref() {
        Some(cs) if !cs.is_empty() => {
            println!("channels:");
            for c in cs {
                println!("  {} (seq {})", c.channel, c.seq);
            }
        }
        _ => println!("{:<14}-", "channels"),
    }
}

fn show_channels(cs: &[ChannelCursor]) {
    if cs.is_empty() {
        println!("no channels");
        return;
    }
    let rows: Vec<Vec<String>> = cs.iter().map(|c| vec![c.channel.clone(), c.seq.to_string()]).collect();
    table(&["channel", "seq"], &rows);
}
