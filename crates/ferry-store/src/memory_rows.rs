//! What both memory backends share: the episode row's columns and conversion, the filter's
//! SQL in either dialect, the decision of a batch before it writes, the derived rows an episode
//! implies, and the search itself (candidates from the backend, ranking from
//! `ferry_core::memory`), so SQLite and PostgreSQL cannot drift apart.

use crate::contract::{CandidateQuery, CandidateSet, EpisodeFilter, EpisodeList, MemoryStore};
use ferry_core::memory::{
    self, Candidate, Episode, EpisodeContent, NewEpisode, OutcomeStatus, Ranked, Ranking,
};
use ferry_core::wire::Violations;
use ferry_core::{Error, ErrorCode, Event, EventType, Result, Subject, SubjectKind, Timestamp};
use serde_json::json;
use std::collections::HashMap;
use uuid::Uuid;

/// The columns an [`EpisodeRow`] reads, in order (table alias `e`).
pub const EPISODE_COLS: &str = "e.seq, e.id, e.namespace, e.version, e.created_at, e.updated_at, e.importance, \
                                e.tags, e.content, e.embedding, e.idempotency_key";

/// An episode as stored.
pub type EpisodeRow =
    (i64, Uuid, String, i64, i64, i64, f64, String, String, Option<Vec<u8>>, Option<String>);

fn corrupt(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("a stored episode's {what} cannot be read: {e}"))
}

/// The episode a row holds, with its position.
pub fn episode_from(r: EpisodeRow) -> Result<(i64, Episode)> {
    let (seq, id, namespace, version, created_at, updated_at, importance, tags, content, embedding, key) = r;
    let content: EpisodeContent = serde_json::from_str(&content).map_err(|e| corrupt("content", e))?;
    let tags: Vec<String> = serde_json::from_str(&tags).map_err(|e| corrupt("tags", e))?;
    let embedding = embedding
        .map(|b| memory::vector_from(&b).ok_or_else(|| corrupt("embedding", "not float32s")))
        .transpose()?;
    Ok((
        seq,
        Episode {
            id,
            version,
            created_at: Timestamp(created_at),
            updated_at: Timestamp(updated_at),
            namespace,
            content,
            importance,
            tags,
            embedding,
            idempotency_key: key,
        },
    ))
}

/// The columns an episode row is written with, as stored values.
pub struct Cols {
    /// `ended_at`, else `created_at`.
    pub at: i64,
    /// Tags as JSON.
    pub tags: String,
    /// Content as JSON.
    pub content: String,
    /// The embedding's bytes.
    pub embedding: Option<Vec<u8>>,
    /// The outcome's wire name.
    pub outcome: Option<&'static str>,
}

/// The stored columns of a new episode.
pub fn cols(e: &NewEpisode, now: i64) -> Cols {
    Cols {
        at: e.content.ended_at.map_or(now, |t| t.0),
        tags: serde_json::to_string(&e.tags).expect("tags serialize"),
        content: serde_json::to_string(&e.content).expect("content serializes"),
        embedding: e.embedding.as_deref().map(memory::vector_bytes),
        outcome: e.content.outcome.as_ref().map(|o| o.status.as_str()),
    }
}

/// Rows derived from one episode.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    /// Its tokens, space-joined.
    pub terms: String,
    /// Its facet tokens, space-joined (SQLite's full-text index; see [`facets`]).
    pub facets: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its unit vector's bytes.
    pub vector: Option<Vec<u8>>,
}

/// What an episode's derived rows must hold.
pub fn derived(ns: &str, content: &EpisodeContent, tags: &[String], embedding: Option<&[f32]>) -> Derived {
    Derived {
        terms: content.terms(),
        facets: facets(ns, content, tags),
        tags: tags.to_vec(),
        vector: embedding.map(|v| memory::vector_bytes(&memory::unit(v))),
    }
}

/// Lower-case hex of `s`'s bytes: any value as one full-text token of `[0-9a-f]`.
fn hex(s: &str) -> String {
    use std::fmt::Write;
    s.bytes().fold(String::with_capacity(2 * s.len()), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// A facet token: its kind's letter, the namespace and the values, hex, `x` between them.
/// Every one carries its namespace, so a filter reads one short posting list, not the
/// intersection of the namespace's with a value's shared by all namespaces.
fn facet(kind: char, ns: &str, values: &[&str]) -> String {
    let mut t = format!("{kind}{}", hex(ns));
    for v in values {
        t.push('x');
        t.push_str(&hex(v));
    }
    t
}

/// The facet tokens an episode is found by in SQLite's full-text index (column `facets`): its
/// namespace (`n`), domain (`d`), task type (`t`), both (`k`), agent (`a`), outcome (`o`) and
/// tags (`g`). Filters become full-text conditions, so a search reads only the episodes that
/// pass them (the filter on the episode row read every newer match of other namespaces).
pub fn facets(ns: &str, c: &EpisodeContent, tags: &[String]) -> String {
    let mut out = vec![facet('n', ns, &[])];
    if let Some(d) = &c.domain {
        out.push(facet('d', ns, &[d]));
    }
    if let Some(t) = &c.task_type {
        out.push(facet('t', ns, &[t]));
    }
    if let (Some(d), Some(t)) = (&c.domain, &c.task_type) {
        out.push(facet('k', ns, &[d, t]));
    }
    if let Some(a) = &c.agent {
        out.push(facet('a', ns, &[a]));
    }
    if let Some(o) = &c.outcome {
        out.push(facet('o', ns, &[o.status.as_str()]));
    }
    let tags: std::collections::BTreeSet<&String> = tags.iter().collect();
    out.extend(tags.into_iter().map(|t| facet('g', ns, &[t])));
    out.join(" ")
}

/// The FTS5 condition on column `facets` that `f` sets, for a search (which names its
/// namespace); `None` when `f` matches nothing (a namespace outside the allowed list).
pub fn facet_match(f: &EpisodeFilter) -> Result<Option<String>> {
    let ns = f.namespace.as_deref().ok_or_else(|| Error::internal("a memory search names its namespace"))?;
    if f.namespaces.as_ref().is_some_and(|list| !list.iter().any(|n| n == ns)) {
        return Ok(None);
    }
    let quoted = |t: String| format!("\"{t}\"");
    let any = |tokens: Vec<String>| {
        format!("({})", tokens.into_iter().map(quoted).collect::<Vec<_>>().join(" OR "))
    };
    let mut all: Vec<String> = Vec::new();
    match (&f.domain, &f.task_type) {
        (Some(d), Some(t)) => all.push(quoted(facet('k', ns, &[d, t]))),
        (Some(d), None) => all.push(quoted(facet('d', ns, &[d]))),
        (None, Some(t)) => all.push(quoted(facet('t', ns, &[t]))),
        (None, None) => {}
    }
    if !f.agents.is_empty() {
        all.push(any(f.agents.iter().map(|a| facet('a', ns, &[a])).collect()));
    }
    if !f.outcomes.is_empty() {
        all.push(any(f.outcomes.iter().map(|o| facet('o', ns, &[o.as_str()])).collect()));
    }
    all.extend(f.tags_all.iter().map(|t| quoted(facet('g', ns, &[t]))));
    if !f.tags_any.is_empty() {
        all.push(any(f.tags_any.iter().map(|t| facet('g', ns, &[t])).collect()));
    }
    if all.is_empty() {
        all.push(quoted(facet('n', ns, &[])));
    }
    Ok(Some(format!("facets : ({})", all.join(" AND "))))
}

/// Which derived write fails on purpose (`FERRY_MEMORY_FAULT=fts|tags|embeddings`), for the
/// failure-injection tests: only for episodes tagged `ferry:fault`, so their batch mates are
/// ordinary writes.
pub fn fault(kind: &str, tags: &[String]) -> Result<()> {
    static FAULT: std::sync::LazyLock<Option<String>> =
        std::sync::LazyLock::new(|| std::env::var("FERRY_MEMORY_FAULT").ok());
    match FAULT.as_deref() {
        Some(k) if k == kind && tags.iter().any(|t| t == "ferry:fault") => {
            Err(Error::internal(format!("injected fault: the {kind} write failed")))
        }
        _ => Ok(()),
    }
}

/// A stored episode a new one collides with: its id and body hash.
pub type Stored = Option<(Uuid, String)>;

/// What to do with each episode of a batch: `None` insert, `Some(id)` a resend of `id`.
pub fn decide(
    batch: &[NewEpisode],
    stored: &[Stored],
    dims: &HashMap<String, Option<u32>>,
    single: bool,
) -> Result<Vec<Option<Uuid>>> {
    assert_eq!(batch.len(), stored.len());
    let mut out = Vec::with_capacity(batch.len());
    let mut seen: HashMap<(String, String), (Uuid, &str)> = HashMap::new();
    let mut seen_ids: HashMap<Uuid, &str> = HashMap::new();
    let mut dims: HashMap<String, Option<u32>> = dims.clone();
    let mut v = Violations::default();
    for (i, (e, s)) in batch.iter().zip(stored).enumerate() {
        let conflict = |id: Uuid| Err(stored_conflict(e, id));
        if let Some((id, hash)) = s {
            if *hash != e.body_hash {
                return conflict(*id);
            }
            out.push(Some(*id));
            continue;
        }
        let earlier = match &e.idempotency_key {
            Some(k) => seen.get(&(e.namespace.clone(), k.clone())).copied(),
            None => seen_ids.get(&e.id).map(|h| (e.id, *h)),
        };
        if let Some((id, hash)) = earlier {
            if hash != e.body_hash {
                // Two bodies under one key in the same batch: nothing is stored to name.
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!("episodes[{i}] repeats an earlier episode's key (or id) of this batch with another body"),
                )
                .with_details(json!({ "index": i })));
            }
            out.push(Some(id));
            continue;
        }
        if let Some(k) = &e.idempotency_key {
            seen.insert((e.namespace.clone(), k.clone()), (e.id, &e.body_hash));
        }
        if seen_ids.insert(e.id, &e.body_hash).is_some() {
            return conflict(e.id);
        }
        if let Some(emb) = &e.embedding {
            let n = emb.len() as u32;
            match dims.entry(e.namespace.clone()).or_insert(None) {
                Some(d) if *d != n => {
                    let field =
                        if single { "embedding".to_string() } else { format!("episodes[{i}].embedding") };
                    v.add(
                        field,
                        json!(*d),
                        json!(n),
                        format!(
                            "namespace {} holds {d}-dimensional embeddings; this one has {n}",
                            e.namespace
                        ),
                    );
                }
                slot => *slot = Some(n),
            }
        }
        out.push(None);
    }
    v.finish()?;
    Ok(out)
}

/// The 409 for an episode whose key (or id) is stored with another body.
pub fn stored_conflict(e: &NewEpisode, id: Uuid) -> Error {
    let what = if e.idempotency_key.is_some() { "idempotency_key" } else { "id" };
    Error::new(ErrorCode::Conflict, format!("episode {id} was stored under this {what} with another body"))
        .with_details(json!({ "id": id }))
}

/// The `episode.added` event.
pub fn added_event(e: &NewEpisode, now: i64) -> Event {
    let c = &e.content;
    event(
        EventType::EpisodeAdded,
        &e.namespace,
        now,
        json!({
            "id": e.id, "agent": c.agent, "domain": c.domain, "task_type": c.task_type,
            "outcome": c.outcome.as_ref().map(|o| o.status),
        }),
    )
}

/// An episode event in its namespace's room.
pub fn event(kind: EventType, namespace: &str, now: i64, data: serde_json::Value) -> Event {
    Event {
        cursor: 0,
        kind,
        subject: Subject::new(SubjectKind::Namespace, namespace),
        at: Timestamp(now),
        queue: None,
        job_id: None,
        tags: Vec::new(),
        data: Some(data),
    }
}

/// A query parameter of the filter SQL.
#[derive(Debug, Clone)]
pub enum Param {
    /// Text.
    Text(String),
    /// Integer.
    Int(i64),
    /// A text list (PostgreSQL `text[]`).
    Texts(Vec<String>),
}

/// SQL under construction, with its parameters, for one dialect.
#[derive(Debug, Clone)]
pub struct Sql {
    /// Parameters, in placeholder order.
    pub params: Vec<Param>,
    pg: bool,
}

impl Sql {
    /// For PostgreSQL (`$n`, arrays) or SQLite (`?n`, expanded lists).
    pub fn new(pg: bool) -> Sql {
        Sql { params: Vec::new(), pg }
    }

    /// A placeholder for `p`.
    pub fn bind(&mut self, p: Param) -> String {
        self.params.push(p);
        if self.pg { format!("${}", self.params.len()) } else { format!("?{}", self.params.len()) }
    }

    /// `col` is one of `values`. One value is an equality: PostgreSQL walks an index in order
    /// for `col = $1` (newest first, stopping at the limit), not for `col = ANY($1)`.
    pub fn one_of(&mut self, col: &str, values: &[String]) -> String {
        if let [one] = values {
            return format!("{col} = {}", self.bind(Param::Text(one.clone())));
        }
        if self.pg {
            format!("{col} = ANY({})", self.bind(Param::Texts(values.to_vec())))
        } else {
            let list: Vec<String> = values.iter().map(|v| self.bind(Param::Text(v.clone()))).collect();
            format!("{col} IN ({})", list.join(", "))
        }
    }

    /// The conditions of `f` on `episodes e`, joined with AND (`TRUE` when none).
    pub fn filter(&mut self, f: &EpisodeFilter) -> String {
        let mut c: Vec<String> = Vec::new();
        if let Some(ns) = &f.namespace {
            c.push(format!("e.namespace = {}", self.bind(Param::Text(ns.clone()))));
        }
        if let Some(list) = &f.namespaces {
            c.push(if list.is_empty() { "1 = 0".into() } else { self.one_of("e.namespace", list) });
        }
        if !f.agents.is_empty() {
            c.push(self.one_of("e.agent", &f.agents));
        }
        if let Some(d) = &f.domain {
            c.push(format!("e.domain = {}", self.bind(Param::Text(d.clone()))));
        }
        if let Some(t) = &f.task_type {
            c.push(format!("e.task_type = {}", self.bind(Param::Text(t.clone()))));
        }
        if !f.outcomes.is_empty() {
            let names: Vec<String> = f.outcomes.iter().map(|o| o.as_str().to_string()).collect();
            c.push(self.one_of("e.outcome", &names));
        }
        if let Some(s) = f.since {
            c.push(format!("e.at >= {}", self.bind(Param::Int(s))));
        }
        if let Some(u) = f.until {
            c.push(format!("e.at < {}", self.bind(Param::Int(u))));
        }
        for t in &f.tags_all {
            let p = self.bind(Param::Text(t.clone()));
            c.push(format!("EXISTS (SELECT 1 FROM episode_tags t WHERE t.seq = e.seq AND t.tag = {p})"));
        }
        if !f.tags_any.is_empty() {
            let cond = self.one_of("t.tag", &f.tags_any);
            c.push(format!("EXISTS (SELECT 1 FROM episode_tags t WHERE t.seq = e.seq AND {cond})"));
        }
        if c.is_empty() { "TRUE".into() } else { c.join(" AND ") }
    }
}

/// A list page's statement (newest first, `limit + 1` rows, older than the cursor) in the
/// dialect of `pg`, with its parameters.
pub fn list_sql(pg: bool, l: &EpisodeList) -> (String, Vec<Param>) {
    let mut sql = Sql::new(pg);
    let cond = sql.filter(&l.filter);
    let before = sql.bind(Param::Int(l.before.unwrap_or(i64::MAX)));
    let lim = sql.bind(Param::Int(l.limit as i64 + 1));
    let text = format!(
        "SELECT {EPISODE_COLS} FROM episodes e WHERE {cond} AND e.seq < {before} ORDER BY e.seq DESC LIMIT {lim}"
    );
    (text, sql.params)
}

/// A candidate's row: `(seq, id, at, importance, outcome, terms, vector bytes)`.
pub type CandidateRow = (i64, Uuid, i64, f64, Option<String>, Option<String>, Option<Vec<u8>>);

/// A candidate from its row.
pub fn candidate_from(r: CandidateRow) -> Result<Candidate> {
    let (seq, id, at_ms, importance, outcome, terms, vec) = r;
    let outcome =
        outcome.map(|o| OutcomeStatus::parse(&o).ok_or_else(|| corrupt("outcome", o))).transpose()?;
    Ok(Candidate {
        seq,
        id,
        at_ms,
        importance,
        outcome,
        terms: terms.unwrap_or_default(),
        vector: vec.and_then(|b| memory::vector_from(&b)),
    })
}

/// Cuts a candidate list read with `LIMIT limit + 1`.
pub fn cut(mut candidates: Vec<Candidate>, limit: usize, truncated: bool) -> CandidateSet {
    let more = candidates.len() > limit;
    candidates.truncate(limit);
    CandidateSet { candidates, truncated: truncated || more }
}

/// A resolved search: what to look for and where to start.
#[derive(Debug, Clone)]
pub struct SearchPlan {
    /// Filters (the namespace set).
    pub filter: EpisodeFilter,
    /// The hierarchical start `(domain, task_type)`; `None`: flat.
    pub context: Option<(Option<String>, Option<String>)>,
    /// Why the search is flat although hierarchical was asked for, if it is.
    pub fallback: Option<String>,
    /// Ranking (terms, vector, weights, λ, k, now).
    pub ranking: Ranking,
    /// `[memory] candidates`.
    pub candidates: usize,
    /// `[memory] max_scanned`.
    pub max_scanned: usize,
}

/// A search's answer before it is put on the wire.
#[derive(Debug, Clone)]
pub struct SearchOutput {
    /// Best first.
    pub hits: Vec<(Ranked, Episode)>,
    /// `hierarchical` or `flat`.
    pub served_by: &'static str,
    /// `task_type`, `domain` or `namespace`.
    pub level: &'static str,
    /// Why it widened, if it did.
    pub fallback_reason: Option<String>,
    /// Candidates ranked.
    pub candidates_scored: usize,
    /// A bound cut the candidates.
    pub truncated: bool,
    /// Mean pairwise dissimilarity of the hits.
    pub diversity: f64,
}

/// Runs a search on `store`: candidates level by level, ranked here, episodes read last.
pub async fn search<S: MemoryStore + ?Sized>(store: &S, plan: SearchPlan) -> Result<SearchOutput> {
    let r = &plan.ranking;
    let terms = (!r.terms.is_empty()).then(|| r.terms.clone());
    let query = |filter: EpisodeFilter, terms: Option<Vec<String>>| CandidateQuery {
        filter,
        terms,
        limit: plan.candidates,
        max_scanned: plan.max_scanned,
        vectors: r.vector.is_some(),
    };
    let (served_by, level, set, reason) = match &plan.context {
        None => (
            "flat",
            "namespace",
            flat(store, query(plan.filter.clone(), terms.clone())).await?,
            plan.fallback.clone(),
        ),
        Some((domain, task_type)) => {
            let need = (3 * r.k).max(20);
            let mut levels: Vec<(&'static str, EpisodeFilter)> = Vec::new();
            let narrowed = |d: &Option<String>, t: &Option<String>| -> Option<EpisodeFilter> {
                let mut f = plan.filter.clone();
                for (have, want) in [(&mut f.domain, d), (&mut f.task_type, t)] {
                    match (have.as_ref(), want) {
                        (_, None) => {}
                        (None, Some(w)) => *have = Some(w.clone()),
                        (Some(h), Some(w)) if h == w => {}
                        _ => return None,
                    }
                }
                Some(f)
            };
            if task_type.is_some() && domain.is_some() {
                levels.extend(narrowed(domain, task_type).map(|f| ("task_type", f)));
            }
            if domain.is_some() {
                levels.extend(narrowed(domain, &None).map(|f| ("domain", f)));
            }
            let mut reason: Option<String> = None;
            let mut found = None;
            let text_signal = terms.as_deref().map(memory::QueryTerms::new);
            for (name, f) in levels {
                let set = store.memory_candidates(query(f, None)).await?;
                let signals = set
                    .candidates
                    .iter()
                    .filter(|c| {
                        (terms.is_none() && r.vector.is_none())
                            || text_signal.as_ref().is_some_and(|q| q.any_in(c))
                            || (r.vector.is_some() && c.vector.is_some())
                    })
                    .count();
                if signals >= need {
                    found = Some((name, set));
                    break;
                }
                reason = Some(format!(
                    "{signals} candidates with a text or vector signal at {name}, fewer than {need}"
                ));
            }
            match found {
                Some((name, set)) => ("hierarchical", name, set, reason),
                None => {
                    let set = flat(store, query(plan.filter.clone(), terms.clone())).await?;
                    ("hierarchical", "namespace", set, reason)
                }
            }
        }
    };
    let (ranked, diversity) = memory::rank(r, &set.candidates);
    let ids: Vec<Uuid> = ranked.iter().map(|x| set.candidates[x.index].id).collect();
    let mut episodes: HashMap<Uuid, Episode> =
        store.get_episodes(ids.clone()).await?.into_iter().map(|e| (e.id, e)).collect();
    // An episode deleted between the two reads is left out.
    let hits =
        ranked.into_iter().zip(ids).filter_map(|(x, id)| episodes.remove(&id).map(|e| (x, e))).collect();
    Ok(SearchOutput {
        hits,
        served_by,
        level,
        fallback_reason: reason,
        candidates_scored: set.candidates.len(),
        truncated: set.truncated,
        diversity,
    })
}

/// Flat candidates: the term matches; with a query vector also the newest episodes, so one near
/// in meaning but sharing no word is not lost (merged newest first, cut at the same bound).
async fn flat<S: MemoryStore + ?Sized>(store: &S, q: CandidateQuery) -> Result<CandidateSet> {
    let hybrid = q.terms.is_some() && q.vectors;
    let limit = q.limit;
    let matched = store.memory_candidates(q.clone()).await?;
    if !hybrid {
        return Ok(matched);
    }
    let newest = store.memory_candidates(CandidateQuery { terms: None, ..q }).await?;
    Ok(merge(matched, newest, limit))
}

/// Two candidate sets as one, newest first without repeats, at most `limit`.
fn merge(a: CandidateSet, b: CandidateSet, limit: usize) -> CandidateSet {
    let truncated = a.truncated || b.truncated;
    let mut all: Vec<Candidate> = a.candidates.into_iter().chain(b.candidates).collect();
    all.sort_by_key(|c| std::cmp::Reverse(c.seq));
    all.dedup_by_key(|c| c.seq);
    let more = all.len() > limit;
    all.truncate(limit);
    CandidateSet { candidates: all, truncated: truncated || more }
}

/// The FTS5 query matching any of `terms` (each quoted: ferry's tokens hold no quote).
pub fn fts_match(terms: &[String]) -> String {
    terms.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>().join(" OR ")
}

/// The `tsquery` matching any of `terms` (quoted lexemes: PostgreSQL parses nothing).
pub fn ts_query(terms: &[String]) -> String {
    terms.iter().map(|t| format!("'{t}'")).collect::<Vec<_>>().join(" | ")
}

/// The 412 for a patch whose `If-Match` names an older version.
pub fn precondition_failed(id: Uuid, expected: i64, actual: i64) -> Error {
    Error::new(ErrorCode::PreconditionFailed, format!("episode {id} is at version {actual}, not {expected}"))
        .with_details(json!({ "expected_version": expected, "actual_version": actual }))
}

/// Memory invariants both backends check: `(query returning offending keys, what is wrong)`.
pub const MEMORY_INVARIANTS: &[(&str, &str)] = &[
    (
        "SELECT namespace FROM memory_namespaces m WHERE episodes <> (SELECT count(*) FROM episodes e WHERE e.namespace = m.namespace)
            OR bytes <> (SELECT COALESCE(sum(bytes), 0) FROM episodes e WHERE e.namespace = m.namespace)",
        "namespace counters differ from its episodes",
    ),
    (
        "SELECT DISTINCT namespace FROM episodes e WHERE NOT EXISTS (SELECT 1 FROM memory_namespaces m WHERE m.namespace = e.namespace)",
        "episodes without namespace counters",
    ),
    (
        "SELECT DISTINCT CAST(seq AS TEXT) FROM episode_tags t WHERE NOT EXISTS (SELECT 1 FROM episodes e WHERE e.seq = t.seq)",
        "tag rows without their episode",
    ),
    (
        "SELECT CAST(seq AS TEXT) FROM episode_vectors v WHERE NOT EXISTS (SELECT 1 FROM episodes e WHERE e.seq = v.seq AND e.embedding IS NOT NULL)",
        "vector row without an embedded episode",
    ),
    (
        "SELECT CAST(seq AS TEXT) FROM episodes e WHERE e.embedding IS NOT NULL AND NOT EXISTS (SELECT 1 FROM episode_vectors v WHERE v.seq = e.seq)",
        "embedded episode without its vector row",
    ),
];
