//! Property test: [`LedgerState`] against a deliberately naive reference model.
//!
//! The model keeps every order it ever saw, by id, in creation order, and derives everything by
//! scanning (holdings, due reservations, what may be pruned) instead of keeping indexes, so a
//! bookkeeping bug in the real state machine shows up as a divergence. Long random sequences
//! include replays of order ids with first attempts inside, at the edge of and past the
//! idempotency window (and ahead of the clock), expiry sweeps, restocks, limits switched on and
//! off, shipping marks, settings changes, and clock jumps (forwards and backwards: a new
//! leader's clock may be behind).

use proptest::prelude::*;

use crate::state_machine::command::CommandBody;
use crate::state_machine::command::LedgerSettings;
use crate::state_machine::command::LogCommand;
use crate::state_machine::command::Operation;
use crate::state_machine::command::Outcome;
use crate::state_machine::command::SaleRules;
use crate::state_machine::keys::HashKey;
use crate::state_machine::limits;
use crate::state_machine::orders::CHUNK_RECORDS;
use crate::state_machine::state::LedgerState;
use crate::state_machine::state::PRUNE_INTERVAL_MS;
use crate::state_machine::state::STRAGGLERS_PER_CHUNK_MAX;

/// The window and margin the tests configure: small, so that random clocks cross them.
const WINDOW_MS: u64 = 20_000;
const MARGIN_MS: u64 = 2_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum ModelState {
    Reserved(u64),
    Confirmed,
    Released,
    Expired,
    Rejected,
}

#[derive(Debug, Clone)]
struct ModelOrder {
    id: String,
    purchase: bool,
    sku: Vec<u8>,
    qty: u64,
    user: String,
    state: ModelState,
    first: Outcome,
    created_ms: u64,
    /// The SKU's limit epoch when the order counted towards its buyer's holding.
    counted_in: Option<u32>,
    /// Its order event's sequence number, if it emitted one.
    event: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct ModelSku {
    total: u64,
    available: u64,
    reserved: u64,
    sold: u64,
    rules: SaleRules,
    limit_epoch: u32,
}

#[derive(Debug, Default)]
struct Model {
    settings: LedgerSettings,
    skus: std::collections::HashMap<Vec<u8>, ModelSku>,
    /// Every order ever created, oldest first; `orders[..first_kept]` were pruned.
    orders: Vec<ModelOrder>,
    first_kept: usize,
    clock: u64,
    /// Every order event ever emitted: (sequence number, order id).
    events: Vec<(u64, String)>,
    shipped_below: u64,
}

impl Model {
    fn kept(&self, order_id: &str) -> Option<usize> {
        (self.first_kept..self.orders.len()).find(|&i| self.orders[i].id == order_id)
    }

    /// The kept order `order_id` of `sku`, or the answer to a confirm or cancel of one not kept.
    fn kept_of(&self, sku: &[u8], order_id: &str, first_attempt_ms: u64) -> Result<(usize, ModelOrder), Outcome> {
        let Some(index) = self.kept(order_id) else {
            return Err(self.refusal(first_attempt_ms).unwrap_or(Outcome::NotFound));
        };
        let order = self.orders[index].clone();
        if order.sku != sku {
            return Err(Outcome::NotFound);
        }
        Ok((index, order))
    }

    fn held(&self, sku: &[u8], user: &str) -> u64 {
        let Some(record) = self.skus.get(sku) else { return 0 };
        if record.rules.per_user_limit == 0 {
            return 0;
        }
        self.orders
            .iter()
            .filter(|o| o.sku == sku && o.user == user && o.counted_in == Some(record.limit_epoch))
            .filter(|o| matches!(o.state, ModelState::Reserved(_) | ModelState::Confirmed))
            .map(|o| o.qty)
            .sum()
    }

    fn unshipped(&self) -> Vec<(u64, String)> {
        self.events
            .iter()
            .filter(|(seq, _)| *seq >= self.shipped_below)
            .cloned()
            .collect()
    }

    fn emit(&mut self, index: usize) {
        if !self.settings.keep_order_events {
            return;
        }
        let seq = self.events.len() as u64;
        self.events.push((seq, self.orders[index].id.clone()));
        self.orders[index].event = Some(seq);
    }

    fn release(&mut self, index: usize, to: ModelState) {
        let order = &mut self.orders[index];
        order.state = to;
        let s = self.skus.get_mut(&order.sku).expect("model sku");
        s.reserved -= order.qty;
        s.available += order.qty;
    }

    fn refusal(&self, first_attempt_ms: u64) -> Option<Outcome> {
        let (window, margin, now) = (
            self.settings.idempotency_window_ms,
            self.settings.clock_skew_margin_ms,
            self.clock,
        );
        if first_attempt_ms + window.saturating_sub(margin) <= now {
            return Some(Outcome::RequestTooOld);
        }
        if first_attempt_ms > now + margin {
            return Some(Outcome::Rejected {
                reason: format!(
                    "invalid first_attempt_ms: {first_attempt_ms} is more than the {margin} ms clock-skew margin \
                     ahead of the ledger's clock ({now})"
                ),
            });
        }
        None
    }

    fn apply(&mut self, cmd: &LogCommand) -> Vec<Outcome> {
        let previous_clock = self.clock;
        self.clock = self.clock.max(cmd.timestamp_ms);
        let outcomes = match &cmd.body {
            CommandBody::Expire => {
                for index in self.first_kept..self.orders.len() {
                    if matches!(self.orders[index].state, ModelState::Reserved(at) if at <= self.clock) {
                        self.release(index, ModelState::Expired);
                    }
                }
                vec![]
            }
            CommandBody::Batch(ops) => ops.iter().map(|op| self.apply_op(op)).collect(),
            CommandBody::Shipped { below_seq, .. } => {
                if *below_seq > self.shipped_below && *below_seq <= self.events.len() as u64 {
                    self.shipped_below = *below_seq;
                }
                vec![]
            }
            CommandBody::Configure(settings) => {
                let hash_key = if self.settings.hash_key.is_set() {
                    self.settings.hash_key
                } else {
                    settings.hash_key
                };
                if !settings.keep_order_events {
                    self.shipped_below = self.events.len() as u64;
                }
                self.settings = LedgerSettings { hash_key, ..*settings };
                vec![]
            }
            CommandBody::Meta(_)
            | CommandBody::Split { .. }
            | CommandBody::Freeze { .. }
            | CommandBody::Thaw { .. }
            | CommandBody::Merge { .. } => vec![],
        };
        // Batches prune when the log's second changes; every other entry always.
        if self.clock / PRUNE_INTERVAL_MS != previous_clock / PRUNE_INTERVAL_MS
            || !matches!(cmd.body, CommandBody::Batch(_))
        {
            self.prune();
        }
        outcomes
    }

    /// Oldest first, a chunk of orders at a time, as the module docs of `orders` say.
    fn prune(&mut self) {
        for _ in 0..4 {
            let end = (self.first_kept + CHUNK_RECORDS).min(self.orders.len());
            if end == self.first_kept {
                return;
            }
            let newest = self.orders[end - 1].created_ms;
            if newest + self.settings.idempotency_window_ms > self.clock {
                return;
            }
            let staying: Vec<usize> = (self.first_kept..end)
                .filter(|&i| {
                    let o = &self.orders[i];
                    match o.state {
                        ModelState::Reserved(_) => true,
                        ModelState::Confirmed => o.event.is_some_and(|seq| seq >= self.shipped_below),
                        _ => false,
                    }
                })
                .collect();
            if staying.len() > STRAGGLERS_PER_CHUNK_MAX {
                return;
            }
            self.first_kept = end;
            // Stragglers move to the end, as created now; the pruned copy no longer counts.
            for i in staying {
                let mut moved = self.orders[i].clone();
                moved.created_ms = self.clock;
                self.orders[i].counted_in = None;
                self.orders.push(moved);
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
                first_attempt_ms,
            } => self.take(false, sku, *qty, user, order_id, *ttl_ms, *first_attempt_ms),
            Operation::Purchase {
                sku,
                qty,
                user,
                order_id,
                first_attempt_ms,
            } => self.take(true, sku, *qty, user, order_id, 0, *first_attempt_ms),
            Operation::Confirm {
                sku,
                order_id,
                first_attempt_ms,
            } => {
                let (index, o) = match self.kept_of(sku, order_id, *first_attempt_ms) {
                    Ok(kept) => kept,
                    Err(answer) => return answer,
                };
                match o.state {
                    ModelState::Confirmed => Outcome::Confirmed,
                    ModelState::Expired => Outcome::Expired,
                    ModelState::Released | ModelState::Rejected => Outcome::NotFound,
                    ModelState::Reserved(at) if at <= now => {
                        self.release(index, ModelState::Expired);
                        Outcome::Expired
                    }
                    ModelState::Reserved(_) => {
                        let s = self.skus.get_mut(sku).expect("sku");
                        s.reserved -= o.qty;
                        s.sold += o.qty;
                        self.orders[index].state = ModelState::Confirmed;
                        self.emit(index);
                        Outcome::Confirmed
                    }
                }
            }
            Operation::Cancel {
                sku,
                order_id,
                first_attempt_ms,
            } => {
                let (index, o) = match self.kept_of(sku, order_id, *first_attempt_ms) {
                    Ok(kept) => kept,
                    Err(answer) => return answer,
                };
                match o.state {
                    ModelState::Confirmed => Outcome::AlreadyConfirmed,
                    ModelState::Released => Outcome::Released,
                    ModelState::Expired => Outcome::Expired,
                    ModelState::Rejected => Outcome::NotFound,
                    ModelState::Reserved(at) if at <= now => {
                        self.release(index, ModelState::Expired);
                        Outcome::Expired
                    }
                    ModelState::Reserved(_) => {
                        self.release(index, ModelState::Released);
                        Outcome::Released
                    }
                }
            }
            Operation::PutSku { sku, total, rules } => {
                let entry = self.skus.entry(sku.clone()).or_insert(ModelSku {
                    total: 0,
                    available: 0,
                    reserved: 0,
                    sold: 0,
                    rules: SaleRules::default(),
                    limit_epoch: 0,
                });
                let held = entry.reserved + entry.sold;
                if *total < held {
                    return Outcome::Rejected {
                        reason: format!("total {total} is below the {held} units reserved or sold"),
                    };
                }
                if (entry.rules.per_user_limit != 0) != (rules.per_user_limit != 0) {
                    entry.limit_epoch = entry.limit_epoch.wrapping_add(1);
                }
                entry.total = *total;
                entry.available = total - held;
                entry.rules = *rules;
                Outcome::Ok
            }
            Operation::Restock { delta: 0, .. } => Outcome::Rejected {
                reason: "invalid delta: must not be zero".into(),
            },
            Operation::Restock { sku, delta } => {
                let Some(entry) = self.skus.get_mut(sku) else {
                    return Outcome::UnknownSku;
                };
                let held = entry.reserved + entry.sold;
                let new_total = entry.total as i128 + *delta as i128;
                if new_total < held as i128 {
                    return Outcome::Rejected {
                        reason: format!("total would fall to {new_total}, below the {held} units reserved or sold"),
                    };
                }
                entry.total = new_total as u64;
                entry.available = entry.total - held;
                Outcome::Ok
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn take(
        &mut self,
        purchase: bool,
        sku: &[u8],
        qty: u64,
        user: &str,
        order_id: &str,
        ttl: u64,
        first_attempt_ms: u64,
    ) -> Outcome {
        let now = self.clock;
        if let Some(index) = self.kept(order_id) {
            let o = &self.orders[index];
            let same = o.purchase == purchase && o.sku == sku && o.qty == qty && o.user == user;
            return if same { o.first.clone() } else { Outcome::OrderIdReused };
        }
        if let Some(refusal) = self.refusal(first_attempt_ms) {
            return refusal;
        }
        let held = self.held(sku, user);
        let outcome = match self.skus.get(sku) {
            None => Outcome::UnknownSku,
            Some(s)
                if (s.rules.start_ms != 0 && now < s.rules.start_ms)
                    || (s.rules.end_ms != 0 && now >= s.rules.end_ms) =>
            {
                Outcome::SaleClosed
            }
            Some(s) if s.rules.per_user_limit != 0 && held + qty > s.rules.per_user_limit => Outcome::LimitExceeded {
                held,
                limit: s.rules.per_user_limit,
            },
            Some(s) if s.available < qty => Outcome::SoldOut { available: s.available },
            Some(s) => {
                let ttl = if ttl != 0 {
                    ttl
                } else if s.rules.default_ttl_ms != 0 {
                    s.rules.default_ttl_ms
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
            _ => ModelState::Rejected,
        };
        let mut counted_in = None;
        if matches!(state, ModelState::Confirmed | ModelState::Reserved(_)) {
            let s = self.skus.get_mut(sku).expect("sku");
            s.available -= qty;
            if purchase {
                s.sold += qty
            } else {
                s.reserved += qty
            }
            if s.rules.per_user_limit != 0 {
                counted_in = Some(s.limit_epoch);
            }
        }
        self.orders.push(ModelOrder {
            id: order_id.to_string(),
            purchase,
            sku: sku.to_vec(),
            qty,
            user: user.to_string(),
            state,
            first: outcome.clone(),
            created_ms: now,
            counted_in,
            event: None,
        });
        if purchase && state == ModelState::Confirmed {
            self.emit(self.orders.len() - 1);
        }
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
            ..SaleRules::default()
        })
}

/// How long before the entry's time a write was first attempted (negative: ahead of it). Set in
/// `first_attempt_ms` by the strategies and turned into a time by [`stamped`].
fn attempt_age() -> impl Strategy<Value = u64> {
    let edge = WINDOW_MS - MARGIN_MS;
    prop_oneof![
        8 => 0..1_000i64,
        2 => (edge as i64 - 50)..(edge as i64 + 50),
        1 => 0..(3 * WINDOW_MS as i64),
        1 => -(2 * MARGIN_MS as i64)..0,
    ]
    .prop_map(|age| age as u64)
}

pub(super) fn operation() -> impl Strategy<Value = Operation> {
    prop_oneof![
        4 => (sku(), 0..4u64, user(), order_id(), prop::option::of(1..30_000u64), attempt_age()).prop_map(
            |(sku, qty, user, order_id, ttl, age)| Operation::Reserve { sku, qty, user, order_id, ttl_ms: ttl.unwrap_or(0), first_attempt_ms: age }
        ),
        3 => (sku(), order_id(), attempt_age()).prop_map(|(sku, order_id, age)| Operation::Confirm { sku, order_id, first_attempt_ms: age }),
        2 => (sku(), order_id(), attempt_age()).prop_map(|(sku, order_id, age)| Operation::Cancel { sku, order_id, first_attempt_ms: age }),
        3 => (sku(), 0..4u64, user(), order_id(), attempt_age())
            .prop_map(|(sku, qty, user, order_id, age)| Operation::Purchase { sku, qty, user, order_id, first_attempt_ms: age }),
        1 => (sku(), 0..12u64, rules()).prop_map(|(sku, total, rules)| Operation::PutSku { sku, total, rules }),
        1 => (sku(), -6..6i64).prop_map(|(sku, delta)| Operation::Restock { sku, delta }),
    ]
}

pub(super) fn settings(keep_order_events: bool) -> LedgerSettings {
    LedgerSettings {
        hash_key: HashKey([0x0123_4567_89ab_cdef, 0xfedc_ba98_7654_3210]),
        idempotency_window_ms: WINDOW_MS,
        clock_skew_margin_ms: MARGIN_MS,
        keep_order_events,
    }
}

pub(super) fn command() -> impl Strategy<Value = (i64, CommandBody)> {
    // Clock steps: mostly forwards, sometimes backwards (an older leader's clock), sometimes
    // past the whole window.
    let step = prop_oneof![8 => 0..3_000i64, 1 => -3_000..0i64, 1 => 30_000..40_000i64];
    let body = prop_oneof![
        12 => prop::collection::vec(operation(), 1..5).prop_map(CommandBody::Batch),
        2 => Just(CommandBody::Expire),
        // Marks both behind and ahead of what exists: the ledger must ignore both.
        2 => (0..30u64, 1..4u64).prop_map(|(below_seq, shipper)| CommandBody::Shipped { below_seq, shipper }),
        1 => any::<bool>().prop_map(|keep| CommandBody::Configure(settings(keep))),
    ];
    (step, body)
}

/// Turns the strategies' attempt ages into first-attempt times at log time `now`.
pub(super) fn stamped(body: CommandBody, now: u64) -> CommandBody {
    let CommandBody::Batch(mut operations) = body else {
        return body;
    };
    for operation in &mut operations {
        if let Operation::Reserve { first_attempt_ms, .. }
        | Operation::Purchase { first_attempt_ms, .. }
        | Operation::Confirm { first_attempt_ms, .. }
        | Operation::Cancel { first_attempt_ms, .. } = operation
        {
            *first_attempt_ms = (now as i64 - *first_attempt_ms as i64).max(1) as u64;
        }
    }
    CommandBody::Batch(operations)
}

fn configured() -> (LedgerState, Model) {
    let mut ledger = LedgerState::default();
    let mut model = Model::default();
    let configure = LogCommand {
        timestamp_ms: 1_000_000,
        body: CommandBody::Configure(settings(true)),
    };
    ledger.apply(0, &configure).expect("configures");
    model.apply(&configure);
    (ledger, model)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn ledger_matches_model(commands in prop::collection::vec(command(), 1..160)) {
        let (mut ledger, mut model) = configured();
        let mut leader_clock: i64 = 1_000_000;
        for (index, (step, body)) in commands.into_iter().enumerate() {
            leader_clock = (leader_clock + step).max(0);
            let now = ledger.clock_ms.max(leader_clock as u64);
            let command = LogCommand { timestamp_ms: leader_clock as u64, body: stamped(body, now) };
            let (outcomes, _) = ledger.apply(index as u64 + 1, &command).expect("invariant holds");
            let expected = model.apply(&command);
            prop_assert_eq!(&outcomes, &expected, "command {} {:?}", index, command);
            for (sku, s) in &model.skus {
                let stock = ledger.stock(sku).expect("sku exists in ledger");
                prop_assert_eq!((stock.total, stock.available, stock.reserved, stock.sold), (s.total, s.available, s.reserved, s.sold));
                prop_assert!(stock.reserved + stock.sold <= stock.total, "oversold");
            }
            prop_assert_eq!(ledger.skus.len(), model.skus.len());
            prop_assert!(ledger.check_all().is_ok());
            prop_assert_eq!(ledger.orders.len(), model.orders.len() - model.first_kept, "orders kept");
            for order in &model.orders[model.first_kept..] {
                prop_assert!(ledger.order(&order.id).is_some(), "order {} kept", order.id);
            }
            let events: Vec<(u64, String)> = ledger.order_events.iter().map(|(seq, e)| (*seq, e.order_id.clone())).collect();
            prop_assert_eq!(events, model.unshipped(), "retained order events");
            prop_assert_eq!(ledger.shipped_below_seq, model.shipped_below);
            prop_assert_eq!(ledger.next_event_seq, model.events.len() as u64);
        }
        // The encoded state decodes to the same state, and encodes to the same bytes (what a
        // snapshot and a restart do).
        let bytes = bincode::serialize(&ledger).expect("encodes");
        let reloaded: LedgerState = bincode::deserialize(&bytes).expect("decodes");
        prop_assert_eq!(&reloaded, &ledger);
        prop_assert_eq!(bincode::serialize(&reloaded).expect("encodes"), bytes);
        prop_assert_eq!(reloaded.digest(), ledger.digest());
    }

    #[test]
    fn a_replay_answers_its_first_answer_inside_the_window_and_is_refused_after_it(
        commands in prop::collection::vec(command(), 1..80),
        pick in any::<prop::sample::Index>(),
        later_ms in prop_oneof![0..WINDOW_MS, WINDOW_MS..4 * WINDOW_MS],
    ) {
        let (mut ledger, _) = configured();
        let mut takes = Vec::new();
        for (index, (step, body)) in commands.into_iter().enumerate() {
            let timestamp_ms = 1_000_000 + (index as i64 * 1000 + step.rem_euclid(1000)) as u64;
            let command = LogCommand { timestamp_ms, body: stamped(body, timestamp_ms) };
            // The writes that create an order: their stamp is the order's first attempt (a
            // repeat stamped later is, by the contract, a new first attempt of its own).
            let new_ids: Vec<bool> = match &command.body {
                CommandBody::Batch(ops) => ops
                    .iter()
                    .enumerate()
                    .map(|(i, op)| {
                        let id = op_order_id(op);
                        ledger.order(id).is_none() && !ops[..i].iter().any(|earlier| op_order_id(earlier) == id)
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let (outcomes, _) = ledger.apply(index as u64 + 1, &command).expect("invariant holds");
            if let CommandBody::Batch(ops) = &command.body {
                for ((op, outcome), new) in ops.iter().zip(outcomes).zip(new_ids) {
                    let created = new
                        && matches!(op, Operation::Reserve { qty: 1.., .. } | Operation::Purchase { qty: 1.., .. })
                        && !matches!(outcome, Outcome::SoldOut { .. } | Outcome::Rejected { .. } | Outcome::RequestTooOld);
                    if created {
                        takes.push((op.clone(), outcome));
                    }
                }
            }
        }
        prop_assume!(!takes.is_empty());
        let (op, _first_outcome) = takes[pick.index(takes.len())].clone();
        let (order_id, request) = match &op {
            Operation::Reserve { order_id, sku, qty, user, .. } => (order_id.clone(), ledger.settings.hash_key.request(false, sku, *qty, user)),
            Operation::Purchase { order_id, sku, qty, user, .. } => (order_id.clone(), ledger.settings.hash_key.request(true, sku, *qty, user)),
            _ => unreachable!("filtered to takes"),
        };
        // A later entry (which may prune), then the very same write again.
        let later = LogCommand { timestamp_ms: ledger.clock_ms + later_ms, body: CommandBody::Expire };
        ledger.apply(u64::MAX - 1, &later).expect("applies");
        let counts = |ledger: &LedgerState| ledger.skus.values().map(|r| (r.total, r.available, r.reserved, r.sold)).collect::<Vec<_>>();
        let before = counts(&ledger);
        let kept = ledger.order(&order_id).copied();
        let first_attempt_ms = op.first_attempt_ms().expect("keyed by an order id");
        let replay = LogCommand { timestamp_ms: ledger.clock_ms, body: CommandBody::Batch(vec![op]) };
        let (outcomes, _) = ledger.apply(u64::MAX, &replay).expect("invariant holds");
        match kept {
            // Kept: the kept order's first answer (this write's own, unless the id was pruned and
            // the same request sent again with a later first attempt), or another request took
            // the id.
            Some(order) if order.request == request => {
                prop_assert_eq!(&outcomes[0], &crate::state_machine::state::first_answer(&order));
            }
            Some(_) => prop_assert_eq!(&outcomes[0], &Outcome::OrderIdReused),
            // Forgotten: only ever because it is past the window, and then never decided afresh.
            None => {
                prop_assert!(first_attempt_ms + WINDOW_MS - MARGIN_MS <= ledger.clock_ms, "pruned inside the window");
                prop_assert_eq!(&outcomes[0], &Outcome::RequestTooOld);
            }
        }
        prop_assert_eq!(counts(&ledger), before, "a repeat moves no units");
    }
}

/// The order id a write names ("" for admin writes).
pub(super) fn op_order_id(op: &Operation) -> &str {
    match op {
        Operation::Reserve { order_id, .. }
        | Operation::Purchase { order_id, .. }
        | Operation::Confirm { order_id, .. }
        | Operation::Cancel { order_id, .. } => order_id,
        Operation::PutSku { .. } | Operation::Restock { .. } => "",
    }
}

pub(super) fn batch(timestamp_ms: u64, ops: Vec<Operation>) -> LogCommand {
    LogCommand {
        timestamp_ms,
        body: CommandBody::Batch(ops),
    }
}

pub(super) fn put(sku: &[u8], total: u64, per_user_limit: u64) -> Operation {
    Operation::PutSku {
        sku: sku.to_vec(),
        total,
        rules: SaleRules {
            per_user_limit,
            ..SaleRules::default()
        },
    }
}

fn buy(sku: &[u8], order_id: &str, first_attempt_ms: u64) -> Operation {
    Operation::Purchase {
        sku: sku.to_vec(),
        qty: 2,
        user: "u".into(),
        order_id: order_id.into(),
        first_attempt_ms,
    }
}

#[test]
fn invariant_violation_is_reported_not_continued() {
    let (mut ledger, _) = configured();
    ledger
        .apply(1, &batch(1_000_001, vec![put(b"x", 5, 0)]))
        .expect("put applies");
    // Corrupt the record the way a bug would, then touch it.
    ledger.skus.get_mut(b"x".as_slice()).expect("sku").sold = 3;
    let reserve = Operation::Reserve {
        sku: b"x".to_vec(),
        qty: 1,
        user: "u".into(),
        order_id: "o".into(),
        ttl_ms: 0,
        first_attempt_ms: 1_000_002,
    };
    let err = ledger
        .apply(2, &batch(1_000_002, vec![reserve]))
        .expect_err("broken invariant is detected");
    assert_eq!(err.sku, b"x".to_vec());
    assert_eq!(err.log_index, 2);
}

#[test]
fn a_sold_out_answer_records_nothing_while_other_rejections_stick() {
    let (mut ledger, _) = configured();
    let t = 1_000_010;
    ledger
        .apply(1, &batch(t, vec![put(b"x", 1, 0), put(b"y", 10, 1)]))
        .expect("applies");
    let (first, _) = ledger
        .apply(2, &batch(t + 1, vec![buy(b"x", "o1", t), buy(b"y", "o2", t)]))
        .expect("applies");
    assert_eq!(
        first,
        vec![
            Outcome::SoldOut { available: 1 },
            Outcome::LimitExceeded { held: 0, limit: 1 }
        ]
    );
    assert!(ledger.order("o1").is_none(), "a sold-out answer records no order");
    let restock = Operation::Restock {
        sku: b"x".to_vec(),
        delta: 5,
    };
    ledger
        .apply(3, &batch(t + 2, vec![restock, put(b"y", 10, 0)]))
        .expect("applies");
    let (retry, _) = ledger
        .apply(4, &batch(t + 3, vec![buy(b"x", "o1", t), buy(b"y", "o2", t)]))
        .expect("applies");
    assert_eq!(
        retry,
        vec![Outcome::Confirmed, Outcome::LimitExceeded { held: 0, limit: 1 }],
        "sold out is decided afresh; any other rejection replays its first answer"
    );
    assert_eq!(ledger.stock(b"x").expect("sku").sold, 2);
    assert_eq!(ledger.stock(b"y").expect("sku").sold, 0);
}

#[test]
fn orders_leave_after_the_window_once_shipped_and_a_late_retry_is_refused_not_decided_again() {
    let (mut ledger, _) = configured();
    let t = 1_000_000;
    ledger.apply(1, &batch(t, vec![put(b"x", 10, 0)])).expect("applies");
    let (answer, _) = ledger.apply(2, &batch(t, vec![buy(b"x", "o1", t)])).expect("applies");
    assert_eq!(answer, vec![Outcome::Confirmed]);
    assert_eq!(ledger.order_events.len(), 1);

    // Inside the window: the first answer, nothing moves.
    let (replay, _) = ledger
        .apply(3, &batch(t + WINDOW_MS - MARGIN_MS - 1, vec![buy(b"x", "o1", t)]))
        .expect("applies");
    assert_eq!(replay, vec![Outcome::Confirmed]);
    assert_eq!(ledger.stock(b"x").expect("sku").sold, 2);

    // Past the window but not shipped: kept (its event must reach PostgreSQL first).
    ledger
        .apply(
            4,
            &LogCommand {
                timestamp_ms: t + 3 * WINDOW_MS,
                body: CommandBody::Expire,
            },
        )
        .expect("applies");
    assert!(ledger.order("o1").is_some(), "an unshipped order stays");
    ledger
        .apply(
            5,
            &LogCommand {
                timestamp_ms: t + 3 * WINDOW_MS,
                body: CommandBody::Shipped {
                    below_seq: 1,
                    shipper: 2,
                },
            },
        )
        .expect("applies");
    // Carried forward when its chunk went: forgotten a window after it was shipped.
    assert!(ledger.order("o1").is_some(), "carried forward");
    let later = LogCommand {
        timestamp_ms: t + 4 * WINDOW_MS,
        body: CommandBody::Expire,
    };
    ledger.apply(6, &later).expect("applies");
    assert!(ledger.order("o1").is_none(), "shipped and past the window: forgotten");
    assert!(ledger.orders.is_empty() && ledger.order_events.is_empty());

    // The same write again (same first attempt): refused, never a second purchase.
    let (late, _) = ledger
        .apply(7, &batch(t + 4 * WINDOW_MS, vec![buy(b"x", "o1", t)]))
        .expect("applies");
    assert_eq!(late, vec![Outcome::RequestTooOld]);
    assert_eq!(ledger.stock(b"x").expect("sku").sold, 2);
    // A first attempt too far ahead of the ledger's clock is refused too.
    let (ahead, _) = ledger
        .apply(
            8,
            &batch(
                t + 4 * WINDOW_MS,
                vec![buy(b"x", "o2", t + 4 * WINDOW_MS + MARGIN_MS + 1)],
            ),
        )
        .expect("applies");
    assert!(
        matches!(&ahead[0], Outcome::Rejected { reason } if reason.contains("first_attempt_ms")),
        "{ahead:?}"
    );
    assert!(ledger.order("o2").is_none());
}

#[test]
fn without_a_sink_no_order_event_is_kept() {
    let (mut ledger, _) = configured();
    let t = 1_000_000;
    ledger
        .apply(1, &batch(t, vec![put(b"x", 10, 0), buy(b"x", "o1", t)]))
        .expect("applies");
    assert_eq!(ledger.order_events.len(), 1);
    // Shipping switched off: what waits is dropped, nothing new is kept.
    ledger
        .apply(
            2,
            &LogCommand {
                timestamp_ms: t,
                body: CommandBody::Configure(settings(false)),
            },
        )
        .expect("applies");
    ledger.apply(3, &batch(t, vec![buy(b"x", "o2", t)])).expect("applies");
    assert!(ledger.order_events.is_empty());
    assert_eq!((ledger.next_event_seq, ledger.shipped_below_seq), (1, 1));
    // And both orders leave at the window, with nothing to ship.
    ledger
        .apply(
            4,
            &LogCommand {
                timestamp_ms: t + WINDOW_MS,
                body: CommandBody::Expire,
            },
        )
        .expect("applies");
    assert!(ledger.orders.is_empty());
    // The hash key was chosen once: a later Configure does not change it.
    let other_key = LedgerSettings {
        hash_key: HashKey([9, 9]),
        ..settings(false)
    };
    ledger
        .apply(
            5,
            &LogCommand {
                timestamp_ms: t + WINDOW_MS,
                body: CommandBody::Configure(other_key),
            },
        )
        .expect("applies");
    assert_eq!(ledger.settings.hash_key, settings(true).hash_key);
}

#[test]
fn a_per_user_limit_counts_from_when_it_is_set_and_holders_exist_only_under_one() {
    let (mut ledger, _) = configured();
    let t = 1_000_000;
    ledger
        .apply(1, &batch(t, vec![put(b"x", 100, 0), buy(b"x", "o1", t)]))
        .expect("applies");
    assert!(ledger.holdings.is_empty(), "no limit, no holders");
    ledger.apply(2, &batch(t, vec![put(b"x", 100, 3)])).expect("applies");
    let (answers, _) = ledger
        .apply(3, &batch(t, vec![buy(b"x", "o2", t), buy(b"x", "o3", t)]))
        .expect("applies");
    assert_eq!(
        answers,
        vec![Outcome::Confirmed, Outcome::LimitExceeded { held: 2, limit: 3 }]
    );
    assert_eq!(ledger.held(b"x", "u"), 2);
    ledger.apply(4, &batch(t, vec![put(b"x", 100, 0)])).expect("applies");
    assert!(ledger.holdings.is_empty(), "limit off, holders gone");
}
