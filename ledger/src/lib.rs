//! flashledger's node: a Raft-replicated inventory ledger for flash sales.
//!
//! # Layout
//!
//! - [`state_machine`]: the ledger itself, a pure function of (state, command, log time).
//! - [`applied`]: each shard's latest snapshot of its applied state (files / memory).
//! - [`storage`]: the write-ahead log holding every shard's Raft log and vote (group commit).
//! - [`raft`]: openraft glue: type config, runtime, state-machine adapter, network.
//! - [`node`]: one node's shard replicas and the operations clients call on them.
//! - [`server`]: the gRPC services (Inventory, Cluster, internal Raft, health, reflection).
//! - [`shipping`]: ships every confirmed order to sharded PostgreSQL, exactly once.
//! - [`config`]: the `cluster.toml` format and its validation.
//! - `simulation` (only with `--cfg madsim`): clock skew and planted bugs for the simulator.

pub mod applied;
pub mod config;
pub mod node;
pub mod raft;
pub mod server;
pub mod shipping;
#[cfg(madsim)]
pub mod simulation;
pub mod state_machine;
pub mod storage;
