//! Every confirmed order appears exactly once in the order-event stream: the recording sink
//! (standing in for sharded PostgreSQL) must hold each confirmed order of the final state once,
//! with its SKU, quantity and user, and nothing else.

use std::collections::BTreeMap;

use ledger::shipping::sink::Recorded;
use ledger::state_machine::state::LedgerState;
use ledger::state_machine::state::OrderKind;
use ledger::state_machine::state::OrderState;

/// Returns how many orders were shipped.
pub fn check(ledgers: &[&LedgerState], recorded: &Recorded) -> Result<usize, String> {
    let mut shipped: BTreeMap<&str, usize> = BTreeMap::new();
    for orders in recorded.orders.values() {
        for order in orders {
            *shipped.entry(order.order_id.as_str()).or_default() += 1;
        }
    }
    if let Some((order_id, count)) = shipped.iter().find(|(_, count)| **count > 1) {
        return Err(format!("order {order_id} was shipped {count} times"));
    }
    // The ledger keeps orders under keyed hashes of their ids: check each shipped id against
    // the shard that keeps it, then that every confirmed order was matched by one.
    let mut confirmed = 0;
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
                continue;
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
            shipped.remove(shipped_order.order_id.as_str());
            matched += 1;
        }
        if matched != kept_confirmed {
            return Err(format!(
                "{} confirmed orders of a shard never reached the sink",
                kept_confirmed - matched
            ));
        }
        confirmed += kept_confirmed;
    }
    if let Some(order_id) = shipped.keys().next() {
        return Err(format!(
            "order {order_id} reached the sink but is not confirmed in the final state ({} such orders)",
            shipped.len()
        ));
    }
    Ok(confirmed)
}
