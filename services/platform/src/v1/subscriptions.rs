//! `/v1/subscriptions`: who gets which events, where.
//!
//! - `POST /v1/subscriptions` `{name, event_types, url, pool?, fifo?, max_attempts?, headers?,
//!   secret?}` → 201 with the subscription, including its `whsec_…` signing secret (generated
//!   when not given).
//! - `GET /v1/subscriptions` → `{data: [...]}`, oldest first.
//! - `GET /v1/subscriptions/{id}`, `PATCH` (the fields to change, and `enabled`), `DELETE`
//!   (204; its dispatch jobs go with it).
//! - `POST /v1/subscriptions/{id}/replay` `{since}` → 202 `{queued}`: every event received
//!   since then that the subscription wants is delivered again.
//!
//! Every field is checked and every problem reported at once (422 with pointers); nothing is
//! written unless the whole request is valid. The checks live in
//! [`herald_router::subscription`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use herald_core::ApiJson;
use herald_core::problem::{ApiError, ProblemDoc as Problem};
use herald_router::job;
use herald_router::subscription::{self, NewSubscription, SubscriptionOut, SubscriptionPatch};
use serde::{Deserialize, Serialize};

use crate::PlatformState;

/// The routes of this resource.
pub fn router() -> Router<PlatformState> {
    Router::new()
        .route("/subscriptions", get(list).post(create))
        .route(
            "/subscriptions/{id}",
            get(fetch).patch(update).delete(remove),
        )
        .route("/subscriptions/{id}/replay", post(replay))
}

/// A list of subscriptions.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = SubscriptionList)]
pub struct List {
    /// The subscriptions.
    pub data: Vec<SubscriptionOut>,
}

/// Every subscription, oldest first.
#[utoipa::path(get, path = "/v1/subscriptions", operation_id = "listSubscriptions", tag = "subscriptions",
    responses((status = 200, description = "OK", body = List)))]
pub(crate) async fn list(State(state): State<PlatformState>) -> Result<Json<List>, ApiError> {
    let all = subscription::list(&state.store, false).await?;
    Ok(Json(List {
        data: all.iter().map(SubscriptionOut::from).collect(),
    }))
}

/// Create a subscription; the answer includes its signing secret.
#[utoipa::path(post, path = "/v1/subscriptions", operation_id = "createSubscription", tag = "subscriptions",
    request_body = NewSubscription,
    responses((status = 201, description = "Created", body = SubscriptionOut), (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"), (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid input; every problem is listed", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn create(
    State(state): State<PlatformState>,
    ApiJson(new): ApiJson<NewSubscription>,
) -> Result<(StatusCode, Json<SubscriptionOut>), ApiError> {
    let created = subscription::create(&state.store, new).await?;
    tracing::info!(subscription_id = %created.id, url = %created.url, "subscription created");
    Ok((StatusCode::CREATED, Json(SubscriptionOut::from(&created))))
}

/// One subscription.
#[utoipa::path(get, path = "/v1/subscriptions/{id}", operation_id = "getSubscription", tag = "subscriptions", params(("id" = String, Path, description = "A `sub_…` id")),
    responses((status = 200, description = "OK", body = SubscriptionOut), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid input; every problem is listed", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn fetch(
    State(state): State<PlatformState>,
    Path(id): Path<String>,
) -> Result<Json<SubscriptionOut>, ApiError> {
    let id = subscription::parse_id(&id, "#/path/id")?;
    let found = subscription::get(&state.store, id).await?;
    Ok(Json(SubscriptionOut::from(&found)))
}

/// Change some fields; `enabled: true` turns a disabled subscription back on.
#[utoipa::path(patch, path = "/v1/subscriptions/{id}", operation_id = "updateSubscription", tag = "subscriptions", params(("id" = String, Path, description = "A `sub_…` id")),
    request_body = SubscriptionPatch,
    responses((status = 200, description = "OK", body = SubscriptionOut), (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid input; every problem is listed", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn update(
    State(state): State<PlatformState>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<SubscriptionPatch>,
) -> Result<Json<SubscriptionOut>, ApiError> {
    let id = subscription::parse_id(&id, "#/path/id")?;
    let updated = subscription::update(&state.store, id, patch).await?;
    state.wake_router();
    Ok(Json(SubscriptionOut::from(&updated)))
}

/// Delete a subscription and its dispatch jobs.
#[utoipa::path(delete, path = "/v1/subscriptions/{id}", operation_id = "deleteSubscription", tag = "subscriptions", params(("id" = String, Path, description = "A `sub_…` id")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid input; every problem is listed", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn remove(
    State(state): State<PlatformState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = subscription::parse_id(&id, "#/path/id")?;
    subscription::delete(&state.store, id).await?;
    tracing::info!(subscription_id = %id, "subscription deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// The body of a replay.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// RFC 3339: replay events received at or after this time.
    pub since: String,
}

/// The answer to a replay.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Replayed {
    /// How many deliveries were queued.
    pub queued: u64,
}

/// Deliver again every event received since a time that the subscription wants.
#[utoipa::path(post, path = "/v1/subscriptions/{id}/replay", operation_id = "replaySubscription", tag = "subscriptions", params(("id" = String, Path, description = "A `sub_…` id")),
    request_body = ReplayRequest,
    responses((status = 202, description = "Accepted", body = Replayed), (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"), (status = 404, description = "Not found", body = Problem, content_type = "application/problem+json"), (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"), (status = 422, description = "Invalid input; every problem is listed", body = Problem, content_type = "application/problem+json")))]
pub(crate) async fn replay(
    State(state): State<PlatformState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<ReplayRequest>,
) -> Result<(StatusCode, Json<Replayed>), ApiError> {
    let id = subscription::parse_id(&id, "#/path/id")?;
    let queued = job::replay_subscription(&state.store, id, &request.since).await?;
    tracing::info!(subscription_id = %id, queued, "replay queued");
    state.wake_router();
    Ok((StatusCode::ACCEPTED, Json(Replayed { queued })))
}
