//! The platform API against real PostgreSQL and SQLite, called in-process over its router.

#![allow(clippy::unwrap_used)]

mod dispatch_jobs;
mod events;
mod pools;
mod subscriptions;
mod support;
