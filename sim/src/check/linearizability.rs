//! Linearizability of the recorded history, one SKU at a time (P-compositionality: a history is
//! linearizable iff its projection on every SKU is, because no operation spans two SKUs — the
//! workload's batches touch distinct SKUs, and each batch member is recorded as its own op).
//!
//! The search is Wing & Gong's, with Lowe's just-in-time linearization and porcupine's cache
//! of (linearized set, model state): walk the calls and returns in time order; at a call, try to
//! linearize that operation now (its answer must match what the sequential model answers); at a
//! return whose call is not yet linearized, undo the last choice. A write with an indeterminate
//! answer (timeout, unavailable) may take effect at any point after its invocation — or never,
//! which is the same as at the very end — so it gets a return at infinity and any answer.
//!
//! The sequential specification is [`crate::check::model`], an independent model of one SKU
//! (not the ledger's state machine, so a bug there is not also in the yardstick). Reservations
//! in checked SKUs must not expire during a run (the model has no clock); SKUs whose
//! reservations do expire are left to the other checkers.
//!
//! An indeterminate reserve or purchase whose order is absent from the final state, where it
//! cannot have been pruned (inside the idempotency window), never took effect (or took effect as
//! a sold-out answer, which changes nothing): it is left out instead of being searched as a
//! write that may take effect at any later point. Each such open write doubles the search; on a
//! hot SKU they were what left ~9 % of seeds with a SKU inconclusive.
//!
//! Retries are merged: a buyer resends an ambiguous write with the same order id (and first
//! attempt), and when a later attempt is answered with an outcome the ledger records (the order
//! exists, so every other attempt is a replay of it), the write took effect exactly once
//! somewhere between the first attempt's invocation and that answer: one operation with that
//! interval and answer, instead of an open "maybe" per ambiguous attempt. Answers that record
//! nothing (sold out, refused) do not merge: an earlier attempt may still take effect after them.
//!
//! The search is bounded by a step budget per SKU: a SKU that exhausts it is reported as
//! inconclusive, never as passing.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashSet;

use flashledger_client::Consistency;
use flashledger_client::Outcome;
use flashledger_client::WriteOp;

use crate::check::model;
use crate::check::model::Interner;
use crate::check::model::ModelOp;
use crate::check::model::SkuModel;
use crate::history::Answer;
use crate::history::Call;
use crate::history::Counts;
use crate::history::History;
use crate::history::Op;

/// What the check found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinearizabilityReport {
    pub skus_checked: usize,
    pub ops_checked: usize,
    /// SKUs whose search ran out of budget: neither proven nor refuted.
    pub inconclusive: Vec<String>,
}

/// Checks every SKU not in `skip` within `steps_max` search steps each. `never_happened`: order
/// ids the final state shows never existed (see the module docs).
pub fn check(
    history: &History,
    skip: &BTreeSet<Vec<u8>>,
    never_happened: &BTreeSet<String>,
    steps_max: u64,
) -> Result<LinearizabilityReport, String> {
    let merged = merge_retries(&history.ops);
    let mut by_sku: BTreeMap<&[u8], Vec<&Op>> = BTreeMap::new();
    for op in &merged {
        if checked(op) && !skip.contains(op.call.sku()) && !resolved_as_never(op, never_happened) {
            by_sku.entry(op.call.sku()).or_default().push(op);
        }
    }
    let mut report = LinearizabilityReport::default();
    for (sku, ops) in by_sku {
        report.skus_checked += 1;
        report.ops_checked += ops.len();
        match check_sku(&ops, steps_max) {
            Verdict::Linearizable => {}
            Verdict::Inconclusive => report.inconclusive.push(String::from_utf8_lossy(sku).into_owned()),
            Verdict::Violation(detail) => {
                return Err(format!(
                    "sku {:?}: the history of its {} ops is not linearizable: {detail}",
                    String::from_utf8_lossy(sku),
                    ops.len()
                ));
            }
        }
    }
    Ok(report)
}

/// Ops that constrain the search: decided or indeterminate writes, and successful
/// linearizable reads. Failed calls changed nothing; stale reads promise no recency.
fn checked(op: &Op) -> bool {
    match (&op.call, &op.answer) {
        (_, Answer::Failed(_)) => false,
        (Call::Read { consistency, .. }, Answer::Stock(_)) => *consistency == Consistency::Linearizable,
        (Call::Read { .. }, _) => false,
        (Call::Write(_), _) => true,
    }
}

/// The history with each write's ambiguous attempts merged into the attempt that settled it
/// (see the module docs). Attempts of one write are the same call by the same buyer.
fn merge_retries(ops: &[Op]) -> Vec<Op> {
    let mut merged: Vec<Op> = Vec::with_capacity(ops.len());
    // (buyer, the write) -> index in `merged` of its first ambiguous attempt still open.
    let mut open: BTreeMap<(usize, String), usize> = BTreeMap::new();
    for op in ops {
        let Call::Write(write) = &op.call else {
            merged.push(op.clone());
            continue;
        };
        let key = (op.client, format!("{write:?}"));
        match &op.answer {
            Answer::Indeterminate(_) => {
                // A later ambiguous attempt adds nothing: the first already may take effect
                // at any time after its invocation.
                if let std::collections::btree_map::Entry::Vacant(slot) = open.entry(key) {
                    slot.insert(merged.len());
                    merged.push(op.clone());
                }
            }
            Answer::Outcome(outcome) if settles(write, outcome) => match open.remove(&key) {
                Some(first) => {
                    merged[first].answer = op.answer.clone();
                    merged[first].return_ns = op.return_ns;
                }
                None => merged.push(op.clone()),
            },
            _ => merged.push(op.clone()),
        }
    }
    merged
}

/// Whether `outcome` shows `write` has taken effect for good, so that any other attempt of it
/// is a replay that changes nothing.
fn settles(write: &WriteOp, outcome: &Outcome) -> bool {
    match write {
        WriteOp::Reserve { .. } | WriteOp::Purchase { .. } => matches!(
            outcome,
            Outcome::Reserved { .. }
                | Outcome::Confirmed
                | Outcome::LimitExceeded { .. }
                | Outcome::SaleClosed
                | Outcome::UnknownSku
        ),
        WriteOp::Confirm { .. } => matches!(outcome, Outcome::Confirmed | Outcome::Expired),
        WriteOp::Cancel { .. } => matches!(
            outcome,
            Outcome::Released | Outcome::Expired | Outcome::AlreadyConfirmed
        ),
        WriteOp::PutSku { .. } | WriteOp::Restock { .. } => false,
    }
}

/// An indeterminate reserve or purchase of an order the final state shows never existed.
fn resolved_as_never(op: &Op, never_happened: &BTreeSet<String>) -> bool {
    match (&op.call, &op.answer) {
        (
            Call::Write(WriteOp::Reserve { order_id, .. } | WriteOp::Purchase { order_id, .. }),
            Answer::Indeterminate(_),
        ) => never_happened.contains(order_id),
        _ => false,
    }
}

enum Verdict {
    Linearizable,
    Inconclusive,
    Violation(String),
}

const NONE: usize = usize::MAX;

/// One call or return in the doubly linked event list.
struct Event {
    op: usize,
    is_call: bool,
    /// For a call: its return's index.
    partner: usize,
    prev: usize,
    next: usize,
}

fn check_sku(ops: &[&Op], steps_max: u64) -> Verdict {
    let mut interner = Interner::default();
    let mut model_ops = Vec::with_capacity(ops.len());
    for op in ops {
        match &op.call {
            Call::Read { .. } => model_ops.push(ModelOp::Read),
            Call::Write(write) => match ModelOp::from_write(write, &mut interner) {
                Ok(model_op) => model_ops.push(model_op),
                Err(reason) => return Verdict::Violation(format!("cannot check {}: {reason}", op.describe())),
            },
        }
    }
    let determinate = |op: &Op| !matches!(op.answer, Answer::Indeterminate(_));
    let return_time = |op: &Op| if determinate(op) { op.return_ns } else { u64::MAX };
    // (time, returns after calls at equal times so touching intervals count as concurrent)
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (index, op) in ops.iter().enumerate() {
        order.push((op.invoke_ns, false, index));
        order.push((return_time(op), true, index));
    }
    order.sort();
    let head = order.len();
    let mut events: Vec<Event> = Vec::with_capacity(order.len() + 1);
    let mut call_of = vec![NONE; ops.len()];
    let mut return_of = vec![NONE; ops.len()];
    for (position, &(_, is_return, op)) in order.iter().enumerate() {
        if is_return {
            return_of[op] = position;
        } else {
            call_of[op] = position;
        }
        events.push(Event {
            op,
            is_call: !is_return,
            partner: NONE,
            prev: if position == 0 { head } else { position - 1 },
            next: if position + 1 == order.len() {
                NONE
            } else {
                position + 1
            },
        });
    }
    events.push(Event {
        op: NONE,
        is_call: false,
        partner: NONE,
        prev: NONE,
        next: if order.is_empty() { NONE } else { 0 },
    });
    for op in 0..ops.len() {
        events[call_of[op]].partner = return_of[op];
    }

    // Depth-first search. A frame is a model state reached by linearizing a prefix; its
    // candidates are the calls that precede the first pending return (the minimal ops), tried
    // determinate ones first: an indeterminate write is most often one that never happened.
    // Once every determinate op is placed the rest may all take effect at the end: done.
    let mut remaining = ops.iter().filter(|op| determinate(op)).count();
    let mut linearized = vec![0u64; ops.len().div_ceil(64)];
    let mut cache: HashSet<(Vec<u64>, u64)> = HashSet::new();
    let first_candidates = candidates(&events, head, ops);
    let mut stack = vec![Frame {
        state: SkuModel::new(interner.order_count()),
        candidates: first_candidates,
        next: 0,
        lifted: NONE,
    }];
    let (mut deepest, mut blocker) = (0usize, NONE);
    let mut steps = 0u64;
    while remaining > 0 {
        let Some(frame) = stack.last_mut() else {
            let blocker = ops[blocker.min(ops.len() - 1)];
            return Verdict::Violation(format!(
                "at most {deepest} ops linearize; then this one cannot be placed: {}",
                blocker.describe()
            ));
        };
        let Some(&call) = frame.candidates.get(frame.next) else {
            if stack.len() > deepest {
                deepest = stack.len() - 1;
                blocker = first_pending_return(&events, head).unwrap_or(NONE);
            }
            let Some(dead_end) = stack.pop() else { continue };
            if dead_end.lifted != NONE {
                let op = events[dead_end.lifted].op;
                linearized[op / 64] &= !(1 << (op % 64));
                if determinate(ops[op]) {
                    remaining += 1;
                }
                unlift(&mut events, dead_end.lifted);
            }
            continue;
        };
        frame.next += 1;
        steps += 1;
        if steps > steps_max {
            return Verdict::Inconclusive;
        }
        let op = events[call].op;
        let Some(next_state) = step(&frame.state, ops[op], model_ops[op]) else {
            continue;
        };
        linearized[op / 64] |= 1 << (op % 64);
        if !cache.insert((linearized.clone(), state_hash(&next_state))) {
            linearized[op / 64] &= !(1 << (op % 64));
            continue;
        }
        lift(&mut events, call);
        if determinate(ops[op]) {
            remaining -= 1;
        }
        let next_candidates = candidates(&events, head, ops);
        stack.push(Frame {
            state: next_state,
            candidates: next_candidates,
            next: 0,
            lifted: call,
        });
    }
    Verdict::Linearizable
}

struct Frame {
    state: SkuModel,
    /// Call events that may be linearized next, in the order to try them.
    candidates: Vec<usize>,
    next: usize,
    /// The call linearized to reach this frame (`NONE` for the root).
    lifted: usize,
}

/// The calls before the first pending return, determinate ones first (each group by time).
fn candidates(events: &[Event], head: usize, ops: &[&Op]) -> Vec<usize> {
    let mut found = Vec::new();
    let mut entry = events[head].next;
    while entry != NONE && events[entry].is_call {
        found.push(entry);
        entry = events[entry].next;
    }
    found.sort_by_key(|&call| matches!(ops[events[call].op].answer, Answer::Indeterminate(_)));
    found
}

/// The op whose return bounds the current candidates.
fn first_pending_return(events: &[Event], head: usize) -> Option<usize> {
    let mut entry = events[head].next;
    while entry != NONE {
        if !events[entry].is_call {
            return Some(events[entry].op);
        }
        entry = events[entry].next;
    }
    None
}

/// Removes a call and its return from the list (they keep their own links for `unlift`).
fn lift(events: &mut [Event], call: usize) {
    for node in [call, events[call].partner] {
        let (prev, next) = (events[node].prev, events[node].next);
        events[prev].next = next;
        if next != NONE {
            events[next].prev = prev;
        }
    }
}

/// Puts back what `lift` removed, in reverse order.
fn unlift(events: &mut [Event], call: usize) {
    for node in [events[call].partner, call] {
        let (prev, next) = (events[node].prev, events[node].next);
        events[prev].next = node;
        if next != NONE {
            events[next].prev = node;
        }
    }
}

fn state_hash(state: &SkuModel) -> u64 {
    let mut hasher = crate::history::Fnv::default();
    std::hash::Hash::hash(state, &mut hasher);
    hasher.0
}

/// The model's next state if `op` can take effect in `state` with the answer it got.
fn step(state: &SkuModel, op: &Op, model_op: ModelOp) -> Option<SkuModel> {
    match &op.answer {
        Answer::Stock(counts) => {
            let model = state.counts.map(|c| Counts {
                total: c.total as i64,
                available: c.available as i64,
                reserved: c.reserved as i64,
                sold: c.sold as i64,
            });
            (model == *counts).then(|| state.clone())
        }
        answer => {
            let mut next = state.clone();
            let model_answer: Option<model::Answer> = next.apply(model_op);
            let matches = match answer {
                Answer::Outcome(observed) => model_answer.is_some_and(|a| a.matches(observed)),
                _ => true,
            };
            matches.then_some(next)
        }
    }
}

/// The ledger's form of a client write (for the model's own cross-check against the ledger).
#[cfg(test)]
pub(crate) fn to_ledger_operation(op: &flashledger_client::WriteOp) -> ledger::state_machine::command::Operation {
    use flashledger_client::WriteOp;
    use ledger::state_machine::command::Operation;
    let unsigned = |value: i64| u64::try_from(value).unwrap_or(u64::MAX);
    match op.clone() {
        WriteOp::Reserve {
            sku,
            qty,
            user,
            order_id,
            ttl,
            first_attempt_ms,
        } => Operation::Reserve {
            sku,
            qty: unsigned(qty),
            user,
            order_id,
            ttl_ms: ttl.map_or(0, |ttl| ttl.as_millis() as u64),
            first_attempt_ms: unsigned(first_attempt_ms),
        },
        WriteOp::Confirm {
            sku,
            order_id,
            first_attempt_ms,
        } => Operation::Confirm {
            sku,
            order_id,
            first_attempt_ms: unsigned(first_attempt_ms),
        },
        WriteOp::Cancel {
            sku,
            order_id,
            first_attempt_ms,
        } => Operation::Cancel {
            sku,
            order_id,
            first_attempt_ms: unsigned(first_attempt_ms),
        },
        WriteOp::Purchase {
            sku,
            qty,
            user,
            order_id,
            first_attempt_ms,
        } => Operation::Purchase {
            sku,
            qty: unsigned(qty),
            user,
            order_id,
            first_attempt_ms: unsigned(first_attempt_ms),
        },
        WriteOp::PutSku { sku, total, .. } => Operation::PutSku {
            sku,
            total: unsigned(total),
            rules: Default::default(),
        },
        WriteOp::Restock { sku, delta } => Operation::Restock { sku, delta },
    }
}

/// The ledger's outcome as the client would have received it (for the same cross-check).
#[cfg(test)]
pub(crate) fn client_outcome(outcome: &ledger::state_machine::command::Outcome) -> flashledger_client::Outcome {
    use flashledger_client::Outcome;
    use ledger::state_machine::command::Outcome as Ledger;
    match outcome {
        Ledger::Reserved { expires_at_ms } => Outcome::Reserved {
            expires_at_ms: *expires_at_ms as i64,
        },
        Ledger::Confirmed => Outcome::Confirmed,
        Ledger::Released => Outcome::Released,
        Ledger::Ok => Outcome::Ok,
        Ledger::SoldOut { available } => Outcome::SoldOut {
            available: *available as i64,
        },
        Ledger::LimitExceeded { held, limit } => Outcome::LimitExceeded {
            held: *held as i64,
            limit: *limit as i64,
        },
        Ledger::SaleClosed => Outcome::SaleClosed,
        Ledger::UnknownSku => Outcome::UnknownSku,
        Ledger::NotFound => Outcome::NotFound,
        Ledger::Expired => Outcome::Expired,
        Ledger::AlreadyConfirmed => Outcome::AlreadyConfirmed,
        Ledger::OrderIdReused => Outcome::OrderIdReused { detail: String::new() },
        Ledger::RequestTooOld => Outcome::RequestTooOld,
        Ledger::Rejected { reason } => Outcome::Rejected { detail: reason.clone() },
        // Never answered to a client (the node turns it into a stale epoch); as the wire says it.
        Ledger::WrongShard { epoch } => Outcome::Rejected {
            detail: format!("the SKU left this shard (now at epoch {epoch})"),
        },
    }
}

#[cfg(test)]
mod tests {
    use flashledger_client::Outcome;
    use flashledger_client::WriteOp;

    use super::*;

    fn op(client: usize, invoke: u64, ret: u64, call: Call, answer: Answer) -> Op {
        Op {
            client,
            invoke_ns: invoke,
            return_ns: ret,
            call,
            answer,
        }
    }

    fn put(total: i64) -> Call {
        Call::Write(WriteOp::PutSku {
            sku: b"hot".to_vec(),
            total,
            rules: Default::default(),
        })
    }

    fn purchase(order: &str) -> Call {
        Call::Write(WriteOp::Purchase {
            sku: b"hot".to_vec(),
            qty: 1,
            user: format!("user-{order}"),
            order_id: order.to_string(),
            first_attempt_ms: 1,
        })
    }

    fn read() -> Call {
        Call::Read {
            sku: b"hot".to_vec(),
            consistency: Consistency::Linearizable,
        }
    }

    fn counts(total: i64, available: i64, sold: i64) -> Answer {
        Answer::Stock(Some(Counts {
            total,
            available,
            reserved: 0,
            sold,
        }))
    }

    fn verdict(ops: Vec<Op>) -> Result<LinearizabilityReport, String> {
        check(&History { ops }, &BTreeSet::new(), &BTreeSet::new(), 100_000)
    }

    #[test]
    fn concurrent_purchases_of_the_last_unit_linearize_only_with_one_winner() {
        let base = vec![
            op(0, 0, 10, put(1), Answer::Outcome(Outcome::Ok)),
            op(1, 20, 40, purchase("a"), Answer::Outcome(Outcome::Confirmed)),
            op(
                2,
                25,
                45,
                purchase("b"),
                Answer::Outcome(Outcome::SoldOut { available: 0 }),
            ),
        ];
        assert!(verdict(base.clone()).is_ok());
        let mut both_win = base;
        both_win[2].answer = Answer::Outcome(Outcome::Confirmed);
        let error = verdict(both_win).unwrap_err();
        assert!(error.contains("not linearizable"), "{error}");
    }

    #[test]
    fn a_read_after_an_acknowledged_purchase_must_see_it() {
        let ops = vec![
            op(0, 0, 10, put(5), Answer::Outcome(Outcome::Ok)),
            op(1, 20, 30, purchase("a"), Answer::Outcome(Outcome::Confirmed)),
            op(2, 40, 50, read(), counts(5, 5, 0)),
        ];
        assert!(
            verdict(ops).is_err(),
            "a stale read after the purchase returned must be refused"
        );
        let concurrent = vec![
            op(0, 0, 10, put(5), Answer::Outcome(Outcome::Ok)),
            op(1, 20, 60, purchase("a"), Answer::Outcome(Outcome::Confirmed)),
            op(2, 40, 50, read(), counts(5, 5, 0)),
        ];
        assert!(
            verdict(concurrent).is_ok(),
            "a read concurrent with the purchase may miss it"
        );
    }

    #[test]
    fn an_indeterminate_write_may_happen_late_or_never() {
        let applied_late = vec![
            op(0, 0, 10, put(5), Answer::Outcome(Outcome::Ok)),
            op(1, 20, 30, purchase("a"), Answer::Indeterminate("timeout".into())),
            op(2, 40, 50, read(), counts(5, 5, 0)),
            op(2, 60, 70, read(), counts(5, 4, 1)),
        ];
        assert!(verdict(applied_late).is_ok());
        let never = vec![
            op(0, 0, 10, put(5), Answer::Outcome(Outcome::Ok)),
            op(1, 20, 30, purchase("a"), Answer::Indeterminate("timeout".into())),
            op(2, 40, 50, read(), counts(5, 5, 0)),
        ];
        assert!(verdict(never).is_ok());
        let undone = vec![
            op(0, 0, 10, put(5), Answer::Outcome(Outcome::Ok)),
            op(1, 20, 30, purchase("a"), Answer::Indeterminate("timeout".into())),
            op(2, 40, 50, read(), counts(5, 4, 1)),
            op(2, 60, 70, read(), counts(5, 5, 0)),
        ];
        assert!(verdict(undone).is_err(), "a write seen once cannot vanish");
    }

    #[test]
    fn a_retry_with_the_same_order_id_replays_the_first_answer() {
        let ops = vec![
            op(0, 0, 10, put(1), Answer::Outcome(Outcome::Ok)),
            op(1, 20, 30, purchase("a"), Answer::Indeterminate("timeout".into())),
            op(1, 40, 50, purchase("a"), Answer::Outcome(Outcome::Confirmed)),
            op(
                2,
                60,
                70,
                purchase("b"),
                Answer::Outcome(Outcome::SoldOut { available: 0 }),
            ),
        ];
        assert!(verdict(ops).is_ok());
    }

    #[test]
    fn retries_settled_by_a_recorded_answer_merge_into_one_operation() {
        let ops = vec![
            op(0, 0, 10, put(1), Answer::Outcome(Outcome::Ok)),
            op(1, 20, 30, purchase("a"), Answer::Indeterminate("t".into())),
            op(1, 40, 50, purchase("a"), Answer::Indeterminate("t".into())),
            op(1, 60, 70, purchase("a"), Answer::Outcome(Outcome::Confirmed)),
            op(2, 20, 30, purchase("b"), Answer::Indeterminate("t".into())),
            op(
                2,
                40,
                50,
                purchase("b"),
                Answer::Outcome(Outcome::SoldOut { available: 0 }),
            ),
        ];
        let merged = merge_retries(&ops);
        assert_eq!(merged.len(), 4, "{merged:#?}");
        // a: one operation from its first invocation to the answer that settled it.
        assert_eq!((merged[1].invoke_ns, merged[1].return_ns), (20, 70));
        assert_eq!(merged[1].answer, Answer::Outcome(Outcome::Confirmed));
        // b: a sold-out answer records nothing, so the ambiguous attempt stays open.
        assert_eq!(merged[2].answer, Answer::Indeterminate("t".into()));
        assert_eq!(merged[3].answer, Answer::Outcome(Outcome::SoldOut { available: 0 }));
        // A read between a's attempts may see it: the merged interval allows that.
        let mut seen_early = ops.clone();
        seen_early.push(op(3, 35, 38, read(), counts(1, 0, 1)));
        assert!(verdict(seen_early).is_ok());
    }

    #[test]
    fn a_search_that_runs_out_of_budget_is_inconclusive_not_passing() {
        let mut ops = vec![op(0, 0, 10, put(1000), Answer::Outcome(Outcome::Ok))];
        for i in 0..40 {
            ops.push(op(
                i,
                20,
                1000,
                purchase(&format!("o{i}")),
                Answer::Indeterminate("t".into()),
            ));
        }
        ops.push(op(99, 1001, 1002, read(), counts(1000, 1000 - 39, 39)));
        let report = check(&History { ops: ops.clone() }, &BTreeSet::new(), &BTreeSet::new(), 10).unwrap();
        assert_eq!(report.inconclusive, vec!["hot".to_string()]);
        // The final state shows which of them never happened: those are not searched.
        let never: BTreeSet<String> = (0..40).filter(|i| *i != 7).map(|i| format!("o{i}")).collect();
        let ops: Vec<Op> = ops
            .into_iter()
            .map(|mut op| {
                if let Answer::Stock(Some(counts)) = &mut op.answer {
                    (counts.available, counts.sold) = (999, 1);
                }
                op
            })
            .collect();
        let report = check(&History { ops: ops.clone() }, &BTreeSet::new(), &never, 10).unwrap();
        assert!(report.inconclusive.is_empty(), "{report:?}");
        // A write that the final state says never happened is not there to explain a read.
        let all_never: BTreeSet<String> = (0..40).map(|i| format!("o{i}")).collect();
        assert!(check(&History { ops }, &BTreeSet::new(), &all_never, 1_000).is_err());
    }
}
