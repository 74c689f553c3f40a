//! Agent messages as SQL over SQLite. The single writer numbers broadcasts in commit order, so
//! a channel's `seq` is gap-free and a cursor can never pass a row that commits later. Every
//! command checks (bucket, depth) before it writes: a refusal never poisons a group commit.

use super::{SqliteStore, db_err};
use crate::effects::Effects;
use crate::message_rows::{self as mr, DELIVERY_COLS, DELIVERY_JOIN, DeliveryRow};
use crate::{AgentFilter, MessageStore, MessageSweep};
use async_trait::async_trait;
use ferry_core::message::{
    AgentInfo, BroadcastSent, ChannelCursor, DEFAULT_CHANNEL, DeadMessage, NewBroadcast, NewMessage, Receipt,
    ReceiptOutcome, Received, Recipient, SendRate, Sent, wake_agent, wake_channel,
};
use ferry_core::wire::ReceiveRequest;
use ferry_core::{Limits, Result, Timestamp};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

/// Names an inbox: a new one is subscribed to `all` at its head.
fn ensure_agent(conn: &Connection, name: &str, now: i64) -> Result<()> {
    let added = conn
        .prepare_cached("INSERT INTO agents (name, created_at) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
        .and_then(|mut s| s.execute(params![name, now]))
        .map_err(db_err)?;
    if added == 1 {
        subscribe(conn, name, DEFAULT_CHANNEL)?;
    }
    Ok(())
}

fn head(conn: &Connection, channel: &str) -> Result<i64> {
    conn.prepare_cached("SELECT head FROM channels WHERE name = ?1")
        .and_then(|mut s| s.query_row([channel], |r| r.get::<_, i64>(0)).optional())
        .map_err(db_err)
        .map(|h| h.unwrap_or(0))
}

fn subscribe(conn: &Connection, agent: &str, channel: &str) -> Result<()> {
    conn.prepare_cached("INSERT INTO channels (name, head) VALUES (?1, 0) ON CONFLICT DO NOTHING")
        .and_then(|mut s| s.execute([channel]))
        .map_err(db_err)?;
    let h = head(conn, channel)?;
    conn.prepare_cached(
        "INSERT INTO channel_cursors (agent, channel, seq) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
    )
    .and_then(|mut s| s.execute(params![agent, channel, h]))
    .map_err(db_err)?;
    Ok(())
}

fn last_seen(conn: &Connection, name: &str) -> Result<Option<i64>> {
    conn.prepare_cached("SELECT last_seen_at FROM agents WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], |r| r.get::<_, Option<i64>>(0)).optional())
        .map_err(db_err)
        .map(Option::flatten)
}

fn touch(conn: &Connection, name: &str, now: i64) -> Result<()> {
    let second = ferry_core::message::to_second(now);
    conn.prepare_cached(
        "UPDATE agents SET last_seen_at = ?2 WHERE name = ?1 AND (last_seen_at IS NULL OR last_seen_at <> ?2)",
    )
    .and_then(|mut s| s.execute(params![name, second]))
    .map_err(db_err)?;
    Ok(())
}

/// Takes one token from `from`'s bucket, or refuses; the caller writes nothing after a refusal.
fn take_token(conn: &Connection, from: &str, rate: SendRate, now: i64) -> Result<Option<f64>> {
    if !rate.is_on() {
        return Ok(None);
    }
    let stored = conn
        .prepare_cached("SELECT tokens, tokens_at FROM agents WHERE name = ?1")
        .and_then(|mut s| {
            s.query_row([from], |r| Ok((r.get::<_, Option<f64>>(0)?, r.get::<_, Option<i64>>(1)?))).optional()
        })
        .map_err(db_err)?;
    let (tokens, at) = stored.unwrap_or((None, None));
    let held = rate.refill(tokens, at.unwrap_or(now), now);
    mr::check_bucket(from, rate, held)?;
    Ok(Some(held - 1.0))
}

fn store_tokens(conn: &Connection, from: &str, left: Option<f64>, now: i64) -> Result<()> {
    if let Some(t) = left {
        conn.prepare_cached("UPDATE agents SET tokens = ?2, tokens_at = ?3 WHERE name = ?1")
            .and_then(|mut s| s.execute(params![from, t, now]))
            .map_err(db_err)?;
    }
    Ok(())
}

fn depth(conn: &Connection, agent: &str, max: u64) -> Result<u64> {
    conn.prepare_cached(
        "SELECT count(*) FROM (SELECT 1 FROM deliveries WHERE agent = ?1 AND state IN ('ready', 'in_flight')
         LIMIT ?2)",
    )
    .and_then(|mut s| s.query_row(params![agent, max as i64], |r| r.get::<_, i64>(0)))
    .map_err(db_err)
    .map(|n| n as u64)
}

/// Stores a message for each recipient (see [`MessageStore::send_message`]).
pub fn send(
    conn: &Connection,
    now: i64,
    m: &NewMessage,
    rate: SendRate,
    limits: &Limits,
    fx: &mut Effects,
) -> Result<Sent> {
    if let Some(key) = &m.dedup_key {
        let first = conn
            .prepare_cached(
                "SELECT answer FROM messages WHERE sender = ?1 AND dedup_key = ?2 AND expires_at > ?3
                 ORDER BY sent_at DESC LIMIT 1",
            )
            .and_then(|mut s| s.query_row(params![m.from, key, now], |r| r.get::<_, String>(0)).optional())
            .map_err(db_err)?;
        if let Some(answer) = first {
            return mr::duplicate(&answer);
        }
    }
    let left = take_token(conn, &m.from, rate, now)?;
    for agent in &m.to {
        mr::check_depth(agent, depth(conn, agent, limits.max_inbox_depth)?, limits)?;
    }
    // Every check passed: write.
    ensure_agent(conn, &m.from, now)?;
    store_tokens(conn, &m.from, left, now)?;
    let mut recipients = Vec::with_capacity(m.to.len());
    let expires_at = now + m.ttl_ms;
    for agent in &m.to {
        ensure_agent(conn, agent, now)?;
        recipients
            .push(Recipient { agent: agent.clone(), last_seen_at: last_seen(conn, agent)?.map(Timestamp) });
        conn.prepare_cached(
            "INSERT INTO deliveries (agent, msg_id, kind, state, visible_at, receipt, delivery_count, expires_at, ttl_ms)
             VALUES (?1, ?2, 'direct', 'ready', ?3, 0, 0, ?4, ?5)",
        )
        .and_then(|mut s| s.execute(params![agent, m.id, now, expires_at, m.ttl_ms]))
        .map_err(db_err)?;
        fx.wake(&wake_agent(agent));
    }
    let sent = Sent { id: m.id, expires_at: Timestamp(expires_at), recipients, duplicate: false };
    conn.prepare_cached(
        "INSERT INTO messages (id, sender, body, sent_at, expires_at, reply_to, correlation_id, dedup_key, answer)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .and_then(|mut s| {
        s.execute(params![
            m.id,
            m.from,
            m.body,
            now,
            expires_at,
            m.reply_to,
            m.correlation_id,
            m.dedup_key,
            mr::answer_text(&sent)
        ])
    })
    .map_err(db_err)?;
    fx.events.extend(mr::sent_events(m, now));
    Ok(sent)
}

/// Stores one broadcast row, numbered by this writer (see [`MessageStore::send_broadcast`]).
pub fn broadcast(
    conn: &Connection,
    now: i64,
    b: &NewBroadcast,
    rate: SendRate,
    fx: &mut Effects,
) -> Result<BroadcastSent> {
    let left = take_token(conn, &b.from, rate, now)?;
    ensure_agent(conn, &b.from, now)?;
    store_tokens(conn, &b.from, left, now)?;
    conn.prepare_cached(
        "INSERT INTO channels (name, head) VALUES (?1, 1) ON CONFLICT DO UPDATE SET head = head + 1",
    )
    .and_then(|mut s| s.execute([&b.channel]))
    .map_err(db_err)?;
    let seq = head(conn, &b.channel)?;
    let expires_at = now + b.ttl_ms;
    conn.prepare_cached(
        "INSERT INTO broadcasts (id, channel, seq, sender, body, sent_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .and_then(|mut s| s.execute(params![b.id, b.channel, seq, b.from, b.body, now, expires_at]))
    .map_err(db_err)?;
    fx.wake(&wake_channel(&b.channel));
    fx.event(mr::broadcast_event(b.id, &b.from, &b.channel, seq, now));
    Ok(BroadcastSent { id: b.id, channel: b.channel.clone(), seq, expires_at: Timestamp(expires_at) })
}

fn delivery(r: &rusqlite::Row) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        ord: r.get(0)?,
        id: r.get(1)?,
        kind: r.get(2)?,
        receipt: r.get(4)?,
        delivery_count: r.get(5)?,
        expires_at: r.get(6)?,
        dead_at: r.get(7)?,
        from: r.get::<_, Option<String>>(8)?.unwrap_or_default(),
        body: r.get::<_, Option<String>>(9)?.unwrap_or_else(|| "null".into()),
        sent_at: r.get::<_, Option<i64>>(10)?.unwrap_or(0),
        reply_to: r.get(11)?,
        correlation_id: r.get(12)?,
        channel: r.get(13)?,
        seq: r.get(14)?,
    })
}

/// Visible deliveries of `agent`, oldest first.
fn visible(conn: &Connection, agent: &str, now: i64, limit: usize) -> Result<Vec<DeliveryRow>> {
    let mut s = conn
        .prepare_cached(&format!(
            "SELECT {DELIVERY_COLS} FROM {DELIVERY_JOIN}
             WHERE d.agent = ?1 AND d.state IN ('ready', 'in_flight') AND d.visible_at <= ?2 AND d.expires_at > ?2
             ORDER BY d.ord LIMIT ?3"
        ))
        .map_err(db_err)?;
    let rows = s.query_map(params![agent, now, limit as i64], delivery).map_err(db_err)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
}

/// Broadcasts of `agent`'s channels past its cursors that it has no delivery of yet.
fn unread(conn: &Connection, agent: &str, now: i64, limit: usize) -> Result<Vec<DeliveryRow>> {
    let mut s = conn
        .prepare_cached(
            "SELECT b.id, b.channel, b.seq, b.sender, b.body, b.sent_at, b.expires_at
             FROM channel_cursors c JOIN broadcasts b ON b.channel = c.channel AND b.seq > c.seq
             WHERE c.agent = ?1 AND b.sender <> ?1 AND b.expires_at > ?2
               AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.agent = ?1 AND d.msg_id = b.id)
             ORDER BY b.sent_at, b.seq LIMIT ?3",
        )
        .map_err(db_err)?;
    let rows = s
        .query_map(params![agent, now, limit as i64], |r| {
            Ok(DeliveryRow::unread(
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .map_err(db_err)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
}

/// Hands out up to `req.max` messages (see [`MessageStore::receive_messages`]).
pub fn receive(
    conn: &Connection,
    now: i64,
    agent: &str,
    req: ReceiveRequest,
    max_deliveries: u32,
    fx: &mut Effects,
) -> Result<Received> {
    ensure_agent(conn, agent, now)?;
    touch(conn, agent, now)?;
    advance_cursors(conn, agent, now)?;
    let mut out = Received::default();
    let mut broadcast_died = false;
    while out.messages.len() < req.max {
        let want = req.max - out.messages.len();
        let mut candidates = visible(conn, agent, now, want)?;
        candidates.extend(unread(conn, agent, now, want)?);
        if candidates.is_empty() {
            break;
        }
        candidates.sort_by_key(|c| (c.sent_at, c.seq.unwrap_or(0), c.ord.unwrap_or(0)));
        candidates.truncate(want);
        for c in candidates {
            if c.delivery_count >= max_deliveries {
                kill(conn, agent, &c, now, fx)?;
                broadcast_died |= c.kind == "broadcast";
                continue;
            }
            let (receipt, count) = deliver(conn, agent, &c, now + req.visibility_ms)?;
            if c.delivery_count == 0 {
                out.first_waits_ms.push(now - c.sent_at);
            }
            out.messages.push(c.into_message(receipt, count)?);
        }
    }
    if broadcast_died {
        // The cursor passes a dead broadcast now, not at this agent's next writing call.
        advance_cursors(conn, agent, now)?;
    }
    Ok(out)
}

/// Marks one candidate delivered until `visible_at`; its new receipt and count.
fn deliver(conn: &Connection, agent: &str, c: &DeliveryRow, visible_at: i64) -> Result<(Receipt, u32)> {
    let token = c.receipt + 1;
    if c.ord.is_some() {
        conn.prepare_cached(
            "UPDATE deliveries SET state = 'in_flight', visible_at = ?3, receipt = ?4, delivery_count = delivery_count + 1
             WHERE agent = ?1 AND msg_id = ?2",
        )
        .and_then(|mut s| s.execute(params![agent, c.id, visible_at, token]))
        .map_err(db_err)?;
    } else {
        conn.prepare_cached(
            "INSERT INTO deliveries (agent, msg_id, kind, state, visible_at, receipt, delivery_count, expires_at, ttl_ms)
             VALUES (?1, ?2, 'broadcast', 'in_flight', ?3, ?4, 1, ?5, ?6)",
        )
        .and_then(|mut s| s.execute(params![agent, c.id, visible_at, token, c.expires_at, c.expires_at - c.sent_at]))
        .map_err(db_err)?;
    }
    Ok((Receipt { id: c.id, token }, c.delivery_count + 1))
}

/// Moves a delivery past its last attempt to the agent's dead letters.
fn kill(conn: &Connection, agent: &str, c: &DeliveryRow, now: i64, fx: &mut Effects) -> Result<()> {
    conn.prepare_cached(
        "UPDATE deliveries SET state = 'dead', dead_at = ?3 WHERE agent = ?1 AND msg_id = ?2",
    )
    .and_then(|mut s| s.execute(params![agent, c.id, now]))
    .map_err(db_err)?;
    fx.event(mr::dead_event(agent, c.id, &c.kind, now));
    Ok(())
}

/// Moves every cursor of `agent` past the broadcasts it is done with: acked (their rows go),
/// dead, expired, or its own; it stops at the first one still to deliver or in flight.
fn advance_cursors(conn: &Connection, agent: &str, now: i64) -> Result<()> {
    let cursors: Vec<(String, i64)> = {
        let mut s = conn
            .prepare_cached("SELECT channel, seq FROM channel_cursors WHERE agent = ?1")
            .map_err(db_err)?;
        let rows = s.query_map([agent], |r| Ok((r.get(0)?, r.get(1)?))).map_err(db_err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)?
    };
    for (channel, from) in cursors {
        let mut to = from;
        let mut passed_acked = Vec::new();
        {
            let mut s = conn
                .prepare_cached(
                    "SELECT b.seq, b.id, b.sender, b.expires_at, d.state FROM broadcasts b
                     LEFT JOIN deliveries d ON d.agent = ?1 AND d.msg_id = b.id
                     WHERE b.channel = ?2 AND b.seq > ?3 ORDER BY b.seq LIMIT 1000",
                )
                .map_err(db_err)?;
            let mut rows = s.query(params![agent, channel, from]).map_err(db_err)?;
            while let Some(r) = rows.next().map_err(db_err)? {
                let (seq, id, sender, expires_at, state): (i64, Uuid, String, i64, Option<String>) = (
                    r.get(0).map_err(db_err)?,
                    r.get(1).map_err(db_err)?,
                    r.get(2).map_err(db_err)?,
                    r.get(3).map_err(db_err)?,
                    r.get(4).map_err(db_err)?,
                );
                if !mr::passable(agent, &sender, expires_at, state.as_deref(), now) {
                    break;
                }
                if state.as_deref() == Some("acked") {
                    passed_acked.push(id);
                }
                to = seq;
            }
        }
        if to > from {
            for id in passed_acked {
                conn.prepare_cached("DELETE FROM deliveries WHERE agent = ?1 AND msg_id = ?2")
                    .and_then(|mut s| s.execute(params![agent, id]))
                    .map_err(db_err)?;
            }
            conn.prepare_cached("UPDATE channel_cursors SET seq = ?3 WHERE agent = ?1 AND channel = ?2")
                .and_then(|mut s| s.execute(params![agent, channel, to]))
                .map_err(db_err)?;
        }
    }
    Ok(())
}

/// Acks (`delay_ms: None`) or nacks receipts of `agent`, one outcome each.
pub fn settle(
    conn: &Connection,
    now: i64,
    agent: &str,
    receipts: &[Receipt],
    nack_delay_ms: Option<i64>,
) -> Result<Vec<ReceiptOutcome>> {
    touch(conn, agent, now)?;
    let mut out = Vec::with_capacity(receipts.len());
    let mut broadcast_acked = false;
    for r in receipts {
        let kind = conn
            .prepare_cached(
                "SELECT kind FROM deliveries WHERE agent = ?1 AND msg_id = ?2 AND receipt = ?3 AND state = 'in_flight'",
            )
            .and_then(|mut s| s.query_row(params![agent, r.id, r.token], |r| r.get::<_, String>(0)).optional())
            .map_err(db_err)?;
        let Some(kind) = kind else {
            out.push(ReceiptOutcome { id: r.id, error: Some(ferry_core::message::stale_receipt()) });
            continue;
        };
        let sql = match (nack_delay_ms, kind.as_str()) {
            (Some(_), _) => {
                "UPDATE deliveries SET state = 'ready', visible_at = ?3, receipt = receipt + 1 WHERE agent = ?1 AND msg_id = ?2"
            }
            (None, "direct") => "DELETE FROM deliveries WHERE agent = ?1 AND msg_id = ?2 AND ?3 IS NOT NULL",
            (None, _) => {
                broadcast_acked = true;
                "UPDATE deliveries SET state = 'acked', receipt = receipt + 1 WHERE agent = ?1 AND msg_id = ?2 AND ?3 IS NOT NULL"
            }
        };
        conn.prepare_cached(sql)
            .and_then(|mut s| s.execute(params![agent, r.id, now + nack_delay_ms.unwrap_or(0)]))
            .map_err(db_err)?;
        out.push(ReceiptOutcome { id: r.id, error: None });
    }
    if broadcast_acked {
        advance_cursors(conn, agent, now)?;
    }
    Ok(out)
}

/// Dead letters of `agent` after position `after`.
pub fn dead(
    conn: &Connection,
    agent: &str,
    after: Option<i64>,
    limit: usize,
) -> Result<Vec<(i64, DeadMessage)>> {
    let mut s = conn
        .prepare_cached(&format!(
            "SELECT {DELIVERY_COLS} FROM {DELIVERY_JOIN}
             WHERE d.agent = ?1 AND d.state = 'dead' AND d.ord > ?2 ORDER BY d.ord LIMIT ?3"
        ))
        .map_err(db_err)?;
    let rows = s.query_map(params![agent, after.unwrap_or(0), limit as i64], delivery).map_err(db_err)?;
    rows.map(|r| {
        let d = r.map_err(db_err)?;
        Ok((d.ord.unwrap_or(0), d.into_dead()?))
    })
    .collect()
}

/// Puts dead letters back (all, or `ids`).
pub fn replay(
    conn: &Connection,
    now: i64,
    agent: &str,
    ids: Option<&[Uuid]>,
    fx: &mut Effects,
) -> Result<u64> {
    let sql =
        "UPDATE deliveries SET state = 'ready', visible_at = ?2, delivery_count = 0, receipt = receipt + 1,
               dead_at = NULL, expires_at = ?2 + ttl_ms WHERE agent = ?1 AND state = 'dead'";
    let n = match ids {
        None => conn.prepare_cached(sql).and_then(|mut s| s.execute(params![agent, now])).map_err(db_err)?,
        Some(ids) => {
            let mut n = 0;
            for id in ids {
                n += conn
                    .prepare_cached(&format!("{sql} AND msg_id = ?3"))
                    .and_then(|mut s| s.execute(params![agent, now, id]))
                    .map_err(db_err)?;
            }
            n
        }
    };
    if n > 0 {
        fx.wake(&wake_agent(agent));
    }
    Ok(n as u64)
}

/// Replaces `agent`'s subscriptions.
pub fn set_channels(
    conn: &Connection,
    now: i64,
    agent: &str,
    channels: &[String],
) -> Result<Vec<ChannelCursor>> {
    ensure_agent(conn, agent, now)?;
    let current = cursors(conn, agent)?;
    for c in &current {
        if !channels.contains(&c.channel) {
            conn.prepare_cached("DELETE FROM channel_cursors WHERE agent = ?1 AND channel = ?2")
                .and_then(|mut s| s.execute(params![agent, c.channel]))
                .map_err(db_err)?;
        }
    }
    for c in channels {
        subscribe(conn, agent, c)?;
    }
    cursors(conn, agent)
}

fn cursors(conn: &Connection, agent: &str) -> Result<Vec<ChannelCursor>> {
    let mut s = conn
        .prepare_cached("SELECT channel, seq FROM channel_cursors WHERE agent = ?1 ORDER BY channel")
        .map_err(db_err)?;
    let rows =
        s.query_map([agent], |r| Ok(ChannelCursor { channel: r.get(0)?, seq: r.get(1)? })).map_err(db_err)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
}

fn info(conn: &Connection, name: String, last_seen_at: Option<i64>, now: i64) -> Result<AgentInfo> {
    let (ready, in_flight, dead): (i64, i64, i64) = conn
        .prepare_cached(
            "SELECT coalesce(sum(state IN ('ready', 'in_flight') AND visible_at <= ?2 AND expires_at > ?2), 0),
                    coalesce(sum(state = 'in_flight' AND visible_at > ?2 AND expires_at > ?2), 0),
                    coalesce(sum(state = 'dead'), 0)
             FROM deliveries WHERE agent = ?1",
        )
        .and_then(|mut s| s.query_row(params![name, now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
        .map_err(db_err)?;
    let unread: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM channel_cursors c JOIN broadcasts b ON b.channel = c.channel AND b.seq > c.seq
             WHERE c.agent = ?1 AND b.sender <> ?1 AND b.expires_at > ?2
               AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.agent = ?1 AND d.msg_id = b.id)",
        )
        .and_then(|mut s| s.query_row(params![name, now], |r| r.get(0)))
        .map_err(db_err)?;
    Ok(AgentInfo {
        name,
        ready: (ready + unread) as u64,
        in_flight: in_flight as u64,
        dead: dead as u64,
        last_seen_at: last_seen_at.map(Timestamp),
        channels: None,
    })
}

/// Inboxes by name after the cursor.
pub fn list(conn: &Connection, now: i64, f: &AgentFilter) -> Result<Vec<AgentInfo>> {
    let names: Vec<(String, Option<i64>)> = {
        let mut s = conn
            .prepare_cached("SELECT name, last_seen_at FROM agents WHERE name > ?1 ORDER BY name")
            .map_err(db_err)?;
        let rows = s
            .query_map([f.after.as_deref().unwrap_or("")], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(db_err)?;
        let mut out = Vec::new();
        for r in rows {
            let (name, seen): (String, Option<i64>) = r.map_err(db_err)?;
            if f.names.as_ref().is_none_or(|ns| ns.contains(&name)) {
                out.push((name, seen));
                if out.len() >= f.limit {
                    break;
                }
            }
        }
        out
    };
    names.into_iter().map(|(n, seen)| info(conn, n, seen, now)).collect()
}

/// One inbox with its channels.
pub fn get(conn: &Connection, now: i64, name: &str) -> Result<AgentInfo> {
    let seen = conn
        .prepare_cached("SELECT last_seen_at FROM agents WHERE name = ?1")
        .and_then(|mut s| s.query_row([name], |r| r.get::<_, Option<i64>>(0)).optional())
        .map_err(db_err)?
        .ok_or_else(|| ferry_core::message::agent_not_found(name))?;
    let mut a = info(conn, name.to_string(), seen, now)?;
    a.channels = Some(cursors(conn, name)?);
    Ok(a)
}

/// Deliveries by state.
pub fn counts(conn: &Connection, now: i64) -> Result<Vec<(&'static str, u64)>> {
    let (ready, in_flight, dead): (i64, i64, i64) = conn
        .prepare_cached(
            "SELECT coalesce(sum(state IN ('ready', 'in_flight') AND visible_at <= ?1), 0),
                    coalesce(sum(state = 'in_flight' AND visible_at > ?1), 0),
                    coalesce(sum(state = 'dead'), 0)
             FROM deliveries WHERE state <> 'acked' AND (state = 'dead' OR expires_at > ?1)",
        )
        .and_then(|mut s| s.query_row([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
        .map_err(db_err)?;
    Ok(vec![("ready", ready as u64), ("in_flight", in_flight as u64), ("dead", dead as u64)])
}

/// One sweep step after another (see [`MessageStore::sweep_messages`]).
pub fn sweep(conn: &Connection, now: i64, sw: MessageSweep, fx: &mut Effects) -> Result<u64> {
    let batch = sw.batch.max(1) as i64;
    let mut touched = 0u64;
    let overdue: Vec<(String, Uuid, String)> = {
        let mut s = conn
            .prepare_cached(
                "SELECT agent, msg_id, kind FROM deliveries WHERE state IN ('ready', 'in_flight') AND visible_at <= ?1
                 AND delivery_count >= ?2 AND expires_at > ?1 LIMIT ?3",
            )
            .map_err(db_err)?;
        let rows = s
            .query_map(params![now, sw.max_deliveries, batch], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(db_err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)?
    };
    for (agent, id, kind) in overdue {
        conn.prepare_cached(
            "UPDATE deliveries SET state = 'dead', dead_at = ?3 WHERE agent = ?1 AND msg_id = ?2",
        )
        .and_then(|mut s| s.execute(params![agent, id, now]))
        .map_err(db_err)?;
        fx.event(mr::dead_event(&agent, id, &kind, now));
        touched += 1;
    }
    for sql in [
        "DELETE FROM deliveries WHERE ord IN (SELECT ord FROM deliveries WHERE state <> 'dead' AND expires_at <= ?1 LIMIT ?3)",
        "DELETE FROM deliveries WHERE ord IN (SELECT ord FROM deliveries WHERE state = 'dead' AND dead_at <= ?1 - ?2 LIMIT ?3)",
        "DELETE FROM messages WHERE id IN (SELECT id FROM messages m WHERE expires_at <= ?1 AND ?2 = ?2
            AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.msg_id = m.id) LIMIT ?3)",
        "DELETE FROM broadcasts WHERE id IN (SELECT id FROM broadcasts b WHERE expires_at <= ?1 AND ?2 = ?2
            AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.msg_id = b.id) LIMIT ?3)",
    ] {
        touched += conn
            .prepare_cached(sql)
            .and_then(|mut s| s.execute(params![now, sw.dead_retention_ms, batch]))
            .map_err(db_err)? as u64;
    }
    Ok(touched)
}

/// Violations of the message invariants.
pub fn invariants(conn: &Connection) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (sql, what) in mr::INVARIANTS {
        let mut s = conn.prepare(sql).map_err(db_err)?;
        let found = s.query_map([], |r| r.get::<_, String>(0)).map_err(db_err)?;
        for f in found {
            out.push(format!("{what}: {}", f.map_err(db_err)?));
        }
    }
    Ok(out)
}

impl SqliteStore {
    fn now(&self) -> i64 {
        self.clock.now_ms()
    }
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn send_message(&self, msg: NewMessage, rate: SendRate) -> Result<Sent> {
        let limits = self.limits.clone();
        self.write("send_message", move |c, now, fx| send(c, now, &msg, rate, &limits, fx)).await
    }

    async fn send_broadcast(&self, b: NewBroadcast, rate: SendRate) -> Result<BroadcastSent> {
        self.write("send_broadcast", move |c, now, fx| broadcast(c, now, &b, rate, fx)).await
    }

    async fn receive_messages(
        &self,
        agent: &str,
        req: ReceiveRequest,
        max_deliveries: u32,
    ) -> Result<Received> {
        let agent = agent.to_string();
        // Most receives of a waiting agent find nothing: answer those from a reader, and leave
        // the single writer to the receives that deliver.
        let (name, now) = (agent.clone(), self.now());
        let idle = self
            .readers
            .read(move |c| {
                c.prepare_cached(mr::IDLE_CHECK)
                    .and_then(|mut s| {
                        s.query_row(params![name, now], |r| {
                            Ok(mr::idle(r.get(0)?, r.get(1)?, r.get(2)?, now))
                        })
                        .optional()
                    })
                    .map_err(db_err)
            })
            .await?;
        if idle == Some(true) {
            return Ok(Received::default());
        }
        self.write("receive_messages", move |c, now, fx| receive(c, now, &agent, req, max_deliveries, fx))
            .await
    }

    async fn ack_messages(&self, agent: &str, receipts: Vec<Receipt>) -> Result<Vec<ReceiptOutcome>> {
        let agent = agent.to_string();
        self.write("ack_messages", move |c, now, _| settle(c, now, &agent, &receipts, None)).await
    }

    async fn nack_messages(
        &self,
        agent: &str,
        receipts: Vec<Receipt>,
        delay_ms: i64,
    ) -> Result<Vec<ReceiptOutcome>> {
        let agent = agent.to_string();
        self.write("nack_messages", move |c, now, fx| {
            fx.wake(&wake_agent(&agent));
            settle(c, now, &agent, &receipts, Some(delay_ms))
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
        self.readers.read(move |c| dead(c, &agent, after, limit)).await
    }

    async fn replay_dead_messages(&self, agent: &str, ids: Option<Vec<Uuid>>) -> Result<u64> {
        let agent = agent.to_string();
        self.write("replay_dead_messages", move |c, now, fx| replay(c, now, &agent, ids.as_deref(), fx)).await
    }

    async fn set_channels(&self, agent: &str, channels: Vec<String>) -> Result<Vec<ChannelCursor>> {
        let agent = agent.to_string();
        self.write("set_channels", move |c, now, _| set_channels(c, now, &agent, &channels)).await
    }

    async fn list_agents(&self, filter: AgentFilter) -> Result<Vec<AgentInfo>> {
        let now = self.now();
        self.readers.read(move |c| list(c, now, &filter)).await
    }

    async fn get_agent(&self, name: &str) -> Result<AgentInfo> {
        let (name, now) = (name.to_string(), self.now());
        self.readers.read(move |c| get(c, now, &name)).await
    }

    async fn message_counts(&self) -> Result<Vec<(&'static str, u64)>> {
        let now = self.now();
        self.readers.read(move |c| counts(c, now)).await
    }

    async fn sweep_messages(&self, sweep: MessageSweep) -> Result<u64> {
        self.write("sweep_messages", move |c, now, fx| self::sweep(c, now, sweep, fx)).await
    }
}
