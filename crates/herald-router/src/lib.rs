//! Webhook delivery.
//!
//! - [`subscription`] and [`pool`]: what the API manages (checks included, so every front
//!   door applies the same ones).
//! - [`dispatcher`]: the inbox handler that turns each event into dispatch [`job`]s, one per
//!   matching subscription, in the consumer's transaction.
//! - [`engine`]: the router, which claims due jobs and delivers them through their pool
//!   ([`limit`] for the rate, a concurrency cap, FIFO per key), calling endpoints with the
//!   [`mediator`] (signed with [`signature`]), judging answers with [`outcome`] and guarding
//!   endpoints with a [`breaker`]; [`lease`] keeps its hold on the jobs it claimed short and
//!   renewed, so a dead router's jobs come back within seconds.
//! - [`pattern`]: the event type patterns subscriptions match with.
//!
//! [`MIGRATIONS`] holds the tables.

pub mod breaker;
pub mod dispatcher;
pub mod engine;
pub mod job;
pub mod lease;
pub mod limit;
pub mod mediator;
pub mod outcome;
pub mod pattern;
pub mod pool;
pub mod signature;
mod sql;
pub mod subscription;

use herald_store::{Migration, MigrationSet};

pub use dispatcher::Dispatcher;
pub use engine::{Engine, EngineOptions};

/// The router's tables: pools, subscriptions, dispatched events, jobs and attempts.
pub const MIGRATIONS: MigrationSet = MigrationSet {
    component: "router",
    postgres: &[Migration {
        version: 1,
        name: "create pools, subscriptions and dispatch jobs",
        sql: include_str!("../migrations/postgres/0001_dispatch.sql"),
    }],
    sqlite: &[Migration {
        version: 1,
        name: "create pools, subscriptions and dispatch jobs",
        sql: include_str!("../migrations/sqlite/0001_dispatch.sql"),
    }],
};
