//! Shard 0, the meta group: the shard map as a replicated state ([`map`]) and the commands
//! that reshape the cluster (add or remove a node, add, remove or move a replica, drain a
//! node). Pure, like the ledger: the node carries the map's queued steps out
//! (`node/reshape.rs`) and starts or stops replicas to match it (`node/hosting.rs`).

pub mod map;
