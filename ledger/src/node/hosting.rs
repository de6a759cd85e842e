//! Keeps what a node runs in step with the shard map: every node starts the replicas the map
//! gives it and retires the ones it took away; the meta group's leader also seeds the map from
//! cluster.toml once, carries out the queued reshaping steps (`reshape.rs`) and, every
//! `placement.interval_ms` while none is queued, runs a placement round (`placement.rs`).
//!
//! The map only ever moves forward here: a node acts on a map no older than the last one it
//! acted on, so a lagging peer's answer cannot bring back a replica that was moved away.
//! Retiring a replica stops its Raft node and keeps its files: the replica was already taken out
//! of its group's membership, so nothing waits for it, and if the map gives the shard back
//! later the replica catches up from where it stopped.

use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;

use crate::config::ShardConfig;
use crate::meta::map::META_SHARD;
use crate::meta::map::ShardMap;
use crate::node::Node;
use crate::node::placement;
use crate::node::reshape;
use crate::types::NodeId;
use crate::types::ShardId;

/// How often a node compares what it runs with the map.
const FOLLOW_INTERVAL_MS: u64 = 200;
/// Every how many rounds a follower of the meta group also asks its peers for the map.
const PEER_FETCH_EVERY_ROUNDS: u64 = 5;

/// Follows the shard map until the node is dropped or shuts down.
pub(super) async fn follow_shard_map(node: Weak<Node>) {
    let mut acted_on_version = 0;
    let Some(placement_interval) = node
        .upgrade()
        .map(|node| Duration::from_millis(node.config.placement.interval_ms))
    else {
        return;
    };
    let mut next_placement_round = tokio::time::Instant::now() + placement_interval;
    for round in 0u64.. {
        tokio::time::sleep(Duration::from_millis(FOLLOW_INTERVAL_MS)).await;
        let Some(node) = node.upgrade() else { return };
        if *node.closing.borrow() {
            return;
        }
        let meta = node.meta();
        if let Some(meta) = meta.as_ref().filter(|meta| meta.raft.is_leader()) {
            let placement_due = tokio::time::Instant::now() >= next_placement_round;
            if lead_meta_group(&node, meta, placement_due).await {
                next_placement_round = tokio::time::Instant::now() + placement_interval;
            }
        } else if meta.is_none() || round % PEER_FETCH_EVERY_ROUNDS == 0 {
            // A node outside the meta group asks a peer each round. A member asks now and then
            // too: one taken out of the meta group hears of no change after its removal.
            fetch_map_from_peers(&node).await;
        }
        let map = node.shard_map();
        if map.is_seeded() && map.version >= acted_on_version {
            acted_on_version = map.version;
            match_replicas_to(&node, &map).await;
        }
    }
}

/// On the meta leader: seeds an empty map from the config, else carries out the first queued
/// step (one at a time: each waits for a shard's membership change), else, if `placement_due`,
/// runs a placement round. Returns whether it ran one (the next is then an interval away).
async fn lead_meta_group(node: &Arc<Node>, meta: &crate::node::ShardReplica, placement_due: bool) -> bool {
    let map = meta.view.read(|image| image.map.clone());
    if !map.is_seeded() {
        match node.propose_meta(node.config.seed_command()).await {
            Ok(_) => tracing::info!(node = node.id, "seeded the shard map from the config"),
            Err(error) => tracing::debug!(node = node.id, %error, "seeding the shard map"),
        }
        return false;
    }
    if let Some(step) = map.steps.front() {
        if let Err(error) = reshape::carry_out(node, &map, step).await {
            tracing::info!(node = node.id, %step, %error, "reshaping step not done yet; will retry");
        }
        return false;
    }
    if !placement_due {
        return false;
    }
    placement::run_round(node, &map).await;
    true
}

/// A node without a meta replica asks its peers for the map (the newest answer wins).
async fn fetch_map_from_peers(node: &Arc<Node>) {
    let known = node.shard_map();
    let mut peers: Vec<NodeId> = node.config.nodes.iter().map(|n| n.id).collect();
    peers.extend(known.nodes.keys().copied());
    peers.sort_unstable();
    peers.dedup();
    // The meta leader first: its map is the newest.
    let meta_leader = node
        .meta()
        .and_then(|meta| meta.raft.metrics().borrow_watched().current_leader);
    if let Some(leader) = meta_leader {
        peers.retain(|peer| *peer != leader);
        peers.insert(0, leader);
    }
    for peer in peers.into_iter().filter(|peer| *peer != node.id) {
        match node.fetch_map(peer).await {
            Ok(map) => {
                node.learn_map(map);
                return;
            }
            Err(error) => tracing::debug!(node = node.id, peer, %error, "no shard map from peer"),
        }
    }
}

/// Starts the replicas `map` gives this node and retires those it does not.
async fn match_replicas_to(node: &Arc<Node>, map: &ShardMap) {
    let wanted = map.shards_on(node.id);
    for shard_id in &wanted {
        if node.replica(*shard_id).is_none() && !split_not_applied_here_yet(node, map, *shard_id) {
            #[cfg_attr(not(madsim), allow(unused_mut))]
            let mut shard = shard_config(map, *shard_id);
            #[cfg(madsim)]
            let initialize = crate::simulation::planted(crate::simulation::PlantedBug::JoinerBootstraps);
            #[cfg(not(madsim))]
            let initialize = false;
            #[cfg(madsim)]
            if initialize {
                shard.replicas = vec![node.id];
            }
            if let Err(error) = node.host_replica(shard, initialize).await {
                tracing::warn!(node = node.id, shard = shard_id, %error, "could not start a replica the map gives");
            }
        }
    }
    for shard_id in node.replica_ids() {
        if !wanted.contains(&shard_id) {
            node.retire_replica(shard_id).await;
        }
    }
}

/// Whether `shard_id` is the new half of a split that this node's replica of the shard it came
/// from has not applied yet: that replica writes the half to disk when it applies the split, so
/// the new shard's replica starts from it then, rather than empty now (an empty one must be
/// sent the whole half by the new group's leader).
fn split_not_applied_here_yet(node: &Node, map: &ShardMap, shard_id: ShardId) -> bool {
    let Some(parent) = map.split_from.get(&shard_id).and_then(|parent| node.replica(*parent)) else {
        return false;
    };
    !parent
        .view
        .read(|image| image.bounds.split_off.iter().any(|(id, _)| *id == shard_id))
}

/// A replica's start-up settings from the map: the range and the voters.
fn shard_config(map: &ShardMap, shard_id: ShardId) -> ShardConfig {
    let (replicas, _) = map.hosts_of(shard_id).unwrap_or_default();
    let (start, end) = match map.shards.get(&shard_id) {
        Some(entry) if shard_id != META_SHARD => (
            String::from_utf8_lossy(&entry.start).into_owned(),
            String::from_utf8_lossy(&entry.end).into_owned(),
        ),
        _ => (String::new(), String::new()),
    };
    ShardConfig {
        id: shard_id,
        start,
        end,
        replicas,
    }
}
