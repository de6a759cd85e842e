//! The ledger's state machine: a pure function of (state, command, leader timestamp).
//!
//! No I/O, no clock, no randomness, deterministic iteration (`BTreeMap`, or hash tables keyed by the log's hash key and encoded in log order). Storage and
//! Raft live elsewhere and call [`state::LedgerState::apply`].

pub mod command;
pub mod holders;
pub mod keys;
pub mod limits;
pub mod orders;
mod split;
pub mod state;

#[cfg(test)]
mod model_test;
#[cfg(test)]
mod split_test;
