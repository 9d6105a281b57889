//! The consumer runtime: receives deliveries from a [`Broker`] subscription, processes each
//! in an inbox transaction (see the [crate docs](crate) for the design), settles it, and
//! keeps the inbox table trimmed.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use herald_broker::{Broker, BrokerError, Delivery, Message, Nacked, SubscribeOptions};
use herald_core::Event;
use herald_core::correlation::{self, CorrelationId};
use herald_outbox::header;
use herald_store::Store;
use herald_telemetry::metrics::{ConsumerLabels, InboxLabels, metrics};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument as _;

use crate::InboxError;
use crate::backoff::Backoff;
use crate::handler::{Handler, Tx, error_chain};

/// The most permanently failed message ids one consumer remembers while it hurries them to
/// the dead letters.
const MAX_POISONED: usize = 10_000;
/// The most cleanup batches one periodic cleanup runs.
const MAX_CLEANUP_ROUNDS: usize = 1_000;

/// How a [`Consumer`] runs. [`ConsumerOptions::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// The consumer's name: its broker consumer group, and its namespace in the inbox table.
    /// Instances with the same name share the work and the record of processed events.
    pub name: String,
    /// The broker topic to consume.
    pub topic: String,
    /// The most deliveries processed at once (default 8).
    pub concurrency: usize,
    /// Receives after which a delivery that was never acked is dead-lettered (default 10).
    /// Given to the broker with the subscription, so the broker and the runtime agree on it.
    pub max_deliveries: u32,
    /// How long a received delivery stays invisible to other instances (default 30 s). It is
    /// extended every third of it while the handler runs, so handlers may take longer.
    pub visibility_timeout: Duration,
    /// The retry delay after a first failed attempt (default 1 s).
    pub backoff_min: Duration,
    /// The longest retry delay (default 5 min).
    pub backoff_max: Duration,
    /// The most deliveries asked for in one receive (default 16). Those beyond the free
    /// slots wait in memory for one, so keep it small next to the visibility timeout.
    pub batch_size: usize,
    /// How long one receive waits for messages (default 1 s). It also bounds how long
    /// [`Consumer::run`] takes to notice its shutdown while idle.
    pub receive_wait: Duration,
    /// How long [`Consumer::run`] waits for in-flight deliveries at shutdown (default 30 s).
    pub shutdown_timeout: Duration,
    /// How long a processed event id is remembered (default 7 days). A duplicate that
    /// arrives later than this is processed again, so keep it well above the longest time a
    /// message can spend in the broker.
    pub retention: Duration,
    /// How often [`Consumer::run`] deletes expired inbox rows (default 1 hour).
    pub cleanup_interval: Duration,
    /// Rows deleted per cleanup statement (default 1000).
    pub cleanup_batch: usize,
}

impl ConsumerOptions {
    /// The defaults, for consumer `name` on `topic`.
    pub fn new(name: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            topic: topic.into(),
            concurrency: 8,
            max_deliveries: 10,
            visibility_timeout: Duration::from_secs(30),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            batch_size: 16,
            receive_wait: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 60 * 60),
            cleanup_interval: Duration::from_secs(60 * 60),
            cleanup_batch: 1_000,
        }
    }

    /// Every problem with the options, each naming its field.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, problem: &str| {
            if !ok {
                problems.push(problem.to_owned());
            }
        };
        check(!self.name.is_empty(), "name: must not be empty");
        check(!self.topic.is_empty(), "topic: must not be empty");
        check(self.concurrency >= 1, "concurrency: must be at least 1");
        check(
            self.max_deliveries >= 1,
            "max_deliveries: must be at least 1",
        );
        check(
            self.visibility_timeout >= Duration::from_millis(3),
            "visibility_timeout: must be at least 3 ms",
        );
        check(
            self.backoff_min <= self.backoff_max,
            "backoff_min: must not exceed backoff_max",
        );
        check(self.batch_size >= 1, "batch_size: must be at least 1");
        check(
            !self.receive_wait.is_zero(),
            "receive_wait: must be more than 0",
        );
        check(
            !self.cleanup_interval.is_zero(),
            "cleanup_interval: must be more than 0",
        );
        check(self.cleanup_batch >= 1, "cleanup_batch: must be at least 1");
        problems
    }
}

/// What processing one message (without settling it) came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed {
    /// The handler ran and its effects committed with the inbox record.
    Done,
    /// The event was already recorded for this consumer: the handler did not run.
    Duplicate,
    /// The handler does not want this event ([`Handler::wants`](crate::Handler::wants)):
    /// nothing was recorded and the handler did not run.
    Skipped,
    /// Nothing was committed.
    Failed {
        /// Why: the handler's error, an undecodable payload, or a database failure.
        error: String,
        /// Retrying cannot help: the delivery goes to the dead letters at once.
        permanent: bool,
    },
}

/// An idempotent consumer: one handler, one consumer group, on one store.
///
/// Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Consumer {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    broker: Arc<dyn Broker>,
    handler: Arc<dyn Handler>,
    options: ConsumerOptions,
    backoff: Backoff,
    /// Message ids whose handler failed permanently, with the error, until they reach the
    /// dead letters.
    poisoned: Mutex<HashMap<String, String>>,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("store", &self.inner.store.backend())
            .field("broker", &self.inner.broker.kind())
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// A consumer that runs `handler` for each event of `options.topic`. The store's schema
    /// must include [`MIGRATIONS`](crate::MIGRATIONS).
    ///
    /// # Errors
    /// [`InboxError::Invalid`] listing every problem with `options`.
    pub fn new(
        store: Store,
        broker: Arc<dyn Broker>,
        options: ConsumerOptions,
        handler: impl Handler,
    ) -> Result<Self, InboxError> {
        let problems = options.problems();
        if !problems.is_empty() {
            return Err(InboxError::Invalid(problems.join("; ")));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                broker,
                handler: Arc::new(handler),
                backoff: Backoff {
                    min: options.backoff_min,
                    max: options.backoff_max,
                },
                options,
                poisoned: Mutex::default(),
            }),
        })
    }

    /// The options it runs with.
    pub fn options(&self) -> &ConsumerOptions {
        &self.inner.options
    }

    /// Consumes until `shutdown` completes, then stops receiving, waits up to
    /// `shutdown_timeout` for the deliveries in flight to be processed and settled, and
    /// returns. Deliveries still unfinished then are abandoned: their transactions roll back
    /// and the broker redelivers them after the visibility timeout.
    ///
    /// Broker and database errors do not stop it: they are logged, and it retries after a
    /// backoff. It also deletes expired inbox rows every `cleanup_interval`.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), InboxError> {
        let options = &self.inner.options;
        tokio::pin!(shutdown);
        let Some(mut subscription) = self.subscribe(shutdown.as_mut()).await else {
            return Ok(());
        };
        tracing::info!(
            consumer = %options.name,
            topic = %options.topic,
            broker = self.inner.broker.kind(),
            "inbox consumer started"
        );
        let slots = Arc::new(Semaphore::new(options.concurrency));
        let mut tasks = JoinSet::new();
        let mut cleanup: Option<JoinHandle<()>> = None;
        let mut next_cleanup = Instant::now();
        let mut failures = 0u32;
        loop {
            while let Some(finished) = tasks.try_join_next() {
                report_task(finished);
            }
            if Instant::now() >= next_cleanup && cleanup.as_ref().is_none_or(|c| c.is_finished()) {
                next_cleanup = Instant::now() + options.cleanup_interval;
                let consumer = self.clone();
                cleanup = Some(tokio::spawn(
                    async move { consumer.cleanup_expired().await },
                ));
            }
            // Wait for a free slot: never hold more deliveries than can be processed.
            let first = tokio::select! {
                biased;
                () = shutdown.as_mut() => break,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
            };
            // Claim a whole batch, not just as many as there are free slots: claims are write
            // transactions, and claiming one or two at a time made them the bottleneck. The
            // deliveries beyond the free slots wait for one in their task (the semaphore is
            // fair, so this loop's next `acquire` queues behind them): at most `batch_size`
            // deliveries are ever held without a slot.
            let max = options.batch_size;
            // A receive is not interrupted (it may have claimed messages already); at
            // shutdown it is allowed to finish, and what it returns is processed.
            let receive = subscription.receive(max, options.receive_wait);
            tokio::pin!(receive);
            let (received, stopping) = tokio::select! {
                biased;
                received = receive.as_mut() => (received, false),
                () = shutdown.as_mut() => (receive.await, true),
            };
            match received {
                Ok(deliveries) => {
                    failures = 0;
                    let mut first = Some(first);
                    for delivery in deliveries {
                        let held = first.take();
                        let slots = slots.clone();
                        let consumer = self.clone();
                        tasks.spawn(async move {
                            let slot = match held {
                                Some(slot) => slot,
                                None => match slots.acquire_owned().await {
                                    Ok(slot) => slot,
                                    // Closed only when the consumer is gone; the delivery
                                    // comes back after its visibility timeout.
                                    Err(_) => return,
                                },
                            };
                            consumer.process(delivery).await;
                            drop(slot);
                        });
                    }
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let wait = self.inner.backoff.delay(failures);
                    tracing::warn!(
                        consumer = %options.name,
                        error = %error_chain(&err),
                        retry_in = ?wait,
                        "inbox consumer could not receive"
                    );
                    if !stopping {
                        tokio::select! {
                            biased;
                            () = shutdown.as_mut() => break,
                            () = tokio::time::sleep(wait) => {}
                        }
                    }
                }
            }
            if stopping {
                break;
            }
        }

        if let Some(cleanup) = cleanup {
            cleanup.abort();
        }
        let drain = async {
            while let Some(finished) = tasks.join_next().await {
                report_task(finished);
            }
        };
        if tokio::time::timeout(options.shutdown_timeout, drain)
            .await
            .is_err()
        {
            tracing::warn!(
                consumer = %options.name,
                abandoned = tasks.len(),
                "inbox consumer stopped with deliveries unfinished; they will be redelivered"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        // Give back the partitions or messages held now, while the store is still open.
        subscription.close().await;
        tracing::info!(consumer = %options.name, "inbox consumer stopped");
        Ok(())
    }

    /// Joins the consumer group, retrying until it works or `shutdown` completes (`None`).
    async fn subscribe(
        &self,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Option<Box<dyn herald_broker::Subscription>> {
        let options = &self.inner.options;
        let mut failures = 0u32;
        loop {
            let subscribe = self.inner.broker.subscribe(
                &options.topic,
                &options.name,
                SubscribeOptions {
                    visibility_timeout: options.visibility_timeout,
                    max_deliveries: options.max_deliveries,
                },
            );
            let result = tokio::select! {
                biased;
                () = shutdown.as_mut() => return None,
                result = subscribe => result,
            };
            match result {
                Ok(subscription) => return Some(subscription),
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let wait = self.inner.backoff.delay(failures);
                    tracing::warn!(
                        consumer = %options.name,
                        error = %error_chain(&err),
                        retry_in = ?wait,
                        "inbox consumer could not subscribe"
                    );
                    tokio::select! {
                        biased;
                        () = shutdown.as_mut() => return None,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Processes one delivery and settles it: ack when done or a duplicate, nack with a
    /// backoff on failure (dead-letter at once when the failure is permanent). The
    /// visibility timeout is extended while it runs. [`Consumer::run`] calls this for each
    /// delivery; call it yourself only to drive a subscription of your own.
    pub async fn process(&self, delivery: Delivery) {
        let remembered = self
            .inner
            .poisoned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&delivery.message.id)
            .cloned();
        let outcome = match remembered {
            // It failed permanently here before: hurry it on to the dead letters.
            Some(error) => Processed::Failed {
                error,
                permanent: true,
            },
            None => {
                self.keep_alive(&delivery, self.handle_message(&delivery.message))
                    .await
            }
        };
        self.settle(delivery, outcome).await;
    }

    /// Processes `message` in an inbox transaction without settling it: records its event
    /// id, runs the handler and commits (or finds a duplicate, or rolls back on failure).
    /// The caller acks or nacks afterwards; [`Consumer::process`] does both.
    pub async fn handle_message(&self, message: &Message) -> Processed {
        let event = match decode(message) {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(
                    consumer = %self.inner.options.name,
                    message_id = %message.id,
                    error = %error,
                    "cannot decode a delivery; it goes to the dead letters"
                );
                return Processed::Failed {
                    error,
                    permanent: true,
                };
            }
        };
        if !self.inner.handler.wants(&event) {
            return Processed::Skipped;
        }
        let correlation_id = event
            .correlationid
            .as_deref()
            .or_else(|| message.header(header::CORRELATION_ID))
            .and_then(CorrelationId::parse)
            .unwrap_or_else(CorrelationId::generate);
        let span = tracing::info_span!(
            "inbox.handle",
            consumer = %self.inner.options.name,
            event_id = %event.id,
            event_type = %event.event_type,
            correlation_id = %correlation_id,
            traceparent = tracing::field::Empty,
        );
        if let Some(traceparent) = &event.traceparent {
            span.record("traceparent", traceparent.as_str());
        }
        correlation::scope(correlation_id, self.apply(&event).instrument(span)).await
    }

    /// The inbox transaction, on the store's engine.
    async fn apply(&self, event: &Event) -> Processed {
        let result = match &self.inner.store {
            Store::Postgres(pool) => self.apply_postgres(pool, event).await,
            Store::Sqlite(pool) => self.apply_sqlite(pool, event).await,
        };
        match result {
            Ok(processed) => processed,
            Err(err) => Processed::Failed {
                error: format!("the inbox's database failed: {}", error_chain(&err)),
                permanent: false,
            },
        }
    }

    async fn apply_postgres(
        &self,
        pool: &sqlx::PgPool,
        event: &Event,
    ) -> Result<Processed, sqlx::Error> {
        let mut tx = pool.begin().await?;
        // Waits while another transaction holds an uncommitted row for this id: if that one
        // commits, this inserts nothing; if it rolls back, this inserts the row.
        let inserted = sqlx::query(
            "INSERT INTO herald_inbox (consumer, event_id) VALUES ($1, $2) \
             ON CONFLICT (consumer, event_id) DO NOTHING",
        )
        .bind(&self.inner.options.name)
        .bind(&event.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(Processed::Duplicate);
        }
        let result = self.run_handler(event, Tx::Postgres(&mut tx)).await;
        finish(result, tx).await
    }

    async fn apply_sqlite(
        &self,
        pool: &sqlx::SqlitePool,
        event: &Event,
    ) -> Result<Processed, sqlx::Error> {
        // IMMEDIATE: take the write lock first, so concurrent consumers queue on it rather
        // than fail to upgrade a read transaction.
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let inserted = sqlx::query(
            "INSERT INTO herald_inbox (consumer, event_id) VALUES (?1, ?2) \
             ON CONFLICT (consumer, event_id) DO NOTHING",
        )
        .bind(&self.inner.options.name)
        .bind(&event.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            tx.rollback().await?;
            return Ok(Processed::Duplicate);
        }
        let result = self.run_handler(event, Tx::Sqlite(&mut tx)).await;
        finish(result, tx).await
    }

    /// Runs the handler, timing it.
    async fn run_handler(
        &self,
        event: &Event,
        tx: Tx<'_>,
    ) -> Result<(), crate::handler::HandlerError> {
        let started = Instant::now();
        let result = self.inner.handler.handle(event, tx).await;
        metrics()
            .inbox_handler_duration
            .get_or_create(&ConsumerLabels {
                consumer: self.inner.options.name.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Runs `work`, extending the delivery's visibility timeout every third of it until
    /// `work` is done.
    async fn keep_alive<F: Future>(&self, delivery: &Delivery, work: F) -> F::Output {
        let timeout = self.inner.options.visibility_timeout;
        let period = (timeout / 3).max(Duration::from_millis(1));
        let extend = async {
            loop {
                tokio::time::sleep(period).await;
                match delivery.extend(timeout).await {
                    Ok(()) => {}
                    Err(BrokerError::LeaseLost) => {
                        tracing::warn!(
                            consumer = %self.inner.options.name,
                            message_id = %delivery.message.id,
                            "lost a delivery while processing it; its redelivery will be a duplicate if this commits"
                        );
                        break;
                    }
                    Err(err) => tracing::warn!(
                        consumer = %self.inner.options.name,
                        message_id = %delivery.message.id,
                        error = %error_chain(&err),
                        "cannot extend a delivery's visibility timeout"
                    ),
                }
            }
        };
        tokio::pin!(work);
        tokio::select! {
            output = work.as_mut() => return output,
            () = extend => {}
        }
        work.await
    }

    /// Acks or nacks a processed delivery, and counts it.
    async fn settle(&self, delivery: Delivery, outcome: Processed) {
        let name = &self.inner.options.name;
        let message_id = delivery.message.id.clone();
        let receive_count = delivery.receive_count;
        let counted = match outcome {
            Processed::Done | Processed::Duplicate | Processed::Skipped => {
                let label = match outcome {
                    Processed::Done => "done",
                    Processed::Duplicate => "duplicate",
                    _ => "skipped",
                };
                if let Err(err) = delivery.ack().await {
                    // Committed: a redelivery will be recognised as a duplicate.
                    tracing::warn!(
                        consumer = %name,
                        message_id = %message_id,
                        error = %error_chain(&err),
                        "cannot ack a processed delivery; its redelivery will be a duplicate"
                    );
                }
                label
            }
            Processed::Failed { error, permanent } => {
                let delay = if permanent {
                    self.remember_poisoned(&message_id, &error);
                    Duration::ZERO
                } else {
                    self.inner.backoff.delay(receive_count)
                };
                tracing::warn!(
                    consumer = %name,
                    message_id = %message_id,
                    receive_count,
                    permanent,
                    error = %error,
                    "an event was not processed"
                );
                match delivery.nack(delay, &error).await {
                    Ok(Nacked::Retry) => "retry",
                    Ok(Nacked::DeadLettered) => {
                        self.forget_poisoned(&message_id);
                        tracing::error!(
                            consumer = %name,
                            message_id = %message_id,
                            receive_count,
                            error = %error,
                            "an event was dead-lettered"
                        );
                        "dead"
                    }
                    Err(err) => {
                        tracing::warn!(
                            consumer = %name,
                            message_id = %message_id,
                            error = %error_chain(&err),
                            "cannot nack a delivery; it is redelivered after its visibility timeout"
                        );
                        "retry"
                    }
                }
            }
        };
        metrics()
            .inbox_processed
            .get_or_create(&InboxLabels {
                consumer: name.clone(),
                outcome: counted.to_owned(),
            })
            .inc();
    }

    fn remember_poisoned(&self, message_id: &str, error: &str) {
        let mut poisoned = self
            .inner
            .poisoned
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if poisoned.len() < MAX_POISONED {
            poisoned.insert(message_id.to_owned(), error.to_owned());
        }
    }

    fn forget_poisoned(&self, message_id: &str) {
        self.inner
            .poisoned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(message_id);
    }

    /// Deletes up to `batch` of this consumer's inbox rows processed more than `older_than`
    /// ago, oldest first, and returns how many it deleted. Call it again while it returns
    /// `batch` to delete everything that expired; each call is one short statement.
    pub async fn cleanup(&self, older_than: Duration, batch: usize) -> Result<usize, InboxError> {
        let limit = i64::try_from(batch).unwrap_or(i64::MAX);
        let name = &self.inner.options.name;
        let deleted = match &self.inner.store {
            Store::Postgres(pool) => sqlx::query(
                "DELETE FROM herald_inbox WHERE consumer = $1 AND event_id IN ( \
                     SELECT event_id FROM herald_inbox \
                     WHERE consumer = $1 AND processed_at < now() - make_interval(secs => $2) \
                     ORDER BY processed_at LIMIT $3)",
            )
            .bind(name)
            .bind(older_than.as_secs_f64())
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected(),
            Store::Sqlite(pool) => sqlx::query(
                "DELETE FROM herald_inbox WHERE rowid IN ( \
                     SELECT rowid FROM herald_inbox \
                     WHERE consumer = ?1 AND processed_at < \
                         CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - ?2 \
                     ORDER BY processed_at LIMIT ?3)",
            )
            .bind(name)
            .bind(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX))
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }

    /// The periodic cleanup: batches until the expired rows are gone (bounded).
    async fn cleanup_expired(&self) {
        let options = &self.inner.options;
        let mut total = 0usize;
        for _ in 0..MAX_CLEANUP_ROUNDS {
            match self.cleanup(options.retention, options.cleanup_batch).await {
                Ok(deleted) => {
                    total = total.saturating_add(deleted);
                    if deleted < options.cleanup_batch {
                        break;
                    }
                }
                Err(err) => {
                    tracing::warn!(
                        consumer = %options.name,
                        error = %error_chain(&err),
                        "cannot delete expired inbox rows"
                    );
                    break;
                }
            }
        }
        if total > 0 {
            tracing::debug!(consumer = %options.name, deleted = total, "deleted expired inbox rows");
        }
    }
}

/// Commits after a successful handler, rolls back after a failed one.
async fn finish<DB: sqlx::Database>(
    result: Result<(), crate::handler::HandlerError>,
    tx: sqlx::Transaction<'_, DB>,
) -> Result<Processed, sqlx::Error> {
    match result {
        Ok(()) => {
            tx.commit().await?;
            Ok(Processed::Done)
        }
        Err(err) => {
            // A failed rollback ends the connection, which rolls back too.
            let _ = tx.rollback().await;
            Ok(Processed::Failed {
                error: err.message().to_owned(),
                permanent: err.is_permanent(),
            })
        }
    }
}

/// The event in a delivery, or why it is not one.
fn decode(message: &Message) -> Result<Event, String> {
    let text = std::str::from_utf8(&message.payload)
        .map_err(|err| format!("the payload is not UTF-8 text: {err}"))?;
    Event::parse(text).map_err(|errors| {
        let described = errors
            .iter()
            .map(|e| {
                if e.pointer.is_empty() {
                    e.detail.clone()
                } else {
                    format!("{} {}", e.pointer, e.detail)
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        format!("the payload is not a valid CloudEvent: {described}")
    })
}

/// Logs a processing task that panicked (its transaction rolled back; the delivery comes
/// back after its visibility timeout).
fn report_task(finished: Result<(), tokio::task::JoinError>) {
    if let Err(err) = finished
        && err.is_panic()
    {
        tracing::error!(
            error = %err,
            "an inbox handler panicked; the delivery is redelivered after its visibility timeout"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8]) -> Message {
        Message {
            id: "evt_1".to_owned(),
            key: None,
            headers: Vec::new(),
            payload: payload.to_vec().into(),
        }
    }

    #[test]
    fn undecodable_payloads_are_described() {
        let not_utf8 = decode(&message(b"\xff\xfe")).unwrap_err();
        assert!(
            not_utf8.starts_with("the payload is not UTF-8"),
            "{not_utf8}"
        );
        let not_json = decode(&message(b"nope")).unwrap_err();
        assert!(not_json.contains("must be a JSON object"), "{not_json}");
        let missing = decode(&message(b"{\"id\":\"x\"}")).unwrap_err();
        assert!(missing.contains("/source"), "{missing}");
    }

    #[test]
    fn options_report_every_problem() {
        let mut options = ConsumerOptions::new("", "t");
        options.concurrency = 0;
        options.backoff_min = Duration::from_secs(2);
        options.backoff_max = Duration::from_secs(1);
        let problems = options.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(ConsumerOptions::new("c", "t").problems().is_empty());
    }
}
