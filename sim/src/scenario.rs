//! One seed, start to end: draw the cluster's shape and the fault plan from the seed, start the
//! cluster, run the buyers under faults (the safety phase), heal everything and require every
//! shard to elect a leader and take writes again within a bound (liveness), let replicas and
//! shipping converge, then run every checker.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use flashledger_client::Outcome;
use flashledger_client::SaleRules;
use flashledger_client::WriteOp;
use ledger::simulation::PlantedBug;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;

use crate::check;
use crate::faults::FaultLog;
use crate::faults::FaultPlan;
use crate::harness::ClusterShape;
use crate::harness::SimCluster;
use crate::harness::TightAdmission;
use crate::harness::node_addr;
use crate::history::Fnv;
use crate::workload;
use crate::workload::Catalog;
use crate::workload::Recorder;

/// How a run is set up beyond what the seed decides.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Force a 3- or 5-node cluster (default: drawn from the seed).
    pub nodes: Option<usize>,
    /// A planted bug (the checkers' own tests).
    pub bug: Option<PlantedBug>,
    /// Simulated length of the safety phase.
    pub safety_phase: Duration,
    /// Independent buyers, and buyers sharing one coalescing client.
    pub buyers: usize,
    pub coalesced_buyers: usize,
    /// Bound for the heal phase: every shard must take a write again within it.
    pub liveness_bound: Duration,
    /// Search steps the linearizability checker may spend per SKU.
    pub linearizability_steps_max: u64,
    /// Whether the cluster's admission budgets and rate limits are tight enough to shed.
    pub admission: AdmissionPlan,
    /// Whether the placement scheduler runs (on by default, as in cluster.toml).
    pub placement: bool,
}

/// How a run sets the cluster's `[admission]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionPlan {
    /// Drawn from the seed: tight for a third of the seeds, the defaults for the rest.
    Drawn,
    /// Always tight (`--admission tight`): shedding and rate limiting all along.
    Tight,
    /// Always the defaults (`--admission defaults`), which the buyers never reach.
    Defaults,
}

impl AdmissionPlan {
    pub fn from_name(name: &str) -> Option<AdmissionPlan> {
        match name {
            "drawn" => Some(AdmissionPlan::Drawn),
            "tight" => Some(AdmissionPlan::Tight),
            "defaults" => Some(AdmissionPlan::Defaults),
            _ => None,
        }
    }

    /// The section for `seed`, drawn from its own stream so the fault plans stay as they were.
    fn draw(self, seed: u64) -> Option<TightAdmission> {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x6164_6d69_7373_696f);
        let tight = match self {
            AdmissionPlan::Drawn => rng.gen_bool(1.0 / 3.0),
            AdmissionPlan::Tight => true,
            AdmissionPlan::Defaults => false,
        };
        tight.then(|| TightAdmission::draw(&mut rng))
    }
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            nodes: None,
            bug: None,
            safety_phase: Duration::from_secs(8),
            buyers: 10,
            coalesced_buyers: 4,
            liveness_bound: Duration::from_secs(20),
            linearizability_steps_max: 4_000_000,
            admission: AdmissionPlan::Drawn,
            placement: true,
        }
    }
}

/// What one seed's run found.
#[derive(Debug, Clone)]
pub struct SeedReport {
    pub seed: u64,
    pub shape: String,
    /// (checker, what it found); empty when the run passed.
    pub failures: Vec<(String, String)>,
    /// Digest of the recorded history, the fault log and the final states: equal across two
    /// runs of one seed.
    pub trace_digest: u64,
    pub ops: usize,
    pub indeterminate_ops: usize,
    pub fault_log: Vec<String>,
    pub notes: Vec<String>,
    /// SKUs whose linearizability search ran out of budget (neither proven nor refuted).
    pub inconclusive: Vec<String>,
    /// Every recorded call (for `--history SKU`).
    pub history: crate::history::History,
    /// Calls the cluster refused before proposing (shed, rate limited), as the buyers saw them.
    pub refusals: workload::Refusals,
}

impl SeedReport {
    /// A report with nothing found yet.
    fn new(seed: u64, shape: String) -> SeedReport {
        SeedReport {
            seed,
            shape,
            failures: Vec::new(),
            trace_digest: 0,
            ops: 0,
            indeterminate_ops: 0,
            fault_log: Vec::new(),
            notes: Vec::new(),
            history: Default::default(),
            inconclusive: Vec::new(),
            refusals: workload::Refusals::default(),
        }
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// The command that replays `seed` with `options`.
pub fn replay_command(seed: u64, options: &SimOptions) -> String {
    let mut command = format!(
        "RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target-madsim cargo run --release -p flashledger-sim -- --seed {seed}"
    );
    if let Some(nodes) = options.nodes {
        command += &format!(" --nodes {nodes}");
    }
    if let Some(bug) = options.bug {
        command += &format!(" --plant {}", bug.name());
    }
    match options.admission {
        AdmissionPlan::Drawn => {}
        AdmissionPlan::Tight => command += " --admission tight",
        AdmissionPlan::Defaults => command += " --admission defaults",
    }
    if !options.placement {
        command += " --no-placement";
    }
    command
}

/// Runs `seed` in a fresh simulated world (on its own thread, so a panic is a failure report).
pub fn run_seed(seed: u64, options: &SimOptions) -> SeedReport {
    let thread_options = options.clone();
    let outcome = std::thread::spawn(move || {
        let mut runtime = madsim::runtime::Runtime::with_seed_and_config(seed, madsim::Config::default());
        // A run takes about a minute of simulated time; a hang becomes a failure, not a stall.
        runtime.set_time_limit(Duration::from_secs(600));
        runtime.block_on(simulate(seed, thread_options))
    })
    .join();
    match outcome {
        Ok(report) => report,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            let mut report = SeedReport::new(seed, String::new());
            report.failures.push(("panic".into(), message));
            report
        }
    }
}

async fn simulate(seed: u64, options: SimOptions) -> SeedReport {
    ledger::simulation::plant(options.bug);
    ledger::simulation::clear_clock_skews();
    let mut rng = SmallRng::seed_from_u64(seed);
    let nodes = options.nodes.unwrap_or(if rng.gen_bool(0.3) { 5 } else { 3 });
    let shape = ClusterShape {
        nodes,
        shards: rng.gen_range(2..=3),
        replicas: if nodes == 5 && rng.gen_bool(0.5) { 5 } else { 3 },
        admission: options.admission.draw(seed),
        placement: options.placement,
    };
    let mut report = SeedReport::new(
        seed,
        format!(
            "{} nodes, {} shards of {} replicas{}",
            shape.nodes,
            shape.shards,
            shape.replicas,
            match &shape.admission {
                Some(tight) => format!(
                    ", tight admission ({} ops per shard, buyers {}/s, clients {}/s)",
                    tight.shard_ops_inflight_max, tight.buyer_ops_per_s, tight.client_ops_per_s
                ),
                None => String::new(),
            }
        ),
    );
    let phase_ms = options.safety_phase.as_millis() as u64;
    let plan = FaultPlan::generate(seed, shape.nodes, shape.shards, phase_ms);
    let cluster = match SimCluster::start(shape.clone()) {
        Ok(cluster) => cluster,
        Err(error) => {
            report.failures.push(("harness".into(), error));
            return report;
        }
    };
    for id in cluster.node_ids() {
        cluster.set_disk_latency(id, Duration::from_micros(plan.disk_latency_us));
    }
    let cluster = Arc::new(Mutex::new(cluster));
    let seeds: Vec<String> = (1..=shape.nodes as u64).map(node_addr).collect();
    let handle = madsim::runtime::Handle::current();
    let clients = handle
        .create_node()
        .name("buyers")
        .ip("10.0.1.1".parse().expect("a literal address"))
        .build();

    // Set up the catalog before any fault.
    let start = Instant::now();
    let recorder = Recorder::new(start);
    let catalog = Catalog::new();
    let setup = {
        let (recorder, catalog, seeds) = (recorder.clone(), catalog.clone(), seeds.clone());
        clients.spawn(async move {
            let admin = workload::connect(&seeds, workload::client_options(false, "admin")).await?;
            workload::put_catalog(&recorder, &admin, &catalog).await
        })
    };
    match setup.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => report.failures.push(("setup".into(), error)),
        Err(error) => report.failures.push(("setup".into(), error.to_string())),
    }
    if !report.failures.is_empty() {
        return report;
    }

    // Safety phase: buyers under faults.
    let phase_start = Instant::now();
    let deadline = phase_start + options.safety_phase;
    let fault_log: FaultLog = Arc::default();
    let faults = tokio::spawn(crate::faults::run_plan(
        cluster.clone(),
        plan,
        phase_start,
        fault_log.clone(),
    ));
    // Half the runs lose PostgreSQL (the recording sink) early in the safety phase until the
    // cluster is healed, longer than the idempotency window: orders wait past it unshipped and
    // must not be pruned meanwhile. Drawn from its own stream, so the fault plans stay as they were.
    let sink = cluster.lock().unwrap_or_else(|p| p.into_inner()).sink.clone();
    let mut outage_rng = SmallRng::seed_from_u64(seed ^ 0x7369_6e6b);
    let sink_outage = outage_rng
        .gen_bool(0.5)
        .then(|| Duration::from_millis(outage_rng.gen_range(0..1_500)));
    if let Some(after) = sink_outage {
        let (sink, fault_log) = (sink.clone(), fault_log.clone());
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            sink.set_down(true);
            crate::faults::log(
                &fault_log,
                phase_start,
                "PostgreSQL (the sink) down until the heal".into(),
            );
        });
    }
    let mut buyers = Vec::new();
    let shared = {
        let seeds = seeds.clone();
        clients.spawn(async move { workload::connect(&seeds, workload::client_options(true, "shared")).await })
    };
    let shared = match shared.await {
        Ok(Ok(client)) => Arc::new(client),
        Ok(Err(error)) => {
            report.failures.push(("setup".into(), error));
            return report;
        }
        Err(error) => {
            report.failures.push(("setup".into(), error.to_string()));
            return report;
        }
    };
    for who in 0..options.buyers + options.coalesced_buyers {
        let (recorder, catalog, seeds, shared) = (recorder.clone(), catalog.clone(), seeds.clone(), shared.clone());
        buyers.push(clients.spawn(async move {
            let client = if who < options.buyers {
                let client_id = format!("buyer-{who}");
                match workload::connect(&seeds, workload::client_options(false, &client_id)).await {
                    Ok(client) => Arc::new(client),
                    Err(_) => return,
                }
            } else {
                shared
            };
            workload::buyer(who, seed, client, catalog, recorder, deadline).await;
        }));
    }
    for buyer in buyers {
        let _ = buyer.await;
    }
    let _ = faults.await;

    // Heal: everything back, then every shard must take a write within the bound.
    {
        let mut sim = cluster.lock().unwrap_or_else(|p| p.into_inner());
        sim.heal_network();
        for id in sim.node_ids() {
            sim.restart(id);
            sim.set_disk_latency(id, Duration::from_micros(0));
        }
    }
    let liveness = {
        let (recorder, seeds, shape) = (recorder.clone(), seeds.clone(), shape.clone());
        let bound = options.liveness_bound;
        clients.spawn(async move { probe_every_shard(&recorder, &seeds, &shape, bound).await })
    };
    match liveness.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => report.failures.push(("liveness".into(), error)),
        Err(error) => report.failures.push(("liveness".into(), error.to_string())),
    }

    if sink_outage.is_some() {
        sink.set_down(false);
        crate::faults::log(&fault_log, phase_start, "PostgreSQL (the sink) back".into());
    }

    // Let every replica catch up and the shippers drain, then check.
    let converged = converge(&cluster, Duration::from_secs(30)).await;
    if let Err(error) = converged {
        report.failures.push(("convergence".into(), error));
    }
    let sim = cluster.lock().unwrap_or_else(|p| p.into_inner());
    for failure in sim.start_failures() {
        report.failures.push(("restart".into(), failure));
    }
    let history = recorder.history();
    let refusals = workload::Refusals::of(&history);
    report.refusals = refusals;
    report.ops = history.ops.len();
    report.indeterminate_ops = history
        .ops
        .iter()
        .filter(|op| matches!(op.answer, crate::history::Answer::Indeterminate(_)))
        .count();
    report.fault_log = fault_log.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let replicas = sim.replica_states();
    let all: Vec<(u64, u64, &ledger::state_machine::state::LedgerState)> = replicas
        .iter()
        .flat_map(|(shard, states)| states.iter().map(move |r| (r.node, *shard, &r.ledger)))
        .collect();
    let finals: Vec<&ledger::state_machine::state::LedgerState> = replicas
        .values()
        .filter_map(|states| states.first().map(|r| &r.ledger))
        .collect();
    // Splits add shards, merges take some: count those of the final map.
    let map_shards = sim
        .leader_of(ledger::meta::map::META_SHARD)
        .and_then(|leader| sim.live_nodes().get(&leader).map(|node| node.shard_map().shards.len()))
        .filter(|shards| *shards > 0)
        .unwrap_or(shape.shards);
    let mut fail = |checker: &str, result: Result<String, String>| match result {
        Ok(note) => report.notes.push(format!("{checker}: {note}")),
        Err(error) => report.failures.push((checker.to_string(), error)),
    };
    fail(
        "invariant",
        check::invariant::check(&sim.halts(), &all).map(|n| format!("{n} replicas hold it")),
    );
    fail(
        "replicas",
        check::replicas::check(&replicas).map(|n| format!("{n} replica pairs identical")),
    );
    if finals.len() == map_shards {
        fail(
            "lost-writes",
            check::lost_writes::check(&history, &finals)
                .map(|(n, pruned)| format!("{n} answers reflected, {pruned} about orders pruned past the window")),
        );
        fail(
            "exactly-once",
            check::exactly_once::check(&history, &finals, &sim.sink.recorded())
                .map(|n| format!("{n} orders shipped once")),
        );
    } else {
        fail(
            "replicas",
            Err(format!(
                "only {} of {} shards have a live replica",
                finals.len(),
                map_shards
            )),
        );
    }
    if finals.len() == map_shards {
        fail(
            "not-applied",
            check::not_applied::check(&history, &finals, &sim.sink.recorded()).map(|n| {
                format!(
                    "{n} writes refused as not applied, none applied ({} shed, {} rate limited)",
                    refusals.shed, refusals.rate_limited
                )
            }),
        );
    }
    let skip: BTreeSet<Vec<u8>> = catalog.expiring.iter().cloned().collect();
    let never_happened = check::lost_writes::never_happened(&history, &finals);
    match check::linearizability::check(&history, &skip, &never_happened, options.linearizability_steps_max) {
        Ok(lin) => {
            report.notes.push(format!(
                "linearizability: {} skus, {} ops, linearizable except inconclusive {:?}",
                lin.skus_checked, lin.ops_checked, lin.inconclusive
            ));
            report.inconclusive = lin.inconclusive;
        }
        Err(error) => report.failures.push(("linearizability".into(), error)),
    }
    let mut digest = Fnv::default();
    digest.write(&history.digest().to_le_bytes());
    for line in &report.fault_log {
        digest.write(line.as_bytes());
    }
    for ledger in &finals {
        digest.write(&ledger.digest().to_le_bytes());
    }
    report.trace_digest = digest.0;
    report.history = history;
    report
}

/// Writes a probe SKU in every shard until each is accepted, within `bound`.
async fn probe_every_shard(
    recorder: &Recorder,
    seeds: &[String],
    shape: &ClusterShape,
    bound: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + bound;
    let client = tokio::time::timeout(
        bound,
        workload::connect(seeds, workload::client_options(false, "probe")),
    )
    .await
    .map_err(|_| format!("no client could connect within {bound:?} of healing"))??;
    let mut first_letters = vec!['a'];
    first_letters.extend(shape.boundaries());
    for letter in first_letters {
        let sku = format!("{letter}-probe").into_bytes();
        loop {
            let op = WriteOp::PutSku {
                sku: sku.clone(),
                total: 1,
                rules: SaleRules::default(),
            };
            if recorder.write(usize::MAX - 1, &client, op).await == Some(Outcome::Ok) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the shard holding {:?} took no write within {bound:?} of healing",
                    String::from_utf8_lossy(&sku)
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Waits until every shard's replicas applied the same last index and shipping has drained.
async fn converge(cluster: &Arc<Mutex<SimCluster>>, bound: Duration) -> Result<(), String> {
    let deadline = Instant::now() + bound;
    loop {
        let pending = {
            let sim = cluster.lock().unwrap_or_else(|p| p.into_inner());
            pending_convergence(&sim)
        };
        match pending {
            None => return Ok(()),
            Some(reason) if Instant::now() > deadline => {
                return Err(format!("not converged {bound:?} after healing: {reason}"));
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

fn pending_convergence(sim: &SimCluster) -> Option<String> {
    let live = sim.live_nodes();
    if live.len() < sim.shape.nodes {
        return Some(format!("{} of {} nodes running", live.len(), sim.shape.nodes));
    }
    // Every reshaping step asked for during the faults completes once the cluster is whole.
    let Some(meta_leader) = sim.leader_of(ledger::meta::map::META_SHARD) else {
        return Some("the meta group has no leader".into());
    };
    let map = live.get(&meta_leader).map(|node| node.shard_map()).unwrap_or_default();
    if let Some(step) = map.steps.front() {
        return Some(format!("reshaping not done: {step} (and {} more)", map.steps.len() - 1));
    }
    // A shard a merge ended is retired by every node once its map shows the merge.
    for (id, node) in &live {
        if let Some(gone) = node
            .shards()
            .iter()
            .map(|replica| replica.config.id)
            .find(|shard| *shard != ledger::meta::map::META_SHARD && !map.shards.contains_key(shard))
        {
            return Some(format!(
                "node {id} still runs shard {gone}, which the map no longer has"
            ));
        }
    }
    // The map's shards: a split added some, a merge took some.
    for shard_id in map.shards.keys() {
        let statuses: Vec<_> = live
            .values()
            .filter_map(|node| node.status().into_iter().find(|s| s.shard_id == *shard_id))
            .collect();
        let Some(leader) = statuses.iter().find(|s| s.role == "leader") else {
            return Some(format!("shard {shard_id} has no leader"));
        };
        for status in &statuses {
            if status.applied_index != leader.last_log_index {
                return Some(format!(
                    "shard {}: a replica applied {} of the leader's {}",
                    shard_id, status.applied_index, leader.last_log_index
                ));
            }
            if status.shipping_lag_events > 0 {
                return Some(format!(
                    "shard {}: {} events not shipped",
                    shard_id, status.shipping_lag_events
                ));
            }
        }
    }
    None
}
