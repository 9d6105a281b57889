//! Signing deliveries the Standard Webhooks way, and checking them on the receiving end.
//!
//! A delivery carries three headers:
//!
//! - `webhook-id`: the event id (`evt_…`), the same on every attempt, so receivers can
//!   deduplicate;
//! - `webhook-timestamp`: the attempt's time in Unix seconds;
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, keyed by the
//!   subscription's secret. Several space-separated signatures may be sent while a secret is
//!   rotated; a receiver accepts the delivery when any `v1` one matches.
//!
//! Secrets are written `whsec_<base64 of 24 to 64 random bytes>`; Herald generates 32 bytes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use herald_core::Secret;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The text every signing secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";

/// The header with the event id.
pub const ID_HEADER: &str = "webhook-id";
/// The header with the attempt's Unix time in seconds.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// The header with the signatures.
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// How far a receiver lets a timestamp stray from its clock by default (Standard Webhooks
/// suggests five minutes), which bounds how long a captured delivery can be replayed.
pub const DEFAULT_TOLERANCE_SECS: u64 = 5 * 60;

const MIN_KEY_BYTES: usize = 24;
const MAX_KEY_BYTES: usize = 64;
const GENERATED_KEY_BYTES: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// A subscription's signing secret. Never prints; [`SigningSecret::to_text`] gives the
/// `whsec_…` form for the one place it is shown (the API's answer to its owner).
#[derive(Debug, Clone)]
pub struct SigningSecret(Secret<Vec<u8>>);

/// Why a text is not a signing secret. The secret itself is never repeated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No `whsec_` prefix.
    #[error("a signing secret starts with `whsec_`")]
    Prefix,
    /// The rest is not base64.
    #[error("a signing secret is `whsec_` followed by standard base64")]
    Encoding,
    /// Too short or too long.
    #[error("a signing secret holds 24 to 64 bytes, not {0}")]
    Length(usize),
}

impl SigningSecret {
    /// A new random secret of 32 bytes.
    ///
    /// # Errors
    /// When the operating system has no randomness to give.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut key = vec![0_u8; GENERATED_KEY_BYTES];
        getrandom::fill(&mut key)?;
        Ok(Self(Secret::new(key)))
    }

    /// Reads a `whsec_…` secret, as a user may give one when creating a subscription.
    ///
    /// # Errors
    /// [`SecretError`] saying what is wrong, without the secret.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let encoded = text
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SecretError::Prefix)?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| SecretError::Encoding)?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(SecretError::Length(key.len()));
        }
        Ok(Self(Secret::new(key)))
    }

    /// The `whsec_…` form.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(self.0.expose()))
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(self.0.expose())
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `webhook-signature` value for a delivery: `v1,<base64>`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", STANDARD.encode(tag))
    }

    /// Checks a delivery as a receiver does: the timestamp must be within `tolerance_secs` of
    /// `now` (Unix seconds), and one of the `v1` signatures in `signatures` must match. The
    /// comparison takes the same time wherever a signature differs.
    ///
    /// # Errors
    /// [`VerifyError`] saying which check failed.
    pub fn verify(
        &self,
        id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
        now: i64,
        tolerance_secs: u64,
    ) -> Result<(), VerifyError> {
        let sent: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| VerifyError::Timestamp)?;
        if sent.abs_diff(now) > tolerance_secs {
            return Err(VerifyError::Stale { sent, now });
        }
        let mut any_v1 = false;
        for candidate in signatures.split_whitespace() {
            let Some(encoded) = candidate.strip_prefix("v1,") else {
                continue;
            };
            any_v1 = true;
            let Ok(tag) = STANDARD.decode(encoded) else {
                continue;
            };
            if self.mac(id, sent, body).verify_slice(&tag).is_ok() {
                return Ok(());
            }
        }
        Err(if any_v1 {
            VerifyError::Mismatch
        } else {
            VerifyError::NoSignature
        })
    }
}

/// Why a delivery's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// `webhook-timestamp` is not a whole number of seconds.
    #[error("webhook-timestamp is not a Unix time in seconds")]
    Timestamp,
    /// The timestamp is too far from the receiver's clock.
    #[error("webhook-timestamp {sent} is too far from now ({now})")]
    Stale {
        /// The delivery's timestamp.
        sent: i64,
        /// The receiver's time.
        now: i64,
    },
    /// `webhook-signature` holds no `v1,…` signature.
    #[error("webhook-signature holds no v1 signature")]
    NoSignature,
    /// No `v1` signature matches the body with this secret.
    #[error("no signature matches")]
    Mismatch,
}
