//! The [`KvBackend`] of a real node: one sled tree per shard in the node's sled database.
//!
//! sled's `flush` uses `sync_file_range`, which survives a process crash but not necessarily a
//! power loss on a volatile write cache; that is acceptable here because this state can always
//! be rebuilt from the Raft log and snapshot, which are fdatasynced by the WAL.

use crate::applied::AppliedStoreError;
use crate::applied::KvBackend;
use crate::applied::KvPair;
use crate::applied::KvWrite;

pub struct SledKv {
    tree: sled::Tree,
}

impl SledKv {
    /// Opens (creating if needed) the tree of `shard_id` in `db`.
    pub fn open(db: &sled::Db, shard_id: u64) -> Result<Self, AppliedStoreError> {
        let tree = db.open_tree(format!("shard-{shard_id}")).map_err(backend_error)?;
        Ok(SledKv { tree })
    }
}

fn backend_error(error: sled::Error) -> AppliedStoreError {
    AppliedStoreError::Backend(error.to_string())
}

impl KvBackend for SledKv {
    fn write_batch(&self, writes: Vec<KvWrite>) -> Result<(), AppliedStoreError> {
        let mut batch = sled::Batch::default();
        for (key, value) in writes {
            match value {
                Some(value) => batch.insert(key, value),
                None => batch.remove(key),
            }
        }
        self.tree.apply_batch(batch).map_err(backend_error)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, AppliedStoreError> {
        Ok(self.tree.get(key).map_err(backend_error)?.map(|v| v.to_vec()))
    }

    fn scan(&self) -> Result<Vec<KvPair>, AppliedStoreError> {
        self.tree
            .iter()
            .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend_error))
            .collect()
    }

    fn flush(&self) -> Result<(), AppliedStoreError> {
        self.tree.flush().map(|_| ()).map_err(backend_error)
    }
}
