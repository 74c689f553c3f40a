//! The SQLite backend's API tokens: the [`TokenStore`](crate::TokenStore) domain of the contract.

use super::{SqliteStore, access};
use crate::TokenStore;
use async_trait::async_trait;
use ferry_core::{Result, TokenRecord};
use uuid::Uuid;

#[async_trait]
impl TokenStore for SqliteStore {
    async fn create_token(&self, token: TokenRecord) -> Result<()> {
        self.write_raw("create_token", move |c, _| access::create_token(c, &token)).await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.readers.read(access::list_tokens).await
    }

    async fn revoke_token(&self, id: Uuid) -> Result<TokenRecord> {
        self.write("revoke_token", move |c, now, _| access::revoke_token(c, now, id)).await
    }
}
