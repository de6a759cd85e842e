//! Node-local persistence of each shard's applied state: its latest snapshot.
//!
//! The applied state (SKU records, orders, holdings, unshipped order events) lives in memory,
//! in the state machine's [`ShardImage`]; applying an entry writes nothing to disk. The Raft log
//! (the WAL, fdatasynced before any answer) is the source of truth. Now and then (see
//! `RaftSection::snapshot_growth_percent`) a snapshot is due: a full image of the applied state at
//! one log id, forked from the live state (`raft/state_store.rs`) and streamed here
//! durably (fdatasync, atomic replace, the previous one kept). A restarted node starts
//! from its snapshot and openraft re-applies the log after it; the log is purged only up to a
//! snapshot that is already durable.
//!
//! Why not a key-value store (sled, the first version, written on every apply): in the service
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

use crate::state_machine::state::FrozenLedger;
use crate::state_machine::state::LedgerState;
use crate::types::LogId;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;

/// Failure of the snapshot store.
#[derive(Debug, thiserror::Error)]
pub enum AppliedStoreError {
    #[error("snapshot store: {0}")]
    Backend(String),
    #[error("applied state does not encode: {0}")]
    Encode(String),
    #[error("snapshot {what} does not decode: {message}")]
    Decode { what: String, message: String },
}

impl From<AppliedStoreError> for std::io::Error {
    fn from(error: AppliedStoreError) -> Self {
        std::io::Error::other(error.to_string())
    }
}

/// Where one shard's latest snapshot is kept: a file on a real node, memory in the simulator.
pub trait SnapshotBackend: Send + Sync + 'static {
    /// Replaces the stored snapshot with the `length` bytes `write` writes; durable and atomic
    /// when it returns (a crash leaves the old snapshot or the new one, never a mix). The
    /// snapshot it replaces is kept as the previous one. Streamed, so that a snapshot of hundreds
    /// of MB is never put together in memory just to be written; writing other than `length`
    /// bytes is an error and leaves the stored snapshots as they were.
    fn save_streamed(&self, length: u64, write: &mut StreamWriter<'_>) -> Result<(), AppliedStoreError>;

    /// [`SnapshotBackend::save_streamed`] of the concatenation of `parts`.
    fn save(&self, parts: &[&[u8]]) -> Result<(), AppliedStoreError> {
        let length = parts.iter().map(|part| part.len() as u64).sum();
        self.save_streamed(length, &mut |out: &mut dyn std::io::Write| {
            parts.iter().try_for_each(|part| out.write_all(part))
        })
    }
    /// The stored snapshot, if one was ever saved; a damaged one is an error
    /// ([`AppliedStoreError::Decode`]).
    fn load(&self) -> Result<Option<Vec<u8>>, AppliedStoreError>;
    /// The snapshot the latest one replaced, if any.
    fn load_previous(&self) -> Result<Option<Vec<u8>>, AppliedStoreError>;
}

/// Writes a snapshot's bytes into the writer it is given.
pub type StreamWriter<'a> = dyn FnMut(&mut dyn std::io::Write) -> std::io::Result<()> + 'a;

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

    /// The state to start from: the latest snapshot's image, or the empty state. A damaged
    /// latest snapshot (torn, bit-flipped, undecodable) is reported and the previous one used
    /// instead; the node then checks that its log still holds every entry after it
    /// (`node::Node::start`).
    pub fn load(&self) -> Result<ShardImage, AppliedStoreError> {
        match self.load_stored()? {
            Some(stored) => decode_image(&stored.data),
            None => Ok(ShardImage::default()),
        }
    }

    /// Saves `snapshot` durably. Blocking (fdatasync of the whole state): call it off the async
    /// workers (see `ShardStateMachine`). Stored as `bincode(StoredSnapshot)`, written as its
    /// parts: the metadata, the data's length, the data.
    pub fn save_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), AppliedStoreError> {
        let meta = encode(&snapshot.meta)?;
        let data_len = (snapshot.data.len() as u64).to_le_bytes();
        self.backend.save(&[&meta, &data_len, &snapshot.data])
    }

    /// Saves `image` as a snapshot described by `meta`, encoding it straight into the store
    /// (the same bytes as [`AppliedStore::save_snapshot`] of its encoding): no buffer of the
    /// whole snapshot. Blocking. Returns the image's encoded size.
    pub fn save_image(&self, meta: &SnapshotMeta, image: &FrozenImage) -> Result<u64, AppliedStoreError> {
        let meta = encode(meta)?;
        let data_len = bincode::serialized_size(image).map_err(|e| AppliedStoreError::Encode(e.to_string()))?;
        let length = meta.len() as u64 + 8 + data_len;
        self.backend
            .save_streamed(length, &mut |out: &mut dyn std::io::Write| {
                out.write_all(&meta)?;
                out.write_all(&data_len.to_le_bytes())?;
                bincode::serialize_into(&mut *out, image).map_err(std::io::Error::other)
            })?;
        Ok(data_len)
    }

    /// The latest snapshot that is whole: the latest one, or the previous one if the latest is
    /// damaged (see [`AppliedStore::load`]).
    pub fn load_snapshot(&self) -> Result<Option<StoredSnapshot>, AppliedStoreError> {
        self.load_stored()
    }

    fn load_stored(&self) -> Result<Option<StoredSnapshot>, AppliedStoreError> {
        let latest = self.backend.load().and_then(|bytes| bytes.map(stored_of).transpose());
        let damage = match latest {
            Err(damage @ AppliedStoreError::Decode { .. }) => damage,
            other => return other,
        };
        let previous = self
            .backend
            .load_previous()
            .and_then(|bytes| bytes.map(stored_of).transpose());
        match previous {
            Ok(Some(stored)) => {
                tracing::error!(%damage, previous = ?stored.meta.last_log_id,
                    "the latest snapshot is damaged; starting from the previous one");
                Ok(Some(stored))
            }
            Ok(None) => Err(damage),
            Err(also) => Err(AppliedStoreError::Decode {
                what: "latest and previous snapshots".into(),
                message: format!("{damage}; {also}"),
            }),
        }
    }
}

/// A stored snapshot from the bytes of its record; the image keeps the buffer it was read into.
fn stored_of(mut bytes: Vec<u8>) -> Result<StoredSnapshot, AppliedStoreError> {
    let (meta, data) = split_stored(&bytes)?;
    let data_start = bytes.len() - data.len();
    bytes.drain(..data_start);
    Ok(StoredSnapshot { meta, data: bytes })
}

/// A stored snapshot's metadata and the encoded image it carries, without copying the image
/// (serde would decode the `Vec<u8>` one byte at a time: it was a visible part of every build).
fn split_stored(bytes: &[u8]) -> Result<(SnapshotMeta, &[u8]), AppliedStoreError> {
    let damaged = |message: String| AppliedStoreError::Decode {
        what: "record".to_string(),
        message,
    };
    let mut rest = bytes;
    let meta: SnapshotMeta = bincode::deserialize_from(&mut rest).map_err(|e| damaged(e.to_string()))?;
    let Some((data_len, data)) = rest.split_first_chunk::<8>() else {
        return Err(damaged("no image length".to_string()));
    };
    let data_len = u64::from_le_bytes(*data_len);
    if data.len() as u64 != data_len {
        return Err(damaged(format!(
            "image of {data_len} bytes announced, {} stored",
            data.len()
        )));
    }
    Ok((meta, data))
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

/// A [`ShardImage`] frozen for a snapshot (`ShardImage::frozen`): encodes to the same bytes.
#[derive(Debug, Clone, Serialize)]
pub struct FrozenImage {
    pub meta: AppliedMeta,
    pub ledger: FrozenLedger,
}

impl FrozenImage {
    /// Records that grow with the orders taken (as `LedgerState::records`).
    pub fn records(&self) -> u64 {
        let orders: usize = self.ledger.orders.chunks.iter().map(|chunk| chunk.records.len()).sum();
        let holders: usize = self.ledger.holdings.iter().map(|(_, holders)| holders.len()).sum();
        (orders + holders + self.ledger.order_events.len()) as u64
    }
}

impl ShardImage {
    /// The image as it is now, sharing the order records (see `LedgerState::frozen`).
    pub fn frozen(&self) -> FrozenImage {
        FrozenImage {
            meta: self.meta.clone(),
            ledger: self.ledger.frozen(),
        }
    }
}

/// Encodes a snapshot image into a buffer of exactly its size (tests; snapshots are streamed
/// into the store by [`AppliedStore::save_image`]).
#[cfg(test)]
pub fn encode_image(image: &FrozenImage) -> Result<Vec<u8>, AppliedStoreError> {
    let size = bincode::serialized_size(image).map_err(|e| AppliedStoreError::Encode(e.to_string()))?;
    let mut bytes = Vec::with_capacity(size as usize);
    bincode::serialize_into(&mut bytes, image).map_err(|e| AppliedStoreError::Encode(e.to_string()))?;
    Ok(bytes)
}

/// Decodes a snapshot image; a received snapshot that does not decode is a data error.
pub fn decode_image(bytes: &[u8]) -> Result<ShardImage, AppliedStoreError> {
    decode("image", bytes)
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
        image.meta.applied = Some(openraft::testing::log_id::<crate::types::TypeConfig>(1, 1, index));
    }

    fn put_sku(sku: &[u8], total: u64) -> CommandBody {
        CommandBody::Batch(vec![Operation::PutSku {
            sku: sku.to_vec(),
            total,
            rules: SaleRules::default(),
        }])
    }

    fn snapshot_of(image: &ShardImage) -> StoredSnapshot {
        StoredSnapshot {
            meta: SnapshotMeta {
                last_log_id: image.meta.applied,
                last_membership: image.meta.membership.clone(),
            },
            data: encode_image(&image.frozen()).expect("encode"),
        }
    }

    #[test]
    fn a_saved_snapshot_loads_as_the_same_state() {
        let store = AppliedStore::new(Arc::new(MemorySnapshots::default()));
        assert!(store.load_snapshot().expect("load").is_none());
        let mut image = ShardImage::default();
        apply(&mut image, 1, put_sku(b"x", 10));
        let reserve = Operation::Reserve {
            sku: b"x".to_vec(),
            qty: 2,
            user: "u".into(),
            order_id: "r1".into(),
            ttl_ms: 5_000,
            first_attempt_ms: 2,
        };
        let buys = (0..5).map(|n| Operation::Purchase {
            sku: b"x".to_vec(),
            qty: 1,
            user: "u".into(),
            order_id: format!("o{n}"),
            first_attempt_ms: 2,
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
        // The reservation is kept with the state, so it still expires.
        assert_eq!(loaded.ledger.next_expiry_ms(), Some(2 + 5_000));
    }

    #[test]
    fn a_torn_latest_snapshot_is_detected_and_the_previous_one_used() {
        let backend = Arc::new(MemorySnapshots::default());
        let store = AppliedStore::new(backend.clone());
        let mut image = ShardImage::default();
        apply(&mut image, 1, put_sku(b"x", 10));
        store.save_snapshot(&snapshot_of(&image)).expect("save");
        let previous = image.clone();
        apply(&mut image, 2, put_sku(b"y", 5));
        store.save_snapshot(&snapshot_of(&image)).expect("save");
        assert_eq!(store.load().expect("load").ledger, image.ledger);

        backend.tear_latest();
        let loaded = store.load().expect("the previous snapshot is used");
        assert_eq!(loaded.ledger, previous.ledger);
        assert_eq!(loaded.meta.applied, previous.meta.applied);
        let stored = store.load_snapshot().expect("load").expect("a snapshot");
        assert_eq!(stored.meta.last_log_id, previous.meta.applied);

        // With no previous snapshot to fall back on, the damage is an error, never an empty state.
        let lone = Arc::new(MemorySnapshots::default());
        let store = AppliedStore::new(lone.clone());
        store.save_snapshot(&snapshot_of(&image)).expect("save");
        lone.tear_latest();
        assert!(matches!(store.load(), Err(AppliedStoreError::Decode { .. })));
    }

    #[test]
    fn a_snapshot_is_stored_as_bincode_of_the_record_and_read_back_whole() {
        let backend = Arc::new(MemorySnapshots::default());
        let store = AppliedStore::new(backend.clone());
        let mut image = ShardImage::default();
        apply(&mut image, 7, put_sku(b"y", 3));
        let snapshot = snapshot_of(&image);
        assert_eq!(
            snapshot.data.len() as u64,
            bincode::serialized_size(&image).expect("sized")
        );
        store.save_snapshot(&snapshot).expect("save");
        // Written in parts, stored as one record: files saved before stay readable.
        assert_eq!(
            backend.load().expect("load"),
            Some(bincode::serialize(&snapshot).expect("encode"))
        );
        let loaded = store.load_snapshot().expect("load").expect("saved");
        assert_eq!(loaded.meta, snapshot.meta);
        assert_eq!(loaded.data, snapshot.data);
        // Streamed straight from the image: the same bytes.
        let streamed = Arc::new(MemorySnapshots::default());
        let size = AppliedStore::new(streamed.clone())
            .save_image(&snapshot.meta, &image.frozen())
            .expect("save");
        assert_eq!(size, snapshot.data.len() as u64);
        assert_eq!(streamed.load().expect("load"), backend.load().expect("load"));

        // A record whose image is shorter than its length says is damaged, not half-loaded.
        // (Saved alone: with a previous snapshot the store would fall back to it.)
        let mut cut = bincode::serialize(&snapshot).expect("encode");
        cut.pop();
        let alone = Arc::new(MemorySnapshots::default());
        alone.save(&[&cut]).expect("save");
        let error = AppliedStore::new(alone).load().expect_err("a cut image is caught");
        assert!(error.to_string().contains("announced"), "{error}");
    }
}
