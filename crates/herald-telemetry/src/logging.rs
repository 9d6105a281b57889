//! Logging set-up: human-friendly lines for a terminal, JSON lines for machines.
//!
//! The filter is a comma-separated list of `target=level` directives with an optional default
//! level, e.g. `info,herald_router=debug`. Logs go to standard error, so standard output stays
//! for what a command prints for its user.

use std::str::FromStr;

use serde::Deserialize;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Coloured, multi-field lines for people.
    #[default]
    Pretty,
    /// One JSON object per line, with span fields, for log pipelines.
    Json,
}

/// A checked log filter.
#[derive(Debug, Clone)]
pub struct LogFilter(Targets);

/// Why a log filter was refused.
#[derive(Debug, thiserror::Error)]
#[error("`{text}` is not a log filter ({reason}); write e.g. `info` or `info,herald_router=debug`")]
pub struct LogFilterError {
    text: String,
    reason: String,
}

impl FromStr for LogFilter {
    type Err = LogFilterError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Targets::from_str(text)
            .map(Self)
            .map_err(|err| LogFilterError {
                text: text.to_owned(),
                reason: err.to_string(),
            })
    }
}

impl<'de> Deserialize<'de> for LogFilter {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Default for LogFilter {
    fn default() -> Self {
        Self(Targets::new().with_default(tracing::Level::INFO))
    }
}

/// Installs the global subscriber. Call once, first thing in `main`; a second call is an error.
pub fn init(
    format: LogFormat,
    filter: &LogFilter,
) -> Result<(), tracing_subscriber::util::TryInitError> {
    let registry = tracing_subscriber::registry().with(filter.0.clone());
    match format {
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_or_explain() {
        assert!("info".parse::<LogFilter>().is_ok());
        assert!("warn,herald_router=debug".parse::<LogFilter>().is_ok());
        let err = "info,herald=loud".parse::<LogFilter>().unwrap_err();
        assert!(
            err.to_string()
                .starts_with("`info,herald=loud` is not a log filter"),
            "{err}"
        );
    }

    #[test]
    fn formats_deserialize_from_lower_case() {
        let format: LogFormat = serde_json::from_str("\"json\"").unwrap();
        assert_eq!(format, LogFormat::Json);
        assert!(serde_json::from_str::<LogFormat>("\"xml\"").is_err());
    }
}
