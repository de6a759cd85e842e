//! PostgreSQL: each purchase is one hot-row `UPDATE stock SET qty = qty - 1 WHERE sku = 1 AND
//! qty >= 1` (prepared, autocommit), driven by pgbench, PostgreSQL's own load generator: C
//! connections, each sending its next transaction when the last one committed. This process
//! resets the table, runs pgbench, reads its per-transaction log for the window's rate and
//! latencies, and checks the stock afterwards.
//!
//! A timed run's stock never runs out, so every committed transaction sold one unit: the final
//! stock must be the initial minus the transactions committed. `--until-sold-out` runs enough
//! transactions per client to exhaust the stock with a quarter to spare, each recording its
//! sale in an `orders` table in the same statement; the final stock must be the initial minus
//! the orders recorded. The table has no `CHECK (qty >= 0)`: the `WHERE` is what must hold.

use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use hdrhistogram::Histogram;
use serde_json::Map;
use serde_json::Value;
use serde_json::json;

use crate::RunArgs;
use crate::cpu;
use crate::measure::latency_fields;
use crate::report::Header;
use crate::report::RunResult;
use crate::report::Verdict;

#[derive(clap::Args, Debug, Clone)]
pub struct PostgresArgs {
    /// The directory of pgbench and psql (of the server the runner started).
    #[arg(long)]
    pub bin_dir: PathBuf,
    /// The server's port on 127.0.0.1 (user `postgres`, trust authentication).
    #[arg(long, default_value_t = 5435)]
    pub port: u16,
    /// Where the pgbench script, its output and its per-transaction logs go.
    #[arg(long)]
    pub work_dir: PathBuf,
    // `--pids` are postmasters here: their backends count as server too.
    #[command(flatten)]
    pub run: RunArgs,
}

const TIMED_SCRIPT: &str = "UPDATE stock SET qty = qty - 1 WHERE sku = 1 AND qty >= 1;\n";
const AUDITED_SCRIPT: &str = "WITH sold AS (UPDATE stock SET qty = qty - 1 WHERE sku = 1 AND qty >= 1 RETURNING sku) \
INSERT INTO orders(sku) SELECT sku FROM sold;\n";
const LOG_PREFIX: &str = "pgbench-log";
/// How long pgbench may overrun its planned duration before it is killed.
const OVERRUN_MAX: Duration = Duration::from_secs(60);

pub fn run(args: &PostgresArgs) -> anyhow::Result<RunResult> {
    let run = &args.run;
    std::fs::create_dir_all(&args.work_dir).with_context(|| format!("creating {}", args.work_dir.display()))?;
    let insert = format!("INSERT INTO stock VALUES (1, {})", run.stock);
    psql(
        args,
        &[
            "CREATE TABLE IF NOT EXISTS stock (sku int PRIMARY KEY, qty bigint NOT NULL)",
            "CREATE TABLE IF NOT EXISTS orders (id bigserial PRIMARY KEY, sku int NOT NULL)",
            "TRUNCATE stock, orders",
            &insert,
            "VACUUM ANALYZE stock",
            "CHECKPOINT",
        ],
    )?;
    // Until sold out: enough transactions per client to sell the stock with a quarter to spare.
    let transactions_per_client = run
        .until_sold_out
        .then(|| (run.stock as u64 * 5 / 4).div_ceil(run.clients) + 1);
    remove_logs(&args.work_dir)?;
    let (command, planned) = pgbench_command(args, transactions_per_client)?;
    let command_line = format!("{command:?}");
    let output = args.work_dir.join("pgbench.out");
    let errors = args.work_dir.join("pgbench.err");
    let cpu = run_pgbench(command, &output, &errors, planned, run)?;

    let stdout = std::fs::read_to_string(&output)?;
    let committed = reported_count(&stdout, "number of transactions actually processed:")
        .context("pgbench did not report the transactions it processed")?;
    let failed = reported_count(&stdout, "number of failed transactions:").unwrap_or(0);
    let warmup_secs = if run.until_sold_out {
        0.0
    } else {
        run.warmup_secs as f64
    };
    let measured = read_logs(&args.work_dir, warmup_secs)?;
    let final_stock: i64 = psql(args, &["SELECT qty FROM stock WHERE sku = 1"])?.trim().parse()?;
    let orders: u64 = psql(args, &["SELECT count(*) FROM orders"])?.trim().parse()?;
    // A timed run's stock never runs out: each committed transaction sold one unit.
    let acknowledged = if run.until_sold_out { orders } else { committed };
    let verdict = Verdict {
        initial_stock: run.stock,
        acknowledged,
        final_stock,
        unanswered: 0,
    };

    let mut fields = Map::new();
    let per_second = |count: u64| count as f64 / measured.secs.max(1e-9);
    // In the window: a timed run's transactions were all purchases; a run until sold out is
    // measured whole, and its transactions that recorded no order were rejections.
    let (purchases, rejections) = if run.until_sold_out {
        (orders, committed - orders)
    } else {
        (measured.transactions, 0)
    };
    fields.insert("secs".into(), json!(measured.secs));
    fields.insert("purchases_per_s".into(), json!(per_second(purchases)));
    fields.insert("rejections_per_s".into(), json!(per_second(rejections)));
    fields.insert("attempts_per_s".into(), json!(per_second(measured.transactions)));
    latency_fields(&mut fields, "", &measured.latency);
    fields.insert("ok_total".into(), json!(acknowledged));
    fields.insert("soldout_replies".into(), json!(committed - acknowledged));
    fields.insert("transactions".into(), json!(committed));
    fields.insert("failed_transactions".into(), json!(failed));
    fields.insert("errors".into(), json!(failed));
    fields.insert("transactions_per_client".into(), json!(transactions_per_client));
    fields.insert("pgbench_cmd".into(), json!(command_line));
    let header = Header {
        system: "postgres",
        label: &run.label,
        runner: &run.runner,
        client: "pgbench",
        clients: run.clients,
        stock: run.stock,
    };
    Ok(RunResult::new(&header, vec![fields, cpu.unwrap_or_default()], verdict))
}

/// The pgbench command (its script written to the work directory) and how long it should run:
/// `-T` warm-up + measured seconds, or `-t` transactions per client with `--secs` as the limit.
fn pgbench_command(args: &PostgresArgs, transactions_per_client: Option<u64>) -> anyhow::Result<(Command, Duration)> {
    let run = &args.run;
    let script = args.work_dir.join("purchase.sql");
    let text = if transactions_per_client.is_some() {
        AUDITED_SCRIPT
    } else {
        TIMED_SCRIPT
    };
    std::fs::write(&script, text).with_context(|| format!("writing {}", script.display()))?;
    let mut command = Command::new(args.bin_dir.join("pgbench"));
    command.args(["-h", "127.0.0.1", "-U", "postgres", "-n", "-M", "prepared"]);
    command.args(["-p", &args.port.to_string(), "-c", &run.clients.to_string()]);
    // pgbench's own threads: 2, the machine's cores.
    command.args(["-j", &run.clients.min(2).to_string()]);
    let planned = match transactions_per_client {
        Some(count) => {
            command.args(["-t", &count.to_string()]);
            Duration::from_secs(run.secs)
        }
        None => {
            let total = run.warmup_secs + run.secs;
            command.args(["-T", &total.to_string()]);
            Duration::from_secs(total)
        }
    };
    command.arg("-f").arg(&script).arg("-l").arg("--log-prefix");
    command.arg(args.work_dir.join(LOG_PREFIX)).arg("postgres");
    Ok((command, planned))
}

/// Runs pgbench to its end (killed if it overruns `planned` by more than OVERRUN_MAX). A timed
/// run's CPU is measured from the warm-up to shortly before the planned end, while every
/// backend is alive; a run until sold out ends earlier than planned and reports none.
fn run_pgbench(
    mut command: Command,
    output: &Path,
    errors: &Path,
    planned: Duration,
    run: &RunArgs,
) -> anyhow::Result<Option<Map<String, Value>>> {
    command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(output)?)
        .stderr(std::fs::File::create(errors)?);
    let started = Instant::now();
    let mut child = command.spawn().context("starting pgbench")?;
    let cpu_from = started + Duration::from_secs(run.warmup_secs.max(1));
    let cpu_until = started + planned.saturating_sub(Duration::from_millis(300));
    let deadline = started + planned + OVERRUN_MAX;
    let mut cpu_window = None;
    let mut cpu = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let now = Instant::now();
        if now >= deadline {
            child.kill()?;
            child.wait()?;
            bail!("pgbench ran {OVERRUN_MAX:?} past its planned {planned:?}; killed");
        }
        if !run.until_sold_out && cpu_window.is_none() && now >= cpu_from && now < cpu_until {
            cpu_window = Some(cpu::CpuWindow::start(
                child.id(),
                cpu::Servers::WithChildren(run.pids.clone()),
            ));
        }
        if cpu.is_none() && now >= cpu_until {
            cpu = cpu_window.as_ref().map(cpu::CpuWindow::finish);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if !status.success() {
        let stderr = std::fs::read_to_string(errors).unwrap_or_default();
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        bail!(
            "pgbench failed ({status}):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    Ok(cpu)
}

/// psql with each statement as its own `-c` (VACUUM cannot run inside a transaction block);
/// returns the unaligned output.
fn psql(args: &PostgresArgs, statements: &[&str]) -> anyhow::Result<String> {
    let mut command = Command::new(args.bin_dir.join("psql"));
    command.args([
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
    ]);
    command.args(["-p", &args.port.to_string(), "-d", "postgres"]);
    for statement in statements {
        command.args(["-c", statement]);
    }
    let output = command.stdin(Stdio::null()).output().context("starting psql")?;
    if !output.status.success() {
        bail!(
            "psql {statements:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}

/// The number after `prefix` on its line of pgbench's report ("12345" or "25600/25600").
fn reported_count(report: &str, prefix: &str) -> Option<u64> {
    let line = report.lines().find_map(|line| line.trim().strip_prefix(prefix))?;
    let number: String = line.trim().chars().take_while(char::is_ascii_digit).collect();
    number.parse().ok()
}

fn remove_logs(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with(LOG_PREFIX))
        {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// What the per-transaction logs say about the window.
struct Measured {
    /// Transactions that started after the warm-up.
    transactions: u64,
    /// From the end of the warm-up to the last commit.
    secs: f64,
    latency: Histogram<u64>,
}

/// One log line: `client_id transaction_no latency_us script_no epoch_s epoch_us ...`, the
/// epoch being when the transaction ended. Returns (end in µs since the epoch, latency µs).
fn parse_log_line(line: &str) -> Option<(u64, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let latency: u64 = fields.get(2)?.parse().ok()?;
    let seconds: u64 = fields.get(4)?.parse().ok()?;
    let micros: u64 = fields.get(5)?.parse().ok()?;
    Some((seconds * 1_000_000 + micros, latency))
}

/// Reads every log file of the run; the window starts `warmup_secs` after the first commit.
fn read_logs(dir: &Path, warmup_secs: f64) -> anyhow::Result<Measured> {
    let mut ends = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with(LOG_PREFIX))
        {
            let text = std::fs::read_to_string(&path)?;
            ends.extend(text.lines().filter_map(parse_log_line));
        }
    }
    let first = ends
        .iter()
        .map(|(end, _)| *end)
        .min()
        .context("pgbench logged no transaction")?;
    let last = ends.iter().map(|(end, _)| *end).max().unwrap_or(first);
    let window_start = first + (warmup_secs * 1e6) as u64;
    let mut latency = Histogram::new_with_bounds(1, 120_000_000, 3).expect("static histogram bounds are valid");
    let mut transactions = 0;
    for (end, micros) in ends {
        if end.saturating_sub(micros) >= window_start {
            transactions += 1;
            latency.saturating_record(micros.max(1));
        }
    }
    let secs = last.saturating_sub(window_start) as f64 / 1e6;
    Ok(Measured {
        transactions,
        secs,
        latency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_the_report() {
        let report = "transaction type: x\nnumber of transactions actually processed: 25600/25600\n\
                      number of failed transactions: 0 (0.000%)\n";
        assert_eq!(
            reported_count(report, "number of transactions actually processed:"),
            Some(25600)
        );
        assert_eq!(reported_count(report, "number of failed transactions:"), Some(0));
        assert_eq!(reported_count(report, "latency average ="), None);
    }

    #[test]
    fn log_lines_give_the_end_and_the_latency() {
        assert_eq!(
            parse_log_line("3 17 1250 0 1700000000 250000"),
            Some((1_700_000_000_250_000, 1250))
        );
        assert_eq!(parse_log_line("garbage"), None);
    }
}
