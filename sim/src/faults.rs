//! Faults chosen from the seed. [`FaultPlan::generate`] draws a schedule for the safety phase
//! from its own RNG (so the plan depends only on the seed and the cluster's shape, and prints
//! before the run); [`run_plan`] applies it to a [`SimCluster`], resolving "the leader" at the
//! moment a fault fires, and logs every action with its simulated time.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use ledger::types::NodeId;
use ledger::types::ShardId;
use madsim::net::NetSim;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use tokio::time::Instant;

use crate::harness::SimCluster;
use ledger::node::reshape::ReshapeRequest;

/// One fault, with how long it lasts.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Power-fail these nodes (at most a minority of the cluster is down at once), restart them
    /// after `down_ms`.
    Kill { nodes: Vec<NodeId>, down_ms: u64 },
    /// Power-fail whichever node leads `shard` when the fault fires.
    KillLeader { shard: ShardId, down_ms: u64 },
    /// Power-fail every node at once (a data-centre outage): nothing acknowledged may be lost,
    /// since it was synced on a majority. Availability during the outage is not asked for.
    PowerLoss { down_ms: u64 },
    /// Cut `minority` off from the rest, both directions.
    Partition { minority: Vec<NodeId>, ms: u64 },
    /// Drop everything `from` sends to `to` (but not the reverse).
    OneWay { from: NodeId, to: NodeId, ms: u64 },
    /// Cut off whichever node leads `shard` when the fault fires, clients included.
    IsolateLeader { shard: ShardId, ms: u64 },
    /// Lose this fraction of packets everywhere.
    PacketLoss { rate: f64, ms: u64 },
    /// Delay every packet by 1..`max_delay_ms` (which also reorders them).
    Delay { max_delay_ms: u64, ms: u64 },
    /// Run one node's wall clock `skew_ms` off (until the run ends).
    ClockSkew { node: NodeId, skew_ms: i64 },
    /// Make one node's disk take `latency_ms` per sync.
    SlowDisk { node: NodeId, latency_ms: u64, ms: u64 },
    /// Ask the meta leader to move a replica of `shard` (the `from_pick`-th of its voters, mod
    /// their count) to the `to_pick`-th node without one; a leader transfer when every node has
    /// one. It is queued and carried out while later faults strike.
    MoveReplica {
        shard: ShardId,
        from_pick: usize,
        to_pick: usize,
    },
    /// Ask the meta leader to hand `shard`'s leadership (0: the meta group's own) to its
    /// `to_pick`-th voter.
    TransferLeader { shard: ShardId, to_pick: usize },
    /// Ask the meta leader to split the `shard_pick`-th data shard of its map (mod their count)
    /// at the `at_pick`-th single-letter SKU strictly inside its range (none left: skipped).
    Split { shard_pick: usize, at_pick: usize },
    /// Ask the meta leader to merge the `pair_pick`-th pair (mod their count) of adjacent data
    /// shards of its map that have the same voters (none: skipped). Three times in four only
    /// pairs split from one seeded shard (they share its hash key, so the merge can be made);
    /// else any pair, whose merge the left shard's log may refuse (the right one is thawed).
    Merge { pair_pick: usize },
}

/// When each fault fires, in ms after the safety phase starts.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub faults: Vec<(u64, Fault)>,
    /// Every node's disk latency outside `SlowDisk` faults, in µs (0 = syncs are instant).
    pub disk_latency_us: u64,
}

impl FaultPlan {
    /// Draws the plan for a safety phase of `phase_ms` on `nodes` nodes with `shards` shards.
    pub fn generate(seed: u64, nodes: usize, shards: usize, phase_ms: u64) -> FaultPlan {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x6661_756c_7473);
        let node_ids: Vec<NodeId> = (1..=nodes as NodeId).collect();
        let minority = (nodes - 1) / 2;
        let disk_latency_us = if rng.gen_bool(0.25) {
            0
        } else {
            rng.gen_range(200..20_000)
        };
        let mut faults = Vec::new();
        let mut at = rng.gen_range(200..1_000);
        while at < phase_ms {
            let shard = rng.gen_range(1..=shards as ShardId);
            let fault = match rng.gen_range(0..11) {
                0 => {
                    let count = rng.gen_range(1..=minority);
                    let chosen = node_ids.choose_multiple(&mut rng, count).copied().collect();
                    Fault::Kill {
                        nodes: chosen,
                        down_ms: rng.gen_range(100..3_000),
                    }
                }
                1 => Fault::KillLeader {
                    shard,
                    down_ms: rng.gen_range(100..3_000),
                },
                2 => {
                    let count = rng.gen_range(1..=minority);
                    Fault::Partition {
                        minority: node_ids.choose_multiple(&mut rng, count).copied().collect(),
                        ms: rng.gen_range(300..3_000),
                    }
                }
                3 => {
                    let pair: Vec<NodeId> = node_ids.choose_multiple(&mut rng, 2).copied().collect();
                    Fault::OneWay {
                        from: pair[0],
                        to: pair[1],
                        ms: rng.gen_range(300..3_000),
                    }
                }
                4 => Fault::IsolateLeader {
                    shard,
                    ms: rng.gen_range(300..3_000),
                },
                5 => Fault::PacketLoss {
                    rate: rng.gen_range(0.01..0.2),
                    ms: rng.gen_range(300..2_000),
                },
                6 => Fault::Delay {
                    max_delay_ms: rng.gen_range(10..200),
                    ms: rng.gen_range(300..2_000),
                },
                7 => Fault::ClockSkew {
                    node: *node_ids.choose(&mut rng).unwrap_or(&1),
                    skew_ms: rng.gen_range(-2_000..2_000),
                },
                8 => Fault::SlowDisk {
                    node: *node_ids.choose(&mut rng).unwrap_or(&1),
                    latency_ms: rng.gen_range(10..200),
                    ms: rng.gen_range(300..3_000),
                },
                9 => Fault::PowerLoss {
                    down_ms: rng.gen_range(100..1_500),
                },
                _ => Fault::KillLeader {
                    shard,
                    down_ms: rng.gen_range(100..1_500),
                },
            };
            faults.push((at, fault));
            at += rng.gen_range(300..2_500);
        }
        // Reshaping from a stream of its own, so the faults above stay what they were per seed.
        let mut reshape_rng = SmallRng::seed_from_u64(seed ^ 0x7265_7368_6170_65);
        let mut at = reshape_rng.gen_range(500..2_000);
        while at < phase_ms {
            let shard = reshape_rng.gen_range(1..=shards as ShardId);
            let fault = if reshape_rng.gen_bool(0.6) {
                Fault::MoveReplica {
                    shard,
                    from_pick: reshape_rng.gen_range(0..5),
                    to_pick: reshape_rng.gen_range(0..5),
                }
            } else {
                Fault::TransferLeader {
                    shard: if reshape_rng.gen_bool(0.2) { 0 } else { shard },
                    to_pick: reshape_rng.gen_range(0..5),
                }
            };
            faults.push((at, fault));
            at += reshape_rng.gen_range(1_000..4_000);
        }
        // Splits from a third stream, so the plans above stay what they were per seed. Every
        // letter is a split point; the workload's SKUs begin with a letter and a dash.
        let mut split_rng = SmallRng::seed_from_u64(seed ^ 0x7370_6c69_74);
        let mut at = split_rng.gen_range(1_000..3_000);
        while at < phase_ms {
            faults.push((
                at,
                Fault::Split {
                    shard_pick: split_rng.gen_range(0..8),
                    at_pick: split_rng.gen_range(0..26),
                },
            ));
            at += split_rng.gen_range(2_000..6_000);
        }
        // Merges from a fourth stream, for the same reason; they undo splits, so they start
        // later and come less often.
        let mut merge_rng = SmallRng::seed_from_u64(seed ^ 0x6d65_7267_65);
        let mut at = merge_rng.gen_range(3_000..6_000);
        while at < phase_ms {
            faults.push((
                at,
                Fault::Merge {
                    pair_pick: merge_rng.gen_range(0..8),
                },
            ));
            at += merge_rng.gen_range(3_000..8_000);
        }
        faults.sort_by_key(|(at, _)| *at);
        FaultPlan {
            faults,
            disk_latency_us,
        }
    }
}

/// The log of what the faults did, with simulated times.
pub type FaultLog = Arc<Mutex<Vec<String>>>;

pub fn log(fault_log: &FaultLog, start: Instant, line: String) {
    let at = start.elapsed().as_secs_f64();
    fault_log
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(format!("{at:8.3}s {line}"));
}

/// Applies `plan` to `cluster` until it is done; every fault is undone when its time is up.
pub async fn run_plan(cluster: Arc<Mutex<SimCluster>>, plan: FaultPlan, start: Instant, fault_log: FaultLog) {
    let mut undo: Vec<(u64, Undo)> = Vec::new();
    for (at, fault) in plan.faults {
        // Undo what is due before this fault fires.
        undo.sort_by_key(|(due, _)| *due);
        while undo.first().is_some_and(|(due, _)| *due <= at) {
            let (due, action) = undo.remove(0);
            tokio::time::sleep_until(start + Duration::from_millis(due)).await;
            action.apply(&cluster, start, &fault_log, plan.disk_latency_us);
        }
        tokio::time::sleep_until(start + Duration::from_millis(at)).await;
        let mut sim = cluster.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((lasts_ms, action)) = fire(&mut sim, &fault, start, &fault_log) {
            undo.push((at + lasts_ms, action));
        }
    }
    undo.sort_by_key(|(due, _)| *due);
    for (due, action) in undo {
        tokio::time::sleep_until(start + Duration::from_millis(due)).await;
        action.apply(&cluster, start, &fault_log, plan.disk_latency_us);
    }
}

/// How to end a fault.
enum Undo {
    Restart(Vec<NodeId>),
    Unclog(Vec<(NodeId, NodeId)>),
    UncloggedNode(NodeId),
    NetworkNormal,
    DiskNormal(NodeId),
}

impl Undo {
    fn apply(self, cluster: &Arc<Mutex<SimCluster>>, start: Instant, fault_log: &FaultLog, disk_latency_us: u64) {
        let mut sim = cluster.lock().unwrap_or_else(|p| p.into_inner());
        let net = NetSim::current();
        match self {
            Undo::Restart(nodes) => {
                for node in &nodes {
                    sim.restart(*node);
                }
                log(fault_log, start, format!("restart {nodes:?}"));
            }
            Undo::Unclog(links) => {
                for (from, to) in &links {
                    if let (Some(a), Some(b)) = (sim.sim_id(*from), sim.sim_id(*to)) {
                        net.unclog_link(a, b);
                    }
                }
                log(fault_log, start, format!("heal links {links:?}"));
            }
            Undo::UncloggedNode(node) => {
                if let Some(id) = sim.sim_id(node) {
                    net.unclog_node(id);
                }
                log(fault_log, start, format!("reconnect node {node}"));
            }
            Undo::NetworkNormal => {
                net.update_config(|config| {
                    config.packet_loss_rate = 0.0;
                    config.send_latency = Duration::from_millis(1)..Duration::from_millis(5);
                });
                log(fault_log, start, "network back to normal".into());
            }
            Undo::DiskNormal(node) => {
                sim.set_disk_latency(node, Duration::from_micros(disk_latency_us));
                log(fault_log, start, format!("disk of node {node} back to normal"));
            }
        }
    }
}

/// Fires `fault`; returns how long it lasts and how to end it.
fn fire(sim: &mut SimCluster, fault: &Fault, start: Instant, fault_log: &FaultLog) -> Option<(u64, Undo)> {
    let net = NetSim::current();
    let minority = (sim.shape.nodes - 1) / 2;
    let down = sim.node_ids().into_iter().filter(|id| !sim.is_up(*id)).count();
    match fault {
        Fault::Kill { nodes, down_ms } => {
            let victims: Vec<NodeId> = nodes
                .iter()
                .copied()
                .filter(|id| sim.is_up(*id))
                .take(minority.saturating_sub(down))
                .collect();
            if victims.is_empty() {
                log(
                    fault_log,
                    start,
                    format!("skip kill {nodes:?}: a minority is already down"),
                );
                return None;
            }
            for node in &victims {
                sim.kill(*node);
            }
            log(fault_log, start, format!("kill {victims:?} for {down_ms} ms"));
            Some((*down_ms, Undo::Restart(victims)))
        }
        Fault::KillLeader { shard, down_ms } => {
            let Some(leader) = sim.leader_of(*shard) else {
                log(
                    fault_log,
                    start,
                    format!("skip kill-leader: shard {shard} has no leader"),
                );
                return None;
            };
            if down >= minority {
                log(fault_log, start, "skip kill-leader: a minority is already down".into());
                return None;
            }
            sim.kill(leader);
            log(
                fault_log,
                start,
                format!("kill leader {leader} of shard {shard} for {down_ms} ms"),
            );
            Some((*down_ms, Undo::Restart(vec![leader])))
        }
        Fault::PowerLoss { down_ms } => {
            let victims: Vec<NodeId> = sim.node_ids().into_iter().filter(|id| sim.is_up(*id)).collect();
            for node in &victims {
                sim.kill(*node);
            }
            log(
                fault_log,
                start,
                format!("power loss: kill {victims:?} for {down_ms} ms"),
            );
            Some((*down_ms, Undo::Restart(victims)))
        }
        Fault::Partition { minority: side, ms } => {
            let mut links = Vec::new();
            for a in side {
                for b in sim.node_ids().into_iter().filter(|id| !side.contains(id)) {
                    links.push((*a, b));
                    links.push((b, *a));
                }
            }
            for (from, to) in &links {
                if let (Some(a), Some(b)) = (sim.sim_id(*from), sim.sim_id(*to)) {
                    net.clog_link(a, b);
                }
            }
            log(
                fault_log,
                start,
                format!("partition {side:?} from the rest for {ms} ms"),
            );
            Some((*ms, Undo::Unclog(links)))
        }
        Fault::OneWay { from, to, ms } => {
            if let (Some(a), Some(b)) = (sim.sim_id(*from), sim.sim_id(*to)) {
                net.clog_link(a, b);
            }
            log(fault_log, start, format!("drop {from} -> {to} for {ms} ms"));
            Some((*ms, Undo::Unclog(vec![(*from, *to)])))
        }
        Fault::IsolateLeader { shard, ms } => {
            let Some(leader) = sim.leader_of(*shard) else {
                log(
                    fault_log,
                    start,
                    format!("skip isolate-leader: shard {shard} has no leader"),
                );
                return None;
            };
            if let Some(id) = sim.sim_id(leader) {
                net.clog_node(id);
            }
            log(
                fault_log,
                start,
                format!("isolate leader {leader} of shard {shard} for {ms} ms"),
            );
            Some((*ms, Undo::UncloggedNode(leader)))
        }
        Fault::PacketLoss { rate, ms } => {
            net.update_config(|config| config.packet_loss_rate = *rate);
            log(
                fault_log,
                start,
                format!("lose {:.0}% of packets for {ms} ms", rate * 100.0),
            );
            Some((*ms, Undo::NetworkNormal))
        }
        Fault::Delay { max_delay_ms, ms } => {
            net.update_config(|config| {
                config.send_latency = Duration::from_millis(1)..Duration::from_millis(*max_delay_ms);
            });
            log(
                fault_log,
                start,
                format!("delay packets up to {max_delay_ms} ms for {ms} ms"),
            );
            Some((*ms, Undo::NetworkNormal))
        }
        Fault::ClockSkew { node, skew_ms } => {
            if let Some(id) = sim.sim_id(*node) {
                ledger::simulation::set_clock_skew_ms(id, *skew_ms);
            }
            log(fault_log, start, format!("skew node {node}'s clock by {skew_ms} ms"));
            None
        }
        Fault::SlowDisk { node, latency_ms, ms } => {
            sim.set_disk_latency(*node, Duration::from_millis(*latency_ms));
            log(
                fault_log,
                start,
                format!("node {node}'s disk syncs in {latency_ms} ms for {ms} ms"),
            );
            Some((*ms, Undo::DiskNormal(*node)))
        }
        Fault::MoveReplica {
            shard,
            from_pick,
            to_pick,
        } => {
            reshape(sim, start, fault_log, |map| {
                let (voters, learners) = map.hosts_of(*shard)?;
                let without: Vec<NodeId> = (map.nodes.keys())
                    .copied()
                    .filter(|id| !voters.contains(id) && !learners.contains(id))
                    .collect();
                if without.is_empty() {
                    let to = voters[to_pick % voters.len()];
                    return Some(ReshapeRequest::TransferLeader { shard_id: *shard, to });
                }
                Some(ReshapeRequest::MoveReplica {
                    shard_id: *shard,
                    from: voters[from_pick % voters.len()],
                    to: without[to_pick % without.len()],
                })
            });
            None
        }
        Fault::Split { shard_pick, at_pick } => {
            reshape(sim, start, fault_log, |map| {
                let shards: Vec<_> = map.shards.iter().collect();
                let (shard_id, entry) = shards.get(shard_pick % shards.len().max(1))?;
                let inside: Vec<Vec<u8>> = (b'a'..=b'z')
                    .map(|letter| vec![letter])
                    .filter(|at| {
                        at.as_slice() > entry.start.as_slice()
                            && (entry.end.is_empty() || at.as_slice() < entry.end.as_slice())
                    })
                    .collect();
                let at = inside.get(at_pick % inside.len().max(1))?.clone();
                Some(ReshapeRequest::SplitShard {
                    shard_id: **shard_id,
                    at,
                })
            });
            None
        }
        Fault::Merge { pair_pick } => {
            reshape(sim, start, fault_log, |map| {
                let mut shards: Vec<_> = map.shards.iter().collect();
                shards.sort_by(|a, b| a.1.start.cmp(&b.1.start));
                let same_voters = |a: &ledger::meta::map::ShardEntry, b: &ledger::meta::map::ShardEntry| {
                    let (mut a, mut b) = (a.replicas.clone(), b.replicas.clone());
                    a.sort_unstable();
                    b.sort_unstable();
                    a == b
                };
                let root = |mut shard: ShardId| {
                    while let Some(parent) = map.split_from.get(&shard) {
                        shard = *parent;
                    }
                    shard
                };
                let pairs: Vec<(ShardId, ShardId)> = shards
                    .windows(2)
                    .filter(|pair| pair[0].1.end == pair[1].1.start && same_voters(pair[0].1, pair[1].1))
                    .map(|pair| (*pair[0].0, *pair[1].0))
                    .filter(|(left, right)| pair_pick % 4 == 0 || root(*left) == root(*right))
                    .collect();
                let (left, right) = *pairs.get(pair_pick % pairs.len().max(1))?;
                Some(ReshapeRequest::MergeShards { left, right })
            });
            None
        }
        Fault::TransferLeader { shard, to_pick } => {
            reshape(sim, start, fault_log, |map| {
                let (voters, _) = map.hosts_of(*shard)?;
                let to = *voters.get(to_pick % voters.len().max(1))?;
                Some(ReshapeRequest::TransferLeader { shard_id: *shard, to })
            });
            None
        }
    }
}

/// Asks the meta leader, on its own simulated node, for the change `choose` picks from its map;
/// logs what it answered (a change that does not fit the map is refused, which is fine).
fn reshape(
    sim: &SimCluster,
    start: Instant,
    fault_log: &FaultLog,
    choose: impl FnOnce(&ledger::meta::map::ShardMap) -> Option<ReshapeRequest>,
) {
    let Some(leader) = sim.leader_of(ledger::meta::map::META_SHARD) else {
        log(fault_log, start, "skip reshape: the meta group has no leader".into());
        return;
    };
    let Some(node) = sim.live_nodes().get(&leader).cloned() else {
        return;
    };
    let Some(request) = choose(&node.shard_map()) else {
        log(fault_log, start, "skip reshape: nothing to change".into());
        return;
    };
    log(
        fault_log,
        start,
        format!("reshape: {request:?} (asked of node {leader})"),
    );
    let fault_log = fault_log.clone();
    sim.spawn_on(leader, async move {
        let answer = node.reshape(request.clone()).await;
        let line = match answer {
            Ok((version, steps)) => format!(
                "reshape {request:?}: map version {version}, {} steps queued",
                steps.len()
            ),
            Err(error) => format!("reshape {request:?}: {error}"),
        };
        log(&fault_log, start, line);
    });
}
