//! The NATS JetStream log against a real server: the shared log contract, and what only this
//! backend does: stream names that never collide, partition counts kept in the stream, readers
//! that survive a cancelled read or a lost consumer, copies dropped by message id, and records
//! that outlive a server restart.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_broker::log::{Log, Record};
use herald_broker::nats::{NatsLog, NatsOptions, stream_name, subject};
use herald_broker::{BrokerError, Message};
use herald_testing::{NATS_URL, service_url, unique_name};

use crate::log_contract::read_from as read_n;
use crate::log_contract::{assert_unreachable, log_suite};
use crate::tidy::Tidy;

log_suite!(nats_log, crate::nats::connect);

const PATIENCE: Duration = Duration::from_secs(20);

/// A log on the test server.
pub(crate) async fn connect() -> Arc<dyn Log> {
    Arc::new(nats().await)
}

/// A log on the test server that deletes the streams of its topics when dropped.
async fn nats() -> Tidy<NatsLog> {
    Tidy::new(
        herald_broker::nats::connect(NatsOptions::new(service_url(NATS_URL)))
            .await
            .unwrap(),
        Box::new(|| {
            Box::pin(async {
                let options = NatsOptions::new(service_url(NATS_URL));
                Ok(Arc::new(herald_broker::nats::connect(options).await?) as Arc<dyn Log>)
            })
        }),
    )
}

/// A raw client of the test server, to do what Herald never does.
async fn raw_client() -> async_nats::Client {
    async_nats::connect(service_url(NATS_URL)).await.unwrap()
}

fn message(id: &str, payload: &[u8]) -> Message {
    Message {
        id: id.to_owned(),
        key: Some(format!("key-{id}")),
        headers: vec![("type".to_owned(), "test".to_owned())],
        payload: Bytes::copy_from_slice(payload),
    }
}

fn ids(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.message.id.as_str()).collect()
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_quickly() {
    let options = NatsOptions {
        url: "nats://127.0.0.1:1".to_owned(),
        connect_timeout: Duration::from_secs(2),
        ..NatsOptions::default()
    };
    assert_unreachable(
        || async move {
            herald_broker::nats::connect(options)
                .await
                .map(|log| Arc::new(log) as Arc<dyn Log>)
        },
        Duration::from_secs(5),
    )
    .await;
}

#[tokio::test]
async fn a_bad_url_is_invalid() {
    let error = herald_broker::nats::connect(NatsOptions::new("nats://host:port:what"))
        .await
        .unwrap_err();
    assert!(matches!(error, BrokerError::Invalid(_)), "{error:?}");
}

#[tokio::test]
async fn credentials_never_print() {
    let options = NatsOptions::new("nats://user:hunter2@127.0.0.1:1");
    assert!(!format!("{options:?}").contains("hunter2"));
    let error = herald_broker::nats::connect(NatsOptions {
        connect_timeout: Duration::from_secs(2),
        ..options
    })
    .await
    .unwrap_err();
    assert!(!error.to_string().contains("hunter2"), "{error}");
}

#[tokio::test]
async fn another_partition_count_is_refused() {
    let log = Arc::new(nats().await);
    let topic = unique_name("nats");
    log.ensure_topic(&topic, 2).await.unwrap();
    for (partitions, log) in [(3, Arc::new(nats().await)), (1, log.clone())] {
        match log.ensure_topic(&topic, partitions).await {
            Err(BrokerError::Invalid(why)) => assert!(why.contains("2 partitions"), "{why}"),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }
    log.ensure_topic(&topic, 2).await.unwrap();
    let error = log
        .append(&topic, &[(2, message("m", b"x"))])
        .await
        .unwrap_err();
    assert!(matches!(error, BrokerError::Invalid(_)), "{error:?}");
    assert!(matches!(
        log.end(&topic, 2).await,
        Err(BrokerError::Invalid(_))
    ));
    assert!(matches!(
        log.reader(&topic, 2, 0).await,
        Err(BrokerError::Invalid(_))
    ));
}

#[tokio::test]
async fn topics_that_differ_only_in_encoded_characters_do_not_collide() {
    let log = nats().await;
    let base = unique_name("nats");
    let topics = [
        format!("{base}.a.b"),
        format!("{base}_a_b"),
        format!("{base}-a-b"),
        format!("{base}.a_b"),
    ];
    // A different partition count each: sharing a stream would be refused.
    for (n, topic) in topics.iter().enumerate() {
        log.ensure_topic(topic, u32::try_from(n).unwrap() + 1)
            .await
            .unwrap();
    }
    for topic in &topics {
        log.append(topic, &[(0, message(topic, b"x"))])
            .await
            .unwrap();
    }
    for topic in &topics {
        let mut reader = log.reader(topic, 0, 0).await.unwrap();
        assert_eq!(ids(&read_n(reader.as_mut(), 1).await), [topic.as_str()]);
        assert!(
            reader
                .read(10, Duration::from_millis(200))
                .await
                .unwrap()
                .is_empty(),
            "{topic} has only its own"
        );
    }
}

#[tokio::test]
async fn the_longest_topic_works() {
    let log = nats().await;
    let base = unique_name("nats");
    let topic = format!("{base}{}", ".".repeat(200 - base.len()));
    log.ensure_topic(&topic, 1).await.unwrap();
    log.append(&topic, &[(0, message("m", b"x"))])
        .await
        .unwrap();
    let mut reader = log.reader(&topic, 0, 0).await.unwrap();
    assert_eq!(ids(&read_n(reader.as_mut(), 1).await), ["m"]);
}

#[tokio::test]
async fn an_unknown_topic_is_invalid() {
    let log = nats().await;
    let topic = unique_name("nats");
    assert!(matches!(
        log.append(&topic, &[(0, message("m", b"x"))]).await,
        Err(BrokerError::Invalid(_))
    ));
    assert!(matches!(
        log.end(&topic, 0).await,
        Err(BrokerError::Invalid(_))
    ));
    assert!(matches!(
        log.reader(&topic, 0, 0).await,
        Err(BrokerError::Invalid(_))
    ));
    assert!(matches!(
        log.ensure_topic("bad topic", 1).await,
        Err(BrokerError::Invalid(_))
    ));
    assert!(matches!(
        log.ensure_topic(&topic, 0).await,
        Err(BrokerError::Invalid(_))
    ));
}

#[tokio::test]
async fn a_message_too_large_is_invalid_and_appends_nothing() {
    let log = nats().await;
    let topic = unique_name("nats");
    log.ensure_topic(&topic, 1).await.unwrap();
    let empty = log.end(&topic, 0).await.unwrap();
    // The server's default limit is 1 MiB.
    let batch = [
        (0, message("small", b"x")),
        (0, message("big", &vec![7u8; 2 << 20])),
    ];
    match log.append(&topic, &batch).await {
        Err(BrokerError::Invalid(why)) => assert!(why.contains("`big`"), "{why}"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(
        log.end(&topic, 0).await.unwrap(),
        empty,
        "nothing was appended"
    );
}

#[tokio::test]
async fn a_copy_appended_again_is_dropped() {
    let log = nats().await;
    let topic = unique_name("nats");
    log.ensure_topic(&topic, 1).await.unwrap();
    let batch = [(0, message("a", b"1")), (0, message("b", b"2"))];
    log.append(&topic, &batch).await.unwrap();
    // As when a batch failed halfway and is appended again.
    log.append(&topic, &[batch[1].clone(), (0, message("c", b"3"))])
        .await
        .unwrap();
    let mut reader = log.reader(&topic, 0, 0).await.unwrap();
    assert_eq!(ids(&read_n(reader.as_mut(), 3).await), ["a", "b", "c"]);
    assert!(
        reader
            .read(10, Duration::from_millis(200))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn a_cancelled_read_loses_nothing() {
    let log = nats().await;
    let topic = unique_name("nats");
    log.ensure_topic(&topic, 1).await.unwrap();
    let mut reader = log.reader(&topic, 0, 0).await.unwrap();
    // The server keeps this read's pull waiting after it is given up on.
    let cancelled = tokio::time::timeout(
        Duration::from_millis(100),
        reader.read(10, Duration::from_secs(30)),
    )
    .await;
    assert!(cancelled.is_err());
    log.append(&topic, &[(0, message("m", b"x"))])
        .await
        .unwrap();
    assert_eq!(ids(&read_n(reader.as_mut(), 1).await), ["m"]);
}

#[tokio::test]
async fn a_reader_whose_consumer_vanished_goes_on() {
    // A pull to a consumer that is gone is not answered: the reader finds out after the wait
    // and the request timeout.
    let options = NatsOptions {
        request_timeout: Duration::from_secs(2),
        ..NatsOptions::new(service_url(NATS_URL))
    };
    let log = herald_broker::nats::connect(options).await.unwrap();
    let topic = unique_name("nats");
    log.ensure_topic(&topic, 1).await.unwrap();
    let records: Vec<(u32, Message)> = (0..6)
        .map(|i| (0, message(&format!("m{i}"), b"x")))
        .collect();
    log.append(&topic, &records[..3]).await.unwrap();
    let mut reader = log.reader(&topic, 0, 0).await.unwrap();
    assert_eq!(ids(&read_n(reader.as_mut(), 3).await), ["m0", "m1", "m2"]);
    // As when the server drops an idle consumer, or restarts and loses it.
    delete_consumers(&stream_name(&topic)).await;
    log.append(&topic, &records[3..]).await.unwrap();
    assert_eq!(ids(&read_n(reader.as_mut(), 3).await), ["m3", "m4", "m5"]);
}

#[tokio::test]
async fn a_message_herald_did_not_append_is_skipped() {
    let log = nats().await;
    let topic = unique_name("nats");
    log.ensure_topic(&topic, 1).await.unwrap();
    let client = raw_client().await;
    let js = async_nats::jetstream::new(client);
    js.publish(subject(&topic, 0), Bytes::from_static(b"foreign"))
        .await
        .unwrap()
        .await
        .unwrap();
    log.append(&topic, &[(0, message("mine", b"x"))])
        .await
        .unwrap();
    let mut reader = log.reader(&topic, 0, 0).await.unwrap();
    assert_eq!(ids(&read_n(reader.as_mut(), 1).await), ["mine"]);
}

#[tokio::test]
async fn a_large_read_is_whole_and_in_order() {
    let log = nats().await;
    let topic = unique_name("nats");
    log.ensure_topic(&topic, 3).await.unwrap();
    let records: Vec<(u32, Message)> = (0..3_000u32)
        .map(|i| (i % 3, message(&format!("m{i:05}"), b"x")))
        .collect();
    let started = Instant::now();
    log.append(&topic, &records).await.unwrap();
    let appended = started.elapsed();
    let mut reader = log.reader(&topic, 1, 0).await.unwrap();
    let started = Instant::now();
    let got = read_n(reader.as_mut(), 1_000).await;
    let read = started.elapsed();
    let want: Vec<String> = (0..3_000u32)
        .filter(|i| i % 3 == 1)
        .map(|i| format!("m{i:05}"))
        .collect();
    assert_eq!(ids(&got), want);
    // Generous bounds: one round trip per record would take far longer on a slow machine.
    assert!(
        appended < Duration::from_secs(10),
        "appending 3000 took {appended:?}"
    );
    assert!(read < Duration::from_secs(10), "reading 1000 took {read:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_server_restart() {
    let dir = TempDir::new();
    let mut server = OwnServer::start(&dir.0);
    let options = NatsOptions {
        url: server.url.clone(),
        request_timeout: Duration::from_secs(2),
        ..NatsOptions::default()
    };
    let log = herald_broker::nats::connect(options.clone()).await.unwrap();
    let topic = unique_name("nats");
    log.ensure_topic(&topic, 2).await.unwrap();
    log.append(&topic, &[(1, message("before", b"x"))])
        .await
        .unwrap();
    let mut reader = log.reader(&topic, 1, 0).await.unwrap();
    assert_eq!(ids(&read_n(reader.as_mut(), 1).await), ["before"]);

    server.restart(&dir.0);
    // The client reconnects by itself; until then operations fail, and do not hang.
    let deadline = Instant::now() + PATIENCE;
    while log.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the client did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    log.append(&topic, &[(1, message("after", b"y"))])
        .await
        .unwrap();
    // The old reader's consumer was in memory: it goes on through a new one.
    let deadline = Instant::now() + PATIENCE;
    let got = loop {
        match reader.read(10, Duration::from_millis(500)).await {
            Ok(got) if !got.is_empty() => break got,
            _ => assert!(Instant::now() < deadline, "the reader did not recover"),
        }
    };
    assert_eq!(ids(&got), ["after"]);
    // The stream, its partition count and its records are on disk.
    let fresh = herald_broker::nats::connect(options).await.unwrap();
    assert!(matches!(
        fresh.ensure_topic(&topic, 3).await,
        Err(BrokerError::Invalid(_))
    ));
    let mut reader = fresh.reader(&topic, 1, 0).await.unwrap();
    assert_eq!(ids(&read_n(reader.as_mut(), 2).await), ["before", "after"]);
}

async fn delete_consumers(stream: &str) {
    let js = async_nats::jetstream::new(raw_client().await);
    let names: serde_json::Value = js
        .request(format!("CONSUMER.NAMES.{stream}"), &serde_json::json!({}))
        .await
        .unwrap();
    let names = names["consumers"].as_array().cloned().unwrap_or_default();
    assert!(!names.is_empty(), "the reader has a consumer");
    for name in names {
        js.delete_consumer_from_stream(name.as_str().unwrap(), stream)
            .await
            .unwrap();
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_name("herald-nats"));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A NATS server of the test's own, with JetStream storing in a given directory, so it can be
/// restarted.
struct OwnServer {
    child: Child,
    port: u16,
    url: String,
}

impl OwnServer {
    fn start(store: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = Self {
            child: spawn_server(port, store),
            port,
            url: format!("nats://127.0.0.1:{port}"),
        };
        server.wait_ready();
        server
    }

    fn restart(&mut self, store: &Path) {
        self.stop();
        self.child = spawn_server(self.port, store);
        self.wait_ready();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "nats-server exited"
            );
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_server(port: u16, store: &Path) -> Child {
    Command::new(nats_server_binary())
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// `nats-server`, which `scripts/test` installs.
fn nats_server_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/bin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .expect("this test runs its own nats-server, which is not installed; `scripts/test` installs it")
}
