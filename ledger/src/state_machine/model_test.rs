//! Property test: [`LedgerState`] against a deliberately naive reference model.
//!
//! The model derives everything by scanning (holdings, due reservations) instead of keeping
//! indexes, so a bookkeeping bug in the real state machine shows up as a divergence. Long random
//! sequences include replays of order ids, expiry sweeps, restocks and clock jumps (forwards and
//! backwards: a new leader's clock may be behind).

use std::collections::HashMap;

use proptest::prelude::*;

use crate::state_machine::command::CommandBody;
use crate::state_machine::command::LogCommand;
use crate::state_machine::command::Operation;
use crate::state_machine::command::Outcome;
use crate::state_machine::command::SaleRules;
use crate::state_machine::limits;
use crate::state_machine::state::LedgerState;
use crate::state_machine::state::OrderKind;

#[derive(Debug, Clone, PartialEq)]
enum ModelState {
    Reserved(u64),
    Confirmed,
    Released,
    Expired,
    Rejected(u64),
}

#[derive(Debug, Clone)]
struct ModelOrder {
    purchase: bool,
    sku: Vec<u8>,
    qty: u64,
    user: String,
    state: ModelState,
    first: Outcome,
}

#[derive(Debug, Default)]
struct Model {
    // sku -> (total, available, reserved, sold, rules)
    skus: HashMap<Vec<u8>, (u64, u64, u64, u64, SaleRules)>,
    orders: HashMap<String, ModelOrder>,
    clock: u64,
    /// Every confirmation ever, in order: (sequence number, order id). Never pruned here.
    confirmations: Vec<(u64, String)>,
    /// The highest shipped mark proposed so far, capped by the confirmations that existed.
    shipped_below: u64,
}

impl Model {
    fn held(&self, sku: &[u8], user: &str) -> u64 {
        self.orders
            .values()
            .filter(|o| o.sku == sku && o.user == user)
            .filter(|o| matches!(o.state, ModelState::Reserved(_) | ModelState::Confirmed))
            .map(|o| o.qty)
            .sum()
    }

    /// The events a replica must still hold: every confirmation at or above the shipped mark.
    fn unshipped(&self) -> Vec<(u64, String)> {
        self.confirmations
            .iter()
            .filter(|(seq, _)| *seq >= self.shipped_below)
            .cloned()
            .collect()
    }

    fn confirmed(&mut self, order_id: &str) {
        let seq = self.confirmations.len() as u64;
        self.confirmations.push((seq, order_id.to_string()));
    }

    fn release(&mut self, order_id: &str, to: ModelState) {
        let order = self.orders.get_mut(order_id).expect("model order");
        order.state = to;
        let s = self.skus.get_mut(&order.sku).expect("model sku");
        s.2 -= order.qty;
        s.1 += order.qty;
    }

    fn apply(&mut self, cmd: &LogCommand) -> Vec<Outcome> {
        self.clock = self.clock.max(cmd.timestamp_ms);
        match &cmd.body {
            CommandBody::Expire => {
                let due: Vec<String> = self
                    .orders
                    .iter()
                    .filter(|(_, o)| matches!(o.state, ModelState::Reserved(at) if at <= self.clock))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in due {
                    self.release(&id, ModelState::Expired);
                }
                let horizon = self.clock.saturating_sub(limits::REJECTION_RETENTION_MS);
                self.orders
                    .retain(|_, o| !matches!(o.state, ModelState::Rejected(at) if at <= horizon));
                vec![]
            }
            CommandBody::Batch(ops) => ops.iter().map(|op| self.apply_op(op)).collect(),
            CommandBody::Shipped { below_seq, .. } => {
                if *below_seq <= self.confirmations.len() as u64 {
                    self.shipped_below = self.shipped_below.max(*below_seq);
                }
                vec![]
            }
        }
    }

    fn apply_op(&mut self, op: &Operation) -> Outcome {
        let now = self.clock;
        match op {
            Operation::Reserve { qty: 0, .. } | Operation::Purchase { qty: 0, .. } => Outcome::Rejected {
                reason: format!("invalid qty: 0, must be 1..={}", limits::QTY_MAX),
            },
            Operation::Reserve {
                sku,
                qty,
                user,
                order_id,
                ttl_ms,
            } => self.take(false, sku, *qty, user, order_id, *ttl_ms),
            Operation::Purchase {
                sku,
                qty,
                user,
                order_id,
            } => self.take(true, sku, *qty, user, order_id, 0),
            Operation::Confirm { sku, order_id } => {
                let Some(o) = self.orders.get(order_id).filter(|o| &o.sku == sku).cloned() else {
                    return Outcome::NotFound;
                };
                match o.state {
                    ModelState::Confirmed => Outcome::Confirmed,
                    ModelState::Expired => Outcome::Expired,
                    ModelState::Released | ModelState::Rejected(_) => Outcome::NotFound,
                    ModelState::Reserved(at) if at <= now => {
                        self.release(order_id, ModelState::Expired);
                        Outcome::Expired
                    }
                    ModelState::Reserved(_) => {
                        let s = self.skus.get_mut(sku).expect("sku");
                        s.2 -= o.qty;
                        s.3 += o.qty;
                        self.orders.get_mut(order_id).expect("order").state = ModelState::Confirmed;
                        self.confirmed(order_id);
                        Outcome::Confirmed
                    }
                }
            }
            Operation::Cancel { sku, order_id } => {
                let Some(o) = self.orders.get(order_id).filter(|o| &o.sku == sku).cloned() else {
                    return Outcome::NotFound;
                };
                match o.state {
                    ModelState::Confirmed => Outcome::AlreadyConfirmed,
                    ModelState::Released => Outcome::Released,
                    ModelState::Expired => Outcome::Expired,
                    ModelState::Rejected(_) => Outcome::NotFound,
                    ModelState::Reserved(at) if at <= now => {
                        self.release(order_id, ModelState::Expired);
                        Outcome::Expired
                    }
                    ModelState::Reserved(_) => {
                        self.release(order_id, ModelState::Released);
                        Outcome::Released
                    }
                }
            }
            Operation::PutSku { sku, total, rules } => {
                let entry = self.skus.entry(sku.clone()).or_insert((0, 0, 0, 0, *rules));
                let held = entry.2 + entry.3;
                if *total < held {
                    return Outcome::Rejected {
                        reason: format!("total {total} is below the {held} units reserved or sold"),
                    };
                }
                *entry = (*total, total - held, entry.2, entry.3, *rules);
                Outcome::Ok
            }
            Operation::Restock { delta: 0, .. } => Outcome::Rejected {
                reason: "invalid delta: must not be zero".into(),
            },
            Operation::Restock { sku, delta } => {
                let Some(entry) = self.skus.get_mut(sku) else {
                    return Outcome::UnknownSku;
                };
                let held = entry.2 + entry.3;
                let new_total = entry.0 as i128 + *delta as i128;
                if new_total < held as i128 {
                    return Outcome::Rejected {
                        reason: format!("total would fall to {new_total}, below the {held} units reserved or sold"),
                    };
                }
                entry.0 = new_total as u64;
                entry.1 = entry.0 - held;
                Outcome::Ok
            }
        }
    }

    fn take(&mut self, purchase: bool, sku: &[u8], qty: u64, user: &str, order_id: &str, ttl: u64) -> Outcome {
        let now = self.clock;
        if let Some(o) = self.orders.get(order_id) {
            let same = o.purchase == purchase && o.sku == sku && o.qty == qty && o.user == user;
            return if same { o.first.clone() } else { Outcome::OrderIdReused };
        }
        let held = self.held(sku, user);
        let outcome = match self.skus.get(sku) {
            None => Outcome::UnknownSku,
            Some(&(_, _, _, _, rules))
                if (rules.start_ms != 0 && now < rules.start_ms) || (rules.end_ms != 0 && now >= rules.end_ms) =>
            {
                Outcome::SaleClosed
            }
            Some(&(_, _, _, _, rules)) if rules.per_user_limit != 0 && held + qty > rules.per_user_limit => {
                Outcome::LimitExceeded {
                    held,
                    limit: rules.per_user_limit,
                }
            }
            Some(&(_, available, _, _, _)) if available < qty => Outcome::SoldOut { available },
            Some(&(_, _, _, _, rules)) => {
                let ttl = if ttl != 0 {
                    ttl
                } else if rules.default_ttl_ms != 0 {
                    rules.default_ttl_ms
                } else {
                    limits::TTL_MS_DEFAULT
                };
                if purchase {
                    Outcome::Confirmed
                } else {
                    Outcome::Reserved {
                        expires_at_ms: now + ttl,
                    }
                }
            }
        };
        if matches!(outcome, Outcome::SoldOut { .. }) {
            return outcome;
        }
        let state = match &outcome {
            Outcome::Confirmed => ModelState::Confirmed,
            Outcome::Reserved { expires_at_ms } => ModelState::Reserved(*expires_at_ms),
            _ => ModelState::Rejected(now),
        };
        if matches!(state, ModelState::Confirmed | ModelState::Reserved(_)) {
            let s = self.skus.get_mut(sku).expect("sku");
            s.1 -= qty;
            if purchase { s.3 += qty } else { s.2 += qty }
        }
        if purchase && state == ModelState::Confirmed {
            self.confirmed(order_id);
        }
        self.orders.insert(
            order_id.to_string(),
            ModelOrder {
                purchase,
                sku: sku.to_vec(),
                qty,
                user: user.to_string(),
                state,
                first: outcome.clone(),
            },
        );
        outcome
    }
}

fn sku() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![b"a".to_vec(), b"b".to_vec(), b"hot".to_vec()])
}
fn user() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["u1".to_string(), "u2".to_string(), "u3".to_string()])
}
fn order_id() -> impl Strategy<Value = String> {
    (0..8u8).prop_map(|n| format!("o{n}"))
}
fn rules() -> impl Strategy<Value = SaleRules> {
    (
        prop::option::of(0..400_000u64),
        prop::option::of(0..2_000_000u64),
        0..6u64,
        prop::option::of(1..200_000u64),
    )
        .prop_map(|(start, end, limit, ttl)| SaleRules {
            start_ms: start.unwrap_or(0),
            end_ms: end.unwrap_or(0),
            per_user_limit: limit,
            default_ttl_ms: ttl.unwrap_or(0),
        })
}

fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        4 => (sku(), 0..4u64, user(), order_id(), prop::option::of(1..300_000u64)).prop_map(
            |(sku, qty, user, order_id, ttl)| Operation::Reserve { sku, qty, user, order_id, ttl_ms: ttl.unwrap_or(0) }
        ),
        3 => (sku(), order_id()).prop_map(|(sku, order_id)| Operation::Confirm { sku, order_id }),
        2 => (sku(), order_id()).prop_map(|(sku, order_id)| Operation::Cancel { sku, order_id }),
        3 => (sku(), 0..4u64, user(), order_id())
            .prop_map(|(sku, qty, user, order_id)| Operation::Purchase { sku, qty, user, order_id }),
        1 => (sku(), 0..12u64, rules()).prop_map(|(sku, total, rules)| Operation::PutSku { sku, total, rules }),
        1 => (sku(), -6..6i64).prop_map(|(sku, delta)| Operation::Restock { sku, delta }),
    ]
}

fn command() -> impl Strategy<Value = (i64, CommandBody)> {
    // Clock steps: mostly forwards, sometimes backwards (an older leader's clock).
    let step = prop_oneof![8 => 0..120_000i64, 1 => -60_000..0i64, 1 => 3_000_000..4_000_000i64];
    let body = prop_oneof![
        6 => prop::collection::vec(operation(), 1..5).prop_map(CommandBody::Batch),
        1 => Just(CommandBody::Expire),
        // Marks both behind and ahead of what exists: the ledger must ignore both.
        1 => (0..30u64, 1..4u64).prop_map(|(below_seq, shipper)| CommandBody::Shipped { below_seq, shipper }),
    ];
    (step, body)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn ledger_matches_model(commands in prop::collection::vec(command(), 1..120)) {
        let mut ledger = LedgerState::default();
        let mut model = Model::default();
        let mut leader_clock: i64 = 1_000_000;
        for (index, (step, body)) in commands.into_iter().enumerate() {
            leader_clock = (leader_clock + step).max(0);
            let command = LogCommand { timestamp_ms: leader_clock as u64, body };
            let (outcomes, _) = ledger.apply(index as u64 + 1, &command).expect("invariant holds");
            let expected = model.apply(&command);
            prop_assert_eq!(&outcomes, &expected, "command {} {:?}", index, command);
            for (sku, &(total, available, reserved, sold, _)) in &model.skus {
                let stock = ledger.stock(sku).expect("sku exists in ledger");
                prop_assert_eq!((stock.total, stock.available, stock.reserved, stock.sold), (total, available, reserved, sold));
                prop_assert!(stock.reserved + stock.sold <= stock.total, "oversold");
            }
            prop_assert_eq!(ledger.skus.len(), model.skus.len());
            prop_assert!(ledger.check_all().is_ok());
            let events: Vec<(u64, String)> = ledger.order_events.iter().map(|(seq, e)| (*seq, e.order_id.clone())).collect();
            prop_assert_eq!(events, model.unshipped(), "retained order events");
            prop_assert_eq!(ledger.shipped_below_seq, model.shipped_below);
            prop_assert_eq!(ledger.next_event_seq, model.confirmations.len() as u64);
        }
        // The persistent parts alone rebuild the same state (what a restart does).
        let mut reloaded = LedgerState {
            skus: ledger.skus.clone(),
            orders: ledger.orders.clone(),
            holdings: ledger.holdings.clone(),
            order_events: ledger.order_events.clone(),
            next_event_seq: ledger.next_event_seq,
            shipped_below_seq: ledger.shipped_below_seq,
            shipped_by: ledger.shipped_by,
            clock_ms: ledger.clock_ms,
            ..LedgerState::default()
        };
        reloaded.rebuild_indexes();
        prop_assert_eq!(reloaded, ledger);
    }

    #[test]
    fn replaying_a_write_changes_nothing(commands in prop::collection::vec(command(), 1..60), pick in any::<prop::sample::Index>()) {
        let mut ledger = LedgerState::default();
        let mut batches = Vec::new();
        for (index, (step, body)) in commands.into_iter().enumerate() {
            let command = LogCommand { timestamp_ms: 1_000_000 + (index as i64 * 1000 + step.rem_euclid(1000)) as u64, body };
            let (outcomes, _) = ledger.apply(index as u64 + 1, &command).expect("invariant holds");
            if let CommandBody::Batch(ops) = &command.body {
                for (op, outcome) in ops.iter().zip(outcomes) {
                    batches.push((op.clone(), outcome));
                }
            }
        }
        // A reserve or purchase repeated with its order id answers the first answer (unless a
        // later write with the same id changed it) and moves no units.
        let takes: Vec<_> = batches.iter().filter(|(op, _)| matches!(op, Operation::Reserve { qty: 1.., .. } | Operation::Purchase { qty: 1.., .. })).collect();
        prop_assume!(!takes.is_empty());
        let (op, _) = takes[pick.index(takes.len())].clone();
        let before = ledger.clone();
        let replay = LogCommand { timestamp_ms: ledger.clock_ms, body: CommandBody::Batch(vec![op.clone()]) };
        let (order_id, qty, user) = match &op {
            Operation::Reserve { order_id, qty, user, .. } | Operation::Purchase { order_id, qty, user, .. } => (order_id.clone(), *qty, user.clone()),
            _ => unreachable!("filtered to takes"),
        };
        let recorded = before.orders.get(&order_id).cloned();
        let (outcomes, _) = ledger.apply(u64::MAX, &replay).expect("invariant holds");
        if let Some(first) = recorded {
            let same_request = first.sku == op.sku() && first.qty == qty && first.user == user
                && matches!((&op, first.kind), (Operation::Reserve { .. }, OrderKind::Reserve) | (Operation::Purchase { .. }, OrderKind::Purchase));
            let expected = if same_request { first.first_outcome.clone() } else { Outcome::OrderIdReused };
            prop_assert_eq!(&outcomes[0], &expected);
            prop_assert_eq!(&ledger.skus.values().map(|r| (r.total, r.available, r.reserved, r.sold)).collect::<Vec<_>>(),
                &before.skus.values().map(|r| (r.total, r.available, r.reserved, r.sold)).collect::<Vec<_>>());
        }
    }
}

#[test]
fn invariant_violation_is_reported_not_continued() {
    let mut ledger = LedgerState::default();
    let put = LogCommand {
        timestamp_ms: 1,
        body: CommandBody::Batch(vec![Operation::PutSku {
            sku: b"x".to_vec(),
            total: 5,
            rules: SaleRules::default(),
        }]),
    };
    ledger.apply(1, &put).expect("put applies");
    // Corrupt the record the way a bug would, then touch it.
    ledger.skus.get_mut(b"x".as_slice()).expect("sku").sold = 3;
    let reserve = LogCommand {
        timestamp_ms: 2,
        body: CommandBody::Batch(vec![Operation::Reserve {
            sku: b"x".to_vec(),
            qty: 1,
            user: "u".into(),
            order_id: "o".into(),
            ttl_ms: 0,
        }]),
    };
    let err = ledger.apply(2, &reserve).expect_err("broken invariant is detected");
    assert_eq!(err.sku, b"x".to_vec());
    assert_eq!(err.log_index, 2);
}

#[test]
fn a_sold_out_answer_records_nothing_while_other_rejections_stick() {
    let mut ledger = LedgerState::default();
    let ops = |ops: Vec<Operation>, t: u64| LogCommand {
        timestamp_ms: t,
        body: CommandBody::Batch(ops),
    };
    let buy = |sku: &[u8], order_id: &str| Operation::Purchase {
        sku: sku.to_vec(),
        qty: 2,
        user: "u".into(),
        order_id: order_id.into(),
    };
    let put = |sku: &[u8], total: u64, per_user_limit: u64| Operation::PutSku {
        sku: sku.to_vec(),
        total,
        rules: SaleRules {
            per_user_limit,
            ..SaleRules::default()
        },
    };
    ledger
        .apply(1, &ops(vec![put(b"x", 1, 0), put(b"y", 10, 1)], 10))
        .expect("applies");
    let (first, _) = ledger
        .apply(2, &ops(vec![buy(b"x", "o1"), buy(b"y", "o2")], 11))
        .expect("applies");
    assert_eq!(
        first,
        vec![
            Outcome::SoldOut { available: 1 },
            Outcome::LimitExceeded { held: 0, limit: 1 }
        ]
    );
    assert!(!ledger.orders.contains_key("o1"), "a sold-out answer records no order");
    ledger
        .apply(
            3,
            &ops(
                vec![
                    Operation::Restock {
                        sku: b"x".to_vec(),
                        delta: 5,
                    },
                    put(b"y", 10, 0),
                ],
                12,
            ),
        )
        .expect("applies");
    let (retry, _) = ledger
        .apply(4, &ops(vec![buy(b"x", "o1"), buy(b"y", "o2")], 13))
        .expect("applies");
    assert_eq!(
        retry,
        vec![Outcome::Confirmed, Outcome::LimitExceeded { held: 0, limit: 1 }],
        "sold out is decided afresh; any other rejection replays its first answer"
    );
    assert_eq!(ledger.stock(b"x").expect("sku").sold, 2);
    assert_eq!(ledger.stock(b"y").expect("sku").sold, 0);
}
