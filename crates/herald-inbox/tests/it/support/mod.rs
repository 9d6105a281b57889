//! Test support: a database with the queue, inbox and outbox schemas and an effects table,
//! events and their broker messages, a recording handler, a consumer running in the
//! background, and polling with deadlines.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_broker::embedded::EmbeddedBroker;
use herald_broker::{BoxFuture, Broker, Message};
use herald_core::Event;
use herald_inbox::{Consumer, ConsumerOptions, Handler, HandlerError, InboxError, Tx};
use herald_store::Store;
use herald_telemetry::metrics::{InboxLabels, metrics};
use herald_testing::{TestDb, unique_name};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for something that should happen.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// A test's database, broker, topic and consumer name.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub(crate) store: Store,
    pub(crate) broker: EmbeddedBroker,
    pub(crate) topic: String,
    pub(crate) name: String,
}

impl Setup {
    pub(crate) async fn new(db: &TestDb) -> Self {
        let store = db.store().clone();
        herald_store::migrate::migrate(
            &store,
            &[
                &herald_broker::embedded::MIGRATIONS,
                &herald_inbox::MIGRATIONS,
                &herald_outbox::MIGRATIONS,
            ],
        )
        .await
        .unwrap();
        let create = match &store {
            Store::Postgres(pool) => sqlx::query(
                "CREATE TABLE test_effects (seq BIGSERIAL PRIMARY KEY, event_id TEXT NOT NULL, \
                 partition_key TEXT, n BIGINT NOT NULL)",
            )
            .execute(pool)
            .await
            .map(drop),
            Store::Sqlite(pool) => sqlx::query(
                "CREATE TABLE test_effects (seq INTEGER PRIMARY KEY AUTOINCREMENT, \
                 event_id TEXT NOT NULL, partition_key TEXT, n INTEGER NOT NULL)",
            )
            .execute(pool)
            .await
            .map(drop),
        };
        create.unwrap();
        Self {
            broker: EmbeddedBroker::new(store.clone()),
            store,
            topic: unique_name("topic"),
            name: unique_name("consumer"),
        }
    }

    /// Options that make tests quick: short waits and backoffs.
    pub(crate) fn options(&self) -> ConsumerOptions {
        let mut options = ConsumerOptions::new(&self.name, &self.topic);
        options.receive_wait = Duration::from_millis(100);
        options.backoff_min = Duration::from_millis(10);
        options.backoff_max = Duration::from_millis(100);
        options.visibility_timeout = Duration::from_secs(10);
        options.shutdown_timeout = Duration::from_secs(20);
        options
    }

    pub(crate) fn consumer(&self, options: ConsumerOptions, handler: impl Handler) -> Consumer {
        Consumer::new(
            self.store.clone(),
            Arc::new(self.broker.clone()),
            options,
            handler,
        )
        .unwrap()
    }

    pub(crate) async fn publish(&self, messages: &[Message]) {
        self.broker.publish(&self.topic, messages).await.unwrap();
    }

    /// The effects handlers committed, in commit order: (event id, key, n).
    pub(crate) async fn effects(&self) -> Vec<(String, Option<String>, i64)> {
        let sql = "SELECT event_id, partition_key, n FROM test_effects ORDER BY seq";
        match &self.store {
            Store::Postgres(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
            Store::Sqlite(pool) => sqlx::query_as(sql).fetch_all(pool).await.unwrap(),
        }
    }

    /// How many deliveries this test's consumer settled with `outcome`.
    pub(crate) fn settled(&self, outcome: &str) -> u64 {
        metrics()
            .inbox_processed
            .get_or_create(&InboxLabels {
                consumer: self.name.clone(),
                outcome: outcome.to_owned(),
            })
            .get()
    }
}

/// An event with `{"n": n}` as data.
pub(crate) fn event(key: Option<&str>, n: i64) -> Event {
    let event = Event::new("test.happened", "/tests", &serde_json::json!({ "n": n })).unwrap();
    match key {
        Some(key) => event.with_partition_key(key),
        None => event,
    }
}

/// The broker message the relay would publish for `event`.
pub(crate) fn message(event: &Event) -> Message {
    let mut headers = vec![
        ("type".to_owned(), event.event_type.clone()),
        ("source".to_owned(), event.source.clone()),
    ];
    if let Some(id) = &event.correlationid {
        headers.push(("correlationid".to_owned(), id.clone()));
    }
    Message {
        id: event.id.clone(),
        key: event.partitionkey.clone(),
        headers,
        payload: Bytes::from(serde_json::to_vec(event).unwrap()),
    }
}

/// The `n` of an event made by [`event`].
pub(crate) fn n_of(event: &Event) -> i64 {
    let data: serde_json::Value =
        serde_json::from_str(event.data.as_ref().map_or("null", |d| d.get())).unwrap_or_default();
    data["n"].as_i64().unwrap_or(-1)
}

/// Inserts the event's effect row in the handler's transaction.
pub(crate) async fn record_effect(tx: &mut Tx<'_>, event: &Event) -> Result<(), HandlerError> {
    let n = n_of(event);
    match tx {
        Tx::Postgres(conn) => {
            sqlx::query(
                "INSERT INTO test_effects (event_id, partition_key, n) VALUES ($1, $2, $3)",
            )
            .bind(&event.id)
            .bind(&event.partitionkey)
            .bind(n)
            .execute(&mut **conn)
            .await?;
        }
        Tx::Sqlite(conn) => {
            sqlx::query(
                "INSERT INTO test_effects (event_id, partition_key, n) VALUES (?1, ?2, ?3)",
            )
            .bind(&event.id)
            .bind(&event.partitionkey)
            .bind(n)
            .execute(&mut **conn)
            .await?;
        }
    }
    Ok(())
}

/// Decides whether a call fails: given the event and how many times the handler was called
/// for its id (this call included).
pub(crate) type FailWhen = dyn Fn(&Event, u32) -> Option<HandlerError> + Send + Sync;

/// A handler that counts its calls per event id and records each event's effect, unless
/// `fail` says to fail.
#[derive(Clone)]
pub(crate) struct Recorder {
    pub(crate) calls: Arc<Mutex<HashMap<String, u32>>>,
    fail: Arc<FailWhen>,
}

impl Recorder {
    pub(crate) fn new() -> Self {
        Self::failing(|_, _| None)
    }

    pub(crate) fn failing(
        fail: impl Fn(&Event, u32) -> Option<HandlerError> + Send + Sync + 'static,
    ) -> Self {
        Self {
            calls: Arc::default(),
            fail: Arc::new(fail),
        }
    }

    pub(crate) fn calls(&self, id: &str) -> u32 {
        self.calls.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

impl Handler for Recorder {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        mut tx: Tx<'a>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let call = {
                let mut calls = self.calls.lock().unwrap();
                let count = calls.entry(event.id.clone()).or_default();
                *count += 1;
                *count
            };
            if let Some(err) = (self.fail)(event, call) {
                return Err(err);
            }
            record_effect(&mut tx, event).await
        })
    }
}

/// A consumer running in the background.
pub(crate) struct Running {
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), InboxError>>,
}

impl Running {
    pub(crate) fn start(consumer: &Consumer) -> Self {
        let (stop, stopped) = oneshot::channel::<()>();
        let consumer = consumer.clone();
        let handle = tokio::spawn(async move {
            consumer
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        Self { stop, handle }
    }

    /// Shuts the consumer down and checks that it returns in time.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("the consumer stops in time")
            .unwrap()
            .unwrap();
    }
}

/// Polls `check` until it returns true, failing the test after `within`.
pub(crate) async fn wait_until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    let mut pause = Duration::from_millis(5);
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
