//! [`RetryBudget`]: retries are at most a fixed fraction of calls, so a struggling cluster is
//! not buried under the retries of its own failures.
//!
//! Without a budget every failing call retries up to `retries_max` times: when a cluster is
//! overloaded or partitioned, the load it sees multiplies by `retries_max + 1` exactly when it
//! can least take it. The budget is a bucket of retry tokens shared by every call of a client:
//! each call puts `retry_budget_percent / 100` of a token in, time puts `retry_budget_min_per_s`
//! tokens a second in, each retry takes one out, and the bucket holds at most
//! `retry_budget_reserve` tokens (it starts full, so a client that has made few calls can still
//! ride out a failover). Over any stretch of time, retries are at most `retry_budget_percent` %
//! of the calls plus `retry_budget_min_per_s` a second plus the reserve. The floor is Finagle's
//! `minRetriesPerSec`: without it a client whose callers spent the bucket during a crash (every
//! call failing and retrying) could not retry even once afterwards until enough new calls had
//! refilled it, so the first call after the cluster recovered failed on one leader hand-over.
//! Following a not-leader redirect is routing, not a retry, and costs nothing.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Thousandths of a retry token: a call deposits a fraction of one.
const MILLI: u64 = 1_000;

/// A client's shared bucket of retry tokens.
#[derive(Debug)]
pub struct RetryBudget {
    /// Thousandths of a token each call deposits (`retry_budget_percent * 10`).
    deposit_milli: u64,
    /// Thousandths of a token each second deposits (`retry_budget_min_per_s * 1000`).
    per_second_milli: u64,
    /// The bucket's size in thousandths (`retry_budget_reserve * 1000`).
    capacity_milli: u64,
    bucket: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    balance_milli: u64,
    /// When time's deposit was last added.
    refilled: Instant,
}

impl RetryBudget {
    /// A full bucket of `reserve` tokens, refilled by `percent` % of a token per call and by
    /// `min_per_s` tokens a second.
    pub fn new(percent: u32, reserve: u32, min_per_s: u32) -> Self {
        let capacity_milli = u64::from(reserve) * MILLI;
        RetryBudget {
            deposit_milli: u64::from(percent) * MILLI / 100,
            per_second_milli: u64::from(min_per_s) * MILLI,
            capacity_milli,
            bucket: Mutex::new(Bucket {
                balance_milli: capacity_milli,
                refilled: Instant::now(),
            }),
        }
    }

    /// A call started: it earns the client a fraction of a retry.
    pub fn on_call(&self) {
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        bucket.balance_milli = bucket
            .balance_milli
            .saturating_add(self.deposit_milli)
            .min(self.capacity_milli);
    }

    /// Takes one retry from the bucket; `false` (and nothing taken) when it holds less than one.
    pub fn try_retry(&self) -> bool {
        self.try_retry_at(Instant::now())
    }

    fn try_retry_at(&self, now: Instant) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        self.refill(&mut bucket, now);
        if bucket.balance_milli < MILLI {
            return false;
        }
        bucket.balance_milli -= MILLI;
        true
    }

    /// Whole retries left in the bucket.
    pub fn retries_left(&self) -> u64 {
        let mut bucket = self.bucket.lock().unwrap_or_else(PoisonError::into_inner);
        self.refill(&mut bucket, Instant::now());
        bucket.balance_milli / MILLI
    }

    /// Adds time's deposit since the last refill. Whole milliseconds only, and the clock moves
    /// on by what was paid for, so no fraction is lost between frequent refills.
    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed_ms = now.saturating_duration_since(bucket.refilled).as_millis() as u64;
        if elapsed_ms == 0 {
            return;
        }
        bucket.refilled += Duration::from_millis(elapsed_ms);
        // Thousandths of a token per millisecond = tokens per second.
        let earned = elapsed_ms.saturating_mul(self.per_second_milli / MILLI);
        bucket.balance_milli = bucket.balance_milli.saturating_add(earned).min(self.capacity_milli);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_budget_holds_its_reserve() {
        let budget = RetryBudget::new(20, 3, 0);
        assert_eq!(budget.retries_left(), 3);
        assert!(budget.try_retry() && budget.try_retry() && budget.try_retry());
        assert!(!budget.try_retry(), "the reserve is spent");
        assert_eq!(budget.retries_left(), 0);
    }

    #[test]
    fn retries_are_at_most_the_fraction_of_calls_plus_the_reserve() {
        let budget = RetryBudget::new(10, 5, 0);
        let (mut calls, mut retries) = (0u64, 0u64);
        // Every call fails and asks for three retries: the budget decides how many it gets.
        for _ in 0..1_000 {
            budget.on_call();
            calls += 1;
            for _ in 0..3 {
                if budget.try_retry() {
                    retries += 1;
                }
            }
        }
        // The first call's deposit finds the bucket full (the reserve) and is lost.
        assert_eq!(
            retries,
            (calls - 1) / 10 + 5,
            "10 % of {calls} calls plus a reserve of 5"
        );
    }

    #[test]
    fn calls_refill_the_bucket_but_not_past_its_size() {
        let budget = RetryBudget::new(50, 2, 0);
        assert!(budget.try_retry() && budget.try_retry());
        budget.on_call();
        assert!(!budget.try_retry(), "half a token is not a retry");
        budget.on_call();
        assert!(budget.try_retry(), "two calls at 50 % earn one");
        for _ in 0..100 {
            budget.on_call();
        }
        assert_eq!(
            budget.retries_left(),
            2,
            "a quiet stretch does not bank more than the reserve"
        );
    }

    #[test]
    fn zero_percent_leaves_only_the_reserve() {
        let budget = RetryBudget::new(0, 1, 0);
        for _ in 0..100 {
            budget.on_call();
        }
        assert!(budget.try_retry());
        assert!(!budget.try_retry());
    }

    #[test]
    fn time_refills_a_spent_bucket_at_the_floor_rate_up_to_its_size() {
        let budget = RetryBudget::new(0, 5, 10);
        let start = budget.bucket.lock().unwrap().refilled;
        for _ in 0..5 {
            assert!(budget.try_retry_at(start));
        }
        assert!(!budget.try_retry_at(start), "the reserve is spent");
        assert!(
            !budget.try_retry_at(start + Duration::from_millis(99)),
            "99 ms at 10 a second is not yet one retry"
        );
        assert!(budget.try_retry_at(start + Duration::from_millis(100)));
        assert!(!budget.try_retry_at(start + Duration::from_millis(100)));
        // Ten minutes idle refill the bucket, not more.
        let later = start + Duration::from_secs(600);
        let taken = (0..100).filter(|_| budget.try_retry_at(later)).count();
        assert_eq!(taken, 5, "the floor never banks more than the reserve");
    }
}
