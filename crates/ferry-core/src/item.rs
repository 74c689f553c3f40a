//! Work items: shared task state that agents change by compare-and-set, and the pure rules
//! both backends apply to them (transitions, merge patches, which paths a write touches and
//! which changed, and the plan of a batch).
//!
//! A backend loads the rows a batch names (and, for writes behind the current version, the
//! changed paths of the versions since), calls [`plan`], and writes what it returns. Every
//! check happens in [`plan`], before anything is written: a refused op is an answer, never
//! a half-applied batch.

use crate::Timestamp;
use crate::error::{Error, ErrorCode, Result};
use crate::event::{Event, EventType, Subject, SubjectKind};
use crate::limits::Limits;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use utoipa::ToSchema;

named_enum! {
    /// Where a work item stands. `done`, `failed` and `cancelled` are terminal.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
    pub enum ItemStatus {
        /// Not started.
        Todo = "todo";
        /// Held by its assignee.
        InProgress = "in_progress";
        /// Started, waiting on something.
        Blocked = "blocked";
        /// Finished successfully.
        Done = "done";
        /// Finished unsuccessfully.
        Failed = "failed";
        /// Not wanted any more (items are never deleted).
        Cancelled = "cancelled";
    }
}

impl ItemStatus {
    /// Terminal statuses take no move but a strict `reopen`.
    pub fn is_terminal(self) -> bool {
        matches!(self, ItemStatus::Done | ItemStatus::Failed | ItemStatus::Cancelled)
    }

    /// Whether `self → to` is an allowed move without `reopen`.
    pub fn can_move_to(self, to: ItemStatus) -> bool {
        use ItemStatus::*;
        matches!(
            (self, to),
            (Todo, InProgress) | (InProgress, Blocked | Done | Failed | Todo) | (Blocked, InProgress)
        ) || (to == Cancelled && !self.is_terminal())
    }
}

/// An output of an item, keyed by `uri`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Where the output is; the artifact's key (with `meta`, at most
    /// `limits.max_artifact_bytes` as JSON).
    #[schema(min_length = 1, max_length = 4096)]
    pub uri: String,
    /// Anything the writer wants kept with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub meta: Option<Map<String, Value>>,
}

/// A work item as stored and served.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Item {
    /// Server UUIDv7 or the client's id.
    pub id: String,
    /// One line on what the work is.
    pub title: String,
    /// Longer text (empty when none).
    pub description: String,
    /// Where it stands.
    pub status: ItemStatus,
    /// The agent holding it.
    pub assignee: Option<String>,
    /// Outputs, a set keyed by `uri` (in the order first added).
    pub artifacts: Vec<Artifact>,
    /// Shared context, a JSON object changed by merge patches.
    #[schema(value_type = Object)]
    pub context: Map<String, Value>,
    /// 1 at creation, +1 per change.
    pub version: i64,
    /// When it was created.
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    /// When it last changed.
    #[schema(value_type = String)]
    pub updated_at: Timestamp,
}

/// How a write is compared with changes made since the version it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "lowercase")]
pub enum PatchMode {
    /// Conflicts only when a path the write touches changed since (the default).
    #[default]
    Merge,
    /// Any change since conflicts.
    Strict,
}

impl PatchMode {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PatchMode::Merge => "merge",
            PatchMode::Strict => "strict",
        }
    }
}

/// One kept version of an item: who changed what, and the merge patch that did it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntry {
    /// The version this change made.
    pub version: i64,
    /// When.
    #[schema(value_type = String)]
    pub at: Timestamp,
    /// The writing agent, when it named itself.
    pub agent: Option<String>,
    /// `create`, `merge` or `strict`.
    pub mode: String,
    /// Changed paths as JSON Pointers (`/title`, `/context/a/b/c`; context cut at depth 3).
    pub paths: Vec<String>,
    /// RFC 7396 merge patch from the version before (for version 1: the item's fields).
    #[schema(value_type = Object)]
    pub patch: Value,
    /// Why, when the writer said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How deep inside `context` changed paths are told apart (deeper ones count at this depth).
pub const CONTEXT_PATH_DEPTH: usize = 3;

/// A validated create.
#[derive(Debug, Clone, PartialEq)]
pub struct NewItem {
    /// The id (the server's UUIDv7 when the client sent none).
    pub id: String,
    /// Title.
    pub title: String,
    /// Description.
    pub description: String,
    /// Initial status: `todo`, `blocked` or `in_progress`.
    pub status: ItemStatus,
    /// Initial holder (`agent` when created `in_progress`).
    pub assignee: Option<String>,
    /// Initial artifacts, unique by uri.
    pub artifacts: Vec<Artifact>,
    /// Initial context.
    pub context: Map<String, Value>,
    /// The creating agent.
    pub agent: Option<String>,
    /// Digest of the create's content: a repeat with the same digest is a duplicate.
    pub origin: String,
}

/// The version a write was read at, and how it was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// The version the writer saw.
    pub version: i64,
    /// Sent as `If-Match` (conflicts answer 412) rather than in the body (409).
    pub if_match: bool,
}

/// A validated patch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ItemPatch {
    /// The item.
    pub id: String,
    /// The writing agent.
    pub agent: Option<String>,
    /// The precondition, if any.
    pub expected: Option<Expected>,
    /// The effective mode.
    pub mode: PatchMode,
    /// New title.
    pub title: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New assignee (`Some(None)` unassigns).
    pub assignee: Option<Option<String>>,
    /// Target status.
    pub status: Option<ItemStatus>,
    /// Allows leaving a terminal status (strict writes only).
    pub reopen: bool,
    /// Why, kept in the history and the status event.
    pub reason: Option<String>,
    /// RFC 7396 merge patch of `context`.
    pub context: Option<Map<String, Value>>,
    /// Artifacts to add or replace, by uri.
    pub artifacts_add: Vec<Artifact>,
    /// Uris to remove.
    pub artifacts_remove: Vec<String>,
}

/// One op of a batch (a create or patch call is a batch of one).
#[derive(Debug, Clone, PartialEq)]
pub enum ItemOp {
    /// Create, or answer a duplicate.
    Create(NewItem),
    /// Change.
    Patch(ItemPatch),
    /// Compare only: the item is at `expected_version`.
    Check {
        /// The item.
        id: String,
        /// The version it must be at.
        expected_version: i64,
    },
}

impl ItemOp {
    /// The item the op is about.
    pub fn id(&self) -> &str {
        match self {
            ItemOp::Create(n) => &n.id,
            ItemOp::Patch(p) => &p.id,
            ItemOp::Check { id, .. } => id,
        }
    }

    /// The oldest version this op compares against, when it has one.
    pub fn expected_version(&self) -> Option<i64> {
        match self {
            ItemOp::Create(_) => None,
            ItemOp::Patch(p) => p.expected.map(|e| e.version),
            ItemOp::Check { expected_version, .. } => Some(*expected_version),
        }
    }
}

/// An item as loaded for a write: the row, its create digest, and the changed paths of every
/// version after `known_after` (loaded only when a write compares against an older version).
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The item.
    pub item: Item,
    /// Digest of the create that made it.
    pub origin: String,
    /// Changed paths by version, for every version in `(known_after, item.version]`.
    pub paths: BTreeMap<i64, Vec<String>>,
    /// History is known for versions after this one.
    pub known_after: i64,
}

impl Loaded {
    /// A loaded row with no history read.
    pub fn new(item: Item, origin: String) -> Loaded {
        let known_after = item.version;
        Loaded { item, origin, paths: BTreeMap::new(), known_after }
    }

    /// Adds the kept history read for versions after `after` (ascending or not, contiguous
    /// up to the current version).
    pub fn add_history(&mut self, after: i64, entries: Vec<(i64, Vec<String>)>) {
        let first = entries.iter().map(|e| e.0).min();
        for (v, p) in entries {
            self.paths.insert(v, p);
        }
        self.known_after = match first {
            Some(v) if v <= self.known_after => (v - 1).max(after),
            _ => self.known_after,
        };
    }
}

/// What one op answered.
#[derive(Debug, Clone, PartialEq)]
pub struct OpResult {
    /// The item after the op.
    pub item: Item,
    /// A repeated create.
    pub duplicate: bool,
    /// Whether the op changed the item.
    pub changed: bool,
}

/// What to write for one item once every op passed.
#[derive(Debug, Clone)]
pub struct ItemWrite {
    /// The item's final state.
    pub item: Item,
    /// A new row (else an update of the loaded one).
    pub insert: bool,
    /// The create digest (new rows).
    pub origin: String,
    /// New history entries, oldest first.
    pub history: Vec<HistoryEntry>,
}

/// A batch's plan: the answers in op order, the rows to write, and the events.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// One per op.
    pub results: Vec<OpResult>,
    /// One per changed item.
    pub writes: Vec<ItemWrite>,
    /// One per committed change, in op order.
    pub events: Vec<Event>,
}

/// The running state of one item inside a batch.
struct Work {
    /// The item as stored (None: not stored), what a failed batch's error must show.
    stored: Option<Item>,
    loaded: Option<Loaded>,
    insert: bool,
    history: Vec<HistoryEntry>,
}

/// Applies `ops` in order to the loaded items (absent ids are not in `rows`), checking every
/// compare and transition first; any failing op fails the whole plan with `ops[i]` as field
/// when `batch`.
pub fn plan(ops: &[ItemOp], rows: Vec<Loaded>, now: i64, limits: &Limits, batch: bool) -> Result<Plan> {
    let mut work: HashMap<String, Work> = HashMap::new();
    for l in rows {
        let stored = Some(l.item.clone());
        work.insert(l.item.id.clone(), Work { stored, loaded: Some(l), insert: false, history: Vec::new() });
    }
    let mut plan = Plan::default();
    let mut order: Vec<String> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let w = work.entry(op.id().to_string()).or_insert_with(|| Work {
            stored: None,
            loaded: None,
            insert: false,
            history: Vec::new(),
        });
        let (result, entry) = match apply(w, op, now, limits) {
            Ok(out) => out,
            Err(e) if batch => return Err(as_stored(at_op(e, i), &w.stored)),
            Err(e) => return Err(e),
        };
        if let Some((entry, event)) = entry {
            w.history.push(entry);
            plan.events.push(event);
            if !order.iter().any(|id| id == op.id()) {
                order.push(op.id().to_string());
            }
        }
        plan.results.push(result);
    }
    for id in order {
        let w = work.remove(&id).expect("written items are in the work set");
        let l = w.loaded.expect("a written item exists");
        plan.writes.push(ItemWrite { item: l.item, insert: w.insert, origin: l.origin, history: w.history });
    }
    Ok(plan)
}

/// A failed batch writes nothing, so the item its error shows (`current`, `actual_version`) is
/// the stored one, not the batch's unwritten state: what a retry must start from.
fn as_stored(mut e: Error, stored: &Option<Item>) -> Error {
    if let Some(Value::Object(d)) = e.details.as_mut() {
        if d.contains_key("current") {
            d.insert("current".into(), json!(stored));
        }
        if d.contains_key("actual_version") {
            d.insert("actual_version".into(), json!(stored.as_ref().map(|i| i.version)));
        }
    }
    e
}

/// Names the failing op of a batch in the error's field.
fn at_op(mut e: Error, i: usize) -> Error {
    e.field = Some(match e.field.take() {
        Some(f) => format!("ops[{i}].{f}"),
        None => format!("ops[{i}]"),
    });
    e
}

type Applied = (OpResult, Option<(HistoryEntry, Event)>);

fn apply(w: &mut Work, op: &ItemOp, now: i64, limits: &Limits) -> Result<Applied> {
    match op {
        ItemOp::Create(new) => create(w, new, now),
        ItemOp::Check { id, expected_version } => {
            let l = w.loaded.as_ref().ok_or_else(|| item_not_found(id))?;
            let e = Expected { version: *expected_version, if_match: false };
            check_version(l, e, PatchMode::Strict, &[])?;
            Ok((OpResult { item: l.item.clone(), duplicate: false, changed: false }, None))
        }
        ItemOp::Patch(p) => {
            let l = w.loaded.as_mut().ok_or_else(|| item_not_found(&p.id))?;
            patch(l, p, now, limits)
        }
    }
}

fn create(w: &mut Work, new: &NewItem, now: i64) -> Result<Applied> {
    if let Some(l) = &w.loaded {
        if l.origin == new.origin {
            return Ok((OpResult { item: l.item.clone(), duplicate: true, changed: false }, None));
        }
        return Err(Error::new(
            ErrorCode::Conflict,
            format!("item {:?} exists already with other content", new.id),
        )
        .with_details(json!({"item_id": new.id})));
    }
    let item = Item {
        id: new.id.clone(),
        title: new.title.clone(),
        description: new.description.clone(),
        status: new.status,
        assignee: new.assignee.clone(),
        artifacts: new.artifacts.clone(),
        context: new.context.clone(),
        version: 1,
        created_at: Timestamp(now),
        updated_at: Timestamp(now),
    };
    let body = content(&item);
    let mut paths = Vec::new();
    changed_paths("", None, Some(&body), 1, &mut paths);
    let entry = HistoryEntry {
        version: 1,
        at: Timestamp(now),
        agent: new.agent.clone(),
        mode: "create".into(),
        paths,
        patch: body,
        reason: None,
    };
    let event = item_event(EventType::ItemCreated, now, &item.id)
        .with(json!({"version": 1, "status": item.status, "agent": new.agent}));
    w.loaded = Some(Loaded::new(item.clone(), new.origin.clone()));
    w.insert = true;
    Ok((OpResult { item, duplicate: false, changed: true }, Some((entry, event))))
}

fn patch(l: &mut Loaded, p: &ItemPatch, now: i64, limits: &Limits) -> Result<Applied> {
    if p.reopen && p.mode != PatchMode::Strict {
        return Err(Error::invalid("reopen", "reopen needs a strict write (mode strict, or If-Match)"));
    }
    if let Some(e) = p.expected {
        check_version(l, e, p.mode, &touched(p))?;
    }
    let old = &l.item;
    let mut new = old.clone();
    if let Some(t) = &p.title {
        new.title = t.clone();
    }
    if let Some(d) = &p.description {
        new.description = d.clone();
    }
    if let Some(a) = &p.assignee {
        new.assignee = a.clone();
    }
    if let Some(c) = &p.context {
        let mut ctx = Value::Object(std::mem::take(&mut new.context));
        merge_patch(&mut ctx, &Value::Object(c.clone()));
        let Value::Object(ctx) = ctx else { unreachable!("a merge patch of an object into an object") };
        let bytes = serde_json::to_string(&ctx).map_or(usize::MAX, |s| s.len());
        if bytes > limits.max_context_bytes {
            return Err(Error::too_large(
                "context",
                format!(
                    "context would be {bytes} bytes; the limit is {} (limits.max_context_bytes)",
                    limits.max_context_bytes
                ),
            ));
        }
        new.context = ctx;
    }
    new.artifacts.retain(|a| !p.artifacts_remove.contains(&a.uri));
    for a in &p.artifacts_add {
        match new.artifacts.iter_mut().find(|b| b.uri == a.uri) {
            Some(b) => *b = a.clone(),
            None => new.artifacts.push(a.clone()),
        }
    }
    if new.artifacts.len() > limits.max_artifacts {
        return Err(Error::invalid(
            "artifacts_add",
            format!(
                "the item would hold {} artifacts; the limit is {} (limits.max_artifacts)",
                new.artifacts.len(),
                limits.max_artifacts
            ),
        ));
    }
    if let Some(to) = p.status {
        move_status(old, &mut new, to, p)?;
    }
    if new.status == ItemStatus::InProgress && new.assignee.is_none() {
        return Err(Error::invalid(
            "assignee",
            "an in_progress item is held by its assignee: hand it to another agent, or move it to todo to release it",
        ));
    }
    let (before, after) = (content(old), content(&new));
    let mut paths = Vec::new();
    changed_paths("", Some(&before), Some(&after), 1 + CONTEXT_PATH_DEPTH, &mut paths);
    if paths.is_empty() {
        return Ok((OpResult { item: old.clone(), duplicate: false, changed: false }, None));
    }
    new.version = old.version + 1;
    new.updated_at = Timestamp(now);
    let patch = diff(&before, &after).unwrap_or_else(|| json!({}));
    let event = if new.status != old.status {
        let mut data =
            json!({"from": old.status, "to": new.status, "version": new.version, "agent": p.agent});
        if let (Some(r), Value::Object(d)) = (&p.reason, &mut data) {
            d.insert("reason".into(), json!(r));
        }
        item_event(EventType::ItemStatusChanged, now, &new.id).with(data)
    } else {
        item_event(EventType::ItemUpdated, now, &new.id)
            .with(json!({"version": new.version, "agent": p.agent, "paths": paths}))
    };
    let entry = HistoryEntry {
        version: new.version,
        at: Timestamp(now),
        agent: p.agent.clone(),
        mode: p.mode.as_str().into(),
        paths: paths.clone(),
        patch,
        reason: p.reason.clone(),
    };
    l.paths.insert(new.version, paths);
    l.item = new.clone();
    Ok((OpResult { item: new, duplicate: false, changed: true }, Some((entry, event))))
}

/// Applies a status move to `new` (whose other fields the patch already set), or refuses it.
fn move_status(old: &Item, new: &mut Item, to: ItemStatus, p: &ItemPatch) -> Result<()> {
    let from = old.status;
    let refuse = |extra: Value| {
        let mut details = json!({"item_id": old.id, "from": from, "to": to, "current": old});
        if let (Value::Object(d), Value::Object(x)) = (&mut details, extra) {
            d.extend(x);
        }
        details
    };
    if to == ItemStatus::InProgress {
        let Some(agent) = &p.agent else {
            return Err(Error::invalid("agent", "a move to in_progress needs the claiming agent"));
        };
        if let Some(holder) = old.assignee.as_ref().filter(|h| *h != agent)
            && !(from.is_terminal() && p.reopen)
        {
            return Err(Error::new(
                ErrorCode::InvalidState,
                format!("item {} is assigned to {holder:?}", old.id),
            )
            .with_details(refuse(json!({"reason": "assigned_to_other", "assignee": holder}))));
        }
    }
    if to == from {
        if to == ItemStatus::InProgress {
            new.assignee = p.agent.clone();
        }
        return Ok(());
    }
    let reopening = from.is_terminal() && p.reopen && !to.is_terminal();
    if !(from.can_move_to(to) || reopening) {
        let hint = if from.is_terminal() {
            " (a terminal status needs a strict write with reopen: true)"
        } else {
            ""
        };
        return Err(Error::new(
            ErrorCode::InvalidState,
            format!("item {} cannot move from {} to {}{hint}", old.id, from.as_str(), to.as_str()),
        )
        .with_details(refuse(json!({}))));
    }
    new.status = to;
    match to {
        ItemStatus::InProgress => new.assignee = p.agent.clone(),
        ItemStatus::Todo => new.assignee = None,
        _ => {}
    }
    Ok(())
}

/// Refuses a write whose precondition does not hold, with what a retry needs.
fn check_version(l: &Loaded, e: Expected, mode: PatchMode, touched: &[String]) -> Result<()> {
    let actual = l.item.version;
    if e.version == actual {
        return Ok(());
    }
    let known = e.version < actual && e.version >= l.known_after;
    let trimmed = [String::from("/")];
    let since: Vec<&String> = if known {
        l.paths.range(e.version + 1..).flat_map(|(_, p)| p).collect()
    } else if e.version < actual {
        // Older than the kept history: what changed is unknown, so everything may have.
        trimmed.iter().collect()
    } else {
        vec![]
    };
    let mut conflicting: Vec<String> = match mode {
        PatchMode::Merge if known => {
            since.iter().filter(|c| touched.iter().any(|t| overlaps(c, t))).map(|c| c.to_string()).collect()
        }
        _ => since.iter().map(|c| c.to_string()).collect(),
    };
    if mode == PatchMode::Merge && known && conflicting.is_empty() {
        return Ok(());
    }
    conflicting.sort();
    conflicting.dedup();
    let (code, how) = if e.if_match {
        (ErrorCode::PreconditionFailed, "If-Match")
    } else {
        (ErrorCode::VersionConflict, "expected_version")
    };
    Err(Error::new(code, format!("item {} is at version {actual}, not {} ({how})", l.item.id, e.version))
        .with_details(json!({
            "item_id": l.item.id,
            "expected_version": e.version,
            "actual_version": actual,
            "conflicting_paths": conflicting,
            "current": l.item,
        })))
}

/// The paths a merge write touches for conflict purposes (status and artifacts never conflict).
fn touched(p: &ItemPatch) -> Vec<String> {
    let mut out = Vec::new();
    for (name, set) in [
        ("title", p.title.is_some()),
        ("description", p.description.is_some()),
        ("assignee", p.assignee.is_some()),
    ] {
        if set {
            out.push(format!("/{name}"));
        }
    }
    if let Some(c) = &p.context {
        for (k, v) in c {
            patch_paths(&format!("/context/{}", escape(k)), v, CONTEXT_PATH_DEPTH - 1, &mut out);
        }
    }
    out
}

fn patch_paths(prefix: &str, v: &Value, depth_left: usize, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if depth_left > 0 && !m.is_empty() => {
            for (k, v) in m {
                patch_paths(&format!("{prefix}/{}", escape(k)), v, depth_left - 1, out);
            }
        }
        _ => out.push(prefix.to_string()),
    }
}

/// Whether two JSON Pointers name the same value or one contains the other.
pub fn overlaps(a: &str, b: &str) -> bool {
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    long.starts_with(short) && (long.len() == short.len() || long.as_bytes()[short.len()] == b'/')
}

/// Escapes one JSON Pointer segment (RFC 6901).
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The item's content as a JSON object (what history patches and paths are about).
fn content(item: &Item) -> Value {
    json!({
        "title": item.title,
        "description": item.description,
        "status": item.status,
        "assignee": item.assignee,
        "artifacts": item.artifacts,
        "context": item.context,
    })
}

/// Appends the JSON Pointers under `prefix` whose values differ, objects descended up to
/// `depth_left` levels (deeper differences are reported at that depth).
fn changed_paths(
    prefix: &str,
    old: Option<&Value>,
    new: Option<&Value>,
    depth_left: usize,
    out: &mut Vec<String>,
) {
    if old == new {
        return;
    }
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) if depth_left > 0 => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                changed_paths(&format!("{prefix}/{}", escape(k)), a.get(k), b.get(k), depth_left - 1, out);
            }
        }
        (None, Some(Value::Object(b))) if prefix.is_empty() => {
            for (k, v) in b {
                changed_paths(&format!("/{}", escape(k)), None, Some(v), 0, out);
            }
        }
        // An added object: its leaves are what changed, so writers adding beside them merge.
        (None, Some(Value::Object(b))) if depth_left > 0 && !b.is_empty() => {
            for (k, v) in b {
                changed_paths(&format!("{prefix}/{}", escape(k)), None, Some(v), depth_left - 1, out);
            }
        }
        _ => out.push(if prefix.is_empty() { "/".into() } else { prefix.to_string() }),
    }
}

/// Applies an RFC 7396 merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The RFC 7396 merge patch that turns `old` into `new`; `None` when they are equal.
pub fn diff(old: &Value, new: &Value) -> Option<Value> {
    if old == new {
        return None;
    }
    match (old, new) {
        (Value::Object(a), Value::Object(b)) => {
            let mut p = Map::new();
            for k in a.keys().filter(|k| !b.contains_key(*k)) {
                p.insert(k.clone(), Value::Null);
            }
            for (k, vb) in b {
                match a.get(k) {
                    None => {
                        p.insert(k.clone(), vb.clone());
                    }
                    Some(va) => {
                        if let Some(d) = diff(va, vb) {
                            p.insert(k.clone(), d);
                        }
                    }
                }
            }
            Some(Value::Object(p))
        }
        _ => Some(new.clone()),
    }
}

/// A not-yet-numbered event about item `id`.
fn item_event(kind: EventType, at: i64, id: &str) -> Event {
    Event {
        cursor: 0,
        kind,
        subject: Subject::new(SubjectKind::Item, id),
        at: Timestamp(at),
        queue: None,
        job_id: None,
        tags: Vec::new(),
        data: None,
    }
}

/// The item does not exist.
pub fn item_not_found(id: &str) -> Error {
    Error::new(ErrorCode::NotFound, format!("item {id:?} not found"))
}

/// The notifier key a long-poll on item `id` waits on (woken by every commit that changes it).
pub fn wake_key(id: &str) -> String {
    format!("item:{id}")
}

/// The text of a JSON value with object keys sorted (so equal content has one digest).
pub fn canonical(v: &Value) -> String {
    fn sorted(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let b: BTreeMap<&String, Value> = m.iter().map(|(k, v)| (k, sorted(v))).collect();
                Value::Object(b.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(v).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(status: ItemStatus, assignee: Option<&str>) -> Loaded {
        Loaded::new(
            Item {
                id: "i".into(),
                title: "t".into(),
                description: String::new(),
                status,
                assignee: assignee.map(Into::into),
                artifacts: vec![],
                context: Map::new(),
                version: 1,
                created_at: Timestamp(0),
                updated_at: Timestamp(0),
            },
            "o".into(),
        )
    }

    fn run(l: Loaded, p: ItemPatch) -> Result<Plan> {
        plan(&[ItemOp::Patch(ItemPatch { id: "i".into(), ..p })], vec![l], 5, &Limits::default(), false)
    }

    #[test]
    fn transitions_follow_the_table() {
        use ItemStatus::*;
        for &from in ItemStatus::ALL {
            for &to in ItemStatus::ALL {
                let allowed = from.can_move_to(to);
                let expect = match (from, to) {
                    (Todo, InProgress)
                    | (InProgress, Blocked | Done | Failed | Todo)
                    | (Blocked, InProgress) => true,
                    (f, Cancelled) => !f.is_terminal(),
                    _ => false,
                };
                assert_eq!(allowed, expect, "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn merge_conflicts_only_on_overlapping_paths() {
        let mut l = item(ItemStatus::Todo, None);
        l.item.version = 3;
        l.add_history(1, vec![(2, vec!["/context/a/b".into()]), (3, vec!["/title".into()])]);
        let ctx = |v: Value| v.as_object().cloned();
        let e = Some(Expected { version: 1, if_match: false });
        assert!(
            run(l.clone(), ItemPatch { expected: e, context: ctx(json!({"c": 1})), ..Default::default() })
                .is_ok()
        );
        let err = run(
            l.clone(),
            ItemPatch { expected: e, context: ctx(json!({"a": {"b": {"x": 1}}})), ..Default::default() },
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::VersionConflict);
        assert_eq!(err.details.unwrap()["conflicting_paths"], json!(["/context/a/b"]));
        let err = run(
            l.clone(),
            ItemPatch {
                expected: e,
                mode: PatchMode::Strict,
                description: Some("d".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert_eq!(err.details.unwrap()["conflicting_paths"], json!(["/context/a/b", "/title"]));
        // Older than the kept history: judged strict.
        let old = Some(Expected { version: 0, if_match: true });
        let err = run(l, ItemPatch { expected: old, context: ctx(json!({"c": 1})), ..Default::default() })
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::PreconditionFailed);
    }

    #[test]
    fn claims_and_no_op_writes() {
        let p =
            ItemPatch { agent: Some("a".into()), status: Some(ItemStatus::InProgress), ..Default::default() };
        let out = run(item(ItemStatus::Todo, None), p.clone()).unwrap();
        assert_eq!(out.results[0].item.assignee.as_deref(), Some("a"));
        assert_eq!(out.results[0].item.version, 2);
        let again = run(item(ItemStatus::InProgress, Some("a")), p.clone()).unwrap();
        assert!(!again.results[0].changed && again.writes.is_empty() && again.events.is_empty());
        let err = run(item(ItemStatus::InProgress, Some("b")), p).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidState);
        assert_eq!(err.details.as_ref().unwrap()["reason"], "assigned_to_other");
        let back = ItemPatch { status: Some(ItemStatus::Todo), ..Default::default() };
        assert_eq!(
            run(item(ItemStatus::InProgress, Some("b")), back).unwrap().results[0].item.assignee,
            None
        );
    }

    #[test]
    fn merge_patch_and_diff_round_trip() {
        let old = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        let new = json!({"a": {"c": [3]}, "e": {"f": true}});
        let p = diff(&old, &new).unwrap();
        let mut t = old.clone();
        merge_patch(&mut t, &p);
        assert_eq!(t, new);
        let mut paths = Vec::new();
        changed_paths("/context", Some(&old), Some(&new), 3, &mut paths);
        assert_eq!(paths, ["/context/a/b", "/context/a/c", "/context/d", "/context/e/f"]);
        assert!(overlaps("/context/a", "/context/a/b") && !overlaps("/context/a", "/context/ab"));
    }
}
