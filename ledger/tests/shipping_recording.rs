//! The shipper against the recording sink (what the simulator plugs in): while the sink is
//! down purchases still succeed and the backlog waits in the replicated state; when it returns
//! the backlog drains exactly once and every replica prunes it.

#![cfg(not(madsim))]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestCluster;
use common::purchase;
use ledger::shipping::hash::postgres_shard;
use ledger::shipping::shipper;
use ledger::shipping::sink::RecordingSink;
use ledger::state_machine::command::Outcome;

const POSTGRES_SHARDS: usize = 3;

async fn lag_events(cluster: &TestCluster) -> u64 {
    let mut lag = 0;
    for id in cluster.running_ids() {
        lag += cluster
            .node(id)
            .status()
            .iter()
            .map(|s| s.shipping_lag_events)
            .sum::<u64>();
    }
    lag
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchases_do_not_wait_for_a_down_sink_and_the_backlog_drains_once() {
    let cluster = TestCluster::start(3, |config| {
        config.shipping.poll_interval_ms = 10;
        config.shipping.retry_backoff_ms_max = 200;
    })
    .await;
    let sink = Arc::new(RecordingSink::new(POSTGRES_SHARDS));
    for id in cluster.running_ids() {
        let sink = sink.clone();
        shipper::spawn(cluster.node(id), move |_| sink.clone());
    }
    cluster.put_sku("apple", 1000).await;
    cluster.put_sku("zebra", 1000).await;

    tracing::info!("--- the sink is down: purchases still confirm");
    sink.set_down(true);
    for n in 0..200 {
        let sku = if n % 2 == 0 { "apple" } else { "zebra" };
        let (outcomes, _) = cluster.write(vec![purchase(sku, "u", &format!("o{n}"))]).await;
        assert_eq!(outcomes, vec![Outcome::Confirmed]);
    }
    // Followers may still be applying the last entries: wait for them, not for a fixed time.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while lag_events(&cluster).await != 3 * 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "every replica reports the whole backlog as lag"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sink.recorded().orders.is_empty(), "nothing reached a down sink");

    tracing::info!("--- the sink returns: the backlog drains and is pruned everywhere");
    sink.set_down(false);
    let deadline = tokio::time::Instant::now() + common::WAIT;
    while lag_events(&cluster).await > 0 {
        assert!(tokio::time::Instant::now() < deadline, "backlog did not drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recorded = sink.recorded();
    let mut shipped: Vec<String> = Vec::new();
    for (shard, orders) in &recorded.orders {
        for order in orders {
            assert_eq!(postgres_shard(&order.order_id, POSTGRES_SHARDS), *shard);
            shipped.push(order.order_id.clone());
        }
    }
    shipped.sort();
    let mut expected: Vec<String> = (0..200).map(|n| format!("o{n}")).collect();
    expected.sort();
    assert_eq!(shipped, expected, "every confirmed order exactly once");
    for id in cluster.running_ids() {
        for shard in cluster.node(id).shards().into_iter() {
            assert!(shard.view.read(|image| image.ledger.order_events.is_empty()));
        }
    }
    cluster.stop_all().await;
}
