//! Webhook delivery. Today: [`signature`], how Herald signs what it delivers (Standard
//! Webhooks) and how a receiver checks it. The dispatcher, pools, FIFO groups, the HTTP
//! mediator, the circuit breaker and dead-lettering follow.

pub mod signature;
