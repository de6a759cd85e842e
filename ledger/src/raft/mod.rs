//! The glue between the ledger and openraft: the type configuration, the async runtime
//! (tokio for real, madsim in the simulator), the state machine adapter and the network.

pub mod network;
pub mod runtime;
pub mod state_store;
pub mod types;
