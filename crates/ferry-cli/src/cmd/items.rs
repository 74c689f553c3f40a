//! `ferry items`: work items: create, show (or wait for a newer version), list, patch, and
//! each item's history. A flag per body field; `--json` prints the server's JSON.

use crate::ClientOpts;
use crate::cmd::jobs::more;
use crate::output::{fail, show, table};
use clap::Subcommand;
use ferry_client::ClientError;
use ferry_core::item::{Artifact, Item, ItemStatus, PatchMode};
use ferry_core::time::format_ms;
use ferry_core::wire::{CreateItemBody, ItemResponse, ItemsQuery, PatchItemBody};
use serde_json::{Map, Value};

/// `--wait-ms` when unset: the server's default `limits.max_wait_ms`, the longest it allows.
const DEFAULT_WAIT_MS: i64 = 30_000;

/// Parses `--status`.
fn parse_status(s: &str) -> Result<ItemStatus, String> {
    ItemStatus::parse(s).ok_or_else(|| {
        let names: Vec<&str> = ItemStatus::ALL.iter().map(|v| v.as_str()).collect();
        format!("expected one of {}", names.join(", "))
    })
}

/// Parses `--mode`.
fn parse_mode(s: &str) -> Result<PatchMode, String> {
    match s {
        "merge" => Ok(PatchMode::Merge),
        "strict" => Ok(PatchMode::Strict),
        _ => Err("expected merge or strict".into()),
    }
}

/// Parses `--context`: a JSON object.
fn parse_context(text: Option<String>) -> Result<Option<Map<String, Value>>, String> {
    text.map(|t| serde_json::from_str(&t).map_err(|e| format!("--context is not a JSON object: {e}")))
        .transpose()
}

/// Artifacts named by uri only.
fn uri_artifacts(uris: Vec<String>) -> Option<Vec<Artifact>> {
    (!uris.is_empty()).then(|| uris.into_iter().map(|uri| Artifact { uri, meta: None }).collect())
}

/// `ferry items ...`.
#[derive(Subcommand, Debug)]
pub enum ItemsCmd {
    /// Create a work item.
    Create {
        /// The item's id (1-128 of A-Z a-z 0-9 . _ : -); default a server UUIDv7.
        #[arg(long)]
        id: Option<String>,
        /// One line on what the work is.
        #[arg(long)]
        title: String,
        /// Longer text.
        #[arg(long)]
        description: Option<String>,
        /// todo (default), blocked, or in_progress (needs --agent).
        #[arg(long, value_parser = parse_status)]
        status: Option<ItemStatus>,
        /// The holder (an agent name).
        #[arg(long)]
        assignee: Option<String>,
        /// The creating agent.
        #[arg(long)]
        agent: Option<String>,
        /// An artifact uri (repeatable).
        #[arg(long = "artifact")]
        artifacts: Vec<String>,
        /// Initial context, a JSON object.
        #[arg(long)]
        context: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show one item, or wait for a version newer than --wait-version-gt.
    Show {
        /// Item id.
        id: String,
        /// Answer once the item's version is greater than this.
        #[arg(long)]
        wait_version_gt: Option<i64>,
        /// Longest wait for --wait-version-gt, then the current item [default 30000].
        #[arg(long, requires = "wait_version_gt")]
        wait_ms: Option<i64>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List items by id.
    List {
        /// Only items in this status: todo, in_progress, blocked, done, failed or cancelled.
        #[arg(long, value_parser = parse_status)]
        status: Option<ItemStatus>,
        /// Only items held by this agent.
        #[arg(long)]
        assignee: Option<String>,
        #[command(flatten)]
        page: crate::PageArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Change an item (one compare-and-set with --expected-version or --if-match).
    Patch {
        /// Item id.
        id: String,
        /// The writing agent (required to move to in_progress).
        #[arg(long)]
        agent: Option<String>,
        /// The version read: a conflict is 409 version_conflict.
        #[arg(long)]
        expected_version: Option<i64>,
        /// The version read, sent as If-Match (strict unless --mode merge): a conflict is 412.
        #[arg(long)]
        if_match: Option<i64>,
        /// merge (default: conflict only on paths this write touches) or strict.
        #[arg(long, value_parser = parse_mode)]
        mode: Option<PatchMode>,
        /// New title.
        #[arg(long)]
        title: Option<String>,
        /// New description.
        #[arg(long)]
        description: Option<String>,
        /// New holder.
        #[arg(long, conflicts_with = "unassign")]
        assignee: Option<String>,
        /// Clear the holder.
        #[arg(long)]
        unassign: bool,
        /// Target status: todo, in_progress, blocked, done, failed or cancelled.
        #[arg(long, value_parser = parse_status)]
        status: Option<ItemStatus>,
        /// Leave a terminal status (strict writes only).
        #[arg(long)]
        reopen: bool,
        /// Why (kept in the history and the status event).
        #[arg(long)]
        reason: Option<String>,
        /// An RFC 7396 merge patch of the context (a JSON object; null removes a key).
        #[arg(long)]
        context: Option<String>,
        /// Add (or replace) an artifact by uri (repeatable).
        #[arg(long = "add-artifact")]
        add_artifacts: Vec<String>,
        /// Remove an artifact by uri (repeatable).
        #[arg(long = "remove-artifact")]
        remove_artifacts: Vec<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// An item's kept versions, newest first.
    History {
        /// Item id.
        id: String,
        #[command(flatten)]
        page: crate::PageArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Runs `ferry items ...`.
pub async fn items(cmd: ItemsCmd) -> i32 {
    match cmd {
        ItemsCmd::Create {
            id,
            title,
            description,
            status,
            assignee,
            agent,
            artifacts: uris,
            context: ctx,
            client: o,
        } => {
            let context = match parse_context(ctx) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let body = CreateItemBody {
                id,
                title,
                description,
                status,
                assignee,
                artifacts: uri_artifacts(uris),
                context,
                agent,
            };
            show(o.json, o.client().create_item(&body).await, |r| {
                println!("{}{}", line(&r.item), if r.duplicate { " (duplicate)" } else { "" })
            })
        }
        ItemsCmd::Show { id, wait_version_gt, wait_ms, client: o } => {
            let c = o.client();
            let r = match wait_version_gt {
                Some(v) => c.wait_item(&id, v, wait_ms.unwrap_or(DEFAULT_WAIT_MS)).await,
                None => c.get_item(&id).await,
            };
            // As the server sends it: `{"item": ...}`.
            show(o.json, r.map(|item| ItemResponse { item, duplicate: false }), |r| show_item(&r.item))
        }
        ItemsCmd::List { status, assignee, page: crate::PageArgs { limit, cursor }, client: o } => {
            let q = ItemsQuery { status, assignee, limit: Some(limit), cursor };
            show(o.json, o.client().list_items(&q).await, |p| {
                let rows: Vec<Vec<String>> = p
                    .items
                    .iter()
                    .map(|i| {
                        vec![
                            i.id.clone(),
                            i.status.as_str().to_string(),
                            i.assignee.clone().unwrap_or_else(|| "-".into()),
                            i.version.to_string(),
                            i.artifacts.len().to_string(),
                            format_ms(i.updated_at.0),
                            i.title.clone(),
                        ]
                    })
                    .collect();
                table(&["id", "status", "assignee", "version", "artifacts", "updated_at", "title"], &rows);
                more(p.next_cursor);
            })
        }
        ItemsCmd::Patch {
            id,
            agent,
            expected_version,
            if_match,
            mode,
            title,
            description,
            assignee,
            unassign,
            status,
            reopen,
            reason,
            context: ctx,
            add_artifacts,
            remove_artifacts,
            client: o,
        } => {
            let context = match parse_context(ctx) {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let body = PatchItemBody {
                id: None,
                agent,
                expected_version,
                mode,
                title,
                description,
                assignee: if unassign { Some(None) } else { assignee.map(Some) },
                status,
                reopen: reopen.then_some(true),
                reason,
                context,
                artifacts_add: uri_artifacts(add_artifacts),
                artifacts_remove: (!remove_artifacts.is_empty()).then_some(remove_artifacts),
            };
            let c = o.client();
            let r = match if_match {
                Some(v) => c.patch_item_if_match(&id, v, &body).await,
                None => c.patch_item(&id, &body).await,
            };
            show(o.json, r.map_err(Explained), |r| {
                println!("{}{}", line(&r.item), if r.changed { "" } else { " (unchanged)" })
            })
        }
        ItemsCmd::History { id, page: crate::PageArgs { limit, cursor }, client: o } => {
            show(o.json, o.client().item_history(&id, Some(limit), cursor.as_deref()).await, |p| {
                let rows: Vec<Vec<String>> = p
                    .history
                    .iter()
                    .map(|h| {
                        vec![
                            h.version.to_string(),
                            format_ms(h.at.0),
                            h.agent.clone().unwrap_or_else(|| "-".into()),
                            h.mode.clone(),
                            h.paths.join(","),
                            h.reason.clone().unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                table(&["version", "at", "agent", "mode", "paths", "reason"], &rows);
                more(p.next_cursor);
            })
        }
    }
}

/// A client error with what a conflict's details tell a person: the version now and the
/// paths that changed since the one sent, or who holds the item.
struct Explained(ClientError);

impl std::fmt::Display for Explained {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let ClientError::Api { error, .. } = &self.0 else { return Ok(()) };
        let Some(d) = &error.details else { return Ok(()) };
        if let Some(paths) = d.get("conflicting_paths").and_then(Value::as_array) {
            let paths: Vec<&str> = paths.iter().filter_map(Value::as_str).collect();
            write!(
                f,
                "; changed since: {}",
                if paths.is_empty() { "-".to_string() } else { paths.join(",") }
            )?;
        }
        if let Some(holder) = d.get("assignee").and_then(Value::as_str) {
            write!(f, "; assigned to {holder}")?;
        }
        if let Some(v) = d.get("current").and_then(|c| c.get("version")).and_then(Value::as_i64) {
            write!(f, "; current version {v}")?;
        }
        Ok(())
    }
}

/// One item on one line: id, version, status, holder.
fn line(i: &Item) -> String {
    let holder = i.assignee.as_deref().map(|a| format!(" assignee {a}")).unwrap_or_default();
    format!("item {} version {} status {}{holder}", i.id, i.version, i.status.as_str())
}

fn show_item(i: &Item) {
    let rows = [
        ("id", i.id.clone()),
        ("title", i.title.clone()),
        ("status", i.status.as_str().to_string()),
        ("assignee", i.assignee.clone().unwrap_or_else(|| "-".into())),
        ("version", i.version.to_string()),
        ("created_at", format_ms(i.created_at.0)),
        ("updated_at", format_ms(i.updated_at.0)),
        ("context", serde_json::to_string(&i.context).unwrap_or_default()),
        ("description", i.description.clone()),
    ];
    for (k, v) in rows {
        println!("{k:<13}{v}");
    }
    if !i.artifacts.is_empty() {
        println!("artifacts:");
        for a in &i.artifacts {
            match &a.meta {
                Some(m) => println!("  {} {}", a.uri, serde_json::Value::Object(m.clone())),
                None => println!("  {}", a.uri),
            }
        }
    }
}
