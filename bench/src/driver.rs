//! Drives a running cluster through the client library and measures it.
//!
//! Closed loop: C callers each send their next operation as soon as the previous one answers.
//! Open loop: operations are scheduled at a fixed rate whatever the answers do, and each
//! latency is measured from the operation's *scheduled* start, so a stalled cluster shows up in
//! the tail instead of silently lowering the offered load (no coordinated omission).
//!
//! Client modes: `independent` gives every caller its own client (own connections, one
//! operation per RPC), like many separate buyers' processes; `service` shares `--services`
//! clients among the callers with coalescing on, like a few shop backends each serving many
//! concurrent requests.

use std::io::Write;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use anyhow::bail;
use flashledger_client::Client;
use flashledger_client::ClientOptions;
use flashledger_client::Consistency;
use flashledger_client::Outcome;
use flashledger_client::SaleRules;
use flashledger_client::WriteOp;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::time::Instant;

use crate::cached::CacheMeasured;
use crate::cached::Caches;
use crate::workload::Action;
use crate::workload::BlackFridayPlan;
use crate::workload::WorkloadKind;
use crate::workload::Zipf;

/// How callers share clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    Independent,
    Service,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub seeds: Vec<String>,
    /// TLS and token for a secured cluster; the default for an insecure one.
    pub credentials: flashledger_client::Credentials,
    pub workload: WorkloadKind,
    pub mode: Mode,
    pub clients: usize,
    pub services: usize,
    /// Open loop at this many operations per second; `None` = closed loop.
    pub rate: Option<u64>,
    pub duration: Duration,
    pub warmup: Duration,
    pub skus: usize,
    pub zipf_s: f64,
    /// Units per SKU; `None` = the workload's default.
    pub stock: Option<i64>,
    pub linearizable_reads: bool,
    pub scale: u64,
    pub coalesce_ops_max: usize,
    pub coalesce_inflight_max: usize,
    pub progress: bool,
    /// Keep the wall-clock time (ms since the Unix epoch) of every successful answer, for
    /// measuring how long writes stop during a failover.
    pub log_successes: bool,
    /// Stop after this many operations instead of after `duration` (hot, zipf, reads).
    pub ops_max: Option<u64>,
    /// Percent of operations sent at PREMIUM priority (the rest at the client's defaults:
    /// writes STANDARD, reads BACKGROUND).
    pub premium_percent: u64,
    /// Closed loop: a caller whose operation was shed or rate limited waits the node's
    /// retry-after before its next one (as a client honouring the hint would).
    pub honor_retry_after: bool,
    /// Serve product-page (stale) reads from a stock cache per shard and sample the caches'
    /// lag behind the leader's commit (see `cached`).
    pub cache: bool,
}

/// How one operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Result_ {
    /// Purchased, reserved+confirmed, or a read answered.
    Ok,
    SoldOut,
    /// Another business answer (limit, closed, ...).
    Other,
    /// The node shed it at once (RESOURCE_EXHAUSTED): not applied; with the node's retry hint.
    Shed(Option<Duration>),
    /// RATE_LIMITED: not applied; with when the limit lets it through.
    RateLimited(Duration),
    Error,
}

impl Result_ {
    /// Whether the cluster took the operation in (answered it, rather than refused it at the door).
    fn admitted(self) -> bool {
        matches!(self, Result_::Ok | Result_::SoldOut | Result_::Other)
    }
}

/// A priority class of the run's operations, as measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ClassMeasured {
    pub admitted: u64,
    pub shed: u64,
    /// Latency of the admitted operations of this class.
    pub admitted_p99_us: f64,
}

/// What the run measured.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    pub secs: f64,
    pub ok_total: u64,
    pub soldout_total: u64,
    pub other_total: u64,
    pub errors: u64,
    pub attempts_total: u64,
    /// Operations scheduled but not started in an open-loop run (callers all busy).
    pub late_total: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    /// Shed (RESOURCE_EXHAUSTED) and rate-limited operations, and the latency of the answers
    /// the cluster admitted and of the sheds.
    pub shed_total: u64,
    pub rate_limited_total: u64,
    pub admitted_p50_us: f64,
    pub admitted_p99_us: f64,
    pub shed_p50_us: f64,
    pub shed_p99_us: f64,
    /// By class: PREMIUM operations, and the others.
    pub premium: ClassMeasured,
    pub standard: ClassMeasured,
    pub timeline: Vec<Second>,
    /// Wall-clock time (ms since the Unix epoch) at which the measurement window, and so
    /// `timeline[0]`, began: second `t` of the timeline covers `[this + 1000 t, this + 1000 (t + 1))`.
    /// Lets a script line the timeline up with what it did to the cluster meanwhile.
    pub measure_from_unix_ms: u64,
    /// Black Friday: the plan and how long it took.
    pub plan: Option<BlackFridayPlan>,
    /// With `cache`: the caches' lag and how many reads they answered.
    pub cache: Option<CacheMeasured>,
    /// Unix ms of every successful answer (only with `log_successes`).
    #[serde(skip)]
    pub successes: Vec<u64>,
}

/// One second of the measurement window.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Second {
    pub t: u64,
    pub ops: u64,
    pub p50_us: f64,
    pub p99_us: f64,
}

struct Recorder {
    measure_from: Instant,
    all: Histogram<u64>,
    per_second: Vec<(u64, Histogram<u64>)>,
    counts: [u64; 6],
    /// Latency of admitted answers by class (PREMIUM, the others), and of sheds.
    admitted: [Histogram<u64>; 2],
    shed: Histogram<u64>,
    /// (admitted, shed) by class.
    classes: [(u64, u64); 2],
    /// Unix ms of each success, when asked for.
    successes: Option<Vec<u64>>,
}

impl Recorder {
    fn record(&mut self, started: Instant, result: Result_, premium: bool) {
        if started < self.measure_from {
            return;
        }
        let class = usize::from(!premium);
        let micros_now = Instant::now().duration_since(started).as_micros().max(1) as u64;
        if result.admitted() {
            let _ = self.admitted[class].record(micros_now);
            self.classes[class].0 += 1;
        } else if matches!(result, Result_::Shed(_)) {
            let _ = self.shed.record(micros_now);
            self.classes[class].1 += 1;
        }
        let now = Instant::now();
        let micros = now.duration_since(started).as_micros().max(1) as u64;
        let _ = self.all.record(micros);
        let second = now.duration_since(self.measure_from).as_secs() as usize;
        while self.per_second.len() <= second {
            self.per_second.push((0, histogram()));
        }
        let slot = &mut self.per_second[second];
        slot.0 += 1;
        let _ = slot.1.record(micros);
        let index = match result {
            Result_::Ok => 0,
            Result_::SoldOut => 1,
            Result_::Other => 2,
            Result_::Error => 3,
            Result_::Shed(_) => 4,
            Result_::RateLimited(_) => 5,
        };
        self.counts[index] += 1;
        if let (Some(successes), Result_::Ok) = (&mut self.successes, result) {
            successes.push(unix_ms());
        }
    }
}

pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("static histogram bounds are valid")
}

/// The SKU names of a run: fresh per run, spread over the alphabet so every shard gets some.
fn sku_names(run: u64, count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("{}{run}-{i:04}", (b'a' + (i % 26) as u8) as char))
        .collect()
}

/// Puts the run's SKUs on sale, many per Batch RPC.
async fn setup(client: &Client, skus: &[String], stock: i64) -> anyhow::Result<()> {
    for chunk in skus.chunks(256) {
        let puts = chunk
            .iter()
            .map(|sku| WriteOp::PutSku {
                sku: sku.as_bytes().to_vec(),
                total: stock,
                rules: SaleRules::default(),
            })
            .collect();
        let outcomes = client.batch(puts).await.context("putting the SKUs on sale")?;
        if let Some((sku, outcome)) = chunk.iter().zip(outcomes).find(|(_, o)| *o != Outcome::Ok) {
            bail!("putting {sku} on sale: {outcome:?}");
        }
    }
    Ok(())
}

/// Runs the workload and returns what was measured.
pub async fn run(config: RunConfig) -> anyhow::Result<Measured> {
    // Names this run's SKUs and order ids. The process id too, not the time alone: two
    // flashbench processes started in the same millisecond (scripts/reshape-demo.sh starts
    // two workloads together) would otherwise send the same order ids for different orders,
    // which the ledger keeps apart per shard but one PostgreSQL table cannot.
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
        * 1000
        + u64::from(std::process::id()) % 1000;
    let admin_options = ClientOptions {
        credentials: config.credentials.clone(),
        ..ClientOptions::default()
    };
    let admin = Client::connect(config.seeds.clone(), admin_options)
        .await
        .context("connecting to the cluster")?;
    let plan = (config.workload == WorkloadKind::BlackFriday).then(|| BlackFridayPlan::scaled(config.scale));
    let sku_count = match config.workload {
        WorkloadKind::Hot => 1,
        WorkloadKind::BlackFriday => 1_000,
        _ => config.skus.max(1),
    };
    let stock = config.stock.unwrap_or(match plan {
        // Flash-sale stock: the popular SKUs sell out, the tail does not.
        Some(plan) => (plan.orders / sku_count as u64).max(1) as i64,
        None => 1_000_000_000_000,
    });
    let skus = Arc::new(sku_names(run_id, sku_count));
    setup(&admin, &skus, stock).await?;
    let caches = match config.cache {
        true => Some(Arc::new(Caches::start(&admin, &skus).await?)),
        false => None,
    };

    let client_count = match config.mode {
        Mode::Independent => config.clients,
        Mode::Service => config.services.max(1),
    };
    let options = ClientOptions {
        coalesce_ops_max: if config.mode == Mode::Service {
            config.coalesce_ops_max
        } else {
            0
        },
        coalesce_inflight_max: config.coalesce_inflight_max,
        credentials: config.credentials.clone(),
        ..ClientOptions::default()
    };
    let mut clients = Vec::with_capacity(client_count);
    for index in 0..client_count {
        let options = ClientOptions {
            client_id: Some(format!("flashbench-{run_id}-{index}")),
            ..options.clone()
        };
        let client = Client::connect(config.seeds.clone(), options).await?;
        // Each client, and a handle of it whose calls are PREMIUM.
        let premium = client.with_priority(flashledger_client::Priority::Premium);
        clients.push(Arc::new((client, premium)));
    }
    let premium_percent = config.premium_percent;
    let honor_retry_after = config.honor_retry_after;
    let is_premium = move |sequence: u64| sequence.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 100 < premium_percent;

    let start = Instant::now();
    let start_unix_ms = unix_ms();
    // A finite plan (Black Friday, an operation count) is measured whole, from its first operation.
    let warmup = if plan.is_some() || config.ops_max.is_some() {
        Duration::ZERO
    } else {
        config.warmup
    };
    let measure_from = start + warmup;
    let deadline = measure_from + config.duration;
    let recorder = Arc::new(Mutex::new(Recorder {
        measure_from,
        all: histogram(),
        per_second: Vec::new(),
        counts: [0; 6],
        admitted: [histogram(), histogram()],
        shed: histogram(),
        classes: [(0, 0); 2],
        successes: config.log_successes.then(Vec::new),
    }));
    let zipf = Arc::new(Zipf::new(sku_count, config.zipf_s));
    let next_index = Arc::new(AtomicU64::new(0));
    let late = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let lag_sampler = caches
        .clone()
        .map(|caches| tokio::spawn(caches.sample_lag(done.clone())));
    let progress = config.progress.then(|| {
        tokio::spawn(show_progress(
            recorder.clone(),
            measure_from,
            config.clone(),
            done.clone(),
        ))
    });

    let context = Arc::new(Context_ {
        workload: config.workload,
        skus: skus.clone(),
        zipf,
        plan,
        linearizable_reads: config.linearizable_reads,
        run_id,
        next_index: next_index.clone(),
        ops_max: config.ops_max,
        caches: caches.clone(),
        reads_from_cache: AtomicU64::new(0),
    });
    // A run with an operation count, like Black Friday, is measured whole.
    let finite = plan.is_some() || config.ops_max.is_some();
    match config.rate {
        None => {
            let mut callers = Vec::new();
            for caller in 0..config.clients {
                let client = clients[caller % clients.len()].clone();
                let (context, recorder) = (context.clone(), recorder.clone());
                callers.push(tokio::spawn(async move {
                    let mut rng = SmallRng::seed_from_u64(run_id ^ caller as u64);
                    let mut sequence = 0u64;
                    while let Some(action) = context.next_action(&mut rng) {
                        let started = Instant::now();
                        if !finite && started >= deadline {
                            break;
                        }
                        sequence += 1;
                        let premium = is_premium(sequence ^ ((caller as u64) << 40));
                        let handle = if premium { &client.1 } else { &client.0 };
                        let result = execute(handle, &context, action, caller, sequence).await;
                        lock(&recorder).record(started, result, premium);
                        // A caller told to come back later does, as a well-behaved client would.
                        if let (true, Result_::Shed(Some(pause)) | Result_::RateLimited(pause)) =
                            (honor_retry_after, result)
                        {
                            tokio::time::sleep(pause).await;
                        }
                    }
                }));
            }
            for caller in callers {
                caller.await?;
            }
        }
        Some(rate) => {
            let permits = Arc::new(tokio::sync::Semaphore::new(config.clients.max(1)));
            let mut rng = SmallRng::seed_from_u64(run_id);
            let interval_ns = 1_000_000_000 / rate.max(1);
            for k in 0u64.. {
                let scheduled = start + Duration::from_nanos(k.saturating_mul(interval_ns));
                if !finite && scheduled >= deadline {
                    break;
                }
                let Some(action) = context.next_action(&mut rng) else {
                    break;
                };
                tokio::time::sleep_until(scheduled).await;
                let permit = match permits.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => {
                        // Every caller is busy: the operation waits, and its wait counts.
                        late.fetch_add(1, Ordering::Relaxed);
                        permits.clone().acquire_owned().await?
                    }
                };
                let client = clients[(k as usize) % clients.len()].clone();
                let (context, recorder) = (context.clone(), recorder.clone());
                let premium = is_premium(k);
                tokio::spawn(async move {
                    let handle = if premium { &client.1 } else { &client.0 };
                    let result = execute(handle, &context, action, usize::MAX, k).await;
                    lock(&recorder).record(scheduled, result, premium);
                    drop(permit);
                });
            }
            // Every operation in flight holds a permit: holding them all means all answered.
            let _all_answered = permits.acquire_many(config.clients.max(1) as u32).await?;
        }
    }
    done.store(true, Ordering::SeqCst);
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    let cache = match (lag_sampler, &caches) {
        (Some(sampler), Some(caches)) => {
            let lag = sampler.await?;
            let quantile_ms = |q: f64| lag.value_at_quantile(q) as f64;
            Some(CacheMeasured {
                lag_samples: lag.len(),
                lag_p50_ms: quantile_ms(0.5),
                lag_p99_ms: quantile_ms(0.99),
                lag_max_ms: lag.max() as f64,
                reads_from_cache: context.reads_from_cache.load(Ordering::Relaxed),
                reconnects: caches.reconnects(),
            })
        }
        _ => None,
    };
    let finished = Instant::now();
    let recorder = lock(&recorder);
    let secs = if finite {
        finished.duration_since(measure_from.min(finished)).as_secs_f64()
    } else {
        config.duration.as_secs_f64()
    };
    let quantile = |q: f64| recorder.all.value_at_quantile(q) as f64;
    let mut admitted = histogram();
    for class in &recorder.admitted {
        let _ = admitted.add(class);
    }
    let class = |index: usize| ClassMeasured {
        admitted: recorder.classes[index].0,
        shed: recorder.classes[index].1,
        admitted_p99_us: recorder.admitted[index].value_at_quantile(0.99) as f64,
    };
    Ok(Measured {
        shed_total: recorder.counts[4],
        rate_limited_total: recorder.counts[5],
        admitted_p50_us: admitted.value_at_quantile(0.5) as f64,
        admitted_p99_us: admitted.value_at_quantile(0.99) as f64,
        shed_p50_us: recorder.shed.value_at_quantile(0.5) as f64,
        shed_p99_us: recorder.shed.value_at_quantile(0.99) as f64,
        premium: class(0),
        standard: class(1),
        secs,
        ok_total: recorder.counts[0],
        soldout_total: recorder.counts[1],
        other_total: recorder.counts[2],
        errors: recorder.counts[3],
        attempts_total: recorder.counts.iter().sum(),
        late_total: late.load(Ordering::Relaxed),
        p50_us: quantile(0.5),
        p99_us: quantile(0.99),
        p999_us: quantile(0.999),
        max_us: recorder.all.max() as f64,
        mean_us: recorder.all.mean(),
        // A timed run's last partial second (answers to operations sent before the deadline)
        // would show as a dip; it is left out of the timeline (not of the totals).
        measure_from_unix_ms: start_unix_ms + warmup.as_millis() as u64,
        timeline: recorder
            .per_second
            .iter()
            .take(if plan.is_some() {
                usize::MAX
            } else {
                config.duration.as_secs() as usize
            })
            .enumerate()
            .map(|(t, (ops, histogram))| Second {
                t: t as u64,
                ops: *ops,
                p50_us: histogram.value_at_quantile(0.5) as f64,
                p99_us: histogram.value_at_quantile(0.99) as f64,
            })
            .collect(),
        plan,
        cache,
        successes: recorder.successes.clone().unwrap_or_default(),
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// What every caller shares.
struct Context_ {
    workload: WorkloadKind,
    skus: Arc<Vec<String>>,
    zipf: Arc<Zipf>,
    plan: Option<BlackFridayPlan>,
    linearizable_reads: bool,
    run_id: u64,
    next_index: Arc<AtomicU64>,
    ops_max: Option<u64>,
    /// With `--cache`: where product-page reads are answered.
    caches: Option<Arc<Caches>>,
    reads_from_cache: AtomicU64,
}

impl Context_ {
    /// The next operation; `None` once a finite plan is used up.
    fn next_action(&self, rng: &mut SmallRng) -> Option<Action> {
        use rand::Rng;
        if let Some(plan) = &self.plan {
            let index = self.next_index.fetch_add(1, Ordering::Relaxed);
            return (index < plan.total()).then(|| plan.action(index, rng, &self.zipf));
        }
        if let Some(ops_max) = self.ops_max
            && self.next_index.fetch_add(1, Ordering::Relaxed) >= ops_max
        {
            return None;
        }
        let user = rng.gen_range(0..1_000_000u64);
        Some(match self.workload {
            WorkloadKind::Hot => Action::Purchase { sku: 0, user },
            WorkloadKind::Zipf => Action::Purchase {
                sku: self.zipf.sample(rng),
                user,
            },
            WorkloadKind::Reads => Action::Read {
                sku: self.zipf.sample(rng),
                linearizable: self.linearizable_reads,
            },
            WorkloadKind::BlackFriday => return None,
        })
    }
}

/// The first errors callers saw, by kind (their messages up to the first digit), with counts:
/// printed at the end of a run so that an error count comes with its causes.
static ERRORS_SEEN: std::sync::Mutex<std::collections::BTreeMap<String, (u64, String)>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());
const ERROR_KINDS_MAX: usize = 20;

fn note_error(error: &flashledger_client::ClientError) {
    let message = error.to_string();
    let kind: String = message.chars().take_while(|c| !c.is_ascii_digit()).take(80).collect();
    let mut seen = ERRORS_SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if seen.len() >= ERROR_KINDS_MAX && !seen.contains_key(&kind) {
        return;
    }
    seen.entry(kind).or_insert_with(|| (0, message)).0 += 1;
}

/// Prints the errors callers saw (one line per kind: count and the first message).
pub fn print_errors_seen() {
    let seen = ERRORS_SEEN.lock().unwrap_or_else(|p| p.into_inner());
    for (count, first) in seen.values() {
        eprintln!("flashbench: {count} x error: {first}");
    }
}

async fn execute(client: &Client, context: &Context_, action: Action, caller: usize, sequence: u64) -> Result_ {
    let order_id = || format!("o{}-{caller}-{sequence}", context.run_id);
    let classify = |outcome: Result<Outcome, flashledger_client::ClientError>| match outcome {
        Ok(Outcome::Confirmed | Outcome::Reserved { .. } | Outcome::Ok) => Result_::Ok,
        Ok(Outcome::SoldOut { .. }) => Result_::SoldOut,
        Ok(Outcome::RateLimited { retry_after_ms }) => {
            Result_::RateLimited(Duration::from_millis(u64::try_from(retry_after_ms).unwrap_or(0)))
        }
        Ok(_) => Result_::Other,
        Err(flashledger_client::ClientError::Overloaded { retry_after, .. }) => Result_::Shed(retry_after),
        Err(error) => {
            note_error(&error);
            Result_::Error
        }
    };
    match action {
        Action::Purchase { sku, user } => {
            let outcome = client
                .purchase(&context.skus[sku], 1, &format!("u{user}"), &order_id())
                .await;
            classify(outcome)
        }
        Action::ReserveConfirm { sku, user } => {
            let order_id = order_id();
            let sku = &context.skus[sku];
            let reserved = client.reserve(sku, 1, &format!("u{user}"), &order_id, None).await;
            match classify(reserved) {
                Result_::Ok => classify(client.confirm(sku, &order_id).await),
                other => other,
            }
        }
        Action::Read {
            sku,
            linearizable: false,
        } if context.caches.is_some() => {
            let caches = context.caches.as_ref().expect("checked by the guard");
            match caches.read(&context.skus[sku]).await {
                Ok(Some(_)) => {
                    context.reads_from_cache.fetch_add(1, Ordering::Relaxed);
                    Result_::Ok
                }
                Ok(None) => Result_::Other,
                Err(_) => Result_::Error,
            }
        }
        Action::Read { sku, linearizable } => {
            let consistency = if linearizable {
                Consistency::Linearizable
            } else {
                Consistency::Stale { max_lag_entries: 1_000 }
            };
            match client.get_stock(&context.skus[sku], consistency).await {
                Ok(Some(_)) => Result_::Ok,
                Ok(None) => Result_::Other,
                Err(flashledger_client::ClientError::Overloaded { retry_after, .. }) => Result_::Shed(retry_after),
                Err(_) => Result_::Error,
            }
        }
    }
}

/// One line on stderr per second: elapsed, throughput of the last second, its p99.
async fn show_progress(
    recorder: Arc<Mutex<Recorder>>,
    measure_from: Instant,
    config: RunConfig,
    done: Arc<AtomicBool>,
) {
    let total = config.duration.as_secs().max(1);
    let mut previous = 0u64;
    while !done.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (count, p99) = {
            let recorder = lock(&recorder);
            (
                recorder.counts.iter().sum::<u64>(),
                recorder.per_second.last().map_or(0, |(_, h)| h.value_at_quantile(0.99)),
            )
        };
        let elapsed = Instant::now().saturating_duration_since(measure_from).as_secs();
        let filled = ((elapsed.min(total) * 30) / total) as usize;
        let bar = format!("{}{}", "#".repeat(filled), ".".repeat(30 - filled));
        eprint!(
            "\r[{bar}] {elapsed:>4}s  {:>9} ops/s  p99 {:>8.2} ms   ",
            count - previous,
            p99 as f64 / 1000.0
        );
        let _ = std::io::stderr().flush();
        previous = count;
    }
    eprintln!();
}
