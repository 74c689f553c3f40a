//! Agent messages as PostgreSQL statements. A send locks the agent rows it names in name order
//! (bucket and depth checks hold across nodes, and overlapping sends never deadlock); a
//! receive or a broadcast ack locks its agent's row, so one inbox's cursors move one at a time.
//! Broadcasts are inserted unnumbered and numbered after commit by the event sequencer's
//! pass (one advisory lock, committed rows only), so a late commit never makes a cursor skip.

use super::{PgStore, RowExt, pg_err};
use crate::effects::Effects;
use crate::message_rows::{self as mr, DELIVERY_COLS, DELIVERY_JOIN, DeliveryRow};
use crate::{AgentFilter, MessageStore, MessageSweep};
use async_trait::async_trait;
use deadpool_postgres::{ClientWrapper as Client, Transaction};
use ferry_core::message::{
    AgentInfo, BroadcastSent, ChannelCursor, DEFAULT_CHANNEL, DeadMessage, NewBroadcast, NewMessage, Receipt,
    ReceiptOutcome, Received, Recipient, SendRate, Sent, wake_agent, wake_channel,
};
use ferry_core::wire::ReceiveRequest;
use ferry_core::{Error, Limits, Result, Timestamp};
use std::time::Duration;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

/// Advisory lock key namespace of dedup keys (`hashtextextended(from || key, 17)`).
const DEDUP_SEED: i64 = 17;

async fn exec(tx: &Transaction<'_>, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<u64> {
    tx.execute(&tx.prepare_cached(sql).await.map_err(pg_err)?, p).await.map_err(pg_err)
}

async fn query(tx: &Transaction<'_>, sql: &str, p: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>> {
    tx.query(&tx.prepare_cached(sql).await.map_err(pg_err)?, p).await.map_err(pg_err)
}

/// Names inboxes (a new one is subscribed to `all` at its head).
async fn ensure_agents(tx: &Transaction<'_>, names: &[String], now: i64) -> Result<()> {
    let added = query(
        tx,
        "INSERT INTO agents (name, created_at) SELECT n, $2 FROM unnest($1::text[]) AS n ORDER BY n
         ON CONFLICT DO NOTHING RETURNING name",
        &[&names, &now],
    )
    .await?;
    for r in added {
        subscribe(tx, &r.col::<String>(0)?, DEFAULT_CHANNEL).await?;
    }
    Ok(())
}

async fn subscribe(tx: &Transaction<'_>, agent: &str, channel: &str) -> Result<()> {
    exec(tx, "INSERT INTO channels (name, head) VALUES ($1, 0) ON CONFLICT DO NOTHING", &[&channel]).await?;
    exec(
        tx,
        "INSERT INTO channel_cursors (agent, channel, seq) SELECT $1, $2, head FROM channels WHERE name = $2
         ON CONFLICT DO NOTHING",
        &[&agent, &channel],
    )
    .await?;
    Ok(())
}

/// Locks `agent`'s row: its receives, broadcast acks and channel changes move its cursors one
/// at a time.
async fn lock_agent(tx: &Transaction<'_>, agent: &str) -> Result<()> {
    query(tx, "SELECT 1 FROM agents WHERE name = $1 FOR UPDATE", &[&agent]).await.map(drop)
}

async fn touch(tx: &Transaction<'_>, name: &str, now: i64) -> Result<()> {
    let second = ferry_core::message::to_second(now);
    exec(
        tx,
        "UPDATE agents SET last_seen_at = $2 WHERE name = $1 AND last_seen_at IS DISTINCT FROM $2",
        &[&name, &second],
    )
    .await?;
    Ok(())
}

/// Locks `names`' rows in name order; `from`'s bucket after refill, or refuses.
async fn lock_and_take(
    tx: &Transaction<'_>,
    names: &[String],
    from: &str,
    rate: SendRate,
    now: i64,
) -> Result<Option<f64>> {
    let mut sorted = names.to_vec();
    sorted.sort();
    sorted.dedup();
    let rows = query(
        tx,
        "SELECT name, tokens, tokens_at FROM agents WHERE name = ANY($1) ORDER BY name FOR UPDATE",
        &[&sorted],
    )
    .await?;
    if !rate.is_on() {
        return Ok(None);
    }
    let mut stored = (None, None);
    for r in &rows {
        if r.col::<String>(0)? == from {
            stored = (r.col::<Option<f64>>(1)?, r.col::<Option<i64>>(2)?);
        }
    }
    let held = rate.refill(stored.0, stored.1.unwrap_or(now), now);
    mr::check_bucket(from, rate, held)?;
    Ok(Some(held - 1.0))
}

async fn store_tokens(tx: &Transaction<'_>, from: &str, left: Option<f64>, now: i64) -> Result<()> {
    if let Some(t) = left {
        exec(tx, "UPDATE agents SET tokens = $2, tokens_at = $3 WHERE name = $1", &[&from, &t, &now]).await?;
    }
    Ok(())
}

/// Stores a message for each recipient (see [`MessageStore::send_message`]).
async fn send(
    tx: &Transaction<'_>,
    now: i64,
    m: &NewMessage,
    rate: SendRate,
    limits: &Limits,
    fx: &mut Effects,
) -> Result<Sent> {
    if let Some(key) = &m.dedup_key {
        let text = format!("{}\u{1f}{key}", m.from);
        exec(tx, "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))", &[&text, &DEDUP_SEED]).await?;
        let first = query(
            tx,
            "SELECT answer FROM messages WHERE sender = $1 AND dedup_key = $2 AND expires_at > $3
             ORDER BY sent_at DESC LIMIT 1",
            &[&m.from, key, &now],
        )
        .await?;
        if let Some(r) = first.first() {
            return mr::duplicate(&r.col::<String>(0)?);
        }
    }
    let mut named = m.to.clone();
    named.push(m.from.clone());
    // Name the inboxes first (committed or not, the rows then exist to lock).
    ensure_agents(tx, &named, now).await?;
    let left = lock_and_take(tx, &named, &m.from, rate, now).await?;
    let depths = query(
        tx,
        "SELECT a, (SELECT count(*) FROM (SELECT 1 FROM deliveries d WHERE d.agent = a
                    AND d.state IN ('ready', 'in_flight') LIMIT $2) x)
         FROM unnest($1::text[]) AS a",
        &[&m.to, &(limits.max_inbox_depth.min(i64::MAX as u64) as i64)],
    )
    .await?;
    for r in &depths {
        mr::check_depth(&r.col::<String>(0)?, r.col::<i64>(1)? as u64, limits)?;
    }
    store_tokens(tx, &m.from, left, now).await?;
    let expires_at = now + m.ttl_ms;
    let seen = query(tx, "SELECT name, last_seen_at FROM agents WHERE name = ANY($1)", &[&m.to]).await?;
    let mut recipients = Vec::with_capacity(m.to.len());
    for a in &m.to {
        let mut last = None;
        for r in &seen {
            if r.col::<String>(0)? == *a {
                last = r.col::<Option<i64>>(1)?;
            }
        }
        recipients.push(Recipient { agent: a.clone(), last_seen_at: last.map(Timestamp) });
        fx.wake(&wake_agent(a));
    }
    exec(
        tx,
        "INSERT INTO deliveries (agent, msg_id, kind, state, visible_at, receipt, delivery_count, expires_at, ttl_ms)
         SELECT a, $2, 'direct', 'ready', $3, 0, 0, $4, $5 FROM unnest($1::text[]) WITH ORDINALITY AS t(a, i) ORDER BY i",
        &[&m.to, &m.id, &now, &expires_at, &m.ttl_ms],
    )
    .await?;
    let sent = Sent { id: m.id, expires_at: Timestamp(expires_at), recipients, duplicate: false };
    exec(
        tx,
        "INSERT INTO messages (id, sender, body, sent_at, expires_at, reply_to, correlation_id, dedup_key, answer)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &m.id,
            &m.from,
            &m.body,
            &now,
            &expires_at,
            &m.reply_to,
            &m.correlation_id,
            &m.dedup_key,
            &mr::answer_text(&sent),
        ],
    )
    .await?;
    fx.events.extend(mr::sent_events(m, now));
    Ok(sent)
}

/// Inserts an unnumbered broadcast (the sequencer numbers it once committed).
async fn broadcast(
    tx: &Transaction<'_>,
    now: i64,
    b: &NewBroadcast,
    rate: SendRate,
    hold: Duration,
) -> Result<i64> {
    let named = vec![b.from.clone()];
    ensure_agents(tx, &named, now).await?;
    let left = lock_and_take(tx, &named, &b.from, rate, now).await?;
    store_tokens(tx, &b.from, left, now).await?;
    exec(tx, "INSERT INTO channels (name, head) VALUES ($1, 0) ON CONFLICT DO NOTHING", &[&b.channel])
        .await?;
    let expires_at = now + b.ttl_ms;
    exec(
        tx,
        "INSERT INTO broadcasts (id, channel, sender, body, sent_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        &[&b.id, &b.channel, &b.from, &b.body, &now, &expires_at],
    )
    .await?;
    if !hold.is_zero() {
        // Test hook (FERRY_TEST_HOLD_BROADCAST): commit late, after broadcasts inserted later.
        tokio::time::sleep(hold).await;
    }
    Ok(expires_at)
}

/// Numbers committed broadcasts per channel in insertion order, moves the channels' heads,
/// records their events and wakes their readers on every node. Runs under the sequencer's
/// advisory lock, in its transaction; returns how many it numbered.
pub async fn number_broadcasts(tx: &Transaction<'_>, msg_channel: &str, now: i64) -> Result<u64> {
    let rows = query(
        tx,
        "WITH todo AS (SELECT serial, channel FROM broadcasts WHERE seq IS NULL ORDER BY serial LIMIT 1000),
              numbered AS (SELECT t.serial, coalesce(c.head, 0)
                                  + row_number() OVER (PARTITION BY t.channel ORDER BY t.serial) AS seq
                           FROM todo t LEFT JOIN channels c ON c.name = t.channel)
         UPDATE broadcasts b SET seq = n.seq FROM numbered n WHERE b.serial = n.serial
         RETURNING b.id, b.channel, b.seq, b.sender, b.sent_at",
        &[],
    )
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut heads: Vec<(String, i64)> = Vec::new();
    let mut events = Vec::with_capacity(rows.len());
    let mut numbered: Vec<(i64, Uuid, String, String, i64)> = Vec::with_capacity(rows.len());
    for r in &rows {
        numbered.push((r.col(2)?, r.col(0)?, r.col(1)?, r.col(3)?, r.col(4)?));
    }
    numbered.sort_by(|a, b| (a.2.as_str(), a.0).cmp(&(b.2.as_str(), b.0)));
    for (seq, id, channel, sender, sent_at) in numbered {
        events.push(mr::broadcast_event(id, &sender, &channel, seq, sent_at));
        match heads.iter_mut().find(|(c, _)| *c == channel) {
            Some(h) => h.1 = h.1.max(seq),
            None => heads.push((channel, seq)),
        }
    }
    for (channel, head) in &heads {
        exec(
            tx,
            "INSERT INTO channels (name, head) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET head = greatest(channels.head, $2)",
            &[channel, head],
        )
        .await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&msg_channel, &wake_channel(channel)])
            .await
            .map_err(pg_err)?;
    }
    let at = events.last().map_or(now, |e| e.at.0);
    exec(
        tx,
        "INSERT INTO event_log (n, at, body) VALUES ($1, $2, $3)",
        &[&(events.len() as i32), &at, &crate::events::encode(&events)],
    )
    .await?;
    Ok(rows.len() as u64)
}

fn delivery(r: &Row) -> Result<DeliveryRow> {
    Ok(DeliveryRow {
        ord: Some(r.col(0)?),
        id: r.col(1)?,
        kind: r.col(2)?,
        receipt: r.col(4)?,
        delivery_count: r.col::<i64>(5)? as u32,
        expires_at: r.col(6)?,
        dead_at: r.col(7)?,
        from: r.col::<Option<String>>(8)?.unwrap_or_default(),
        body: r.col::<Option<String>>(9)?.unwrap_or_else(|| "null".into()),
        sent_at: r.col::<Option<i64>>(10)?.unwrap_or(0),
        reply_to: r.col(11)?,
        correlation_id: r.col(12)?,
        channel: r.col(13)?,
        seq: r.col(14)?,
    })
}

/// Hands out up to `req.max` messages (see [`MessageStore::receive_messages`]). Candidate rows
/// are locked (`SKIP LOCKED`): an ack or nack settling one at the same moment either commits
/// first (the row is gone or hidden) or waits for this delivery and finds its receipt stale.
async fn receive(
    tx: &Transaction<'_>,
    now: i64,
    agent: &str,
    req: ReceiveRequest,
    max_deliveries: u32,
    fx: &mut Effects,
) -> Result<Received> {
    let me = vec![agent.to_string()];
    ensure_agents(tx, &me, now).await?;
    lock_agent(tx, agent).await?;
    touch(tx, agent, now).await?;
    advance_cursors(tx, agent, now).await?;
    let mut out = Received::default();
    let mut broadcast_died = false;
    while out.messages.len() < req.max {
        let want = (req.max - out.messages.len()) as i64;
        let mut candidates = Vec::new();
        for r in query(
            tx,
            &format!(
                "SELECT {DELIVERY_COLS} FROM {DELIVERY_JOIN}
                 WHERE d.agent = $1 AND d.state IN ('ready', 'in_flight') AND d.visible_at <= $2 AND d.expires_at > $2
                 ORDER BY d.ord LIMIT $3 FOR UPDATE OF d SKIP LOCKED"
            ),
            &[&agent, &now, &want],
        )
        .await?
        {
            candidates.push(delivery(&r)?);
        }
        for r in query(
            tx,
            "SELECT b.id, b.channel, b.seq, b.sender, b.body, b.sent_at, b.expires_at
             FROM channel_cursors c JOIN broadcasts b ON b.channel = c.channel AND b.seq > c.seq
             WHERE c.agent = $1 AND b.sender <> $1 AND b.expires_at > $2
               AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.agent = $1 AND d.msg_id = b.id)
             ORDER BY b.sent_at, b.seq LIMIT $3",
            &[&agent, &now, &want],
        )
        .await?
        {
            candidates.push(DeliveryRow::unread(
                r.col(0)?,
                r.col(1)?,
                r.col(2)?,
                r.col(3)?,
                r.col(4)?,
                r.col(5)?,
                r.col(6)?,
            ));
        }
        if candidates.is_empty() {
            break;
        }
        candidates.sort_by_key(|c| (c.sent_at, c.seq.unwrap_or(0), c.ord.unwrap_or(0)));
        candidates.truncate(want as usize);
        for c in candidates {
            if c.delivery_count >= max_deliveries {
                exec(
                    tx,
                    "UPDATE deliveries SET state = 'dead', dead_at = $3 WHERE agent = $1 AND msg_id = $2",
                    &[&agent, &c.id, &now],
                )
                .await?;
                fx.event(mr::dead_event(agent, c.id, &c.kind, now));
                broadcast_died |= c.kind == "broadcast";
                continue;
            }
            let token = c.receipt + 1;
            let visible_at = now + req.visibility_ms;
            if c.ord.is_some() {
                exec(
                    tx,
                    "UPDATE deliveries SET state = 'in_flight', visible_at = $3, receipt = $4,
                        delivery_count = delivery_count + 1 WHERE agent = $1 AND msg_id = $2",
                    &[&agent, &c.id, &visible_at, &token],
                )
                .await?;
            } else {
                exec(
                    tx,
                    "INSERT INTO deliveries (agent, msg_id, kind, state, visible_at, receipt, delivery_count, expires_at, ttl_ms)
                     VALUES ($1, $2, 'broadcast', 'in_flight', $3, $4, 1, $5, $6)",
                    &[&agent, &c.id, &visible_at, &token, &c.expires_at, &(c.expires_at - c.sent_at)],
                )
                .await?;
            }
            if c.delivery_count == 0 {
                out.first_waits_ms.push(now - c.sent_at);
            }
            let count = c.delivery_count + 1;
            out.messages.push(c.clone().into_message(Receipt { id: c.id, token }, count)?);
        }
    }
    if broadcast_died {
        // The cursor passes a dead broadcast now, not at this agent's next writing call.
        advance_cursors(tx, agent, now).await?;
    }
    Ok(out)
}

/// Moves `agent`'s cursors past the broadcasts it is done with (see the SQLite backend).
async fn advance_cursors(tx: &Transaction<'_>, agent: &str, now: i64) -> Result<()> {
    let cursors = query(tx, "SELECT channel, seq FROM channel_cursors WHERE agent = $1", &[&agent]).await?;
    for c in cursors {
        let (channel, from): (String, i64) = (c.col(0)?, c.col(1)?);
        let rows = query(
            tx,
            "SELECT b.seq, b.id, b.sender, b.expires_at, d.state FROM broadcasts b
             LEFT JOIN deliveries d ON d.agent = $1 AND d.msg_id = b.id
             WHERE b.channel = $2 AND b.seq > $3 ORDER BY b.seq LIMIT 1000",
            &[&agent, &channel, &from],
        )
        .await?;
        let mut to = from;
        let mut acked: Vec<Uuid> = Vec::new();
        for r in &rows {
            let state: Option<String> = r.col(4)?;
            if !mr::passable(agent, &r.col::<String>(2)?, r.col(3)?, state.as_deref(), now) {
                break;
            }
            if state.as_deref() == Some("acked") {
                acked.push(r.col(1)?);
            }
            to = r.col(0)?;
        }
        if to > from {
            exec(tx, "DELETE FROM deliveries WHERE agent = $1 AND msg_id = ANY($2)", &[&agent, &acked])
                .await?;
            exec(
                tx,
                "UPDATE channel_cursors SET seq = $3 WHERE agent = $1 AND channel = $2",
                &[&agent, &channel, &to],
            )
            .await?;
        }
    }
    Ok(())
}

/// Acks (`nack_delay_ms: None`) or nacks receipts of `agent`, one outcome each.
async fn settle(
    tx: &Transaction<'_>,
    now: i64,
    agent: &str,
    receipts: &[Receipt],
    nack_delay_ms: Option<i64>,
) -> Result<Vec<ReceiptOutcome>> {
    touch(tx, agent, now).await?;
    let mut out = Vec::with_capacity(receipts.len());
    let mut broadcast_acked = false;
    for r in receipts {
        let found = query(
            tx,
            "SELECT kind FROM deliveries WHERE agent = $1 AND msg_id = $2 AND receipt = $3 AND state = 'in_flight'
             FOR UPDATE",
            &[&agent, &r.id, &r.token],
        )
        .await?;
        let Some(kind) = found.first().map(|row| row.col::<String>(0)).transpose()? else {
            out.push(ReceiptOutcome { id: r.id, error: Some(ferry_core::message::stale_receipt()) });
            continue;
        };
        match (nack_delay_ms, kind.as_str()) {
            (Some(d), _) => {
                exec(
                    tx,
                    "UPDATE deliveries SET state = 'ready', visible_at = $3, receipt = receipt + 1
                     WHERE agent = $1 AND msg_id = $2",
                    &[&agent, &r.id, &(now + d)],
                )
                .await?
            }
            (None, "direct") => {
                exec(tx, "DELETE FROM deliveries WHERE agent = $1 AND msg_id = $2", &[&agent, &r.id]).await?
            }
            (None, _) => {
                broadcast_acked = true;
                exec(
                    tx,
                    "UPDATE deliveries SET state = 'acked', receipt = receipt + 1 WHERE agent = $1 AND msg_id = $2",
                    &[&agent, &r.id],
                )
                .await?
            }
        };
        out.push(ReceiptOutcome { id: r.id, error: None });
    }
    if broadcast_acked {
        lock_agent(tx, agent).await?;
        advance_cursors(tx, agent, now).await?;
    }
    Ok(out)
}

async fn cursors(c: &Client, agent: &str) -> Result<Vec<ChannelCursor>> {
    let rows = c
        .query("SELECT channel, seq FROM channel_cursors WHERE agent = $1 ORDER BY channel", &[&agent])
        .await
        .map_err(pg_err)?;
    rows.iter().map(|r| Ok(ChannelCursor { channel: r.col(0)?, seq: r.col(1)? })).collect()
}

async fn info(c: &Client, name: String, last_seen_at: Option<i64>, now: i64) -> Result<AgentInfo> {
    let r = c
        .query_one(
            "SELECT count(*) FILTER (WHERE state IN ('ready', 'in_flight') AND visible_at <= $2 AND expires_at > $2),
                    count(*) FILTER (WHERE state = 'in_flight' AND visible_at > $2 AND expires_at > $2),
                    count(*) FILTER (WHERE state = 'dead'),
                    (SELECT count(*) FROM channel_cursors c JOIN broadcasts b ON b.channel = c.channel AND b.seq > c.seq
                     WHERE c.agent = $1 AND b.sender <> $1 AND b.expires_at > $2
                       AND NOT EXISTS (SELECT 1 FROM deliveries e WHERE e.agent = $1 AND e.msg_id = b.id))
             FROM deliveries WHERE agent = $1",
            &[&name, &now],
        )
        .await
        .map_err(pg_err)?;
    let n = |i: usize| -> Result<u64> { Ok(r.col::<i64>(i)? as u64) };
    Ok(AgentInfo {
        ready: n(0)? + n(3)?,
        in_flight: n(1)?,
        dead: n(2)?,
        name,
        last_seen_at: last_seen_at.map(Timestamp),
        channels: None,
    })
}

impl PgStore {
    fn hold_for(&self, from: &str) -> Duration {
        match std::env::var("FERRY_TEST_HOLD_BROADCAST") {
            Ok(v) => match v.split_once(':') {
                Some((who, ms))
                    if from == who || (who.ends_with('*') && from.starts_with(&who[..who.len() - 1])) =>
                {
                    Duration::from_millis(ms.parse().unwrap_or(0))
                }
                _ => Duration::ZERO,
            },
            Err(_) => Duration::ZERO,
        }
    }

    /// One numbering pass in its own transaction, under the sequencer's lock.
    async fn number_now(&self) -> Result<()> {
        let mut client = self.pool.get().await.map_err(super::pool_err)?;
        let tx = client.transaction().await.map_err(pg_err)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&super::events::SEQUENCER_LOCK])
            .await
            .map_err(pg_err)?;
        let n = number_broadcasts(&tx, &self.msg_channel, self.clock.now_ms()).await?;
        tx.commit().await.map_err(pg_err)?;
        if n > 0 {
            self.sequence.notify_one();
        }
        Ok(())
    }
}

#[async_trait]
impl MessageStore for PgStore {
    async fn send_message(&self, msg: NewMessage, rate: SendRate) -> Result<Sent> {
        let limits = self.limits.clone();
        self.tx("send_message", move |tx, now, fx| boxed!(send(tx, now, &msg, rate, &limits, fx).await)).await
    }

    async fn send_broadcast(&self, b: NewBroadcast, rate: SendRate) -> Result<BroadcastSent> {
        let hold = self.hold_for(&b.from);
        let (id, channel) = (b.id, b.channel.clone());
        let expires_at = self
            .tx("send_broadcast", move |tx, now, _| boxed!(broadcast(tx, now, &b, rate, hold).await))
            .await?;
        // Number it now (or find it numbered by another node's pass) to answer its seq.
        for _ in 0..100 {
            self.number_now().await?;
            let seq: Option<i64> = self
                .read(move |c| {
                    boxed!({
                        let r = c
                            .query_one("SELECT seq FROM broadcasts WHERE id = $1", &[&id])
                            .await
                            .map_err(pg_err)?;
                        r.col::<Option<i64>>(0)
                    })
                })
                .await?;
            if let Some(seq) = seq {
                return Ok(BroadcastSent { id, channel, seq, expires_at: Timestamp(expires_at) });
            }
        }
        Err(Error::unavailable(
            "the broadcast was stored but could not be numbered yet; its readers will get it",
        ))
    }

    async fn receive_messages(
        &self,
        agent: &str,
        req: ReceiveRequest,
        max_deliveries: u32,
    ) -> Result<Received> {
        let agent = agent.to_string();
        // Most receives of a waiting agent find nothing: answer those with one read, without
        // a transaction taking the agent's row lock.
        let (name, now) = (agent.clone(), self.clock.now_ms());
        let idle = self
            .read(move |c| {
                boxed!({
                    let sql = mr::IDLE_CHECK.replace("?1", "$1").replace("?2", "$2");
                    let stmt = c.prepare_cached(&sql).await.map_err(pg_err)?;
                    match c.query_opt(&stmt, &[&name, &now]).await.map_err(pg_err)? {
                        Some(r) => Ok(mr::idle(r.col(0)?, r.col(1)?, r.col(2)?, now)),
                        None => Ok(false),
                    }
                })
            })
            .await?;
        if idle {
            return Ok(Received::default());
        }
        self.tx("receive_messages", move |tx, now, fx| {
            boxed!(receive(tx, now, &agent, req, max_deliveries, fx).await)
        })
        .await
    }

    async fn ack_messages(&self, agent: &str, receipts: Vec<Receipt>) -> Result<Vec<ReceiptOutcome>> {
        let agent = agent.to_string();
        self.tx("ack_messages", move |tx, now, _| boxed!(settle(tx, now, &agent, &receipts, None).await))
            .await
    }

    async fn nack_messages(
        &self,
        agent: &str,
        receipts: Vec<Receipt>,
        delay_ms: i64,
    ) -> Result<Vec<ReceiptOutcome>> {
        let agent = agent.to_string();
        self.tx("nack_messages", move |tx, now, fx| {
            fx.wake(&wake_agent(&agent));
            boxed!(settle(tx, now, &agent, &receipts, Some(delay_ms)).await)
        })
        .await
    }

    async fn dead_messages(
        &self,
        agent: &str,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, DeadMessage)>> {
        let agent = agent.to_string();
        self.read(move |c| {
            boxed!({
                let rows = c
                    .query(
                        &format!(
                            "SELECT {DELIVERY_COLS} FROM {DELIVERY_JOIN}
                             WHERE d.agent = $1 AND d.state = 'dead' AND d.ord > $2 ORDER BY d.ord LIMIT $3"
                        ),
                        &[&agent, &after.unwrap_or(0), &(limit as i64)],
                    )
                    .await
                    .map_err(pg_err)?;
                rows.iter()
                    .map(|r| {
                        let d = delivery(r)?;
                        Ok((d.ord.unwrap_or(0), d.into_dead()?))
                    })
                    .collect()
            })
        })
        .await
    }

    async fn replay_dead_messages(&self, agent: &str, ids: Option<Vec<Uuid>>) -> Result<u64> {
        let agent = agent.to_string();
        self.tx("replay_dead_messages", move |tx, now, fx| {
            boxed!({
                let n = exec(
                    tx,
                    "UPDATE deliveries SET state = 'ready', visible_at = $2, delivery_count = 0, receipt = receipt + 1,
                        dead_at = NULL, expires_at = $2 + ttl_ms
                     WHERE agent = $1 AND state = 'dead' AND ($3::uuid[] IS NULL OR msg_id = ANY($3))",
                    &[&agent, &now, &ids],
                )
                .await?;
                if n > 0 {
                    fx.wake(&wake_agent(&agent));
                }
                Ok(n)
            })
        })
        .await
    }

    async fn set_channels(&self, agent: &str, channels: Vec<String>) -> Result<Vec<ChannelCursor>> {
        let agent = agent.to_string();
        self.tx("set_channels", move |tx, now, _| {
            boxed!({
                ensure_agents(tx, std::slice::from_ref(&agent), now).await?;
                lock_agent(tx, &agent).await?;
                exec(
                    tx,
                    "DELETE FROM channel_cursors WHERE agent = $1 AND NOT (channel = ANY($2))",
                    &[&agent, &channels],
                )
                .await?;
                for c in &channels {
                    subscribe(tx, &agent, c).await?;
                }
                let rows = query(
                    tx,
                    "SELECT channel, seq FROM channel_cursors WHERE agent = $1 ORDER BY channel",
                    &[&agent],
                )
                .await?;
                rows.iter().map(|r| Ok(ChannelCursor { channel: r.col(0)?, seq: r.col(1)? })).collect()
            })
        })
        .await
    }

    async fn list_agents(&self, filter: AgentFilter) -> Result<Vec<AgentInfo>> {
        let now = self.clock.now_ms();
        self.read(move |c| {
            boxed!({
                let rows = c
                    .query(
                        "SELECT name, last_seen_at FROM agents WHERE name > $1 AND ($2::text[] IS NULL OR name = ANY($2))
                         ORDER BY name LIMIT $3",
                        &[&filter.after.clone().unwrap_or_default(), &filter.names, &(filter.limit as i64)],
                    )
                    .await
                    .map_err(pg_err)?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    out.push(info(c, r.col(0)?, r.col(1)?, now).await?);
                }
                Ok(out)
            })
        })
        .await
    }

    async fn get_agent(&self, name: &str) -> Result<AgentInfo> {
        let (name, now) = (name.to_string(), self.clock.now_ms());
        self.read(move |c| {
            boxed!({
                let row = c
                    .query_opt("SELECT last_seen_at FROM agents WHERE name = $1", &[&name])
                    .await
                    .map_err(pg_err)?
                    .ok_or_else(|| ferry_core::message::agent_not_found(&name))?;
                let mut a = info(c, name.clone(), row.col(0)?, now).await?;
                a.channels = Some(cursors(c, &name).await?);
                Ok(a)
            })
        })
        .await
    }

    async fn message_counts(&self) -> Result<Vec<(&'static str, u64)>> {
        let now = self.clock.now_ms();
        self.read(move |c| {
            boxed!({
                let r = c
                    .query_one(
                        "SELECT count(*) FILTER (WHERE state IN ('ready', 'in_flight') AND visible_at <= $1),
                                count(*) FILTER (WHERE state = 'in_flight' AND visible_at > $1),
                                count(*) FILTER (WHERE state = 'dead')
                         FROM deliveries WHERE state <> 'acked' AND (state = 'dead' OR expires_at > $1)",
                        &[&now],
                    )
                    .await
                    .map_err(pg_err)?;
                Ok(vec![
                    ("ready", r.col::<i64>(0)? as u64),
                    ("in_flight", r.col::<i64>(1)? as u64),
                    ("dead", r.col::<i64>(2)? as u64),
                ])
            })
        })
        .await
    }

    async fn sweep_messages(&self, sw: MessageSweep) -> Result<u64> {
        self.tx("sweep_messages", move |tx, now, fx| {
            boxed!({
                let batch = sw.batch.max(1) as i64;
                let max = i64::from(sw.max_deliveries);
                let dead = query(
                    tx,
                    "UPDATE deliveries SET state = 'dead', dead_at = $1 WHERE ord IN (
                        SELECT ord FROM deliveries WHERE state IN ('ready', 'in_flight') AND visible_at <= $1
                        AND delivery_count >= $2 AND expires_at > $1 LIMIT $3 FOR UPDATE SKIP LOCKED)
                     RETURNING agent, msg_id, kind",
                    &[&now, &max, &batch],
                )
                .await?;
                let mut touched = dead.len() as u64;
                for r in &dead {
                    fx.event(mr::dead_event(&r.col::<String>(0)?, r.col(1)?, &r.col::<String>(2)?, now));
                }
                for sql in [
                    "DELETE FROM deliveries WHERE ord IN (SELECT ord FROM deliveries WHERE state <> 'dead'
                        AND expires_at <= $1 AND $2::bigint IS NOT NULL LIMIT $3 FOR UPDATE SKIP LOCKED)",
                    "DELETE FROM deliveries WHERE ord IN (SELECT ord FROM deliveries WHERE state = 'dead'
                        AND dead_at <= $1::bigint - $2::bigint LIMIT $3 FOR UPDATE SKIP LOCKED)",
                    "DELETE FROM messages WHERE id IN (SELECT id FROM messages m WHERE expires_at <= $1
                        AND $2::bigint IS NOT NULL AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.msg_id = m.id)
                        LIMIT $3 FOR UPDATE SKIP LOCKED)",
                    "DELETE FROM broadcasts WHERE serial IN (SELECT serial FROM broadcasts b WHERE expires_at <= $1
                        AND seq IS NOT NULL AND $2::bigint IS NOT NULL
                        AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.msg_id = b.id) LIMIT $3 FOR UPDATE SKIP LOCKED)",
                ] {
                    touched += exec(tx, sql, &[&now, &sw.dead_retention_ms, &batch]).await?;
                }
                Ok(touched)
            })
        })
        .await
    }
}

/// Violations of the message invariants.
pub async fn invariants(c: &Client) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (sql, what) in mr::INVARIANTS {
        for r in c.query(*sql, &[]).await.map_err(pg_err)? {
            out.push(format!("{what}: {}", r.col::<String>(0)?));
        }
    }
    Ok(out)
}
