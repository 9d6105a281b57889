//! The database a benchmark runs against: a fresh PostgreSQL database (created for the run and
//! dropped after it) or a fresh SQLite file in a temporary directory.
//!
//! PostgreSQL is used as the server is configured: the run records `synchronous_commit` and
//! `fsync` so the report says whether commits were durable.

use anyhow::Context;
use herald_store::{Store, StoreOptions};

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
    Sqlite { _dir: tempfile::TempDir },
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
                let url = herald_store::scratch::create(postgres_url, &name)
                    .await
                    .with_context(|| {
                        format!("cannot create the benchmark database {name} at {postgres_url}")
                    })?;
                let store = Store::connect(&url, &options).await?;
                let (synchronous, fsync): (String, String) = match &store {
                    Store::Postgres(pool) => (
                        sqlx::query_scalar("SHOW synchronous_commit")
                            .fetch_one(pool)
                            .await?,
                        sqlx::query_scalar("SHOW fsync").fetch_one(pool).await?,
                    ),
                    Store::Sqlite(_) => unreachable!("a postgres:// URL opens PostgreSQL"),
                };
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
                let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
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
            herald_store::scratch::drop(server_url, name)
                .await
                .with_context(|| format!("cannot drop the benchmark database {name}"))?;
        }
        Ok(())
    }
}
