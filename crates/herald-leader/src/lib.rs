//! Leases with fencing tokens: one leader per piece of work, and a former leader cannot write.
//!
//! Some work must be done by one instance at a time: the relay of an outbox, for one. Each
//! such piece of work has a lease named after it. An instance that
//! [acquires](Leases::acquire) it becomes the leader, keeps it by [renewing](Leases::renew)
//! it well before it runs out, and [releases](Leases::release) it when it stops, so another
//! can take over at once. An instance that dies stops renewing; its lease runs out after
//! the TTL and another instance takes it. [`lead`] does all of this around a piece of work.
//!
//! # Backends
//!
//! [`Leases`] keeps its leases in one of two places, with the same behaviour:
//!
//! - **the database** ([`Leases::new`], the default): a row of `herald_leases` per lease
//!   (`database.rs`);
//! - **Redis** (`Leases::redis`, with the `redis` feature): a hash per lease, changed only by
//!   Lua scripts (the `redis` module explains it).
//!
//! Either way the writes a lease guards are in the database, and so are their fences.
//!
//! # Fencing
//!
//! A leader can be paused (a long GC-like stall, `SIGSTOP`, a VM migration) past the end of
//! its lease, then wake up believing it still leads. Expiry alone cannot stop it: it has not
//! looked at the clock yet. So every holding gets a *fencing token*, larger than any token
//! of the same lease before it, and the leader's writes carry it: [`Fence::check_postgres`]
//! (or [`Fence::check_sqlite`]), run in the transaction whose writes it guards, refuses a
//! former holder's token, so a former leader's late write is refused.
//!
//! - A fence of a lease in the **database** holds while its token is the lease's current one
//!   and the lease has not run out: the check reads the lease's row.
//! - A fence of a lease in **Redis** is checked against `herald_fences`, which holds the largest
//!   token that was checked: the check raises it to its own token (a write, in every round) and
//!   fails when it is already larger, so once the new holder has checked, the former one never
//!   passes again. Until then the database has not heard of the new holder, and the former one
//!   still passes: its writes come before all of the new holder's, never after.
//!
//! [`Fence::condition`] is the same check as a SQL fragment, for a statement of one's own (for a
//! lease in Redis, after the check in the same transaction).
//!
//! # Clocks
//!
//! On PostgreSQL every time of a lease in the database is the database's
//! (`clock_timestamp()`), and every time of a lease in Redis is Redis's (`TIME`), so instances
//! whose clocks disagree still agree on when a lease ends. SQLite is one machine's file, whose
//! clock all its users share.
//!
//! # Why the database by default
//!
//! It is the one service every Herald instance already depends on, and the state the leader
//! guards lives in it: a fence checked in the same transaction as the write is exact. The
//! statements are plain `INSERT … ON CONFLICT`/`UPDATE`s on one row, with no session state
//! (no advisory locks, no `LISTEN`), so they work through a transaction-mode connection
//! pooler. Redis takes the renewals off the database, at the price of one more service the
//! leader depends on.
//!
//! Switch backends with every instance stopped: the two do not see each other's leases, so
//! during a rolling switch an instance on each could lead at once.

mod database;
mod leader;
#[cfg(feature = "redis")]
pub mod redis;

use herald_store::{Migration, MigrationSet, Store};

pub use leader::{LeaderOptions, Stop, lead};
#[cfg(feature = "redis")]
pub use redis::RedisLeaseOptions;

/// The leases' schema, for `herald migrate` or [`herald_store::migrate::migrate`]: the
/// database backend's leases, and the fences of leases kept elsewhere.
pub const MIGRATIONS: MigrationSet = MigrationSet {
    component: "leader",
    postgres: &[
        Migration {
            version: 1,
            name: "create leases",
            sql: include_str!("../migrations/postgres/0001_leases.sql"),
        },
        Migration {
            version: 2,
            name: "create fences",
            sql: include_str!("../migrations/postgres/0002_fences.sql"),
        },
    ],
    sqlite: &[
        Migration {
            version: 1,
            name: "create leases",
            sql: include_str!("../migrations/sqlite/0001_leases.sql"),
        },
        Migration {
            version: 2,
            name: "create fences",
            sql: include_str!("../migrations/sqlite/0002_fences.sql"),
        },
    ],
};

/// "Now" in epoch milliseconds, by the database's clock.
const NOW_PG: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";
const NOW_SQLITE: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

/// Records a Redis lease's token in `herald_fences` unless a larger one is there; returns a
/// row only then. `$1` is the lease, `$2` the token.
const ADVANCE: &str = "INSERT INTO herald_fences (name, token) VALUES ($1, $2) \
     ON CONFLICT (name) DO UPDATE SET token = excluded.token \
     WHERE herald_fences.token <= excluded.token \
     RETURNING TRUE";

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The database did not carry out a lease statement.
    #[error("the lease statement failed in the database")]
    Database(#[from] sqlx::Error),
    /// Redis did not carry out a lease script.
    #[cfg(feature = "redis")]
    #[error("the lease command failed in Redis")]
    Redis(#[from] ::redis::RedisError),
    /// Options that cannot work, such as a malformed Redis URL.
    #[error("{0}")]
    Invalid(String),
}

/// Where a lease is kept, which decides how its fence is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeptIn {
    /// `herald_leases`.
    Database,
    /// Redis; fenced with `herald_fences`. (Its checks are built without the `redis` feature
    /// too: they are SQL only.)
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    Redis,
}

/// A lease taken: who holds it and with which token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The lease.
    pub name: String,
    /// The fencing token of this holding.
    pub token: i64,
    kept_in: KeptIn,
}

impl Fence {
    fn new(name: &str, token: i64, kept_in: KeptIn) -> Self {
        Self {
            name: name.to_owned(),
            token,
            kept_in,
        }
    }

    /// A SQL condition for a statement of one's own, written with `$N` placeholders as
    /// [`herald_store::sql::for_sqlite`] expects; its two parameters are `$first` (bind
    /// [`Fence::name`]) and `$first + 1` (bind [`Fence::token`]).
    ///
    /// For a lease in the database it holds while this fence's token is the lease's current
    /// one and the lease has not run out. For a lease in Redis it holds while this token is
    /// the largest recorded in `herald_fences`: run [`Fence::check_postgres`] (or
    /// `check_sqlite`) first in the same transaction, which records it; until then the
    /// condition is false, so writes are refused rather than let through.
    pub fn condition(&self, store: &Store, first: usize) -> String {
        let now = match store {
            Store::Postgres(_) => NOW_PG,
            Store::Sqlite(_) => NOW_SQLITE,
        };
        self.condition_text(now, first)
    }

    /// Whether this fence still holds on PostgreSQL. Run it inside the transaction whose
    /// writes it guards.
    ///
    /// For a lease in the database: its token is the lease's current one and the lease has not
    /// run out. For a lease in Redis: no larger token was checked before; the token is then
    /// recorded (a write, which locks the lease's `herald_fences` row until the transaction
    /// ends), so that an older holder's later check fails.
    pub async fn check_postgres<'c, E>(&self, executor: E) -> Result<bool, sqlx::Error>
    where
        E: sqlx::Executor<'c, Database = sqlx::Postgres>,
    {
        let text = match self.kept_in {
            KeptIn::Database => format!("SELECT {}", self.condition_text(NOW_PG, 1)),
            KeptIn::Redis => ADVANCE.to_owned(),
        };
        let passed: Option<bool> = sqlx::query_scalar(sqlx::AssertSqlSafe(text))
            .bind(&self.name)
            .bind(self.token)
            .fetch_optional(executor)
            .await?;
        Ok(passed.unwrap_or(false))
    }

    /// [`Fence::check_postgres`] on SQLite.
    pub async fn check_sqlite<'c, E>(&self, executor: E) -> Result<bool, sqlx::Error>
    where
        E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
    {
        let text = match self.kept_in {
            KeptIn::Database => format!("SELECT {}", self.condition_text(NOW_SQLITE, 1)),
            KeptIn::Redis => ADVANCE.to_owned(),
        };
        let passed: Option<bool> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(herald_store::sql::for_sqlite(&text)))
                .bind(&self.name)
                .bind(self.token)
                .fetch_optional(executor)
                .await?;
        Ok(passed.unwrap_or(false))
    }

    fn condition_text(&self, now: &str, first: usize) -> String {
        let token = first + 1;
        match self.kept_in {
            KeptIn::Database => format!(
                "EXISTS (SELECT 1 FROM herald_leases WHERE name = ${first} AND token = ${token} \
                 AND expires_at > {now})"
            ),
            KeptIn::Redis => format!(
                "EXISTS (SELECT 1 FROM herald_fences WHERE name = ${first} AND token = ${token})"
            ),
        }
    }
}

/// A lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseState {
    /// Who holds it, or last held it.
    pub holder: String,
    /// The current (or last) holding's token.
    pub token: i64,
    /// Milliseconds until it runs out; 0 or less when it has.
    pub remaining_ms: i64,
}

/// The leases of one backend (see [Backends](crate#backends)): acquire, renew, release and
/// inspect them. Cheap to clone.
///
/// A [`Fence`] is meant for the backend that gave it: another backend's `renew` and `holds`
/// answer `false` for it and its `release` does nothing.
#[derive(Debug, Clone)]
pub struct Leases {
    backend: Backend,
}

#[derive(Debug, Clone)]
enum Backend {
    Database(Store),
    #[cfg(feature = "redis")]
    Redis(redis::RedisLeases),
}

impl Leases {
    /// The leases in the database `store` (migrated with [`MIGRATIONS`]).
    pub fn new(store: Store) -> Self {
        Self {
            backend: Backend::Database(store),
        }
    }

    /// The leases in the Redis of `options`, fenced in a database migrated with
    /// [`MIGRATIONS`]. Nothing is connected yet: the first operation connects, and each
    /// fails while Redis is unreachable. Fails at once only for options that cannot work.
    #[cfg(feature = "redis")]
    pub fn redis(options: RedisLeaseOptions) -> Result<Self, LeaseError> {
        Ok(Self {
            backend: Backend::Redis(redis::RedisLeases::new(options)?),
        })
    }

    /// Whether `fence` came from this backend.
    fn ours(&self, fence: &Fence) -> bool {
        let kept_in = match &self.backend {
            Backend::Database(_) => KeptIn::Database,
            #[cfg(feature = "redis")]
            Backend::Redis(_) => KeptIn::Redis,
        };
        fence.kept_in == kept_in
    }

    /// Takes lease `name` for `holder` for `ttl_ms`, if it is free (never taken, released or
    /// run out) or `holder` has it already. Taking it anew gives a new token, larger than
    /// any before; a holder that still holds it keeps its token and gets the full TTL again.
    /// `None` while another holder has it.
    pub async fn acquire(
        &self,
        name: &str,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<Option<Fence>, LeaseError> {
        match &self.backend {
            Backend::Database(store) => Ok(database::acquire(store, name, holder, ttl_ms).await?),
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => redis.acquire(name, holder, ttl_ms).await,
        }
    }

    /// Extends `fence`'s lease by `ttl_ms` from now. `false` when it is no longer held with
    /// that token by `holder`, or ran out (even if nobody took it since: the holder must
    /// acquire it again, with a new token, so that nothing it wrote under the old one can pass
    /// for new).
    pub async fn renew(
        &self,
        fence: &Fence,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<bool, LeaseError> {
        if !self.ours(fence) {
            return Ok(false);
        }
        match &self.backend {
            Backend::Database(store) => Ok(database::renew(store, fence, holder, ttl_ms).await?),
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => redis.renew(fence, holder, ttl_ms).await,
        }
    }

    /// Gives `fence`'s lease up, so another instance can take it at once. Nothing happens
    /// when it is no longer held with that token by `holder`. The lease stays stored, so its
    /// token keeps rising.
    pub async fn release(&self, fence: &Fence, holder: &str) -> Result<(), LeaseError> {
        if !self.ours(fence) {
            return Ok(());
        }
        match &self.backend {
            Backend::Database(store) => Ok(database::release(store, fence, holder).await?),
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => redis.release(fence, holder).await,
        }
    }

    /// Lease `name` as stored, if it was ever taken.
    pub async fn state(&self, name: &str) -> Result<Option<LeaseState>, LeaseError> {
        match &self.backend {
            Backend::Database(store) => Ok(database::state(store, name).await?),
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => redis.state(name).await,
        }
    }

    /// Whether `fence` still holds: its token is the lease's current one and the lease has
    /// not run out, checked on its own, where the lease is kept. This only reads: a lease in
    /// Redis is asked of Redis, and its fence in the database is neither checked nor advanced.
    pub async fn holds(&self, fence: &Fence) -> Result<bool, LeaseError> {
        if !self.ours(fence) {
            return Ok(false);
        }
        match &self.backend {
            Backend::Database(store) => Ok(database::holds(store, fence).await?),
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => redis.holds(fence).await,
        }
    }

    /// Whether the place the leases are kept answers, for a readiness check.
    pub async fn ping(&self) -> Result<(), LeaseError> {
        match &self.backend {
            Backend::Database(store) => match store {
                Store::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
                Store::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop)?,
            },
            #[cfg(feature = "redis")]
            Backend::Redis(redis) => redis.ping().await?,
        }
        Ok(())
    }
}
