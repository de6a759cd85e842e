//! The domain values the client API takes and returns: outcomes, stock counts, write
//! operations, sale rules. No protobuf here; [`crate::convert`] is the only bridge to the wire.

use std::time::Duration;

/// The ledger's answer to one write. Business rejections are values, not errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Units are held for the order until `expires_at_ms` (leader time, ms since the Unix epoch).
    Reserved {
        /// When the reservation lapses unless confirmed.
        expires_at_ms: i64,
    },
    /// The order's reserved units are sold.
    Confirmed,
    /// The order's reserved units went back to available.
    Released,
    /// An admin write (put, restock) was applied.
    Ok,
    /// Fewer units are available than asked for.
    SoldOut {
        /// Units still available.
        available: i64,
    },
    /// The user would hold more than the per-user limit.
    LimitExceeded {
        /// Units the user holds (reserved + sold).
        held: i64,
        /// The SKU's per-user limit.
        limit: i64,
    },
    /// The sale window is not open.
    SaleClosed,
    /// No such SKU.
    UnknownSku,
    /// No reservation with that order id.
    NotFound,
    /// The reservation lapsed before the confirm.
    Expired,
    /// The order was already confirmed (a cancel came too late).
    AlreadyConfirmed,
    /// The write's first attempt is older than the ledger's idempotency window: it was not
    /// decided (the order it repeats may be forgotten, so deciding afresh could buy twice) and
    /// nothing changed. Look the order up elsewhere (the shipped orders in PostgreSQL).
    RequestTooOld,
    /// The order id was used before for a different request.
    OrderIdReused {
        /// The ledger's explanation.
        detail: String,
    },
    /// The ledger refused the write for another business reason.
    Rejected {
        /// The ledger's explanation.
        detail: String,
    },
    /// The client or the buyer is over its rate limit (the cluster's, or the SKU's): the write
    /// was not decided and nothing changed. It may be sent again after `retry_after_ms`.
    RateLimited {
        /// When the limit lets it through, in ms from the answer.
        retry_after_ms: i64,
    },
}

/// How much a call matters when a node is overloaded: under load a node sheds BACKGROUND
/// first, then STANDARD; PREMIUM may use its whole budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// High-value buyers: admitted while the node has any room.
    Premium,
    /// Ordinary writes and checkout reads.
    #[default]
    Standard,
    /// Product-page reads and other work that may wait: shed first.
    Background,
}

/// A SKU's own rate limit: `ops_per_s` reserves and purchases per second, up to `burst_ops` at
/// once (`None`: one second's worth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub ops_per_s: i64,
    pub burst_ops: Option<i64>,
}

/// Optional per-SKU sale rules. `None` means "no rule" (the wire's 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaleRules {
    /// Sale opens at this time (ms since the Unix epoch).
    pub start_ms: Option<i64>,
    /// Sale closes at this time (ms since the Unix epoch).
    pub end_ms: Option<i64>,
    /// Units one user may hold, reserved + sold.
    pub per_user_limit: Option<i64>,
    /// Reservation TTL when a reserve names none; `None` is the cluster default.
    pub default_ttl: Option<Duration>,
    /// This SKU's rate limit per buyer (`user`), in place of the cluster's; `None` keeps it.
    pub buyer_rate: Option<RateLimit>,
    /// This SKU's rate limit per client, in place of the cluster's; `None` keeps it.
    pub client_rate: Option<RateLimit>,
}

/// One write, for [`crate::Client::batch`]. Each variant carries the SKU that routes it.
///
/// Writes keyed by an `order_id` carry `first_attempt_ms`: when this write was first sent (ms
/// since the Unix epoch). Leave it 0 and the library stamps the current time when the call
/// starts and sends the same stamp on each of its own retries. A caller that retries an order
/// itself, in a later call (after a crash, from a queue), passes the stamp of the first call:
/// the ledger answers a repeat with the first answer within its idempotency window (default
/// 24 h) and with [`Outcome::RequestTooOld`] after it, so a retry never buys twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Hold `qty` units for `order_id` until the TTL (or the SKU's default) lapses.
    Reserve {
        sku: Vec<u8>,
        qty: i64,
        user: String,
        order_id: String,
        ttl: Option<Duration>,
        first_attempt_ms: i64,
    },
    /// Turn the reservation `order_id` into a sale.
    Confirm {
        sku: Vec<u8>,
        order_id: String,
        first_attempt_ms: i64,
    },
    /// Release the reservation `order_id`.
    Cancel {
        sku: Vec<u8>,
        order_id: String,
        first_attempt_ms: i64,
    },
    /// Reserve and confirm in one step.
    Purchase {
        sku: Vec<u8>,
        qty: i64,
        user: String,
        order_id: String,
        first_attempt_ms: i64,
    },
    /// Admin: create or reset a SKU with `total` units on sale.
    PutSku { sku: Vec<u8>, total: i64, rules: SaleRules },
    /// Admin: grow (positive) or shrink (negative) a SKU's total.
    Restock { sku: Vec<u8>, delta: i64 },
}

impl WriteOp {
    /// The SKU this operation routes by.
    pub fn sku(&self) -> &[u8] {
        match self {
            WriteOp::Reserve { sku, .. }
            | WriteOp::Confirm { sku, .. }
            | WriteOp::Cancel { sku, .. }
            | WriteOp::Purchase { sku, .. }
            | WriteOp::PutSku { sku, .. }
            | WriteOp::Restock { sku, .. } => sku,
        }
    }

    /// Sets `first_attempt_ms` to `now_ms` where it is 0 (see [`WriteOp`]).
    pub(crate) fn stamp_first_attempt(&mut self, now_ms: i64) {
        match self {
            WriteOp::Reserve { first_attempt_ms, .. }
            | WriteOp::Confirm { first_attempt_ms, .. }
            | WriteOp::Cancel { first_attempt_ms, .. }
            | WriteOp::Purchase { first_attempt_ms, .. } => {
                if *first_attempt_ms == 0 {
                    *first_attempt_ms = now_ms;
                }
            }
            WriteOp::PutSku { .. } | WriteOp::Restock { .. } => {}
        }
    }
}

/// How fresh a stock read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read was sent (served by the leader).
    Linearizable,
    /// Served by any replica whose applied state lags its log by at most `max_lag_entries`.
    Stale {
        /// How many log entries the serving replica may be behind.
        max_lag_entries: u64,
    },
}

/// A SKU's counts: `available + reserved + sold == total`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stock {
    pub sku: Vec<u8>,
    pub total: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    /// The applied log index (of the SKU's shard) these counts reflect.
    pub log_index: u64,
    /// The node id that served the read.
    pub served_by: u64,
}

/// One change from [`crate::Client::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockChange {
    pub sku: Vec<u8>,
    pub total: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
    /// The log index of the entry that made this change (or, for the current state sent when
    /// a watch opens, the index the counts were read at).
    pub log_index: u64,
    /// The shard whose log `log_index` counts in (0 from nodes that predate the field).
    pub shard_id: u64,
}

/// A progress mark of a watch asked for with progress (see [`crate::Client::watch_events`]):
/// every change in the watched range applied at or below `log_index` has been streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchProgress {
    pub shard_id: u64,
    /// The shard's applied index on the streaming node.
    pub log_index: u64,
    /// The leader's time stamped on the entry at `log_index` (ms since the Unix epoch).
    pub log_time_ms: u64,
}

/// One message of [`crate::Client::watch_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Change(StockChange),
    Progress(WatchProgress),
}
