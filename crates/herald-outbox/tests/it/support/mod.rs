//! Test support: outbox databases, events, a recording broker double with fault injection
//! (optionally in front of the real embedded broker), a relay running in the background, and
//! polling with deadlines.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_broker::embedded::EmbeddedBroker;
use herald_broker::{BoxFuture, Broker, BrokerError, Message, SubscribeOptions, Subscription};
use herald_core::Event;
use herald_outbox::{OutboxError, Relay, RelayOptions, Waker};
use herald_store::Store;
use herald_testing::{TestDb, unique_name};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Applies the outbox schema to a test database.
pub(crate) async fn outbox_db(db: &TestDb) -> Store {
    herald_outbox::migrate(db.store()).await.unwrap();
    db.store().clone()
}

/// Which broker the relay publishes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// The recording broker alone: what it confirmed is the outcome.
    Memory,
    /// The recording broker in front of the real embedded broker on the test database: what
    /// a consumer group then receives is the outcome.
    Embedded,
}

/// A test's database, broker and topic.
#[derive(Debug)]
pub(crate) struct Setup {
    pub(crate) store: Store,
    pub(crate) broker: Arc<RecordingBroker>,
    pub(crate) topic: String,
    embedded: Option<EmbeddedBroker>,
}

impl Setup {
    pub(crate) async fn new(db: &TestDb, via: Via) -> Self {
        let store = outbox_db(db).await;
        let embedded = match via {
            Via::Memory => None,
            Via::Embedded => {
                herald_store::migrate::migrate(&store, &[&herald_broker::embedded::MIGRATIONS])
                    .await
                    .unwrap();
                Some(EmbeddedBroker::new(store.clone()))
            }
        };
        let broker = Arc::new(RecordingBroker {
            inner: Mutex::default(),
            forward: embedded
                .clone()
                .map(|broker| Arc::new(broker) as Arc<dyn Broker>),
        });
        Self {
            store,
            broker,
            topic: unique_name("topic"),
            embedded,
        }
    }

    /// Test relay options for this setup's topic.
    pub(crate) fn options(&self) -> RelayOptions {
        options(&self.topic)
    }

    /// A relay from this setup's outbox to its broker.
    pub(crate) fn relay(&self, options: RelayOptions) -> Relay {
        Relay::new(self.store.clone(), self.broker.clone(), options)
    }

    /// Checks that consumers receive what the broker confirmed: with the embedded broker, a
    /// new consumer group reads the topic (acking each message) and must receive every
    /// confirmed message exactly once, each key in confirmed order, and nothing else. Returns
    /// the messages in the order received.
    pub(crate) async fn check_delivery(&self) -> Vec<Message> {
        let confirmed = self.broker.confirmed();
        let Some(embedded) = &self.embedded else {
            return confirmed;
        };
        let options = SubscribeOptions {
            visibility_timeout: Duration::from_secs(120),
            max_deliveries: 10,
        };
        let mut subscription = embedded
            .subscribe(&self.topic, "check", options)
            .await
            .unwrap();
        let mut received = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        for _ in 0..100_000 {
            if received.len() >= confirmed.len() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "only {} of {} confirmed messages were received within 120 s",
                received.len(),
                confirmed.len()
            );
            let batch = subscription
                .receive(1000, Duration::from_millis(500))
                .await
                .unwrap();
            for delivery in batch {
                received.push(delivery.message.clone());
                delivery.ack().await.unwrap();
            }
        }
        let extra = subscription
            .receive(1000, Duration::from_millis(200))
            .await
            .unwrap();
        assert!(
            extra.is_empty(),
            "more was received than confirmed: {extra:?}"
        );
        assert_eq!(received.len(), confirmed.len());
        let by_key = |messages: &[Message]| {
            let mut keys: HashMap<Option<String>, Vec<String>> = HashMap::new();
            for message in messages {
                keys.entry(message.key.clone())
                    .or_default()
                    .push(message.id.clone());
            }
            keys
        };
        let mut received_keys = by_key(&received);
        let mut confirmed_keys = by_key(&confirmed);
        // Key-less messages carry no order promise.
        if let (Some(got), Some(sent)) =
            (received_keys.get_mut(&None), confirmed_keys.get_mut(&None))
        {
            got.sort();
            sent.sort();
        }
        assert_eq!(
            received_keys, confirmed_keys,
            "received per key as confirmed"
        );
        received
    }
}

/// Event `seq` of key `key`; its data is `{"key": key, "seq": seq}`.
pub(crate) fn event(key: &str, seq: usize) -> Event {
    Event::new(
        "test.item.made",
        "/tests",
        &serde_json::json!({"key": key, "seq": seq}),
    )
    .unwrap()
    .with_partition_key(key)
}

/// The `(key, seq)` of a published message, read back from its payload.
pub(crate) fn key_seq(message: &Message) -> (String, usize) {
    key_seq_of(&serde_json::from_slice(&message.payload).unwrap())
}

/// The `(key, seq)` of an event made by [`event`].
pub(crate) fn key_seq_of(event: &Event) -> (String, usize) {
    let data: serde_json::Value = serde_json::from_str(event.data.as_ref().unwrap().get()).unwrap();
    (
        data["key"].as_str().unwrap().to_owned(),
        usize::try_from(data["seq"].as_u64().unwrap()).unwrap(),
    )
}

/// Each key's sequence numbers, in publish order.
pub(crate) fn sequences(messages: &[Message]) -> HashMap<String, Vec<usize>> {
    let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
    for message in messages {
        let (key, seq) = key_seq(message);
        assert_eq!(message.key.as_deref(), Some(key.as_str()));
        by_key.entry(key).or_default().push(seq);
    }
    by_key
}

/// Writes `events` in one committed transaction.
pub(crate) async fn write_committed(store: &Store, events: &[Event]) {
    match store {
        Store::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            herald_outbox::write(&mut *tx, events).await.unwrap();
            tx.commit().await.unwrap();
        }
        Store::Sqlite(pool) => {
            let mut tx = pool.begin().await.unwrap();
            herald_outbox::write(&mut *tx, events).await.unwrap();
            tx.commit().await.unwrap();
        }
    }
}

/// One outbox row, as an operator would look at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    pub(crate) event_id: String,
    pub(crate) status: String,
    pub(crate) attempts: i32,
    pub(crate) last_error: Option<String>,
}

/// Every outbox row, in id order.
pub(crate) async fn rows(store: &Store) -> Vec<Row> {
    const SQL: &str =
        "SELECT event_id, status, attempts, last_error FROM herald_outbox ORDER BY id";
    let rows: Vec<(String, String, i32, Option<String>)> = match store {
        Store::Postgres(pool) => sqlx::query_as(SQL).fetch_all(pool).await.unwrap(),
        Store::Sqlite(pool) => sqlx::query_as(SQL).fetch_all(pool).await.unwrap(),
    };
    rows.into_iter()
        .map(|(event_id, status, attempts, last_error)| Row {
            event_id,
            status,
            attempts,
            last_error,
        })
        .collect()
}

/// Relay options for tests: short backoffs and polls, so failures resolve quickly; and, on
/// PostgreSQL, a new generation every 100 rows (at most one a second), so the cases with more
/// rows than that also cross generations.
pub(crate) fn options(topic: &str) -> RelayOptions {
    RelayOptions {
        topic: topic.to_owned(),
        batch_size: 50,
        max_attempts: 1000,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
        idle_poll_min: Duration::from_millis(5),
        idle_poll_max: Duration::from_millis(50),
        publish_timeout: Duration::from_secs(30),
        rotate_after: 100,
    }
}

/// Polls `check` every 20 ms until it is true; fails the test after `timeout`.
pub(crate) async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    const INTERVAL: Duration = Duration::from_millis(20);
    let deadline = Instant::now() + timeout;
    let max_polls = timeout.as_millis() / INTERVAL.as_millis() + 10;
    for _ in 0..max_polls {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(INTERVAL).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// A relay running in a background task until [`Running::stop`].
#[derive(Debug)]
pub(crate) struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), OutboxError>>,
    pub(crate) waker: Waker,
}

pub(crate) fn spawn(relay: Relay) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let waker = relay.waker();
    let task = tokio::spawn(async move {
        relay
            .run(async move {
                let _ = stopped.await;
            })
            .await
    });
    Running { stop, task, waker }
}

impl Running {
    /// Stops the relay and waits (bounded) for it to finish its round.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the relay stops within 60 s")
            .unwrap()
            .unwrap();
    }
}

/// What the recording broker saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A message the broker confirmed.
    Confirmed(String),
    /// A publish refused because of this message.
    Refused(String),
}

/// A fault-injection double for the **broker side only**, for relay tests: it records every
/// confirmed publish in memory, in order, and can be told to refuse any batch that holds a
/// given event id (a number of times, or until told otherwise), or to be down altogether
/// (publish and ping fail). A refused batch is refused whole: nothing of it is recorded or
/// forwarded. Alone it is the broker and delivers nothing (`subscribe` fails); in front of the
/// embedded broker it forwards what it does not refuse, and records it once the embedded
/// broker has confirmed it.
#[derive(Debug)]
pub(crate) struct RecordingBroker {
    inner: Mutex<Inner>,
    forward: Option<Arc<dyn Broker>>,
}

#[derive(Debug, Default)]
struct Inner {
    confirmed: Vec<Message>,
    seen: Vec<Seen>,
    down: bool,
    failed_publishes: usize,
    /// Event id → refusals left (`None`: until told otherwise).
    refuse: HashMap<String, Option<u32>>,
}

impl RecordingBroker {
    /// Every confirmed message, in publish order.
    pub(crate) fn confirmed(&self) -> Vec<Message> {
        self.inner.lock().unwrap().confirmed.clone()
    }

    pub(crate) fn confirmed_count(&self) -> usize {
        self.inner.lock().unwrap().confirmed.len()
    }

    /// Everything confirmed and refused, in order.
    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.inner.lock().unwrap().seen.clone()
    }

    /// Publishes that failed (down or refused).
    pub(crate) fn failed_publishes(&self) -> usize {
        self.inner.lock().unwrap().failed_publishes
    }

    /// Makes the broker unreachable (`true`) or back (`false`).
    pub(crate) fn set_down(&self, down: bool) {
        self.inner.lock().unwrap().down = down;
    }

    /// Refuses batches holding `event_id`: `times` times, or until [`Self::accept`] if `None`.
    pub(crate) fn refuse(&self, event_id: &str, times: Option<u32>) {
        self.inner
            .lock()
            .unwrap()
            .refuse
            .insert(event_id.to_owned(), times);
    }

    /// Stops refusing `event_id`.
    pub(crate) fn accept(&self, event_id: &str) {
        self.inner.lock().unwrap().refuse.remove(event_id);
    }
}

impl Broker for RecordingBroker {
    fn kind(&self) -> &'static str {
        "recording"
    }

    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: &'a [Message],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.refusal(messages)?;
            if let Some(forward) = &self.forward {
                forward.publish(topic, messages).await?;
            }
            let mut inner = self.inner.lock().unwrap();
            for message in messages {
                inner.seen.push(Seen::Confirmed(message.id.clone()));
                inner.confirmed.push(message.clone());
            }
            Ok(())
        })
    }

    fn subscribe<'a>(
        &'a self,
        _topic: &'a str,
        _group: &'a str,
        _options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, BrokerError>> {
        Box::pin(async {
            Err(BrokerError::Invalid(
                "the recording broker does not deliver".into(),
            ))
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            if self.inner.lock().unwrap().down {
                return Err(BrokerError::Unavailable("the test broker is down".into()));
            }
            match &self.forward {
                Some(forward) => forward.ping().await,
                None => Ok(()),
            }
        })
    }
}

impl RecordingBroker {
    /// The error for a publish of `messages` that is to fail, recording the refusal.
    fn refusal(&self, messages: &[Message]) -> Result<(), BrokerError> {
        let mut inner = self.inner.lock().unwrap();
        if inner.down {
            inner.failed_publishes += 1;
            return Err(BrokerError::Unavailable("the test broker is down".into()));
        }
        for message in messages {
            let refused = match inner.refuse.get_mut(&message.id) {
                Some(None) => true,
                Some(Some(left)) if *left > 0 => {
                    *left -= 1;
                    true
                }
                _ => false,
            };
            if refused {
                inner.failed_publishes += 1;
                inner.seen.push(Seen::Refused(message.id.clone()));
                return Err(BrokerError::Unavailable(format!(
                    "the test broker refused {}",
                    message.id
                )));
            }
        }
        Ok(())
    }
}
