//! [`RetryBudget`]: retries are at most a fixed fraction of calls, so a struggling cluster is
//! not buried under the retries of its own failures.
//!
//! Without a budget every failing call retries up to `retries_max` times: when a cluster is
//! overloaded or partitioned, the load it sees multiplies by `retries_max + 1` exactly when it
//! can least take it. The budget is a bucket of retry tokens shared by every call of a client:
//! each call puts `retry_budget_percent / 100` of a token in, each retry takes one out, and the
//! bucket holds at most `retry_budget_reserve` tokens (it starts full, so a client that has made
//! few calls can still ride out a failover). Over any stretch of time, retries are at most
//! `retry_budget_percent` % of the calls plus the reserve. Following a not-leader redirect is
//! routing, not a retry, and costs nothing.

use std::sync::{Mutex, PoisonError};

/// Thousandths of a retry token: a call deposits a fraction of one.
const MILLI: u64 = 1_000;

/// A client's shared bucket of retry tokens.
#[derive(Debug)]
pub struct RetryBudget {
    /// Thousandths of a token each call deposits (`retry_budget_percent * 10`).
    deposit_milli: u64,
    /// The bucket's size in thousandths (`retry_budget_reserve * 1000`).
    capacity_milli: u64,
    balance_milli: Mutex<u64>,
}

impl RetryBudget {
    /// A full bucket of `reserve` tokens, refilled by `percent` % of a token per call.
    pub fn new(percent: u32, reserve: u32) -> Self {
        let capacity_milli = u64::from(reserve) * MILLI;
        RetryBudget {
            deposit_milli: u64::from(percent) * MILLI / 100,
            capacity_milli,
            balance_milli: Mutex::new(capacity_milli),
        }
    }

    /// A call started: it earns the client a fraction of a retry.
    pub fn on_call(&self) {
        let mut balance = self.balance_milli.lock().unwrap_or_else(PoisonError::into_inner);
        *balance = balance.saturating_add(self.deposit_milli).min(self.capacity_milli);
    }

    /// Takes one retry from the bucket; `false` (and nothing taken) when it holds less than one.
    pub fn try_retry(&self) -> bool {
        let mut balance = self.balance_milli.lock().unwrap_or_else(PoisonError::into_inner);
        if *balance < MILLI {
            return false;
        }
        *balance -= MILLI;
        true
    }

    /// Whole retries left in the bucket.
    pub fn retries_left(&self) -> u64 {
        *self.balance_milli.lock().unwrap_or_else(PoisonError::into_inner) / MILLI
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_budget_holds_its_reserve() {
        let budget = RetryBudget::new(20, 3);
        assert_eq!(budget.retries_left(), 3);
        assert!(budget.try_retry() && budget.try_retry() && budget.try_retry());
        assert!(!budget.try_retry(), "the reserve is spent");
        assert_eq!(budget.retries_left(), 0);
    }

    #[test]
    fn retries_are_at_most_the_fraction_of_calls_plus_the_reserve() {
        let budget = RetryBudget::new(10, 5);
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
        let budget = RetryBudget::new(50, 2);
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
        let budget = RetryBudget::new(0, 1);
        for _ in 0..100 {
            budget.on_call();
        }
        assert!(budget.try_retry());
        assert!(!budget.try_retry());
    }
}
