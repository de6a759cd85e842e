//! The node as its shippers see it: [`ShippingSource`] for [`Node`] and [`ShippingShard`] for
//! its replicas, so `crate::shipping` needs nothing of the node but these traits.

use std::sync::Arc;

use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use crate::config::ShippingSection;
use crate::node::Node;
use crate::node::NodeError;
use crate::node::ShardReplica;
use crate::shipping::source::RaftRole;
use crate::shipping::source::ShippingShard;
use crate::shipping::source::ShippingSource;
use crate::state_machine::state::LedgerState;
use crate::types::NodeId;
use crate::types::ShardId;

impl ShippingSource for Node {
    type Shard = ShardReplica;
    type Error = NodeError;

    fn node_id(&self) -> NodeId {
        self.id
    }

    fn shard_ids(&self) -> Vec<ShardId> {
        self.shards().iter().map(|shard| shard.config.id).collect()
    }

    fn shard(&self, shard_id: ShardId) -> Option<Arc<ShardReplica>> {
        Node::shard(self, shard_id)
    }

    fn shipping_settings(&self) -> ShippingSection {
        self.config.shipping.clone()
    }

    fn ship_orders(&self) {
        Node::ship_orders(self);
    }

    fn ship_new_shards_with(&self, start: crate::shipping::source::ShipperStarter) {
        *self.shipper_starter.lock().unwrap_or_else(|p| p.into_inner()) = Some(start);
    }

    async fn propose_shipped(&self, shard_id: ShardId, below_seq: u64) -> Result<u64, NodeError> {
        Node::propose_shipped(self, shard_id, below_seq).await
    }
}

impl ShippingShard for ShardReplica {
    fn id(&self) -> ShardId {
        self.config.id
    }

    fn raft_role(&self) -> RaftRole {
        let metrics = self.raft.metrics().borrow_watched().clone();
        RaftRole {
            shut_down: metrics.state == ServerState::Shutdown,
            voters: metrics.membership_config.membership().voter_ids().collect(),
            leader: metrics.current_leader,
        }
    }

    fn read_ledger<T>(&self, read: impl FnOnce(&LedgerState) -> T) -> T {
        self.view.read(|image| read(&image.ledger))
    }
}
