//! Fixed-size keys for the strings clients send: order ids, users and whole requests, hashed
//! with a key that the log chose.
//!
//! The applied state keeps no string per order or per holder: an order id or a user becomes a
//! 128-bit SipHash-1-3 of its bytes ([`OrderKey`], [`UserKey`]), a request a 64-bit fingerprint
//! of what must match for a repeat to be a replay. The hash key ([`HashKey`]) is drawn at random
//! once by a leader and carried in a `Configure` entry, so every replica hashes with the same
//! key (their states are byte-identical at the same applied index) and a client that does not
//! know it cannot craft two ids that collide: with 128 bits, two of a billion orders collide
//! with probability about 1.5e-21.
//!
//! Until a shard has applied its first `Configure` entry its key is all zeros; a leader always
//! proposes the key before the first write it proposes (`node::write`), so the zero key only
//! ever hashes entries of a log written before keys existed.

use serde::Deserialize;
use serde::Serialize;
use siphasher::sip128::Hasher128;
use siphasher::sip128::SipHasher13;

/// The SipHash key every replica of a shard hashes ids with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashKey(pub [u64; 2]);

impl HashKey {
    pub fn is_set(&self) -> bool {
        self.0 != [0, 0]
    }

    fn hasher(&self, domain: u8) -> SipHasher13 {
        // The domain byte keeps an order id and a user with the same bytes apart.
        let mut hasher = SipHasher13::new_with_keys(self.0[0], self.0[1]);
        std::hash::Hasher::write_u8(&mut hasher, domain);
        hasher
    }

    pub fn order(&self, order_id: &str) -> OrderKey {
        OrderKey(self.hash128(DOMAIN_ORDER, order_id.as_bytes()))
    }

    pub fn user(&self, user: &str) -> UserKey {
        UserKey(self.hash128(DOMAIN_USER, user.as_bytes()))
    }

    /// What a repeat of a reserve or purchase must match to be a replay of it (else it is
    /// `OrderIdReused`): the operation, the SKU, the quantity and the user.
    pub fn request(&self, purchase: bool, sku: &[u8], qty: u64, user: &str) -> u64 {
        let mut hasher = self.hasher(DOMAIN_REQUEST);
        std::hash::Hasher::write_u8(&mut hasher, u8::from(purchase));
        write_field(&mut hasher, sku);
        std::hash::Hasher::write_u64(&mut hasher, qty);
        write_field(&mut hasher, user.as_bytes());
        hasher.finish128().h1
    }

    fn hash128(&self, domain: u8, bytes: &[u8]) -> [u64; 2] {
        let mut hasher = self.hasher(domain);
        write_field(&mut hasher, bytes);
        let hash = hasher.finish128();
        [hash.h1, hash.h2]
    }
}

const DOMAIN_ORDER: u8 = 1;
const DOMAIN_USER: u8 = 2;
const DOMAIN_REQUEST: u8 = 3;

/// A field with its length first, so that ("ab", "c") and ("a", "bc") hash apart.
fn write_field(hasher: &mut SipHasher13, bytes: &[u8]) {
    std::hash::Hasher::write_u64(hasher, bytes.len() as u64);
    std::hash::Hasher::write(hasher, bytes);
}

/// An order id, hashed (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OrderKey(pub [u64; 2]);

/// A user, hashed (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UserKey(pub [u64; 2]);

/// The two halves of a key: which of a table's parts it lives in, and its hash inside that part.
/// Both are bits of a keyed hash, so they are uniform whatever ids clients choose.
pub(crate) fn part_and_hash(key: [u64; 2], parts: usize) -> (usize, u64) {
    ((key[1] % parts as u64) as usize, key[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_the_hash_key_the_domain_and_every_field() {
        let key = HashKey([1, 2]);
        let other = HashKey([1, 3]);
        assert_eq!(key.order("o-1"), key.order("o-1"));
        assert_ne!(key.order("o-1"), other.order("o-1"));
        assert_ne!(key.order("o-1"), key.order("o-2"));
        assert_ne!(key.order("alice").0, key.user("alice").0);
        let request = key.request(true, b"sku", 2, "alice");
        assert_eq!(request, key.request(true, b"sku", 2, "alice"));
        assert_ne!(request, key.request(false, b"sku", 2, "alice"));
        assert_ne!(request, key.request(true, b"sk", 2, "alice"));
        assert_ne!(request, key.request(true, b"sku", 3, "alice"));
        assert_ne!(request, key.request(true, b"sku", 2, "bob"));
        // Field boundaries count.
        assert_ne!(key.request(true, b"ab", 1, "c"), key.request(true, b"a", 1, "bc"));
        assert!(!HashKey::default().is_set());
        assert!(key.is_set());
    }
}
