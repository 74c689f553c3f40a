//! Bodies of the worker registry endpoint (`/v1/workers`).

use crate::access::WorkerInfo;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `GET /v1/workers` answer.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct WorkersResponse {
    /// Every registered worker, by name.
    pub workers: Vec<WorkerInfo>,
}
