//! [`Mediator`]: makes one webhook request and says how it went.
//!
//! One HTTP client for the whole router, so connections to an endpoint are kept alive and
//! reused. Every request has a timeout; redirects are not followed (a 3xx is a failure, as
//! the receiver must give its final URL). The request is Standard Webhooks:
//!
//! - `webhook-id`: the event id (the same on every attempt, so receivers can deduplicate);
//! - `webhook-timestamp`: seconds since the epoch at this attempt;
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256 of id.timestamp.body>`;
//! - `content-type: application/cloudevents+json`, the body being the event in CloudEvents
//!   structured form;
//! - `x-correlation-id` and `traceparent` from the event, and the subscription's own headers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::outcome::Outcome;
use crate::signature::SigningSecret;

/// The most bytes of an error answer's body kept in the attempt's error.
const ERROR_BODY_BYTES: usize = 200;

/// One request to make.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The endpoint.
    pub url: &'a str,
    /// The event id.
    pub event_id: &'a str,
    /// The body: the event as CloudEvents structured JSON.
    pub body: &'a str,
    /// The subscription's secret.
    pub secret: &'a SigningSecret,
    /// The subscription's extra headers.
    pub headers: &'a BTreeMap<String, String>,
}

/// How one request went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What it means for the delivery.
    pub outcome: Outcome,
    /// The status code, when the endpoint answered.
    pub status: Option<u16>,
    /// From sending to the answer's head (or the failure).
    pub latency: Duration,
    /// What went wrong, if anything, for people.
    pub error: Option<String>,
}

/// Why a mediator could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the webhook HTTP client")]
pub struct BuildError(#[source] reqwest::Error);

/// Installs ring as the process's one rustls crypto provider, unless one is installed.
/// The binary calls it at start-up; calling it again does nothing.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: a provider is then installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Mediator {
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct Context {
    correlationid: Option<String>,
    traceparent: Option<String>,
}

impl Mediator {
    /// A mediator whose requests give up after `timeout`.
    ///
    /// Installs the process's TLS crypto provider if none is installed yet (see
    /// [`install_crypto_provider`]).
    pub fn new(timeout: Duration) -> Result<Self, BuildError> {
        install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("herald/", env!("CARGO_PKG_VERSION")))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(BuildError)?;
        Ok(Self { client })
    }

    /// Makes the request; never fails (a failure is an [`Answer`]).
    pub async fn send(&self, request: Request<'_>) -> Answer {
        let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
        let signature = request
            .secret
            .sign(request.event_id, timestamp, request.body.as_bytes());
        let context: Option<Context> = serde_json::from_str(request.body).ok();
        let mut builder = self.client.post(request.url);
        for (name, value) in request.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder = builder
            .header("content-type", "application/cloudevents+json")
            .header("webhook-id", request.event_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature);
        if let Some(context) = context {
            if let Some(id) = context.correlationid {
                builder = builder.header("x-correlation-id", id);
            }
            if let Some(traceparent) = context.traceparent {
                builder = builder.header("traceparent", traceparent);
            }
        }
        let started = Instant::now();
        let sent = builder.body(request.body.to_owned()).send().await;
        let latency = started.elapsed();
        match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let outcome = Outcome::of_status(status, retry_after.as_deref());
                let error = if outcome == Outcome::Delivered {
                    None
                } else {
                    let text = response.text().await.unwrap_or_default();
                    let mut excerpt: String = text.chars().take(ERROR_BODY_BYTES).collect();
                    if excerpt.len() < text.len() {
                        excerpt.push('…');
                    }
                    Some(if excerpt.is_empty() {
                        format!("the endpoint answered {status}")
                    } else {
                        format!("the endpoint answered {status}: {excerpt}")
                    })
                };
                Answer {
                    outcome,
                    status: Some(status),
                    latency,
                    error,
                }
            }
            Err(err) => {
                let what = if err.is_timeout() {
                    "the endpoint did not answer in time".to_owned()
                } else if err.is_connect() {
                    "cannot connect to the endpoint".to_owned()
                } else {
                    "the request failed".to_owned()
                };
                Answer {
                    outcome: Outcome::Retry { retry_after: None },
                    status: None,
                    latency,
                    error: Some(format!("{what}: {}", herald_core::error_chain(&err))),
                }
            }
        }
    }
}
