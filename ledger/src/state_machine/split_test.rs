//! Tests of [`LedgerState::split_off`] and [`LedgerState::absorb`] against the unsplit shard.
//!
//! The property: random operations (those of `model_test`) applied to one shard, then a split
//! at a random SKU (or a split and a merge back), then more random operations, each applied to
//! the part that owns its SKU, give exactly the answers, stock counts, holdings, live
//! reservations, retained orders and unshipped order events of the shard that never split.
//! Every part sees every entry's time (an entry for another part arrives as an empty batch, as
//! its own leader's entries would), so clocks agree.
//!
//! Two things differ by design and are kept out of the comparison:
//! - Order ids are per shard: an id used for SKUs on both sides of the split was one order to
//!   the whole shard and is two unrelated ones to the halves. Operations that would reuse an id
//!   across the split are not sent (a client reusing ids across SKUs already gets this across
//!   shards).
//! - Pruning is by chunk of orders, and a half's chunks hold other orders than the whole's, so
//!   past the idempotency window a half may forget an order earlier or later than the whole
//!   (either answer, first answer or `RequestTooOld`, is within the contract). The comparison
//!   stops before the first entry at which any part could prune.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use proptest::prelude::*;

use crate::state_machine::command::CommandBody;
use crate::state_machine::command::LedgerSettings;
use crate::state_machine::command::LogCommand;
use crate::state_machine::command::Operation;
use crate::state_machine::command::Outcome;
use crate::state_machine::keys::HashKey;
use crate::state_machine::keys::OrderKey;
use crate::state_machine::model_test::batch;
use crate::state_machine::model_test::command;
use crate::state_machine::model_test::op_order_id;
use crate::state_machine::model_test::operation;
use crate::state_machine::model_test::put;
use crate::state_machine::model_test::settings;
use crate::state_machine::model_test::stamped;
use crate::state_machine::orders::CHUNK_RECORDS;
use crate::state_machine::state::LedgerState;
use crate::state_machine::state::OrderEvent;
use crate::state_machine::state::SkuId;

const START_MS: u64 = 1_000_000;
const USERS: [&str; 3] = ["u1", "u2", "u3"];

/// One shard the whole was cut into, owning the SKUs in `[from, to)` (`None`: unbounded).
struct Part {
    state: LedgerState,
    from: Option<Vec<u8>>,
    to: Option<Vec<u8>>,
}

impl Part {
    fn owns(&self, sku: &[u8]) -> bool {
        self.from.as_deref().is_none_or(|from| sku >= from) && self.to.as_deref().is_none_or(|to| sku < to)
    }
}

/// The unsplit shard, the parts it became, and what the test remembers of the log so far.
struct Run {
    whole: LedgerState,
    parts: Vec<Part>,
    next_index: u64,
    leader_clock: i64,
    /// Every SKU each order id was used with.
    order_skus: BTreeMap<String, BTreeSet<Vec<u8>>>,
    /// Whether every shipped mark of the whole must be a mark of each part (true of a split).
    marks_translate: bool,
}

impl Run {
    /// A configured shard with `commands` applied (times as in `model_test`).
    fn new(commands: Vec<(i64, CommandBody)>) -> Run {
        let mut run = Run {
            whole: LedgerState::default(),
            parts: Vec::new(),
            next_index: 1,
            leader_clock: START_MS as i64,
            order_skus: BTreeMap::new(),
            marks_translate: false,
        };
        let configure = LogCommand {
            timestamp_ms: START_MS,
            body: CommandBody::Configure(settings(true)),
        };
        run.whole.apply(0, &configure).expect("configures");
        for (step, body) in commands {
            let command = run.next_command(step, body);
            run.remember_order_ids(&command.body);
            run.whole.apply(run.next_index, &command).expect("the invariant holds");
            run.next_index += 1;
        }
        run
    }

    fn next_command(&mut self, step: i64, body: CommandBody) -> LogCommand {
        self.leader_clock = (self.leader_clock + step).max(0);
        let now = self.whole.clock_ms.max(self.leader_clock as u64);
        LogCommand {
            timestamp_ms: self.leader_clock as u64,
            body: stamped(body, now),
        }
    }

    fn remember_order_ids(&mut self, body: &CommandBody) {
        if let CommandBody::Batch(operations) = body {
            for operation in operations.iter().filter(|op| !op_order_id(op).is_empty()) {
                self.order_skus
                    .entry(op_order_id(operation).to_string())
                    .or_default()
                    .insert(operation.sku().to_vec());
            }
        }
    }

    fn owner(&self, sku: &[u8]) -> usize {
        self.parts
            .iter()
            .position(|part| part.owns(sku))
            .expect("the parts cover every sku")
    }

    /// Whether `operation` names an order id used before with a SKU another part owns.
    fn crosses_parts(&self, operation: &Operation) -> bool {
        let owner = self.owner(operation.sku());
        self.order_skus
            .get(op_order_id(operation))
            .is_some_and(|skus| skus.iter().any(|sku| self.owner(sku) != owner))
    }

    /// Whether applying an entry that brings the clock to `clock_ms` could prune any part.
    fn may_prune_at(&self, clock_ms: u64) -> bool {
        std::iter::once(&self.whole)
            .chain(self.parts.iter().map(|part| &part.state))
            .any(|state| {
                state.orders.front().is_some_and(|chunk| {
                    chunk
                        .newest_created_ms
                        .saturating_add(state.settings.idempotency_window_ms)
                        <= clock_ms
                })
            })
    }

    /// Applies one random entry to the whole and to the parts, and compares; `false` (nothing
    /// applied) once the entry could prune (see the module docs).
    fn step(&mut self, step: i64, body: CommandBody) -> Result<bool, TestCaseError> {
        let command = self.next_command(step, body);
        if self.may_prune_at(self.whole.clock_ms.max(command.timestamp_ms)) {
            return Ok(false);
        }
        let index = self.next_index;
        self.next_index += 1;
        let timestamp_ms = command.timestamp_ms;
        let at = |body: CommandBody| LogCommand { timestamp_ms, body };
        let part_commands: Vec<LogCommand> = match &command.body {
            CommandBody::Batch(operations) => {
                let mut kept: Vec<Operation> = Vec::new();
                for operation in operations {
                    // Checked one by one: a batch may itself use an id on both sides.
                    if !self.crosses_parts(operation) {
                        kept.push(operation.clone());
                        self.remember_order_ids(&CommandBody::Batch(vec![operation.clone()]));
                    }
                }
                let whole_command = at(CommandBody::Batch(kept.clone()));
                let (outcomes, _) = self.whole.apply(index, &whole_command).expect("the invariant holds");
                let mut part_outcomes: Vec<Option<Outcome>> = vec![None; kept.len()];
                for (number, part) in self.parts.iter_mut().enumerate() {
                    let (positions, mine): (Vec<usize>, Vec<Operation>) = (kept.iter().enumerate())
                        .filter(|(_, operation)| part.owns(operation.sku()))
                        .map(|(position, operation)| (position, operation.clone()))
                        .unzip();
                    let (answers, _) = (part.state)
                        .apply(index, &at(CommandBody::Batch(mine)))
                        .map_err(|error| TestCaseError::fail(format!("part {number}: {error}")))?;
                    for (position, answer) in positions.into_iter().zip(answers) {
                        part_outcomes[position] = Some(answer);
                    }
                }
                let expected: Vec<Option<Outcome>> = outcomes.into_iter().map(Some).collect();
                prop_assert_eq!(part_outcomes, expected, "answers to {:?}", kept);
                return self.compare().map(|()| true);
            }
            CommandBody::Shipped { below_seq, shipper } => {
                let marks: Option<Vec<Option<u64>>> = (self.parts.iter())
                    .map(|part| shipped_mark_of(&self.whole, *below_seq, &part.state))
                    .collect();
                let Some(marks) = marks else {
                    // A merged shard's events are not in the whole's order, so not every mark
                    // of the whole is one of the merged shard; the halves of a split always are.
                    prop_assert!(!self.marks_translate, "a half's events are not in the whole's order");
                    return Ok(true);
                };
                (marks.into_iter())
                    .map(|mark| match mark {
                        Some(below_seq) => at(CommandBody::Shipped {
                            below_seq,
                            shipper: *shipper,
                        }),
                        None => at(CommandBody::Batch(Vec::new())),
                    })
                    .collect()
            }
            CommandBody::Expire
            | CommandBody::Configure(_)
            | CommandBody::Meta(_)
            | CommandBody::Split { .. }
            | CommandBody::Freeze { .. }
            | CommandBody::Thaw { .. }
            | CommandBody::Merge { .. } => self.parts.iter().map(|_| command.clone()).collect(),
        };
        self.whole.apply(index, &command).expect("the invariant holds");
        for (part, part_command) in self.parts.iter_mut().zip(part_commands) {
            let (outcomes, _) = part.state.apply(index, &part_command).expect("the invariant holds");
            prop_assert!(outcomes.is_empty());
        }
        self.compare().map(|()| true)
    }

    /// The parts hold, between them, exactly what the whole holds.
    fn compare(&self) -> Result<(), TestCaseError> {
        let whole = &self.whole;
        for (number, part) in self.parts.iter().enumerate() {
            let state = &part.state;
            prop_assert!(state.check_all().is_ok(), "part {}", number);
            prop_assert_eq!(state.clock_ms, whole.clock_ms);
            let skus: Vec<&Vec<u8>> = whole.skus.keys().filter(|sku| part.owns(sku)).collect();
            prop_assert_eq!(state.skus.keys().collect::<Vec<_>>(), skus.clone(), "part {}", number);
            for sku in skus {
                let (mine, theirs) = (&state.skus[sku], &whole.skus[sku]);
                prop_assert_eq!(state.stock(sku), whole.stock(sku), "stock of {:?}", sku);
                prop_assert_eq!(
                    (mine.rules, mine.limit_epoch, mine.changed_at_index),
                    (theirs.rules, theirs.limit_epoch, theirs.changed_at_index)
                );
                for user in USERS {
                    prop_assert_eq!(state.held(sku, user), whole.held(sku, user), "{:?} of {:?}", user, sku);
                }
            }
            // In log order (a merge appends the right half's after the left's).
            let events = |ledger: &LedgerState| {
                let mut events: Vec<_> = (ledger.order_events.values())
                    .filter(|event| part.owns(&event.sku))
                    .cloned()
                    .collect();
                events.sort_by(|a, b| (a.log_index, &a.order_id).cmp(&(b.log_index, &b.order_id)));
                events
            };
            prop_assert_eq!(events(state), events(whole), "unshipped events of part {}", number);
            for (_, order) in state.orders.iter() {
                prop_assert!(
                    whole.orders.find(order.key).is_some(),
                    "part {} keeps an order the whole forgot",
                    number
                );
            }
            prop_assert!(
                events_fit_their_orders(state),
                "part {}: events and order records disagree",
                number
            );
        }
        for (_, order) in whole.orders.iter().filter(|(_, order)| order.sku != SkuId::NONE) {
            let sku = whole.sku_name(order.sku).expect("named sku");
            let part = &self.parts[self.owner(sku)].state;
            let seq = part.orders.find(order.key);
            prop_assert!(seq.is_some(), "order of {:?} not in its part", sku);
            let kept = part.orders.get(seq.expect("found"));
            prop_assert_eq!(
                (kept.state, kept.first, kept.value, kept.qty, kept.request),
                (order.state, order.first, order.value, order.qty, order.request)
            );
        }
        let reservations: usize = self.parts.iter().map(|part| part.state.reservations.len()).sum();
        prop_assert_eq!(reservations, whole.reservations.len());
        let next_expiry = self.parts.iter().filter_map(|part| part.state.next_expiry_ms()).min();
        prop_assert_eq!(next_expiry, whole.next_expiry_ms());
        Ok(())
    }
}

/// The whole's shipped mark `below_seq` as a mark of `part`: `Some(Some(mark))` just past the
/// part's last event that the mark covers; `Some(None)` when the whole ignores the mark or it
/// covers none of them; `None` when no mark of the part covers exactly those events.
fn shipped_mark_of(whole: &LedgerState, below_seq: u64, part: &LedgerState) -> Option<Option<u64>> {
    if below_seq <= whole.shipped_below_seq || below_seq > whole.next_event_seq {
        return Some(None);
    }
    let covered: BTreeSet<(&str, u64)> = (whole.order_events.range(..below_seq))
        .map(|(_, event)| (event.order_id.as_str(), event.log_index))
        .collect();
    let is_covered = |event: &OrderEvent| covered.contains(&(event.order_id.as_str(), event.log_index));
    let Some(mark) = (part.order_events.iter())
        .filter(|(_, event)| is_covered(event))
        .map(|(seq, _)| seq + 1)
        .max()
    else {
        return Some(None);
    };
    part.order_events
        .range(..mark)
        .all(|(_, event)| is_covered(event))
        .then_some(Some(mark))
}

fn split_point() -> impl Strategy<Value = Vec<u8>> {
    // Below, between and above the test's SKUs ("a", "b", "hot"), and on them.
    prop::sample::select(vec![
        b"a".to_vec(),
        b"aa".to_vec(),
        b"b".to_vec(),
        b"c".to_vec(),
        b"hot".to_vec(),
        b"z".to_vec(),
    ])
}

/// Entries after the split: as before it, but with clock steps that mostly stay inside the
/// window, so that the comparison runs for a while before any part may prune.
fn later_command() -> impl Strategy<Value = (i64, CommandBody)> {
    let step = prop_oneof![8 => 0..1_500i64, 1 => -3_000..0i64];
    let body = prop_oneof![
        12 => prop::collection::vec(operation(), 1..5).prop_map(CommandBody::Batch),
        3 => Just(CommandBody::Expire),
        2 => (0..30u64, 1..4u64).prop_map(|(below_seq, shipper)| CommandBody::Shipped { below_seq, shipper }),
        1 => any::<bool>().prop_map(|keep| CommandBody::Configure(settings(keep))),
    ];
    (step, body)
}

/// Every unshipped event is numbered between the shipped mark and the next number, and is
/// the one its order record names; every order record waiting on an event has it.
fn events_fit_their_orders(state: &LedgerState) -> bool {
    let numbers = state.shipped_below_seq..state.next_event_seq;
    let events_fit = state.order_events.iter().all(|(seq, event)| {
        let order = state.orders.find(state.settings.hash_key.order(&event.order_id));
        numbers.contains(seq) && order.is_none_or(|order| state.orders.get(order).event_seq == *seq)
    });
    let orders_fit = state.orders.iter().all(|(_, order)| {
        order.event_seq == u64::MAX
            || order.event_seq < state.shipped_below_seq
            || state
                .order_events
                .get(&order.event_seq)
                .is_some_and(|event| state.settings.hash_key.order(&event.order_id) == order.key)
    });
    events_fit && orders_fit
}

/// Each retained order's key and the creation time of its chunk (it is pruned once that time
/// is past the window).
fn creation_bounds(state: &LedgerState) -> BTreeMap<OrderKey, u64> {
    (state.orders.frozen().chunks.iter())
        .flat_map(|chunk| chunk.records.iter().map(|record| (record.key, chunk.newest_created_ms)))
        .collect()
}

fn encoded(state: &LedgerState) -> Vec<u8> {
    bincode::serialize(&state.frozen()).expect("encodes")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_split_answers_every_later_operation_as_the_whole_shard_would(
        before in prop::collection::vec(command(), 1..120),
        at in split_point(),
        after in prop::collection::vec(later_command(), 1..80),
    ) {
        let mut run = Run::new(before);
        let mut left = run.whole.clone();
        let right = left.split_off(&at).expect("splits");

        // Every replica splits alike: a clone, and a state reloaded from its snapshot bytes
        // (whose hash tables were rebuilt), give the same bytes and digests.
        let reloaded: LedgerState = bincode::deserialize(&bincode::serialize(&run.whole).expect("encodes")).expect("decodes");
        for mut other in [run.whole.clone(), reloaded] {
            let other_right = other.split_off(&at).expect("splits");
            prop_assert_eq!(encoded(&other), encoded(&left));
            prop_assert_eq!(encoded(&other_right), encoded(&right));
            prop_assert_eq!((other.digest(), other_right.digest()), (left.digest(), right.digest()));
        }
        // Each half loads from its own snapshot bytes (the checks a restart makes).
        for half in [&left, &right] {
            let bytes = bincode::serialize(half).expect("encodes");
            let back: LedgerState = bincode::deserialize(&bytes).expect("a half loads from its snapshot");
            prop_assert_eq!(&back, half);
        }
        // Each half's events in the whole's order: shipped marks cover a prefix of each.
        for (half, goes_right) in [(&left, false), (&right, true)] {
            let expected: Vec<_> = (run.whole.order_events.values())
                .filter(|event| (event.sku.as_slice() >= at.as_slice()) == goes_right)
                .collect();
            prop_assert_eq!(half.order_events.values().collect::<Vec<_>>(), expected);
        }
        // No order may leave the window earlier in its half than in the whole.
        let whole_bounds = creation_bounds(&run.whole);
        for half in [&left, &right] {
            for (key, bound) in creation_bounds(half) {
                prop_assert!(whole_bounds.get(&key).is_some_and(|whole_bound| bound >= *whole_bound));
            }
        }
        prop_assert_eq!((right.shipped_below_seq, right.next_event_seq), (0, right.order_events.len() as u64));
        prop_assert!(right.order_events.keys().copied().eq(0..right.order_events.len() as u64), "right events from 0, dense");

        run.marks_translate = true;
        run.parts = vec![
            Part { state: left, from: None, to: Some(at.clone()) },
            Part { state: right, from: Some(at), to: None },
        ];
        run.compare()?;
        for (step, body) in after {
            if !run.step(step, body)? {
                break;
            }
        }
    }

    #[test]
    fn a_merge_of_the_halves_answers_every_later_operation_as_the_whole_shard_would(
        before in prop::collection::vec(command(), 1..120),
        at in split_point(),
        after in prop::collection::vec(later_command(), 1..80),
    ) {
        let mut run = Run::new(before);
        let mut merged = run.whole.clone();
        let right = merged.split_off(&at).expect("splits");
        let mut again = merged.clone();
        merged.absorb(right.clone()).expect("merges");
        again.absorb(right).expect("merges");
        prop_assert_eq!(encoded(&again), encoded(&merged), "merges are deterministic");
        let bytes = bincode::serialize(&merged).expect("encodes");
        let back: LedgerState = bincode::deserialize(&bytes).expect("the merged shard loads from its snapshot");
        prop_assert_eq!(&back, &merged);

        run.parts = vec![Part { state: merged, from: None, to: None }];
        run.compare()?;
        for (step, body) in after {
            if !run.step(step, body)? {
                break;
            }
        }
    }
}

fn reserve(sku: &[u8], order_id: &str, ttl_ms: u64) -> Operation {
    Operation::Reserve {
        sku: sku.to_vec(),
        qty: 1,
        user: "u1".into(),
        order_id: order_id.into(),
        ttl_ms,
        first_attempt_ms: START_MS,
    }
}

fn buy(sku: &[u8], order_id: &str) -> Operation {
    Operation::Purchase {
        sku: sku.to_vec(),
        qty: 1,
        user: "u1".into(),
        order_id: order_id.into(),
        first_attempt_ms: START_MS,
    }
}

/// A shard with SKUs "a" (no limit) and "z" (limit 3): a purchase of each, a reservation of
/// "z" (`r-z`, 5 s), an order for an unknown SKU "m" (`unknown`).
fn sample() -> LedgerState {
    let mut ledger = LedgerState::default();
    let configure = LogCommand {
        timestamp_ms: START_MS,
        body: CommandBody::Configure(settings(true)),
    };
    ledger.apply(1, &configure).expect("configures");
    let operations = vec![
        put(b"a", 10, 0),
        put(b"z", 10, 3),
        buy(b"a", "p-a"),
        buy(b"z", "p-z"),
        reserve(b"z", "r-z", 5_000),
        buy(b"m", "unknown"),
    ];
    let (outcomes, _) = ledger.apply(2, &batch(START_MS, operations)).expect("applies");
    assert_eq!(outcomes[5], Outcome::UnknownSku);
    ledger
}

#[test]
fn each_half_takes_its_skus_orders_holders_reservations_and_events() {
    let mut left = sample();
    let right = left.split_off(b"m").expect("splits");
    assert_eq!(left.skus.keys().collect::<Vec<_>>(), vec![&b"a".to_vec()]);
    assert_eq!(right.skus.keys().collect::<Vec<_>>(), vec![&b"z".to_vec()]);
    assert_eq!((left.sku_names.len(), right.sku_names.len()), (1, 1));
    assert!(left.order("p-a").is_some() && left.order("p-z").is_none() && left.order("r-z").is_none());
    assert!(right.order("p-z").is_some() && right.order("r-z").is_some() && right.order("p-a").is_none());
    // The order that named no SKU the shard had is in both; a retry gets its first answer.
    assert!(left.order("unknown").is_some() && right.order("unknown").is_some());
    assert_eq!((left.reservations.len(), right.reservations.len()), (0, 1));
    assert_eq!(right.held(b"z", "u1"), 2);
    // Left keeps the numbering its shipper's watermarks use (event 1 went right); right starts at 0.
    assert_eq!(left.order_events.keys().copied().collect::<Vec<_>>(), vec![0]);
    assert_eq!((left.next_event_seq, left.shipped_below_seq), (2, 0));
    assert_eq!(right.order_events.keys().copied().collect::<Vec<_>>(), vec![0]);
    assert_eq!(right.order_events[&0].order_id, "p-z");
    assert_eq!(
        (right.next_event_seq, right.shipped_below_seq, right.shipped_by),
        (1, 0, 0)
    );
    assert_eq!((left.settings, left.clock_ms), (right.settings, right.clock_ms));

    // Expiry releases the reservation in the right half, holder included; a retry of the
    // purchase there answers its first answer and moves nothing.
    let mut right = right;
    let later = START_MS + 10_000;
    right
        .apply(
            3,
            &LogCommand {
                timestamp_ms: later,
                body: CommandBody::Expire,
            },
        )
        .expect("expires");
    assert_eq!(right.reservations.len(), 0);
    assert_eq!(right.held(b"z", "u1"), 1);
    let (answers, _) = right
        .apply(4, &batch(later, vec![buy(b"z", "p-z"), buy(b"m", "unknown")]))
        .expect("applies");
    assert_eq!(answers, vec![Outcome::Confirmed, Outcome::UnknownSku]);
    let stock = right.stock(b"z").expect("z");
    assert_eq!((stock.available, stock.reserved, stock.sold), (9, 0, 1));
}

#[test]
fn a_merge_refuses_overlapping_skus_or_other_settings_and_changes_nothing() {
    let mut left = sample();
    let right = left.split_off(b"m").expect("splits");
    let before = (encoded(&left), left.digest());
    let check_unchanged = |left: &LedgerState| assert_eq!((encoded(left), left.digest()), before.clone());

    // The halves the wrong way round: "a" does not sort after "z".
    let mut swapped = right.clone();
    assert!(swapped.absorb(left.clone()).is_err());
    assert_eq!(encoded(&swapped), encoded(&right));
    // Overlapping: the same half twice.
    assert!(left.absorb(left.clone()).is_err());
    check_unchanged(&left);
    let mut other_key = right.clone();
    other_key.settings = LedgerSettings {
        hash_key: HashKey([1, 2]),
        ..right.settings
    };
    assert!(left.absorb(other_key).is_err());
    check_unchanged(&left);
    let mut other_window = right.clone();
    other_window.settings.idempotency_window_ms += 1;
    assert!(left.absorb(other_window).is_err());
    check_unchanged(&left);
    // The right halves merge back into the whole, SKU numbers and all.
    left.absorb(right).expect("merges");
    let whole = sample();
    assert_eq!(left.skus, whole.skus);
    assert_eq!(left.sku_names, whole.sku_names);
    assert_eq!(
        left.order_events.values().collect::<Vec<_>>(),
        whole.order_events.values().collect::<Vec<_>>()
    );
    assert_eq!(left.orders.len(), whole.orders.len(), "the unknown-sku order once");
}

#[test]
fn a_split_at_a_bad_point_is_refused_and_changes_nothing() {
    let mut ledger = sample();
    let before = encoded(&ledger);
    assert!(ledger.split_off(b"").is_err());
    assert!(ledger.split_off(&[b'x'; 129]).is_err());
    assert_eq!(encoded(&ledger), before);
    // At the ends: one half has everything, the other nothing, and both are whole states.
    let everything = ledger.clone().split_off(b"a").expect("splits");
    assert_eq!(everything.skus.len(), 2);
    let nothing = ledger.split_off(b"zz").expect("splits");
    assert!(nothing.skus.is_empty() && nothing.reservations.is_empty() && nothing.order_events.is_empty());
    assert_eq!(nothing.orders.len(), 1, "only the unknown-sku order");
    assert_eq!(encoded(&ledger), before, "splitting past every sku keeps everything");
}

#[test]
fn an_order_id_both_halves_used_merges_only_when_the_right_one_holds_no_reservation() {
    let mut left = sample();
    let mut right = left.split_off(b"m").expect("splits");
    // After the split, "p-a" (a purchase of "a" on the left) is reused for a reservation of "z".
    let t = START_MS + 1;
    right
        .apply(5, &batch(t, vec![reserve(b"z", "p-a", 60_000)]))
        .expect("applies");
    let before = encoded(&left);
    assert!(
        left.clone().absorb(right.clone()).is_err(),
        "two live orders under one id"
    );
    assert_eq!(encoded(&left), before);
    // Once it is cancelled it holds nothing: the merge keeps the left's order for the id.
    let cancel = Operation::Cancel {
        sku: b"z".to_vec(),
        order_id: "p-a".into(),
        first_attempt_ms: t,
    };
    right.apply(6, &batch(t, vec![cancel])).expect("applies");
    left.absorb(right).expect("merges");
    assert_eq!(left.clock_ms, t, "the later clock of the two");
    let (answers, _) = left.apply(7, &batch(t, vec![buy(b"a", "p-a")])).expect("applies");
    assert_eq!(answers, vec![Outcome::Confirmed]);
    assert_eq!(left.stock(b"z").expect("z").available, 8);
}

/// Thousands of orders, over several chunks created at different times: each half packs its
/// orders into chunks anew, and none may leave the window earlier than in the whole.
#[test]
fn orders_over_many_chunks_keep_their_answers_and_leave_no_earlier() {
    let mut whole = LedgerState::default();
    let configure = LogCommand {
        timestamp_ms: START_MS,
        body: CommandBody::Configure(settings(true)),
    };
    whole.apply(1, &configure).expect("configures");
    whole
        .apply(
            2,
            &batch(START_MS, vec![put(b"a", 1_000_000, 0), put(b"z", 1_000_000, 0)]),
        )
        .expect("applies");
    let orders = 2 * CHUNK_RECORDS + 100;
    let take = |n: usize| {
        // Uneven: a third of the orders are of "a", reservations and purchases mixed.
        let sku: &[u8] = if n.is_multiple_of(3) { b"a" } else { b"z" };
        let id = format!("o{n}");
        if n.is_multiple_of(2) {
            reserve(sku, &id, 600_000)
        } else {
            buy(sku, &id)
        }
    };
    for (entry, ids) in (0..orders).collect::<Vec<_>>().chunks(64).enumerate() {
        let command = batch(START_MS + entry as u64, ids.iter().map(|n| take(*n)).collect());
        whole.apply(3 + entry as u64, &command).expect("applies");
    }
    assert!(whole.orders.frozen().chunks.len() >= 3);

    let mut left = whole.clone();
    let right = left.split_off(b"m").expect("splits");
    let whole_bounds = creation_bounds(&whole);
    for half in [&left, &right] {
        for (key, bound) in creation_bounds(half) {
            assert!(bound >= whole_bounds[&key], "an order would leave the window early");
        }
        assert!(events_fit_their_orders(half));
    }
    assert_eq!(left.orders.len() + right.orders.len(), orders);
    assert_eq!(left.reservations.len() + right.reservations.len(), orders.div_ceil(2));
    let retry_at = START_MS + 1_000;
    for n in [
        0,
        1,
        CHUNK_RECORDS - 1,
        CHUNK_RECORDS,
        CHUNK_RECORDS + 1,
        orders - 2,
        orders - 1,
    ] {
        let operation = take(n);
        let half = if operation.sku() < b"m".as_slice() {
            &left
        } else {
            &right
        };
        let (expected, _) = whole
            .clone()
            .apply(u64::MAX, &batch(retry_at, vec![operation.clone()]))
            .expect("applies");
        let (answer, _) = half
            .clone()
            .apply(u64::MAX, &batch(retry_at, vec![operation]))
            .expect("applies");
        assert_eq!(answer, expected, "retry of o{n}");
    }

    let mut merged = left;
    merged.absorb(right).expect("merges");
    assert_eq!(merged.orders.len(), orders);
    assert_eq!(merged.reservations.len(), whole.reservations.len());
    assert!(events_fit_their_orders(&merged));
    for (key, bound) in creation_bounds(&merged) {
        assert!(bound >= whole_bounds[&key], "an order would leave the window early");
    }
}
