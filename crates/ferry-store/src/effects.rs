//! What a transaction asks for once it commits, in one type for both backends: the queues
//! to wake, the earliest new due time, the job-count deltas (SQLite keeps counts in memory;
//! PostgreSQL ignores them) and the events to record with it.

use ferry_core::{Event, JobState};

/// Per-state counts of one queue, indexed by [`JobState::index`].
pub type StateCounts = [i64; JobState::ALL.len()];

/// Side effects a command asks for once its transaction commits.
#[derive(Debug, Default)]
pub struct Effects {
    /// Queues that gained ready jobs.
    pub wake: Vec<String>,
    /// Earliest `run_at` of jobs that became scheduled.
    pub due_ms: Option<i64>,
    /// State transitions, for the in-memory counts.
    pub deltas: Deltas,
    /// Events to record in the same transaction and publish after commit.
    pub events: Vec<Event>,
}

impl Effects {
    /// Whether some job reached `completed`, `dead` or `cancelled` here (its hold, if it is a
    /// paid job, settles in the same transaction): every such move records its job event.
    pub fn jobs_ended(&self) -> bool {
        use ferry_core::EventType::{JobCancelled, JobCompleted, JobDead};
        self.events.iter().any(|e| matches!(e.kind, JobCompleted | JobDead | JobCancelled))
    }

    /// Asks for the claimers of `queue` to be woken.
    pub fn wake(&mut self, queue: &str) {
        if !self.wake.iter().any(|q| q == queue) {
            self.wake.push(queue.to_string());
        }
    }

    /// Notes that a job became due at `at_ms`.
    pub fn due(&mut self, at_ms: i64) {
        self.due_ms = Some(self.due_ms.map_or(at_ms, |d| d.min(at_ms)));
    }

    /// Records that `n` jobs of `queue` moved from `from` (None: inserted) to `to` (None: deleted).
    pub fn moved(&mut self, queue: &str, from: Option<JobState>, to: Option<JobState>, n: i64) {
        self.deltas.moved(queue, from, to, n);
    }

    /// Records an event (numbered and stored when the transaction commits).
    pub fn event(&mut self, e: Event) {
        self.events.push(e);
    }

    /// Adds another command's effects (commands that share one transaction).
    pub fn merge(&mut self, other: Effects) {
        for q in other.wake {
            self.wake(&q);
        }
        if let Some(d) = other.due_ms {
            self.due(d);
        }
        self.deltas.merge(other.deltas);
        self.events.extend(other.events);
    }
}

/// Transitions of one transaction, applied only if it commits.
#[derive(Debug, Default)]
pub struct Deltas {
    pub(crate) by_queue: Vec<(String, StateCounts)>,
}

impl Deltas {
    fn slot(&mut self, queue: &str) -> &mut StateCounts {
        let i = match self.by_queue.iter().position(|(q, _)| q == queue) {
            Some(i) => i,
            None => {
                self.by_queue.push((queue.to_string(), StateCounts::default()));
                self.by_queue.len() - 1
            }
        };
        &mut self.by_queue[i].1
    }

    /// `n` jobs of `queue` moved from `from` (None: inserted) to `to` (None: deleted).
    pub fn moved(&mut self, queue: &str, from: Option<JobState>, to: Option<JobState>, n: i64) {
        debug_assert!(from != to || from.is_none());
        let slot = self.slot(queue);
        if let Some(f) = from {
            slot[f.index()] -= n;
        }
        if let Some(t) = to {
            slot[t.index()] += n;
        }
    }

    /// The net change of `queue`'s `state` count so far.
    pub fn get(&self, queue: &str, state: JobState) -> i64 {
        self.by_queue.iter().find(|(q, _)| q == queue).map_or(0, |(_, d)| d[state.index()])
    }

    /// Adds another transaction's deltas.
    pub fn merge(&mut self, other: Deltas) {
        for (q, d) in other.by_queue {
            let slot = self.slot(&q);
            for (a, b) in slot.iter_mut().zip(d) {
                *a += b;
            }
        }
    }
}
