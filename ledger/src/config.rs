//! `cluster.toml`: the nodes, their addresses and data dirs, the initial shards, and every
//! bound the node enforces. Parsed into these structs (unknown fields are errors), every field
//! that can have a default has one that runs on one machine, and [`ClusterConfig::validate`]
//! names what is wrong: every numeric setting has a range (`numeric_settings`), data dirs are
//! not empty and PostgreSQL URLs parse, so a bad value stops the node at start, never later.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::path::Path;
use std::path::PathBuf;

use serde::Deserialize;
use serde::Serialize;

use crate::types::NodeId;
use crate::types::ShardId;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("no [[nodes]] are configured")]
    NoNodes,
    #[error("no [[shards]] are configured")]
    NoShards,
    #[error("node id {0} appears more than once")]
    DuplicateNodeId(NodeId),
    #[error("node id 0 is reserved (it means \"no node\" on the wire)")]
    ZeroNodeId,
    #[error("address {0} is used by more than one node")]
    DuplicateAddress(String),
    #[error("address {addr:?} of node {node} is not host:port")]
    InvalidAddress { node: NodeId, addr: String },
    #[error("node {node} admin_addr: {reason}")]
    InvalidAdminAddress { node: NodeId, reason: String },
    #[error("shard id 0 is the meta group's (it holds the shard map); number data shards from 1")]
    MetaShardId,
    #[error("shard id {0} appears more than once")]
    DuplicateShardId(ShardId),
    #[error("shard {shard} names replica {node}, which is not a configured node")]
    UnknownReplica { shard: ShardId, node: NodeId },
    #[error("shard {shard} must have 1, 3 or 5 distinct replicas, has {count}")]
    ReplicaCount { shard: ShardId, count: usize },
    #[error("shard {shard} has an empty range [{start:?}, {end:?})")]
    EmptyRange { shard: ShardId, start: String, end: String },
    #[error("shards overlap or leave a gap at {at:?}: every SKU must belong to exactly one shard")]
    RangesDoNotTile { at: String },
    #[error("{field} is invalid: {reason}")]
    Bound { field: &'static str, reason: String },
    #[error("[security]: {0}")]
    Security(String),
    #[error("{field} = {value} is out of range {min}..={max}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
    },
    #[error("node {node} has an empty data_dir")]
    EmptyDataDir { node: NodeId },
    #[error("postgres[{position}].url is not a PostgreSQL URL tokio-postgres can use: {reason}")]
    InvalidPostgresUrl { position: usize, reason: String },
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    #[serde(default)]
    pub cluster: ClusterSection,
    pub nodes: Vec<NodeConfig>,
    pub shards: Vec<ShardConfig>,
    #[serde(default)]
    pub raft: RaftSection,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub ledger: LedgerSection,
    /// How much work a node takes on before it sheds, priority shares, and rate limits
    /// (crate::admission).
    #[serde(default)]
    pub admission: AdmissionSection,
    /// PostgreSQL shards that confirmed orders are shipped to; empty = no shipping. The order
    /// matters: an order goes to `postgres[fnv1a64(order_id) % len]` (docs/shipping.md).
    #[serde(default)]
    pub postgres: Vec<PostgresConfig>,
    #[serde(default)]
    pub shipping: ShippingSection,
    /// What the meta leader balances across nodes on its own (crate::meta::scheduler).
    #[serde(default)]
    pub placement: PlacementSection,
    /// TLS material and callers' credentials (crate::security). Required: a cluster without
    /// TLS must say `insecure = true`.
    #[serde(default)]
    pub security: SecuritySection,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    pub name: String,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            name: "flashledger".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    pub id: NodeId,
    /// host:port for clients and peers (gRPC).
    pub addr: String,
    /// host:port of the admin HTTP endpoint (/metrics, /healthz, /readyz; plain HTTP without
    /// authentication: bind it to a private interface). Default: `addr`'s host with its port
    /// + [`ADMIN_PORT_OFFSET`] (7101 -> 8101). See [`NodeConfig::admin_addr`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_addr: Option<String>,
    /// Where this node keeps its WAL and applied state; relative paths are relative to the
    /// directory the node runs in.
    pub data_dir: PathBuf,
    /// This node's certificate (PEM, signed by `security.ca_file`, naming the node with the
    /// URI `flashledger://node/<id>`) and its private key; required unless `security.insecure`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

/// What a node's default admin port adds to its gRPC port.
pub const ADMIN_PORT_OFFSET: u16 = 1000;

impl NodeConfig {
    /// The admin endpoint's address: `admin_addr`, else `addr`'s host with the port
    /// + [`ADMIN_PORT_OFFSET`].
    pub fn admin_addr(&self) -> Result<String, ConfigError> {
        if let Some(admin_addr) = &self.admin_addr {
            return match split_host_port(admin_addr) {
                Some(_) => Ok(admin_addr.clone()),
                None => Err(ConfigError::InvalidAdminAddress {
                    node: self.id,
                    reason: format!("admin_addr {admin_addr:?} is not host:port"),
                }),
            };
        }
        let invalid = |reason: String| ConfigError::InvalidAdminAddress { node: self.id, reason };
        let (host, port) =
            split_host_port(&self.addr).ok_or_else(|| invalid(format!("addr {:?} is not host:port", self.addr)))?;
        let admin_port = port.checked_add(ADMIN_PORT_OFFSET).ok_or_else(|| {
            invalid(format!(
                "the default admin port (addr's port {port} + {ADMIN_PORT_OFFSET}) is past 65535; set admin_addr"
            ))
        })?;
        Ok(format!("{host}:{admin_port}"))
    }
}

/// `host:port` split, when the host is not empty and the port is a port number.
fn split_host_port(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?;
    (!host.is_empty()).then_some((host, port))
}

/// A shard: the SKUs in `[start, end)` (UTF-8; an empty `end` is unbounded), replicated on
/// `replicas`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardConfig {
    pub id: ShardId,
    #[serde(default)]
    pub start: String,
    #[serde(default)]
    pub end: String,
    pub replicas: Vec<NodeId>,
}

impl ShardConfig {
    pub fn contains(&self, sku: &[u8]) -> bool {
        sku >= self.start.as_bytes() && (self.end.is_empty() || sku < self.end.as_bytes())
    }
}

/// The largest snapshot chunk: well under the largest Raft message.
pub const SNAPSHOT_CHUNK_BYTES_MAX: u64 = 64 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    /// A follower that has heard no leader for the leader's lease (openraft sets it to
    /// `election_timeout_ms_max`) plus a random timeout in `[min, max)` asks for votes (after a
    /// pre-vote round), so a dead leader is replaced `max + [min, max)` after its last
    /// heartbeat: 450–600 ms at the defaults (150, 300), 1.5–2 s at the old (500, 1000), which
    /// made failover take 2.3 s (docs/benchmarks.md, "Failover"). Lower still would start
    /// elections over a heartbeat delayed by a loaded 2-core machine: 150 ms is three
    /// heartbeats, and the hot benchmark here saw no term change with it.
    pub election_timeout_ms_min: u64,
    pub election_timeout_ms_max: u64,
    /// How often a leader tells followers it is alive (and renews its lease with them). 50 ms:
    /// a third of the shortest election timeout, so one lost or late heartbeat never starts
    /// an election; each costs one small RPC per follower per shard.
    pub heartbeat_interval_ms: u64,
    /// Deadline of every Raft RPC between nodes.
    pub rpc_timeout_ms: u64,
    /// Build a snapshot (and let the log be purged) once this many operations were applied
    /// since the last one: an entry of N batched operations counts N, any other entry 1. Counted
    /// in operations, not entries, because a snapshot's cost and the log's memory grow with
    /// operations: one-operation entries would snapshot 64x as often as coalesced ones.
    pub snapshot_ops_since_last: u64,
    /// ... and once they reach this percent of the records (orders, holdings, unshipped order
    /// events) the last snapshot held. A snapshot is a full image, so a fixed interval would
    /// make its cost per operation grow with the state (a 5-million-order shard rewrote
    /// gigabytes every 200 000 operations); growing the interval with the state keeps it
    /// constant, as Redis' `auto-aof-rewrite-percentage` does. The price is a log (on disk and
    /// in memory, ~190 bytes an operation) and a replay on restart of up to this percent of the
    /// state: 10 (default) keeps the log under a fifth of the state's memory at 5 million
    /// orders. 0: only `snapshot_ops_since_last` counts.
    pub snapshot_growth_percent: u64,
    /// A snapshot sent to a lagging replica travels in messages of at most this many bytes,
    /// each with its own deadline (a 5-million-order snapshot is ~300 MB).
    pub snapshot_chunk_bytes: u64,
}

impl Default for RaftSection {
    fn default() -> Self {
        RaftSection {
            election_timeout_ms_min: 150,
            election_timeout_ms_max: 300,
            heartbeat_interval_ms: 50,
            rpc_timeout_ms: 1000,
            snapshot_ops_since_last: 200_000,
            snapshot_growth_percent: 10,
            snapshot_chunk_bytes: 4 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Concurrent requests per client connection.
    pub inflight_requests_max: usize,
    /// Largest client request or reply.
    pub message_bytes_max: usize,
    /// Operations one Batch RPC (one log entry) may carry.
    pub batch_ops_max: usize,
    /// How long a write or linearizable read may wait for consensus.
    pub request_timeout_ms: u64,
    /// Open connections from one IP address; the next is closed at once. Clients share one
    /// connection per node (the client library multiplexes), so this bounds hostile clients,
    /// not busy ones; the default leaves room for a load generator with a connection per caller.
    pub connections_per_address_max: usize,
    /// A connection that sends nothing for this long is closed. The node pings every HTTP/2
    /// connection at a third of it, so a quiet but live client answers and stays.
    pub connection_idle_timeout_ms: u64,
    /// Watch streams open on this node, and on one connection.
    pub watch_streams_max: usize,
    pub watch_streams_per_connection_max: usize,
    /// The largest header list (metadata) of a request.
    pub header_bytes_max: u64,
    /// HTTP/2 streams a client reset before the node took them up, on one connection at once;
    /// one more and the connection is closed (GOAWAY `too_many_resets`). The defence against
    /// rapid-reset floods, which open and cancel streams faster than the node accepts them. A
    /// healthy client cancels only calls it has open (at most `inflight_requests_max`), but a
    /// node that was paused, or too busy to read, finds all its cancellations at once: h2's
    /// default of 20 closed healthy clients' connections when their deadlines ran out during a
    /// leader pause. The default leaves room for every call a connection may have open.
    pub pending_reset_streams_max: usize,
    /// Streams the node itself had to reset because the client broke HTTP/2 (more streams than
    /// the node allows, a flow-control violation), over a connection's life; one more and it is
    /// closed (GOAWAY `too_many_internal_resets`). A client that follows the protocol never
    /// causes one; this stops floods of provoked resets ("MadeYouReset"). tonic leaves the limit
    /// off unless told; 1024 is hyper's default.
    pub local_reset_streams_max: usize,
    /// `/readyz` answers 503 while a hosted shard's applied index trails the committed index
    /// this replica knows by more than this many entries (it is still catching up).
    pub ready_apply_lag_entries_max: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            inflight_requests_max: 4096,
            message_bytes_max: 4 * 1024 * 1024,
            batch_ops_max: 1024,
            request_timeout_ms: 5000,
            connections_per_address_max: 1024,
            connection_idle_timeout_ms: 60_000,
            watch_streams_max: 1024,
            watch_streams_per_connection_max: 16,
            header_bytes_max: 16 * 1024,
            pending_reset_streams_max: 4096,
            local_reset_streams_max: 1024,
            ready_apply_lag_entries_max: 1000,
        }
    }
}

/// Admission (crate::admission): a node's budget of operations in flight, the shares of it each
/// priority class may fill, and rate limits per client and per buyer. A request past the budget
/// is answered RESOURCE_EXHAUSTED at once; one past a rate limit RATE_LIMITED; neither is
/// proposed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionSection {
    /// Operations in flight on this node: from admission until answered, a Batch counting each
    /// of its operations and a read one. What it bounds is the queue in front of the shards, so
    /// the time an admitted request waits: about this many operations over the node's throughput.
    pub node_ops_inflight_max: u64,
    /// ... and on each shard it hosts, so that one hot shard cannot take the whole node's budget.
    pub shard_ops_inflight_max: u64,
    /// The share of each budget STANDARD requests may fill; PREMIUM ones may fill all of it, so
    /// the rest is kept for them.
    pub standard_share_percent: u64,
    /// The share BACKGROUND requests (product-page reads) may fill: they are shed first.
    pub background_share_percent: u64,
    /// Reserves and purchases per second one client may make (identified by `x-client-id`,
    /// else its authenticated name, else its IP address), and its burst; 0 = no limit. A SKU's
    /// sale rules may set their own.
    pub client_ops_per_s: u64,
    pub client_burst_ops: u64,
    /// Reserves and purchases per second one buyer (`user`) may make, and its burst; 0 = no limit.
    pub buyer_ops_per_s: u64,
    pub buyer_burst_ops: u64,
    /// Clients and buyers whose token buckets are kept at once (about 100 bytes each). Idle ones
    /// are evicted every second; while it is full, new ones share one bucket.
    pub rate_limit_keys_max: u64,
}

impl Default for AdmissionSection {
    fn default() -> Self {
        AdmissionSection {
            node_ops_inflight_max: 4096,
            shard_ops_inflight_max: 2048,
            standard_share_percent: 90,
            background_share_percent: 60,
            client_ops_per_s: 0,
            client_burst_ops: 0,
            buyer_ops_per_s: 0,
            buyer_burst_ops: 0,
            rate_limit_keys_max: 100_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LedgerSection {
    /// How often each shard leader checks for due reservations.
    pub expire_interval_ms: u64,
    /// How long an order id answers its first answer (a retry within it is safe). An order
    /// leaves the applied state once it is older than this and (with PostgreSQL configured)
    /// shipped; a write whose first attempt is older is answered `REQUEST_TOO_OLD`. Carried to
    /// every replica through the log (the leader's value wins). Default 24 h.
    pub idempotency_window_ms: u64,
    /// How far a client's clock may be off the leaders': the window is shortened by it for
    /// refusals, and a first attempt further ahead of the leader's clock is refused. Default 5 min.
    pub clock_skew_margin_ms: u64,
}

impl Default for LedgerSection {
    fn default() -> Self {
        LedgerSection {
            expire_interval_ms: 1000,
            idempotency_window_ms: crate::state_machine::limits::IDEMPOTENCY_WINDOW_MS_DEFAULT,
            clock_skew_margin_ms: crate::state_machine::limits::CLOCK_SKEW_MARGIN_MS_DEFAULT,
        }
    }
}

/// Bounds of the order shipper (crate::shipping). It is off the write path: these only decide
/// how fast the backlog drains and how soon another replica takes over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShippingSection {
    /// Order events read from the applied state and written per round (all Postgres shards).
    pub batch_events_max: usize,
    /// Pause between rounds when there is nothing to ship, or this node is not the shipper.
    pub poll_interval_ms: u64,
    /// First pause after a failed round; doubles per consecutive failure up to the max. Each
    /// pause is jittered into the upper half of its step (`flashledger_client::Backoff`).
    pub retry_backoff_ms_min: u64,
    pub retry_backoff_ms_max: u64,
    /// A replica ranked `r` in the shipping order takes over once the replicated mark has not
    /// been advanced by a better-ranked replica for `r * takeover_after_ms` while events wait.
    pub takeover_after_ms: u64,
    /// Deadline of one Postgres call (connect, watermark read, batch transaction).
    pub statement_timeout_ms: u64,
    /// Least time between two proposals of the replicated "shipped" mark (each is a log entry).
    pub mark_interval_ms: u64,
}

impl Default for ShippingSection {
    fn default() -> Self {
        ShippingSection {
            batch_events_max: 2000,
            poll_interval_ms: 50,
            retry_backoff_ms_min: 100,
            retry_backoff_ms_max: 5000,
            takeover_after_ms: 3000,
            statement_timeout_ms: 5000,
            mark_interval_ms: 200,
        }
    }
}

/// The share of a hot shard's load the lighter half of a split must carry: a shard that one SKU
/// carries nearly alone is not split (it would only move that SKU).
const HOT_RANGE_LIGHTER_HALF_MIN: f64 = 0.2;

/// The placement scheduler on the meta leader (crate::meta::scheduler, docs/architecture.md,
/// "Placement"): it moves a leadership or a replica only when one node carries 2 more than
/// another, one change per round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementSection {
    /// Hand leaderships from a node that leads 2 more shards than a voter of one of them.
    pub balance_leaders: bool,
    /// Move a replica from the active node holding the most to the one holding the fewest
    /// when they differ by 2 or more.
    pub balance_replicas: bool,
    /// Time between two rounds; a round asks every shard's leader it does not host, and
    /// makes at most one change.
    pub interval_ms: u64,
    /// Split a shard applying at least `hot_range_ops_per_s` whose load several SKUs share,
    /// between them, and lead the new half from another node (crate::meta::hot_ranges).
    pub split_hot_ranges: bool,
    /// Operations per second (every replica applies them; measured over a round) from which a
    /// shard counts as hot.
    pub hot_range_ops_per_s: u64,
}

impl Default for PlacementSection {
    fn default() -> Self {
        PlacementSection {
            balance_leaders: true,
            balance_replicas: true,
            interval_ms: 5000,
            // Off by default: measured on one machine, a split onto the same nodes halved a hot
            // pair's throughput (docs/benchmarks.md, "Two hot SKUs"); it pays where the halves
            // get their own machines.
            split_hot_ranges: false,
            hot_range_ops_per_s: 5000,
        }
    }
}

impl PlacementSection {
    /// When hot ranges are split, if they are.
    pub fn hot_range_policy(&self) -> Option<crate::meta::hot_ranges::HotRangePolicy> {
        self.split_hot_ranges
            .then_some(crate::meta::hot_ranges::HotRangePolicy {
                ops_per_s_min: self.hot_range_ops_per_s as f64,
                lighter_half_min: HOT_RANGE_LIGHTER_HALF_MIN,
            })
    }

    /// The scheduler's policy these settings ask for.
    pub fn policy(&self) -> crate::meta::scheduler::PlacementPolicy {
        crate::meta::scheduler::PlacementPolicy {
            balance_leaders: self.balance_leaders,
            balance_replicas: self.balance_replicas,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    pub url: String,
}

/// How nodes and callers prove who they are (docs/security.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySection {
    /// Plaintext gRPC and no authentication: anyone who reaches a port may do anything,
    /// including speak Raft. Only when said explicitly; the node logs a warning at start.
    pub insecure: bool,
    /// The cluster's certificate authority (PEM): it signs every node's certificate and every
    /// client certificate the nodes accept.
    pub ca_file: Option<PathBuf>,
    /// Bearer tokens callers may present, stored as SHA-256 digests with a role each
    /// (docs/security.md); re-read when the file changes, so rotating a token needs no restart.
    pub tokens_file: Option<PathBuf>,
    /// A connection that has not finished its TLS handshake by then is closed.
    pub tls_handshake_timeout_ms: u64,
}

impl Default for SecuritySection {
    fn default() -> Self {
        SecuritySection {
            insecure: false,
            ca_file: None,
            tokens_file: None,
            tls_handshake_timeout_ms: 5000,
        }
    }
}

impl ClusterConfig {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let config: ClusterConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_nodes()?;
        self.validate_shards()?;
        self.validate_ranges()?;
        self.validate_bounds()?;
        self.validate_postgres()?;
        self.validate_security()
    }

    /// TLS unless `insecure = true` is said, with every file named; the files themselves are
    /// read (and their errors named) when the node starts.
    fn validate_security(&self) -> Result<(), ConfigError> {
        let security = &self.security;
        if security.insecure {
            return Ok(());
        }
        let missing = |what: String| {
            Err(ConfigError::Security(format!(
                "{what} is missing: TLS is required (give security.ca_file and every node's cert_file \
                 and key_file, e.g. from scripts/certs.sh), or set [security] insecure = true for \
                 plaintext without authentication"
            )))
        };
        if security.ca_file.is_none() {
            return missing("security.ca_file".into());
        }
        for node in &self.nodes {
            if node.cert_file.is_none() {
                return missing(format!("node {} cert_file", node.id));
            }
            if node.key_file.is_none() {
                return missing(format!("node {} key_file", node.id));
            }
        }
        Ok(())
    }

    fn validate_nodes(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(ConfigError::NoNodes);
        }
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for node in &self.nodes {
            if node.id == 0 {
                return Err(ConfigError::ZeroNodeId);
            }
            if !ids.insert(node.id) {
                return Err(ConfigError::DuplicateNodeId(node.id));
            }
            if split_host_port(&node.addr).is_none() {
                return Err(ConfigError::InvalidAddress {
                    node: node.id,
                    addr: node.addr.clone(),
                });
            }
            if !addrs.insert(node.addr.clone()) {
                return Err(ConfigError::DuplicateAddress(node.addr.clone()));
            }
            // An empty path would put the WAL and snapshots in whatever directory the node
            // happens to run in.
            if node.data_dir.as_os_str().is_empty() {
                return Err(ConfigError::EmptyDataDir { node: node.id });
            }
        }
        // Admin addresses after every gRPC address is known: one may collide with any of them.
        let mut admin_addrs = BTreeSet::new();
        for node in &self.nodes {
            let admin_addr = node.admin_addr()?;
            if addrs.contains(&admin_addr) || !admin_addrs.insert(admin_addr.clone()) {
                return Err(ConfigError::InvalidAdminAddress {
                    node: node.id,
                    reason: format!("admin address {admin_addr} is also another gRPC or admin address"),
                });
            }
        }
        Ok(())
    }

    fn validate_shards(&self) -> Result<(), ConfigError> {
        if self.shards.is_empty() {
            return Err(ConfigError::NoShards);
        }
        let mut ids = BTreeSet::new();
        for shard in &self.shards {
            if shard.id == crate::meta::map::META_SHARD {
                return Err(ConfigError::MetaShardId);
            }
            if !ids.insert(shard.id) {
                return Err(ConfigError::DuplicateShardId(shard.id));
            }
            let replicas: BTreeSet<NodeId> = shard.replicas.iter().copied().collect();
            if replicas.len() != shard.replicas.len() || ![1, 3, 5].contains(&replicas.len()) {
                return Err(ConfigError::ReplicaCount {
                    shard: shard.id,
                    count: replicas.len(),
                });
            }
            if let Some(node) = replicas.iter().find(|id| self.node(**id).is_none()) {
                return Err(ConfigError::UnknownReplica {
                    shard: shard.id,
                    node: *node,
                });
            }
            if !shard.end.is_empty() && shard.end <= shard.start {
                return Err(ConfigError::EmptyRange {
                    shard: shard.id,
                    start: shard.start.clone(),
                    end: shard.end.clone(),
                });
            }
        }
        // Sorted by start, the ranges must tile the key space: "" .. e1, e1 .. e2, ..., en .. "".
        let mut sorted: Vec<&ShardConfig> = self.shards.iter().collect();
        sorted.sort_by(|a, b| a.start.cmp(&b.start));
        let mut expected_start = String::new();
        for (position, shard) in sorted.iter().enumerate() {
            if shard.start != expected_start {
                return Err(ConfigError::RangesDoNotTile {
                    at: expected_start.min(shard.start.clone()),
                });
            }
            let last = position + 1 == sorted.len();
            if shard.end.is_empty() != last {
                return Err(ConfigError::RangesDoNotTile { at: shard.end.clone() });
            }
            expected_start = shard.end.clone();
        }
        Ok(())
    }

    /// Every numeric setting against its range ([`ClusterConfig::numeric_settings`]).
    fn validate_ranges(&self) -> Result<(), ConfigError> {
        for setting in self.numeric_settings() {
            if !setting.range.contains(&setting.value) {
                return Err(ConfigError::OutOfRange {
                    field: setting.field,
                    value: setting.value,
                    min: *setting.range.start(),
                    max: *setting.range.end(),
                });
            }
        }
        Ok(())
    }

    /// Every numeric setting with the range it must be in: wide enough for any deployment we
    /// know of, narrow enough that no value breaks where it is used (a stream count is a `u32`,
    /// a semaphore holds at most 2^61 permits, a deadline is added to an `Instant`). Node and
    /// shard ids are names, not amounts: any `u64` (but node id 0, see `validate_nodes`, and shard
    /// id 0, the meta group's).
    fn numeric_settings(&self) -> [NumericSetting; 41] {
        const KIB: u64 = 1024;
        const MIB: u64 = 1024 * KIB;
        const MINUTE_MS: u64 = 60_000;
        const HOUR_MS: u64 = 60 * MINUTE_MS;
        const DAY_MS: u64 = 24 * HOUR_MS;
        const RATE_OPS_MAX: u64 = crate::state_machine::limits::RATE_OPS_MAX;
        let (raft, server, ledger, shipping) = (&self.raft, &self.server, &self.ledger, &self.shipping);
        let admission = &self.admission;
        let setting = NumericSetting::new;
        let size = |value: usize| u64::try_from(value).unwrap_or(u64::MAX);
        [
            setting(
                "raft.election_timeout_ms_min",
                raft.election_timeout_ms_min,
                1..=MINUTE_MS,
            ),
            setting(
                "raft.election_timeout_ms_max",
                raft.election_timeout_ms_max,
                1..=MINUTE_MS,
            ),
            setting("raft.heartbeat_interval_ms", raft.heartbeat_interval_ms, 1..=10_000),
            setting("raft.rpc_timeout_ms", raft.rpc_timeout_ms, 1..=MINUTE_MS),
            // Up to 10^12: scripts/bench-ops.sh turns interval snapshots off with it.
            setting(
                "raft.snapshot_ops_since_last",
                raft.snapshot_ops_since_last,
                1..=1_000_000_000_000,
            ),
            setting("raft.snapshot_growth_percent", raft.snapshot_growth_percent, 0..=1000),
            // A Raft message carries one chunk.
            setting(
                "raft.snapshot_chunk_bytes",
                raft.snapshot_chunk_bytes,
                KIB..=SNAPSHOT_CHUNK_BYTES_MAX,
            ),
            // Also the HTTP/2 concurrent stream limit, a `u32`.
            setting(
                "server.inflight_requests_max",
                size(server.inflight_requests_max),
                1..=65_536,
            ),
            // At least room for any single reply (a shard map or status of many shards).
            setting(
                "server.message_bytes_max",
                size(server.message_bytes_max),
                16 * KIB..=64 * MIB,
            ),
            setting("server.batch_ops_max", size(server.batch_ops_max), 1..=65_536),
            setting(
                "server.ready_apply_lag_entries_max",
                server.ready_apply_lag_entries_max,
                0..=10_000_000,
            ),
            setting(
                "server.request_timeout_ms",
                server.request_timeout_ms,
                1..=10 * MINUTE_MS,
            ),
            setting(
                "server.connections_per_address_max",
                size(server.connections_per_address_max),
                1..=100_000,
            ),
            // At least 3 s: the keepalive ping goes out at a third of it.
            setting(
                "server.connection_idle_timeout_ms",
                server.connection_idle_timeout_ms,
                3_000..=HOUR_MS,
            ),
            setting("server.watch_streams_max", size(server.watch_streams_max), 1..=100_000),
            setting(
                "server.watch_streams_per_connection_max",
                size(server.watch_streams_per_connection_max),
                1..=10_000,
            ),
            setting("server.header_bytes_max", server.header_bytes_max, KIB..=MIB),
            // At least h2's default; at most what 16 connections' worth of open calls could be.
            setting(
                "server.pending_reset_streams_max",
                size(server.pending_reset_streams_max),
                20..=1_048_576,
            ),
            setting(
                "server.local_reset_streams_max",
                size(server.local_reset_streams_max),
                1..=1_048_576,
            ),
            setting("ledger.expire_interval_ms", ledger.expire_interval_ms, 1..=HOUR_MS),
            // Orders stay in memory for the window.
            setting(
                "ledger.idempotency_window_ms",
                ledger.idempotency_window_ms,
                1..=30 * DAY_MS,
            ),
            setting("ledger.clock_skew_margin_ms", ledger.clock_skew_margin_ms, 0..=HOUR_MS),
            setting(
                "shipping.batch_events_max",
                size(shipping.batch_events_max),
                1..=100_000,
            ),
            setting("shipping.poll_interval_ms", shipping.poll_interval_ms, 1..=MINUTE_MS),
            setting(
                "shipping.retry_backoff_ms_min",
                shipping.retry_backoff_ms_min,
                1..=MINUTE_MS,
            ),
            setting(
                "shipping.retry_backoff_ms_max",
                shipping.retry_backoff_ms_max,
                1..=10 * MINUTE_MS,
            ),
            setting(
                "shipping.takeover_after_ms",
                shipping.takeover_after_ms,
                1..=10 * MINUTE_MS,
            ),
            setting(
                "shipping.statement_timeout_ms",
                shipping.statement_timeout_ms,
                1..=10 * MINUTE_MS,
            ),
            setting("shipping.mark_interval_ms", shipping.mark_interval_ms, 1..=MINUTE_MS),
            // A budget is an atomic count; a million operations in flight is far past any node.
            setting(
                "admission.node_ops_inflight_max",
                admission.node_ops_inflight_max,
                1..=1_000_000,
            ),
            setting(
                "admission.shard_ops_inflight_max",
                admission.shard_ops_inflight_max,
                1..=1_000_000,
            ),
            setting(
                "admission.standard_share_percent",
                admission.standard_share_percent,
                1..=100,
            ),
            setting(
                "admission.background_share_percent",
                admission.background_share_percent,
                1..=100,
            ),
            // Token buckets count in u32 (governor); the same bound as a SKU's own limit.
            setting(
                "admission.client_ops_per_s",
                admission.client_ops_per_s,
                0..=RATE_OPS_MAX,
            ),
            setting(
                "admission.client_burst_ops",
                admission.client_burst_ops,
                0..=RATE_OPS_MAX,
            ),
            setting("admission.buyer_ops_per_s", admission.buyer_ops_per_s, 0..=RATE_OPS_MAX),
            setting("admission.buyer_burst_ops", admission.buyer_burst_ops, 0..=RATE_OPS_MAX),
            setting(
                "admission.rate_limit_keys_max",
                admission.rate_limit_keys_max,
                1..=10_000_000,
            ),
            // A round costs an RPC per shard the meta leader does not host: not faster than
            // 10 a second; at most an hour, beyond which balance is not being kept.
            setting("placement.interval_ms", self.placement.interval_ms, 100..=HOUR_MS),
            setting(
                "placement.hot_range_ops_per_s",
                self.placement.hot_range_ops_per_s,
                1..=RATE_OPS_MAX,
            ),
            setting(
                "security.tls_handshake_timeout_ms",
                self.security.tls_handshake_timeout_ms,
                1..=MINUTE_MS,
            ),
        ]
    }

    /// How settings must relate to each other (each is in its range already).
    fn validate_bounds(&self) -> Result<(), ConfigError> {
        let raft = &self.raft;
        if raft.election_timeout_ms_min <= raft.heartbeat_interval_ms {
            return Err(ConfigError::Bound {
                field: "raft.election_timeout_ms_min",
                reason: "must be greater than raft.heartbeat_interval_ms".into(),
            });
        }
        if self.shipping.retry_backoff_ms_max < self.shipping.retry_backoff_ms_min {
            return Err(ConfigError::Bound {
                field: "shipping.retry_backoff_ms_max",
                reason: "must be at least shipping.retry_backoff_ms_min".into(),
            });
        }
        if self.ledger.idempotency_window_ms <= self.ledger.clock_skew_margin_ms.saturating_mul(2) {
            return Err(ConfigError::Bound {
                field: "ledger.idempotency_window_ms",
                reason: "must be more than twice ledger.clock_skew_margin_ms".into(),
            });
        }
        let admission = &self.admission;
        if admission.shard_ops_inflight_max > admission.node_ops_inflight_max {
            return Err(ConfigError::Bound {
                field: "admission.shard_ops_inflight_max",
                reason: "must be at most admission.node_ops_inflight_max".into(),
            });
        }
        if admission.background_share_percent > admission.standard_share_percent {
            return Err(ConfigError::Bound {
                field: "admission.background_share_percent",
                reason: "must be at most admission.standard_share_percent (lower classes are shed first)".into(),
            });
        }
        for (rate, burst, rate_field, burst_field) in [
            (
                admission.client_ops_per_s,
                admission.client_burst_ops,
                "admission.client_ops_per_s",
                "admission.client_burst_ops",
            ),
            (
                admission.buyer_ops_per_s,
                admission.buyer_burst_ops,
                "admission.buyer_ops_per_s",
                "admission.buyer_burst_ops",
            ),
        ] {
            if rate == 0 && burst != 0 {
                return Err(ConfigError::Bound {
                    field: burst_field,
                    reason: format!("needs {rate_field}: a burst without a rate limits nothing"),
                });
            }
        }
        if raft.election_timeout_ms_max <= raft.election_timeout_ms_min {
            return Err(ConfigError::Bound {
                field: "raft.election_timeout_ms_max",
                reason: "must be greater than raft.election_timeout_ms_min".into(),
            });
        }
        Ok(())
    }

    /// Each `[[postgres]]` URL must parse as the shipper's client reads it and name a host, so
    /// a typo stops the node at start instead of leaving orders unshipped with a log line per
    /// retry. The simulator never connects to PostgreSQL (and links no client to parse with).
    fn validate_postgres(&self) -> Result<(), ConfigError> {
        for (position, postgres) in self.postgres.iter().enumerate() {
            if let Err(reason) = check_postgres_url(&postgres.url) {
                return Err(ConfigError::InvalidPostgresUrl { position, reason });
            }
        }
        Ok(())
    }

    pub fn node(&self, id: NodeId) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }

    pub fn shard_for_sku(&self, sku: &[u8]) -> Option<&ShardConfig> {
        self.shards.iter().find(|s| s.contains(sku))
    }

    pub fn shards_on_node(&self, id: NodeId) -> impl Iterator<Item = &ShardConfig> {
        self.shards.iter().filter(move |s| s.replicas.contains(&id))
    }

    /// The nodes that bootstrap the cluster: every node a `[[shards]]` entry names. They form
    /// the meta group (shard 0). A node listed only in `[[nodes]]` starts empty and is given
    /// replicas through the shard map (`ledger node add`, `ledger shard add-replica`).
    pub fn bootstrap_nodes(&self) -> Vec<NodeId> {
        let nodes: BTreeSet<NodeId> = self.shards.iter().flat_map(|s| s.replicas.iter().copied()).collect();
        nodes.into_iter().collect()
    }

    /// Shard 0 as the bootstrap nodes start it: no SKU range, every bootstrap node a voter.
    pub fn meta_shard_config(&self) -> ShardConfig {
        ShardConfig {
            id: crate::meta::map::META_SHARD,
            start: String::new(),
            end: String::new(),
            replicas: self.bootstrap_nodes(),
        }
    }

    /// The shard map this file describes, as the first meta leader proposes it: the bootstrap
    /// nodes and their shards (nodes listed but named by no shard join later, when added).
    pub fn seed_command(&self) -> crate::meta::map::MetaCommand {
        let bootstrap = self.bootstrap_nodes();
        crate::meta::map::MetaCommand::Seed {
            nodes: self
                .nodes
                .iter()
                .filter(|n| bootstrap.contains(&n.id))
                .map(|n| (n.id, n.addr.clone()))
                .collect(),
            meta_replicas: bootstrap,
            shards: self
                .shards
                .iter()
                .map(|s| {
                    let mut replicas = s.replicas.clone();
                    replicas.sort_unstable();
                    let entry = crate::meta::map::ShardEntry {
                        start: s.start.clone().into_bytes(),
                        end: s.end.clone().into_bytes(),
                        replicas,
                        learners: Vec::new(),
                        epoch: 1,
                        conf_ver: 1,
                    };
                    (s.id, entry)
                })
                .collect(),
        }
    }
}

/// One numeric setting as [`ClusterConfig::validate`] checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct NumericSetting {
    /// `section.field`, as written in cluster.toml.
    field: &'static str,
    value: u64,
    range: RangeInclusive<u64>,
}

impl NumericSetting {
    fn new(field: &'static str, value: u64, range: RangeInclusive<u64>) -> Self {
        NumericSetting { field, value, range }
    }
}

/// Why `url` is not usable by tokio-postgres (the message names no part of the URL: it may
/// hold a password).
#[cfg(not(madsim))]
fn check_postgres_url(url: &str) -> Result<(), String> {
    match url.parse::<tokio_postgres::Config>() {
        Ok(config) if config.get_hosts().is_empty() => Err("it names no host".into()),
        Ok(_) => Ok(()),
        Err(error) => Err(match std::error::Error::source(&error) {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        }),
    }
}

#[cfg(madsim)]
fn check_postgres_url(_url: &str) -> Result<(), String> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = r#"
        [security]
        insecure = true
        [[nodes]]
        id = 1
        addr = "127.0.0.1:7101"
        data_dir = "d1"
        [[nodes]]
        id = 2
        addr = "127.0.0.1:7102"
        data_dir = "d2"
        [[nodes]]
        id = 3
        addr = "127.0.0.1:7103"
        data_dir = "d3"
        [[shards]]
        id = 1
        end = "m"
        replicas = [1, 2, 3]
        [[shards]]
        id = 2
        start = "m"
        replicas = [1, 2, 3]
    "#;

    fn parse(text: &str) -> Result<ClusterConfig, ConfigError> {
        ClusterConfig::parse(text, "test.toml")
    }

    #[test]
    fn the_shipped_cluster_toml_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster.toml");
        let config = ClusterConfig::load(&path).expect("cluster.toml loads");
        assert_eq!(config.nodes.len(), 3);
        assert!(config.shard_for_sku(b"apple").is_some());
        assert!(config.shard_for_sku(b"zebra").is_some());
    }

    #[test]
    fn the_multi_host_example_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/cluster.multi-host.toml");
        let config = ClusterConfig::load(&path).expect("deploy/cluster.multi-host.toml loads");
        assert_eq!(config.nodes.len(), 3);
        assert_eq!(config.nodes[1].admin_addr.as_deref(), Some("10.0.1.2:8101"));
        assert_eq!(config.postgres.len(), 2);
        for sku in [&b"apple"[..], b"kiwi", b"zebra"] {
            assert!(config.shard_for_sku(sku).is_some());
        }
    }

    #[test]
    fn defaults_fill_missing_sections_and_skus_route() {
        let config = parse(VALID).expect("valid");
        assert_eq!(config.raft, RaftSection::default());
        assert_eq!(config.shard_for_sku(b"apple").map(|s| s.id), Some(1));
        assert_eq!(config.shard_for_sku(b"m").map(|s| s.id), Some(2));
        assert_eq!(config.shard_for_sku(&[0xff; 4]).map(|s| s.id), Some(2));
        assert_eq!(config.shards_on_node(2).count(), 2);
    }

    #[test]
    fn placement_balances_both_every_5_s_unless_told_otherwise() {
        let defaults = parse(VALID).expect("valid").placement;
        assert_eq!(
            (
                defaults.balance_leaders,
                defaults.balance_replicas,
                defaults.interval_ms
            ),
            (true, true, 5000)
        );
        assert_eq!((defaults.split_hot_ranges, defaults.hot_range_ops_per_s), (false, 5000));
        let zero = parse(&format!("{VALID}\n[placement]\nhot_range_ops_per_s = 0\n"));
        assert!(zero.is_err(), "{zero:?}");
        let text = format!("{VALID}\n[placement]\nbalance_leaders = false\ninterval_ms = 250\n");
        let placement = parse(&text).expect("valid").placement;
        assert_eq!(
            placement.policy(),
            crate::meta::scheduler::PlacementPolicy {
                balance_leaders: false,
                balance_replicas: true
            }
        );
        assert_eq!(placement.interval_ms, 250);
        let unknown = parse(&format!("{VALID}\n[placement]\nbalance_hot_ranges = true\n"));
        assert!(matches!(unknown, Err(ConfigError::Parse { .. })), "{unknown:?}");
    }

    /// cluster.toml documents `[placement]` commented out; uncommented, it must be the defaults.
    #[test]
    fn the_commented_placement_block_in_cluster_toml_is_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster.toml");
        let text = std::fs::read_to_string(path).expect("cluster.toml");
        let block: String = text
            .lines()
            .skip_while(|line| *line != "# [placement]")
            .take_while(|line| line.starts_with("# "))
            .map(|line| format!("{}\n", &line[2..]))
            .collect();
        assert!(
            block.contains("interval_ms"),
            "no commented [placement] block: {block:?}"
        );
        let section: PlacementSection = toml::from_str::<toml::Table>(&block)
            .expect("toml")
            .get("placement")
            .cloned()
            .expect("[placement]")
            .try_into()
            .expect("a placement section");
        assert_eq!(section, PlacementSection::default());
    }

    #[test]
    fn a_missing_field_is_a_parse_error_naming_it() {
        let text = VALID.replacen("addr = \"127.0.0.1:7101\"", "", 1);
        match parse(&text) {
            Err(ConfigError::Parse { message, .. }) => assert!(message.contains("addr"), "{message}"),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn an_unknown_field_is_a_parse_error_naming_it() {
        let text = format!("{VALID}\n[server]\nbatch_ops_maximum = 3\n");
        match parse(&text) {
            Err(ConfigError::Parse { message, .. }) => assert!(message.contains("batch_ops_maximum"), "{message}"),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn invalid_toml_is_a_parse_error() {
        assert!(matches!(parse("[[nodes]\nid = "), Err(ConfigError::Parse { .. })));
    }

    #[test]
    fn duplicates_are_named() {
        let text = VALID.replace("127.0.0.1:7102", "127.0.0.1:7101");
        assert_eq!(
            parse(&text),
            Err(ConfigError::DuplicateAddress("127.0.0.1:7101".into()))
        );
        let text = VALID.replacen("id = 2", "id = 1", 1);
        assert_eq!(parse(&text), Err(ConfigError::DuplicateNodeId(1)));
    }

    #[test]
    fn bad_addresses_and_replicas_are_named() {
        let text = VALID.replace("127.0.0.1:7103", "localhost");
        assert_eq!(
            parse(&text),
            Err(ConfigError::InvalidAddress {
                node: 3,
                addr: "localhost".into()
            })
        );
        let text = VALID.replacen("replicas = [1, 2, 3]", "replicas = [1, 2, 9]", 1);
        assert_eq!(parse(&text), Err(ConfigError::UnknownReplica { shard: 1, node: 9 }));
        let text = VALID.replacen("replicas = [1, 2, 3]", "replicas = [1, 2]", 1);
        assert_eq!(parse(&text), Err(ConfigError::ReplicaCount { shard: 1, count: 2 }));
        let text = VALID.replacen("replicas = [1, 2, 3]", "replicas = [1, 1, 2]", 1);
        assert_eq!(parse(&text), Err(ConfigError::ReplicaCount { shard: 1, count: 2 }));
    }

    #[test]
    fn admin_addresses_default_beside_the_grpc_port_and_must_not_collide() {
        let config = parse(VALID).expect("valid");
        let admin: Vec<String> = config.nodes.iter().map(|n| n.admin_addr().expect("admin")).collect();
        assert_eq!(admin, ["127.0.0.1:8101", "127.0.0.1:8102", "127.0.0.1:8103"]);
        let explicit = VALID.replacen(
            "addr = \"127.0.0.1:7101\"",
            "addr = \"127.0.0.1:7101\"\nadmin_addr = \"10.0.0.1:9100\"",
            1,
        );
        let config = parse(&explicit).expect("valid");
        assert_eq!(config.nodes[0].admin_addr(), Ok("10.0.0.1:9100".into()));

        let overflow = VALID.replace("127.0.0.1:7103", "127.0.0.1:65000");
        match parse(&overflow) {
            Err(ConfigError::InvalidAdminAddress { node: 3, reason }) => {
                assert!(reason.contains("past 65535"), "{reason}")
            }
            other => panic!("expected the overflow named, got {other:?}"),
        }
        // Node 2's default admin port is node 3's gRPC port.
        let collides = VALID.replace("127.0.0.1:7103", "127.0.0.1:8102");
        match parse(&collides) {
            Err(ConfigError::InvalidAdminAddress { reason, .. }) => {
                assert!(reason.contains("127.0.0.1:8102"), "{reason}")
            }
            other => panic!("expected the collision named, got {other:?}"),
        }
        let malformed = VALID.replacen(
            "addr = \"127.0.0.1:7101\"",
            "addr = \"127.0.0.1:7101\"\nadmin_addr = \"nowhere\"",
            1,
        );
        assert!(
            matches!(parse(&malformed), Err(ConfigError::InvalidAdminAddress { node: 1, .. })),
            "{:?}",
            parse(&malformed)
        );
    }

    #[test]
    fn shard_ranges_must_tile_the_key_space() {
        let gap = VALID.replace("start = \"m\"", "start = \"n\"");
        assert!(matches!(parse(&gap), Err(ConfigError::RangesDoNotTile { .. })));
        let overlap = VALID.replace("start = \"m\"", "start = \"k\"");
        assert!(matches!(parse(&overlap), Err(ConfigError::RangesDoNotTile { .. })));
        let unbounded_twice = VALID.replace("end = \"m\"", "");
        assert!(parse(&unbounded_twice).is_err());
    }

    #[test]
    fn bounds_are_checked() {
        let text = format!("{VALID}\n[raft]\nelection_timeout_ms_min = 50\nheartbeat_interval_ms = 100\n");
        assert!(matches!(
            parse(&text),
            Err(ConfigError::Bound {
                field: "raft.election_timeout_ms_min",
                ..
            })
        ));
        let text = format!("{VALID}\n[server]\nbatch_ops_max = 0\n");
        assert!(matches!(
            parse(&text),
            Err(ConfigError::OutOfRange {
                field: "server.batch_ops_max",
                ..
            })
        ));
    }

    /// `VALID` with `section.key = value` added (to the section if `VALID` has it already).
    fn with_setting(field: &str, value: u64) -> String {
        let (section, key) = field.split_once('.').expect("section.key");
        let header = format!("[{section}]");
        if VALID.contains(&header) {
            return VALID.replacen(&header, &format!("{header}\n{key} = {value}"), 1);
        }
        format!("{VALID}\n{header}\n{key} = {value}\n")
    }

    #[test]
    fn every_numeric_setting_out_of_its_range_is_refused_naming_it() {
        let defaults = parse(VALID).expect("valid");
        for setting in defaults.numeric_settings() {
            assert!(setting.range.contains(&setting.value), "default {setting:?}");
            let below = setting.range.start().checked_sub(1);
            let above = Some(setting.range.end() + 1).filter(|value| *value <= i64::MAX as u64);
            for value in [below, above, Some(i64::MAX as u64)].into_iter().flatten() {
                assert_eq!(
                    parse(&with_setting(setting.field, value)),
                    Err(ConfigError::OutOfRange {
                        field: setting.field,
                        value,
                        min: *setting.range.start(),
                        max: *setting.range.end(),
                    }),
                    "{} = {value}",
                    setting.field
                );
            }
        }
    }

    #[test]
    fn the_values_that_broke_a_node_are_refused_with_a_readable_message() {
        let message = |field, value| parse(&with_setting(field, value)).expect_err("refused").to_string();
        assert_eq!(
            message("server.inflight_requests_max", 4_294_967_296),
            "server.inflight_requests_max = 4294967296 is out of range 1..=65536"
        );
        assert_eq!(
            message("server.inflight_requests_max", i64::MAX as u64),
            "server.inflight_requests_max = 9223372036854775807 is out of range 1..=65536"
        );
        assert_eq!(
            message("server.message_bytes_max", 1),
            "server.message_bytes_max = 1 is out of range 16384..=67108864"
        );
        assert_eq!(
            message("server.request_timeout_ms", i64::MAX as u64 - 1),
            "server.request_timeout_ms = 9223372036854775806 is out of range 1..=600000"
        );
    }

    #[test]
    fn the_range_edges_are_accepted() {
        for (field, value) in [
            ("server.inflight_requests_max", 65_536),
            ("server.inflight_requests_max", 1),
            ("server.message_bytes_max", 16 * 1024),
            ("raft.snapshot_ops_since_last", 1_000_000_000_000),
            ("raft.snapshot_growth_percent", 0),
            ("ledger.clock_skew_margin_ms", 0),
        ] {
            assert!(parse(&with_setting(field, value)).is_ok(), "{field} = {value}");
        }
    }

    #[test]
    fn plaintext_only_when_said_and_tls_needs_every_file() {
        let without_security = VALID.replacen("[security]\n        insecure = true", "", 1);
        assert_ne!(without_security, VALID);
        let refused = parse(&without_security).expect_err("no [security]: TLS required");
        assert!(refused.to_string().contains("insecure = true"), "{refused}");
        assert!(refused.to_string().contains("security.ca_file"), "{refused}");

        let tls = VALID.replacen("insecure = true", "ca_file = \"ca.pem\"", 1);
        let refused = parse(&tls).expect_err("nodes without certificates");
        assert!(refused.to_string().contains("node 1 cert_file"), "{refused}");
        let mut complete = tls.clone();
        for id in 1..=3 {
            complete = complete.replacen(
                &format!("data_dir = \"d{id}\""),
                &format!("data_dir = \"d{id}\"\n        cert_file = \"n{id}.pem\"\n        key_file = \"n{id}.key\""),
                1,
            );
        }
        let config = parse(&complete).expect("every file named");
        assert!(!config.security.insecure);
        let missing_key = complete.replacen("key_file = \"n3.key\"", "", 1);
        let refused = parse(&missing_key).expect_err("node 3 has no key");
        assert!(refused.to_string().contains("node 3 key_file"), "{refused}");
    }

    #[test]
    fn an_empty_data_dir_is_refused() {
        let text = VALID.replacen("data_dir = \"d2\"", "data_dir = \"\"", 1);
        assert_eq!(parse(&text), Err(ConfigError::EmptyDataDir { node: 2 }));
    }

    #[test]
    fn an_unusable_postgres_url_is_refused_naming_its_position() {
        let with_urls = |urls: &[&str]| {
            let mut text = VALID.to_string();
            for url in urls {
                text.push_str(&format!("\n[[postgres]]\nurl = \"{url}\"\n"));
            }
            parse(&text)
        };
        let good = "postgresql://postgres@127.0.0.1:5432/orders_0";
        assert!(with_urls(&[good, "host=127.0.0.1 dbname=orders_1"]).is_ok());
        for bad in [
            "not a url",
            "postgresql://secret-password@127.0.0.1:notaport/orders",
            "postgresql:///orders",
            "",
        ] {
            match with_urls(&[good, bad]) {
                Err(error @ ConfigError::InvalidPostgresUrl { position: 1, .. }) => {
                    let message = error.to_string();
                    assert!(message.starts_with("postgres[1].url"), "{message}");
                    assert!(!message.contains("secret-password"), "{message}");
                }
                other => panic!("{bad:?}: expected InvalidPostgresUrl at 1, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_missing_file_is_an_io_error() {
        assert!(matches!(
            ClusterConfig::load(Path::new("/nonexistent/cluster.toml")),
            Err(ConfigError::Io { .. })
        ));
    }
}
