//! Events on PostgreSQL: numbering in commit order across nodes, and delivery to every node.
//!
//! A transaction that produces events inserts one `event_log` row with no cursor yet. The
//! **sequencer** (any node; passes serialized by an advisory lock) numbers the rows that have
//! committed, in `id` order, continuing from the highest cursor, in one transaction; so a
//! cursor is only ever assigned to a committed row and later passes only hand out higher
//! cursors. It then notifies every node, whose **tailer** reads the newly numbered rows after
//! its last cursor and publishes them on the local bus. Both also run on a timer, so a lost
//! notification only delays events.

use super::PgStore;
use super::{RowExt, pg_err};
use crate::events::EventBus;
use crate::{EventPrune, EventStore};
use async_trait::async_trait;
use deadpool_postgres::{ClientWrapper as Client, Pool};
use ferry_core::{Event, Result};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Advisory lock key serializing sequencer passes ("fevts" in ASCII).
pub(super) const SEQUENCER_LOCK: i64 = 0x0066_6576_7473;

/// Rows numbered per sequencer pass (a pass repeats while it fills up).
const SEQUENCE_BATCH: i64 = 1_000;

/// How often the sequencer and tailer run without being woken.
pub const EVENT_POLL_MS: u64 = 200;

/// Events after cursor `after`, from the numbered rows only.
pub async fn read_events(c: &Client, after: u64, limit: usize) -> Result<Vec<Event>> {
    // First the batch sizes, then only the bodies that hold the `limit` events wanted: a
    // thousand-event batch is not fetched, nor decoded, to return ten events of it.
    let from = crate::events::cursor_bound(after);
    let sizes = c
        .query(
            &c.prepare_cached(
                "SELECT first_cursor, n FROM event_log
                 WHERE first_cursor >= coalesce((SELECT max(first_cursor) FROM event_log WHERE first_cursor <= $1), 0)
                 ORDER BY first_cursor LIMIT $2",
            )
            .await
            .map_err(pg_err)?,
            &[&from, &(crate::events::MAX_BATCH_ROWS_PER_READ as i64)],
        )
        .await
        .map_err(pg_err)?;
    let limit = limit.max(1);
    let (mut rows, mut events) = (0i64, 0u64);
    for r in &sizes {
        let (first, n): (i64, i32) = (r.col(0)?, r.col(1)?);
        let end = first + i64::from(n) - 1;
        events += end.saturating_sub(from - 1).clamp(0, i64::from(n)) as u64;
        rows += 1;
        if events >= limit as u64 {
            break;
        }
    }
    if rows == 0 {
        return Ok(Vec::new());
    }
    let first_row: i64 = sizes[0].col(0)?;
    let bodies = c
        .query(
            &c.prepare_cached(
                "SELECT first_cursor, body FROM event_log WHERE first_cursor >= $1 ORDER BY first_cursor LIMIT $2",
            )
            .await
            .map_err(pg_err)?,
            &[&first_row, &rows],
        )
        .await
        .map_err(pg_err)?;
    let mut out = Vec::with_capacity(limit.min(1_024));
    for r in &bodies {
        if out.len() >= limit {
            break;
        }
        crate::events::decode_into(r.col(0)?, r.col::<&str>(1)?, after, limit, &mut out)?;
    }
    Ok(out)
}

/// The highest cursor numbered so far.
pub async fn head(c: &Client) -> Result<u64> {
    let r = c
        .query_opt(
            "SELECT first_cursor + n - 1 FROM event_log WHERE first_cursor IS NOT NULL
             ORDER BY first_cursor DESC LIMIT 1",
            &[],
        )
        .await
        .map_err(pg_err)?;
    r.map_or(Ok(0), |r| Ok(r.col::<i64>(0)? as u64))
}

/// Deletes old numbered batches (see `Store::prune_events`); the newest numbered batch stays,
/// since the next cursor continues from it.
pub async fn prune(c: &Client, before_ms: i64, keep: u64, max: usize) -> Result<u64> {
    c.execute(
        "DELETE FROM event_log WHERE id IN (
            SELECT id FROM event_log, (SELECT first_cursor AS top, first_cursor + n - 1 AS last FROM event_log
                                       WHERE first_cursor IS NOT NULL ORDER BY first_cursor DESC LIMIT 1) h
            WHERE first_cursor < h.top AND (at < $1 OR first_cursor + n - 1 <= h.last - $2)
            ORDER BY first_cursor LIMIT $3)",
        &[&before_ms, &(keep.min(i64::MAX as u64) as i64), &(max as i64)],
    )
    .await
    .map_err(pg_err)
}

/// One sequencer pass: numbers committed rows; returns how many rows it numbered.
async fn sequence(pool: &Pool, channel: &str, msg_channel: &str, now: i64) -> Result<u64> {
    let mut client = pool.get().await.map_err(super::pool_err)?;
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SEQUENCER_LOCK]).await.map_err(pg_err)?;
    // Broadcasts first: their events join this pass's numbering.
    super::messages::number_broadcasts(&tx, msg_channel, now).await?;
    let n = tx
        .execute(
            "WITH top AS (SELECT coalesce((SELECT first_cursor + n - 1 FROM event_log WHERE first_cursor IS NOT NULL
                                           ORDER BY first_cursor DESC LIMIT 1), 0) AS last),
                  todo AS (SELECT id, n FROM event_log WHERE first_cursor IS NULL ORDER BY id LIMIT $1),
                  numbered AS (SELECT id, (SELECT last FROM top) + 1 + coalesce(sum(n) OVER (ORDER BY id
                                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS first FROM todo)
             UPDATE event_log e SET first_cursor = numbered.first FROM numbered WHERE e.id = numbered.id",
            &[&SEQUENCE_BATCH],
        )
        .await
        .map_err(pg_err)?;
    if n > 0 {
        tx.execute("SELECT pg_notify($1, '')", &[&channel]).await.map_err(pg_err)?;
    }
    tx.commit().await.map_err(pg_err)?;
    Ok(n)
}

/// Runs sequencer passes when woken (a local commit with events) or on the timer.
pub async fn sequencer(
    pool: Pool,
    channel: String,
    msg_channel: String,
    clock: Arc<dyn ferry_core::Clock>,
    wake: Arc<Notify>,
) {
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(EVENT_POLL_MS)) => {}
        }
        loop {
            match sequence(&pool, &channel, &msg_channel, clock.now_ms()).await {
                Ok(n) if n as i64 >= SEQUENCE_BATCH => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e.message, "event sequencer pass failed");
                    tokio::time::sleep(Duration::from_millis(EVENT_POLL_MS)).await;
                    break;
                }
            }
        }
    }
}

/// Publishes newly numbered events on the local bus, in cursor order, when woken (a
/// notification from any node's sequencer) or on the timer.
pub async fn tailer(pool: Pool, bus: Arc<EventBus>, wake: Arc<Notify>) {
    loop {
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(EVENT_POLL_MS)) => {}
        }
        loop {
            let client = match pool.get().await {
                Ok(c) => c,
                Err(_) => break,
            };
            match read_events(&client, bus.head(), 10_000).await {
                Ok(events) if events.is_empty() => break,
                Ok(events) => {
                    // Publish batch by batch as stored would also do; one call keeps order.
                    if events[0].cursor != bus.head() + 1 {
                        // Older events were pruned before this node saw them: move on.
                        bus.skip_to(events[0].cursor - 1);
                    }
                    bus.publish(events);
                }
                Err(e) => {
                    tracing::warn!(error = %e.message, "event tailer read failed");
                    break;
                }
            }
        }
    }
}

#[async_trait]
impl EventStore for PgStore {
    async fn read_events(&self, after: u64, limit: usize) -> Result<Vec<Event>> {
        self.read(move |c| boxed!(read_events(c, after, limit).await)).await
    }

    async fn prune_events(&self, req: EventPrune) -> Result<u64> {
        let EventPrune { before_ms, keep, max } = req;
        // Deletes in batches without a transaction of its own; timed as a write all the same.
        let pass = self.read(move |c| boxed!(prune(c, before_ms, keep, max).await));
        self.metrics.timed("prune_events", pass).await
    }
}
