//! What a consumer's code implements: [`Handler`], which gets each new event with the
//! transaction it must make its effects in ([`Tx`]), and says how it went ([`HandlerError`]).

use std::fmt;

use herald_broker::BoxFuture;
use herald_core::Event;
use herald_outbox::OutboxError;

pub(crate) use herald_core::error_chain;

/// The consumer's transaction, on whichever engine the store uses. The inbox record of the
/// event is already in it; everything the handler writes through it commits together with
/// that record, or not at all.
#[derive(Debug)]
pub enum Tx<'a> {
    /// A PostgreSQL transaction.
    Postgres(&'a mut sqlx::PgConnection),
    /// A SQLite transaction.
    Sqlite(&'a mut sqlx::SqliteConnection),
}

impl Tx<'_> {
    /// Writes follow-up events to the outbox in this transaction (see
    /// [`herald_outbox::write`]). Events made with [`Event::new`] inside a handler carry the
    /// incoming event's correlation id.
    pub async fn write_events(&mut self, events: &[Event]) -> Result<(), OutboxError> {
        match self {
            Self::Postgres(conn) => herald_outbox::write(&mut **conn, events).await,
            Self::Sqlite(conn) => herald_outbox::write(&mut **conn, events).await,
        }
    }
}

/// A consumer's code: applies one event's effects.
///
/// It is called once per event id and consumer **as far as committed effects go**: an
/// attempt whose transaction rolls back (an error, a crash) is retried, so code with effects
/// outside the transaction (an HTTP call, an email) must tolerate running again.
///
/// Every statement that fails must make the handler return an error: on PostgreSQL a failed
/// statement aborts the transaction, and a handler that swallows that error and returns `Ok`
/// would have its commit silently turned into a rollback.
pub trait Handler: Send + Sync + 'static {
    /// Applies `event` in `tx`. `Ok` commits the effects with the inbox record, and the
    /// delivery is acked. An error rolls everything back; see [`HandlerError`].
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        tx: Tx<'a>,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;

    /// Whether this consumer has anything to do with `event` at all. Events it does not want
    /// (other types on a shared topic) are acked without an inbox record or a transaction.
    /// Every event is wanted unless this is overridden; it must not depend on state that
    /// changes, or a redelivery could be judged differently from the first delivery.
    fn wants(&self, event: &Event) -> bool {
        let _ = event;
        true
    }
}

impl<H: Handler> Handler for std::sync::Arc<H> {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        tx: Tx<'a>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        (**self).handle(event, tx)
    }

    fn wants(&self, event: &Event) -> bool {
        (**self).wants(event)
    }
}

/// Why a handler did not apply an event.
///
/// Any error converts into a *transient* one with `?` (its message is the error and its
/// sources): the delivery is retried after a backoff, and dead-lettered after
/// `max_deliveries` attempts. A [`permanent`](Self::permanent) error (the event can never be
/// applied) sends it to the dead letters at once.
pub struct HandlerError {
    message: String,
    permanent: bool,
}

impl HandlerError {
    /// A failure that may pass: retry later.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: false,
        }
    }

    /// A failure that retrying cannot fix: dead-letter the event now.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            permanent: true,
        }
    }

    /// What went wrong; recorded on the delivery (and in the dead letters).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying is pointless.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("message", &self.message)
            .field("permanent", &self.permanent)
            .finish()
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for HandlerError {
    fn from(err: E) -> Self {
        Self::transient(error_chain(&err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn errors_convert_to_transient_with_their_chain() {
        let err: HandlerError = Outer(std::io::Error::other("inner")).into();
        assert!(!err.is_permanent());
        assert_eq!(err.message(), "outer: inner");
        assert!(HandlerError::permanent("bad").is_permanent());
        assert_eq!(HandlerError::transient("later").to_string(), "later");
    }
}
