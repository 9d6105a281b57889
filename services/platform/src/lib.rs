//! The platform API: the HTTP resources operators and producers use under `/v1`.
//!
//! One resource per file under [`v1`], each exporting its `router()`; [`router`] merges them.
//! The caller (the `herald` binary) puts the whole API behind the admin key and the shared
//! middleware. Today: events. Subscriptions, pools and dispatch jobs follow.
//!
//! The API's tables are its own ([`MIGRATIONS`]); it writes events to the outbox in the same
//! transaction, so an accepted event is published exactly when it is committed.

pub mod v1;

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
}

impl std::fmt::Debug for PlatformState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformState")
            .field("store", &self.store.backend())
            .field("wake", &self.wake.is_some())
            .finish()
    }
}

/// The `/v1` routes (to be nested under `/v1`).
pub fn router(state: PlatformState) -> Router {
    v1::events::router().with_state(state)
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
