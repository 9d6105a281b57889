//! Loading configuration: merging the layers and collecting every problem.
//!
//! The file and the environment are merged into one TOML table, which serde then reads into
//! [`RawConfig`](super::RawConfig). serde stops at the first error, so we read it in rounds:
//! each failing round records the problem (with its dotted key, found by
//! `serde_path_to_error`), removes the offending key so its default applies, and tries again
//! until the table reads cleanly. Unknown keys and bad values thus all come out in one report.
//! Environment values arrive as strings; when a string fails where a number or boolean is
//! wanted, it is read as a TOML literal once before it counts as a problem.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_path_to_error::Segment;

use super::{Config, RawConfig};

/// Prefix of configuration environment variables.
const ENV_PREFIX: &str = "HERALD_";
/// Variables with the prefix that are not configuration keys (after the prefix): the
/// `--config` path, the test harness's service URLs, and `herald bench`'s options.
const ENV_RESERVED: &[&str] = &["CONFIG", "TEST_", "BENCH_"];
/// More rounds than this means something is badly wrong; report what we have.
const MAX_ROUNDS: usize = 64;

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read the configuration file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not TOML.
    #[error("the configuration file {} is not valid TOML: {message}", path.display())]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// One or more keys are unknown or have bad values.
    #[error("{}", list(.0))]
    Invalid(Vec<Problem>),
}

fn list(problems: &[Problem]) -> String {
    let mut out = match problems.len() {
        1 => "the configuration has 1 problem:".to_owned(),
        n => format!("the configuration has {n} problems:"),
    };
    for problem in problems {
        out.push_str("\n  - ");
        out.push_str(&problem.to_string());
    }
    out
}

/// One problem with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key, e.g. `http.listen`.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// Where the value came from (`from environment variable HERALD_HTTP__LISTEN`), or where
    /// to set a missing one.
    pub origin: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} ({})", self.key, self.message, self.origin)
    }
}

/// Where each value came from, so problems can say where to fix them.
#[derive(Debug, Default)]
pub struct Sources {
    file: Option<PathBuf>,
    env: BTreeMap<String, String>,
}

impl Sources {
    fn origin(&self, key: &str) -> String {
        if let Some(var) = self.env.get(key) {
            format!("from environment variable {var}")
        } else if let Some(file) = &self.file {
            format!("from {}", file.display())
        } else {
            "from the defaults".to_owned()
        }
    }

    /// A problem with a key that has no value at all.
    pub(crate) fn missing(&self, key: &str, message: impl Into<String>) -> Problem {
        let variable = format!("HERALD_{}", key.to_ascii_uppercase().replace('.', "__"));
        Problem {
            key: key.to_owned(),
            message: message.into(),
            origin: format!("set it in the configuration file or with {variable}"),
        }
    }

    /// A problem with `key`, attributed to where its value came from.
    pub(crate) fn problem(&self, key: &str, message: impl Into<String>) -> Problem {
        Problem {
            key: key.to_owned(),
            message: message.into(),
            origin: self.origin(key),
        }
    }
}

/// Loads the configuration: `base` (defaults that differ from the built-in ones, such as
/// `herald dev`'s loopback address), then `file` (if any), then the `HERALD_*` variables in
/// `env`.
pub fn load(
    base: toml::Table,
    file: Option<&Path>,
    env: impl IntoIterator<Item = (OsString, OsString)>,
) -> Result<Config, ConfigError> {
    let mut sources = Sources {
        file: file.map(Path::to_path_buf),
        ..Sources::default()
    };
    let mut table = base;
    if let Some(path) = file {
        merge(&mut table, read_file(path)?);
    }
    let mut problems = Vec::new();
    apply_env(&mut table, env, &mut sources, &mut problems);

    let mut retyped = BTreeSet::new();
    let mut raw = None;
    for _ in 0..MAX_ROUNDS {
        match serde_path_to_error::deserialize::<_, RawConfig>(toml::Value::Table(table.clone())) {
            Ok(config) => {
                raw = Some(config);
                break;
            }
            Err(err) => {
                let segments = segments(err.path());
                let key = segments.join(".");
                if sources.env.contains_key(&key)
                    && retyped.insert(key.clone())
                    && retype(&mut table, &segments)
                {
                    continue;
                }
                problems.push(sources.problem(&key, clean_message(&err.inner().to_string())));
                if !remove(&mut table, &segments) {
                    break;
                }
            }
        }
    }
    let Some(raw) = raw else {
        if problems.is_empty() {
            problems
                .push(sources.problem("", "too many problems to list; fix the ones above first"));
        }
        return Err(ConfigError::Invalid(problems));
    };
    let config = raw.validate(&sources, &mut problems);
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(ConfigError::Invalid(problems)),
    }
}

/// Overlays `top` onto `bottom`, section by section.
fn merge(bottom: &mut toml::Table, top: toml::Table) {
    for (key, value) in top {
        match (bottom.get_mut(&key), value) {
            (Some(toml::Value::Table(below)), toml::Value::Table(above)) => merge(below, above),
            (_, value) => {
                bottom.insert(key, value);
            }
        }
    }
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|err| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: err.to_string().trim_end().to_owned(),
        })
}

fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (OsString, OsString)>,
    sources: &mut Sources,
    problems: &mut Vec<Problem>,
) {
    for (name, value) in env {
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if ENV_RESERVED
            .iter()
            .any(|reserved| rest.starts_with(reserved))
        {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let key = path.join(".");
        let env_problem = |message: &str| Problem {
            key: key.clone(),
            message: message.to_owned(),
            origin: format!("from environment variable {name}"),
        };
        if path.iter().any(String::is_empty) {
            problems.push(env_problem(
                "is not a configuration key; nest keys with `__`, e.g. HERALD_HTTP__LISTEN",
            ));
            continue;
        }
        let Some(value) = value.to_str() else {
            problems.push(env_problem("the value is not valid UTF-8"));
            continue;
        };
        if insert(table, &path, toml::Value::String(value.to_owned())) {
            sources.env.insert(key, name.to_owned());
        } else {
            problems.push(env_problem(
                "cannot be set: a part of this key is a value, not a section",
            ));
        }
    }
}

/// Sets `path` in `table`, creating sections on the way. False if a parent is not a table.
fn insert(table: &mut toml::Table, path: &[String], value: toml::Value) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut current = table;
    for part in parents {
        let entry = current
            .entry(part.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(next) => current = next,
            _ => return false,
        }
    }
    current.insert(last.clone(), value);
    true
}

fn segments(path: &serde_path_to_error::Path) -> Vec<String> {
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Map { key } => Some(key.clone()),
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Enum { variant } => Some(variant.clone()),
            Segment::Unknown => None,
        })
        .collect()
}

fn lookup<'t, 's>(
    table: &'t mut toml::Table,
    segments: &'s [String],
) -> Option<(&'t mut toml::Table, &'s String)> {
    let (last, parents) = segments.split_last()?;
    let mut current = table;
    for part in parents {
        current = current.get_mut(part)?.as_table_mut()?;
    }
    Some((current, last))
}

fn remove(table: &mut toml::Table, segments: &[String]) -> bool {
    lookup(table, segments).is_some_and(|(parent, last)| parent.remove(last).is_some())
}

/// Reads a string from the environment as a TOML literal (`8080`, `true`, `[1, 2]`).
fn retype(table: &mut toml::Table, segments: &[String]) -> bool {
    let Some((parent, last)) = lookup(table, segments) else {
        return false;
    };
    let Some(toml::Value::String(text)) = parent.get(last) else {
        return false;
    };
    let Ok(mut parsed) = format!("value = {text}").parse::<toml::Table>() else {
        return false;
    };
    let Some(value) = parsed.remove("value") else {
        return false;
    };
    parent.insert(last.clone(), value);
    true
}

/// Serde's messages are good, but say "field" where a config file has keys, and the TOML
/// reader adds a second line repeating the key, which our report already names.
fn clean_message(message: &str) -> String {
    let first_line = message.trim().lines().next().unwrap_or_default();
    first_line.replace("unknown field", "unknown key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(vars: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        vars.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    fn problems(result: Result<Config, ConfigError>) -> Vec<Problem> {
        match result {
            Err(ConfigError::Invalid(problems)) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn defaults_load_without_a_file() {
        let config = load(
            toml::Table::new(),
            None,
            env(&[
                ("PATH", "/bin"),
                ("HERALD_TEST_POSTGRES_URL", "x"),
                ("HERALD_CONFIG", "y"),
                ("HERALD_BENCH_POSTGRES_URL", "z"),
                ("HERALD_STORE__URL", "sqlite::memory:"),
            ]),
        )
        .unwrap();
        assert_eq!(config.http.listen.port(), 8080);
        assert!(config.admin_token.is_none());
    }

    #[test]
    fn file_then_env_layers() {
        let f = file(
            "[http]\nlisten = \"127.0.0.1:9000\"\nmax_body_bytes = 4096\n[log]\nformat = \"json\"\n",
        );
        let config = load(
            toml::Table::new(),
            Some(f.path()),
            env(&[
                ("HERALD_HTTP__MAX_BODY_BYTES", "8192"),
                ("HERALD_HTTP__SHUTDOWN_TIMEOUT", "5s"),
                ("HERALD_STORE__URL", "sqlite::memory:"),
            ]),
        )
        .unwrap();
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(
            config.http.max_body_bytes, 8192,
            "env wins over the file, and is retyped"
        );
        assert_eq!(config.http.shutdown_timeout.0.as_secs(), 5);
        assert_eq!(
            config.log.format,
            herald_telemetry::logging::LogFormat::Json
        );
    }

    #[test]
    fn reports_every_problem_at_once() {
        let f = file(
            "[htp]\nlisten = 1\n[http]\nlisten = \"nowhere\"\nmax_body_bytes = 10\nshutdown_timeout = \"soon\"\n[log]\nformat = \"xml\"\n",
        );
        let found = problems(load(
            toml::Table::new(),
            Some(f.path()),
            env(&[
                ("HERALD_API__ADMIN_TOKEN", "short"),
                ("HERALD_LOG__LEVEL", "debug"),
                ("HERALD_X____Y", "1"),
            ]),
        ));
        let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "store.url",
            "htp",
            "http.listen",
            "http.shutdown_timeout",
            "log.format",
            "log.level",
            "x..y",
            "http.max_body_bytes",
            "api.admin_token",
        ] {
            assert!(keys.contains(&key), "{key} missing from {found:#?}");
        }
        let text = ConfigError::Invalid(found).to_string();
        insta::assert_snapshot!(
            "config_problems",
            text.replace(&f.path().display().to_string(), "herald.toml")
        );
        assert!(
            text.starts_with("the configuration has 9 problems:"),
            "{text}"
        );
        assert!(
            text.contains("(from environment variable HERALD_LOG__LEVEL)"),
            "{text}"
        );
    }

    #[test]
    fn the_relay_lease_is_bounded() {
        for (ttl, ok) in [("500ms", false), ("1s", true), ("5m", true), ("6m", false)] {
            let f = file(&format!(
                "[store]\nurl = \"sqlite:herald.db\"\n[relay]\nlease_ttl = \"{ttl}\"\n"
            ));
            let result = load(toml::Table::new(), Some(f.path()), env(&[]));
            if ok {
                assert!(result.is_ok(), "{ttl}: {result:?}");
            } else {
                let found = problems(result);
                assert_eq!(found.len(), 1, "{ttl}: {found:#?}");
                assert_eq!(found[0].key, "relay.lease_ttl");
                assert_eq!(found[0].message, "must be between 1s and 5m");
            }
        }
    }

    #[test]
    fn the_consumer_visibility_timeout_is_bounded() {
        for (timeout, ok) in [
            ("500ms", false),
            ("1s", true),
            ("10m", true),
            ("11m", false),
        ] {
            let f = file(&format!(
                "[store]\nurl = \"sqlite:herald.db\"\n[dispatcher]\nvisibility_timeout = \"{timeout}\"\n"
            ));
            let result = load(toml::Table::new(), Some(f.path()), env(&[]));
            if ok {
                assert!(result.is_ok(), "{timeout}: {result:?}");
            } else {
                let found = problems(result);
                assert_eq!(found.len(), 1, "{timeout}: {found:#?}");
                assert_eq!(found[0].key, "dispatcher.visibility_timeout");
                assert_eq!(found[0].message, "must be between 1s and 10m");
            }
        }
    }

    #[test]
    fn the_relay_lease_backend_is_checked() {
        use super::super::LeaseConfig;
        let load_with = |text: &str, vars: &[(&str, &str)]| {
            let f = file(&format!("[store]\nurl = \"sqlite:herald.db\"\n{text}"));
            load(toml::Table::new(), Some(f.path()), env(vars))
        };
        let keyed = |text: &str| -> Vec<String> {
            problems(load_with(text, &[]))
                .into_iter()
                .map(|p| format!("{}: {}", p.key, p.message))
                .collect()
        };

        let default = load_with("", &[]).unwrap();
        assert!(
            matches!(default.leases, LeaseConfig::Database),
            "{default:?}"
        );
        let redis = load_with(
            "[relay]\nlease_backend = \"redis\"\n[redis]\nurl = \"redis://h:6379\"\n",
            &[],
        )
        .unwrap();
        match redis.leases {
            LeaseConfig::Redis { url, prefix } => {
                assert_eq!(url.expose(), "redis://h:6379");
                assert_eq!(prefix, "herald");
            }
            other => panic!("expected redis, got {other:?}"),
        }
        // From the environment, with a prefix of its own.
        let from_env = load_with(
            "",
            &[
                ("HERALD_RELAY__LEASE_BACKEND", "redis"),
                ("HERALD_REDIS__URL", "redis://:pw@h:6379/2"),
                ("HERALD_REDIS__PREFIX", "eu-1"),
            ],
        )
        .unwrap();
        assert!(
            matches!(&from_env.leases, LeaseConfig::Redis { prefix, .. } if prefix == "eu-1"),
            "{from_env:?}"
        );
        // A Redis broker's URL serves when [redis] has none.
        let shared = load_with(
            "[broker]\nkind = \"redis\"\nurl = \"redis://broker:6379\"\n[relay]\nlease_backend = \"redis\"\n",
            &[],
        )
        .unwrap();
        assert!(
            matches!(&shared.leases, LeaseConfig::Redis { url, .. } if url.expose() == "redis://broker:6379"),
            "{shared:?}"
        );

        let unknown = keyed("[relay]\nlease_backend = \"zookeeper\"\n");
        assert_eq!(unknown.len(), 1, "{unknown:#?}");
        assert!(
            unknown[0].starts_with("relay.lease_backend: unknown variant `zookeeper`")
                && unknown[0].contains("`database`")
                && unknown[0].contains("`redis`"),
            "{unknown:#?}"
        );
        assert_eq!(
            keyed("[relay]\nlease_backend = \"redis\"\n"),
            [
                "redis.url: is required with relay.lease_backend = \"redis\" (unless broker.kind = \
                 \"redis\", whose broker.url then serves), e.g. redis://127.0.0.1:6379"
            ]
        );
        let wrong = keyed(
            "[relay]\nlease_backend = \"redis\"\n[redis]\nurl = \"amqp://u:hunter2@h\"\nprefix = \"a b\"\n",
        );
        assert_eq!(wrong.len(), 2, "{wrong:#?}");
        assert!(
            wrong[0].starts_with("redis.url: is not a redis address"),
            "{wrong:#?}"
        );
        assert!(!wrong[0].contains("hunter2"), "{wrong:#?}");
        assert!(wrong[1].starts_with("redis.prefix: must be"), "{wrong:#?}");
        let unused = keyed("[redis]\nurl = \"redis://h:6379\"\n");
        assert_eq!(
            unused,
            [
                "redis.url: is only used with relay.lease_backend = \"redis\"; leases are in the database"
            ]
        );
    }

    #[test]
    fn secrets_are_not_echoed() {
        let f = file("[api]\nadmin_token = 123456789\n");
        let text =
            ConfigError::Invalid(problems(load(toml::Table::new(), Some(f.path()), env(&[]))))
                .to_string();
        assert!(!text.contains("123456789"), "{text}");
        let text = ConfigError::Invalid(problems(load(
            toml::Table::new(),
            None,
            env(&[("HERALD_API__ADMIN_TOKEN", "tiny-secret")]),
        )))
        .to_string();
        assert!(!text.contains("tiny-secret"), "{text}");
        assert!(
            text.contains("api.admin_token: must be at least 32 characters long"),
            "{text}"
        );
    }

    #[test]
    fn delivery_settings_are_checked_together() {
        let f = file(
            "store.url = \"sqlite::memory:\"\n[router]\npoll_interval = \"1ms\"\nlease_ttl = \"500ms\"\nbackoff_base = \"10s\"\nbackoff_max = \"5s\"\nbreaker_threshold = 0\nretention = \"10m\"\n[dispatcher]\nconcurrency = 0\ntopic = \"bad topic\"\n",
        );
        let found = problems(load(toml::Table::new(), Some(f.path()), env(&[])));
        let mut keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "dispatcher.concurrency",
                "dispatcher.topic",
                "router.backoff_max",
                "router.breaker_threshold",
                "router.lease_ttl",
                "router.poll_interval",
                "router.retention",
            ],
            "{found:#?}"
        );
        let good = file(
            "store.url = \"sqlite::memory:\"\n[router]\nrequest_timeout = \"2s\"\nlease_ttl = \"3s\"\n",
        );
        let config = load(toml::Table::new(), Some(good.path()), env(&[])).unwrap();
        assert_eq!(
            config.router.request_timeout.0,
            std::time::Duration::from_secs(2)
        );
        assert_eq!(config.router.lease_ttl.0, std::time::Duration::from_secs(3));
        assert_eq!(config.dispatcher.topic, config.relay.topic);
    }

    #[test]
    fn broker_settings_are_checked() {
        let found = |text: &str| {
            let f = file(&format!(
                "store.url = \"sqlite::memory:\"\n[broker]\n{text}"
            ));
            let mut keys: Vec<String> =
                problems(load(toml::Table::new(), Some(f.path()), env(&[])))
                    .into_iter()
                    .map(|p| format!("{}: {}", p.key, p.message))
                    .collect();
            keys.sort_unstable();
            keys
        };
        let bad =
            found("kind = \"nats\"\npartitions = 0\nsession_timeout = \"1s\"\nprefix = \"a b\"\n");
        let keys: Vec<&str> = bad.iter().map(|p| p.split(':').next().unwrap()).collect();
        assert_eq!(
            keys,
            [
                "broker.partitions",
                "broker.prefix",
                "broker.session_timeout",
                "broker.url"
            ],
            "{bad:#?}"
        );
        assert!(
            bad[3].contains("nats://127.0.0.1:4222"),
            "an example: {bad:#?}"
        );
        let wrong = found("kind = \"redis\"\nurl = \"amqp://guest:hunter2@h:5672/%2f\"\n");
        assert_eq!(wrong.len(), 1, "{wrong:#?}");
        assert!(
            wrong[0].starts_with("broker.url: is not a redis address"),
            "{wrong:#?}"
        );
        assert!(
            !wrong[0].contains("hunter2"),
            "the URL is not echoed: {wrong:#?}"
        );
        let kafka = found("kind = \"kafka\"\nurl = \"nats://h:4222\"\n");
        assert!(
            kafka[0].starts_with("broker.url: is not a kafka address"),
            "{kafka:#?}"
        );
        let embedded = found("url = \"redis://h:6379\"\n");
        assert!(
            embedded[0].starts_with("broker.url: is only for"),
            "{embedded:#?}"
        );
        let batch =
            found("kind = \"redis\"\nurl = \"redis://h:6379\"\none_record_per_batch = true\n");
        assert_eq!(
            batch,
            ["broker.one_record_per_batch: is only for kind = \"kafka\""],
            "{batch:#?}"
        );
        let unknown = found("kind = \"zeromq\"\n");
        assert!(unknown[0].starts_with("broker.kind"), "{unknown:#?}");

        let good = file(
            "store.url = \"sqlite::memory:\"\n[broker]\nkind = \"kafka\"\nurl = \"k1:9092,k2:9092\"\npartitions = 16\nsession_timeout = \"20s\"\n",
        );
        let config = load(toml::Table::new(), Some(good.path()), env(&[])).unwrap();
        match config.broker {
            super::super::BrokerConfig::Log { kind, options, .. } => {
                assert_eq!(kind, super::super::BrokerKind::Kafka);
                assert_eq!(options.partitions, 16);
                assert_eq!(options.session_timeout, std::time::Duration::from_secs(20));
                assert_eq!(options.heartbeat, std::time::Duration::from_secs(2));
            }
            other => panic!("expected kafka, got {other:?}"),
        }
    }

    #[test]
    fn file_errors_name_the_file() {
        let missing = load(
            toml::Table::new(),
            Some(Path::new("does/not/exist.toml")),
            env(&[]),
        )
        .unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("cannot read the configuration file does/not/exist.toml"),
            "{missing}"
        );
        let f = file("[http\n");
        let syntax = load(toml::Table::new(), Some(f.path()), env(&[])).unwrap_err();
        assert!(matches!(syntax, ConfigError::Syntax { .. }), "{syntax}");
        assert!(syntax.to_string().contains("line 1"), "{syntax}");
    }

    #[test]
    fn base_is_overridden_by_file_and_env() {
        let base: toml::Table = "[http]\nlisten = \"127.0.0.1:8080\"\nmax_body_bytes = 2048\n[store]\nurl = \"sqlite::memory:\""
            .parse()
            .unwrap();
        let f = file("[http]\nmax_body_bytes = 4096\n");
        let config = load(base.clone(), Some(f.path()), env(&[])).unwrap();
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.http.max_body_bytes, 4096);
        let config = load(
            base,
            None,
            env(&[("HERALD_HTTP__LISTEN", "127.0.0.1:9999")]),
        )
        .unwrap();
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:9999");
    }

    #[test]
    fn env_cannot_nest_under_a_value() {
        let f = file("[http]\nlisten = \"127.0.0.1:1\"\n");
        let found = problems(load(
            toml::Table::new(),
            Some(f.path()),
            env(&[("HERALD_HTTP__LISTEN__PORT", "2")]),
        ));
        assert_eq!(found[0].key, "http.listen.port");
        assert!(found[0].message.contains("is a value"), "{found:?}");
    }
}
