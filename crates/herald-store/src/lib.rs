//! Database access for every Herald component, on PostgreSQL or SQLite.
//!
//! [`Store`] is a connection pool for one of the two engines. Components that keep state write
//! their SQL for both (each has one trait and a Postgres and a SQLite implementation, tested by
//! one conformance suite); they match on [`Store`] once, when they are built, never per query.
//!
//! The URL picks the engine: `postgres://…` (or `postgresql://…`), or `sqlite:PATH` /
//! `sqlite://PATH` for a file (created if missing) and `sqlite::memory:` for a private
//! in-memory database.
//!
//! SQLite runs in WAL mode with a busy timeout, so readers never block the writer and a writer
//! waits its turn instead of failing with `SQLITE_BUSY`. `synchronous = NORMAL` in WAL mode
//! survives a process crash (not a power loss mid-write): the trade-off `herald dev` wants.
//!
//! [`migrate`] applies the schema each component ships; [`scratch`] makes throw-away
//! PostgreSQL databases for tests and benchmarks.

pub mod migrate;
pub mod scratch;
pub mod sql;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use migrate::{Migration, MigrationSet};

/// A connection pool to PostgreSQL or SQLite. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Store {
    /// PostgreSQL.
    Postgres(PgPool),
    /// SQLite.
    Sqlite(SqlitePool),
}

/// Which engine a [`Store`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

/// Pool settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The most connections the pool opens.
    pub max_connections: u32,
    /// How long to wait for a connection before failing.
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no engine we know.
    #[error("`{0}` is not a database URL; use postgres://… or sqlite:PATH")]
    UnknownScheme(String),
    /// The URL is malformed.
    #[error("the database URL is not valid")]
    BadUrl(#[source] sqlx::Error),
    /// Connecting or a query failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// A migration failed or the applied schema does not match this build.
    #[error("{0}")]
    Migration(String),
    /// An argument is not acceptable (the message says which and why).
    #[error("{0}")]
    Invalid(String),
}

impl Store {
    /// Connects to `url`; see the [crate docs](crate) for the forms. The password in a URL
    /// is never printed.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let connect = PgConnectOptions::from_str(url).map_err(StoreError::BadUrl)?;
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect)
                .await?;
            Ok(Self::Postgres(pool))
        } else if url.starts_with("sqlite:") {
            let in_memory = url.contains(":memory:");
            let connect = SqliteConnectOptions::from_str(url)
                .map_err(StoreError::BadUrl)?
                .create_if_missing(true)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            let connect = if in_memory {
                connect
            } else {
                connect
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
            };
            // An in-memory database lives in one connection; more would each see their own.
            let max = if in_memory {
                1
            } else {
                options.max_connections
            };
            let pool = SqlitePoolOptions::new()
                .max_connections(max)
                .acquire_timeout(options.acquire_timeout)
                .connect_with(connect)
                .await?;
            Ok(Self::Sqlite(pool))
        } else {
            let shown: String = url
                .split("://")
                .next()
                .unwrap_or(url)
                .chars()
                .take(32)
                .collect();
            Err(StoreError::UnknownScheme(shown))
        }
    }

    /// Which engine this is.
    pub fn backend(&self) -> Backend {
        match self {
            Self::Postgres(_) => Backend::Postgres,
            Self::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            Self::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
            Self::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
        }
        Ok(())
    }

    /// Closes every connection, waiting for those in use to be returned.
    pub async fn close(&self) {
        match self {
            Self::Postgres(pool) => pool.close().await,
            Self::Sqlite(pool) => pool.close().await,
        }
    }
}
