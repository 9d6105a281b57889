//! What every Herald role shares for being observed and operated.
//!
//! - [`logging`]: `tracing` set up as pretty or JSON lines, with a target filter.
//! - [`http`]: the middleware every HTTP server wears: correlation id in and out, one span
//!   per request, an access log line, request metrics, and panics turned into problem+json.
//! - [`metrics`]: the closed set of Prometheus metrics Herald exports, defined in one place.
//! - [`health`]: liveness and readiness probes, with named readiness checks that later parts
//!   (store, broker) register, and the router that serves them with `/metrics`.

pub mod health;
pub mod http;
pub mod logging;
pub mod metrics;

pub use health::Health;
