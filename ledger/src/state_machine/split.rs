//! Splitting a shard's applied state at a SKU ([`LedgerState::split_off`]) and merging two
//! adjacent halves back into one ([`LedgerState::absorb`]): the pure half of elastic sharding.
//! Where the split or merge sits in the log, and which Raft group starts from which half, is the
//! node's business; this module only answers "what does each half hold".
//!
//! Everything belongs to a SKU, and goes with it:
//! - SKU records and rules; their holders (per-user limits); the retained orders of the SKU,
//!   so a retry of an order id after the split gets its first answer from the half that owns
//!   its SKU; live reservations, so expiry releases them in the right half; unshipped order
//!   events.
//! - An order refused with `UnknownSku` names no SKU (its record has [`SkuId::NONE`] and only a
//!   hash of the request), so it cannot be placed: it is copied into both halves. It holds no
//!   units and emits no event, and a retry in either half answers `UnknownSku` as the whole
//!   shard would have.
//! - Settings (hash key, window, margin, shipping) and the clock are the shard's, and are copied.
//!
//! Numbering. SKU numbers are dense per shard (`sku_names`), so both halves renumber their SKUs,
//! keeping their relative order (a SKU numbered below every SKU that left keeps its number).
//! Orders keep their relative order and are packed into chunks anew, each chunk stamped with the
//! newest creation time of the chunks its records came from, so that no order is pruned earlier
//! than it would have been (it may be pruned later, by at most the spread of one chunk). The left
//! half keeps its order sequence numbers' origin and its order-event numbering, with holes where
//! events went right (the Postgres watermarks of the left shard keep meaning what they meant);
//! the right half numbers orders and events from 0, with nothing shipped yet. A merge appends the
//! right half's orders and unshipped events after the left's, renumbered.
//!
//! Determinism: both functions are functions of the encoded state ([`LedgerState::frozen`]) and
//! their arguments alone, so every replica splitting the same state at the same SKU produces
//! byte-identical halves, and every replica merging the same halves the same state.
//!
//! Both validate everything before changing anything: on `Err`, `self` is as it was. The halves
//! are built through [`LedgerState::from_frozen`], so they pass the checks a loaded snapshot
//! passes, and then [`LedgerState::check_all`].

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::state_machine::command::Sku;
use crate::state_machine::limits;
use crate::state_machine::orders::CHUNK_RECORDS;
use crate::state_machine::orders::Chunk;
use crate::state_machine::orders::FrozenOrders;
use crate::state_machine::state::FrozenLedger;
use crate::state_machine::state::LedgerState;
use crate::state_machine::state::OrderEvent;
use crate::state_machine::state::OrderRecord;
use crate::state_machine::state::OrderState;
use crate::state_machine::state::Reservation;
use crate::state_machine::state::SkuId;

impl LedgerState {
    /// Splits the shard at `at`: afterwards `self` holds exactly the SKUs below `at` and the
    /// returned state the SKUs at or above it, each with everything that belongs to its SKUs
    /// (see the module docs). `at` must be a valid SKU (1..=128 bytes); either half may end up
    /// without SKUs. `Err` (a state whose parts do not fit together, or a bad `at`) leaves
    /// `self` unchanged.
    pub fn split_off(&mut self, at: &[u8]) -> Result<LedgerState, String> {
        limits::check_sku(at).map_err(|invalid| format!("split point: {invalid}"))?;
        let (left, right) = split_frozen(self.frozen(), at)?;
        let left = checked_state(left, "left half")?;
        let right = checked_state(right, "right half")?;
        *self = left;
        Ok(right)
    }

    /// Merges `right`, the half of an adjacent shard just above this one, into `self`: every
    /// SKU of `right` must sort after every SKU of `self`, and both must have the same settings
    /// (hash key, window, margin, shipping), else `Err`. `right`'s orders and unshipped order
    /// events are appended after `self`'s, renumbered; the clock is the later of the two.
    ///
    /// An order id kept by both halves (a client reused it for SKUs that were in different
    /// shards: the halves could not see each other) keeps `self`'s record; `right`'s is dropped
    /// if it holds no units (its event, if any, still ships), and the merge is refused while
    /// it holds a reservation (the merged shard could not tell the two apart). `Err` leaves
    /// `self` unchanged.
    pub fn absorb(&mut self, right: LedgerState) -> Result<(), String> {
        if self.settings != right.settings {
            return Err(format!(
                "cannot merge shards with different settings: {:?} and {:?}",
                self.settings, right.settings
            ));
        }
        if let (Some((highest_left, _)), Some((lowest_right, _))) =
            (self.skus.last_key_value(), right.skus.first_key_value())
            && highest_left >= lowest_right
        {
            return Err(format!(
                "cannot merge: sku {lowest_right:?} of the right shard does not sort after sku {highest_left:?} of the left one"
            ));
        }
        let merged = merge_frozen(self, right.frozen())?;
        *self = checked_state(merged, "merged shard")?;
        Ok(())
    }
}

/// Loads `frozen` with a snapshot's checks, then checks every SKU's invariant.
fn checked_state(frozen: FrozenLedger, what: &str) -> Result<LedgerState, String> {
    let state = LedgerState::from_frozen(frozen).map_err(|error| format!("{what}: {error}"))?;
    state.check_all().map_err(|violation| format!("{what}: {violation}"))?;
    Ok(state)
}

/// Which half a SKU number goes to, and its number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Left(SkuId),
    Right(SkuId),
    /// [`SkuId::NONE`]: an order that named no SKU the shard had.
    Both,
}

/// Each SKU number's placement, from the SKU names; and each half's names, by new number.
struct Renumbering {
    placements: Vec<Placement>,
    left_names: Vec<Sku>,
    right_names: Vec<Sku>,
}

impl Renumbering {
    fn new(sku_names: &[Sku], at: &[u8]) -> Renumbering {
        let mut renumbering = Renumbering {
            placements: Vec::with_capacity(sku_names.len()),
            left_names: Vec::new(),
            right_names: Vec::new(),
        };
        for name in sku_names {
            let placement = if name.as_slice() < at {
                renumbering.left_names.push(name.clone());
                Placement::Left(SkuId(renumbering.left_names.len() as u32 - 1))
            } else {
                renumbering.right_names.push(name.clone());
                Placement::Right(SkuId(renumbering.right_names.len() as u32 - 1))
            };
            renumbering.placements.push(placement);
        }
        renumbering
    }

    fn place(&self, sku: SkuId) -> Result<Placement, String> {
        if sku == SkuId::NONE {
            return Ok(Placement::Both);
        }
        self.placements
            .get(sku.0 as usize)
            .copied()
            .ok_or_else(|| format!("sku number {} names no sku", sku.0))
    }
}

/// Packs order records, in order, into full chunks (all but the last), as an `OrderBook` keeps
/// them. A chunk's creation time is the newest of the chunks its records came from, so that no
/// record leaves the idempotency window earlier than it did where it came from.
struct ChunkPacker {
    first_seq: u64,
    chunks: Vec<Arc<Chunk>>,
    filling: Option<Chunk>,
}

impl ChunkPacker {
    fn new(first_seq: u64) -> ChunkPacker {
        ChunkPacker {
            first_seq,
            chunks: Vec::new(),
            filling: None,
        }
    }

    /// Appends `record`, created no later than `created_by_ms`; returns its sequence number.
    fn push(&mut self, record: OrderRecord, created_by_ms: u64) -> u64 {
        if self
            .filling
            .as_ref()
            .is_some_and(|chunk| chunk.records.len() == CHUNK_RECORDS)
            && let Some(full) = self.filling.take()
        {
            self.chunks.push(Arc::new(full));
        }
        let chunk = self.filling.get_or_insert_with(|| Chunk {
            newest_created_ms: created_by_ms,
            records: Vec::with_capacity(CHUNK_RECORDS),
        });
        chunk.newest_created_ms = chunk.newest_created_ms.max(created_by_ms);
        chunk.records.push(record);
        self.first_seq + (self.chunks.len() * CHUNK_RECORDS + chunk.records.len() - 1) as u64
    }

    fn finish(mut self) -> FrozenOrders {
        self.chunks.extend(self.filling.take().map(Arc::new));
        FrozenOrders {
            first_seq: self.first_seq,
            chunks: self.chunks,
        }
    }
}

/// Every retained order with its sequence number and the creation time of its chunk.
fn orders_of(orders: &FrozenOrders) -> impl Iterator<Item = (u64, OrderRecord, u64)> + '_ {
    orders
        .chunks
        .iter()
        .flat_map(|chunk| chunk.records.iter().map(|record| (*record, chunk.newest_created_ms)))
        .enumerate()
        .map(|(offset, (record, created_by_ms))| (orders.first_seq + offset as u64, record, created_by_ms))
}

/// A moved order's event sequence number: renumbered while its event waits to be shipped,
/// `u64::MAX` (nothing to wait for) once it was shipped or if it never had one.
fn moved_event_seq(
    record: &OrderRecord,
    renumbered: &BTreeMap<u64, u64>,
    shipped_below_seq: u64,
) -> Result<u64, String> {
    if record.event_seq == u64::MAX || record.event_seq < shipped_below_seq {
        return Ok(u64::MAX);
    }
    renumbered
        .get(&record.event_seq)
        .copied()
        .ok_or_else(|| format!("an order names event {}, which is not kept", record.event_seq))
}

/// Live reservations, their orders' sequence numbers changed by `moved` (old to new).
fn moved_reservations(
    reservations: impl Iterator<Item = ((u64, u64), Reservation)>,
    moved: &BTreeMap<u64, u64>,
) -> Result<BTreeMap<(u64, u64), Reservation>, String> {
    reservations
        .map(|((expires_at_ms, seq), reservation)| {
            let new_seq = moved
                .get(&seq)
                .ok_or_else(|| format!("a reservation names order {seq}, which is not a reserved order"))?;
            Ok(((expires_at_ms, *new_seq), reservation))
        })
        .collect()
}

/// The two halves of `whole` at `at` (see the module docs).
fn split_frozen(whole: FrozenLedger, at: &[u8]) -> Result<(FrozenLedger, FrozenLedger), String> {
    let renumbering = Renumbering::new(&whole.sku_names, at);
    let mut left_skus = whole.skus;
    let mut right_skus = left_skus.split_off(at);
    for record in left_skus.values_mut().chain(right_skus.values_mut()) {
        record.id = match renumbering.place(record.id)? {
            Placement::Left(id) | Placement::Right(id) => id,
            Placement::Both => return Err("a sku record has no number".into()),
        };
    }

    let mut left_events = whole.order_events;
    let right_events_old: BTreeMap<u64, OrderEvent> = {
        let (right, left): (BTreeMap<_, _>, BTreeMap<_, _>) = left_events
            .into_iter()
            .partition(|(_, event)| event.sku.as_slice() >= at);
        left_events = left;
        right
    };
    let right_event_numbers: BTreeMap<u64, u64> = right_events_old
        .keys()
        .enumerate()
        .map(|(new_seq, old_seq)| (*old_seq, new_seq as u64))
        .collect();
    let right_events: BTreeMap<u64, OrderEvent> = right_events_old
        .into_values()
        .enumerate()
        .map(|(new_seq, event)| (new_seq as u64, event))
        .collect();

    let mut left_orders = ChunkPacker::new(whole.orders.first_seq);
    let mut right_orders = ChunkPacker::new(0);
    let (mut left_reserved, mut right_reserved) = (BTreeMap::new(), BTreeMap::new());
    for (seq, mut record, created_by_ms) in orders_of(&whole.orders) {
        match renumbering.place(record.sku)? {
            Placement::Left(id) => {
                record.sku = id;
                let new_seq = left_orders.push(record, created_by_ms);
                if record.state == OrderState::Reserved {
                    left_reserved.insert(seq, new_seq);
                }
            }
            Placement::Right(id) => {
                record.sku = id;
                record.event_seq = moved_event_seq(&record, &right_event_numbers, whole.shipped_below_seq)?;
                let new_seq = right_orders.push(record, created_by_ms);
                if record.state == OrderState::Reserved {
                    right_reserved.insert(seq, new_seq);
                }
            }
            Placement::Both => {
                if record.state == OrderState::Reserved || record.event_seq != u64::MAX {
                    return Err(format!("order {seq} names no sku yet holds units"));
                }
                left_orders.push(record, created_by_ms);
                right_orders.push(record, created_by_ms);
            }
        }
    }

    let (mut left_reservations, mut right_reservations) = (Vec::new(), Vec::new());
    for (key, reservation) in whole.reservations {
        if left_reserved.contains_key(&key.1) {
            left_reservations.push((key, reservation));
        } else {
            right_reservations.push((key, reservation));
        }
    }

    let (mut left_holdings, mut right_holdings) = (Vec::new(), Vec::new());
    for (sku, holders) in whole.holdings {
        match renumbering.place(sku)? {
            Placement::Left(id) => left_holdings.push((id, holders)),
            Placement::Right(id) => right_holdings.push((id, holders)),
            Placement::Both => return Err("holders of no sku".into()),
        }
    }

    let left = FrozenLedger {
        settings: whole.settings,
        skus: left_skus,
        sku_names: renumbering.left_names,
        orders: left_orders.finish(),
        holdings: left_holdings,
        reservations: moved_reservations(left_reservations.into_iter(), &left_reserved)?,
        order_events: left_events,
        next_event_seq: whole.next_event_seq,
        shipped_below_seq: whole.shipped_below_seq,
        shipped_by: whole.shipped_by,
        clock_ms: whole.clock_ms,
    };
    let right = FrozenLedger {
        settings: whole.settings,
        skus: right_skus,
        sku_names: renumbering.right_names,
        orders: right_orders.finish(),
        holdings: right_holdings,
        reservations: moved_reservations(right_reservations.into_iter(), &right_reserved)?,
        next_event_seq: right_events.len() as u64,
        order_events: right_events,
        shipped_below_seq: 0,
        shipped_by: 0,
        clock_ms: whole.clock_ms,
    };
    Ok((left, right))
}

/// `left` with `right` appended (see [`LedgerState::absorb`]); `left` is read for its order
/// index, to find order ids both halves keep.
fn merge_frozen(left: &LedgerState, right: FrozenLedger) -> Result<FrozenLedger, String> {
    let mut merged = left.frozen();
    if merged.sku_names.len() + right.sku_names.len() >= SkuId::NONE.0 as usize {
        return Err("cannot merge: too many skus for one shard".into());
    }
    let offset = merged.sku_names.len() as u32;
    let renumber = |sku: SkuId| {
        if sku == SkuId::NONE { sku } else { SkuId(sku.0 + offset) }
    };

    let right_event_numbers: BTreeMap<u64, u64> = right
        .order_events
        .keys()
        .enumerate()
        .map(|(rank, old_seq)| (*old_seq, merged.next_event_seq + rank as u64))
        .collect();

    let mut orders = ChunkPacker::new(merged.orders.first_seq);
    for (_, record, created_by_ms) in orders_of(&merged.orders) {
        orders.push(record, created_by_ms);
    }
    let mut right_reserved = BTreeMap::new();
    for (seq, mut record, created_by_ms) in orders_of(&right.orders) {
        if left.orders.find(record.key).is_some() {
            if record.state == OrderState::Reserved {
                return Err(format!(
                    "cannot merge: order {seq} of the right shard holds a reservation under an order id the left shard also keeps"
                ));
            }
            continue;
        }
        record.sku = renumber(record.sku);
        record.event_seq = moved_event_seq(&record, &right_event_numbers, right.shipped_below_seq)?;
        let new_seq = orders.push(record, created_by_ms);
        if record.state == OrderState::Reserved {
            right_reserved.insert(seq, new_seq);
        }
    }
    merged.orders = orders.finish();
    merged
        .reservations
        .extend(moved_reservations(right.reservations.into_iter(), &right_reserved)?);

    // In the order of their old numbers, as `right_event_numbers` numbered them.
    let first_new_event_seq = merged.next_event_seq;
    merged.next_event_seq += right_event_numbers.len() as u64;
    merged.order_events.extend(
        (right.order_events.into_values())
            .enumerate()
            .map(|(rank, event)| (first_new_event_seq + rank as u64, event)),
    );

    for (name, mut record) in right.skus {
        record.id = renumber(record.id);
        merged.skus.insert(name, record);
    }
    merged.sku_names.extend(right.sku_names);
    merged.holdings.extend(
        right
            .holdings
            .into_iter()
            .map(|(sku, holders)| (renumber(sku), holders)),
    );
    merged.clock_ms = merged.clock_ms.max(right.clock_ms);
    Ok(merged)
}
