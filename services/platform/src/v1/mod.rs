//! Version 1 of the platform API, one resource per module.

pub mod dispatch_jobs;
pub mod events;
pub mod pools;
pub mod subscriptions;
