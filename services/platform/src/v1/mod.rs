//! Version 1 of the platform API, one resource per module.

pub mod events;
