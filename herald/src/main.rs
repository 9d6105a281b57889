//! `herald`: the one binary. See `herald --help`.

use std::ffi::OsString;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use herald::app::{self, AppOptions};
use herald::cli::{Cli, Command, ConfigArgs, DevArgs, ServeArgs};
use herald::config::{self, Config, ConfigError};
use herald::data_dir::DataDir;
use herald::server;
use herald_telemetry::Health;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Version => {
            say(&format!("herald {}", env!("CARGO_PKG_VERSION")));
            Ok(())
        }
        Command::Dev(args) => runtime().and_then(|rt| rt.block_on(dev(args))),
        Command::Serve(args) => runtime().and_then(|rt| rt.block_on(serve(args))),
        Command::Migrate(args) => migrate(&args),
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

fn load_config(args: &ConfigArgs, base: toml::Table) -> anyhow::Result<Config> {
    let config = config::load(base, args.config.as_deref(), env())?;
    Ok(config)
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    herald_telemetry::logging::init(config.log.format, &config.log.filter)
        .context("cannot set up logging")
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let mut base = toml::Table::new();
    let mut http = toml::Table::new();
    http.insert("listen".into(), "127.0.0.1:8080".into());
    http.insert("shutdown_timeout".into(), "5s".into());
    base.insert("http".into(), http.into());
    let mut config = config::load(base, None, env())?;
    if let Some(listen) = args.http {
        config.http.listen = listen;
    }
    init_logging(&config)?;

    let data_path = match args.data_dir {
        Some(path) => path,
        None => DataDir::default_path()?,
    };
    let data_dir = DataDir::open(&data_path)?;
    let admin = data_dir.admin_key()?;

    let health = Health::new();
    let app = app::router(AppOptions {
        health: health.clone(),
        admin_token: Some(admin.token.clone()),
        max_body_bytes: config.http.max_body_bytes,
        mode: "dev",
    });
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
    server::serve(listener, app, health, config.http.shutdown_timeout.0).await
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(&args.config, toml::Table::new())?;
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
    let health = Health::new();
    let app = app::router(AppOptions {
        health: health.clone(),
        admin_token: config.admin_token.clone(),
        max_body_bytes: config.http.max_body_bytes,
        mode: "serve",
    });
    let listener = server::bind(config.http.listen).await?;
    let addr = listener.local_addr()?;
    say(&format!(
        "herald {} (serve) listening on http://{addr}",
        env!("CARGO_PKG_VERSION")
    ));
    tracing::info!(%addr, "serving");
    server::serve(listener, app, health, config.http.shutdown_timeout.0).await
}

fn migrate(args: &ConfigArgs) -> anyhow::Result<()> {
    load_config(args, toml::Table::new())?;
    say(
        "the configuration is valid; no component with stored state is built in yet, so there is nothing to migrate",
    );
    Ok(())
}
