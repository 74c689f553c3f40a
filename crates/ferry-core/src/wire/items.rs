//! Bodies of the work-item endpoints, and their checks: what a create, a patch or a batch may
//! hold, turned into the validated ops of [`crate::item`].

use crate::error::{Error, Result};
use crate::item::{
    Artifact, Expected, HistoryEntry, Item, ItemOp, ItemPatch, ItemStatus, NewItem, PatchMode, canonical,
};
use crate::limits::Limits;
use crate::validate;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

/// `POST /v1/items` body (also a batch's `{"op": "create", ...}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateItemBody {
    /// The client's id (1–`limits.max_item_id_len` of `[A-Za-z0-9._:-]`); default a UUIDv7.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::validate::names::ItemId>)]
    pub id: Option<String>,
    /// One line, 1–`limits.max_title_bytes` bytes (UTF-8).
    #[schema(min_length = 1, max_length = 512, pattern = r"\S")]
    pub title: String,
    /// Up to `limits.max_description_bytes` bytes (UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 65536)]
    pub description: Option<String>,
    /// `todo` (default), `blocked` or `in_progress` (which needs `agent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::validate::names::InitialStatus>)]
    pub status: Option<ItemStatus>,
    /// The holder (an agent name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::validate::names::AgentName>)]
    pub assignee: Option<String>,
    /// Outputs, keyed by `uri` (at most `limits.max_artifacts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 1000)]
    pub artifacts: Option<Vec<Artifact>>,
    /// A JSON object, at most `limits.max_context_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub context: Option<Map<String, Value>>,
    /// The creating agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::validate::names::AgentName>)]
    pub agent: Option<String>,
}

/// `PATCH /v1/items/{id}` body (also a batch's `{"op": "patch", "id", ...}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchItemBody {
    /// The item: only in a batch op (the path names it otherwise; both must agree).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::validate::names::ItemId>)]
    pub id: Option<String>,
    /// The writing agent (required for a move to `in_progress`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::validate::names::AgentName>)]
    pub agent: Option<String>,
    /// The version the writer read: a conflict is 409 `version_conflict`.
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1)]
    pub expected_version: Option<i64>,
    /// `merge` (default; with `If-Match` alone: `strict`) or `strict`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<PatchMode>,
    /// New title (1–`limits.max_title_bytes` bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 512, pattern = r"\S")]
    pub title: Option<String>,
    /// New description (up to `limits.max_description_bytes` bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 65536)]
    pub description: Option<String>,
    /// New holder; `null` unassigns.
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::validate::names::AgentName>)]
    pub assignee: Option<Option<String>>,
    /// Target status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ItemStatus>,
    /// Leave a terminal status (strict writes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reopen: Option<bool>,
    /// Why (kept in the history and the status event), up to `limits.max_title_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 512)]
    pub reason: Option<String>,
    /// An RFC 7396 merge patch of `context`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub context: Option<Map<String, Value>>,
    /// Artifacts to add, or replace by `uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 1000)]
    pub artifacts_add: Option<Vec<Artifact>>,
    /// Uris of artifacts to remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 1000, inline, value_type = Option<Vec<ArtifactUri>>)]
    pub artifacts_remove: Option<Vec<String>>,
}

/// An artifact's uri, as `artifacts_remove` names it.
#[derive(ToSchema)]
#[schema(min_length = 1, max_length = 4096)]
pub struct ArtifactUri(pub String);

/// A batch's compare-only op.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckOp {
    /// The item.
    #[schema(value_type = crate::validate::names::ItemId)]
    pub id: String,
    /// The version it must be at.
    #[serde(deserialize_with = "crate::validate::whole::int")]
    #[schema(minimum = 1)]
    pub expected_version: i64,
}

/// One op of `POST /v1/items/batch`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum BatchOp {
    /// Create an item (or answer its duplicate).
    Create(CreateItemBody),
    /// Patch an item (`id` required).
    Patch(PatchItemBody),
    /// Compare only.
    Check(CheckOp),
}

/// `POST /v1/items/batch` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchItemsBody {
    /// Applied in order in one transaction; at most `limits.max_batch`.
    #[schema(min_items = 1, max_items = 10000)]
    pub ops: Vec<BatchOp>,
    /// Must be `true` (all or nothing); `false` is reserved.
    #[serde(default = "yes")]
    pub atomic: bool,
}

fn yes() -> bool {
    true
}

/// Distinguishes an absent field (`None`) from `null` (`Some(None)`).
fn present<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// `GET /v1/items/{id}` query: a long-poll for a newer version.
#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GetItemQuery {
    /// Answer once the version is greater than this.
    pub wait_version_gt: Option<i64>,
    /// Longest wait, at most `limits.max_wait_ms` (default 0: answer at once).
    #[param(minimum = 0, maximum = 30_000)]
    pub wait_ms: Option<i64>,
}

/// `GET /v1/items` query.
#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ItemsQuery {
    /// Only items in this status.
    pub status: Option<ItemStatus>,
    /// Only items held by this agent.
    #[param(value_type = Option<crate::validate::names::AgentName>)]
    pub assignee: Option<String>,
    /// Page size, at most `limits.max_page_size` (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the page before.
    pub cursor: Option<String>,
}

/// `GET /v1/items/{id}/history` query.
#[derive(Debug, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Page size, at most `limits.max_page_size` (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the page before.
    pub cursor: Option<String>,
}

/// An item, as created or read.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ItemResponse {
    /// The item.
    pub item: Item,
    /// Present (true) when a create repeated an earlier one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// `PATCH /v1/items/{id}` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PatchItemResponse {
    /// The item after the write.
    pub item: Item,
    /// False when the write changed nothing (version kept, no event, no history entry).
    pub changed: bool,
}

/// `GET /v1/items` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ItemsPage {
    /// Items by id.
    pub items: Vec<Item>,
    /// Cursor of the next page; null on the last.
    pub next_cursor: Option<String>,
}

/// `GET /v1/items/{id}/history` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryPage {
    /// Kept versions, newest first.
    pub history: Vec<HistoryEntry>,
    /// Cursor of the next (older) page; null on the last.
    pub next_cursor: Option<String>,
}

/// `POST /v1/items/batch` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchItemsResponse {
    /// The item after each op, in op order.
    pub items: Vec<Item>,
}

/// Checks an item id: 1..=limit characters of `[A-Za-z0-9._:-]`.
pub fn item_id(id: &str, limits: &Limits, field: &str) -> Result<()> {
    validate::plain_name(id, limits.max_item_id_len, field, "item id")?;
    if id == "." || id == ".." {
        // A URL path cannot address these.
        return Err(Error::invalid(field, "an item id may not be . or .."));
    }
    Ok(())
}

/// Checks an agent name: 1..=limit characters of `[A-Za-z0-9._:-]`.
pub fn agent_name(name: &str, limits: &Limits, field: &str) -> Result<()> {
    validate::plain_name(name, limits.max_agent_name_len, field, "agent name")
}

fn text(s: &str, max: usize, field: &str, limit: &str) -> Result<()> {
    if s.len() > max {
        return Err(Error::too_large(
            field,
            format!("{field} is {} bytes; the limit is {max} (limits.{limit})", s.len()),
        ));
    }
    Ok(())
}

fn title(s: &str, limits: &Limits, field: &str) -> Result<()> {
    if s.trim().is_empty() {
        return Err(Error::invalid(field, "title must not be empty"));
    }
    text(s, limits.max_title_bytes, field, "max_title_bytes")
}

fn context(c: &Map<String, Value>, limits: &Limits, field: &str) -> Result<()> {
    let bytes = serde_json::to_string(c).map_or(usize::MAX, |s| s.len());
    if bytes > limits.max_context_bytes {
        return Err(Error::too_large(
            field,
            format!(
                "context is {bytes} bytes; the limit is {} (limits.max_context_bytes)",
                limits.max_context_bytes
            ),
        ));
    }
    Ok(())
}

fn artifacts(list: &[Artifact], limits: &Limits, field: &str) -> Result<()> {
    if list.len() > limits.max_artifacts {
        return Err(Error::invalid(
            field,
            format!("{} artifacts; the limit is {} (limits.max_artifacts)", list.len(), limits.max_artifacts),
        ));
    }
    for (i, a) in list.iter().enumerate() {
        if a.uri.is_empty() {
            return Err(Error::invalid(format!("{field}[{i}].uri"), "uri must not be empty"));
        }
        let bytes = serde_json::to_string(a).map_or(usize::MAX, |s| s.len());
        if bytes > limits.max_artifact_bytes {
            return Err(Error::too_large(
                format!("{field}[{i}]"),
                format!(
                    "artifact is {bytes} bytes; the limit is {} (limits.max_artifact_bytes)",
                    limits.max_artifact_bytes
                ),
            ));
        }
    }
    Ok(())
}

/// A set by uri: a later artifact replaces an earlier one with the same uri, in place.
fn dedup(list: Vec<Artifact>) -> Vec<Artifact> {
    let mut out: Vec<Artifact> = Vec::with_capacity(list.len());
    for a in list {
        match out.iter_mut().find(|b| b.uri == a.uri) {
            Some(b) => *b = a,
            None => out.push(a),
        }
    }
    out
}

impl CreateItemBody {
    /// Checks a create; `id` is the client's or a fresh UUIDv7.
    pub fn validate(self, limits: &Limits) -> Result<NewItem> {
        let id = match self.id {
            Some(id) => {
                item_id(&id, limits, "id")?;
                id
            }
            None => uuid::Uuid::now_v7().to_string(),
        };
        title(&self.title, limits, "title")?;
        let description = self.description.unwrap_or_default();
        text(&description, limits.max_description_bytes, "description", "max_description_bytes")?;
        if let Some(a) = &self.agent {
            agent_name(a, limits, "agent")?;
        }
        if let Some(a) = &self.assignee {
            agent_name(a, limits, "assignee")?;
        }
        let status = self.status.unwrap_or(ItemStatus::Todo);
        if !matches!(status, ItemStatus::Todo | ItemStatus::Blocked | ItemStatus::InProgress) {
            return Err(Error::invalid("status", "an item starts as todo, blocked or in_progress"));
        }
        let mut assignee = self.assignee;
        if status == ItemStatus::InProgress {
            let agent = self
                .agent
                .as_ref()
                .ok_or_else(|| Error::invalid("agent", "an item created in_progress needs its agent"))?;
            if assignee.as_ref().is_some_and(|a| a != agent) {
                return Err(Error::invalid(
                    "assignee",
                    "an item created in_progress is assigned to its agent",
                ));
            }
            assignee = Some(agent.clone());
        }
        let list = self.artifacts.unwrap_or_default();
        artifacts(&list, limits, "artifacts")?;
        let ctx = self.context.unwrap_or_default();
        context(&ctx, limits, "context")?;
        let list = dedup(list);
        let origin = canonical(&serde_json::json!({
            "title": self.title, "description": description, "status": status, "assignee": assignee,
            "artifacts": list, "context": ctx, "agent": self.agent,
        }));
        Ok(NewItem {
            id,
            title: self.title,
            description,
            status,
            assignee,
            artifacts: list,
            context: ctx,
            agent: self.agent,
            origin: digest(&origin),
        })
    }
}

/// A short stable digest of a create's canonical text (stored: never change the function).
fn digest(text: &str) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(text.as_bytes());
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

impl PatchItemBody {
    /// Checks a patch of item `id` (the path's, or the batch op's), with the version an
    /// `If-Match` header named.
    pub fn validate(self, id: String, if_match: Option<i64>, limits: &Limits) -> Result<ItemPatch> {
        if self.id.as_ref().is_some_and(|b| *b != id) {
            return Err(Error::invalid("id", "the body's id differs from the path's"));
        }
        item_id(&id, limits, "id")?;
        if let Some(a) = &self.agent {
            agent_name(a, limits, "agent")?;
        }
        let expected = match (self.expected_version, if_match) {
            (Some(b), Some(h)) if b != h => {
                return Err(Error::invalid(
                    "expected_version",
                    format!("expected_version {b} differs from If-Match {h}"),
                ));
            }
            (_, Some(h)) => Some(Expected { version: h, if_match: true }),
            (Some(b), None) => Some(Expected { version: b, if_match: false }),
            (None, None) => None,
        };
        if let Some(e) = expected
            && e.version < 1
        {
            return Err(Error::invalid("expected_version", "versions start at 1"));
        }
        let mode = match (self.mode, expected) {
            (Some(m), _) => m,
            (None, Some(Expected { if_match: true, .. })) => PatchMode::Strict,
            (None, _) => PatchMode::Merge,
        };
        if let Some(t) = &self.title {
            title(t, limits, "title")?;
        }
        if let Some(d) = &self.description {
            text(d, limits.max_description_bytes, "description", "max_description_bytes")?;
        }
        if let Some(Some(a)) = &self.assignee {
            agent_name(a, limits, "assignee")?;
        }
        if let Some(r) = &self.reason {
            text(r, limits.max_title_bytes, "reason", "max_title_bytes")?;
        }
        if let Some(c) = &self.context {
            context(c, limits, "context")?;
        }
        let add = self.artifacts_add.unwrap_or_default();
        artifacts(&add, limits, "artifacts_add")?;
        let remove = self.artifacts_remove.unwrap_or_default();
        if remove.len() > limits.max_artifacts {
            return Err(Error::invalid(
                "artifacts_remove",
                format!(
                    "{} uris; the limit is {} (limits.max_artifacts)",
                    remove.len(),
                    limits.max_artifacts
                ),
            ));
        }
        if let Some(i) = remove.iter().position(|u| u.is_empty() || u.len() > limits.max_artifact_bytes) {
            return Err(Error::invalid(format!("artifacts_remove[{i}]"), "not an artifact uri"));
        }
        Ok(ItemPatch {
            id,
            agent: self.agent,
            expected,
            mode,
            title: self.title,
            description: self.description,
            assignee: self.assignee,
            status: self.status,
            reopen: self.reopen.unwrap_or(false),
            reason: self.reason,
            context: self.context,
            artifacts_add: dedup(add),
            artifacts_remove: remove,
        })
    }
}

impl BatchItemsBody {
    /// Checks a batch; with `require_precondition`, a patch without `expected_version` is 428.
    pub fn validate(self, limits: &Limits, require_precondition: bool) -> Result<Vec<ItemOp>> {
        if self.ops.is_empty() {
            return Err(Error::invalid("ops", "a batch needs at least one op"));
        }
        if self.ops.len() > limits.max_batch {
            return Err(Error::too_large(
                "ops",
                format!("{} ops; the limit is {} (limits.max_batch)", self.ops.len(), limits.max_batch),
            ));
        }
        if !self.atomic {
            return Err(Error::invalid("atomic", "only atomic batches are supported (atomic: true)"));
        }
        let at = |i: usize| {
            move |mut e: Error| {
                e.field = Some(match e.field.take() {
                    Some(f) => format!("ops[{i}].{f}"),
                    None => format!("ops[{i}]"),
                });
                e
            }
        };
        let mut out = Vec::with_capacity(self.ops.len());
        for (i, op) in self.ops.into_iter().enumerate() {
            out.push(match op {
                BatchOp::Create(c) => ItemOp::Create(c.validate(limits).map_err(at(i))?),
                BatchOp::Patch(p) => {
                    let id =
                        p.id.clone()
                            .ok_or_else(|| Error::invalid("id", "a patch op needs the item's id"))
                            .map_err(at(i))?;
                    if require_precondition && p.expected_version.is_none() {
                        let mut e = precondition_required();
                        e.field = Some(format!("ops[{i}].expected_version"));
                        return Err(e);
                    }
                    ItemOp::Patch(p.validate(id, None, limits).map_err(at(i))?)
                }
                BatchOp::Check(c) => {
                    item_id(&c.id, limits, "id").map_err(at(i))?;
                    if c.expected_version < 1 {
                        return Err(at(i)(Error::invalid("expected_version", "versions start at 1")));
                    }
                    ItemOp::Check { id: c.id, expected_version: c.expected_version }
                }
            });
        }
        Ok(out)
    }
}

/// The 428 a write without precondition gets when `[items] require_precondition` is on.
pub fn precondition_required() -> Error {
    Error::new(
        crate::ErrorCode::PreconditionRequired,
        "this server requires a precondition on item writes: send If-Match: \"<version>\" or expected_version",
    )
}

/// Parses an `If-Match` header naming one version (`"3"`, `W/"3"` or `3`).
pub fn parse_if_match(value: &str) -> Result<i64> {
    let v = value.trim();
    let v = v.strip_prefix("W/").unwrap_or(v);
    let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
    v.parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
        Error::invalid("If-Match", format!("If-Match must name one item version, like \"3\" (got {value:?})"))
    })
}
