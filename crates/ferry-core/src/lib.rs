//! ferry-core: the job model and its rules, with no I/O.
//!
//! Everything here is pure so that both storage backends and the HTTP layer agree on one
//! definition of a job, its states, its limits and its errors. Storage lives in `ferry-store`;
//! the server in `ferry-server`.

#[macro_use]
mod named;

pub mod access;
pub mod backoff;
pub mod checkpoint;
pub mod clock;
pub mod convoy;
pub mod error;
pub mod event;
pub mod item;
pub mod job;
pub mod json_text;
pub mod ledger;
pub mod limits;
pub mod measure;
pub mod memory;
pub mod message;
pub mod schedule;
pub mod time;
pub mod validate;
pub mod wire;

pub use access::{HostRecord, QueueLimits, ResourceKind, Scope, TokenRecord, WorkerInfo, WorkerStatus};
pub use backoff::{Backoff, Jitter};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, ErrorCode, Result, StorageFault};
pub use event::{Event, EventFilter, EventType, Room, Subject, SubjectKind};
pub use job::*;
pub use limits::Limits;
