//! The `herald` binary's library half: everything `main` wires together, kept here so the
//! black-box tests and the binary share one definition.
//!
//! - [`cli`]: the command line.
//! - [`config`]: layered, validated configuration.
//! - [`data_dir`]: `herald dev`'s data directory and its admin key.
//! - [`app`]: the HTTP application (routes, fallbacks, middleware).
//! - [`runtime`]: starting the configured roles on one store and broker, and stopping them.
//! - [`server`]: listening and graceful shutdown.

pub mod app;
pub mod cli;
pub mod config;
pub mod data_dir;
pub mod runtime;
pub mod server;
