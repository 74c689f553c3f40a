//! `ferry`: the server (`ferry serve`) and a command-line client for every job operation.
//!
//! Client commands (`cmd/`, one module per domain) talk HTTP to `--url` / `FERRY_URL` through
//! `ferry-client`, and print through `output`: tables for people, JSON with `--json`, and
//! `ferry: <message>` with exit code 1 on failure.

mod bench;
mod bench_catchup;
mod bench_mcp;
mod bench_memory;
mod cmd;
mod import_dir;
mod mcp_bridge;
mod migrate;
mod output;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// ferry: a durable job queue and coordination server.
#[derive(Parser, Debug)]
#[command(name = "ferry", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// One page of a list: shared by every command that lists page by page.
#[derive(clap::Args, Debug, Clone)]
pub struct PageArgs {
    /// Page size.
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    /// Continue from a previous page's cursor.
    #[arg(long)]
    pub cursor: Option<String>,
}

/// Options shared by every client command.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientOpts {
    /// Server URL.
    #[arg(long, env = "FERRY_URL", default_value = "http://127.0.0.1:7700")]
    pub url: String,
    /// API token, when the server has auth on.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

impl ClientOpts {
    /// A client for `--url` with `--token`.
    pub fn client(&self) -> ferry_client::Client {
        ferry_client::Client::new(&self.url).with_token(self.token.clone())
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server (SQLite in ./ferry-data/ by default).
    #[command(
        after_help = "Examples:\n  ferry serve\n  ferry serve --listen 0.0.0.0:7700 --data-dir /var/lib/ferry\n  \
                            ferry serve --database postgres://ferry@db-host/ferry --listen 127.0.0.1:7701"
    )]
    Serve(ServeArgs),
    /// Enqueue a job (payload from an argument, --file or stdin) or, with --batch, JSON lines.
    #[command(
        after_help = "Examples:\n  ferry enqueue emails '{\"to\":\"ann@example.com\"}' --priority 5\n  \
                            ferry enqueue emails --batch --file examples/jobs.jsonl\n  \
                            ferry enqueue emails --batch --file jobs.jsonl --skip 5000 --unique-key-field id"
    )]
    Enqueue(cmd::jobs::EnqueueArgs),
    /// Show, list or cancel jobs.
    Jobs {
        #[command(subcommand)]
        cmd: cmd::jobs::JobsCmd,
    },
    /// The dead-letter queue: list, replay, purge.
    Dlq {
        #[command(subcommand)]
        cmd: cmd::dlq::DlqCmd,
    },
    /// Queues: list with counts, pause, resume.
    Queues {
        #[command(subcommand)]
        cmd: cmd::queues::QueuesCmd,
    },
    /// Cron schedules: list, add, rm, pause, resume, next.
    Schedules {
        #[command(subcommand)]
        cmd: cmd::schedules::SchedulesCmd,
    },
    /// Print events live (job, queue and schedule changes).
    #[command(after_help = "Examples:\n  ferry watch --queue emails\n  ferry watch --since 0")]
    Watch(cmd::watch::WatchArgs),
    /// Benchmark a live server: enqueue in batches, then work the jobs with SDK workers.
    Bench(bench::BenchArgs),
    /// Copy a SQLite database into PostgreSQL, or back (batches, progress, verification, --resume).
    #[command(
        after_help = "Examples:\n  ferry migrate --from ./ferry-data/ferry.db --to postgres://ferry@db-host/ferry\n  \
                            ferry migrate --from postgres://ferry@db-host/ferry --to ./ferry-back/ferry.db"
    )]
    Migrate(migrate::MigrateArgs),
    /// Copy a running SQLite server's database to a file, online, verified (admin token).
    #[command(after_help = "Example:\n  ferry backup --to /backups/ferry-$(date +%F).db")]
    Backup(cmd::backup::BackupArgs),
    /// Put a backup in place as a data directory's database (its server stopped).
    #[command(
        after_help = "Example:\n  ferry restore --from /backups/ferry-2026-12-05.db --data-dir ./ferry-data --force"
    )]
    Restore(cmd::backup::RestoreArgs),
    /// Import a legacy file-based queue (*.job.json, *.claimed, *.result.json); exit 1 if any file was rejected.
    #[command(after_help = "Example:\n  ferry import-dir ./queue-dir --url http://127.0.0.1:7700")]
    ImportDir(import_dir::ImportDirArgs),
    /// API tokens: create (prints the secret once), list, revoke.
    Tokens {
        #[command(subcommand)]
        cmd: cmd::tokens::TokensCmd,
    },
    /// Workers registered by their claims and heartbeats.
    #[command(after_help = "Example:\n  ferry workers --url http://127.0.0.1:7700")]
    Workers(ClientOpts),
    /// Key figures over the last 1 m, 5 m and 1 h (throughput, errors, latencies, backlog).
    #[command(after_help = "Example:\n  ferry stats --json")]
    Stats(ClientOpts),
    /// The scaling advisor's verdict (STAY, PLAN MIGRATION, ACT, MIGRATE NOW), its cause and remedy.
    #[command(after_help = "Examples:\n  ferry advise\n  ferry advise --record\n  ferry advise --history")]
    Advise(cmd::advise::AdviseArgs),
    /// Registered hosts and their probed health: list, add, rm.
    Hosts {
        #[command(subcommand)]
        cmd: cmd::hosts::HostsCmd,
    },
    /// Run checkpoints (LangGraph's saver): threads, show, history, rm, prune, and import of a
    /// SqliteSaver file.
    Checkpoints {
        #[command(subcommand)]
        cmd: cmd::checkpoints::CheckpointsCmd,
    },
    /// Episodic memory: add, show, list, search, stats, export, import, rm, reconcile, rebuild.
    Memory {
        #[command(subcommand)]
        cmd: cmd::memory::MemoryCmd,
    },
    /// Work items (shared task state changed by compare-and-set): create, show, list, patch,
    /// history.
    Items {
        #[command(subcommand)]
        cmd: cmd::items::ItemsCmd,
    },
    /// Agent messages: send, receive (long-poll), ack, nack, dead letters and their replay.
    Messages {
        #[command(subcommand)]
        cmd: cmd::messages::MessagesCmd,
    },
    /// Convoys (groups of jobs run under a fixed or adaptive limit, with one completion job):
    /// add, show, list, members, seal, cancel.
    Convoys {
        #[command(subcommand)]
        cmd: cmd::convoys::ConvoysCmd,
    },
    /// Broadcasts: send a message to every agent subscribed to a channel.
    Broadcasts {
        #[command(subcommand)]
        cmd: cmd::broadcasts::BroadcastsCmd,
    },
    /// Bridge an MCP client that speaks only stdio to a server's /mcp (exits when stdin closes).
    #[command(
        after_help = "Example (a client's server command):\n  ferry mcp --url http://127.0.0.1:7700 --token $FERRY_TOKEN"
    )]
    Mcp(mcp_bridge::McpArgs),
    /// Agent inboxes: list, show, set channels.
    Agents {
        #[command(subcommand)]
        cmd: cmd::agents::AgentsCmd,
    },
    /// The double-entry ledger: accounts (list, show, add, close), transfer, post, void,
    /// statement, verify, import-json.
    Ledger {
        #[command(subcommand)]
        cmd: cmd::ledger::LedgerCmd,
    },
}

/// Options of `ferry serve`; each overrides `ferry.toml` and its `FERRY_*` variable.
#[derive(clap::Args, Debug)]
pub(crate) struct ServeArgs {
    /// Address to listen on [default 127.0.0.1:7700].
    #[arg(long, env = "FERRY_LISTEN")]
    listen: Option<String>,
    /// Data directory for the embedded SQLite database [default ./ferry-data].
    #[arg(long, env = "FERRY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Database: a SQLite path or sqlite: URL, or a postgres:// URL.
    #[arg(long, env = "FERRY_DATABASE_URL")]
    database: Option<String>,
    /// Config file [default ./ferry.toml if present].
    #[arg(long, env = "FERRY_CONFIG")]
    config: Option<PathBuf>,
    /// SQLite durability: full (default) or normal.
    #[arg(long, env = "FERRY_SYNCHRONOUS", value_parser = ["full", "normal"])]
    synchronous: Option<String>,
    /// Log filter, e.g. info or debug [default info].
    #[arg(long, env = "FERRY_LOG")]
    log: Option<String>,
    /// Require API tokens (true), never (false); unset: required once a token exists.
    #[arg(long, env = "FERRY_AUTH")]
    auth: Option<bool>,
    /// Allow listening on a non-loopback address without auth.
    #[arg(long, env = "FERRY_INSECURE")]
    insecure: bool,
}

pub(crate) fn load_config(args: ServeArgs) -> Result<ferry_server::Config, String> {
    let mut config = match &args.config {
        Some(path) => ferry_server::Config::from_file(path).map_err(|e| e.message)?,
        None if std::path::Path::new("ferry.toml").exists() => {
            ferry_server::Config::from_file(std::path::Path::new("ferry.toml")).map_err(|e| e.message)?
        }
        None => ferry_server::Config::default(),
    };
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = args.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = args.database {
        config.database = Some(v);
    }
    if let Some(v) = args.synchronous {
        config.synchronous =
            if v == "normal" { ferry_store::Synchronous::Normal } else { ferry_store::Synchronous::Full };
    }
    if let Some(v) = args.log {
        config.log = v;
    }
    if let Some(v) = args.auth {
        config.auth = Some(v);
    }
    if args.insecure {
        config.insecure = true;
    }
    Ok(config)
}

/// Sets up logging: the configured filter, JSON or text on stdout, and optionally a JSON file
/// rotated by size (written off the request path by a background thread).
fn init_logs(
    config: &ferry_server::Config,
) -> Result<Option<tracing_appender::non_blocking::WorkerGuard>, String> {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // rmcp logs three INFO lines for every stateless MCP request; unless the filter names it,
    // only its warnings reach the log.
    let directives =
        if config.log.contains("rmcp") { config.log.clone() } else { format!("{},rmcp=warn", config.log) };
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .map_err(|e| format!("invalid log filter {:?}: {e}", config.log))?;
    let json = match config.log_format.as_str() {
        "json" => true,
        "text" => false,
        "auto" => !std::io::stdout().is_terminal(),
        other => return Err(format!("log_format must be auto, json or text, not {other:?}")),
    };
    let stdout = if json {
        tracing_subscriber::fmt::layer().json().with_current_span(true).with_span_list(false).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_target(false).with_ansi(std::io::stdout().is_terminal()).boxed()
    };
    let (file, guard) = match &config.log_file {
        Some(path) => {
            if config.log_file_max_bytes == 0 || config.log_files_kept == 0 {
                return Err("log_file_max_bytes and log_files_kept must be at least 1".into());
            }
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            let rotating = file_rotate::FileRotate::new(
                path,
                file_rotate::suffix::AppendCount::new(config.log_files_kept),
                file_rotate::ContentLimit::BytesSurpassed(config.log_file_max_bytes),
                file_rotate::compression::Compression::None,
                None,
            );
            let (writer, guard) = tracing_appender::non_blocking(rotating);
            let layer = tracing_subscriber::fmt::layer().json().with_current_span(true).with_span_list(false);
            (Some(layer.with_writer(writer).boxed()), Some(guard))
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(filter).with(stdout).with(file).init();
    Ok(guard)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Serve(args) => match load_config(args) {
            Err(e) => {
                eprintln!("ferry: {e}");
                2
            }
            Ok(config) => {
                let _log_guard = match init_logs(&config) {
                    Ok(g) => g,
                    Err(e) => {
                        eprintln!("ferry: {e}");
                        std::process::exit(2);
                    }
                };
                match ferry_server::run(config, shutdown_signal()).await {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("ferry: {}", e.message);
                        1
                    }
                }
            }
        },
        Command::Enqueue(args) => cmd::jobs::enqueue(args).await,
        Command::Jobs { cmd } => cmd::jobs::jobs(cmd).await,
        Command::Dlq { cmd } => cmd::dlq::dlq(cmd).await,
        Command::Queues { cmd } => cmd::queues::queues(cmd).await,
        Command::Schedules { cmd } => cmd::schedules::schedules(cmd).await,
        Command::Watch(args) => cmd::watch::watch(args).await,
        Command::Mcp(args) => mcp_bridge::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Backup(a) => cmd::backup::backup(a).await,
        Command::Restore(a) => cmd::backup::restore(a),
        Command::ImportDir(args) => import_dir::run(args).await,
        Command::Tokens { cmd } => cmd::tokens::tokens(cmd).await,
        Command::Workers(o) => cmd::workers::workers(o).await,
        Command::Stats(o) => cmd::stats::stats(o).await,
        Command::Advise(a) => cmd::advise::advise(a).await,
        Command::Hosts { cmd } => cmd::hosts::hosts(cmd).await,
        Command::Checkpoints { cmd } => cmd::checkpoints::checkpoints(cmd).await,
        Command::Memory { cmd } => cmd::memory::memory(cmd).await,
        Command::Items { cmd } => cmd::items::items(cmd).await,
        Command::Messages { cmd } => cmd::messages::messages(cmd).await,
        Command::Convoys { cmd } => cmd::convoys::convoys(cmd).await,
        Command::Broadcasts { cmd } => cmd::broadcasts::broadcasts(cmd).await,
        Command::Agents { cmd } => cmd::agents::agents(cmd).await,
        Command::Ledger { cmd } => cmd::ledger::ledger(cmd).await,
    };
    std::process::exit(code);
}
