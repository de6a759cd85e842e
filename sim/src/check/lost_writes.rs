//! No acknowledged write is lost: every decided answer a client received is reflected in the
//! final state, and each SKU's sold and reserved counts are exactly what its orders add up to.

use std::collections::BTreeMap;

use flashledger_client::Outcome;
use flashledger_client::WriteOp;
use ledger::state_machine::state::LedgerState;
use ledger::state_machine::state::OrderRecord;
use ledger::state_machine::state::OrderState;

use crate::history::Answer;
use crate::history::Call;
use crate::history::History;

/// `ledgers`: the final state of every shard. Returns how many answers were verified.
pub fn check(history: &History, ledgers: &[&LedgerState]) -> Result<usize, String> {
    let orders: BTreeMap<&str, &OrderRecord> = ledgers
        .iter()
        .flat_map(|ledger| ledger.orders.iter().map(|(id, order)| (id.as_str(), order)))
        .collect();
    let sku_exists = |sku: &[u8]| ledgers.iter().any(|ledger| ledger.skus.contains_key(sku));
    let mut verified = 0;
    for op in &history.ops {
        let (Call::Write(write), Answer::Outcome(outcome)) = (&op.call, &op.answer) else {
            continue;
        };
        let state = |order_id: &str| orders.get(order_id).map(|order| order.state);
        let lost = match (write, outcome) {
            (WriteOp::Reserve { order_id, .. }, Outcome::Reserved { .. }) => {
                !matches!(state(order_id), Some(s) if !matches!(s, OrderState::Rejected { .. }))
            }
            (WriteOp::Purchase { order_id, .. }, Outcome::Confirmed)
            | (WriteOp::Confirm { order_id, .. }, Outcome::Confirmed) => {
                !matches!(state(order_id), Some(OrderState::Confirmed { .. }))
            }
            (WriteOp::Cancel { order_id, .. }, Outcome::Released) => {
                !matches!(state(order_id), Some(OrderState::Released))
            }
            (WriteOp::PutSku { sku, .. }, Outcome::Ok) => !sku_exists(sku),
            _ => continue,
        };
        if lost {
            let order_id = match write {
                WriteOp::Reserve { order_id, .. }
                | WriteOp::Purchase { order_id, .. }
                | WriteOp::Confirm { order_id, .. }
                | WriteOp::Cancel { order_id, .. } => orders.get(order_id.as_str()).map(|o| format!("{:?}", o.state)),
                _ => None,
            };
            return Err(format!(
                "acknowledged write missing from the final state: {} (final order state: {})",
                op.describe(),
                order_id.unwrap_or_else(|| "absent".into())
            ));
        }
        verified += 1;
    }
    for ledger in ledgers {
        for (sku, record) in &ledger.skus {
            let (mut sold, mut reserved) = (0u64, 0u64);
            for order in ledger.orders.values().filter(|order| order.sku == *sku) {
                match order.state {
                    OrderState::Confirmed { .. } => sold += order.qty,
                    OrderState::Reserved { .. } => reserved += order.qty,
                    _ => {}
                }
            }
            if (sold, reserved) != (record.sold, record.reserved) {
                return Err(format!(
                    "sku {:?} counts sold {} reserved {}, but its orders add up to sold {sold} reserved {reserved}",
                    String::from_utf8_lossy(sku),
                    record.sold,
                    record.reserved
                ));
            }
        }
    }
    Ok(verified)
}
