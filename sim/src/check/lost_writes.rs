//! No acknowledged write is lost: every decided answer a client received is reflected in the
//! final state, unless its order was legitimately pruned, and each SKU's reserved count is
//! exactly what its kept reservations add up to (sold at least what its kept sales do: sold
//! orders leave at the end of the idempotency window).
//!
//! Pruning is legitimate only past the window: an order whose first attempt was at `f` is
//! created at a log time `c >= f - margin` and pruned at `t >= c + window`, so an acknowledged
//! order may be missing only from a shard whose final log time is at least
//! `f + window - margin`. A missing order inside that bound was pruned inside the window, which
//! would let a retry buy it again.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use flashledger_client::Outcome;
use flashledger_client::WriteOp;
use ledger::state_machine::state::LedgerState;
use ledger::state_machine::state::OrderState;

use crate::history::Answer;
use crate::history::Call;
use crate::history::History;

/// `ledgers`: the final state of every shard. Returns how many answers were verified in the
/// final state, and how many were about orders legitimately pruned.
pub fn check(history: &History, ledgers: &[&LedgerState]) -> Result<(usize, usize), String> {
    // Orders are kept under keyed hashes of their ids: look each id up in every shard.
    let order = |order_id: &str| ledgers.iter().find_map(|ledger| ledger.order(order_id));
    let sku_exists = |sku: &[u8]| ledgers.iter().any(|ledger| ledger.skus.contains_key(sku));
    let first_attempts = first_attempts(history);
    let mut verified = 0;
    let mut pruned = 0;
    for op in &history.ops {
        let (Call::Write(write), Answer::Outcome(outcome)) = (&op.call, &op.answer) else {
            continue;
        };
        let state = |order_id: &str| order(order_id).map(|order| order.state);
        let (lost, order_id) = match (write, outcome) {
            (WriteOp::Reserve { order_id, .. }, Outcome::Reserved { .. }) => (
                !matches!(state(order_id), Some(s) if s != OrderState::Rejected),
                order_id,
            ),
            (WriteOp::Purchase { order_id, .. }, Outcome::Confirmed)
            | (WriteOp::Confirm { order_id, .. }, Outcome::Confirmed) => {
                (state(order_id) != Some(OrderState::Confirmed), order_id)
            }
            (WriteOp::Cancel { order_id, .. }, Outcome::Released) => {
                (state(order_id) != Some(OrderState::Released), order_id)
            }
            (WriteOp::PutSku { sku, .. }, Outcome::Ok) => {
                if !sku_exists(sku) {
                    return Err(format!(
                        "acknowledged write missing from the final state: {}",
                        op.describe()
                    ));
                }
                verified += 1;
                continue;
            }
            _ => continue,
        };
        if lost {
            let kept = order(order_id).map(|o| format!("{:?}", o.state));
            if kept.is_none() && may_be_pruned(ledgers, write.sku(), first_attempts.get(order_id.as_str())) {
                pruned += 1;
                continue;
            }
            return Err(format!(
                "acknowledged write missing from the final state: {} (final order state: {})",
                op.describe(),
                kept.unwrap_or_else(|| "absent, inside the idempotency window".into())
            ));
        }
        verified += 1;
    }
    for ledger in ledgers {
        for (sku, record) in &ledger.skus {
            let (mut sold, mut reserved) = (0u64, 0u64);
            for (_, order) in ledger.orders.iter().filter(|(_, order)| order.sku == record.id) {
                match order.state {
                    OrderState::Confirmed => sold += u64::from(order.qty),
                    OrderState::Reserved => reserved += u64::from(order.qty),
                    _ => {}
                }
            }
            // Reservations are never pruned; sales are, once past the window.
            if reserved != record.reserved || sold > record.sold {
                return Err(format!(
                    "sku {:?} counts sold {} reserved {}, but its kept orders add up to sold {sold} reserved {reserved}",
                    String::from_utf8_lossy(sku),
                    record.sold,
                    record.reserved
                ));
            }
        }
    }
    Ok((verified, pruned))
}

/// The earliest `first_attempt_ms` any write of each order carried: the stamp of the write that
/// created it is at least this.
pub fn first_attempts(history: &History) -> BTreeMap<&str, i64> {
    let mut first: BTreeMap<&str, i64> = BTreeMap::new();
    for op in &history.ops {
        let Call::Write(write) = &op.call else { continue };
        let (order_id, stamp) = match write {
            WriteOp::Reserve {
                order_id,
                first_attempt_ms,
                ..
            }
            | WriteOp::Purchase {
                order_id,
                first_attempt_ms,
                ..
            }
            | WriteOp::Confirm {
                order_id,
                first_attempt_ms,
                ..
            }
            | WriteOp::Cancel {
                order_id,
                first_attempt_ms,
                ..
            } => (order_id.as_str(), *first_attempt_ms),
            WriteOp::PutSku { .. } | WriteOp::Restock { .. } => continue,
        };
        let earliest = first.entry(order_id).or_insert(stamp);
        *earliest = (*earliest).min(stamp);
    }
    first
}

/// Whether an order of `sku` first attempted at `first_attempt_ms` may have been pruned: its
/// shard's final log time is past the idempotency window measured from that stamp.
pub fn may_be_pruned(ledgers: &[&LedgerState], sku: &[u8], first_attempt_ms: Option<&i64>) -> bool {
    let Some(&first_attempt_ms) = first_attempt_ms else {
        return false;
    };
    let Some(ledger) = ledgers.iter().find(|ledger| ledger.skus.contains_key(sku)) else {
        return false;
    };
    let settings = ledger.settings;
    let horizon = u64::try_from(first_attempt_ms).unwrap_or(0).saturating_add(
        settings
            .idempotency_window_ms
            .saturating_sub(settings.clock_skew_margin_ms),
    );
    ledger.clock_ms >= horizon
}

/// Order ids of indeterminate reserves and purchases that the final state shows never took
/// effect: no shard keeps the order and it cannot have been pruned yet. (A write that took
/// effect as a sold-out answer changed nothing either.)
pub fn never_happened(history: &History, ledgers: &[&LedgerState]) -> BTreeSet<String> {
    if ledgers.is_empty() {
        return BTreeSet::new();
    }
    let first_attempts = first_attempts(history);
    history
        .ops
        .iter()
        .filter_map(|op| match (&op.call, &op.answer) {
            (
                Call::Write(write @ (WriteOp::Reserve { order_id, .. } | WriteOp::Purchase { order_id, .. })),
                Answer::Indeterminate(_),
            ) => Some((write, order_id)),
            _ => None,
        })
        .filter(|(write, order_id)| {
            ledgers.iter().all(|ledger| ledger.order(order_id).is_none())
                && ledgers.iter().any(|ledger| ledger.skus.contains_key(write.sku()))
                && !may_be_pruned(ledgers, write.sku(), first_attempts.get(order_id.as_str()))
        })
        .map(|(_, order_id)| order_id.clone())
        .collect()
}
