//! The shipper task of one ledger shard on one node: when [`designation`] says this replica
//! ships, it reads committed order events in sequence order from the applied state, writes them
//! in bounded batches to every Postgres shard through the [`ShippingSink`], and proposes the
//! replicated `Shipped` mark once every shard has them.
//!
//! It never touches the write path: it only reads the applied state under its lock for the
//! time of a bounded copy, and a failing sink costs it backoff, nobody else anything. It keeps
//! no state of its own that matters: its cursor is the watermarks it last read or committed,
//! re-read from the sink after any failure or whenever it (re)starts shipping.

use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use flashledger_client::backoff::Backoff;
use flashledger_client::backoff::jitter_seed;
use futures::future::join_all;
use tokio::time::Instant;

use crate::config::ShippingSection;
use crate::shipping::designation;
use crate::shipping::designation::Designation;
use crate::shipping::designation::MarkView;
use crate::shipping::hash::postgres_shard;
use crate::shipping::sink::CommitOutcome;
use crate::shipping::sink::ShippedOrder;
use crate::shipping::sink::ShippingSink;
use crate::shipping::sink::SinkError;
use crate::shipping::sink::Watermark;
use crate::shipping::source::ShippingShard;
use crate::shipping::source::ShippingSource;
use crate::state_machine::state::LedgerState;
use crate::types::NodeId;
use crate::types::ShardId;

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
    /// The watermark names an event this ledger does not have: the database holds another
    /// cluster's (or an earlier incarnation's) orders. Shipping on would prune unshipped events.
    #[error(
        "postgres shard {postgres_shard}'s watermark says event {seq} was order {order_id:?} at log \
         index {log_index}, but this ledger's event {seq} is {local}: the database belongs to \
         another ledger history; shipping is stuck until it is fixed"
    )]
    ForeignWatermark {
        postgres_shard: usize,
        seq: u64,
        order_id: String,
        log_index: u64,
        local: String,
    },
    /// A watermark is past the events this replica has applied (it lags, or the database is
    /// foreign): wait rather than guess.
    #[error("postgres shard {postgres_shard} is at event {watermark}, this replica has applied only {applied} events")]
    WatermarkAhead {
        postgres_shard: usize,
        watermark: u64,
        applied: u64,
    },
}

/// Starts a shipper for every ledger shard `node` hosts, each with the sink `sink_for` makes.
/// The production node does this with [`crate::shipping::postgres::PostgresSink`]; the
/// simulator can pass a recording sink.
pub fn spawn<N: ShippingSource, S: ShippingSink>(
    node: &Arc<N>,
    mut sink_for: impl FnMut(ShardId) -> Arc<S> + Send + 'static,
) {
    // A node that ships asks its shards to keep order events (they are kept only while a sink is).
    node.ship_orders();
    for shard_id in node.shard_ids() {
        let sink = sink_for(shard_id);
        tokio::spawn(run(Arc::downgrade(node), shard_id, sink, node.shipping_settings()));
    }
    let (weak, settings) = (Arc::downgrade(node), node.shipping_settings());
    let sink_for = std::sync::Mutex::new(sink_for);
    node.ship_new_shards_with(Box::new(move |shard_id| {
        let sink = (sink_for.lock().unwrap_or_else(|p| p.into_inner()))(shard_id);
        tokio::spawn(run(weak.clone(), shard_id, sink, settings.clone()));
    }));
}

/// One ledger shard's shipper; ends when the node is dropped or its Raft node shut down.
pub async fn run<N: ShippingSource, S: ShippingSink>(
    node: Weak<N>,
    shard_id: ShardId,
    sink: Arc<S>,
    settings: ShippingSection,
) {
    let mut designation = Designation::new(Duration::from_millis(settings.takeover_after_ms), Instant::now());
    let mut cursor: Option<Vec<Watermark>> = None;
    let mut failures: u32 = 0;
    // The project's one backoff (the client library's): replicas of a shard that lost the same
    // Postgres together do not come back to it in the same millisecond.
    let mut backoff = Backoff::new(
        Duration::from_millis(settings.retry_backoff_ms_min),
        Duration::from_millis(settings.retry_backoff_ms_max),
        jitter_seed(shard_id),
    );
    let mut more_waiting = false;
    // Each mark is a log entry on the leader: at most one per interval, however fast batches go.
    let mark_interval = Duration::from_millis(settings.mark_interval_ms);
    let mut last_mark_proposal: Option<Instant> = None;
    loop {
        if !more_waiting {
            let pause = match failures {
                0 => Duration::from_millis(settings.poll_interval_ms),
                failures => backoff.delay(failures - 1, None),
            };
            tokio::time::sleep(pause).await;
        }
        more_waiting = false;
        let Some(node) = node.upgrade() else { return };
        let Some(shard) = node.shard(shard_id) else {
            return;
        };
        let role = shard.raft_role();
        if role.shut_down {
            return;
        }
        let rank_of = |id: NodeId| designation::rank(id, &role.voters, role.leader);
        let mark = shard.read_ledger(|ledger| MarkView {
            shipped_below_seq: ledger.shipped_below_seq,
            shipped_by: ledger.shipped_by,
            pending_events: ledger.next_event_seq.saturating_sub(ledger.shipped_below_seq),
        });
        if !designation.should_ship(rank_of(node.node_id()), rank_of, mark, Instant::now()) {
            // Whoever ships next may be someone else: start from Postgres' word when it is us.
            cursor = None;
            continue;
        }
        match ship_round(shard.as_ref(), sink.as_ref(), &mut cursor, settings.batch_events_max).await {
            Ok(round) => {
                failures = 0;
                more_waiting = round.full_batch;
                let due = last_mark_proposal.is_none_or(|at| at.elapsed() >= mark_interval);
                if round.everywhere_below > round.replicated_mark && due {
                    last_mark_proposal = Some(Instant::now());
                    // Retention only: a failed proposal is retried with a later round's mark.
                    if let Err(error) = node.propose_shipped(shard_id, round.everywhere_below).await {
                        tracing::debug!(shard = shard_id, %error, "shipped-mark proposal failed");
                    }
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                cursor = None;
                if matches!(error, ShipError::WatermarkAhead { .. }) {
                    // Expected while a restarted replica catches up; it resolves by itself.
                    tracing::info!(shard = shard_id, failures, %error, "waiting to catch up before shipping");
                } else {
                    tracing::warn!(shard = shard_id, failures, %error, "shipping round failed; backing off");
                }
            }
        }
    }
}

/// What a successful round achieved.
struct Round {
    /// The batch was full: more events may be waiting, so the next round starts at once.
    full_batch: bool,
    /// Every Postgres shard has every event below this sequence number.
    everywhere_below: u64,
    /// The replicated mark as the round found it.
    replicated_mark: u64,
}

/// Ships one bounded batch.
async fn ship_round<S: ShippingSink>(
    shard: &impl ShippingShard,
    sink: &S,
    cursor: &mut Option<Vec<Watermark>>,
    batch_events_max: usize,
) -> Result<Round, ShipError> {
    let shard_id = shard.id();
    let watermarks = match cursor {
        Some(watermarks) => watermarks,
        None => {
            let read = read_watermarks(sink, shard_id).await?;
            shard.read_ledger(|ledger| verify_watermarks(&read, ledger))?;
            cursor.insert(read)
        }
    };
    let low = watermarks.iter().map(|w| w.next_seq).min().unwrap_or(0);
    let (events, shipped_below, next_event_seq) = shard.read_ledger(|ledger| {
        let events: Vec<ShippedOrder> = ledger
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
        (events, ledger.shipped_below_seq, ledger.next_event_seq)
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
    // Where this round's watermarks end: past the last event read, or, when it read everything
    // there is, at the end of the sequence. The two differ only after a split, whose events
    // left holes in this shard's numbering: a hole at the end would otherwise hold every
    // watermark (and the shipped mark, and the lag) below it until the next order.
    let end = match events.last() {
        Some(last) if full_batch => last.event_seq + 1,
        _ => next_event_seq,
    };
    if end > low {
        let new_for = |expected: &Watermark| match events.last() {
            Some(last) => Watermark {
                next_seq: end,
                last_index: last.log_index,
                last_order_id: last.order_id.clone(),
            },
            None => Watermark {
                next_seq: end,
                ..expected.clone()
            },
        };
        let commits = watermarks.iter().enumerate().map(|(postgres_shard, expected)| {
            let (expected, new) = (expected.clone(), new_for(expected));
            let rows: Vec<ShippedOrder> = events
                .iter()
                .filter(|e| e.event_seq >= expected.next_seq)
                .filter(|e| self::postgres_shard(&e.order_id, watermarks.len()) == postgres_shard)
                .cloned()
                .collect();
            async move {
                if expected.next_seq >= new.next_seq {
                    return Ok(Some(expected));
                }
                match sink
                    .commit(postgres_shard, shard_id, expected, new.clone(), &rows)
                    .await?
                {
                    CommitOutcome::Committed => Ok(Some(new)),
                    CommitOutcome::WatermarkMoved { current } => {
                        tracing::info!(
                            shard = shard_id,
                            postgres_shard,
                            ?current,
                            "another shipper moved the watermark"
                        );
                        Ok(None)
                    }
                }
            }
        });
        let results: Vec<Result<Option<Watermark>, SinkError>> = join_all(commits).await;
        let mut first_error = None;
        let mut moved_by_another = false;
        for (watermark, result) in watermarks.iter_mut().zip(results) {
            match result {
                Ok(Some(committed)) => *watermark = committed,
                Ok(None) => moved_by_another = true,
                Err(error) => first_error = first_error.or(Some(error)),
            }
        }
        if let Some(error) = first_error {
            return Err(error.into());
        }
        if moved_by_another {
            // Re-read (and verify) every watermark next round rather than trust a racing shipper's.
            *cursor = None;
            return Ok(Round {
                full_batch: true,
                everywhere_below: 0,
                replicated_mark: shipped_below,
            });
        }
    }
    Ok(Round {
        full_batch,
        everywhere_below: watermarks.iter().map(|w| w.next_seq).min().unwrap_or(0),
        replicated_mark: shipped_below,
    })
}

/// Checks that every watermark read from the sink describes this ledger's own history: the
/// event just below it must be the order and log index it names. Watermarks at or below the
/// replicated mark were already verified by the shipper that proposed the mark.
fn verify_watermarks(watermarks: &[Watermark], ledger: &LedgerState) -> Result<(), ShipError> {
    for (postgres_shard, watermark) in watermarks.iter().enumerate() {
        if watermark.next_seq <= ledger.shipped_below_seq {
            continue;
        }
        if watermark.next_seq > ledger.next_event_seq {
            return Err(ShipError::WatermarkAhead {
                postgres_shard,
                watermark: watermark.next_seq,
                applied: ledger.next_event_seq,
            });
        }
        let seq = watermark.next_seq - 1;
        let local = ledger.order_events.get(&seq);
        // Events below `next_event_seq` and not marked shipped leave only with their SKUs in a
        // split: a watermark just past one names an event of the other half, which cannot be
        // checked here. (Without splits every such event is present.)
        if local.is_none() {
            tracing::debug!(postgres_shard, seq, "watermark just past an event a split moved away");
            continue;
        }
        if local
            .is_none_or(|event| event.order_id != watermark.last_order_id || event.log_index != watermark.last_index)
        {
            return Err(ShipError::ForeignWatermark {
                postgres_shard,
                seq,
                order_id: watermark.last_order_id.clone(),
                log_index: watermark.last_index,
                local: local.map_or("missing".to_string(), |e| {
                    format!("order {:?} at log index {}", e.order_id, e.log_index)
                }),
            });
        }
    }
    Ok(())
}

async fn read_watermarks<S: ShippingSink>(sink: &S, shard_id: ShardId) -> Result<Vec<Watermark>, SinkError> {
    let reads = (0..sink.shard_count()).map(|postgres_shard| sink.watermark(postgres_shard, shard_id));
    join_all(reads).await.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_machine::state::OrderEvent;

    fn ledger_with_events(count: u64, shipped_below: u64) -> LedgerState {
        let mut ledger = LedgerState {
            next_event_seq: count,
            shipped_below_seq: shipped_below,
            ..LedgerState::default()
        };
        for seq in shipped_below..count {
            let event = OrderEvent {
                order_id: format!("o{seq}"),
                sku: b"x".to_vec(),
                qty: 1,
                user: "u".into(),
                log_index: 10 + seq,
                confirmed_at_ms: 0,
            };
            ledger.order_events.insert(seq, event);
        }
        ledger
    }

    fn watermark(next_seq: u64, order_id: &str, last_index: u64) -> Watermark {
        Watermark {
            next_seq,
            last_index,
            last_order_id: order_id.into(),
        }
    }

    #[test]
    fn watermarks_of_this_history_are_accepted() {
        let ledger = ledger_with_events(10, 4);
        let ours = [
            Watermark::default(),
            watermark(3, "pruned-anyway", 0),
            watermark(7, "o6", 16),
        ];
        assert!(verify_watermarks(&ours, &ledger).is_ok());
    }

    #[test]
    fn another_historys_watermark_stops_shipping_instead_of_pruning() {
        let ledger = ledger_with_events(10, 4);
        let foreign = [watermark(7, "someone-else", 16)];
        assert!(matches!(
            verify_watermarks(&foreign, &ledger),
            Err(ShipError::ForeignWatermark { seq: 6, .. })
        ));
        let same_id_other_index = [watermark(7, "o6", 99)];
        assert!(verify_watermarks(&same_id_other_index, &ledger).is_err());
        let ahead = [watermark(5000, "o4999", 5041)];
        assert!(matches!(
            verify_watermarks(&ahead, &ledger),
            Err(ShipError::WatermarkAhead { applied: 10, .. })
        ));
    }
}
