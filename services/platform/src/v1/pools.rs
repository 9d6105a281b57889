//! `/v1/pools`: delivery pools.
//!
//! - `GET /v1/pools` → `{data: [...]}`; `GET /v1/pools/{code}` → the pool or 404.
//! - `PUT /v1/pools/{code}` `{concurrency, rate_limit: {per_second, burst} | null}` → 201 when
//!   created, 200 when changed. Running routers apply the change within a second, without a
//!   restart. Pool `default` always exists.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use herald_core::ApiJson;
use herald_core::problem::{ApiError, ProblemDoc as Problem};
use herald_router::pool::{self, PoolOut, PoolSpec};
use serde::Serialize;

use crate::PlatformState;

/// The routes of this resource.
pub fn router() -> Router<PlatformState> {
    Router::new()
        .route("/pools", get(list))
        .route("/pools/{code}", get(fetch).put(put))
}

/// A list of pools.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = PoolList)]
pub struct List {
    /// The pools, by code.
    pub data: Vec<PoolOut>,
}

/// Every pool, by code.
#[utoipa::path(get, path = "/v1/pools", operation_id = "listPools", tag = "pools", responses((status = 200, description = "OK", body = List)))]
pub(crate) async fn list(State(state): State<PlatformState>) -> Result<Json<List>, ApiError> {
    let pools = pool::list(&state.store).await.map_err(ApiError::internal)?;
    Ok(Json(List {
        data: pools.iter().map(PoolOut::from).collect(),
    }))
}

/// One pool.
#[utoipa::path(get, path = "/v1/pools/{code}", operation_id = "getPool", tag = "pools", params(("code" = String, Path, description = "The pool code")),
    responses((status = 200, description = "OK", body = PoolOut), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid input; every problem is listed", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn fetch(
    State(state): State<PlatformState>,
    Path(code): Path<String>,
) -> Result<Json<PoolOut>, ApiError> {
    let found = pool::get(&state.store, &code).await?;
    Ok(Json(PoolOut::from(&found)))
}

/// Create or change a pool; running routers apply it within a second.
#[utoipa::path(put, path = "/v1/pools/{code}", operation_id = "putPool", tag = "pools", params(("code" = String, Path, description = "The pool code")),
    request_body = PoolSpec,
    responses((status = 200, description = "Changed", body = PoolOut),
              (status = 201, description = "Created", body = PoolOut), (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"), (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid input; every problem is listed", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn put(
    State(state): State<PlatformState>,
    Path(code): Path<String>,
    ApiJson(spec): ApiJson<PoolSpec>,
) -> Result<(StatusCode, Json<PoolOut>), ApiError> {
    let (written, created) = pool::put(&state.store, &code, &spec).await?;
    tracing::info!(pool = %code, concurrency = written.concurrency, "pool written");
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(PoolOut::from(&written))))
}
