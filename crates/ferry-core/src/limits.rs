//! Every bound ferry enforces, in one place.
//!
//! Every input and resource bound of the server is here (a few internal constants, such as a
//! schedule's most listed next runs or the DLQ's rows per write step, live beside their code
//! and are named there). Each is configurable (the server reads a
//! `[limits]` table from `ferry.toml`) and each is enforced by a test that goes one past it.

use serde::{Deserialize, Serialize};

/// Input and resource bounds; names carry their units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest job payload, as serialized JSON bytes.
    pub max_payload_bytes: usize,
    /// Largest completion result, as serialized JSON bytes.
    pub max_result_bytes: usize,
    /// Most jobs in one enqueue call, and most items in one batch complete/fail.
    pub max_batch: usize,
    /// Longest queue name (names are 1.. of `[A-Za-z0-9._:-]`).
    pub max_queue_name_len: usize,
    /// Longest worker name.
    pub max_worker_name_len: usize,
    /// Most tags on one job.
    pub max_tags: usize,
    /// Longest tag.
    pub max_tag_len: usize,
    /// Longest unique key.
    pub max_unique_key_len: usize,
    /// Most dependencies of one job.
    pub max_depends_on: usize,
    /// Longest error message kept per failure; longer ones are truncated, not rejected,
    /// so a worker's failure report is never lost.
    pub max_error_len: usize,
    /// Most error-history entries kept per job; the oldest are dropped past it.
    pub max_error_history: usize,
    /// Most jobs handed out by one claim.
    pub max_claim: usize,
    /// Longest long-poll wait of a claim.
    pub max_wait_ms: i64,
    /// Shortest lease a job or a claim may ask for.
    pub min_lease_ms: i64,
    /// Longest lease a job or a claim may ask for.
    pub max_lease_ms: i64,
    /// Longest run deadline a job may ask for (`timeout_ms`), per attempt.
    pub max_timeout_ms: i64,
    /// Largest `max_attempts`.
    pub max_attempts: u32,
    /// Furthest a job may be scheduled into the future.
    pub max_delay_ms: i64,
    /// Largest page of a list call.
    pub max_page_size: usize,
    /// Largest HTTP request body; bigger bodies are cut off while streaming, not buffered.
    pub max_request_bytes: usize,
    /// Event subscribers (WebSocket, SSE, waiting long-polls) one node serves at once.
    pub max_subscribers: usize,
    /// MCP handshake sessions (revisions before 2026-07-28) one node keeps at once; beyond it a
    /// new `initialize` is refused with 503 `unavailable`.
    pub max_mcp_sessions: usize,
    /// Events buffered per subscriber before it is told it lagged (pointers to shared events;
    /// above `max_batch`, so one full batch does not make a keeping-up consumer lag).
    pub event_buffer: usize,
    /// Stored events per second one node reads for all its consumers catching up at once
    /// (long-poll pages, SSE and WebSocket replays): replaying is background work, so a burst
    /// of readers far behind cannot take the cores the job flow needs.
    pub max_catchup_events_per_s: u64,
    /// Largest WebSocket message a client may send.
    pub max_ws_message_bytes: usize,
    /// Rooms one WebSocket may join.
    pub max_rooms: usize,
    /// Schedules kept.
    pub max_schedules: usize,
    /// Most missed ticks a `catch_up` schedule may enqueue after downtime.
    pub max_catch_up: u32,
    /// Default most `ready` + `scheduled` jobs per queue (a queue's own `max_depth` wins);
    /// enqueues beyond it get 429 `queue_full`.
    pub max_queue_depth: u64,
    /// Most job writes (enqueued jobs, reports) admitted but not yet answered by the store,
    /// across the node; beyond it writes get 503 `server_saturated`.
    pub max_pending_writes: usize,
    /// Longest a PostgreSQL call waits for a free pooled connection; beyond it 503
    /// `server_saturated` (a queue with no bound on its wait would hold requests past any
    /// client's deadline).
    pub max_pool_wait_ms: u64,
    /// Most HTTP requests in flight on one node (long-polls included); beyond it 503.
    pub max_concurrent_requests: usize,
    /// Most clients the rate limiter tracks at once; beyond it, new clients share one bucket.
    pub max_rate_limit_keys: usize,
    /// Most API tokens (revoked ones included).
    pub max_tokens: usize,
    /// Most registered hosts.
    pub max_hosts: usize,
    /// Longest token or host name.
    pub max_name_len: usize,
    /// Longest host health URL.
    pub max_url_len: usize,
    /// Deepest nesting of arrays and objects in a request body (every stored JSON value is
    /// inside one, so whatever is accepted reads back).
    pub max_json_depth: usize,
    /// Time a connection has to send a request's headers once its first byte arrived.
    pub header_read_timeout_ms: u64,
    /// Time a request has to send its whole body; a request holds no request slot until then.
    pub body_read_timeout_ms: u64,
    /// Time a connection may sit between requests without sending a byte before it is closed.
    pub idle_timeout_ms: u64,
    /// Open client connections one node serves; further connects wait in the listen backlog.
    pub max_connections: usize,
    /// Listen backlog (pending connects the kernel queues); 0 means the system's `somaxconn`.
    pub listen_backlog: u32,
    /// Longest request target (path and query); longer ones get 414.
    pub max_uri_bytes: usize,
    /// Most bytes of request headers (names and values); more get 431.
    pub max_header_bytes: usize,
    /// Longest client-chosen work-item id.
    pub max_item_id_len: usize,
    /// Longest agent name (`agent`, `assignee`).
    pub max_agent_name_len: usize,
    /// Longest work-item title (also a write's `reason`).
    pub max_title_bytes: usize,
    /// Longest work-item description.
    pub max_description_bytes: usize,
    /// Largest work-item context, as serialized JSON.
    pub max_context_bytes: usize,
    /// Most artifacts on one work item.
    pub max_artifacts: usize,
    /// Largest artifact (`{uri, meta}` as serialized JSON).
    pub max_artifact_bytes: usize,
    /// Versions of history kept per work item (at least 1); older entries are dropped.
    pub max_item_history: usize,
    /// Most recipients of one message (`to`).
    pub max_recipients: usize,
    /// Largest message or broadcast body, as serialized JSON bytes.
    pub max_message_bytes: usize,
    /// Longest a message or broadcast may live (`ttl_ms`).
    pub max_message_ttl_ms: i64,
    /// Most ready and in-flight messages one inbox holds; sends beyond it get 429 `queue_full`.
    pub max_inbox_depth: u64,
    /// Most channels one agent subscribes to.
    pub max_agent_channels: usize,
    /// Highest `max_parallel` of a convoy (fixed, or an adaptive bound).
    pub max_convoy_parallel: u32,
    /// Most members one convoy takes over its life.
    pub max_convoy_members: u64,
    /// Most members one create or add request carries.
    pub max_convoy_members_per_request: usize,
    /// Most dead member ids a completion job's payload lists (`failed_total` counts them all).
    pub max_convoy_failed_ids: usize,
    /// Longest ledger account or transfer id, in bytes.
    pub max_ledger_id_len: usize,
    /// Largest ledger `metadata` object, serialized, in bytes.
    pub max_ledger_metadata_bytes: usize,
    /// Longest checkpoint key (thread, checkpoint id, namespace, channel, version, task id), in
    /// bytes.
    pub max_checkpoint_key_bytes: usize,
    /// Largest checkpoint with the blobs one put sends, in bytes (decoded).
    pub max_checkpoint_bytes: usize,
    /// Largest blob or pending-write value, in bytes (decoded).
    pub max_blob_bytes: usize,
    /// Largest checkpoint `metadata` object, serialized, in bytes.
    pub max_checkpoint_metadata_bytes: usize,
    /// Body limit of the checkpoint write routes (replacing `max_request_bytes` there), in bytes.
    pub max_checkpoint_request_bytes: usize,
    /// Most channels a checkpoint versions, blobs one put sends, or writes one call sends.
    pub max_checkpoint_channels: usize,
    /// Longest pending write `task_path`, in bytes.
    pub max_task_path_bytes: usize,
    /// Largest SQLite write-ahead log, in bytes: past it the checkpointer copies the whole log
    /// back while writers wait, then truncates it, so a write rate above what background
    /// checkpoints keep up with cannot grow the log (and every read's walk of it) without end.
    pub max_sqlite_wal_bytes: u64,
    /// Largest episode request body (`POST /v1/memory/episodes`), and each episode of a batch
    /// as serialized, in bytes.
    pub max_episode_bytes: usize,
    /// Longest episode `description` and `outcome.summary`, in bytes.
    pub max_episode_text_bytes: usize,
    /// Most steps of one episode.
    pub max_episode_steps: usize,
    /// Longest step `action`, in bytes.
    pub max_step_text_bytes: usize,
    /// Most tags on one episode (each at most `max_tag_len`).
    pub max_episode_tags: usize,
    /// Most artifacts on one episode.
    pub max_episode_artifacts: usize,
    /// Largest episode `metadata` object, serialized, in bytes.
    pub max_episode_metadata_bytes: usize,
    /// Most dimensions of an embedding.
    pub max_embedding_dims: usize,
    /// Most episodes in one batch.
    pub max_memory_batch: usize,
    /// Most results of one memory search (`k`).
    pub max_search_k: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload_bytes: 1 << 20,
            max_result_bytes: 1 << 20,
            max_batch: 10_000,
            max_queue_name_len: 128,
            max_worker_name_len: 128,
            max_tags: 32,
            max_tag_len: 64,
            max_unique_key_len: 256,
            max_depends_on: 100,
            max_error_len: 4096,
            max_error_history: 1000,
            max_claim: 1000,
            max_wait_ms: 30_000,
            min_lease_ms: 10,
            max_lease_ms: 24 * 3_600_000,
            max_timeout_ms: 7 * 24 * 3_600_000,
            max_attempts: 1000,
            max_delay_ms: 366 * 24 * 3_600_000,
            max_page_size: 1000,
            max_request_bytes: 32 << 20,
            max_subscribers: 10_000,
            max_mcp_sessions: 1_000,
            event_buffer: 16_384,
            max_catchup_events_per_s: 150_000,
            max_ws_message_bytes: 4_096,
            max_rooms: 256,
            max_schedules: 10_000,
            max_catch_up: 1_000,
            max_queue_depth: 1_000_000,
            max_pending_writes: 50_000,
            max_pool_wait_ms: 5_000,
            max_concurrent_requests: 10_000,
            max_rate_limit_keys: 100_000,
            max_tokens: 10_000,
            max_hosts: 1_000,
            max_name_len: 128,
            max_url_len: 2_048,
            max_json_depth: 64,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            max_connections: 10_000,
            listen_backlog: 0,
            max_uri_bytes: 16_384,
            max_header_bytes: 65_536,
            max_item_id_len: 128,
            max_agent_name_len: 128,
            max_title_bytes: 512,
            max_description_bytes: 65_536,
            max_context_bytes: 262_144,
            max_artifacts: 1_000,
            max_artifact_bytes: 4_096,
            max_item_history: 1_000,
            max_recipients: 100,
            max_message_bytes: 262_144,
            max_message_ttl_ms: 7 * 24 * 3_600_000,
            max_inbox_depth: 10_000,
            max_agent_channels: 64,
            max_convoy_parallel: 10_000,
            max_convoy_members: 1_000_000,
            max_convoy_members_per_request: 10_000,
            max_convoy_failed_ids: 1_000,
            max_ledger_id_len: 512,
            max_ledger_metadata_bytes: 4_096,
            max_checkpoint_key_bytes: 256,
            max_checkpoint_bytes: 8 << 20,
            max_blob_bytes: 4 << 20,
            max_checkpoint_metadata_bytes: 64 << 10,
            max_checkpoint_request_bytes: 16 << 20,
            max_checkpoint_channels: 1_000,
            max_task_path_bytes: 1_024,
            max_sqlite_wal_bytes: 1 << 30,
            max_episode_bytes: 1 << 20,
            max_episode_text_bytes: 10_000,
            max_episode_steps: 1_000,
            max_step_text_bytes: 1_000,
            max_episode_tags: 100,
            max_episode_artifacts: 100,
            max_episode_metadata_bytes: 16 << 10,
            max_embedding_dims: 4_096,
            max_memory_batch: 100,
            max_search_k: 100,
        }
    }
}
