//! `/v1/users`: profiles by id.
//!
//! - `GET /v1/users/{id}` → 200 with the profile, 404 if there is none, 422 for an id that is
//!   not a `usr_…` id.
//! - `GET /v1/users?ids=usr_a,usr_b` → 200 `{data: [profiles in request order], missing:
//!   [ids not found]}`; 1 to [`MAX_BATCH`](crate::profile::MAX_BATCH) ids, every malformed
//!   one reported at `#/query/ids/<index>`.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use herald_core::problem::{ApiError, ProblemDoc as Problem};
use serde::Deserialize;

use crate::UsersState;
use crate::profile::{self, Batch, Profile};

/// The routes of this resource.
pub fn router() -> Router<UsersState> {
    Router::new()
        .route("/users", get(batch))
        .route("/users/{id}", get(one))
}

/// One user's profile.
#[utoipa::path(get, path = "/v1/users/{id}", operation_id = "getUser", tag = "users",
    params(("id" = String, Path, description = "A `usr_…` id")),
    responses(
        (status = 200, description = "OK", body = Profile),
        (status = 404, description = "No such user", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not a user id", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn one(
    State(state): State<UsersState>,
    Path(id): Path<String>,
) -> Result<Json<Profile>, ApiError> {
    let id = profile::parse_id(&id, "#/path/id")?;
    profile::get(&state.store, id).await.map(Json)
}

/// The query of the batch lookup.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BatchQuery {
    /// Comma-separated user ids.
    ids: String,
}

/// Up to 100 profiles by id, in request order, and the ids not found.
#[utoipa::path(get, path = "/v1/users", operation_id = "batchGetUsers", tag = "users",
    params(("ids" = String, Query, description = "Comma-separated `usr_…` ids (1 to 100)")),
    responses(
        (status = 200, description = "OK", body = Batch),
        (status = 400, description = "No `ids`", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad ids; each is listed", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn batch(
    State(state): State<UsersState>,
    query: Result<Query<BatchQuery>, QueryRejection>,
) -> Result<Json<Batch>, ApiError> {
    let Query(query) = query.map_err(|rejection| {
        ApiError::bad_request(
            "invalid_query",
            format!(
                "{}; look users up with `?ids=usr_…,usr_…`",
                rejection.body_text()
            ),
        )
    })?;
    let ids: Vec<&str> = query
        .ids
        .split(',')
        .filter(|id| !id.trim().is_empty())
        .collect();
    profile::batch_get(&state.store, &ids, "#/query/ids")
        .await
        .map(Json)
}
