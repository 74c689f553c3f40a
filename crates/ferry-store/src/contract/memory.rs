//! The episodic-memory domain of the storage contract: episodes and the rows derived from them
//! (full text, tags, unit vectors), written in one transaction; candidate finding for search
//! (ranking is shared, in `ferry_core::memory`); reconcile, rebuild and retention passes.

use async_trait::async_trait;
use ferry_core::Result;
use ferry_core::memory::{AddOutcome, Candidate, Episode, EpisodePatch, NewEpisode, OutcomeStatus};
use ferry_core::wire::{MemoryStats, Mismatches};
use uuid::Uuid;

/// Which episodes a list or a search considers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EpisodeFilter {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Only these namespaces (a restricted caller's).
    pub namespaces: Option<Vec<String>>,
    /// Only these agents' (empty: any).
    pub agents: Vec<String>,
    /// Only this domain.
    pub domain: Option<String>,
    /// Only this task type.
    pub task_type: Option<String>,
    /// Carrying every one of these tags.
    pub tags_all: Vec<String>,
    /// Carrying at least one of these tags (empty: no condition).
    pub tags_any: Vec<String>,
    /// Only these outcomes (empty: any).
    pub outcomes: Vec<OutcomeStatus>,
    /// Ended (else stored) at or after this time, ms.
    pub since: Option<i64>,
    /// Ended (else stored) before this time, ms.
    pub until: Option<i64>,
}

/// A page of a list, newest first.
#[derive(Debug, Clone, Default)]
pub struct EpisodeList {
    /// The filter.
    pub filter: EpisodeFilter,
    /// Only episodes older than this position (the cursor).
    pub before: Option<i64>,
    /// Page size.
    pub limit: usize,
}

/// What a search asks one backend for: candidates in insertion order, newest first.
#[derive(Debug, Clone)]
pub struct CandidateQuery {
    /// The filter (its namespace is set).
    pub filter: EpisodeFilter,
    /// With terms, only episodes matching at least one; else every episode (a flat search with
    /// a query vector asks for both and merges them).
    pub terms: Option<Vec<String>>,
    /// Most candidates.
    pub limit: usize,
    /// Most filter-passing episodes examined, newest first.
    pub max_scanned: usize,
    /// Read each candidate's unit vector.
    pub vectors: bool,
}

/// The candidates found, and whether a bound cut them.
#[derive(Debug, Clone, Default)]
pub struct CandidateSet {
    /// Newest first.
    pub candidates: Vec<Candidate>,
    /// `limit` or `max_scanned` left some out.
    pub truncated: bool,
}

/// What a derived-rows pass does with each episode of its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassMode {
    /// Compares only.
    Check,
    /// Compares, and rewrites what differs.
    Repair,
    /// Rewrites every derived row (rebuild).
    Rewrite,
}

/// One batch of a reconcile, repair or rebuild.
#[derive(Debug, Clone)]
pub struct DerivedPass {
    /// Only this namespace.
    pub namespace: Option<String>,
    /// Episodes after this position (0: from the start).
    pub after: i64,
    /// Most episodes this batch covers.
    pub batch: usize,
    /// What to do.
    pub mode: PassMode,
}

/// What one batch found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassOutcome {
    /// Episodes covered.
    pub checked: u64,
    /// Derived rows that differed (before a repair).
    pub mismatches: Mismatches,
    /// Derived rows rewritten.
    pub repaired: u64,
    /// Where the next batch starts; `None`: done.
    pub next: Option<i64>,
}

/// Episodes. Rules every backend keeps:
/// - an episode, its full-text row, its tag rows and its vector row are written and deleted in
///   one transaction; a failed derived write fails the call and leaves nothing;
/// - a batch is decided before it writes (idempotency, conflicts, the namespace's embedding
///   dimension), so a refusal never rolls back another command;
/// - nothing in memory is authoritative: every read goes to the database;
/// - candidates come newest first by insertion position, and every bound cuts on episodes in
///   that order, so both backends find the same candidates for the same data.
#[async_trait]
pub trait MemoryStore: Send + Sync {
    /// Stores episodes, all or none: each new one, or the stored id of a resend with the same
    /// key (or id) and body; another body under a stored key is 409 `conflict`.
    async fn add_episodes(&self, episodes: Vec<NewEpisode>) -> Result<Vec<AddOutcome>>;

    /// One episode.
    async fn get_episode(&self, id: Uuid) -> Result<Option<Episode>>;

    /// Episodes by id, in the order asked (absent ones left out).
    async fn get_episodes(&self, ids: Vec<Uuid>) -> Result<Vec<Episode>>;

    /// Episodes newest first, and the cursor of the next page when there may be one.
    async fn list_episodes(&self, list: EpisodeList) -> Result<(Vec<Episode>, Option<i64>)>;

    /// Changes tags and importance: `not_found`, or 412 `precondition_failed` when `If-Match`
    /// names an older version.
    async fn patch_episode(&self, patch: EpisodePatch) -> Result<Episode>;

    /// Deletes an episode with its derived rows; whether it existed.
    async fn delete_episode(&self, id: Uuid) -> Result<bool>;

    /// Search candidates (see [`CandidateQuery`]).
    async fn memory_candidates(&self, query: CandidateQuery) -> Result<CandidateSet>;

    /// Counts of one namespace, or of these namespaces (`None`: all).
    async fn memory_stats(
        &self,
        namespace: Option<String>,
        namespaces: Option<Vec<String>>,
    ) -> Result<MemoryStats>;

    /// One batch of a reconcile, repair or rebuild.
    async fn memory_pass(&self, pass: DerivedPass) -> Result<PassOutcome>;

    /// Deletes up to `batch` episodes stored before `before_ms`; how many.
    async fn retire_episodes(&self, before_ms: i64, batch: usize) -> Result<u64>;
}
