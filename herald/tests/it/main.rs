//! Black-box tests: they run the real `herald` binary and talk to it over real HTTP.

// A failed unwrap is a failed test, which is what we want here.
#![allow(clippy::unwrap_used)]

mod support;

mod bench;
mod brokers_serve;
mod chaos;
mod cli;
mod dev;
mod events;
mod openapi;
mod relay_crash;
mod relay_leader;
mod serve;
mod tidy;
mod users;
mod webhooks;
mod webhooks_serve;
