//! Per-node circuit breakers: a node that stopped answering is skipped instead of being tried
//! (and waited for) by every call.
//!
//! A [`Breaker`] is *closed* while its node answers. After `breaker_failures_max` failures in a
//! row (no answer: the connection failed or the attempt timed out) it *opens*: calls route
//! around the node for `breaker_open_ms`. Then it is *half-open*: one call may try the node (the
//! probe) while the others still route around it; the probe's success closes the breaker, its
//! failure opens it again. A probe that never reports (its call was dropped) is replaced after
//! another `breaker_open_ms`, so a breaker cannot stay half-open for ever.
//!
//! Only "the node did not answer" counts as a failure: a node that refuses (not the leader,
//! overloaded, bad request) is alive, and its answer closes the breaker.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The state of one node's breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// The node answers; `failures` is how many attempts in a row have not been answered.
    Closed { failures: u32 },
    /// The node is skipped until `until`.
    Open { until: Instant },
    /// One probe call, sent at `probe_sent`, is trying the node; the others skip it.
    HalfOpen { probe_sent: Instant },
}

/// One node's breaker. Pure: the caller passes the time, which keeps it testable and lets the
/// simulator's clock drive it.
#[derive(Debug, Clone)]
pub struct Breaker {
    state: BreakerState,
    failures_max: u32,
    open_for: Duration,
}

impl Breaker {
    /// A closed breaker that opens after `failures_max` unanswered attempts in a row (0: never)
    /// for `open_for`.
    pub fn new(failures_max: u32, open_for: Duration) -> Self {
        Breaker {
            state: BreakerState::Closed { failures: 0 },
            failures_max,
            open_for,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// Whether a call may try the node now. When the open period is over (or a probe went
    /// missing), this call becomes the half-open probe.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed { .. } => true,
            BreakerState::Open { until } if now < until => false,
            BreakerState::HalfOpen { probe_sent } if now < probe_sent + self.open_for => false,
            BreakerState::Open { .. } | BreakerState::HalfOpen { .. } => {
                self.state = BreakerState::HalfOpen { probe_sent: now };
                true
            }
        }
    }

    /// The node answered: closed, the failure count cleared.
    pub fn on_answer(&mut self) {
        self.state = BreakerState::Closed { failures: 0 };
    }

    /// An attempt at the node got no answer.
    pub fn on_failure(&mut self, now: Instant) {
        self.state = match self.state {
            BreakerState::Closed { failures } => {
                let failures = failures.saturating_add(1);
                if self.failures_max > 0 && failures >= self.failures_max {
                    BreakerState::Open {
                        until: now + self.open_for,
                    }
                } else {
                    BreakerState::Closed { failures }
                }
            }
            // The probe failed (or a call sent before the breaker opened did): open again.
            BreakerState::HalfOpen { .. } | BreakerState::Open { .. } => BreakerState::Open {
                until: now + self.open_for,
            },
        };
    }
}

/// The breakers of every node address a client has tried.
#[derive(Debug)]
pub(crate) struct Breakers {
    failures_max: u32,
    open_for: Duration,
    /// Bounded by the addresses the cluster names (as the channel cache is).
    by_addr: Mutex<HashMap<String, Breaker>>,
}

impl Breakers {
    pub(crate) fn new(failures_max: u32, open_for: Duration) -> Self {
        Breakers {
            failures_max,
            open_for,
            by_addr: Mutex::new(HashMap::new()),
        }
    }

    fn with<T>(&self, addr: &str, action: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut by_addr = self.by_addr.lock().unwrap_or_else(PoisonError::into_inner);
        let breaker = by_addr
            .entry(addr.to_string())
            .or_insert_with(|| Breaker::new(self.failures_max, self.open_for));
        action(breaker)
    }

    /// Whether a call may try `addr` now (see [`Breaker::allow`]).
    pub(crate) fn allow(&self, addr: &str) -> bool {
        let now = Instant::now();
        self.with(addr, |breaker| breaker.allow(now))
    }

    pub(crate) fn on_answer(&self, addr: &str) {
        self.with(addr, Breaker::on_answer);
    }

    pub(crate) fn on_failure(&self, addr: &str) {
        let now = Instant::now();
        self.with(addr, |breaker| breaker.on_failure(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN_FOR: Duration = Duration::from_millis(500);

    fn breaker() -> (Breaker, Instant) {
        (Breaker::new(3, OPEN_FOR), Instant::now())
    }

    /// A breaker that has just opened (three failures in a row at the returned time).
    fn opened() -> (Breaker, Instant) {
        let (mut breaker, now) = breaker();
        for _ in 0..3 {
            breaker.on_failure(now);
        }
        (breaker, now)
    }

    #[test]
    fn closed_until_the_failures_in_a_row_reach_the_bound() {
        let (mut breaker, now) = breaker();
        breaker.on_failure(now);
        breaker.on_failure(now);
        assert_eq!(breaker.state(), BreakerState::Closed { failures: 2 });
        assert!(breaker.allow(now));
        // An answer in between starts the count again.
        breaker.on_answer();
        breaker.on_failure(now);
        breaker.on_failure(now);
        assert!(breaker.allow(now), "two failures since the last answer do not open it");
        breaker.on_failure(now);
        assert_eq!(breaker.state(), BreakerState::Open { until: now + OPEN_FOR });
    }

    #[test]
    fn open_refuses_calls_until_its_period_ends_then_lets_one_probe_through() {
        let (mut breaker, now) = opened();
        assert!(!breaker.allow(now));
        assert!(!breaker.allow(now + OPEN_FOR - Duration::from_millis(1)));
        let later = now + OPEN_FOR;
        assert!(breaker.allow(later), "the first call after the period is the probe");
        assert_eq!(breaker.state(), BreakerState::HalfOpen { probe_sent: later });
        assert!(!breaker.allow(later), "while the probe is out, the others route around");
    }

    #[test]
    fn the_probes_answer_closes_it() {
        let (mut breaker, now) = opened();
        assert!(breaker.allow(now + OPEN_FOR));
        breaker.on_answer();
        assert_eq!(breaker.state(), BreakerState::Closed { failures: 0 });
        assert!(breaker.allow(now + OPEN_FOR));
    }

    #[test]
    fn the_probes_failure_opens_it_again_for_a_full_period() {
        let (mut breaker, now) = opened();
        let probe = now + OPEN_FOR;
        assert!(breaker.allow(probe));
        breaker.on_failure(probe + Duration::from_millis(10));
        let reopened = probe + Duration::from_millis(10);
        assert_eq!(
            breaker.state(),
            BreakerState::Open {
                until: reopened + OPEN_FOR
            }
        );
        assert!(!breaker.allow(reopened + OPEN_FOR - Duration::from_millis(1)));
        assert!(breaker.allow(reopened + OPEN_FOR));
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced() {
        let (mut breaker, now) = opened();
        let probe = now + OPEN_FOR;
        assert!(breaker.allow(probe));
        assert!(!breaker.allow(probe + OPEN_FOR - Duration::from_millis(1)));
        assert!(
            breaker.allow(probe + OPEN_FOR),
            "a new probe once the lost one is a period old"
        );
    }

    #[test]
    fn zero_failures_max_never_opens() {
        let mut breaker = Breaker::new(0, OPEN_FOR);
        let now = Instant::now();
        for _ in 0..100 {
            breaker.on_failure(now);
        }
        assert!(breaker.allow(now));
    }

    #[test]
    fn breakers_are_per_address() {
        let breakers = Breakers::new(1, OPEN_FOR);
        breakers.on_failure("10.0.0.1:7101");
        assert!(!breakers.allow("10.0.0.1:7101"));
        assert!(breakers.allow("10.0.0.2:7101"));
        breakers.on_answer("10.0.0.1:7101");
        assert!(breakers.allow("10.0.0.1:7101"));
    }
}
