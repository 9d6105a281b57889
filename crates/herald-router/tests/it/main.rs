//! Webhook signatures: the Standard Webhooks example vector, round trips, rotation, and every
//! way a delivery or a secret can be wrong.

#![allow(clippy::unwrap_used)]

mod signature;
