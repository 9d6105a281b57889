//! The broker a run publishes to: the embedded queue in the run's database, or a real broker
//! that the caller knows how to build (the `herald` binary builds it as `herald serve` does).
//!
//! A real broker keeps its consumer groups' state in the run's database, so it is built anew
//! on each case's fresh database. Its topics outlive the run on the broker, so every case
//! names its topic with [`unique_topic`]: no run ever reads another's records.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use herald_broker::embedded::EmbeddedBroker;
use herald_broker::{Broker, Message, SubscribeOptions, Subscription};
use herald_store::{MigrationSet, Store};

use crate::target::Target;

/// Builds a real broker whose consumer groups' state is kept in the given store (migrated
/// with [`herald_broker::log::MIGRATIONS`]).
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
    },
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
            } => f
                .debug_struct("Log")
                .field("kind", kind)
                .field("source", source)
                .field("settings", settings)
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
        let subscription = broker
            .subscribe(topic, GROUP, SubscribeOptions::default())
            .await?;
        Ok(self.is_embedded().then_some(subscription))
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
/// waits a moment more, so that a message published twice shows up as one too many.
pub(crate) async fn read_back(
    broker: &dyn Broker,
    topic: &str,
    expected: usize,
) -> anyhow::Result<Vec<Message>> {
    let mut subscription = broker
        .subscribe(topic, GROUP, SubscribeOptions::default())
        .await?;
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
