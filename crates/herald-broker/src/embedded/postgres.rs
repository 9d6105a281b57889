//! The embedded queue's SQL for PostgreSQL (the design is in the parent module).
//!
//! Locks, always taken in this order within a transaction, so they cannot deadlock:
//! 1. the topic lock (`pg_advisory_xact_lock_shared` by publishers, exclusive by the
//!    transaction that creates a topic's group), so parked messages and group creation
//!    never race;
//! 2. key locks (`pg_advisory_xact_lock` on a hash of topic and key), in ascending order,
//!    held by whoever decides which row is a key's head: publish, ack, dead-letter, replay;
//! 3. row locks. The claim takes only row locks, with `SKIP LOCKED`, so it never waits.
//!
//! Times come from `herald_queue_now_ms()`, the database's clock in epoch milliseconds,
//! written as a scalar subquery where an index compares against it (so it is evaluated once).

use sqlx::postgres::PgRow;
use sqlx::{PgPool, Row};

use super::{ClaimRequest, Claimed, Engine, LeaseRef, Outgoing, StoredDeadLetter, held};
use crate::{BoxFuture, BrokerError};

/// The queue on a PostgreSQL pool.
#[derive(Debug)]
pub(super) struct PgEngine {
    pool: PgPool,
}

impl PgEngine {
    pub(super) fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

const LOCK_TOPIC_SHARED: &str = "SELECT pg_advisory_xact_lock_shared($1)";
const LOCK_TOPIC: &str = "SELECT pg_advisory_xact_lock($1)";
/// The keys arrive sorted; `unnest` keeps their order.
const LOCK_KEYS: &str = "SELECT pg_advisory_xact_lock(k) FROM unnest($1::BIGINT[]) AS k";
const LOCK_KEY: &str = "SELECT pg_advisory_xact_lock($1)";

/// One row per message and group of the topic, in batch order. A keyed row is ready when it is
/// the first of its key in the batch and its key has no head (so no row) in the group yet.
const PUBLISH: &str = "
INSERT INTO herald_queue_messages
    (topic, grp, partition_key, message_id, headers, payload, published_at, ready, visible_at)
SELECT $1, g.grp, m.k, m.id, m.h, m.p, t.ms,
       m.k IS NULL OR (m.first_of_key AND NOT EXISTS (
           SELECT 1 FROM herald_queue_messages x
           WHERE x.topic = $1 AND x.grp = g.grp AND x.partition_key = m.k AND x.ready)),
       t.ms
FROM (
    SELECT u.id, u.k, u.h, u.p, u.ord,
           row_number() OVER (PARTITION BY u.k ORDER BY u.ord) = 1 AS first_of_key
    FROM unnest($2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BYTEA[])
         WITH ORDINALITY AS u(id, k, h, p, ord)
) AS m
CROSS JOIN herald_queue_groups AS g
CROSS JOIN (SELECT herald_queue_now_ms() AS ms) AS t
WHERE g.topic = $1
ORDER BY m.ord, g.grp";

const PARK: &str = "
INSERT INTO herald_queue_parked (topic, partition_key, message_id, headers, payload, published_at)
SELECT $1, u.k, u.id, u.h, u.p, t.ms
FROM unnest($2::TEXT[], $3::TEXT[], $4::TEXT[], $5::BYTEA[]) WITH ORDINALITY AS u(id, k, h, p, ord)
CROSS JOIN (SELECT herald_queue_now_ms() AS ms) AS t
ORDER BY u.ord";

const GROUP_EXISTS: &str =
    "SELECT EXISTS (SELECT 1 FROM herald_queue_groups WHERE topic = $1 AND grp = $2)";
const TOPIC_HAS_GROUPS: &str = "SELECT EXISTS (SELECT 1 FROM herald_queue_groups WHERE topic = $1)";
const CREATE_GROUP: &str = "
INSERT INTO herald_queue_groups (topic, grp, created_at)
VALUES ($1, $2, herald_queue_now_ms())
ON CONFLICT DO NOTHING";

/// Moves the topic's parked messages to its first group, in order; the first of each key is
/// its head.
const ADOPT: &str = "
WITH moved AS (DELETE FROM herald_queue_parked WHERE topic = $1 RETURNING *)
INSERT INTO herald_queue_messages
    (topic, grp, partition_key, message_id, headers, payload, published_at, ready, visible_at)
SELECT $1, $2, m.partition_key, m.message_id, m.headers, m.payload, m.published_at,
       m.partition_key IS NULL OR m.seq = min(m.seq) OVER (PARTITION BY m.partition_key),
       m.published_at
FROM moved AS m
ORDER BY m.seq";

const CLAIM: &str = "
WITH picked AS (
    SELECT seq, receive_count FROM herald_queue_messages
    WHERE topic = $1 AND grp = $2 AND ready AND visible_at <= (SELECT herald_queue_now_ms())
    ORDER BY visible_at, seq
    LIMIT $3
    FOR UPDATE SKIP LOCKED
)
UPDATE herald_queue_messages AS m
SET lease = $4,
    receive_count = CASE WHEN p.receive_count < $5 THEN p.receive_count + 1
                         ELSE p.receive_count END,
    visible_at = (SELECT herald_queue_now_ms()) + $6
FROM picked AS p
WHERE m.seq = p.seq
RETURNING m.seq, m.partition_key, m.message_id, m.headers, m.payload, m.receive_count,
          p.receive_count >= $5 AS expired, m.last_error";

const DELETE_LEASED: &str = "DELETE FROM herald_queue_messages WHERE seq = $1 AND lease = $2";

/// Marks the key's oldest row ready (a no-op when it already is, or there is none).
const RELEASE_NEXT: &str = "
UPDATE herald_queue_messages SET ready = TRUE
WHERE seq = (
    SELECT seq FROM herald_queue_messages
    WHERE topic = $1 AND grp = $2 AND partition_key = $3
    ORDER BY seq
    LIMIT 1
) AND NOT ready";

const RETRY: &str = "
UPDATE herald_queue_messages
SET visible_at = (SELECT herald_queue_now_ms()) + $3, last_error = $4, lease = NULL
WHERE seq = $1 AND lease = $2";

const EXTEND: &str = "
UPDATE herald_queue_messages
SET visible_at = (SELECT herald_queue_now_ms()) + $3
WHERE seq = $1 AND lease = $2";

const DEAD_LETTER: &str = "
WITH gone AS (
    DELETE FROM herald_queue_messages WHERE seq = $1 AND lease = $2
    RETURNING topic, grp, partition_key, message_id, headers, payload, published_at,
              receive_count
)
INSERT INTO herald_queue_dead_letters
    (topic, grp, partition_key, message_id, headers, payload, published_at, receive_count,
     last_error, dead_at)
SELECT topic, grp, partition_key, message_id, headers, payload, published_at, receive_count,
       $3, herald_queue_now_ms()
FROM gone";

const DEAD_LETTERS: &str = "
SELECT id, topic, grp, partition_key, message_id, headers, payload, receive_count, last_error,
       dead_at
FROM herald_queue_dead_letters
WHERE topic = $1 AND grp = $2
ORDER BY id
LIMIT $3";

const DEAD_LETTER_KEY: &str =
    "SELECT topic, partition_key FROM herald_queue_dead_letters WHERE id = $1";

/// Back to the queue as a new message: after every row of its key, and its head if it has
/// none.
const REPLAY: &str = "
WITH gone AS (DELETE FROM herald_queue_dead_letters WHERE id = $1 RETURNING *),
     t AS (SELECT herald_queue_now_ms() AS ms)
INSERT INTO herald_queue_messages
    (topic, grp, partition_key, message_id, headers, payload, published_at, ready, visible_at)
SELECT g.topic, g.grp, g.partition_key, g.message_id, g.headers, g.payload, t.ms,
       g.partition_key IS NULL OR NOT EXISTS (
           SELECT 1 FROM herald_queue_messages x
           WHERE x.topic = g.topic AND x.grp = g.grp AND x.partition_key = g.partition_key
             AND x.ready),
       t.ms
FROM gone AS g CROSS JOIN t";

impl Engine for PgEngine {
    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: &'a [Outgoing<'a>],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let ids: Vec<&str> = messages.iter().map(|m| m.id).collect();
            let keys: Vec<Option<&str>> = messages.iter().map(|m| m.key).collect();
            let headers: Vec<&str> = messages.iter().map(|m| m.headers.as_str()).collect();
            let payloads: Vec<&[u8]> = messages.iter().map(|m| m.payload).collect();
            let mut locks: Vec<i64> = messages
                .iter()
                .filter_map(|m| m.key)
                .map(|key| key_lock(topic, key))
                .collect();
            locks.sort_unstable();
            locks.dedup();

            let mut tx = self.pool.begin().await?;
            sqlx::query(LOCK_TOPIC_SHARED)
                .bind(topic_lock(topic))
                .execute(&mut *tx)
                .await?;
            if !locks.is_empty() {
                sqlx::query(LOCK_KEYS)
                    .bind(&locks)
                    .execute(&mut *tx)
                    .await?;
            }
            let copied = sqlx::query(PUBLISH)
                .bind(topic)
                .bind(&ids)
                .bind(&keys)
                .bind(&headers)
                .bind(&payloads)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if copied == 0 {
                // No group yet (none can appear while we hold the topic lock): park them.
                sqlx::query(PARK)
                    .bind(topic)
                    .bind(&ids)
                    .bind(&keys)
                    .bind(&headers)
                    .bind(&payloads)
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
            let mut tx = self.pool.begin().await?;
            sqlx::query(LOCK_TOPIC)
                .bind(topic_lock(topic))
                .execute(&mut *tx)
                .await?;
            let had_groups: bool = sqlx::query_scalar(TOPIC_HAS_GROUPS)
                .bind(topic)
                .fetch_one(&mut *tx)
                .await?;
            let created = sqlx::query(CREATE_GROUP)
                .bind(topic)
                .bind(group)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if created && !had_groups {
                let adopted = sqlx::query(ADOPT)
                    .bind(topic)
                    .bind(group)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
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
            let rows = sqlx::query(CLAIM)
                .bind(request.topic)
                .bind(request.group)
                .bind(request.max)
                .bind(request.token)
                .bind(request.max_deliveries)
                .bind(request.visibility_ms)
                .fetch_all(&self.pool)
                .await?;
            let mut claimed = rows
                .iter()
                .map(|row| -> Result<Claimed, sqlx::Error> {
                    Ok(Claimed {
                        seq: row.try_get(0)?,
                        key: row.try_get(1)?,
                        message_id: row.try_get(2)?,
                        headers: row.try_get(3)?,
                        payload: row.try_get(4)?,
                        receive_count: row.try_get(5)?,
                        expired: row.try_get(6)?,
                        last_error: row.try_get(7)?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            claimed.sort_by_key(|c| c.seq);
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
            let mut tx = self.pool.begin().await?;
            sqlx::query(LOCK_KEY)
                .bind(key_lock(&lease.topic, key))
                .execute(&mut *tx)
                .await?;
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
                .bind(delay_ms)
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
                .bind(by_ms)
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
            let mut tx = self.pool.begin().await?;
            if let Some(key) = &lease.key {
                sqlx::query(LOCK_KEY)
                    .bind(key_lock(&lease.topic, key))
                    .execute(&mut *tx)
                    .await?;
            }
            let moved = sqlx::query(DEAD_LETTER)
                .bind(lease.seq)
                .bind(lease.token)
                .bind(error)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            held(moved)?;
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
            let mut tx = self.pool.begin().await?;
            let Some((topic, key)): Option<(String, Option<String>)> =
                sqlx::query_as(DEAD_LETTER_KEY)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
            else {
                return Ok(false);
            };
            if let Some(key) = &key {
                sqlx::query(LOCK_KEY)
                    .bind(key_lock(&topic, key))
                    .execute(&mut *tx)
                    .await?;
            }
            let moved = sqlx::query(REPLAY)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(moved == 1)
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }
}

/// Marks the next row of `key` in the lease's group ready; the caller holds the key lock.
async fn release_next(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
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

fn dead_letter_row(row: &PgRow) -> Result<StoredDeadLetter, sqlx::Error> {
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

/// The advisory lock of a topic.
fn topic_lock(topic: &str) -> i64 {
    fnv1a(&[b"herald queue topic", topic.as_bytes()])
}

/// The advisory lock of a key of a topic (for every group).
fn key_lock(topic: &str, key: &str) -> i64 {
    fnv1a(&[b"herald queue key", topic.as_bytes(), key.as_bytes()])
}

/// FNV-1a over the parts, each followed by a 0xff byte (which UTF-8 never contains), so
/// `("ab", "c")` and `("a", "bc")` differ. Collisions only make unrelated keys wait for each
/// other.
fn fnv1a(parts: &[&[u8]]) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter().chain(&[0xff]) {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    i64::from_ne_bytes(hash.to_ne_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_separate_parts_and_kinds() {
        assert_ne!(key_lock("ab", "c"), key_lock("a", "bc"));
        assert_ne!(topic_lock("t"), key_lock("t", ""));
        assert_eq!(key_lock("t", "k"), key_lock("t", "k"));
    }
}
