//! What a node could not do, as one error enum the gRPC layer maps to status codes, and how the
//! errors openraft gives a node become it (a refusal names the leader to go to).

use openraft::errors::RaftError;

use crate::node::Node;
use crate::types::NodeId;
use crate::types::ShardId;
use crate::types::TypeConfig;

/// Why a node could not do what was asked. The gRPC layer maps each to one status code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    #[error("not the leader of shard {shard_id}{}", match leader_id {
        Some(leader) => format!(" (node {leader} is)"),
        None => " and no leader is known: an election is under way, or a majority of the shard's replicas is unreachable".to_string(),
    })]
    NotLeader {
        shard_id: ShardId,
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error("this node hosts no shard for sku {sku:?}")]
    SkuNotHosted { sku: String },
    #[error("this node does not host shard {shard_id}")]
    ShardNotHosted { shard_id: ShardId },
    #[error("batch spans shards {first} and {second}; send one batch per shard")]
    BatchSpansShards { first: ShardId, second: ShardId },
    #[error("shard {shard_id} is at epoch {current}, the request was routed at epoch {requested}")]
    StaleEpoch {
        shard_id: ShardId,
        current: u64,
        requested: u64,
    },
    /// The caller's deadline is nearer than the shard's commits take (or passed) when the write
    /// would be proposed: nothing was.
    #[error(
        "the request had {left_ms} ms left, shard {shard_id}'s commits recently took {needs_ms} ms; dropped before \
         proposing"
    )]
    DeadlineUnmet {
        shard_id: ShardId,
        left_ms: u64,
        needs_ms: u64,
    },
    #[error("shard {shard_id} did not answer within {timeout_ms} ms; the write may still be applied")]
    Timeout { shard_id: ShardId, timeout_ms: u64 },
    /// The write was proposed, then this node lost track of it (leadership changed, its entry
    /// was discarded locally or Raft stopped): another node may still commit it.
    #[error("shard {shard_id} lost track of the proposed write ({reason}); it may still be applied")]
    OutcomeUnknown { shard_id: ShardId, reason: String },
    #[error("replica of shard {shard_id} lags by {lag} entries, more than the {max_lag} allowed")]
    TooStale { shard_id: ShardId, lag: u64, max_lag: u64 },
    #[error("shard {shard_id} is unavailable: {reason}")]
    Unavailable { shard_id: ShardId, reason: String },
    #[error("unknown sku {sku:?}")]
    UnknownSku { sku: String },
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
    /// TLS material or credentials could not be used (at start).
    #[error("security: {0}")]
    Security(String),
    /// The caller may not ask for this (a Raft message naming another node, a shipped mark
    /// from a node that does not replicate the shard).
    #[error("{0}")]
    Refused(String),
    /// A change of the cluster's shape that does not fit the shard map (nothing changed).
    #[error("reshape refused: {0}")]
    Reshape(String),
}

impl Node {
    pub(super) fn not_leader(&self, shard_id: ShardId, leader_id: Option<NodeId>) -> NodeError {
        let leader_addr = leader_id.and_then(|id| self.address_of(id));
        NodeError::NotLeader {
            shard_id,
            leader_id,
            leader_addr,
        }
    }

    pub(super) fn raft_error<E>(&self, shard_id: ShardId, error: RaftError<TypeConfig, E>) -> NodeError
    where
        E: std::error::Error + openraft::TryAsRef<openraft::errors::ForwardToLeader<TypeConfig>>,
    {
        if let Some(forward) = error.forward_to_leader() {
            return self.not_leader(shard_id, forward.leader_id);
        }
        NodeError::Unavailable {
            shard_id,
            reason: error.to_string(),
        }
    }
}
