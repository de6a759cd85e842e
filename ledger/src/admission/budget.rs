//! [`Budget`]: a count of operations in flight with a ceiling per priority class, taken and
//! given back without a lock or a wait, and the [`Permit`] that gives back what it took.
//!
//! A class may take operations while the count stays within its ceiling (its share of the
//! budget), so under load BACKGROUND is refused first, then STANDARD, and PREMIUM keeps the top
//! of the budget to itself. A request larger than its class's ceiling (a big batch) is let into
//! an empty budget, so that it is never refused forever; the count then exceeds the ceiling by
//! at most that one request.
//!
//! Invariant: the count is the sum of the operations of the permits alive; a permit gives its
//! operations back when it is dropped, whatever path its request leaves by.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::admission::Priority;

/// The least and the most a retry-after hint says: under a millisecond is no hint, and a client
/// told to wait more than a second would rather hear that the node is down.
const RETRY_AFTER_MIN: Duration = Duration::from_millis(1);
const RETRY_AFTER_MAX: Duration = Duration::from_millis(1_000);

/// Operations in flight, with a ceiling per class.
#[derive(Debug)]
pub struct Budget {
    inflight: AtomicU64,
    /// The most operations in flight each class may bring the count to, by
    /// [`Priority::index`]: the whole budget for PREMIUM, its shares for the others.
    ceilings: [u64; 3],
    /// How long a permit was held, on average (exponentially weighted, 1/8 per sample), in µs:
    /// about when the next operation will leave, so the retry-after hint of a refusal.
    held_us: AtomicU64,
}

/// Why a budget refused: which class, and how full it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    pub inflight: u64,
    pub ceiling: u64,
}

impl Budget {
    /// A budget of `max` operations in flight, of which STANDARD may fill `standard_percent`
    /// and BACKGROUND `background_percent` (at least one operation each).
    pub fn new(max: u64, standard_percent: u64, background_percent: u64) -> Budget {
        let share = |percent: u64| (max.saturating_mul(percent) / 100).clamp(1, max.max(1));
        Budget {
            inflight: AtomicU64::new(0),
            ceilings: [max.max(1), share(standard_percent), share(background_percent)],
            held_us: AtomicU64::new(0),
        }
    }

    /// Takes `ops` operations for `priority`, or says how full the budget is.
    pub fn try_take(&self, priority: Priority, ops: u64) -> Result<(), Full> {
        let ceiling = self.ceilings[priority.index()];
        let mut inflight = self.inflight.load(Ordering::Relaxed);
        loop {
            let fits = inflight.saturating_add(ops) <= ceiling || inflight == 0;
            if !fits {
                return Err(Full { inflight, ceiling });
            }
            match self
                .inflight
                .compare_exchange_weak(inflight, inflight + ops, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(current) => inflight = current,
            }
        }
    }

    /// Gives back `ops` operations held for `held`.
    pub fn give_back(&self, ops: u64, held: Duration) {
        let before = self.inflight.fetch_sub(ops, Ordering::AcqRel);
        assert!(
            before >= ops,
            "admission budget: gave back {ops} of {before} operations in flight"
        );
        let sample = u64::try_from(held.as_micros()).unwrap_or(u64::MAX);
        // An average of concurrent samples: a lost update only skips one of them.
        let average = self.held_us.load(Ordering::Relaxed);
        let next = if average == 0 {
            sample
        } else {
            average - average / 8 + sample / 8
        };
        self.held_us.store(next, Ordering::Relaxed);
    }

    /// Operations in flight now.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// The ceiling of `priority`.
    pub fn ceiling(&self, priority: Priority) -> u64 {
        self.ceilings[priority.index()]
    }

    /// How long an admitted operation has recently stayed in flight.
    pub fn typical_hold(&self) -> Duration {
        Duration::from_micros(self.held_us.load(Ordering::Relaxed))
    }

    /// When a refused request may find room: the typical hold time, within sane bounds.
    pub fn retry_after(&self) -> Duration {
        self.typical_hold().clamp(RETRY_AFTER_MIN, RETRY_AFTER_MAX)
    }
}

/// Operations taken from a node's budget and a shard's; given back when dropped.
#[derive(Debug)]
pub struct Permit {
    node: Arc<Budget>,
    shard: Arc<Budget>,
    ops: u64,
    taken_at: Instant,
}

impl Permit {
    /// Takes `ops` for `priority` from both budgets, or from neither.
    pub(crate) fn take(
        node: &Arc<Budget>,
        shard: &Arc<Budget>,
        priority: Priority,
        ops: u64,
    ) -> Result<Permit, (Scope, Full)> {
        node.try_take(priority, ops).map_err(|full| (Scope::Node, full))?;
        if let Err(full) = shard.try_take(priority, ops) {
            node.give_back(ops, Duration::ZERO);
            return Err((Scope::Shard, full));
        }
        Ok(Permit {
            node: node.clone(),
            shard: shard.clone(),
            ops,
            taken_at: Instant::now(),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let held = self.taken_at.elapsed();
        self.shard.give_back(self.ops, held);
        self.node.give_back(self.ops, held);
    }
}

/// Which budget was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Node,
    Shard,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scope::Node => "node",
            Scope::Shard => "shard",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_fills_only_its_share() {
        let budget = Budget::new(10, 80, 50);
        assert_eq!(
            (
                budget.ceiling(Priority::Premium),
                budget.ceiling(Priority::Standard),
                budget.ceiling(Priority::Background)
            ),
            (10, 8, 5)
        );
        assert_eq!(budget.try_take(Priority::Background, 5), Ok(()));
        assert_eq!(
            budget.try_take(Priority::Background, 1),
            Err(Full {
                inflight: 5,
                ceiling: 5
            })
        );
        assert_eq!(budget.try_take(Priority::Standard, 3), Ok(()));
        assert_eq!(
            budget.try_take(Priority::Standard, 1),
            Err(Full {
                inflight: 8,
                ceiling: 8
            })
        );
        assert_eq!(budget.try_take(Priority::Premium, 2), Ok(()));
        assert_eq!(
            budget.try_take(Priority::Premium, 1),
            Err(Full {
                inflight: 10,
                ceiling: 10
            })
        );
        budget.give_back(10, Duration::from_millis(4));
        assert_eq!(budget.inflight(), 0);
        assert_eq!(budget.typical_hold(), Duration::from_millis(4));
    }

    #[test]
    fn a_request_larger_than_its_share_enters_only_an_empty_budget() {
        let budget = Budget::new(10, 80, 50);
        assert_eq!(budget.try_take(Priority::Background, 7), Ok(()));
        assert!(budget.try_take(Priority::Premium, 7).is_err());
        budget.give_back(7, Duration::ZERO);
        assert_eq!(budget.try_take(Priority::Premium, 64), Ok(()));
        assert_eq!(budget.inflight(), 64);
    }

    #[test]
    fn a_permit_takes_from_both_budgets_or_neither_and_gives_back_on_drop() {
        let node = Arc::new(Budget::new(10, 100, 100));
        let shard = Arc::new(Budget::new(4, 100, 100));
        let permit = Permit::take(&node, &shard, Priority::Standard, 3).expect("fits");
        assert_eq!((node.inflight(), shard.inflight()), (3, 3));
        let refused = Permit::take(&node, &shard, Priority::Standard, 2).expect_err("shard full");
        assert_eq!(
            refused,
            (
                Scope::Shard,
                Full {
                    inflight: 3,
                    ceiling: 4
                }
            )
        );
        assert_eq!(node.inflight(), 3, "the node's share was given back");
        drop(permit);
        assert_eq!((node.inflight(), shard.inflight()), (0, 0));
    }

    #[test]
    fn the_retry_hint_follows_how_long_operations_stay_within_bounds() {
        let budget = Budget::new(10, 100, 100);
        assert_eq!(budget.retry_after(), RETRY_AFTER_MIN);
        budget.try_take(Priority::Standard, 1).expect("fits");
        budget.give_back(1, Duration::from_secs(30));
        assert_eq!(budget.retry_after(), RETRY_AFTER_MAX);
        for _ in 0..64 {
            budget.try_take(Priority::Standard, 1).expect("fits");
            budget.give_back(1, Duration::from_millis(20));
        }
        let hint = budget.retry_after();
        assert!(
            hint >= Duration::from_millis(20) && hint < Duration::from_millis(40),
            "{hint:?}"
        );
    }
}
