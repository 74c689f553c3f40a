//! `ferry ledger`: the double-entry ledger: accounts (list, show, add, close), transfers
//! (make, post, void), an account's statement, verify (exit 1 unless ok), and `import-json`,
//! which moves a legacy `ledger.json`'s balances in as one transfer per worker. `--json` prints
//! the server's JSON.

use crate::cmd::jobs::more;
use crate::output::{fail, print_json, show, table};
use crate::{ClientOpts, PageArgs};
use clap::Subcommand;
use ferry_core::ErrorCode;
use ferry_core::ledger::{
    Account, Flags, MAX_AMOUNT, Transfer, TransferState, WORKER_PREFIX, worker_account,
};
use ferry_core::time::format_ms;
use ferry_core::wire::{AccountBody, TransferBody};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The account `import-json` moves balances out of.
const GENESIS: &str = "genesis";

/// Prefix of the transfers `import-json` makes (then the worker name, encoded as in
/// [`worker_account`]).
const IMPORT_PREFIX: &str = "import:";

/// Transfers per `import-json` request (well under the server's `limits.max_batch`).
const IMPORT_CHUNK: usize = 1000;

/// `ferry ledger ...`.
#[derive(Subcommand, Debug)]
pub enum LedgerCmd {
    /// Accounts: list, show, add, close.
    Accounts {
        #[command(subcommand)]
        cmd: AccountsCmd,
    },
    /// Move AMOUNT from one account to another (ID is the idempotency key: a repeat is a
    /// duplicate, not a second transfer).
    Transfer {
        /// The transfer's id.
        id: String,
        /// The account debited.
        #[arg(long)]
        from: String,
        /// The account credited.
        #[arg(long)]
        to: String,
        /// 1..=2^53-1.
        #[arg(long)]
        amount: i64,
        /// The accounts' ledger [default: theirs].
        #[arg(long)]
        ledger: Option<u32>,
        /// A user code [default 0].
        #[arg(long)]
        code: Option<u16>,
        /// Only hold the amount until `ferry ledger post` or `void` (two-phase).
        #[arg(long)]
        pending: bool,
        /// A pending transfer expires after this long [default: never].
        #[arg(long, requires = "pending")]
        timeout_ms: Option<i64>,
        /// User data, a JSON object.
        #[arg(long)]
        metadata: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Post a pending transfer: all of it, or --amount (the rest is released).
    Post {
        /// The pending transfer's id.
        id: String,
        /// How much to post [default: all of it].
        #[arg(long)]
        amount: Option<i64>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Void a pending transfer, releasing what it holds.
    Void {
        /// The pending transfer's id.
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// An account's transfers (either side), oldest first.
    Statement {
        /// The account's id.
        account: String,
        #[command(flatten)]
        page: PageArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Replay the ledger's event chain and check it against the live balances; exit 1 unless
    /// ok.
    Verify {
        /// Replay from the first event (default: from the last snapshot).
        #[arg(long)]
        full: bool,
        /// Rewrite the balances from an intact chain (token scope admin).
        #[arg(long)]
        repair: bool,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Import a legacy ledger.json (`{"accounts": {"<worker>": <balance>, ...}}`): one transfer
    /// `import:<worker>` from `genesis` to `worker:<worker>` each; a re-run imports nothing
    /// twice; a changed balance or a non-integer amount is reported and exits 1.
    ImportJson {
        /// The ledger.json file.
        file: PathBuf,
        /// Multiply each balance by this (e.g. 100 for cents); the result must be a whole
        /// number.
        #[arg(long, default_value = "1")]
        scale: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// `ferry ledger accounts ...`.
#[derive(Subcommand, Debug)]
pub enum AccountsCmd {
    /// Accounts in id order.
    List {
        /// Only this ledger.
        #[arg(long)]
        ledger: Option<u32>,
        #[command(flatten)]
        page: PageArgs,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// One account with its balances.
    Show {
        /// The account's id.
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Create an account (a repeat with the same fields is a duplicate).
    Add {
        /// The account's id: 1-512 bytes of A-Z a-z 0-9 . _ : % -
        id: String,
        /// Its ledger [default 1].
        #[arg(long)]
        ledger: Option<u32>,
        /// A user code [default 0].
        #[arg(long)]
        code: Option<u16>,
        /// Flags, comma-separated: debits_must_not_exceed_credits or
        /// credits_must_not_exceed_debits, closed.
        #[arg(long, value_delimiter = ',')]
        flags: Vec<String>,
        /// User data, a JSON object.
        #[arg(long)]
        metadata: Option<String>,
        #[command(flatten)]
        client: ClientOpts,
    },
    /// Close an account: no new transfers; pending ones still settle.
    Close {
        /// The account's id.
        id: String,
        #[command(flatten)]
        client: ClientOpts,
    },
}

/// Parses `--metadata`: a JSON object.
fn parse_metadata(text: Option<&str>) -> Result<Option<Map<String, Value>>, String> {
    match text.map(serde_json::from_str::<Value>) {
        None => Ok(None),
        Some(Ok(Value::Object(m))) => Ok(Some(m)),
        Some(Ok(_)) => Err("--metadata must be a JSON object".into()),
        Some(Err(e)) => Err(format!("--metadata is not valid JSON: {e}")),
    }
}

/// Parses `--flags`.
fn parse_flags(names: &[String]) -> Result<Option<Flags>, String> {
    if names.is_empty() {
        return Ok(None);
    }
    let mut flags = Flags::default();
    for n in names {
        let n = n.trim();
        if !n.is_empty() && !flags.set(n) {
            return Err(format!("unknown flag {n:?} (one of {})", Flags::NAMES.join(", ")));
        }
    }
    Ok(Some(flags))
}

/// An account's flags for people: names, or `-`.
fn flag_names(f: Flags) -> String {
    let names = f.names();
    if names.is_empty() { "-".into() } else { names.join(",") }
}

fn describe_account(a: &Account) {
    let rows = [
        ("id", format!("{}{}", a.id, if a.duplicate { " (duplicate)" } else { "" })),
        ("ledger", a.ledger.to_string()),
        ("code", a.code.to_string()),
        ("flags", flag_names(a.flags)),
        ("balance", a.balance.to_string()),
        ("available", a.available.to_string()),
        ("debits_posted", a.sums.debits_posted.to_string()),
        ("credits_posted", a.sums.credits_posted.to_string()),
        ("debits_pending", a.sums.debits_pending.to_string()),
        ("credits_pending", a.sums.credits_pending.to_string()),
        ("metadata", Value::Object(a.metadata.clone()).to_string()),
        ("created_at", format_ms(a.created_at.0)),
        ("closed_at", a.closed_at.map_or_else(|| "-".into(), |t| format_ms(t.0))),
    ];
    for (k, v) in rows {
        println!("{k:<17}{v}");
    }
}

/// A transfer as one line: id, state, amount, debit -> credit, and what else matters.
fn transfer_line(t: &Transfer) -> String {
    let mut s =
        format!("{} {} {} {} -> {}", t.id, t.state.as_str(), t.amount, t.debit_account, t.credit_account);
    if let Some(p) = t.posted_amount.filter(|p| *p != t.amount) {
        s.push_str(&format!(" (posted {p})"));
    }
    if let Some(r) = t.reason {
        s.push_str(&format!(" ({r})"));
    }
    if t.state == TransferState::Pending
        && let Some(e) = t.expires_at
    {
        s.push_str(&format!(" expires {}", format_ms(e.0)));
    }
    if t.duplicate {
        s.push_str(" (duplicate)");
    }
    s
}

/// Runs `ferry ledger ...`.
pub async fn ledger(cmd: LedgerCmd) -> i32 {
    match cmd {
        LedgerCmd::Accounts { cmd } => accounts(cmd).await,
        LedgerCmd::Transfer {
            id,
            from,
            to,
            amount,
            ledger,
            code,
            pending,
            timeout_ms,
            metadata,
            client: o,
        } => {
            let metadata = match parse_metadata(metadata.as_deref()) {
                Ok(m) => m,
                Err(e) => return fail(e),
            };
            let body = TransferBody {
                id,
                debit_account: from,
                credit_account: to,
                amount,
                ledger: ledger.map(i64::from),
                code: code.map(i64::from),
                metadata,
                pending: pending.then_some(true),
                timeout_ms,
            };
            show(o.json, o.client().transfer(&body).await, |t| println!("{}", transfer_line(&t)))
        }
        LedgerCmd::Post { id, amount, client: o } => {
            show(o.json, o.client().post_transfer(&id, amount).await, |t| println!("{}", transfer_line(&t)))
        }
        LedgerCmd::Void { id, client: o } => {
            show(o.json, o.client().void_transfer(&id).await, |t| println!("{}", transfer_line(&t)))
        }
        LedgerCmd::Statement { account, page: PageArgs { limit, cursor }, client: o } => {
            let r = o.client().statement(&account, Some(limit), cursor.as_deref()).await;
            show(o.json, r, |p| {
                let rows: Vec<Vec<String>> = p
                    .transfers
                    .iter()
                    .map(|t| {
                        let (side, with) = if t.debit_account == account {
                            ("debit", t.credit_account.clone())
                        } else {
                            ("credit", t.debit_account.clone())
                        };
                        vec![
                            t.seq.map_or_else(|| "-".into(), |s| s.to_string()),
                            t.id.clone(),
                            t.state.as_str().to_string(),
                            side.to_string(),
                            with,
                            t.amount.to_string(),
                            t.posted_amount.map_or_else(|| "-".into(), |a| a.to_string()),
                            format_ms(t.created_at.0),
                        ]
                    })
                    .collect();
                table(&["seq", "id", "state", "side", "with", "amount", "posted", "created_at"], &rows);
                more(p.next_cursor);
            })
        }
        LedgerCmd::Verify { full, repair, client: o } => match o.client().verify_ledger(full, repair).await {
            Err(e) => fail(e),
            Ok(v) => {
                if o.json {
                    print_json(&v);
                } else {
                    println!("ok        {}", v.ok);
                    println!("head_seq  {}", v.head_seq);
                    println!("digest    {}", v.digest);
                    println!("replayed  {} events", v.events_replayed);
                    if v.repaired {
                        println!("repaired  balances rewritten from the chain");
                    }
                    println!("problems  {}", v.problems.len());
                    if !v.problems.is_empty() {
                        let dash = || "-".to_string();
                        let rows: Vec<Vec<String>> = v
                            .problems
                            .iter()
                            .map(|p| {
                                vec![
                                    p.kind.clone(),
                                    p.account.clone().unwrap_or_else(dash),
                                    p.seq.map_or_else(dash, |s| s.to_string()),
                                    p.expected.to_string(),
                                    p.actual.to_string(),
                                ]
                            })
                            .collect();
                        table(&["kind", "account", "seq", "expected", "actual"], &rows);
                    }
                }
                if v.ok { 0 } else { 1 }
            }
        },
        LedgerCmd::ImportJson { file, scale, client: o } => import_json(&file, &scale, &o).await,
    }
}

async fn accounts(cmd: AccountsCmd) -> i32 {
    match cmd {
        AccountsCmd::List { ledger, page: PageArgs { limit, cursor }, client: o } => {
            let r = o.client().accounts(ledger, Some(limit), cursor.as_deref()).await;
            show(o.json, r, |p| {
                let rows: Vec<Vec<String>> = p
                    .accounts
                    .iter()
                    .map(|a| {
                        vec![
                            a.id.clone(),
                            a.ledger.to_string(),
                            a.code.to_string(),
                            flag_names(a.flags),
                            a.balance.to_string(),
                            a.available.to_string(),
                            a.sums.debits_pending.to_string(),
                            a.sums.credits_pending.to_string(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "id",
                        "ledger",
                        "code",
                        "flags",
                        "balance",
                        "available",
                        "debits_pending",
                        "credits_pending",
                    ],
                    &rows,
                );
                more(p.next_cursor);
            })
        }
        AccountsCmd::Show { id, client: o } => {
            show(o.json, o.client().account(&id).await, |a| describe_account(&a))
        }
        AccountsCmd::Add { id, ledger, code, flags, metadata, client: o } => {
            let flags = match parse_flags(&flags) {
                Ok(f) => f,
                Err(e) => return fail(e),
            };
            let metadata = match parse_metadata(metadata.as_deref()) {
                Ok(m) => m,
                Err(e) => return fail(e),
            };
            let body =
                AccountBody { id, ledger: ledger.map(i64::from), code: code.map(i64::from), flags, metadata };
            show(o.json, o.client().create_account(&body).await, |a| describe_account(&a))
        }
        AccountsCmd::Close { id, client: o } => {
            show(o.json, o.client().close_account(&id).await, |a| describe_account(&a))
        }
    }
}

/// An exact decimal number: `digits × 10^exp`, negated when `negative`. Normalized: no
/// leading or trailing zero digit (zero is no digits, not negative, exp 0), so a value is a
/// whole number exactly when `exp >= 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    /// Most significant first, each 0..=9.
    digits: Vec<u8>,
    exp: i64,
}

impl Decimal {
    fn new(negative: bool, digits: Vec<u8>, mut exp: i64) -> Decimal {
        let mut digits: Vec<u8> = digits.into_iter().skip_while(|d| *d == 0).collect();
        while digits.last() == Some(&0) {
            digits.pop();
            exp += 1;
        }
        if digits.is_empty() {
            return Decimal { negative: false, digits, exp: 0 };
        }
        Decimal { negative, digits, exp }
    }

    /// Parses a JSON number's text (`-12`, `0.505`, `1e3`, `2.5E-1`); a leading `+` is also
    /// taken. `None` when it is not one.
    fn parse(text: &str) -> Option<Decimal> {
        let b = text.trim().as_bytes();
        let mut i = 0;
        let negative = b.first() == Some(&b'-');
        if matches!(b.first(), Some(b'-' | b'+')) {
            i += 1;
        }
        let mut digits = Vec::new();
        let mut exp: i64 = 0;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            digits.push(b[i] - b'0');
            i += 1;
        }
        if i == start {
            return None;
        }
        if i < b.len() && b[i] == b'.' {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                digits.push(b[i] - b'0');
                exp -= 1;
                i += 1;
            }
            if i == start {
                return None;
            }
        }
        if i < b.len() && matches!(b[i], b'e' | b'E') {
            i += 1;
            let minus = i < b.len() && b[i] == b'-';
            if i < b.len() && matches!(b[i], b'+' | b'-') {
                i += 1;
            }
            let start = i;
            let mut e: i64 = 0;
            while i < b.len() && b[i].is_ascii_digit() {
                // Saturates far beyond any whole amount's size: the verdict stays the same.
                e = (e * 10 + i64::from(b[i] - b'0')).min(1_000_000_000);
                i += 1;
            }
            if i == start {
                return None;
            }
            exp += if minus { -e } else { e };
        }
        if i != b.len() {
            return None;
        }
        Some(Decimal::new(negative, digits, exp))
    }

    fn is_zero(&self) -> bool {
        self.digits.is_empty()
    }

    /// The exact product.
    fn mul(&self, other: &Decimal) -> Decimal {
        if self.is_zero() || other.is_zero() {
            return Decimal::new(false, Vec::new(), 0);
        }
        // Schoolbook multiplication, least significant digit first.
        let (a, b): (Vec<u32>, Vec<u32>) = (
            self.digits.iter().rev().map(|d| u32::from(*d)).collect(),
            other.digits.iter().rev().map(|d| u32::from(*d)).collect(),
        );
        let mut acc = vec![0u32; a.len() + b.len()];
        for (i, x) in a.iter().enumerate() {
            let mut carry = 0u32;
            for (j, y) in b.iter().enumerate() {
                let v = acc[i + j] + x * y + carry;
                acc[i + j] = v % 10;
                carry = v / 10;
            }
            let mut k = i + b.len();
            while carry > 0 {
                let v = acc[k] + carry;
                acc[k] = v % 10;
                carry = v / 10;
                k += 1;
            }
        }
        let digits: Vec<u8> = acc.iter().rev().map(|d| *d as u8).collect();
        Decimal::new(self.negative != other.negative, digits, self.exp + other.exp)
    }

    /// The amount this is: `Ok(None)` for zero; else a whole number 1..=2^53-1, or why not.
    fn amount(&self) -> Result<Option<i64>, &'static str> {
        if self.is_zero() {
            return Ok(None);
        }
        if self.negative {
            return Err("is negative");
        }
        if self.exp < 0 {
            return Err("is not a whole number");
        }
        // 2^53-1 has 16 digits.
        if self.digits.len() as i64 + self.exp > 16 {
            return Err("is over 2^53-1");
        }
        let mut v: i64 = 0;
        for d in &self.digits {
            v = v * 10 + i64::from(*d);
        }
        for _ in 0..self.exp {
            v *= 10;
        }
        if v > MAX_AMOUNT { Err("is over 2^53-1") } else { Ok(Some(v)) }
    }
}

impl std::fmt::Display for Decimal {
    /// Plain notation (`50.5`, `0.0025`, `1200`); scientific past 30 zeros.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_zero() {
            return f.write_str("0");
        }
        let sign = if self.negative { "-" } else { "" };
        let digits: String = self.digits.iter().map(|d| char::from(b'0' + d)).collect();
        let point = self.digits.len() as i64 + self.exp;
        if self.exp > 30 || point < -30 {
            return write!(f, "{sign}{digits}e{}", self.exp);
        }
        if self.exp >= 0 {
            write!(f, "{sign}{digits}{}", "0".repeat(self.exp as usize))
        } else if point > 0 {
            let (whole, frac) = digits.split_at(point as usize);
            write!(f, "{sign}{whole}.{frac}")
        } else {
            write!(f, "{sign}0.{}{digits}", "0".repeat((-point) as usize))
        }
    }
}

/// The entries of a legacy ledger.json: (worker id, the balance's number text as written).
/// `accounts` is an object worker id → balance, or a list of objects with `id` (or `worker`)
/// and `balance`; other top-level keys are ignored. A balance written as a string of a number
/// is taken too.
fn legacy_entries(text: &str) -> Result<Vec<(String, String)>, String> {
    #[derive(Deserialize)]
    struct LegacyFile {
        accounts: Box<RawValue>,
    }
    #[derive(Deserialize)]
    struct LegacyEntry {
        #[serde(default)]
        id: Option<Value>,
        #[serde(default)]
        worker: Option<Value>,
        balance: Box<RawValue>,
    }
    let file: LegacyFile = serde_json::from_str(text)
        .map_err(|e| format!("not a ledger.json ({{\"accounts\": {{...}}}}): {e}"))?;
    let accounts = file.accounts.get().trim_start();
    if accounts.starts_with('{') {
        let map: BTreeMap<String, Box<RawValue>> =
            serde_json::from_str(accounts).map_err(|e| format!("\"accounts\": {e}"))?;
        Ok(map.into_iter().map(|(id, balance)| (id, number_text(&balance))).collect())
    } else if accounts.starts_with('[') {
        let list: Vec<LegacyEntry> =
            serde_json::from_str(accounts).map_err(|e| format!("\"accounts\": {e}"))?;
        list.into_iter()
            .enumerate()
            .map(|(i, e)| {
                let id = match e.id.filter(|v| !v.is_null()).or(e.worker) {
                    Some(Value::String(s)) => s,
                    Some(Value::Number(n)) => n.to_string(),
                    _ => return Err(format!("accounts[{i}] has no \"id\" or \"worker\" (a string)")),
                };
                Ok((id, number_text(&e.balance)))
            })
            .collect()
    } else {
        Err("\"accounts\" must be an object (worker id -> balance) or a list of {\"id\", \"balance\"}".into())
    }
}

/// A balance's number text: the raw JSON number, or the contents of a JSON string.
fn number_text(raw: &RawValue) -> String {
    let t = raw.get().trim();
    if t.starts_with('"') {
        serde_json::from_str::<String>(t).unwrap_or_else(|_| t.to_string())
    } else {
        t.to_string()
    }
}

/// Runs `ferry ledger import-json`.
async fn import_json(file: &Path, scale: &str, o: &ClientOpts) -> i32 {
    let scale_text = scale.trim();
    let scale = match Decimal::parse(scale_text) {
        Some(d) if !d.is_zero() && !d.negative => d,
        _ => return fail(format!("--scale must be a positive number, not {scale_text:?}")),
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => return fail(format!("cannot read {}: {e}", file.display())),
    };
    let entries = match legacy_entries(&text) {
        Ok(e) => e,
        Err(e) => return fail(format!("{}: {e}", file.display())),
    };
    let limits = ferry_core::Limits::default();
    let mut problems: Vec<String> = Vec::new();
    let (mut workers, mut bodies): (Vec<String>, Vec<TransferBody>) = (Vec::new(), Vec::new());
    let mut zero = 0usize;
    for (worker, balance) in entries {
        if worker.is_empty() {
            problems.push(format!("\"\": an empty worker id (balance {balance})"));
            continue;
        }
        let Some(value) = Decimal::parse(&balance) else {
            problems.push(format!("{worker}: balance {balance} is not a number"));
            continue;
        };
        let product = value.mul(&scale);
        let amount = match product.amount() {
            Ok(Some(a)) => a,
            Ok(None) => {
                zero += 1;
                continue;
            }
            Err(why) if scale_text == "1" => {
                problems.push(format!("{worker}: balance {balance} {why}"));
                continue;
            }
            Err(why) => {
                problems.push(format!("{worker}: balance {balance} × {scale_text} = {product} {why}"));
                continue;
            }
        };
        let account = worker_account(&worker);
        let body = TransferBody {
            id: format!("{IMPORT_PREFIX}{}", &account[WORKER_PREFIX.len()..]),
            debit_account: GENESIS.to_string(),
            credit_account: account,
            amount,
            ..TransferBody::default()
        };
        // The server's own checks (default limits) first: one bad name is reported, not sent.
        if let Err(e) = body.clone().validate(&limits) {
            problems.push(format!("{worker}: {e}"));
            continue;
        }
        workers.push(worker);
        bodies.push(body);
    }
    let client = o.client();
    match client.create_account(&AccountBody { id: GENESIS.to_string(), ..AccountBody::default() }).await {
        Ok(_) => {}
        // It exists (created otherwise): the transfers say whether it can pay.
        Err(e) if e.code() == Some(ErrorCode::Conflict) => {}
        Err(e) => return fail(format!("cannot create account {GENESIS}: {e}")),
    }
    let (mut imported, mut present) = (0usize, 0usize);
    for (c, chunk) in bodies.chunks(IMPORT_CHUNK).enumerate() {
        let results = match client.transfers_each(chunk).await {
            Ok(r) if r.len() == chunk.len() => r,
            Ok(r) => {
                return fail(format!(
                    "the server answered {} results for {} transfers (after imported {imported}, already present {present})",
                    r.len(),
                    chunk.len()
                ));
            }
            Err(e) => return fail(format!("{e} (after imported {imported}, already present {present})")),
        };
        for (i, (body, r)) in chunk.iter().zip(results).enumerate() {
            let worker = &workers[c * IMPORT_CHUNK + i];
            if r.ok {
                if r.duplicate {
                    present += 1;
                } else {
                    imported += 1;
                }
                continue;
            }
            let Some(err) = r.error else {
                problems.push(format!("{worker}: transfer {} not applied (no error given)", body.id));
                continue;
            };
            if err.code != ErrorCode::Conflict {
                problems.push(format!("{worker}: {err}"));
                continue;
            }
            // Same id, other fields: what the ledger holds says which.
            match client.get_transfer(&body.id).await {
                Ok(t) if t.amount != body.amount => problems.push(format!(
                    "{worker}: balance changed (ledger has {}, file has {})",
                    t.amount, body.amount
                )),
                Ok(_) => {
                    let fields = err.details.as_ref().and_then(|d| d.get("fields")).map(Value::to_string);
                    problems.push(format!(
                        "{worker}: transfer {} exists with other fields ({})",
                        body.id,
                        fields.unwrap_or_else(|| err.message.clone())
                    ));
                }
                Err(e) => problems.push(format!(
                    "{worker}: balance changed (ledger has ?, file has {}; reading {}: {e})",
                    body.amount, body.id
                )),
            }
        }
    }
    if o.json {
        print_json(&json!({
            "imported": imported,
            "already_present": present,
            "skipped_zero": zero,
            "problems": problems,
        }));
    } else {
        for p in &problems {
            eprintln!("ferry: {p}");
        }
        println!("imported {imported}, already present {present}, problems {}", problems.len());
    }
    if problems.is_empty() { 0 } else { 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amount(balance: &str, scale: &str) -> Result<Option<i64>, &'static str> {
        Decimal::parse(balance).unwrap().mul(&Decimal::parse(scale).unwrap()).amount()
    }

    #[test]
    fn amounts_are_exact_decimal_products() {
        assert_eq!(amount("0.5", "100"), Ok(Some(50)));
        assert_eq!(amount("0.505", "100"), Err("is not a whole number"));
        assert_eq!(amount("5.0", "1"), Ok(Some(5)));
        assert_eq!(amount("1.25e2", "1"), Ok(Some(125)));
        assert_eq!(amount("0.1", "10"), Ok(Some(1)));
        assert_eq!(amount("0.000", "100"), Ok(None));
        assert_eq!(amount("-0", "1"), Ok(None));
        assert_eq!(amount("-3", "1"), Err("is negative"));
        assert_eq!(amount("9007199254740991", "1"), Ok(Some(MAX_AMOUNT)));
        assert_eq!(amount("9007199254740992", "1"), Err("is over 2^53-1"));
        assert_eq!(amount("1e400", "1"), Err("is over 2^53-1"));
        assert_eq!(amount("1e-400", "1"), Err("is not a whole number"));
        assert_eq!(amount("2.5", "0.4"), Ok(Some(1)));
        assert!(Decimal::parse("1.").is_none());
        assert!(Decimal::parse("abc").is_none());
        assert!(Decimal::parse("1e").is_none());
        let p = Decimal::parse("0.505").unwrap().mul(&Decimal::parse("100").unwrap());
        assert_eq!(p.to_string(), "50.5");
        assert_eq!(Decimal::parse("0.0025").unwrap().to_string(), "0.0025");
        assert_eq!(Decimal::parse("12e2").unwrap().to_string(), "1200");
    }

    #[test]
    fn legacy_files_give_each_balance_as_written() {
        let e = legacy_entries(r#"{"version": 2, "accounts": {"w2": 0.505, "w1": 10}}"#).unwrap();
        assert_eq!(e, vec![("w1".to_string(), "10".to_string()), ("w2".to_string(), "0.505".to_string())]);
        let e = legacy_entries(
            r#"{"accounts": [{"worker": "gpu box", "balance": "1.50"}, {"id": "a", "balance": 3}]}"#,
        )
        .unwrap();
        assert_eq!(e, vec![("gpu box".to_string(), "1.50".to_string()), ("a".to_string(), "3".to_string())]);
        assert!(legacy_entries(r#"{"balances": {}}"#).is_err());
        assert!(legacy_entries(r#"{"accounts": 5}"#).is_err());
    }
}
