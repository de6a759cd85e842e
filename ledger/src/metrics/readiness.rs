//! `/readyz`: whether this node can serve its shards now. Ready when every hosted shard has a
//! leader this node knows (as leader, one a quorum acknowledged recently), and this replica has
//! applied what it knows committed within `server.ready_apply_lag_entries_max`. Otherwise each
//! shard that is not says why, so a load balancer's 503 tells the operator what to look at.

use crate::node::ShardStatus;

/// How this node's shards stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// One line per shard that is not ready.
    NotReady(Vec<String>),
}

/// Judges `shards` (from `Node::status`). `quorum_ack_ms_max`: how long a leader may go without
/// a quorum's acknowledgement, or a follower without an append from its leader, before it no
/// longer counts as having a leader (it is cut off).
pub fn judge(shards: &[ShardStatus], apply_lag_entries_max: u64, quorum_ack_ms_max: u64) -> Readiness {
    let reasons: Vec<String> = shards
        .iter()
        .filter_map(|shard| why_not_ready(shard, apply_lag_entries_max, quorum_ack_ms_max))
        .collect();
    if reasons.is_empty() {
        Readiness::Ready
    } else {
        Readiness::NotReady(reasons)
    }
}

fn why_not_ready(shard: &ShardStatus, apply_lag_entries_max: u64, quorum_ack_ms_max: u64) -> Option<String> {
    let id = shard.shard_id;
    if !shard.invariant_ok {
        return Some(format!("shard {id}: halted or its invariant is broken"));
    }
    let Some(leader) = shard.leader else {
        return Some(format!("shard {id}: no leader known (term {})", shard.term));
    };
    // A lone voter is its own quorum: nobody acknowledges it, and it needs nobody.
    if shard.role == "leader" && shard.voters > 1 {
        match shard.millis_since_quorum_ack {
            Some(ms) if ms <= quorum_ack_ms_max => {}
            Some(ms) => {
                return Some(format!(
                    "shard {id}: this node leads but no quorum acknowledged it for {ms} ms"
                ));
            }
            None => return Some(format!("shard {id}: this node leads but no quorum acknowledged it yet")),
        }
    }
    // A follower names the leader it last heard of; with pre-vote it keeps naming it after being
    // cut off (it never raises its term alone), so it must also have heard from it lately.
    if shard.role != "leader" && shard.voters > 1 {
        match shard.millis_since_leader_contact {
            Some(ms) if ms <= quorum_ack_ms_max => {}
            Some(ms) => {
                return Some(format!("shard {id}: no append from leader {leader} for {ms} ms"));
            }
            None => return Some(format!("shard {id}: no append from leader {leader} yet")),
        }
    }
    let lag = shard.committed_index.saturating_sub(shard.applied_index);
    if lag > apply_lag_entries_max {
        return Some(format!(
            "shard {id}: applied index {} is {lag} entries behind committed {} (leader {leader})",
            shard.applied_index, shard.committed_index
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: u64, leader: Option<u64>, role: &str) -> ShardStatus {
        ShardStatus {
            shard_id: id,
            leader,
            term: 3,
            role: role.into(),
            replicas: vec![1, 2, 3],
            last_log_index: 10,
            committed_index: 10,
            applied_index: 10,
            snapshot_index: 0,
            sku_count: 0,
            state_digest: 0,
            invariant_ok: true,
            shipping_lag_events: 0,
            shipping_lag_seconds: 0.0,
            shipped_by: 0,
            voters: 3,
            millis_since_quorum_ack: (role == "leader").then_some(20),
            millis_since_leader_contact: (role != "leader").then_some(30),
            matched_index: Default::default(),
        }
    }

    #[test]
    fn ready_when_every_shard_has_a_leader_and_is_caught_up() {
        let shards = [shard(1, Some(2), "follower"), shard(2, Some(1), "leader")];
        assert_eq!(judge(&shards, 100, 1_000), Readiness::Ready);
    }

    #[test]
    fn each_shard_that_is_not_ready_says_why() {
        let mut lagging = shard(3, Some(2), "follower");
        lagging.applied_index = 5;
        let mut cut_off = shard(4, Some(1), "leader");
        cut_off.millis_since_quorum_ack = Some(5_000);
        let mut halted = shard(5, Some(1), "follower");
        halted.invariant_ok = false;
        let shards = [
            shard(1, None, "candidate"),
            shard(2, Some(1), "follower"),
            lagging,
            cut_off,
            halted,
        ];
        let Readiness::NotReady(reasons) = judge(&shards, 4, 1_000) else {
            panic!("not ready");
        };
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons[0].starts_with("shard 1: no leader"), "{reasons:?}");
        assert!(reasons[1].contains("5 entries behind committed 10"), "{reasons:?}");
        assert!(
            reasons[2].contains("no quorum acknowledged it for 5000 ms"),
            "{reasons:?}"
        );
        assert!(reasons[3].starts_with("shard 5: halted"), "{reasons:?}");
        // Within the bound: ready.
        assert!(why_not_ready(&shards[2], 5, 1_000).is_none());
        // A single-voter shard's leader has no one to acknowledge it.
        let mut alone = shard(6, Some(1), "leader");
        (alone.voters, alone.millis_since_quorum_ack) = (1, None);
        assert!(why_not_ready(&alone, 5, 1_000).is_none());
    }

    #[test]
    fn a_follower_that_stopped_hearing_from_its_leader_is_not_ready() {
        // With pre-vote it still names the leader it last knew.
        let mut cut_off = shard(1, Some(2), "follower");
        cut_off.millis_since_leader_contact = Some(4_000);
        let reason = why_not_ready(&cut_off, 5, 1_000).expect("not ready");
        assert_eq!(reason, "shard 1: no append from leader 2 for 4000 ms");
        cut_off.millis_since_leader_contact = None;
        assert!(why_not_ready(&cut_off, 5, 1_000).is_some());
        cut_off.millis_since_leader_contact = Some(900);
        assert!(why_not_ready(&cut_off, 5, 1_000).is_none());
    }
}
