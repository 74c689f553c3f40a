//! Bodies of the checkpoint endpoints and their checks, turned into the validated puts of
//! [`crate::checkpoint`].

use crate::checkpoint::{
    Blob, Fence, NewCheckpoint, NewWrites, Thread, Tuple, Typed, WriteRow, check_checkpoint_id, check_key,
    special_idx,
};
use crate::error::{Error, Result};
use crate::limits::Limits;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// A checkpoint key as the OpenAPI document names it: 1..=256 characters without control
/// characters (the server counts `limits.max_checkpoint_key_bytes` in UTF-8 bytes).
#[derive(ToSchema)]
#[schema(min_length = 1, max_length = 256, pattern = r"^[^\u0000-\u001f\u007f-\u009f]+$")]
pub struct CheckpointKey(pub String);

/// A namespace as the OpenAPI document names it: a key that may be empty (the root graph).
#[derive(ToSchema)]
#[schema(max_length = 256, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
pub struct Namespace(pub String);

/// A task path as the OpenAPI document names it.
#[derive(ToSchema)]
#[schema(max_length = 1024, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
pub struct TaskPath(pub String);

/// A channel version: a string, or an integer taken as its decimal text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Version {
    /// A string version (LangGraph's savers: `"0000...0001.0.7012"`).
    #[schema(value_type = CheckpointKey)]
    Text(String),
    /// An integer version.
    Int(i64),
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match Value::deserialize(d)? {
            Value::String(s) => Ok(Version::Text(s)),
            Value::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Ok(Version::Int(i)),
                (None, Some(f)) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Version::Int(f as i64)),
                _ => Err(serde::de::Error::custom(format!("a version is a string or an integer, not {n}"))),
            },
            other => {
                Err(serde::de::Error::custom(format!("a version is a string or an integer, not {other}")))
            }
        }
    }
}

impl Version {
    fn text(self) -> String {
        match self {
            Version::Text(s) => s,
            Version::Int(i) => i.to_string(),
        }
    }
}

/// `PUT /v1/threads/{thread}/checkpoints/{id}` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutCheckpointBody {
    /// The checkpoint this one follows (none for a thread's first).
    #[serde(default)]
    #[schema(value_type = Option<CheckpointKey>)]
    pub parent_checkpoint_id: Option<String>,
    /// The checkpoint, opaque typed bytes (LangGraph sends it without its channel values).
    pub checkpoint: Typed,
    /// A JSON object, at most `limits.max_checkpoint_metadata_bytes` serialized.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// Channel → version: the blobs holding the checkpoint's values (at most
    /// `limits.max_checkpoint_channels`).
    #[serde(default)]
    pub channel_versions: Option<BTreeMap<String, Version>>,
    /// The new versions' values (written once: a stored version is shared, not rewritten).
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub blobs: Option<Vec<Blob>>,
    /// Channels whose values are rebuilt from ancestors' writes (LangGraph's `DeltaChannel`).
    #[serde(default)]
    #[schema(value_type = Option<Vec<CheckpointKey>>, max_items = 1000)]
    pub delta_channels: Option<Vec<String>>,
    /// With `lease`: the job whose current lease fences this write.
    #[serde(default)]
    pub job_id: Option<Uuid>,
    /// With `job_id`: that job's lease token.
    #[serde(default)]
    #[schema(min_length = 1)]
    pub lease: Option<String>,
}

/// Where a put goes: the path's thread and id, the query's namespace, the precondition.
#[derive(Debug, Clone)]
pub struct PutTarget {
    /// The thread.
    pub thread: String,
    /// The namespace.
    pub ns: String,
    /// The checkpoint's id.
    pub checkpoint_id: String,
    /// `If-None-Match: *` was sent.
    pub if_none_match: bool,
}

fn fence(job_id: Option<Uuid>, lease: Option<String>) -> Result<Option<Fence>> {
    match (job_id, lease) {
        (None, None) => Ok(None),
        (Some(job_id), Some(lease)) if !lease.is_empty() => Ok(Some(Fence { job_id, lease })),
        (Some(_), _) => Err(Error::invalid("lease", "job_id needs its lease")),
        (None, Some(_)) => Err(Error::invalid("job_id", "lease needs its job_id")),
    }
}

fn metadata_text(m: Option<Map<String, Value>>, limits: &Limits) -> Result<(String, Value)> {
    let value = Value::Object(m.unwrap_or_default());
    let text = serde_json::to_string(&value).expect("serializable");
    if text.len() > limits.max_checkpoint_metadata_bytes {
        return Err(Error::too_large(
            "metadata",
            format!(
                "metadata is {} bytes; the limit is {} (limits.max_checkpoint_metadata_bytes)",
                text.len(),
                limits.max_checkpoint_metadata_bytes
            ),
        ));
    }
    if text.contains("\\u0000") {
        return Err(Error::invalid("metadata", "text must not contain NUL characters"));
    }
    Ok((text, value))
}

fn too_large(field: String, channel: &str, what: &str, actual: usize, limit: usize, name: &str) -> Error {
    Error::too_large(field, format!("{what} is {actual} bytes; the limit is {limit} (limits.{name})"))
        .with_details(serde_json::json!({"channel": channel, "limit": limit, "actual": actual}))
}

impl PutCheckpointBody {
    /// Checks keys, sizes and the fence, and builds the put.
    pub fn validate(self, at: PutTarget, limits: &Limits) -> Result<NewCheckpoint> {
        check_key(&at.thread, limits, "thread", false)?;
        check_key(&at.ns, limits, "ns", true)?;
        check_checkpoint_id(&at.checkpoint_id, limits, "checkpoint_id")?;
        if let Some(p) = &self.parent_checkpoint_id {
            check_checkpoint_id(p, limits, "parent_checkpoint_id")?;
        }
        check_key(&self.checkpoint.type_, limits, "checkpoint.type", false)?;
        let (metadata, meta) = metadata_text(self.metadata, limits)?;
        let versions = self.channel_versions.unwrap_or_default();
        let blobs = self.blobs.unwrap_or_default();
        let deltas = self.delta_channels.unwrap_or_default();
        for (n, field) in
            [(versions.len(), "channel_versions"), (blobs.len(), "blobs"), (deltas.len(), "delta_channels")]
        {
            if n > limits.max_checkpoint_channels {
                return Err(Error::invalid(
                    field,
                    format!(
                        "{n} entries; the limit is {} (limits.max_checkpoint_channels)",
                        limits.max_checkpoint_channels
                    ),
                ));
            }
        }
        let mut channel_versions = BTreeMap::new();
        for (c, v) in versions {
            check_key(&c, limits, "channel_versions", false)?;
            let v = v.text();
            check_key(&v, limits, &format!("channel_versions.{c}"), false)?;
            channel_versions.insert(c, v);
        }
        let mut total = self.checkpoint.data.len();
        if total > limits.max_checkpoint_bytes {
            let limit = limits.max_checkpoint_bytes;
            return Err(too_large(
                "checkpoint.data".into(),
                "",
                "the checkpoint",
                total,
                limit,
                "max_checkpoint_bytes",
            ));
        }
        for (i, b) in blobs.iter().enumerate() {
            check_key(&b.channel, limits, &format!("blobs[{i}].channel"), false)?;
            check_key(&b.version, limits, &format!("blobs[{i}].version"), false)?;
            check_key(&b.type_, limits, &format!("blobs[{i}].type"), false)?;
            let field = format!("blobs[{i}].data");
            if b.data.len() > limits.max_blob_bytes {
                let (n, limit) = (b.data.len(), limits.max_blob_bytes);
                return Err(too_large(field, &b.channel, "the blob", n, limit, "max_blob_bytes"));
            }
            total += b.data.len();
            if total > limits.max_checkpoint_bytes {
                let limit = limits.max_checkpoint_bytes;
                let what = "the checkpoint with its blobs";
                return Err(too_large(field, &b.channel, what, total, limit, "max_checkpoint_bytes"));
            }
        }
        for (i, c) in deltas.iter().enumerate() {
            check_key(c, limits, &format!("delta_channels[{i}]"), false)?;
        }
        Ok(NewCheckpoint {
            thread: at.thread,
            ns: at.ns,
            checkpoint_id: at.checkpoint_id,
            parent_checkpoint_id: self.parent_checkpoint_id,
            checkpoint: self.checkpoint,
            run_id: meta.get("run_id").and_then(Value::as_str).map(str::to_string),
            step: meta.get("step").and_then(Value::as_i64),
            metadata,
            channel_versions,
            delta_channels: deltas,
            blobs,
            fence: fence(self.job_id, self.lease)?,
            if_none_match: at.if_none_match,
        })
    }
}

/// One pending write in a writes body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteBody {
    /// The channel written.
    #[schema(value_type = CheckpointKey)]
    pub channel: String,
    /// The value's type tag.
    #[serde(rename = "type")]
    #[schema(value_type = CheckpointKey)]
    pub type_: String,
    /// The value, base64.
    #[serde(with = "crate::checkpoint::b64")]
    #[schema(value_type = String, format = Byte)]
    pub data: Vec<u8>,
    /// Its index; default LangGraph's: a special channel's negative index, else its position.
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    pub idx: Option<i64>,
}

/// `POST /v1/threads/{thread}/checkpoints/{id}/writes` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WritesBody {
    /// The task that wrote them.
    #[schema(value_type = CheckpointKey)]
    pub task_id: String,
    /// The task's path (the first sort key of pending writes); default `""`.
    #[serde(default)]
    #[schema(value_type = Option<TaskPath>)]
    pub task_path: Option<String>,
    /// 1..=`limits.max_checkpoint_channels` writes.
    #[schema(min_items = 1, max_items = 1000)]
    pub writes: Vec<WriteBody>,
    /// With `lease`: the job whose current lease fences this write.
    #[serde(default)]
    pub job_id: Option<Uuid>,
    /// With `job_id`: that job's lease token.
    #[serde(default)]
    #[schema(min_length = 1)]
    pub lease: Option<String>,
}

impl WritesBody {
    /// Checks keys and sizes, assigns indexes, and builds the put.
    pub fn validate(
        self,
        thread: String,
        ns: String,
        checkpoint_id: String,
        limits: &Limits,
    ) -> Result<NewWrites> {
        check_key(&thread, limits, "thread", false)?;
        check_key(&ns, limits, "ns", true)?;
        check_checkpoint_id(&checkpoint_id, limits, "checkpoint_id")?;
        check_key(&self.task_id, limits, "task_id", false)?;
        let task_path = self.task_path.unwrap_or_default();
        if task_path.len() > limits.max_task_path_bytes {
            return Err(Error::invalid(
                "task_path",
                format!(
                    "task_path is {} bytes; the limit is {} (limits.max_task_path_bytes)",
                    task_path.len(),
                    limits.max_task_path_bytes
                ),
            ));
        }
        if task_path.chars().any(char::is_control) {
            return Err(Error::invalid("task_path", "task_path must not hold control characters"));
        }
        if self.writes.is_empty() || self.writes.len() > limits.max_checkpoint_channels {
            return Err(Error::invalid(
                "writes",
                format!("1..={} writes (limits.max_checkpoint_channels)", limits.max_checkpoint_channels),
            ));
        }
        let mut writes = Vec::with_capacity(self.writes.len());
        let mut seen = std::collections::HashSet::new();
        for (i, w) in self.writes.into_iter().enumerate() {
            check_key(&w.channel, limits, &format!("writes[{i}].channel"), false)?;
            check_key(&w.type_, limits, &format!("writes[{i}].type"), false)?;
            if w.data.len() > limits.max_blob_bytes {
                let (n, limit) = (w.data.len(), limits.max_blob_bytes);
                return Err(too_large(
                    format!("writes[{i}].data"),
                    &w.channel,
                    "the write",
                    n,
                    limit,
                    "max_blob_bytes",
                ));
            }
            let idx = w.idx.or_else(|| special_idx(&w.channel)).unwrap_or(i as i64);
            if !seen.insert(idx) {
                return Err(Error::invalid(
                    format!("writes[{i}].idx"),
                    format!("index {idx} is written twice"),
                ));
            }
            writes.push(WriteRow { channel: w.channel, idx, value: Typed { type_: w.type_, data: w.data } });
        }
        Ok(NewWrites {
            thread,
            ns,
            checkpoint_id,
            task_id: self.task_id,
            task_path,
            writes,
            fence: fence(self.job_id, self.lease)?,
        })
    }
}

/// The namespace query of a thread's checkpoint routes.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct NsQuery {
    /// The namespace; default `""` (the root graph).
    #[param(value_type = Option<Namespace>, inline)]
    pub ns: Option<String>,
}

/// `GET /v1/checkpoints` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CheckpointsQuery {
    /// Only this thread.
    #[param(value_type = Option<CheckpointKey>, inline)]
    pub thread: Option<String>,
    /// Only this namespace (absent: every namespace).
    #[param(value_type = Option<Namespace>, inline)]
    pub ns: Option<String>,
    /// Only ids strictly below this one.
    #[param(value_type = Option<CheckpointKey>, inline)]
    pub before: Option<String>,
    /// A JSON object each result's metadata contains (PostgreSQL `@>`).
    pub metadata: Option<String>,
    /// Page size, 1..=`limits.max_page_size`; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Adds each checkpoint's bytes, blobs and pending writes (a page then stops past
    /// `limits.max_checkpoint_request_bytes`).
    pub full: Option<bool>,
}

/// `GET /v1/checkpoints` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CheckpointsPage {
    /// Newest first.
    pub checkpoints: Vec<Tuple>,
    /// The next page's cursor, or null on the last.
    pub next_cursor: Option<String>,
}

/// `GET /v1/threads` query.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ThreadsQuery {
    /// Only threads last written before this time (RFC 3339).
    #[param(format = DateTime)]
    pub updated_before: Option<String>,
    /// Page size, 1..=`limits.max_page_size`; default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// `GET /v1/threads` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ThreadsPage {
    /// By thread id.
    pub threads: Vec<Thread>,
    /// The next page's cursor, or null on the last.
    pub next_cursor: Option<String>,
}

/// Reads a field that may be absent (`None`), null (`Some(None)`) or set.
fn tri<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Option<i64>>, D::Error> {
    crate::validate::whole::opt(d).map(Some)
}

/// `PATCH /v1/threads/{thread}` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ThreadPatchBody {
    /// Replaces the thread's metadata.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// Deleted after this long without a write (≥ 1); null: the server's default.
    #[serde(default, deserialize_with = "tri", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>, minimum = 1, maximum = 31_622_400_000_i64)]
    pub idle_ttl_ms: Option<Option<i64>>,
    /// Checkpoints kept per namespace (0: all); null: the server's default.
    #[serde(default, deserialize_with = "tri", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000)]
    pub keep_last: Option<Option<i64>>,
}

impl ThreadPatchBody {
    /// Checks and builds the patch.
    pub fn validate(self, thread: String, limits: &Limits) -> Result<crate::checkpoint::ThreadPatch> {
        check_key(&thread, limits, "thread", false)?;
        let metadata = match self.metadata {
            Some(m) => Some(metadata_text(Some(m), limits)?.0),
            None => None,
        };
        if let Some(Some(t)) = self.idle_ttl_ms
            && !(1..=limits.max_delay_ms).contains(&t)
        {
            return Err(Error::invalid("idle_ttl_ms", format!("idle_ttl_ms is 1..={}", limits.max_delay_ms)));
        }
        if let Some(Some(k)) = self.keep_last
            && !(0..=1_000_000).contains(&k)
        {
            return Err(Error::invalid("keep_last", "keep_last is 0..=1000000"));
        }
        Ok(crate::checkpoint::ThreadPatch {
            thread,
            metadata,
            idle_ttl_ms: self.idle_ttl_ms,
            keep_last: self.keep_last,
        })
    }
}

/// `DELETE /v1/threads/{thread}` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ThreadDeleted {
    /// The thread.
    pub thread: String,
    /// Checkpoints deleted (0 if the thread was absent).
    pub deleted: u64,
}

/// `POST /v1/threads/{thread}/copy` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CopyBody {
    /// The new thread, which must hold no checkpoints.
    #[schema(value_type = CheckpointKey)]
    pub to: String,
}

/// `POST /v1/threads/{thread}/copy` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Copied {
    /// The new thread.
    pub thread: String,
    /// Checkpoints copied.
    pub copied: u64,
}

/// How `POST /v1/checkpoints/prune` prunes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PruneStrategy {
    /// Keep each namespace's newest checkpoint (and what its delta channels need).
    KeepLatest,
    /// Delete every checkpoint.
    Delete,
}

/// `POST /v1/checkpoints/prune` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneBody {
    /// 0..=`limits.max_batch` threads.
    #[schema(value_type = Vec<CheckpointKey>, max_items = 10_000)]
    pub threads: Vec<String>,
    /// Default `keep_latest`.
    #[serde(default)]
    pub strategy: Option<PruneStrategy>,
}

/// `POST /v1/checkpoints/delete-runs` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeleteRunsBody {
    /// 0..=`limits.max_batch` run ids (`metadata.run_id`).
    #[schema(value_type = Vec<CheckpointKey>, max_items = 10_000)]
    pub run_ids: Vec<String>,
}

/// How many checkpoints a prune or run delete removed.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    /// Checkpoints deleted.
    pub deleted: u64,
}

/// Checks a list of thread or run ids against the batch limit and the key rules.
pub fn check_ids(ids: &[String], field: &str, limits: &Limits) -> Result<()> {
    if ids.len() > limits.max_batch {
        return Err(Error::too_large(
            field,
            format!("{} ids; the limit is {} (limits.max_batch)", ids.len(), limits.max_batch),
        ));
    }
    for (i, id) in ids.iter().enumerate() {
        check_key(id, limits, &format!("{field}[{i}]"), false)?;
    }
    Ok(())
}
