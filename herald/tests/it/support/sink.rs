//! A webhook receiver for tests: a real HTTP server on 127.0.0.1 that checks every
//! delivery's signature, records what arrived (first arrival of each id, in order, per
//! partition key) and answers as told: 2xx, 500, 429 with `Retry-After`, or too slowly.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use herald_router::signature::SigningSecret;

/// How the sink answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// 204.
    Accept,
    /// 500.
    Fail,
    /// 429 with `Retry-After: <secs>`.
    TooMany(u64),
    /// Waits this long, then 204 (too late when it exceeds the router's timeout).
    Slow(Duration),
}

/// What the sink saw.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Distinct event ids, in first-arrival order.
    pub(crate) first: Vec<String>,
    ids: HashSet<String>,
    /// Per partition key, the `seq` of each event at its first arrival.
    pub(crate) per_key: HashMap<String, Vec<u64>>,
    /// Requests answered, in all (repeats included).
    pub(crate) requests: u64,
    /// Requests begun, including those the caller gave up on before the answer (a request
    /// whose caller hangs up is dropped unanswered, and not counted in `requests`).
    pub(crate) begun: u64,
    /// Requests whose signature did not check, with the reason.
    pub(crate) bad_signatures: Vec<String>,
    /// When each accepted delivery arrived.
    pub(crate) accepted_at: Vec<Instant>,
}

#[derive(Debug)]
struct Inner {
    secret: Mutex<Option<SigningSecret>>,
    mode: Mutex<Mode>,
    seen: Mutex<Seen>,
}

/// See the [module docs](self).
#[derive(Debug, Clone)]
pub(crate) struct Sink {
    inner: Arc<Inner>,
    /// `http://127.0.0.1:PORT/hook`.
    pub(crate) url: String,
}

impl Sink {
    /// Starts a sink on a free port, accepting everything.
    pub(crate) async fn start() -> Self {
        let inner = Arc::new(Inner {
            secret: Mutex::new(None),
            mode: Mutex::new(Mode::Accept),
            seen: Mutex::new(Seen::default()),
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { inner, url }
    }

    /// The secret deliveries must be signed with (the subscription's).
    pub(crate) fn expect_secret(&self, secret: &str) {
        *self.inner.secret.lock().unwrap() = Some(SigningSecret::parse(secret).unwrap());
    }

    /// Changes how the sink answers from now on.
    pub(crate) fn set_mode(&self, mode: Mode) {
        *self.inner.mode.lock().unwrap() = mode;
    }

    /// Runs `f` on what the sink saw.
    pub(crate) fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.inner.seen.lock().unwrap())
    }

    /// Waits until `count` distinct events arrived, failing after `deadline`.
    pub(crate) async fn wait_for(&self, count: usize, deadline: Duration) {
        let until = Instant::now() + deadline;
        loop {
            let have = self.seen(|s| s.first.len());
            if have >= count {
                return;
            }
            assert!(
                Instant::now() < until,
                "only {have} of {count} events arrived within {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

async fn receive(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let mode = *inner.mode.lock().unwrap();
    inner.seen.lock().unwrap().begun += 1;
    if let Mode::Slow(wait) = mode {
        tokio::time::sleep(wait).await;
    }
    let id = header(&headers, "webhook-id").to_owned();
    let verdict = {
        let secret = inner.secret.lock().unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        match secret.as_ref() {
            None => Err("the sink has no secret to check with".to_owned()),
            Some(secret) => secret
                .verify(
                    &id,
                    header(&headers, "webhook-timestamp"),
                    header(&headers, "webhook-signature"),
                    &body,
                    now,
                    300,
                )
                .map_err(|err| format!("{id}: {err}")),
        }
    };
    let content_type = header(&headers, "content-type").to_owned();
    let mut seen = inner.seen.lock().unwrap();
    seen.requests += 1;
    if let Err(reason) = verdict {
        seen.bad_signatures.push(reason);
        return StatusCode::UNAUTHORIZED.into_response();
    }
    if content_type != "application/cloudevents+json" {
        seen.bad_signatures
            .push(format!("{id}: content-type {content_type:?}"));
        return StatusCode::UNSUPPORTED_MEDIA_TYPE.into_response();
    }
    match mode {
        Mode::Fail => return (StatusCode::INTERNAL_SERVER_ERROR, "down for a bit").into_response(),
        Mode::TooMany(secs) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [("retry-after", secs.to_string())],
            )
                .into_response();
        }
        Mode::Accept | Mode::Slow(_) => {}
    }
    seen.accepted_at.push(Instant::now());
    if seen.ids.insert(id.clone()) {
        let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if let (Some(key), Some(seq)) = (
            event["partitionkey"].as_str(),
            event["data"]["seq"].as_u64(),
        ) {
            seen.per_key.entry(key.to_owned()).or_default().push(seq);
        }
        seen.first.push(id);
    }
    StatusCode::NO_CONTENT.into_response()
}
