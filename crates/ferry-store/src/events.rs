//! The event log's shared parts: the in-process bus that committed events are published on,
//! and the row encoding both backends store them in.
//!
//! Events are stored one row per committing transaction (`event_log`: `first_cursor`, `n`,
//! `at`, `body` = JSON array), so recording them costs one insert per commit, not per event.
//! Cursors are assigned in commit order: by the single writer on SQLite, by a sequencer pass
//! under an advisory lock on PostgreSQL (see `postgres/events.rs`). Invariant: the bus sees
//! batches in cursor order with no gap (`publish` asserts it).

use ferry_core::{Error, Event, EventType, Result, Subject, SubjectKind, Timestamp};
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

/// One stored event: `[type code, at_ms, queue, job id as a number, tags, data, subject?]`; a
/// third of the delivered JSON's size, since storing events is on every write's path. The
/// subject (`[kind code, id]`) is stored only when it is not the one implied by the other
/// fields (see [`Implied`]), so events written before subjects existed decode to
/// what they were about.
#[derive(serde::Serialize, serde::Deserialize)]
struct Stored<'a>(
    u8,
    i64,
    std::borrow::Cow<'a, Option<String>>,
    Option<u128>,
    std::borrow::Cow<'a, [String]>,
    std::borrow::Cow<'a, Option<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")] Option<(u8, String)>,
);

/// The subject an event's other fields imply: a schedule's tick is about the schedule named in
/// its data, another event with a job about that job, one with only a queue about the queue.
/// Borrowed, so checking it on every stored event allocates nothing.
enum Implied<'a> {
    Named(SubjectKind, &'a str),
    Job(uuid::Uuid),
}

impl Implied<'_> {
    fn of<'a>(
        kind: EventType,
        queue: Option<&'a str>,
        job_id: Option<uuid::Uuid>,
        data: Option<&'a serde_json::Value>,
    ) -> Option<Implied<'a>> {
        if kind == EventType::ScheduleFired
            && let Some(name) = data.and_then(|d| d.get("schedule")).and_then(|n| n.as_str())
        {
            return Some(Implied::Named(SubjectKind::Schedule, name));
        }
        if let Some(id) = job_id {
            return Some(Implied::Job(id));
        }
        queue.map(|q| Implied::Named(SubjectKind::Queue, q))
    }

    fn is(&self, s: &Subject) -> bool {
        match self {
            Implied::Named(kind, name) => s.kind == *kind && s.id == *name,
            Implied::Job(id) => s.kind == SubjectKind::Job && uuid::Uuid::parse_str(&s.id).ok() == Some(*id),
        }
    }

    fn subject(self) -> Subject {
        match self {
            Implied::Named(kind, name) => Subject::new(kind, name),
            Implied::Job(id) => Subject::job(id),
        }
    }
}

/// The stored form of a batch (cursors are implied by `first_cursor` and position).
pub(crate) fn encode(events: &[Event]) -> String {
    let mut out = String::with_capacity(events.len() * 96);
    out.push('[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let implied = Implied::of(e.kind, e.queue.as_deref(), e.job_id, e.data.as_ref());
        let subject = (!implied.is_some_and(|i| i.is(&e.subject)))
            .then(|| (e.subject.kind.code(), e.subject.id.clone()));
        let row = Stored(
            e.kind.code(),
            e.at.0,
            std::borrow::Cow::Borrowed(&e.queue),
            e.job_id.map(|u| u.as_u128()),
            std::borrow::Cow::Borrowed(&e.tags),
            std::borrow::Cow::Borrowed(&e.data),
            subject,
        );
        out.push_str(&serde_json::to_string(&row).expect("events serialize"));
    }
    out.push(']');
    out
}

/// Appends to `out` the events of a stored batch (numbered from `first`) whose cursors are
/// after `after`, until `out` holds `limit`. Only those are decoded: the batch is split into
/// its elements first (a scan, no allocation per element), so a reader that needs ten events
/// of a thousand-event batch pays for ten.
pub(crate) fn decode_into(
    first: i64,
    body: &str,
    after: u64,
    limit: usize,
    out: &mut Vec<Event>,
) -> Result<()> {
    let corrupt = |what: String| Error::internal(format!("corrupt event batch {first}: {what}"));
    let rows: Vec<&serde_json::value::RawValue> =
        serde_json::from_str(body).map_err(|e| corrupt(e.to_string()))?;
    let first = first as u64;
    let skip = after.saturating_add(1).saturating_sub(first).min(rows.len() as u64) as usize;
    for (i, raw) in rows.iter().enumerate().skip(skip) {
        if out.len() >= limit {
            break;
        }
        let Stored(code, at, queue, id, tags, data, subject) =
            serde_json::from_str(raw.get()).map_err(|e| corrupt(e.to_string()))?;
        let cursor = first + i as u64;
        let kind = EventType::from_code(code).ok_or_else(|| corrupt(format!("type {code}")))?;
        let (queue, job_id, data) = (queue.into_owned(), id.map(uuid::Uuid::from_u128), data.into_owned());
        let subject = match subject {
            Some((k, id)) => {
                Subject::new(SubjectKind::from_code(k).ok_or_else(|| corrupt(format!("kind {k}")))?, id)
            }
            None => Implied::of(kind, queue.as_deref(), job_id, data.as_ref())
                .map(Implied::subject)
                .ok_or_else(|| corrupt(format!("event {cursor} has no subject")))?,
        };
        out.push(Event {
            cursor,
            kind,
            subject,
            at: Timestamp(at),
            queue,
            job_id,
            tags: tags.into_owned(),
            data,
        });
    }
    Ok(())
}

/// Stored batch rows a catch-up read looks at, at most: with batches of one event it returns
/// this many, with larger ones it stops as soon as it has `limit` events.
pub(crate) const MAX_BATCH_ROWS_PER_READ: usize = 1_000;

/// The first cursor after `after`, as stored (an `i64`): saturating, so a cursor from a client
/// at the top of the range reads nothing rather than overflowing.
pub(crate) fn cursor_bound(after: u64) -> i64 {
    i64::try_from(after).unwrap_or(i64::MAX).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize) -> Vec<Event> {
        (0..n)
            .map(|i| Event {
                cursor: 0,
                kind: EventType::JobEnqueued,
                subject: Subject::job(uuid::Uuid::from_u128(i as u128 + 1)),
                at: Timestamp(1_000 + i as i64),
                queue: Some("q".into()),
                job_id: Some(uuid::Uuid::from_u128(i as u128 + 1)),
                tags: vec![],
                data: None,
            })
            .collect()
    }

    #[test]
    fn a_read_decodes_only_what_it_returns_and_numbers_it_from_the_batch() {
        let body = encode(&batch(10));
        // The batch holds cursors 101..=110.
        let mut out = Vec::new();
        decode_into(101, &body, 103, 4, &mut out).unwrap();
        let cursors: Vec<u64> = out.iter().map(|e| e.cursor).collect();
        assert_eq!(cursors, vec![104, 105, 106, 107]);
        assert_eq!(out[0].job_id, Some(uuid::Uuid::from_u128(4)), "the element at its offset");
        // Continues into `out` until the limit, across batches.
        decode_into(111, &encode(&batch(3)), 107, 7, &mut out).unwrap();
        assert_eq!(out.len(), 7);
        assert_eq!(out[6].cursor, 113);
        // A cursor past the batch reads nothing; one before it reads it whole.
        let mut none = Vec::new();
        decode_into(101, &body, 500, 10, &mut none).unwrap();
        assert!(none.is_empty());
        decode_into(101, &body, 0, 100, &mut none).unwrap();
        assert_eq!(none.iter().map(|e| e.cursor).collect::<Vec<_>>(), (101..=110).collect::<Vec<_>>());
        assert!(decode_into(1, "[1,", 0, 10, &mut none).is_err(), "a corrupt batch is an error");
    }
}
