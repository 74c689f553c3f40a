//! Access control and flow control as PostgreSQL statements, one transaction per call: queue
//! limits (claims enforce them in `jobs::claim`, with the queue row locked), API tokens, the
//! worker registry (lost workers' leases are taken back through the reaper's path) and
//! registered hosts.

use super::jobs;
use super::{RowExt, pg_err};
use crate::LostWorker;
use crate::effects::Effects;
use crate::rows::*;
use deadpool_postgres::{ClientWrapper as Client, Transaction};
use ferry_core::{HostRecord, Limits, QueueLimits, Result, TokenRecord, WorkerInfo};
use std::collections::HashMap;
use tokio_postgres::Row;
use uuid::Uuid;

/// Replaces a queue's limits, creating its row if needed; clearing the rate empties the
/// bucket state, so a rate set again starts with a full burst.
pub async fn set_limits(
    tx: &Transaction<'_>,
    now: i64,
    queue: &str,
    limits: &QueueLimits,
    w: &mut Effects,
) -> Result<()> {
    check_limits(limits)?;
    let (max_running, rate, max_depth) = limits_cols(limits);
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO queues (name, paused, updated_at, max_running, max_starts_per_sec, max_depth)
             VALUES ($1, FALSE, $2, $3, $4, $5)
             ON CONFLICT (name) DO UPDATE SET max_running = excluded.max_running,
                max_starts_per_sec = excluded.max_starts_per_sec, max_depth = excluded.max_depth,
                tokens = CASE WHEN excluded.max_starts_per_sec IS NULL THEN NULL ELSE queues.tokens END,
                tokens_at = CASE WHEN excluded.max_starts_per_sec IS NULL THEN NULL ELSE queues.tokens_at END,
                updated_at = excluded.updated_at",
        )
        .await
        .map_err(pg_err)?,
        &[&queue, &now, &max_running, &rate, &max_depth],
    )
    .await
    .map_err(pg_err)?;
    // Limits may have been raised: let waiting claimers look again.
    w.wake(queue);
    Ok(())
}

/// Every queue with a limit set, by name.
pub async fn limits(c: &Client) -> Result<Vec<(String, QueueLimits)>> {
    let rows = c
        .query(
            &c.prepare_cached(
                "SELECT name, max_running, max_starts_per_sec, max_depth FROM queues
                 WHERE max_running IS NOT NULL OR max_starts_per_sec IS NOT NULL OR max_depth IS NOT NULL
                 ORDER BY name",
            )
            .await
            .map_err(pg_err)?,
            &[],
        )
        .await
        .map_err(pg_err)?;
    rows.iter().map(|r| Ok((r.col(0)?, limits_from(r.col(1)?, r.col(2)?, r.col(3)?)))).collect()
}

fn token_row(r: &Row) -> Result<TokenRow> {
    Ok((r.col(0)?, r.col(1)?, r.col(2)?, r.col(3)?, r.col(4)?, r.col(5)?, r.col(6)?, r.col(7)?, r.col(8)?))
}

/// Stores a new token; `conflict` if its id exists.
pub async fn create_token(tx: &Transaction<'_>, t: &TokenRecord) -> Result<()> {
    let (scopes, queues, agents, namespaces) = token_cols(t);
    let n = tx
        .execute(
            &tx.prepare_cached(&format!(
                "INSERT INTO api_tokens ({TOKEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING"
            ))
            .await
            .map_err(pg_err)?,
            &[&t.id, &t.name, &t.hash, &scopes, &queues, &t.created_at, &t.revoked_at, &agents, &namespaces],
        )
        .await
        .map_err(pg_err)?;
    if n == 0 {
        return Err(ferry_core::Error::new(
            ferry_core::ErrorCode::Conflict,
            format!("token {} exists already", t.id),
        ));
    }
    Ok(())
}

/// Every token, oldest first.
pub async fn list_tokens(c: &Client) -> Result<Vec<TokenRecord>> {
    let rows = c
        .query(
            &c.prepare_cached(&format!("SELECT {TOKEN_COLS} FROM api_tokens ORDER BY created_at, id"))
                .await
                .map_err(pg_err)?,
            &[],
        )
        .await
        .map_err(pg_err)?;
    rows.iter().map(|r| token_from(token_row(r)?)).collect()
}

/// Revokes a token, keeping the first revocation time.
pub async fn revoke_token(tx: &Transaction<'_>, now: i64, id: Uuid) -> Result<TokenRecord> {
    let row = tx
        .query_opt(
            &tx.prepare_cached(&format!(
                "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, $2) WHERE id = $1 RETURNING {TOKEN_COLS}"
            ))
            .await
            .map_err(pg_err)?,
            &[&id, &now],
        )
        .await
        .map_err(pg_err)?;
    match row {
        Some(r) => token_from(token_row(&r)?),
        None => Err(token_not_found(id)),
    }
}

/// Registers workers or moves their `last_seen` forward; each is `active` again. Rows are
/// written in name order, so concurrent touches lock them in the same order.
pub async fn touch_workers(tx: &Transaction<'_>, seen: Vec<(String, i64)>) -> Result<()> {
    let (mut names, mut firsts, mut lasts) = (Vec::new(), Vec::new(), Vec::new());
    for (name, (first, last)) in sightings(seen) {
        names.push(name);
        firsts.push(first);
        lasts.push(last);
    }
    if names.is_empty() {
        return Ok(());
    }
    tx.execute(
        &tx.prepare_cached(
            "INSERT INTO workers (name, first_seen_ms, last_seen_ms, status)
             SELECT name, first, last, 'active' FROM unnest($1::text[], $2::bigint[], $3::bigint[])
                AS x(name, first, last) ORDER BY name
             ON CONFLICT (name) DO UPDATE SET
                first_seen_ms = LEAST(workers.first_seen_ms, excluded.first_seen_ms),
                last_seen_ms = GREATEST(workers.last_seen_ms, excluded.last_seen_ms), status = 'active'",
        )
        .await
        .map_err(pg_err)?,
        &[&names, &firsts, &lasts],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

/// Every worker with the running jobs it holds, by name.
pub async fn list_workers(c: &Client) -> Result<Vec<WorkerInfo>> {
    let in_flight: HashMap<String, i64> = c
        .query(
            &c.prepare_cached(
                "SELECT worker, count(*) FROM jobs WHERE state = 'running' AND worker IS NOT NULL GROUP BY worker",
            )
            .await
            .map_err(pg_err)?,
            &[],
        )
        .await
        .map_err(pg_err)?
        .iter()
        .map(|r| Ok((r.col(0)?, r.col(1)?)))
        .collect::<Result<_>>()?;
    let rows = c
        .query(
            &c.prepare_cached("SELECT name, first_seen_ms, last_seen_ms, status FROM workers ORDER BY name")
                .await
                .map_err(pg_err)?,
            &[],
        )
        .await
        .map_err(pg_err)?;
    rows.iter()
        .map(|r| {
            let name: String = r.col(0)?;
            Ok(WorkerInfo {
                jobs_in_flight: in_flight.get(&name).copied().unwrap_or(0).max(0) as u64,
                name,
                first_seen_ms: r.col(1)?,
                last_seen_ms: r.col(2)?,
                status: worker_status(r.col(3)?)?,
            })
        })
        .collect()
}

/// Marks up to `max` active workers silent since before `silent_before_ms` as lost (rows
/// other nodes are marking are skipped) and takes back every lease they hold, as the reaper
/// takes back an expired one.
pub async fn release_lost_workers(
    tx: &Transaction<'_>,
    now: i64,
    silent_before_ms: i64,
    max: usize,
    limits: &Limits,
    w: &mut Effects,
) -> Result<Vec<LostWorker>> {
    let rows = tx
        .query(
            &tx.prepare_cached(
                "UPDATE workers SET status = 'lost'
                 WHERE name IN (SELECT name FROM workers WHERE status = 'active' AND last_seen_ms < $1
                                ORDER BY last_seen_ms, name LIMIT $2 FOR UPDATE SKIP LOCKED)
                 RETURNING name",
            )
            .await
            .map_err(pg_err)?,
            &[&silent_before_ms, &(max.min(i64::MAX as usize) as i64)],
        )
        .await
        .map_err(pg_err)?;
    let mut lost: Vec<String> = rows.iter().map(|r| r.col(0)).collect::<Result<_>>()?;
    lost.sort();
    if lost.is_empty() {
        return Ok(Vec::new());
    }
    let held = tx
        .query(
            &tx.prepare_cached(
                "SELECT id, worker FROM jobs WHERE state = 'running' AND worker = ANY($1) ORDER BY seq",
            )
            .await
            .map_err(pg_err)?,
            &[&lost],
        )
        .await
        .map_err(pg_err)?;
    let mut moves = Vec::new();
    let mut released: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for r in held {
        let worker: String = r.col(1)?;
        jobs::take_back(tx, now, r.col(0)?, Expiry::WorkerLost(&worker), limits, &mut moves, w).await?;
        *released.entry(worker).or_default() += 1;
    }
    super::convoys::members_moved(tx, now, moves, limits, w).await?;
    Ok(lost
        .into_iter()
        .map(|name| LostWorker { leases_released: released.get(&name).copied().unwrap_or(0), name })
        .collect())
}

/// Registers a host; `conflict` if the name is taken.
pub async fn create_host(tx: &Transaction<'_>, h: &HostRecord) -> Result<()> {
    let n = tx
        .execute(
            &tx.prepare_cached(
                "INSERT INTO hosts (name, health_url, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
            )
            .await
            .map_err(pg_err)?,
            &[&h.name, &h.health_url, &h.created_at],
        )
        .await
        .map_err(pg_err)?;
    if n == 0 {
        return Err(host_exists(&h.name));
    }
    Ok(())
}

/// Every host, by name.
pub async fn list_hosts(c: &Client) -> Result<Vec<HostRecord>> {
    let rows = c
        .query(
            &c.prepare_cached("SELECT name, health_url, created_at FROM hosts ORDER BY name")
                .await
                .map_err(pg_err)?,
            &[],
        )
        .await
        .map_err(pg_err)?;
    rows.iter()
        .map(|r| Ok(HostRecord { name: r.col(0)?, health_url: r.col(1)?, created_at: r.col(2)? }))
        .collect()
}

/// Forgets a host.
pub async fn delete_host(tx: &Transaction<'_>, name: &str) -> Result<()> {
    let n = tx
        .execute(&tx.prepare_cached("DELETE FROM hosts WHERE name = $1").await.map_err(pg_err)?, &[&name])
        .await
        .map_err(pg_err)?;
    if n == 0 {
        return Err(host_not_found(name));
    }
    Ok(())
}
