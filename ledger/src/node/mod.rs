//! A flashledger node: the Raft replicas of every shard this node hosts, and the operations
//! the gRPC layer calls on them (write, read, status). Started from the same options struct by
//! the `ledger` binary, the in-process tests and the simulator, so they all run the real code.
//!
//! The `impl Node` is split by job: `write.rs` (proposals and the leader's sold-out answer),
//! `read.rs` (stock and status), `tasks.rs` (per-shard background loops), `error.rs` (what can
//! go wrong, and how Raft's errors map to it); [`storage`] says where a node keeps its bytes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use openraft::SnapshotPolicy;

use crate::applied::AppliedStore;
use crate::config::ClusterConfig;
use crate::config::ShardConfig;
use crate::meta::map::META_SHARD;
use crate::meta::map::ShardMap;
use crate::raft::Raft;
use crate::raft::network::PeerChannels;
use crate::raft::network::ShardNetworkFactory;
use crate::raft::state_store::ShardLog;
use crate::raft::state_store::ShardStateMachine;
use crate::raft::state_store::ShardView;
use crate::types::NodeId;
use crate::types::ShardId;

mod backup;
mod error;
mod hosting;
pub mod latency;
mod placement;
mod read;
pub mod reshape;
mod shipping_source;
pub mod storage;
mod tasks;
mod write;

pub use error::NodeError;
pub use read::ReadConsistency;
pub use read::ShardStatus;
pub use read::StatusDepth;

use crate::node::storage::Storage;

/// Everything needed to start a node.
pub struct NodeOptions {
    pub node_id: NodeId,
    pub config: ClusterConfig,
    /// Where the WAL and applied state live: files, or the simulator's memory "disk".
    pub storage: Storage,
}

/// One shard's replica on this node.
pub struct ShardReplica {
    /// The range and voters as of when this replica started (the cluster config's at
    /// bootstrap, the shard map's for a replica added later).
    pub config: ShardConfig,
    pub raft: Raft,
    pub view: Arc<ShardView>,
    /// How long this replica's proposals have recently taken to commit (as leader).
    pub commit_latency: latency::CommitLatency,
    /// When this replica last accepted an append from a leader (readiness of a follower).
    pub leader_contact: latency::LeaderContact,
    /// Set when the node stops hosting this replica (moved away): its background tasks end.
    pub retired: std::sync::atomic::AtomicBool,
}

impl ShardReplica {
    /// The range's version as this replica applied it: bumped by every split of it.
    pub fn epoch(&self) -> u64 {
        self.view.read(|image| image.bounds.epoch)
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub struct Node {
    pub id: NodeId,
    pub config: ClusterConfig,
    /// The replicas this node runs, shard 0 (the meta group) included; changed by
    /// `hosting.rs` as the shard map moves replicas.
    replicas: std::sync::RwLock<BTreeMap<ShardId, Arc<ShardReplica>>>,
    /// The channels Raft uses, reused by a follower's shipper to reach the leader.
    peers: PeerChannels,
    /// What a replica started later needs: the node's storage and Raft settings.
    opened: storage::OpenedStorage,
    raft_config: Arc<openraft::Config>,
    /// The newest shard map this node has seen (its own meta replica's, or a peer's).
    known_map: std::sync::Mutex<Arc<ShardMap>>,
    /// Whether this node runs a shipper (PostgreSQL configured, or a sink a test or the simulator
    /// gives it): as leader it then asks its shards to keep order events.
    ships_orders: std::sync::atomic::AtomicBool,
    /// Starts a shard's shipper, for replicas hosted after the node started (set by
    /// `crate::shipping::shipper::spawn` when this node ships).
    shipper_starter: std::sync::Mutex<Option<crate::shipping::source::ShipperStarter>>,
    /// Flips to true when the node starts shutting down, so long-lived streams (Watch) end and
    /// a graceful shutdown can drain its connections.
    closing: tokio::sync::watch::Sender<bool>,
    /// This node's TLS material; `None` when the cluster runs insecure.
    #[cfg(not(madsim))]
    pub tls: Option<crate::security::tls::NodeTls>,
    /// The bearer tokens, read at start; the server takes them for its authentication layer.
    #[cfg(not(madsim))]
    pub tokens: std::sync::Mutex<Option<crate::security::tokens::TokenStore>>,
    /// Budgets, priority shares and rate limits the server asks before calling the node (held
    /// here so that status reports them).
    pub admission: crate::admission::Admission,
    /// Request latencies the server records (crate::server::request_metrics).
    pub instruments: crate::metrics::instruments::NodeInstruments,
    /// The WAL's fdatasync histograms.
    pub wal_instruments: crate::metrics::instruments::WalInstruments,
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
    /// Opens storage and starts a Raft node for every shard this node hosts. On a node's very
    /// first start (nothing in its log) a node named by the config's `[[shards]]` bootstraps
    /// them: the meta group (shard 0) on every such node, and the data shards it replicates
    /// (every initial replica proposes the same membership, which Raft allows; whichever wins
    /// the election commits it). Later the shard map decides what a node hosts (`hosting.rs`):
    /// at start, every shard its log holds; then whatever the map gives it.
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
        #[cfg(not(madsim))]
        let tls = crate::security::tls::NodeTls::load(&config, node_id).map_err(NodeError::Security)?;
        #[cfg(not(madsim))]
        let tokens = match &config.security.tokens_file {
            Some(path) if !config.security.insecure => {
                Some(crate::security::tokens::TokenStore::open(path).map_err(NodeError::Security)?)
            }
            _ => None,
        };
        #[cfg(madsim)]
        if !config.security.insecure {
            return Err(NodeError::Security("the simulator runs insecure clusters only".into()));
        }
        if config.security.insecure {
            tracing::warn!(
                node = node_id,
                "security.insecure = true: plaintext gRPC and no authentication; anyone who reaches \
                 this node's port can change stock and speak Raft"
            );
        }
        let peers = PeerChannels::new(
            peer_addresses,
            Duration::from_millis(config.raft.rpc_timeout_ms),
            config.raft.snapshot_chunk_bytes as usize,
        );
        #[cfg(not(madsim))]
        let peers = peers.with_tls(tls.as_ref().map(|tls| tls.peer_client()));
        let opened = storage
            .open(&node_config.data_dir)
            .await
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        let wal_instruments = opened.wal().instruments();
        let raft_config = Arc::new(raft_config(&config)?);
        let in_log = opened.wal().shards();
        let bootstrap = in_log.is_empty() && config.bootstrap_nodes().contains(&node_id);
        let mut hosted: Vec<ShardConfig> = Vec::new();
        if bootstrap {
            hosted.push(config.meta_shard_config());
            hosted.extend(config.shards_on_node(node_id).cloned());
        } else {
            // The range and voters are the config's when it names the shard; a replica added
            // later learns its membership from its leader's first append.
            for shard_id in in_log {
                hosted.push(match shard_id {
                    META_SHARD => config.meta_shard_config(),
                    id => config
                        .shards
                        .iter()
                        .find(|s| s.id == id)
                        .cloned()
                        .unwrap_or(ShardConfig {
                            id,
                            start: String::new(),
                            end: String::new(),
                            replicas: Vec::new(),
                        }),
                });
            }
        }
        let (closing, _) = tokio::sync::watch::channel(false);
        let admission = crate::admission::Admission::new(
            &config.admission,
            config.shards.iter().map(|s| s.id).chain(hosted.iter().map(|s| s.id)),
        );
        let node = Arc::new(Node {
            id: node_id,
            config,
            replicas: Default::default(),
            peers,
            opened,
            raft_config,
            known_map: Default::default(),
            ships_orders: std::sync::atomic::AtomicBool::new(false),
            shipper_starter: Default::default(),
            closing,
            #[cfg(not(madsim))]
            tls,
            #[cfg(not(madsim))]
            tokens: std::sync::Mutex::new(tokens),
            admission,
            instruments: Default::default(),
            wal_instruments,
        });
        for shard in hosted {
            node.host_replica(shard, bootstrap).await?;
        }
        #[cfg(not(madsim))]
        if !node.config.postgres.is_empty() {
            let urls: Vec<String> = node.config.postgres.iter().map(|p| p.url.clone()).collect();
            let timeout = Duration::from_millis(node.config.shipping.statement_timeout_ms);
            // One sink (one connection per Postgres shard) per ledger shard: shards ship in parallel.
            crate::shipping::shipper::spawn(&node, move |_| {
                Arc::new(crate::shipping::postgres::PostgresSink::new(urls.clone(), timeout))
            });
        }
        tokio::spawn(hosting::follow_shard_map(Arc::downgrade(&node)));
        tracing::info!(node = node_id, replicas = node.replica_ids().len(), "node started");
        Ok(node)
    }

    /// Starts a Raft node for `shard` (its log and snapshot are this node's, possibly empty)
    /// and its background tasks; with `initialize`, proposes the shard's first membership
    /// (bootstrap only). A replica already running is left alone.
    pub(crate) async fn host_replica(self: &Arc<Self>, shard: ShardConfig, initialize: bool) -> Result<(), NodeError> {
        let shard_id = shard.id;
        if self.replica(shard_id).is_some() {
            return Ok(());
        }
        self.opened.claim(shard_id);
        let snapshots = self
            .opened
            .snapshots(shard_id)
            .map_err(|e| NodeError::Storage(e.to_string()))?;
        let log_store = self.opened.log_store(shard_id);
        let log = ShardLog { wal: self.opened.wal() };
        let state_machine = ShardStateMachine::open(shard_id, AppliedStore::new(snapshots), log)
            .map_err(|e| NodeError::Storage(format!("shard {shard_id}: {e}")))?
            .with_split_seeder(Arc::new(self.opened.clone()));
        let view = state_machine.view();
        check_log_follows_snapshot(shard_id, &view, &mut log_store.clone()).await?;
        let network = ShardNetworkFactory {
            shard_id,
            peers: self.peers.clone(),
        };
        let raft = Raft::new(self.id, self.raft_config.clone(), network, log_store, state_machine)
            .await
            .map_err(|e| NodeError::Raft(format!("shard {shard_id}: {e}")))?;
        // A half this node's split just wrote: the node that led the shard it came from asks
        // for the new group's leadership at once rather than after an election timeout (the
        // SKUs that moved are unavailable until the new group has a leader).
        if self.opened.take_seeded(shard_id)
            && self.leads_the_shard_split_into(shard_id)
            && let Err(error) = raft.trigger().elect(true).await
        {
            tracing::info!(shard = shard_id, %error, "could not start an election for a split-off shard");
        }
        if initialize
            && !raft
                .is_initialized()
                .await
                .map_err(|e| NodeError::Raft(e.to_string()))?
        {
            let members: BTreeMap<NodeId, BasicNode> = shard
                .replicas
                .iter()
                .map(|id| (*id, BasicNode::new(self.peers.address_of(*id).unwrap_or_default())))
                .collect();
            if let Err(error) = raft.initialize(members).await {
                tracing::info!(shard = shard_id, %error, "shard already initialized elsewhere");
            }
        }
        let replica = Arc::new(ShardReplica {
            config: shard,
            raft,
            view,
            commit_latency: latency::CommitLatency::new(),
            leader_contact: latency::LeaderContact::new(),
            retired: Default::default(),
        });
        lock_write(&self.replicas).insert(shard_id, replica.clone());
        if shard_id != META_SHARD {
            tokio::spawn(tasks::expire_reservations(Arc::downgrade(self), shard_id));
            // Replicas hosted at start get theirs from `shipper::spawn`; later ones here.
            if let Some(start) = lock(&self.shipper_starter).as_ref() {
                start(shard_id);
            }
        }
        tokio::spawn(tasks::trigger_snapshots(Arc::downgrade(self), shard_id));
        tokio::spawn(tasks::count_leader_changes(replica));
        tracing::info!(node = self.id, shard = shard_id, initialize, "replica started");
        Ok(())
    }

    /// Stops this node's replica of `shard_id` (the shard map moved it away). Its log and
    /// snapshot stay on disk; a later start runs it again until the map says otherwise.
    pub(crate) async fn retire_replica(&self, shard_id: ShardId) {
        let Some(replica) = lock_write(&self.replicas).remove(&shard_id) else {
            return;
        };
        replica.retired.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(error) = replica.raft.shutdown().await {
            tracing::warn!(shard = shard_id, %error, "raft shutdown of a retired replica");
        }
        tracing::info!(node = self.id, shard = shard_id, "replica retired");
    }

    /// This node's replica of `shard_id`, shard 0 (the meta group) included.
    pub fn replica(&self, shard_id: ShardId) -> Option<Arc<ShardReplica>> {
        lock_read(&self.replicas).get(&shard_id).cloned()
    }

    /// This node's replica of data shard `shard_id` (never the meta group).
    pub fn shard(&self, shard_id: ShardId) -> Option<Arc<ShardReplica>> {
        (shard_id != META_SHARD).then(|| self.replica(shard_id)).flatten()
    }

    /// This node's data shard replicas, by shard id.
    pub fn shards(&self) -> Vec<Arc<ShardReplica>> {
        lock_read(&self.replicas)
            .iter()
            .filter(|(id, _)| **id != META_SHARD)
            .map(|(_, replica)| replica.clone())
            .collect()
    }

    /// Every shard this node runs a replica of, shard 0 included.
    pub fn replica_ids(&self) -> Vec<ShardId> {
        lock_read(&self.replicas).keys().copied().collect()
    }

    /// The meta group's replica on this node, if it hosts one.
    pub fn meta(&self) -> Option<Arc<ShardReplica>> {
        self.replica(META_SHARD)
    }

    /// The newest shard map this node knows of (empty before the meta group seeded it).
    pub fn shard_map(&self) -> Arc<ShardMap> {
        if let Some(meta) = self.meta() {
            // Called per request (routing): the map is copied only when it changed.
            let version = meta.view.read(|image| image.map.version);
            if version > lock(&self.known_map).version {
                self.learn_map(meta.view.read(|image| image.map.clone()));
            }
        }
        lock(&self.known_map).clone()
    }

    /// Keeps `map` if it is newer than the one this node knows, and the addresses of its nodes
    /// (a node added later is in no other node's config file).
    pub(crate) fn learn_map(&self, map: ShardMap) {
        let mut known = lock(&self.known_map);
        if map.version > known.version {
            for (id, entry) in &map.nodes {
                self.peers.learn_address(*id, &entry.addr);
            }
            *known = Arc::new(map);
        }
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
        let replicas: Vec<Arc<ShardReplica>> = lock_read(&self.replicas).values().cloned().collect();
        for shard in replicas {
            if let Err(error) = shard.raft.shutdown().await {
                tracing::warn!(shard = shard.config.id, %error, "raft shutdown");
            }
        }
    }

    /// The latency histograms of the Raft RPCs this node sends, by peer and RPC.
    pub fn raft_rpc_durations(&self) -> &crate::metrics::instruments::RaftRpcDurations {
        self.peers.rpc_durations()
    }

    pub fn address_of(&self, node: NodeId) -> Option<String> {
        self.peers.address_of(node)
    }

    /// The shard this node hosts for `sku`: by the shard map once seeded, else by the config.
    pub fn shard_for_sku(&self, sku: &[u8]) -> Result<Arc<ShardReplica>, NodeError> {
        let map = self.shard_map();
        let shard_id = if map.is_seeded() {
            map.shard_for_sku(sku).map(|(id, _)| id)
        } else {
            self.config.shard_for_sku(sku).map(|s| s.id)
        };
        shard_id
            .and_then(|id| self.shard(id))
            .ok_or_else(|| NodeError::SkuNotHosted {
                sku: String::from_utf8_lossy(sku).into_owned(),
            })
    }

    /// Whether this node leads the shard that `new_shard` was split off.
    fn leads_the_shard_split_into(&self, new_shard: ShardId) -> bool {
        self.shards().iter().any(|shard| {
            shard.raft.is_leader()
                && shard
                    .view
                    .read(|image| image.bounds.split_off.iter().any(|(id, _)| *id == new_shard))
        })
    }

    /// The sale rules this node has applied for `sku` (`None`: not hosted here, or not on sale).
    pub fn sale_rules(&self, sku: &[u8]) -> Option<crate::state_machine::command::SaleRules> {
        let shard = self.shard_for_sku(sku).ok()?;
        shard
            .view
            .read(|image| image.ledger.skus.get(sku).map(|record| record.rules))
    }

    /// Marks this node as one that ships confirmed orders (see `crate::shipping::shipper::spawn`).
    pub fn ship_orders(&self) {
        self.ships_orders.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock_read<T>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn lock_write<T>(lock: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
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

fn raft_config(config: &ClusterConfig) -> Result<openraft::Config, NodeError> {
    let raft = &config.raft;
    openraft::Config {
        cluster_name: config.cluster.name.clone(),
        election_timeout_min: raft.election_timeout_ms_min,
        election_timeout_max: raft.election_timeout_ms_max,
        heartbeat_interval: raft.heartbeat_interval_ms,
        install_snapshot_timeout: raft.rpc_timeout_ms.max(10_000),
        // Snapshots are triggered by `tasks::trigger_snapshots`, counting operations, not entries.
        snapshot_policy: SnapshotPolicy::Never,
        // Entries kept behind a snapshot so a briefly lagging follower needs no snapshot.
        max_in_snapshot_log_to_keep: (raft.snapshot_ops_since_last / 2).min(SNAPSHOT_LOG_KEPT_ENTRIES_MAX),
        // A restarted leader must not resume leadership in its old term. openraft replicates an
        // entry before the leader's own copy is synced, so a leader that crashes can lose an
        // entry a follower holds; resuming the same term, it would write a different entry
        // under the same log id, and the follower would keep the old one as "matching".
        // Found by the simulator (seeds 106 and 118): replicas diverged.
        enable_leader_restore: Some(false),
        // A follower asks the others whether they would vote for it before it raises its term
        // (`Raft.PreVote`). Without it a node back from a partition, or one that was paused
        // (SIGSTOP, a long GC-like stall), comes back with a higher term and makes the healthy
        // leader step down for nothing; and of two followers racing after a leader died, the
        // one with the shorter log would raise its term and split the vote (a second round,
        // +1 election timeout, measured in docs/benchmarks.md).
        enable_pre_vote: Some(true),
        ..Default::default()
    }
    .validate()
    .map_err(|e| NodeError::Raft(format!("raft config: {e}")))
}

/// Most log entries a shard keeps in memory behind its snapshot for lagging followers.
const SNAPSHOT_LOG_KEPT_ENTRIES_MAX: u64 = 1_000;
