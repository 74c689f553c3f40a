//! SQLite schema and its migrations: versioned, applied on open, safe to run twice, and a
//! database written by a newer ferry is refused instead of being misread.
//!
//! Table registry (kept in step with `ferry migrate` and the PostgreSQL schema): `ferry_meta`,
//! `jobs`, `job_deps`, `queues` (pause flag, flow limits and the start-rate token bucket),
//! `event_log` (one row per committed group of events), `schedules`, `api_tokens`, `workers`,
//! `hosts`, the work items', messages', convoys' and ledger's tables.
//!
//! Indexes are partial wherever a state is rare, so a transition touches as few b-trees as
//! possible; counts per state are kept in memory (see `counts`), not in an index.

use ferry_core::{Error, ErrorCode, Result};
use rusqlite::{Connection, OptionalExtension};

/// Migrations in order; index + 1 is the schema version after applying it.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE jobs (
    seq              INTEGER PRIMARY KEY,
    id               BLOB NOT NULL UNIQUE,
    queue            TEXT NOT NULL,
    state            TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    run_at           INTEGER NOT NULL,
    payload          TEXT NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    backoff_base_ms  INTEGER NOT NULL,
    backoff_factor   REAL NOT NULL,
    backoff_max_ms   INTEGER NOT NULL,
    backoff_jitter   REAL NOT NULL,
    lease_ms         INTEGER NOT NULL,
    unique_key       TEXT,
    tags             TEXT,
    depends_on       TEXT,
    pending_deps     INTEGER NOT NULL DEFAULT 0,
    has_dependants   INTEGER NOT NULL DEFAULT 0,
    lease            TEXT,
    lease_expires_at INTEGER,
    worker           TEXT,
    result           TEXT,
    errors           TEXT,
    cancel_reason    TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER
);
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, run_at, seq) WHERE state = 'ready';
CREATE INDEX jobs_running ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE state = 'scheduled';
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state IN ('completed', 'cancelled');
CREATE INDEX jobs_dead ON jobs (queue, seq) WHERE state = 'dead';
CREATE INDEX jobs_waiting ON jobs (seq) WHERE state = 'waiting';
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state NOT IN ('completed', 'dead', 'cancelled');
CREATE INDEX jobs_unique_key_any ON jobs (unique_key, seq) WHERE unique_key IS NOT NULL;
CREATE TABLE job_deps (
    dep_seq INTEGER NOT NULL,
    job_seq INTEGER NOT NULL,
    PRIMARY KEY (dep_seq, job_seq)
) WITHOUT ROWID;
CREATE TABLE queues (
    name       TEXT PRIMARY KEY,
    paused     INTEGER NOT NULL DEFAULT 0,
    updated_at INTEGER NOT NULL
);
"#,
    r#"
CREATE TABLE event_log (
    id           INTEGER PRIMARY KEY,
    first_cursor INTEGER NOT NULL UNIQUE,
    n            INTEGER NOT NULL,
    at           INTEGER NOT NULL,
    body         TEXT NOT NULL
);
CREATE TABLE schedules (
    name         TEXT PRIMARY KEY,
    cron         TEXT NOT NULL,
    timezone     TEXT NOT NULL,
    job          TEXT NOT NULL,
    misfire      TEXT NOT NULL,
    catch_up_max INTEGER NOT NULL,
    paused       INTEGER NOT NULL DEFAULT 0,
    next_run_at  INTEGER,
    last_run_at  INTEGER,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE paused = 0 AND next_run_at IS NOT NULL;
"#,
    r#"
ALTER TABLE queues ADD COLUMN max_running INTEGER;
ALTER TABLE queues ADD COLUMN max_starts_per_sec REAL;
ALTER TABLE queues ADD COLUMN max_depth INTEGER;
ALTER TABLE queues ADD COLUMN tokens REAL;
ALTER TABLE queues ADD COLUMN tokens_at INTEGER;
CREATE TABLE api_tokens (
    id         BLOB PRIMARY KEY,
    name       TEXT NOT NULL,
    hash       TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    queues     TEXT,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE TABLE workers (
    name          TEXT PRIMARY KEY,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    status        TEXT NOT NULL
);
CREATE INDEX workers_active ON workers (last_seen_ms) WHERE status = 'active';
CREATE TABLE hosts (
    name       TEXT PRIMARY KEY,
    health_url TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
"#,
    r#"
-- Unique keys are per queue: a key taken in one queue says nothing about another (and a token
-- limited to some queues cannot learn another queue's jobs through a key collision).
DROP INDEX jobs_unique_key;
DROP INDEX jobs_unique_key_any;
CREATE UNIQUE INDEX jobs_unique_key ON jobs (queue, unique_key)
    WHERE unique_key IS NOT NULL AND state NOT IN ('completed', 'dead', 'cancelled');
CREATE INDEX jobs_unique_key_any ON jobs (queue, unique_key, seq) WHERE unique_key IS NOT NULL;
"#,
    r#"
-- A job's run deadline per attempt, enforced by workers; NULL is the default (a day).
ALTER TABLE jobs ADD COLUMN timeout_ms INTEGER;
"#,
    r#"
-- Work items (compare-and-set by version) and their kept history, one row per version.
CREATE TABLE items (
    id          TEXT PRIMARY KEY,
    title       TEXT NOT NULL,
    description TEXT NOT NULL,
    status      TEXT NOT NULL,
    assignee    TEXT,
    artifacts   TEXT NOT NULL,
    context     TEXT NOT NULL,
    version     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    origin      TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX items_status ON items (status, id);
CREATE INDEX items_assignee ON items (assignee, id) WHERE assignee IS NOT NULL;
CREATE TABLE item_history (
    item_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    at      INTEGER NOT NULL,
    agent   TEXT,
    mode    TEXT NOT NULL,
    paths   TEXT NOT NULL,
    patch   TEXT NOT NULL,
    reason  TEXT,
    PRIMARY KEY (item_id, version)
) WITHOUT ROWID;
"#,
    r#"
-- Agent messages: inboxes (agents), message bodies, one delivery row per recipient (and per
-- broadcast an agent holds or keeps dead), broadcasts stored once per channel, channel heads
-- and per-agent cursors. Tokens may be restricted to agents.
ALTER TABLE api_tokens ADD COLUMN agents TEXT;
CREATE TABLE agents (
    name         TEXT PRIMARY KEY,
    created_at   INTEGER NOT NULL,
    last_seen_at INTEGER,
    tokens       REAL,
    tokens_at    INTEGER
) WITHOUT ROWID;
CREATE TABLE messages (
    id             BLOB PRIMARY KEY,
    sender         TEXT NOT NULL,
    body           TEXT NOT NULL,
    sent_at        INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    reply_to       TEXT,
    correlation_id TEXT,
    dedup_key      TEXT,
    answer         TEXT NOT NULL
);
CREATE INDEX messages_dedup ON messages (sender, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX messages_expiry ON messages (expires_at);
CREATE TABLE deliveries (
    ord            INTEGER PRIMARY KEY,
    agent          TEXT NOT NULL,
    msg_id         BLOB NOT NULL,
    kind           TEXT NOT NULL,
    state          TEXT NOT NULL,
    visible_at     INTEGER NOT NULL,
    receipt        INTEGER NOT NULL,
    delivery_count INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    ttl_ms         INTEGER NOT NULL,
    dead_at        INTEGER
);
CREATE UNIQUE INDEX deliveries_msg ON deliveries (agent, msg_id);
CREATE INDEX deliveries_inbox ON deliveries (agent, ord) WHERE state IN ('ready', 'in_flight');
CREATE INDEX deliveries_dead ON deliveries (agent, ord) WHERE state = 'dead';
CREATE INDEX deliveries_due ON deliveries (visible_at) WHERE state IN ('ready', 'in_flight');
CREATE INDEX deliveries_expiry ON deliveries (expires_at) WHERE state <> 'dead';
CREATE INDEX deliveries_msg_id ON deliveries (msg_id);
CREATE TABLE broadcasts (
    serial     INTEGER PRIMARY KEY,
    id         BLOB NOT NULL UNIQUE,
    channel    TEXT NOT NULL,
    seq        INTEGER,
    sender     TEXT NOT NULL,
    body       TEXT NOT NULL,
    sent_at    INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX broadcasts_seq ON broadcasts (channel, seq);
CREATE INDEX broadcasts_expiry ON broadcasts (expires_at);
CREATE TABLE channels (
    name TEXT PRIMARY KEY,
    head INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE channel_cursors (
    agent   TEXT NOT NULL,
    channel TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (agent, channel)
) WITHOUT ROWID;
"#,
    r#"
-- Convoys: groups of jobs run under a limit. Members are jobs with a convoy_id; the counters
-- live on the convoy row (they outlive pruned members); member unique keys are per convoy.
ALTER TABLE jobs ADD COLUMN convoy_id TEXT;
CREATE INDEX jobs_convoy ON jobs (convoy_id, state, priority DESC, seq) WHERE convoy_id IS NOT NULL;
CREATE INDEX jobs_convoy_order ON jobs (convoy_id, seq) WHERE convoy_id IS NOT NULL;
CREATE TABLE convoys (
    seq                INTEGER PRIMARY KEY,
    id                 TEXT NOT NULL UNIQUE,
    name               TEXT NOT NULL,
    queue              TEXT NOT NULL,
    max_parallel       TEXT NOT NULL,
    on_failure         TEXT NOT NULL,
    on_complete        TEXT,
    state              TEXT NOT NULL,
    cancelling         INTEGER NOT NULL DEFAULT 0,
    lim                INTEGER NOT NULL,
    total              INTEGER NOT NULL DEFAULT 0,
    held               INTEGER NOT NULL DEFAULT 0,
    slots              INTEGER NOT NULL DEFAULT 0,
    completed          INTEGER NOT NULL DEFAULT 0,
    failed             INTEGER NOT NULL DEFAULT 0,
    cancelled          INTEGER NOT NULL DEFAULT 0,
    tuner              TEXT,
    progress_at        INTEGER NOT NULL,
    on_complete_job_id BLOB,
    created_at         INTEGER NOT NULL,
    finished_at        INTEGER
);
CREATE INDEX convoys_queue ON convoys (queue, seq);
CREATE INDEX convoys_finished ON convoys (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX convoys_live ON convoys (seq) WHERE finished_at IS NULL;
CREATE TABLE convoy_keys (
    convoy_id TEXT NOT NULL,
    key       TEXT NOT NULL,
    job_id    BLOB NOT NULL,
    PRIMARY KEY (convoy_id, key)
) WITHOUT ROWID;
"#,
    r#"
CREATE TABLE ledger_accounts (
    id              TEXT PRIMARY KEY,
    ledger          INTEGER NOT NULL,
    code            INTEGER NOT NULL,
    flags           INTEGER NOT NULL,
    metadata        TEXT NOT NULL,
    debits_posted   INTEGER NOT NULL,
    credits_posted  INTEGER NOT NULL,
    debits_pending  INTEGER NOT NULL,
    credits_pending INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    closed_at       INTEGER,
    last_seq        INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX ledger_accounts_ledger ON ledger_accounts (ledger, id);
CREATE INDEX ledger_accounts_changed ON ledger_accounts (last_seq);
CREATE TABLE ledger_transfers (
    id             TEXT PRIMARY KEY,
    debit_account  TEXT NOT NULL,
    credit_account TEXT NOT NULL,
    ledger         INTEGER NOT NULL,
    amount         INTEGER NOT NULL,
    code           INTEGER NOT NULL,
    metadata       TEXT NOT NULL,
    pending        INTEGER NOT NULL,
    timeout_ms     INTEGER,
    state          TEXT NOT NULL,
    reason         TEXT,
    posted_amount  INTEGER,
    expires_at     INTEGER,
    job_id         TEXT,
    seq            INTEGER,
    created_at     INTEGER NOT NULL,
    settled_at     INTEGER
) WITHOUT ROWID;
CREATE INDEX ledger_transfers_debit ON ledger_transfers (debit_account, seq) WHERE seq IS NOT NULL;
CREATE INDEX ledger_transfers_credit ON ledger_transfers (credit_account, seq) WHERE seq IS NOT NULL;
CREATE INDEX ledger_transfers_due ON ledger_transfers (expires_at) WHERE state = 'pending' AND expires_at IS NOT NULL;
CREATE INDEX ledger_transfers_debit_due ON ledger_transfers (debit_account, expires_at)
    WHERE state = 'pending' AND expires_at IS NOT NULL;
CREATE INDEX ledger_transfers_credit_due ON ledger_transfers (credit_account, expires_at)
    WHERE state = 'pending' AND expires_at IS NOT NULL;
CREATE INDEX ledger_transfers_pending ON ledger_transfers (seq) WHERE state = 'pending';
CREATE TABLE ledger_events (
    seq  INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    at   INTEGER NOT NULL,
    data TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE ledger_head (
    id     INTEGER PRIMARY KEY,
    seq    INTEGER NOT NULL,
    hash   TEXT NOT NULL,
    digest TEXT NOT NULL
);
CREATE TABLE ledger_snapshots (
    seq    INTEGER PRIMARY KEY,
    at     INTEGER NOT NULL,
    hash   TEXT NOT NULL,
    digest TEXT NOT NULL,
    totals TEXT NOT NULL
);
CREATE TABLE ledger_snapshot_accounts (
    account_id      TEXT NOT NULL,
    snapshot_seq    INTEGER NOT NULL,
    ledger          INTEGER NOT NULL,
    debits_posted   INTEGER NOT NULL,
    credits_posted  INTEGER NOT NULL,
    debits_pending  INTEGER NOT NULL,
    credits_pending INTEGER NOT NULL,
    PRIMARY KEY (account_id, snapshot_seq)
) WITHOUT ROWID;
ALTER TABLE jobs ADD COLUMN payment TEXT;
ALTER TABLE jobs ADD COLUMN hold_open INTEGER NOT NULL DEFAULT 0;
CREATE INDEX jobs_hold_open ON jobs (seq) WHERE hold_open = 1 AND state IN ('completed', 'dead', 'cancelled');
"#,
    r#"
-- Run checkpoints (LangGraph's saver tables) under threads; blobs written once per version.
CREATE TABLE threads (
    thread       TEXT PRIMARY KEY,
    metadata     TEXT NOT NULL,
    idle_ttl_ms  INTEGER,
    keep_last    INTEGER,
    checkpoints  INTEGER NOT NULL,
    blobs        INTEGER NOT NULL,
    writes       INTEGER NOT NULL,
    bytes        INTEGER NOT NULL,
    last_job_id  BLOB,
    pruned_at    INTEGER,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX threads_updated ON threads (updated_at);
CREATE TABLE checkpoints (
    thread               TEXT NOT NULL,
    ns                   TEXT NOT NULL,
    checkpoint_id        TEXT NOT NULL,
    parent_checkpoint_id TEXT,
    type                 TEXT NOT NULL,
    checkpoint           BLOB NOT NULL,
    metadata             TEXT NOT NULL,
    channel_versions     TEXT NOT NULL,
    delta_channels       TEXT NOT NULL,
    run_id               TEXT,
    step                 INTEGER,
    bytes                INTEGER NOT NULL,
    created_at           INTEGER NOT NULL,
    PRIMARY KEY (thread, ns, checkpoint_id)
);
CREATE INDEX checkpoints_run ON checkpoints (run_id) WHERE run_id IS NOT NULL;
CREATE TABLE checkpoint_blobs (
    thread  TEXT NOT NULL,
    ns      TEXT NOT NULL,
    channel TEXT NOT NULL,
    version TEXT NOT NULL,
    type    TEXT NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (thread, ns, channel, version)
);
CREATE TABLE checkpoint_writes (
    thread        TEXT NOT NULL,
    ns            TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    task_id       TEXT NOT NULL,
    idx           INTEGER NOT NULL,
    channel       TEXT NOT NULL,
    type          TEXT NOT NULL,
    data          BLOB NOT NULL,
    task_path     TEXT NOT NULL,
    PRIMARY KEY (thread, ns, checkpoint_id, task_id, idx)
);
"#,
    // Episodic memory: episodes (authoritative), and the rows derived from them in the same
    // transaction: full text (FTS5, rowid = seq, ferry's tokens kept whole by `ascii`), tags,
    // unit vectors; per-namespace counters (stats, the embedding dimension).
    r#"
ALTER TABLE api_tokens ADD COLUMN namespaces TEXT;
CREATE TABLE episodes (
    seq             INTEGER PRIMARY KEY,
    id              BLOB NOT NULL UNIQUE,
    namespace       TEXT NOT NULL,
    agent           TEXT,
    domain          TEXT,
    task_type       TEXT,
    outcome         TEXT,
    at              INTEGER NOT NULL,
    importance      REAL NOT NULL,
    tags            TEXT NOT NULL,
    version         INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    idempotency_key TEXT,
    body_hash       TEXT NOT NULL,
    bytes           INTEGER NOT NULL,
    content         TEXT NOT NULL,
    embedding       BLOB
);
CREATE UNIQUE INDEX episodes_key ON episodes (namespace, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX episodes_ns ON episodes (namespace, seq);
CREATE INDEX episodes_task ON episodes (namespace, domain, task_type, seq);
CREATE INDEX episodes_agent ON episodes (namespace, agent, seq);
CREATE INDEX episodes_created ON episodes (created_at);
CREATE TABLE episode_tags (
    seq INTEGER NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (seq, tag)
) WITHOUT ROWID;
CREATE INDEX episode_tags_tag ON episode_tags (tag, seq);
CREATE TABLE episode_vectors (
    seq INTEGER PRIMARY KEY,
    vec BLOB NOT NULL
);
CREATE VIRTUAL TABLE episode_fts USING fts5 (terms, tokenize = 'ascii');
CREATE TABLE memory_namespaces (
    namespace TEXT PRIMARY KEY,
    episodes  INTEGER NOT NULL,
    bytes     INTEGER NOT NULL,
    dims      INTEGER
);
"#,
    // Memory search reads one slim row per candidate: `episode_scan` holds what ranking needs
    // (the episode row carries its whole content). The full-text index keeps no content of its
    // own and also indexes facet tokens (namespace, domain, task type, agent, outcome, tags),
    // so filters are full-text conditions. Existing episodes are indexed again on open
    // (`memory_reindex`: the tokens are computed in Rust).
    r#"
DROP TABLE episode_fts;
CREATE VIRTUAL TABLE episode_fts USING fts5 (
    terms, facets, content = '', contentless_delete = 1, tokenize = 'ascii'
);
CREATE TABLE episode_scan (
    seq        INTEGER PRIMARY KEY,
    id         BLOB NOT NULL,
    at         INTEGER NOT NULL,
    importance REAL NOT NULL,
    outcome    TEXT,
    terms      TEXT NOT NULL
);
INSERT OR REPLACE INTO ferry_meta (key, value) SELECT 'memory_reindex', '1' WHERE EXISTS (SELECT 1 FROM episodes);
"#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`SCHEMA_VERSION`], or refuses one that is newer.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    conn.execute_batch("CREATE TABLE IF NOT EXISTS ferry_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        .map_err(super::db_err)?;
    let tx =
        conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(super::db_err)?;
    let current: i64 = tx
        .query_row("SELECT value FROM ferry_meta WHERE key = 'schema_version'", [], |r| r.get::<_, String>(0))
        .optional()
        .map_err(super::db_err)?
        .map(|v| v.parse().unwrap_or(i64::MAX))
        .unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(Error::new(
            ErrorCode::SchemaTooNew,
            format!(
                "this database has schema version {current}, written by a newer ferry; this build knows \
                 versions up to {SCHEMA_VERSION}. Upgrade ferry to open it."
            ),
        ));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql).map_err(super::db_err)?;
        tx.execute(
            "INSERT INTO ferry_meta (key, value) VALUES ('schema_version', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [(i as i64 + 1).to_string()],
        )
        .map_err(super::db_err)?;
    }
    tx.commit().map_err(super::db_err)
}
