//! The buyers: concurrent simulated clients using the real client crate against hot, cold and
//! expiring SKUs, with reserve / confirm / cancel / purchase, retries with the same `order_id`
//! after an ambiguous failure, restocks, batches, and reads at both consistency levels. Every
//! call is recorded in the [`History`] with its simulated invocation and return times.
//!
//! Most buyers have their own client (own connections, one op per RPC); a few share one
//! coalescing client, as callers inside one service process would.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use flashledger_client::Client;
use flashledger_client::ClientError;
use flashledger_client::ClientOptions;
use flashledger_client::Consistency;
use flashledger_client::Outcome;
use flashledger_client::Priority;
use flashledger_client::SaleRules;
use flashledger_client::WriteOp;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use tokio::time::Instant;

use crate::history::Answer;
use crate::history::Call;
use crate::history::Counts;
use crate::history::History;
use crate::history::Op;

/// Reservations on non-expiring SKUs outlive any run (the linearizability model's clock does
/// not move, see `check::linearizability`).
const LONG_TTL: Duration = Duration::from_secs(3_600);
/// Reservations on expiring SKUs lapse within a run.
const SHORT_TTL: Duration = Duration::from_millis(300);
/// Attempts per logical write (the first plus retries with the same `order_id`).
const ATTEMPTS_MAX: usize = 3;

/// The SKUs a run sells.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub hot: Vec<Vec<u8>>,
    pub cold: Vec<Vec<u8>>,
    /// Reservations here use a short TTL and do expire; not linearizability-checked.
    pub expiring: Vec<Vec<u8>>,
}

impl Catalog {
    /// SKU names spread over the alphabet, so every shard gets hot, cold and expiring SKUs.
    pub fn new() -> Catalog {
        let named = |letters: &str, kind: &str| -> Vec<Vec<u8>> {
            letters.chars().map(|c| format!("{c}-{kind}").into_bytes()).collect()
        };
        Catalog {
            hot: named("ckw", "hot"),
            cold: named("aehmpsuy", "cold"),
            expiring: named("fqz", "exp"),
        }
    }

    /// (sku, units) for every SKU: hot SKUs sell out during a run, cold ones do not.
    pub fn stock(&self) -> Vec<(Vec<u8>, i64)> {
        let hot = self.hot.iter().map(|s| (s.clone(), 25));
        let cold = self.cold.iter().map(|s| (s.clone(), 1_000));
        let expiring = self.expiring.iter().map(|s| (s.clone(), 15));
        hot.chain(cold).chain(expiring).collect()
    }
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog::new()
    }
}

/// Where calls are recorded.
#[derive(Clone)]
pub struct Recorder {
    start: Instant,
    history: Arc<Mutex<History>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Recorder {
        Recorder {
            start,
            history: Arc::default(),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn record(&self, op: Op) {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).ops.push(op);
    }

    pub fn history(&self) -> History {
        self.history.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// One write through `client`, retried with the same op (same `order_id`) after ambiguous
    /// failures; every attempt is recorded. Returns the decided outcome, if any.
    pub async fn write(&self, who: usize, client: &Client, op: WriteOp) -> Option<Outcome> {
        let retriable = !matches!(op, WriteOp::Restock { .. });
        // Retried in later calls, as a careful service would: with the first call's stamp.
        let op = first_attempt_now(op);
        for _ in 0..ATTEMPTS_MAX {
            let invoke_ns = self.now_ns();
            let result = client.batch(vec![op.clone()]).await;
            let answer = match result {
                Ok(mut outcomes) if outcomes.len() == 1 => decided_answer(outcomes.remove(0)),
                Ok(outcomes) => Answer::Indeterminate(format!("{} outcomes for one op", outcomes.len())),
                Err(error) => failed_write(&error),
            };
            let decided = match &answer {
                Answer::Outcome(outcome) => Some(outcome.clone()),
                _ => None,
            };
            let retry = matches!(answer, Answer::Indeterminate(_)) && retriable;
            self.record(Op {
                client: who,
                invoke_ns,
                return_ns: self.now_ns(),
                call: Call::Write(op.clone()),
                answer,
            });
            if decided.is_some() || !retry {
                return decided;
            }
        }
        None
    }

    /// Several writes as one batch call; each op is recorded on its own with the batch's times.
    pub async fn batch(&self, who: usize, client: &Client, ops: Vec<WriteOp>) {
        let ops: Vec<WriteOp> = ops.into_iter().map(first_attempt_now).collect();
        let invoke_ns = self.now_ns();
        let result = client.batch(ops.clone()).await;
        let return_ns = self.now_ns();
        for (index, op) in ops.into_iter().enumerate() {
            let answer = match &result {
                Ok(outcomes) => match outcomes.get(index) {
                    Some(outcome) => decided_answer(outcome.clone()),
                    None => Answer::Indeterminate("batch answered too few outcomes".into()),
                },
                Err(error) => failed_write(error),
            };
            self.record(Op {
                client: who,
                invoke_ns,
                return_ns,
                call: Call::Write(op),
                answer,
            });
        }
    }

    pub async fn read(&self, who: usize, client: &Client, sku: &[u8], consistency: Consistency) {
        let invoke_ns = self.now_ns();
        let answer = match client.get_stock(sku, consistency).await {
            Ok(stock) => Answer::Stock(stock.map(|s| Counts {
                total: s.total,
                available: s.available,
                reserved: s.reserved,
                sold: s.sold,
            })),
            Err(error) => Answer::Failed(error.to_string()),
        };
        self.record(Op {
            client: who,
            invoke_ns,
            return_ns: self.now_ns(),
            call: Call::Read {
                sku: sku.to_vec(),
                consistency,
            },
            answer,
        });
    }
}

/// `op` stamped with this client's clock as its first attempt (writes keyed by an order id).
fn first_attempt_now(mut op: WriteOp) -> WriteOp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |since| since.as_millis() as i64);
    if let WriteOp::Reserve { first_attempt_ms, .. }
    | WriteOp::Confirm { first_attempt_ms, .. }
    | WriteOp::Cancel { first_attempt_ms, .. }
    | WriteOp::Purchase { first_attempt_ms, .. } = &mut op
    {
        *first_attempt_ms = now;
    }
    op
}

/// A write's outcome as the history records it. `REQUEST_TOO_OLD` says this call changed
/// nothing (an earlier attempt of the write may have): for the checkers it is a failed call.
fn decided_answer(outcome: Outcome) -> Answer {
    match outcome {
        Outcome::RequestTooOld => Answer::Failed("request too old".into()),
        Outcome::RateLimited { retry_after_ms } => {
            Answer::Failed(format!("rate limited, retry after {retry_after_ms} ms"))
        }
        outcome => Answer::Outcome(outcome),
    }
}

fn failed_write(error: &ClientError) -> Answer {
    if error.definitely_not_applied() {
        Answer::Failed(error.to_string())
    } else {
        Answer::Indeterminate(error.to_string())
    }
}

/// Calls the cluster refused before proposing, as the buyers saw them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Refusals {
    /// Shed for overload (`ClientError::Overloaded`).
    pub shed: usize,
    /// Operations answered `RATE_LIMITED`.
    pub rate_limited: usize,
}

impl Refusals {
    /// Counts the refusals among `history`'s answers.
    pub fn of(history: &History) -> Refusals {
        let mut refusals = Refusals::default();
        for op in &history.ops {
            if let Answer::Failed(why) = &op.answer {
                if why.starts_with("overloaded") {
                    refusals.shed += 1;
                } else if why.starts_with("rate limited") {
                    refusals.rate_limited += 1;
                }
            }
        }
        refusals
    }
}

/// Client options for the simulation: short deadlines so faults produce ambiguous answers;
/// `client_id` names the client for the nodes' per-client rate limits.
pub fn client_options(coalesce: bool, client_id: &str) -> ClientOptions {
    ClientOptions {
        request_timeout_ms: 3_000,
        attempt_timeout_ms: 800,
        connect_timeout_ms: 300,
        retries_max: 6,
        backoff_ms_initial: 20,
        backoff_ms_max: 300,
        // The production defaults: the simulator's faults are what the budget and the
        // breakers are for.
        retry_budget_percent: 20,
        retry_budget_reserve: 100,
        retry_budget_min_per_s: 10,
        breaker_failures_max: 3,
        breaker_open_ms: 500,
        coalesce_ops_max: if coalesce { 8 } else { 0 },
        coalesce_inflight_max: 2,
        // The simulator's clusters are insecure (madsim has no TLS).
        credentials: flashledger_client::Credentials::default(),
        client_id: Some(client_id.to_string()),
    }
}

/// Connects a client, retrying while the cluster has no answer yet (elections at start).
pub async fn connect(seeds: &[String], options: ClientOptions) -> Result<Client, String> {
    let mut last_error = String::new();
    for _ in 0..50 {
        match Client::connect(seeds.to_vec(), options.clone()).await {
            Ok(client) => return Ok(client),
            Err(error) => last_error = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("no client could connect: {last_error}"))
}

/// Puts every SKU of the catalog on sale (admin writes, retried until decided).
pub async fn put_catalog(recorder: &Recorder, client: &Client, catalog: &Catalog) -> Result<(), String> {
    for (sku, total) in catalog.stock() {
        let op = WriteOp::PutSku {
            sku: sku.clone(),
            total,
            rules: SaleRules::default(),
        };
        let mut decided = None;
        for _ in 0..10 {
            decided = recorder.write(usize::MAX, client, op.clone()).await;
            if decided.is_some() {
                break;
            }
        }
        if decided != Some(Outcome::Ok) {
            return Err(format!(
                "putting sku {:?} on sale: {decided:?}",
                String::from_utf8_lossy(&sku)
            ));
        }
    }
    Ok(())
}

/// One buyer: random operations until `deadline`.
pub async fn buyer(
    who: usize,
    seed: u64,
    client: Arc<Client>,
    catalog: Catalog,
    recorder: Recorder,
    deadline: Instant,
) {
    let mut rng = SmallRng::seed_from_u64(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ who as u64);
    let user = format!("u{who}");
    // Every fifth buyer is a premium one; the others write at STANDARD and read product pages
    // at BACKGROUND (the client's defaults).
    let client = if who % 5 == 0 {
        Arc::new(client.with_priority(Priority::Premium))
    } else {
        client
    };
    let mut orders = 0u64;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(5..120))).await;
        orders += 1;
        let order_id = format!("b{who}-{orders}");
        let expiring = rng.gen_bool(0.15);
        let sku = if expiring {
            catalog.expiring.choose(&mut rng)
        } else if rng.gen_bool(0.6) {
            catalog.hot.choose(&mut rng)
        } else {
            catalog.cold.choose(&mut rng)
        };
        let Some(sku) = sku.cloned() else { return };
        match rng.gen_range(0..100) {
            0..30 => {
                let op = WriteOp::Purchase {
                    sku,
                    qty: rng.gen_range(1..=2),
                    user: user.clone(),
                    order_id,
                    first_attempt_ms: 0,
                };
                recorder.write(who, &client, op).await;
            }
            30..60 => {
                let ttl = if expiring { SHORT_TTL } else { LONG_TTL };
                let reserve = WriteOp::Reserve {
                    sku: sku.clone(),
                    qty: rng.gen_range(1..=2),
                    user: user.clone(),
                    order_id: order_id.clone(),
                    ttl: Some(ttl),
                    first_attempt_ms: 0,
                };
                let reserved = recorder.write(who, &client, reserve).await;
                if !matches!(reserved, Some(Outcome::Reserved { .. })) {
                    continue;
                }
                let pause = if expiring {
                    rng.gen_range(0..600)
                } else {
                    rng.gen_range(0..100)
                };
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let finish = if rng.gen_bool(0.6) {
                    WriteOp::Confirm {
                        sku,
                        order_id,
                        first_attempt_ms: 0,
                    }
                } else {
                    WriteOp::Cancel {
                        sku,
                        order_id,
                        first_attempt_ms: 0,
                    }
                };
                recorder.write(who, &client, finish).await;
            }
            60..80 => recorder.read(who, &client, &sku, Consistency::Linearizable).await,
            80..88 => {
                let stale = Consistency::Stale { max_lag_entries: 5 };
                recorder.read(who, &client, &sku, stale).await
            }
            88..96 => {
                // Two purchases of distinct SKUs in one call (the client splits it per shard).
                let mut skus = catalog.hot.clone();
                skus.extend(catalog.cold.iter().cloned());
                let chosen: Vec<Vec<u8>> = skus.choose_multiple(&mut rng, 2).cloned().collect();
                let ops = chosen
                    .into_iter()
                    .enumerate()
                    .map(|(i, sku)| WriteOp::Purchase {
                        sku,
                        qty: 1,
                        user: user.clone(),
                        order_id: format!("{order_id}-{i}"),
                        first_attempt_ms: 0,
                    })
                    .collect();
                recorder.batch(who, &client, ops).await;
            }
            _ => {
                let op = WriteOp::Restock {
                    sku,
                    delta: rng.gen_range(1..=5),
                };
                recorder.write(who, &client, op).await;
            }
        }
    }
}
