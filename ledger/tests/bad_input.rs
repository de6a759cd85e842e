//! Bad input over the wire gets a clear error and changes nothing: malformed protobuf, invalid
//! fields, a SKU whose shard this node does not host, a batch spanning shards, an oversize
//! message, and garbage on the internal Raft service. Each case compares the shard's applied
//! index (allowing only a new leader's blank entry) and state digest before and after.

#![cfg(not(madsim))]

mod common;

use common::TestCluster;
use flashledger_proto::v1 as pb;
use flashledger_proto::v1::inventory_client::InventoryClient;
use flashledger_proto::v1::raft_client::RaftClient;
use ledger::config::ShardConfig;
use ledger::types::NodeId;
use tonic::Code;
use tonic::transport::Channel;

async fn channel(cluster: &TestCluster, id: NodeId) -> Channel {
    let addr = cluster.config.node(id).expect("node").addr.clone();
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

/// One shard replica as the bad-input checks compare it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Replica {
    node: NodeId,
    shard: u64,
    term: u64,
    applied_index: u64,
    state_digest: u64,
}

/// Every shard on every running node.
fn fingerprint(cluster: &TestCluster) -> Vec<Replica> {
    let mut all = Vec::new();
    for id in cluster.running_ids() {
        for shard in cluster.node(id).status() {
            all.push(Replica {
                node: id,
                shard: shard.shard_id,
                term: shard.term,
                applied_index: shard.applied_index,
                state_digest: shard.state_digest,
            });
        }
    }
    all
}

/// No replica's state changed and nothing was appended to its log, except what a change of
/// leader appends by itself: one blank entry per new term (the machine is shared by parallel
/// cluster tests, and a leader can lose its lease meanwhile; a logged bad request has no term
/// to account for it).
fn assert_unchanged(before: &[Replica], after: &[Replica]) {
    assert_eq!(before.len(), after.len(), "{before:?} -> {after:?}");
    for (was, now) in before.iter().zip(after) {
        assert_eq!((was.node, was.shard), (now.node, now.shard));
        assert_eq!(was.state_digest, now.state_digest, "state changed: {was:?} -> {now:?}");
        let (Some(appended), Some(new_terms)) = (
            now.applied_index.checked_sub(was.applied_index),
            now.term.checked_sub(was.term),
        ) else {
            panic!("applied index or term went back: {was:?} -> {now:?}");
        };
        assert!(
            appended <= new_terms,
            "{appended} entries applied in {new_terms} new terms: {was:?} -> {now:?}"
        );
    }
}

fn reserve(sku: &[u8], qty: i64) -> pb::ReserveRequest {
    pb::ReserveRequest {
        sku: sku.to_vec().into(),
        qty,
        user: "u".into(),
        order_id: "o".into(),
        ttl_ms: 0,
        first_attempt_ms: ledger::node::now_ms() as i64,
        route: None,
        priority: 0,
    }
}

/// A Reserve or Purchase as any client can put it on the wire: its text fields as raw bytes,
/// which need not be UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawWrite {
    #[prost(bytes = "vec", tag = "1")]
    sku: Vec<u8>,
    #[prost(int64, tag = "2")]
    qty: i64,
    #[prost(bytes = "vec", tag = "3")]
    user: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    order_id: Vec<u8>,
    #[prost(int64, tag = "6")]
    first_attempt_ms: i64,
}

impl RawWrite {
    fn valid() -> Self {
        RawWrite {
            sku: b"apple".to_vec(),
            qty: 1,
            user: b"u".to_vec(),
            order_id: b"o".to_vec(),
            first_attempt_ms: ledger::node::now_ms() as i64,
        }
    }
}

/// A Confirm or Cancel as any client can put it on the wire.
#[derive(Clone, PartialEq, prost::Message)]
struct RawOrder {
    #[prost(bytes = "vec", tag = "1")]
    sku: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    order_id: Vec<u8>,
    #[prost(int64, tag = "6")]
    first_attempt_ms: i64,
}

/// A BatchRequest of purchases (`WriteOp.purchase` is field 4 of its oneof).
#[derive(Clone, PartialEq, prost::Message)]
struct RawBatch {
    #[prost(message, repeated, tag = "1")]
    ops: Vec<RawWriteOp>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawWriteOp {
    #[prost(message, optional, tag = "4")]
    purchase: Option<RawWrite>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_change_nothing() {
    // Shard 2 lives on node 1 only, so nodes 2 and 3 host no shard for SKUs from "m" on.
    let cluster = TestCluster::start(3, |config| {
        config.shards[1] = ShardConfig {
            id: 2,
            start: "m".into(),
            end: String::new(),
            replicas: vec![1],
        };
        config.server.message_bytes_max = 16 * 1024;
    })
    .await;
    let put_index = cluster.put_sku("apple", 10).await;
    for id in cluster.running_ids() {
        cluster.wait_applied(id, 1, put_index).await;
    }
    // Shard 2's new leader configures the ledger (index 2, after its blank entry) on its own
    // schedule; wait for it, or it may land between the fingerprints below.
    cluster.wait_applied(1, 2, 2).await;
    let leader = cluster.leader(1).await;
    let mut inventory = InventoryClient::new(channel(&cluster, leader).await);
    let before = fingerprint(&cluster);

    tracing::info!("--- invalid fields name the field");
    for (request, field) in [
        (reserve(b"apple", 0), "qty"),
        (reserve(b"apple", -2), "qty"),
        (reserve(b"", 1), "sku"),
    ] {
        let status = inventory.reserve(request).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(field), "{}", status.message());
    }

    tracing::info!("--- malformed protobuf: a message whose field 1 has the wrong wire type");
    let mut raw = tonic::client::Grpc::new(channel(&cluster, leader).await);
    raw.ready().await.expect("ready");
    let codec = tonic_prost::ProstCodec::<pb::StockCounts, pb::WriteReply>::default();
    let path = http::uri::PathAndQuery::from_static("/flashledger.v1.Inventory/Reserve");
    let garbage = pb::StockCounts {
        total: 5,
        available: 1,
        reserved: 2,
        sold: 3,
    };
    let status = raw
        .unary(tonic::Request::new(garbage), path, codec)
        .await
        .expect_err("refused");
    assert_ne!(status.code(), Code::Ok);
    assert!(status.message().to_lowercase().contains("decode"), "{status:?}");

    tracing::info!("--- text fields that are not UTF-8 name the field");
    let raw_path = |method: &'static str| http::uri::PathAndQuery::from_static(method);
    let not_utf8 = vec![b'o', 0xff, 0xfe];
    let cases = [
        (
            RawWrite {
                user: not_utf8.clone(),
                ..RawWrite::valid()
            },
            "user",
        ),
        (
            RawWrite {
                order_id: not_utf8.clone(),
                ..RawWrite::valid()
            },
            "order_id",
        ),
    ];
    for (write, field) in cases {
        for method in [
            "/flashledger.v1.Inventory/Reserve",
            "/flashledger.v1.Inventory/Purchase",
        ] {
            let codec = tonic_prost::ProstCodec::<RawWrite, pb::WriteReply>::default();
            raw.ready().await.expect("ready");
            let status = raw
                .unary(tonic::Request::new(write.clone()), raw_path(method), codec)
                .await
                .expect_err("refused");
            assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
            assert!(status.message().contains(field), "{method}: {status:?}");
        }
        let batch = RawBatch {
            ops: vec![
                RawWriteOp {
                    purchase: Some(RawWrite::valid()),
                },
                RawWriteOp {
                    purchase: Some(write.clone()),
                },
            ],
        };
        let codec = tonic_prost::ProstCodec::<RawBatch, pb::BatchReply>::default();
        raw.ready().await.expect("ready");
        let status = raw
            .unary(
                tonic::Request::new(batch),
                raw_path("/flashledger.v1.Inventory/Batch"),
                codec,
            )
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "batch: {status:?}");
        assert!(
            status.message().contains(&format!("ops[1].{field}")),
            "batch: {status:?}"
        );
    }
    let order = RawOrder {
        sku: b"apple".to_vec(),
        order_id: not_utf8,
        first_attempt_ms: ledger::node::now_ms() as i64,
    };
    for method in ["/flashledger.v1.Inventory/Confirm", "/flashledger.v1.Inventory/Cancel"] {
        let codec = tonic_prost::ProstCodec::<RawOrder, pb::WriteReply>::default();
        raw.ready().await.expect("ready");
        let status = raw
            .unary(tonic::Request::new(order.clone()), raw_path(method), codec)
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{method}: {status:?}");
        assert!(status.message().contains("order_id"), "{method}: {status:?}");
    }

    tracing::info!("--- a SKU of a shard this node does not host");
    let mut follower_only = InventoryClient::new(channel(&cluster, 2).await);
    let status = follower_only.reserve(reserve(b"zebra", 1)).await.expect_err("refused");
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("hosts no shard"), "{}", status.message());

    tracing::info!("--- a batch that spans shards");
    let op = |sku: &[u8]| pb::WriteOp {
        op: Some(pb::write_op::Op::Reserve(reserve(sku, 1))),
    };
    let status = InventoryClient::new(channel(&cluster, 1).await)
        .batch(pb::BatchRequest {
            ops: vec![op(b"apple"), op(b"zebra")],
            priority: 0,
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("spans shards"), "{}", status.message());

    tracing::info!("--- an oversize message");
    let huge = pb::BatchRequest {
        ops: (0..500).map(|_| op(&[b'a'; 100])).collect(),
        priority: 0,
    };
    let status = inventory.batch(huge).await.expect_err("refused");
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");

    tracing::info!("--- garbage and unknown shards on the internal Raft service");
    let mut raft = RaftClient::new(channel(&cluster, 2).await);
    let garbage = pb::RaftRequest {
        shard_id: 1,
        payload: vec![0xff; 64].into(),
    };
    assert_eq!(
        raft.append_entries(garbage).await.expect_err("refused").code(),
        Code::InvalidArgument
    );
    let unknown = pb::RaftRequest {
        shard_id: 99,
        payload: Vec::new().into(),
    };
    assert_eq!(raft.vote(unknown).await.expect_err("refused").code(), Code::NotFound);

    tracing::info!("--- unknown SKU reads answer 'unknown', writes answer UnknownSku");
    let stock = pb::GetStockRequest {
        sku: b"aaa-no-such".to_vec().into(),
        consistency: 0,
        max_lag_entries: 0,
        priority: 0,
    };
    assert_eq!(
        inventory.get_stock(stock).await.expect("answered").into_inner().counts,
        None
    );
    let bad_consistency = pb::GetStockRequest {
        sku: b"apple".to_vec().into(),
        consistency: 7,
        max_lag_entries: 0,
        priority: 0,
    };
    assert_eq!(
        inventory.get_stock(bad_consistency).await.expect_err("refused").code(),
        Code::InvalidArgument
    );

    tracing::info!("--- a stale shard epoch on any operation of a batch refuses the whole batch");
    let routed = |epoch: u64| {
        let mut request = reserve(b"apple", 1);
        request.route = Some(pb::RouteEpoch { epoch });
        request
    };
    let alone = inventory.reserve(routed(u64::MAX)).await.expect_err("refused");
    assert_eq!(alone.code(), Code::FailedPrecondition, "{alone:?}");
    for epochs in [vec![1, u64::MAX], vec![0, u64::MAX], vec![u64::MAX, 1], vec![1, 1, 2]] {
        let ops = epochs
            .iter()
            .map(|epoch| pb::WriteOp {
                op: Some(pb::write_op::Op::Reserve(routed(*epoch))),
            })
            .collect();
        let status = inventory
            .batch(pb::BatchRequest { ops, priority: 0 })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::FailedPrecondition, "epochs {epochs:?}: {status:?}");
        let current = status.metadata().get(flashledger_proto::metadata::SHARD_EPOCH);
        assert_eq!(current.and_then(|v| v.to_str().ok()), Some("1"), "epochs {epochs:?}");
    }

    assert_unchanged(&before, &fingerprint(&cluster));
    let unknown_sku = inventory
        .reserve(reserve(b"kiwi", 1))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(
        unknown_sku.outcome.map(|o| o.code),
        Some(pb::OutcomeCode::UnknownSku as i32)
    );
    cluster.stop_all().await;
}
