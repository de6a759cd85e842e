//! End to end: a 3-node in-process cluster ships a flash sale of ~50 000 orders to 2 real
//! PostgreSQL databases while the shipping replica is killed once and Postgres "restarts" once
//! (a proxy drops every connection and refuses new ones for a while; the server is shared, so it
//! cannot really be restarted). At the end Postgres holds every confirmed order exactly once and
//! nothing else, the watermarks equal the last shipped indexes, and every replica has pruned
//! what was shipped.
//!
//! `FLASHLEDGER_E2E_ORDERS` overrides the number of orders (default 50 000).

#![cfg(not(madsim))]

mod common;
mod pg_support;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use common::TestCluster;
use futures::StreamExt;
use ledger::shipping::hash::postgres_shard;
use ledger::state_machine::command::Operation;
use ledger::state_machine::command::Outcome;
use ledger::state_machine::state::OrderState;
use ledger::types::NodeId;
use ledger::types::ShardId;
use pg_support::Databases;
use pg_support::Proxy;
use tokio::sync::RwLock;

/// (sku, units on sale): the sale asks for an equal share of each, so `pear` sells out.
const SKUS: [(&str, u64); 4] = [
    ("apple", 1_000_000),
    ("pear", 8_000),
    ("yak", 1_000_000),
    ("zebra", 1_000_000),
];
const BATCH_ORDERS: u64 = 100;
const WRITERS: usize = 8;
const POSTGRES_SHARDS: usize = 2;

/// What one Postgres row says.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Row {
    sku: Vec<u8>,
    qty: u64,
    user: String,
    ledger_shard: ShardId,
}

fn batch(first: u64, orders: u64) -> Vec<Operation> {
    let (sku, _) = SKUS[((first / BATCH_ORDERS) % SKUS.len() as u64) as usize];
    (first..first + orders)
        .map(|n| Operation::Purchase {
            sku: sku.as_bytes().to_vec(),
            qty: 1 + n % 2,
            user: format!("user-{}", n % 997),
            order_id: format!("order-{n}"),
            first_attempt_ms: ledger::node::now_ms(),
        })
        .collect()
}

/// The replica whose shipper last advanced `shard`'s mark, as the leader's state says.
async fn current_shipper(cluster: &TestCluster, shard: ShardId) -> NodeId {
    let leader = cluster.leader(shard).await;
    cluster
        .node(leader)
        .replica(shard)
        .expect("hosted")
        .view
        .read(|image| image.ledger.shipped_by)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_confirmed_order_lands_in_postgres_exactly_once() {
    // RUST_LOG=info shows the phases and every takeover, backoff and watermark race.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let Some(server) = pg_support::server_url("every_confirmed_order_lands_in_postgres_exactly_once") else {
        return;
    };
    let orders: u64 = std::env::var("FLASHLEDGER_E2E_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let databases = Databases::create(&server, "e2e", POSTGRES_SHARDS).await;
    let proxy = Proxy::start(pg_support::host_port(&server)).await;
    let routed: Vec<String> = databases.urls().iter().map(|u| proxy.route(u)).collect();
    let cluster = TestCluster::start(3, |config| {
        config.postgres = routed
            .iter()
            .map(|url| ledger::config::PostgresConfig { url: url.clone() })
            .collect();
        config.shipping.poll_interval_ms = 20;
        config.shipping.takeover_after_ms = 1000;
        config.shipping.retry_backoff_ms_max = 500;
        config.shipping.statement_timeout_ms = 2000;
        // Snapshots during the sale, so some carry unshipped events.
        config.raft.snapshot_ops_since_last = 200;
    })
    .await;
    for (sku, total) in SKUS {
        cluster.put_sku(sku, total).await;
    }

    tracing::info!("--- the sale, with the shipping replica killed and Postgres cut mid-way");
    let cluster = RwLock::new(cluster);
    let written = AtomicU64::new(0);
    let confirmed_answers = AtomicU64::new(0);
    let started = Instant::now();
    let sale = futures::stream::iter((0..orders).step_by(BATCH_ORDERS as usize))
        .map(|first| {
            let (cluster, written, confirmed_answers) = (&cluster, &written, &confirmed_answers);
            async move {
                let operations = batch(first, BATCH_ORDERS.min(orders - first));
                let count = operations.len() as u64;
                let (outcomes, _) = cluster.read().await.write(operations).await;
                let confirmed = outcomes.iter().filter(|o| **o == Outcome::Confirmed).count() as u64;
                assert!(
                    outcomes
                        .iter()
                        .all(|o| matches!(o, Outcome::Confirmed | Outcome::SoldOut { .. })),
                    "unexpected outcomes: {outcomes:?}"
                );
                confirmed_answers.fetch_add(confirmed, Ordering::Relaxed);
                written.fetch_add(count, Ordering::Relaxed);
            }
        })
        .buffer_unordered(WRITERS)
        .collect::<Vec<()>>();
    let chaos = async {
        let reached = |fraction: u64| {
            let written = &written;
            async move {
                while written.load(Ordering::Relaxed) < orders * fraction / 3 {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        };
        reached(1).await;
        let victim = current_shipper(&*cluster.read().await, 1).await;
        assert_ne!(victim, 0, "shard 1 has shipped something by a third of the sale");
        tracing::info!(victim, "--- killing the replica shipping shard 1");
        cluster.write().await.kill(victim).await;
        reached(2).await;
        tracing::info!("--- cutting Postgres for 3 s");
        proxy.cut();
        tokio::time::sleep(Duration::from_secs(3)).await;
        proxy.restore();
        tracing::info!(victim, "--- restarting the killed replica");
        cluster.write().await.restart(victim).await;
        victim
    };
    let (_, victim) = tokio::join!(sale, chaos);
    let sale_seconds = started.elapsed().as_secs_f64();
    let cluster = cluster.into_inner();

    tracing::info!("--- wait until every replica has the whole backlog shipped and pruned");
    let drain_started = Instant::now();
    let drained = || {
        let cluster = &cluster;
        async move {
            cluster.running_ids().iter().all(|id| {
                cluster.node(*id).status().iter().all(|s| s.shipping_lag_events == 0)
                    && cluster.node(*id).shards().into_iter().all(|shard| {
                        shard
                            .view
                            .read(|image| image.ledger.order_events.is_empty() && image.ledger.next_event_seq > 0)
                    })
            })
        }
    };
    pg_support::eventually(Duration::from_secs(90), "every shard's backlog shipped", drained).await;
    let drain_seconds = drain_started.elapsed().as_secs_f64();

    tracing::info!("--- Postgres holds exactly the confirmed orders");
    let mut confirmed: BTreeMap<String, Row> = BTreeMap::new();
    let mut next_seq: BTreeMap<ShardId, u64> = BTreeMap::new();
    // The ledger keeps orders under hashes of their ids: look up every order the sale sent.
    let sent: Vec<Operation> = (0..orders)
        .step_by(BATCH_ORDERS as usize)
        .flat_map(|first| batch(first, BATCH_ORDERS.min(orders - first)))
        .collect();
    for shard in [1, 2] {
        let leader = cluster.leader(shard).await;
        cluster.node(leader).replica(shard).expect("hosted").view.read(|image| {
            next_seq.insert(shard, image.ledger.next_event_seq);
            for operation in &sent {
                let Operation::Purchase {
                    sku,
                    qty,
                    user,
                    order_id,
                    ..
                } = operation
                else {
                    continue;
                };
                let kept = image.ledger.order(order_id);
                if kept.is_some_and(|order| order.state == OrderState::Confirmed) {
                    let row = Row {
                        sku: sku.clone(),
                        qty: *qty,
                        user: user.clone(),
                        ledger_shard: shard,
                    };
                    confirmed.insert(order_id.clone(), row);
                }
            }
        });
    }
    assert_eq!(confirmed.len() as u64, confirmed_answers.load(Ordering::Relaxed));
    assert_eq!(next_seq.values().sum::<u64>(), confirmed.len() as u64);
    let mut shipped: BTreeMap<String, Row> = BTreeMap::new();
    let mut last_index: BTreeMap<ShardId, u64> = BTreeMap::new();
    let mut watermarks = Vec::new();
    for (index, url) in databases.urls().iter().enumerate() {
        let client = pg_support::connect(url).await;
        let rows = client
            .query(
                "SELECT order_id, sku, qty, user_id, ledger_shard, log_index FROM orders",
                &[],
            )
            .await
            .expect("orders");
        for row in rows {
            let order_id: String = row.get(0);
            assert_eq!(
                postgres_shard(&order_id, POSTGRES_SHARDS),
                index,
                "{order_id} is in the wrong shard"
            );
            let ledger_shard = row.get::<_, i64>(4) as u64;
            let index_of_row = row.get::<_, i64>(5) as u64;
            let entry = last_index.entry(ledger_shard).or_default();
            *entry = (*entry).max(index_of_row);
            let previous = shipped.insert(
                order_id.clone(),
                Row {
                    sku: row.get(1),
                    qty: row.get::<_, i64>(2) as u64,
                    user: row.get(3),
                    ledger_shard,
                },
            );
            assert!(previous.is_none(), "{order_id} shipped twice");
        }
        for row in client
            .query(
                "SELECT ledger_shard, postgres_shard, next_seq, last_index FROM shipping_watermarks",
                &[],
            )
            .await
            .expect("watermarks")
        {
            let (shard, pg, seq, index_mark): (i64, i32, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
            assert_eq!(pg as usize, index);
            watermarks.push((shard as u64, pg as usize, seq as u64, index_mark as u64));
        }
    }
    assert_eq!(
        shipped.len(),
        confirmed.len(),
        "Postgres has as many orders as the ledger confirmed"
    );
    assert!(
        shipped == confirmed,
        "Postgres holds exactly the confirmed orders, with their fields"
    );
    assert_eq!(
        watermarks.len(),
        2 * POSTGRES_SHARDS,
        "one watermark per (ledger shard, postgres shard)"
    );
    for (shard, pg, seq, index_mark) in watermarks {
        assert_eq!(seq, next_seq[&shard], "watermark ({shard}, {pg}) covers every event");
        assert_eq!(
            index_mark, last_index[&shard],
            "watermark ({shard}, {pg}) is the last shipped index"
        );
    }

    let shipped_by: Vec<(ShardId, NodeId)> = cluster
        .node(cluster.leader(1).await)
        .status()
        .iter()
        .map(|s| (s.shard_id, s.shipped_by))
        .collect();
    eprintln!(
        "shipping e2e: {orders} orders ({} confirmed) in {sale_seconds:.1} s ({:.0} orders/s) with node {victim} \
         killed and Postgres cut for 3 s; backlog drained {drain_seconds:.1} s after the sale; shippers now {shipped_by:?}",
        confirmed.len(),
        orders as f64 / sale_seconds
    );
    cluster.stop_all().await;
    databases.drop_all().await;
}
