//! PostgreSQL schema and migrations: applied at start under an advisory lock so nodes that
//! start together do not race, and a schema newer than this build is refused.
//!
//! Table registry (kept in step with the SQLite schema): `ferry_meta`, `jobs`, `job_deps`,
//! `queues`, `event_log`, `schedules`, `api_tokens`, `workers`, `hosts`, and the domains' tables
//! (items, messages, convoys, ledger). Unlike SQLite, several
//! processes write here, so counts per state come from a scan of the table, not from memory.

use super::{RowExt, pg_err};
use ferry_core::{Error, ErrorCode, Result};

/// Migrations in order; index + 1 is the schema version after applying it.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE jobs (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id               UUID NOT NULL UNIQUE,
    queue            TEXT NOT NULL,
    state            TEXT NOT NULL,
    priority         INTEGER NOT NULL,
    run_at           BIGINT NOT NULL,
    payload          TEXT NOT NULL,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    backoff_base_ms  BIGINT NOT NULL,
    backoff_factor   DOUBLE PRECISION NOT NULL,
    backoff_max_ms   BIGINT NOT NULL,
    backoff_jitter   DOUBLE PRECISION NOT NULL,
    lease_ms         BIGINT NOT NULL,
    unique_key       TEXT,
    tags             TEXT,
    depends_on       TEXT,
    pending_deps     INTEGER NOT NULL DEFAULT 0,
    has_dependants   BOOLEAN NOT NULL DEFAULT FALSE,
    lease            TEXT,
    lease_expires_at BIGINT,
    worker           TEXT,
    result           TEXT,
    errors           TEXT,
    cancel_reason    TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT
);
CREATE INDEX jobs_ready ON jobs (queue, priority DESC, run_at, seq) WHERE state = 'ready';
CREATE INDEX jobs_running ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_scheduled ON jobs (run_at) WHERE state = 'scheduled';
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state IN ('completed', 'cancelled');
CREATE INDEX jobs_dead ON jobs (queue, seq) WHERE state = 'dead';
CREATE INDEX jobs_waiting ON jobs (seq) WHERE state = 'waiting';
CREATE INDEX jobs_state_queue ON jobs (state, queue);
CREATE UNIQUE INDEX jobs_unique_key ON jobs (unique_key)
    WHERE unique_key IS NOT NULL AND state NOT IN ('completed', 'dead', 'cancelled');
CREATE INDEX jobs_unique_key_any ON jobs (unique_key, seq) WHERE unique_key IS NOT NULL;
CREATE TABLE job_deps (
    dep_seq BIGINT NOT NULL,
    job_seq BIGINT NOT NULL,
    PRIMARY KEY (dep_seq, job_seq)
);
CREATE TABLE queues (
    name       TEXT PRIMARY KEY,
    paused     BOOLEAN NOT NULL DEFAULT FALSE,
    updated_at BIGINT NOT NULL
);
"#,
    r#"
-- Every claim and completion writes a new row version and an entry in every index whose key
-- or predicate changes; the (state, queue) index cost one more entry per change and served
-- only the stats query, which now scans. Vacuum early and without throttling: the hot table
-- turns over fast and dead row versions slow every claim that walks past them.
DROP INDEX jobs_state_queue;
ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_insert_scale_factor = 0.05,
                      autovacuum_vacuum_cost_delay = 0, autovacuum_analyze_scale_factor = 0.05);
"#,
    r#"
-- One row per committed transaction that produced events; first_cursor is assigned later, in
-- commit order, by the sequencer (postgres/events.rs).
CREATE TABLE event_log (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    first_cursor BIGINT UNIQUE,
    n            INTEGER NOT NULL,
    at           BIGINT NOT NULL,
    body         TEXT NOT NULL
);
CREATE INDEX event_log_unsequenced ON event_log (id) WHERE first_cursor IS NULL;
CREATE TABLE schedules (
    name         TEXT PRIMARY KEY,
    cron         TEXT NOT NULL,
    timezone     TEXT NOT NULL,
    job          TEXT NOT NULL,
    misfire      TEXT NOT NULL,
    catch_up_max INTEGER NOT NULL,
    paused       BOOLEAN NOT NULL DEFAULT FALSE,
    next_run_at  BIGINT,
    last_run_at  BIGINT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_run_at) WHERE NOT paused AND next_run_at IS NOT NULL;
"#,
    r#"
-- Flow limits live on the queue row, which a limited claim locks; tokens/tokens_at are the
-- start-rate bucket every node draws from.
ALTER TABLE queues ADD COLUMN max_running BIGINT, ADD COLUMN max_starts_per_sec DOUBLE PRECISION,
    ADD COLUMN max_depth BIGINT, ADD COLUMN tokens DOUBLE PRECISION, ADD COLUMN tokens_at BIGINT;
CREATE TABLE api_tokens (
    id         UUID PRIMARY KEY,
    name       TEXT NOT NULL,
    hash       TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    queues     TEXT,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE TABLE workers (
    name          TEXT PRIMARY KEY,
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms  BIGINT NOT NULL,
    status        TEXT NOT NULL
);
CREATE INDEX workers_active ON workers (last_seen_ms) WHERE status = 'active';
CREATE TABLE hosts (
    name       TEXT PRIMARY KEY,
    health_url TEXT NOT NULL,
    created_at BIGINT NOT NULL
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
ALTER TABLE jobs ADD COLUMN timeout_ms BIGINT;
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
    version     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    origin      TEXT NOT NULL
);
CREATE INDEX items_status ON items (status, id);
CREATE INDEX items_assignee ON items (assignee, id) WHERE assignee IS NOT NULL;
CREATE TABLE item_history (
    item_id TEXT NOT NULL,
    version BIGINT NOT NULL,
    at      BIGINT NOT NULL,
    agent   TEXT,
    mode    TEXT NOT NULL,
    paths   TEXT NOT NULL,
    patch   TEXT NOT NULL,
    reason  TEXT,
    PRIMARY KEY (item_id, version)
);
"#,
    r#"
-- Agent messages (see the SQLite schema): broadcasts are inserted with no seq and numbered
-- after commit by the event sequencer, in serial order per channel.
ALTER TABLE api_tokens ADD COLUMN agents TEXT;
CREATE TABLE agents (
    name         TEXT PRIMARY KEY,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT,
    tokens       DOUBLE PRECISION,
    tokens_at    BIGINT
);
CREATE TABLE messages (
    id             UUID PRIMARY KEY,
    sender         TEXT NOT NULL,
    body           TEXT NOT NULL,
    sent_at        BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    reply_to       TEXT,
    correlation_id TEXT,
    dedup_key      TEXT,
    answer         TEXT NOT NULL
);
CREATE INDEX messages_dedup ON messages (sender, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE INDEX messages_expiry ON messages (expires_at);
CREATE TABLE deliveries (
    ord            BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    agent          TEXT NOT NULL,
    msg_id         UUID NOT NULL,
    kind           TEXT NOT NULL,
    state          TEXT NOT NULL,
    visible_at     BIGINT NOT NULL,
    receipt        BIGINT NOT NULL,
    delivery_count BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    ttl_ms         BIGINT NOT NULL,
    dead_at        BIGINT
);
CREATE UNIQUE INDEX deliveries_msg ON deliveries (agent, msg_id);
CREATE INDEX deliveries_inbox ON deliveries (agent, ord) WHERE state IN ('ready', 'in_flight');
CREATE INDEX deliveries_dead ON deliveries (agent, ord) WHERE state = 'dead';
CREATE INDEX deliveries_due ON deliveries (visible_at) WHERE state IN ('ready', 'in_flight');
CREATE INDEX deliveries_expiry ON deliveries (expires_at) WHERE state <> 'dead';
CREATE INDEX deliveries_msg_id ON deliveries (msg_id);
CREATE TABLE broadcasts (
    serial     BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    id         UUID NOT NULL UNIQUE,
    channel    TEXT NOT NULL,
    seq        BIGINT,
    sender     TEXT NOT NULL,
    body       TEXT NOT NULL,
    sent_at    BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX broadcasts_seq ON broadcasts (channel, seq);
CREATE INDEX broadcasts_unnumbered ON broadcasts (serial) WHERE seq IS NULL;
CREATE INDEX broadcasts_expiry ON broadcasts (expires_at);
CREATE TABLE channels (
    name TEXT PRIMARY KEY,
    head BIGINT NOT NULL
);
CREATE TABLE channel_cursors (
    agent   TEXT NOT NULL,
    channel TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    PRIMARY KEY (agent, channel)
);
"#,
    r#"
-- Convoys (see the SQLite migration of the same name).
ALTER TABLE jobs ADD COLUMN convoy_id TEXT;
CREATE INDEX jobs_convoy ON jobs (convoy_id, state, priority DESC, seq) WHERE convoy_id IS NOT NULL;
CREATE INDEX jobs_convoy_order ON jobs (convoy_id, seq) WHERE convoy_id IS NOT NULL;
CREATE TABLE convoys (
    seq                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id                 TEXT NOT NULL UNIQUE,
    name               TEXT NOT NULL,
    queue              TEXT NOT NULL,
    max_parallel       TEXT NOT NULL,
    on_failure         TEXT NOT NULL,
    on_complete        TEXT,
    state              TEXT NOT NULL,
    cancelling         BOOLEAN NOT NULL DEFAULT FALSE,
    lim                BIGINT NOT NULL,
    total              BIGINT NOT NULL DEFAULT 0,
    held               BIGINT NOT NULL DEFAULT 0,
    slots              BIGINT NOT NULL DEFAULT 0,
    completed          BIGINT NOT NULL DEFAULT 0,
    failed             BIGINT NOT NULL DEFAULT 0,
    cancelled          BIGINT NOT NULL DEFAULT 0,
    tuner              TEXT,
    progress_at        BIGINT NOT NULL,
    on_complete_job_id UUID,
    created_at         BIGINT NOT NULL,
    finished_at        BIGINT
);
CREATE INDEX convoys_queue ON convoys (queue, seq);
CREATE INDEX convoys_finished ON convoys (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX convoys_live ON convoys (seq) WHERE finished_at IS NULL;
CREATE TABLE convoy_keys (
    convoy_id TEXT NOT NULL,
    key       TEXT NOT NULL,
    job_id    UUID NOT NULL,
    PRIMARY KEY (convoy_id, key)
);
"#,
    r#"
CREATE TABLE ledger_accounts (
    id              TEXT PRIMARY KEY,
    ledger          BIGINT NOT NULL,
    code            BIGINT NOT NULL,
    flags           BIGINT NOT NULL,
    metadata        TEXT NOT NULL,
    debits_posted   BIGINT NOT NULL,
    credits_posted  BIGINT NOT NULL,
    debits_pending  BIGINT NOT NULL,
    credits_pending BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    closed_at       BIGINT,
    last_seq        BIGINT NOT NULL
);
CREATE INDEX ledger_accounts_ledger ON ledger_accounts (ledger, id);
CREATE INDEX ledger_accounts_changed ON ledger_accounts (last_seq);
CREATE TABLE ledger_transfers (
    id             TEXT PRIMARY KEY,
    debit_account  TEXT NOT NULL,
    credit_account TEXT NOT NULL,
    ledger         BIGINT NOT NULL,
    amount         BIGINT NOT NULL,
    code           BIGINT NOT NULL,
    metadata       TEXT NOT NULL,
    pending        BIGINT NOT NULL,
    timeout_ms     BIGINT,
    state          TEXT NOT NULL,
    reason         TEXT,
    posted_amount  BIGINT,
    expires_at     BIGINT,
    job_id         TEXT,
    seq            BIGINT,
    created_at     BIGINT NOT NULL,
    settled_at     BIGINT
);
CREATE INDEX ledger_transfers_debit ON ledger_transfers (debit_account, seq) WHERE seq IS NOT NULL;
CREATE INDEX ledger_transfers_credit ON ledger_transfers (credit_account, seq) WHERE seq IS NOT NULL;
CREATE INDEX ledger_transfers_due ON ledger_transfers (expires_at) WHERE state = 'pending' AND expires_at IS NOT NULL;
CREATE INDEX ledger_transfers_debit_due ON ledger_transfers (debit_account, expires_at)
    WHERE state = 'pending' AND expires_at IS NOT NULL;
CREATE INDEX ledger_transfers_credit_due ON ledger_transfers (credit_account, expires_at)
    WHERE state = 'pending' AND expires_at IS NOT NULL;
CREATE INDEX ledger_transfers_pending ON ledger_transfers (seq) WHERE state = 'pending';
CREATE TABLE ledger_events (
    seq  BIGINT PRIMARY KEY,
    kind TEXT NOT NULL,
    at   BIGINT NOT NULL,
    data TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE ledger_head (
    id     BIGINT PRIMARY KEY,
    seq    BIGINT NOT NULL,
    hash   TEXT NOT NULL,
    digest TEXT NOT NULL
);
CREATE TABLE ledger_snapshots (
    seq    BIGINT PRIMARY KEY,
    at     BIGINT NOT NULL,
    hash   TEXT NOT NULL,
    digest TEXT NOT NULL,
    totals TEXT NOT NULL
);
CREATE TABLE ledger_snapshot_accounts (
    account_id      TEXT NOT NULL,
    snapshot_seq    BIGINT NOT NULL,
    ledger          BIGINT NOT NULL,
    debits_posted   BIGINT NOT NULL,
    credits_posted  BIGINT NOT NULL,
    debits_pending  BIGINT NOT NULL,
    credits_pending BIGINT NOT NULL,
    PRIMARY KEY (account_id, snapshot_seq)
);
ALTER TABLE jobs ADD COLUMN payment TEXT;
ALTER TABLE jobs ADD COLUMN hold_open BIGINT NOT NULL DEFAULT 0;
CREATE INDEX jobs_hold_open ON jobs (seq) WHERE hold_open = 1 AND state IN ('completed', 'dead', 'cancelled');
"#,
    r#"
-- Run checkpoints (LangGraph's saver tables) under threads; blobs written once per version.
CREATE TABLE threads (
    thread       TEXT COLLATE "C" PRIMARY KEY,
    metadata     TEXT NOT NULL,
    idle_ttl_ms  BIGINT,
    keep_last    BIGINT,
    checkpoints  BIGINT NOT NULL,
    blobs        BIGINT NOT NULL,
    writes       BIGINT NOT NULL,
    bytes        BIGINT NOT NULL,
    last_job_id  UUID,
    pruned_at    BIGINT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
CREATE INDEX threads_updated ON threads (updated_at);
CREATE TABLE checkpoints (
    thread               TEXT COLLATE "C" NOT NULL,
    ns                   TEXT COLLATE "C" NOT NULL,
    checkpoint_id        TEXT COLLATE "C" NOT NULL,
    parent_checkpoint_id TEXT,
    type                 TEXT NOT NULL,
    checkpoint           BYTEA NOT NULL,
    metadata             TEXT NOT NULL,
    channel_versions     TEXT NOT NULL,
    delta_channels       TEXT NOT NULL,
    run_id               TEXT,
    step                 BIGINT,
    bytes                BIGINT NOT NULL,
    created_at           BIGINT NOT NULL,
    PRIMARY KEY (thread, ns, checkpoint_id)
);
CREATE INDEX checkpoints_run ON checkpoints (run_id) WHERE run_id IS NOT NULL;
CREATE TABLE checkpoint_blobs (
    thread  TEXT COLLATE "C" NOT NULL,
    ns      TEXT COLLATE "C" NOT NULL,
    channel TEXT COLLATE "C" NOT NULL,
    version TEXT COLLATE "C" NOT NULL,
    type    TEXT NOT NULL,
    data    BYTEA NOT NULL,
    PRIMARY KEY (thread, ns, channel, version)
);
CREATE TABLE checkpoint_writes (
    thread        TEXT COLLATE "C" NOT NULL,
    ns            TEXT COLLATE "C" NOT NULL,
    checkpoint_id TEXT COLLATE "C" NOT NULL,
    task_id       TEXT COLLATE "C" NOT NULL,
    idx           BIGINT NOT NULL,
    channel       TEXT NOT NULL,
    type          TEXT NOT NULL,
    data          BYTEA NOT NULL,
    task_path     TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (thread, ns, checkpoint_id, task_id, idx)
);
"#,
    // Episodic memory: episodes (authoritative) with their tokens and the generated tsvector
    // the GIN index serves (built from ferry's own tokens, never PostgreSQL's parser), and the
    // rows derived in the same transaction: tags, unit vectors; per-namespace counters.
    r#"
ALTER TABLE api_tokens ADD COLUMN namespaces TEXT;
CREATE TABLE episodes (
    seq             BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    id              UUID NOT NULL UNIQUE,
    namespace       TEXT COLLATE "C" NOT NULL,
    agent           TEXT COLLATE "C",
    domain          TEXT COLLATE "C",
    task_type       TEXT COLLATE "C",
    outcome         TEXT COLLATE "C",
    at              BIGINT NOT NULL,
    importance      DOUBLE PRECISION NOT NULL,
    tags            TEXT NOT NULL,
    version         BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL,
    idempotency_key TEXT COLLATE "C",
    body_hash       TEXT NOT NULL,
    bytes           BIGINT NOT NULL,
    content         TEXT NOT NULL,
    embedding       BYTEA,
    terms           TEXT NOT NULL DEFAULT '',
    tsv             TSVECTOR GENERATED ALWAYS AS (array_to_tsvector(string_to_array(terms, ' '))) STORED
);
CREATE UNIQUE INDEX episodes_key ON episodes (namespace, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX episodes_ns ON episodes (namespace, seq);
CREATE INDEX episodes_task ON episodes (namespace, domain, task_type, seq);
CREATE INDEX episodes_agent ON episodes (namespace, agent, seq);
CREATE INDEX episodes_created ON episodes (created_at);
CREATE INDEX episodes_tsv ON episodes USING GIN (tsv);
CREATE TABLE episode_tags (
    seq BIGINT NOT NULL,
    tag TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (seq, tag)
);
CREATE INDEX episode_tags_tag ON episode_tags (tag, seq);
CREATE TABLE episode_vectors (
    seq BIGINT PRIMARY KEY,
    vec BYTEA NOT NULL
);
CREATE TABLE memory_namespaces (
    namespace TEXT COLLATE "C" PRIMARY KEY,
    episodes  BIGINT NOT NULL,
    bytes     BIGINT NOT NULL,
    dims      INTEGER
);
"#,
    // A domain filter without a task type walks its episodes newest first (its scan window's
    // edge sorted 100,000 entries of `episodes_task` at 1,000,000 episodes).
    r#"
CREATE INDEX episodes_domain ON episodes (namespace, domain, seq);
"#,
    // Event bodies compress with lz4 where the server was built with it: pglz cost 2-3% of
    // PostgreSQL's CPU under `bench e2e` (BENCHMARKS.md, issue #25). Older rows keep pglz.
    r#"
DO $$ BEGIN
    ALTER TABLE event_log ALTER COLUMN body SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN NULL;
END $$;
"#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Advisory lock key serializing migrations across nodes ("ferry" in ASCII).
const MIGRATION_LOCK: i64 = 0x0066_6572_7279;

/// Brings the schema to [`SCHEMA_VERSION`] under an advisory lock, or refuses a newer one.
pub async fn migrate(client: &mut tokio_postgres::Client) -> Result<()> {
    let tx = client.transaction().await.map_err(pg_err)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg_err)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS ferry_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        .await
        .map_err(pg_err)?;
    let current: i64 = tx
        .query_opt("SELECT value FROM ferry_meta WHERE key = 'schema_version'", &[])
        .await
        .map_err(pg_err)?
        .map(|r| r.col::<String>(0))
        .transpose()?
        .map_or(0, |v| v.parse().unwrap_or(i64::MAX));
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
        tx.batch_execute(sql).await.map_err(pg_err)?;
        tx.execute(
            "INSERT INTO ferry_meta (key, value) VALUES ('schema_version', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&(i as i64 + 1).to_string()],
        )
        .await
        .map_err(pg_err)?;
    }
    tx.commit().await.map_err(pg_err)
}
