//! `ledger forecast` and `ledger plan-sale`: before a sale, forecast each SKU's demand from the
//! earlier sales, then plan the splits and leader moves that balance the expected load per node,
//! and with `--apply` carry them out (docs/operations.md, "Before a sale: plan-sale"). The
//! model and the planner live in [`ledger::meta`]; this file reads files, asks the cluster for
//! its shard map and prints.

use std::collections::BTreeSet;
use std::path::Path;
use std::path::PathBuf;

use anyhow::Context;
use anyhow::bail;
use clap::Args;
use flashledger_client::Client;
use ledger::meta::executor::PlanExecutor;
use ledger::meta::executor::ReshapeError;
use ledger::meta::executor::execute;
use ledger::meta::forecast::ALPHA_DEFAULT;
use ledger::meta::forecast::Forecast;
use ledger::meta::forecast::History;
use ledger::meta::forecast::PeakModel;
use ledger::meta::plan::CurrentRange;
use ledger::meta::plan::PlanOptions;
use ledger::meta::plan::PlanStep;
use ledger::meta::plan::SPLITS_MAX_DEFAULT;
use ledger::meta::plan::SalePlan;
use ledger::meta::plan::plan_sale;
use ledger::meta::plan::sku_text;
use ledger::types::NodeId;
use ledger::types::ShardId;
use serde_json::json;

use crate::cli::Target;

/// The largest CSV file read (the forecast module's row bound, at about 200 bytes a row).
const CSV_BYTES_MAX: u64 = 1 << 30;

#[derive(Debug, Args)]
pub struct ForecastArgs {
    /// A history CSV `sale,sku,units`, sales oldest first. Repeat it for the exports of several
    /// Postgres shards: their units add up per sale and SKU.
    #[arg(long, required = true)]
    pub history: Vec<PathBuf>,
    /// Weight of the latest sale in the exponential smoothing, above 0 and at most 1.
    #[arg(long, default_value_t = ALPHA_DEFAULT)]
    pub alpha: f64,
    /// Write the forecast CSV (`sku,units`) here instead of to standard output.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct PlanSaleArgs {
    /// The forecast CSV `sku,units`: expected units per SKU in the sale (`ledger forecast`
    /// writes one; any model may).
    #[arg(long)]
    pub forecast: PathBuf,
    /// The peak lasts this many seconds ...
    #[arg(long, default_value_t = PeakModel::default().peak_seconds)]
    pub peak_seconds: u64,
    /// ... and takes this share of the sale's units, in percent.
    #[arg(long, default_value_t = PeakModel::default().peak_share_percent)]
    pub peak_share_percent: u64,
    /// Ledger operations per unit sold (2: reserve then confirm; more when many buyers are
    /// turned away, each refusal costing an operation).
    #[arg(long, default_value_t = PeakModel::default().ops_per_unit)]
    pub ops_per_unit: f64,
    /// The most expected load one range should carry, in operations per second; default: the
    /// total over (nodes * 2).
    #[arg(long)]
    pub target_ops_per_s: Option<f64>,
    /// The most splits the plan may ask for.
    #[arg(long, default_value_t = SPLITS_MAX_DEFAULT)]
    pub splits_max: usize,
    /// Carry the plan out after printing it. Refused until the cluster can split ranges and
    /// move leaders (issue 15); nothing is applied then.
    #[arg(long)]
    pub apply: bool,
    #[command(flatten)]
    pub target: Target,
}

/// A CSV file as text, refused past [`CSV_BYTES_MAX`].
fn read_csv(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .len();
    if bytes > CSV_BYTES_MAX {
        bail!(
            "{} is {bytes} bytes, more than the {CSV_BYTES_MAX} this command reads",
            path.display()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {} as UTF-8 text", path.display()))
}

pub fn forecast(args: &ForecastArgs) -> anyhow::Result<()> {
    let mut history = History::new();
    for path in &args.history {
        history.add_csv(&path.display().to_string(), &read_csv(path)?)?;
    }
    let forecast = history.forecast(args.alpha)?;
    match &args.out {
        None => print!("{}", forecast.to_csv()),
        Some(out) => {
            std::fs::write(out, forecast.to_csv()).with_context(|| format!("cannot write {}", out.display()))?;
            eprintln!(
                "forecast of {} SKUs from {} sales (alpha {}) written to {}",
                forecast.units().len(),
                history.sales().len(),
                args.alpha,
                out.display()
            );
        }
    }
    Ok(())
}

pub async fn plan(args: &PlanSaleArgs) -> anyhow::Result<()> {
    let forecast = Forecast::parse_csv(&args.forecast.display().to_string(), &read_csv(&args.forecast)?)?;
    let peak = PeakModel {
        peak_seconds: args.peak_seconds,
        peak_share_percent: args.peak_share_percent,
        ops_per_unit: args.ops_per_unit,
    };
    peak.validate()?;
    let demand = forecast.ops_per_second(&peak);

    let client = Client::connect(args.target.addresses()?, args.target.client_options()?).await?;
    let map = client
        .refresh_shard_map()
        .await
        .context("cannot read the cluster's shard map")?;
    let nodes: BTreeSet<u64> = map.nodes().keys().copied().collect();
    let ranges: Vec<CurrentRange> = map
        .shards()
        .iter()
        .map(|shard| CurrentRange {
            shard_id: shard.shard_id,
            start: shard.start.clone(),
            end: shard.end.clone(),
            replicas: shard.replicas.clone(),
            leader: shard.leader,
        })
        .collect();
    let options = PlanOptions {
        target_ops_per_s: args.target_ops_per_s,
        splits_max: args.splits_max,
    };
    let plan = plan_sale(&demand, &ranges, &nodes, &options)?;

    if args.target.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&plan_json(&plan, &peak, nodes.len()))?
        );
    } else {
        print_plan(&plan, &peak, nodes.len(), args.target_ops_per_s.is_some());
    }
    if args.apply {
        let executor = ClusterExecutor {
            target: &args.target,
            credentials: args.target.credentials()?,
        };
        let applied = execute(&plan, &executor).await.context("cannot apply the plan")?;
        if !args.target.json {
            match applied {
                0 => println!("nothing to apply: the plan has no steps"),
                steps => println!("applied {steps} steps"),
            }
        }
    }
    Ok(())
}

fn print_plan(plan: &SalePlan, peak: &PeakModel, nodes: usize, target_given: bool) {
    println!(
        "expected load    {:.1} ops/s at the peak ({} s take {} % of the units, {} ops per unit)",
        plan.total_ops_per_s, peak.peak_seconds, peak.peak_share_percent, peak.ops_per_unit
    );
    let target_from = if target_given {
        "given".to_string()
    } else {
        format!("total / ({nodes} nodes * 2)")
    };
    println!(
        "target           {:.1} ops/s per range ({target_from})",
        plan.target_ops_per_s
    );
    if !plan.uncovered_skus.is_empty() {
        let skus: Vec<String> = plan.uncovered_skus.iter().map(|sku| sku_text(sku)).collect();
        println!("not in any range (left out): {}", skus.join(", "));
    }
    if !plan.hot_skus.is_empty() {
        println!();
        println!("SKUs over the target (a single SKU cannot be split; each gets a range of its own):");
        for hot in &plan.hot_skus {
            println!(
                "  {:<24} {:>10.1} ops/s  (shard {})",
                sku_text(&hot.sku),
                hot.ops_per_s,
                hot.shard_id
            );
        }
    }
    println!();
    if plan.steps.is_empty() {
        println!("steps: none, the cluster is balanced for this forecast");
    } else {
        println!("steps:");
        for (index, step) in plan.steps.iter().enumerate() {
            println!("  {:>3}. {step}", index + 1);
        }
    }
    println!();
    println!("ranges after the plan:");
    let bound = |key: &[u8], unbounded: &str| {
        if key.is_empty() {
            unbounded.to_string()
        } else {
            sku_text(key)
        }
    };
    let leader = |node: Option<u64>| node.map_or("?".to_string(), |node| node.to_string());
    println!(
        "  {:<24} {:<24} {:>7} {:>12}  leader",
        "start", "end", "shard", "load ops/s"
    );
    for range in &plan.ranges {
        let shard = range.shard_id.map_or("new".to_string(), |id| id.to_string());
        let leaders = if range.leader_before == range.leader_after {
            leader(range.leader_after)
        } else {
            format!("{} -> {}", leader(range.leader_before), leader(range.leader_after))
        };
        println!(
            "  {:<24} {:<24} {:>7} {:>12.1}  {leaders}{}",
            bound(&range.start, "(start)"),
            bound(&range.end, "(end)"),
            shard,
            range.load_ops_per_s,
            if range.hot_sku.is_some() { "  hot SKU" } else { "" }
        );
    }
    println!();
    println!("expected load per node (ops/s):");
    println!("  {:>6} {:>12} {:>12}", "node", "before", "after");
    for (node, after) in &plan.load_after {
        let before = plan.load_before.get(node).copied().unwrap_or(0.0);
        println!("  {node:>6} {before:>12.1} {after:>12.1}");
    }
    if plan.load_without_leader_before > 0.0 {
        println!("  {:>6} {:>12.1}", "none", plan.load_without_leader_before);
    }
}

fn plan_json(plan: &SalePlan, peak: &PeakModel, nodes: usize) -> serde_json::Value {
    let text = |sku: &[u8]| String::from_utf8_lossy(sku).into_owned();
    let steps: Vec<_> = plan
        .steps
        .iter()
        .map(|step| match step {
            PlanStep::Split { shard_id, at } => json!({ "op": "split", "shard_id": shard_id, "at": text(at) }),
            PlanStep::TransferLeader { range_start, to_node } => {
                json!({ "op": "transfer_leader", "range_start": text(range_start), "to_node": to_node })
            }
        })
        .collect();
    let ranges: Vec<_> = plan
        .ranges
        .iter()
        .map(|range| {
            json!({
                "start": text(&range.start), "end": text(&range.end),
                "parent_shard_id": range.parent_shard_id, "shard_id": range.shard_id,
                "replicas": range.replicas, "load_ops_per_s": range.load_ops_per_s,
                "hot_sku": range.hot_sku.as_deref().map(text),
                "leader_before": range.leader_before, "leader_after": range.leader_after,
            })
        })
        .collect();
    let load_per_node: Vec<_> = plan
        .load_after
        .iter()
        .map(|(node, after)| {
            json!({ "node": node, "before": plan.load_before.get(node).copied().unwrap_or(0.0), "after": after })
        })
        .collect();
    json!({
        "nodes": nodes,
        "peak": { "peak_seconds": peak.peak_seconds, "peak_share_percent": peak.peak_share_percent,
                  "ops_per_unit": peak.ops_per_unit },
        "total_ops_per_s": plan.total_ops_per_s,
        "target_ops_per_s": plan.target_ops_per_s,
        "hot_skus": plan.hot_skus.iter().map(|hot| json!({
            "sku": text(&hot.sku), "ops_per_s": hot.ops_per_s, "shard_id": hot.shard_id,
        })).collect::<Vec<_>>(),
        "uncovered_skus": plan.uncovered_skus.iter().map(|sku| text(sku)).collect::<Vec<_>>(),
        "steps": steps,
        "ranges": ranges,
        "load_per_node": load_per_node,
        "load_without_leader_before": plan.load_without_leader_before,
    })
}

/// How long `--apply` waits for one split to be done and its new shard led.
const SPLIT_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Carries a plan out on the live cluster through the meta leader (`Cluster/Reshape`).
struct ClusterExecutor<'a> {
    target: &'a crate::cli::Target,
    credentials: flashledger_client::Credentials,
}

impl PlanExecutor for ClusterExecutor<'_> {
    /// Queues the split with the meta leader, then waits until the map records it and the new
    /// shard has a leader (the plan's next steps may move that leadership).
    async fn split(&self, shard_id: ShardId, at: &[u8]) -> Result<ShardId, ReshapeError> {
        use flashledger_proto::v1 as pb;
        let refused = |error: anyhow::Error| ReshapeError::Refused(format!("{error:#}"));
        let change = pb::reshape_request::Change::SplitShard(pb::SplitShard {
            shard_id,
            at: at.to_vec().into(),
        });
        let reply = crate::cli::reshape::send_change(self.target, &self.credentials, change)
            .await
            .map_err(refused)?;
        let step = reply
            .queued
            .first()
            .cloned()
            .ok_or_else(|| ReshapeError::Refused("the meta leader queued no split step".into()))?;
        let deadline = tokio::time::Instant::now() + SPLIT_WAIT;
        loop {
            let map = crate::cli::reshape::fetch_map(self.target, &self.credentials)
                .await
                .map_err(refused)?;
            let queued = map.steps.iter().any(|queued| queued.id == step.id);
            let led = map
                .shards
                .iter()
                .any(|shard| shard.shard_id == step.new_shard_id && shard.leader != 0);
            if !queued && led {
                return Ok(step.new_shard_id);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ReshapeError::Refused(format!(
                    "the split of shard {shard_id} (step {}) did not finish within {SPLIT_WAIT:?}; it stays \
                     queued and completes on its own",
                    step.id
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    async fn transfer_leader(&self, shard_id: ShardId, to: NodeId) -> Result<(), ReshapeError> {
        let change =
            flashledger_proto::v1::reshape_request::Change::TransferLeader(flashledger_proto::v1::TransferLeader {
                shard_id,
                to_node: to,
            });
        crate::cli::reshape::send_change(self.target, &self.credentials, change)
            .await
            .map(|_| ())
            .map_err(|error| ReshapeError::Refused(format!("{error:#}")))
    }
}
