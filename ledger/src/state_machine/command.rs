//! What the replicated log carries and what applying it answers.
//!
//! A [`LogCommand`] is one Raft entry: the leader's timestamp plus either a batch of client
//! operations or an expiry sweep. Every operation in a batch gets its own [`Outcome`]; business
//! rejections (`SoldOut`, `LimitExceeded`, ...) are outcomes, never errors, and are replicated
//! like any result so every replica answers the same.

use serde::Deserialize;
use serde::Serialize;

use crate::state_machine::keys::HashKey;

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
    /// Rate limits of this SKU's reserves and purchases per buyer and per client, in place of the
    /// cluster's (`crate::admission::rate`). The state machine only keeps them: they are decided
    /// before proposing, by the node that receives the request, from the rules it has applied.
    pub buyer_rate: RateOverride,
    pub client_rate: RateOverride,
}

/// A SKU's own rate limit: `ops_per_s` operations per second, up to `burst_ops` at once (0: one
/// second's worth). `ops_per_s == 0` means none: the cluster's limit applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RateOverride {
    pub ops_per_s: u64,
    pub burst_ops: u64,
}

impl RateOverride {
    pub fn is_set(&self) -> bool {
        self.ops_per_s != 0
    }
}

/// One client write. Writes keyed by an order id carry `first_attempt_ms`: the client's clock
/// (ms since the Unix epoch) when it first sent this write, reused on every retry; the state
/// machine refuses one older than the idempotency window (`Outcome::RequestTooOld`) instead of
/// deciding it afresh, because the order it repeats may have been pruned. Every field has been validated by [`crate::state_machine::limits`]
/// before it is proposed; the state machine validates again (it never trusts the log's producer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operation {
    Reserve {
        sku: Sku,
        qty: u64,
        user: String,
        order_id: String,
        ttl_ms: u64,
        first_attempt_ms: u64,
    },
    Confirm {
        sku: Sku,
        order_id: String,
        first_attempt_ms: u64,
    },
    Cancel {
        sku: Sku,
        order_id: String,
        first_attempt_ms: u64,
    },
    Purchase {
        sku: Sku,
        qty: u64,
        user: String,
        order_id: String,
        first_attempt_ms: u64,
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

    /// When the client first sent this write; `None` for writes not keyed by an order id.
    pub fn first_attempt_ms(&self) -> Option<u64> {
        match self {
            Operation::Reserve { first_attempt_ms, .. }
            | Operation::Confirm { first_attempt_ms, .. }
            | Operation::Cancel { first_attempt_ms, .. }
            | Operation::Purchase { first_attempt_ms, .. } => Some(*first_attempt_ms),
            Operation::PutSku { .. } | Operation::Restock { .. } => None,
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
    /// The shard's settings, proposed by a leader whose config differs from the applied ones
    /// (and before its first write, to choose the hash key). The hash key is taken only while
    /// the shard has none: it is chosen once and never changes.
    Configure(LedgerSettings),
    /// A change of the shard map; only shard 0 (the meta group) carries these, and a data
    /// shard's ledger ignores one (`crate::meta::map`).
    Meta(crate::meta::map::MetaCommand),
    /// Splits a data shard at `at`: from this entry on the shard keeps the SKUs below `at`, and
    /// `new_shard`, a new Raft group on the same replicas, starts from everything at or above
    /// it (`LedgerState::split_off`; the node writes that half as the new group's first
    /// snapshot, `crate::raft::state_store`). Proposed by the meta leader carrying out a
    /// `Split` step; proposed again for a `new_shard` already split off, it changes nothing.
    Split { at: Sku, new_shard: crate::types::ShardId },
    /// First half of a merge, in the right shard's log: from this entry on the shard applies
    /// nothing (every operation is refused as sent to the wrong shard) so that its state, now
    /// final, can be carried into `into`, the shard just left of it. Proposed again for the
    /// same `into`, it changes nothing.
    Freeze { into: crate::types::ShardId },
    /// Undoes a `Freeze` for `into` (the merge was refused by the left shard's log, so the
    /// right shard serves again); for a shard not frozen for `into`, it changes nothing.
    Thaw { into: crate::types::ShardId },
    /// Second half of a merge, in the left shard's log: the frozen state of shard `right`
    /// (`state`: a bincode-encoded `FrozenLedger`, read by the proposing leader from its own
    /// replica of `right`) joins this shard (`LedgerState::absorb`), whose range then ends
    /// where `right`'s did (`right_end`; empty: unbounded). Carrying the state in the entry
    /// makes applying it a function of the log alone: every replica merges the same bytes, and
    /// a replica that never ran `right` merges too. Proposed again for a `right` already
    /// merged, it changes nothing.
    Merge {
        right: crate::types::ShardId,
        right_start: Sku,
        right_end: Sku,
        state: Vec<u8>,
    },
}

/// Settings every replica of a shard must apply identically, so they travel through the log
/// instead of being read from each node's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerSettings {
    /// Key of the hashes that stand for order ids and users (`state_machine::keys`).
    pub hash_key: HashKey,
    /// How long an order id answers its first answer (`ledger.idempotency_window_ms`).
    pub idempotency_window_ms: u64,
    /// How far a client's clock may be off the leaders' (`ledger.clock_skew_margin_ms`): a
    /// write is refused once `first_attempt_ms + window - margin` has passed, and a
    /// `first_attempt_ms` more than the margin ahead of the log's time is refused outright.
    pub clock_skew_margin_ms: u64,
    /// Whether confirmed orders are kept as events for a shipper (PostgreSQL configured).
    pub keep_order_events: bool,
}

impl Default for LedgerSettings {
    fn default() -> Self {
        LedgerSettings {
            hash_key: HashKey::default(),
            idempotency_window_ms: crate::state_machine::limits::IDEMPOTENCY_WINDOW_MS_DEFAULT,
            clock_skew_margin_ms: crate::state_machine::limits::CLOCK_SKEW_MARGIN_MS_DEFAULT,
            keep_order_events: true,
        }
    }
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
            CommandBody::Configure(settings) => write!(
                f,
                "configure(window {} ms, margin {} ms, events {} @{})",
                settings.idempotency_window_ms,
                settings.clock_skew_margin_ms,
                settings.keep_order_events,
                self.timestamp_ms
            ),
            CommandBody::Meta(command) => write!(f, "meta({command:?} @{})", self.timestamp_ms),
            CommandBody::Split { at, new_shard } => write!(
                f,
                "split(at {:?} into shard {new_shard} @{})",
                String::from_utf8_lossy(at),
                self.timestamp_ms
            ),
            CommandBody::Freeze { into } => write!(f, "freeze(for shard {into} @{})", self.timestamp_ms),
            CommandBody::Thaw { into } => write!(f, "thaw(from shard {into} @{})", self.timestamp_ms),
            CommandBody::Merge { right, state, .. } => {
                write!(f, "merge(shard {right}, {} bytes @{})", state.len(), self.timestamp_ms)
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
    /// The write's first attempt is older than the idempotency window: the order it may repeat
    /// could have been forgotten, so it is not decided afresh (a retry never buys twice).
    /// Nothing changed.
    RequestTooOld,
    /// The operation's SKU left this shard (a split applied before it): nothing changed, and
    /// the node answers the request as routed by a stale epoch, so the caller refreshes its
    /// map and retries at the shard that owns the SKU now. Never reaches a client as an outcome.
    WrongShard {
        epoch: u64,
    },
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
