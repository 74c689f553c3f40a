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
//!   neither loses nor repeats an event; while it catches up the hub skips it (as if lagged),
//!   and once the log is read to the end it reads it once more after rejoining;
//! - an event is routed by index (room → subscribers), so the cost per event is a few hash
//!   lookups, not a check per subscriber;
//! - reading the stored log is background work: every feed catching up on the node draws on
//!   one budget (`limits.max_catchup_events_per_s`), and holds at most a page of events.

use ferry_core::{Error, ErrorCode, Event, EventFilter, Result, Room};
use ferry_store::Store;
use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
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

/// The node's budget for reading the stored log, shared by every feed catching up: a token
/// bucket of events per second, two pages deep (what refills while a page is read is kept).
struct CatchupBudget {
    limiter: governor::DefaultDirectRateLimiter,
}

impl CatchupBudget {
    fn new(events_per_s: u64) -> CatchupBudget {
        let rate = NonZeroU32::new(events_per_s.clamp(1, u64::from(u32::MAX)) as u32).expect("at least 1");
        let depth = NonZeroU32::new(2 * CATCH_UP_PAGE as u32).expect("a page holds events");
        CatchupBudget {
            limiter: governor::RateLimiter::direct(governor::Quota::per_second(rate).allow_burst(depth)),
        }
    }

    /// Waits until `n` more events read fit the budget.
    async fn spend(&self, n: usize) {
        use governor::clock::Clock as _;
        let Some(n) = NonZeroU32::new(n.min(CATCH_UP_PAGE) as u32) else { return };
        while let Ok(Err(not_until)) = self.limiter.check_n(n) {
            let wait = not_until.wait_time_from(self.limiter.clock().now());
            tokio::time::sleep(wait).await;
        }
    }
}

/// Routes committed events to this node's subscribers.
pub struct Hub {
    inner: Mutex<Inner>,
    next_id: AtomicU64,
    catchup: CatchupBudget,
    store: Arc<dyn Store>,
    buffer: usize,
    max_subscribers: usize,
    /// Subscribers served now, for limits and metrics.
    count: AtomicU64,
}

impl Hub {
    /// A hub over `store`'s bus; `run` must be spawned for events to flow. Its feeds read the
    /// stored log at most `catchup_events_per_s`, all together.
    pub fn new(
        store: Arc<dyn Store>,
        buffer: usize,
        max_subscribers: usize,
        catchup_events_per_s: u64,
    ) -> Arc<Hub> {
        assert!(buffer >= 1 && max_subscribers >= 1);
        Arc::new(Hub {
            inner: Mutex::new(Inner::default()),
            next_id: AtomicU64::new(1),
            catchup: CatchupBudget::new(catchup_events_per_s),
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

    /// Registers a subscriber; refused with 503 when the node serves `max_subscribers`. One
    /// that starts `behind` (catching up) is skipped, as a lagged one is, until its feed has
    /// read the stored log to the end: live events would only fill its buffer meanwhile.
    pub fn subscribe(self: &Arc<Self>, filter: Option<EventFilter>, behind: bool) -> Result<Subscription> {
        if self.count.fetch_add(1, Ordering::Relaxed) >= self.max_subscribers as u64 {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return Err(Error::new(
                ErrorCode::ServerSaturated,
                format!("this node serves its maximum of {} event subscribers", self.max_subscribers),
            ));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.buffer);
        let lagged = Arc::new(AtomicBool::new(behind));
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
    /// Resumed from a cursor with no room joined yet (a WebSocket before its first
    /// subscribe): the stored log waits for the rooms instead of being skipped.
    hold: bool,
}

impl Feed {
    /// A feed after cursor `since` (`None`: from now on).
    pub fn open(hub: &Arc<Hub>, filter: Option<EventFilter>, since: Option<u64>) -> Result<Feed> {
        // Registered first: everything after `head` reaches the subscription. A feed resuming
        // from a cursor starts as lagged: it takes live events only once it has read the
        // stored log to the end (then it reads it once more, see `next_stored`).
        let sub = hub.subscribe(filter.clone(), since.is_some())?;
        let last = since.unwrap_or_else(|| hub.store.events().head());
        let hold = since.is_some();
        Ok(Feed { sub, filter, last, scanned: last, backlog: VecDeque::new(), catching_up: true, hold })
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
            // (A feed held before its first rooms is still behind, not lagged: it waits.)
            if !self.catching_up && self.sub.lagged.load(Ordering::Relaxed) && self.sub.rx.is_empty() {
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

    /// The next event already at hand (the page read last, or the live buffer once caught up),
    /// without reading the log or waiting: what a stream sends along with the event before it.
    pub fn next_ready(&mut self) -> Option<Arc<Delivered>> {
        if let Some(d) = self.take_backlog() {
            return Some(d);
        }
        if self.catching_up {
            return None;
        }
        while let Ok(d) = self.sub.rx.try_recv() {
            if d.event.cursor > self.last {
                self.last = d.event.cursor;
                return Some(d);
            }
        }
        None
    }

    /// The next event of the page read last, delivered.
    fn take_backlog(&mut self) -> Option<Arc<Delivered>> {
        let d = self.backlog.pop_front()?;
        self.last = d.event.cursor;
        Some(d)
    }

    /// The next event that needs no waiting: from the backlog or the stored log. `None` once
    /// caught up (later events arrive live).
    pub async fn next_stored(&mut self) -> Result<Option<Item>> {
        loop {
            if let Some(d) = self.take_backlog() {
                return Ok(Some(Item::Event(d)));
            }
            if !self.catching_up || (self.hold && self.filter.is_none()) {
                return Ok(None);
            }
            // Events read but not matching still move the cursor on.
            self.last = self.last.max(self.scanned);
            let page = self.sub.hub.store.read_events(self.last, CATCH_UP_PAGE).await?;
            if let Some(end) = page.last().map(|e| e.cursor) {
                self.scanned = end;
                let n = page.len();
                for e in page {
                    if self.filter.as_ref().is_some_and(|f| f.matches(&e)) {
                        self.backlog.push_back(Delivered::new(e));
                    }
                }
                // Paid once the page is kept, so a caller that gives up while waiting (a
                // stream's keep-alive timer) loses nothing.
                self.sub.hub.catchup.spend(n).await;
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
