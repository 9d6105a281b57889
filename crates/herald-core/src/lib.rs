//! The vocabulary every Herald crate shares.
//!
//! - [`envelope`]: the CloudEvents 1.0 event envelope with Herald's extensions, and its validation.
//! - [`id`]: typed, prefixed, time-ordered ids (`evt_…`) made by one macro.
//! - [`correlation`]: the correlation id that follows a request from HTTP to stored rows.
//! - [`problem`]: [`ApiError`], the RFC 9457 problem+json error every HTTP API answers with.
//! - [`json`]: [`ApiJson`], a JSON extractor whose rejections are problem+json.
//! - [`admin`]: the admin API key and the middleware that requires it.
//! - [`secret`]: [`Secret`], a value that never prints.
//! - [`error_chain`]: an error and its sources on one line, for logs and stored errors.
//!
//! This crate knows no database, broker or network client: it is pure types plus the axum glue
//! needed to make every API speak the same error language.

pub mod admin;
mod base32;
pub mod correlation;
pub mod envelope;
pub mod id;
pub mod json;
pub mod problem;
pub mod secret;

pub use correlation::CorrelationId;
pub use envelope::Event;
pub use json::ApiJson;
pub use problem::{ApiError, FieldError};
pub use secret::Secret;

/// `err` and its sources, `: `-separated: what logs and stored errors show.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(next) = source {
        text.push_str(": ");
        text.push_str(&next.to_string());
        source = next.source();
    }
    text
}
