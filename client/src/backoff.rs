//! [`Backoff`]: the project's one backoff between retries — exponential, jittered, and never
//! shorter than what the server asked for.
//!
//! The client's retry loop and the ledger's order shipper both pause with it. Retry `n`
//! (0-based) has a ceiling of `initial * 2^n`, capped at `max`; the pause is a random point in
//! the upper half of that ceiling ("equal jitter"): the half that is kept still backs off,
//! the random half spreads callers that failed together (a dead leader fails every caller at
//! once) so that they do not all come back in the same millisecond. A server's
//! `x-retry-after-ms` is a floor on the pause.
//!
//! The randomness is a small seeded generator, not the OS: under the simulator the seed comes
//! from the simulated clock, so a run replays exactly.

use std::time::Duration;

/// Exponential backoff with equal jitter. One per retry loop (it carries the jitter
/// generator's state); cheap to make.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: SplitMix64,
}

impl Backoff {
    /// A backoff from `initial` doubling up to `max`, its jitter seeded by `seed`.
    pub fn new(initial: Duration, max: Duration, seed: u64) -> Self {
        Backoff {
            initial,
            max: max.max(initial),
            jitter: SplitMix64(seed),
        }
    }

    /// The un-jittered pause of retry `retry` (0-based): `initial * 2^retry`, capped at `max`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The pause before retry `retry` (0-based): uniformly in `[ceiling / 2, ceiling]`, and at
    /// least `retry_after` when the server named one.
    pub fn delay(&mut self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceiling(retry);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_micros() as u64;
        let jittered = half + Duration::from_micros(self.jitter.next() % (spread + 1));
        jittered.max(retry_after.unwrap_or_default())
    }
}

/// A seed for a [`Backoff`]'s jitter that differs between processes and between calls of one
/// process (`salt`), so that clients that failed together do not retry in lockstep. Under the
/// simulator it is the simulated clock and `salt` only: a seed replays the same pauses.
pub fn jitter_seed(salt: u64) -> u64 {
    #[cfg(not(madsim))]
    {
        use std::hash::BuildHasher;
        std::collections::hash_map::RandomState::new().hash_one(salt)
    }
    #[cfg(madsim)]
    {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|since| since.as_nanos() as u64)
            .unwrap_or(0);
        SplitMix64(now ^ salt.rotate_left(32)).next()
    }
}

/// Steele, Lea and Flood's SplitMix64: a tiny generator with a full 2^64 period, good enough
/// to spread pauses (not for anything secret).
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn millis(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let backoff = Backoff::new(millis(10), millis(100), 1);
        let ceilings: Vec<u128> = (0..6).map(|retry| backoff.ceiling(retry).as_millis()).collect();
        assert_eq!(ceilings, vec![10, 20, 40, 80, 100, 100]);
        assert_eq!(backoff.ceiling(u32::MAX), millis(100));
    }

    #[test]
    fn every_pause_lies_in_the_upper_half_of_its_ceiling() {
        let mut backoff = Backoff::new(millis(10), millis(500), 7);
        for retry in 0..12 {
            for _ in 0..200 {
                let ceiling = backoff.ceiling(retry);
                let pause = backoff.delay(retry, None);
                assert!(
                    pause >= ceiling / 2 && pause <= ceiling,
                    "retry {retry}: {pause:?} of {ceiling:?}"
                );
            }
        }
    }

    #[test]
    fn pauses_are_spread_and_differ_between_seeds() {
        let pauses = |seed| {
            let mut backoff = Backoff::new(millis(100), millis(100), seed);
            (0..50).map(|_| backoff.delay(0, None)).collect::<Vec<_>>()
        };
        let first = pauses(1);
        let distinct: std::collections::BTreeSet<_> = first.iter().collect();
        assert!(
            distinct.len() > 25,
            "jitter spreads pauses: {} distinct of 50",
            distinct.len()
        );
        assert_ne!(first, pauses(2), "another seed, other pauses");
        assert_eq!(first, pauses(1), "the same seed replays the same pauses");
    }

    #[test]
    fn the_servers_retry_after_is_a_floor() {
        let mut backoff = Backoff::new(millis(10), millis(40), 3);
        assert_eq!(backoff.delay(0, Some(millis(700))), millis(700));
        assert!(backoff.delay(5, Some(millis(1))) >= millis(20));
    }

    #[test]
    fn an_inverted_range_is_read_as_a_constant_pause() {
        let backoff = Backoff::new(millis(50), millis(10), 3);
        assert_eq!(backoff.ceiling(0), millis(50));
        assert_eq!(backoff.ceiling(9), millis(50));
    }
}
