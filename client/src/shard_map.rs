//! [`ShardMap`]: which shard owns which SKU range, on which nodes, and who leads it.
//!
//! Invariants kept by [`ShardMap::new`]: shards are sorted by `start`, ranges do not overlap,
//! and an empty `end` (unbounded) appears only on the last shard. Routing is a bytewise
//! binary search over the starts, so a lookup is `O(log shards)`.

use std::collections::BTreeMap;

/// A node id as the cluster numbers them; 0 is never a node.
pub type NodeId = u64;

/// One shard: a contiguous SKU range `[start, end)` replicated by one Raft group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub shard_id: u64,
    pub start: Vec<u8>,
    /// Exclusive end; empty means unbounded.
    pub end: Vec<u8>,
    /// Bumped by every split, merge, replica move and leader transfer of this range.
    pub epoch: u64,
    /// The nodes holding a replica, in the order the client tries them.
    pub replicas: Vec<NodeId>,
    /// The leader as last seen (by the node that sent the map, or by this client); `None` when
    /// unknown.
    pub leader: Option<NodeId>,
}

impl Shard {
    /// True when `sku` falls in `[start, end)`.
    pub fn contains(&self, sku: &[u8]) -> bool {
        sku >= self.start.as_slice() && (self.end.is_empty() || sku < self.end.as_slice())
    }
}

/// The cluster's shard map as this client knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardMap {
    /// Node id → address (`host:port`).
    nodes: BTreeMap<NodeId, String>,
    /// Sorted by `start`, non-overlapping.
    shards: Vec<Shard>,
    /// The meta group's version of this map (0: unknown, e.g. a cluster that has not seeded
    /// its map yet): a refresh never replaces a map with an older one.
    version: u64,
}

impl ShardMap {
    /// This map as version `version` of the meta group's.
    pub fn with_version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    /// The meta group's version of this map (0: unknown).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Builds a map, sorting the shards; rejects overlapping ranges, an unbounded shard that is
    /// not last, and replicas naming unknown nodes.
    pub fn new(nodes: BTreeMap<NodeId, String>, mut shards: Vec<Shard>) -> Result<Self, String> {
        shards.sort_by(|a, b| a.start.cmp(&b.start));
        for pair in shards.windows(2) {
            let (left, right) = (&pair[0], &pair[1]);
            if left.end.is_empty() || left.end > right.start {
                return Err(format!("shards {} and {} overlap", left.shard_id, right.shard_id));
            }
        }
        for shard in &shards {
            if !shard.end.is_empty() && shard.end <= shard.start {
                return Err(format!("shard {} has end <= start", shard.shard_id));
            }
            if let Some(missing) = shard.replicas.iter().find(|id| !nodes.contains_key(id)) {
                return Err(format!("shard {} names unknown node {missing}", shard.shard_id));
            }
        }
        Ok(ShardMap {
            nodes,
            shards,
            version: 0,
        })
    }

    /// The shard whose range holds `sku`, if any.
    pub fn shard_for(&self, sku: &[u8]) -> Option<&Shard> {
        // The last shard whose start <= sku is the only candidate.
        let after = self.shards.partition_point(|s| s.start.as_slice() <= sku);
        let candidate = self.shards.get(after.checked_sub(1)?)?;
        candidate.contains(sku).then_some(candidate)
    }

    /// All shards, sorted by range start.
    pub fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// All nodes by id.
    pub fn nodes(&self) -> &BTreeMap<NodeId, String> {
        &self.nodes
    }

    /// The address of node `id`.
    pub fn addr(&self, id: NodeId) -> Option<&str> {
        self.nodes.get(&id).map(String::as_str)
    }

    /// The node id at `addr`, if the map knows one.
    pub fn node_at(&self, addr: &str) -> Option<NodeId> {
        self.nodes
            .iter()
            .find(|(_, known)| known.as_str() == addr)
            .map(|(id, _)| *id)
    }

    /// Forgets the leader of `shard_id` (it stopped answering). Returns false when nothing
    /// changed.
    pub(crate) fn clear_leader(&mut self, shard_id: u64) -> bool {
        match self.shards.iter_mut().find(|s| s.shard_id == shard_id) {
            Some(shard) if shard.leader.is_some() => {
                shard.leader = None;
                true
            }
            _ => false,
        }
    }

    /// Whether [`ShardMap::set_leader`] would change nothing: every successful write confirms
    /// its shard's leader, and copying the map to find that out cost allocations per RPC.
    pub(crate) fn knows_leader(&self, shard_id: u64, leader: NodeId, addr: Option<&str>) -> bool {
        let addr_known = addr.is_none_or(|addr| self.nodes.get(&leader).map(String::as_str) == Some(addr));
        let leader_known = !self
            .shards
            .iter()
            .any(|s| s.shard_id == shard_id && s.leader != Some(leader));
        addr_known && leader_known
    }

    /// Records `leader` as the leader of `shard_id` (and its address, when the map lacks it).
    /// Returns false when nothing changed.
    pub(crate) fn set_leader(&mut self, shard_id: u64, leader: NodeId, addr: Option<&str>) -> bool {
        let mut changed = false;
        let new_addr = addr.filter(|addr| self.nodes.get(&leader).map(String::as_str) != Some(addr));
        if let Some(addr) = new_addr {
            self.nodes.insert(leader, addr.to_string());
            changed = true;
        }
        let stale = self
            .shards
            .iter_mut()
            .find(|s| s.shard_id == shard_id && s.leader != Some(leader));
        if let Some(shard) = stale {
            shard.leader = Some(leader);
            changed = true;
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(shard_id: u64, start: &[u8], end: &[u8]) -> Shard {
        Shard {
            shard_id,
            start: start.to_vec(),
            end: end.to_vec(),
            epoch: 1,
            replicas: vec![1],
            leader: None,
        }
    }

    fn map(shards: Vec<Shard>) -> Result<ShardMap, String> {
        ShardMap::new(BTreeMap::from([(1, "a:1".to_string())]), shards)
    }

    #[test]
    fn routes_bytewise() {
        let map = map(vec![shard(2, b"m", b""), shard(1, b"", b"m")]).unwrap();
        assert_eq!(map.shard_for(b"").unwrap().shard_id, 1);
        assert_eq!(map.shard_for(b"lzzz").unwrap().shard_id, 1);
        assert_eq!(map.shard_for(b"m").unwrap().shard_id, 2);
        assert_eq!(map.shard_for(&[0xff, 0xff]).unwrap().shard_id, 2);
    }

    #[test]
    fn gaps_route_nowhere() {
        let map = map(vec![shard(1, b"b", b"d"), shard(2, b"f", b"h")]).unwrap();
        assert!(map.shard_for(b"a").is_none());
        assert!(map.shard_for(b"d").is_none());
        assert_eq!(map.shard_for(b"g").unwrap().shard_id, 2);
        assert!(map.shard_for(b"h").is_none());
    }

    #[test]
    fn rejects_overlap_and_unknown_nodes() {
        assert!(map(vec![shard(1, b"", b""), shard(2, b"m", b"")]).is_err());
        assert!(map(vec![shard(1, b"", b"n"), shard(2, b"m", b"")]).is_err());
        let mut orphan = shard(1, b"", b"");
        orphan.replicas = vec![9];
        assert!(map(vec![orphan]).is_err());
    }

    #[test]
    fn a_known_leader_is_known_until_it_or_its_address_changes() {
        let mut map = map(vec![shard(1, b"", b"m"), shard(2, b"m", b"")]).unwrap();
        assert!(!map.knows_leader(1, 1, None));
        assert!(map.set_leader(1, 1, None));
        assert!(map.knows_leader(1, 1, None));
        assert!(map.knows_leader(1, 1, Some("a:1")));
        assert!(!map.knows_leader(1, 1, Some("a:2")), "a new address");
        assert!(!map.knows_leader(1, 2, None), "another node");
        assert!(!map.knows_leader(2, 1, None), "another shard");
        assert!(!map.set_leader(1, 1, Some("a:1")), "nothing to change");
        assert!(map.set_leader(1, 2, Some("b:1")));
        assert!(map.knows_leader(1, 2, Some("b:1")));
    }
}
