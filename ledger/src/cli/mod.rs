//! Command-line interface of the `ledger` binary: `serve` runs a node; the rest is the
//! operator CLI (status, SKU admin, orders) and the flash-sale demo driver. Output is
//! human-readable by default and JSON with `--json`.

mod flash_sale;
mod orders;
mod serve;
mod shipping_report;
mod status;

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use clap::Parser;
use clap::Subcommand;
use ledger::config::ClusterConfig;

#[derive(Debug, Parser)]
#[command(
    name = "ledger",
    version,
    about = "flashledger: a Raft-replicated inventory ledger for flash sales"
)]
pub struct Command {
    #[command(subcommand)]
    pub action: Action,
}

/// Where the cluster is: the config file's node addresses, or explicit seeds.
#[derive(Debug, Args, Clone)]
pub struct Target {
    /// The cluster config whose node addresses are used as seeds.
    #[arg(long, default_value = "cluster.toml", global = true)]
    pub config: PathBuf,
    /// Comma-separated node addresses (host:port); overrides the config's.
    #[arg(long, value_delimiter = ',', global = true)]
    pub seeds: Vec<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

impl Target {
    /// The node addresses to talk to.
    pub fn addresses(&self) -> anyhow::Result<Vec<String>> {
        if !self.seeds.is_empty() {
            return Ok(self.seeds.clone());
        }
        let config = ClusterConfig::load(&self.config)
            .with_context(|| format!("no --seeds given and {} is not usable", self.config.display()))?;
        Ok(config.nodes.iter().map(|n| n.addr.clone()).collect())
    }

    /// The config file, if it is readable (a `--seeds` run may have none).
    pub fn config(&self) -> Option<ClusterConfig> {
        ClusterConfig::load(&self.config).ok()
    }
}

#[derive(Debug, Subcommand)]
pub enum Action {
    /// Run one node of the cluster described by the config file.
    Serve {
        /// The cluster config (nodes, shards, bounds).
        #[arg(long, default_value = "cluster.toml")]
        config: PathBuf,
        /// This node's id in the config.
        #[arg(long)]
        node: u64,
    },
    /// Per node and shard: leader, term, role, replicas, last log / applied / snapshot index,
    /// state digest and invariant check.
    Status {
        #[command(flatten)]
        target: Target,
    },
    #[command(flatten)]
    Order(orders::OrderCommand),
    /// Run a flash sale against the cluster and check nothing was oversold.
    FlashSale(flash_sale::FlashSaleArgs),
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command.action {
        Action::Serve { config, node } => serve::run(&config, node).await,
        Action::Status { target } => status::run(&target).await,
        Action::Order(order) => orders::run(order).await,
        Action::FlashSale(args) => flash_sale::run(args).await,
    }
}
