//! `ferry tokens`: create (prints the secret once), list and revoke API tokens.
//!
//! It talks to the server's API when one answers (`--url`, with an admin `--token` once auth
//! is on), or, given `--data-dir`/`--database` or when no server answers at the default
//! address, writes the database directly, which is how the first token of a server started
//! with `auth = true` is made.

use crate::output::{finish, print_json, table};
use clap::Subcommand;
use ferry_client::{Client, ClientError};
use ferry_core::time::format_ms;
use ferry_core::wire::TokenBody;
use ferry_core::{Scope, TokenRecord};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;

/// Where `ferry tokens` acts.
#[derive(clap::Args, Debug, Clone)]
pub struct TokenTarget {
    /// Server URL [default http://127.0.0.1:7700; without a server there, the database].
    #[arg(long, env = "FERRY_URL")]
    url: Option<String>,
    /// API token with the admin scope, when the server has auth on.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Write the database in this data directory directly instead (server stopped, SQLite).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Write this database directly instead (a SQLite path or a postgres:// URL).
    #[arg(long)]
    database: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

/// `ferry tokens` subcommands.
#[derive(Subcommand, Debug)]
pub enum TokensCmd {
    /// Create a token and print its secret (shown once).
    Create {
        /// Scopes, comma-separated: admin, produce, work, read.
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Name of the token [default: the scopes].
        #[arg(long)]
        name: Option<String>,
        /// Limit the token to these queues (comma-separated).
        #[arg(long, value_delimiter = ',')]
        queues: Option<Vec<String>>,
        /// Limit the token to acting as these agents (comma-separated): sending as them,
        /// reading and acking their inboxes, writing work items as them.
        #[arg(long, value_delimiter = ',')]
        agents: Option<Vec<String>>,
        /// Limit the token to these memory namespaces (comma-separated).
        #[arg(long, value_delimiter = ',')]
        namespaces: Option<Vec<String>>,
        #[command(flatten)]
        target: TokenTarget,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        target: TokenTarget,
    },
    /// Revoke a token by id.
    Revoke {
        /// Token id.
        id: String,
        #[command(flatten)]
        target: TokenTarget,
    },
}

enum Target {
    Api(Client),
    Db(Arc<dyn ferry_store::Store>),
}

async fn open_db(t: &TokenTarget) -> Result<Target, String> {
    let mut config = ferry_server::Config::default();
    if let Some(d) = &t.data_dir {
        config.data_dir = d.clone();
    }
    config.database = t.database.clone();
    let (store, _) = ferry_server::open_store(&config, Arc::new(ferry_core::SystemClock))
        .await
        .map_err(|e| format!("{} (is a server running on it? use --url)", e.message))?;
    Ok(Target::Db(store))
}

async fn target(t: &TokenTarget) -> Result<Target, String> {
    if t.data_dir.is_some() || t.database.is_some() {
        return open_db(t).await;
    }
    let url = t.url.clone().unwrap_or_else(|| "http://127.0.0.1:7700".into());
    let client = Client::new(&url).with_token(t.token.clone());
    if t.url.is_none() && matches!(client.health().await, Err(ClientError::Transport(_))) {
        return open_db(t).await;
    }
    Ok(Target::Api(client))
}

fn show_tokens(json: bool, tokens: &[TokenRecord]) {
    if json {
        print_json(&tokens);
        return;
    }
    let rows: Vec<Vec<String>> = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.to_string(),
                t.name.clone(),
                t.scopes.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","),
                t.queues.as_ref().map_or("*".into(), |q| q.join(",")),
                t.agents.as_ref().map_or("*".into(), |a| a.join(",")),
                format_ms(t.created_at),
                t.revoked_at.map_or("-".into(), format_ms),
            ]
        })
        .collect();
    table(&["id", "name", "scopes", "queues", "agents", "created", "revoked"], &rows);
}

/// Runs `ferry tokens`.
pub async fn tokens(cmd: TokensCmd) -> i32 {
    finish(run(cmd).await)
}

async fn run(cmd: TokensCmd) -> Result<(), String> {
    match cmd {
        TokensCmd::Create { scopes, name, queues, agents, namespaces, target: t } => {
            let mut parsed = Vec::new();
            for s in &scopes {
                parsed
                    .push(Scope::parse(s.trim()).ok_or(format!("unknown scope {s:?} ({})", Scope::names()))?);
            }
            let name = name.unwrap_or_else(|| scopes.join("+"));
            let (record, secret) = match target(&t).await? {
                Target::Api(c) => {
                    let body = TokenBody { name, scopes: parsed, queues, agents, namespaces };
                    let new = c.create_token(&body).await.map_err(|e| e.to_string())?;
                    (new.record, new.token)
                }
                Target::Db(store) => {
                    let limits = ferry_core::Limits::default();
                    let now = store.clock().now_ms();
                    let body = TokenBody { name, scopes: parsed, queues, agents, namespaces };
                    let (rec, secret) = ferry_server::mint(body, &limits, now).map_err(|e| e.message)?;
                    let r = store.create_token(rec.clone()).await.map_err(|e| e.message);
                    store.close().await;
                    r?;
                    (rec, secret)
                }
            };
            if t.json {
                print_json(&json!({
                    "token": secret, "id": record.id, "name": record.name, "scopes": record.scopes,
                    "queues": record.queues, "agents": record.agents,
                    "namespaces": record.namespaces
                }));
            } else {
                println!("{secret}");
                eprintln!(
                    "token {} ({}) created; the secret above is shown only once",
                    record.id, record.name
                );
            }
        }
        TokensCmd::List { target: t } => {
            let list = match target(&t).await? {
                Target::Api(c) => c.tokens().await.map_err(|e| e.to_string())?.tokens,
                Target::Db(store) => {
                    let r = store.list_tokens().await.map_err(|e| e.message);
                    store.close().await;
                    r?
                }
            };
            show_tokens(t.json, &list);
        }
        TokensCmd::Revoke { id, target: t } => {
            let uuid = uuid::Uuid::parse_str(&id).map_err(|_| format!("{id:?} is not a token id"))?;
            match target(&t).await? {
                Target::Api(c) => {
                    c.revoke_token(uuid).await.map_err(|e| e.to_string())?;
                }
                Target::Db(store) => {
                    let r = store.revoke_token(uuid).await.map_err(|e| e.message);
                    store.close().await;
                    r?;
                }
            }
            println!("token {uuid} revoked");
        }
    }
    Ok(())
}
