//! The PostgreSQL sink against a real server: versioned migrations, exactly-once commits under
//! replays and racing shippers (the compare-and-set watermark), shard identity checks, and
//! reconnection after the server drops its connections.

#![cfg(not(madsim))]

mod pg_support;

use std::sync::Arc;
use std::time::Duration;

use ledger::shipping::postgres::MIGRATIONS;
use ledger::shipping::postgres::PostgresSink;
use ledger::shipping::sink::CommitOutcome;
use ledger::shipping::sink::ShippedOrder;
use ledger::shipping::sink::ShippingSink;
use ledger::shipping::sink::SinkError;
use ledger::shipping::sink::Watermark;
use pg_support::Databases;

const TIMEOUT: Duration = Duration::from_secs(5);

fn order(seq: u64) -> ShippedOrder {
    ShippedOrder {
        order_id: format!("order-{seq}"),
        sku: b"sku-\x00\xff".to_vec(),
        qty: 1 + seq % 3,
        user: format!("user-{}", seq % 7),
        ledger_shard: 1,
        log_index: 100 + seq / 4,
        event_seq: seq,
        confirmed_at_ms: 1_700_000_000_000 + seq,
    }
}

fn watermark_after(seq: u64) -> Watermark {
    Watermark {
        next_seq: seq + 1,
        last_index: 100 + seq / 4,
        last_order_id: format!("order-{seq}"),
    }
}

async fn count(url: &str, sql: &str) -> i64 {
    pg_support::connect(url)
        .await
        .query_one(sql, &[])
        .await
        .expect("count")
        .get(0)
}

#[tokio::test]
async fn migrations_run_once_even_when_two_sinks_start_together() {
    let Some(server) = pg_support::server_url("migrations_run_once") else {
        return;
    };
    let databases = Databases::create(&server, "migrate", 1).await;
    let url = databases.urls()[0].clone();
    let first = PostgresSink::new(vec![url.clone()], TIMEOUT);
    let second = PostgresSink::new(vec![url.clone()], TIMEOUT);
    let (a, b) = tokio::join!(first.watermark(0, 1), second.watermark(0, 1));
    assert_eq!(a.expect("first sink"), Watermark::default());
    assert_eq!(b.expect("second sink"), Watermark::default());
    let applied = count(&url, "SELECT count(*) FROM flashledger_schema").await;
    assert_eq!(applied, MIGRATIONS.len() as i64);
    databases.drop_all().await;
}

#[tokio::test]
async fn a_replayed_batch_is_refused_and_writes_nothing() {
    let Some(server) = pg_support::server_url("a_replayed_batch") else {
        return;
    };
    let databases = Databases::create(&server, "replay", 1).await;
    let url = databases.urls()[0].clone();
    let sink = PostgresSink::new(vec![url.clone()], TIMEOUT);
    let batch: Vec<ShippedOrder> = (0..10).map(order).collect();
    let committed = sink
        .commit(0, 1, Watermark::default(), watermark_after(9), &batch)
        .await
        .expect("commit");
    assert_eq!(committed, CommitOutcome::Committed);
    // The same batch again, as a shipper that crashed before learning it committed would send.
    let replay = sink
        .commit(0, 1, Watermark::default(), watermark_after(9), &batch)
        .await
        .expect("replay answers");
    assert_eq!(
        replay,
        CommitOutcome::WatermarkMoved {
            current: watermark_after(9)
        }
    );
    assert_eq!(count(&url, "SELECT count(*) FROM orders").await, 10);
    let client = pg_support::connect(&url).await;
    let row = client
        .query_one(
            "SELECT sku, qty, user_id, log_index, event_seq, \
             (extract(epoch FROM confirmed_at) * 1000)::bigint FROM orders WHERE order_id = 'order-7'",
            &[],
        )
        .await
        .expect("row");
    let expected = order(7);
    assert_eq!(row.get::<_, Vec<u8>>(0), expected.sku);
    assert_eq!(row.get::<_, i64>(1) as u64, expected.qty);
    assert_eq!(row.get::<_, String>(2), expected.user);
    assert_eq!(row.get::<_, i64>(3) as u64, expected.log_index);
    assert_eq!(row.get::<_, i64>(4) as u64, expected.event_seq);
    assert_eq!(row.get::<_, i64>(5) as u64, expected.confirmed_at_ms);
    assert_eq!(sink.watermark(0, 1).await.expect("watermark"), watermark_after(9));
    // Another ledger shard's watermark is independent.
    assert_eq!(sink.watermark(0, 2).await.expect("watermark"), Watermark::default());
    databases.drop_all().await;
}

#[tokio::test]
async fn an_order_a_split_hands_to_another_shard_lands_once_and_a_reused_id_is_refused() {
    let Some(server) = pg_support::server_url("split_handover") else {
        return;
    };
    let databases = Databases::create(&server, "handover", 1).await;
    let url = databases.urls()[0].clone();
    let sink = PostgresSink::new(vec![url.clone()], TIMEOUT);
    let batch: Vec<ShippedOrder> = (0..10).map(order).collect();
    sink.commit(0, 1, Watermark::default(), watermark_after(9), &batch)
        .await
        .expect("commit");
    // Shard 7, split off shard 1, got orders 5-9 as unshipped events (shipped, not yet marked
    // shipped in shard 1's log): its shipper sends them again, numbered from 0, with more.
    let handed_over: Vec<ShippedOrder> = (5..12)
        .enumerate()
        .map(|(seq, n)| ShippedOrder {
            ledger_shard: 7,
            event_seq: seq as u64,
            ..order(n)
        })
        .collect();
    let new = Watermark {
        next_seq: 7,
        last_index: handed_over[6].log_index,
        last_order_id: handed_over[6].order_id.clone(),
    };
    let committed = sink
        .commit(0, 7, Watermark::default(), new.clone(), &handed_over)
        .await
        .expect("commit");
    assert_eq!(committed, CommitOutcome::Committed);
    assert_eq!(count(&url, "SELECT count(*) FROM orders").await, 12, "orders 5-9 once");
    assert_eq!(sink.watermark(0, 7).await.expect("watermark"), new);
    // Another order under a shipped id is not silently dropped: the batch is refused whole.
    let reused = ShippedOrder {
        ledger_shard: 7,
        event_seq: 7,
        user: "someone-else".into(),
        ..order(12)
    };
    let reused = vec![
        order(13),
        ShippedOrder {
            order_id: "order-3".into(),
            ..reused
        },
    ];
    let refused = sink.commit(0, 7, new.clone(), watermark_after(20), &reused).await;
    assert!(
        matches!(&refused, Err(ledger::shipping::sink::SinkError::Misconfigured { message, .. }) if message.contains("order-3")),
        "{refused:?}"
    );
    assert_eq!(
        count(&url, "SELECT count(*) FROM orders").await,
        12,
        "nothing of it written"
    );
    assert_eq!(
        sink.watermark(0, 7).await.expect("watermark"),
        new,
        "the watermark did not move"
    );
    databases.drop_all().await;
}

#[tokio::test]
async fn two_shippers_racing_over_the_same_events_ship_each_once() {
    let Some(server) = pg_support::server_url("two_shippers_racing") else {
        return;
    };
    let databases = Databases::create(&server, "race", 1).await;
    let url = databases.urls()[0].clone();
    let batches = 40u64;
    let batch_len = 25u64;
    // Each shipper reads the watermark and ships the next batch from there, as the real one does.
    let ship = |sink: Arc<PostgresSink>| async move {
        let mut committed = 0u64;
        loop {
            let from = sink.watermark(0, 1).await.expect("watermark");
            if from.next_seq >= batches * batch_len {
                return committed;
            }
            let last = from.next_seq + batch_len - 1;
            let rows: Vec<ShippedOrder> = (from.next_seq..=last).map(order).collect();
            match sink
                .commit(0, 1, from.clone(), watermark_after(last), &rows)
                .await
                .expect("commit")
            {
                CommitOutcome::Committed => committed += 1,
                CommitOutcome::WatermarkMoved { current } => {
                    assert!(current > from, "the watermark only moves forward")
                }
            }
        }
    };
    let first = tokio::spawn(ship(Arc::new(PostgresSink::new(vec![url.clone()], TIMEOUT))));
    let second = tokio::spawn(ship(Arc::new(PostgresSink::new(vec![url.clone()], TIMEOUT))));
    let total_commits = first.await.expect("first") + second.await.expect("second");
    assert_eq!(total_commits, batches, "every batch committed by exactly one shipper");
    let rows = batches * batch_len;
    assert_eq!(count(&url, "SELECT count(*) FROM orders").await as u64, rows);
    assert_eq!(
        count(&url, "SELECT count(DISTINCT event_seq) FROM orders").await as u64,
        rows
    );
    databases.drop_all().await;
}

#[tokio::test]
async fn a_database_listed_at_another_position_is_refused() {
    let Some(server) = pg_support::server_url("a_database_listed_at_another_position") else {
        return;
    };
    let databases = Databases::create(&server, "identity", 2).await;
    let urls = databases.urls();
    let sink = PostgresSink::new(urls.clone(), TIMEOUT);
    sink.watermark(0, 1).await.expect("shard 0");
    sink.watermark(1, 1).await.expect("shard 1");
    let swapped = PostgresSink::new(vec![urls[1].clone(), urls[0].clone()], TIMEOUT);
    let error = swapped.watermark(0, 1).await.expect_err("swapped order is refused");
    assert!(matches!(error, SinkError::Misconfigured { shard: 0, .. }), "{error}");
    databases.drop_all().await;
}

#[tokio::test]
async fn the_sink_reconnects_after_the_server_drops_its_connection() {
    let Some(server) = pg_support::server_url("the_sink_reconnects") else {
        return;
    };
    let databases = Databases::create(&server, "reconnect", 1).await;
    let url = databases.urls()[0].clone();
    let sink = PostgresSink::new(vec![url.clone()], TIMEOUT);
    sink.watermark(0, 1).await.expect("connects");
    let admin = pg_support::connect(&server).await;
    let killed: i64 = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
            &[&databases.names[0]],
        )
        .await
        .expect("terminate")
        .get(0);
    assert!(killed >= 1, "the sink's backend was terminated");
    // The first call may see the dead connection; within a few calls it is back, and commits.
    let mut outcome = None;
    for _ in 0..5 {
        if let Ok(answer) = sink
            .commit(0, 1, Watermark::default(), watermark_after(0), &[order(0)])
            .await
        {
            outcome = Some(answer);
            break;
        }
    }
    assert_eq!(outcome, Some(CommitOutcome::Committed));
    assert_eq!(count(&url, "SELECT count(*) FROM orders").await, 1);
    databases.drop_all().await;
}
