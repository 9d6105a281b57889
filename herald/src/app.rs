//! The HTTP application: every route a role serves, under one set of fallbacks and middleware.
//!
//! - Probes and metrics at the root (`/healthz`, `/readyz`, `/q/live`, `/q/ready`, `/metrics`).
//! - The platform API and the users service under `/v1`, behind the admin key.
//! - gRPC services (HTTP/2) at their own paths, e.g. `/herald.users.v1.UsersService/GetUser`.
//! - The OpenAPI 3.1 description of the HTTP API at `/openapi.json` and a browsable copy at
//!   `/docs` (served from the binary; nothing is fetched from elsewhere). Both are public: the
//!   description holds no data.
//! - Unknown paths and wrong methods answer problem+json (404, 405), bodies over the limit 413.
//! - Everything wears [`herald_telemetry::http::instrument`]: correlation ids, spans, access
//!   logs, metrics, and panics caught as problem+json.

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use herald_core::admin::{AdminToken, require_admin};
use herald_core::problem::{self, ApiError};
use herald_telemetry::Health;
use serde::Serialize;

/// What the application is built from.
#[derive(Debug)]
pub struct AppOptions {
    /// Readiness checks and draining state.
    pub health: Health,
    /// The admin key the platform API requires; `None` refuses every platform request.
    pub admin_token: Option<AdminToken>,
    /// The largest request body accepted.
    pub max_body_bytes: usize,
    /// `dev` or `serve`.
    pub mode: &'static str,
    /// The routes to go under `/v1`, behind the admin key: the platform API's and the users
    /// service's, for the roles that run.
    pub api: Option<Router>,
    /// gRPC services, at the root (they check the admin key themselves and answer in gRPC
    /// statuses).
    pub grpc: Option<Router>,
    /// The OpenAPI description of the routes under `/v1` (see [`openapi`]).
    pub openapi: utoipa::openapi::OpenApi,
}

/// The OpenAPI description of what a server with `parts` serves under `/v1` (each part is a
/// service's own description), with the admin key as the security scheme.
pub fn openapi(parts: Vec<utoipa::openapi::OpenApi>) -> utoipa::openapi::OpenApi {
    use utoipa::OpenApi as _;
    use utoipa::openapi::security::{
        HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
    };

    let mut doc = SystemDoc::openapi();
    for part in parts {
        doc.merge(part);
    }
    doc.info = utoipa::openapi::InfoBuilder::new()
        .title("Herald")
        .version(env!("CARGO_PKG_VERSION"))
        .description(Some(
            "Herald's HTTP API. Every request needs the admin key as a bearer token; every \
             error is application/problem+json (RFC 9457) with a stable `code`.",
        ))
        .build();
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "admin_key",
        SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
    );
    doc.security = Some(vec![SecurityRequirement::new(
        "admin_key",
        Vec::<String>::new(),
    )]);
    doc
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(system))]
struct SystemDoc;

/// Builds the application.
pub fn router(options: AppOptions) -> Router {
    let info = SystemOut {
        version: env!("CARGO_PKG_VERSION"),
        mode: options.mode,
        started_at: now_rfc3339(),
    };
    let mut v1 = Router::new().route("/system", get(system)).with_state(info);
    if let Some(api) = options.api {
        v1 = v1.merge(api);
    }
    let v1 = match options.admin_token {
        Some(token) => v1.layer(axum::middleware::from_fn_with_state(token, require_admin)),
        None => v1.layer(axum::middleware::from_fn(no_admin_key)),
    };
    let mut app = Router::new()
        .merge(herald_telemetry::health::router(options.health))
        .nest("/v1", v1);
    if let Some(grpc) = options.grpc {
        app = app.merge(grpc);
    }
    app =
        app.merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", options.openapi));
    let app = app
        .fallback(problem::route_not_found)
        .method_not_allowed_fallback(problem::method_not_allowed)
        .layer(DefaultBodyLimit::max(options.max_body_bytes));
    herald_telemetry::http::instrument(app)
}

async fn no_admin_key(_request: Request, _next: Next) -> ApiError {
    ApiError::unauthorized("no admin key is configured on this server; set `api.admin_token`")
}

/// `GET /v1/system`: what is running.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = System)]
struct SystemOut {
    version: &'static str,
    mode: &'static str,
    started_at: String,
}

/// The server's version, mode (`dev` or `serve`) and start time.
#[utoipa::path(get, path = "/v1/system", operation_id = "getSystem", tag = "system", responses((status = 200, description = "OK", body = SystemOut)))]
async fn system(State(info): State<SystemOut>) -> impl IntoResponse {
    Json(info)
}

fn now_rfc3339() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| {
            time::OffsetDateTime::from_unix_timestamp(since.as_secs() as i64)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default()
        })
        .unwrap_or_default()
}
