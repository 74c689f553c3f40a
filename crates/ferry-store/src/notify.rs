//! In-process wake-ups: a claimer long-polling a queue parks on that queue's [`Notify`];
//! a commit that makes jobs ready wakes it, so no claimer polls.
//!
//! The PostgreSQL backend feeds notifications from other nodes into the same notifier.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// Most idle queue entries kept before unused ones are swept.
const MAX_IDLE_QUEUES: usize = 1024;

/// Per-queue wake-ups plus a signal for the scheduler that a job became due sooner.
#[derive(Debug, Default)]
pub struct Notifier {
    queues: Mutex<HashMap<String, Arc<Notify>>>,
    due: Notify,
    next_due_ms: AtomicI64,
}

impl Notifier {
    /// A fresh notifier.
    pub fn new() -> Arc<Self> {
        Arc::new(Notifier { next_due_ms: AtomicI64::new(i64::MAX), ..Default::default() })
    }

    /// The handle a claimer of `queue` waits on.
    pub fn queue(&self, queue: &str) -> Arc<Notify> {
        let mut map = self.queues.lock().expect("notifier lock");
        if let Some(n) = map.get(queue) {
            return n.clone();
        }
        if map.len() >= MAX_IDLE_QUEUES {
            map.retain(|_, n| Arc::strong_count(n) > 1);
        }
        map.entry(queue.to_string()).or_default().clone()
    }

    /// Wakes every claimer parked on `queue`.
    pub fn wake(&self, queue: &str) {
        let map = self.queues.lock().expect("notifier lock");
        if let Some(n) = map.get(queue) {
            n.notify_waiters();
        }
    }

    /// Tells the scheduler a job is due at `at_ms`, so it can wake earlier than planned.
    pub fn due_at(&self, at_ms: i64) {
        let prev = self.next_due_ms.fetch_min(at_ms, Ordering::SeqCst);
        if at_ms < prev {
            self.due.notify_one();
        }
    }

    /// Takes the earliest due hint (resetting it); `None` when there is none.
    pub fn take_due_hint(&self) -> Option<i64> {
        let v = self.next_due_ms.swap(i64::MAX, Ordering::SeqCst);
        (v != i64::MAX).then_some(v)
    }

    /// Resolves when a sooner due time has been announced.
    pub async fn due_changed(&self) {
        self.due.notified().await
    }
}
