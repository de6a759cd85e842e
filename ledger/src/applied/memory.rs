//! An in-memory [`SnapshotBackend`]: the simulator's disk for snapshots, and the test double.
//! A save is durable at once (the simulator's crash model for unsynced bytes lives in the WAL;
//! a snapshot is saved only after the log it covers is durable).

use std::sync::Mutex;

use crate::applied::AppliedStoreError;
use crate::applied::SnapshotBackend;

#[derive(Debug, Default)]
pub struct MemorySnapshots {
    latest: Mutex<Option<Vec<u8>>>,
}

impl SnapshotBackend for MemorySnapshots {
    fn save(&self, parts: &[&[u8]]) -> Result<(), AppliedStoreError> {
        *self.latest.lock().unwrap_or_else(|p| p.into_inner()) = Some(parts.concat());
        Ok(())
    }

    fn load(&self) -> Result<Option<Vec<u8>>, AppliedStoreError> {
        Ok(self.latest.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }
}
