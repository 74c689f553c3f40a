//! The event log's shared parts: the in-process bus that committed events are published on,
//! and the row encoding both backends store them in.
//!
//! Events are stored one row per committing transaction (`event_log`: `first_cursor`, `n`,
//! `at`, `body` = JSON array), so recording them costs one insert per commit, not per event.
//! Cursors are assigned in commit order: by the single writer on SQLite, by a sequencer pass
//! under an advisory lock on PostgreSQL (see `postgres/events.rs`). Invariant: the bus sees
//! batches in cursor order with no gap (`publish` asserts it).

use ferry_core::{Error, Event, Result};
use std::sync::Arc;
use std::sync::Mutex;
use tokio::sync::broadcast;

/// Committed event batches fan out from here to the server's subscribers.
#[derive(Debug)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<[Event]>>,
    /// Last cursor published (0: none yet).
    head: Mutex<u64>,
}

/// Batches the bus keeps for a slow receiver before it reports lag.
pub const BUS_CAPACITY: usize = 4_096;

impl EventBus {
    /// A bus whose next batch must start right after `head`.
    pub fn new(head: u64) -> Arc<Self> {
        let (tx, _) = broadcast::channel(BUS_CAPACITY);
        Arc::new(EventBus { tx, head: Mutex::new(head) })
    }

    /// Publishes a committed, numbered batch.
    pub fn publish(&self, batch: Vec<Event>) {
        let Some(last) = batch.last().map(|e| e.cursor) else { return };
        let mut head = self.head.lock().expect("event bus lock");
        assert_eq!(batch[0].cursor, *head + 1, "event batches are published in cursor order without gaps");
        *head = last;
        // No receiver is fine: nobody is listening.
        let _ = self.tx.send(batch.into());
    }

    /// Moves the head without publishing (a node that starts after events were written).
    pub fn skip_to(&self, head: u64) {
        let mut h = self.head.lock().expect("event bus lock");
        *h = (*h).max(head);
    }

    /// The last cursor published.
    pub fn head(&self) -> u64 {
        *self.head.lock().expect("event bus lock")
    }

    /// A receiver of batches published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<[Event]>> {
        self.tx.subscribe()
    }
}

/// The stored form of a batch (cursors are implied by `first_cursor` and position).
pub(crate) fn encode(events: &[Event]) -> String {
    serde_json::to_string(events).expect("events serialize")
}

/// Reads a stored batch back, numbering its events from `first`.
pub(crate) fn decode(first: i64, body: &str) -> Result<Vec<Event>> {
    let mut events: Vec<Event> = serde_json::from_str(body)
        .map_err(|e| Error::internal(format!("corrupt event batch {first}: {e}")))?;
    for (i, e) in events.iter_mut().enumerate() {
        e.cursor = first as u64 + i as u64;
    }
    Ok(events)
}

/// Keeps the events after `after` from decoded batches, at most `limit`.
pub(crate) fn after(batches: Vec<Vec<Event>>, after: u64, limit: usize) -> Vec<Event> {
    batches.into_iter().flatten().filter(|e| e.cursor > after).take(limit).collect()
}
