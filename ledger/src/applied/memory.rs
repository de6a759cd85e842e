//! An in-memory [`SnapshotBackend`]: the simulator's disk for snapshots, and the test double.
//! A save is durable at once (the simulator's crash model for unsynced bytes lives in the WAL;
//! a snapshot is saved only after the log it covers is durable).

use std::sync::Mutex;

use crate::applied::AppliedStoreError;
use crate::applied::SnapshotBackend;

#[derive(Debug, Default)]
pub struct MemorySnapshots {
    saved: Mutex<Generations>,
}

/// The latest snapshot and the one it replaced.
#[derive(Debug, Default)]
struct Generations {
    latest: Option<Vec<u8>>,
    previous: Option<Vec<u8>>,
}

impl MemorySnapshots {
    /// Cuts the latest snapshot short, as a torn write would (for tests).
    pub fn tear_latest(&self) {
        if let Some(latest) = &mut self.saved.lock().unwrap_or_else(|p| p.into_inner()).latest {
            latest.truncate(latest.len() / 2);
        }
    }
}

impl SnapshotBackend for MemorySnapshots {
    fn save(&self, parts: &[&[u8]]) -> Result<(), AppliedStoreError> {
        let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        saved.previous = saved.latest.replace(parts.concat());
        Ok(())
    }

    fn load(&self) -> Result<Option<Vec<u8>>, AppliedStoreError> {
        Ok(self.saved.lock().unwrap_or_else(|p| p.into_inner()).latest.clone())
    }

    fn load_previous(&self) -> Result<Option<Vec<u8>>, AppliedStoreError> {
        Ok(self.saved.lock().unwrap_or_else(|p| p.into_inner()).previous.clone())
    }
}
