//! `flashledger-sim`: runs seeds of the deterministic simulation and reports each verdict.
//!
//! ```text
//! flashledger-sim --seed 7                 # one seed, with its fault log
//! flashledger-sim --seed 1 --count 100     # seeds 1..=100, one line each
//! flashledger-sim --seed 7 --plant ack-before-durable
//! flashledger-sim --seed 7 --check-determinism
//! ```
//! Exits 1 when any seed failed, 2 on bad arguments.

#[cfg(not(madsim))]
fn main() {
    eprintln!("flashledger-sim runs only in the simulator: RUSTFLAGS=\"--cfg madsim\" cargo run -p flashledger-sim");
    std::process::exit(2);
}

#[cfg(madsim)]
fn main() {
    use flashledger_sim::scenario;
    use ledger::simulation::PlantedBug;

    let usage = "usage: flashledger-sim --seed N [--count N] [--nodes 3|5] [--plant BUG] [--admission drawn|tight|defaults] [--safety-ms N] [--verbose] [--history SKU] [--check-determinism] [--no-placement]";
    let mut args = std::env::args().skip(1);
    let mut seed = 1u64;
    let mut count = 1u64;
    let mut verbose = false;
    let mut check_determinism = false;
    let mut history_sku: Option<String> = None;
    let mut options = scenario::SimOptions::default();
    let fail = |message: String| -> ! {
        eprintln!("{message}\n{usage}");
        std::process::exit(2);
    };
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| fail(format!("{name} needs a value")));
        let number = |name: &str, text: String| -> u64 {
            text.parse()
                .unwrap_or_else(|_| fail(format!("{name}: {text:?} is not a number")))
        };
        match arg.as_str() {
            "--seed" => seed = number("--seed", value("--seed")),
            "--count" => count = number("--count", value("--count")),
            "--nodes" => match number("--nodes", value("--nodes")) {
                n @ (3 | 5) => options.nodes = Some(n as usize),
                n => fail(format!("--nodes: {n}, must be 3 or 5")),
            },
            "--plant" => {
                let name = value("--plant");
                let bug = PlantedBug::from_name(&name).unwrap_or_else(|| {
                    let known: Vec<&str> = PlantedBug::ALL.iter().map(|b| b.name()).collect();
                    fail(format!("--plant: unknown bug {name:?}; known: {}", known.join(", ")))
                });
                options.bug = Some(bug);
            }
            "--admission" => {
                let name = value("--admission");
                options.admission = scenario::AdmissionPlan::from_name(&name)
                    .unwrap_or_else(|| fail(format!("--admission: {name:?}, must be drawn, tight or defaults")));
            }
            "--safety-ms" => {
                options.safety_phase = std::time::Duration::from_millis(number("--safety-ms", value("--safety-ms")))
            }
            "--verbose" => verbose = true,
            "--no-placement" => options.placement = false,
            "--history" => history_sku = Some(value("--history")),
            "--check-determinism" => check_determinism = true,
            "--help" | "-h" => {
                println!("{usage}");
                return;
            }
            other => fail(format!("unknown argument {other:?}")),
        }
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .init();
    }
    let mut failed = Vec::new();
    for seed in seed..seed.saturating_add(count) {
        let report = scenario::run_seed(seed, &options);
        let mut verdict_failures = report.failures.clone();
        if check_determinism && report.passed() {
            let again = scenario::run_seed(seed, &options);
            if again.trace_digest != report.trace_digest {
                verdict_failures.push((
                    "determinism".into(),
                    format!("trace digest {:#x} then {:#x}", report.trace_digest, again.trace_digest),
                ));
            }
        }
        if verdict_failures.is_empty() {
            println!(
                "seed {seed} PASS ({}; {} ops, {} indeterminate, {} shed, {} rate limited; digest {:#018x}){}",
                report.shape,
                report.ops,
                report.indeterminate_ops,
                report.refusals.shed,
                report.refusals.rate_limited,
                report.trace_digest,
                if report.inconclusive.is_empty() {
                    String::new()
                } else {
                    format!("; linearizability inconclusive for {:?}", report.inconclusive)
                }
            );
        } else {
            println!("seed {seed} FAIL ({})", report.shape);
            for (checker, message) in &verdict_failures {
                println!("  [{checker}] seed {seed}: {message}");
            }
            println!("  replay: {}", scenario::replay_command(seed, &options));
            failed.push(seed);
        }
        if verbose || (count == 1 && !verdict_failures.is_empty()) {
            for line in &report.fault_log {
                println!("  fault {line}");
            }
            for note in &report.notes {
                println!("  note {note}");
            }
        }
        if let Some(sku) = &history_sku {
            let mut ops: Vec<_> = report
                .history
                .ops
                .iter()
                .filter(|op| op.call.sku() == sku.as_bytes())
                .collect();
            ops.sort_by_key(|op| op.invoke_ns);
            for op in ops {
                println!("  op {}", op.describe());
            }
        }
    }
    println!(
        "{} seeds: {} passed, {} failed{}",
        count,
        count as usize - failed.len(),
        failed.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" (seeds {failed:?})")
        }
    );
    if !failed.is_empty() {
        std::process::exit(1);
    }
}
