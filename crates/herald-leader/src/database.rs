//! The database backend: leases as rows of `herald_leases`, one per lease, never deleted.
//!
//! Each operation is one plain `INSERT … ON CONFLICT` or `UPDATE` on one row, with no session
//! state, and every time is the database's (see [the crate docs](crate)). A fence of this
//! backend is checked against the same row ([`Fence::check_postgres`]).

use herald_store::Store;

use crate::{Fence, KeptIn, LeaseState, NOW_PG, NOW_SQLITE};

/// Builds a statement for each engine: `NOW` becomes that engine's current time, `$N` stays
/// (PostgreSQL) or becomes `?N` (SQLite).
fn statement(store: &Store, text: &str) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(match store {
        Store::Postgres(_) => text.replace("NOW", NOW_PG),
        Store::Sqlite(_) => herald_store::sql::for_sqlite(&text.replace("NOW", NOW_SQLITE)),
    })
}

/// See [`Leases::acquire`](crate::Leases::acquire).
pub(crate) async fn acquire(
    store: &Store,
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
    let token: Option<i64> = herald_store::on_store!(store, pool, _sql => {
        sqlx::query_scalar(statement(store, text))
            .bind(name)
            .bind(holder)
            .bind(ttl_ms.max(1))
            .fetch_optional(pool)
            .await?
    });
    Ok(token.map(|token| Fence::new(name, token, KeptIn::Database)))
}

/// See [`Leases::renew`](crate::Leases::renew).
pub(crate) async fn renew(
    store: &Store,
    fence: &Fence,
    holder: &str,
    ttl_ms: i64,
) -> Result<bool, sqlx::Error> {
    let text = "UPDATE herald_leases SET expires_at = NOW + $4 \
                WHERE name = $1 AND holder = $2 AND token = $3 AND expires_at > NOW";
    let renewed = herald_store::on_store!(store, pool, _sql => {
        sqlx::query(statement(store, text))
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

/// See [`Leases::release`](crate::Leases::release).
pub(crate) async fn release(store: &Store, fence: &Fence, holder: &str) -> Result<(), sqlx::Error> {
    let text = "UPDATE herald_leases SET expires_at = NOW - 1 \
                WHERE name = $1 AND holder = $2 AND token = $3";
    herald_store::on_store!(store, pool, _sql => {
        sqlx::query(statement(store, text))
            .bind(&fence.name)
            .bind(holder)
            .bind(fence.token)
            .execute(pool)
            .await?;
    });
    Ok(())
}

/// See [`Leases::state`](crate::Leases::state).
pub(crate) async fn state(store: &Store, name: &str) -> Result<Option<LeaseState>, sqlx::Error> {
    let text = "SELECT holder, token, expires_at - NOW FROM herald_leases WHERE name = $1";
    let row: Option<(String, i64, i64)> = herald_store::on_store!(store, pool, _sql => {
        sqlx::query_as(statement(store, text))
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

/// See [`Leases::holds`](crate::Leases::holds): the fence's own check, which for this
/// backend only reads.
pub(crate) async fn holds(store: &Store, fence: &Fence) -> Result<bool, sqlx::Error> {
    match store {
        Store::Postgres(pool) => fence.check_postgres(pool).await,
        Store::Sqlite(pool) => fence.check_sqlite(pool).await,
    }
}
