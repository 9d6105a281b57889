//! `herald.users.v1.UsersService` over gRPC (`proto/herald/users/v1/users.proto`).
//!
//! Served by the same HTTP server as the REST API (gRPC is HTTP/2 with `application/grpc`
//! bodies), behind the same admin key, sent as `authorization: Bearer <key>` metadata. The
//! handlers call the lookups the REST API calls; [`status_of`] turns their [`ApiError`] into a
//! gRPC status, so a bad id is `INVALID_ARGUMENT` here where it is 422 there.

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use herald_core::admin::{AdminToken, Refusal};
use herald_core::problem::ApiError;
use tonic::{Code, Status};

use crate::UsersState;
use crate::profile::{self, Profile};

/// The generated messages, server and client.
#[allow(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    clippy::all
)]
pub mod proto {
    tonic::include_proto!("herald.users.v1");
}

use proto::users_service_server::{UsersService, UsersServiceServer};

/// The gRPC routes, at the root of the server (`/herald.users.v1.UsersService/…`). With no
/// admin key every call is refused as `UNAUTHENTICATED`.
pub fn routes(state: UsersState, admin_token: Option<AdminToken>) -> Router {
    tonic::service::Routes::new(UsersServiceServer::new(Service { state }))
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(
            admin_token,
            require_admin,
        ))
}

async fn require_admin(
    State(token): State<Option<AdminToken>>,
    request: Request,
    next: Next,
) -> Response {
    let refusal = match token.as_ref().map(|token| token.check(request.headers())) {
        Some(Ok(())) => return next.run(request).await,
        None => "no admin key is configured on this server; set `api.admin_token`",
        Some(Err(Refusal::Invalid)) => "the admin key is not valid",
        Some(Err(Refusal::Missing)) => {
            "send the admin key as `authorization: Bearer <key>` metadata"
        }
    };
    Status::unauthenticated(refusal)
        .into_http::<axum::body::Body>()
        .into_response()
}

/// The gRPC status for an error of the shared lookups. Client errors keep their detail (and
/// every field error); server errors say nothing about internals, as over HTTP, and are
/// logged.
pub fn status_of(err: &ApiError) -> Status {
    let code = match err.status() {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => Code::InvalidArgument,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::CONFLICT => Code::AlreadyExists,
        StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        _ => Code::Internal,
    };
    if code == Code::Internal {
        tracing::error!(error = %err, "a gRPC call failed");
        return Status::internal("internal error; the server log has the details");
    }
    let mut message = err.to_string();
    for field in err.errors() {
        message.push_str(&format!("; {}: {}", field.pointer, field.detail));
    }
    Status::new(code, message)
}

#[derive(Debug)]
struct Service {
    state: UsersState,
}

fn user_of(profile: Profile) -> proto::User {
    proto::User {
        id: profile.id.to_string(),
        email: profile.email,
        username: profile.username,
        display_name: profile.display_name,
        avatar_url: profile.avatar_url,
        version: profile.version,
        created_at: profile.created_at,
        updated_at: profile.updated_at,
    }
}

#[tonic::async_trait]
impl UsersService for Service {
    async fn get_user(
        &self,
        request: tonic::Request<proto::GetUserRequest>,
    ) -> Result<tonic::Response<proto::GetUserResponse>, Status> {
        let id = profile::parse_id(&request.get_ref().id, "id").map_err(|e| status_of(&e))?;
        let found = profile::get(&self.state.store, id)
            .await
            .map_err(|e| status_of(&e))?;
        Ok(tonic::Response::new(proto::GetUserResponse {
            user: Some(user_of(found)),
        }))
    }

    async fn batch_get_users(
        &self,
        request: tonic::Request<proto::BatchGetUsersRequest>,
    ) -> Result<tonic::Response<proto::BatchGetUsersResponse>, Status> {
        let ids: Vec<&str> = request.get_ref().ids.iter().map(String::as_str).collect();
        let batch = profile::batch_get(&self.state.store, &ids, "ids")
            .await
            .map_err(|e| status_of(&e))?;
        Ok(tonic::Response::new(proto::BatchGetUsersResponse {
            users: batch.data.into_iter().map(user_of).collect(),
            missing: batch.missing.iter().map(ToString::to_string).collect(),
        }))
    }
}
