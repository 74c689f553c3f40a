//! Ledger endpoints (`/v1/ledger`): accounts, transfers (one, atomic batches, per-item
//! batches), two-phase posts and voids, statements, the audit trail and verify; the guard that
//! refuses ledger writes while the balances disagree with their chain; the expiry and daily
//! verify passes. The rules live in `ferry_core::ledger`; the stores plan with them.

use super::page_size;
use crate::AppState;
use crate::auth::Access;
use crate::error::{ApiPath, ApiQuery, ApiResult, OptionalJson, parse_json, read_body};
use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_core::ledger::{self, Account, Reason, Transfer, Verification};
use ferry_core::wire::*;
use ferry_core::{Error, ErrorCode, Scope};
use ferry_store::AccountFilter;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

const ACCOUNT: &str = "The account's id";
const TRANSFER: &str = "The transfer's id";
const NO_ACCOUNT: &str = "not_found: no such account";
const NO_TRANSFER: &str = "not_found: no such transfer";
const REFUSED: &str =
    "unavailable: ledger writes are refused until the balances agree with their chain (`details.accounts`)";

/// Whether ledger writes are refused: set when a verify finds the balances disagreeing with
/// their chain, lifted by a repair or a clean verify.
#[derive(Debug, Default)]
pub struct LedgerGuard {
    refused: AtomicBool,
    accounts: Mutex<Vec<String>>,
}

impl LedgerGuard {
    /// 503 `unavailable` (naming the accounts) while refused.
    pub fn check(&self) -> Result<(), Error> {
        if !self.refused.load(Ordering::Relaxed) {
            return Ok(());
        }
        let accounts = self.accounts.lock().expect("ledger guard").clone();
        Err(Error::unavailable(
            "ledger writes are refused: the balances disagree with the ledger's event chain \
             (POST /v1/ledger/verify names the problems; repair with {\"repair\": true})",
        )
        .with_details(
            json!({ "accounts": accounts, "reason": "ledger_unverified", "retry_after_ms": 5_000 }),
        ))
    }

    /// Refuses or allows writes after a verify.
    pub fn note(&self, v: &Verification) {
        let mut accounts: Vec<String> = v.problems.iter().filter_map(|p| p.account.clone()).collect();
        accounts.sort();
        accounts.dedup();
        *self.accounts.lock().expect("ledger guard") = accounts;
        self.refused.store(!v.ok, Ordering::Relaxed);
        WRITES_REFUSED.store(!v.ok, Ordering::Relaxed);
    }

    /// Whether writes are refused now.
    pub fn is_refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }
}

/// Whether some guard of this process refuses writes (the `ferry_ledger_writes_refused` gauge).
pub static WRITES_REFUSED: AtomicBool = AtomicBool::new(false);

/// Refusals by reason (`ferry_rejections_total{reason}`), in [`Reason::ALL`] order.
pub static REFUSALS: [AtomicU64; 9] = [const { AtomicU64::new(0) }; 9];

/// Counts a refusal or a conflict an answer carries.
fn count(st: &AppState, e: &Error) {
    match e.code {
        ErrorCode::InvalidState => {
            let reason = e.details.as_ref().and_then(|d| d["reason"].as_str()).and_then(Reason::parse);
            if let Some(i) = reason.and_then(|r| Reason::ALL.iter().position(|x| *x == r)) {
                REFUSALS[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        ErrorCode::Conflict => st.metrics.conflict("transfer"),
        _ => {}
    }
}

fn counted<T>(st: &AppState, r: Result<T, Error>) -> Result<T, Error> {
    if let Err(e) = &r {
        count(st, e);
    }
    r
}

fn check_id(st: &AppState, id: &str, missing: fn(&str) -> Error) -> Result<(), Error> {
    ledger::valid_id(id, st.limits.max_ledger_id_len).map_err(|_| missing(id))
}

fn status(duplicate: bool) -> StatusCode {
    if duplicate { StatusCode::OK } else { StatusCode::CREATED }
}

#[derive(Deserialize)]
struct AccountsProbe<'a> {
    #[serde(borrow, default)]
    accounts: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct TransfersProbe<'a> {
    #[serde(borrow, default)]
    transfers: Option<&'a RawValue>,
}

fn batch_len(n: usize, st: &AppState, field: &str) -> Result<(), Error> {
    if n == 0 {
        return Err(Error::invalid(field, format!("{field} needs at least one item")));
    }
    if n > st.limits.max_batch {
        return Err(Error::too_large(
            field,
            format!("{n} {field}; the batch limit is {}", st.limits.max_batch),
        ));
    }
    Ok(())
}

fn indexed(e: Error, field: &str, i: usize) -> Error {
    let e = if e.field.is_some() { e.within(&format!("{field}[{i}]")) } else { e };
    let mut d = match e.details.clone() {
        Some(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    d.insert("index".into(), json!(i));
    e.with_details(serde_json::Value::Object(d))
}

/// Create one account (`{"id", ...}`) or a batch (`{"accounts": [...]}`, all or nothing); a
/// repeat of an identical account answers it with `duplicate`.
#[utoipa::path(post, path = "/v1/ledger/accounts", tag = "ledger", operation_id = "create_account",
    request_body = AccountsRequest,
    responses((status = 201, description = "created: the account, or `{\"accounts\"}` for a batch", body = AccountsCreated),
    (status = 200, description = "an identical repeat (`duplicate`)", body = Account),
    (status = 409, description = "conflict: the id exists with other fields (`details.fields`)", body = ErrorBody),
    (status = 422, description = "validation_failed: a field is invalid (named)", body = ErrorBody),
    (status = 503, description = REFUSED, body = ErrorBody)))]
pub async fn create_accounts(State(st): State<AppState>, req: Request) -> ApiResult<Response> {
    let bytes = read_body(req, st.limits.max_request_bytes).await?;
    let Obj(probe): Obj<AccountsProbe> = parse_json(&bytes, "")?;
    st.ledger_guard.check()?;
    if probe.accounts.is_some() {
        let Obj(body): Obj<AccountsBody> = parse_json(&bytes, "")?;
        batch_len(body.accounts.len(), &st, "accounts")?;
        let accounts = body
            .accounts
            .into_iter()
            .enumerate()
            .map(|(i, a)| a.validate(&st.limits).map_err(|e| indexed(e, "accounts", i)))
            .collect::<Result<Vec<_>, _>>()?;
        let _permit = st.protection.writes(accounts.len())?;
        let out = counted(&st, st.store.create_accounts(accounts).await)?;
        return Ok((StatusCode::CREATED, Json(AccountsResponse { accounts: out })).into_response());
    }
    let Obj(body): Obj<AccountBody> = parse_json(&bytes, "")?;
    let account = body.validate(&st.limits)?;
    let _permit = st.protection.writes(1)?;
    let mut out = counted(&st, st.store.create_accounts(vec![account]).await)?;
    let a = out.remove(0);
    Ok((status(a.duplicate), Json(a)).into_response())
}

/// Close an account: no new transfers; its pending ones still post or void.
#[utoipa::path(post, path = "/v1/ledger/accounts/{id}/close", tag = "ledger", operation_id = "close_account",
    params(("id" = LedgerId, Path, description = ACCOUNT)),
    responses((status = 200, description = "the account (`duplicate` when already closed)", body = Account),
    (status = 404, description = NO_ACCOUNT, body = ErrorBody),
    (status = 503, description = REFUSED, body = ErrorBody)))]
pub async fn close_account(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Account>> {
    check_id(&st, &id, ledger::account_not_found)?;
    st.ledger_guard.check()?;
    let _permit = st.protection.writes(1)?;
    Ok(Json(st.store.close_account(&id).await?))
}

/// One account with its balances.
#[utoipa::path(get, path = "/v1/ledger/accounts/{id}", tag = "ledger", operation_id = "get_account",
    params(("id" = LedgerId, Path, description = ACCOUNT)),
    responses((status = 200, description = "the account", body = Account),
    (status = 404, description = NO_ACCOUNT, body = ErrorBody)))]
pub async fn get_account(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Account>> {
    check_id(&st, &id, ledger::account_not_found)?;
    Ok(Json(st.store.get_account(&id).await?))
}

/// Accounts in id order, optionally of one ledger.
#[utoipa::path(get, path = "/v1/ledger/accounts", tag = "ledger", operation_id = "list_accounts",
    params(AccountListQuery),
    responses((status = 200, description = "a page of accounts", body = AccountsPage)))]
pub async fn list_accounts(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<AccountListQuery>,
) -> ApiResult<Json<AccountsPage>> {
    let limit = page_size(&st, q.limit)?;
    let ledger = match q.ledger {
        None => None,
        Some(l) => Some(
            u32::try_from(l)
                .ok()
                .filter(|l| *l >= 1)
                .ok_or_else(|| Error::invalid("ledger", "ledger must be 1..=4294967295"))?,
        ),
    };
    let after = q.cursor.filter(|c| !c.is_empty());
    if let Some(c) = &after {
        ledger::valid_id(c, st.limits.max_ledger_id_len)
            .map_err(|_| Error::invalid("cursor", "not a cursor returned by this server"))?;
    }
    let accounts = st.store.list_accounts(AccountFilter { ledger, after, limit }).await?;
    let next_cursor = (accounts.len() == limit).then(|| accounts.last().map(|a| a.id.clone())).flatten();
    Ok(Json(AccountsPage { accounts, next_cursor }))
}

/// Create one transfer, or a batch: `atomic` (default) all or nothing, else each on its own.
#[utoipa::path(post, path = "/v1/ledger/transfers", tag = "ledger", operation_id = "create_transfer",
    request_body = TransfersRequest,
    responses((status = 201, description = "applied: the transfer, or `{\"transfers\"}` for an atomic batch", body = TransfersCreated),
    (status = 200, description = "an identical repeat (`duplicate`), or `{\"results\"}` of a non-atomic batch", body = TransfersAnswered),
    (status = 404, description = "not_found: an account does not exist (not remembered)", body = ErrorBody),
    (status = 409, description = "invalid_state: refused (`details.reason`, remembered), or conflict: the id exists with other fields (`details.fields`)", body = ErrorBody),
    (status = 422, description = "validation_failed: a field is invalid (named)", body = ErrorBody),
    (status = 503, description = REFUSED, body = ErrorBody)))]
pub async fn create_transfers(State(st): State<AppState>, req: Request) -> ApiResult<Response> {
    let bytes = read_body(req, st.limits.max_request_bytes).await?;
    let Obj(probe): Obj<TransfersProbe> = parse_json(&bytes, "")?;
    st.ledger_guard.check()?;
    if probe.transfers.is_none() {
        let Obj(body): Obj<TransferBody> = parse_json(&bytes, "")?;
        let t = body.validate(&st.limits)?;
        let _permit = st.protection.writes(1)?;
        let mut out = st.store.create_transfers(vec![t], false).await?;
        let t = counted(&st, out.remove(0))?;
        return Ok((status(t.duplicate), Json(t)).into_response());
    }
    let Obj(body): Obj<TransfersBody> = parse_json(&bytes, "")?;
    batch_len(body.transfers.len(), &st, "transfers")?;
    if body.atomic.unwrap_or(true) {
        let transfers = body
            .transfers
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.validate(&st.limits).map_err(|e| indexed(e, "transfers", i)))
            .collect::<Result<Vec<_>, _>>()?;
        let _permit = st.protection.writes(transfers.len())?;
        let out = st.store.create_transfers(transfers, true).await;
        let out = counted(&st, out)?;
        let transfers = out.into_iter().collect::<Result<Vec<_>, _>>()?;
        return Ok((StatusCode::CREATED, Json(TransfersResponse { transfers })).into_response());
    }
    // Each on its own: an invalid item is answered in place, the valid ones are written.
    let ids: Vec<String> = body.transfers.iter().map(|t| t.id.clone()).collect();
    let mut results: Vec<Option<TransferResult>> = vec![None; ids.len()];
    let mut valid = Vec::new();
    let mut at = Vec::new();
    for (i, t) in body.transfers.into_iter().enumerate() {
        match t.validate(&st.limits) {
            Ok(t) => {
                valid.push(t);
                at.push(i);
            }
            Err(e) => results[i] = Some(failed(&ids[i], e)),
        }
    }
    if !valid.is_empty() {
        let _permit = st.protection.writes(valid.len())?;
        let out = st.store.create_transfers(valid, false).await?;
        for (i, r) in at.into_iter().zip(out) {
            results[i] = Some(match r {
                Ok(t) => TransferResult {
                    id: t.id.clone(),
                    ok: true,
                    duplicate: t.duplicate,
                    transfer: Some(t),
                    error: None,
                },
                Err(e) => {
                    count(&st, &e);
                    failed(&ids[i], e)
                }
            });
        }
    }
    let results = results.into_iter().map(|r| r.expect("every item is answered")).collect();
    Ok((StatusCode::OK, Json(TransferResults { results })).into_response())
}

fn failed(id: &str, e: Error) -> TransferResult {
    TransferResult { id: id.to_string(), ok: false, duplicate: false, transfer: None, error: Some(e) }
}

/// Post a pending transfer: all of it, or `amount` (the rest is released).
#[utoipa::path(post, path = "/v1/ledger/transfers/{id}/post", tag = "ledger", operation_id = "post_transfer",
    params(("id" = LedgerId, Path, description = TRANSFER)), request_body = Option<PostBody>,
    responses((status = 200, description = "the transfer (`duplicate` on a repeat)", body = Transfer),
    (status = 404, description = NO_TRANSFER, body = ErrorBody),
    (status = 409, description = "invalid_state: not pending (`details.reason`)", body = ErrorBody),
    (status = 422, description = "validation_failed: `amount` is more than held", body = ErrorBody),
    (status = 503, description = REFUSED, body = ErrorBody)))]
pub async fn post_transfer(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<PostBody>,
) -> ApiResult<Json<Transfer>> {
    check_id(&st, &id, ledger::transfer_not_found)?;
    let amount = body.validate()?;
    st.ledger_guard.check()?;
    let _permit = st.protection.writes(1)?;
    Ok(Json(counted(&st, st.store.post_transfer(&id, amount).await)?))
}

/// Void a pending transfer: its hold is released.
#[utoipa::path(post, path = "/v1/ledger/transfers/{id}/void", tag = "ledger", operation_id = "void_transfer",
    params(("id" = LedgerId, Path, description = TRANSFER)),
    responses((status = 200, description = "the transfer (`duplicate` on a repeat)", body = Transfer),
    (status = 404, description = NO_TRANSFER, body = ErrorBody),
    (status = 409, description = "invalid_state: not pending (`details.reason`)", body = ErrorBody),
    (status = 503, description = REFUSED, body = ErrorBody)))]
pub async fn void_transfer(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Transfer>> {
    check_id(&st, &id, ledger::transfer_not_found)?;
    st.ledger_guard.check()?;
    let _permit = st.protection.writes(1)?;
    Ok(Json(counted(&st, st.store.void_transfer(&id).await)?))
}

/// One transfer (a refused one too, with its `reason`).
#[utoipa::path(get, path = "/v1/ledger/transfers/{id}", tag = "ledger", operation_id = "get_transfer",
    params(("id" = LedgerId, Path, description = TRANSFER)),
    responses((status = 200, description = "the transfer", body = Transfer),
    (status = 404, description = NO_TRANSFER, body = ErrorBody)))]
pub async fn get_transfer(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Transfer>> {
    check_id(&st, &id, ledger::transfer_not_found)?;
    Ok(Json(st.store.get_transfer(&id).await?))
}

fn seq_cursor(c: Option<String>) -> Result<Option<i64>, Error> {
    match c.filter(|c| !c.is_empty()) {
        None => Ok(None),
        Some(c) => c
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(Some)
            .ok_or_else(|| Error::invalid("cursor", "not a cursor returned by this server")),
    }
}

/// An account's statement: the transfers it is a side of, oldest first.
#[utoipa::path(get, path = "/v1/ledger/accounts/{id}/transfers", tag = "ledger", operation_id = "account_transfers",
    params(("id" = LedgerId, Path, description = ACCOUNT), LedgerPageQuery),
    responses((status = 200, description = "a page of transfers", body = TransfersPage),
    (status = 404, description = NO_ACCOUNT, body = ErrorBody)))]
pub async fn statement(
    State(st): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<LedgerPageQuery>,
) -> ApiResult<Json<TransfersPage>> {
    check_id(&st, &id, ledger::account_not_found)?;
    let limit = page_size(&st, q.limit)?;
    let after = seq_cursor(q.cursor)?;
    let transfers = st.store.account_transfers(&id, after, limit).await?;
    let next_cursor = (transfers.len() == limit)
        .then(|| transfers.last().and_then(|t| t.seq).map(|s| s.to_string()))
        .flatten();
    Ok(Json(TransfersPage { transfers, next_cursor }))
}

/// The ledger's audit trail: every change, oldest first, each hashed over the one before.
#[utoipa::path(get, path = "/v1/ledger/events", tag = "ledger", operation_id = "ledger_events",
    params(LedgerPageQuery),
    responses((status = 200, description = "a page of ledger events", body = LedgerEventsPage)))]
pub async fn events(
    State(st): State<AppState>,
    ApiQuery(q): ApiQuery<LedgerPageQuery>,
) -> ApiResult<Json<LedgerEventsPage>> {
    let limit = page_size(&st, q.limit)?;
    let after = seq_cursor(q.cursor)?.unwrap_or(0);
    let events = st.store.ledger_events(after, limit).await?;
    let next_cursor = (events.len() == limit).then(|| events.last().map(|e| e.seq.to_string())).flatten();
    let events = events
        .into_iter()
        .map(|e| LedgerEventView {
            seq: e.seq,
            data: serde_json::from_str(&e.data).unwrap_or(serde_json::Value::String(e.data.clone())),
            kind: e.kind,
            at: ferry_core::Timestamp(e.at),
            at_ms: e.at,
            hash: ledger::hex(&e.hash),
        })
        .collect();
    Ok(Json(LedgerEventsPage { events, next_cursor }))
}

/// Replay the chain (from the last snapshot, or from the first event with `full`) and compare
/// it with the balances; `repair` (scope `admin`) rewrites them from an intact chain.
#[utoipa::path(post, path = "/v1/ledger/verify", tag = "ledger", operation_id = "verify_ledger",
    request_body = Option<VerifyBody>,
    responses((status = 200, description = "what the replay found", body = Verification),
    (status = 403, description = "forbidden: `repair` needs scope admin", body = ErrorBody),
    (status = 409, description = "invalid_state: the chain itself is broken; nothing to repair from", body = ErrorBody)))]
pub async fn verify(
    State(st): State<AppState>,
    access: Access,
    OptionalJson(body): OptionalJson<VerifyBody>,
) -> ApiResult<Json<Verification>> {
    if body.repair {
        if !access.has(Scope::Admin) {
            return Err(Error::new(ErrorCode::Forbidden, "repair needs a token with scope admin").into());
        }
        let v = st.store.repair_ledger().await?;
        st.ledger_guard.note(&v);
        return Ok(Json(v));
    }
    let v = st.store.verify_ledger(body.full).await?;
    if !v.ok || st.ledger_guard.is_refused() {
        st.ledger_guard.note(&v);
    }
    Ok(Json(v))
}

/// Checks the chain once at start: a disagreement refuses ledger writes (jobs go on).
pub async fn check_at_start(st: &AppState) {
    match st.store.verify_ledger(false).await {
        Ok(v) => {
            if !v.ok {
                tracing::error!(problems = v.problems.len(), accounts = ?v.problems.iter().filter_map(|p| p.account.clone()).collect::<Vec<_>>(),
                    "the ledger's balances disagree with its event chain: ledger writes are refused until repaired");
            }
            st.ledger_guard.note(&v);
        }
        Err(e) => tracing::warn!(error = %e.message, "the ledger could not be verified at start"),
    }
}

/// Expires due pending transfers (and settles paid jobs left open) every
/// `[ledger] expire_interval_ms`; a full verify every `verify_interval_ms`.
pub async fn passes(st: AppState, batch: usize, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(st.ledger.expire_interval_ms.max(1));
    let verify_every = Duration::from_millis(st.ledger.verify_interval_ms.max(1));
    let mut last_verify = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.changed() => return,
        }
        loop {
            match st.store.expire_transfers(batch.max(1)).await {
                Ok(n) if n as usize >= batch.max(1) => continue,
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e.message, "ledger expiry pass failed");
                    break;
                }
            }
        }
        if last_verify.elapsed() >= verify_every {
            last_verify = tokio::time::Instant::now();
            match st.store.verify_ledger(true).await {
                Ok(v) => {
                    if !v.ok {
                        tracing::error!(
                            problems = v.problems.len(),
                            "daily ledger verify failed: ledger writes refused"
                        );
                    }
                    st.ledger_guard.note(&v);
                }
                Err(e) => tracing::warn!(error = %e.message, "daily ledger verify failed to run"),
            }
        }
    }
}

/// The ledger routes: writes need scope `ledger`, reads `read`; ledger data is not narrowed to
/// a token's queues or agents, so restricted tokens are refused.
pub(super) fn routes(r: super::Routes) -> super::Routes {
    use crate::auth::Restriction::*;
    use utoipa_axum::routes;
    r.add(routes!(create_accounts), Scope::Ledger, Refused)
        .add(routes!(list_accounts), Scope::Read, Refused)
        .add(routes!(get_account), Scope::Read, Refused)
        .add(routes!(close_account), Scope::Ledger, Refused)
        .add(routes!(statement), Scope::Read, Refused)
        .add(routes!(create_transfers), Scope::Ledger, Refused)
        .add(routes!(get_transfer), Scope::Read, Refused)
        .add(routes!(post_transfer), Scope::Ledger, Refused)
        .add(routes!(void_transfer), Scope::Ledger, Refused)
        .add(routes!(events), Scope::Read, Refused)
        .add(routes!(verify), Scope::Ledger, Refused)
}
