//! The redis backend's log against a real server: the shared log contract, then what is Redis's
//! own: a dead server, partition counts, entries Herald did not write, the mapping of stream
//! ids to positions, key prefixes, and blocking reads beside appends.
//!
//! Every log gets its own random key prefix (and every case its own topics), so cases share
//! the server without seeing each other's keys. The cases that write behind the backend's
//! back use a bare RESP client ([`raw`]), as `redis-cli` would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_broker::log::{Log, PartitionReader, Record};
use herald_broker::redis::{
    self, RedisLog, RedisOptions, position_of_stream_id, stream_id_of_position,
};
use herald_broker::{BrokerError, Message};
use herald_testing::{REDIS_URL, service_url, unique_name};

use crate::log_contract::{assert_unreachable, log_suite};
use crate::tidy::Tidy;

log_suite!(redis_log, crate::redis::connect);

/// A log on the test server, for the shared suite.
pub(crate) async fn connect() -> Arc<dyn Log> {
    Arc::new(open(&unique_name("herald_test")).await)
}

/// A log on the test server under key prefix `prefix`, deleting its topics' keys when
/// dropped.
async fn open(prefix: &str) -> Tidy<RedisLog> {
    let options = move |prefix: String| RedisOptions {
        key_prefix: prefix,
        ..RedisOptions::new(service_url(REDIS_URL))
    };
    let log = redis::connect(options(prefix.to_owned())).await.unwrap();
    let prefix = prefix.to_owned();
    Tidy::new(
        log,
        Box::new(move || {
            let options = options(prefix.clone());
            Box::pin(async move { Ok(Arc::new(redis::connect(options).await?) as Arc<dyn Log>) })
        }),
    )
}

fn message(id: &str) -> Message {
    Message {
        id: id.to_owned(),
        key: Some("k".to_owned()),
        headers: vec![("type".to_owned(), "t".to_owned())],
        payload: Bytes::from_static(b"x"),
    }
}

fn ids(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.message.id.as_str()).collect()
}

/// Reads once, waiting up to a second, and fails on an error.
async fn read(reader: &mut Box<dyn PartitionReader>) -> Vec<Record> {
    reader.read(100, Duration::from_secs(1)).await.unwrap()
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    assert_unreachable(
        || async {
            let options = RedisOptions {
                connect_timeout: Duration::from_secs(2),
                ..RedisOptions::new("redis://127.0.0.1:1")
            };
            redis::connect(options)
                .await
                .map(|log| Arc::new(log) as Arc<dyn Log>)
        },
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test]
async fn bad_options_are_invalid_and_passwords_are_not_shown() {
    for prefix in ["", "a{b", "a}b", "has space"] {
        let options = RedisOptions {
            key_prefix: prefix.to_owned(),
            ..RedisOptions::new(service_url(REDIS_URL))
        };
        let outcome = redis::connect(options).await;
        assert!(
            matches!(outcome, Err(BrokerError::Invalid(_))),
            "prefix `{prefix}`: {outcome:?}"
        );
    }
    let outcome = redis::connect(RedisOptions::new("not a url")).await;
    assert!(
        matches!(outcome, Err(BrokerError::Invalid(_))),
        "{outcome:?}"
    );
    let options = RedisOptions::new("redis://:s3cret@127.0.0.1:1/0");
    assert!(!format!("{options:?}").contains("s3cret"), "{options:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_partition_count_is_refused() {
    let prefix = unique_name("herald_test");
    let log = open(&prefix).await;
    let topic = unique_name("orders");
    log.ensure_topic(&topic, 3).await.unwrap();
    log.ensure_topic(&topic, 3).await.unwrap();
    let refused = log.ensure_topic(&topic, 4).await;
    assert!(
        matches!(refused, Err(BrokerError::Invalid(ref why)) if why.contains('3')),
        "{refused:?}"
    );
    // Another process (no cache) reads the count from the server.
    let other = open(&prefix).await;
    assert!(matches!(
        other.ensure_topic(&topic, 2).await,
        Err(BrokerError::Invalid(_))
    ));
    other.ensure_topic(&topic, 3).await.unwrap();
    assert_eq!(
        raw::get(&log.partitions_key(&topic)).await.as_deref(),
        Some("3")
    );

    // Partitions out of range, topics never created and bad names are refused, not created.
    let out_of_range = other.append(&topic, &[(3, message("m"))]).await;
    assert!(
        matches!(out_of_range, Err(BrokerError::Invalid(_))),
        "{out_of_range:?}"
    );
    assert!(matches!(
        other.end(&topic, 3).await,
        Err(BrokerError::Invalid(_))
    ));
    assert!(matches!(
        other.reader(&topic, 7, 0).await,
        Err(BrokerError::Invalid(_))
    ));
    let unknown = unique_name("never");
    assert!(matches!(
        log.append(&unknown, &[(0, message("m"))]).await,
        Err(BrokerError::Invalid(_))
    ));
    assert!(matches!(
        log.ensure_topic("a:b", 1).await,
        Err(BrokerError::Invalid(_))
    ));
    assert!(matches!(
        log.ensure_topic(&unique_name("zero"), 0).await,
        Err(BrokerError::Invalid(_))
    ));
    assert!(!raw::exists(&log.stream_key(&topic, 3)).await);
}

/// Entries that Herald did not write, each alone in a partition after a good record: the read
/// returns the good record, then fails with `Invalid` (every time) until the entry is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_entry_is_an_error_not_a_panic() {
    let log = open(&unique_name("herald_test")).await;
    let topic = unique_name("foreign");
    let bad_entries: &[&[&[u8]]] = &[
        &[b"foo", b"bar"],
        &[b"id", b"x", b"headers", b"[]"],
        &[b"id", b"x", b"headers", b"not json", b"payload", b""],
        &[b"id", b"x", b"headers", b"{\"a\":\"b\"}", b"payload", b""],
        &[b"id", b"x", b"id", b"y", b"headers", b"[]", b"payload", b""],
        &[b"id", b"\xff", b"headers", b"[]", b"payload", b""],
        &[
            b"id", b"x", b"key", b"\xfe", b"headers", b"[]", b"payload", b"",
        ],
    ];
    let partitions = u32::try_from(bad_entries.len()).unwrap();
    log.ensure_topic(&topic, partitions).await.unwrap();
    for (partition, fields) in (0..partitions).zip(bad_entries) {
        let key = log.stream_key(&topic, partition);
        log.append(&topic, &[(partition, message("before"))])
            .await
            .unwrap();
        let mut xadd: Vec<&[u8]> = vec![b"XADD", key.as_bytes(), b"*"];
        xadd.extend_from_slice(fields);
        let bad_id = raw::command(&xadd).await.text();
        log.append(&topic, &[(partition, message("after"))])
            .await
            .unwrap();

        let mut reader = log.reader(&topic, partition, 0).await.unwrap();
        assert_eq!(
            ids(&read(&mut reader).await),
            ["before"],
            "partition {partition}"
        );
        for _ in 0..2 {
            match reader.read(100, Duration::from_millis(200)).await {
                Err(BrokerError::Invalid(why)) => {
                    assert!(why.contains(&bad_id) && why.contains("XDEL"), "{why}");
                }
                other => panic!("partition {partition}: expected Invalid, got {other:?}"),
            }
        }
        raw::command(&[b"XDEL", key.as_bytes(), bad_id.as_bytes()]).await;
        assert_eq!(
            ids(&read(&mut reader).await),
            ["after"],
            "partition {partition}"
        );
    }
}

/// A stream id beyond the positions (milliseconds of 2^44) is refused where it is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_beyond_the_positions_is_refused() {
    let log = open(&unique_name("herald_test")).await;
    let topic = unique_name("far");
    log.ensure_topic(&topic, 1).await.unwrap();
    log.append(&topic, &[(0, message("near"))]).await.unwrap();
    let key = log.stream_key(&topic, 0);
    let far = format!("{}-0", 1u64 << 44);
    raw::command(&[
        b"XADD",
        key.as_bytes(),
        far.as_bytes(),
        b"id",
        b"far",
        b"headers",
        b"[]",
        b"payload",
        b"",
    ])
    .await;
    assert!(
        matches!(log.end(&topic, 0).await, Err(BrokerError::Invalid(ref why)) if why.contains(&far))
    );
    let mut reader = log.reader(&topic, 0, 0).await.unwrap();
    assert_eq!(ids(&read(&mut reader).await), ["near"]);
    let refused = reader.read(10, Duration::from_millis(200)).await;
    assert!(
        matches!(refused, Err(BrokerError::Invalid(ref why)) if why.contains(&far)),
        "{refused:?}"
    );
}

/// Positions are the stream ids, `(ms << 20) | seq`, both ways, and `end` is one past the last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_are_the_stream_ids() {
    let log = open(&unique_name("herald_test")).await;
    let topic = unique_name("ids");
    log.ensure_topic(&topic, 1).await.unwrap();
    let batch: Vec<(u32, Message)> = (0..5).map(|i| (0, message(&format!("m{i}")))).collect();
    log.append(&topic, &batch).await.unwrap();
    log.append(&topic, &[(0, message("m5"))]).await.unwrap();

    let key = log.stream_key(&topic, 0);
    let stream_ids = raw::command(&[b"XRANGE", key.as_bytes(), b"-", b"+"])
        .await
        .entry_ids();
    let mut reader = log.reader(&topic, 0, 0).await.unwrap();
    let records = read(&mut reader).await;
    assert_eq!(records.len(), 6);
    assert_eq!(stream_ids.len(), 6);
    for (record, id) in records.iter().zip(&stream_ids) {
        assert_eq!(record.position, position_of_stream_id(id).unwrap());
        assert_eq!(&stream_id_of_position(record.position), id);
    }
    let (ms, seq) = stream_ids[0].split_once('-').unwrap();
    assert_eq!(
        records[0].position,
        (ms.parse::<u64>().unwrap() << 20) | seq.parse::<u64>().unwrap()
    );
    assert_eq!(log.end(&topic, 0).await.unwrap(), records[5].position + 1);

    // From a position between two records, the later one is first.
    let mut reader = log
        .reader(&topic, 0, records[2].position + 1)
        .await
        .unwrap();
    assert_eq!(ids(&read(&mut reader).await), ["m3", "m4", "m5"]);
}

/// Two prefixes keep two sets of keys apart, even for one topic name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_keep_installations_apart() {
    let (a, b) = (unique_name("herald_a"), unique_name("herald_b"));
    let (log_a, log_b) = (open(&a).await, open(&b).await);
    let topic = unique_name("shared");
    assert_eq!(log_a.stream_key(&topic, 2), format!("{a}:{{{topic}}}:2"));
    assert_eq!(
        log_a.partitions_key(&topic),
        format!("{a}:{{{topic}}}:partitions")
    );
    log_a.ensure_topic(&topic, 1).await.unwrap();
    log_b.ensure_topic(&topic, 2).await.unwrap();
    log_a
        .append(&topic, &[(0, message("from-a"))])
        .await
        .unwrap();
    log_b
        .append(&topic, &[(0, message("from-b"))])
        .await
        .unwrap();
    let mut reader = log_b.reader(&topic, 0, 0).await.unwrap();
    assert_eq!(ids(&read(&mut reader).await), ["from-b"]);
}

/// Blocked reads have connections of their own: appends and pings go on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_reads_do_not_hold_up_appends() {
    let log: Arc<dyn Log> = Arc::new(open(&unique_name("herald_test")).await);
    let topic = unique_name("busy");
    log.ensure_topic(&topic, 2).await.unwrap();
    let mut readers = Vec::new();
    for _ in 0..4 {
        let mut reader = log.reader(&topic, 0, 0).await.unwrap();
        readers.push(tokio::spawn(async move {
            reader.read(10, Duration::from_secs(4)).await.unwrap()
        }));
    }
    // Not needed for correctness: it gives the reads time to block first, so that the appends
    // below run beside four blocked XREADs (without it the case still passes, proving less).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    for i in 0..10 {
        log.append(&topic, &[(1, message(&format!("m{i}")))])
            .await
            .unwrap();
        log.ping().await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "appends took {:?}",
        started.elapsed()
    );
    log.append(&topic, &[(0, message("wake"))]).await.unwrap();
    for reader in readers {
        assert_eq!(ids(&reader.await.unwrap()), ["wake"]);
    }
}

/// A bare RESP client on the test server, to write what Herald would not.
mod raw {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;

    use herald_testing::{REDIS_URL, service_url};

    /// A RESP reply.
    #[derive(Debug)]
    pub(super) enum Reply {
        Text(String),
        Int(i64),
        Bulk(Option<Vec<u8>>),
        Array(Option<Vec<Reply>>),
    }

    impl Reply {
        /// A status or bulk reply as text.
        pub(super) fn text(self) -> String {
            match self {
                Self::Text(text) => text,
                Self::Bulk(Some(bytes)) => String::from_utf8(bytes).unwrap(),
                other => panic!("expected text, got {other:?}"),
            }
        }

        /// The ids of an XRANGE reply.
        pub(super) fn entry_ids(self) -> Vec<String> {
            let Self::Array(Some(entries)) = self else {
                panic!("expected entries, got {self:?}")
            };
            entries
                .into_iter()
                .map(|entry| match entry {
                    Self::Array(Some(mut parts)) => parts.swap_remove(0).text(),
                    other => panic!("expected an entry, got {other:?}"),
                })
                .collect()
        }
    }

    /// Runs one command, on a new connection, and panics on an error reply.
    pub(super) async fn command(args: &[&[u8]]) -> Reply {
        let args: Vec<Vec<u8>> = args.iter().map(|arg| arg.to_vec()).collect();
        tokio::task::spawn_blocking(move || blocking(&args))
            .await
            .unwrap()
    }

    pub(super) async fn get(key: &str) -> Option<String> {
        match command(&[b"GET", key.as_bytes()]).await {
            Reply::Bulk(None) => None,
            other => Some(other.text()),
        }
    }

    pub(super) async fn exists(key: &str) -> bool {
        matches!(command(&[b"EXISTS", key.as_bytes()]).await, Reply::Int(1))
    }

    fn blocking(args: &[Vec<u8>]) -> Reply {
        // redis://[[user]:password@]host[:port][/db]
        let url = service_url(REDIS_URL);
        let rest = url.strip_prefix("redis://").expect("a redis:// URL");
        let rest = rest.split('?').next().unwrap_or(rest);
        let (authority, db) = rest.split_once('/').unwrap_or((rest, ""));
        let (password, address) = match authority.rsplit_once('@') {
            Some((userinfo, address)) => (userinfo.rsplit(':').next(), address),
            None => (None, authority),
        };
        let address = if address.contains(':') {
            address.to_owned()
        } else {
            format!("{address}:6379")
        };
        let mut stream = TcpStream::connect(&address).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        if let Some(password) = password.filter(|p| !p.is_empty()) {
            send(
                &mut stream,
                &mut reader,
                &[b"AUTH".to_vec(), password.as_bytes().to_vec()],
            );
        }
        if !db.is_empty() {
            send(
                &mut stream,
                &mut reader,
                &[b"SELECT".to_vec(), db.as_bytes().to_vec()],
            );
        }
        send(&mut stream, &mut reader, args)
    }

    fn send(stream: &mut TcpStream, reader: &mut BufReader<TcpStream>, args: &[Vec<u8>]) -> Reply {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        stream.write_all(&out).unwrap();
        parse(reader)
    }

    fn parse(reader: &mut BufReader<TcpStream>) -> Reply {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1);
        match kind {
            "+" => Reply::Text(rest.to_owned()),
            "-" => panic!("Redis refused the command: {rest}"),
            ":" => Reply::Int(rest.parse().unwrap()),
            "$" => {
                let Ok(len) = usize::try_from(rest.parse::<i64>().unwrap()) else {
                    return Reply::Bulk(None);
                };
                let mut bytes = vec![0; len + 2];
                reader.read_exact(&mut bytes).unwrap();
                bytes.truncate(len);
                Reply::Bulk(Some(bytes))
            }
            "*" => {
                let Ok(len) = usize::try_from(rest.parse::<i64>().unwrap()) else {
                    return Reply::Array(None);
                };
                Reply::Array(Some((0..len).map(|_| parse(reader)).collect()))
            }
            other => panic!("unexpected RESP reply type {other}"),
        }
    }
}
