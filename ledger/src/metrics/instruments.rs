//! The instruments every layer records into: counters and histograms that are atomics (or a
//! short uncontended lock for a histogram's buckets), created by the layer that owns what they
//! measure and read only by [`super::scrape`]. Nothing here knows the node, so storage, Raft
//! glue and the server can all hold them, under madsim as well as in a real process.
//!
//! Labels are closed sets ([`ShardLabels`], [`PeerRpcLabels`], [`RequestLabels`]): shard and
//! peer ids come from the cluster config, RPC names from `security::RPC_ACCESS`, outcomes from
//! [`RequestOutcome`]. No SKU, user or order ever becomes a label.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::EncodeLabelValue;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::histogram::exponential_buckets;

use crate::types::NodeId;
use crate::types::ShardId;

/// Seconds from 100 µs to ~3.3 s (16 doubling buckets): requests, Raft RPCs, fdatasync.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.0, 16))
}

/// Seconds from 1 ms to ~33 s: building a snapshot.
fn snapshot_duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Counts from 1 to 8 192 (14 doubling buckets): operations in one log entry.
fn ops_per_entry_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 14))
}

/// Bytes from 512 B to 128 MiB (10 buckets, ×4): what one fdatasync made durable.
fn bytes_histogram() -> Histogram {
    Histogram::new(exponential_buckets(512.0, 4.0, 10))
}

/// `{shard}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ShardLabels {
    pub shard: ShardId,
}

/// What one shard's replica records as it applies and snapshots (held by its `ShardView`).
/// Cloning shares the values.
#[derive(Debug, Clone)]
pub struct ShardInstruments {
    /// Log entries this replica applied.
    pub log_entries_committed: Counter,
    /// Operations in those entries.
    pub ops_committed: Counter,
    pub ops_per_entry: Histogram,
    /// Snapshots this replica built (not the ones it installed from a leader).
    pub snapshots: Counter,
    /// Size of the last snapshot built, in bytes.
    pub snapshot_bytes: Gauge,
    pub snapshot_duration: Histogram,
    /// Times this replica learned of a new leader (see `node::tasks::count_leader_changes`).
    pub leader_changes: Counter,
}

impl Default for ShardInstruments {
    fn default() -> Self {
        ShardInstruments {
            log_entries_committed: Counter::default(),
            ops_committed: Counter::default(),
            ops_per_entry: ops_per_entry_histogram(),
            snapshots: Counter::default(),
            snapshot_bytes: Gauge::default(),
            snapshot_duration: snapshot_duration_histogram(),
            leader_changes: Counter::default(),
        }
    }
}

impl ShardInstruments {
    /// One log entry holding `ops` operations was applied.
    pub fn applied_entry(&self, ops: u64) {
        self.log_entries_committed.inc();
        self.ops_committed.inc_by(ops);
        // Blank and membership entries carry no operation: they are not batches.
        if ops > 0 {
            self.ops_per_entry.observe(ops as f64);
        }
    }

    /// A snapshot of `bytes` was built in `took`.
    pub fn snapshot_built(&self, bytes: u64, took: std::time::Duration) {
        self.snapshots.inc();
        self.snapshot_bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.snapshot_duration.observe(took.as_secs_f64());
    }
}

/// `{peer, rpc}` of a Raft RPC this node sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PeerRpcLabels {
    pub peer: NodeId,
    pub rpc: RaftRpcKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)] // the label values, as Prometheus shows them
pub enum RaftRpcKind {
    append,
    vote,
    pre_vote,
    snapshot,
    transfer_leader,
}

/// How long each Raft RPC to each peer took, answered or not (a timeout counts its deadline).
pub type RaftRpcDurations = Family<PeerRpcLabels, Histogram, fn() -> Histogram>;

pub fn raft_rpc_durations() -> RaftRpcDurations {
    Family::new_with_constructor(latency_histogram)
}

/// What the WAL's writer records per group commit (held by the WAL).
#[derive(Debug, Clone)]
pub struct WalInstruments {
    pub fdatasync_duration: Histogram,
    pub fdatasync_bytes: Histogram,
}

impl Default for WalInstruments {
    fn default() -> Self {
        WalInstruments {
            fdatasync_duration: latency_histogram(),
            fdatasync_bytes: bytes_histogram(),
        }
    }
}

/// `{rpc, outcome}` of a gRPC request this node served.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// The method name (`Purchase`), from the table of RPCs the node serves; `unknown` otherwise.
    pub rpc: &'static str,
    pub outcome: RequestOutcome,
}

/// A request's answer folded to a small closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelValue)]
#[allow(non_camel_case_types)] // the label values, as Prometheus shows them
pub enum RequestOutcome {
    ok,
    /// A business answer other than success (sold out, limit, not found, stale epoch).
    rejected,
    not_leader,
    overloaded,
    rate_limited,
    deadline,
    invalid,
    unauthenticated,
    error,
}

impl RequestOutcome {
    /// The outcome of a gRPC status `code` (the numeric `grpc-status`); `leader_hint` says
    /// whether the answer named a leader (`x-leader-addr`), i.e. the request went to a follower.
    pub fn of_grpc_status(code: i32, leader_hint: bool) -> RequestOutcome {
        match tonic::Code::from_i32(code) {
            tonic::Code::Ok => RequestOutcome::ok,
            tonic::Code::Unavailable if leader_hint => RequestOutcome::not_leader,
            tonic::Code::ResourceExhausted => RequestOutcome::overloaded,
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => RequestOutcome::deadline,
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange | tonic::Code::Unimplemented => {
                RequestOutcome::invalid
            }
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => RequestOutcome::unauthenticated,
            tonic::Code::NotFound | tonic::Code::FailedPrecondition | tonic::Code::AlreadyExists => {
                RequestOutcome::rejected
            }
            _ => RequestOutcome::error,
        }
    }
}

/// Put by a handler into its response's extensions when the call succeeded at the gRPC level
/// but its answer was a business rejection or a rate limit, so the request layer labels it so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnsweredAs(pub RequestOutcome);

/// The node-wide instruments the server records into (held by the node).
#[derive(Debug, Clone)]
pub struct NodeInstruments {
    pub request_duration: Family<RequestLabels, Histogram, fn() -> Histogram>,
}

impl Default for NodeInstruments {
    fn default() -> Self {
        NodeInstruments {
            request_duration: Family::new_with_constructor(latency_histogram),
        }
    }
}
