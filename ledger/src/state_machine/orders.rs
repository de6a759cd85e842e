//! [`OrderBook`]: every retained order as a fixed-size [`OrderRecord`], in the order the log
//! created them, with an index from order key to record.
//!
//! Why this shape:
//! - **No allocation per order.** A record is 56 bytes (a hashed order id, a request fingerprint,
//!   an interned SKU, counts, states); records live in chunks of [`CHUNK_RECORDS`], so memory
//!   grows a chunk at a time and never doubles.
//! - **Pruning is a pop from the front.** Log time never goes back, so records are in creation
//!   time order: the orders that left the idempotency window are always the oldest chunks
//!   (`LedgerState::prune`), and each chunk remembers when its newest record was created.
//! - **A snapshot forks in O(chunks).** Chunks are shared (`Arc`); a snapshot clones the list of
//!   chunks under the state lock ([`OrderBook::frozen`]) and encodes it on its own thread, while
//!   writes copy a chunk only when they change a record of one the snapshot still holds (almost
//!   always only the newest: orders change state within minutes of being created).
//! - **Byte-identical replicas.** The records and their chunk boundaries follow the log's
//!   sequence, and the index is never encoded (it is rebuilt on load), so two replicas at the
//!   same applied index encode the same bytes.
//!
//! The index is split into [`INDEX_PARTS`] hash tables by bits of the key (a keyed hash, so
//! uniform), so that growing it rehashes a 64th of the orders at a time under the write lock,
//! never all of them. An index slot is 8 bytes: 32 bits of the key, from which the slot's hash
//! is derived, and the low 32 bits of the record's sequence number. Probing and rehashing read
//! only slots, never records (a record is read to confirm a match of those 32 bits): with the
//! sequence number alone every probe and every rehashed slot was a cache miss into the records,
//! the top of the write path's profile.

use std::collections::VecDeque;
use std::sync::Arc;

use hashbrown::HashTable;
use serde::Deserialize;
use serde::Serialize;

use crate::state_machine::keys::OrderKey;
use crate::state_machine::keys::part_and_hash;

/// Records per chunk: 4096 x 56 bytes = 224 KiB, the most a write copies when a snapshot holds
/// the chunk it changes.
#[cfg(not(madsim))]
pub const CHUNK_RECORDS: usize = 4096;
/// In the simulator a run creates a few hundred orders per shard: small chunks, so that they
/// fill up and pruning runs (and its planted bugs can be caught) within a run.
#[cfg(madsim)]
pub const CHUNK_RECORDS: usize = 16;
/// Hash tables the index is split into.
const INDEX_PARTS: usize = 64;
/// The largest sequence number (of an order, or of an order event) a loaded snapshot may have
/// reached: beyond any shard's life (a million a second for 146 000 years), and far enough from
/// `u64::MAX` that counting on from it never overflows.
pub const SEQ_MAX: u64 = 1 << 62;

/// A SKU's number in the shard's SKU table (`LedgerState::sku_names`); [`SkuId::NONE`] for a
/// request that named a SKU the shard does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SkuId(pub u32);

impl SkuId {
    pub const NONE: SkuId = SkuId(u32::MAX);
}

/// Which operation created the order: a replay must be the same operation to get the first answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderKind {
    Reserve,
    Purchase,
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderState {
    /// Units are held until the record's `value` (leader time, ms).
    Reserved,
    Confirmed,
    Released,
    Expired,
    /// The first request was refused (limit, sale closed, unknown SKU); nothing is held.
    Rejected,
}

/// The answer the creating request got, replayed to a repeat; its numbers are in the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FirstAnswer {
    /// `Reserved { expires_at_ms: value }`.
    Reserved,
    Confirmed,
    /// `LimitExceeded { held: value, limit }`.
    LimitExceeded,
    SaleClosed,
    UnknownSku,
}

/// One order, fixed size (56 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub key: OrderKey,
    /// Fingerprint of the creating request (`HashKey::request`).
    pub request: u64,
    /// A reserve's expiry time (kept after the reservation moves on: a replay answers it), or
    /// the units held when the answer was `LimitExceeded`.
    pub value: u64,
    /// A confirmed order's event sequence number (shipping); `u64::MAX` until confirmed.
    pub event_seq: u64,
    pub sku: SkuId,
    pub qty: u32,
    /// The per-user limit a `LimitExceeded` answer named.
    pub limit: u32,
    pub kind: OrderKind,
    pub state: OrderState,
    pub first: FirstAnswer,
}

/// Records created one after another, the newest last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Log time when its newest record was created: the whole chunk is past the idempotency
    /// window once this is.
    pub newest_created_ms: u64,
    pub records: Vec<OrderRecord>,
}

#[derive(Debug, Clone)]
pub struct OrderBook {
    /// `chunks[i]` holds the records with sequence numbers `first_seq + i * CHUNK_RECORDS ..`;
    /// every chunk but the last is full.
    chunks: VecDeque<Arc<Chunk>>,
    /// Sequence number of the first retained record.
    first_seq: u64,
    /// Sequence number the next record gets.
    next_seq: u64,
    /// Order key -> sequence number, in [`INDEX_PARTS`] tables (see the module docs).
    index: Vec<HashTable<IndexSlot>>,
}

impl Default for OrderBook {
    fn default() -> Self {
        OrderBook {
            chunks: VecDeque::new(),
            first_seq: 0,
            next_seq: 0,
            index: (0..INDEX_PARTS).map(|_| HashTable::new()).collect(),
        }
    }
}

impl PartialEq for OrderBook {
    /// The same records at the same sequence numbers (the index follows from them).
    fn eq(&self, other: &Self) -> bool {
        self.first_seq == other.first_seq && self.next_seq == other.next_seq && self.chunks == other.chunks
    }
}

impl Eq for OrderBook {}

impl OrderBook {
    pub fn len(&self) -> usize {
        (self.next_seq - self.first_seq) as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sequence number of the order with `key`, if retained.
    pub fn find(&self, key: OrderKey) -> Option<u64> {
        let (part, tag) = index_part_and_tag(key);
        self.index[part]
            .find(slot_hash(tag), |slot| {
                slot.tag == tag && self.get(self.full_seq(slot.seq)).key == key
            })
            .map(|slot| self.full_seq(slot.seq))
    }

    /// The record at `seq`, which must be retained.
    pub fn get(&self, seq: u64) -> &OrderRecord {
        let (chunk, slot) = self.position(seq);
        &self.chunks[chunk].records[slot]
    }

    /// The record at `seq`, if it is retained.
    pub fn try_get(&self, seq: u64) -> Option<&OrderRecord> {
        (self.first_seq..self.next_seq).contains(&seq).then(|| self.get(seq))
    }

    /// The record at `seq` to change; copies its chunk first if a snapshot still shares it.
    pub fn get_mut(&mut self, seq: u64) -> &mut OrderRecord {
        let (chunk, slot) = self.position(seq);
        &mut Arc::make_mut(&mut self.chunks[chunk]).records[slot]
    }

    fn position(&self, seq: u64) -> (usize, usize) {
        debug_assert!(
            seq >= self.first_seq && seq < self.next_seq,
            "order {seq} is not retained"
        );
        let offset = (seq - self.first_seq) as usize;
        (offset / CHUNK_RECORDS, offset % CHUNK_RECORDS)
    }

    /// Appends a new order created at log time `now_ms`; its key must not be retained yet.
    pub fn push(&mut self, record: OrderRecord, now_ms: u64) -> u64 {
        debug_assert!(self.find(record.key).is_none(), "order key pushed twice");
        let seq = self.next_seq;
        if self
            .chunks
            .back()
            .is_none_or(|chunk| chunk.records.len() == CHUNK_RECORDS)
        {
            self.chunks.push_back(Arc::new(Chunk {
                newest_created_ms: now_ms,
                records: Vec::with_capacity(CHUNK_RECORDS),
            }));
        }
        let back = self.chunks.back_mut().expect("a chunk was just ensured");
        let back = Arc::make_mut(back);
        back.records.push(record);
        back.newest_created_ms = now_ms;
        self.next_seq += 1;
        self.index_insert(record.key, seq);
        seq
    }

    /// Indexes the record at `seq` (already in a chunk) under `key`.
    fn index_insert(&mut self, key: OrderKey, seq: u64) {
        assert!(
            self.next_seq - self.first_seq <= u64::from(u32::MAX),
            "more than 2^32 orders retained: index slots keep 32 bits of the sequence number"
        );
        let (part, tag) = index_part_and_tag(key);
        let slot = IndexSlot { tag, seq: seq as u32 };
        self.index[part].insert_unique(slot_hash(tag), slot, |slot| slot_hash(slot.tag));
    }

    /// The sequence number whose low 32 bits are `low`: retained ones span less than 2^32.
    fn full_seq(&self, low: u32) -> u64 {
        self.first_seq + u64::from(low.wrapping_sub(self.first_seq as u32))
    }

    /// The oldest chunk, if any.
    pub fn front(&self) -> Option<&Chunk> {
        self.chunks.front().map(|chunk| &**chunk)
    }

    /// Forgets the oldest chunk's orders, except those at the offsets in `keep` (ascending),
    /// which are appended anew as created at `now_ms`. Returns each kept order's old and new
    /// sequence numbers. Carrying a few stragglers (a long reservation, an order still being
    /// shipped) forward lets the orders around them go instead of all waiting for them.
    pub fn pop_front(&mut self, keep: &[usize], now_ms: u64) -> Vec<(u64, u64)> {
        let Some(chunk) = self.chunks.pop_front() else {
            return Vec::new();
        };
        let first_seq = self.first_seq;
        for (offset, record) in chunk.records.iter().enumerate() {
            let seq = first_seq + offset as u64;
            let (part, tag) = index_part_and_tag(record.key);
            if let Ok(slot) = self.index[part].find_entry(slot_hash(tag), |slot| slot.seq == seq as u32) {
                slot.remove();
            }
        }
        self.first_seq += chunk.records.len() as u64;
        if self.chunks.is_empty() {
            // Nothing is left: the next record starts the book again, at the next number.
            self.first_seq = self.next_seq;
        }
        keep.iter()
            .map(|&offset| (first_seq + offset as u64, self.push(chunk.records[offset], now_ms)))
            .collect()
    }

    /// Every retained record with its sequence number, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &OrderRecord)> {
        self.chunks
            .iter()
            .flat_map(|chunk| chunk.records.iter())
            .enumerate()
            .map(|(offset, record)| (self.first_seq + offset as u64, record))
    }

    /// The records as they are now, sharing their chunks: O(chunks), for a snapshot to encode
    /// while writes go on.
    pub fn frozen(&self) -> FrozenOrders {
        FrozenOrders {
            first_seq: self.first_seq,
            chunks: self.chunks.iter().cloned().collect(),
        }
    }

    /// Rebuilds a book from its frozen form (a snapshot being loaded): the index is derived.
    pub fn from_frozen(frozen: FrozenOrders) -> Result<OrderBook, String> {
        let mut book = OrderBook {
            first_seq: frozen.first_seq,
            next_seq: frozen.first_seq,
            ..OrderBook::default()
        };
        let count = frozen.chunks.len();
        for (position, chunk) in frozen.chunks.into_iter().enumerate() {
            let full = chunk.records.len() == CHUNK_RECORDS;
            if chunk.records.is_empty() || chunk.records.len() > CHUNK_RECORDS || (!full && position + 1 != count) {
                return Err(format!("order chunk {position} holds {} records", chunk.records.len()));
            }
            let first = book.next_seq;
            book.next_seq = first
                .checked_add(chunk.records.len() as u64)
                .filter(|next| *next <= SEQ_MAX)
                .ok_or_else(|| format!("order chunk {position} runs past sequence number {SEQ_MAX}"))?;
            book.chunks.push_back(chunk);
            for seq in first..book.next_seq {
                let key = book.get(seq).key;
                if book.find(key).is_some() {
                    return Err(format!("order key {key:?} appears twice"));
                }
                book.index_insert(key, seq);
            }
        }
        Ok(book)
    }
}

/// One index entry (see the module docs).
#[derive(Debug, Clone, Copy)]
struct IndexSlot {
    /// 32 bits of the order key.
    tag: u32,
    /// The low 32 bits of the record's sequence number.
    seq: u32,
}

/// The index table of `key` and the 32 bits of it its slot keeps.
fn index_part_and_tag(key: OrderKey) -> (usize, u32) {
    let (part, hash) = part_and_hash(key.0, INDEX_PARTS);
    (part, hash as u32)
}

/// A slot's hash, from its 32 bits of key alone (so a rehash needs nothing else): spread over 64
/// bits, since a table picks buckets by the low bits and tags them with the top ones.
fn slot_hash(tag: u32) -> u64 {
    u64::from(tag).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// An [`OrderBook`]'s records without its index: what a snapshot encodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrozenOrders {
    pub first_seq: u64,
    pub chunks: Vec<Arc<Chunk>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(n: u64) -> OrderRecord {
        OrderRecord {
            key: OrderKey([n.wrapping_mul(0x9e37_79b9_7f4a_7c15), n]),
            request: n,
            value: 0,
            event_seq: u64::MAX,
            sku: SkuId(0),
            qty: 1,
            limit: 0,
            kind: OrderKind::Purchase,
            state: OrderState::Confirmed,
            first: FirstAnswer::Confirmed,
        }
    }

    #[test]
    fn a_record_is_56_bytes() {
        assert_eq!(std::mem::size_of::<OrderRecord>(), 56);
    }

    #[test]
    fn orders_are_found_changed_pruned_by_chunk_and_rebuilt_from_their_frozen_form() {
        let mut book = OrderBook::default();
        let count = 2 * CHUNK_RECORDS as u64 + 10;
        for n in 0..count {
            assert_eq!(book.push(record(n), 1_000 + n / CHUNK_RECORDS as u64), n);
        }
        assert_eq!(book.len() as u64, count);
        assert_eq!(book.find(record(5).key), Some(5));
        assert_eq!(book.find(record(count).key), None);
        let frozen = book.frozen();
        book.get_mut(5).state = OrderState::Released;
        // The snapshot's copy did not change; the book's did.
        assert_eq!(frozen.chunks[0].records[5].state, OrderState::Confirmed);
        assert_eq!(book.get(5).state, OrderState::Released);

        assert_eq!(book.front().map(|c| c.newest_created_ms), Some(1_000));
        book.pop_front(&[], 2_000);
        assert_eq!(book.len() as u64, count - CHUNK_RECORDS as u64);
        assert_eq!(book.find(record(5).key), None);
        let first_kept = CHUNK_RECORDS as u64;
        assert_eq!(book.find(record(first_kept).key), Some(first_kept));
        assert_eq!(book.iter().next().map(|(seq, _)| seq), Some(first_kept));

        let rebuilt = OrderBook::from_frozen(book.frozen()).expect("rebuilds");
        assert_eq!(rebuilt, book);
        for n in first_kept..count {
            assert_eq!(rebuilt.find(record(n).key), Some(n));
        }
        // New orders continue the sequence.
        let mut rebuilt = rebuilt;
        assert_eq!(rebuilt.push(record(count), 2_000), count);

        // A straggler is carried forward when its chunk goes: found again, at a new number.
        let straggler = CHUNK_RECORDS as u64 + 7;
        let moved = rebuilt.pop_front(&[7], 3_000);
        assert_eq!(moved, vec![(straggler, count + 1)]);
        assert_eq!(rebuilt.find(record(straggler).key), Some(count + 1));
        assert_eq!(rebuilt.find(record(straggler - 1).key), None);
        assert_eq!(rebuilt.len(), 10 + 1 + 1);
    }

    #[test]
    fn the_last_chunk_can_go_with_stragglers_carried_into_a_new_one() {
        let mut book = OrderBook::default();
        for n in 0..5 {
            book.push(record(n), 1_000);
        }
        let moved = book.pop_front(&[1, 3], 9_000);
        assert_eq!(moved, vec![(1, 5), (3, 6)]);
        assert_eq!(book.len(), 2);
        assert_eq!(book.front().map(|chunk| chunk.newest_created_ms), Some(9_000));
        assert_eq!((book.find(record(1).key), book.find(record(3).key)), (Some(5), Some(6)));
        assert_eq!(book.find(record(0).key), None);
    }

    #[test]
    fn a_broken_frozen_form_is_refused() {
        let mut book = OrderBook::default();
        book.push(record(1), 1);
        let mut frozen = book.frozen();
        frozen.chunks.push(frozen.chunks[0].clone());
        assert!(
            OrderBook::from_frozen(frozen).is_err(),
            "a short chunk before the last one"
        );
        let mut frozen = book.frozen();
        let mut twice = (*frozen.chunks[0]).clone();
        twice.records.push(twice.records[0]);
        frozen.chunks = vec![std::sync::Arc::new(twice)];
        assert!(OrderBook::from_frozen(frozen).is_err(), "a key twice");
    }
}
