//! `herald`: the one binary. See `herald --help`.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use herald::cli::{
    BenchArgs, BenchBroker, BenchStore, Cli, Command, ConfigArgs, DevArgs, Scenario, ServeArgs,
};
use herald::config::{self, BrokerConfig, BrokerKind, Config, ConfigError};
use herald::data_dir::DataDir;
use herald::runtime::{self, Runtime};
use herald::server;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One TLS crypto provider for the whole process (webhook deliveries over https).
    herald_router::mediator::install_crypto_provider();
    let result = match cli.command {
        Command::Version => {
            say(&format!("herald {}", env!("CARGO_PKG_VERSION")));
            Ok(())
        }
        Command::Dev(args) => runtime().and_then(|rt| rt.block_on(dev(args))),
        Command::Serve(args) => runtime().and_then(|rt| rt.block_on(serve(args))),
        Command::Migrate(args) => runtime().and_then(|rt| rt.block_on(migrate(&args))),
        Command::Bench(args) => runtime().and_then(|rt| rt.block_on(bench(&args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            // Configuration problems are the caller's to fix, like usage errors.
            if err.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Prints a line for the user on standard output (logs go to standard error).
#[allow(clippy::print_stdout, reason = "this is the command's output")]
fn say(line: &str) {
    println!("{line}");
}

fn env() -> impl Iterator<Item = (OsString, OsString)> {
    std::env::vars_os()
}

fn load_config(args: &ConfigArgs) -> anyhow::Result<Config> {
    Ok(config::load(
        toml::Table::new(),
        args.config.as_deref(),
        env(),
    )?)
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    herald_telemetry::logging::init(config.log.format, &config.log.filter)
        .context("cannot set up logging")
}

/// `herald dev`'s defaults: loopback, a short shutdown, SQLite in the data directory.
fn dev_defaults(data_dir: &DataDir) -> toml::Table {
    let mut http = toml::Table::new();
    http.insert("listen".into(), "127.0.0.1:8080".into());
    http.insert("shutdown_timeout".into(), "5s".into());
    let mut store = toml::Table::new();
    let db = data_dir.path().join("herald.db");
    store.insert("url".into(), format!("sqlite://{}", db.display()).into());
    let mut base = toml::Table::new();
    base.insert("http".into(), http.into());
    base.insert("store".into(), store.into());
    base
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let data_path = match args.data_dir {
        Some(path) => path,
        None => DataDir::default_path()?,
    };
    let data_dir = DataDir::open(&data_path)?;
    let mut config = config::load(dev_defaults(&data_dir), None, env())?;
    if let Some(listen) = args.http {
        config.http.listen = listen;
    }
    init_logging(&config)?;
    let admin = data_dir.admin_key()?;

    let shutdown = server::shutdown_channel();
    let runtime =
        Runtime::start(&config, Some(admin.token.clone()), "dev", shutdown.clone()).await?;
    let listener = server::bind(config.http.listen).await?;
    let url = format!("http://{}", listener.local_addr()?);
    say(&format!(
        "herald {} (dev) listening on {url}",
        env!("CARGO_PKG_VERSION")
    ));
    say("");
    say(&format!("  API        {url}/v1"));
    say(&format!("  Health     {url}/healthz  {url}/readyz"));
    say(&format!("  Metrics    {url}/metrics"));
    say(&format!("  Data       {}", data_dir.path().display()));
    say(&format!(
        "  Admin key  {} ({})",
        admin.path.display(),
        if admin.created { "created" } else { "existing" }
    ));
    say("");
    say(&format!(
        "  Try: curl -H \"Authorization: Bearer $(cat {})\" {url}/v1/system",
        admin.path.display()
    ));
    say("  Stop with Ctrl-C.");
    run_until_shutdown(runtime, listener, &config, shutdown).await
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config)?;
    if args.check {
        say("the configuration is valid");
        return Ok(());
    }
    init_logging(&config)?;
    if config.admin_token.is_none() {
        tracing::warn!(
            "no admin key is configured (`api.admin_token`): the platform API will refuse every request"
        );
    }
    let shutdown = server::shutdown_channel();
    let runtime = Runtime::start(
        &config,
        config.admin_token.clone(),
        "serve",
        shutdown.clone(),
    )
    .await?;
    let listener = server::bind(config.http.listen).await?;
    let addr = listener.local_addr()?;
    say(&format!(
        "herald {} (serve) listening on http://{addr}",
        env!("CARGO_PKG_VERSION")
    ));
    tracing::info!(%addr, roles = ?config.roles, "serving");
    run_until_shutdown(runtime, listener, &config, shutdown).await
}

async fn run_until_shutdown(
    runtime: Runtime,
    listener: tokio::net::TcpListener,
    config: &Config,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let timeout = config.http.shutdown_timeout.0;
    let served = server::serve(
        listener,
        runtime.app.clone(),
        runtime.health.clone(),
        timeout,
        shutdown,
    )
    .await;
    let stopped = runtime.stop(timeout).await;
    served.and(stopped)
}

async fn migrate(args: &ConfigArgs) -> anyhow::Result<()> {
    let config = load_config(args)?;
    init_logging(&config)?;
    let store = runtime::connect_store(&config).await?;
    let applied = runtime::migrate(&store, &config).await?;
    store.close().await;
    if applied.is_empty() {
        say("the database is up to date");
    } else {
        for migration in &applied {
            say(&format!(
                "applied {} {} ({})",
                migration.component, migration.version, migration.name
            ));
        }
    }
    Ok(())
}

async fn bench(args: &BenchArgs) -> anyhow::Result<()> {
    use herald_bench::scenarios::{self, Options};
    use herald_bench::target::Engine;

    if args.scenario == Scenario::Report {
        anyhow::ensure!(
            !args.files.is_empty(),
            "`herald bench report` needs the JSON files written by `herald bench … --json`"
        );
        let mut reports = Vec::new();
        for path in &args.files {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let report: herald_bench::Report = serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not the JSON output of `herald bench`",
                    path.display()
                )
            })?;
            reports.push(report);
        }
        if args.json {
            let mut combined = herald_bench::Report::new();
            combined
                .outcomes
                .extend(reports.into_iter().flat_map(|report| report.outcomes));
            say(&serde_json::to_string_pretty(&combined)?);
        } else {
            say(&herald_bench::markdown::render(&reports));
        }
        return Ok(());
    }
    anyhow::ensure!(
        args.files.is_empty(),
        "files are only read by `herald bench report`"
    );

    let broker = bench_broker(args)?;
    let options = Options {
        engine: match args.store {
            BenchStore::Postgres => Engine::Postgres,
            BenchStore::Sqlite => Engine::Sqlite,
        },
        postgres_url: args.postgres_url.clone(),
        broker,
        duration: std::time::Duration::from_secs(args.duration),
        rate: args.rate,
        events: usize::try_from(args.events).context("--events is too large")?,
        drain_events: usize::try_from(args.drain_events).context("--drain-events is too large")?,
        producers: usize::try_from(args.producers).context("--producers is too large")?,
    };
    let mut report = herald_bench::Report::new();
    let run_limit = matches!(args.scenario, Scenario::Limit | Scenario::All);
    if run_limit {
        report
            .outcomes
            .extend(scenarios::limit::run(&options).await?);
    }
    if matches!(args.scenario, Scenario::OutboxWrite | Scenario::All) {
        report
            .outcomes
            .extend(scenarios::outbox_write::run(&options).await?);
    }
    if matches!(args.scenario, Scenario::Relay | Scenario::All) {
        report
            .outcomes
            .extend(scenarios::relay::run(&options).await?);
    }
    if matches!(args.scenario, Scenario::Inbox | Scenario::All) {
        report
            .outcomes
            .extend(scenarios::inbox::run(&options).await?);
    }
    if matches!(args.scenario, Scenario::Drain | Scenario::All) {
        report
            .outcomes
            .extend(scenarios::drain::run(&options).await?);
    }
    if matches!(args.scenario, Scenario::Soak) {
        report
            .outcomes
            .extend(scenarios::soak::run(&options).await?);
    }
    if matches!(args.scenario, Scenario::Deliver | Scenario::All) {
        report
            .outcomes
            .extend(scenarios::deliver::run(&options).await?);
    }
    if args.json {
        say(&serde_json::to_string_pretty(&report)?);
    } else {
        say(&report.table());
    }
    Ok(())
}

/// The broker of a `herald bench` run. A real one is built as `herald serve` builds the
/// broker of `[broker]`, with the default partitions, on each case's fresh database.
fn bench_broker(args: &BenchArgs) -> anyhow::Result<herald_bench::broker::BrokerChoice> {
    use herald_bench::broker::BrokerChoice;

    let (kind, source, url) = match args.broker {
        BenchBroker::Embedded => return Ok(BrokerChoice::Embedded),
        BenchBroker::Nats => (
            BrokerKind::Nats,
            "--nats-url (HERALD_BENCH_NATS_URL)",
            &args.nats_url,
        ),
        BenchBroker::Kafka => (
            BrokerKind::Kafka,
            "--kafka-url (HERALD_BENCH_KAFKA_URL)",
            &args.kafka_url,
        ),
        BenchBroker::Rabbitmq => (
            BrokerKind::Rabbitmq,
            "--amqp-url (HERALD_BENCH_AMQP_URL)",
            &args.amqp_url,
        ),
        BenchBroker::Redis => (
            BrokerKind::Redis,
            "--redis-url (HERALD_BENCH_REDIS_URL)",
            &args.redis_url,
        ),
    };
    anyhow::ensure!(
        kind.fits_url(url),
        "{source} is not a {} address; write it like {}",
        kind.name(),
        kind.example_url()
    );
    let options = herald_broker::log::LogOptions::default();
    let one_record_per_batch = kind == BrokerKind::Kafka && args.kafka_one_record_per_batch;
    let mut settings = format!("{} partitions", options.partitions);
    if one_record_per_batch {
        settings.push_str(", one record per Kafka batch");
    }
    let mut section = format!("kind = \"{}\"\n", kind.name());
    if one_record_per_batch {
        section.push_str("one_record_per_batch = true\n");
    }
    let serve = herald_bench::broker::ServeWith {
        section,
        env: vec![(
            "HERALD_BROKER__URL".to_owned(),
            herald_core::Secret::new(url.clone()),
        )],
    };
    let config = BrokerConfig::Log {
        kind,
        url: herald_core::Secret::new(url.clone()),
        prefix: None,
        options,
        one_record_per_batch,
    };
    Ok(BrokerChoice::Log {
        kind: kind.name(),
        source: source.to_owned(),
        settings,
        build: std::sync::Arc::new(move |store| runtime::build_broker(&config, store)),
        serve,
    })
}
