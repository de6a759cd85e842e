//! The vocabulary every layer shares: node and shard ids, openraft's type configuration for a
//! flashledger shard, and the openraft aliases built on it.
//!
//! Only the pure state machine (whose command and reply types the entries carry) and the async
//! runtime sit below it, so `storage/`, `applied/` and `config.rs` can speak of log ids and
//! entries without importing the Raft glue ([`crate::raft`]) that uses them. The `Raft` alias
//! names the state-machine adapter, so it stays in `crate::raft`.

use crate::state_machine::command::CommandReply;
use crate::state_machine::command::LogCommand;

openraft::declare_raft_types!(
    /// One shard's Raft group: entries carry [`LogCommand`]s and answer [`CommandReply`]s.
    pub TypeConfig:
        D = LogCommand,
        R = CommandReply,
        NodeId = u64,
        Node = openraft::BasicNode,
        AsyncRuntime = crate::runtime::Runtime,
);

/// A node id, as in `cluster.toml`.
pub type NodeId = u64;
/// A shard id, as in `cluster.toml`; shard ids are unique across the cluster.
pub type ShardId = u64;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
