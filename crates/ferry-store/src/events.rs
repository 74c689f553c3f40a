//! The event log's shared parts: the in-process bus that committed events are published on,
//! and the row encoding both backends store them in.
//!
//! Events are stored one row per committing transaction (`event_log`: `first_cursor`, `n`,
//! `at`, `body` = JSON array), so recording them costs one insert per commit, not per event.
//! Cursors are assigned in commit order: by the single writer on SQLite, by a sequencer pass
//! under an advisory lock on PostgreSQL (see `postgres/events.rs`). Invariant: the bus sees
//! batches in cursor order with no gap (`publish` asserts it).

use ferry_core::{Error, Event, EventType, Result, Timestamp};
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
pub const BUS_CAPACITY: usize = 256;

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

/// One stored event: `[type, at_ms, queue, job id as a number, tags, data]`; a third of the
/// delivered JSON's size, since storing events is on every write's path.
type Stored = (u8, i64, Option<String>, Option<u128>, Vec<String>, Option<serde_json::Value>);

/// The stored form of a batch (cursors are implied by `first_cursor` and position).
pub(crate) fn encode(events: &[Event]) -> String {
    let mut out = String::with_capacity(events.len() * 96);
    out.push('[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let kind = EventType::ALL.iter().position(|k| *k == e.kind).expect("a known type") as u8;
        let row = (kind, e.at.0, &e.queue, e.job_id.map(|u| u.as_u128()), &e.tags, &e.data);
        out.push_str(&serde_json::to_string(&row).expect("events serialize"));
    }
    out.push(']');
    out
}

/// Reads a stored batch back, numbering its events from `first`.
pub(crate) fn decode(first: i64, body: &str) -> Result<Vec<Event>> {
    let rows: Vec<Stored> = serde_json::from_str(body)
        .map_err(|e| Error::internal(format!("corrupt event batch {first}: {e}")))?;
    rows.into_iter()
        .enumerate()
        .map(|(i, (kind, at, queue, id, tags, data))| {
            Ok(Event {
                cursor: first as u64 + i as u64,
                kind: *EventType::ALL
                    .get(kind as usize)
                    .ok_or_else(|| Error::internal(format!("corrupt event batch {first}: type {kind}")))?,
                at: Timestamp(at),
                queue,
                job_id: id.map(uuid::Uuid::from_u128),
                tags,
                data,
            })
        })
        .collect()
}

/// Keeps the events after `after` from decoded batches, at most `limit`.
pub(crate) fn after(batches: Vec<Vec<Event>>, after: u64, limit: usize) -> Vec<Event> {
    batches.into_iter().flatten().filter(|e| e.cursor > after).take(limit).collect()
}

/// The first cursor after `after`, as stored (an `i64`): saturating, so a cursor from a client
/// at the top of the range reads nothing rather than overflowing.
pub(crate) fn cursor_bound(after: u64) -> i64 {
    i64::try_from(after).unwrap_or(i64::MAX).saturating_add(1)
}
