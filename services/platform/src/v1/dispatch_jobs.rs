//! `/v1/dispatch-jobs`: every delivery, with its attempts.
//!
//! - `GET /v1/dispatch-jobs?subscription_id=&status=&event_id=&limit=&cursor=` → `{data,
//!   next_cursor}`, newest first; each job with every attempt (time, status code, latency,
//!   error). `status` is `pending`, `delivering`, `delivered` or `dead` (the dead letters);
//!   `limit` 1 to 500 (default 100).
//! - `GET /v1/dispatch-jobs/{id}`.
//! - `POST /v1/dispatch-jobs/{id}/retry` → 202 with the job, due now with a fresh attempt
//!   budget; 409 while an attempt is under way.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_core::problem::{ApiError, FieldError, ProblemDoc as Problem};
use herald_router::job::{self, Filter, JobOut, Page, Status};
use herald_router::subscription;
use serde::Deserialize;

use crate::PlatformState;

/// The largest page.
pub const MAX_LIMIT: u32 = 500;

/// The routes of this resource.
pub fn router() -> Router<PlatformState> {
    Router::new()
        .route("/dispatch-jobs", get(list))
        .route("/dispatch-jobs/{id}", get(fetch))
        .route("/dispatch-jobs/{id}/retry", post(retry))
}

/// The query of the list.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    subscription_id: Option<String>,
    status: Option<String>,
    event_id: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// Dispatch jobs, newest first, each with every attempt.
#[utoipa::path(get, path = "/v1/dispatch-jobs", operation_id = "listDispatchJobs", tag = "dispatch-jobs",
    params(
        ("subscription_id" = Option<String>, Query, description = "Only this subscription's jobs"),
        ("status" = Option<String>, Query, description = "pending, delivering, delivered or dead"),
        ("event_id" = Option<String>, Query, description = "Only this event's jobs"),
        ("limit" = Option<u32>, Query, description = "1 to 500, default 100"),
        ("cursor" = Option<String>, Query, description = "A previous page's next_cursor"),
    ),
    responses((status = 200, description = "OK", body = Page),
              (status = 400, description = "Unknown query parameter", body = Problem, content_type = "application/problem+json"),
              (status = 422, description = "Invalid input; every problem is listed", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn list(
    State(state): State<PlatformState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    let Query(query) = query.map_err(|rejection| {
        ApiError::bad_request(
            "invalid_query",
            format!(
                "{}; filter with subscription_id, status, event_id, limit and cursor",
                rejection.body_text()
            ),
        )
    })?;
    let mut errors = Vec::new();
    let mut filter = Filter {
        limit: query.limit.unwrap_or(100),
        ..Filter::default()
    };
    if !(1..=MAX_LIMIT).contains(&filter.limit) {
        errors.push(FieldError::new(
            "#/query/limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        ));
    }
    if let Some(id) = &query.subscription_id {
        match subscription::parse_id(id, "#/query/subscription_id") {
            Ok(id) => filter.subscription_id = Some(id),
            Err(err) => errors.extend(err.errors().iter().cloned()),
        }
    }
    if let Some(status) = &query.status {
        match Status::parse(status) {
            Some(status) => filter.status = Some(status),
            None => errors.push(FieldError::new(
                "#/query/status",
                "must be pending, delivering, delivered or dead",
            )),
        }
    }
    if let Some(event) = query.event_id {
        filter.event_id = Some(event);
    }
    if let Some(cursor) = &query.cursor {
        match cursor.parse::<i64>() {
            Ok(before) if before > 0 => filter.before = Some(before),
            _ => errors.push(FieldError::new(
                "#/query/cursor",
                "is not a cursor from a previous page's next_cursor",
            )),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    job::list(&state.store, &filter).await.map(Json)
}

/// One dispatch job with its attempts.
#[utoipa::path(get, path = "/v1/dispatch-jobs/{id}", operation_id = "getDispatchJob", tag = "dispatch-jobs", params(("id" = String, Path, description = "A `job_…` id")),
    responses((status = 200, description = "OK", body = JobOut), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid input; every problem is listed", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn fetch(
    State(state): State<PlatformState>,
    Path(id): Path<String>,
) -> Result<Json<JobOut>, ApiError> {
    let id = job::parse_id(&id, "#/path/id")?;
    job::get(&state.store, id).await.map(Json)
}

/// Make a job due now with a fresh attempt budget (dead letters included).
#[utoipa::path(post, path = "/v1/dispatch-jobs/{id}/retry", operation_id = "retryDispatchJob", tag = "dispatch-jobs", params(("id" = String, Path, description = "A `job_…` id")),
    responses((status = 202, description = "Accepted", body = JobOut), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 409, description = "An attempt is under way", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid input; every problem is listed", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn retry(
    State(state): State<PlatformState>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<JobOut>), ApiError> {
    let id = job::parse_id(&id, "#/path/id")?;
    let job = job::retry(&state.store, id).await?;
    tracing::info!(job_id = %id, "dispatch job retried");
    state.wake_router();
    Ok((StatusCode::ACCEPTED, Json(job)))
}
