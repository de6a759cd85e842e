//! The client's Watch-fed stock cache against an in-process 3-node cluster: the counts it serves
//! are exactly the committed state at the index it states (checked against every write's own
//! log index), and it keeps that true across a leader change and the loss of the node its
//! stream came from, resuming from its index. (SIGKILL of a real process: tests/degradation.rs.)

#![cfg(not(madsim))]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::TestCluster;
use common::purchase;
use flashledger_client::{Client, ClientOptions, StockCache, StockCacheOptions};

/// The cache options of these tests: marks every 20 ms, a stream silent 300 ms is reopened.
fn options() -> StockCacheOptions {
    StockCacheOptions {
        progress_interval_ms: 20,
        stale_after_ms: 300,
        ..StockCacheOptions::default()
    }
}

async fn client(cluster: &TestCluster) -> Client {
    let seeds: Vec<String> = cluster.config.nodes.iter().map(|n| n.addr.clone()).collect();
    Client::connect(seeds, ClientOptions::default()).await.expect("connect")
}

/// One purchase of one unit of `sku` per log entry, `count` of them; returns each entry's index
/// in order (the k-th purchase, 1-based, made `sold == k`).
async fn purchases(cluster: &TestCluster, sku: &str, tag: &str, count: usize) -> Vec<u64> {
    let mut indexes = Vec::with_capacity(count);
    for n in 0..count {
        let (_, index) = cluster.write(vec![purchase(sku, "u", &format!("{tag}-{n}"))]).await;
        indexes.push(index);
    }
    indexes
}

/// `sold` of a SKU at log index `at`, given the index of every purchase of it (all of its
/// writes after it was put on sale).
fn sold_at(purchase_indexes: &[u64], at: u64) -> i64 {
    purchase_indexes.iter().filter(|&&index| index <= at).count() as i64
}

/// Waits until the cache is synced at `index` or later, then checks its counts of `sku` against
/// a linearizable read (nothing writes meanwhile).
async fn assert_caught_up(cluster: &TestCluster, cache: &StockCache, sku: &str, index: u64) {
    cache
        .wait_synced(index, common::WAIT)
        .await
        .unwrap_or_else(|error| panic!("cache never reached index {index}: {error}; {:?}", cache.status()));
    let cached = cache.get(sku).expect("cached");
    let truth = cluster.linearizable_stock(sku).await;
    assert_eq!(
        (cached.total, cached.available, cached.reserved, cached.sold),
        (
            truth.total as i64,
            truth.available as i64,
            truth.reserved as i64,
            truth.sold as i64
        ),
        "the cache at index {} against a linearizable read",
        cached.staleness.index
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_serves_exactly_the_committed_state_at_the_index_it_states() {
    let cluster = TestCluster::start(3, |_| {}).await;
    let put_index = cluster.put_sku("apple", 1_000).await;
    cluster.put_sku("avocado", 1_000).await;
    let client = client(&cluster).await;
    let cache = client.stock_cache("a", "b", options()).expect("cache");
    cache.wait_synced(put_index, common::WAIT).await.expect("synced");
    assert!(cache.get("banana").is_none(), "nothing outside the range");

    tracing::info!("--- a reader samples the cache while two SKUs are bought, one entry at a time");
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (cache, stop) = (cache.clone(), stop.clone());
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                if let Some(apple) = cache.get("apple") {
                    samples.push((
                        apple.staleness.index,
                        apple.sold,
                        apple.available + apple.sold == apple.total,
                    ));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            samples
        })
    };
    let (apple, avocado) = tokio::join!(
        purchases(&cluster, "apple", "a", 60),
        purchases(&cluster, "avocado", "v", 60)
    );
    let last = apple.last().copied().max(avocado.last().copied()).unwrap_or(0);
    assert_caught_up(&cluster, &cache, "apple", last).await;
    stop.store(true, Ordering::SeqCst);
    let samples = reader.await.expect("reader");

    tracing::info!("--- every sample is the state at the index it states: sold == purchases at or below it");
    let advancing: std::collections::BTreeSet<u64> = samples.iter().map(|(index, _, _)| *index).collect();
    assert!(
        advancing.len() > 5,
        "the cache advanced while the writes went on: {advancing:?}"
    );
    for (index, sold, balanced) in &samples {
        assert!(balanced, "available + sold == total at index {index}");
        assert_eq!(*sold, sold_at(&apple, *index), "apple's sold at index {index}");
    }
    let avocado_cached = cache.get("avocado").expect("avocado");
    assert_eq!(avocado_cached.sold, sold_at(&avocado, avocado_cached.staleness.index));
    let staleness = cache.status().staleness;
    assert!(staleness.live, "{staleness:?}");
    assert!(
        staleness.age.is_some_and(|age| age < Duration::from_secs(2)),
        "{staleness:?}"
    );
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_survives_a_leader_change_and_the_loss_of_its_node() {
    let mut cluster = TestCluster::start(3, |_| {}).await;
    let put_index = cluster.put_sku("apple", 1_000).await;
    let client = client(&cluster).await;
    let cache = client.stock_cache("", "m", options()).expect("cache");
    cache.wait_synced(put_index, common::WAIT).await.expect("synced");
    let mut bought = purchases(&cluster, "apple", "before", 10).await;
    assert_caught_up(&cluster, &cache, "apple", *bought.last().expect("bought")).await;

    tracing::info!("--- the leader of the cached shard goes (the client streams from it: it is the map's leader)");
    let leader = cluster.leader(1).await;
    let reconnects_before = cache.status().reconnects;
    cluster.kill(leader).await;
    let new_leader = cluster.leader(1).await;
    assert_ne!(new_leader, leader);
    bought.extend(purchases(&cluster, "apple", "after", 10).await);
    let last = *bought.last().expect("bought");
    assert_caught_up(&cluster, &cache, "apple", last).await;
    let status = cache.status();
    assert!(
        status.reconnects > reconnects_before,
        "it resumed on another node: {status:?}"
    );
    assert_eq!(
        cache.get("apple").expect("apple").sold,
        sold_at(&bought, status.staleness.index)
    );

    tracing::info!("--- the node comes back and leadership moves again: the cache follows");
    cluster.restart(leader).await;
    cluster.wait_applied(leader, 1, last).await;
    let current = cluster.leader(1).await;
    cluster.kill(current).await;
    bought.extend(purchases(&cluster, "apple", "again", 10).await);
    assert_caught_up(&cluster, &cache, "apple", *bought.last().expect("bought")).await;
    assert_eq!(cache.get("apple").expect("apple").sold, 30);
    cluster.stop_all().await;
}
