//! `ferry import-dir`: a legacy file queue (job files, claim markers, results, garbage) is
//! imported once, files are filed away, malformed ones rejected with a reason, and a re-run
//! (even with the same files put back) imports nothing twice.

use crate::common::Server;
use ferry_client::Client;
use ferry_core::JobState;
use std::path::Path;
use std::process::Command;

fn write(dir: &Path, name: &str, text: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn import(url: &str, dir: &Path) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["import-dir"])
        .arg(dir)
        .args(["--url", url])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().to_string()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_directory_is_imported_once_and_nothing_is_dropped() {
    let s = Server::start();
    let c = Client::new(&s.url);
    let legacy = tempfile::tempdir().unwrap();
    let d = legacy.path();
    write(d, "inbox/a.job.json", r#"{"id":"a","queue":"emails","payload":{"to":"x"},"priority":5}"#);
    write(d, "inbox/b.job.json", r#"{"id":2,"type":"reports","payload":[1,2]}"#);
    write(d, "inbox/c.job.json.claimed", r#"{"id":"c","queue":"emails","payload":null}"#);
    write(d, "inbox/a.claimed", "worker-7 2024-01-01");
    write(d, "outbox/d.result.json", r#"{"id":"d","queue":"emails","result":{"sent":true}}"#);
    write(d, "outbox/a.result.json", r#"{"id":"a","queue":"emails","result":"done"}"#);
    write(d, "inbox/bad.job.json", "{not json");
    write(d, "inbox/noid.job.json", r#"{"queue":"emails"}"#);
    write(d, "inbox/badqueue.job.json", r#"{"id":"z","queue":"no spaces allowed"}"#);
    write(d, "notes.txt", "left alone");

    let (ok, out, err) = import(&s.url, d);
    // Rejected files make the run fail (exit 1), after importing everything else.
    assert!(!ok, "{out}{err}");
    assert!(err.contains("import-dir: 3 files rejected (see "), "{err}");
    assert!(out.contains("KIND"), "a summary table: {out}");
    // (rejected, already, imported) per kind, read from the right.
    assert_eq!(line_of(&out, "jobs"), vec!["3", "1", "1"], "{out}"); // a.job.json is already imported as a's result
    assert_eq!(line_of(&out, "claimed"), vec!["0", "0", "2"], "{out}");
    assert_eq!(line_of(&out, "results"), vec!["0", "0", "2"], "{out}");

    // Files were filed: nothing left in the inbox or outbox, rejects have reasons.
    assert!(names(&d.join("inbox")).is_empty(), "{:?}", names(&d.join("inbox")));
    assert!(names(&d.join("outbox")).is_empty());
    assert_eq!(names(&d.join("imported")).len(), 6);
    let rejected = names(&d.join("rejected"));
    assert_eq!(rejected.len(), 6, "{rejected:?}");
    let reason = std::fs::read_to_string(d.join("rejected/noid.job.json.reason")).unwrap();
    assert!(reason.contains("id"), "{reason}");
    assert!(d.join("notes.txt").exists(), "unrelated files are left alone");

    // Jobs landed as promised.
    let emails = c.list_jobs(Some("emails"), None, Some(100), None).await.unwrap().jobs;
    let by_key = |k: &str| emails.iter().find(|j| j.unique_key.as_deref() == Some(k)).unwrap().clone();
    let a = by_key("import:a");
    assert_eq!((a.state, a.result.unwrap().get()), (JobState::Completed, r#""done""#));
    assert_eq!(by_key("import:c").state, JobState::Ready, "a claimed-but-unfinished job is ready again");
    assert_eq!(by_key("import:d").state, JobState::Completed);
    let reports = c.list_jobs(Some("reports"), None, Some(10), None).await.unwrap().jobs;
    assert_eq!((reports.len(), reports[0].payload.get()), (1, "[1,2]"));

    // Re-running is idempotent, even with the same files put back.
    write(d, "again/b.job.json", r#"{"id":2,"type":"reports","payload":[1,2]}"#);
    write(d, "again/d.result.json", r#"{"id":"d","queue":"emails","result":{"sent":true}}"#);
    let (ok, out, err) = import(&s.url, d);
    assert!(ok, "{out}{err}");
    assert_eq!(line_of(&out, "jobs"), vec!["0", "1", "0"], "{out}");
    assert_eq!(line_of(&out, "results"), vec!["0", "1", "0"], "{out}");
    assert_eq!(c.list_jobs(Some("reports"), None, Some(10), None).await.unwrap().jobs.len(), 1);
    let (ok, out, _) = import(&s.url, d);
    assert!(ok && line_of(&out, "jobs") == vec!["0", "0", "0"], "{out}");
}

fn line_of(out: &str, kind: &str) -> Vec<String> {
    out.lines()
        .find(|l| l.starts_with(kind))
        .unwrap()
        .split_whitespace()
        .rev()
        .take(3)
        .map(String::from)
        .collect()
}
