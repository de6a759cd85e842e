//! The text `/metrics` answers, rendered from in-process nodes: every metric of the contract
//! (docs/operations.md) is there, labels come only from the closed set, the number of series
//! does not grow with the number of SKUs, and the values say what the nodes did.

#![cfg(not(madsim))]

mod common;
mod metrics_support;

use std::collections::BTreeSet;

use common::TestCluster;
use common::purchase;
use metrics_support::Sample;
use metrics_support::parse;

/// Every metric the alert rules and the dashboard are written against, as its family name
/// (counters without `_total`).
const CONTRACT: &[&str] = &[
    "flashledger_shard_is_leader",
    "flashledger_shard_leader_id",
    "flashledger_shard_term",
    "flashledger_shard_leader_changes",
    "flashledger_shard_voters",
    "flashledger_shard_last_log_index",
    "flashledger_shard_committed_index",
    "flashledger_shard_applied_index",
    "flashledger_shard_apply_lag_entries",
    "flashledger_shard_replication_lag_entries",
    "flashledger_shard_log_entries_committed",
    "flashledger_shard_ops_committed",
    "flashledger_shard_ops_per_entry",
    "flashledger_shard_snapshots",
    "flashledger_shard_snapshot_bytes",
    "flashledger_shard_snapshot_duration_seconds",
    "flashledger_shard_shipping_lag_events",
    "flashledger_shard_shipping_lag_seconds",
    "flashledger_shard_invariant_ok",
    "flashledger_request_duration_seconds",
    "flashledger_ops_inflight",
    "flashledger_requests_shed",
    "flashledger_requests_rate_limited",
    "flashledger_wal_fdatasync_duration_seconds",
    "flashledger_wal_fdatasync_bytes",
    "flashledger_raft_rpc_duration_seconds",
    "flashledger_node_info",
    "process_resident_memory_bytes",
    "process_open_fds",
    "flashledger_memory_limit_bytes",
];

const LABELS_ALLOWED: &[&str] = &["shard", "peer", "rpc", "outcome", "reason", "kind", "version", "le"];

/// The series (name and labels, buckets aside) of the per-shard metrics.
fn shard_series(samples: &[Sample]) -> BTreeSet<String> {
    samples
        .iter()
        .filter(|s| s.name.starts_with("flashledger_shard_") && !s.labels.contains_key("le"))
        .map(|s| format!("{}{:?}", s.name, s.labels))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_text_names_every_metric_with_bounded_labels_and_true_values() {
    let cluster = TestCluster::start(3, |config| config.raft.snapshot_ops_since_last = 20).await;

    tracing::info!("--- a sale on both shards");
    let mut writes = 0u64;
    let mut last_index = [0u64; 3];
    for sku in ["apple-1", "apple-2", "zebra-1"] {
        cluster.put_sku(sku, 1_000).await;
        writes += 1;
    }
    for round in 0..30 {
        for sku in ["apple-1", "zebra-1"] {
            let order = format!("o-{sku}-{round}");
            let (_, index) = cluster.write(vec![purchase(sku, "u", &order)]).await;
            writes += 1;
            let shard = if sku.starts_with('a') { 1 } else { 2 };
            last_index[shard] = index;
        }
    }
    for id in cluster.running_ids() {
        cluster.wait_applied(id, 1, last_index[1]).await;
        cluster.wait_applied(id, 2, last_index[2]).await;
    }
    let leader = cluster.leader(1).await;
    cluster.wait_snapshot(leader, 1).await;

    tracing::info!("--- every node's text");
    let mut series_before = Vec::new();
    let mut leaders_of_shard_1 = 0;
    let mut ops_committed = Vec::new();
    for id in cluster.running_ids() {
        let node = cluster.node(id);
        let text = ledger::metrics::scrape::render(node);
        assert!(text.ends_with("# EOF\n"), "node {id}: {text}");
        let families: BTreeSet<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|line| line.split_whitespace().next())
            .collect();
        for name in CONTRACT {
            assert!(families.contains(name), "node {id}: {name} missing from\n{text}");
        }
        let samples = parse(&text);
        for sample in &samples {
            for (key, value) in &sample.labels {
                assert!(LABELS_ALLOWED.contains(&key.as_str()), "label {key} on {sample:?}");
                assert!(
                    !value.contains("apple") && !value.contains("zebra"),
                    "a SKU label: {sample:?}"
                );
            }
        }
        let value = |name: &str, shard: &str| metrics_support::value(&samples, name, &[("shard", shard)]);
        let status = node.status();
        for shard in &status {
            let label = shard.shard_id.to_string();
            assert_eq!(
                value("flashledger_shard_applied_index", &label),
                Some(shard.applied_index as f64)
            );
            assert_eq!(value("flashledger_shard_voters", &label), Some(3.0));
            assert_eq!(value("flashledger_shard_invariant_ok", &label), Some(1.0));
            assert_eq!(value("flashledger_shard_term", &label), Some(shard.term as f64));
        }
        leaders_of_shard_1 += value("flashledger_shard_is_leader", "1").unwrap_or(0.0) as u64;
        assert_eq!(
            value("flashledger_shard_leader_id", "1"),
            Some(leader as f64),
            "node {id}"
        );
        assert!(value("flashledger_shard_leader_changes_total", "1").unwrap_or(0.0) >= 1.0);
        assert!(value("flashledger_shard_ops_per_entry_count", "1").unwrap_or(0.0) >= 31.0);
        ops_committed.push(
            value("flashledger_shard_ops_committed_total", "1").unwrap_or(0.0)
                + value("flashledger_shard_ops_committed_total", "2").unwrap_or(0.0),
        );
        let fdatasyncs = metrics_support::value(&samples, "flashledger_wal_fdatasync_duration_seconds_count", &[]);
        assert!(fdatasyncs.unwrap_or(0.0) > 0.0, "node {id}: no fdatasync counted");
        let appends_served = samples
            .iter()
            .filter(|s| {
                s.name == "flashledger_request_duration_seconds_count"
                    && s.labels.get("rpc").is_some_and(|rpc| rpc == "AppendEntries")
            })
            .map(|s| s.value)
            .sum::<f64>();
        if id != leader {
            assert!(appends_served > 0.0, "node {id} served appends: {samples:?}");
            assert!(
                metrics_support::value(&samples, "flashledger_shard_replication_lag_entries", &[("shard", "1")])
                    .is_none(),
                "a follower has no replication lag series"
            );
        } else {
            assert!(value("flashledger_shard_snapshots_total", "1").unwrap_or(0.0) >= 1.0);
            assert!(value("flashledger_shard_snapshot_bytes", "1").unwrap_or(0.0) > 0.0);
            let lags = samples
                .iter()
                .filter(|s| s.name == "flashledger_shard_replication_lag_entries" && s.labels["shard"] == "1")
                .count();
            assert_eq!(lags, 2, "the leader has one lag series per peer");
        }
        series_before.push(shard_series(&samples));
    }
    assert_eq!(leaders_of_shard_1, 1, "exactly one node says it leads shard 1");
    for ops in &ops_committed {
        assert!(
            *ops >= writes as f64,
            "every replica counted the {writes} operations: {ops_committed:?}"
        );
    }

    tracing::info!("--- forty more SKUs add no series");
    for n in 0..40 {
        let sku = format!("{}sku-{n}", if n % 2 == 0 { "apple" } else { "zebra" });
        cluster.put_sku(&sku, 5).await;
    }
    for (position, id) in cluster.running_ids().into_iter().enumerate() {
        let samples = parse(&ledger::metrics::scrape::render(cluster.node(id)));
        assert_eq!(shard_series(&samples), series_before[position], "node {id}");
        assert!(samples.len() < 2_000, "node {id}: {} series", samples.len());
    }
    cluster.stop_all().await;
}
