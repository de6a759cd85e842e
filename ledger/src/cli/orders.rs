//! SKU admin and order commands of the CLI, sent through the client library (which finds the
//! shard leader, follows redirects and retries with the same order id).

use std::time::Duration;

use clap::Subcommand;
use flashledger_client::Client;
use flashledger_client::Consistency;
use flashledger_client::Outcome;
use flashledger_client::RateLimit;
use flashledger_client::SaleRules;
use serde_json::json;

use crate::cli::Target;

#[derive(Debug, Subcommand)]
pub enum OrderCommand {
    /// Create a SKU, or reset its total and rules (never below what is reserved + sold).
    PutSku {
        sku: String,
        #[arg(long)]
        total: i64,
        /// Units one user may hold (reserved + sold).
        #[arg(long)]
        per_user_limit: Option<i64>,
        /// Sale window, ms since the Unix epoch.
        #[arg(long)]
        start_ms: Option<i64>,
        #[arg(long)]
        end_ms: Option<i64>,
        /// Default reservation TTL in ms.
        #[arg(long)]
        ttl_ms: Option<u64>,
        /// This SKU's rate limit per buyer: reserves and purchases per second (in place of the
        /// cluster's [admission] buyer_ops_per_s), with bursts of --buyer-burst-ops.
        #[arg(long)]
        buyer_ops_per_s: Option<i64>,
        #[arg(long, requires = "buyer_ops_per_s")]
        buyer_burst_ops: Option<i64>,
        /// This SKU's rate limit per client (in place of [admission] client_ops_per_s).
        #[arg(long)]
        client_ops_per_s: Option<i64>,
        #[arg(long, requires = "client_ops_per_s")]
        client_burst_ops: Option<i64>,
        #[command(flatten)]
        target: Target,
    },
    /// Grow (positive) or shrink (negative) a SKU's total.
    Restock {
        sku: String,
        #[arg(allow_hyphen_values = true)]
        delta: i64,
        #[command(flatten)]
        target: Target,
    },
    /// Read a SKU's counts.
    Get {
        sku: String,
        /// Read from any replica (at most this many entries behind) instead of the leader.
        #[arg(long)]
        stale_max_lag: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// Hold units for an order until it is confirmed, cancelled or expires.
    Reserve {
        sku: String,
        #[arg(allow_hyphen_values = true)]
        qty: i64,
        #[arg(long)]
        user: String,
        #[arg(long)]
        order: String,
        #[arg(long)]
        ttl_ms: Option<u64>,
        #[command(flatten)]
        target: Target,
    },
    /// Turn a reservation into a sale.
    Confirm {
        sku: String,
        #[arg(long)]
        order: String,
        #[command(flatten)]
        target: Target,
    },
    /// Release a reservation.
    Cancel {
        sku: String,
        #[arg(long)]
        order: String,
        #[command(flatten)]
        target: Target,
    },
    /// Reserve and confirm in one step.
    Purchase {
        sku: String,
        #[arg(allow_hyphen_values = true)]
        qty: i64,
        #[arg(long)]
        user: String,
        #[arg(long)]
        order: String,
        #[command(flatten)]
        target: Target,
    },
}

async fn connect(target: &Target) -> anyhow::Result<Client> {
    Ok(Client::connect(target.addresses()?, target.client_options()?).await?)
}

fn print_outcome(target: &Target, outcome: &Outcome) {
    if target.json {
        println!("{}", json!({ "outcome": format!("{outcome:?}") }));
    } else {
        println!("{outcome:?}");
    }
}

pub async fn run(command: OrderCommand) -> anyhow::Result<()> {
    match command {
        OrderCommand::PutSku {
            sku,
            total,
            per_user_limit,
            start_ms,
            end_ms,
            ttl_ms,
            buyer_ops_per_s,
            buyer_burst_ops,
            client_ops_per_s,
            client_burst_ops,
            target,
        } => {
            let rate =
                |ops_per_s: Option<i64>, burst_ops| ops_per_s.map(|ops_per_s| RateLimit { ops_per_s, burst_ops });
            let rules = SaleRules {
                start_ms,
                end_ms,
                per_user_limit,
                default_ttl: ttl_ms.map(Duration::from_millis),
                buyer_rate: rate(buyer_ops_per_s, buyer_burst_ops),
                client_rate: rate(client_ops_per_s, client_burst_ops),
            };
            let outcome = connect(&target).await?.put_sku(&sku, total, rules).await?;
            print_outcome(&target, &outcome);
        }
        OrderCommand::Restock { sku, delta, target } => {
            let outcome = connect(&target).await?.restock(&sku, delta).await?;
            print_outcome(&target, &outcome);
        }
        OrderCommand::Get {
            sku,
            stale_max_lag,
            target,
        } => {
            let consistency = match stale_max_lag {
                Some(max_lag_entries) => Consistency::Stale { max_lag_entries },
                None => Consistency::Linearizable,
            };
            let stock = connect(&target).await?.get_stock(&sku, consistency).await?;
            match (stock, target.json) {
                (None, true) => println!("{}", json!({ "sku": sku, "known": false })),
                (None, false) => println!("{sku}: unknown sku"),
                (Some(s), true) => println!(
                    "{}",
                    json!({ "sku": sku, "known": true, "total": s.total, "available": s.available,
                            "reserved": s.reserved, "sold": s.sold, "log_index": s.log_index, "served_by": s.served_by })
                ),
                (Some(s), false) => println!(
                    "{sku}: total {} available {} reserved {} sold {} (log index {}, node {})",
                    s.total, s.available, s.reserved, s.sold, s.log_index, s.served_by
                ),
            }
        }
        OrderCommand::Reserve {
            sku,
            qty,
            user,
            order,
            ttl_ms,
            target,
        } => {
            let ttl = ttl_ms.map(Duration::from_millis);
            let outcome = connect(&target).await?.reserve(&sku, qty, &user, &order, ttl).await?;
            print_outcome(&target, &outcome);
        }
        OrderCommand::Confirm { sku, order, target } => {
            let outcome = connect(&target).await?.confirm(&sku, &order).await?;
            print_outcome(&target, &outcome);
        }
        OrderCommand::Cancel { sku, order, target } => {
            let outcome = connect(&target).await?.cancel(&sku, &order).await?;
            print_outcome(&target, &outcome);
        }
        OrderCommand::Purchase {
            sku,
            qty,
            user,
            order,
            target,
        } => {
            let outcome = connect(&target).await?.purchase(&sku, qty, &user, &order).await?;
            print_outcome(&target, &outcome);
        }
    }
    Ok(())
}
