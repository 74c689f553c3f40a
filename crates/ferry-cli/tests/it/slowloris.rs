//! Slow clients cannot exhaust the server: thousands of connections that send half their
//! headers, half their body, or nothing after one request hold no request slot, are closed by
//! their time limits, and leave normal requests fast and memory bounded.

use crate::common::Server;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connections of each kind (partial headers, partial bodies, idle keep-alives).
const PER_KIND: usize = 1_000;

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Opens `n` connections and sends each `prefix`, concurrently.
async fn open(addr: &str, n: usize, prefix: &'static [u8]) -> Vec<TcpStream> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let addr = addr.to_string();
            tokio::spawn(async move {
                let mut s = TcpStream::connect(&addr).await.expect("connect");
                s.write_all(prefix).await.expect("send prefix");
                s
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Reads until the peer closes (or `limit` passes); returns what arrived, or `None` on timeout.
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let r = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    r.ok().map(|()| buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_hold_no_request_slot_and_are_closed_by_their_time_limits() {
    let dir = tempfile::tempdir().unwrap();
    // Few request slots, so that slow bodies holding one would starve everyone at once.
    std::fs::write(
        dir.path().join("ferry.toml"),
        "[limits]\nmax_concurrent_requests = 50\nheader_read_timeout_ms = 5000\n\
         body_read_timeout_ms = 5000\nidle_timeout_ms = 6000\n",
    )
    .unwrap();
    let server = Server::start_with(&[], dir);
    let addr = server.url.trim_start_matches("http://").to_string();
    let client = reqwest::Client::new();
    // Warm up, and take the baseline after the first requests have sized the server's pools.
    for _ in 0..20 {
        assert!(client.get(server.at("/v1/queues")).send().await.unwrap().status().is_success());
    }
    let rss_before = rss_bytes(server.pid());
    let started = Instant::now();

    let mut heads = open(&addr, PER_KIND, b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty").await;
    let mut bodies = open(
        &addr,
        PER_KIND,
        b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"queue\":",
    )
    .await;
    let mut idles = open(&addr, PER_KIND, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    // The idle ones got their answer and now sit on a keep-alive connection.
    for s in idles.iter_mut().take(10) {
        let mut chunk = [0u8; 256];
        let n = s.read(&mut chunk).await.unwrap();
        assert!(chunk[..n].starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&chunk[..n]));
    }

    // Normal clients meanwhile: every request answered, quickly.
    let mut latencies = Vec::new();
    for i in 0..300 {
        let t = Instant::now();
        let r = if i % 2 == 0 {
            client.post(server.at("/v1/jobs")).json(&serde_json::json!({"queue": "q"})).send().await.unwrap()
        } else {
            client.get(server.at("/v1/queues")).send().await.unwrap()
        };
        latencies.push(t.elapsed());
        assert!(r.status().is_success(), "a normal request failed with {}", r.status());
    }
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    assert!(p99 < Duration::from_millis(100), "normal requests' p99 is {p99:?} with 3,000 slow clients");
    let rss_during = rss_bytes(server.pid());
    assert!(
        rss_during < rss_before + (64 << 20),
        "RSS grew from {} MB to {} MB under slow clients",
        rss_before >> 20,
        rss_during >> 20
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the normal requests ran before any time limit passed"
    );

    // Each kind is closed by its own limit: half headers and idle connections closed, half
    // bodies answered 408 with the JSON error.
    let limit = Duration::from_secs(15);
    for s in heads.iter_mut().take(20) {
        let got = read_to_close(s, limit).await.expect("a connection stuck in its headers was not closed");
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    }
    for s in bodies.iter_mut().take(20) {
        let got = read_to_close(s, limit).await.expect("a connection stuck in its body was not closed");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 408"), "{text}");
        assert!(text.contains("\"request_timeout\""), "{text}");
    }
    for s in idles.iter_mut().skip(10).take(20) {
        let mut chunk = [0u8; 256];
        let _ = s.read(&mut chunk).await; // the keep-alive answer
        assert!(read_to_close(s, limit).await.is_some(), "an idle keep-alive connection was not closed");
    }
    assert!(started.elapsed() >= Duration::from_secs(5), "closed before the header limit");
    assert!(client.get(server.at("/v1/queues")).send().await.unwrap().status().is_success());
}

/// Sends `head` (a request's headers, its body withheld) on a fresh connection; returns the
/// answer's head and whether the server then keeps the connection for another request.
async fn refused_before_its_body(addr: &str, head: String) -> (String, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&chunk[..n]).to_ascii_lowercase();
    let head = answer.split("\r\n\r\n").next().unwrap_or("").to_string();
    let closed = read_to_close(&mut s, Duration::from_secs(10)).await.is_some();
    (head, !closed)
}

/// A request refused before its body was read (its media type, its token) is answered with
/// `Connection: close`, and the server closes it: a client that reused the connection would
/// send its next request into one closing under it (a flaky "server disconnected").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_before_the_body_is_read_closes_the_connection() {
    let server = Server::start();
    let addr = server.url.trim_start_matches("http://").to_string();
    let post = |ctype: &str| {
        format!(
            "POST /v1/jobs HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {ctype}\r\ncontent-length: 40\r\n\r\n"
        )
    };
    let (head, kept) = refused_before_its_body(&addr, post("text/plain")).await;
    assert!(head.starts_with("http/1.1 415"), "{head}");
    assert!(head.contains("connection: close"), "a 415 before the body says so: {head}");
    assert!(!kept, "the server closed the connection after a refusal with the body unread");

    // A refusal after the body was read (422: no queue) keeps the connection.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let body = "{}";
    let req = format!(
        "POST /v1/jobs HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut chunk = [0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&chunk[..n]).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 422"), "{answer}");
    assert!(!answer.contains("connection: close"), "{answer}");

    let client = reqwest::Client::new();
    let minted =
        client.post(server.at("/v1/tokens")).json(&serde_json::json!({"name": "root", "scopes": ["admin"]}));
    assert_eq!(minted.send().await.unwrap().status(), 201);
    let (head, kept) = refused_before_its_body(&addr, post("application/json")).await;
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(head.contains("connection: close"), "a 401 before the body says so: {head}");
    assert!(!kept);
}
