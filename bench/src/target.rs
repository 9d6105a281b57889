//! The database a benchmark runs against: a fresh PostgreSQL database (created for the run and
//! dropped after it) or a fresh SQLite file in a temporary directory.
//!
//! PostgreSQL is used as the server is configured: the run records `synchronous_commit` and
//! `fsync` so the report says whether commits were durable.

use std::str::FromStr;

use anyhow::Context;
use herald_store::{Store, StoreOptions};
use sqlx::{ConnectOptions, Connection};

/// Which engine a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// PostgreSQL.
    Postgres,
    /// SQLite.
    Sqlite,
}

impl Engine {
    /// `postgres` or `sqlite`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }
}

/// The server used when none is given.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A database for one scenario.
#[derive(Debug)]
pub struct Target {
    /// The pool.
    pub store: Store,
    /// The engine.
    pub engine: Engine,
    /// How durable commits are, e.g. `synchronous_commit=on fsync=on`.
    pub durability: String,
    /// The database's URL, for a process the scenario starts.
    pub url: String,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    Postgres { server_url: String, name: String },
    Sqlite { _dir: tempfile_dir::Dir },
}

/// A temporary directory removed on drop (kept tiny to avoid a dependency).
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    #[derive(Debug)]
    pub(crate) struct Dir(PathBuf);

    impl Dir {
        pub(crate) fn new() -> std::io::Result<Self> {
            let path = std::env::temp_dir()
                .join(format!("herald-bench-{}", uuid::Uuid::now_v7().simple()));
            std::fs::create_dir_all(&path)?;
            Ok(Self(path))
        }

        pub(crate) fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl Target {
    /// Creates the database and connects `connections` connections to it.
    pub async fn create(
        engine: Engine,
        postgres_url: &str,
        connections: u32,
    ) -> anyhow::Result<Self> {
        let options = StoreOptions {
            max_connections: connections,
            ..StoreOptions::default()
        };
        match engine {
            Engine::Postgres => {
                let name = format!("herald_bench_{}", uuid::Uuid::now_v7().simple());
                let mut admin = sqlx::PgConnection::connect(postgres_url)
                    .await
                    .with_context(|| format!("cannot connect to PostgreSQL at {postgres_url}"))?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut admin)
                    .await
                    .with_context(|| format!("cannot create the benchmark database {name}"))?;
                let synchronous: String = sqlx::query_scalar("SHOW synchronous_commit")
                    .fetch_one(&mut admin)
                    .await?;
                let fsync: String = sqlx::query_scalar("SHOW fsync")
                    .fetch_one(&mut admin)
                    .await?;
                let _ = admin.close().await;
                let url = sqlx::postgres::PgConnectOptions::from_str(postgres_url)?
                    .database(&name)
                    .to_url_lossy()
                    .to_string();
                let store = Store::connect(&url, &options).await?;
                Ok(Self {
                    store,
                    engine,
                    durability: format!("synchronous_commit={synchronous} fsync={fsync}"),
                    url,
                    cleanup: Cleanup::Postgres {
                        server_url: postgres_url.to_owned(),
                        name,
                    },
                })
            }
            Engine::Sqlite => {
                let dir =
                    tempfile_dir::Dir::new().context("cannot create a temporary directory")?;
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                let store = Store::connect(&url, &options).await?;
                Ok(Self {
                    store,
                    engine,
                    durability: "journal_mode=wal synchronous=normal".to_owned(),
                    url,
                    cleanup: Cleanup::Sqlite { _dir: dir },
                })
            }
        }
    }

    /// Closes the pool and drops the database.
    pub async fn finish(self) -> anyhow::Result<()> {
        self.store.close().await;
        if let Cleanup::Postgres { server_url, name } = &self.cleanup {
            let mut admin = sqlx::PgConnection::connect(server_url).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot drop the benchmark database {name}"))?;
        }
        Ok(())
    }
}
