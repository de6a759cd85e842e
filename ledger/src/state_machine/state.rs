//! [`LedgerState`]: every SKU's stock, the orders still inside the idempotency window, and the
//! rules that move units between `available`, `reserved` and `sold`.
//!
//! Invariant, checked after every applied entry for every SKU it touched:
//! `available + reserved + sold == total`, all three non-negative (they are unsigned; every
//! subtraction is checked). A violation is returned as [`InvariantViolation`]; the caller must
//! stop applying, because continuing from a broken ledger could oversell.
//!
//! Bounded by the idempotency window: an order is kept (as a fixed 56-byte record, see
//! [`OrderBook`]) until it is older than `idempotency_window_ms` by log time, no longer holds
//! units, and its order event (if any) was shipped; then applying an entry prunes it
//! ([`LedgerState::prune`]), identically on every replica. A write whose first attempt is older
//! than the window (less the clock-skew margin) is answered `RequestTooOld` unless its order is
//! still kept, so a retry is never decided afresh after its order was pruned:
//!
//! - an order is created at log time `c` only if its `first_attempt_ms <= c + margin`;
//! - it is pruned at a log time `t >= c + window`;
//! - a repeat is refused once `first_attempt_ms + window - margin <= t`, which then holds.
//!
//! The state is deterministic down to its bytes: no random hash keys (ids are hashed with the
//! key the log chose), records in log order, holders encoded sorted; two replicas at the same
//! applied index encode the same snapshot.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Deserializer;
use serde::Serialize;
use serde::Serializer;

use crate::state_machine::command::CommandBody;
use crate::state_machine::command::LedgerSettings;
use crate::state_machine::command::LogCommand;
use crate::state_machine::command::Operation;
use crate::state_machine::command::Outcome;
use crate::state_machine::command::SaleRules;
use crate::state_machine::command::Sku;
use crate::state_machine::holders::Holder;
use crate::state_machine::holders::Holders;
use crate::state_machine::keys::UserKey;
use crate::state_machine::limits;
pub use crate::state_machine::orders::FirstAnswer;
use crate::state_machine::orders::FrozenOrders;
use crate::state_machine::orders::OrderBook;
pub use crate::state_machine::orders::OrderKind;
pub use crate::state_machine::orders::OrderRecord;
pub use crate::state_machine::orders::OrderState;
use crate::state_machine::orders::SEQ_MAX;
pub use crate::state_machine::orders::SkuId;

/// Most chunks of orders one entry prunes, so that no entry pays for a large backlog at once
/// (4 x 4096 orders per entry is far more than any entry creates).
const PRUNE_CHUNKS_PER_ENTRY_MAX: usize = 4;
/// Batches try to prune once per this much log time (see `prune_due`).
pub const PRUNE_INTERVAL_MS: u64 = 1_000;
/// Most orders of a chunk past the window that may not go yet and are carried forward so the
/// chunk can (a quarter of a chunk).
pub const STRAGGLERS_PER_CHUNK_MAX: usize = crate::state_machine::orders::CHUNK_RECORDS / 4;

/// One SKU's counts and rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuRecord {
    /// Its number in [`LedgerState::sku_names`]; order records name SKUs by it.
    pub id: SkuId,
    pub total: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
    pub rules: SaleRules,
    /// The log index that last changed this SKU (Watch resumes from it).
    pub changed_at_index: u64,
    /// Bumped whenever the per-user limit is switched on or off: holders are counted from the
    /// moment a limit is set, and a reservation taken under an earlier limit does not touch them.
    pub limit_epoch: u32,
}

impl SkuRecord {
    fn holds_invariant(&self) -> bool {
        self.available
            .checked_add(self.reserved)
            .and_then(|sum| sum.checked_add(self.sold))
            == Some(self.total)
    }
}

/// A live reservation, by (expiry, order sequence number): what expiry releases, and whose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub user: UserKey,
    /// The buyer's name, for the order event a confirmation emits; kept only while order events
    /// are (a sink is configured), else empty. Bounded: only live reservations have one.
    pub user_name: String,
    /// The SKU's `limit_epoch` when the reservation counted towards a holder; `u32::MAX` when
    /// the SKU had no per-user limit.
    pub limit_epoch: u32,
}

/// A confirmed order, kept until it has been shipped to PostgreSQL (only while a sink is
/// configured: `LedgerSettings::keep_order_events`). Full strings: the only place they are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEvent {
    pub order_id: String,
    pub sku: Sku,
    pub qty: u64,
    pub user: String,
    pub log_index: u64,
    pub confirmed_at_ms: u64,
}

/// The ledger broke its invariant: a bug, never a state to continue from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ledger invariant violated at log index {log_index} for sku {sku:?}: {detail}")]
pub struct InvariantViolation {
    pub log_index: u64,
    pub sku: Sku,
    pub detail: String,
}

/// What one applied entry changed: the SKUs whose counts moved (checked against the invariant
/// after the entry, and streamed to Watch subscribers).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub skus: BTreeSet<Sku>,
}

impl Changes {
    pub fn merge(&mut self, other: Changes) {
        self.skus.extend(other.skus);
    }

    /// Notes that `sku` moved; copies the SKU only the first time (a batch is mostly one SKU).
    fn touch(&mut self, sku: &[u8]) {
        if !self.skus.contains(sku) {
            self.skus.insert(sku.to_vec());
        }
    }
}

/// The whole applied state of one shard. Encoded (snapshots) as its [`FrozenLedger`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerState {
    pub settings: LedgerSettings,
    pub skus: BTreeMap<Sku, SkuRecord>,
    /// SKU names by [`SkuId`]; a SKU keeps its number for good.
    pub sku_names: Vec<Sku>,
    /// The orders inside the idempotency window (and older ones still holding units or unshipped).
    pub orders: OrderBook,
    /// Per SKU with a per-user limit, what each buyer holds; no entry for SKUs without one.
    pub holdings: BTreeMap<SkuId, Holders>,
    /// Live reservations by (expiry, order sequence number).
    pub reservations: BTreeMap<(u64, u64), Reservation>,
    /// Confirmed orders not yet shipped, by sequence number, within `shipped_below_seq..next_event_seq`:
    /// every number of that range, except in the lower half of a split shard, which keeps the
    /// numbers its shipper's watermarks use and has none for the events that went to the other
    /// half (`state_machine::split`).
    pub order_events: BTreeMap<u64, OrderEvent>,
    pub next_event_seq: u64,
    /// Every event below this sequence number is in PostgreSQL (or was dropped when shipping was
    /// switched off) and has been pruned.
    pub shipped_below_seq: u64,
    /// The node whose shipper last advanced `shipped_below_seq` (0 = none yet).
    pub shipped_by: u64,
    /// Leader time as of the last applied entry; never decreases.
    pub clock_ms: u64,
}

/// A [`LedgerState`] as encoded: the orders without their index, holders sorted. Taking one
/// shares the order chunks (O(chunks)) and copies the rest, which is small or bounded (SKUs,
/// holders of limited SKUs, live reservations, unshipped events): a snapshot takes it under the
/// state lock and encodes it on its own thread.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrozenLedger {
    pub settings: LedgerSettings,
    pub skus: BTreeMap<Sku, SkuRecord>,
    pub sku_names: Vec<Sku>,
    pub orders: FrozenOrders,
    pub holdings: Vec<(SkuId, Vec<Holder>)>,
    pub reservations: BTreeMap<(u64, u64), Reservation>,
    pub order_events: BTreeMap<u64, OrderEvent>,
    pub next_event_seq: u64,
    pub shipped_below_seq: u64,
    pub shipped_by: u64,
    pub clock_ms: u64,
}

impl Serialize for LedgerState {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.frozen().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for LedgerState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let frozen = FrozenLedger::deserialize(deserializer)?;
        LedgerState::from_frozen(frozen).map_err(serde::de::Error::custom)
    }
}

/// Counts of one SKU as a read answers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StockCounts {
    pub total: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
}

impl LedgerState {
    /// The encodable form, sharing the order chunks (see [`FrozenLedger`]).
    pub fn frozen(&self) -> FrozenLedger {
        FrozenLedger {
            settings: self.settings,
            skus: self.skus.clone(),
            sku_names: self.sku_names.clone(),
            orders: self.orders.frozen(),
            holdings: self
                .holdings
                .iter()
                .map(|(sku, holders)| (*sku, holders.sorted()))
                .collect(),
            reservations: self.reservations.clone(),
            order_events: self.order_events.clone(),
            next_event_seq: self.next_event_seq,
            shipped_below_seq: self.shipped_below_seq,
            shipped_by: self.shipped_by,
            clock_ms: self.clock_ms,
        }
    }

    /// The state a [`FrozenLedger`] encodes; refuses one whose parts do not fit together, or
    /// with a SKU that breaks the invariant (a replica never starts from a broken ledger).
    pub fn from_frozen(frozen: FrozenLedger) -> Result<LedgerState, String> {
        for (sku, record) in &frozen.skus {
            if frozen.sku_names.get(record.id.0 as usize) != Some(sku) {
                return Err(format!("sku {sku:?} has number {} that names another", record.id.0));
            }
            if !record.holds_invariant() {
                return Err(violation(0, sku, record).detail);
            }
        }
        if frozen.sku_names.len() != frozen.skus.len() {
            return Err("sku numbers and sku records disagree".into());
        }
        if frozen.next_event_seq > SEQ_MAX || frozen.orders.first_seq > SEQ_MAX {
            return Err(format!("a sequence number is past {SEQ_MAX}"));
        }
        let most_held = frozen
            .holdings
            .iter()
            .flat_map(|(_, holders)| holders)
            .map(|holder| holder.units)
            .max();
        if let Some(units) = most_held.filter(|units| *units > limits::TOTAL_MAX) {
            return Err(format!("a holder holds {units} units, more than any sku may have"));
        }
        let orders = OrderBook::from_frozen(frozen.orders)?;
        check_reservations(&frozen.reservations, &orders)?;
        Ok(LedgerState {
            settings: frozen.settings,
            skus: frozen.skus,
            sku_names: frozen.sku_names,
            orders,
            holdings: frozen
                .holdings
                .iter()
                .map(|(sku, holders)| Ok((*sku, Holders::from_sorted(holders)?)))
                .collect::<Result<_, String>>()?,
            reservations: frozen.reservations,
            order_events: frozen.order_events,
            next_event_seq: frozen.next_event_seq,
            shipped_below_seq: frozen.shipped_below_seq,
            shipped_by: frozen.shipped_by,
            clock_ms: frozen.clock_ms,
        })
    }

    /// Records that grow with the orders taken: orders, holders, unshipped order events. What a
    /// snapshot's size (and so its cost) is proportional to.
    pub fn records(&self) -> u64 {
        let holders: usize = self.holdings.values().map(Holders::len).sum();
        (self.orders.len() + holders + self.order_events.len()) as u64
    }

    pub fn stock(&self, sku: &[u8]) -> Option<StockCounts> {
        self.skus.get(sku).map(|r| StockCounts {
            total: r.total,
            available: r.available,
            reserved: r.reserved,
            sold: r.sold,
        })
    }

    /// The retained order with id `order_id`, if any.
    pub fn order(&self, order_id: &str) -> Option<&OrderRecord> {
        let key = self.settings.hash_key.order(order_id);
        self.orders.find(key).map(|seq| self.orders.get(seq))
    }

    /// The name of SKU number `id`.
    pub fn sku_name(&self, id: SkuId) -> Option<&Sku> {
        self.sku_names.get(id.0 as usize)
    }

    /// The earliest live reservation expiry, so the leader knows when to propose `Expire`.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.reservations.first_key_value().map(|((at, _), _)| *at)
    }

    /// Checks every SKU; used by status and tests (apply checks only what it touched).
    pub fn check_all(&self) -> Result<(), InvariantViolation> {
        for (sku, record) in &self.skus {
            if !record.holds_invariant() {
                return Err(violation(0, sku, record));
            }
        }
        Ok(())
    }

    /// The answer the leader may give from its lease, without a log entry: `SoldOut` when
    /// `operation` is a valid reserve or purchase of an order id the shard does not keep, inside
    /// the idempotency window, for a SKU with fewer units than asked and no rule that
    /// [`LedgerState::decide_take`] checks first (sale window, per-user limit). Exactly what
    /// applying it would answer, and a sold-out answer records nothing, so skipping the log
    /// changes nothing. `None` for anything else: the log decides.
    pub fn sold_out_answer(&self, operation: &Operation) -> Option<Outcome> {
        let (sku, qty, first_attempt_ms, order_id) = match operation {
            Operation::Reserve {
                sku,
                qty,
                first_attempt_ms,
                order_id,
                ..
            }
            | Operation::Purchase {
                sku,
                qty,
                first_attempt_ms,
                order_id,
                ..
            } => (sku, *qty, *first_attempt_ms, order_id),
            _ => return None,
        };
        // Cheapest test first: every write asks, and while the SKU has stock it is the only one.
        let record = self.skus.get(sku)?;
        let rules = &record.rules;
        if rules.start_ms != 0 || rules.end_ms != 0 || rules.per_user_limit != 0 || record.available >= qty {
            return None;
        }
        if !self.settings.hash_key.is_set()
            || operation_defect(operation).is_some()
            || self.attempt_refusal(first_attempt_ms).is_some()
            || self.order(order_id).is_some()
        {
            return None;
        }
        Some(Outcome::SoldOut {
            available: record.available,
        })
    }

    /// Applies one log entry at `log_index`. Returns one outcome per operation and what changed.
    pub fn apply(
        &mut self,
        log_index: u64,
        command: &LogCommand,
    ) -> Result<(Vec<Outcome>, Changes), InvariantViolation> {
        // Time comes only from the log; a new leader with a slower clock cannot move it back.
        let previous_clock_ms = self.clock_ms;
        self.clock_ms = self.clock_ms.max(command.timestamp_ms);
        let mut changes = Changes::default();
        let outcomes = match &command.body {
            CommandBody::Batch(operations) => operations
                .iter()
                .map(|operation| self.apply_operation(log_index, operation, &mut changes))
                .collect::<Result<Vec<_>, _>>()?,
            CommandBody::Expire => {
                self.expire_due(log_index, &mut changes)?;
                Vec::new()
            }
            CommandBody::Shipped { below_seq, shipper } => {
                self.mark_shipped(*below_seq, *shipper);
                Vec::new()
            }
            CommandBody::Configure(settings) => {
                self.configure(*settings);
                Vec::new()
            }
            // The shard map's commands are applied to the map (`raft::state_store`), not here.
            CommandBody::Meta(_) => Vec::new(),
            // A split cuts the whole image, bounds included (`raft::state_store`), not only the
            // ledger.
            // So do a merge's entries (the bounds, and the right shard's whole state).
            CommandBody::Split { .. }
            | CommandBody::Freeze { .. }
            | CommandBody::Thaw { .. }
            | CommandBody::Merge { .. } => Vec::new(),
        };
        for sku in &changes.skus {
            if let Some(record) = self.skus.get_mut(sku) {
                record.changed_at_index = log_index;
                if !record.holds_invariant() {
                    return Err(violation(log_index, sku, record));
                }
            }
        }
        if prune_due(previous_clock_ms, self.clock_ms, &command.body) {
            self.prune();
        }
        Ok((outcomes, changes))
    }

    fn configure(&mut self, settings: LedgerSettings) {
        let hash_key = if self.settings.hash_key.is_set() {
            self.settings.hash_key
        } else {
            settings.hash_key
        };
        if !settings.keep_order_events {
            // Nothing will ship them: shipping covers orders confirmed while a sink is configured.
            self.order_events.clear();
            self.shipped_below_seq = self.next_event_seq;
        }
        self.settings = LedgerSettings { hash_key, ..settings };
    }

    fn apply_operation(
        &mut self,
        log_index: u64,
        operation: &Operation,
        changes: &mut Changes,
    ) -> Result<Outcome, InvariantViolation> {
        if let Some(reason) = operation_defect(operation) {
            return Ok(Outcome::Rejected { reason });
        }
        match operation {
            Operation::Reserve {
                sku,
                qty,
                user,
                order_id,
                ttl_ms,
                first_attempt_ms,
            } => self.take(
                log_index,
                Take {
                    kind: OrderKind::Reserve,
                    sku,
                    qty: *qty,
                    user,
                    order_id,
                    ttl_ms: *ttl_ms,
                    first_attempt_ms: *first_attempt_ms,
                },
                changes,
            ),
            Operation::Purchase {
                sku,
                qty,
                user,
                order_id,
                first_attempt_ms,
            } => self.take(
                log_index,
                Take {
                    kind: OrderKind::Purchase,
                    sku,
                    qty: *qty,
                    user,
                    order_id,
                    ttl_ms: 0,
                    first_attempt_ms: *first_attempt_ms,
                },
                changes,
            ),
            Operation::Confirm {
                sku,
                order_id,
                first_attempt_ms,
            } => self.confirm(log_index, sku, order_id, *first_attempt_ms, changes),
            Operation::Cancel {
                sku,
                order_id,
                first_attempt_ms,
            } => self.cancel(log_index, sku, order_id, *first_attempt_ms, changes),
            Operation::PutSku { sku, total, rules } => Ok(self.put_sku(sku, *total, *rules, changes)),
            Operation::Restock { sku, delta } => Ok(self.restock(sku, *delta, changes)),
        }
    }

    /// Why a write first sent at `first_attempt_ms` is refused before it is decided, if it is:
    /// its first attempt is past the idempotency window (less the clock-skew margin), or further
    /// ahead of the log's time than the margin (a clock that far ahead could outlive the window).
    /// Asked only when the shard keeps no order the write could repeat.
    fn attempt_refusal(&self, first_attempt_ms: u64) -> Option<Outcome> {
        let LedgerSettings {
            idempotency_window_ms: window,
            clock_skew_margin_ms: margin,
            ..
        } = self.settings;
        let now = self.clock_ms;
        if first_attempt_ms.saturating_add(window.saturating_sub(margin)) <= now {
            return Some(Outcome::RequestTooOld);
        }
        if first_attempt_ms > now.saturating_add(margin) {
            return Some(Outcome::Rejected {
                reason: format!(
                    "invalid first_attempt_ms: {first_attempt_ms} is more than the {margin} ms clock-skew margin \
                     ahead of the ledger's clock ({now})"
                ),
            });
        }
        None
    }

    /// Reserve or purchase: a replay answers its first answer; else decide, then move units out
    /// of `available`.
    fn take(&mut self, log_index: u64, take: Take<'_>, changes: &mut Changes) -> Result<Outcome, InvariantViolation> {
        let Take {
            kind,
            sku,
            qty,
            user,
            order_id,
            ttl_ms,
            first_attempt_ms,
        } = take;
        let hash_key = self.settings.hash_key;
        let key = hash_key.order(order_id);
        let request = hash_key.request(kind == OrderKind::Purchase, sku, qty, user);
        if let Some(seq) = self.orders.find(key) {
            let existing = self.orders.get(seq);
            return Ok(if existing.request == request {
                first_answer(existing)
            } else {
                Outcome::OrderIdReused
            });
        }
        if let Some(refusal) = self.attempt_refusal(first_attempt_ms) {
            return Ok(refusal);
        }
        let now = self.clock_ms;
        let (sku_id, limited) = self.skus.get(sku).map_or((SkuId::NONE, false), |record| {
            (record.id, record.rules.per_user_limit != 0)
        });
        // The buyer's key matters only under a per-user limit: hashed only then.
        let user_key = if limited {
            hash_key.user(user)
        } else {
            UserKey::default()
        };
        let mut record = OrderRecord {
            key,
            request,
            value: 0,
            event_seq: u64::MAX,
            sku: sku_id,
            qty: qty as u32,
            limit: 0,
            kind,
            state: OrderState::Rejected,
            first: FirstAnswer::UnknownSku,
        };
        let outcome = match self.decide_take(sku, qty, user_key, ttl_ms) {
            // A sold-out answer holds nothing and records nothing: the order id stays unused and
            // a later request with it is decided afresh. That is what lets the leader answer a
            // sold-out storm from its lease without a log entry per rejection
            // (`sold_out_answer`) and still give the same answers as this log path.
            Err(sold_out @ Outcome::SoldOut { .. }) => return Ok(sold_out),
            Err(rejection) => {
                match rejection {
                    Outcome::LimitExceeded { held, limit } => {
                        record.first = FirstAnswer::LimitExceeded;
                        record.value = held;
                        record.limit = limit as u32;
                    }
                    Outcome::SaleClosed => record.first = FirstAnswer::SaleClosed,
                    _ => record.first = FirstAnswer::UnknownSku,
                }
                rejection
            }
            Ok(expires_at_ms) => {
                let sku_record = self.skus.get_mut(sku).ok_or_else(|| missing_sku(log_index, sku))?;
                sku_record.available = checked_sub(sku_record.available, qty, log_index, sku)?;
                let counted = sku_record.rules.per_user_limit != 0;
                let limit_epoch = sku_record.limit_epoch;
                let outcome = match kind {
                    OrderKind::Reserve => {
                        sku_record.reserved += qty;
                        (record.state, record.first, record.value) =
                            (OrderState::Reserved, FirstAnswer::Reserved, expires_at_ms);
                        Outcome::Reserved { expires_at_ms }
                    }
                    OrderKind::Purchase => {
                        sku_record.sold += qty;
                        (record.state, record.first) = (OrderState::Confirmed, FirstAnswer::Confirmed);
                        record.event_seq = self.record_event(log_index, order_id, sku, qty, user);
                        Outcome::Confirmed
                    }
                };
                if counted {
                    self.holdings.entry(record.sku).or_default().add(user_key, qty);
                }
                changes.touch(sku);
                if kind == OrderKind::Reserve {
                    let seq = self.orders.push(record, now);
                    let limit_epoch = if counted { limit_epoch } else { u32::MAX };
                    let user_name = if self.settings.keep_order_events {
                        user.to_string()
                    } else {
                        String::new()
                    };
                    self.reservations.insert(
                        (expires_at_ms, seq),
                        Reservation {
                            user: user_key,
                            limit_epoch,
                            user_name,
                        },
                    );
                    return Ok(outcome);
                }
                outcome
            }
        };
        self.orders.push(record, now);
        Ok(outcome)
    }

    /// The business checks of a reserve/purchase, in a fixed order. `Ok` is the expiry time.
    fn decide_take(&self, sku: &[u8], qty: u64, user: UserKey, ttl_ms: u64) -> Result<u64, Outcome> {
        let now = self.clock_ms;
        let record = self.skus.get(sku).ok_or(Outcome::UnknownSku)?;
        let rules = &record.rules;
        if (rules.start_ms != 0 && now < rules.start_ms) || (rules.end_ms != 0 && now >= rules.end_ms) {
            return Err(Outcome::SaleClosed);
        }
        if rules.per_user_limit != 0 {
            let held = self.holdings.get(&record.id).map_or(0, |holders| holders.get(user));
            if held + qty > rules.per_user_limit {
                return Err(Outcome::LimitExceeded {
                    held,
                    limit: rules.per_user_limit,
                });
            }
        }
        if record.available < qty {
            return Err(Outcome::SoldOut {
                available: record.available,
            });
        }
        let ttl_ms = match (ttl_ms, rules.default_ttl_ms) {
            (0, 0) => limits::TTL_MS_DEFAULT,
            (0, default) => default,
            (requested, _) => requested,
        };
        // Saturating: the log's clock is a leader's wall clock, far from u64::MAX, but a state
        // loaded from a damaged snapshot must not make the next reservation panic.
        Ok(now.saturating_add(ttl_ms))
    }

    /// The kept order `order_id` of `sku`, or the answer for one the shard does not keep:
    /// `RequestTooOld` past the window (it may have been pruned), else `NotFound`.
    fn find_order(&self, sku: &[u8], order_id: &str, first_attempt_ms: u64) -> Result<u64, Outcome> {
        let key = self.settings.hash_key.order(order_id);
        match self.orders.find(key) {
            Some(seq) => {
                let sku_id = self.skus.get(sku).map(|record| record.id);
                if Some(self.orders.get(seq).sku) == sku_id {
                    Ok(seq)
                } else {
                    Err(Outcome::NotFound)
                }
            }
            None => Err(self.attempt_refusal(first_attempt_ms).unwrap_or(Outcome::NotFound)),
        }
    }

    fn confirm(
        &mut self,
        log_index: u64,
        sku: &[u8],
        order_id: &str,
        first_attempt_ms: u64,
        changes: &mut Changes,
    ) -> Result<Outcome, InvariantViolation> {
        let now = self.clock_ms;
        let seq = match self.find_order(sku, order_id, first_attempt_ms) {
            Ok(seq) => seq,
            Err(answer) => return Ok(answer),
        };
        let order = *self.orders.get(seq);
        match order.state {
            OrderState::Confirmed => Ok(Outcome::Confirmed),
            #[cfg(madsim)]
            OrderState::Expired | OrderState::Released
                if crate::simulation::planted(crate::simulation::PlantedBug::ConfirmWithoutReservation) =>
            {
                // The planted bug: the units already went back to `available`; selling them
                // again counts them twice.
                let record = self.skus.get_mut(sku).ok_or_else(|| missing_sku(log_index, sku))?;
                record.sold += u64::from(order.qty);
                self.mark_sold(log_index, seq, order_id, sku, "", changes);
                Ok(Outcome::Confirmed)
            }
            OrderState::Expired => Ok(Outcome::Expired),
            OrderState::Released | OrderState::Rejected => Ok(Outcome::NotFound),
            OrderState::Reserved if order.value <= now => {
                self.release(log_index, seq, OrderState::Expired, changes)?;
                Ok(Outcome::Expired)
            }
            OrderState::Reserved => {
                let qty = u64::from(order.qty);
                let record = self.skus.get_mut(sku).ok_or_else(|| missing_sku(log_index, sku))?;
                record.reserved = checked_sub(record.reserved, qty, log_index, sku)?;
                record.sold += qty;
                let reservation = self.reservations.remove(&(order.value, seq));
                let user = reservation.map(|r| r.user_name).unwrap_or_default();
                self.mark_sold(log_index, seq, order_id, sku, &user, changes);
                Ok(Outcome::Confirmed)
            }
        }
    }

    /// The order's units are now counted as sold: mark it confirmed and emit its order event
    /// (`user` is the buyer's name, kept with the reservation for this event).
    fn mark_sold(&mut self, log_index: u64, seq: u64, order_id: &str, sku: &[u8], user: &str, changes: &mut Changes) {
        let qty = u64::from(self.orders.get(seq).qty);
        let event_seq = self.record_event(log_index, order_id, sku, qty, user);
        let order = self.orders.get_mut(seq);
        order.state = OrderState::Confirmed;
        order.event_seq = event_seq;
        changes.touch(sku);
    }

    fn cancel(
        &mut self,
        log_index: u64,
        sku: &[u8],
        order_id: &str,
        first_attempt_ms: u64,
        changes: &mut Changes,
    ) -> Result<Outcome, InvariantViolation> {
        let now = self.clock_ms;
        let seq = match self.find_order(sku, order_id, first_attempt_ms) {
            Ok(seq) => seq,
            Err(answer) => return Ok(answer),
        };
        let order = *self.orders.get(seq);
        match order.state {
            OrderState::Confirmed => Ok(Outcome::AlreadyConfirmed),
            OrderState::Released => Ok(Outcome::Released),
            OrderState::Expired => Ok(Outcome::Expired),
            OrderState::Rejected => Ok(Outcome::NotFound),
            OrderState::Reserved if order.value <= now => {
                self.release(log_index, seq, OrderState::Expired, changes)?;
                Ok(Outcome::Expired)
            }
            OrderState::Reserved => {
                self.release(log_index, seq, OrderState::Released, changes)?;
                Ok(Outcome::Released)
            }
        }
    }

    /// Moves a live reservation's units back to `available`.
    fn release(
        &mut self,
        log_index: u64,
        seq: u64,
        new_state: OrderState,
        changes: &mut Changes,
    ) -> Result<(), InvariantViolation> {
        let order = self.orders.get_mut(seq);
        if order.state != OrderState::Reserved {
            return Ok(());
        }
        order.state = new_state;
        let (expires_at_ms, sku_id, qty) = (order.value, order.sku, u64::from(order.qty));
        let reservation = self.reservations.remove(&(expires_at_ms, seq));
        let sku = self.sku_names.get(sku_id.0 as usize).cloned().unwrap_or_default();
        let record = self.skus.get_mut(&sku).ok_or_else(|| missing_sku(log_index, &sku))?;
        record.reserved = checked_sub(record.reserved, qty, log_index, &sku)?;
        record.available += qty;
        if let Some(reservation) = reservation.filter(|r| r.limit_epoch == record.limit_epoch)
            && let Some(holders) = self.holdings.get_mut(&sku_id)
        {
            holders.remove(reservation.user, qty);
        }
        changes.skus.insert(sku);
        Ok(())
    }

    fn put_sku(&mut self, sku: &Sku, total: u64, rules: SaleRules, changes: &mut Changes) -> Outcome {
        let next_id = SkuId(self.sku_names.len() as u32);
        let record = self.skus.get(sku);
        let held = record.map_or(0, |record| record.reserved + record.sold);
        if total < held {
            return Outcome::Rejected {
                reason: format!("total {total} is below the {held} units reserved or sold"),
            };
        }
        let record = self.skus.entry(sku.clone()).or_insert_with(|| SkuRecord {
            id: next_id,
            total: 0,
            available: 0,
            reserved: 0,
            sold: 0,
            rules: SaleRules::default(),
            changed_at_index: 0,
            limit_epoch: 0,
        });
        if record.id == next_id {
            self.sku_names.push(sku.clone());
        }
        // A per-user limit counts what buyers take while it is set: switching it on starts every
        // buyer at zero, switching it off forgets the holders.
        let was_limited = record.rules.per_user_limit != 0;
        let limited = rules.per_user_limit != 0;
        if was_limited != limited {
            record.limit_epoch = record.limit_epoch.wrapping_add(1);
            if limited {
                self.holdings.insert(record.id, Holders::default());
            } else {
                self.holdings.remove(&record.id);
            }
        }
        record.total = total;
        record.available = total - held;
        record.rules = rules;
        changes.touch(sku);
        Outcome::Ok
    }

    fn restock(&mut self, sku: &Sku, delta: i64, changes: &mut Changes) -> Outcome {
        let Some(record) = self.skus.get_mut(sku) else {
            return Outcome::UnknownSku;
        };
        let held = record.reserved + record.sold;
        let new_total = i128::from(record.total) + i128::from(delta);
        if new_total < i128::from(held) {
            return Outcome::Rejected {
                reason: format!("total would fall to {new_total}, below the {held} units reserved or sold"),
            };
        }
        if new_total > i128::from(limits::TOTAL_MAX) {
            return Outcome::Rejected {
                reason: format!("total would rise to {new_total}, above {}", limits::TOTAL_MAX),
            };
        }
        record.total = new_total as u64;
        record.available = record.total - held;
        changes.touch(sku);
        Outcome::Ok
    }

    /// Releases reservations due at the current log time.
    fn expire_due(&mut self, log_index: u64, changes: &mut Changes) -> Result<(), InvariantViolation> {
        let now = self.clock_ms;
        let due: Vec<u64> = self
            .reservations
            .keys()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, seq)| *seq)
            .collect();
        for seq in due {
            self.release(log_index, seq, OrderState::Expired, changes)?;
        }
        Ok(())
    }

    /// Forgets the oldest orders once they may go (see the module docs): whole chunks, oldest
    /// first, each once its newest order is past the idempotency window. An order that still
    /// holds units or has an unshipped event stays: up to [`STRAGGLERS_PER_CHUNK_MAX`] of them
    /// are carried forward into the newest chunk (created anew now, so they stay a whole window
    /// more) and the rest of their chunk goes; a chunk with more stops the sweep (shipping is
    /// behind: everything after it waits too). At most [`PRUNE_CHUNKS_PER_ENTRY_MAX`] chunks per
    /// entry.
    fn prune(&mut self) {
        let window = self.settings.idempotency_window_ms;
        #[cfg(madsim)]
        let window = if crate::simulation::planted(crate::simulation::PlantedBug::PruneInsideWindow) {
            // The planted bug: a tenth of the window, so repeats inside it are decided afresh.
            window / 10
        } else {
            window
        };
        for _ in 0..PRUNE_CHUNKS_PER_ENTRY_MAX {
            let Some(chunk) = self.orders.front() else {
                return;
            };
            if chunk.newest_created_ms.saturating_add(window) > self.clock_ms {
                return;
            }
            let staying: Vec<usize> = (chunk.records.iter().enumerate())
                .filter(|(_, order)| !self.may_forget(order))
                .map(|(offset, _)| offset)
                .take(STRAGGLERS_PER_CHUNK_MAX + 1)
                .collect();
            if staying.len() > STRAGGLERS_PER_CHUNK_MAX {
                return;
            }
            #[cfg(madsim)]
            if crate::simulation::planted(crate::simulation::PlantedBug::PruneUnshipped) {
                // The planted bug: unshipped orders go with their events, never to be shipped.
                let unshipped: Vec<u64> = (chunk.records.iter())
                    .filter(|order| order.state == OrderState::Confirmed && order.event_seq >= self.shipped_below_seq)
                    .map(|order| order.event_seq)
                    .collect();
                for event_seq in unshipped {
                    self.order_events.remove(&event_seq);
                }
            }
            let clock_ms = self.clock_ms;
            for (old_seq, new_seq) in self.orders.pop_front(&staying, clock_ms) {
                let order = self.orders.get(new_seq);
                if order.state == OrderState::Reserved
                    && let Some(reservation) = self.reservations.remove(&(order.value, old_seq))
                {
                    self.reservations.insert((order.value, new_seq), reservation);
                }
            }
        }
    }

    /// Whether an order past the window may be forgotten: it holds no units and its event, if
    /// it had one, was shipped.
    fn may_forget(&self, order: &OrderRecord) -> bool {
        match order.state {
            OrderState::Reserved => false,
            #[cfg(madsim)]
            OrderState::Confirmed if crate::simulation::planted(crate::simulation::PlantedBug::PruneUnshipped) => true,
            OrderState::Confirmed => order.event_seq == u64::MAX || order.event_seq < self.shipped_below_seq,
            OrderState::Released | OrderState::Expired | OrderState::Rejected => true,
        }
    }

    /// Prunes the events every PostgreSQL shard acknowledged. The mark only moves forward. A
    /// mark past the events that exist changes nothing: a correct shipper only acknowledges
    /// events it read from this log, so such a mark means Postgres holds another ledger's
    /// watermarks, and pruning on its word would drop orders that were never shipped.
    fn mark_shipped(&mut self, below_seq: u64, shipper: u64) {
        if below_seq <= self.shipped_below_seq || below_seq > self.next_event_seq {
            return;
        }
        self.order_events = self.order_events.split_off(&below_seq);
        self.shipped_below_seq = below_seq;
        self.shipped_by = shipper;
    }

    /// Units `user` holds of `sku` (reserved + sold) while the SKU has a per-user limit; 0
    /// for a SKU without one (nothing is counted).
    pub fn held(&self, sku: &[u8], user: &str) -> u64 {
        let user = self.settings.hash_key.user(user);
        self.skus
            .get(sku)
            .and_then(|record| self.holdings.get(&record.id))
            .map_or(0, |holders| holders.get(user))
    }

    /// The oldest event not yet known to be shipped: what shipping lag is measured from.
    pub fn oldest_unshipped(&self) -> Option<&OrderEvent> {
        self.order_events.first_key_value().map(|(_, event)| event)
    }

    /// Emits an order event if a sink is configured; its sequence number, or `u64::MAX`.
    fn record_event(&mut self, log_index: u64, order_id: &str, sku: &[u8], qty: u64, user: &str) -> u64 {
        if !self.settings.keep_order_events {
            return u64::MAX;
        }
        let seq = self.next_event_seq;
        self.next_event_seq += 1;
        self.order_events.insert(
            seq,
            OrderEvent {
                order_id: order_id.to_string(),
                sku: sku.to_vec(),
                qty,
                user: user.to_string(),
                log_index,
                confirmed_at_ms: self.clock_ms,
            },
        );
        seq
    }

    /// A digest of the replicated state, equal on replicas that applied the same entries (the
    /// state is deterministic: this walks it in its own order).
    pub fn digest(&self) -> u64 {
        let mut hasher = Fnv64::default();
        hasher.write(&self.settings.hash_key.0[0].to_le_bytes());
        hasher.write(&self.settings.hash_key.0[1].to_le_bytes());
        for (sku, record) in &self.skus {
            hasher.write(sku);
            for value in [
                record.total,
                record.available,
                record.reserved,
                record.sold,
                record.changed_at_index,
            ] {
                hasher.write(&value.to_le_bytes());
            }
        }
        for (seq, order) in self.orders.iter() {
            for value in [
                seq,
                order.key.0[0],
                order.key.0[1],
                order.request,
                order.value,
                order.event_seq,
            ] {
                hasher.write(&value.to_le_bytes());
            }
            hasher.write(&[order.state as u8, order.first as u8, order.kind as u8]);
        }
        for holders in self.holdings.values() {
            for holder in holders.sorted() {
                hasher.write(&holder.user.0[0].to_le_bytes());
                hasher.write(&holder.units.to_le_bytes());
            }
        }
        hasher.write(&(self.reservations.len() as u64).to_le_bytes());
        hasher.write(&self.next_event_seq.to_le_bytes());
        hasher.write(&self.shipped_below_seq.to_le_bytes());
        hasher.write(&self.clock_ms.to_le_bytes());
        hasher.finish()
    }
}

/// Whether applying an entry should try to prune: once per [`PRUNE_INTERVAL_MS`] of log time,
/// and on the entries that let orders go (shipped marks, expiries, settings). Not on every
/// batch: a front chunk that must stay (shipping is behind) would be scanned again by each one.
/// Decided by the log alone, so every replica prunes at the same entries.
fn prune_due(previous_clock_ms: u64, clock_ms: u64, body: &CommandBody) -> bool {
    clock_ms / PRUNE_INTERVAL_MS != previous_clock_ms / PRUNE_INTERVAL_MS || !matches!(body, CommandBody::Batch(_))
}

/// A reserve or purchase, as `LedgerState::take` decides it.
struct Take<'a> {
    kind: OrderKind,
    sku: &'a Sku,
    qty: u64,
    user: &'a str,
    order_id: &'a str,
    ttl_ms: u64,
    first_attempt_ms: u64,
}

/// The answer a kept order's creating request got, for a replay.
pub fn first_answer(order: &OrderRecord) -> Outcome {
    match order.first {
        FirstAnswer::Reserved => Outcome::Reserved {
            expires_at_ms: order.value,
        },
        FirstAnswer::Confirmed => Outcome::Confirmed,
        FirstAnswer::LimitExceeded => Outcome::LimitExceeded {
            held: order.value,
            limit: u64::from(order.limit),
        },
        FirstAnswer::SaleClosed => Outcome::SaleClosed,
        FirstAnswer::UnknownSku => Outcome::UnknownSku,
    }
}

/// Every live reservation names a retained order that is reserved until the reservation's
/// expiry: expiring, confirming or cancelling one finds its order by that sequence number.
fn check_reservations(reservations: &BTreeMap<(u64, u64), Reservation>, orders: &OrderBook) -> Result<(), String> {
    for &(expires_at_ms, seq) in reservations.keys() {
        let order = orders
            .try_get(seq)
            .ok_or_else(|| format!("a reservation names order {seq}, which is not retained"))?;
        if order.state != OrderState::Reserved || order.value != expires_at_ms {
            return Err(format!(
                "a reservation until {expires_at_ms} names order {seq}, which is {:?} until {}",
                order.state, order.value
            ));
        }
    }
    Ok(())
}

/// Defects the gRPC layer should have caught; the state machine refuses them as data.
pub(crate) fn operation_defect(operation: &Operation) -> Option<String> {
    let check = || -> Result<(), limits::InvalidField> {
        limits::check_sku(operation.sku())?;
        match operation {
            Operation::Reserve {
                qty,
                user,
                order_id,
                ttl_ms,
                ..
            } => {
                check_domain_qty(*qty)?;
                limits::check_id("user", user)?;
                limits::check_id("order_id", order_id)?;
                if *ttl_ms > limits::TTL_MS_MAX {
                    return Err(limits::InvalidField::new("ttl_ms", "too long"));
                }
            }
            Operation::Purchase {
                qty, user, order_id, ..
            } => {
                check_domain_qty(*qty)?;
                limits::check_id("user", user)?;
                limits::check_id("order_id", order_id)?;
            }
            Operation::Confirm { order_id, .. } | Operation::Cancel { order_id, .. } => {
                limits::check_id("order_id", order_id)?;
            }
            Operation::PutSku { total, rules, .. } => {
                if *total > limits::TOTAL_MAX {
                    return Err(limits::InvalidField::new("total", "too large"));
                }
                if rules.default_ttl_ms > limits::TTL_MS_MAX {
                    return Err(limits::InvalidField::new("rules.default_ttl_ms", "too long"));
                }
                if rules.per_user_limit > limits::PER_USER_LIMIT_MAX {
                    return Err(limits::InvalidField::new("rules.per_user_limit", "too large"));
                }
                for (field, rate) in [
                    ("rules.buyer_rate", rules.buyer_rate),
                    ("rules.client_rate", rules.client_rate),
                ] {
                    if rate.ops_per_s > limits::RATE_OPS_MAX || rate.burst_ops > limits::RATE_OPS_MAX {
                        return Err(limits::InvalidField::new(field, "too large"));
                    }
                }
            }
            Operation::Restock { delta, .. } => {
                limits::check_delta(*delta)?;
            }
        }
        Ok(())
    };
    check().err().map(|invalid| invalid.to_string())
}

fn check_domain_qty(qty: u64) -> Result<(), limits::InvalidField> {
    if qty == 0 || qty > limits::QTY_MAX {
        return Err(limits::InvalidField::new(
            "qty",
            format!("{qty}, must be 1..={}", limits::QTY_MAX),
        ));
    }
    Ok(())
}

fn checked_sub(value: u64, amount: u64, log_index: u64, sku: &[u8]) -> Result<u64, InvariantViolation> {
    value.checked_sub(amount).ok_or_else(|| InvariantViolation {
        log_index,
        sku: sku.to_vec(),
        detail: format!("count {value} would go below zero by {amount}"),
    })
}

fn missing_sku(log_index: u64, sku: &[u8]) -> InvariantViolation {
    InvariantViolation {
        log_index,
        sku: sku.to_vec(),
        detail: "an order refers to a SKU that does not exist".into(),
    }
}

fn violation(log_index: u64, sku: &[u8], record: &SkuRecord) -> InvariantViolation {
    InvariantViolation {
        log_index,
        sku: sku.to_vec(),
        detail: format!(
            "available {} + reserved {} + sold {} != total {}",
            record.available, record.reserved, record.sold, record.total
        ),
    }
}

/// FNV-1a: a stable, dependency-free hash for state digests (not for security).
struct Fnv64(u64);

impl Default for Fnv64 {
    fn default() -> Self {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv64 {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
