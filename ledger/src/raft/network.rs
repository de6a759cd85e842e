//! Raft traffic between nodes: openraft's [`RaftNetworkV2`] over the internal gRPC `Raft`
//! service. Every message names its shard, and all shards share one HTTP/2 channel per peer
//! node ([`PeerChannels`]). Payloads are openraft's own message types, bincode-encoded.
//! Every RPC has a hard deadline: a partitioned link must fail fast, not hang a replication
//! stream.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use flashledger_proto::v1::RaftRequest;
use flashledger_proto::v1::raft_client::RaftClient;
use openraft::BasicNode;
use openraft::RaftNetworkFactory;
use openraft::RaftNetworkV2;
use openraft::errors::NetworkError;
use openraft::errors::RPCError;
use openraft::errors::ReplicationClosed;
use openraft::errors::StreamingError;
use openraft::errors::Unreachable;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;
use serde::Deserialize;
use serde::Serialize;
use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::metrics::instruments::PeerRpcLabels;
use crate::metrics::instruments::RaftRpcDurations;
use crate::metrics::instruments::RaftRpcKind;
use crate::metrics::instruments::raft_rpc_durations;
use crate::types::NodeId;
use crate::types::ShardId;
use crate::types::SnapshotMeta;
use crate::types::TypeConfig;
use crate::types::Vote;

/// The largest Raft message (appends of many batched entries; a snapshot travels in chunks of
/// `raft.snapshot_chunk_bytes`).
pub const RAFT_MESSAGE_BYTES_MAX: usize = 512 * 1024 * 1024;

/// One piece of a snapshot on its way to a lagging replica (an `InstallSnapshot` message). The
/// receiver puts the pieces together in order and installs the snapshot with the last one;
/// it answers `RemoteResult<Option<SnapshotResponse>>`: `None` until then.
#[derive(Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub vote: Vote,
    pub meta: SnapshotMeta,
    /// Where this piece starts in the snapshot's data.
    pub offset: u64,
    /// The size of the whole snapshot's data.
    pub total: u64,
    pub data: Vec<u8>,
}

/// A follower's shipper asking the leader to propose `CommandBody::Shipped` (the internal
/// `ProposeShipped` RPC); answered with `RemoteResult<u64>`, the entry's log index.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct ShippedMark {
    pub below_seq: u64,
    pub shipper: NodeId,
}

/// What the receiving node answers when the shard's Raft node has stopped or is unknown.
pub type RemoteResult<T> = Result<T, String>;

/// One lazily-connected gRPC channel per peer node, shared by every shard's replication.
#[derive(Clone)]
pub struct PeerChannels {
    /// Peers' addresses: the config's, then the shard map's (nodes added later).
    addresses: Arc<std::sync::RwLock<BTreeMap<NodeId, String>>>,
    channels: Arc<Mutex<BTreeMap<NodeId, Channel>>>,
    /// `raft.rpc_timeout_ms`: the connect timeout, and the deadline of an append that carries
    /// entries (see `ShardPeer::append_entries`) and of each snapshot chunk.
    rpc_timeout: Duration,
    /// `raft.snapshot_chunk_bytes`.
    snapshot_chunk_bytes: usize,
    /// How long each RPC to each peer took, for /metrics.
    rpc_durations: RaftRpcDurations,
    /// Mutual TLS to peers (this node's certificate, the cluster's CA); `None` when the
    /// cluster runs insecure.
    #[cfg(not(madsim))]
    tls: Option<tonic::transport::ClientTlsConfig>,
}

impl PeerChannels {
    pub fn new(addresses: BTreeMap<NodeId, String>, rpc_timeout: Duration, snapshot_chunk_bytes: usize) -> Self {
        PeerChannels {
            addresses: Arc::new(std::sync::RwLock::new(addresses)),
            channels: Arc::default(),
            rpc_timeout,
            snapshot_chunk_bytes: snapshot_chunk_bytes.max(1),
            rpc_durations: raft_rpc_durations(),
            #[cfg(not(madsim))]
            tls: None,
        }
    }

    /// Reach peers over mutual TLS with `tls`.
    #[cfg(not(madsim))]
    pub fn with_tls(mut self, tls: Option<tonic::transport::ClientTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// The latency histograms of the RPCs sent to peers (shared with every link).
    pub fn rpc_durations(&self) -> &RaftRpcDurations {
        &self.rpc_durations
    }

    /// Records `node`'s address as the shard map has it (a node added after bootstrap, or one
    /// that moved); a changed address drops the channel to the old one.
    pub fn learn_address(&self, node: NodeId, addr: &str) {
        let mut addresses = self.addresses.write().unwrap_or_else(|p| p.into_inner());
        if addresses.get(&node).map(String::as_str) != Some(addr) {
            addresses.insert(node, addr.to_string());
            self.channels.lock().unwrap_or_else(|p| p.into_inner()).remove(&node);
        }
    }

    /// `node`'s address, if known.
    pub fn address_of(&self, node: NodeId) -> Option<String> {
        self.addresses
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .cloned()
    }

    /// The shared channel to `node`, created on first use.
    pub fn channel(&self, node: NodeId) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(&node) {
            return Ok(channel.clone());
        }
        let addr = self
            .address_of(node)
            .ok_or_else(|| format!("node {node} is not in the cluster config nor the shard map"))?;
        #[cfg(not(madsim))]
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        #[cfg(madsim)]
        let scheme = "http";
        let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("node {node} address {addr}: {e}"))?
            .connect_timeout(self.rpc_timeout);
        #[cfg(not(madsim))]
        let endpoint = match &self.tls {
            Some(tls) => endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("node {node} address {addr}: TLS: {e}"))?,
            None => endpoint,
        };
        let channel = endpoint.connect_lazy();
        channels.insert(node, channel.clone());
        Ok(channel)
    }
}

/// Builds one [`ShardPeer`] per (shard, target) for openraft.
#[derive(Clone)]
pub struct ShardNetworkFactory {
    pub shard_id: ShardId,
    pub peers: PeerChannels,
}

impl RaftNetworkFactory<TypeConfig> for ShardNetworkFactory {
    type Network = ShardPeer;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Self::Network {
        ShardPeer {
            shard_id: self.shard_id,
            target,
            peers: self.peers.clone(),
        }
    }
}

/// The replication link from this node to `target` for one shard.
pub struct ShardPeer {
    shard_id: ShardId,
    target: NodeId,
    peers: PeerChannels,
}

#[derive(Debug)]
enum CallError {
    /// The peer could not be reached or did not answer in time: back off.
    Unreachable(String),
    /// The peer answered something we cannot use.
    Network(String),
}

impl CallError {
    fn into_rpc(self) -> RPCError<TypeConfig> {
        match self {
            CallError::Unreachable(message) => RPCError::Unreachable(Unreachable::from_string(message)),
            CallError::Network(message) => RPCError::Network(NetworkError::from_string(message)),
        }
    }
}

#[derive(Clone, Copy)]
enum RaftRpc {
    AppendEntries,
    Vote,
    PreVote,
    InstallSnapshot,
    TransferLeader,
}

impl RaftRpc {
    fn kind(self) -> RaftRpcKind {
        match self {
            RaftRpc::AppendEntries => RaftRpcKind::append,
            RaftRpc::Vote => RaftRpcKind::vote,
            RaftRpc::PreVote => RaftRpcKind::pre_vote,
            RaftRpc::InstallSnapshot => RaftRpcKind::snapshot,
            RaftRpc::TransferLeader => RaftRpcKind::transfer_leader,
        }
    }
}

impl ShardPeer {
    async fn call<Req: Serialize, Resp: for<'de> Deserialize<'de>>(
        &self,
        rpc: RaftRpc,
        request: &Req,
        deadline: Duration,
    ) -> Result<Resp, CallError> {
        let payload = bincode::serialize(request).map_err(|e| CallError::Network(format!("encode: {e}")))?;
        let channel = self.peers.channel(self.target).map_err(CallError::Unreachable)?;
        let mut client = RaftClient::new(channel)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        let request = RaftRequest {
            shard_id: self.shard_id,
            payload: payload.into(),
        };
        let call = async {
            match rpc {
                RaftRpc::AppendEntries => client.append_entries(request).await,
                RaftRpc::Vote => client.vote(request).await,
                RaftRpc::PreVote => client.pre_vote(request).await,
                RaftRpc::InstallSnapshot => client.install_snapshot(request).await,
                RaftRpc::TransferLeader => client.transfer_leader(request).await,
            }
        };
        let started = tokio::time::Instant::now();
        let reply = tokio::time::timeout(deadline, call).await;
        self.peers
            .rpc_durations
            .get_or_create(&PeerRpcLabels {
                peer: self.target,
                rpc: rpc.kind(),
            })
            .observe(started.elapsed().as_secs_f64());
        let reply = match reply {
            Err(_) => {
                return Err(CallError::Unreachable(format!(
                    "no answer from node {} in {deadline:?}",
                    self.target
                )));
            }
            Ok(Err(status)) => return Err(CallError::Unreachable(format!("node {}: {status}", self.target))),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let answer: RemoteResult<Resp> =
            bincode::deserialize(&reply.payload).map_err(|e| CallError::Network(format!("decode: {e}")))?;
        answer
            .map_err(|remote| CallError::Unreachable(format!("node {} shard {}: {remote}", self.target, self.shard_id)))
    }
}

impl ShardPeer {
    /// A vote or pre-vote request (`rpc`), under openraft's deadline for it.
    async fn ask_for_vote(
        &self,
        rpc: RaftRpc,
        request: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(rpc, &request, option.hard_ttl())
            .await
            .map_err(CallError::into_rpc)
    }
}

impl RaftNetworkV2<TypeConfig> for ShardPeer {
    type SnapshotData = std::io::Cursor<Vec<u8>>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // openraft gives a replicated append the heartbeat interval (100 ms) as its deadline,
        // and the answer waits for the follower's fdatasync. While snapshots were being built
        // the leaders logged "no answer in 100ms" for such appends, and each one tears the
        // replication stream down (the follower was slow, not gone). An append carrying entries
        // gets `raft.rpc_timeout_ms`; heartbeats (no entries) keep the short deadline, so a dead
        // peer is still noticed fast.
        let deadline = if rpc.entries.is_empty() {
            option.hard_ttl()
        } else {
            option.hard_ttl().max(self.peers.rpc_timeout)
        };
        self.call(RaftRpc::AppendEntries, &rpc, deadline)
            .await
            .map_err(CallError::into_rpc)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.ask_for_vote(RaftRpc::Vote, rpc, option).await
    }

    /// openraft's default refuses to hand leadership over ("not implemented"): the target is
    /// asked over `Raft.TransferLeader` (`ledger shard transfer-leader`, a replica's removal).
    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(
            RaftRpc::TransferLeader,
            &rpc,
            option.hard_ttl().max(self.peers.rpc_timeout),
        )
        .await
        .map_err(CallError::into_rpc)
    }

    /// openraft's default grants every pre-vote without asking, which made pre-vote a no-op:
    /// the peer is asked, and a peer that cannot be reached is an error (not a grant), so an
    /// isolated node never gathers a quorum of pre-votes and never raises its term.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.ask_for_vote(RaftRpc::PreVote, rpc, option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: openraft::alias::SnapshotOf<TypeConfig, Self::SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let data = snapshot.snapshot.into_inner();
        let meta = snapshot.meta;
        let deadline = option.hard_ttl().max(self.peers.rpc_timeout);
        let chunk_bytes = self.peers.snapshot_chunk_bytes;
        let peer = &*self;
        // In order, one chunk in flight; the last one's answer is the install's.
        let send = async move {
            let mut offset = 0;
            loop {
                let end = data.len().min(offset + chunk_bytes);
                let chunk = SnapshotChunk {
                    vote,
                    meta: meta.clone(),
                    offset: offset as u64,
                    total: data.len() as u64,
                    data: data[offset..end].to_vec(),
                };
                let answer: Option<SnapshotResponse<TypeConfig>> =
                    peer.call(RaftRpc::InstallSnapshot, &chunk, deadline).await?;
                offset = end;
                if offset == data.len() {
                    return answer.ok_or_else(|| {
                        CallError::Network("the snapshot's last chunk was not answered with an install".into())
                    });
                }
            }
        };
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = send => result.map_err(|error| match error {
                CallError::Unreachable(message) => StreamingError::Unreachable(Unreachable::from_string(message)),
                CallError::Network(message) => StreamingError::Network(NetworkError::from_string(message)),
            }),
        }
    }
}
