//! Where a node keeps its bytes: the WAL (Raft logs and votes of every shard) and each shard's
//! latest snapshot of its applied state. A real node uses files under its `data_dir`; the simulator hands every node a
//! [`MemoryDisk`] it owns, so a killed node restarts from exactly what it had synced.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;

use crate::applied::AppliedStore;
use crate::applied::FrozenImage;
use crate::applied::MemorySnapshots;
use crate::applied::SnapshotBackend;
use crate::raft::state_store::SplitSeeder;
use crate::storage::backend::MemoryBackend;
use crate::storage::log_store::ShardLogStore;
use crate::storage::wal::Wal;
use crate::storage::wal::WalOptions;
use crate::types::ShardId;
use crate::types::SnapshotMeta;

/// How a node stores its data.
#[derive(Clone)]
pub enum Storage {
    /// Files under the node's `data_dir`: `wal/` and `snapshots/` (both fdatasynced).
    Disk,
    /// The simulator's in-memory disk, owned by the harness so it outlives a node kill.
    Memory(Arc<MemoryDisk>),
}

/// An in-memory disk for one simulated node.
#[derive(Default)]
pub struct MemoryDisk {
    /// Clones share the same bytes (the backend is a handle).
    pub wal: MemoryBackend,
    snapshots: Mutex<BTreeMap<ShardId, Arc<MemorySnapshots>>>,
}

impl MemoryDisk {
    fn snapshots(&self, shard_id: ShardId) -> Arc<MemorySnapshots> {
        let mut snapshots = self.snapshots.lock().unwrap_or_else(|p| p.into_inner());
        snapshots.entry(shard_id).or_default().clone()
    }
}

/// Storage failed to open.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("data directory {path}: {message}")]
    DataDir { path: String, message: String },
    #[error("write-ahead log: {0}")]
    Wal(String),
    #[error("applied state: {0}")]
    Applied(String),
}

/// Storage opened for one node. Clones share everything.
#[derive(Clone)]
pub struct OpenedStorage {
    wal: Arc<Wal>,
    snapshots: SnapshotBackends,
    /// Shards whose storage a replica opened since the node started: a split's new half is
    /// seeded only into storage no replica has opened (see [`OpenedStorage::claim`]).
    claimed: Arc<Mutex<std::collections::BTreeSet<ShardId>>>,
    /// Shards a split seeded on this node since it started, until a replica of one starts.
    seeded: Arc<Mutex<std::collections::BTreeSet<ShardId>>>,
}

#[derive(Clone)]
enum SnapshotBackends {
    #[cfg(not(madsim))]
    Files(std::path::PathBuf),
    Memory(Arc<MemoryDisk>),
}

impl Storage {
    pub async fn open(&self, data_dir: &Path) -> Result<OpenedStorage, StorageError> {
        match self {
            Storage::Memory(disk) => {
                let wal =
                    Wal::open(disk.wal.clone(), WalOptions::default()).map_err(|e| StorageError::Wal(e.to_string()))?;
                Ok(OpenedStorage {
                    wal,
                    snapshots: SnapshotBackends::Memory(disk.clone()),
                    claimed: Arc::default(),
                    seeded: Arc::default(),
                })
            }
            Storage::Disk => open_disk(data_dir),
        }
    }
}

#[cfg(not(madsim))]
fn open_disk(data_dir: &Path) -> Result<OpenedStorage, StorageError> {
    use crate::storage::backend::FileBackend;
    let dir_error = |e: std::io::Error| StorageError::DataDir {
        path: data_dir.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(data_dir).map_err(dir_error)?;
    if data_dir.join("applied").exists() {
        // Earlier versions kept applied state in sled under `applied/` and purged the log
        // behind it; without it this node could not rebuild its state from what is left.
        return Err(StorageError::DataDir {
            path: data_dir.display().to_string(),
            message: "holds applied state in the old sled format (`applied/`), which this version \
                      does not read (it keeps snapshots in `snapshots/`): start this node from an \
                      empty data directory"
                .into(),
        });
    }
    let wal_dir = data_dir.join("wal");
    let backend = FileBackend::open(&wal_dir).map_err(dir_error)?;
    let wal = Wal::open(backend, WalOptions::default())
        .map_err(|e| StorageError::Wal(format!("{}: {e}", wal_dir.display())))?;
    Ok(OpenedStorage {
        wal,
        snapshots: SnapshotBackends::Files(crate::applied::snapshot_dir(data_dir)),
        claimed: Arc::default(),
        seeded: Arc::default(),
    })
}

#[cfg(madsim)]
fn open_disk(data_dir: &Path) -> Result<OpenedStorage, StorageError> {
    Err(StorageError::DataDir {
        path: data_dir.display().to_string(),
        message: "the simulator has no real disk: use Storage::Memory".into(),
    })
}

impl OpenedStorage {
    pub fn log_store(&self, shard_id: ShardId) -> ShardLogStore {
        self.wal.log_store(shard_id)
    }

    /// The node's WAL (shared by every shard's log store).
    pub fn wal(&self) -> Arc<Wal> {
        self.wal.clone()
    }

    /// Where `shard_id` keeps its latest snapshot.
    pub fn snapshots(&self, shard_id: ShardId) -> Result<Arc<dyn SnapshotBackend>, StorageError> {
        match &self.snapshots {
            #[cfg(not(madsim))]
            SnapshotBackends::Files(directory) => {
                let files = crate::applied::FileSnapshots::open(directory, shard_id)
                    .map_err(|e| StorageError::Applied(e.to_string()))?;
                Ok(Arc::new(files))
            }
            SnapshotBackends::Memory(disk) => Ok(disk.snapshots(shard_id)),
        }
    }
}

impl OpenedStorage {
    /// Marks `shard_id`'s storage as opened by a replica of this node, before the replica loads
    /// it: from then on a split never seeds it (the replica's state comes from its own log and
    /// leader), and a split that seeded it first is what the replica loads.
    pub fn claim(&self, shard_id: ShardId) {
        lock(&self.claimed).insert(shard_id);
    }

    /// Whether a split on this node seeded `shard_id` since the node started (asked once, when
    /// its replica starts).
    pub fn take_seeded(&self, shard_id: ShardId) -> bool {
        lock(&self.seeded).remove(&shard_id)
    }
}

impl SplitSeeder for OpenedStorage {
    fn seed(&self, new_shard: ShardId, meta: &SnapshotMeta, image: &FrozenImage) -> Result<bool, String> {
        // Held while saving, so that a replica cannot open the storage half-seeded.
        let claimed = lock(&self.claimed);
        if claimed.contains(&new_shard) {
            return Ok(false);
        }
        let backend = self.snapshots(new_shard).map_err(|e| e.to_string())?;
        // Seeded before a restart (this split is being replayed), or state from the new group.
        if backend.load().map_err(|e| e.to_string())?.is_some() {
            return Ok(false);
        }
        AppliedStore::new(backend)
            .save_image(meta, image)
            .map_err(|e| e.to_string())?;
        lock(&self.seeded).insert(new_shard);
        Ok(true)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
