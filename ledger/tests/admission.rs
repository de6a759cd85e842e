//! Admission over the wire, on an in-process cluster: a full budget sheds at once (before
//! proposing, with `x-not-applied` and a retry-after hint) and the shed write never shows up in
//! the state; a higher priority is let in while a lower one is shed; rate limits per client and
//! per buyer, and a SKU's own limit in its replicated rules; a request out of time is dropped
//! before it is proposed.
//!
//! To hold operations in flight without timing anything, a shard is stalled: its leader keeps
//! leading while the other two nodes are stopped, so what it admits waits for a quorum that
//! does not come. Tests wait on the node's own count of operations in flight.

#![cfg(not(madsim))]

mod common;

use std::time::Duration;
use std::time::Instant;

use common::TestCluster;
use common::WAIT;
use flashledger_client::Client;
use flashledger_client::ClientError;
use flashledger_client::ClientOptions;
use flashledger_client::Consistency;
use flashledger_client::Outcome;
use flashledger_client::Priority;
use flashledger_client::RateLimit;
use flashledger_client::SaleRules;
use flashledger_proto::metadata;
use flashledger_proto::v1 as pb;
use flashledger_proto::v1::inventory_client::InventoryClient;
use ledger::admission::deadline::Deadline;
use ledger::node::NodeError;
use ledger::types::NodeId;
use tokio::task::JoinHandle;
use tonic::Code;
use tonic::transport::Channel;

const SHARD: u64 = 1;

async fn channel(cluster: &TestCluster, id: NodeId) -> Channel {
    let addr = cluster.config.node(id).expect("node").addr.clone();
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

fn purchase(order_id: &str, user: &str, priority: pb::Priority) -> pb::PurchaseRequest {
    pb::PurchaseRequest {
        sku: b"apple".to_vec().into(),
        qty: 1,
        user: user.to_string().into(),
        order_id: order_id.to_string().into(),
        first_attempt_ms: ledger::node::now_ms() as i64,
        route: None,
        priority: priority as i32,
    }
}

/// A cluster of three whose shard-1 leader is left alone: it still leads, but nothing it
/// proposes can commit. Returns the cluster and that leader.
async fn stalled_cluster(tweak: impl FnOnce(&mut ledger::config::ClusterConfig)) -> (TestCluster, NodeId) {
    let mut cluster = TestCluster::start(3, |config| {
        config.server.request_timeout_ms = 60_000;
        tweak(config);
    })
    .await;
    cluster.put_sku("apple", 1_000).await;
    let leader = cluster.leader(SHARD).await;
    for id in cluster.running_ids() {
        if id != leader {
            cluster.kill(id).await;
        }
    }
    (cluster, leader)
}

/// Sends `request` to `leader` in the background (it will wait on the stalled shard).
fn send_blocked(
    channel: &Channel,
    request: pb::PurchaseRequest,
) -> JoinHandle<Result<tonic::Response<pb::WriteReply>, tonic::Status>> {
    let mut inventory = InventoryClient::new(channel.clone());
    tokio::spawn(async move { inventory.purchase(request).await })
}

/// Waits until `leader` counts `ops` operations in flight on the shard.
async fn wait_inflight(cluster: &TestCluster, leader: NodeId, ops: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while cluster.node(leader).admission.shard_inflight(SHARD) != ops {
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {leader} has {} operations in flight, waited for {ops}",
            cluster.node(leader).admission.shard_inflight(SHARD)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn assert_shed(status: &tonic::Status) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let value = |key| {
        status
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok().map(str::to_string))
    };
    assert_eq!(value(metadata::NOT_APPLIED).as_deref(), Some("1"), "{status:?}");
    let retry_after: u64 = value(metadata::RETRY_AFTER_MS)
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no retry-after hint: {status:?}"));
    assert!((1..=1_000).contains(&retry_after), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_budget_sheds_at_once_and_the_shed_write_is_never_applied() {
    let (mut cluster, leader) = stalled_cluster(|config| {
        config.admission.node_ops_inflight_max = 8;
        config.admission.shard_ops_inflight_max = 4;
        config.admission.standard_share_percent = 100;
    })
    .await;
    let channel = channel(&cluster, leader).await;

    tracing::info!("--- four purchases fill the shard's budget and wait for a quorum");
    let blocked: Vec<_> = (0..4)
        .map(|i| send_blocked(&channel, purchase(&format!("held-{i}"), "u", pb::Priority::Standard)))
        .collect();
    wait_inflight(&cluster, leader, 4).await;
    let log_before = cluster.last_log_index(leader, SHARD);

    tracing::info!("--- the fifth is refused while the four still wait, and nothing is proposed");
    let status = InventoryClient::new(channel.clone())
        .purchase(purchase("shed-1", "u", pb::Priority::Standard))
        .await
        .expect_err("shed");
    assert_shed(&status);
    assert!(
        blocked.iter().all(|call| !call.is_finished()),
        "the refusal did not wait for room"
    );
    assert_eq!(
        cluster.last_log_index(leader, SHARD),
        log_before,
        "the shed write was proposed"
    );

    tracing::info!("--- the client library reports it as Overloaded, definitely not applied");
    let addr = cluster.config.node(leader).expect("node").addr.clone();
    let client = Client::connect(vec![addr], ClientOptions::default())
        .await
        .expect("connects");
    match client.purchase("apple", 1, "u", "shed-2").await {
        Err(
            error @ ClientError::Overloaded {
                retry_after: Some(_), ..
            },
        ) => {
            assert!(error.definitely_not_applied(), "{error}");
        }
        other => panic!("expected Overloaded with a retry hint, got {other:?}"),
    }
    assert_eq!(cluster.node(leader).admission.stats().shed_requests[1], 2);

    tracing::info!("--- quorum back: the held purchases commit, the shed ones exist nowhere");
    for id in [1, 2, 3] {
        if id != leader {
            cluster.restart(id).await;
        }
    }
    // Each held purchase is confirmed, or (if the returning nodes forced an election first)
    // answered as possibly applied: either way it was proposed, unlike the shed ones.
    let mut confirmed = 0;
    for call in blocked {
        let reply = tokio::time::timeout(WAIT, call)
            .await
            .expect("answered")
            .expect("joined");
        if let Ok(reply) = reply {
            let outcome = reply.into_inner().outcome.expect("an outcome");
            assert_eq!(outcome.code, pb::OutcomeCode::Confirmed as i32);
            confirmed += 1;
        }
    }
    let sold = cluster.linearizable_stock("apple").await.sold;
    let index = cluster.last_log_index(cluster.leader(SHARD).await, SHARD);
    for id in cluster.running_ids() {
        cluster.wait_applied(id, SHARD, index).await;
        let shard = &cluster.node(id).replica(SHARD).expect("hosted");
        let (held, shed) = shard.view.read(|image| {
            let held = (0..4)
                .filter(|i| image.ledger.order(&format!("held-{i}")).is_some())
                .count();
            let shed = ["shed-1", "shed-2"]
                .iter()
                .filter(|o| image.ledger.order(o).is_some())
                .count();
            (held, shed)
        });
        assert_eq!(shed, 0, "node {id} holds a shed order");
        assert!(
            held >= confirmed && held as u64 == sold,
            "node {id}: {held} held, {confirmed} confirmed, {sold} sold"
        );
    }
    drop((client, channel));
    cluster.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_higher_priority_is_let_in_while_a_lower_one_is_shed() {
    let (cluster, leader) = stalled_cluster(|config| {
        config.admission.node_ops_inflight_max = 10;
        config.admission.shard_ops_inflight_max = 10;
        config.admission.standard_share_percent = 80;
        config.admission.background_share_percent = 50;
    })
    .await;
    let channel = channel(&cluster, leader).await;
    let mut inventory = InventoryClient::new(channel.clone());
    let mut blocked = Vec::new();

    tracing::info!("--- BACKGROUND fills its half; the next BACKGROUND is shed, STANDARD still gets in");
    for i in 0..5 {
        blocked.push(send_blocked(
            &channel,
            purchase(&format!("bg-{i}"), "u", pb::Priority::Background),
        ));
    }
    wait_inflight(&cluster, leader, 5).await;
    let status = inventory
        .purchase(purchase("bg-shed", "u", pb::Priority::Background))
        .await
        .expect_err("shed");
    assert_shed(&status);
    let stale_read = |priority: pb::Priority| pb::GetStockRequest {
        sku: b"apple".to_vec().into(),
        consistency: pb::Consistency::Stale as i32,
        max_lag_entries: u64::MAX,
        priority: priority as i32,
    };
    assert_shed(
        &inventory
            .get_stock(stale_read(pb::Priority::Background))
            .await
            .expect_err("shed"),
    );
    assert!(
        inventory.get_stock(stale_read(pb::Priority::Standard)).await.is_ok(),
        "a STANDARD read is served"
    );
    for i in 0..3 {
        blocked.push(send_blocked(
            &channel,
            purchase(&format!("std-{i}"), "u", pb::Priority::Standard),
        ));
    }
    wait_inflight(&cluster, leader, 8).await;

    tracing::info!("--- STANDARD fills its 80 %; the next STANDARD is shed, PREMIUM still gets in");
    let status = inventory
        .purchase(purchase("std-shed", "u", pb::Priority::Standard))
        .await
        .expect_err("shed");
    assert_shed(&status);
    for i in 0..2 {
        blocked.push(send_blocked(
            &channel,
            purchase(&format!("premium-{i}"), "u", pb::Priority::Premium),
        ));
    }
    wait_inflight(&cluster, leader, 10).await;
    assert_shed(
        &inventory
            .purchase(purchase("premium-shed", "u", pb::Priority::Premium))
            .await
            .expect_err("the whole budget is in use"),
    );
    assert_eq!(cluster.node(leader).admission.stats().shed_requests, [1, 1, 2]);
    for call in blocked {
        call.abort();
    }
    drop((inventory, channel));
    cluster.stop_all().await;
}

/// The client library's calls carry their priority: a BACKGROUND handle is shed where a
/// PREMIUM one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_sends_its_priority() {
    let (cluster, leader) = stalled_cluster(|config| {
        config.admission.shard_ops_inflight_max = 2;
        config.admission.background_share_percent = 50;
    })
    .await;
    let channel = channel(&cluster, leader).await;
    let blocked = send_blocked(&channel, purchase("bg-0", "u", pb::Priority::Background));
    wait_inflight(&cluster, leader, 1).await;
    let addr = cluster.config.node(leader).expect("node").addr.clone();
    let client = Client::connect(vec![addr], ClientOptions::default())
        .await
        .expect("connects");
    let stale = Consistency::Stale {
        max_lag_entries: u64::MAX,
    };
    match client.get_stock("apple", stale).await {
        Err(ClientError::Overloaded { .. }) => {}
        other => panic!("a product-page read (BACKGROUND by default) is shed: {other:?}"),
    }
    let stock = client
        .with_priority(Priority::Premium)
        .get_stock("apple", stale)
        .await
        .expect("a PREMIUM read is served")
        .expect("known");
    assert_eq!(stock.total, 1_000);
    blocked.abort();
    drop((client, channel));
    cluster.stop_all().await;
}

/// Whether `outcome` is RATE_LIMITED with a retry hint.
fn is_rate_limited(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::RateLimited { retry_after_ms } if *retry_after_ms >= 1)
}

/// A client of the cluster naming itself `client_id`.
async fn client_named(cluster: &TestCluster, client_id: &str) -> Client {
    let seeds = cluster
        .running_ids()
        .iter()
        .map(|id| cluster.config.node(*id).expect("node").addr.clone())
        .collect();
    let options = ClientOptions {
        client_id: Some(client_id.to_string()),
        ..ClientOptions::default()
    };
    Client::connect(seeds, options).await.expect("connects")
}

/// Purchases of `sku` by `user` until one is rate limited (at most `tries`); returns how many
/// were let through before it. Tokens refill meanwhile (one a second), so callers allow for the
/// seconds that passed.
async fn purchases_until_limited(client: &Client, sku: &str, user: &str, tries: usize) -> (usize, Duration) {
    static ORDERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let started = Instant::now();
    for attempt in 0..tries {
        let order = ORDERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let outcome = client
            .purchase(sku, 1, user, &format!("{sku}-{user}-{order}"))
            .await
            .expect("answered");
        if is_rate_limited(&outcome) {
            return (attempt, started.elapsed());
        }
        assert_eq!(outcome, Outcome::Confirmed, "{sku} by {user}");
    }
    panic!("{tries} purchases of {sku} by {user} were never rate limited");
}

/// Tokens a bucket of `rate` per second may have refilled in `elapsed`.
fn refilled(elapsed: Duration) -> usize {
    elapsed.as_secs() as usize + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_per_buyer_and_per_client_and_a_skus_own_limit() {
    let cluster = TestCluster::start(3, |config| {
        config.admission.buyer_ops_per_s = 1;
        config.admission.buyer_burst_ops = 3;
        config.admission.client_ops_per_s = 1;
        config.admission.client_burst_ops = 10;
    })
    .await;
    let shop = client_named(&cluster, "shop").await;
    for (sku, rules) in [
        ("apple", SaleRules::default()),
        (
            "melon",
            SaleRules {
                buyer_rate: Some(RateLimit {
                    ops_per_s: 1_000,
                    burst_ops: Some(1_000),
                }),
                client_rate: Some(RateLimit {
                    ops_per_s: 1_000,
                    burst_ops: Some(1_000),
                }),
                ..SaleRules::default()
            },
        ),
        (
            "kiwi",
            SaleRules {
                buyer_rate: Some(RateLimit {
                    ops_per_s: 1,
                    burst_ops: Some(1),
                }),
                ..SaleRules::default()
            },
        ),
    ] {
        assert_eq!(shop.put_sku(sku, 1_000_000, rules).await, Ok(Outcome::Ok));
    }

    tracing::info!("--- a buyer gets its burst of the cluster's limit, then RATE_LIMITED, not logged");
    let (through, elapsed) = purchases_until_limited(&shop, "apple", "alice", 20).await;
    assert!(
        (3..3 + refilled(elapsed)).contains(&through),
        "{through} in {elapsed:?}"
    );
    let leader = cluster.leader(SHARD).await;
    let log_before = cluster.last_log_index(leader, SHARD);
    let term_before = cluster.node(leader).status()[0].term;
    let answer = shop
        .purchase("apple", 1, "alice", "never-logged")
        .await
        .expect("answered");
    if is_rate_limited(&answer) && cluster.node(leader).status()[0].term == term_before {
        assert_eq!(
            cluster.last_log_index(leader, SHARD),
            log_before,
            "a RATE_LIMITED write was logged"
        );
        let order = cluster
            .node(leader)
            .replica(SHARD)
            .expect("hosted")
            .view
            .read(|image| image.ledger.order("never-logged").is_some());
        assert!(!order, "a RATE_LIMITED write was applied");
    }

    tracing::info!("--- another buyer of the same client is not limited by alice's bucket");
    assert_eq!(shop.purchase("apple", 1, "bob", "bob-1").await, Ok(Outcome::Confirmed));

    tracing::info!("--- a SKU's own lenient limit replaces the cluster's for that SKU");
    let melon = client_named(&cluster, "melon-shop").await;
    for i in 0..12 {
        assert_eq!(
            melon.purchase("melon", 1, "alice", &format!("melon-{i}")).await,
            Ok(Outcome::Confirmed),
            "melon {i}"
        );
    }
    tracing::info!("--- a SKU's own strict limit: one kiwi, then RATE_LIMITED, while apples still sell");
    let kiwi = client_named(&cluster, "kiwi-shop").await;
    let (through, elapsed) = purchases_until_limited(&kiwi, "kiwi", "carol", 10).await;
    assert!(
        (1..1 + refilled(elapsed)).contains(&through),
        "{through} in {elapsed:?}"
    );
    assert_eq!(
        kiwi.purchase("apple", 1, "carol", "carol-apple").await,
        Ok(Outcome::Confirmed)
    );

    tracing::info!("--- the limit is in the replicated rules: every replica applied it");
    let index = cluster.last_log_index(leader, SHARD);
    for id in cluster.running_ids() {
        cluster.wait_applied(id, SHARD, index).await;
        let rules = cluster.node(id).sale_rules(b"kiwi").expect("kiwi is on sale");
        assert_eq!(
            (rules.buyer_rate.ops_per_s, rules.buyer_rate.burst_ops),
            (1, 1),
            "node {id}"
        );
    }

    tracing::info!("--- a client gets its burst across buyers, then RATE_LIMITED; another client does not");
    let busy = client_named(&cluster, "busy-shop").await;
    let started = Instant::now();
    let mut through = 0;
    for buyer in 0..40 {
        let outcome = busy
            .purchase("apple", 1, &format!("buyer-{buyer}"), &format!("busy-{buyer}"))
            .await
            .expect("answered");
        if is_rate_limited(&outcome) {
            break;
        }
        assert_eq!(outcome, Outcome::Confirmed);
        through += 1;
    }
    assert!(
        (10..10 + refilled(started.elapsed())).contains(&through),
        "{through} in {:?}",
        started.elapsed()
    );
    let calm = client_named(&cluster, "calm-shop").await;
    assert_eq!(
        calm.purchase("apple", 1, "buyer-0", "calm-1").await,
        Ok(Outcome::Confirmed)
    );

    tracing::info!("--- in a batch, the limited operation is answered RATE_LIMITED and the others are decided");
    let (through, _) = purchases_until_limited(&calm, "apple", "dave", 20).await;
    assert!(through >= 3);
    let ops = ["dave", "erin"]
        .iter()
        .map(|user| flashledger_client::WriteOp::Purchase {
            sku: b"apple".to_vec(),
            qty: 1,
            user: user.to_string(),
            order_id: format!("batch-{user}"),
            first_attempt_ms: 0,
        })
        .collect();
    let outcomes = calm.batch(ops).await.expect("answered");
    assert!(
        is_rate_limited(&outcomes[0]) || outcomes[0] == Outcome::Confirmed,
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1], Outcome::Confirmed, "{outcomes:?}");
    let limited: u64 = cluster
        .running_ids()
        .iter()
        .map(|id| cluster.node(*id).admission.stats().rate_limited_ops)
        .sum();
    assert!(limited >= 3, "{limited} operations rate limited");
    cluster.stop_all().await;
}

/// Sends `request` as a Purchase with the `grpc-timeout` header `timeout`, over a plain HTTP/2
/// client (tonic's would cut a call off at its deadline itself), and returns the status the
/// node answered.
async fn purchase_with_timeout(addr: &str, request: pb::PurchaseRequest, timeout: &str) -> tonic::Status {
    use prost::Message;
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connects");
    let (client, connection) = h2::client::handshake(tcp).await.expect("handshake");
    tokio::spawn(connection);
    let mut client = client.ready().await.expect("ready");
    let call = http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}/flashledger.v1.Inventory/Purchase"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", timeout)
        .body(())
        .expect("request");
    let (response, mut body) = client.send_request(call, false).expect("sent");
    let message = request.encode_to_vec();
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.len() as u32).to_be_bytes());
    framed.extend_from_slice(&message);
    body.send_data(prost::bytes::Bytes::from(framed), true)
        .expect("body sent");
    let response = response.await.expect("answered");
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status;
    }
    let mut reply = response.into_body();
    while let Some(data) = reply.data().await {
        data.expect("reply data");
    }
    let trailers = reply
        .trailers()
        .await
        .expect("trailers")
        .expect("a status in the trailers");
    tonic::Status::from_header_map(&trailers).expect("a status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_out_of_time_is_dropped_before_it_is_proposed() {
    let cluster = TestCluster::start(3, |_| {}).await;
    cluster.put_sku("apple", 100).await;
    let leader = cluster.leader(SHARD).await;
    let mut inventory = InventoryClient::new(channel(&cluster, leader).await);
    let log_before = cluster.last_log_index(leader, SHARD);
    let term_before = cluster.node(leader).status()[0].term;

    tracing::info!("--- a deadline that passed on arrival: DEADLINE_EXCEEDED, not applied, not logged");
    let addr = cluster.config.node(leader).expect("node").addr.clone();
    let status = purchase_with_timeout(&addr, purchase("late-1", "u", pb::Priority::Premium), "1n").await;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(
        status
            .metadata()
            .get(metadata::NOT_APPLIED)
            .and_then(|v| v.to_str().ok()),
        Some("1"),
        "{status:?}"
    );
    assert_eq!(cluster.node(leader).admission.stats().late_requests, 1);

    tracing::info!("--- the node asks again right before proposing, against how long commits take");
    let passed = Deadline(Some(tokio::time::Instant::now()));
    let late = cluster
        .node(leader)
        .write_within(vec![common::purchase("apple", "u", "late-2")], &[], passed)
        .await;
    assert!(
        matches!(
            late,
            Err(NodeError::DeadlineUnmet {
                shard_id: SHARD,
                left_ms: 0,
                ..
            })
        ),
        "{late:?}"
    );

    if cluster.node(leader).status()[0].term == term_before {
        assert_eq!(
            cluster.last_log_index(leader, SHARD),
            log_before,
            "a late request was proposed"
        );
    }
    for order in ["late-1", "late-2"] {
        let kept = cluster
            .node(leader)
            .replica(SHARD)
            .expect("hosted")
            .view
            .read(|image| image.ledger.order(order).is_some());
        assert!(!kept, "{order} was applied");
    }
    tracing::info!("--- with time to spare, the same request is served");
    let mut request = tonic::Request::new(purchase("on-time", "u", pb::Priority::Standard));
    request.set_timeout(Duration::from_secs(10));
    let reply = inventory.purchase(request).await.expect("served").into_inner();
    assert_eq!(reply.outcome.map(|o| o.code), Some(pb::OutcomeCode::Confirmed as i32));
    cluster.stop_all().await;
}
