//! The glue between the ledger and openraft: the type configuration, the async runtime
//! (tokio for real, madsim in the simulator), storage adapters and the network.

pub mod runtime;
pub mod types;
