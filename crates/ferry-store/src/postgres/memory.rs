//! Episodic memory as PostgreSQL statements. An episode's tokens and generated `tsvector` live
//! on its row; tag and vector rows are written in the same transaction. A write locks its
//! namespaces' counter rows first (in name order), so a batch's idempotency, conflict and
//! dimension checks see a settled namespace, and a refusal rolls back its own transaction only.

use super::{PgStore, RowExt, pg_err};
use crate::contract::{
    CandidateQuery, CandidateSet, DerivedPass, EpisodeList, MemoryStore, PassMode, PassOutcome,
};
use crate::effects::Effects;
use crate::memory_rows::*;
use async_trait::async_trait;
use ferry_core::memory::{AddOutcome, Candidate, Episode, EpisodePatch, NewEpisode};
use ferry_core::wire::{MemoryStats, Mismatches, episode_not_found};
use ferry_core::{EventType, Result, Timestamp};
use futures_util::future::try_join_all;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use tokio_postgres::GenericClient;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

type Boxed = Box<dyn ToSql + Sync + Send>;

fn boxed(params: Vec<Param>) -> Vec<Boxed> {
    params
        .into_iter()
        .map(|p| -> Boxed {
            match p {
                Param::Text(t) => Box::new(t),
                Param::Int(i) => Box::new(i),
                Param::Texts(v) => Box::new(v),
            }
        })
        .collect()
}

fn refs(b: &[Boxed]) -> Vec<&(dyn ToSql + Sync)> {
    b.iter().map(|p| p.as_ref() as &(dyn ToSql + Sync)).collect()
}

fn row(r: &tokio_postgres::Row) -> Result<EpisodeRow> {
    Ok((
        r.col(0)?,
        r.col(1)?,
        r.col(2)?,
        r.col(3)?,
        r.col(4)?,
        r.col(5)?,
        r.col(6)?,
        r.col(7)?,
        r.col(8)?,
        r.col(9)?,
        r.col(10)?,
    ))
}

async fn load<C: GenericClient + Sync>(c: &C, id: Uuid, lock: bool) -> Result<Option<(i64, Episode)>> {
    let sql = format!(
        "SELECT {EPISODE_COLS} FROM episodes e WHERE e.id = $1{}",
        if lock { " FOR UPDATE" } else { "" }
    );
    match c.query_opt(&sql, &[&id]).await.map_err(pg_err)? {
        Some(r) => episode_from(row(&r)?).map(Some),
        None => Ok(None),
    }
}

async fn stored_for<C: GenericClient + Sync>(c: &C, e: &NewEpisode) -> Result<Stored> {
    if let Some(k) = &e.idempotency_key {
        let r = c
            .query_opt(
                "SELECT id, body_hash FROM episodes WHERE namespace = $1 AND idempotency_key = $2",
                &[&e.namespace, k],
            )
            .await
            .map_err(pg_err)?;
        if let Some(r) = r {
            return Ok(Some((r.col(0)?, r.col(1)?)));
        }
    }
    let r =
        c.query_opt("SELECT id, body_hash FROM episodes WHERE id = $1", &[&e.id]).await.map_err(pg_err)?;
    r.map(|r| Ok((r.col(0)?, r.col(1)?))).transpose()
}

async fn write_derived<C: GenericClient + Sync>(c: &C, seq: i64, d: &Derived) -> Result<()> {
    fault("fts", &d.tags)?;
    c.execute("UPDATE episodes SET terms = $2 WHERE seq = $1", &[&seq, &d.terms]).await.map_err(pg_err)?;
    write_side_rows(c, seq, d).await
}

/// An episode's tag and vector rows (its tokens are in its own row).
async fn write_side_rows<C: GenericClient + Sync>(c: &C, seq: i64, d: &Derived) -> Result<()> {
    fault("tags", &d.tags)?;
    if !d.tags.is_empty() {
        c.execute("INSERT INTO episode_tags (seq, tag) SELECT $1, unnest($2::text[])", &[&seq, &d.tags])
            .await
            .map_err(pg_err)?;
    }
    fault("embeddings", &d.tags)?;
    if let Some(v) = &d.vector {
        c.execute("INSERT INTO episode_vectors (seq, vec) VALUES ($1, $2)", &[&seq, v])
            .await
            .map_err(pg_err)?;
    }
    Ok(())
}

async fn delete_derived<C: GenericClient + Sync>(c: &C, seq: i64) -> Result<()> {
    c.execute("UPDATE episodes SET terms = '' WHERE seq = $1", &[&seq]).await.map_err(pg_err)?;
    c.execute("DELETE FROM episode_tags WHERE seq = $1", &[&seq]).await.map_err(pg_err)?;
    c.execute("DELETE FROM episode_vectors WHERE seq = $1", &[&seq]).await.map_err(pg_err)?;
    Ok(())
}

/// Locks the counter rows of `namespaces` (creating them), in name order; their dimensions.
async fn lock_namespaces<C: GenericClient + Sync>(
    c: &C,
    namespaces: BTreeSet<&str>,
) -> Result<HashMap<String, Option<u32>>> {
    let mut out = HashMap::new();
    for ns in namespaces {
        c.execute(
            "INSERT INTO memory_namespaces (namespace, episodes, bytes) VALUES ($1, 0, 0) ON CONFLICT DO NOTHING",
            &[&ns],
        )
        .await
        .map_err(pg_err)?;
        let r = c
            .query_one("SELECT dims FROM memory_namespaces WHERE namespace = $1 FOR UPDATE", &[&ns])
            .await
            .map_err(pg_err)?;
        let dims: Option<i32> = r.col(0)?;
        out.insert(ns.to_string(), dims.map(|d| d as u32));
    }
    Ok(out)
}

/// The batch's namespaces' embedding dimensions, their counter rows created if absent. No row is
/// locked unless this batch may fix a dimension (a namespace without one, and an embedding in
/// the batch): then all of them are, in order, before deciding, as deletes and retention lock
/// them. Otherwise the counters are locked only by the update at the end of `add`, so adds to
/// one namespace overlap but for their commits.
async fn batch_dims<C: GenericClient + Sync>(
    c: &C,
    batch: &[NewEpisode],
) -> Result<HashMap<String, Option<u32>>> {
    let namespaces: BTreeSet<&str> = batch.iter().map(|e| e.namespace.as_str()).collect();
    let mut out = HashMap::new();
    for ns in &namespaces {
        c.execute(
            "INSERT INTO memory_namespaces (namespace, episodes, bytes) VALUES ($1, 0, 0) ON CONFLICT DO NOTHING",
            &[ns],
        )
        .await
        .map_err(pg_err)?;
        let r = c
            .query_one("SELECT dims FROM memory_namespaces WHERE namespace = $1", &[ns])
            .await
            .map_err(pg_err)?;
        let dims: Option<i32> = r.col(0)?;
        out.insert(ns.to_string(), dims.map(|d| d as u32));
    }
    let fixes =
        batch.iter().any(|e| e.embedding.is_some() && out.get(&e.namespace).is_some_and(Option::is_none));
    if fixes {
        return lock_namespaces(c, namespaces).await;
    }
    Ok(out)
}

/// Inserts an episode with its tokens (the `tsvector` is generated from them) and writes its tag
/// and vector rows; `None` when a concurrent call stored its key or id first.
async fn insert<C: GenericClient + Sync>(
    c: &C,
    now: i64,
    e: &NewEpisode,
    d: &Derived,
) -> Result<Option<i64>> {
    fault("fts", &d.tags)?;
    let k = cols(e, now);
    let seq: Option<i64> = c
        .query_opt(
            "INSERT INTO episodes (id, namespace, agent, domain, task_type, outcome, at, importance, tags, version,
                 created_at, updated_at, idempotency_key, body_hash, bytes, content, embedding, terms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, $10, $11, $12, $13, $14, $15, $16)
             ON CONFLICT DO NOTHING RETURNING seq",
            &[
                &e.id,
                &e.namespace,
                &e.content.agent,
                &e.content.domain,
                &e.content.task_type,
                &k.outcome,
                &k.at,
                &e.importance,
                &k.tags,
                &now,
                &e.idempotency_key,
                &e.body_hash,
                &e.bytes,
                &k.content,
                &k.embedding,
                &d.terms,
            ],
        )
        .await
        .map_err(pg_err)?
        .map(|r| r.col(0))
        .transpose()?;
    if let Some(seq) = seq {
        write_side_rows(c, seq, d).await?;
    }
    Ok(seq)
}

async fn add<C: GenericClient + Sync>(
    c: &C,
    now: i64,
    batch: &[NewEpisode],
    fx: &mut Effects,
) -> Result<Vec<AddOutcome>> {
    let dims = batch_dims(c, batch).await?;
    // Statements issued together are pipelined on the one connection: a batch costs a few
    // round trips, not several per episode.
    let stored = try_join_all(batch.iter().map(|e| stored_for(c, e))).await?;
    let plan = decide(batch, &stored, &dims, batch.len() == 1)?;
    let fresh: Vec<(&NewEpisode, Derived)> = batch
        .iter()
        .zip(&plan)
        .filter(|(_, dup)| dup.is_none())
        .map(|(e, _)| (e, derived(&e.namespace, &e.content, &e.tags, e.embedding.as_deref())))
        .collect();
    let mut seqs = try_join_all(fresh.iter().map(|(e, d)| insert(c, now, e, d))).await?.into_iter();
    let mut out = Vec::with_capacity(batch.len());
    let mut counts: BTreeMap<&str, (i64, i64, Option<i32>)> = BTreeMap::new();
    for (e, dup) in batch.iter().zip(plan) {
        if let Some(id) = dup {
            out.push(AddOutcome { id, created_at: None, duplicate: true });
            continue;
        }
        let Some(seq) = seqs.next() else { return Err(corrupt_conflict(e)) };
        if seq.is_none() {
            // A concurrent call stored this key (or id) and committed after this one looked: the
            // answer it would have had coming second.
            match stored_for(c, e).await? {
                Some((id, hash)) if hash == e.body_hash => {
                    out.push(AddOutcome { id, created_at: None, duplicate: true });
                    continue;
                }
                Some((id, _)) => return Err(stored_conflict(e, id)),
                None => return Err(corrupt_conflict(e)),
            }
        }
        let n = counts.entry(e.namespace.as_str()).or_insert((0, 0, None));
        n.0 += 1;
        n.1 += e.bytes;
        n.2 = n.2.or(e.embedding.as_ref().map(|v| v.len() as i32));
        fx.event(added_event(e, now));
        out.push(AddOutcome { id: e.id, created_at: Some(Timestamp(now)), duplicate: false });
    }
    // Counters last, in namespace order: their row locks are held only through the commit.
    for (ns, (n, bytes, d)) in counts {
        c.execute(
            "UPDATE memory_namespaces SET episodes = episodes + $2, bytes = bytes + $3, dims = COALESCE(dims, $4)
             WHERE namespace = $1",
            &[&ns, &n, &bytes, &d],
        )
        .await
        .map_err(pg_err)?;
    }
    Ok(out)
}

/// A conflict on insert whose stored row the next statement cannot see (it was deleted since).
fn corrupt_conflict(e: &NewEpisode) -> ferry_core::Error {
    ferry_core::Error::new(
        ferry_core::ErrorCode::Unavailable,
        format!("episode {} met a concurrent write of its key; send it again", e.id),
    )
}

async fn patch<C: GenericClient + Sync>(
    c: &C,
    now: i64,
    p: &EpisodePatch,
    fx: &mut Effects,
) -> Result<Episode> {
    let (seq, mut e) = load(c, p.id, true).await?.ok_or_else(|| episode_not_found(p.id))?;
    if let Some(v) = p.if_version.filter(|v| *v != e.version) {
        return Err(precondition_failed(p.id, v, e.version));
    }
    let same_tags = p.tags.as_ref().is_none_or(|t| *t == e.tags);
    let same_importance = p.importance.is_none_or(|i| i == e.importance);
    if same_tags && same_importance {
        // Nothing changes: no new version, no event.
        return Ok(e);
    }
    if let Some(t) = &p.tags {
        e.tags = t.clone();
    }
    if let Some(i) = p.importance {
        e.importance = i;
    }
    e.version += 1;
    e.updated_at = Timestamp(now);
    let tags = serde_json::to_string(&e.tags).expect("tags");
    c.execute(
        "UPDATE episodes SET tags = $2, importance = $3, version = $4, updated_at = $5 WHERE seq = $1",
        &[&seq, &tags, &e.importance, &e.version, &now],
    )
    .await
    .map_err(pg_err)?;
    if let Some(tags) = &p.tags {
        c.execute("DELETE FROM episode_tags WHERE seq = $1", &[&seq]).await.map_err(pg_err)?;
        fault("tags", tags)?;
        c.execute("INSERT INTO episode_tags (seq, tag) SELECT $1, unnest($2::text[])", &[&seq, tags])
            .await
            .map_err(pg_err)?;
    }
    fx.event(event(
        EventType::EpisodeUpdated,
        &e.namespace,
        now,
        json!({ "id": e.id, "version": e.version }),
    ));
    Ok(e)
}

async fn delete<C: GenericClient + Sync>(
    c: &C,
    now: i64,
    seq: i64,
    reason: &str,
    fx: &mut Effects,
) -> Result<bool> {
    let Some(r) = c
        .query_opt("DELETE FROM episodes WHERE seq = $1 RETURNING id, namespace, bytes", &[&seq])
        .await
        .map_err(pg_err)?
    else {
        return Ok(false);
    };
    let (id, ns, bytes): (Uuid, String, i64) = (r.col(0)?, r.col(1)?, r.col(2)?);
    c.execute("DELETE FROM episode_tags WHERE seq = $1", &[&seq]).await.map_err(pg_err)?;
    c.execute("DELETE FROM episode_vectors WHERE seq = $1", &[&seq]).await.map_err(pg_err)?;
    c.execute(
        "UPDATE memory_namespaces SET episodes = episodes - 1, bytes = bytes - $2 WHERE namespace = $1",
        &[&ns, &bytes],
    )
    .await
    .map_err(pg_err)?;
    fx.event(event(EventType::EpisodeDeleted, &ns, now, json!({ "id": id, "reason": reason })));
    Ok(true)
}

/// Deletes the oldest `batch` episodes stored before `before_ms`, in a few set statements; their
/// namespaces' counters last, one by one in order, so adds wait for them only through the
/// commit (a statement per episode held every namespace's counter for seconds under load).
async fn retire<C: GenericClient + Sync>(
    c: &C,
    now: i64,
    before_ms: i64,
    batch: usize,
    fx: &mut Effects,
) -> Result<u64> {
    let rows = c
        .query(
            "DELETE FROM episodes WHERE seq IN
                 (SELECT seq FROM episodes WHERE created_at < $1 ORDER BY created_at LIMIT $2)
             RETURNING seq, id, namespace, bytes",
            &[&before_ms, &(batch as i64)],
        )
        .await
        .map_err(pg_err)?;
    let mut seqs = Vec::with_capacity(rows.len());
    let mut counts: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut gone = Vec::with_capacity(rows.len());
    for r in &rows {
        let (seq, id, ns, bytes): (i64, Uuid, String, i64) = (r.col(0)?, r.col(1)?, r.col(2)?, r.col(3)?);
        seqs.push(seq);
        let n = counts.entry(ns.clone()).or_default();
        (n.0, n.1) = (n.0 + 1, n.1 + bytes);
        gone.push((seq, id, ns));
    }
    if seqs.is_empty() {
        return Ok(0);
    }
    for table in ["episode_tags", "episode_vectors"] {
        c.execute(&format!("DELETE FROM {table} WHERE seq = ANY($1)"), &[&seqs]).await.map_err(pg_err)?;
    }
    for (ns, (n, bytes)) in &counts {
        c.execute(
            "UPDATE memory_namespaces SET episodes = episodes - $2, bytes = bytes - $3 WHERE namespace = $1",
            &[ns, n, bytes],
        )
        .await
        .map_err(pg_err)?;
    }
    // Events in the order the episodes were stored.
    gone.sort_by_key(|g| g.0);
    for (_, id, ns) in gone {
        fx.event(event(EventType::EpisodeDeleted, &ns, now, json!({ "id": id, "reason": "retention" })));
    }
    Ok(seqs.len() as u64)
}

async fn read_candidates<C: GenericClient + Sync>(
    c: &C,
    sql: &str,
    params: Vec<Param>,
) -> Result<Vec<Candidate>> {
    let b = boxed(params);
    let rows = c.query(sql, &refs(&b)).await.map_err(pg_err)?;
    rows.iter()
        .map(|r| {
            candidate_from((r.col(0)?, r.col(1)?, r.col(2)?, r.col(3)?, r.col(4)?, r.col(5)?, r.col(6)?))
        })
        .collect()
}

/// A candidate's columns, read from rows aliased `e`.
fn candidate_cols(q: &CandidateQuery) -> String {
    let vec_col =
        if q.vectors { "(SELECT vec FROM episode_vectors v WHERE v.seq = e.seq)" } else { "NULL::bytea" };
    format!("e.seq, e.id, e.at, e.importance, e.outcome::text, e.terms::text, {vec_col}")
}

/// The filter, and with terms the match, as one condition on rows aliased `e`.
fn condition(sql: &mut Sql, q: &CandidateQuery) -> String {
    let mut cond = sql.filter(&q.filter);
    if let Some(terms) = &q.terms {
        let m = sql.bind(Param::Text(ts_query(terms)));
        cond.push_str(&format!(" AND e.tsv @@ {m}::text::tsquery"));
    }
    cond
}

/// The span of the newest `rows` filter-passing episodes: `(oldest, newest position, count)`,
/// read from the filter's index alone.
fn span_sql(q: &CandidateQuery, rows: usize) -> (String, Vec<Param>) {
    let mut sql = Sql::new(true);
    let cond = sql.filter(&q.filter);
    let rows = sql.bind(Param::Int(rows as i64));
    let text = format!(
        "SELECT min(seq), max(seq), count(*) FROM (SELECT e.seq FROM episodes e WHERE {cond} ORDER BY e.seq DESC LIMIT {rows}) s"
    );
    (text, sql.params)
}

/// Up to `limit` filter-passing (and, with terms, term-matching) episodes with positions in
/// `[lo, hi]`, newest first. Both bounds come from the filter's own episodes, so whatever plan
/// PostgreSQL picks (a walk along an index, or the terms' postings) stays inside them: it cannot
/// walk the whole table's newest rows past other namespaces' episodes.
fn range_sql(q: &CandidateQuery, (lo, hi): (i64, i64), limit: usize) -> (String, Vec<Param>) {
    let mut sql = Sql::new(true);
    let cond = condition(&mut sql, q);
    let (lo, hi) = (sql.bind(Param::Int(lo)), sql.bind(Param::Int(hi)));
    let lim = sql.bind(Param::Int(limit as i64));
    let text = format!(
        "SELECT {} FROM episodes e WHERE {cond} AND e.seq BETWEEN {lo} AND {hi} ORDER BY e.seq DESC LIMIT {lim}",
        candidate_cols(q)
    );
    (text, sql.params)
}

/// The position of the `nth` newest filter-passing episode (from 1), read from the filter's
/// index alone; with `nth = max_scanned + 1`, the scan window's edge: it and older ones are out
/// of reach.
fn nth_sql(q: &CandidateQuery, nth: usize) -> (String, Vec<Param>) {
    let mut sql = Sql::new(true);
    let cond = sql.filter(&q.filter);
    let off = sql.bind(Param::Int(nth.saturating_sub(1) as i64));
    (
        format!("SELECT e.seq FROM episodes e WHERE {cond} ORDER BY e.seq DESC LIMIT 1 OFFSET {off}"),
        sql.params,
    )
}

/// Filter-passing episodes searched first: a common term fills its candidates among them.
const FIRST_SPAN: usize = 4_000;

/// The candidates of `q`, cut to its scan window (the newest `max_scanned` filter-passing
/// episodes): the terms' matches among the newest few thousand first; only if they do not fill
/// the candidates, the window's edge and the matches between it and them.
async fn candidates<C: GenericClient + Sync>(c: &C, q: &CandidateQuery) -> Result<CandidateSet> {
    let need = q.limit + 1;
    let first = first_span(q);
    let Some((lo, hi, n)) = span(c, q, first).await? else {
        return Ok(CandidateSet::default());
    };
    let (text, params) = range_sql(q, (lo, hi), need);
    let mut found = read_candidates(c, &text, params).await?;
    if q.terms.is_none() || found.len() >= need || (n as usize) < first {
        return Ok(cut(found, q.limit, false));
    }
    let edge = position(c, nth_sql(q, q.max_scanned + 1)).await?;
    if first < q.max_scanned {
        let (text, params) = range_sql(q, (edge.map_or(i64::MIN, |e| e + 1), lo - 1), need - found.len());
        found.extend(read_candidates(c, &text, params).await?);
    }
    Ok(cut(found, q.limit, edge.is_some()))
}

/// How many of the filter's newest episodes a search reads first: with terms, enough for a
/// common term to fill its candidates; without, the candidates themselves.
fn first_span(q: &CandidateQuery) -> usize {
    let need = q.limit + 1;
    if q.terms.is_some() { FIRST_SPAN.max(need).min(q.max_scanned) } else { need }
}

/// The oldest and newest position of the filter's newest `first` episodes and how many there
/// are; `None` when no episode passes the filter.
async fn span<C: GenericClient + Sync>(
    c: &C,
    q: &CandidateQuery,
    first: usize,
) -> Result<Option<(i64, i64, i64)>> {
    let (text, params) = span_sql(q, first);
    let b = boxed(params);
    let r = c.query_one(&text, &refs(&b)).await.map_err(pg_err)?;
    let (lo, hi, n): (Option<i64>, Option<i64>, i64) = (r.col(0)?, r.col(1)?, r.col(2)?);
    Ok(lo.zip(hi).map(|(lo, hi)| (lo, hi, n)))
}

/// The position a [`nth_sql`] statement finds, if any.
async fn position<C: GenericClient + Sync>(
    c: &C,
    (text, params): (String, Vec<Param>),
) -> Result<Option<i64>> {
    let b = boxed(params);
    match c.query_opt(&text, &refs(&b)).await.map_err(pg_err)? {
        Some(r) => Ok(Some(r.col(0)?)),
        None => Ok(None),
    }
}

async fn list<C: GenericClient + Sync>(c: &C, l: &EpisodeList) -> Result<(Vec<Episode>, Option<i64>)> {
    let (text, params) = list_sql(true, l);
    let b = boxed(params);
    let rows = c.query(&text, &refs(&b)).await.map_err(pg_err)?;
    let mut out: Vec<(i64, Episode)> = rows.iter().map(|r| episode_from(row(r)?)).collect::<Result<_>>()?;
    let next = (out.len() > l.limit).then(|| {
        out.truncate(l.limit);
        out.last().map(|(s, _)| *s)
    });
    Ok((out.into_iter().map(|(_, e)| e).collect(), next.flatten()))
}

async fn stats<C: GenericClient + Sync>(
    c: &C,
    ns: Option<String>,
    allowed: Option<Vec<String>>,
) -> Result<MemoryStats> {
    let names: Vec<String> = match (ns, allowed) {
        (Some(n), _) => vec![n],
        (None, Some(list)) => list,
        (None, None) => c
            .query("SELECT namespace FROM memory_namespaces", &[])
            .await
            .map_err(pg_err)?
            .iter()
            .map(|r| r.col(0))
            .collect::<Result<_>>()?,
    };
    let mut out = MemoryStats::default();
    let mut dims: Vec<u32> = Vec::new();
    for n in &names {
        let Some(r) = c
            .query_opt("SELECT episodes, bytes, dims FROM memory_namespaces WHERE namespace = $1", &[n])
            .await
            .map_err(pg_err)?
        else {
            continue;
        };
        out.episodes += r.col::<i64>(0)? as u64;
        out.bytes += r.col::<i64>(1)? as u64;
        dims.extend(r.col::<Option<i32>>(2)?.map(|d| d as u32));
        for (order, oldest) in [("ASC", true), ("DESC", false)] {
            let at = c
                .query_opt(
                    &format!(
                        "SELECT created_at FROM episodes WHERE seq = (SELECT seq FROM episodes WHERE namespace = $1 ORDER BY seq {order} LIMIT 1)"
                    ),
                    &[n],
                )
                .await
                .map_err(pg_err)?
                .map(|r| r.col::<i64>(0))
                .transpose()?;
            if let Some(at) = at {
                let slot = if oldest { &mut out.oldest_at } else { &mut out.newest_at };
                if slot.is_none_or(|t| if oldest { at < t.0 } else { at > t.0 }) {
                    *slot = Some(Timestamp(at));
                }
            }
        }
    }
    dims.dedup();
    out.embedding_dims = if dims.len() == 1 { dims.first().copied() } else { None };
    Ok(out)
}

async fn pass<C: GenericClient + Sync>(c: &C, p: &DerivedPass) -> Result<PassOutcome> {
    let rows = c
        .query(
            "SELECT e.seq, e.tags, e.content, e.embedding, e.terms,
                    ARRAY(SELECT t.tag FROM episode_tags t WHERE t.seq = e.seq ORDER BY t.tag),
                    (SELECT vec FROM episode_vectors v WHERE v.seq = e.seq), e.namespace
             FROM episodes e WHERE ($1::text IS NULL OR e.namespace = $1) AND e.seq > $2 ORDER BY e.seq LIMIT $3",
            &[&p.namespace, &p.after, &(p.batch as i64)],
        )
        .await
        .map_err(pg_err)?;
    let mut out = PassOutcome::default();
    let mut last = None;
    for r in &rows {
        let seq: i64 = r.col(0)?;
        last = Some(seq);
        let (_, e) = episode_from((
            seq,
            Uuid::nil(),
            String::new(),
            0,
            0,
            0,
            0.0,
            r.col(1)?,
            r.col(2)?,
            r.col(3)?,
            None,
        ))?;
        let ns: String = r.col(7)?;
        let want = derived(&ns, &e.content, &e.tags, e.embedding.as_deref());
        let (terms, tags, vector): (String, Vec<String>, Option<Vec<u8>>) = (r.col(4)?, r.col(5)?, r.col(6)?);
        let mut m = Mismatches::default();
        if terms != want.terms {
            m.fts += 1;
        }
        let mut want_tags = want.tags.clone();
        want_tags.sort();
        if tags != want_tags {
            m.tags += 1;
        }
        if vector != want.vector {
            m.embeddings += 1;
        }
        out.checked += 1;
        out.mismatches.add(m);
        if p.mode == PassMode::Rewrite || (p.mode == PassMode::Repair && m.total() > 0) {
            delete_derived(c, seq).await?;
            write_derived(c, seq, &want).await?;
            out.repaired += if p.mode == PassMode::Rewrite { 1 } else { m.total() };
        }
    }
    let full = rows.len() >= p.batch;
    if p.namespace.is_none() {
        let upto = if full { last.unwrap_or(i64::MAX) } else { i64::MAX };
        for (table, kind) in [("episode_tags", "tags"), ("episode_vectors", "embeddings")] {
            let sql = format!(
                "SELECT DISTINCT seq FROM {table} x WHERE seq > $1 AND seq <= $2
                 AND NOT EXISTS (SELECT 1 FROM episodes e WHERE e.seq = x.seq)"
            );
            let ids: Vec<i64> = c
                .query(&sql, &[&p.after, &upto])
                .await
                .map_err(pg_err)?
                .iter()
                .map(|r| r.col(0))
                .collect::<Result<_>>()?;
            let n = ids.len() as u64;
            if kind == "tags" {
                out.mismatches.tags += n;
            } else {
                out.mismatches.embeddings += n;
            }
            if p.mode != PassMode::Check && n > 0 {
                c.execute(&format!("DELETE FROM {table} WHERE seq = ANY($1)"), &[&ids])
                    .await
                    .map_err(pg_err)?;
                out.repaired += n;
            }
        }
    }
    out.next = if full { last } else { None };
    Ok(out)
}

/// Violations of the memory invariants.
pub async fn invariants(c: &deadpool_postgres::ClientWrapper) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (sql, what) in MEMORY_INVARIANTS {
        for r in c.query(*sql, &[]).await.map_err(pg_err)? {
            out.push(format!("{what}: {}", r.col::<String>(0)?));
        }
    }
    Ok(out)
}

impl PgStore {
    /// `EXPLAIN` of the statements a search for `q` may run (the first span and its matches,
    /// the scan window's edge, the matches past the span; on the data as it is) and of the
    /// list page `l`, by name, on a search connection (its settings listed): tests pin their
    /// plan shapes, and an operator sees why a search is slow.
    pub async fn explain_memory(
        &self,
        q: &CandidateQuery,
        l: &EpisodeList,
    ) -> Result<Vec<(&'static str, String)>> {
        let (q, l) = (q.clone(), l.clone());
        self.search_read(move |c| {
            Box::pin(async move {
                let explain = |(text, params): (String, Vec<Param>)| async move {
                    let b = boxed(params);
                    let rows =
                        c.query(&format!("EXPLAIN (SETTINGS) {text}"), &refs(&b)).await.map_err(pg_err)?;
                    let lines: Vec<String> = rows.iter().map(|r| r.col(0)).collect::<Result<_>>()?;
                    Ok::<_, ferry_core::Error>(lines.join("\n"))
                };
                let first = first_span(&q);
                let (lo, hi, _) = span(&**c, &q, first).await?.unwrap_or((0, 0, 0));
                let edge = position(&**c, nth_sql(&q, q.max_scanned + 1)).await?.unwrap_or(i64::MIN);
                Ok(vec![
                    ("span", explain(span_sql(&q, first)).await?),
                    ("first", explain(range_sql(&q, (lo, hi), q.limit + 1)).await?),
                    ("edge", explain(nth_sql(&q, q.max_scanned + 1)).await?),
                    ("rest", explain(range_sql(&q, (edge, lo - 1), q.limit + 1)).await?),
                    ("list", explain(list_sql(true, &l)).await?),
                ])
            })
        })
        .await
    }
}

#[async_trait]
impl MemoryStore for PgStore {
    async fn add_episodes(&self, episodes: Vec<NewEpisode>) -> Result<Vec<AddOutcome>> {
        self.tx("memory.add", move |tx, now, fx| boxed!(add(&**tx, now, &episodes, fx).await)).await
    }

    async fn get_episode(&self, id: Uuid) -> Result<Option<Episode>> {
        self.read(move |c| boxed!(Ok(load(&**c, id, false).await?.map(|(_, e)| e)))).await
    }

    async fn get_episodes(&self, ids: Vec<Uuid>) -> Result<Vec<Episode>> {
        self.search_read(move |c| {
            boxed!({
                let rows = c
                    .query(
                        &format!(
                            "SELECT {EPISODE_COLS} FROM unnest($1::uuid[]) WITH ORDINALITY AS q(id, n)
                             JOIN episodes e ON e.id = q.id ORDER BY q.n"
                        ),
                        &[&ids],
                    )
                    .await
                    .map_err(pg_err)?;
                rows.iter().map(|r| episode_from(row(r)?).map(|(_, e)| e)).collect()
            })
        })
        .await
    }

    async fn list_episodes(&self, l: EpisodeList) -> Result<(Vec<Episode>, Option<i64>)> {
        self.read(move |c| boxed!(list(&**c, &l).await)).await
    }

    async fn patch_episode(&self, p: EpisodePatch) -> Result<Episode> {
        self.tx("memory.update", move |tx, now, fx| boxed!(patch(&**tx, now, &p, fx).await)).await
    }

    async fn delete_episode(&self, id: Uuid) -> Result<bool> {
        self.tx("memory.delete", move |tx, now, fx| {
            boxed!({
                // The namespace's counter row first, as every memory write takes it.
                let Some((seq, e)) = load(&**tx, id, false).await? else { return Ok(false) };
                lock_namespaces(&**tx, BTreeSet::from([e.namespace.as_str()])).await?;
                delete(&**tx, now, seq, "request", fx).await
            })
        })
        .await
    }

    async fn memory_candidates(&self, q: CandidateQuery) -> Result<CandidateSet> {
        self.search_read(move |c| boxed!(candidates(&**c, &q).await)).await
    }

    async fn memory_stats(&self, ns: Option<String>, allowed: Option<Vec<String>>) -> Result<MemoryStats> {
        self.read(move |c| boxed!(stats(&**c, ns, allowed).await)).await
    }

    async fn memory_pass(&self, p: DerivedPass) -> Result<PassOutcome> {
        if p.mode == PassMode::Check {
            return self.read(move |c| boxed!(pass(&**c, &p).await)).await;
        }
        self.tx("memory.repair", move |tx, _, _| boxed!(pass(&**tx, &p).await)).await
    }

    async fn retire_episodes(&self, before_ms: i64, batch: usize) -> Result<u64> {
        self.tx("memory.retire", move |tx, now, fx| boxed!(retire(&**tx, now, before_ms, batch, fx).await))
            .await
    }
}
