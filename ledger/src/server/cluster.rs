//! The `Cluster` gRPC service: the shard map clients route by, and per-shard status for
//! operators.

use std::sync::Arc;

use flashledger_proto::v1 as pb;
use flashledger_proto::v1::cluster_server::Cluster;
use openraft::async_runtime::WatchReceiver;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::admission::Priority;
use crate::node::Node;

pub struct ClusterService {
    node: Arc<Node>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> Self {
        ClusterService { node }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn shard_map(&self, _request: Request<pb::ShardMapRequest>) -> Result<Response<pb::ShardMapReply>, Status> {
        let config = &self.node.config;
        let nodes = config
            .nodes
            .iter()
            .map(|n| pb::NodeInfo {
                id: n.id,
                addr: n.addr.clone(),
            })
            .collect();
        let shards = config
            .shards
            .iter()
            .map(|shard| {
                let hosted = self.node.shards.get(&shard.id);
                pb::ShardInfo {
                    shard_id: shard.id,
                    start: shard.start.clone().into_bytes().into(),
                    end: shard.end.clone().into_bytes().into(),
                    epoch: hosted.map(|s| s.epoch).unwrap_or(1),
                    replicas: shard.replicas.clone(),
                    leader: hosted
                        .and_then(|s| s.raft.metrics().borrow_watched().current_leader)
                        .unwrap_or(0),
                }
            })
            .collect();
        Ok(Response::new(pb::ShardMapReply { nodes, shards }))
    }

    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        let shards = self
            .node
            .status()
            .into_iter()
            .map(|s| pb::ShardStatus {
                shard_id: s.shard_id,
                leader: s.leader.unwrap_or(0),
                term: s.term,
                role: s.role,
                replicas: s.replicas,
                last_log_index: s.last_log_index,
                applied_index: s.applied_index,
                snapshot_index: s.snapshot_index,
                sku_count: s.sku_count,
                state_digest: s.state_digest,
                invariant_ok: s.invariant_ok,
                shipping_lag_events: s.shipping_lag_events,
                shipping_lag_seconds: s.shipping_lag_seconds,
                shipped_by: s.shipped_by,
                inflight_ops: self.node.admission.shard_inflight(s.shard_id),
            })
            .collect();
        let admission = self.node.admission.stats();
        Ok(Response::new(pb::StatusReply {
            node_id: self.node.id,
            shards,
            admission: Some(pb::AdmissionStatus {
                inflight_ops: admission.inflight_ops,
                shed_premium: admission.shed_requests[Priority::Premium.index()],
                shed_standard: admission.shed_requests[Priority::Standard.index()],
                shed_background: admission.shed_requests[Priority::Background.index()],
                late_requests: admission.late_requests,
                rate_limited_ops: admission.rate_limited_ops,
                rate_limit_keys: admission.rate_limit_keys,
            }),
        }))
    }
}
