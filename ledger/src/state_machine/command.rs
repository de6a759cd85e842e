//! What the replicated log carries and what applying it answers.
//!
//! A [`LogCommand`] is one Raft entry: the leader's timestamp plus either a batch of client
//! operations or an expiry sweep. Every operation in a batch gets its own [`Outcome`]; business
//! rejections (`SoldOut`, `LimitExceeded`, ...) are outcomes, never errors, and are replicated
//! like any result so every replica answers the same.

use serde::Deserialize;
use serde::Serialize;

/// A SKU: an opaque byte string, ordered bytewise, at most [`crate::state_machine::limits::SKU_BYTES_MAX`] bytes.
pub type Sku = Vec<u8>;

/// Per-SKU sale rules. Zero means "no rule" for every field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaleRules {
    /// Sales open at this leader time (ms since the Unix epoch); 0 = always open.
    pub start_ms: u64,
    /// Sales close at this leader time; 0 = never.
    pub end_ms: u64,
    /// Units one user may hold reserved + sold; 0 = unlimited.
    pub per_user_limit: u64,
    /// Reservation TTL when a Reserve names none; 0 = the ledger default.
    pub default_ttl_ms: u64,
}

/// One client write. Every field has been validated by [`crate::state_machine::limits`]
/// before it is proposed; the state machine validates again (it never trusts the log's producer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    Reserve {
        sku: Sku,
        qty: u64,
        user: String,
        order_id: String,
        ttl_ms: u64,
    },
    Confirm {
        sku: Sku,
        order_id: String,
    },
    Cancel {
        sku: Sku,
        order_id: String,
    },
    Purchase {
        sku: Sku,
        qty: u64,
        user: String,
        order_id: String,
    },
    PutSku {
        sku: Sku,
        total: u64,
        rules: SaleRules,
    },
    Restock {
        sku: Sku,
        delta: i64,
    },
}

impl Operation {
    /// The SKU the operation routes by.
    pub fn sku(&self) -> &[u8] {
        match self {
            Operation::Reserve { sku, .. }
            | Operation::Confirm { sku, .. }
            | Operation::Cancel { sku, .. }
            | Operation::Purchase { sku, .. }
            | Operation::PutSku { sku, .. }
            | Operation::Restock { sku, .. } => sku,
        }
    }
}

/// What one Raft entry asks the state machine to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandBody {
    /// Client writes, applied in order; one outcome each.
    Batch(Vec<Operation>),
    /// Release every reservation whose `expires_at_ms <= timestamp_ms` (proposed by the leader).
    Expire,
    /// Every order event with a sequence number below `below_seq` is in every PostgreSQL shard,
    /// so replicas may forget them (proposed by the shipper, see `crate::shipping`). A mark at
    /// or below the current one changes nothing, so a stale or repeated proposal is harmless.
    Shipped {
        below_seq: u64,
        /// The node whose shipper made the progress; other replicas use it to decide who ships.
        shipper: u64,
    },
}

/// One entry of a shard's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCommand {
    /// The proposing leader's clock, in ms since the Unix epoch. The state machine never reads
    /// a clock: it uses `max(previous, timestamp_ms)` so time never runs backwards across leaders.
    pub timestamp_ms: u64,
    pub body: CommandBody,
}

impl std::fmt::Display for LogCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.body {
            CommandBody::Batch(ops) => write!(f, "batch({} ops @{})", ops.len(), self.timestamp_ms),
            CommandBody::Expire => write!(f, "expire(@{})", self.timestamp_ms),
            CommandBody::Shipped { below_seq, shipper } => {
                write!(f, "shipped(<{below_seq} by {shipper} @{})", self.timestamp_ms)
            }
        }
    }
}

/// The answer to one operation. Replayed verbatim when an `order_id` is repeated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Reserved {
        expires_at_ms: u64,
    },
    Confirmed,
    Released,
    Ok,
    /// Fewer units are available than asked for. Unlike every other answer this one is not
    /// recorded: the order id stays unused (see `LedgerState::take`).
    SoldOut {
        available: u64,
    },
    LimitExceeded {
        held: u64,
        limit: u64,
    },
    SaleClosed,
    UnknownSku,
    NotFound,
    Expired,
    /// The order was already confirmed (answer to Cancel).
    AlreadyConfirmed,
    /// The `order_id` is already used by a different SKU, quantity or user.
    OrderIdReused,
    /// A well-formed request the ledger refuses (restock below what is held, ...).
    Rejected {
        reason: String,
    },
}

/// What applying one entry answers: one outcome per operation (none for `Expire`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReply {
    pub outcomes: Vec<Outcome>,
}
