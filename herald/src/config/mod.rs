//! Configuration of `herald serve` (and the defaults `herald dev` starts from).
//!
//! Layers, each overriding the one before: built-in defaults, the TOML file given with
//! `--config`, then `HERALD_*` environment variables, where `__` separates nested keys
//! (`HERALD_HTTP__LISTEN=0.0.0.0:9000` sets `listen` in `[http]`). `HERALD_CONFIG` (the file
//! path), `HERALD_TEST_*` (used by the test harness) and `HERALD_BENCH_*` (`herald bench`'s
//! options) are not configuration keys.
//!
//! Everything is checked at start-up and every problem is reported at once, each naming its
//! key and where the value came from (see [`load`]). After that, code reads typed values and
//! never re-checks them.

mod broker;
mod leases;
mod load;

use std::net::SocketAddr;
use std::time::Duration;

use herald_core::Secret;
use herald_core::admin::AdminToken;
use herald_telemetry::logging::{LogFilter, LogFormat};
use serde::Deserialize;

pub use broker::{BrokerConfig, BrokerKind, BrokerSection};
pub use leases::{LeaseBackend, LeaseConfig, RedisSection};
pub use load::{ConfigError, Problem, Sources, load};

/// The whole configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// The roles this process runs; all of them when not given.
    pub roles: Option<Vec<Role>>,
    /// The HTTP server.
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// The platform API.
    pub api: ApiConfig,
    /// The database every stateful role uses.
    pub store: StoreSection,
    /// The message broker.
    pub broker: BrokerSection,
    /// The outbox relay.
    pub relay: RelaySection,
    /// Redis, for the relay's lease when `relay.lease_backend = "redis"`.
    pub redis: RedisSection,
    /// The users service's consumer.
    pub users: ConsumerSection,
    /// The dispatcher's consumer.
    pub dispatcher: ConsumerSection,
    /// The router.
    pub router: RouterSection,
}

/// A part of Herald that a process can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The platform HTTP API (`/v1/…`): accepts events and serves them.
    Api,
    /// The outbox relay: moves committed events to the broker.
    Relay,
    /// The users service: projects identity's events into profiles and serves them
    /// (`/v1/users`, gRPC `herald.users.v1.UsersService`).
    Users,
    /// The dispatcher: turns each event into a dispatch job per matching subscription.
    Dispatcher,
    /// The router: delivers dispatch jobs to webhook endpoints through their pools.
    Router,
}

impl Role {
    /// Every role, in start order.
    pub const ALL: [Role; 5] = [
        Role::Api,
        Role::Relay,
        Role::Users,
        Role::Dispatcher,
        Role::Router,
    ];
}

/// `[store]`: the database.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `postgres://user:password@host/db` or `sqlite:PATH`. Required.
    pub url: Option<Secret<String>>,
    /// The most connections to open (1 to 1000).
    pub max_connections: u32,
    /// Apply missing migrations at start-up. With `false`, run `herald migrate` first.
    pub auto_migrate: bool,
}

impl Default for StoreSection {
    fn default() -> Self {
        Self {
            url: None,
            max_connections: 16,
            auto_migrate: true,
        }
    }
}

/// `[relay]`: the outbox relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySection {
    /// The broker topic events are published to.
    pub topic: String,
    /// The most events published in one batch (1 to 10000).
    pub batch_size: usize,
    /// Publish attempts before an event is set aside as failed (1 to 1000).
    pub max_attempts: u32,
    /// How long one publish may take before it counts as failed (1s to 10m). On SQLite, rows
    /// of a relay that died mid-publish are published again about this long plus 40 s later.
    pub publish_timeout: HumanDuration,
    /// The relay's lease (1s to 5m): of several instances with the relay role, one leads and
    /// relays; when it dies, another takes over within about this long.
    pub lease_ttl: HumanDuration,
    /// Where that lease is kept: `database` (the default: the store's database) or `redis`
    /// (the Redis of `[redis]`, which takes the renewals off the database; the relay's writes
    /// are still fenced in the database). Change it only with every instance stopped.
    pub lease_backend: LeaseBackend,
}

impl Default for RelaySection {
    fn default() -> Self {
        Self {
            topic: "herald.events".to_owned(),
            batch_size: 500,
            max_attempts: 10,
            publish_timeout: HumanDuration(Duration::from_secs(30)),
            lease_ttl: HumanDuration(Duration::from_secs(10)),
            lease_backend: LeaseBackend::Database,
        }
    }
}

/// `[users]` and `[dispatcher]`: a consumer of the event topic.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsumerSection {
    /// The broker topic its events arrive on (the relay's topic by default).
    pub topic: Option<String>,
    /// Events processed at once (1 to 256); events of one partition key are always in order.
    pub concurrency: usize,
    /// Deliveries of one event before it is dead-lettered (1 to 1000).
    pub max_deliveries: u32,
    /// How long processed event ids are remembered, so redeliveries are recognised (1m to
    /// 365 days; written with `h` for long windows, e.g. `168h`).
    pub inbox_retention: HumanDuration,
    /// How long a received event stays invisible to the group's other consumers (1s to
    /// 10m). It is extended while the handler runs, so it only has to cover a consumer that
    /// died: its events come back to the others after this long.
    pub visibility_timeout: HumanDuration,
}

impl Default for ConsumerSection {
    fn default() -> Self {
        Self {
            topic: None,
            concurrency: 8,
            max_deliveries: 10,
            inbox_retention: HumanDuration(Duration::from_secs(7 * 24 * 3600)),
            visibility_timeout: HumanDuration(Duration::from_secs(10)),
        }
    }
}

/// `[router]`: webhook delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSection {
    /// The longest the router sleeps when nothing is due (10ms to 10s).
    pub poll_interval: HumanDuration,
    /// How often pools and subscriptions are re-read, so API changes apply (100ms to 1m).
    pub refresh_interval: HumanDuration,
    /// How long one webhook request may take (100ms to 5m).
    pub request_timeout: HumanDuration,
    /// How long a claimed dispatch job stays this router's without a renewal (1s to 5m): the
    /// router renews its jobs' leases every quarter of it, and another router delivers a dead
    /// router's jobs this long after its last renewal.
    pub lease_ttl: HumanDuration,
    /// The first retry's longest wait (10ms to 1h); each retry doubles it, with jitter.
    pub backoff_base: HumanDuration,
    /// The longest wait between attempts, `Retry-After` included (backoff_base to 24h).
    pub backoff_max: HumanDuration,
    /// Consecutive failures (429, 5xx, timeouts) that open an endpoint's breaker (1 to 1000).
    pub breaker_threshold: u32,
    /// How long an open breaker waits before a probe (100ms to 1h); doubles while probes fail.
    pub breaker_cooldown: HumanDuration,
    /// The longest an open breaker waits (breaker_cooldown to 24h).
    pub breaker_max_cooldown: HumanDuration,
    /// How long delivered and dead jobs, their attempts and delivered events are kept, and so
    /// how far back a replay reaches (1h to 8760h).
    pub retention: HumanDuration,
}

impl Default for RouterSection {
    fn default() -> Self {
        Self {
            poll_interval: HumanDuration(Duration::from_millis(200)),
            refresh_interval: HumanDuration(Duration::from_secs(1)),
            request_timeout: HumanDuration(Duration::from_secs(10)),
            lease_ttl: HumanDuration(Duration::from_secs(5)),
            backoff_base: HumanDuration(Duration::from_secs(1)),
            backoff_max: HumanDuration(Duration::from_secs(3600)),
            breaker_threshold: 5,
            breaker_cooldown: HumanDuration(Duration::from_secs(5)),
            breaker_max_cooldown: HumanDuration(Duration::from_secs(300)),
            retention: HumanDuration(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

/// `[http]`: the HTTP server.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The address to listen on, e.g. `0.0.0.0:8080`.
    pub listen: SocketAddr,
    /// How long in-flight requests may take to finish after SIGTERM, e.g. `30s`.
    pub shutdown_timeout: HumanDuration,
    /// The largest request body accepted, in bytes (1 KiB to 64 MiB).
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            shutdown_timeout: HumanDuration(Duration::from_secs(30)),
            max_body_bytes: 1024 * 1024,
        }
    }
}

/// `[log]`: logging.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` for people or `json` for log pipelines.
    pub format: LogFormat,
    /// Which events to log: a default level and `target=level` directives, e.g.
    /// `info,herald_router=debug`.
    pub filter: LogFilter,
}

/// `[api]`: the platform API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// The admin API key clients send as `Authorization: Bearer <key>`; at least 32
    /// characters. Without it the platform API answers 401 to everyone.
    pub admin_token: Option<Secret<String>>,
}

/// A duration written with a unit: `250ms`, `30s`, `5m` or `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let explain = || {
        format!(
            "`{text}` is not a duration; write a whole number and a unit, e.g. `250ms`, `30s`, `5m` or `1h`"
        )
    };
    let number: u64 = number.parse().map_err(|_| explain())?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(explain()),
    };
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(explain)
}

/// Configuration after every check passed.
#[derive(Debug)]
pub struct Config {
    /// The roles to run, in start order.
    pub roles: Vec<Role>,
    /// The HTTP server.
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// The admin API key, if configured.
    pub admin_token: Option<AdminToken>,
    /// The database.
    pub store: StoreConfig,
    /// The broker.
    pub broker: BrokerConfig,
    /// The relay.
    pub relay: RelaySection,
    /// Where the relay's lease is kept.
    pub leases: LeaseConfig,
    /// The users service's consumer.
    pub users: ConsumerConfig,
    /// The dispatcher's consumer.
    pub dispatcher: ConsumerConfig,
    /// The router.
    pub router: RouterSection,
}

/// A checked consumer section (`[users]`, `[dispatcher]`).
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The topic consumed.
    pub topic: String,
    /// Events processed at once.
    pub concurrency: usize,
    /// Deliveries before dead-lettering.
    pub max_deliveries: u32,
    /// How long processed ids are kept.
    pub inbox_retention: Duration,
    /// How long a received event is invisible to other consumers.
    pub visibility_timeout: Duration,
}

/// The checked `[store]` section.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// The URL (it may hold a password).
    pub url: Secret<String>,
    /// The most connections.
    pub max_connections: u32,
    /// Apply migrations at start-up.
    pub auto_migrate: bool,
}

/// Whether `name` can be a topic on every broker: 1 to 200 ASCII letters, digits, `.`, `_`, `-`.
fn topic_ok(name: &str) -> bool {
    (1..=200).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl RawConfig {
    /// Checks what types alone cannot, adding to `problems`; returns the typed configuration
    /// when nothing was wrong.
    pub(crate) fn validate(self, sources: &Sources, problems: &mut Vec<Problem>) -> Option<Config> {
        let before = problems.len();
        let body = self.http.max_body_bytes;
        if !(1024..=64 * 1024 * 1024).contains(&body) {
            problems.push(sources.problem(
                "http.max_body_bytes",
                format!("must be between 1024 and 67108864 bytes, not {body}"),
            ));
        }
        if self.http.shutdown_timeout.0 > Duration::from_secs(3600) {
            problems.push(sources.problem("http.shutdown_timeout", "must be at most 1h"));
        }
        let admin_token = match self.api.admin_token {
            Some(secret) => match AdminToken::new(secret.expose().clone()) {
                Ok(token) => Some(token),
                Err(err) => {
                    problems.push(sources.problem("api.admin_token", err.to_string()));
                    None
                }
            },
            None => None,
        };
        let mut roles = self.roles.unwrap_or_else(|| Role::ALL.to_vec());
        roles.sort();
        roles.dedup();
        if roles.is_empty() {
            problems.push(sources.problem(
                "roles",
                "must name at least one role: api, relay, users, dispatcher, router",
            ));
        }
        let store = match self.store.url {
            Some(url) => {
                let text = url.expose();
                if !(text.starts_with("postgres://")
                    || text.starts_with("postgresql://")
                    || text.starts_with("sqlite:"))
                {
                    problems.push(sources.problem("store.url", "must start with postgres://, postgresql:// or sqlite: (the value is secret and not shown)"));
                }
                Some(StoreConfig {
                    url,
                    max_connections: self.store.max_connections,
                    auto_migrate: self.store.auto_migrate,
                })
            }
            None => {
                problems.push(sources.missing("store.url", "is required, e.g. postgres://herald@127.0.0.1/herald or sqlite:/var/lib/herald/herald.db"));
                None
            }
        };
        if !(1..=1000).contains(&self.store.max_connections) {
            problems.push(sources.problem(
                "store.max_connections",
                format!(
                    "must be between 1 and 1000, not {}",
                    self.store.max_connections
                ),
            ));
        }
        if !topic_ok(&self.relay.topic) {
            problems.push(sources.problem(
                "relay.topic",
                "must be 1 to 200 ASCII letters, digits, `.`, `_` or `-`",
            ));
        }
        if !(1..=10_000).contains(&self.relay.batch_size) {
            problems.push(sources.problem(
                "relay.batch_size",
                format!("must be between 1 and 10000, not {}", self.relay.batch_size),
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600))
            .contains(&self.relay.publish_timeout.0)
        {
            problems.push(sources.problem("relay.publish_timeout", "must be between 1s and 10m"));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(300)).contains(&self.relay.lease_ttl.0) {
            problems.push(sources.problem("relay.lease_ttl", "must be between 1s and 5m"));
        }
        if !(1..=1000).contains(&self.relay.max_attempts) {
            problems.push(sources.problem(
                "relay.max_attempts",
                format!(
                    "must be between 1 and 1000, not {}",
                    self.relay.max_attempts
                ),
            ));
        }
        let users = check_consumer("users", &self.users, &self.relay.topic, sources, problems);
        let dispatcher = check_consumer(
            "dispatcher",
            &self.dispatcher,
            &self.relay.topic,
            sources,
            problems,
        );
        check_router(&self.router, sources, problems);
        let leases = leases::check(&self.relay, &self.redis, &self.broker, sources, problems);
        let broker = self.broker.check(sources, problems);
        let store = store?;
        let broker = broker?;
        let leases = leases?;
        (problems.len() == before).then_some(Config {
            roles,
            http: self.http,
            log: self.log,
            admin_token,
            store,
            broker,
            relay: self.relay,
            leases,
            users,
            dispatcher,
            router: self.router,
        })
    }
}

/// Checks consumer section `name`; its topic defaults to `relay_topic`.
fn check_consumer(
    name: &str,
    section: &ConsumerSection,
    relay_topic: &str,
    sources: &Sources,
    problems: &mut Vec<Problem>,
) -> ConsumerConfig {
    let topic = section
        .topic
        .clone()
        .unwrap_or_else(|| relay_topic.to_owned());
    if !topic_ok(&topic) {
        problems.push(sources.problem(
            &format!("{name}.topic"),
            "must be 1 to 200 ASCII letters, digits, `.`, `_` or `-`",
        ));
    }
    if !(1..=256).contains(&section.concurrency) {
        problems.push(sources.problem(
            &format!("{name}.concurrency"),
            format!("must be between 1 and 256, not {}", section.concurrency),
        ));
    }
    if !(1..=1000).contains(&section.max_deliveries) {
        problems.push(sources.problem(
            &format!("{name}.max_deliveries"),
            format!("must be between 1 and 1000, not {}", section.max_deliveries),
        ));
    }
    if !(Duration::from_secs(60)..=Duration::from_secs(365 * 24 * 3600))
        .contains(&section.inbox_retention.0)
    {
        problems.push(sources.problem(
            &format!("{name}.inbox_retention"),
            "must be between 1m and 8760h (365 days)",
        ));
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&section.visibility_timeout.0)
    {
        problems.push(sources.problem(
            &format!("{name}.visibility_timeout"),
            "must be between 1s and 10m",
        ));
    }
    ConsumerConfig {
        topic,
        concurrency: section.concurrency,
        max_deliveries: section.max_deliveries,
        inbox_retention: section.inbox_retention.0,
        visibility_timeout: section.visibility_timeout.0,
    }
}

/// Checks `[router]`.
fn check_router(section: &RouterSection, sources: &Sources, problems: &mut Vec<Problem>) {
    let ms = Duration::from_millis;
    let secs = Duration::from_secs;
    let ranges = [
        (
            "router.poll_interval",
            section.poll_interval.0,
            ms(10),
            secs(10),
            "10ms and 10s",
        ),
        (
            "router.refresh_interval",
            section.refresh_interval.0,
            ms(100),
            secs(60),
            "100ms and 1m",
        ),
        (
            "router.request_timeout",
            section.request_timeout.0,
            ms(100),
            secs(300),
            "100ms and 5m",
        ),
        (
            "router.lease_ttl",
            section.lease_ttl.0,
            herald_router::engine::MIN_LEASE,
            herald_router::engine::MAX_LEASE,
            "1s and 5m",
        ),
        (
            "router.backoff_base",
            section.backoff_base.0,
            ms(10),
            secs(3600),
            "10ms and 1h",
        ),
        (
            "router.breaker_cooldown",
            section.breaker_cooldown.0,
            ms(100),
            secs(3600),
            "100ms and 1h",
        ),
        (
            "router.retention",
            section.retention.0,
            secs(3600),
            secs(365 * 24 * 3600),
            "1h and 8760h",
        ),
    ];
    for (key, value, low, high, text) in ranges {
        if !(low..=high).contains(&value) {
            problems.push(sources.problem(key, format!("must be between {text}")));
        }
    }
    if !(section.backoff_base.0..=secs(24 * 3600)).contains(&section.backoff_max.0) {
        problems.push(sources.problem(
            "router.backoff_max",
            "must be at least router.backoff_base and at most 24h",
        ));
    }
    if !(section.breaker_cooldown.0..=secs(24 * 3600)).contains(&section.breaker_max_cooldown.0) {
        problems.push(sources.problem(
            "router.breaker_max_cooldown",
            "must be at least router.breaker_cooldown and at most 24h",
        ));
    }
    if !(1..=1000).contains(&section.breaker_threshold) {
        problems.push(sources.problem(
            "router.breaker_threshold",
            format!(
                "must be between 1 and 1000, not {}",
                section.breaker_threshold
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "30",
            "s",
            "1.5s",
            "-1s",
            "30 s",
            "2d",
            "99999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
