//! The RabbitMQ backend of [`Log`]: one RabbitMQ **stream** per partition, used over AMQP 0-9-1.
//!
//! A stream (`x-queue-type: stream`, RabbitMQ 3.9 or later) is an append-only, replayable log:
//! reading does not remove anything, and a consumer can start at any offset. That is exactly the
//! [`Log`] contract, so the mapping is direct:
//!
//! - **Names.** Partition `p` of topic `t` is the stream `<prefix>t.p<p>` (prefix `herald.` by
//!   default). The topic's partition count is recorded by a marker queue `<prefix>t.partitions`
//!   (below). Topic names are `[A-Za-z0-9._-]`, and the part after the last `.` is either
//!   `p<digits>` or `partitions`, so two different (topic, partition) pairs, or a partition and a
//!   marker, never share a name.
//! - **Partition count.** [`Log::ensure_topic`] first declares the marker, a durable quorum queue
//!   that never holds a message, with `x-max-length` set to the partition count. RabbitMQ
//!   compares `x-max-length` when a queue is declared again, atomically, so racing creators with
//!   the same count all succeed and one asking for a different count is refused
//!   (`PRECONDITION_FAILED`, reported as [`BrokerError::Invalid`] with RabbitMQ's text, which
//!   names the existing count). Only then are the partition streams declared (durable,
//!   idempotent: declaring an existing stream with the same arguments is a no-op).
//! - **Append.** Every record is published through the default exchange to its partition's
//!   stream, persistent, `mandatory`, on one long-lived channel in publisher-confirm mode. A
//!   batch is published whole and then its confirms are awaited, so the round trips overlap.
//!   A record returned as unroutable (its partition's stream does not exist) fails the append
//!   with [`BrokerError::Invalid`]. The message id travels as the `message_id` property, the
//!   payload as the body, and the key and headers as AMQP headers: `herald-key` (a long string,
//!   absent for no key, so `None` and `Some("")` stay apart) and `herald-headers`, a long string
//!   holding the headers as a JSON array of `[name, value]` pairs (as the embedded backend
//!   stores them). Not one table entry per header, because AMQP tables are maps: they keep
//!   neither the order of the headers nor repeated names, and the contract asks for every
//!   header back unchanged. Not an AMQP array either: RabbitMQ 3.10 stores stream messages in
//!   AMQP 1.0 form and drops array-valued headers on the way.
//! - **Position** is the stream offset, which RabbitMQ puts in the `x-stream-offset` header of
//!   every delivery. Offsets of one stream start at 0 and increase by one per message.
//! - **Read.** A reader is a consumer on its own channel with a prefetch (`basic.qos`, which
//!   streams require) and `x-stream-offset` set to the position to start at. RabbitMQ starts at
//!   the beginning of the chunk holding that offset, so earlier deliveries are skipped. Every
//!   delivery is acked as it is read (for a stream an ack only returns flow-control credit; it
//!   removes nothing). A reader remembers the position after the last record it returned; when
//!   its consumer fails (a dropped connection) the next read subscribes again from there.
//! - **End.** AMQP 0-9-1 has no "last offset" query, and guessing from the last chunk (consume
//!   from `last` and wait for a quiet moment) can stop in the middle of a chunk and return an end
//!   before records that were already appended. [`Log::end`] therefore asks the stream itself:
//!   on one channel it subscribes at `next` (the current end), then publishes a small **end
//!   marker** to the stream, and reads until that marker comes back. Commands on one channel run
//!   in order, so the consumer is attached before the marker is written, every record appended
//!   before the call is before the marker, and the result, the marker's offset + 1, is after all
//!   of them. Markers (a `herald-end-marker` header) are records of the stream: readers skip
//!   them, so positions have gaps, which the [`Log`] contract allows. Each `end` call adds one
//!   marker of about a hundred bytes.
//! - **Errors.** A failed connection, a timeout or a refused operation is
//!   [`BrokerError::Unavailable`]; a missing topic or partition, a partition-count mismatch or
//!   an oversized name or id is [`BrokerError::Invalid`]. A delivery that is not a Herald record
//!   (say, something another client published into the stream) is reported as `Invalid` by the
//!   read that meets it, and the reader moves past it. Nothing from the broker can panic.
//! - **Connection.** One connection per [`RabbitMqLog`]. When it drops (a broker restart, a
//!   network cut), the next operation opens a new one; the operation that saw the failure
//!   returns `Unavailable`. Each connection attempt is bounded by
//!   [`RabbitMqOptions::connect_timeout`] and each operation by
//!   [`RabbitMqOptions::operation_timeout`], so a dead broker is reported, never waited for.
//!
//! # What survives a restart
//!
//! Streams and the marker queue are durable: their definitions and every confirmed record are
//! on disk and survive a broker restart, and in a cluster they are replicated (a publisher
//! confirm for a stream means a majority of its replicas have the record). Nothing else is kept
//! by the broker: a reader's position lives in the caller (Herald keeps committed positions in
//! its own database) and connections, channels and consumers are opened again after a restart.
//! Streams keep their data until deleted ([`RabbitMqLog::delete_topic`]) or until a retention
//! policy an operator sets (`max-age`, `max-length-bytes`) truncates them; readers asking for a
//! truncated position start at the oldest record left.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use lapin::message::{Delivery, DeliveryResult};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind};
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

use crate::log::{Log, PartitionReader, Position, Record};
use crate::redact::redact_url;
use crate::{BoxFuture, BrokerError, Message};

/// The AMQP header with the message key; absent when the message has none.
const KEY_HEADER: &str = "herald-key";
/// The AMQP header with the message's headers, a JSON array of `[name, value]` arrays.
const HEADERS_HEADER: &str = "herald-headers";
/// The AMQP header that marks an end marker (see the module docs); its value is the marker's id.
const END_MARKER_HEADER: &str = "herald-end-marker";
/// The header RabbitMQ sets on stream deliveries, and the consumer argument for where to start.
const OFFSET_HEADER: &str = "x-stream-offset";
/// AMQP delivery mode 2: persistent.
const PERSISTENT: u8 = 2;
/// Longest topic name (in bytes) the [`Log`] trait passes.
const MAX_TOPIC_LEN: usize = 200;
/// Longest accepted name prefix, so every queue name stays within AMQP's 255 bytes.
const MAX_PREFIX_LEN: usize = 40;

/// How to reach RabbitMQ and name things there.
#[derive(Clone)]
pub struct RabbitMqOptions {
    /// The AMQP URL, `amqp://user:password@host:5672/vhost` with the vhost percent-encoded (the
    /// default vhost `/` is `%2f`). Query parameters such as `heartbeat=30` are passed on to the
    /// client. Only plain `amqp://` is supported: this build has no TLS.
    pub url: String,
    /// Prefix of every queue this backend declares: `<prefix><topic>.p<partition>` and
    /// `<prefix><topic>.partitions`. At most 40 bytes of `[A-Za-z0-9._-]`, not starting with
    /// `amq.` (reserved by RabbitMQ). Default `herald.`. Deployments sharing a vhost use
    /// different prefixes, chosen so that none is a prefix of another.
    pub prefix: String,
    /// Longest wait for the TCP connection and AMQP handshake. Default 5 seconds.
    pub connect_timeout: Duration,
    /// Longest wait for any one broker operation (a declare, a batch's confirms, an end marker)
    /// before it fails with [`BrokerError::Unavailable`]. Default 30 seconds.
    pub operation_timeout: Duration,
    /// How many unacknowledged deliveries RabbitMQ sends a reader ahead (`basic.qos`; streams
    /// need one). Readers ack as they go, so this bounds memory, not correctness. Default 500.
    pub prefetch: u16,
}

impl RabbitMqOptions {
    /// The defaults, with `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "herald.".to_owned(),
            connect_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
            prefetch: 500,
        }
    }
}

impl fmt::Debug for RabbitMqOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqOptions")
            .field("url", &redact_url(&self.url))
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("prefetch", &self.prefetch)
            .finish()
    }
}

/// The RabbitMQ backend of [`Log`]. See the [module docs](self).
#[derive(Clone)]
pub struct RabbitMqLog {
    inner: Arc<Inner>,
}

impl fmt::Debug for RabbitMqLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqLog")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

/// What the log and its readers share.
struct Inner {
    options: RabbitMqOptions,
    uri: AMQPUri,
    link: Mutex<Link>,
}

/// The current connection and the publishing channel on it, both replaced when they fail.
#[derive(Default)]
struct Link {
    connection: Option<Arc<Connection>>,
    publisher: Option<Channel>,
}

impl RabbitMqLog {
    /// Checks `options` and connects.
    ///
    /// Fails with [`BrokerError::Invalid`] for a malformed URL or prefix, and with
    /// [`BrokerError::Unavailable`] when RabbitMQ cannot be reached within
    /// [`RabbitMqOptions::connect_timeout`].
    pub async fn connect(options: RabbitMqOptions) -> Result<Self, BrokerError> {
        check_prefix(&options.prefix)?;
        if options.prefetch == 0 {
            return Err(BrokerError::Invalid(
                "the RabbitMQ reader prefetch must be at least 1".to_owned(),
            ));
        }
        let uri: AMQPUri = options.url.parse().map_err(|why| {
            BrokerError::Invalid(format!(
                "the RabbitMQ URL {} is invalid: {why}",
                redact_url(&options.url)
            ))
        })?;
        if uri.scheme != AMQPScheme::AMQP {
            return Err(BrokerError::Invalid(
                "amqps:// needs TLS, which this build of Herald does not include: use amqp://"
                    .to_owned(),
            ));
        }
        let inner = Arc::new(Inner {
            options,
            uri,
            link: Mutex::new(Link::default()),
        });
        inner.connection().await?;
        Ok(Self { inner })
    }

    /// Deletes every stream of `topic` and its partition-count marker, with their data
    /// ([`Log::delete_topic`]). Deleting a topic that does not exist succeeds.
    pub async fn delete_topic(&self, topic: &str) -> Result<(), BrokerError> {
        check_topic(topic)?;
        let inner = &self.inner;
        let mut channel = inner.channel().await?;
        for partition in 0u32.. {
            let name = inner.stream_name(topic, partition)?;
            let declared = inner
                .timed(
                    "checking a stream",
                    channel.queue_declare(
                        name.clone(),
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    ),
                )
                .await;
            match declared {
                Ok(_) => {}
                // NOT_FOUND: past the last partition. It closed the channel.
                Err(BrokerError::Invalid(_)) => {
                    channel = inner.channel().await?;
                    break;
                }
                Err(other) => return Err(other),
            }
            inner
                .timed(
                    "deleting a stream",
                    channel.queue_delete(name, QueueDeleteOptions::default()),
                )
                .await?;
        }
        let marker = inner.marker_name(topic)?;
        inner
            .timed(
                "deleting a partition-count marker",
                channel.queue_delete(marker, QueueDeleteOptions::default()),
            )
            .await?;
        Ok(())
    }
}

impl Inner {
    /// The open connection, opening a new one if there is none or it failed.
    async fn connection(&self) -> Result<Arc<Connection>, BrokerError> {
        let mut link = self.link.lock().await;
        self.connected(&mut link).await
    }

    async fn connected(&self, link: &mut Link) -> Result<Arc<Connection>, BrokerError> {
        if let Some(connection) = &link.connection {
            if connection.status().connected() {
                return Ok(connection.clone());
            }
            tracing::info!("the RabbitMQ connection was lost; reconnecting");
        }
        link.publisher = None;
        link.connection = None;
        let properties =
            ConnectionProperties::default().with_connection_name(LongString::from("herald"));
        let connecting = Connection::connect_uri(self.uri.clone(), properties);
        let where_to = format!("{}:{}", self.uri.authority.host, self.uri.authority.port);
        let connection = match tokio::time::timeout(self.options.connect_timeout, connecting).await
        {
            Ok(Ok(connection)) => Arc::new(connection),
            Ok(Err(err)) => {
                return Err(BrokerError::Unavailable(format!(
                    "cannot connect to RabbitMQ at {where_to}: {err}"
                )));
            }
            Err(_) => {
                return Err(BrokerError::Unavailable(format!(
                    "cannot connect to RabbitMQ at {where_to}: no answer within {:?}",
                    self.options.connect_timeout
                )));
            }
        };
        link.connection = Some(connection.clone());
        Ok(connection)
    }

    /// A new channel on the current connection.
    async fn channel(&self) -> Result<Channel, BrokerError> {
        let connection = self.connection().await?;
        self.timed("opening a channel", connection.create_channel())
            .await
    }

    /// The shared publishing channel (in confirm mode), opening it if needed.
    async fn publisher(&self) -> Result<Channel, BrokerError> {
        {
            let link = self.link.lock().await;
            if let (Some(connection), Some(channel)) = (&link.connection, &link.publisher)
                && connection.status().connected()
                && channel.status().connected()
            {
                return Ok(channel.clone());
            }
        }
        // Opened without holding the lock: a timeout in `timed` takes it to drop the connection.
        let connection = self.connection().await?;
        let channel = self
            .timed("opening a channel", connection.create_channel())
            .await?;
        self.timed(
            "enabling publisher confirms",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        let mut link = self.link.lock().await;
        if let Some(theirs) = &link.publisher
            && theirs.status().connected()
        {
            // Another append opened one meanwhile; ours closes when dropped.
            return Ok(theirs.clone());
        }
        link.publisher = Some(channel.clone());
        Ok(channel)
    }

    /// Forgets the publishing channel `channel` after it failed, so the next append opens a
    /// fresh one (a channel with abandoned confirms is not worth keeping).
    async fn drop_publisher(&self, channel: &Channel) {
        let mut link = self.link.lock().await;
        if link.publisher.as_ref() == Some(channel) {
            link.publisher = None;
        }
    }

    /// Forgets the connection after an operation timed out: it may be half-open, and the next
    /// operation is better served by a new one.
    async fn drop_connection(&self) {
        let mut link = self.link.lock().await;
        link.publisher = None;
        link.connection = None;
    }

    /// Runs `operation`, bounded by the operation timeout, mapping its error.
    async fn timed<T>(
        &self,
        what: &str,
        operation: impl Future<Output = lapin::Result<T>>,
    ) -> Result<T, BrokerError> {
        let limit = self.options.operation_timeout;
        match tokio::time::timeout(limit, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(from_lapin(what, &err)),
            Err(_) => {
                self.drop_connection().await;
                Err(BrokerError::Unavailable(format!(
                    "{what}: no answer from RabbitMQ within {limit:?}"
                )))
            }
        }
    }

    fn stream_name(&self, topic: &str, partition: u32) -> Result<ShortString, BrokerError> {
        queue_name(format!("{}{topic}.p{partition}", self.options.prefix))
    }

    fn marker_name(&self, topic: &str) -> Result<ShortString, BrokerError> {
        queue_name(format!("{}{topic}.partitions", self.options.prefix))
    }

    /// A new channel with a consumer on `queue` from `offset`, acking manually, its deliveries
    /// forwarded in order to the returned receiver.
    async fn subscribe(
        &self,
        queue: &ShortString,
        offset: AMQPValue,
    ) -> Result<Subscription, BrokerError> {
        let channel = self.channel().await?;
        self.timed(
            "setting the prefetch",
            channel.basic_qos(self.options.prefetch, BasicQosOptions::default()),
        )
        .await?;
        let mut arguments = FieldTable::default();
        arguments.insert(ShortString::from(OFFSET_HEADER), offset);
        let consumer = self
            .timed(
                "subscribing to a stream",
                channel.basic_consume(
                    queue.clone(),
                    ShortString::default(),
                    BasicConsumeOptions::default(),
                    arguments,
                ),
            )
            .await?;
        let (sender, deliveries) = mpsc::unbounded_channel();
        // The delegate is called in delivery order; it forwards at once (not in the future it
        // returns, which lapin spawns) so the order is kept.
        consumer.set_delegate(move |delivery: DeliveryResult| {
            let _closed = sender.send(delivery);
            std::future::ready(())
        });
        Ok(Subscription {
            channel,
            _consumer: consumer,
            deliveries,
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

impl Log for RabbitMqLog {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    fn ensure_topic<'a>(
        &'a self,
        topic: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            check_topic(topic)?;
            if partitions == 0 {
                return Err(BrokerError::Invalid(format!(
                    "topic {topic} needs at least one partition"
                )));
            }
            let inner = &self.inner;
            let marker = inner.marker_name(topic)?;
            // Checked up front so that a too-long name fails before anything is created.
            inner.stream_name(topic, partitions - 1)?;
            // A declare that fails closes its channel, so use one of our own.
            let channel = inner.channel().await?;
            let mut marker_arguments = FieldTable::default();
            marker_arguments.insert(
                ShortString::from("x-queue-type"),
                AMQPValue::LongString(LongString::from("quorum")),
            );
            marker_arguments.insert(
                ShortString::from("x-max-length"),
                AMQPValue::LongLongInt(i64::from(partitions)),
            );
            inner
                .timed(
                    "declaring a topic's partition-count marker",
                    channel.queue_declare(marker, durable(), marker_arguments),
                )
                .await
                .map_err(|err| match err {
                    BrokerError::Invalid(why) => BrokerError::Invalid(format!(
                        "topic {topic} exists with another partition count than {partitions} \
                         ({why})"
                    )),
                    other => other,
                })?;
            let mut stream_arguments = FieldTable::default();
            stream_arguments.insert(
                ShortString::from("x-queue-type"),
                AMQPValue::LongString(LongString::from("stream")),
            );
            for partition in 0..partitions {
                let name = inner.stream_name(topic, partition)?;
                inner
                    .timed(
                        "declaring a stream",
                        channel.queue_declare(name, durable(), stream_arguments.clone()),
                    )
                    .await?;
            }
            Ok(())
        })
    }

    fn append<'a>(
        &'a self,
        topic: &'a str,
        records: &'a [(u32, Message)],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            check_topic(topic)?;
            if records.is_empty() {
                return Ok(());
            }
            let inner = &self.inner;
            // Everything is checked and encoded before the first publish.
            let mut encoded = Vec::with_capacity(records.len());
            for (partition, message) in records {
                encoded.push((
                    *partition,
                    inner.stream_name(topic, *partition)?,
                    properties(message)?,
                ));
            }
            let channel = inner.publisher().await?;
            let outcome = publish_all(inner, &channel, topic, records, encoded).await;
            if outcome.is_err() {
                inner.drop_publisher(&channel).await;
            }
            outcome
        })
    }

    fn end<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
    ) -> BoxFuture<'a, Result<Position, BrokerError>> {
        Box::pin(async move {
            check_topic(topic)?;
            let inner = &self.inner;
            let queue = inner.stream_name(topic, partition)?;
            let mut subscription = inner
                .subscribe(&queue, AMQPValue::LongString(LongString::from("next")))
                .await
                .map_err(|err| missing_partition(err, topic, partition))?;
            // Published on the consumer's channel, so RabbitMQ attaches the consumer first.
            let id = uuid::Uuid::now_v7().simple().to_string();
            let mut headers = FieldTable::default();
            headers.insert(
                ShortString::from(END_MARKER_HEADER),
                AMQPValue::LongString(LongString::from(id.as_str())),
            );
            let marker = BasicProperties::default()
                .with_delivery_mode(PERSISTENT)
                .with_message_id(ShortString::from(id.as_str()))
                .with_headers(headers);
            inner
                .timed(
                    "publishing an end marker",
                    subscription.channel.basic_publish(
                        ShortString::default(),
                        queue.clone(),
                        BasicPublishOptions::default(),
                        &[],
                        marker,
                    ),
                )
                .await?;
            let deadline = Instant::now() + inner.options.operation_timeout;
            loop {
                let delivery =
                    match tokio::time::timeout_at(deadline, subscription.deliveries.recv()).await {
                        Err(_) => {
                            return Err(BrokerError::Unavailable(format!(
                                "the end marker of {queue} did not come back within {:?}",
                                inner.options.operation_timeout
                            )));
                        }
                        Ok(None | Some(Ok(None))) => {
                            return Err(BrokerError::Unavailable(format!(
                                "RabbitMQ cancelled the consumer of {queue}"
                            )));
                        }
                        Ok(Some(Err(err))) => {
                            return Err(from_lapin("reading an end marker", &err));
                        }
                        Ok(Some(Ok(Some(delivery)))) => delivery,
                    };
                // Acked one by one, so a busy stream cannot run the consumer out of credit.
                let _ = delivery.acker.ack(BasicAckOptions::default()).await;
                if end_marker(&delivery) == Some(id.as_bytes()) {
                    let offset = offset(&delivery).ok_or_else(|| {
                        BrokerError::Unavailable(format!(
                            "a delivery from {queue} has no {OFFSET_HEADER} header"
                        ))
                    })?;
                    return Ok(offset + 1);
                }
            }
        })
    }

    fn reader<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        from: Position,
    ) -> BoxFuture<'a, Result<Box<dyn PartitionReader>, BrokerError>> {
        Box::pin(async move {
            check_topic(topic)?;
            let queue = self.inner.stream_name(topic, partition)?;
            let mut reader = RabbitMqReader {
                inner: self.inner.clone(),
                queue,
                next: from,
                subscription: None,
                pending: None,
            };
            reader
                .resubscribe()
                .await
                .map_err(|err| missing_partition(err, topic, partition))?;
            Ok(Box::new(reader) as Box<dyn PartitionReader>)
        })
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(RabbitMqLog::delete_topic(self, topic))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            // Opening a channel is a round trip to the broker.
            let channel = self.inner.channel().await?;
            drop(channel);
            Ok(())
        })
    }
}

/// Publishes every record on `channel`, then waits for all the confirms.
async fn publish_all(
    inner: &Inner,
    channel: &Channel,
    topic: &str,
    records: &[(u32, Message)],
    encoded: Vec<(u32, ShortString, BasicProperties)>,
) -> Result<(), BrokerError> {
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let mut confirms = Vec::with_capacity(encoded.len());
    for ((partition, queue, properties), (_, message)) in encoded.into_iter().zip(records) {
        let confirm = inner
            .timed(
                "publishing",
                channel.basic_publish(
                    ShortString::default(),
                    queue,
                    mandatory,
                    &message.payload,
                    properties,
                ),
            )
            .await?;
        confirms.push((partition, confirm));
    }
    let limit = inner.options.operation_timeout;
    let deadline = Instant::now() + limit;
    for (partition, confirm) in confirms {
        let confirmation = match tokio::time::timeout_at(deadline, confirm).await {
            Ok(Ok(confirmation)) => confirmation,
            Ok(Err(err)) => return Err(from_lapin("waiting for a publisher confirm", &err)),
            Err(_) => {
                inner.drop_connection().await;
                return Err(BrokerError::Unavailable(format!(
                    "RabbitMQ did not confirm an append to {topic} within {limit:?}"
                )));
            }
        };
        match confirmation {
            Confirmation::Ack(None) => {}
            Confirmation::NotRequested => {
                return Err(BrokerError::Unavailable(format!(
                    "an append to {topic} went out on a channel without publisher confirms"
                )));
            }
            Confirmation::Ack(Some(_returned)) => {
                return Err(BrokerError::Invalid(format!(
                    "partition {partition} of topic {topic} does not exist (ensure_topic creates it)"
                )));
            }
            Confirmation::Nack(_) => {
                return Err(BrokerError::Unavailable(format!(
                    "RabbitMQ refused (nacked) an append to partition {partition} of {topic}"
                )));
            }
        }
    }
    Ok(())
}

/// A consumer on its own channel; dropping it closes the channel, which ends the consumer.
struct Subscription {
    channel: Channel,
    _consumer: lapin::Consumer,
    deliveries: mpsc::UnboundedReceiver<DeliveryResult>,
    /// The runtime the connection runs on, to close the channel from `drop`.
    runtime: tokio::runtime::Handle,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // lapin keeps a consumer with a delegate (and so its channel) open after every handle
        // is dropped; close the channel explicitly, or each reader would leak one.
        let channel = self.channel.clone();
        self.runtime.spawn(async move {
            if channel.status().connected() {
                let _closed = channel.close(200, ShortString::from("OK")).await;
            }
        });
    }
}

/// Reads one stream. See the [module docs](self).
struct RabbitMqReader {
    inner: Arc<Inner>,
    queue: ShortString,
    /// The position after the last record returned (or the start): deliveries before it are
    /// skipped, and a new subscription starts there.
    next: Position,
    subscription: Option<Subscription>,
    /// An error met after some records were collected, returned by the next read.
    pending: Option<BrokerError>,
}

impl fmt::Debug for RabbitMqReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitMqReader")
            .field("queue", &self.queue.as_str())
            .field("next", &self.next)
            .field("subscribed", &self.subscription.is_some())
            .finish_non_exhaustive()
    }
}

impl RabbitMqReader {
    async fn resubscribe(&mut self) -> Result<(), BrokerError> {
        self.subscription = None;
        let from = i64::try_from(self.next)
            .map_err(|_| BrokerError::Invalid(format!("position {} is out of range", self.next)))?;
        let subscription = self
            .inner
            .subscribe(&self.queue, AMQPValue::LongLongInt(from))
            .await?;
        self.subscription = Some(subscription);
        Ok(())
    }

    async fn read_some(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BrokerError> {
        if let Some(error) = self.pending.take() {
            return Err(error);
        }
        if max == 0 {
            return Ok(Vec::new());
        }
        if self.subscription.is_none() {
            self.resubscribe().await?;
        }
        let Some(subscription) = self.subscription.as_mut() else {
            return Err(BrokerError::Unavailable(format!(
                "no consumer on {}",
                self.queue
            )));
        };
        let deadline = Instant::now() + wait;
        let mut records = Vec::new();
        let mut last: Option<Delivery> = None;
        let mut failure = None;
        while records.len() < max {
            let next = if records.is_empty() {
                match tokio::time::timeout_at(deadline, subscription.deliveries.recv()).await {
                    Ok(next) => next,
                    Err(_) => break,
                }
            } else {
                match subscription.deliveries.try_recv() {
                    Ok(next) => Some(next),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                }
            };
            let delivery = match next {
                Some(Ok(Some(delivery))) => delivery,
                Some(Err(err)) => {
                    failure = Some(from_lapin("reading a stream", &err));
                    break;
                }
                None | Some(Ok(None)) => {
                    failure = Some(BrokerError::Unavailable(format!(
                        "RabbitMQ cancelled the consumer of {}",
                        self.queue
                    )));
                    break;
                }
            };
            let decoded = match offset(&delivery) {
                None => Err(BrokerError::Invalid(format!(
                    "a delivery from {} has no {OFFSET_HEADER} header",
                    self.queue
                ))),
                // Before the start (the rest of the first chunk) or already returned.
                Some(position) if position < self.next => Ok(None),
                Some(position) => {
                    self.next = position + 1;
                    if end_marker(&delivery).is_some() {
                        Ok(None)
                    } else {
                        decode(&delivery).map(|message| Some(Record { position, message }))
                    }
                }
            };
            last = Some(delivery);
            match decoded {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(BrokerError::Invalid(why)) => {
                    failure = Some(BrokerError::Invalid(format!(
                        "{why} (at position {} of {})",
                        self.next.saturating_sub(1),
                        self.queue
                    )));
                    break;
                }
                Err(other) => {
                    failure = Some(other);
                    break;
                }
            }
        }
        if let Some(delivery) = last {
            // Returns the credit for everything up to here; the records are ours either way.
            let acked = tokio::time::timeout(
                self.inner.options.operation_timeout,
                delivery.acker.ack(BasicAckOptions { multiple: true }),
            )
            .await;
            if !matches!(acked, Ok(Ok(_))) {
                tracing::warn!(queue = %self.queue, "could not ack stream deliveries; resubscribing");
                self.subscription = None;
            }
        }
        if let Some(error) = failure {
            if !matches!(error, BrokerError::Invalid(_)) {
                // The consumer is gone: subscribe again at the next read.
                self.subscription = None;
            }
            if records.is_empty() {
                return Err(error);
            }
            self.pending = Some(error);
        }
        Ok(records)
    }
}

impl PartitionReader for RabbitMqReader {
    fn read(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Record>, BrokerError>> {
        Box::pin(self.read_some(max, wait))
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// The AMQP properties carrying `message`'s id, key and headers.
fn properties(message: &Message) -> Result<BasicProperties, BrokerError> {
    let id = ShortString::try_new(message.id.as_str()).map_err(|_| {
        BrokerError::Invalid(format!(
            "message id {:?}… is longer than RabbitMQ's 255 bytes",
            message.id.chars().take(32).collect::<String>()
        ))
    })?;
    let mut headers = FieldTable::default();
    if let Some(key) = &message.key {
        headers.insert(
            ShortString::from(KEY_HEADER),
            AMQPValue::LongString(LongString::from(key.as_str())),
        );
    }
    let pairs = serde_json::to_vec(&message.headers)
        .map_err(|err| BrokerError::Invalid(format!("cannot encode the headers: {err}")))?;
    headers.insert(
        ShortString::from(HEADERS_HEADER),
        AMQPValue::LongString(LongString::from(pairs)),
    );
    Ok(BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_message_id(id)
        .with_headers(headers))
}

/// The message in `delivery`, or `Invalid` when it is not one Herald appended.
fn decode(delivery: &Delivery) -> Result<Message, BrokerError> {
    let properties = &delivery.properties;
    let id = properties
        .message_id()
        .as_ref()
        .ok_or_else(|| BrokerError::Invalid("a record without a message id".to_owned()))?
        .as_str()
        .to_owned();
    let headers = properties.headers().as_ref();
    let field = |name: &str| headers.and_then(|table| table.inner().get(name));
    let key = field(KEY_HEADER)
        .map(|value| text(value).ok_or("its key is not a string"))
        .transpose()
        .map_err(|why| BrokerError::Invalid(format!("record {id}: {why}")))?;
    let pairs = match field(HEADERS_HEADER) {
        None => Vec::new(),
        Some(value) => text(value)
            .and_then(|json| serde_json::from_str::<Vec<(String, String)>>(&json).ok())
            .ok_or_else(|| {
                BrokerError::Invalid(format!(
                    "record {id}: {HEADERS_HEADER} is not a JSON array of [name, value] strings"
                ))
            })?,
    };
    Ok(Message {
        id,
        key,
        headers: pairs,
        payload: Bytes::copy_from_slice(&delivery.data),
    })
}

/// A string header value: a long string, or a byte array (what an AMQP 1.0 binary becomes),
/// holding UTF-8.
fn text(value: &AMQPValue) -> Option<String> {
    let bytes = match value {
        AMQPValue::LongString(value) => value.as_bytes(),
        AMQPValue::ByteArray(value) => value.as_slice(),
        AMQPValue::ShortString(value) => value.as_str().as_bytes(),
        _ => return None,
    };
    String::from_utf8(bytes.to_vec()).ok()
}

/// The stream offset RabbitMQ put on `delivery`.
fn offset(delivery: &Delivery) -> Option<Position> {
    let value = delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(OFFSET_HEADER)?;
    match value {
        AMQPValue::LongLongInt(offset) => u64::try_from(*offset).ok(),
        AMQPValue::LongInt(offset) => u64::try_from(*offset).ok(),
        AMQPValue::LongUInt(offset) => Some(u64::from(*offset)),
        AMQPValue::Timestamp(offset) => Some(*offset),
        _ => None,
    }
}

/// The id of the end marker in `delivery`, if it is one.
fn end_marker(delivery: &Delivery) -> Option<&[u8]> {
    match delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(END_MARKER_HEADER)?
    {
        AMQPValue::LongString(id) => Some(id.as_bytes()),
        AMQPValue::ByteArray(id) => Some(id.as_slice()),
        _ => None,
    }
}

/// Topic names are non-empty, at most 200 bytes of `[A-Za-z0-9._-]` (the [`Log`] contract);
/// checked again here because they become queue names.
fn check_topic(topic: &str) -> Result<(), BrokerError> {
    if topic.is_empty() || topic.len() > MAX_TOPIC_LEN || !is_name(topic) {
        return Err(BrokerError::Invalid(format!(
            "invalid topic name {topic:?}: 1 to {MAX_TOPIC_LEN} bytes of [A-Za-z0-9._-]"
        )));
    }
    Ok(())
}

fn check_prefix(prefix: &str) -> Result<(), BrokerError> {
    if prefix.is_empty()
        || prefix.len() > MAX_PREFIX_LEN
        || !is_name(prefix)
        || prefix.starts_with("amq.")
    {
        return Err(BrokerError::Invalid(format!(
            "invalid RabbitMQ queue prefix {prefix:?}: 1 to {MAX_PREFIX_LEN} bytes of \
             [A-Za-z0-9._-], not starting with amq."
        )));
    }
    Ok(())
}

fn is_name(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn queue_name(name: String) -> Result<ShortString, BrokerError> {
    ShortString::try_new(name)
        .map_err(|err| BrokerError::Invalid(format!("the RabbitMQ queue name is too long: {err}")))
}

/// A NOT_FOUND from subscribing to a stream means the partition does not exist.
fn missing_partition(err: BrokerError, topic: &str, partition: u32) -> BrokerError {
    match err {
        BrokerError::Invalid(why) => BrokerError::Invalid(format!(
            "partition {partition} of topic {topic} does not exist ({why})"
        )),
        other => other,
    }
}

/// Maps a client error: what the broker refuses for bad input (a missing queue, mismatched
/// arguments, a too-large message) is `Invalid`, everything else `Unavailable`.
fn from_lapin(what: &str, err: &lapin::Error) -> BrokerError {
    if let ErrorKind::ProtocolError(amqp) = err.kind()
        && matches!(
            amqp.kind(),
            AMQPErrorKind::Soft(
                AMQPSoftError::NOTFOUND
                    | AMQPSoftError::PRECONDITIONFAILED
                    | AMQPSoftError::CONTENTTOOLARGE
            )
        )
    {
        return BrokerError::Invalid(format!("{what}: {amqp}"));
    }
    BrokerError::Unavailable(format!("{what}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(check_topic("orders.v1_a-b").is_ok());
        assert!(check_topic("").is_err());
        assert!(check_topic("a/b").is_err());
        assert!(check_topic(&"a".repeat(201)).is_err());
        assert!(check_prefix("herald.").is_ok());
        assert!(check_prefix("amq.x").is_err());
        assert!(check_prefix("").is_err());
    }
}
