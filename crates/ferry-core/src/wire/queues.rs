//! Bodies of the queue endpoints: stats of every queue, pause and resume, and a queue's flow
//! limits (the limits themselves are [`QueueLimits`], checked here).

use crate::access::QueueLimits;
use crate::error::{Error, Result};
use crate::job::QueueStats;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /v1/queues` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct QueuesResponse {
    /// Every known queue.
    pub queues: Vec<QueueStats>,
}

/// Answer of pause and resume.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PauseResponse {
    /// Queue name.
    pub queue: String,
    /// Whether it is paused now.
    pub paused: bool,
}

/// `PUT /v1/queues/{queue}/limits` answer.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct LimitsResponse {
    /// The queue.
    pub queue: String,
    /// Its limits now.
    pub limits: QueueLimits,
}

impl QueueLimits {
    /// Checks the body of `PUT /v1/queues/{queue}/limits`: each limit set is within its range.
    pub fn validate(&self) -> Result<()> {
        if self.max_running == Some(0) {
            return Err(Error::invalid(
                "max_running",
                "max_running must be at least 1 (pause the queue to stop it)",
            ));
        }
        if let Some(r) = self.max_starts_per_sec
            && !(r.is_finite() && r > 0.0 && r <= 1e6)
        {
            return Err(Error::invalid(
                "max_starts_per_sec",
                "max_starts_per_sec must be > 0 and at most 1000000",
            ));
        }
        // Depths are counted in i64 by both stores: a larger limit could not be kept as given.
        if let Some(d) = self.max_depth
            && (d == 0 || d > i64::MAX as u64)
        {
            return Err(Error::invalid("max_depth", format!("max_depth must be 1..={}", i64::MAX)));
        }
        Ok(())
    }
}
