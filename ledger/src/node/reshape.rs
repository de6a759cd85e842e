//! Reshaping the cluster: the operator's changes become shard-map commands on the meta leader
//! ([`Node::reshape`]), and the meta leader carries each queued step out on the shard's own
//! Raft group ([`carry_out`]) before it records it done.
//!
//! Each step is idempotent on the shard's side, so a meta leader that crashes between the
//! shard's change and `StepDone` (or a new one that finds the step still queued) just does it
//! again: adding a node that is already a voter, or removing one that is gone, changes nothing.
//! - add: the shard's leader adds the node as a learner and waits until it has caught up
//!   (`add_learner(blocking)`), then makes it a voter; until then the node votes in nothing.
//! - remove: if the node leads the shard, leadership moves to another voter first (the step is
//!   retried once it has); then the voter is removed.
//! - split: the shard's leader proposes a `Split` entry; done again, the shard answers done.
//! - merge (left takes right, same voters): right's leader proposes `Freeze` (right applies
//!   nothing more), then left's leader, once its own replica of right has applied the freeze,
//!   proposes `Merge` carrying that replica's state. Every step answers done when repeated, so a
//!   merge cut short by a crash is finished by the next meta leader. If left's log refuses the
//!   merge (its ranges moved, its settings differ: nothing merged), right is thawed and the
//!   step cancelled.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::ChangeMembers;
use openraft::async_runtime::WatchReceiver;
use serde::Deserialize;
use serde::Serialize;

use crate::meta::map::META_SHARD;
use crate::meta::map::MetaCommand;
use crate::meta::map::ReplicaChange;
use crate::meta::map::ShardMap;
use crate::meta::map::Step;
use crate::node::Node;
use crate::node::NodeError;
use crate::node::now_ms;
use crate::raft::network::RAFT_MESSAGE_BYTES_MAX;
use crate::state_machine::command::CommandBody;
use crate::state_machine::command::LogCommand;
use crate::state_machine::command::Outcome;
use crate::types::NodeId;
use crate::types::ShardId;

/// What the meta leader asks of a shard's leader (the internal `Raft.Reconfigure` RPC).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Reconfigure {
    /// Make `node` (at `addr`) a voter, through a learner that catches up first.
    AddVoter { node: NodeId, addr: String },
    /// Take `node` out of the group.
    RemoveVoter { node: NodeId },
    /// Hand leadership to `to`.
    TransferLeader { to: NodeId },
    /// Changes nothing: the replica answers `Ok` if it leads the shard, else `NotLeader` with
    /// the leader it knows of. How the placement scheduler learns who leads a shard the meta
    /// leader does not host.
    ReportLeader,
    /// Propose a `Split` entry: the shard keeps the SKUs below `at`, `new_shard` takes the rest.
    /// Done again for a split already made, it answers `Ok`; a split the shard's log refused
    /// (nothing changed) is `Refused`.
    Split { at: Vec<u8>, new_shard: ShardId },
    /// Propose a `Freeze` entry: the shard applies nothing more, for a merge into `into`.
    Freeze { into: ShardId },
    /// Propose a `Thaw` entry: a shard frozen for `into` serves again.
    Thaw { into: ShardId },
    /// Propose a `Merge` entry carrying the frozen state of `right` (`[right_start, right_end)`)
    /// as this node's replica of it holds it; until that replica has applied the freeze, `Failed`.
    Merge {
        right: ShardId,
        right_start: Vec<u8>,
        right_end: Vec<u8>,
    },
}

/// The most state a `Merge` entry carries: the right shard's state travels in one log entry,
/// which every replica of the left shard writes to its log and receives in one message.
pub const MERGE_STATE_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A shard replica's answer to [`Reconfigure`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReconfigureRefused {
    /// Not the shard's leader; the leader it knows of, if any.
    NotLeader(Option<NodeId>),
    /// The node could not be asked (down, cut off): ask another.
    Unreachable(String),
    /// Not done (yet): why.
    Failed(String),
    /// The shard's log refused the change (it changed nothing, and never will): why.
    Refused(String),
}

impl ReconfigureRefused {
    /// What an operator or a log line is told about a change of `shard_id` that was not made.
    fn message(self, shard_id: ShardId) -> String {
        match self {
            ReconfigureRefused::Refused(message)
            | ReconfigureRefused::Failed(message)
            | ReconfigureRefused::Unreachable(message) => message,
            ReconfigureRefused::NotLeader(_) => format!("no node leads shard {shard_id}"),
        }
    }
}

/// How long one attempt waits for a learner to catch up; the learner stays in the group and goes
/// on catching up, and the next attempt (the step is retried) waits again.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leadership transfer may take before it is reported as not done.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(5);

/// An operator's change, as the `Cluster/Reshape` RPC carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReshapeRequest {
    AddNode {
        node_id: NodeId,
        addr: String,
    },
    RemoveNode {
        node_id: NodeId,
    },
    DrainNode {
        node_id: NodeId,
    },
    AddReplica {
        shard_id: ShardId,
        node_id: NodeId,
    },
    RemoveReplica {
        shard_id: ShardId,
        node_id: NodeId,
    },
    MoveReplica {
        shard_id: ShardId,
        from: NodeId,
        to: NodeId,
    },
    TransferLeader {
        shard_id: ShardId,
        to: NodeId,
    },
    CancelStep {
        step_id: u64,
    },
    /// Split `shard_id` at the SKU `at` (a new shard on the same replicas takes `[at, end)`).
    SplitShard {
        shard_id: ShardId,
        at: Vec<u8>,
    },
    /// Merge `right` into `left`, the adjacent shard below it on the same voters.
    MergeShards {
        left: ShardId,
        right: ShardId,
    },
}

impl Node {
    /// Carries out an operator's change on the meta leader (elsewhere: `NotLeader`). Returns
    /// the map's version afterwards and the steps the change queued.
    pub async fn reshape(&self, request: ReshapeRequest) -> Result<(u64, Vec<Step>), NodeError> {
        let meta = self.meta().ok_or(NodeError::ShardNotHosted { shard_id: META_SHARD })?;
        if !meta.raft.is_leader() {
            let leader = meta.raft.metrics().borrow_watched().current_leader;
            return Err(self.not_leader(META_SHARD, leader));
        }
        let steps_before = meta.view.read(|image| image.map.next_step_id);
        let command = match request {
            ReshapeRequest::AddNode { node_id, addr } => MetaCommand::AddNode { node_id, addr },
            ReshapeRequest::RemoveNode { node_id } => MetaCommand::RemoveNode { node_id },
            ReshapeRequest::DrainNode { node_id } => MetaCommand::Drain { node_id },
            ReshapeRequest::AddReplica { shard_id, node_id } => {
                MetaCommand::Enqueue(vec![step(shard_id, ReplicaChange::Add(node_id))])
            }
            ReshapeRequest::RemoveReplica { shard_id, node_id } => {
                MetaCommand::Enqueue(vec![step(shard_id, ReplicaChange::Remove(node_id))])
            }
            ReshapeRequest::MoveReplica { shard_id, from, to } => MetaCommand::Enqueue(vec![
                step(shard_id, ReplicaChange::Add(to)),
                step(shard_id, ReplicaChange::Remove(from)),
            ]),
            ReshapeRequest::CancelStep { step_id } => {
                let reshapes_range = meta.view.read(|image| {
                    image.map.steps.iter().any(|step| {
                        step.id == step_id
                            && matches!(step.change, ReplicaChange::Split { .. } | ReplicaChange::Merge { .. })
                    })
                });
                if reshapes_range {
                    return Err(NodeError::Reshape(format!(
                        "step {step_id} is a split or a merge: it cannot be cancelled (the shard may \
                         already have split, or be frozen for the merge; the step completes once the \
                         shards' leaders are reachable)"
                    )));
                }
                MetaCommand::StepCancelled { step_id }
            }
            ReshapeRequest::SplitShard { shard_id, at } => {
                MetaCommand::Enqueue(vec![step(shard_id, ReplicaChange::Split { at, new_shard: 0 })])
            }
            ReshapeRequest::MergeShards { left, right } => {
                MetaCommand::Enqueue(vec![step(left, ReplicaChange::Merge { right })])
            }
            ReshapeRequest::TransferLeader { shard_id, to } => {
                let map = self.shard_map();
                let (voters, _) = map
                    .hosts_of(shard_id)
                    .ok_or_else(|| NodeError::Reshape(format!("shard {shard_id} is not in the map")))?;
                if !voters.contains(&to) {
                    return Err(NodeError::Reshape(format!(
                        "node {to} is not a voter of shard {shard_id} (voters: {voters:?})"
                    )));
                }
                self.ask_shard_leader(&map, shard_id, Reconfigure::TransferLeader { to })
                    .await
                    .map_err(NodeError::Reshape)?;
                return Ok((map.version, Vec::new()));
            }
        };
        self.propose_meta(command).await?;
        let map = meta.view.read(|image| image.map.clone());
        let queued = map.steps.iter().filter(|s| s.id >= steps_before).cloned().collect();
        Ok((map.version, queued))
    }

    /// Proposes `command` to the meta group (this node must lead it); a command the map refuses
    /// is [`NodeError::Reshape`].
    pub(crate) async fn propose_meta(&self, command: MetaCommand) -> Result<u64, NodeError> {
        let meta = self.meta().ok_or(NodeError::ShardNotHosted { shard_id: META_SHARD })?;
        let entry = LogCommand {
            timestamp_ms: now_ms(),
            body: CommandBody::Meta(command),
        };
        let (outcomes, index) = self.propose(&meta, entry).await?;
        match outcomes.into_iter().next() {
            Some(Outcome::Rejected { reason }) => Err(NodeError::Reshape(reason)),
            _ => Ok(index),
        }
    }

    /// Carries out `change` on this node's replica of `shard_id`, which must lead the shard.
    pub async fn reconfigure_locally(&self, shard_id: ShardId, change: Reconfigure) -> Result<(), ReconfigureRefused> {
        let failed = |message: String| ReconfigureRefused::Failed(message);
        let replica = self
            .replica(shard_id)
            .ok_or_else(|| failed(format!("node {} does not host shard {shard_id}", self.id)))?;
        let raft = &replica.raft;
        if !raft.is_leader() {
            return Err(ReconfigureRefused::NotLeader(
                raft.metrics().borrow_watched().current_leader,
            ));
        }
        let membership = raft.metrics().borrow_watched().membership_config.clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        match change {
            Reconfigure::AddVoter { node, addr } => {
                if voters.contains(&node) {
                    return Ok(());
                }
                // Not openraft's blocking add: it calls a learner "up to date" while it lags by
                // less than `replication_lag_threshold` (5000) entries, even one that is down.
                // The learner must hold everything the leader had when it was added.
                raft.add_learner(node, BasicNode::new(addr), false)
                    .await
                    .map_err(|error| failed(format!("adding node {node} as a learner: {error}")))?;
                let target = raft.metrics().borrow_watched().last_log_index;
                let caught_up = raft
                    .wait(Some(CATCH_UP_TIMEOUT))
                    .metrics(
                        |metrics| {
                            let matched = metrics
                                .replication
                                .as_ref()
                                .and_then(|replication| replication.get(&node).cloned().flatten())
                                .map(|log_id| log_id.index);
                            metrics.replication.is_none() || matched >= target
                        },
                        "the learner caught up",
                    )
                    .await
                    .map_err(|_| failed(format!("node {node} did not catch up within {CATCH_UP_TIMEOUT:?}")))?;
                if caught_up.replication.is_none() {
                    return Err(failed(format!(
                        "lost the leadership of shard {shard_id} while node {node} caught up"
                    )));
                }
                raft.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node])), false)
                    .await
                    .map_err(|error| failed(format!("making node {node} a voter: {error}")))?;
                Ok(())
            }
            Reconfigure::RemoveVoter { node } => {
                let is_member = membership.nodes().any(|(id, _)| *id == node);
                if !is_member {
                    return Ok(());
                }
                if node == self.id && voters.contains(&node) {
                    let to = voters
                        .iter()
                        .copied()
                        .find(|id| *id != node)
                        .ok_or_else(|| failed(format!("node {node} is shard {shard_id}'s only voter")))?;
                    let _ = raft.trigger().transfer_leader(to).await;
                    return Err(failed(format!(
                        "node {node} leads shard {shard_id}: handing leadership to node {to} first"
                    )));
                }
                raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([node])), false)
                    .await
                    .map_err(|error| failed(format!("removing node {node}: {error}")))?;
                // A node removed as a voter may stay a learner (a joint change); drop it too.
                let membership = raft.metrics().borrow_watched().membership_config.clone();
                if membership.nodes().any(|(id, _)| *id == node) {
                    raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([node])), false)
                        .await
                        .map_err(|error| failed(format!("removing learner {node}: {error}")))?;
                }
                Ok(())
            }
            Reconfigure::ReportLeader => Ok(()),
            Reconfigure::Split { at, new_shard } => {
                self.propose_range_entry(&replica, CommandBody::Split { at, new_shard }, "the split")
                    .await
            }
            Reconfigure::Freeze { into } => {
                self.propose_range_entry(&replica, CommandBody::Freeze { into }, "the freeze")
                    .await
            }
            Reconfigure::Thaw { into } => {
                self.propose_range_entry(&replica, CommandBody::Thaw { into }, "the thaw")
                    .await
            }
            Reconfigure::Merge {
                right,
                right_start,
                right_end,
            } => {
                if replica.view.read(|image| image.bounds.merged.contains(&right)) {
                    return Ok(());
                }
                let right_replica = self
                    .replica(right)
                    .ok_or_else(|| failed(format!("node {} does not host shard {right}", self.id)))?;
                let state = right_replica.view.read(|image| {
                    (image.bounds.frozen_into == Some(shard_id)).then(|| bincode::serialize(&image.ledger.frozen()))
                });
                let state = match state {
                    None => {
                        return Err(failed(format!(
                            "node {}'s replica of shard {right} has not applied the freeze yet",
                            self.id
                        )));
                    }
                    Some(Err(error)) => return Err(failed(format!("encoding shard {right}'s state: {error}"))),
                    Some(Ok(state)) => state,
                };
                if state.len() > MERGE_STATE_BYTES_MAX {
                    return Err(ReconfigureRefused::Refused(format!(
                        "shard {right}'s state is {} MiB, more than a merge carries ({} MiB)",
                        state.len() >> 20,
                        MERGE_STATE_BYTES_MAX >> 20
                    )));
                }
                let body = CommandBody::Merge {
                    right,
                    right_start,
                    right_end,
                    state,
                };
                self.propose_range_entry(&replica, body, "the merge").await
            }
            Reconfigure::TransferLeader { to } => {
                if to == self.id {
                    return Ok(());
                }
                if !voters.contains(&to) {
                    return Err(failed(format!("node {to} is not a voter of shard {shard_id}")));
                }
                raft.trigger()
                    .transfer_leader(to)
                    .await
                    .map_err(|error| failed(error.to_string()))?;
                let mut metrics = raft.metrics();
                let moved = tokio::time::timeout(TRANSFER_TIMEOUT, async {
                    loop {
                        if metrics.borrow_watched().current_leader == Some(to) {
                            return;
                        }
                        if metrics.changed().await.is_err() {
                            return;
                        }
                    }
                })
                .await;
                match moved {
                    Ok(()) => Ok(()),
                    Err(_) => Err(failed(format!(
                        "node {to} did not take over within {TRANSFER_TIMEOUT:?}"
                    ))),
                }
            }
        }
    }

    /// Proposes a split's or a merge's entry on `replica` (its leader): `Ok` once applied,
    /// `Refused` when the shard's log refused it (nothing changed).
    async fn propose_range_entry(
        &self,
        replica: &crate::node::ShardReplica,
        body: CommandBody,
        what: &str,
    ) -> Result<(), ReconfigureRefused> {
        let entry = LogCommand {
            timestamp_ms: now_ms(),
            body,
        };
        let (outcomes, _) = self
            .propose(replica, entry)
            .await
            .map_err(|error| ReconfigureRefused::Failed(format!("proposing {what}: {error}")))?;
        match outcomes.into_iter().next() {
            Some(Outcome::Ok) => Ok(()),
            Some(Outcome::Rejected { reason }) => Err(ReconfigureRefused::Refused(reason)),
            other => Err(ReconfigureRefused::Failed(format!("{what} was answered {other:?}"))),
        }
    }

    /// Has `shard_id`'s leader carry out `change`: this node's replica if it leads, else the
    /// leader it or the map's voters name (over `Raft.Reconfigure`).
    async fn ask_shard_leader(&self, map: &ShardMap, shard_id: ShardId, change: Reconfigure) -> Result<(), String> {
        self.ask_shard_leader_for(map, shard_id, change)
            .await
            .map_err(|refused| refused.message(shard_id))
    }

    /// [`Node::ask_shard_leader`], telling a change the shard refused from one not done yet.
    async fn ask_shard_leader_for(
        &self,
        map: &ShardMap,
        shard_id: ShardId,
        change: Reconfigure,
    ) -> Result<(), ReconfigureRefused> {
        let mut candidates: Vec<NodeId> = Vec::new();
        if let Some(replica) = self.replica(shard_id) {
            candidates.extend(replica.raft.metrics().borrow_watched().current_leader);
        }
        if let Some((voters, _)) = map.hosts_of(shard_id) {
            candidates.extend(voters);
        }
        let mut asked = BTreeSet::new();
        let mut last_error = ReconfigureRefused::Unreachable(format!("shard {shard_id} has no voter to ask"));
        while let Some(candidate) = candidates.first().copied() {
            candidates.remove(0);
            if !asked.insert(candidate) {
                continue;
            }
            let answer = if candidate == self.id {
                self.reconfigure_locally(shard_id, change.clone()).await
            } else {
                // Adding a learner waits for it to catch up.
                let deadline = CATCH_UP_TIMEOUT + TRANSFER_TIMEOUT;
                self.reconfigure_remote(candidate, shard_id, &change, deadline).await
            };
            match answer {
                Ok(()) => return Ok(()),
                Err(ReconfigureRefused::NotLeader(hint)) => {
                    last_error =
                        ReconfigureRefused::Unreachable(format!("node {candidate} does not lead shard {shard_id}"));
                    if let Some(leader) = hint {
                        candidates.insert(0, leader);
                    }
                }
                Err(unreachable @ ReconfigureRefused::Unreachable(_)) => last_error = unreachable,
                Err(refused) => return Err(refused),
            }
        }
        Err(last_error)
    }

    async fn reconfigure_remote(
        &self,
        target: NodeId,
        shard_id: ShardId,
        change: &Reconfigure,
        deadline: Duration,
    ) -> Result<(), ReconfigureRefused> {
        let failed = |message: String| ReconfigureRefused::Failed(message);
        let unreachable = |message: String| ReconfigureRefused::Unreachable(message);
        let payload = bincode::serialize(change).map_err(|e| failed(e.to_string()))?;
        let request = flashledger_proto::v1::RaftRequest {
            shard_id,
            payload: payload.into(),
        };
        let channel = self.peers.channel(target).map_err(unreachable)?;
        let mut client = flashledger_proto::v1::raft_client::RaftClient::new(channel)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        let reply = tokio::time::timeout(deadline, client.reconfigure(request))
            .await
            .map_err(|_| unreachable(format!("node {target} did not answer")))?
            .map_err(|status| unreachable(format!("node {target}: {}", status.message())))?;
        bincode::deserialize::<Result<(), ReconfigureRefused>>(&reply.into_inner().payload)
            .map_err(|e| failed(format!("node {target}: undecodable answer: {e}")))?
    }

    /// The leader of `shard_id` as `peer` (a replica of it) sees it: `peer` itself if it leads,
    /// else the leader it names (`None`: it knows of none). Asked with
    /// [`Reconfigure::ReportLeader`], within one Raft RPC deadline.
    pub(crate) async fn leader_seen_by(&self, peer: NodeId, shard_id: ShardId) -> Result<Option<NodeId>, String> {
        let deadline = Duration::from_millis(self.config.raft.rpc_timeout_ms);
        match self
            .reconfigure_remote(peer, shard_id, &Reconfigure::ReportLeader, deadline)
            .await
        {
            Ok(()) => Ok(Some(peer)),
            Err(ReconfigureRefused::NotLeader(leader)) => Ok(leader),
            Err(
                ReconfigureRefused::Failed(message)
                | ReconfigureRefused::Unreachable(message)
                | ReconfigureRefused::Refused(message),
            ) => Err(message),
        }
    }

    /// The shard map as `peer` knows it (the internal `Raft.MetaMap` RPC).
    pub(crate) async fn fetch_map(&self, peer: NodeId) -> Result<ShardMap, String> {
        let channel = self.peers.channel(peer)?;
        let mut client = flashledger_proto::v1::raft_client::RaftClient::new(channel)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        let request = flashledger_proto::v1::RaftRequest {
            shard_id: META_SHARD,
            payload: Default::default(),
        };
        let timeout = Duration::from_millis(self.config.raft.rpc_timeout_ms);
        let reply = tokio::time::timeout(timeout, client.meta_map(request))
            .await
            .map_err(|_| format!("node {peer} did not answer"))?
            .map_err(|status| format!("node {peer}: {}", status.message()))?;
        bincode::deserialize(&reply.into_inner().payload).map_err(|e| format!("node {peer}: {e}"))
    }
}

/// On the meta leader: makes `step`'s change in its shard's Raft group, then records it done.
pub(super) async fn carry_out(node: &Arc<Node>, map: &ShardMap, step: &Step) -> Result<(), String> {
    let change = match step.change.clone() {
        ReplicaChange::Merge { right } => return carry_out_merge(node, map, step, right).await,
        ReplicaChange::Split { at, new_shard } => Reconfigure::Split { at, new_shard },
        ReplicaChange::Add(added) => {
            let addr = map
                .nodes
                .get(&added)
                .map(|entry| entry.addr.clone())
                .ok_or_else(|| format!("node {added} has no address in the map"))?;
            Reconfigure::AddVoter { node: added, addr }
        }
        ReplicaChange::Remove(removed) => Reconfigure::RemoveVoter { node: removed },
    };
    let done = match node.ask_shard_leader_for(map, step.shard_id, change).await {
        Ok(()) => MetaCommand::StepDone { step_id: step.id },
        // The shard's log refused it, on every replica alike: nothing changed, and retrying
        // would be refused again. Dropped, so the steps behind it go on.
        Err(ReconfigureRefused::Refused(reason)) => {
            tracing::warn!(node = node.id, %step, %reason, "the shard refused a reshaping step: dropped");
            MetaCommand::StepCancelled { step_id: step.id }
        }
        Err(refused) => return Err(refused.message(step.shard_id)),
    };
    let split_off = match (&done, &step.change) {
        (MetaCommand::StepDone { .. }, ReplicaChange::Split { new_shard, .. }) => Some(*new_shard),
        _ => None,
    };
    node.propose_meta(done).await.map_err(|error| error.to_string())?;
    if let Some(new_shard) = split_off {
        // Off the hosting loop: the new group must first be hosted and elect.
        tokio::spawn(lead_halves_apart(node.clone(), step.shard_id, new_shard));
    }
    tracing::info!(node = node.id, %step, "reshaping step done");
    Ok(())
}

/// A merge step (`left` = the step's shard takes `right`): freeze `right`, merge it into
/// `left`, record it; a merge `left`'s log refuses thaws `right` and cancels the step.
async fn carry_out_merge(node: &Arc<Node>, map: &ShardMap, step: &Step, right: ShardId) -> Result<(), String> {
    let left = step.shard_id;
    let right_entry = map
        .shards
        .get(&right)
        .ok_or_else(|| format!("shard {right} is not in the map"))?;
    let done = match node
        .ask_shard_leader_for(map, right, Reconfigure::Freeze { into: left })
        .await
    {
        Ok(()) => {
            let merge = Reconfigure::Merge {
                right,
                right_start: right_entry.start.clone(),
                right_end: right_entry.end.clone(),
            };
            match node.ask_shard_leader_for(map, left, merge).await {
                Ok(()) => MetaCommand::StepDone { step_id: step.id },
                Err(ReconfigureRefused::Refused(reason)) => {
                    tracing::warn!(node = node.id, %step, %reason, "the shard refused a merge: thawing the other");
                    node.ask_shard_leader_for(map, right, Reconfigure::Thaw { into: left })
                        .await
                        .map_err(|refused| format!("thawing shard {right}: {}", refused.message(right)))?;
                    MetaCommand::StepCancelled { step_id: step.id }
                }
                Err(refused) => return Err(format!("merging into shard {left}: {}", refused.message(left))),
            }
        }
        // Frozen for another merge, which the map's queue rules out: nothing changed here.
        Err(ReconfigureRefused::Refused(reason)) => {
            tracing::warn!(node = node.id, %step, %reason, "the shard refused to freeze: merge dropped");
            MetaCommand::StepCancelled { step_id: step.id }
        }
        Err(refused) => return Err(format!("freezing shard {right}: {}", refused.message(right))),
    };
    node.propose_meta(done).await.map_err(|error| error.to_string())?;
    tracing::info!(node = node.id, %step, "reshaping step done");
    Ok(())
}

/// How long the meta leader waits for both halves of a split to have leaders.
const SPLIT_LEADERS_WAIT: Duration = Duration::from_secs(10);

/// After a split: once both halves have leaders, if one node leads both, hands the new half's
/// leadership to another of its voters (the active one with the lowest id), so that the load
/// the split cut in two is carried by two nodes. Best effort: logged, never retried (the
/// placement scheduler balances leaderships from then on).
async fn lead_halves_apart(node: Arc<Node>, left: ShardId, right: ShardId) {
    let deadline = tokio::time::Instant::now() + SPLIT_LEADERS_WAIT;
    loop {
        let map = node.shard_map();
        let leaders = (
            crate::node::placement::leader_of(&node, &map, left).await,
            crate::node::placement::leader_of(&node, &map, right).await,
        );
        match leaders {
            (Some(left_leader), Some(right_leader)) if left_leader != right_leader => return,
            (Some(leader), Some(_)) => {
                let voters = map.hosts_of(right).map(|(voters, _)| voters).unwrap_or_default();
                let Some(to) = voters.into_iter().find(|voter| {
                    *voter != leader
                        && map
                            .nodes
                            .get(voter)
                            .is_some_and(|entry| entry.state == crate::meta::map::NodeState::Active)
                }) else {
                    return;
                };
                let moved = node
                    .reshape(ReshapeRequest::TransferLeader { shard_id: right, to })
                    .await;
                tracing::info!(
                    node = node.id,
                    left,
                    right,
                    from = leader,
                    to,
                    ok = moved.is_ok(),
                    "split: the new half is led apart from the old one"
                );
                return;
            }
            _ if tokio::time::Instant::now() >= deadline => {
                tracing::info!(
                    node = node.id,
                    left,
                    right,
                    "split: a half has no leader yet; leaders left as they are"
                );
                return;
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn step(shard_id: ShardId, change: ReplicaChange) -> crate::meta::map::StepRequest {
    crate::meta::map::StepRequest { shard_id, change }
}
