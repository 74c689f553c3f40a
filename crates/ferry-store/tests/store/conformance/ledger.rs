//! The ledger part of the `Store` contract (issue #19): accounts created once (a repeat answers
//! a duplicate or a `conflict` naming the fields), flags bounding debits and credits, refusals
//! remembered outside atomic batches only, atomic batches all or nothing, pendings posted in
//! part or voided once, due pendings expired before a write counts them (and by the expiry
//! pass), closed accounts settling their pendings but taking no new transfers, `worker:`
//! accounts created by a credit, sums refused past the largest 64-bit integer, the event chain
//! (gap-free from 1, hashed as the contract says, checked here on the client side), statements
//! and their pages, and `verify`. Last, a model-based property: random sequences of ledger
//! operations, each step's answer and every balance and transfer compared with a small
//! in-memory model written here (not `ferry_core::ledger::Book`).

use super::{Harness, T0};
use ferry_core::ledger::{
    Account, Balances, Flags, GENESIS_HASH, LedgerEvent, MAX_AMOUNT, NewAccount, NewTransfer, Reason,
    Transfer, TransferState, Verification, chain, hex, term, worker_account, xor_into,
};
use ferry_core::*;
use ferry_store::AccountFilter;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};

// ---------- helpers ----------

/// An account of ledger 1 without flags.
fn account(id: &str) -> NewAccount {
    NewAccount { id: id.into(), ledger: 1, code: 0, flags: Flags::default(), metadata: Map::new() }
}

/// An account that may not spend more than it was credited (`debits_must_not_exceed_credits`).
fn strict(id: &str) -> NewAccount {
    NewAccount { flags: Flags { debits_must_not_exceed_credits: true, ..Flags::default() }, ..account(id) }
}

/// An account that may not be credited past its debits (`credits_must_not_exceed_debits`).
fn capped(id: &str) -> NewAccount {
    NewAccount { flags: Flags { credits_must_not_exceed_debits: true, ..Flags::default() }, ..account(id) }
}

fn closed() -> Flags {
    Flags { closed: true, ..Flags::default() }
}

async fn open(h: &Harness, accounts: Vec<NewAccount>) {
    let n = accounts.len();
    let made = h.store.create_accounts(accounts).await.expect("accounts are created");
    assert_eq!(made.len(), n, "one account answered per account asked");
}

fn transfer(id: &str, debit: &str, credit: &str, amount: i64) -> NewTransfer {
    NewTransfer {
        id: id.into(),
        debit_account: debit.into(),
        credit_account: credit.into(),
        amount,
        ledger: None,
        code: 0,
        metadata: Map::new(),
        pending: false,
        timeout_ms: None,
        job_id: None,
    }
}

/// A pending (two-phase) transfer.
fn hold(id: &str, debit: &str, credit: &str, amount: i64, timeout_ms: Option<i64>) -> NewTransfer {
    NewTransfer { pending: true, timeout_ms, ..transfer(id, debit, credit, amount) }
}

/// Sends one transfer on its own (not atomic, as a single transfer is: a refusal is remembered).
async fn send(h: &Harness, t: NewTransfer) -> Result<Transfer> {
    let mut out = h.store.create_transfers(vec![t], false).await.expect("a transfer call runs");
    assert_eq!(out.len(), 1, "one answer per transfer");
    out.pop().expect("one answer")
}

/// Sends one transfer that must apply (not as a duplicate).
async fn sent(h: &Harness, t: NewTransfer) -> Transfer {
    let id = t.id.clone();
    let got = send(h, t).await.unwrap_or_else(|e| panic!("transfer {id} refused: {e:?}"));
    assert!(!got.duplicate, "{id} answered as a duplicate");
    got
}

async fn sums(h: &Harness, id: &str) -> Balances {
    h.store.get_account(id).await.unwrap_or_else(|e| panic!("account {id}: {e:?}")).sums
}

async fn state(h: &Harness, id: &str) -> TransferState {
    h.store.get_transfer(id).await.unwrap_or_else(|e| panic!("transfer {id}: {e:?}")).state
}

fn bal(debits_posted: i64, credits_posted: i64, debits_pending: i64, credits_pending: i64) -> Balances {
    Balances { debits_posted, credits_posted, debits_pending, credits_pending }
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not a JSON object: {other}"),
    }
}

fn detail<'a>(e: &'a Error, key: &str) -> Option<&'a Value> {
    e.details.as_ref().and_then(|d| d.get(key))
}

fn reason(e: &Error) -> Option<&str> {
    detail(e, "reason").and_then(Value::as_str)
}

/// `details.fields` of a conflict, sorted.
fn fields(e: &Error) -> Vec<String> {
    let mut f: Vec<String> = detail(e, "fields")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    f.sort();
    f
}

fn index(e: &Error) -> Option<u64> {
    detail(e, "index").and_then(Value::as_u64)
}

/// Asserts `r` failed with `code`; returns the error.
#[track_caller]
fn failed<T: Debug>(r: Result<T>, code: ErrorCode) -> Error {
    let e = r.expect_err(&format!("expected {code:?}"));
    assert_eq!(e.code, code, "{e:?}");
    e
}

/// Asserts `r` is a 409 `invalid_state` with `details.reason` `why`; returns the error.
#[track_caller]
fn refused<T: Debug>(r: Result<T>, why: &str) -> Error {
    let e = failed(r, ErrorCode::InvalidState);
    assert_eq!(reason(&e), Some(why), "{e:?}");
    e
}

fn ids(transfers: &[Transfer]) -> Vec<&str> {
    transfers.iter().map(|t| t.id.as_str()).collect()
}

fn kinds(events: &[LedgerEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

fn data(e: &LedgerEvent) -> Value {
    serde_json::from_str(&e.data).expect("event data is JSON")
}

/// Every ledger event, checked on the client side: seq 1, 2, 3, ... without a gap, each hash
/// SHA-256 over the previous one (32 zero bytes first) and `"{seq}\n{type}\n{at_ms}\n{data}"`.
async fn chained(h: &Harness) -> Vec<LedgerEvent> {
    let mut events: Vec<LedgerEvent> = Vec::new();
    loop {
        let after = events.last().map_or(0, |e| e.seq);
        let page = h.store.ledger_events(after, 500).await.expect("ledger events are read");
        assert!(page.len() <= 500, "a page holds at most its limit");
        if page.is_empty() {
            break;
        }
        events.extend(page);
    }
    let mut prev = GENESIS_HASH;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as i64 + 1, "ledger event seqs run from 1 without a gap");
        assert_eq!(e.hash, chain(&prev, e.seq, &e.kind, e.at, &e.data), "the hash of ledger event {}", e.seq);
        assert!(data(e).is_object(), "the data of ledger event {} is a JSON object", e.seq);
        prev = e.hash;
    }
    events
}

/// The order-independent digest of the live balances, computed here from the account list.
async fn digest_of_accounts(h: &Harness) -> String {
    let mut d = [0u8; 32];
    let mut after: Option<String> = None;
    loop {
        let filter = AccountFilter { ledger: None, after: after.clone(), limit: 100 };
        let page = h.store.list_accounts(filter).await.expect("accounts are listed");
        for a in &page {
            xor_into(&mut d, &term(&a.id, a.ledger, &a.sums));
        }
        match page.last() {
            Some(a) if page.len() == 100 => after = Some(a.id.clone()),
            _ => break,
        }
    }
    hex(&d)
}

/// The chain checks out on the client side, and both verifies (full, and from the last
/// snapshot) find nothing, at the last event, with one digest: that of the live balances.
async fn verified(h: &Harness) -> Verification {
    let events = chained(h).await;
    let head = events.last().map_or(0, |e| e.seq);
    let full = h.store.verify_ledger(true).await.expect("a full verify runs");
    assert!(full.ok && full.problems.is_empty(), "full verify: {:?}", full.problems);
    assert_eq!(full.head_seq, head, "a full verify reaches the last event");
    let quick = h.store.verify_ledger(false).await.expect("a verify from the last snapshot runs");
    assert!(quick.ok && quick.problems.is_empty(), "verify from the last snapshot: {:?}", quick.problems);
    assert_eq!((quick.head_seq, &quick.digest), (head, &full.digest), "both verifies agree");
    assert_eq!(full.digest, digest_of_accounts(h).await, "the digest is that of the live balances");
    full
}

// ---------- rules ----------

/// Accounts: created with what was asked; an identical repeat answers the account as a
/// duplicate; other fields are a `conflict` naming them; a batch is all or nothing (the
/// conflict's `details.index`); reads, id-ordered pages, ledger filters; close once, then
/// duplicates.
pub async fn accounts_are_created_once_and_repeats_answer_or_conflict(h: Harness) {
    let mut alice = strict("alice");
    alice.code = 3;
    alice.metadata = obj(json!({"team": "blue"}));
    let made = h.store.create_accounts(vec![alice.clone()]).await.unwrap();
    let a = &made[0];
    assert!(!a.duplicate);
    assert_eq!((a.id.as_str(), a.ledger, a.code, a.flags), ("alice", 1, 3, alice.flags));
    assert_eq!(a.metadata, alice.metadata);
    assert_eq!((a.sums, a.balance, a.available), (Balances::default(), 0, 0));
    assert_eq!(a.created_at.0, T0);
    assert!(a.closed_at.is_none());

    let again = h.store.create_accounts(vec![alice.clone()]).await.unwrap();
    assert!(again[0].duplicate, "an identical repeat is a duplicate");
    assert_eq!((again[0].code, &again[0].metadata, again[0].created_at.0), (3, &alice.metadata, T0));

    let other = NewAccount { code: 4, flags: Flags::default(), ..alice.clone() };
    let e = failed(h.store.create_accounts(vec![other]).await, ErrorCode::Conflict);
    assert_eq!(fields(&e), ["code", "flags"]);
    let other = NewAccount { ledger: 2, metadata: Map::new(), ..alice.clone() };
    let e = failed(h.store.create_accounts(vec![other]).await, ErrorCode::Conflict);
    assert_eq!(fields(&e), ["ledger", "metadata"]);
    assert_eq!(h.store.get_account("alice").await.unwrap().code, 3, "a conflict changes nothing");

    // A batch is all or nothing: the conflict at index 1 leaves bob uncreated.
    let batch = vec![account("bob"), NewAccount { code: 9, ..alice.clone() }];
    let e = failed(h.store.create_accounts(batch).await, ErrorCode::Conflict);
    assert_eq!((index(&e), fields(&e)), (Some(1), vec!["code".to_string()]));
    failed(h.store.get_account("bob").await, ErrorCode::NotFound);
    let made = h.store.create_accounts(vec![account("bob"), alice.clone(), account("carol")]).await.unwrap();
    let answered: Vec<(&str, bool)> = made.iter().map(|a| (a.id.as_str(), a.duplicate)).collect();
    assert_eq!(answered, [("bob", false), ("alice", true), ("carol", false)]);
    open(&h, vec![NewAccount { ledger: 2, ..account("dave") }]).await;

    // Reads and pages.
    failed(h.store.get_account("nobody").await, ErrorCode::NotFound);
    let list = |ledger: Option<u32>, after: Option<&str>, limit: usize| {
        let store = h.store.clone();
        let filter = AccountFilter { ledger, after: after.map(str::to_string), limit };
        async move {
            let page = store.list_accounts(filter).await.expect("accounts are listed");
            page.into_iter().map(|a| a.id).collect::<Vec<_>>()
        }
    };
    assert_eq!(list(None, None, 2).await, ["alice", "bob"]);
    assert_eq!(list(None, Some("bob"), 10).await, ["carol", "dave"]);
    assert_eq!(list(Some(2), None, 10).await, ["dave"]);
    assert_eq!(list(Some(1), Some("alice"), 10).await, ["bob", "carol"]);

    // Close: once, then duplicates; an unknown account is not found.
    h.clock.advance(5);
    let c = h.store.close_account("bob").await.unwrap();
    assert!(c.flags.closed && !c.duplicate);
    assert_eq!(c.closed_at.map(|t| t.0), Some(T0 + 5));
    h.clock.advance(5);
    let c = h.store.close_account("bob").await.unwrap();
    assert!(c.duplicate && c.flags.closed);
    assert_eq!(c.closed_at.map(|t| t.0), Some(T0 + 5), "a repeated close changes nothing");
    failed(h.store.close_account("nobody").await, ErrorCode::NotFound);
    assert!(h.store.get_account("bob").await.unwrap().flags.closed);

    // A repeat of a closed account's create is a duplicate, with `closed` or without; asking
    // an open account to be created closed is a conflict on `flags`.
    let bob = h.store.create_accounts(vec![account("bob")]).await.unwrap();
    assert!(bob[0].duplicate && bob[0].flags.closed);
    let bob = h.store.create_accounts(vec![NewAccount { flags: closed(), ..account("bob") }]).await.unwrap();
    assert!(bob[0].duplicate);
    let e = failed(
        h.store.create_accounts(vec![NewAccount { flags: closed(), ..account("carol") }]).await,
        ErrorCode::Conflict,
    );
    assert_eq!(fields(&e), ["flags"]);

    // An account created closed is closed from its creation.
    let erin =
        h.store.create_accounts(vec![NewAccount { flags: closed(), ..account("erin") }]).await.unwrap();
    assert!(erin[0].flags.closed);
    assert_eq!(erin[0].closed_at.map(|t| t.0), Some(T0 + 10));

    let events = chained(&h).await;
    assert_eq!(
        kinds(&events),
        [
            "account.created",
            "account.created",
            "account.created",
            "account.created",
            "account.closed",
            "account.created"
        ]
    );
    assert_eq!(data(&events[0])["id"], "alice");
    assert_eq!(data(&events[4])["id"], "bob");
    verified(&h).await;
    h.finish().await;
}

/// `debits_must_not_exceed_credits`: debits posted plus pending never pass credits posted (a
/// pending counts, an account never goes negative); `credits_must_not_exceed_debits` mirrors
/// it; an account without flags may go negative. A refusal moves nothing.
pub async fn account_flags_bound_debits_and_credits(h: Harness) {
    open(&h, vec![account("bank"), strict("alice"), account("shop"), capped("cap")]).await;
    sent(&h, transfer("t1", "bank", "alice", 10)).await;
    sent(&h, hold("h1", "alice", "shop", 6, None)).await;
    refused(send(&h, transfer("t2", "alice", "shop", 5)).await, "exceeds_credits");
    assert_eq!(sums(&h, "alice").await, bal(0, 10, 6, 0), "a refusal moves nothing");
    sent(&h, transfer("t3", "alice", "shop", 4)).await;
    let a = h.store.get_account("alice").await.unwrap();
    assert_eq!((a.sums, a.balance, a.available), (bal(4, 10, 6, 0), 6, 0));
    refused(send(&h, transfer("t4", "alice", "shop", 1)).await, "exceeds_credits");
    h.store.post_transfer("h1", None).await.unwrap();
    let a = h.store.get_account("alice").await.unwrap();
    assert_eq!((a.sums, a.balance, a.available), (bal(10, 10, 0, 0), 0, 0));
    refused(send(&h, transfer("t5", "alice", "shop", 1)).await, "exceeds_credits");
    let bank = h.store.get_account("bank").await.unwrap();
    assert_eq!((bank.balance, bank.available), (-10, -10), "an account without flags may go negative");

    refused(send(&h, transfer("c1", "bank", "cap", 1)).await, "exceeds_debits");
    sent(&h, transfer("c2", "cap", "bank", 7)).await;
    assert_eq!(sums(&h, "cap").await, bal(7, 0, 0, 0));
    sent(&h, hold("c3", "bank", "cap", 5, None)).await;
    refused(send(&h, transfer("c4", "bank", "cap", 3)).await, "exceeds_debits");
    sent(&h, transfer("c5", "bank", "cap", 2)).await;
    assert_eq!(sums(&h, "cap").await, bal(7, 2, 0, 5));
    h.store.void_transfer("c3").await.unwrap();
    assert_eq!(sums(&h, "cap").await, bal(7, 2, 0, 0));
    sent(&h, transfer("c6", "bank", "cap", 5)).await;
    refused(send(&h, transfer("c7", "bank", "cap", 1)).await, "exceeds_debits");
    let cap = h.store.get_account("cap").await.unwrap();
    assert_eq!((cap.sums, cap.balance), (bal(7, 7, 0, 0), 0));
    verified(&h).await;
    h.finish().await;
}

/// Outside atomic batches a refused transfer is stored (state `refused`, its reason, no seq)
/// and any repeat of its id answers `id_already_failed` with the first reason; its batch mates
/// apply. Not found and invalid are not remembered. An applied transfer's repeat is a
/// duplicate, or a conflict naming the differing fields.
pub async fn a_refusal_is_remembered_and_never_poisons_its_batch(h: Harness) {
    open(&h, vec![account("bank"), strict("alice"), account("shop")]).await;
    sent(&h, transfer("fund", "bank", "alice", 5)).await;
    let batch = vec![
        transfer("ok1", "alice", "shop", 2),
        transfer("big", "alice", "shop", 10),
        transfer("ok2", "alice", "shop", 3),
    ];
    let out = h.store.create_transfers(batch, false).await.unwrap();
    let [ok1, big, ok2]: [Result<Transfer>; 3] = out.try_into().expect("one answer per transfer");
    assert_eq!(ok1.unwrap().state, TransferState::Posted);
    refused(big, "exceeds_credits");
    assert_eq!(ok2.unwrap().posted_amount, Some(3));
    assert_eq!(sums(&h, "alice").await, bal(5, 5, 0, 0));

    let t = h.store.get_transfer("big").await.unwrap();
    assert_eq!(
        (t.state, t.reason, t.seq, t.posted_amount, t.amount),
        (TransferState::Refused, Some(Reason::ExceedsCredits), None, None, 10)
    );
    for again in [transfer("big", "alice", "shop", 10), transfer("big", "bank", "shop", 1)] {
        let e = refused(send(&h, again).await, "id_already_failed");
        assert_eq!(detail(&e, "original_reason"), Some(&json!("exceeds_credits")));
    }
    refused(h.store.post_transfer("big", None).await, "not_pending");
    refused(h.store.void_transfer("big").await, "not_pending");

    // Not found and invalid are not remembered: the same id goes through once it can.
    failed(send(&h, transfer("ghost", "bank", "nobody", 1)).await, ErrorCode::NotFound);
    failed(h.store.get_transfer("ghost").await, ErrorCode::NotFound);
    open(&h, vec![account("nobody")]).await;
    sent(&h, transfer("ghost", "bank", "nobody", 1)).await;
    let e = failed(
        send(&h, NewTransfer { ledger: Some(2), ..transfer("l2", "bank", "shop", 1) }).await,
        ErrorCode::ValidationFailed,
    );
    assert!(e.field.as_deref().is_some_and(|f| f.ends_with("ledger")), "{e:?}");
    failed(h.store.get_transfer("l2").await, ErrorCode::NotFound);
    sent(&h, NewTransfer { ledger: Some(1), ..transfer("l2", "bank", "shop", 1) }).await;

    // Repeats of an applied transfer.
    let d = send(&h, transfer("ok1", "alice", "shop", 2)).await.unwrap();
    assert!(d.duplicate);
    assert_eq!(
        (d.state, d.amount, d.seq),
        (TransferState::Posted, 2, h.store.get_transfer("ok1").await.unwrap().seq)
    );
    let d = send(&h, NewTransfer { ledger: Some(1), ..transfer("ok1", "alice", "shop", 2) }).await.unwrap();
    assert!(d.duplicate, "naming the transfer's own ledger is no difference");
    let e = failed(
        send(&h, NewTransfer { code: 1, ..transfer("ok1", "alice", "shop", 3) }).await,
        ErrorCode::Conflict,
    );
    assert_eq!(fields(&e), ["amount", "code"]);
    let e = failed(send(&h, hold("ok1", "alice", "bank", 2, Some(10))).await, ErrorCode::Conflict);
    assert_eq!(fields(&e), ["credit_account", "pending", "timeout_ms"]);
    let tagged = NewTransfer { metadata: obj(json!({"k": 1})), ..transfer("ok1", "alice", "shop", 2) };
    let e = failed(send(&h, tagged).await, ErrorCode::Conflict);
    assert_eq!(fields(&e), ["metadata"]);
    assert_eq!(sums(&h, "alice").await, bal(5, 5, 0, 0), "repeats move nothing");

    let statement = h.store.account_transfers("alice", None, 100).await.unwrap();
    assert_eq!(ids(&statement), ["fund", "ok1", "ok2"], "a refused transfer is in no statement");
    verified(&h).await;
    h.finish().await;
}

/// An atomic batch applies every transfer in order or none: the first error answers for the
/// batch with its `details.index`, and nothing is written, not even the refusal (the same id
/// goes through later), nor any event.
pub async fn an_atomic_batch_writes_all_or_nothing(h: Harness) {
    open(&h, vec![account("bank"), strict("alice"), account("shop")]).await;
    sent(&h, transfer("fund", "bank", "alice", 5)).await;
    let before = (sums(&h, "bank").await, sums(&h, "alice").await, sums(&h, "shop").await);
    let events = chained(&h).await.len();

    let batch = vec![transfer("a1", "alice", "shop", 3), transfer("a2", "alice", "shop", 3)];
    let e = refused(h.store.create_transfers(batch, true).await, "exceeds_credits");
    assert_eq!(index(&e), Some(1));
    let batch = vec![
        transfer("b1", "bank", "shop", 1),
        transfer("b2", "bank", "shop", 1),
        transfer("b3", "bank", "nobody", 1),
    ];
    let e = failed(h.store.create_transfers(batch, true).await, ErrorCode::NotFound);
    assert_eq!(index(&e), Some(2));
    let batch = vec![transfer("b1", "bank", "shop", 1), transfer("fund", "bank", "alice", 6)];
    let e = failed(h.store.create_transfers(batch, true).await, ErrorCode::Conflict);
    assert_eq!((index(&e), fields(&e)), (Some(1), vec!["amount".to_string()]));
    // An atomic batch of one answers its error for the batch too.
    let e = refused(
        h.store.create_transfers(vec![transfer("a3", "alice", "shop", 6)], true).await,
        "exceeds_credits",
    );
    assert_eq!(index(&e), Some(0));
    for id in ["a1", "a2", "a3", "b1", "b2", "b3"] {
        failed(h.store.get_transfer(id).await, ErrorCode::NotFound);
    }
    assert_eq!((sums(&h, "bank").await, sums(&h, "alice").await, sums(&h, "shop").await), before);
    assert_eq!(chained(&h).await.len(), events, "a failed atomic batch appends no event");

    // A refused id repeated inside an atomic batch.
    refused(send(&h, transfer("no", "alice", "shop", 50)).await, "exceeds_credits");
    let batch = vec![transfer("b1", "bank", "shop", 1), transfer("no", "alice", "shop", 1)];
    let e = refused(h.store.create_transfers(batch, true).await, "id_already_failed");
    assert_eq!((index(&e), detail(&e, "original_reason")), (Some(1), Some(&json!("exceeds_credits"))));
    failed(h.store.get_transfer("b1").await, ErrorCode::NotFound);

    // Not remembered: a2 goes through on its own now.
    sent(&h, transfer("a2", "alice", "shop", 2)).await;

    // All pass: applied in order (the first funds the second); a repeat within is a duplicate.
    let batch = vec![
        transfer("top", "bank", "alice", 4),
        transfer("spend", "alice", "shop", 7),
        transfer("top", "bank", "alice", 4),
    ];
    let out = h.store.create_transfers(batch.clone(), true).await.unwrap();
    let dups: Vec<(String, bool)> =
        out.into_iter().map(|t| t.map(|t| (t.id, t.duplicate)).unwrap()).collect();
    assert_eq!(dups, [("top".to_string(), false), ("spend".to_string(), false), ("top".to_string(), true)]);
    assert_eq!(sums(&h, "alice").await, bal(9, 9, 0, 0));
    let out = h.store.create_transfers(batch, true).await.unwrap();
    assert!(
        out.iter().all(|t| t.as_ref().is_ok_and(|t| t.duplicate)),
        "the batch again: duplicates: {out:?}"
    );
    assert_eq!(sums(&h, "alice").await, bal(9, 9, 0, 0));
    verified(&h).await;
    h.finish().await;
}

/// A pending transfer holds its amount; a post of part of it moves that part and releases the
/// rest; a repeated post (no amount, or the posted one) is a duplicate, another amount or a
/// void is `pending_already_posted`; more than held is invalid (`amount`); a transfer that was
/// never pending is `not_pending`.
pub async fn a_pending_transfer_posts_in_part_once(h: Harness) {
    open(&h, vec![account("bank"), strict("alice"), account("shop")]).await;
    sent(&h, transfer("fund", "bank", "alice", 10)).await;
    let p = sent(&h, hold("p", "alice", "shop", 8, None)).await;
    assert_eq!(
        (p.state, p.pending, p.posted_amount, p.expires_at, p.timeout_ms),
        (TransferState::Pending, true, None, None, None)
    );
    assert!(p.seq.is_some() && p.settled_at.is_none());
    let a = h.store.get_account("alice").await.unwrap();
    assert_eq!((a.sums, a.balance, a.available), (bal(0, 10, 8, 0), 10, 2));
    assert_eq!(sums(&h, "shop").await, bal(0, 0, 0, 8));
    assert_eq!(h.store.pending_transfers().await.unwrap(), 1);
    refused(send(&h, transfer("over", "alice", "shop", 3)).await, "exceeds_credits");

    h.clock.advance(7);
    let posted = h.store.post_transfer("p", Some(5)).await.unwrap();
    assert_eq!(
        (posted.state, posted.posted_amount, posted.amount, posted.duplicate),
        (TransferState::Posted, Some(5), 8, false)
    );
    assert_eq!(posted.settled_at.map(|t| t.0), Some(T0 + 7));
    assert_eq!(posted.seq, p.seq, "a transfer keeps the seq of the event that created it");
    assert_eq!(sums(&h, "alice").await, bal(5, 10, 0, 0), "the 3 not posted are released");
    assert_eq!(sums(&h, "shop").await, bal(0, 5, 0, 0));
    assert_eq!(h.store.pending_transfers().await.unwrap(), 0);
    let event = chained(&h).await.pop().unwrap();
    assert_eq!(event.kind, "transfer.posted");
    let d = data(&event);
    assert_eq!((&d["id"], &d["amount"], &d["pending_amount"]), (&json!("p"), &json!(5), &json!(8)));

    for amount in [None, Some(5)] {
        let again = h.store.post_transfer("p", amount).await.unwrap();
        assert!(again.duplicate, "post {amount:?} again");
        assert_eq!((again.state, again.posted_amount), (TransferState::Posted, Some(5)));
    }
    refused(h.store.post_transfer("p", Some(4)).await, "pending_already_posted");
    refused(h.store.void_transfer("p").await, "pending_already_posted");
    assert_eq!(sums(&h, "alice").await, bal(5, 10, 0, 0));

    sent(&h, hold("q", "alice", "shop", 3, None)).await;
    let e = failed(h.store.post_transfer("q", Some(4)).await, ErrorCode::ValidationFailed);
    assert!(e.field.as_deref().is_some_and(|f| f.ends_with("amount")), "{e:?}");
    assert_eq!(state(&h, "q").await, TransferState::Pending);
    assert_eq!(h.store.post_transfer("q", None).await.unwrap().posted_amount, Some(3));
    assert_eq!(sums(&h, "alice").await, bal(8, 10, 0, 0));

    refused(h.store.post_transfer("fund", None).await, "not_pending");
    refused(h.store.void_transfer("fund").await, "not_pending");
    failed(h.store.post_transfer("nope", None).await, ErrorCode::NotFound);
    failed(h.store.void_transfer("nope").await, ErrorCode::NotFound);
    verified(&h).await;
    h.finish().await;
}

/// A void releases the hold; a repeat is a duplicate; a post after it is
/// `pending_already_voided`.
pub async fn a_voided_transfer_releases_its_hold_once(h: Harness) {
    open(&h, vec![account("bank"), strict("alice"), account("shop")]).await;
    sent(&h, transfer("fund", "bank", "alice", 10)).await;
    sent(&h, hold("v", "alice", "shop", 6, None)).await;
    h.clock.advance(3);
    let v = h.store.void_transfer("v").await.unwrap();
    assert_eq!((v.state, v.duplicate, v.posted_amount), (TransferState::Voided, false, None));
    assert_eq!(v.settled_at.map(|t| t.0), Some(T0 + 3));
    assert_eq!(sums(&h, "alice").await, bal(0, 10, 0, 0));
    assert_eq!(sums(&h, "shop").await, bal(0, 0, 0, 0));
    let again = h.store.void_transfer("v").await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.state, TransferState::Voided);
    refused(h.store.post_transfer("v", None).await, "pending_already_voided");
    refused(h.store.post_transfer("v", Some(1)).await, "pending_already_voided");
    sent(&h, transfer("all", "alice", "shop", 10)).await;

    let statement = h.store.account_transfers("shop", None, 10).await.unwrap();
    assert_eq!(ids(&statement), ["v", "all"]);
    assert_eq!(statement[0].state, TransferState::Voided);
    let events = chained(&h).await;
    assert_eq!(
        kinds(&events[events.len() - 3..]),
        ["transfer.pending", "transfer.voided", "transfer.posted"]
    );
    verified(&h).await;
    h.finish().await;
}

/// A pending with a timeout counts until `expires_at` (`<= now` is due); a write touching its
/// accounts first expires it (state `expired`, the hold released, its event before the
/// write's), so the write no longer counts it; a post or void of it is then `pending_expired`,
/// also when that post is the write that expires it.
pub async fn a_due_pending_expires_before_a_write_counts_it(h: Harness) {
    open(&h, vec![account("bank"), strict("alice"), account("shop")]).await;
    sent(&h, transfer("fund", "bank", "alice", 10)).await;
    let held = sent(&h, hold("h1", "alice", "shop", 10, Some(1_000))).await;
    assert_eq!((held.expires_at.map(|t| t.0), held.timeout_ms), (Some(T0 + 1_000), Some(1_000)));
    refused(send(&h, transfer("early", "alice", "shop", 1)).await, "exceeds_credits");
    h.clock.advance(999);
    refused(send(&h, transfer("early2", "alice", "shop", 1)).await, "exceeds_credits");
    assert_eq!(state(&h, "h1").await, TransferState::Pending, "not due before expires_at");

    h.clock.advance(1);
    let events = chained(&h).await.len();
    sent(&h, transfer("spend", "alice", "shop", 10)).await;
    let h1 = h.store.get_transfer("h1").await.unwrap();
    assert_eq!((h1.state, h1.posted_amount), (TransferState::Expired, None));
    assert_eq!(h1.settled_at.map(|t| t.0), Some(T0 + 1_000));
    assert_eq!(sums(&h, "alice").await, bal(10, 10, 0, 0));
    assert_eq!(sums(&h, "shop").await, bal(0, 10, 0, 0));
    let all = chained(&h).await;
    assert_eq!(kinds(&all[events..]), ["transfer.expired", "transfer.posted"]);
    assert_eq!((&data(&all[events])["id"], &data(&all[events])["amount"]), (&json!("h1"), &json!(10)));
    refused(h.store.post_transfer("h1", None).await, "pending_expired");
    refused(h.store.post_transfer("h1", Some(1)).await, "pending_expired");
    refused(h.store.void_transfer("h1").await, "pending_expired");

    // The post (or void) of a due pending no write has expired yet: expired first, refused.
    sent(&h, transfer("refill", "bank", "alice", 4)).await;
    sent(&h, hold("h2", "alice", "shop", 4, Some(50))).await;
    h.clock.advance(50);
    refused(h.store.post_transfer("h2", None).await, "pending_expired");
    assert_eq!(state(&h, "h2").await, TransferState::Expired);
    assert_eq!(sums(&h, "alice").await, bal(10, 14, 0, 0));
    sent(&h, hold("h3", "alice", "shop", 4, Some(50))).await;
    h.clock.advance(50);
    refused(h.store.void_transfer("h3").await, "pending_expired");
    assert_eq!(state(&h, "h3").await, TransferState::Expired);
    assert_eq!(sums(&h, "alice").await, bal(10, 14, 0, 0));
    assert_eq!(h.store.pending_transfers().await.unwrap(), 0);
    verified(&h).await;
    h.finish().await;
}

/// The expiry pass expires due pendings (and only those: none without a timeout), at most
/// `max` a call, answering how many it expired.
pub async fn the_expiry_pass_expires_due_pendings_only(h: Harness) {
    open(&h, vec![account("bank"), account("shop")]).await;
    sent(&h, hold("x1", "bank", "shop", 4, Some(100))).await;
    sent(&h, hold("x2", "bank", "shop", 5, Some(300))).await;
    sent(&h, hold("x3", "bank", "shop", 6, None)).await;
    h.clock.advance(99);
    assert_eq!(h.store.expire_transfers(100).await.unwrap(), 0);
    h.clock.advance(1);
    assert_eq!(h.store.expire_transfers(100).await.unwrap(), 1);
    assert_eq!(
        (state(&h, "x1").await, state(&h, "x2").await, state(&h, "x3").await),
        (TransferState::Expired, TransferState::Pending, TransferState::Pending)
    );
    assert_eq!(sums(&h, "bank").await, bal(0, 0, 11, 0));
    assert_eq!(sums(&h, "shop").await, bal(0, 0, 0, 11));
    assert_eq!(h.store.expire_transfers(100).await.unwrap(), 0, "nothing expires twice");
    h.clock.advance(1_000_000);
    assert_eq!(h.store.expire_transfers(100).await.unwrap(), 1);
    assert_eq!(state(&h, "x2").await, TransferState::Expired);
    assert_eq!(state(&h, "x3").await, TransferState::Pending, "a pending without a timeout never expires");
    assert_eq!(sums(&h, "bank").await, bal(0, 0, 6, 0));
    assert_eq!(h.store.pending_transfers().await.unwrap(), 1);

    // `max` bounds the due pendings a pass selects; their accounts' other due pendings expire
    // with them (a write never leaves a due pending of an account it touches), and the answer
    // is what it expired.
    sent(&h, hold("y1", "bank", "shop", 1, Some(10))).await;
    sent(&h, hold("y2", "bank", "shop", 1, Some(10))).await;
    h.clock.advance(10);
    let first = h.store.expire_transfers(1).await.unwrap();
    let expired = [state(&h, "y1").await, state(&h, "y2").await]
        .iter()
        .filter(|s| **s == TransferState::Expired)
        .count();
    assert!(first >= 1 && first == expired as u64, "a pass says what it expired ({first}, {expired})");
    assert_eq!(h.store.expire_transfers(10).await.unwrap(), 2 - first);
    assert_eq!(
        (state(&h, "y1").await, state(&h, "y2").await),
        (TransferState::Expired, TransferState::Expired)
    );

    refused(h.store.post_transfer("x1", None).await, "pending_expired");
    refused(h.store.void_transfer("x2").await, "pending_expired");
    assert_eq!(h.store.post_transfer("x3", None).await.unwrap().posted_amount, Some(6));
    assert_eq!(sums(&h, "bank").await, bal(6, 0, 0, 0));
    let events = chained(&h).await;
    assert_eq!(events.iter().filter(|e| e.kind == "transfer.expired").count(), 4);
    verified(&h).await;
    h.finish().await;
}

/// A closed account takes no new transfer on either side (`account_closed`, remembered), in an
/// atomic batch neither, but its pendings still post and void.
pub async fn a_closed_account_takes_no_transfers_but_settles_its_pendings(h: Harness) {
    open(&h, vec![account("bank"), account("alice"), account("shop")]).await;
    sent(&h, transfer("fund", "bank", "alice", 10)).await;
    sent(&h, hold("p", "alice", "shop", 4, None)).await;
    sent(&h, hold("q", "alice", "shop", 2, None)).await;
    sent(&h, hold("r", "bank", "alice", 3, None)).await;
    h.store.close_account("alice").await.unwrap();

    refused(send(&h, transfer("out", "alice", "shop", 1)).await, "account_closed");
    refused(send(&h, transfer("in", "bank", "alice", 1)).await, "account_closed");
    refused(send(&h, hold("held", "alice", "shop", 1, None)).await, "account_closed");
    let e = refused(send(&h, transfer("out", "bank", "shop", 1)).await, "id_already_failed");
    assert_eq!(detail(&e, "original_reason"), Some(&json!("account_closed")));
    let batch = vec![transfer("ok", "bank", "shop", 1), transfer("in2", "bank", "alice", 1)];
    let e = refused(h.store.create_transfers(batch, true).await, "account_closed");
    assert_eq!(index(&e), Some(1));
    failed(h.store.get_transfer("ok").await, ErrorCode::NotFound);

    assert_eq!(h.store.post_transfer("p", Some(3)).await.unwrap().posted_amount, Some(3));
    assert_eq!(h.store.void_transfer("q").await.unwrap().state, TransferState::Voided);
    assert_eq!(h.store.post_transfer("r", None).await.unwrap().posted_amount, Some(3));
    let alice = h.store.get_account("alice").await.unwrap();
    assert!(alice.flags.closed);
    assert_eq!(alice.sums, bal(3, 13, 0, 0));
    verified(&h).await;
    h.finish().await;
}

/// Crediting a missing `worker:` account creates it (the debit's ledger, no flags, code 0, no
/// metadata), its `account.created` event first; a missing account of any other name is not
/// found and not created.
pub async fn crediting_a_missing_worker_account_creates_it(h: Harness) {
    open(&h, vec![account("bank"), NewAccount { ledger: 2, ..account("bank2") }]).await;
    let w = worker_account("gpu box");
    assert_eq!(w, "worker:gpu%20box");
    failed(h.store.get_account(&w).await, ErrorCode::NotFound);
    let events = chained(&h).await.len();
    sent(&h, transfer("pay1", "bank", &w, 7)).await;
    let a = h.store.get_account(&w).await.unwrap();
    assert_eq!((a.ledger, a.code, a.flags, a.metadata.is_empty()), (1, 0, Flags::default(), true));
    assert_eq!(a.sums, bal(0, 7, 0, 0));
    let all = chained(&h).await;
    assert_eq!(kinds(&all[events..]), ["account.created", "transfer.posted"]);
    assert_eq!(data(&all[events])["id"], json!(w));
    sent(&h, transfer("pay2", "bank", &w, 3)).await;
    assert_eq!(sums(&h, &w).await, bal(0, 10, 0, 0));
    assert_eq!(chained(&h).await.len(), events + 3, "an existing worker account is not created again");

    sent(&h, transfer("pay3", "bank2", "worker:two", 5)).await;
    assert_eq!(h.store.get_account("worker:two").await.unwrap().ledger, 2, "created in the debit's ledger");
    let e = failed(send(&h, transfer("pay4", "bank", "worker:two", 1)).await, ErrorCode::ValidationFailed);
    assert!(e.field.as_deref().is_some_and(|f| f.ends_with("ledger")), "{e:?}");
    failed(send(&h, transfer("miss", "bank", "nobody", 1)).await, ErrorCode::NotFound);
    failed(h.store.get_account("nobody").await, ErrorCode::NotFound);
    sent(&h, hold("pay5", "bank", "worker:three", 2, None)).await;
    assert_eq!(sums(&h, "worker:three").await, bal(0, 0, 0, 2));

    let page = h.store.list_accounts(AccountFilter { ledger: None, after: None, limit: 10 }).await.unwrap();
    let listed: Vec<&str> = page.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(listed, ["bank", "bank2", "worker:gpu%20box", "worker:three", "worker:two"]);
    verified(&h).await;
    h.finish().await;
}

/// Balances are 64-bit: 1,024 transfers of the largest amount (2^53 − 1) bring an account to
/// 2^63 − 1024, 1,023 more to exactly the largest integer, and then anything more (posted or
/// pending, on the debit or the credit side, alone or in an atomic batch) is refused
/// `overflow`. A ledger's totals may pass 2^63 while no account does: writes (and the
/// snapshot every 1,000 events) go on.
pub async fn sums_past_the_largest_integer_are_refused_as_overflow(h: Harness) {
    let l7 = |id: &str| NewAccount { ledger: 7, ..account(id) };
    open(&h, vec![l7("src"), l7("dst"), l7("other"), l7("other2")]).await;
    for (from, to) in [(0, 1_000), (1_000, 1_024)] {
        let batch: Vec<NewTransfer> =
            (from..to).map(|i| transfer(&format!("m{i}"), "src", "dst", MAX_AMOUNT)).collect();
        let out = h.store.create_transfers(batch, true).await.expect("a batch of the largest amounts");
        assert_eq!(out.len(), to - from);
        assert!(out.iter().all(Result::is_ok));
    }
    let full = MAX_AMOUNT * 1_024; // 2^63 − 1024
    assert_eq!(sums(&h, "src").await, bal(full, 0, 0, 0));
    refused(send(&h, transfer("over1", "src", "dst", 1_024)).await, "overflow");
    sent(&h, transfer("edge", "src", "dst", 1_023)).await;
    let src = h.store.get_account("src").await.unwrap();
    assert_eq!((src.sums, src.balance, src.available), (bal(i64::MAX, 0, 0, 0), -i64::MAX, -i64::MAX));
    let dst = h.store.get_account("dst").await.unwrap();
    assert_eq!((dst.sums, dst.balance, dst.available), (bal(0, i64::MAX, 0, 0), i64::MAX, i64::MAX));

    refused(send(&h, transfer("over2", "src", "dst", 1)).await, "overflow");
    refused(send(&h, transfer("over3", "other", "dst", 1)).await, "overflow");
    refused(send(&h, hold("over4", "src", "other", 1, None)).await, "overflow");
    let batch = vec![transfer("fine", "other", "src", 1), transfer("over5", "src", "other", 1)];
    let e = refused(h.store.create_transfers(batch, true).await, "overflow");
    assert_eq!(index(&e), Some(1));
    failed(h.store.get_transfer("fine").await, ErrorCode::NotFound);
    let t = h.store.get_transfer("over1").await.unwrap();
    assert_eq!((t.state, t.reason), (TransferState::Refused, Some(Reason::Overflow)));
    assert_eq!(sums(&h, "src").await, bal(i64::MAX, 0, 0, 0), "refusals move nothing");

    // Ledger 7's debits now total past 2^63; a thousand more events cross a snapshot.
    sent(&h, transfer("more", "other", "other2", 5)).await;
    let batch: Vec<NewTransfer> =
        (0..1_000).map(|i| transfer(&format!("u{i}"), "other", "other2", 1)).collect();
    let out = h.store.create_transfers(batch, true).await.expect("writes go on past a ledger total of 2^63");
    assert!(out.iter().all(Result::is_ok));
    assert_eq!(sums(&h, "other").await, bal(1_005, 0, 0, 0));
    verified(&h).await;
    h.finish().await;
}

/// Every change appends one event, seq 1, 2, 3, ... with the clock's time, chained by hash;
/// pages by `after`; a transfer's `seq` is the event that created it; verify (full, and from
/// the last snapshot) replays them to the live balances.
pub async fn events_chain_from_one_and_verify_replays_them(h: Harness) {
    assert!(h.store.ledger_events(0, 10).await.unwrap().is_empty());
    let empty = h.store.verify_ledger(true).await.unwrap();
    assert!(empty.ok && empty.head_seq == 0, "{empty:?}");

    open(&h, vec![account("bank"), strict("alice")]).await;
    h.clock.advance(10);
    sent(&h, transfer("t1", "bank", "alice", 5)).await;
    h.clock.advance(10);
    sent(&h, hold("p", "alice", "bank", 2, None)).await;
    h.clock.advance(10);
    h.store.post_transfer("p", Some(1)).await.unwrap();
    sent(&h, hold("q", "bank", "alice", 1, None)).await;
    h.store.void_transfer("q").await.unwrap();
    sent(&h, hold("r", "bank", "alice", 1, Some(5))).await;
    h.clock.advance(5);
    assert_eq!(h.store.expire_transfers(10).await.unwrap(), 1);
    h.store.close_account("alice").await.unwrap();

    let events = chained(&h).await;
    assert_eq!(
        kinds(&events),
        [
            "account.created",
            "account.created",
            "transfer.posted",
            "transfer.pending",
            "transfer.posted",
            "transfer.pending",
            "transfer.voided",
            "transfer.pending",
            "transfer.expired",
            "account.closed",
        ]
    );
    let ats: Vec<i64> = events.iter().map(|e| e.at - T0).collect();
    assert_eq!(ats, [0, 0, 10, 20, 30, 30, 30, 30, 35, 35]);
    let t1 = data(&events[2]);
    assert_eq!(
        (&t1["id"], &t1["debit_account"], &t1["credit_account"], &t1["amount"]),
        (&json!("t1"), &json!("bank"), &json!("alice"), &json!(5))
    );
    let page = h.store.ledger_events(3, 2).await.unwrap();
    assert_eq!(page.iter().map(|e| e.seq).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(page[0], events[3], "a page reads the same events");
    assert!(h.store.ledger_events(10, 5).await.unwrap().is_empty());
    assert_eq!(h.store.get_transfer("t1").await.unwrap().seq, Some(3));
    assert_eq!(h.store.get_transfer("p").await.unwrap().seq, Some(4), "a post keeps the creating seq");

    let v = verified(&h).await;
    assert_eq!(v.head_seq, 10);
    h.finish().await;
}

/// An account's statement: the transfers it is debited or credited by, oldest first (by seq),
/// refused ones left out, paged by `after` (a seq); an unknown account is not found.
pub async fn a_statement_lists_an_accounts_transfers_oldest_first(h: Harness) {
    open(&h, vec![account("bank"), strict("alice"), account("shop"), account("other")]).await;
    sent(&h, transfer("s1", "bank", "alice", 5)).await;
    sent(&h, transfer("s2", "alice", "shop", 2)).await;
    sent(&h, transfer("x", "bank", "other", 1)).await;
    refused(send(&h, transfer("r1", "alice", "shop", 100)).await, "exceeds_credits");
    sent(&h, hold("s3", "shop", "alice", 1, None)).await;
    h.store.post_transfer("s3", None).await.unwrap();
    sent(&h, transfer("s4", "alice", "bank", 1)).await;

    let all = h.store.account_transfers("alice", None, 100).await.unwrap();
    assert_eq!(ids(&all), ["s1", "s2", "s3", "s4"]);
    assert!(all.windows(2).all(|w| w[0].seq < w[1].seq), "oldest first");
    assert_eq!(all[2].state, TransferState::Posted);
    let first = h.store.account_transfers("alice", None, 2).await.unwrap();
    assert_eq!(ids(&first), ["s1", "s2"]);
    let second = h.store.account_transfers("alice", first[1].seq, 2).await.unwrap();
    assert_eq!(ids(&second), ["s3", "s4"]);
    assert!(h.store.account_transfers("alice", second[1].seq, 2).await.unwrap().is_empty());
    assert_eq!(ids(&h.store.account_transfers("other", None, 10).await.unwrap()), ["x"]);
    assert_eq!(ids(&h.store.account_transfers("bank", None, 10).await.unwrap()), ["s1", "x", "s4"]);
    failed(h.store.account_transfers("nobody", None, 10).await, ErrorCode::NotFound);
    verified(&h).await;
    h.finish().await;
}

// ---------- the model-based property ----------
//
// Each case works on accounts and transfer ids of its own (prefix `c<n>-`) in one shared
// store. The model decides every answer by the contract's rules, written here independently
// of `Book`. Where the contract leaves the store a choice it is accepted either way and the
// model follows the store: whether a due pending is expired by a write that wrote nothing
// else (a duplicate, an error, a close, an account create) or by one not touching its
// accounts, and whether a failed transfer's missing `worker:` credit account was created.
// A write that applied something must have expired every due pending of the accounts it
// named first.

/// Transfer ids per case: few, so repeats (duplicates, conflicts, refused ids) are common.
const IDS: u8 = 16;

/// The accounts' slot of the worker account, only ever created by a credit.
const WORKER: u8 = 4;

/// A transfer as generated: indexes into the case's accounts (a0 without flags, a1 and a2
/// `debits_must_not_exceed_credits`, a3 `credits_must_not_exceed_debits`, the worker) and ids.
#[derive(Debug, Clone)]
struct Spec {
    id: u8,
    debit: u8,
    credit: u8,
    amount: i64,
    pending: bool,
    timeout_ms: Option<i64>,
    ledger: Option<u32>,
    code: u16,
    tagged: bool,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        0..IDS,
        0..5u8,
        0..5u8,
        prop_oneof![4 => 1i64..40, 1 => 40i64..200],
        any::<bool>(),
        proptest::option::of(1i64..3_000),
        prop_oneof![8 => Just(None::<u32>), 2 => Just(Some(1u32)), 1 => Just(Some(2u32))],
        prop_oneof![4 => Just(0u16), 1 => Just(1u16)],
        proptest::bool::weighted(0.2),
    )
        .prop_map(|(id, debit, credit, amount, pending, timeout_ms, ledger, code, tagged)| {
            // The store's callers refuse a transfer to its own debit account (422).
            let credit = if credit == debit { (credit + 1) % 5 } else { credit };
            // A missing worker account credited with another ledger named: see the report of
            // this file's author (the account is created before the ledger check refuses).
            let ledger = if credit == WORKER && ledger == Some(2) { None } else { ledger };
            let timeout_ms = timeout_ms.filter(|_| pending);
            Spec { id, debit, credit, amount, pending, timeout_ms, ledger, code, tagged }
        })
}

#[derive(Debug, Clone)]
enum Step {
    /// Create account `who` (variant 6: another code, 7: closed, else as the model has it).
    Create {
        who: u8,
        variant: u8,
    },
    /// Create two accounts in one call.
    CreatePair {
        a: u8,
        b: u8,
    },
    /// One transfer.
    Send(Spec),
    /// A transfer sent before, again, exactly.
    Resend {
        pick: u16,
    },
    /// A batch, each transfer on its own.
    Batch(Vec<Spec>),
    /// An atomic batch, maybe with a bad transfer (unknown debit, other ledger, too much)
    /// inserted at `bad.0`.
    Atomic {
        items: Vec<Spec>,
        bad: Option<(u8, u8)>,
    },
    /// Post all or some (of the held amount, or the posted one again, or one more than held).
    Post {
        id: u8,
        amount: Option<u8>,
    },
    Void {
        id: u8,
    },
    Close {
        who: u8,
    },
    Advance {
        ms: u16,
    },
    Expire,
}

fn step() -> impl Strategy<Value = Step> {
    use proptest::collection::vec;
    prop_oneof![
        3 => (0..4u8, 0..8u8).prop_map(|(who, variant)| Step::Create { who, variant }),
        1 => (0..4u8, 0..4u8).prop_map(|(a, b)| Step::CreatePair { a, b }),
        6 => spec().prop_map(Step::Send),
        2 => any::<u16>().prop_map(|pick| Step::Resend { pick }),
        2 => vec(spec(), 1..5).prop_map(Step::Batch),
        2 => (vec(spec(), 2..5), proptest::option::of((any::<u8>(), 0..3u8)))
            .prop_map(|(items, bad)| Step::Atomic { items, bad }),
        3 => (0..IDS, proptest::option::of(any::<u8>())).prop_map(|(id, amount)| Step::Post { id, amount }),
        2 => (0..IDS).prop_map(|id| Step::Void { id }),
        1 => (0..5u8).prop_map(|who| Step::Close { who }),
        2 => (0..2_500u16).prop_map(|ms| Step::Advance { ms }),
        1 => Just(Step::Expire),
    ]
}

/// A case's ids.
struct Names {
    prefix: String,
    accounts: Vec<String>,
    transfers: Vec<String>,
}

impl Names {
    fn new(case: usize) -> Names {
        let prefix = format!("c{case}-");
        let mut accounts: Vec<String> = (0..4).map(|i| format!("{prefix}a{i}")).collect();
        accounts.push(format!("worker:{prefix}w"));
        let transfers = (0..IDS).map(|i| format!("{prefix}t{i}")).collect();
        Names { prefix, accounts, transfers }
    }

    fn account(&self, who: u8, variant: u8) -> NewAccount {
        let mut flags = Flags::default();
        match who {
            1 | 2 => flags.debits_must_not_exceed_credits = true,
            3 => flags.credits_must_not_exceed_debits = true,
            _ => {}
        }
        let mut a = NewAccount {
            id: self.accounts[usize::from(who)].clone(),
            ledger: 1,
            code: 0,
            flags,
            metadata: Map::new(),
        };
        match variant {
            6 => a.code = 7,
            7 => a.flags.closed = true,
            _ => {}
        }
        a
    }

    fn transfer(&self, s: &Spec) -> NewTransfer {
        let mut metadata = Map::new();
        if s.tagged {
            metadata.insert("tag".into(), json!(s.id));
        }
        NewTransfer {
            id: self.transfers[usize::from(s.id)].clone(),
            debit_account: self.accounts[usize::from(s.debit)].clone(),
            credit_account: self.accounts[usize::from(s.credit)].clone(),
            amount: s.amount,
            ledger: s.ledger,
            code: s.code,
            metadata,
            pending: s.pending,
            timeout_ms: s.timeout_ms,
            job_id: None,
        }
    }

    /// A transfer bad in one way: 0 an unknown debit account, 1 another ledger, 2 the largest
    /// amount from a1 (which may not spend more than it was credited).
    fn bad(&self, base: &Spec, kind: u8) -> NewTransfer {
        let mut t = self.transfer(base);
        match kind {
            0 => t.debit_account = format!("{}nope", self.prefix),
            1 => {
                t.ledger = Some(2);
                if t.credit_account.starts_with("worker:") {
                    let other = if t.debit_account == self.accounts[0] { 1 } else { 0 };
                    t.credit_account = self.accounts[other].clone();
                }
            }
            _ => {
                t.debit_account = self.accounts[1].clone();
                t.credit_account = self.accounts[0].clone();
                t.amount = MAX_AMOUNT;
            }
        }
        t
    }

    /// Whether a ledger event is about this case's accounts or transfers.
    fn owns(&self, e: &LedgerEvent) -> bool {
        let data: Value = serde_json::from_str(&e.data).unwrap_or(Value::Null);
        data.get("id").and_then(Value::as_str).is_some_and(|id| {
            id.starts_with(&self.prefix)
                || id.strip_prefix("worker:").is_some_and(|w| w.starts_with(&self.prefix))
        })
    }
}

/// What an answer was: a duplicate or not, and a transfer's state.
type Seen = (bool, Option<TransferState>);

/// An error as the model expects it.
#[derive(Debug, Clone)]
struct Expect {
    code: ErrorCode,
    reason: Option<&'static str>,
    original: Option<&'static str>,
    fields: Option<Vec<&'static str>>,
    field: Option<&'static str>,
    index: Option<usize>,
}

impl Expect {
    fn new(code: ErrorCode) -> Expect {
        Expect { code, reason: None, original: None, fields: None, field: None, index: None }
    }

    fn refused(r: Reason) -> Expect {
        Expect { reason: Some(r.as_str()), ..Expect::new(ErrorCode::InvalidState) }
    }

    fn again(first: Reason) -> Expect {
        Expect {
            reason: Some(Reason::IdAlreadyFailed.as_str()),
            original: Some(first.as_str()),
            ..Expect::new(ErrorCode::InvalidState)
        }
    }

    fn conflict(fields: &[&'static str]) -> Expect {
        let mut fields = fields.to_vec();
        fields.sort();
        Expect { fields: Some(fields), ..Expect::new(ErrorCode::Conflict) }
    }

    fn invalid(field: &'static str) -> Expect {
        Expect { field: Some(field), ..Expect::new(ErrorCode::ValidationFailed) }
    }

    fn at(self, i: usize) -> Expect {
        Expect { index: Some(i), ..self }
    }

    fn matches(&self, e: &Error) -> bool {
        e.code == self.code
            && reason(e) == self.reason
            && detail(e, "original_reason").and_then(Value::as_str) == self.original
            && self.fields.as_ref().is_none_or(|f| fields(e) == *f)
            && self.field.is_none_or(|f| e.field.as_deref().is_some_and(|x| x.ends_with(f)))
            && self.index.is_none_or(|i| index(e) == Some(i as u64))
    }
}

#[derive(Debug, Clone, Copy)]
struct MAccount {
    ledger: u32,
    code: u16,
    flags: Flags,
    sums: Balances,
}

#[derive(Debug, Clone)]
struct MTransfer {
    /// As first sent.
    new: NewTransfer,
    ledger: u32,
    state: TransferState,
    reason: Option<Reason>,
    posted: Option<i64>,
    expires_at: Option<i64>,
}

/// The model: accounts, transfers, and how many ledger events they took.
#[derive(Debug, Clone, Default)]
struct Model {
    accounts: BTreeMap<String, MAccount>,
    transfers: BTreeMap<String, MTransfer>,
    events: usize,
    /// A worker account created by a transfer in the current step.
    worker_made: Option<String>,
}

/// A transfer's repeat: refused before → `id_already_failed`; other fields → conflict;
/// else a duplicate answering the transfer as it is.
fn repeat(old: &MTransfer, t: &NewTransfer) -> Result<Seen, Expect> {
    let o = &old.new;
    let differs = [
        (o.debit_account != t.debit_account, "debit_account"),
        (o.credit_account != t.credit_account, "credit_account"),
        (o.amount != t.amount, "amount"),
        (t.ledger.is_some_and(|l| l != old.ledger), "ledger"),
        (o.code != t.code, "code"),
        (o.metadata != t.metadata, "metadata"),
        (o.pending != t.pending, "pending"),
        (o.timeout_ms != t.timeout_ms, "timeout_ms"),
    ];
    let fields: Vec<&'static str> = differs.iter().filter(|(d, _)| *d).map(|(_, f)| *f).collect();
    match old.reason {
        Some(first) => Err(Expect::again(first)),
        None if !fields.is_empty() => Err(Expect::conflict(&fields)),
        None => Ok((true, Some(old.state))),
    }
}

impl Model {
    fn acct(&mut self, id: &str) -> &mut MAccount {
        self.accounts.get_mut(id).expect("a modelled account")
    }

    /// Pending transfers due at `now` with a side in `accounts` (any, when `None`).
    fn due(&self, now: i64, accounts: Option<&BTreeSet<String>>) -> Vec<String> {
        self.transfers
            .iter()
            .filter(|(_, t)| {
                t.state == TransferState::Pending
                    && t.expires_at.is_some_and(|e| e <= now)
                    && accounts
                        .is_none_or(|a| a.contains(&t.new.debit_account) || a.contains(&t.new.credit_account))
            })
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Voids or expires a pending transfer.
    fn release(&mut self, id: &str, to: TransferState) {
        let t = self.transfers.get_mut(id).expect("a modelled transfer");
        t.state = to;
        let (debit, credit, held) = (t.new.debit_account.clone(), t.new.credit_account.clone(), t.new.amount);
        self.acct(&debit).sums.debits_pending -= held;
        self.acct(&credit).sums.credits_pending -= held;
        self.events += 1;
    }

    /// Undoes an expiry the store did not write.
    fn unexpire(&mut self, id: &str) {
        let t = self.transfers.get_mut(id).expect("a modelled transfer");
        t.state = TransferState::Pending;
        let (debit, credit, held) = (t.new.debit_account.clone(), t.new.credit_account.clone(), t.new.amount);
        self.acct(&debit).sums.debits_pending += held;
        self.acct(&credit).sums.credits_pending += held;
        self.events -= 1;
    }

    fn create_account(&mut self, a: &NewAccount) -> Result<Seen, Expect> {
        if let Some(old) = self.accounts.get(&a.id) {
            let mut fields = Vec::new();
            if old.ledger != a.ledger {
                fields.push("ledger");
            }
            if old.code != a.code {
                fields.push("code");
            }
            let open = |f: Flags| Flags { closed: false, ..f };
            if open(old.flags) != open(a.flags) || (a.flags.closed && !old.flags.closed) {
                fields.push("flags");
            }
            return if fields.is_empty() { Ok((true, None)) } else { Err(Expect::conflict(&fields)) };
        }
        let made = MAccount { ledger: a.ledger, code: a.code, flags: a.flags, sums: Balances::default() };
        self.accounts.insert(a.id.clone(), made);
        self.events += 1;
        Ok((false, None))
    }

    /// Accounts all or nothing.
    fn create_accounts(&mut self, list: &[NewAccount]) -> Result<Vec<Seen>, Expect> {
        let before = self.clone();
        let mut out = Vec::new();
        for (i, a) in list.iter().enumerate() {
            match self.create_account(a) {
                Ok(s) => out.push(s),
                Err(e) => {
                    *self = before;
                    return Err(e.at(i));
                }
            }
        }
        Ok(out)
    }

    fn close(&mut self, id: &str) -> Result<Seen, Expect> {
        let Some(a) = self.accounts.get_mut(id) else { return Err(Expect::new(ErrorCode::NotFound)) };
        if a.flags.closed {
            return Ok((true, None));
        }
        a.flags.closed = true;
        self.events += 1;
        Ok((false, None))
    }

    /// A transfer's checks in the contract's order; a refusal on state carries its reason.
    fn plan(&mut self, t: &NewTransfer, now: i64) -> Result<Seen, (Expect, Option<Reason>)> {
        if let Some(old) = self.transfers.get(&t.id) {
            return repeat(old, t).map_err(|e| (e, None));
        }
        let Some(debit) = self.accounts.get(&t.debit_account).copied() else {
            return Err((Expect::new(ErrorCode::NotFound), None));
        };
        // A missing `worker:` credit account is created only once the transfer passes its checks.
        let fresh = !self.accounts.contains_key(&t.credit_account);
        if fresh && !t.credit_account.starts_with("worker:") {
            return Err((Expect::new(ErrorCode::NotFound), None));
        }
        let credit = match self.accounts.get(&t.credit_account) {
            Some(c) => *c,
            None => MAccount {
                ledger: t.ledger.unwrap_or(debit.ledger),
                code: 0,
                flags: Flags::default(),
                sums: Balances::default(),
            },
        };
        if debit.ledger != credit.ledger || t.ledger.is_some_and(|l| l != debit.ledger) {
            return Err((Expect::invalid("ledger"), None));
        }
        let refuse =
            |r: Reason| -> Result<Seen, (Expect, Option<Reason>)> { Err((Expect::refused(r), Some(r))) };
        if debit.flags.closed || credit.flags.closed {
            return refuse(Reason::AccountClosed);
        }
        let (d, c, amount) = (debit.sums, credit.sums, t.amount);
        let fits = |x: i64, y: i64| x.checked_add(y).and_then(|s| s.checked_add(amount)).is_some();
        if !fits(d.debits_posted, d.debits_pending) || !fits(c.credits_posted, c.credits_pending) {
            return refuse(Reason::Overflow);
        }
        if debit.flags.debits_must_not_exceed_credits
            && d.debits_posted + d.debits_pending + amount > d.credits_posted
        {
            return refuse(Reason::ExceedsCredits);
        }
        if credit.flags.credits_must_not_exceed_debits
            && c.credits_posted + c.credits_pending + amount > c.debits_posted
        {
            return refuse(Reason::ExceedsDebits);
        }
        if fresh {
            self.accounts.insert(t.credit_account.clone(), credit);
            self.events += 1;
            self.worker_made = Some(t.credit_account.clone());
        }
        let pending = t.pending;
        let s = &mut self.acct(&t.debit_account).sums;
        if pending {
            s.debits_pending += amount;
        } else {
            s.debits_posted += amount;
        }
        let s = &mut self.acct(&t.credit_account).sums;
        if pending {
            s.credits_pending += amount;
        } else {
            s.credits_posted += amount;
        }
        self.events += 1;
        let state = if pending { TransferState::Pending } else { TransferState::Posted };
        let made = MTransfer {
            new: t.clone(),
            ledger: debit.ledger,
            state,
            reason: None,
            posted: (!pending).then_some(amount),
            expires_at: t.timeout_ms.map(|ms| now + ms),
        };
        self.transfers.insert(t.id.clone(), made);
        Ok((false, Some(state)))
    }

    /// One transfer; with `remember`, a refusal on state is kept under its id.
    fn transfer(&mut self, t: &NewTransfer, remember: bool, now: i64) -> Result<Seen, Expect> {
        match self.plan(t, now) {
            Ok(seen) => Ok(seen),
            Err((e, Some(r))) => {
                if remember {
                    let ledger = t
                        .ledger
                        .or_else(|| self.accounts.get(&t.debit_account).map(|a| a.ledger))
                        .unwrap_or(1);
                    let kept = MTransfer {
                        new: t.clone(),
                        ledger,
                        state: TransferState::Refused,
                        reason: Some(r),
                        posted: None,
                        expires_at: None,
                    };
                    self.transfers.insert(t.id.clone(), kept);
                }
                Err(e)
            }
            Err((e, None)) => Err(e),
        }
    }

    /// Transfers all or nothing: the first error with its index.
    fn atomic(&mut self, ts: &[NewTransfer], now: i64) -> Result<Vec<Seen>, Expect> {
        let before = self.clone();
        let mut out = Vec::new();
        for (i, t) in ts.iter().enumerate() {
            match self.transfer(t, false, now) {
                Ok(s) => out.push(s),
                Err(e) => {
                    *self = before;
                    return Err(e.at(i));
                }
            }
        }
        Ok(out)
    }

    fn post(&mut self, id: &str, amount: Option<i64>) -> Result<Seen, Expect> {
        let Some(t) = self.transfers.get(id) else { return Err(Expect::new(ErrorCode::NotFound)) };
        let (state, posted_before, held) = (t.state, t.posted, t.new.amount);
        if !t.new.pending || state == TransferState::Refused {
            return Err(Expect::refused(Reason::NotPending));
        }
        match state {
            TransferState::Posted if amount.is_none() || amount == posted_before => {
                return Ok((true, Some(TransferState::Posted)));
            }
            TransferState::Posted => return Err(Expect::refused(Reason::PendingAlreadyPosted)),
            TransferState::Voided => return Err(Expect::refused(Reason::PendingAlreadyVoided)),
            TransferState::Expired => return Err(Expect::refused(Reason::PendingExpired)),
            TransferState::Pending | TransferState::Refused => {}
        }
        let posted = amount.unwrap_or(held);
        if posted > held {
            return Err(Expect::invalid("amount"));
        }
        let (debit, credit) = (t.new.debit_account.clone(), t.new.credit_account.clone());
        let s = &mut self.acct(&debit).sums;
        s.debits_pending -= held;
        s.debits_posted += posted;
        let s = &mut self.acct(&credit).sums;
        s.credits_pending -= held;
        s.credits_posted += posted;
        self.events += 1;
        let t = self.transfers.get_mut(id).expect("read above");
        t.state = TransferState::Posted;
        t.posted = Some(posted);
        Ok((false, Some(TransferState::Posted)))
    }

    fn void(&mut self, id: &str) -> Result<Seen, Expect> {
        let Some(t) = self.transfers.get(id) else { return Err(Expect::new(ErrorCode::NotFound)) };
        let state = t.state;
        if !t.new.pending || state == TransferState::Refused {
            return Err(Expect::refused(Reason::NotPending));
        }
        match state {
            TransferState::Voided => Ok((true, Some(TransferState::Voided))),
            TransferState::Posted => Err(Expect::refused(Reason::PendingAlreadyPosted)),
            TransferState::Expired => Err(Expect::refused(Reason::PendingExpired)),
            TransferState::Pending | TransferState::Refused => {
                self.release(id, TransferState::Voided);
                Ok((false, Some(TransferState::Voided)))
            }
        }
    }
}

fn fail(what: impl std::fmt::Display) -> TestCaseError {
    TestCaseError::fail(what.to_string())
}

fn of_transfer(t: &Transfer) -> Seen {
    (t.duplicate, Some(t.state))
}

fn of_account(a: &Account) -> Seen {
    (a.duplicate, None)
}

fn check_one<T: Debug>(
    what: &str,
    got: &Result<T>,
    want: &Result<Seen, Expect>,
    seen: fn(&T) -> Seen,
) -> Result<(), TestCaseError> {
    let ok = match (got, want) {
        (Ok(g), Ok(w)) => seen(g) == *w,
        (Err(e), Err(w)) => w.matches(e),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(fail(format!("{what}: the model expects {want:?}, the store answered {got:?}")))
    }
}

fn check_all<T: Debug>(
    what: &str,
    got: &Result<Vec<T>>,
    want: &Result<Vec<Seen>, Expect>,
    seen: fn(&T) -> Seen,
) -> Result<(), TestCaseError> {
    let ok = match (got, want) {
        (Ok(g), Ok(w)) => g.iter().map(seen).collect::<Vec<_>>() == *w,
        (Err(e), Err(w)) => w.matches(e),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(fail(format!("{what}: the model expects {want:?}, the store answered {got:?}")))
    }
}

/// One case run against the store, step by step.
struct Case<'a> {
    h: &'a Harness,
    names: Names,
    model: Model,
    /// Every transfer sent, for resends.
    sent: Vec<NewTransfer>,
}

impl Case<'_> {
    async fn run(&mut self, step: &Step) -> Result<(), TestCaseError> {
        let h = self.h;
        let now = h.clock.now_ms();
        match step {
            Step::Create { who, variant } => {
                let a = self.names.account(*who, *variant);
                let want = self.model.create_accounts(std::slice::from_ref(&a));
                let got = h.store.create_accounts(vec![a]).await;
                check_all("create an account", &got, &want, of_account)?;
                self.settle(now, Vec::new(), false).await?;
            }
            Step::CreatePair { a, b } => {
                let list = vec![self.names.account(*a, 0), self.names.account(*b, 0)];
                let want = self.model.create_accounts(&list);
                let got = h.store.create_accounts(list).await;
                check_all("create two accounts", &got, &want, of_account)?;
                self.settle(now, Vec::new(), false).await?;
            }
            Step::Send(s) => {
                let t = self.names.transfer(s);
                self.transfers(vec![t], false, now).await?;
            }
            Step::Resend { pick } => {
                if self.sent.is_empty() {
                    return Ok(());
                }
                let t = self.sent[usize::from(*pick) % self.sent.len()].clone();
                self.transfers(vec![t], false, now).await?;
            }
            Step::Batch(specs) => {
                let ts = specs.iter().map(|s| self.names.transfer(s)).collect();
                self.transfers(ts, false, now).await?;
            }
            Step::Atomic { items, bad } => {
                let mut ts: Vec<NewTransfer> = items.iter().map(|s| self.names.transfer(s)).collect();
                if let Some((at, kind)) = bad {
                    let t = self.names.bad(&items[0], *kind);
                    ts.insert(usize::from(*at) % (ts.len() + 1), t);
                }
                self.transfers(ts, true, now).await?;
            }
            Step::Post { id, amount } => {
                let id = self.names.transfers[usize::from(*id)].clone();
                let amount = amount.map(|k| self.post_amount(&id, k));
                let pre = self.expire_sides_of(&id, now);
                let want = self.model.post(&id, amount);
                let got = h.store.post_transfer(&id, amount).await;
                check_one(&format!("post {id} {amount:?}"), &got, &want, of_transfer)?;
                let fresh = matches!(want, Ok((false, _)));
                self.settle(now, pre, fresh).await?;
            }
            Step::Void { id } => {
                let id = self.names.transfers[usize::from(*id)].clone();
                let pre = self.expire_sides_of(&id, now);
                let want = self.model.void(&id);
                let got = h.store.void_transfer(&id).await;
                check_one(&format!("void {id}"), &got, &want, of_transfer)?;
                let fresh = matches!(want, Ok((false, _)));
                self.settle(now, pre, fresh).await?;
            }
            Step::Close { who } => {
                let id = self.names.accounts[usize::from(*who)].clone();
                let want = self.model.close(&id);
                let got = h.store.close_account(&id).await;
                check_one(&format!("close {id}"), &got, &want, of_account)?;
                self.settle(now, Vec::new(), false).await?;
            }
            Step::Advance { ms } => {
                h.clock.advance(i64::from(*ms));
                return Ok(());
            }
            Step::Expire => {
                let due = self.model.due(now, None);
                let n = h.store.expire_transfers(10_000).await.map_err(fail)?;
                prop_assert!(
                    n >= due.len() as u64,
                    "the expiry pass expired {} of {} due: {:?}",
                    n,
                    due.len(),
                    due
                );
                for id in &due {
                    self.model.release(id, TransferState::Expired);
                }
            }
        }
        self.compare().await
    }

    /// A post's amount: some of what is held (up to one more than held), or what was posted.
    fn post_amount(&self, id: &str, k: u8) -> i64 {
        match self.model.transfers.get(id) {
            Some(t) if k.is_multiple_of(4) && t.posted.is_some() => t.posted.unwrap_or(1),
            Some(t) => 1 + i64::from(k) % (t.new.amount + 1),
            None => 1 + i64::from(k) % 10,
        }
    }

    /// Expires (in the model) the due pendings of the accounts of transfer `id`, as the write
    /// posting or voiding it does first.
    fn expire_sides_of(&mut self, id: &str, now: i64) -> Vec<String> {
        let sides: BTreeSet<String> = self
            .model
            .transfers
            .get(id)
            .map(|t| BTreeSet::from([t.new.debit_account.clone(), t.new.credit_account.clone()]))
            .unwrap_or_default();
        self.expire_touching(&sides, now)
    }

    fn expire_touching(&mut self, accounts: &BTreeSet<String>, now: i64) -> Vec<String> {
        let due = self.model.due(now, Some(accounts));
        for id in &due {
            self.model.release(id, TransferState::Expired);
        }
        due
    }

    async fn transfers(&mut self, ts: Vec<NewTransfer>, atomic: bool, now: i64) -> Result<(), TestCaseError> {
        let h = self.h;
        self.sent.extend(ts.iter().cloned());
        let named: BTreeSet<String> =
            ts.iter().flat_map(|t| [t.debit_account.clone(), t.credit_account.clone()]).collect();
        let pre = self.expire_touching(&named, now);
        let what = format!(
            "{} {:?}",
            if atomic { "atomic batch" } else { "transfers" },
            ts.iter().map(|t| t.id.as_str()).collect::<Vec<_>>()
        );
        let fresh = if atomic {
            let want = self.model.atomic(&ts, now);
            let got: Result<Vec<Transfer>> = match h.store.create_transfers(ts, true).await {
                Ok(items) => match items.into_iter().collect::<Result<Vec<Transfer>>>() {
                    Ok(v) => Ok(v),
                    Err(e) => {
                        return Err(fail(format!(
                            "{what}: an atomic batch answered Ok with an error in it: {e:?}"
                        )));
                    }
                },
                Err(e) => Err(e),
            };
            check_all(&what, &got, &want, of_transfer)?;
            matches!(&want, Ok(w) if w.iter().any(|(dup, _)| !dup))
        } else {
            let want: Vec<Result<Seen, Expect>> =
                ts.iter().map(|t| self.model.transfer(t, true, now)).collect();
            let got = h.store.create_transfers(ts, false).await.map_err(|e| fail(format!("{what}: {e}")))?;
            prop_assert_eq!(got.len(), want.len(), "{}: one answer per transfer", what);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                check_one(&format!("{what} [{i}]"), g, w, of_transfer)?;
            }
            want.iter().any(|w| matches!(w, Ok((false, _))))
        };
        self.settle(now, pre, fresh).await
    }

    async fn state_of(&self, id: &str) -> Result<TransferState, TestCaseError> {
        self.h.store.get_transfer(id).await.map(|t| t.state).map_err(|e| fail(format!("transfer {id}: {e}")))
    }

    /// Follows the store where the contract leaves it a choice (see above); `pre` are the due
    /// pendings the model expired for this write, which must be expired when it applied
    /// something (`fresh`).
    async fn settle(&mut self, now: i64, pre: Vec<String>, fresh: bool) -> Result<(), TestCaseError> {
        for id in &pre {
            match self.state_of(id).await? {
                TransferState::Expired => {}
                TransferState::Pending if !fresh => self.model.unexpire(id),
                other => {
                    return Err(fail(format!(
                        "{id} was due when a write applying something touched its accounts, and is {other:?}"
                    )));
                }
            }
        }
        for id in self.model.due(now, None) {
            match self.state_of(&id).await? {
                TransferState::Pending => {}
                TransferState::Expired => self.model.release(&id, TransferState::Expired),
                other => return Err(fail(format!("{id} was due and pending, and is {other:?}"))),
            }
        }
        if let Some(w) = self.model.worker_made.take()
            && self.model.accounts.contains_key(&w)
        {
            match self.h.store.get_account(&w).await {
                Ok(_) => {}
                Err(e) if e.code == ErrorCode::NotFound => {
                    self.model.accounts.remove(&w);
                    self.model.events -= 1;
                }
                Err(e) => return Err(fail(format!("account {w}: {e}"))),
            }
        }
        Ok(())
    }

    /// Every account and transfer of the case, as stored, equals the model.
    async fn compare(&self) -> Result<(), TestCaseError> {
        for id in &self.names.accounts {
            match (self.model.accounts.get(id), self.h.store.get_account(id).await) {
                (None, Err(e)) if e.code == ErrorCode::NotFound => {}
                (Some(m), Ok(a)) => {
                    prop_assert_eq!(a.sums, m.sums, "the balances of {}", id);
                    let balance = m.sums.credits_posted - m.sums.debits_posted;
                    prop_assert_eq!(
                        (a.balance, a.available),
                        (balance, balance - m.sums.debits_pending),
                        "balance and available of {}",
                        id
                    );
                    prop_assert_eq!(
                        (a.ledger, a.code, a.flags),
                        (m.ledger, m.code, m.flags),
                        "account {}",
                        id
                    );
                    prop_assert_eq!(a.closed_at.is_some(), m.flags.closed, "closed_at of {}", id);
                }
                (m, got) => {
                    return Err(fail(format!("account {id}: the model has {m:?}, the store {got:?}")));
                }
            }
        }
        for id in &self.names.transfers {
            match (self.model.transfers.get(id), self.h.store.get_transfer(id).await) {
                (None, Err(e)) if e.code == ErrorCode::NotFound => {}
                (Some(m), Ok(t)) => {
                    let n = &m.new;
                    prop_assert_eq!(
                        (&t.debit_account, &t.credit_account, t.amount, t.code, t.pending, t.timeout_ms),
                        (&n.debit_account, &n.credit_account, n.amount, n.code, n.pending, n.timeout_ms),
                        "transfer {}",
                        id
                    );
                    prop_assert_eq!(&t.metadata, &n.metadata, "metadata of {}", id);
                    prop_assert_eq!(
                        (t.state, t.reason, t.posted_amount),
                        (m.state, m.reason, m.posted),
                        "{}",
                        id
                    );
                    prop_assert_eq!(t.expires_at.map(|e| e.0), m.expires_at, "expires_at of {}", id);
                    let refused = m.state == TransferState::Refused;
                    prop_assert_eq!(t.seq.is_some(), !refused, "seq of {}", id);
                    if !refused {
                        prop_assert_eq!(t.ledger, m.ledger, "ledger of {}", id);
                    }
                    let settled = n.pending
                        && matches!(
                            m.state,
                            TransferState::Posted | TransferState::Voided | TransferState::Expired
                        );
                    prop_assert_eq!(t.settled_at.is_some(), settled, "settled_at of {}", id);
                }
                (m, got) => {
                    return Err(fail(format!("transfer {id}: the model has {m:?}, the store {got:?}")));
                }
            }
        }
        Ok(())
    }
}

static LEDGER_CASE: AtomicUsize = AtomicUsize::new(0);

async fn run_case(h: &Harness, steps: Vec<Step>) -> Result<(), TestCaseError> {
    let names = Names::new(LEDGER_CASE.fetch_add(1, Ordering::SeqCst));
    let head = h.store.verify_ledger(false).await.map_err(fail)?.head_seq;
    let mut case = Case { h, names, model: Model::default(), sent: Vec::new() };
    let setup = [Step::Create { who: 0, variant: 0 }, Step::Create { who: 1, variant: 0 }];
    for step in setup.iter().chain(&steps) {
        case.run(step).await?;
    }
    // Settle what is still pending (a due one answers pending_expired), so that no later
    // case's expiry pass finds one of this case's.
    for id in 0..IDS {
        let name = &case.names.transfers[usize::from(id)];
        if case.model.transfers.get(name).is_some_and(|t| t.state == TransferState::Pending) {
            case.run(&Step::Void { id }).await?;
        }
    }
    let events = h.store.ledger_events(head, 1_000_000).await.map_err(fail)?;
    let mine = events.iter().filter(|e| case.names.owns(e)).count();
    prop_assert_eq!(mine, case.model.events, "the ledger events of this case");
    let v = h.store.verify_ledger(true).await.map_err(fail)?;
    prop_assert!(v.ok, "verify: {:?}", v.problems);
    let violations = h.store.check_invariants().await.map_err(fail)?;
    prop_assert!(violations.is_empty(), "invariants: {:?}", violations);
    Ok(())
}

/// Random sequences of 20 to 60 ledger operations (creates, transfers posted and pending,
/// with and without timeouts, resends, batches, atomic batches with a bad transfer, posts in
/// part, voids, closes, time passing, expiry passes) over four accounts and sixteen transfer
/// ids a case: every answer, balance and transfer equals the model's; the chain verifies and
/// the invariants hold after each case. `FERRY_PROPTEST_CASES` cases (default 24; 8 on
/// PostgreSQL).
pub async fn property_ledger_matches_a_model(h: Harness) {
    let default = if h.store.backend() == "postgres" { 8 } else { 24 };
    let cases = std::env::var("FERRY_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    let handle = tokio::runtime::Handle::current();
    let strategy = proptest::collection::vec(step(), 20..=60);
    let result = tokio::task::block_in_place(|| {
        let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
        runner.run(&strategy, |steps| handle.block_on(run_case(&h, steps))).map_err(|e| e.to_string())
    });
    if let Err(e) = result {
        panic!("ledger model property failed: {e}");
    }
    verified(&h).await;
    h.finish().await;
}

/// Every rule above: `conformance_tests!` runs each against every backend. A rule missing
/// here is never called, and `dead_code` fails the build.
macro_rules! ledger_rules {
    () => {
        domain_tests!(ledger:
            accounts_are_created_once_and_repeats_answer_or_conflict, account_flags_bound_debits_and_credits,
            a_refusal_is_remembered_and_never_poisons_its_batch, an_atomic_batch_writes_all_or_nothing,
            a_pending_transfer_posts_in_part_once, a_voided_transfer_releases_its_hold_once,
            a_due_pending_expires_before_a_write_counts_it, the_expiry_pass_expires_due_pendings_only,
            a_closed_account_takes_no_transfers_but_settles_its_pendings,
            crediting_a_missing_worker_account_creates_it, sums_past_the_largest_integer_are_refused_as_overflow,
            events_chain_from_one_and_verify_replays_them, a_statement_lists_an_accounts_transfers_oldest_first,
            property_ledger_matches_a_model,
        );
    };
}
