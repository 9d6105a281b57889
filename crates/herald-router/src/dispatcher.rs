//! [`Dispatcher`]: the inbox handler that turns each event into dispatch jobs.
//!
//! For every event on the topic it stores the event (the body its deliveries carry, and what
//! a replay reads) and one pending job per enabled subscription whose patterns match, all in
//! the consumer's transaction: with the inbox record, so a redelivered event creates no
//! second set of jobs. Subscriptions are read in that transaction, so one created before an
//! event is dispatched gets it.

use herald_broker::BoxFuture;
use herald_core::Event;
use herald_core::id::SubscriptionId;
use herald_inbox::{Handler, HandlerError, Tx};
use uuid::Uuid;

use crate::job::{self, EventRecord};
use crate::pattern::TypePattern;
use crate::sql::on_tx;

/// The consumer group (and inbox consumer name) of the dispatcher.
pub const CONSUMER: &str = "dispatcher";

/// See the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct Dispatcher;

impl Handler for Dispatcher {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        mut tx: Tx<'a>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let rows: Vec<(Uuid, String, bool)> = on_tx!(&mut tx, conn, sql => {
                sqlx::query_as(sql(
                    "SELECT id, event_types, fifo FROM herald_subscriptions WHERE enabled = $1",
                ))
                .bind(true)
                .fetch_all(&mut **conn)
                .await?
            });
            let mut matching = Vec::new();
            for (id, patterns, fifo) in rows {
                let patterns: Vec<String> = serde_json::from_str(&patterns).map_err(|err| {
                    HandlerError::transient(format!(
                        "subscription {id} has unreadable patterns: {err}"
                    ))
                })?;
                let wants = patterns.iter().any(|p| {
                    p.parse::<TypePattern>()
                        .is_ok_and(|p| p.matches(&event.event_type))
                });
                if wants {
                    matching.push((SubscriptionId::from_uuid(id), fifo));
                }
            }
            let body = serde_json::to_string(event).map_err(|err| {
                HandlerError::permanent(format!("cannot encode the event: {err}"))
            })?;
            let record = EventRecord {
                id: &event.id,
                event_type: &event.event_type,
                partition_key: event.partitionkey.as_deref(),
                body: &body,
            };
            job::create(&mut tx, record, &matching).await?;
            if !matching.is_empty() {
                tracing::debug!(
                    event_id = %event.id,
                    jobs = matching.len(),
                    "dispatched"
                );
            }
            Ok(())
        })
    }
}
