//! An in-memory [`SnapshotBackend`]: the simulator's disk for snapshots, and the test double.
//! A save is durable at once (the simulator's crash model for unsynced bytes lives in the WAL;
//! a snapshot is saved only after the log it covers is durable).

use std::sync::Mutex;

use crate::applied::AppliedStoreError;
use crate::applied::SnapshotBackend;
use crate::applied::StreamWriter;

#[derive(Debug, Default)]
pub struct MemorySnapshots {
    saved: Mutex<Generations>,
}

/// The latest snapshot, the one it replaced, and the order chunks.
#[derive(Debug, Default)]
struct Generations {
    latest: Option<Vec<u8>>,
    previous: Option<Vec<u8>>,
    chunks: std::collections::BTreeMap<u64, Vec<u8>>,
    /// Chunks ever saved (tests count what a checkpoint wrote).
    chunk_saves: u64,
}

impl MemorySnapshots {
    /// How many order chunks were ever saved.
    pub fn chunk_saves(&self) -> u64 {
        self.saved.lock().unwrap_or_else(|p| p.into_inner()).chunk_saves
    }

    /// How many order chunks are stored.
    pub fn chunks_stored(&self) -> usize {
        self.saved.lock().unwrap_or_else(|p| p.into_inner()).chunks.len()
    }

    /// Cuts the latest snapshot short, as a torn write would (for tests).
    pub fn tear_latest(&self) {
        if let Some(latest) = &mut self.saved.lock().unwrap_or_else(|p| p.into_inner()).latest {
            latest.truncate(latest.len() / 2);
        }
    }
}

impl SnapshotBackend for MemorySnapshots {
    fn save_streamed(&self, length: u64, write: &mut StreamWriter<'_>) -> Result<(), AppliedStoreError> {
        let mut bytes = Vec::with_capacity(length as usize);
        write(&mut bytes).map_err(|e| AppliedStoreError::Backend(e.to_string()))?;
        if bytes.len() as u64 != length {
            return Err(AppliedStoreError::Backend(format!(
                "a snapshot of {length} bytes was announced, {} written",
                bytes.len()
            )));
        }
        let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        saved.previous = saved.latest.replace(bytes);
        Ok(())
    }

    fn load(&self) -> Result<Option<Vec<u8>>, AppliedStoreError> {
        Ok(self.saved.lock().unwrap_or_else(|p| p.into_inner()).latest.clone())
    }

    fn load_previous(&self) -> Result<Option<Vec<u8>>, AppliedStoreError> {
        Ok(self.saved.lock().unwrap_or_else(|p| p.into_inner()).previous.clone())
    }

    fn save_chunk(&self, id: u64, bytes: &[u8]) -> Result<(), AppliedStoreError> {
        let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        saved.chunks.insert(id, bytes.to_vec());
        saved.chunk_saves += 1;
        Ok(())
    }

    fn load_chunk(&self, id: u64) -> Result<Option<Vec<u8>>, AppliedStoreError> {
        Ok(self
            .saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .chunks
            .get(&id)
            .cloned())
    }

    fn keep_chunks(&self, keep: &std::collections::BTreeSet<u64>) -> Result<(), AppliedStoreError> {
        self.saved
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .chunks
            .retain(|id, _| keep.contains(id));
        Ok(())
    }
}
