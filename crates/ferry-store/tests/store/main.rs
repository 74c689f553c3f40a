//! ferry-store's integration tests in one binary: the conformance suite run against each
//! backend, the backends' own checks, and the SIGKILL crash test.

#[macro_use]
mod conformance;

mod crash;
mod postgres;
mod sqlite;
