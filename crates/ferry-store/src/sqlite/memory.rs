//! Episodic memory as SQL over SQLite: an episode, its scan row (what ranking reads), its FTS5
//! row (rowid = the episode's `seq`; terms and facet tokens, no content), tag rows and unit
//! vector are written by one writer command, so they commit or roll back together; a batch is
//! decided before its first write.

use super::{SqliteStore, db_err};
use crate::contract::{
    CandidateQuery, CandidateSet, DerivedPass, EpisodeFilter, EpisodeList, MemoryStore, PassMode, PassOutcome,
};
use crate::effects::Effects;
use crate::memory_rows::*;
use async_trait::async_trait;
use ferry_core::memory::{AddOutcome, Episode, EpisodePatch, NewEpisode};
use ferry_core::wire::{MemoryStats, Mismatches, episode_not_found};
use ferry_core::{EventType, Result, Timestamp};
use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use serde_json::json;
use std::collections::HashMap;
use uuid::Uuid;

fn row(r: &rusqlite::Row) -> rusqlite::Result<EpisodeRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
    ))
}

fn values(params: Vec<Param>) -> Vec<Value> {
    params
        .into_iter()
        .map(|p| match p {
            Param::Text(t) => Value::Text(t),
            Param::Int(i) => Value::Integer(i),
            Param::Texts(_) => unreachable!("SQLite lists are expanded into single parameters"),
        })
        .collect()
}

fn load(conn: &Connection, id: Uuid) -> Result<Option<(i64, Episode)>> {
    conn.prepare_cached(&format!("SELECT {EPISODE_COLS} FROM episodes e WHERE e.id = ?1"))
        .and_then(|mut s| s.query_row([id], row).optional())
        .map_err(db_err)?
        .map(episode_from)
        .transpose()
}

fn stored_for(conn: &Connection, e: &NewEpisode) -> Result<Stored> {
    let by_key = match &e.idempotency_key {
        Some(k) => conn
            .prepare_cached(
                "SELECT id, body_hash FROM episodes WHERE namespace = ?1 AND idempotency_key = ?2",
            )
            .and_then(|mut s| s.query_row(params![e.namespace, k], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(db_err)?,
        None => None,
    };
    if by_key.is_some() {
        return Ok(by_key);
    }
    conn.prepare_cached("SELECT id, body_hash FROM episodes WHERE id = ?1")
        .and_then(|mut s| s.query_row([e.id], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(db_err)
}

fn namespace_dims(conn: &Connection, ns: &str) -> Result<Option<u32>> {
    Ok(conn
        .prepare_cached("SELECT dims FROM memory_namespaces WHERE namespace = ?1")
        .and_then(|mut s| s.query_row([ns], |r| r.get::<_, Option<u32>>(0)).optional())
        .map_err(db_err)?
        .flatten())
}

/// Writes an episode's derived rows; its episode row is written (the scan row copies from it).
fn write_derived(conn: &Connection, seq: i64, d: &Derived) -> Result<()> {
    fault("fts", &d.tags)?;
    conn.prepare_cached("INSERT INTO episode_fts (rowid, terms, facets) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| s.execute(params![seq, d.terms, d.facets]))
        .map_err(db_err)?;
    let scanned = conn
        .prepare_cached(
            "INSERT INTO episode_scan (seq, id, at, importance, outcome, terms)
             SELECT seq, id, at, importance, outcome, ?2 FROM episodes WHERE seq = ?1",
        )
        .and_then(|mut s| s.execute(params![seq, d.terms]))
        .map_err(db_err)?;
    assert_eq!(scanned, 1, "an episode's derived rows are written after it");
    fault("tags", &d.tags)?;
    for t in &d.tags {
        conn.prepare_cached("INSERT INTO episode_tags (seq, tag) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![seq, t]))
            .map_err(db_err)?;
    }
    fault("embeddings", &d.tags)?;
    if let Some(v) = &d.vector {
        conn.prepare_cached("INSERT INTO episode_vectors (seq, vec) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![seq, v]))
            .map_err(db_err)?;
    }
    Ok(())
}

fn delete_derived(conn: &Connection, seq: i64) -> Result<()> {
    for sql in [
        "DELETE FROM episode_fts WHERE rowid = ?1",
        "DELETE FROM episode_scan WHERE seq = ?1",
        "DELETE FROM episode_tags WHERE seq = ?1",
        "DELETE FROM episode_vectors WHERE seq = ?1",
    ] {
        conn.prepare_cached(sql).and_then(|mut s| s.execute([seq])).map_err(db_err)?;
    }
    Ok(())
}

fn count(conn: &Connection, ns: &str, episodes: i64, bytes: i64, dims: Option<u32>) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO memory_namespaces (namespace, episodes, bytes, dims) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (namespace) DO UPDATE SET episodes = episodes + excluded.episodes,
             bytes = bytes + excluded.bytes, dims = COALESCE(dims, excluded.dims)",
    )
    .and_then(|mut s| s.execute(params![ns, episodes, bytes, dims]))
    .map_err(db_err)?;
    Ok(())
}

/// Decides a batch, then writes it with its derived rows and events.
fn add(conn: &Connection, now: i64, batch: &[NewEpisode], fx: &mut Effects) -> Result<Vec<AddOutcome>> {
    let stored = batch.iter().map(|e| stored_for(conn, e)).collect::<Result<Vec<_>>>()?;
    let mut dims = HashMap::new();
    for e in batch {
        if !dims.contains_key(&e.namespace) {
            dims.insert(e.namespace.clone(), namespace_dims(conn, &e.namespace)?);
        }
    }
    let plan = decide(batch, &stored, &dims, batch.len() == 1)?;
    let mut out = Vec::with_capacity(batch.len());
    for (e, dup) in batch.iter().zip(plan) {
        if let Some(id) = dup {
            out.push(AddOutcome { id, created_at: None, duplicate: true });
            continue;
        }
        let c = cols(e, now);
        conn.prepare_cached(
            "INSERT INTO episodes (id, namespace, agent, domain, task_type, outcome, at, importance, tags, version,
                 created_at, updated_at, idempotency_key, body_hash, bytes, content, embedding)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1, ?10, ?10, ?11, ?12, ?13, ?14, ?15)",
        )
        .and_then(|mut s| {
            s.execute(params![
                e.id,
                e.namespace,
                e.content.agent,
                e.content.domain,
                e.content.task_type,
                c.outcome,
                c.at,
                e.importance,
                c.tags,
                now,
                e.idempotency_key,
                e.body_hash,
                e.bytes,
                c.content,
                c.embedding
            ])
        })
        .map_err(db_err)?;
        let seq = conn.last_insert_rowid();
        write_derived(conn, seq, &derived(&e.namespace, &e.content, &e.tags, e.embedding.as_deref()))?;
        count(conn, &e.namespace, 1, e.bytes, e.embedding.as_ref().map(|v| v.len() as u32))?;
        fx.event(added_event(e, now));
        out.push(AddOutcome { id: e.id, created_at: Some(Timestamp(now)), duplicate: false });
    }
    Ok(out)
}

fn patch(conn: &Connection, now: i64, p: &EpisodePatch, fx: &mut Effects) -> Result<Episode> {
    let (seq, mut e) = load(conn, p.id)?.ok_or_else(|| episode_not_found(p.id))?;
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
    conn.prepare_cached(
        "UPDATE episodes SET tags = ?2, importance = ?3, version = ?4, updated_at = ?5 WHERE seq = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![seq, serde_json::to_string(&e.tags).expect("tags"), e.importance, e.version, now])
    })
    .map_err(db_err)?;
    // Tags are facets and importance a scan column: the derived rows are written again.
    delete_derived(conn, seq)?;
    write_derived(conn, seq, &derived(&e.namespace, &e.content, &e.tags, e.embedding.as_deref()))?;
    fx.event(event(
        EventType::EpisodeUpdated,
        &e.namespace,
        now,
        json!({ "id": e.id, "version": e.version }),
    ));
    Ok(e)
}

fn delete(conn: &Connection, now: i64, seq: i64, reason: &str, fx: &mut Effects) -> Result<()> {
    let (id, ns, bytes): (Uuid, String, i64) = conn
        .prepare_cached("SELECT id, namespace, bytes FROM episodes WHERE seq = ?1")
        .and_then(|mut s| s.query_row([seq], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
        .map_err(db_err)?;
    conn.prepare_cached("DELETE FROM episodes WHERE seq = ?1")
        .and_then(|mut s| s.execute([seq]))
        .map_err(db_err)?;
    delete_derived(conn, seq)?;
    conn.prepare_cached(
        "UPDATE memory_namespaces SET episodes = episodes - 1, bytes = bytes - ?2 WHERE namespace = ?1",
    )
    .and_then(|mut s| s.execute(params![ns, bytes]))
    .map_err(db_err)?;
    fx.event(event(EventType::EpisodeDeleted, &ns, now, json!({ "id": id, "reason": reason })));
    Ok(())
}

/// `FROM … WHERE …` of the full-text rows matching `m` and the filter's times (which only the
/// scan row holds: it is joined as `s` when `scan`, or when the filter has times).
fn matching(sql: &mut Sql, m: String, f: &EpisodeFilter, scan: bool) -> String {
    let m = sql.bind(Param::Text(m));
    let mut text = String::from("FROM episode_fts f");
    if scan || f.since.is_some() || f.until.is_some() {
        text.push_str(" JOIN episode_scan s ON s.seq = f.rowid");
    }
    text.push_str(&format!(" WHERE episode_fts MATCH {m}"));
    if let Some(since) = f.since {
        text.push_str(&format!(" AND s.at >= {}", sql.bind(Param::Int(since))));
    }
    if let Some(until) = f.until {
        text.push_str(&format!(" AND s.at < {}", sql.bind(Param::Int(until))));
    }
    text
}

fn candidates(conn: &Connection, q: &CandidateQuery) -> Result<CandidateSet> {
    let Some(facets) = facet_match(&q.filter)? else {
        return Ok(CandidateSet { candidates: Vec::new(), truncated: false });
    };
    let Some(terms) = &q.terms else {
        return Ok(cut(matches(conn, q, facets, (None, None), q.limit + 1)?, q.limit, false));
    };
    let m = format!("terms : ({}) AND {facets}", fts_match(terms));
    if namespace_episodes(conn, q)? as usize <= q.max_scanned {
        return Ok(cut(matches(conn, q, m, (None, None), q.limit + 1)?, q.limit, false));
    }
    // Episodes past `inside` are within the scan window whatever the namespace holds: fewer
    // than `max_scanned` episodes of any namespace are newer. A common term's candidates are
    // all there; a rare term's walk stops there instead of seeking through the whole history.
    let newest: i64 = conn
        .prepare_cached("SELECT coalesce(max(seq), 0) FROM episode_scan")
        .and_then(|mut s| s.query_row([], |r| r.get(0)))
        .map_err(db_err)?;
    let inside = newest - q.max_scanned as i64;
    let mut found = matches(conn, q, m.clone(), (Some(inside), None), q.limit + 1)?;
    if found.len() > q.limit {
        return Ok(cut(found, q.limit, true));
    }
    let edge = window_edge(conn, q, &facets)?;
    if edge.is_none_or(|e| e < inside) {
        found.extend(matches(conn, q, m, (edge, Some(inside)), q.limit + 1 - found.len())?);
    }
    Ok(cut(found, q.limit, edge.is_some()))
}

/// Up to `limit` candidates matching `m` (and the filter's times), newest first, with
/// positions in `(after, upto]`.
fn matches(
    conn: &Connection,
    q: &CandidateQuery,
    m: String,
    (after, upto): (Option<i64>, Option<i64>),
    limit: usize,
) -> Result<Vec<ferry_core::memory::Candidate>> {
    let vec_col = if q.vectors { "(SELECT vec FROM episode_vectors v WHERE v.seq = s.seq)" } else { "NULL" };
    let mut sql = Sql::new(false);
    let mut from = matching(&mut sql, m, &q.filter, true);
    if let Some(a) = after {
        from.push_str(&format!(" AND f.rowid > {}", sql.bind(Param::Int(a))));
    }
    if let Some(u) = upto {
        from.push_str(&format!(" AND f.rowid <= {}", sql.bind(Param::Int(u))));
    }
    let lim = sql.bind(Param::Int(limit as i64));
    let text = format!(
        "SELECT s.seq, s.id, s.at, s.importance, s.outcome, s.terms, {vec_col} {from}
         ORDER BY f.rowid DESC LIMIT {lim}"
    );
    read_candidates(conn, &text, sql.params)
}

/// The episodes of the query's namespace (its counter row).
fn namespace_episodes(conn: &Connection, q: &CandidateQuery) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT episodes FROM memory_namespaces WHERE namespace = ?1")
        .and_then(|mut s| {
            s.query_row([q.filter.namespace.as_deref().unwrap_or_default()], |r| r.get(0)).optional()
        })
        .map_err(db_err)?
        .unwrap_or(0))
}

/// The scan window's edge for a term search: the newest filter-passing episode (one matching
/// `facets`) past the newest `max_scanned`; it and older ones are out of reach. `None`: the
/// filter passes at most `max_scanned` episodes, so nothing is cut. The walk costs at most
/// `max_scanned` postings whatever the history's length.
fn window_edge(conn: &Connection, q: &CandidateQuery, facets: &str) -> Result<Option<i64>> {
    let mut sql = Sql::new(false);
    let within = matching(&mut sql, facets.to_string(), &q.filter, false);
    let off = sql.bind(Param::Int(q.max_scanned as i64));
    let text = format!("SELECT f.rowid {within} ORDER BY f.rowid DESC LIMIT 1 OFFSET {off}");
    conn.prepare_cached(&text)
        .and_then(|mut s| s.query_row(params_from_iter(values(sql.params)), |r| r.get(0)).optional())
        .map_err(db_err)
}

fn read_candidates(
    conn: &Connection,
    sql: &str,
    params: Vec<Param>,
) -> Result<Vec<ferry_core::memory::Candidate>> {
    let mut s = conn.prepare_cached(sql).map_err(db_err)?;
    let rows = s
        .query_map(params_from_iter(values(params)), |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
        })
        .map_err(db_err)?;
    rows.map(|r| r.map_err(db_err).and_then(candidate_from)).collect()
}

fn list(conn: &Connection, l: &EpisodeList) -> Result<(Vec<Episode>, Option<i64>)> {
    let (text, params) = list_sql(false, l);
    let mut s = conn.prepare_cached(&text).map_err(db_err)?;
    let rows = s.query_map(params_from_iter(values(params)), row).map_err(db_err)?;
    let mut out: Vec<(i64, Episode)> =
        rows.map(|r| r.map_err(db_err).and_then(episode_from)).collect::<Result<_>>()?;
    let next = (out.len() > l.limit).then(|| {
        out.truncate(l.limit);
        out.last().map(|(s, _)| *s)
    });
    Ok((out.into_iter().map(|(_, e)| e).collect(), next.flatten()))
}

fn stats(conn: &Connection, ns: Option<String>, allowed: Option<Vec<String>>) -> Result<MemoryStats> {
    let names: Vec<String> = match (ns, allowed) {
        (Some(n), _) => vec![n],
        (None, Some(list)) => list,
        (None, None) => {
            let mut s = conn.prepare_cached("SELECT namespace FROM memory_namespaces").map_err(db_err)?;
            let rows = s.query_map([], |r| r.get::<_, String>(0)).map_err(db_err)?;
            rows.collect::<rusqlite::Result<_>>().map_err(db_err)?
        }
    };
    let mut out = MemoryStats::default();
    let mut dims: Vec<u32> = Vec::new();
    for n in &names {
        let Some((episodes, bytes, d)) = conn
            .prepare_cached("SELECT episodes, bytes, dims FROM memory_namespaces WHERE namespace = ?1")
            .and_then(|mut s| {
                s.query_row([n], |r| {
                    Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?, r.get::<_, Option<u32>>(2)?))
                })
                .optional()
            })
            .map_err(db_err)?
        else {
            continue;
        };
        out.episodes += episodes as u64;
        out.bytes += bytes as u64;
        dims.extend(d);
        for (order, slot) in [("ASC", &mut out.oldest_at), ("DESC", &mut out.newest_at)] {
            let at: Option<i64> = conn
                .prepare_cached(&format!(
                    "SELECT created_at FROM episodes WHERE namespace = ?1 ORDER BY seq {order} LIMIT 1"
                ))
                .and_then(|mut s| s.query_row([n], |r| r.get(0)).optional())
                .map_err(db_err)?;
            if let Some(at) = at {
                let better = slot.is_none_or(|t| if order == "ASC" { at < t.0 } else { at > t.0 });
                if better {
                    *slot = Some(Timestamp(at));
                }
            }
        }
    }
    dims.dedup();
    out.embedding_dims = if dims.len() == 1 { dims.first().copied() } else { None };
    Ok(out)
}

/// One batch of a reconcile, repair or rebuild, on one connection (the writer's for the last two).
fn pass(conn: &Connection, p: &DerivedPass) -> Result<PassOutcome> {
    let mut s = conn
        .prepare_cached(
            "SELECT seq, tags, content, embedding, namespace FROM episodes
             WHERE (?1 IS NULL OR namespace = ?1) AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .map_err(db_err)?;
    let rows = s
        .query_map(params![p.namespace, p.after, p.batch as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<Vec<u8>>>(3)?,
                r.get::<_, String>(4)?,
            ))
        })
        .map_err(db_err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_err)?;
    let mut out = PassOutcome::default();
    let last = rows.last().map(|r| r.0);
    for (seq, tags, content, embedding, ns) in rows {
        let (_, e) =
            episode_from((seq, Uuid::nil(), String::new(), 0, 0, 0, 0.0, tags, content, embedding, None))?;
        let want = derived(&ns, &e.content, &e.tags, e.embedding.as_deref());
        let have = actual(conn, seq)?;
        let mut m = Mismatches::default();
        let indexed = (tokens(&want.terms), tokens(&want.facets));
        if !have.scan_agrees || have.terms != Some(want.terms.clone()) || have.indexed != Some(indexed) {
            m.fts += 1;
        }
        let mut want_tags = want.tags.clone();
        want_tags.sort();
        if have.tags != want_tags {
            m.tags += 1;
        }
        if have.vector != want.vector {
            m.embeddings += 1;
        }
        out.checked += 1;
        out.mismatches.add(m);
        let rewrite = p.mode == PassMode::Rewrite || (p.mode == PassMode::Repair && m.total() > 0);
        if rewrite {
            delete_derived(conn, seq)?;
            write_derived(conn, seq, &want)?;
            out.repaired += if p.mode == PassMode::Rewrite { 1 } else { m.total() };
        }
    }
    // Derived rows whose episode is gone (only a pass over every namespace can tell).
    if p.namespace.is_none() {
        let upto = if rows_full(out.checked, p.batch) { last.unwrap_or(i64::MAX) } else { i64::MAX };
        for (table, key, kind, delete) in ORPHANS {
            let ids: Vec<i64> = conn
                .prepare_cached(&format!(
                    "SELECT DISTINCT {key} FROM {table} WHERE {key} > ?1 AND {key} <= ?2
                     AND NOT EXISTS (SELECT 1 FROM episodes e WHERE e.seq = {table}.{key})"
                ))
                .and_then(|mut s| s.query_map(params![p.after, upto], |r| r.get(0))?.collect())
                .map_err(db_err)?;
            let n = ids.len() as u64;
            match *kind {
                "fts" => out.mismatches.fts += n,
                "tags" => out.mismatches.tags += n,
                _ => out.mismatches.embeddings += n,
            }
            if p.mode != PassMode::Check {
                for id in ids {
                    conn.prepare_cached(delete).and_then(|mut s| s.execute([id])).map_err(db_err)?;
                }
                out.repaired += n;
            }
        }
    }
    out.next = if rows_full(out.checked, p.batch) { last } else { None };
    Ok(out)
}

fn rows_full(checked: u64, batch: usize) -> bool {
    checked as usize >= batch
}

/// Derived tables and their key column, for rows without an episode, and how one is removed
/// (the full-text index's rows are listed by its own `docsize` table).
const ORPHANS: &[(&str, &str, &str, &str)] = &[
    ("episode_fts_docsize", "id", "fts", "DELETE FROM episode_fts WHERE rowid = ?1"),
    ("episode_scan", "seq", "fts", "DELETE FROM episode_scan WHERE seq = ?1"),
    ("episode_tags", "seq", "tags", "DELETE FROM episode_tags WHERE seq = ?1"),
    ("episode_vectors", "seq", "embeddings", "DELETE FROM episode_vectors WHERE seq = ?1"),
];

/// How many tokens a space-joined token list holds.
fn tokens(list: &str) -> u64 {
    list.split(' ').filter(|t| !t.is_empty()).count() as u64
}

/// The token counts FTS5 keeps for a row (`docsize.sz`: one varint per column).
fn docsize(sz: &[u8]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut it = sz.iter();
    while let Some(&first) = it.next() {
        let (mut v, mut b, mut n) = (u64::from(first & 0x7f), first, 1);
        while b & 0x80 != 0 && n < 9 {
            let Some(&next) = it.next() else { break };
            v = if n == 8 { (v << 8) | u64::from(next) } else { (v << 7) | u64::from(next & 0x7f) };
            b = next;
            n += 1;
        }
        out.push(v);
    }
    out
}

fn actual(conn: &Connection, seq: i64) -> Result<Derived2> {
    let scan: Option<(String, bool)> = conn
        .prepare_cached(
            "SELECT s.terms, s.id = e.id AND s.at = e.at AND s.importance = e.importance AND s.outcome IS e.outcome
             FROM episode_scan s JOIN episodes e ON e.seq = s.seq WHERE s.seq = ?1",
        )
        .and_then(|mut s| s.query_row([seq], |r| Ok((r.get(0)?, r.get(1)?))).optional())
        .map_err(db_err)?;
    let sz: Option<Vec<u8>> = conn
        .prepare_cached("SELECT sz FROM episode_fts_docsize WHERE id = ?1")
        .and_then(|mut s| s.query_row([seq], |r| r.get(0)).optional())
        .map_err(db_err)?;
    let indexed = sz.map(|b| docsize(&b)).and_then(|c| (c.len() == 2).then(|| (c[0], c[1])));
    let tags: Vec<String> = conn
        .prepare_cached("SELECT tag FROM episode_tags WHERE seq = ?1 ORDER BY tag")
        .and_then(|mut s| s.query_map([seq], |r| r.get(0))?.collect())
        .map_err(db_err)?;
    let vector: Option<Vec<u8>> = conn
        .prepare_cached("SELECT vec FROM episode_vectors WHERE seq = ?1")
        .and_then(|mut s| s.query_row([seq], |r| r.get(0)).optional())
        .map_err(db_err)?;
    let scan_agrees = scan.as_ref().is_some_and(|s| s.1);
    Ok(Derived2 { terms: scan.map(|s| s.0), scan_agrees, indexed, tags, vector })
}

/// Derived rows as found (the scan and full-text rows may be missing).
struct Derived2 {
    /// The scan row's terms.
    terms: Option<String>,
    /// Whether the scan row's other columns are the episode's.
    scan_agrees: bool,
    /// The full-text row's token counts (terms, facets).
    indexed: Option<(u64, u64)>,
    tags: Vec<String>,
    vector: Option<Vec<u8>>,
}

fn retire(conn: &Connection, now: i64, before_ms: i64, batch: usize, fx: &mut Effects) -> Result<u64> {
    let seqs: Vec<i64> = conn
        .prepare_cached("SELECT seq FROM episodes WHERE created_at < ?1 ORDER BY created_at LIMIT ?2")
        .and_then(|mut s| s.query_map(params![before_ms, batch as i64], |r| r.get(0))?.collect())
        .map_err(db_err)?;
    for &seq in &seqs {
        delete(conn, now, seq, "retention", fx)?;
    }
    Ok(seqs.len() as u64)
}

/// Indexes every episode again when a schema migration asked for it (`memory_reindex` in
/// `ferry_meta`: derived rows are computed in Rust, not in SQL), in batches, before serving.
pub fn reindex(conn: &mut Connection) -> Result<()> {
    let pending = conn
        .query_row("SELECT 1 FROM ferry_meta WHERE key = 'memory_reindex'", [], |_| Ok(()))
        .optional()
        .map_err(db_err)?
        .is_some();
    if !pending {
        return Ok(());
    }
    let (started, mut after, mut episodes) = (std::time::Instant::now(), 0, 0);
    loop {
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db_err)?;
        let out = pass(&tx, &DerivedPass { namespace: None, after, batch: 1_000, mode: PassMode::Rewrite })?;
        tx.commit().map_err(db_err)?;
        episodes += out.checked;
        match out.next {
            Some(next) => after = next,
            None => break,
        }
    }
    conn.execute("DELETE FROM ferry_meta WHERE key = 'memory_reindex'", []).map_err(db_err)?;
    tracing::info!(
        episodes,
        took_ms = started.elapsed().as_millis() as u64,
        "memory: episodes indexed again"
    );
    Ok(())
}

/// Violations of the memory invariants.
pub fn invariants(conn: &Connection) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let extra = [
        (
            "SELECT CAST(seq AS TEXT) FROM episodes e WHERE NOT EXISTS (SELECT 1 FROM episode_fts_docsize f WHERE f.id = e.seq)",
            "episode without its full-text row",
        ),
        (
            "SELECT CAST(seq AS TEXT) FROM episodes e WHERE NOT EXISTS (SELECT 1 FROM episode_scan s WHERE s.seq = e.seq)",
            "episode without its scan row",
        ),
        (
            "SELECT CAST(id AS TEXT) FROM episode_fts_docsize f WHERE NOT EXISTS (SELECT 1 FROM episodes e WHERE e.seq = f.id)",
            "full-text row without its episode",
        ),
    ];
    for (sql, what) in MEMORY_INVARIANTS.iter().chain(extra.iter()) {
        let mut s = conn.prepare(sql).map_err(db_err)?;
        let ids = s.query_map([], |r| r.get::<_, String>(0)).map_err(db_err)?;
        for id in ids {
            out.push(format!("{what}: {}", id.map_err(db_err)?));
        }
    }
    Ok(out)
}

#[async_trait]
impl MemoryStore for SqliteStore {
    async fn add_episodes(&self, episodes: Vec<NewEpisode>) -> Result<Vec<AddOutcome>> {
        self.write("memory.add", move |c, now, fx| add(c, now, &episodes, fx)).await
    }

    async fn get_episode(&self, id: Uuid) -> Result<Option<Episode>> {
        self.readers.read(move |c| Ok(load(c, id)?.map(|(_, e)| e))).await
    }

    async fn get_episodes(&self, ids: Vec<Uuid>) -> Result<Vec<Episode>> {
        self.readers
            .read(move |c| {
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    out.extend(load(c, id)?.map(|(_, e)| e));
                }
                Ok(out)
            })
            .await
    }

    async fn list_episodes(&self, l: EpisodeList) -> Result<(Vec<Episode>, Option<i64>)> {
        self.readers.read(move |c| list(c, &l)).await
    }

    async fn patch_episode(&self, p: EpisodePatch) -> Result<Episode> {
        self.write("memory.update", move |c, now, fx| patch(c, now, &p, fx)).await
    }

    async fn delete_episode(&self, id: Uuid) -> Result<bool> {
        self.write("memory.delete", move |c, now, fx| {
            let Some((seq, _)) = load(c, id)? else { return Ok(false) };
            delete(c, now, seq, "request", fx)?;
            Ok(true)
        })
        .await
    }

    async fn memory_candidates(&self, q: CandidateQuery) -> Result<CandidateSet> {
        self.readers.read(move |c| candidates(c, &q)).await
    }

    async fn memory_stats(&self, ns: Option<String>, allowed: Option<Vec<String>>) -> Result<MemoryStats> {
        self.readers.read(move |c| stats(c, ns, allowed)).await
    }

    async fn memory_pass(&self, p: DerivedPass) -> Result<PassOutcome> {
        if p.mode == PassMode::Check {
            return self.readers.read(move |c| pass(c, &p)).await;
        }
        self.write("memory.repair", move |c, _, _| pass(c, &p)).await
    }

    async fn retire_episodes(&self, before_ms: i64, batch: usize) -> Result<u64> {
        self.write("memory.retire", move |c, now, fx| retire(c, now, before_ms, batch, fx)).await
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, OpenFlags};

    /// A reader that read the full-text index before a rewrite and an insert still finds the
    /// new row; SQLite's `integrity_check` on it reports a checksum mismatch until a query has
    /// reloaded its cached index structure, which is why `check_invariants` runs one first.
    #[test]
    fn a_reader_sees_full_text_rows_written_after_it_last_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.db");
        let w = Connection::open(&p).unwrap();
        w.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE VIRTUAL TABLE f USING fts5 (terms, tokenize = 'ascii');",
        )
        .unwrap();
        let r = Connection::open_with_flags(&p, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let docs = ["scrape the pricing page", "deploy the api", "rollback the api deploy"];
        w.execute_batch("BEGIN IMMEDIATE").unwrap();
        for (i, d) in docs.iter().enumerate() {
            w.execute("INSERT INTO f (rowid, terms) VALUES (?1, ?2)", rusqlite::params![i as i64 + 1, d])
                .unwrap();
        }
        w.execute_batch("COMMIT").unwrap();
        let check =
            |c: &Connection| c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)).unwrap();
        assert_eq!(check(&r), "ok");
        w.execute_batch("BEGIN IMMEDIATE").unwrap();
        for (i, d) in docs.iter().enumerate() {
            let seq = i as i64 + 1;
            w.execute("DELETE FROM f WHERE rowid = ?1", [seq]).unwrap();
            w.execute("INSERT INTO f (rowid, terms) VALUES (?1, ?2)", rusqlite::params![seq, d]).unwrap();
        }
        w.execute_batch("COMMIT").unwrap();
        assert_eq!(check(&r), "ok", "after rewrite");
        w.execute("INSERT INTO f (rowid, terms) VALUES (4, 'fresh')", []).unwrap();
        assert_eq!(check(&w), "ok", "writer after insert");
        let n: i64 =
            r.query_row("SELECT count(*) FROM f WHERE f MATCH 'fresh OR api'", [], |x| x.get(0)).unwrap();
        assert_eq!(n, 3, "reader sees the new row");
        let r2 = Connection::open_with_flags(&p, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        assert_eq!(check(&r2), "ok", "new reader after insert");
        assert_eq!(check(&r), "ok", "reader after insert");
    }
}
