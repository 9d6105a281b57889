//! The broker a run publishes to: the embedded queue in the run's database, or a real broker
//! that the caller knows how to build (the `herald` binary builds it as `herald serve` does).
//!
//! A real broker keeps its consumer groups' state in the run's database, so it is built anew
//! on each case's fresh database. Every case names its topic with `unique_topic`, so no run
//! ever reads another's records, and deletes it from the broker when it ends, whether it
//! succeeded or not (`BrokerChoice::deleting_topic_after`), so runs leave nothing behind on
//! a shared broker.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use herald_broker::embedded::EmbeddedBroker;
use herald_broker::log::LogBroker;
use herald_broker::{Broker, Message, SubscribeOptions, Subscription};
use herald_store::{MigrationSet, Store};

use crate::target::Target;

/// Builds a real broker whose consumer groups' state is kept in the given store (migrated
/// with [`herald_broker::log::MIGRATIONS`]): a [`LogBroker`], which
/// `BrokerChoice::delete_topic` needs to reach.
pub type Build = Arc<dyn Fn(&Store) -> anyhow::Result<Arc<dyn Broker>> + Send + Sync>;

/// Which broker a run uses.
#[derive(Clone)]
pub enum BrokerChoice {
    /// The embedded queue, in the run's database.
    Embedded,
    /// A real broker, used as a partitioned log.
    Log {
        /// `nats`, `kafka`, `rabbitmq` or `redis`.
        kind: &'static str,
        /// Where the address came from, for errors (e.g. `--nats-url`); the address itself may
        /// hold a password and is not shown.
        source: String,
        /// Settings that matter for reading its figures (e.g. Kafka's batching), or empty.
        settings: String,
        /// Makes it.
        build: Build,
        /// How a `herald serve` process is told to use the same broker.
        serve: ServeWith,
    },
}

/// How a `herald serve` process started by a scenario is told to use a real broker: lines of
/// its `[broker]` section, and environment variables for what must not be written to a file
/// (the address, which may hold a password).
#[derive(Debug, Clone, Default)]
pub struct ServeWith {
    /// The body of `[broker]`, e.g. `kind = "kafka"`, one setting a line.
    pub section: String,
    /// `HERALD_BROKER__*` variables, e.g. the URL.
    pub env: Vec<(String, herald_core::Secret<String>)>,
}

impl fmt::Debug for BrokerChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Embedded => f.write_str("Embedded"),
            Self::Log {
                kind,
                source,
                settings,
                build: _,
                serve,
            } => f
                .debug_struct("Log")
                .field("kind", kind)
                .field("source", source)
                .field("settings", settings)
                .field("serve", serve)
                .finish_non_exhaustive(),
        }
    }
}

impl BrokerChoice {
    /// `embedded`, `nats`, `kafka`, `rabbitmq` or `redis`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Log { kind, .. } => kind,
        }
    }

    /// Whether this is the embedded queue.
    pub fn is_embedded(&self) -> bool {
        matches!(self, Self::Embedded)
    }

    /// How a `herald serve` process is told to use this broker; nothing for the embedded
    /// queue, which is `herald serve`'s default.
    pub(crate) fn serve_with(&self) -> ServeWith {
        match self {
            Self::Embedded => ServeWith::default(),
            Self::Log { serve, .. } => serve.clone(),
        }
    }

    /// The schema the broker needs in the run's database.
    pub fn migrations(&self) -> &'static MigrationSet {
        match self {
            Self::Embedded => &herald_broker::embedded::MIGRATIONS,
            Self::Log { .. } => &herald_broker::log::MIGRATIONS,
        }
    }

    /// What to say about the broker under the table: its own settings, then `rest`.
    pub(crate) fn settings(&self, rest: &str) -> String {
        match self {
            Self::Log { settings, .. } if !settings.is_empty() => format!("{settings}; {rest}"),
            _ => rest.to_owned(),
        }
    }

    /// The broker on `target`'s database, checked to answer. When it does not, the database
    /// is dropped before the error is returned.
    pub(crate) async fn open(&self, target: Target) -> anyhow::Result<(Target, Arc<dyn Broker>)> {
        let (kind, source, build) = match self {
            Self::Embedded => {
                let broker = Arc::new(EmbeddedBroker::new(target.store.clone()));
                return Ok((target, broker));
            }
            Self::Log {
                kind,
                source,
                build,
                ..
            } => (kind, source, build),
        };
        let opened = async {
            let broker = build(&target.store)?;
            broker
                .ping()
                .await
                .with_context(|| format!("cannot reach the {kind} broker given by {source}"))?;
            anyhow::Ok(broker)
        }
        .await;
        match opened {
            Ok(broker) => Ok((target, broker)),
            Err(err) => {
                target.finish().await?;
                Err(err)
            }
        }
    }

    /// Joins the checking group [`GROUP`] on `topic` before anything is published, which
    /// also creates the topic, so that neither is part of what is measured. The embedded
    /// queue keeps messages only for groups that exist, so its subscription is returned, to
    /// be held through the run. A real broker's subscription is left at once, so that its
    /// readers do not compete with what is measured: the group stays at the beginning of the
    /// topic, and [`read_back`] joins it again.
    pub(crate) async fn group_before(
        &self,
        broker: &dyn Broker,
        topic: &str,
    ) -> anyhow::Result<Option<Box<dyn Subscription>>> {
        let mut subscription = broker
            .subscribe(topic, GROUP, SubscribeOptions::default())
            .await?;
        if self.is_embedded() {
            return Ok(Some(subscription));
        }
        subscription.close().await;
        Ok(None)
    }

    /// Deletes `topic` from a real broker: its records there and its groups' state in the
    /// run's database ([`LogBroker::delete_topic`]). The topic's consumers must be closed
    /// first. Nothing to do on the embedded queue, whose messages go with the run's database.
    pub(crate) async fn delete_topic(
        &self,
        broker: &dyn Broker,
        topic: &str,
    ) -> anyhow::Result<()> {
        let Self::Log { kind, .. } = self else {
            return Ok(());
        };
        let any: &dyn Any = broker;
        let log = any
            .downcast_ref::<LogBroker>()
            .with_context(|| format!("the {kind} broker of this run cannot delete topics"))?;
        log.delete_topic(topic)
            .await
            .with_context(|| format!("cannot delete topic {topic} from the {kind} broker"))
    }

    /// Runs `case`, which uses `topic` of `broker` and closes its consumers of it before it
    /// returns, then deletes the topic ([`BrokerChoice::delete_topic`]) whether the case
    /// succeeded or not. The case's error wins; a deletion that fails after it is logged.
    pub(crate) async fn deleting_topic_after<T>(
        &self,
        broker: &dyn Broker,
        topic: &str,
        case: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let outcome = case.await;
        let deleted = self.delete_topic(broker, topic).await;
        match (outcome, deleted) {
            (Ok(value), deleted) => deleted.map(|()| value),
            (Err(error), Ok(())) => Err(error),
            (Err(error), Err(also)) => {
                tracing::warn!(
                    error = format!("{also:#}"),
                    "the failed case left its topic"
                );
                Err(error)
            }
        }
    }
}

/// The consumer group that reads a run's messages back.
pub(crate) const GROUP: &str = "bench";

/// `bench.<name>.<a new id>`: a topic no other run uses.
pub(crate) fn unique_topic(name: &str) -> String {
    format!("bench.{name}.{}", uuid::Uuid::now_v7().simple())
}

/// Reads `expected` messages of `topic` back through consumer group [`GROUP`], acking each,
/// and returns them in the order received (per key, the broker's delivery order). Then
/// waits a moment more, so that a message published twice shows up as one too many. Leaves
/// the group before it returns, so the topic can be deleted.
pub(crate) async fn read_back(
    broker: &dyn Broker,
    topic: &str,
    expected: usize,
) -> anyhow::Result<Vec<Message>> {
    let mut subscription = broker
        .subscribe(topic, GROUP, SubscribeOptions::default())
        .await?;
    let received = receive_all(subscription.as_mut(), expected).await;
    subscription.close().await;
    received
}

async fn receive_all(
    subscription: &mut dyn Subscription,
    expected: usize,
) -> anyhow::Result<Vec<Message>> {
    let mut received = Vec::with_capacity(expected);
    let mut progress = crate::scenarios::Progress::new("reading back", Some(expected as u64));
    let mut last_news = Instant::now();
    loop {
        let wait = if received.len() < expected {
            Duration::from_secs(1)
        } else {
            // Everything is in: anything more is a duplicate.
            Duration::from_millis(500)
        };
        let deliveries = subscription.receive(1_000, wait).await?;
        if deliveries.is_empty() {
            if received.len() >= expected {
                break;
            }
            anyhow::ensure!(
                last_news.elapsed() < Duration::from_secs(60),
                "reading back: {} of {expected} messages came, then none for 60 s",
                received.len()
            );
            continue;
        }
        last_news = Instant::now();
        for delivery in deliveries {
            received.push(delivery.message.clone());
            delivery.ack().await?;
        }
        progress.update(received.len() as u64);
    }
    progress.finish();
    Ok(received)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;

    use herald_broker::log::{Log, LogOptions, PartitionReader, Position};
    use herald_broker::{BoxFuture, BrokerError};
    use herald_store::StoreOptions;

    use super::*;

    /// A log that only records which topics were deleted.
    #[derive(Debug, Default)]
    struct Deletions(Mutex<Vec<String>>);

    impl Log for Deletions {
        fn kind(&self) -> &'static str {
            "test"
        }

        fn ensure_topic<'a>(
            &'a self,
            _: &'a str,
            _: u32,
        ) -> BoxFuture<'a, Result<(), BrokerError>> {
            Box::pin(async { Ok(()) })
        }

        fn append<'a>(
            &'a self,
            _: &'a str,
            _: &'a [(u32, Message)],
        ) -> BoxFuture<'a, Result<(), BrokerError>> {
            Box::pin(async { Ok(()) })
        }

        fn end<'a>(&'a self, _: &'a str, _: u32) -> BoxFuture<'a, Result<Position, BrokerError>> {
            Box::pin(async { Ok(0) })
        }

        fn reader<'a>(
            &'a self,
            _: &'a str,
            _: u32,
            _: Position,
        ) -> BoxFuture<'a, Result<Box<dyn PartitionReader>, BrokerError>> {
            Box::pin(async { Err(BrokerError::Unavailable("no reads here".to_owned())) })
        }

        fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
            self.0.lock().unwrap().push(topic.to_owned());
            Box::pin(async { Ok(()) })
        }

        fn ping(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test]
    async fn a_cases_topic_is_deleted_whether_it_succeeds_or_fails() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("groups.db").display());
        let store = Store::connect(&url, &StoreOptions::default())
            .await
            .unwrap();
        herald_store::migrate::migrate(&store, &[&herald_broker::log::MIGRATIONS])
            .await
            .unwrap();
        let log = Arc::new(Deletions::default());
        let broker = LogBroker::new(log.clone(), store, LogOptions::default()).unwrap();
        let choice = BrokerChoice::Log {
            kind: "test",
            source: "a test".to_owned(),
            settings: String::new(),
            build: Arc::new(|_| anyhow::bail!("not built here")),
            serve: ServeWith::default(),
        };

        let value = choice
            .deleting_topic_after(&broker, "bench.ok", async { anyhow::Ok(7) })
            .await
            .unwrap();
        assert_eq!(value, 7);
        let failed = choice
            .deleting_topic_after(&broker, "bench.failed", async {
                Err::<(), _>(anyhow::anyhow!("the case failed"))
            })
            .await
            .unwrap_err();
        assert_eq!(failed.to_string(), "the case failed");
        assert_eq!(*log.0.lock().unwrap(), ["bench.ok", "bench.failed"]);

        // The embedded queue has nothing to delete.
        BrokerChoice::Embedded
            .deleting_topic_after(&broker, "bench.embedded", async { anyhow::Ok(()) })
            .await
            .unwrap();
        assert_eq!(log.0.lock().unwrap().len(), 2);
    }
}
