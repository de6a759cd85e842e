//! [`SpreadMap`]: a map from string ids to values, split into a fixed number of hash tables so
//! that it never rehashes everything at once, and whose callers hash a key once per operation.
//!
//! A hash map doubles when it fills up and rehashes every key in that one insert. The orders of
//! a shard and the holders of a hot SKU reach hundreds of thousands of keys, every replica
//! doubles at the same operation, and the write lock is held meanwhile: at half the peak rate
//! the benchmark's p99 jumped from ~4 ms to 55–80 ms at each doubling (measured with snapshots
//! off). Split into `PARTS` tables by the key's hash, each part holds a 64th of the keys and the
//! parts fill up at slightly different moments, so the rehashing is spread over many
//! operations, each paying for a 64th.
//!
//! Keys are hashed with std's randomly keyed SipHash (ids come from clients; a client choosing
//! ids cannot aim them at one bucket without the key). A reserve or purchase looks its order id
//! up and then inserts it, and adds to its holder: [`KeyHash`] lets the caller hash each id once
//! for both (SipHash was the largest single item of the write path's profile).

use std::fmt;
use std::hash::BuildHasher;
use std::hash::RandomState;
use std::marker::PhantomData;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde::Serializer;
use serde::de::MapAccess;
use serde::de::Visitor;
use serde::ser::SerializeMap;

/// How many hash tables the keys are spread over.
const PARTS: usize = 64;

#[derive(Clone)]
pub struct SpreadMap<V> {
    /// The map's SipHash keys; every key of the map is hashed with them.
    hasher: RandomState,
    /// Always `PARTS` tables; a key lives in `parts[part_of(hash)]`.
    parts: Vec<HashTable<(String, V)>>,
}

/// A key's hash under one map's hasher: computed once, good for that map's lookups and inserts
/// until the map is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyHash(u64);

/// The part of a key with hash `hash`: bits 40..46. A table picks buckets by the low bits and
/// tags them with the top 7; taking the part from either would give every key of a part the
/// same bits there (one bucket in 64 used, or tags that never tell keys apart).
fn part_of(hash: KeyHash) -> usize {
    ((hash.0 >> 40) as usize) % PARTS
}

impl<V> Default for SpreadMap<V> {
    fn default() -> Self {
        SpreadMap {
            hasher: RandomState::new(),
            parts: (0..PARTS).map(|_| HashTable::new()).collect(),
        }
    }
}

impl<V> SpreadMap<V> {
    /// `key`'s hash in this map, for [`SpreadMap::get_hashed`] and [`SpreadMap::insert_hashed`].
    pub fn hash(&self, key: &str) -> KeyHash {
        KeyHash(self.hasher.hash_one(key))
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.get_hashed(self.hash(key), key)
    }

    /// [`SpreadMap::get`] with the key's hash from [`SpreadMap::hash`].
    pub fn get_hashed(&self, hash: KeyHash, key: &str) -> Option<&V> {
        self.parts[part_of(hash)]
            .find(hash.0, |(stored, _)| stored == key)
            .map(|(_, value)| value)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let hash = self.hash(key);
        self.parts[part_of(hash)]
            .find_mut(hash.0, |(stored, _)| stored == key)
            .map(|(_, value)| value)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Inserts `value` under `key`, returning the value it replaced.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        self.insert_hashed(self.hash(&key), key, value)
    }

    /// [`SpreadMap::insert`] with the key's hash from [`SpreadMap::hash`].
    pub fn insert_hashed(&mut self, hash: KeyHash, key: String, value: V) -> Option<V> {
        let hasher = &self.hasher;
        let entry = self.parts[part_of(hash)].entry(
            hash.0,
            |(stored, _)| *stored == key,
            |(stored, _)| hasher.hash_one(stored.as_str()),
        );
        match entry {
            Entry::Occupied(mut occupied) => Some(std::mem::replace(&mut occupied.get_mut().1, value)),
            Entry::Vacant(vacant) => {
                vacant.insert((key, value));
                None
            }
        }
    }

    /// The value under `key`, inserting `make()` first if there is none; the key is hashed once.
    pub fn get_or_insert_with(&mut self, key: &str, make: impl FnOnce() -> V) -> &mut V {
        let hash = self.hash(key);
        let hasher = &self.hasher;
        let entry = self.parts[part_of(hash)].entry(
            hash.0,
            |(stored, _)| stored == key,
            |(stored, _)| hasher.hash_one(stored.as_str()),
        );
        &mut entry.or_insert_with(|| (key.to_string(), make())).into_mut().1
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        let hash = self.hash(key);
        let found = self.parts[part_of(hash)].find_entry(hash.0, |(stored, _)| stored == key);
        found.ok().map(|occupied| occupied.remove().0.1)
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(HashTable::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(HashTable::is_empty)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.parts
            .iter()
            .flat_map(HashTable::iter)
            .map(|(key, value)| (key, value))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.parts.iter().flat_map(HashTable::iter).map(|(_, value)| value)
    }
}

/// Equal when they hold the same entries (two replicas' maps have different hash keys, so their
/// parts differ).
impl<V: PartialEq> PartialEq for SpreadMap<V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(key, value)| other.get(key) == Some(value))
    }
}

impl<V: Eq> Eq for SpreadMap<V> {}

impl<V: fmt::Debug> fmt::Debug for SpreadMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V> FromIterator<(String, V)> for SpreadMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(entries: I) -> Self {
        let mut map = SpreadMap::default();
        for (key, value) in entries {
            map.insert(key, value);
        }
        map
    }
}

/// Encoded as one map, exactly as a `HashMap<String, V>` is: the split is not part of the format.
impl<V: Serialize> Serialize for SpreadMap<V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (key, value) in self.iter() {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for SpreadMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SpreadMapVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for SpreadMapVisitor<V> {
            type Value = SpreadMap<V>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a map from string ids")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut map = SpreadMap::default();
                while let Some((key, value)) = access.next_entry::<String, V>()? {
                    map.insert(key, value);
                }
                Ok(map)
            }
        }

        deserializer.deserialize_map(SpreadMapVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn it_behaves_as_one_map_and_encodes_as_one() {
        let mut spread = SpreadMap::default();
        let mut plain = HashMap::new();
        for n in 0..2_000u64 {
            let key = format!("order-{}", n * 7919 % 1_000);
            assert_eq!(spread.insert(key.clone(), n), plain.insert(key, n));
        }
        for n in (0..1_000u64).step_by(3) {
            let key = format!("order-{n}");
            assert_eq!(spread.remove(&key), plain.remove(&key));
        }
        if let Some(value) = spread.get_mut("order-1") {
            *value += 1;
        }
        if let Some(value) = plain.get_mut("order-1") {
            *value += 1;
        }
        assert_eq!(spread.len(), plain.len());
        assert!(!spread.is_empty());
        for (key, value) in &plain {
            assert_eq!(spread.get(key), Some(value));
        }
        assert_eq!(spread.iter().count(), plain.len());
        assert!(!spread.contains_key("order-0"), "removed");

        // The encoding is a plain map's: either decodes as the other.
        let encoded = bincode::serialize(&spread).expect("encodes");
        let as_plain: HashMap<String, u64> = bincode::deserialize(&encoded).expect("decodes as a map");
        assert_eq!(as_plain, plain);
        let back: SpreadMap<u64> =
            bincode::deserialize(&bincode::serialize(&plain).expect("encodes")).expect("decodes");
        assert_eq!(back, spread, "equal entry by entry, whatever their hash keys");
        assert_eq!(back.parts.len(), PARTS);
    }

    #[test]
    fn a_key_hashed_once_serves_its_lookup_and_its_insert() {
        let mut map: SpreadMap<u64> = SpreadMap::default();
        let hash = map.hash("order-9");
        assert_eq!(map.get_hashed(hash, "order-9"), None);
        assert_eq!(map.insert_hashed(hash, "order-9".to_string(), 1), None);
        assert_eq!(map.get_hashed(hash, "order-9"), Some(&1));
        assert_eq!(map.get("order-9"), Some(&1));
        assert_eq!(map.insert_hashed(hash, "order-9".to_string(), 2), Some(1));
        *map.get_or_insert_with("order-9", || 100) += 1;
        *map.get_or_insert_with("order-10", || 100) += 1;
        assert_eq!((map.get("order-9"), map.get("order-10")), (Some(&3), Some(&101)));
        assert_eq!(map.len(), 2);
        let mut other = SpreadMap::default();
        other.insert("order-10".to_string(), 101);
        assert_ne!(map, other, "a missing entry");
        other.insert("order-9".to_string(), 4);
        assert_ne!(map, other, "a different value");
        other.insert("order-9".to_string(), 3);
        assert_eq!(map, other);
    }

    #[test]
    fn keys_spread_over_every_part() {
        let map: SpreadMap<()> = (0..10_000).map(|n| (format!("u{n}"), ())).collect();
        let sizes: Vec<usize> = map.parts.iter().map(HashTable::len).collect();
        let smallest = sizes.iter().min().copied().unwrap_or(0);
        let largest = sizes.iter().max().copied().unwrap_or(0);
        // 10 000 keys over 64 parts is ~156 each; a useless hash would put them in a few.
        assert!(smallest > 80 && largest < 250, "part sizes {sizes:?}");
    }
}
