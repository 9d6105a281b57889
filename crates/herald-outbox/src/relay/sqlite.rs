//! The relay's round on SQLite: a short `BEGIN IMMEDIATE` transaction claims rows and takes a
//! lease on them, the publish runs with no transaction open, and a second short write deletes
//! them or records the failure. See the [relay docs](super) for why.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_leader::Fence;
use sqlx::SqlitePool;

use super::{
    Claimed, ClaimedRow, Outcome, PING_TIMEOUT, Relay, State, Verdict, error_chain, ids,
    publishable,
};

/// How long the lease outlives the longest publish, for the round's own writes.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// Committed, pending, due rows in id order, skipping any row whose key has an earlier pending
/// row that is waiting (for its retry, or under another round's lease). A NULL key equals
/// nothing, so keyless rows always pass.
const CLAIM: &str = "\
SELECT o.id, o.event_id, o.partition_key, o.event_type, o.source, o.correlation_id, \
       o.traceparent, o.payload, o.attempts \
FROM herald_outbox AS o \
WHERE o.status = 'pending' AND o.next_attempt_at <= ?1 \
  AND NOT EXISTS ( \
      SELECT 1 FROM herald_outbox AS e \
      WHERE e.partition_key = o.partition_key AND e.status = 'pending' \
        AND e.id < o.id AND e.next_attempt_at > ?1) \
ORDER BY o.id \
LIMIT ?2";

/// Sets `next_attempt_at` (the lease, or its end) of the ids in a JSON array.
const SET_DUE: &str = "UPDATE herald_outbox SET next_attempt_at = ?2 \
    WHERE id IN (SELECT value FROM json_each(?1))";

const DELETE: &str = "DELETE FROM herald_outbox WHERE id IN (SELECT value FROM json_each(?1))";

/// Ends the lease now and records why the publish failed.
const NOTE_ERROR: &str = "UPDATE herald_outbox SET last_error = ?2, next_attempt_at = ?3 \
    WHERE id IN (SELECT value FROM json_each(?1))";

const CHARGE: &str = "UPDATE herald_outbox \
    SET attempts = ?2, last_error = ?3, status = ?4, next_attempt_at = ?5 WHERE id = ?1";

/// Later pending rows of the charged row's key wait until its retry.
const HOLD_KEY: &str = "UPDATE herald_outbox SET next_attempt_at = ?3 \
    WHERE partition_key = ?2 AND status = 'pending' AND id > ?1 AND next_attempt_at < ?3";

const GAUGES: &str = "SELECT \
    (SELECT created_at FROM herald_outbox WHERE status = 'pending' ORDER BY id LIMIT 1), \
    (SELECT count(*) FROM herald_outbox WHERE status = 'failed')";

pub(super) async fn round(
    relay: &Relay,
    pool: &SqlitePool,
    state: &mut State,
    fence: Option<&Fence>,
) -> Result<Outcome, sqlx::Error> {
    let limit = relay.limit(state);
    let now = now_ms();
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    if let Some(fence) = fence
        && !fence.check_sqlite(&mut *tx).await?
    {
        tx.rollback().await?;
        return Ok(Outcome::Fenced);
    }
    let rows: Vec<Claimed> = sqlx::query_as::<_, ClaimedRow>(CLAIM)
        .bind(now)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
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
    let batch_ids = json_ids(batch);
    let lease = relay.options.publish_timeout + PING_TIMEOUT + LEASE_MARGIN;
    sqlx::query(SET_DUE)
        .bind(&batch_ids)
        .bind(now.saturating_add(millis(lease)))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;

    match relay.publish(batch).await {
        Ok(()) => {
            // If this fails the rows stay leased and are published again when the lease ends.
            sqlx::query(DELETE).bind(&batch_ids).execute(pool).await?;
            Ok(relay.published(batch, rows.len(), limit, state))
        }
        Err(err) => {
            let error = error_chain(&err);
            let verdict = relay.judge(&err, batch, state).await;
            let now = now_ms();
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            if let (Verdict::Charged(charge), [row]) = (&verdict, batch) {
                let next = now.saturating_add(millis(charge.retry_in));
                sqlx::query(CHARGE)
                    .bind(row.id)
                    .bind(charge.attempts)
                    .bind(&error)
                    .bind(if charge.failed { "failed" } else { "pending" })
                    .bind(if charge.failed { now } else { next })
                    .execute(&mut *tx)
                    .await?;
                if let (false, Some(key)) = (charge.failed, &row.partition_key) {
                    sqlx::query(HOLD_KEY)
                        .bind(row.id)
                        .bind(key)
                        .bind(next)
                        .execute(&mut *tx)
                        .await?;
                }
            } else {
                sqlx::query(NOTE_ERROR)
                    .bind(&batch_ids)
                    .bind(&error)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(Outcome::Failed(verdict))
        }
    }
}

/// The age of the oldest pending row in seconds (0 when none), and the number of failed rows.
pub(super) async fn gauges(pool: &SqlitePool) -> Result<(f64, i64), sqlx::Error> {
    let (oldest, failed): (Option<i64>, i64) = sqlx::query_as(GAUGES).fetch_one(pool).await?;
    let lag = oldest.map_or(0.0, |created| (now_ms() - created) as f64 / 1000.0);
    Ok((lag, failed))
}

fn json_ids(rows: &[Claimed]) -> String {
    let ids: Vec<String> = ids(rows).iter().map(i64::to_string).collect();
    format!("[{}]", ids.join(","))
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Milliseconds since the Unix epoch, the unit of the SQLite schema's times.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}
