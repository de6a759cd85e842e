//! `--cache`: product-page reads served from the client's [`StockCache`] (one per shard the
//! run's SKUs live in, fed by Watch), and the caches' lag behind the leader's commit, sampled.
//!
//! The lag of one sample is `now - log_time_ms` of the index the cache is synced at: how old,
//! by the leader's clock (the same machine's here), the newest entry a product page would see
//! reflected is. Under a steady write load every millisecond has entries, so this is how far
//! the cache trails the leader's commit (an upper bound: the stamp is taken when the leader
//! proposes, before the commit). A shard with no writes would show its idle time instead, so
//! only shards holding the run's SKUs are cached and sampled.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use flashledger_client::{CachedStock, Client, StockCache, StockCacheOptions};
use hdrhistogram::Histogram;

/// How often the lag is sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(5);

/// The caches of a run, by shard range.
pub struct Caches {
    caches: Vec<StockCache>,
    /// The range start of each cache, in order (a SKU's cache is the last one starting at or
    /// before it).
    starts: Vec<Vec<u8>>,
}

/// What the sampler measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CacheMeasured {
    pub lag_samples: u64,
    pub lag_p50_ms: f64,
    pub lag_p99_ms: f64,
    pub lag_max_ms: f64,
    /// Product-page reads answered from a cache.
    pub reads_from_cache: u64,
    /// Streams reopened during the run (all caches).
    pub reconnects: u64,
}

impl Caches {
    /// One cache per shard holding any of `skus`, each waited on until synced.
    pub async fn start(client: &Client, skus: &[String]) -> anyhow::Result<Caches> {
        let map = client.shard_map();
        let mut caches = Vec::new();
        let mut starts = Vec::new();
        for shard in map.shards() {
            if !skus.iter().any(|sku| shard.contains(sku.as_bytes())) {
                continue;
            }
            let cache = StockCache::start(client, &shard.start, &shard.end, StockCacheOptions::default())?;
            cache
                .wait_synced(0, Duration::from_secs(10))
                .await
                .with_context(|| format!("the stock cache of shard {} did not sync", shard.shard_id))?;
            caches.push(cache);
            starts.push(shard.start.clone());
        }
        Ok(Caches { caches, starts })
    }

    /// The cached counts of `sku` (with the read fallback when its stream is down).
    pub async fn read(&self, sku: &str) -> Result<Option<CachedStock>, flashledger_client::ClientError> {
        let position = self.starts.partition_point(|start| start.as_slice() <= sku.as_bytes());
        let Some(cache) = position.checked_sub(1).and_then(|index| self.caches.get(index)) else {
            return Ok(None);
        };
        cache.read(sku).await
    }

    /// Samples every cache's lag until `done`, then returns the figures.
    pub async fn sample_lag(self: Arc<Self>, done: Arc<AtomicBool>) -> Histogram<u64> {
        let mut lag = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("histogram bounds");
        while !done.load(Ordering::SeqCst) {
            tokio::time::sleep(SAMPLE_EVERY).await;
            let now_ms = crate::driver::unix_ms();
            for cache in &self.caches {
                let staleness = cache.status().staleness;
                if staleness.log_time_ms > 0 {
                    let _ = lag.record(now_ms.saturating_sub(staleness.log_time_ms).max(1));
                }
            }
        }
        lag
    }

    pub fn reconnects(&self) -> u64 {
        self.caches.iter().map(|cache| cache.status().reconnects).sum()
    }
}
