//! The users service: user profiles, projected from identity's events and served over HTTP
//! and gRPC.
//!
//! - [`Projector`] is an inbox [`Handler`](herald_inbox::Handler): it consumes
//!   `identity.user.registered` and `identity.user.updated` (the contract is
//!   [`profile::UserSnapshot`]) and upserts the profile in the service's own table,
//!   `users_profiles` ([`MIGRATIONS`]). It never reads identity's tables: everything it knows
//!   came in an event. Each event carries the user's whole state and its version, so a stale
//!   or replayed event changes nothing.
//! - [`router`]: `GET /v1/users/{id}` and `GET /v1/users?ids=usr_a,usr_b` (see [`v1::users`]).
//! - [`grpc::routes`]: `herald.users.v1.UsersService` (`GetUser`, `BatchGetUsers`) on the same
//!   port, over HTTP/2.
//!
//! Both front doors call the same lookups ([`profile::get`], [`profile::batch_get`]), so they
//! answer alike and fail alike.

pub mod grpc;
pub mod profile;
pub mod projector;
pub mod v1;

use axum::Router;
use herald_store::{Migration, MigrationSet, Store};

pub use projector::{CONSUMER, Projector};

/// The users service's OpenAPI description (its HTTP paths under `/v1`).
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    paths(v1::users::one, v1::users::batch),
    tags((name = "users", description = "User profiles, projected from identity's events"))
)]
pub struct ApiDoc;

/// What the service's handlers share.
#[derive(Debug, Clone)]
pub struct UsersState {
    /// The database holding `users_profiles`.
    pub store: Store,
}

/// The HTTP routes (to be nested under `/v1`, behind the admin key).
pub fn router(state: UsersState) -> Router {
    v1::users::router().with_state(state)
}

/// The users service's tables.
pub const MIGRATIONS: MigrationSet = MigrationSet {
    component: "users",
    postgres: &[Migration {
        version: 1,
        name: "create users_profiles",
        sql: include_str!("../migrations/postgres/0001_profiles.sql"),
    }],
    sqlite: &[Migration {
        version: 1,
        name: "create users_profiles",
        sql: include_str!("../migrations/sqlite/0001_profiles.sql"),
    }],
};
