//! The middleware every Herald HTTP server wears, applied by [`instrument`].
//!
//! For each request it:
//! - takes the `x-correlation-id` header if it is a valid id, or generates one (a malformed one
//!   is replaced, not trusted, and the replacement is logged);
//! - runs the request inside a span `http.request` carrying `method`, `route` and
//!   `correlation_id`, and inside the correlation task-local, so problem bodies and events
//!   made during the request carry the id too;
//! - echoes the id in the response's `x-correlation-id` header;
//! - logs one access line (probes and `/metrics` at debug level, so they don't drown the rest);
//! - counts the request and its duration in [`metrics`](crate::metrics);
//! - turns a panic in a handler into a problem+json 500 instead of a dropped connection.

use std::any::Any;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herald_core::correlation::{self, CorrelationId};
use herald_core::problem::ApiError;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

use crate::metrics::{RequestLabels, RouteLabels, metrics};

/// Routes whose access lines are logged at debug level.
const QUIET_ROUTES: &[&str] = &["/healthz", "/readyz", "/q/live", "/q/ready", "/metrics"];

/// Wraps every route of `router` (fallbacks included) in the middleware described in the
/// [module docs](self). Call it last, after all routes and fallbacks are added.
pub fn instrument<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .layer(CatchPanicLayer::custom(panic_to_problem))
        .layer(axum::middleware::from_fn(telemetry))
}

async fn telemetry(mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let presented = request.headers().get(correlation::HEADER);
    let (id, replaced) =
        match presented.map(|value| value.to_str().ok().and_then(CorrelationId::parse)) {
            Some(Some(id)) => (id, false),
            Some(None) => (CorrelationId::generate(), true),
            None => (CorrelationId::generate(), false),
        };
    request.extensions_mut().insert(id.clone());
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();

    let span =
        tracing::info_span!("http.request", method = %method, route = %route, correlation_id = %id);
    if replaced {
        span.in_scope(|| {
            tracing::info!("ignored a malformed x-correlation-id header and generated one");
        });
    }

    let in_flight = &metrics().http_in_flight;
    in_flight.inc();
    let mut response = correlation::scope(id.clone(), next.run(request))
        .instrument(span.clone())
        .await;
    in_flight.dec();

    if let Ok(value) = HeaderValue::from_str(id.as_str()) {
        response.headers_mut().insert(correlation::HEADER, value);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    span.in_scope(|| {
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        if QUIET_ROUTES.contains(&route.as_str()) {
            tracing::debug!(status, latency_ms, "request handled");
        } else if status >= 500 {
            tracing::warn!(status, latency_ms, "request handled");
        } else {
            tracing::info!(status, latency_ms, "request handled");
        }
    });
    let metrics = metrics();
    metrics
        .http_requests
        .get_or_create(&RequestLabels {
            method: method.clone(),
            route: route.clone(),
            status,
        })
        .inc();
    metrics
        .http_duration
        .get_or_create(&RouteLabels { method, route })
        .observe(elapsed.as_secs_f64());
    response
}

fn panic_to_problem(payload: Box<dyn Any + Send + 'static>) -> Response {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned());
    ApiError::internal(std::io::Error::other(format!(
        "handler panicked: {message}"
    )))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request as HttpRequest, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    async fn boom() -> &'static str {
        panic!("kaboom")
    }

    fn app() -> Router {
        instrument(
            Router::new()
                .route(
                    "/echo",
                    get(|| async {
                        correlation::current()
                            .map(|id| id.to_string())
                            .unwrap_or_default()
                    }),
                )
                .route("/boom", get(boom))
                .fallback(herald_core::problem::route_not_found),
        )
    }

    async fn call(path: &str, header: Option<&str>) -> (StatusCode, Option<String>, String) {
        let mut request = HttpRequest::get(path);
        if let Some(header) = header {
            request = request.header(correlation::HEADER, header);
        }
        let response = app()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let echoed = response
            .headers()
            .get(correlation::HEADER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, echoed, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn echoes_a_valid_id_and_exposes_it_to_handlers() {
        let (status, echoed, body) = call("/echo", Some("order-42")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(echoed.as_deref(), Some("order-42"));
        assert_eq!(body, "order-42");
    }

    #[tokio::test]
    async fn generates_an_id_when_absent_or_malformed() {
        let (_, echoed, body) = call("/echo", None).await;
        let echoed = echoed.unwrap();
        assert!(CorrelationId::parse(&echoed).is_some());
        assert_eq!(body, echoed);
        let (_, replaced, _) = call("/echo", Some("bad id with spaces")).await;
        assert_ne!(replaced.as_deref(), Some("bad id with spaces"));
        assert!(CorrelationId::parse(&replaced.unwrap()).is_some());
    }

    #[tokio::test]
    async fn fallback_and_panics_are_problems_with_the_id() {
        let (status, echoed, body) = call("/nowhere", Some("c-1")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(echoed.as_deref(), Some("c-1"));
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "route_not_found");
        assert_eq!(body["correlation_id"], "c-1");

        let (status, echoed, body) = call("/boom", Some("c-2")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(echoed.as_deref(), Some("c-2"));
        assert!(!body.contains("kaboom"), "{body}");
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["correlation_id"], "c-2");
    }

    #[tokio::test]
    async fn counts_requests_by_route_template() {
        call("/echo", None).await;
        call("/nowhere/else", None).await;
        let text = crate::metrics::encode();
        assert!(
            text.contains(r#"herald_http_requests_total{method="GET",route="/echo",status="200"}"#),
            "{text}"
        );
        assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
        assert!(
            !text.contains("/nowhere/else"),
            "raw paths must not become labels"
        );
    }
}
