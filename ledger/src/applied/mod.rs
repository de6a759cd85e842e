//! Node-local persistence of each shard's applied state: its latest snapshot.
//!
//! The applied state (SKU records, orders, holdings, unshipped order events) lives in memory,
//! in the state machine's [`ShardImage`]; applying an entry writes nothing to disk. The Raft log
//! (the WAL, fdatasynced before any answer) is the source of truth. Now and then (see
//! `RaftSection::snapshot_growth_percent`) a snapshot is due: a full image of the applied state at
//! one log id, built from the previous one and the log (`crate::raft::state_store`), saved here
//! durably (fdatasync, atomic replace). A restarted node starts
//! from its snapshot and openraft re-applies the log after it; the log is purged only up to a
//! snapshot that is already durable.
//!
//! Why not a key-value store written on every apply (sled, the first version): in the service
//! benchmark sled's `apply_batch` and its flusher took ~40 % of each node's CPU, and sled's
//! `flush` is `sync_file_range`, which does not survive a power loss on a volatile disk cache,
//! while a snapshot that lets the log be purged is the only copy of what it covers
//! (docs/storage.md).

mod memory;
#[cfg(not(madsim))]
mod snapshot_file;

use std::sync::Arc;

use serde::Deserialize;
use serde::Serialize;

pub use memory::MemorySnapshots;
#[cfg(not(madsim))]
pub use snapshot_file::FileSnapshots;

use crate::raft::types::LogId;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::StoredMembership;
use crate::state_machine::state::LedgerState;

/// Failure of the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum AppliedStoreError {
    #[error("snapshot store: {0}")]
    Backend(String),
    #[error("applied state does not encode: {0}")]
    Encode(String),
    #[error("snapshot {what} does not decode: {message}")]
    Decode { what: String, message: String },
    #[error("building a snapshot from the latest one and the log: {0}")]
    Replay(String),
}

impl From<AppliedStoreError> for std::io::Error {
    fn from(error: AppliedStoreError) -> Self {
        std::io::Error::other(error.to_string())
    }
}

/// Where one shard's latest snapshot is kept: a file on a real node, memory in the simulator.
pub trait SnapshotBackend: Send + Sync + 'static {
    /// Replaces the stored snapshot with `bytes`; durable and atomic when it returns (a crash
    /// leaves the old snapshot or the new one, never a mix).
    fn save(&self, bytes: &[u8]) -> Result<(), AppliedStoreError>;
    /// The stored snapshot, if one was ever saved.
    fn load(&self) -> Result<Option<Vec<u8>>, AppliedStoreError>;
}

/// What Raft needs besides the ledger: how far it applied and the membership.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppliedMeta {
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// A shard's full applied state, as kept in memory and carried in a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardImage {
    pub meta: AppliedMeta,
    pub ledger: LedgerState,
}

/// The latest snapshot: its metadata and the encoded [`ShardImage`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

/// Typed access to one shard's snapshot over a [`SnapshotBackend`].
#[derive(Clone)]
pub struct AppliedStore {
    backend: Arc<dyn SnapshotBackend>,
}

impl AppliedStore {
    pub fn new(backend: Arc<dyn SnapshotBackend>) -> Self {
        AppliedStore { backend }
    }

    /// The state to start from: the latest snapshot's image, or the empty state.
    pub fn load(&self) -> Result<ShardImage, AppliedStoreError> {
        match self.load_snapshot()? {
            Some(stored) => decode_image(&stored.data),
            None => Ok(ShardImage::default()),
        }
    }

    /// Saves `snapshot` durably. Blocking (encoding and fdatasync of the whole state): call it
    /// off the async workers (see `ShardStateMachine`).
    pub fn save_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), AppliedStoreError> {
        self.backend.save(&encode(snapshot)?)
    }

    pub fn load_snapshot(&self) -> Result<Option<StoredSnapshot>, AppliedStoreError> {
        match self.backend.load()? {
            Some(bytes) => Ok(Some(decode("record", &bytes)?)),
            None => Ok(None),
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, AppliedStoreError> {
    bincode::serialize(value).map_err(|e| AppliedStoreError::Encode(e.to_string()))
}

fn decode<T: for<'de> Deserialize<'de>>(what: &str, bytes: &[u8]) -> Result<T, AppliedStoreError> {
    bincode::deserialize(bytes).map_err(|e| AppliedStoreError::Decode {
        what: what.to_string(),
        message: e.to_string(),
    })
}

/// Encodes a snapshot image.
pub fn encode_image(image: &ShardImage) -> Result<Vec<u8>, AppliedStoreError> {
    encode(image)
}

/// Decodes a snapshot image; a received snapshot that does not decode is a data error.
pub fn decode_image(bytes: &[u8]) -> Result<ShardImage, AppliedStoreError> {
    let mut image: ShardImage = decode("image", bytes)?;
    image.ledger.rebuild_indexes();
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::command::CommandBody;
    use crate::state_machine::command::LogCommand;
    use crate::state_machine::command::Operation;
    use crate::state_machine::command::SaleRules;

    fn apply(image: &mut ShardImage, index: u64, body: CommandBody) {
        let command = LogCommand {
            timestamp_ms: index,
            body,
        };
        image.ledger.apply(index, &command).expect("invariant holds");
        image.meta.applied = Some(openraft::testing::log_id::<crate::raft::types::TypeConfig>(1, 1, index));
    }

    fn snapshot_of(image: &ShardImage) -> StoredSnapshot {
        StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: image.meta.applied,
                last_membership: image.meta.membership.clone(),
            },
            data: encode_image(image).expect("encode"),
        }
    }

    #[test]
    fn a_saved_snapshot_loads_as_the_same_state_with_its_indexes_rebuilt() {
        let store = AppliedStore::new(Arc::new(MemorySnapshots::default()));
        assert!(store.load_snapshot().expect("load").is_none());
        let mut image = ShardImage::default();
        let put = Operation::PutSku {
            sku: b"x".to_vec(),
            total: 10,
            rules: SaleRules::default(),
        };
        apply(&mut image, 1, CommandBody::Batch(vec![put]));
        let reserve = Operation::Reserve {
            sku: b"x".to_vec(),
            qty: 2,
            user: "u".into(),
            order_id: "r1".into(),
            ttl_ms: 5_000,
        };
        let buys = (0..5).map(|n| Operation::Purchase {
            sku: b"x".to_vec(),
            qty: 1,
            user: "u".into(),
            order_id: format!("o{n}"),
        });
        apply(
            &mut image,
            2,
            CommandBody::Batch(std::iter::once(reserve).chain(buys).collect()),
        );
        apply(
            &mut image,
            3,
            CommandBody::Shipped {
                below_seq: 3,
                shipper: 2,
            },
        );
        store.save_snapshot(&snapshot_of(&image)).expect("save");

        let loaded = store.load().expect("load");
        assert_eq!(loaded.ledger, image.ledger);
        assert_eq!(loaded.meta.applied, image.meta.applied);
        assert_eq!(
            loaded.ledger.order_events.keys().copied().collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert_eq!((loaded.ledger.shipped_below_seq, loaded.ledger.shipped_by), (3, 2));
        // The reservation's expiry is derived state: rebuilt, so it still expires.
        assert_eq!(loaded.ledger.next_expiry_ms(), Some(2 + 5_000));
    }
}
