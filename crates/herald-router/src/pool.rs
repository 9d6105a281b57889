//! Delivery pools: how many requests a group of subscriptions may have in flight, and how
//! many it may start per second. Pool `default` always exists; a subscription names its pool.
//!
//! Pools are rows in `herald_pools`; the router reads them every second, so a change made
//! through the API applies to running routers without a restart.

use herald_core::problem::{ApiError, FieldError};
use herald_store::Store;
use serde::{Deserialize, Serialize};

use crate::limit::{RateLimit, RateLimitError};
use crate::sql::{now_ms, on_store, rfc3339};

/// The pool every subscription uses unless it names another.
pub const DEFAULT: &str = "default";

/// The most requests in flight one pool may allow.
pub const MAX_CONCURRENCY: u32 = 1000;

/// A pool as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    /// Its code (`default`, `partners`…).
    pub code: String,
    /// The most requests in flight at once.
    pub concurrency: u32,
    /// The most requests started per second, if limited.
    pub rate_limit: Option<RateLimit>,
    /// Creation time, epoch ms.
    pub created_at: i64,
    /// Last change, epoch ms.
    pub updated_at: i64,
}

/// A pool's rate limit as the API reads and writes it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = RateLimit)]
#[serde(deny_unknown_fields)]
pub struct RateLimitBody {
    /// Requests per second on average.
    pub per_second: f64,
    /// The most requests back to back.
    pub burst: u32,
}

/// The body of `PUT /v1/pools/{code}`.
#[derive(Debug, Clone, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSpec {
    /// The most requests in flight at once (1 to 1000).
    pub concurrency: u32,
    /// The rate limit; absent or `null` for none.
    #[serde(default)]
    pub rate_limit: Option<RateLimitBody>,
}

/// A pool as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[schema(as = Pool)]
pub struct PoolOut {
    /// Its code.
    pub code: String,
    /// The most requests in flight at once.
    pub concurrency: u32,
    /// The rate limit, or `null`.
    pub rate_limit: Option<RateLimitBody>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl From<&Pool> for PoolOut {
    fn from(pool: &Pool) -> Self {
        Self {
            code: pool.code.clone(),
            concurrency: pool.concurrency,
            rate_limit: pool.rate_limit.map(|l| RateLimitBody {
                per_second: l.per_second,
                burst: l.burst,
            }),
            created_at: rfc3339(pool.created_at),
            updated_at: rfc3339(pool.updated_at),
        }
    }
}

/// Checks a pool code: 1 to 63 lowercase letters, digits, `-` or `_`, starting with a letter
/// or digit. `pointer` says where it was given.
pub fn check_code(code: &str, pointer: &str) -> Result<(), FieldError> {
    let mut chars = code.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if first_ok && rest_ok && code.len() <= 63 {
        Ok(())
    } else {
        Err(FieldError::new(
            pointer,
            "a pool code is 1 to 63 lowercase letters, digits, `-` or `_`, starting with a letter or digit",
        ))
    }
}

impl PoolSpec {
    /// Checks every field; all problems are reported at once.
    pub fn check(&self) -> Result<Option<RateLimit>, ApiError> {
        let mut errors = Vec::new();
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            errors.push(FieldError::new(
                "/concurrency",
                format!("must be between 1 and {MAX_CONCURRENCY}"),
            ));
        }
        let mut limit = None;
        if let Some(body) = self.rate_limit {
            let candidate = RateLimit {
                per_second: body.per_second,
                burst: body.burst,
            };
            // Each field is checked on its own, so both are reported when both are wrong.
            let per_second_ok = RateLimit {
                burst: 1,
                ..candidate
            }
            .check()
            .is_ok();
            let burst_ok = RateLimit {
                per_second: 1.0,
                ..candidate
            }
            .check()
            .is_ok();
            if !per_second_ok {
                errors.push(FieldError::new(
                    "/rate_limit/per_second",
                    RateLimitError::PerSecond.to_string(),
                ));
            }
            if !burst_ok {
                errors.push(FieldError::new(
                    "/rate_limit/burst",
                    RateLimitError::Burst.to_string(),
                ));
            }
            limit = (per_second_ok && burst_ok).then_some(candidate);
        }
        if errors.is_empty() {
            Ok(limit)
        } else {
            Err(ApiError::validation(errors))
        }
    }
}

type Row = (String, i32, Option<f64>, Option<i32>, i64, i64);

fn pool_of((code, concurrency, per_second, burst, created_at, updated_at): Row) -> Pool {
    let rate_limit = match (per_second, burst) {
        (Some(per_second), Some(burst)) => Some(RateLimit {
            per_second,
            burst: u32::try_from(burst).unwrap_or(1),
        }),
        _ => None,
    };
    Pool {
        code,
        concurrency: u32::try_from(concurrency).unwrap_or(1),
        rate_limit,
        created_at,
        updated_at,
    }
}

const COLUMNS: &str = "code, concurrency, rate_per_second, rate_burst, created_at, updated_at";

/// Every pool, by code.
pub async fn list(store: &Store) -> Result<Vec<Pool>, sqlx::Error> {
    let sql_text = format!("SELECT {COLUMNS} FROM herald_pools ORDER BY code");
    let rows: Vec<Row> = on_store!(store, pool, sql => {
        sqlx::query_as(sql(&sql_text)).fetch_all(pool).await?
    });
    Ok(rows.into_iter().map(pool_of).collect())
}

/// One pool, if it exists.
pub async fn find(store: &Store, code: &str) -> Result<Option<Pool>, sqlx::Error> {
    let sql_text = format!("SELECT {COLUMNS} FROM herald_pools WHERE code = $1");
    let row: Option<Row> = on_store!(store, pool, sql => {
        sqlx::query_as(sql(&sql_text)).bind(code).fetch_optional(pool).await?
    });
    Ok(row.map(pool_of))
}

/// One pool: 404 when there is none. `code` is checked first (422 when malformed).
pub async fn get(store: &Store, code: &str) -> Result<Pool, ApiError> {
    check_code(code, "#/path/code").map_err(|e| ApiError::validation(vec![e]))?;
    find(store, code)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("there is no pool `{code}`")))
}

/// Creates or replaces pool `code`. Returns the pool and whether it was created.
pub async fn put(store: &Store, code: &str, spec: &PoolSpec) -> Result<(Pool, bool), ApiError> {
    let mut errors = Vec::new();
    if let Err(e) = check_code(code, "#/path/code") {
        errors.push(e);
    }
    let limit = match spec.check() {
        Ok(limit) => limit,
        Err(err) => {
            errors.extend(err.errors().iter().cloned());
            None
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let existed = find(store, code)
        .await
        .map_err(ApiError::internal)?
        .is_some();
    let now = now_ms();
    let concurrency = i32::try_from(spec.concurrency).unwrap_or(i32::MAX);
    let per_second = limit.map(|l| l.per_second);
    let burst = limit.map(|l| i32::try_from(l.burst).unwrap_or(i32::MAX));
    let upsert = "INSERT INTO herald_pools (code, concurrency, rate_per_second, rate_burst, created_at, updated_at) \
                  VALUES ($1, $2, $3, $4, $5, $5) \
                  ON CONFLICT (code) DO UPDATE SET concurrency = excluded.concurrency, \
                  rate_per_second = excluded.rate_per_second, rate_burst = excluded.rate_burst, \
                  updated_at = excluded.updated_at";
    on_store!(store, pool, sql => {
        sqlx::query(sql(upsert))
            .bind(code)
            .bind(concurrency)
            .bind(per_second)
            .bind(burst)
            .bind(now)
            .execute(pool)
            .await
            .map_err(ApiError::internal)?
            .rows_affected()
    });
    let pool = find(store, code)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::internal("the pool vanished after it was written"))?;
    Ok((pool, !existed))
}
