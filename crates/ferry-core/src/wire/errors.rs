//! The error body every failed request is answered with, whatever the endpoint.

use crate::error::Error;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Every error response: `{"error":{"code","message","field"}}`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: Error,
}
