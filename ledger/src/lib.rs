//! flashledger's node: a Raft-replicated inventory ledger for flash sales.
//!
//! # Layout
//!
//! Read from the bottom (what every layer may use) up: a module uses what is listed before it,
//! never what comes after.
//!
//! - [`meta`]: the shard map shard 0 replicates, and its reshaping commands (pure; the ledger's
//!   log carries them, so it sits below [`state_machine`]).
//! - [`state_machine`]: the ledger itself, a pure function of (state, command, log time).
//! - [`metrics`]`::instruments`: the counters and histograms every layer records into (no
//!   dependency on the rest of the crate); the rest of [`metrics`] (scrape, readiness, the admin
//!   HTTP endpoint) reads the node and belongs at the top, beside [`server`].
//! - [`runtime`]: the async runtime openraft runs on (tokio, or madsim in the simulator).
//! - [`types`]: node and shard ids, openraft's type configuration and aliases: the vocabulary
//!   every layer above shares (it names the state machine's commands and the runtime).
//! - [`applied`]: each shard's latest snapshot of its applied state (files / memory).
//! - [`storage`]: the write-ahead log holding every shard's Raft log and vote (group commit).
//! - [`config`]: the `cluster.toml` format and its validation.
//! - [`backup`]: a backup's formats (shard files in the snapshot format, the manifest) and
//!   restore, which seeds a new cluster's empty data directories from one; the node makes the
//!   shard files (`node/backup.rs`), the CLI writes and reads the directory.
//! - [`admission`]: whether a request may enter (deadline, budgets per node and shard with
//!   priority shares, rate limits per client and buyer), decided before anything is proposed;
//!   the node holds one, the server asks it.
//! - [`raft`]: openraft glue: state-machine adapter, network.
//! - [`meta`]: the shard map's reshaping and placement; today the pre-sale planner (a demand
//!   forecast, a plan of splits and leader moves, the trait that carries a plan out).
//! - [`shipping`]: ships every confirmed order to sharded PostgreSQL, exactly once; it reads a
//!   node through the narrow [`shipping::source::ShippingSource`] trait, not [`node`] itself.
//! - [`node`]: one node's shard replicas and the operations clients call on them.
//! - [`server`]: the gRPC services (Inventory, Cluster, internal Raft, health, reflection).
//! - `simulation` (only with `--cfg madsim`): clock skew and planted bugs for the simulator.

pub mod admission;
pub mod applied;
pub mod backup;
pub mod config;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod runtime;
pub mod security;
pub mod server;
pub mod shipping;
#[cfg(madsim)]
pub mod simulation;
pub mod state_machine;
pub mod storage;
pub mod types;
