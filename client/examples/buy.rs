//! Buys one unit end to end against a running cluster: put a SKU on sale, reserve, confirm,
//! read the stock back.
//!
//! ```text
//! cargo run -p flashledger-client --example buy -- [SEED_ADDR ...]
//! ```
//!
//! Seeds default to `127.0.0.1:7101` (node 1 of the local `cluster.toml`). It talks to real
//! sockets, so under `--cfg madsim` it builds to a stub.

#![cfg_attr(madsim, allow(unused_imports))]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flashledger_client::{Client, ClientOptions, Consistency, Outcome, SaleRules};

#[cfg(madsim)]
fn main() {
    eprintln!("the buy example needs a real network; build it without --cfg madsim");
}

#[cfg(not(madsim))]
#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut seeds: Vec<String> = std::env::args().skip(1).collect();
    if seeds.is_empty() {
        seeds.push("127.0.0.1:7101".to_string());
    }
    println!("connecting via {seeds:?}");
    let client = Client::connect(seeds, ClientOptions::default()).await?;
    for shard in client.shard_map().shards() {
        println!(
            "shard {} [{:?}, {:?}) epoch {} replicas {:?} leader {:?}",
            shard.shard_id,
            String::from_utf8_lossy(&shard.start),
            String::from_utf8_lossy(&shard.end),
            shard.epoch,
            shard.replicas,
            shard.leader
        );
    }

    // A fresh order id per run; retrying with the *same* id would be deduplicated.
    let run_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis())
        .unwrap_or(0);
    let sku = "example-sneaker";
    let order_id = format!("example-order-{run_ms}");
    let rules = SaleRules {
        per_user_limit: Some(2),
        ..SaleRules::default()
    };

    println!("put_sku  -> {:?}", client.put_sku(sku, 100, rules).await?);
    let reserved = client
        .reserve(sku, 1, "example-user", &order_id, Some(Duration::from_secs(60)))
        .await?;
    println!("reserve  -> {reserved:?}");
    if matches!(reserved, Outcome::Reserved { .. }) {
        println!("confirm  -> {:?}", client.confirm(sku, &order_id).await?);
    }
    let Some(stock) = client.get_stock(sku, Consistency::Linearizable).await? else {
        println!("stock    -> unknown sku");
        return Ok(());
    };
    println!(
        "stock    -> total {} available {} reserved {} sold {} (log index {}, served by node {})",
        stock.total, stock.available, stock.reserved, stock.sold, stock.log_index, stock.served_by
    );
    Ok(())
}
