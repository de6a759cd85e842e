//! The shard map as shard 0 (the meta group) replicates it: nodes and their addresses, every
//! data shard's SKU range, replicas and epochs, and the queue of reshaping steps the meta
//! leader is carrying out.
//!
//! Pure like the ledger: [`ShardMap::apply`] is a function of (map, command), so every replica
//! of shard 0 holds the same map at the same log index. A command that does not fit the map
//! (an unknown node, a replica that is already there, a drain with nowhere to go) is refused
//! whole with a reason and changes nothing.
//!
//! A reshaping is never one entry: adding a replica needs the new node to catch up before it
//! may vote, removing one must not remove the leader under its own feet. So the map keeps
//! [`Step`]s, queued by one command ([`MetaCommand::Enqueue`], [`MetaCommand::Drain`]) and
//! completed by another ([`MetaCommand::StepDone`]) once the shard's own Raft group has made
//! the change. A crash between the two leaves the step queued: the next meta leader carries
//! it out again, and each step is idempotent on the shard's side (`node/reshape.rs`).

use std::collections::BTreeMap;
use std::collections::VecDeque;

use serde::Deserialize;
use serde::Serialize;

/// A node id (0 is never a node).
pub type NodeId = u64;
/// A shard id; 0 is the meta group itself, data shards are numbered from 1.
pub type ShardId = u64;

/// The meta group's shard id.
pub const META_SHARD: ShardId = 0;

/// Whether a node takes new replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    Active,
    /// Its replicas are being moved off; it is given no new ones.
    Draining,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// `host:port` of its gRPC server.
    pub addr: String,
    pub state: NodeState,
}

/// One data shard: the SKUs `[start, end)` (empty `end`: unbounded) and who replicates them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    /// Voters of the shard's Raft group.
    pub replicas: Vec<NodeId>,
    /// Nodes being added: they host a replica that catches up as a learner before it votes.
    pub learners: Vec<NodeId>,
    /// The range's version: bumped by every change of `[start, end)` (split, merge). Requests
    /// carry the epoch they were routed by, and a shard refuses a stale one.
    pub epoch: u64,
    /// The replica set's version: bumped by every change of `replicas` or `learners`, so a
    /// client or node can tell the newer of two maps' views of a shard.
    pub conf_ver: u64,
}

impl ShardEntry {
    /// Every node that should run a replica of this shard (voters and learners).
    pub fn hosts(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.replicas.iter().chain(&self.learners).copied()
    }

    pub fn contains(&self, sku: &[u8]) -> bool {
        sku >= self.start.as_slice() && (self.end.is_empty() || sku < self.end.as_slice())
    }
}

/// One queued change of a shard's replica set (shard 0 included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step {
    /// Names the step in `StepDone`, so a late or repeated completion cannot complete another.
    pub id: u64,
    pub shard_id: ShardId,
    pub change: ReplicaChange,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaChange {
    /// `node` hosts a learner that catches up, then becomes a voter.
    Add(NodeId),
    /// `node` stops being a voter (leadership moves off it first) and stops hosting the shard.
    Remove(NodeId),
    /// The shard keeps the SKUs below `at`; `new_shard` (its id given when the step is queued)
    /// takes the rest, on the same replicas. Carried out by the shard's own log (a `Split`
    /// entry); once done the map narrows the shard, bumps its epoch and adds `new_shard`. An
    /// operator cannot cancel it (the shard may already have split, `node/reshape.rs`); it is
    /// cancelled only when the shard's log refused it (nothing split).
    Split { at: Vec<u8>, new_shard: ShardId },
    /// The shard takes the SKUs of `right`, the shard just above it on the same voters, and
    /// `right` ends. Carried out by both logs: `right` freezes (applies nothing more), then the
    /// shard's own log takes `right`'s frozen state (a `Merge` entry); a merge the shard's log
    /// refuses thaws `right` and is cancelled. Once done the map widens the shard, bumps its
    /// epoch and drops `right`. An operator cannot cancel it (`right` may be frozen).
    Merge { right: ShardId },
}

/// A change asked for by an operator or the scheduler (what [`MetaCommand::Enqueue`] carries).
/// For a split, the `new_shard` it names is ignored: the map gives the next free id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRequest {
    pub shard_id: ShardId,
    pub change: ReplicaChange,
}

/// What a shard-0 log entry asks of the map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// The map cluster.toml describes, proposed by the first meta leader. Taken only by an
    /// empty map: a later seed (a leader that restarted with an edited file) changes nothing.
    Seed {
        nodes: Vec<(NodeId, String)>,
        meta_replicas: Vec<NodeId>,
        shards: Vec<(ShardId, ShardEntry)>,
    },
    /// A node joins the cluster (it holds no replica until steps give it some).
    AddNode { node_id: NodeId, addr: String },
    /// A node with no replica, learner or queued step leaves the cluster.
    RemoveNode { node_id: NodeId },
    /// Queues changes, in order; refused whole when one does not fit the map as it will be
    /// once the steps before it are done.
    Enqueue(Vec<StepRequest>),
    /// Marks `node_id` draining and queues, for every shard it replicates, a new replica on
    /// the active node with the fewest replicas that lacks one, then the removal of its own.
    Drain { node_id: NodeId },
    /// The shard's Raft group made step `step_id`'s change: the map records it.
    StepDone { step_id: u64 },
    /// Step `step_id` is dropped without its change (an operator gave up on it); an `Add`
    /// takes its learner off the map.
    StepCancelled { step_id: u64 },
}

/// The replicated shard map (the applied state of shard 0; empty on data shards).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    /// Bumped by every command that changed the map (0: never seeded).
    pub version: u64,
    pub nodes: BTreeMap<NodeId, NodeEntry>,
    /// Voters of shard 0 (learners of shard 0 are in `meta_learners`).
    pub meta_replicas: Vec<NodeId>,
    pub meta_learners: Vec<NodeId>,
    pub meta_conf_ver: u64,
    /// Data shards by id.
    pub shards: BTreeMap<ShardId, ShardEntry>,
    /// Reshaping steps not yet done, oldest first; the meta leader carries out the first.
    pub steps: VecDeque<Step>,
    pub next_step_id: u64,
    /// The id the next new shard (a split's right half) gets.
    pub next_shard_id: ShardId,
    /// Each shard a split created, with the shard it was split off.
    pub split_from: BTreeMap<ShardId, ShardId>,
    /// Each shard a merge ended, with the shard it was merged into.
    pub merged_into: BTreeMap<ShardId, ShardId>,
}

/// Replica counts a 3- or 5-replica group may have; also what a voter set may shrink to.
const REPLICAS_MIN: usize = 1;

impl ShardMap {
    pub fn is_seeded(&self) -> bool {
        self.version > 0
    }

    /// Voters and learners of `shard_id` (0: the meta group), as the map has them now.
    pub fn hosts_of(&self, shard_id: ShardId) -> Option<(Vec<NodeId>, Vec<NodeId>)> {
        if shard_id == META_SHARD {
            return self
                .is_seeded()
                .then(|| (self.meta_replicas.clone(), self.meta_learners.clone()));
        }
        self.shards
            .get(&shard_id)
            .map(|shard| (shard.replicas.clone(), shard.learners.clone()))
    }

    /// Every shard (0 included) `node_id` should run a replica of.
    pub fn shards_on(&self, node_id: NodeId) -> Vec<ShardId> {
        let mut hosted = Vec::new();
        if self.meta_replicas.contains(&node_id) || self.meta_learners.contains(&node_id) {
            hosted.push(META_SHARD);
        }
        hosted.extend(
            self.shards
                .iter()
                .filter(|(_, shard)| shard.hosts().any(|id| id == node_id))
                .map(|(id, _)| *id),
        );
        hosted
    }

    /// The data shard whose range holds `sku`.
    pub fn shard_for_sku(&self, sku: &[u8]) -> Option<(ShardId, &ShardEntry)> {
        self.shards
            .iter()
            .find(|(_, shard)| shard.contains(sku))
            .map(|(id, shard)| (*id, shard))
    }

    /// Applies one command; `Err` names why it was refused (the map is then unchanged).
    pub fn apply(&mut self, command: &MetaCommand) -> Result<(), String> {
        let mut next = self.clone();
        next.apply_to_copy(command)?;
        next.version = self.version + 1;
        *self = next;
        Ok(())
    }

    fn apply_to_copy(&mut self, command: &MetaCommand) -> Result<(), String> {
        match command {
            MetaCommand::Seed {
                nodes,
                meta_replicas,
                shards,
            } => self.seed(nodes, meta_replicas, shards),
            MetaCommand::AddNode { node_id, addr } => {
                if *node_id == 0 {
                    return Err("node id 0 is reserved".into());
                }
                if addr.is_empty() {
                    return Err(format!("node {node_id}: an empty address"));
                }
                if let Some(known) = self.nodes.get(node_id) {
                    return Err(format!("node {node_id} is already in the cluster (at {})", known.addr));
                }
                if let Some((other, _)) = self.nodes.iter().find(|(_, entry)| entry.addr == *addr) {
                    return Err(format!("address {addr} is node {other}'s"));
                }
                self.nodes.insert(
                    *node_id,
                    NodeEntry {
                        addr: addr.clone(),
                        state: NodeState::Active,
                    },
                );
                Ok(())
            }
            MetaCommand::RemoveNode { node_id } => {
                self.known_node(*node_id)?;
                let hosted = self.shards_on(*node_id);
                if !hosted.is_empty() {
                    return Err(format!(
                        "node {node_id} still hosts shards {hosted:?}: drain it first (ledger node drain)"
                    ));
                }
                if self.steps.iter().any(|step| step.change.node() == Some(*node_id)) {
                    return Err(format!("node {node_id} has queued steps; wait for them"));
                }
                self.nodes.remove(node_id);
                Ok(())
            }
            MetaCommand::Enqueue(requests) => {
                if requests.is_empty() {
                    return Err("no step to queue".into());
                }
                for request in requests {
                    self.enqueue(request.clone())?;
                }
                Ok(())
            }
            MetaCommand::Drain { node_id } => self.drain(*node_id),
            MetaCommand::StepDone { step_id } => {
                let step = self.take_step(*step_id)?;
                if let ReplicaChange::Split { at, new_shard } = step.change {
                    return self.record_split(step.shard_id, at, new_shard);
                }
                if let ReplicaChange::Merge { right } = step.change {
                    return self.record_merge(step.shard_id, right);
                }
                let (voters, learners, conf_ver) = self.replica_sets_mut(step.shard_id)?;
                match step.change {
                    ReplicaChange::Split { .. } | ReplicaChange::Merge { .. } => unreachable!("handled above"),
                    ReplicaChange::Add(node) => {
                        learners.retain(|id| *id != node);
                        if !voters.contains(&node) {
                            voters.push(node);
                            voters.sort_unstable();
                        }
                    }
                    ReplicaChange::Remove(node) => voters.retain(|id| *id != node),
                }
                *conf_ver += 1;
                Ok(())
            }
            MetaCommand::StepCancelled { step_id } => {
                let step = self.take_step(*step_id)?;
                if let ReplicaChange::Add(node) = step.change {
                    let (_, learners, conf_ver) = self.replica_sets_mut(step.shard_id)?;
                    learners.retain(|id| *id != node);
                    *conf_ver += 1;
                }
                Ok(())
            }
        }
    }

    fn seed(
        &mut self,
        nodes: &[(NodeId, String)],
        meta_replicas: &[NodeId],
        shards: &[(ShardId, ShardEntry)],
    ) -> Result<(), String> {
        if self.is_seeded() {
            return Err("the shard map is already seeded".into());
        }
        for (id, addr) in nodes {
            self.apply_to_copy(&MetaCommand::AddNode {
                node_id: *id,
                addr: addr.clone(),
            })?;
        }
        if meta_replicas.is_empty() {
            return Err("the meta group needs a replica".into());
        }
        for id in meta_replicas {
            self.known_node(*id)?;
        }
        self.meta_replicas = sorted(meta_replicas);
        self.meta_conf_ver = 1;
        let mut ranges: Vec<&ShardEntry> = Vec::new();
        for (id, shard) in shards {
            if *id == META_SHARD {
                return Err("shard id 0 is the meta group's".into());
            }
            if self.shards.contains_key(id) {
                return Err(format!("shard {id} appears twice"));
            }
            if shard.replicas.len() < REPLICAS_MIN {
                return Err(format!("shard {id} has no replica"));
            }
            for node in shard.hosts() {
                self.known_node(node)?;
            }
            ranges.push(shard);
            self.shards.insert(*id, shard.clone());
        }
        ranges.sort_by(|a, b| a.start.cmp(&b.start));
        for pair in ranges.windows(2) {
            if pair[0].end.is_empty() || pair[0].end > pair[1].start {
                return Err("seeded shard ranges overlap".into());
            }
        }
        self.next_shard_id = self.shards.keys().max().copied().unwrap_or(0) + 1;
        Ok(())
    }

    fn known_node(&self, node_id: NodeId) -> Result<&NodeEntry, String> {
        self.nodes
            .get(&node_id)
            .ok_or_else(|| format!("node {node_id} is not in the cluster (ledger node add first)"))
    }

    /// The voters and learners of `shard_id` once every queued step is done.
    fn planned_hosts(&self, shard_id: ShardId) -> Result<(Vec<NodeId>, Vec<NodeId>), String> {
        let (mut voters, learners) = self
            .hosts_of(shard_id)
            .ok_or_else(|| format!("shard {shard_id} is not in the map"))?;
        for step in self.steps.iter().filter(|step| step.shard_id == shard_id) {
            match step.change {
                ReplicaChange::Add(node) => voters.push(node),
                ReplicaChange::Remove(node) => voters.retain(|id| *id != node),
                ReplicaChange::Split { .. } | ReplicaChange::Merge { .. } => {}
            }
        }
        let voters = sorted(&voters);
        Ok((voters, learners))
    }

    fn enqueue(&mut self, request: StepRequest) -> Result<(), String> {
        let shard_id = request.shard_id;
        let (planned, _) = self.planned_hosts(shard_id)?;
        // A shard being merged keeps its replicas and range until the merge is done.
        if let Some(merging) = self.steps.iter().find(|step| match step.change {
            ReplicaChange::Merge { right } => step.shard_id == shard_id || right == shard_id,
            _ => false,
        }) {
            return Err(format!(
                "shard {shard_id} is being merged ({merging}): change it once that is done"
            ));
        }
        let mut change = request.change;
        match &mut change {
            ReplicaChange::Merge { right } => self.check_merge(shard_id, *right)?,
            ReplicaChange::Split { at, new_shard } => {
                if shard_id == META_SHARD {
                    return Err("the meta group (shard 0) holds no SKUs to split".into());
                }
                crate::state_machine::limits::check_sku(at).map_err(|invalid| format!("split point: {invalid}"))?;
                if self.steps.iter().any(|step| step.shard_id == shard_id) {
                    return Err(format!(
                        "shard {shard_id} has queued steps: split it once they are done"
                    ));
                }
                let shard = &self.shards[&shard_id];
                let inside = at.as_slice() > shard.start.as_slice()
                    && (shard.end.is_empty() || at.as_slice() < shard.end.as_slice());
                if !inside {
                    return Err(format!(
                        "{:?} does not split shard {shard_id} (its range is [{:?}, {:?})): the split \
                         point must lie strictly inside it",
                        String::from_utf8_lossy(at),
                        String::from_utf8_lossy(&shard.start),
                        String::from_utf8_lossy(&shard.end),
                    ));
                }
                *new_shard = self.next_shard_id;
                self.next_shard_id += 1;
            }
            ReplicaChange::Add(node) => {
                let node = *node;
                let entry = self.known_node(node)?;
                if entry.state != NodeState::Active {
                    return Err(format!("node {node} is draining: it takes no new replica"));
                }
                if planned.contains(&node) {
                    return Err(format!(
                        "node {node} already has (or will have) a replica of shard {shard_id}"
                    ));
                }
                let (_, learners, conf_ver) = self.replica_sets_mut(shard_id)?;
                learners.push(node);
                *conf_ver += 1;
            }
            ReplicaChange::Remove(node) => {
                if !planned.contains(node) {
                    return Err(format!("node {node} has no replica of shard {shard_id} to remove"));
                }
                if planned.len() <= REPLICAS_MIN {
                    return Err(format!("shard {shard_id} would have no replica left"));
                }
            }
        }
        let id = self.next_step_id;
        self.next_step_id += 1;
        self.steps.push_back(Step { id, shard_id, change });
        Ok(())
    }

    /// A done split: `shard_id` keeps `[start, at)` at the next epoch, `new_shard` takes
    /// `[at, end)` on the same replicas.
    fn record_split(&mut self, shard_id: ShardId, at: Vec<u8>, new_shard: ShardId) -> Result<(), String> {
        let shard = self
            .shards
            .get_mut(&shard_id)
            .ok_or_else(|| format!("shard {shard_id} is not in the map"))?;
        let right = ShardEntry {
            start: at.clone(),
            end: std::mem::replace(&mut shard.end, at),
            replicas: shard.replicas.clone(),
            learners: Vec::new(),
            epoch: 1,
            conf_ver: 1,
        };
        shard.epoch += 1;
        self.shards.insert(new_shard, right);
        self.split_from.insert(new_shard, shard_id);
        Ok(())
    }

    /// Whether `left` may take `right`: adjacent data shards (`left` ends where `right`
    /// starts) on the same voters, neither with learners or queued steps.
    fn check_merge(&self, left: ShardId, right: ShardId) -> Result<(), String> {
        if left == META_SHARD || right == META_SHARD {
            return Err("the meta group (shard 0) holds no SKUs to merge".into());
        }
        if left == right {
            return Err(format!("shard {left} cannot be merged with itself"));
        }
        let entry = |id: ShardId| {
            self.shards
                .get(&id)
                .ok_or_else(|| format!("shard {id} is not in the map"))
        };
        let (left_entry, right_entry) = (entry(left)?, entry(right)?);
        if left_entry.end.is_empty() || left_entry.end != right_entry.start {
            return Err(format!(
                "shard {left} ([{:?}, {:?})) does not end where shard {right} ([{:?}, {:?})) starts: only \
                 adjacent shards merge, the lower one first",
                String::from_utf8_lossy(&left_entry.start),
                String::from_utf8_lossy(&left_entry.end),
                String::from_utf8_lossy(&right_entry.start),
                String::from_utf8_lossy(&right_entry.end),
            ));
        }
        if sorted(&left_entry.replicas) != sorted(&right_entry.replicas) {
            return Err(format!(
                "shards {left} and {right} have different replicas ({:?} and {:?}): move replicas \
                 so that both have the same, then merge",
                left_entry.replicas, right_entry.replicas
            ));
        }
        if !left_entry.learners.is_empty() || !right_entry.learners.is_empty() {
            return Err(format!(
                "shard {left} or {right} has a learner catching up: merge once it is a voter"
            ));
        }
        if let Some(queued) = self
            .steps
            .iter()
            .find(|step| step.shard_id == left || step.shard_id == right)
        {
            return Err(format!("{queued} is queued: merge once it is done"));
        }
        Ok(())
    }

    /// A done merge: `left` takes `right`'s range at the next epoch; `right` leaves the map.
    fn record_merge(&mut self, left: ShardId, right: ShardId) -> Result<(), String> {
        let right_entry = self
            .shards
            .remove(&right)
            .ok_or_else(|| format!("shard {right} is not in the map"))?;
        let left_entry = self
            .shards
            .get_mut(&left)
            .ok_or_else(|| format!("shard {left} is not in the map"))?;
        left_entry.end = right_entry.end;
        left_entry.epoch += 1;
        self.split_from.remove(&right);
        self.split_from.retain(|_, parent| *parent != right);
        self.merged_into.insert(right, left);
        Ok(())
    }

    fn drain(&mut self, node_id: NodeId) -> Result<(), String> {
        self.known_node(node_id)?;
        self.nodes.get_mut(&node_id).expect("known").state = NodeState::Draining;
        let mut shard_ids: Vec<ShardId> = Vec::new();
        if self.planned_hosts(META_SHARD)?.0.contains(&node_id) {
            shard_ids.push(META_SHARD);
        }
        for id in self.shards.keys() {
            if self.planned_hosts(*id)?.0.contains(&node_id) {
                shard_ids.push(*id);
            }
        }
        for shard_id in shard_ids {
            let target = self.emptiest_node_without(shard_id)?.ok_or_else(|| {
                format!("no active node can take node {node_id}'s replica of shard {shard_id}: add a node first")
            })?;
            self.enqueue(StepRequest {
                shard_id,
                change: ReplicaChange::Add(target),
            })?;
            self.enqueue(StepRequest {
                shard_id,
                change: ReplicaChange::Remove(node_id),
            })?;
        }
        Ok(())
    }

    /// The active node with the fewest planned replicas that has none of `shard_id` (ties: the
    /// lowest id, so every replica picks the same).
    fn emptiest_node_without(&self, shard_id: ShardId) -> Result<Option<NodeId>, String> {
        let (planned, _) = self.planned_hosts(shard_id)?;
        let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
        for id in std::iter::once(META_SHARD).chain(self.shards.keys().copied()) {
            for node in self.planned_hosts(id)?.0 {
                *load.entry(node).or_default() += 1;
            }
        }
        Ok(self
            .nodes
            .iter()
            .filter(|(id, entry)| entry.state == NodeState::Active && !planned.contains(id))
            .min_by_key(|(id, _)| (load.get(id).copied().unwrap_or(0), **id))
            .map(|(id, _)| *id))
    }

    fn take_step(&mut self, step_id: u64) -> Result<Step, String> {
        let position = self
            .steps
            .iter()
            .position(|step| step.id == step_id)
            .ok_or_else(|| format!("no queued step {step_id}"))?;
        Ok(self.steps.remove(position).expect("position is in range"))
    }

    fn replica_sets_mut(
        &mut self,
        shard_id: ShardId,
    ) -> Result<(&mut Vec<NodeId>, &mut Vec<NodeId>, &mut u64), String> {
        if shard_id == META_SHARD {
            return Ok((
                &mut self.meta_replicas,
                &mut self.meta_learners,
                &mut self.meta_conf_ver,
            ));
        }
        let shard = self
            .shards
            .get_mut(&shard_id)
            .ok_or_else(|| format!("shard {shard_id} is not in the map"))?;
        Ok((&mut shard.replicas, &mut shard.learners, &mut shard.conf_ver))
    }
}

impl ReplicaChange {
    /// The node the change adds or removes (a split names none).
    pub fn node(&self) -> Option<NodeId> {
        match self {
            ReplicaChange::Add(node) | ReplicaChange::Remove(node) => Some(*node),
            ReplicaChange::Split { .. } | ReplicaChange::Merge { .. } => None,
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.change {
            ReplicaChange::Add(node) => write!(f, "step {}: add node {node} to shard {}", self.id, self.shard_id),
            ReplicaChange::Remove(node) => {
                write!(f, "step {}: remove node {node} from shard {}", self.id, self.shard_id)
            }
            ReplicaChange::Split { at, new_shard } => write!(
                f,
                "step {}: split shard {} at {:?} into shard {new_shard}",
                self.id,
                self.shard_id,
                String::from_utf8_lossy(at)
            ),
            ReplicaChange::Merge { right } => {
                write!(f, "step {}: merge shard {right} into shard {}", self.id, self.shard_id)
            }
        }
    }
}

fn sorted(ids: &[NodeId]) -> Vec<NodeId> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(start: &str, end: &str, replicas: &[NodeId]) -> ShardEntry {
        ShardEntry {
            start: start.as_bytes().to_vec(),
            end: end.as_bytes().to_vec(),
            replicas: replicas.to_vec(),
            learners: Vec::new(),
            epoch: 1,
            conf_ver: 1,
        }
    }

    fn seeded(nodes: u64) -> ShardMap {
        let mut map = ShardMap::default();
        map.apply(&MetaCommand::Seed {
            nodes: (1..=nodes).map(|id| (id, format!("127.0.0.1:{}", 7100 + id))).collect(),
            meta_replicas: vec![1, 2, 3],
            shards: vec![(1, entry("", "m", &[1, 2, 3])), (2, entry("m", "", &[1, 2, 3]))],
        })
        .expect("seed");
        map
    }

    #[test]
    fn a_seed_is_taken_once() {
        let mut map = seeded(3);
        assert_eq!(map.version, 1);
        assert_eq!(map.next_shard_id, 3);
        assert_eq!(map.shard_for_sku(b"apple").map(|(id, _)| id), Some(1));
        assert_eq!(map.shard_for_sku(b"zebra").map(|(id, _)| id), Some(2));
        let before = map.clone();
        let again = map.apply(&MetaCommand::Seed {
            nodes: vec![(9, "x:1".into())],
            meta_replicas: vec![9],
            shards: vec![],
        });
        assert!(again.unwrap_err().contains("already seeded"));
        assert_eq!(map, before);
    }

    #[test]
    fn overlapping_seeded_ranges_are_refused() {
        let mut map = ShardMap::default();
        let refused = map.apply(&MetaCommand::Seed {
            nodes: vec![(1, "a:1".into())],
            meta_replicas: vec![1],
            shards: vec![(1, entry("", "n", &[1])), (2, entry("m", "", &[1]))],
        });
        assert!(refused.unwrap_err().contains("overlap"));
        assert_eq!(map, ShardMap::default());
    }

    #[test]
    fn a_move_is_an_add_through_a_learner_then_a_remove() {
        let mut map = seeded(3);
        map.apply(&MetaCommand::AddNode {
            node_id: 4,
            addr: "127.0.0.1:7104".into(),
        })
        .unwrap();
        map.apply(&MetaCommand::Enqueue(vec![
            StepRequest {
                shard_id: 1,
                change: ReplicaChange::Add(4),
            },
            StepRequest {
                shard_id: 1,
                change: ReplicaChange::Remove(1),
            },
        ]))
        .unwrap();
        assert_eq!(map.shards[&1].learners, vec![4]);
        assert_eq!(map.shards_on(4), vec![1]);
        let first = map.steps[0].id;
        map.apply(&MetaCommand::StepDone { step_id: first }).unwrap();
        assert_eq!(map.shards[&1].replicas, vec![1, 2, 3, 4]);
        assert!(map.shards[&1].learners.is_empty());
        // A repeated completion (a meta leader that crashed after proposing it) is refused.
        assert!(map.apply(&MetaCommand::StepDone { step_id: first }).is_err());
        let second = map.steps[0].id;
        map.apply(&MetaCommand::StepDone { step_id: second }).unwrap();
        assert_eq!(map.shards[&1].replicas, vec![2, 3, 4]);
        assert_eq!(map.shards[&1].conf_ver, 4);
        assert_eq!(map.shards[&1].epoch, 1, "the range did not change");
        assert!(map.steps.is_empty());
    }

    #[test]
    fn steps_that_do_not_fit_are_refused_whole() {
        let mut map = seeded(3);
        let before = map.clone();
        let add_existing = map.apply(&MetaCommand::Enqueue(vec![StepRequest {
            shard_id: 1,
            change: ReplicaChange::Add(2),
        }]));
        assert!(add_existing.unwrap_err().contains("already"));
        let unknown = map.apply(&MetaCommand::Enqueue(vec![StepRequest {
            shard_id: 1,
            change: ReplicaChange::Add(7),
        }]));
        assert!(unknown.unwrap_err().contains("not in the cluster"));
        // The first removal fits, the second and third would leave one, then none.
        let too_many = map.apply(&MetaCommand::Enqueue(vec![
            StepRequest {
                shard_id: 2,
                change: ReplicaChange::Remove(1),
            },
            StepRequest {
                shard_id: 2,
                change: ReplicaChange::Remove(2),
            },
            StepRequest {
                shard_id: 2,
                change: ReplicaChange::Remove(3),
            },
        ]));
        assert!(too_many.unwrap_err().contains("no replica left"));
        assert_eq!(map, before, "a refused command changes nothing");
    }

    #[test]
    fn a_drain_moves_every_replica_to_the_emptiest_nodes_and_then_the_node_can_leave() {
        let mut map = seeded(3);
        let refused = map.clone().apply(&MetaCommand::Drain { node_id: 1 });
        assert!(refused.unwrap_err().contains("add a node first"));
        for id in [4, 5] {
            map.apply(&MetaCommand::AddNode {
                node_id: id,
                addr: format!("127.0.0.1:{}", 7100 + id),
            })
            .unwrap();
        }
        map.apply(&MetaCommand::Drain { node_id: 1 }).unwrap();
        assert_eq!(map.nodes[&1].state, NodeState::Draining);
        // Shard 0, 1 and 2 each get an add and a remove; the adds alternate 4, 5, 4.
        let adds: Vec<(ShardId, NodeId)> = map
            .steps
            .iter()
            .filter_map(|step| match step.change {
                ReplicaChange::Add(node) => Some((step.shard_id, node)),
                ReplicaChange::Remove(_) | ReplicaChange::Split { .. } | ReplicaChange::Merge { .. } => None,
            })
            .collect();
        assert_eq!(adds, vec![(0, 4), (1, 5), (2, 4)]);
        assert!(map.apply(&MetaCommand::RemoveNode { node_id: 1 }).is_err());
        while let Some(step) = map.steps.front().cloned() {
            map.apply(&MetaCommand::StepDone { step_id: step.id }).unwrap();
        }
        assert!(map.shards_on(1).is_empty());
        map.apply(&MetaCommand::RemoveNode { node_id: 1 }).unwrap();
        assert!(!map.nodes.contains_key(&1));
        assert_eq!(map.meta_replicas, vec![2, 3, 4]);
    }

    #[test]
    fn a_cancelled_add_takes_its_learner_off_the_map() {
        let mut map = seeded(3);
        map.apply(&MetaCommand::AddNode {
            node_id: 4,
            addr: "h:4".into(),
        })
        .unwrap();
        map.apply(&MetaCommand::Enqueue(vec![StepRequest {
            shard_id: 2,
            change: ReplicaChange::Add(4),
        }]))
        .unwrap();
        let step = map.steps[0].id;
        map.apply(&MetaCommand::StepCancelled { step_id: step }).unwrap();
        assert!(map.shards_on(4).is_empty());
        assert!(map.steps.is_empty());
    }

    #[test]
    fn node_ids_and_addresses_are_unique() {
        let mut map = seeded(3);
        assert!(
            map.apply(&MetaCommand::AddNode {
                node_id: 2,
                addr: "h:9".into()
            })
            .unwrap_err()
            .contains("already")
        );
        assert!(
            map.apply(&MetaCommand::AddNode {
                node_id: 9,
                addr: "127.0.0.1:7101".into()
            })
            .unwrap_err()
            .contains("node 1")
        );
        assert!(
            map.apply(&MetaCommand::AddNode {
                node_id: 0,
                addr: "h:0".into()
            })
            .is_err()
        );
    }

    fn split(shard_id: ShardId, at: &str) -> MetaCommand {
        MetaCommand::Enqueue(vec![StepRequest {
            shard_id,
            change: ReplicaChange::Split {
                at: at.as_bytes().to_vec(),
                new_shard: 99,
            },
        }])
    }

    #[test]
    fn a_split_gets_the_next_shard_id_and_once_done_narrows_the_range_and_bumps_its_epoch() {
        let mut map = seeded(3);
        map.apply(&split(1, "f")).expect("split queued");
        let step = map.steps.front().cloned().expect("queued");
        assert_eq!(
            step.change,
            ReplicaChange::Split {
                at: b"f".to_vec(),
                new_shard: 3
            },
            "the id the request named is ignored"
        );
        assert_eq!(map.next_shard_id, 4);
        assert_eq!(
            map.shard_for_sku(b"g").map(|(id, _)| id),
            Some(1),
            "not split until done"
        );
        map.apply(&MetaCommand::StepDone { step_id: step.id }).expect("done");
        assert_eq!(map.shards[&1].end, b"f".to_vec());
        assert_eq!(map.shards[&1].epoch, 2);
        assert_eq!(map.shards[&3], entry("f", "m", &[1, 2, 3]));
        assert_eq!(map.split_from.get(&3), Some(&1));
        assert_eq!(map.shard_for_sku(b"apple").map(|(id, _)| id), Some(1));
        assert_eq!(map.shard_for_sku(b"grape").map(|(id, _)| id), Some(3));
        assert_eq!(map.shard_for_sku(b"melon").map(|(id, _)| id), Some(2));
        // The last shard (no end) splits too.
        map.apply(&split(2, "t")).expect("split the unbounded shard");
        let step = map.steps.front().cloned().expect("queued");
        map.apply(&MetaCommand::StepDone { step_id: step.id }).expect("done");
        assert_eq!(map.shards[&4], entry("t", "", &[1, 2, 3]));
        assert_eq!(map.shards[&2].end, b"t".to_vec());
    }

    #[test]
    fn a_split_outside_the_range_at_its_edge_of_the_meta_group_or_behind_other_steps_is_refused() {
        let mut map = seeded(4);
        let before = map.clone();
        for (shard, at, why) in [
            (1, "x", "strictly inside"),
            (1, "m", "strictly inside"),
            (2, "m", "strictly inside"),
            (1, "", "must not be empty"),
            (0, "c", "meta group"),
            (7, "c", "not in the map"),
        ] {
            let refused = map.apply(&split(shard, at)).expect_err(why);
            assert!(refused.contains(why), "{refused}");
        }
        assert_eq!(map, before);
        map.apply(&MetaCommand::Enqueue(vec![StepRequest {
            shard_id: 1,
            change: ReplicaChange::Add(4),
        }]))
        .expect("add");
        assert!(map.apply(&split(1, "c")).unwrap_err().contains("queued steps"));
    }

    fn merge(left: ShardId, right: ShardId) -> MetaCommand {
        MetaCommand::Enqueue(vec![StepRequest {
            shard_id: left,
            change: ReplicaChange::Merge { right },
        }])
    }

    #[test]
    fn a_merge_once_done_widens_the_left_shard_bumps_its_epoch_and_drops_the_right_one() {
        let mut map = seeded(3);
        map.apply(&split(1, "f")).unwrap();
        let split_step = map.steps[0].id;
        map.apply(&MetaCommand::StepDone { step_id: split_step }).unwrap();
        map.apply(&merge(1, 3)).expect("merge queued");
        let step = map.steps.front().cloned().expect("queued");
        assert_eq!(
            map.shard_for_sku(b"grape").map(|(id, _)| id),
            Some(3),
            "not merged until done"
        );
        map.apply(&MetaCommand::StepDone { step_id: step.id }).expect("done");
        assert_eq!(map.shards[&1].end, b"m".to_vec());
        assert_eq!(map.shards[&1].epoch, 3, "one bump for the split, one for the merge");
        assert!(!map.shards.contains_key(&3));
        assert_eq!(map.merged_into.get(&3), Some(&1));
        assert!(!map.split_from.contains_key(&3));
        assert_eq!(map.shard_for_sku(b"grape").map(|(id, _)| id), Some(1));
        assert_eq!(map.next_shard_id, 4, "a merged shard's id is never given again");
        // The unbounded last shard merges too: shard 1 then covers everything.
        map.apply(&merge(1, 2)).unwrap();
        let step = map.steps[0].id;
        map.apply(&MetaCommand::StepDone { step_id: step }).unwrap();
        assert_eq!(
            map.shards[&1],
            ShardEntry {
                epoch: 4,
                ..entry("", "", &[1, 2, 3])
            }
        );
        assert_eq!(map.shards.len(), 1);
    }

    #[test]
    fn only_adjacent_shards_on_the_same_voters_with_nothing_queued_merge() {
        let mut map = seeded(4);
        map.apply(&split(2, "t")).unwrap();
        let step = map.steps[0].id;
        map.apply(&MetaCommand::StepDone { step_id: step }).unwrap();
        // Shards: 1 [, m), 2 [m, t), 3 [t, ).
        let before = map.clone();
        for (left, right, why) in [
            (2, 1, "does not end where"),
            (1, 3, "does not end where"),
            (3, 2, "does not end where"),
            (1, 1, "itself"),
            (0, 1, "meta group"),
            (1, 9, "not in the map"),
        ] {
            let refused = map.apply(&merge(left, right)).expect_err(why);
            assert!(refused.contains(why), "{left}+{right}: {refused}");
            assert_eq!(map, before, "a refused merge changes nothing");
        }
        // Different voters: move a replica first.
        map.apply(&MetaCommand::Enqueue(vec![StepRequest {
            shard_id: 3,
            change: ReplicaChange::Add(4),
        }]))
        .unwrap();
        let refused = map.apply(&merge(2, 3)).unwrap_err();
        assert!(refused.contains("learner") || refused.contains("queued"), "{refused}");
        let add = map.steps[0].id;
        map.apply(&MetaCommand::StepDone { step_id: add }).unwrap();
        let refused = map.apply(&merge(2, 3)).unwrap_err();
        assert!(refused.contains("different replicas"), "{refused}");
        // A shard being merged takes no other step, on either side.
        map.apply(&merge(1, 2)).expect("1 and 2 merge");
        for (shard_id, change) in [(1, ReplicaChange::Add(4)), (2, ReplicaChange::Remove(1))] {
            let refused = map
                .apply(&MetaCommand::Enqueue(vec![StepRequest { shard_id, change }]))
                .unwrap_err();
            assert!(refused.contains("being merged"), "{refused}");
        }
        assert!(map.apply(&split(2, "p")).unwrap_err().contains("being merged"));
        assert!(
            map.apply(&MetaCommand::Drain { node_id: 1 })
                .unwrap_err()
                .contains("being merged")
        );
    }
}
