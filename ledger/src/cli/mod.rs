//! Command-line interface of the `ledger` binary: `serve` runs a node; the rest is the
//! operator CLI (status, SKU admin, orders, backups, the pre-sale plan) and the flash-sale demo
//! driver. Output is human-readable by default and JSON with `--json`.

mod backup;
mod flash_sale;
mod orders;
pub(crate) mod reshape;
mod sale_plan;
mod serve;
mod shipping_report;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use clap::Parser;
use clap::Subcommand;
use flashledger_client::ClientOptions;
use flashledger_client::Credentials;
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
    /// The cluster's CA certificate (PEM): talk TLS and verify the nodes with it. Default: the
    /// config's `security.ca_file`, unless the config says `insecure = true`.
    #[arg(long, env = "FLASHLEDGER_CA", global = true)]
    pub ca: Option<PathBuf>,
    /// A bearer token (prefer FLASHLEDGER_TOKEN or --token-file: a flag shows in `ps`).
    #[arg(
        long,
        env = "FLASHLEDGER_TOKEN",
        global = true,
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// A file holding the bearer token.
    #[arg(long, env = "FLASHLEDGER_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// A client certificate (PEM) naming a role, instead of or beside a token; needs --key.
    #[arg(long, env = "FLASHLEDGER_CERT", global = true, requires = "key")]
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "FLASHLEDGER_KEY", global = true, requires = "cert")]
    pub key: Option<PathBuf>,
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

    /// What the CLI proves itself with: the CA (flag, else the config's), the token (flag,
    /// environment or file) and the client certificate, read now so a missing file is named.
    pub fn credentials(&self) -> anyhow::Result<Credentials> {
        let read = |path: &PathBuf, what: &str| {
            std::fs::read(path).with_context(|| format!("cannot read the {what} {}", path.display()))
        };
        let ca_file = match &self.ca {
            Some(ca) => Some(ca.clone()),
            None => self
                .config()
                .filter(|config| !config.security.insecure)
                .and_then(|config| config.security.ca_file),
        };
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(file)) => {
                Some(String::from_utf8(read(file, "token file")?).context("the token file is not text")?)
            }
            (None, None) => None,
        };
        let client_cert = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some((read(cert, "client certificate")?, read(key, "client key")?)),
            _ => None,
        };
        Ok(Credentials {
            ca_pem: ca_file.map(|file| read(&file, "CA certificate")).transpose()?,
            client_cert,
            token: token.map(|token| token.trim().to_string()),
        })
    }

    /// Client options carrying [`Target::credentials`].
    pub fn client_options(&self) -> anyhow::Result<ClientOptions> {
        Ok(ClientOptions {
            credentials: self.credentials()?,
            ..ClientOptions::default()
        })
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
    ///
    /// Exit status: 0 when every node answered; 2 when some did not (the others are still
    /// printed); 1 when none did (the cluster is unreachable) or on any other error.
    Status {
        #[command(flatten)]
        target: Target,
    },
    #[command(flatten)]
    Order(orders::OrderCommand),
    /// Back up every shard of a live cluster into a new directory: each shard's state at the
    /// index its leader reached, with a manifest (docs/operations.md, "Backup and restore").
    /// Writes pause only for a fork of each shard's state.
    Backup(backup::BackupArgs),
    /// Seed the empty data directories of a new cluster (`--config`, other addresses allowed,
    /// the same shards) from a backup; then start its nodes with `ledger serve`. Everything is
    /// checked before anything is written.
    Restore(backup::RestoreArgs),
    /// Run a flash sale against the cluster and check nothing was oversold.
    FlashSale(flash_sale::FlashSaleArgs),
    /// The shard map (shard 0, the meta group) and changes of shards' replicas and leaders.
    #[command(subcommand)]
    Shard(reshape::ShardCommand),
    /// Add, drain and remove nodes.
    #[command(subcommand)]
    Node(reshape::NodeCommand),
    /// Forecast each SKU's units in the next sale from earlier sales (exponential smoothing);
    /// writes the CSV `sku,units` that `plan-sale` reads (docs/operations.md, "Before a sale").
    Forecast(sale_plan::ForecastArgs),
    /// Plan the splits and leader moves that balance a sale's expected load per node, from a
    /// forecast and the cluster's shard map; print it, and carry it out with --apply.
    PlanSale(sale_plan::PlanSaleArgs),
}

/// Runs `command`; the exit status is `SUCCESS` unless the command says otherwise (`status`).
pub async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let done = |()| ExitCode::SUCCESS;
    match command.action {
        Action::Serve { config, node } => serve::run(&config, node).await.map(done),
        Action::Status { target } => status::run(&target).await,
        Action::Order(order) => orders::run(order).await.map(done),
        Action::FlashSale(args) => flash_sale::run(args).await.map(done),
        Action::Backup(args) => backup::backup(&args).await,
        Action::Restore(args) => backup::restore(&args),
        Action::Shard(command) => reshape::run_shard(command).await.map(done),
        Action::Node(command) => reshape::run_node(command).await.map(done),
        Action::Forecast(args) => sale_plan::forecast(&args).map(done),
        Action::PlanSale(args) => sale_plan::plan(&args).await.map(done),
    }
}
