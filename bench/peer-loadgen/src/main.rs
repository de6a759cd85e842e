//! `peer-loadgen`: the flash-sale workload against the systems a shop would use instead of
//! flashledger, for the project's own peer runners (`bench/peers/*.sh`).
//!
//! ```text
//! peer-loadgen redis    --addr 127.0.0.1:6393 --clients 64 --secs 10 [--stock 0]
//! peer-loadgen etcd     --endpoints http://127.0.0.1:23811,... --clients 64 --secs 10
//! peer-loadgen postgres --bin-dir /usr/lib/postgresql/15/bin --port 5435 --clients 64 --secs 10
//! peer-loadgen redis    ... --stock 20000 --clients 256 --until-sold-out --warmup-secs 0 --secs 60
//! ```
//!
//! The workload is the one `flashbench run --workload hot` puts on flashledger: one hot SKU,
//! C closed-loop clients, each buying 1 unit if at least 1 is left and sending its next
//! purchase when the last one is decided. Every run prints one JSON line (the format of the
//! team's earlier `shared/bench/peers` load generator, which `flashbench compare` reads, plus a
//! `runner` field) and then checks for overselling: the final stock must equal the initial
//! stock minus the purchases acknowledged. A run that oversold, or whose stock disagrees with
//! its acknowledgements without an unanswered request to explain it, exits non-zero.
//!
//! Layout: `measure` (the window and each client's tally), `cpu` (CPU use from /proc),
//! `report` (the JSON line and the oversell check), one module per peer (`redis`, `etcd` with
//! its wire messages in `etcd_wire`, `postgres`).

mod cpu;
mod etcd;
mod etcd_wire;
mod measure;
mod postgres;
mod redis;
mod report;

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;

#[derive(Parser)]
#[command(name = "peer-loadgen", about = "Flash-sale load against Redis, etcd and PostgreSQL")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// EVALSHA of a Lua decrement-if-enough over raw RESP, one connection per client.
    Redis(redis::RedisArgs),
    /// Compare-and-swap decrement in a KV Txn, retried with the fresh value on a conflict.
    Etcd(etcd::EtcdArgs),
    /// pgbench running `UPDATE stock SET qty = qty - 1 WHERE sku = 1 AND qty >= 1`.
    Postgres(postgres::PostgresArgs),
}

/// What every run takes.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// Closed-loop clients.
    #[arg(long, default_value_t = 64)]
    pub clients: u64,
    /// Measured seconds, after the warm-up (with --until-sold-out: the most the run may last).
    #[arg(long, default_value_t = 10)]
    pub secs: u64,
    /// Seconds of load before the measurement starts.
    #[arg(long, default_value_t = 1)]
    pub warmup_secs: u64,
    /// Units of the hot SKU at the start (default: more than any run can sell; 0 = a sold-out
    /// storm, every purchase rejected).
    #[arg(long, default_value_t = 1_000_000_000)]
    pub stock: i64,
    /// Stop every client once one sees the SKU sold out (the oversell check).
    #[arg(long)]
    pub until_sold_out: bool,
    /// Label in the JSON line (`flashbench compare` matches peers by it).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Who produced the result, copied into the JSON line.
    #[arg(long, default_value = "flashledger repo bench/peers")]
    pub runner: String,
    /// Server process ids whose CPU use is reported, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Tokio worker threads of the load generator (1, like flashbench's default).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// The longest one request may take before the client counts an error and gives up.
    #[arg(long, default_value_t = 10_000)]
    pub request_timeout_ms: u64,
}

impl RunArgs {
    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.clients >= 1, "--clients must be at least 1");
        anyhow::ensure!(self.secs >= 1, "--secs must be at least 1");
        anyhow::ensure!(self.stock >= 0, "--stock must not be negative");
        anyhow::ensure!(self.threads >= 1, "--threads must be at least 1");
        anyhow::ensure!(self.request_timeout_ms >= 1, "--request-timeout-ms must be at least 1");
        Ok(())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

fn main() -> anyhow::Result<()> {
    let result = match Cli::parse().command {
        Command::Redis(args) => runtime(&args.run)?.block_on(redis::run(&args))?,
        Command::Etcd(args) => runtime(&args.run)?.block_on(etcd::run(&args))?,
        // pgbench is the load generator there; this process only starts it and reads its logs.
        Command::Postgres(args) => {
            args.run.validate()?;
            postgres::run(&args)?
        }
    };
    println!("{}", result.line);
    result.verdict.check()
}

fn runtime(run: &RunArgs) -> anyhow::Result<tokio::runtime::Runtime> {
    run.validate()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(run.threads)
        .enable_all()
        .build()
        .context("starting the runtime")
}
