//! Real brokers, used as partitioned logs.
//!
//! Kafka, NATS JetStream, RabbitMQ streams and Redis Streams all keep an append-only,
//! replayable log per partition. Herald uses each one only for that: durable, confirmed
//! appends and ordered reads from a position. Everything else the [`Broker`]
//! contract asks for — consumer groups, one partition owner at a time, per-key order with
//! other keys flowing, visibility timeouts, nacks with a delay, lease tokens, receive counts
//! and dead letters — is done once, here, the same way for every backend, with the group's
//! state (partition leases, committed positions, dead letters) kept in Herald's own database.
//! `docs/specs/broker.md` is the contract and explains the choice.
//!
//! A backend implements [`Log`]; [`LogBroker`] turns it into a [`Broker`].

use std::fmt;
use std::time::Duration;

use crate::{BoxFuture, BrokerError, Message};

/// A position in one partition's log. Positions of one partition strictly increase in append
/// order; they need not be contiguous (a NATS stream sequence is shared by all partitions of a
/// topic, a Redis Streams id is a time and a counter).
pub type Position = u64;

/// One record read back from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Where it is in its partition.
    pub position: Position,
    /// The message, with the id, key, headers and payload that were appended.
    pub message: Message,
}

/// A backend's partitioned log. See the [module docs](self).
///
/// Topic names reaching a backend are non-empty and at most 200 bytes of `[A-Za-z0-9._-]`;
/// a backend maps them to its own names (a prefix, `.` to `_`, …) so that two different
/// topics never share a name.
pub trait Log: Send + Sync + fmt::Debug + 'static {
    /// `kafka`, `nats`, `rabbitmq` or `redis`.
    fn kind(&self) -> &'static str;

    /// Creates `topic` with `partitions` partitions (numbered `0..partitions`) unless it
    /// exists. Idempotent and safe to race with other processes doing the same.
    fn ensure_topic<'a>(
        &'a self,
        topic: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Appends each `(partition, message)` to its partition of `topic` and returns once the
    /// broker has durably accepted all of them. Within a partition, slice order is log order.
    /// On `Err` some may have been appended (the caller appends the batch again). Id, key,
    /// every header and the payload must come back unchanged from [`PartitionReader::read`].
    fn append<'a>(
        &'a self,
        topic: &'a str,
        records: &'a [(u32, Message)],
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// The position the next record appended to `partition` will be at or after: every
    /// record appended so far is before it.
    fn end<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
    ) -> BoxFuture<'a, Result<Position, BrokerError>>;

    /// A reader of `partition` that starts at the first record at or after `from`.
    fn reader<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        from: Position,
    ) -> BoxFuture<'a, Result<Box<dyn PartitionReader>, BrokerError>>;

    /// Deletes `topic`: every partition and every record in it, and what the backend keeps
    /// about the topic (its partition count), so that a later [`Log::ensure_topic`] of the
    /// same name makes a new, empty topic. Deleting a topic that does not exist succeeds; a
    /// bad topic name is [`BrokerError::Invalid`]. Readers of the topic must be dropped first:
    /// what they do afterwards is up to the backend.
    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Checks that the broker answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), BrokerError>>;
}

/// Reads one partition forward, in log order.
pub trait PartitionReader: Send + fmt::Debug {
    /// The next records after those already returned, at most `max`, waiting up to `wait`
    /// for the first one; empty when nothing came in time.
    fn read(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Record>, BrokerError>>;
}

mod connecting;
mod consumer;
mod group;

pub use connecting::{Connect, Connecting};

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use herald_store::{Migration, MigrationSet, Store};

use crate::{Broker, SubscribeOptions, Subscription};

/// The schema of the consumer-group state kept for real brokers, for
/// [`herald_store::migrate::migrate`] (component `log`).
pub const MIGRATIONS: MigrationSet = MigrationSet {
    component: "log",
    postgres: &[
        Migration {
            version: 1,
            name: "create log groups",
            sql: include_str!("../../migrations/postgres/log_0001.sql"),
        },
        Migration {
            version: 2,
            name: "count first receives in steps",
            sql: include_str!("../../migrations/postgres/log_0002.sql"),
        },
    ],
    sqlite: &[
        Migration {
            version: 1,
            name: "create log groups",
            sql: include_str!("../../migrations/sqlite/log_0001.sql"),
        },
        Migration {
            version: 2,
            name: "count first receives in steps",
            sql: include_str!("../../migrations/sqlite/log_0002.sql"),
        },
    ],
};

/// How a [`LogBroker`] partitions topics and runs its consumer groups.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// Partitions of every topic it creates (an existing topic keeps its own; a different
    /// count is refused by the backend). The most consumers a group can use.
    pub partitions: u32,
    /// How long a consumer that stopped heartbeating keeps its partitions.
    pub session_timeout: Duration,
    /// How often a consumer heartbeats, commits its position and rebalances.
    pub heartbeat: Duration,
    /// The most records read ahead per owned partition.
    pub prefetch: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            partitions: 8,
            session_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(1),
            prefetch: 1_000,
        }
    }
}

/// The longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 200;

/// A [`Broker`] on a backend's [`Log`], with its groups' state in `store`. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct LogBroker {
    log: Arc<dyn Log>,
    store: Store,
    options: LogOptions,
    topics: Arc<Mutex<HashSet<String>>>,
}

impl LogBroker {
    /// A broker on `log`, whose group state is kept in `store` (its schema must include
    /// [`MIGRATIONS`]).
    pub fn new(log: Arc<dyn Log>, store: Store, options: LogOptions) -> Result<Self, BrokerError> {
        if options.partitions == 0 || options.partitions > 1_024 {
            return Err(BrokerError::Invalid(format!(
                "partitions must be between 1 and 1024, not {}",
                options.partitions
            )));
        }
        if options.heartbeat.is_zero() || options.session_timeout < options.heartbeat * 3 {
            return Err(BrokerError::Invalid(
                "the session timeout must be at least three heartbeats".to_owned(),
            ));
        }
        Ok(Self {
            log,
            store,
            options: LogOptions {
                prefetch: options.prefetch.max(1),
                ..options
            },
            topics: Arc::default(),
        })
    }

    /// The dead letters of `group` on `topic`, oldest first, at most `limit`.
    pub async fn dead_letters(
        &self,
        topic: &str,
        group: &str,
        limit: u32,
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        group::dead_letters(&self.store, topic, group, limit).await
    }

    /// Deletes `topic` from the broker, with all its records ([`Log::delete_topic`]), and
    /// every trace of it in the group tables: its groups' positions and leases, their members
    /// and their dead letters. Deleting a topic that does not exist succeeds; a bad topic name
    /// is [`BrokerError::Invalid`].
    ///
    /// Stop (or [`close`](Subscription::close)) every consumer of the topic first, and stop
    /// publishing to it, in every process: a consumer still running writes its group's state
    /// back or reads from a topic that is gone (against tansu, a Kafka reader that fetches
    /// from it crashes its process, so the Kafka backend refuses while this process still has
    /// one), and another process's publisher may still trust its cached partition count.
    /// Publishing to the topic again afterwards creates it anew, empty; the first group to
    /// join then starts at its beginning.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), BrokerError> {
        check_topic(topic)?;
        if let Ok(mut topics) = self.topics.lock() {
            topics.remove(topic);
        }
        self.log.delete_topic(topic).await?;
        group::delete_topic(&self.store, topic).await
    }

    async fn ensure_topic(&self, topic: &str) -> Result<(), BrokerError> {
        if self.known(topic) {
            return Ok(());
        }
        self.log
            .ensure_topic(topic, self.options.partitions)
            .await?;
        if let Ok(mut topics) = self.topics.lock() {
            topics.insert(topic.to_owned());
        }
        Ok(())
    }

    fn known(&self, topic: &str) -> bool {
        self.topics
            .lock()
            .is_ok_and(|topics| topics.contains(topic))
    }
}

/// A message a group gave up on, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message as published.
    pub message: Message,
    /// How many times it was received.
    pub receive_count: u32,
    /// The last error recorded for it.
    pub last_error: String,
    /// When it died, in epoch milliseconds.
    pub died_at_ms: i64,
}

/// Checks a topic name: 1 to [`MAX_TOPIC_LEN`] bytes of `[A-Za-z0-9._-]`, so every backend
/// can use it in its own names.
pub fn check_topic(topic: &str) -> Result<(), BrokerError> {
    if topic.is_empty() {
        return Err(BrokerError::Invalid("the topic name is empty".to_owned()));
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(BrokerError::Invalid(format!(
            "the topic name is longer than {MAX_TOPIC_LEN} bytes"
        )));
    }
    if let Some(bad) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(BrokerError::Invalid(format!(
            "the topic name `{topic}` has `{bad}`; use letters, digits, `.`, `_` and `-`"
        )));
    }
    Ok(())
}

/// The partition of a message among `partitions`: FNV-1a (64 bit) of its key, or of its id
/// when it has none, modulo the count. Stable across versions and machines: publishers of one
/// topic must agree.
pub fn partition_of(message: &Message, partitions: u32) -> u32 {
    let text = message.key.as_deref().unwrap_or(&message.id);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    u32::try_from(hash % u64::from(partitions.max(1))).unwrap_or(0)
}

impl Broker for LogBroker {
    fn kind(&self) -> &'static str {
        self.log.kind()
    }

    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: &'a [Message],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            check_topic(topic)?;
            if let Some(index) = messages.iter().position(|m| m.id.is_empty()) {
                return Err(BrokerError::Invalid(format!(
                    "message {index} of the batch has an empty id"
                )));
            }
            if messages.is_empty() {
                return Ok(());
            }
            self.ensure_topic(topic).await?;
            let partitions = self.options.partitions;
            let records: Vec<(u32, Message)> = messages
                .iter()
                .map(|m| (partition_of(m, partitions), m.clone()))
                .collect();
            self.log.append(topic, &records).await
        })
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, BrokerError>> {
        Box::pin(async move {
            check_topic(topic)?;
            if group.is_empty() || group.len() > MAX_TOPIC_LEN {
                return Err(BrokerError::Invalid(format!(
                    "the group name must be 1 to {MAX_TOPIC_LEN} bytes"
                )));
            }
            if options.max_deliveries == 0 {
                return Err(BrokerError::Invalid(
                    "max_deliveries must be at least 1".to_owned(),
                ));
            }
            self.ensure_topic(topic).await?;
            group::create(
                &self.store,
                self.log.as_ref(),
                topic,
                group,
                self.options.partitions,
            )
            .await?;
            let subscription = consumer::LogSubscription::start(
                self.log.clone(),
                self.store.clone(),
                topic,
                group,
                options,
                self.options.clone(),
            )
            .await?;
            Ok(Box::new(subscription) as Box<dyn Subscription>)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.log.ping()
    }

    fn sharing(&self) -> crate::Sharing {
        crate::Sharing::Partitions
    }
}
