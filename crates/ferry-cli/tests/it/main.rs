//! ferry's end-to-end tests: the real `ferry` binary over real HTTP, on SQLite and PostgreSQL.
//!
//! One test binary with a module per area, not one binary per file: each binary links the
//! whole server, and linking fourteen of them was most of CI's test build.

mod common;

mod api_errors;
mod backup;
mod checkpoints;
mod cli_errors;
mod convoys;
mod e2e;
mod events;
mod faults;
mod group_commit;
mod import_dir;
mod items;
mod ledger;
mod mcp;
mod memory;
mod memory_load;
mod messages;
mod migrate;
mod multinode;
mod observability;
mod pg_outage;
mod protection;
mod restricted;
mod runbook;
mod security;
mod slowloris;
