//! Hot ranges: which shard the placement scheduler splits, and where, from the load each shard
//! applied. Pure: `node/placement.rs` measures the load (operations per second per shard and per
//! SKU, from the shards' own applied-operation counters) and carries the split out as an
//! operator's `ledger shard split` would be, after which the new half's leadership goes to
//! another voter (`node/reshape.rs`), so the two halves are led from different nodes.
//!
//! Policy: among the shards applying at least [`HotRangePolicy::ops_per_s_min`], the busiest one
//! whose load can be cut in two at a SKU boundary so that the lighter half carries at least
//! [`HotRangePolicy::lighter_half_min`] of it. The cut is the boundary that balances the halves
//! best (ties: the lowest SKU). A shard whose load is one SKU, or nearly, is never split: one
//! SKU is one counter in one Raft group, and a split would only move it (its path is batching
//! and the lease, docs/architecture.md). Splits only cut load in two, and there are no merges
//! to undo them, so the scheduler cannot flap; it stops when every shard is below the threshold
//! or carried by one SKU.

use crate::meta::map::ShardId;
use crate::meta::map::ShardMap;

/// When a shard is hot enough to split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HotRangePolicy {
    /// Operations per second a shard must apply before it is split.
    pub ops_per_s_min: f64,
    /// The share of the shard's load the lighter half must carry (0.0 to 0.5).
    pub lighter_half_min: f64,
}

/// What one shard applied over the last measuring interval.
#[derive(Debug, Clone, PartialEq)]
pub struct RangeLoad {
    pub shard_id: ShardId,
    /// Operations per second, every kind.
    pub ops_per_s: f64,
    /// Operations per second by SKU (any order).
    pub skus: Vec<(Vec<u8>, f64)>,
}

/// The shard to split and the SKU the new shard starts at, if any shard is hot and divisible.
pub fn split_point(map: &ShardMap, loads: &[RangeLoad], policy: HotRangePolicy) -> Option<(ShardId, Vec<u8>)> {
    let mut candidates: Vec<(f64, ShardId, Vec<u8>)> = loads
        .iter()
        .filter(|load| load.ops_per_s >= policy.ops_per_s_min)
        .filter_map(|load| {
            let shard = map.shards.get(&load.shard_id)?;
            let mut skus: Vec<&(Vec<u8>, f64)> = load
                .skus
                .iter()
                .filter(|(sku, ops)| *ops > 0.0 && shard.contains(sku))
                .collect();
            skus.sort_by(|a, b| a.0.cmp(&b.0));
            let total: f64 = skus.iter().map(|(_, ops)| ops).sum();
            if skus.len() < 2 || total <= 0.0 {
                return None;
            }
            // The boundary k (the right half starts at skus[k]) that balances the halves best.
            let mut left = 0.0;
            let mut best: Option<(f64, usize)> = None;
            for k in 1..skus.len() {
                left += skus[k - 1].1;
                let lighter = left.min(total - left);
                if best.is_none_or(|(best_lighter, _)| lighter > best_lighter) {
                    best = Some((lighter, k));
                }
            }
            let (lighter, k) = best?;
            let at = skus[k].0.clone();
            let inside = at.as_slice() > shard.start.as_slice() && (shard.end.is_empty() || at < shard.end);
            (lighter / total >= policy.lighter_half_min && inside).then_some((load.ops_per_s, load.shard_id, at))
        })
        .collect();
    // The busiest first; ties: the lowest shard id.
    candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    candidates.into_iter().next().map(|(_, shard_id, at)| (shard_id, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::map::MetaCommand;
    use crate::meta::map::ShardEntry;

    const POLICY: HotRangePolicy = HotRangePolicy {
        ops_per_s_min: 1_000.0,
        lighter_half_min: 0.2,
    };

    fn map() -> ShardMap {
        let entry = |start: &str, end: &str| ShardEntry {
            start: start.as_bytes().to_vec(),
            end: end.as_bytes().to_vec(),
            replicas: vec![1, 2, 3],
            learners: Vec::new(),
            epoch: 1,
            conf_ver: 1,
        };
        let mut map = ShardMap::default();
        map.apply(&MetaCommand::Seed {
            nodes: (1..=3).map(|id| (id, format!("127.0.0.1:{id}"))).collect(),
            meta_replicas: vec![1, 2, 3],
            shards: vec![(1, entry("", "m")), (2, entry("m", ""))],
        })
        .expect("seed");
        map
    }

    fn load(shard_id: ShardId, skus: &[(&str, f64)]) -> RangeLoad {
        RangeLoad {
            shard_id,
            ops_per_s: skus.iter().map(|(_, ops)| ops).sum(),
            skus: skus.iter().map(|(sku, ops)| (sku.as_bytes().to_vec(), *ops)).collect(),
        }
    }

    #[test]
    fn two_hot_skus_in_one_range_are_cut_apart_and_the_busiest_range_goes_first() {
        let loads = [
            load(2, &[("n", 600.0), ("q", 700.0)]),
            load(1, &[("c", 900.0), ("a", 1_000.0), ("b", 50.0)]),
        ];
        // Shard 1 is the busiest: a | b c balances it best (1000 against 950).
        assert_eq!(split_point(&map(), &loads, POLICY), Some((1, b"b".to_vec())));
    }

    #[test]
    fn a_cold_range_a_single_hot_sku_or_a_cut_at_the_range_start_is_left_alone() {
        let cold = [load(1, &[("a", 300.0), ("c", 300.0)])];
        assert_eq!(split_point(&map(), &cold, POLICY), None);
        let one_sku = [load(1, &[("a", 5_000.0)])];
        assert_eq!(split_point(&map(), &one_sku, POLICY), None);
        // 95 % of the load on one SKU: the lighter half would carry 5 %.
        let lopsided = [load(1, &[("a", 9_500.0), ("k", 500.0)])];
        assert_eq!(split_point(&map(), &lopsided, POLICY), None);
        // Shard 2 starts at "m": a cut there would leave its lower half empty.
        let at_start = [load(2, &[("m", 2_000.0), ("n", 2_000.0)])];
        assert_eq!(split_point(&map(), &at_start, POLICY), Some((2, b"n".to_vec())));
        // A SKU the map routes elsewhere (a stale count) is not counted.
        let stale = [load(1, &[("a", 2_000.0), ("x", 2_000.0)])];
        assert_eq!(split_point(&map(), &stale, POLICY), None);
    }
}
