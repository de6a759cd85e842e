//! A backup of one shard, taken on its leader for `ledger backup` (the `Cluster/Backup` RPC):
//! the applied state at the index it has reached, forked the way a snapshot is (under the read
//! lock for a list of chunk pointers and the small parts, so writes pause only for that),
//! then encoded, read back and digested on a thread of its own at idle priority, off the
//! write path.

use crate::backup::ShardBackup;
use crate::node::Node;
use crate::node::NodeError;
use crate::raft::state_store::SnapshotPriority;
use crate::raft::state_store::run_blocking;
use crate::types::ShardId;

impl Node {
    /// Shard `shard_id`'s state as a backup shard file, at the index this leader has applied
    /// once every entry committed before the call is applied. A follower answers `NotLeader`.
    pub async fn backup_shard(&self, shard_id: ShardId) -> Result<ShardBackup, NodeError> {
        let shard = self.shard(shard_id).ok_or(NodeError::ShardNotHosted { shard_id })?;
        if let Some(violation) = shard.view.halted() {
            return Err(NodeError::Unavailable {
                shard_id,
                reason: format!("this replica stopped applying: {violation}"),
            });
        }
        self.ensure_linearizable(&shard).await?;
        let started = tokio::time::Instant::now();
        let frozen = shard.view.read(|image| image.frozen());
        let fork_us = started.elapsed().as_micros() as u64;
        let backup = run_blocking(SnapshotPriority::Background, move || {
            ShardBackup::of_image(shard_id, &frozen)
        })
        .await
        .map_err(|e| NodeError::Storage(format!("backup of shard {shard_id}: {e}")))?;
        tracing::info!(
            shard = shard_id,
            index = backup.log_index,
            bytes = backup.file.len(),
            fork_us,
            total_ms = started.elapsed().as_millis() as u64,
            "backup image taken"
        );
        Ok(backup)
    }
}
