//! Leases with fencing tokens, kept in the database.
//!
//! Some work must be done by one instance at a time: the relay of an outbox, for one. Each
//! such piece of work has a lease, a row in `herald_leases` named after it. An instance that
//! [acquires](Leases::acquire) it becomes the leader, keeps it by [renewing](Leases::renew)
//! it well before it runs out, and [releases](Leases::release) it when it stops, so another
//! can take over at once. An instance that dies stops renewing; its lease runs out after
//! the TTL and another instance takes it.
//!
//! # Fencing
//!
//! A leader can be paused (a long GC-like stall, `SIGSTOP`, a VM migration) past the end of
//! its lease, then wake up believing it still leads. Expiry alone cannot stop it: it has not
//! looked at the clock yet. So every holding gets a *fencing token*, larger than any token
//! of the same lease before it, and the leader's writes carry it: [`Fence::check_postgres`] (or
//! [`Fence::condition`] inside a statement of one's own) accepts the token only while it is
//! still the lease's current token and the lease has not run out. A former leader's late
//! write finds a newer token and is refused.
//!
//! # Clocks
//!
//! On PostgreSQL every time is the database's (`clock_timestamp()`), so instances whose clocks
//! disagree still agree on when a lease ends. SQLite is one machine's file, whose clock all
//! its users share.
//!
//! # Why the database
//!
//! It is the one service every Herald instance already depends on, and the state the leader
//! guards lives in it: a fence checked in the same transaction as the write is exact. The
//! statements are plain `INSERT … ON CONFLICT`/`UPDATE`s on one row, with no session state
//! (no advisory locks, no `LISTEN`), so they work through a transaction-mode connection
//! pooler.

mod leader;

use herald_store::{Migration, MigrationSet, Store};

pub use leader::{LeaderOptions, Stop, lead};

/// The leases' schema, for `herald migrate` or [`herald_store::migrate::migrate`].
pub const MIGRATIONS: MigrationSet = MigrationSet {
    component: "leader",
    postgres: &[Migration {
        version: 1,
        name: "create leases",
        sql: include_str!("../migrations/postgres/0001_leases.sql"),
    }],
    sqlite: &[Migration {
        version: 1,
        name: "create leases",
        sql: include_str!("../migrations/sqlite/0001_leases.sql"),
    }],
};

/// "Now" in epoch milliseconds, by the database's clock.
const NOW_PG: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";
const NOW_SQLITE: &str = "CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)";

/// Builds a statement for each engine: `NOW` becomes that engine's current time, `$N` stays
/// (PostgreSQL) or becomes `?N` (SQLite).
fn statement(store: &Store, text: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(match store {
        Store::Postgres(_) => text.replace("NOW", NOW_PG),
        Store::Sqlite(_) => herald_store::sql::for_sqlite(&text.replace("NOW", NOW_SQLITE)),
    })
}

/// A lease taken: who holds it and with which token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The lease.
    pub name: String,
    /// The fencing token of this holding.
    pub token: i64,
}

impl Fence {
    /// A SQL condition that holds only while this fence's token is the lease's current one
    /// and the lease has not run out, for a statement of one's own; its two parameters are
    /// `$first` (bind [`Fence::name`]) and `$first + 1` (bind [`Fence::token`]). Written with
    /// `$N` placeholders, as [`herald_store::sql::for_sqlite`] expects.
    pub fn condition(&self, store: &Store, first: usize) -> String {
        let now = match store {
            Store::Postgres(_) => NOW_PG,
            Store::Sqlite(_) => NOW_SQLITE,
        };
        self.condition_text(now, first)
    }

    /// Whether this fence still holds on PostgreSQL: its token is the lease's current one and
    /// the lease has not run out. Run it inside the transaction whose writes it guards.
    pub async fn check_postgres<'c, E>(&self, executor: E) -> Result<bool, sqlx::Error>
    where
        E: sqlx::Executor<'c, Database = sqlx::Postgres>,
    {
        let text = format!("SELECT {}", self.condition_text(NOW_PG, 1));
        sqlx::query_scalar(sqlx::AssertSqlSafe(text))
            .bind(&self.name)
            .bind(self.token)
            .fetch_one(executor)
            .await
    }

    /// [`Fence::check_postgres`] on SQLite.
    pub async fn check_sqlite<'c, E>(&self, executor: E) -> Result<bool, sqlx::Error>
    where
        E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
    {
        let text = herald_store::sql::for_sqlite(&format!(
            "SELECT {}",
            self.condition_text(NOW_SQLITE, 1)
        ));
        sqlx::query_scalar(sqlx::AssertSqlSafe(text))
            .bind(&self.name)
            .bind(self.token)
            .fetch_one(executor)
            .await
    }

    fn condition_text(&self, now: &str, first: usize) -> String {
        format!(
            "EXISTS (SELECT 1 FROM herald_leases WHERE name = ${first} AND token = ${} \
             AND expires_at > {now})",
            first + 1
        )
    }
}

/// The lease statements, on one store.
#[derive(Debug, Clone)]
pub struct Leases {
    store: Store,
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

impl Leases {
    /// The leases in `store` (migrated with [`MIGRATIONS`]).
    pub fn new(store: Store) -> Self {
        Self { store }
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
    ) -> Result<Option<Fence>, sqlx::Error> {
        let text = "INSERT INTO herald_leases (name, holder, token, expires_at, acquired_at) \
             VALUES ($1, $2, 1, NOW + $3, NOW) \
             ON CONFLICT (name) DO UPDATE SET \
               token = CASE WHEN herald_leases.holder = excluded.holder \
                 AND herald_leases.expires_at > NOW \
                 THEN herald_leases.token ELSE herald_leases.token + 1 END, \
               acquired_at = CASE WHEN herald_leases.holder = excluded.holder \
                 AND herald_leases.expires_at > NOW \
                 THEN herald_leases.acquired_at ELSE excluded.acquired_at END, \
               holder = excluded.holder, \
               expires_at = excluded.expires_at \
             WHERE herald_leases.expires_at <= NOW OR herald_leases.holder = excluded.holder \
             RETURNING token";
        let token: Option<i64> = herald_store::on_store!(&self.store, pool, _sql => {
            sqlx::query_scalar(statement(&self.store, text))
                .bind(name)
                .bind(holder)
                .bind(ttl_ms.max(1))
                .fetch_optional(pool)
                .await?
        });
        Ok(token.map(|token| Fence {
            name: name.to_owned(),
            token,
        }))
    }

    /// Extends `fence`'s lease by `ttl_ms` from now. `false` when it is no longer held with
    /// that token, or ran out (even if nobody took it since: the holder must acquire it
    /// again, with a new token, so that nothing it wrote under the old one can pass for new).
    pub async fn renew(
        &self,
        fence: &Fence,
        holder: &str,
        ttl_ms: i64,
    ) -> Result<bool, sqlx::Error> {
        let text = "UPDATE herald_leases SET expires_at = NOW + $4 \
                    WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at > NOW";
        let renewed = herald_store::on_store!(&self.store, pool, _sql => {
            sqlx::query(statement(&self.store, text))
                .bind(&fence.name)
                .bind(holder)
                .bind(fence.token)
                .bind(ttl_ms.max(1))
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(renewed == 1)
    }

    /// Gives `fence`'s lease up, so another instance can take it at once. Nothing happens
    /// when it is no longer held with that token. The row stays, so the token keeps rising.
    pub async fn release(&self, fence: &Fence, holder: &str) -> Result<(), sqlx::Error> {
        let text = "UPDATE herald_leases SET expires_at = NOW - 1 \
                    WHERE name = $1 AND holder = $2 AND token = $3";
        herald_store::on_store!(&self.store, pool, _sql => {
            sqlx::query(statement(&self.store, text))
                .bind(&fence.name)
                .bind(holder)
                .bind(fence.token)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Lease `name` as stored, if it was ever taken.
    pub async fn state(&self, name: &str) -> Result<Option<LeaseState>, sqlx::Error> {
        let text = "SELECT holder, token, expires_at - NOW FROM herald_leases WHERE name = $1";
        let row: Option<(String, i64, i64)> = herald_store::on_store!(&self.store, pool, _sql => {
            sqlx::query_as(statement(&self.store, text))
                .bind(name)
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|(holder, token, remaining_ms)| LeaseState {
            holder,
            token,
            remaining_ms,
        }))
    }

    /// Whether `fence` still holds, checked on its own.
    pub async fn holds(&self, fence: &Fence) -> Result<bool, sqlx::Error> {
        match &self.store {
            Store::Postgres(pool) => fence.check_postgres(pool).await,
            Store::Sqlite(pool) => fence.check_sqlite(pool).await,
        }
    }
}
