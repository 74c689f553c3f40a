//! The ledger over SQLite. A write loads the rows its ops name into a `Book` (with the due
//! pendings of those accounts), plans every op in memory, and stores only what the book says
//! changed, with its events, the new head and, every `snapshot_every` events, a snapshot: a
//! refusal is an answer, never a poisoned group commit. The single writer serializes ledger
//! writes, so the chain's head needs no lock here.

use super::{SqliteStore, db_err};
use crate::AccountFilter;
use crate::LedgerStore;
use crate::effects::Effects;
use crate::ledger_rows::*;
use async_trait::async_trait;
use ferry_core::ledger::{
    self, Account, Applied, Balances, Book, Head, LedgerEvent, Needs, NewAccount, NewTransfer, Op, Payment,
    Replay, Transfer, Verification, hex,
};
use ferry_core::{Error, ErrorCode, Result};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

fn account_row(r: &rusqlite::Row) -> rusqlite::Result<AccountRow> {
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
        r.get(11)?,
    ))
}

fn transfer_row(r: &rusqlite::Row) -> rusqlite::Result<TransferRow> {
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
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
        r.get(14)?,
        r.get(15)?,
        r.get(16)?,
    ))
}

fn load_account(conn: &Connection, id: &str) -> Result<Option<Account>> {
    conn.prepare_cached(&format!("SELECT {ACCOUNT_COLS} FROM ledger_accounts WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id], account_row).optional())
        .map_err(db_err)?
        .map(account_from)
        .transpose()
}

fn load_transfer(conn: &Connection, id: &str) -> Result<Option<Transfer>> {
    conn.prepare_cached(&format!("SELECT {TRANSFER_COLS} FROM ledger_transfers WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id], transfer_row).optional())
        .map_err(db_err)?
        .map(transfer_from)
        .transpose()
}

/// The chain's head.
pub fn head(conn: &Connection) -> Result<Head> {
    let r = conn
        .prepare_cached("SELECT seq, hash, digest FROM ledger_head WHERE id = 1")
        .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).optional())
        .map_err(db_err)?;
    head_from(r)
}

/// Due pending transfers (at most `max`), oldest due first.
fn due(conn: &Connection, now: i64, max: usize) -> Result<Vec<Transfer>> {
    let mut s = conn
        .prepare_cached(&format!(
            "SELECT {TRANSFER_COLS} FROM ledger_transfers
             WHERE state = 'pending' AND expires_at IS NOT NULL AND expires_at <= ?1 ORDER BY expires_at LIMIT ?2"
        ))
        .map_err(db_err)?;
    let rows = s.query_map(params![now, max as i64], transfer_row).map_err(db_err)?;
    rows.map(|r| r.map_err(db_err).and_then(transfer_from)).collect()
}

/// Due pending transfers of `accounts` (either side), through the per-side due indexes.
fn due_of(conn: &Connection, now: i64, accounts: &BTreeSet<String>) -> Result<Vec<Transfer>> {
    let mut out: Vec<Transfer> = Vec::new();
    for side in ["debit_account", "credit_account"] {
        let mut s = conn
            .prepare_cached(&format!(
                "SELECT {TRANSFER_COLS} FROM ledger_transfers
                 WHERE {side} = ?1 AND state = 'pending' AND expires_at IS NOT NULL AND expires_at <= ?2 LIMIT 1000"
            ))
            .map_err(db_err)?;
        for a in accounts {
            for r in s.query_map(params![a, now], transfer_row).map_err(db_err)? {
                let t = transfer_from(r.map_err(db_err)?)?;
                if !out.iter().any(|x| x.id == t.id) {
                    out.push(t);
                }
            }
        }
    }
    Ok(out)
}

/// Loads what `needs` names (and the accounts of the transfers it names, and the due
/// pendings of all those accounts) into a book at `now`, due pendings expired.
pub fn load(conn: &Connection, now: i64, needs: &Needs, settings: &LedgerSettings) -> Result<Book> {
    let mut transfers = Vec::new();
    let mut accounts: BTreeSet<String> = needs.accounts.clone();
    for id in &needs.transfers {
        if let Some(t) = load_transfer(conn, id)? {
            accounts.insert(t.debit_account.clone());
            accounts.insert(t.credit_account.clone());
            transfers.push(t);
        }
    }
    for t in due_of(conn, now, &accounts)? {
        if !transfers.iter().any(|x| x.id == t.id) {
            accounts.insert(t.debit_account.clone());
            accounts.insert(t.credit_account.clone());
            transfers.push(t);
        }
    }
    let mut loaded = Vec::with_capacity(accounts.len());
    for id in &accounts {
        if let Some(a) = load_account(conn, id)? {
            loaded.push(a);
        }
    }
    let mut book = Book::new(now, head(conn)?, loaded, transfers, settings.jobs_ledger);
    book.expire_due();
    Ok(book)
}

/// Stores what `book` changed: rows, events (with their copies for `/v1/events`), the head
/// and a snapshot when one is due.
pub fn store(conn: &Connection, book: Book, settings: &LedgerSettings, fx: &mut Effects) -> Result<()> {
    let before = head(conn)?.seq;
    let w = book.finish();
    if w.events.is_empty() && w.transfers.is_empty() {
        return Ok(());
    }
    for a in &w.inserted {
        conn.prepare_cached(&format!(
            "INSERT INTO ledger_accounts ({ACCOUNT_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
        ))
        .and_then(|mut s| {
            s.execute(params![
                a.id,
                a.ledger,
                a.code,
                a.flags.bits(),
                serde_json::Value::Object(a.metadata.clone()).to_string(),
                a.sums.debits_posted,
                a.sums.credits_posted,
                a.sums.debits_pending,
                a.sums.credits_pending,
                a.created_at.0,
                a.closed_at.map(|t| t.0),
                a.last_seq
            ])
        })
        .map_err(db_err)?;
    }
    for a in &w.updated {
        conn.prepare_cached(
            "UPDATE ledger_accounts SET flags = ?2, debits_posted = ?3, credits_posted = ?4, debits_pending = ?5,
                credits_pending = ?6, closed_at = ?7, last_seq = ?8 WHERE id = ?1",
        )
        .and_then(|mut s| {
            s.execute(params![
                a.id,
                a.flags.bits(),
                a.sums.debits_posted,
                a.sums.credits_posted,
                a.sums.debits_pending,
                a.sums.credits_pending,
                a.closed_at.map(|t| t.0),
                a.last_seq
            ])
        })
        .map_err(db_err)?;
    }
    for tw in &w.transfers {
        let t = &tw.transfer;
        if tw.insert {
            conn.prepare_cached(&format!(
                "INSERT INTO ledger_transfers ({TRANSFER_COLS})
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    t.id,
                    t.debit_account,
                    t.credit_account,
                    t.ledger,
                    t.amount,
                    t.code,
                    serde_json::Value::Object(t.metadata.clone()).to_string(),
                    i64::from(t.pending),
                    t.timeout_ms,
                    t.state.as_str(),
                    t.reason.map(|r| r.as_str()),
                    t.posted_amount,
                    t.expires_at.map(|e| e.0),
                    t.job_id.map(|j| j.to_string()),
                    t.seq,
                    t.created_at.0,
                    t.settled_at.map(|e| e.0)
                ])
            })
            .map_err(db_err)?;
        } else {
            conn.prepare_cached(
                "UPDATE ledger_transfers SET state = ?2, posted_amount = ?3, settled_at = ?4 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![t.id, t.state.as_str(), t.posted_amount, t.settled_at.map(|e| e.0)])
            })
            .map_err(db_err)?;
        }
    }
    let mut insert = conn
        .prepare_cached("INSERT INTO ledger_events (seq, kind, at, data, hash) VALUES (?1, ?2, ?3, ?4, ?5)")
        .map_err(db_err)?;
    for e in &w.events {
        insert.execute(params![e.seq, e.kind, e.at, e.data, hex(&e.hash)]).map_err(db_err)?;
    }
    fx.events.extend(w.copies);
    if !w.events.is_empty() {
        conn.prepare_cached(
            "INSERT INTO ledger_head (id, seq, hash, digest) VALUES (1, ?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, digest = excluded.digest",
        )
        .and_then(|mut s| s.execute(params![w.head.seq, hex(&w.head.hash), hex(&w.head.digest)]))
        .map_err(db_err)?;
        if snapshot_due(before, w.head.seq, settings.snapshot_every) {
            snapshot(conn, w.events.last().map_or(0, |e| e.at), &w.head)?;
        }
    }
    Ok(())
}

/// Stores a snapshot at `head`: the accounts changed since the last one, per-ledger totals
/// and the digest of all balances.
fn snapshot(conn: &Connection, at: i64, head: &Head) -> Result<()> {
    let last: i64 = conn
        .query_row("SELECT coalesce(max(seq), 0) FROM ledger_snapshots", [], |r| r.get(0))
        .map_err(db_err)?;
    conn.execute(
        "INSERT INTO ledger_snapshot_accounts (account_id, snapshot_seq, ledger, debits_posted, credits_posted,
            debits_pending, credits_pending)
         SELECT id, ?1, ledger, debits_posted, credits_posted, debits_pending, credits_pending
         FROM ledger_accounts WHERE last_seq > ?2",
        params![head.seq, last],
    )
    .map_err(db_err)?;
    let totals = totals(conn).or_else(|_| totals_wide(conn))?;
    conn.execute(
        "INSERT INTO ledger_snapshots (seq, at, hash, digest, totals) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![head.seq, at, hex(&head.hash), hex(&head.digest), totals],
    )
    .map_err(db_err)?;
    Ok(())
}

/// Per-ledger totals summed in 128 bits (SQLite's `sum` refuses a total past 2^63).
fn totals_wide(conn: &Connection) -> Result<String> {
    let mut s = conn
        .prepare("SELECT ledger, debits_posted, credits_posted, debits_pending, credits_pending FROM ledger_accounts")
        .map_err(db_err)?;
    let mut per: BTreeMap<i64, [i128; 4]> = BTreeMap::new();
    let rows = s
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, [r.get::<_, i64>(1)?, r.get(2)?, r.get(3)?, r.get(4)?])))
        .map_err(db_err)?;
    for r in rows {
        let (l, v) = r.map_err(db_err)?;
        let t = per.entry(l).or_default();
        for (a, b) in t.iter_mut().zip(v) {
            *a += i128::from(b);
        }
    }
    let v: Vec<serde_json::Value> = per
        .into_iter()
        .map(|(l, t)| {
            serde_json::json!({"ledger": l, "debits_posted": t[0].to_string(), "credits_posted": t[1].to_string(),
                "debits_pending": t[2].to_string(), "credits_pending": t[3].to_string()})
        })
        .collect();
    Ok(serde_json::Value::Array(v).to_string())
}

fn totals(conn: &Connection) -> Result<String> {
    let mut s = conn
        .prepare_cached(
            "SELECT ledger, sum(debits_posted), sum(credits_posted), sum(debits_pending), sum(credits_pending)
             FROM ledger_accounts GROUP BY ledger ORDER BY ledger",
        )
        .map_err(db_err)?;
    let rows = s
        .query_map([], |r| {
            Ok(serde_json::json!({
                "ledger": r.get::<_, i64>(0)?, "debits_posted": r.get::<_, i64>(1)?,
                "credits_posted": r.get::<_, i64>(2)?, "debits_pending": r.get::<_, i64>(3)?,
                "credits_pending": r.get::<_, i64>(4)?,
            }))
        })
        .map_err(db_err)?;
    let v: Vec<serde_json::Value> = rows.collect::<rusqlite::Result<_>>().map_err(db_err)?;
    Ok(serde_json::Value::Array(v).to_string())
}

/// Runs `ops` against the stored rows: atomic (all or nothing, nothing stored on error) or
/// each on its own (refusals remembered).
pub fn apply(
    conn: &Connection,
    now: i64,
    ops: &[Op],
    atomic: bool,
    settings: &LedgerSettings,
    fx: &mut Effects,
) -> Result<Vec<Result<Applied>>> {
    let mut book = load(conn, now, &Needs::of(ops), settings)?;
    let out = if atomic {
        match book.apply_atomic(ops) {
            Ok(v) => v.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        }
    } else {
        ops.iter().map(|op| book.apply(op, true)).collect()
    };
    store(conn, book, settings, fx)?;
    Ok(out)
}

/// Places the holds of newly enqueued paid jobs, all or nothing: the error of the first
/// refused one (with `details.index`, and `payment.from` for an unknown account). Nothing is
/// stored unless all pass.
pub fn hold_jobs(
    conn: &Connection,
    now: i64,
    holds: &[(usize, Uuid, Payment)],
    settings: &LedgerSettings,
    fx: &mut Effects,
) -> Result<()> {
    if holds.is_empty() {
        return Ok(());
    }
    let ops: Vec<Op> = holds.iter().map(|(_, id, p)| Op::Transfer(hold_transfer(*id, p))).collect();
    let mut book = load(conn, now, &Needs::of(&ops), settings)?;
    for ((i, _, p), op) in holds.iter().zip(&ops) {
        if book.account(&p.from).is_none() {
            let e = Error::invalid("payment.from", format!("no ledger account {:?}", p.from));
            return Err(e.with_details(serde_json::json!({ "index": i })));
        }
        if let Err(e) = book.apply(op, false) {
            let e = if e.code == ErrorCode::ValidationFailed { e.within("payment") } else { e };
            return Err(add_index(e, *i));
        }
    }
    store(conn, book, settings, fx)
}

/// A book holding what the holds of `jobs` need (none when no job is paid).
pub fn holds_book<'a>(
    conn: &Connection,
    now: i64,
    jobs: impl Iterator<Item = (Uuid, &'a Payment)>,
    settings: &LedgerSettings,
) -> Result<Option<Book>> {
    let ops: Vec<Op> = jobs.map(|(id, p)| Op::Transfer(hold_transfer(id, p))).collect();
    if ops.is_empty() {
        return Ok(None);
    }
    load(conn, now, &Needs::of(&ops), settings).map(Some)
}

/// Plans one job's hold in `book` (loaded by [`holds_book`]); the book is unchanged on error.
pub fn hold_one(book: &mut Option<Book>, job: Uuid, p: &Payment) -> Result<()> {
    let Some(book) = book.as_mut() else { return Err(Error::internal("a paid job's hold has no book")) };
    if book.account(&p.from).is_none() {
        return Err(ledger::account_not_found(&p.from));
    }
    book.apply(&Op::Transfer(hold_transfer(job, p)), false).map(|_| ())
}

fn add_index(e: Error, i: usize) -> Error {
    let mut d = match e.details.clone() {
        Some(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    d.insert("index".into(), serde_json::json!(i));
    e.with_details(serde_json::Value::Object(d))
}

/// Most ended paid jobs settled with one ledger load.
pub const SETTLE_BATCH: u64 = 1_000;

/// Settles the holds of paid jobs that reached an end in this transaction: completed ones
/// post the hold and pay `worker:<name>`, dead or cancelled ones void it.
pub fn settle_ended(conn: &Connection, now: i64, settings: &LedgerSettings, fx: &mut Effects) -> Result<u64> {
    let mut s = conn
        .prepare_cached(
            "SELECT seq, id, state, worker, payment FROM jobs
             WHERE hold_open = 1 AND state IN ('completed', 'dead', 'cancelled') LIMIT ?1",
        )
        .map_err(db_err)?;
    let rows: Vec<(i64, Uuid, String, Option<String>, String)> = s
        .query_map([SETTLE_BATCH as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
        .map_err(db_err)?
        .collect::<rusqlite::Result<_>>()
        .map_err(db_err)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut ops = Vec::new();
    for (_, id, state, worker, payment) in &rows {
        let p = payment_from(payment)?;
        match (state.as_str(), worker) {
            ("completed", Some(w)) => {
                ops.push(Op::Post { id: p.hold.clone(), amount: None });
                ops.push(Op::Transfer(pay_transfer(*id, &p, w)));
            }
            _ => ops.push(Op::Void { id: p.hold.clone() }),
        }
    }
    let mut book = load(conn, now, &Needs::of(&ops), settings)?;
    for op in &ops {
        // A hold already settled (or a pay already made) answers a duplicate or a refusal;
        // neither moves funds twice, and a job's settlement never fails for funds.
        if let Err(e) = book.apply(op, false)
            && e.code != ErrorCode::InvalidState
            && e.code != ErrorCode::Conflict
        {
            return Err(Error::internal(format!("settling a paid job's hold failed: {}", e.message)));
        }
    }
    store(conn, book, settings, fx)?;
    let mut done = conn.prepare_cached("UPDATE jobs SET hold_open = 0 WHERE seq = ?1").map_err(db_err)?;
    for (seq, ..) in &rows {
        done.execute([seq]).map_err(db_err)?;
    }
    Ok(rows.len() as u64)
}

/// Expires up to `max` due pending transfers.
pub fn expire(
    conn: &Connection,
    now: i64,
    max: usize,
    settings: &LedgerSettings,
    fx: &mut Effects,
) -> Result<u64> {
    let due = due(conn, now, max)?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut needs = Needs::default();
    for t in &due {
        needs.accounts.insert(t.debit_account.clone());
        needs.accounts.insert(t.credit_account.clone());
    }
    let book = load(conn, now, &needs, settings)?;
    let n = book.events().iter().filter(|e| e.kind == "transfer.expired").count() as u64;
    store(conn, book, settings, fx)?;
    Ok(n)
}

/// Live balances of every account.
fn live(conn: &Connection) -> Result<Live> {
    let mut s = conn
        .prepare("SELECT id, ledger, debits_posted, credits_posted, debits_pending, credits_pending FROM ledger_accounts")
        .map_err(db_err)?;
    let rows = s
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                Balances {
                    debits_posted: r.get(2)?,
                    credits_posted: r.get(3)?,
                    debits_pending: r.get(4)?,
                    credits_pending: r.get(5)?,
                },
            ))
        })
        .map_err(db_err)?;
    let mut out = Live::new();
    for r in rows {
        let (id, ledger, b) = r.map_err(db_err)?;
        out.insert(id, (ledger as u32, b));
    }
    Ok(out)
}

/// Snapshots: (seq, hash, digest), oldest first.
fn snapshots(conn: &Connection) -> Result<Vec<(i64, String, String)>> {
    let mut s =
        conn.prepare("SELECT seq, hash, digest FROM ledger_snapshots ORDER BY seq").map_err(db_err)?;
    let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(db_err)?;
    rows.collect::<rusqlite::Result<_>>().map_err(db_err)
}

/// The balances as of snapshot `seq`: each account's newest snapshot row at or before it.
fn snapshot_state(conn: &Connection, seq: i64) -> Result<BTreeMap<String, (u32, Balances)>> {
    let mut s = conn
        .prepare(
            "SELECT account_id, ledger, debits_posted, credits_posted, debits_pending, credits_pending
             FROM ledger_snapshot_accounts sa
             WHERE snapshot_seq = (SELECT max(snapshot_seq) FROM ledger_snapshot_accounts
                                   WHERE account_id = sa.account_id AND snapshot_seq <= ?1)",
        )
        .map_err(db_err)?;
    let rows = s
        .query_map([seq], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                Balances {
                    debits_posted: r.get(2)?,
                    credits_posted: r.get(3)?,
                    debits_pending: r.get(4)?,
                    credits_pending: r.get(5)?,
                },
            ))
        })
        .map_err(db_err)?;
    let mut out = BTreeMap::new();
    for r in rows {
        let (id, ledger, b) = r.map_err(db_err)?;
        out.insert(id, (ledger as u32, b));
    }
    Ok(out)
}

/// Events after `after`, at most `limit`.
pub fn events(conn: &Connection, after: i64, limit: usize) -> Result<Vec<LedgerEvent>> {
    let mut s = conn
        .prepare_cached(&format!(
            "SELECT {EVENT_COLS} FROM ledger_events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
        ))
        .map_err(db_err)?;
    let rows = s
        .query_map(params![after, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })
        .map_err(db_err)?;
    rows.map(|r| r.map_err(db_err).and_then(event_from)).collect()
}

/// Replays the chain (from genesis with `full`, else from the last snapshot) and compares.
pub fn verify(conn: &Connection, full: bool) -> Result<Verification> {
    let snaps = snapshots(conn)?;
    let mut replay = match (full, snaps.last()) {
        (false, Some((seq, hash, digest))) => {
            let mut r =
                Replay::from(*seq, ledger::unhex(hash).unwrap_or([0; 32]), snapshot_state(conn, *seq)?);
            r.check_snapshot(*seq, &ledger::unhex(digest).unwrap_or([0; 32]));
            r
        }
        _ => Replay::default(),
    };
    let start = replay.seq;
    let mut next_snap = snaps.iter().filter(|(s, ..)| *s > start).peekable();
    let mut n = 0i64;
    loop {
        let batch = events(conn, replay.seq, 10_000)?;
        if batch.is_empty() {
            break;
        }
        for e in &batch {
            replay.apply(e);
            n += 1;
            while let Some((s, _, d)) = next_snap.peek() {
                if *s > replay.seq {
                    break;
                }
                if *s == replay.seq {
                    replay.check_snapshot(*s, &ledger::unhex(d).unwrap_or([0; 32]));
                }
                next_snap.next();
            }
        }
    }
    replay.compare(&live(conn)?);
    Ok(verification(replay, head(conn)?, n))
}

/// Rewrites the balances from a full replay of an intact chain; appends `ledger.repaired`.
pub fn repair(
    conn: &Connection,
    now: i64,
    settings: &LedgerSettings,
    fx: &mut Effects,
) -> Result<Verification> {
    let v = verify(conn, true)?;
    if chain_broken(&v) {
        return Err(Error::new(
            ErrorCode::InvalidState,
            "the ledger's event chain is broken; balances cannot be rebuilt from it",
        )
        .with_details(serde_json::json!({ "problems": v.problems })));
    }
    let mut replay = Replay::default();
    let mut after = 0;
    loop {
        let batch = events(conn, after, 10_000)?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for e in &batch {
            replay.apply(e);
        }
    }
    let live = live(conn)?;
    let mut changed = Vec::new();
    for (id, (_, b)) in &replay.accounts {
        if live.get(id).map(|(_, l)| l) != Some(b) {
            conn.execute(
                "UPDATE ledger_accounts SET debits_posted = ?2, credits_posted = ?3, debits_pending = ?4,
                    credits_pending = ?5, last_seq = ?6 WHERE id = ?1",
                params![
                    id,
                    b.debits_posted,
                    b.credits_posted,
                    b.debits_pending,
                    b.credits_pending,
                    replay.seq + 1
                ],
            )
            .map_err(db_err)?;
            changed.push(id.clone());
        }
    }
    let mut h = head(conn)?;
    h.digest = replay.digest();
    let mut book = Book::new(now, h, Vec::new(), Vec::new(), settings.jobs_ledger);
    book.note("ledger.repaired", serde_json::json!({ "accounts": changed, "head_seq": replay.seq }));
    // Snapshots are a cache of balances: after a repair they are taken again from scratch.
    conn.execute_batch("DELETE FROM ledger_snapshot_accounts; DELETE FROM ledger_snapshots")
        .map_err(db_err)?;
    let head_after = {
        let w = book.finish();
        for e in &w.events {
            conn.execute(
                "INSERT INTO ledger_events (seq, kind, at, data, hash) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![e.seq, e.kind, e.at, e.data, hex(&e.hash)],
            )
            .map_err(db_err)?;
        }
        w.head
    };
    conn.execute(
        "INSERT INTO ledger_head (id, seq, hash, digest) VALUES (1, ?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, digest = excluded.digest",
        params![head_after.seq, hex(&head_after.hash), hex(&head_after.digest)],
    )
    .map_err(db_err)?;
    conn.execute("UPDATE ledger_accounts SET last_seq = ?1", [head_after.seq]).map_err(db_err)?;
    snapshot(conn, now, &head_after)?;
    let _ = fx;
    let mut v = verify(conn, true)?;
    v.repaired = true;
    Ok(v)
}

/// One account.
pub fn get_account(conn: &Connection, id: &str) -> Result<Account> {
    load_account(conn, id)?.ok_or_else(|| ledger::account_not_found(id))
}

/// One transfer.
pub fn get_transfer(conn: &Connection, id: &str) -> Result<Transfer> {
    load_transfer(conn, id)?.ok_or_else(|| ledger::transfer_not_found(id))
}

/// Accounts in id order.
pub fn list_accounts(conn: &Connection, f: &AccountFilter) -> Result<Vec<Account>> {
    let mut s = conn
        .prepare_cached(&format!(
            "SELECT {ACCOUNT_COLS} FROM ledger_accounts WHERE (?1 IS NULL OR ledger = ?1) AND (?2 IS NULL OR id > ?2)
             ORDER BY id LIMIT ?3"
        ))
        .map_err(db_err)?;
    let rows = s.query_map(params![f.ledger, f.after, f.limit as i64], account_row).map_err(db_err)?;
    rows.map(|r| r.map_err(db_err).and_then(account_from)).collect()
}

/// An account's applied transfers after `after` (by seq).
pub fn statement(
    conn: &Connection,
    account: &str,
    after: Option<i64>,
    limit: usize,
) -> Result<Vec<Transfer>> {
    get_account(conn, account)?;
    let mut s = conn
        .prepare_cached(&format!(
            "SELECT {TRANSFER_COLS} FROM (
                SELECT * FROM ledger_transfers WHERE debit_account = ?1 AND seq > ?2
                UNION ALL
                SELECT * FROM ledger_transfers WHERE credit_account = ?1 AND seq > ?2
             ) ORDER BY seq LIMIT ?3"
        ))
        .map_err(db_err)?;
    let rows =
        s.query_map(params![account, after.unwrap_or(0), limit as i64], transfer_row).map_err(db_err)?;
    rows.map(|r| r.map_err(db_err).and_then(transfer_from)).collect()
}

/// Pending transfers.
pub fn pending_count(conn: &Connection) -> Result<u64> {
    conn.query_row("SELECT count(*) FROM ledger_transfers WHERE state = 'pending'", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|n| n as u64)
    .map_err(db_err)
}

/// Violations of the ledger invariants (with the chain since the last snapshot).
pub fn invariants(conn: &Connection) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (sql, what) in INVARIANTS {
        let mut s = conn.prepare(sql).map_err(db_err)?;
        let ids = s.query_map([], |r| r.get::<_, String>(0)).map_err(db_err)?;
        for id in ids {
            out.push(format!("{what}: {}", id.map_err(db_err)?));
        }
    }
    let v = verify(conn, false)?;
    for p in v.problems {
        out.push(format!(
            "ledger {}: account {:?} seq {:?}: expected {}, found {}",
            p.kind, p.account, p.seq, p.expected, p.actual
        ));
    }
    Ok(out)
}

impl SqliteStore {
    async fn ledger_ops(&self, op: &'static str, ops: Vec<Op>, atomic: bool) -> Result<Vec<Result<Applied>>> {
        let settings = self.ledger;
        self.write(op, move |c, now, fx| apply(c, now, &ops, atomic, &settings, fx)).await
    }
}

#[async_trait]
impl LedgerStore for SqliteStore {
    async fn create_accounts(&self, accounts: Vec<NewAccount>) -> Result<Vec<Account>> {
        let ops: Vec<Op> = accounts.into_iter().map(Op::CreateAccount).collect();
        let n = ops.len();
        let out = all_or_error(self.ledger_ops("ledger_accounts", ops, true).await?, n)?;
        out.into_iter().map(account_of).collect()
    }

    async fn close_account(&self, id: &str) -> Result<Account> {
        account_of(one(self.ledger_ops("ledger_accounts", vec![Op::Close(id.to_string())], true).await?))
    }

    async fn create_transfers(
        &self,
        transfers: Vec<NewTransfer>,
        atomic: bool,
    ) -> Result<Vec<Result<Transfer>>> {
        let n = transfers.len();
        let ops: Vec<Op> = transfers.into_iter().map(Op::Transfer).collect();
        let out = self.ledger_ops("ledger_transfers", ops, atomic).await?;
        let out = if atomic { all_or_error(out, n)? } else { out };
        Ok(out.into_iter().map(transfer_of).collect())
    }

    async fn post_transfer(&self, id: &str, amount: Option<i64>) -> Result<Transfer> {
        let op = Op::Post { id: id.to_string(), amount };
        transfer_of(one(self.ledger_ops("ledger_post", vec![op], false).await?))
    }

    async fn void_transfer(&self, id: &str) -> Result<Transfer> {
        let op = Op::Void { id: id.to_string() };
        transfer_of(one(self.ledger_ops("ledger_void", vec![op], false).await?))
    }

    async fn get_account(&self, id: &str) -> Result<Account> {
        let id = id.to_string();
        self.readers.read(move |c| get_account(c, &id)).await
    }

    async fn list_accounts(&self, filter: AccountFilter) -> Result<Vec<Account>> {
        self.readers.read(move |c| list_accounts(c, &filter)).await
    }

    async fn get_transfer(&self, id: &str) -> Result<Transfer> {
        let id = id.to_string();
        self.readers.read(move |c| get_transfer(c, &id)).await
    }

    async fn account_transfers(
        &self,
        account: &str,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Transfer>> {
        let account = account.to_string();
        self.readers.read(move |c| statement(c, &account, after, limit)).await
    }

    async fn ledger_events(&self, after: i64, limit: usize) -> Result<Vec<LedgerEvent>> {
        self.readers.read(move |c| events(c, after, limit)).await
    }

    async fn expire_transfers(&self, max: usize) -> Result<u64> {
        let settings = self.ledger;
        self.write("ledger_expire", move |c, now, fx| {
            let n = expire(c, now, max, &settings, fx)?;
            settle_ended(c, now, &settings, fx)?;
            Ok(n)
        })
        .await
    }

    async fn verify_ledger(&self, full: bool) -> Result<Verification> {
        self.metrics.timed("ledger_verify", self.readers.read(move |c| verify(c, full))).await
    }

    async fn repair_ledger(&self) -> Result<Verification> {
        let settings = self.ledger;
        self.write("ledger_verify", move |c, now, fx| repair(c, now, &settings, fx)).await
    }

    async fn pending_transfers(&self) -> Result<u64> {
        self.readers.read(pending_count).await
    }
}
