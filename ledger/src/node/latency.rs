//! [`CommitLatency`]: how long a shard's proposals have recently taken to commit, the least time
//! a request must have left for proposing it to be worth an entry (see `write.rs`).
//!
//! Only commits are measured: a proposal that timed out says nothing of how long the next one
//! takes once quorum is back. An estimate nobody refreshed for [`FRESH_FOR`] is not used, so a
//! shard whose estimate rose above every caller's deadline (and therefore proposes nothing and
//! measures nothing) lets requests through again after that long, and learns anew.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

/// How long an estimate is trusted without a new commit.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct CommitLatency {
    /// Exponentially weighted average (1/8 per commit) in µs; 0 before the first commit.
    average_us: AtomicU64,
    /// When the last commit was measured, in µs since `since`.
    last_at_us: AtomicU64,
    since: Instant,
}

impl CommitLatency {
    pub fn new() -> CommitLatency {
        CommitLatency {
            average_us: AtomicU64::new(0),
            last_at_us: AtomicU64::new(0),
            since: Instant::now(),
        }
    }

    /// A proposal committed `took` after it was made.
    pub fn record(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        // Concurrent commits may overwrite each other's update: an average loses a sample.
        let average = self.average_us.load(Ordering::Relaxed);
        let next = if average == 0 {
            sample.max(1)
        } else {
            average - average / 8 + sample / 8
        };
        self.average_us.store(next, Ordering::Relaxed);
        let now = u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_at_us.store(now.max(1), Ordering::Relaxed);
    }

    /// The recent commit latency, if a commit was measured within [`FRESH_FOR`]; else zero.
    pub fn estimate(&self) -> Duration {
        let last_at = self.last_at_us.load(Ordering::Relaxed);
        let now = u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX);
        let fresh = last_at != 0 && now.saturating_sub(last_at) <= FRESH_FOR.as_micros() as u64;
        if fresh {
            Duration::from_micros(self.average_us.load(Ordering::Relaxed))
        } else {
            Duration::ZERO
        }
    }
}

impl Default for CommitLatency {
    fn default() -> Self {
        CommitLatency::new()
    }
}

#[cfg(test)]
mod tests {
    use openraft::type_config::TypeConfigExt;

    use super::*;

    #[test]
    fn the_estimate_follows_commits_and_lapses_without_them() {
        crate::types::TypeConfig::run(async {
            let latency = CommitLatency::new();
            assert_eq!(latency.estimate(), Duration::ZERO, "nothing measured yet");
            latency.record(Duration::from_millis(80));
            assert_eq!(latency.estimate(), Duration::from_millis(80));
            for _ in 0..40 {
                latency.record(Duration::from_millis(8));
            }
            let estimate = latency.estimate();
            assert!(
                estimate >= Duration::from_millis(8) && estimate < Duration::from_millis(10),
                "{estimate:?}"
            );
        });
    }
}

/// When this replica last accepted an append (entries or a heartbeat) from a leader: a
/// follower's only evidence that the leader it names is alive. With pre-vote, a follower cut off
/// from the others keeps naming its old leader (it never raises its term), so readiness asks how
/// long ago it heard from it instead.
#[derive(Debug)]
pub struct LeaderContact {
    /// µs since `since` of the last accepted append, plus one; 0 before the first.
    last_at_us: AtomicU64,
    since: Instant,
}

impl LeaderContact {
    pub fn new() -> LeaderContact {
        LeaderContact {
            last_at_us: AtomicU64::new(0),
            since: Instant::now(),
        }
    }

    /// An append from the current leader was accepted just now.
    pub fn heard(&self) {
        let now = u64::try_from(self.since.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_at_us.fetch_max(now.saturating_add(1), Ordering::Relaxed);
    }

    /// How long ago the last accepted append was; `None` before the first.
    pub fn elapsed(&self) -> Option<Duration> {
        match self.last_at_us.load(Ordering::Relaxed) {
            0 => None,
            at => Some(self.since.elapsed().saturating_sub(Duration::from_micros(at - 1))),
        }
    }
}

impl Default for LeaderContact {
    fn default() -> Self {
        Self::new()
    }
}
