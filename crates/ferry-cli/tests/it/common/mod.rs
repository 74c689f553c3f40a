//! Test harness: starts the real `ferry serve` binary on a free port with a temporary data
//! directory, and stops it (SIGTERM, or SIGKILL) when asked or dropped.

#![allow(dead_code)]

pub mod pg;
pub mod private_pg;
pub mod tmpfs;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `ferry serve`.
pub struct Server {
    child: Option<Child>,
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// The data directory (kept until the server is dropped).
    pub dir: tempfile::TempDir,
    /// Server output lines seen so far (stdout and stderr).
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    /// Starts a server with default settings on a fresh data directory.
    pub fn start() -> Server {
        Server::start_with(&[], tempfile::tempdir().unwrap())
    }

    /// Starts a server with extra `serve` arguments on `dir`.
    pub fn start_with(args: &[&str], dir: tempfile::TempDir) -> Server {
        Server::start_with_env(args, dir, &[])
    }

    /// Starts a server with extra `serve` arguments on `dir` and extra environment variables
    /// (test hooks such as `FERRY_TEST_HOLD_BROADCAST`).
    pub fn start_with_env(args: &[&str], dir: tempfile::TempDir, envs: &[(&str, &str)]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ferry"))
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .current_dir(dir.path())
            .env_remove("FERRY_DATABASE_URL")
            .env("NO_COLOR", "1")
            .env("RUST_LOG_STYLE", "never")
            .envs(envs.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ferry serve");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (tx, log) = (tx.clone(), log.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(i) = line.find("listening on http://") {
                        let rest = &line[i + "listening on ".len()..];
                        let url = rest.split_whitespace().next().unwrap().to_string();
                        let _ = tx.send(url);
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        let url = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(u) => u,
            Err(_) => {
                let _ = child.kill();
                panic!("ferry serve did not start; output: {:?}", log.lock().unwrap());
            }
        };
        Server { child: Some(child), url, dir, log }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits for a graceful exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
        wait_timeout(&mut child, Duration::from_secs(30)).expect("server exits after SIGTERM")
    }

    /// SIGKILLs the server.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Takes the data directory (for a restart); the server should be stopped first.
    pub fn take_dir(&mut self) -> tempfile::TempDir {
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// A URL under the server.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }
}

fn wait_timeout(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = std::time::Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plain HTTP client for status-code checks.
pub fn http() -> reqwest::Client {
    reqwest::Client::new()
}

/// POSTs raw text and returns (status, JSON body).
pub async fn post_raw(url: &str, body: &str) -> (u16, serde_json::Value) {
    let r = http()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON answer ({status}): {text}")))
}

/// GETs and returns (status, JSON body).
pub async fn get(url: &str) -> (u16, serde_json::Value) {
    let r = http().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("non-JSON answer ({status}): {text}")))
}

/// Asserts the error shape `{"error":{"code","message"}}` and returns the code.
pub fn error_code(body: &serde_json::Value) -> String {
    let e = body.get("error").unwrap_or_else(|| panic!("no error object in {body}"));
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "error without message: {body}");
    e["code"].as_str().unwrap_or_else(|| panic!("error without code: {body}")).to_string()
}
