//! The flash-sale demo's shipping summary, printed when `cluster.toml` lists Postgres shards:
//! waits (bounded) for the sale's shard to report zero shipping lag, then counts the sale's
//! orders in every Postgres shard — what the rest of the business now sees.

use std::time::Duration;
use std::time::Instant;

use flashledger_client::Credentials;
use ledger::config::ClusterConfig;
use tokio_postgres::NoTls;

use crate::cli::status;

/// How long the demo waits for the backlog to drain before reporting the lag it sees.
const DRAIN_WAIT_MS_MAX: u64 = 30_000;

/// What reached Postgres.
pub struct ShippingReport {
    /// The sale's orders found in Postgres, summed over its shards.
    pub shipped_orders: u64,
    pub lag_events: u64,
    pub lag_seconds: f64,
    /// How long the backlog took to drain after the sale (or the bound, if it did not).
    pub drain_seconds: f64,
}

/// `None` when the config lists no Postgres shards (shipping is off).
pub async fn report(
    config: &ClusterConfig,
    addresses: &[String],
    credentials: &Credentials,
    sku: &str,
    shard_id: u64,
) -> Option<ShippingReport> {
    if config.postgres.is_empty() {
        return None;
    }
    let started = Instant::now();
    let (mut lag_events, mut lag_seconds) = (u64::MAX, 0.0);
    while started.elapsed() < Duration::from_millis(DRAIN_WAIT_MS_MAX) {
        (lag_events, lag_seconds) = shard_lag(addresses, credentials, shard_id).await;
        if lag_events == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drain_seconds = started.elapsed().as_secs_f64();
    let mut shipped_orders = 0;
    for postgres in &config.postgres {
        match count_orders(&postgres.url, sku).await {
            Ok(count) => shipped_orders += count,
            Err(error) => eprintln!("could not count shipped orders in {}: {error}", postgres.url),
        }
    }
    Some(ShippingReport {
        shipped_orders,
        lag_events,
        lag_seconds,
        drain_seconds,
    })
}

/// The largest lag any reachable replica reports for the shard (they share the replicated mark,
/// so they differ only by how far each has applied).
async fn shard_lag(addresses: &[String], credentials: &Credentials, shard_id: u64) -> (u64, f64) {
    let mut lag = (0, 0.0f64);
    for node in status::fetch_all(addresses, credentials).await {
        for shard in node
            .reply
            .iter()
            .flat_map(|r| &r.shards)
            .filter(|s| s.shard_id == shard_id)
        {
            lag.0 = lag.0.max(shard.shipping_lag_events);
            lag.1 = lag.1.max(shard.shipping_lag_seconds);
        }
    }
    lag
}

async fn count_orders(url: &str, sku: &str) -> Result<u64, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    let row = client
        .query_one("SELECT count(*) FROM orders WHERE sku = $1", &[&sku.as_bytes()])
        .await?;
    Ok(row.get::<_, i64>(0).max(0) as u64)
}
