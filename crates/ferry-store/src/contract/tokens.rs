//! The token domain of the storage contract: API tokens, kept only as hashes.

use async_trait::async_trait;
use ferry_core::{Result, TokenRecord};
use uuid::Uuid;

/// API tokens.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Stores a new API token (only its hash); `conflict` if its id exists.
    async fn create_token(&self, token: TokenRecord) -> Result<()>;

    /// Every token, revoked ones included, oldest first.
    async fn list_tokens(&self) -> Result<Vec<TokenRecord>>;

    /// Revokes a token (idempotent: the first revocation time stays) and returns it;
    /// `not_found` if no such id.
    async fn revoke_token(&self, id: Uuid) -> Result<TokenRecord>;
}
