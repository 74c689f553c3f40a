//! The client commands, one module per domain: each parses its subcommand's arguments, makes
//! its calls through `ferry-client`'s typed methods, and prints through [`crate::output`].

pub mod advise;
pub mod agents;
pub mod backup;
pub mod broadcasts;
pub mod checkpoints;
pub mod convoys;
pub mod dlq;
pub mod hosts;
pub mod items;
pub mod jobs;
pub mod ledger;
pub mod memory;
pub mod messages;
pub mod queues;
pub mod schedules;
pub mod stats;
pub mod tokens;
pub mod watch;
pub mod workers;
