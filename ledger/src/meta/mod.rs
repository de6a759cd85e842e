//! Shard 0, the meta group, and placement. [`map`]: the shard map as a replicated state and
//! the commands that reshape the cluster (add or remove a node, add, remove or move a replica,
//! drain a node); the node carries the map's queued steps out (`node/reshape.rs`) and starts or
//! stops replicas to match it (`node/hosting.rs`). Before a sale: a demand [`forecast`], a
//! [`plan`] of splits and leader moves that balances the forecast load, and the [`executor`]
//! trait a plan is carried out through. While it serves: the placement [`scheduler`], which
//! balances leaderships and replica counts across nodes, and [`hot_ranges`], which picks a hot
//! range to split (both run by `node/placement.rs`). Pure, like the ledger.

pub mod executor;
pub mod forecast;
pub mod hot_ranges;
pub mod map;
pub mod plan;
pub mod scheduler;
