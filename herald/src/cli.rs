//! The command line: `herald dev`, `herald serve`, `herald migrate`, `herald version`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Herald: transactional outbox, relay, inbox and webhook delivery for Rust services.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything in one process on local files, with nothing to install.
    Dev(DevArgs),
    /// Run the roles for production, configured by a TOML file and HERALD_* variables.
    Serve(ServeArgs),
    /// Apply database migrations, then exit.
    Migrate(ConfigArgs),
    /// Measure Herald on this machine; every scenario checks its own results.
    Bench(BenchArgs),
    /// Print the version.
    Version,
}

/// Options of `herald dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Where to keep data and the admin key [default: herald under the user's data directory].
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The address the HTTP server listens on [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
}

/// Options of `herald serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Check the configuration, report every problem, and exit without serving.
    #[arg(long)]
    pub check: bool,
}

/// Options of `herald bench`. An option given twice takes its last value, so a script can
/// set defaults that the caller's arguments after them override.
#[derive(Debug, Args)]
#[command(args_override_self = true)]
pub struct BenchArgs {
    /// What to measure (or `report`, to turn JSON results into a Markdown table).
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// With `report`: the files written by `herald bench … --json`.
    #[arg(value_name = "JSON_FILES")]
    pub files: Vec<std::path::PathBuf>,
    /// The database engine.
    #[arg(long, value_enum, default_value = "postgres")]
    pub store: BenchStore,
    /// The broker. `relay`, `drain`, `inbox` and `limit` run on every broker, a real one at
    /// the address given by its option below; `outbox-write` and `deliver` use no broker.
    #[arg(long, value_enum, default_value = "embedded")]
    pub broker: BenchBroker,
    /// Seconds each timed case runs.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration: u64,
    /// Offered events per second for latency cases.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub rate: u32,
    /// Backlog size for the relay scenario's drain case.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub events: u64,
    /// Backlog size for the drain scenario.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    pub drain_events: u64,
    /// Concurrent producers.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=1024))]
    pub producers: u64,
    /// The PostgreSQL server to use; a database is created on it for the run and dropped after.
    #[arg(
        long,
        env = "HERALD_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub postgres_url: String,
    /// The NATS server (with JetStream), for `--broker nats`.
    #[arg(
        long,
        env = "HERALD_BENCH_NATS_URL",
        hide_env_values = true,
        default_value = "nats://127.0.0.1:4222",
        value_name = "URL"
    )]
    pub nats_url: String,
    /// The Kafka bootstrap servers, `host:port[,host:port…]`, for `--broker kafka`.
    #[arg(
        long,
        env = "HERALD_BENCH_KAFKA_URL",
        hide_env_values = true,
        default_value = "127.0.0.1:9092",
        value_name = "SERVERS"
    )]
    pub kafka_url: String,
    /// With `--broker kafka`: send every record in a batch of its own. On by default because
    /// tansu 0.6, a Kafka-compatible server, needs it to read back what was published; pass
    /// `false` to measure Apache Kafka or Redpanda at their batched speed.
    #[arg(
        long,
        value_name = "BOOL",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub kafka_one_record_per_batch: bool,
    /// The RabbitMQ server (3.9 or later, for streams), for `--broker rabbitmq`.
    #[arg(
        long,
        env = "HERALD_BENCH_AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        value_name = "URL"
    )]
    pub amqp_url: String,
    /// The Redis server, for `--broker redis`.
    #[arg(
        long,
        env = "HERALD_BENCH_REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379",
        value_name = "URL"
    )]
    pub redis_url: String,
    /// Print JSON instead of a table. With `report`: print the given runs combined into one
    /// JSON report.
    #[arg(long)]
    pub json: bool,
}

/// The benchmark scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Producer commits per second into the outbox.
    OutboxWrite,
    /// Relay throughput on a backlog, and commit→published latency at --rate.
    Relay,
    /// A relay process draining a backlog of --drain-events; its CPU and memory alone.
    Drain,
    /// A consumer whose handler does one INSERT, with and without the inbox.
    Inbox,
    /// Signed webhook deliveries per second to a local sink, beside a plain HTTP client's rate.
    Deliver,
    /// The machine's raw limits: INSERT commits/s and broker publishes/s (with a real
    /// broker, only its publishes/s).
    Limit,
    /// A steady run at --rate for --duration, with and without a long-held transaction:
    /// whether Herald's tables stay bounded (PostgreSQL; not part of `all`).
    Soak,
    /// Every scenario above but `soak`, in one run.
    All,
    /// Print the Markdown results table of BENCHMARKS.md from JSON results.
    Report,
}

/// Database engines for benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchStore {
    /// PostgreSQL at --postgres-url.
    Postgres,
    /// SQLite in a temporary directory.
    Sqlite,
}

/// Brokers for benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchBroker {
    /// The embedded queue in the same database.
    Embedded,
    /// NATS with JetStream, at --nats-url.
    Nats,
    /// Kafka, or a server that speaks its protocol, at --kafka-url.
    Kafka,
    /// RabbitMQ streams, at --amqp-url.
    Rabbitmq,
    /// Redis Streams, at --redis-url.
    Redis,
}

/// Where the configuration comes from.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// The TOML configuration file; HERALD_* variables override it.
    #[arg(long, short, env = "HERALD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_addresses_are_refused_by_name() {
        let err = Cli::try_parse_from(["herald", "dev", "--http", "nowhere"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("invalid value 'nowhere' for '--http <ADDR>'"),
            "{err}"
        );
    }
}
