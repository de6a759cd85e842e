//! The `Watch` stream: the current counts of a SKU range, then every committed change in it.
//!
//! Bounded per watcher and per node, whatever the client does: the current state is read and
//! sent a page of `WATCH_PAGE_SKUS` at a time (a watcher that never reads holds one page and its
//! queue, not a copy of every SKU), at most `WATCH_QUEUE_CHANGES_MAX` changes wait for a slow
//! reader before its stream is closed, and at most `server.watch_streams_max` streams are open
//! on the node and `server.watch_streams_per_connection_max` on one connection (more answer
//! RESOURCE_EXHAUSTED at once).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::ops::Bound;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::PoisonError;

use flashledger_proto::v1 as pb;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::Status;

use crate::node::Node;
use crate::raft::state_store::ShardView;
use crate::server::convert;

/// How many stock changes a Watch stream may queue for a slow reader before it is closed.
pub const WATCH_QUEUE_CHANGES_MAX: usize = 1024;

/// How many SKUs of the current state one read of a shard copies for a watcher.
pub const WATCH_PAGE_SKUS: usize = 256;

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

/// Starts a watch of `range` on every shard of `node` for changes after `from_index`; the
/// stream holds `slot` until it ends.
pub fn start(node: &Arc<Node>, range: SkuRange, from_index: u64, slot: WatchSlot) -> WatchStream {
    let (sender, receiver) = tokio::sync::mpsc::channel(WATCH_QUEUE_CHANGES_MAX);
    for shard in node.shards.values() {
        // Subscribe before reading the current state so no change falls in between.
        let live = shard.view.subscribe();
        let sender = sender.clone();
        let range = range.clone();
        let node_for_task = node.clone();
        let shard = shard.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = node_for_task.closing() => {}
                () = forward(&shard.view, from_index, live, range, sender) => {}
            }
        });
    }
    let stream = futures::stream::unfold((receiver, slot), |(mut receiver, slot)| async move {
        receiver.recv().await.map(|item| (item, (receiver, slot)))
    });
    Box::pin(stream)
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
                });
            }
        }
        (changes, None)
    })
}

/// Sends the current state page by page, then every live change in range, until the watcher
/// goes away or lags.
async fn forward(
    view: &ShardView,
    from_index: u64,
    mut live: tokio::sync::broadcast::Receiver<crate::raft::state_store::StockChange>,
    range: SkuRange,
    sender: tokio::sync::mpsc::Sender<Result<pb::StockChange, Status>>,
) {
    let mut after: Option<Vec<u8>> = None;
    loop {
        let (changes, last) = page(view, &range, after.as_deref(), from_index);
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
    loop {
        let change = match live.recv().await {
            Ok(change) => change,
            Err(RecvError::Lagged(missed)) => {
                let status = Status::resource_exhausted(format!(
                    "watcher fell {missed} changes behind; resume from the last log_index seen"
                ));
                let _ = sender.send(Err(status)).await;
                return;
            }
            Err(RecvError::Closed) => return,
        };
        if !range.contains(&change.sku) {
            continue;
        }
        let wire = pb::StockChange {
            sku: change.sku.into(),
            counts: Some(convert::counts(change.counts)),
            log_index: change.log_index,
        };
        if sender.send(Ok(wire)).await.is_err() {
            return;
        }
    }
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
