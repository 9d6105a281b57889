//! [`Breaker`]: stops calling an endpoint that keeps failing, and probes it before trusting
//! it again.
//!
//! Closed, it lets every call through and counts consecutive failures; at `threshold` it
//! opens for `cooldown`, during which calls are refused without touching the endpoint (the
//! deliveries wait, they are not failed). After the cooldown one call is let through as a
//! probe (half-open): success closes the breaker, failure opens it again for twice as long,
//! up to `max_cooldown`. Time is tokio's clock.

use std::time::Duration;

use tokio::time::Instant;

/// The breaker's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerOptions {
    /// Consecutive failures that open the breaker.
    pub threshold: u32,
    /// How long it stays open the first time.
    pub cooldown: Duration,
    /// The longest it stays open.
    pub max_cooldown: Duration,
}

impl Default for BreakerOptions {
    fn default() -> Self {
        Self {
            threshold: 5,
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(300),
        }
    }
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls go through.
    Closed,
    /// Calls are refused until the instant.
    Open {
        /// When a probe may go.
        until: Instant,
    },
    /// One probe is out; other calls are refused until it reports.
    HalfOpen,
}

/// What [`Breaker::admits`] says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admits {
    /// Any number of calls (closed).
    Any,
    /// One call, the probe (the open period is over).
    Probe,
    /// None (open, or a probe is out).
    None,
}

/// One endpoint's breaker. Not shared by itself: keep it behind the endpoint's lock.
#[derive(Debug)]
pub struct Breaker {
    options: BreakerOptions,
    state: BreakerState,
    failures: u32,
    cooldown: Duration,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(options: BreakerOptions) -> Self {
        Self {
            options,
            state: BreakerState::Closed,
            failures: 0,
            cooldown: options.cooldown,
        }
    }

    /// Where it is now.
    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// How many calls may go now, without changing anything: for a caller that must find
    /// work before it takes the probe with [`allow`](Self::allow).
    pub fn admits(&self) -> Admits {
        match self.state {
            BreakerState::Closed => Admits::Any,
            BreakerState::Open { until } if Instant::now() >= until => Admits::Probe,
            BreakerState::Open { .. } | BreakerState::HalfOpen => Admits::None,
        }
    }

    /// Whether a call may go now; `Err` says how long until one may. After an open period
    /// the first caller gets the probe.
    ///
    /// # Errors
    /// The wait while the breaker is open or a probe is out (zero for the latter: ask again
    /// when the probe reports).
    pub fn allow(&mut self) -> Result<(), Duration> {
        match self.state {
            BreakerState::Closed => Ok(()),
            BreakerState::HalfOpen => Err(Duration::ZERO),
            BreakerState::Open { until } => {
                let now = Instant::now();
                if now >= until {
                    self.state = BreakerState::HalfOpen;
                    Ok(())
                } else {
                    Err(until - now)
                }
            }
        }
    }

    /// Reports a call that succeeded.
    pub fn succeeded(&mut self) {
        self.state = BreakerState::Closed;
        self.failures = 0;
        self.cooldown = self.options.cooldown;
    }

    /// Reports a call abandoned without an answer (or never made): it says nothing about the
    /// endpoint. A probe that is abandoned lets the next call be the probe at once.
    pub fn abandoned(&mut self) {
        if self.state == BreakerState::HalfOpen {
            self.state = BreakerState::Open {
                until: Instant::now(),
            };
        }
    }

    /// Reports a call that failed (a retryable outcome: 429, 5xx, timeout).
    pub fn failed(&mut self) {
        match self.state {
            BreakerState::HalfOpen => {
                self.cooldown = (self.cooldown * 2).min(self.options.max_cooldown);
                self.open();
            }
            BreakerState::Closed => {
                self.failures += 1;
                if self.failures >= self.options.threshold {
                    self.open();
                }
            }
            BreakerState::Open { .. } => {}
        }
    }

    fn open(&mut self) {
        self.state = BreakerState::Open {
            until: Instant::now() + self.cooldown,
        };
        self.failures = 0;
    }
}
