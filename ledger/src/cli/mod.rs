//! Command-line interface of the `ledger` binary.

mod serve;

use std::path::PathBuf;

use clap::Parser;
use clap::Subcommand;

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
}

pub async fn run(command: Command) -> anyhow::Result<()> {
    match command.action {
        Action::Serve { config, node } => serve::run(&config, node).await,
    }
}
