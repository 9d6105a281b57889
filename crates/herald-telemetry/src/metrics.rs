//! Every metric Herald exports, in one place.
//!
//! The set is closed: a metric exists only if it is a field of [`Metrics`], with its name,
//! help text and labels written here. Names start with `herald_`; units are in the name
//! (`_seconds`, `_bytes`); counters end in `_total`. Labels take values from small, known
//! sets (route templates, not raw paths), so cardinality stays bounded.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `herald_build_info` | gauge (always 1) | `version` |
//! | `herald_http_requests_total` | counter | `method`, `route`, `status` |
//! | `herald_http_request_duration_seconds` | histogram | `method`, `route` |
//! | `herald_http_requests_in_flight` | gauge | — |
//! | `herald_outbox_relayed_total` | counter | — |
//! | `herald_outbox_batch_size` | histogram | — |
//! | `herald_outbox_lag_seconds` | gauge (age of the oldest pending outbox row) | — |
//! | `herald_outbox_publish_failures_total` | counter | — |
//! | `herald_outbox_failed_rows` | gauge (outbox rows set aside as failed) | — |
//! | `herald_inbox_processed_total` | counter (deliveries settled by a consumer) | `consumer`, `outcome` (`done`, `duplicate`, `skipped`, `retry`, `dead`) |
//! | `herald_inbox_handler_duration_seconds` | histogram (handler run, not counting the commit) | `consumer` |
//! | `herald_webhook_attempts_total` | counter (webhook requests made) | `pool`, `outcome` (`delivered`, `retry`, `failed`, `gone`) |
//! | `herald_webhook_attempt_duration_seconds` | histogram (request to answer, or to failure) | `pool` |
//! | `herald_webhook_dead_total` | counter (deliveries given up on) | `pool` |
//! | `herald_webhook_in_flight` | gauge (webhook requests under way) | `pool` |
//!
//! Pool codes are created by operators through the admin API, so the `pool` label stays small;
//! subscriptions and endpoints are never labels.

use std::sync::OnceLock;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The media type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of the build info gauge.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// The crate version of the running binary.
    pub version: String,
}

/// Labels of a finished HTTP request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP method.
    pub method: String,
    /// The route template that matched (`/v1/events/{id}`), or `unmatched`.
    pub route: String,
    /// Response status code.
    pub status: u16,
}

/// Labels of a request duration.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// HTTP method.
    pub method: String,
    /// The route template that matched, or `unmatched`.
    pub route: String,
}

/// Labels of a delivery an inbox consumer settled.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InboxLabels {
    /// The consumer's name (its consumer group), from configuration.
    pub consumer: String,
    /// `done`, `duplicate`, `retry` or `dead`.
    pub outcome: String,
}

/// Labels of an inbox consumer's handler timing.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    /// The consumer's name (its consumer group), from configuration.
    pub consumer: String,
}

/// Labels of a webhook attempt.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// The delivery pool's code.
    pub pool: String,
    /// `delivered`, `retry`, `failed` or `gone`.
    pub outcome: String,
}

/// Labels of per-pool webhook metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// The delivery pool's code.
    pub pool: String,
}

/// The metrics themselves. Get the process-wide set with [`metrics`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// `herald_build_info`.
    pub build_info: Family<BuildLabels, Gauge>,
    /// `herald_http_requests_total`.
    pub http_requests: Family<RequestLabels, Counter>,
    /// `herald_http_request_duration_seconds`.
    pub http_duration: Family<RouteLabels, Histogram>,
    /// `herald_http_requests_in_flight`.
    pub http_in_flight: Gauge,
    /// `herald_outbox_relayed_total`.
    pub outbox_relayed: Counter,
    /// `herald_outbox_batch_size`.
    pub outbox_batch_size: Histogram,
    /// `herald_outbox_lag_seconds`.
    pub outbox_lag: Gauge<f64, AtomicU64>,
    /// `herald_outbox_publish_failures_total`.
    pub outbox_publish_failures: Counter,
    /// `herald_outbox_failed_rows`.
    pub outbox_failed_rows: Gauge,
    /// `herald_inbox_processed_total`.
    pub inbox_processed: Family<InboxLabels, Counter>,
    /// `herald_inbox_handler_duration_seconds`.
    pub inbox_handler_duration: Family<ConsumerLabels, Histogram>,
    /// `herald_webhook_attempts_total`.
    pub webhook_attempts: Family<WebhookLabels, Counter>,
    /// `herald_webhook_attempt_duration_seconds`.
    pub webhook_duration: Family<PoolLabels, Histogram>,
    /// `herald_webhook_dead_total`.
    pub webhook_dead: Family<PoolLabels, Counter>,
    /// `herald_webhook_in_flight`.
    pub webhook_in_flight: Family<PoolLabels, Gauge>,
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~16 s, doubling.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

fn batch_size_histogram() -> Histogram {
    // 1 to 16384 events, doubling.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 2.0, 15,
    ))
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("herald");
        let build_info = Family::<BuildLabels, Gauge>::default();
        registry.register(
            "build_info",
            "Version of the running Herald binary",
            build_info.clone(),
        );
        let http_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered",
            http_requests.clone(),
        );
        let http_duration = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "http_request_duration",
            "Time from request to response head",
            prometheus_client::registry::Unit::Seconds,
            http_duration.clone(),
        );
        let http_in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being handled",
            http_in_flight.clone(),
        );
        let outbox_relayed = Counter::default();
        registry.register(
            "outbox_relayed",
            "Events the outbox relay published and the broker confirmed",
            outbox_relayed.clone(),
        );
        let outbox_batch_size = batch_size_histogram();
        registry.register(
            "outbox_batch_size",
            "Events per confirmed outbox relay publish",
            outbox_batch_size.clone(),
        );
        let outbox_lag = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "outbox_lag",
            "Age of the oldest pending outbox row (0 when none is pending)",
            prometheus_client::registry::Unit::Seconds,
            outbox_lag.clone(),
        );
        let outbox_publish_failures = Counter::default();
        registry.register(
            "outbox_publish_failures",
            "Outbox relay publishes the broker failed or rejected",
            outbox_publish_failures.clone(),
        );
        let outbox_failed_rows = Gauge::default();
        registry.register(
            "outbox_failed_rows",
            "Outbox rows set aside as failed after their last attempt",
            outbox_failed_rows.clone(),
        );
        let inbox_processed = Family::<InboxLabels, Counter>::default();
        registry.register(
            "inbox_processed",
            "Deliveries an inbox consumer settled, by outcome",
            inbox_processed.clone(),
        );
        let inbox_handler_duration = Family::<ConsumerLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "inbox_handler_duration",
            "Time an inbox consumer's handler ran, in its transaction",
            prometheus_client::registry::Unit::Seconds,
            inbox_handler_duration.clone(),
        );

        let webhook_attempts = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_attempts",
            "Webhook requests made, by pool and outcome",
            webhook_attempts.clone(),
        );
        let webhook_duration = Family::<PoolLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        registry.register_with_unit(
            "webhook_attempt_duration",
            "Time from sending a webhook request to its answer or failure",
            prometheus_client::registry::Unit::Seconds,
            webhook_duration.clone(),
        );
        let webhook_dead = Family::<PoolLabels, Counter>::default();
        registry.register(
            "webhook_dead",
            "Webhook deliveries given up on (max_attempts reached, or 410 Gone)",
            webhook_dead.clone(),
        );
        let webhook_in_flight = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "webhook_in_flight",
            "Webhook requests under way",
            webhook_in_flight.clone(),
        );

        build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        Self {
            registry,
            build_info,
            http_requests,
            http_duration,
            http_in_flight,
            outbox_relayed,
            outbox_batch_size,
            outbox_lag,
            outbox_publish_failures,
            outbox_failed_rows,
            inbox_processed,
            inbox_handler_duration,
            webhook_attempts,
            webhook_duration,
            webhook_dead,
            webhook_in_flight,
        }
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// All metrics in the OpenMetrics text format.
pub fn encode() -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &metrics().registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_the_documented_names() {
        metrics()
            .http_requests
            .get_or_create(&RequestLabels {
                method: "GET".into(),
                route: "/healthz".into(),
                status: 200,
            })
            .inc();
        metrics()
            .http_duration
            .get_or_create(&RouteLabels {
                method: "GET".into(),
                route: "/healthz".into(),
            })
            .observe(0.003);
        metrics().outbox_batch_size.observe(3.0);
        metrics()
            .webhook_attempts
            .get_or_create(&WebhookLabels {
                pool: "default".into(),
                outcome: "delivered".into(),
            })
            .inc();
        let text = encode();
        for name in [
            "herald_build_info{version=",
            "herald_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"}",
            "# TYPE herald_http_request_duration_seconds histogram",
            "herald_http_request_duration_seconds_bucket{le=\"0.004\",method=\"GET\",route=\"/healthz\"} 1",
            "herald_http_requests_in_flight 0",
            "herald_outbox_relayed_total 0",
            "herald_outbox_batch_size_bucket{le=\"4.0\"} 1",
            "# TYPE herald_outbox_lag_seconds gauge",
            "herald_outbox_publish_failures_total 0",
            "herald_outbox_failed_rows 0",
            "herald_webhook_attempts_total{pool=\"default\",outcome=\"delivered\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
