//! `ferry checkpoints`: run-checkpoint threads (list, show, history, rm, prune) and the import
//! of a LangGraph `SqliteSaver` file through the API.

use crate::ClientOpts;
use crate::cmd::jobs::more;
use crate::output::{fail, print_json, show, table};
use clap::Subcommand;
use ferry_core::checkpoint::{Thread, Tuple, Typed};
use ferry_core::time::format_ms;
use ferry_core::wire::{PruneStrategy, PutCheckpointBody, WriteBody, WritesBody};
use std::path::PathBuf;

/// Parses `--strategy`.
fn parse_strategy(s: &str) -> Result<PruneStrategy, String> {
    match s {
        "keep_latest" => Ok(PruneStrategy::KeepLatest),
        "delete" => Ok(PruneStrategy::Delete),
        _ => Err("expected keep_latest or delete".into()),
    }
}

/// `ferry checkpoints ...`.
#[derive(Subcommand, Debug)]
pub enum CheckpointsCmd {
    /// List threads by id.
    Threads {
        /// Only threads not written since this time (RFC 3339).
        #[arg(long)]
        updated_before: Option<String>,
        /// Page size.
        #[arg(long)]
        limit: Option<usize>,
        /// Resume after this cursor.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Show a thread, or one of its checkpoints (`latest` for the newest).
    Show {
        /// The thread.
        thread: String,
        /// A checkpoint id, or `latest`.
        checkpoint: Option<String>,
        /// The namespace (default the root graph, "").
        #[arg(long, default_value = "")]
        ns: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// A thread's checkpoints, newest first.
    History {
        /// The thread.
        thread: String,
        /// Only this namespace.
        #[arg(long)]
        ns: Option<String>,
        /// Only checkpoints whose metadata contains this JSON object.
        #[arg(long)]
        metadata: Option<String>,
        /// Page size.
        #[arg(long)]
        limit: Option<usize>,
        /// Resume after this cursor.
        #[arg(long)]
        cursor: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Delete a thread with everything it holds.
    Rm {
        /// The thread.
        thread: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Prune threads: keep each namespace's newest checkpoint, or delete them all.
    Prune {
        /// Threads to prune.
        #[arg(required = true)]
        threads: Vec<String>,
        /// keep_latest (default) or delete.
        #[arg(long, value_parser = parse_strategy, default_value = "keep_latest")]
        strategy: PruneStrategy,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Copy a LangGraph SqliteSaver file (checkpoints.sqlite) through the API: values stay
    /// inline in each checkpoint; a second import adds nothing.
    Import {
        /// The SqliteSaver database file.
        #[arg(long = "langgraph-sqlite")]
        file: PathBuf,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Runs a `ferry checkpoints` command; returns the exit code.
pub async fn checkpoints(cmd: CheckpointsCmd) -> i32 {
    match cmd {
        CheckpointsCmd::Threads { updated_before, limit, cursor, client } => {
            let mut q: Vec<(&str, String)> = Vec::new();
            q.extend(updated_before.map(|t| ("updated_before", t)));
            q.extend(limit.map(|l| ("limit", l.to_string())));
            q.extend(cursor.map(|c| ("cursor", c)));
            show(client.json, client.client().threads(&q).await, |p| {
                let rows: Vec<Vec<String>> = p.threads.iter().map(thread_row).collect();
                table(&["thread", "checkpoints", "blobs", "writes", "bytes", "updated_at"], &rows);
                more(p.next_cursor);
            })
        }
        CheckpointsCmd::Show { thread, checkpoint: None, ns: _, client } => {
            show(client.json, client.client().thread(&thread).await, |t| {
                table(
                    &["thread", "checkpoints", "blobs", "writes", "bytes", "updated_at"],
                    &[thread_row(&t)],
                );
                println!("metadata: {}", t.metadata);
            })
        }
        CheckpointsCmd::Show { thread, checkpoint: Some(id), ns, client } => {
            let id = (id != "latest").then_some(id);
            show(client.json, client.client().checkpoint(&thread, &ns, id.as_deref()).await, show_tuple)
        }
        CheckpointsCmd::History { thread, ns, metadata, limit, cursor, client } => {
            let mut q: Vec<(&str, String)> = vec![("thread", thread)];
            q.extend(ns.map(|n| ("ns", n)));
            q.extend(metadata.map(|m| ("metadata", m)));
            q.extend(limit.map(|l| ("limit", l.to_string())));
            q.extend(cursor.map(|c| ("cursor", c)));
            show(client.json, client.client().checkpoints(&q).await, |p| {
                let rows: Vec<Vec<String>> = p
                    .checkpoints
                    .iter()
                    .map(|t| {
                        vec![
                            t.checkpoint_id.clone(),
                            if t.ns.is_empty() { "-".into() } else { t.ns.clone() },
                            t.parent_checkpoint_id.clone().unwrap_or_else(|| "-".into()),
                            t.metadata.get("step").map_or("-".into(), |s| s.to_string()),
                            format_ms(t.created_at.0),
                        ]
                    })
                    .collect();
                table(&["checkpoint", "ns", "parent", "step", "created_at"], &rows);
                more(p.next_cursor);
            })
        }
        CheckpointsCmd::Rm { thread, client } => {
            show(client.json, client.client().delete_thread(&thread).await, |d| {
                println!("thread {} deleted ({} checkpoints)", d.thread, d.deleted)
            })
        }
        CheckpointsCmd::Prune { threads, strategy, client } => {
            show(client.json, client.client().prune_checkpoints(&threads, strategy).await, |d| {
                println!("pruned {} threads ({} checkpoints deleted)", threads.len(), d.deleted)
            })
        }
        CheckpointsCmd::Import { file, client } => match import(&file, &client).await {
            Ok(counts) if client.json => {
                print_json(&counts);
                0
            }
            Ok(c) => {
                println!(
                    "checkpoints: {} written, {} already present; writes: {} written, {} already present",
                    c.checkpoints_written, c.checkpoints_present, c.writes_written, c.writes_present
                );
                0
            }
            Err(e) => fail(e),
        },
    }
}

fn thread_row(t: &Thread) -> Vec<String> {
    vec![
        t.thread.clone(),
        t.checkpoints.to_string(),
        t.blobs.to_string(),
        t.writes.to_string(),
        t.bytes.to_string(),
        format_ms(t.updated_at.0),
    ]
}

fn show_tuple(t: Tuple) {
    println!("checkpoint   {}", t.checkpoint_id);
    println!("thread       {} (ns {:?})", t.thread, t.ns);
    println!("parent       {}", t.parent_checkpoint_id.as_deref().unwrap_or("-"));
    println!("created_at   {}", format_ms(t.created_at.0));
    println!("metadata     {}", t.metadata);
    for b in t.blobs.iter().flatten() {
        println!("blob         {}@{} {} ({} bytes)", b.channel, b.version, b.type_, b.data.len());
    }
    for w in t.pending_writes.iter().flatten() {
        println!("write        {} {} #{} {} ({} bytes)", w.task_id, w.channel, w.idx, w.type_, w.data.len());
    }
}

/// What an import did.
#[derive(Debug, Default, serde::Serialize)]
struct ImportCounts {
    checkpoints_written: u64,
    checkpoints_present: u64,
    writes_written: u64,
    writes_present: u64,
}

type SaverCheckpoint = (String, String, String, Option<String>, String, Vec<u8>, Option<Vec<u8>>);
type SaverWrite = (String, String, String, String, String, i64, String, String, Vec<u8>);

/// Reads a SqliteSaver file whole (its checkpoints in id order, so parents come first).
fn read_saver(file: &std::path::Path) -> Result<(Vec<SaverCheckpoint>, Vec<SaverWrite>), String> {
    let conn = rusqlite::Connection::open_with_flags(file, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    let err = |e: rusqlite::Error| format!("{} is not a LangGraph SqliteSaver file: {e}", file.display());
    let mut s = conn
        .prepare(
            "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata
             FROM checkpoints ORDER BY thread_id, checkpoint_ns, checkpoint_id",
        )
        .map_err(err)?;
    let cps = s
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
        .map_err(err)?
        .collect::<rusqlite::Result<Vec<SaverCheckpoint>>>()
        .map_err(err)?;
    // `task_path` was added to the file format later: old files lack it.
    let has_path = conn.prepare("SELECT task_path FROM writes LIMIT 0").is_ok();
    let path_col = if has_path { "task_path" } else { "''" };
    let mut s = conn
        .prepare(&format!(
            "SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, {path_col}, idx, channel, type, value
             FROM writes ORDER BY thread_id, checkpoint_ns, checkpoint_id, task_id, idx"
        ))
        .map_err(err)?;
    let writes = s
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
            ))
        })
        .map_err(err)?
        .collect::<rusqlite::Result<Vec<SaverWrite>>>()
        .map_err(err)?;
    Ok((cps, writes))
}

async fn import(file: &std::path::Path, opts: &ClientOpts) -> Result<ImportCounts, String> {
    let (cps, writes) = read_saver(file)?;
    let client = opts.client();
    let mut counts = ImportCounts::default();
    for (thread, ns, id, parent, type_, data, metadata) in cps {
        let metadata =
            match metadata {
                None => None,
                Some(m) => Some(serde_json::from_slice(&m).map_err(|e| {
                    format!("checkpoint {thread}/{ns}/{id}: metadata is not a JSON object: {e}")
                })?),
            };
        let body = PutCheckpointBody {
            parent_checkpoint_id: parent,
            checkpoint: Typed { type_, data },
            metadata,
            channel_versions: None,
            blobs: None,
            delta_channels: None,
            job_id: None,
            lease: None,
        };
        let out = client.put_checkpoint(&thread, &ns, &id, &body, false).await.map_err(|e| e.to_string())?;
        if out.duplicate {
            counts.checkpoints_present += 1;
        } else {
            counts.checkpoints_written += 1;
        }
    }
    // One call per task of a checkpoint, its writes at their stored indexes.
    let mut i = 0;
    while i < writes.len() {
        let key = (&writes[i].0, &writes[i].1, &writes[i].2, &writes[i].3, &writes[i].4);
        let mut j = i;
        while j < writes.len()
            && (&writes[j].0, &writes[j].1, &writes[j].2, &writes[j].3, &writes[j].4) == key
        {
            j += 1;
        }
        let body = WritesBody {
            task_id: key.3.clone(),
            task_path: Some(key.4.clone()),
            writes: writes[i..j]
                .iter()
                .map(|w| WriteBody {
                    channel: w.6.clone(),
                    type_: w.7.clone(),
                    data: w.8.clone(),
                    idx: Some(w.5),
                })
                .collect(),
            job_id: None,
            lease: None,
        };
        let out =
            client.put_checkpoint_writes(key.0, key.1, key.2, &body).await.map_err(|e| e.to_string())?;
        counts.writes_written += out.written;
        counts.writes_present += (j - i) as u64 - out.written;
        i = j;
    }
    Ok(counts)
}
