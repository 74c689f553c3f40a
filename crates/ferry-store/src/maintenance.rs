//! Background upkeep every node runs: the lease reaper, the scheduler that promotes due
//! jobs, and retention. Each pass is a small, bounded write, safe to run on every node.

use crate::Store;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Intervals and batch sizes of the background passes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MaintenanceConfig {
    /// How often expired leases are looked for.
    pub reap_interval_ms: u64,
    /// Longest the scheduler sleeps without checking for due jobs.
    pub promote_interval_ms: u64,
    /// How long completed and cancelled jobs are kept.
    pub retention_ms: i64,
    /// How often retention runs.
    pub prune_interval_ms: u64,
    /// Rows per write of every pass (keeps each transaction short).
    pub batch: usize,
    /// How long events are kept for consumers that resume from a cursor.
    pub events_retention_ms: i64,
    /// Most events kept, whatever their age.
    pub events_keep_max: u64,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        MaintenanceConfig {
            reap_interval_ms: 1_000,
            promote_interval_ms: 1_000,
            retention_ms: 7 * 24 * 3_600_000,
            prune_interval_ms: 60_000,
            batch: 1_000,
            events_retention_ms: 24 * 3_600_000,
            events_keep_max: 1_000_000,
        }
    }
}

/// The running background tasks; `shutdown` (or dropping the handle) stops them.
pub struct Maintenance {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Maintenance {
    /// Starts the reaper, scheduler and retention loops.
    pub fn spawn(store: Arc<dyn Store>, config: MaintenanceConfig) -> Maintenance {
        assert!(config.batch >= 1);
        let (stop, rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(reaper(store.clone(), config.clone(), rx.clone())),
            tokio::spawn(scheduler(store.clone(), config.clone(), rx.clone())),
            tokio::spawn(retention(store, config, rx)),
        ];
        Maintenance { stop, tasks }
    }

    /// Stops every loop and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Waits up to `wait`; true once shutdown was asked for (or the handle was dropped).
async fn stopped(rx: &mut watch::Receiver<bool>, wait: Duration) -> bool {
    if *rx.borrow() {
        return true;
    }
    match tokio::time::timeout(wait, rx.changed()).await {
        Err(_elapsed) => false,
        Ok(Ok(())) => *rx.borrow(),
        Ok(Err(_dropped)) => true,
    }
}

async fn reaper(store: Arc<dyn Store>, cfg: MaintenanceConfig, mut rx: watch::Receiver<bool>) {
    let every = Duration::from_millis(cfg.reap_interval_ms);
    while !stopped(&mut rx, every).await {
        loop {
            match store.reap_expired(cfg.batch).await {
                Ok(r) if (r.requeued + r.dead) as usize >= cfg.batch => continue,
                Ok(r) => {
                    if r.requeued + r.dead > 0 {
                        tracing::info!(requeued = r.requeued, dead = r.dead, "reaped expired leases");
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease reaper pass failed");
                    break;
                }
            }
        }
    }
}

async fn scheduler(store: Arc<dyn Store>, cfg: MaintenanceConfig, mut rx: watch::Receiver<bool>) {
    let max_sleep = Duration::from_millis(cfg.promote_interval_ms);
    let notifier = store.notifier().clone();
    loop {
        let _ = notifier.take_due_hint();
        loop {
            match store.promote_due(cfg.batch).await {
                Ok(n) if n as usize >= cfg.batch => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "scheduler pass failed");
                    break;
                }
            }
        }
        loop {
            match store.fire_schedules(cfg.batch).await {
                Ok(_) => {
                    // Schedules still due (more than one batch of them) go round again.
                    match store.next_schedule_ms().await {
                        Ok(Some(t)) if t <= store.clock().now_ms() => continue,
                        _ => break,
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "schedule pass failed");
                    break;
                }
            }
        }
        let next =
            match (store.next_due_ms().await.ok().flatten(), store.next_schedule_ms().await.ok().flatten()) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        let hint = notifier.take_due_hint();
        let due = match (next, hint) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let sleep = match due {
            Some(t) => Duration::from_millis((t - store.clock().now_ms()).max(0) as u64).min(max_sleep),
            None => max_sleep,
        };
        if sleep.is_zero() {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = notifier.due_changed() => {}
            _ = rx.changed() => return,
        }
        if *rx.borrow() {
            return;
        }
    }
}

async fn retention(store: Arc<dyn Store>, cfg: MaintenanceConfig, mut rx: watch::Receiver<bool>) {
    let every = Duration::from_millis(cfg.prune_interval_ms);
    while !stopped(&mut rx, every).await {
        let before = store.clock().now_ms() - cfg.retention_ms;
        let mut total = 0;
        loop {
            match store.prune_finished(before, cfg.batch).await {
                Ok(n) => {
                    total += n;
                    if (n as usize) < cfg.batch || *rx.borrow() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "retention pass failed");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(pruned = total, "retention removed finished jobs");
        }
        loop {
            match store.prune_convoys(before, cfg.batch).await {
                Ok(n) if (n as usize) >= cfg.batch && !*rx.borrow() => tokio::task::yield_now().await,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "convoy retention pass failed");
                    break;
                }
            }
        }
        let before = store.clock().now_ms() - cfg.events_retention_ms;
        loop {
            let prune = crate::EventPrune { before_ms: before, keep: cfg.events_keep_max, max: cfg.batch };
            match store.prune_events(prune).await {
                Ok(n) if (n as usize) >= cfg.batch && !*rx.borrow() => tokio::task::yield_now().await,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "event retention pass failed");
                    break;
                }
            }
        }
    }
}
