//! The [`Broker`] trait, through which the relay publishes and consumers receive, and its
//! backends.
//!
//! A backend is a real, supported way to move messages, chosen by configuration; nothing
//! outside this crate knows which one is in use. What every backend guarantees:
//!
//! - **Confirmed publish.** [`Broker::publish`] returns `Ok` only once the broker has durably
//!   accepted every message of the batch. On `Err`, some may have been accepted: the caller
//!   publishes the batch again (consumers deduplicate by message id).
//! - **At-least-once delivery** to each consumer group: a message is redelivered until it is
//!   acked, after a [`Delivery::nack`] (after the given delay) or when the visibility timeout
//!   passes without an ack or [`Delivery::extend`].
//! - **Per-key order.** Messages with the same [`Message::key`] are delivered to a group in
//!   publish order, one at a time: the next is not delivered until the one before is acked or
//!   dead-lettered. Messages without a key, and messages of other keys, are not held back.
//! - **Dead-lettering.** A message received [`SubscribeOptions::max_deliveries`] times without
//!   an ack is moved to the group's dead-letter store with its last error, and the next message
//!   of its key is released.
//!
//! Where a backend cannot keep one of these, its module says so. How the consumers of one
//! group divide the work is [`Broker::sharing`]: message by message on the embedded queue, by
//! partition on the real brokers ([`log`]).

pub mod embedded;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod log;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(any(feature = "nats", feature = "rabbitmq", feature = "redis"))]
mod redact;
#[cfg(feature = "redis")]
pub mod redis;

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

/// A boxed future, so the traits can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One message: an event on its way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The event id; consumers deduplicate by it.
    pub id: String,
    /// The partition key: messages with one key are delivered in order.
    pub key: Option<String>,
    /// Metadata: event type, correlation id, trace context.
    pub headers: Vec<(String, String)>,
    /// The encoded event.
    pub payload: Bytes,
}

impl Message {
    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How a consumer group receives.
#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    /// How long a received message stays invisible to others before it is redelivered, unless
    /// acked, nacked or extended.
    pub visibility_timeout: Duration,
    /// Receives after which an unacked message is dead-lettered (at least 1).
    pub max_deliveries: u32,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(30),
            max_deliveries: 10,
        }
    }
}

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker could not be reached or refused the operation; retrying may help.
    #[error("the broker is unavailable: {0}")]
    Unavailable(String),
    /// The delivery's lease was lost (it timed out and was redelivered, or was already
    /// settled): the ack, nack or extend had no effect.
    #[error("the delivery is no longer held by this consumer")]
    LeaseLost,
    /// The request is invalid (an empty topic name, a message too large…).
    #[error("{0}")]
    Invalid(String),
    /// A database error in the embedded backend.
    #[error("the broker's database failed")]
    Store(#[from] sqlx::Error),
}

/// A message broker. See the [crate docs](crate) for the guarantees.
///
/// It is [`Any`], so a tool that holds a `dyn Broker` can reach what one backend offers
/// besides this trait (such as [`LogBroker::delete_topic`](log::LogBroker::delete_topic)) by
/// upcasting to `&dyn Any` and downcasting.
pub trait Broker: Any + Send + Sync + fmt::Debug {
    /// A short name for logs and metrics: `embedded`, `nats`, `kafka`, `rabbitmq`, `redis`.
    fn kind(&self) -> &'static str;

    /// Publishes `messages` to `topic`, in order, and returns once all are confirmed.
    ///
    /// An empty topic name, or a message with an empty id, is [`BrokerError::Invalid`] and
    /// publishes nothing of the batch.
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: &'a [Message],
    ) -> BoxFuture<'a, Result<(), BrokerError>>;

    /// Joins consumer group `group` on `topic` (creating it if needed).
    ///
    /// An empty topic or group name, or `max_deliveries` of 0, is [`BrokerError::Invalid`].
    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, BrokerError>>;

    /// Checks that the broker answers.
    fn ping(&self) -> BoxFuture<'_, Result<(), BrokerError>>;

    /// How the consumers of one group share its messages.
    fn sharing(&self) -> Sharing {
        Sharing::Messages
    }
}

/// How the consumers of one group share its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Any consumer of the group may receive any message (the embedded queue): one consumer
    /// can hold many messages while the others get the rest.
    Messages,
    /// A topic has a fixed number of partitions (a message's is chosen by its key, or by its
    /// id when it has none) and each partition is owned by one consumer of the group at a
    /// time, so a group uses at most that many consumers. The real brokers work this way.
    Partitions,
}

/// One consumer's membership in a group.
pub trait Subscription: Send + fmt::Debug {
    /// Waits up to `wait` for at least one message and returns at most `max`; an empty vector
    /// means nothing arrived in time. `max` of 0 is [`BrokerError::Invalid`].
    fn receive(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Delivery>, BrokerError>>;

    /// Leaves the group now, giving back what this consumer holds, and returns once that is
    /// done (or failed: what it held then comes back after its timeouts). Dropping a
    /// subscription leaves too, but in the background, which may be too late when the process
    /// is stopping. Receiving after `close` is not supported. The default does nothing.
    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// What a backend does to settle one delivery.
pub trait Settle: Send + Sync + fmt::Debug {
    /// Acknowledges: the message is done and is removed for this group.
    fn ack(&self) -> BoxFuture<'_, Result<(), BrokerError>>;
    /// Gives it back for redelivery after `delay`, recording `error`; dead-letters it when it
    /// has been received `max_deliveries` times.
    fn nack<'a>(
        &'a self,
        delay: Duration,
        error: &'a str,
    ) -> BoxFuture<'a, Result<Nacked, BrokerError>>;
    /// Keeps it invisible to others for `by` more, from now.
    fn extend(&self, by: Duration) -> BoxFuture<'_, Result<(), BrokerError>>;
}

/// What became of a nacked delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nacked {
    /// It will be delivered again.
    Retry,
    /// It reached the maximum and was dead-lettered.
    DeadLettered,
}

/// A received message and the handle to settle it.
#[derive(Debug)]
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// How many times it has been received, this time included (1 on first delivery).
    pub receive_count: u32,
    settle: Box<dyn Settle>,
}

impl Delivery {
    /// Made by backends.
    pub fn new(message: Message, receive_count: u32, settle: Box<dyn Settle>) -> Self {
        Self {
            message,
            receive_count,
            settle,
        }
    }

    /// Acknowledges the message.
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.settle.ack().await
    }

    /// Returns it for redelivery after `delay`, or dead-letters it at the maximum.
    pub async fn nack(self, delay: Duration, error: &str) -> Result<Nacked, BrokerError> {
        self.settle.nack(delay, error).await
    }

    /// Extends the visibility timeout by `by` from now.
    pub async fn extend(&self, by: Duration) -> Result<(), BrokerError> {
        self.settle.extend(by).await
    }
}
