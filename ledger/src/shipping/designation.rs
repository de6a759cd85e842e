//! Which replica of a ledger shard ships its orders, decided locally by every replica from
//! what Raft already tells it, with no extra messages.
//!
//! The shipping order is the followers by ascending node id, then the leader: the first one
//! ships. Health is judged by the only thing that matters, progress: the replicated `Shipped`
//! mark names the node that advanced it. A replica ranked `r > 0` starts shipping once events
//! have waited and no better-ranked replica advanced the mark for `r * takeover_after`; it stops
//! as soon as a better-ranked one advances it again. While both run for a moment, the sink's
//! compare-and-set watermark keeps the result exact (see [`crate::shipping::sink`]).

use std::collections::BTreeSet;
use std::time::Duration;
use tokio::time::Instant;

use crate::types::NodeId;

/// The position of `node` in the shipping order, or `None` if it is not a voter or there is no
/// known leader (then nobody can propose the mark either, so nobody ships).
pub fn rank(node: NodeId, voters: &BTreeSet<NodeId>, leader: Option<NodeId>) -> Option<usize> {
    let leader = leader.filter(|l| voters.contains(l))?;
    voters
        .iter()
        .copied()
        .filter(|id| *id != leader)
        .chain(std::iter::once(leader))
        .position(|id| id == node)
}

/// What a replica last saw of the replicated mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MarkView {
    pub shipped_below_seq: u64,
    pub shipped_by: NodeId,
    /// Events confirmed but not yet below the mark.
    pub pending_events: u64,
}

/// One replica's running decision for one ledger shard.
#[derive(Debug)]
pub struct Designation {
    takeover_after: Duration,
    last_mark: Option<u64>,
    /// When a better-ranked replica last showed progress (or nothing was waiting).
    quiet_since: Instant,
}

impl Designation {
    pub fn new(takeover_after: Duration, now: Instant) -> Self {
        Designation {
            takeover_after,
            last_mark: None,
            quiet_since: now,
        }
    }

    /// Whether this replica, ranked `my_rank` with `rank_of` giving others' ranks, should ship now.
    pub fn should_ship(
        &mut self,
        my_rank: Option<usize>,
        rank_of: impl Fn(NodeId) -> Option<usize>,
        mark: MarkView,
        now: Instant,
    ) -> bool {
        let advanced = self.last_mark.is_some_and(|last| mark.shipped_below_seq > last);
        self.last_mark = Some(mark.shipped_below_seq);
        let Some(my_rank) = my_rank else {
            self.quiet_since = now;
            return false;
        };
        let by_better = rank_of(mark.shipped_by).is_some_and(|r| r < my_rank);
        if mark.pending_events == 0 || (advanced && by_better) {
            self.quiet_since = now;
        }
        if my_rank == 0 {
            return true;
        }
        now.duration_since(self.quiet_since) >= self.takeover_after * my_rank as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters() -> BTreeSet<NodeId> {
        [1, 2, 3].into_iter().collect()
    }

    #[test]
    fn followers_rank_before_the_leader() {
        assert_eq!(rank(2, &voters(), Some(1)), Some(0));
        assert_eq!(rank(3, &voters(), Some(1)), Some(1));
        assert_eq!(rank(1, &voters(), Some(1)), Some(2));
        assert_eq!(rank(1, &voters(), None), None);
        assert_eq!(rank(4, &voters(), Some(1)), None);
    }

    #[test]
    fn a_lower_ranked_replica_takes_over_only_after_the_first_stalls_and_yields_when_it_returns() {
        let start = Instant::now();
        let takeover = Duration::from_secs(3);
        let mut third = Designation::new(takeover, start);
        let ranks = |id: NodeId| rank(id, &voters(), Some(1));
        let mark = |below, by, pending| MarkView {
            shipped_below_seq: below,
            shipped_by: by,
            pending_events: pending,
        };
        // Node 2 (rank 0) ships steadily: node 3 stays idle however long it runs.
        for step in 0..10u64 {
            let now = start + Duration::from_secs(step);
            assert!(!third.should_ship(Some(1), ranks, mark(step * 10, 2, 5), now));
        }
        // Node 2 stops advancing while events wait: node 3 takes over after one takeover period.
        let stalled = start + Duration::from_secs(9);
        assert!(!third.should_ship(Some(1), ranks, mark(90, 2, 50), stalled + Duration::from_secs(2)));
        assert!(third.should_ship(Some(1), ranks, mark(90, 2, 50), stalled + Duration::from_secs(3)));
        // Its own progress keeps it shipping...
        assert!(third.should_ship(Some(1), ranks, mark(120, 3, 20), stalled + Duration::from_secs(4)));
        // ...until node 2 advances the mark again.
        assert!(!third.should_ship(Some(1), ranks, mark(130, 2, 20), stalled + Duration::from_secs(5)));
    }

    #[test]
    fn nothing_waiting_is_not_a_stall() {
        let start = Instant::now();
        let mut leader = Designation::new(Duration::from_secs(1), start);
        let ranks = |id: NodeId| rank(id, &voters(), Some(1));
        let idle = MarkView {
            shipped_below_seq: 7,
            shipped_by: 2,
            pending_events: 0,
        };
        assert!(!leader.should_ship(Some(2), ranks, idle, start + Duration::from_secs(60)));
    }
}
