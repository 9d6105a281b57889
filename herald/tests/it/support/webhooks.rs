//! Driving webhook delivery through the platform API, for the tests that run it end to end
//! (`webhooks.rs` on `herald dev`, `webhooks_serve.rs` on `herald serve`): subscribing a
//! [`Sink`], publishing numbered events, paging through dispatch jobs, and checking the order
//! the sink saw.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::sink::Sink;
use super::{Running, herald, json_body};

/// Router settings that make retries and breaker probes quick enough for a test.
pub(crate) const FAST_RETRIES: [(&str, &str); 6] = [
    ("HERALD_ROUTER__POLL_INTERVAL", "50ms"),
    ("HERALD_ROUTER__REQUEST_TIMEOUT", "500ms"),
    ("HERALD_ROUTER__BACKOFF_BASE", "50ms"),
    ("HERALD_ROUTER__BACKOFF_MAX", "1s"),
    ("HERALD_ROUTER__BREAKER_COOLDOWN", "200ms"),
    ("HERALD_ROUTER__BREAKER_MAX_COOLDOWN", "1s"),
];

/// `herald serve` with `config` and [`FAST_RETRIES`].
pub(crate) fn serve(config: &Path) -> Command {
    let mut command = herald();
    command
        .args(["serve", "--config"])
        .arg(config)
        .envs(FAST_RETRIES);
    command
}

/// The most pages [`Api::jobs`] follows.
const MAX_PAGES: usize = 100;

/// A running `herald` and how to call its platform API.
pub(crate) struct Api {
    pub(crate) herald: Running,
    pub(crate) key: String,
    pub(crate) http: reqwest::Client,
}

impl Api {
    pub(crate) async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, self.herald.at(path))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = if status >= 400 {
            "application/problem+json"
        } else {
            "application/json"
        };
        (status, json_body(response, content_type).await)
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    pub(crate) async fn get(&self, path: &str) -> Value {
        let (status, body) = self.send(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    /// Subscribes `sink` to `pattern`; the sink then checks signatures with its secret.
    pub(crate) async fn subscribe(&self, sink: &Sink, pattern: &str, extra: Value) -> String {
        let mut body = json!({"name": "test", "event_types": [pattern], "url": sink.url});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        let (status, created) = self.post("/v1/subscriptions", body).await;
        assert_eq!(status, 201, "{created}");
        sink.expect_secret(created["secret"].as_str().unwrap());
        created["id"].as_str().unwrap().to_owned()
    }

    /// Posts `count` events of `event_type`, `keys` partition keys round-robin, each with its
    /// sequence number within its key in `data.seq`; returns the ids Herald gave them.
    pub(crate) async fn publish(
        &self,
        event_type: &str,
        first: u64,
        count: u64,
        keys: u64,
    ) -> Vec<String> {
        let mut ids = Vec::new();
        let mut n = first;
        while n < first + count {
            let batch: Vec<Value> = (n..(n + 1000).min(first + count))
                .map(|i| {
                    json!({"specversion": "1.0", "id": format!("{event_type}-{i}"),
                           "source": "/test", "type": event_type,
                           "partitionkey": format!("key-{}", i % keys),
                           "data": {"seq": i / keys}})
                })
                .collect();
            n += batch.len() as u64;
            let (status, body) = self.post("/v1/events", Value::Array(batch)).await;
            assert_eq!(status, 202, "{body}");
            ids.extend(
                body["data"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|accepted| accepted["id"].as_str().unwrap().to_owned()),
            );
        }
        ids
    }

    /// Every job `GET /v1/dispatch-jobs?{query}` lists, newest first, following
    /// `next_cursor` page by page (at most 100 pages; more fails the test).
    pub(crate) async fn jobs(&self, query: &str) -> Vec<Value> {
        let mut jobs = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut path = format!("/v1/dispatch-jobs?{query}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let page = self.get(&path).await;
            jobs.extend(page["data"].as_array().unwrap().iter().cloned());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return jobs,
            }
        }
        panic!("GET /v1/dispatch-jobs?{query} has more than {MAX_PAGES} pages");
    }
}

/// Every key's first arrivals are in publish order.
pub(crate) fn assert_in_order_per_key(sink: &Sink) {
    sink.seen(|seen| {
        for (key, seqs) in &seen.per_key {
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "key {key} arrived out of order: {seqs:?}"
            );
        }
    });
}

/// Waits (bounded) until no job is pending or being delivered: the router has recorded the
/// outcome of every delivery the sink saw.
pub(crate) async fn wait_until_settled(api: &Api, deadline: Duration) {
    let until = Instant::now() + deadline;
    loop {
        let mut busy = 0;
        for status in ["pending", "delivering"] {
            let page = api
                .get(&format!("/v1/dispatch-jobs?status={status}&limit=1"))
                .await;
            busy += page["data"].as_array().unwrap().len();
        }
        if busy == 0 {
            return;
        }
        assert!(
            Instant::now() < until,
            "jobs were still pending or being delivered after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Accepted deliveries beyond the first of each event.
pub(crate) fn duplicates(sink: &Sink) -> usize {
    sink.seen(|seen| seen.accepted_at.len() - seen.first.len())
}

/// The sink saw exactly `published` (each at least once), every signature good, every
/// key's first arrivals in publish order.
pub(crate) fn assert_arrived_exactly(sink: &Sink, published: &BTreeSet<String>) {
    sink.seen(|seen| {
        assert!(seen.bad_signatures.is_empty(), "{:?}", seen.bad_signatures);
        let received: BTreeSet<String> = seen.first.iter().cloned().collect();
        let missing: Vec<_> = published.difference(&received).take(5).collect();
        let invented: Vec<_> = received.difference(published).take(5).collect();
        assert!(missing.is_empty(), "events were lost, e.g. {missing:?}");
        assert!(
            invented.is_empty(),
            "events never published arrived, e.g. {invented:?}"
        );
    });
    assert_in_order_per_key(sink);
}
