//! The write path of a node: a client's batch of operations, answered sold-out from the
//! leader's lease when the log would only say so, else proposed as one log entry (after the
//! shard's settings, when they need proposing first); and the replicated "shipped" mark, proposed
//! here or forwarded to the shard's leader.

use std::sync::Arc;
use std::time::Duration;

use openraft::LinearizerOption;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::ClientWriteError;
use openraft::errors::RaftError;

use crate::admission::deadline::Deadline;
use crate::node::Node;
use crate::node::NodeError;
use crate::node::ShardReplica;
use crate::node::now_ms;
use crate::raft::network::RAFT_MESSAGE_BYTES_MAX;
use crate::raft::network::RemoteResult;
use crate::raft::network::ShippedMark;
use crate::state_machine::command::CommandBody;
use crate::state_machine::command::LedgerSettings;
use crate::state_machine::command::LogCommand;
use crate::state_machine::command::Operation;
use crate::state_machine::command::Outcome;
use crate::state_machine::keys::HashKey;
use crate::types::NodeId;
use crate::types::ShardId;

impl Node {
    /// Proposes `operations` (all for one shard) as one log entry; one outcome each.
    /// `route_epochs` are the shard epochs the caller routed them by (one per operation of a
    /// batch, 0 = unchecked): every one is checked, so a batch is refused exactly when one of
    /// its operations alone would be.
    pub async fn write(
        &self,
        operations: Vec<Operation>,
        route_epochs: &[u64],
    ) -> Result<(Vec<Outcome>, u64), NodeError> {
        self.write_within(operations, route_epochs, Deadline::default()).await
    }

    /// [`Node::write`] for a caller who gives up at `deadline`: if, by the time the entry would
    /// be proposed (after the lease and settings rounds), less time is left than the shard's
    /// commits have recently taken ([`crate::node::latency`]), or none, nothing is proposed and
    /// the answer is [`NodeError::DeadlineUnmet`]: the caller would not hear the outcome, and an
    /// entry nobody waits for still costs a majority's fdatasync.
    #[tracing::instrument(level = "debug", skip_all, fields(node = self.id, ops = operations.len()))]
    pub async fn write_within(
        &self,
        operations: Vec<Operation>,
        route_epochs: &[u64],
        deadline: Deadline,
    ) -> Result<(Vec<Outcome>, u64), NodeError> {
        let shard = self.route(&operations, route_epochs)?;
        if let Some(answered) = self.answer_sold_out_from_lease(&shard, &operations).await {
            return Ok(answered);
        }
        self.configure_if_needed(&shard).await?;
        let needs = shard.commit_latency.estimate();
        let now = tokio::time::Instant::now();
        if deadline.cannot_meet(now, needs) {
            return Err(NodeError::DeadlineUnmet {
                shard_id: shard.config.id,
                left_ms: deadline
                    .0
                    .map_or(0, |at| at.saturating_duration_since(now).as_millis() as u64),
                needs_ms: needs.as_millis() as u64,
            });
        }
        let command = LogCommand {
            timestamp_ms: now_ms(),
            body: CommandBody::Batch(operations),
        };
        let response = self.propose(&shard, command).await?;
        Ok((response.0, response.1))
    }

    /// A sold-out storm without a log entry per rejection. When every operation is a reserve or
    /// purchase of a new order id that its SKU cannot cover, the leader confirms its leadership
    /// from its lease (no consensus round while a quorum acknowledged it recently), waits until
    /// it has applied everything committed before, and answers `SoldOut` from that state: the
    /// answer the log would have given at that point, and since a sold-out answer records nothing
    /// (`LedgerState::take`), skipping the log changes nothing else. `None`: use the log.
    async fn answer_sold_out_from_lease(
        &self,
        shard: &ShardReplica,
        operations: &[Operation],
    ) -> Option<(Vec<Outcome>, u64)> {
        if !shard.raft.is_leader() {
            return None;
        }
        let answer = |image: &crate::applied::ShardImage| {
            // A SKU a split moved away: the log refuses it, for every replica alike.
            if operations
                .iter()
                .any(|operation| !image.bounds.contains(operation.sku()))
            {
                return None;
            }
            let outcomes = operations
                .iter()
                .map(|operation| image.ledger.sold_out_answer(operation))
                .collect::<Option<Vec<Outcome>>>()?;
            Some((outcomes, image.meta.applied.map_or(0, |log_id| log_id.index)))
        };
        // Most requests of a storm are for a SKU already known to be empty; others skip the wait.
        shard.view.read(answer)?;
        #[cfg(madsim)]
        if crate::simulation::planted(crate::simulation::PlantedBug::StaleLeaderRead) {
            return shard.view.read(answer);
        }
        let timeout = Duration::from_millis(self.config.server.request_timeout_ms);
        let option = LinearizerOption::new(None, true).with_wait_timeout(timeout);
        match tokio::time::timeout(timeout, shard.raft.ensure_linearizable(option)).await {
            Ok(Ok(_read_log_id)) => {
                // Entries this leader appended and has not applied may hold an earlier attempt of
                // one of these orders: a client that retries after its first attempt timed out in
                // replication would hear SoldOut from the lease while that first attempt still
                // commits and confirms (say a restock ahead of it commits too). The log answers
                // such a retry in order, after the first attempt. Found by the simulator (seed 7
                // with the placement scheduler on).
                let last_log_index = shard.raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
                let answered = shard.view.read(answer)?;
                (answered.1 >= last_log_index).then_some(answered)
            }
            // Not (or no longer) the leader, or no quorum: the log path gives the right error.
            _ => None,
        }
    }

    /// The settings this node's config asks every replica of a shard to apply.
    fn wanted_settings(&self) -> LedgerSettings {
        LedgerSettings {
            hash_key: HashKey::default(),
            idempotency_window_ms: self.config.ledger.idempotency_window_ms,
            clock_skew_margin_ms: self.config.ledger.clock_skew_margin_ms,
            keep_order_events: self.ships_orders.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// On the leader: proposes a `Configure` entry when the shard's applied settings differ
    /// from this node's config, or it has no hash key yet (a fresh random one: it is taken only
    /// once, see `CommandBody::Configure`). Every write asks first, so no order is ever hashed
    /// with the empty key; the check is a copy of the settings under the read lock.
    pub(super) async fn configure_if_needed(&self, shard: &ShardReplica) -> Result<(), NodeError> {
        if !shard.raft.is_leader() {
            return Ok(());
        }
        let wanted = self.wanted_settings();
        let applied = shard.view.read(|image| image.ledger.settings);
        let wanted_with_key = LedgerSettings {
            hash_key: applied.hash_key,
            ..wanted
        };
        if applied.hash_key.is_set() && wanted_with_key == applied {
            return Ok(());
        }
        let hash_key = if applied.hash_key.is_set() {
            applied.hash_key
        } else {
            random_hash_key()
        };
        tracing::info!(shard = shard.config.id, ?wanted, "proposing the shard's settings");
        let command = LogCommand {
            timestamp_ms: now_ms(),
            body: CommandBody::Configure(LedgerSettings { hash_key, ..wanted }),
        };
        self.propose(shard, command).await.map(|_| ())
    }

    /// Refuses a request routed by a stale epoch of `shard` (0 = unchecked): any one of
    /// `route_epochs` refuses it all.
    pub fn check_route(&self, shard: &ShardReplica, route_epochs: &[u64]) -> Result<(), NodeError> {
        let current = shard.epoch();
        match route_epochs.iter().find(|&&epoch| epoch != 0 && epoch != current) {
            Some(&stale) => Err(NodeError::StaleEpoch {
                shard_id: shard.config.id,
                current,
                requested: stale,
            }),
            None => Ok(()),
        }
    }

    /// The one shard hosted here that every operation routes to, checked against the epochs
    /// the caller routed them by. A batch the caller routed to one shard (it names an epoch)
    /// that spans two by this node's map was cut by a split the caller has not seen: a stale
    /// epoch (refresh and resend), not a malformed request.
    pub fn route(&self, operations: &[Operation], route_epochs: &[u64]) -> Result<Arc<ShardReplica>, NodeError> {
        let routed = route_epochs.iter().copied().find(|epoch| *epoch != 0);
        let shard = match (self.shard_for_operations(operations), routed) {
            (Err(NodeError::BatchSpansShards { first, .. }), Some(requested)) => {
                let current = self.shard(first).map_or(0, |shard| shard.epoch());
                return Err(NodeError::StaleEpoch {
                    shard_id: first,
                    current,
                    requested,
                });
            }
            (routed, _) => routed?,
        };
        self.check_route(&shard, route_epochs)?;
        Ok(shard)
    }

    /// The one shard hosted here that every operation routes to.
    pub fn shard_for_operations(&self, operations: &[Operation]) -> Result<Arc<ShardReplica>, NodeError> {
        let mut chosen: Option<Arc<ShardReplica>> = None;
        for operation in operations {
            let shard = self.shard_for_sku(operation.sku())?;
            match &chosen {
                Some(first) if first.config.id != shard.config.id => {
                    return Err(NodeError::BatchSpansShards {
                        first: first.config.id,
                        second: shard.config.id,
                    });
                }
                _ => chosen = Some(shard),
            }
        }
        chosen.ok_or(NodeError::SkuNotHosted { sku: String::new() })
    }

    pub(super) async fn propose(
        &self,
        shard: &ShardReplica,
        command: LogCommand,
    ) -> Result<(Vec<Outcome>, u64), NodeError> {
        let shard_id = shard.config.id;
        if let Some(violation) = shard.view.halted() {
            return Err(NodeError::Unavailable {
                shard_id,
                reason: violation.to_string(),
            });
        }
        let timeout_ms = self.config.server.request_timeout_ms;
        let write = shard.raft.client_write(command);
        let proposed = tokio::time::Instant::now();
        match tokio::time::timeout(Duration::from_millis(timeout_ms), write).await {
            Err(_) => Err(NodeError::Timeout { shard_id, timeout_ms }),
            Ok(Ok(response)) => {
                shard.commit_latency.record(proposed.elapsed());
                // Refused whole by the state machine: the SKUs left this shard in a split.
                if let Some(Outcome::WrongShard { epoch }) = response.data.outcomes.first() {
                    return Err(NodeError::StaleEpoch {
                        shard_id,
                        current: *epoch,
                        requested: 0,
                    });
                }
                Ok((response.data.outcomes, response.log_id.index))
            }
            // Refused before it was appended: certainly not applied, the client may go elsewhere.
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                Err(self.not_leader(shard_id, forward.leader_id))
            }
            // Appended, then discarded here (truncated or purged under a new leader's log): a
            // purged entry may have been committed by another node, so the outcome is unknown.
            // Found by the simulator (seed 4): retrying a restock after this applied it twice.
            Ok(Err(error)) => Err(NodeError::OutcomeUnknown {
                shard_id,
                reason: error.to_string(),
            }),
        }
    }

    /// Has the shard's leader propose the replicated "shipped" mark: directly when this node
    /// leads, else through the leader's internal `ProposeShipped` RPC.
    pub async fn propose_shipped(&self, shard_id: ShardId, below_seq: u64) -> Result<u64, NodeError> {
        let shard = self.shard(shard_id).ok_or(NodeError::ShardNotHosted { shard_id })?;
        let mark = ShippedMark {
            below_seq,
            shipper: self.id,
        };
        let leader = shard.raft.metrics().borrow_watched().current_leader;
        match leader {
            Some(leader) if leader != self.id => self.forward_shipped(shard_id, leader, mark).await,
            _ => self.propose_shipped_locally(shard_id, mark).await,
        }
    }

    /// Proposes `mark` on this node's replica (it must be the leader).
    pub async fn propose_shipped_locally(&self, shard_id: ShardId, mark: ShippedMark) -> Result<u64, NodeError> {
        let shard = self.shard(shard_id).ok_or(NodeError::ShardNotHosted { shard_id })?;
        let command = LogCommand {
            timestamp_ms: now_ms(),
            body: CommandBody::Shipped {
                below_seq: mark.below_seq,
                shipper: mark.shipper,
            },
        };
        self.propose(&shard, command).await.map(|(_, index)| index)
    }

    async fn forward_shipped(&self, shard_id: ShardId, leader: NodeId, mark: ShippedMark) -> Result<u64, NodeError> {
        let unavailable = |reason: String| NodeError::Unavailable { shard_id, reason };
        let channel = self.peers.channel(leader).map_err(unavailable)?;
        let mut client = flashledger_proto::v1::raft_client::RaftClient::new(channel)
            .max_decoding_message_size(RAFT_MESSAGE_BYTES_MAX);
        let payload = bincode::serialize(&mark).map_err(|e| unavailable(e.to_string()))?;
        let request = flashledger_proto::v1::RaftRequest {
            shard_id,
            payload: payload.into(),
        };
        let timeout_ms = self.config.server.request_timeout_ms;
        let reply = tokio::time::timeout(Duration::from_millis(timeout_ms), client.propose_shipped(request))
            .await
            .map_err(|_| NodeError::Timeout { shard_id, timeout_ms })?
            .map_err(|status| unavailable(format!("leader {leader}: {status}")))?;
        let answer: RemoteResult<u64> =
            bincode::deserialize(&reply.into_inner().payload).map_err(|e| unavailable(e.to_string()))?;
        answer.map_err(unavailable)
    }
}

/// 128 random bits from the OS (std's hasher keys are drawn from it; the simulator makes them
/// deterministic per seed).
fn random_hash_key() -> HashKey {
    use std::hash::BuildHasher;
    let (first, second) = (std::hash::RandomState::new(), std::hash::RandomState::new());
    HashKey([first.hash_one(0x5eed_u64), second.hash_one(0xfeed_u64)])
}
