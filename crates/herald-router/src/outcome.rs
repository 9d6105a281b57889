//! What an endpoint's answer means for a delivery, and when to try again.
//!
//! - 2xx: delivered.
//! - 410 Gone: the endpoint asks never to be called again; the subscription is disabled.
//! - 429, 5xx, a timeout or a connection failure: retried later, honouring `Retry-After`.
//! - Anything else (3xx, other 4xx): failed; retried too, since a misconfigured endpoint is
//!   often fixed, but counted against `max_attempts` like every failure.
//!
//! Retries back off exponentially with full jitter: attempt `n` waits a random time up to
//! `min(max, base × 2^(n-1))`, so endpoints recovering from an outage are not hit by every
//! pending delivery at once. A `Retry-After` longer than that is honoured, up to `max`.

use std::time::Duration;

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint took it (2xx).
    Delivered,
    /// Try again later: 429, 5xx, timeout, connection failure; `retry_after` if the endpoint
    /// said when.
    Retry {
        /// The endpoint's `Retry-After`, when given in seconds.
        retry_after: Option<Duration>,
    },
    /// The endpoint refused it (3xx, 4xx other than 410 and 429).
    Failed,
    /// 410 Gone: stop calling this endpoint.
    Gone,
}

impl Outcome {
    /// Classifies an HTTP answer; `retry_after` is the header's value, if any.
    pub fn of_status(status: u16, retry_after: Option<&str>) -> Self {
        match status {
            200..=299 => Self::Delivered,
            410 => Self::Gone,
            429 | 500..=599 => Self::Retry {
                retry_after: retry_after.and_then(parse_retry_after),
            },
            _ => Self::Failed,
        }
    }
}

/// Reads `Retry-After` given in seconds. The HTTP-date form is rare from webhook receivers and
/// is ignored (the backoff applies).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// When to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first retry's ceiling.
    pub base: Duration,
    /// The longest wait, whatever the attempt or `Retry-After`.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(3600),
        }
    }
}

impl Backoff {
    /// The wait after failed attempt `attempt` (1 for the first), given `unit`, a random
    /// number in `[0, 1)`, and the endpoint's `Retry-After`.
    pub fn delay(&self, attempt: u32, unit: f64, retry_after: Option<Duration>) -> Duration {
        let doublings = attempt.saturating_sub(1).min(40);
        let ceiling = self
            .base
            .checked_mul(1_u32 << doublings.min(31))
            .unwrap_or(self.max)
            .min(self.max);
        let jittered = ceiling.mul_f64(unit.clamp(0.0, 1.0));
        match retry_after {
            Some(asked) => jittered.max(asked).min(self.max),
            None => jittered,
        }
    }
}
