//! A simulated cluster: `nodes` madsim nodes on 10.0.0.x, each running the real
//! [`Node::start`] with the options struct the `ledger` binary uses and the real gRPC server
//! over madsim-tonic, on an in-memory disk the harness owns (so it survives a kill, minus what
//! was not yet synced). A node's confirmed orders go to one shared [`RecordingSink`] standing
//! in for PostgreSQL.
//!
//! The harness also watches every live replica for an invariant halt while the run goes on.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use ledger::config::ClusterConfig;
use ledger::node::Node;
use ledger::node::NodeOptions;
use ledger::node::storage::MemoryDisk;
use ledger::node::storage::Storage;
use ledger::shipping::sink::RecordingSink;
use ledger::types::NodeId;
use ledger::types::ShardId;
use madsim::net::NetSim;
use madsim::runtime::Handle;
use madsim::runtime::NodeHandle;

use crate::check::replicas::ReplicaState;

/// Postgres shards the recording sink pretends to have.
pub const SINK_SHARDS: usize = 2;
const PORT: u16 = 7100;

/// The shape of a simulated cluster.
#[derive(Debug, Clone)]
pub struct ClusterShape {
    pub nodes: usize,
    pub shards: usize,
    /// Replicas per shard (3, or 5 on a 5-node cluster).
    pub replicas: usize,
    /// Budgets and rate limits small enough for the buyers to overload (`None`: the defaults,
    /// which they never reach).
    pub admission: Option<TightAdmission>,
    /// Whether the placement scheduler balances leaderships and replicas (on unless `--no-placement`).
    pub placement: bool,
}

/// An `[admission]` section the buyers overload: shard budgets of a few operations (a
/// coalesced batch alone may fill one), and rate limits a buyer or client passes often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TightAdmission {
    pub shard_ops_inflight_max: u64,
    pub buyer_ops_per_s: u64,
    pub buyer_burst_ops: u64,
    pub client_ops_per_s: u64,
    pub client_burst_ops: u64,
}

impl TightAdmission {
    /// Drawn from `rng`.
    pub fn draw(rng: &mut impl rand::Rng) -> TightAdmission {
        TightAdmission {
            shard_ops_inflight_max: rng.gen_range(2..=6),
            buyer_ops_per_s: rng.gen_range(2..=6),
            buyer_burst_ops: rng.gen_range(1..=3),
            client_ops_per_s: rng.gen_range(5..=20),
            client_burst_ops: rng.gen_range(2..=8),
        }
    }

    fn toml(&self) -> String {
        format!(
            "[admission]\nshard_ops_inflight_max = {}\nnode_ops_inflight_max = {}\nstandard_share_percent = 80\n\
             background_share_percent = 50\nbuyer_ops_per_s = {}\nbuyer_burst_ops = {}\nclient_ops_per_s = {}\n\
             client_burst_ops = {}\n\n",
            self.shard_ops_inflight_max,
            self.shard_ops_inflight_max * 2,
            self.buyer_ops_per_s,
            self.buyer_burst_ops,
            self.client_ops_per_s,
            self.client_burst_ops
        )
    }
}

impl ClusterShape {
    /// The first SKU of every shard's range after the first: shard `i` holds SKUs starting with
    /// letters from `SHARD_LETTERS[i]` on.
    pub fn boundaries(&self) -> Vec<char> {
        (1..self.shards)
            .map(|i| (b'a' + (26 * i / self.shards) as u8) as char)
            .collect()
    }

    /// The cluster.toml a real deployment of this shape would use, on simulated addresses.
    pub fn config_toml(&self) -> String {
        // The simulator has no TLS (madsim-tonic); its clusters say so explicitly.
        let mut toml = String::from("[cluster]\nname = \"sim\"\n\n[security]\ninsecure = true\n\n");
        for id in 1..=self.nodes {
            toml += &format!(
                "[[nodes]]\nid = {id}\naddr = \"{}\"\ndata_dir = \"/sim/node{id}\"\n\n",
                node_addr(id as NodeId)
            );
        }
        let bounds = self.boundaries();
        for shard in 0..self.shards {
            let start = if shard == 0 {
                String::new()
            } else {
                bounds[shard - 1].to_string()
            };
            let end = bounds.get(shard).map(|c| c.to_string()).unwrap_or_default();
            let replicas: Vec<String> = (0..self.replicas)
                .map(|r| ((shard + r) % self.nodes + 1).to_string())
                .collect();
            toml += &format!(
                "[[shards]]\nid = {}\nstart = \"{start}\"\nend = \"{end}\"\nreplicas = [{}]\n\n",
                shard + 1,
                replicas.join(", ")
            );
        }
        // Tighter than the defaults so a run sees many elections, snapshots and expiries.
        toml += &format!(
            "[raft]\nelection_timeout_ms_min = 300\nelection_timeout_ms_max = 600\n\
                 heartbeat_interval_ms = 50\nrpc_timeout_ms = 500\nsnapshot_ops_since_last = 300\n\n\
                 [server]\nrequest_timeout_ms = 2000\n\n[ledger]\nexpire_interval_ms = 100\n\
                 idempotency_window_ms = {SIM_WINDOW_MS}\nclock_skew_margin_ms = {SIM_SKEW_MARGIN_MS}\n\n\
                 [shipping]\npoll_interval_ms = 50\nmark_interval_ms = 100\ntakeover_after_ms = 1000\n\
                 retry_backoff_ms_min = 50\nretry_backoff_ms_max = 500\n\n\
                 [placement]\nbalance_leaders = {placement}\nbalance_replicas = {placement}\n\
                 split_hot_ranges = {placement}\nhot_range_ops_per_s = {SIM_HOT_RANGE_OPS_PER_S}\n\n",
            placement = self.placement,
        );
        if let Some(admission) = &self.admission {
            toml += &admission.toml();
        }
        toml
    }
}

/// The idempotency window of a simulated cluster: short, so that orders from the first part of
/// the safety phase are pruned by the end of a run while later ones must still be kept (the
/// lost-writes checker tells the two apart), and retries that take long get `REQUEST_TOO_OLD`.
pub const SIM_WINDOW_MS: u64 = 8_000;

/// The hot-range threshold of the simulated clusters: low enough that a placement round (every
/// 5 s) after the load began splits the busiest multi-SKU shard, as a real cluster would split
/// a range over `placement.hot_range_ops_per_s`.
pub const SIM_HOT_RANGE_OPS_PER_S: u64 = 10;

/// Larger than the largest clock skew the faults inject (2 s), as an operator would set it.
pub const SIM_SKEW_MARGIN_MS: u64 = 2_500;

pub fn node_ip(id: NodeId) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8))
}

pub fn node_addr(id: NodeId) -> String {
    format!("{}:{PORT}", node_ip(id))
}

struct SimNode {
    handle: NodeHandle,
    disk: Arc<MemoryDisk>,
    up: bool,
}

/// What the harness saw while the run went on.
#[derive(Default)]
struct Observed {
    /// The running `Node` of every live simulated node, registered by the node itself.
    live: BTreeMap<NodeId, Arc<Node>>,
    /// Invariant halts seen on any replica.
    halts: Vec<String>,
    /// Nodes that failed to (re)start, with the error.
    start_failures: Vec<String>,
}

/// A running simulated cluster.
pub struct SimCluster {
    handle: Handle,
    pub shape: ClusterShape,
    pub config: ClusterConfig,
    nodes: BTreeMap<NodeId, SimNode>,
    pub sink: Arc<RecordingSink>,
    observed: Arc<Mutex<Observed>>,
}

fn lock(observed: &Mutex<Observed>) -> std::sync::MutexGuard<'_, Observed> {
    observed.lock().unwrap_or_else(|p| p.into_inner())
}

impl SimCluster {
    /// Creates and starts every node.
    pub fn start(shape: ClusterShape) -> Result<SimCluster, String> {
        let config = ClusterConfig::parse(&shape.config_toml(), "simulated cluster.toml").map_err(|e| e.to_string())?;
        let handle = Handle::current();
        let sink = Arc::new(RecordingSink::new(SINK_SHARDS));
        let observed = Arc::new(Mutex::new(Observed::default()));
        let mut nodes = BTreeMap::new();
        for node in &config.nodes {
            let id = node.id;
            let disk = Arc::new(MemoryDisk::default());
            let (init_disk, init_config, init_sink, init_observed) =
                (disk.clone(), config.clone(), sink.clone(), observed.clone());
            let node_handle = handle
                .create_node()
                .name(format!("node{id}"))
                .ip(node_ip(id))
                .init(move || {
                    run_node(
                        id,
                        init_config.clone(),
                        init_disk.clone(),
                        init_sink.clone(),
                        init_observed.clone(),
                    )
                })
                .build();
            nodes.insert(
                id,
                SimNode {
                    handle: node_handle,
                    disk,
                    up: true,
                },
            );
        }
        let cluster = SimCluster {
            handle,
            shape,
            config,
            nodes,
            sink,
            observed,
        };
        tokio::spawn(watch_for_halts(cluster.observed.clone()));
        Ok(cluster)
    }

    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    pub fn is_up(&self, id: NodeId) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.up)
    }

    pub fn sim_id(&self, id: NodeId) -> Option<madsim::task::NodeId> {
        self.nodes.get(&id).map(|n| n.handle.id())
    }

    /// Power loss: the node's tasks die and its disk loses every unsynced byte.
    pub fn kill(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        if !node.up {
            return;
        }
        collect_halts(&mut lock(&self.observed));
        self.handle.kill(node.handle.id());
        node.disk.wal.crash();
        node.up = false;
        lock(&self.observed).live.remove(&id);
    }

    /// Boots a killed node from what its disk kept.
    pub fn restart(&mut self, id: NodeId) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        if node.up {
            return;
        }
        self.handle.restart(node.handle.id());
        // A restart gives the node a new task context: the old handle would spawn into the
        // killed one, where a task is dropped unpolled (every reshaping asked of a restarted
        // meta leader was, silently, before this).
        if let Some(fresh) = self.handle.get_node(node.handle.id()) {
            node.handle = fresh;
        }
        node.up = true;
    }

    /// Makes the node's disk take `latency` per sync from now on.
    pub fn set_disk_latency(&self, id: NodeId, latency: Duration) {
        if let Some(node) = self.nodes.get(&id) {
            node.disk.wal.set_sync_latency(latency);
        }
    }

    /// The node that leads `shard` (0: the meta group), as seen by any live replica.
    pub fn leader_of(&self, shard: ShardId) -> Option<NodeId> {
        let observed = lock(&self.observed);
        observed.live.values().find_map(|node| {
            node.replica(shard)
                .filter(|replica| replica.raft.is_leader())
                .map(|_| node.id)
        })
    }

    /// Runs `task` on simulated node `id` (its network is that node's), if it is up.
    pub fn spawn_on<F>(&self, id: NodeId, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Some(node) = self.nodes.get(&id).filter(|node| node.up) {
            node.handle.spawn(task);
        }
    }

    pub fn live_nodes(&self) -> BTreeMap<NodeId, Arc<Node>> {
        lock(&self.observed).live.clone()
    }

    pub fn halts(&self) -> Vec<String> {
        let mut observed = lock(&self.observed);
        collect_halts(&mut observed);
        observed.halts.clone()
    }

    pub fn start_failures(&self) -> Vec<String> {
        lock(&self.observed).start_failures.clone()
    }

    /// Clears every partition, link clog and network degradation.
    pub fn heal_network(&self) {
        let net = NetSim::current();
        for node in self.nodes.values() {
            net.unclog_node(node.handle.id());
        }
        for a in self.nodes.values() {
            for b in self.nodes.values() {
                net.unclog_link(a.handle.id(), b.handle.id());
            }
        }
        net.update_config(|config| {
            config.packet_loss_rate = 0.0;
            config.send_latency = Duration::from_millis(1)..Duration::from_millis(5);
        });
    }

    /// Every replica's final state, by shard.
    pub fn replica_states(&self) -> BTreeMap<ShardId, Vec<ReplicaState>> {
        let mut shards: BTreeMap<ShardId, Vec<ReplicaState>> = BTreeMap::new();
        for (id, node) in self.live_nodes() {
            for replica in node.shards() {
                let shard_id = &replica.config.id;
                let (applied_index, ledger) = replica.view.read(|image| {
                    (
                        image.meta.applied.map_or(0, |log_id| log_id.index),
                        image.ledger.clone(),
                    )
                });
                shards.entry(*shard_id).or_default().push(ReplicaState {
                    node: id,
                    applied_index,
                    ledger,
                });
            }
        }
        shards
    }
}

/// One simulated node's life: start the real node, ship to the sink, serve until killed.
async fn run_node(
    id: NodeId,
    config: ClusterConfig,
    disk: Arc<MemoryDisk>,
    sink: Arc<RecordingSink>,
    observed: Arc<Mutex<Observed>>,
) {
    let options = NodeOptions {
        node_id: id,
        config,
        storage: Storage::Memory(disk),
    };
    let node = match Node::start(options).await {
        Ok(node) => node,
        Err(error) => {
            lock(&observed).start_failures.push(format!("node {id}: {error}"));
            return;
        }
    };
    ledger::shipping::shipper::spawn(&node, move |_| sink.clone());
    lock(&observed).live.insert(id, node.clone());
    let addr: SocketAddr = match node_addr(id).parse() {
        Ok(addr) => addr,
        Err(error) => {
            lock(&observed)
                .start_failures
                .push(format!("node {id}: address: {error}"));
            return;
        }
    };
    if let Err(error) = ledger::server::serve(node, addr, std::future::pending()).await {
        lock(&observed)
            .start_failures
            .push(format!("node {id}: serve: {error}"));
    }
}

/// Polls every live replica for an invariant halt (the state machine checks after every apply).
async fn watch_for_halts(observed: Arc<Mutex<Observed>>) {
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        collect_halts(&mut lock(&observed));
    }
}

fn collect_halts(observed: &mut Observed) {
    let mut found = Vec::new();
    for (id, node) in &observed.live {
        for replica in node.shards() {
            let shard_id = replica.config.id;
            if let Some(violation) = replica.view.halted() {
                found.push(format!("node {id} shard {shard_id}: {violation}"));
            }
        }
    }
    for halt in found {
        if !observed.halts.contains(&halt) {
            observed.halts.push(halt);
        }
    }
}
