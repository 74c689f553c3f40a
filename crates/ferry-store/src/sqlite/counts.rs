//! Job counts per queue and state, kept in memory by the single writer.
//!
//! SQLite has one writer in one process, so exact counts can live beside it: loaded once
//! at open, then moved by every committed transition. This replaced a `(state, queue)`
//! index that cost a quarter of the writer's throughput. `check_invariants` compares the
//! cache with a full count.

use ferry_core::JobState;
use std::collections::BTreeMap;

pub use crate::effects::{Deltas, StateCounts};

/// Counts of every queue ever seen by this process.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Counts {
    by_queue: BTreeMap<String, StateCounts>,
}

impl Counts {
    /// Starts from a full count.
    pub fn from_rows(rows: impl IntoIterator<Item = (String, JobState, i64)>) -> Self {
        let mut c = Counts::default();
        for (q, st, n) in rows {
            c.by_queue.entry(q).or_default()[st.index()] += n;
        }
        c
    }

    /// Applies a committed transaction's deltas.
    pub fn apply(&mut self, deltas: &Deltas) {
        for (q, d) in &deltas.by_queue {
            let slot = self.by_queue.entry(q.clone()).or_default();
            for (a, b) in slot.iter_mut().zip(d) {
                *a += b;
                debug_assert!(*a >= 0, "count of queue {q} went negative");
            }
        }
    }

    /// One queue's count in one state.
    pub fn get(&self, queue: &str, state: JobState) -> i64 {
        self.by_queue.get(queue).map_or(0, |c| c[state.index()])
    }

    /// Every queue's counts.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &StateCounts)> {
        self.by_queue.iter()
    }

    /// The same counts without queues whose every count is zero (for comparison).
    pub fn nonzero(&self) -> Counts {
        Counts {
            by_queue: self
                .by_queue
                .iter()
                .filter(|(_, c)| c.iter().any(|n| *n != 0))
                .map(|(q, c)| (q.clone(), *c))
                .collect(),
        }
    }
}

/// The counts with a seqlock-style epoch, so a reader can tell whether a commit happened
/// while it compared the cache with the database.
#[derive(Debug, Default)]
pub struct CountsCell {
    epoch: std::sync::atomic::AtomicU64,
    counts: std::sync::Mutex<Counts>,
}

impl CountsCell {
    /// Starts from loaded counts.
    pub fn new(counts: Counts) -> Self {
        CountsCell { epoch: Default::default(), counts: std::sync::Mutex::new(counts) }
    }

    /// The writer is about to commit: the epoch turns odd.
    pub fn begin_commit(&self) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// The commit finished: apply its deltas (if it committed) and turn the epoch even.
    pub fn end_commit(&self, committed: Option<&Deltas>) {
        if let Some(d) = committed {
            self.counts.lock().expect("counts lock").apply(d);
        }
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// Current epoch; odd while a commit is in flight.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// One committed count (exact on the writer thread between its commits, since only the
    /// writer moves the counts).
    pub fn get(&self, queue: &str, state: JobState) -> i64 {
        self.counts.lock().expect("counts lock").get(queue, state)
    }

    /// A copy of the counts.
    pub fn snapshot(&self) -> Counts {
        self.counts.lock().expect("counts lock").clone()
    }
}
