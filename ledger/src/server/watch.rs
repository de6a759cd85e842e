//! The `Watch` stream: the current counts of a SKU range, then every committed change in it.
//!
//! Bounded per watcher and per node, whatever the client does: the current state is read and
//! sent a page of `WATCH_PAGE_SKUS` at a time (a watcher that never reads holds one page and its
//! queue, not a copy of every SKU), at most `WATCH_QUEUE_CHANGES_MAX` changes wait for a slow
//! reader before its stream is closed, and at most `server.watch_streams_max` streams are open
//! on the node and `server.watch_streams_per_connection_max` on one connection (more answer
//! RESOURCE_EXHAUSTED at once).
//!
//! Progress marks (asked for with `progress_interval_ms`): after the current state, after each
//! burst of live changes, and at least every interval while nothing changes, each shard sends
//! its applied index `P` meaning "every change in range applied at or below `P` is on this
//! stream". That holds because a shard publishes an entry's changes under the same write lock
//! that makes the entry applied: once `P` is read, every change up to `P` already waits in this
//! watcher's queue, which is drained before the mark is sent. A cache that keeps, per SKU, the
//! newest value it received is then exactly the state at `P` once the mark arrives. A replica
//! that cannot tell its shard has a working leader (it knows none, it leads but has heard
//! from no quorum for an election timeout, or it follows but has had no append from its leader
//! for as long) sends no marks: the watcher's silence then grows,
//! which is how a cache learns its values may be falling behind a shard that lost its quorum.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Bound;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::time::Duration;

use flashledger_proto::v1 as pb;
use futures::Stream;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::error::TryRecvError;
use tonic::Status;

use crate::node::Node;
use crate::node::ShardReplica;
use crate::raft::state_store::ShardView;
use crate::server::convert;

/// How many stock changes a Watch stream may queue for a slow reader before it is closed.
pub const WATCH_QUEUE_CHANGES_MAX: usize = 1024;

/// How many SKUs of the current state one read of a shard copies for a watcher.
pub const WATCH_PAGE_SKUS: usize = 256;

/// The shortest and longest progress interval a watcher may ask for: a mark per shard every
/// 10 ms is cheap; an hour-long one would make an idle stream look dead.
pub const WATCH_PROGRESS_INTERVAL_MS_MIN: u32 = 10;
pub const WATCH_PROGRESS_INTERVAL_MS_MAX: u32 = 60_000;

/// How many SKUs one read may look at (most may not have changed since the watcher's index).
const WATCH_PAGE_SCAN_MAX: usize = 16 * WATCH_PAGE_SKUS;

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::StockChange, Status>> + Send>>;

/// The open Watch streams: on the node, and per connection (the client's address and port).
#[derive(Debug, Default)]
pub struct WatchSlots {
    open: Mutex<OpenWatches>,
}

#[derive(Debug, Default)]
struct OpenWatches {
    total: usize,
    per_connection: HashMap<Option<SocketAddr>, usize>,
}

/// One open stream; given back when the stream is dropped.
#[derive(Debug)]
pub struct WatchSlot {
    slots: Arc<WatchSlots>,
    connection: Option<SocketAddr>,
}

impl WatchSlots {
    /// A slot for a new stream on `connection`, or RESOURCE_EXHAUSTED naming the bound.
    pub fn take(
        self: &Arc<Self>,
        connection: Option<SocketAddr>,
        node_max: usize,
        per_connection_max: usize,
    ) -> Result<WatchSlot, Status> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= node_max {
            return Err(Status::resource_exhausted(format!(
                "this node has {node_max} Watch streams open (server.watch_streams_max); use another node or retry later"
            )));
        }
        let on_connection = open.per_connection.entry(connection).or_insert(0);
        if *on_connection >= per_connection_max {
            return Err(Status::resource_exhausted(format!(
                "{per_connection_max} Watch streams are open on this connection \
                 (server.watch_streams_per_connection_max); one stream can watch a whole range"
            )));
        }
        *on_connection += 1;
        open.total += 1;
        Ok(WatchSlot {
            slots: self.clone(),
            connection,
        })
    }

    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).total
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total -= 1;
        if let Some(count) = open.per_connection.get_mut(&self.connection) {
            *count -= 1;
            if *count == 0 {
                open.per_connection.remove(&self.connection);
            }
        }
    }
}

/// The SKU range `[start, end)` of a watch (`end` empty: unbounded).
#[derive(Clone)]
pub struct SkuRange {
    pub start: Vec<u8>,
    pub end: Vec<u8>,
}

impl SkuRange {
    fn contains(&self, sku: &[u8]) -> bool {
        sku >= self.start.as_slice() && (self.end.is_empty() || sku < self.end.as_slice())
    }
}

/// What one watcher asked for, past its range.
#[derive(Clone, Copy)]
pub struct WatchOptions {
    /// Send only changes after this index.
    pub from_index: u64,
    /// Send progress marks at least this often (`None`: no marks, the stream as first defined).
    pub progress_interval: Option<Duration>,
}

impl WatchOptions {
    /// The options of a request: a progress interval of 0 means none, others are clamped to
    /// [`WATCH_PROGRESS_INTERVAL_MS_MIN`, `WATCH_PROGRESS_INTERVAL_MS_MAX`].
    pub fn new(from_index: u64, progress_interval_ms: u32) -> Self {
        let progress_interval = (progress_interval_ms > 0).then(|| {
            let clamped = progress_interval_ms.clamp(WATCH_PROGRESS_INTERVAL_MS_MIN, WATCH_PROGRESS_INTERVAL_MS_MAX);
            Duration::from_millis(u64::from(clamped))
        });
        WatchOptions {
            from_index,
            progress_interval,
        }
    }
}

/// How often a watch checks whether this node's shards were reshaped under it.
const RESHAPE_CHECK_INTERVAL: Duration = Duration::from_millis(250);

/// Starts a watch of `range` on every shard of `node`; the stream holds `slot` until it ends.
/// It ends with `UNAVAILABLE` once the shards this node hosts change (a split narrowed one, or a
/// replica arrived or left): the watcher resubscribes and gets the shards as they are now,
/// instead of silently missing the changes of SKUs that moved.
pub fn start(node: &Arc<Node>, range: SkuRange, options: WatchOptions, slot: WatchSlot) -> WatchStream {
    let (sender, receiver) = tokio::sync::mpsc::channel(WATCH_QUEUE_CHANGES_MAX);
    let shape = hosted_shape(node);
    let (reshaped_node, reshaped_sender) = (node.clone(), sender.clone());
    tokio::spawn(async move {
        // Like the forwarding tasks, it ends when the node closes: the stream ends once every
        // sender is gone, and a graceful shutdown waits for that.
        loop {
            tokio::select! {
                () = reshaped_node.closing() => return,
                () = reshaped_sender.closed() => return,
                () = tokio::time::sleep(RESHAPE_CHECK_INTERVAL) => {}
            }
            if hosted_shape(&reshaped_node) != shape {
                let status = Status::unavailable(
                    "this node's shards were reshaped (split, or a replica moved): watch again to \
                     follow the SKUs where they are now",
                );
                let _ = reshaped_sender.send(Err(status)).await;
                return;
            }
        }
    });
    for shard in node.shards() {
        // Subscribe before reading the current state so no change falls in between.
        let live = shard.view.subscribe();
        let sender = sender.clone();
        let range = range.clone();
        let node_for_task = node.clone();
        let shard = shard.clone();
        let quorum_silence_ms_max = node.config.raft.election_timeout_ms_max;
        tokio::spawn(async move {
            let in_touch = || in_touch_with_leader(&shard, quorum_silence_ms_max);
            tokio::select! {
                () = node_for_task.closing() => {}
                () = forward(&shard.view, options, live, range, sender, in_touch) => {}
            }
        });
    }
    let stream = futures::stream::unfold((receiver, slot), |(mut receiver, slot)| async move {
        receiver.recv().await.map(|item| (item, (receiver, slot)))
    });
    Box::pin(stream)
}

/// The data shards this node hosts, with their epochs.
fn hosted_shape(node: &Node) -> Vec<(crate::types::ShardId, u64)> {
    node.shards()
        .iter()
        .map(|shard| (shard.config.id, shard.epoch()))
        .collect()
}

/// Whether `shard`'s replica here may vouch for its applied index being recent: it knows a
/// leader, and if it is that leader, a quorum acknowledged it within `quorum_silence_ms_max`;
/// if another node leads, that leader's last append reached this replica within that time.
fn in_touch_with_leader(shard: &ShardReplica, quorum_silence_ms_max: u64) -> bool {
    let metrics = shard.raft.metrics();
    let metrics = metrics.borrow_watched();
    match metrics.current_leader {
        None => false,
        Some(leader) if leader == metrics.id => metrics.last_quorum_acked.as_ref().is_some_and(|acked| {
            use openraft::Instant as _;
            acked.elapsed() <= Duration::from_millis(quorum_silence_ms_max)
        }),
        // A follower knows a leader until it hears of another; with pre-vote one cut off from
        // the rest never raises its term, so it keeps naming its old leader: it vouches only
        // while that leader's appends still reach it.
        Some(_) => shard
            .leader_contact
            .elapsed()
            .is_some_and(|ago| ago <= Duration::from_millis(quorum_silence_ms_max)),
    }
}

/// One page of the current state: the SKUs in `range` after `after` that changed after
/// `from_index`, at most [`WATCH_PAGE_SKUS`]; and the last SKU looked at (`None`: done).
fn page(
    view: &ShardView,
    range: &SkuRange,
    after: Option<&[u8]>,
    from_index: u64,
) -> (Vec<pb::StockChange>, Option<Vec<u8>>) {
    view.read(|image| {
        let lower = match after {
            Some(sku) => Bound::Excluded(sku.to_vec()),
            None => Bound::Included(range.start.clone()),
        };
        let mut changes = Vec::new();
        let mut last = None;
        for (scanned, (sku, record)) in image.ledger.skus.range((lower, Bound::Unbounded)).enumerate() {
            if !range.contains(sku) {
                return (changes, None);
            }
            // Full, or long enough under the read lock (writes wait for it).
            if changes.len() == WATCH_PAGE_SKUS || scanned == WATCH_PAGE_SCAN_MAX {
                return (changes, last);
            }
            last = Some(sku.clone());
            if record.changed_at_index <= from_index {
                continue;
            }
            if let Some(counts) = image.ledger.stock(sku) {
                changes.push(pb::StockChange {
                    sku: sku.clone().into(),
                    counts: Some(convert::counts(counts)),
                    log_index: image.meta.applied.map(|id| id.index).unwrap_or(0),
                    shard_id: view.shard_id,
                    ..Default::default()
                });
            }
        }
        (changes, None)
    })
}

/// Why a watcher's stream stops: it went away, or it fell too far behind (told already).
struct Stopped;

type ChangeSender = tokio::sync::mpsc::Sender<Result<pb::StockChange, Status>>;

/// Sends the current state page by page, then every live change in range (with progress marks
/// if asked for), until the watcher goes away or lags.
async fn forward(
    view: &ShardView,
    options: WatchOptions,
    mut live: tokio::sync::broadcast::Receiver<crate::raft::state_store::StockChange>,
    range: SkuRange,
    sender: ChangeSender,
    in_touch: impl Fn() -> bool,
) {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let (changes, last) = page(view, &range, after.as_deref(), options.from_index);
        for change in changes {
            if sender.send(Ok(change)).await.is_err() {
                return;
            }
        }
        match last {
            Some(last) => after = Some(last),
            None => break,
        }
    }
    let Some(interval) = options.progress_interval else {
        while let Ok(change) = next_change(&mut live, &sender).await {
            if send_change(view, &range, change, &sender).await.is_err() {
                return;
            }
        }
        return;
    };
    loop {
        if in_touch() && send_progress(view, &mut live, &range, &sender).await.is_err() {
            return;
        }
        // Wake on the next change, or after the interval to say nothing changed.
        if let Ok(waited) = tokio::time::timeout(interval, next_change(&mut live, &sender)).await {
            let Ok(change) = waited else { return };
            if send_change(view, &range, change, &sender).await.is_err() {
                return;
            }
        }
    }
}

/// The next live change of the shard; a watcher that lagged past the shard's buffer is told to
/// resume, and its stream stops.
async fn next_change(
    live: &mut tokio::sync::broadcast::Receiver<crate::raft::state_store::StockChange>,
    sender: &ChangeSender,
) -> Result<crate::raft::state_store::StockChange, Stopped> {
    match live.recv().await {
        Ok(change) => Ok(change),
        Err(RecvError::Lagged(missed)) => Err(lagged(missed, sender).await),
        Err(RecvError::Closed) => Err(Stopped),
    }
}

async fn lagged(missed: u64, sender: &ChangeSender) -> Stopped {
    let status = Status::resource_exhausted(format!(
        "watcher fell {missed} changes behind; resume from the last log_index seen"
    ));
    let _ = sender.send(Err(status)).await;
    Stopped
}

/// Sends one live change if its SKU is in range.
async fn send_change(
    view: &ShardView,
    range: &SkuRange,
    change: crate::raft::state_store::StockChange,
    sender: &ChangeSender,
) -> Result<(), Stopped> {
    if !range.contains(&change.sku) {
        return Ok(());
    }
    let wire = pb::StockChange {
        sku: change.sku.into(),
        counts: Some(convert::counts(change.counts)),
        log_index: change.log_index,
        shard_id: view.shard_id,
        ..Default::default()
    };
    sender.send(Ok(wire)).await.map_err(|_| Stopped)
}

/// Reads the applied index, sends every change queued for this watcher (all those at or below
/// it are queued by then: see the module docs), then the mark.
async fn send_progress(
    view: &ShardView,
    live: &mut tokio::sync::broadcast::Receiver<crate::raft::state_store::StockChange>,
    range: &SkuRange,
    sender: &ChangeSender,
) -> Result<(), Stopped> {
    let (applied, log_time_ms) = view.read(|image| {
        let applied = image.meta.applied.map(|id| id.index).unwrap_or(0);
        (applied, image.ledger.clock_ms)
    });
    loop {
        match live.try_recv() {
            Ok(change) => send_change(view, range, change, sender).await?,
            Err(TryRecvError::Empty) => break,
            Err(TryRecvError::Lagged(missed)) => return Err(lagged(missed, sender).await),
            Err(TryRecvError::Closed) => return Err(Stopped),
        }
    }
    let mark = pb::StockChange {
        log_index: applied,
        shard_id: view.shard_id,
        progress: true,
        log_time_ms,
        ..Default::default()
    };
    sender.send(Ok(mark)).await.map_err(|_| Stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_node_and_per_connection_and_come_back() {
        let slots = Arc::new(WatchSlots::default());
        let a: SocketAddr = "10.0.0.1:4000".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:4001".parse().unwrap();
        let first = slots.take(Some(a), 3, 2).expect("first on a");
        let _second = slots.take(Some(a), 3, 2).expect("second on a");
        let refused = slots.take(Some(a), 3, 2).expect_err("a third on a");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        let _third = slots.take(Some(b), 3, 2).expect("another connection");
        let refused = slots.take(Some(b), 3, 2).expect_err("the node is full");
        assert!(refused.message().contains("watch_streams_max"), "{}", refused.message());
        drop(first);
        assert_eq!(slots.open(), 2);
        slots.take(Some(a), 3, 2).expect("a slot came back");
    }
}
