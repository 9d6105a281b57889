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
use herald_core::problem::ApiError;
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
#[derive(Debug, Serialize)]
pub struct List {
    /// The pools, by code.
    pub data: Vec<PoolOut>,
}

async fn list(State(state): State<PlatformState>) -> Result<Json<List>, ApiError> {
    let pools = pool::list(&state.store).await.map_err(ApiError::internal)?;
    Ok(Json(List {
        data: pools.iter().map(PoolOut::from).collect(),
    }))
}

async fn fetch(
    State(state): State<PlatformState>,
    Path(code): Path<String>,
) -> Result<Json<PoolOut>, ApiError> {
    let found = pool::get(&state.store, &code).await?;
    Ok(Json(PoolOut::from(&found)))
}

async fn put(
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
