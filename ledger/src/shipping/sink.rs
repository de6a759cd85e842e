//! [`ShippingSink`]: where shipped orders land, behind a trait so the simulator and unit tests
//! can plug in the [`RecordingSink`] instead of PostgreSQL.
//!
//! The contract every sink keeps (PostgreSQL does it with one transaction): `commit` writes the
//! rows and moves the watermark of (ledger shard, Postgres shard) from `expected` to `new`
//! atomically, and only if the watermark still equals `expected`; otherwise it writes nothing
//! and answers [`CommitOutcome::WatermarkMoved`]. That compare-and-set is what makes replays and
//! concurrent shippers harmless.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use crate::types::ShardId;

/// One confirmed order as shipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippedOrder {
    pub order_id: String,
    pub sku: Vec<u8>,
    pub qty: u64,
    pub user: String,
    pub ledger_shard: ShardId,
    /// The Raft log index of the entry that confirmed it.
    pub log_index: u64,
    /// Its sequence number among the ledger shard's order events.
    pub event_seq: u64,
    /// Leader time of the confirming entry, ms since the Unix epoch.
    pub confirmed_at_ms: u64,
}

/// How far one (ledger shard, Postgres shard) pair has been shipped.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Watermark {
    /// Every event with a smaller sequence number that hashes to this Postgres shard is in it.
    pub next_seq: u64,
    /// The log index of event `next_seq - 1` (0 before the first): the last shipped index.
    pub last_index: u64,
    /// The order id of event `next_seq - 1`: with `last_index`, it lets a shipper check that
    /// the watermark belongs to this ledger's history and not to another cluster's.
    pub last_order_id: String,
}

/// What a conditional commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    /// Another shipper moved the watermark first; nothing was written.
    WatermarkMoved {
        current: Watermark,
    },
}

/// The machine failed (connection, timeout, SQL error). Always retried with backoff.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    #[error("postgres shard {shard}: {message}")]
    Unavailable { shard: usize, message: String },
    #[error("postgres shard {shard} is misconfigured: {message}")]
    Misconfigured { shard: usize, message: String },
}

/// A sharded destination for shipped orders.
pub trait ShippingSink: Send + Sync + 'static {
    /// How many shards orders are spread over (fixed for the sink's life).
    fn shard_count(&self) -> usize;

    /// The current watermark (the zero watermark when none was ever written).
    fn watermark(
        &self,
        postgres_shard: usize,
        ledger_shard: ShardId,
    ) -> impl Future<Output = Result<Watermark, SinkError>> + Send;

    /// Atomically inserts `orders` and moves the watermark `expected -> new`, if it still is
    /// `expected`.
    fn commit(
        &self,
        postgres_shard: usize,
        ledger_shard: ShardId,
        expected: Watermark,
        new: Watermark,
        orders: &[ShippedOrder],
    ) -> impl Future<Output = Result<CommitOutcome, SinkError>> + Send;
}

/// An in-memory sink that records everything, with the same compare-and-set contract; it can
/// be switched to fail like a Postgres that is down.
#[derive(Debug)]
pub struct RecordingSink {
    shard_count: usize,
    inner: Mutex<Recorded>,
}

/// What a [`RecordingSink`] holds.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    /// Per Postgres shard, every order ever committed in commit order (duplicates included, so
    /// tests can see them), except an order already recorded with the same fields: skipped as
    /// Postgres skips it (`crate::shipping::postgres`), into `skipped`.
    pub orders: BTreeMap<usize, Vec<ShippedOrder>>,
    /// Orders a commit carried that were already recorded, the same order (a split handed its
    /// unshipped event to the new shard after it shipped from the old one).
    pub skipped: Vec<ShippedOrder>,
    pub watermarks: BTreeMap<(usize, ShardId), Watermark>,
    pub down: bool,
}

impl RecordingSink {
    pub fn new(shard_count: usize) -> Self {
        RecordingSink {
            shard_count,
            inner: Mutex::default(),
        }
    }

    pub fn recorded(&self) -> Recorded {
        self.lock().clone()
    }

    /// While down, every call fails as if Postgres were unreachable.
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_up(recorded: &Recorded, shard: usize) -> Result<(), SinkError> {
        if recorded.down {
            return Err(SinkError::Unavailable {
                shard,
                message: "recording sink is down".into(),
            });
        }
        Ok(())
    }
}

impl ShippingSink for RecordingSink {
    fn shard_count(&self) -> usize {
        self.shard_count
    }

    async fn watermark(&self, postgres_shard: usize, ledger_shard: ShardId) -> Result<Watermark, SinkError> {
        let recorded = self.lock();
        Self::check_up(&recorded, postgres_shard)?;
        Ok(recorded
            .watermarks
            .get(&(postgres_shard, ledger_shard))
            .cloned()
            .unwrap_or_default())
    }

    async fn commit(
        &self,
        postgres_shard: usize,
        ledger_shard: ShardId,
        expected: Watermark,
        new: Watermark,
        orders: &[ShippedOrder],
    ) -> Result<CommitOutcome, SinkError> {
        let mut recorded = self.lock();
        Self::check_up(&recorded, postgres_shard)?;
        let current = recorded
            .watermarks
            .get(&(postgres_shard, ledger_shard))
            .cloned()
            .unwrap_or_default();
        if current != expected {
            return Ok(CommitOutcome::WatermarkMoved { current });
        }
        let kept = recorded
            .orders
            .get(&postgres_shard)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut skipped = Vec::new();
        for order in orders {
            if let Some(first) = kept.iter().find(|kept| kept.order_id == order.order_id) {
                if (&first.sku, first.qty, &first.user) != (&order.sku, order.qty, &order.user) {
                    return Err(SinkError::Misconfigured {
                        shard: postgres_shard,
                        message: format!("order {:?} is already recorded as another order", order.order_id),
                    });
                }
                skipped.push(order.clone());
            }
        }
        recorded.watermarks.insert((postgres_shard, ledger_shard), new);
        let fresh: Vec<ShippedOrder> = orders
            .iter()
            .filter(|order| !skipped.iter().any(|s| s.order_id == order.order_id))
            .cloned()
            .collect();
        recorded.orders.entry(postgres_shard).or_default().extend(fresh);
        recorded.skipped.extend(skipped);
        Ok(CommitOutcome::Committed)
    }
}
