//! Where the relay's lease is kept: `[relay] lease_backend`, and `[redis]` for a lease in Redis.

use herald_core::Secret;
use serde::Deserialize;

use super::load::{Problem, Sources};
use super::{BrokerKind, BrokerSection, RelaySection};

/// Where leases are kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseBackend {
    /// In the store's database (`herald_leases`): nothing else to run.
    #[default]
    Database,
    /// In Redis (`[redis]`), fenced in the database.
    Redis,
}

/// `[redis]`: the Redis that holds the relay's lease when `relay.lease_backend = "redis"`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    /// `redis://host:6379` (it may hold a password: `redis://:password@host:6379/0`). Defaults
    /// to `broker.url` when `broker.kind = "redis"`.
    pub url: Option<Secret<String>>,
    /// Put before the lease's key (`<prefix>:lease:outbox-relay`); `herald` by default.
    /// Installations with databases of their own that share one Redis each need their own,
    /// or only one of them relays. 1 to 100 ASCII letters, digits, `.`, `_`, `:` or `-`.
    pub prefix: Option<String>,
}

/// The checked lease settings.
#[derive(Debug, Clone)]
pub enum LeaseConfig {
    /// In the store's database.
    Database,
    /// In Redis.
    Redis {
        /// Where (secret: it may hold a password).
        url: Secret<String>,
        /// The key prefix.
        prefix: String,
    },
}

/// The prefix when `redis.prefix` is not given.
const DEFAULT_PREFIX: &str = "herald";

/// Checks `relay.lease_backend` and `[redis]`, adding to `problems`. The Redis URL defaults
/// to the broker's when the broker is Redis.
pub(crate) fn check(
    relay: &RelaySection,
    redis: &RedisSection,
    broker: &BrokerSection,
    sources: &Sources,
    problems: &mut Vec<Problem>,
) -> Option<LeaseConfig> {
    let before = problems.len();
    if relay.lease_backend == LeaseBackend::Database {
        for (key, given) in [
            ("redis.url", redis.url.is_some()),
            ("redis.prefix", redis.prefix.is_some()),
        ] {
            if given {
                problems.push(sources.problem(
                    key,
                    "is only used with relay.lease_backend = \"redis\"; leases are in the database",
                ));
            }
        }
        return (problems.len() == before).then_some(LeaseConfig::Database);
    }
    let url = match (&redis.url, broker.kind, &broker.url) {
        (Some(url), _, _) => Some(url.clone()),
        (None, BrokerKind::Redis, Some(url)) => Some(url.clone()),
        (None, _, _) => {
            problems.push(sources.missing(
                "redis.url",
                "is required with relay.lease_backend = \"redis\" (unless broker.kind = \"redis\", \
                 whose broker.url then serves), e.g. redis://127.0.0.1:6379",
            ));
            None
        }
    };
    if redis.url.is_some()
        && let Some(url) = &url
        && !BrokerKind::Redis.fits_url(url.expose())
    {
        problems.push(sources.problem(
            "redis.url",
            "is not a redis address; write it like redis://127.0.0.1:6379 (the value may be secret and is not shown)",
        ));
    }
    let prefix = redis
        .prefix
        .clone()
        .unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
    if prefix.is_empty()
        || prefix.len() > 100
        || !prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        problems.push(sources.problem(
            "redis.prefix",
            "must be 1 to 100 ASCII letters, digits, `.`, `_`, `:` or `-`",
        ));
    }
    let url = url?;
    (problems.len() == before).then_some(LeaseConfig::Redis { url, prefix })
}
