//! A flashledger node: the Raft replicas of every shard this node hosts, and the operations
//! the gRPC layer calls on them (write, read, status). Started from the same options struct by
//! the `ledger` binary, the in-process tests and the simulator, so they all run the real code.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use openraft::BasicNode;
use openraft::LinearizerOption;
use openraft::ServerState;
use openraft::SnapshotPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::ClientWriteError;
use openraft::errors::RaftError;

use crate::applied::AppliedStore;
use crate::config::ClusterConfig;
use crate::config::RaftSection;
use crate::config::ShardConfig;
use crate::raft::Raft;
use crate::raft::network::PeerChannels;
use crate::raft::network::RAFT_MESSAGE_BYTES_MAX;
use crate::raft::network::RemoteResult;
use crate::raft::network::ShardNetworkFactory;
use crate::raft::network::ShippedMark;
use crate::raft::state_store::ShardLog;
use crate::raft::state_store::ShardStateMachine;
use crate::raft::state_store::ShardView;
use crate::state_machine::command::CommandBody;
use crate::state_machine::command::LedgerSettings;
use crate::state_machine::command::LogCommand;
use crate::state_machine::command::Operation;
use crate::state_machine::command::Outcome;
use crate::state_machine::keys::HashKey;
use crate::state_machine::state::StockCounts;
use crate::types::NodeId;
use crate::types::ShardId;
pub mod storage;

use crate::node::storage::Storage;

/// Everything needed to start a node.
pub struct NodeOptions {
    pub node_id: NodeId,
    pub config: ClusterConfig,
    /// Where the WAL and applied state live: files, or the simulator's memory "disk".
    pub storage: Storage,
}

/// Why a node could not do what was asked. The gRPC layer maps each to one status code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeError {
    #[error("not the leader of shard {shard_id}")]
    NotLeader {
        shard_id: ShardId,
        leader_id: Option<NodeId>,
        leader_addr: Option<String>,
    },
    #[error("this node hosts no shard for sku {sku:?}")]
    SkuNotHosted { sku: String },
    #[error("this node does not host shard {shard_id}")]
    ShardNotHosted { shard_id: ShardId },
    #[error("batch spans shards {first} and {second}; send one batch per shard")]
    BatchSpansShards { first: ShardId, second: ShardId },
    #[error("shard {shard_id} is at epoch {current}, the request was routed at epoch {requested}")]
    StaleEpoch {
        shard_id: ShardId,
        current: u64,
        requested: u64,
    },
    #[error("shard {shard_id} did not answer within {timeout_ms} ms; the write may still be applied")]
    Timeout { shard_id: ShardId, timeout_ms: u64 },
    /// The write was proposed, then this node lost track of it (leadership changed, its entry
    /// was discarded locally or Raft stopped): another node may still commit it.
    #[error("shard {shard_id} lost track of the proposed write ({reason}); it may still be applied")]
    OutcomeUnknown { shard_id: ShardId, reason: String },
    #[error("replica of shard {shard_id} lags by {lag} entries, more than the {max_lag} allowed")]
    TooStale { shard_id: ShardId, lag: u64, max_lag: u64 },
    #[error("shard {shard_id} is unavailable: {reason}")]
    Unavailable { shard_id: ShardId, reason: String },
    #[error("unknown sku {sku:?}")]
    UnknownSku { sku: String },
    #[error("storage: {0}")]
    Storage(String),
    #[error("raft: {0}")]
    Raft(String),
}

/// How a read wants its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Linearizable, served by the leader under its lease.
    Linearizable,
    /// From this replica's applied state if it lags the log it knows by at most `max_lag_entries`.
    Stale { max_lag_entries: u64 },
}

/// One shard's replica on this node.
pub struct ShardReplica {
    pub config: ShardConfig,
    /// Bumped by splits, merges and replica moves (none exist yet: always 1).
    pub epoch: u64,
    pub raft: Raft,
    pub view: Arc<ShardView>,
}

/// A shard's state as `Status` reports it.
#[derive(Debug, Clone)]
pub struct ShardStatus {
    pub shard_id: ShardId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub role: String,
    pub replicas: Vec<NodeId>,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub snapshot_index: u64,
    pub sku_count: u64,
    pub state_digest: u64,
    pub invariant_ok: bool,
    /// Confirmed orders not yet acknowledged by every Postgres shard (per the replicated mark).
    pub shipping_lag_events: u64,
    /// Age of the oldest of them by this node's clock, in seconds (0 when none waits).
    pub shipping_lag_seconds: f64,
    /// The node whose shipper last advanced the mark (0 = none yet).
    pub shipped_by: NodeId,
}

pub struct Node {
    pub id: NodeId,
    pub config: ClusterConfig,
    pub shards: BTreeMap<ShardId, Arc<ShardReplica>>,
    peer_addresses: BTreeMap<NodeId, String>,
    /// The channels Raft uses, reused by a follower's shipper to reach the leader.
    peers: PeerChannels,
    /// Whether this node runs a shipper (PostgreSQL configured, or a sink a test or the simulator
    /// gives it): as leader it then asks its shards to keep order events.
    ships_orders: std::sync::atomic::AtomicBool,
    /// Flips to true when the node starts shutting down, so long-lived streams (Watch) end and
    /// a graceful shutdown can drain its connections.
    closing: tokio::sync::watch::Sender<bool>,
}

/// Milliseconds since the Unix epoch by this node's clock (madsim's under the simulator). Only
/// the leader reads it, to stamp entries; the state machine never does.
pub fn now_ms() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    #[cfg(madsim)]
    let now = now.saturating_add_signed(crate::simulation::clock_skew_ms());
    now
}

impl Node {
    /// Opens storage, starts one Raft node per hosted shard, and bootstraps shards that have
    /// never been initialized (every initial replica proposes the same membership, which Raft
    /// allows; whichever wins the election commits it).
    pub async fn start(options: NodeOptions) -> Result<Arc<Node>, NodeError> {
        let NodeOptions {
            node_id,
            config,
            storage,
        } = options;
        let node_config = config
            .node(node_id)
            .ok_or(NodeError::Storage(format!("node {node_id} is not in the config")))?;
        let peer_addresses: BTreeMap<NodeId, String> = config.nodes.iter().map(|n| (n.id, n.addr.clone())).collect();
        let peers = PeerChannels::new(
            peer_addresses.clone(),
            Duration::from_millis(config.raft.rpc_timeout_ms),
            config.raft.snapshot_chunk_bytes as usize,
        );
        let opened = storage
            .open(&node_config.data_dir)
            .await
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        let raft_config = Arc::new(raft_config(&config)?);
        let mut shards = BTreeMap::new();
        for shard in config.shards.iter().filter(|s| s.replicas.contains(&node_id)) {
            let snapshots = opened
                .snapshots(shard.id)
                .map_err(|e| NodeError::Storage(e.to_string()))?;
            let log_store = opened.log_store(shard.id);
            let log = ShardLog { wal: opened.wal() };
            let state_machine = ShardStateMachine::open(shard.id, AppliedStore::new(snapshots), log)
                .map_err(|e| NodeError::Storage(format!("shard {}: {e}", shard.id)))?;
            let view = state_machine.view();
            check_log_follows_snapshot(shard.id, &view, &mut log_store.clone()).await?;
            let network = ShardNetworkFactory {
                shard_id: shard.id,
                peers: peers.clone(),
            };
            let raft = Raft::new(node_id, raft_config.clone(), network, log_store, state_machine)
                .await
                .map_err(|e| NodeError::Raft(format!("shard {}: {e}", shard.id)))?;
            if !raft
                .is_initialized()
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?
            {
                let members: BTreeMap<NodeId, BasicNode> = shard
                    .replicas
                    .iter()
                    .map(|id| (*id, BasicNode::new(peer_addresses.get(id).cloned().unwrap_or_default())))
                    .collect();
                if let Err(error) = raft.initialize(members).await {
                    tracing::info!(shard = shard.id, %error, "shard already initialized elsewhere");
                }
            }
            shards.insert(
                shard.id,
                Arc::new(ShardReplica {
                    config: shard.clone(),
                    epoch: 1,
                    raft,
                    view,
                }),
            );
        }
        let (closing, _) = tokio::sync::watch::channel(false);
        let node = Arc::new(Node {
            id: node_id,
            config,
            shards,
            peer_addresses,
            peers,
            ships_orders: std::sync::atomic::AtomicBool::new(false),
            closing,
        });
        for shard in node.shards.values() {
            tokio::spawn(expire_reservations(Arc::downgrade(&node), shard.config.id));
            tokio::spawn(trigger_snapshots(Arc::downgrade(&node), shard.config.id));
        }
        #[cfg(not(madsim))]
        if !node.config.postgres.is_empty() {
            let urls: Vec<String> = node.config.postgres.iter().map(|p| p.url.clone()).collect();
            let timeout = Duration::from_millis(node.config.shipping.statement_timeout_ms);
            // One sink (one connection per Postgres shard) per ledger shard: shards ship in parallel.
            crate::shipping::shipper::spawn(&node, |_| {
                Arc::new(crate::shipping::postgres::PostgresSink::new(urls.clone(), timeout))
            });
        }
        tracing::info!(node = node_id, shards = node.shards.len(), "node started");
        Ok(node)
    }

    /// Tells long-lived streams to end: the first step of a graceful shutdown.
    pub fn begin_shutdown(&self) {
        self.closing.send_replace(true);
    }

    /// Completes once [`Node::begin_shutdown`] was called.
    pub async fn closing(&self) {
        let mut closing = self.closing.subscribe();
        // An error means the sender is gone, which also means the node is going away.
        let _ = closing.wait_for(|closing| *closing).await;
    }

    /// Stops every shard's Raft node (graceful shutdown).
    pub async fn shutdown(&self) {
        self.begin_shutdown();
        for shard in self.shards.values() {
            if let Err(error) = shard.raft.shutdown().await {
                tracing::warn!(shard = shard.config.id, %error, "raft shutdown");
            }
        }
    }

    pub fn address_of(&self, node: NodeId) -> Option<&str> {
        self.peer_addresses.get(&node).map(String::as_str)
    }

    /// The shard this node hosts for `sku`.
    pub fn shard_for_sku(&self, sku: &[u8]) -> Result<&Arc<ShardReplica>, NodeError> {
        let shard_id = self.config.shard_for_sku(sku).map(|s| s.id);
        shard_id
            .and_then(|id| self.shards.get(&id))
            .ok_or_else(|| NodeError::SkuNotHosted {
                sku: String::from_utf8_lossy(sku).into_owned(),
            })
    }

    /// Proposes `operations` (all for one shard) as one log entry; one outcome each.
    #[tracing::instrument(level = "debug", skip_all, fields(node = self.id, ops = operations.len()))]
    pub async fn write(&self, operations: Vec<Operation>, route_epoch: u64) -> Result<(Vec<Outcome>, u64), NodeError> {
        let shard = self.shard_for_operations(&operations)?;
        if route_epoch != 0 && route_epoch != shard.epoch {
            return Err(NodeError::StaleEpoch {
                shard_id: shard.config.id,
                current: shard.epoch,
                requested: route_epoch,
            });
        }
        if let Some(answered) = self.answer_sold_out_from_lease(shard, &operations).await {
            return Ok(answered);
        }
        self.configure_if_needed(shard).await?;
        let command = LogCommand {
            timestamp_ms: now_ms(),
            body: CommandBody::Batch(operations),
        };
        let response = self.propose(shard, command).await?;
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
            Ok(Ok(_read_log_id)) => shard.view.read(answer),
            // Not (or no longer) the leader, or no quorum: the log path gives the right error.
            _ => None,
        }
    }

    /// Marks this node as one that ships confirmed orders (see `crate::shipping::shipper::spawn`).
    pub fn ship_orders(&self) {
        self.ships_orders.store(true, std::sync::atomic::Ordering::Relaxed);
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
    async fn configure_if_needed(&self, shard: &ShardReplica) -> Result<(), NodeError> {
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

    fn shard_for_operations(&self, operations: &[Operation]) -> Result<&Arc<ShardReplica>, NodeError> {
        let mut chosen: Option<&Arc<ShardReplica>> = None;
        for operation in operations {
            let shard = self.shard_for_sku(operation.sku())?;
            match chosen {
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

    async fn propose(&self, shard: &ShardReplica, command: LogCommand) -> Result<(Vec<Outcome>, u64), NodeError> {
        let shard_id = shard.config.id;
        if let Some(violation) = shard.view.halted() {
            return Err(NodeError::Unavailable {
                shard_id,
                reason: violation.to_string(),
            });
        }
        let timeout_ms = self.config.server.request_timeout_ms;
        let write = shard.raft.client_write(command);
        match tokio::time::timeout(Duration::from_millis(timeout_ms), write).await {
            Err(_) => Err(NodeError::Timeout { shard_id, timeout_ms }),
            Ok(Ok(response)) => Ok((response.data.outcomes, response.log_id.index)),
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

    fn not_leader(&self, shard_id: ShardId, leader_id: Option<NodeId>) -> NodeError {
        let leader_addr = leader_id.and_then(|id| self.address_of(id).map(str::to_string));
        NodeError::NotLeader {
            shard_id,
            leader_id,
            leader_addr,
        }
    }

    fn raft_error<E>(&self, shard_id: ShardId, error: RaftError<crate::types::TypeConfig, E>) -> NodeError
    where
        E: std::error::Error + openraft::TryAsRef<openraft::errors::ForwardToLeader<crate::types::TypeConfig>>,
    {
        if let Some(forward) = error.forward_to_leader() {
            return self.not_leader(shard_id, forward.leader_id);
        }
        NodeError::Unavailable {
            shard_id,
            reason: error.to_string(),
        }
    }

    /// Has the shard's leader propose the replicated "shipped" mark: directly when this node
    /// leads, else through the leader's internal `ProposeShipped` RPC.
    pub async fn propose_shipped(&self, shard_id: ShardId, below_seq: u64) -> Result<u64, NodeError> {
        let shard = self
            .shards
            .get(&shard_id)
            .ok_or(NodeError::ShardNotHosted { shard_id })?;
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
        let shard = self
            .shards
            .get(&shard_id)
            .ok_or(NodeError::ShardNotHosted { shard_id })?;
        let command = LogCommand {
            timestamp_ms: now_ms(),
            body: CommandBody::Shipped {
                below_seq: mark.below_seq,
                shipper: mark.shipper,
            },
        };
        self.propose(shard, command).await.map(|(_, index)| index)
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

    /// Reads one SKU's counts and the applied index they reflect.
    #[tracing::instrument(level = "debug", skip_all, fields(node = self.id, ?consistency))]
    pub async fn get_stock(&self, sku: &[u8], consistency: ReadConsistency) -> Result<(StockCounts, u64), NodeError> {
        let shard = self.shard_for_sku(sku)?;
        let shard_id = shard.config.id;
        match consistency {
            #[cfg(madsim)]
            ReadConsistency::Linearizable
                if crate::simulation::planted(crate::simulation::PlantedBug::StaleLeaderRead)
                    && shard.raft.is_leader() => {}
            ReadConsistency::Linearizable => {
                let timeout_ms = self.config.server.request_timeout_ms;
                // Served under the leader lease when a quorum acknowledged recently (no consensus
                // round); otherwise the leader heartbeats and waits for a fresh quorum (read index).
                let option = LinearizerOption::new(None, true).with_wait_timeout(Duration::from_millis(timeout_ms));
                let ensure = shard.raft.ensure_linearizable(option);
                match tokio::time::timeout(Duration::from_millis(timeout_ms), ensure).await {
                    Err(_) => return Err(NodeError::Timeout { shard_id, timeout_ms }),
                    Ok(Err(error)) => return Err(self.raft_error(shard_id, error)),
                    Ok(Ok(_read_log_id)) => {}
                }
            }
            ReadConsistency::Stale { max_lag_entries } => {
                let last_log_index = shard.raft.metrics().borrow_watched().last_log_index.unwrap_or(0);
                let lag = last_log_index.saturating_sub(shard.view.applied_index());
                if lag > max_lag_entries {
                    return Err(NodeError::TooStale {
                        shard_id,
                        lag,
                        max_lag: max_lag_entries,
                    });
                }
            }
        }
        shard.view.read(|image| match image.ledger.stock(sku) {
            Some(counts) => Ok((counts, image.meta.applied.map(|id| id.index).unwrap_or(0))),
            None => Err(NodeError::UnknownSku {
                sku: String::from_utf8_lossy(sku).into_owned(),
            }),
        })
    }

    /// Per-shard Raft and ledger state, for `Status` and the operator CLI.
    pub fn status(&self) -> Vec<ShardStatus> {
        self.shards
            .values()
            .map(|shard| {
                let metrics = shard.raft.metrics().borrow_watched().clone();
                let (sku_count, state_digest, invariant_ok, applied_index) = shard.view.read(|image| {
                    (
                        image.ledger.skus.len() as u64,
                        image.ledger.digest(),
                        image.ledger.check_all().is_ok(),
                        image.meta.applied.map(|id| id.index).unwrap_or(0),
                    )
                });
                let (shipping_lag_events, oldest_ms, shipped_by) = shard.view.read(|image| {
                    let ledger = &image.ledger;
                    (
                        ledger.next_event_seq.saturating_sub(ledger.shipped_below_seq),
                        ledger.oldest_unshipped().map(|event| event.confirmed_at_ms),
                        ledger.shipped_by,
                    )
                });
                let shipping_lag_seconds = oldest_ms.map_or(0.0, |at| now_ms().saturating_sub(at) as f64 / 1000.0);
                ShardStatus {
                    shard_id: shard.config.id,
                    leader: metrics.current_leader,
                    term: metrics.current_term,
                    role: role_name(metrics.state).to_string(),
                    replicas: shard.config.replicas.clone(),
                    last_log_index: metrics.last_log_index.unwrap_or(0),
                    applied_index,
                    snapshot_index: metrics.snapshot.map(|id| id.index).unwrap_or(0),
                    sku_count,
                    state_digest,
                    invariant_ok: invariant_ok && shard.view.halted().is_none(),
                    shipping_lag_events,
                    shipping_lag_seconds,
                    shipped_by,
                }
            })
            .collect()
    }
}

/// Refuses to start a shard whose log no longer holds every entry after the state it loaded (a
/// damaged latest snapshot replaced by the previous one after the log was purged past it):
/// openraft would apply the log's first entry on top of an older state and skip the ones in
/// between. The replica must be restored from another one.
async fn check_log_follows_snapshot(
    shard_id: ShardId,
    view: &ShardView,
    log: &mut crate::storage::ShardLogStore,
) -> Result<(), NodeError> {
    use openraft::storage::RaftLogStorage;
    let state = log
        .get_log_state()
        .await
        .map_err(|e| NodeError::Storage(format!("shard {shard_id}: {e}")))?;
    let purged = state.last_purged_log_id.map(|id| id.index);
    let applied = view.read(|image| image.meta.applied.map(|id| id.index));
    if purged > applied {
        return Err(NodeError::Storage(format!(
            "shard {shard_id}: the log was purged up to index {} but the loaded snapshot ends at {}: \
             the entries in between are gone (was the latest snapshot damaged?); restore this replica's \
             data directory from another replica",
            purged.unwrap_or(0),
            applied.map_or("the start".to_string(), |index| index.to_string())
        )));
    }
    Ok(())
}

/// 128 random bits from the OS (std's hasher keys are drawn from it; the simulator makes them
/// deterministic per seed).
fn random_hash_key() -> HashKey {
    use std::hash::BuildHasher;
    let (first, second) = (std::hash::RandomState::new(), std::hash::RandomState::new());
    HashKey([first.hash_one(0x5eed_u64), second.hash_one(0xfeed_u64)])
}

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

fn raft_config(config: &ClusterConfig) -> Result<openraft::Config, NodeError> {
    let raft = &config.raft;
    openraft::Config {
        cluster_name: config.cluster.name.clone(),
        election_timeout_min: raft.election_timeout_ms_min,
        election_timeout_max: raft.election_timeout_ms_max,
        heartbeat_interval: raft.heartbeat_interval_ms,
        install_snapshot_timeout: raft.rpc_timeout_ms.max(10_000),
        // Snapshots are triggered by `trigger_snapshots`, counting operations, not entries.
        snapshot_policy: SnapshotPolicy::Never,
        // Entries kept behind a snapshot so a briefly lagging follower needs no snapshot.
        max_in_snapshot_log_to_keep: (raft.snapshot_ops_since_last / 2).min(SNAPSHOT_LOG_KEPT_ENTRIES_MAX),
        // A restarted leader must not resume leadership in its old term. openraft replicates an
        // entry before the leader's own copy is synced, so a leader that crashes can lose an
        // entry a follower holds; resuming the same term, it would write a different entry
        // under the same log id, and the follower would keep the old one as "matching".
        // Found by the simulator (seeds 106 and 118): replicas diverged.
        enable_leader_restore: Some(false),
        ..Default::default()
    }
    .validate()
    .map_err(|e| NodeError::Raft(format!("raft config: {e}")))
}

/// Most log entries a shard keeps in memory behind its snapshot for lagging followers.
const SNAPSHOT_LOG_KEPT_ENTRIES_MAX: u64 = 1_000;
/// How often each shard checks whether it is due a snapshot.
const SNAPSHOT_CHECK_INTERVAL_MS: u64 = 250;

/// Asks openraft for a snapshot of a shard once the operations applied since the last one reach
/// both `raft.snapshot_ops_since_last` and `raft.snapshot_growth_percent` of the records the last
/// one held (on every replica: each builds its own). Ends when the node is dropped.
async fn trigger_snapshots(node: Weak<Node>, shard_id: ShardId) {
    loop {
        tokio::time::sleep(Duration::from_millis(SNAPSHOT_CHECK_INTERVAL_MS)).await;
        let Some(node) = node.upgrade() else { return };
        let Some(shard) = node.shards.get(&shard_id) else {
            return;
        };
        let (ops_since, records) = (shard.view.ops_since_snapshot(), shard.view.snapshot_records());
        if !snapshot_due(&node.config.raft, ops_since, records) {
            continue;
        }
        shard
            .view
            .set_snapshot_overdue(snapshot_overdue(&node.config.raft, ops_since, records));
        // A trigger while a snapshot is being built is ignored by openraft.
        if let Err(error) = shard.raft.trigger().snapshot().await {
            tracing::debug!(shard = shard_id, %error, "snapshot trigger failed; retrying next tick");
        }
    }
}

/// Whether `ops_since_snapshot` operations applied on top of a snapshot of `snapshot_records`
/// records are enough for the next one (see `RaftSection::snapshot_growth_percent`).
fn snapshot_due(raft: &RaftSection, ops_since_snapshot: u64, snapshot_records: u64) -> bool {
    ops_since_snapshot >= snapshot_due_at(raft, snapshot_records)
}

/// Whether the next snapshot is so late (`SNAPSHOT_OVERDUE_FACTOR` times its due point) that it
/// is built at normal CPU priority instead of in the background.
fn snapshot_overdue(raft: &RaftSection, ops_since_snapshot: u64, snapshot_records: u64) -> bool {
    ops_since_snapshot >= snapshot_due_at(raft, snapshot_records).saturating_mul(SNAPSHOT_OVERDUE_FACTOR)
}

fn snapshot_due_at(raft: &RaftSection, snapshot_records: u64) -> u64 {
    let by_growth = snapshot_records.saturating_mul(raft.snapshot_growth_percent) / 100;
    raft.snapshot_ops_since_last.max(by_growth)
}

/// A snapshot this many times past its due point is built at normal priority.
const SNAPSHOT_OVERDUE_FACTOR: u64 = 3;

/// The leader of each shard proposes `Expire` when a reservation is due, so expiry is a
/// replicated decision at a log-stamped time, and its settings when they differ from its config
/// (a new leader, a changed config). Ends when the node is dropped.
async fn expire_reservations(node: Weak<Node>, shard_id: ShardId) {
    loop {
        let interval_ms = match node.upgrade() {
            Some(node) => node.config.ledger.expire_interval_ms,
            None => return,
        };
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        let Some(node) = node.upgrade() else { return };
        let Some(shard) = node.shards.get(&shard_id) else {
            return;
        };
        if !shard.raft.is_leader() {
            continue;
        }
        if let Err(error) = node.configure_if_needed(shard).await {
            tracing::debug!(shard = shard_id, %error, "settings proposal failed; retrying next tick");
        }
        let now = now_ms();
        let due = shard
            .view
            .read(|image| image.ledger.next_expiry_ms().is_some_and(|at| at <= now));
        if due {
            let command = LogCommand {
                timestamp_ms: now,
                body: CommandBody::Expire,
            };
            if let Err(error) = node.propose(shard, command).await {
                tracing::debug!(shard = shard_id, %error, "expire proposal failed; retrying next tick");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_due_after_the_fixed_interval_and_the_growth_of_the_state() {
        let raft = RaftSection {
            snapshot_ops_since_last: 1_000,
            snapshot_growth_percent: 25,
            ..RaftSection::default()
        };
        // A small state: the fixed interval decides.
        assert!(!snapshot_due(&raft, 999, 100));
        assert!(snapshot_due(&raft, 1_000, 100));
        // A large state: a quarter of it must have been applied on top.
        assert!(!snapshot_due(&raft, 1_000, 1_000_000));
        assert!(!snapshot_due(&raft, 249_999, 1_000_000));
        assert!(snapshot_due(&raft, 250_000, 1_000_000));
        // 0 turns the growth rule off; a huge state does not overflow.
        let fixed = RaftSection {
            snapshot_growth_percent: 0,
            ..raft.clone()
        };
        assert!(snapshot_due(&fixed, 1_000, 1_000_000));
        assert!(!snapshot_due(&raft, u64::MAX / 100 - 1, u64::MAX));
        assert!(snapshot_due(&raft, u64::MAX / 100, u64::MAX));
        // Three times late: built at normal priority.
        assert!(!snapshot_overdue(&raft, 749_999, 1_000_000));
        assert!(snapshot_overdue(&raft, 750_000, 1_000_000));
        assert!(!snapshot_overdue(&raft, 2_999, 100));
        assert!(snapshot_overdue(&raft, 3_000, 100));
        assert!(!snapshot_overdue(&raft, 3 * (u64::MAX / 100) - 1, u64::MAX));
        assert!(snapshot_overdue(&raft, 3 * (u64::MAX / 100), u64::MAX));
    }
}
