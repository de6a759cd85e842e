//! Every confirmed order appears exactly once in the order-event stream: the recording sink
//! (standing in for sharded PostgreSQL) must hold each confirmed order of the final state once,
//! with its SKU, quantity and user, and nothing else.

use std::collections::BTreeMap;

use ledger::shipping::sink::Recorded;
use ledger::state_machine::state::LedgerState;
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
    let mut confirmed = 0;
    for ledger in ledgers {
        for (order_id, order) in ledger.orders.iter() {
            if !matches!(order.state, OrderState::Confirmed { .. }) {
                continue;
            }
            confirmed += 1;
            if shipped.remove(order_id.as_str()).is_none() {
                return Err(format!("confirmed order {order_id} ({order:?}) never reached the sink"));
            }
            let matches = recorded.orders.values().flatten().any(|shipped| {
                shipped.order_id == *order_id
                    && shipped.sku == order.sku
                    && shipped.qty == order.qty
                    && shipped.user == order.user
            });
            if !matches {
                return Err(format!(
                    "order {order_id} reached the sink with other fields than {order:?}"
                ));
            }
        }
    }
    if let Some(order_id) = shipped.keys().next() {
        return Err(format!(
            "order {order_id} reached the sink but is not confirmed in the final state ({} such orders)",
            shipped.len()
        ));
    }
    Ok(confirmed)
}
