//! `ferry hosts`: registered hosts and their probed health: list, add, rm.

use crate::ClientOpts;
use crate::output::{show, table};
use clap::Subcommand;
use ferry_core::wire::HostBody;

/// `ferry hosts` subcommands.
#[derive(Subcommand, Debug)]
pub enum HostsCmd {
    /// Hosts with their status and latest probe.
    List {
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Register a host and its health URL.
    Add {
        /// Unique name.
        name: String,
        /// http:// URL answering 2xx when healthy.
        health_url: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Forget a host.
    Rm {
        /// Host name.
        name: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Runs `ferry hosts`.
pub async fn hosts(cmd: HostsCmd) -> i32 {
    match cmd {
        HostsCmd::List { client: o } => show(o.json, o.client().hosts().await, |r| {
            let rows: Vec<Vec<String>> = r
                .hosts
                .iter()
                .map(|h| {
                    let last = h.last_probe.as_ref();
                    vec![
                        h.name.clone(),
                        h.status.as_str().to_string(),
                        last.map_or("-".into(), |p| format!("{} ms", p.latency_ms)),
                        last.and_then(|p| p.error.clone()).unwrap_or_else(|| "-".into()),
                        h.health_url.clone(),
                    ]
                })
                .collect();
            table(&["host", "status", "latency", "last error", "url"], &rows);
        }),
        // The registered host prints as JSON either way.
        HostsCmd::Add { name, health_url, client: o } => {
            show(true, o.client().create_host(&HostBody { name, health_url }).await, |_| {})
        }
        // Nothing to show but success (`null` with --json).
        HostsCmd::Rm { name, client: o } => show(o.json, o.client().delete_host(&name).await, |()| {}),
    }
}
