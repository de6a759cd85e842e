//! `ledger status`: asks every node for the state of the shards it hosts.

use std::process::ExitCode;

use flashledger_proto::v1::StatusReply;
use flashledger_proto::v1::StatusRequest;
use flashledger_proto::v1::cluster_client::ClusterClient;
use std::time::Duration;

use flashledger_client::Credentials;
use serde_json::json;

use crate::cli::Target;

const HEADER: &str = "node                   shard leader    term role         last_log    applied   snapshot  skus \
                      digest             invariant ship_lag_events ship_lag_s";

/// One node's answer, or why it could not be reached.
pub struct NodeStatus {
    pub addr: String,
    pub reply: Result<StatusReply, String>,
}

pub async fn fetch_all(addresses: &[String], credentials: &Credentials) -> Vec<NodeStatus> {
    let mut statuses = Vec::new();
    for addr in addresses {
        statuses.push(NodeStatus {
            addr: addr.clone(),
            reply: fetch(addr, credentials).await,
        });
    }
    statuses
}

async fn fetch(addr: &str, credentials: &Credentials) -> Result<StatusReply, String> {
    let channel = flashledger_client::node_channel(addr, Duration::from_secs(2), credentials)?;
    let mut client = ClusterClient::new(channel);
    let reply = tokio::time::timeout(Duration::from_secs(5), client.status(StatusRequest {}))
        .await
        .map_err(|_| "unreachable: no answer in 5 s".to_string())?
        .map_err(|s| match s.code() {
            tonic::Code::Unavailable => format!("unreachable: {}", s.message()),
            _ => format!("{:?}: {}", s.code(), s.message()),
        })?;
    Ok(reply.into_inner())
}

/// Prints every node's answer; the exit status says whether they all answered (see the
/// `status` command's help): a health check must not read an unreachable cluster as success.
pub async fn run(target: &Target) -> anyhow::Result<ExitCode> {
    let credentials = target.credentials()?;
    let addresses = with_map_nodes(target.addresses()?, &credentials).await;
    let statuses = fetch_all(&addresses, &credentials).await;
    if target.json {
        let nodes: Vec<_> = statuses.iter().map(status_json).collect();
        println!("{}", serde_json::to_string_pretty(&json!({ "nodes": nodes }))?);
    } else {
        print_table(&statuses);
    }
    let silent = statuses.iter().filter(|status| status.reply.is_err()).count();
    if silent == 0 {
        return Ok(ExitCode::SUCCESS);
    }
    if silent == statuses.len() {
        eprintln!("error: no node answered: the cluster is unreachable");
        return Ok(ExitCode::from(EXIT_UNREACHABLE));
    }
    eprintln!("warning: {silent} of {} nodes did not answer", statuses.len());
    Ok(ExitCode::from(EXIT_SOME_SILENT))
}

/// `addresses` and every node the shard map (the meta group's) names: nodes added after
/// bootstrap are in the map, not in the config file.
pub async fn with_map_nodes(mut addresses: Vec<String>, credentials: &Credentials) -> Vec<String> {
    for addr in addresses.clone() {
        let Ok(channel) = flashledger_client::node_channel(&addr, Duration::from_secs(2), credentials) else {
            continue;
        };
        let mut client = ClusterClient::new(channel);
        let request = client.shard_map(flashledger_proto::v1::ShardMapRequest {});
        if let Ok(Ok(reply)) = tokio::time::timeout(Duration::from_secs(5), request).await {
            for node in reply.into_inner().nodes {
                if !addresses.contains(&node.addr) {
                    addresses.push(node.addr);
                }
            }
            break;
        }
    }
    addresses
}

/// Exit status when no node answered (the same as any other error of the CLI).
const EXIT_UNREACHABLE: u8 = 1;
/// Exit status when some nodes answered and some did not.
const EXIT_SOME_SILENT: u8 = 2;

fn print_table(statuses: &[NodeStatus]) {
    println!("{HEADER}");
    for status in statuses {
        match &status.reply {
            Err(error) => println!("{:<22} {error}", status.addr),
            Ok(reply) => {
                for shard in &reply.shards {
                    println!(
                        "{:<22} {:>5} {:>6} {:>7} {:<10} {:>10} {:>10} {:>10} {:>5} {:<18} {:<9} {:>15} {:>10.1}",
                        format!("{} ({})", reply.node_id, status.addr),
                        shard.shard_id,
                        shard.leader,
                        shard.term,
                        shard.role,
                        shard.last_log_index,
                        shard.applied_index,
                        shard.snapshot_index,
                        shard.sku_count,
                        format!("{:016x}", shard.state_digest),
                        if shard.invariant_ok { "ok" } else { "BROKEN" },
                        shard.shipping_lag_events,
                        shard.shipping_lag_seconds,
                    );
                }
                if let Some(admission) = &reply.admission {
                    println!(
                        "{:<22} admission: {} ops in flight; shed {} premium, {} standard, {} background; \
                         {} late, {} rate-limited ops, {} buckets",
                        format!("{} ({})", reply.node_id, status.addr),
                        admission.inflight_ops,
                        admission.shed_premium,
                        admission.shed_standard,
                        admission.shed_background,
                        admission.late_requests,
                        admission.rate_limited_ops,
                        admission.rate_limit_keys,
                    );
                }
            }
        }
    }
}

fn status_json(status: &NodeStatus) -> serde_json::Value {
    match &status.reply {
        Err(error) => json!({ "addr": status.addr, "error": error }),
        Ok(reply) => json!({
            "addr": status.addr,
            "node_id": reply.node_id,
            "shards": reply.shards.iter().map(|s| json!({
                "shard_id": s.shard_id,
                "leader": s.leader,
                "term": s.term,
                "role": s.role,
                "replicas": s.replicas,
                "last_log_index": s.last_log_index,
                "applied_index": s.applied_index,
                "snapshot_index": s.snapshot_index,
                "sku_count": s.sku_count,
                "state_digest": format!("{:016x}", s.state_digest),
                "invariant_ok": s.invariant_ok,
                "shipping_lag_events": s.shipping_lag_events,
                "shipping_lag_seconds": s.shipping_lag_seconds,
                "shipped_by": s.shipped_by,
                "inflight_ops": s.inflight_ops,
            })).collect::<Vec<_>>(),
            "admission": reply.admission.as_ref().map(|a| json!({
                "inflight_ops": a.inflight_ops,
                "shed_premium": a.shed_premium,
                "shed_standard": a.shed_standard,
                "shed_background": a.shed_background,
                "late_requests": a.late_requests,
                "rate_limited_ops": a.rate_limited_ops,
                "rate_limit_keys": a.rate_limit_keys,
            })),
        }),
    }
}
