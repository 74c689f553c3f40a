//! Access control and flow control as SQL over SQLite: queue limits (claims enforce them in
//! `jobs::claim`), API tokens, the worker registry (with the release of lost workers' leases
//! through the reaper's path) and registered hosts.
//!
//! Write functions run on the writer thread (check, then write); reads on a read-only
//! connection.

use super::db_err;
use super::jobs::take_back;
use crate::LostWorker;
use crate::effects::Effects;
use crate::rows::*;
use ferry_core::{HostRecord, Limits, QueueLimits, Result, TokenRecord, WorkerInfo};
use rusqlite::{Connection, OptionalExtension, Row, params};
use std::collections::HashMap;
use uuid::Uuid;

/// Replaces a queue's limits, creating its row if needed; clearing the rate empties the
/// bucket state, so a rate set again starts with a full burst.
pub fn set_limits(
    conn: &Connection,
    now: i64,
    queue: &str,
    limits: &QueueLimits,
    fx: &mut Effects,
) -> Result<()> {
    check_limits(limits)?;
    let (max_running, rate, max_depth) = limits_cols(limits);
    conn.prepare_cached(
        "INSERT INTO queues (name, paused, updated_at, max_running, max_starts_per_sec, max_depth)
         VALUES (?1, 0, ?2, ?3, ?4, ?5)
         ON CONFLICT (name) DO UPDATE SET max_running = excluded.max_running,
            max_starts_per_sec = excluded.max_starts_per_sec, max_depth = excluded.max_depth,
            tokens = CASE WHEN excluded.max_starts_per_sec IS NULL THEN NULL ELSE tokens END,
            tokens_at = CASE WHEN excluded.max_starts_per_sec IS NULL THEN NULL ELSE tokens_at END,
            updated_at = excluded.updated_at",
    )
    .and_then(|mut s| s.execute(params![queue, now, max_running, rate, max_depth]))
    .map_err(db_err)?;
    // Limits may have been raised: let waiting claimers look again.
    fx.wake(queue);
    Ok(())
}

/// Every queue with a limit set, by name.
pub fn limits(conn: &Connection) -> Result<Vec<(String, QueueLimits)>> {
    conn.prepare_cached(
        "SELECT name, max_running, max_starts_per_sec, max_depth FROM queues
         WHERE max_running IS NOT NULL OR max_starts_per_sec IS NOT NULL OR max_depth IS NOT NULL
         ORDER BY name",
    )
    .and_then(|mut s| {
        s.query_map([], |r| Ok((r.get(0)?, limits_from(r.get(1)?, r.get(2)?, r.get(3)?))))?.collect()
    })
    .map_err(db_err)
}

fn token_row(r: &Row) -> rusqlite::Result<TokenRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?))
}

/// Stores a new token; `conflict` if its id exists.
pub fn create_token(conn: &Connection, t: &TokenRecord) -> Result<()> {
    let exists: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM api_tokens WHERE id = ?1")
        .and_then(|mut s| s.query_row([t.id], |r| r.get(0)).optional())
        .map_err(db_err)?;
    if exists.is_some() {
        return Err(ferry_core::Error::new(
            ferry_core::ErrorCode::Conflict,
            format!("token {} exists already", t.id),
        ));
    }
    let (scopes, queues, agents, namespaces) = token_cols(t);
    conn.prepare_cached(&format!(
        "INSERT INTO api_tokens ({TOKEN_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    ))
    .and_then(|mut s| {
        s.execute(params![
            t.id,
            t.name,
            t.hash,
            scopes,
            queues,
            t.created_at,
            t.revoked_at,
            agents,
            namespaces
        ])
    })
    .map_err(db_err)?;
    Ok(())
}

/// Every token, oldest first.
pub fn list_tokens(conn: &Connection) -> Result<Vec<TokenRecord>> {
    let rows: Vec<TokenRow> = conn
        .prepare_cached(&format!("SELECT {TOKEN_COLS} FROM api_tokens ORDER BY created_at, id"))
        .and_then(|mut s| s.query_map([], token_row)?.collect())
        .map_err(db_err)?;
    rows.into_iter().map(token_from).collect()
}

/// Revokes a token, keeping the first revocation time.
pub fn revoke_token(conn: &Connection, now: i64, id: Uuid) -> Result<TokenRecord> {
    conn.prepare_cached(&format!(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1 RETURNING {TOKEN_COLS}"
    ))
    .and_then(|mut s| s.query_row(params![id, now], token_row).optional())
    .map_err(db_err)?
    .map(token_from)
    .transpose()?
    .ok_or_else(|| token_not_found(id))
}

/// Registers workers or moves their `last_seen` forward; each is `active` again.
pub fn touch_workers(conn: &Connection, seen: Vec<(String, i64)>) -> Result<()> {
    let mut upsert = conn
        .prepare_cached(
            "INSERT INTO workers (name, first_seen_ms, last_seen_ms, status) VALUES (?1, ?2, ?3, 'active')
             ON CONFLICT (name) DO UPDATE SET first_seen_ms = min(first_seen_ms, excluded.first_seen_ms),
                last_seen_ms = max(last_seen_ms, excluded.last_seen_ms), status = 'active'",
        )
        .map_err(db_err)?;
    for (name, (first, last)) in sightings(seen) {
        upsert.execute(params![name, first, last]).map_err(db_err)?;
    }
    Ok(())
}

/// Every worker with the running jobs it holds, by name.
pub fn list_workers(conn: &Connection) -> Result<Vec<WorkerInfo>> {
    let in_flight: HashMap<String, i64> = conn
        .prepare_cached(
            "SELECT worker, count(*) FROM jobs INDEXED BY jobs_running
             WHERE state = 'running' AND worker IS NOT NULL GROUP BY worker",
        )
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
        .map_err(db_err)?;
    let rows: Vec<(String, i64, i64, String)> = conn
        .prepare_cached("SELECT name, first_seen_ms, last_seen_ms, status FROM workers ORDER BY name")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?.collect())
        .map_err(db_err)?;
    rows.into_iter()
        .map(|(name, first_seen_ms, last_seen_ms, status)| {
            Ok(WorkerInfo {
                jobs_in_flight: in_flight.get(&name).copied().unwrap_or(0).max(0) as u64,
                name,
                first_seen_ms,
                last_seen_ms,
                status: worker_status(&status)?,
            })
        })
        .collect()
}

/// Marks up to `max` active workers silent since before `silent_before_ms` as lost and takes
/// back every lease they hold, as the reaper takes back an expired one.
pub fn release_lost_workers(
    conn: &Connection,
    now: i64,
    silent_before_ms: i64,
    max: usize,
    limits: &Limits,
    fx: &mut Effects,
) -> Result<Vec<LostWorker>> {
    let mut lost: Vec<String> = conn
        .prepare_cached(
            "UPDATE workers SET status = 'lost'
             WHERE name IN (SELECT name FROM workers WHERE status = 'active' AND last_seen_ms < ?1
                            ORDER BY last_seen_ms, name LIMIT ?2)
             RETURNING name",
        )
        .and_then(|mut s| s.query_map(params![silent_before_ms, max as i64], |r| r.get(0))?.collect())
        .map_err(db_err)?;
    lost.sort();
    let mut held = conn
        .prepare_cached(
            "SELECT id, lease FROM jobs INDEXED BY jobs_running WHERE state = 'running' AND worker = ?1 ORDER BY seq",
        )
        .map_err(db_err)?;
    let mut out = Vec::with_capacity(lost.len());
    for name in lost {
        let jobs: Vec<(Uuid, String)> = held
            .query_map([&name], |r| Ok((r.get(0)?, r.get(1)?)))
            .and_then(|m| m.collect())
            .map_err(db_err)?;
        let leases_released = jobs.len() as u64;
        for (id, lease) in jobs {
            take_back(conn, now, id, &lease, Expiry::WorkerLost(&name), limits, fx)?;
        }
        out.push(LostWorker { name, leases_released });
    }
    Ok(out)
}

/// Registers a host; `conflict` if the name is taken.
pub fn create_host(conn: &Connection, h: &HostRecord) -> Result<()> {
    let exists: Option<i64> = conn
        .prepare_cached("SELECT 1 FROM hosts WHERE name = ?1")
        .and_then(|mut s| s.query_row([&h.name], |r| r.get(0)).optional())
        .map_err(db_err)?;
    if exists.is_some() {
        return Err(host_exists(&h.name));
    }
    conn.prepare_cached("INSERT INTO hosts (name, health_url, created_at) VALUES (?1, ?2, ?3)")
        .and_then(|mut s| s.execute(params![h.name, h.health_url, h.created_at]))
        .map_err(db_err)?;
    Ok(())
}

/// Every host, by name.
pub fn list_hosts(conn: &Connection) -> Result<Vec<HostRecord>> {
    conn.prepare_cached("SELECT name, health_url, created_at FROM hosts ORDER BY name")
        .and_then(|mut s| {
            s.query_map([], |r| {
                Ok(HostRecord { name: r.get(0)?, health_url: r.get(1)?, created_at: r.get(2)? })
            })?
            .collect()
        })
        .map_err(db_err)
}

/// Forgets a host.
pub fn delete_host(conn: &Connection, name: &str) -> Result<()> {
    match conn.prepare_cached("DELETE FROM hosts WHERE name = ?1").and_then(|mut s| s.execute([name])) {
        Ok(0) => Err(host_not_found(name)),
        Ok(_) => Ok(()),
        Err(e) => Err(db_err(e)),
    }
}
