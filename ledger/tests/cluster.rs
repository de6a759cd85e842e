//! In-process 3-node clusters: election, replicated writes, leader failure without losing an
//! acknowledged write, and a follower that catches up from a snapshot after the log was purged.

#![cfg(not(madsim))]

mod common;

use common::TestCluster;
use common::purchase;
use ledger::node::ReadConsistency;
use ledger::state_machine::command::Operation;
use ledger::state_machine::command::Outcome;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elects_leaders_and_replicates_writes() {
    let cluster = TestCluster::start(3, |_| {}).await;

    tracing::info!("--- every shard elects a leader");
    let leader_low = cluster.leader(1).await;
    let leader_high = cluster.leader(2).await;
    assert!(cluster.running_ids().contains(&leader_low) && cluster.running_ids().contains(&leader_high));

    tracing::info!("--- writes to both shards are applied on every replica");
    cluster.put_sku("apple", 10).await;
    cluster.put_sku("zebra", 5).await;
    let (outcomes, index_low) = cluster
        .write(vec![purchase("apple", "u1", "o1"), purchase("apple", "u2", "o2")])
        .await;
    assert_eq!(
        outcomes,
        vec![Outcome::Confirmed, Outcome::Confirmed],
        "a batch answers each operation"
    );
    let (_, index_high) = cluster.write(vec![purchase("zebra", "u1", "o3")]).await;
    for id in cluster.running_ids() {
        cluster.wait_applied(id, 1, index_low).await;
        cluster.wait_applied(id, 2, index_high).await;
        let apple = cluster.local_stock(id, "apple").await;
        assert_eq!((apple.total, apple.available, apple.sold), (10, 8, 2), "node {id}");
        assert_eq!(cluster.local_stock(id, "zebra").await.sold, 1, "node {id}");
    }

    tracing::info!("--- replicas agree byte for byte");
    let digests: Vec<_> = cluster
        .running_ids()
        .iter()
        .map(|id| cluster.node(*id).status())
        .collect();
    for status in &digests[1..] {
        for (a, b) in status.iter().zip(&digests[0]) {
            assert_eq!(a.state_digest, b.state_digest, "shard {}", a.shard_id);
            assert!(a.invariant_ok);
        }
    }

    tracing::info!("--- a linearizable read on a follower is refused with the leader's address");
    // Leadership may move under a loaded machine: ask the current leader's followers until one
    // answers while that leader still leads.
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        let leader = cluster.leader(1).await;
        let follower = cluster
            .running_ids()
            .into_iter()
            .find(|id| *id != leader)
            .expect("a follower");
        match cluster
            .node(follower)
            .get_stock(b"apple", ReadConsistency::Linearizable)
            .await
        {
            Err(ledger::node::NodeError::NotLeader {
                leader_id: Some(hint),
                leader_addr,
                ..
            }) if hint == leader => {
                assert_eq!(
                    leader_addr.as_deref(),
                    cluster.node(follower).address_of(leader).as_deref()
                );
                break;
            }
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no stable NotLeader answer: {other:?}"
                );
                tracing::info!(?other, "leadership moved during the check; asking again");
            }
        }
    }
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_loses_no_acknowledged_write() {
    let mut cluster = TestCluster::start(3, |_| {}).await;
    cluster.put_sku("apple", 1000).await;

    tracing::info!("--- acknowledged purchases");
    let mut acknowledged = 0;
    for n in 0..50 {
        let (outcomes, _) = cluster
            .write(vec![purchase("apple", "u", &format!("before-{n}"))])
            .await;
        assert_eq!(outcomes, vec![Outcome::Confirmed]);
        acknowledged += 1;
    }

    tracing::info!("--- the leader dies; another is elected");
    let old_leader = cluster.leader(1).await;
    cluster.kill(old_leader).await;
    let new_leader = cluster.leader(1).await;
    assert_ne!(new_leader, old_leader);

    tracing::info!("--- every acknowledged write is still there, and writes go on");
    let counts = cluster.linearizable_stock("apple").await;
    assert_eq!(counts.sold, acknowledged);
    let (outcomes, _) = cluster.write(vec![purchase("apple", "u", "after")]).await;
    assert_eq!(outcomes, vec![Outcome::Confirmed]);
    tracing::info!("--- a retried order id answers its first answer and sells nothing more");
    let (outcomes, _) = cluster.write(vec![purchase("apple", "u", "before-7")]).await;
    assert_eq!(outcomes, vec![Outcome::Confirmed]);
    let counts = cluster.linearizable_stock("apple").await;
    assert_eq!(counts.sold, acknowledged + 1);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_catches_up_from_a_snapshot() {
    let mut cluster = TestCluster::start(3, |config| config.raft.snapshot_ops_since_last = 40).await;
    cluster.put_sku("apple", 100_000).await;
    let (leader, follower) = (cluster.leader(1).await, cluster.follower_of(1).await);

    tracing::info!("--- a follower goes down while the log moves far ahead and is purged");
    cluster.kill(follower).await;
    let mut last_index = 0;
    for n in 0..300 {
        let (outcomes, index) = cluster
            .write(vec![purchase("apple", &format!("u{}", n % 7), &format!("o{n}"))])
            .await;
        assert_eq!(outcomes, vec![Outcome::Confirmed]);
        last_index = index;
    }
    cluster.wait_snapshot(leader, 1).await;
    cluster.wait_log_purged(leader, 1).await;
    let leader_status = cluster.node(leader).status();
    let shard_status = leader_status.iter().find(|s| s.shard_id == 1).expect("shard 1");
    assert!(
        shard_status.snapshot_index > 0,
        "the leader built a snapshot: {shard_status:?}"
    );

    tracing::info!("--- it restarts and converges to the same state");
    cluster.restart(follower).await;
    cluster.wait_applied(follower, 1, last_index).await;
    let follower_status = cluster.node(follower).status();
    let follower_shard = follower_status.iter().find(|s| s.shard_id == 1).expect("shard 1");
    assert!(
        follower_shard.snapshot_index > 0,
        "caught up through a snapshot: {follower_shard:?}"
    );
    let leader_status = cluster.node(leader).status();
    let leader_shard = leader_status.iter().find(|s| s.shard_id == 1).expect("shard 1");
    assert_eq!(follower_shard.state_digest, leader_shard.state_digest);
    assert_eq!(cluster.local_stock(follower, "apple").await.sold, 300);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_catches_up_through_a_snapshot_streamed_in_chunks_while_writes_go_on() {
    // Tiny chunks, so the snapshot (a few hundred KB) takes hundreds of messages.
    let mut cluster = TestCluster::start(3, |config| {
        config.raft.snapshot_ops_since_last = 100;
        config.raft.snapshot_chunk_bytes = 1024;
    })
    .await;
    cluster.put_sku("apple", 1_000_000).await;
    let (leader, follower) = (cluster.leader(1).await, cluster.follower_of(1).await);

    tracing::info!("--- a follower goes down while thousands of orders go by and the log is purged");
    cluster.kill(follower).await;
    for first in (0..3_000).step_by(50) {
        let batch = (first..first + 50)
            .map(|n| purchase("apple", &format!("u{}", n % 97), &format!("o{n}")))
            .collect();
        let (outcomes, _) = cluster.write(batch).await;
        assert!(outcomes.iter().all(|o| *o == Outcome::Confirmed));
    }
    cluster.wait_snapshot(leader, 1).await;
    cluster.wait_log_purged(leader, 1).await;

    tracing::info!("--- it comes back while a writer keeps buying");
    let cluster = std::sync::Arc::new(tokio::sync::RwLock::new(cluster));
    let writer = {
        let cluster = cluster.clone();
        tokio::spawn(async move {
            let mut last_index = 0;
            for n in 3_000..3_400 {
                let (outcomes, index) = cluster
                    .read()
                    .await
                    .write(vec![purchase("apple", "late", &format!("o{n}"))])
                    .await;
                assert_eq!(outcomes, vec![Outcome::Confirmed]);
                last_index = index;
            }
            last_index
        })
    };
    cluster.write().await.restart(follower).await;
    let last_index = writer.await.expect("writer");
    let cluster = std::sync::Arc::try_unwrap(cluster)
        .ok()
        .expect("the writer is done")
        .into_inner();
    cluster.wait_applied(follower, 1, last_index).await;
    cluster.wait_applied(leader, 1, last_index).await;

    tracing::info!("--- it installed a snapshot, and holds exactly the leader's state");
    let status_of = |id| {
        cluster
            .node(id)
            .status()
            .into_iter()
            .find(|s| s.shard_id == 1)
            .expect("shard 1")
    };
    let (follower_shard, leader_shard) = (status_of(follower), status_of(leader));
    assert!(
        follower_shard.snapshot_index > 0,
        "caught up through a snapshot: {follower_shard:?}"
    );
    assert_eq!(follower_shard.applied_index, leader_shard.applied_index);
    assert_eq!(follower_shard.state_digest, leader_shard.state_digest);
    let bytes_of = |id: u64| {
        cluster
            .node(id)
            .replica(1)
            .expect("hosted")
            .view
            .read(|image| bincode::serialize(&image.ledger).expect("encodes"))
    };
    assert_eq!(bytes_of(follower), bytes_of(leader), "byte-identical replicas");
    assert_eq!(cluster.local_stock(follower, "apple").await.sold, 3_400);
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_restart_rebuilds_the_state_from_snapshots_and_the_log() {
    // Applied state is on disk only as snapshots: every node must come back from its own
    // snapshot plus the log after it, with nothing lost and the same answers to replays.
    // 100 operations per snapshot: the first 120 writes make one due on every node, and the 30
    // after it cannot make another, so every node restarts from a snapshot plus log after it
    // however late its (background) snapshot is built.
    let mut cluster = TestCluster::start(3, |config| config.raft.snapshot_ops_since_last = 100).await;
    cluster.put_sku("apple", 100_000).await;
    let purchase_number = |n: u64| purchase("apple", &format!("u{}", n % 7), &format!("o{n}"));
    let mut last_index = 0;
    for n in 0..120 {
        let (outcomes, index) = cluster.write(vec![purchase_number(n)]).await;
        assert_eq!(outcomes, vec![Outcome::Confirmed]);
        last_index = index;
    }
    let ids = cluster.running_ids();
    for id in &ids {
        cluster.wait_applied(*id, 1, last_index).await;
        cluster.wait_snapshot(*id, 1).await;
    }
    for n in 120..150 {
        let (outcomes, index) = cluster.write(vec![purchase_number(n)]).await;
        assert_eq!(outcomes, vec![Outcome::Confirmed]);
        last_index = index;
    }
    for id in &ids {
        cluster.wait_applied(*id, 1, last_index).await;
    }
    let before: Vec<_> = ids
        .iter()
        .map(|id| {
            let status = cluster.node(*id).status();
            status.into_iter().find(|s| s.shard_id == 1).expect("shard 1")
        })
        .collect();
    for shard in &before {
        assert!(shard.snapshot_index > 0, "every node built a snapshot: {shard:?}");
        assert!(shard.snapshot_index < last_index, "and has log after it: {shard:?}");
    }

    tracing::info!("--- every node stops, then every node starts from its disk");
    for id in &ids {
        cluster.kill(*id).await;
    }
    for id in &ids {
        cluster.restart(*id).await;
    }
    cluster.leader(1).await;
    // The new leader's first (blank) entry commits everything before it; each node re-applies
    // its log after its snapshot.
    for (id, shard_before) in ids.iter().zip(&before) {
        cluster.wait_applied(*id, 1, last_index).await;
        let status = cluster.node(*id).status();
        let shard = status.into_iter().find(|s| s.shard_id == 1).expect("shard 1");
        assert_eq!(shard.state_digest, shard_before.state_digest, "node {id}");
    }
    let (outcomes, index) = cluster.write(vec![purchase("apple", "u0", "o0")]).await;
    assert_eq!(outcomes, vec![Outcome::Confirmed], "a replay answers the first answer");
    for id in &ids {
        cluster.wait_applied(*id, 1, index).await;
        assert_eq!(cluster.local_stock(*id, "apple").await.sold, 150, "node {id}");
    }
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_stock_changes_through_the_client() {
    use futures::StreamExt;

    let cluster = TestCluster::start(3, |_| {}).await;
    cluster.put_sku("apple", 10).await;
    cluster.put_sku("banana", 10).await;
    let seeds: Vec<String> = cluster.config.nodes.iter().map(|n| n.addr.clone()).collect();
    let client = flashledger_client::Client::connect(seeds, flashledger_client::ClientOptions::default())
        .await
        .expect("connect");
    tracing::info!("--- a watch of [a, b) sees apple's current state, then its live changes, and never banana");
    let mut changes = tokio::time::timeout(common::WAIT, client.watch("a", "b", 0))
        .await
        .expect("watch answers in time")
        .expect("watch");
    let first = tokio::time::timeout(common::WAIT, changes.next())
        .await
        .expect("the current state arrives in time")
        .expect("a change")
        .expect("ok");
    assert_eq!((first.sku.as_slice(), first.sold), (b"apple".as_slice(), 0));
    for n in 0..3 {
        cluster.write(vec![purchase("banana", "u", &format!("b{n}"))]).await;
        cluster.write(vec![purchase("apple", "u", &format!("a{n}"))]).await;
    }
    let mut last_sold = 0;
    while last_sold < 3 {
        let change = tokio::time::timeout(common::WAIT, changes.next())
            .await
            .expect("a change in time")
            .expect("stream open")
            .expect("ok");
        assert_eq!(change.sku, b"apple".to_vec(), "only SKUs in the watched range");
        assert!(change.sold >= last_sold, "changes arrive in log order");
        assert_eq!(change.available + change.sold, change.total);
        last_sold = change.sold;
    }
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coalescing_client_shares_log_entries_and_keeps_answers_apart() {
    let cluster = TestCluster::start(3, |_| {}).await;
    cluster.put_sku("apple", 1_000).await;
    let seeds: Vec<String> = cluster.config.nodes.iter().map(|n| n.addr.clone()).collect();
    let options = flashledger_client::ClientOptions {
        coalesce_ops_max: 64,
        ..Default::default()
    };
    let client = flashledger_client::Client::connect(seeds, options)
        .await
        .expect("connect");
    let leader = cluster.leader(1).await;
    let log_before = cluster.last_log_index(leader, 1);

    tracing::info!("--- 200 concurrent purchases and one invalid one");
    let mut calls = Vec::new();
    for n in 0..200 {
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            client.purchase("apple", 1, "u", &format!("c{n}")).await
        }));
    }
    let invalid = client.purchase("apple", 0, "u", "bad").await;
    assert!(
        matches!(invalid, Err(flashledger_client::ClientError::InvalidArgument(_))),
        "{invalid:?}"
    );
    for call in calls {
        assert_eq!(call.await.expect("task"), Ok(flashledger_client::Outcome::Confirmed));
    }

    tracing::info!("--- every purchase counted once, in fewer log entries than purchases");
    assert_eq!(cluster.linearizable_stock("apple").await.sold, 200);
    let leader = cluster.leader(1).await;
    let log_after = cluster.last_log_index(leader, 1);
    assert!(
        log_after - log_before < 200,
        "{} entries for 200 purchases",
        log_after - log_before
    );
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sold_out_storm_is_answered_without_log_entries_and_a_retry_is_decided_afresh() {
    let cluster = TestCluster::start(3, |_| {}).await;
    cluster.put_sku("apple", 1).await;
    let (bought, _) = cluster.write(vec![purchase("apple", "u0", "first")]).await;
    assert_eq!(bought, vec![Outcome::Confirmed]);
    let leader = cluster.leader(1).await;
    let log_before = cluster.last_log_index(leader, 1);

    tracing::info!("--- 100 purchases of an empty SKU, from the leader");
    for n in 0..100 {
        let (answer, _) = cluster.write(vec![purchase("apple", "u1", &format!("late{n}"))]).await;
        assert_eq!(answer, vec![Outcome::SoldOut { available: 0 }]);
    }
    assert_eq!(
        cluster.last_log_index(leader, 1),
        log_before,
        "a sold-out answer must not cost a log entry"
    );

    tracing::info!("--- after a restock the same order id is decided afresh; a replay of a sale is not");
    cluster
        .write(vec![Operation::Restock {
            sku: b"apple".to_vec(),
            delta: 1,
        }])
        .await;
    let (retry, _) = cluster.write(vec![purchase("apple", "u1", "late0")]).await;
    assert_eq!(retry, vec![Outcome::Confirmed]);
    let (replay, _) = cluster.write(vec![purchase("apple", "u0", "first")]).await;
    assert_eq!(
        replay,
        vec![Outcome::Confirmed],
        "a replayed sale answers its first answer"
    );
    let stock = cluster.linearizable_stock("apple").await;
    assert_eq!((stock.total, stock.available, stock.sold), (2, 0, 2));
    cluster.stop_all().await;
}
