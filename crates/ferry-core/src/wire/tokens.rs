//! Bodies of the API token endpoints (`/v1/tokens`): mint, list and revoke.

use crate::access::{Scope, TokenRecord};
use crate::error::{Error, Result};
use crate::limits::Limits;
use crate::validate;
use crate::validate::names::QueueName;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /v1/tokens` body.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// Human name: 1..=`limits.max_name_len` characters.
    #[schema(min_length = 1, max_length = 128)]
    pub name: String,
    /// Scopes: `admin`, `produce`, `work`, `read` (at least one).
    #[schema(min_items = 1)]
    pub scopes: Vec<Scope>,
    /// Limit the token to these queues: 1..=`limits.max_tags` of them.
    #[serde(default)]
    #[schema(value_type = Option<Vec<QueueName>>, min_items = 1, max_items = 32)]
    pub queues: Option<Vec<String>>,
    /// Limit the token to acting as these agents (sending as them, reading and acking their
    /// inboxes, writing work items as them): 1..=`limits.max_recipients` of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::validate::names::AgentName>>, min_items = 1, max_items = 100)]
    pub agents: Option<Vec<String>>,
    /// Limit the token to these memory namespaces' episodes: 1..=`limits.max_recipients` of
    /// them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<crate::wire::memory::MemoryNamespace>>, min_items = 1, max_items = 100)]
    pub namespaces: Option<Vec<String>>,
}

impl TokenBody {
    /// Checks the name, the scopes and the queues against the limits.
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        if self.name.is_empty() || self.name.chars().count() > limits.max_name_len {
            return Err(Error::invalid(
                "name",
                format!("name must be 1..={} characters", limits.max_name_len),
            ));
        }
        if self.scopes.is_empty() {
            return Err(Error::invalid(
                "scopes",
                format!("at least one scope is required ({})", crate::Scope::names()),
            ));
        }
        if let Some(qs) = &self.queues {
            if qs.is_empty() || qs.len() > limits.max_tags {
                return Err(Error::invalid(
                    "queues",
                    format!("queues must list 1..={} queues", limits.max_tags),
                ));
            }
            for (i, q) in qs.iter().enumerate() {
                validate::queue_name(q, limits, &format!("queues[{i}]"))?;
            }
        }
        if let Some(agents) = &self.agents {
            if agents.is_empty() || agents.len() > limits.max_recipients {
                return Err(Error::invalid(
                    "agents",
                    format!("agents must list 1..={} agents", limits.max_recipients),
                ));
            }
            for (i, a) in agents.iter().enumerate() {
                crate::wire::messages::inbox_name(a, limits, &format!("agents[{i}]"))?;
            }
        }
        if let Some(names) = &self.namespaces {
            if names.is_empty() || names.len() > limits.max_recipients {
                return Err(Error::invalid(
                    "namespaces",
                    format!("namespaces must list 1..={} namespaces", limits.max_recipients),
                ));
            }
            for (i, n) in names.iter().enumerate() {
                validate::queue_name(n, limits, &format!("namespaces[{i}]"))?;
            }
        }
        Ok(())
    }
}

/// A new token: the secret is shown here once and never again.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct NewToken {
    /// The secret to send as `Authorization: Bearer <token>`.
    pub token: String,
    /// The stored record.
    #[serde(flatten)]
    pub record: TokenRecord,
}

/// `GET /v1/tokens` answer.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct TokensResponse {
    /// Every token, revoked ones included, oldest first; secrets are never shown.
    pub tokens: Vec<TokenRecord>,
}
