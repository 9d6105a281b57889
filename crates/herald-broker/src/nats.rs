//! The NATS JetStream backend of [`Log`]: each topic is one JetStream stream.
//!
//! # Names
//!
//! Topic `t` with `n` partitions is the stream `HERALD_<t'>`, whose subjects are
//! `herald.<t'>.<partition>`, where `t'` is `t` with every `.` replaced by `~`. Topic names
//! never contain `~` (see [`check_topic`]), so the mapping is one-to-one and keeps the length:
//! two topics never share a stream or a subject, and a 200-byte topic still makes a stream
//! name a file system accepts as a directory name. (On a case-insensitive file system, topics
//! that differ only in case would share a stream directory; NATS servers run on Linux.) The
//! stream's description, `herald topic=<t> partitions=<n>`, records the partition count, so a
//! later [`Log::ensure_topic`] with another count is refused with [`BrokerError::Invalid`].
//! The description is used rather than stream metadata so that NATS 2.9 servers work too.
//!
//! # Records
//!
//! A record is one JetStream message on its partition's subject. The payload is the message's
//! payload, byte for byte. Everything else travels in headers, because NATS header names and
//! values are restricted (no `:`, CR or LF, ASCII names) and a header map does not keep order
//! or repeated names:
//!
//! - `Herald-Envelope`: the id, the key (`null` for none, so `None` and `Some("")` differ) and
//!   the headers, in order, as JSON `{"id":…,"key":…,"headers":[[name,value],…]}` with every
//!   non-ASCII character `\u`-escaped, so any Unicode comes back unchanged.
//! - `Nats-Msg-Id`: the id, percent-encoded, so the server drops a copy appended again within
//!   its two-minute duplicate window, as when a failed batch is appended again. (Consumers
//!   deduplicate by id anyway; this only keeps such copies out of the log.)
//!
//! A message on a partition subject without a readable envelope was not appended by Herald:
//! a reader skips it with a warning rather than failing, so it cannot stall the partition.
//!
//! # Positions, appends and reads
//!
//! A record's position is its stream sequence, shared by the topic's partitions, so the
//! positions of one partition increase but leave gaps. [`Log::end`] is the stream's last
//! sequence plus one. [`Log::append`] publishes the whole batch without waiting and then
//! awaits the acknowledgements (at most 1,024 outstanding), so a batch costs about
//! one round trip; a publish is acknowledged once the stream has stored it.
//!
//! A reader is an ephemeral pull consumer with no acks, filtered on the partition's subject
//! and starting at the reader's position; the server keeps it in memory and removes it after
//! a minute without pulls. A read long-polls for one record (the server answers as soon as one
//! is appended, or with "no messages" once the wait is over), then pulls as many as that
//! record says are pending with concurrent one-record requests and puts them back in sequence
//! order. (Every async-nats API that receives several messages is a `futures` `Stream`; one
//! request per record keeps this module to the client's request API.) The reader remembers
//! the position after the last record it returned. When a read fails or is cancelled, or the
//! consumer is gone (removed while idle, or lost in a server restart: a pull to a missing
//! consumer is not answered, so this shows after the wait plus
//! [`NatsOptions::request_timeout`]), the next read starts a new consumer there, so nothing
//! is skipped or returned twice.
//!
//! # Restarts
//!
//! Streams use file storage: the records, the sequences, the partition counts and the
//! duplicate window survive a server restart. Readers' consumers do not (they are in memory
//! and ephemeral); readers recreate them. Consumer groups' progress is not kept in NATS at
//! all but by [`LogBroker`](crate::log::LogBroker) in Herald's database. While the server is
//! away the client reconnects in the background, and operations fail with
//! [`BrokerError::Unavailable`] after [`NatsOptions::request_timeout`].
//!
//! # Deleting a topic
//!
//! [`Log::delete_topic`] deletes the topic's stream, which removes its records, its readers'
//! consumers and its duplicate window; a stream of that name whose description Herald did not
//! write for the topic is refused with [`BrokerError::Invalid`] and kept. A topic made again
//! afterwards is a new stream whose sequences start again at 1.

use std::collections::{HashMap, VecDeque};
use std::fmt::{self, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use async_nats::connection::State;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::{
    CreateStreamErrorKind, GetStreamError, GetStreamErrorKind, PublishAckFuture, PublishError,
    PublishErrorKind,
};
use async_nats::jetstream::stream::{self, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{HeaderMap, ServerAddr, StatusCode};
use herald_core::error_chain;
use serde_json::{Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::log::{Log, PartitionReader, Position, Record, check_topic};
use crate::redact::redact_url;
use crate::{BoxFuture, BrokerError, Message};

/// The header with a record's id, key and headers; see the [module docs](self).
const ENVELOPE_HEADER: &str = "Herald-Envelope";
/// How long the server remembers appended ids to drop copies (the NATS default).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// The most publishes of one append whose acknowledgements are awaited at once.
const ACK_WINDOW: usize = 1_024;
/// Unacknowledged publishes the client allows across all appends; each append keeps its own
/// to [`ACK_WINDOW`], so concurrent appends never wait on each other's permits.
const ACK_PERMITS: usize = 1 << 24;
/// How long a reader's consumer lives on the server without a pull.
const READER_IDLE: Duration = Duration::from_secs(60);
/// The most pulls one read has in flight at once.
const PULL_WAVE: usize = 128;
/// Waits shorter than this are a pull that does not wait.
const MIN_EXPIRES: Duration = Duration::from_millis(1);
/// The longest a pull waits; a read asked to wait longer returns empty after this.
const MAX_EXPIRES: Duration = Duration::from_secs(3_600);

/// How to reach NATS. Fields are public; start from [`NatsOptions::new`] or `Default`.
#[derive(Clone)]
pub struct NatsOptions {
    /// The server, `nats://host:4222` (`tls://…` for TLS; `nats://user:password@host` or
    /// `nats://token@host` to authenticate), or several, comma-separated, of one cluster.
    /// Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// How long [`connect`] may take before it fails with [`BrokerError::Unavailable`].
    /// Default 5 seconds.
    pub connect_timeout: Duration,
    /// How long a JetStream request or a publish acknowledgement may take before the
    /// operation fails with [`BrokerError::Unavailable`]. Default 10 seconds.
    pub request_timeout: Duration,
    /// Replicas of each stream created: 1 on a single server, 3 or 5 in a cluster. An existing
    /// stream keeps its own. Default 1.
    pub replicas: usize,
}

impl NatsOptions {
    /// The defaults, with the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".to_owned(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            replicas: 1,
        }
    }
}

impl fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsOptions")
            .field("url", &redact_url(&self.url))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("replicas", &self.replicas)
            .finish()
    }
}

/// Connects to NATS. Fails with [`BrokerError::Invalid`] when the URL cannot be parsed, and
/// with [`BrokerError::Unavailable`] when no server answers within
/// [`NatsOptions::connect_timeout`]. JetStream is first used (and checked, by
/// [`Log::ping`]) after connecting.
pub async fn connect(options: NatsOptions) -> Result<NatsLog, BrokerError> {
    let mut servers = Vec::new();
    for url in options
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        let server = url.parse::<ServerAddr>().map_err(|err| {
            BrokerError::Invalid(format!(
                "the NATS URL `{}` is invalid: {err}",
                redact_url(url)
            ))
        })?;
        servers.push(server);
    }
    if servers.is_empty() {
        return Err(BrokerError::Invalid("the NATS URL is empty".to_owned()));
    }
    if options.replicas == 0 {
        return Err(BrokerError::Invalid(
            "NATS stream replicas must be at least 1".to_owned(),
        ));
    }
    let connecting = async_nats::ConnectOptions::new()
        .name("herald")
        .connection_timeout(options.connect_timeout)
        .request_timeout(Some(options.request_timeout))
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected
                | async_nats::Event::Draining
                | async_nats::Event::Closed => {
                    tracing::info!(event = %event, "NATS connection event");
                }
                _ => tracing::warn!(event = %event, "NATS connection event"),
            }
        })
        .connect(servers);
    let client = match tokio::time::timeout(options.connect_timeout, connecting).await {
        Ok(Ok(client)) => client,
        Ok(Err(err)) => {
            return Err(BrokerError::Unavailable(format!(
                "cannot connect to NATS at {}: {}",
                redact_url(&options.url),
                error_chain(&err)
            )));
        }
        Err(_) => {
            return Err(BrokerError::Unavailable(format!(
                "connecting to NATS at {} took longer than {:?}",
                redact_url(&options.url),
                options.connect_timeout
            )));
        }
    };
    let context = jetstream::ContextBuilder::new()
        .timeout(options.request_timeout)
        .max_ack_inflight(ACK_PERMITS)
        .backpressure_on_inflight(true)
        .build(client.clone());
    Ok(NatsLog {
        client,
        context,
        options,
        partitions: Arc::default(),
    })
}

/// The [`Log`] on NATS JetStream. See the [module docs](self).
#[derive(Clone)]
pub struct NatsLog {
    client: async_nats::Client,
    context: jetstream::Context,
    options: NatsOptions,
    /// The partition count of each topic seen, to refuse partitions a topic does not have.
    partitions: Arc<Mutex<HashMap<String, u32>>>,
}

impl fmt::Debug for NatsLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsLog")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl NatsLog {
    async fn ensure(&self, topic: &str, partitions: u32) -> Result<(), BrokerError> {
        check_topic(topic)?;
        if partitions == 0 {
            return Err(BrokerError::Invalid(format!(
                "topic `{topic}` must have at least one partition"
            )));
        }
        let name = stream_name(topic);
        let found = match self.context.get_stream(&name).await {
            Ok(existing) => recorded_partitions(&existing.cached_info().config, topic)?,
            Err(err) if is_not_found(&err) => self.create(topic, partitions).await?,
            Err(err) => return Err(unavailable(&format!("looking up stream {name}"), &err)),
        };
        self.remember(topic, found);
        if found != partitions {
            return Err(BrokerError::Invalid(format!(
                "topic `{topic}` has {found} partitions on NATS (stream {name}), not {partitions}"
            )));
        }
        Ok(())
    }

    /// Creates the topic's stream and returns its partition count: `partitions`, or the count
    /// of a stream made meanwhile by someone else.
    async fn create(&self, topic: &str, partitions: u32) -> Result<u32, BrokerError> {
        let name = stream_name(topic);
        let config = stream::Config {
            name: name.clone(),
            description: Some(describe(topic, partitions)),
            subjects: vec![format!("herald.{}.*", encode(topic))],
            storage: StorageType::File,
            num_replicas: self.options.replicas,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        match self.context.create_stream(config).await {
            Ok(created) => recorded_partitions(&created.cached_info().config, topic),
            Err(err) => match err.kind() {
                // A racing creator with another configuration won: see what it made.
                CreateStreamErrorKind::JetStream(api)
                    if api.error_code() == ErrorCode::STREAM_NAME_EXIST =>
                {
                    let existing =
                        self.context.get_stream(&name).await.map_err(|err| {
                            unavailable(&format!("looking up stream {name}"), &err)
                        })?;
                    recorded_partitions(&existing.cached_info().config, topic)
                }
                _ => Err(unavailable(&format!("creating stream {name}"), &err)),
            },
        }
    }

    /// The partition count of `topic`, from what this log saw or else from the server.
    async fn partitions_of(&self, topic: &str) -> Result<u32, BrokerError> {
        check_topic(topic)?;
        if let Some(count) = self
            .partitions
            .lock()
            .ok()
            .and_then(|known| known.get(topic).copied())
        {
            return Ok(count);
        }
        let info = self.stream_info(topic).await?;
        let count = recorded_partitions(&info.config, topic)?;
        self.remember(topic, count);
        Ok(count)
    }

    async fn stream_info(&self, topic: &str) -> Result<stream::Info, BrokerError> {
        let name = stream_name(topic);
        match self.context.get_stream(&name).await {
            Ok(existing) => Ok(existing.cached_info().clone()),
            Err(err) if is_not_found(&err) => Err(BrokerError::Invalid(format!(
                "topic `{topic}` does not exist on NATS (no stream {name})"
            ))),
            Err(err) => Err(unavailable(&format!("looking up stream {name}"), &err)),
        }
    }

    /// Deletes the topic's stream, with its records and the readers' consumers. A stream of
    /// that name that Herald did not make for `topic` is left alone ([`BrokerError::Invalid`]).
    async fn delete(&self, topic: &str) -> Result<(), BrokerError> {
        check_topic(topic)?;
        self.forget(topic);
        let name = stream_name(topic);
        match self.context.get_stream(&name).await {
            Ok(existing) => recorded_partitions(&existing.cached_info().config, topic).map(drop)?,
            Err(err) if is_not_found(&err) => return Ok(()),
            Err(err) => return Err(unavailable(&format!("looking up stream {name}"), &err)),
        }
        match self.context.delete_stream(&name).await {
            Ok(_) => Ok(()),
            // Someone else deleted it meanwhile.
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(unavailable(&format!("deleting stream {name}"), &err)),
        }
    }

    fn remember(&self, topic: &str, partitions: u32) {
        if let Ok(mut known) = self.partitions.lock() {
            known.insert(topic.to_owned(), partitions);
        }
    }

    fn forget(&self, topic: &str) {
        if let Ok(mut known) = self.partitions.lock() {
            known.remove(topic);
        }
    }

    async fn publish_all(
        &self,
        topic: &str,
        records: &[(u32, Message)],
    ) -> Result<(), BrokerError> {
        let partitions = self.partitions_of(topic).await?;
        if let Some((partition, _)) = records.iter().find(|(p, _)| *p >= partitions) {
            return Err(BrokerError::Invalid(format!(
                "topic `{topic}` has {partitions} partitions; there is no partition {partition}"
            )));
        }
        // Refuse a batch with a message the server would refuse before appending any of it.
        let max_payload = self.client.server_info().max_payload;
        let mut prepared = Vec::with_capacity(records.len());
        for (partition, message) in records {
            let id = percent_encode(&message.id);
            let envelope = envelope(message);
            // `NATS/1.0`, a line per header and the blank line, as the client writes them.
            let size = message.payload.len()
                + id.len()
                + envelope.len()
                + "NATS/1.0\r\nNats-Msg-Id: \r\n: \r\n\r\n".len()
                + ENVELOPE_HEADER.len();
            if size > max_payload {
                return Err(BrokerError::Invalid(format!(
                    "message `{}` is {size} bytes with its headers, more than the {max_payload} \
                     the NATS server accepts",
                    message.id
                )));
            }
            let mut headers = HeaderMap::new();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, id);
            headers.insert(ENVELOPE_HEADER, envelope);
            prepared.push((subject(topic, *partition), headers, message));
        }
        let mut unconfirmed: VecDeque<PublishAckFuture> = VecDeque::new();
        for (subject, headers, message) in prepared {
            if unconfirmed.len() >= ACK_WINDOW
                && let Some(ack) = unconfirmed.pop_front()
            {
                self.confirm(topic, ack).await?;
            }
            let ack = self
                .context
                .publish_with_headers(subject, headers, message.payload.clone())
                .await
                .map_err(|err| self.publish_error(topic, &message.id, &err))?;
            unconfirmed.push_back(ack);
        }
        for ack in unconfirmed {
            self.confirm(topic, ack).await?;
        }
        Ok(())
    }

    async fn confirm(&self, topic: &str, ack: PublishAckFuture) -> Result<(), BrokerError> {
        // A duplicate is a copy of a record already stored: fine.
        ack.await
            .map(drop)
            .map_err(|err| self.publish_error(topic, "", &err))
    }

    fn publish_error(&self, topic: &str, id: &str, err: &PublishError) -> BrokerError {
        let what = if id.is_empty() {
            format!("appending to topic `{topic}`")
        } else {
            format!("appending message `{id}` to topic `{topic}`")
        };
        match err.kind() {
            PublishErrorKind::MaxPayloadExceeded => {
                BrokerError::Invalid(format!("{what}: {}", error_chain(err)))
            }
            PublishErrorKind::StreamNotFound => {
                self.forget(topic);
                unavailable(&what, err)
            }
            _ => unavailable(&what, err),
        }
    }
}

impl Log for NatsLog {
    fn kind(&self) -> &'static str {
        "nats"
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
        Box::pin(async move {
            if records.is_empty() {
                return check_topic(topic);
            }
            self.publish_all(topic, records).await
        })
    }

    fn end<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
    ) -> BoxFuture<'a, Result<Position, BrokerError>> {
        Box::pin(async move {
            check_topic(topic)?;
            let info = self.stream_info(topic).await?;
            let partitions = recorded_partitions(&info.config, topic)?;
            self.remember(topic, partitions);
            check_partition(topic, partition, partitions)?;
            Ok(info.state.last_sequence.saturating_add(1))
        })
    }

    fn reader<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        from: Position,
    ) -> BoxFuture<'a, Result<Box<dyn PartitionReader>, BrokerError>> {
        Box::pin(async move {
            let partitions = self.partitions_of(topic).await?;
            check_partition(topic, partition, partitions)?;
            let mut reader = NatsReader {
                client: self.client.clone(),
                context: self.context.clone(),
                stream: stream_name(topic),
                subject: subject(topic, partition),
                consumer: None,
                next: from,
                reopen: true,
                last_pull: Instant::now(),
                request_timeout: self.options.request_timeout,
            };
            // Open now, so a missing stream or a dead server shows here.
            reader.open().await?;
            Ok(Box::new(reader) as Box<dyn PartitionReader>)
        })
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.delete(topic))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            if self.client.connection_state() != State::Connected {
                return Err(BrokerError::Unavailable(format!(
                    "not connected to NATS at {}",
                    redact_url(&self.options.url)
                )));
            }
            // The raw request, not `query_account`, whose answer type NATS 2.9 does not match.
            let info: Value = self
                .context
                .request("INFO", &json!({}))
                .await
                .map_err(|err| unavailable("asking NATS for the JetStream account", &err))?;
            match info.get("error") {
                None => Ok(()),
                Some(error) => Err(BrokerError::Unavailable(format!(
                    "NATS refused the JetStream account info (is JetStream enabled?): {error}"
                ))),
            }
        })
    }
}

/// Reads one partition through an ephemeral pull consumer. See the [module docs](self).
struct NatsReader {
    client: async_nats::Client,
    context: jetstream::Context,
    stream: String,
    /// The partition's subject.
    subject: String,
    /// The current consumer's name.
    consumer: Option<String>,
    /// The position after the last record returned.
    next: Position,
    /// The consumer may not be at `next` (a read failed or was cancelled): start a new one.
    reopen: bool,
    /// When the consumer last had a pull (or was made); after [`READER_IDLE`] the server
    /// removes it.
    last_pull: Instant,
    request_timeout: Duration,
}

impl fmt::Debug for NatsReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsReader")
            .field("stream", &self.stream)
            .field("subject", &self.subject)
            .field("consumer", &self.consumer)
            .field("next", &self.next)
            .finish_non_exhaustive()
    }
}

/// What one pull request brought.
enum Pulled {
    Message(async_nats::Message),
    Nothing,
    /// The consumer is gone or was reset; start a new one.
    Gone,
    /// No answer in time: the server lost the pull, or the consumer is gone (a pull to a
    /// consumer that does not exist is not answered).
    NoAnswer,
}

/// One pulled record before decoding: its sequence, how many were pending after it, and the
/// message.
struct Pull {
    sequence: u64,
    pending: u64,
    message: async_nats::Message,
}

impl NatsReader {
    /// Starts a consumer at `next`, removing the previous one.
    async fn open(&mut self) -> Result<(), BrokerError> {
        self.remove_consumer();
        let name = format!("herald-{}", uuid::Uuid::now_v7().simple());
        let deliver_policy = if self.next <= 1 {
            DeliverPolicy::All
        } else {
            DeliverPolicy::ByStartSequence {
                start_sequence: self.next,
            }
        };
        let config = pull::Config {
            name: Some(name.clone()),
            description: Some(format!("herald reader of {}", self.subject)),
            deliver_policy,
            ack_policy: AckPolicy::None,
            filter_subject: self.subject.clone(),
            inactive_threshold: READER_IDLE,
            memory_storage: true,
            num_replicas: 1,
            ..Default::default()
        };
        self.context
            .create_consumer_on_stream(config, &self.stream)
            .await
            .map_err(|err| {
                unavailable(&format!("creating a consumer of {}", self.subject), &err)
            })?;
        self.consumer = Some(name);
        self.reopen = false;
        self.last_pull = Instant::now();
        Ok(())
    }

    /// Deletes the current consumer in the background (it also expires by itself).
    fn remove_consumer(&mut self) {
        let Some(name) = self.consumer.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (context, stream) = (self.context.clone(), self.stream.clone());
        runtime.spawn(async move {
            if let Err(err) = context.delete_consumer_from_stream(&name, &stream).await {
                tracing::debug!(consumer = %name, stream = %stream, error = %error_chain(&err),
                    "could not delete a NATS reader's consumer; it expires by itself");
            }
        });
    }

    async fn read_records(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, BrokerError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let mut retried = false;
        loop {
            // The server may have removed an idle consumer; a pull to it would not be answered.
            if self.reopen || self.consumer.is_none() || self.last_pull.elapsed() > READER_IDLE / 2
            {
                self.open().await?;
            }
            // Until this read ends well, the consumer may be past what was returned.
            self.reopen = true;
            match self.pull_batch(max, wait).await? {
                Some(pulls) => return Ok(self.finish(pulls)),
                None if !retried => retried = true,
                None => {
                    return Err(BrokerError::Unavailable(format!(
                        "the NATS consumer of {} keeps disappearing",
                        self.subject
                    )));
                }
            }
        }
    }

    /// Pulls up to `max` records, waiting up to `wait` for the first. `None` when the consumer
    /// is gone before anything came.
    async fn pull_batch(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Option<Vec<Pull>>, BrokerError> {
        let Some(consumer) = self.consumer.clone() else {
            return Ok(None);
        };
        let next_subject = format!("$JS.API.CONSUMER.MSG.NEXT.{}.{consumer}", self.stream);
        self.last_pull = Instant::now();
        let first = match pull_one(
            self.client.clone(),
            next_subject.clone(),
            wait,
            self.request_timeout,
        )
        .await?
        {
            Pulled::Message(message) => self.decode_pull(message)?,
            Pulled::Nothing => {
                self.reopen = false;
                return Ok(Some(Vec::new()));
            }
            Pulled::Gone => return Ok(None),
            Pulled::NoAnswer if !self.consumer_exists(&consumer).await? => return Ok(None),
            Pulled::NoAnswer => {
                return Err(BrokerError::Unavailable(format!(
                    "NATS did not answer a pull of {} in time",
                    self.subject
                )));
            }
        };
        let mut pending = first.pending;
        let mut pulls = vec![first];
        let mut clean = true;
        while pulls.len() < max && pending > 0 {
            let count = (max - pulls.len())
                .min(PULL_WAVE)
                .min(usize::try_from(pending).unwrap_or(PULL_WAVE));
            let mut wave = JoinSet::new();
            for _ in 0..count {
                wave.spawn(pull_one(
                    self.client.clone(),
                    next_subject.clone(),
                    Duration::ZERO,
                    self.request_timeout,
                ));
            }
            let mut got = Vec::with_capacity(count);
            let mut short = false;
            while let Some(joined) = wave.join_next().await {
                match joined {
                    Ok(Ok(Pulled::Message(message))) => match self.decode_pull(message) {
                        Ok(pull) => got.push(pull),
                        Err(_) => clean = false,
                    },
                    Ok(Ok(Pulled::Nothing)) => short = true,
                    Ok(Ok(Pulled::Gone | Pulled::NoAnswer) | Err(_)) | Err(_) => clean = false,
                }
            }
            if !clean {
                // Some pull of the wave failed, so its records may have a hole: keep what
                // came before it, and read the rest through a new consumer.
                break;
            }
            got.sort_by_key(|pull| pull.sequence);
            pending = got.last().map_or(0, |pull| pull.pending);
            pulls.extend(got);
            if short {
                break;
            }
        }
        self.reopen = !clean;
        Ok(Some(pulls))
    }

    /// Whether the server still has consumer `name`.
    async fn consumer_exists(&self, name: &str) -> Result<bool, BrokerError> {
        let info: Value = self
            .context
            .request(format!("CONSUMER.INFO.{}.{name}", self.stream), &json!({}))
            .await
            .map_err(|err| {
                unavailable(
                    &format!("looking up the consumer of {}", self.subject),
                    &err,
                )
            })?;
        let missing = info
            .pointer("/error/err_code")
            .and_then(Value::as_u64)
            .is_some_and(|code| {
                code == ErrorCode::CONSUMER_NOT_FOUND.0 || code == ErrorCode::STREAM_NOT_FOUND.0
            });
        Ok(!missing)
    }

    fn decode_pull(&self, message: async_nats::Message) -> Result<Pull, BrokerError> {
        let message = jetstream::Message {
            message,
            context: self.context.clone(),
        };
        let (sequence, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(err) => {
                return Err(BrokerError::Unavailable(format!(
                    "a message pulled from {} has no JetStream metadata: {err}",
                    self.subject
                )));
            }
        };
        Ok(Pull {
            sequence,
            pending,
            message: message.message,
        })
    }

    /// Turns pulled messages into records, skipping those Herald did not write, and moves
    /// past them.
    fn finish(&mut self, pulls: Vec<Pull>) -> Vec<Record> {
        let mut records = Vec::with_capacity(pulls.len());
        for Pull {
            sequence, message, ..
        } in pulls
        {
            if sequence < self.next {
                continue;
            }
            self.next = sequence.saturating_add(1);
            match open_envelope(message.headers.as_ref(), message.payload) {
                Ok(message) => records.push(Record {
                    position: sequence,
                    message,
                }),
                Err(why) => {
                    tracing::warn!(subject = %self.subject, position = sequence, why = %why,
                        "skipping a NATS message that Herald did not append");
                }
            }
        }
        records
    }
}

impl PartitionReader for NatsReader {
    fn read(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Record>, BrokerError>> {
        Box::pin(self.read_records(max, wait))
    }
}

impl Drop for NatsReader {
    fn drop(&mut self) {
        self.remove_consumer();
    }
}

/// Sends one pull request for one message to `next_subject`, waiting up to `wait` for it.
async fn pull_one(
    client: async_nats::Client,
    next_subject: String,
    wait: Duration,
    request_timeout: Duration,
) -> Result<Pulled, BrokerError> {
    let wait = wait.min(MAX_EXPIRES);
    let body = if wait < MIN_EXPIRES {
        json!({"batch": 1, "no_wait": true})
    } else {
        json!({"batch": 1, "expires": u64::try_from(wait.as_nanos()).unwrap_or(u64::MAX)})
    };
    // Its own inbox, not the client's shared one: JetStream sends the message with the
    // subject it was stored under, so only a subscription of its own receives it.
    let request = async_nats::Request::new()
        .inbox(client.new_inbox())
        .payload(body.to_string().into())
        .timeout(Some(wait.saturating_add(request_timeout)));
    match client.send_request(next_subject, request).await {
        Ok(message) => match message.status {
            None => Ok(Pulled::Message(message)),
            Some(StatusCode::NOT_FOUND | StatusCode::TIMEOUT) => Ok(Pulled::Nothing),
            // Consumer deleted, leadership changed, too many waiting pulls: start over.
            Some(StatusCode::REQUEST_TERMINATED) => Ok(Pulled::Gone),
            Some(status) => Err(BrokerError::Unavailable(format!(
                "NATS answered a pull with {status} {}",
                message.description.as_deref().unwrap_or("")
            ))),
        },
        Err(err) if err.kind() == RequestErrorKind::NoResponders => Ok(Pulled::Gone),
        Err(err) if err.kind() == RequestErrorKind::TimedOut => Ok(Pulled::NoAnswer),
        Err(err) => Err(unavailable("pulling from NATS", &err)),
    }
}

/// The name of the stream that holds `topic`, for operators and tools.
pub fn stream_name(topic: &str) -> String {
    format!("HERALD_{}", encode(topic))
}

/// The subject of `partition` of `topic`, for operators and tools.
pub fn subject(topic: &str, partition: u32) -> String {
    format!("herald.{}.{partition}", encode(topic))
}

/// `topic` with `.` (not allowed in stream names, a separator in subjects) as `~` (never in a
/// topic name), so that different topics stay different.
fn encode(topic: &str) -> String {
    topic.replace('.', "~")
}

fn describe(topic: &str, partitions: u32) -> String {
    format!("herald topic={topic} partitions={partitions}")
}

/// The partition count a stream's description records for `topic`.
fn recorded_partitions(config: &stream::Config, topic: &str) -> Result<u32, BrokerError> {
    let description = config.description.as_deref().unwrap_or_default();
    let mut words = description.split(' ');
    let count = match (words.next(), words.next(), words.next(), words.next()) {
        (Some("herald"), Some(named), Some(count), None)
            if named.strip_prefix("topic=") == Some(topic) =>
        {
            count
                .strip_prefix("partitions=")
                .and_then(|n| n.parse::<u32>().ok())
        }
        _ => None,
    };
    match count {
        Some(count) if count > 0 => Ok(count),
        _ => Err(BrokerError::Invalid(format!(
            "NATS stream {} exists but was not made by Herald for topic `{topic}` (its description is {description:?})",
            config.name
        ))),
    }
}

fn check_partition(topic: &str, partition: u32, partitions: u32) -> Result<(), BrokerError> {
    if partition < partitions {
        Ok(())
    } else {
        Err(BrokerError::Invalid(format!(
            "topic `{topic}` has {partitions} partitions; there is no partition {partition}"
        )))
    }
}

fn is_not_found(err: &GetStreamError) -> bool {
    matches!(err.kind(), GetStreamErrorKind::JetStream(api) if api.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

fn unavailable(what: &str, err: &(dyn std::error::Error + 'static)) -> BrokerError {
    BrokerError::Unavailable(format!("{what}: {}", error_chain(err)))
}

/// The envelope header of `message`: its id, key and headers as ASCII JSON.
fn envelope(message: &Message) -> String {
    let headers: Vec<Value> = message
        .headers
        .iter()
        .map(|(name, value)| json!([name, value]))
        .collect();
    let json = json!({"id": message.id, "key": message.key, "headers": headers}).to_string();
    // Outside strings, compact JSON is ASCII, and serde_json escapes control characters inside
    // them; escape what is left (non-ASCII, DEL) so the header is printable ASCII.
    let mut ascii = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii_graphic() || c == ' ' {
            ascii.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                let _ = write!(ascii, "\\u{unit:04x}");
            }
        }
    }
    ascii
}

/// The message in an envelope header and a payload.
fn open_envelope(headers: Option<&HeaderMap>, payload: bytes::Bytes) -> Result<Message, String> {
    let text = headers
        .and_then(|headers| headers.get(ENVELOPE_HEADER))
        .ok_or_else(|| format!("no {ENVELOPE_HEADER} header"))?;
    let json: Value = serde_json::from_str(text.as_str())
        .map_err(|err| format!("the {ENVELOPE_HEADER} header is not JSON: {err}"))?;
    let id = json
        .get("id")
        .and_then(Value::as_str)
        .ok_or("the envelope has no id")?
        .to_owned();
    let key = match json.get("key") {
        None | Some(Value::Null) => None,
        Some(Value::String(key)) => Some(key.clone()),
        Some(_) => return Err("the envelope's key is not a string".to_owned()),
    };
    let mut pairs = Vec::new();
    for pair in json
        .get("headers")
        .and_then(Value::as_array)
        .ok_or("the envelope has no headers")?
    {
        match pair.as_array().map(Vec::as_slice) {
            Some([Value::String(name), Value::String(value)]) => {
                pairs.push((name.clone(), value.clone()));
            }
            _ => return Err("an envelope header is not a [name, value] pair".to_owned()),
        }
    }
    Ok(Message {
        id,
        key,
        headers: pairs,
        payload,
    })
}

/// `text` with every byte outside printable ASCII, and `%`, as `%XX`: a one-to-one encoding
/// that is a valid NATS header value.
fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_graphic() && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(id: &str, key: Option<&str>, headers: &[(&str, &str)]) -> Message {
        Message {
            id: id.to_owned(),
            key: key.map(str::to_owned),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            payload: bytes::Bytes::from_static(b"\x00\xffpayload"),
        }
    }

    fn round_trip(sent: &Message) -> Message {
        let mut headers = HeaderMap::new();
        let value = envelope(sent);
        assert!(
            value.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
            "{value}"
        );
        headers.insert(ENVELOPE_HEADER, value);
        open_envelope(Some(&headers), sent.payload.clone()).unwrap()
    }

    #[test]
    fn envelopes_keep_everything() {
        for sent in [
            message("m1", None, &[]),
            message("m2", Some(""), &[("a", "1"), ("a", "2"), ("", "")]),
            message(
                "\u{1f980}\r\n%",
                Some("k\u{e9}y/1\u{7f}"),
                &[
                    ("x:y\nz", "h\u{e9}ll\u{f6} \u{1f980}\t"),
                    ("b", "\"quoted\" \\"),
                ],
            ),
        ] {
            assert_eq!(round_trip(&sent), sent);
        }
    }

    #[test]
    fn foreign_messages_are_refused_not_panicked_on() {
        let payload = bytes::Bytes::new();
        assert!(open_envelope(None, payload.clone()).is_err());
        for bad in [
            "",
            "{",
            "[]",
            "{\"id\":1,\"headers\":[]}",
            "{\"id\":\"a\"}",
            "{\"id\":\"a\",\"key\":2,\"headers\":[]}",
            "{\"id\":\"a\",\"headers\":[[\"n\"]]}",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(ENVELOPE_HEADER, bad);
            assert!(
                open_envelope(Some(&headers), payload.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn names_are_one_to_one() {
        assert_eq!(stream_name("orders.placed"), "HERALD_orders~placed");
        assert_ne!(stream_name("a.b"), stream_name("a_b"));
        assert_ne!(stream_name("a.b"), stream_name("a-b"));
        assert_eq!(encode(&"x".repeat(200)).len(), 200);
    }

    #[test]
    fn ids_are_percent_encoded_one_to_one() {
        assert_eq!(percent_encode("evt_01"), "evt_01");
        assert_eq!(percent_encode("a b%\n\u{e9}"), "a%20b%25%0A%C3%A9");
        assert_ne!(percent_encode("%41"), percent_encode("A"));
    }

    #[test]
    fn descriptions_record_the_partition_count() {
        let mut config = stream::Config {
            name: stream_name("t.x"),
            description: Some(describe("t.x", 8)),
            ..Default::default()
        };
        assert_eq!(recorded_partitions(&config, "t.x").unwrap(), 8);
        assert!(recorded_partitions(&config, "t_x").is_err());
        config.description = Some("herald topic=t.x partitions=0".to_owned());
        assert!(recorded_partitions(&config, "t.x").is_err());
        config.description = None;
        assert!(recorded_partitions(&config, "t.x").is_err());
    }
}
