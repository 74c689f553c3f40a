//! The ledger: double-entry accounts and transfers (TigerBeetle's model), planned in memory.
//!
//! Both backends load the rows a write names into a [`Book`], apply the write's ops to it, and
//! store what the book says changed: the same rules decide every outcome on both, and a
//! refused op changes nothing but its own refusal. Every change appends one [`LedgerEvent`] to
//! a hash chain (`hash` = SHA-256 of the previous hash and the event's canonical bytes), and
//! keeps an order-independent digest of all balances, so a replay ([`Replay`]) can prove the
//! materialized balances right.
//!
//! Invariants the book keeps (asserted in debug builds, checked by `check_invariants`):
//! - per ledger, Σ debits_posted = Σ credits_posted and Σ debits_pending = Σ credits_pending;
//! - an account flagged `debits_must_not_exceed_credits` never has debits_posted +
//!   debits_pending > credits_posted (and the mirror);
//! - an expired pending never counts: due ones of the accounts a write touches expire first.

use crate::Timestamp;
use crate::error::{Error, ErrorCode, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use utoipa::ToSchema;
use uuid::Uuid;

/// The account job holds are placed in (ferry's own).
pub const ESCROW: &str = "escrow";
/// Prefix of the accounts workers are paid into (ferry's own).
pub const WORKER_PREFIX: &str = "worker:";
/// Prefix of the transfers ferry makes for paid jobs.
pub const JOB_PREFIX: &str = "job:";
/// Largest amount: exact in every JSON client (2^53 − 1).
pub const MAX_AMOUNT: i64 = (1 << 53) - 1;
/// The previous hash of the first event.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// An account's worker name encoded into its id: bytes outside `[A-Za-z0-9._:-]` as `%XX`.
pub fn worker_account(worker: &str) -> String {
    let mut out = String::with_capacity(WORKER_PREFIX.len() + worker.len());
    out.push_str(WORKER_PREFIX);
    for b in worker.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The hold transfer of a paid job (`n` = how many times it was replayed from the DLQ).
pub fn hold_id(job: Uuid, n: u32) -> String {
    if n == 0 { format!("job:{job}:hold") } else { format!("job:{job}:hold:{n}") }
}

/// The payment transfer of a completed paid job.
pub fn pay_id(job: Uuid) -> String {
    format!("job:{job}:pay")
}

/// Whether `id` is a valid account or transfer id: 1..=`max` bytes of `[A-Za-z0-9._:%-]`.
pub fn valid_id(id: &str, max: usize) -> std::result::Result<(), String> {
    if id.is_empty() {
        return Err("must not be empty".into());
    }
    if id.len() > max {
        return Err(format!("is {} bytes, over the limit of {max}", id.len()));
    }
    match id.bytes().find(|b| !(b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'%' | b'-'))) {
        Some(b) => Err(format!("has {:?}; ids use only A-Z a-z 0-9 . _ : % -", b as char)),
        None => Ok(()),
    }
}

/// An account's flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// debits_posted + debits_pending may not pass credits_posted.
    pub debits_must_not_exceed_credits: bool,
    /// credits_posted + credits_pending may not pass debits_posted.
    pub credits_must_not_exceed_debits: bool,
    /// No new transfers (pendings still settle).
    pub closed: bool,
}

impl Flags {
    /// Flag names as on the wire.
    pub const NAMES: [&'static str; 3] =
        ["debits_must_not_exceed_credits", "credits_must_not_exceed_debits", "closed"];

    /// The set flags' names.
    pub fn names(self) -> Vec<&'static str> {
        let on = [self.debits_must_not_exceed_credits, self.credits_must_not_exceed_debits, self.closed];
        Self::NAMES.iter().zip(on).filter(|(_, on)| *on).map(|(n, _)| *n).collect()
    }

    /// Sets the flag called `name`; false for an unknown name.
    pub fn set(&mut self, name: &str) -> bool {
        match name {
            "debits_must_not_exceed_credits" => self.debits_must_not_exceed_credits = true,
            "credits_must_not_exceed_debits" => self.credits_must_not_exceed_debits = true,
            "closed" => self.closed = true,
            _ => return false,
        }
        true
    }

    /// Stored form.
    pub fn bits(self) -> i64 {
        i64::from(self.debits_must_not_exceed_credits)
            | i64::from(self.credits_must_not_exceed_debits) << 1
            | i64::from(self.closed) << 2
    }

    /// From the stored form.
    pub fn from_bits(b: i64) -> Flags {
        Flags {
            debits_must_not_exceed_credits: b & 1 != 0,
            credits_must_not_exceed_debits: b & 2 != 0,
            closed: b & 4 != 0,
        }
    }
}

impl Serialize for Flags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Flags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            List(Vec<String>),
            Object(BTreeMap<String, Option<bool>>),
        }
        let mut f = Flags::default();
        let names: Vec<String> = match Form::deserialize(d)? {
            Form::List(l) => l,
            Form::Object(o) => {
                if let Some(k) = o.keys().find(|k| !Flags::NAMES.contains(&k.as_str())) {
                    return Err(D::Error::custom(format!(
                        "unknown flag {k:?} (one of {})",
                        Flags::NAMES.join(", ")
                    )));
                }
                o.into_iter().filter(|(_, on)| *on == Some(true)).map(|(k, _)| k).collect()
            }
        };
        for n in names {
            if !f.set(&n) {
                return Err(D::Error::custom(format!(
                    "unknown flag {n:?} (one of {})",
                    Flags::NAMES.join(", ")
                )));
            }
        }
        Ok(f)
    }
}

/// Posted and pending sums of one account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Balances {
    /// Debits posted.
    pub debits_posted: i64,
    /// Credits posted.
    pub credits_posted: i64,
    /// Debits held by pending transfers.
    pub debits_pending: i64,
    /// Credits held by pending transfers.
    pub credits_pending: i64,
}

/// An account as read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Account {
    /// Its id.
    pub id: String,
    /// The ledger (currency) it belongs to.
    pub ledger: u32,
    /// A user code.
    pub code: u16,
    /// Its flags, by name.
    #[schema(value_type = Vec<String>)]
    pub flags: Flags,
    /// User data.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// Posted and pending sums.
    #[serde(flatten)]
    pub sums: Balances,
    /// credits_posted − debits_posted.
    pub balance: i64,
    /// balance − debits_pending.
    pub available: i64,
    /// When it was created.
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    /// When it was closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub closed_at: Option<Timestamp>,
    /// True when this answers a repeat of an identical create (or close).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    /// Seq of the last event that changed it (snapshots take accounts changed since the last).
    #[serde(skip)]
    pub last_seq: i64,
}

impl Account {
    /// Recomputes `balance` and `available` from the sums.
    pub fn refresh(&mut self) {
        self.balance = self.sums.credits_posted.saturating_sub(self.sums.debits_posted);
        self.available = self.balance.saturating_sub(self.sums.debits_pending);
    }

    /// The line its digest term hashes.
    fn digest_term(&self) -> [u8; 32] {
        term(&self.id, self.ledger, &self.sums)
    }
}

/// A digest term: SHA-256 of one account's balances.
pub fn term(id: &str, ledger: u32, s: &Balances) -> [u8; 32] {
    let line = format!(
        "{id}\n{ledger}\n{}\n{}\n{}\n{}",
        s.debits_posted, s.credits_posted, s.debits_pending, s.credits_pending
    );
    Sha256::digest(line.as_bytes()).into()
}

/// XORs `b` into `a` (the digest is the XOR of all accounts' terms: order-independent).
pub fn xor_into(a: &mut [u8; 32], b: &[u8; 32]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

named_enum! {
    /// Where a transfer is.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
    pub enum TransferState {
        /// Moved.
        Posted = "posted";
        /// Held, waiting for a post or a void.
        Pending = "pending";
        /// Released unposted.
        Voided = "voided";
        /// Released by its timeout.
        Expired = "expired";
        /// Never applied (the reason says why); its id stays taken.
        Refused = "refused";
    }
}

named_enum! {
    /// Why a transfer, post or void was refused (`details.reason` of a 409 `invalid_state`).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
    pub enum Reason {
        /// The debit account may not owe more than its credits.
        ExceedsCredits = "exceeds_credits";
        /// The credit account may not be owed more than its debits.
        ExceedsDebits = "exceeds_debits";
        /// The pending transfer was already posted.
        PendingAlreadyPosted = "pending_already_posted";
        /// The pending transfer was already voided.
        PendingAlreadyVoided = "pending_already_voided";
        /// The pending transfer expired.
        PendingExpired = "pending_expired";
        /// An account is closed.
        AccountClosed = "account_closed";
        /// The transfer is not a pending one.
        NotPending = "not_pending";
        /// A sum would pass the largest 64-bit integer.
        Overflow = "overflow";
        /// The id was refused before.
        IdAlreadyFailed = "id_already_failed";
    }
}

/// The 409 `invalid_state` of a refusal.
pub fn refusal(reason: Reason, message: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidState, message).with_details(json!({ "reason": reason.as_str() }))
}

/// A transfer as read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Transfer {
    /// The client's idempotency key.
    pub id: String,
    /// The account debited.
    pub debit_account: String,
    /// The account credited.
    pub credit_account: String,
    /// The ledger of both accounts.
    pub ledger: u32,
    /// The amount asked for (a pending one: the amount held).
    pub amount: i64,
    /// A user code.
    pub code: u16,
    /// User data.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// Whether it was created pending (two-phase).
    pub pending: bool,
    /// A pending transfer's timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<i64>,
    /// Where it is.
    pub state: TransferState,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
    /// What was posted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posted_amount: Option<i64>,
    /// When a pending one expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub expires_at: Option<Timestamp>,
    /// The paid job it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<Uuid>,
    /// The ledger event that created it (none when refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    /// When it was created (or refused).
    #[schema(value_type = String)]
    pub created_at: Timestamp,
    /// When a pending one was posted, voided or expired.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub settled_at: Option<Timestamp>,
    /// True when this answers a repeat.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// A paid job's payment, validated (as the job keeps it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Payment {
    /// The paying account.
    pub from: String,
    /// The amount held, then paid.
    pub amount: i64,
    /// The jobs' ledger (0 until the server resolves the default).
    pub ledger: u32,
    /// The transfers' code.
    pub code: u16,
    /// The current hold transfer's id.
    #[serde(default)]
    pub hold: String,
}

impl Payment {
    /// Resolves the default ledger and checks it is the jobs' one (422 `payment.ledger`).
    pub fn resolve(&mut self, jobs_ledger: u32) -> Result<()> {
        if self.ledger == 0 {
            self.ledger = jobs_ledger;
        }
        if self.ledger != jobs_ledger {
            return Err(Error::invalid(
                "payment.ledger",
                format!("paid jobs use ledger {jobs_ledger} ([ledger] jobs_ledger), not {}", self.ledger),
            ));
        }
        Ok(())
    }
}

/// A new account, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAccount {
    /// Its id.
    pub id: String,
    /// Its ledger.
    pub ledger: u32,
    /// Its code.
    pub code: u16,
    /// Its flags.
    pub flags: Flags,
    /// User data.
    pub metadata: Map<String, Value>,
}

/// A new transfer, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTransfer {
    /// The idempotency key.
    pub id: String,
    /// Debited.
    pub debit_account: String,
    /// Credited.
    pub credit_account: String,
    /// 1..=[`MAX_AMOUNT`].
    pub amount: i64,
    /// When given, must be the accounts' ledger.
    pub ledger: Option<u32>,
    /// User code.
    pub code: u16,
    /// User data.
    pub metadata: Map<String, Value>,
    /// Two-phase.
    pub pending: bool,
    /// A pending one's timeout.
    pub timeout_ms: Option<i64>,
    /// Set on ferry's own job transfers.
    pub job_id: Option<Uuid>,
}

/// One ledger write.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Create an account.
    CreateAccount(NewAccount),
    /// Close an account.
    Close(String),
    /// Create a transfer.
    Transfer(NewTransfer),
    /// Post a pending transfer (all of it when `amount` is `None`).
    Post {
        /// The pending transfer.
        id: String,
        /// How much.
        amount: Option<i64>,
    },
    /// Void a pending transfer.
    Void {
        /// The pending transfer.
        id: String,
    },
}

/// What one op produced: an account or a transfer.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Applied {
    /// An account.
    Account(Account),
    /// A transfer.
    Transfer(Transfer),
}

/// The chain's head: the last event, its hash, and the digest of all balances.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Last event's seq (0: none).
    pub seq: i64,
    /// Last event's hash.
    pub hash: [u8; 32],
    /// XOR of every account's term.
    pub digest: [u8; 32],
}

impl Default for Head {
    fn default() -> Head {
        Head { seq: 0, hash: GENESIS_HASH, digest: [0; 32] }
    }
}

/// One entry of the ledger's own, never pruned, event chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEvent {
    /// 1, 2, 3, ... with no gap.
    pub seq: i64,
    /// `account.created`, `transfer.posted`, ...
    pub kind: String,
    /// Epoch ms.
    pub at: i64,
    /// The JSON text hashed.
    pub data: String,
    /// SHA-256 of the previous hash and [`canonical`] bytes.
    pub hash: [u8; 32],
}

/// The bytes an event's hash covers after the previous hash.
pub fn canonical(seq: i64, kind: &str, at: i64, data: &str) -> String {
    format!("{seq}\n{kind}\n{at}\n{data}")
}

/// The hash of an event after `prev`.
pub fn chain(prev: &[u8; 32], seq: i64, kind: &str, at: i64, data: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical(seq, kind, at, data).as_bytes());
    h.finalize().into()
}

/// Lowercase hex.
pub fn hex(b: &[u8; 32]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parses lowercase or uppercase hex of 32 bytes.
pub fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A transfer row the book changed, and whether it is new.
#[derive(Debug, Clone)]
pub struct TransferWrite {
    /// The row.
    pub transfer: Transfer,
    /// Insert (else update).
    pub insert: bool,
}

/// The rows one write loaded: the accounts and transfers it names, and due pendings.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    /// Account ids.
    pub accounts: BTreeSet<String>,
    /// Transfer ids.
    pub transfers: BTreeSet<String>,
}

impl Needs {
    /// What `ops` name directly (post and void also need their transfer's accounts).
    pub fn of(ops: &[Op]) -> Needs {
        let mut n = Needs::default();
        for op in ops {
            match op {
                Op::CreateAccount(a) => {
                    n.accounts.insert(a.id.clone());
                }
                Op::Close(id) => {
                    n.accounts.insert(id.clone());
                }
                Op::Transfer(t) => {
                    n.transfers.insert(t.id.clone());
                    n.accounts.insert(t.debit_account.clone());
                    n.accounts.insert(t.credit_account.clone());
                }
                Op::Post { id, .. } | Op::Void { id } => {
                    n.transfers.insert(id.clone());
                }
            }
        }
        n
    }
}

/// The working set of one write: loaded rows, the changes planned so far, and the events
/// they append.
#[derive(Debug, Clone)]
pub struct Book {
    now: i64,
    head: Head,
    accounts: BTreeMap<String, Account>,
    transfers: BTreeMap<String, Transfer>,
    new_accounts: BTreeSet<String>,
    dirty_accounts: BTreeSet<String>,
    dirty_transfers: BTreeMap<String, bool>,
    events: Vec<LedgerEvent>,
    /// Copies of the events for `/v1/events`, made from their data before it is text.
    copies: Vec<crate::Event>,
    /// Each changed loaded account's digest term as loaded: the digest moves once per account
    /// per write (at `finish`), not once per change.
    terms: BTreeMap<String, [u8; 32]>,
    /// The escrow account's ledger, for creating it on the first hold.
    jobs_ledger: u32,
}

/// What a book's write stores.
#[derive(Debug, Clone, Default)]
pub struct Written {
    /// New accounts.
    pub inserted: Vec<Account>,
    /// Changed accounts.
    pub updated: Vec<Account>,
    /// Changed or new transfers.
    pub transfers: Vec<TransferWrite>,
    /// Events appended (in seq order).
    pub events: Vec<LedgerEvent>,
    /// Their copies for `/v1/events`.
    pub copies: Vec<crate::Event>,
    /// The new head.
    pub head: Head,
}

impl Written {
    /// Whether anything is to be stored.
    pub fn is_empty(&self) -> bool {
        self.inserted.is_empty() && self.updated.is_empty() && self.transfers.is_empty()
    }
}

impl Book {
    /// A book over loaded rows at `now`.
    pub fn new(
        now: i64,
        head: Head,
        accounts: Vec<Account>,
        transfers: Vec<Transfer>,
        jobs_ledger: u32,
    ) -> Book {
        Book {
            now,
            head,
            accounts: accounts.into_iter().map(|a| (a.id.clone(), a)).collect(),
            transfers: transfers.into_iter().map(|t| (t.id.clone(), t)).collect(),
            new_accounts: BTreeSet::new(),
            dirty_accounts: BTreeSet::new(),
            dirty_transfers: BTreeMap::new(),
            events: Vec::new(),
            copies: Vec::new(),
            terms: BTreeMap::new(),
            jobs_ledger,
        }
    }

    /// The loaded account `id`.
    pub fn account(&self, id: &str) -> Option<&Account> {
        self.accounts.get(id)
    }

    /// The loaded transfer `id`.
    pub fn transfer(&self, id: &str) -> Option<&Transfer> {
        self.transfers.get(id)
    }

    /// Expires every loaded pending transfer that is due and whose accounts are loaded.
    pub fn expire_due(&mut self) -> usize {
        let due: Vec<String> = self
            .transfers
            .values()
            .filter(|t| {
                t.state == TransferState::Pending
                    && t.expires_at.is_some_and(|e| e.0 <= self.now)
                    && self.accounts.contains_key(&t.debit_account)
                    && self.accounts.contains_key(&t.credit_account)
            })
            .map(|t| t.id.clone())
            .collect();
        for id in &due {
            self.release(id, TransferState::Expired);
        }
        due.len()
    }

    /// Applies `ops` all or nothing: on the first error the book is as before, and the error
    /// names the op's index (`details.index`).
    pub fn apply_atomic(&mut self, ops: &[Op]) -> Result<Vec<Applied>> {
        let before = self.clone();
        let mut out = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            match self.apply(op, false) {
                Ok(a) => out.push(a),
                Err(e) => {
                    *self = before;
                    return Err(with_index(e, i));
                }
            }
        }
        Ok(out)
    }

    /// Applies one op. With `remember`, a refused transfer is recorded (its id stays taken);
    /// any error leaves the book otherwise unchanged.
    pub fn apply(&mut self, op: &Op, remember: bool) -> Result<Applied> {
        match op {
            Op::CreateAccount(a) => self.create_account(a).map(Applied::Account),
            Op::Close(id) => self.close(id).map(Applied::Account),
            Op::Transfer(t) => match self.create_transfer(t) {
                Err(Refused(reason, message)) if remember => {
                    self.remember_refusal(t, reason);
                    Err(refusal(reason, message))
                }
                Err(Refused(reason, message)) => Err(refusal(reason, message)),
                Ok(r) => r.map(Applied::Transfer),
            },
            Op::Post { id, amount } => self.post(id, *amount).map(Applied::Transfer),
            Op::Void { id } => self.void(id).map(Applied::Transfer),
        }
    }

    fn create_account(&mut self, a: &NewAccount) -> Result<Account> {
        if let Some(old) = self.accounts.get(&a.id) {
            let mut fields = Vec::new();
            if old.ledger != a.ledger {
                fields.push("ledger");
            }
            if old.code != a.code {
                fields.push("code");
            }
            let strip = |f: Flags| Flags { closed: false, ..f };
            if strip(old.flags) != strip(a.flags) || (a.flags.closed && !old.flags.closed) {
                fields.push("flags");
            }
            if old.metadata != a.metadata {
                fields.push("metadata");
            }
            if !fields.is_empty() {
                return Err(Error::new(
                    ErrorCode::Conflict,
                    format!("account {:?} exists with other {}", a.id, fields.join(", ")),
                )
                .with_details(json!({ "fields": fields })));
            }
            return Ok(Account { duplicate: true, ..old.clone() });
        }
        let account = self.insert_account(a.id.clone(), a.ledger, a.code, a.flags, a.metadata.clone());
        Ok(account)
    }

    fn insert_account(
        &mut self,
        id: String,
        ledger: u32,
        code: u16,
        flags: Flags,
        metadata: Map<String, Value>,
    ) -> Account {
        let mut account = Account {
            id: id.clone(),
            ledger,
            code,
            flags,
            metadata,
            sums: Balances::default(),
            balance: 0,
            available: 0,
            created_at: Timestamp(self.now),
            closed_at: flags.closed.then_some(Timestamp(self.now)),
            duplicate: false,
            last_seq: 0,
        };
        let data = json!({
            "id": id, "ledger": ledger, "code": code, "flags": flags.names(), "metadata": account.metadata,
        });
        account.last_seq = self.append("account.created", data);
        self.new_accounts.insert(id.clone());
        self.accounts.insert(id, account.clone());
        account
    }

    fn close(&mut self, id: &str) -> Result<Account> {
        let Some(a) = self.accounts.get(id) else { return Err(account_not_found(id)) };
        if a.flags.closed {
            return Ok(Account { duplicate: true, ..a.clone() });
        }
        let seq = self.append("account.closed", json!({ "id": id }));
        let a = self.accounts.get_mut(id).expect("checked above");
        a.flags.closed = true;
        a.closed_at = Some(Timestamp(self.now));
        a.last_seq = seq;
        self.dirty_accounts.insert(id.to_string());
        Ok(a.clone())
    }

    fn create_transfer(&mut self, t: &NewTransfer) -> std::result::Result<Result<Transfer>, Refused> {
        if let Some(old) = self.transfers.get(&t.id) {
            return Ok(repeat(old, t));
        }
        if t.debit_account == t.credit_account || !(1..=MAX_AMOUNT).contains(&t.amount) {
            return Ok(Err(Error::invalid(
                "credit_account",
                "a transfer moves 1..=2^53-1 between two accounts",
            )));
        }
        let Some(debit) = self.accounts.get(&t.debit_account) else {
            return Ok(Err(account_not_found(&t.debit_account).within_field("debit_account")));
        };
        // A missing `worker:` account (or ferry's `escrow`) is created once the transfer passes
        // every check, as a fresh account without flags.
        let fresh = Account {
            id: t.credit_account.clone(),
            ledger: if t.credit_account == ESCROW {
                self.jobs_ledger
            } else {
                t.ledger.unwrap_or(debit.ledger)
            },
            code: 0,
            flags: Flags::default(),
            metadata: Map::new(),
            sums: Balances::default(),
            balance: 0,
            available: 0,
            created_at: Timestamp(self.now),
            closed_at: None,
            duplicate: false,
            last_seq: 0,
        };
        let create_credit = !self.accounts.contains_key(&t.credit_account);
        let credit = match self.accounts.get(&t.credit_account) {
            Some(c) => c,
            None if t.credit_account.starts_with(WORKER_PREFIX) => &fresh,
            None if t.credit_account == ESCROW && t.job_id.is_some() => &fresh,
            None => return Ok(Err(account_not_found(&t.credit_account).within_field("credit_account"))),
        };
        if debit.ledger != credit.ledger {
            return Ok(Err(Error::invalid(
                "ledger",
                format!("the accounts are in ledgers {} and {}", debit.ledger, credit.ledger),
            )));
        }
        if let Some(l) = t.ledger
            && l != debit.ledger
        {
            return Ok(Err(Error::invalid(
                "ledger",
                format!("the accounts are in ledger {}, not {l}", debit.ledger),
            )));
        }
        let ferrys = t.job_id.is_some();
        if debit.flags.closed || (credit.flags.closed && !ferrys) {
            let which = if debit.flags.closed { &debit.id } else { &credit.id };
            return Err(Refused(Reason::AccountClosed, format!("account {which:?} is closed")));
        }
        let (d, c) = (debit.sums, credit.sums);
        let amount = t.amount;
        let fits = |a: i64, b: i64| a.checked_add(b).and_then(|s| s.checked_add(amount)).is_some();
        if !fits(d.debits_posted, d.debits_pending) || !fits(c.credits_posted, c.credits_pending) {
            return Err(Refused(Reason::Overflow, "the transfer would overflow an account's sums".into()));
        }
        if debit.flags.debits_must_not_exceed_credits
            && d.debits_posted + d.debits_pending + amount > d.credits_posted
        {
            return Err(Refused(
                Reason::ExceedsCredits,
                format!("account {:?} has {} available, {amount} asked", debit.id, debit.available),
            ));
        }
        if credit.flags.credits_must_not_exceed_debits
            && c.credits_posted + c.credits_pending + amount > c.debits_posted
        {
            return Err(Refused(
                Reason::ExceedsDebits,
                format!("account {:?} may not be credited past its debits", credit.id),
            ));
        }
        let ledger = debit.ledger;
        if create_credit {
            self.insert_account(t.credit_account.clone(), ledger, 0, Flags::default(), Map::new());
        }
        let expires_at = t.timeout_ms.map(|ms| Timestamp(self.now.saturating_add(ms)));
        let kind = if t.pending { "transfer.pending" } else { "transfer.posted" };
        let mut data = json!({
            "id": t.id, "debit_account": t.debit_account, "credit_account": t.credit_account,
            "ledger": ledger, "amount": amount, "code": t.code, "metadata": t.metadata,
            "job_id": t.job_id,
        });
        if t.pending {
            data["expires_at"] = json!(expires_at.map(|e| e.0));
        } else {
            data["pending_amount"] = Value::Null;
        }
        let seq = self.append(kind, data);
        self.change(&t.debit_account, seq, |s| {
            if t.pending { s.debits_pending += amount } else { s.debits_posted += amount }
        });
        self.change(&t.credit_account, seq, |s| {
            if t.pending { s.credits_pending += amount } else { s.credits_posted += amount }
        });
        let transfer = Transfer {
            id: t.id.clone(),
            debit_account: t.debit_account.clone(),
            credit_account: t.credit_account.clone(),
            ledger,
            amount,
            code: t.code,
            metadata: t.metadata.clone(),
            pending: t.pending,
            timeout_ms: t.timeout_ms,
            state: if t.pending { TransferState::Pending } else { TransferState::Posted },
            reason: None,
            posted_amount: (!t.pending).then_some(amount),
            expires_at,
            job_id: t.job_id,
            seq: Some(seq),
            created_at: Timestamp(self.now),
            settled_at: None,
            duplicate: false,
        };
        self.put_transfer(transfer.clone(), true);
        Ok(Ok(transfer))
    }

    fn remember_refusal(&mut self, t: &NewTransfer, reason: Reason) {
        let ledger = t.ledger.or_else(|| self.accounts.get(&t.debit_account).map(|a| a.ledger)).unwrap_or(1);
        let transfer = Transfer {
            id: t.id.clone(),
            debit_account: t.debit_account.clone(),
            credit_account: t.credit_account.clone(),
            ledger,
            amount: t.amount,
            code: t.code,
            metadata: t.metadata.clone(),
            pending: t.pending,
            timeout_ms: t.timeout_ms,
            state: TransferState::Refused,
            reason: Some(reason),
            posted_amount: None,
            expires_at: None,
            job_id: t.job_id,
            seq: None,
            created_at: Timestamp(self.now),
            settled_at: None,
            duplicate: false,
        };
        self.put_transfer(transfer, true);
    }

    fn settled(&self, id: &str) -> Result<&Transfer> {
        let t = self.transfers.get(id).ok_or_else(|| transfer_not_found(id))?;
        if !t.pending || t.state == TransferState::Refused {
            return Err(refusal(Reason::NotPending, format!("transfer {id:?} is not a pending transfer")));
        }
        Ok(t)
    }

    fn post(&mut self, id: &str, amount: Option<i64>) -> Result<Transfer> {
        let t = self.settled(id)?;
        match t.state {
            TransferState::Posted if amount.is_none() || amount == t.posted_amount => {
                return Ok(Transfer { duplicate: true, ..t.clone() });
            }
            TransferState::Posted => {
                return Err(refusal(
                    Reason::PendingAlreadyPosted,
                    format!("transfer {id:?} was already posted"),
                ));
            }
            TransferState::Voided => {
                return Err(refusal(Reason::PendingAlreadyVoided, format!("transfer {id:?} was voided")));
            }
            TransferState::Expired => {
                return Err(refusal(Reason::PendingExpired, format!("transfer {id:?} expired")));
            }
            TransferState::Pending | TransferState::Refused => {}
        }
        let held = t.amount;
        let posted = amount.unwrap_or(held);
        if posted < 1 {
            return Err(Error::invalid("amount", "a post moves at least 1"));
        }
        if posted > held {
            return Err(Error::invalid("amount", format!("{posted} is more than the {held} held")));
        }
        let (debit, credit) = (t.debit_account.clone(), t.credit_account.clone());
        if !self.accounts.contains_key(&debit) || !self.accounts.contains_key(&credit) {
            return Err(Error::internal(format!("transfer {id:?} names an account that is missing")));
        }
        let data = json!({
            "id": id, "debit_account": debit, "credit_account": credit, "ledger": t.ledger,
            "amount": posted, "pending_amount": held, "code": t.code, "metadata": t.metadata, "job_id": t.job_id,
        });
        let seq = self.append("transfer.posted", data);
        self.change(&debit, seq, |s| {
            s.debits_pending -= held;
            s.debits_posted += posted;
        });
        self.change(&credit, seq, |s| {
            s.credits_pending -= held;
            s.credits_posted += posted;
        });
        let now = self.now;
        let t = self.transfers.get_mut(id).expect("checked above");
        t.state = TransferState::Posted;
        t.posted_amount = Some(posted);
        t.settled_at = Some(Timestamp(now));
        let t = t.clone();
        self.dirty_transfers.entry(id.to_string()).or_insert(false);
        Ok(t)
    }

    fn void(&mut self, id: &str) -> Result<Transfer> {
        let t = self.settled(id)?;
        match t.state {
            TransferState::Voided => return Ok(Transfer { duplicate: true, ..t.clone() }),
            TransferState::Posted => {
                return Err(refusal(Reason::PendingAlreadyPosted, format!("transfer {id:?} was posted")));
            }
            TransferState::Expired => {
                return Err(refusal(Reason::PendingExpired, format!("transfer {id:?} expired")));
            }
            TransferState::Pending | TransferState::Refused => {}
        }
        if !self.accounts.contains_key(&t.debit_account) || !self.accounts.contains_key(&t.credit_account) {
            return Err(Error::internal(format!("transfer {id:?} names an account that is missing")));
        }
        Ok(self.release(id, TransferState::Voided))
    }

    /// Voids or expires a pending transfer whose accounts are loaded.
    fn release(&mut self, id: &str, to: TransferState) -> Transfer {
        let t = &self.transfers[id];
        assert_eq!(t.state, TransferState::Pending, "only a pending transfer is released");
        let (debit, credit, held) = (t.debit_account.clone(), t.credit_account.clone(), t.amount);
        let kind = if to == TransferState::Voided { "transfer.voided" } else { "transfer.expired" };
        let data = json!({
            "id": id, "debit_account": debit, "credit_account": credit, "ledger": t.ledger, "amount": held,
            "job_id": t.job_id,
        });
        let seq = self.append(kind, data);
        self.change(&debit, seq, |s| s.debits_pending -= held);
        self.change(&credit, seq, |s| s.credits_pending -= held);
        let now = self.now;
        let t = self.transfers.get_mut(id).expect("checked above");
        t.state = to;
        t.settled_at = Some(Timestamp(now));
        let t = t.clone();
        self.dirty_transfers.entry(id.to_string()).or_insert(false);
        t
    }

    fn put_transfer(&mut self, t: Transfer, insert: bool) {
        self.dirty_transfers.insert(t.id.clone(), insert);
        self.transfers.insert(t.id.clone(), t);
    }

    fn change(&mut self, id: &str, seq: i64, f: impl FnOnce(&mut Balances)) {
        let a = self.accounts.get_mut(id).expect("changed accounts are loaded");
        if !self.new_accounts.contains(id) && !self.terms.contains_key(id) {
            self.terms.insert(id.to_string(), a.digest_term());
        }
        f(&mut a.sums);
        a.refresh();
        a.last_seq = seq;
        if !self.new_accounts.contains(id) {
            self.dirty_accounts.insert(id.to_string());
        }
    }

    fn append(&mut self, kind: &str, data: Value) -> i64 {
        let seq = self.head.seq + 1;
        copies_of(seq, kind, self.now, &data, &mut self.copies);
        let data = data.to_string();
        let hash = chain(&self.head.hash, seq, kind, self.now, &data);
        self.events.push(LedgerEvent { seq, kind: kind.to_string(), at: self.now, data, hash });
        self.head.seq = seq;
        self.head.hash = hash;
        seq
    }

    /// Appends an event that moves no balance (`ledger.repaired`).
    pub fn note(&mut self, kind: &str, data: Value) -> i64 {
        self.append(kind, data)
    }

    /// The events appended so far.
    pub fn events(&self) -> &[LedgerEvent] {
        &self.events
    }

    /// What to store.
    pub fn finish(self) -> Written {
        let Book {
            mut head,
            mut accounts,
            transfers,
            new_accounts,
            dirty_accounts,
            dirty_transfers,
            events,
            copies,
            terms,
            ..
        } = self;
        for (id, old) in &terms {
            xor_into(&mut head.digest, old);
            xor_into(&mut head.digest, &accounts[id].digest_term());
        }
        for id in &new_accounts {
            xor_into(&mut head.digest, &accounts[id].digest_term());
        }
        let inserted = new_accounts.iter().filter_map(|id| accounts.remove(id)).collect();
        let updated = dirty_accounts.iter().filter_map(|id| accounts.remove(id)).collect();
        let transfers = dirty_transfers
            .into_iter()
            .filter_map(|(id, insert)| {
                transfers.get(&id).map(|t| TransferWrite { transfer: t.clone(), insert })
            })
            .collect();
        Written { inserted, updated, transfers, events, copies, head }
    }
}

/// A refusal a transfer create may remember.
struct Refused(Reason, String);

fn repeat(old: &Transfer, t: &NewTransfer) -> Result<Transfer> {
    let mut fields = Vec::new();
    if old.debit_account != t.debit_account {
        fields.push("debit_account");
    }
    if old.credit_account != t.credit_account {
        fields.push("credit_account");
    }
    if old.amount != t.amount {
        fields.push("amount");
    }
    if t.ledger.is_some_and(|l| l != old.ledger) {
        fields.push("ledger");
    }
    if old.code != t.code {
        fields.push("code");
    }
    if old.metadata != t.metadata {
        fields.push("metadata");
    }
    if old.pending != t.pending {
        fields.push("pending");
    }
    if old.timeout_ms != t.timeout_ms {
        fields.push("timeout_ms");
    }
    if let Some(reason) = old.reason {
        return Err(Error::new(
            ErrorCode::InvalidState,
            format!("transfer {:?} was refused ({reason})", old.id),
        )
        .with_details(json!({ "reason": "id_already_failed", "original_reason": reason.as_str() })));
    }
    if !fields.is_empty() {
        return Err(Error::new(
            ErrorCode::Conflict,
            format!("transfer {:?} exists with other {}", old.id, fields.join(", ")),
        )
        .with_details(json!({ "fields": fields })));
    }
    Ok(Transfer { duplicate: true, ..old.clone() })
}

fn with_index(e: Error, i: usize) -> Error {
    let mut details = match e.details.clone() {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    details.insert("index".into(), json!(i));
    e.with_details(Value::Object(details))
}

trait WithinField {
    fn within_field(self, field: &str) -> Self;
}

impl WithinField for Error {
    fn within_field(mut self, field: &str) -> Error {
        self.field = Some(field.to_string());
        self
    }
}

/// 404 for an account.
pub fn account_not_found(id: &str) -> Error {
    Error::new(ErrorCode::NotFound, format!("no account {id:?}"))
}

/// 404 for a transfer.
pub fn transfer_not_found(id: &str) -> Error {
    Error::new(ErrorCode::NotFound, format!("no transfer {id:?}"))
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding of a verify.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// `chain`, `gap`, `event`, `snapshot`, `balance`, `missing_account`, `unknown_account`,
    /// `conservation`.
    pub kind: String,
    /// The account concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// The event concerned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    /// What the replay says.
    #[schema(value_type = Object)]
    pub expected: Value,
    /// What is stored.
    #[schema(value_type = Object)]
    pub actual: Value,
}

/// How one event moves one side's balances: `(balances, amount, amount held)`.
type Shift = fn(&mut Balances, i64, i64);

/// A replay of the chain: balances rebuilt from events, the chain and digests checked.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    /// Balances (and ledger) by account, as replayed.
    pub accounts: BTreeMap<String, (u32, Balances)>,
    /// The last event replayed.
    pub seq: i64,
    /// Its hash.
    pub hash: [u8; 32],
    /// Findings so far.
    pub problems: Vec<Problem>,
}

impl Replay {
    /// A replay starting after `seq` (hash `hash`) from the balances then.
    pub fn from(seq: i64, hash: [u8; 32], accounts: BTreeMap<String, (u32, Balances)>) -> Replay {
        Replay { accounts, seq, hash, problems: Vec::new() }
    }

    /// The order-independent digest of the replayed balances.
    pub fn digest(&self) -> [u8; 32] {
        let mut d = [0u8; 32];
        for (id, (ledger, s)) in &self.accounts {
            xor_into(&mut d, &term(id, *ledger, s));
        }
        d
    }

    fn problem(
        &mut self,
        kind: &str,
        account: Option<&str>,
        seq: Option<i64>,
        expected: Value,
        actual: Value,
    ) {
        if self.problems.len() < 1000 {
            self.problems.push(Problem {
                kind: kind.into(),
                account: account.map(str::to_string),
                seq,
                expected,
                actual,
            });
        }
    }

    /// Applies the next stored event, checking its seq and hash.
    pub fn apply(&mut self, e: &LedgerEvent) {
        if e.seq != self.seq + 1 {
            self.problem("gap", None, Some(e.seq), json!(self.seq + 1), json!(e.seq));
        }
        let hash = chain(&self.hash, e.seq, &e.kind, e.at, &e.data);
        if hash != e.hash {
            self.problem("chain", None, Some(e.seq), json!(hex(&hash)), json!(hex(&e.hash)));
        }
        self.seq = e.seq;
        self.hash = e.hash;
        let Ok(data) = serde_json::from_str::<Value>(&e.data) else {
            self.problem("event", None, Some(e.seq), json!("JSON data"), json!(e.data));
            return;
        };
        let s = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        let n = |k: &str| data.get(k).and_then(Value::as_i64).unwrap_or_default();
        let mut moves: Vec<(String, Shift, i64, i64)> = Vec::new();
        match e.kind.as_str() {
            "account.created" => {
                let id = s("id");
                let ledger = u32::try_from(n("ledger")).unwrap_or_default();
                if self.accounts.insert(id.clone(), (ledger, Balances::default())).is_some() {
                    self.problem(
                        "event",
                        Some(&id),
                        Some(e.seq),
                        json!("a new account"),
                        json!("created twice"),
                    );
                }
            }
            "transfer.pending" => {
                let a = n("amount");
                moves.push((s("debit_account"), |b, a, _| b.debits_pending += a, a, 0));
                moves.push((s("credit_account"), |b, a, _| b.credits_pending += a, a, 0));
            }
            "transfer.posted" => {
                let (a, held) = (n("amount"), n("pending_amount"));
                moves.push((
                    s("debit_account"),
                    |b, a, h| {
                        b.debits_posted += a;
                        b.debits_pending -= h;
                    },
                    a,
                    held,
                ));
                moves.push((
                    s("credit_account"),
                    |b, a, h| {
                        b.credits_posted += a;
                        b.credits_pending -= h;
                    },
                    a,
                    held,
                ));
            }
            "transfer.voided" | "transfer.expired" => {
                let a = n("amount");
                moves.push((s("debit_account"), |b, a, _| b.debits_pending -= a, a, 0));
                moves.push((s("credit_account"), |b, a, _| b.credits_pending -= a, a, 0));
            }
            "account.closed" | "ledger.repaired" => {}
            other => self.problem("event", None, Some(e.seq), json!("a known type"), json!(other)),
        }
        for (id, f, a, h) in moves {
            match self.accounts.get_mut(&id) {
                Some((_, b)) => f(b, a, h),
                None => {
                    self.problem("event", Some(&id), Some(e.seq), json!("an existing account"), json!(null))
                }
            }
        }
    }

    /// Compares the replayed balances with the live ones (and checks conservation per ledger).
    pub fn compare(&mut self, live: &BTreeMap<String, (u32, Balances)>) {
        for (id, (ledger, b)) in &self.accounts.clone() {
            match live.get(id) {
                None => self.problem("missing_account", Some(id), None, json!(b), json!(null)),
                Some((l, lb)) if l != ledger || lb != b => {
                    self.problem("balance", Some(id), None, json!(b), json!(lb));
                }
                Some(_) => {}
            }
        }
        for (id, (_, b)) in live {
            if !self.accounts.contains_key(id) {
                self.problem("unknown_account", Some(id), None, json!(null), json!(b));
            }
        }
        let mut per: BTreeMap<u32, (i128, i128, i128, i128)> = BTreeMap::new();
        for (ledger, b) in live.values() {
            let t = per.entry(*ledger).or_default();
            t.0 += i128::from(b.debits_posted);
            t.1 += i128::from(b.credits_posted);
            t.2 += i128::from(b.debits_pending);
            t.3 += i128::from(b.credits_pending);
        }
        for (ledger, t) in per {
            if t.0 != t.1 || t.2 != t.3 {
                self.problem(
                    "conservation",
                    None,
                    None,
                    json!({"ledger": ledger, "debits_posted": t.1.to_string(), "debits_pending": t.3.to_string()}),
                    json!({"ledger": ledger, "debits_posted": t.0.to_string(), "debits_pending": t.2.to_string()}),
                );
            }
        }
    }

    /// Records a snapshot's digest disagreeing with the replay at its seq.
    pub fn check_snapshot(&mut self, seq: i64, stored: &[u8; 32]) {
        let d = self.digest();
        if &d != stored {
            self.problem("snapshot", None, Some(seq), json!(hex(&d)), json!(hex(stored)));
        }
    }

    /// The accounts a problem names.
    pub fn accounts_named(&self) -> Vec<String> {
        let mut v: Vec<String> = self.problems.iter().filter_map(|p| p.account.clone()).collect();
        v.sort();
        v.dedup();
        v
    }
}

/// What `POST /v1/ledger/verify` answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Verification {
    /// No problem found.
    pub ok: bool,
    /// The last event's seq.
    pub head_seq: i64,
    /// Hex digest of the replayed balances.
    pub digest: String,
    /// What disagrees.
    pub problems: Vec<Problem>,
    /// Whether balances were rewritten from the chain.
    #[serde(default)]
    pub repaired: bool,
    /// Events replayed.
    #[serde(default)]
    pub events_replayed: i64,
}

/// The copies of a ledger event for `/v1/events`: one per account it concerns (subject kind
/// `account`), with the ledger event's data and `seq`; none for `ledger.repaired`.
pub fn copies(e: &LedgerEvent) -> Vec<crate::Event> {
    let mut out = Vec::new();
    if let Ok(data) = serde_json::from_str::<Value>(&e.data) {
        copies_of(e.seq, &e.kind, e.at, &data, &mut out);
    }
    out
}

/// [`copies`] of an event from its data as a value.
fn copies_of(seq: i64, kind: &str, at: i64, data: &Value, out: &mut Vec<crate::Event>) {
    use crate::{EventType, Subject, SubjectKind};
    let kind_str = kind;
    let kind = match kind_str {
        "account.created" => EventType::AccountCreated,
        "account.closed" => EventType::AccountClosed,
        "transfer.pending" => EventType::TransferPending,
        "transfer.posted" => EventType::TransferPosted,
        "transfer.voided" => EventType::TransferVoided,
        "transfer.expired" => EventType::TransferExpired,
        _ => return,
    };
    let Value::Object(data) = data else { return };
    let mut data = data.clone();
    data.insert("seq".into(), json!(seq));
    let job_id = data.get("job_id").and_then(Value::as_str).and_then(|s| Uuid::parse_str(s).ok());
    let sides: Vec<String> = if kind_str.starts_with("account.") {
        vec![data.get("id").and_then(Value::as_str).unwrap_or_default().to_string()]
    } else {
        ["debit_account", "credit_account"]
            .iter()
            .map(|k| data.get(*k).and_then(Value::as_str).unwrap_or_default().to_string())
            .collect()
    };
    let data = Value::Object(data);
    out.extend(sides.into_iter().map(|id| crate::Event {
        cursor: 0,
        kind,
        subject: Subject::new(SubjectKind::Account, id),
        at: Timestamp(at),
        queue: None,
        job_id,
        tags: Vec::new(),
        data: Some(data.clone()),
    }));
}

/// A transfer's row-level decoding from stored columns.
pub fn state_of(text: &str) -> Result<TransferState> {
    TransferState::parse(text)
        .ok_or_else(|| Error::internal(format!("stored transfer state {text:?} is unknown")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acct(id: &str, flags: Flags) -> Op {
        Op::CreateAccount(NewAccount { id: id.into(), ledger: 1, code: 0, flags, metadata: Map::new() })
    }

    fn tr(id: &str, d: &str, c: &str, amount: i64, pending: bool) -> Op {
        Op::Transfer(NewTransfer {
            id: id.into(),
            debit_account: d.into(),
            credit_account: c.into(),
            amount,
            ledger: None,
            code: 0,
            metadata: Map::new(),
            pending,
            timeout_ms: None,
            job_id: None,
        })
    }

    fn reason(e: &Error) -> String {
        e.details.as_ref().and_then(|d| d["reason"].as_str()).unwrap_or_default().to_string()
    }

    #[test]
    fn flags_bound_debits_and_refusals_are_remembered() {
        let mut b = Book::new(0, Head::default(), vec![], vec![], 1);
        let strict = Flags { debits_must_not_exceed_credits: true, ..Flags::default() };
        b.apply(&acct("bank", Flags::default()), true).unwrap();
        b.apply(&acct("a", strict), true).unwrap();
        b.apply(&acct("c", Flags::default()), true).unwrap();
        b.apply(&tr("t1", "bank", "a", 10, false), true).unwrap();
        b.apply(&tr("t2", "a", "c", 6, true), true).unwrap();
        let e = b.apply(&tr("t3", "a", "c", 5, false), true).unwrap_err();
        assert_eq!(reason(&e), "exceeds_credits");
        let e = b.apply(&tr("t3", "a", "c", 1, false), true).unwrap_err();
        assert_eq!(reason(&e), "id_already_failed");
        b.apply(&Op::Post { id: "t2".into(), amount: Some(4) }, true).unwrap();
        assert_eq!(b.account("a").unwrap().balance, 6);
        assert_eq!(b.account("a").unwrap().sums.debits_pending, 0);
        let dup = b.apply(&Op::Post { id: "t2".into(), amount: None }, true).unwrap();
        assert!(matches!(dup, Applied::Transfer(t) if t.duplicate));
        let e = b.apply(&Op::Void { id: "t2".into() }, true).unwrap_err();
        assert_eq!(reason(&e), "pending_already_posted");
        let w = b.finish();
        let head = w.head;
        let mut r = Replay::default();
        for e in &w.events {
            r.apply(e);
        }
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.digest(), head.digest, "the running digest equals the replay's");
        let live = w.inserted.iter().map(|a| (a.id.clone(), (a.ledger, a.sums))).collect();
        r.compare(&live);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
    }

    #[test]
    fn atomic_batches_leave_the_book_unchanged_on_error() {
        let mut b = Book::new(0, Head::default(), vec![], vec![], 1);
        b.apply(&acct("x", Flags::default()), true).unwrap();
        b.apply(&acct("y", Flags::default()), true).unwrap();
        let before = b.head;
        let e = b.apply_atomic(&[tr("a", "x", "y", 1, false), tr("b", "x", "nope", 1, false)]).unwrap_err();
        assert_eq!(e.details.unwrap()["index"], 1);
        assert_eq!(b.head, before);
        assert!(b.transfer("a").is_none());
    }

    #[test]
    fn due_pendings_expire_before_they_count() {
        let strict = Flags { debits_must_not_exceed_credits: true, ..Flags::default() };
        let mut b = Book::new(0, Head::default(), vec![], vec![], 1);
        b.apply(&acct("bank", Flags::default()), true).unwrap();
        b.apply(&acct("a", strict), true).unwrap();
        b.apply(&tr("fund", "bank", "a", 5, false), true).unwrap();
        let mut t = tr("hold", "a", "bank", 5, true);
        if let Op::Transfer(t) = &mut t {
            t.timeout_ms = Some(10);
        }
        b.apply(&t, true).unwrap();
        let w = b.finish();
        let accounts = w.inserted.clone();
        let transfers: Vec<Transfer> = w.transfers.iter().map(|t| t.transfer.clone()).collect();
        let mut b = Book::new(10, w.head, accounts, transfers, 1);
        assert_eq!(b.expire_due(), 1);
        b.apply(&tr("again", "a", "bank", 5, false), true).unwrap();
    }

    #[test]
    fn worker_names_are_percent_encoded_and_ids_checked() {
        assert_eq!(worker_account("gpu box"), "worker:gpu%20box");
        assert_eq!(worker_account("a.b_c:d-1"), "worker:a.b_c:d-1");
        assert!(valid_id(&"a".repeat(512), 512).is_ok());
        assert!(valid_id(&"a".repeat(513), 512).is_err());
        assert!(valid_id("a b", 512).is_err());
        assert!(valid_id("", 512).is_err());
        assert_eq!(unhex(&hex(&[7; 32])), Some([7; 32]));
    }
}
