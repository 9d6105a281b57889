//! The platform API: the HTTP resources operators and producers use under `/v1`.
//!
//! One resource per file under [`v1`], each exporting its `router()`; [`router`] merges them.
//! The caller (the `herald` binary) puts the whole API behind the admin key and the shared
//! middleware: events, subscriptions, pools and dispatch jobs. The webhook resources keep
//! their rules in `herald-router`, which also delivers.
//!
//! The API's tables are its own ([`MIGRATIONS`]); it writes events to the outbox in the same
//! transaction, so an accepted event is published exactly when it is committed.

pub mod v1;

/// The platform API's OpenAPI description (paths under `/v1`).
#[derive(Debug, utoipa::OpenApi)]
#[openapi(
    paths(
        v1::events::create, v1::events::fetch,
        v1::subscriptions::list, v1::subscriptions::create, v1::subscriptions::fetch,
        v1::subscriptions::update, v1::subscriptions::remove, v1::subscriptions::replay,
        v1::pools::list, v1::pools::fetch, v1::pools::put,
        v1::dispatch_jobs::list, v1::dispatch_jobs::fetch, v1::dispatch_jobs::retry,
    ),
    tags(
        (name = "events", description = "Publish events and read them back"),
        (name = "subscriptions", description = "Webhook endpoints and the events they get"),
        (name = "pools", description = "Delivery concurrency and rate limits"),
        (name = "dispatch-jobs", description = "Every delivery, its attempts, and the dead letters"),
    )
)]
pub struct ApiDoc;

use axum::Router;
use herald_store::{Migration, MigrationSet, Store};

/// Wakes the relay after a commit, when it runs in the same process.
pub type Wake = std::sync::Arc<dyn Fn() + Send + Sync>;

/// What the API's handlers share.
#[derive(Clone)]
pub struct PlatformState {
    /// The database.
    pub store: Store,
    /// Called after events are committed; `None` when the relay runs elsewhere.
    pub wake: Option<Wake>,
    /// Called when deliveries became due (a retry, a replay, a re-enabled subscription);
    /// `None` when the router runs elsewhere (it finds them by polling).
    pub wake_router: Option<Wake>,
}

impl PlatformState {
    /// Wakes the router, if it runs in this process.
    pub fn wake_router(&self) {
        if let Some(wake) = &self.wake_router {
            wake();
        }
    }
}

impl std::fmt::Debug for PlatformState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformState")
            .field("store", &self.store.backend())
            .field("wake", &self.wake.is_some())
            .field("wake_router", &self.wake_router.is_some())
            .finish()
    }
}

/// The `/v1` routes (to be nested under `/v1`).
pub fn router(state: PlatformState) -> Router {
    v1::events::router()
        .merge(v1::subscriptions::router())
        .merge(v1::pools::router())
        .merge(v1::dispatch_jobs::router())
        .with_state(state)
}

/// The platform API's tables.
pub const MIGRATIONS: MigrationSet = MigrationSet {
    component: "platform",
    postgres: &[Migration {
        version: 1,
        name: "create events",
        sql: include_str!("../migrations/postgres/0001_events.sql"),
    }],
    sqlite: &[Migration {
        version: 1,
        name: "create events",
        sql: include_str!("../migrations/sqlite/0001_events.sql"),
    }],
};
