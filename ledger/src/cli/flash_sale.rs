//! `ledger flash-sale`: the demo. Puts a fresh SKU on sale, lets C concurrent buyers race
//! through N purchase attempts (one unit each, a unique order id per attempt), then checks the
//! result the way an auditor would: nothing oversold by the answers buyers got, nothing oversold
//! in the ledger, and every replica of the SKU's shard agreeing on the same state.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::bail;
use clap::Args;
use flashledger_client::Client;
use flashledger_client::ClientOptions;
use flashledger_client::Consistency;
use flashledger_client::Credentials;
use flashledger_client::Outcome;
use flashledger_client::SaleRules;
use flashledger_proto::v1 as pb;
use flashledger_proto::v1::inventory_client::InventoryClient;
use hdrhistogram::Histogram;
use serde_json::json;

use crate::cli::Target;
use crate::cli::shipping_report;
use crate::cli::status;

#[derive(Debug, Args)]
pub struct FlashSaleArgs {
    /// Units put on sale.
    #[arg(long, default_value_t = 10_000)]
    pub stock: i64,
    /// Purchase attempts in total.
    #[arg(long, default_value_t = 100_000)]
    pub attempts: u64,
    /// Concurrent buyers.
    #[arg(long, default_value_t = 256)]
    pub buyers: u64,
    /// The SKU to sell; default: a fresh one per run.
    #[arg(long)]
    pub sku: Option<String>,
    /// Let the client library send concurrent buyers' purchases together, up to this many per
    /// Batch RPC (one log entry); 0 sends each purchase in its own RPC.
    #[arg(long, default_value_t = 0)]
    pub coalesce_ops_max: usize,
    /// Batch RPCs per shard in flight at once when coalescing (the client library's default).
    #[arg(long, default_value_t = flashledger_client::ClientOptions::default().coalesce_inflight_max)]
    pub coalesce_inflight_max: usize,
    #[command(flatten)]
    pub target: Target,
}

/// What the buyers saw.
#[derive(Default)]
struct Tally {
    confirmed: u64,
    sold_out: u64,
    other: u64,
    errors: u64,
    latency_us: Option<Histogram<u64>>,
}

impl Tally {
    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.confirmed += other.confirmed;
        self.sold_out += other.sold_out;
        self.other += other.other;
        self.errors += other.errors;
        match (&mut self.latency_us, other.latency_us) {
            (Some(mine), Some(theirs)) => mine.add(theirs).context("merging histograms")?,
            (mine @ None, theirs) => *mine = theirs,
            (_, None) => {}
        }
        Ok(())
    }
}

pub async fn run(args: FlashSaleArgs) -> anyhow::Result<()> {
    let addresses = args.target.addresses()?;
    let options = ClientOptions {
        coalesce_ops_max: args.coalesce_ops_max,
        ..args.target.client_options()?
    };
    let client = Client::connect(addresses.clone(), options.clone()).await?;
    let sku = args
        .sku
        .clone()
        .unwrap_or_else(|| format!("flash-{}", ledger::node::now_ms()));
    match client.put_sku(&sku, args.stock, SaleRules::default()).await? {
        Outcome::Ok => {}
        other => bail!("could not put {sku} on sale: {other:?}"),
    }
    if !args.target.json {
        println!(
            "flash sale: {} attempts for {} units of {sku} by {} concurrent buyers",
            args.attempts, args.stock, args.buyers
        );
    }

    let started = Instant::now();
    let tally = run_buyers(&client, &sku, &args).await?;
    let elapsed = started.elapsed();

    let ledger_stock = client
        .get_stock(&sku, Consistency::Linearizable)
        .await?
        .with_context(|| format!("{sku} vanished from the ledger"))?;
    let shard_id = client
        .shard_map()
        .shard_for(sku.as_bytes())
        .map(|s| s.shard_id)
        .context("no shard for the sku")?;
    let replicas = check_replicas(&addresses, &options.credentials, &sku, shard_id).await?;
    let oversold_answers = (tally.confirmed as i64 - args.stock).max(0);
    let oversold_ledger = (ledger_stock.sold + ledger_stock.reserved - ledger_stock.total).max(0);
    let latency = tally.latency_us.as_ref();
    let quantile_ms = |q: f64| latency.map(|h| h.value_at_quantile(q) as f64 / 1000.0).unwrap_or(0.0);
    let throughput = args.attempts as f64 / elapsed.as_secs_f64();
    let answers_match = tally.confirmed as i64 == ledger_stock.sold;
    let ok = oversold_answers == 0 && oversold_ledger == 0 && replicas.agree && answers_match && tally.errors == 0;
    let shipping = match args.target.config() {
        Some(config) => shipping_report::report(&config, &addresses, &options.credentials, &sku, shard_id).await,
        None => None,
    };
    let shipping_json = shipping.as_ref().map(|s| {
        json!({ "shipped_orders": s.shipped_orders, "lag_events": s.lag_events,
                "lag_seconds": s.lag_seconds, "drain_seconds": s.drain_seconds })
    });

    if args.target.json {
        let summary = json!({
            "sku": sku, "stock": args.stock, "attempts": args.attempts, "buyers": args.buyers,
            "sold": tally.confirmed, "sold_out_answers": tally.sold_out, "other_answers": tally.other,
            "errors": tally.errors, "oversold": oversold_answers.max(oversold_ledger),
            "ledger": { "total": ledger_stock.total, "available": ledger_stock.available,
                        "reserved": ledger_stock.reserved, "sold": ledger_stock.sold },
            "seconds": elapsed.as_secs_f64(), "attempts_per_second": throughput,
            "latency_ms": { "p50": quantile_ms(0.5), "p99": quantile_ms(0.99), "max": quantile_ms(1.0) },
            "replicas": replicas.lines, "replicas_agree": replicas.agree, "ok": ok,
            "shipping": shipping_json,
        });
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!("sold (confirmed answers)  {}", tally.confirmed);
        println!("sold-out answers          {}", tally.sold_out);
        println!("other answers / errors    {} / {}", tally.other, tally.errors);
        println!(
            "ledger                    total {} available {} reserved {} sold {}",
            ledger_stock.total, ledger_stock.available, ledger_stock.reserved, ledger_stock.sold
        );
        println!("oversold                  {}", oversold_answers.max(oversold_ledger));
        println!(
            "throughput                {throughput:.0} attempts/s over {:.2} s",
            elapsed.as_secs_f64()
        );
        println!(
            "latency                   p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            quantile_ms(0.5),
            quantile_ms(0.99),
            quantile_ms(1.0)
        );
        println!("replicas:");
        for line in &replicas.lines {
            println!("  {line}");
        }
        println!(
            "replicas agree            {}",
            if replicas.agree { "yes" } else { "NO" }
        );
        if let Some(shipping) = &shipping {
            let drained = if shipping.lag_events == 0 {
                format!("drained {:.1} s after the sale", shipping.drain_seconds)
            } else {
                format!(
                    "NOT drained within {:.1} s: see the nodes' logs",
                    shipping.drain_seconds
                )
            };
            println!(
                "shipped to postgres       {} orders of {sku} ({drained})",
                shipping.shipped_orders
            );
            println!(
                "final shipping lag        {} events, {:.1} s",
                shipping.lag_events, shipping.lag_seconds
            );
        }
        println!("result                    {}", if ok { "OK" } else { "FAILED" });
    }
    if !ok {
        bail!("the flash sale check failed");
    }
    Ok(())
}

async fn run_buyers(client: &Client, sku: &str, args: &FlashSaleArgs) -> anyhow::Result<Tally> {
    let next_attempt = Arc::new(AtomicU64::new(0));
    let mut buyers = Vec::new();
    for _ in 0..args.buyers.max(1) {
        let client = client.clone();
        let sku = sku.to_string();
        let next_attempt = next_attempt.clone();
        let attempts = args.attempts;
        buyers.push(tokio::spawn(async move {
            let mut tally = Tally {
                latency_us: Some(Histogram::new_with_bounds(1, 60_000_000, 3)?),
                ..Tally::default()
            };
            loop {
                let attempt = next_attempt.fetch_add(1, Ordering::Relaxed);
                if attempt >= attempts {
                    return Ok::<Tally, anyhow::Error>(tally);
                }
                let order_id = format!("{sku}-order-{attempt}");
                let user = format!("buyer-{attempt}");
                let sent = Instant::now();
                let answer = client.purchase(&sku, 1, &user, &order_id).await;
                if let Some(histogram) = tally.latency_us.as_mut() {
                    histogram.saturating_record(sent.elapsed().as_micros() as u64);
                }
                match answer {
                    Ok(Outcome::Confirmed) => tally.confirmed += 1,
                    Ok(Outcome::SoldOut { .. }) => tally.sold_out += 1,
                    Ok(_) => tally.other += 1,
                    Err(error) => {
                        tally.errors += 1;
                        tracing::warn!(%error, order_id, "purchase failed");
                    }
                }
            }
        }));
    }
    let mut total = Tally::default();
    for buyer in buyers {
        total.merge(buyer.await.context("buyer task")??)?;
    }
    Ok(total)
}

struct ReplicaCheck {
    lines: Vec<String>,
    agree: bool,
}

/// Waits (bounded) until every replica has applied what the leader has, then compares each
/// replica's own counts of `sku`, its state digest and its invariant check.
async fn check_replicas(
    addresses: &[String],
    credentials: &Credentials,
    sku: &str,
    shard_id: u64,
) -> anyhow::Result<ReplicaCheck> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let statuses = status::fetch_all(addresses, credentials).await;
        let mut rows = Vec::new();
        for node in &statuses {
            let Ok(reply) = &node.reply else { continue };
            let Ok(counts) = stale_counts(&node.addr, credentials, sku).await else {
                continue;
            };
            if let Some(shard) = reply.shards.iter().find(|s| s.shard_id == shard_id) {
                rows.push((
                    reply.node_id,
                    shard_id,
                    shard.applied_index,
                    shard.state_digest,
                    shard.invariant_ok,
                    counts,
                ));
            }
        }
        let converged = rows.len() == addresses.len()
            && rows
                .windows(2)
                .all(|w| w[0].2 == w[1].2 && w[0].3 == w[1].3 && w[0].5 == w[1].5)
            && rows.iter().all(|r| r.4);
        if converged || Instant::now() >= deadline {
            let lines = rows
                .iter()
                .map(|(node, shard, applied, digest, invariant, c)| {
                    format!(
                        "node {node} shard {shard}: applied {applied} digest {digest:016x} invariant {} \
                         total {} available {} reserved {} sold {}",
                        if *invariant { "ok" } else { "BROKEN" },
                        c.total,
                        c.available,
                        c.reserved,
                        c.sold
                    )
                })
                .collect();
            return Ok(ReplicaCheck {
                lines,
                agree: converged,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// This node's own applied counts of `sku` (a stale read served by that node).
async fn stale_counts(addr: &str, credentials: &Credentials, sku: &str) -> Result<pb::StockCounts, String> {
    let channel = flashledger_client::node_channel(addr, Duration::from_secs(5), credentials)?;
    let request = pb::GetStockRequest {
        sku: sku.as_bytes().to_vec().into(),
        consistency: pb::Consistency::Stale as i32,
        max_lag_entries: u64::MAX,
        priority: pb::Priority::Standard as i32,
    };
    let reply = InventoryClient::new(channel)
        .get_stock(request)
        .await
        .map_err(|s| s.to_string())?
        .into_inner();
    reply.counts.ok_or_else(|| "unknown sku".to_string())
}
