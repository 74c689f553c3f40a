//! What both backends share about ledger rows: the column lists, the decoding of a row, the
//! settings, which rows a write loads, and the invariants to check. The rules themselves live
//! in `ferry_core::ledger` ([`Book`] plans, [`Replay`] checks).

use ferry_core::ledger::{
    Account, Applied, Balances, Flags, Head, LedgerEvent, NewTransfer, Payment, Replay, Transfer, state_of,
    unhex,
};
use ferry_core::{Error, Result, Timestamp};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The `[ledger]` settings the store needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerSettings {
    /// A snapshot every this many events.
    pub snapshot_every: i64,
    /// The ledger paid jobs use (and `escrow` is created in).
    pub jobs_ledger: u32,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        LedgerSettings { snapshot_every: 1_000, jobs_ledger: 1 }
    }
}

/// Columns of `ledger_accounts`, in [`AccountRow`]'s order.
pub const ACCOUNT_COLS: &str = "id, ledger, code, flags, metadata, debits_posted, credits_posted, \
     debits_pending, credits_pending, created_at, closed_at, last_seq";

/// One `ledger_accounts` row as read.
pub type AccountRow = (String, i64, i64, i64, String, i64, i64, i64, i64, i64, Option<i64>, i64);

/// Columns of `ledger_transfers`, in [`TransferRow`]'s order.
pub const TRANSFER_COLS: &str = "id, debit_account, credit_account, ledger, amount, code, metadata, pending, \
     timeout_ms, state, reason, posted_amount, expires_at, job_id, seq, created_at, settled_at";

/// One `ledger_transfers` row as read.
pub type TransferRow = (
    String,
    String,
    String,
    i64,
    i64,
    i64,
    String,
    i64,
    Option<i64>,
    String,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    i64,
    Option<i64>,
);

/// Columns of `ledger_events`, in [`EventRow`]'s order.
pub const EVENT_COLS: &str = "seq, kind, at, data, hash";

/// One `ledger_events` row as read.
pub type EventRow = (i64, String, i64, String, String);

fn corrupt(e: impl std::fmt::Display) -> Error {
    Error::internal(format!("stored ledger row is corrupt: {e}"))
}

fn object(text: &str) -> Result<Map<String, Value>> {
    serde_json::from_str(text).map_err(corrupt)
}

/// Decodes an account row.
pub fn account_from(r: AccountRow) -> Result<Account> {
    let (id, ledger, code, flags, metadata, dp, cp, dpen, cpen, created_at, closed_at, last_seq) = r;
    let mut a = Account {
        id,
        ledger: u32::try_from(ledger).map_err(corrupt)?,
        code: u16::try_from(code).map_err(corrupt)?,
        flags: Flags::from_bits(flags),
        metadata: object(&metadata)?,
        sums: Balances { debits_posted: dp, credits_posted: cp, debits_pending: dpen, credits_pending: cpen },
        balance: 0,
        available: 0,
        created_at: Timestamp(created_at),
        closed_at: closed_at.map(Timestamp),
        duplicate: false,
        last_seq,
    };
    a.refresh();
    Ok(a)
}

/// Decodes a transfer row.
pub fn transfer_from(r: TransferRow) -> Result<Transfer> {
    let (
        id,
        debit_account,
        credit_account,
        ledger,
        amount,
        code,
        metadata,
        pending,
        timeout_ms,
        state,
        reason,
        posted_amount,
        expires_at,
        job_id,
        seq,
        created_at,
        settled_at,
    ) = r;
    Ok(Transfer {
        id,
        debit_account,
        credit_account,
        ledger: u32::try_from(ledger).map_err(corrupt)?,
        amount,
        code: u16::try_from(code).map_err(corrupt)?,
        metadata: object(&metadata)?,
        pending: pending != 0,
        timeout_ms,
        state: state_of(&state)?,
        reason: reason
            .map(|r| ferry_core::ledger::Reason::parse(&r).ok_or_else(|| corrupt(format!("reason {r:?}"))))
            .transpose()?,
        posted_amount,
        expires_at: expires_at.map(Timestamp),
        job_id: job_id.map(|j| Uuid::parse_str(&j).map_err(corrupt)).transpose()?,
        seq,
        created_at: Timestamp(created_at),
        settled_at: settled_at.map(Timestamp),
        duplicate: false,
    })
}

/// Decodes an event row.
pub fn event_from(r: EventRow) -> Result<LedgerEvent> {
    let (seq, kind, at, data, hash) = r;
    // A hash that is not hex still replays (as a chain problem), so a corrupt row is reported,
    // not fatal.
    let hash = unhex(&hash).unwrap_or([0xff; 32]);
    Ok(LedgerEvent { seq, kind, at, data, hash })
}

/// The stored head: (seq, hash hex, digest hex), or the genesis head when absent.
pub fn head_from(r: Option<(i64, String, String)>) -> Result<Head> {
    match r {
        None => Ok(Head::default()),
        Some((seq, hash, digest)) => Ok(Head {
            seq,
            hash: unhex(&hash).ok_or_else(|| corrupt("head hash"))?,
            digest: unhex(&digest).ok_or_else(|| corrupt("head digest"))?,
        }),
    }
}

/// The JSON a job's `payment` column holds.
pub fn payment_text(p: &Payment) -> String {
    serde_json::to_string(p).expect("a payment serializes")
}

/// Decodes a job's `payment` column.
pub fn payment_from(text: &str) -> Result<Payment> {
    serde_json::from_str(text).map_err(corrupt)
}

/// The hold a paid job places.
pub fn hold_transfer(job: Uuid, p: &Payment) -> NewTransfer {
    NewTransfer {
        id: p.hold.clone(),
        debit_account: p.from.clone(),
        credit_account: ferry_core::ledger::ESCROW.into(),
        amount: p.amount,
        ledger: Some(p.ledger),
        code: p.code,
        metadata: Map::new(),
        pending: true,
        timeout_ms: None,
        job_id: Some(job),
    }
}

/// The transfer paying a completed job's worker.
pub fn pay_transfer(job: Uuid, p: &Payment, worker: &str) -> NewTransfer {
    NewTransfer {
        id: ferry_core::ledger::pay_id(job),
        debit_account: ferry_core::ledger::ESCROW.into(),
        credit_account: ferry_core::ledger::worker_account(worker),
        amount: p.amount,
        ledger: Some(p.ledger),
        code: p.code,
        metadata: Map::new(),
        pending: false,
        timeout_ms: None,
        job_id: Some(job),
    }
}

/// The replica number of a hold id (`job:<id>:hold` is 0, `job:<id>:hold:<n>` is n).
pub fn hold_number(hold: &str) -> u32 {
    hold.rsplit_once(":hold:").and_then(|(_, n)| n.parse().ok()).unwrap_or(0)
}

/// Whether `written` crossed a snapshot boundary (a snapshot is due at its head).
pub fn snapshot_due(before: i64, after: i64, every: i64) -> bool {
    every > 0 && before / every != after / every
}

/// Live balances keyed by account, as a replay compares them.
pub type Live = BTreeMap<String, (u32, Balances)>;

/// The outcome of a replay as `verify` reports it.
pub fn verification(r: Replay, live_head: Head, events: i64) -> ferry_core::ledger::Verification {
    let mut r = r;
    if live_head.seq != r.seq || live_head.hash != r.hash {
        r.problems.push(ferry_core::ledger::Problem {
            kind: "head".into(),
            account: None,
            seq: Some(live_head.seq),
            expected: serde_json::json!({"seq": r.seq, "hash": ferry_core::ledger::hex(&r.hash)}),
            actual: serde_json::json!({"seq": live_head.seq, "hash": ferry_core::ledger::hex(&live_head.hash)}),
        });
    }
    let digest = r.digest();
    if r.problems.is_empty() && digest != live_head.digest {
        r.problems.push(ferry_core::ledger::Problem {
            kind: "digest".into(),
            account: None,
            seq: None,
            expected: serde_json::json!(ferry_core::ledger::hex(&digest)),
            actual: serde_json::json!(ferry_core::ledger::hex(&live_head.digest)),
        });
    }
    ferry_core::ledger::Verification {
        ok: r.problems.is_empty(),
        head_seq: r.seq,
        digest: ferry_core::ledger::hex(&digest),
        problems: r.problems,
        repaired: false,
        events_replayed: events,
    }
}

/// Whether a verification found the chain itself broken (no repair can trust it).
pub fn chain_broken(v: &ferry_core::ledger::Verification) -> bool {
    v.problems.iter().any(|p| matches!(p.kind.as_str(), "chain" | "gap" | "event"))
}

/// The transfer an op answered.
pub fn transfer_of(a: Result<Applied>) -> Result<Transfer> {
    match a? {
        Applied::Transfer(t) => Ok(t),
        Applied::Account(_) => Err(Error::internal("a transfer op answered an account")),
    }
}

/// The account an op answered.
pub fn account_of(a: Result<Applied>) -> Result<Account> {
    match a? {
        Applied::Account(a) => Ok(a),
        Applied::Transfer(_) => Err(Error::internal("an account op answered a transfer")),
    }
}

/// The answer of a write of one op.
pub fn one(mut v: Vec<Result<Applied>>) -> Result<Applied> {
    if v.len() != 1 {
        return Err(Error::internal("one op answered other than once"));
    }
    v.remove(0)
}

/// An atomic batch of `n` ops: every answer, or the one error that refused the batch.
pub fn all_or_error(out: Vec<Result<Applied>>, n: usize) -> Result<Vec<Result<Applied>>> {
    if out.len() == n && out.iter().all(|r| r.is_ok()) {
        return Ok(out);
    }
    Err(out
        .into_iter()
        .find_map(|r| r.err())
        .unwrap_or_else(|| Error::internal("an atomic batch answered partly")))
}

/// The ledger invariants as (SQL over both backends returning offending ids, what they break).
pub const INVARIANTS: [(&str, &str); 4] = [
    (
        "SELECT id FROM ledger_accounts
         WHERE flags % 2 = 1 AND debits_posted + debits_pending > credits_posted LIMIT 10",
        "account over its debits_must_not_exceed_credits bound",
    ),
    (
        "SELECT id FROM ledger_accounts
         WHERE (flags / 2) % 2 = 1 AND credits_posted + credits_pending > debits_posted LIMIT 10",
        "account over its credits_must_not_exceed_debits bound",
    ),
    (
        "SELECT id FROM ledger_accounts WHERE id = 'escrow' AND (debits_posted <> credits_posted
           OR credits_pending <> (SELECT coalesce(sum(amount), 0) FROM ledger_transfers
                                  WHERE state = 'pending' AND credit_account = 'escrow'))",
        "escrow holds other than its open holds",
    ),
    (
        "SELECT payment FROM jobs WHERE hold_open = 1 AND state IN ('completed', 'dead', 'cancelled') LIMIT 10",
        "a finished paid job's hold is still open",
    ),
];
