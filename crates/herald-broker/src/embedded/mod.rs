//! The embedded broker: a durable queue kept in Herald's own database, on PostgreSQL or
//! SQLite.
//!
//! It is a real, supported backend. `herald dev` runs it on SQLite, so nothing else has to be
//! installed; on PostgreSQL it serves production deployments that would rather not run a
//! broker, with any number of Herald instances sharing the database. The schema is
//! [`MIGRATIONS`] (component `queue`); the caller applies it before building an
//! [`EmbeddedBroker`].
//!
//! # Tables
//!
//! - `herald_queue_groups (topic, grp)`: the consumer groups. [`Broker::subscribe`] creates
//!   the row of its group; groups are never removed.
//! - `herald_queue_messages`: one row per message **and group**, from publish until it is
//!   acked or dead-lettered. `seq` (an identity column) is the publish order. Besides the
//!   message (`message_id`, `partition_key`, `headers` as a JSON array of `[name, value]`
//!   pairs, `payload` as bytes) a row carries its delivery state: `ready`, `visible_at`
//!   (epoch milliseconds), `receive_count`, `lease` and `last_error`.
//! - `herald_queue_parked`: messages published to a topic that has no group yet.
//! - `herald_queue_dead_letters`: messages given up on, with their group, receive count,
//!   last error and time of death, until they are replayed.
//!
//! # Publishing and groups
//!
//! A publish is one transaction for the whole batch, so `Ok` means committed (confirmed). It
//! copies each message to every group of the topic with one `INSERT … SELECT`, in batch
//! order, so a group receives every message published after it exists and none published
//! before. When the topic has no group at all, the messages are **parked** instead of
//! dropped, and the first group that subscribes to the topic adopts every parked message (in
//! the transaction that creates the group). Groups that come later start empty. On
//! PostgreSQL publishers hold a shared advisory lock on the topic and group creation an
//! exclusive one, so a publish cannot park messages just after the first group adopted the
//! parked ones.
//!
//! # Claiming and per-key order
//!
//! Only `ready` rows can be claimed: every key-less row, and of the rows of one
//! `(topic, group, key)` only the oldest (lowest `seq`), the key's *head*. So at most one
//! message per key and group is in flight, and keys never hold each other up. A publish
//! makes a keyed row ready only when its key has no row in that group; an ack or a
//! dead-lettering deletes the head and marks the key's next row ready (found through the
//! `(topic, grp, partition_key, seq)` index in O(log n)).
//!
//! A key has rows in a group exactly when it has a head, so "does this key have a row?" is
//! asked of a small partial unique index on heads, `(topic, grp, partition_key) WHERE ready`:
//! one probe, however long the key's backlog (a plain `NOT EXISTS` over all rows lets the
//! PostgreSQL planner pick a full scan when a few keys have long backlogs). Being unique, that
//! index also makes the database refuse a second head, should a bug ever try to make one.
//! On PostgreSQL every step that decides a head holds a transaction-scoped advisory lock on a
//! hash of `(topic, key)`, taken in hash order when a batch has several keys, so two
//! publishers (or a publisher and an ack) cannot both decide a key has no head, and an ack
//! cannot miss a message published while it releases the next one. On SQLite every writing
//! transaction is `BEGIN IMMEDIATE`, which serialises them.
//!
//! A claim reads the partial index on ready rows,
//! `(topic, grp, visible_at, seq) WHERE ready`: the first `max` rows with
//! `visible_at <= now`, in that order, so its cost does not grow with the backlog of blocked
//! or delayed messages. It sets a fresh random lease token (one per claim; `seq` and token
//! together name one delivery), adds one to `receive_count` and sets
//! `visible_at = now + visibility timeout`. PostgreSQL claims with `FOR UPDATE SKIP LOCKED`,
//! so concurrent consumers take different rows without waiting, and uses the database clock
//! (`clock_timestamp()`), so instances with skewed clocks agree. SQLite claims inside
//! `BEGIN IMMEDIATE` with the application's clock.
//!
//! # Settling and redelivery
//!
//! Ack, nack and extend act only on the row whose `seq` **and** lease token match the
//! delivery, else they fail with [`BrokerError::LeaseLost`]: once a message has been
//! redelivered, the consumer that lost it can no longer settle it. (A consumer that is late
//! but whose message nobody claimed in between still holds the lease.)
//!
//! - Ack deletes the row (and releases the key's next message).
//! - Nack below `max_deliveries` receives sets `visible_at = now + delay`, records the error
//!   and clears the lease. At `max_deliveries` it moves the row to the dead letters with the
//!   error and releases the key's next message.
//! - Extend sets `visible_at = now + by`.
//! - A row whose visibility timeout passed is simply claimable again. If it has already been
//!   received `max_deliveries` times, the claim that finds it dead-letters it ("visibility
//!   timeout expired N times") instead of delivering it.
//!
//! [`EmbeddedBroker::dead_letters`] lists a group's dead letters and
//! [`EmbeddedBroker::replay_dead_letter`] puts one back as a new message (receive count 0) at
//! the end of its key.
//!
//! # Waiting
//!
//! [`Subscription::receive`] polls: it claims, and when nothing was claimable sleeps 5 ms,
//! then twice as long each time up to 100 ms, until its `wait` has passed. A publish, ack or
//! nack made through the same [`EmbeddedBroker`] (or a clone) wakes the waiting
//! subscriptions of this process at once, so `herald dev` has low latency without hammering
//! the database. Other processes notice within one polling interval.
//!
//! # What is and is not guaranteed
//!
//! - Everything in the [crate docs](crate): confirmed publish, at-least-once delivery,
//!   per-key order with one message per key in flight, dead-lettering.
//! - Order across keys (and of key-less messages) is roughly publish order, not a promise:
//!   a claim takes visible rows by `(visible_at, seq)`, and redelivered messages go by the
//!   time they became visible again.
//! - PostgreSQL: any number of processes may publish and consume at once.
//! - SQLite: made for one process (`herald dev`). Several processes on one machine are safe
//!   (every write is serialised by the database lock) but wake each other only by polling,
//!   and they read the time from their own clocks.

mod postgres;
mod sqlite;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_store::{Migration, MigrationSet, Store};
use tokio::sync::Notify;

use crate::{
    BoxFuture, Broker, BrokerError, Delivery, Message, Nacked, Settle, SubscribeOptions,
    Subscription,
};

/// The embedded queue's schema, for [`herald_store::migrate::migrate`].
pub const MIGRATIONS: MigrationSet = MigrationSet {
    component: "queue",
    postgres: &[Migration {
        version: 1,
        name: "create queue",
        sql: include_str!("../../migrations/postgres/0001_queue.sql"),
    }],
    sqlite: &[Migration {
        version: 1,
        name: "create queue",
        sql: include_str!("../../migrations/sqlite/0001_queue.sql"),
    }],
};

/// The first pause between two empty claims.
const POLL_MIN: Duration = Duration::from_millis(5);
/// The longest pause between two empty claims.
const POLL_MAX: Duration = Duration::from_millis(100);
/// The most messages one receive returns, whatever `max` asks.
const MAX_BATCH: usize = 1_000;
/// The longest topic or group name, in bytes.
const MAX_NAME_BYTES: usize = 255;
/// The longest message id or key, in bytes.
const MAX_ID_BYTES: usize = 1_024;
/// Errors longer than this (in bytes) are cut.
const MAX_ERROR_BYTES: usize = 4_096;
/// Delays and timeouts are capped at about ten years, so adding them to a time can't overflow.
const MAX_DELAY_MS: i64 = 10 * 366 * 24 * 60 * 60 * 1_000;

/// The broker that keeps its queue in a [`Store`]. Cheap to clone; clones share the in-process
/// wake-up of waiting subscriptions.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    shared: Arc<Shared>,
}

/// What a broker, its subscriptions and its deliveries share.
#[derive(Debug)]
struct Shared {
    engine: Box<dyn Engine>,
    /// Woken after every publish, ack and nack, so waiting receives claim at once.
    notify: Notify,
}

/// A message that was given up on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Identifies it for [`EmbeddedBroker::replay_dead_letter`].
    pub id: i64,
    /// The topic it was published to.
    pub topic: String,
    /// The consumer group that gave up on it.
    pub group: String,
    /// The message, as published.
    pub message: Message,
    /// How many times it was received.
    pub receive_count: u32,
    /// Why it was given up on: the error of the last nack, or the expired visibility timeout.
    pub last_error: String,
    /// When it was dead-lettered.
    pub dead_at: SystemTime,
}

impl EmbeddedBroker {
    /// A broker on `store`, whose schema must include [`MIGRATIONS`].
    pub fn new(store: Store) -> Self {
        let engine: Box<dyn Engine> = match store {
            Store::Postgres(pool) => Box::new(postgres::PgEngine::new(pool)),
            Store::Sqlite(pool) => Box::new(sqlite::SqliteEngine::new(pool)),
        };
        Self {
            shared: Arc::new(Shared {
                engine,
                notify: Notify::new(),
            }),
        }
    }

    /// The oldest `limit` dead letters of `group` on `topic`, oldest first.
    pub async fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        check_name("topic", topic)?;
        check_name("group", group)?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self.shared.engine.dead_letters(topic, group, limit).await?;
        rows.into_iter()
            .map(|row| {
                Ok(DeadLetter {
                    id: row.id,
                    topic: row.topic,
                    group: row.group,
                    message: Message {
                        id: row.message_id,
                        key: row.key,
                        headers: decode_headers(&row.headers)?,
                        payload: Bytes::from(row.payload),
                    },
                    receive_count: count_out(row.receive_count),
                    last_error: row.last_error,
                    dead_at: UNIX_EPOCH
                        + Duration::from_millis(u64::try_from(row.dead_at).unwrap_or(0)),
                })
            })
            .collect()
    }

    /// Moves dead letter `id` back to its group's queue as a new message (received 0 times),
    /// after every message of its key already queued. `false` when there is no such dead
    /// letter (for example it was already replayed).
    pub async fn replay_dead_letter(&self, id: i64) -> Result<bool, BrokerError> {
        let replayed = self.shared.engine.replay(id).await?;
        if replayed {
            self.shared.notify.notify_waiters();
        }
        Ok(replayed)
    }
}

impl Broker for EmbeddedBroker {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: &'a [Message],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            check_name("topic", topic)?;
            let outgoing = messages
                .iter()
                .enumerate()
                .map(|(index, message)| Outgoing::new(index, message))
                .collect::<Result<Vec<_>, _>>()?;
            if outgoing.is_empty() {
                return Ok(());
            }
            self.shared.engine.publish(topic, &outgoing).await?;
            self.shared.notify.notify_waiters();
            Ok(())
        })
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, BrokerError>> {
        Box::pin(async move {
            check_name("topic", topic)?;
            check_name("group", group)?;
            if options.max_deliveries == 0 {
                return Err(BrokerError::Invalid(
                    "max_deliveries must be at least 1".to_owned(),
                ));
            }
            if options.visibility_timeout < Duration::from_millis(1) {
                return Err(BrokerError::Invalid(
                    "the visibility timeout must be at least 1 ms".to_owned(),
                ));
            }
            self.shared.engine.join(topic, group).await?;
            // The group may have adopted parked messages.
            self.shared.notify.notify_waiters();
            Ok(Box::new(EmbeddedSubscription {
                shared: self.shared.clone(),
                topic: topic.into(),
                group: group.into(),
                visibility_ms: millis(options.visibility_timeout),
                max_deliveries: options.max_deliveries,
            }) as Box<dyn Subscription>)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.shared.engine.ping()
    }
}

/// One consumer of a group.
#[derive(Debug)]
struct EmbeddedSubscription {
    shared: Arc<Shared>,
    topic: Arc<str>,
    group: Arc<str>,
    visibility_ms: i64,
    max_deliveries: u32,
}

impl Subscription for EmbeddedSubscription {
    fn receive(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, BrokerError>> {
        Box::pin(self.receive_within(max, wait))
    }
}

impl EmbeddedSubscription {
    async fn receive_within(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, BrokerError> {
        if max == 0 {
            return Err(BrokerError::Invalid(
                "receive needs `max` of at least 1".to_owned(),
            ));
        }
        let max = i64::try_from(max.min(MAX_BATCH)).unwrap_or(1);
        let started = Instant::now();
        let deadline = started
            .checked_add(wait)
            .unwrap_or(started + Duration::from_secs(366 * 24 * 60 * 60));
        let mut pause = POLL_MIN;
        loop {
            // Register for a wake-up before looking, so a publish that lands between the claim
            // and the wait is not missed.
            let notified = self.shared.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();

            let (deliveries, dead_lettered) = self.claim(max).await?;
            if dead_lettered {
                // Their keys' next messages are ready now, for us or others.
                self.shared.notify.notify_waiters();
            }
            if !deliveries.is_empty() {
                return Ok(deliveries);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Vec::new());
            }
            if dead_lettered {
                continue;
            }
            tokio::select! {
                () = notified.as_mut() => pause = POLL_MIN,
                () = tokio::time::sleep(pause.min(deadline - now)) => {
                    pause = (pause * 2).min(POLL_MAX);
                }
            }
        }
    }

    /// One claim: the deliveries, and whether expired messages were dead-lettered.
    async fn claim(&self, max: i64) -> Result<(Vec<Delivery>, bool), BrokerError> {
        let request = ClaimRequest {
            topic: &self.topic,
            group: &self.group,
            max,
            visibility_ms: self.visibility_ms,
            max_deliveries: i32::try_from(self.max_deliveries).unwrap_or(i32::MAX),
            token: new_token()?,
        };
        let rows = self.shared.engine.claim(&request).await?;
        let mut deliveries = Vec::with_capacity(rows.len());
        let mut dead_lettered = false;
        for row in rows {
            let lease = LeaseRef {
                seq: row.seq,
                token: request.token,
                topic: self.topic.clone(),
                group: self.group.clone(),
                key: row.key,
            };
            if row.expired {
                let error = expired_error(row.receive_count, row.last_error.as_deref());
                match self.shared.engine.dead_letter(&lease, &error).await {
                    Ok(()) => dead_lettered = true,
                    // It stays leased to us and comes back after the visibility timeout.
                    Err(err) => tracing::warn!(
                        topic = %self.topic,
                        group = %self.group,
                        message_id = %row.message_id,
                        error = %err,
                        "could not dead-letter a message whose visibility timeout expired"
                    ),
                }
                continue;
            }
            let message = Message {
                id: row.message_id,
                key: lease.key.clone(),
                headers: decode_headers(&row.headers)?,
                payload: Bytes::from(row.payload),
            };
            let receive_count = count_out(row.receive_count);
            deliveries.push(Delivery::new(
                message,
                receive_count,
                Box::new(EmbeddedSettle {
                    shared: self.shared.clone(),
                    lease,
                    receive_count,
                    max_deliveries: self.max_deliveries,
                }),
            ));
        }
        Ok((deliveries, dead_lettered))
    }
}

/// Settles one delivery: the row and the lease token it was claimed with.
#[derive(Debug)]
struct EmbeddedSettle {
    shared: Arc<Shared>,
    lease: LeaseRef,
    receive_count: u32,
    max_deliveries: u32,
}

impl Settle for EmbeddedSettle {
    fn ack(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            self.shared.engine.ack(&self.lease).await?;
            if self.lease.key.is_some() {
                self.shared.notify.notify_waiters();
            }
            Ok(())
        })
    }

    fn nack<'a>(
        &'a self,
        delay: Duration,
        error: &'a str,
    ) -> BoxFuture<'a, Result<Nacked, BrokerError>> {
        Box::pin(async move {
            let error = clean_error(error);
            let outcome = if self.receive_count >= self.max_deliveries {
                self.shared.engine.dead_letter(&self.lease, &error).await?;
                Nacked::DeadLettered
            } else {
                self.shared
                    .engine
                    .retry(&self.lease, millis(delay), &error)
                    .await?;
                Nacked::Retry
            };
            self.shared.notify.notify_waiters();
            Ok(outcome)
        })
    }

    fn extend(&self, by: Duration) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move { self.shared.engine.extend(&self.lease, millis(by)).await })
    }
}

/// What an engine (the SQL of one database) does. Chosen once, in [`EmbeddedBroker::new`].
/// Inputs are checked before they reach it.
trait Engine: Send + Sync + fmt::Debug {
    /// Stores the batch in one transaction: a row per group, or parked without groups.
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: &'a [Outgoing<'a>],
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Creates the group if it is new; the topic's first group adopts the parked messages.
    fn join<'a>(&'a self, topic: &'a str, group: &'a str)
    -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Leases up to `max` visible ready rows, in `(visible_at, seq)` order.
    fn claim<'a>(
        &'a self,
        request: &'a ClaimRequest<'a>,
    ) -> BoxFuture<'a, Result<Vec<Claimed>, BrokerError>>;

    /// Deletes the leased row and releases its key's next row.
    fn ack<'a>(&'a self, lease: &'a LeaseRef) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Makes the leased row visible again after `delay_ms`, recording `error`.
    fn retry<'a>(
        &'a self,
        lease: &'a LeaseRef,
        delay_ms: i64,
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Keeps the leased row invisible for `by_ms` from now.
    fn extend<'a>(
        &'a self,
        lease: &'a LeaseRef,
        by_ms: i64,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Moves the leased row to the dead letters and releases its key's next row.
    fn dead_letter<'a>(
        &'a self,
        lease: &'a LeaseRef,
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// A group's dead letters, oldest first.
    fn dead_letters<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<StoredDeadLetter>, BrokerError>>;

    /// Moves a dead letter back to the queue; `false` if there is none with `id`.
    fn replay(&self, id: i64) -> BoxFuture<'_, Result<bool, BrokerError>>;

    /// `SELECT 1`.
    fn ping(&self) -> BoxFuture<'_, Result<(), BrokerError>>;
}

/// A checked message, ready to store.
#[derive(Debug)]
struct Outgoing<'a> {
    id: &'a str,
    key: Option<&'a str>,
    headers: String,
    payload: &'a [u8],
}

impl<'a> Outgoing<'a> {
    fn new(index: usize, message: &'a Message) -> Result<Self, BrokerError> {
        let invalid = |what: &str| {
            BrokerError::Invalid(format!(
                "message {index} of the batch (id {:?}) {what}",
                truncated(&message.id, 64)
            ))
        };
        if message.id.is_empty() {
            return Err(invalid("has an empty id"));
        }
        if message.id.len() > MAX_ID_BYTES {
            return Err(invalid(&format!(
                "has an id longer than {MAX_ID_BYTES} bytes"
            )));
        }
        if message.id.contains('\0') {
            return Err(invalid("has a NUL character in its id"));
        }
        if let Some(key) = &message.key {
            if key.is_empty() {
                return Err(invalid("has an empty key (use no key instead)"));
            }
            if key.len() > MAX_ID_BYTES {
                return Err(invalid(&format!(
                    "has a key longer than {MAX_ID_BYTES} bytes"
                )));
            }
            if key.contains('\0') {
                return Err(invalid("has a NUL character in its key"));
            }
        }
        Ok(Self {
            id: &message.id,
            key: message.key.as_deref(),
            headers: encode_headers(&message.headers),
            payload: &message.payload,
        })
    }
}

/// What a claim asks for.
#[derive(Debug)]
struct ClaimRequest<'a> {
    topic: &'a str,
    group: &'a str,
    max: i64,
    visibility_ms: i64,
    max_deliveries: i32,
    /// The lease token given to every claimed row.
    token: i64,
}

/// A claimed row.
#[derive(Debug)]
struct Claimed {
    seq: i64,
    key: Option<String>,
    message_id: String,
    headers: String,
    payload: Vec<u8>,
    /// Counting this receive, unless `expired`.
    receive_count: i32,
    /// It had already been received `max_deliveries` times: dead-letter it, don't deliver.
    expired: bool,
    last_error: Option<String>,
}

/// Which delivery a settle acts on.
#[derive(Debug, Clone)]
struct LeaseRef {
    seq: i64,
    token: i64,
    topic: Arc<str>,
    group: Arc<str>,
    key: Option<String>,
}

/// A row of the dead letters.
#[derive(Debug)]
struct StoredDeadLetter {
    id: i64,
    topic: String,
    group: String,
    key: Option<String>,
    message_id: String,
    headers: String,
    payload: Vec<u8>,
    receive_count: i32,
    last_error: String,
    dead_at: i64,
}

/// `Ok` when a statement found the leased row, else the lease was lost.
fn held(rows: u64) -> Result<(), BrokerError> {
    if rows == 0 {
        Err(BrokerError::LeaseLost)
    } else {
        Ok(())
    }
}

fn check_name(what: &str, name: &str) -> Result<(), BrokerError> {
    if name.is_empty() {
        return Err(BrokerError::Invalid(format!("the {what} name is empty")));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(BrokerError::Invalid(format!(
            "the {what} name is longer than {MAX_NAME_BYTES} bytes"
        )));
    }
    if name.contains('\0') {
        return Err(BrokerError::Invalid(format!(
            "the {what} name contains a NUL character"
        )));
    }
    Ok(())
}

/// Headers as a JSON array of `[name, value]` pairs, which keeps their order and repeats.
fn encode_headers(headers: &[(String, String)]) -> String {
    let mut out = String::from("[");
    for (index, (name, value)) in headers.iter().enumerate() {
        if index > 0 {
            out.push(',');
        }
        out.push('[');
        out.push_str(&serde_json::Value::from(name.as_str()).to_string());
        out.push(',');
        out.push_str(&serde_json::Value::from(value.as_str()).to_string());
        out.push(']');
    }
    out.push(']');
    out
}

fn decode_headers(text: &str) -> Result<Vec<(String, String)>, BrokerError> {
    serde_json::from_str(text).map_err(|err| BrokerError::Store(sqlx::Error::Decode(err.into())))
}

/// Whole milliseconds, rounded up, capped at [`MAX_DELAY_MS`].
fn millis(duration: Duration) -> i64 {
    let ms = duration.as_micros().div_ceil(1_000);
    i64::try_from(ms).unwrap_or(i64::MAX).min(MAX_DELAY_MS)
}

/// The application's clock in epoch milliseconds (SQLite's time source).
fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

/// A fresh random lease token.
fn new_token() -> Result<i64, BrokerError> {
    let bits = getrandom::u64().map_err(|err| {
        BrokerError::Unavailable(format!("no random numbers for a lease token: {err}"))
    })?;
    Ok(i64::from_ne_bytes(bits.to_ne_bytes()))
}

fn count_out(count: i32) -> u32 {
    u32::try_from(count).unwrap_or(0)
}

/// A consumer's error as stored: no NUL (PostgreSQL text can't hold it), at most
/// [`MAX_ERROR_BYTES`].
fn clean_error(error: &str) -> String {
    let error = error.replace('\0', "\u{fffd}");
    truncated(&error, MAX_ERROR_BYTES).to_owned()
}

/// The error of a message dead-lettered because its last visibility timeout expired.
fn expired_error(receive_count: i32, last_error: Option<&str>) -> String {
    let text = match last_error {
        None if receive_count == 1 => "visibility timeout expired 1 time".to_owned(),
        None => format!("visibility timeout expired {receive_count} times"),
        Some(last) => format!(
            "visibility timeout expired after {receive_count} deliveries; last error: {last}"
        ),
    };
    clean_error(&text)
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncated(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_with_order_repeats_and_odd_characters() {
        let headers = vec![
            ("b".to_owned(), "1".to_owned()),
            ("a".to_owned(), "\"quoted\" \\ \n é \0".to_owned()),
            ("b".to_owned(), String::new()),
        ];
        let text = encode_headers(&headers);
        assert_eq!(decode_headers(&text).ok(), Some(headers));
        assert_eq!(encode_headers(&[]), "[]");
        assert_eq!(decode_headers("[]").ok(), Some(Vec::new()));
        assert!(decode_headers("{").is_err());
    }

    #[test]
    fn millis_round_up_and_cap() {
        assert_eq!(millis(Duration::ZERO), 0);
        assert_eq!(millis(Duration::from_micros(1)), 1);
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::MAX), MAX_DELAY_MS);
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("topic", "orders").is_ok());
        for bad in ["", "a\0b", &"x".repeat(256)] {
            assert!(matches!(
                check_name("topic", bad),
                Err(BrokerError::Invalid(_))
            ));
        }
        let Err(err) = check_name("group", "") else {
            panic!("an empty name is refused");
        };
        assert_eq!(err.to_string(), "the group name is empty");
    }

    #[test]
    fn messages_are_checked() {
        let good = Message {
            id: "evt_1".to_owned(),
            key: Some("k".to_owned()),
            headers: vec![],
            payload: Bytes::from_static(b"x"),
        };
        assert!(Outgoing::new(0, &good).is_ok());
        let empty_id = Message {
            id: String::new(),
            ..good.clone()
        };
        let Err(err) = Outgoing::new(3, &empty_id) else {
            panic!("an empty id is refused");
        };
        assert_eq!(
            err.to_string(),
            "message 3 of the batch (id \"\") has an empty id"
        );
        let empty_key = Message {
            key: Some(String::new()),
            ..good.clone()
        };
        assert!(Outgoing::new(0, &empty_key).is_err());
        let nul = Message {
            id: "a\0".to_owned(),
            ..good
        };
        assert!(Outgoing::new(0, &nul).is_err());
    }

    #[test]
    fn errors_are_cleaned() {
        assert_eq!(clean_error("a\0b"), "a\u{fffd}b");
        let long = "é".repeat(MAX_ERROR_BYTES);
        assert!(clean_error(&long).len() <= MAX_ERROR_BYTES);
        assert_eq!(expired_error(3, None), "visibility timeout expired 3 times");
        assert_eq!(
            expired_error(2, Some("boom")),
            "visibility timeout expired after 2 deliveries; last error: boom"
        );
    }

    #[test]
    fn tokens_differ() {
        let a = new_token().ok();
        let b = new_token().ok();
        assert!(a.is_some());
        assert_ne!(a, b);
    }
}
