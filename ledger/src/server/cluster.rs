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
use crate::node::Node;
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
