//! flashledger's wire types: the protobuf messages and gRPC services generated from
//! `proto/flashledger.proto`, for the node (`ledger`), the client library and any other language.
//!
//! Under `--cfg madsim` the generated services are madsim-tonic's simulated ones, so the same node
//! and client code runs in the deterministic simulator.

#![allow(clippy::all, missing_docs)]

/// Version 1 of the protocol; see the `.proto` file for the status-code contract.
pub mod v1 {
    tonic::include_proto!("flashledger.v1");
}

/// The encoded file descriptor set, for gRPC server reflection (`grpcurl list`).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/flashledger_descriptor.bin"));

/// Metadata keys the node sets on `UNAVAILABLE` (not leader) and `FAILED_PRECONDITION` (stale
/// epoch) answers, which the client library follows.
pub mod metadata {
    pub const LEADER_ADDR: &str = "x-leader-addr";
    pub const LEADER_ID: &str = "x-leader-id";
    pub const SHARD_EPOCH: &str = "x-shard-epoch";
    /// Set (to "1") on an `UNAVAILABLE` the node answered without proposing anything: the write
    /// was certainly not applied. An `UNAVAILABLE` without it (a transport failure) is ambiguous.
    pub const NOT_APPLIED: &str = "x-not-applied";
}
