//! Backups of a live cluster and restores into a new one (`ledger backup`, `ledger restore`).
//!
//! A backup is a directory: one shard file per shard (`shard-<id>.snap`) and `manifest.json`,
//! written last and atomically, so a backup cut short has no manifest and is never restored.
//! A shard file is the shard's applied state at one log index, as its leader held it: the
//! snapshot format of `crate::applied` (the `FLSNAP05` frame with its CRC, around the snapshot
//! metadata and the whole image with its orders inline), forked from the live state the way a
//! snapshot is, so writes pause only for the fork. The manifest states per shard its range, the
//! index and term, the state digest (`ledger status`'s, computed from the image in the file)
//! and the file's length and SHA-256.
//!
//! Restore checks everything first (manifest, every file's length, SHA-256, frame, image,
//! index and digest, the new config's shard ranges, empty data directories) and writes only
//! then: each node's data directory gets the shard's image as its initial snapshot, with the
//! new cluster's membership (see [`restore`]). docs/operations.md, "Backup and restore" is the operator's view.

pub mod manifest;
#[cfg(not(madsim))]
pub mod restore;

use crate::applied::AppliedStoreError;
use crate::applied::FrozenImage;
use crate::applied::ShardImage;
use crate::applied::decode_whole_record;
use crate::applied::encode_whole_record;
use crate::applied::frame;
use crate::security::tokens::sha256;
use crate::types::ShardId;
use crate::types::SnapshotMeta;

/// One shard's backup as its leader made it: the shard file's bytes and what the manifest
/// states about them.
#[derive(Debug, Clone)]
pub struct ShardBackup {
    pub shard_id: ShardId,
    /// The log index (and its term) of the last entry the image reflects.
    pub log_index: u64,
    pub log_term: u64,
    /// `LedgerState::digest` of the image in `file` (what `ledger status` prints at that index).
    pub state_digest: u64,
    /// The shard file, framed.
    pub file: Vec<u8>,
    pub sha256: [u8; 32],
}

impl ShardBackup {
    /// Encodes a fork of shard `shard_id`'s state as a shard file, then reads the file back the
    /// way restore will: the digest stated is computed from the image in the file, so a backup
    /// that could not be restored is never made. Blocking (CPU): run it off the async workers.
    pub fn of_image(shard_id: ShardId, image: &FrozenImage) -> Result<ShardBackup, AppliedStoreError> {
        let meta = SnapshotMeta {
            last_log_id: image.meta.applied,
            last_membership: image.meta.membership.clone(),
        };
        let file = frame::frame(&encode_whole_record(&meta, image)?);
        let (meta, restored) = read_shard_file(&file)?;
        let log_id = meta.last_log_id;
        Ok(ShardBackup {
            shard_id,
            log_index: log_id.map_or(0, |id| id.index),
            log_term: log_id.map_or(0, |id| id.committed_leader_id().term),
            state_digest: restored.ledger.digest(),
            sha256: sha256(&file),
            file,
        })
    }
}

/// The snapshot metadata and image of a shard file, checked: its frame (magic, length, CRC),
/// the record, and the image as a received snapshot is checked (parts fit, invariant holds).
pub fn read_shard_file(file: &[u8]) -> Result<(SnapshotMeta, ShardImage), AppliedStoreError> {
    decode_whole_record(frame::unframe("shard file", file)?)
}

/// The name of shard `shard_id`'s file in a backup directory.
pub fn shard_file_name(shard_id: ShardId) -> String {
    format!("shard-{shard_id}.snap")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::state_machine::command::CommandBody;
    use crate::state_machine::command::LogCommand;
    use crate::state_machine::command::Operation;
    use crate::state_machine::command::SaleRules;

    /// A shard image with a SKU and a few purchases, applied at indexes 1 and 2.
    pub(crate) fn sample_image() -> ShardImage {
        let mut image = ShardImage::default();
        let commands = [
            CommandBody::Batch(vec![Operation::PutSku {
                sku: b"x".to_vec(),
                total: 10,
                rules: SaleRules::default(),
            }]),
            CommandBody::Batch(
                (0..3)
                    .map(|n| Operation::Purchase {
                        sku: b"x".to_vec(),
                        qty: 1,
                        user: format!("u{n}"),
                        order_id: format!("o{n}"),
                        first_attempt_ms: 2,
                    })
                    .collect(),
            ),
        ];
        for (index, body) in (1..).zip(commands) {
            let command = LogCommand {
                timestamp_ms: index,
                body,
            };
            image.ledger.apply(index, &command).expect("invariant holds");
            image.meta.applied = Some(openraft::testing::log_id::<crate::types::TypeConfig>(3, 1, index));
        }
        image
    }

    #[test]
    fn a_shard_backup_states_the_index_term_and_digest_of_its_image() {
        let image = sample_image();
        let backup = ShardBackup::of_image(7, &image.frozen()).expect("backs up");
        assert_eq!((backup.shard_id, backup.log_index, backup.log_term), (7, 2, 3));
        assert_eq!(backup.state_digest, image.ledger.digest());
        assert_eq!(backup.sha256, sha256(&backup.file));
        assert!(backup.file.starts_with(frame::MAGIC));
        let (meta, read) = read_shard_file(&backup.file).expect("reads back");
        assert_eq!(meta.last_log_id, image.meta.applied);
        assert_eq!(read.ledger, image.ledger);

        let mut flipped = backup.file.clone();
        let middle = flipped.len() / 2;
        flipped[middle] ^= 0x40;
        let error = read_shard_file(&flipped).expect_err("a flipped byte");
        assert!(error.to_string().contains("checksum mismatch"), "{error}");
        let error = read_shard_file(&backup.file[..backup.file.len() - 9]).expect_err("a cut file");
        assert!(error.to_string().contains("truncated"), "{error}");
    }
}
