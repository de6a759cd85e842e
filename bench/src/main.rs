//! `flashbench`: load generator for a running flashledger cluster, and the table that puts it
//! beside the peers.
//!
//! ```text
//! flashbench run --workload hot --mode independent --clients 64 --secs 10
//! flashbench run --workload hot --mode service --services 2 --clients 256 --secs 10
//! flashbench run --workload hot --sold-out --mode service --clients 256
//! flashbench run --workload reads --linearizable --clients 64
//! flashbench run --workload black-friday --scale 100 --mode service --clients 256
//! flashbench run --workload black-friday --scale 100 --mode service --clients 256 --cache
//! flashbench run --workload hot --rate 20000 --clients 512      # open loop
//! flashbench run --workload hot --rate 60000 --clients 4096 --premium-percent 10   # overload
//! flashbench compare results/*.jsonl
//! ```

mod cached;
mod compare;
mod driver;
mod report;
mod workload;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use clap::Subcommand;

#[derive(Parser)]
#[command(name = "flashbench", about = "Load generator for flashledger")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive the cluster and write the result (JSON, Markdown, PNG).
    Run(Box<RunArgs>),
    /// Print one Markdown table of JSON-line results, with flashledger's ratio to each peer.
    Compare {
        /// JSON-line files (peers' results and `flashbench run --jsonl` output).
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Node addresses (host:port), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103"
    )]
    seeds: Vec<String>,
    /// The cluster's CA certificate (PEM): talk TLS (a secured cluster, as cluster.toml's).
    #[arg(long, env = "FLASHLEDGER_CA")]
    ca: Option<PathBuf>,
    /// A file holding the bearer token (buyer-service or admin; admin puts the SKUs on sale).
    #[arg(long, env = "FLASHLEDGER_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "hot")]
    workload: workload::WorkloadKind,
    #[arg(long, value_enum, default_value = "independent")]
    mode: driver::Mode,
    /// Concurrent callers (closed loop), or the most operations in flight (open loop).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Service mode: how many clients (service processes) the callers share.
    #[arg(long, default_value_t = 2)]
    services: usize,
    /// Open loop at this many operations per second (default: closed loop).
    #[arg(long)]
    rate: Option<u64>,
    /// Measured seconds (after the warm-up). Black Friday runs until its plan is done.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    #[arg(long, default_value_t = 1)]
    warmup_secs: u64,
    /// SKUs of the zipf and reads workloads.
    #[arg(long, default_value_t = 1_000)]
    skus: usize,
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// Units per SKU (default: never sells out; Black Friday: flash-sale stock).
    #[arg(long)]
    stock: Option<i64>,
    /// Put the SKUs on sale with no stock: every purchase is a sold-out rejection.
    #[arg(long)]
    sold_out: bool,
    /// Reads are linearizable (default: stale, up to 1 000 entries behind).
    #[arg(long)]
    linearizable: bool,
    /// Black Friday scale divisor (100 = 1/100 of 5M orders and 500M reads).
    #[arg(long, default_value_t = 100)]
    scale: u64,
    /// Service mode: operations per Batch RPC.
    #[arg(long, default_value_t = 64)]
    coalesce_ops_max: usize,
    /// Service mode: Batch RPCs per shard in flight per client (the client library's default).
    #[arg(long, default_value_t = flashledger_client::ClientOptions::default().coalesce_inflight_max)]
    coalesce_inflight_max: usize,
    /// Tokio worker threads of the load generator (the peers' load generator uses 1).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Label in the results (default: derived from the options).
    #[arg(long)]
    label: Option<String>,
    /// Directory for the JSON, Markdown and PNG.
    #[arg(long, default_value = "target/flashbench")]
    out_dir: PathBuf,
    /// Also append the result as one JSON line to this file (for `compare`).
    #[arg(long)]
    jsonl: Option<PathBuf>,
    #[arg(long)]
    no_progress: bool,
    /// Write the Unix-ms time of every successful answer to this file, one per line (failover
    /// measurements: the gap after a leader is killed).
    #[arg(long)]
    success_log: Option<PathBuf>,
    /// Stop after this many operations (instead of --secs); the run is measured whole.
    #[arg(long)]
    ops: Option<u64>,
    /// Percent of operations sent at PREMIUM priority (the rest: writes STANDARD, reads
    /// BACKGROUND); the report splits admitted and shed operations by class.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=100))]
    premium_percent: u64,
    /// Closed loop: after a shed or rate-limited answer, a caller waits the node's retry-after
    /// before its next operation (default: it sends at once, a retry storm).
    #[arg(long)]
    honor_retry_after: bool,
    /// Serve product-page (stale) reads from a Watch-fed stock cache per shard, and report the
    /// caches' lag behind the leader's commit (p50/p99, sampled every 5 ms).
    #[arg(long)]
    cache: bool,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Compare { files } => {
            print!("{}", compare::table(&files)?);
            Ok(())
        }
        Command::Run(args) => run(*args),
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    if args.clients == 0 {
        anyhow::bail!("--clients must be at least 1");
    }
    let label = args.label.clone().unwrap_or_else(|| {
        let mut label = format!("{:?} {:?}", args.workload, args.mode).to_lowercase();
        if args.sold_out {
            label += " sold-out";
        }
        if args.workload == workload::WorkloadKind::Reads {
            label += if args.linearizable { " linearizable" } else { " stale" };
        }
        if let Some(rate) = args.rate {
            label += &format!(" open {rate}/s");
        }
        if args.cache {
            label += " cached";
        }
        label
    });
    let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("cannot read {}", path.display()));
    let credentials = flashledger_client::Credentials {
        ca_pem: args.ca.as_ref().map(read).transpose()?,
        client_cert: None,
        token: match &args.token_file {
            Some(file) => Some(String::from_utf8_lossy(&read(file)?).trim().to_string()),
            None => None,
        },
    };
    let config = driver::RunConfig {
        seeds: args.seeds.clone(),
        credentials,
        workload: args.workload,
        mode: args.mode,
        clients: args.clients,
        services: args.services,
        rate: args.rate,
        duration: Duration::from_secs(args.secs),
        warmup: Duration::from_secs(args.warmup_secs),
        skus: args.skus,
        zipf_s: args.zipf_s,
        stock: if args.sold_out { Some(0) } else { args.stock },
        linearizable_reads: args.linearizable,
        scale: args.scale,
        coalesce_ops_max: args.coalesce_ops_max,
        coalesce_inflight_max: args.coalesce_inflight_max,
        progress: !args.no_progress,
        log_successes: args.success_log.is_some(),
        ops_max: args.ops,
        premium_percent: args.premium_percent,
        honor_retry_after: args.honor_retry_after,
        cache: args.cache,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let measured = runtime.block_on(driver::run(config.clone()))?;
    if let Some(path) = &args.success_log {
        let lines: String = measured.successes.iter().map(|ms| format!("{ms}\n")).collect();
        std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
    }
    let result = report::result_json(&label, &config, &measured, true);
    let name: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let markdown = report::write_all(&args.out_dir, &format!("{name}-c{}", args.clients), &label, &result)?;
    let line = report::result_json(&label, &config, &measured, false);
    println!("{line}");
    if let Some(path) = &args.jsonl {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("opening {}", path.display()))?;
        writeln!(file, "{line}")?;
    }
    driver::print_errors_seen();
    eprintln!("flashbench: report {}", markdown.display());
    Ok(())
}
