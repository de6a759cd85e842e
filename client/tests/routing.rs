//! The client's routing and retry behaviour against an in-process fake cluster: discovery,
//! not-leader redirects, replica failover, stale-epoch refresh, no retry on invalid input,
//! idempotent retries under a bounded budget, batch split and reassembly, and protocol errors.
//! Needs real sockets, so it does not run under the simulator.

#![cfg(not(madsim))]

mod fake;

use std::time::Duration;

use fake::{FakeCluster, Reply, dead_addr, fast_options, shard};
use flashledger_client::{Client, ClientError, ClientOptions, Consistency, Outcome, Priority, WriteOp};
use futures::StreamExt;
use tonic::Code;

fn methods_and_orders(node: &fake::FakeNode) -> Vec<(&'static str, String)> {
    node.seen()
        .into_iter()
        .map(|seen| (seen.method, seen.order_id))
        .collect()
}

#[tokio::test]
async fn discovery_skips_a_dead_first_seed() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(1).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 3, &[1], 1)]);
    let seeds = vec![dead_addr().await?, cluster.node(1).addr.clone()];

    let client = Client::connect(seeds, fast_options()).await?;

    let map = client.shard_map();
    assert_eq!(map.shards().len(), 1);
    assert_eq!(map.shards()[0].epoch, 3);
    assert_eq!(map.addr(1), Some(cluster.node(1).addr.as_str()));
    Ok(())
}

#[tokio::test]
async fn no_reachable_seed_is_reported() -> anyhow::Result<()> {
    let seeds = vec![dead_addr().await?, dead_addr().await?];
    let error = Client::connect(seeds, fast_options()).await.unwrap_err();
    assert!(
        matches!(error, ClientError::NoSeedReachable { tried: 2, .. }),
        "{error:?}"
    );
    Ok(())
}

#[tokio::test]
async fn not_leader_hint_is_followed_and_remembered() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(2).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1, 2], 1)]);
    let leader_addr = cluster.node(2).addr.clone();
    cluster.node(1).otherwise(Reply::Fail {
        code: Code::Unavailable,
        message: "not leader".into(),
        leader: Some((2, leader_addr)),
    });
    let client = Client::connect(cluster.addrs(), fast_options()).await?;

    let first = client.reserve("sku-a", 2, "alice", "order-1", None).await?;
    assert_eq!(first, Outcome::Reserved { expires_at_ms: 2 });
    assert_eq!(cluster.node(1).seen().len(), 1, "asked the stale leader once");
    assert_eq!(
        methods_and_orders(cluster.node(2)),
        vec![("reserve", "order-1".to_string())]
    );

    // The redirect is remembered: the next call goes straight to node 2.
    client.confirm("sku-a", "order-1").await?;
    assert_eq!(cluster.node(1).seen().len(), 1);
    assert_eq!(cluster.node(2).seen().len(), 2);
    assert_eq!(client.shard_map().shards()[0].leader, Some(2));
    Ok(())
}

#[tokio::test]
async fn follower_without_hint_sends_to_the_next_replica() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(3).await?;
    // Leader unknown: replicas are tried in map order.
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1, 2, 3], 0)]);
    cluster
        .node(1)
        .otherwise(Reply::fail(Code::Unavailable, "no leader known"));
    let client = Client::connect(cluster.addrs(), fast_options()).await?;

    let outcome = client.purchase("sku-a", 1, "bob", "order-7").await?;

    assert_eq!(outcome, Outcome::Confirmed);
    assert_eq!(
        methods_and_orders(cluster.node(1)),
        vec![("purchase", "order-7".to_string())]
    );
    assert_eq!(
        methods_and_orders(cluster.node(2)),
        vec![("purchase", "order-7".to_string())]
    );
    assert!(cluster.node(3).seen().is_empty());
    assert_eq!(
        client.shard_map().shards()[0].leader,
        Some(2),
        "the answering node is remembered"
    );
    Ok(())
}

#[tokio::test]
async fn stale_epoch_refreshes_the_shard_map() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(1).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1], 1)]);
    let client = Client::connect(cluster.addrs(), fast_options()).await?;
    let map_calls_after_connect = cluster.node(1).map_calls();

    // The range moved on (a split, say): the node now knows epoch 2 and rejects epoch 1 once.
    cluster.set_shards(vec![shard(1, b"", b"", 2, &[1], 1)]);
    cluster
        .node(1)
        .script([Reply::fail(Code::FailedPrecondition, "stale epoch 1, current 2")]);

    let outcome = client.cancel("sku-a", "order-3").await?;

    assert_eq!(outcome, Outcome::Released);
    let epochs: Vec<u64> = cluster.node(1).seen().iter().map(|seen| seen.epoch).collect();
    assert_eq!(epochs, vec![1, 2], "resent with the refreshed epoch");
    assert_eq!(cluster.node(1).map_calls(), map_calls_after_connect + 1);
    assert_eq!(client.shard_map().shards()[0].epoch, 2);
    Ok(())
}

#[tokio::test]
async fn node_without_the_shard_refreshes_and_reroutes() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(2).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1], 1)]);
    let client = Client::connect(cluster.addrs(), fast_options()).await?;

    // The shard moved to node 2; node 1 no longer hosts it.
    cluster.set_shards(vec![shard(1, b"", b"", 2, &[2], 2)]);
    cluster
        .node(1)
        .otherwise(Reply::fail(Code::NotFound, "no shard for sku"));

    client.put_sku("sku-a", 5, Default::default()).await?;

    assert_eq!(cluster.node(1).seen().len(), 1);
    assert_eq!(cluster.node(2).seen().len(), 1);
    Ok(())
}

#[tokio::test]
async fn invalid_argument_is_not_retried() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(2).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1, 2], 1)]);
    cluster
        .node(1)
        .otherwise(Reply::fail(Code::InvalidArgument, "qty: must be > 0"));
    let client = Client::connect(cluster.addrs(), fast_options()).await?;

    let error = client.reserve("sku-a", 0, "alice", "order-1", None).await.unwrap_err();

    assert_eq!(error, ClientError::InvalidArgument("qty: must be > 0".into()));
    assert!(error.definitely_not_applied());
    assert_eq!(cluster.node(1).seen().len(), 1, "exactly one call");
    assert!(cluster.node(2).seen().is_empty());
    Ok(())
}

#[tokio::test]
async fn oversized_sku_is_rejected_without_a_call() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(1).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1], 1)]);
    let client = Client::connect(cluster.addrs(), fast_options()).await?;

    let error = client.confirm(vec![b'x'; 129], "order-1").await.unwrap_err();

    assert!(matches!(error, ClientError::InvalidArgument(_)), "{error:?}");
    assert!(cluster.node(1).seen().is_empty());
    Ok(())
}

#[tokio::test]
async fn timed_out_attempt_is_retried_with_the_same_order_id() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(1).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1], 1)]);
    cluster
        .node(1)
        .script([Reply::Hang, Reply::fail(Code::DeadlineExceeded, "consensus timed out")]);
    let client = Client::connect(cluster.addrs(), fast_options()).await?;

    let outcome = client
        .reserve("sku-a", 1, "carol", "order-42", Some(Duration::from_secs(30)))
        .await?;

    assert_eq!(outcome, Outcome::Reserved { expires_at_ms: 1 });
    let seen = methods_and_orders(cluster.node(1));
    assert_eq!(seen, vec![("reserve", "order-42".to_string()); 3]);
    Ok(())
}

#[tokio::test]
async fn retry_budget_bounds_attempts() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(1).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1], 1)]);
    cluster.node(1).otherwise(Reply::Hang);
    let options = ClientOptions {
        attempt_timeout_ms: 100,
        retries_max: 2,
        ..fast_options()
    };
    let client = Client::connect(cluster.addrs(), options).await?;

    let error = client.reserve("sku-a", 1, "dave", "order-9", None).await.unwrap_err();

    assert_eq!(error, ClientError::Timeout { attempts: 3 });
    assert!(error.is_retryable());
    assert_eq!(
        methods_and_orders(cluster.node(1)),
        vec![("reserve", "order-9".to_string()); 3]
    );
    Ok(())
}

#[tokio::test]
async fn request_deadline_bounds_a_retrying_call() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(1).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1], 1)]);
    cluster
        .node(1)
        .otherwise(Reply::fail(Code::Unavailable, "shutting down"));
    let options = ClientOptions {
        request_timeout_ms: 200,
        retries_max: 1_000_000,
        backoff_ms_initial: 5,
        backoff_ms_max: 20,
        ..fast_options()
    };
    let client = Client::connect(cluster.addrs(), options).await?;

    let error = client.cancel("sku-a", "order-1").await.unwrap_err();

    let ClientError::Timeout { attempts } = error else {
        panic!("expected a timeout, got {error:?}");
    };
    assert_eq!(attempts as usize, cluster.node(1).seen().len());
    assert!(attempts > 1, "retried before the deadline");
    Ok(())
}

#[tokio::test]
async fn unavailable_everywhere_exhausts_the_budget() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(2).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1, 2], 0)]);
    for node in &cluster.nodes {
        node.otherwise(Reply::fail(Code::Unavailable, "no leader"));
    }
    let client = Client::connect(cluster.addrs(), fast_options()).await?;

    let error = client.confirm("sku-a", "order-1").await.unwrap_err();

    assert!(
        matches!(error, ClientError::Unavailable { attempts: 6, .. }),
        "{error:?}"
    );
    assert_eq!(cluster.node(1).seen().len() + cluster.node(2).seen().len(), 6);
    Ok(())
}

#[tokio::test]
async fn restock_is_not_resent_after_an_ambiguous_failure() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(1).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1], 1)]);
    cluster
        .node(1)
        .script([Reply::fail(Code::DeadlineExceeded, "consensus timed out")]);
    let client = Client::connect(cluster.addrs(), fast_options()).await?;

    let error = client.restock("sku-a", 5).await.unwrap_err();

    assert_eq!(error, ClientError::Timeout { attempts: 1 });
    assert_eq!(cluster.node(1).seen().len(), 1);
    Ok(())
}

#[tokio::test]
async fn restock_is_not_resent_after_a_connection_lost_mid_request() -> anyhow::Result<()> {
    // Found by the simulator (seed 4): the leader died after replicating a restock, the client
    // took the transport's UNAVAILABLE for a refusal, resent it, and the new leader applied it
    // a second time.
    let cluster = FakeCluster::start(1).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1], 1)]);
    cluster.node(1).script([Reply::Dropped]);
    let client = Client::connect(cluster.addrs(), fast_options()).await?;

    let error = client.restock("sku-a", 5).await.unwrap_err();

    assert_eq!(error, ClientError::Timeout { attempts: 1 });
    assert_eq!(cluster.node(1).seen().len(), 1);
    Ok(())
}

#[tokio::test]
async fn a_write_whose_outcome_is_unknown_is_resent_with_its_order_id() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(1).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1], 1)]);
    cluster
        .node(1)
        .script([Reply::fail(Code::Aborted, "leadership changed"), Reply::Dropped]);
    let client = Client::connect(cluster.addrs(), fast_options()).await?;

    let outcome = client.purchase("sku-a", 1, "erin", "order-1").await?;

    assert_eq!(outcome, Outcome::Confirmed);
    let seen = cluster.node(1).seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.order_id == "order-1"), "{seen:?}");
    // Stamped once, when the call started: every retry carries the first attempt's time.
    assert!(seen[0].first_attempt_ms > 1_700_000_000_000, "{seen:?}");
    assert!(
        seen.iter().all(|s| s.first_attempt_ms == seen[0].first_attempt_ms),
        "{seen:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_callers_own_first_attempt_stamp_is_sent_as_it_is() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(1).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1], 1)]);
    cluster.node(1).script([Reply::Dropped]);
    let client = Client::connect(cluster.addrs(), fast_options()).await?;
    // A retry in a later call (after a crash, from a queue) passes the first call's stamp.
    let retry = WriteOp::Purchase {
        sku: b"sku-a".to_vec(),
        qty: 1,
        user: "erin".into(),
        order_id: "order-1".into(),
        first_attempt_ms: 1_234,
    };

    let outcomes = client.batch(vec![retry]).await?;

    assert_eq!(outcomes, vec![Outcome::Confirmed]);
    let seen = cluster.node(1).seen();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|s| s.first_attempt_ms == 1_234), "{seen:?}");
    Ok(())
}

#[tokio::test]
async fn batch_is_split_by_shard_and_reassembled_in_order() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(2).await?;
    cluster.set_shards(vec![shard(1, b"", b"m", 1, &[1], 1), shard(2, b"m", b"", 1, &[2], 2)]);
    let client = Client::connect(cluster.addrs(), fast_options()).await?;
    let reserve = |sku: &str, qty: i64| WriteOp::Reserve {
        sku: sku.as_bytes().to_vec(),
        qty,
        user: "erin".into(),
        order_id: format!("order-{sku}"),
        ttl: None,
        first_attempt_ms: 0,
    };
    let ops = vec![
        reserve("z", 1),
        reserve("a", 2),
        reserve("n", 3),
        WriteOp::Confirm {
            sku: b"b".to_vec(),
            order_id: "order-b".into(),
            first_attempt_ms: 0,
        },
        reserve("m", 5),
    ];

    let outcomes = client.batch(ops).await?;

    assert_eq!(
        outcomes,
        vec![
            Outcome::Reserved { expires_at_ms: 1 },
            Outcome::Reserved { expires_at_ms: 2 },
            Outcome::Reserved { expires_at_ms: 3 },
            Outcome::Confirmed,
            Outcome::Reserved { expires_at_ms: 5 },
        ]
    );
    let skus = |id| -> Vec<Vec<Vec<u8>>> { cluster.node(id).seen().into_iter().map(|seen| seen.skus).collect() };
    assert_eq!(
        skus(1),
        vec![vec![b"a".to_vec(), b"b".to_vec()]],
        "one Batch RPC to shard 1"
    );
    assert_eq!(
        skus(2),
        vec![vec![b"z".to_vec(), b"n".to_vec(), b"m".to_vec()]],
        "one Batch RPC to shard 2"
    );
    Ok(())
}

#[tokio::test]
async fn unknown_outcome_code_is_a_protocol_error() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(1).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1], 1)]);
    cluster
        .node(1)
        .otherwise(Reply::Outcome(flashledger_proto::v1::Outcome {
            code: 99,
            ..Default::default()
        }));
    let client = Client::connect(cluster.addrs(), fast_options()).await?;

    let error = client.reserve("sku-a", 1, "frank", "order-1", None).await.unwrap_err();

    assert!(matches!(error, ClientError::Protocol(_)), "{error:?}");
    assert_eq!(cluster.node(1).seen().len(), 1);
    Ok(())
}

#[tokio::test]
async fn stock_reads_and_watch_return_domain_values() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(1).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1], 1)]);
    let client = Client::connect(cluster.addrs(), fast_options()).await?;

    let stock = client
        .get_stock("sku-a", Consistency::Stale { max_lag_entries: 3 })
        .await?
        .expect("the fake knows sku-a");
    assert_eq!(
        (
            stock.sku.as_slice(),
            stock.total,
            stock.available,
            stock.reserved,
            stock.sold
        ),
        (&b"sku-a"[..], 10, 7, 2, 1)
    );
    assert_eq!((stock.log_index, stock.served_by), (5, 1));

    let changes: Vec<_> = client.watch("sku-a", "", 40).await?.collect().await;
    let indexes: Vec<u64> = changes
        .into_iter()
        .map(|change| change.map(|change| change.log_index))
        .collect::<Result<_, _>>()?;
    assert_eq!(indexes, vec![41, 42]);
    Ok(())
}

#[tokio::test]
async fn an_overloaded_node_is_not_retried_and_says_when_to_come_back() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(1).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1], 1)]);
    cluster
        .node(1)
        .script([Reply::fail(Code::ResourceExhausted, "shard 1 is overloaded")]);
    let client = Client::connect(cluster.addrs(), fast_options()).await?;

    let error = client.purchase("sku-a", 1, "erin", "order-1").await.unwrap_err();

    assert_eq!(
        error,
        ClientError::Overloaded {
            retry_after: Some(Duration::from_millis(25)),
            message: "shard 1 is overloaded".into()
        }
    );
    assert!(error.definitely_not_applied());
    assert_eq!(cluster.node(1).seen().len(), 1, "a shed call is not resent");
    Ok(())
}

#[tokio::test]
async fn a_rate_limited_write_is_an_outcome() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(1).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1], 1)]);
    let limited = flashledger_client::convert::outcome_to_wire(&Outcome::RateLimited { retry_after_ms: 40 });
    cluster.node(1).script([Reply::Outcome(limited)]);
    let client = Client::connect(cluster.addrs(), fast_options()).await?;

    let outcome = client.purchase("sku-a", 1, "erin", "order-2").await?;

    assert_eq!(outcome, Outcome::RateLimited { retry_after_ms: 40 });
    Ok(())
}

/// A refusal speaks for the attempt it answers: after an attempt that timed out (and may yet
/// be applied), a shed or rate-limited retry leaves the write's fate unknown.
#[tokio::test]
async fn a_refusal_after_an_ambiguous_attempt_is_indeterminate() -> anyhow::Result<()> {
    let limited = flashledger_client::convert::outcome_to_wire(&Outcome::RateLimited { retry_after_ms: 40 });
    for refusal in [
        Reply::fail(Code::ResourceExhausted, "overloaded"),
        Reply::Outcome(limited),
    ] {
        let cluster = FakeCluster::start(1).await?;
        cluster.set_shards(vec![shard(1, b"", b"", 1, &[1], 1)]);
        cluster.node(1).script([Reply::Hang, refusal.clone()]);
        let client = Client::connect(cluster.addrs(), fast_options()).await?;

        let error = client.purchase("sku-a", 1, "erin", "order-3").await.unwrap_err();

        assert!(
            matches!(error, ClientError::Indeterminate { attempts: 2, .. }),
            "{refusal:?}: {error:?}"
        );
        assert!(!error.definitely_not_applied() && error.is_retryable());
    }
    Ok(())
}

/// One shard shedding its part of a batch says nothing of the other shard's part.
#[tokio::test]
async fn a_batch_with_one_shards_part_shed_is_partly_failed() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(2).await?;
    cluster.set_shards(vec![shard(1, b"", b"m", 1, &[1], 1), shard(2, b"m", b"", 1, &[2], 2)]);
    let purchase = |sku: &str, order_id: &str| WriteOp::Purchase {
        sku: sku.as_bytes().to_vec(),
        qty: 1,
        user: "frank".into(),
        order_id: order_id.into(),
        first_attempt_ms: 0,
    };
    cluster
        .node(2)
        .script([Reply::fail(Code::ResourceExhausted, "shard 2 is overloaded")]);
    let client = Client::connect(cluster.addrs(), fast_options()).await?;

    let error = client
        .batch(vec![purchase("apple", "o-1"), purchase("zebra", "o-2")])
        .await
        .unwrap_err();

    assert!(
        matches!(&error, ClientError::PartlyFailed(inner) if matches!(**inner, ClientError::Overloaded { .. })),
        "{error:?}"
    );
    assert!(!error.definitely_not_applied());

    tracing::info!("--- both parts shed: nothing was applied");
    cluster
        .node(1)
        .script([Reply::fail(Code::ResourceExhausted, "shard 1 is overloaded")]);
    cluster
        .node(2)
        .script([Reply::fail(Code::ResourceExhausted, "shard 2 is overloaded")]);
    let error = client
        .batch(vec![purchase("apple", "o-3"), purchase("zebra", "o-4")])
        .await
        .unwrap_err();
    assert!(matches!(error, ClientError::Overloaded { .. }), "{error:?}");
    Ok(())
}

#[tokio::test]
async fn every_call_carries_its_deadline_client_id_and_priority() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(1).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1], 1)]);
    let options = ClientOptions {
        client_id: Some("checkout-7".into()),
        ..fast_options()
    };
    let client = Client::connect(cluster.addrs(), options).await?;

    client.purchase("sku-a", 1, "gina", "order-5").await?;
    client.get_stock("sku-a", Consistency::Linearizable).await?;
    let premium = client.with_priority(Priority::Premium);
    premium.purchase("sku-a", 1, "gina", "order-6").await?;
    premium
        .batch(vec![WriteOp::Confirm {
            sku: b"sku-a".to_vec(),
            order_id: "order-7".into(),
            first_attempt_ms: 0,
        }])
        .await?;

    let seen = cluster.node(1).seen();
    let wire = |priority: flashledger_proto::v1::Priority| priority as i32;
    use flashledger_proto::v1::Priority as P;
    let priorities: Vec<(&str, i32)> = seen.iter().map(|s| (s.method, s.priority)).collect();
    assert_eq!(
        priorities,
        vec![
            ("purchase", wire(P::Standard)),
            ("get_stock", wire(P::Background)),
            ("purchase", wire(P::Premium)),
            ("batch", wire(P::Premium)),
        ]
    );
    for call in &seen {
        assert_eq!(call.client_id.as_deref(), Some("checkout-7"), "{call:?}");
        // The attempt's budget (300 ms in the fast options) as the node reads it.
        let timeout = call
            .grpc_timeout
            .as_deref()
            .unwrap_or_else(|| panic!("no deadline: {call:?}"));
        let millis = fake::grpc_timeout_ms(timeout);
        assert!(millis > 0 && millis <= 300, "{call:?}");
    }
    Ok(())
}

#[tokio::test]
async fn a_node_that_stops_answering_is_routed_around_once_its_breaker_opens_then_probed() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(2).await?;
    // The map keeps naming node 1 as the leader (each refresh below re-reads it).
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1, 2], 1)]);
    cluster.node(1).otherwise(Reply::Dropped);
    let options = ClientOptions {
        breaker_failures_max: 2,
        breaker_open_ms: 300,
        ..fast_options()
    };
    let client = Client::connect(cluster.addrs(), options).await?;
    let call = |n: u32| {
        let client = client.clone();
        async move {
            client.refresh_shard_map().await?;
            client.confirm("sku-a", &format!("order-{n}")).await
        }
    };

    // Closed: each call tries node 1 first, gets no answer, and moves on to node 2.
    assert_eq!(call(1).await?, Outcome::Confirmed);
    assert_eq!(call(2).await?, Outcome::Confirmed);
    assert_eq!(cluster.node(1).seen().len(), 2);
    // Open after two failures in a row: node 1 is not tried at all.
    assert_eq!(call(3).await?, Outcome::Confirmed);
    assert_eq!(cluster.node(1).seen().len(), 2, "the open breaker routes around node 1");
    assert_eq!(cluster.node(2).seen().len(), 3);

    // Half-open once the period is over: one call probes node 1, which answers now: closed.
    cluster.node(1).otherwise(Reply::Normal);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(call(4).await?, Outcome::Confirmed);
    assert_eq!(cluster.node(1).seen().len(), 3, "the probe went to node 1");
    assert_eq!(call(5).await?, Outcome::Confirmed);
    assert_eq!(cluster.node(1).seen().len(), 4, "closed again: node 1 serves");
    assert_eq!(cluster.node(2).seen().len(), 3);
    Ok(())
}

#[tokio::test]
async fn a_follower_naming_a_leader_that_did_not_answer_is_not_followed_back_to_it() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(3).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1, 2, 3], 1)]);
    // Node 1 (the old leader) is gone; node 2 has not noticed and still names it.
    cluster.node(1).otherwise(Reply::Dropped);
    let old_leader = cluster.node(1).addr.clone();
    cluster.node(2).otherwise(Reply::Fail {
        code: Code::Unavailable,
        message: "not leader".into(),
        leader: Some((1, old_leader)),
    });
    let options = ClientOptions {
        // Any pause would show: the call must not sleep between these three nodes.
        backoff_ms_initial: 2_000,
        backoff_ms_max: 2_000,
        ..fast_options()
    };
    let client = Client::connect(cluster.addrs(), options).await?;

    let started = std::time::Instant::now();
    assert_eq!(
        client.purchase("sku-a", 1, "erin", "order-5").await?,
        Outcome::Confirmed
    );

    assert!(
        started.elapsed() < Duration::from_millis(1_000),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(cluster.node(1).seen().len(), 1, "the silent node is asked once");
    assert_eq!(cluster.node(2).seen().len(), 1);
    assert_eq!(cluster.node(3).seen().len(), 1);
    Ok(())
}

#[tokio::test]
async fn the_retry_budget_bounds_retries_across_calls() -> anyhow::Result<()> {
    let cluster = FakeCluster::start(1).await?;
    cluster.set_shards(vec![shard(1, b"", b"", 1, &[1], 1)]);
    cluster
        .node(1)
        .otherwise(Reply::fail(Code::Unavailable, "no leader yet"));
    let options = ClientOptions {
        retries_max: 10,
        // No share of calls: only the reserve of 3 retries, for every call of the client.
        retry_budget_percent: 0,
        retry_budget_reserve: 3,
        // Nor any from time: the count below is exact.
        retry_budget_min_per_s: 0,
        ..fast_options()
    };
    let client = Client::connect(cluster.addrs(), options).await?;

    let first = client.confirm("sku-a", "order-1").await.unwrap_err();
    let ClientError::Unavailable { attempts, last_error } = first else {
        panic!("expected unavailable, got {first:?}");
    };
    assert_eq!(attempts, 4, "the first attempt and the 3 retries the budget held");
    assert!(last_error.contains("retry budget"), "{last_error}");
    let second = client.confirm("sku-a", "order-2").await.unwrap_err();
    assert!(
        matches!(second, ClientError::Unavailable { attempts: 1, .. }),
        "a spent budget leaves each call its first attempt: {second:?}"
    );
    assert_eq!(cluster.node(1).seen().len(), 5);
    Ok(())
}
