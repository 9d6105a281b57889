//! A broker restart in the middle of a stream, on each backend whose server the test can run
//! on a private port of its own: Redis (`redis-server`, with an append-only file fsynced on
//! every write), NATS JetStream (`nats-server`, file storage) and Kafka (`tansu`).
//!
//! Each case starts its server, builds the log as `herald` does (the backend's public
//! `connect` inside [`Connecting`]; every backend then reconnects by itself) and a
//! [`LogBroker`] whose group state is in a fresh PostgreSQL database. A publisher task sends
//! [`EVENTS`] keyed events in batches, paced so that the stream spans the outage, and
//! publishes a failed batch again after a short backoff (at least once). A consumer task
//! receives and acks, recording what came. Once half the stream is confirmed, the server is
//! killed (SIGKILL), left down for [`DOWN`], and started again on the same port and data
//! directory. Then every confirmed event must have been received at least once, and the first
//! delivery of each event must come in publish order within its key. Duplicates are allowed
//! (at least once) and counted; they and the recovery times are printed (`--no-capture`).
//!
//! tansu, the Kafka test server, keeps its data in memory (the build `scripts/test` installs,
//! with feature `dynostore`, stores only in memory or in S3), so it comes back empty: the
//! topics, their records and their offsets are gone. Losing them is the test server's doing,
//! not Herald's. For it, the case checks what still means something: the same broker (same
//! clients) reconnects, and the rest of the stream, published to a new topic once the server
//! is killed, reaches a group that subscribes after the restart, all of it, in order. The
//! records of the first topic that had not been received before the kill are counted as lost.
//!
//! RabbitMQ is not here: a second RabbitMQ server is too slow to start for a test. Its
//! backend's own tests cut its connections through a proxy instead (`rabbitmq.rs`).
//!
//! A server binary that cannot be found fails the case with its name; nothing is skipped.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herald_broker::kafka::{KafkaLog, KafkaOptions};
use herald_broker::log::{Connect, Connecting, Log, LogBroker, LogOptions, MIGRATIONS};
use herald_broker::nats::NatsOptions;
use herald_broker::redis::RedisOptions;
use herald_broker::{Broker, Message, SubscribeOptions};
use herald_testing::server::{PrivateServer, durable_redis_args, find_binary};
use herald_testing::{TestDb, unique_name};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Events in the stream.
const EVENTS: usize = 2_000;
/// Keys they are spread over (event `i` has key `i mod KEYS`).
const KEYS: usize = 20;
/// Events per published batch.
const BATCH: usize = 20;
/// The pause between batches, so the stream is still flowing when the server dies.
const PACE: Duration = Duration::from_millis(20);
/// How long the server stays down.
const DOWN: Duration = Duration::from_secs(2);
/// Everything a case does, from starting its server to the last check.
const OVERALL: Duration = Duration::from_secs(60);
/// The most attempts at one batch, and the most receive calls of one consumer.
const MAX_ATTEMPTS: usize = 1_000;
const MAX_RECEIVES: usize = 100_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_server_restart_mid_stream() {
    run(Backend {
        name: "redis",
        program: "redis-server",
        also_in: Vec::new(),
        args: durable_redis_args,
        connect: |port| {
            Box::new(move || {
                let options = RedisOptions::new(format!("redis://127.0.0.1:{port}"));
                Box::pin(async move {
                    Ok(Arc::new(herald_broker::redis::connect(options).await?) as Arc<dyn Log>)
                })
            })
        },
        durable: true,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_server_restart_mid_stream() {
    run(Backend {
        name: "nats",
        program: "nats-server",
        also_in: Vec::new(),
        args: |port, data| {
            let mut args = strings(&["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"]);
            args.push(data.into());
            args
        },
        connect: |port| {
            Box::new(move || {
                let options = NatsOptions::new(format!("nats://127.0.0.1:{port}"));
                Box::pin(async move {
                    Ok(Arc::new(herald_broker::nats::connect(options).await?) as Arc<dyn Log>)
                })
            })
        },
        durable: true,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_tansu_restart_mid_stream() {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cargo")));
    run(Backend {
        name: "kafka",
        program: "tansu",
        also_in: cargo_home
            .into_iter()
            .map(|home| home.join("bin"))
            .collect(),
        args: |port, _| {
            let url = format!("tcp://127.0.0.1:{port}");
            strings(&[
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                "memory://tansu/",
            ])
        },
        connect: |port| {
            Box::new(move || {
                let mut options = KafkaOptions::new(format!("127.0.0.1:{port}"));
                // tansu 0.6 reads only from batch boundaries (see the Kafka tests).
                options.one_record_per_batch = true;
                Box::pin(
                    async move { Ok(Arc::new(KafkaLog::connect(options).await?) as Arc<dyn Log>) },
                )
            })
        },
        durable: false,
    })
    .await;
}

/// One backend's server and how Herald reaches it.
struct Backend {
    /// The log's kind, for [`Connecting`] and the printed report.
    name: &'static str,
    /// The server's executable.
    program: &'static str,
    /// Where to look for it after `PATH`, besides the usual system directories.
    also_in: Vec<PathBuf>,
    /// The server's arguments, given its port and its (empty, then kept) data directory.
    args: fn(u16, &Path) -> Vec<OsString>,
    /// Makes the log of the server on a port.
    connect: fn(u16) -> Connect,
    /// Whether the server keeps its records across a restart.
    durable: bool,
}

/// One event's publish: when it was confirmed, and to which topic (`true`: the topic used
/// after the kill, for a server that comes back empty).
#[derive(Debug, Clone, Copy)]
struct Confirmed {
    at: Instant,
    after_kill: bool,
}

/// What the publisher did.
#[derive(Debug, Default)]
struct Published {
    /// Indexed by event.
    confirmed: Vec<Option<Confirmed>>,
    /// Publish calls that failed, and the last error.
    failures: usize,
    last_error: Option<String>,
}

/// One delivery, in the order the consumer got them.
#[derive(Debug, Clone, Copy)]
struct Received {
    event: usize,
    receive_count: u32,
    at: Instant,
}

async fn run(backend: Backend) {
    let began = Instant::now();
    let deadline = began + OVERALL;
    let program = find_binary(backend.program, &backend.also_in);
    let mut server = PrivateServer::start(program, backend.args, deadline).await;

    let db = TestDb::postgres().await;
    herald_store::migrate::migrate(db.store(), &[&MIGRATIONS])
        .await
        .unwrap();
    let log = Arc::new(Connecting::new(
        backend.name,
        (backend.connect)(server.port),
    ));
    let broker: Arc<dyn Broker> =
        Arc::new(LogBroker::new(log, db.store().clone(), LogOptions::default()).unwrap());
    let before = unique_name("restart");
    let after = if backend.durable {
        before.clone()
    } else {
        unique_name("restart_after")
    };
    let group = unique_name("group");

    let published = Arc::new(Mutex::new(Published {
        confirmed: vec![None; EVENTS],
        ..Published::default()
    }));
    let killed = Arc::new(AtomicBool::new(false));
    let first = Consumer::spawn(broker.clone(), &before, &group, deadline);
    let publisher = tokio::spawn(publish(
        broker.clone(),
        before.clone(),
        after.clone(),
        backend.durable,
        killed.clone(),
        published.clone(),
        deadline,
    ));

    // Kill the server in the middle of the stream: half of it confirmed, some of it received.
    wait_until(
        deadline,
        "half of the stream to be published and some received",
        || confirmed_count(&published) >= EVENTS / 2 && first.count() > 0,
    )
    .await
    .unwrap_or_else(|why| panic!("{why}; {}", server.log_tail()));
    let at_kill = (confirmed_count(&published), first.count());
    killed.store(true, Ordering::SeqCst);
    let killed_at = Instant::now();
    server.kill().await;
    // The outage itself, not a wait for something to happen.
    tokio::time::sleep(DOWN).await;
    server.start_again(deadline).await;
    let up_at = Instant::now();
    let second =
        (!backend.durable).then(|| Consumer::spawn(broker.clone(), &after, &group, deadline));

    let publisher = publisher.await.unwrap();
    let published = std::mem::take(&mut *published.lock().unwrap());
    if let Err(why) = publisher {
        panic!(
            "{why} ({} publish calls had failed); {}",
            published.failures,
            server.log_tail()
        );
    }
    // What must arrive: every confirmed event, from the topic it was confirmed on — except,
    // for a server that came back empty, those of the first topic (see the module docs).
    let last = second.as_ref().unwrap_or(&first);
    let expected: HashSet<usize> = published
        .confirmed
        .iter()
        .enumerate()
        .filter(|(_, c)| c.is_some_and(|c| backend.durable || c.after_kill))
        .map(|(event, _)| event)
        .collect();
    let waited = wait_until(deadline, "every confirmed event to be received", || {
        let got: HashSet<usize> = last.received().iter().map(|r| r.event).collect();
        expected.is_subset(&got)
    })
    .await;
    let first_received = first.stop().await;
    let last_received = match second {
        Some(second) => second.stop().await,
        None => first_received.clone(),
    };

    let missing: Vec<usize> = {
        let got: HashSet<usize> = last_received.iter().map(|r| r.event).collect();
        let mut missing: Vec<usize> = expected.difference(&got).copied().collect();
        missing.sort_unstable();
        missing
    };
    let mut report = String::new();
    let _ = writeln!(
        report,
        "{}: {} events over {KEYS} keys in batches of {BATCH}; killed at {} confirmed and {} \
         received, down for {:?} (SIGKILL to accepting again); {} failed publish calls{}",
        backend.name,
        EVENTS,
        at_kill.0,
        at_kill.1,
        up_at - killed_at,
        published.failures,
        published
            .last_error
            .as_deref()
            .map(|e| format!(" (last: {e})"))
            .unwrap_or_default(),
    );
    let confirmed_after_up = |c: &Confirmed| c.at >= up_at;
    let publish_recovered = published
        .confirmed
        .iter()
        .flatten()
        .filter(|c| confirmed_after_up(c))
        .map(|c| c.at)
        .min();
    // The first delivery of an event that only the restarted server confirmed.
    let delivery_recovered = last_received
        .iter()
        .filter(|r| published.confirmed[r.event].is_some_and(|c| confirmed_after_up(&c)))
        .map(|r| r.at)
        .min();
    let _ = writeln!(
        report,
        "{}: after the restart, the first publish was confirmed in {:?} and the first such event \
         received in {:?}; all done {:?} after the start",
        backend.name,
        publish_recovered.map(|at| at - up_at),
        delivery_recovered.map(|at| at.saturating_duration_since(up_at)),
        Instant::now() - began,
    );
    for (which, received) in [("consumer", &last_received)]
        .into_iter()
        .chain((!backend.durable).then_some(("consumer of the first topic", &first_received)))
    {
        let distinct: HashSet<usize> = received.iter().map(|r| r.event).collect();
        let redelivered = received.iter().filter(|r| r.receive_count > 1).count();
        let _ = writeln!(
            report,
            "{}: {which}: {} deliveries of {} events, {} duplicates ({redelivered} with a receive \
             count above 1)",
            backend.name,
            received.len(),
            distinct.len(),
            received.len() - distinct.len(),
        );
    }
    if !backend.durable {
        let got: HashSet<usize> = first_received.iter().map(|r| r.event).collect();
        let lost = published
            .confirmed
            .iter()
            .enumerate()
            .filter(|(event, c)| c.is_some_and(|c| !c.after_kill) && !got.contains(event))
            .count();
        let _ = writeln!(
            report,
            "{}: {lost} events confirmed on the first topic but not received before the kill \
             were lost with the test server's in-memory storage",
            backend.name
        );
    }
    eprint!("{report}");

    assert!(
        waited.is_ok() && missing.is_empty(),
        "{} of {} confirmed events never arrived (first: {:?}); {report}{}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(10)],
        server.log_tail()
    );
    if backend.durable {
        assert_eq!(expected.len(), EVENTS, "every event was confirmed");
    } else {
        assert!(
            !expected.is_empty(),
            "nothing was confirmed after the restart"
        );
    }
    assert_key_order(&last_received, "after the restart");
    if !backend.durable {
        assert_key_order(&first_received, "on the first topic");
    }
}

/// Publishes the stream in batches, each again after a failure until it is confirmed. Once
/// the server is killed, a server that comes back empty gets the rest on topic `after`.
async fn publish(
    broker: Arc<dyn Broker>,
    before: String,
    after: String,
    durable: bool,
    killed: Arc<AtomicBool>,
    published: Arc<Mutex<Published>>,
    deadline: Instant,
) -> Result<(), String> {
    let events: Vec<Message> = (0..EVENTS).map(event).collect();
    for (batch, messages) in events.chunks(BATCH).enumerate() {
        let mut backoff = Duration::from_millis(50);
        let mut attempts = 0;
        loop {
            let after_kill = !durable && killed.load(Ordering::SeqCst);
            let topic = if after_kill { &after } else { &before };
            attempts += 1;
            match broker.publish(topic, messages).await {
                Ok(()) => {
                    let at = Instant::now();
                    let mut published = published.lock().unwrap();
                    for slot in &mut published.confirmed[batch * BATCH..][..messages.len()] {
                        *slot = Some(Confirmed { at, after_kill });
                    }
                    break;
                }
                Err(error) => {
                    {
                        let mut published = published.lock().unwrap();
                        published.failures += 1;
                        published.last_error = Some(error.to_string());
                    }
                    if Instant::now() + backoff > deadline || attempts >= MAX_ATTEMPTS {
                        return Err(format!(
                            "batch {batch} was not confirmed after {attempts} attempts: {error}"
                        ));
                    }
                    // A short backoff, as the relay does.
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
        // The stream's own pace.
        tokio::time::sleep(PACE).await;
    }
    Ok(())
}

/// Event `i`: id `evt-<i>`, key `key-<i mod KEYS>`.
fn event(i: usize) -> Message {
    Message {
        id: format!("evt-{i:05}"),
        key: Some(format!("key-{:02}", i % KEYS)),
        headers: vec![("type".to_owned(), "restart.test".to_owned())],
        payload: Bytes::from(format!("event {i}")),
    }
}

fn event_index(message: &Message) -> usize {
    message
        .id
        .strip_prefix("evt-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a message this test did not publish: {message:?}"))
}

/// First deliveries of each key come in publish order (event order).
fn assert_key_order(received: &[Received], what: &str) {
    let mut seen = HashSet::new();
    let mut last_of_key: HashMap<usize, usize> = HashMap::new();
    for r in received {
        if !seen.insert(r.event) {
            continue;
        }
        let key = r.event % KEYS;
        if let Some(before) = last_of_key.insert(key, r.event) {
            assert!(
                before < r.event,
                "{what}: key {key} delivered event {} first after event {before}",
                r.event
            );
        }
    }
}

/// A consumer task of one group on one topic: subscribes (again while the broker is away),
/// receives, acks and records.
struct Consumer {
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<Result<(), String>>,
}

impl Consumer {
    fn spawn(broker: Arc<dyn Broker>, topic: &str, group: &str, deadline: Instant) -> Self {
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(consume(
            broker,
            topic.to_owned(),
            group.to_owned(),
            received.clone(),
            stop.clone(),
            deadline,
        ));
        Self {
            received,
            stop,
            task,
        }
    }

    fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Stops it and returns what it received; fails if it failed.
    async fn stop(self) -> Vec<Received> {
        self.stop.store(true, Ordering::SeqCst);
        if let Err(why) = self.task.await.unwrap() {
            panic!("{why}");
        }
        self.received.lock().unwrap().clone()
    }
}

async fn consume(
    broker: Arc<dyn Broker>,
    topic: String,
    group: String,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) -> Result<(), String> {
    let mut subscription = loop {
        match broker
            .subscribe(&topic, &group, SubscribeOptions::default())
            .await
        {
            Ok(subscription) => break subscription,
            Err(error) if Instant::now() < deadline && !stop.load(Ordering::SeqCst) => {
                tracing::debug!(error = %error, "subscribing failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => return Err(format!("could not subscribe to {topic}: {error}")),
        }
    };
    for _ in 0..MAX_RECEIVES {
        if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            return Ok(());
        }
        let deliveries = match subscription.receive(100, Duration::from_millis(200)).await {
            Ok(deliveries) => deliveries,
            Err(error) => {
                // The group state is in PostgreSQL, so a broker outage should not show here;
                // if it does, go on receiving and let the checks say what was missed.
                tracing::warn!(error = %error, "receiving failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        for delivery in deliveries {
            let r = Received {
                event: event_index(&delivery.message),
                receive_count: delivery.receive_count,
                at: Instant::now(),
            };
            received.lock().unwrap().push(r);
            if let Err(error) = delivery.ack().await {
                tracing::warn!(error = %error, "an ack failed; the event comes again");
            }
        }
    }
    Err(format!(
        "the consumer of {topic} made {MAX_RECEIVES} receive calls"
    ))
}

fn confirmed_count(published: &Mutex<Published>) -> usize {
    published
        .lock()
        .unwrap()
        .confirmed
        .iter()
        .filter(|c| c.is_some())
        .count()
}

/// Polls `done` until it holds, or fails at `deadline`.
async fn wait_until(
    deadline: Instant,
    what: &str,
    mut done: impl FnMut() -> bool,
) -> Result<(), String> {
    loop {
        if done() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("gave up waiting for {what} after {OVERALL:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn strings(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}
