//! The PostgreSQL backend's API tokens: the
//! [`TokenStore`](crate::TokenStore) domain of the contract.

use super::{PgStore, access};
use crate::TokenStore;
use async_trait::async_trait;
use ferry_core::{Result, TokenRecord};
use uuid::Uuid;

#[async_trait]
impl TokenStore for PgStore {
    async fn create_token(&self, token: TokenRecord) -> Result<()> {
        self.tx("create_token", move |tx, _, _| boxed!(access::create_token(tx, &token).await)).await
    }

    async fn list_tokens(&self) -> Result<Vec<TokenRecord>> {
        self.read(|c| boxed!(access::list_tokens(c).await)).await
    }

    async fn revoke_token(&self, id: Uuid) -> Result<TokenRecord> {
        self.tx("revoke_token", move |tx, now, _| boxed!(access::revoke_token(tx, now, id).await)).await
    }
}
