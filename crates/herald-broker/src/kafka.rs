//! The Kafka backend of [`Log`]: a Herald topic is a Kafka topic, a Herald partition is a
//! Kafka partition, a position is a Kafka offset. It speaks the Kafka protocol through
//! librdkafka (the `rdkafka` crate, with its bundled librdkafka, no TLS), so it works with
//! Apache Kafka and with compatible brokers (Redpanda, tansu…).
//!
//! # Names
//!
//! Herald topic `orders` is Kafka topic `<prefix>orders`, `herald.orders` with the default
//! [`KafkaOptions::topic_prefix`]. The name is otherwise kept as it is, so it reads the same
//! in Kafka tools. Herald topic names (`[A-Za-z0-9._-]`, at most 200 bytes) are valid Kafka
//! names; the prefix may be at most 49 bytes so that every name fits Kafka's 249. One caveat:
//! Kafka reports metrics per topic with `.` replaced by `_`, so Apache Kafka refuses to create
//! a topic whose name differs from an existing one only by `.` against `_` (`herald.a.b` after
//! `herald.a_b`). Such an [`ensure_topic`](Log::ensure_topic) fails with
//! [`BrokerError::Invalid`]: give such topics names that differ in other characters.
//!
//! [`ensure_topic`](Log::ensure_topic) creates the topic with the admin API (`CreateTopics`)
//! with the broker's default replication factor and topic configuration (retention
//! included: Herald sets none), and treats `TopicAlreadyExists` as success, so any number of
//! processes may race to create it. It then waits until the topic shows in the metadata and
//! checks its partition count: a topic that exists with another count is
//! [`BrokerError::Invalid`] (Herald never adds partitions; Kafka cannot remove any).
//!
//! # Records
//!
//! [`append`](Log::append) produces every message to its explicit partition: the Kafka key
//! is the message key (none when it has none), the value is the payload, and the headers
//! are, in this order:
//!
//! 1. `herald-id`: the message id;
//! 2. `herald-has-key`: `true` or `false`, so that an empty key (`Some("")`) and no key
//!    (`None`) stay apart whatever the broker does with an empty Kafka key;
//! 3. every message header, with its name and value unchanged and in order.
//!
//! Herald's own headers are recognised by their place, not their name, so a message may
//! carry a header called `herald-id` too. A header name may not contain a NUL character
//! (librdkafka reads names as C strings): such a message is [`BrokerError::Invalid`].
//!
//! The producer is idempotent with `acks=all`: within a partition, records land in append
//! order and a retry inside librdkafka never duplicates one. An append sends the whole batch
//! before it waits for the delivery reports, so a batch is pipelined, and returns once every
//! record is acknowledged by all in-sync replicas. An append that fails for any reason but
//! invalid records returns [`BrokerError::Unavailable`], and the next one uses a new
//! producer (a new producer id): librdkafka gets over most failures by itself, but not over
//! a fatal error of the idempotent producer, nor over a broker that forgot the producer id
//! (tansu after a restart).
//!
//! A record whose headers do not start with Herald's two (something other than Herald wrote
//! to the topic), or whose key, id or a header is not UTF-8, is not a Herald record.
//! [`PartitionReader::read`] returns the records before it, then fails once with
//! [`BrokerError::Invalid`] naming its topic, partition and offset, and goes on after it if
//! it is called again: the caller chooses between stopping and skipping. A new reader from
//! that position meets it again.
//!
//! # Reading
//!
//! A reader is its own librdkafka consumer with the one partition assigned at the position
//! (`assign`, not `subscribe`): no consumer group membership and no commits. librdkafka
//! needs a `group.id` to assign partitions, so readers carry `herald-log-reader`, but
//! auto-commit is off and Herald never commits: its positions live in its own database. A
//! position before the log start (records removed by retention) starts at the first record
//! still there; a position past the end sees the records from that position on (librdkafka
//! resets to the start and the reader skips what is before the position). A consumer that
//! reports an error (a broker that cannot be reached…) is closed, and the next read opens a
//! new one after the last record returned.
//!
//! `end` is the partition's high watermark: with `acks=all`, every acknowledged record is
//! below it.
//!
//! # Time bounds
//!
//! librdkafka retries internally; every operation here is bounded by
//! [`KafkaOptions::request_timeout`]: it is the metadata, admin and watermark timeout, the
//! socket and connection set-up timeouts and the delivery timeout (`message.timeout.ms`) of
//! every record. A broker that cannot be reached surfaces as [`BrokerError::Unavailable`]
//! within about that time, [`KafkaLog::connect`] included.
//!
//! # What survives a restart
//!
//! Everything lives in Kafka: the topics and their records, as durable as the cluster's
//! replication makes them. Herald keeps no state in Kafka (no consumer offsets), and a Herald
//! process keeps none of its own beyond a cache of partition counts. A new producer (each
//! [`KafkaLog`]) has a new producer id, so a batch re-appended after a crash may be in the
//! log twice: consumers deduplicate by message id.
//!
//! # tansu
//!
//! Herald's tests run on tansu 0.6, a Kafka-compatible broker, which differs from Kafka in
//! ways that matter here:
//!
//! - A fetch from an offset inside a record batch returns only the batches that start at or
//!   after it, and `ListOffsets` (latest) answers the first offset of the last batch plus
//!   one, so `end` is wrong after a batch of several records. Set
//!   [`KafkaOptions::one_record_per_batch`] against tansu: every offset is then a batch start.
//! - After tansu restarts (in-memory storage), it rejects the idempotent producer's id, and
//!   answers a fetch for a topic it lost with a zero topic id that makes librdkafka 2.12
//!   crash the process (a NULL topic name reaches `strcmp` in
//!   `rd_kafka_metadata_update_op`). Herald replaces the producer after a failed append, and
//!   a reader closes its consumer at the first error, so a consumer rarely lives across such
//!   a restart; the crash stays possible if the restart falls between two reads.
//!
//! # Deleting a topic
//!
//! [`delete_topic`](Log::delete_topic) deletes the Kafka topic with the admin API
//! (`DeleteTopics`; an unknown topic is success), waits until the metadata no longer shows it,
//! and then replaces the producer, whose cached partitions and per-partition sequence numbers
//! belong to the old topic: a topic made again under the name starts empty at offset 0, with
//! any partition count. Producers of other processes keep the old topic's metadata until they
//! refresh it, so delete only topics that no process uses any more. That matters more on
//! tansu 0.6: a consumer that fetches from a deleted topic there gets the answer that crashes
//! librdkafka (above). So before deleting, `delete_topic` waits (up to
//! [`KafkaOptions::request_timeout`]) until every reader of the topic in this process has
//! closed its consumer, and fails with [`BrokerError::Invalid`] when some stay open; readers in
//! other processes it cannot see.
//!
//! # Logs
//!
//! librdkafka's log lines and client errors go to `tracing` with target `librdkafka`.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, FromClientConfigAndContext, RDKafkaLogLevel};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::log::{Log, PartitionReader, Position, Record};
use crate::{BoxFuture, BrokerError, Message};

/// The header that carries the message id: always a record's first header.
const ID_HEADER: &str = "herald-id";
/// The header that says whether the message has a key: always a record's second header.
const HAS_KEY_HEADER: &str = "herald-has-key";
/// Kafka's longest topic name.
const MAX_KAFKA_NAME: usize = 249;
/// Herald's longest topic name (see [`Log`]).
const MAX_HERALD_TOPIC: usize = 200;
/// The group id readers carry; they never join the group nor commit.
const READER_GROUP: &str = "herald-log-reader";

/// How to reach Kafka. Build it with [`KafkaOptions::new`] and change what you need.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaOptions {
    /// The bootstrap brokers, `host:port` separated by commas (`bootstrap.servers`).
    pub bootstrap_servers: String,
    /// Put before every Herald topic name to make its Kafka topic name: at most 49 bytes of
    /// `[A-Za-z0-9._-]`. Default `herald.`.
    pub topic_prefix: String,
    /// The longest any broker operation may take before it fails with
    /// [`BrokerError::Unavailable`], from 2 s to 300 s: metadata, topic creation,
    /// watermarks, socket and connection set-up timeouts, and the delivery timeout of every
    /// appended record. Default 10 s.
    pub request_timeout: Duration,
    /// Sends every record in a record batch of its own (`batch.num.messages=1`), for brokers
    /// that only read from and report ends at batch boundaries, such as tansu 0.6 (see the
    /// module docs). It costs throughput on Kafka, which does not need it. Default `false`.
    pub one_record_per_batch: bool,
}

impl KafkaOptions {
    /// The defaults, with `bootstrap_servers` (`host:port[,host:port…]`).
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            topic_prefix: "herald.".to_owned(),
            request_timeout: Duration::from_secs(10),
            one_record_per_batch: false,
        }
    }

    /// Every problem with these options, in one message.
    fn validate(&self) -> Result<(), BrokerError> {
        let mut problems = Vec::new();
        if self.bootstrap_servers.trim().is_empty() {
            problems.push("bootstrap_servers is empty".to_owned());
        }
        if self.topic_prefix.len() > MAX_KAFKA_NAME - MAX_HERALD_TOPIC {
            problems.push(format!(
                "topic_prefix is {} bytes long, more than {}",
                self.topic_prefix.len(),
                MAX_KAFKA_NAME - MAX_HERALD_TOPIC
            ));
        }
        if !self.topic_prefix.bytes().all(is_name_byte) {
            problems.push(format!(
                "topic_prefix {:?} has characters other than [A-Za-z0-9._-]",
                self.topic_prefix
            ));
        }
        if !(Duration::from_secs(2)..=Duration::from_secs(300)).contains(&self.request_timeout) {
            problems.push(format!(
                "request_timeout {:?} is not between 2 s and 300 s",
                self.request_timeout
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(BrokerError::Invalid(format!(
                "invalid Kafka options: {}",
                problems.join("; ")
            )))
        }
    }

    fn timeout_ms(&self) -> String {
        self.request_timeout.as_millis().to_string()
    }

    /// What every client (admin, producer, consumer) shares.
    fn client_config(&self) -> ClientConfig {
        let timeout = self.timeout_ms();
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", "herald")
            .set("socket.timeout.ms", &timeout)
            .set("socket.connection.setup.timeout.ms", &timeout)
            .set("allow.auto.create.topics", "false")
            // Brokers close idle connections; that is not worth a log line.
            .set("log.connection.close", "false")
            .set_log_level(RDKafkaLogLevel::Info);
        config
    }

    fn producer_config(&self) -> ClientConfig {
        let timeout = self.timeout_ms();
        let mut config = self.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", &timeout)
            .set("request.timeout.ms", &timeout);
        if self.one_record_per_batch {
            config.set("batch.num.messages", "1");
        }
        config
    }

    fn consumer_config(&self) -> ClientConfig {
        let mut config = self.client_config();
        config
            .set("group.id", READER_GROUP)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false")
            .set("auto.offset.reset", "earliest")
            // Each reader prefetches; keep that small, there may be many readers.
            .set("queued.min.messages", "1000")
            .set("queued.max.messages.kbytes", "8192");
        config
    }
}

fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-')
}

/// Sends librdkafka's log lines and client errors to `tracing`.
#[derive(Debug, Clone, Copy, Default)]
struct TracingContext;

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}");
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice => tracing::info!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Info => tracing::debug!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Debug => tracing::trace!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Mostly a broker that cannot be reached; librdkafka retries, and the operations
        // that it makes fail say so themselves.
        tracing::warn!(target: "librdkafka", error = %error, reason, "Kafka client error");
    }
}

impl ConsumerContext for TracingContext {}

/// The Kafka [`Log`]. See the [module docs](self).
pub struct KafkaLog {
    inner: Arc<Inner>,
}

struct Inner {
    options: KafkaOptions,
    /// Creates topics, and answers metadata and watermark queries.
    admin: AdminClient<TracingContext>,
    /// Replaced when the idempotent producer fails fatally.
    producer: Mutex<CurrentProducer>,
    consumer_config: ClientConfig,
    /// Partition counts of the Kafka topics seen so far. Kafka never removes partitions, so
    /// a count can only be too low, and a partition beyond it is looked up again.
    partitions: Mutex<HashMap<String, u32>>,
    /// How many readers' consumers are open on each Kafka topic, counted down once a
    /// consumer is closed, so that [`Log::delete_topic`] can wait for them.
    consumers: Mutex<HashMap<String, Arc<AtomicUsize>>>,
}

struct CurrentProducer {
    generation: u64,
    producer: FutureProducer<TracingContext>,
}

impl fmt::Debug for KafkaLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaLog")
            .field("bootstrap_servers", &self.inner.options.bootstrap_servers)
            .field("topic_prefix", &self.inner.options.topic_prefix)
            .finish_non_exhaustive()
    }
}

/// What the metadata says about one topic.
enum TopicState {
    Missing,
    Exists {
        partitions: u32,
    },
    /// It exists but is not ready to use yet (no leader…), or the answer was odd.
    NotReady(String),
}

impl KafkaLog {
    /// Makes the clients and checks that the cluster answers, within
    /// [`KafkaOptions::request_timeout`].
    ///
    /// # Errors
    /// [`BrokerError::Invalid`] for invalid options, [`BrokerError::Unavailable`] when the
    /// cluster does not answer in time.
    pub async fn connect(options: KafkaOptions) -> Result<Self, BrokerError> {
        options.validate()?;
        let admin = AdminClient::from_config_and_context(&options.client_config(), TracingContext)
            .map_err(|error| client_creation("admin", &error))?;
        let producer = new_producer(&options)?;
        let log = Self {
            inner: Arc::new(Inner {
                consumer_config: options.consumer_config(),
                options,
                admin,
                producer: Mutex::new(CurrentProducer {
                    generation: 0,
                    producer,
                }),
                partitions: Mutex::new(HashMap::new()),
                consumers: Mutex::new(HashMap::new()),
            }),
        };
        log.ping_cluster().await?;
        Ok(log)
    }

    /// The Kafka name of Herald topic `topic`.
    fn kafka_name(&self, topic: &str) -> Result<String, BrokerError> {
        if topic.is_empty() || !topic.bytes().all(is_name_byte) {
            return Err(BrokerError::Invalid(format!(
                "topic name {topic:?} is empty or has characters other than [A-Za-z0-9._-]"
            )));
        }
        let name = format!("{}{topic}", self.inner.options.topic_prefix);
        if name.len() > MAX_KAFKA_NAME {
            return Err(BrokerError::Invalid(format!(
                "Kafka topic name {name:?} is longer than {MAX_KAFKA_NAME} bytes"
            )));
        }
        if name == "." || name == ".." {
            return Err(BrokerError::Invalid(format!(
                "{name:?} is not a valid Kafka topic name"
            )));
        }
        Ok(name)
    }

    /// Runs a blocking librdkafka call off the async threads.
    async fn blocking<T, F>(&self, call: F) -> Result<T, BrokerError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, BrokerError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || call(&inner))
            .await
            .map_err(|error| {
                BrokerError::Unavailable(format!("a Kafka client call failed: {error}"))
            })?
    }

    async fn ping_cluster(&self) -> Result<(), BrokerError> {
        self.blocking(|inner| {
            let metadata = inner
                .admin
                .inner()
                .fetch_metadata(None, inner.options.request_timeout)
                .map_err(|error| {
                    BrokerError::Unavailable(format!(
                        "Kafka at {} did not answer: {error}",
                        inner.options.bootstrap_servers
                    ))
                })?;
            if metadata.brokers().is_empty() {
                return Err(BrokerError::Unavailable(format!(
                    "Kafka at {} answered with no brokers",
                    inner.options.bootstrap_servers
                )));
            }
            Ok(())
        })
        .await
    }

    async fn topic_state(&self, name: &str) -> Result<TopicState, BrokerError> {
        let name = name.to_owned();
        self.blocking(move |inner| {
            let metadata = inner
                .admin
                .inner()
                .fetch_metadata(Some(&name), inner.options.request_timeout)
                .map_err(|error| {
                    BrokerError::Unavailable(format!(
                        "Kafka metadata of topic {name} failed: {error}"
                    ))
                })?;
            let Some(topic) = metadata.topics().iter().find(|t| t.name() == name) else {
                return Ok(TopicState::NotReady(format!(
                    "the metadata did not list topic {name}"
                )));
            };
            match topic.error().map(RDKafkaErrorCode::from) {
                None => {}
                Some(
                    RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
                ) => {
                    return Ok(TopicState::Missing);
                }
                Some(code) => return Ok(TopicState::NotReady(format!("topic {name}: {code}"))),
            }
            let partitions = topic.partitions();
            match u32::try_from(partitions.len()) {
                Ok(0) => Ok(TopicState::NotReady(format!(
                    "topic {name} has no partitions yet"
                ))),
                Ok(count) => Ok(TopicState::Exists { partitions: count }),
                Err(_) => Ok(TopicState::NotReady(format!(
                    "topic {name} has too many partitions"
                ))),
            }
        })
        .await
    }

    /// The partition count of Kafka topic `name`, checking that `partition` is one of them.
    async fn check_partition(&self, name: &str, partition: u32) -> Result<i32, BrokerError> {
        let cached = lock(&self.inner.partitions).get(name).copied();
        let count = match cached {
            Some(count) if partition < count => count,
            _ => match self.topic_state(name).await? {
                TopicState::Exists { partitions } => {
                    lock(&self.inner.partitions).insert(name.to_owned(), partitions);
                    partitions
                }
                TopicState::Missing => {
                    return Err(BrokerError::Invalid(format!(
                        "Kafka topic {name} does not exist (ensure_topic creates it)"
                    )));
                }
                TopicState::NotReady(why) => return Err(BrokerError::Unavailable(why)),
            },
        };
        if partition >= count {
            return Err(BrokerError::Invalid(format!(
                "partition {partition} does not exist: Kafka topic {name} has {count}"
            )));
        }
        i32::try_from(partition)
            .map_err(|_| BrokerError::Invalid(format!("partition {partition} is too large")))
    }

    async fn ensure(&self, topic: &str, partitions: u32) -> Result<(), BrokerError> {
        let name = self.kafka_name(topic)?;
        let count = match i32::try_from(partitions) {
            Ok(count) if count > 0 => count,
            _ => {
                return Err(BrokerError::Invalid(format!(
                    "a topic needs from 1 to {} partitions, not {partitions}",
                    i32::MAX
                )));
            }
        };
        let timeout = self.inner.options.request_timeout;
        let deadline = Instant::now() + timeout;
        let mut created = false;
        loop {
            let why = match self.topic_state(&name).await? {
                TopicState::Exists { partitions: found } if found == partitions => {
                    lock(&self.inner.partitions).insert(name, found);
                    return Ok(());
                }
                TopicState::Exists { partitions: found } => {
                    return Err(BrokerError::Invalid(format!(
                        "Kafka topic {name} exists with {found} partitions, not {partitions}"
                    )));
                }
                TopicState::Missing if !created => {
                    self.create(&name, count).await?;
                    // Created now or by someone else: wait until the metadata shows it.
                    created = true;
                    continue;
                }
                TopicState::Missing => format!("topic {name} does not show in the metadata yet"),
                TopicState::NotReady(why) => why,
            };
            if Instant::now() >= deadline {
                return Err(BrokerError::Unavailable(format!(
                    "Kafka topic {name} was not ready within {timeout:?}: {why}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates Kafka topic `name`; success if it already exists.
    async fn create(&self, name: &str, partitions: i32) -> Result<(), BrokerError> {
        let timeout = self.inner.options.request_timeout;
        let options = AdminOptions::new()
            .request_timeout(Some(timeout))
            .operation_timeout(Some(timeout));
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(-1));
        let results = self
            .inner
            .admin
            .create_topics([&topic], &options)
            .await
            .map_err(|error| failed(&format!("creating Kafka topic {name}"), &error))?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, code)) => {
                    let what = format!("creating Kafka topic {name}");
                    return Err(match code {
                        RDKafkaErrorCode::InvalidTopic => BrokerError::Invalid(format!(
                            "{what}: the broker refused the name ({code}); Apache Kafka \
                             refuses a name that differs from an existing topic's only by \
                             '.' against '_'"
                        )),
                        _ => by_code(&what, code, &code.to_string()),
                    });
                }
            }
        }
        Ok(())
    }

    /// The count of open consumers of Kafka topic `name`, shared by its readers.
    fn open_consumers(&self, name: &str) -> Arc<AtomicUsize> {
        lock(&self.inner.consumers)
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Deletes Kafka topic `name` (success if it does not exist) and waits until the
    /// metadata no longer shows it, so that creating it again makes a new topic rather than
    /// finding the old one on its way out. First waits for this process's readers of the
    /// topic to close their consumers (see the module docs).
    async fn delete(&self, topic: &str) -> Result<(), BrokerError> {
        let name = self.kafka_name(topic)?;
        let timeout = self.inner.options.request_timeout;
        let open = self.open_consumers(&name);
        let deadline = Instant::now() + timeout;
        while open.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return Err(BrokerError::Invalid(format!(
                    "Kafka topic {name} still has {} readers after {timeout:?}: drop them \
                     (stop the topic's consumers) before deleting it",
                    open.load(Ordering::SeqCst)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        lock(&self.inner.partitions).remove(&name);
        let options = AdminOptions::new()
            .request_timeout(Some(timeout))
            .operation_timeout(Some(timeout));
        let what = format!("deleting Kafka topic {name}");
        let results = self
            .inner
            .admin
            .delete_topics(&[name.as_str()], &options)
            .await
            .map_err(|error| failed(&what, &error))?;
        for result in results {
            match result {
                Ok(_)
                | Err((
                    _,
                    RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic,
                )) => {}
                Err((_, code)) => return Err(by_code(&what, code, &code.to_string())),
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let why = match self.topic_state(&name).await? {
                TopicState::Missing => {
                    // The producer caches the topic's partitions and keeps sequence numbers
                    // per partition: a topic made again under this name needs a new one.
                    self.renew_producer();
                    return Ok(());
                }
                TopicState::Exists { .. } => format!("topic {name} still shows in the metadata"),
                TopicState::NotReady(why) => why,
            };
            if Instant::now() >= deadline {
                return Err(BrokerError::Unavailable(format!(
                    "Kafka topic {name} was not gone within {timeout:?}: {why}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Replaces the producer by a new one, whatever its generation.
    fn renew_producer(&self) {
        let old = {
            let mut current = lock(&self.inner.producer);
            match new_producer(&self.inner.options) {
                Ok(fresh) => {
                    current.generation += 1;
                    std::mem::replace(&mut current.producer, fresh)
                }
                Err(error) => {
                    tracing::error!(error = %error, "could not make a new Kafka producer");
                    return;
                }
            }
        };
        // Dropping a producer joins its threads: keep that off the async threads.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(move || drop(old));
        }
    }

    /// The producer in use, and its generation.
    fn producer(&self) -> (u64, FutureProducer<TracingContext>) {
        let current = lock(&self.inner.producer);
        (current.generation, current.producer.clone())
    }

    /// After a failed append: replaces the producer of `generation` unless the records were
    /// refused as invalid. librdkafka recovers from most failures by itself, but not from a
    /// fatal error, nor (against tansu) from a broker that forgot its producer id; a new
    /// producer costs little next to an append that failed.
    fn replace_after_failure(
        &self,
        generation: u64,
        producer: FutureProducer<TracingContext>,
        error: &BrokerError,
    ) {
        let fatal = producer.client().fatal_error();
        if fatal.is_none() && matches!(error, BrokerError::Invalid(_)) {
            return;
        }
        let old = {
            let mut current = lock(&self.inner.producer);
            if current.generation != generation {
                return;
            }
            let fresh = match new_producer(&self.inner.options) {
                Ok(fresh) => fresh,
                Err(error) => {
                    tracing::error!(error = %error, "could not make a new Kafka producer");
                    return;
                }
            };
            current.generation += 1;
            std::mem::replace(&mut current.producer, fresh)
        };
        match fatal {
            Some((code, reason)) => {
                tracing::error!(error = %code, reason, "the Kafka producer failed fatally; using a new one");
            }
            None => tracing::info!(error = %error, "a Kafka append failed; using a new producer"),
        }
        // Dropping a producer purges it and joins its threads: keep that off the async
        // threads.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn_blocking(move || drop((old, producer)));
        }
    }

    async fn append_all(&self, topic: &str, records: &[(u32, Message)]) -> Result<(), BrokerError> {
        if records.is_empty() {
            return Ok(());
        }
        let name = self.kafka_name(topic)?;
        // Check everything before sending anything.
        let mut partitions = Vec::with_capacity(records.len());
        let mut checked: HashMap<u32, i32> = HashMap::new();
        for (partition, message) in records {
            let kafka_partition = match checked.get(partition) {
                Some(p) => *p,
                None => {
                    let p = self.check_partition(&name, *partition).await?;
                    checked.insert(*partition, p);
                    p
                }
            };
            if let Some((header, _)) = message.headers.iter().find(|(n, _)| n.contains('\0')) {
                return Err(BrokerError::Invalid(format!(
                    "message {}: header name {header:?} contains a NUL character",
                    message.id
                )));
            }
            partitions.push(kafka_partition);
        }

        let (generation, producer) = self.producer();
        let outcome = self.send_all(&producer, &name, records, &partitions).await;
        if let Err(error) = &outcome {
            self.replace_after_failure(generation, producer, error);
        }
        outcome
    }

    /// Sends every record, then waits for every delivery report.
    async fn send_all(
        &self,
        producer: &FutureProducer<TracingContext>,
        name: &str,
        records: &[(u32, Message)],
        partitions: &[i32],
    ) -> Result<(), BrokerError> {
        let timeout = self.inner.options.request_timeout;
        let mut pending: VecDeque<DeliveryFuture> = VecDeque::with_capacity(records.len());
        for ((_, message), partition) in records.iter().zip(partitions) {
            let mut record = FutureRecord::<[u8], [u8]>::to(name)
                .partition(*partition)
                .payload(message.payload.as_ref())
                .headers(encode_headers(message));
            if let Some(key) = &message.key {
                record = record.key(key.as_bytes());
            }
            let queued_at = Instant::now();
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push_back(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // librdkafka's queue is full: wait for a delivery to make room.
                        record = back;
                        if let Some(oldest) = pending.pop_front() {
                            delivered(name, oldest.await)?;
                        } else if queued_at.elapsed() > timeout {
                            return Err(BrokerError::Unavailable(format!(
                                "the Kafka producer's queue stayed full for {timeout:?}"
                            )));
                        } else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                    Err((error, _)) => {
                        return Err(failed(&format!("producing to Kafka topic {name}"), &error));
                    }
                }
            }
        }
        for delivery in pending {
            delivered(name, delivery.await)?;
        }
        Ok(())
    }

    async fn high_watermark(&self, topic: &str, partition: u32) -> Result<Position, BrokerError> {
        let name = self.kafka_name(topic)?;
        let kafka_partition = self.check_partition(&name, partition).await?;
        self.blocking(move |inner| {
            let (_, high) = inner
                .admin
                .inner()
                .fetch_watermarks(&name, kafka_partition, inner.options.request_timeout)
                .map_err(|error| failed(&format!("the end of {name}/{partition}"), &error))?;
            Position::try_from(high).map_err(|_| {
                BrokerError::Unavailable(format!("Kafka gave {name}/{partition} the end {high}"))
            })
        })
        .await
    }

    async fn open_reader(
        &self,
        topic: &str,
        partition: u32,
        from: Position,
    ) -> Result<Box<dyn PartitionReader>, BrokerError> {
        let name = self.kafka_name(topic)?;
        let kafka_partition = self.check_partition(&name, partition).await?;
        let from = i64::try_from(from).map_err(|_| {
            BrokerError::Invalid(format!("position {from} is beyond any Kafka offset"))
        })?;
        let open = self.open_consumers(&name);
        let mut reader = KafkaReader {
            consumer: None,
            config: self.inner.consumer_config.clone(),
            name,
            partition,
            kafka_partition,
            next: from,
            pending_error: None,
            open,
        };
        reader.open()?;
        Ok(Box::new(reader))
    }
}

fn new_producer(options: &KafkaOptions) -> Result<FutureProducer<TracingContext>, BrokerError> {
    FutureProducer::from_config_and_context(&options.producer_config(), TracingContext)
        .map_err(|error| client_creation("producer", &error))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn encode_headers(message: &Message) -> OwnedHeaders {
    let has_key = if message.key.is_some() {
        "true"
    } else {
        "false"
    };
    let mut headers = OwnedHeaders::new_with_capacity(2 + message.headers.len())
        .insert(Header {
            key: ID_HEADER,
            value: Some(message.id.as_str()),
        })
        .insert(Header {
            key: HAS_KEY_HEADER,
            value: Some(has_key),
        });
    for (name, value) in &message.headers {
        headers = headers.insert(Header {
            key: name.as_str(),
            value: Some(value.as_str()),
        });
    }
    headers
}

/// The outcome of one delivery report.
fn delivered(name: &str, report: <DeliveryFuture as Future>::Output) -> Result<(), BrokerError> {
    match report {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((error, _))) => Err(failed(&format!("producing to Kafka topic {name}"), &error)),
        Err(_) => Err(BrokerError::Unavailable(
            "the Kafka producer went away before confirming".to_owned(),
        )),
    }
}

fn client_creation(which: &str, error: &KafkaError) -> BrokerError {
    BrokerError::Invalid(format!("cannot make the Kafka {which} client: {error}"))
}

/// The error of a failed operation: a bad request is `Invalid`, anything else `Unavailable`.
fn failed(what: &str, error: &KafkaError) -> BrokerError {
    let code = match error {
        KafkaError::AdminOp(code) => Some(*code),
        other => other.rdkafka_error_code(),
    };
    match code {
        Some(code) => by_code(what, code, &error.to_string()),
        None => BrokerError::Unavailable(format!("{what}: {error}")),
    }
}

fn by_code(what: &str, code: RDKafkaErrorCode, text: &str) -> BrokerError {
    match code {
        RDKafkaErrorCode::MessageSizeTooLarge
        | RDKafkaErrorCode::InvalidMessageSize
        | RDKafkaErrorCode::MessageBatchTooLarge
        | RDKafkaErrorCode::InvalidRecord
        | RDKafkaErrorCode::InvalidTopic
        | RDKafkaErrorCode::InvalidPartitions
        | RDKafkaErrorCode::InvalidReplicationFactor
        | RDKafkaErrorCode::PolicyViolation
        | RDKafkaErrorCode::UnknownPartition
        | RDKafkaErrorCode::UnknownTopic
        | RDKafkaErrorCode::InvalidArgument => BrokerError::Invalid(format!("{what}: {text}")),
        _ => BrokerError::Unavailable(format!("{what}: {text}")),
    }
}

impl Log for KafkaLog {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn ensure_topic<'a>(
        &'a self,
        topic: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.ensure(topic, partitions))
    }

    fn append<'a>(
        &'a self,
        topic: &'a str,
        records: &'a [(u32, Message)],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.append_all(topic, records))
    }

    fn end<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
    ) -> BoxFuture<'a, Result<Position, BrokerError>> {
        Box::pin(self.high_watermark(topic, partition))
    }

    fn reader<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        from: Position,
    ) -> BoxFuture<'a, Result<Box<dyn PartitionReader>, BrokerError>> {
        Box::pin(self.open_reader(topic, partition, from))
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.delete(topic))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(self.ping_cluster())
    }
}

/// Reads one Kafka partition with its own consumer.
///
/// After an error from its consumer (a broker that cannot be reached…), the reader closes the
/// consumer and opens a new one at its next position on the next read: a consumer is never
/// reused across a broker outage (see the module docs about tansu).
struct KafkaReader {
    /// `None` after an error, until the next read opens a new one.
    consumer: Option<StreamConsumer<TracingContext>>,
    config: ClientConfig,
    /// The Kafka topic.
    name: String,
    partition: u32,
    kafka_partition: i32,
    /// The offset after the last record returned or refused (`from` at first): the next
    /// consumer starts there, and records before it are skipped.
    next: i64,
    /// An error met after some records, returned by the next read.
    pending_error: Option<BrokerError>,
    /// The open consumers of the topic in this process (see `Inner::consumers`).
    open: Arc<AtomicUsize>,
}

impl fmt::Debug for KafkaReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaReader")
            .field("topic", &self.name)
            .field("partition", &self.partition)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

impl Drop for KafkaReader {
    fn drop(&mut self) {
        self.close();
    }
}

/// What one poll of the consumer gave.
enum Polled {
    Record(Record),
    /// Nothing to return (skipped, or an event that is not an error).
    Nothing,
    /// A record that is not Herald's: the reader goes on after it.
    Foreign(BrokerError),
    /// The consumer failed: the reader opens a new one.
    Failed(BrokerError),
}

impl KafkaReader {
    fn what(&self) -> String {
        format!("Kafka topic {} partition {}", self.name, self.partition)
    }

    /// Opens a consumer at `next`.
    fn open(&mut self) -> Result<(), BrokerError> {
        let consumer: StreamConsumer<TracingContext> =
            StreamConsumer::from_config_and_context(&self.config, TracingContext)
                .map_err(|error| client_creation("consumer", &error))?;
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&self.name, self.kafka_partition, Offset::Offset(self.next))
            .and_then(|()| consumer.assign(&assignment))
            .map_err(|error| failed(&format!("reading {}", self.what()), &error))?;
        self.consumer = Some(consumer);
        self.open.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// Closes the consumer, off the async threads (closing a librdkafka client joins its
    /// threads), and counts it out of the topic's open consumers once it is closed.
    fn close(&mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        let open = self.open.clone();
        let closing = move || {
            drop(consumer);
            open.fetch_sub(1, Ordering::SeqCst);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(closing)),
            Err(_) => closing(),
        }
    }

    async fn read_some(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BrokerError> {
        if max == 0 {
            return Err(BrokerError::Invalid(
                "a read of at most 0 records".to_owned(),
            ));
        }
        if let Some(error) = self.pending_error.take() {
            return Err(error);
        }
        if self.consumer.is_none() {
            self.open()?;
        }
        let what = self.what();
        let Self { consumer, next, .. } = self;
        let Some(active) = consumer.as_ref() else {
            return Ok(Vec::new());
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut records = Vec::new();
        let mut stopped = None;
        // Wait up to `wait` for the first record, then take what is already there.
        while records.len() < max {
            let received = if records.is_empty() {
                tokio::time::timeout_at(deadline, active.recv()).await
            } else {
                tokio::time::timeout(Duration::ZERO, active.recv()).await
            };
            let Ok(received) = received else {
                break;
            };
            match polled(&what, next, received) {
                Polled::Record(record) => records.push(record),
                Polled::Nothing => {}
                failure @ (Polled::Foreign(_) | Polled::Failed(_)) => {
                    stopped = Some(failure);
                    break;
                }
            }
        }
        let error = match stopped {
            Some(Polled::Failed(error)) => {
                self.close();
                error
            }
            Some(Polled::Foreign(error)) => error,
            _ => return Ok(records),
        };
        if records.is_empty() {
            Err(error)
        } else {
            self.pending_error = Some(error);
            Ok(records)
        }
    }
}

/// What to make of one message or error from the consumer; moves `next` past a record.
fn polled(
    what: &str,
    next: &mut i64,
    received: Result<rdkafka::message::BorrowedMessage<'_>, KafkaError>,
) -> Polled {
    match received {
        Ok(message) => {
            let offset = rdkafka::Message::offset(&message);
            if offset < *next {
                return Polled::Nothing;
            }
            *next = offset.saturating_add(1);
            match decode_record(&message) {
                Ok(record) => Polled::Record(record),
                Err(why) => Polled::Foreign(BrokerError::Invalid(format!(
                    "the record at offset {offset} of {what} is not a Herald record: {why}"
                ))),
            }
        }
        // librdkafka says it reset the position (before the log start or past the end): it
        // goes on from there, and records before `next` are skipped.
        Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)) => {
            tracing::debug!(partition = what, "Kafka reset the read position");
            Polled::Nothing
        }
        Err(KafkaError::PartitionEOF(_)) => Polled::Nothing,
        Err(error) => Polled::Failed(failed(&format!("reading {what}"), &error)),
    }
}

impl PartitionReader for KafkaReader {
    fn read(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Record>, BrokerError>> {
        Box::pin(self.read_some(max, wait))
    }
}

/// A Herald record from a Kafka message, or why it is not one.
fn decode_record(message: &impl rdkafka::Message) -> Result<Record, String> {
    let position = Position::try_from(message.offset())
        .map_err(|_| format!("its offset {} is negative", message.offset()))?;
    // rdkafka panics on a header name that is not UTF-8; that is the broker's input, so it
    // is caught and reported like any other foreign record.
    let decoded = catch_unwind(AssertUnwindSafe(|| decode_message(message)))
        .map_err(|_| "a header name is not UTF-8".to_owned())??;
    Ok(Record {
        position,
        message: decoded,
    })
}

fn decode_message(message: &impl rdkafka::Message) -> Result<Message, String> {
    let Some(headers) = message.headers() else {
        return Err(format!(
            "it has no headers ({ID_HEADER} and {HAS_KEY_HEADER} first)"
        ));
    };
    let mut headers = headers.iter();
    let id = match headers.next() {
        Some(header) if header.key == ID_HEADER => utf8(header.value, ID_HEADER)?,
        _ => return Err(format!("its first header is not {ID_HEADER}")),
    };
    if id.is_empty() {
        return Err(format!("its {ID_HEADER} is empty"));
    }
    let has_key = match headers.next() {
        Some(header) if header.key == HAS_KEY_HEADER => match header.value {
            Some(b"true") => true,
            Some(b"false") => false,
            _ => return Err(format!("its {HAS_KEY_HEADER} is neither true nor false")),
        },
        _ => return Err(format!("its second header is not {HAS_KEY_HEADER}")),
    };
    // A broker may turn an empty key into none: the header says which it was.
    let key = if has_key {
        Some(utf8(message.key(), "key")?)
    } else {
        None
    };
    let headers = headers
        .map(|header| Ok((header.key.to_owned(), utf8(header.value, header.key)?)))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Message {
        id,
        key,
        headers,
        payload: Bytes::copy_from_slice(message.payload().unwrap_or_default()),
    })
}

/// `bytes` as a string; none is empty.
fn utf8(bytes: Option<&[u8]>, what: &str) -> Result<String, String> {
    String::from_utf8(bytes.unwrap_or_default().to_vec())
        .map_err(|_| format!("its {what} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    use super::*;

    fn kafka_message(key: Option<&[u8]>, headers: Option<OwnedHeaders>) -> OwnedMessage {
        OwnedMessage::new(
            Some(b"payload".to_vec()),
            key.map(<[u8]>::to_vec),
            "herald.t".to_owned(),
            Timestamp::NotAvailable,
            0,
            42,
            headers,
        )
    }

    fn herald(message: &Message) -> OwnedMessage {
        kafka_message(
            message.key.as_deref().map(str::as_bytes),
            Some(encode_headers(message)),
        )
    }

    fn message(key: Option<&str>) -> Message {
        Message {
            id: "evt_1".to_owned(),
            key: key.map(str::to_owned),
            headers: vec![
                ("herald-id".to_owned(), "not the id".to_owned()),
                ("empty".to_owned(), String::new()),
            ],
            payload: Bytes::from_static(b"payload"),
        }
    }

    #[test]
    fn records_round_trip_with_any_key() {
        for key in [None, Some(""), Some("k\u{e9}y")] {
            let sent = message(key);
            let record = decode_record(&herald(&sent)).unwrap();
            assert_eq!(record.position, 42);
            assert_eq!(record.message, sent);
        }
    }

    #[test]
    fn an_empty_key_survives_a_broker_that_drops_it() {
        let sent = message(Some(""));
        let received = kafka_message(None, Some(encode_headers(&sent)));
        assert_eq!(
            decode_record(&received).unwrap().message.key.as_deref(),
            Some("")
        );
    }

    #[test]
    fn foreign_records_are_refused() {
        let no_headers = kafka_message(Some(b"k"), None);
        assert!(
            decode_record(&no_headers)
                .unwrap_err()
                .contains("no headers")
        );

        let other = OwnedHeaders::new().insert(Header {
            key: "type",
            value: Some("x"),
        });
        assert!(
            decode_record(&kafka_message(None, Some(other)))
                .unwrap_err()
                .contains(ID_HEADER)
        );

        let no_marker = OwnedHeaders::new().insert(Header {
            key: ID_HEADER,
            value: Some("evt_1"),
        });
        assert!(
            decode_record(&kafka_message(None, Some(no_marker)))
                .unwrap_err()
                .contains(HAS_KEY_HEADER)
        );

        let bad_marker = OwnedHeaders::new()
            .insert(Header {
                key: ID_HEADER,
                value: Some("evt_1"),
            })
            .insert(Header {
                key: HAS_KEY_HEADER,
                value: Some("yes"),
            });
        assert!(decode_record(&kafka_message(None, Some(bad_marker))).is_err());

        let not_utf8 = OwnedHeaders::new()
            .insert(Header {
                key: ID_HEADER,
                value: Some(&[0xff_u8][..]),
            })
            .insert(Header {
                key: HAS_KEY_HEADER,
                value: Some("false"),
            });
        assert!(
            decode_record(&kafka_message(None, Some(not_utf8)))
                .unwrap_err()
                .contains("UTF-8")
        );

        let bad_key = kafka_message(Some(&[0xc3]), Some(encode_headers(&message(Some("x")))));
        assert!(decode_record(&bad_key).unwrap_err().contains("key"));
    }

    #[test]
    fn options_are_checked_together() {
        let mut options = KafkaOptions::new(" ");
        options.topic_prefix = "bad/prefix".to_owned();
        options.request_timeout = Duration::from_millis(10);
        let Err(BrokerError::Invalid(why)) = options.validate() else {
            panic!("invalid options were accepted");
        };
        assert!(why.contains("bootstrap_servers"), "{why}");
        assert!(why.contains("topic_prefix"), "{why}");
        assert!(why.contains("request_timeout"), "{why}");
        assert!(KafkaOptions::new("127.0.0.1:9092").validate().is_ok());
    }
}
