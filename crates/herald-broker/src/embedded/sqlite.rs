//! The embedded queue's SQL for SQLite (the design is in the parent module).
//!
//! Every transaction that writes more than one statement starts with `BEGIN IMMEDIATE`: it
//! takes the database's write lock up front, so transactions run one after another and a
//! check (does this key have a head? does this topic have a group?) stays true until commit.
//! A claim first looks without the lock and takes it only when something is claimable, so idle
//! consumers polling do not queue behind writers. Times come from the application's clock.

use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqlitePool};

use super::{ClaimRequest, Claimed, Engine, LeaseRef, Outgoing, StoredDeadLetter, held, now_ms};
use crate::{BoxFuture, BrokerError};

/// The queue on a SQLite pool.
#[derive(Debug)]
pub(super) struct SqliteEngine {
    pool: SqlitePool,
}

impl SqliteEngine {
    pub(super) fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }
}

const BEGIN_IMMEDIATE: &str = "BEGIN IMMEDIATE";

const COUNT_GROUPS: &str = "SELECT count(*) FROM herald_queue_groups WHERE topic = ?1";

/// One row per group of the topic. A keyed row is ready when its key has no head (so no row)
/// in the group; heads this transaction inserted count.
const PUBLISH: &str = "
INSERT INTO herald_queue_messages
    (topic, grp, partition_key, message_id, headers, payload, published_at, ready, visible_at)
SELECT ?1, g.grp, ?2, ?3, ?4, ?5, ?6,
       ?2 IS NULL OR NOT EXISTS (
           SELECT 1 FROM herald_queue_messages x
           WHERE x.topic = ?1 AND x.grp = g.grp AND x.partition_key = ?2 AND x.ready = 1),
       ?6
FROM herald_queue_groups AS g
WHERE g.topic = ?1
ORDER BY g.grp";

const PARK: &str = "
INSERT INTO herald_queue_parked (topic, partition_key, message_id, headers, payload, published_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

const GROUP_EXISTS: &str =
    "SELECT EXISTS (SELECT 1 FROM herald_queue_groups WHERE topic = ?1 AND grp = ?2)";
const CREATE_GROUP: &str =
    "INSERT OR IGNORE INTO herald_queue_groups (topic, grp, created_at) VALUES (?1, ?2, ?3)";

/// The topic's parked messages, in order, for its first group; the first of each key is its
/// head.
const ADOPT: &str = "
INSERT INTO herald_queue_messages
    (topic, grp, partition_key, message_id, headers, payload, published_at, ready, visible_at)
SELECT ?1, ?2, p.partition_key, p.message_id, p.headers, p.payload, p.published_at,
       p.partition_key IS NULL OR p.seq = min(p.seq) OVER (PARTITION BY p.partition_key),
       p.published_at
FROM herald_queue_parked AS p
WHERE p.topic = ?1
ORDER BY p.seq";
const DROP_PARKED: &str = "DELETE FROM herald_queue_parked WHERE topic = ?1";

const ANY_CLAIMABLE: &str = "
SELECT EXISTS (
    SELECT 1 FROM herald_queue_messages
    WHERE topic = ?1 AND grp = ?2 AND ready = 1 AND visible_at <= ?3
)";

const CLAIMABLE: &str = "
SELECT seq, partition_key, message_id, headers, payload, receive_count, last_error
FROM herald_queue_messages
WHERE topic = ?1 AND grp = ?2 AND ready = 1 AND visible_at <= ?3
ORDER BY visible_at, seq
LIMIT ?4";

const LEASE: &str = "
UPDATE herald_queue_messages SET lease = ?2, receive_count = ?3, visible_at = ?4
WHERE seq = ?1";

const DELETE_LEASED: &str = "DELETE FROM herald_queue_messages WHERE seq = ?1 AND lease = ?2";

/// Marks the key's oldest row ready (a no-op when it already is, or there is none).
const RELEASE_NEXT: &str = "
UPDATE herald_queue_messages SET ready = 1
WHERE seq = (
    SELECT seq FROM herald_queue_messages
    WHERE topic = ?1 AND grp = ?2 AND partition_key = ?3
    ORDER BY seq
    LIMIT 1
) AND ready = 0";

const RETRY: &str = "
UPDATE herald_queue_messages SET visible_at = ?3, last_error = ?4, lease = NULL
WHERE seq = ?1 AND lease = ?2";

const EXTEND: &str =
    "UPDATE herald_queue_messages SET visible_at = ?3 WHERE seq = ?1 AND lease = ?2";

const DEAD_LETTER: &str = "
INSERT INTO herald_queue_dead_letters
    (topic, grp, partition_key, message_id, headers, payload, published_at, receive_count,
     last_error, dead_at)
SELECT topic, grp, partition_key, message_id, headers, payload, published_at, receive_count,
       ?3, ?4
FROM herald_queue_messages
WHERE seq = ?1 AND lease = ?2";

const DEAD_LETTERS: &str = "
SELECT id, topic, grp, partition_key, message_id, headers, payload, receive_count, last_error,
       dead_at
FROM herald_queue_dead_letters
WHERE topic = ?1 AND grp = ?2
ORDER BY id
LIMIT ?3";

/// Back to the queue as a new message: after every row of its key, and its head if it has
/// none.
const REPLAY: &str = "
INSERT INTO herald_queue_messages
    (topic, grp, partition_key, message_id, headers, payload, published_at, ready, visible_at)
SELECT d.topic, d.grp, d.partition_key, d.message_id, d.headers, d.payload, ?2,
       d.partition_key IS NULL OR NOT EXISTS (
           SELECT 1 FROM herald_queue_messages x
           WHERE x.topic = d.topic AND x.grp = d.grp AND x.partition_key = d.partition_key
             AND x.ready = 1),
       ?2
FROM herald_queue_dead_letters AS d
WHERE d.id = ?1";
const DROP_DEAD_LETTER: &str = "DELETE FROM herald_queue_dead_letters WHERE id = ?1";

impl Engine for SqliteEngine {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: &'a [Outgoing<'a>],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await?;
            let now = now_ms();
            let groups: i64 = sqlx::query_scalar(COUNT_GROUPS)
                .bind(topic)
                .fetch_one(&mut *tx)
                .await?;
            let sql = if groups == 0 { PARK } else { PUBLISH };
            for message in messages {
                sqlx::query(sql)
                    .bind(topic)
                    .bind(message.key)
                    .bind(message.id)
                    .bind(message.headers.as_str())
                    .bind(message.payload)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn join<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let exists: bool = sqlx::query_scalar(GROUP_EXISTS)
                .bind(topic)
                .bind(group)
                .fetch_one(&self.pool)
                .await?;
            if exists {
                return Ok(());
            }
            let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await?;
            let groups: i64 = sqlx::query_scalar(COUNT_GROUPS)
                .bind(topic)
                .fetch_one(&mut *tx)
                .await?;
            let created = sqlx::query(CREATE_GROUP)
                .bind(topic)
                .bind(group)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if created && groups == 0 {
                let adopted = sqlx::query(ADOPT)
                    .bind(topic)
                    .bind(group)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                sqlx::query(DROP_PARKED)
                    .bind(topic)
                    .execute(&mut *tx)
                    .await?;
                if adopted > 0 {
                    tracing::info!(
                        topic,
                        group,
                        adopted,
                        "the first group adopted parked messages"
                    );
                }
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn claim<'a>(
        &'a self,
        request: &'a ClaimRequest<'a>,
    ) -> BoxFuture<'a, Result<Vec<Claimed>, BrokerError>> {
        Box::pin(async move {
            let any: bool = sqlx::query_scalar(ANY_CLAIMABLE)
                .bind(request.topic)
                .bind(request.group)
                .bind(now_ms())
                .fetch_one(&self.pool)
                .await?;
            if !any {
                return Ok(Vec::new());
            }
            let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await?;
            let now = now_ms();
            let rows = sqlx::query(CLAIMABLE)
                .bind(request.topic)
                .bind(request.group)
                .bind(now)
                .bind(request.max)
                .fetch_all(&mut *tx)
                .await?;
            let mut claimed = Vec::with_capacity(rows.len());
            for row in &rows {
                let previous: i32 = row.try_get(5)?;
                let expired = previous >= request.max_deliveries;
                let receive_count = if expired { previous } else { previous + 1 };
                let seq: i64 = row.try_get(0)?;
                sqlx::query(LEASE)
                    .bind(seq)
                    .bind(request.token)
                    .bind(receive_count)
                    .bind(now.saturating_add(request.visibility_ms))
                    .execute(&mut *tx)
                    .await?;
                claimed.push(Claimed {
                    seq,
                    key: row.try_get(1)?,
                    message_id: row.try_get(2)?,
                    headers: row.try_get(3)?,
                    payload: row.try_get(4)?,
                    receive_count,
                    expired,
                    last_error: row.try_get(6)?,
                });
            }
            tx.commit().await?;
            Ok(claimed)
        })
    }

    fn ack<'a>(&'a self, lease: &'a LeaseRef) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let Some(key) = &lease.key else {
                let deleted = sqlx::query(DELETE_LEASED)
                    .bind(lease.seq)
                    .bind(lease.token)
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
                return held(deleted);
            };
            let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await?;
            let deleted = sqlx::query(DELETE_LEASED)
                .bind(lease.seq)
                .bind(lease.token)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            held(deleted)?;
            release_next(&mut tx, lease, key).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn retry<'a>(
        &'a self,
        lease: &'a LeaseRef,
        delay_ms: i64,
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let updated = sqlx::query(RETRY)
                .bind(lease.seq)
                .bind(lease.token)
                .bind(now_ms().saturating_add(delay_ms))
                .bind(error)
                .execute(&self.pool)
                .await?
                .rows_affected();
            held(updated)
        })
    }

    fn extend<'a>(
        &'a self,
        lease: &'a LeaseRef,
        by_ms: i64,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let updated = sqlx::query(EXTEND)
                .bind(lease.seq)
                .bind(lease.token)
                .bind(now_ms().saturating_add(by_ms))
                .execute(&self.pool)
                .await?
                .rows_affected();
            held(updated)
        })
    }

    fn dead_letter<'a>(
        &'a self,
        lease: &'a LeaseRef,
        error: &'a str,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await?;
            let copied = sqlx::query(DEAD_LETTER)
                .bind(lease.seq)
                .bind(lease.token)
                .bind(error)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            held(copied)?;
            sqlx::query(DELETE_LEASED)
                .bind(lease.seq)
                .bind(lease.token)
                .execute(&mut *tx)
                .await?;
            if let Some(key) = &lease.key {
                release_next(&mut tx, lease, key).await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn dead_letters<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        limit: i64,
    ) -> BoxFuture<'a, Result<Vec<StoredDeadLetter>, BrokerError>> {
        Box::pin(async move {
            let rows = sqlx::query(DEAD_LETTERS)
                .bind(topic)
                .bind(group)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
            Ok(rows
                .iter()
                .map(dead_letter_row)
                .collect::<Result<Vec<_>, _>>()?)
        })
    }

    fn replay(&self, id: i64) -> BoxFuture<'_, Result<bool, BrokerError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with(BEGIN_IMMEDIATE).await?;
            let moved = sqlx::query(REPLAY)
                .bind(id)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if moved == 0 {
                return Ok(false);
            }
            sqlx::query(DROP_DEAD_LETTER)
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }
}

/// Marks the next row of `key` in the lease's group ready, inside the caller's transaction.
async fn release_next(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    lease: &LeaseRef,
    key: &str,
) -> Result<(), BrokerError> {
    sqlx::query(RELEASE_NEXT)
        .bind(&*lease.topic)
        .bind(&*lease.group)
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn dead_letter_row(row: &SqliteRow) -> Result<StoredDeadLetter, sqlx::Error> {
    Ok(StoredDeadLetter {
        id: row.try_get(0)?,
        topic: row.try_get(1)?,
        group: row.try_get(2)?,
        key: row.try_get(3)?,
        message_id: row.try_get(4)?,
        headers: row.try_get(5)?,
        payload: row.try_get(6)?,
        receive_count: row.try_get(7)?,
        last_error: row.try_get(8)?,
        dead_at: row.try_get(9)?,
    })
}
