//! The users service against real PostgreSQL and SQLite: the projection through the real
//! inbox consumer, the HTTP API in-process, and gRPC over a real TCP connection.

#![allow(clippy::unwrap_used)]

mod grpc;
mod http;
mod projection;
mod support;
