//! The sequential specification the linearizability checker searches against: one SKU of the
//! ledger, written independently of `ledger::state_machine` and small enough to copy in one
//! `memcpy` (orders are interned to indexes before the search, so a step allocates nothing).
//!
//! It covers what the simulated workload sends: put, restock, reserve, confirm, cancel and
//! purchase without sale rules, per-user limits or expiry (checked SKUs use reservations that
//! outlive the run). [`ModelOp::from_write`] refuses anything else, so the checker never judges a
//! history against semantics it does not model. Like the ledger, repeating a reserve or purchase
//! with the same `order_id` answers the first answer, and a different request under a used
//! `order_id` answers `OrderIdReused` — except after `SoldOut`, which records nothing.

use flashledger_client::Outcome;
use flashledger_client::WriteOp;

/// Units a SKU may hold (the ledger's `TOTAL_MAX`).
const TOTAL_MAX: u64 = 1_000_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Counts {
    pub total: u64,
    pub available: u64,
    pub reserved: u64,
    pub sold: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Reserve,
    Purchase,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum State {
    Reserved,
    Confirmed,
    Released,
    Rejected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Order {
    kind: Kind,
    qty: u64,
    user: u32,
    state: State,
    first: Answer,
}

/// What the model answers (client outcomes without their free text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Answer {
    Reserved,
    Confirmed,
    Released,
    Ok,
    SoldOut { available: u64 },
    UnknownSku,
    NotFound,
    AlreadyConfirmed,
    OrderIdReused,
    Rejected,
}

impl Answer {
    /// Whether the client saw this answer (expiry times and explanations are not compared).
    pub fn matches(self, observed: &Outcome) -> bool {
        match (self, observed) {
            (Answer::Reserved, Outcome::Reserved { .. })
            | (Answer::Confirmed, Outcome::Confirmed)
            | (Answer::Released, Outcome::Released)
            | (Answer::Ok, Outcome::Ok)
            | (Answer::UnknownSku, Outcome::UnknownSku)
            | (Answer::NotFound, Outcome::NotFound)
            | (Answer::AlreadyConfirmed, Outcome::AlreadyConfirmed)
            | (Answer::OrderIdReused, Outcome::OrderIdReused { .. })
            | (Answer::Rejected, Outcome::Rejected { .. }) => true,
            (Answer::SoldOut { available }, Outcome::SoldOut { available: seen }) => {
                u64::try_from(*seen).is_ok_and(|seen| seen == available)
            }
            _ => false,
        }
    }
}

/// One operation on the SKU, with its order and user interned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelOp {
    Put {
        total: u64,
    },
    Restock {
        delta: i64,
    },
    Take {
        kind_purchase: bool,
        qty: u64,
        user: u32,
        order: u32,
    },
    Confirm {
        order: u32,
    },
    Cancel {
        order: u32,
    },
    Read,
}

/// Interns order ids and users of one SKU's history.
#[derive(Default)]
pub struct Interner {
    orders: std::collections::HashMap<String, u32>,
    users: std::collections::HashMap<String, u32>,
}

impl Interner {
    fn order(&mut self, id: &str) -> u32 {
        let next = self.orders.len() as u32;
        *self.orders.entry(id.to_string()).or_insert(next)
    }

    fn user(&mut self, name: &str) -> u32 {
        let next = self.users.len() as u32;
        *self.users.entry(name.to_string()).or_insert(next)
    }

    pub fn order_count(&self) -> usize {
        self.orders.len()
    }
}

impl ModelOp {
    /// The model's form of a client write; `Err` for what the model does not cover.
    pub fn from_write(op: &WriteOp, interner: &mut Interner) -> Result<ModelOp, String> {
        let unsigned = |value: i64, what: &str| u64::try_from(value).map_err(|_| format!("negative {what} {value}"));
        Ok(match op {
            WriteOp::PutSku { total, rules, .. } => {
                if *rules != Default::default() {
                    return Err(format!("sale rules are not modelled: {rules:?}"));
                }
                ModelOp::Put {
                    total: unsigned(*total, "total")?,
                }
            }
            WriteOp::Restock { delta, .. } => ModelOp::Restock { delta: *delta },
            WriteOp::Reserve {
                qty, user, order_id, ..
            } => ModelOp::Take {
                kind_purchase: false,
                qty: unsigned(*qty, "qty")?,
                user: interner.user(user),
                order: interner.order(order_id),
            },
            WriteOp::Purchase {
                qty, user, order_id, ..
            } => ModelOp::Take {
                kind_purchase: true,
                qty: unsigned(*qty, "qty")?,
                user: interner.user(user),
                order: interner.order(order_id),
            },
            WriteOp::Confirm { order_id, .. } => ModelOp::Confirm {
                order: interner.order(order_id),
            },
            WriteOp::Cancel { order_id, .. } => ModelOp::Cancel {
                order: interner.order(order_id),
            },
        })
    }
}

/// One SKU's state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SkuModel {
    pub counts: Option<Counts>,
    orders: Vec<Option<Order>>,
}

impl SkuModel {
    pub fn new(order_count: usize) -> SkuModel {
        SkuModel {
            counts: None,
            orders: vec![None; order_count],
        }
    }

    /// Applies `op`; returns its answer (`None` for a read).
    pub fn apply(&mut self, op: ModelOp) -> Option<Answer> {
        Some(match op {
            ModelOp::Read => return None,
            ModelOp::Put { total } if total > TOTAL_MAX => Answer::Rejected,
            ModelOp::Put { total } => {
                let counts = self.counts.get_or_insert(Counts {
                    total: 0,
                    available: 0,
                    reserved: 0,
                    sold: 0,
                });
                let held = counts.reserved + counts.sold;
                if total < held {
                    Answer::Rejected
                } else {
                    counts.total = total;
                    counts.available = total - held;
                    Answer::Ok
                }
            }
            // Malformed writes are refused before anything else (the ledger validates again).
            ModelOp::Restock { delta: 0 } | ModelOp::Take { qty: 0, .. } => Answer::Rejected,
            ModelOp::Restock { delta } => match &mut self.counts {
                None => Answer::UnknownSku,
                Some(counts) => {
                    let held = counts.reserved + counts.sold;
                    let total = i128::from(counts.total) + i128::from(delta);
                    if total < i128::from(held) || total > i128::from(TOTAL_MAX) {
                        Answer::Rejected
                    } else {
                        counts.total = total as u64;
                        counts.available = counts.total - held;
                        Answer::Ok
                    }
                }
            },
            ModelOp::Take {
                kind_purchase,
                qty,
                user,
                order,
            } => {
                let kind = if kind_purchase { Kind::Purchase } else { Kind::Reserve };
                if let Some(existing) = self.orders[order as usize] {
                    return Some(if (existing.kind, existing.qty, existing.user) == (kind, qty, user) {
                        existing.first
                    } else {
                        Answer::OrderIdReused
                    });
                }
                let (state, answer) = match &mut self.counts {
                    None => (State::Rejected, Answer::UnknownSku),
                    // Sold out records nothing: the order id stays unused.
                    Some(counts) if counts.available < qty => {
                        return Some(Answer::SoldOut {
                            available: counts.available,
                        });
                    }
                    Some(counts) => {
                        counts.available -= qty;
                        if kind_purchase {
                            counts.sold += qty;
                            (State::Confirmed, Answer::Confirmed)
                        } else {
                            counts.reserved += qty;
                            (State::Reserved, Answer::Reserved)
                        }
                    }
                };
                self.orders[order as usize] = Some(Order {
                    kind,
                    qty,
                    user,
                    state,
                    first: answer,
                });
                answer
            }
            ModelOp::Confirm { order } => match self.orders[order as usize] {
                None => Answer::NotFound,
                Some(Order {
                    state: State::Confirmed,
                    ..
                }) => Answer::Confirmed,
                Some(Order {
                    state: State::Released | State::Rejected,
                    ..
                }) => Answer::NotFound,
                Some(mut reserved) => {
                    if let Some(counts) = self.counts.as_mut() {
                        counts.reserved -= reserved.qty;
                        counts.sold += reserved.qty;
                    }
                    reserved.state = State::Confirmed;
                    self.orders[order as usize] = Some(reserved);
                    Answer::Confirmed
                }
            },
            ModelOp::Cancel { order } => match self.orders[order as usize] {
                None => Answer::NotFound,
                Some(Order {
                    state: State::Confirmed,
                    ..
                }) => Answer::AlreadyConfirmed,
                Some(Order {
                    state: State::Released, ..
                }) => Answer::Released,
                Some(Order {
                    state: State::Rejected, ..
                }) => Answer::NotFound,
                Some(mut reserved) => {
                    if let Some(counts) = self.counts.as_mut() {
                        counts.reserved -= reserved.qty;
                        counts.available += reserved.qty;
                    }
                    reserved.state = State::Released;
                    self.orders[order as usize] = Some(reserved);
                    Answer::Released
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use flashledger_client::SaleRules;
    use ledger::state_machine::command::CommandBody;
    use ledger::state_machine::command::LogCommand;
    use ledger::state_machine::state::LedgerState;

    use super::*;
    use crate::check::linearizability::to_ledger_operation;

    /// The model and the ledger's state machine answer the same on long random sequences of
    /// the operations the model covers: the yardstick is independent, but not different.
    #[test]
    fn the_model_agrees_with_the_ledger_state_machine() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound
        };
        for _round in 0..50 {
            let mut interner = Interner::default();
            let mut writes = Vec::new();
            for _ in 0..200 {
                let sku = b"s".to_vec();
                let order_id = format!("o{}", next(30));
                let user = format!("u{}", next(3));
                let qty = next(3) as i64 + 1;
                writes.push(match next(7) {
                    0 => WriteOp::PutSku {
                        sku,
                        total: next(12) as i64,
                        rules: SaleRules::default(),
                    },
                    1 => WriteOp::Restock {
                        sku,
                        delta: next(9) as i64 - 4,
                    },
                    2 => WriteOp::Reserve {
                        sku,
                        qty,
                        user,
                        order_id,
                        ttl: Some(std::time::Duration::from_secs(3_600)),
                        first_attempt_ms: 1,
                    },
                    3 => WriteOp::Purchase {
                        sku,
                        qty,
                        user,
                        order_id,
                        first_attempt_ms: 1,
                    },
                    4 | 5 => WriteOp::Confirm {
                        sku,
                        order_id,
                        first_attempt_ms: 1,
                    },
                    _ => WriteOp::Cancel {
                        sku,
                        order_id,
                        first_attempt_ms: 1,
                    },
                });
            }
            let ops: Vec<ModelOp> = writes
                .iter()
                .map(|w| ModelOp::from_write(w, &mut interner).unwrap())
                .collect();
            let mut model = SkuModel::new(interner.order_count());
            let mut ledger = LedgerState::default();
            for (index, (write, op)) in writes.iter().zip(ops).enumerate() {
                let command = LogCommand {
                    timestamp_ms: 1,
                    body: CommandBody::Batch(vec![to_ledger_operation(write)]),
                };
                let (outcomes, _) = ledger.apply(index as u64 + 1, &command).unwrap();
                let model_answer = model.apply(op).unwrap();
                let ledger_outcome = crate::check::linearizability::client_outcome(&outcomes[0]);
                assert!(
                    model_answer.matches(&ledger_outcome),
                    "op {index} {write:?}: model {model_answer:?}, ledger {ledger_outcome:?}"
                );
                let counts = ledger.stock(b"s").map(|c| Counts {
                    total: c.total,
                    available: c.available,
                    reserved: c.reserved,
                    sold: c.sold,
                });
                assert_eq!(model.counts, counts, "after op {index} {write:?}");
            }
        }
    }
}
