//! The read side of a node: one SKU's stock, linearizable (under the leader's lease) or from
//! a replica that lags by a bounded number of entries, and every hosted shard's status.

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::Instant as _;
use openraft::LinearizerOption;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;

use crate::node::Node;
use crate::node::NodeError;
use crate::node::ShardReplica;
use crate::node::now_ms;
use crate::state_machine::state::StockCounts;
use crate::types::NodeId;
use crate::types::ShardId;

/// How a read wants its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Linearizable, served by the leader under its lease.
    Linearizable,
    /// From this replica's applied state if it lags the log it knows by at most `max_lag_entries`.
    Stale { max_lag_entries: u64 },
}

/// How much of each shard's applied state [`Node::status_at`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusDepth {
    /// Everything: the state digest, and the invariant checked on every SKU (O(SKUs) under the
    /// shard's state lock, which applying waits for). For `ledger status`, run by hand.
    Full,
    /// O(1) per shard, for /metrics and /readyz, which are polled every few seconds: no digest
    /// (0), and `invariant_ok` is whether the replica halted. That is the same answer: every
    /// applied entry is checked, and a replica that finds the invariant broken halts.
    Cheap,
}

/// A shard's state as `Status` reports it.
#[derive(Debug, Clone)]
pub struct ShardStatus {
    pub shard_id: ShardId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub role: String,
    pub replicas: Vec<NodeId>,
    pub last_log_index: u64,
    /// The last index this replica knows to be committed (it applies up to it).
    pub committed_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub sku_count: u64,
    pub state_digest: u64,
    pub invariant_ok: bool,
    /// Confirmed orders not yet acknowledged by every Postgres shard (per the replicated mark).
    pub shipping_lag_events: u64,
    /// Age of the oldest of them by this node's clock, in seconds (0 when none waits).
    pub shipping_lag_seconds: f64,
    /// The node whose shipper last advanced the mark (0 = none yet).
    pub shipped_by: NodeId,
    /// Voters in the shard's membership as this replica knows it.
    pub voters: u64,
    /// As leader: how long ago a quorum last acknowledged it (`None`: never, or not leader).
    pub millis_since_quorum_ack: Option<u64>,
    /// As a follower: since this replica last accepted an append from a leader (`None`: never
    /// since start). With pre-vote a follower cut off from the rest keeps naming its old leader.
    pub millis_since_leader_contact: Option<u64>,
    /// As leader: each other replica's matched log index (0 when nothing matched yet); empty
    /// on a follower.
    pub matched_index: BTreeMap<NodeId, u64>,
}

impl Node {
    /// Reads one SKU's counts and the applied index they reflect.
    #[tracing::instrument(level = "debug", skip_all, fields(node = self.id, ?consistency))]
    pub async fn get_stock(&self, sku: &[u8], consistency: ReadConsistency) -> Result<(StockCounts, u64), NodeError> {
        let shard = self.shard_for_sku(sku)?;
        let shard_id = shard.config.id;
        match consistency {
            #[cfg(madsim)]
            ReadConsistency::Linearizable
                if crate::simulation::planted(crate::simulation::PlantedBug::StaleLeaderRead)
                    && shard.raft.is_leader() => {}
            ReadConsistency::Linearizable => self.ensure_linearizable(&shard).await?,
            ReadConsistency::Stale { max_lag_entries } => {
                let last_log_index = shard.raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
                let lag = last_log_index.saturating_sub(shard.view.applied_index());
                if lag > max_lag_entries {
                    return Err(NodeError::TooStale {
                        shard_id,
                        lag,
                        max_lag: max_lag_entries,
                    });
                }
            }
        }
        shard.view.read(|image| {
            // A split moved the SKU to another shard: its counts here are gone, not zero.
            if !image.bounds.contains(sku) {
                return Err(NodeError::StaleEpoch {
                    shard_id,
                    current: image.bounds.epoch,
                    requested: 0,
                });
            }
            match image.ledger.stock(sku) {
                Some(counts) => Ok((counts, image.meta.applied.map(|id| id.index).unwrap_or(0))),
                None => Err(NodeError::UnknownSku {
                    sku: String::from_utf8_lossy(sku).into_owned(),
                }),
            }
        })
    }

    /// Returns once this node is `shard`'s leader and its applied state reflects every entry
    /// committed before the call: served under the leader lease when a quorum acknowledged
    /// recently (no consensus round); otherwise the leader heartbeats and waits for a fresh
    /// quorum (read index). A follower answers `NotLeader` with the leader it knows.
    pub(super) async fn ensure_linearizable(&self, shard: &ShardReplica) -> Result<(), NodeError> {
        let shard_id = shard.config.id;
        let timeout_ms = self.config.server.request_timeout_ms;
        let option = LinearizerOption::new(None, true).with_wait_timeout(Duration::from_millis(timeout_ms));
        let ensure = shard.raft.ensure_linearizable(option);
        match tokio::time::timeout(Duration::from_millis(timeout_ms), ensure).await {
            Err(_) => Err(NodeError::Timeout { shard_id, timeout_ms }),
            Ok(Err(error)) => Err(self.raft_error(shard_id, error)),
            Ok(Ok(_read_log_id)) => Ok(()),
        }
    }

    /// Per-shard Raft and ledger state, for `Status` and the operator CLI.
    pub fn status(&self) -> Vec<ShardStatus> {
        self.status_at(StatusDepth::Full)
    }

    /// Per-shard state, reading as much of each shard's state as `depth` says.
    pub fn status_at(&self, depth: StatusDepth) -> Vec<ShardStatus> {
        self.shards()
            .iter()
            .map(|shard| {
                let metrics = shard.raft.metrics().borrow_watched().clone();
                let (sku_count, state_digest, invariant_ok, applied_index) = shard.view.read(|image| {
                    let (digest, invariant_ok) = match depth {
                        StatusDepth::Full => (image.ledger.digest(), image.ledger.check_all().is_ok()),
                        StatusDepth::Cheap => (0, true),
                    };
                    (
                        image.ledger.skus.len() as u64,
                        digest,
                        invariant_ok,
                        image.meta.applied.map(|id| id.index).unwrap_or(0),
                    )
                });
                let (shipping_lag_events, oldest_ms, shipped_by) = shard.view.read(|image| {
                    let ledger = &image.ledger;
                    (
                        ledger.next_event_seq.saturating_sub(ledger.shipped_below_seq),
                        ledger.oldest_unshipped().map(|event| event.confirmed_at_ms),
                        ledger.shipped_by,
                    )
                });
                let shipping_lag_seconds = oldest_ms.map_or(0.0, |at| now_ms().saturating_sub(at) as f64 / 1000.0);
                ShardStatus {
                    shard_id: shard.config.id,
                    leader: metrics.current_leader,
                    term: metrics.current_term,
                    role: role_name(metrics.state).to_string(),
                    replicas: shard.config.replicas.clone(),
                    last_log_index: metrics.last_log_index.unwrap_or(0),
                    committed_index: metrics.local_committed.map(|id| id.index).unwrap_or(0),
                    applied_index,
                    snapshot_index: metrics.snapshot.map(|id| id.index).unwrap_or(0),
                    sku_count,
                    state_digest,
                    invariant_ok: invariant_ok && shard.view.halted().is_none(),
                    shipping_lag_events,
                    shipping_lag_seconds,
                    shipped_by,
                    voters: metrics.membership_config.membership().voter_ids().count() as u64,
                    millis_since_quorum_ack: metrics
                        .last_quorum_acked
                        .map(|at| u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX)),
                    millis_since_leader_contact: shard
                        .leader_contact
                        .elapsed()
                        .map(|ago| u64::try_from(ago.as_millis()).unwrap_or(u64::MAX)),
                    matched_index: metrics
                        .replication
                        .iter()
                        .flatten()
                        .filter(|(peer, _)| **peer != self.id)
                        .map(|(peer, matched)| (*peer, matched.map(|id| id.index).unwrap_or(0)))
                        .collect(),
                }
            })
            .collect()
    }
}

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}
