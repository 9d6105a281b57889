//! [`TokenBucket`]: holds a pool to `per_second` deliveries on average, with bursts of up to
//! `burst`, and can be changed while deliveries wait on it.
//!
//! Tokens accrue continuously at `per_second` up to `burst`; each delivery takes one. A
//! caller that finds none is told how long until the next one ([`TokenBucket::try_acquire`]),
//! or reserves the next one and sleeps until it is due ([`TokenBucket::acquire`]). Time is tokio's clock, so tests can pause
//! and advance it and check the rate exactly.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A rate: `per_second` on average, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Deliveries per second on average (more than 0, at most 1,000,000).
    pub per_second: f64,
    /// The most deliveries allowed back to back after a quiet spell (1 to 1,000,000).
    pub burst: u32,
}

/// Why a [`RateLimit`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateLimitError {
    /// `per_second` is not in (0, 1,000,000].
    #[error("rate_limit.per_second must be more than 0 and at most 1000000")]
    PerSecond,
    /// `burst` is not in 1..=1,000,000.
    #[error("rate_limit.burst must be between 1 and 1000000")]
    Burst,
}

impl RateLimit {
    /// Checks the numbers.
    ///
    /// # Errors
    /// [`RateLimitError`] naming the field that is out of range.
    pub fn check(self) -> Result<Self, RateLimitError> {
        if !(self.per_second > 0.0 && self.per_second <= 1_000_000.0) {
            return Err(RateLimitError::PerSecond);
        }
        if !(1..=1_000_000).contains(&self.burst) {
            return Err(RateLimitError::Burst);
        }
        Ok(self)
    }
}

#[derive(Debug)]
struct State {
    limit: RateLimit,
    tokens: f64,
    updated: Instant,
}

impl State {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens =
            (self.tokens + elapsed * self.limit.per_second).min(f64::from(self.limit.burst));
        self.updated = now;
    }
}

/// A token bucket. See the [module docs](self).
#[derive(Debug)]
pub struct TokenBucket {
    state: Mutex<State>,
}

impl TokenBucket {
    /// A full bucket for `limit`.
    ///
    /// # Errors
    /// [`RateLimitError`] when `limit` is out of range.
    pub fn new(limit: RateLimit) -> Result<Self, RateLimitError> {
        let limit = limit.check()?;
        Ok(Self {
            state: Mutex::new(State {
                limit,
                tokens: f64::from(limit.burst),
                updated: Instant::now(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is consistent after every statement, so a panic elsewhere cannot leave it
        // half-updated; keep using it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Changes the limit from now on. Tokens already saved are kept, up to the new burst.
    ///
    /// # Errors
    /// [`RateLimitError`] when `limit` is out of range; the old limit stays.
    pub fn set(&self, limit: RateLimit) -> Result<(), RateLimitError> {
        let limit = limit.check()?;
        let mut state = self.lock();
        state.refill(Instant::now());
        state.limit = limit;
        state.tokens = state.tokens.min(f64::from(limit.burst));
        Ok(())
    }

    /// The limit in force.
    pub fn limit(&self) -> RateLimit {
        self.lock().limit
    }

    /// Takes a token if there is one; otherwise says how long until there is.
    ///
    /// # Errors
    /// The wait, when no token is available now.
    pub fn try_acquire(&self) -> Result<(), Duration> {
        let mut state = self.lock();
        state.refill(Instant::now());
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - state.tokens;
            Err(Duration::from_secs_f64(missing / state.limit.per_second))
        }
    }

    /// Gives back `n` tokens taken with [`try_acquire`](Self::try_acquire) but not used (up to
    /// the burst).
    pub fn refund(&self, n: u32) {
        let mut state = self.lock();
        state.refill(Instant::now());
        state.tokens = (state.tokens + f64::from(n)).min(f64::from(state.limit.burst));
    }

    /// Takes the next token now, going into debt if there is none, and says when it is due:
    /// now if one was available. The caller uses it at that instant (or gives it back with
    /// [`refund`](Self::refund)). Time keeps accruing against the debt, so a caller that acts
    /// a little after the instant costs the next one nothing.
    pub fn reserve(&self) -> Instant {
        let mut state = self.lock();
        let now = Instant::now();
        state.refill(now);
        state.tokens -= 1.0;
        if state.tokens >= 0.0 {
            now
        } else {
            now + Duration::from_secs_f64(-state.tokens / state.limit.per_second)
        }
    }

    /// Waits for a token and takes it.
    ///
    /// The token is reserved before the wait ([`reserve`](Self::reserve)), so callers are
    /// served in the order they asked, and a sleep that overruns (timers tick in
    /// milliseconds) does not cost the next caller its share. A caller dropped while waiting
    /// gives up a token that is not returned.
    pub async fn acquire(&self) {
        tokio::time::sleep_until(self.reserve()).await;
    }
}
