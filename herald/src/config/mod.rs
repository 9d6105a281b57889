//! Configuration of `herald serve` (and the defaults `herald dev` starts from).
//!
//! Layers, each overriding the one before: built-in defaults, the TOML file given with
//! `--config`, then `HERALD_*` environment variables, where `__` separates nested keys
//! (`HERALD_HTTP__LISTEN=0.0.0.0:9000` sets `listen` in `[http]`). `HERALD_CONFIG` (the file
//! path) and `HERALD_TEST_*` (used by the test harness) are not configuration keys.
//!
//! Everything is checked at start-up and every problem is reported at once, each naming its
//! key and where the value came from (see [`load`]). After that, code reads typed values and
//! never re-checks them.

mod load;

use std::net::SocketAddr;
use std::time::Duration;

use herald_core::Secret;
use herald_core::admin::AdminToken;
use herald_telemetry::logging::{LogFilter, LogFormat};
use serde::Deserialize;

pub use load::{ConfigError, Problem, Sources, load};

/// The whole configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// The HTTP server.
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// The platform API.
    pub api: ApiConfig,
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
    /// The HTTP server.
    pub http: HttpConfig,
    /// Logging.
    pub log: LogConfig,
    /// The admin API key, if configured.
    pub admin_token: Option<AdminToken>,
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
        (problems.len() == before).then_some(Config {
            http: self.http,
            log: self.log,
            admin_token,
        })
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
