//! Run checkpoints (LangGraph's saver model): threads of checkpoints per namespace, blobs written
//! once per `(channel, version)` and shared by every checkpoint that references them, and
//! pending writes per task. State is opaque typed bytes: ferry never decodes it.
//!
//! Pure rules both backends share: key checks, LangGraph's write indexes, metadata containment
//! (PostgreSQL's `@>`), and the retention keep-set (newest N per namespace, plus the ancestors
//! a delta channel needs to be rebuilt).

use crate::error::{Error, ErrorCode, Result};
use crate::event::{Event, EventType, Subject, SubjectKind};
use crate::job::Timestamp;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use utoipa::ToSchema;
use uuid::Uuid;

/// The checkpoint id that names a thread's newest checkpoint in a path; never stored.
pub const LATEST: &str = "latest";

/// LangGraph's special channels and their write indexes (`WRITES_IDX_MAP`): a batch of only
/// these replaces, and each takes its negative index instead of its position.
pub const SPECIAL_CHANNELS: [(&str, i64); 4] =
    [("__error__", -1), ("__scheduled__", -2), ("__interrupt__", -3), ("__resume__", -4)];

/// The index of a special channel's write, or `None` for a regular channel.
pub fn special_idx(channel: &str) -> Option<i64> {
    SPECIAL_CHANNELS.iter().find(|(c, _)| *c == channel).map(|(_, i)| *i)
}

/// Checks a thread or checkpoint id, namespace, channel, version or task id: at most
/// `limits.max_checkpoint_key_bytes` bytes, no control characters, empty only where allowed
/// (a namespace).
pub fn check_key(value: &str, limits: &crate::Limits, field: &str, allow_empty: bool) -> Result<()> {
    if value.is_empty() && !allow_empty {
        return Err(Error::invalid(field, format!("{field} must not be empty")));
    }
    if value.len() > limits.max_checkpoint_key_bytes {
        return Err(Error::invalid(
            field,
            format!(
                "{field} is {} bytes; the limit is {} (limits.max_checkpoint_key_bytes)",
                value.len(),
                limits.max_checkpoint_key_bytes
            ),
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(Error::invalid(field, format!("{field} has the control character {c:?}")));
    }
    Ok(())
}

/// Checks a checkpoint id (a key that is not `latest`).
pub fn check_checkpoint_id(value: &str, limits: &crate::Limits, field: &str) -> Result<()> {
    check_key(value, limits, field, false)?;
    if value == LATEST {
        return Err(Error::invalid(field, "`latest` is reserved: it names a thread's newest checkpoint"));
    }
    Ok(())
}

/// Opaque typed bytes (`serde.dumps_typed`'s `(type, bytes)`): base64 `data` on the wire, raw
/// bytes in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Typed {
    /// The serializer's type tag (`msgpack`, `json`, `bytes`, `empty`...), opaque to ferry.
    #[serde(rename = "type")]
    #[schema(value_type = crate::wire::checkpoints::CheckpointKey)]
    pub type_: String,
    /// The bytes, standard base64 with padding.
    #[serde(with = "b64")]
    #[schema(value_type = String, format = Byte)]
    pub data: Vec<u8>,
}

/// Base64 (standard alphabet, padded) for `Vec<u8>` fields.
pub mod b64 {
    use super::*;

    /// Writes bytes as base64.
    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
    }

    /// Reads base64; anything else is a malformed request (400).
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<u8>, D::Error> {
        let text: std::borrow::Cow<'de, str> = serde::Deserialize::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(|e| serde::de::Error::custom(format!("data is not standard base64: {e}")))
    }
}

/// A job lease a write is fenced by: a timed-out worker cannot overwrite its retry's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The job.
    pub job_id: Uuid,
    /// Its lease token, which must still be current.
    pub lease: String,
}

/// A blob sent with a put: the value of `channel` at `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Blob {
    /// The channel.
    #[schema(value_type = crate::wire::checkpoints::CheckpointKey)]
    pub channel: String,
    /// Its version (a string; LangGraph's versions are compared as text here).
    #[schema(value_type = crate::wire::checkpoints::CheckpointKey)]
    pub version: String,
    /// The value's type tag (`empty`: the version exists without a value).
    #[serde(rename = "type")]
    #[schema(value_type = crate::wire::checkpoints::CheckpointKey)]
    pub type_: String,
    /// The value, base64.
    #[serde(with = "b64")]
    #[schema(value_type = String, format = Byte)]
    pub data: Vec<u8>,
}

/// A validated put.
#[derive(Debug, Clone)]
pub struct NewCheckpoint {
    /// The thread.
    pub thread: String,
    /// The namespace (`""` is the root graph).
    pub ns: String,
    /// The checkpoint's id.
    pub checkpoint_id: String,
    /// The checkpoint it follows.
    pub parent_checkpoint_id: Option<String>,
    /// The checkpoint itself, opaque.
    pub checkpoint: Typed,
    /// Its metadata as compact JSON text (an object).
    pub metadata: String,
    /// `metadata.run_id` when a string (what `delete-runs` matches).
    pub run_id: Option<String>,
    /// `metadata.step` when an integer (reported in `checkpoint.put`).
    pub step: Option<i64>,
    /// Channel → version: which blobs the checkpoint's values are.
    pub channel_versions: BTreeMap<String, String>,
    /// Channels whose values are rebuilt from ancestors' writes.
    pub delta_channels: Vec<String>,
    /// The blobs sent (new versions).
    pub blobs: Vec<Blob>,
    /// The lease fencing the write.
    pub fence: Option<Fence>,
    /// `If-None-Match: *`: a different checkpoint under this id is a conflict, not a replace.
    pub if_none_match: bool,
}

impl NewCheckpoint {
    /// The checkpoint's own stored size: its bytes and its metadata.
    pub fn own_bytes(&self) -> i64 {
        (self.checkpoint.data.len() + self.metadata.len()) as i64
    }

    /// `channel_versions` as stored (compact JSON).
    pub fn versions_text(&self) -> String {
        serde_json::to_string(&self.channel_versions).expect("serializable")
    }

    /// `delta_channels` as stored (compact JSON).
    pub fn deltas_text(&self) -> String {
        serde_json::to_string(&self.delta_channels).expect("serializable")
    }

    /// The versions the checkpoint references but does not send, in channel order.
    pub fn unsent(&self) -> Vec<(String, String)> {
        let sent: HashSet<(&str, &str)> =
            self.blobs.iter().map(|b| (b.channel.as_str(), b.version.as_str())).collect();
        self.channel_versions
            .iter()
            .filter(|(c, v)| !sent.contains(&(c.as_str(), v.as_str())))
            .map(|(c, v)| (c.clone(), v.clone()))
            .collect()
    }

    /// The `checkpoint.put` event.
    pub fn event(&self, now: i64) -> Event {
        thread_event(
            EventType::CheckpointPut,
            &self.thread,
            now,
            serde_json::json!({
                "ns": self.ns,
                "checkpoint_id": self.checkpoint_id,
                "parent_checkpoint_id": self.parent_checkpoint_id,
                "step": self.step,
            }),
        )
    }
}

/// The 422 for referenced versions without a blob.
pub fn missing_blobs(missing: &[(String, String)]) -> Error {
    let list: Vec<Value> =
        missing.iter().map(|(c, v)| serde_json::json!({"channel": c, "version": v})).collect();
    let first = &missing[0];
    Error::invalid(
        "blobs",
        format!(
            "{} referenced version(s) have no blob, sent or stored (first: channel {:?} version {:?})",
            missing.len(),
            first.0,
            first.1
        ),
    )
    .with_details(serde_json::json!({ "missing": list }))
}

/// The 409 for a different checkpoint under an id when `If-None-Match: *` was sent.
pub fn exists_conflict(c: &NewCheckpoint) -> Error {
    Error::new(
        ErrorCode::Conflict,
        format!(
            "checkpoint {:?} of thread {:?} (ns {:?}) already holds other content (If-None-Match: *)",
            c.checkpoint_id, c.thread, c.ns
        ),
    )
    .with_details(serde_json::json!({"thread": c.thread, "ns": c.ns, "checkpoint_id": c.checkpoint_id}))
}

/// What a put did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PutOutcome {
    /// The thread.
    pub thread: String,
    /// The namespace.
    pub ns: String,
    /// The checkpoint's id.
    pub checkpoint_id: String,
    /// Blobs this put stored.
    pub blobs_written: u64,
    /// Blobs sent that were already stored (first write wins).
    pub blobs_shared: u64,
    /// An identical repeat: nothing was written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// The id held other content, now replaced (LangGraph upserts).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replaced: bool,
}

/// One pending write to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRow {
    /// Its channel.
    pub channel: String,
    /// Its index within the task (negative for special channels).
    pub idx: i64,
    /// The value.
    pub value: Typed,
}

/// A validated put of pending writes.
#[derive(Debug, Clone)]
pub struct NewWrites {
    /// The thread.
    pub thread: String,
    /// The namespace.
    pub ns: String,
    /// The checkpoint they belong to (which may not be stored yet).
    pub checkpoint_id: String,
    /// The task that wrote them.
    pub task_id: String,
    /// The task's path (the sort key of pending writes).
    pub task_path: String,
    /// The writes.
    pub writes: Vec<WriteRow>,
    /// The lease fencing the write.
    pub fence: Option<Fence>,
}

impl NewWrites {
    /// PostgresSaver's rule: a batch of only special channels replaces; any other inserts the
    /// writes not yet stored.
    pub fn replaces(&self) -> bool {
        self.writes.iter().all(|w| special_idx(&w.channel).is_some())
    }
}

/// What a put of writes did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WritesOutcome {
    /// Writes stored (inserted or replaced with other content).
    pub written: u64,
    /// A resent batch: nothing new.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// A stored pending write, as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PendingWrite {
    /// The task that wrote it.
    pub task_id: String,
    /// Its channel.
    pub channel: String,
    /// The value's type tag.
    #[serde(rename = "type")]
    pub type_: String,
    /// The value, base64.
    #[serde(with = "b64")]
    #[schema(value_type = String, format = Byte)]
    pub data: Vec<u8>,
    /// The task's path.
    pub task_path: String,
    /// Its index within the task.
    pub idx: i64,
}

/// A checkpoint as read: with `full` (or a single read), its bytes, blobs and writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Tuple {
    /// The thread.
    pub thread: String,
    /// The namespace.
    pub ns: String,
    /// The checkpoint's id.
    pub checkpoint_id: String,
    /// The checkpoint it follows.
    pub parent_checkpoint_id: Option<String>,
    /// The checkpoint itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Typed>,
    /// Its metadata.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// Channel → version.
    pub channel_versions: BTreeMap<String, String>,
    /// Channels rebuilt from ancestors' writes.
    pub delta_channels: Vec<String>,
    /// The blobs `channel_versions` names, in channel order (a missing one is left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blobs: Option<Vec<Blob>>,
    /// Its pending writes in LangGraph's order (task_path, task_id, idx).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_writes: Option<Vec<PendingWrite>>,
    /// Stored bytes: the checkpoint and its metadata (blobs are shared and counted per thread).
    pub bytes: i64,
    /// When it was first stored.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
}

impl Tuple {
    /// The bytes a full entry carries on the wire, roughly (a page stops past its budget).
    pub fn wire_bytes(&self) -> usize {
        let own = self.checkpoint.as_ref().map_or(0, |c| c.data.len());
        let blobs: usize = self.blobs.iter().flatten().map(|b| b.data.len()).sum();
        let writes: usize = self.pending_writes.iter().flatten().map(|w| w.data.len()).sum();
        own + blobs + writes + 256
    }
}

/// A thread's settings and counts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Thread {
    /// The thread's id.
    pub thread: String,
    /// Its metadata (set by `PATCH`).
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// Deleted after this long without a write; `null`: the server's `[checkpoints]
    /// idle_ttl_ms`.
    pub idle_ttl_ms: Option<i64>,
    /// Checkpoints kept per namespace; `null`: the server's `[checkpoints] keep_last`.
    pub keep_last: Option<i64>,
    /// Checkpoints stored.
    pub checkpoints: i64,
    /// Blobs stored.
    pub blobs: i64,
    /// Pending writes stored.
    pub writes: i64,
    /// Bytes stored: checkpoints, metadata, blobs and writes.
    pub bytes: i64,
    /// When the thread was first written.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When it was last written.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// The job of its last fenced write (the pruner skips the thread while that job runs).
    pub last_job_id: Option<Uuid>,
}

/// A change of a thread's settings; `None` leaves a field, `Some(None)` resets it.
#[derive(Debug, Clone, Default)]
pub struct ThreadPatch {
    /// The thread (created if absent).
    pub thread: String,
    /// New metadata (compact JSON text of an object).
    pub metadata: Option<String>,
    /// New idle TTL.
    pub idle_ttl_ms: Option<Option<i64>>,
    /// New keep-last.
    pub keep_last: Option<Option<i64>>,
}

/// The `thread.deleted` event.
pub fn thread_deleted(thread: &str, deleted: u64, reason: &str, now: i64) -> Event {
    thread_event(
        EventType::ThreadDeleted,
        thread,
        now,
        serde_json::json!({"deleted": deleted, "reason": reason}),
    )
}

fn thread_event(kind: EventType, thread: &str, now: i64, data: Value) -> Event {
    Event {
        cursor: 0,
        kind,
        subject: Subject::new(SubjectKind::Thread, thread),
        at: Timestamp(now),
        queue: None,
        job_id: None,
        tags: Vec::new(),
        data: Some(data),
    }
}

/// PostgreSQL's `jsonb @>`: whether `doc` contains `pattern` (objects key by key, recursively;
/// arrays element-wise in any order; scalars equal; a top-level array contains a scalar).
pub fn contains(doc: &Value, pattern: &Value) -> bool {
    match (doc, pattern) {
        (Value::Object(d), Value::Object(p)) => {
            p.iter().all(|(k, pv)| d.get(k).is_some_and(|dv| contains_nested(dv, pv)))
        }
        (Value::Array(d), Value::Array(p)) => p.iter().all(|pv| d.iter().any(|dv| contains_nested(dv, pv))),
        (Value::Array(d), p) if !p.is_object() => d.iter().any(|dv| dv == p),
        (d, p) => json_eq(d, p),
    }
}

/// Containment below the top level: an array does not contain a bare scalar there.
fn contains_nested(doc: &Value, pattern: &Value) -> bool {
    match (doc, pattern) {
        (Value::Object(_), Value::Object(_)) | (Value::Array(_), Value::Array(_)) => contains(doc, pattern),
        (d, p) => json_eq(d, p),
    }
}

/// JSON equality with numbers compared by value (`1` equals `1.0`, as in jsonb).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(i), Some(j)) => i == j,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

/// One stored checkpoint as retention sees it.
#[derive(Debug, Clone)]
pub struct Node {
    /// The namespace.
    pub ns: String,
    /// The checkpoint's id.
    pub id: String,
    /// The checkpoint it follows.
    pub parent: Option<String>,
    /// Channels rebuilt from ancestors' writes.
    pub delta_channels: Vec<String>,
}

/// The checkpoints retention keeps: per namespace the newest `keep` (by id), and for each kept
/// checkpoint's delta channels, every ancestor back to and including the nearest one that holds
/// that channel's value (does not list it as a delta): LangGraph's delta keep-set, so a pruned
/// thread rebuilds the same state. `keep` 0 keeps everything.
pub fn keep_set(nodes: &[Node], keep: usize) -> HashSet<(String, String)> {
    let mut by_ns: BTreeMap<&str, Vec<&Node>> = BTreeMap::new();
    for n in nodes {
        by_ns.entry(n.ns.as_str()).or_default().push(n);
    }
    let mut kept = HashSet::new();
    for (ns, mut list) in by_ns {
        list.sort_by(|a, b| b.id.cmp(&a.id));
        let index: HashMap<&str, &Node> = list.iter().map(|n| (n.id.as_str(), *n)).collect();
        let heads = if keep == 0 { list.len() } else { keep.min(list.len()) };
        for head in &list[..heads] {
            kept.insert((ns.to_string(), head.id.clone()));
            for channel in &head.delta_channels {
                // Walk to the nearest ancestor holding the channel's value, keeping each.
                let mut at = head.parent.as_deref();
                let mut steps = 0;
                while let Some(id) = at {
                    let Some(n) = index.get(id) else { break };
                    kept.insert((ns.to_string(), n.id.clone()));
                    if !n.delta_channels.iter().any(|c| c == channel) {
                        break;
                    }
                    at = n.parent.as_deref();
                    steps += 1;
                    assert!(
                        steps <= list.len(),
                        "a parent chain without a cycle is at most the namespace long"
                    );
                }
            }
        }
    }
    kept
}

/// The `(channel, version)` pairs stored `channel_versions` texts reference.
pub fn referenced(versions_texts: &[String]) -> Result<HashSet<(String, String)>> {
    let mut out = HashSet::new();
    for t in versions_texts {
        let m: BTreeMap<String, String> = serde_json::from_str(t)
            .map_err(|e| Error::internal(format!("stored channel_versions unreadable: {e}")))?;
        out.extend(m);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containment_is_jsonb_containment() {
        let doc = json!({"source": "loop", "step": 2, "parents": {"": "a"}, "tags": ["x", "y"], "n": null});
        assert!(contains(&doc, &json!({})));
        assert!(contains(&doc, &json!({"source": "loop"})));
        assert!(contains(&doc, &json!({"source": "loop", "step": 2.0})));
        assert!(!contains(&doc, &json!({"source": "input"})));
        assert!(!contains(&doc, &json!({"step": "2"})));
        assert!(contains(&doc, &json!({"parents": {}})));
        assert!(contains(&doc, &json!({"tags": ["y"]})));
        assert!(!contains(&doc, &json!({"tags": "y"})), "a nested array does not contain a scalar");
        assert!(contains(&doc, &json!({"n": null})));
        assert!(!contains(&doc, &json!({"missing": null})));
        assert!(contains(&json!(["a", "b"]), &json!("a")));
    }

    fn node(ns: &str, id: &str, parent: Option<&str>, deltas: &[&str]) -> Node {
        Node {
            ns: ns.into(),
            id: id.into(),
            parent: parent.map(Into::into),
            delta_channels: deltas.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn keep_set_keeps_newest_per_namespace_and_delta_ancestors() {
        let nodes = vec![
            node("", "1", None, &[]),
            node("", "2", Some("1"), &[]),
            node("", "3", Some("2"), &["items"]),
            node("", "4", Some("3"), &["items"]),
            node("child", "5", None, &[]),
            node("child", "6", Some("5"), &[]),
        ];
        let ids = |k: HashSet<(String, String)>| {
            let mut v: Vec<String> = k.into_iter().map(|(ns, id)| format!("{ns}/{id}")).collect();
            v.sort();
            v
        };
        // Head 4 rebuilds `items` from 3's and 2's writes, seeded by 2's value.
        assert_eq!(ids(keep_set(&nodes, 1)), ["/2", "/3", "/4", "child/6"]);
        assert_eq!(ids(keep_set(&nodes, 3)), ["/2", "/3", "/4", "child/5", "child/6"]);
        assert_eq!(keep_set(&nodes, 0).len(), 6);
        // A chain that reaches a pruned ancestor stops there.
        let broken = vec![node("", "9", Some("8"), &["items"])];
        assert_eq!(ids(keep_set(&broken, 1)), ["/9"]);
    }

    #[test]
    fn special_channels_take_negative_indexes() {
        assert_eq!(special_idx("__interrupt__"), Some(-3));
        assert_eq!(special_idx("messages"), None);
    }

    #[test]
    fn typed_bytes_are_base64_on_the_wire() {
        let t = Typed { type_: "msgpack".into(), data: vec![0, 1, 255] };
        let text = serde_json::to_string(&t).unwrap();
        assert_eq!(text, r#"{"type":"msgpack","data":"AAH/"}"#);
        assert_eq!(serde_json::from_str::<Typed>(&text).unwrap(), t);
        assert!(serde_json::from_str::<Typed>(r#"{"type":"x","data":"!!"}"#).is_err());
    }
}
