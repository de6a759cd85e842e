//! An in-process cluster for integration tests: real nodes, real gRPC on 127.0.0.1 ports,
//! real WAL and sled in a temporary directory. Nodes can be killed (server stopped, Raft shut
//! down, storage closed) and restarted from their data directory. Tests wait on conditions
//! (applied index, leader known), never on fixed sleeps.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ledger::config::ClusterConfig;
use ledger::config::NodeConfig;
use ledger::config::ShardConfig;
use ledger::node::Node;
use ledger::node::NodeError;
use ledger::node::NodeOptions;
use ledger::node::ReadConsistency;
use ledger::node::storage::Storage;
use ledger::state_machine::command::Operation;
use ledger::state_machine::command::Outcome;
use ledger::state_machine::command::SaleRules;
use ledger::state_machine::state::StockCounts;
use ledger::types::NodeId;
use ledger::types::ShardId;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The longest any test waits for a condition before failing.
pub const WAIT: Duration = Duration::from_secs(20);

struct RunningNode {
    node: Arc<Node>,
    stop: oneshot::Sender<()>,
    server: JoinHandle<()>,
}

pub struct TestCluster {
    pub config: ClusterConfig,
    _dir: tempfile::TempDir,
    running: BTreeMap<NodeId, RunningNode>,
}

impl TestCluster {
    /// Starts `node_count` nodes hosting two shards (SKUs below "m", and the rest) replicated on
    /// every node. `tweak` may change the config before start.
    pub async fn start(node_count: u64, tweak: impl FnOnce(&mut ClusterConfig)) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut nodes = Vec::new();
        for id in 1..=node_count {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            drop(listener);
            nodes.push(NodeConfig {
                id,
                addr,
                admin_addr: None,
                data_dir: dir.path().join(format!("node{id}")),
                cert_file: None,
                key_file: None,
            });
        }
        let replicas: Vec<NodeId> = (1..=node_count).collect();
        let toml = "[security]\ninsecure = true\n[[nodes]]\nid = 1\naddr = \"127.0.0.1:1\"\ndata_dir = \"x\"\n[[shards]]\nid = 1\nreplicas = [1]\n";
        let mut config = ClusterConfig::parse(toml, "test").expect("base config");
        config.nodes = nodes;
        config.shards = vec![
            ShardConfig {
                id: 1,
                start: String::new(),
                end: "m".into(),
                replicas: replicas.clone(),
            },
            ShardConfig {
                id: 2,
                start: "m".into(),
                end: String::new(),
                replicas,
            },
        ];
        config.raft.election_timeout_ms_min = 300;
        config.raft.election_timeout_ms_max = 600;
        config.raft.heartbeat_interval_ms = 50;
        config.ledger.expire_interval_ms = 100;
        tweak(&mut config);
        config.validate().expect("test config is valid");
        let mut cluster = TestCluster {
            config,
            _dir: dir,
            running: BTreeMap::new(),
        };
        for id in 1..=node_count {
            cluster.restart(id).await;
        }
        cluster
    }

    /// Starts (or restarts) node `id` from its data directory.
    pub async fn restart(&mut self, id: NodeId) {
        assert!(!self.running.contains_key(&id), "node {id} is already running");
        let addr = self.config.node(id).expect("node in config").addr.clone();
        let listener = bind_retrying(&addr).await;
        let node = Node::start(NodeOptions {
            node_id: id,
            config: self.config.clone(),
            storage: Storage::Disk,
        })
        .await
        .expect("node starts");
        let (stop, stopped) = oneshot::channel::<()>();
        let server_node = node.clone();
        let server = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(error) = ledger::server::serve(server_node, listener, shutdown).await {
                tracing::warn!(%error, "server ended");
            }
        });
        self.running.insert(id, RunningNode { node, stop, server });
    }

    /// Starts a new node `id` that the running nodes' config files do not list (a machine added
    /// to a live cluster): only its own config names it; the others learn it from the shard map.
    pub async fn join(&mut self, id: NodeId) -> String {
        assert!(self.config.node(id).is_none(), "node {id} is already configured");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        drop(listener);
        self.config.nodes.push(NodeConfig {
            id,
            addr: addr.clone(),
            admin_addr: None,
            data_dir: self._dir.path().join(format!("node{id}")),
            cert_file: None,
            key_file: None,
        });
        self.config.validate().expect("config with the joining node is valid");
        self.restart(id).await;
        addr
    }

    /// Stops node `id` the way a crash looks to its peers: it stops answering, and its Raft
    /// nodes and storage are closed (what is on disk is all a restart gets back).
    pub async fn kill(&mut self, id: NodeId) {
        let running = self.running.remove(&id).expect("node is running");
        let _ = running.stop.send(());
        let _ = running.server.await;
        running.node.shutdown().await;
        drop(running.node);
    }

    pub fn node(&self, id: NodeId) -> &Arc<Node> {
        &self.running.get(&id).expect("node is running").node
    }

    pub fn running_ids(&self) -> Vec<NodeId> {
        self.running.keys().copied().collect()
    }

    /// Waits until a running node leads `shard` (as seen by a running node's metrics, and
    /// that leader itself agrees) and returns it. A shard the map has just created (a split)
    /// may not be hosted anywhere yet: that is waited for too.
    pub async fn leader(&self, shard: ShardId) -> NodeId {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            for running in self.running.values() {
                let Some(replica) = running.node.replica(shard) else {
                    continue;
                };
                if replica.raft.is_leader() {
                    return running.node.id;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no leader for shard {shard} within {WAIT:?}"
            );
            match self.running.values().find_map(|running| running.node.replica(shard)) {
                Some(any) => {
                    let _ = any
                        .raft
                        .wait(Some(Duration::from_millis(100)))
                        .metrics(|m| m.current_leader.is_some(), "leader known")
                        .await;
                }
                // Hosting follows the map every 200 ms.
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// A running replica of `shard` that is not its leader.
    pub async fn follower_of(&self, shard: ShardId) -> NodeId {
        let leader = self.leader(shard).await;
        self.running_ids()
            .into_iter()
            .find(|id| *id != leader)
            .expect("a follower")
    }

    /// Sends `operations` to the current leader of their shard, following leader changes.
    pub async fn write(&self, operations: Vec<Operation>) -> (Vec<Outcome>, u64) {
        let shard = self.config.shard_for_sku(operations[0].sku()).expect("shard").id;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let leader = self.leader(shard).await;
            match self.node(leader).write(operations.clone(), &[]).await {
                Ok(answer) => return answer,
                Err(
                    NodeError::NotLeader { .. }
                    | NodeError::Timeout { .. }
                    | NodeError::Unavailable { .. }
                    | NodeError::OutcomeUnknown { .. },
                ) if tokio::time::Instant::now() < deadline => {}
                Err(error) => panic!("write failed: {error}"),
            }
        }
    }

    /// Puts `sku` on sale and returns the log index that did it.
    pub async fn put_sku(&self, sku: &str, total: u64) -> u64 {
        let put = Operation::PutSku {
            sku: sku.as_bytes().to_vec(),
            total,
            rules: SaleRules::default(),
        };
        let (outcomes, index) = self.write(vec![put]).await;
        assert_eq!(outcomes, vec![Outcome::Ok]);
        index
    }

    /// A linearizable read at the current leader of the SKU's shard, following leader changes.
    pub async fn linearizable_stock(&self, sku: &str) -> StockCounts {
        let shard = self.config.shard_for_sku(sku.as_bytes()).expect("shard").id;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let leader = self.leader(shard).await;
            match self
                .node(leader)
                .get_stock(sku.as_bytes(), ReadConsistency::Linearizable)
                .await
            {
                Ok((counts, _)) => return counts,
                Err(
                    NodeError::NotLeader { .. }
                    | NodeError::Timeout { .. }
                    | NodeError::Unavailable { .. }
                    | NodeError::OutcomeUnknown { .. },
                ) if tokio::time::Instant::now() < deadline => {}
                Err(error) => panic!("linearizable read failed: {error}"),
            }
        }
    }

    /// The last log index node `id` holds for `shard`.
    pub fn last_log_index(&self, id: NodeId, shard: ShardId) -> u64 {
        let status = self.node(id).status();
        status
            .iter()
            .find(|s| s.shard_id == shard)
            .expect("shard hosted")
            .last_log_index
    }

    /// Waits until node `id` has applied `shard` up to `index`.
    pub async fn wait_applied(&self, id: NodeId, shard: ShardId, index: u64) {
        let raft = &self.node(id).replica(shard).expect("hosted").raft;
        raft.wait(Some(WAIT))
            .applied_index_at_least(Some(index), "caught up")
            .await
            .unwrap_or_else(|e| panic!("node {id} shard {shard} did not apply {index}: {e}"));
    }

    /// Waits until node `id` has a snapshot of `shard`. Snapshots are built in the background, at
    /// the lowest CPU priority, so on a busy machine one lags the writes it covers.
    pub async fn wait_snapshot(&self, id: NodeId, shard: ShardId) {
        self.wait_metrics(id, shard, "built a snapshot", |metrics| metrics.snapshot.is_some())
            .await;
    }

    /// Waits until node `id` has purged some of `shard`'s log behind a snapshot: a replica that
    /// has been away since before it can then catch up only through a snapshot.
    pub async fn wait_log_purged(&self, id: NodeId, shard: ShardId) {
        self.wait_metrics(id, shard, "purged its log", |metrics| metrics.purged.is_some())
            .await;
    }

    async fn wait_metrics(
        &self,
        id: NodeId,
        shard: ShardId,
        what: &str,
        reached: impl Fn(&openraft::RaftMetrics<ledger::types::TypeConfig>) -> bool + Send + 'static,
    ) {
        let raft = &self.node(id).replica(shard).expect("hosted").raft;
        raft.wait(Some(WAIT))
            .metrics(reached, what)
            .await
            .unwrap_or_else(|e| panic!("node {id} shard {shard} never {what}: {e}"));
    }

    /// This node's applied counts of `sku` (a stale read of its own state).
    pub async fn local_stock(&self, id: NodeId, sku: &str) -> StockCounts {
        self.node(id)
            .get_stock(
                sku.as_bytes(),
                ReadConsistency::Stale {
                    max_lag_entries: u64::MAX,
                },
            )
            .await
            .expect("stock")
            .0
    }

    pub async fn stop_all(mut self) {
        for id in self.running_ids() {
            self.kill(id).await;
        }
    }
}

async fn bind_retrying(addr: &str) -> tokio::net::TcpListener {
    let mut attempts = 0;
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(error) if attempts < 50 => {
                attempts += 1;
                tracing::debug!(%error, addr, "port busy, retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("cannot bind {addr}: {error}"),
        }
    }
}

pub fn purchase(sku: &str, user: &str, order_id: &str) -> Operation {
    Operation::Purchase {
        sku: sku.as_bytes().to_vec(),
        qty: 1,
        user: user.into(),
        order_id: order_id.into(),
        first_attempt_ms: ledger::node::now_ms(),
    }
}
