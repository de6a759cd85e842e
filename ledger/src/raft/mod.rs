//! The glue between the ledger and openraft: the state machine adapter and the network. The type
//! configuration lives below it in [`crate::types`], the async runtime in [`crate::runtime`].

pub mod network;
pub mod state_store;

/// One shard's Raft node.
pub type Raft = openraft::Raft<crate::types::TypeConfig, state_store::ShardStateMachine>;
