//! The ledger domain of the storage contract: accounts and transfers planned by
//! `ferry_core::ledger::Book`, a hash chain of events committed with the balances it covers,
//! snapshots, and the replay that checks them.
//!
//! Paid jobs need no call here: `enqueue` places a job's hold, and `complete`, `fail`, the
//! reaper, `cancel` and `replay_dead` post, pay or void it in the job's own transaction.

use async_trait::async_trait;
use ferry_core::Result;
use ferry_core::ledger::{Account, LedgerEvent, NewAccount, NewTransfer, Transfer, Verification};

/// One page of accounts.
#[derive(Debug, Clone, Default)]
pub struct AccountFilter {
    /// Only this ledger.
    pub ledger: Option<u32>,
    /// Ids after this one.
    pub after: Option<String>,
    /// Page size.
    pub limit: usize,
}

/// Ledger: accounts, transfers, their events and the checks over them.
#[async_trait]
pub trait LedgerStore: Send + Sync {
    /// Creates accounts all or nothing; an identical repeat answers the account with
    /// `duplicate`, one with other fields is `conflict` (`details.fields`, `details.index`).
    async fn create_accounts(&self, accounts: Vec<NewAccount>) -> Result<Vec<Account>>;

    /// Closes an account (idempotent: a repeat answers `duplicate`).
    async fn close_account(&self, id: &str) -> Result<Account>;

    /// Creates transfers. `atomic`: all or nothing, the first error (with `details.index`)
    /// answering for the batch and nothing written. Otherwise each on its own, a refusal
    /// remembered (its id answers `id_already_failed` from then on).
    async fn create_transfers(
        &self,
        transfers: Vec<NewTransfer>,
        atomic: bool,
    ) -> Result<Vec<Result<Transfer>>>;

    /// Posts a pending transfer, all of it or `amount` (the rest released).
    async fn post_transfer(&self, id: &str, amount: Option<i64>) -> Result<Transfer>;

    /// Voids a pending transfer.
    async fn void_transfer(&self, id: &str) -> Result<Transfer>;

    /// One account; `not_found` if absent.
    async fn get_account(&self, id: &str) -> Result<Account>;

    /// Accounts in id order.
    async fn list_accounts(&self, filter: AccountFilter) -> Result<Vec<Account>>;

    /// One transfer (a refused one too); `not_found` if absent.
    async fn get_transfer(&self, id: &str) -> Result<Transfer>;

    /// An account's applied transfers (debit or credit side), by creation seq after `after`;
    /// `not_found` for an unknown account.
    async fn account_transfers(
        &self,
        account: &str,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<Transfer>>;

    /// The ledger's own events with seq after `after`, oldest first.
    async fn ledger_events(&self, after: i64, limit: usize) -> Result<Vec<LedgerEvent>>;

    /// Expires up to `max` due pending transfers; how many.
    async fn expire_transfers(&self, max: usize) -> Result<u64>;

    /// Replays the chain (from the first event with `full`, else from the last snapshot) and
    /// compares it with the stored balances and snapshots.
    async fn verify_ledger(&self, full: bool) -> Result<Verification>;

    /// Rewrites the stored balances from a full replay of an intact chain and appends
    /// `ledger.repaired`; `invalid_state` when the chain itself is broken.
    async fn repair_ledger(&self) -> Result<Verification>;

    /// Pending transfers right now.
    async fn pending_transfers(&self) -> Result<u64>;
}
