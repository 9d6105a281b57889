//! The relay's round on PostgreSQL: one transaction holds the claim (row locks) across one
//! publish and deletes the published rows before committing. See the [relay docs](super).

use std::time::Duration;

use herald_leader::Fence;
use sqlx::PgPool;

use super::{
    Claimed, ClaimedRow, Outcome, PING_TIMEOUT, Relay, State, Verdict, error_chain, ids,
    publishable,
};

/// A fixed key for the relay's transaction-scoped advisory lock: "heraldob".
pub(super) const LOCK_KEY: i64 = 0x6865_7261_6c64_6f62;

const LOCK: &str = "SELECT pg_try_advisory_xact_lock($1)";

/// Committed, pending, due rows in id order, skipping any row whose key has an earlier pending
/// row that is waiting for its retry. (A NULL key equals nothing, so keyless rows always pass.)
/// Every statement here reads only the generations from the floor on: the ones below are
/// empty, and may be full of dead rows that a long-held transaction keeps from VACUUM.
const CLAIM: &str = "\
SELECT o.id, o.event_id, o.partition_key, o.event_type, o.source, o.correlation_id, \
       o.traceparent, o.payload, o.attempts \
FROM herald_outbox AS o \
WHERE o.status = 'pending' AND o.next_attempt_at <= now() AND o.generation >= $2 \
  AND NOT EXISTS ( \
      SELECT 1 FROM herald_outbox AS e \
      WHERE e.partition_key = o.partition_key AND e.status = 'pending' AND e.generation >= $2 \
        AND e.id < o.id AND e.next_attempt_at > now()) \
ORDER BY o.id \
LIMIT $1 \
FOR UPDATE OF o SKIP LOCKED";

const DELETE: &str = "DELETE FROM herald_outbox WHERE id = ANY($1) AND generation >= $2";

const NOTE_ERROR: &str =
    "UPDATE herald_outbox SET last_error = $2 WHERE id = ANY($1) AND generation >= $3";

const CHARGE: &str = "\
UPDATE herald_outbox \
SET attempts = $2, last_error = $3, status = $4, \
    next_attempt_at = clock_timestamp() + make_interval(secs => $5) \
WHERE id = $1 AND generation >= $6";

/// Later pending rows of the charged row's key wait until its retry.
const HOLD_KEY: &str = "\
UPDATE herald_outbox AS f SET next_attempt_at = b.next_attempt_at \
FROM herald_outbox AS b \
WHERE b.id = $1 AND b.generation >= $2 AND f.generation >= $2 \
  AND f.partition_key = b.partition_key AND f.status = 'pending' \
  AND f.id > b.id AND f.next_attempt_at < b.next_attempt_at";

const GAUGES: &str = "\
SELECT \
  (SELECT EXTRACT(EPOCH FROM clock_timestamp() - created_at)::float8 FROM herald_outbox \
   WHERE status = 'pending' AND generation >= $1 ORDER BY id LIMIT 1), \
  (SELECT count(*) FROM herald_outbox WHERE status = 'failed' AND generation >= $1)";

pub(super) async fn round(
    relay: &Relay,
    pool: &PgPool,
    state: &mut State,
    fence: Option<&Fence>,
) -> Result<Outcome, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ours: bool = sqlx::query_scalar(LOCK)
        .bind(LOCK_KEY)
        .fetch_one(&mut *tx)
        .await?;
    if !ours {
        tx.rollback().await?;
        return Ok(Outcome::Busy);
    }
    if let Some(fence) = fence {
        if !fence.check_postgres(&mut *tx).await? {
            tx.rollback().await?;
            return Ok(Outcome::Fenced);
        }
        // A leader paused mid-round (its connection open, its transaction holding the lock
        // above) would keep every other relay out: PostgreSQL ends its session once it has
        // been idle in the transaction longer than any round can legitimately wait.
        let idle = relay.options.publish_timeout + PING_TIMEOUT + Duration::from_secs(5);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SET LOCAL idle_in_transaction_session_timeout = {}",
            idle.as_millis()
        )))
        .execute(&mut *tx)
        .await?;
    }
    let limit = relay.limit(state);
    let floor = state.generations.floor;
    let rows: Vec<Claimed> = sqlx::query_as::<_, ClaimedRow>(CLAIM)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(floor)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(Claimed::from)
        .collect();
    if rows.is_empty() {
        tx.commit().await?;
        return Ok(Outcome::Empty);
    }
    let batch = &rows[..publishable(&rows)];
    match relay.publish(batch).await {
        Ok(()) => {
            sqlx::query(DELETE)
                .bind(ids(batch))
                .bind(floor)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(relay.published(batch, rows.len(), limit, state))
        }
        Err(err) => {
            let error = error_chain(&err);
            let verdict = relay.judge(&err, batch, state).await;
            if let (Verdict::Charged(charge), [row]) = (&verdict, batch) {
                sqlx::query(CHARGE)
                    .bind(row.id)
                    .bind(charge.attempts)
                    .bind(&error)
                    .bind(if charge.failed { "failed" } else { "pending" })
                    .bind(charge.retry_in.as_secs_f64())
                    .bind(floor)
                    .execute(&mut *tx)
                    .await?;
                if !charge.failed {
                    sqlx::query(HOLD_KEY)
                        .bind(row.id)
                        .bind(floor)
                        .execute(&mut *tx)
                        .await?;
                }
            } else {
                sqlx::query(NOTE_ERROR)
                    .bind(ids(batch))
                    .bind(&error)
                    .bind(floor)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(Outcome::Failed(verdict))
        }
    }
}

/// The age of the oldest pending row in seconds (0 when none), and the number of failed rows.
pub(super) async fn gauges(pool: &PgPool, floor: i64) -> Result<(f64, i64), sqlx::Error> {
    let (lag, failed): (Option<f64>, i64) =
        sqlx::query_as(GAUGES).bind(floor).fetch_one(pool).await?;
    Ok((lag.unwrap_or(0.0), failed))
}
