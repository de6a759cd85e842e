//! flashledger's node.
pub mod raft;
pub mod state_machine;
pub mod storage;
