//! `herald bench`: scenarios that drive the real components and measure them.
//!
//! Every scenario checks its own results (counts, per-key order) before it reports, so a fast
//! wrong answer fails instead of looking good. Latency is measured open loop where a rate is
//! given: work is started on schedule whether or not earlier work finished, so a stall shows
//! up in the percentiles instead of silently lowering the offered load (coordinated omission).
//!
//! - [`stats`]: latency percentiles.
//! - [`broker`]: the broker a run uses (the embedded queue or a real one).
//! - [`process`]: CPU time and peak memory of this process.
//! - [`target`]: the database a run uses (a fresh PostgreSQL database or SQLite file).
//! - [`report`]: results as a table or JSON.
//! - [`markdown`]: the results table of `BENCHMARKS.md`, generated from JSON reports.
//! - [`scenarios`]: the scenarios themselves.

pub mod broker;
pub mod markdown;
pub mod process;
pub mod report;
pub mod scenarios;
pub mod stats;
pub mod target;

pub use report::{Outcome, Report};
