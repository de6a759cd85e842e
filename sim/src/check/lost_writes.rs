//! No acknowledged write is lost: every decided answer a client received is reflected in the
//! final state, and each SKU's sold and reserved counts are exactly what its orders add up to.

use flashledger_client::Outcome;
use flashledger_client::WriteOp;
use ledger::state_machine::state::LedgerState;
use ledger::state_machine::state::OrderState;

use crate::history::Answer;
use crate::history::Call;
use crate::history::History;

/// `ledgers`: the final state of every shard. Returns how many answers were verified.
pub fn check(history: &History, ledgers: &[&LedgerState]) -> Result<usize, String> {
    // Orders are kept under keyed hashes of their ids: look each id up in every shard.
    let order = |order_id: &str| ledgers.iter().find_map(|ledger| ledger.order(order_id));
    let sku_exists = |sku: &[u8]| ledgers.iter().any(|ledger| ledger.skus.contains_key(sku));
    let mut verified = 0;
    for op in &history.ops {
        let (Call::Write(write), Answer::Outcome(outcome)) = (&op.call, &op.answer) else {
            continue;
        };
        let state = |order_id: &str| order(order_id).map(|order| order.state);
        let lost = match (write, outcome) {
            (WriteOp::Reserve { order_id, .. }, Outcome::Reserved { .. }) => {
                !matches!(state(order_id), Some(s) if !matches!(s, OrderState::Rejected))
            }
            (WriteOp::Purchase { order_id, .. }, Outcome::Confirmed)
            | (WriteOp::Confirm { order_id, .. }, Outcome::Confirmed) => {
                !matches!(state(order_id), Some(OrderState::Confirmed))
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
                | WriteOp::Cancel { order_id, .. } => order(order_id).map(|o| format!("{:?}", o.state)),
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
            for (_, order) in ledger.orders.iter().filter(|(_, order)| order.sku == record.id) {
                match order.state {
                    OrderState::Confirmed => sold += u64::from(order.qty),
                    OrderState::Reserved => reserved += u64::from(order.qty),
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
