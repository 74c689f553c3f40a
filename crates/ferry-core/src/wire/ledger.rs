//! Bodies of the ledger endpoints and their checks: accounts, transfers, posts and voids,
//! statements, the audit trail and verify, turned into the validated ops of [`crate::ledger`].

use crate::error::{Error, Result};
use crate::ledger::{
    Account, ESCROW, Flags, JOB_PREFIX, MAX_AMOUNT, NewAccount, NewTransfer, Payment, Transfer,
    WORKER_PREFIX, valid_id,
};
use crate::limits::Limits;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

/// An account or transfer id as the OpenAPI document names it.
#[derive(ToSchema)]
#[schema(min_length = 1, max_length = 512, pattern = r"^[A-Za-z0-9._:%-]+$")]
pub struct LedgerId(pub String);

/// `POST /v1/ledger/accounts` body for one account (also each of `{"accounts": [...]}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountBody {
    /// The account's id: 1–`limits.max_ledger_id_len` bytes of `[A-Za-z0-9._:%-]`; not
    /// `escrow` nor `worker:...` (ferry's).
    #[schema(value_type = LedgerId)]
    pub id: String,
    /// Its ledger, 1..=4294967295; default 1.
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1, maximum = 4_294_967_295_i64)]
    pub ledger: Option<i64>,
    /// A user code, 0..=65535; default 0.
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 0, maximum = 65535)]
    pub code: Option<i64>,
    /// Flag names: `debits_must_not_exceed_credits` or `credits_must_not_exceed_debits`,
    /// and `closed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<FlagsInput>)]
    pub flags: Option<Flags>,
    /// A JSON object, at most `limits.max_ledger_metadata_bytes` serialized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// `{"accounts": [...]}`: created all or nothing.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountsBody {
    /// 1..=`limits.max_batch` accounts.
    #[schema(min_items = 1, max_items = 10_000)]
    pub accounts: Vec<AccountBody>,
}

/// `POST /v1/ledger/accounts` body (schema only: the handler reads the body itself).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum AccountsRequest {
    /// One account.
    One(Box<AccountBody>),
    /// Several, created all or nothing.
    Batch(AccountsBody),
}

/// `POST /v1/ledger/transfers` body (schema only: the handler reads the body itself).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum TransfersRequest {
    /// One transfer.
    One(Box<TransferBody>),
    /// Several: atomic (default) or each on its own.
    Batch(TransfersBody),
}

/// `POST /v1/ledger/accounts` 201 answer (schema only): the account, or `{"accounts"}`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum AccountsCreated {
    /// One account.
    One(Box<Account>),
    /// A batch.
    Batch(AccountsResponse),
}

/// `POST /v1/ledger/transfers` 201 answer (schema only): the transfer, or `{"transfers"}`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum TransfersCreated {
    /// One transfer.
    One(Box<Transfer>),
    /// An atomic batch.
    Batch(TransfersResponse),
}

/// `POST /v1/ledger/transfers` 200 answer (schema only): a duplicate, or a non-atomic batch.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum TransfersAnswered {
    /// A repeat of one transfer (`duplicate`).
    One(Box<Transfer>),
    /// Each item of a non-atomic batch.
    Results(TransferResults),
}

/// Flag names (schema only).
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(rename_all = "snake_case")]
pub enum FlagName {
    /// debits_posted + debits_pending may not pass credits_posted.
    DebitsMustNotExceedCredits,
    /// credits_posted + credits_pending may not pass debits_posted.
    CreditsMustNotExceedDebits,
    /// No new transfers.
    Closed,
}

/// Flags as an object (schema only).
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct FlagsObject {
    /// debits_posted + debits_pending may not pass credits_posted.
    debits_must_not_exceed_credits: Option<bool>,
    /// credits_posted + credits_pending may not pass debits_posted.
    credits_must_not_exceed_debits: Option<bool>,
    /// No new transfers.
    closed: Option<bool>,
}

/// An account's flags as a client sends them (schema only): a list of names or an object.
#[derive(ToSchema)]
#[allow(dead_code)]
#[serde(untagged)]
pub enum FlagsInput {
    /// Names.
    List(Vec<FlagName>),
    /// `{"closed": true, ...}`.
    Object(FlagsObject),
}

/// Answer of a batch account create.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccountsResponse {
    /// The accounts, in input order.
    pub accounts: Vec<Account>,
}

/// `POST /v1/ledger/transfers` body for one transfer (also each of `{"transfers": [...]}`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferBody {
    /// The client's idempotency key: 1–`limits.max_ledger_id_len` bytes of
    /// `[A-Za-z0-9._:%-]`, not starting `job:` (ferry's).
    #[schema(value_type = LedgerId)]
    pub id: String,
    /// The account debited (not `escrow`, not a `worker:` account).
    #[schema(value_type = LedgerId)]
    pub debit_account: String,
    /// The account credited (not `escrow`; a missing `worker:` account is created).
    #[schema(value_type = LedgerId)]
    pub credit_account: String,
    /// 1..=2^53−1.
    #[serde(deserialize_with = "crate::validate::whole::int")]
    #[schema(minimum = 1, maximum = 9_007_199_254_740_991_i64)]
    pub amount: i64,
    /// Must be the accounts' ledger; default theirs.
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1, maximum = 4_294_967_295_i64)]
    pub ledger: Option<i64>,
    /// A user code, 0..=65535; default 0.
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 0, maximum = 65535)]
    pub code: Option<i64>,
    /// A JSON object, at most `limits.max_ledger_metadata_bytes` serialized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// Hold the amount until a post or a void (two-phase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<bool>,
    /// A pending transfer expires after this long (1..=`limits.max_delay_ms`); none: never.
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1, maximum = 31_622_400_000_i64)]
    pub timeout_ms: Option<i64>,
}

/// `{"transfers": [...], "atomic": bool}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransfersBody {
    /// 1..=`limits.max_batch` transfers.
    #[schema(min_items = 1, max_items = 10_000)]
    pub transfers: Vec<TransferBody>,
    /// All or nothing (default); `false`: each on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atomic: Option<bool>,
}

/// Answer of an atomic transfer batch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TransfersResponse {
    /// The transfers, in input order.
    pub transfers: Vec<Transfer>,
}

/// One item's outcome in a non-atomic batch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TransferResult {
    /// The transfer's id.
    pub id: String,
    /// Whether it is applied (or was, for a duplicate).
    pub ok: bool,
    /// A repeat of an applied transfer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// The transfer, when ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
    /// Why not, when not ok.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
}

/// Answer of a non-atomic transfer batch.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TransferResults {
    /// One per transfer, in input order.
    pub results: Vec<TransferResult>,
}

/// `POST /v1/ledger/transfers/{id}/post` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostBody {
    /// How much to post, at most the amount held; default all of it (the rest is released).
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1, maximum = 9_007_199_254_740_991_i64)]
    pub amount: Option<i64>,
}

/// `POST /v1/ledger/verify` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    /// Replay from the first event (default: from the last snapshot).
    #[serde(default)]
    pub full: bool,
    /// Rewrite balances from an intact chain (scope `admin`).
    #[serde(default)]
    pub repair: bool,
}

/// `GET /v1/ledger/accounts` query.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AccountListQuery {
    /// Only this ledger.
    #[param(minimum = 1, maximum = 4_294_967_295_i64)]
    pub ledger: Option<i64>,
    /// Page size (default 100, at most `limits.max_page_size`).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page (an account id).
    #[param(pattern = r"^[A-Za-z0-9._:%-]{0,512}$")]
    pub cursor: Option<String>,
}

/// A page query (statement, events).
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LedgerPageQuery {
    /// Page size (default 100, at most `limits.max_page_size`).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9]{0,18}$")]
    pub cursor: Option<String>,
}

/// A page of accounts.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AccountsPage {
    /// In id order.
    pub accounts: Vec<Account>,
    /// Cursor of the next page; `null` at the end.
    pub next_cursor: Option<String>,
}

/// A page of an account's transfers.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TransfersPage {
    /// Oldest first.
    pub transfers: Vec<Transfer>,
    /// Cursor of the next page; `null` at the end.
    pub next_cursor: Option<String>,
}

/// One ledger event as served.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LedgerEventView {
    /// 1, 2, 3, ... with no gap.
    pub seq: i64,
    /// `account.created`, `transfer.posted`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// When.
    #[schema(value_type = String)]
    pub at: crate::Timestamp,
    /// What changed.
    #[schema(value_type = Object)]
    pub data: Value,
    /// Lowercase hex SHA-256 of the previous hash and `"{seq}\n{type}\n{at_ms}\n{data}"`.
    pub hash: String,
    /// `at` in epoch milliseconds, as hashed.
    pub at_ms: i64,
}

/// A page of ledger events.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LedgerEventsPage {
    /// Oldest first.
    pub events: Vec<LedgerEventView>,
    /// Cursor of the next page; `null` at the end.
    pub next_cursor: Option<String>,
}

/// `payment` of a paid job: a hold from `from` placed when it is enqueued.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentSpec {
    /// The paying account.
    #[schema(value_type = LedgerId)]
    pub from: String,
    /// 1..=2^53−1.
    #[serde(deserialize_with = "crate::validate::whole::int")]
    #[schema(minimum = 1, maximum = 9_007_199_254_740_991_i64)]
    pub amount: i64,
    /// Must be `[ledger] jobs_ledger` (default 1).
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 1, maximum = 4_294_967_295_i64)]
    pub ledger: Option<i64>,
    /// A user code for the hold and the pay transfer; default 0.
    #[serde(
        default,
        deserialize_with = "crate::validate::whole::opt",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(minimum = 0, maximum = 65535)]
    pub code: Option<i64>,
}

impl PaymentSpec {
    /// Checks the fields; `ledger` stays 0 when not given (the server resolves it against
    /// `[ledger] jobs_ledger`), `hold` is set by the store.
    pub fn validate(self, limits: &Limits) -> Result<Payment> {
        id(&self.from, limits, "from")?;
        if self.from == ESCROW || self.from.starts_with(WORKER_PREFIX) {
            return Err(Error::invalid("from", format!("{:?} is ferry's own account", self.from)));
        }
        amount(self.amount, "amount")?;
        let ledger = ledger(self.ledger, "ledger")?.unwrap_or(0);
        Ok(Payment {
            from: self.from,
            amount: self.amount,
            ledger,
            code: code(self.code, "code")?,
            hold: String::new(),
        })
    }
}

fn id(v: &str, limits: &Limits, field: &str) -> Result<()> {
    valid_id(v, limits.max_ledger_id_len).map_err(|m| Error::invalid(field, format!("{field} {m}")))
}

fn amount(v: i64, field: &str) -> Result<()> {
    if !(1..=MAX_AMOUNT).contains(&v) {
        return Err(Error::invalid(field, format!("{field} must be 1..=2^53-1 (exact in JSON), got {v}")));
    }
    Ok(())
}

fn ledger(v: Option<i64>, field: &str) -> Result<Option<u32>> {
    match v {
        None => Ok(None),
        Some(l) => match u32::try_from(l) {
            Ok(l) if l >= 1 => Ok(Some(l)),
            _ => Err(Error::invalid(field, format!("{field} must be 1..=4294967295, got {l}"))),
        },
    }
}

fn code(v: Option<i64>, field: &str) -> Result<u16> {
    u16::try_from(v.unwrap_or(0)).map_err(|_| Error::invalid(field, format!("{field} must be 0..=65535")))
}

fn metadata(m: Option<Map<String, Value>>, limits: &Limits) -> Result<Map<String, Value>> {
    let m = m.unwrap_or_default();
    let len = serde_json::to_string(&m).map(|s| s.len()).unwrap_or(usize::MAX);
    if len > limits.max_ledger_metadata_bytes {
        return Err(Error::too_large(
            "metadata",
            format!("metadata is {len} bytes; the limit is {}", limits.max_ledger_metadata_bytes),
        ));
    }
    Ok(m)
}

impl AccountBody {
    /// Checks a client's account.
    pub fn validate(self, limits: &Limits) -> Result<NewAccount> {
        id(&self.id, limits, "id")?;
        if self.id == ESCROW || self.id.starts_with(WORKER_PREFIX) {
            return Err(Error::invalid("id", format!("{:?} is ferry's own account", self.id)));
        }
        let flags = self.flags.unwrap_or_default();
        if flags.debits_must_not_exceed_credits && flags.credits_must_not_exceed_debits {
            return Err(Error::invalid(
                "flags",
                "debits_must_not_exceed_credits and credits_must_not_exceed_debits exclude each other",
            ));
        }
        Ok(NewAccount {
            id: self.id,
            ledger: ledger(self.ledger, "ledger")?.unwrap_or(1),
            code: code(self.code, "code")?,
            flags,
            metadata: metadata(self.metadata, limits)?,
        })
    }
}

impl TransferBody {
    /// Checks a client's transfer.
    pub fn validate(self, limits: &Limits) -> Result<NewTransfer> {
        id(&self.id, limits, "id")?;
        if self.id.starts_with(JOB_PREFIX) {
            return Err(Error::invalid("id", "transfer ids starting job: are ferry's own"));
        }
        id(&self.debit_account, limits, "debit_account")?;
        id(&self.credit_account, limits, "credit_account")?;
        if self.debit_account == ESCROW || self.debit_account.starts_with(WORKER_PREFIX) {
            return Err(Error::invalid(
                "debit_account",
                format!("{:?} is ferry's own account", self.debit_account),
            ));
        }
        if self.credit_account == ESCROW {
            return Err(Error::invalid("credit_account", "\"escrow\" is ferry's own account"));
        }
        if self.credit_account == self.debit_account {
            return Err(Error::invalid("credit_account", "a transfer needs two different accounts"));
        }
        amount(self.amount, "amount")?;
        let pending = self.pending.unwrap_or(false);
        if let Some(t) = self.timeout_ms {
            if !pending {
                return Err(Error::invalid("timeout_ms", "timeout_ms needs pending: true"));
            }
            if !(1..=limits.max_delay_ms).contains(&t) {
                return Err(Error::invalid(
                    "timeout_ms",
                    format!("timeout_ms must be 1..={} (limits.max_delay_ms)", limits.max_delay_ms),
                ));
            }
        }
        Ok(NewTransfer {
            id: self.id,
            debit_account: self.debit_account,
            credit_account: self.credit_account,
            amount: self.amount,
            ledger: ledger(self.ledger, "ledger")?,
            code: code(self.code, "code")?,
            metadata: metadata(self.metadata, limits)?,
            pending,
            timeout_ms: self.timeout_ms,
            job_id: None,
        })
    }
}

impl PostBody {
    /// Checks the amount.
    pub fn validate(&self) -> Result<Option<i64>> {
        if let Some(a) = self.amount {
            amount(a, "amount")?;
        }
        Ok(self.amount)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_refuse_what_is_ferrys_and_out_of_range() {
        let l = Limits::default();
        let t = |f: fn(&mut TransferBody)| {
            let mut b = TransferBody {
                id: "t".into(),
                debit_account: "a".into(),
                credit_account: "b".into(),
                amount: 1,
                ..TransferBody::default()
            };
            f(&mut b);
            b.validate(&l).map(|_| ()).map_err(|e| e.field.unwrap_or_default())
        };
        assert_eq!(t(|_| {}), Ok(()));
        assert_eq!(t(|b| b.amount = MAX_AMOUNT), Ok(()));
        assert_eq!(t(|b| b.amount = MAX_AMOUNT + 1), Err("amount".into()));
        assert_eq!(t(|b| b.id = "job:x".into()), Err("id".into()));
        assert_eq!(t(|b| b.debit_account = "worker:x".into()), Err("debit_account".into()));
        assert_eq!(t(|b| b.credit_account = "worker:x".into()), Ok(()));
        assert_eq!(t(|b| b.credit_account = "escrow".into()), Err("credit_account".into()));
        assert_eq!(t(|b| b.timeout_ms = Some(5)), Err("timeout_ms".into()));
        let f: Flags = serde_json::from_str(r#"{"closed": true}"#).unwrap();
        assert!(f.closed);
        let f: Flags = serde_json::from_str(r#"["debits_must_not_exceed_credits"]"#).unwrap();
        assert!(f.debits_must_not_exceed_credits);
        assert!(serde_json::from_str::<Flags>(r#"["nope"]"#).is_err());
    }
}
