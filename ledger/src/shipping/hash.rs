//! Which PostgreSQL shard an order goes to: `fnv1a64(order_id UTF-8 bytes) mod N`.
//!
//! FNV-1a 64 (offset basis 0xcbf29ce484222325, prime 0x100000001b3) is tiny, has no
//! dependency and is fully specified, so any other program (a backfill, a query router) can
//! compute the same shard. Changing it, or the order of `[[postgres]]` URLs, would send an
//! order's retry to another shard: both are part of the on-disk contract (docs/shipping.md).

const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(OFFSET_BASIS, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(PRIME))
}

/// The Postgres shard (0-based) for `order_id` among `shard_count` shards (`shard_count > 0`).
pub fn postgres_shard(order_id: &str, shard_count: usize) -> usize {
    (fnv1a64(order_id.as_bytes()) % shard_count.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_published_fnv1a64_vectors() {
        // Reference values of the FNV-1a 64 specification (draft-eastlake-fnv test vectors).
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn spreads_order_ids_over_every_shard() {
        let mut counts = [0usize; 4];
        for n in 0..4000 {
            counts[postgres_shard(&format!("order-{n}"), 4)] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "uneven: {counts:?}");
    }
}
