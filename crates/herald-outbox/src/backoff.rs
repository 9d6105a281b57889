//! Exponential backoff with jitter, for the relay's retries.
//!
//! Attempt `n` (from 1) waits a delay drawn uniformly from the upper half of
//! `min(max, min_delay × 2^(n-1))`: it grows exponentially, is capped, never drops below half
//! the nominal delay, and spreads retries out so that many rows or relays that failed together
//! do not retry together.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// The bounds of a backoff.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The nominal (un-jittered) delay before retry number `attempt` (1 for the first retry).
    pub(crate) fn nominal(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(32);
        let delay = self.min.saturating_mul(1u32 << doublings.min(31));
        delay.min(self.max).max(self.min.min(self.max))
    }

    /// The delay before retry number `attempt`, with jitter.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let nominal = self.nominal(attempt);
        let half = nominal / 2;
        half + half.mul_f64(unit_random())
    }
}

/// A number in [0, 1). Jitter needs no more than the standard library's randomly keyed hasher.
fn unit_random() -> f64 {
    let bits = RandomState::new().hash_one(std::time::Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        min: Duration::from_millis(100),
        max: Duration::from_secs(60),
    };

    #[test]
    fn doubles_and_caps() {
        assert_eq!(B.nominal(0), Duration::from_millis(100));
        assert_eq!(B.nominal(1), Duration::from_millis(100));
        assert_eq!(B.nominal(2), Duration::from_millis(200));
        assert_eq!(B.nominal(5), Duration::from_millis(1600));
        assert_eq!(B.nominal(11), Duration::from_secs(60));
        assert_eq!(B.nominal(u32::MAX), Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        for attempt in 1..20 {
            let nominal = B.nominal(attempt);
            let delay = B.delay(attempt);
            assert!(
                delay >= nominal / 2 && delay <= nominal,
                "{delay:?} vs {nominal:?}"
            );
        }
    }

    #[test]
    fn a_max_below_the_min_wins() {
        let odd = Backoff {
            min: Duration::from_secs(2),
            max: Duration::from_secs(1),
        };
        assert_eq!(odd.nominal(3), Duration::from_secs(1));
    }
}
