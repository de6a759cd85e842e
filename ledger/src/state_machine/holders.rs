//! [`Holders`]: the units each buyer holds (reserved + sold) of one SKU that has a per-user
//! limit. SKUs without a limit keep no holders at all.
//!
//! A buyer is a [`UserKey`] (a keyed hash, `state_machine::keys`), so a holder is a fixed
//! 24-byte slot with no allocation of its own. Split into [`PARTS`] hash tables by bits of the
//! key, so that a hot SKU with a million buyers never rehashes all of them in one write. Encoded
//! sorted by key, so replicas encode the same bytes whatever order their tables hold.

use hashbrown::HashTable;
use serde::Deserialize;
use serde::Serialize;

use crate::state_machine::keys::UserKey;
use crate::state_machine::keys::part_and_hash;

const PARTS: usize = 16;

/// One buyer's units of one SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub user: UserKey,
    pub units: u64,
}

#[derive(Debug, Clone)]
pub struct Holders {
    parts: Vec<HashTable<Holder>>,
    len: usize,
}

impl Default for Holders {
    fn default() -> Self {
        Holders {
            parts: (0..PARTS).map(|_| HashTable::new()).collect(),
            len: 0,
        }
    }
}

impl PartialEq for Holders {
    fn eq(&self, other: &Self) -> bool {
        self.sorted() == other.sorted()
    }
}

impl Eq for Holders {}

impl Holders {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Units `user` holds (0 when none).
    pub fn get(&self, user: UserKey) -> u64 {
        let (part, hash) = part_and_hash(user.0, PARTS);
        self.parts[part]
            .find(hash, |holder| holder.user == user)
            .map_or(0, |holder| holder.units)
    }

    /// Adds `units` to what `user` holds.
    pub fn add(&mut self, user: UserKey, units: u64) {
        let (part, hash) = part_and_hash(user.0, PARTS);
        let table = &mut self.parts[part];
        match table.find_mut(hash, |holder| holder.user == user) {
            Some(holder) => holder.units += units,
            None => {
                table.insert_unique(hash, Holder { user, units }, |holder| holder.user.0[0]);
                self.len += 1;
            }
        }
    }

    /// Takes `units` off what `user` holds (never below zero); a holder left with none is removed.
    pub fn remove(&mut self, user: UserKey, units: u64) {
        let (part, hash) = part_and_hash(user.0, PARTS);
        if let Ok(mut slot) = self.parts[part].find_entry(hash, |holder| holder.user == user) {
            let holder = slot.get_mut();
            holder.units = holder.units.saturating_sub(units);
            if holder.units == 0 {
                slot.remove();
                self.len -= 1;
            }
        }
    }

    /// Every holder, sorted by key: the encoded form.
    pub fn sorted(&self) -> Vec<Holder> {
        let mut holders: Vec<Holder> = self.parts.iter().flat_map(|part| part.iter().copied()).collect();
        holders.sort_unstable_by_key(|holder| holder.user);
        holders
    }

    /// The holders [`Holders::sorted`] encoded; refuses a list not strictly sorted by key (a
    /// buyer listed twice would have their units added up, past `u64::MAX` if need be).
    pub fn from_sorted(holders: &[Holder]) -> Result<Holders, String> {
        if let Some(pair) = holders.windows(2).find(|pair| pair[0].user >= pair[1].user) {
            return Err(format!(
                "holders not sorted by key: {:?} before {:?}",
                pair[0].user, pair[1].user
            ));
        }
        let mut table = Holders::default();
        for holder in holders.iter().filter(|holder| holder.units > 0) {
            table.add(holder.user, holder.units);
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holders_add_remove_and_encode_sorted() {
        let mut holders = Holders::default();
        let (alice, bob) = (UserKey([7, 1]), UserKey([3, 2]));
        holders.add(alice, 2);
        holders.add(bob, 1);
        holders.add(alice, 1);
        assert_eq!((holders.get(alice), holders.get(bob), holders.len()), (3, 1, 2));
        holders.remove(bob, 5);
        assert_eq!((holders.get(bob), holders.len()), (0, 1));
        holders.add(bob, 4);
        let sorted = holders.sorted();
        assert_eq!(sorted.iter().map(|h| h.user).collect::<Vec<_>>(), vec![bob, alice]);
        assert_eq!(Holders::from_sorted(&sorted), Ok(holders));
    }

    /// Found by the `snapshot` fuzz target (docs/security.md, "Fuzzing"): a snapshot listing a
    /// buyer twice had their units added up, overflowing `u64` (a panic with overflow checks,
    /// a wrapped count without).
    #[test]
    fn holders_not_strictly_sorted_are_refused() {
        let (alice, bob) = (UserKey([3, 1]), UserKey([7, 2]));
        let twice = [
            Holder {
                user: alice,
                units: u64::MAX,
            },
            Holder { user: alice, units: 1 },
        ];
        assert!(Holders::from_sorted(&twice).is_err());
        let unsorted = [Holder { user: bob, units: 1 }, Holder { user: alice, units: 1 }];
        assert!(Holders::from_sorted(&unsorted).is_err());
    }
}
