//! Webhook delivery. Today: [`signature`], how Herald signs what it delivers (Standard
//! Webhooks) and how a receiver checks it; [`pattern`], the event type patterns subscriptions
//! match with; and [`limit`], the token bucket that holds a pool to its rate. The dispatcher,
//! pools, FIFO groups, the HTTP mediator, the circuit breaker and dead-lettering follow.

pub mod limit;
pub mod pattern;
pub mod signature;
