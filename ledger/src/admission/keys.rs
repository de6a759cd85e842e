//! [`BoundedKeys`]: governor's keyed token-bucket state with a bound on the keys kept, so that
//! clients or buyers named by the request cannot grow a node's memory without limit.
//!
//! Every limiter of a node shares one [`KeyCount`]. A key already kept has its own bucket; a new
//! key gets one while the count is below the bound, else it is checked against the limiter's
//! one overflow bucket, which every key over the bound shares (a flood of made-up client ids is
//! limited as one client, not let through). Buckets that are full again (idle for as long as a
//! bucket takes to refill) are evicted by [`crate::admission::rate`] every second, which frees
//! room. The count is exact but for a race between two first requests of one key (one slot too
//! many until the next eviction recounts).

use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;

use governor::nanos::Nanos;
use governor::state::InMemoryState;
use governor::state::NotKeyed;
use governor::state::StateStore;
use governor::state::keyed::DashMapStateStore;
use governor::state::keyed::ShrinkableKeyedStateStore;

/// How many keys all the limiters of a node keep, and the most they may.
#[derive(Debug)]
pub struct KeyCount {
    kept: AtomicUsize,
    max: usize,
}

impl KeyCount {
    pub fn new(max: usize) -> KeyCount {
        KeyCount {
            kept: AtomicUsize::new(0),
            max,
        }
    }

    /// Room for one more key, if there is any.
    fn try_add(&self) -> bool {
        self.kept
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |kept| {
                (kept < self.max).then_some(kept + 1)
            })
            .is_ok()
    }

    fn remove(&self, keys: usize) {
        let _ = self.kept.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |kept| {
            Some(kept.saturating_sub(keys))
        });
    }

    /// Keys kept now, by every limiter sharing this count.
    pub fn kept(&self) -> usize {
        self.kept.load(Ordering::Relaxed)
    }
}

/// One limiter's buckets: a bucket per kept key, and the overflow bucket.
pub struct BoundedKeys {
    buckets: DashMapStateStore<u64>,
    overflow: InMemoryState,
    count: std::sync::Arc<KeyCount>,
}

impl BoundedKeys {
    pub fn new(count: std::sync::Arc<KeyCount>) -> BoundedKeys {
        BoundedKeys {
            buckets: DashMapStateStore::default(),
            overflow: InMemoryState::default(),
            count,
        }
    }
}

impl StateStore for BoundedKeys {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, decide: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        if let Some(bucket) = self.buckets.get(key) {
            return bucket.measure_and_replace(&NotKeyed::NonKey, decide);
        }
        if !self.count.try_add() {
            return self.overflow.measure_and_replace(&NotKeyed::NonKey, decide);
        }
        let bucket = self.buckets.entry(*key).or_default();
        bucket.measure_and_replace(&NotKeyed::NonKey, decide)
    }
}

impl ShrinkableKeyedStateStore<u64> for BoundedKeys {
    fn retain_recent(&self, drop_below: Nanos) {
        let before = self.buckets.len();
        self.buckets.retain(|_, bucket| !is_older_than(bucket, drop_below));
        self.count.remove(before.saturating_sub(self.buckets.len()));
    }

    fn shrink_to_fit(&self) {
        self.buckets.shrink_to_fit();
    }

    fn len(&self) -> usize {
        self.buckets.len()
    }

    fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Whether `bucket` last refilled before `drop_below` (indistinguishable from a new one). Read
/// through the state's own update, declining to change anything.
fn is_older_than(bucket: &InMemoryState, drop_below: Nanos) -> bool {
    let read = bucket.measure_and_replace(&NotKeyed::NonKey, |tat: Option<Nanos>| -> Result<((), Nanos), _> {
        Err(tat)
    });
    match read {
        Err(tat) => tat.is_none_or(|tat| tat <= drop_below),
        Ok(()) => false,
    }
}
