//! A consumer group's state in Herald's database: partition leases with fencing tokens,
//! committed positions, receive counts, members and dead letters. Every statement is written
//! once for both engines ([`herald_store::on_store!`]).

use std::collections::HashMap;

use bytes::Bytes;
use herald_store::Store;
use herald_store::on_store;
use herald_store::sql::now_ms;

use super::{DeadLetter, Log, Position};
use crate::{BrokerError, Message};

/// A partition just claimed.
#[derive(Debug)]
pub(super) struct Claimed {
    pub(super) token: i64,
    pub(super) next_position: Position,
    pub(super) counts: HashMap<Position, u32>,
    /// Records before this position may have been handed out once.
    pub(super) counted_until: Position,
}

/// What an owner writes back: where the group has got to and the counts it must not forget.
#[derive(Debug, Clone)]
pub(super) struct Progress {
    pub(super) part: u32,
    pub(super) token: i64,
    pub(super) next_position: Position,
    pub(super) counts: String,
    /// Records before this position count as handed out once unless `counts` says otherwise.
    pub(super) counted_until: Position,
}

fn to_db(position: Position) -> Result<i64, BrokerError> {
    i64::try_from(position)
        .map_err(|_| BrokerError::Invalid(format!("position {position} is too large to store")))
}

fn from_db(position: i64) -> Position {
    Position::try_from(position).unwrap_or(0)
}

fn part_db(part: u32) -> i32 {
    i32::try_from(part).unwrap_or(i32::MAX)
}

/// Receive counts as stored: a JSON object from position to count.
pub(super) fn encode_counts(counts: impl Iterator<Item = (Position, u32)>) -> String {
    let map: serde_json::Map<String, serde_json::Value> = counts
        .map(|(position, count)| (position.to_string(), serde_json::Value::from(count)))
        .collect();
    serde_json::Value::Object(map).to_string()
}

fn decode_counts(text: &str) -> HashMap<Position, u32> {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(text) else {
        tracing::warn!(
            "a partition's stored receive counts are not a JSON object; starting from none"
        );
        return HashMap::new();
    };
    map.into_iter()
        .filter_map(|(position, count)| {
            Some((position.parse().ok()?, u32::try_from(count.as_u64()?).ok()?))
        })
        .collect()
}

/// Creates the group's partitions unless it exists. The first group of a topic starts at the
/// beginning of each partition, so it gets what was published before any group; a later one
/// starts at the end, so it gets what is published from now on.
pub(super) async fn create(
    store: &Store,
    log: &dyn Log,
    topic: &str,
    group: &str,
    partitions: u32,
) -> Result<(), BrokerError> {
    let exists = |text: &'static str, with_group: bool| async move {
        on_store!(store, pool, sql => {
            let query = sqlx::query_scalar::<_, i32>(sql(text)).bind(topic);
            let query = if with_group { query.bind(group) } else { query };
            Ok::<bool, sqlx::Error>(query.fetch_optional(pool).await?.is_some())
        })
    };
    if exists(
        "SELECT 1 FROM herald_log_partitions WHERE topic = $1 AND grp = $2 LIMIT 1",
        true,
    )
    .await?
    {
        return Ok(());
    }
    let first = !exists(
        "SELECT 1 FROM herald_log_partitions WHERE topic = $1 LIMIT 1",
        false,
    )
    .await?;
    for part in 0..partitions {
        let start = if first {
            0
        } else {
            log.end(topic, part).await?
        };
        let start = to_db(start)?;
        let text = "INSERT INTO herald_log_partitions (topic, grp, part, next_position) \
                    VALUES ($1, $2, $3, $4) ON CONFLICT (topic, grp, part) DO NOTHING";
        on_store!(store, pool, sql => {
            sqlx::query(sql(text)).bind(topic).bind(group).bind(part_db(part)).bind(start)
                .execute(pool).await?;
        });
    }
    Ok(())
}

/// Records that `member` is alive until `alive_until` and returns the group's live members,
/// sorted.
pub(super) async fn heartbeat(
    store: &Store,
    topic: &str,
    group: &str,
    member: &str,
    alive_until: i64,
) -> Result<Vec<String>, BrokerError> {
    let now = now_ms();
    let upsert = "INSERT INTO herald_log_members (topic, grp, member, alive_until) \
                  VALUES ($1, $2, $3, $4) ON CONFLICT (topic, grp, member) \
                  DO UPDATE SET alive_until = excluded.alive_until";
    let live = "SELECT member FROM herald_log_members \
                WHERE topic = $1 AND grp = $2 AND alive_until > $3 ORDER BY member";
    let prune = "DELETE FROM herald_log_members WHERE topic = $1 AND grp = $2 AND alive_until < $3";
    let members = on_store!(store, pool, sql => {
        sqlx::query(sql(upsert)).bind(topic).bind(group).bind(member).bind(alive_until)
            .execute(pool).await?;
        // Members dead for a minute are forgotten; until then they are simply not live.
        sqlx::query(sql(prune)).bind(topic).bind(group).bind(now - 60_000)
            .execute(pool).await?;
        sqlx::query_scalar::<_, String>(sql(live)).bind(topic).bind(group).bind(now)
            .fetch_all(pool).await?
    });
    Ok(members)
}

/// Removes `member` from the group at once (it is leaving).
pub(super) async fn leave(
    store: &Store,
    topic: &str,
    group: &str,
    member: &str,
) -> Result<(), BrokerError> {
    let text = "DELETE FROM herald_log_members WHERE topic = $1 AND grp = $2 AND member = $3";
    on_store!(store, pool, sql => {
        sqlx::query(sql(text)).bind(topic).bind(group).bind(member).execute(pool).await?;
    });
    Ok(())
}

/// Takes partition `part` for `member` when it is free, already its own, or its lease ran out.
/// Raises the fencing token, so the previous owner's writes are refused from now on.
pub(super) async fn claim(
    store: &Store,
    topic: &str,
    group: &str,
    part: u32,
    member: &str,
    lease_until: i64,
) -> Result<Option<Claimed>, BrokerError> {
    let text = "UPDATE herald_log_partitions \
                SET owner = $4, token = token + 1, lease_until = $5 \
                WHERE topic = $1 AND grp = $2 AND part = $3 \
                  AND (owner IS NULL OR owner = $4 OR lease_until < $6) \
                RETURNING token, next_position, counts, counted_until";
    let row: Option<(i64, i64, String, i64)> = on_store!(store, pool, sql => {
        sqlx::query_as(sql(text)).bind(topic).bind(group).bind(part_db(part)).bind(member)
            .bind(lease_until).bind(now_ms()).fetch_optional(pool).await?
    });
    Ok(
        row.map(|(token, next_position, counts, counted_until)| Claimed {
            token,
            next_position: from_db(next_position),
            counts: decode_counts(&counts),
            counted_until: from_db(counted_until),
        }),
    )
}

/// Writes an owner's progress and extends its lease to `lease_until`, or releases the
/// partition when `lease_until` is `None`. Fenced: `false` when the partition is no longer
/// this owner's (its lease ran out and someone claimed it).
pub(super) async fn save(
    store: &Store,
    topic: &str,
    group: &str,
    member: &str,
    progress: &Progress,
    lease_until: Option<i64>,
) -> Result<bool, BrokerError> {
    let text = "UPDATE herald_log_partitions \
                SET next_position = $4, counts = $5, lease_until = $6, owner = $7, \
                    counted_until = $10 \
                WHERE topic = $1 AND grp = $2 AND part = $3 AND owner = $8 AND token = $9";
    let next_position = to_db(progress.next_position)?;
    let counted_until = to_db(progress.counted_until)?;
    let owner = lease_until.map(|_| member);
    let affected = on_store!(store, pool, sql => {
        sqlx::query(sql(text)).bind(topic).bind(group).bind(part_db(progress.part))
            .bind(next_position).bind(&progress.counts).bind(lease_until.unwrap_or(0))
            .bind(owner).bind(member).bind(progress.token).bind(counted_until)
            .execute(pool).await?.rows_affected()
    });
    Ok(affected == 1)
}

/// Forgets every group of `topic`: their partitions (positions, leases, receive counts),
/// members and dead letters.
pub(super) async fn delete_topic(store: &Store, topic: &str) -> Result<(), BrokerError> {
    let statements = [
        "DELETE FROM herald_log_partitions WHERE topic = $1",
        "DELETE FROM herald_log_members WHERE topic = $1",
        "DELETE FROM herald_log_dead_letters WHERE topic = $1",
    ];
    on_store!(store, pool, sql => {
        let mut tx = pool.begin().await?;
        for text in statements {
            sqlx::query(sql(text)).bind(topic).execute(&mut *tx).await?;
        }
        tx.commit().await?;
    });
    Ok(())
}

/// Keeps a message the group gave up on.
pub(super) async fn dead_letter(
    store: &Store,
    topic: &str,
    group: &str,
    message: &Message,
    receive_count: u32,
    last_error: &str,
) -> Result<(), BrokerError> {
    let headers = serde_json::to_string(&message.headers)
        .map_err(|error| BrokerError::Invalid(format!("the headers cannot be stored: {error}")))?;
    let text = "INSERT INTO herald_log_dead_letters \
                (topic, grp, message_id, partition_key, headers, payload, receive_count, last_error, died_at) \
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";
    let count = i32::try_from(receive_count).unwrap_or(i32::MAX);
    on_store!(store, pool, sql => {
        sqlx::query(sql(text)).bind(topic).bind(group).bind(&message.id).bind(&message.key)
            .bind(&headers).bind(message.payload.as_ref()).bind(count).bind(last_error)
            .bind(now_ms()).execute(pool).await?;
    });
    Ok(())
}

type DeadRow = (String, Option<String>, String, Vec<u8>, i32, String, i64);

/// The group's dead letters, oldest first.
pub(super) async fn dead_letters(
    store: &Store,
    topic: &str,
    group: &str,
    limit: u32,
) -> Result<Vec<DeadLetter>, BrokerError> {
    let text = "SELECT message_id, partition_key, headers, payload, receive_count, last_error, died_at \
                FROM herald_log_dead_letters WHERE topic = $1 AND grp = $2 ORDER BY id LIMIT $3";
    let rows: Vec<DeadRow> = on_store!(store, pool, sql => {
        sqlx::query_as(sql(text)).bind(topic).bind(group).bind(i64::from(limit))
            .fetch_all(pool).await?
    });
    Ok(rows
        .into_iter()
        .map(
            |(id, key, headers, payload, count, last_error, died_at)| DeadLetter {
                message: Message {
                    id,
                    key,
                    headers: serde_json::from_str(&headers).unwrap_or_default(),
                    payload: Bytes::from(payload),
                },
                receive_count: u32::try_from(count).unwrap_or(0),
                last_error,
                died_at_ms: died_at,
            },
        )
        .collect())
}
