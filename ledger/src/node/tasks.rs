//! A node's background loops, one of each per hosted shard, ending when the node is dropped:
//! reservation expiry and settings proposals on the leader, and snapshot triggers on every
//! replica (with the due points that decide them).

use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use crate::config::RaftSection;
use openraft::async_runtime::WatchReceiver;

use crate::node::Node;
use crate::node::ShardReplica;
use crate::node::now_ms;
use crate::state_machine::command::CommandBody;
use crate::state_machine::command::LogCommand;
use crate::types::ShardId;

/// How often each shard checks whether it is due a snapshot.
const SNAPSHOT_CHECK_INTERVAL_MS: u64 = 250;

/// Asks openraft for a snapshot of a shard once the operations applied since the last one reach
/// both `raft.snapshot_ops_since_last` and `raft.snapshot_growth_percent` of the records the last
/// one held (on every replica: each builds its own). Ends when the node is dropped.
pub(super) async fn trigger_snapshots(node: Weak<Node>, shard_id: ShardId) {
    loop {
        tokio::time::sleep(Duration::from_millis(SNAPSHOT_CHECK_INTERVAL_MS)).await;
        let Some(node) = node.upgrade() else { return };
        let Some(shard) = node.replica(shard_id).filter(|shard| !shard.is_retired()) else {
            return;
        };
        let (ops_since, records) = (shard.view.ops_since_snapshot(), shard.view.snapshot_records());
        if !snapshot_due(&node.config.raft, ops_since, records) {
            continue;
        }
        shard
            .view
            .set_snapshot_overdue(snapshot_overdue(&node.config.raft, ops_since, records));
        // A trigger while a snapshot is being built is ignored by openraft.
        if let Err(error) = shard.raft.trigger().snapshot().await {
            tracing::debug!(shard = shard_id, %error, "snapshot trigger failed; retrying next tick");
        }
    }
}

/// Whether `ops_since_snapshot` operations applied on top of a snapshot of `snapshot_records`
/// records are enough for the next one (see `RaftSection::snapshot_growth_percent`).
fn snapshot_due(raft: &RaftSection, ops_since_snapshot: u64, snapshot_records: u64) -> bool {
    ops_since_snapshot >= snapshot_due_at(raft, snapshot_records)
}

/// Whether the next snapshot is so late (`SNAPSHOT_OVERDUE_FACTOR` times its due point) that it
/// is built at normal CPU priority instead of in the background.
fn snapshot_overdue(raft: &RaftSection, ops_since_snapshot: u64, snapshot_records: u64) -> bool {
    ops_since_snapshot >= snapshot_due_at(raft, snapshot_records).saturating_mul(SNAPSHOT_OVERDUE_FACTOR)
}

fn snapshot_due_at(raft: &RaftSection, snapshot_records: u64) -> u64 {
    let by_growth = snapshot_records.saturating_mul(raft.snapshot_growth_percent) / 100;
    raft.snapshot_ops_since_last.max(by_growth)
}

/// A snapshot this many times past its due point is built at normal priority.
const SNAPSHOT_OVERDUE_FACTOR: u64 = 3;

/// Counts each time this replica learns of a new leader of its shard (`leader_changes` of its
/// instruments): a change is counted when the leader it knows becomes a node other than the last
/// one it knew, so losing a leader and finding the same one again is not a change. Ends when
/// the shard's Raft node stops. Holds the replica, not the node, so it keeps nothing else alive.
pub(super) async fn count_leader_changes(shard: Arc<ShardReplica>) {
    let mut raft_metrics = shard.raft.metrics();
    let leader_changes = shard.view.instruments.leader_changes.clone();
    drop(shard);
    let mut last_known = None;
    loop {
        let leader = raft_metrics.borrow_watched().current_leader;
        if leader.is_some() && leader != last_known {
            leader_changes.inc();
            last_known = leader;
        }
        if raft_metrics.changed().await.is_err() {
            return;
        }
    }
}

/// The leader of each shard proposes `Expire` when a reservation is due, so expiry is a
/// replicated decision at a log-stamped time, and its settings when they differ from its config
/// (a new leader, a changed config). Ends when the node is dropped.
pub(super) async fn expire_reservations(node: Weak<Node>, shard_id: ShardId) {
    loop {
        let interval_ms = match node.upgrade() {
            Some(node) => node.config.ledger.expire_interval_ms,
            None => return,
        };
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        let Some(node) = node.upgrade() else { return };
        let Some(shard) = node.replica(shard_id).filter(|shard| !shard.is_retired()) else {
            return;
        };
        if !shard.raft.is_leader() {
            continue;
        }
        if let Err(error) = node.configure_if_needed(&shard).await {
            tracing::debug!(shard = shard_id, %error, "settings proposal failed; retrying next tick");
        }
        let now = now_ms();
        let due = shard
            .view
            .read(|image| image.ledger.next_expiry_ms().is_some_and(|at| at <= now));
        if due {
            let command = LogCommand {
                timestamp_ms: now,
                body: CommandBody::Expire,
            };
            if let Err(error) = node.propose(&shard, command).await {
                tracing::debug!(shard = shard_id, %error, "expire proposal failed; retrying next tick");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_due_after_the_fixed_interval_and_the_growth_of_the_state() {
        let raft = RaftSection {
            snapshot_ops_since_last: 1_000,
            snapshot_growth_percent: 25,
            ..RaftSection::default()
        };
        // A small state: the fixed interval decides.
        assert!(!snapshot_due(&raft, 999, 100));
        assert!(snapshot_due(&raft, 1_000, 100));
        // A large state: a quarter of it must have been applied on top.
        assert!(!snapshot_due(&raft, 1_000, 1_000_000));
        assert!(!snapshot_due(&raft, 249_999, 1_000_000));
        assert!(snapshot_due(&raft, 250_000, 1_000_000));
        // 0 turns the growth rule off; a huge state does not overflow.
        let fixed = RaftSection {
            snapshot_growth_percent: 0,
            ..raft.clone()
        };
        assert!(snapshot_due(&fixed, 1_000, 1_000_000));
        assert!(!snapshot_due(&raft, u64::MAX / 100 - 1, u64::MAX));
        assert!(snapshot_due(&raft, u64::MAX / 100, u64::MAX));
        // Three times late: built at normal priority.
        assert!(!snapshot_overdue(&raft, 749_999, 1_000_000));
        assert!(snapshot_overdue(&raft, 750_000, 1_000_000));
        assert!(!snapshot_overdue(&raft, 2_999, 100));
        assert!(snapshot_overdue(&raft, 3_000, 100));
        assert!(!snapshot_overdue(&raft, 3 * (u64::MAX / 100) - 1, u64::MAX));
        assert!(snapshot_overdue(&raft, 3 * (u64::MAX / 100), u64::MAX));
    }
}
