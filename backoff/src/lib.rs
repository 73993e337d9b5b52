//! The one exponential backoff of the workspace: `base × 2^n`, capped, with jitter so that nodes failing
//! together do not retry together. Every retry loop (EC2 calls, the reconcile round, IMDS and the Kubernetes
//! API at start, a hot-plugged link, an ENI still detaching) takes its waits from a [`Backoff`].
//!
//! No dependencies: the jitter's randomness comes from the standard library's randomly keyed hasher, which is
//! plenty for spreading retries (nothing here needs to be unpredictable).

use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How a wait is spread around its nominal value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Jitter {
    /// Exactly the nominal wait (polling for something local to appear).
    None,
    /// Uniform in `[0, nominal]` ("full jitter"): the best spread for many clients of one API.
    Full,
    /// Uniform in `[nominal × (1 − f), nominal × (1 + f)]`.
    Spread(f64),
}

/// Waits that double from `base` up to `cap`. [`Backoff::delay`] is pure in the attempt number;
/// [`Backoff::next_delay`] keeps the count for a loop.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: Jitter,
    attempt: u32,
}

impl Backoff {
    /// Doubling from `base` to `cap`, spread by ±20 % (see [`Backoff::jitter`] for another spread).
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap, jitter: Jitter::Spread(0.2), attempt: 0 }
    }

    pub const fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// The nominal wait after `attempt` failures before it (0 → `base`): `base × 2^attempt`, at most `cap`.
    pub fn nominal(&self, attempt: u32) -> Duration {
        self.base.saturating_mul(1u32 << attempt.min(20)).min(self.cap)
    }

    /// The wait after `attempt` earlier failures, jittered.
    pub fn delay(&self, attempt: u32) -> Duration {
        let nominal = self.nominal(attempt);
        match self.jitter {
            Jitter::None => nominal,
            Jitter::Full => nominal.mul_f64(unit()),
            Jitter::Spread(f) => nominal.mul_f64((1.0 - f + 2.0 * f * unit()).max(0.0)),
        }
    }

    /// The next wait of a loop (the first is around `base`), counting the attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Waits counted so far by [`Backoff::next_delay`].
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to `base` (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Uniform in [0, 1).
fn unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let bits = RandomState::new().hash_one(COUNTER.fetch_add(1, Ordering::Relaxed));
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_from_base_up_to_the_cap() {
        let b = Backoff::new(250 * MS, 10_000 * MS).jitter(Jitter::None);
        let waits: Vec<u128> = (0..8).map(|a| b.delay(a).as_millis()).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(b.delay(u32::MAX), 10_000 * MS, "no overflow however long it fails");
    }

    #[test]
    fn full_jitter_stays_under_the_nominal_wait_and_spreads() {
        let b = Backoff::new(100 * MS, 5_000 * MS).jitter(Jitter::Full);
        for attempt in 0..12 {
            let waits: Vec<Duration> = (0..200).map(|_| b.delay(attempt)).collect();
            assert!(waits.iter().all(|w| *w <= b.nominal(attempt)), "attempt {attempt}");
            let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
            assert!(distinct.len() > 100, "attempt {attempt}: only {} distinct waits", distinct.len());
        }
    }

    #[test]
    fn spread_stays_within_its_band_and_a_loop_counts_its_attempts() {
        let mut b = Backoff::new(2_000 * MS, 120_000 * MS);
        for (attempt, nominal) in [(0, 2.0), (1, 4.0), (2, 8.0), (5, 64.0), (6, 120.0), (30, 120.0)] {
            for _ in 0..50 {
                let w = b.delay(attempt).as_secs_f64();
                assert!(w >= nominal * 0.8 && w <= nominal * 1.2, "attempt {attempt}: {w}");
            }
        }
        let first = b.next_delay();
        let second = b.next_delay();
        assert!(first <= 2_400 * MS && second >= 3_200 * MS, "{first:?} then {second:?}");
        assert_eq!(b.attempts(), 2);
        b.reset();
        assert!(b.next_delay() <= 2_400 * MS);
    }
}
