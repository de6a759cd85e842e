//! The internal `Raft` gRPC service: hands each message to the Raft node of the shard it
//! names. Answers are `Result<openraft reply, String>` bincode-encoded (see `raft::network`).
//!
//! Before a message reaches openraft it must name, as its sender (the leader of an append or
//! snapshot, the candidate of a vote, the shipper of a shipped mark), a voter of the shard, and
//! that node must be the caller the authentication layer established from its certificate.
//! A message that fails either check, or does not decode exactly (no trailing bytes), is
//! refused before openraft sees it, so it cannot move a term, a vote or a log.

use std::io::Cursor;
use std::sync::Arc;

use flashledger_proto::v1 as pb;
use flashledger_proto::v1::raft_server::Raft as RaftRpc;
use openraft::async_runtime::WatchReceiver;
use serde::Serialize;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::node::Node;
use crate::node::reshape::Reconfigure;
use crate::raft::Raft;
use crate::raft::network::RemoteResult;
use crate::raft::network::ShippedMark;
use crate::raft::network::SnapshotChunk;
use crate::security::Caller;
use crate::types::NodeId;

pub struct RaftService {
    node: Arc<Node>,
    /// Per shard, the snapshot being received (a new one with offset 0 replaces it).
    receiving: std::sync::Mutex<std::collections::BTreeMap<u64, Receiving>>,
}

/// A snapshot arriving in chunks.
struct Receiving {
    snapshot_id: String,
    total: u64,
    data: Vec<u8>,
}

/// The most a node reserves up front for a snapshot being received; past it the buffer grows
/// as chunks arrive (the size comes from the sender).
const RECEIVE_RESERVE_BYTES_MAX: u64 = 1024 * 1024 * 1024;

impl RaftService {
    pub fn new(node: Arc<Node>) -> Self {
        RaftService {
            node,
            receiving: Default::default(),
        }
    }

    /// Adds `chunk` to the snapshot being received for `shard_id`; the whole data once it is
    /// complete.
    fn receive(&self, shard_id: u64, chunk: &mut SnapshotChunk) -> Result<Option<Vec<u8>>, String> {
        let mut receiving = self.receiving.lock().unwrap_or_else(|p| p.into_inner());
        // A snapshot is named by the last log id it covers.
        let snapshot_id = &format!("{:?}", chunk.meta.last_log_id);
        if chunk.offset == 0 {
            receiving.insert(
                shard_id,
                Receiving {
                    snapshot_id: snapshot_id.clone(),
                    total: chunk.total,
                    data: Vec::with_capacity(chunk.total.min(RECEIVE_RESERVE_BYTES_MAX) as usize),
                },
            );
        }
        let Some(partial) = receiving.get_mut(&shard_id) else {
            return Err(format!(
                "snapshot {snapshot_id}: a chunk at offset {} with no start",
                chunk.offset
            ));
        };
        if partial.snapshot_id != *snapshot_id
            || partial.total != chunk.total
            || partial.data.len() as u64 != chunk.offset
        {
            let expected = (partial.snapshot_id.clone(), partial.data.len());
            receiving.remove(&shard_id);
            return Err(format!(
                "snapshot {snapshot_id}: chunk at offset {} does not follow snapshot {} at {}",
                chunk.offset, expected.0, expected.1
            ));
        }
        if partial.data.len() as u64 + chunk.data.len() as u64 > partial.total {
            receiving.remove(&shard_id);
            return Err(format!(
                "snapshot {snapshot_id}: chunks exceed the announced {} bytes",
                chunk.total
            ));
        }
        partial.data.append(&mut chunk.data);
        if partial.data.len() as u64 == partial.total {
            return Ok(receiving.remove(&shard_id).map(|done| done.data));
        }
        Ok(None)
    }

    fn raft_of(&self, shard_id: u64) -> Result<Raft, Status> {
        self.replica_of(shard_id).map(|replica| replica.raft.clone())
    }

    fn replica_of(&self, shard_id: u64) -> Result<Arc<crate::node::ShardReplica>, Status> {
        self.node
            .replica(shard_id)
            .ok_or_else(|| Status::not_found(format!("this node does not host shard {shard_id}")))
    }

    /// Refuses a caller that is not a node (the layer already let only nodes through; an
    /// insecure cluster's callers are unchecked).
    fn check_node(caller: Option<&Caller>) -> Result<(), Status> {
        match caller {
            None | Some(Caller::Unchecked) | Some(Caller::Node(_)) => Ok(()),
            Some(Caller::Client { name, .. }) => Err(Status::permission_denied(format!("{name} is not a node"))),
        }
    }

    /// Refuses a message for `shard_id` that says it comes from `sender` unless `sender` is a
    /// voter of the shard and the caller's certificate names that node.
    fn check_sender(&self, caller: Option<&Caller>, shard_id: u64, sender: NodeId) -> Result<(), Status> {
        match caller {
            // The layer let an insecure cluster's caller through unchecked (and the simulator
            // runs no layer): the message's own claim is all there is to check.
            None | Some(Caller::Unchecked) => {}
            Some(Caller::Node(id)) if *id == sender => {}
            Some(Caller::Node(id)) => {
                return Err(Status::permission_denied(format!(
                    "shard {shard_id}: node {id} sent a message as node {sender}"
                )));
            }
            Some(Caller::Client { name, .. }) => {
                return Err(Status::permission_denied(format!("{name} is not a node")));
            }
        }
        let shard = self.replica_of(shard_id)?;
        let membership = shard.raft.metrics().borrow_watched().membership_config.clone();
        let mut voters = membership.voter_ids().peekable();
        // Before the shard's membership is known, the config's replicas are its voters. A
        // replica that lags (restarted, cut off) may not have applied the change that made the
        // sender a voter yet: the shard map, which records the change once it is made, vouches
        // for it then (otherwise the new leader could never bring it up to date).
        let in_map = || {
            self.node
                .shard_map()
                .hosts_of(shard_id)
                .is_some_and(|(map_voters, _)| map_voters.contains(&sender))
        };
        let is_voter = if voters.peek().is_some() {
            voters.any(|id| id == sender) || in_map()
        } else {
            shard.config.replicas.contains(&sender) || in_map()
        };
        if !is_voter {
            return Err(Status::permission_denied(format!(
                "shard {shard_id}: node {sender} is not a voter of this shard"
            )));
        }
        Ok(())
    }
}

/// A vote request is answered for real (the receiver may change its term and vote) or as a
/// pre-vote (it only says whether it would grant; see `Raft.PreVote` in the .proto).
#[derive(Clone, Copy)]
enum Ballot {
    Vote,
    PreVote,
}

impl RaftService {
    async fn answer_vote(
        &self,
        request: Request<pb::RaftRequest>,
        ballot: Ballot,
    ) -> Result<Response<pb::RaftReply>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        let raft = self.raft_of(request.shard_id)?;
        let rpc: openraft::raft::VoteRequest<crate::types::TypeConfig> = decode(&request.payload)?;
        self.check_sender(caller.as_ref(), request.shard_id, voter_of(&rpc.vote))?;
        let answer = match ballot {
            Ballot::Vote => raft.vote(rpc).await,
            Ballot::PreVote => raft.pre_vote(rpc).await,
        };
        reply(answer.map_err(|e| e.to_string()))
    }
}

/// Decodes a message exactly: bincode's plain encoding (as `bincode::serialize` writes it),
/// no bytes left over, no allocation past the message's own size. Public for the fuzz target
/// that feeds it every Raft message type (`fuzz/fuzz_targets/wire_requests.rs`).
pub fn decode<T: for<'de> serde::Deserialize<'de>>(payload: &[u8]) -> Result<T, Status> {
    use bincode::Options;
    bincode::options()
        .with_fixint_encoding()
        .reject_trailing_bytes()
        .with_limit(payload.len() as u64)
        .deserialize(payload)
        .map_err(|e| Status::invalid_argument(format!("invalid payload: {e}")))
}

/// The node a vote names as its leader or candidate.
fn voter_of(vote: &crate::types::Vote) -> NodeId {
    use openraft::vote::RaftLeaderId;
    *vote.leader_id().node_id()
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
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        let replica = self.replica_of(request.shard_id)?;
        let rpc: openraft::raft::AppendEntriesRequest<crate::types::TypeConfig> = decode(&request.payload)?;
        self.check_sender(caller.as_ref(), request.shard_id, voter_of(&rpc.vote))?;
        let answer = replica.raft.append_entries(rpc).await;
        // Any answer but "your term is over" means this replica follows the sender now.
        if matches!(&answer, Ok(reply) if !matches!(reply, openraft::raft::AppendEntriesResponse::HigherVote(_))) {
            replica.leader_contact.heard();
        }
        reply(answer.map_err(|e| e.to_string()))
    }

    async fn vote(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        self.answer_vote(request, Ballot::Vote).await
    }

    async fn pre_vote(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        self.answer_vote(request, Ballot::PreVote).await
    }

    async fn install_snapshot(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        let raft = self.raft_of(request.shard_id)?;
        let mut chunk: SnapshotChunk = decode(&request.payload)?;
        self.check_sender(caller.as_ref(), request.shard_id, voter_of(&chunk.vote))?;
        let data = match self.receive(request.shard_id, &mut chunk) {
            Ok(Some(data)) => data,
            Ok(None) => {
                return reply::<Option<openraft::raft::SnapshotResponse<crate::types::TypeConfig>>>(Ok(None));
            }
            Err(error) => {
                return reply::<Option<openraft::raft::SnapshotResponse<crate::types::TypeConfig>>>(Err(error));
            }
        };
        let snapshot = openraft::Snapshot {
            meta: chunk.meta,
            snapshot: Cursor::new(data),
        };
        reply(
            raft.install_full_snapshot(chunk.vote, snapshot)
                .await
                .map(Some)
                .map_err(|e| e.to_string()),
        )
    }

    async fn propose_shipped(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        let mark: ShippedMark = decode(&request.payload)?;
        self.check_sender(caller.as_ref(), request.shard_id, mark.shipper)?;
        let proposed = self.node.propose_shipped_locally(request.shard_id, mark).await;
        reply(proposed.map_err(|e| e.to_string()))
    }

    async fn transfer_leader(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        let caller = request.extensions().get::<Caller>().cloned();
        let request = request.into_inner();
        let raft = self.raft_of(request.shard_id)?;
        let rpc: openraft::raft::TransferLeaderRequest<crate::types::TypeConfig> = decode(&request.payload)?;
        self.check_sender(caller.as_ref(), request.shard_id, voter_of(rpc.from_leader()))?;
        reply(raft.handle_transfer_leader(rpc).await.map_err(|e| e.to_string()))
    }

    async fn reconfigure(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        Self::check_node(request.extensions().get::<Caller>())?;
        let request = request.into_inner();
        let change: Reconfigure = decode(&request.payload)?;
        let answer = self.node.reconfigure_locally(request.shard_id, change).await;
        let payload = bincode::serialize(&answer).map_err(|e| Status::internal(format!("encode reply: {e}")))?;
        Ok(Response::new(pb::RaftReply {
            payload: payload.into(),
        }))
    }

    async fn meta_map(&self, request: Request<pb::RaftRequest>) -> Result<Response<pb::RaftReply>, Status> {
        Self::check_node(request.extensions().get::<Caller>())?;
        let map = self.node.shard_map();
        if !map.is_seeded() {
            return Err(Status::unavailable("this node knows no shard map yet"));
        }
        let payload = bincode::serialize(map.as_ref()).map_err(|e| Status::internal(format!("encode reply: {e}")))?;
        Ok(Response::new(pb::RaftReply {
            payload: payload.into(),
        }))
    }
}
