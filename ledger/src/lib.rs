//! flashledger's node.
pub mod raft;
pub mod state_machine;
