//! Liveness and readiness.
//!
//! - `/healthz` (alias `/q/live`): 200 while the process can answer at all. An orchestrator
//!   restarts the process when this fails.
//! - `/readyz` (alias `/q/ready`): 200 when every registered check passes, else 503 with the
//!   failing checks named. A load balancer sends traffic only while this is 200. Checks run
//!   concurrently, each bounded by [`CHECK_TIMEOUT`]. Once shutdown begins ([`Health::drain`])
//!   readiness is 503 `draining`, so traffic moves away before the listener closes.
//!
//! Components register their own checks ([`Health::add_check`]): the store pings its
//! database, a broker its connection. [`router`] serves both probes and `/metrics`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

/// The longest one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type CheckFn = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// The process's health: registered readiness checks and whether it is draining. Cheap to clone.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    checks: RwLock<Vec<(&'static str, CheckFn)>>,
    draining: AtomicBool,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .inner
            .checks
            .read()
            .map(|checks| checks.iter().map(|(name, _)| *name).collect())
            .unwrap_or_default();
        f.debug_struct("Health")
            .field("checks", &names)
            .field("draining", &self.is_draining())
            .finish()
    }
}

/// One check's result in the `/readyz` body.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// The check's name, e.g. `store`.
    pub name: &'static str,
    /// `up` or `down`.
    pub status: &'static str,
    /// Why it is down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The `/readyz` body.
#[derive(Debug, Serialize)]
pub struct Readiness {
    /// `ready`, `not_ready` or `draining`.
    pub status: &'static str,
    /// Every check's result.
    pub checks: Vec<CheckReport>,
}

impl Health {
    /// A health with no checks: ready until told to drain.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a readiness check. `check` is called on every `/readyz` request.
    pub fn add_check<F, Fut>(&self, name: &'static str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: CheckFn = Arc::new(move || Box::pin(check()));
        if let Ok(mut checks) = self.inner.checks.write() {
            checks.push((name, check));
        }
    }

    /// Marks the process as shutting down: readiness fails from now on.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    /// Whether [`drain`](Self::drain) was called.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Runs every check and reports.
    pub async fn readiness(&self) -> Readiness {
        let checks: Vec<(&'static str, CheckFn)> = self
            .inner
            .checks
            .read()
            .map(|checks| checks.clone())
            .unwrap_or_default();
        let mut running = tokio::task::JoinSet::new();
        for (index, (name, check)) in checks.into_iter().enumerate() {
            running.spawn(async move {
                let result = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                    Ok(result) => result,
                    Err(_) => Err(format!(
                        "did not answer within {} s",
                        CHECK_TIMEOUT.as_secs()
                    )),
                };
                (index, name, result)
            });
        }
        let mut reports = Vec::new();
        while let Some(joined) = running.join_next().await {
            let (index, name, result) = joined.unwrap_or_else(|err| {
                (usize::MAX, "unknown", Err(format!("check panicked: {err}")))
            });
            reports.push((
                index,
                CheckReport {
                    name,
                    status: if result.is_ok() { "up" } else { "down" },
                    error: result.err(),
                },
            ));
        }
        reports.sort_by_key(|(index, _)| *index);
        let checks: Vec<CheckReport> = reports.into_iter().map(|(_, report)| report).collect();
        let status = if self.is_draining() {
            "draining"
        } else if checks.iter().all(|check| check.error.is_none()) {
            "ready"
        } else {
            "not_ready"
        };
        Readiness { status, checks }
    }
}

/// Serves `/healthz`, `/q/live`, `/readyz`, `/q/ready` and `/metrics`.
pub fn router<S: Clone + Send + Sync + 'static>(health: Health) -> Router<S> {
    Router::new()
        .route("/healthz", get(live))
        .route("/q/live", get(live))
        .route("/readyz", get(ready))
        .route("/q/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn live() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "alive" }))
}

async fn ready(State(health): State<Health>) -> impl IntoResponse {
    let readiness = health.readiness().await;
    let status = if readiness.status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(readiness))
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::encode(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get_json(health: &Health, path: &str) -> (StatusCode, serde_json::Value) {
        let app: Router = router(health.clone());
        let response = app
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn ready_without_checks_and_draining_after_drain() {
        let health = Health::new();
        for path in ["/healthz", "/q/live"] {
            assert_eq!(get_json(&health, path).await.0, StatusCode::OK);
        }
        for path in ["/readyz", "/q/ready"] {
            let (status, body) = get_json(&health, path).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(body["status"], "ready");
        }
        health.drain();
        let (status, body) = get_json(&health, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "draining");
        assert_eq!(get_json(&health, "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn failing_and_hanging_checks_are_named() {
        let health = Health::new();
        health.add_check("store", || async { Ok(()) });
        health.add_check("broker", || async { Err("connection refused".to_owned()) });
        health.add_check("slow", || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        });
        let started = std::time::Instant::now();
        let (status, body) = get_json(&health, "/readyz").await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the hanging check must be cut off"
        );
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "not_ready");
        assert_eq!(
            body["checks"],
            serde_json::json!([
                {"name": "store", "status": "up"},
                {"name": "broker", "status": "down", "error": "connection refused"},
                {"name": "slow", "status": "down", "error": "did not answer within 2 s"},
            ])
        );
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics() {
        let app: Router = router(Health::new());
        let response = app
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            crate::metrics::CONTENT_TYPE
        );
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("herald_build_info"));
    }
}
