//! Who may do what, and how much: API tokens and their scopes, per-queue flow limits, the
//! worker registry and registered hosts. Pure types shared by the store, the server and the
//! client; the rules that use them live in the server (`protect`, `auth`) and the store
//! (claims honour [`QueueLimits`]).

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

named_enum! {
    /// What a token may do; `admin` implies every other scope. Adding a scope is one line here:
    /// token parsing (`--scopes`), storage (by wire name) and the OpenAPI document follow.
    #[derive(
        Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
    )]
    pub enum Scope {
        /// Everything, including tokens, queue settings and hosts.
        Admin = "admin";
        /// Enqueue jobs.
        Produce = "produce";
        /// Claim, heartbeat, complete, fail and release jobs.
        Work = "work";
        /// Read jobs, queues, events, workers and stats.
        Read = "read";
        /// Create and change work items.
        Items = "items";
        /// Send messages and broadcasts; receive, ack and nack them; replay dead letters.
        Messages = "messages";
        /// Create accounts and transfers; post and void them; pay for jobs (with `produce`).
        Ledger = "ledger";
        /// Put checkpoints and their writes; change, copy, prune and delete threads.
        Checkpoints = "checkpoints";
        /// Add, change, delete and search memory episodes.
        Memory = "memory";
    }
}

impl Scope {
    /// The wire names, comma-separated, for messages that list the choices.
    pub fn names() -> String {
        Scope::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// A kind of resource a token can be restricted to; each names the path parameter that holds
/// one (`{queue}`). Later domains add theirs (agent names, memory namespaces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    /// A queue, by name (a job belongs to its queue).
    Queue,
    /// An agent, by name (its inbox, and what it sends or writes as).
    Agent,
    /// A memory namespace, by name (its episodes).
    Namespace,
}

impl ResourceKind {
    /// The name of the path parameter and of the kind.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Queue => "queue",
            ResourceKind::Agent => "agent",
            ResourceKind::Namespace => "namespace",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored API token: only the SHA-256 of its secret is kept, never the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenRecord {
    /// Token id (also the public prefix of the secret, so logs can name a token).
    pub id: Uuid,
    /// Human name, e.g. `ci-producer`; not unique.
    pub name: String,
    /// Lower-case hex SHA-256 of the secret (never sent: empty in a record read from the API).
    #[serde(default, skip_serializing)]
    #[schema(ignore)]
    pub hash: String,
    /// What the token may do.
    pub scopes: Vec<Scope>,
    /// When set, the token may only touch these queues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queues: Option<Vec<String>>,
    /// When set, the token may only act as these agents (send as, read and ack the inboxes of).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<String>>,
    /// When set, the token may only touch these memory namespaces' episodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<Vec<String>>,
    /// Creation time, epoch ms.
    pub created_at: i64,
    /// Revocation time, epoch ms; a revoked token authenticates nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
}

/// Flow control of one queue, enforced across every node (stored with the queue).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueLimits {
    /// Most jobs of this queue running at once, across all workers and nodes; claims beyond
    /// it return fewer jobs (possibly none), never an error. At least 1 (pause the queue to
    /// stop it).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::validate::whole::opt"
    )]
    #[schema(minimum = 1, maximum = 4_294_967_295_i64, format = Int64)]
    pub max_running: Option<u32>,
    /// Most job starts per second (a token bucket with a burst of `max(1, rate)`), across all
    /// nodes; claims beyond it return fewer jobs. Above 0, at most 1,000,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0, maximum = 1_000_000)]
    pub max_starts_per_sec: Option<f64>,
    /// Most `ready` + `scheduled` jobs, 1..=2^63−1; enqueues beyond it get 429 `queue_full`.
    /// Unset: the server-wide default (`limits.max_queue_depth`).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::validate::whole::opt"
    )]
    #[schema(minimum = 1, maximum = 9_223_372_036_854_775_807_i64)]
    pub max_depth: Option<u64>,
}

impl QueueLimits {
    /// True when no limit is set.
    pub fn is_empty(&self) -> bool {
        self.max_running.is_none() && self.max_starts_per_sec.is_none() && self.max_depth.is_none()
    }
}

/// Whether a worker is heard from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkerStatus {
    /// Seen within the worker timeout.
    Active,
    /// Silent past the timeout; its leases were released.
    Lost,
}

impl WorkerStatus {
    /// The wire name, e.g. `active`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Active => "active",
            WorkerStatus::Lost => "lost",
        }
    }
}

/// A worker as the registry knows it (registered by its claims and heartbeats).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkerInfo {
    /// The name the worker claims with.
    pub name: String,
    /// First claim or heartbeat, epoch ms.
    pub first_seen_ms: i64,
    /// Latest claim or heartbeat, epoch ms.
    pub last_seen_ms: i64,
    /// Jobs it holds a lease on now.
    pub jobs_in_flight: u64,
    /// `active` or `lost`.
    pub status: WorkerStatus,
}

/// A host whose health URL ferry probes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostRecord {
    /// Unique name.
    pub name: String,
    /// `http://` URL answered with 2xx when healthy.
    pub health_url: String,
    /// Registration time, epoch ms.
    pub created_at: i64,
}
