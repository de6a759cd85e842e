//! Every confirmed order appears exactly once in the order-event stream: the recording sink
//! (standing in for sharded PostgreSQL) must hold each confirmed order of the final state once,
//! with its SKU, quantity and user, every order a client was told is confirmed (kept or already
//! pruned), and nothing that was never asked for.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use flashledger_client::Outcome;
use flashledger_client::WriteOp;
use ledger::shipping::sink::Recorded;
use ledger::state_machine::state::LedgerState;
use ledger::state_machine::state::OrderKind;
use ledger::state_machine::state::OrderState;

use crate::history::Answer;
use crate::history::Call;
use crate::history::History;

/// Returns how many orders were shipped.
pub fn check(history: &History, ledgers: &[&LedgerState], recorded: &Recorded) -> Result<usize, String> {
    let mut shipped: BTreeMap<&str, usize> = BTreeMap::new();
    for orders in recorded.orders.values() {
        for order in orders {
            *shipped.entry(order.order_id.as_str()).or_default() += 1;
        }
    }
    if let Some((order_id, count)) = shipped.iter().find(|(_, count)| **count > 1) {
        return Err(format!("order {order_id} was shipped {count} times"));
    }
    // An order the sink skipped as already there may come again only as an event handed over:
    // by a split to the new shard, or by a merge back into the shard it left, under a new
    // sequence number there. Its own shard shipping the same event (same shard, same sequence
    // number) twice is a shipper that lost its watermark (Postgres would hide it; the checker
    // must not).
    let mut deliveries: BTreeSet<(&str, u64, u64)> = BTreeSet::new();
    for order in recorded.orders.values().flatten() {
        deliveries.insert((order.order_id.as_str(), order.ledger_shard, order.event_seq));
    }
    for again in &recorded.skipped {
        if !deliveries.insert((again.order_id.as_str(), again.ledger_shard, again.event_seq)) {
            return Err(format!(
                "order {} was shipped twice by shard {} as its event {}",
                again.order_id, again.ledger_shard, again.event_seq
            ));
        }
    }
    // Every order a client was told is confirmed must have reached the sink, kept or pruned.
    for op in &history.ops {
        let (Call::Write(write), Answer::Outcome(Outcome::Confirmed)) = (&op.call, &op.answer) else {
            continue;
        };
        if let WriteOp::Purchase { order_id, .. } | WriteOp::Confirm { order_id, .. } = write
            && !shipped.contains_key(order_id.as_str())
        {
            return Err(format!(
                "confirmed order {order_id} never reached the sink ({})",
                op.describe()
            ));
        }
    }
    // Anything shipped must have been asked for.
    let asked: BTreeSet<&str> = history
        .ops
        .iter()
        .filter_map(|op| match &op.call {
            Call::Write(WriteOp::Purchase { order_id, .. } | WriteOp::Confirm { order_id, .. }) => {
                Some(order_id.as_str())
            }
            _ => None,
        })
        .collect();
    if let Some(order_id) = shipped.keys().find(|order_id| !asked.contains(*order_id)) {
        return Err(format!("order {order_id} reached the sink but no client confirmed it"));
    }
    // The ledger keeps orders under keyed hashes of their ids: check each shipped id against
    // the shard that keeps it, then that every kept confirmed order was matched by one.
    for ledger in ledgers {
        let hash_key = ledger.settings.hash_key;
        let kept_confirmed = ledger
            .orders
            .iter()
            .filter(|(_, order)| order.state == OrderState::Confirmed)
            .count();
        let mut matched = 0;
        for shipped_order in recorded.orders.values().flatten() {
            let Some(order) = ledger.order(&shipped_order.order_id) else {
                continue;
            };
            if order.state != OrderState::Confirmed {
                return Err(format!(
                    "order {} reached the sink but is {:?} in the final state",
                    shipped_order.order_id, order.state
                ));
            }
            let request = hash_key.request(
                order.kind == OrderKind::Purchase,
                &shipped_order.sku,
                shipped_order.qty,
                &shipped_order.user,
            );
            if ledger.sku_name(order.sku) != Some(&shipped_order.sku)
                || u64::from(order.qty) != shipped_order.qty
                || request != order.request
            {
                return Err(format!(
                    "order {} reached the sink with other fields than {order:?}: {shipped_order:?}",
                    shipped_order.order_id
                ));
            }
            matched += 1;
        }
        if matched != kept_confirmed {
            return Err(format!(
                "{} confirmed orders of a shard never reached the sink",
                kept_confirmed - matched
            ));
        }
    }
    Ok(shipped.len())
}
