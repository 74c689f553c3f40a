//! `ferry import-dir DIR`: imports a legacy file-based queue through `POST /v1/import`.
//!
//! Accepted files (anywhere under DIR except `DIR/imported/` and `DIR/rejected/`):
//! - `*.job.json`: one job, `{"id", "queue" or "type", "payload", "priority"?}`, imported ready;
//! - `*.claimed`: a claim marker; if it holds a job object it is imported ready again (it was
//!   never finished), otherwise it marks the job of the same name; counted either way;
//! - `*.result.json`: a finished job, `{"id", "queue" or "type"?, "payload"?, "result"?}`,
//!   imported completed with `result` (or the whole document when it has no `result` key).
//!
//! The file's `id` becomes the job's unique key (`import:<id>`), so re-running imports
//! nothing twice. Imported files move to `DIR/imported/`; malformed ones to `DIR/rejected/`
//! with a `.reason` file beside each. Nothing is skipped silently.

use crate::ClientOpts;
use crate::output::{fail, print_json};
use ferry_core::validate::JobSpec;
use ferry_core::wire::ImportItem;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Options of `ferry import-dir`.
#[derive(clap::Args, Debug)]
pub struct ImportDirArgs {
    /// The legacy queue directory.
    dir: PathBuf,
    /// Jobs per request.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    #[command(flatten)]
    client: ClientOpts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Job,
    Claimed,
    Result,
}

impl Kind {
    fn of(name: &str) -> Option<Kind> {
        if name.ends_with(".job.json") {
            Some(Kind::Job)
        } else if name.ends_with(".claimed") {
            Some(Kind::Claimed)
        } else if name.ends_with(".result.json") {
            Some(Kind::Result)
        } else {
            None
        }
    }
    fn label(self) -> &'static str {
        match self {
            Kind::Job => "jobs (*.job.json)",
            Kind::Claimed => "claimed (*.claimed)",
            Kind::Result => "results (*.result.json)",
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Row {
    imported: u64,
    already: u64,
    rejected: u64,
}

struct Entry {
    path: PathBuf,
    kind: Kind,
    item: Option<ImportItem>,
}

fn walk(dir: &Path, root: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            if p == root.join("imported") || p == root.join("rejected") {
                continue;
            }
            walk(&p, root, out)?;
        } else {
            out.push(p);
        }
    }
    Ok(())
}

/// Parses one file into an import item, or says why it cannot be imported.
fn parse(path: &Path, kind: Kind) -> Result<Option<ImportItem>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    if kind == Kind::Claimed && text.trim().is_empty() {
        return Ok(None); // a bare marker
    }
    let doc: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(_) if kind == Kind::Claimed => return Ok(None), // a marker with free text
        Err(e) => return Err(format!("not JSON: {e}")),
    };
    let Some(obj) = doc.as_object() else {
        return if kind == Kind::Claimed { Ok(None) } else { Err("not a JSON object".into()) };
    };
    let id = match obj.get("id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ if kind == Kind::Claimed => return Ok(None),
        _ => return Err("missing \"id\" (a string or number)".into()),
    };
    let queue = match (obj.get("queue"), obj.get("type")) {
        (Some(Value::String(q)), _) | (None, Some(Value::String(q))) => q.clone(),
        (None, None) if kind == Kind::Result => "imported".to_string(),
        _ => return Err("missing \"queue\" or \"type\" (a string)".into()),
    };
    let priority = match obj.get("priority") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) if n.is_i64() => n.as_i64(),
        Some(_) => return Err("\"priority\" must be an integer".into()),
    };
    let payload = obj.get("payload").cloned().unwrap_or(Value::Null);
    let job = JobSpec {
        queue,
        payload: Some(serde_json::value::to_raw_value(&payload).expect("JSON")),
        priority,
        unique_key: Some(format!("import:{id}")),
        ..Default::default()
    };
    ferry_core::validate::queue_name(&job.queue, &ferry_core::Limits::default(), "queue")
        .map_err(|e| e.message)?;
    let (state, result) = match kind {
        Kind::Result => {
            let result = obj.get("result").cloned().unwrap_or_else(|| doc.clone());
            (Some("completed".to_string()), Some(serde_json::value::to_raw_value(&result).expect("JSON")))
        }
        _ => (None, None),
    };
    Ok(Some(ImportItem { job, state, result }))
}

/// Moves `path` into `to_dir`, never overwriting (a suffix is added on a name clash).
fn move_into(path: &Path, to_dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(to_dir)?;
    let name = path.file_name().expect("a file").to_string_lossy().to_string();
    let mut target = to_dir.join(&name);
    let mut n = 1;
    while target.exists() {
        target = to_dir.join(format!("{name}.{n}"));
        n += 1;
    }
    std::fs::rename(path, &target)?;
    Ok(target)
}

fn reject(path: &Path, root: &Path, reason: &str) -> std::io::Result<()> {
    let target = move_into(path, &root.join("rejected"))?;
    let mut reason_path = target.into_os_string();
    reason_path.push(".reason");
    std::fs::write(reason_path, format!("{reason}\n"))
}

/// Runs the import and prints the summary table.
pub async fn run(a: ImportDirArgs) -> i32 {
    let root = a.dir.clone();
    let mut files = Vec::new();
    if let Err(e) = walk(&root, &root, &mut files) {
        return fail(format!("cannot read {}: {e}", root.display()));
    }
    files.sort();
    let client = a.client.client();
    let mut rows = [Row::default(); 3];
    let idx = |k: Kind| k as usize;
    // Results first: a job that has both files is imported once, as completed.
    let mut entries: Vec<Entry> = Vec::new();
    for kind in [Kind::Result, Kind::Job, Kind::Claimed] {
        for p in files.iter().filter(|p| Kind::of(&p.file_name().unwrap().to_string_lossy()) == Some(kind)) {
            match parse(p, kind) {
                Ok(item) => entries.push(Entry { path: p.clone(), kind, item }),
                Err(reason) => {
                    if let Err(e) = reject(p, &root, &reason) {
                        return fail(format!("cannot move {} to rejected/: {e}", p.display()));
                    }
                    rows[idx(kind)].rejected += 1;
                }
            }
        }
    }
    let mut pending: Vec<Entry> = Vec::new();
    let mut iter = entries.into_iter().peekable();
    while iter.peek().is_some() || !pending.is_empty() {
        while pending.len() < a.batch.max(1) {
            match iter.next() {
                Some(e) => pending.push(e),
                None => break,
            }
        }
        let items: Vec<ImportItem> = pending.iter().filter_map(|e| e.item.clone()).collect();
        let answer = if items.is_empty() { Ok(None) } else { client.import(items).await.map(Some) };
        match answer {
            Ok(resp) => {
                let mut k = 0;
                for e in pending.drain(..) {
                    if e.item.is_some() {
                        let dup = resp.as_ref().is_some_and(|r| r.duplicates.contains(&k));
                        k += 1;
                        if dup { rows[idx(e.kind)].already += 1 } else { rows[idx(e.kind)].imported += 1 }
                    } else {
                        rows[idx(e.kind)].imported += 1; // a bare claim marker: counted and filed
                    }
                    if let Err(err) = move_into(&e.path, &root.join("imported")) {
                        return fail(format!("cannot move {} to imported/: {err}", e.path.display()));
                    }
                }
            }
            Err(ferry_client::ClientError::Api { status, error }) if (400..500).contains(&status) => {
                // All or nothing: find the job the server refused, reject its file, retry the rest.
                let bad = error
                    .field
                    .as_deref()
                    .and_then(|f| f.strip_prefix("jobs["))
                    .and_then(|f| f.split(']').next())
                    .and_then(|n| n.parse::<usize>().ok());
                let Some(bad) = bad else {
                    return fail(format!("the server refused the import: {error}"));
                };
                let pos =
                    pending.iter().enumerate().filter(|(_, e)| e.item.is_some()).nth(bad).map(|(i, _)| i);
                let Some(pos) = pos else {
                    return fail(format!("the server refused the import: {error}"));
                };
                let e = pending.remove(pos);
                if let Err(err) = reject(&e.path, &root, &format!("refused by the server: {}", error.message))
                {
                    return fail(format!("cannot move {} to rejected/: {err}", e.path.display()));
                }
                rows[idx(e.kind)].rejected += 1;
            }
            Err(e) => return fail(e),
        }
    }
    if a.client.json {
        let out: Vec<Value> = [Kind::Job, Kind::Claimed, Kind::Result]
            .iter()
            .map(|k| {
                let r = rows[idx(*k)];
                serde_json::json!({"kind": k.label(), "imported": r.imported, "already_imported": r.already, "rejected": r.rejected})
            })
            .collect();
        print_json(&out);
    } else {
        println!("{:<24} {:>9} {:>17} {:>9}", "KIND", "IMPORTED", "ALREADY IMPORTED", "REJECTED");
        for k in [Kind::Job, Kind::Claimed, Kind::Result] {
            let r = rows[idx(k)];
            println!("{:<24} {:>9} {:>17} {:>9}", k.label(), r.imported, r.already, r.rejected);
        }
        let total: u64 = rows.iter().map(|r| r.rejected).sum();
        if total > 0 {
            println!(
                "rejected files are in {} with a .reason file beside each",
                root.join("rejected").display()
            );
        }
    }
    // Rejected files need a look: a script (or CI) sees it in the exit code.
    let rejected: u64 = rows.iter().map(|r| r.rejected).sum();
    if rejected > 0 {
        eprintln!("import-dir: {rejected} files rejected (see {})", root.join("rejected").display());
        return 1;
    }
    0
}
