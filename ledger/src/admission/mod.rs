//! Admission: whether a request may enter the node, decided before anything is proposed, in
//! constant time and without waiting, so that an overloaded node answers at once instead of
//! late (docs/architecture.md, "Admission").
//!
//! The gates a write passes, in order (a read passes the first two):
//!
//! 1. **Deadline** ([`deadline`]): a request whose `grpc-timeout` has passed is dropped:
//!    `DEADLINE_EXCEEDED`, not applied. (The node asks again right before proposing, against
//!    how long its commits take: `crate::node::latency`.)
//! 2. **Budget** ([`budget`]): operations in flight per node and per shard (a batch counts each
//!    of its operations), each [`Priority`] filling at most its share, so BACKGROUND is shed
//!    first and PREMIUM keeps the top of the budget. Past it: `RESOURCE_EXHAUSTED`, not applied,
//!    with a retry-after hint (how long admitted operations have recently stayed).
//! 3. **Rate limits** ([`rate`]): token buckets per client and per buyer for reserves and
//!    purchases; an operation over its limit is answered `RATE_LIMITED` with a retry-after.
//!
//! Invariants: a refusal here proposes nothing (the answers carry `x-not-applied`, or are
//! `RATE_LIMITED` outcomes, which are never logged); the budgets count exactly the operations
//! of the [`Permit`]s alive; the keys rate limits keep are bounded by
//! `admission.rate_limit_keys_max`. Nothing here reads a clock the simulator does not control.
//!
//! Admission uses nothing of the node: the node holds its [`Admission`] so that the server, the
//! node's status and tests share one.

#[cfg(not(madsim))]
pub mod arrival;
pub mod budget;
pub mod deadline;
pub mod keys;
pub mod rate;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::admission::budget::Budget;
pub use crate::admission::budget::Permit;
use crate::admission::budget::Scope;
use crate::admission::deadline::Deadline;
use crate::admission::rate::Kind as RateLimitKind;
use crate::admission::rate::RateLimited;
use crate::admission::rate::RateLimits;
use crate::config::AdmissionSection;
use crate::state_machine::command::Operation;
use crate::state_machine::command::SaleRules;
use crate::types::ShardId;

/// How much a request matters under overload (the wire's `Priority`; unspecified = STANDARD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// May fill the whole budget.
    Premium,
    /// May fill `admission.standard_share_percent` of it.
    Standard,
    /// May fill `admission.background_share_percent` of it: product-page reads.
    Background,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Premium, Priority::Standard, Priority::Background];

    pub fn index(self) -> usize {
        match self {
            Priority::Premium => 0,
            Priority::Standard => 1,
            Priority::Background => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Priority::Premium => "PREMIUM",
            Priority::Standard => "STANDARD",
            Priority::Background => "BACKGROUND",
        }
    }
}

/// Why a request was not let in; it was not proposed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// A budget is full for the request's class.
    #[error(
        "overloaded: {scope} budget{shard} has {inflight} operations in flight, {class} requests may fill {ceiling}; \
         retry after {retry_after_ms} ms",
        shard = shard_label(*.scope, *.shard_id),
        class = .priority.name(),
        retry_after_ms = .retry_after.as_millis()
    )]
    Overloaded {
        scope: Scope,
        shard_id: ShardId,
        priority: Priority,
        inflight: u64,
        ceiling: u64,
        retry_after: Duration,
    },
    /// The request's deadline passed before it was let in.
    #[error("the request's deadline passed before shard {shard_id} let it in; dropped before proposing")]
    Late { shard_id: ShardId },
}

fn shard_label(scope: Scope, shard_id: ShardId) -> String {
    match scope {
        Scope::Node => String::new(),
        Scope::Shard => format!(" of shard {shard_id}"),
    }
}

/// What admission did since the node started, and what is in flight now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdmissionStats {
    pub inflight_ops: u64,
    /// Requests refused with RESOURCE_EXHAUSTED, by [`Priority::index`].
    pub shed_requests: [u64; 3],
    /// Requests dropped for their deadline before proposing.
    pub late_requests: u64,
    /// Operations answered RATE_LIMITED.
    pub rate_limited_ops: u64,
    /// Of those, the ones over their client's limit and over their buyer's.
    pub rate_limited_clients: u64,
    pub rate_limited_buyers: u64,
    /// Token buckets kept (clients and buyers seen recently).
    pub rate_limit_keys: u64,
}

/// One node's admission: its budgets, its rate limits, and counts of what it refused.
pub struct Admission {
    node: Arc<Budget>,
    shards: BTreeMap<ShardId, Arc<Budget>>,
    /// For a shard the node does not host (the request then fails to find its shard anyway).
    unhosted: Arc<Budget>,
    rates: RateLimits,
    shed: [AtomicU64; 3],
    late: AtomicU64,
    /// Operations over a client's limit and over a buyer's.
    rate_limited_clients: AtomicU64,
    rate_limited_buyers: AtomicU64,
}

impl Admission {
    pub fn new(config: &AdmissionSection, shards: impl IntoIterator<Item = ShardId>) -> Admission {
        let budget = |max| {
            Arc::new(Budget::new(
                max,
                config.standard_share_percent,
                config.background_share_percent,
            ))
        };
        Admission {
            node: budget(config.node_ops_inflight_max),
            shards: shards
                .into_iter()
                .map(|shard| (shard, budget(config.shard_ops_inflight_max)))
                .collect(),
            unhosted: Arc::new(Budget::new(u64::MAX, 100, 100)),
            rates: RateLimits::new(config),
            shed: Default::default(),
            late: AtomicU64::new(0),
            rate_limited_clients: AtomicU64::new(0),
            rate_limited_buyers: AtomicU64::new(0),
        }
    }

    fn shard(&self, shard_id: ShardId) -> &Arc<Budget> {
        self.shards.get(&shard_id).unwrap_or(&self.unhosted)
    }

    /// Lets `ops` operations of `priority` for `shard_id` in, unless the request's `deadline`
    /// has passed or a budget is full for its class.
    pub fn admit(
        &self,
        shard_id: ShardId,
        priority: Priority,
        ops: usize,
        deadline: Deadline,
    ) -> Result<Permit, Refused> {
        let shard = self.shard(shard_id);
        if deadline.cannot_meet(Instant::now(), Duration::ZERO) {
            self.late.fetch_add(1, Ordering::Relaxed);
            return Err(Refused::Late { shard_id });
        }
        let ops = u64::try_from(ops).unwrap_or(u64::MAX);
        Permit::take(&self.node, shard, priority, ops).map_err(|(scope, full)| {
            self.shed[priority.index()].fetch_add(1, Ordering::Relaxed);
            let retry_after = match scope {
                Scope::Node => self.node.retry_after(),
                Scope::Shard => shard.retry_after(),
            };
            Refused::Overloaded {
                scope,
                shard_id,
                priority,
                inflight: full.inflight,
                ceiling: full.ceiling,
                retry_after,
            }
        })
    }

    /// Checks one admitted operation against the rate limits (see [`RateLimits::check`]).
    pub fn rate_limit(
        &self,
        client: &str,
        operation: &Operation,
        rules: Option<&SaleRules>,
    ) -> Result<(), RateLimited> {
        self.rates.check(client, operation, rules).inspect_err(|over| {
            let counter = match over.kind {
                RateLimitKind::Client => &self.rate_limited_clients,
                RateLimitKind::Buyer => &self.rate_limited_buyers,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Operations in flight on `shard_id`.
    pub fn shard_inflight(&self, shard_id: ShardId) -> u64 {
        self.shard(shard_id).inflight()
    }

    pub fn stats(&self) -> AdmissionStats {
        let rate_limited_clients = self.rate_limited_clients.load(Ordering::Relaxed);
        let rate_limited_buyers = self.rate_limited_buyers.load(Ordering::Relaxed);
        AdmissionStats {
            inflight_ops: self.node.inflight(),
            shed_requests: std::array::from_fn(|class| self.shed[class].load(Ordering::Relaxed)),
            late_requests: self.late.load(Ordering::Relaxed),
            rate_limited_ops: rate_limited_clients + rate_limited_buyers,
            rate_limited_clients,
            rate_limited_buyers,
            rate_limit_keys: self.rates.keys_kept() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission() -> Admission {
        let config = AdmissionSection {
            node_ops_inflight_max: 10,
            shard_ops_inflight_max: 6,
            standard_share_percent: 90,
            background_share_percent: 50,
            ..AdmissionSection::default()
        };
        Admission::new(&config, [1, 2])
    }

    #[test]
    fn a_full_shard_refuses_at_once_and_leaves_other_shards_room() {
        let admission = admission();
        let held = admission.admit(1, Priority::Standard, 5, Deadline(None)).expect("fits");
        let refused = admission
            .admit(1, Priority::Standard, 1, Deadline(None))
            .expect_err("shard 1 holds 5 of its standard 5");
        assert!(
            matches!(
                refused,
                Refused::Overloaded {
                    scope: Scope::Shard,
                    shard_id: 1,
                    inflight: 5,
                    ceiling: 5,
                    ..
                }
            ),
            "{refused:?}"
        );
        assert!(refused.to_string().contains("retry after"), "{refused}");
        let other = admission
            .admit(2, Priority::Standard, 4, Deadline(None))
            .expect("shard 2 has room");
        let node_full = admission
            .admit(2, Priority::Premium, 2, Deadline(None))
            .expect_err("the node holds 9 of 10");
        assert!(
            matches!(node_full, Refused::Overloaded { scope: Scope::Node, .. }),
            "{node_full:?}"
        );
        assert_eq!(admission.stats().shed_requests, [1, 1, 0]);
        drop((held, other));
        assert_eq!(admission.stats().inflight_ops, 0);
    }

    #[test]
    fn a_passed_deadline_is_refused_before_the_budget_is_asked() {
        let admission = admission();
        let passed = Deadline(Some(Instant::now()));
        let refused = admission.admit(1, Priority::Premium, 1, passed).expect_err("late");
        assert_eq!(refused, Refused::Late { shard_id: 1 });
        assert_eq!(admission.stats().late_requests, 1);
        assert_eq!(admission.shard_inflight(1), 0);
        let later = Deadline(Some(Instant::now() + Duration::from_secs(10)));
        assert!(admission.admit(1, Priority::Premium, 1, later).is_ok());
    }
}
