//! The writer: puts events into the outbox through the caller's connection, so they commit or
//! roll back with the caller's own writes.
//!
//! Every event is checked first ([`Event::check`], and the encoded size against
//! [`MAX_EVENT_BYTES`]); one invalid event rejects the whole call and nothing is written. Each
//! event is encoded once, here, and the relay publishes those exact bytes. Rows are inserted
//! in chunks, one statement per chunk, in slice order, so events of one key written in one
//! call keep their order.
//!
//! The writer does not wake the relay and never `NOTIFY`s: a `NOTIFY` takes a global lock at
//! commit and would serialise every producer. A producer in the relay's process calls
//! [`Waker::wake`](crate::Waker::wake) after its commit; otherwise the relay's polling finds
//! the rows.

use herald_broker::BoxFuture;
use herald_core::Event;
use herald_core::envelope::MAX_EVENT_BYTES;
use herald_core::problem::FieldError;

use crate::OutboxError;

/// Rows per insert statement: well under both engines' bind-parameter limits.
const CHUNK: usize = 1000;

/// Writes `events` to the outbox on `conn`, inside the caller's transaction.
///
/// `conn` is a `&mut sqlx::PgConnection` or `&mut sqlx::SqliteConnection`; from a
/// transaction, pass `&mut *tx`. The events are published once the transaction commits, and
/// never if it rolls back.
///
/// # Errors
/// [`OutboxError::Invalid`] with every problem found, when an event is not valid (nothing is
/// written); [`OutboxError::Database`] when the insert fails (the caller's transaction should
/// then be rolled back).
pub async fn write<C>(conn: &mut C, events: &[Event]) -> Result<(), OutboxError>
where
    C: OutboxConnection + ?Sized,
{
    let rows = encode(events)?;
    for chunk in rows.chunks(CHUNK) {
        conn.insert(chunk).await?;
    }
    if !rows.is_empty() {
        tracing::debug!(count = rows.len(), "wrote events to the outbox");
    }
    Ok(())
}

/// A connection [`write()`] can insert through: `sqlx::PgConnection` or
/// `sqlx::SqliteConnection`. Sealed: it cannot be implemented outside this crate.
pub trait OutboxConnection: sealed::Sealed + Send {
    /// Inserts encoded rows, in order, with one statement.
    #[doc(hidden)]
    fn insert<'a>(&'a mut self, rows: &'a [Row]) -> BoxFuture<'a, Result<(), sqlx::Error>>;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for sqlx::PgConnection {}
    impl Sealed for sqlx::SqliteConnection {}
}

/// One event, ready to insert.
#[doc(hidden)]
#[derive(Debug)]
pub struct Row {
    event_id: String,
    partition_key: Option<String>,
    event_type: String,
    source: String,
    correlation_id: Option<String>,
    traceparent: Option<String>,
    payload: Vec<u8>,
}

fn encode(events: &[Event]) -> Result<Vec<Row>, OutboxError> {
    let mut errors = Vec::new();
    let mut rows = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        let problems = event.check();
        if !problems.is_empty() {
            errors.extend(problems.into_iter().map(|problem| {
                FieldError::new(format!("/{index}{}", problem.pointer), problem.detail)
            }));
            continue;
        }
        match serde_json::to_vec(event) {
            Ok(payload) if payload.len() > MAX_EVENT_BYTES => errors.push(FieldError::new(
                format!("/{index}"),
                format!(
                    "the event is {} bytes encoded; the limit is {MAX_EVENT_BYTES}",
                    payload.len()
                ),
            )),
            Ok(payload) => rows.push(Row {
                event_id: event.id.clone(),
                partition_key: event.partitionkey.clone(),
                event_type: event.event_type.clone(),
                source: event.source.clone(),
                correlation_id: event.correlationid.clone(),
                traceparent: event.traceparent.clone(),
                payload,
            }),
            Err(err) => errors.push(FieldError::new(
                format!("/{index}"),
                format!("cannot be encoded as JSON: {err}"),
            )),
        }
    }
    if errors.is_empty() {
        Ok(rows)
    } else {
        Err(OutboxError::Invalid(errors))
    }
}

/// One statement for the whole chunk: arrays unnested in order. `WITH ORDINALITY … ORDER BY`
/// makes the ids follow the slice order.
const PG_INSERT: &str = "INSERT INTO herald_outbox \
    (event_id, partition_key, event_type, source, correlation_id, traceparent, payload) \
    SELECT event_id, partition_key, event_type, source, correlation_id, traceparent, payload \
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[]) \
    WITH ORDINALITY AS e(event_id, partition_key, event_type, source, correlation_id, traceparent, payload, n) \
    ORDER BY n";

impl OutboxConnection for sqlx::PgConnection {
    fn insert<'a>(&'a mut self, rows: &'a [Row]) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let column = |f: fn(&Row) -> Option<&str>| rows.iter().map(f).collect::<Vec<_>>();
            sqlx::query(PG_INSERT)
                .bind(column(|r| Some(&r.event_id)))
                .bind(column(|r| r.partition_key.as_deref()))
                .bind(column(|r| Some(&r.event_type)))
                .bind(column(|r| Some(&r.source)))
                .bind(column(|r| r.correlation_id.as_deref()))
                .bind(column(|r| r.traceparent.as_deref()))
                .bind(
                    rows.iter()
                        .map(|r| r.payload.as_slice())
                        .collect::<Vec<_>>(),
                )
                .execute(self)
                .await?;
            Ok(())
        })
    }
}

impl OutboxConnection for sqlx::SqliteConnection {
    fn insert<'a>(&'a mut self, rows: &'a [Row]) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            // A multi-row VALUES list; rows get ids in list order.
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO herald_outbox \
                 (event_id, partition_key, event_type, source, correlation_id, traceparent, payload) ",
            );
            insert.push_values(rows, |mut values, row| {
                values
                    .push_bind(row.event_id.as_str())
                    .push_bind(row.partition_key.as_deref())
                    .push_bind(row.event_type.as_str())
                    .push_bind(row.source.as_str())
                    .push_bind(row.correlation_id.as_deref())
                    .push_bind(row.traceparent.as_deref())
                    .push_bind(row.payload.as_slice());
            });
            insert.build().execute(self).await?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_invalid_event_with_its_index() {
        let good = Event::new("shop.order.placed", "/shop", &1).unwrap();
        let mut bad_type = good.clone();
        bad_type.event_type = "has space".into();
        let mut bad_key = good.clone();
        bad_key.partitionkey = Some(String::new());
        let Err(OutboxError::Invalid(errors)) = encode(&[good, bad_type, bad_key]) else {
            panic!("expected invalid events");
        };
        let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
        assert_eq!(pointers, ["/1/type", "/2/partitionkey"]);
    }

    #[test]
    fn rejects_an_oversized_event() {
        let big = "x".repeat(MAX_EVENT_BYTES);
        let event = Event::new("shop.order.placed", "/shop", &big).unwrap();
        let Err(OutboxError::Invalid(errors)) = encode(&[event]) else {
            panic!("expected an invalid event");
        };
        assert_eq!(errors[0].pointer, "/0");
        assert!(errors[0].detail.contains("limit"), "{errors:?}");
    }

    #[test]
    fn encodes_the_envelope_once_with_its_headers() {
        let event = Event::new("shop.order.placed", "/shop", &serde_json::json!({"a": 1}))
            .unwrap()
            .with_partition_key("order-1");
        let rows = encode(std::slice::from_ref(&event)).unwrap();
        assert_eq!(rows[0].event_id, event.id);
        assert_eq!(rows[0].partition_key.as_deref(), Some("order-1"));
        assert_eq!(rows[0].payload, serde_json::to_vec(&event).unwrap());
    }
}
