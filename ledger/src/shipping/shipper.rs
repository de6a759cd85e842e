//! The shipper task of one ledger shard on one node: when [`designation`] says this replica
//! ships, it reads committed order events in sequence order from the applied state, writes them
//! in bounded batches to every Postgres shard through the [`ShippingSink`], and proposes the
//! replicated `Shipped` mark once every shard has them.
//!
//! It never touches the write path: it only reads the applied state under its lock for the
//! time of a bounded copy, and a failing sink costs it backoff, nobody else anything. It keeps
//! no state of its own that matters: its cursor is the watermarks it last read or committed,
//! re-read from the sink after any failure or whenever it (re)starts shipping.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use futures::future::join_all;
use openraft::ServerState;
use openraft::async_runtime::WatchReceiver;
use tokio::time::Instant;

use crate::config::ShippingSection;
use crate::node::Node;
use crate::node::ShardReplica;
use crate::raft::types::NodeId;
use crate::raft::types::ShardId;
use crate::shipping::designation;
use crate::shipping::designation::Designation;
use crate::shipping::designation::MarkView;
use crate::shipping::hash::postgres_shard;
use crate::shipping::sink::CommitOutcome;
use crate::shipping::sink::ShippedOrder;
use crate::shipping::sink::ShippingSink;
use crate::shipping::sink::SinkError;
use crate::shipping::sink::Watermark;

/// Why a shipping round stopped early. Every one is retried after a backoff.
#[derive(Debug, thiserror::Error)]
pub enum ShipError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// Postgres says events below the replicated mark are missing: those events were pruned on
    /// the word of watermarks that are gone (a database restored from an old backup or wiped).
    #[error(
        "postgres shard {postgres_shard} is at event {watermark}, below the replicated shipped mark \
         {shipped_below}: its data was lost after it acknowledged; restore it, shipping is stuck"
    )]
    WatermarkBehindMark {
        postgres_shard: usize,
        watermark: u64,
        shipped_below: u64,
    },
}

/// Starts a shipper for every ledger shard `node` hosts, each with the sink `sink_for` makes.
/// The production node does this with [`crate::shipping::postgres::PostgresSink`]; the
/// simulator can pass a recording sink.
pub fn spawn<S: ShippingSink>(node: &Arc<Node>, mut sink_for: impl FnMut(ShardId) -> Arc<S>) {
    for shard_id in node.shards.keys().copied() {
        let sink = sink_for(shard_id);
        tokio::spawn(run(Arc::downgrade(node), shard_id, sink, node.config.shipping.clone()));
    }
}

/// One ledger shard's shipper; ends when the node is dropped or its Raft node shut down.
pub async fn run<S: ShippingSink>(node: Weak<Node>, shard_id: ShardId, sink: Arc<S>, settings: ShippingSection) {
    let mut designation = Designation::new(Duration::from_millis(settings.takeover_after_ms), Instant::now());
    let mut cursor: Option<Vec<Watermark>> = None;
    let mut failures: u32 = 0;
    let mut more_waiting = false;
    loop {
        if !more_waiting {
            tokio::time::sleep(pause(&settings, failures)).await;
        }
        more_waiting = false;
        let Some(node) = node.upgrade() else { return };
        let Some(shard) = node.shards.get(&shard_id).cloned() else {
            return;
        };
        let metrics = shard.raft.metrics().borrow_watched().clone();
        if metrics.state == ServerState::Shutdown {
            return;
        }
        let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        let rank_of = |id: NodeId| designation::rank(id, &voters, metrics.current_leader);
        let mark = shard.view.read(|image| MarkView {
            shipped_below_seq: image.ledger.shipped_below_seq,
            shipped_by: image.ledger.shipped_by,
            pending_events: image
                .ledger
                .next_event_seq
                .saturating_sub(image.ledger.shipped_below_seq),
        });
        if !designation.should_ship(rank_of(node.id), rank_of, mark, Instant::now()) {
            // Whoever ships next may be someone else: start from Postgres' word when it is us.
            cursor = None;
            continue;
        }
        match ship_round(&node, &shard, sink.as_ref(), &mut cursor, settings.batch_events_max).await {
            Ok(full_batch) => {
                failures = 0;
                more_waiting = full_batch;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                cursor = None;
                tracing::warn!(shard = shard_id, failures, %error, "shipping round failed; backing off");
            }
        }
    }
}

/// The pause before the next round: the poll interval, or exponential backoff after failures.
fn pause(settings: &ShippingSection, failures: u32) -> Duration {
    if failures == 0 {
        return Duration::from_millis(settings.poll_interval_ms);
    }
    let doubled = settings
        .retry_backoff_ms_min
        .saturating_mul(1u64 << failures.saturating_sub(1).min(20));
    Duration::from_millis(doubled.min(settings.retry_backoff_ms_max))
}

/// Ships one bounded batch. Returns whether the batch was full (more events may be waiting).
async fn ship_round<S: ShippingSink>(
    node: &Node,
    shard: &ShardReplica,
    sink: &S,
    cursor: &mut Option<Vec<Watermark>>,
    batch_events_max: usize,
) -> Result<bool, ShipError> {
    let shard_id = shard.config.id;
    let watermarks = match cursor {
        Some(watermarks) => watermarks,
        None => cursor.insert(read_watermarks(sink, shard_id).await?),
    };
    let low = watermarks.iter().map(|w| w.next_seq).min().unwrap_or(0);
    let (events, shipped_below) = shard.view.read(|image| {
        let events: Vec<ShippedOrder> = image
            .ledger
            .order_events
            .range(low..)
            .take(batch_events_max)
            .map(|(seq, event)| ShippedOrder {
                order_id: event.order_id.clone(),
                sku: event.sku.clone(),
                qty: event.qty,
                user: event.user.clone(),
                ledger_shard: shard_id,
                log_index: event.log_index,
                event_seq: *seq,
                confirmed_at_ms: event.confirmed_at_ms,
            })
            .collect();
        (events, image.ledger.shipped_below_seq)
    });
    if low < shipped_below {
        let (postgres_shard, watermark) = watermarks
            .iter()
            .enumerate()
            .min_by_key(|(_, w)| w.next_seq)
            .map(|(i, w)| (i, w.next_seq))
            .unwrap_or((0, low));
        return Err(ShipError::WatermarkBehindMark {
            postgres_shard,
            watermark,
            shipped_below,
        });
    }
    let full_batch = events.len() == batch_events_max;
    if let Some(last) = events.last() {
        let new = Watermark {
            next_seq: last.event_seq + 1,
            last_index: last.log_index,
        };
        let commits = watermarks.iter().enumerate().map(|(postgres_shard, &expected)| {
            let rows: Vec<ShippedOrder> = events
                .iter()
                .filter(|e| e.event_seq >= expected.next_seq)
                .filter(|e| self::postgres_shard(&e.order_id, watermarks.len()) == postgres_shard)
                .cloned()
                .collect();
            async move {
                if expected.next_seq >= new.next_seq {
                    return Ok(expected);
                }
                match sink.commit(postgres_shard, shard_id, expected, new, &rows).await? {
                    CommitOutcome::Committed => Ok(new),
                    CommitOutcome::WatermarkMoved { current } => {
                        tracing::info!(
                            shard = shard_id,
                            postgres_shard,
                            ?current,
                            "another shipper moved the watermark"
                        );
                        Ok(current)
                    }
                }
            }
        });
        let results: Vec<Result<Watermark, SinkError>> = join_all(commits).await;
        let mut first_error = None;
        for (watermark, result) in watermarks.iter_mut().zip(results) {
            match result {
                Ok(moved) => *watermark = moved,
                Err(error) => first_error = first_error.or(Some(error)),
            }
        }
        if let Some(error) = first_error {
            return Err(error.into());
        }
    }
    let everywhere = watermarks.iter().map(|w| w.next_seq).min().unwrap_or(0);
    if everywhere > shipped_below {
        // Retention only: a failed proposal is retried with the next round's mark.
        if let Err(error) = node.propose_shipped(shard_id, everywhere).await {
            tracing::debug!(shard = shard_id, %error, "shipped-mark proposal failed");
        }
    }
    Ok(full_batch)
}

async fn read_watermarks<S: ShippingSink>(sink: &S, shard_id: ShardId) -> Result<Vec<Watermark>, SinkError> {
    let reads = (0..sink.shard_count()).map(|postgres_shard| sink.watermark(postgres_shard, shard_id));
    join_all(reads).await.into_iter().collect()
}
