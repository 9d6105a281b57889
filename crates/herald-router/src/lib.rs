//! Webhook delivery. Today: [`signature`], how Herald signs what it delivers (Standard
//! Webhooks) and how a receiver checks it; [`pattern`], the event type patterns subscriptions
//! match with; [`limit`], the token bucket that holds a pool to its rate; [`outcome`], what an
//! endpoint's answer means and when to retry; and [`breaker`], the per-endpoint circuit
//! breaker. The dispatcher, pools, FIFO groups, the HTTP mediator and dead-lettering follow.

pub mod breaker;
pub mod limit;
pub mod outcome;
pub mod pattern;
pub mod signature;
