//! The ledger over PostgreSQL. The rules are those of the SQLite backend (`sqlite/ledger.rs`):
//! a write loads the rows its ops name into a `Book` (with the due pendings of those accounts),
//! plans every op in memory, and stores only what the book says changed, with its events, the
//! new head and, every `snapshot_every` events, a snapshot.
//!
//! What differs is how that is kept with several writers. The chain's head is one row, and
//! every ledger write locks it (`FOR UPDATE`) before it reads anything else: two writers never
//! extend the chain from the same head, balances and the events moving them commit together,
//! and once a write holds the head every row it then reads is the latest committed one.
//! Ledger writes therefore take turns across nodes; each node batches its concurrent transfer,
//! post and void calls into one transaction ([`Batcher`]) so a turn carries many of them.
//!
//! Lock order: job rows (a job command's own, or `SKIP LOCKED` when settling), then the head,
//! then the accounts the write names (`ORDER BY id FOR UPDATE`, taken only under the head, so
//! they never wait). A transaction may load twice (the expiry pass then the settling pass): its
//! second load finds the head already its own.

use super::{PgStore, RowExt, pg_err, pool_err};
use crate::AccountFilter;
use crate::LedgerStore;
use crate::effects::Effects;
use crate::ledger_rows::*;
use async_trait::async_trait;
use deadpool_postgres::{ClientWrapper as Client, Transaction};
use ferry_core::ledger::{
    self, Account, Applied, Balances, Book, Head, LedgerEvent, Needs, NewAccount, NewTransfer, Op, Payment,
    Replay, Transfer, Verification, hex,
};
use ferry_core::{Clock, Error, ErrorCode, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{GenericClient, Row};
use uuid::Uuid;

fn account_row(r: &Row) -> Result<AccountRow> {
    Ok((
        r.col(0)?,
        r.col(1)?,
        r.col(2)?,
        r.col(3)?,
        r.col(4)?,
        r.col(5)?,
        r.col(6)?,
        r.col(7)?,
        r.col(8)?,
        r.col(9)?,
        r.col(10)?,
        r.col(11)?,
    ))
}

fn transfer_row(r: &Row) -> Result<TransferRow> {
    Ok((
        r.col(0)?,
        r.col(1)?,
        r.col(2)?,
        r.col(3)?,
        r.col(4)?,
        r.col(5)?,
        r.col(6)?,
        r.col(7)?,
        r.col(8)?,
        r.col(9)?,
        r.col(10)?,
        r.col(11)?,
        r.col(12)?,
        r.col(13)?,
        r.col(14)?,
        r.col(15)?,
        r.col(16)?,
    ))
}

fn event_row(r: &Row) -> Result<EventRow> {
    Ok((r.col(0)?, r.col(1)?, r.col(2)?, r.col(3)?, r.col(4)?))
}

/// Balances from columns `i..i + 4` (debits posted, credits posted, debits pending, credits
/// pending).
fn balances(r: &Row, i: usize) -> Result<Balances> {
    Ok(Balances {
        debits_posted: r.col(i)?,
        credits_posted: r.col(i + 1)?,
        debits_pending: r.col(i + 2)?,
        credits_pending: r.col(i + 3)?,
    })
}

fn metadata_text(m: &serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::Value::Object(m.clone()).to_string()
}

/// The chain's head (unlocked).
async fn head<C: GenericClient + Sync>(c: &C) -> Result<Head> {
    let row =
        c.query_opt("SELECT seq, hash, digest FROM ledger_head WHERE id = 1", &[]).await.map_err(pg_err)?;
    let r: Option<(i64, String, String)> = match row {
        Some(r) => Some((r.col(0)?, r.col(1)?, r.col(2)?)),
        None => None,
    };
    head_from(r)
}

/// The chain's head, locked for the rest of the transaction (created at genesis if missing):
/// every ledger writer takes it first, so they extend the chain one at a time.
async fn lock_head(tx: &Transaction<'_>) -> Result<Head> {
    let select = tx
        .prepare_cached("SELECT seq, hash, digest FROM ledger_head WHERE id = 1 FOR UPDATE")
        .await
        .map_err(pg_err)?;
    let mut row = tx.query_opt(&select, &[]).await.map_err(pg_err)?;
    if row.is_none() {
        // Two first writers both insert: the second waits for the first's commit, then does
        // nothing and locks the committed row.
        let zeros = hex(&[0u8; 32]);
        tx.execute(
            "INSERT INTO ledger_head (id, seq, hash, digest) VALUES (1, 0, $1, $1) ON CONFLICT (id) DO NOTHING",
            &[&zeros],
        )
        .await
        .map_err(pg_err)?;
        row = tx.query_opt(&select, &[]).await.map_err(pg_err)?;
    }
    let r = row.ok_or_else(|| Error::internal("the ledger head row is missing after its insert"))?;
    let r: (i64, String, String) = (r.col(0)?, r.col(1)?, r.col(2)?);
    head_from(Some(r))
}

/// Due pending transfers (at most `max`), oldest due first.
async fn due(tx: &Transaction<'_>, now: i64, max: usize) -> Result<Vec<Transfer>> {
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT {TRANSFER_COLS} FROM ledger_transfers
             WHERE state = 'pending' AND expires_at IS NOT NULL AND expires_at <= $1 ORDER BY expires_at LIMIT $2"
        ))
        .await
        .map_err(pg_err)?;
    let rows = tx.query(&stmt, &[&now, &(max as i64)]).await.map_err(pg_err)?;
    rows.iter().map(|r| transfer_from(transfer_row(r)?)).collect()
}

/// Loads what `needs` names (and the accounts of the transfers it names, and the due pendings
/// of all those accounts) into a book at `now`, due pendings expired. Locks the chain's head
/// first, then the accounts (in id order): everything read is the latest committed state and
/// stays so until this transaction ends.
pub async fn load(tx: &Transaction<'_>, now: i64, needs: &Needs, settings: &LedgerSettings) -> Result<Book> {
    let head = lock_head(tx).await?;
    let mut accounts: BTreeSet<String> = needs.accounts.clone();
    let mut transfers = Vec::new();
    if !needs.transfers.is_empty() {
        let ids: Vec<&str> = needs.transfers.iter().map(String::as_str).collect();
        let stmt = tx
            .prepare_cached(&format!("SELECT {TRANSFER_COLS} FROM ledger_transfers WHERE id = ANY($1)"))
            .await
            .map_err(pg_err)?;
        for r in tx.query(&stmt, &[&ids]).await.map_err(pg_err)? {
            let t = transfer_from(transfer_row(&r)?)?;
            accounts.insert(t.debit_account.clone());
            accounts.insert(t.credit_account.clone());
            transfers.push(t);
        }
    }
    let due_of = if accounts.is_empty() {
        Vec::new()
    } else {
        // Through the per-side due indexes: only the named accounts' due pendings.
        let ids: Vec<&str> = accounts.iter().map(String::as_str).collect();
        let stmt = tx
            .prepare_cached(&format!(
                "SELECT {TRANSFER_COLS} FROM ledger_transfers
                 WHERE debit_account = ANY($1) AND state = 'pending' AND expires_at IS NOT NULL AND expires_at <= $2
                 UNION
                 SELECT {TRANSFER_COLS} FROM ledger_transfers
                 WHERE credit_account = ANY($1) AND state = 'pending' AND expires_at IS NOT NULL AND expires_at <= $2"
            ))
            .await
            .map_err(pg_err)?;
        let rows = tx.query(&stmt, &[&ids, &now]).await.map_err(pg_err)?;
        rows.iter().map(|r| transfer_from(transfer_row(r)?)).collect::<Result<Vec<_>>>()?
    };
    for t in due_of {
        if !transfers.iter().any(|x: &Transfer| x.id == t.id) {
            accounts.insert(t.debit_account.clone());
            accounts.insert(t.credit_account.clone());
            transfers.push(t);
        }
    }
    let mut loaded = Vec::with_capacity(accounts.len());
    if !accounts.is_empty() {
        let ids: Vec<&str> = accounts.iter().map(String::as_str).collect();
        let stmt = tx
            .prepare_cached(&format!(
                "SELECT {ACCOUNT_COLS} FROM ledger_accounts WHERE id = ANY($1) ORDER BY id FOR UPDATE"
            ))
            .await
            .map_err(pg_err)?;
        for r in tx.query(&stmt, &[&ids]).await.map_err(pg_err)? {
            loaded.push(account_from(account_row(&r)?)?);
        }
    }
    let mut book = Book::new(now, head, loaded, transfers, settings.jobs_ledger);
    book.expire_due();
    Ok(book)
}

/// Stores what `book` changed: rows, events (with their copies for `/v1/events`), the head
/// and a snapshot when one is due. Each kind of row goes in with one statement (`unnest`), so
/// a batch of a thousand transfers is a handful of round trips.
pub async fn store(
    tx: &Transaction<'_>,
    book: Book,
    settings: &LedgerSettings,
    fx: &mut Effects,
) -> Result<()> {
    let out = book.finish();
    if out.events.is_empty() && out.transfers.is_empty() {
        return Ok(());
    }
    // The head the book was loaded at: its first event follows it.
    let before = out.events.first().map_or(out.head.seq, |e| e.seq - 1);
    insert_accounts(tx, &out.inserted).await?;
    update_accounts(tx, &out.updated).await?;
    let inserted: Vec<&Transfer> = out.transfers.iter().filter(|t| t.insert).map(|t| &t.transfer).collect();
    let updated: Vec<&Transfer> = out.transfers.iter().filter(|t| !t.insert).map(|t| &t.transfer).collect();
    insert_transfers(tx, &inserted).await?;
    update_transfers(tx, &updated).await?;
    insert_events(tx, &out.events).await?;
    fx.events.extend(out.copies);
    if !out.events.is_empty() {
        write_head(tx, &out.head).await?;
        if snapshot_due(before, out.head.seq, settings.snapshot_every) {
            snapshot(tx, out.events.last().map_or(0, |e| e.at), &out.head).await?;
        }
    }
    Ok(())
}

async fn insert_accounts(tx: &Transaction<'_>, accounts: &[Account]) -> Result<()> {
    if accounts.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = accounts.iter().map(|a| a.id.as_str()).collect();
    let ledgers: Vec<i64> = accounts.iter().map(|a| i64::from(a.ledger)).collect();
    let codes: Vec<i64> = accounts.iter().map(|a| i64::from(a.code)).collect();
    let flags: Vec<i64> = accounts.iter().map(|a| a.flags.bits()).collect();
    let metadata: Vec<String> = accounts.iter().map(|a| metadata_text(&a.metadata)).collect();
    let dp: Vec<i64> = accounts.iter().map(|a| a.sums.debits_posted).collect();
    let cp: Vec<i64> = accounts.iter().map(|a| a.sums.credits_posted).collect();
    let dpen: Vec<i64> = accounts.iter().map(|a| a.sums.debits_pending).collect();
    let cpen: Vec<i64> = accounts.iter().map(|a| a.sums.credits_pending).collect();
    let created: Vec<i64> = accounts.iter().map(|a| a.created_at.0).collect();
    let closed: Vec<Option<i64>> = accounts.iter().map(|a| a.closed_at.map(|t| t.0)).collect();
    let last: Vec<i64> = accounts.iter().map(|a| a.last_seq).collect();
    let stmt = tx
        .prepare_cached(&format!(
            "INSERT INTO ledger_accounts ({ACCOUNT_COLS})
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::text[], $6::bigint[],
                $7::bigint[], $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[])"
        ))
        .await
        .map_err(pg_err)?;
    tx.execute(
        &stmt,
        &[&ids, &ledgers, &codes, &flags, &metadata, &dp, &cp, &dpen, &cpen, &created, &closed, &last],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

async fn update_accounts(tx: &Transaction<'_>, accounts: &[Account]) -> Result<()> {
    if accounts.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = accounts.iter().map(|a| a.id.as_str()).collect();
    let flags: Vec<i64> = accounts.iter().map(|a| a.flags.bits()).collect();
    let dp: Vec<i64> = accounts.iter().map(|a| a.sums.debits_posted).collect();
    let cp: Vec<i64> = accounts.iter().map(|a| a.sums.credits_posted).collect();
    let dpen: Vec<i64> = accounts.iter().map(|a| a.sums.debits_pending).collect();
    let cpen: Vec<i64> = accounts.iter().map(|a| a.sums.credits_pending).collect();
    let closed: Vec<Option<i64>> = accounts.iter().map(|a| a.closed_at.map(|t| t.0)).collect();
    let last: Vec<i64> = accounts.iter().map(|a| a.last_seq).collect();
    let stmt = tx
        .prepare_cached(
            "UPDATE ledger_accounts a SET flags = x.flags, debits_posted = x.dp, credits_posted = x.cp,
                debits_pending = x.dpen, credits_pending = x.cpen, closed_at = x.closed_at, last_seq = x.last_seq
             FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[],
                $7::bigint[], $8::bigint[]) AS x(id, flags, dp, cp, dpen, cpen, closed_at, last_seq)
             WHERE a.id = x.id",
        )
        .await
        .map_err(pg_err)?;
    tx.execute(&stmt, &[&ids, &flags, &dp, &cp, &dpen, &cpen, &closed, &last]).await.map_err(pg_err)?;
    Ok(())
}

async fn insert_transfers(tx: &Transaction<'_>, transfers: &[&Transfer]) -> Result<()> {
    if transfers.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = transfers.iter().map(|t| t.id.as_str()).collect();
    let debits: Vec<&str> = transfers.iter().map(|t| t.debit_account.as_str()).collect();
    let credits: Vec<&str> = transfers.iter().map(|t| t.credit_account.as_str()).collect();
    let ledgers: Vec<i64> = transfers.iter().map(|t| i64::from(t.ledger)).collect();
    let amounts: Vec<i64> = transfers.iter().map(|t| t.amount).collect();
    let codes: Vec<i64> = transfers.iter().map(|t| i64::from(t.code)).collect();
    let metadata: Vec<String> = transfers.iter().map(|t| metadata_text(&t.metadata)).collect();
    let pending: Vec<i64> = transfers.iter().map(|t| i64::from(t.pending)).collect();
    let timeouts: Vec<Option<i64>> = transfers.iter().map(|t| t.timeout_ms).collect();
    let states: Vec<&str> = transfers.iter().map(|t| t.state.as_str()).collect();
    let reasons: Vec<Option<&str>> = transfers.iter().map(|t| t.reason.map(|r| r.as_str())).collect();
    let posted: Vec<Option<i64>> = transfers.iter().map(|t| t.posted_amount).collect();
    let expires: Vec<Option<i64>> = transfers.iter().map(|t| t.expires_at.map(|e| e.0)).collect();
    let jobs: Vec<Option<String>> = transfers.iter().map(|t| t.job_id.map(|j| j.to_string())).collect();
    let seqs: Vec<Option<i64>> = transfers.iter().map(|t| t.seq).collect();
    let created: Vec<i64> = transfers.iter().map(|t| t.created_at.0).collect();
    let settled: Vec<Option<i64>> = transfers.iter().map(|t| t.settled_at.map(|e| e.0)).collect();
    let stmt = tx
        .prepare_cached(&format!(
            "INSERT INTO ledger_transfers ({TRANSFER_COLS})
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[],
                $7::text[], $8::bigint[], $9::bigint[], $10::text[], $11::text[], $12::bigint[], $13::bigint[],
                $14::text[], $15::bigint[], $16::bigint[], $17::bigint[])"
        ))
        .await
        .map_err(pg_err)?;
    tx.execute(
        &stmt,
        &[
            &ids, &debits, &credits, &ledgers, &amounts, &codes, &metadata, &pending, &timeouts, &states,
            &reasons, &posted, &expires, &jobs, &seqs, &created, &settled,
        ],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

async fn update_transfers(tx: &Transaction<'_>, transfers: &[&Transfer]) -> Result<()> {
    if transfers.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = transfers.iter().map(|t| t.id.as_str()).collect();
    let states: Vec<&str> = transfers.iter().map(|t| t.state.as_str()).collect();
    let posted: Vec<Option<i64>> = transfers.iter().map(|t| t.posted_amount).collect();
    let settled: Vec<Option<i64>> = transfers.iter().map(|t| t.settled_at.map(|e| e.0)).collect();
    let stmt = tx
        .prepare_cached(
            "UPDATE ledger_transfers t SET state = x.state, posted_amount = x.posted_amount, settled_at = x.settled_at
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS x(id, state, posted_amount, settled_at)
             WHERE t.id = x.id",
        )
        .await
        .map_err(pg_err)?;
    tx.execute(&stmt, &[&ids, &states, &posted, &settled]).await.map_err(pg_err)?;
    Ok(())
}

async fn insert_events(tx: &Transaction<'_>, events: &[LedgerEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
    let ats: Vec<i64> = events.iter().map(|e| e.at).collect();
    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    let hashes: Vec<String> = events.iter().map(|e| hex(&e.hash)).collect();
    let stmt = tx
        .prepare_cached(
            "INSERT INTO ledger_events (seq, kind, at, data, hash)
             SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::text[])",
        )
        .await
        .map_err(pg_err)?;
    tx.execute(&stmt, &[&seqs, &kinds, &ats, &data, &hashes]).await.map_err(pg_err)?;
    Ok(())
}

async fn write_head(tx: &Transaction<'_>, head: &Head) -> Result<()> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO ledger_head (id, seq, hash, digest) VALUES (1, $1, $2, $3)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, digest = excluded.digest",
        )
        .await
        .map_err(pg_err)?;
    tx.execute(&stmt, &[&head.seq, &hex(&head.hash), &hex(&head.digest)]).await.map_err(pg_err)?;
    Ok(())
}

/// Stores a snapshot at `head`: the accounts changed since the last one, per-ledger totals
/// and the digest of all balances.
async fn snapshot(tx: &Transaction<'_>, at: i64, head: &Head) -> Result<()> {
    let last: i64 = tx
        .query_one("SELECT coalesce(max(seq), 0)::bigint FROM ledger_snapshots", &[])
        .await
        .map_err(pg_err)?
        .col(0)?;
    tx.execute(
        "INSERT INTO ledger_snapshot_accounts (account_id, snapshot_seq, ledger, debits_posted, credits_posted,
            debits_pending, credits_pending)
         SELECT id, $1::bigint, ledger, debits_posted, credits_posted, debits_pending, credits_pending
         FROM ledger_accounts WHERE last_seq > $2",
        &[&head.seq, &last],
    )
    .await
    .map_err(pg_err)?;
    let totals = totals(tx).await?;
    tx.execute(
        "INSERT INTO ledger_snapshots (seq, at, hash, digest, totals) VALUES ($1, $2, $3, $4, $5)",
        &[&head.seq, &at, &hex(&head.hash), &hex(&head.digest), &totals],
    )
    .await
    .map_err(pg_err)?;
    Ok(())
}

async fn totals(tx: &Transaction<'_>) -> Result<String> {
    // `sum` of BIGINT is NUMERIC in PostgreSQL (a total may pass 2^63): read as text, and
    // written as a number when it fits, as SQLite's totals are.
    let rows = tx
        .query(
            "SELECT ledger, sum(debits_posted)::text, sum(credits_posted)::text, sum(debits_pending)::text,
                sum(credits_pending)::text
             FROM ledger_accounts GROUP BY ledger ORDER BY ledger",
            &[],
        )
        .await
        .map_err(pg_err)?;
    let num = |t: String| t.parse::<i64>().map_or(serde_json::Value::String(t), serde_json::Value::from);
    let mut v = Vec::with_capacity(rows.len());
    for r in &rows {
        v.push(serde_json::json!({
            "ledger": r.col::<i64>(0)?, "debits_posted": num(r.col::<String>(1)?),
            "credits_posted": num(r.col::<String>(2)?), "debits_pending": num(r.col::<String>(3)?),
            "credits_pending": num(r.col::<String>(4)?),
        }));
    }
    Ok(serde_json::Value::Array(v).to_string())
}

/// Applies `ops` to `book`: atomic (all or nothing: one error, the book as before) or each on
/// its own (refusals remembered).
fn apply_to(book: &mut Book, ops: &[Op], atomic: bool) -> Vec<Result<Applied>> {
    if atomic {
        match book.apply_atomic(ops) {
            Ok(v) => v.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        }
    } else {
        ops.iter().map(|op| book.apply(op, true)).collect()
    }
}

/// Runs `ops` against the stored rows: atomic (all or nothing, nothing stored on error) or
/// each on its own (refusals remembered).
pub async fn apply(
    tx: &Transaction<'_>,
    now: i64,
    ops: &[Op],
    atomic: bool,
    settings: &LedgerSettings,
    fx: &mut Effects,
) -> Result<Vec<Result<Applied>>> {
    let mut book = load(tx, now, &Needs::of(ops), settings).await?;
    let out = apply_to(&mut book, ops, atomic);
    store(tx, book, settings, fx).await?;
    Ok(out)
}

/// Places the holds of newly enqueued paid jobs, all or nothing: the error of the first
/// refused one (with `details.index`, and `payment.from` for an unknown account). Nothing is
/// stored unless all pass (and an error rolls the caller's transaction back).
pub async fn hold_jobs(
    tx: &Transaction<'_>,
    now: i64,
    holds: &[(usize, Uuid, Payment)],
    settings: &LedgerSettings,
    fx: &mut Effects,
) -> Result<()> {
    if holds.is_empty() {
        return Ok(());
    }
    let ops: Vec<Op> = holds.iter().map(|(_, id, p)| Op::Transfer(hold_transfer(*id, p))).collect();
    let mut book = load(tx, now, &Needs::of(&ops), settings).await?;
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
    store(tx, book, settings, fx).await
}

/// A book holding what the holds of `jobs` need (none when no job is paid).
pub async fn holds_book<'a>(
    tx: &Transaction<'_>,
    now: i64,
    jobs: impl Iterator<Item = (Uuid, &'a Payment)> + Send,
    settings: &LedgerSettings,
) -> Result<Option<Book>> {
    let ops: Vec<Op> = jobs.map(|(id, p)| Op::Transfer(hold_transfer(id, p))).collect();
    if ops.is_empty() {
        return Ok(None);
    }
    load(tx, now, &Needs::of(&ops), settings).await.map(Some)
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

/// Settles the holds of paid jobs that reached an end: completed ones post the hold and pay
/// `worker:<name>`, dead or cancelled ones void it. Job rows other transactions hold are
/// skipped (they settle in their own transaction, or in a later backstop pass).
pub async fn settle_ended(
    tx: &Transaction<'_>,
    now: i64,
    settings: &LedgerSettings,
    fx: &mut Effects,
) -> Result<u64> {
    let stmt = tx
        .prepare_cached(
            "SELECT seq, id, state, worker, payment FROM jobs
             WHERE hold_open = 1 AND state IN ('completed', 'dead', 'cancelled') LIMIT 1000 FOR UPDATE SKIP LOCKED",
        )
        .await
        .map_err(pg_err)?;
    let rows = tx.query(&stmt, &[]).await.map_err(pg_err)?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut seqs: Vec<i64> = Vec::with_capacity(rows.len());
    let mut ops = Vec::new();
    for r in &rows {
        let seq: i64 = r.col(0)?;
        let id: Uuid = r.col(1)?;
        let state: String = r.col(2)?;
        let worker: Option<String> = r.col(3)?;
        let payment: String = r.col(4)?;
        let p = payment_from(&payment)?;
        match (state.as_str(), &worker) {
            ("completed", Some(w)) => {
                ops.push(Op::Post { id: p.hold.clone(), amount: None });
                ops.push(Op::Transfer(pay_transfer(id, &p, w)));
            }
            _ => ops.push(Op::Void { id: p.hold.clone() }),
        }
        seqs.push(seq);
    }
    let mut book = load(tx, now, &Needs::of(&ops), settings).await?;
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
    store(tx, book, settings, fx).await?;
    let done =
        tx.prepare_cached("UPDATE jobs SET hold_open = 0 WHERE seq = ANY($1)").await.map_err(pg_err)?;
    tx.execute(&done, &[&seqs]).await.map_err(pg_err)?;
    Ok(seqs.len() as u64)
}

/// Expires up to `max` due pending transfers.
pub async fn expire(
    tx: &Transaction<'_>,
    now: i64,
    max: usize,
    settings: &LedgerSettings,
    fx: &mut Effects,
) -> Result<u64> {
    // Read before the head is locked: `load` reads them again under it, so one another node
    // expired meanwhile is neither loaded nor counted.
    let due = due(tx, now, max).await?;
    if due.is_empty() {
        return Ok(0);
    }
    let mut needs = Needs::default();
    for t in &due {
        needs.accounts.insert(t.debit_account.clone());
        needs.accounts.insert(t.credit_account.clone());
    }
    let book = load(tx, now, &needs, settings).await?;
    let n = book.events().iter().filter(|e| e.kind == "transfer.expired").count();
    store(tx, book, settings, fx).await?;
    Ok(n as u64)
}

/// Live balances of every account.
async fn live<C: GenericClient + Sync>(c: &C) -> Result<Live> {
    let rows = c
        .query(
            "SELECT id, ledger, debits_posted, credits_posted, debits_pending, credits_pending FROM ledger_accounts",
            &[],
        )
        .await
        .map_err(pg_err)?;
    let mut out = Live::new();
    for r in &rows {
        let id: String = r.col(0)?;
        let ledger: i64 = r.col(1)?;
        out.insert(id, (ledger as u32, balances(r, 2)?));
    }
    Ok(out)
}

/// Snapshots: (seq, hash, digest), oldest first.
async fn snapshots<C: GenericClient + Sync>(c: &C) -> Result<Vec<(i64, String, String)>> {
    let rows =
        c.query("SELECT seq, hash, digest FROM ledger_snapshots ORDER BY seq", &[]).await.map_err(pg_err)?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        out.push((r.col::<i64>(0)?, r.col::<String>(1)?, r.col::<String>(2)?));
    }
    Ok(out)
}

/// The balances as of snapshot `seq`: each account's newest snapshot row at or before it.
async fn snapshot_state<C: GenericClient + Sync>(
    c: &C,
    seq: i64,
) -> Result<BTreeMap<String, (u32, Balances)>> {
    let rows = c
        .query(
            "SELECT DISTINCT ON (account_id) account_id, ledger, debits_posted, credits_posted, debits_pending,
                credits_pending
             FROM ledger_snapshot_accounts WHERE snapshot_seq <= $1
             ORDER BY account_id, snapshot_seq DESC",
            &[&seq],
        )
        .await
        .map_err(pg_err)?;
    let mut out = BTreeMap::new();
    for r in &rows {
        let id: String = r.col(0)?;
        let ledger: i64 = r.col(1)?;
        out.insert(id, (ledger as u32, balances(r, 2)?));
    }
    Ok(out)
}

/// Events after `after`, at most `limit`.
async fn events<C: GenericClient + Sync>(c: &C, after: i64, limit: usize) -> Result<Vec<LedgerEvent>> {
    let sql = format!("SELECT {EVENT_COLS} FROM ledger_events WHERE seq > $1 ORDER BY seq LIMIT $2");
    let rows = c.query(sql.as_str(), &[&after, &(limit as i64)]).await.map_err(pg_err)?;
    rows.iter().map(|r| event_from(event_row(r)?)).collect()
}

/// Replays the chain (from genesis with `full`, else from the last snapshot) and compares.
/// Its reads must see one state: call it in a repeatable-read transaction, or holding the
/// head.
async fn verify<C: GenericClient + Sync>(c: &C, full: bool) -> Result<Verification> {
    let snaps = snapshots(c).await?;
    let mut replay = match (full, snaps.last()) {
        (false, Some((seq, hash, digest))) => {
            let state = snapshot_state(c, *seq).await?;
            let mut r = Replay::from(*seq, ledger::unhex(hash).unwrap_or([0; 32]), state);
            r.check_snapshot(*seq, &ledger::unhex(digest).unwrap_or([0; 32]));
            r
        }
        _ => Replay::default(),
    };
    // Snapshots still ahead of the replay, oldest first (plain data: no borrow across awaits).
    let ahead: Vec<(i64, [u8; 32])> = snaps
        .iter()
        .filter(|s| s.0 > replay.seq)
        .map(|s| (s.0, ledger::unhex(&s.2).unwrap_or([0; 32])))
        .collect();
    let mut next = 0;
    let mut n = 0i64;
    loop {
        let batch = events(c, replay.seq, 10_000).await?;
        if batch.is_empty() {
            break;
        }
        for e in &batch {
            replay.apply(e);
            n += 1;
            while next < ahead.len() && ahead[next].0 <= replay.seq {
                if ahead[next].0 == replay.seq {
                    replay.check_snapshot(ahead[next].0, &ahead[next].1);
                }
                next += 1;
            }
        }
    }
    replay.compare(&live(c).await?);
    let h = head(c).await?;
    Ok(verification(replay, h, n))
}

/// Rewrites the balances from a full replay of an intact chain; appends `ledger.repaired`.
/// Holds the head throughout, so no ledger write runs meanwhile on any node.
pub async fn repair(
    tx: &Transaction<'_>,
    now: i64,
    settings: &LedgerSettings,
    fx: &mut Effects,
) -> Result<Verification> {
    let locked = lock_head(tx).await?;
    let c: &tokio_postgres::Transaction<'_> = tx;
    let v = verify(c, true).await?;
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
        let batch = events(c, after, 10_000).await?;
        let Some(last) = batch.last() else { break };
        after = last.seq;
        for e in &batch {
            replay.apply(e);
        }
    }
    let live = live(c).await?;
    let mut changed = Vec::new();
    let (mut dp, mut cp, mut dpen, mut cpen) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, (_, b)) in &replay.accounts {
        if live.get(id).map(|(_, l)| l) != Some(b) {
            changed.push(id.clone());
            dp.push(b.debits_posted);
            cp.push(b.credits_posted);
            dpen.push(b.debits_pending);
            cpen.push(b.credits_pending);
        }
    }
    if !changed.is_empty() {
        tx.execute(
            "UPDATE ledger_accounts a SET debits_posted = x.dp, credits_posted = x.cp, debits_pending = x.dpen,
                credits_pending = x.cpen, last_seq = $6
             FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[]) AS x(id, dp, cp, dpen, cpen)
             WHERE a.id = x.id",
            &[&changed, &dp, &cp, &dpen, &cpen, &(replay.seq + 1)],
        )
        .await
        .map_err(pg_err)?;
    }
    let mut h = locked;
    h.digest = replay.digest();
    let mut book = Book::new(now, h, Vec::new(), Vec::new(), settings.jobs_ledger);
    book.note("ledger.repaired", serde_json::json!({ "accounts": changed, "head_seq": replay.seq }));
    // Snapshots are a cache of balances: after a repair they are taken again from scratch.
    tx.batch_execute("DELETE FROM ledger_snapshot_accounts; DELETE FROM ledger_snapshots")
        .await
        .map_err(pg_err)?;
    let written = book.finish();
    insert_events(tx, &written.events).await?;
    let head_after = written.head;
    write_head(tx, &head_after).await?;
    tx.execute("UPDATE ledger_accounts SET last_seq = $1", &[&head_after.seq]).await.map_err(pg_err)?;
    snapshot(tx, now, &head_after).await?;
    let _ = fx;
    let mut v = verify(c, true).await?;
    v.repaired = true;
    Ok(v)
}

/// One account.
async fn get_account(c: &Client, id: &str) -> Result<Account> {
    let stmt = c
        .prepare_cached(&format!("SELECT {ACCOUNT_COLS} FROM ledger_accounts WHERE id = $1"))
        .await
        .map_err(pg_err)?;
    match c.query_opt(&stmt, &[&id]).await.map_err(pg_err)? {
        Some(r) => account_from(account_row(&r)?),
        None => Err(ledger::account_not_found(id)),
    }
}

/// One transfer.
async fn get_transfer(c: &Client, id: &str) -> Result<Transfer> {
    let stmt = c
        .prepare_cached(&format!("SELECT {TRANSFER_COLS} FROM ledger_transfers WHERE id = $1"))
        .await
        .map_err(pg_err)?;
    match c.query_opt(&stmt, &[&id]).await.map_err(pg_err)? {
        Some(r) => transfer_from(transfer_row(&r)?),
        None => Err(ledger::transfer_not_found(id)),
    }
}

/// Accounts in id order.
async fn list_accounts(c: &Client, f: &AccountFilter) -> Result<Vec<Account>> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {ACCOUNT_COLS} FROM ledger_accounts
             WHERE ($1::bigint IS NULL OR ledger = $1) AND ($2::text IS NULL OR id > $2)
             ORDER BY id LIMIT $3"
        ))
        .await
        .map_err(pg_err)?;
    let ledger: Option<i64> = f.ledger.map(i64::from);
    let rows = c.query(&stmt, &[&ledger, &f.after, &(f.limit as i64)]).await.map_err(pg_err)?;
    rows.iter().map(|r| account_from(account_row(r)?)).collect()
}

/// An account's applied transfers after `after` (by seq).
async fn statement(c: &Client, account: &str, after: Option<i64>, limit: usize) -> Result<Vec<Transfer>> {
    get_account(c, account).await?;
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {TRANSFER_COLS} FROM (
                (SELECT * FROM ledger_transfers WHERE debit_account = $1 AND seq > $2 ORDER BY seq LIMIT $3)
                UNION ALL
                (SELECT * FROM ledger_transfers WHERE credit_account = $1 AND seq > $2 ORDER BY seq LIMIT $3)
             ) t ORDER BY seq LIMIT $3"
        ))
        .await
        .map_err(pg_err)?;
    let rows = c.query(&stmt, &[&account, &after.unwrap_or(0), &(limit as i64)]).await.map_err(pg_err)?;
    rows.iter().map(|r| transfer_from(transfer_row(r)?)).collect()
}

/// Pending transfers.
async fn pending_count(c: &Client) -> Result<u64> {
    let r = c
        .query_one("SELECT count(*) FROM ledger_transfers WHERE state = 'pending'", &[])
        .await
        .map_err(pg_err)?;
    Ok(r.col::<i64>(0)? as u64)
}

/// Violations of the ledger invariants (with the chain since the last snapshot), read in one
/// repeatable-read snapshot so concurrent writes cannot pass for a broken chain.
pub async fn invariants(c: &Client) -> Result<Vec<String>> {
    c.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(pg_err)?;
    let out = check(&**c).await;
    let _ = c.batch_execute("ROLLBACK").await;
    out
}

async fn check<C: GenericClient + Sync>(c: &C) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (sql, what) in INVARIANTS {
        for r in c.query(sql, &[]).await.map_err(pg_err)? {
            let id: Option<String> = r.col(0)?;
            out.push(format!("{what}: {}", id.unwrap_or_default()));
        }
    }
    let v = verify(c, false).await?;
    for p in v.problems {
        out.push(format!(
            "ledger {}: account {:?} seq {:?}: expected {}, found {}",
            p.kind, p.account, p.seq, p.expected, p.actual
        ));
    }
    Ok(out)
}

/// Most waiting writes one batch carries.
const MAX_BATCH: usize = 256;

/// A batch stops taking waiting writes once it carries this many ops (one transaction stays
/// of a bounded size; a single write of any size still runs).
const MAX_BATCH_OPS: usize = 4096;

/// One ledger write waiting for its node's next batch.
struct Request {
    ops: Vec<Op>,
    atomic: bool,
    reply: oneshot::Sender<Result<Vec<Result<Applied>>>>,
}

/// This node's batcher of transfer, post and void writes. Ledger writes take turns across
/// nodes (each holds the chain's head), so concurrent writes on one node share one turn: a
/// task drains the waiting writes (up to `MAX_BATCH`), loads one book for all of them,
/// applies each write's ops in arrival order (an atomic one all or nothing, on its own), stores
/// once and answers each. A failed transaction answers all of them with its error. The task
/// starts with the first write and ends when the store is dropped.
#[derive(Default)]
pub struct Batcher {
    sender: std::sync::OnceLock<mpsc::UnboundedSender<Request>>,
}

/// What the batcher task needs of the store to run its transactions.
struct Runner {
    pool: deadpool_postgres::Pool,
    clock: Arc<dyn Clock>,
    metrics: Arc<crate::metrics::StoreMetrics>,
    sequence: Arc<tokio::sync::Notify>,
    settings: LedgerSettings,
}

async fn batch_loop(mut rx: mpsc::UnboundedReceiver<Request>, runner: Runner) {
    use futures_util::FutureExt;
    while let Some(first) = rx.recv().await {
        let mut ops = first.ops.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && ops < MAX_BATCH_OPS {
            match rx.try_recv() {
                Ok(r) => {
                    ops += r.ops.len();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
        // A caller that gave up before its turn is not written for.
        batch.retain(|r| !r.reply.is_closed());
        if batch.is_empty() {
            continue;
        }
        let (work, replies): (Vec<(Vec<Op>, bool)>, Vec<_>) =
            batch.into_iter().map(|r| ((r.ops, r.atomic), r.reply)).unzip();
        let answer = std::panic::AssertUnwindSafe(runner.run(&work))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Err(Error::internal("a ledger write batch panicked")));
        match answer {
            Ok(answers) => {
                for (reply, a) in replies.into_iter().zip(answers) {
                    let _ = reply.send(Ok(a));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

impl Runner {
    /// One transaction for a batch, as `PgStore::run_tx` runs one (ledger writes wake no
    /// queue and end no job: only their events are recorded).
    async fn run(&self, work: &[(Vec<Op>, bool)]) -> Result<Vec<Vec<Result<Applied>>>> {
        let asked = Instant::now();
        let mut client = self.pool.get().await.map_err(pool_err)?;
        let started = Instant::now();
        if started - asked > Duration::from_millis(1) {
            self.metrics.waited(started - asked);
        }
        let tx = client.transaction().await.map_err(pg_err)?;
        let now = self.clock.now_ms();
        let mut fx = Effects::default();
        let out = match run_batch(&tx, now, work, &self.settings, &mut fx).await {
            Ok(out) => out,
            Err(e) => {
                // Roll back before answering, as `run_tx` does.
                let _ = tx.rollback().await;
                return Err(e);
            }
        };
        tx.commit().await.map_err(pg_err)?;
        self.metrics.transaction(work.len(), started.elapsed());
        self.metrics.committed(&fx.events);
        if !fx.events.is_empty() {
            self.sequence.notify_one();
        }
        Ok(out)
    }
}

async fn run_batch(
    tx: &Transaction<'_>,
    now: i64,
    work: &[(Vec<Op>, bool)],
    settings: &LedgerSettings,
    fx: &mut Effects,
) -> Result<Vec<Vec<Result<Applied>>>> {
    let mut needs = Needs::default();
    for (ops, _) in work {
        let n = Needs::of(ops);
        needs.accounts.extend(n.accounts);
        needs.transfers.extend(n.transfers);
    }
    let mut book = load(tx, now, &needs, settings).await?;
    let out: Vec<Vec<Result<Applied>>> =
        work.iter().map(|(ops, atomic)| apply_to(&mut book, ops, *atomic)).collect();
    store(tx, book, settings, fx).await?;
    // What `PgStore::body` does after a transaction's body: its events go in with it.
    if !fx.events.is_empty() {
        let at = fx.events.last().map_or(now, |e| e.at.0);
        let stmt = tx
            .prepare_cached("INSERT INTO event_log (n, at, body) VALUES ($1, $2, $3)")
            .await
            .map_err(pg_err)?;
        tx.execute(&stmt, &[&(fx.events.len() as i32), &at, &crate::events::encode(&fx.events)])
            .await
            .map_err(pg_err)?;
    }
    Ok(out)
}

async fn wait(answer: oneshot::Receiver<Result<Vec<Result<Applied>>>>) -> Result<Vec<Result<Applied>>> {
    answer.await.unwrap_or_else(|_| {
        Err(Error::unavailable("the ledger batch carrying this write was interrupted; retry it"))
    })
}

impl PgStore {
    /// Runs `ops` in a transaction of their own.
    async fn ledger_ops(&self, op: &'static str, ops: Vec<Op>, atomic: bool) -> Result<Vec<Result<Applied>>> {
        let settings = self.ledger;
        self.tx(op, move |tx, now, fx| boxed!(apply(tx, now, &ops, atomic, &settings, fx).await)).await
    }

    /// Runs `ops` in this node's next ledger batch (timed and counted as `op` per call).
    async fn batched(&self, op: &'static str, ops: Vec<Op>, atomic: bool) -> Result<Vec<Result<Applied>>> {
        let sender = self.ledger_batch.sender.get_or_init(|| {
            let (sender, rx) = mpsc::unbounded_channel();
            let runner = Runner {
                pool: self.pool.clone(),
                clock: self.clock.clone(),
                metrics: self.metrics.clone(),
                sequence: self.sequence.clone(),
                settings: self.ledger,
            };
            tokio::spawn(batch_loop(rx, runner));
            sender
        });
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(r)) = sender.send(Request { ops, atomic, reply }) {
            // The batcher is gone: the write runs on its own.
            return self.ledger_ops(op, r.ops, r.atomic).await;
        }
        self.metrics.timed(op, wait(answer)).await
    }
}

#[async_trait]
impl LedgerStore for PgStore {
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
        let out = self.batched("ledger_transfers", ops, atomic).await?;
        let out = if atomic { all_or_error(out, n)? } else { out };
        Ok(out.into_iter().map(transfer_of).collect())
    }

    async fn post_transfer(&self, id: &str, amount: Option<i64>) -> Result<Transfer> {
        let op = Op::Post { id: id.to_string(), amount };
        transfer_of(one(self.batched("ledger_post", vec![op], false).await?))
    }

    async fn void_transfer(&self, id: &str) -> Result<Transfer> {
        let op = Op::Void { id: id.to_string() };
        transfer_of(one(self.batched("ledger_void", vec![op], false).await?))
    }

    async fn get_account(&self, id: &str) -> Result<Account> {
        let id = id.to_string();
        self.read(move |c| boxed!(get_account(c, &id).await)).await
    }

    async fn list_accounts(&self, filter: AccountFilter) -> Result<Vec<Account>> {
        self.read(move |c| boxed!(list_accounts(c, &filter).await)).await
    }

    async fn get_transfer(&self, id: &str) -> Result<Transfer> {
        let id = id.to_string();
        self.read(move |c| boxed!(get_transfer(c, &id).await)).await
    }

    async fn account_transfers(
        &self,
        account: &str,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Transfer>> {
        let account = account.to_string();
        self.read(move |c| boxed!(statement(c, &account, after, limit).await)).await
    }

    async fn ledger_events(&self, after: i64, limit: usize) -> Result<Vec<LedgerEvent>> {
        self.read(move |c| boxed!(events(&**c, after, limit).await)).await
    }

    async fn expire_transfers(&self, max: usize) -> Result<u64> {
        let settings = self.ledger;
        let paid = self.paid.clone();
        self.tx("ledger_expire", move |tx, now, fx| {
            boxed!({
                let n = expire(tx, now, max, &settings, fx).await?;
                // Another node may have enqueued the cluster's first paid job: once escrow
                // exists, this node's job commands look for holds to settle too.
                if !paid.load(Relaxed) {
                    let escrow = tx
                        .query_opt("SELECT 1 FROM ledger_accounts WHERE id = $1", &[&ledger::ESCROW])
                        .await
                        .map_err(pg_err)?;
                    if escrow.is_some() {
                        paid.store(true, Relaxed);
                    }
                }
                // The backstop: holds of jobs that ended without settling (on a node that did
                // not know of paid jobs yet, say).
                settle_ended(tx, now, &settings, fx).await?;
                Ok(n)
            })
        })
        .await
    }

    async fn verify_ledger(&self, full: bool) -> Result<Verification> {
        self.metrics
            .timed("ledger_verify", async move {
                // One snapshot for every read: a write committing between two of them would
                // otherwise pass for a broken chain.
                let mut client = self.pool.get().await.map_err(pool_err)?;
                let tx = client
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await
                    .map_err(pg_err)?;
                let v = verify(&*tx, full).await;
                let _ = tx.rollback().await;
                v
            })
            .await
    }

    async fn repair_ledger(&self) -> Result<Verification> {
        let settings = self.ledger;
        self.tx("ledger_verify", move |tx, now, fx| boxed!(repair(tx, now, &settings, fx).await)).await
    }

    async fn pending_transfers(&self) -> Result<u64> {
        self.read(|c| boxed!(pending_count(c).await)).await
    }
}
