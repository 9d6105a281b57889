//! The router's parts: patterns, the rate limiter under paused time, webhook signatures (the
//! Standard Webhooks example vector, round trips, every way a delivery or secret can be
//! wrong), outcomes and the breaker; then dispatch jobs in the store, the router against
//! real endpoints, and job leases between routers, on both engines.

#![allow(clippy::unwrap_used)]

mod breaker;
mod engine;
mod jobs;
mod leases;
mod limit;
mod outcome;
mod pattern;
mod signature;
mod support;
