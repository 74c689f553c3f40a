//! Checkpoint rows as both backends store them: the column lists, and the decoding of stored
//! text columns into the model, so SQLite and PostgreSQL answer alike.

use ferry_core::checkpoint::{Thread, Tuple};
use ferry_core::{Error, Result, Timestamp};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The columns of a checkpoint as read (the bytes last, read only for a full entry).
pub const CHECKPOINT_COLS: &str = "thread, ns, checkpoint_id, parent_checkpoint_id, metadata, channel_versions, \
     delta_channels, bytes, created_at, type, checkpoint";

/// The columns of a thread as read.
pub const THREAD_COLS: &str = "thread, metadata, idle_ttl_ms, keep_last, checkpoints, blobs, writes, bytes, \
     created_at, updated_at, last_job_id";

/// A checkpoint row's stored values, in [`CHECKPOINT_COLS`] order.
pub struct CheckpointRow {
    /// thread, ns, checkpoint_id, parent_checkpoint_id
    pub keys: (String, String, String, Option<String>),
    /// metadata, channel_versions, delta_channels (JSON text)
    pub texts: (String, String, String),
    /// bytes, created_at
    pub sizes: (i64, i64),
    /// type and bytes, when read
    pub body: Option<(String, Vec<u8>)>,
}

fn json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::internal(format!("stored {what} unreadable: {e}")))
}

/// Decodes a row (blobs and writes are added by the caller).
pub fn tuple_from(r: CheckpointRow) -> Result<Tuple> {
    let (thread, ns, checkpoint_id, parent_checkpoint_id) = r.keys;
    let (metadata, versions, deltas) = r.texts;
    Ok(Tuple {
        thread,
        ns,
        checkpoint_id,
        parent_checkpoint_id,
        checkpoint: r.body.map(|(type_, data)| ferry_core::checkpoint::Typed { type_, data }),
        metadata: json(&metadata, "metadata")?,
        channel_versions: json::<BTreeMap<String, String>>(&versions, "channel_versions")?,
        delta_channels: json(&deltas, "delta_channels")?,
        blobs: None,
        pending_writes: None,
        bytes: r.sizes.0,
        created_at: Timestamp(r.sizes.1),
    })
}

/// A thread row's stored values, in [`THREAD_COLS`] order.
pub type ThreadRow = (String, String, Option<i64>, Option<i64>, [i64; 4], i64, i64, Option<Uuid>);

/// Decodes a thread row.
pub fn thread_from(r: ThreadRow) -> Result<Thread> {
    let (
        thread,
        metadata,
        idle_ttl_ms,
        keep_last,
        [checkpoints, blobs, writes, bytes],
        created,
        updated,
        job,
    ) = r;
    Ok(Thread {
        thread,
        metadata: json(&metadata, "thread metadata")?,
        idle_ttl_ms,
        keep_last,
        checkpoints,
        blobs,
        writes,
        bytes,
        created_at: Timestamp(created),
        updated_at: Timestamp(updated),
        last_job_id: job,
    })
}

/// Whether a stored checkpoint equals a put's (the repeat is then a duplicate).
pub fn same_content(stored: &Tuple, put: &ferry_core::checkpoint::NewCheckpoint) -> Result<bool> {
    let body = stored.checkpoint.as_ref().expect("a stored checkpoint compared with a put is read whole");
    let meta: serde_json::Value = json(&put.metadata, "metadata")?;
    Ok(stored.parent_checkpoint_id == put.parent_checkpoint_id
        && body == &put.checkpoint
        && stored.metadata == meta
        && stored.channel_versions == put.channel_versions
        && stored.delta_channels == put.delta_channels)
}

/// What a put does once its stored row (if any) is read.
pub enum Decided {
    /// An identical repeat: answer this, write nothing.
    Duplicate(ferry_core::checkpoint::PutOutcome),
    /// Write (new, or a replace): the outcome to fill in.
    Write(ferry_core::checkpoint::PutOutcome),
}

/// Decides a put against its stored row, before anything is written: a duplicate, a 409
/// `conflict` under `If-None-Match: *`, or a write.
pub fn decide_put(stored: Option<&Tuple>, c: &ferry_core::checkpoint::NewCheckpoint) -> Result<Decided> {
    let mut out = ferry_core::checkpoint::PutOutcome {
        thread: c.thread.clone(),
        ns: c.ns.clone(),
        checkpoint_id: c.checkpoint_id.clone(),
        blobs_written: 0,
        blobs_shared: 0,
        duplicate: false,
        replaced: false,
    };
    let Some(s) = stored else { return Ok(Decided::Write(out)) };
    if same_content(s, c)? {
        out.blobs_shared = c.blobs.len() as u64;
        out.duplicate = true;
        return Ok(Decided::Duplicate(out));
    }
    if c.if_none_match {
        return Err(ferry_core::checkpoint::exists_conflict(c));
    }
    Ok(Decided::Write(out))
}

/// The invariant checks both backends run (each query returns offending thread ids).
pub const INVARIANTS: &[(&str, &str)] = &[
    (
        "SELECT t.thread FROM threads t WHERE t.checkpoints <> (SELECT count(*) FROM checkpoints c WHERE c.thread = t.thread)
            OR t.blobs <> (SELECT count(*) FROM checkpoint_blobs b WHERE b.thread = t.thread)
            OR t.writes <> (SELECT count(*) FROM checkpoint_writes w WHERE w.thread = t.thread)",
        "thread counts differ from its rows",
    ),
    (
        "SELECT DISTINCT c.thread FROM checkpoints c WHERE NOT EXISTS (SELECT 1 FROM threads t WHERE t.thread = c.thread)",
        "checkpoints without their thread",
    ),
];

/// The referenced `(ns, channel, version)` of stored `(ns, channel_versions)` rows.
pub fn referenced(
    rows: Vec<(String, String)>,
) -> Result<std::collections::HashSet<(String, String, String)>> {
    let mut out = std::collections::HashSet::new();
    for (ns, text) in rows {
        let m: BTreeMap<String, String> = json(&text, "channel_versions")?;
        out.extend(m.into_iter().map(|(c, v)| (ns.clone(), c, v)));
    }
    Ok(out)
}

/// The 404 for a thread that does not exist.
pub fn thread_not_found(thread: &str) -> Error {
    Error::new(ferry_core::ErrorCode::NotFound, format!("thread {thread:?} not found"))
}
