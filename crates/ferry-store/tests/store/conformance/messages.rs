//! The agent-message part of the `Store` contract: sends, receives with visibility and
//! redelivery, acks and nacks with fencing receipts, dead letters and their replay, order,
//! dedup keys, expiry and the sweep, the per-sender send rate and the inbox depth cap (both on
//! the virtual clock), broadcasts read past per-agent channel cursors, subscriptions, the agent
//! list, counts by state, the events, and the separation of agents from queues of the same name.

use super::{Harness, T0, claim, complete, enqueue1, events_after, job};
use ferry_core::message::{
    AgentInfo, BroadcastSent, ChannelCursor, DEFAULT_CHANNEL, DeadMessage, Message, MessageKind,
    NewBroadcast, NewMessage, Receipt, ReceiptOutcome, Recipient, SendRate, Sent, to_second,
};
use ferry_core::wire::ReceiveRequest;
use ferry_core::*;
use ferry_store::{AgentFilter, MessageSweep};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use uuid::Uuid;

// ---------- helpers ----------

const DAY: i64 = 86_400_000;

/// The default `[messages] max_deliveries`.
const MAX_DELIVERIES: u32 = 5;

/// The limits `depth_cap` runs under: inboxes of five.
pub fn small_inbox() -> Limits {
    Limits { max_inbox_depth: 5, ..Limits::default() }
}

/// A message from `from` to `to`, body `{"n":1}`, living a day.
fn message(from: &str, to: &[&str]) -> NewMessage {
    NewMessage {
        id: Uuid::now_v7(),
        to: to.iter().map(|a| a.to_string()).collect(),
        from: from.into(),
        body: r#"{"n":1}"#.into(),
        ttl_ms: DAY,
        dedup_key: None,
        reply_to: None,
        correlation_id: None,
    }
}

fn message_with(from: &str, to: &[&str], f: impl FnOnce(&mut NewMessage)) -> NewMessage {
    let mut m = message(from, to);
    f(&mut m);
    m
}

/// A broadcast from `from` on `channel`, body `{"b":1}`, living a day.
fn broadcast(from: &str, channel: &str) -> NewBroadcast {
    NewBroadcast {
        id: Uuid::now_v7(),
        channel: channel.into(),
        from: from.into(),
        body: r#"{"b":1}"#.into(),
        ttl_ms: DAY,
    }
}

/// Sends without a rate limit.
async fn send(h: &Harness, m: NewMessage) -> Sent {
    h.store.send_message(m, SendRate::OFF).await.unwrap()
}

/// Broadcasts without a rate limit.
async fn cast(h: &Harness, b: NewBroadcast) -> BroadcastSent {
    h.store.send_broadcast(b, SendRate::OFF).await.unwrap()
}

fn req(max: usize, visibility_ms: i64) -> ReceiveRequest {
    ReceiveRequest { max, wait_ms: 0, visibility_ms }
}

/// Receives under the default `max_deliveries`.
async fn receive(h: &Harness, agent: &str, max: usize, visibility_ms: i64) -> Vec<Message> {
    receive_md(h, agent, max, visibility_ms, MAX_DELIVERIES).await
}

/// Receives under `max_deliveries`.
async fn receive_md(
    h: &Harness,
    agent: &str,
    max: usize,
    visibility_ms: i64,
    max_deliveries: u32,
) -> Vec<Message> {
    h.store.receive_messages(agent, req(max, visibility_ms), max_deliveries).await.unwrap().messages
}

/// Names an inbox that holds nothing yet (a receive that gets nothing).
async fn name(h: &Harness, agent: &str) {
    assert!(receive(h, agent, 1, 30_000).await.is_empty(), "{agent} is a fresh inbox");
}

fn receipt(m: &Message) -> Receipt {
    let r = Receipt::parse(&m.receipt).expect("a receipt the store handed out parses");
    assert_eq!(r.id, m.id, "a receipt names its message");
    r
}

fn outcome(out: Vec<ReceiptOutcome>, r: Receipt) -> Option<ErrorCode> {
    assert_eq!(out.len(), 1, "one outcome per receipt");
    assert_eq!(out[0].id, r.id, "the outcome names the receipt's message");
    out[0].error.as_ref().map(|e| e.code)
}

/// Acks one receipt: `None` when done, else the outcome's error code.
async fn ack1(h: &Harness, agent: &str, receipt: &str) -> Option<ErrorCode> {
    let r = Receipt::parse(receipt).expect("a receipt");
    outcome(h.store.ack_messages(agent, vec![r]).await.unwrap(), r)
}

/// Nacks one receipt: `None` when done, else the outcome's error code.
async fn nack1(h: &Harness, agent: &str, receipt: &str, delay_ms: i64) -> Option<ErrorCode> {
    let r = Receipt::parse(receipt).expect("a receipt");
    outcome(h.store.nack_messages(agent, vec![r], delay_ms).await.unwrap(), r)
}

async fn ack_all(h: &Harness, agent: &str, msgs: &[Message]) {
    let out = h.store.ack_messages(agent, msgs.iter().map(receipt).collect()).await.unwrap();
    assert_eq!(out.len(), msgs.len());
    for (o, m) in out.iter().zip(msgs) {
        assert_eq!((o.id, o.error.as_ref().map(|e| e.code)), (m.id, None), "ack of {}", m.id);
    }
}

async fn agent(h: &Harness, name: &str) -> AgentInfo {
    h.store.get_agent(name).await.unwrap_or_else(|e| panic!("agent {name}: {e:?}"))
}

/// (ready, in_flight, dead) of one inbox.
async fn depth(h: &Harness, name: &str) -> (u64, u64, u64) {
    let a = agent(h, name).await;
    (a.ready, a.in_flight, a.dead)
}

async fn not_found(h: &Harness, name: &str) {
    let e = h.store.get_agent(name).await.expect_err("never named");
    assert_eq!(e.code, ErrorCode::NotFound, "{name}: {e:?}");
}

fn cursor(channel: &str, seq: i64) -> ChannelCursor {
    ChannelCursor { channel: channel.into(), seq }
}

/// An agent's channels, sorted by name.
async fn channels(h: &Harness, name: &str) -> Vec<ChannelCursor> {
    let mut c = agent(h, name).await.channels.expect("get_agent lists the channels");
    c.sort_by(|a, b| a.channel.cmp(&b.channel));
    c
}

/// Cluster-wide counts by state, zeros left out.
async fn counts(h: &Harness) -> BTreeMap<&'static str, u64> {
    h.store.message_counts().await.unwrap().into_iter().filter(|(_, n)| *n > 0).collect()
}

fn count_map(v: &[(&'static str, u64)]) -> BTreeMap<&'static str, u64> {
    v.iter().copied().collect()
}

/// Every dead letter of `agent`.
async fn dead_all(h: &Harness, agent: &str) -> Vec<DeadMessage> {
    h.store.dead_messages(agent, None, 1_000).await.unwrap().into_iter().map(|(_, d)| d).collect()
}

fn ids(msgs: &[Message]) -> Vec<Uuid> {
    msgs.iter().map(|m| m.id).collect()
}

fn json_of(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).expect("a body is JSON")
}

/// Sweeps until a pass touches nothing; returns the rows touched in all.
async fn sweep_all(h: &Harness, sweep: MessageSweep) -> u64 {
    let mut total = 0;
    for _ in 0..50 {
        let n = h.store.sweep_messages(sweep).await.unwrap();
        if n == 0 {
            return total;
        }
        total += n;
    }
    panic!("the sweep still touches rows after 50 passes ({total} so far)");
}

fn sweep(batch: usize, dead_retention_ms: i64, max_deliveries: u32) -> MessageSweep {
    MessageSweep { batch, dead_retention_ms, max_deliveries }
}

// ---------- send, receive, ack ----------

pub async fn send_then_receive_then_ack(h: Harness) {
    h.clock.advance(5_000);
    let m = message_with("a", &["b"], |m| {
        m.body = r#"{"k": [1, 2]}"#.into();
        m.ttl_ms = 60_000;
        m.reply_to = Some("a".into());
        m.correlation_id = Some("conv-1".into());
    });
    let id = m.id;
    let sent = send(&h, m).await;
    assert_eq!(sent.id, id);
    assert_eq!(sent.expires_at, Timestamp(T0 + 65_000));
    assert_eq!(sent.recipients, vec![Recipient { agent: "b".into(), last_seen_at: None }]);
    assert!(!sent.duplicate);
    // The send named both inboxes, each subscribed to `all` at its head.
    let b = agent(&h, "b").await;
    assert_eq!((b.name.as_str(), b.ready, b.in_flight, b.dead, b.last_seen_at), ("b", 1, 0, 0, None));
    assert_eq!(b.channels, Some(vec![cursor(DEFAULT_CHANNEL, 0)]));
    assert_eq!(depth(&h, "a").await, (0, 0, 0));
    not_found(&h, "nobody").await;
    // Received 2.5 s after the send.
    h.clock.advance(2_500);
    let got = h.store.receive_messages("b", req(10, 30_000), MAX_DELIVERIES).await.unwrap();
    assert_eq!(got.first_waits_ms, vec![2_500], "send to first receive");
    let got = got.messages;
    assert_eq!(ids(&got), [id]);
    let msg = &got[0];
    assert_eq!((msg.kind, msg.channel.as_deref(), msg.from.as_str()), (MessageKind::Direct, None, "a"));
    assert_eq!(json_of(&msg.body), json!({"k": [1, 2]}));
    assert_eq!((msg.sent_at, msg.expires_at), (Timestamp(T0 + 5_000), Timestamp(T0 + 65_000)));
    assert_eq!((msg.reply_to.as_deref(), msg.correlation_id.as_deref()), (Some("a"), Some("conv-1")));
    assert_eq!(msg.delivery_count, 1);
    receipt(msg);
    let seen = Some(Timestamp(to_second(T0 + 7_500)));
    let b = agent(&h, "b").await;
    assert_eq!((b.ready, b.in_flight, b.dead, b.last_seen_at), (0, 1, 0, seen), "last_seen_at to the second");
    assert!(receive(&h, "b", 10, 30_000).await.is_empty(), "held while visible to its receiver");
    // The ack removes it.
    assert_eq!(ack1(&h, "b", &msg.receipt).await, None);
    assert!(receive(&h, "b", 10, 30_000).await.is_empty());
    h.clock.advance(60_000);
    assert!(receive(&h, "b", 10, 30_000).await.is_empty(), "nothing comes back after its ack");
    assert_eq!(depth(&h, "b").await, (0, 0, 0));
    // Its receipt is stale now, for an ack and a nack alike.
    assert_eq!(ack1(&h, "b", &msg.receipt).await, Some(ErrorCode::StaleLease));
    assert_eq!(nack1(&h, "b", &msg.receipt, 0).await, Some(ErrorCode::StaleLease));
    // A later send answers each recipient's last_seen_at, in the order given.
    let now = h.clock.now_ms();
    let sent = send(&h, message("a", &["b", "c"])).await;
    assert_eq!(
        sent.recipients,
        vec![
            Recipient { agent: "b".into(), last_seen_at: Some(Timestamp(to_second(now))) },
            Recipient { agent: "c".into(), last_seen_at: None },
        ]
    );
    // Another agent's receipt does not ack b's message.
    let got = receive(&h, "b", 10, 30_000).await;
    assert_eq!(ids(&got), [sent.id]);
    assert_eq!(ack1(&h, "c", &got[0].receipt).await, Some(ErrorCode::StaleLease));
    assert_eq!(depth(&h, "b").await, (0, 1, 0), "the foreign ack changed nothing");
    assert_eq!(ack1(&h, "b", &got[0].receipt).await, None);
    // c's copy is its own.
    let got = receive(&h, "c", 10, 30_000).await;
    assert_eq!(ids(&got), [sent.id]);
    assert_eq!(got[0].delivery_count, 1);
    h.finish().await;
}

pub async fn visibility_and_redelivery(h: Harness) {
    let id = send(&h, message("a", &["b"])).await.id;
    let first = receive(&h, "b", 1, 1_000).await;
    assert_eq!(ids(&first), [id]);
    assert_eq!(first[0].delivery_count, 1);
    h.clock.advance(999);
    assert!(receive(&h, "b", 1, 1_000).await.is_empty(), "held until its visibility ends");
    h.clock.advance(2);
    assert_eq!(depth(&h, "b").await, (1, 0, 0), "past its visibility it is ready again");
    let got = h.store.receive_messages("b", req(1, 1_000), MAX_DELIVERIES).await.unwrap();
    assert!(got.first_waits_ms.is_empty(), "only a first delivery reports a wait");
    let second = got.messages;
    assert_eq!(ids(&second), [id]);
    assert_eq!(second[0].delivery_count, 2);
    assert_ne!(second[0].receipt, first[0].receipt, "a new delivery, a new receipt");
    assert!(receipt(&second[0]).token > receipt(&first[0]).token, "the fencing token grows");
    assert_eq!(ack1(&h, "b", &first[0].receipt).await, Some(ErrorCode::StaleLease));
    assert_eq!(nack1(&h, "b", &first[0].receipt, 0).await, Some(ErrorCode::StaleLease));
    assert_eq!(depth(&h, "b").await, (0, 1, 0), "stale receipts changed nothing");
    // One ack call, one outcome per receipt in order: the stale one refused, the fresh one done.
    let out = h.store.ack_messages("b", vec![receipt(&first[0]), receipt(&second[0])]).await.unwrap();
    let got: Vec<(Uuid, Option<ErrorCode>)> =
        out.iter().map(|o| (o.id, o.error.as_ref().map(|e| e.code))).collect();
    assert_eq!(got, [(id, Some(ErrorCode::StaleLease)), (id, None)]);
    h.clock.advance(10_000);
    assert!(receive(&h, "b", 1, 1_000).await.is_empty(), "nothing after its ack");
    assert_eq!(depth(&h, "b").await, (0, 0, 0));
    h.finish().await;
}

pub async fn nack_with_delay(h: Harness) {
    let id = send(&h, message("a", &["b"])).await.id;
    let first = receive(&h, "b", 1, 30_000).await;
    assert_eq!(ids(&first), [id]);
    assert_eq!(nack1(&h, "b", &first[0].receipt, 500).await, None);
    let stale = ack1(&h, "b", &first[0].receipt).await;
    assert_eq!(stale, Some(ErrorCode::StaleLease), "a nack makes its receipt stale");
    assert!(receive(&h, "b", 1, 30_000).await.is_empty(), "hidden for the delay");
    h.clock.advance(499);
    assert!(receive(&h, "b", 1, 30_000).await.is_empty(), "hidden for the delay");
    h.clock.advance(2);
    let second = receive(&h, "b", 1, 30_000).await;
    assert_eq!(ids(&second), [id]);
    assert_eq!(second[0].delivery_count, 2, "a nack does not undo a delivery");
    assert_ne!(second[0].receipt, first[0].receipt);
    // No delay: visible at once.
    assert_eq!(nack1(&h, "b", &second[0].receipt, 0).await, None);
    assert_eq!(depth(&h, "b").await, (1, 0, 0));
    let third = receive(&h, "b", 1, 30_000).await;
    assert_eq!(ids(&third), [id]);
    assert_eq!(third[0].delivery_count, 3);
    assert_eq!(ack1(&h, "b", &third[0].receipt).await, None);
    let stale = nack1(&h, "b", &third[0].receipt, 0).await;
    assert_eq!(stale, Some(ErrorCode::StaleLease), "no nack after an ack");
    assert!(receive(&h, "b", 1, 30_000).await.is_empty());
    h.finish().await;
}

// ---------- dead letters ----------

pub async fn dead_after_max_deliveries(h: Harness) {
    let m = message_with("a", &["b"], |m| m.ttl_ms = 3_600_000);
    let id = m.id;
    send(&h, m).await;
    for n in 1..=3 {
        let got = receive_md(&h, "b", 1, 1_000, 3).await;
        assert_eq!(ids(&got), [id], "delivery {n}");
        assert_eq!(got[0].delivery_count, n);
        h.clock.advance(1_001);
    }
    let died_at = h.clock.now_ms();
    assert!(receive_md(&h, "b", 1, 1_000, 3).await.is_empty(), "past max_deliveries it goes dead, not out");
    let dead = dead_all(&h, "b").await;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(
        (d.id, d.kind, d.channel.as_deref(), d.from.as_str(), d.delivery_count),
        (id, MessageKind::Direct, None, "a", 3)
    );
    assert_eq!((d.sent_at, d.dead_at), (Timestamp(T0), Timestamp(died_at)));
    assert_eq!(json_of(&d.body), json!({"n": 1}));
    assert_eq!(depth(&h, "b").await, (0, 0, 1));
    assert_eq!(counts(&h).await, count_map(&[("dead", 1)]));
    // Replay: back in the inbox with a fresh count and ttl.
    h.clock.advance(10_000);
    assert_eq!(h.store.replay_dead_messages("b", None).await.unwrap(), 1);
    assert!(dead_all(&h, "b").await.is_empty());
    let again = receive_md(&h, "b", 1, 1_000, 3).await;
    assert_eq!(ids(&again), [id]);
    assert_eq!(again[0].delivery_count, 1, "the count starts over");
    let restarted = Timestamp(h.clock.now_ms() + 3_600_000);
    assert_eq!(again[0].expires_at, restarted, "the ttl restarts at the replay");
    assert_eq!(ack1(&h, "b", &again[0].receipt).await, None);
    assert_eq!(h.store.replay_dead_messages("b", None).await.unwrap(), 0, "nothing left to replay");

    // Dead letters page by their position.
    let mut sent = Vec::new();
    for _ in 0..3 {
        sent.push(send(&h, message("a", &["c"])).await.id);
    }
    assert_eq!(receive_md(&h, "c", 10, 1_000, 1).await.len(), 3);
    h.clock.advance(1_001);
    assert!(receive_md(&h, "c", 10, 1_000, 1).await.is_empty(), "all three go dead");
    let p1 = h.store.dead_messages("c", None, 2).await.unwrap();
    assert_eq!(p1.len(), 2);
    let p2 = h.store.dead_messages("c", Some(p1[1].0), 2).await.unwrap();
    assert_eq!(p2.len(), 1);
    assert!(p1[0].0 < p1[1].0 && p1[1].0 < p2[0].0, "positions grow along the pages");
    assert!(h.store.dead_messages("c", Some(p2[0].0), 2).await.unwrap().is_empty(), "the last page ends it");
    let mut paged: Vec<Uuid> = p1.iter().chain(&p2).map(|(_, d)| d.id).collect();
    paged.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(paged, want, "each dead letter once across the pages");
    assert!(p1.iter().chain(&p2).all(|(_, d)| d.delivery_count == 1 && d.kind == MessageKind::Direct));
    assert!(dead_all(&h, "b").await.is_empty(), "c's dead letters are not b's");
    // Replay by id: only those, only the agent's own.
    let one = p1[0].1.id;
    assert_eq!(h.store.replay_dead_messages("c", Some(vec![Uuid::now_v7()])).await.unwrap(), 0, "unknown id");
    assert_eq!(h.store.replay_dead_messages("b", Some(vec![one])).await.unwrap(), 0, "c's, not b's");
    assert_eq!(h.store.replay_dead_messages("c", Some(vec![one])).await.unwrap(), 1);
    assert_eq!(dead_all(&h, "c").await.len(), 2);
    let back = receive_md(&h, "c", 10, 30_000, 1).await;
    assert_eq!(ids(&back), [one]);
    assert_eq!(back[0].delivery_count, 1);
    ack_all(&h, "c", &back).await;
    assert_eq!(depth(&h, "c").await, (0, 0, 2));

    // The sweep moves an overdue delivery too, without a receive.
    let id = send(&h, message("a", &["e"])).await.id;
    assert_eq!(ids(&receive_md(&h, "e", 1, 1_000, 1).await), [id]);
    h.clock.advance(1_001);
    assert!(sweep_all(&h, sweep(100, 7 * DAY, 1)).await >= 1);
    let dead = dead_all(&h, "e").await;
    assert_eq!(dead.iter().map(|d| d.id).collect::<Vec<_>>(), [id]);
    assert_eq!(dead[0].delivery_count, 1);
    assert_eq!(depth(&h, "e").await, (0, 0, 1));
    h.finish().await;
}

// ---------- order and dedup ----------

/// One sender's messages to one agent come back in send order, with the clock standing still
/// (ties broken by send order) and with other senders' messages between them.
pub async fn order(h: Harness) {
    let mut from_a = Vec::new();
    let mut from_c = Vec::new();
    for n in 0..12 {
        let m = message_with("a", &["b"], |m| m.body = format!(r#"{{"n":{n}}}"#));
        from_a.push(send(&h, m).await.id);
        if n % 3 == 0 {
            from_c.push(send(&h, message("c", &["b"])).await.id);
        }
        if n == 6 {
            h.clock.advance(1);
        }
    }
    let mut got = receive(&h, "b", 10, 30_000).await;
    assert_eq!(got.len(), 10);
    got.extend(receive(&h, "b", 10, 30_000).await);
    assert_eq!(got.len(), 16);
    let of = |from: &str| got.iter().filter(|m| m.from == from).map(|m| m.id).collect::<Vec<_>>();
    assert_eq!(of("a"), from_a, "a's messages in send order");
    assert_eq!(of("c"), from_c, "c's messages in send order");
    let bodies: Vec<Value> = got.iter().filter(|m| m.from == "a").map(|m| json_of(&m.body)).collect();
    assert_eq!(bodies, (0..12).map(|n| json!({"n": n})).collect::<Vec<_>>());
    assert!(receive(&h, "b", 10, 30_000).await.is_empty());
    h.finish().await;
}

pub async fn dedup(h: Harness) {
    let keyed = |from: &str| {
        message_with(from, &["b"], |m| {
            m.dedup_key = Some("k1".into());
            m.ttl_ms = 10_000;
        })
    };
    let first = send(&h, keyed("a")).await;
    assert!(!first.duplicate);
    h.clock.advance(1_000);
    let repeat = keyed("a");
    let repeat_id = repeat.id;
    let again = send(&h, repeat).await;
    assert!(again.duplicate, "the same from and dedup_key before expiry");
    assert_ne!(repeat_id, first.id);
    assert_eq!((again.id, again.expires_at), (first.id, first.expires_at), "the first send's answer");
    assert_eq!(again.recipients.iter().map(|r| r.agent.as_str()).collect::<Vec<_>>(), ["b"]);
    assert_eq!(depth(&h, "b").await, (1, 0, 0), "the repeat stored nothing");
    // Another sender's key is its own; no key is never a duplicate.
    let other = send(&h, keyed("c")).await;
    assert!(!other.duplicate);
    assert_ne!(other.id, first.id);
    let plain1 = send(&h, message("a", &["b"])).await;
    let plain2 = send(&h, message("a", &["b"])).await;
    assert!(!plain1.duplicate && !plain2.duplicate);
    assert_ne!(plain1.id, plain2.id);
    assert_eq!(depth(&h, "b").await, (4, 0, 0));
    // Once the first expires, the key makes a new message, and repeats answer that one.
    h.clock.advance(9_001); // T0 + 10_001: past the first's expires_at (T0 + 10_000)
    let fresh = keyed("a");
    let fresh_id = fresh.id;
    let fresh = send(&h, fresh).await;
    assert!(!fresh.duplicate);
    assert_eq!(fresh.id, fresh_id);
    let rep = send(&h, keyed("a")).await;
    assert!(rep.duplicate);
    assert_eq!(rep.id, fresh_id);
    // Delivered: the new one once, not the expired first; c's (expiring at T0 + 11_000) still.
    let mut got = ids(&receive(&h, "b", 10, 30_000).await);
    got.sort();
    let mut want = vec![other.id, plain1.id, plain2.id, fresh_id];
    want.sort();
    assert_eq!(got, want);
    h.finish().await;
}

// ---------- expiry ----------

pub async fn expiry_on_a_virtual_clock(h: Harness) {
    let short = |to: &str| message_with("a", &[to], |m| m.ttl_ms = 1_000);
    let mut expiring = Vec::new();
    for _ in 0..5 {
        expiring.push(send(&h, short("b")).await.id);
    }
    let live = send(&h, message("a", &["b"])).await.id;
    // One in flight when it expires.
    let held = send(&h, short("c")).await.id;
    assert_eq!(ids(&receive(&h, "c", 1, 500).await), [held]);
    // A broadcast expiring too.
    cast(&h, NewBroadcast { ttl_ms: 1_000, ..broadcast("a", DEFAULT_CHANNEL) }).await;
    h.clock.advance(1_000);
    let got = receive(&h, "b", 10, 30_000).await;
    assert_eq!(ids(&got), [live], "nothing expired is delivered, the broadcast neither");
    assert_eq!(nack1(&h, "b", &got[0].receipt, 0).await, None);
    assert!(receive(&h, "c", 10, 30_000).await.is_empty(), "an expired message is not delivered again");
    assert_eq!(counts(&h).await, count_map(&[("ready", 1)]), "expired messages are not counted");
    // The sweep deletes the expired rows, two per step.
    let touched = sweep_all(&h, sweep(2, 7 * DAY, MAX_DELIVERIES)).await;
    assert!(touched >= 7, "six expired messages and a broadcast: {touched} rows touched");
    assert_eq!(h.store.sweep_messages(sweep(2, 7 * DAY, MAX_DELIVERIES)).await.unwrap(), 0, "nothing left");
    assert_eq!(counts(&h).await, count_map(&[("ready", 1)]), "the live message is all that is left");
    assert_eq!(depth(&h, "b").await, (1, 0, 0));
    assert_eq!(ids(&receive(&h, "b", 10, 30_000).await), [live]);

    // Dead letters are kept dead_retention_ms, then swept.
    send(&h, message("a", &["d"])).await;
    assert_eq!(receive_md(&h, "d", 1, 1_000, 1).await.len(), 1);
    h.clock.advance(1_001);
    assert!(receive_md(&h, "d", 1, 1_000, 1).await.is_empty());
    assert_eq!(dead_all(&h, "d").await.len(), 1);
    h.clock.advance(10_000);
    send(&h, message("a", &["e"])).await;
    assert_eq!(receive_md(&h, "e", 1, 1_000, 1).await.len(), 1);
    h.clock.advance(1_001);
    assert!(receive_md(&h, "e", 1, 1_000, 1).await.is_empty());
    assert!(sweep_all(&h, sweep(2, 5_000, MAX_DELIVERIES)).await >= 1);
    assert!(dead_all(&h, "d").await.is_empty(), "older than the retention: deleted");
    assert_eq!(dead_all(&h, "e").await.len(), 1, "younger: kept");
    assert_eq!(depth(&h, "d").await, (0, 0, 0));
    h.finish().await;
}

// ---------- rate and depth ----------

pub async fn rate_limit_on_a_virtual_clock(h: Harness) {
    let rate = SendRate { per_min: 100, burst: 20 };
    let refused = |e: Error| {
        assert_eq!(e.code, ErrorCode::RateLimited, "{e:?}");
        if let Some(ms) = e.details.as_ref().and_then(|d| d.get("retry_after_ms")).and_then(Value::as_i64) {
            assert!((1..=600).contains(&ms), "a token comes back within 600 ms, not {ms}");
        }
    };
    for n in 0..20 {
        if let Err(e) = h.store.send_message(message("a", &["b"]), rate).await {
            panic!("send {n} within the burst: {e:?}");
        }
    }
    refused(h.store.send_message(message("a", &["b", "fresh"]), rate).await.unwrap_err());
    assert_eq!(depth(&h, "b").await, (20, 0, 0), "a refused send writes nothing");
    not_found(&h, "fresh").await;
    // Another sender has its own bucket.
    h.store.send_message(message("c", &["b"]), rate).await.unwrap();
    // 100 a minute: a token every 600 ms.
    h.clock.advance(600);
    h.store.send_message(message("a", &["b"]), rate).await.unwrap();
    refused(h.store.send_message(message("a", &["b"]), rate).await.unwrap_err());
    // A broadcast takes a token too (on a channel b does not read, so b's counts stay direct).
    h.clock.advance(600);
    h.store.send_broadcast(broadcast("a", "news"), rate).await.unwrap();
    refused(h.store.send_message(message("a", &["b"]), rate).await.unwrap_err());
    refused(h.store.send_broadcast(broadcast("a", "news"), rate).await.unwrap_err());
    // A minute refills the bucket up to its burst, no further.
    h.clock.advance(60_000);
    for n in 0..20 {
        if let Err(e) = h.store.send_message(message("a", &["b"]), rate).await {
            panic!("send {n} within the burst: {e:?}");
        }
    }
    refused(h.store.send_message(message("a", &["b"]), rate).await.unwrap_err());
    assert_eq!(depth(&h, "b").await.0, 20 + 1 + 1 + 20, "a's, c's, a's refilled one, a's refilled burst");
    // Off: never refused.
    for _ in 0..50 {
        h.store.send_message(message("free", &["b"]), SendRate::OFF).await.unwrap();
    }
    h.store.send_broadcast(broadcast("free", "news"), SendRate::OFF).await.unwrap();
    h.finish().await;
}

/// Runs with `small_inbox()`: inboxes of five ready + in-flight messages.
pub async fn depth_cap(h: Harness) {
    name(&h, "other").await;
    for _ in 0..5 {
        send(&h, message("a", &["b"])).await;
    }
    let full = |e: Error| {
        assert_eq!(e.code, ErrorCode::QueueFull, "{e:?}");
        assert_eq!(e.details.as_ref().map(|d| d["agent"].clone()), Some(json!("b")), "{e:?}");
    };
    full(h.store.send_message(message("a", &["b"]), SendRate::OFF).await.unwrap_err());
    // All or nothing: the other recipients get nothing either.
    full(h.store.send_message(message("a", &["other", "b", "newcomer"]), SendRate::OFF).await.unwrap_err());
    assert_eq!(depth(&h, "other").await, (0, 0, 0));
    not_found(&h, "newcomer").await;
    assert_eq!(depth(&h, "b").await, (5, 0, 0));
    // In-flight messages count.
    let held = receive(&h, "b", 2, 30_000).await;
    assert_eq!(held.len(), 2);
    full(h.store.send_message(message("a", &["b"]), SendRate::OFF).await.unwrap_err());
    // An ack makes room for one.
    assert_eq!(ack1(&h, "b", &held[0].receipt).await, None);
    send(&h, message("a", &["b"])).await;
    full(h.store.send_message(message("a", &["b"]), SendRate::OFF).await.unwrap_err());
    // A dead letter does not count (held[1], delivered once, goes dead on this receive; the
    // rest are delivered and stay in the inbox's count).
    h.clock.advance(30_001);
    let _ = receive_md(&h, "b", 10, 30_000, 1).await;
    assert_eq!(dead_all(&h, "b").await.iter().map(|d| d.id).collect::<Vec<_>>(), [held[1].id]);
    send(&h, message("a", &["b"])).await;
    full(h.store.send_message(message("a", &["b"]), SendRate::OFF).await.unwrap_err());
    // Each inbox has its own cap.
    for _ in 0..5 {
        send(&h, message("a", &["other"])).await;
    }
    assert_eq!(depth(&h, "other").await, (5, 0, 0));
    h.finish().await;
}

// ---------- broadcasts ----------

pub async fn broadcasts(h: Harness) {
    for a in ["a", "b", "c"] {
        name(&h, a).await;
    }
    assert_eq!(channels(&h, "b").await, [cursor(DEFAULT_CHANNEL, 0)]);
    let bc = broadcast("a", DEFAULT_CHANNEL);
    let id = bc.id;
    let sent = cast(&h, bc).await;
    assert_eq!((sent.id, sent.channel.as_str(), sent.seq), (id, "all", 1));
    assert_eq!(sent.expires_at, Timestamp(T0 + DAY));
    assert_eq!(depth(&h, "b").await, (1, 0, 0), "a broadcast past the cursor is ready");
    assert_eq!(depth(&h, "a").await, (0, 0, 0), "never one's own");
    h.clock.advance(100);
    let mut held = Vec::new();
    for who in ["b", "c"] {
        let got = receive(&h, who, 10, 30_000).await;
        assert_eq!(ids(&got), [id], "{who}");
        let m = &got[0];
        assert_eq!(
            (m.kind, m.channel.as_deref(), m.from.as_str(), m.delivery_count),
            (MessageKind::Broadcast, Some("all"), "a", 1),
            "{who}"
        );
        assert_eq!(json_of(&m.body), json!({"b": 1}));
        assert_eq!((m.sent_at, m.expires_at), (Timestamp(T0), Timestamp(T0 + DAY)));
        assert_eq!(receipt(m).id, id);
        assert!(receive(&h, who, 10, 30_000).await.is_empty(), "{who} holds it");
        assert_eq!(depth(&h, who).await, (0, 1, 0), "{who}");
        held.push(got[0].receipt.clone());
    }
    assert!(receive(&h, "a", 10, 30_000).await.is_empty(), "the sender never gets its own broadcast");
    assert_eq!(ack1(&h, "b", &held[0]).await, None);
    assert_eq!(ack1(&h, "c", &held[1]).await, None);
    assert_eq!(ack1(&h, "b", &held[0]).await, Some(ErrorCode::StaleLease));
    h.clock.advance(60_000);
    for who in ["a", "b", "c"] {
        assert!(receive(&h, who, 10, 30_000).await.is_empty(), "{who}: once, and never after the ack");
    }
    for who in ["b", "c"] {
        assert_eq!(channels(&h, who).await, [cursor(DEFAULT_CHANNEL, sent.seq)], "{who}'s cursor passed it");
        assert_eq!(depth(&h, who).await, (0, 0, 0));
    }
    // A newcomer starts at the head.
    name(&h, "d").await;
    assert_eq!(channels(&h, "d").await, [cursor(DEFAULT_CHANNEL, sent.seq)]);

    // Acked out of order: the cursor passes contiguous acks only.
    let s2 = cast(&h, broadcast("a", DEFAULT_CHANNEL)).await;
    let s3 = cast(&h, broadcast("a", DEFAULT_CHANNEL)).await;
    assert!(sent.seq < s2.seq && s2.seq < s3.seq, "sequences grow");
    let got = receive(&h, "b", 10, 1_000).await;
    assert_eq!(ids(&got), [s2.id, s3.id], "in sequence order");
    assert_eq!(ids(&receive(&h, "d", 10, 30_000).await), [s2.id, s3.id], "d subscribed before them");
    assert_eq!(ack1(&h, "b", &got[1].receipt).await, None);
    assert_eq!(channels(&h, "b").await, [cursor(DEFAULT_CHANNEL, sent.seq)], "stays below the unacked one");
    h.clock.advance(1_001);
    let again = receive(&h, "b", 10, 30_000).await;
    assert_eq!(ids(&again), [s2.id], "the acked one is not delivered again");
    assert_eq!(again[0].delivery_count, 2);
    assert_eq!(ack1(&h, "b", &got[0].receipt).await, Some(ErrorCode::StaleLease));
    assert_eq!(ack1(&h, "b", &again[0].receipt).await, None);
    assert_eq!(channels(&h, "b").await, [cursor(DEFAULT_CHANNEL, s3.seq)], "jumps past both");
    h.clock.advance(60_000);
    assert!(receive(&h, "b", 10, 30_000).await.is_empty());
    assert_eq!(depth(&h, "b").await, (0, 0, 0));
    h.finish().await;
}

pub async fn broadcast_dead_letter(h: Harness) {
    for a in ["a", "b", "c"] {
        name(&h, a).await;
    }
    let sent = cast(&h, broadcast("a", DEFAULT_CHANNEL)).await;
    for n in 1..=2 {
        let got = receive_md(&h, "b", 1, 1_000, 2).await;
        assert_eq!(ids(&got), [sent.id], "delivery {n}");
        assert_eq!(got[0].delivery_count, n);
        h.clock.advance(1_001);
    }
    assert!(receive_md(&h, "b", 1, 1_000, 2).await.is_empty(), "past max_deliveries: dead");
    let dead = dead_all(&h, "b").await;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(
        (d.id, d.kind, d.channel.as_deref(), d.from.as_str(), d.delivery_count),
        (sent.id, MessageKind::Broadcast, Some("all"), "a", 2)
    );
    assert_eq!(json_of(&d.body), json!({"b": 1}));
    assert_eq!(depth(&h, "b").await, (0, 0, 1));
    // A dead broadcast is passed (by the next receive at the latest).
    assert!(receive(&h, "b", 10, 30_000).await.is_empty());
    assert_eq!(channels(&h, "b").await, [cursor(DEFAULT_CHANNEL, sent.seq)], "a dead broadcast is passed");
    // c's copy is untouched.
    let got = receive_md(&h, "c", 1, 1_000, 2).await;
    assert_eq!(ids(&got), [sent.id]);
    assert_eq!(got[0].delivery_count, 1);
    ack_all(&h, "c", &got).await;
    assert!(dead_all(&h, "c").await.is_empty());
    // Replayed, it is b's to receive again.
    assert_eq!(h.store.replay_dead_messages("b", None).await.unwrap(), 1);
    let back = receive_md(&h, "b", 1, 1_000, 2).await;
    assert_eq!(ids(&back), [sent.id]);
    assert_eq!(
        (back[0].kind, back[0].channel.as_deref(), back[0].delivery_count),
        (MessageKind::Broadcast, Some("all"), 1)
    );
    ack_all(&h, "b", &back).await;
    assert!(dead_all(&h, "b").await.is_empty());
    h.clock.advance(10_000);
    assert!(receive(&h, "b", 10, 30_000).await.is_empty());
    assert_eq!(depth(&h, "b").await, (0, 0, 0));
    assert_eq!(channels(&h, "b").await, [cursor(DEFAULT_CHANNEL, sent.seq)]);
    h.finish().await;
}

pub async fn set_channels(h: Harness) {
    name(&h, "a").await;
    name(&h, "b").await;
    let x0 = h.store.set_channels("b", vec!["x".into()]).await.unwrap();
    assert_eq!(x0.len(), 1);
    assert_eq!(x0[0].channel, "x");
    let x_head = x0[0].seq;
    assert_eq!(channels(&h, "b").await, x0, "all dropped");
    let on_all = cast(&h, broadcast("a", DEFAULT_CHANNEL)).await;
    let on_x = cast(&h, broadcast("a", "x")).await;
    assert_eq!(on_x.channel, "x");
    let got = receive(&h, "b", 10, 30_000).await;
    assert_eq!(ids(&got), [on_x.id], "only the subscribed channel");
    assert_eq!((got[0].kind, got[0].channel.as_deref()), (MessageKind::Broadcast, Some("x")));
    // Subscribing again to `all` starts at its head; `x` keeps its cursor.
    let mut now = h.store.set_channels("b", vec!["x".into(), DEFAULT_CHANNEL.into()]).await.unwrap();
    now.sort_by(|a, b| a.channel.cmp(&b.channel));
    assert_eq!(now.iter().map(|c| c.channel.as_str()).collect::<Vec<_>>(), ["all", "x"]);
    let all_head = now[0].seq;
    assert!(all_head >= on_all.seq, "a new subscription starts past the channel's broadcasts");
    assert_eq!(now[1], cursor("x", x_head));
    assert_eq!(channels(&h, "b").await, now);
    assert_eq!(ack1(&h, "b", &got[0].receipt).await, None);
    assert_eq!(channels(&h, "b").await, [cursor(DEFAULT_CHANNEL, all_head), cursor("x", on_x.seq)]);
    h.clock.advance(30_001);
    assert!(receive(&h, "b", 10, 30_000).await.is_empty(), "not the broadcast sent before subscribing");
    let later = cast(&h, broadcast("a", DEFAULT_CHANNEL)).await;
    let got = receive(&h, "b", 10, 30_000).await;
    assert_eq!(ids(&got), [later.id]);
    ack_all(&h, "b", &got).await;
    // No channels at all.
    assert!(h.store.set_channels("b", vec![]).await.unwrap().is_empty());
    assert!(channels(&h, "b").await.is_empty());
    cast(&h, broadcast("a", DEFAULT_CHANNEL)).await;
    cast(&h, broadcast("a", "x")).await;
    assert!(receive(&h, "b", 10, 30_000).await.is_empty());
    // Setting channels names an inbox.
    let c = h.store.set_channels("c", vec!["y".into()]).await.unwrap();
    assert_eq!(c.iter().map(|c| c.channel.as_str()).collect::<Vec<_>>(), ["y"]);
    assert_eq!(channels(&h, "c").await, c);
    assert_eq!(depth(&h, "c").await, (0, 0, 0));
    h.finish().await;
}

// ---------- agents and counts ----------

pub async fn agents_listing(h: Harness) {
    for n in 1..=5 {
        name(&h, &format!("a{n}")).await;
    }
    send(&h, message("a1", &["a3"])).await;
    send(&h, message("a1", &["a3"])).await;
    assert_eq!(receive(&h, "a3", 1, 30_000).await.len(), 1);
    let list = |names: Option<Vec<&str>>, after: Option<&str>, limit: usize| {
        let filter = AgentFilter {
            names: names.map(|v| v.into_iter().map(String::from).collect()),
            after: after.map(Into::into),
            limit,
        };
        let store = h.store.clone();
        async move { store.list_agents(filter).await.unwrap() }
    };
    let names = |v: Vec<AgentInfo>| v.into_iter().map(|a| a.name).collect::<Vec<_>>();
    // Pages by name.
    let mut pages: Vec<Vec<String>> = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = names(list(None, after.as_deref(), 2).await);
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        pages.push(page);
        assert!(pages.len() <= 3, "paging ends");
    }
    assert_eq!(pages, vec![vec!["a1", "a2"], vec!["a3", "a4"], vec!["a5"]]);
    // Counts in the list; channels only on get_agent.
    let all = list(None, None, 100).await;
    assert_eq!(all.len(), 5);
    let a3 = all.iter().find(|a| a.name == "a3").unwrap();
    assert_eq!((a3.ready, a3.in_flight, a3.dead, a3.last_seen_at), (1, 1, 0, Some(Timestamp(T0))));
    assert!(all.iter().all(|a| a.channels.is_none()), "the list leaves channels out");
    assert_eq!(all.iter().find(|a| a.name == "a1").unwrap().last_seen_at, Some(Timestamp(T0)));
    // Restricted to names (a token's agents); unknown names are no rows.
    assert_eq!(names(list(Some(vec!["a4", "a2", "zz"]), None, 10).await), ["a2", "a4"]);
    assert_eq!(names(list(Some(vec!["a4", "a2", "zz"]), Some("a2"), 10).await), ["a4"]);
    assert_eq!(names(list(Some(vec!["a4", "a2", "zz"]), None, 1).await), ["a2"]);
    assert!(list(Some(vec!["zz"]), None, 10).await.is_empty());
    h.finish().await;
}

pub async fn message_counts_by_state(h: Harness) {
    assert!(counts(&h).await.is_empty());
    let mut sent = Vec::new();
    for _ in 0..4 {
        sent.push(send(&h, message("a", &["b"])).await.id);
    }
    assert_eq!(counts(&h).await, count_map(&[("ready", 4)]));
    assert_eq!(ids(&receive_md(&h, "b", 1, 1_000, 1).await), [sent[0]]);
    assert_eq!(counts(&h).await, count_map(&[("ready", 3), ("in_flight", 1)]));
    h.clock.advance(1_001);
    sweep_all(&h, sweep(100, 7 * DAY, 1)).await;
    assert_eq!(counts(&h).await, count_map(&[("ready", 3), ("dead", 1)]));
    assert_eq!(ids(&receive(&h, "b", 1, 30_000).await), [sent[1]]);
    assert_eq!(counts(&h).await, count_map(&[("ready", 2), ("in_flight", 1), ("dead", 1)]));
    // The three states, each once.
    let mut states: Vec<&str> = h.store.message_counts().await.unwrap().into_iter().map(|(s, _)| s).collect();
    states.sort();
    assert_eq!(states, ["dead", "in_flight", "ready"]);
    h.finish().await;
}

// ---------- events ----------

/// `message.sent` per recipient (subject the recipient), `broadcast.sent` (subject the
/// sender), `message.dead` (subject the agent); nothing for receives, acks and nacks.
pub async fn message_events(h: Harness) {
    let start = h.store.events().head();
    name(&h, "c").await;
    let sent = send(&h, message("a", &["b", "c"])).await;
    let bc = cast(&h, broadcast("a", DEFAULT_CHANNEL)).await;
    let got = receive_md(&h, "c", 10, 1_000, 1).await;
    assert_eq!(got.len(), 2);
    h.clock.advance(1_001);
    assert!(receive_md(&h, "c", 10, 1_000, 1).await.is_empty());
    let got = receive(&h, "b", 10, 30_000).await;
    ack_all(&h, "b", &got).await;
    let events: Vec<Event> = events_after(&h, start, 5)
        .await
        .into_iter()
        .filter(|e| e.subject.kind == SubjectKind::Agent)
        .collect();
    let kinds: Vec<EventType> = events.iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [
            EventType::MessageSent,
            EventType::MessageSent,
            EventType::BroadcastSent,
            EventType::MessageDead,
            EventType::MessageDead
        ],
        "{events:?}"
    );
    let mut to: Vec<&str> = events[..2].iter().map(|e| e.subject.id.as_str()).collect();
    to.sort();
    assert_eq!(to, ["b", "c"]);
    for e in &events[..2] {
        assert_eq!(e.data.as_ref().unwrap(), &json!({"id": sent.id, "from": "a"}));
    }
    assert_eq!(events[2].subject.id, "a");
    assert_eq!(events[2].data.as_ref().unwrap(), &json!({"id": bc.id, "channel": "all", "seq": bc.seq}));
    let mut dead: Vec<Value> = events[3..].iter().map(|e| e.data.clone().unwrap()).collect();
    dead.sort_by_key(|d| d["kind"].as_str().unwrap_or_default().to_string());
    assert_eq!(dead, [json!({"id": bc.id, "kind": "broadcast"}), json!({"id": sent.id, "kind": "direct"})]);
    assert!(events[3..].iter().all(|e| e.subject.id == "c"));
    h.finish().await;
}

// ---------- namespaces ----------

/// A queue `x` and an agent `x` share no rows and no counts.
pub async fn namespaces(h: Harness) {
    let job_id = enqueue1(&h, job("x")).await;
    let msg_id = send(&h, message("a", &["x"])).await.id;
    enqueue1(&h, job("queue-only")).await;
    assert_eq!(depth(&h, "x").await, (1, 0, 0), "the job is not in the inbox");
    let stats = h.store.queue_stats().await.unwrap();
    let q = stats.iter().find(|s| s.queue == "x").expect("queue x");
    assert_eq!(q.counts[&JobState::Ready], 1, "the message is not in the queue");
    assert!(!stats.iter().any(|s| s.queue == "a"), "an agent is no queue");
    not_found(&h, "queue-only").await;
    let got = receive(&h, "x", 10, 30_000).await;
    assert_eq!(ids(&got), [msg_id]);
    let jobs = claim(&h, "x", 10).await;
    assert_eq!(jobs.iter().map(|j| j.id).collect::<Vec<_>>(), [job_id]);
    assert!(receive(&h, "x", 10, 30_000).await.is_empty());
    assert!(claim(&h, "x", 10).await.is_empty());
    assert_eq!(counts(&h).await, count_map(&[("in_flight", 1)]));
    ack_all(&h, "x", &got).await;
    complete(&h, job_id, &jobs[0].lease).await.unwrap();
    assert_eq!(depth(&h, "x").await, (0, 0, 0));
    let stats = h.store.queue_stats().await.unwrap();
    let q = stats.iter().find(|s| s.queue == "x").expect("queue x");
    assert_eq!((q.counts[&JobState::Ready], q.counts[&JobState::Completed]), (0, 1));
    let listed: Vec<String> = h
        .store
        .list_agents(AgentFilter { limit: 100, ..Default::default() })
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .collect();
    assert_eq!(listed, ["a", "x"]);
    h.finish().await;
}

/// Every rule above: `conformance_tests!` runs each against every backend. A rule missing
/// here is never called, and `dead_code` fails the build.
macro_rules! messages_rules {
    () => {
        domain_tests!(messages:
            send_then_receive_then_ack, visibility_and_redelivery, nack_with_delay,
            dead_after_max_deliveries, order, dedup, expiry_on_a_virtual_clock,
            rate_limit_on_a_virtual_clock,
            depth_cap [limits = crate::conformance::messages::small_inbox()],
            broadcasts, broadcast_dead_letter, set_channels, agents_listing, message_counts_by_state,
            message_events, namespaces,
        );
    };
}
