//! Bodies of the memory endpoints and their checks. Every violation of one request is
//! collected and answered together (one 422 listing each `{field, limit, actual}`), so an agent
//! fixes its episode in one round trip.

use crate::Timestamp;
use crate::error::{Error, ErrorCode, Result};
use crate::limits::Limits;
use crate::memory::{
    AddOutcome, Components, Episode, EpisodeArtifact, EpisodeContent, EpisodePatch, NewEpisode, Outcome,
    OutcomeStatus, Step, Weights, content_hash,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// A memory namespace as the OpenAPI document names it (queue-name characters).
#[derive(ToSchema)]
#[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$", min_length = 1, max_length = 128)]
pub struct MemoryNamespace(pub String);

/// A name field of an episode (agent, domain, task type): 1..=`limits.max_name_len` of
/// `[A-Za-z0-9._:-]`.
#[derive(ToSchema)]
#[schema(pattern = "^[A-Za-z0-9._:-]{1,128}$", min_length = 1, max_length = 128)]
pub struct EpisodeName(pub String);

/// The largest integer every JSON reader holds exactly (2^53 − 1).
const MAX_SAFE_INT: i64 = 9_007_199_254_740_991;

/// A number a float32 holds (an embedding's component).
#[derive(ToSchema)]
#[schema(minimum = -3.4028234663852886e38, maximum = 3.4028234663852886e38)]
pub struct Float32(pub f64);

/// One broken rule of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Violation {
    /// The field, e.g. `steps[3].action`.
    pub field: String,
    /// The rule: a number (a limit) or a description.
    #[schema(value_type = Object)]
    pub limit: Value,
    /// What was sent: a number (a size or count) or the value.
    #[schema(value_type = Object)]
    pub actual: Value,
}

/// Collects every violation of a request, then answers them in one 422.
#[derive(Debug, Default)]
pub struct Violations(Vec<(Violation, String)>);

impl Violations {
    /// Notes a broken rule.
    pub fn add(&mut self, field: impl Into<String>, limit: Value, actual: Value, why: impl Into<String>) {
        self.0.push((Violation { field: field.into(), limit, actual }, why.into()));
    }

    /// A byte-length limit.
    pub fn bytes(&mut self, field: &str, text: &str, max: usize) {
        if text.len() > max {
            self.add(
                field,
                json!(max),
                json!(text.len()),
                format!("{field} is {} bytes; the limit is {max}", text.len()),
            );
        }
    }

    /// A count limit.
    pub fn count(&mut self, field: &str, n: usize, max: usize) {
        if n > max {
            self.add(field, json!(max), json!(n), format!("{field} has {n} entries; the limit is {max}"));
        }
    }

    /// A name: 1..=`max` of `[A-Za-z0-9._:-]`.
    pub fn name(&mut self, field: &str, name: &str, max: usize) {
        if let Err(e) = crate::validate::plain_name(name, max, field, field) {
            let actual = if name.len() > max || name.is_empty() { json!(name.len()) } else { json!(name) };
            let limit = if name.len() > max { json!(max) } else { json!("1.. of A-Z a-z 0-9 . _ : -") };
            self.add(field, limit, actual, e.message);
        }
    }

    /// A number within `[lo, hi]`.
    pub fn range(&mut self, field: &str, x: f64, lo: f64, hi: f64) {
        if !(lo..=hi).contains(&x) {
            self.add(
                field,
                json!(format!("[{lo}, {hi}]")),
                json!(x),
                format!("{field} must be in [{lo}, {hi}]"),
            );
        }
    }

    /// Whether nothing was broken.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds another request part's violations under `prefix` (`episodes[2]`).
    pub fn extend_within(&mut self, prefix: &str, other: Violations) {
        for (mut v, why) in other.0 {
            v.field = format!("{prefix}.{}", v.field);
            self.0.push((v, why));
        }
    }

    /// Adds another check's violations with their field's leading `from` replaced by `to`
    /// (`tags[2]` checked as a filter becomes `filters.tags_any[2]`).
    pub fn extend_renamed(&mut self, from: &str, to: &str, other: Violations) {
        for (mut v, why) in other.0 {
            if let Some(rest) = v.field.strip_prefix(from) {
                v.field = format!("{to}{rest}");
            }
            self.0.push((v, why));
        }
    }

    /// `Ok` when empty, else the one 422: `field` the first, `details.violations` all.
    pub fn finish(self) -> Result<()> {
        let Some((first, why)) = self.0.first() else { return Ok(()) };
        let message = if self.0.len() == 1 {
            why.clone()
        } else {
            format!("{} violations; the first: {why}", self.0.len())
        };
        let list: Vec<&Violation> = self.0.iter().map(|(v, _)| v).collect();
        Err(Error::invalid(first.field.clone(), message).with_details(json!({ "violations": list })))
    }
}

/// `POST /v1/memory/episodes` body (and each of a batch's).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EpisodeBody {
    /// Keeps this id (an import); the server assigns a UUIDv7 otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// The namespace: 1..=`limits.max_queue_name_len` of `[A-Za-z0-9._:-]`.
    #[schema(value_type = MemoryNamespace)]
    pub namespace: String,
    /// The agent that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<EpisodeName>)]
    pub agent: Option<String>,
    /// The area of work.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<EpisodeName>)]
    pub domain: Option<String>,
    /// The kind of task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<EpisodeName>)]
    pub task_type: Option<String>,
    /// What the task was: at most `limits.max_episode_text_bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 10000)]
    pub description: Option<String>,
    /// What was done: at most `limits.max_episode_steps`.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "super::object::vec")]
    #[schema(max_items = 1000)]
    pub steps: Vec<StepBody>,
    /// How it ended.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "super::object::opt")]
    pub outcome: Option<OutcomeBody>,
    /// In [0, 1]; default 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1)]
    pub importance: Option<f64>,
    /// At most `limits.max_episode_tags`, each 1..=`limits.max_tag_len` bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<crate::validate::names::Tag>, max_items = 100)]
    pub tags: Vec<String>,
    /// At most `limits.max_episode_artifacts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty", deserialize_with = "super::object::vec")]
    #[schema(max_items = 100)]
    pub artifacts: Vec<ArtifactBody>,
    /// A JSON object, at most `limits.max_episode_metadata_bytes` serialized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// 1..=`limits.max_embedding_dims` finite numbers (stored as float32); the namespace's
    /// first fixes its dimension.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Float32>>, min_items = 1, max_items = 4096)]
    pub embedding: Option<Vec<f64>>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    /// RFC 3339; recency counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub ended_at: Option<String>,
    /// The job it ran as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
    /// A resend with this key (per namespace) and the same body is a duplicate; with another
    /// body, 409 `conflict`. 1..=`limits.max_unique_key_len`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_length = 1, max_length = 256)]
    pub idempotency_key: Option<String>,
}

/// A step as sent.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepBody {
    /// The tool (at most `limits.max_name_len` bytes).
    #[serde(default)]
    #[schema(max_length = 128)]
    pub tool: String,
    /// What was done (at most `limits.max_step_text_bytes` bytes).
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub action: String,
    /// How it ended (at most `limits.max_name_len` bytes).
    #[serde(default)]
    #[schema(max_length = 128)]
    pub status: String,
    /// Milliseconds, ≥ 0.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::validate::whole::opt"
    )]
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    pub latency_ms: Option<i64>,
    /// ≥ 0.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::validate::whole::opt"
    )]
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_i64)]
    pub tokens: Option<i64>,
}

/// An outcome as sent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutcomeBody {
    /// `success`, `partial`, `failure` or `abandoned`.
    pub status: OutcomeStatus,
    /// What happened (at most `limits.max_episode_text_bytes`).
    #[serde(default)]
    #[schema(max_length = 10000)]
    pub summary: String,
    /// In [-1, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -1, maximum = 1)]
    pub reward: Option<f64>,
}

/// An artifact as sent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ArtifactBody {
    /// 1..=`limits.max_name_len` bytes.
    #[schema(min_length = 1, max_length = 128)]
    pub kind: String,
    /// 1..=`limits.max_url_len` bytes.
    #[schema(min_length = 1, max_length = 2048)]
    pub uri: String,
    /// 64 lower-case hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^[0-9a-f]{64}$")]
    pub sha256: Option<String>,
}

fn no_control(v: &mut Violations, field: &str, text: &str) {
    if text.chars().any(char::is_control) {
        v.add(
            field,
            json!("no control characters"),
            json!(text),
            format!("{field} must not contain control characters"),
        );
    }
}

fn time(v: &mut Violations, field: &str, text: &Option<String>) -> Option<Timestamp> {
    let t = text.as_ref()?;
    match crate::time::parse_rfc3339_ms(t, field) {
        Ok(ms) => Some(Timestamp(ms)),
        Err(e) => {
            v.add(field, json!("RFC 3339"), json!(t), e.message);
            None
        }
    }
}

/// Checks tags: at most `limits.max_episode_tags`, each 1..=`limits.max_tag_len` bytes without
/// control characters; returns them deduplicated in order.
pub fn check_tags(v: &mut Violations, tags: &[String], limits: &Limits) -> Vec<String> {
    v.count("tags", tags.len(), limits.max_episode_tags);
    let mut out: Vec<String> = Vec::with_capacity(tags.len());
    for (i, t) in tags.iter().enumerate() {
        let field = format!("tags[{i}]");
        if t.is_empty() || t.len() > limits.max_tag_len {
            v.add(
                &field,
                json!(limits.max_tag_len),
                json!(t.len()),
                format!("{field} must be 1..={} bytes", limits.max_tag_len),
            );
        }
        no_control(v, &field, t);
        if !out.contains(t) {
            out.push(t.clone());
        }
    }
    out
}

/// Checks an embedding: 1..=`limits.max_embedding_dims` finite numbers that fit a float32.
pub fn check_embedding(v: &mut Violations, field: &str, e: &[f64], limits: &Limits) -> Vec<f32> {
    if e.is_empty() {
        v.add(field, json!(1), json!(0), format!("{field} must have at least one dimension"));
    }
    v.count(field, e.len(), limits.max_embedding_dims);
    if let Some(i) = e.iter().position(|x| !x.is_finite() || x.abs() > f64::from(f32::MAX)) {
        let f = format!("{field}[{i}]");
        v.add(&f, json!("a finite float32"), json!(e[i].to_string()), format!("{f} is not a finite float32"));
    }
    e.iter().map(|x| *x as f32).collect()
}

impl EpisodeBody {
    /// Checks every field against `limits`, collecting the violations; `id` is the server's
    /// UUIDv7 unless the body keeps one.
    pub fn check(&self, id: Uuid, limits: &Limits, v: &mut Violations) -> NewEpisode {
        v.name("namespace", &self.namespace, limits.max_queue_name_len);
        for (field, value) in
            [("agent", &self.agent), ("domain", &self.domain), ("task_type", &self.task_type)]
        {
            if let Some(n) = value {
                v.name(field, n, limits.max_name_len);
            }
        }
        let description = self.description.clone().unwrap_or_default();
        v.bytes("description", &description, limits.max_episode_text_bytes);
        v.count("steps", self.steps.len(), limits.max_episode_steps);
        for (i, s) in self.steps.iter().enumerate() {
            let p = format!("steps[{i}]");
            v.bytes(&format!("{p}.tool"), &s.tool, limits.max_name_len);
            v.bytes(&format!("{p}.action"), &s.action, limits.max_step_text_bytes);
            v.bytes(&format!("{p}.status"), &s.status, limits.max_name_len);
            for (f, n) in [("latency_ms", s.latency_ms), ("tokens", s.tokens)] {
                if let Some(n) = n.filter(|n| !(0..=MAX_SAFE_INT).contains(n)) {
                    let field = format!("{p}.{f}");
                    v.add(
                        &field,
                        json!(MAX_SAFE_INT),
                        json!(n),
                        format!("{field} must be 0..={MAX_SAFE_INT}"),
                    );
                }
            }
        }
        if let Some(o) = &self.outcome {
            v.bytes("outcome.summary", &o.summary, limits.max_episode_text_bytes);
            if let Some(r) = o.reward {
                v.range("outcome.reward", r, -1.0, 1.0);
            }
        }
        let importance = self.importance.unwrap_or(0.5);
        v.range("importance", importance, 0.0, 1.0);
        let tags = check_tags(v, &self.tags, limits);
        v.count("artifacts", self.artifacts.len(), limits.max_episode_artifacts);
        for (i, a) in self.artifacts.iter().enumerate() {
            let p = format!("artifacts[{i}]");
            if a.kind.is_empty() || a.kind.len() > limits.max_name_len {
                v.add(
                    format!("{p}.kind"),
                    json!(limits.max_name_len),
                    json!(a.kind.len()),
                    format!("{p}.kind must be 1..={} bytes", limits.max_name_len),
                );
            }
            if a.uri.is_empty() || a.uri.len() > limits.max_url_len {
                v.add(
                    format!("{p}.uri"),
                    json!(limits.max_url_len),
                    json!(a.uri.len()),
                    format!("{p}.uri must be 1..={} bytes", limits.max_url_len),
                );
            }
            if let Some(h) = a.sha256.as_ref().filter(|h| {
                h.len() != 64 || !h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            }) {
                v.add(
                    format!("{p}.sha256"),
                    json!("64 lower-case hex digits"),
                    json!(h),
                    format!("{p}.sha256 is not 64 lower-case hex digits"),
                );
            }
        }
        let metadata = self.metadata.clone().unwrap_or_default();
        let meta_bytes = serde_json::to_string(&metadata).map_or(0, |s| s.len());
        if meta_bytes > limits.max_episode_metadata_bytes {
            v.add(
                "metadata",
                json!(limits.max_episode_metadata_bytes),
                json!(meta_bytes),
                format!(
                    "metadata is {meta_bytes} bytes serialized; the limit is {}",
                    limits.max_episode_metadata_bytes
                ),
            );
        }
        let embedding = self.embedding.as_ref().map(|e| check_embedding(v, "embedding", e, limits));
        let started_at = time(v, "started_at", &self.started_at);
        let ended_at = time(v, "ended_at", &self.ended_at);
        if let Some(k) = &self.idempotency_key
            && (k.is_empty() || k.len() > limits.max_unique_key_len)
        {
            v.add(
                "idempotency_key",
                json!(limits.max_unique_key_len),
                json!(k.len()),
                format!("idempotency_key must be 1..={} bytes", limits.max_unique_key_len),
            );
        }
        let content = EpisodeContent {
            agent: self.agent.clone(),
            domain: self.domain.clone(),
            task_type: self.task_type.clone(),
            description,
            steps: self
                .steps
                .iter()
                .map(|s| Step {
                    tool: s.tool.clone(),
                    action: s.action.clone(),
                    status: s.status.clone(),
                    latency_ms: s.latency_ms,
                    tokens: s.tokens,
                })
                .collect(),
            outcome: self.outcome.as_ref().map(|o| Outcome {
                status: o.status,
                summary: o.summary.clone(),
                reward: o.reward,
            }),
            artifacts: self
                .artifacts
                .iter()
                .map(|a| EpisodeArtifact {
                    kind: a.kind.clone(),
                    uri: a.uri.clone(),
                    sha256: a.sha256.clone(),
                })
                .collect(),
            metadata,
            started_at,
            ended_at,
            job_id: self.job_id,
        };
        // The hash covers what was sent minus the id, so a resend without the id matches.
        let mut sent = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(o) = sent.as_object_mut() {
            o.remove("id");
        }
        let bytes = serde_json::to_string(&sent).map_or(0, |s| s.len()) as i64;
        NewEpisode {
            id: self.id.unwrap_or(id),
            namespace: self.namespace.clone(),
            content,
            importance,
            tags,
            embedding,
            idempotency_key: self.idempotency_key.clone(),
            body_hash: content_hash(&sent),
            bytes,
        }
    }

    /// Checks one episode: a 422 listing every violation.
    pub fn validate(&self, id: Uuid, limits: &Limits) -> Result<NewEpisode> {
        let mut v = Violations::default();
        let e = self.check(id, limits, &mut v);
        v.finish().map(|()| e)
    }
}

/// `POST /v1/memory/episodes/batch` body: all or nothing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EpisodeBatchBody {
    /// 1..=`limits.max_memory_batch` episodes.
    #[serde(deserialize_with = "super::object::vec")]
    #[schema(min_items = 1, max_items = 100)]
    pub episodes: Vec<EpisodeBody>,
}

impl EpisodeBatchBody {
    /// Checks every episode (ids from `ids`, one per episode), listing every violation of all.
    pub fn validate(&self, mut ids: impl FnMut() -> Uuid, limits: &Limits) -> Result<Vec<NewEpisode>> {
        let mut v = Violations::default();
        if self.episodes.is_empty() {
            v.add("episodes", json!(1), json!(0), "episodes must not be empty");
        }
        v.count("episodes", self.episodes.len(), limits.max_memory_batch);
        let mut out = Vec::with_capacity(self.episodes.len());
        for (i, e) in self.episodes.iter().enumerate() {
            let mut inner = Violations::default();
            out.push(e.check(ids(), limits, &mut inner));
            let size = out.last().map_or(0, |e| e.bytes as usize);
            if size > limits.max_episode_bytes {
                return Err(Error::too_large(
                    format!("episodes[{i}]"),
                    format!("episode {i} is {size} bytes; the limit is {}", limits.max_episode_bytes),
                ));
            }
            v.extend_within(&format!("episodes[{i}]"), inner);
        }
        v.finish().map(|()| out)
    }
}

/// `POST /v1/memory/episodes/batch` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EpisodeIds {
    /// Each episode's id, in the order sent (a duplicate's is the stored one).
    pub ids: Vec<Uuid>,
}

/// `PATCH /v1/memory/episodes/{id}` body: the only changeable fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EpisodePatchBody {
    /// Replaces the tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::validate::names::Tag>>, max_items = 100)]
    pub tags: Option<Vec<String>>,
    /// Replaces the importance, in [0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1)]
    pub importance: Option<f64>,
}

impl EpisodePatchBody {
    /// The validated change.
    pub fn validate(&self, id: Uuid, if_version: Option<i64>, limits: &Limits) -> Result<EpisodePatch> {
        let mut v = Violations::default();
        let tags = self.tags.as_ref().map(|t| check_tags(&mut v, t, limits));
        if let Some(i) = self.importance {
            v.range("importance", i, 0.0, 1.0);
        }
        v.finish()?;
        Ok(EpisodePatch { id, tags, importance: self.importance, if_version, namespaces: None })
    }
}

/// `GET /v1/memory/episodes` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EpisodeListQuery {
    /// Only this namespace.
    #[param(value_type = Option<MemoryNamespace>)]
    pub namespace: Option<String>,
    /// Only this agent's.
    #[param(value_type = Option<EpisodeName>)]
    pub agent: Option<String>,
    /// Only this domain.
    #[param(value_type = Option<EpisodeName>)]
    pub domain: Option<String>,
    /// Only this task type.
    #[param(value_type = Option<EpisodeName>)]
    pub task_type: Option<String>,
    /// Only episodes carrying this tag.
    #[param(value_type = Option<crate::validate::names::Tag>)]
    pub tag: Option<String>,
    /// Only this outcome.
    pub outcome: Option<OutcomeStatus>,
    /// Only episodes that ended (else were stored) at or after this RFC 3339 time.
    #[param(format = DateTime)]
    pub since: Option<String>,
    /// Only episodes that ended (else were stored) before this RFC 3339 time.
    #[param(format = DateTime)]
    pub until: Option<String>,
    /// Page size, 1..=`limits.max_page_size` (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page.
    #[param(pattern = "^[0-9]{1,18}$")]
    pub cursor: Option<String>,
}

/// A page of episodes, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EpisodePage {
    /// The episodes.
    pub episodes: Vec<Episode>,
    /// Where the next page starts; `null` at the end.
    pub next_cursor: Option<String>,
}

/// One value or a list of them (a filter that takes either).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// One.
    One(T),
    /// Several.
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// As a list.
    pub fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(x) => vec![x.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A search's filters: they always apply.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchFilters {
    /// Only these agents'.
    #[serde(default)]
    #[schema(value_type = Vec<EpisodeName>, max_items = 100)]
    pub agents: Vec<String>,
    /// Only this domain.
    #[serde(default)]
    #[schema(value_type = Option<EpisodeName>)]
    pub domain: Option<String>,
    /// Only this task type.
    #[serde(default)]
    #[schema(value_type = Option<EpisodeName>)]
    pub task_type: Option<String>,
    /// Episodes carrying every one of these tags.
    #[serde(default)]
    #[schema(value_type = Vec<crate::validate::names::Tag>, max_items = 100)]
    pub tags_all: Vec<String>,
    /// Episodes carrying at least one of these tags.
    #[serde(default)]
    #[schema(value_type = Vec<crate::validate::names::Tag>, max_items = 100)]
    pub tags_any: Vec<String>,
    /// One outcome or a list of them.
    #[serde(default)]
    #[schema(value_type = Option<Vec<OutcomeStatus>>)]
    pub outcome: Option<OneOrMany<OutcomeStatus>>,
    /// Ended (else stored) at or after this RFC 3339 time.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub since: Option<String>,
    /// Ended (else stored) before this RFC 3339 time.
    #[serde(default)]
    #[schema(format = DateTime)]
    pub until: Option<String>,
}

/// Hierarchical search's starting point.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchContext {
    /// The domain to search first.
    #[serde(default)]
    #[schema(value_type = Option<EpisodeName>)]
    pub domain: Option<String>,
    /// The task type within it.
    #[serde(default)]
    #[schema(value_type = Option<EpisodeName>)]
    pub task_type: Option<String>,
}

/// MMR settings.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiversityBody {
    /// Relevance against novelty in [0, 1] (default 0.7; 1 is plain score order).
    #[serde(default)]
    #[schema(minimum = 0, maximum = 1)]
    pub lambda: Option<f64>,
}

named_enum! {
    /// How a search gathers candidates.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
    pub enum SearchMode {
        /// Hierarchical with a `context`, else flat.
        Auto = "auto";
        /// Task type, then domain, then namespace.
        Hierarchical = "hierarchical";
        /// Filters and any query term over the namespace.
        Flat = "flat";
    }
}

named_enum! {
    /// A search feature the server runs unless configured off or disabled by the request.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
    pub enum Feature {
        /// Task type → domain → namespace widening.
        Hierarchical = "hierarchical";
        /// MMR re-ranking.
        Diversity = "diversity";
        /// The recency term.
        Recency = "recency";
        /// The vector term.
        Vectors = "vectors";
    }
}

/// `POST /v1/memory/search` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchBody {
    /// The namespace searched.
    #[schema(value_type = MemoryNamespace)]
    pub namespace: String,
    /// Query text (at most `limits.max_episode_text_bytes`).
    #[serde(default)]
    #[schema(max_length = 10000)]
    pub text: Option<String>,
    /// Query vector, of the namespace's dimension.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Float32>>, min_items = 1, max_items = 4096)]
    pub embedding: Option<Vec<f64>>,
    /// Filters.
    #[serde(default, deserialize_with = "super::object::opt")]
    pub filters: Option<SearchFilters>,
    /// Where hierarchical search starts.
    #[serde(default, deserialize_with = "super::object::opt")]
    pub context: Option<SearchContext>,
    /// Results wanted, 1..=`limits.max_search_k` (default 10).
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = 1, maximum = 100)]
    pub k: Option<i64>,
    /// The score's weights (each 0..=1000).
    #[serde(default, deserialize_with = "super::object::opt")]
    pub weights: Option<Weights>,
    /// Recency's half-life (default 518,400,000: 6 days), 1..=`limits.max_delay_ms`.
    #[serde(default, deserialize_with = "crate::validate::whole::opt")]
    #[schema(minimum = 1, maximum = 31_622_400_000_i64)]
    pub half_life_ms: Option<i64>,
    /// MMR settings.
    #[serde(default, deserialize_with = "super::object::opt")]
    pub diversity: Option<DiversityBody>,
    /// `auto` (default), `hierarchical` or `flat`.
    #[serde(default)]
    pub mode: Option<SearchMode>,
    /// Features this request turns off.
    #[serde(default)]
    #[schema(max_items = 4)]
    pub disable: Vec<Feature>,
}

/// A scored episode.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchHit {
    /// The episode's id.
    pub id: Uuid,
    /// The weighted sum of the components.
    pub score: f64,
    /// Each term, unweighted.
    pub components: Components,
    /// The episode.
    pub episode: Episode,
}

/// MMR's figures.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
pub struct DiversityOut {
    /// λ used (`null`: diversity off).
    pub lambda: Option<f64>,
    /// Mean pairwise dissimilarity of the results (1 − cosine, else 1 − Jaccard).
    pub score: f64,
}

/// What ran.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Features {
    /// Hierarchical widening.
    pub hierarchical: bool,
    /// MMR.
    pub diversity: bool,
    /// The recency term.
    pub recency: bool,
    /// The vector term.
    pub vectors: bool,
}

/// `POST /v1/memory/search` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchResult {
    /// Best first.
    pub results: Vec<SearchHit>,
    /// `hierarchical` or `flat`.
    pub served_by: String,
    /// Where candidates came from: `task_type`, `domain` or `namespace`.
    pub level: String,
    /// Why the search widened or fell back (`null`: it did not).
    pub fallback_reason: Option<String>,
    /// Candidates scored.
    pub candidates_scored: usize,
    /// Whether a bound (`[memory] candidates` or `max_scanned`) cut the candidates.
    pub truncated: bool,
    /// MMR's figures.
    pub diversity: DiversityOut,
    /// What ran.
    pub features: Features,
    /// Milliseconds the server spent.
    pub took_ms: f64,
}

/// `GET /v1/memory/stats` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MemoryStatsQuery {
    /// One namespace (default: all the caller may read).
    #[param(value_type = Option<MemoryNamespace>)]
    pub namespace: Option<String>,
}

/// A rebuild's progress.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct RebuildProgress {
    /// Whether one is running.
    pub running: bool,
    /// Episodes rewritten so far by the running (or last) rebuild.
    pub done: u64,
    /// Episodes it covers.
    pub total: u64,
    /// Its namespace (`null`: all).
    pub namespace: Option<String>,
    /// Why the last one stopped early, if it did.
    pub error: Option<String>,
}

/// `GET /v1/memory/stats` answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct MemoryStats {
    /// Episodes stored.
    pub episodes: u64,
    /// Their size as sent, in bytes.
    pub bytes: u64,
    /// The namespace's embedding dimension (`null`: none yet, or several namespaces).
    pub embedding_dims: Option<u32>,
    /// The oldest episode's `created_at`.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub oldest_at: Option<Timestamp>,
    /// The newest episode's `created_at`.
    #[schema(value_type = Option<String>, format = DateTime)]
    pub newest_at: Option<Timestamp>,
    /// The rebuild's progress.
    pub rebuild: RebuildProgress,
}

/// `POST /v1/memory/reconcile` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReconcileBody {
    /// Only this namespace.
    #[serde(default)]
    #[schema(value_type = Option<MemoryNamespace>)]
    pub namespace: Option<String>,
    /// Rewrite the mismatched derived rows.
    #[serde(default)]
    pub repair: bool,
    /// Resume where an answer's `next_cursor` left off.
    #[serde(default)]
    #[schema(pattern = "^[0-9]{1,18}$")]
    pub cursor: Option<String>,
}

/// Derived rows that differ from what their episodes say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Mismatches {
    /// Full-text rows (missing, extra, or other tokens).
    pub fts: u64,
    /// Episodes whose tag rows differ from their tags.
    pub tags: u64,
    /// Vector rows (missing, extra, or other values).
    pub embeddings: u64,
}

impl Mismatches {
    /// All of them.
    pub fn total(&self) -> u64 {
        self.fts + self.tags + self.embeddings
    }

    /// Adds another batch's.
    pub fn add(&mut self, o: Mismatches) {
        self.fts += o.fts;
        self.tags += o.tags;
        self.embeddings += o.embeddings;
    }
}

/// `POST /v1/memory/reconcile` answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct ReconcileReport {
    /// Episodes checked.
    pub checked: u64,
    /// Mismatched derived rows, by kind.
    pub mismatches: Mismatches,
    /// Derived rows rewritten.
    pub repaired: u64,
    /// Where to resume (`cursor`) when the request's time budget ran out first
    /// (`[memory] reconcile_budget_ms`); null once the last episode was checked.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// `POST /v1/memory/rebuild` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RebuildBody {
    /// Only this namespace.
    #[serde(default)]
    #[schema(value_type = Option<MemoryNamespace>)]
    pub namespace: Option<String>,
}

/// An accepted episode (201), or a resend (200 with `duplicate`).
pub type EpisodeAdded = AddOutcome;

/// Checks a search's weights: finite, 0..=1000.
pub fn check_weights(v: &mut Violations, w: &Weights) {
    for (f, x) in [
        ("weights.text", w.text),
        ("weights.vector", w.vector),
        ("weights.recency", w.recency),
        ("weights.importance", w.importance),
        ("weights.outcome", w.outcome),
    ] {
        v.range(f, x, 0.0, 1000.0);
    }
}

/// The not-found (or, for a restricted caller, forbidden) answer for an episode id.
pub fn episode_not_found(id: Uuid) -> Error {
    Error::new(ErrorCode::NotFound, format!("episode {id} not found"))
}
