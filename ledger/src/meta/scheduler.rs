//! The placement scheduler: what the meta leader changes, unasked, so that no node carries far
//! more of the cluster than another. Pure: a function of the shard map and of the leaders the
//! meta leader sees; `node/placement.rs` gathers those, runs it every `placement.interval_ms`
//! and carries its decision out through the same paths an operator's request takes.
//!
//! Policy, at most one decision per round, and none while the map has a queued step (a move in
//! progress changes the counts under it; the next round sees the result):
//! 1. Leaders ([`PlacementPolicy::balance_leaders`]). Counting the leaderships of every shard
//!    whose leader is known (the meta group included): when a node leads at least
//!    [`IMBALANCE_MIN`] more than an active voter of one of the shards it leads, that shard's
//!    leadership goes to its least-loaded active voter. Busiest node first; among its shards,
//!    the one whose target leads least, a data shard before the meta group (moving the meta
//!    leadership interrupts the scheduler itself), then the lowest shard id.
//! 2. Replicas ([`PlacementPolicy::balance_replicas`]). Counting the replicas each active node
//!    holds (the meta group included): when the fullest holds at least [`IMBALANCE_MIN`] more
//!    than the emptiest, one replica moves from the fullest to the emptiest, of a shard the
//!    emptiest lacks (there always is one: the fullest holds more shards). A shard the fullest
//!    does not lead first (no leadership hand-off), a data shard before the meta group, then the
//!    lowest id. A move is the map's add-through-a-learner then remove, so a shard never has
//!    fewer replicas than it had. Ties between nodes: the lowest id.
//!
//! Draining nodes are never a target (of a leadership or a replica) and are not counted among
//! the replica holders: the drain's own steps empty them.
//!
//! Why it settles, never flaps: a difference of 1 never moves anything (the hysteresis), and
//! each decision lowers a sum of squares — a transfer from a node leading `a` to one leading
//! `b <= a - 2` lowers Σ leads² by `2(a - b - 1) >= 2`; a move lowers Σ replicas² likewise and
//! leaves leader counts alone unless the moved replica led (then its leadership goes to another
//! voter). Replica moves are therefore finitely many, and after the last one the leader
//! transfers are too.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use crate::meta::map::META_SHARD;
use crate::meta::map::NodeId;
use crate::meta::map::NodeState;
use crate::meta::map::ShardId;
use crate::meta::map::ShardMap;

/// How many more leaderships or replicas one node must carry than another before anything
/// moves. 2, not 1: moving one between nodes that differ by 1 only swaps which is ahead, and
/// the next round would move it back.
pub const IMBALANCE_MIN: usize = 2;

/// Which balances the scheduler keeps (`[placement]` in cluster.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlacementPolicy {
    pub balance_leaders: bool,
    pub balance_replicas: bool,
}

/// One change the scheduler asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacementDecision {
    /// Hand `shard_id`'s leadership from `from` to `to` (a voter of it).
    TransferLeader {
        shard_id: ShardId,
        from: NodeId,
        to: NodeId,
    },
    /// Queue a move of `from`'s replica of `shard_id` to `to`.
    MoveReplica {
        shard_id: ShardId,
        from: NodeId,
        to: NodeId,
    },
}

impl std::fmt::Display for PlacementDecision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlacementDecision::TransferLeader { shard_id, from, to } => {
                write!(f, "move shard {shard_id}'s leadership from node {from} to node {to}")
            }
            PlacementDecision::MoveReplica { shard_id, from, to } => {
                write!(f, "move shard {shard_id}'s replica from node {from} to node {to}")
            }
        }
    }
}

/// The one change this round makes, if any. `leaders` holds the leader the meta leader sees
/// for each shard (0 included); a shard missing from it, or whose named leader is not one of
/// its voters, is left out of the leader counts.
pub fn decide(
    map: &ShardMap,
    leaders: &BTreeMap<ShardId, NodeId>,
    policy: PlacementPolicy,
) -> Option<PlacementDecision> {
    if !map.is_seeded() || !map.steps.is_empty() {
        return None;
    }
    let groups = voter_sets(map);
    let leader_transfer = || {
        policy
            .balance_leaders
            .then(|| leader_transfer(map, &groups, leaders))
            .flatten()
    };
    let replica_move = || {
        policy
            .balance_replicas
            .then(|| replica_move(map, &groups, leaders))
            .flatten()
    };
    leader_transfer().or_else(replica_move)
}

/// Every shard's voters, the meta group first.
fn voter_sets(map: &ShardMap) -> Vec<(ShardId, &[NodeId])> {
    std::iter::once((META_SHARD, map.meta_replicas.as_slice()))
        .chain(map.shards.iter().map(|(id, shard)| (*id, shard.replicas.as_slice())))
        .collect()
}

fn is_active(map: &ShardMap, node: NodeId) -> bool {
    map.nodes
        .get(&node)
        .is_some_and(|entry| entry.state == NodeState::Active)
}

fn leader_transfer(
    map: &ShardMap,
    groups: &[(ShardId, &[NodeId])],
    leaders: &BTreeMap<ShardId, NodeId>,
) -> Option<PlacementDecision> {
    let led_shards: Vec<(ShardId, NodeId, &[NodeId])> = groups
        .iter()
        .filter_map(|(shard_id, voters)| {
            let leader = *leaders.get(shard_id)?;
            voters.contains(&leader).then_some((*shard_id, leader, *voters))
        })
        .collect();
    let mut leads: BTreeMap<NodeId, usize> = map.nodes.keys().map(|id| (*id, 0)).collect();
    for (_, leader, _) in &led_shards {
        *leads.entry(*leader).or_default() += 1;
    }
    let leads_of = |node: NodeId| leads.get(&node).copied().unwrap_or(0);
    let mut busiest_first: Vec<(NodeId, usize)> = leads.iter().map(|(id, count)| (*id, *count)).collect();
    busiest_first.sort_by_key(|(id, count)| (Reverse(*count), *id));
    for (from, from_leads) in busiest_first {
        let best = led_shards
            .iter()
            .filter(|(_, leader, _)| *leader == from)
            .filter_map(|(shard_id, _, voters)| {
                let to = voters
                    .iter()
                    .copied()
                    .filter(|voter| *voter != from && is_active(map, *voter))
                    .min_by_key(|voter| (leads_of(*voter), *voter))?;
                (from_leads >= leads_of(to) + IMBALANCE_MIN).then_some((*shard_id, to))
            })
            .min_by_key(|(shard_id, to)| (leads_of(*to), *shard_id == META_SHARD, *shard_id));
        if let Some((shard_id, to)) = best {
            return Some(PlacementDecision::TransferLeader { shard_id, from, to });
        }
    }
    None
}

fn replica_move(
    map: &ShardMap,
    groups: &[(ShardId, &[NodeId])],
    leaders: &BTreeMap<ShardId, NodeId>,
) -> Option<PlacementDecision> {
    let mut held: BTreeMap<NodeId, usize> = map
        .nodes
        .keys()
        .filter(|id| is_active(map, **id))
        .map(|id| (*id, 0))
        .collect();
    for (_, voters) in groups {
        for voter in voters.iter() {
            if let Some(count) = held.get_mut(voter) {
                *count += 1;
            }
        }
    }
    let (from, from_held) = held.iter().max_by_key(|(id, count)| (**count, Reverse(**id)))?;
    let (to, to_held) = held.iter().min_by_key(|(id, count)| (**count, **id))?;
    if *from_held < to_held + IMBALANCE_MIN {
        return None;
    }
    let (from, to) = (*from, *to);
    let shard_id = groups
        .iter()
        .filter(|(_, voters)| voters.contains(&from) && !voters.contains(&to))
        .map(|(shard_id, _)| *shard_id)
        .min_by_key(|shard_id| (leaders.get(shard_id) == Some(&from), *shard_id == META_SHARD, *shard_id))?;
    Some(PlacementDecision::MoveReplica { shard_id, from, to })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::meta::map::MetaCommand;
    use crate::meta::map::NodeEntry;
    use crate::meta::map::ReplicaChange;
    use crate::meta::map::ShardEntry;
    use crate::meta::map::StepRequest;

    const BOTH: PlacementPolicy = PlacementPolicy {
        balance_leaders: true,
        balance_replicas: true,
    };
    const LEADERS_ONLY: PlacementPolicy = PlacementPolicy {
        balance_leaders: true,
        balance_replicas: false,
    };
    const REPLICAS_ONLY: PlacementPolicy = PlacementPolicy {
        balance_leaders: false,
        balance_replicas: true,
    };

    /// A seeded map of nodes `1..=nodes`, the meta group on `meta`, and data shard `i + 1` on
    /// `shards[i]`.
    fn map_of(nodes: u64, meta: &[NodeId], shards: &[&[NodeId]]) -> ShardMap {
        let mut map = ShardMap::default();
        map.apply(&MetaCommand::Seed {
            nodes: (1..=nodes).map(|id| (id, format!("h:{id}"))).collect(),
            meta_replicas: meta.to_vec(),
            shards: shards
                .iter()
                .enumerate()
                .map(|(index, replicas)| {
                    let start = if index == 0 {
                        Vec::new()
                    } else {
                        vec![b'a' + index as u8]
                    };
                    let end = if index + 1 == shards.len() {
                        Vec::new()
                    } else {
                        vec![b'a' + index as u8 + 1]
                    };
                    let entry = ShardEntry {
                        start,
                        end,
                        replicas: replicas.to_vec(),
                        learners: Vec::new(),
                        epoch: 1,
                        conf_ver: 1,
                    };
                    (index as ShardId + 1, entry)
                })
                .collect(),
        })
        .expect("seed");
        map
    }

    fn leaders(pairs: &[(ShardId, NodeId)]) -> BTreeMap<ShardId, NodeId> {
        pairs.iter().copied().collect()
    }

    fn add_node(map: &mut ShardMap, id: NodeId) {
        map.apply(&MetaCommand::AddNode {
            node_id: id,
            addr: format!("h:{id}"),
        })
        .expect("add node");
    }

    #[test]
    fn a_node_leading_two_more_than_a_voter_hands_one_leadership_to_the_least_loaded_voter() {
        let map = map_of(3, &[1, 2, 3], &[&[1, 2, 3], &[1, 2, 3]]);
        // Node 1 leads all three; nodes 2 and 3 lead nothing: a data shard goes to node 2.
        let decision = decide(&map, &leaders(&[(0, 1), (1, 1), (2, 1)]), BOTH);
        assert_eq!(
            decision,
            Some(PlacementDecision::TransferLeader {
                shard_id: 1,
                from: 1,
                to: 2
            })
        );
        // Node 2 leads one now: the next goes to node 3, still a data shard before the meta group.
        let decision = decide(&map, &leaders(&[(0, 1), (1, 2), (2, 1)]), BOTH);
        assert_eq!(
            decision,
            Some(PlacementDecision::TransferLeader {
                shard_id: 2,
                from: 1,
                to: 3
            })
        );
        assert_eq!(decide(&map, &leaders(&[(0, 1), (1, 2), (2, 3)]), BOTH), None);
    }

    #[test]
    fn a_data_shard_moves_before_the_meta_group_and_the_meta_group_when_only_it_can() {
        let map = map_of(3, &[1, 2, 3], &[&[1, 2, 3]]);
        let decision = decide(&map, &leaders(&[(0, 1), (1, 1)]), LEADERS_ONLY);
        assert_eq!(
            decision,
            Some(PlacementDecision::TransferLeader {
                shard_id: 1,
                from: 1,
                to: 2
            })
        );
        // Node 1 leads the meta group and shard 1, whose other voter (4) leads shard 2: only the
        // meta group's leadership can go to a voter leading 2 fewer (node 2).
        let map = map_of(5, &[1, 2, 3], &[&[1, 4], &[4, 5]]);
        let decision = decide(&map, &leaders(&[(0, 1), (1, 1), (2, 4)]), LEADERS_ONLY);
        assert_eq!(
            decision,
            Some(PlacementDecision::TransferLeader {
                shard_id: 0,
                from: 1,
                to: 2
            })
        );
    }

    #[test]
    fn a_leadership_goes_only_to_a_voter_of_the_shard() {
        // Node 1 leads two, node 4 none, but node 4 votes in nothing: nothing moves.
        let map = map_of(4, &[1, 2, 3], &[&[1, 2, 3], &[1, 2, 3], &[1, 2, 3]]);
        let seen = leaders(&[(0, 1), (1, 1), (2, 2), (3, 3)]);
        assert_eq!(decide(&map, &seen, LEADERS_ONLY), None);
        // A leader that is not a voter in the map (a stale view) is not counted: were node 4
        // counted as leading three, a leadership would move "from" it.
        let stale = leaders(&[(0, 4), (1, 4), (2, 4), (3, 4)]);
        assert_eq!(decide(&map, &stale, LEADERS_ONLY), None);
    }

    #[test]
    fn unknown_leaders_are_left_out_of_the_counts() {
        let map = map_of(3, &[1, 2, 3], &[&[1, 2, 3], &[1, 2, 3]]);
        assert_eq!(decide(&map, &leaders(&[(1, 1)]), BOTH), None);
        assert_eq!(decide(&map, &BTreeMap::new(), BOTH), None);
    }

    #[test]
    fn a_difference_of_one_never_moves_anything() {
        // Leaders 2, 1, 1, 1 and replicas 4, 4, 3, 4 over nodes 1-4: within 1.
        let map = map_of(4, &[1, 2, 3], &[&[1, 2, 4], &[1, 3, 4], &[2, 3, 4], &[1, 2, 4]]);
        let seen = leaders(&[(0, 1), (1, 1), (2, 3), (3, 2), (4, 4)]);
        assert_eq!(decide(&map, &seen, BOTH), None);
        // Every node equal, too.
        let map = map_of(3, &[1, 2, 3], &[&[1, 2, 3], &[1, 2, 3]]);
        assert_eq!(decide(&map, &leaders(&[(0, 1), (1, 2), (2, 3)]), BOTH), None);
    }

    #[test]
    fn replicas_move_from_the_fullest_to_an_added_empty_node_a_shard_it_does_not_lead_first() {
        let mut map = map_of(3, &[1, 2, 3], &[&[1, 2, 3], &[1, 2, 3]]);
        add_node(&mut map, 4);
        // Leaders balanced; nodes 1-3 hold 3 replicas, node 4 none. Node 1 leads shard 1.
        let seen = leaders(&[(0, 3), (1, 1), (2, 2)]);
        let decision = decide(&map, &seen, BOTH);
        assert_eq!(
            decision,
            Some(PlacementDecision::MoveReplica {
                shard_id: 2,
                from: 1,
                to: 4
            })
        );
        assert_eq!(decide(&map, &seen, REPLICAS_ONLY), decision);
        assert_eq!(decide(&map, &seen, LEADERS_ONLY), None, "replica balance is off");
    }

    #[test]
    fn leaders_are_balanced_before_replicas() {
        let mut map = map_of(3, &[1, 2, 3], &[&[1, 2, 3], &[1, 2, 3]]);
        add_node(&mut map, 4);
        let decision = decide(&map, &leaders(&[(0, 1), (1, 1), (2, 1)]), BOTH);
        assert!(
            matches!(decision, Some(PlacementDecision::TransferLeader { .. })),
            "{decision:?}"
        );
        let decision = decide(&map, &leaders(&[(0, 1), (1, 1), (2, 1)]), REPLICAS_ONLY);
        assert!(
            matches!(decision, Some(PlacementDecision::MoveReplica { to: 4, .. })),
            "{decision:?}"
        );
    }

    #[test]
    fn nothing_moves_while_a_step_is_queued() {
        let mut map = map_of(3, &[1, 2, 3], &[&[1, 2, 3], &[1, 2, 3]]);
        add_node(&mut map, 4);
        map.apply(&MetaCommand::Enqueue(vec![StepRequest {
            shard_id: 1,
            change: ReplicaChange::Add(4),
        }]))
        .expect("enqueue");
        assert_eq!(decide(&map, &leaders(&[(0, 1), (1, 1), (2, 1)]), BOTH), None);
        assert_eq!(decide(&ShardMap::default(), &BTreeMap::new(), BOTH), None, "unseeded");
    }

    #[test]
    fn a_draining_node_is_never_a_target_nor_counted_as_a_holder() {
        let mut map = map_of(4, &[1, 2, 3], &[&[1, 2, 3], &[1, 2, 3]]);
        // Node 4 is empty but draining: no replica goes to it.
        map.nodes.insert(
            4,
            NodeEntry {
                addr: "h:4".into(),
                state: NodeState::Draining,
            },
        );
        assert_eq!(decide(&map, &leaders(&[(0, 1), (1, 2), (2, 3)]), BOTH), None);
        // Node 2 is draining: leadership goes to node 3, never to node 2.
        let mut map = map_of(3, &[1, 2, 3], &[&[1, 2, 3], &[1, 2, 3]]);
        map.nodes.get_mut(&2).expect("node 2").state = NodeState::Draining;
        let decision = decide(&map, &leaders(&[(0, 1), (1, 1), (2, 1)]), LEADERS_ONLY);
        assert_eq!(
            decision,
            Some(PlacementDecision::TransferLeader {
                shard_id: 1,
                from: 1,
                to: 3
            })
        );
        // Node 3 leads one now; node 1 leads two, and its only active peer leads one.
        let decision = decide(&map, &leaders(&[(0, 1), (1, 3), (2, 1)]), LEADERS_ONLY);
        assert_eq!(decision, None);
    }

    #[test]
    fn decisions_are_displayed_for_the_log() {
        let transfer = PlacementDecision::TransferLeader {
            shard_id: 2,
            from: 1,
            to: 3,
        };
        assert_eq!(transfer.to_string(), "move shard 2's leadership from node 1 to node 3");
        let replica = PlacementDecision::MoveReplica {
            shard_id: 0,
            from: 1,
            to: 4,
        };
        assert_eq!(replica.to_string(), "move shard 0's replica from node 1 to node 4");
    }

    /// A cluster as the scheduler sees it, changed as the real cluster would change: a transfer
    /// sets the leader; a move goes through the map's own commands (add, then remove), and when
    /// the moved replica led, the leadership goes to the lowest other voter first, as
    /// `node/reshape.rs` hands it over.
    fn apply(map: &mut ShardMap, leaders: &mut BTreeMap<ShardId, NodeId>, decision: PlacementDecision) {
        match decision {
            PlacementDecision::TransferLeader { shard_id, from, to } => {
                let (voters, _) = map.hosts_of(shard_id).expect("a known shard");
                assert!(voters.contains(&to), "{decision}: {to} is not a voter");
                assert_eq!(leaders.get(&shard_id), Some(&from), "{decision}: not the leader");
                leaders.insert(shard_id, to);
            }
            PlacementDecision::MoveReplica { shard_id, from, to } => {
                let (before, _) = map.hosts_of(shard_id).expect("a known shard");
                map.apply(&MetaCommand::Enqueue(vec![
                    StepRequest {
                        shard_id,
                        change: ReplicaChange::Add(to),
                    },
                    StepRequest {
                        shard_id,
                        change: ReplicaChange::Remove(from),
                    },
                ]))
                .unwrap_or_else(|reason| panic!("{decision} refused by the map: {reason}"));
                while let Some(step) = map.steps.front().cloned() {
                    map.apply(&MetaCommand::StepDone { step_id: step.id })
                        .expect("step done");
                }
                let (after, _) = map.hosts_of(shard_id).expect("a known shard");
                assert_eq!(after.len(), before.len(), "{decision} changed the replica count");
                if leaders.get(&shard_id) == Some(&from) {
                    let next = after.iter().copied().find(|id| *id != from).expect("a voter");
                    leaders.insert(shard_id, next);
                }
            }
        }
    }

    fn spread(counts: impl Iterator<Item = usize>) -> usize {
        let counts: Vec<usize> = counts.collect();
        counts.iter().max().unwrap_or(&0) - counts.iter().min().unwrap_or(&0)
    }

    /// A cluster of 3 to 6 nodes (some empty, one maybe draining), 1 to 8 data shards of 1 or 3
    /// replicas, and leaders anywhere among the voters.
    fn clusters() -> impl Strategy<Value = (ShardMap, BTreeMap<ShardId, NodeId>)> {
        (3u64..=6, 1usize..=8, any::<bool>()).prop_flat_map(|(nodes, shards, draining)| {
            let replica_set = (
                prop::sample::subsequence((1..=nodes).collect::<Vec<_>>(), 3),
                any::<bool>(),
            )
                .prop_map(|(set, single)| if single { vec![set[0]] } else { set });
            let leader_picks = prop::collection::vec(0usize..3, shards + 1);
            (
                Just(nodes),
                prop::collection::vec(replica_set, shards),
                leader_picks,
                Just(draining),
            )
                .prop_map(|(nodes, sets, picks, draining)| {
                    let set_refs: Vec<&[NodeId]> = sets.iter().map(|set| set.as_slice()).collect();
                    let mut map = map_of(nodes, &[1, 2, 3], &set_refs);
                    if draining {
                        map.nodes.get_mut(&nodes).expect("last node").state = NodeState::Draining;
                    }
                    let leaders = voter_sets(&map)
                        .iter()
                        .zip(picks)
                        .map(|((shard_id, voters), pick)| (*shard_id, voters[pick % voters.len()]))
                        .collect();
                    (map, leaders)
                })
        })
    }

    /// Σ leads² over the nodes, counting every shard's leader.
    fn leader_potential(leaders: &BTreeMap<ShardId, NodeId>) -> usize {
        let mut leads: BTreeMap<NodeId, usize> = BTreeMap::new();
        for leader in leaders.values() {
            *leads.entry(*leader).or_default() += 1;
        }
        leads.values().map(|count| count * count).sum()
    }

    /// Σ replicas² over the active nodes.
    fn replica_potential(map: &ShardMap) -> usize {
        map.nodes
            .keys()
            .filter(|id| is_active(map, **id))
            .map(|id| voter_sets(map).iter().filter(|(_, voters)| voters.contains(id)).count())
            .map(|count| count * count)
            .sum()
    }

    proptest! {
        /// Applying the decisions round after round settles: each transfer lowers Σ leads² and
        /// each move Σ replicas² (of active nodes) by 2 or more, so it ends within the bound
        /// that follows (a move may raise Σ leads² by at most 2·shards + 1, when the moved
        /// replica led); no state is visited twice (no oscillation); and where it settles no
        /// rule can act: replica counts within 1, no leader 2 ahead of an active voter.
        #[test]
        fn repeated_decisions_converge((mut map, mut leaders) in clusters()) {
            let shards = voter_sets(&map).len();
            let moves_max = replica_potential(&map) / 2;
            let transfers_max = (leader_potential(&leaders) + moves_max * (2 * shards + 1)) / 2;
            let mut seen = BTreeSet::new();
            let mut rounds = 0;
            while let Some(decision) = decide(&map, &leaders, BOTH) {
                let state: Vec<(ShardId, Vec<NodeId>, Option<NodeId>)> = voter_sets(&map)
                    .iter()
                    .map(|(id, voters)| (*id, voters.to_vec(), leaders.get(id).copied()))
                    .collect();
                prop_assert!(seen.insert(state), "state repeated before {}", decision);
                let (PlacementDecision::TransferLeader { to, .. } | PlacementDecision::MoveReplica { to, .. }) =
                    decision;
                prop_assert!(is_active(&map, to), "{} targets a draining node", decision);
                let before = (leader_potential(&leaders), replica_potential(&map));
                apply(&mut map, &mut leaders, decision);
                let after = (leader_potential(&leaders), replica_potential(&map));
                match decision {
                    PlacementDecision::TransferLeader { .. } => {
                        prop_assert!(after.0 + 2 <= before.0 && after.1 == before.1, "{}", decision)
                    }
                    PlacementDecision::MoveReplica { .. } => prop_assert!(after.1 + 2 <= before.1, "{}", decision),
                }
                rounds += 1;
                prop_assert!(rounds <= moves_max + transfers_max, "no rest after {} rounds", rounds);
            }
            let active: Vec<NodeId> = map.nodes.keys().copied().filter(|id| is_active(&map, *id)).collect();
            let held = active
                .iter()
                .map(|id| voter_sets(&map).iter().filter(|(_, voters)| voters.contains(id)).count());
            prop_assert!(spread(held) <= 1);
            let leads = |node: NodeId| leaders.values().filter(|leader| **leader == node).count();
            for (shard_id, voters) in voter_sets(&map) {
                let leader = leaders[&shard_id];
                for voter in voters.iter().filter(|voter| is_active(&map, **voter)) {
                    prop_assert!(leads(leader) < leads(*voter) + IMBALANCE_MIN, "shard {}", shard_id);
                }
            }
        }
    }
}
