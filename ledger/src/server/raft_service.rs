//! The internal `Raft` gRPC service: hands each message to the Raft node of the shard it
//! names. Answers are `Result<openraft reply, String>` bincode-encoded (see `raft::network`).

use std::io::Cursor;
use std::sync::Arc;

use flashledger_proto::v1 as pb;
use flashledger_proto::v1::raft_server::Raft as RaftRpc;
use serde::Serialize;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::node::Node;
use crate::raft::network::RemoteResult;
use crate::raft::network::ShippedMark;
use crate::raft::network::SnapshotTransfer;
use crate::raft::types::Raft;

pub struct RaftService {
    node: Arc<Node>,
}

impl RaftService {
    pub fn new(node: Arc<Node>) -> Self {
        RaftService { node }
    }

    fn raft_of(&self, shard_id: u64) -> Result<&Raft, Status> {
        self.node
            .shards
            .get(&shard_id)
            .map(|shard| &shard.raft)
            .ok_or_else(|| Status::not_found(format!("this node does not host shard {shard_id}")))
    }
}

fn decode<T: for<'de> serde::Deserialize<'de>>(payload: &[u8]) -> Result<T, Status> {
    bincode::deserialize(payload).map_err(|e| Status::invalid_argument(format!("invalid payload: {e}")))
}

fn reply<T: Serialize>(answer: RemoteResult<T>) -> Result<Response<pb::RaftReply>, Status> {
    let payload = bincode::serialize(&answer).map_err(|e| Status::internal(format!("encode reply: {e}")))?;
    Ok(Response::new(pb::RaftReply {
        payload: payload.into(),
    }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let request = request.into_inner();
        let raft = self.raft_of(request.shard_id)?;
        let rpc = decode(&request.payload)?;
        reply(raft.append_entries(rpc).await.map_err(|e| e.to_string()))
    }

    async fn vote(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let request = request.into_inner();
        let raft = self.raft_of(request.shard_id)?;
        let rpc = decode(&request.payload)?;
        reply(raft.vote(rpc).await.map_err(|e| e.to_string()))
    }

    async fn install_snapshot(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let request = request.into_inner();
        let raft = self.raft_of(request.shard_id)?;
        let transfer: SnapshotTransfer = decode(&request.payload)?;
        let snapshot = openraft::Snapshot {
            meta: transfer.meta,
            snapshot: Cursor::new(transfer.data),
        };
        reply(
            raft.install_full_snapshot(transfer.vote, snapshot)
                .await
                .map_err(|e| e.to_string()),
        )
    }

    async fn propose_shipped(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let request = request.into_inner();
        let mark: ShippedMark = decode(&request.payload)?;
        let proposed = self.node.propose_shipped_locally(request.shard_id, mark).await;
        reply(proposed.map_err(|e| e.to_string()))
    }
}
