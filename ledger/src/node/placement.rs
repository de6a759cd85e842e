//! The placement scheduler's round on the meta leader (`hosting.rs` runs one every
//! `placement.interval_ms` while no reshaping step is queued): learn who leads each shard, ask
//! the pure scheduler (`meta/scheduler.rs`) for at most one change, and carry it out through
//! the operator's own paths, so it is checked and logged the same way:
//! - a leader transfer is [`ReshapeRequest::TransferLeader`] (the shard's leader is asked over
//!   `Raft.Reconfigure`, and the round waits until the new leader has taken over);
//! - a replica move is [`ReshapeRequest::MoveReplica`]: the same `Enqueue` of an add and a
//!   remove, which the following rounds of `hosting.rs` carry out like any queued step.
//!
//! - a hot range is split as [`ReshapeRequest::SplitShard`] (`crate::meta::hot_ranges` picks it
//!   from the operations this node's replicas applied since the last round, per shard and per
//!   SKU; a shard this node does not host is not measured), and the split's completion hands
//!   the new half's leadership to another node (`reshape.rs`). A hot range goes before any
//!   balancing: it is the load itself.
//!
//! Who leads: for a shard this node hosts, its own replica's view; for any other, the first of
//! the shard's voters (lowest id first) that answers `Reconfigure::ReportLeader` within one Raft
//! RPC deadline — itself if it leads, else the leader it knows of. A shard none of them answers
//! for is left out of the leader counts this round.

use std::collections::BTreeMap;
use std::sync::Arc;

use openraft::async_runtime::WatchReceiver;

use crate::meta::hot_ranges;
use crate::meta::hot_ranges::HotRangePolicy;
use crate::meta::hot_ranges::RangeLoad;
use crate::meta::map::META_SHARD;
use crate::meta::map::ShardMap;
use crate::meta::scheduler;
use crate::meta::scheduler::PlacementDecision;
use crate::node::Node;
use crate::node::reshape::ReshapeRequest;
use crate::types::NodeId;
use crate::types::ShardId;

/// One round: at most one change, logged at info whether it was carried out or not.
pub(super) async fn run_round(node: &Arc<Node>, map: &ShardMap) {
    if let Some(hot) = node.config.placement.hot_range_policy()
        && let Some((shard_id, at)) = hot_range(node, map, hot)
    {
        let at_text = String::from_utf8_lossy(&at).into_owned();
        tracing::info!(node = node.id, shard = shard_id, at = %at_text, "placement: split a hot range");
        if let Err(error) = node.reshape(ReshapeRequest::SplitShard { shard_id, at }).await {
            tracing::info!(node = node.id, shard = shard_id, at = %at_text, %error,
                "placement: hot range not split; the next round decides again");
        }
        return;
    }
    let policy = node.config.placement.policy();
    if !policy.balance_leaders && !policy.balance_replicas {
        return;
    }
    let leaders = shard_leaders(node, map).await;
    let Some(decision) = scheduler::decide(map, &leaders, policy) else {
        return;
    };
    tracing::info!(node = node.id, %decision, "placement");
    let request = match decision {
        PlacementDecision::TransferLeader { shard_id, to, .. } => ReshapeRequest::TransferLeader { shard_id, to },
        PlacementDecision::MoveReplica { shard_id, from, to } => ReshapeRequest::MoveReplica { shard_id, from, to },
    };
    if let Err(error) = node.reshape(request).await {
        tracing::info!(node = node.id, %decision, %error, "placement change not made; the next round decides again");
    }
}

/// The hot range to split, if any, from what this node's replicas applied since the last round.
fn hot_range(node: &Node, map: &ShardMap, policy: HotRangePolicy) -> Option<(ShardId, Vec<u8>)> {
    let loads: Vec<RangeLoad> = map
        .shards
        .keys()
        .filter_map(|shard_id| {
            // The first round on a replica starts its counting and measures nothing.
            let load = node.replica(*shard_id)?.view.take_load()?;
            let secs = load.since.elapsed().as_secs_f64().max(0.001);
            Some(RangeLoad {
                shard_id: *shard_id,
                ops_per_s: load.ops as f64 / secs,
                skus: load
                    .by_sku
                    .into_iter()
                    .map(|(sku, ops)| (sku, ops as f64 / secs))
                    .collect(),
            })
        })
        .collect();
    hot_ranges::split_point(map, &loads, policy)
}

/// The leader of every shard in `map` (0 included) that this node can learn this round.
async fn shard_leaders(node: &Arc<Node>, map: &ShardMap) -> BTreeMap<ShardId, NodeId> {
    let shard_ids = std::iter::once(META_SHARD).chain(map.shards.keys().copied());
    let lookups = shard_ids.map(|shard_id| async move { (shard_id, leader_of(node, map, shard_id).await) });
    futures::future::join_all(lookups)
        .await
        .into_iter()
        .filter_map(|(shard_id, leader)| leader.map(|leader| (shard_id, leader)))
        .collect()
}

pub(super) async fn leader_of(node: &Arc<Node>, map: &ShardMap, shard_id: ShardId) -> Option<NodeId> {
    if let Some(replica) = node.replica(shard_id) {
        return replica.raft.metrics().borrow_watched().current_leader;
    }
    let (voters, _) = map.hosts_of(shard_id)?;
    for voter in voters {
        match node.leader_seen_by(voter, shard_id).await {
            Ok(Some(leader)) => return Some(leader),
            Ok(None) => {}
            Err(error) => {
                tracing::debug!(node = node.id, voter, shard = shard_id, %error, "no leader from voter")
            }
        }
    }
    None
}
