//! `[broker]`: which broker carries events, and how to reach it.

use std::time::Duration;

use herald_broker::log::LogOptions;
use herald_core::Secret;
use serde::Deserialize;

use super::HumanDuration;
use super::load::{Problem, Sources};

/// The kinds of broker.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// The embedded queue, in the store's database: nothing else to run.
    #[default]
    Embedded,
    /// NATS with JetStream.
    Nats,
    /// Kafka, or a broker that speaks its protocol.
    Kafka,
    /// RabbitMQ (3.9 or later: streams).
    Rabbitmq,
    /// Redis Streams.
    Redis,
}

impl BrokerKind {
    /// The name in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Nats => "nats",
            Self::Kafka => "kafka",
            Self::Rabbitmq => "rabbitmq",
            Self::Redis => "redis",
        }
    }

    /// What an address of this kind looks like.
    pub fn example_url(self) -> &'static str {
        match self {
            Self::Embedded => "",
            Self::Nats => "nats://127.0.0.1:4222",
            Self::Kafka => "127.0.0.1:9092",
            Self::Rabbitmq => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Self::Redis => "redis://127.0.0.1:6379",
        }
    }

    /// Whether `url` has the form of this kind's addresses (a scheme it speaks; for Kafka,
    /// `host:port` pairs separated by commas). Nothing is connected to.
    pub fn fits_url(self, url: &str) -> bool {
        let schemes: &[&str] = match self {
            Self::Nats => &["nats://", "tls://"],
            Self::Rabbitmq => &["amqp://"],
            Self::Redis => &["redis://"],
            Self::Embedded => return false,
            // Kafka: host:port pairs, comma-separated, without a scheme.
            Self::Kafka => {
                return !url.is_empty()
                    && url.split(',').all(|server| {
                        server.rsplit_once(':').is_some_and(|(host, port)| {
                            !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok()
                        })
                    });
            }
        };
        schemes.iter().any(|scheme| url.starts_with(scheme))
    }
}

/// `[broker]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSection {
    /// `embedded` (the default), `nats`, `kafka`, `rabbitmq` or `redis`.
    pub kind: BrokerKind,
    /// Where the broker is: `nats://host:4222`, `host:9092[,host:9092…]` for Kafka,
    /// `amqp://user:password@host:5672/%2f`, `redis://host:6379`. It may hold a password.
    pub url: Option<Secret<String>>,
    /// A prefix for the names Herald makes on the broker (streams, topics, queues, keys).
    pub prefix: Option<String>,
    /// Partitions of each topic Herald creates: the most consumers one group can use.
    pub partitions: u32,
    /// How long a consumer that stopped heartbeating keeps its partitions.
    pub session_timeout: HumanDuration,
    /// Kafka only: send every record in a batch of its own, for Kafka-compatible servers that
    /// read only from batch boundaries (tansu 0.6). Costs throughput on Kafka itself.
    pub one_record_per_batch: bool,
}

impl Default for BrokerSection {
    fn default() -> Self {
        let log = LogOptions::default();
        Self {
            kind: BrokerKind::Embedded,
            url: None,
            prefix: None,
            partitions: log.partitions,
            session_timeout: HumanDuration(log.session_timeout),
            one_record_per_batch: false,
        }
    }
}

/// The checked broker configuration.
#[derive(Debug, Clone)]
pub enum BrokerConfig {
    /// The embedded queue.
    Embedded,
    /// A real broker, used as a partitioned log.
    Log {
        /// Which.
        kind: BrokerKind,
        /// Where (secret: it may hold a password).
        url: Secret<String>,
        /// The name prefix, when not the backend's default.
        prefix: Option<String>,
        /// Partitions and consumer sessions.
        options: LogOptions,
        /// Kafka only: one record per batch.
        one_record_per_batch: bool,
    },
}

impl BrokerSection {
    /// Checks the section, adding to `problems`.
    pub(crate) fn check(
        self,
        sources: &Sources,
        problems: &mut Vec<Problem>,
    ) -> Option<BrokerConfig> {
        let before = problems.len();
        let kind = self.kind;
        if kind == BrokerKind::Embedded {
            if self.url.is_some() {
                problems.push(sources.problem(
                    "broker.url",
                    "is only for kind = nats, kafka, rabbitmq or redis; the embedded queue uses store.url",
                ));
            }
            if self.prefix.is_some() {
                problems.push(sources.problem(
                    "broker.prefix",
                    "is only for kind = nats, kafka, rabbitmq or redis",
                ));
            }
            return (problems.len() == before).then_some(BrokerConfig::Embedded);
        }
        let example = kind.example_url();
        match &self.url {
            None => problems.push(sources.missing(
                "broker.url",
                format!(
                    "is required with kind = \"{}\", e.g. {example}",
                    kind.name()
                ),
            )),
            Some(url) => {
                if !kind.fits_url(url.expose()) {
                    problems.push(sources.problem(
                        "broker.url",
                        format!(
                            "is not a {} address; write it like {example} (the value may be secret and is not shown)",
                            kind.name()
                        ),
                    ));
                }
            }
        }
        if kind == BrokerKind::Nats && self.prefix.is_some() {
            problems.push(sources.problem(
                "broker.prefix",
                "is not supported with kind = \"nats\": streams are named HERALD_<topic>; give each deployment its own topics instead",
            ));
        } else if let Some(prefix) = &self.prefix
            && (prefix.is_empty()
                || prefix.len() > 40
                || !prefix
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)))
        {
            problems.push(sources.problem(
                "broker.prefix",
                "must be 1 to 40 ASCII letters, digits, `.`, `_` or `-`",
            ));
        }
        if !(1..=1024).contains(&self.partitions) {
            problems.push(sources.problem(
                "broker.partitions",
                format!("must be between 1 and 1024, not {}", self.partitions),
            ));
        }
        if self.one_record_per_batch && kind != BrokerKind::Kafka {
            problems.push(sources.problem(
                "broker.one_record_per_batch",
                "is only for kind = \"kafka\"",
            ));
        }
        let session = self.session_timeout.0;
        if !(Duration::from_secs(3)..=Duration::from_secs(600)).contains(&session) {
            problems.push(sources.problem("broker.session_timeout", "must be between 3s and 10m"));
        }
        let url = self.url?;
        (problems.len() == before).then(|| BrokerConfig::Log {
            kind,
            url,
            prefix: self.prefix,
            one_record_per_batch: self.one_record_per_batch,
            options: LogOptions {
                partitions: self.partitions,
                session_timeout: session,
                heartbeat: (session / 10).max(Duration::from_millis(300)),
                ..LogOptions::default()
            },
        })
    }
}
