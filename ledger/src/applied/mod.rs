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

pub mod frame;
mod memory;
mod merge;
#[cfg(not(madsim))]
mod snapshot_file;

use std::sync::Arc;

use serde::Deserialize;
use serde::Serialize;

pub use memory::MemorySnapshots;
#[cfg(not(madsim))]
pub use snapshot_file::FileSnapshots;

use crate::meta::map::ShardMap;
use crate::state_machine::orders::Chunk;
use crate::state_machine::state::FrozenLedger;
use crate::state_machine::state::LedgerState;
use crate::types::LogId;
use crate::types::SnapshotMeta;
use crate::types::StoredMembership;

/// Where a node whose data directory is `data_dir` keeps its shards' snapshots.
pub fn snapshot_dir(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("snapshots")
}

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
    /// Stores an order chunk under `id` (replacing one with that id atomically); durable once
    /// the next snapshot record is saved.
    fn save_chunk(&self, id: u64, bytes: &[u8]) -> Result<(), AppliedStoreError>;
    /// The order chunk stored under `id`; a damaged one is an error ([`AppliedStoreError::Decode`]).
    fn load_chunk(&self, id: u64) -> Result<Option<Vec<u8>>, AppliedStoreError>;
    /// Deletes every stored order chunk whose id is not in `keep`.
    fn keep_chunks(&self, keep: &std::collections::BTreeSet<u64>) -> Result<(), AppliedStoreError>;
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
    /// The shard map (shard 0, the meta group, only; empty on data shards).
    pub map: ShardMap,
    /// The SKUs this replica may apply operations for, and the range's epoch.
    pub bounds: ShardBounds,
}

/// The SKU range a data shard's log may still change, as its own log says: a `Split` entry
/// narrows it (and bumps the epoch) at one log index on every replica, so an operation routed
/// by an older map and applied after the split is refused by every replica alike
/// ([`crate::state_machine::command::Outcome::WrongShard`]) instead of selling units that now
/// belong to the other half. A shard never split is unbounded: the shard map routes to it.
/// A merge freezes the right shard (it then contains nothing) and widens the left one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardBounds {
    /// Lowest SKU (inclusive); empty: no lower bound.
    pub start: Vec<u8>,
    /// First SKU above the range; `None`: no upper bound.
    pub end: Option<Vec<u8>>,
    /// Bumped by every split, as the shard map bumps the range's epoch when it records it.
    pub epoch: u64,
    /// The shards split off this one, oldest first: a split proposed again (a meta leader that
    /// crashed before recording it retries) is recognised and answered as done.
    pub split_off: Vec<(crate::types::ShardId, Vec<u8>)>,
    /// Set by a `Freeze` entry: the shard this one is being merged into. A frozen shard
    /// applies no operation (its state is carried into that shard as it is).
    pub frozen_into: Option<crate::types::ShardId>,
    /// The shards merged into this one, oldest first: a merge proposed again is answered done.
    pub merged: Vec<crate::types::ShardId>,
}

impl Default for ShardBounds {
    fn default() -> Self {
        ShardBounds {
            start: Vec::new(),
            end: None,
            epoch: 1,
            split_off: Vec::new(),
            frozen_into: None,
            merged: Vec::new(),
        }
    }
}

impl ShardBounds {
    pub fn contains(&self, sku: &[u8]) -> bool {
        (self.frozen_into.is_none() || frozen_shard_serves())
            && sku >= self.start.as_slice()
            && self.end.as_deref().is_none_or(|end| sku < end)
    }

    /// Whether `at` splits the range into two non-empty halves.
    pub fn splits_at(&self, at: &[u8]) -> bool {
        at > self.start.as_slice() && self.end.as_deref().is_none_or(|end| at < end)
    }
}

/// Whether a frozen shard goes on serving (the simulator's planted bug; never in production).
pub(crate) fn frozen_shard_serves() -> bool {
    #[cfg(madsim)]
    return crate::simulation::planted(crate::simulation::PlantedBug::FrozenShardServes);
    #[cfg(not(madsim))]
    false
}

/// The latest snapshot: its metadata and the encoded [`ShardImage`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

/// Typed access to one shard's snapshot over a [`SnapshotBackend`]: incremental checkpoints.
///
/// A snapshot is stored as a manifest (the backend's snapshot record: the metadata, everything
/// but the order records, and the list of order chunks by id) and one stored chunk per order
/// chunk. A checkpoint writes only the chunks that changed since the last one: the store keeps
/// the chunks (`Arc`s) it last wrote, so any write to one of them since copied it (copy on
/// write, `OrderBook::get_mut`), and a chunk still pointer-equal to one it wrote is unchanged.
/// Purchases only append; reservations change within minutes: a checkpoint writes the newest
/// chunks, not the whole state. Chunks are deleted once neither the latest nor the previous
/// manifest names them.
#[derive(Clone)]
pub struct AppliedStore {
    backend: Arc<dyn SnapshotBackend>,
    /// The chunks of the latest manifest this store wrote or loaded, with their ids.
    written: Arc<std::sync::Mutex<WrittenChunks>>,
}

/// Order chunks as a checkpoint wrote them: the very `Arc`s, and where they are stored.
type WrittenChunks = Vec<(Arc<Chunk>, ChunkRef)>;

/// An order chunk as a manifest names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    pub id: u64,
    pub records: u32,
}

/// What the snapshot record holds: the image without its order records, and the chunks that
/// hold them, in order.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    image: FrozenImage,
    chunks: Vec<ChunkRef>,
}

impl AppliedStore {
    pub fn new(backend: Arc<dyn SnapshotBackend>) -> Self {
        AppliedStore {
            backend,
            written: Arc::default(),
        }
    }

    /// The state to start from: the latest snapshot's image, or the empty state. A damaged
    /// latest snapshot (torn, bit-flipped, undecodable, a chunk missing or damaged) is reported
    /// and the previous one used instead; the node then checks that its log still holds every
    /// entry after it (`node::Node::start`). The chunks loaded count as written: the next
    /// checkpoint writes only what changes after this.
    pub fn load(&self) -> Result<ShardImage, AppliedStoreError> {
        let Some((_, image, refs)) = self.load_latest_whole()? else {
            return Ok(ShardImage::default());
        };
        *lock(&self.written) = image.ledger.orders.chunks.iter().cloned().zip(refs).collect();
        let FrozenImage {
            meta,
            ledger,
            map,
            bounds,
        } = image;
        let ledger = LedgerState::from_frozen(ledger).map_err(|message| AppliedStoreError::Decode {
            what: "snapshot".into(),
            message,
        })?;
        Ok(ShardImage {
            meta,
            ledger,
            map,
            bounds,
        })
    }

    /// Saves a snapshot received whole, as one encoded image. Blocking.
    pub fn save_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), AppliedStoreError> {
        let image = decode_image(&snapshot.data)?;
        self.save_image(&snapshot.meta, &image.frozen()).map(|_| ())
    }

    /// Saves `image` (a fork of the live state) as a checkpoint described by `meta`: the chunks
    /// that changed since the last checkpoint, then the manifest. Blocking. Returns the bytes
    /// written.
    pub fn save_image(&self, meta: &SnapshotMeta, image: &FrozenImage) -> Result<u64, AppliedStoreError> {
        let mut written = lock(&self.written);
        // The chunks the last checkpoint wrote, by address (an `Arc` it holds cannot move).
        let unchanged: std::collections::HashMap<*const Chunk, ChunkRef> = written
            .iter()
            .map(|(chunk, kept)| (Arc::as_ptr(chunk), *kept))
            .collect();
        let generation = meta.last_log_id.map_or(0, |id| id.index);
        let mut refs = Vec::with_capacity(image.ledger.orders.chunks.len());
        let mut bytes = 0u64;
        for (position, chunk) in image.ledger.orders.chunks.iter().enumerate() {
            if let Some(kept) = unchanged.get(&Arc::as_ptr(chunk)) {
                refs.push(*kept);
                continue;
            }
            // Unique per checkpoint and position; a checkpoint at the same index again writes
            // the same bytes under the same id (atomically replaced by the backend).
            let id = (generation << 20) | position as u64;
            let encoded = encode(&**chunk)?;
            bytes += encoded.len() as u64;
            self.backend.save_chunk(id, &encoded)?;
            refs.push(ChunkRef {
                id,
                records: chunk.records.len() as u32,
            });
        }
        let manifest = Manifest {
            image: without_orders(image),
            chunks: refs.clone(),
        };
        let meta_bytes = encode(meta)?;
        let manifest_bytes = encode(&manifest)?;
        bytes += (meta_bytes.len() + manifest_bytes.len()) as u64;
        self.backend.save(&[
            &meta_bytes,
            &(manifest_bytes.len() as u64).to_le_bytes(),
            &manifest_bytes,
        ])?;
        // The manifest just replaced is now the previous one: its chunks stay for a fallback.
        let keep: std::collections::BTreeSet<u64> = refs
            .iter()
            .chain(written.iter().map(|(_, old)| old))
            .map(|r| r.id)
            .collect();
        self.backend.keep_chunks(&keep)?;
        *written = image.ledger.orders.chunks.iter().cloned().zip(refs).collect();
        Ok(bytes)
    }

    /// The latest snapshot that is whole, as one encoded image (for a lagging replica): the
    /// latest one, or the previous one if the latest is damaged (see [`AppliedStore::load`]).
    pub fn load_snapshot(&self) -> Result<Option<StoredSnapshot>, AppliedStoreError> {
        let Some((meta, image, _)) = self.load_latest_whole()? else {
            return Ok(None);
        };
        let data = bincode::serialize(&image).map_err(|e| AppliedStoreError::Encode(e.to_string()))?;
        Ok(Some(StoredSnapshot { meta, data }))
    }

    /// The latest checkpoint with its chunks, else the previous one if the latest is damaged.
    fn load_latest_whole(&self) -> Result<Option<(SnapshotMeta, FrozenImage, Vec<ChunkRef>)>, AppliedStoreError> {
        let latest = self
            .backend
            .load()
            .and_then(|bytes| bytes.map(|b| self.assemble(b)).transpose());
        let damage = match latest {
            Err(damage @ AppliedStoreError::Decode { .. }) => damage,
            other => return other,
        };
        let previous = self
            .backend
            .load_previous()
            .and_then(|bytes| bytes.map(|b| self.assemble(b)).transpose());
        match previous {
            Ok(Some(whole)) => {
                tracing::error!(%damage, previous = ?whole.0.last_log_id,
                    "the latest snapshot is damaged; starting from the previous one");
                Ok(Some(whole))
            }
            Ok(None) => Err(damage),
            Err(also) => Err(AppliedStoreError::Decode {
                what: "latest and previous snapshots".into(),
                message: format!("{damage}; {also}"),
            }),
        }
    }

    /// A manifest record read with the chunks it names, put together.
    fn assemble(&self, record: Vec<u8>) -> Result<(SnapshotMeta, FrozenImage, Vec<ChunkRef>), AppliedStoreError> {
        let stored = stored_of(record)?;
        let Manifest { mut image, chunks } = decode("manifest", &stored.data)?;
        for chunk_ref in &chunks {
            let damaged = |message: String| AppliedStoreError::Decode {
                what: format!("order chunk {}", chunk_ref.id),
                message,
            };
            let bytes = self
                .backend
                .load_chunk(chunk_ref.id)?
                .ok_or_else(|| damaged("missing".into()))?;
            let chunk: Chunk = decode(&format!("order chunk {}", chunk_ref.id), &bytes)?;
            if chunk.records.len() != chunk_ref.records as usize {
                return Err(damaged(format!(
                    "{} records, the manifest says {}",
                    chunk.records.len(),
                    chunk_ref.records
                )));
            }
            image.ledger.orders.chunks.push(Arc::new(chunk));
        }
        Ok((stored.meta, image, chunks))
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// `image` without its order records (their chunks are stored apart).
fn without_orders(image: &FrozenImage) -> FrozenImage {
    let mut bare = FrozenImage {
        meta: image.meta.clone(),
        ledger: image.ledger.clone(),
        map: image.map.clone(),
        bounds: image.bounds.clone(),
    };
    bare.ledger.orders.chunks = Vec::new();
    bare
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
    use bincode::Options;
    let damaged = |message: String| AppliedStoreError::Decode {
        what: "record".to_string(),
        message,
    };
    let mut rest = bytes;
    // Read as a stream, to learn where the image starts; limited to the record's size, because
    // a stream reader allocates the length a string claims before reading it (the `snapshot`
    // fuzz target found a damaged length asking for 2^56 bytes, which aborted the node).
    let meta: SnapshotMeta = bincode::options()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(bytes.len() as u64)
        .deserialize_from(&mut rest)
        .map_err(|e| damaged(e.to_string()))?;
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrozenImage {
    pub meta: AppliedMeta,
    pub ledger: FrozenLedger,
    pub map: ShardMap,
    pub bounds: ShardBounds,
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
            map: self.map.clone(),
            bounds: self.bounds.clone(),
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

/// A whole snapshot as one record: its metadata, the image's length, the image with its order
/// records inline (the layout of the snapshot record `AppliedStore::save_image` writes, whose
/// image keeps its orders in chunks apart). What a backup's shard file holds, framed.
pub fn encode_whole_record(meta: &SnapshotMeta, image: &FrozenImage) -> Result<Vec<u8>, AppliedStoreError> {
    let meta_bytes = encode(meta)?;
    let image_bytes = bincode::serialized_size(image).map_err(|e| AppliedStoreError::Encode(e.to_string()))?;
    let mut record = Vec::with_capacity(meta_bytes.len() + 8 + image_bytes as usize);
    record.extend_from_slice(&meta_bytes);
    record.extend_from_slice(&image_bytes.to_le_bytes());
    bincode::serialize_into(&mut record, image).map_err(|e| AppliedStoreError::Encode(e.to_string()))?;
    Ok(record)
}

/// The metadata and the image of a record [`encode_whole_record`] made, checked as a received
/// snapshot is (the image's parts must fit together and keep the ledger's invariant).
pub fn decode_whole_record(record: &[u8]) -> Result<(SnapshotMeta, ShardImage), AppliedStoreError> {
    let (meta, image) = split_stored(record)?;
    Ok((meta, decode_image(image)?))
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
    fn a_checkpoint_reads_back_as_the_whole_image_and_a_cut_manifest_is_caught() {
        let backend = Arc::new(MemorySnapshots::default());
        let store = AppliedStore::new(backend.clone());
        let mut image = ShardImage::default();
        apply(&mut image, 7, put_sku(b"y", 3));
        let snapshot = snapshot_of(&image);
        store.save_snapshot(&snapshot).expect("save");
        // Stored as a manifest and chunks, read back as the one encoded image a replica gets.
        let loaded = store.load_snapshot().expect("load").expect("saved");
        assert_eq!(loaded.meta, snapshot.meta);
        assert_eq!(loaded.data, snapshot.data);

        // A manifest whose image is shorter than its length says is damaged, not half-loaded.
        let mut cut = backend.load().expect("load").expect("saved");
        cut.pop();
        let alone = Arc::new(MemorySnapshots::default());
        alone.save(&[&cut]).expect("save");
        let error = AppliedStore::new(alone).load().expect_err("a cut manifest is caught");
        assert!(error.to_string().contains("announced"), "{error}");
    }

    /// Found by the `snapshot` fuzz target (docs/security.md, "Fuzzing"): the metadata before
    /// a manifest's image was read from a stream, which allocates the length a string claims
    /// before reading it: a damaged length (here a node address's) asked for 2^56 bytes and
    /// aborted the node instead of reporting the snapshot damaged.
    #[test]
    fn a_manifest_whose_metadata_claims_a_huge_string_is_damaged_not_allocated() {
        let backend = Arc::new(MemorySnapshots::default());
        let mut image = ShardImage::default();
        apply(&mut image, 1, put_sku(b"x", 3));
        let nodes = std::collections::BTreeMap::from([(1, openraft::BasicNode::new("localhost:7101"))]);
        let membership = openraft::Membership::new(vec![[1].into()], nodes).expect("membership");
        image.meta.membership = StoredMembership::new(image.meta.applied, membership);
        AppliedStore::new(backend.clone())
            .save_snapshot(&snapshot_of(&image))
            .expect("save");
        let mut record = backend.load().expect("load").expect("saved");
        let address = b"localhost:7101";
        let at = record
            .windows(address.len())
            .position(|window| window == address)
            .expect("the address is in the metadata");
        record[at - 8..at].copy_from_slice(&(1u64 << 56).to_le_bytes());
        let damaged = Arc::new(MemorySnapshots::default());
        damaged.save(&[&record]).expect("save");
        let error = AppliedStore::new(damaged).load().expect_err("the record is damaged");
        assert!(matches!(error, AppliedStoreError::Decode { .. }), "{error}");
    }

    /// Found by the `snapshot` fuzz target (docs/security.md, "Fuzzing"): an image whose SKU
    /// breaks `available + reserved + sold == total` decoded, and a replica would have started
    /// (or installed a lagging replica's snapshot) from a broken ledger and served its counts.
    #[test]
    fn an_image_whose_sku_breaks_the_invariant_does_not_decode() {
        let mut image = ShardImage::default();
        apply(&mut image, 1, put_sku(b"x", 10));
        let mut frozen = image.frozen();
        frozen.ledger.skus.get_mut(b"x".as_slice()).expect("the sku").reserved = 2_449_473_537;
        let error = decode_image(&encode_image(&frozen).expect("encode")).expect_err("a broken ledger");
        assert!(error.to_string().contains("reserved 2449473537"), "{error}");
    }

    /// An image with a live reservation of 2 units of "x" (order "r1", sequence number 0).
    fn image_with_a_reservation() -> ShardImage {
        let mut image = ShardImage::default();
        apply(&mut image, 1, put_sku(b"x", 10));
        let reserve = Operation::Reserve {
            sku: b"x".to_vec(),
            qty: 2,
            user: "u".into(),
            order_id: "r1".into(),
            ttl_ms: 5_000,
            first_attempt_ms: 1,
        };
        apply(&mut image, 2, CommandBody::Batch(vec![reserve]));
        image
    }

    /// Found by the `snapshot` fuzz target (docs/security.md, "Fuzzing"), which runs a loaded
    /// state: a reservation naming an order the image does not retain decoded, and the next
    /// expiry sweep indexed past the order chunks (a panic).
    #[test]
    fn an_image_whose_reservation_names_no_reserved_order_does_not_decode() {
        let image = image_with_a_reservation();
        let mut frozen = image.frozen();
        let (key, reservation) = frozen.ledger.reservations.pop_first().expect("a reservation");
        let mut elsewhere = frozen.clone();
        elsewhere.ledger.reservations.insert((key.0, 7), reservation.clone());
        let error = decode_image(&encode_image(&elsewhere).expect("encode")).expect_err("no order 7");
        assert!(error.to_string().contains("not retained"), "{error}");
        frozen.ledger.reservations.insert((key.0 + 1, key.1), reservation);
        let error = decode_image(&encode_image(&frozen).expect("encode")).expect_err("another expiry");
        assert!(error.to_string().contains("Reserved until"), "{error}");
        assert!(decode_image(&encode_image(&image.frozen()).expect("encode")).is_ok());
    }

    /// Found by the `snapshot` fuzz target: order sequence numbers starting near `u64::MAX`
    /// decoded, and the next order overflowed counting on (a panic with overflow checks, a
    /// reused sequence number without); so did an event number of `u64::MAX`, which stands for
    /// "no event".
    #[test]
    fn an_image_whose_sequence_numbers_near_the_end_does_not_decode() {
        let image = image_with_a_reservation();
        let mut frozen = image.frozen();
        frozen.ledger.orders.first_seq = u64::MAX - 1;
        assert!(decode_image(&encode_image(&frozen).expect("encode")).is_err());
        frozen.ledger.orders.first_seq = 0;
        frozen.ledger.next_event_seq = u64::MAX;
        assert!(decode_image(&encode_image(&frozen).expect("encode")).is_err());
    }

    /// Checked with the findings above (not itself hit by the fuzzer): a holder of more units
    /// than any SKU may have would overflow the per-user limit's `held + qty`.
    #[test]
    fn an_image_whose_holder_holds_more_than_any_sku_does_not_decode() {
        use crate::state_machine::holders::Holder;
        use crate::state_machine::keys::UserKey;
        let mut frozen = image_with_a_reservation().frozen();
        let holder = Holder {
            user: UserKey([1, 1]),
            units: crate::state_machine::limits::TOTAL_MAX + 1,
        };
        frozen
            .ledger
            .holdings
            .push((crate::state_machine::orders::SkuId(0), vec![holder]));
        assert!(decode_image(&encode_image(&frozen).expect("encode")).is_err());
    }

    /// Found by the `snapshot` fuzz target: a state whose clock is near `u64::MAX` overflowed
    /// the next reservation's expiry (a panic); it saturates.
    #[test]
    fn a_reservation_at_the_end_of_time_expires_at_the_end_of_time() {
        let mut image = image_with_a_reservation();
        image.ledger.clock_ms = u64::MAX - 10;
        let reserve = Operation::Reserve {
            sku: b"x".to_vec(),
            qty: 1,
            user: "u".into(),
            order_id: "r2".into(),
            ttl_ms: 5_000,
            first_attempt_ms: u64::MAX - 10,
        };
        let command = LogCommand {
            timestamp_ms: u64::MAX - 10,
            body: CommandBody::Batch(vec![reserve]),
        };
        let (outcomes, _) = image.ledger.apply(3, &command).expect("applies");
        assert_eq!(
            outcomes,
            vec![crate::state_machine::command::Outcome::Reserved {
                expires_at_ms: u64::MAX
            }]
        );
    }

    /// `count` purchases of SKU "x", one entry, at log index `index`.
    fn purchases(image: &mut ShardImage, index: u64, first: u64, count: u64) {
        let buys = (first..first + count)
            .map(|n| Operation::Purchase {
                sku: b"x".to_vec(),
                qty: 1,
                user: "u".into(),
                order_id: format!("o{n}"),
                first_attempt_ms: index,
            })
            .collect();
        apply(image, index, CommandBody::Batch(buys));
    }

    #[test]
    fn a_checkpoint_writes_only_the_chunks_that_changed_since_the_last() {
        use crate::state_machine::orders::CHUNK_RECORDS;
        let backend = Arc::new(MemorySnapshots::default());
        let store = AppliedStore::new(backend.clone());
        let mut image = ShardImage::default();
        apply(&mut image, 1, put_sku(b"x", 1_000_000));
        let chunk = CHUNK_RECORDS as u64;
        purchases(&mut image, 2, 0, 3 * chunk);
        let save = |image: &ShardImage| {
            let meta = snapshot_of(image).meta;
            store.save_image(&meta, &image.frozen()).expect("save");
        };
        save(&image);
        assert_eq!(backend.chunk_saves(), 3);

        // Nothing changed: nothing but the manifest is written.
        save(&image);
        assert_eq!(backend.chunk_saves(), 3);

        // New orders fill a fourth chunk; the first three are kept as they are.
        purchases(&mut image, 3, 3 * chunk, 10);
        save(&image);
        assert_eq!(backend.chunk_saves(), 4);
        let loaded = store.load().expect("load");
        assert_eq!(loaded.ledger, image.ledger);

        // A restart's load counts as written: only the chunk a later write touches is written.
        let restarted = AppliedStore::new(backend.clone());
        let mut image = restarted.load().expect("load");
        purchases(&mut image, 4, 3 * chunk + 10, 5);
        let meta = snapshot_of(&image).meta;
        restarted.save_image(&meta, &image.frozen()).expect("save");
        assert_eq!(backend.chunk_saves(), 5);
        assert_eq!(restarted.load().expect("load").ledger, image.ledger);
        // Chunks no manifest names any more are deleted: 4 in use, the replaced tail kept for
        // the previous manifest.
        assert_eq!(backend.chunks_stored(), 5);
    }
}
