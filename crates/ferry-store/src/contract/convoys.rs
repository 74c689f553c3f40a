//! The convoy domain of the storage contract: groups of jobs on one queue run under a limit,
//! ended once with a completion job.
//!
//! Members are ordinary jobs with a `convoy_id`; the job calls (`complete`, `fail`, the reaper,
//! `cancel`, `heartbeat`, `replay_dead`) keep their convoy's counters, slots and controller in
//! the same transaction, so this trait only creates, grows, ends and reads convoys.

use async_trait::async_trait;
use ferry_core::convoy::{Convoy, ConvoyCreated, ConvoyFilter, ConvoyGauges, MemberView, NewConvoy};
use ferry_core::{EnqueueOutcome, JobState, NewJob, Page, PageRequest, Result};

/// Convoys: create, add members, seal, cancel, read, prune.
#[async_trait]
pub trait ConvoyStore: Send + Sync {
    /// Creates a convoy with its first members, all or nothing; a repeat of an existing id
    /// with the same name, queue and limit adds nothing (`duplicate`), one with other values
    /// is `conflict` (`details.fields`). An empty sealed convoy ends in this call.
    async fn create_convoy(&self, convoy: NewConvoy) -> Result<ConvoyCreated>;

    /// Adds members to an open convoy, all or nothing (`invalid_state` once sealed,
    /// `not_found` for an unknown id); a member whose `unique_key` an earlier member of the
    /// convoy has answers that member's id as a duplicate.
    async fn add_convoy_members(&self, id: &str, members: Vec<NewJob>) -> Result<Vec<EnqueueOutcome>>;

    /// Takes no more members; ends the convoy now if no member is live. Idempotent.
    async fn seal_convoy(&self, id: &str) -> Result<Convoy>;

    /// Seals the convoy and cancels every member not running; it ends `cancelled` once the
    /// running ones end. Idempotent on a cancelled convoy; `invalid_state` on one that
    /// completed or failed.
    async fn cancel_convoy(&self, id: &str) -> Result<Convoy>;

    /// One convoy with its counts; `not_found` when absent.
    async fn get_convoy(&self, id: &str) -> Result<Convoy>;

    /// Convoys oldest first, filtered, one page at a time.
    async fn list_convoys(&self, filter: ConvoyFilter, page: PageRequest) -> Result<Page<Convoy>>;

    /// A convoy's members in the order added, optionally of one state; `not_found` when the
    /// convoy is absent.
    async fn convoy_members(
        &self,
        id: &str,
        state: Option<JobState>,
        page: PageRequest,
    ) -> Result<Page<MemberView>>;

    /// Deletes up to `max` convoys that ended at or before `before_ms` (their members are
    /// pruned as jobs).
    async fn prune_convoys(&self, before_ms: i64, max: usize) -> Result<u64>;

    /// Live convoys by state and their held members, cluster-wide.
    async fn convoy_gauges(&self) -> Result<ConvoyGauges>;
}
