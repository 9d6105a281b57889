//! Pattern matching, the rate limiter under paused time, and webhook signatures: the Standard Webhooks example vector, round trips, rotation, and every
//! way a delivery or a secret can be wrong.

#![allow(clippy::unwrap_used)]

mod breaker;
mod limit;
mod outcome;
mod pattern;
mod signature;
