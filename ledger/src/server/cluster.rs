//! The `Cluster` gRPC service: the shard map clients route by, and per-shard status for
//! operators.

use std::pin::Pin;
use std::sync::Arc;

use flashledger_proto::v1 as pb;
use flashledger_proto::v1::cluster_server::Cluster;
use futures::Stream;
use futures::StreamExt;
use openraft::async_runtime::WatchReceiver;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::admission::Priority;
use crate::meta::map::META_SHARD;
use crate::meta::map::NodeState;
use crate::meta::map::ReplicaChange;
use crate::meta::map::Step;
use crate::node::Node;
use crate::node::reshape::ReshapeRequest;
use crate::server::status;

pub struct ClusterService {
    node: Arc<Node>,
    /// One backup at a time per node: each holds a shard's encoded state in memory.
    backups: Arc<tokio::sync::Semaphore>,
}

impl ClusterService {
    pub fn new(node: Arc<Node>) -> Self {
        ClusterService {
            node,
            backups: Arc::new(tokio::sync::Semaphore::new(BACKUPS_AT_ONCE_MAX)),
        }
    }

    /// The shard file's chunk size: the snapshot chunk size, within the message bound.
    fn backup_chunk_bytes(&self) -> usize {
        let config = &self.node.config;
        (config.raft.snapshot_chunk_bytes as usize)
            .min(config.server.message_bytes_max / 2)
            .max(1)
    }
}

/// Backups a node takes at once.
const BACKUPS_AT_ONCE_MAX: usize = 1;

pub type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

#[tonic::async_trait]
impl Cluster for ClusterService {
    type BackupStream = BackupStream;

    async fn backup(&self, request: Request<pb::BackupRequest>) -> Result<Response<BackupStream>, Status> {
        let shard_id = request.into_inner().shard_id;
        let slot = self
            .backups
            .clone()
            .try_acquire_owned()
            .map_err(|_| Status::resource_exhausted("this node is taking another backup; retry once it is done"))?;
        let backup = self
            .node
            .backup_shard(shard_id)
            .await
            .map_err(status::from_node_error)?;
        let header = pb::BackupHeader {
            shard_id,
            log_index: backup.log_index,
            log_term: backup.log_term,
            state_digest: backup.state_digest,
            file_bytes: backup.file.len() as u64,
            file_sha256: backup.sha256.to_vec().into(),
        };
        let file = prost::bytes::Bytes::from(backup.file);
        let chunk_bytes = self.backup_chunk_bytes();
        let mut header = Some(header);
        let chunks: Vec<pb::BackupChunk> = (0..file.len())
            .step_by(chunk_bytes)
            .map(|start| pb::BackupChunk {
                header: header.take(),
                data: file.slice(start..(start + chunk_bytes).min(file.len())),
            })
            .collect();
        // The slot is held until the stream is sent or dropped.
        let stream = futures::stream::iter(chunks).map(move |chunk| {
            let _held = &slot;
            Ok(chunk)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn shard_map(&self, _request: Request<pb::ShardMapRequest>) -> Result<Response<pb::ShardMapReply>, Status> {
        Ok(Response::new(shard_map_reply(&self.node)))
    }

    async fn reshape(&self, request: Request<pb::ReshapeRequest>) -> Result<Response<pb::ReshapeReply>, Status> {
        let request = reshape_request(request.into_inner())?;
        let (version, queued) = self.node.reshape(request).await.map_err(status::from_node_error)?;
        Ok(Response::new(pb::ReshapeReply {
            version,
            queued: queued.iter().map(step_info).collect(),
        }))
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

/// The shard map as this node knows it (the meta group's, once seeded; before that the
/// config's), with the leaders this node sees.
pub fn shard_map_reply(node: &Node) -> pb::ShardMapReply {
    let map = node.shard_map();
    let leader_of = |shard_id: u64| {
        node.replica(shard_id)
            .and_then(|replica| replica.raft.metrics().borrow_watched().current_leader)
            .unwrap_or(0)
    };
    if !map.is_seeded() {
        let config = &node.config;
        return pb::ShardMapReply {
            nodes: config
                .nodes
                .iter()
                .map(|n| pb::NodeInfo {
                    id: n.id,
                    addr: n.addr.clone(),
                })
                .collect(),
            shards: config
                .shards
                .iter()
                .map(|shard| pb::ShardInfo {
                    shard_id: shard.id,
                    start: shard.start.clone().into_bytes().into(),
                    end: shard.end.clone().into_bytes().into(),
                    epoch: 1,
                    replicas: shard.replicas.clone(),
                    leader: leader_of(shard.id),
                    conf_ver: 1,
                    learners: Vec::new(),
                })
                .collect(),
            ..Default::default()
        };
    }
    let mut shards: Vec<pb::ShardInfo> = map
        .shards
        .iter()
        .map(|(id, shard)| pb::ShardInfo {
            shard_id: *id,
            start: shard.start.clone().into(),
            end: shard.end.clone().into(),
            epoch: shard.epoch,
            replicas: shard.replicas.clone(),
            leader: leader_of(*id),
            conf_ver: shard.conf_ver,
            learners: shard.learners.clone(),
        })
        .collect();
    shards.sort_by(|a, b| a.start.cmp(&b.start));
    pb::ShardMapReply {
        nodes: map
            .nodes
            .iter()
            .map(|(id, entry)| pb::NodeInfo {
                id: *id,
                addr: entry.addr.clone(),
            })
            .collect(),
        shards,
        version: map.version,
        meta: Some(pb::ShardInfo {
            shard_id: META_SHARD,
            epoch: 1,
            replicas: map.meta_replicas.clone(),
            leader: leader_of(META_SHARD),
            conf_ver: map.meta_conf_ver,
            learners: map.meta_learners.clone(),
            ..Default::default()
        }),
        steps: map.steps.iter().map(step_info).collect(),
        draining: map
            .nodes
            .iter()
            .filter(|(_, entry)| entry.state == NodeState::Draining)
            .map(|(id, _)| *id)
            .collect(),
    }
}

fn step_info(step: &Step) -> pb::ReshapeStep {
    let mut info = pb::ReshapeStep {
        id: step.id,
        shard_id: step.shard_id,
        ..Default::default()
    };
    match &step.change {
        ReplicaChange::Add(node) => (info.change, info.node_id) = ("add".into(), *node),
        ReplicaChange::Remove(node) => (info.change, info.node_id) = ("remove".into(), *node),
        ReplicaChange::Split { at, new_shard } => {
            info.change = "split".into();
            info.split_at = at.clone().into();
            info.new_shard_id = *new_shard;
        }
        ReplicaChange::Merge { right } => {
            info.change = "merge".into();
            info.merge_right_shard_id = *right;
        }
    }
    info
}

/// Decodes a `Reshape` request; a missing change or a zero id is INVALID_ARGUMENT.
fn reshape_request(request: pb::ReshapeRequest) -> Result<ReshapeRequest, Status> {
    use pb::reshape_request::Change;
    let node = |field: &str, id: u64| {
        if id == 0 {
            Err(Status::invalid_argument(format!("{field}: node id 0 is not a node")))
        } else {
            Ok(id)
        }
    };
    let change = request
        .change
        .ok_or_else(|| Status::invalid_argument("change: missing (add_node, drain_node, move_replica, ...)"))?;
    Ok(match change {
        Change::AddNode(add) => {
            let addr = std::str::from_utf8(&add.addr)
                .ok()
                .filter(|addr| !addr.is_empty() && addr.len() <= ADDRESS_BYTES_MAX && addr.rsplit_once(':').is_some())
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "add_node.addr: host:port (UTF-8, at most {ADDRESS_BYTES_MAX} bytes)"
                    ))
                })?;
            ReshapeRequest::AddNode {
                node_id: node("add_node.node_id", add.node_id)?,
                addr: addr.to_string(),
            }
        }
        Change::RemoveNode(id) => ReshapeRequest::RemoveNode {
            node_id: node("remove_node", id)?,
        },
        Change::DrainNode(id) => ReshapeRequest::DrainNode {
            node_id: node("drain_node", id)?,
        },
        Change::AddReplica(change) => ReshapeRequest::AddReplica {
            shard_id: change.shard_id,
            node_id: node("add_replica.node_id", change.node_id)?,
        },
        Change::RemoveReplica(change) => ReshapeRequest::RemoveReplica {
            shard_id: change.shard_id,
            node_id: node("remove_replica.node_id", change.node_id)?,
        },
        Change::MoveReplica(change) => {
            if change.from_node == change.to_node {
                return Err(Status::invalid_argument(
                    "move_replica: from_node and to_node are the same",
                ));
            }
            ReshapeRequest::MoveReplica {
                shard_id: change.shard_id,
                from: node("move_replica.from_node", change.from_node)?,
                to: node("move_replica.to_node", change.to_node)?,
            }
        }
        Change::TransferLeader(change) => ReshapeRequest::TransferLeader {
            shard_id: change.shard_id,
            to: node("transfer_leader.to_node", change.to_node)?,
        },
        Change::CancelStep(step_id) => ReshapeRequest::CancelStep { step_id },
        Change::SplitShard(split) => {
            crate::state_machine::limits::check_sku(&split.at)
                .map_err(|invalid| Status::invalid_argument(format!("split_shard.at: {invalid}")))?;
            ReshapeRequest::SplitShard {
                shard_id: split.shard_id,
                at: split.at.to_vec(),
            }
        }
        Change::MergeShards(merge) => ReshapeRequest::MergeShards {
            left: merge.left_shard_id,
            right: merge.right_shard_id,
        },
    })
}

/// The longest node address a map takes (a DNS name and a port).
const ADDRESS_BYTES_MAX: usize = 300;
