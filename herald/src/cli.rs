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
