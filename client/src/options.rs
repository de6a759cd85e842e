//! [`ClientOptions`]: every bound the client works under, named with its unit last.
//!
//! A call makes at most `retries_max + 1` RPC attempts, each cut off after
//! `attempt_timeout_ms`, all within `request_timeout_ms`. A failed attempt moves to the next
//! replica at once; only when every replica of the shard has failed in a row (or a node asked
//! the call to wait) does the call sleep a jittered exponential backoff from
//! `backoff_ms_initial` doubling up to `backoff_ms_max` ([`crate::Backoff`]), never shorter than
//! a node's `x-retry-after-ms`. Retries (not redirects) are paid from a budget shared by the
//! client's calls: at most `retry_budget_percent` % of the calls plus `retry_budget_min_per_s`
//! a second plus `retry_budget_reserve` ([`crate::RetryBudget`]). A node that failed `breaker_failures_max` attempts in a row is
//! skipped for `breaker_open_ms`, then probed by one call ([`crate::breaker`]).

use std::time::Duration;

use crate::ClientError;
use crate::backoff::{Backoff, jitter_seed};

/// Timeouts and retry bounds for a [`crate::Client`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOptions {
    /// Overall deadline for one call, all attempts and backoffs included.
    pub request_timeout_ms: u64,
    /// Deadline for one RPC attempt (a slow node is abandoned for the next replica).
    pub attempt_timeout_ms: u64,
    /// Deadline for opening a TCP connection to a node.
    pub connect_timeout_ms: u64,
    /// Retries after the first attempt; a call makes at most `retries_max + 1` attempts. 100: a
    /// call fails over without pausing and pauses (at most `backoff_ms_max`) only between rounds
    /// of the shard's replicas, whose "no leader yet" answers come back at once, so an election
    /// costs some 15 attempts a half second; 100 rides out one that takes 3 s (a split vote on
    /// a loaded host: 20 gave up after ~0.7 s), and `request_timeout_ms` stays the real bound.
    /// The retry budget, not this, bounds what retries add to the cluster's load.
    pub retries_max: u32,
    /// First backoff after a retryable failure.
    pub backoff_ms_initial: u64,
    /// Cap on the exponentially growing backoff. 100 ms: the pause a call may still be sleeping
    /// when a new leader is elected is added to the failover a caller sees; at 500 ms (the old
    /// default) it was up to half of it. A lower cap costs a few more "no leader yet" round
    /// trips during an election, which the retry budget bounds.
    pub backoff_ms_max: u64,
    /// Retries a call may take from the client's budget: each call adds this percent of one
    /// retry to it, so retries are at most this share of calls (plus the reserve). 0 to 100.
    pub retry_budget_percent: u32,
    /// Retries the budget holds (and starts with): what a quiet client can spend riding out a
    /// failover before its calls' own deposits count.
    pub retry_budget_reserve: u32,
    /// Retries a second the budget earns however few calls there are (Finagle's
    /// `minRetriesPerSec`): a bucket spent while the cluster was failing fills again with time,
    /// so the first calls after it recovered can still ride out a leader hand-over.
    pub retry_budget_min_per_s: u32,
    /// Attempts at one node in a row that get no answer (connection failed, attempt timed out)
    /// before calls route around it; 0: never.
    pub breaker_failures_max: u32,
    /// How long calls route around a node whose breaker opened before one call probes it.
    pub breaker_open_ms: u64,
    /// Concurrent reserve/confirm/cancel/purchase calls to one shard are sent together as one
    /// Batch RPC (one log entry) of at most this many operations; 0 or 1 sends each alone.
    pub coalesce_ops_max: usize,
    /// Batch RPCs one shard may have in flight at once when coalescing. Few and large beat many
    /// and small on a loaded machine (each RPC costs more than an operation in it): measured with
    /// 64 callers, 2 in flight did 10–18 % more purchases and 12 % more sold-out answers than 4,
    /// and 1 left the pipeline idle during each round trip (docs/benchmarks.md).
    pub coalesce_inflight_max: usize,
    /// TLS and the bearer token; the default (none) talks plaintext to an insecure cluster.
    pub credentials: crate::Credentials,
    /// Who this client is, sent with every call (`x-client-id`) for the nodes' per-client rate
    /// limits, e.g. the service and instance; `None`: the nodes use the authenticated caller's
    /// name, else this machine's address. At most 128 bytes of visible ASCII.
    pub client_id: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            request_timeout_ms: 5_000,
            attempt_timeout_ms: 1_000,
            connect_timeout_ms: 500,
            retries_max: 100,
            backoff_ms_initial: 10,
            backoff_ms_max: 100,
            retry_budget_percent: 20,
            retry_budget_reserve: 100,
            retry_budget_min_per_s: 10,
            breaker_failures_max: 3,
            breaker_open_ms: 500,
            coalesce_ops_max: 0,
            coalesce_inflight_max: 2,
            credentials: crate::Credentials::default(),
            client_id: None,
        }
    }
}

impl ClientOptions {
    /// Rejects options no call could succeed under.
    pub fn validate(&self) -> Result<(), ClientError> {
        let fail = |why: &str| Err(ClientError::Config(why.to_string()));
        if self.request_timeout_ms == 0 {
            return fail("request_timeout_ms must be > 0");
        }
        if self.attempt_timeout_ms == 0 {
            return fail("attempt_timeout_ms must be > 0");
        }
        if self.connect_timeout_ms == 0 {
            return fail("connect_timeout_ms must be > 0");
        }
        if self.coalesce_ops_max > 1 && self.coalesce_inflight_max == 0 {
            return fail("coalesce_inflight_max must be > 0 when coalescing");
        }
        if self.backoff_ms_initial > self.backoff_ms_max {
            return fail("backoff_ms_initial must be <= backoff_ms_max");
        }
        if self.retry_budget_percent > 100 {
            return fail("retry_budget_percent must be at most 100");
        }
        if self.breaker_failures_max > 0 && self.breaker_open_ms == 0 {
            return fail("breaker_open_ms must be > 0 when breaker_failures_max is");
        }
        if let Some(id) = &self.client_id {
            let visible = id.bytes().all(|b| b.is_ascii_graphic() || b == b' ');
            if id.len() > 128 || !visible {
                return fail("client_id must be at most 128 bytes of visible ASCII");
            }
        }
        Ok(())
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub(crate) fn attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.attempt_timeout_ms)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// The backoff of one call's retries, its jitter seeded by `salt` (see [`crate::backoff`]).
    pub(crate) fn backoff(&self, salt: u64) -> Backoff {
        Backoff::new(
            Duration::from_millis(self.backoff_ms_initial),
            Duration::from_millis(self.backoff_ms_max),
            jitter_seed(salt),
        )
    }

    pub(crate) fn breaker_open(&self) -> Duration {
        Duration::from_millis(self.breaker_open_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_calls_backoff_follows_the_options() {
        let options = ClientOptions {
            backoff_ms_initial: 10,
            backoff_ms_max: 100,
            ..ClientOptions::default()
        };
        let backoff = options.backoff(1);
        let ceilings: Vec<u128> = (0..6).map(|i| backoff.ceiling(i).as_millis()).collect();
        assert_eq!(ceilings, vec![10, 20, 40, 80, 100, 100]);
    }

    #[test]
    fn validate_rejects_a_budget_past_every_call_and_a_breaker_that_never_closes() {
        let over = ClientOptions {
            retry_budget_percent: 101,
            ..ClientOptions::default()
        };
        assert!(matches!(over.validate(), Err(ClientError::Config(why)) if why.contains("retry_budget_percent")));
        let stuck = ClientOptions {
            breaker_open_ms: 0,
            ..ClientOptions::default()
        };
        assert!(matches!(stuck.validate(), Err(ClientError::Config(why)) if why.contains("breaker_open_ms")));
    }

    #[test]
    fn validate_rejects_inverted_backoff() {
        let options = ClientOptions {
            backoff_ms_initial: 10,
            backoff_ms_max: 1,
            ..ClientOptions::default()
        };
        assert!(matches!(options.validate(), Err(ClientError::Config(_))));
        assert!(ClientOptions::default().validate().is_ok());
    }
}
