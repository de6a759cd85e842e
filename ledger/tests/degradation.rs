//! Graceful degradation through real `ledger serve` processes (issue 13, item 6), and the stock
//! cache catching up after its node is SIGKILLed.
//!
//! A shard that lost its quorum: writes to it fail within the client's deadline with a
//! retryable error, the stock cache and stale reads keep answering with the last committed
//! counts and a staleness that grows, and a shard on other replicas keeps taking writes. When
//! the quorum is back the cache catches up by itself.

#![cfg(not(madsim))]

use std::time::{Duration, Instant};

use flashledger_client::{
    CacheSource, Client, ClientError, ClientOptions, Consistency, Outcome, SaleRules, StockCache, StockCacheOptions,
};

mod process_support;

use process_support::ProcessCluster;

const WAIT: Duration = Duration::from_secs(30);

fn cache_options() -> StockCacheOptions {
    StockCacheOptions {
        progress_interval_ms: 50,
        stale_after_ms: 500,
        ..StockCacheOptions::default()
    }
}

/// A client whose calls give up after 2 s: "fail fast" is bounded by this.
async fn client(cluster: &ProcessCluster) -> Client {
    let options = ClientOptions {
        request_timeout_ms: 2_000,
        attempt_timeout_ms: 500,
        ..ClientOptions::default()
    };
    Client::connect(cluster.addrs.clone(), options).await.expect("connect")
}

async fn buy(client: &Client, sku: &str, order_id: &str) -> Result<Outcome, ClientError> {
    client.purchase(sku, 1, "buyer", order_id).await
}

/// Retries a purchase until the cluster answers it (a leader may be being elected).
async fn buy_eventually(client: &Client, sku: &str, order_id: &str) -> Outcome {
    let deadline = Instant::now() + WAIT;
    loop {
        match buy(client, sku, order_id).await {
            Ok(outcome) => return outcome,
            Err(error) if Instant::now() < deadline && error.is_retryable() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("purchase of {sku} failed: {error}"),
        }
    }
}

/// Waits until the cache reflects everything a linearizable read of `sku` sees, and checks that
/// its counts are that read's.
async fn assert_cache_caught_up(client: &Client, cache: &StockCache, sku: &str) {
    let truth = client
        .get_stock(sku, Consistency::Linearizable)
        .await
        .expect("linearizable read")
        .expect("on sale");
    cache
        .wait_synced(truth.log_index, WAIT)
        .await
        .unwrap_or_else(|error| panic!("cache did not reach {}: {error}; {:?}", truth.log_index, cache.status()));
    let cached = cache.get(sku).expect("cached");
    assert_eq!(
        (cached.total, cached.available, cached.reserved, cached.sold),
        (truth.total, truth.available, truth.reserved, truth.sold),
        "cache at {} against a linearizable read at {}",
        cached.staleness.index,
        truth.log_index
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_without_quorum_fails_writes_fast_while_reads_and_other_shards_go_on() {
    // Shard 1 ([.., m)) on nodes 1-3, shard 2 ([m, ..)) on nodes 3-5: killing 1 and 2 takes
    // shard 1's quorum and leaves shard 2 (and the meta group, on all five) a majority.
    let shards = "[[shards]]\nid = 1\nend = \"m\"\nreplicas = [1, 2, 3]\n\
                  [[shards]]\nid = 2\nstart = \"m\"\nreplicas = [3, 4, 5]\n";
    let mut cluster = ProcessCluster::start_placed(5, false, "", Some(shards));
    let client = client(&cluster).await;
    for sku in ["apple", "melon"] {
        client.put_sku(sku, 1_000, SaleRules::default()).await.expect("put");
    }
    let cache = client.stock_cache("", "m", cache_options()).expect("cache");
    for n in 0..5 {
        assert_eq!(
            buy_eventually(&client, "apple", &format!("a{n}")).await,
            Outcome::Confirmed
        );
    }
    assert_cache_caught_up(&client, &cache, "apple").await;
    let before = cache.get("apple").expect("cached");

    tracing::info!("--- nodes 1 and 2 die: shard 1 has one replica of three");
    cluster.kill(1);
    cluster.kill(2);

    let started = Instant::now();
    let refused = buy(&client, "apple", "lost-1").await.expect_err("no quorum, no write");
    let took = started.elapsed();
    eprintln!("write to the shard without quorum: {refused} after {took:?}");
    assert!(
        matches!(refused, ClientError::Unavailable { .. } | ClientError::Timeout { .. }),
        "unavailable or timed out, both retryable with the same order id: {refused:?}"
    );
    assert!(
        took < Duration::from_secs(4),
        "bounded by the client's 2 s deadline: {took:?}"
    );

    tracing::info!("--- the other shard keeps taking writes");
    for n in 0..5 {
        let started = Instant::now();
        assert_eq!(
            buy_eventually(&client, "melon", &format!("m{n}")).await,
            Outcome::Confirmed
        );
        eprintln!("purchase on the healthy shard: {:?}", started.elapsed());
    }

    tracing::info!("--- the cache keeps answering the last committed counts, its staleness growing");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let first = cache.read("apple").await.expect("answers").expect("apple");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let second = cache.get("apple").expect("apple");
    for answer in [&first, &second] {
        assert_eq!((answer.sold, answer.available), (before.sold, before.available));
        assert!(answer.staleness.index >= before.staleness.index);
    }
    assert_eq!(second.source, CacheSource::Cache);
    assert!(
        !second.staleness.live,
        "the cache says its stream is down: {:?}",
        second.staleness
    );
    let (first_age, second_age) = (
        first.staleness.age.unwrap_or_default(),
        second.staleness.age.expect("the cache's own age"),
    );
    assert!(
        second_age >= Duration::from_millis(2_000) && second_age > first_age,
        "staleness grows: {first_age:?} then {second_age:?}"
    );
    let stale = client
        .get_stock(
            "apple",
            Consistency::Stale {
                max_lag_entries: u64::MAX,
            },
        )
        .await
        .expect("a stale read answers")
        .expect("apple");
    assert_eq!(
        stale.sold, before.sold,
        "the surviving replica serves the last committed counts"
    );

    tracing::info!("--- the quorum comes back: writes resume and the cache catches up by itself");
    cluster.spawn(1);
    cluster.spawn(2);
    assert_eq!(buy_eventually(&client, "apple", "after").await, Outcome::Confirmed);
    assert_cache_caught_up(&client, &cache, "apple").await;
    assert!(cache.status().staleness.live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_catches_up_after_its_node_is_killed() {
    let mut cluster = ProcessCluster::start(3);
    let client = client(&cluster).await;
    client.put_sku("apple", 1_000, SaleRules::default()).await.expect("put");
    let cache = client.stock_cache("", "m", cache_options()).expect("cache");
    assert_cache_caught_up(&client, &cache, "apple").await;

    tracing::info!("--- every node in turn is SIGKILLed under writes and restarted; the cache follows");
    for node in 1..=3 {
        cluster.kill(node);
        for n in 0..5 {
            buy_eventually(&client, "apple", &format!("k{node}-{n}")).await;
        }
        assert_cache_caught_up(&client, &cache, "apple").await;
        cluster.spawn(node);
        cluster.wait_for_leaders();
    }
    let status = cache.status();
    assert!(
        status.reconnects > 0,
        "the stream's node was among those killed: {status:?}"
    );
    assert_eq!(cache.get("apple").expect("apple").sold, 15);
}
