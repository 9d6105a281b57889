//! The transactional outbox: a service writes events in its own database transaction, and the
//! relay publishes them to the broker once, and only once, that transaction has committed.
//!
//! Two halves:
//!
//! - [`write()`] (in [`writer`]) inserts events into the `herald_outbox` table through the
//!   caller's connection, inside the caller's transaction. A rolled-back transaction leaves
//!   nothing behind; a committed one is guaranteed to reach the broker.
//! - [`Relay`] (in [`relay`], whose docs explain the claim, ordering, failures and crash
//!   safety) moves committed rows to a [`Broker`](herald_broker::Broker) topic and deletes them
//!   once the broker has confirmed them.
//!
//! The schema is [`MIGRATIONS`], for PostgreSQL and SQLite; `herald migrate` applies it, and a
//! library user can call [`migrate`].
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool, relay: herald_outbox::Relay) -> anyhow::Result<()> {
//! use herald_core::Event;
//!
//! let event = Event::new("shop.order.placed", "/shop", &serde_json::json!({"order": 7}))?
//!     .with_partition_key("order-7");
//! let waker = relay.waker();
//! let mut tx = pool.begin().await?;
//! // … the service's own writes …
//! herald_outbox::write(&mut *tx, &[event]).await?;
//! tx.commit().await?;
//! waker.wake(); // the relay runs in this process: publish now rather than at its next poll
//! # Ok(())
//! # }
//! ```
//!
//! What the relay puts on the broker for each event: [`Message::id`](herald_broker::Message)
//! is the event id, `key` its partition key, `payload` the event in CloudEvents structured JSON
//! (the bytes the writer encoded), and the headers in [`header`].

mod backoff;
pub mod relay;
pub mod writer;

use herald_core::problem::FieldError;
use herald_store::migrate::Applied;
use herald_store::{Migration, MigrationSet, Store, StoreError};

pub use relay::{Relay, RelayOptions, Waker};
pub use writer::{OutboxConnection, write};

/// The names of the headers the relay puts on each broker message. Each is present only when
/// the event has the attribute.
pub mod header {
    /// The event's CloudEvents `type`.
    pub const TYPE: &str = "type";
    /// The event's CloudEvents `source`.
    pub const SOURCE: &str = "source";
    /// The correlation id of the request that caused the event.
    pub const CORRELATION_ID: &str = "correlationid";
    /// The W3C trace context of the producer.
    pub const TRACEPARENT: &str = "traceparent";
}

/// The outbox's schema, for `herald migrate` or [`migrate`].
pub const MIGRATIONS: MigrationSet = MigrationSet {
    component: "outbox",
    postgres: &[
        Migration {
            version: 1,
            name: "create outbox",
            sql: include_str!("../migrations/postgres/0001_outbox.sql"),
        },
        Migration {
            version: 2,
            name: "partition the outbox by generation",
            sql: include_str!("../migrations/postgres/0002_generations.sql"),
        },
    ],
    sqlite: &[Migration {
        version: 1,
        name: "create outbox",
        sql: include_str!("../migrations/sqlite/0001_outbox.sql"),
    }],
};

/// Applies the outbox's schema to `store` (what `herald migrate` does for every component).
pub async fn migrate(store: &Store) -> Result<Vec<Applied>, StoreError> {
    herald_store::migrate::migrate(store, &[&MIGRATIONS]).await
}

/// Why the outbox failed.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// Some events are not valid; nothing was written. Each error's pointer starts with the
    /// event's index in the slice given to [`write()`] (`/0/type`).
    #[error("the events are not valid: {}", describe(.0))]
    Invalid(Vec<FieldError>),
    /// The database failed.
    #[error("the outbox's database failed")]
    Database(#[from] sqlx::Error),
}

fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| format!("{} {}", e.pointer, e.detail))
        .collect::<Vec<_>>()
        .join("; ")
}
