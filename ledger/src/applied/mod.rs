//! Node-local persistence of each shard's applied state (SKU records, orders, holdings,
//! unshipped order events) and its latest snapshot.
//!
//! The Raft log (in the WAL) is the source of truth; this store only saves replaying it from the
//! beginning. Every apply call commits one atomic batch holding exactly the keys that changed plus
//! the applied log id, so the store is always a state the log actually passed through. It is
//! not fsynced per batch: after a crash it may be behind, and openraft re-applies the log from
//! the applied id it finds. It is flushed before a snapshot lets the log be purged.
//!
//! Key layout inside one shard's keyspace (all values bincode 1.3):
//!
//! | key                              | value                         |
//! |----------------------------------|-------------------------------|
//! | `m`                              | [`AppliedMeta`]               |
//! | `s` + sku                        | `SkuRecord`                   |
//! | `o` + order_id                   | `OrderRecord`                 |
//! | `h` + len(sku):u8 + sku + user   | units held: u64               |
//! | `e` + seq:u64 big-endian         | `OrderEvent` (deleted once shipped) |
//! | `S`                              | [`StoredSnapshot`]            |

mod memory;
#[cfg(not(madsim))]
mod sled_backend;

use std::sync::Arc;

use serde::Deserialize;
use serde::Serialize;

pub use memory::MemoryKv;
#[cfg(not(madsim))]
pub use sled_backend::SledKv;

use crate::raft::types::LogId;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::StoredMembership;
use crate::state_machine::state::Changes;
use crate::state_machine::state::LedgerState;

/// Failure of the applied-state store.
#[derive(Debug, thiserror::Error)]
pub enum AppliedStoreError {
    #[error("applied-state backend: {0}")]
    Backend(String),
    #[error("applied state does not encode: {0}")]
    Encode(String),
    #[error("applied-state record {key:?} does not decode: {message}")]
    Decode { key: Vec<u8>, message: String },
}

impl From<AppliedStoreError> for std::io::Error {
    fn from(error: AppliedStoreError) -> Self {
        std::io::Error::other(error.to_string())
    }
}

/// One write in a batch: `None` deletes the key.
pub type KvWrite = (Vec<u8>, Option<Vec<u8>>);
/// A stored key and its value.
pub type KvPair = (Vec<u8>, Vec<u8>);

/// The bytes underneath one shard's applied state: sled on a real node, memory in the simulator.
pub trait KvBackend: Send + Sync + 'static {
    /// Applies all writes atomically.
    fn write_batch(&self, writes: Vec<KvWrite>) -> Result<(), AppliedStoreError>;
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, AppliedStoreError>;
    /// Every key/value pair, in key order.
    fn scan(&self) -> Result<Vec<KvPair>, AppliedStoreError>;
    /// Makes previous batches survive a process crash.
    fn flush(&self) -> Result<(), AppliedStoreError>;
}

/// What Raft needs besides the ledger: how far it applied, the membership, the log clock.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppliedMeta {
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
    pub clock_ms: u64,
    pub next_event_seq: u64,
    /// The replicated "shipped up to" mark: events below it were pruned (see `crate::shipping`).
    pub shipped_below_seq: u64,
    pub shipped_by: u64,
}

/// A shard's full applied state as loaded at start or carried in a snapshot.
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

const META_KEY: &[u8] = b"m";
const SNAPSHOT_KEY: &[u8] = b"S";

/// Typed access to one shard's applied state over a [`KvBackend`].
#[derive(Clone)]
pub struct AppliedStore {
    backend: Arc<dyn KvBackend>,
}

impl AppliedStore {
    pub fn new(backend: Arc<dyn KvBackend>) -> Self {
        AppliedStore { backend }
    }

    /// Loads everything (an empty store loads as the empty state).
    pub fn load(&self) -> Result<ShardImage, AppliedStoreError> {
        let mut image = ShardImage::default();
        for (key, value) in self.backend.scan()? {
            let Some((&kind, rest)) = key.split_first() else {
                continue;
            };
            match kind {
                b'm' => image.meta = decode(&key, &value)?,
                b's' => {
                    image.ledger.skus.insert(rest.to_vec(), decode(&key, &value)?);
                }
                b'o' => {
                    let order_id = String::from_utf8(rest.to_vec()).map_err(|e| decode_error(&key, e))?;
                    image.ledger.orders.insert(order_id, decode(&key, &value)?);
                }
                b'h' => {
                    let (sku, user) = split_holding_key(rest).ok_or_else(|| decode_error(&key, "holding key"))?;
                    image.ledger.holdings.insert((sku, user), decode(&key, &value)?);
                }
                b'e' => {
                    let seq = rest
                        .try_into()
                        .map(u64::from_be_bytes)
                        .map_err(|_| decode_error(&key, "event key"))?;
                    image.ledger.order_events.insert(seq, decode(&key, &value)?);
                }
                _ => {}
            }
        }
        image.ledger.clock_ms = image.meta.clock_ms;
        image.ledger.next_event_seq = image.meta.next_event_seq;
        image.ledger.shipped_below_seq = image.meta.shipped_below_seq;
        image.ledger.shipped_by = image.meta.shipped_by;
        image.ledger.rebuild_indexes();
        Ok(image)
    }

    /// Persists what one apply call changed, and the new meta, in one atomic batch.
    pub fn commit(&self, ledger: &LedgerState, changes: &Changes, meta: &AppliedMeta) -> Result<(), AppliedStoreError> {
        let mut writes: Vec<KvWrite> = Vec::new();
        for sku in &changes.skus {
            writes.push((prefixed(b's', sku), encode_optional(ledger.skus.get(sku))?));
        }
        for order_id in &changes.orders {
            writes.push((
                prefixed(b'o', order_id.as_bytes()),
                encode_optional(ledger.orders.get(order_id))?,
            ));
        }
        for key in &changes.holdings {
            writes.push((holding_key(&key.0, &key.1), encode_optional(ledger.holdings.get(key))?));
        }
        // A pruned event's lookup finds nothing, which deletes its key.
        for seq in changes.events_added.iter().chain(&changes.events_removed) {
            writes.push((
                prefixed(b'e', &seq.to_be_bytes()),
                encode_optional(ledger.order_events.get(seq))?,
            ));
        }
        writes.push((META_KEY.to_vec(), Some(encode(meta)?)));
        self.backend.write_batch(writes)
    }

    /// Replaces the whole state (installing a snapshot) in one atomic batch.
    pub fn replace(&self, image: &ShardImage) -> Result<(), AppliedStoreError> {
        let mut writes: Vec<KvWrite> = self
            .backend
            .scan()?
            .into_iter()
            .filter(|(key, _)| key.as_slice() != SNAPSHOT_KEY)
            .map(|(key, _)| (key, None))
            .collect();
        let ledger = &image.ledger;
        writes.extend(
            ledger
                .skus
                .iter()
                .map(|(sku, r)| Ok((prefixed(b's', sku), Some(encode(r)?))))
                .collect::<Result<Vec<_>, AppliedStoreError>>()?,
        );
        writes.extend(
            ledger
                .orders
                .iter()
                .map(|(id, o)| Ok((prefixed(b'o', id.as_bytes()), Some(encode(o)?))))
                .collect::<Result<Vec<_>, AppliedStoreError>>()?,
        );
        writes.extend(
            ledger
                .holdings
                .iter()
                .map(|((sku, user), n)| Ok((holding_key(sku, user), Some(encode(n)?))))
                .collect::<Result<Vec<_>, AppliedStoreError>>()?,
        );
        writes.extend(
            ledger
                .order_events
                .iter()
                .map(|(seq, e)| Ok((prefixed(b'e', &seq.to_be_bytes()), Some(encode(e)?))))
                .collect::<Result<Vec<_>, AppliedStoreError>>()?,
        );
        writes.push((META_KEY.to_vec(), Some(encode(&image.meta)?)));
        self.backend.write_batch(writes)
    }

    pub fn save_snapshot(&self, snapshot: &StoredSnapshot) -> Result<(), AppliedStoreError> {
        self.backend
            .write_batch(vec![(SNAPSHOT_KEY.to_vec(), Some(encode(snapshot)?))])?;
        self.backend.flush()
    }

    pub fn load_snapshot(&self) -> Result<Option<StoredSnapshot>, AppliedStoreError> {
        match self.backend.get(SNAPSHOT_KEY)? {
            Some(bytes) => Ok(Some(decode(SNAPSHOT_KEY, &bytes)?)),
            None => Ok(None),
        }
    }

    pub fn flush(&self) -> Result<(), AppliedStoreError> {
        self.backend.flush()
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, AppliedStoreError> {
    bincode::serialize(value).map_err(|e| AppliedStoreError::Encode(e.to_string()))
}

/// Encodes a record that may have been deleted: `None` becomes a delete of its key.
fn encode_optional<T: Serialize>(value: Option<&T>) -> Result<Option<Vec<u8>>, AppliedStoreError> {
    value.map(encode).transpose()
}

fn decode<T: for<'de> Deserialize<'de>>(key: &[u8], bytes: &[u8]) -> Result<T, AppliedStoreError> {
    bincode::deserialize(bytes).map_err(|e| decode_error(key, e))
}

fn decode_error(key: &[u8], message: impl std::fmt::Display) -> AppliedStoreError {
    AppliedStoreError::Decode {
        key: key.to_vec(),
        message: message.to_string(),
    }
}

fn prefixed(kind: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + rest.len());
    key.push(kind);
    key.extend_from_slice(rest);
    key
}

fn holding_key(sku: &[u8], user: &str) -> Vec<u8> {
    // SKUs are at most 128 bytes (validated), so the length fits a byte.
    let mut key = vec![b'h', sku.len() as u8];
    key.extend_from_slice(sku);
    key.extend_from_slice(user.as_bytes());
    key
}

fn split_holding_key(rest: &[u8]) -> Option<(Vec<u8>, String)> {
    let (&len, rest) = rest.split_first()?;
    let len = usize::from(len);
    if rest.len() < len {
        return None;
    }
    let (sku, user) = rest.split_at(len);
    Some((sku.to_vec(), String::from_utf8(user.to_vec()).ok()?))
}

/// Encodes a snapshot image; decoding failures of received snapshots are data errors.
pub fn encode_image(image: &ShardImage) -> Result<Vec<u8>, AppliedStoreError> {
    encode(image)
}

pub fn decode_image(bytes: &[u8]) -> Result<ShardImage, AppliedStoreError> {
    let mut image: ShardImage = decode(b"snapshot", bytes)?;
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

    /// Applies `command` and commits it the way the Raft state machine does.
    fn apply(store: &AppliedStore, image: &mut ShardImage, index: u64, body: CommandBody) {
        let command = LogCommand {
            timestamp_ms: index,
            body,
        };
        let (_, changes) = image.ledger.apply(index, &command).expect("invariant holds");
        image.meta.clock_ms = image.ledger.clock_ms;
        image.meta.next_event_seq = image.ledger.next_event_seq;
        image.meta.shipped_below_seq = image.ledger.shipped_below_seq;
        image.meta.shipped_by = image.ledger.shipped_by;
        store.commit(&image.ledger, &changes, &image.meta).expect("commit");
    }

    #[test]
    fn the_shipped_mark_and_pruned_events_survive_a_reload() {
        let store = AppliedStore::new(Arc::new(MemoryKv::default()));
        let mut image = ShardImage::default();
        let put = Operation::PutSku {
            sku: b"x".to_vec(),
            total: 10,
            rules: SaleRules::default(),
        };
        apply(&store, &mut image, 1, CommandBody::Batch(vec![put]));
        let buys = (0..5)
            .map(|n| Operation::Purchase {
                sku: b"x".to_vec(),
                qty: 1,
                user: "u".into(),
                order_id: format!("o{n}"),
            })
            .collect();
        apply(&store, &mut image, 2, CommandBody::Batch(buys));
        apply(
            &store,
            &mut image,
            3,
            CommandBody::Shipped {
                below_seq: 3,
                shipper: 2,
            },
        );
        let loaded = store.load().expect("load");
        assert_eq!(loaded.ledger, image.ledger);
        assert_eq!(
            loaded.ledger.order_events.keys().copied().collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert_eq!((loaded.ledger.shipped_below_seq, loaded.ledger.shipped_by), (3, 2));
    }
}
