//! The run-checkpoint domain of the storage contract: LangGraph's saver tables (checkpoints,
//! blobs written once per version, pending writes) under threads with retention settings.

use async_trait::async_trait;
use ferry_core::Result;
use ferry_core::checkpoint::{
    NewCheckpoint, NewWrites, PutOutcome, Thread, ThreadPatch, Tuple, WritesOutcome,
};

/// Which checkpoints a list returns, newest first (by id, byte order).
#[derive(Debug, Clone, Default)]
pub struct CheckpointFilter {
    /// Only this thread.
    pub thread: Option<String>,
    /// Only this namespace.
    pub ns: Option<String>,
    /// Only ids strictly below this one.
    pub before: Option<String>,
    /// A JSON object each result's metadata contains (`@>`).
    pub metadata: Option<serde_json::Value>,
    /// Resume after this `(checkpoint_id, thread, ns)` (the page cursor).
    pub after: Option<PageKey>,
    /// Page size.
    pub limit: usize,
    /// Include bytes, blobs and writes.
    pub full: bool,
    /// With `full`, a page stops once its entries pass this many bytes (at least one entry).
    pub max_bytes: usize,
}

/// A checkpoint's position in the newest-first order: `(checkpoint_id, thread, ns)`.
pub type PageKey = (String, String, String);

/// Most rows one list call reads while a metadata filter passes them over.
pub const MAX_SCAN: usize = 10_000;

/// Which threads a list returns, by id.
#[derive(Debug, Clone, Default)]
pub struct ThreadFilter {
    /// Only threads last written before this time (ms).
    pub updated_before: Option<i64>,
    /// Ids after this one.
    pub after: Option<String>,
    /// Page size.
    pub limit: usize,
}

/// One retention pass.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointSweep {
    /// Threads each transaction handles.
    pub batch: usize,
    /// Default idle TTL (0: off).
    pub idle_ttl_ms: i64,
    /// Default checkpoints kept per namespace (0: all).
    pub keep_last: i64,
    /// Threads written this recently are left alone.
    pub grace_ms: i64,
}

/// What a retention pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Idle threads deleted.
    pub threads_expired: u64,
    /// Checkpoints deleted by `keep_last`.
    pub checkpoints_pruned: u64,
}

/// Checkpoints. Rules every backend keeps:
/// - a put is decided before it writes (fence, precondition, missing blobs), so a refusal is an
///   answer and never rolls back a group commit's other commands;
/// - a blob is written once: a later put of the same `(thread, ns, channel, version)` shares it;
/// - every version a stored checkpoint references has its blob (`check_invariants`), and a
///   delete removes the blobs no remaining checkpoint references, in the same transaction;
/// - a thread's counts (`checkpoints`, `blobs`, `writes`, `bytes`) match its rows.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// Stores a checkpoint with its new blobs: new (201), identical repeat (`duplicate`), or
    /// other content (`replaced`, or 409 `conflict` under `If-None-Match: *`).
    async fn put_checkpoint(&self, put: NewCheckpoint) -> Result<PutOutcome>;

    /// Stores pending writes (insert-if-absent, or replace for a batch of special channels).
    async fn put_checkpoint_writes(&self, put: NewWrites) -> Result<WritesOutcome>;

    /// One checkpoint with its blobs and writes; `None` as id: the newest of the namespace.
    async fn get_checkpoint(&self, thread: &str, ns: &str, id: Option<&str>) -> Result<Option<Tuple>>;

    /// Checkpoints newest first, and where the next page starts when there may be one (a
    /// metadata filter scans at most [`MAX_SCAN`] rows per call, so a page may come back short
    /// with a cursor).
    async fn list_checkpoints(&self, filter: CheckpointFilter) -> Result<(Vec<Tuple>, Option<PageKey>)>;

    /// One thread; `None` if absent.
    async fn get_thread(&self, thread: &str) -> Result<Option<Thread>>;

    /// Threads by id.
    async fn list_threads(&self, filter: ThreadFilter) -> Result<Vec<Thread>>;

    /// Changes a thread's settings; `not_found` if absent.
    async fn patch_thread(&self, patch: ThreadPatch) -> Result<Thread>;

    /// Deletes a thread with everything it holds; the checkpoints deleted (0 if absent).
    async fn delete_thread(&self, thread: &str) -> Result<u64>;

    /// Copies every checkpoint, blob and write of `from` to `to` (ids kept): 404 unknown
    /// source, 409 `conflict` if `to` holds checkpoints. Returns the checkpoints copied.
    async fn copy_thread(&self, from: &str, to: &str) -> Result<u64>;

    /// Keeps each namespace's newest `keep` checkpoints of each thread (0: deletes them all),
    /// with what their delta channels need; returns the checkpoints deleted.
    async fn prune_threads(&self, threads: Vec<String>, keep: usize) -> Result<u64>;

    /// Deletes the checkpoints whose `metadata.run_id` is one of `run_ids`, with their writes.
    async fn delete_checkpoint_runs(&self, run_ids: Vec<String>) -> Result<u64>;

    /// One retention pass: idle threads deleted, `keep_last` applied.
    async fn sweep_checkpoints(&self, sweep: CheckpointSweep) -> Result<SweepOutcome>;
}
