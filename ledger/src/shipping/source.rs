//! What the shipper needs from a node, and nothing more: the shards it hosts, a short read of
//! each one's applied ledger and Raft role, and a way to propose the replicated `Shipped` mark.
//!
//! `node/` implements these traits for `Node` and starts the shipper, so shipping depends on
//! this narrow view of a node, never on the node module itself.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use crate::config::ShippingSection;
use crate::state_machine::state::LedgerState;
use crate::types::NodeId;
use crate::types::ShardId;

/// A node, as its shippers see it.
/// Starts the shipper of one shard (see [`ShippingSource::ship_new_shards_with`]).
pub type ShipperStarter = Box<dyn Fn(ShardId) + Send + Sync>;

pub trait ShippingSource: Send + Sync + 'static {
    /// One ledger shard this node hosts.
    type Shard: ShippingShard;
    /// Why a shipped-mark proposal failed. Only logged: a later round proposes a later mark.
    type Error: std::fmt::Display;

    /// This node's id, as [`crate::shipping::designation`] ranks it.
    fn node_id(&self) -> NodeId;
    /// The ledger shards this node hosts, one shipper each.
    fn shard_ids(&self) -> Vec<ShardId>;
    /// The replica of `shard_id` on this node; `None` when it hosts none.
    fn shard(&self, shard_id: ShardId) -> Option<Arc<Self::Shard>>;
    /// The node's `[shipping]` settings.
    fn shipping_settings(&self) -> ShippingSection;
    /// Marks the node as one that ships, so as leader it asks its shards to keep order events.
    fn ship_orders(&self);
    /// Keeps `start`, to run a shipper for each shard the node starts hosting later (a replica
    /// the shard map moves to it).
    fn ship_new_shards_with(&self, start: ShipperStarter);
    /// Has the shard's leader propose the replicated mark "every event below `below_seq` is in
    /// every Postgres shard": directly when this node leads, else through the leader. Answers
    /// the log index of the mark's entry.
    fn propose_shipped(
        &self,
        shard_id: ShardId,
        below_seq: u64,
    ) -> impl Future<Output = Result<u64, Self::Error>> + Send;
}

/// One ledger shard's replica, as its shipper sees it.
pub trait ShippingShard: Send + Sync + 'static {
    fn id(&self) -> ShardId;
    /// The replica's current Raft role, which decides whether it ships.
    fn raft_role(&self) -> RaftRole;
    /// Runs `read` on the replica's applied ledger under its read lock: keep it to a bounded copy.
    fn read_ledger<T>(&self, read: impl FnOnce(&LedgerState) -> T) -> T;
}

/// What designation needs of a replica's Raft state.
#[derive(Debug, Clone)]
pub struct RaftRole {
    /// Raft was shut down on this replica: its shipper ends.
    pub shut_down: bool,
    /// The voters of the shard's current membership.
    pub voters: BTreeSet<NodeId>,
    /// The leader this replica knows, if any.
    pub leader: Option<NodeId>,
}
