//! The delay before a failed delivery is retried: exponential in its receive count, capped,
//! with jitter.
//!
//! Receive `n` (from 1) that failed waits a random delay between half and all of
//! `min(max, min × 2^(n-1))`, so retries of many messages that failed together (say, while
//! the database was down) spread out instead of arriving together.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

/// The bounds of the retry delay.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) min: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The delay without jitter after the `receive_count`-th receive failed.
    pub(crate) fn ceiling(&self, receive_count: u32) -> Duration {
        let shift = receive_count.saturating_sub(1).min(31);
        let grown = self.min.saturating_mul(1 << shift);
        grown.min(self.max)
    }

    /// The delay to nack with after the `receive_count`-th receive failed.
    pub(crate) fn delay(&self, receive_count: u32) -> Duration {
        let ceiling = self.ceiling(receive_count);
        let half = ceiling / 2;
        half + half.mul_f64(random_fraction())
    }
}

/// A number in [0, 1): the standard library's randomly keyed hasher is random enough for
/// jitter.
fn random_fraction() -> f64 {
    let bits = RandomState::new().hash_one(std::time::Instant::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_the_max() {
        let backoff = Backoff {
            min: Duration::from_millis(250),
            max: Duration::from_secs(10),
        };
        assert_eq!(backoff.ceiling(0), Duration::from_millis(250));
        assert_eq!(backoff.ceiling(1), Duration::from_millis(250));
        assert_eq!(backoff.ceiling(3), Duration::from_secs(1));
        assert_eq!(backoff.ceiling(7), Duration::from_secs(10));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(10));
        for count in 1..40 {
            let delay = backoff.delay(count);
            let ceiling = backoff.ceiling(count);
            assert!(delay >= ceiling / 2 && delay <= ceiling, "{delay:?}");
        }
    }
}
