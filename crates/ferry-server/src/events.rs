//! Event fan-out on one node: the hub routes each committed event to the subscribers whose
//! rooms it belongs to, and a [`Feed`] turns a subscription plus the stored log into one
//! ordered stream without gaps or duplicates.
//!
//! Invariants:
//! - the hub never waits on a subscriber: each has a bounded buffer (`event_buffer`); when it
//!   is full the subscriber is marked lagged and gets nothing more from the hub, so a slow
//!   consumer cannot slow the server or other consumers;
//! - a feed registers with the hub *before* it reads the stored log, and skips live events at
//!   or below the last cursor it delivered, so the hand-over from catch-up to live delivery
//!   neither loses nor repeats an event;
//! - an event is routed by index (room → subscribers), so the cost per event is a few hash
//!   lookups, not a check per subscriber.

use ferry_core::{Error, ErrorCode, Event, EventFilter, Result, Room};
use ferry_store::Store;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// An event with its JSON, serialized once for every subscriber.
#[derive(Debug)]
pub struct Delivered {
    /// The event.
    pub event: Event,
    /// Its JSON text.
    pub json: String,
}

impl Delivered {
    fn new(event: Event) -> Arc<Delivered> {
        let json = serde_json::to_string(&event).expect("events serialize");
        Arc::new(Delivered { event, json })
    }
}

struct Entry {
    tx: mpsc::Sender<Arc<Delivered>>,
    lagged: Arc<AtomicBool>,
    /// `None`: no room joined yet (a WebSocket before its first subscribe) gets nothing.
    filter: Option<EventFilter>,
}

#[derive(Default)]
struct Inner {
    subs: HashMap<u64, Entry>,
    rooms: HashMap<Room, HashSet<u64>>,
    firehose: HashSet<u64>,
}

impl Inner {
    fn index(&mut self, id: u64, filter: &Option<EventFilter>, add: bool) {
        let Some(f) = filter else { return };
        let rooms = f.rooms.clone();
        if rooms.is_empty() {
            if add {
                self.firehose.insert(id);
            } else {
                self.firehose.remove(&id);
            }
        }
        for r in rooms {
            if add {
                self.rooms.entry(r).or_default().insert(id);
            } else if let Some(set) = self.rooms.get_mut(&r) {
                set.remove(&id);
                if set.is_empty() {
                    self.rooms.remove(&r);
                }
            }
        }
    }

    fn route(&self, e: &Event, out: &mut Vec<u64>) {
        out.clear();
        out.extend(self.firehose.iter().copied());
        // With only firehose subscribers (or none) there is no room key to build for the event.
        if !self.rooms.is_empty() {
            e.for_each_room(|r| {
                if let Some(set) = self.rooms.get(r) {
                    out.extend(set.iter().copied());
                }
            });
        }
        out.sort_unstable();
        out.dedup();
    }
}

/// Routes committed events to this node's subscribers.
pub struct Hub {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    store: Arc<dyn Store>,
    buffer: usize,
    max_subscribers: usize,
    /// Subscribers served now, for limits and metrics.
    count: AtomicU64,
}

impl Hub {
    /// A hub over `store`'s bus; `run` must be spawned for events to flow.
    pub fn new(store: Arc<dyn Store>, buffer: usize, max_subscribers: usize) -> Arc<Hub> {
        assert!(buffer >= 1 && max_subscribers >= 1);
        Arc::new(Hub {
            inner: Mutex::new(Inner::default()),
            next_id: AtomicU64::new(1),
            store,
            buffer,
            max_subscribers,
            count: AtomicU64::new(0),
        })
    }

    /// Dispatches the bus until `stop` turns true.
    pub async fn run(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut rx = self.store.events().subscribe();
        let mut targets = Vec::new();
        loop {
            let batch = tokio::select! {
                r = rx.recv() => r,
                _ = stop.changed() => return,
            };
            match batch {
                Ok(batch) => {
                    let inner = self.inner.lock().expect("hub lock");
                    if inner.subs.is_empty() {
                        continue;
                    }
                    for e in batch.iter() {
                        inner.route(e, &mut targets);
                        if targets.is_empty() {
                            continue;
                        }
                        let mut delivered: Option<Arc<Delivered>> = None;
                        for id in &targets {
                            let Some(sub) = inner.subs.get(id) else { continue };
                            let Some(f) = &sub.filter else { continue };
                            if !f.admits(e) || sub.lagged.load(Ordering::Relaxed) {
                                continue;
                            }
                            let d = delivered.get_or_insert_with(|| Delivered::new(e.clone())).clone();
                            if sub.tx.try_send(d).is_err() {
                                sub.lagged.store(true, Ordering::Relaxed);
                            }
                        }
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(batches = n, "event hub fell behind its bus; every subscriber resyncs");
                    let inner = self.inner.lock().expect("hub lock");
                    for sub in inner.subs.values() {
                        sub.lagged.store(true, Ordering::Relaxed);
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Registers a subscriber; refused with 503 when the node serves `max_subscribers`.
    pub fn subscribe(self: &Arc<Self>, filter: Option<EventFilter>) -> Result<Subscription> {
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.max_subscribers as u64 {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::new(
                ErrorCode::ServerSaturated,
                format!("this node serves its maximum of {} event subscribers", self.max_subscribers),
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.buffer);
        let lagged = Arc::new(AtomicBool::new(false));
        let mut inner = self.inner.lock().expect("hub lock");
        inner.index(id, &filter, true);
        inner.subs.insert(id, Entry { tx, lagged: lagged.clone(), filter });
        Ok(Subscription { id, rx, lagged, hub: self.clone() })
    }

    fn set_filter(&self, id: u64, filter: Option<EventFilter>) {
        let mut inner = self.inner.lock().expect("hub lock");
        let Some(old) = inner.subs.get_mut(&id).map(|e| std::mem::replace(&mut e.filter, filter.clone()))
        else {
            return;
        };
        inner.index(id, &old, false);
        inner.index(id, &filter, true);
    }

    fn remove(&self, id: u64) {
        let mut inner = self.inner.lock().expect("hub lock");
        if let Some(e) = inner.subs.remove(&id) {
            inner.index(id, &e.filter, false);
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A registration with the hub; dropping it unregisters.
pub struct Subscription {
    id: u64,
    rx: mpsc::Receiver<Arc<Delivered>>,
    lagged: Arc<AtomicBool>,
    hub: Arc<Hub>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.id);
    }
}

/// What a feed yields.
#[derive(Debug)]
pub enum Item {
    /// The next event.
    Event(Arc<Delivered>),
    /// The consumer fell behind its buffer; it should resume after this cursor.
    Lagged(u64),
}

/// Events stored per catch-up read.
const CATCH_UP_PAGE: usize = 1_000;

/// One consumer's ordered stream: stored events after its cursor, then live ones.
pub struct Feed {
    sub: Subscription,
    filter: Option<EventFilter>,
    last: u64,
    /// Highest stored cursor read while catching up (matching or not).
    scanned: u64,
    backlog: VecDeque<Arc<Delivered>>,
    catching_up: bool,
}

impl Feed {
    /// A feed after cursor `since` (`None`: from now on).
    pub fn open(hub: &Arc<Hub>, filter: Option<EventFilter>, since: Option<u64>) -> Result<Feed> {
        let sub = hub.subscribe(filter.clone())?;
        // Registered first: everything after `head` reaches the subscription.
        let last = since.unwrap_or_else(|| hub.store.events().head());
        Ok(Feed { sub, filter, last, scanned: last, backlog: VecDeque::new(), catching_up: true })
    }

    /// The last cursor delivered (or skipped as not matching).
    pub fn cursor(&self) -> u64 {
        self.last
    }

    /// Changes the rooms and types (WebSocket subscribe/unsubscribe); applies to events
    /// from now on.
    pub fn set_filter(&mut self, filter: Option<EventFilter>) {
        self.sub.hub.set_filter(self.sub.id, filter.clone());
        self.filter = filter;
    }

    /// The current filter.
    pub fn filter(&self) -> Option<&EventFilter> {
        self.filter.as_ref()
    }

    /// The next event, or `Lagged`. Waits for live events; cancel-safe between events.
    pub async fn next(&mut self) -> Result<Item> {
        loop {
            if let Some(item) = self.next_stored().await? {
                return Ok(item);
            }
            if self.sub.lagged.load(Ordering::Relaxed) && self.sub.rx.is_empty() {
                return Ok(Item::Lagged(self.last));
            }
            match self.sub.rx.recv().await {
                Some(d) if d.event.cursor <= self.last => continue,
                Some(d) => {
                    self.last = d.event.cursor;
                    return Ok(Item::Event(d));
                }
                None => return Err(Error::unavailable("the event hub stopped")),
            }
        }
    }

    /// The next event that needs no waiting: from the backlog or the stored log. `None` once
    /// caught up (later events arrive live).
    pub async fn next_stored(&mut self) -> Result<Option<Item>> {
        loop {
            if let Some(d) = self.backlog.pop_front() {
                self.last = d.event.cursor;
                return Ok(Some(Item::Event(d)));
            }
            if !self.catching_up {
                return Ok(None);
            }
            // Events read but not matching still move the cursor on.
            self.last = self.last.max(self.scanned);
            let page = self.sub.hub.store.read_events(self.last, CATCH_UP_PAGE).await?;
            if let Some(end) = page.last().map(|e| e.cursor) {
                self.scanned = end;
                for e in page {
                    if self.filter.as_ref().is_some_and(|f| f.matches(&e)) {
                        self.backlog.push_back(Delivered::new(e));
                    }
                }
                continue;
            }
            // Caught up. If the buffer overflowed meanwhile, the store still has it all.
            if self.sub.lagged.swap(false, Ordering::Relaxed) {
                while self.sub.rx.try_recv().is_ok() {}
                continue;
            }
            self.catching_up = false;
        }
    }
}
