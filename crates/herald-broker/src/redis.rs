//! The Redis Streams backend of [`Log`]: one stream per partition.
//!
//! [`connect`] opens a [`RedisLog`] from [`RedisOptions`]. It needs a Redis server with
//! streams (5.0 or later; tested on 7.0). It talks to one server (or a proxy in front of
//! several); the cluster client is not used, but the keys are laid out for a cluster.
//!
//! # Keys
//!
//! With the key prefix `herald` (the default), topic `orders` is:
//!
//! - `herald:{orders}:partitions`, a string holding the topic's partition count. It is written
//!   once, with `SET NX`, by [`Log::ensure_topic`], and never changed: a racing creator with
//!   the same count succeeds, one with another count gets [`BrokerError::Invalid`].
//! - `herald:{orders}:0`, `herald:{orders}:1`, …, one stream per partition, created by the
//!   first append to it.
//!
//! The braces are a hash tag: all keys of a topic share one cluster slot, so one
//! `MULTI`/`EXEC` can append to all its partitions. Two topics never share a key: the prefix
//! may not hold `{` or `}`, and topic names are `[A-Za-z0-9._-]` (see
//! [`check_topic`]), so they hold no `{`, `}` or `:`. The first `{`
//! ends the prefix, the next `}` ends the topic, and what follows is a partition number or
//! `partitions`.
//!
//! # Records
//!
//! A record is one stream entry, with fields `id` (the message id), `key` (only when the
//! message has a key, so `None` and `Some("")` stay apart), `headers` (a JSON array of
//! `[name, value]` pairs, which keeps order and repeated names) and `payload` (the raw bytes).
//! Fields with other names are ignored, so later versions may add some.
//!
//! # Appends
//!
//! [`Log::append`] sends one `XADD <stream> * …` per record inside one `MULTI`/`EXEC`: the
//! batch is one round trip and no other client's writes interleave with it. Redis does not
//! roll a transaction back when one command in it fails (say a stream key holds another
//! type); the error is returned, and the others stay appended, which the contract allows.
//!
//! **Durability.** Redis acknowledges a write once it is in memory. Whether it survives a
//! crash or restart of Redis depends on the server's persistence, which Herald does not set:
//! with `appendonly yes` and `appendfsync always`, the reply comes after the AOF is fsynced
//! and every acknowledged append survives; with `appendfsync everysec` (Redis's default when
//! the AOF is on) a crash may lose about the last second; with only RDB snapshots, what came
//! since the last snapshot; with no persistence, everything. Replication is asynchronous, so a
//! failover to a replica may lose acknowledged appends too. Herald's "durably accepted"
//! guarantee holds only with `appendfsync always` on a single server.
//!
//! **What survives a restart** is therefore the streams and the partition counts, as far as
//! the server persists them. Nothing else lives in Redis: consumer groups' positions, leases
//! and dead letters are in Herald's database ([`LogBroker`](crate::log::LogBroker)); Redis
//! consumer groups (`XGROUP`) are not used. Herald never trims a stream; [`Log::delete_topic`]
//! deletes a topic's keys (`DEL` of its partition streams, then of its partition count). An
//! operator may `XTRIM <stream> MINID <id>` below the position every group has committed (see
//! [`stream_id_of_position`]); trimming beyond that skips records for the groups behind.
//!
//! # Positions
//!
//! A stream id `<ms>-<seq>` is position `(ms << 20) | seq`, which keeps the order of ids. It
//! holds `ms` below 2^44 (the year 2527) and `seq` below 2^20: more than a million entries of
//! one partition within one millisecond, which Redis only makes if its clock steps back and
//! appends pile onto one millisecond. An id beyond that (only a hand-written one, in practice)
//! is refused with [`BrokerError::Invalid`] where it is read; it is never truncated. Position 0
//! is before every entry (`0-0` is not a valid entry id).
//!
//! # Reads
//!
//! A [`PartitionReader`] keeps the id of the last entry it returned and reads with
//! `XREAD COUNT <max> BLOCK <wait> STREAMS <stream> <id>`, which returns as soon as an entry
//! comes. Each reader has a connection of its own, because a blocked `XREAD` holds its
//! connection until it returns: appends, `end` and `ping` share one multiplexed connection
//! that reconnects by itself, and never wait behind a read. A reader whose connection failed,
//! timed out or whose read was cancelled opens a new one at its next read.
//!
//! # Errors
//!
//! Connection failures, timeouts, errors from the server and replies of an unexpected shape
//! are [`BrokerError::Unavailable`]. Bad input (a topic name, a partition out of range, an
//! unknown topic, options) is [`BrokerError::Invalid`]. So is an entry that Herald did not
//! write (a field missing or repeated, an id or key that is not UTF-8, headers that are not a
//! JSON array of pairs, an id beyond the positions): a read returns the records before it,
//! then fails at it, every time, naming the entry and the `XDEL` that removes it. It is never
//! skipped silently, since that would drop a record for every group.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use ::redis::{AsyncConnectionConfig, Client, RedisError, Value};
use bytes::Bytes;

use crate::log::{Log, PartitionReader, Position, Record, check_topic};
use crate::redact::redact_url;
use crate::{BoxFuture, BrokerError, Message};

/// How to reach Redis. Build with [`RedisOptions::new`] and change fields as needed.
#[derive(Clone)]
pub struct RedisOptions {
    /// The server, e.g. `redis://127.0.0.1:6379`, `redis://:password@host:6379/2` or
    /// `redis://user:password@host`. TLS (`rediss://`) is not built in.
    pub url: String,
    /// Put before every key (`<prefix>:{<topic>}:…`), so that several Herald installations,
    /// or tests, can share one server. 1 to 100 bytes of `[A-Za-z0-9._:-]`. Default `herald`.
    pub key_prefix: String,
    /// How long to wait for a connection to open, including [`connect`] itself. Default 5 s.
    pub connect_timeout: Duration,
    /// How long to wait for a reply to a command (a blocking read waits this much beyond its
    /// own wait). Default 10 s.
    pub response_timeout: Duration,
}

impl RedisOptions {
    /// The default options for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            key_prefix: "herald".to_owned(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redact_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

/// How many times the shared connection retries reconnecting before a command fails.
const RECONNECT_RETRIES: usize = 2;
/// The longest pause between reconnection attempts.
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(1);
/// The longest block of one `XREAD`; a longer wait returns empty after this.
const MAX_BLOCK: Duration = Duration::from_secs(24 * 60 * 60);
/// The most keys one `DEL` of [`Log::delete_topic`] removes.
const DELETE_CHUNK: u32 = 1_000;
/// Bits of a position that hold the stream id's sequence number.
const SEQ_BITS: u32 = 20;
/// The largest sequence number a position holds.
const MAX_SEQ: u64 = (1 << SEQ_BITS) - 1;
/// The largest millisecond time a position holds.
const MAX_MS: u64 = (1 << (64 - SEQ_BITS)) - 1;

/// Connects to Redis. Fails with [`BrokerError::Unavailable`] when the server does not answer
/// within the connect timeout, and with [`BrokerError::Invalid`] for bad options.
pub async fn connect(options: RedisOptions) -> Result<RedisLog, BrokerError> {
    check_prefix(&options.key_prefix)?;
    if options.connect_timeout.is_zero() || options.response_timeout.is_zero() {
        return Err(BrokerError::Invalid(
            "the Redis connect and response timeouts must be more than zero".to_owned(),
        ));
    }
    let shown = redact_url(&options.url);
    let client = Client::open(options.url.as_str()).map_err(|err| {
        BrokerError::Invalid(format!("the Redis URL `{shown}` is invalid: {err}"))
    })?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(options.connect_timeout))
        .set_response_timeout(Some(options.response_timeout))
        .set_number_of_retries(RECONNECT_RETRIES)
        .set_max_delay(RECONNECT_MAX_DELAY);
    let manager = tokio::time::timeout(
        options.connect_timeout,
        ConnectionManager::new_with_config(client.clone(), config),
    )
    .await
    .map_err(|_| {
        BrokerError::Unavailable(format!(
            "Redis at {shown} did not answer within {:?}",
            options.connect_timeout
        ))
    })?
    .map_err(|err| unavailable(&format!("connecting to {shown}"), &err))?;
    Ok(RedisLog {
        client,
        manager,
        shown,
        prefix: options.key_prefix,
        connect_timeout: options.connect_timeout,
        response_timeout: options.response_timeout,
        partitions: Mutex::default(),
    })
}

/// A [`Log`] on Redis Streams. See the [module docs](self).
pub struct RedisLog {
    client: Client,
    /// Shared by appends, `end`, `ensure_topic` and `ping`; never used for a blocking read.
    manager: ConnectionManager,
    /// The URL without its password.
    shown: String,
    prefix: String,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// The partition counts of topics seen so far; a count never changes once written.
    partitions: Mutex<HashMap<String, u32>>,
}

impl fmt::Debug for RedisLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLog")
            .field("url", &self.shown)
            .field("key_prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisLog {
    /// The key of the stream of `partition` of `topic`: `<prefix>:{<topic>}:<partition>`.
    pub fn stream_key(&self, topic: &str, partition: u32) -> String {
        format!("{}:{{{topic}}}:{partition}", self.prefix)
    }

    /// The key holding the partition count of `topic`: `<prefix>:{<topic>}:partitions`.
    pub fn partitions_key(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:partitions", self.prefix)
    }

    /// The partition count of `topic`, from the cache or the server.
    async fn partitions_of(&self, topic: &str) -> Result<u32, BrokerError> {
        check_topic(topic)?;
        if let Some(count) = self.cached(topic) {
            return Ok(count);
        }
        let key = self.partitions_key(topic);
        let stored: Option<Vec<u8>> = ::redis::cmd("GET")
            .arg(&key)
            .query_async(&mut self.manager.clone())
            .await
            .map_err(|err| unavailable(&format!("reading {key}"), &err))?;
        let Some(stored) = stored else {
            return Err(BrokerError::Invalid(format!(
                "topic `{topic}` does not exist on Redis (no key {key}); ensure_topic creates it"
            )));
        };
        let count = parse_count(&key, &stored)?;
        self.remember(topic, count);
        Ok(count)
    }

    async fn checked_partition(&self, topic: &str, partition: u32) -> Result<(), BrokerError> {
        let count = self.partitions_of(topic).await?;
        if partition >= count {
            return Err(BrokerError::Invalid(format!(
                "topic `{topic}` has {count} partitions; there is no partition {partition}"
            )));
        }
        Ok(())
    }

    fn cached(&self, topic: &str) -> Option<u32> {
        self.partitions
            .lock()
            .ok()
            .and_then(|counts| counts.get(topic).copied())
    }

    fn remember(&self, topic: &str, count: u32) {
        if let Ok(mut counts) = self.partitions.lock() {
            counts.insert(topic.to_owned(), count);
        }
    }

    fn forget(&self, topic: &str) {
        if let Ok(mut counts) = self.partitions.lock() {
            counts.remove(topic);
        }
    }

    /// Deletes the topic's partition streams, then its partition count, so that a failure
    /// part way leaves the count for the next attempt to find the rest by.
    async fn delete(&self, topic: &str) -> Result<(), BrokerError> {
        check_topic(topic)?;
        self.forget(topic);
        let key = self.partitions_key(topic);
        let mut connection = self.manager.clone();
        let stored: Option<Vec<u8>> = ::redis::cmd("GET")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .map_err(|err| unavailable(&format!("reading {key}"), &err))?;
        let Some(stored) = stored else {
            // Never created, or deleted already: streams exist only after the count.
            return Ok(());
        };
        let count = parse_count(&key, &stored)?;
        let mut first = 0;
        while first < count {
            let last = first.saturating_add(DELETE_CHUNK).min(count);
            let mut command = ::redis::cmd("DEL");
            for partition in first..last {
                command.arg(self.stream_key(topic, partition));
            }
            let _deleted: i64 = command
                .query_async(&mut connection)
                .await
                .map_err(|err| unavailable(&format!("deleting the streams of `{topic}`"), &err))?;
            first = last;
        }
        let _deleted: i64 = ::redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .map_err(|err| unavailable(&format!("deleting {key}"), &err))?;
        Ok(())
    }

    async fn create_topic(&self, topic: &str, partitions: u32) -> Result<(), BrokerError> {
        check_topic(topic)?;
        if partitions == 0 {
            return Err(BrokerError::Invalid(
                "a topic needs at least one partition".to_owned(),
            ));
        }
        let key = self.partitions_key(topic);
        let mut connection = self.manager.clone();
        let set: Value = ::redis::cmd("SET")
            .arg(&key)
            .arg(partitions)
            .arg("NX")
            .query_async(&mut connection)
            .await
            .map_err(|err| unavailable(&format!("creating {key}"), &err))?;
        let existing = match set {
            Value::Okay => partitions,
            Value::Nil => {
                // It existed. The count is never changed once written, so this read is the
                // count every other creator got too.
                let stored: Option<Vec<u8>> = ::redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await
                    .map_err(|err| unavailable(&format!("reading {key}"), &err))?;
                let stored = stored.ok_or_else(|| {
                    BrokerError::Unavailable(format!(
                        "{key} was deleted while topic `{topic}` was being created"
                    ))
                })?;
                parse_count(&key, &stored)?
            }
            other => {
                return Err(BrokerError::Unavailable(format!(
                    "unexpected reply from Redis to SET {key} NX: {other:?}"
                )));
            }
        };
        if existing != partitions {
            return Err(BrokerError::Invalid(format!(
                "topic `{topic}` exists on Redis with {existing} partitions, not {partitions}"
            )));
        }
        self.remember(topic, existing);
        Ok(())
    }

    async fn append_all(&self, topic: &str, records: &[(u32, Message)]) -> Result<(), BrokerError> {
        check_topic(topic)?;
        if records.is_empty() {
            return Ok(());
        }
        let count = self.partitions_of(topic).await?;
        let mut pipe = ::redis::pipe();
        pipe.atomic();
        for (index, (partition, message)) in records.iter().enumerate() {
            if *partition >= count {
                return Err(BrokerError::Invalid(format!(
                    "record {index} of the batch is for partition {partition}, but topic \
                     `{topic}` has {count}"
                )));
            }
            let headers = serde_json::to_vec(&message.headers).map_err(|err| {
                BrokerError::Invalid(format!(
                    "record {index} has headers that cannot be encoded: {err}"
                ))
            })?;
            pipe.cmd("XADD")
                .arg(self.stream_key(topic, *partition))
                .arg("*")
                .arg("id")
                .arg(&message.id);
            if let Some(key) = &message.key {
                pipe.arg("key").arg(key);
            }
            pipe.arg("headers")
                .arg(headers)
                .arg("payload")
                .arg(message.payload.as_ref());
        }
        pipe.exec_async(&mut self.manager.clone())
            .await
            .map_err(|err| unavailable(&format!("appending to topic `{topic}`"), &err))
    }

    async fn end_of(&self, topic: &str, partition: u32) -> Result<Position, BrokerError> {
        self.checked_partition(topic, partition).await?;
        let key = self.stream_key(topic, partition);
        let reply: Value = ::redis::cmd("XREVRANGE")
            .arg(&key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut self.manager.clone())
            .await
            .map_err(|err| unavailable(&format!("reading the last entry of {key}"), &err))?;
        let entries = match reply {
            Value::Array(entries) => entries,
            Value::Nil => Vec::new(),
            other => return Err(unexpected("XREVRANGE", &key, &other)),
        };
        let Some(last) = entries.into_iter().next() else {
            return Ok(0);
        };
        let id = match last {
            Value::Array(mut parts) if !parts.is_empty() => into_bytes(parts.swap_remove(0))
                .and_then(|bytes| String::from_utf8(bytes).ok())
                .ok_or_else(|| BrokerError::Unavailable(format!("unexpected entry id in {key}")))?,
            other => return Err(unexpected("XREVRANGE", &key, &other)),
        };
        let position = position_of_stream_id(&id)?;
        position.checked_add(1).ok_or_else(|| {
            BrokerError::Invalid(format!(
                "the last entry of {key}, {id}, is at the last position"
            ))
        })
    }

    async fn open_reader(
        &self,
        topic: &str,
        partition: u32,
        from: Position,
    ) -> Result<RedisReader, BrokerError> {
        self.checked_partition(topic, partition).await?;
        let mut reader = RedisReader {
            client: self.client.clone(),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(None),
            connection: None,
            key: self.stream_key(topic, partition),
            after: StreamId::before(from),
            connect_timeout: self.connect_timeout,
            response_timeout: self.response_timeout,
        };
        // Open its connection now, so a dead server shows here rather than at the first read.
        reader.connection = Some(reader.connect().await?);
        Ok(reader)
    }

    async fn ping_server(&self) -> Result<(), BrokerError> {
        let reply: Value = ::redis::cmd("PING")
            .query_async(&mut self.manager.clone())
            .await
            .map_err(|err| unavailable(&format!("pinging {}", self.shown), &err))?;
        match reply {
            Value::SimpleString(pong) if pong == "PONG" => Ok(()),
            Value::BulkString(pong) if pong == b"PONG" => Ok(()),
            other => Err(unexpected("PING", &self.shown, &other)),
        }
    }
}

impl Log for RedisLog {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn ensure_topic<'a>(
        &'a self,
        topic: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.create_topic(topic, partitions))
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
        Box::pin(self.end_of(topic, partition))
    }

    fn reader<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        from: Position,
    ) -> BoxFuture<'a, Result<Box<dyn PartitionReader>, BrokerError>> {
        Box::pin(async move {
            let reader = self.open_reader(topic, partition, from).await?;
            Ok(Box::new(reader) as Box<dyn PartitionReader>)
        })
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(self.delete(topic))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(self.ping_server())
    }
}

/// Reads one partition's stream on a connection of its own.
struct RedisReader {
    client: Client,
    config: AsyncConnectionConfig,
    /// `None` after a failure or a cancelled read: the next read opens a new one.
    connection: Option<MultiplexedConnection>,
    key: String,
    /// The last id returned (or the one just before the start): reads are after it.
    after: StreamId,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl fmt::Debug for RedisReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisReader")
            .field("stream", &self.key)
            .field("after", &self.after.to_string())
            .field("connected", &self.connection.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisReader {
    async fn connect(&self) -> Result<MultiplexedConnection, BrokerError> {
        tokio::time::timeout(
            self.connect_timeout,
            self.client
                .get_multiplexed_async_connection_with_config(&self.config),
        )
        .await
        .map_err(|_| {
            BrokerError::Unavailable(format!(
                "Redis did not answer within {:?} to a connection for reading {}",
                self.connect_timeout, self.key
            ))
        })?
        .map_err(|err| unavailable(&format!("connecting to read {}", self.key), &err))
    }

    async fn read_some(&mut self, max: usize, wait: Duration) -> Result<Vec<Record>, BrokerError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let wait = wait.min(MAX_BLOCK);
        let mut command = ::redis::cmd("XREAD");
        command.arg("COUNT").arg(max);
        if !wait.is_zero() {
            // BLOCK 0 would wait forever: wait at least a millisecond.
            let millis = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
            command.arg("BLOCK").arg(millis);
        }
        command
            .arg("STREAMS")
            .arg(&self.key)
            .arg(self.after.to_string());
        // Taken out while the read runs: if it fails, times out or is cancelled, the
        // connection (which may still have a blocked XREAD on it) is dropped.
        let mut connection = match self.connection.take() {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        let limit = wait.saturating_add(self.response_timeout);
        let reply: Value = tokio::time::timeout(limit, command.query_async(&mut connection))
            .await
            .map_err(|_| {
                BrokerError::Unavailable(format!(
                    "Redis did not answer XREAD on {} within {limit:?}",
                    self.key
                ))
            })?
            .map_err(|err| unavailable(&format!("reading {}", self.key), &err))?;
        self.connection = Some(connection);
        self.take_records(reply, max)
    }

    /// The records of an `XREAD` reply, advancing past them. Stops before an entry that is not
    /// a record, failing with it when it is the first.
    fn take_records(&mut self, reply: Value, max: usize) -> Result<Vec<Record>, BrokerError> {
        let entries = xread_entries(reply, &self.key)?;
        let mut records = Vec::with_capacity(entries.len().min(max));
        for entry in entries.into_iter().take(max) {
            match decode_entry(&self.key, entry) {
                Ok((id, record)) if id > self.after => {
                    self.after = id;
                    records.push(record);
                }
                Ok((id, _)) => {
                    return Err(BrokerError::Unavailable(format!(
                        "Redis returned entry {id} of {} out of order, after {}",
                        self.key, self.after
                    )));
                }
                Err(error) if records.is_empty() => return Err(error),
                Err(_) => break,
            }
        }
        Ok(records)
    }
}

impl PartitionReader for RedisReader {
    fn read(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Record>, BrokerError>> {
        Box::pin(self.read_some(max, wait))
    }
}

/// A stream entry id, `<ms>-<seq>`; ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    fn of_position(position: Position) -> Self {
        Self {
            ms: position >> SEQ_BITS,
            seq: position & MAX_SEQ,
        }
    }

    fn position(self) -> Option<Position> {
        (self.ms <= MAX_MS && self.seq <= MAX_SEQ).then_some((self.ms << SEQ_BITS) | self.seq)
    }

    /// The greatest id before `position`'s, so that reading after it starts at `position`.
    /// Position 0 gives `0-0`, before every entry.
    fn before(position: Position) -> Self {
        let id = Self::of_position(position);
        match (id.ms, id.seq) {
            (0, 0) => id,
            (ms, 0) => Self {
                ms: ms - 1,
                seq: u64::MAX,
            },
            (ms, seq) => Self { ms, seq: seq - 1 },
        }
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The position of stream entry id `id` (`<ms>-<seq>`): `(ms << 20) | seq`.
/// [`BrokerError::Invalid`] when it is not an id, or `ms` is 2^44 or more, or `seq` 2^20 or
/// more.
pub fn position_of_stream_id(id: &str) -> Result<Position, BrokerError> {
    let parsed = StreamId::parse(id)
        .ok_or_else(|| BrokerError::Invalid(format!("`{id}` is not a Redis stream id")))?;
    parsed.position().ok_or_else(|| {
        BrokerError::Invalid(format!(
            "Redis stream id {id} is beyond the positions Herald maps (milliseconds below 2^44, \
             sequence below 2^20)"
        ))
    })
}

/// The stream entry id at `position`, the inverse of [`position_of_stream_id`]: every
/// position is an id.
pub fn stream_id_of_position(position: Position) -> String {
    StreamId::of_position(position).to_string()
}

/// The entries of the one stream in an `XREAD` reply (none when it timed out).
fn xread_entries(reply: Value, key: &str) -> Result<Vec<Value>, BrokerError> {
    let stream = match reply {
        Value::Nil => return Ok(Vec::new()),
        // RESP2: [[key, entries]].
        Value::Array(streams) => match streams.into_iter().next() {
            Some(Value::Array(mut pair)) if pair.len() == 2 => pair.pop(),
            None => return Ok(Vec::new()),
            Some(other) => return Err(unexpected("XREAD", key, &other)),
        },
        // RESP3: {key: entries}.
        Value::Map(streams) => streams.into_iter().next().map(|(_, entries)| entries),
        other => return Err(unexpected("XREAD", key, &other)),
    };
    match stream {
        None | Some(Value::Nil) => Ok(Vec::new()),
        Some(Value::Array(entries)) => Ok(entries),
        Some(other) => Err(unexpected("XREAD", key, &other)),
    }
}

/// One entry (`[id, [field, value, …]]`) as a record.
fn decode_entry(key: &str, entry: Value) -> Result<(StreamId, Record), BrokerError> {
    let Value::Array(parts) = entry else {
        return Err(unexpected("XREAD", key, &entry));
    };
    let [id, fields]: [Value; 2] = parts
        .try_into()
        .map_err(|parts: Vec<Value>| unexpected("XREAD", key, &Value::Array(parts)))?;
    let id_text = into_bytes(id)
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| BrokerError::Unavailable(format!("an entry of {key} has no readable id")))?;
    let not_a_record = |why: &str| {
        BrokerError::Invalid(format!(
            "entry {id_text} of Redis stream {key} is not a Herald record ({why}); remove it \
             (XDEL {key} {id_text}) to read past it"
        ))
    };
    let id = StreamId::parse(&id_text).ok_or_else(|| not_a_record("its id is not <ms>-<seq>"))?;
    let position = id.position().ok_or_else(|| {
        not_a_record("its id is beyond the positions Herald maps: ms below 2^44, seq below 2^20")
    })?;
    let message = decode_fields(fields).map_err(|why| not_a_record(&why))?;
    Ok((id, Record { position, message }))
}

/// The message in an entry's fields, or why they are not one.
fn decode_fields(fields: Value) -> Result<Message, String> {
    let pairs: Vec<(Value, Value)> = match fields {
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err("its fields are not name-value pairs".to_owned());
            }
            let mut items = items.into_iter();
            let mut pairs = Vec::with_capacity(items.len() / 2);
            while let (Some(name), Some(value)) = (items.next(), items.next()) {
                pairs.push((name, value));
            }
            pairs
        }
        Value::Map(pairs) => pairs,
        _ => return Err("its fields are not name-value pairs".to_owned()),
    };
    let (mut id, mut key, mut headers, mut payload) = (None, None, None, None);
    for (name, value) in pairs {
        let Some(name) = into_bytes(name) else {
            return Err("a field name is not a string".to_owned());
        };
        let slot = match name.as_slice() {
            b"id" => &mut id,
            b"key" => &mut key,
            b"headers" => &mut headers,
            b"payload" => &mut payload,
            _ => continue,
        };
        if slot.is_some() {
            return Err(format!(
                "field `{}` appears twice",
                String::from_utf8_lossy(&name)
            ));
        }
        *slot = Some(into_bytes(value).ok_or_else(|| {
            format!("field `{}` is not a string", String::from_utf8_lossy(&name))
        })?);
    }
    let id = String::from_utf8(id.ok_or("it has no `id` field")?)
        .map_err(|_| "its `id` is not UTF-8".to_owned())?;
    let key = key
        .map(|key| String::from_utf8(key).map_err(|_| "its `key` is not UTF-8".to_owned()))
        .transpose()?;
    let headers: Vec<(String, String)> =
        serde_json::from_slice(&headers.ok_or("it has no `headers` field")?)
            .map_err(|err| format!("its `headers` are not a JSON array of [name, value]: {err}"))?;
    let payload = Bytes::from(payload.ok_or("it has no `payload` field")?);
    Ok(Message {
        id,
        key,
        headers,
        payload,
    })
}

fn into_bytes(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(text) | Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        _ => None,
    }
}

fn parse_count(key: &str, stored: &[u8]) -> Result<u32, BrokerError> {
    std::str::from_utf8(stored)
        .ok()
        .and_then(|text| text.parse::<u32>().ok())
        .filter(|count| *count > 0)
        .ok_or_else(|| {
            BrokerError::Invalid(format!(
                "Redis key {key} holds `{}`, not a partition count",
                String::from_utf8_lossy(stored)
            ))
        })
}

fn check_prefix(prefix: &str) -> Result<(), BrokerError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-');
    if prefix.is_empty() || prefix.len() > 100 || !prefix.chars().all(allowed) {
        return Err(BrokerError::Invalid(format!(
            "the Redis key prefix `{prefix}` must be 1 to 100 bytes of letters, digits, `.`, `_`, \
             `:` and `-`"
        )));
    }
    Ok(())
}

fn unavailable(doing: &str, err: &RedisError) -> BrokerError {
    BrokerError::Unavailable(format!("Redis failed {doing}: {err}"))
}

fn unexpected(command: &str, key: &str, reply: &Value) -> BrokerError {
    let mut shown = format!("{reply:?}");
    if shown.len() > 200 {
        let mut end = 200;
        while !shown.is_char_boundary(end) {
            end -= 1;
        }
        shown.truncate(end);
        shown.push('…');
    }
    BrokerError::Unavailable(format!(
        "unexpected reply from Redis to {command} on {key}: {shown}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_keep_the_order_of_ids_and_round_trip() {
        let ids = [
            "0-1",
            "0-2",
            "1-0",
            "1700000000000-0",
            "1700000000000-7",
            "1700000000001-0",
        ];
        let positions: Vec<Position> = ids
            .iter()
            .map(|id| position_of_stream_id(id).unwrap())
            .collect();
        assert!(positions.windows(2).all(|pair| pair[0] < pair[1]));
        for (id, position) in ids.iter().zip(&positions) {
            assert_eq!(stream_id_of_position(*position), *id);
        }
        assert_eq!(position_of_stream_id("1-0").unwrap(), 1 << 20);
        assert_eq!(
            stream_id_of_position(u64::MAX),
            format!("{MAX_MS}-{MAX_SEQ}")
        );
        assert_eq!(
            position_of_stream_id(&format!("{MAX_MS}-{MAX_SEQ}")).unwrap(),
            u64::MAX
        );
    }

    #[test]
    fn ids_beyond_the_bound_are_refused() {
        for id in [
            format!("{}-0", MAX_MS + 1),
            format!("0-{}", MAX_SEQ + 1),
            format!("{}-{}", u64::MAX, u64::MAX),
            "12".to_owned(),
            "a-b".to_owned(),
            "-1".to_owned(),
            "1-".to_owned(),
        ] {
            assert!(
                matches!(position_of_stream_id(&id), Err(BrokerError::Invalid(_))),
                "{id}"
            );
        }
    }

    #[test]
    fn reading_from_a_position_starts_at_its_id() {
        assert_eq!(StreamId::before(0), StreamId { ms: 0, seq: 0 });
        assert_eq!(StreamId::before(1), StreamId { ms: 0, seq: 0 });
        assert_eq!(StreamId::before((5 << 20) | 3), StreamId { ms: 5, seq: 2 });
        assert_eq!(
            StreamId::before(5 << 20),
            StreamId {
                ms: 4,
                seq: u64::MAX
            }
        );
        // Exclusive of `before`, inclusive of the position: nothing fits between.
        for position in [1, 5 << 20, (5 << 20) | 3, u64::MAX] {
            assert!(StreamId::before(position) < StreamId::of_position(position));
        }
    }

    #[test]
    fn fields_decode_and_bad_ones_are_named() {
        let bulk = |text: &[u8]| Value::BulkString(text.to_vec());
        let fields = Value::Array(vec![
            bulk(b"id"),
            bulk(b"m1"),
            bulk(b"headers"),
            bulk(b"[[\"a\",\"b\"]]"),
            bulk(b"extra"),
            bulk(b"ignored"),
            bulk(b"payload"),
            bulk(&[0, 255]),
        ]);
        let message = decode_fields(fields).unwrap();
        assert_eq!(message.id, "m1");
        assert_eq!(message.key, None);
        assert_eq!(message.headers, [("a".to_owned(), "b".to_owned())]);
        assert_eq!(message.payload.as_ref(), [0, 255]);

        let twice = Value::Array(vec![bulk(b"id"), bulk(b"a"), bulk(b"id"), bulk(b"b")]);
        assert!(decode_fields(twice).unwrap_err().contains("twice"));
        let missing = Value::Array(vec![bulk(b"foo"), bulk(b"bar")]);
        assert!(decode_fields(missing).unwrap_err().contains("no `id`"));
        let odd = Value::Array(vec![bulk(b"id")]);
        assert!(decode_fields(odd).is_err());
    }

    #[test]
    fn prefixes_cannot_hold_hash_tags() {
        assert!(check_prefix("herald").is_ok());
        assert!(check_prefix("team-a:herald").is_ok());
        for bad in ["", "a{b", "a}b", "a b"] {
            assert!(check_prefix(bad).is_err(), "{bad}");
        }
    }
}
