//! The platform API against real PostgreSQL and SQLite, called in-process over its router.

#![allow(clippy::unwrap_used)]

mod events;
