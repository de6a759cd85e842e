//! [`RateLimits`]: token buckets per client and per buyer for reserves and purchases, from the
//! cluster's `[admission]` settings or, for a SKU whose sale rules set their own, from those.
//!
//! The buckets are governor's keyed GCRA limiters (one per distinct quota) over
//! [`BoundedKeys`], so the keys a node keeps are bounded however many clients or buyers
//! requests name; buckets idle long enough to be full again are evicted every second. A
//! cluster-wide bucket is keyed by the client or buyer alone (one budget across SKUs); a SKU's
//! own limit by (client or buyer, SKU), so its buckets are apart from the other SKUs'.
//!
//! Only operations that take stock are limited (Reserve, Purchase): settling what a buyer
//! already holds (Confirm, Cancel) must never be refused by a fairness rule, or reservations
//! would lapse for want of their confirmation; administration is not a buyer's traffic. The
//! decision is the receiving node's, from the rules it has applied, and it is never logged.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::RwLock;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use governor::Quota;
use governor::RateLimiter;
use governor::clock::Clock;
use governor::clock::MonotonicClock;
use governor::middleware::NoOpMiddleware;

use crate::admission::keys::BoundedKeys;
use crate::admission::keys::KeyCount;
use crate::config::AdmissionSection;
use crate::state_machine::command::Operation;
use crate::state_machine::command::RateOverride;
use crate::state_machine::command::SaleRules;

/// Idle buckets are looked for this often.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

type Limiter = RateLimiter<u64, BoundedKeys, MonotonicClock, NoOpMiddleware<<MonotonicClock as Clock>::Instant>>;

/// Whose limit an operation is over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The client that sent the request.
    Client,
    /// The buyer (`user`) the operation is for.
    Buyer,
}

/// An operation over a limit, and when that limit lets it through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    pub kind: Kind,
    pub retry_after: Duration,
}

/// The rate limits of one node.
pub struct RateLimits {
    client: Option<Limiter>,
    buyer: Option<Limiter>,
    /// Limiters of SKUs' own limits, one per (kind, rate, burst); created on first use, dropped
    /// when they hold no bucket (so as many as there are kept keys, at most).
    own: RwLock<BTreeMap<(Kind, u64, u64), Arc<Limiter>>>,
    keys: Arc<KeyCount>,
    /// Hashes clients and buyers into keys (a random key per node, as for any hash table).
    hasher: std::hash::RandomState,
    clock: MonotonicClock,
    /// When the last sweep for idle buckets began, in ms since `started`.
    last_sweep_ms: AtomicU64,
    started: std::time::Instant,
}

impl RateLimits {
    pub fn new(config: &AdmissionSection) -> RateLimits {
        let keys = Arc::new(KeyCount::new(
            usize::try_from(config.rate_limit_keys_max).unwrap_or(usize::MAX),
        ));
        let limiter =
            |ops_per_s: u64, burst_ops: u64| quota(ops_per_s, burst_ops).map(|quota| new_limiter(quota, &keys));
        let clock = MonotonicClock;
        RateLimits {
            client: limiter(config.client_ops_per_s, config.client_burst_ops),
            buyer: limiter(config.buyer_ops_per_s, config.buyer_burst_ops),
            own: RwLock::default(),
            keys: keys.clone(),
            hasher: std::hash::RandomState::new(),
            started: std::time::Instant::now(),
            clock,
            last_sweep_ms: AtomicU64::new(0),
        }
    }

    /// Checks `operation`, sent by `client`, against its buyer's limit and then its client's
    /// (`rules`: its SKU's, when the SKU is known); each check that passes takes a token.
    pub fn check(&self, client: &str, operation: &Operation, rules: Option<&SaleRules>) -> Result<(), RateLimited> {
        let user = match operation {
            Operation::Reserve { user, .. } | Operation::Purchase { user, .. } => user,
            _ => return Ok(()),
        };
        self.sweep_if_due();
        let sku = operation.sku();
        self.check_kind(Kind::Buyer, user, sku, rules.map(|rules| rules.buyer_rate))?;
        self.check_kind(Kind::Client, client, sku, rules.map(|rules| rules.client_rate))
    }

    fn check_kind(&self, kind: Kind, who: &str, sku: &[u8], own: Option<RateOverride>) -> Result<(), RateLimited> {
        let answer = match own.filter(RateOverride::is_set) {
            Some(rate) => {
                let Some(limiter) = self.own_limiter(kind, rate) else {
                    return Ok(());
                };
                limiter.check_key(&self.hasher.hash_one((who, sku)))
            }
            None => {
                let cluster = match kind {
                    Kind::Client => &self.client,
                    Kind::Buyer => &self.buyer,
                };
                let Some(limiter) = cluster else {
                    return Ok(());
                };
                limiter.check_key(&self.hasher.hash_one(who))
            }
        };
        answer.map_err(|not_until| RateLimited {
            kind,
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }

    /// The limiter of a SKU's own limit (`None`: the override names no usable quota).
    fn own_limiter(&self, kind: Kind, rate: RateOverride) -> Option<Arc<Limiter>> {
        let key = (kind, rate.ops_per_s, rate.burst_ops);
        if let Some(limiter) = read(&self.own).get(&key) {
            return Some(limiter.clone());
        }
        let quota = quota(rate.ops_per_s, rate.burst_ops)?;
        let mut own = self.own.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(
            own.entry(key)
                .or_insert_with(|| Arc::new(new_limiter(quota, &self.keys)))
                .clone(),
        )
    }

    /// Once per [`SWEEP_INTERVAL`], whoever checks first evicts the buckets that are full again
    /// and drops the SKU limiters left without any.
    fn sweep_if_due(&self) {
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_sweep_ms.load(Ordering::Relaxed);
        let interval_ms = SWEEP_INTERVAL.as_millis() as u64;
        if now_ms < last.saturating_add(interval_ms) {
            return;
        }
        if self
            .last_sweep_ms
            .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        for limiter in [&self.client, &self.buyer].into_iter().flatten() {
            limiter.retain_recent();
        }
        let mut own = self.own.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        own.retain(|_, limiter| {
            limiter.retain_recent();
            !limiter.is_empty()
        });
    }

    /// Buckets kept now, every limiter together.
    pub fn keys_kept(&self) -> usize {
        self.keys.kept()
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `ops_per_s` with bursts of `burst_ops` (0: one second's worth); `None` for no limit.
fn quota(ops_per_s: u64, burst_ops: u64) -> Option<Quota> {
    let rate = NonZeroU32::new(u32::try_from(ops_per_s).ok()?)?;
    let burst = if burst_ops == 0 {
        rate
    } else {
        NonZeroU32::new(u32::try_from(burst_ops).ok()?)?
    };
    Some(Quota::per_second(rate).allow_burst(burst))
}

fn new_limiter(quota: Quota, keys: &Arc<KeyCount>) -> Limiter {
    RateLimiter::new(quota, BoundedKeys::new(keys.clone()), MonotonicClock)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purchase(user: &str, sku: &[u8]) -> Operation {
        Operation::Purchase {
            sku: sku.to_vec(),
            qty: 1,
            user: user.into(),
            order_id: "o".into(),
            first_attempt_ms: 1,
        }
    }

    fn limits(config: AdmissionSection) -> RateLimits {
        RateLimits::new(&config)
    }

    #[test]
    fn a_buyer_gets_its_burst_then_is_limited_with_a_retry_hint() {
        let limits = limits(AdmissionSection {
            buyer_ops_per_s: 1,
            buyer_burst_ops: 3,
            ..AdmissionSection::default()
        });
        for _ in 0..3 {
            assert_eq!(limits.check("c", &purchase("alice", b"s"), None), Ok(()));
        }
        let limited = limits.check("c", &purchase("alice", b"s"), None).expect_err("over");
        assert_eq!(limited.kind, Kind::Buyer);
        assert!(
            limited.retry_after > Duration::ZERO && limited.retry_after <= Duration::from_secs(1),
            "{limited:?}"
        );
        assert_eq!(limits.check("c", &purchase("bob", b"s"), None), Ok(()), "another buyer");
        assert_eq!(
            limits.check("c", &purchase("alice", b"t"), None).map_err(|l| l.kind),
            Err(Kind::Buyer),
            "the cluster's limit counts across SKUs"
        );
    }

    #[test]
    fn a_client_is_limited_across_its_buyers_and_settling_is_never_limited() {
        let limits = limits(AdmissionSection {
            client_ops_per_s: 2,
            ..AdmissionSection::default()
        });
        assert_eq!(limits.check("shop", &purchase("a", b"s"), None), Ok(()));
        assert_eq!(limits.check("shop", &purchase("b", b"s"), None), Ok(()));
        let limited = limits.check("shop", &purchase("c", b"s"), None).expect_err("over");
        assert_eq!(limited.kind, Kind::Client);
        assert_eq!(limits.check("other-shop", &purchase("c", b"s"), None), Ok(()));
        let confirm = Operation::Confirm {
            sku: b"s".to_vec(),
            order_id: "o".into(),
            first_attempt_ms: 1,
        };
        for _ in 0..10 {
            assert_eq!(limits.check("shop", &confirm, None), Ok(()));
        }
    }

    #[test]
    fn a_skus_own_limit_replaces_the_clusters_for_that_sku_only() {
        let limits = limits(AdmissionSection {
            buyer_ops_per_s: 100,
            ..AdmissionSection::default()
        });
        let strict = SaleRules {
            buyer_rate: RateOverride {
                ops_per_s: 1,
                burst_ops: 1,
            },
            ..SaleRules::default()
        };
        assert_eq!(limits.check("c", &purchase("alice", b"hot"), Some(&strict)), Ok(()));
        let limited = limits
            .check("c", &purchase("alice", b"hot"), Some(&strict))
            .expect_err("the SKU allows one a second");
        assert_eq!(limited.kind, Kind::Buyer);
        assert_eq!(
            limits.check("c", &purchase("alice", b"cold"), Some(&SaleRules::default())),
            Ok(()),
            "other SKUs keep the cluster's limit"
        );
        let lenient = SaleRules {
            buyer_rate: RateOverride {
                ops_per_s: 1_000,
                burst_ops: 0,
            },
            ..SaleRules::default()
        };
        let tight = RateLimits::new(&AdmissionSection {
            buyer_ops_per_s: 1,
            buyer_burst_ops: 1,
            ..AdmissionSection::default()
        });
        for _ in 0..50 {
            assert_eq!(tight.check("c", &purchase("alice", b"sale"), Some(&lenient)), Ok(()));
        }
    }

    #[test]
    fn keys_are_bounded_and_new_keys_past_the_bound_share_one_bucket() {
        let limits = limits(AdmissionSection {
            buyer_ops_per_s: 1,
            buyer_burst_ops: 1,
            rate_limit_keys_max: 8,
            ..AdmissionSection::default()
        });
        for buyer in 0..8 {
            assert_eq!(limits.check("c", &purchase(&format!("u{buyer}"), b"s"), None), Ok(()));
        }
        assert_eq!(limits.keys_kept(), 8);
        assert_eq!(
            limits.check("c", &purchase("new-1", b"s"), None),
            Ok(()),
            "the overflow bucket's token"
        );
        assert!(
            limits.check("c", &purchase("new-2", b"s"), None).is_err(),
            "a second new buyer shares the overflow bucket"
        );
        assert_eq!(limits.keys_kept(), 8);
    }
}
