//! Episodic-memory endpoints: add (one or a batch), show, list, change tags and importance,
//! delete, search, stats, and the admin passes (reconcile, rebuild). Searches take a permit
//! sized to the read connections and wait for one only briefly, so a flood of searches gets 503
//! instead of starving every other reader.

use crate::AppState;
use crate::auth::Access;
use crate::error::{ApiPath, ApiQuery, ApiResult, EpisodeBody as SingleBody, JsonBody, OptionalJson};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::memory::{self, AddOutcome, Episode, Ranking, Weights};
use ferry_core::wire::*;
use ferry_core::{Error, ErrorCode, ResourceKind};
use ferry_store::memory_rows::{SearchPlan, search};
use ferry_store::{DerivedPass, EpisodeFilter, EpisodeList, PassMode};
use serde::{Deserialize, Serialize};

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use uuid::Uuid;

/// `[memory]`: search bounds and backpressure, feature switches, retention.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryConfig {
    /// Most candidates a search ranks (newest first).
    pub candidates: usize,
    /// Most filter-passing episodes a flat text search examines (newest first).
    pub max_scanned: usize,
    /// Most searches waiting for a permit; beyond it 503 `server_saturated`.
    pub search_queue: usize,
    /// Longest a search waits for a permit before 503 `server_saturated`.
    pub search_wait_ms: u64,
    /// Task type → domain → namespace widening.
    pub hierarchical: bool,
    /// MMR re-ranking.
    pub diversity: bool,
    /// The recency term.
    pub recency: bool,
    /// The vector term.
    pub vectors: bool,
    /// Episodes stored longer ago than this are deleted by a maintenance pass; 0 keeps all.
    pub retention_ms: i64,
    /// How often the retention pass runs.
    pub retention_interval_ms: u64,
    /// Longest one reconcile request works before answering with a `next_cursor` to resume
    /// from, so a large store never holds a request past a client's deadline.
    pub reconcile_budget_ms: u64,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            candidates: 2_000,
            max_scanned: 50_000,
            search_queue: 256,
            search_wait_ms: 1_000,
            hierarchical: true,
            diversity: true,
            recency: true,
            vectors: true,
            retention_ms: 0,
            retention_interval_ms: 60_000,
            reconcile_budget_ms: 2_000,
        }
    }
}

/// The node's memory state: settings, the search gate, and the rebuild's progress.
pub struct Memory {
    /// `[memory]`.
    pub config: MemoryConfig,
    /// Episodes per transaction of reconcile, repair and rebuild (`[maintenance] batch`).
    pub batch: usize,
    permits: Arc<Semaphore>,
    waiting: AtomicUsize,
    rebuild: std::sync::Mutex<RebuildProgress>,
}

impl Memory {
    /// The state for `config`, with `readers` concurrent searches.
    pub fn new(config: MemoryConfig, readers: usize, batch: usize) -> Memory {
        Memory {
            config,
            batch: batch.max(1),
            permits: Arc::new(Semaphore::new(readers.max(1))),
            waiting: AtomicUsize::new(0),
            rebuild: std::sync::Mutex::new(RebuildProgress::default()),
        }
    }

    /// A search permit, waiting at most `search_wait_ms` behind at most `search_queue` others.
    async fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Error> {
        if let Ok(p) = self.permits.clone().try_acquire_owned() {
            return Ok(p);
        }
        let saturated = || {
            Error::new(ErrorCode::ServerSaturated, "too many memory searches are waiting; retry shortly")
                .with_details(serde_json::json!({ "retry_after_ms": 100 }))
        };
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.config.search_queue {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(saturated());
        }
        let wait = Duration::from_millis(self.config.search_wait_ms);
        let got = tokio::time::timeout(wait, self.permits.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        match got {
            Ok(Ok(p)) => Ok(p),
            _ => Err(saturated()),
        }
    }

    fn progress(&self) -> RebuildProgress {
        self.rebuild.lock().expect("rebuild progress").clone()
    }
}

/// Description of an episode id in a path.
const EPISODE_ID: &str = "The episode's id (a UUID)";

fn namespaces(access: &Access) -> Option<Vec<String>> {
    access.allowed(ResourceKind::Namespace).map(<[String]>::to_vec)
}

/// The episode `id` if the caller may see it: absent is 404, but for a namespace-restricted
/// caller absent and foreign are the same 403.
async fn visible(st: &AppState, access: &Access, id: Uuid) -> Result<Episode, Error> {
    let found = st.store.get_episode(id).await?;
    let restricted = access.allowed(ResourceKind::Namespace).is_some();
    match found {
        Some(e) if access.allows_in(ResourceKind::Namespace, &e.namespace) => Ok(e),
        Some(_) => Err(crate::auth::forbidden()),
        None if restricted => Err(crate::auth::forbidden()),
        None => Err(episode_not_found(id)),
    }
}

fn with_etag(status: StatusCode, version: i64, body: impl Serialize) -> Response {
    let mut r = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("\"{version}\"")) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

fn added(out: AddOutcome) -> Response {
    let status = if out.duplicate { StatusCode::OK } else { StatusCode::CREATED };
    (status, Json(out)).into_response()
}

/// Store an episode (201), or answer a resend of its `idempotency_key` with the same body (200
/// `duplicate: true`); the key with another body is 409 `conflict` (`details.id`).
#[utoipa::path(post, path = "/v1/memory/episodes", tag = "memory", operation_id = "add_episode",
    request_body = EpisodeBody,
    responses((status = 201, description = "stored", body = AddOutcome),
    (status = 200, description = "a resend: the stored episode's id, `duplicate: true`", body = AddOutcome),
    (status = 409, description = "conflict: the key holds another episode (`details.id`)", body = ErrorBody),
    (status = 413, description = "payload_too_large: the body is over `limits.max_episode_bytes`", body = ErrorBody),
    (status = 422, description = "validation_failed: every violation in `details.violations` (`field` the first)", body = ErrorBody)))]
pub async fn add(
    State(st): State<AppState>,
    access: Access,
    SingleBody(body): SingleBody<EpisodeBody>,
) -> ApiResult<Response> {
    access.check_in(ResourceKind::Namespace, &body.namespace)?;
    let e = body.validate(Uuid::now_v7(), &st.limits)?;
    let _permit = st.protection.writes(1)?;
    let mut out = st.store.add_episodes(vec![e]).await?;
    Ok(added(out.remove(0)))
}

/// Store 1..=`limits.max_memory_batch` episodes, all or none.
#[utoipa::path(post, path = "/v1/memory/episodes/batch", tag = "memory", operation_id = "add_episodes",
    request_body = EpisodeBatchBody,
    responses((status = 201, description = "stored (resends keep their stored ids)", body = EpisodeIds),
    (status = 409, description = "conflict: a key holds another episode; nothing stored", body = ErrorBody),
    (status = 413, description = "payload_too_large: an episode over `limits.max_episode_bytes`", body = ErrorBody),
    (status = 422, description = "validation_failed: every violation of every episode (`episodes[i].field`)", body = ErrorBody)))]
pub async fn add_batch(
    State(st): State<AppState>,
    access: Access,
    JsonBody(body): JsonBody<EpisodeBatchBody>,
) -> ApiResult<Response> {
    for e in &body.episodes {
        access.check_in(ResourceKind::Namespace, &e.namespace)?;
    }
    let eps = body.validate(Uuid::now_v7, &st.limits)?;
    let _permit = st.protection.writes(eps.len())?;
    let out = st.store.add_episodes(eps).await?;
    Ok((StatusCode::CREATED, Json(EpisodeIds { ids: out.into_iter().map(|o| o.id).collect() }))
        .into_response())
}

/// One episode; `ETag` is its version.
#[utoipa::path(get, path = "/v1/memory/episodes/{id}", tag = "memory", operation_id = "get_episode",
    params(("id" = Uuid, Path, description = EPISODE_ID)),
    responses((status = 200, description = "the episode", body = Episode),
    (status = 404, description = "not_found", body = ErrorBody)))]
pub async fn get(
    State(st): State<AppState>,
    access: Access,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<Response> {
    let e = visible(&st, &access, id).await?;
    Ok(with_etag(StatusCode::OK, e.version, &e))
}

fn time_param(text: &Option<String>, field: &str) -> Result<Option<i64>, Error> {
    text.as_ref().map(|t| ferry_core::time::parse_rfc3339_ms(t, field)).transpose()
}

/// Episodes newest first, filtered.
#[utoipa::path(get, path = "/v1/memory/episodes", tag = "memory", operation_id = "list_episodes",
    params(EpisodeListQuery),
    responses((status = 200, description = "a page, newest first", body = EpisodePage),
    (status = 422, description = "validation_failed: a bad filter, limit or cursor", body = ErrorBody)))]
pub async fn list(
    State(st): State<AppState>,
    access: Access,
    ApiQuery(q): ApiQuery<EpisodeListQuery>,
) -> ApiResult<Json<EpisodePage>> {
    let mut v = Violations::default();
    if let Some(ns) = &q.namespace {
        v.name("namespace", ns, st.limits.max_queue_name_len);
    }
    for (field, n) in [("agent", &q.agent), ("domain", &q.domain), ("task_type", &q.task_type)] {
        if let Some(n) = n {
            v.name(field, n, st.limits.max_name_len);
        }
    }
    if let Some(t) = &q.tag {
        check_tags(&mut v, std::slice::from_ref(t), &st.limits);
    }
    v.finish()?;
    if let Some(ns) = &q.namespace {
        access.check_in(ResourceKind::Namespace, ns)?;
    }
    let limit = super::page_size(&st, q.limit)?;
    let before = q
        .cursor
        .as_ref()
        .map(|c| {
            c.parse::<i64>().map_err(|_| Error::invalid("cursor", "not a cursor returned by this server"))
        })
        .transpose()?;
    let filter = EpisodeFilter {
        namespace: q.namespace.clone(),
        namespaces: namespaces(&access),
        agents: q.agent.iter().cloned().collect(),
        domain: q.domain.clone(),
        task_type: q.task_type.clone(),
        tags_all: q.tag.iter().cloned().collect(),
        tags_any: Vec::new(),
        outcomes: q.outcome.iter().copied().collect(),
        since: time_param(&q.since, "since")?,
        until: time_param(&q.until, "until")?,
    };
    let (episodes, next) = st.store.list_episodes(EpisodeList { filter, before, limit }).await?;
    Ok(Json(EpisodePage { episodes, next_cursor: next.map(|n| n.to_string()) }))
}

/// Change an episode's tags or importance (nothing else changes); `If-Match: "N"` writes only
/// at version N (else 412 `precondition_failed`, `details.actual_version`).
#[utoipa::path(patch, path = "/v1/memory/episodes/{id}", tag = "memory", operation_id = "patch_episode",
    params(("id" = Uuid, Path, description = EPISODE_ID),
        ("If-Match" = Option<String>, Header, description = "`\"<version>\"`: write only at this version")),
    request_body = EpisodePatchBody,
    responses((status = 200, description = "changed; `ETag` is the new version", body = Episode),
    (status = 404, description = "not_found", body = ErrorBody),
    (status = 412, description = "precondition_failed (`details.actual_version`)", body = ErrorBody),
    (status = 422, description = "validation_failed", body = ErrorBody)))]
pub async fn patch(
    State(st): State<AppState>,
    access: Access,
    ApiPath(id): ApiPath<Uuid>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<EpisodePatchBody>,
) -> ApiResult<Response> {
    let version = super::items::if_match(&headers)?;
    let p = body.validate(id, version, &st.limits)?;
    if access.allowed(ResourceKind::Namespace).is_some() {
        visible(&st, &access, id).await?;
    }
    let _permit = st.protection.writes(1)?;
    let e = st.store.patch_episode(p).await.inspect_err(|e| {
        if e.code == ErrorCode::PreconditionFailed {
            st.metrics.conflict("precondition_failed");
        }
    })?;
    Ok(with_etag(StatusCode::OK, e.version, &e))
}

/// Delete an episode with its derived rows.
#[utoipa::path(delete, path = "/v1/memory/episodes/{id}", tag = "memory", operation_id = "delete_episode",
    params(("id" = Uuid, Path, description = EPISODE_ID)),
    responses((status = 204, description = "deleted"),
    (status = 404, description = "not_found", body = ErrorBody)))]
pub async fn delete(
    State(st): State<AppState>,
    access: Access,
    ApiPath(id): ApiPath<Uuid>,
) -> ApiResult<StatusCode> {
    if access.allowed(ResourceKind::Namespace).is_some() {
        visible(&st, &access, id).await?;
    }
    let _permit = st.protection.writes(1)?;
    if st.store.delete_episode(id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(episode_not_found(id).into())
    }
}

/// Search a namespace: candidates by filters (and, flat, any query term; hierarchical, by
/// context level), ranked by BM25, cosine, recency, importance and outcome, then MMR.
#[utoipa::path(post, path = "/v1/memory/search", tag = "memory", operation_id = "search_memory",
    request_body = SearchBody,
    responses((status = 200, description = "results best first, with how they were found", body = SearchResult),
    (status = 422, description = "validation_failed: every violation in `details.violations`", body = ErrorBody),
    (status = 503, description = "server_saturated: too many searches waiting", body = ErrorBody)))]
pub async fn search_memory(
    State(st): State<AppState>,
    access: Access,
    JsonBody(body): JsonBody<SearchBody>,
) -> ApiResult<Json<SearchResult>> {
    let started = Instant::now();
    access.check_in(ResourceKind::Namespace, &body.namespace)?;
    let mem = st.memory.clone();
    let (plan, features) = plan(&body, &st, &mem.config)?;
    if let Some(q) = &body.embedding {
        // A query vector must have the namespace's dimension, as its episodes' do.
        let dims = st.store.memory_stats(Some(body.namespace.clone()), None).await?.embedding_dims;
        if let Some(d) = dims.filter(|d| *d as usize != q.len()) {
            let mut v = Violations::default();
            v.add(
                "embedding",
                serde_json::json!(d),
                serde_json::json!(q.len()),
                format!(
                    "namespace {} holds {d}-dimensional embeddings; this query has {}",
                    body.namespace,
                    q.len()
                ),
            );
            v.finish()?;
        }
    }
    let _permit = mem.permit().await?;
    let out = search(st.store.as_ref(), plan).await?;
    st.metrics.memory_search(out.served_by, out.level, started.elapsed().as_secs_f64());
    let lambda =
        features.diversity.then(|| body.diversity.and_then(|d| d.lambda).unwrap_or(memory::DEFAULT_LAMBDA));
    Ok(Json(SearchResult {
        results: out
            .hits
            .into_iter()
            .map(|(r, e)| SearchHit { id: e.id, score: r.score, components: r.components, episode: e })
            .collect(),
        served_by: out.served_by.into(),
        level: out.level.into(),
        fallback_reason: out.fallback_reason,
        candidates_scored: out.candidates_scored,
        truncated: out.truncated,
        diversity: DiversityOut { lambda, score: out.diversity },
        features,
        took_ms: started.elapsed().as_secs_f64() * 1_000.0,
    }))
}

/// Checks a search body and resolves it against the switches.
fn plan(b: &SearchBody, st: &AppState, cfg: &MemoryConfig) -> Result<(SearchPlan, Features), Error> {
    let limits = &st.limits;
    let mut v = Violations::default();
    v.name("namespace", &b.namespace, limits.max_queue_name_len);
    let text = b.text.clone().unwrap_or_default();
    v.bytes("text", &text, limits.max_episode_text_bytes);
    let k = b.k.unwrap_or(10);
    if k < 1 || k > limits.max_search_k as i64 {
        v.add(
            "k",
            serde_json::json!(limits.max_search_k),
            serde_json::json!(k),
            format!("k must be 1..={}", limits.max_search_k),
        );
    }
    let embedding = b.embedding.as_ref().map(|e| check_embedding(&mut v, "embedding", e, limits));
    let weights = b.weights.unwrap_or_default();
    check_weights(&mut v, &weights);
    let half_life_ms = b.half_life_ms.unwrap_or(memory::DEFAULT_HALF_LIFE_MS);
    if half_life_ms < 1 || half_life_ms > limits.max_delay_ms {
        v.add(
            "half_life_ms",
            serde_json::json!(limits.max_delay_ms),
            serde_json::json!(half_life_ms),
            format!("half_life_ms must be 1..={}", limits.max_delay_ms),
        );
    }
    let lambda = b.diversity.and_then(|d| d.lambda).unwrap_or(memory::DEFAULT_LAMBDA);
    v.range("diversity.lambda", lambda, 0.0, 1.0);
    let f = b.filters.clone().unwrap_or_default();
    v.count("filters.agents", f.agents.len(), limits.max_episode_tags);
    for (field, tags) in [("filters.tags_all", &f.tags_all), ("filters.tags_any", &f.tags_any)] {
        let mut inner = Violations::default();
        check_tags(&mut inner, tags, limits);
        v.extend_renamed("tags", field, inner);
    }
    for (i, a) in f.agents.iter().enumerate() {
        v.name(&format!("filters.agents[{i}]"), a, limits.max_name_len);
    }
    for (field, n) in [("filters.domain", &f.domain), ("filters.task_type", &f.task_type)] {
        if let Some(n) = n {
            v.name(field, n, limits.max_name_len);
        }
    }
    let ctx = b.context.clone();
    if let Some(c) = &ctx {
        for (field, n) in [("context.domain", &c.domain), ("context.task_type", &c.task_type)] {
            if let Some(n) = n {
                v.name(field, n, limits.max_name_len);
            }
        }
    }
    let mut times = [None, None];
    for (slot, (field, t)) in times.iter_mut().zip([("filters.since", &f.since), ("filters.until", &f.until)])
    {
        if let Some(t) = t {
            match ferry_core::time::parse_rfc3339_ms(t, field) {
                Ok(ms) => *slot = Some(ms),
                Err(e) => v.add(field, serde_json::json!("RFC 3339"), serde_json::json!(t), e.message),
            }
        }
    }
    v.count("disable", b.disable.len(), Feature::ALL.len());
    v.finish()?;
    let off = |f: Feature| b.disable.contains(&f);
    let features = Features {
        hierarchical: cfg.hierarchical && !off(Feature::Hierarchical),
        diversity: cfg.diversity && !off(Feature::Diversity),
        recency: cfg.recency && !off(Feature::Recency),
        vectors: cfg.vectors && !off(Feature::Vectors),
    };
    let mode = b.mode.unwrap_or(SearchMode::Auto);
    let has_ctx = ctx.as_ref().is_some_and(|c| c.domain.is_some());
    let (context, fallback) = match mode {
        SearchMode::Flat => (None, None),
        _ if !has_ctx => {
            let why =
                (mode == SearchMode::Hierarchical).then(|| "no context.domain: searched flat".to_string());
            (None, why)
        }
        _ if !features.hierarchical => (None, Some("hierarchical is off: searched flat".to_string())),
        _ => (ctx.map(|c| (c.domain, c.task_type)), None),
    };
    let features = Features { hierarchical: features.hierarchical && context.is_some(), ..features };
    let filter = EpisodeFilter {
        namespace: Some(b.namespace.clone()),
        namespaces: None,
        agents: f.agents.clone(),
        domain: f.domain.clone(),
        task_type: f.task_type.clone(),
        tags_all: f.tags_all.clone(),
        tags_any: f.tags_any.clone(),
        outcomes: f.outcome.as_ref().map(OneOrMany::to_vec).unwrap_or_default(),
        since: times[0],
        until: times[1],
    };
    let ranking = Ranking {
        terms: memory::query_terms(&text, memory::MAX_QUERY_TERMS),
        vector: embedding.filter(|_| features.vectors).map(|e| memory::unit(&e)),
        weights: Weights { recency: if features.recency { weights.recency } else { 0.0 }, ..weights },
        half_life_ms,
        lambda: features.diversity.then_some(lambda),
        k: k.clamp(1, limits.max_search_k as i64) as usize,
        now_ms: st.store.clock().now_ms(),
    };
    let plan = SearchPlan {
        filter,
        context,
        fallback,
        ranking,
        candidates: cfg.candidates.max(1),
        max_scanned: cfg.max_scanned.max(1),
    };
    Ok((plan, features))
}

/// Counts and sizes of a namespace (or of every one the caller may read), with the rebuild's
/// progress.
#[utoipa::path(get, path = "/v1/memory/stats", tag = "memory", operation_id = "memory_stats",
    params(MemoryStatsQuery),
    responses((status = 200, description = "the counts", body = MemoryStats)))]
pub async fn stats(
    State(st): State<AppState>,
    access: Access,
    ApiQuery(q): ApiQuery<MemoryStatsQuery>,
) -> ApiResult<Json<MemoryStats>> {
    if let Some(ns) = &q.namespace {
        ferry_core::validate::queue_name(ns, &st.limits, "namespace")?;
        access.check_in(ResourceKind::Namespace, ns)?;
    }
    let mut out = st.store.memory_stats(q.namespace.clone(), namespaces(&access)).await?;
    out.rebuild = st.memory.progress();
    Ok(Json(out))
}

/// Recompute every derived row from the episodes and count those that differ; `repair`
/// rewrites them (in `[maintenance] batch`es, while serving).
#[utoipa::path(post, path = "/v1/memory/reconcile", tag = "memory", operation_id = "reconcile_memory",
    request_body = Option<ReconcileBody>,
    responses((status = 200, description = "what was checked, found and repaired", body = ReconcileReport)))]
pub async fn reconcile(
    State(st): State<AppState>,
    OptionalJson(body): OptionalJson<ReconcileBody>,
) -> ApiResult<Json<ReconcileReport>> {
    if let Some(ns) = &body.namespace {
        ferry_core::validate::queue_name(ns, &st.limits, "namespace")?;
    }
    let mode = if body.repair { PassMode::Repair } else { PassMode::Check };
    let from = match &body.cursor {
        None => 0,
        Some(c) => {
            c.parse::<i64>().map_err(|_| Error::invalid("cursor", "not a cursor returned by this server"))?
        }
    };
    let mut report = ReconcileReport::default();
    let (mut after, started) = (from, Instant::now());
    let budget = Duration::from_millis(st.memory.config.reconcile_budget_ms);
    loop {
        let pass = DerivedPass { namespace: body.namespace.clone(), after, batch: st.memory.batch, mode };
        let o = st.store.memory_pass(pass).await?;
        report.checked += o.checked;
        report.mismatches.add(o.mismatches);
        report.repaired += o.repaired;
        match o.next {
            Some(n) if started.elapsed() >= budget => {
                report.next_cursor = Some(n.to_string());
                break;
            }
            Some(n) => after = n,
            None => break,
        }
    }
    // The gauge says what a whole check found; a part of one says nothing about the rest.
    if from == 0 && report.next_cursor.is_none() {
        st.metrics.memory_mismatches(if body.repair { 0 } else { report.mismatches.total() });
    }
    Ok(Json(report))
}

/// Rewrite every derived row in the background (`[maintenance] batch` episodes per
/// transaction); progress in `GET /v1/memory/stats`.
#[utoipa::path(post, path = "/v1/memory/rebuild", tag = "memory", operation_id = "rebuild_memory",
    request_body = Option<RebuildBody>,
    responses((status = 202, description = "started; progress in stats", body = RebuildProgress),
    (status = 409, description = "invalid_state: a rebuild is running", body = ErrorBody)))]
pub async fn rebuild(
    State(st): State<AppState>,
    OptionalJson(body): OptionalJson<RebuildBody>,
) -> ApiResult<Response> {
    if let Some(ns) = &body.namespace {
        ferry_core::validate::queue_name(ns, &st.limits, "namespace")?;
    }
    let total = st.store.memory_stats(body.namespace.clone(), None).await?.episodes;
    let started = {
        let mut p = st.memory.rebuild.lock().expect("rebuild progress");
        if p.running {
            return Err(Error::new(
                ErrorCode::InvalidState,
                "a rebuild is running; see GET /v1/memory/stats",
            )
            .into());
        }
        *p =
            RebuildProgress { running: true, done: 0, total, namespace: body.namespace.clone(), error: None };
        p.clone()
    };
    let (store, mem, batch, ns) = (st.store.clone(), st.memory.clone(), st.memory.batch, body.namespace);
    tokio::spawn(async move {
        let mut after = 0;
        let error = loop {
            let pass = DerivedPass { namespace: ns.clone(), after, batch, mode: PassMode::Rewrite };
            match store.memory_pass(pass).await {
                Ok(o) => {
                    mem.rebuild.lock().expect("rebuild progress").done += o.checked;
                    match o.next {
                        Some(n) => after = n,
                        None => break None,
                    }
                }
                Err(e) => break Some(e.message),
            }
        };
        let mut p = mem.rebuild.lock().expect("rebuild progress");
        p.running = false;
        p.error = error;
    });
    Ok((StatusCode::ACCEPTED, Json(started)).into_response())
}

/// Most episodes one retention transaction deletes.
const RETENTION_BATCH_MAX: usize = 100;

/// Deletes episodes past `[memory] retention_ms`, a batch per transaction, every interval.
pub async fn retention(st: AppState, batch: usize, mut stop: tokio::sync::watch::Receiver<bool>) {
    let cfg = st.memory.config.clone();
    if cfg.retention_ms <= 0 {
        return;
    }
    let every = Duration::from_millis(cfg.retention_interval_ms.max(10));
    // A retention transaction holds its namespaces' counters until it commits, and adds to
    // them wait: small transactions keep that wait short.
    let batch = batch.clamp(1, RETENTION_BATCH_MAX);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        let before = st.store.clock().now_ms() - cfg.retention_ms;
        loop {
            match st.store.retire_episodes(before, batch).await {
                Ok(n) if n as usize >= batch => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "memory retention pass failed");
                    break;
                }
            }
        }
    }
}

/// The memory routes: writes need scope `memory`, reads `read`, reconcile and rebuild `admin`.
/// A token restricted to namespaces reaches only their episodes; one restricted to other kinds
/// (queues, agents) none.
pub(super) fn routes(r: super::Routes) -> super::Routes {
    use crate::auth::Restriction::*;
    use ferry_core::Scope;
    use utoipa_axum::routes;
    let ns = Agents(ResourceKind::Namespace);
    r.add(routes!(add), Scope::Memory, ns)
        .add(routes!(add_batch), Scope::Memory, ns)
        .add(routes!(get), Scope::Read, ns)
        .add(routes!(list), Scope::Read, ns)
        .add(routes!(patch), Scope::Memory, ns)
        .add(routes!(delete), Scope::Memory, ns)
        .add(routes!(search_memory), Scope::Memory, ns)
        .add(routes!(stats), Scope::Read, ns)
        .add(routes!(reconcile), Scope::Admin, Refused)
        .add(routes!(rebuild), Scope::Admin, Refused)
}
