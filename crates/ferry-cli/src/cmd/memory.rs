//! `ferry memory`: episodes (add, show, list, search, stats, rm), JSONL export and import, and
//! the admin passes (reconcile exits 1 on a mismatch; rebuild starts one).

use crate::ClientOpts;
use crate::cmd::jobs::more;
use crate::output::{fail, print_json, show, table};
use clap::Subcommand;
use ferry_core::memory::{Episode, OutcomeStatus};
use ferry_core::wire::{
    EpisodeBody, EpisodeListQuery, OutcomeBody, RebuildBody, ReconcileBody, SearchBody, SearchContext,
    SearchFilters, SearchMode,
};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use uuid::Uuid;

fn parse_outcome(s: &str) -> Result<OutcomeStatus, String> {
    OutcomeStatus::parse(s).ok_or_else(|| "expected success, partial, failure or abandoned".into())
}

fn parse_mode(s: &str) -> Result<SearchMode, String> {
    SearchMode::parse(s).ok_or_else(|| "expected auto, hierarchical or flat".into())
}

/// `ferry memory ...`.
#[derive(Subcommand, Debug)]
pub enum MemoryCmd {
    /// Store an episode (from flags, or a JSON body with `--body`); prints its id.
    Add {
        /// The namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// What the task was.
        #[arg(long)]
        description: Option<String>,
        /// The agent that ran it.
        #[arg(long)]
        agent: Option<String>,
        /// The area of work.
        #[arg(long)]
        domain: Option<String>,
        /// The kind of task.
        #[arg(long)]
        task_type: Option<String>,
        /// How it ended: success, partial, failure, abandoned.
        #[arg(long, value_parser = parse_outcome)]
        outcome: Option<OutcomeStatus>,
        /// What happened.
        #[arg(long)]
        summary: Option<String>,
        /// Tags, comma-separated.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// In [0, 1].
        #[arg(long)]
        importance: Option<f64>,
        /// A resend with this key and the same body is a duplicate.
        #[arg(long)]
        key: Option<String>,
        /// The whole episode as JSON (the flags above are then not used).
        #[arg(long, conflicts_with_all = ["namespace", "description"])]
        body: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show an episode.
    Show {
        /// Its id.
        id: Uuid,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// List episodes, newest first.
    List {
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Only this agent's.
        #[arg(long)]
        agent: Option<String>,
        /// Only this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only this task type.
        #[arg(long)]
        task_type: Option<String>,
        /// Only episodes with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only this outcome: success, partial, failure or abandoned.
        #[arg(long, value_parser = parse_outcome)]
        outcome: Option<OutcomeStatus>,
        /// Only episodes that ended at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only episodes that ended before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Page size.
        #[arg(long)]
        limit: Option<usize>,
        /// Resume at this cursor.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Search a namespace (with `--domain`, hierarchically from there).
    Search {
        /// The namespace.
        #[arg(long)]
        namespace: String,
        /// Query text.
        text: Option<String>,
        /// Start hierarchical search in this domain.
        #[arg(long)]
        domain: Option<String>,
        /// ... and this task type.
        #[arg(long)]
        task_type: Option<String>,
        /// Only this outcome: success, partial, failure or abandoned.
        #[arg(long, value_parser = parse_outcome)]
        outcome: Option<OutcomeStatus>,
        /// Results wanted.
        #[arg(long, short)]
        k: Option<usize>,
        /// auto, hierarchical or flat.
        #[arg(long, value_parser = parse_mode)]
        mode: Option<SearchMode>,
        /// The whole search body as JSON (the flags above are then not used).
        #[arg(long, conflicts_with = "text")]
        body: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Counts of a namespace, or of all.
    Stats {
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Write episodes as JSON lines, oldest first (to stdout, or `--out`).
    Export {
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// The file to write.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Store the episodes of a JSONL export, ids kept, in batches; a second import adds nothing.
    Import {
        /// The JSONL file.
        file: PathBuf,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Delete an episode.
    Rm {
        /// Its id.
        id: Uuid,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Compare every derived row with its episode; exits 1 on a mismatch (`--repair` rewrites
    /// them).
    Reconcile {
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Rewrite what differs.
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Rewrite every derived row in the background; progress in `ferry memory stats`.
    Rebuild {
        /// Only this namespace.
        #[arg(long)]
        namespace: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
}

fn episode_row(e: &Episode) -> Vec<String> {
    let c = &e.content;
    let mut text = c.description.replace('\n', " ");
    if text.chars().count() > 60 {
        text = text.chars().take(57).collect::<String>() + "...";
    }
    vec![
        e.id.to_string(),
        e.namespace.clone(),
        c.agent.clone().unwrap_or_default(),
        c.domain.clone().unwrap_or_default(),
        c.task_type.clone().unwrap_or_default(),
        c.outcome.as_ref().map_or(String::new(), |o| o.status.as_str().to_string()),
        text,
    ]
}

const EPISODE_HEADERS: [&str; 7] =
    ["id", "namespace", "agent", "domain", "task_type", "outcome", "description"];

/// An exported episode as the body that stores it again (its id and key kept).
fn body_of(e: Episode) -> EpisodeBody {
    let c = e.content;
    EpisodeBody {
        id: Some(e.id),
        namespace: e.namespace,
        agent: c.agent,
        domain: c.domain,
        task_type: c.task_type,
        description: Some(c.description).filter(|d| !d.is_empty()),
        steps: c
            .steps
            .into_iter()
            .map(|s| ferry_core::wire::StepBody {
                tool: s.tool,
                action: s.action,
                status: s.status,
                latency_ms: s.latency_ms,
                tokens: s.tokens,
            })
            .collect(),
        outcome: c.outcome.map(|o| OutcomeBody { status: o.status, summary: o.summary, reward: o.reward }),
        importance: Some(e.importance),
        tags: e.tags,
        artifacts: c
            .artifacts
            .into_iter()
            .map(|a| ferry_core::wire::ArtifactBody { kind: a.kind, uri: a.uri, sha256: a.sha256 })
            .collect(),
        metadata: Some(c.metadata),
        embedding: e.embedding.map(|v| v.into_iter().map(f64::from).collect()),
        started_at: c.started_at.map(|t| ferry_core::time::format_ms(t.0)),
        ended_at: c.ended_at.map(|t| ferry_core::time::format_ms(t.0)),
        job_id: c.job_id,
        idempotency_key: e.idempotency_key,
    }
}

/// Runs a `ferry memory` command; returns the exit code.
pub async fn memory(cmd: MemoryCmd) -> i32 {
    match cmd {
        MemoryCmd::Add {
            namespace,
            description,
            agent,
            domain,
            task_type,
            outcome,
            summary,
            tags,
            importance,
            key,
            body,
            client,
        } => {
            let body = match body {
                Some(text) => match serde_json::from_str::<EpisodeBody>(&text) {
                    Ok(b) => b,
                    Err(e) => return fail(format!("--body is not an episode: {e}")),
                },
                None => {
                    let Some(namespace) = namespace else {
                        return fail("--namespace (or --body) is required");
                    };
                    EpisodeBody {
                        namespace,
                        description,
                        agent,
                        domain,
                        task_type,
                        outcome: outcome.map(|status| OutcomeBody {
                            status,
                            summary: summary.unwrap_or_default(),
                            reward: None,
                        }),
                        tags,
                        importance,
                        idempotency_key: key,
                        ..Default::default()
                    }
                }
            };
            show(client.json, client.client().add_episode(&body).await, |o| {
                println!("{}{}", o.id, if o.duplicate { " (duplicate)" } else { "" })
            })
        }
        MemoryCmd::Show { id, client } => {
            show(client.json, client.client().episode(id).await, |e| print_json(&e))
        }
        MemoryCmd::List {
            namespace,
            agent,
            domain,
            task_type,
            tag,
            outcome,
            since,
            until,
            limit,
            cursor,
            client,
        } => {
            let q = EpisodeListQuery {
                namespace,
                agent,
                domain,
                task_type,
                tag,
                outcome,
                since,
                until,
                limit,
                cursor,
            };
            show(client.json, client.client().episodes(&q).await, |p| {
                let rows: Vec<Vec<String>> = p.episodes.iter().map(episode_row).collect();
                table(&EPISODE_HEADERS, &rows);
                more(p.next_cursor);
            })
        }
        MemoryCmd::Search { namespace, text, domain, task_type, outcome, k, mode, body, client } => {
            let body = match body {
                Some(t) => match serde_json::from_str::<SearchBody>(&t) {
                    Ok(b) => b,
                    Err(e) => return fail(format!("--body is not a search: {e}")),
                },
                None => SearchBody {
                    namespace,
                    text,
                    context: domain.is_some().then_some(SearchContext { domain, task_type }),
                    filters: outcome.map(|o| SearchFilters {
                        outcome: Some(ferry_core::wire::OneOrMany::One(o)),
                        ..Default::default()
                    }),
                    k: k.map(|k| k as i64),
                    mode,
                    ..Default::default()
                },
            };
            show(client.json, client.client().search_memory(&body).await, |r| {
                let rows: Vec<Vec<String>> = r
                    .results
                    .iter()
                    .map(|h| {
                        let mut row = episode_row(&h.episode);
                        row.insert(1, format!("{:.3}", h.score));
                        row
                    })
                    .collect();
                let mut headers = EPISODE_HEADERS.to_vec();
                headers.insert(1, "score");
                table(&headers, &rows);
                println!(
                    "served by {} at {} level; {} candidates{}{}; {:.1} ms",
                    r.served_by,
                    r.level,
                    r.candidates_scored,
                    if r.truncated { " (truncated)" } else { "" },
                    r.fallback_reason.map(|w| format!("; {w}")).unwrap_or_default(),
                    r.took_ms
                );
            })
        }
        MemoryCmd::Stats { namespace, client } => {
            show(client.json, client.client().memory_stats(namespace.as_deref()).await, |s| {
                let at = |t: Option<ferry_core::Timestamp>| {
                    t.map_or("-".into(), |t| ferry_core::time::format_ms(t.0))
                };
                table(
                    &["episodes", "bytes", "embedding_dims", "oldest_at", "newest_at", "rebuild"],
                    &[vec![
                        s.episodes.to_string(),
                        s.bytes.to_string(),
                        s.embedding_dims.map_or("-".into(), |d| d.to_string()),
                        at(s.oldest_at),
                        at(s.newest_at),
                        if s.rebuild.running {
                            format!("{}/{}", s.rebuild.done, s.rebuild.total)
                        } else {
                            "-".into()
                        },
                    ]],
                );
            })
        }
        MemoryCmd::Export { namespace, out, client } => export(namespace, out, client).await,
        MemoryCmd::Import { file, client } => import(file, client).await,
        MemoryCmd::Rm { id, client } => match client.client().delete_episode(id).await {
            Ok(()) => {
                if client.json {
                    print_json(&serde_json::json!({ "deleted": id }));
                } else {
                    println!("deleted {id}");
                }
                0
            }
            Err(e) => fail(e),
        },
        MemoryCmd::Reconcile { namespace, repair, client } => {
            match reconcile_all(&client.client(), namespace, repair).await {
                Ok(r) => {
                    if client.json {
                        print_json(&r);
                    } else {
                        let m = r.mismatches;
                        println!(
                            "checked {} episodes: {} fts, {} tags, {} embeddings mismatched; {} repaired",
                            r.checked, m.fts, m.tags, m.embeddings, r.repaired
                        );
                    }
                    i32::from(r.mismatches.total() > 0)
                }
                Err(e) => fail(e),
            }
        }
        MemoryCmd::Rebuild { namespace, client } => {
            show(client.json, client.client().rebuild_memory(&RebuildBody { namespace }).await, |p| {
                println!("rebuild started: {} episodes; progress in `ferry memory stats`", p.total)
            })
        }
    }
}

/// Every part of a reconcile, summed: the server answers within its time budget with a cursor
/// to resume from.
async fn reconcile_all(
    c: &ferry_client::Client,
    namespace: Option<String>,
    repair: bool,
) -> Result<ferry_core::wire::ReconcileReport, ferry_client::ClientError> {
    let mut total = ferry_core::wire::ReconcileReport::default();
    let mut cursor = None;
    loop {
        let r = c.reconcile_memory(&ReconcileBody { namespace: namespace.clone(), repair, cursor }).await?;
        total.checked += r.checked;
        total.mismatches.add(r.mismatches);
        total.repaired += r.repaired;
        match r.next_cursor {
            Some(next) => cursor = Some(next),
            None => return Ok(total),
        }
    }
}

async fn export(namespace: Option<String>, out: Option<PathBuf>, client: ClientOpts) -> i32 {
    let c = client.client();
    let mut all: Vec<Episode> = Vec::new();
    let mut cursor = None;
    loop {
        let q = EpisodeListQuery {
            namespace: namespace.clone(),
            limit: Some(1000),
            cursor,
            ..Default::default()
        };
        match c.episodes(&q).await {
            Ok(p) => {
                all.extend(p.episodes);
                match p.next_cursor {
                    Some(n) => cursor = Some(n),
                    None => break,
                }
            }
            Err(e) => return fail(e),
        }
    }
    let mut w: Box<dyn Write> = match &out {
        Some(path) => match std::fs::File::create(path) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => return fail(format!("cannot write {}: {e}", path.display())),
        },
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    // Oldest first, so an import stores them in their original order.
    for e in all.into_iter().rev() {
        let line = serde_json::to_string(&body_of(e)).expect("serializable");
        if let Err(e) = writeln!(w, "{line}") {
            return fail(format!("cannot write: {e}"));
        }
    }
    match w.flush() {
        Ok(()) => 0,
        Err(e) => fail(format!("cannot write: {e}")),
    }
}

async fn import(file: PathBuf, client: ClientOpts) -> i32 {
    let f = match std::fs::File::open(&file) {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot read {}: {e}", file.display())),
    };
    let c = client.client();
    let (mut batch, mut stored) = (Vec::new(), 0usize);
    let mut lines = std::io::BufReader::new(f).lines().enumerate().peekable();
    while let Some((i, line)) = lines.next() {
        let line = match line {
            Ok(l) => l,
            Err(e) => return fail(format!("cannot read {}: {e}", file.display())),
        };
        if !line.trim().is_empty() {
            match serde_json::from_str::<EpisodeBody>(&line) {
                Ok(b) => batch.push(b),
                Err(e) => return fail(format!("line {}: not an episode: {e}", i + 1)),
            }
        }
        if batch.len() == 100 || (lines.peek().is_none() && !batch.is_empty()) {
            match c.add_episodes(std::mem::take(&mut batch)).await {
                Ok(ids) => stored += ids.ids.len(),
                Err(e) => return fail(format!("line {}: {e}", i + 1)),
            }
        }
    }
    if client.json {
        print_json(&serde_json::json!({ "imported": stored }));
    } else {
        println!("imported {stored} episodes (resends of stored ones included)");
    }
    0
}
