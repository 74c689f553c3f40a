//! The double-entry ledger (issue #19) end to end: the real `ferry serve` over real HTTP, with
//! raw JSON so that the wire contract itself is what is checked (`/work/ledger-contract.md`,
//! the issue's "Tests" section). Scenarios run on SQLite and on PostgreSQL (a database of their
//! own); the hot account also on three PostgreSQL nodes sharing one database. Every test that
//! ends with an intact ledger stops its server(s) with SIGTERM and runs the store's own
//! `check_invariants` on the database.
//!
//! - `hot_account_*`: account `src` (`debits_must_not_exceed_credits`) funded from `bank` with
//!   half of all the transfers (50,000 by default); `FERRY_LEDGER_HOT_CLIENTS` clients send
//!   `FERRY_LEDGER_HOT_TRANSFERS` one-unit transfers each, `src` to `dst`, every tenth sent
//!   twice (the repeat answers 200 `duplicate`, or 409 `id_already_failed` with the first
//!   refusal as `original_reason`). Exactly the funds succeed, every other transfer is refused
//!   `exceeds_credits`; a sampler reading `src` every 10 ms never sees a negative balance or
//!   available amount nor debits past credits; end balances exact, `dst`'s statement lists
//!   each success once, no refusal wrote an event (`head_seq` = accounts + successes + the
//!   funding), `verify --full` ok. `hot_account_on_three_postgres_nodes`: the same, the
//!   clients and samplers spread over three nodes.
//! - `kill_under_transfer_load_*`: `FERRY_LEDGER_KILLS` SIGKILL/restart cycles while clients
//!   send single transfers, atomic batches and non-atomic batches between a flagless bank and
//!   eight flagged accounts (so some are refused), and a resender repeats earlier ones (lost
//!   answers included). Every answer is judged against what was known of its id; after each
//!   restart the transfers acknowledged before the kill are there and a verify is ok. At the
//!   end every id's outcome is settled by resending the unknown ones; each posted transfer
//!   reads back posted and is in both accounts' statements exactly once, each refused one reads
//!   back refused and is in no statement, each refused atomic batch wrote nothing, an atomic
//!   batch is all or nothing, the balances equal the sums of the posted transfers, `head_seq`
//!   counts one event per posted transfer, `verify --full` ok.
//! - `paid_jobs_*`: `FERRY_LEDGER_PAID_JOBS` jobs paid from a funded account, 16 workers over
//!   raw HTTP (one named `gpu box`, so its account is `worker:gpu%20box`), an abandoner that
//!   claims with a 300 ms lease and never reports, a tenth of the jobs failing for good
//!   (`max_attempts` 1), a hundredth delayed an hour and cancelled, the server SIGKILLed
//!   `FERRY_LEDGER_PAID_KILLS` times. At the end: each completed job's hold is posted and
//!   `job:<id>:pay` moved its amount from `escrow` to `worker:<its worker>` (the worker
//!   `GET /v1/jobs/{id}` names, and the one whose completion was acknowledged), each dead or
//!   cancelled job's hold is voided with no pay, `escrow` nets 0 with nothing pending, the
//!   payer holds its funds less what was paid, each worker's account the sum of its jobs.
//! - `paid_job_edges_*`: a token without `ledger` (403), unknown or ferry-owned `from` (422
//!   `payment.from`), `payment.ledger` (422), too little money and a closed account (409, nothing
//!   enqueued; in a batch with `details.index`), the job view's `payment`, completion paying
//!   `worker:pe%20w`, DLQ replay holding `job:<id>:hold:1` again, a replay without funds listed in
//!   `refused` (the job stays dead), a dependency cascade and a cancel voiding holds, payment on
//!   a convoy member (422).
//! - `tamper_*`: replay equals live (the same `digest` and `head_seq` after a SIGKILL and
//!   restart, the event chain gap-free); a balance altered by SQL while stopped: after a restart
//!   ledger writes and paid enqueues answer 503 `unavailable` naming the account (with
//!   `Retry-After`), unpaid jobs run, `/readyz` is 200, `verify --full` names the account (kind
//!   `balance`), `ferry ledger verify --full` exits 1, the `ferry_ledger_writes_refused` gauge is
//!   1; a repair needs `admin`, restores the balances (the old digest again) and lifts the
//!   refusal. Then an event's `data` altered by SQL: 503 naming both of its accounts, verify
//!   names the event (kind `chain`, its `seq`), the CLI exits 1.
//! - `migrate_keeps_the_digest` (PostgreSQL): a SQLite ledger of 1,500+ events (a snapshot
//!   included) moved by `ferry migrate`: `verify --full` gives the same digest and head, the
//!   accounts and the event chain read back the same.
//! - `import_json_twice` (SQLite): `ferry ledger import-json` imports 3, then 0; a changed
//!   balance and a non-integer after `--scale` exit 1; `--scale 100` of 0.5 imports 50.
//! - `limits_sqlite`: every ledger bound one past its edge (ids 512/513 bytes, metadata
//!   4,096/4,097 bytes, amounts 2^53-1/2^53, `limits.max_batch` transfers and one more,
//!   `timeout_ms` past `limits.max_delay_ms`, a 64-bit overflow), ferry's own names (422),
//!   repeats (200 `duplicate`, 409 `conflict` with `details.fields`), posts and voids, and scopes
//!   (`read`, `produce` and queue-restricted tokens get 403, repair without `admin` 403).
//!
//! Sizes (the issue's by default; CI runs on 2 cores and may set smaller ones):
//! - `FERRY_LEDGER_HOT_CLIENTS` (default 100) x `FERRY_LEDGER_HOT_TRANSFERS` (default 1,000
//!   each): the hot account; `src` holds half their product. The full 100,000 transfers are
//!   the slowest part of this file; CI may set `FERRY_LEDGER_HOT_TRANSFERS=200`.
//! - `FERRY_LEDGER_KILLS` (default 20): SIGKILLs of the transfer-load test.
//! - `FERRY_LEDGER_PAID_JOBS` (default 10,000) and `FERRY_LEDGER_PAID_KILLS` (default 5).
//!
//! Expected run time per backend on a 2-core machine (estimates): hot account 30-90 s (SQLite)
//! and 60-240 s (PostgreSQL, also on three nodes) at the default 100,000 transfers; kills
//! 60-150 s; paid jobs 40-120 s; paid job edges, tamper, import and limits 5-30 s each; migrate
//! 20-60 s.
//!
//! PostgreSQL tests use `FERRY_TEST_PG_URL` (see `common::pg`) and are skipped with a printed
//! reason without it, unless `FERRY_REQUIRE_PG=1`. Every test body runs under a deadline.
//!
//! Beyond the contract, these tests assume: ids in URL paths are percent-decoded by the server
//! (so `worker:gpu%20box` travels as `worker:gpu%2520box`); the stored tables are
//! `ledger_accounts` (key column `id`, else `account_id`, else its first column) and
//! `ledger_events` (`seq`, and `data` as text holding the event's flat JSON with its `amount`);
//! a repaired ledger's digest equals the one before the alteration; a resent atomic batch that
//! was applied answers 2xx with every item `duplicate`; `limits.max_batch` + 1 items is 413 (or
//! 422) naming `transfers` / `accounts`, as jobs do; voiding a posted pending transfer is 409
//! `pending_already_posted`; a queue-restricted token is refused ledger writes (403); the job
//! view's `worker` is the completing worker; the ledger's 503s do not trip the storage breaker.

use crate::common::Server;
use crate::common::pg::TestDb;
use ferry_core::{Clock, SystemClock};
use ferry_store::{PgConfig, PgStore, SqliteConfig, SqliteStore, StoreCore};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// A size from the environment, or its default.
fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a count")),
        Err(_) => default,
    }
}

/// Clients of the hot-account tests.
fn hot_clients() -> usize {
    env_usize("FERRY_LEDGER_HOT_CLIENTS", 100).max(1)
}

/// Transfers each hot-account client sends.
fn hot_transfers() -> usize {
    env_usize("FERRY_LEDGER_HOT_TRANSFERS", 1_000).max(1)
}

/// All transfers of a hot-account test.
fn hot_total() -> usize {
    hot_clients() * hot_transfers()
}

/// SIGKILLs of the transfer-load test.
fn kill_cycles() -> usize {
    env_usize("FERRY_LEDGER_KILLS", 20)
}

/// Jobs of the paid-jobs test.
fn paid_jobs_knob() -> usize {
    env_usize("FERRY_LEDGER_PAID_JOBS", 10_000).max(100)
}

/// SIGKILLs of the paid-jobs test.
fn paid_kills() -> usize {
    env_usize("FERRY_LEDGER_PAID_KILLS", 5)
}

/// Fails the test if `f` takes longer than `limit` (the deadlock guard).
async fn bounded<T>(limit: Duration, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not finished within {limit:?} (deadlock guard)"))
}

#[track_caller]
fn assert_none(what: &str, errors: &[String]) {
    assert!(
        errors.is_empty(),
        "{what}: {} failures, first ones:\n{}",
        errors.len(),
        errors.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Asserts that the server never logged a panic.
fn assert_no_panic(server: &Server) {
    let log = server.log.lock().unwrap();
    let panics: Vec<String> = log
        .iter()
        .enumerate()
        .filter(|(_, l)| l.contains("panicked"))
        .map(|(i, _)| log[i..(i + 3).min(log.len())].join("\n"))
        .collect();
    assert!(panics.is_empty(), "the server panicked: {panics:#?}");
}

/// Stops `server` with SIGTERM (a clean exit asserted) and hands back its data directory.
async fn stop_clean(mut server: Server) -> tempfile::TempDir {
    assert_no_panic(&server);
    let (status, dir) = tokio::task::spawn_blocking(move || {
        let status = server.stop();
        (status, server.take_dir())
    })
    .await
    .unwrap();
    assert!(status.success(), "ferry serve exited with {status} after SIGTERM");
    dir
}

/// SIGKILLs `server` and hands back its data directory.
fn kill_keep_dir(mut server: Server) -> tempfile::TempDir {
    assert_no_panic(&server);
    server.kill();
    server.take_dir()
}

/// Where a test's servers keep their data: a data directory each (SQLite), or one PostgreSQL
/// database of the test's own that all of its servers share.
struct Backend {
    db: Option<TestDb>,
    /// The start of every server's `ferry.toml` (the PostgreSQL pool size).
    base: String,
    /// The rest of the `ferry.toml` of the test's usual servers.
    toml: String,
}

impl Backend {
    fn sqlite(toml: &str) -> Backend {
        Backend { db: None, base: String::new(), toml: toml.to_string() }
    }

    /// A fresh database; `None` (skipped) without PostgreSQL.
    async fn postgres(prefix: &str, pool: usize, toml: &str) -> Option<Backend> {
        let db = TestDb::create(prefix).await?;
        Some(Backend::on(db, pool, toml))
    }

    /// Servers on an existing database.
    fn on(db: TestDb, pool: usize, toml: &str) -> Backend {
        Backend { db: Some(db), base: format!("pg_pool_size = {pool}\n"), toml: toml.to_string() }
    }

    fn database(&self) -> Option<String> {
        self.db.as_ref().map(|d| d.url.clone())
    }

    /// A server with the test's usual config on a fresh data directory.
    async fn start(&self) -> Server {
        self.start_in(tempfile::tempdir().unwrap()).await
    }

    /// A server with the test's usual config on `dir`, started off the async threads.
    async fn start_in(&self, dir: tempfile::TempDir) -> Server {
        std::fs::write(dir.path().join("ferry.toml"), format!("{}{}", self.base, self.toml)).unwrap();
        let database = self.database();
        tokio::task::spawn_blocking(move || match &database {
            Some(url) => Server::start_with(&["--database", url.as_str()], dir),
            None => Server::start_with(&[], dir),
        })
        .await
        .unwrap()
    }

    /// Stops `server` with SIGTERM and runs the store's `check_invariants` on its database.
    async fn stop_and_check(&self, server: Server) {
        let dir = stop_clean(server).await;
        self.check_store(dir.path()).await;
    }

    /// `check_invariants` of the database (SQLite: the one in `data_dir`) finds nothing.
    async fn check_store(&self, data_dir: &std::path::Path) {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let violations = match self.database() {
            Some(url) => {
                let store =
                    PgStore::open(PgConfig::new(url), clock).await.expect("open the PostgreSQL store");
                let v = store.check_invariants().await.expect("check_invariants runs");
                store.close().await;
                v
            }
            None => {
                let config = SqliteConfig::new(data_dir.join("ferry.db"));
                let store = SqliteStore::open(config, clock).expect("open the SQLite store");
                let v = store.check_invariants().await.expect("check_invariants runs");
                store.close().await;
                v
            }
        };
        assert_none("check_invariants", &violations);
    }

    /// A PostgreSQL connection to the test's database.
    async fn pg(&self) -> tokio_postgres::Client {
        let url = self.database().expect("a PostgreSQL backend");
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        client
    }

    /// Adds `by` to `credits_posted` of `account` behind ferry's back (the server stopped).
    async fn alter_balance(&self, data_dir: &std::path::Path, account: &str, by: i64) {
        match self.database() {
            None => {
                let out = python(
                    ALTER_BALANCE_PY,
                    &[&data_dir.join("ferry.db").display().to_string(), account, &by.to_string()],
                )
                .await;
                assert_eq!(out.trim(), "1", "one ledger_accounts row of {account} altered");
            }
            Some(_) => {
                let client = self.pg().await;
                let cols: Vec<String> = client
                    .query(
                        "SELECT column_name::text FROM information_schema.columns \
                         WHERE table_name = 'ledger_accounts' ORDER BY ordinal_position",
                        &[],
                    )
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                let key = key_column(&cols);
                let sql = format!(
                    "UPDATE ledger_accounts SET credits_posted = credits_posted + $1::bigint \
                     WHERE {key} = $2::text"
                );
                let n = client.execute(sql.as_str(), &[&by, &account]).await.unwrap();
                assert_eq!(n, 1, "one ledger_accounts row of {account} altered");
            }
        }
    }

    /// Adds 1 to the `amount` in the `data` of ledger event `seq` (the server stopped).
    async fn alter_event(&self, data_dir: &std::path::Path, seq: i64) {
        match self.database() {
            None => {
                let out = python(
                    ALTER_EVENT_PY,
                    &[&data_dir.join("ferry.db").display().to_string(), &seq.to_string()],
                )
                .await;
                assert_eq!(out.trim(), "1", "one ledger_events row (seq {seq}) altered");
            }
            Some(_) => {
                let client = self.pg().await;
                let row = client
                    .query_one("SELECT data::text FROM ledger_events WHERE seq = $1::bigint", &[&seq])
                    .await
                    .unwrap();
                let text: String = row.get(0);
                let data = bump_amount(&text);
                let n = client
                    .execute(
                        "UPDATE ledger_events SET data = $1::text WHERE seq = $2::bigint",
                        &[&data, &seq],
                    )
                    .await
                    .unwrap();
                assert_eq!(n, 1, "one ledger_events row (seq {seq}) altered");
            }
        }
    }
}

/// The account key column among `cols`: `id`, else `account_id`, else the first.
fn key_column(cols: &[String]) -> String {
    for want in ["id", "account_id"] {
        if cols.iter().any(|c| c.as_str() == want) {
            return want.to_string();
        }
    }
    cols.first().cloned().expect("ledger_accounts has columns")
}

/// The event's JSON with its `amount` one higher (compact).
fn bump_amount(text: &str) -> String {
    let mut v: Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("event data is not JSON ({e}): {text}"));
    let a = v["amount"].as_i64().unwrap_or_else(|| panic!("event data without an amount: {text}"));
    v["amount"] = json!(a + 1);
    v.to_string()
}

const ALTER_BALANCE_PY: &str = r#"
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
cols = [r[1] for r in c.execute("PRAGMA table_info(ledger_accounts)")]
key = 'id' if 'id' in cols else ('account_id' if 'account_id' in cols else cols[0])
n = c.execute("UPDATE ledger_accounts SET credits_posted = credits_posted + ? WHERE " + key + " = ?",
              (int(sys.argv[3]), sys.argv[2])).rowcount
c.commit()
c.close()
print(n)
"#;

const ALTER_EVENT_PY: &str = r#"
import json, sqlite3, sys
c = sqlite3.connect(sys.argv[1])
seq = int(sys.argv[2])
(data,) = c.execute("SELECT data FROM ledger_events WHERE seq = ?", (seq,)).fetchone()
if isinstance(data, bytes):
    data = data.decode()
d = json.loads(data)
d['amount'] = d['amount'] + 1
n = c.execute("UPDATE ledger_events SET data = ? WHERE seq = ?",
              (json.dumps(d, separators=(',', ':')), seq)).rowcount
c.commit()
c.close()
print(n)
"#;

/// Runs a Python 3 script (its `sqlite3` module edits a stopped server's database, as
/// `migrate.rs` reads one); returns its standard output.
async fn python(script: &str, args: &[&str]) -> String {
    let script = script.to_string();
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("python3").arg("-c").arg(script).args(args).output().unwrap();
        assert!(out.status.success(), "python3 failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .unwrap()
}

/// A test on SQLite and one on PostgreSQL (a database of its own, named from `$prefix`) running
/// `scenario(&backend)` under `secs` seconds; the scenario starts (and restarts) its servers
/// itself, their `ferry.toml` being `toml`.
macro_rules! both_backends {
    ($scenario:ident, $sqlite:ident, $postgres:ident, $prefix:literal, $secs:expr, $toml:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $sqlite() {
            let be = Backend::sqlite($toml);
            bounded(Duration::from_secs($secs), stringify!($sqlite), $scenario(&be)).await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $postgres() {
            let Some(be) = Backend::postgres($prefix, 16, $toml).await else {
                return;
            };
            bounded(Duration::from_secs($secs), stringify!($postgres), $scenario(&be)).await;
        }
    };
}

fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(120)).build().unwrap()
}

/// One answer: status, JSON body (`Null` when empty or not JSON), and `Retry-After`.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    body: Value,
    retry_after: Option<String>,
}

impl Answer {
    /// The error code of an error body, or "".
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    /// The field an error names, or "".
    fn field(&self) -> &str {
        self.body["error"]["field"].as_str().unwrap_or("")
    }

    /// The error's `details` (`Null` when none).
    fn details(&self) -> &Value {
        &self.body["error"]["details"]
    }

    /// `details.reason` of a refusal, or "".
    fn reason(&self) -> &str {
        self.details()["reason"].as_str().unwrap_or("")
    }

    fn brief(&self) -> String {
        let mut s = format!("{} {}", self.status, self.body);
        if s.len() > 600 {
            let cut = (0..=600).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
            s.truncate(cut);
            s.push_str("...");
        }
        s
    }
}

/// Asserts a success with `status` and returns the body.
#[track_caller]
fn ok<'a>(a: &'a Answer, status: u16, what: &str) -> &'a Value {
    assert_eq!(a.status, status, "{what}: expected {status}, got {}", a.brief());
    &a.body
}

/// Asserts an error answer (`status`, `code`, the error shape) and returns its `details`.
#[track_caller]
fn refused<'a>(a: &'a Answer, status: u16, code: &str, what: &str) -> &'a Value {
    assert_eq!((a.status, a.code()), (status, code), "{what}: expected {status} {code}, got {}", a.brief());
    let m = a.body["error"]["message"].as_str();
    assert!(m.is_some_and(|m| !m.is_empty()), "{what}: an error without a message: {}", a.brief());
    a.details()
}

/// Asserts a 422 `validation_failed` naming `field`.
#[track_caller]
fn refused_field(a: &Answer, field: &str, what: &str) {
    refused(a, 422, "validation_failed", what);
    assert_eq!(a.field(), field, "{what}: the field named: {}", a.brief());
}

/// Asserts a 413 `payload_too_large` naming `field`.
#[track_caller]
fn too_large(a: &Answer, field: &str, what: &str) {
    refused(a, 413, "payload_too_large", what);
    assert_eq!(a.field(), field, "{what}: the field named: {}", a.brief());
}

/// Asserts a 409 `invalid_state` with `details.reason` `reason`; returns the details.
#[track_caller]
fn refused_reason<'a>(a: &'a Answer, reason: &str, what: &str) -> &'a Value {
    let d = refused(a, 409, "invalid_state", what);
    assert_eq!(d["reason"], reason, "{what}: the reason: {}", a.brief());
    d
}

/// The ledger API (and the job routes the tests need) of one node, with an optional bearer
/// token.
#[derive(Clone)]
struct Ledger {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Ledger {
    fn new(base: &str) -> Ledger {
        Ledger::with(client(), base)
    }

    fn with(http: reqwest::Client, base: &str) -> Ledger {
        Ledger { http, base: base.trim_end_matches('/').to_string(), token: None }
    }

    /// One per node, sharing a connection pool.
    fn all(urls: &[String]) -> Vec<Ledger> {
        let http = client();
        urls.iter().map(|u| Ledger::with(http.clone(), u)).collect()
    }

    /// The same node, calling with `token`.
    fn as_token(&self, token: &str) -> Ledger {
        Ledger { http: self.http.clone(), base: self.base.clone(), token: Some(token.to_string()) }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends `req`; a transport error (a killed server, a lost answer) is `Err`.
    async fn try_send(&self, req: reqwest::RequestBuilder) -> Result<Answer, String> {
        let req = match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        let r = req.send().await.map_err(|e| format!("transport: {e}"))?;
        let status = r.status().as_u16();
        let retry_after = r.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        let text = r.text().await.map_err(|e| format!("transport (body): {e}"))?;
        Ok(Answer { status, body: serde_json::from_str(&text).unwrap_or(Value::Null), retry_after })
    }

    async fn try_get(&self, path: &str) -> Result<Answer, String> {
        self.try_send(self.http.get(self.url(path))).await
    }

    async fn try_post(&self, path: &str, body: &Value) -> Result<Answer, String> {
        self.try_send(self.http.post(self.url(path)).json(body)).await
    }

    /// `GET path` (a transport error fails the test).
    async fn get_json(&self, path: &str) -> Answer {
        self.try_get(path).await.unwrap_or_else(|e| panic!("GET {path} at {}: {e}", self.base))
    }

    /// `POST path` with a JSON body (a transport error fails the test).
    async fn post_json(&self, path: &str, body: &Value) -> Answer {
        self.try_post(path, body).await.unwrap_or_else(|e| panic!("POST {path} at {}: {e}", self.base))
    }

    /// `GET path` as text: (status, body).
    async fn text(&self, path: &str) -> (u16, String) {
        let mut req = self.http.get(self.url(path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap_or_else(|e| panic!("GET {path} at {}: {e}", self.base));
        let status = r.status().as_u16();
        (status, r.text().await.unwrap_or_default())
    }

    /// Waits until `/readyz` answers 200.
    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.try_get("/readyz").await.is_ok_and(|a| a.status == 200) {
            assert!(Instant::now() < deadline, "{} not ready within 60 s", self.base);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `POST /v1/ledger/accounts` `{"accounts": list}` answered 201: the accounts.
    async fn create_accounts(&self, list: Value) -> Vec<Value> {
        let a = self.post_json("/v1/ledger/accounts", &json!({ "accounts": list })).await;
        let got = ok(&a, 201, &format!("create accounts {list}"))["accounts"]
            .as_array()
            .unwrap_or_else(|| panic!("no accounts array: {}", a.brief()))
            .clone();
        assert_eq!(Some(got.len()), list.as_array().map(Vec::len), "one account per item: {}", a.brief());
        for (g, want) in got.iter().zip(list.as_array().unwrap()) {
            assert_eq!(g["id"], want["id"], "accounts answered in input order: {}", a.brief());
            assert_account_shape(g);
        }
        got
    }

    /// `GET /v1/ledger/accounts/{id}` (200 asserted, the shape checked).
    async fn account(&self, id: &str) -> Value {
        let a = self.get_json(&format!("/v1/ledger/accounts/{}", seg(id))).await;
        let v = ok(&a, 200, &format!("GET account {id}")).clone();
        assert_account_shape(&v);
        v
    }

    /// `POST /v1/ledger/transfers` with one transfer, answered 201: the transfer.
    async fn transfer(&self, body: Value) -> Value {
        let a = self.post_json("/v1/ledger/transfers", &body).await;
        let t = ok(&a, 201, &format!("transfer {body}")).clone();
        assert_eq!(t["id"], body["id"], "{t}");
        assert_ne!(t["duplicate"], true, "a new transfer is no duplicate: {t}");
        t
    }

    /// `POST /v1/ledger/accounts` with `body`, whatever the answer.
    async fn post_account(&self, body: Value) -> Answer {
        self.post_json("/v1/ledger/accounts", &body).await
    }

    /// `POST /v1/ledger/transfers` with `body`, whatever the answer.
    async fn post_transfer(&self, body: Value) -> Answer {
        self.post_json(TRANSFERS, &body).await
    }

    /// `GET /v1/ledger/transfers/{id}`.
    async fn get_transfer(&self, id: &str) -> Answer {
        self.get_json(&format!("/v1/ledger/transfers/{}", seg(id))).await
    }

    /// `GET /v1/ledger/transfers/{id}` answered 200: the transfer.
    async fn read_transfer(&self, id: &str) -> Value {
        let a = self.get_transfer(id).await;
        ok(&a, 200, &format!("GET transfer {id}")).clone()
    }

    /// `POST /v1/ledger/verify` answered 200: the verification (its shape checked).
    async fn verify(&self, full: bool) -> Value {
        let a = self.post_json("/v1/ledger/verify", &json!({ "full": full })).await;
        let v = ok(&a, 200, &format!("verify (full: {full})")).clone();
        assert!(v["ok"].is_boolean(), "verify without ok: {v}");
        assert!(v["head_seq"].is_i64(), "verify without head_seq: {v}");
        assert!(v["digest"].is_string(), "verify without digest: {v}");
        assert!(v["problems"].is_array(), "verify without problems: {v}");
        v
    }

    /// Every item under `key` of the list at `path`, page by page (1,000 a page).
    async fn paged(&self, path: &str, key: &str) -> Vec<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let target = match &cursor {
                Some(c) => format!("{path}{sep}limit=1000&cursor={}", pct(c)),
                None => format!("{path}{sep}limit=1000"),
            };
            let a = self.get_json(&target).await;
            let b = ok(&a, 200, &format!("GET {target}"));
            let page =
                b[key].as_array().unwrap_or_else(|| panic!("GET {target}: no {key} array: {}", a.brief()));
            out.extend(page.iter().cloned());
            let next = match &b["next_cursor"] {
                Value::String(c) => Some(c.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
            match next {
                Some(c) if !page.is_empty() && cursor.as_deref() != Some(c.as_str()) => cursor = Some(c),
                _ => return out,
            }
        }
    }

    /// An account's statement, oldest first.
    async fn statement(&self, id: &str) -> Vec<Value> {
        self.paged(&format!("/v1/ledger/accounts/{}/transfers", seg(id)), "transfers").await
    }

    /// The ledger's whole event chain.
    async fn ledger_events(&self) -> Vec<Value> {
        self.paged("/v1/ledger/events", "events").await
    }

    /// Every account, in id order.
    async fn accounts(&self) -> Vec<Value> {
        self.paged("/v1/ledger/accounts", "accounts").await
    }

    /// Every job of `GET /v1/jobs?<query>`.
    async fn jobs(&self, query: &str) -> Vec<Value> {
        self.paged(&format!("/v1/jobs?{query}"), "jobs").await
    }

    /// `GET /v1/jobs/{id}` (200 asserted).
    async fn job(&self, id: &str) -> Value {
        let a = self.get_json(&format!("/v1/jobs/{id}")).await;
        ok(&a, 200, &format!("GET job {id}")).clone()
    }

    /// `POST /v1/jobs` with one job answered 201: its id.
    async fn enqueue(&self, spec: Value) -> String {
        let a = self.post_json("/v1/jobs", &spec).await;
        ok(&a, 201, &format!("enqueue {spec}"))["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no job id: {}", a.brief()))
            .to_string()
    }

    /// Claims up to `max` jobs of `queue` as `worker` (lease one minute).
    async fn claim(&self, queue: &str, worker: &str, max: usize) -> Vec<Value> {
        let body = json!({"worker": worker, "max": max, "lease_ms": 60_000});
        let a = self.post_json(&format!("/v1/queues/{queue}/claim"), &body).await;
        ok(&a, 200, &format!("claim {queue}"))["jobs"]
            .as_array()
            .unwrap_or_else(|| panic!("claim {queue}: no jobs array: {}", a.brief()))
            .clone()
    }

    /// Claims the one ready job of `queue` as `worker`, asserting it is `id`.
    async fn claim_one(&self, queue: &str, worker: &str, id: &str) -> Value {
        let jobs = self.claim(queue, worker, 10).await;
        assert_eq!(jobs.len(), 1, "one job of {queue} to claim: {jobs:?}");
        assert_eq!(jobs[0]["id"], id, "{jobs:?}");
        jobs[0].clone()
    }

    /// Completes a claimed job (200 asserted).
    async fn complete(&self, job: &Value) {
        let id = id_of(job);
        let a = self.post_json(&format!("/v1/jobs/{id}/complete"), &json!({"lease": job["lease"]})).await;
        ok(&a, 200, &format!("complete {id}"));
    }

    /// Fails a claimed job (200 asserted).
    async fn fail(&self, job: &Value, retry: bool) {
        let id = id_of(job);
        let body = json!({"lease": job["lease"], "error": "planned failure", "retry": retry});
        let a = self.post_json(&format!("/v1/jobs/{id}/fail"), &body).await;
        ok(&a, 200, &format!("fail {id}"));
    }

    /// The job counts of `queue` by state (`GET /v1/queues`); empty when the queue is unknown.
    async fn queue_counts(&self, queue: &str) -> BTreeMap<String, u64> {
        let a = self.get_json("/v1/queues").await;
        let b = ok(&a, 200, "GET /v1/queues");
        let Some(q) = b["queues"].as_array().and_then(|qs| qs.iter().find(|q| q["queue"] == queue)) else {
            return BTreeMap::new();
        };
        q["counts"]
            .as_object()
            .unwrap_or_else(|| panic!("queue {queue} without counts: {q}"))
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect()
    }
}

/// Mints a token through `api` (tokenless for the first one, which turns auth on): its secret.
async fn mint(api: &Ledger, body: Value) -> String {
    let a = api.post_json("/v1/tokens", &body).await;
    ok(&a, 201, &format!("mint {body}"))["token"]
        .as_str()
        .unwrap_or_else(|| panic!("no token secret: {}", a.brief()))
        .to_string()
}

/// Runs the `ferry` CLI against `url` (as `FERRY_URL`, with `FERRY_TOKEN` when given): its exit
/// code and its output (stdout then stderr).
async fn cli(url: &str, token: Option<&str>, args: &[&str]) -> (i32, String) {
    let (url, token) = (url.to_string(), token.map(str::to_string));
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"));
        cmd.args(args).env("FERRY_URL", url).env("NO_COLOR", "1");
        match token {
            Some(t) => cmd.env("FERRY_TOKEN", t),
            None => cmd.env_remove("FERRY_TOKEN"),
        };
        let out = cmd.output().expect("run the ferry CLI");
        let text =
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    })
    .await
    .unwrap()
}

/// The value of an unlabelled (or first labelled) sample of `name` in `/metrics`.
async fn gauge(api: &Ledger, name: &str) -> Option<f64> {
    let (status, text) = api.text("/metrics").await;
    assert_eq!(status, 200, "GET /metrics: {text}");
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let rest = l.strip_prefix(name)?;
        if !rest.starts_with([' ', '{']) {
            return None;
        }
        l.rsplit(' ').next()?.trim().parse::<f64>().ok()
    })
}

/// Percent-encodes an id for a URL path segment (`%` too: the server decodes the path).
fn seg(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Percent-encodes a query value (cursors are opaque).
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The account a worker is paid into: `worker:` + its name, bytes outside `[A-Za-z0-9._:-]`
/// as `%XX` (upper-case hex).
fn worker_account(name: &str) -> String {
    let mut out = String::from("worker:");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A job's (or transfer's) id.
#[track_caller]
fn id_of(j: &Value) -> String {
    j["id"].as_str().unwrap_or_else(|| panic!("no id: {j}")).to_string()
}

/// An integer field.
#[track_caller]
fn num(v: &Value, k: &str) -> i64 {
    v[k].as_i64().unwrap_or_else(|| panic!("{k} is not an integer: {v}"))
}

/// The four sums of an account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Sums {
    debits_posted: i64,
    credits_posted: i64,
    debits_pending: i64,
    credits_pending: i64,
}

impl Sums {
    fn posted(debits: i64, credits: i64) -> Sums {
        Sums { debits_posted: debits, credits_posted: credits, ..Sums::default() }
    }
}

#[track_caller]
fn sums_of(a: &Value) -> Sums {
    Sums {
        debits_posted: num(a, "debits_posted"),
        credits_posted: num(a, "credits_posted"),
        debits_pending: num(a, "debits_pending"),
        credits_pending: num(a, "credits_pending"),
    }
}

/// The account view's fields: `balance` and `available` agree with the sums.
#[track_caller]
fn assert_account_shape(a: &Value) {
    let s = sums_of(a);
    assert_eq!(num(a, "balance"), s.credits_posted - s.debits_posted, "balance = credits - debits: {a}");
    assert_eq!(num(a, "available"), num(a, "balance") - s.debits_pending, "available: {a}");
    assert!(s.debits_pending >= 0 && s.credits_pending >= 0, "pending sums are never negative: {a}");
    assert!(a["flags"].is_array(), "flags is a list of names: {a}");
    assert!(a["ledger"].is_u64() && a["code"].is_u64(), "ledger and code: {a}");
    assert!(a["metadata"].is_object(), "metadata is an object: {a}");
    assert!(a["created_at"].is_string(), "created_at: {a}");
}

/// Whether a verification lists a problem of `kind` (about `account` / `seq`, when given).
fn has_problem(v: &Value, kind: &str, account: Option<&str>, seq: Option<i64>) -> bool {
    v["problems"].as_array().is_some_and(|ps| {
        ps.iter().any(|p| {
            p["kind"] == kind
                && account.is_none_or(|a| p["account"] == a)
                && seq.is_none_or(|s| p["seq"].as_i64() == Some(s))
        })
    })
}

/// Asserts a clean verification.
#[track_caller]
fn assert_verified(v: &Value, what: &str) {
    assert!(
        v["ok"] == true && v["problems"].as_array().is_some_and(Vec::is_empty),
        "{what}: verify found problems: {v}"
    );
    assert!(v["digest"].as_str().is_some_and(|d| !d.is_empty()), "{what}: no digest: {v}");
}

/// A small deterministic generator (SplitMix64).
struct Mix(u64);

impl Mix {
    fn new(seed: u64) -> Mix {
        Mix(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    fn step(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// 0..n.
    fn below(&mut self, n: u64) -> u64 {
        self.step() % n.max(1)
    }
}

// ---------------------------------------------------------------------------------------------
// 1. The hot account
// ---------------------------------------------------------------------------------------------

/// What the hot-account clients were told.
#[derive(Default)]
struct HotTally {
    posted: usize,
    refused: usize,
    resent: usize,
    /// One refused id, to read back.
    refused_id: Option<String>,
    /// One posted id, to read back.
    posted_id: Option<String>,
    bad: Vec<String>,
}

/// Client `c`: `per` one-unit transfers `src` -> `dst`, every tenth sent twice.
async fn hot_client(api: Ledger, c: usize, per: usize, tally: Arc<Mutex<HotTally>>) {
    for k in 0..per {
        let id = format!("hot-{c}-{k}");
        let body = json!({"id": id, "debit_account": "src", "credit_account": "dst", "amount": 1});
        let first = match api.try_post("/v1/ledger/transfers", &body).await {
            Ok(a) => a,
            Err(e) => {
                tally.lock().unwrap().bad.push(format!("{id}: {e}"));
                continue;
            }
        };
        let posted =
            if first.status == 201 && first.body["state"] == "posted" && first.body["duplicate"] != true {
                true
            } else if first.status == 409
                && first.code() == "invalid_state"
                && first.reason() == "exceeds_credits"
            {
                false
            } else {
                tally.lock().unwrap().bad.push(format!("{id}: {}", first.brief()));
                continue;
            };
        {
            let mut t = tally.lock().unwrap();
            if posted {
                t.posted += 1;
                t.posted_id.get_or_insert_with(|| id.clone());
            } else {
                t.refused += 1;
                t.refused_id.get_or_insert_with(|| id.clone());
            }
        }
        if !k.is_multiple_of(10) {
            continue;
        }
        let again = api.try_post("/v1/ledger/transfers", &body).await;
        let mut t = tally.lock().unwrap();
        match again {
            Ok(a)
                if posted
                    && a.status == 200
                    && a.body["duplicate"] == true
                    && a.body["state"] == "posted" =>
            {
                t.resent += 1
            }
            Ok(a)
                if !posted
                    && a.status == 409
                    && a.code() == "invalid_state"
                    && a.reason() == "id_already_failed"
                    && a.details()["original_reason"] == "exceeds_credits" =>
            {
                t.resent += 1
            }
            Ok(a) => t.bad.push(format!(
                "{id} resent (first {}): {}",
                if posted { "posted" } else { "refused" },
                a.brief()
            )),
            Err(e) => t.bad.push(format!("{id} resent: {e}")),
        }
    }
}

/// What a sampler of one account saw.
#[derive(Debug, Default)]
struct Sampled {
    taken: usize,
    lowest_available: Option<i64>,
    violations: Vec<String>,
    errors: Vec<String>,
}

/// Reads account `id` every 10 ms from `apis` in turn until `stop`: never a negative balance or
/// available amount, never debits (posted + pending) past credits posted.
fn spawn_account_sampler(apis: Vec<Ledger>, id: String, stop: Arc<AtomicBool>) -> JoinHandle<Sampled> {
    tokio::spawn(async move {
        let mut s = Sampled::default();
        let path = format!("/v1/ledger/accounts/{}", seg(&id));
        let mut turn = 0usize;
        while !stop.load(Ordering::SeqCst) {
            let api = &apis[turn % apis.len()];
            turn += 1;
            match api.try_get(&path).await {
                Ok(a) if a.status == 200 => {
                    let v = &a.body;
                    match (
                        v["balance"].as_i64(),
                        v["available"].as_i64(),
                        v["debits_posted"].as_i64(),
                        v["debits_pending"].as_i64(),
                        v["credits_posted"].as_i64(),
                    ) {
                        (Some(balance), Some(available), Some(dp), Some(dpend), Some(cp)) => {
                            s.taken += 1;
                            s.lowest_available =
                                Some(s.lowest_available.map_or(available, |l| l.min(available)));
                            if balance < 0 || available < 0 || dp + dpend > cp {
                                s.violations.push(format!("at {}: {v}", api.base));
                            }
                        }
                        _ => s.errors.push(format!("GET {path} at {}: no sums: {}", api.base, a.brief())),
                    }
                }
                Ok(a) => s.errors.push(format!("GET {path} at {}: {}", api.base, a.brief())),
                Err(e) => s.errors.push(format!("GET {path} at {}: {e}", api.base)),
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        s
    })
}

both_backends!(
    hot_account,
    hot_account_sqlite,
    hot_account_postgres,
    "ferry_lg_hot",
    180 + hot_total() as u64 / 150,
    ""
);

async fn hot_account(be: &Backend) {
    let server = be.start().await;
    hot_run(std::slice::from_ref(&server.url)).await;
    be.stop_and_check(server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_account_on_three_postgres_nodes() {
    let Some(be) = Backend::postgres("ferry_lg_hot3", 6, "").await else { return };
    let test = "hot_account_on_three_postgres_nodes";
    bounded(Duration::from_secs(240 + hot_total() as u64 / 100), test, async {
        let mut nodes = Vec::new();
        for _ in 0..3 {
            nodes.push(be.start().await);
        }
        let urls: Vec<String> = nodes.iter().map(|s| s.url.clone()).collect();
        hot_run(&urls).await;
        let first = nodes.remove(0);
        for n in nodes {
            stop_clean(n).await;
        }
        be.stop_and_check(first).await;
    })
    .await;
}

/// The hot-account scenario against the nodes at `urls` (client `c` and the samplers' reads
/// spread over them).
async fn hot_run(urls: &[String]) {
    let (clients, per) = (hot_clients(), hot_transfers());
    let total = clients * per;
    let fund = (total / 2).max(1) as i64;
    let apis = Ledger::all(urls);
    let api = &apis[0];
    let created = api
        .create_accounts(json!([
            {"id": "bank"},
            {"id": "src", "flags": ["debits_must_not_exceed_credits"]},
            {"id": "dst"}
        ]))
        .await;
    assert_eq!(created[1]["flags"], json!(["debits_must_not_exceed_credits"]), "{}", created[1]);
    let t = api
        .transfer(json!({"id": "hot-fund", "debit_account": "bank", "credit_account": "src", "amount": fund}))
        .await;
    assert_eq!((&t["state"], &t["posted_amount"]), (&json!("posted"), &json!(fund)), "{t}");
    let src = api.account("src").await;
    assert_eq!((num(&src, "balance"), num(&src, "available")), (fund, fund), "{src}");

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_account_sampler(apis.clone(), "src".into(), stop.clone());
    let tally = Arc::new(Mutex::new(HotTally::default()));
    let t0 = Instant::now();
    let tasks: Vec<JoinHandle<()>> = (0..clients)
        .map(|c| tokio::spawn(hot_client(apis[c % apis.len()].clone(), c, per, tally.clone())))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let took = t0.elapsed();
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.await.unwrap();
    let tally = std::mem::take(&mut *tally.lock().unwrap());

    assert_none("unexpected answers to the hot clients", &tally.bad);
    assert_eq!(tally.posted + tally.refused, total, "every transfer answered once");
    assert_eq!(tally.posted as i64, fund, "exactly the funds' worth succeed");
    assert_eq!(tally.resent, clients * per.div_ceil(10), "every repeat answered as its first");
    assert_none("sampler reads", &samples.errors);
    assert_none("src below zero or debits past credits (sampler)", &samples.violations);
    assert!(samples.taken >= 1, "the sampler never read src");

    // End balances, on every node.
    for a in &apis {
        let src = a.account("src").await;
        assert_eq!(sums_of(&src), Sums::posted(fund, fund), "src at {}: {src}", a.base);
        assert_eq!((num(&src, "balance"), num(&src, "available")), (0, 0), "{src}");
        let dst = a.account("dst").await;
        assert_eq!(sums_of(&dst), Sums::posted(0, fund), "dst at {}: {dst}", a.base);
        let bank = a.account("bank").await;
        assert_eq!(sums_of(&bank), Sums::posted(fund, 0), "bank at {}: {bank}", a.base);
        assert_eq!(num(&bank, "balance"), -fund, "{bank}");
    }

    // dst's statement: each success once, oldest first.
    let st = api.statement("dst").await;
    assert_eq!(st.len() as i64, fund, "dst's statement lists every success");
    let mut errors = Vec::new();
    let mut ids = BTreeSet::new();
    let mut last_seq = 0;
    for t in &st {
        let id = id_of(t);
        if !id.starts_with("hot-") || !ids.insert(id.clone()) {
            errors.push(format!("unexpected or repeated in dst's statement: {t}"));
        }
        if t["state"] != "posted"
            || t["amount"] != 1
            || t["debit_account"] != "src"
            || t["credit_account"] != "dst"
        {
            errors.push(format!("not a posted one-unit src -> dst transfer: {t}"));
        }
        let seq = t["seq"].as_i64().unwrap_or(0);
        if seq <= last_seq {
            errors.push(format!("statement not in seq order at {t}"));
        }
        last_seq = seq;
    }
    assert_none("dst's statement", &errors);

    if let Some(id) = &tally.refused_id {
        let t = api.read_transfer(id).await;
        assert_eq!((&t["state"], &t["reason"]), (&json!("refused"), &json!("exceeds_credits")), "{t}");
        assert!(t.get("seq").is_none_or(Value::is_null), "a refusal has no event: {t}");
    }
    if let Some(id) = &tally.posted_id {
        let t = api.read_transfer(id).await;
        assert_eq!((&t["state"], &t["posted_amount"]), (&json!("posted"), &json!(1)), "{t}");
    }

    let v = api.verify(true).await;
    assert_verified(&v, "after the hot account");
    // 3 account.created, the funding and one transfer.posted per success; refusals write none.
    assert_eq!(num(&v, "head_seq"), fund + 4, "one event per change, none per refusal: {v}");
    eprintln!(
        "ledger hot account on {} node(s): {total} transfers ({} resent) in {took:?} ({:.0}/s), {} posted, \
         {} refused, {} samples, lowest available {:?}",
        urls.len(),
        tally.resent,
        (total + tally.resent) as f64 / took.as_secs_f64(),
        tally.posted,
        tally.refused,
        samples.taken,
        samples.lowest_available
    );
}

// ---------------------------------------------------------------------------------------------
// 2. SIGKILLs under transfer load
// ---------------------------------------------------------------------------------------------

/// The flagless bank of the kill test, and its eight flagged accounts.
const KB: &str = "kb";
const KA: usize = 8;

fn ka(i: usize) -> String {
    format!("ka{i}")
}

/// Every account of the kill test.
fn kill_accounts() -> Vec<String> {
    std::iter::once(KB.to_string()).chain((0..KA).map(ka)).collect()
}

/// A transfer of the kill test: a third from the bank (always possible), the rest between two
/// flagged accounts (refused when the debit account lacks the money).
fn kill_body(id: &str, m: &mut Mix) -> Value {
    let (debit, credit, amount) = if m.below(3) == 0 {
        (KB.to_string(), ka(m.below(KA as u64) as usize), 1 + m.below(50) as i64)
    } else {
        let i = m.below(KA as u64) as usize;
        let j = (i + 1 + m.below(KA as u64 - 1) as usize) % KA;
        (ka(i), ka(j), 1 + m.below(80) as i64)
    };
    json!({"id": id, "debit_account": debit, "credit_account": credit, "amount": amount})
}

/// What is known of a transfer id.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Sent, answer lost (transport error, 503): applied or not.
    Unknown,
    /// Acknowledged as applied.
    Posted,
    /// Acknowledged as refused (remembered), with the reason.
    Refused(String),
    /// In an atomic batch acknowledged as refused: nothing written.
    NotWritten,
}

impl Outcome {
    fn known(&self) -> bool {
        *self != Outcome::Unknown
    }
}

#[derive(Clone)]
struct Sent {
    body: Value,
    outcome: Outcome,
    /// The atomic batch it was sent in.
    batch: Option<usize>,
}

#[derive(Clone)]
struct Batch {
    ids: Vec<String>,
    body: Value,
    outcome: Outcome,
}

/// What the kill test's clients sent and were told.
#[derive(Default)]
struct KillBook {
    sent: HashMap<String, Sent>,
    /// Ids in the order first sent.
    order: Vec<String>,
    batches: Vec<Batch>,
    /// Unknown ids (not of atomic batches) and unknown atomic batches from before the last
    /// restart, for the resender.
    to_resolve: Vec<String>,
    batches_to_resolve: Vec<usize>,
    /// Ids acknowledged posted since the last restart.
    recent: Vec<String>,
    acks: usize,
    resends: usize,
    bad: Vec<String>,
}

impl KillBook {
    fn add(&mut self, id: &str, body: &Value, batch: Option<usize>) {
        let old =
            self.sent.insert(id.to_string(), Sent { body: body.clone(), outcome: Outcome::Unknown, batch });
        assert!(old.is_none(), "transfer id {id} used twice by the test");
        self.order.push(id.to_string());
    }

    fn settle(&mut self, id: &str, outcome: Outcome) {
        let Some(s) = self.sent.get_mut(id) else {
            self.bad.push(format!("settled an unknown id {id}"));
            return;
        };
        let newly = !s.outcome.known() && outcome.known();
        s.outcome = outcome.clone();
        if newly {
            self.acks += 1;
            if outcome == Outcome::Posted {
                self.recent.push(id.to_string());
            }
        }
    }

    fn settle_batch(&mut self, b: usize, outcome: Outcome) {
        self.batches[b].outcome = outcome.clone();
        let ids = self.batches[b].ids.clone();
        for id in &ids {
            self.settle(id, outcome.clone());
        }
    }

    /// Collects what is still unknown for the resender (at a restart).
    fn collect_unknown(&mut self) {
        self.to_resolve = self
            .order
            .iter()
            .filter(|id| self.sent[*id].batch.is_none() && self.sent[*id].outcome == Outcome::Unknown)
            .cloned()
            .collect();
        self.batches_to_resolve =
            (0..self.batches.len()).filter(|b| self.batches[*b].outcome == Outcome::Unknown).collect();
    }
}

/// The outcome an answer to a (re)send of one transfer shows, given what was known before;
/// `Err` for an answer that should not have come. A transport error or a 503 changes nothing.
fn judge(prev: &Outcome, r: &Result<Answer, String>, body: &Value) -> Result<Outcome, String> {
    let a = match r {
        Err(_) => return Ok(prev.clone()),
        Ok(a) if a.status == 503 => return Ok(prev.clone()),
        Ok(a) => a,
    };
    let posted = a.status / 100 == 2
        && a.body["state"] == "posted"
        && a.body["id"] == body["id"]
        && a.body["amount"] == body["amount"]
        && a.body["debit_account"] == body["debit_account"]
        && a.body["credit_account"] == body["credit_account"];
    let dup = a.body["duplicate"] == true;
    let invalid = a.status == 409 && a.code() == "invalid_state";
    let failed_before = invalid && a.reason() == "id_already_failed";
    let refused_now = invalid && a.reason() == "exceeds_credits";
    let original = a.details()["original_reason"].as_str().unwrap_or("").to_string();
    match prev {
        Outcome::Unknown if posted && a.status == 201 && !dup => Ok(Outcome::Posted),
        Outcome::Unknown if posted && a.status == 200 && dup => Ok(Outcome::Posted),
        Outcome::Unknown if refused_now => Ok(Outcome::Refused("exceeds_credits".into())),
        Outcome::Unknown if failed_before && !original.is_empty() => Ok(Outcome::Refused(original)),
        Outcome::Posted if posted && a.status == 200 && dup => Ok(Outcome::Posted),
        Outcome::Refused(r) if failed_before && original == *r => Ok(prev.clone()),
        _ => Err(format!("{} (known: {prev:?}): {}", body["id"], a.brief())),
    }
}

/// The outcome an answer to a (re)send of an atomic batch shows (see [`judge`]).
fn judge_batch(prev: &Outcome, r: &Result<Answer, String>, body: &Value) -> Result<Outcome, String> {
    let a = match r {
        Err(_) => return Ok(prev.clone()),
        Ok(a) if a.status == 503 => return Ok(prev.clone()),
        Ok(a) => a,
    };
    let items = body["transfers"].as_array().expect("a batch body");
    let what = format!("atomic batch from {} (known: {prev:?})", items[0]["id"]);
    if a.status == 201 || a.status == 200 {
        let Some(got) = a.body["transfers"].as_array() else {
            return Err(format!("{what}: no transfers: {}", a.brief()));
        };
        let all_posted = got.len() == items.len()
            && got
                .iter()
                .zip(items)
                .all(|(g, i)| g["id"] == i["id"] && g["state"] == "posted" && g["amount"] == i["amount"]);
        if !all_posted {
            return Err(format!("{what}: not every item posted: {}", a.brief()));
        }
        let dups = got.iter().filter(|g| g["duplicate"] == true).count();
        return match prev {
            Outcome::Unknown if dups == 0 || dups == got.len() => Ok(Outcome::Posted),
            Outcome::Posted if dups == got.len() => Ok(Outcome::Posted),
            _ => Err(format!("{what}: {dups} of {} duplicates (all or nothing): {}", got.len(), a.brief())),
        };
    }
    let refusal = a.status == 409
        && a.code() == "invalid_state"
        && a.reason() == "exceeds_credits"
        && a.details()["index"].as_u64().is_some_and(|i| (i as usize) < items.len());
    match prev {
        Outcome::Unknown if refusal => Ok(Outcome::NotWritten),
        _ => Err(format!("{what}: {}", a.brief())),
    }
}

/// The answer an item of a non-atomic batch stands for, as if sent alone.
fn item_answer(r: &Value) -> Answer {
    if r["ok"] == true {
        let dup = r["duplicate"] == true;
        let mut body = r["transfer"].clone();
        if dup && body.is_object() {
            body["duplicate"] = json!(true);
        }
        Answer { status: if dup { 200 } else { 201 }, body, retry_after: None }
    } else {
        let status = match r["error"]["code"].as_str() {
            Some("invalid_state" | "conflict") => 409,
            Some("not_found") => 404,
            Some("validation_failed") => 422,
            Some("unavailable") => 503,
            _ => 500,
        };
        Answer { status, body: json!({ "error": r["error"] }), retry_after: None }
    }
}

const TRANSFERS: &str = "/v1/ledger/transfers";

/// Single transfers until `stop`.
async fn kill_singles(
    api: Ledger,
    c: usize,
    cycle: usize,
    book: Arc<Mutex<KillBook>>,
    stop: Arc<AtomicBool>,
) {
    let mut m = Mix::new((c * 1_000 + cycle) as u64);
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let id = format!("s{c}-{cycle}-{n}");
        n += 1;
        let body = kill_body(&id, &mut m);
        book.lock().unwrap().add(&id, &body, None);
        let r = api.try_post(TRANSFERS, &body).await;
        let mut b = book.lock().unwrap();
        match judge(&Outcome::Unknown, &r, &body) {
            Ok(o) => b.settle(&id, o),
            Err(e) => b.bad.push(format!("send {e}")),
        }
    }
}

/// Atomic batches of 10 until `stop`.
async fn kill_atomic(api: Ledger, cycle: usize, book: Arc<Mutex<KillBook>>, stop: Arc<AtomicBool>) {
    let mut m = Mix::new(7_000 + cycle as u64);
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let ids: Vec<String> = (0..10).map(|j| format!("a{cycle}-{n}-{j}")).collect();
        n += 1;
        let items: Vec<Value> = ids.iter().map(|id| kill_body(id, &mut m)).collect();
        let body = json!({"transfers": Value::Array(items.clone()), "atomic": true});
        let bno = {
            let mut b = book.lock().unwrap();
            let bno = b.batches.len();
            for (id, it) in ids.iter().zip(&items) {
                b.add(id, it, Some(bno));
            }
            b.batches.push(Batch { ids: ids.clone(), body: body.clone(), outcome: Outcome::Unknown });
            bno
        };
        let r = api.try_post(TRANSFERS, &body).await;
        let mut b = book.lock().unwrap();
        match judge_batch(&Outcome::Unknown, &r, &body) {
            Ok(o) => b.settle_batch(bno, o),
            Err(e) => b.bad.push(format!("send {e}")),
        }
    }
}

/// Non-atomic batches of 10 until `stop`.
async fn kill_loose(api: Ledger, cycle: usize, book: Arc<Mutex<KillBook>>, stop: Arc<AtomicBool>) {
    let mut m = Mix::new(9_000 + cycle as u64);
    let mut n = 0usize;
    while !stop.load(Ordering::SeqCst) {
        let ids: Vec<String> = (0..10).map(|j| format!("n{cycle}-{n}-{j}")).collect();
        n += 1;
        let items: Vec<Value> = ids.iter().map(|id| kill_body(id, &mut m)).collect();
        let body = json!({"transfers": Value::Array(items.clone()), "atomic": false});
        {
            let mut b = book.lock().unwrap();
            for (id, it) in ids.iter().zip(&items) {
                b.add(id, it, None);
            }
        }
        let r = api.try_post(TRANSFERS, &body).await;
        let mut b = book.lock().unwrap();
        match &r {
            Ok(a) if a.status == 200 => {
                let results = a.body["results"].as_array().cloned().unwrap_or_default();
                if results.len() != ids.len() {
                    b.bad.push(format!("non-atomic batch: not one result per item: {}", a.brief()));
                    continue;
                }
                for ((id, it), res) in ids.iter().zip(&items).zip(&results) {
                    if res["id"] != id.as_str() {
                        b.bad.push(format!("non-atomic batch: result for {id} names {}", res["id"]));
                        continue;
                    }
                    match judge(&Outcome::Unknown, &Ok(item_answer(res)), it) {
                        Ok(o) => b.settle(id, o),
                        Err(e) => b.bad.push(format!("non-atomic item {e}")),
                    }
                }
            }
            Ok(a) if a.status == 503 => {}
            Ok(a) => b.bad.push(format!("non-atomic batch: {}", a.brief())),
            Err(_) => {}
        }
    }
}

/// What the resender repeats next.
enum Resend {
    One(String, Value, Outcome),
    Batch(usize, Value, Outcome),
}

/// Picks a repeat: an unknown one from before the last restart (every other turn, while there
/// are), else a random known one (posted or refused; a refused atomic batch's items are not
/// repeated, they would be new transfers).
fn pick_resend(b: &mut KillBook, m: &mut Mix) -> Option<Resend> {
    if m.below(2) == 0 {
        if let Some(id) = b.to_resolve.pop() {
            let s = &b.sent[&id];
            return Some(Resend::One(id.clone(), s.body.clone(), s.outcome.clone()));
        }
        if let Some(bno) = b.batches_to_resolve.pop() {
            let bt = &b.batches[bno];
            return Some(Resend::Batch(bno, bt.body.clone(), bt.outcome.clone()));
        }
    }
    if b.order.is_empty() {
        return None;
    }
    let id = &b.order[m.below(b.order.len() as u64) as usize];
    let s = &b.sent[id];
    match s.outcome {
        Outcome::Posted | Outcome::Refused(_) => {
            Some(Resend::One(id.clone(), s.body.clone(), s.outcome.clone()))
        }
        _ => None,
    }
}

/// Sends one repeat and records what it showed.
async fn resend(api: &Ledger, book: &Mutex<KillBook>, what: Resend) {
    match what {
        Resend::One(id, body, prev) => {
            let r = api.try_post(TRANSFERS, &body).await;
            let mut b = book.lock().unwrap();
            b.resends += 1;
            match judge(&prev, &r, &body) {
                Ok(o) => b.settle(&id, o),
                Err(e) => b.bad.push(format!("resend {e}")),
            }
        }
        Resend::Batch(bno, body, prev) => {
            let r = api.try_post(TRANSFERS, &body).await;
            let mut b = book.lock().unwrap();
            b.resends += 1;
            match judge_batch(&prev, &r, &body) {
                Ok(o) => b.settle_batch(bno, o),
                Err(e) => b.bad.push(format!("resend {e}")),
            }
        }
    }
}

/// Repeats earlier transfers until `stop`.
async fn kill_resender(api: Ledger, cycle: usize, book: Arc<Mutex<KillBook>>, stop: Arc<AtomicBool>) {
    let mut m = Mix::new(11_000 + cycle as u64);
    while !stop.load(Ordering::SeqCst) {
        let pick = pick_resend(&mut book.lock().unwrap(), &mut m);
        match pick {
            Some(what) => resend(&api, &book, what).await,
            None => tokio::time::sleep(Duration::from_millis(5)).await,
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

both_backends!(
    kill_under_transfer_load,
    kill_under_transfer_load_sqlite,
    kill_under_transfer_load_postgres,
    "ferry_lg_kill",
    300 + 25 * kill_cycles() as u64,
    ""
);

/// Clients send singles, atomic and non-atomic batches and repeats while the server is
/// SIGKILLed `FERRY_LEDGER_KILLS` times (after 0.3-1.2 s of load and at least 50 new
/// acknowledgements each); the last server settles every unknown id and the checks run.
async fn kill_under_transfer_load(be: &Backend) {
    let cycles = kill_cycles();
    let book = Arc::new(Mutex::new(KillBook::default()));
    let mut dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    for cycle in 0..=cycles {
        let server = be.start_in(dir).await;
        let api = Ledger::new(&server.url);
        api.wait_ready().await;
        assert_no_panic(&server);
        if cycle == 0 {
            kill_setup(&api, &book).await;
        } else {
            kill_check_restart(&api, &book, cycle).await;
        }
        book.lock().unwrap().collect_unknown();
        if cycle == cycles {
            kill_resolve(&api, &book).await;
            kill_final_checks(&api, &book).await;
            {
                let b = book.lock().unwrap();
                let posted = b.sent.values().filter(|s| s.outcome == Outcome::Posted).count();
                let refused = b.sent.values().filter(|s| matches!(s.outcome, Outcome::Refused(_))).count();
                eprintln!(
                    "ledger kills: {cycles} kills in {:?}, {} transfers sent ({posted} posted, {refused} \
                     refused, {} in refused atomic batches), {} repeats",
                    t0.elapsed(),
                    b.sent.len(),
                    b.sent.len() - posted - refused,
                    b.resends
                );
            }
            be.stop_and_check(server).await;
            break;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let before = book.lock().unwrap().acks;
        let tasks = [
            tokio::spawn(kill_singles(api.clone(), 0, cycle, book.clone(), stop.clone())),
            tokio::spawn(kill_singles(api.clone(), 1, cycle, book.clone(), stop.clone())),
            tokio::spawn(kill_atomic(api.clone(), cycle, book.clone(), stop.clone())),
            tokio::spawn(kill_loose(api.clone(), cycle, book.clone(), stop.clone())),
            tokio::spawn(kill_resender(api.clone(), cycle, book.clone(), stop.clone())),
        ];
        let load = Duration::from_millis(300 + (cycle as u64 * 397) % 900);
        let started = Instant::now();
        loop {
            let acks = book.lock().unwrap().acks;
            if started.elapsed() >= load && acks >= before + 50 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "cycle {cycle}: not 50 acknowledgements in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        dir = kill_keep_dir(server);
        stop.store(true, Ordering::SeqCst);
        for t in tasks {
            t.await.unwrap();
        }
    }
}

/// The accounts (the bank and eight flagged ones, 300 each), acknowledged before any kill.
async fn kill_setup(api: &Ledger, book: &Mutex<KillBook>) {
    let mut accounts = vec![json!({"id": KB})];
    accounts.extend((0..KA).map(|i| json!({"id": ka(i), "flags": ["debits_must_not_exceed_credits"]})));
    api.create_accounts(Value::Array(accounts)).await;
    let funding: Vec<Value> = (0..KA).map(|i| tr(&format!("kfund-{i}"), KB, &ka(i), 300)).collect();
    let a =
        api.post_json(TRANSFERS, &json!({"transfers": Value::Array(funding.clone()), "atomic": true})).await;
    let got = ok(&a, 201, "the funding batch")["transfers"].as_array().map_or(0, Vec::len);
    assert_eq!(got, KA, "one transfer per item: {}", a.brief());
    let mut b = book.lock().unwrap();
    for f in &funding {
        let id = id_of(f);
        b.add(&id, f, None);
        b.settle(&id, Outcome::Posted);
    }
}

/// After a restart: the ledger verifies (its start-up check passed, writes are not refused),
/// and the transfers acknowledged posted before the kill read back posted.
async fn kill_check_restart(api: &Ledger, book: &Mutex<KillBook>, cycle: usize) {
    let v = api.verify(false).await;
    assert_verified(&v, &format!("verify after kill {cycle}"));
    let (recent, bodies): (Vec<String>, HashMap<String, Value>) = {
        let mut b = book.lock().unwrap();
        let recent = std::mem::take(&mut b.recent);
        let n = recent.len();
        let chosen: Vec<String> = recent
            .iter()
            .enumerate()
            .filter(|(i, _)| i + 25 >= n || i.is_multiple_of(50))
            .map(|(_, id)| id.clone())
            .collect();
        let bodies = chosen.iter().map(|id| (id.clone(), b.sent[id].body.clone())).collect();
        (chosen, bodies)
    };
    let mut errors = Vec::new();
    for id in &recent {
        let a = api.get_transfer(id).await;
        if a.status != 200 || a.body["state"] != "posted" || a.body["amount"] != bodies[id]["amount"] {
            errors.push(format!("after kill {cycle}: acknowledged {id}: {}", a.brief()));
        }
    }
    assert_none("acknowledged transfers after a restart", &errors);
}

/// Repeats every unknown transfer and atomic batch until each has an acknowledged outcome.
async fn kill_resolve(api: &Ledger, book: &Mutex<KillBook>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let work: Vec<Resend> = {
            let mut b = book.lock().unwrap();
            b.collect_unknown();
            let mut w: Vec<Resend> = Vec::new();
            for id in std::mem::take(&mut b.to_resolve) {
                let s = &b.sent[&id];
                w.push(Resend::One(id.clone(), s.body.clone(), s.outcome.clone()));
            }
            for bno in std::mem::take(&mut b.batches_to_resolve) {
                let bt = &b.batches[bno];
                w.push(Resend::Batch(bno, bt.body.clone(), bt.outcome.clone()));
            }
            w
        };
        if work.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{} transfers or batches still unknown after 120 s", work.len());
        for what in work {
            resend(api, book, what).await;
        }
    }
}

/// The end of the kill test (see the module doc).
async fn kill_final_checks(api: &Ledger, book: &Mutex<KillBook>) {
    let (order, sent, batches) = {
        let b = book.lock().unwrap();
        assert_none("unexpected answers under the kills", &b.bad);
        (b.order.clone(), b.sent.clone(), b.batches.clone())
    };
    let mut errors = Vec::new();

    // Statements: each posted transfer in both of its accounts' exactly once, nothing else.
    let mut listed: HashMap<(String, String), usize> = HashMap::new();
    for acc in kill_accounts() {
        let st = api.statement(&acc).await;
        let mut last_seq = 0;
        for t in &st {
            let id = id_of(t);
            *listed.entry((acc.clone(), id.clone())).or_default() += 1;
            match sent.get(&id) {
                Some(s) if s.outcome == Outcome::Posted => {
                    if t["state"] != "posted" || t["amount"] != s.body["amount"] {
                        errors.push(format!("{acc}'s statement: {t} is not as sent: {}", s.body));
                    }
                }
                Some(s) => errors.push(format!("{acc}'s statement lists {id}, which is {:?}", s.outcome)),
                None => errors.push(format!("{acc}'s statement lists a transfer never sent: {t}")),
            }
            let seq = t["seq"].as_i64().unwrap_or(0);
            if seq <= last_seq {
                errors.push(format!("{acc}'s statement is not in seq order at {t}"));
            }
            last_seq = seq;
        }
    }
    let mut want: BTreeMap<String, Sums> =
        kill_accounts().into_iter().map(|a| (a, Sums::default())).collect();
    let mut posted = 0i64;
    for id in &order {
        let s = &sent[id];
        match &s.outcome {
            Outcome::Unknown => errors.push(format!("{id} is still unknown")),
            Outcome::Posted => {
                posted += 1;
                let debit = s.body["debit_account"].as_str().unwrap_or("").to_string();
                let credit = s.body["credit_account"].as_str().unwrap_or("").to_string();
                let amount = s.body["amount"].as_i64().unwrap_or(0);
                for acc in [&debit, &credit] {
                    let k = listed.get(&(acc.clone(), id.clone())).copied().unwrap_or(0);
                    if k != 1 {
                        errors.push(format!("posted {id} is listed {k} times in {acc}'s statement"));
                    }
                }
                if let Some(w) = want.get_mut(&debit) {
                    w.debits_posted += amount;
                }
                if let Some(w) = want.get_mut(&credit) {
                    w.credits_posted += amount;
                }
            }
            Outcome::Refused(_) | Outcome::NotWritten => {}
        }
    }

    // Atomic batches: all or nothing.
    for bt in &batches {
        let states: BTreeSet<String> = bt.ids.iter().map(|id| format!("{:?}", sent[id].outcome)).collect();
        if states.len() != 1 || bt.outcome == Outcome::Unknown {
            errors.push(format!(
                "atomic batch from {}: {:?} but its items are {states:?}",
                bt.ids[0], bt.outcome
            ));
        }
    }

    // Each id read back alone (8 readers at once).
    let mut chunks: Vec<Vec<(String, Sent)>> = (0..8).map(|_| Vec::new()).collect();
    for (k, id) in order.iter().enumerate() {
        chunks[k % 8].push((id.clone(), sent[id].clone()));
    }
    let mut set = tokio::task::JoinSet::new();
    for chunk in chunks {
        let api = api.clone();
        set.spawn(async move {
            let mut errs = Vec::new();
            for (id, s) in chunk {
                let a = api.get_transfer(&id).await;
                let b = &s.body;
                let fine = match &s.outcome {
                    Outcome::Posted => {
                        a.status == 200
                            && a.body["state"] == "posted"
                            && a.body["amount"] == b["amount"]
                            && a.body["posted_amount"] == b["amount"]
                            && a.body["debit_account"] == b["debit_account"]
                            && a.body["credit_account"] == b["credit_account"]
                            && a.body["seq"].is_i64()
                    }
                    Outcome::Refused(r) => {
                        a.status == 200 && a.body["state"] == "refused" && a.body["reason"] == r.as_str()
                    }
                    Outcome::NotWritten => a.status == 404 && a.code() == "not_found",
                    Outcome::Unknown => false,
                };
                if !fine {
                    errs.push(format!("GET {id} ({:?}): {}", s.outcome, a.brief()));
                }
            }
            errs
        });
    }
    while let Some(r) = set.join_next().await {
        errors.extend(r.unwrap());
    }

    // Balances: the sums of the posted transfers; flagged accounts never below zero.
    for (acc, w) in &want {
        let a = api.account(acc).await;
        if sums_of(&a) != *w {
            errors.push(format!("{acc}: {:?} but its posted transfers sum to {w:?}", sums_of(&a)));
        }
        if acc.as_str() != KB && num(&a, "balance") < 0 {
            errors.push(format!("{acc} is below zero: {a}"));
        }
    }
    assert_none("the ledger after the kills", &errors);

    let v = api.verify(true).await;
    assert_verified(&v, "verify --full after the kills");
    assert_eq!(
        num(&v, "head_seq"),
        (1 + KA) as i64 + posted,
        "one event per account and per posted transfer, none per refusal: {v}"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. Paid jobs
// ---------------------------------------------------------------------------------------------

const PAID_Q: &str = "paid";

/// One job of the paid-jobs test.
struct PaidPlan {
    amount: i64,
    /// `max_attempts` 1, failed by its worker (or its lease expires): dead.
    doomed: bool,
    /// Delayed an hour, cancelled at the end.
    delayed: bool,
}

fn paid_plans(n: usize) -> Vec<PaidPlan> {
    (0..n)
        .map(|i| PaidPlan { amount: 1 + (i % 7) as i64, doomed: i % 10 == 3, delayed: i % 100 == 99 })
        .collect()
}

fn paid_spec(i: usize, p: &PaidPlan) -> Value {
    let attempts = if p.doomed { 1 } else { 50 };
    let mut j = json!({
        "queue": PAID_Q,
        "payload": {"i": i, "doom": p.doomed},
        "lease_ms": 2_000,
        "max_attempts": attempts,
        "backoff": {"base_ms": 50, "factor": 1, "jitter": "none"},
        "payment": {"from": "payer", "amount": p.amount}
    });
    if p.delayed {
        j["delay_ms"] = json!(3_600_000);
    }
    j
}

/// What the paid-jobs test's clients were told.
#[derive(Default)]
struct PaidBook {
    /// Plan index -> job id, for acknowledged enqueues.
    enqueued: BTreeMap<usize, String>,
    /// An enqueue's answer was lost: reconcile from the job list at the next start.
    uncertain: bool,
    /// Job id -> the workers whose completion of it was acknowledged.
    completions: HashMap<String, Vec<String>>,
    fails: usize,
    abandoned: usize,
    bad: Vec<String>,
}

/// Enqueues the plans not yet enqueued, 500 a batch, until done, `stop` or a lost answer.
async fn paid_producer(
    api: Ledger,
    plans: Arc<Vec<PaidPlan>>,
    book: Arc<Mutex<PaidBook>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::SeqCst) {
        let batch: Vec<usize> = {
            let b = book.lock().unwrap();
            if b.uncertain {
                return;
            }
            (0..plans.len()).filter(|i| !b.enqueued.contains_key(i)).take(500).collect()
        };
        if batch.is_empty() {
            return;
        }
        let jobs: Vec<Value> = batch.iter().map(|i| paid_spec(*i, &plans[*i])).collect();
        let r = api.try_post("/v1/jobs", &json!({ "jobs": jobs })).await;
        let mut b = book.lock().unwrap();
        match r {
            Ok(a) if a.status == 201 => {
                let ids: Vec<String> = a.body["ids"]
                    .as_array()
                    .map(|ids| ids.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                if ids.len() != batch.len() {
                    b.bad.push(format!("enqueue: not one id per job: {}", a.brief()));
                    return;
                }
                for (i, id) in batch.iter().zip(ids) {
                    b.enqueued.insert(*i, id);
                }
            }
            Ok(a) if a.status == 503 && a.details()["accounts"].is_null() => {
                b.uncertain = true;
                return;
            }
            Ok(a) => {
                b.bad.push(format!("enqueue: {}", a.brief()));
                return;
            }
            Err(_) => {
                b.uncertain = true;
                return;
            }
        }
    }
}

/// After a lost enqueue answer: what is really enqueued, from the job list.
async fn paid_reconcile(api: &Ledger, book: &Mutex<PaidBook>) {
    let jobs = api.jobs(&format!("queue={PAID_Q}")).await;
    let mut b = book.lock().unwrap();
    let mut seen = BTreeSet::new();
    for j in &jobs {
        let i = j["payload"]["i"].as_u64().unwrap_or_else(|| panic!("a job without payload.i: {j}")) as usize;
        if !seen.insert(i) {
            b.bad.push(format!("plan {i} enqueued twice: {j}"));
        }
        let id = id_of(j);
        if let Some(old) = b.enqueued.insert(i, id.clone())
            && old != id
        {
            b.bad.push(format!("plan {i} acknowledged as {old} but listed as {id}"));
        }
    }
    b.uncertain = false;
}

/// A worker over raw HTTP until `stop`: claims up to 20, fails the doomed ones (retryable, but
/// they have one attempt), completes the others, in batches.
async fn paid_worker(api: Ledger, name: String, book: Arc<Mutex<PaidBook>>, stop: Arc<AtomicBool>) {
    let claim = json!({"worker": name, "max": 20, "wait_ms": 200});
    let claim_path = format!("/v1/queues/{PAID_Q}/claim");
    while !stop.load(Ordering::SeqCst) {
        let jobs = match api.try_post(&claim_path, &claim).await {
            Ok(a) if a.status == 200 => a.body["jobs"].as_array().cloned().unwrap_or_default(),
            Ok(a) => {
                if a.status != 503 {
                    book.lock().unwrap().bad.push(format!("claim as {name}: {}", a.brief()));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let (mut done, mut failed) = (Vec::new(), Vec::new());
        for j in &jobs {
            if j["payload"]["doom"] == true {
                failed.push(
                    json!({"id": j["id"], "lease": j["lease"], "error": "doomed by design", "retry": true}),
                );
            } else {
                done.push(json!({"id": j["id"], "lease": j["lease"]}));
            }
        }
        for (path, items, completing) in [("/v1/jobs/complete", done, true), ("/v1/jobs/fail", failed, false)]
        {
            if items.is_empty() {
                continue;
            }
            match api.try_post(path, &json!({ "items": items })).await {
                Ok(a) if a.status == 200 => {
                    let results = a.body["results"].as_array().cloned().unwrap_or_default();
                    let mut b = book.lock().unwrap();
                    if results.len() != items.len() {
                        b.bad.push(format!("{path}: not one result per item: {}", a.brief()));
                        continue;
                    }
                    for (item, r) in items.iter().zip(&results) {
                        if r["ok"] == true {
                            if completing {
                                b.completions.entry(id_of(item)).or_default().push(name.clone());
                            } else {
                                b.fails += 1;
                            }
                        } else if r["error"]["code"] != "stale_lease" {
                            b.bad.push(format!("{path} item {}: {r}", item["id"]));
                        }
                    }
                }
                Ok(a) if a.status == 503 => {}
                Ok(a) => book.lock().unwrap().bad.push(format!("{path}: {}", a.brief())),
                Err(_) => {}
            }
        }
    }
}

/// Claims two jobs every 150 ms with a 300 ms lease and never reports them.
async fn paid_abandoner(api: Ledger, book: Arc<Mutex<PaidBook>>, stop: Arc<AtomicBool>) {
    let claim = json!({"worker": "abandoner", "max": 2, "lease_ms": 300});
    let path = format!("/v1/queues/{PAID_Q}/claim");
    while !stop.load(Ordering::SeqCst) {
        if let Ok(a) = api.try_post(&path, &claim).await
            && a.status == 200
        {
            book.lock().unwrap().abandoned += a.body["jobs"].as_array().map_or(0, Vec::len);
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// The paid-jobs test's workers: 15 plain names and one that needs percent-encoding.
fn paid_worker_names() -> Vec<String> {
    (0..15).map(|w| format!("pw-{w}")).chain(["gpu box".to_string()]).collect()
}

both_backends!(
    paid_jobs,
    paid_jobs_sqlite,
    paid_jobs_postgres,
    "ferry_lg_paid",
    300 + paid_jobs_knob() as u64 / 40 + 30 * paid_kills() as u64,
    ""
);

async fn paid_jobs(be: &Backend) {
    let n = paid_jobs_knob();
    let kills = paid_kills();
    let plans = Arc::new(paid_plans(n));
    let normal = plans.iter().filter(|p| !p.doomed && !p.delayed).count();
    let fund: i64 = plans.iter().map(|p| p.amount).sum::<i64>() + 1_000;
    let book = Arc::new(Mutex::new(PaidBook::default()));
    let mut dir = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    for cycle in 0..=kills {
        let server = be.start_in(dir).await;
        let api = Ledger::new(&server.url);
        api.wait_ready().await;
        assert_no_panic(&server);
        if cycle == 0 {
            api.create_accounts(
                json!([{"id": "bank"}, {"id": "payer", "flags": ["debits_must_not_exceed_credits"]}]),
            )
            .await;
            api.transfer(tr("paid-fund", "bank", "payer", fund)).await;
        } else {
            let v = api.verify(false).await;
            assert_verified(&v, &format!("verify after kill {cycle}"));
        }
        if book.lock().unwrap().uncertain {
            paid_reconcile(&api, &book).await;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let producer = tokio::spawn(paid_producer(api.clone(), plans.clone(), book.clone(), stop.clone()));
        let mut tasks: Vec<JoinHandle<()>> = paid_worker_names()
            .into_iter()
            .map(|name| tokio::spawn(paid_worker(api.clone(), name, book.clone(), stop.clone())))
            .collect();
        tasks.push(tokio::spawn(paid_abandoner(api.clone(), book.clone(), stop.clone())));

        if cycle == kills {
            producer.await.unwrap();
            {
                let b = book.lock().unwrap();
                assert_none("unexpected answers while enqueueing", &b.bad);
                assert_eq!(b.enqueued.len(), n, "every job enqueued on the last server");
            }
            // The delayed ones: cancelled (their holds voided).
            let delayed: Vec<String> = {
                let b = book.lock().unwrap();
                b.enqueued.iter().filter(|(i, _)| plans[**i].delayed).map(|(_, id)| id.clone()).collect()
            };
            for id in &delayed {
                let a = api
                    .post_json(
                        &format!("/v1/jobs/{id}/cancel"),
                        &json!({"reason": "delayed, then cancelled"}),
                    )
                    .await;
                assert_eq!(ok(&a, 200, &format!("cancel {id}"))["state"], "cancelled", "{}", a.brief());
            }
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                let c = api.queue_counts(PAID_Q).await;
                let ended: u64 =
                    ["completed", "dead", "cancelled"].iter().map(|k| c.get(*k).copied().unwrap_or(0)).sum();
                if ended == n as u64 {
                    break;
                }
                assert!(Instant::now() < deadline, "only {ended} of {n} paid jobs ended: {c:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            stop.store(true, Ordering::SeqCst);
            for t in tasks {
                t.await.unwrap();
            }
            assert_no_panic(&server);
            paid_final_checks(&api, &plans, &book, fund).await;
            {
                let b = book.lock().unwrap();
                eprintln!(
                    "ledger paid jobs: {n} jobs, {kills} kills in {:?}, {} completions and {} failures \
                     acknowledged, {} claims abandoned",
                    t0.elapsed(),
                    b.completions.len(),
                    b.fails,
                    b.abandoned
                );
            }
            be.stop_and_check(server).await;
            break;
        }

        // Kill once another share of the normal jobs is completed.
        let target = (cycle + 1) * normal / (kills + 1);
        let started = Instant::now();
        loop {
            let done = book.lock().unwrap().completions.len();
            if done >= target && started.elapsed() >= Duration::from_millis(300) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "cycle {cycle}: {done} of {target} completions within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        dir = kill_keep_dir(server);
        stop.store(true, Ordering::SeqCst);
        producer.await.unwrap();
        for t in tasks {
            t.await.unwrap();
        }
    }
}

/// The end of the paid-jobs test (see the module doc).
async fn paid_final_checks(api: &Ledger, plans: &[PaidPlan], book: &Mutex<PaidBook>, fund: i64) {
    let (completions, enqueued) = {
        let b = book.lock().unwrap();
        assert_none("unexpected answers to the paid jobs' clients", &b.bad);
        (b.completions.clone(), b.enqueued.clone())
    };
    let jobs = api.jobs(&format!("queue={PAID_Q}")).await;
    assert_eq!(jobs.len(), plans.len(), "one job per plan");
    let escrow: HashMap<String, Value> =
        api.statement("escrow").await.into_iter().map(|t| (id_of(&t), t)).collect();
    let mut errors = Vec::new();
    let mut paid_total = 0i64;
    let mut per_worker: BTreeMap<String, i64> = BTreeMap::new();
    let mut completed = 0usize;
    for j in &jobs {
        let id = id_of(j);
        let i = j["payload"]["i"].as_u64().unwrap_or(u64::MAX) as usize;
        let Some(p) = plans.get(i) else {
            errors.push(format!("a job of no plan: {j}"));
            continue;
        };
        if enqueued.get(&i) != Some(&id) {
            errors.push(format!("plan {i}: job {id} is not the one enqueued ({:?})", enqueued.get(&i)));
        }
        let state = j["state"].as_str().unwrap_or("?");
        let want = if p.delayed {
            "cancelled"
        } else if p.doomed {
            "dead"
        } else {
            "completed"
        };
        if state != want {
            errors.push(format!("plan {i}: job {id} ended {state}, not {want}: {j}"));
        }
        let hold = escrow.get(&format!("job:{id}:hold"));
        let pay = escrow.get(&format!("job:{id}:pay"));
        let Some(hold) = hold else {
            errors.push(format!("job {id} ({state}): no hold in escrow's statement"));
            continue;
        };
        if hold["debit_account"] != "payer"
            || hold["credit_account"] != "escrow"
            || hold["amount"] != p.amount
            || hold["pending"] != true
            || hold["job_id"] != id.as_str()
        {
            errors.push(format!("job {id}: hold not as the job's payment: {hold}"));
        }
        match state {
            "completed" => {
                completed += 1;
                let worker = j["worker"].as_str().unwrap_or("");
                let to = worker_account(worker);
                if hold["state"] != "posted" || hold["posted_amount"] != p.amount {
                    errors.push(format!("completed job {id}: hold not posted whole: {hold}"));
                }
                match pay {
                    Some(t)
                        if t["state"] == "posted"
                            && t["debit_account"] == "escrow"
                            && t["credit_account"] == to.as_str()
                            && t["amount"] == p.amount
                            && t["job_id"] == id.as_str() =>
                    {
                        paid_total += p.amount;
                        *per_worker.entry(worker.to_string()).or_default() += p.amount;
                    }
                    other => errors.push(format!("completed job {id} (worker {worker:?}): pay is {other:?}")),
                }
                match completions.get(&id).map(Vec::as_slice) {
                    None | Some([]) => {} // its acknowledgement was lost to a kill
                    Some([w]) if w == worker => {}
                    Some(ws) => {
                        errors.push(format!("job {id} (worker {worker:?}) acknowledged completed by {ws:?}"))
                    }
                }
            }
            _ => {
                if hold["state"] != "voided" {
                    errors.push(format!("{state} job {id}: hold not voided: {hold}"));
                }
                if let Some(t) = pay {
                    errors.push(format!("{state} job {id} was paid: {t}"));
                }
                if completions.contains_key(&id) {
                    errors.push(format!("{state} job {id} was acknowledged completed"));
                }
            }
        }
    }
    if escrow.len() != jobs.len() + completed {
        errors.push(format!(
            "escrow's statement has {} transfers for {} holds and {completed} pays",
            escrow.len(),
            jobs.len()
        ));
    }
    assert_none("the paid jobs' transfers", &errors);

    // Balances.
    let e = api.account("escrow").await;
    assert_eq!(sums_of(&e), Sums::posted(paid_total, paid_total), "escrow nets 0, nothing pending: {e}");
    let payer = api.account("payer").await;
    assert_eq!(
        sums_of(&payer),
        Sums::posted(paid_total, fund),
        "the payer paid exactly the completed jobs: {payer}"
    );
    assert_eq!(num(&payer, "balance"), fund - paid_total, "{payer}");
    for (w, sum) in &per_worker {
        let a = api.account(&worker_account(w)).await;
        assert_eq!(sums_of(&a), Sums::posted(0, *sum), "{w}'s account holds what its jobs paid: {a}");
    }
    assert!(
        per_worker.contains_key("gpu box") || completed < 100,
        "the worker `gpu box` was paid: {per_worker:?}"
    );
    let a = api.get_json(&format!("/v1/ledger/accounts/{}", seg(&worker_account("abandoner")))).await;
    assert_eq!(a.status, 404, "the abandoner completed nothing, so it has no account: {}", a.brief());

    // The job view's payment and the single-transfer reads, for a sample.
    for j in jobs.iter().step_by(97) {
        let id = id_of(j);
        let v = api.job(&id).await;
        let i = v["payload"]["i"].as_u64().unwrap() as usize;
        let hold = format!("job:{id}:hold");
        assert_eq!(
            v["payment"],
            json!({"from": "payer", "amount": plans[i].amount, "ledger": 1, "code": 0, "hold": hold}),
            "GET /v1/jobs/{id}: {v}"
        );
        let t = api.read_transfer(&hold).await;
        assert_eq!(t["state"], escrow[&hold]["state"], "{t}");
        if v["state"] == "completed" {
            let t = api.read_transfer(&format!("job:{id}:pay")).await;
            assert_eq!(t["credit_account"], worker_account(v["worker"].as_str().unwrap()).as_str(), "{t}");
        } else {
            assert_eq!(api.get_transfer(&format!("job:{id}:pay")).await.status, 404, "no pay for {v}");
        }
    }
    let v = api.verify(true).await;
    assert_verified(&v, "verify --full after the paid jobs");
}

// ---------------------------------------------------------------------------------------------
// 4. Paid jobs: the deterministic edges
// ---------------------------------------------------------------------------------------------

both_backends!(paid_job_edges, paid_job_edges_sqlite, paid_job_edges_postgres, "ferry_lg_pe", 180, "");

/// The payment of job `id` as `GET /v1/jobs/{id}` shows it.
async fn payment_of(api: &Ledger, id: &str) -> Value {
    api.job(id).await["payment"].clone()
}

async fn paid_job_edges(be: &Backend) {
    let server = be.start().await;
    let open = Ledger::new(&server.url);
    let root = open.as_token(&mint(&open, json!({"name": "root", "scopes": ["admin"]})).await);
    let producer = root.as_token(&mint(&root, json!({"name": "prod", "scopes": ["produce", "read"]})).await);
    let pl = root
        .as_token(&mint(&root, json!({"name": "pl", "scopes": ["produce", "ledger", "read", "work"]})).await);
    let flag = json!(["debits_must_not_exceed_credits"]);
    pl.create_accounts(json!([
        {"id": "pe-bank"},
        {"id": "pe-payer", "flags": flag},
        {"id": "pe-poor", "flags": flag},
        {"id": "pe-shut"}
    ]))
    .await;
    pl.transfer(
        json!({"id": "pe-f1", "debit_account": "pe-bank", "credit_account": "pe-payer", "amount": 100}),
    )
    .await;
    pl.transfer(json!({"id": "pe-f2", "debit_account": "pe-bank", "credit_account": "pe-poor", "amount": 5}))
        .await;
    let a = pl.post_json("/v1/ledger/accounts/pe-shut/close", &json!({})).await;
    assert!(
        ok(&a, 200, "close pe-shut")["flags"].as_array().is_some_and(|f| f.contains(&json!("closed"))),
        "{}",
        a.brief()
    );

    let pay = |from: &str, amount: i64| json!({"from": from, "amount": amount});
    let paid = |queue: &str, from: &str, amount: i64| json!({"queue": queue, "payment": pay(from, amount)});

    // Who may pay, and from what.
    let a = producer.post_json("/v1/jobs", &paid("pe-q", "pe-payer", 1)).await;
    refused(&a, 403, "forbidden", "a paid job from a token without the ledger scope");
    let a = pl.post_json("/v1/jobs", &paid("pe-q", "pe-nobody", 1)).await;
    refused_field(&a, "payment.from", "payment from an unknown account");
    for from in ["escrow", "worker:x"] {
        let a = pl.post_json("/v1/jobs", &paid("pe-q", from, 1)).await;
        refused_field(&a, "payment.from", &format!("payment from {from}"));
    }
    let a = pl
        .post_json(
            "/v1/jobs",
            &json!({"queue": "pe-q", "payment": {"from": "pe-payer", "amount": 1, "ledger": 2}}),
        )
        .await;
    refused_field(&a, "payment.ledger", "payment in another ledger than jobs_ledger");
    let a = pl.post_json("/v1/jobs", &paid("pe-q", "pe-payer", 0)).await;
    refused_field(&a, "payment.amount", "payment of 0");
    assert!(pl.jobs("queue=pe-q").await.is_empty(), "no refused paid job was enqueued");

    // Too little money, a closed account: 409, nothing enqueued (a batch whole, with the index).
    let a = pl.post_json("/v1/jobs", &paid("pe-poor-q", "pe-poor", 6)).await;
    refused_reason(&a, "exceeds_credits", "a payment over the payer's money");
    let a = pl.post_json("/v1/jobs", &paid("pe-poor-q", "pe-shut", 1)).await;
    refused_reason(&a, "account_closed", "a payment from a closed account");
    let a = pl
        .post_json(
            "/v1/jobs",
            &json!({"jobs": [paid("pe-poor-q", "pe-poor", 2), paid("pe-poor-q", "pe-poor", 4)]}),
        )
        .await;
    let d = refused_reason(&a, "exceeds_credits", "a batch whose second payment the payer cannot cover");
    assert_eq!(d["index"], 1, "the batch refusal names the item: {}", a.brief());
    assert!(pl.jobs("queue=pe-poor-q").await.is_empty(), "a refused paid enqueue enqueues nothing");
    let poor = pl.account("pe-poor").await;
    assert_eq!(sums_of(&poor), Sums::posted(0, 5), "a refused paid enqueue holds nothing: {poor}");

    // A paid job: the view, the hold, completion paying the worker.
    let j1 = pl.enqueue(paid("pe-q", "pe-payer", 10)).await;
    let hold = format!("job:{j1}:hold");
    assert_eq!(
        payment_of(&pl, &j1).await,
        json!({"from": "pe-payer", "amount": 10, "ledger": 1, "code": 0, "hold": hold}),
        "the job view's payment"
    );
    let h = pl.read_transfer(&hold).await;
    for (k, want) in [
        ("state", json!("pending")),
        ("debit_account", json!("pe-payer")),
        ("credit_account", json!("escrow")),
        ("amount", json!(10)),
        ("job_id", json!(j1)),
    ] {
        assert_eq!(h[k], want, "the hold's {k}: {h}");
    }
    let payer = pl.account("pe-payer").await;
    assert_eq!((num(&payer, "available"), num(&payer, "debits_pending")), (90, 10), "{payer}");
    let claimed = pl.claim_one("pe-q", "pe w", &j1).await;
    pl.complete(&claimed).await;
    let p = pl.read_transfer(&format!("job:{j1}:pay")).await;
    for (k, want) in [
        ("state", json!("posted")),
        ("debit_account", json!("escrow")),
        ("credit_account", json!("worker:pe%20w")),
        ("amount", json!(10)),
        ("job_id", json!(j1)),
    ] {
        assert_eq!(p[k], want, "the pay's {k}: {p}");
    }
    let h = pl.read_transfer(&hold).await;
    assert_eq!((&h["state"], &h["posted_amount"]), (&json!("posted"), &json!(10)), "{h}");
    let w = pl.account("worker:pe%20w").await;
    assert_eq!(sums_of(&w), Sums::posted(0, 10), "{w}");
    let a = pl.post_json(&format!("/v1/jobs/{j1}/complete"), &json!({"lease": claimed["lease"]})).await;
    // A repeated report is answered as before (idempotent) or refused; it never pays twice.
    assert!(matches!(a.status, 200 | 409), "a second completion: {}", a.brief());
    assert_eq!(sums_of(&pl.account("worker:pe%20w").await), Sums::posted(0, 10), "paid once");

    // A dead job's hold is voided; a DLQ replay holds again as job:<id>:hold:1 and pays once.
    let d1 = pl.enqueue(json!({"queue": "pe-dlq", "max_attempts": 1, "payment": pay("pe-payer", 7)})).await;
    let c = pl.claim_one("pe-dlq", "pe w", &d1).await;
    pl.fail(&c, false).await;
    assert_eq!(pl.job(&d1).await["state"], "dead");
    assert_eq!(
        pl.read_transfer(&format!("job:{d1}:hold")).await["state"],
        "voided",
        "a dead job's hold is voided"
    );
    assert_eq!(num(&pl.account("pe-payer").await, "debits_pending"), 0, "nothing held for a dead job");
    let a = root.post_json("/v1/dlq/replay", &json!({"ids": [d1]})).await;
    let r = ok(&a, 200, "replay d1");
    assert_eq!(r["replayed"], 1, "{}", a.brief());
    assert!(r["refused"].as_array().is_none_or(Vec::is_empty), "{}", a.brief());
    let hold1 = format!("job:{d1}:hold:1");
    assert_eq!(payment_of(&pl, &d1).await["hold"], hold1.as_str(), "the replayed job's hold");
    let h1 = pl.read_transfer(&hold1).await;
    assert_eq!(
        (&h1["state"], &h1["amount"], &h1["debit_account"]),
        (&json!("pending"), &json!(7), &json!("pe-payer")),
        "{h1}"
    );
    let c = pl.claim_one("pe-dlq", "pe w", &d1).await;
    pl.complete(&c).await;
    assert_eq!(pl.read_transfer(&hold1).await["state"], "posted");
    assert_eq!(
        pl.read_transfer(&format!("job:{d1}:hold")).await["state"],
        "voided",
        "the first hold stays voided"
    );
    let p = pl.read_transfer(&format!("job:{d1}:pay")).await;
    assert_eq!(
        (&p["state"], &p["amount"], &p["credit_account"]),
        (&json!("posted"), &json!(7), &json!("worker:pe%20w")),
        "{p}"
    );

    // A replay the payer cannot cover: refused, listed, the job stays dead.
    let d2 = pl.enqueue(json!({"queue": "pe-dlq2", "max_attempts": 1, "payment": pay("pe-poor", 5)})).await;
    let c = pl.claim_one("pe-dlq2", "pe w", &d2).await;
    pl.fail(&c, true).await;
    assert_eq!(pl.job(&d2).await["state"], "dead", "max_attempts 1: a retryable failure is final");
    assert_eq!(pl.read_transfer(&format!("job:{d2}:hold")).await["state"], "voided");
    pl.transfer(
        json!({"id": "pe-drain", "debit_account": "pe-poor", "credit_account": "pe-bank", "amount": 5}),
    )
    .await;
    let a = root.post_json("/v1/dlq/replay", &json!({"ids": [d2]})).await;
    let r = ok(&a, 200, "replay d2 without funds");
    assert_eq!(r["replayed"], 0, "{}", a.brief());
    let listed = r["refused"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 1, "the refused replay is listed: {}", a.brief());
    assert_eq!(listed[0]["id"], d2.as_str(), "{}", a.brief());
    assert_eq!(listed[0]["error"]["code"], "invalid_state", "{}", a.brief());
    assert_eq!(listed[0]["error"]["details"]["reason"], "exceeds_credits", "{}", a.brief());
    assert_eq!(pl.job(&d2).await["state"], "dead", "a refused replay leaves the job dead");

    // A dependency cascade voids the dependant's hold too; so does a cancel.
    let parent =
        pl.enqueue(json!({"queue": "pe-par", "max_attempts": 1, "payment": pay("pe-payer", 3)})).await;
    let child =
        pl.enqueue(json!({"queue": "pe-child", "depends_on": [parent], "payment": pay("pe-payer", 4)})).await;
    let c = pl.claim_one("pe-par", "pe w", &parent).await;
    pl.fail(&c, false).await;
    assert_eq!(pl.job(&child).await["state"], "cancelled", "the dependant of a dead job is cancelled");
    for j in [&parent, &child] {
        assert_eq!(pl.read_transfer(&format!("job:{j}:hold")).await["state"], "voided", "hold of {j}");
    }
    let x =
        pl.enqueue(json!({"queue": "pe-cancel", "delay_ms": 3_600_000, "payment": pay("pe-payer", 2)})).await;
    let a = root.post_json(&format!("/v1/jobs/{x}/cancel"), &json!({})).await;
    assert_eq!(ok(&a, 200, "cancel x")["state"], "cancelled");
    assert_eq!(pl.read_transfer(&format!("job:{x}:hold")).await["state"], "voided", "a cancelled job's hold");

    // Payment on a convoy member: 422.
    let a = pl
        .post_json(
            "/v1/convoys",
            &json!({"id": "pe-cv", "queue": "pe-cvq", "members": [{"payment": pay("pe-payer", 1)}]}),
        )
        .await;
    refused(&a, 422, "validation_failed", "payment on a convoy member");
    assert!(a.field().contains("payment"), "the field names the payment: {}", a.brief());

    // The money: the payer paid 10 + 7, nothing is held, escrow nets 0.
    let payer = pl.account("pe-payer").await;
    assert_eq!(sums_of(&payer), Sums::posted(17, 100), "{payer}");
    let e = pl.account("escrow").await;
    assert_eq!(sums_of(&e), Sums::posted(17, 17), "{e}");
    let v = pl.verify(true).await;
    assert_verified(&v, "verify after the paid job edges");
    be.stop_and_check(server).await;
}

// ---------------------------------------------------------------------------------------------
// 5. Tampering: replay equals live; an altered balance or event
// ---------------------------------------------------------------------------------------------

both_backends!(tamper, tamper_sqlite, tamper_postgres, "ferry_lg_tamper", 240, "");

/// A ledger write and a paid enqueue are refused with 503 `unavailable` naming `accounts`;
/// unpaid jobs run; `/readyz` is 200.
async fn assert_refusing(root: &Ledger, clerk: &Ledger, accounts: &[&str], n: usize, what: &str) {
    let a = root.get_json("/readyz").await;
    assert_eq!(a.status, 200, "{what}: /readyz stays ready: {}", a.brief());
    let writes = [
        ("/v1/ledger/transfers".to_string(), tr(&format!("tp-refused-{n}"), "tp-bank", "tp-bob", 1)),
        ("/v1/ledger/accounts".to_string(), json!({"id": format!("tp-new-{n}")})),
        ("/v1/ledger/transfers/tp-p4/void".to_string(), json!({})),
        ("/v1/jobs".to_string(), json!({"queue": "tp-paid", "payment": {"from": "tp-alice", "amount": 1}})),
    ];
    for (path, body) in &writes {
        let a = clerk.post_json(path, body).await;
        let d = refused(&a, 503, "unavailable", &format!("{what}: POST {path}"));
        assert!(a.retry_after.is_some(), "{what}: POST {path}: 503 without Retry-After");
        let named: BTreeSet<&str> = d["accounts"]
            .as_array()
            .map_or(BTreeSet::new(), |l| l.iter().filter_map(Value::as_str).collect());
        for acc in accounts {
            assert!(named.contains(acc), "{what}: POST {path}: details.accounts lacks {acc}: {}", a.brief());
        }
    }
    // Jobs go on.
    let id = clerk.enqueue(json!({"queue": "tp-jobs", "payload": {"n": n}})).await;
    let c = clerk.claim_one("tp-jobs", "tp-worker", &id).await;
    clerk.complete(&c).await;
    assert_eq!(clerk.job(&id).await["state"], "completed", "{what}: unpaid jobs run");
    // Reads go on.
    clerk.account("tp-alice").await;
}

async fn tamper(be: &Backend) {
    let server = be.start().await;
    let open = Ledger::new(&server.url);
    let root_token = mint(&open, json!({"name": "root", "scopes": ["admin"]})).await;
    let root = open.as_token(&root_token);
    let clerk_token =
        mint(&root, json!({"name": "clerk", "scopes": ["ledger", "read", "produce", "work"]})).await;
    let clerk = root.as_token(&clerk_token);

    // A history of every kind of change.
    clerk
        .create_accounts(json!([
            {"id": "tp-bank"},
            {"id": "tp-alice", "flags": ["debits_must_not_exceed_credits"], "metadata": {"owner": "alice"}},
            {"id": "tp-bob", "code": 7}
        ]))
        .await;
    clerk.transfer(tr("tp-fund", "tp-bank", "tp-alice", 1_000)).await;
    for i in 0..20 {
        clerk.transfer(tr(&format!("tp-pay-{i}"), "tp-alice", "tp-bob", 10 + i)).await;
    }
    let pending = |id: &str, amount: i64| {
        let mut t = tr(id, "tp-alice", "tp-bob", amount);
        t["pending"] = json!(true);
        t
    };
    clerk.transfer(pending("tp-p1", 50)).await;
    let a = clerk.post_json("/v1/ledger/transfers/tp-p1/post", &json!({"amount": 30})).await;
    assert_eq!(
        (&ok(&a, 200, "partial post")["state"], &a.body["posted_amount"]),
        (&json!("posted"), &json!(30))
    );
    clerk.transfer(pending("tp-p2", 40)).await;
    let a = clerk.post_json("/v1/ledger/transfers/tp-p2/void", &json!({})).await;
    assert_eq!(ok(&a, 200, "void")["state"], "voided");
    let mut p3 = pending("tp-p3", 25);
    p3["timeout_ms"] = json!(100);
    clerk.transfer(p3).await;
    clerk.transfer(pending("tp-p4", 5)).await;
    let a = clerk.post_json(TRANSFERS, &tr("tp-big", "tp-alice", "tp-bob", 1_000_000)).await;
    refused_reason(&a, "exceeds_credits", "more than alice has");
    let pj = clerk.enqueue(json!({"queue": "tp-paid", "payment": {"from": "tp-alice", "amount": 5}})).await;
    let c = clerk.claim_one("tp-paid", "tp w", &pj).await;
    clerk.complete(&c).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while clerk.read_transfer("tp-p3").await["state"] != "expired" {
        assert!(Instant::now() < deadline, "tp-p3 (timeout 100 ms) not expired within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alice_before = sums_of(&clerk.account("tp-alice").await);

    // Replay equals live, and after a SIGKILL and restart too.
    let v = clerk.verify(true).await;
    assert_verified(&v, "verify --full of an intact ledger");
    let (digest, head) = (v["digest"].clone(), num(&v, "head_seq"));
    let events = clerk.ledger_events().await;
    let seqs: Vec<i64> = events.iter().map(|e| num(e, "seq")).collect();
    assert_eq!(seqs, (1..=head).collect::<Vec<i64>>(), "the chain is gap-free from 1 to head_seq");
    for e in &events {
        assert!(
            e["hash"].as_str().is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())),
            "{e}"
        );
        assert!(e["type"].is_string() && e["at"].is_string(), "{e}");
    }
    let (code, out) = cli(&server.url, Some(&clerk_token), &["ledger", "verify", "--full"]).await;
    assert_eq!(code, 0, "ferry ledger verify --full of an intact ledger: {out}");
    let server = be.start_in(kill_keep_dir(server)).await;
    let (root, clerk) =
        (Ledger::new(&server.url).as_token(&root_token), Ledger::new(&server.url).as_token(&clerk_token));
    root.wait_ready().await;
    let v = clerk.verify(true).await;
    assert_verified(&v, "verify --full after a SIGKILL and restart");
    assert_eq!(
        (&v["digest"], num(&v, "head_seq")),
        (&digest, head),
        "replay after a restart equals live: {v}"
    );
    let v = clerk.verify(false).await;
    assert_verified(&v, "verify after a restart");
    assert_eq!(v["digest"], digest, "{v}");

    // A balance altered behind ferry's back.
    let dir = stop_clean(server).await;
    be.alter_balance(dir.path(), "tp-alice", 7).await;
    let server = be.start_in(dir).await;
    let (root, clerk) =
        (Ledger::new(&server.url).as_token(&root_token), Ledger::new(&server.url).as_token(&clerk_token));
    root.wait_ready().await;
    assert_refusing(&root, &clerk, &["tp-alice"], 1, "an altered balance").await;
    let v = clerk.verify(true).await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(has_problem(&v, "balance", Some("tp-alice"), None), "verify names the altered account: {v}");
    let (code, out) = cli(&server.url, Some(&clerk_token), &["ledger", "verify", "--full"]).await;
    assert_eq!(code, 1, "ferry ledger verify --full of an altered ledger: {out}");
    assert_eq!(gauge(&root, "ferry_ledger_writes_refused").await, Some(1.0), "the refusal gauge");
    let a = clerk.post_json("/v1/ledger/verify", &json!({"full": true, "repair": true})).await;
    refused(&a, 403, "forbidden", "a repair without admin");
    let a = root.post_json("/v1/ledger/verify", &json!({"full": true, "repair": true})).await;
    assert_eq!(ok(&a, 200, "repair")["repaired"], true, "{}", a.brief());
    let v = clerk.verify(true).await;
    assert_verified(&v, "verify --full after the repair");
    assert_eq!(v["digest"], digest, "the repair restored the balances the chain says: {v}");
    let last = clerk.ledger_events().await.pop().expect("events");
    assert_eq!(last["type"], "ledger.repaired", "a repair appends ledger.repaired: {last}");
    assert_eq!(sums_of(&clerk.account("tp-alice").await), alice_before, "alice as before the alteration");
    clerk.transfer(tr("tp-after", "tp-bank", "tp-bob", 1)).await;
    let a = clerk.post_json("/v1/ledger/transfers/tp-p4/void", &json!({})).await;
    assert_eq!(ok(&a, 200, "void after the repair")["state"], "voided");
    let (code, out) = cli(&server.url, Some(&clerk_token), &["ledger", "verify", "--full"]).await;
    assert_eq!(code, 0, "ferry ledger verify --full after the repair: {out}");
    assert_eq!(
        gauge(&root, "ferry_ledger_writes_refused").await,
        Some(0.0),
        "the refusal gauge after the repair"
    );
    for i in 0..5 {
        clerk.transfer(tr(&format!("tp-late-{i}"), "tp-alice", "tp-bob", 3)).await;
    }
    let seq = num(&clerk.read_transfer("tp-late-2").await, "seq");
    let dir = stop_clean(server).await;
    be.check_store(dir.path()).await;

    // An event altered behind ferry's back (after the repair, so no snapshot covers it).
    be.alter_event(dir.path(), seq).await;
    let server = be.start_in(dir).await;
    let (root, clerk) =
        (Ledger::new(&server.url).as_token(&root_token), Ledger::new(&server.url).as_token(&clerk_token));
    root.wait_ready().await;
    assert_refusing(&root, &clerk, &["tp-alice", "tp-bob"], 2, "an altered event").await;
    let v = clerk.verify(true).await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(has_problem(&v, "chain", None, Some(seq)), "verify names the altered event (seq {seq}): {v}");
    let (code, out) = cli(&server.url, Some(&clerk_token), &["ledger", "verify", "--full"]).await;
    assert_eq!(code, 1, "ferry ledger verify --full of an altered chain: {out}");
    // The chain stays broken by design: no check_invariants here.
    stop_clean(server).await;
}

// ---------------------------------------------------------------------------------------------
// 6. ferry migrate: SQLite -> PostgreSQL keeps the digest
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_keeps_the_digest() {
    let Some(db) = TestDb::create("ferry_lg_mig").await else { return };
    bounded(Duration::from_secs(300), "migrate_keeps_the_digest", migrate_scenario(db)).await;
}

async fn migrate_scenario(db: TestDb) {
    let sqlite = Backend::sqlite("");
    let server = sqlite.start().await;
    let api = Ledger::new(&server.url);
    api.create_accounts(json!([
        {"id": "mg-bank", "metadata": {"k": "v"}},
        {"id": "mg-a", "flags": ["debits_must_not_exceed_credits"]},
        {"id": "mg-b", "code": 3},
        {"id": "mg-shut"},
        {"id": "mg-l2", "ledger": 2}
    ]))
    .await;
    // 1,500 transfers (more than one snapshot's worth of events), in atomic batches of 100.
    for b in 0..15 {
        let items: Vec<Value> = (0..100)
            .map(|i| {
                // mg-a (flagged) receives 1..=5, then passes 1 on: it never runs short.
                let (d, c, amount) =
                    if i % 2 == 1 { ("mg-a", "mg-b", 1) } else { ("mg-bank", "mg-a", 1 + i % 5) };
                tr(&format!("mg-{b}-{i}"), d, c, amount)
            })
            .collect();
        let a = api.post_json(TRANSFERS, &json!({"transfers": items, "atomic": true})).await;
        ok(&a, 201, &format!("batch {b}"));
    }
    let pending = |id: &str, amount: i64, timeout: Option<i64>| {
        let mut t = tr(id, "mg-a", "mg-b", amount);
        t["pending"] = json!(true);
        if let Some(ms) = timeout {
            t["timeout_ms"] = json!(ms);
        }
        t
    };
    api.transfer(pending("mg-p1", 20, None)).await;
    ok(&api.post_json("/v1/ledger/transfers/mg-p1/post", &json!({"amount": 5})).await, 200, "partial post");
    api.transfer(pending("mg-p2", 20, None)).await;
    ok(&api.post_json("/v1/ledger/transfers/mg-p2/void", &json!({})).await, 200, "void");
    api.transfer(pending("mg-p3", 20, Some(100))).await;
    api.transfer(pending("mg-p4", 9, None)).await; // left pending
    let a = api.post_json(TRANSFERS, &tr("mg-big", "mg-a", "mg-b", 1_000_000_000)).await;
    refused_reason(&a, "exceeds_credits", "a refusal to migrate");
    ok(&api.post_json("/v1/ledger/accounts/mg-shut/close", &json!({})).await, 200, "close");
    let j = api.enqueue(json!({"queue": "mg-q", "payment": {"from": "mg-a", "amount": 4}})).await;
    let c = api.claim_one("mg-q", "mg w", &j).await;
    api.complete(&c).await;
    let held = api.enqueue(json!({"queue": "mg-held", "payment": {"from": "mg-a", "amount": 2}})).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while api.read_transfer("mg-p3").await["state"] != "expired" {
        assert!(Instant::now() < deadline, "mg-p3 not expired within 15 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v = api.verify(true).await;
    assert_verified(&v, "verify --full on SQLite");
    let (digest, head) = (v["digest"].clone(), num(&v, "head_seq"));
    assert!(head > 1_000, "more than a snapshot's worth of events: {v}");
    let accounts = api.accounts().await;
    let events = api.ledger_events().await;
    let mut ids: Vec<String> = ["mg-0-0", "mg-14-99", "mg-p1", "mg-p2", "mg-p3", "mg-p4", "mg-big"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    ids.push(format!("job:{j}:pay"));
    ids.push(format!("job:{held}:hold"));
    let mut transfers = Vec::new();
    for id in &ids {
        transfers.push(api.read_transfer(id).await);
    }
    let dir = stop_clean(server).await;
    sqlite.check_store(dir.path()).await;

    let from = dir.path().join("ferry.db").display().to_string();
    let to = db.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
            .args(["migrate", "--from", &from, "--to", &to])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "ferry migrate: {text}");

    let pg = Backend::on(db, 8, "");
    let server = pg.start().await;
    let api = Ledger::new(&server.url);
    api.wait_ready().await;
    let v = api.verify(true).await;
    assert_verified(&v, "verify --full on PostgreSQL after the migration");
    assert_eq!((&v["digest"], num(&v, "head_seq")), (&digest, head), "the same digest and head: {v}");
    assert_eq!(api.accounts().await, accounts, "the accounts read back the same");
    assert_eq!(api.ledger_events().await, events, "the event chain reads back the same");
    for t in &transfers {
        assert_eq!(&api.read_transfer(&id_of(t)).await, t, "transfer {} reads back the same", t["id"]);
    }
    // And it goes on: the held job is paid, a new transfer appends to the chain.
    let c = api.claim_one("mg-held", "mg w", &held).await;
    api.complete(&c).await;
    api.transfer(
        json!({"id": "mg-after", "debit_account": "mg-bank", "credit_account": "mg-b", "amount": 1}),
    )
    .await;
    let v = api.verify(true).await;
    assert_verified(&v, "verify --full after writing on PostgreSQL");
    assert!(num(&v, "head_seq") > head, "{v}");
    pg.stop_and_check(server).await;
}

// ---------------------------------------------------------------------------------------------
// 7. ferry ledger import-json
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_json_twice() {
    let be = Backend::sqlite("");
    bounded(Duration::from_secs(120), "import_json_twice", import_json(&be)).await;
}

async fn import_json(be: &Backend) {
    let server = be.start().await;
    let api = Ledger::new(&server.url);
    let files = tempfile::tempdir().unwrap();
    let write = |name: &str, v: Value| {
        let p = files.path().join(name);
        std::fs::write(&p, v.to_string()).unwrap();
        p.display().to_string()
    };
    let file =
        write("ledger.json", json!({"accounts": {"w1": 10, "w2": 25, "gpu box": 7}, "updated": "yesterday"}));
    let (code, out) = cli(&server.url, None, &["ledger", "import-json", &file]).await;
    assert_eq!(code, 0, "the first import: {out}");
    assert!(out.contains("imported 3"), "the first import imports 3: {out}");
    let (code, out) = cli(&server.url, None, &["ledger", "import-json", &file]).await;
    assert_eq!(code, 0, "the second import: {out}");
    assert!(
        out.contains("imported 0") && out.contains("already present 3"),
        "the second import imports nothing: {out}"
    );
    for (acc, want) in [("worker:w1", 10), ("worker:w2", 25), ("worker:gpu%20box", 7)] {
        let a = api.account(acc).await;
        assert_eq!(sums_of(&a), Sums::posted(0, want), "{acc}: {a}");
    }
    let g = api.account("genesis").await;
    assert_eq!(num(&g, "balance"), -42, "genesis paid for every import: {g}");

    // A changed balance is reported, nothing changes.
    let changed = write("changed.json", json!({"accounts": {"w1": 11, "w2": 25, "gpu box": 7}}));
    let (code, out) = cli(&server.url, None, &["ledger", "import-json", &changed]).await;
    assert_eq!(code, 1, "a changed balance fails the import: {out}");
    assert!(out.contains("w1"), "the report names w1: {out}");
    assert_eq!(num(&api.account("worker:w1").await, "balance"), 10, "w1 unchanged");

    // --scale: 0.5 x 100 is 50; 0.505 x 100 is no integer.
    let half = write("half.json", json!({"accounts": {"h1": 0.5}}));
    let (code, out) = cli(&server.url, None, &["ledger", "import-json", &half, "--scale", "100"]).await;
    assert_eq!(code, 0, "--scale 100 of 0.5: {out}");
    assert_eq!(num(&api.account("worker:h1").await, "balance"), 50);
    let odd = write("odd.json", json!({"accounts": {"h2": 0.505}}));
    let (code, out) = cli(&server.url, None, &["ledger", "import-json", &odd, "--scale", "100"]).await;
    assert_eq!(code, 1, "--scale 100 of 0.505 is no integer: {out}");
    assert!(out.contains("h2"), "the report names h2: {out}");
    assert_eq!(api.get_json("/v1/ledger/accounts/worker:h2").await.status, 404, "nothing imported for h2");

    let v = api.verify(true).await;
    assert_verified(&v, "verify after the imports");
    be.stop_and_check(server).await;
}

// ---------------------------------------------------------------------------------------------
// 8. Limits, names, repeats and scopes
// ---------------------------------------------------------------------------------------------

/// 2^53 - 1: the largest amount.
const MAX_AMOUNT: i64 = (1 << 53) - 1;
/// `limits.max_batch`, `limits.max_delay_ms` (defaults).
const MAX_BATCH: usize = 10_000;
const MAX_DELAY_MS: i64 = 366 * 24 * 3_600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_sqlite() {
    let be = Backend::sqlite("");
    bounded(Duration::from_secs(180), "limits_sqlite", limits(&be)).await;
}

/// `{"id", "debit_account", "credit_account", "amount"}`.
fn tr(id: &str, debit: &str, credit: &str, amount: i64) -> Value {
    json!({"id": id, "debit_account": debit, "credit_account": credit, "amount": amount})
}

async fn limits(be: &Backend) {
    let server = be.start().await;
    let api = Ledger::new(&server.url);
    api.create_accounts(json!([{"id": "lim-bank"}, {"id": "lim-sink"}, {"id": "lim-ob"}, {"id": "lim-os"}]))
        .await;

    // Ids: 512 bytes, not 513; only [A-Za-z0-9._:%-].
    let long = "a".repeat(512);
    ok(&api.post_account(json!({ "id": long })).await, 201, "a 512-byte account id");
    refused_field(&api.post_account(json!({"id": "a".repeat(513)})).await, "id", "a 513-byte account id");
    ok(&api.post_transfer(tr(&"t".repeat(512), "lim-bank", &long, 1)).await, 201, "a 512-byte transfer id");
    refused_field(
        &api.post_transfer(tr(&"t".repeat(513), "lim-bank", "lim-sink", 1)).await,
        "id",
        "a 513-byte transfer id",
    );
    assert_eq!(num(&api.account(&long).await, "balance"), 1, "the 512-byte ids work");
    for bad in ["a b", "", "é", "a/b"] {
        refused_field(&api.post_account(json!({ "id": bad })).await, "id", &format!("account id {bad:?}"));
        refused_field(
            &api.post_transfer(tr(bad, "lim-bank", "lim-sink", 1)).await,
            "id",
            &format!("transfer id {bad:?}"),
        );
    }
    ok(&api.post_account(json!({"id": "A-z.0_9:%25"})).await, 201, "every allowed character");

    // Metadata: 4,096 bytes serialized, not 4,097 ({"s":"..."} is 8 bytes around the string).
    let meta = |n: usize| json!({"s": "x".repeat(n)});
    assert_eq!(meta(4_088).to_string().len(), 4_096);
    ok(
        &api.post_account(json!({"id": "lim-m1", "metadata": meta(4_088)})).await,
        201,
        "4,096 bytes of account metadata",
    );
    too_large(
        &api.post_account(json!({"id": "lim-m2", "metadata": meta(4_089)})).await,
        "metadata",
        "4,097 bytes of account metadata",
    );
    let mut t = tr("lim-tm1", "lim-bank", "lim-sink", 1);
    t["metadata"] = meta(4_088);
    ok(&api.post_transfer(t.clone()).await, 201, "4,096 bytes of transfer metadata");
    t["id"] = json!("lim-tm2");
    t["metadata"] = meta(4_089);
    too_large(&api.post_transfer(t).await, "metadata", "4,097 bytes of transfer metadata");
    // A wrong JSON type is a 400 `bad_request` naming the field (CONVENTIONS: errors).
    let a = api.post_account(json!({"id": "lim-m3", "metadata": [1]})).await;
    refused(&a, 400, "bad_request", "metadata that is no object");
    assert_eq!(a.field(), "metadata", "metadata that is no object: {}", a.brief());

    // Amounts: 1..=2^53-1, whole numbers.
    let a = api.post_transfer(tr("lim-max", "lim-bank", "lim-sink", MAX_AMOUNT)).await;
    assert_eq!(ok(&a, 201, "2^53-1")["amount"], MAX_AMOUNT, "{}", a.brief());
    refused_field(
        &api.post_transfer(tr("lim-2p53", "lim-bank", "lim-sink", MAX_AMOUNT + 1)).await,
        "amount",
        "2^53",
    );
    refused_field(&api.post_transfer(tr("lim-zero", "lim-bank", "lim-sink", 0)).await, "amount", "0");
    refused_field(&api.post_transfer(tr("lim-neg", "lim-bank", "lim-sink", -1)).await, "amount", "-1");
    let mut t = tr("lim-half", "lim-bank", "lim-sink", 0);
    t["amount"] = json!(5.5);
    // A fraction or a string is a wrong JSON type: 400 `bad_request` naming the field.
    for (v, what) in [(json!(5.5), "5.5"), (json!("5"), "a string amount")] {
        t["amount"] = v;
        let a = api.post_transfer(t.clone()).await;
        refused(&a, 400, "bad_request", what);
        assert_eq!(a.field(), "amount", "{what}: {}", a.brief());
    }
    t["id"] = json!("lim-five");
    t["amount"] = json!(5.0);
    assert_eq!(ok(&api.post_transfer(t).await, 201, "5.0 is a whole number")["amount"], 5);
    assert_eq!(api.get_transfer("lim-2p53").await.status, 404, "a 422 is not remembered");

    // A 64-bit overflow: 1,024 transfers of 2^53-1 fit, the 1,025th would pass 2^63-1.
    let items: Vec<Value> =
        (0..1_025).map(|i| tr(&format!("lim-of-{i}"), "lim-ob", "lim-os", MAX_AMOUNT)).collect();
    let a = api.post_transfer(json!({"transfers": items, "atomic": true})).await;
    let d = refused_reason(&a, "overflow", "a credit sum past 2^63-1");
    assert_eq!(d["index"], 1_024, "the item that overflows: {}", a.brief());
    assert_eq!(
        sums_of(&api.account("lim-os").await),
        Sums::default(),
        "a refused atomic batch writes nothing"
    );
    assert_eq!(api.get_transfer("lim-of-0").await.status, 404, "not even its refusal");

    // Batches: limits.max_batch, not one more.
    let items = |prefix: &str, n: usize| -> Vec<Value> {
        (0..n).map(|i| tr(&format!("{prefix}-{i}"), "lim-bank", "lim-sink", 1)).collect()
    };
    let a = api.post_transfer(json!({"transfers": items("lim-b", MAX_BATCH), "atomic": true})).await;
    assert_eq!(ok(&a, 201, "a batch of max_batch")["transfers"].as_array().map(Vec::len), Some(MAX_BATCH));
    for atomic in [true, false] {
        let a =
            api.post_transfer(json!({"transfers": items("lim-c", MAX_BATCH + 1), "atomic": atomic})).await;
        assert!(
            a.status == 413 || a.status == 422,
            "max_batch + 1 transfers (atomic {atomic}): {}",
            a.brief()
        );
        assert_eq!(a.field(), "transfers", "max_batch + 1 transfers: {}", a.brief());
    }
    assert_eq!(api.get_transfer("lim-c-0").await.status, 404, "an oversized batch writes nothing");
    let many: Vec<Value> = (0..=MAX_BATCH).map(|i| json!({"id": format!("lim-acc-{i}")})).collect();
    let a = api.post_json("/v1/ledger/accounts", &json!({ "accounts": many })).await;
    assert!(a.status == 413 || a.status == 422, "max_batch + 1 accounts: {}", a.brief());
    assert_eq!(a.field(), "accounts", "max_batch + 1 accounts: {}", a.brief());
    let a = api.post_transfer(json!({"transfers": [], "atomic": true})).await;
    assert_eq!(a.status, 422, "an empty batch: {}", a.brief());

    // Pending timeouts: 1..=limits.max_delay_ms, only with pending.
    let pend = |id: &str, timeout: Option<i64>, pending: bool| {
        let mut t = tr(id, "lim-bank", "lim-sink", 3);
        t["pending"] = json!(pending);
        if let Some(ms) = timeout {
            t["timeout_ms"] = json!(ms);
        }
        t
    };
    let a = api.post_transfer(pend("lim-to1", Some(MAX_DELAY_MS), true)).await;
    let t = ok(&a, 201, "timeout_ms = max_delay_ms");
    assert_eq!(t["state"], "pending", "{t}");
    assert!(t["expires_at"].is_string(), "a pending with a timeout expires: {t}");
    refused_field(
        &api.post_transfer(pend("lim-to2", Some(MAX_DELAY_MS + 1), true)).await,
        "timeout_ms",
        "past max_delay_ms",
    );
    refused_field(&api.post_transfer(pend("lim-to3", Some(0), true)).await, "timeout_ms", "timeout_ms 0");
    refused_field(
        &api.post_transfer(pend("lim-to4", Some(1_000), false)).await,
        "timeout_ms",
        "timeout_ms without pending",
    );

    // Ferry's own names.
    for id in ["escrow", "worker:x"] {
        refused_field(&api.post_account(json!({ "id": id })).await, "id", &format!("a client creating {id}"));
    }
    refused_field(
        &api.post_transfer(tr("job:x", "lim-bank", "lim-sink", 1)).await,
        "id",
        "a job: transfer id",
    );
    refused_field(
        &api.post_transfer(tr("lim-e1", "escrow", "lim-sink", 1)).await,
        "debit_account",
        "escrow debited",
    );
    refused_field(
        &api.post_transfer(tr("lim-e2", "lim-bank", "escrow", 1)).await,
        "credit_account",
        "escrow credited",
    );
    refused_field(
        &api.post_transfer(tr("lim-e3", "worker:x", "lim-sink", 1)).await,
        "debit_account",
        "a worker account debited",
    );
    ok(
        &api.post_transfer(tr("lim-w", "lim-bank", "worker:lim", 3)).await,
        201,
        "crediting a missing worker account",
    );
    let w = api.account("worker:lim").await;
    assert_eq!((num(&w, "balance"), &w["ledger"], &w["flags"]), (3, &json!(1), &json!([])), "{w}");

    // Ledgers, codes, flags, accounts.
    refused_field(&api.post_account(json!({"id": "lim-l0", "ledger": 0})).await, "ledger", "ledger 0");
    refused_field(
        &api.post_account(json!({"id": "lim-lx", "ledger": 4_294_967_296_i64})).await,
        "ledger",
        "ledger 2^32",
    );
    ok(&api.post_account(json!({"id": "lim-l2", "ledger": 4_294_967_295_i64})).await, 201, "ledger 2^32-1");
    refused_field(&api.post_account(json!({"id": "lim-c", "code": 65_536})).await, "code", "code 65536");
    let both = json!(["debits_must_not_exceed_credits", "credits_must_not_exceed_debits"]);
    refused_field(&api.post_account(json!({"id": "lim-f", "flags": both})).await, "flags", "both bounds");
    refused_field(
        &api.post_transfer(tr("lim-x", "lim-bank", "lim-l2", 1)).await,
        "ledger",
        "accounts of two ledgers",
    );
    let mut t = tr("lim-x2", "lim-bank", "lim-sink", 1);
    t["ledger"] = json!(2);
    refused_field(&api.post_transfer(t).await, "ledger", "a ledger not the accounts'");
    refused_field(
        &api.post_transfer(tr("lim-self", "lim-bank", "lim-bank", 1)).await,
        "credit_account",
        "an account paying itself",
    );
    let a = api.post_transfer(tr("lim-404", "lim-bank", "lim-later", 1)).await;
    refused(&a, 404, "not_found", "an unknown account");
    ok(&api.post_account(json!({"id": "lim-later"})).await, 201, "the account, later");
    ok(&api.post_transfer(tr("lim-404", "lim-bank", "lim-later", 1)).await, 201, "a 404 is not remembered");

    // Repeats: the same is a duplicate, another is a conflict naming the fields.
    let a = api.post_transfer(tr("lim-404", "lim-bank", "lim-later", 1)).await;
    let t = ok(&a, 200, "a repeated transfer");
    assert_eq!((&t["duplicate"], &t["state"]), (&json!(true), &json!("posted")), "{t}");
    let d = refused(
        &api.post_transfer(tr("lim-404", "lim-bank", "lim-later", 2)).await,
        409,
        "conflict",
        "a repeat with another amount",
    )
    .clone();
    assert_eq!(d["fields"], json!(["amount"]), "{d}");
    let a = api.post_account(json!({"id": "lim-later"})).await;
    assert_eq!(ok(&a, 200, "a repeated account")["duplicate"], true, "{}", a.brief());
    let d = refused(
        &api.post_account(json!({"id": "lim-later", "code": 9})).await,
        409,
        "conflict",
        "an account repeated with another code",
    )
    .clone();
    assert_eq!(d["fields"], json!(["code"]), "{d}");
    api.create_accounts(json!([{"id": "lim-flag", "flags": ["debits_must_not_exceed_credits"]}])).await;
    refused_reason(
        &api.post_transfer(tr("lim-r", "lim-flag", "lim-sink", 1)).await,
        "exceeds_credits",
        "an empty flagged account",
    );
    let d = refused_reason(
        &api.post_transfer(tr("lim-r", "lim-bank", "lim-sink", 1)).await,
        "id_already_failed",
        "a refused id again",
    )
    .clone();
    assert_eq!(d["original_reason"], "exceeds_credits", "{d}");

    // Posts and voids.
    ok(&api.post_transfer(pend("lim-p1", None, true)).await, 201, "pending");
    refused_field(
        &api.post_json("/v1/ledger/transfers/lim-p1/post", &json!({"amount": 4})).await,
        "amount",
        "posting more than held",
    );
    let a = api.post_json("/v1/ledger/transfers/lim-p1/post", &json!({"amount": 2})).await;
    assert_eq!(
        (&ok(&a, 200, "a partial post")["state"], &a.body["posted_amount"]),
        (&json!("posted"), &json!(2))
    );
    let a = api.post_json("/v1/ledger/transfers/lim-p1/post", &json!({})).await;
    assert_eq!(ok(&a, 200, "a repeated post")["duplicate"], true, "{}", a.brief());
    refused_reason(
        &api.post_json("/v1/ledger/transfers/lim-p1/post", &json!({"amount": 1})).await,
        "pending_already_posted",
        "another amount",
    );
    refused_reason(
        &api.post_json("/v1/ledger/transfers/lim-p1/void", &json!({})).await,
        "pending_already_posted",
        "voiding a posted one",
    );
    ok(&api.post_transfer(pend("lim-p2", None, true)).await, 201, "pending");
    assert_eq!(
        ok(&api.post_json("/v1/ledger/transfers/lim-p2/void", &json!({})).await, 200, "void")["state"],
        "voided"
    );
    assert_eq!(
        ok(&api.post_json("/v1/ledger/transfers/lim-p2/void", &json!({})).await, 200, "again")["duplicate"],
        true
    );
    refused_reason(
        &api.post_json("/v1/ledger/transfers/lim-p2/post", &json!({})).await,
        "pending_already_voided",
        "posting a voided one",
    );
    refused_reason(
        &api.post_json("/v1/ledger/transfers/lim-max/post", &json!({})).await,
        "not_pending",
        "posting a direct one",
    );
    refused_reason(
        &api.post_json("/v1/ledger/transfers/lim-r/void", &json!({})).await,
        "not_pending",
        "voiding a refused one",
    );
    refused(
        &api.post_json("/v1/ledger/transfers/lim-nope/post", &json!({})).await,
        404,
        "not_found",
        "posting an unknown one",
    );
    let sink = api.account("lim-sink").await;
    let bank = api.account("lim-bank").await;
    assert_eq!(num(&bank, "debits_pending"), 3, "lim-to1 still holds 3: {bank}");
    assert_eq!(num(&sink, "credits_pending"), 3, "{sink}");

    // Closed accounts: no new transfers.
    api.create_accounts(json!([{"id": "lim-shut"}])).await;
    let a = api.post_json("/v1/ledger/accounts/lim-shut/close", &json!({})).await;
    assert!(
        ok(&a, 200, "close")["flags"].as_array().is_some_and(|f| f.contains(&json!("closed"))),
        "{}",
        a.brief()
    );
    assert!(a.body["closed_at"].is_string(), "{}", a.brief());
    assert_eq!(
        ok(&api.post_json("/v1/ledger/accounts/lim-shut/close", &json!({})).await, 200, "again")["duplicate"],
        true
    );
    refused_reason(
        &api.post_transfer(tr("lim-cl", "lim-bank", "lim-shut", 1)).await,
        "account_closed",
        "crediting a closed account",
    );
    refused(
        &api.post_json("/v1/ledger/accounts/lim-none/close", &json!({})).await,
        404,
        "not_found",
        "closing an unknown account",
    );

    // Scopes (minting the first token turns auth on).
    let root_token = mint(&api, json!({"name": "root", "scopes": ["admin"]})).await;
    let root = api.as_token(&root_token);
    let reader = root.as_token(&mint(&root, json!({"name": "reader", "scopes": ["read"]})).await);
    let producer =
        root.as_token(&mint(&root, json!({"name": "producer", "scopes": ["produce", "read"]})).await);
    let restricted = root.as_token(
        &mint(&root, json!({"name": "restricted", "scopes": ["ledger", "read"], "queues": ["lim-q"]})).await,
    );
    let clerk = root.as_token(&mint(&root, json!({"name": "clerk", "scopes": ["ledger", "read"]})).await);
    ok(&reader.get_json("/v1/ledger/accounts/lim-bank").await, 200, "a read token reads an account");
    ok(&reader.get_json("/v1/ledger/transfers/lim-max").await, 200, "a read token reads a transfer");
    for (who, t) in [("read", &reader), ("produce", &producer), ("queue-restricted", &restricted)] {
        let writes = [
            ("/v1/ledger/accounts", json!({"id": "lim-tok"})),
            (TRANSFERS, tr("lim-tok", "lim-bank", "lim-sink", 1)),
            ("/v1/ledger/transfers/lim-to1/void", json!({})),
            ("/v1/ledger/accounts/lim-sink/close", json!({})),
        ];
        for (path, body) in writes {
            refused(
                &t.post_json(path, &body).await,
                403,
                "forbidden",
                &format!("POST {path} with a {who} token"),
            );
        }
    }
    assert_eq!(api.get_json("/v1/ledger/accounts/lim-bank").await.status, 401, "no token once auth is on");
    assert_eq!(
        api.post_json(TRANSFERS, &tr("lim-tok", "lim-bank", "lim-sink", 1)).await.status,
        401,
        "no token"
    );
    refused(
        &clerk.post_json("/v1/ledger/verify", &json!({"repair": true})).await,
        403,
        "forbidden",
        "a repair with a ledger token",
    );
    ok(
        &clerk.post_json(TRANSFERS, &tr("lim-tok", "lim-bank", "lim-sink", 1)).await,
        201,
        "a ledger token writes",
    );
    assert_verified(&clerk.verify(false).await, "a ledger token verifies");
    let v = root.verify(true).await;
    assert_verified(&v, "verify after the limits");
    be.stop_and_check(server).await;
}
