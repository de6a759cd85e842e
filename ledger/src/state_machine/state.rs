//! [`LedgerState`]: every SKU's stock, every order, and the rules that move units between
//! `available`, `reserved` and `sold`.
//!
//! Invariant, checked after every applied entry for every SKU it touched:
//! `available + reserved + sold == total`, all three non-negative (they are unsigned; every
//! subtraction is checked). A violation is returned as [`InvariantViolation`]; the caller must
//! stop applying, because continuing from a broken ledger could oversell.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;

use crate::state_machine::command::CommandBody;
use crate::state_machine::command::LogCommand;
use crate::state_machine::command::Operation;
use crate::state_machine::command::Outcome;
use crate::state_machine::command::SaleRules;
use crate::state_machine::command::Sku;
use crate::state_machine::limits;
use crate::state_machine::spread_map::SpreadMap;

/// One SKU's counts and rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuRecord {
    pub total: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
    pub rules: SaleRules,
    /// The log index that last changed this SKU (Watch resumes from it).
    pub changed_at_index: u64,
}

impl SkuRecord {
    fn holds_invariant(&self) -> bool {
        self.available
            .checked_add(self.reserved)
            .and_then(|sum| sum.checked_add(self.sold))
            == Some(self.total)
    }
}

/// Where an order stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderState {
    /// Units are held until `expires_at_ms` (leader time).
    Reserved {
        expires_at_ms: u64,
    },
    Confirmed {
        confirmed_at_ms: u64,
    },
    Released,
    Expired,
    /// The first request was rejected (sold out, limit, ...); nothing is held.
    Rejected {
        at_ms: u64,
    },
}

/// Which operation created the order: a replay must be the same operation to get the first answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderKind {
    Reserve,
    Purchase,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    pub kind: OrderKind,
    pub sku: Sku,
    pub qty: u64,
    pub user: String,
    pub state: OrderState,
    /// The answer the creating request got; replays return it verbatim.
    pub first_outcome: Outcome,
}

/// A confirmed order, kept until it has been shipped to PostgreSQL.
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

/// Units each user holds (reserved + sold) per SKU, for per-user limits. Per SKU a hash map: a
/// hot SKU has a holder per buyer, and looking one up must not cost a walk of ordered keys that
/// all start with the same SKU (it was the top of the profile); a spread one, so that it never
/// rehashes every holder at once. A SKU whose holders all let go has no entry, so replicas that
/// reached the same state compare equal.
pub type Holdings = BTreeMap<Sku, SpreadMap<u64>>;

/// The whole applied state of one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerState {
    pub skus: BTreeMap<Sku, SkuRecord>,
    /// Every order by id. A hash map: an order id is looked up and inserted on every reserve
    /// and purchase, and ids of one client share long prefixes (ordered keys cost a walk of
    /// string comparisons per lookup; it was the top of the profile), spread so that growing it
    /// never rehashes every order at once.
    pub orders: SpreadMap<OrderRecord>,
    /// Units each user holds reserved + sold, per SKU.
    pub holdings: Holdings,
    /// Confirmed orders not yet shipped, by sequence number (dense: `shipped_below_seq..next_event_seq`).
    pub order_events: BTreeMap<u64, OrderEvent>,
    pub next_event_seq: u64,
    /// Every event below this sequence number is in PostgreSQL and has been pruned.
    pub shipped_below_seq: u64,
    /// The node whose shipper last advanced `shipped_below_seq` (0 = none yet).
    pub shipped_by: u64,
    /// Leader time as of the last applied entry; never decreases.
    pub clock_ms: u64,
    /// Live reservations by expiry, derived from `orders` (rebuilt on load).
    #[serde(skip)]
    pub(crate) expiries: BTreeSet<(u64, String)>,
    /// Rejected orders by rejection time, derived from `orders` (rebuilt on load).
    #[serde(skip)]
    pub(crate) rejections: BTreeSet<(u64, String)>,
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
    /// Rebuilds the derived indexes after loading the persistent parts.
    pub fn rebuild_indexes(&mut self) {
        self.expiries.clear();
        self.rejections.clear();
        for (order_id, order) in self.orders.iter() {
            match order.state {
                OrderState::Reserved { expires_at_ms } => {
                    self.expiries.insert((expires_at_ms, order_id.clone()));
                }
                OrderState::Rejected { at_ms } => {
                    self.rejections.insert((at_ms, order_id.clone()));
                }
                _ => {}
            }
        }
    }

    /// Records that grow with the orders taken: orders, holders, unshipped order events. What a
    /// snapshot's size (and so its cost) is proportional to.
    pub fn records(&self) -> u64 {
        let holders: usize = self.holdings.values().map(SpreadMap::len).sum();
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

    /// The earliest live reservation expiry, so the leader knows when to propose `Expire`.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.expiries.first().map(|(at, _)| *at)
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

    /// Applies one log entry at `log_index`. Returns one outcome per operation and what changed.
    pub fn apply(
        &mut self,
        log_index: u64,
        command: &LogCommand,
    ) -> Result<(Vec<Outcome>, Changes), InvariantViolation> {
        // Time comes only from the log; a new leader with a slower clock cannot move it back.
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
        };
        for sku in &changes.skus {
            if let Some(record) = self.skus.get_mut(sku) {
                record.changed_at_index = log_index;
                if !record.holds_invariant() {
                    return Err(violation(log_index, sku, record));
                }
            }
        }
        Ok((outcomes, changes))
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
            } => self.take(
                log_index,
                OrderKind::Reserve,
                sku,
                *qty,
                user,
                order_id,
                *ttl_ms,
                changes,
            ),
            Operation::Purchase {
                sku,
                qty,
                user,
                order_id,
            } => self.take(log_index, OrderKind::Purchase, sku, *qty, user, order_id, 0, changes),
            Operation::Confirm { sku, order_id } => self.confirm(log_index, sku, order_id, changes),
            Operation::Cancel { sku, order_id } => self.cancel(log_index, sku, order_id, changes),
            Operation::PutSku { sku, total, rules } => Ok(self.put_sku(sku, *total, *rules, changes)),
            Operation::Restock { sku, delta } => Ok(self.restock(sku, *delta, changes)),
        }
    }

    /// Reserve or purchase: decide, then move units out of `available`.
    #[allow(clippy::too_many_arguments)]
    fn take(
        &mut self,
        log_index: u64,
        kind: OrderKind,
        sku: &Sku,
        qty: u64,
        user: &str,
        order_id: &str,
        ttl_ms: u64,
        changes: &mut Changes,
    ) -> Result<Outcome, InvariantViolation> {
        // Hashed once for the lookup here and the insert below (the map is unchanged between).
        let order_hash = self.orders.hash(order_id);
        if let Some(existing) = self.orders.get_hashed(order_hash, order_id) {
            let same = existing.kind == kind && existing.sku == *sku && existing.qty == qty && existing.user == user;
            return Ok(if same {
                existing.first_outcome.clone()
            } else {
                Outcome::OrderIdReused
            });
        }
        let now = self.clock_ms;
        let decision = self.decide_take(sku, qty, user, ttl_ms);
        let (state, outcome) = match decision {
            // A sold-out answer holds nothing and records nothing: the order id stays unused and
            // a later request with it is decided afresh. That is what lets the leader answer a
            // sold-out storm from its lease without a log entry per rejection (node::write) and
            // still give the same answers as this log path.
            Err(sold_out @ Outcome::SoldOut { .. }) => return Ok(sold_out),
            Err(rejection) => (OrderState::Rejected { at_ms: now }, rejection),
            Ok(expires_at_ms) => {
                let record = self.skus.get_mut(sku).ok_or_else(|| missing_sku(log_index, sku))?;
                record.available = checked_sub(record.available, qty, log_index, sku)?;
                let taken = match kind {
                    OrderKind::Reserve => {
                        record.reserved += qty;
                        (
                            OrderState::Reserved { expires_at_ms },
                            Outcome::Reserved { expires_at_ms },
                        )
                    }
                    OrderKind::Purchase => {
                        record.sold += qty;
                        (OrderState::Confirmed { confirmed_at_ms: now }, Outcome::Confirmed)
                    }
                };
                self.add_held(sku, user, qty);
                if kind == OrderKind::Purchase {
                    self.record_event(log_index, order_id, sku, qty, user);
                }
                changes.touch(sku);
                taken
            }
        };
        match state {
            OrderState::Reserved { expires_at_ms } => {
                self.expiries.insert((expires_at_ms, order_id.to_string()));
            }
            OrderState::Rejected { at_ms } => {
                self.rejections.insert((at_ms, order_id.to_string()));
            }
            _ => {}
        }
        self.orders.insert_hashed(
            order_hash,
            order_id.to_string(),
            OrderRecord {
                kind,
                sku: sku.clone(),
                qty,
                user: user.to_string(),
                state,
                first_outcome: outcome.clone(),
            },
        );
        Ok(outcome)
    }

    /// The business checks of a reserve/purchase, in a fixed order. `Ok` is the expiry time.
    fn decide_take(&self, sku: &[u8], qty: u64, user: &str, ttl_ms: u64) -> Result<u64, Outcome> {
        let now = self.clock_ms;
        let record = self.skus.get(sku).ok_or(Outcome::UnknownSku)?;
        let rules = &record.rules;
        if (rules.start_ms != 0 && now < rules.start_ms) || (rules.end_ms != 0 && now >= rules.end_ms) {
            return Err(Outcome::SaleClosed);
        }
        if rules.per_user_limit != 0 {
            let held = self.held(sku, user);
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
        Ok(now + ttl_ms)
    }

    fn confirm(
        &mut self,
        log_index: u64,
        sku: &[u8],
        order_id: &str,
        changes: &mut Changes,
    ) -> Result<Outcome, InvariantViolation> {
        let now = self.clock_ms;
        let Some(order) = self.orders.get(order_id).filter(|o| o.sku == sku) else {
            return Ok(Outcome::NotFound);
        };
        match order.state {
            OrderState::Confirmed { .. } => Ok(Outcome::Confirmed),
            #[cfg(madsim)]
            OrderState::Expired | OrderState::Released
                if crate::simulation::planted(crate::simulation::PlantedBug::ConfirmWithoutReservation) =>
            {
                // The planted bug: the units already went back to `available`; selling them
                // again counts them twice.
                let (sku, qty, user) = (order.sku.clone(), order.qty, order.user.clone());
                let record = self.skus.get_mut(&sku).ok_or_else(|| missing_sku(log_index, &sku))?;
                record.sold += qty;
                self.mark_sold(log_index, order_id, &sku, qty, &user, changes);
                Ok(Outcome::Confirmed)
            }
            OrderState::Expired => Ok(Outcome::Expired),
            OrderState::Released | OrderState::Rejected { .. } => Ok(Outcome::NotFound),
            OrderState::Reserved { expires_at_ms } if expires_at_ms <= now => {
                self.release(log_index, order_id, OrderState::Expired, changes)?;
                Ok(Outcome::Expired)
            }
            OrderState::Reserved { expires_at_ms } => {
                let (sku, qty, user) = (order.sku.clone(), order.qty, order.user.clone());
                let record = self.skus.get_mut(&sku).ok_or_else(|| missing_sku(log_index, &sku))?;
                record.reserved = checked_sub(record.reserved, qty, log_index, &sku)?;
                record.sold += qty;
                self.expiries.remove(&(expires_at_ms, order_id.to_string()));
                self.mark_sold(log_index, order_id, &sku, qty, &user, changes);
                Ok(Outcome::Confirmed)
            }
        }
    }

    /// The order's units are now counted as sold: mark it confirmed and emit its order event.
    fn mark_sold(&mut self, log_index: u64, order_id: &str, sku: &Sku, qty: u64, user: &str, changes: &mut Changes) {
        let now = self.clock_ms;
        if let Some(order) = self.orders.get_mut(order_id) {
            order.state = OrderState::Confirmed { confirmed_at_ms: now };
        }
        changes.touch(sku);
        self.record_event(log_index, order_id, sku, qty, user);
    }

    fn cancel(
        &mut self,
        log_index: u64,
        sku: &[u8],
        order_id: &str,
        changes: &mut Changes,
    ) -> Result<Outcome, InvariantViolation> {
        let now = self.clock_ms;
        let Some(order) = self.orders.get(order_id).filter(|o| o.sku == sku) else {
            return Ok(Outcome::NotFound);
        };
        match order.state {
            OrderState::Confirmed { .. } => Ok(Outcome::AlreadyConfirmed),
            OrderState::Released => Ok(Outcome::Released),
            OrderState::Expired => Ok(Outcome::Expired),
            OrderState::Rejected { .. } => Ok(Outcome::NotFound),
            OrderState::Reserved { expires_at_ms } if expires_at_ms <= now => {
                self.release(log_index, order_id, OrderState::Expired, changes)?;
                Ok(Outcome::Expired)
            }
            OrderState::Reserved { .. } => {
                self.release(log_index, order_id, OrderState::Released, changes)?;
                Ok(Outcome::Released)
            }
        }
    }

    /// Moves a live reservation's units back to `available`.
    fn release(
        &mut self,
        log_index: u64,
        order_id: &str,
        new_state: OrderState,
        changes: &mut Changes,
    ) -> Result<(), InvariantViolation> {
        let Some(order) = self.orders.get_mut(order_id) else {
            return Ok(());
        };
        let OrderState::Reserved { expires_at_ms } = order.state else {
            return Ok(());
        };
        order.state = new_state;
        let (sku, qty, user) = (order.sku.clone(), order.qty, order.user.clone());
        self.expiries.remove(&(expires_at_ms, order_id.to_string()));
        let record = self.skus.get_mut(&sku).ok_or_else(|| missing_sku(log_index, &sku))?;
        record.reserved = checked_sub(record.reserved, qty, log_index, &sku)?;
        record.available += qty;
        let remaining = checked_sub(self.held(&sku, &user), qty, log_index, &sku)?;
        self.set_held(&sku, &user, remaining);
        changes.skus.insert(sku);
        Ok(())
    }

    fn put_sku(&mut self, sku: &Sku, total: u64, rules: SaleRules, changes: &mut Changes) -> Outcome {
        let record = self.skus.entry(sku.clone()).or_insert(SkuRecord {
            total: 0,
            available: 0,
            reserved: 0,
            sold: 0,
            rules,
            changed_at_index: 0,
        });
        let held = record.reserved + record.sold;
        if total < held {
            return Outcome::Rejected {
                reason: format!("total {total} is below the {held} units reserved or sold"),
            };
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

    /// Releases reservations due at the current log time and forgets old rejections.
    fn expire_due(&mut self, log_index: u64, changes: &mut Changes) -> Result<(), InvariantViolation> {
        let now = self.clock_ms;
        let due: Vec<String> = self
            .expiries
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, order_id)| order_id.clone())
            .collect();
        for order_id in due {
            self.release(log_index, &order_id, OrderState::Expired, changes)?;
        }
        let horizon = now.saturating_sub(limits::REJECTION_RETENTION_MS);
        let forgotten: Vec<(u64, String)> = self
            .rejections
            .iter()
            .take_while(|(at, _)| *at <= horizon)
            .cloned()
            .collect();
        for key in forgotten {
            self.rejections.remove(&key);
            self.orders.remove(&key.1);
        }
        Ok(())
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

    /// Units `user` holds of `sku` (reserved + sold).
    pub fn held(&self, sku: &[u8], user: &str) -> u64 {
        self.holdings
            .get(sku)
            .and_then(|holders| holders.get(user))
            .copied()
            .unwrap_or(0)
    }

    /// Adds `qty` (> 0) to what `user` holds of `sku`: one lookup of the holder, on every reserve
    /// and purchase.
    fn add_held(&mut self, sku: &[u8], user: &str, qty: u64) {
        let holders = match self.holdings.get_mut(sku) {
            Some(holders) => holders,
            None => self.holdings.entry(sku.to_vec()).or_default(),
        };
        *holders.get_or_insert_with(user, || 0) += qty;
    }

    /// Sets what `user` holds of `sku`; zero removes the holder (and an emptied SKU entry).
    fn set_held(&mut self, sku: &[u8], user: &str, units: u64) {
        if units == 0 {
            if let Some(holders) = self.holdings.get_mut(sku) {
                holders.remove(user);
                if holders.is_empty() {
                    self.holdings.remove(sku);
                }
            }
            return;
        }
        let holders = match self.holdings.get_mut(sku) {
            Some(holders) => holders,
            None => self.holdings.entry(sku.to_vec()).or_default(),
        };
        *holders.get_or_insert_with(user, || 0) = units;
    }

    /// The oldest event not yet known to be shipped: what shipping lag is measured from.
    pub fn oldest_unshipped(&self) -> Option<&OrderEvent> {
        self.order_events.first_key_value().map(|(_, event)| event)
    }

    fn record_event(&mut self, log_index: u64, order_id: &str, sku: &[u8], qty: u64, user: &str) {
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
    }

    /// A digest of the replicated state, equal on replicas that applied the same entries.
    pub fn digest(&self) -> u64 {
        let mut hasher = Fnv64::default();
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
        // Orders are a hash map (no order to iterate in): combine their hashes commutatively.
        let mut orders_sum = 0u64;
        for (order_id, order) in self.orders.iter() {
            let mut order_hasher = Fnv64::default();
            order_hasher.write(order_id.as_bytes());
            order_hasher.write(&order.qty.to_le_bytes());
            order_hasher.write(format!("{:?}", order.state).as_bytes());
            orders_sum = orders_sum.wrapping_add(order_hasher.finish());
        }
        hasher.write(&(self.orders.len() as u64).to_le_bytes());
        hasher.write(&orders_sum.to_le_bytes());
        hasher.write(&self.next_event_seq.to_le_bytes());
        hasher.write(&self.shipped_below_seq.to_le_bytes());
        hasher.write(&self.clock_ms.to_le_bytes());
        hasher.finish()
    }
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
