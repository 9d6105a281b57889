//! The RabbitMQ backend's log against a real server: the shared log contract, and what is
//! particular to RabbitMQ streams — the partition count kept by a marker queue, keys that are
//! absent or empty, missing partitions, a dead server and a dropped connection.
//!
//! Streams keep their data on disk, so every log made here is wrapped in [`Tidy`], which
//! deletes the streams of the topics it created when the test is done.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_broker::log::{Log, PartitionReader, Record};
use herald_broker::rabbitmq::{RabbitMqLog, RabbitMqOptions};
use herald_broker::{BrokerError, Message};
use herald_testing::{AMQP_URL, service_url, unique_name};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::log_contract::{assert_unreachable, log_suite};
use crate::tidy::Tidy;

log_suite!(rabbitmq_log, crate::rabbitmq::connect);

const PATIENCE: Duration = Duration::from_secs(20);

/// A log on the test server, for the contract suite.
pub(crate) async fn connect() -> Arc<dyn Log> {
    Arc::new(tidy(open(&service_url(AMQP_URL)).await))
}

/// `log`, deleting the streams of its topics when dropped.
fn tidy(log: RabbitMqLog) -> Tidy<RabbitMqLog> {
    Tidy::new(
        log,
        Box::new(|| {
            Box::pin(async {
                let log = RabbitMqLog::connect(RabbitMqOptions::new(service_url(AMQP_URL))).await?;
                Ok(Arc::new(log) as Arc<dyn Log>)
            })
        }),
    )
}

async fn open(url: &str) -> RabbitMqLog {
    RabbitMqLog::connect(RabbitMqOptions::new(url))
        .await
        .unwrap_or_else(|err| panic!("cannot connect to RabbitMQ at {AMQP_URL}: {err}"))
}

fn message(id: &str, key: Option<&str>) -> Message {
    Message {
        id: id.to_owned(),
        key: key.map(str::to_owned),
        headers: vec![("type".to_owned(), "test".to_owned())],
        payload: Bytes::from_static(b"x"),
    }
}

/// Reads from `from` until `want` records came, failing after [`PATIENCE`]. Read errors
/// (a dropped connection) are retried, as a caller would.
async fn read_n(reader: &mut dyn PartitionReader, want: usize) -> Vec<Record> {
    let deadline = Instant::now() + PATIENCE;
    let mut got = Vec::new();
    while got.len() < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {want} records came within {PATIENCE:?}",
            got.len()
        );
        match reader
            .read(want - got.len(), Duration::from_millis(500))
            .await
        {
            Ok(records) => got.extend(records),
            Err(BrokerError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("read failed: {other:?}"),
        }
    }
    got
}

fn ids(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.message.id.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_unreachable_is_unavailable() {
    assert_unreachable(
        || async {
            let log =
                RabbitMqLog::connect(RabbitMqOptions::new("amqp://guest:guest@127.0.0.1:1/%2f"))
                    .await?;
            Ok(Arc::new(log) as Arc<dyn Log>)
        },
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_bad_options_are_invalid() {
    let url = service_url(AMQP_URL);
    let mut amq = RabbitMqOptions::new(&url);
    amq.prefix = "amq.herald.".to_owned();
    assert!(matches!(
        RabbitMqLog::connect(amq).await,
        Err(BrokerError::Invalid(_))
    ));
    let tls = RabbitMqOptions::new("amqps://guest:guest@127.0.0.1:5671/%2f");
    assert!(matches!(
        RabbitMqLog::connect(tls).await,
        Err(BrokerError::Invalid(_))
    ));
    let not_a_url = RabbitMqOptions::new("http://nowhere");
    assert!(matches!(
        RabbitMqLog::connect(not_a_url).await,
        Err(BrokerError::Invalid(_))
    ));
    let shown = format!(
        "{:?}",
        RabbitMqOptions::new("amqp://guest:s3cret@127.0.0.1:5672/%2f")
    );
    assert!(!shown.contains("s3cret"), "{shown}");
}

/// A topic keeps the partition count it was made with: asking for another is refused, and
/// leaves it working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_partition_count_mismatch_is_refused() {
    let log = connect().await;
    let topic = unique_name("rmq");
    log.ensure_topic(&topic, 2).await.unwrap();
    for other in [1, 3] {
        match log.ensure_topic(&topic, other).await {
            Err(BrokerError::Invalid(why)) => assert!(why.contains(&topic), "{why}"),
            outcome => panic!("ensure_topic with {other} partitions instead of 2: {outcome:?}"),
        }
    }
    log.ensure_topic(&topic, 2).await.unwrap();
    log.append(&topic, &[(1, message("m", None))])
        .await
        .unwrap();
    let mut reader = log.reader(&topic, 1, 0).await.unwrap();
    assert_eq!(ids(&read_n(reader.as_mut(), 1).await), ["m"]);
    assert!(matches!(
        log.ensure_topic(&topic, 0).await,
        Err(BrokerError::Invalid(_))
    ));
}

/// No key, an empty key and a key all come back as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_absent_and_empty_keys_differ() {
    let log = connect().await;
    let topic = unique_name("rmq");
    log.ensure_topic(&topic, 1).await.unwrap();
    let mut repeated = message("repeated", Some(" "));
    repeated.headers = vec![
        ("b".to_owned(), "1".to_owned()),
        ("a".to_owned(), "2".to_owned()),
        ("b".to_owned(), String::new()),
    ];
    let sent = vec![
        message("none", None),
        message("empty", Some("")),
        message("some", Some("k")),
        repeated,
    ];
    let records: Vec<(u32, Message)> = sent.iter().cloned().map(|m| (0, m)).collect();
    log.append(&topic, &records).await.unwrap();
    let mut reader = log.reader(&topic, 0, 0).await.unwrap();
    let got: Vec<Message> = read_n(reader.as_mut(), 4)
        .await
        .into_iter()
        .map(|r| r.message)
        .collect();
    assert_eq!(
        got, sent,
        "keys, and headers in order with repeated names, come back unchanged"
    );
}

/// Partitions that were never created are refused, not waited for and not silently dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_missing_partitions_are_invalid() {
    let log = connect().await;
    let topic = unique_name("rmq");
    log.ensure_topic(&topic, 2).await.unwrap();
    let refused = log
        .append(
            &topic,
            &[(0, message("ok", None)), (2, message("lost", None))],
        )
        .await;
    assert!(
        matches!(refused, Err(BrokerError::Invalid(_))),
        "{refused:?}"
    );
    assert!(matches!(
        log.end(&topic, 2).await,
        Err(BrokerError::Invalid(_))
    ));
    assert!(matches!(
        log.reader(&topic, 2, 0).await,
        Err(BrokerError::Invalid(_))
    ));
    let never = unique_name("rmq");
    assert!(matches!(
        log.append(&never, &[(0, message("m", None))]).await,
        Err(BrokerError::Invalid(_))
    ));
    assert!(matches!(
        log.ensure_topic("no/slash", 1).await,
        Err(BrokerError::Invalid(_))
    ));
    // The log still works.
    log.append(&topic, &[(1, message("fine", None))])
        .await
        .unwrap();
    let mut reader = log.reader(&topic, 1, 0).await.unwrap();
    assert_eq!(ids(&read_n(reader.as_mut(), 1).await), ["fine"]);
}

/// `end` markers are skipped by readers, and a reader from `end` sees only later records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_end_markers_are_invisible() {
    let log = connect().await;
    let topic = unique_name("rmq");
    log.ensure_topic(&topic, 1).await.unwrap();
    let mut ends = Vec::new();
    for i in 0..3 {
        ends.push(log.end(&topic, 0).await.unwrap());
        log.append(&topic, &[(0, message(&format!("m{i}"), None))])
            .await
            .unwrap();
    }
    assert!(
        ends.windows(2).all(|w| w[0] < w[1]),
        "ends increase: {ends:?}"
    );
    let mut reader = log.reader(&topic, 0, 0).await.unwrap();
    let all = read_n(reader.as_mut(), 3).await;
    assert_eq!(ids(&all), ["m0", "m1", "m2"]);
    assert!(
        reader
            .read(10, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty()
    );
    let mut from_end = log.reader(&topic, 0, ends[2]).await.unwrap();
    assert_eq!(ids(&read_n(from_end.as_mut(), 1).await), ["m2"]);
}

/// After the connection drops, the next operations reconnect, and a reader carries on where
/// it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_reconnects_after_the_connection_drops() {
    let url = service_url(AMQP_URL);
    let proxy = Proxy::start(&url).await;
    let log = tidy(open(&proxy.url).await);
    let topic = unique_name("rmq");
    log.ensure_topic(&topic, 1).await.unwrap();
    log.append(&topic, &[(0, message("before", None))])
        .await
        .unwrap();
    let mut reader = log.reader(&topic, 0, 0).await.unwrap();
    assert_eq!(ids(&read_n(reader.as_mut(), 1).await), ["before"]);

    proxy.cut();
    let deadline = Instant::now() + PATIENCE;
    loop {
        match log.append(&topic, &[(0, message("after", None))]).await {
            Ok(()) => break,
            Err(BrokerError::Unavailable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(other) => panic!("append after the cut: {other:?}"),
        }
    }
    let got = read_n(reader.as_mut(), 1).await;
    assert_eq!(
        ids(&got),
        ["after"],
        "the reader resumes after the records it returned"
    );
    log.ping().await.unwrap();
}

/// A TCP proxy to the test server whose connections can be cut, as a broker restart or a
/// network failure would.
struct Proxy {
    url: String,
    cut: watch::Sender<u64>,
}

impl Proxy {
    async fn start(url: &str) -> Self {
        let (scheme, rest) = url.split_once("://").unwrap();
        let authority_end = rest.find('/').unwrap_or(rest.len());
        let (authority, path) = rest.split_at(authority_end);
        let (userinfo, upstream) = match authority.rsplit_once('@') {
            Some((userinfo, host)) => (format!("{userinfo}@"), host.to_owned()),
            None => (String::new(), authority.to_owned()),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let local = listener.local_addr().unwrap();
        let (cut, _) = watch::channel(0u64);
        let cuts = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {
                            let _ = client.shutdown().await;
                        }
                    }
                });
            }
        });
        Self {
            url: format!("{scheme}://{userinfo}{local}{path}"),
            cut,
        }
    }

    /// Closes every connection open through the proxy; new ones are accepted.
    fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }
}
