//! An in-memory [`KvBackend`]: the simulator's stand-in for sled, and the test double.
//! Writes are visible and "durable" at once; a simulated crash keeps them (the simulator's
//! crash model for unsynced bytes lives in the WAL, which is what acknowledgements depend on).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::applied::AppliedStoreError;
use crate::applied::KvBackend;
use crate::applied::KvPair;
use crate::applied::KvWrite;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

#[derive(Debug, Default)]
pub struct MemoryKv {
    map: Mutex<Map>,
}

impl MemoryKv {
    fn map(&self) -> Result<std::sync::MutexGuard<'_, Map>, AppliedStoreError> {
        self.map
            .lock()
            .map_err(|_| AppliedStoreError::Backend("memory store lock poisoned".into()))
    }
}

impl KvBackend for MemoryKv {
    fn write_batch(&self, writes: Vec<KvWrite>) -> Result<(), AppliedStoreError> {
        let mut map = self.map()?;
        for (key, value) in writes {
            match value {
                Some(value) => map.insert(key, value),
                None => map.remove(&key),
            };
        }
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, AppliedStoreError> {
        Ok(self.map()?.get(key).cloned())
    }

    fn scan(&self) -> Result<Vec<KvPair>, AppliedStoreError> {
        Ok(self.map()?.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn flush(&self) -> Result<(), AppliedStoreError> {
        Ok(())
    }
}
