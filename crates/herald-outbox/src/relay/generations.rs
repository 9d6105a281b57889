//! The outbox's generations on PostgreSQL: how the relay starts new partitions and empties
//! old ones, so published rows leave by `TRUNCATE` rather than waiting for VACUUM. See the
//! [relay docs](super) ("Generations") for why and for the argument that no row is lost.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use sqlx::{PgPool, Postgres, Transaction};

use super::postgres::LOCK_KEY;

/// The most rows a closed generation may still hold to be moved into the current one at once
/// (rows that wait for a retry, or were set aside as failed). A closed generation with more is
/// left to the relay to drain first.
const MOVE_LIMIT: i64 = 1000;
/// The least time between two new generations.
const MIN_AGE: Duration = Duration::from_secs(1);
/// How long starting a generation may wait for the producers' transactions in flight (and
/// hold up new ones meanwhile) before it gives up until the next try.
const SWITCH_WAIT: &str = "100ms";

const LOCK: &str = "SELECT pg_try_advisory_xact_lock($1)";

const SURVEY: &str = "\
SELECT herald_outbox_generation(), \
       (SELECT last_value FROM herald_outbox_id_seq), \
       ARRAY(SELECT substring(c.relname FROM '^herald_outbox_g([0-9]+)$')::BIGINT \
             FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'herald_outbox'::regclass \
               AND c.relname ~ '^herald_outbox_g[0-9]+$' \
             ORDER BY 1)";

/// Columns a moved row keeps (all but `generation`, which becomes the current one).
const COLUMNS: &str = "id, event_id, partition_key, event_type, source, correlation_id, \
    traceparent, payload, created_at, status, attempts, next_attempt_at, last_error";

/// What a relay knows about the generations (nothing that must survive a restart: a new
/// relay reads the rest from the catalog and starts with every generation in its claims).
#[derive(Debug, Default)]
pub(super) struct Generations {
    /// The lowest generation that may hold rows; claims read this one and later ones only.
    pub(super) floor: i64,
    /// Closed generations found empty; they never hold a row again.
    empty: BTreeSet<i64>,
    /// Of those, the ones truncated (waiting to be dropped).
    truncated: BTreeSet<i64>,
    /// The current generation, and the id sequence's value when this relay first saw it.
    began: Option<(i64, i64)>,
    /// When this relay last started a generation.
    switched: Option<Instant>,
    /// When maintenance last ran.
    pub(super) last_run: Option<Instant>,
}

/// The state of the generations, read from the database.
struct Survey {
    current: i64,
    last_id: i64,
    generations: Vec<i64>,
}

async fn survey(pool: &PgPool) -> Result<Survey, sqlx::Error> {
    let (current, last_id, generations): (i64, i64, Vec<i64>) =
        sqlx::query_as(SURVEY).fetch_one(pool).await?;
    Ok(Survey {
        current,
        last_id,
        generations,
    })
}

/// A transaction holding the relay's round lock, or `None` when a round (or another relay's
/// maintenance) has it.
async fn locked(pool: &PgPool) -> Result<Option<Transaction<'static, Postgres>>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let ours: bool = sqlx::query_scalar(LOCK)
        .bind(LOCK_KEY)
        .fetch_one(&mut *tx)
        .await?;
    if ours {
        Ok(Some(tx))
    } else {
        tx.rollback().await?;
        Ok(None)
    }
}

/// Whether `err` is a lock that could not be had now (`NOWAIT`, or `lock_timeout`).
fn lock_unavailable(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// A busy lock means "not now" (`Ok(false)`): the step is tried again next time.
fn not_now(err: sqlx::Error) -> Result<bool, sqlx::Error> {
    if lock_unavailable(&err) {
        Ok(false)
    } else {
        Err(err)
    }
}

fn table(generation: i64) -> String {
    format!("herald_outbox_g{generation}")
}

impl Generations {
    /// One maintenance pass: empties, truncates and drops closed generations where it can,
    /// moves the claim's floor up, and starts a new generation once the current one has taken
    /// `rotate_after` rows (never when 0).
    pub(super) async fn maintain(
        &mut self,
        pool: &PgPool,
        rotate_after: u64,
    ) -> Result<(), sqlx::Error> {
        self.last_run = Some(Instant::now());
        let survey = survey(pool).await?;
        let existing: BTreeSet<i64> = survey.generations.iter().copied().collect();
        self.empty.retain(|g| existing.contains(g));
        self.truncated.retain(|g| existing.contains(g));
        for &generation in survey.generations.iter().filter(|&&g| g < survey.current) {
            if !self.empty.contains(&generation) && !self.empty_out(pool, generation).await? {
                continue;
            }
            if !self.truncated.contains(&generation) {
                if !truncate(pool, generation).await? {
                    continue;
                }
                self.truncated.insert(generation);
            }
            if drop_generation(pool, generation).await? {
                self.empty.remove(&generation);
                self.truncated.remove(&generation);
            }
        }
        self.floor = survey
            .generations
            .iter()
            .copied()
            .find(|g| !self.empty.contains(g))
            .unwrap_or(survey.current);

        let began = match self.began {
            Some((generation, id)) if generation == survey.current => id,
            _ => {
                self.began = Some((survey.current, survey.last_id));
                survey.last_id
            }
        };
        let taken = u64::try_from(survey.last_id.saturating_sub(began)).unwrap_or(0);
        let due = self.switched.is_none_or(|at| at.elapsed() >= MIN_AGE);
        if rotate_after > 0 && taken >= rotate_after && due {
            let next = survey.current + 1;
            if !existing.contains(&next) && !create(pool, next).await? {
                return Ok(());
            }
            if switch(pool, survey.current, next).await? {
                self.switched = Some(Instant::now());
                self.began = Some((next, survey.last_id));
                tracing::debug!(generation = next, "the outbox started a new generation");
            } else {
                tracing::debug!(
                    "the outbox did not start a new generation now (producers' transactions \
                     held it for more than {SWITCH_WAIT}, or another relay was at work)"
                );
            }
        }
        Ok(())
    }

    /// Finds whether closed `generation` is empty, moving its last few rows into the current
    /// generation when there are few enough. Returns whether it is now empty.
    async fn empty_out(&mut self, pool: &PgPool, generation: i64) -> Result<bool, sqlx::Error> {
        let Some(mut tx) = locked(pool).await? else {
            return Ok(false);
        };
        let name = table(generation);
        // The generation is closed: every transaction that could write to it has ended, so
        // this statement's snapshot sees every row it will ever hold.
        let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM (SELECT 1 FROM {name} LIMIT {}) AS r",
            MOVE_LIMIT + 1
        )))
        .fetch_one(&mut *tx)
        .await?;
        if rows > MOVE_LIMIT {
            tx.rollback().await?;
            return Ok(false);
        }
        if rows > 0 {
            // A row locked by someone else (an operator's edit) makes this wait; give up
            // quickly and try next time.
            sqlx::query("SET LOCAL lock_timeout = '100ms'")
                .execute(&mut *tx)
                .await?;
            let moved = sqlx::query(sqlx::AssertSqlSafe(format!(
                "WITH moved AS (DELETE FROM {name} RETURNING {COLUMNS}) \
                 INSERT INTO herald_outbox ({COLUMNS}) SELECT {COLUMNS} FROM moved"
            )))
            .execute(&mut *tx)
            .await;
            if let Err(err) = moved {
                return not_now(err);
            }
            tracing::debug!(
                generation,
                rows,
                "moved the last rows of a closed outbox generation into the current one"
            );
        }
        tx.commit().await?;
        self.empty.insert(generation);
        Ok(true)
    }
}

/// Truncates closed, empty `generation`. `Ok(false)` when some session still holds the
/// partition (such as a long transaction that read the outbox): it is tried again next time.
async fn truncate(pool: &PgPool, generation: i64) -> Result<bool, sqlx::Error> {
    let Some(mut tx) = locked(pool).await? else {
        return Ok(false);
    };
    let name = table(generation);
    if let Err(err) = sqlx::query(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE NOWAIT"
    )))
    .execute(&mut *tx)
    .await
    {
        return not_now(err);
    }
    // Nothing writes to a closed generation, and moved rows go to the current one; this is
    // the last line of defence, not a case that happens.
    let rows: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT EXISTS (SELECT 1 FROM {name})"
    )))
    .fetch_one(&mut *tx)
    .await?;
    if rows {
        return Err(sqlx::Error::Protocol(format!(
            "closed outbox generation {generation} holds rows; it is not truncated"
        )));
    }
    sqlx::query(sqlx::AssertSqlSafe(format!("TRUNCATE {name}")))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// Drops truncated `generation`. Dropping a partition locks the whole outbox for an instant,
/// so it is only done when that lock is free right now (`Ok(false)` otherwise).
async fn drop_generation(pool: &PgPool, generation: i64) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    if let Err(err) = sqlx::query("LOCK TABLE ONLY herald_outbox IN ACCESS EXCLUSIVE MODE NOWAIT")
        .execute(&mut *tx)
        .await
    {
        return not_now(err);
    }
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {}",
        table(generation)
    )))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Creates and attaches the partition of `generation` (the outbox stays readable and writable
/// meanwhile: attaching takes a lock that conflicts with neither). `Ok(false)` when another
/// relay is at work.
async fn create(pool: &PgPool, generation: i64) -> Result<bool, sqlx::Error> {
    let name = table(generation);
    let Some(mut tx) = locked(pool).await? else {
        return Ok(false);
    };
    sqlx::query("SET LOCAL lock_timeout = '5s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {name} (LIKE herald_outbox INCLUDING DEFAULTS INCLUDING CONSTRAINTS) WITH ( \
             autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 1000)"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE herald_outbox ATTACH PARTITION {name} FOR VALUES IN ({generation})"
    )))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Makes `next` the current generation, if `current` still is. The `SHARE` lock waits for
/// every producer transaction that has written to the outbox and keeps new ones out until
/// the switch commits, so once it has, no transaction can write to `current` again.
/// `Ok(false)` when producers held the outbox for longer than [`SWITCH_WAIT`].
async fn switch(pool: &PgPool, current: i64, next: i64) -> Result<bool, sqlx::Error> {
    let Some(mut tx) = locked(pool).await? else {
        return Ok(false);
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SET LOCAL lock_timeout = '{SWITCH_WAIT}'"
    )))
    .execute(&mut *tx)
    .await?;
    if let Err(err) = sqlx::query("LOCK TABLE ONLY herald_outbox IN SHARE MODE")
        .execute(&mut *tx)
        .await
    {
        return not_now(err);
    }
    let now: i64 = sqlx::query_scalar("SELECT herald_outbox_generation()")
        .fetch_one(&mut *tx)
        .await?;
    if now == current {
        sqlx::query("SELECT setval('herald_outbox_generation_seq', $1, true)")
            .bind(next)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(now == current)
}
