//! [`SpreadMap`]: a map from string ids to values, split into a fixed number of hash maps so
//! that it never rehashes everything at once.
//!
//! A hash map doubles when it fills up and rehashes every key in that one insert. The orders of
//! a shard and the holders of a hot SKU reach hundreds of thousands of keys, every replica
//! doubles at the same operation, and the write lock is held meanwhile: at half the peak rate
//! the benchmark's p99 jumped from ~4 ms to 55–80 ms at each doubling (measured with snapshots
//! off). Split into `PARTS` maps by a cheap hash of the key, each part holds a 64th of the keys
//! and the parts fill up at slightly different moments, so the rehashing is spread over many
//! operations, each paying for a 64th.
//!
//! Each part is a std `HashMap` with its randomly keyed SipHash: ids come from clients, and a
//! client choosing ids that all land in one part only makes that part an ordinary hash map.

use std::collections::HashMap;
use std::collections::hash_map;
use std::fmt;
use std::marker::PhantomData;

use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde::Serializer;
use serde::de::MapAccess;
use serde::de::Visitor;
use serde::ser::SerializeMap;

/// How many hash maps the keys are spread over.
const PARTS: usize = 64;

#[derive(Clone, PartialEq, Eq)]
pub struct SpreadMap<V> {
    /// Always `PARTS` maps; a key lives in `parts[part_of(key)]`.
    parts: Vec<HashMap<String, V>>,
}

/// The part a key lives in: FNV-1a of its bytes. Fixed (not random), so two replicas with the
/// same keys have the same parts and compare part by part.
fn part_of(key: &str) -> usize {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % PARTS as u64) as usize
}

impl<V> Default for SpreadMap<V> {
    fn default() -> Self {
        SpreadMap {
            parts: (0..PARTS).map(|_| HashMap::new()).collect(),
        }
    }
}

impl<V> SpreadMap<V> {
    pub fn get(&self, key: &str) -> Option<&V> {
        self.parts[part_of(key)].get(key)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.parts[part_of(key)].get_mut(key)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Inserts `value` under `key`, returning the value it replaced.
    pub fn insert(&mut self, key: String, value: V) -> Option<V> {
        self.parts[part_of(&key)].insert(key, value)
    }

    pub fn remove(&mut self, key: &str) -> Option<V> {
        self.parts[part_of(key)].remove(key)
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.parts.iter().all(HashMap::is_empty)
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.parts.iter().flat_map(HashMap::iter)
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.parts.iter().flat_map(HashMap::values)
    }
}

impl<'a, V> IntoIterator for &'a SpreadMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = std::iter::FlatMap<
        std::slice::Iter<'a, HashMap<String, V>>,
        hash_map::Iter<'a, String, V>,
        fn(&'a HashMap<String, V>) -> hash_map::Iter<'a, String, V>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        self.parts.iter().flat_map(HashMap::iter)
    }
}

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
        assert_eq!(back, spread, "equal part by part");
        assert_eq!(back.parts.len(), PARTS);
    }

    #[test]
    fn keys_spread_over_every_part() {
        let map: SpreadMap<()> = (0..10_000).map(|n| (format!("u{n}"), ())).collect();
        let sizes: Vec<usize> = map.parts.iter().map(HashMap::len).collect();
        let smallest = sizes.iter().min().copied().unwrap_or(0);
        let largest = sizes.iter().max().copied().unwrap_or(0);
        // 10 000 keys over 64 parts is ~156 each; a useless hash would put them in a few.
        assert!(smallest > 80 && largest < 250, "part sizes {sizes:?}");
    }
}
