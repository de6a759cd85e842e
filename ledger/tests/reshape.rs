//! Reshaping a live cluster (issue 15): the meta group (shard 0) seeds the shard map from the
//! config and serves it; nodes are added, replicas moved, a node drained and removed, and a
//! shard's leadership handed over, while a client keeps buying. Nothing a caller does fails
//! because of it, every replica ends identical, and a move cut short by a crash of the meta
//! leader completes under the next one.

#![cfg(not(madsim))]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::TestCluster;
use common::WAIT;
use flashledger_client::Client;
use flashledger_client::ClientOptions;
use flashledger_client::Outcome as ClientOutcome;
use ledger::meta::map::META_SHARD;
use ledger::meta::map::ShardMap;
use ledger::node::NodeError;
use ledger::node::reshape::ReshapeRequest;
use ledger::types::NodeId;
use ledger::types::ShardId;
use openraft::async_runtime::WatchReceiver;

/// A cluster of `nodes` nodes whose shards (below "m", and the rest) live on nodes 1-3 only:
/// nodes 4 and up start empty, as machines added to a running cluster do.
async fn cluster_of(nodes: u64) -> TestCluster {
    let cluster = TestCluster::start(nodes, |config| {
        for shard in &mut config.shards {
            shard.replicas = vec![1, 2, 3];
        }
        // These tests reshape by hand and assert where replicas and leaders end up; a placement
        // round landing between two of their steps (node 4 joins empty, so it would take a
        // replica) would change that. tests/placement.rs covers the scheduler.
        config.placement.balance_leaders = false;
        config.placement.balance_replicas = false;
    })
    .await;
    wait_for(&cluster, "the map is seeded on every node", |cluster| {
        cluster
            .running_ids()
            .iter()
            .all(|id| cluster.node(*id).shard_map().is_seeded())
    })
    .await;
    cluster
}

async fn wait_for(cluster: &TestCluster, what: &str, done: impl Fn(&TestCluster) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while !done(cluster) {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asks the meta leader for `request`, following leader changes.
async fn reshape(cluster: &TestCluster, request: ReshapeRequest) -> Result<(u64, Vec<u64>), NodeError> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let leader = cluster.leader(META_SHARD).await;
        match cluster.node(leader).reshape(request.clone()).await {
            Ok((version, steps)) => return Ok((version, steps.iter().map(|s| s.id).collect())),
            Err(NodeError::NotLeader { .. } | NodeError::Timeout { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The map as the meta leader has it.
async fn meta_map(cluster: &TestCluster) -> Arc<ShardMap> {
    let leader = cluster.leader(META_SHARD).await;
    cluster.node(leader).shard_map()
}

async fn wait_steps_done(cluster: &TestCluster) {
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        let map = meta_map(cluster).await;
        if map.steps.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "steps not done: {:?}",
            map.steps
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The voters of `shard` as its leader's Raft membership has them.
async fn raft_voters(cluster: &TestCluster, shard: ShardId) -> BTreeSet<NodeId> {
    let leader = cluster.leader(shard).await;
    let replica = cluster.node(leader).replica(shard).expect("the leader hosts it");
    let membership = replica.raft.metrics().borrow_watched().membership_config.clone();
    membership.voter_ids().collect()
}

/// Buys one unit at a time of `sku` through the client until told to stop; counts the
/// successes, and fails the test on any error a caller would see.
fn buy_in_background(
    client: Client,
    sku: &'static str,
    stop: Arc<AtomicBool>,
    bought: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let order = format!("{sku}-order-{n}");
            match client.purchase(sku, 1, &format!("buyer-{n}"), &order).await {
                Ok(ClientOutcome::Confirmed) => {
                    bought.fetch_add(1, Ordering::Relaxed);
                }
                Ok(ClientOutcome::SoldOut { .. }) => {}
                Ok(other) => panic!("purchase {order}: unexpected outcome {other:?}"),
                Err(error) => panic!("purchase {order} failed during reshaping: {error}"),
            }
        }
    })
}

async fn client_of(cluster: &TestCluster) -> Client {
    let seeds: Vec<String> = cluster.config.nodes.iter().map(|n| n.addr.clone()).collect();
    Client::connect(seeds, ClientOptions::default()).await.expect("connect")
}

/// Every running voter of `shard` reaches the same applied index and state digest. Voters, not
/// every node that still hosts a replica: a node a move took the shard from retires its replica
/// on its next hosting round, possibly while this waits on it.
async fn replicas_identical(cluster: &TestCluster, shard: ShardId) {
    let leader = cluster.leader(shard).await;
    let index = cluster.last_log_index(leader, shard);
    let voters = raft_voters(cluster, shard).await;
    let hosts: Vec<NodeId> = cluster
        .running_ids()
        .into_iter()
        .filter(|id| voters.contains(id))
        .collect();
    for id in &hosts {
        cluster.wait_applied(*id, shard, index).await;
    }
    let digests: BTreeSet<u64> = hosts
        .iter()
        .map(|id| {
            let replica = cluster.node(*id).replica(shard).expect("hosted");
            replica.view.read(|image| image.ledger.digest())
        })
        .collect();
    assert_eq!(digests.len(), 1, "replicas of shard {shard} on {hosts:?} differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_meta_group_seeds_the_map_from_the_config_and_every_node_serves_it() {
    let cluster = cluster_of(4).await;
    let map = meta_map(&cluster).await;
    assert_eq!(map.meta_replicas, vec![1, 2, 3]);
    assert_eq!(
        map.nodes.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3],
        "node 4 joins when added"
    );
    assert_eq!(map.shards.len(), 2);
    for (id, shard) in &map.shards {
        assert_eq!(shard.replicas, vec![1, 2, 3], "shard {id}");
        assert_eq!((shard.epoch, shard.conf_ver), (1, 1));
    }
    // Node 4 hosts nothing, yet knows the map (from a peer) and routes by it.
    assert!(cluster.node(4).replica_ids().is_empty());
    assert_eq!(cluster.node(4).shard_map().version, map.version);
    let client = client_of(&cluster).await;
    let served = client.refresh_shard_map().await.expect("shard map");
    assert_eq!(served.shards().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_moves_to_an_added_node_while_buyers_buy_and_a_bad_change_changes_nothing() {
    let cluster = cluster_of(4).await;
    cluster.put_sku("apple", 1_000_000).await;
    let client = client_of(&cluster).await;
    let (stop, bought) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let buyer = buy_in_background(client.clone(), "apple", stop.clone(), bought.clone());

    let before = meta_map(&cluster).await;
    let refused = reshape(
        &cluster,
        ReshapeRequest::AddReplica {
            shard_id: 1,
            node_id: 4,
        },
    )
    .await;
    assert!(
        matches!(&refused, Err(NodeError::Reshape(reason)) if reason.contains("not in the cluster")),
        "{refused:?}"
    );
    let refused = reshape(
        &cluster,
        ReshapeRequest::MoveReplica {
            shard_id: 9,
            from: 1,
            to: 2,
        },
    )
    .await;
    assert!(matches!(refused, Err(NodeError::Reshape(_))), "{refused:?}");
    assert_eq!(
        meta_map(&cluster).await.version,
        before.version,
        "refused changes change nothing"
    );

    let addr = cluster.config.node(4).expect("node 4").addr.clone();
    reshape(&cluster, ReshapeRequest::AddNode { node_id: 4, addr })
        .await
        .expect("add node 4");
    let (_, queued) = reshape(
        &cluster,
        ReshapeRequest::MoveReplica {
            shard_id: 1,
            from: 1,
            to: 4,
        },
    )
    .await
    .expect("move");
    assert_eq!(queued.len(), 2, "an add and a remove");
    wait_steps_done(&cluster).await;
    let map = meta_map(&cluster).await;
    assert_eq!(map.shards[&1].replicas, vec![2, 3, 4]);
    assert_eq!(map.shards[&1].conf_ver, 4, "learner in, voter in, voter out");
    assert_eq!(raft_voters(&cluster, 1).await, BTreeSet::from([2, 3, 4]));
    wait_for(&cluster, "node 1 retires its replica of shard 1", |cluster| {
        cluster.node(1).replica(1).is_none() && cluster.node(4).replica(1).is_some()
    })
    .await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    buyer.await.expect("no purchase failed");
    assert!(bought.load(Ordering::Relaxed) > 0);
    replicas_identical(&cluster, 1).await;
    let stock = cluster.linearizable_stock("apple").await;
    assert_eq!(
        stock.sold,
        bought.load(Ordering::Relaxed),
        "every confirmed purchase counted once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leadership_moves_where_it_is_asked_and_not_to_a_non_voter() {
    let cluster = cluster_of(3).await;
    let leader = cluster.leader(2).await;
    let to = if leader == 3 { 2 } else { 3 };
    reshape(&cluster, ReshapeRequest::TransferLeader { shard_id: 2, to })
        .await
        .expect("transfer");
    assert_eq!(cluster.leader(2).await, to);
    let refused = reshape(&cluster, ReshapeRequest::TransferLeader { shard_id: 2, to: 7 }).await;
    assert!(matches!(refused, Err(NodeError::Reshape(_))), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_node_hands_everything_over_and_leaves_while_buyers_buy() {
    let mut cluster = cluster_of(5).await;
    cluster.put_sku("apple", 1_000_000).await;
    cluster.put_sku("zebra", 1_000_000).await;
    let client = client_of(&cluster).await;
    let (stop, bought) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let buyers = [
        buy_in_background(client.clone(), "apple", stop.clone(), bought.clone()),
        buy_in_background(client.clone(), "zebra", stop.clone(), bought.clone()),
    ];
    for id in [4, 5] {
        let addr = cluster.config.node(id).expect("node").addr.clone();
        reshape(&cluster, ReshapeRequest::AddNode { node_id: id, addr })
            .await
            .expect("add node");
    }
    let refused = reshape(&cluster, ReshapeRequest::RemoveNode { node_id: 1 }).await;
    assert!(
        matches!(refused, Err(NodeError::Reshape(_))),
        "a node with replicas cannot leave"
    );
    reshape(&cluster, ReshapeRequest::DrainNode { node_id: 1 })
        .await
        .expect("drain");
    wait_steps_done(&cluster).await;
    let map = meta_map(&cluster).await;
    assert!(map.shards_on(1).is_empty(), "node 1 still hosts {:?}", map.shards_on(1));
    reshape(&cluster, ReshapeRequest::RemoveNode { node_id: 1 })
        .await
        .expect("remove node 1");
    wait_for(&cluster, "node 1 runs no replica", |cluster| {
        cluster.node(1).replica_ids().is_empty()
    })
    .await;
    cluster.kill(1).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for buyer in buyers {
        buyer.await.expect("no purchase failed");
    }
    for shard in [META_SHARD, 1, 2] {
        assert!(!raft_voters(&cluster, shard).await.contains(&1), "shard {shard}");
    }
    replicas_identical(&cluster, 1).await;
    replicas_identical(&cluster, 2).await;
    let sold = cluster.linearizable_stock("apple").await.sold + cluster.linearizable_stock("zebra").await.sold;
    assert_eq!(sold, bought.load(Ordering::Relaxed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_cut_short_by_a_crash_of_the_meta_leader_completes_under_the_next_one() {
    let mut cluster = cluster_of(4).await;
    cluster.put_sku("zebra", 1_000).await;
    let addr = cluster.config.node(4).expect("node 4").addr.clone();
    reshape(&cluster, ReshapeRequest::AddNode { node_id: 4, addr })
        .await
        .expect("add node 4");
    // Node 4 is down: the step cannot finish (its learner never catches up).
    cluster.kill(4).await;
    let meta_leader = cluster.leader(META_SHARD).await;
    let data_leader = cluster.leader(2).await;
    let from = [1, 2, 3]
        .into_iter()
        .find(|id| *id != meta_leader && *id != data_leader)
        .expect("a node leading neither");
    reshape(
        &cluster,
        ReshapeRequest::MoveReplica {
            shard_id: 2,
            from,
            to: 4,
        },
    )
    .await
    .expect("move queued");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(meta_map(&cluster).await.steps.len(), 2, "the move waits for node 4");
    cluster.kill(meta_leader).await;
    cluster.restart(4).await;
    wait_steps_done(&cluster).await;
    cluster.restart(meta_leader).await;
    wait_for(&cluster, "the moved replica retires", |cluster| {
        cluster.node(from).replica(2).is_none()
    })
    .await;
    let map = meta_map(&cluster).await;
    let mut expected: Vec<NodeId> = [1, 2, 3, 4].into_iter().filter(|id| *id != from).collect();
    expected.sort_unstable();
    assert_eq!(map.shards[&2].replicas, expected);
    assert_eq!(raft_voters(&cluster, 2).await, expected.iter().copied().collect());
    cluster
        .write(vec![common::purchase("zebra", "u", "after-the-move")])
        .await;
    replicas_identical(&cluster, 2).await;
    // A node restarted after the move learns the map from the meta group and keeps its replica.
    cluster.kill(4).await;
    cluster.restart(4).await;
    wait_for(&cluster, "node 4 hosts shard 2 again", |cluster| {
        cluster.node(4).replica(2).is_some()
    })
    .await;
    replicas_identical(&cluster, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_no_other_config_file_lists_joins_through_the_map_and_takes_a_replica() {
    let mut cluster = cluster_of(3).await;
    cluster.put_sku("apple", 1_000).await;
    let addr = cluster.join(4).await;
    reshape(&cluster, ReshapeRequest::AddNode { node_id: 4, addr })
        .await
        .expect("add node 4");
    reshape(
        &cluster,
        ReshapeRequest::MoveReplica {
            shard_id: 1,
            from: 2,
            to: 4,
        },
    )
    .await
    .expect("move");
    wait_steps_done(&cluster).await;
    assert_eq!(raft_voters(&cluster, 1).await, BTreeSet::from([1, 3, 4]));
    cluster
        .write(vec![common::purchase("apple", "u", "after-the-join")])
        .await;
    replicas_identical(&cluster, 1).await;
}

/// A shard's voters, each hosting a replica with a leader elected among them.
async fn wait_hosted_everywhere(cluster: &TestCluster, shard: ShardId) {
    wait_for(cluster, &format!("every node hosts shard {shard}"), |cluster| {
        cluster
            .running_ids()
            .iter()
            .all(|id| cluster.node(*id).replica(shard).is_some())
    })
    .await;
    cluster.leader(shard).await;
}

async fn sold_through_client(client: &Client, sku: &str) -> i64 {
    client
        .get_stock(sku, flashledger_client::Consistency::Linearizable)
        .await
        .expect("linearizable read")
        .expect("on sale")
        .sold
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_splits_while_buyers_buy_and_each_half_sells_only_its_own_skus() {
    let mut cluster = cluster_of(3).await;
    // Both below "m": shard 1 until the split, then "apple" stays and "banana" leaves.
    cluster.put_sku("apple", 1_000_000).await;
    cluster.put_sku("banana", 1_000_000).await;
    let client = client_of(&cluster).await;
    let buyers = AppleAndBananaBuyers::start(&client).await;

    let before = meta_map(&cluster).await;
    for (at, why) in [("zebra", "outside shard 1's range"), ("", "an empty SKU")] {
        let refused = reshape(
            &cluster,
            ReshapeRequest::SplitShard {
                shard_id: 1,
                at: at.as_bytes().to_vec(),
            },
        )
        .await;
        assert!(matches!(refused, Err(NodeError::Reshape(_))), "{why}: {refused:?}");
    }
    assert_eq!(
        meta_map(&cluster).await.version,
        before.version,
        "refused splits change nothing"
    );

    // A split cannot be cancelled: the shard may already have split.
    queue_uncancellable_step_and_wait(
        &cluster,
        ReshapeRequest::SplitShard {
            shard_id: 1,
            at: b"b".to_vec(),
        },
    )
    .await;
    let map = meta_map(&cluster).await;
    let new_shard = before.next_shard_id;
    assert_eq!(map.shards[&1].end, b"b".to_vec());
    assert_eq!(
        map.shards[&1].epoch,
        before.shards[&1].epoch + 1,
        "the split bumps the range's epoch"
    );
    let right = &map.shards[&new_shard];
    assert_eq!(
        (right.start.as_slice(), right.end.as_slice()),
        (&b"b"[..], before.shards[&1].end.as_slice())
    );
    assert_eq!(right.replicas, vec![1, 2, 3]);
    wait_hosted_everywhere(&cluster, new_shard).await;

    // Buying goes on through the split.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (apples, bananas) = buyers.stop().await;
    // A node killed and restarted after the split comes back with both halves (the new one
    // from the snapshot the split wrote, or its own later one).
    cluster.kill(2).await;
    cluster.restart(2).await;
    wait_hosted_everywhere(&cluster, new_shard).await;

    assert_eq!(sold_through_client(&client, "apple").await as u64, apples);
    assert_eq!(sold_through_client(&client, "banana").await as u64, bananas);
    // Each half holds its own SKUs only.
    let leader = cluster.leader(new_shard).await;
    let right_skus = cluster
        .node(leader)
        .replica(new_shard)
        .expect("hosted")
        .view
        .read(|image| image.ledger.skus.keys().map(|sku| sku.to_vec()).collect::<Vec<_>>());
    assert_eq!(right_skus, vec![b"banana".to_vec()]);
    let leader = cluster.leader(1).await;
    let left_skus = cluster
        .node(leader)
        .replica(1)
        .expect("hosted")
        .view
        .read(|image| image.ledger.skus.keys().map(|sku| sku.to_vec()).collect::<Vec<_>>());
    assert_eq!(left_skus, vec![b"apple".to_vec()]);
    // A retried order that bought before the split answers its first answer from the half
    // that owns its SKU now.
    let replay = client
        .purchase("banana", 1, "buyer-1", "banana-order-1")
        .await
        .expect("retry");
    assert_eq!(replay, ClientOutcome::Confirmed);
    assert_eq!(sold_through_client(&client, "banana").await as u64, bananas);
    replicas_identical(&cluster, 1).await;
    replicas_identical(&cluster, new_shard).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_split_cut_short_by_the_crash_of_the_node_leading_the_shard_and_the_meta_group_completes() {
    let mut cluster = cluster_of(3).await;
    cluster.put_sku("apple", 1_000).await;
    cluster.put_sku("banana", 1_000).await;
    let client = client_of(&cluster).await;
    buy_twenty_of_each(&client).await;
    // One node leads both the meta group and shard 1, and dies right after the split is queued:
    // the split entry may be committed, half-replicated or lost, and the step is still queued.
    let doomed = cluster.leader(META_SHARD).await;
    reshape(
        &cluster,
        ReshapeRequest::TransferLeader {
            shard_id: 1,
            to: doomed,
        },
    )
    .await
    .expect("transfer");
    wait_for(&cluster, "the doomed node leads shard 1", |cluster| {
        cluster
            .node(doomed)
            .replica(1)
            .is_some_and(|replica| replica.raft.is_leader())
    })
    .await;
    let new_shard = meta_map(&cluster).await.next_shard_id;
    reshape(
        &cluster,
        ReshapeRequest::SplitShard {
            shard_id: 1,
            at: b"b".to_vec(),
        },
    )
    .await
    .expect("split queued");
    cluster.kill(doomed).await;
    wait_steps_done(&cluster).await;
    let map = meta_map(&cluster).await;
    assert_eq!(map.shards[&1].end, b"b".to_vec());
    assert!(map.shards.contains_key(&new_shard), "{map:?}");
    cluster.restart(doomed).await;
    wait_hosted_everywhere(&cluster, new_shard).await;

    // Every order bought before the split answers its first answer from the half that owns it,
    // and each half sells on.
    replay_twenty_of_each_and_buy_one_more(&client).await;
    replicas_identical(&cluster, 1).await;
    replicas_identical(&cluster, new_shard).await;
}

/// One buyer of apple and one of banana in the background, through one client.
struct AppleAndBananaBuyers {
    stop: Arc<AtomicBool>,
    bought: [Arc<AtomicU64>; 2],
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl AppleAndBananaBuyers {
    /// Starts both and lets them buy for 300 ms.
    async fn start(client: &Client) -> AppleAndBananaBuyers {
        let stop = Arc::new(AtomicBool::new(false));
        let bought = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
        let tasks = [
            buy_in_background(client.clone(), "apple", stop.clone(), bought[0].clone()),
            buy_in_background(client.clone(), "banana", stop.clone(), bought[1].clone()),
        ];
        tokio::time::sleep(Duration::from_millis(300)).await;
        AppleAndBananaBuyers { stop, bought, tasks }
    }

    /// Stops both; fails the test if either saw an error or bought nothing. Returns how many
    /// apples and bananas they bought.
    async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let [apple_buyer, banana_buyer] = self.tasks;
        apple_buyer.await.expect("no apple purchase failed");
        banana_buyer.await.expect("no banana purchase failed");
        let [apples, bananas] = self.bought.map(|bought| bought.load(Ordering::Relaxed));
        assert!(
            apples > 0 && bananas > 0,
            "both bought: {apples} apples, {bananas} bananas"
        );
        (apples, bananas)
    }
}

/// Queues `request` (one step), checks that the step cannot be cancelled, and waits until it
/// is done.
async fn queue_uncancellable_step_and_wait(cluster: &TestCluster, request: ReshapeRequest) {
    let (_, queued) = reshape(cluster, request.clone()).await.expect("queued");
    assert_eq!(queued.len(), 1, "{request:?}");
    let cancel = reshape(cluster, ReshapeRequest::CancelStep { step_id: queued[0] }).await;
    assert!(
        matches!(&cancel, Err(NodeError::Reshape(reason)) if reason.contains("cannot be cancelled")),
        "{cancel:?}"
    );
    wait_steps_done(cluster).await;
}

/// Buys one unit of apple and of banana 20 times each (orders `{sku}-before-{n}`).
async fn buy_twenty_of_each(client: &Client) {
    for n in 0..20 {
        for sku in ["apple", "banana"] {
            let bought = client
                .purchase(sku, 1, "u", &format!("{sku}-before-{n}"))
                .await
                .expect("purchase");
            assert_eq!(bought, ClientOutcome::Confirmed);
        }
    }
}

/// Retries every order of [`buy_twenty_of_each`] (each answers its first answer, nothing is
/// bought again) and buys one more of each SKU: 21 sold of each.
async fn replay_twenty_of_each_and_buy_one_more(client: &Client) {
    for n in 0..20 {
        for sku in ["apple", "banana"] {
            let replay = client
                .purchase(sku, 1, "u", &format!("{sku}-before-{n}"))
                .await
                .expect("retry");
            assert_eq!(replay, ClientOutcome::Confirmed, "{sku}-before-{n}");
        }
    }
    for sku in ["apple", "banana"] {
        let bought = client
            .purchase(sku, 1, "u", &format!("{sku}-after"))
            .await
            .expect("purchase");
        assert_eq!(bought, ClientOutcome::Confirmed);
        assert_eq!(
            sold_through_client(client, sku).await,
            21,
            "{sku}: 20 before, 1 after, none twice"
        );
    }
}

/// Splits shard 1 at "b" and waits until both halves are hosted; returns the new shard's id.
async fn split_at_b(cluster: &TestCluster) -> ShardId {
    let new_shard = meta_map(cluster).await.next_shard_id;
    reshape(
        cluster,
        ReshapeRequest::SplitShard {
            shard_id: 1,
            at: b"b".to_vec(),
        },
    )
    .await
    .expect("split queued");
    wait_steps_done(cluster).await;
    wait_hosted_everywhere(cluster, new_shard).await;
    new_shard
}

/// Until no running node hosts `shard` (a merged shard's replicas retire).
async fn wait_retired_everywhere(cluster: &TestCluster, shard: ShardId) {
    wait_for(cluster, &format!("no node hosts shard {shard}"), |cluster| {
        cluster
            .running_ids()
            .iter()
            .all(|id| cluster.node(*id).replica(shard).is_none())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn split_halves_merge_back_while_buyers_buy_and_the_merged_shard_sells_both() {
    let mut cluster = cluster_of(3).await;
    cluster.put_sku("apple", 1_000_000).await;
    cluster.put_sku("banana", 1_000_000).await;
    let client = client_of(&cluster).await;
    for sku in ["apple", "banana"] {
        let bought = client
            .purchase(sku, 1, "early", &format!("{sku}-early"))
            .await
            .expect("buy");
        assert_eq!(bought, ClientOutcome::Confirmed);
    }
    let right = split_at_b(&cluster).await;

    let buyers = AppleAndBananaBuyers::start(&client).await;

    let before = meta_map(&cluster).await;
    for (left, right_id, why) in [
        (right, 1, "the lower shard first"),
        (1, 2, "not adjacent: shard 1 ends at b, shard 2 starts at m"),
        (1, 1, "itself"),
        (0, 1, "the meta group"),
    ] {
        let refused = reshape(&cluster, ReshapeRequest::MergeShards { left, right: right_id }).await;
        assert!(matches!(refused, Err(NodeError::Reshape(_))), "{why}: {refused:?}");
    }
    assert_eq!(
        meta_map(&cluster).await.version,
        before.version,
        "refused merges change nothing"
    );

    // Nor can a merge: the right shard may be frozen already.
    queue_uncancellable_step_and_wait(&cluster, ReshapeRequest::MergeShards { left: 1, right }).await;
    let map = meta_map(&cluster).await;
    assert!(!map.shards.contains_key(&right), "the right shard ended: {map:?}");
    assert_eq!(
        map.shards[&1].end, before.shards[&right].end,
        "shard 1 takes the right range"
    );
    assert_eq!(
        map.shards[&1].epoch,
        before.shards[&1].epoch + 1,
        "the merge bumps the epoch"
    );
    assert_eq!(map.merged_into.get(&right), Some(&1));
    wait_retired_everywhere(&cluster, right).await;

    // Buying goes on through the merge, with no error a caller sees.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (apples, bananas) = buyers.stop().await;
    cluster.kill(2).await;
    cluster.restart(2).await;
    cluster
        .wait_applied(2, 1, cluster.last_log_index(cluster.leader(1).await, 1))
        .await;

    for (sku, bought) in [("apple", apples), ("banana", bananas)] {
        assert_eq!(
            sold_through_client(&client, sku).await as u64,
            bought + 1,
            "{sku}: the early order and the buyer's, none twice"
        );
        // An order bought before the split, retried now, answers from the merged shard.
        let replay = client
            .purchase(sku, 1, "early", &format!("{sku}-early"))
            .await
            .expect("retry");
        assert_eq!(replay, ClientOutcome::Confirmed);
        assert_eq!(sold_through_client(&client, sku).await as u64, bought + 1);
    }
    let leader = cluster.leader(1).await;
    let skus = cluster
        .node(leader)
        .replica(1)
        .expect("hosted")
        .view
        .read(|image| image.ledger.skus.keys().map(|sku| sku.to_vec()).collect::<Vec<_>>());
    assert_eq!(skus, vec![b"apple".to_vec(), b"banana".to_vec()]);
    replicas_identical(&cluster, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_merge_cut_short_by_the_crash_of_the_node_leading_both_shards_and_the_meta_group_completes() {
    let mut cluster = cluster_of(3).await;
    cluster.put_sku("apple", 1_000).await;
    cluster.put_sku("banana", 1_000).await;
    let client = client_of(&cluster).await;
    let right = split_at_b(&cluster).await;
    buy_twenty_of_each(&client).await;
    // One node leads the meta group and both shards, and dies right after the merge is queued:
    // the right shard may be frozen or not, the merge entry committed, half-replicated or lost.
    let doomed = cluster.leader(META_SHARD).await;
    for shard_id in [1, right] {
        reshape(&cluster, ReshapeRequest::TransferLeader { shard_id, to: doomed })
            .await
            .expect("transfer");
    }
    wait_for(&cluster, "the doomed node leads both shards", |cluster| {
        [1, right].iter().all(|shard| {
            cluster
                .node(doomed)
                .replica(*shard)
                .is_some_and(|replica| replica.raft.is_leader())
        })
    })
    .await;
    reshape(&cluster, ReshapeRequest::MergeShards { left: 1, right })
        .await
        .expect("merge queued");
    cluster.kill(doomed).await;
    wait_steps_done(&cluster).await;
    let map = meta_map(&cluster).await;
    assert!(!map.shards.contains_key(&right), "{map:?}");
    cluster.restart(doomed).await;
    wait_retired_everywhere(&cluster, right).await;

    // Every order bought before the merge answers its first answer from the merged shard.
    replay_twenty_of_each_and_buy_one_more(&client).await;
    replicas_identical(&cluster, 1).await;
}
