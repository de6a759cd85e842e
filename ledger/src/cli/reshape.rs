//! `ledger shard ...` and `ledger node ...`: read the shard map the meta group (shard 0) holds,
//! and change the cluster's shape (add or remove a node, drain one, add, remove or move a
//! replica, hand a shard's leadership to another node). Every change goes to the meta leader,
//! which queues replica changes in the map and carries them out one by one; `--wait` follows
//! them until they are done.

use std::time::Duration;

use anyhow::Context;
use anyhow::bail;
use clap::Args;
use clap::Subcommand;
use flashledger_client::Credentials;
use flashledger_proto::metadata;
use flashledger_proto::v1 as pb;
use flashledger_proto::v1::cluster_client::ClusterClient;
use serde_json::json;

use crate::cli::Target;

#[derive(Debug, Subcommand)]
pub enum ShardCommand {
    /// The shard map: every shard's range, epochs, replicas, learners and leader; the meta
    /// group; the steps queued.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// Give a shard a replica on another node (a learner that catches up, then votes).
    AddReplica(ReplicaArgs),
    /// Take a shard's replica off a node (leadership moves off it first).
    RemoveReplica(ReplicaArgs),
    /// Move a shard's replica from one node to another (add, then remove).
    Move(MoveArgs),
    /// Hand a shard's leadership to another of its voters.
    TransferLeader(TransferArgs),
    /// Split a shard at a SKU: a new shard on the same replicas takes the SKUs from it up
    /// (their stock, orders, holdings and unshipped order events go with them).
    Split(SplitArgs),
    /// Merge two adjacent shards on the same replicas: `--left` (the lower range) takes the
    /// SKUs of `--right`, which ends (their stock, orders, holdings and unshipped order events
    /// go with them).
    Merge(MergeArgs),
    /// Drop a queued step without its change (one that cannot finish, say its node is gone).
    CancelStep {
        #[arg(long)]
        step: u64,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Add a node to the cluster's map (start it with `ledger serve` and a config that lists
    /// it under [[nodes]] but in no [[shards]]): it takes replicas from then on.
    Add {
        #[arg(long)]
        id: u64,
        /// host:port of its gRPC server.
        #[arg(long)]
        addr: String,
        #[command(flatten)]
        target: Target,
    },
    /// Move every replica (and so every leadership) off a node.
    Drain(WaitArgs),
    /// Remove a node that hosts nothing any more (drain it first).
    Remove {
        #[arg(long)]
        id: u64,
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, Args)]
pub struct ReplicaArgs {
    #[arg(long)]
    shard: u64,
    #[arg(long)]
    node: u64,
    #[command(flatten)]
    wait: Wait,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
pub struct MoveArgs {
    #[arg(long)]
    shard: u64,
    #[arg(long)]
    from: u64,
    #[arg(long)]
    to: u64,
    #[command(flatten)]
    wait: Wait,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
pub struct SplitArgs {
    #[arg(long)]
    shard: u64,
    /// The new shard's first SKU; it must lie strictly inside the shard's range.
    #[arg(long)]
    at: String,
    #[command(flatten)]
    wait: Wait,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The shard that stays; its range ends where the right one's starts.
    #[arg(long)]
    left: u64,
    /// The shard that ends.
    #[arg(long)]
    right: u64,
    #[command(flatten)]
    wait: Wait,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
pub struct TransferArgs {
    #[arg(long)]
    shard: u64,
    #[arg(long)]
    to: u64,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    #[arg(long)]
    id: u64,
    #[command(flatten)]
    wait: Wait,
    #[command(flatten)]
    target: Target,
}

#[derive(Debug, Args)]
pub struct Wait {
    /// Wait until the queued steps are done (printing each as it completes).
    #[arg(long)]
    wait: bool,
    /// How long --wait waits before giving up (the steps stay queued).
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
}

pub async fn run_shard(command: ShardCommand) -> anyhow::Result<()> {
    use pb::reshape_request::Change;
    match command {
        ShardCommand::List { target } => list(&target).await,
        ShardCommand::AddReplica(args) => {
            let change = Change::AddReplica(pb::ReplicaChange {
                shard_id: args.shard,
                node_id: args.node,
            });
            change_and_wait(&args.target, change, &args.wait).await
        }
        ShardCommand::RemoveReplica(args) => {
            let change = Change::RemoveReplica(pb::ReplicaChange {
                shard_id: args.shard,
                node_id: args.node,
            });
            change_and_wait(&args.target, change, &args.wait).await
        }
        ShardCommand::Move(args) => {
            let change = Change::MoveReplica(pb::MoveReplica {
                shard_id: args.shard,
                from_node: args.from,
                to_node: args.to,
            });
            change_and_wait(&args.target, change, &args.wait).await
        }
        ShardCommand::TransferLeader(args) => {
            let change = Change::TransferLeader(pb::TransferLeader {
                shard_id: args.shard,
                to_node: args.to,
            });
            change_and_wait(&args.target, change, &Wait::none()).await
        }
        ShardCommand::Split(args) => {
            let change = Change::SplitShard(pb::SplitShard {
                shard_id: args.shard,
                at: args.at.into_bytes().into(),
            });
            change_and_wait(&args.target, change, &args.wait).await
        }
        ShardCommand::Merge(args) => {
            let change = Change::MergeShards(pb::MergeShards {
                left_shard_id: args.left,
                right_shard_id: args.right,
            });
            change_and_wait(&args.target, change, &args.wait).await
        }
        ShardCommand::CancelStep { step, target } => {
            change_and_wait(&target, Change::CancelStep(step), &Wait::none()).await
        }
    }
}

pub async fn run_node(command: NodeCommand) -> anyhow::Result<()> {
    use pb::reshape_request::Change;
    match command {
        NodeCommand::Add { id, addr, target } => {
            let change = Change::AddNode(pb::AddNode {
                node_id: id,
                addr: addr.into_bytes().into(),
            });
            change_and_wait(&target, change, &Wait::none()).await
        }
        NodeCommand::Drain(args) => change_and_wait(&args.target, Change::DrainNode(args.id), &args.wait).await,
        NodeCommand::Remove { id, target } => change_and_wait(&target, Change::RemoveNode(id), &Wait::none()).await,
    }
}

impl Wait {
    fn none() -> Wait {
        Wait {
            wait: false,
            timeout_s: 0,
        }
    }
}

/// The shard map from the first node of the target (`--seeds` or the config) that answers.
pub(crate) async fn fetch_map(target: &Target, credentials: &Credentials) -> anyhow::Result<pb::ShardMapReply> {
    let mut last_error = None;
    for addr in target.addresses()? {
        match ask_map(&addr, credentials).await {
            Ok(map) => return Ok(map),
            Err(error) => last_error = Some(format!("{addr}: {error}")),
        }
    }
    bail!(
        "no node answered with the shard map ({})",
        last_error.unwrap_or_else(|| "no address".into())
    )
}

async fn ask_map(addr: &str, credentials: &Credentials) -> Result<pb::ShardMapReply, String> {
    let channel = flashledger_client::node_channel(addr, Duration::from_secs(2), credentials)?;
    let mut client = ClusterClient::new(channel);
    let reply = tokio::time::timeout(Duration::from_secs(5), client.shard_map(pb::ShardMapRequest {}))
        .await
        .map_err(|_| "no answer in 5 s".to_string())?
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    Ok(reply.into_inner())
}

/// Sends `change` to the meta leader, following `x-leader-addr` and riding out an election.
pub async fn send_change(
    target: &Target,
    credentials: &Credentials,
    change: pb::reshape_request::Change,
) -> anyhow::Result<pb::ReshapeReply> {
    let map = fetch_map(target, credentials).await?;
    let address_of = |id: u64| map.nodes.iter().find(|n| n.id == id).map(|n| n.addr.clone());
    let mut addr = map
        .meta
        .as_ref()
        .and_then(|meta| address_of(meta.leader))
        .or_else(|| map.nodes.first().map(|n| n.addr.clone()))
        .context("the shard map names no node")?;
    let request = pb::ReshapeRequest { change: Some(change) };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let channel = flashledger_client::node_channel(&addr, Duration::from_secs(2), credentials)
            .map_err(|e| anyhow::anyhow!("{addr}: {e}"))?;
        let mut client = ClusterClient::new(channel);
        match client.reshape(request.clone()).await {
            Ok(reply) => return Ok(reply.into_inner()),
            Err(status) if status.code() == tonic::Code::Unavailable && tokio::time::Instant::now() < deadline => {
                if let Some(leader) = status
                    .metadata()
                    .get(metadata::LEADER_ADDR)
                    .and_then(|value| value.to_str().ok())
                {
                    addr = leader.to_string();
                } else {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
            Err(status) => bail!("{:?}: {}", status.code(), status.message()),
        }
    }
}

/// Sends `change` to the meta leader, then with `--wait` follows the steps it queued until
/// they are done.
async fn change_and_wait(target: &Target, change: pb::reshape_request::Change, wait: &Wait) -> anyhow::Result<()> {
    let credentials = target.credentials()?;
    let reply = send_change(target, &credentials, change).await?;
    let queued: Vec<u64> = reply.queued.iter().map(|step| step.id).collect();
    if target.json && !wait.wait {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "version": reply.version,
                "queued": reply.queued.iter().map(step_json).collect::<Vec<_>>(),
            }))?
        );
        return Ok(());
    }
    if !target.json {
        println!("done: shard map version {}", reply.version);
        for step in &reply.queued {
            println!("queued: {}", step_text(step));
        }
    }
    if !wait.wait || queued.is_empty() {
        return Ok(());
    }
    let started = tokio::time::Instant::now();
    let timeout = Duration::from_secs(wait.timeout_s);
    let mut pending = queued.clone();
    while !pending.is_empty() {
        if started.elapsed() > timeout {
            bail!("steps {pending:?} are not done after {timeout:?}; they stay queued (ledger shard list)");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(map) = fetch_map(target, &credentials).await else {
            continue;
        };
        let still: Vec<u64> = pending
            .iter()
            .copied()
            .filter(|id| map.steps.iter().any(|step| step.id == *id))
            .collect();
        for done in pending.iter().filter(|id| !still.contains(id)) {
            // A split or merge the shard's log refused leaves the queue too, cancelled: the map
            // tells which (a done one added or removed a shard).
            if let Some(step) = reply.queued.iter().find(|step| step.id == *done) {
                let has = |shard_id: u64| map.shards.iter().any(|shard| shard.shard_id == shard_id);
                let refused = match step.change.as_str() {
                    "split" => !has(step.new_shard_id),
                    "merge" => has(step.merge_right_shard_id),
                    _ => false,
                };
                if refused {
                    bail!(
                        "{}: refused by the shard, nothing changed (the meta leader's log says why)",
                        step_text(step)
                    );
                }
            }
            if !target.json {
                println!("step {done} done after {:.1} s", started.elapsed().as_secs_f64());
            }
        }
        pending = still;
    }
    if target.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "version": reply.version,
                "queued": reply.queued.iter().map(step_json).collect::<Vec<_>>(),
                "done_after_s": started.elapsed().as_secs_f64(),
            }))?
        );
    }
    Ok(())
}

async fn list(target: &Target) -> anyhow::Result<()> {
    let map = fetch_map(target, &target.credentials()?).await?;
    if target.json {
        println!("{}", serde_json::to_string_pretty(&map_json(&map))?);
        return Ok(());
    }
    println!("shard map version {}", map.version);
    println!("nodes:");
    for node in &map.nodes {
        let draining = if map.draining.contains(&node.id) {
            " (draining)"
        } else {
            ""
        };
        println!("  {:>3}  {}{draining}", node.id, node.addr);
    }
    println!("shard  range                    epoch conf_ver leader  replicas      learners");
    if let Some(meta) = &map.meta {
        println!(
            "{:>5}  {:<24} {:>5} {:>8} {:>6}  {:<13} {:?}",
            0,
            "(meta group)",
            meta.epoch,
            meta.conf_ver,
            meta.leader,
            format!("{:?}", meta.replicas),
            meta.learners
        );
    }
    for shard in &map.shards {
        let range = format!(
            "[{:?}, {})",
            String::from_utf8_lossy(&shard.start),
            if shard.end.is_empty() {
                "∞".to_string()
            } else {
                format!("{:?}", String::from_utf8_lossy(&shard.end))
            }
        );
        println!(
            "{:>5}  {:<24} {:>5} {:>8} {:>6}  {:<13} {:?}",
            shard.shard_id,
            range,
            shard.epoch,
            shard.conf_ver,
            shard.leader,
            format!("{:?}", shard.replicas),
            shard.learners
        );
    }
    if map.steps.is_empty() {
        println!("no steps queued");
    }
    for step in &map.steps {
        println!("queued: {}", step_text(step));
    }
    Ok(())
}

fn step_text(step: &pb::ReshapeStep) -> String {
    match step.change.as_str() {
        "add" => format!("step {}: add node {} to shard {}", step.id, step.node_id, step.shard_id),
        "split" => format!(
            "step {}: split shard {} at {:?} into shard {}",
            step.id,
            step.shard_id,
            String::from_utf8_lossy(&step.split_at),
            step.new_shard_id
        ),
        "merge" => format!(
            "step {}: merge shard {} into shard {}",
            step.id, step.merge_right_shard_id, step.shard_id
        ),
        _ => format!(
            "step {}: remove node {} from shard {}",
            step.id, step.node_id, step.shard_id
        ),
    }
}

fn step_json(step: &pb::ReshapeStep) -> serde_json::Value {
    let mut json = json!({ "id": step.id, "shard_id": step.shard_id, "change": step.change, "node_id": step.node_id });
    if step.change == "split" {
        json["split_at"] = json!(String::from_utf8_lossy(&step.split_at));
        json["new_shard_id"] = json!(step.new_shard_id);
    }
    if step.change == "merge" {
        json["merge_right_shard_id"] = json!(step.merge_right_shard_id);
    }
    json
}

fn shard_json(shard: &pb::ShardInfo) -> serde_json::Value {
    json!({
        "shard_id": shard.shard_id,
        "start": String::from_utf8_lossy(&shard.start),
        "end": String::from_utf8_lossy(&shard.end),
        "epoch": shard.epoch,
        "conf_ver": shard.conf_ver,
        "replicas": shard.replicas,
        "learners": shard.learners,
        "leader": shard.leader,
    })
}

pub fn map_json(map: &pb::ShardMapReply) -> serde_json::Value {
    json!({
        "version": map.version,
        "nodes": map.nodes.iter().map(|n| json!({
            "id": n.id,
            "addr": n.addr,
            "draining": map.draining.contains(&n.id),
        })).collect::<Vec<_>>(),
        "meta": map.meta.as_ref().map(shard_json),
        "shards": map.shards.iter().map(shard_json).collect::<Vec<_>>(),
        "steps": map.steps.iter().map(step_json).collect::<Vec<_>>(),
    })
}
