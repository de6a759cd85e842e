//! A refusal is a promise: a write the cluster answered "not applied" (shed for overload,
//! dropped for its deadline, rate limited, or any other answer the client library calls
//! definitely not applied) must never show up in the state, nor in the order stream.
//!
//! Order ids are unique per logical write, and the buyers retry a write only after an
//! ambiguous answer, so an order id all of whose calls were refused was never applied: its order
//! must exist in no final ledger and must never have been shipped. A confirm all of whose calls
//! were refused (and that no purchase of the order stands in for) must not have confirmed its
//! order. Pruning only removes orders, so it cannot hide a wrong presence; it can hide a wrong
//! application of an order old enough to be pruned, which the other checkers then see (units
//! sold that no answer accounts for).

use std::collections::BTreeMap;

use flashledger_client::WriteOp;
use ledger::shipping::sink::Recorded;
use ledger::state_machine::state::LedgerState;
use ledger::state_machine::state::OrderState;

use crate::history::Answer;
use crate::history::Call;
use crate::history::History;

/// What the calls for one order id were answered.
#[derive(Default)]
struct Calls {
    /// Calls that took or bought the order (reserve, purchase): all refused?
    takes_refused: bool,
    takes: usize,
    /// Confirms of the order: all refused?
    confirms_refused: bool,
    confirms: usize,
}

/// Returns how many refused writes were checked.
pub fn check(history: &History, ledgers: &[&LedgerState], recorded: &Recorded) -> Result<usize, String> {
    let mut orders: BTreeMap<&str, Calls> = BTreeMap::new();
    for op in &history.ops {
        let Call::Write(write) = &op.call else { continue };
        let refused = matches!(op.answer, Answer::Failed(_));
        match write {
            WriteOp::Reserve { order_id, .. } | WriteOp::Purchase { order_id, .. } => {
                let calls = orders.entry(order_id).or_default();
                calls.takes_refused = refused && (calls.takes == 0 || calls.takes_refused);
                calls.takes += 1;
            }
            WriteOp::Confirm { order_id, .. } => {
                let calls = orders.entry(order_id).or_default();
                calls.confirms_refused = refused && (calls.confirms == 0 || calls.confirms_refused);
                calls.confirms += 1;
            }
            _ => {}
        }
    }
    let shipped = |order_id: &str| {
        recorded
            .orders
            .values()
            .flatten()
            .any(|order| order.order_id == order_id)
    };
    let kept = |order_id: &str| {
        ledgers
            .iter()
            .find_map(|ledger| ledger.order(order_id).map(|order| order.state))
    };
    let mut checked = 0;
    for (order_id, calls) in &orders {
        if calls.takes > 0 && calls.takes_refused {
            checked += calls.takes;
            if let Some(state) = kept(order_id) {
                return Err(format!(
                    "order {order_id} is in the final state ({state:?}), but every call that could take it was \
                     refused as not applied"
                ));
            }
            if shipped(order_id) {
                return Err(format!(
                    "order {order_id} was shipped, but every call that could take it was refused as not applied"
                ));
            }
        } else if calls.confirms > 0 && calls.confirms_refused && !purchased(history, order_id) {
            checked += calls.confirms;
            if kept(order_id) == Some(OrderState::Confirmed) {
                return Err(format!(
                    "order {order_id} is confirmed in the final state, but every confirm of it was refused as not applied"
                ));
            }
        }
    }
    Ok(checked)
}

/// Whether `order_id` was (or may have been) bought outright, which confirms it without a confirm.
fn purchased(history: &History, order_id: &str) -> bool {
    history.ops.iter().any(|op| {
        matches!(&op.call, Call::Write(WriteOp::Purchase { order_id: id, .. }) if id == order_id)
            && !matches!(op.answer, Answer::Failed(_))
    })
}
