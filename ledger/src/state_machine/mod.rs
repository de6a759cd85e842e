//! The ledger's state machine: a pure function of (state, command, leader timestamp).
//!
//! No I/O, no clock, no randomness, deterministic iteration (`BTreeMap` only). Storage and
//! Raft live elsewhere and call [`state::LedgerState::apply`].

pub mod command;
pub mod limits;
pub mod spread_map;
pub mod state;

#[cfg(test)]
mod model_test;
