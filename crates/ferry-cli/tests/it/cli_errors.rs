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
