//! The inbox: idempotent consumers. Brokers deliver at least once; the inbox turns that into
//! **one effect per event id** for every effect a consumer makes in its database
//! transaction.
//!
//! A [`Consumer`] receives a topic as one consumer group (its `name`) through
//! [`Broker`](herald_broker::Broker), decodes each delivery's payload as a CloudEvent, and
//! calls a [`Handler`] with the event and a database transaction ([`Tx`], PostgreSQL or
//! SQLite). The schema is [`MIGRATIONS`] (component `inbox`): one table, `herald_inbox`, with
//! the primary key `(consumer, event_id)` and the time each row was processed.
//!
//! ```no_run
//! use herald_broker::BoxFuture;
//! use herald_core::Event;
//! use herald_inbox::{Consumer, ConsumerOptions, Handler, HandlerError, Tx};
//!
//! /// Creates a profile for each registered user, once.
//! struct CreateProfile;
//!
//! impl Handler for CreateProfile {
//!     fn handle<'a>(
//!         &'a self,
//!         event: &'a Event,
//!         tx: Tx<'a>,
//!     ) -> BoxFuture<'a, Result<(), HandlerError>> {
//!         Box::pin(async move {
//!             let Tx::Postgres(conn) = tx else {
//!                 return Err(HandlerError::permanent("profiles live on PostgreSQL"));
//!             };
//!             sqlx::query("INSERT INTO profiles (user_id) VALUES ($1)")
//!                 .bind(&event.subject)
//!                 .execute(conn)
//!                 .await?;
//!             Ok(())
//!         })
//!     }
//! }
//!
//! # async fn example(
//! #     store: herald_store::Store,
//! #     broker: std::sync::Arc<dyn herald_broker::Broker>,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! herald_inbox::migrate(&store).await?;
//! let options = ConsumerOptions::new("users.profiles", "herald.events");
//! let consumer = Consumer::new(store, broker, options, CreateProfile)?;
//! consumer
//!     .run(async {
//!         let _ = tokio::signal::ctrl_c().await;
//!     })
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! # One transaction per delivery
//!
//! For each delivery the runtime begins a transaction and inserts `(consumer, event_id)`
//! with `ON CONFLICT DO NOTHING`:
//!
//! - **One row inserted**: the event is new. The handler runs in the same transaction, then
//!   the transaction commits, and only then is the delivery acked. The inbox record and the
//!   handler's effects commit together or not at all.
//! - **Nothing inserted**: the event was processed before. The transaction is rolled back,
//!   the handler does not run, and the delivery is acked as a duplicate.
//!
//! **A crash between commit and ack** (or an ack that fails, or a visibility timeout that
//! passes just before the ack) leaves a committed record and an unacked message. The broker
//! redelivers it; the insert finds the record, and the redelivery is acked as a duplicate
//! with no second effect. A crash before the commit rolls everything back, and the
//! redelivery processes the event as new.
//!
//! # Races
//!
//! Two instances (or two deliveries of one id in one instance) may process the same event at
//! once. The primary key decides, never a check-then-act read:
//!
//! - **PostgreSQL**: the second `INSERT` waits on the first transaction's uncommitted row.
//!   When the first commits, the second inserts nothing and sees a duplicate; when it rolls
//!   back (the handler failed), the second inserts the row and runs the handler itself.
//! - **SQLite**: every inbox transaction starts with `BEGIN IMMEDIATE`, so they run one at a
//!   time and the second sees the first's committed row. A handler that holds the write lock
//!   longer than the store's busy timeout makes the others fail to begin; they are retried
//!   with a backoff like any failure.
//!
//! The handler must return an error when any of its statements fails: on PostgreSQL a
//! failed statement aborts the transaction, and its commit would silently roll back.
//!
//! # Failures, retries and dead letters
//!
//! A handler error (or a database failure) rolls the transaction back and nacks the delivery
//! with a delay that grows exponentially with its receive count, between `backoff_min` and
//! `backoff_max`, with jitter, recording the error. The consumer subscribes with its
//! `max_deliveries`, so the broker dead-letters the delivery on the nack of its last allowed
//! receive ([`Nacked::DeadLettered`](herald_broker::Nacked)), and releases the next message
//! of its key.
//!
//! A **permanent** failure ([`HandlerError::permanent`], or a payload that is not a valid
//! CloudEvent) is not worth retrying. The `Broker` trait has no "dead-letter now", and the
//! broker dead-letters only at `max_deliveries`; so the runtime nacks it with no delay and
//! remembers its id and error, and each redelivery is nacked again at once, without running
//! the handler, until the broker dead-letters it, which takes moments rather than the whole
//! backoff schedule. (An undecodable payload fails the same way on every receive and needs no
//! memory.) The memory is per process and bounded; an instance that did not see the failure
//! runs the handler again.
//!
//! A handler that panics loses its delivery's task: its transaction rolls back and the broker
//! redelivers the message after the visibility timeout (and dead-letters it after
//! `max_deliveries` receives).
//!
//! # Concurrency and order
//!
//! Up to `concurrency` deliveries are processed at once, each in its own task and
//! transaction; the runtime never receives more than it has free slots for. It keeps no
//! per-key queue of its own: it **relies on the broker's per-key guarantee** that a consumer
//! group is never handed two messages of one key at once (the next is delivered only after
//! the one before is acked or dead-lettered), and it acks only after the commit. So the
//! effects of one key's events commit in publish order, whatever the concurrency, while
//! other keys are processed in parallel; a slow or failing key holds back only itself.
//! Each delivery in flight holds a database connection for its transaction, and the broker
//! needs connections to settle, so keep `concurrency` well below the store's pool size.
//!
//! A handler may run longer than the visibility timeout: while it runs, the delivery's
//! timeout is extended every third of it. If the lease is lost anyway (the process stalled),
//! the broker redelivers the message, and whichever transaction commits second finds a
//! duplicate. On SQLite with the embedded broker, an extension is a write and waits while
//! the handler's transaction holds the database's write lock (so does every competing claim);
//! a handler that outlives its timeout there may see its message redelivered right after its
//! commit, and that redelivery is a duplicate.
//!
//! # Correlation
//!
//! Each handler runs in a `tracing` span `inbox.handle` with `consumer`, `event_id`,
//! `event_type`, `correlation_id` and `traceparent`, and inside
//! [`correlation::scope`](herald_core::correlation::scope) with the event's `correlationid`
//! (a fresh one when it has none or it is not valid). Events the handler makes with
//! [`Event::new`](herald_core::Event::new) and writes to the outbox in its transaction
//! ([`Tx::write_events`]) carry the correlation id on.
//!
//! # Retention
//!
//! Inbox rows are kept for `retention` (7 days by default): long enough that any redelivery
//! finds its record. [`Consumer::run`] deletes older rows every `cleanup_interval`, in
//! batches of `cleanup_batch` ([`Consumer::cleanup`]: one statement per batch, through the
//! `(consumer, processed_at)` index, by primary key on PostgreSQL and by `rowid` on SQLite),
//! so the table holds about a retention window of events and no delete holds locks for long.
//! A duplicate arriving after its record expired is processed again.
//!
//! # Event ids
//!
//! The inbox key is the event's `id` attribute, which Herald makes unique (`evt_` + a
//! UUIDv7) and which is also the broker message id.

mod backoff;
pub mod consumer;
pub mod handler;

use herald_store::migrate::Applied;
use herald_store::{Migration, MigrationSet, Store, StoreError};

pub use consumer::{Consumer, ConsumerOptions, Processed};
pub use handler::{Handler, HandlerError, Tx};

/// The inbox's schema, for `herald migrate` or [`migrate`].
pub const MIGRATIONS: MigrationSet = MigrationSet {
    component: "inbox",
    postgres: &[Migration {
        version: 1,
        name: "create inbox",
        sql: include_str!("../migrations/postgres/0001_inbox.sql"),
    }],
    sqlite: &[Migration {
        version: 1,
        name: "create inbox",
        sql: include_str!("../migrations/sqlite/0001_inbox.sql"),
    }],
};

/// Applies the inbox's schema to `store`.
pub async fn migrate(store: &Store) -> Result<Vec<Applied>, StoreError> {
    herald_store::migrate::migrate(store, &[&MIGRATIONS]).await
}

/// Why the inbox failed.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    /// The consumer's options are not valid; every problem is listed, each with its field.
    #[error("the consumer options are not valid: {0}")]
    Invalid(String),
    /// The broker failed.
    #[error("the broker failed")]
    Broker(#[from] herald_broker::BrokerError),
    /// The database failed.
    #[error("the inbox's database failed")]
    Database(#[from] sqlx::Error),
}
