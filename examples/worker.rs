//! A worker for a local ferry server: `cargo run -p ferry-client --example worker`
//! (this file is the `worker` example of `crates/ferry-client`).
//!
//! It handles the `emails` queue with 8 concurrent handlers until Ctrl-C, then finishes the
//! jobs it is running and reports them before it exits.

use ferry_client::{Client, JobError, Worker};

#[derive(serde::Deserialize)]
struct Email {
    to: String,
}

#[tokio::main]
async fn main() {
    let url = std::env::var("FERRY_URL").unwrap_or_else(|_| "http://127.0.0.1:7700".into());
    let worker =
        Worker::new(Client::new(&url), "example-worker").concurrency(8).handle("emails", |job| async move {
            let email: Email = job.payload()?;
            if email.to.is_empty() {
                return Err(JobError::fatal("no recipient")); // straight to the dead-letter queue
            }
            println!("job {} (attempt {}): sending to {}", job.id, job.attempt, email.to);
            Ok(Some(serde_json::json!({ "sent": true })))
        });
    println!("working the emails queue at {url}; Ctrl-C to stop");
    let stats = worker
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    println!(
        "stopped: {} completed, {} failed",
        stats.completed.load(std::sync::atomic::Ordering::Relaxed),
        stats.failed.load(std::sync::atomic::Ordering::Relaxed)
    );
}
