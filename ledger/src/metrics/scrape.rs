//! One scrape of `/metrics`: reads the node as it is now (every hosted shard's Raft metrics and
//! status, admission's counts, the instruments the layers below recorded into, the process) and
//! writes them in the Prometheus text format (OpenMetrics 1.0, which Prometheus reads natively).
//!
//! Per-shard gauges come from `Node::status_at` (the figures `ledger status` prints, less the
//! O(SKUs) digest and invariant walk, see `StatusDepth::Cheap`), so the two never disagree and
//! a scrape holds each shard's state lock for O(1), never for a walk over its SKUs.

use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::EncodeMetric;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::metrics::instruments::ShardInstruments;
use crate::metrics::instruments::ShardLabels;
use crate::node::Node;
use crate::node::ShardStatus;
use crate::node::StatusDepth;
use crate::types::NodeId;
use crate::types::ShardId;

/// The text `/metrics` answers for `node`.
pub fn render(node: &Arc<Node>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(NodeCollector(node.clone())));
    let mut text = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in a label or name.
    if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        tracing::error!(%error, "encoding /metrics");
    }
    text
}

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

struct NodeCollector(Arc<Node>);

impl std::fmt::Debug for NodeCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeCollector(node {})", self.0.id)
    }
}

impl Collector for NodeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let node = &self.0;
        let shards = node.status_at(StatusDepth::Cheap);
        encode_shard_state(&mut encoder, node.id, &shards)?;
        encode_shard_instruments(&mut encoder, node)?;
        encode_node(&mut encoder, node)?;
        #[cfg(not(madsim))]
        encode_process(&mut encoder)?;
        Ok(())
    }
}

/// Writes one metric's descriptor, then one series per `(labels, value)`.
fn series<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    values: impl IntoIterator<Item = (L, M)>,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in values {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One gauge series per shard, valued by `value`.
fn shard_gauge<V>(
    encoder: &mut DescriptorEncoder,
    shards: &[ShardStatus],
    name: &str,
    help: &str,
    value: impl Fn(&ShardStatus) -> V,
) -> std::fmt::Result
where
    ConstGauge<V>: EncodeMetric,
{
    let values = shards
        .iter()
        .map(|shard| (ShardLabels { shard: shard.shard_id }, ConstGauge::new(value(shard))));
    series(encoder, name, help, MetricType::Gauge, values)
}

fn index(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn encode_shard_state(encoder: &mut DescriptorEncoder, node_id: NodeId, shards: &[ShardStatus]) -> std::fmt::Result {
    shard_gauge(
        encoder,
        shards,
        "flashledger_shard_is_leader",
        "1 if this node leads the shard, else 0",
        |s| i64::from(s.leader == Some(node_id) && s.role == "leader"),
    )?;
    shard_gauge(
        encoder,
        shards,
        "flashledger_shard_leader_id",
        "The shard's leader as this node knows it, 0 when none",
        |s| index(s.leader.unwrap_or(0)),
    )?;
    shard_gauge(
        encoder,
        shards,
        "flashledger_shard_term",
        "The shard's current Raft term on this replica",
        |s| index(s.term),
    )?;
    shard_gauge(
        encoder,
        shards,
        "flashledger_shard_voters",
        "Voters in the shard's membership",
        |s| index(s.voters),
    )?;
    shard_gauge(
        encoder,
        shards,
        "flashledger_shard_last_log_index",
        "Last index in this replica's log",
        |s| index(s.last_log_index),
    )?;
    shard_gauge(
        encoder,
        shards,
        "flashledger_shard_committed_index",
        "Last index this replica knows committed",
        |s| index(s.committed_index),
    )?;
    shard_gauge(
        encoder,
        shards,
        "flashledger_shard_applied_index",
        "Last index this replica applied",
        |s| index(s.applied_index),
    )?;
    shard_gauge(
        encoder,
        shards,
        "flashledger_shard_apply_lag_entries",
        "Committed minus applied on this replica",
        |s| index(s.committed_index.saturating_sub(s.applied_index)),
    )?;
    shard_gauge(
        encoder,
        shards,
        "flashledger_shard_shipping_lag_events",
        "Confirmed orders not yet shipped to PostgreSQL",
        |s| index(s.shipping_lag_events),
    )?;
    shard_gauge(
        encoder,
        shards,
        "flashledger_shard_shipping_lag_seconds",
        "Age of the oldest unshipped order, 0 when none",
        |s| s.shipping_lag_seconds,
    )?;
    shard_gauge(
        encoder,
        shards,
        "flashledger_shard_invariant_ok",
        "1 while available+reserved+sold==total holds for every SKU",
        |s| i64::from(s.invariant_ok),
    )?;
    // Only a leader has series: a follower knows no peer's progress.
    let lags = shards.iter().filter(|s| s.role == "leader").flat_map(|s| {
        s.matched_index.iter().map(|(peer, matched)| {
            let labels = ShardPeerLabels {
                shard: s.shard_id,
                peer: *peer,
            };
            (
                labels,
                ConstGauge::new(index(s.last_log_index.saturating_sub(*matched))),
            )
        })
    });
    series(
        encoder,
        "flashledger_shard_replication_lag_entries",
        "On the leader: its last log index minus the peer's matched index",
        MetricType::Gauge,
        lags,
    )
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ShardPeerLabels {
    shard: ShardId,
    peer: NodeId,
}

fn encode_shard_instruments(encoder: &mut DescriptorEncoder, node: &Node) -> std::fmt::Result {
    let counter = MetricType::Counter;
    let histogram = MetricType::Histogram;
    shard_instrument(
        encoder,
        node,
        "flashledger_shard_leader_changes",
        "Times this replica learned of a new leader",
        counter,
        |i| &i.leader_changes,
    )?;
    shard_instrument(
        encoder,
        node,
        "flashledger_shard_log_entries_committed",
        "Log entries this replica applied",
        counter,
        |i| &i.log_entries_committed,
    )?;
    shard_instrument(
        encoder,
        node,
        "flashledger_shard_ops_committed",
        "Operations in the entries this replica applied",
        counter,
        |i| &i.ops_committed,
    )?;
    shard_instrument(
        encoder,
        node,
        "flashledger_shard_ops_per_entry",
        "Operations per applied log entry",
        histogram,
        |i| &i.ops_per_entry,
    )?;
    shard_instrument(
        encoder,
        node,
        "flashledger_shard_snapshots",
        "Snapshots this replica built",
        counter,
        |i| &i.snapshots,
    )?;
    shard_instrument(
        encoder,
        node,
        "flashledger_shard_snapshot_bytes",
        "Bytes the last snapshot wrote (changed chunks and manifest)",
        MetricType::Gauge,
        |i| &i.snapshot_bytes,
    )?;
    shard_instrument(
        encoder,
        node,
        "flashledger_shard_snapshot_duration_seconds",
        "Time to build a snapshot",
        histogram,
        |i| &i.snapshot_duration,
    )?;
    Ok(())
}

/// One series per hosted shard of the instrument `pick` chooses.
fn shard_instrument<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    node: &Node,
    name: &str,
    help: &str,
    metric_type: MetricType,
    pick: impl Fn(&ShardInstruments) -> &M,
) -> std::fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for shard in node.shards() {
        let id = &shard.config.id;
        pick(&shard.view.instruments).encode(metric.encode_family(&ShardLabels { shard: *id })?)?;
    }
    Ok(())
}

/// A metric without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    value: &impl EncodeMetric,
) -> std::fmt::Result {
    value.encode(encoder.encode_descriptor(name, help, None, metric_type)?)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

fn encode_node(encoder: &mut DescriptorEncoder, node: &Node) -> std::fmt::Result {
    let requests = &node.instruments.request_duration;
    let metric = encoder.encode_descriptor(
        "flashledger_request_duration_seconds",
        "gRPC requests served, by RPC and outcome",
        None,
        MetricType::Histogram,
    )?;
    requests.encode(metric)?;
    let admission = node.admission.stats();
    let inflight = ConstGauge::new(index(admission.inflight_ops));
    single(
        encoder,
        "flashledger_ops_inflight",
        "Operations admitted and not yet answered on this node",
        MetricType::Gauge,
        &inflight,
    )?;
    let shed_by_budget: u64 = admission.shed_requests.iter().sum();
    let shed = [
        (ReasonLabels { reason: "budget" }, ConstCounter::new(shed_by_budget)),
        (
            ReasonLabels { reason: "deadline" },
            ConstCounter::new(admission.late_requests),
        ),
    ];
    series(
        encoder,
        "flashledger_requests_shed",
        "Requests refused before proposing, by reason",
        MetricType::Counter,
        shed,
    )?;
    let limited = [
        (
            KindLabels { kind: "client" },
            ConstCounter::new(admission.rate_limited_clients),
        ),
        (
            KindLabels { kind: "buyer" },
            ConstCounter::new(admission.rate_limited_buyers),
        ),
    ];
    series(
        encoder,
        "flashledger_requests_rate_limited",
        "Operations answered RATE_LIMITED, by whose limit",
        MetricType::Counter,
        limited,
    )?;
    let wal = &node.wal_instruments;
    single(
        encoder,
        "flashledger_wal_fdatasync_duration_seconds",
        "Latency of the WAL's fdatasync (one per group commit)",
        MetricType::Histogram,
        &wal.fdatasync_duration,
    )?;
    single(
        encoder,
        "flashledger_wal_fdatasync_bytes",
        "Bytes one fdatasync made durable",
        MetricType::Histogram,
        &wal.fdatasync_bytes,
    )?;
    let raft = encoder.encode_descriptor(
        "flashledger_raft_rpc_duration_seconds",
        "Raft RPCs this node sent, by peer and RPC (a timeout counts its deadline)",
        None,
        MetricType::Histogram,
    )?;
    node.raft_rpc_durations().encode(raft)?;
    let info = [(
        VersionLabels {
            version: env!("CARGO_PKG_VERSION"),
        },
        ConstGauge::new(1i64),
    )];
    series(
        encoder,
        "flashledger_node_info",
        "1, labelled with the node's version",
        MetricType::Gauge,
        info,
    )
}

#[cfg(not(madsim))]
fn encode_process(encoder: &mut DescriptorEncoder) -> std::fmt::Result {
    let sample = crate::metrics::process::ProcessSample::read();
    let gauges = [
        (
            "process_resident_memory_bytes",
            "Resident memory of this process",
            sample.resident_bytes,
        ),
        (
            "process_open_fds",
            "File descriptors this process holds open",
            sample.open_fds,
        ),
        (
            "flashledger_memory_limit_bytes",
            "Memory this process may use: the cgroup's memory.max, else the machine's MemTotal",
            sample.memory_limit_bytes,
        ),
    ];
    // A figure the system does not give is left out rather than reported as 0.
    for (name, help, value) in gauges {
        if let Some(value) = value {
            single(encoder, name, help, MetricType::Gauge, &ConstGauge::new(index(value)))?;
        }
    }
    Ok(())
}
