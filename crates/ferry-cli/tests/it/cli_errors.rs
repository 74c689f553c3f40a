//! What a new user sees when the CLI cannot talk to ferry (#24, errors that say what to do):
//! no server, a URL without a scheme, something other than ferry at the URL, a missing token.
//! Each message names the cause and the next step; the command exits 1.

use crate::common::Server;
use std::process::Command;

/// Runs `ferry <args>` and returns its exit code and standard error.
fn ferry(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .env_remove("FERRY_URL")
        .env_remove("FERRY_TOKEN")
        .output()
        .unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// A port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn no_server_says_so_and_names_the_url_flag() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let (code, err) = ferry(&["stats", "--url", &url]);
    assert_eq!(code, 1, "{err}");
    let want = format!(
        "ferry: cannot reach ferry at {url}: connection refused; is ferry serve running? (--url / FERRY_URL)"
    );
    assert_eq!(err.trim(), want);
}

#[test]
fn a_url_without_a_scheme_is_refused_with_an_example() {
    let (code, err) = ferry(&["stats", "--url", "127.0.0.1:7700"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("invalid ferry URL \"127.0.0.1:7700\""), "{err}");
    assert!(err.contains("e.g. http://127.0.0.1:7700"), "{err}");
    assert!(!err.contains("builder error"), "{err}");
}

#[test]
fn something_else_at_the_url_is_named_as_not_ferry() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let web = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut sock, _) = listener.accept().unwrap();
        let mut buf = [0u8; 4096];
        let _ = sock.read(&mut buf);
        let body = "<!DOCTYPE HTML>\n<html><body>Not Found</body></html>";
        let head = format!(
            "HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        sock.write_all(head.as_bytes()).unwrap();
        sock.write_all(body.as_bytes()).unwrap();
    });
    let (code, err) = ferry(&["stats", "--url", &url]);
    web.join().unwrap();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&format!("{url}/v1/stats answered 404 with \"<!DOCTYPE HTML>")), "{err}");
    assert!(
        err.contains("which is not ferry's API: is --url / FERRY_URL pointing at a ferry server?"),
        "{err}"
    );
    assert!(!err.contains("internal"), "{err}");
}

#[test]
fn a_missing_token_names_the_token_flag() {
    let s = Server::start_with(&["--auth", "true"], tempfile::tempdir().unwrap());
    let (code, err) = ferry(&["stats", "--url", &s.url]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("ferry: 401: unauthorized:"), "{err}");
    assert!(err.contains("pass a token with --token or FERRY_TOKEN"), "{err}");
}

#[test]
fn state_flags_list_every_state_and_refuse_others() {
    let (code, err) = ferry(&["jobs", "list", "--state", "finished"]);
    assert_eq!(code, 2, "clap refuses it before any request: {err}");
    let listed = format!(
        "[possible values: {}]",
        ferry_core::JobState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    );
    assert!(err.contains(&listed), "every job state, in order: {err}");
    let help = Command::new(env!("CARGO_BIN_EXE_ferry")).args(["jobs", "list", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains(&listed) && help.contains("Example: ferry jobs list"), "{help}");
    let (code, err) = ferry(&["convoys", "list", "--state", "done"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("[possible values: open, sealed, completed, failed, cancelled]"), "{err}");
}

/// Runs `ferry <args>` with `stdin_text` on standard input from `dir`; exit code, stdout, stderr.
fn ferry_in(dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(args)
        .current_dir(dir)
        .env_remove("FERRY_URL")
        .env_remove("FERRY_TOKEN")
        .env_remove("FERRY_DATABASE_URL")
        .env_remove("FERRY_LISTEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bare_port_for_listen_is_named_as_not_an_address() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = ferry_in(dir.path(), &["serve", "--listen", "7702", "--data-dir", "d"]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("listen address \"7702\" is not host:port; give e.g. 127.0.0.1:7702"), "{err}");
    assert!(!err.contains("without auth"), "not a refusal to listen without auth: {err}");
    assert!(!dir.path().join("d").exists(), "nothing is created for a bad address");
}

#[test]
fn unreachable_postgres_names_host_port_database_and_cause() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/ferry_nowhere");
    let (code, _, err) = ferry_in(dir.path(), &["serve", "--database", &url]);
    assert_ne!(code, 0, "{err}");
    let want =
        format!("cannot connect to PostgreSQL at 127.0.0.1:{port}, database ferry_nowhere, user postgres: ");
    assert!(err.contains(&want), "{err}");
    assert!(err.to_lowercase().contains("connection refused"), "the cause underneath: {err}");
    assert!(err.contains("(--database / FERRY_DATABASE_URL)"), "{err}");
    assert!(!err.contains("Error occurred while creating a new object"), "{err}");
    // The same on migrate, from a real (stopped) SQLite database.
    let (code, _, err) =
        ferry_in(dir.path(), &["tokens", "create", "--scopes", "read", "--data-dir", "data"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = ferry_in(dir.path(), &["migrate", "--from", "data/ferry.db", "--to", &url]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains(&want), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_postgres_database_is_named() {
    // A server that answers, and a database it does not have.
    let admin = crate::common::pg::admin_url();
    if tokio_postgres::connect(&admin, tokio_postgres::NoTls).await.is_err() {
        assert!(std::env::var("FERRY_REQUIRE_PG").as_deref() != Ok("1"), "PostgreSQL is required");
        return;
    }
    let base = admin.rsplit_once('/').unwrap().0;
    let url = format!("{base}/ferry_no_such_db_{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = ferry_in(dir.path(), &["serve", "--database", &url]);
    assert_ne!(code, 0, "{err}");
    assert!(err.contains("cannot connect to PostgreSQL at "), "{err}");
    assert!(
        err.contains(&format!("database \"ferry_no_such_db_{}\" does not exist", std::process::id())),
        "{err}"
    );
}

#[test]
fn migrate_from_a_directory_names_the_file_inside_and_leaves_no_lock() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) =
        ferry_in(dir.path(), &["tokens", "create", "--scopes", "read", "--data-dir", "data"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) =
        ferry_in(dir.path(), &["migrate", "--from", "data", "--to", "postgres://postgres@127.0.0.1:1/x"]);
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("data is a directory; pass the database file inside it: --from data/ferry.db"),
        "{err}"
    );
    assert!(!err.contains("disk I/O error"), "{err}");
    assert!(!dir.path().join("data.lock").exists(), "a stray lock file was left");
}

#[test]
fn dlq_purge_without_a_selection_names_its_flags() {
    for cmd in ["purge", "replay"] {
        let (code, err) = ferry(&["dlq", cmd, "--url", "http://127.0.0.1:9"]);
        assert_eq!(code, 2, "refused before any request: {err}");
        assert!(err.contains("--id <IDS>") && err.contains("--queue <QUEUE>"), "{err}");
        assert!(!err.contains("ids or queue"), "API field names: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_stops_says_what_was_committed_and_how_to_resume() {
    let s = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let good = |i: usize| format!("{{\"n\": {i}}}");
    let mut lines: Vec<String> = (1..=5).map(good).collect();
    lines.push("{not json".into()); // line 6
    lines.extend((7..=9).map(good));
    std::fs::write(dir.path().join("jobs.jsonl"), lines.join("\n") + "\n").unwrap();
    let run = |extra: &[&str]| {
        let mut args =
            vec!["enqueue", "batchq", "--batch", "--file", "jobs.jsonl", "--chunk", "2", "--url", &s.url];
        args.extend_from_slice(extra);
        ferry_in(dir.path(), &args)
    };
    let (code, _, err) = run(&[]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("line 6 is not valid JSON"), "{err}");
    assert!(
        err.contains("5 jobs were committed (0 duplicates), from input lines 1-5; nothing after line 5 was"),
        "{err}"
    );
    assert!(err.contains("resume with --skip 5, or add --unique-key-field FIELD"), "{err}");
    // Fixed, and resumed where it stopped: every line once.
    lines[5] = good(6);
    std::fs::write(dir.path().join("jobs.jsonl"), lines.join("\n") + "\n").unwrap();
    let (code, out, err) = run(&["--skip", "5"]);
    assert_eq!((code, out.trim()), (0, "enqueued 4 jobs (0 duplicates)"), "{err}");
    let c = ferry_client::Client::new(&s.url);
    let jobs = c.list_jobs(Some("batchq"), None, Some(100), None).await.unwrap().jobs;
    let mut ns: Vec<String> = jobs.iter().map(|j| j.payload.get().to_string()).collect();
    ns.sort();
    assert_eq!(ns.len(), 9, "{ns:?}");
    // With a unique key per line, a whole re-run enqueues nothing twice.
    let (code, out, err) = run(&["--unique-key-field", "n"]);
    assert_eq!((code, out.trim()), (0, "enqueued 9 jobs (0 duplicates)"), "{err}");
    let (code, out, err) = run(&["--unique-key-field", "n"]);
    assert_eq!((code, out.trim()), (0, "enqueued 9 jobs (9 duplicates)"), "{err}");
    // A job the server refuses names its line; the batch holding it is not committed.
    std::fs::write(
        dir.path().join("bad.jsonl"),
        "{\"queue\":\"q\"}\n{\"queue\":\"q\"}\n{\"queue\":\"no spaces\"}\n",
    )
    .unwrap();
    let (code, _, err) =
        ferry_in(dir.path(), &["enqueue", "--batch", "--file", "bad.jsonl", "--chunk", "2", "--url", &s.url]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("line 3: "), "{err}");
    assert!(err.contains("2 jobs were committed"), "{err}");
    assert!(err.contains("--skip 2"), "{err}");
    // Resumed past the first line, the refused job keeps its line number in the input.
    let (code, _, err) = ferry_in(
        dir.path(),
        &["enqueue", "--batch", "--file", "bad.jsonl", "--chunk", "2", "--skip", "1", "--url", &s.url],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("line 3: "), "{err}");
    assert!(err.contains("0 jobs were committed (0 duplicates), from input lines 1-1"), "{err}");
    assert!(err.contains("--skip 1"), "{err}");
}

#[test]
fn flags_with_values_list_them_and_commands_show_an_example() {
    let help = |args: &[&str]| {
        let mut all = args.to_vec();
        all.push("--help");
        let out = Command::new(env!("CARGO_BIN_EXE_ferry")).args(&all).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for (cmd, values) in [
        (&["items", "list"][..], "todo, in_progress, blocked, done, failed or cancelled"),
        (&["items", "patch"][..], "todo, in_progress, blocked, done, failed or cancelled"),
        (&["memory", "search"][..], "success, partial, failure or abandoned"),
        (&["memory", "search"][..], "auto, hierarchical or flat"),
        (&["checkpoints", "prune"][..], "keep_latest (default) or delete"),
        (&["serve"][..], "[possible values: full, normal]"),
    ] {
        assert!(help(cmd).contains(values), "{cmd:?} help lacks {values:?}");
    }
    for cmd in [
        &["serve"][..],
        &["enqueue"],
        &["watch"],
        &["migrate"],
        &["backup"],
        &["restore"],
        &["import-dir"],
        &["workers"],
        &["stats"],
        &["advise"],
        &["dlq", "list"],
        &["dlq", "replay"],
        &["dlq", "purge"],
        &["jobs", "list"],
    ] {
        let text = help(cmd);
        assert!(text.contains("\nExample"), "{cmd:?} help has no example:\n{text}");
        let example: String = text.split("\nExample").nth(1).unwrap().lines().take(2).collect();
        assert!(example.contains(&format!("ferry {}", cmd.join(" "))), "{cmd:?}: {example:?}");
    }
}
