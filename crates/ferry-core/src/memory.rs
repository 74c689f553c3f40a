//! Episodic memory, pure: an agent's episode, the tokens both search engines index, and the
//! ranking every backend applies to the candidates it found (BM25, cosine, recency, importance,
//! outcome, then MMR). Backends only find candidates; scoring happens here, once, so SQLite and
//! PostgreSQL return the same ids in the same order for the same data.

use crate::Timestamp;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use utoipa::ToSchema;
use uuid::Uuid;

named_enum! {
    /// How an episode ended.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
    pub enum OutcomeStatus {
        /// The task was done.
        Success = "success";
        /// Part of it was done.
        Partial = "partial";
        /// It was not done.
        Failure = "failure";
        /// The agent gave up or was stopped.
        Abandoned = "abandoned";
    }
}

impl OutcomeStatus {
    /// The outcome term of the score: 1 success, 0.5 partial, else 0.
    pub fn value(self) -> f64 {
        match self {
            OutcomeStatus::Success => 1.0,
            OutcomeStatus::Partial => 0.5,
            OutcomeStatus::Failure | OutcomeStatus::Abandoned => 0.0,
        }
    }
}

/// One tool call or action of an episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The tool used (a name).
    #[serde(default)]
    pub tool: String,
    /// What was done, in words (searchable; at most `limits.max_step_text_bytes`).
    #[serde(default)]
    pub action: String,
    /// How the step ended, free text (a name, e.g. `ok`).
    #[serde(default)]
    pub status: String,
    /// How long it took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub latency_ms: Option<i64>,
    /// Tokens it used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0)]
    pub tokens: Option<i64>,
}

/// How an episode ended, in words and as a reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Outcome {
    /// The class of ending.
    pub status: OutcomeStatus,
    /// What happened (searchable; at most `limits.max_episode_text_bytes`).
    #[serde(default)]
    pub summary: String,
    /// A reward in [-1, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = -1, maximum = 1)]
    pub reward: Option<f64>,
}

/// Something an episode produced or used, by reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EpisodeArtifact {
    /// What it is (a name, e.g. `file`, `pr`).
    pub kind: String,
    /// Where it is.
    pub uri: String,
    /// Its content's SHA-256, lower-case hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// What an episode says about itself, fixed at creation (everything but tags and importance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct EpisodeContent {
    /// The agent that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// The area of work (hierarchical search's first level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The kind of task within the domain (the second level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_type: Option<String>,
    /// What the task was (searchable).
    #[serde(default)]
    pub description: String,
    /// What was done.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// How it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// What it produced or used.
    #[serde(default)]
    pub artifacts: Vec<EpisodeArtifact>,
    /// Anything else, as a JSON object.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub started_at: Option<Timestamp>,
    /// When it ended (recency counts from here; else from `created_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub ended_at: Option<Timestamp>,
    /// The job it ran as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
}

impl EpisodeContent {
    /// The text both engines index: description, outcome summary, steps' tools and actions.
    pub fn terms(&self) -> String {
        let mut out = String::new();
        let mut add = |text: &str| {
            for t in tokens(text) {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(&t);
            }
        };
        add(&self.description);
        if let Some(o) = &self.outcome {
            add(&o.summary);
        }
        for s in &self.steps {
            add(&s.tool);
            add(&s.action);
        }
        out
    }
}

/// A stored episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Episode {
    /// Server-assigned UUIDv7.
    pub id: Uuid,
    /// Starts at 1; each change adds 1 (the `ETag`).
    pub version: i64,
    /// When it was stored.
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    /// When it last changed.
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
    /// Its namespace (queue-name characters).
    pub namespace: String,
    /// What it says about itself.
    #[serde(flatten)]
    pub content: EpisodeContent,
    /// How much it matters, in [0, 1].
    pub importance: f64,
    /// Labels (filters).
    pub tags: Vec<String>,
    /// Its vector, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    /// The key that makes a resend a duplicate, per namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// A validated new episode, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEpisode {
    /// Its id (chosen by the server, or kept by an import).
    pub id: Uuid,
    /// Its namespace.
    pub namespace: String,
    /// What it says about itself.
    pub content: EpisodeContent,
    /// How much it matters.
    pub importance: f64,
    /// Labels, deduplicated in order.
    pub tags: Vec<String>,
    /// Its vector.
    pub embedding: Option<Vec<f32>>,
    /// Resend key.
    pub idempotency_key: Option<String>,
    /// SHA-256 of the request's canonical JSON (what makes a resend "the same body").
    pub body_hash: String,
    /// Size of the stored episode, for stats.
    pub bytes: i64,
}

/// A validated change of tags and importance.
#[derive(Debug, Clone, PartialEq)]
pub struct EpisodePatch {
    /// The episode.
    pub id: Uuid,
    /// New tags.
    pub tags: Option<Vec<String>>,
    /// New importance.
    pub importance: Option<f64>,
    /// `If-Match`: the version the caller read.
    pub if_version: Option<i64>,
    /// Namespaces the caller may touch (`None`: any); another's episode is absent to it.
    pub namespaces: Option<Vec<String>>,
}

/// What storing an episode did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AddOutcome {
    /// The episode's id.
    pub id: Uuid,
    /// When it was stored (absent on a duplicate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub created_at: Option<Timestamp>,
    /// A resend of a stored episode: nothing was written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// Ferry's tokens: Unicode letter and digit runs, lower-cased, no stemming. Both engines index
/// exactly these (SQLite's FTS5 `ascii` tokenizer over the space-joined tokens keeps them
/// whole; PostgreSQL builds its `tsvector` from the same list), so a term matches the same
/// episodes on both.
pub fn tokens(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).map(|t| {
        let mut t = t.to_lowercase();
        if t.len() > MAX_TOKEN_BYTES {
            // PostgreSQL refuses lexemes of 2 KiB and more; a hash or a blob is no word anyway.
            let mut end = MAX_TOKEN_BYTES;
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t.truncate(end);
        }
        t
    })
}

/// A token's longest form: longer ones are cut to their first this many bytes (on both engines).
pub const MAX_TOKEN_BYTES: usize = 100;

/// A query's distinct terms, in first-seen order, at most `max`.
pub fn query_terms(text: &str, max: usize) -> Vec<String> {
    let mut seen = HashSet::new();
    tokens(text).filter(|t| seen.insert(t.clone())).take(max).collect()
}

/// Most distinct terms a search query uses (further ones are ignored).
pub const MAX_QUERY_TERMS: usize = 64;

/// An embedding scaled to unit length, as stored in the derived vector row: cosine is then a
/// dot product. A zero vector stays zero (its cosine with anything is 0).
pub fn unit(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm == 0.0 {
        return vec![0.0; v.len()];
    }
    v.iter().map(|x| (f64::from(*x) / norm) as f32).collect()
}

/// A vector as stored: little-endian f32s.
pub fn vector_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A stored vector; `None` if the byte count is not a whole number of f32s.
pub fn vector_from(bytes: &[u8]) -> Option<Vec<f32>> {
    bytes
        .len()
        .is_multiple_of(4)
        .then(|| bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum()
}

/// The score's weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Weights {
    /// BM25, min-max normalized (default 1).
    pub text: f64,
    /// Cosine to the query's embedding, min-max normalized (default 1).
    pub vector: f64,
    /// 0.5^(age / half_life_ms) (default 1).
    pub recency: f64,
    /// The episode's importance (default 0.5).
    pub importance: f64,
    /// 1 success, 0.5 partial, else 0 (default 0.5).
    pub outcome: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights { text: 1.0, vector: 1.0, recency: 1.0, importance: 0.5, outcome: 0.5 }
    }
}

/// Recency's default half-life: 6 days (Generative Agents' 0.995 per hour).
pub const DEFAULT_HALF_LIFE_MS: i64 = 518_400_000;
/// MMR's default trade-off between relevance and novelty.
pub const DEFAULT_LAMBDA: f64 = 0.7;
/// BM25's term-frequency saturation.
const BM25_K1: f64 = 1.2;
/// BM25's length normalization.
const BM25_B: f64 = 0.75;

/// One episode a backend found, with what scoring reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Insertion order (newer is larger): the order candidates come in, and ties' order.
    pub seq: i64,
    /// The episode.
    pub id: Uuid,
    /// `ended_at`, else `created_at` (ms): recency counts from here.
    pub at_ms: i64,
    /// Importance.
    pub importance: f64,
    /// Outcome, if any.
    pub outcome: Option<OutcomeStatus>,
    /// Its indexed tokens, space-joined.
    pub terms: String,
    /// Its unit vector, when it has one and the query asked for vectors.
    pub vector: Option<Vec<f32>>,
}

/// A search's query terms, each with its substring finder built once for every candidate.
pub struct QueryTerms<'a> {
    finders: Vec<memchr::memmem::Finder<'a>>,
}

impl<'a> QueryTerms<'a> {
    /// Finders for `terms`.
    pub fn new(terms: &'a [String]) -> QueryTerms<'a> {
        QueryTerms { finders: terms.iter().map(|t| memchr::memmem::Finder::new(t.as_str())).collect() }
    }

    /// Whether `c` holds any of the terms (the text signal).
    pub fn any_in(&self, c: &Candidate) -> bool {
        self.finders.iter().any(|f| count_in(&c.terms, f) > 0)
    }
}

/// What ranks candidates.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// The query's terms.
    pub terms: Vec<String>,
    /// The query's unit vector (when vectors run).
    pub vector: Option<Vec<f32>>,
    /// Weights (recency's is 0 when recency is off).
    pub weights: Weights,
    /// Recency half-life.
    pub half_life_ms: i64,
    /// MMR's λ; `None`: diversity off.
    pub lambda: Option<f64>,
    /// Results wanted.
    pub k: usize,
    /// The time ages count to.
    pub now_ms: i64,
}

/// One term of a result's score, unweighted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Components {
    /// BM25, min-max normalized over the candidates.
    pub text: f64,
    /// Cosine, min-max normalized over the candidates with vectors.
    pub vector: f64,
    /// 0.5^(age / half-life).
    pub recency: f64,
    /// Importance.
    pub importance: f64,
    /// Outcome value.
    pub outcome: f64,
}

/// A ranked candidate: its index in the candidate list, score and components.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    /// Index into the candidates.
    pub index: usize,
    /// The weighted sum.
    pub score: f64,
    /// Its terms.
    pub components: Components,
}

/// Candidates ranked, at most `k`, and the mean pairwise dissimilarity of the chosen ones.
pub fn rank(r: &Ranking, cands: &[Candidate]) -> (Vec<Ranked>, f64) {
    let text = normalize(&bm25(&r.terms, cands));
    let cos: Vec<Option<f64>> = cands
        .iter()
        .map(|c| match (&r.vector, &c.vector) {
            (Some(q), Some(v)) if q.len() == v.len() => Some(dot(q, v)),
            _ => None,
        })
        .collect();
    let vector = normalize_some(&cos);
    let w = r.weights;
    let mut all: Vec<Ranked> = cands
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let age = (r.now_ms - c.at_ms).max(0) as f64;
            let components = Components {
                text: text[i],
                vector: vector[i],
                recency: if w.recency == 0.0 { 0.0 } else { 0.5f64.powf(age / r.half_life_ms.max(1) as f64) },
                importance: c.importance,
                outcome: c.outcome.map_or(0.0, OutcomeStatus::value),
            };
            let score = w.text * components.text
                + w.vector * components.vector
                + w.recency * components.recency
                + w.importance * components.importance
                + w.outcome * components.outcome;
            Ranked { index: i, score, components }
        })
        .collect();
    // Best first; ties: newer first.
    all.sort_by(|a, b| b.score.total_cmp(&a.score).then(cands[b.index].seq.cmp(&cands[a.index].seq)));
    let chosen = match r.lambda {
        Some(lambda) if lambda < 1.0 => {
            all.truncate((4 * r.k).max(50));
            mmr(all, cands, lambda, r.k)
        }
        _ => {
            all.truncate(r.k);
            all
        }
    };
    let diversity = mean_dissimilarity(&chosen, cands);
    (chosen, diversity)
}

/// Maximal marginal relevance: repeatedly the candidate with the best
/// `λ·score − (1−λ)·max similarity to those chosen` (ties: the better-ranked one).
fn mmr(pool: Vec<Ranked>, cands: &[Candidate], lambda: f64, k: usize) -> Vec<Ranked> {
    let sets: Vec<Vec<&str>> = pool.iter().map(|p| token_set(&cands[p.index])).collect();
    let mut left: Vec<usize> = (0..pool.len()).collect();
    let mut most_similar = vec![f64::NEG_INFINITY; pool.len()];
    let mut out = Vec::with_capacity(k.min(pool.len()));
    while out.len() < k && !left.is_empty() {
        let value = |i: usize| {
            let penalty = if most_similar[i].is_finite() { most_similar[i] } else { 0.0 };
            lambda * pool[i].score - (1.0 - lambda) * penalty
        };
        let (at, _) = left.iter().enumerate().fold((0, f64::NEG_INFINITY), |(bi, bv), (j, &i)| {
            let v = value(i);
            if v > bv { (j, v) } else { (bi, bv) }
        });
        let pick = left.remove(at);
        for &i in &left {
            let s = similarity(&cands[pool[i].index], &cands[pool[pick].index], &sets[i], &sets[pick]);
            most_similar[i] = most_similar[i].max(s);
        }
        out.push(pool[pick]);
    }
    out
}

/// A candidate's distinct tokens, sorted (sets this small intersect faster by merging than by
/// hashing).
fn token_set(c: &Candidate) -> Vec<&str> {
    let mut set: Vec<&str> = c.terms.split(' ').filter(|t| !t.is_empty()).collect();
    set.sort_unstable();
    set.dedup();
    set
}

/// How many tokens two sorted token sets share.
fn shared(a: &[&str], b: &[&str]) -> usize {
    let (mut i, mut j, mut n) = (0, 0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                n += 1;
                i += 1;
                j += 1;
            }
        }
    }
    n
}

/// How often `finder`'s needle occurs as a whole token of the space-joined `terms`.
fn count_in(terms: &str, finder: &memchr::memmem::Finder<'_>) -> u32 {
    let n = finder.needle().len();
    if n == 0 {
        return 0;
    }
    let b = terms.as_bytes();
    let whole = |i: usize| (i == 0 || b[i - 1] == b' ') && (i + n == b.len() || b[i + n] == b' ');
    finder.find_iter(b).filter(|&i| whole(i)).count() as u32
}

/// How many tokens the space-joined `terms` holds.
fn token_count(terms: &str) -> u32 {
    let b = terms.as_bytes();
    let starts = memchr::memchr_iter(b' ', b).filter(|&i| i + 1 < b.len() && b[i + 1] != b' ').count();
    (starts + usize::from(b.first().is_some_and(|&c| c != b' '))) as u32
}

/// Cosine when both have vectors, else the Jaccard index of their token sets.
fn similarity(a: &Candidate, b: &Candidate, sa: &[&str], sb: &[&str]) -> f64 {
    match (&a.vector, &b.vector) {
        (Some(x), Some(y)) if x.len() == y.len() => dot(x, y),
        _ => {
            let both = shared(sa, sb);
            let union = sa.len() + sb.len() - both;
            if union == 0 { 0.0 } else { both as f64 / union as f64 }
        }
    }
}

fn mean_dissimilarity(chosen: &[Ranked], cands: &[Candidate]) -> f64 {
    if chosen.len() < 2 {
        return 0.0;
    }
    let sets: Vec<Vec<&str>> = chosen.iter().map(|c| token_set(&cands[c.index])).collect();
    let (mut sum, mut pairs) = (0.0, 0u64);
    for i in 0..chosen.len() {
        for j in i + 1..chosen.len() {
            let (a, b) = (&cands[chosen[i].index], &cands[chosen[j].index]);
            sum += 1.0 - similarity(a, b, &sets[i], &sets[j]);
            pairs += 1;
        }
    }
    sum / pairs as f64
}

/// BM25 of each candidate for `terms`, with IDF over the candidates.
fn bm25(terms: &[String], cands: &[Candidate]) -> Vec<f64> {
    if terms.is_empty() || cands.is_empty() {
        return vec![0.0; cands.len()];
    }
    let q = terms.len();
    // Each candidate's count of each query term, row by row (a query has a few terms: a
    // substring search for each beats splitting and hashing every token).
    let mut tf = vec![0u32; cands.len() * q];
    let mut lens = Vec::with_capacity(cands.len());
    let query = QueryTerms::new(terms);
    for (i, c) in cands.iter().enumerate() {
        for (j, finder) in query.finders.iter().enumerate() {
            tf[i * q + j] = count_in(&c.terms, finder);
        }
        lens.push(f64::from(token_count(&c.terms)));
    }
    let n = cands.len() as f64;
    let avgdl = (lens.iter().sum::<f64>() / n).max(1.0);
    let idf: Vec<f64> = (0..q)
        .map(|j| {
            let df = tf.chunks_exact(q).filter(|row| row[j] > 0).count() as f64;
            (1.0 + (n - df + 0.5) / (df + 0.5)).ln()
        })
        .collect();
    tf.chunks_exact(q)
        .zip(&lens)
        .map(|(row, &dl)| {
            row.iter()
                .zip(&idf)
                .map(|(&f, idf)| {
                    if f == 0 {
                        0.0
                    } else {
                        let f = f64::from(f);
                        idf * f * (BM25_K1 + 1.0) / (f + BM25_K1 * (1.0 - BM25_B + BM25_B * dl / avgdl))
                    }
                })
                .sum()
        })
        .collect()
}

/// Min-max normalization to [0, 1]; when every value is equal, positive values give 1.
fn normalize(xs: &[f64]) -> Vec<f64> {
    let some: Vec<Option<f64>> = xs.iter().copied().map(Some).collect();
    normalize_some(&some)
}

/// [`normalize`] over the present values; absent ones are 0.
fn normalize_some(xs: &[Option<f64>]) -> Vec<f64> {
    let present = xs.iter().flatten();
    let (lo, hi) = present.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    xs.iter()
        .map(|x| match *x {
            None => 0.0,
            Some(x) if hi > lo => (x - lo) / (hi - lo),
            Some(x) => f64::from(u8::from(x > 0.0)),
        })
        .collect()
}

/// The episode's content hash: SHA-256 of its canonical JSON (keys sorted by serde_json's map).
pub fn content_hash(value: &serde_json::Value) -> String {
    use sha2::{Digest, Sha256};
    let text = serde_json::to_string(value).expect("a JSON value serializes");
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn occurrences(terms: &str, term: &str) -> u32 {
        count_in(terms, &memchr::memmem::Finder::new(term))
    }

    #[test]
    fn whole_tokens_are_counted_not_their_prefixes_or_suffixes() {
        let t = "w1 w10 aw1 w1 w1x w1";
        assert_eq!(occurrences(t, "w1"), 3);
        assert_eq!(occurrences(t, "w10"), 1);
        assert_eq!(occurrences(t, "w"), 0);
        assert_eq!(occurrences("", "w1"), 0);
        assert_eq!(occurrences("w1", ""), 0);
        assert_eq!(token_count(t), 6);
        assert_eq!(token_count(""), 0);
        assert_eq!(token_count(" a  b "), 2);
        assert_eq!(shared(&["a", "b", "d"], &["b", "c", "d", "e"]), 2);
        let (yz, y) = (["yz".to_string()], ["y".to_string()]);
        assert!(
            QueryTerms::new(&yz).any_in(&cand(1, "x yz")) && !QueryTerms::new(&y).any_in(&cand(1, "x yz"))
        );
    }

    fn cand(seq: i64, terms: &str) -> Candidate {
        Candidate {
            seq,
            id: Uuid::from_u128(seq as u128),
            at_ms: 0,
            importance: 0.5,
            outcome: None,
            terms: terms.into(),
            vector: None,
        }
    }

    fn ranking(text: &str, lambda: Option<f64>, k: usize) -> Ranking {
        Ranking {
            terms: query_terms(text, MAX_QUERY_TERMS),
            vector: None,
            weights: Weights::default(),
            half_life_ms: DEFAULT_HALF_LIFE_MS,
            lambda,
            k,
            now_ms: 0,
        }
    }

    #[test]
    fn tokens_are_lowercased_letter_and_digit_runs() {
        let t: Vec<String> = tokens("Deploy-API v2.1: Ünïcode naïve_x  ß").collect();
        assert_eq!(t, ["deploy", "api", "v2", "1", "ünïcode", "naïve", "x", "ß"]);
        assert_eq!(query_terms("a b a B c", 2), ["a", "b"]);
        let long: Vec<String> = tokens(&"é".repeat(80)).collect();
        assert_eq!(long[0].len(), 100, "cut at a character boundary at most 100 bytes in");
    }

    #[test]
    fn bm25_prefers_the_rarer_term_and_ties_go_to_the_newer() {
        let cands = [cand(1, "deploy fix"), cand(2, "deploy"), cand(3, "deploy rollback"), cand(4, "deploy")];
        let (out, _) = rank(&ranking("rollback", None, 4), &cands);
        assert_eq!(cands[out[0].index].seq, 3);
        assert_eq!(out[0].components.text, 1.0);
        // Every other candidate scores the same: newer first.
        let rest: Vec<i64> = out[1..].iter().map(|r| cands[r.index].seq).collect();
        assert_eq!(rest, [4, 2, 1]);
    }

    #[test]
    fn mmr_with_lambda_one_is_score_order_and_lower_lambda_spreads() {
        let cands = [cand(1, "alpha beta"), cand(2, "alpha beta"), cand(3, "alpha gamma delta")];
        let plain = rank(&ranking("alpha beta", None, 3), &cands).0;
        let one = rank(&ranking("alpha beta", Some(1.0), 3), &cands).0;
        assert_eq!(plain, one);
        let (spread, div) = rank(&ranking("alpha beta", Some(0.1), 2), &cands);
        let ids: Vec<i64> = spread.iter().map(|r| cands[r.index].seq).collect();
        assert_eq!(ids, [2, 3], "the near-duplicate of the best is passed over");
        assert!(div > 0.5);
    }

    #[test]
    fn vectors_round_trip_and_unit() {
        let v = unit(&[3.0, 4.0]);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert_eq!(vector_from(&vector_bytes(&v)).unwrap(), v);
        assert_eq!(vector_from(&[1, 2, 3]), None);
        assert_eq!(unit(&[0.0, 0.0]), [0.0, 0.0]);
    }
}
