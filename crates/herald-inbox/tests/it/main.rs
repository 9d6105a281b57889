//! The inbox against real databases, through the real embedded broker, on PostgreSQL and
//! SQLite: one effect per event id (duplicates, races, a crash between commit and ack),
//! failures and dead letters, retention, correlation and per-key order.

#![allow(clippy::unwrap_used)]

mod effects;
mod failures;
mod order;
mod races;
mod retention;
mod support;
