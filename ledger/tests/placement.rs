//! The placement scheduler on a live cluster (issue 15, item 3): the meta leader spreads
//! leaderships piled onto one node, including when it must ask another node who leads a shard
//! it does not host; it moves replicas onto a node added empty until replica counts differ by at
//! most 1; and with `balance_leaders = false` a pile of leaderships stays where it is.

#![cfg(not(madsim))]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::TestCluster;
use common::WAIT;
use ledger::config::ClusterConfig;
use ledger::config::ShardConfig;
use ledger::meta::map::META_SHARD;
use ledger::meta::map::NodeState;
use ledger::meta::map::ShardMap;
use ledger::node::NodeError;
use ledger::node::reshape::ReshapeRequest;
use ledger::types::NodeId;
use ledger::types::ShardId;
use openraft::async_runtime::WatchReceiver;

/// Between two placement rounds: short, so a test needs seconds, and long enough that the
/// leader transfers a test makes itself mostly land between two rounds.
const PLACEMENT_INTERVAL_MS: u64 = 1500;

/// Four nodes, every one a voter of the meta group; data shards on three each, node 1 on all:
/// 1 on [1, 2, 3], 2 on [1, 2, 4], 3 on [1, 3, 4]. Replica counts 4, 3, 3, 3 (balanced).
fn overlapping_shards(config: &mut ClusterConfig) {
    let shard = |id, start: &str, end: &str, replicas: [NodeId; 3]| ShardConfig {
        id,
        start: start.into(),
        end: end.into(),
        replicas: replicas.to_vec(),
    };
    config.shards = vec![
        shard(1, "", "g", [1, 2, 3]),
        shard(2, "g", "p", [1, 2, 4]),
        shard(3, "p", "", [1, 3, 4]),
    ];
    config.placement.interval_ms = PLACEMENT_INTERVAL_MS;
    config.placement.balance_leaders = true;
    config.placement.balance_replicas = true;
}

/// `RUST_LOG=info` shows the phases and every placement decision.
fn show_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

async fn seeded(cluster: &TestCluster) {
    wait_for("the map is seeded on every node", || async {
        cluster
            .running_ids()
            .iter()
            .all(|id| cluster.node(*id).shard_map().is_seeded())
    })
    .await;
}

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, done: impl Fn() -> F) {
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while !done().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asks the meta leader for `request`, following leader changes.
async fn reshape(cluster: &TestCluster, request: ReshapeRequest) -> Result<(), NodeError> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let leader = cluster.leader(META_SHARD).await;
        match cluster.node(leader).reshape(request.clone()).await {
            Ok(_) => return Ok(()),
            Err(NodeError::NotLeader { .. } | NodeError::Timeout { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Makes `to` lead `shard`, retrying while another change (a placement round) gets in the way.
async fn transfer(cluster: &TestCluster, shard: ShardId, to: NodeId) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while cluster.leader(shard).await != to {
        if let Err(error) = reshape(cluster, ReshapeRequest::TransferLeader { shard_id: shard, to }).await {
            tracing::info!(shard, to, %error, "transfer not done; retrying");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {to} never led shard {shard}"
        );
    }
}

/// The map as the meta leader has it.
async fn meta_map(cluster: &TestCluster) -> std::sync::Arc<ShardMap> {
    let leader = cluster.leader(META_SHARD).await;
    cluster.node(leader).shard_map()
}

/// How many shards (0 included) each running node leads now.
async fn leader_counts(cluster: &TestCluster) -> BTreeMap<NodeId, usize> {
    let map = meta_map(cluster).await;
    let mut counts: BTreeMap<NodeId, usize> = cluster.running_ids().into_iter().map(|id| (id, 0)).collect();
    for shard in std::iter::once(META_SHARD).chain(map.shards.keys().copied()) {
        *counts.entry(cluster.leader(shard).await).or_default() += 1;
    }
    counts
}

fn spread(counts: &BTreeMap<NodeId, usize>) -> usize {
    counts.values().max().copied().unwrap_or(0) - counts.values().min().copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaderships_piled_on_one_node_are_spread_until_no_node_leads_two_more() {
    show_logs();
    let cluster = TestCluster::start(4, overlapping_shards).await;
    seeded(&cluster).await;

    tracing::info!("--- every leadership onto node 1, the only voter of every shard");
    for shard in [1, 2, 3, META_SHARD] {
        transfer(&cluster, shard, 1).await;
    }
    tracing::info!(counts = ?leader_counts(&cluster).await, "after piling up");
    wait_for("leaderships are spread", || async {
        spread(&leader_counts(&cluster).await) <= 1
    })
    .await;

    tracing::info!("--- the meta group and shards 2 and 3 onto node 4, shard 1 (which node 4 does not host) on node 1");
    // Node 4 leads three, node 1 one; node 4 can place well only by asking who leads shard 1.
    for (shard, to) in [(META_SHARD, 4), (1, 1), (2, 4), (3, 4)] {
        transfer(&cluster, shard, to).await;
    }
    tracing::info!(counts = ?leader_counts(&cluster).await, "after piling up on node 4");
    wait_for("leaderships are spread again", || async {
        spread(&leader_counts(&cluster).await) <= 1
    })
    .await;
    assert!(meta_map(&cluster).await.steps.is_empty(), "no replica moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_move_onto_an_added_empty_node_until_counts_differ_by_at_most_one() {
    show_logs();
    let cluster = TestCluster::start(4, |config| {
        for shard in &mut config.shards {
            shard.replicas = vec![1, 2, 3];
        }
        config.placement.interval_ms = 300;
        config.placement.balance_leaders = true;
        config.placement.balance_replicas = true;
    })
    .await;
    seeded(&cluster).await;
    cluster.put_sku("apple", 1_000).await;
    cluster.put_sku("zebra", 1_000).await;

    tracing::info!("--- node 4 joins empty: nodes 1-3 hold 3 replicas each (shards 0, 1, 2), node 4 none");
    let addr = cluster.config.node(4).expect("node 4").addr.clone();
    reshape(&cluster, ReshapeRequest::AddNode { node_id: 4, addr })
        .await
        .expect("add node 4");
    let held = |map: &ShardMap| -> BTreeMap<NodeId, usize> {
        map.nodes
            .iter()
            .filter(|(_, entry)| entry.state == NodeState::Active)
            .map(|(id, _)| (*id, map.shards_on(*id).len()))
            .collect()
    };
    wait_for("replica counts differ by at most 1", || async {
        let map = meta_map(&cluster).await;
        map.steps.is_empty() && spread(&held(&map)) <= 1
    })
    .await;
    let map = meta_map(&cluster).await;
    assert_eq!(held(&map)[&4], 2, "9 replicas over 4 nodes: 3, 2, 2, 2");
    for shard in [META_SHARD, 1, 2] {
        let (voters, learners) = map.hosts_of(shard).expect("a shard");
        assert_eq!((voters.len(), learners.len()), (3, 0), "shard {shard} kept 3 replicas");
    }

    tracing::info!("--- node 4 runs what the map gives it, as a voter, and the moved shards serve");
    wait_for("node 4 runs its replicas", || async {
        map.shards_on(4)
            .iter()
            .all(|shard| cluster.node(4).replica(*shard).is_some())
    })
    .await;
    for shard in map.shards_on(4) {
        let leader = cluster.leader(shard).await;
        let replica = cluster.node(leader).replica(shard).expect("the leader hosts it");
        let membership = replica.raft.metrics().borrow_watched().membership_config.clone();
        assert!(membership.voter_ids().any(|id| id == 4), "shard {shard}");
    }
    cluster.write(vec![common::purchase("apple", "u", "after-apple")]).await;
    cluster.write(vec![common::purchase("zebra", "u", "after-zebra")]).await;
    assert_eq!(cluster.linearizable_stock("apple").await.sold, 1);
    assert_eq!(cluster.linearizable_stock("zebra").await.sold, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_balance_leaders_off_a_pile_of_leaderships_stays() {
    show_logs();
    let cluster = TestCluster::start(4, |config| {
        overlapping_shards(config);
        config.placement.balance_leaders = false;
        config.placement.interval_ms = 200;
    })
    .await;
    seeded(&cluster).await;
    for shard in [1, 2, 3, META_SHARD] {
        transfer(&cluster, shard, 1).await;
    }
    let version = meta_map(&cluster).await.version;
    // Absence of a change can only be watched for a while: ten rounds.
    tokio::time::sleep(Duration::from_millis(10 * 200)).await;
    let counts = leader_counts(&cluster).await;
    assert_eq!(counts[&1], 4, "{counts:?}");
    assert_eq!(meta_map(&cluster).await.version, version, "no replica moved either");
}

/// Two SKUs bought hard in one range that one node leads: the scheduler splits the range
/// between them, and the new half is led from another node. Buyers see no error, and every
/// confirmed purchase is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_range_of_two_busy_skus_is_split_between_them_and_its_halves_are_led_apart() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;

    show_logs();
    let cluster = TestCluster::start(3, |config| {
        config.placement.interval_ms = 500;
        // Only the split moves anything: leaders and replicas stay where the test puts them.
        config.placement.balance_leaders = false;
        config.placement.balance_replicas = false;
        config.placement.split_hot_ranges = true;
        config.placement.hot_range_ops_per_s = 20;
    })
    .await;
    seeded(&cluster).await;
    for sku in ["apple", "banana"] {
        cluster.put_sku(sku, 10_000_000).await;
    }
    let seeds: Vec<String> = cluster.config.nodes.iter().map(|n| n.addr.clone()).collect();
    let client = flashledger_client::Client::connect(seeds, flashledger_client::ClientOptions::default())
        .await
        .expect("connect");
    let stop = Arc::new(AtomicBool::new(false));
    let mut buyers = Vec::new();
    for sku in ["apple", "banana"] {
        let bought = Arc::new(AtomicU64::new(0));
        for buyer in 0..4 {
            let (client, stop, bought) = (client.clone(), stop.clone(), bought.clone());
            buyers.push((
                sku,
                bought.clone(),
                tokio::spawn(async move {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let order = format!("{sku}-{buyer}-{n}");
                        match client.purchase(sku, 1, "u", &order).await {
                            Ok(flashledger_client::Outcome::Confirmed) => {
                                bought.fetch_add(1, Ordering::Relaxed);
                            }
                            other => panic!("purchase {order}: {other:?}"),
                        }
                    }
                }),
            ));
        }
    }

    wait_for("the scheduler splits shard 1 between the two SKUs", || async {
        meta_map(&cluster)
            .await
            .shards
            .get(&1)
            .is_some_and(|shard| shard.end == b"banana")
    })
    .await;
    let map = meta_map(&cluster).await;
    let (new_shard, _) = map.shard_for_sku(b"banana").expect("a shard holds banana");
    assert_ne!(new_shard, 1);
    wait_for("the halves are led by different nodes", || async {
        cluster.leader(1).await != cluster.leader(new_shard).await
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut bought_of: BTreeMap<&str, u64> = BTreeMap::new();
    for (sku, bought, buyer) in buyers {
        buyer.await.unwrap_or_else(|e| panic!("a buyer of {sku} failed: {e}"));
        bought_of.insert(sku, bought.load(Ordering::Relaxed));
    }
    for (sku, bought) in bought_of {
        let stock = client
            .get_stock(sku, flashledger_client::Consistency::Linearizable)
            .await
            .expect("read")
            .expect("on sale");
        assert_eq!(
            stock.sold as u64, bought,
            "{sku}: every confirmed purchase counted once"
        );
    }
    let map = meta_map(&cluster).await;
    assert_eq!(map.shards.len(), 3, "one split, not more: {:?}", map.shards);
}
