//! Dispatch jobs: one delivery of one event to one subscription, and every attempt at it.
//!
//! - The dispatcher [`create`]s them in its consumer transaction, with the event's body.
//! - The router [`claim`]s due jobs of a subscription (a short lease under a token made for
//!   the claim, so a crashed router's jobs are claimed again when it expires), [`renew`]s the
//!   leases of every job it holds in one statement (only rows still under their token), and
//!   [`finish`]es each attempt: the attempt is recorded and the job becomes delivered,
//!   pending again (with its next attempt time) or dead. Only the holder of the lease can
//!   renew or finish a job. How the router keeps two of its instances from delivering one
//!   job at once is in [`lease`](crate::lease).
//! - FIFO: a job with a `group_key` is only claimable when no earlier job of its group (same
//!   subscription and key) is pending or being delivered, so a group's events go one at a
//!   time, in order, and a retrying group holds back only itself.
//! - The API [`list`]s jobs with their attempts, [`retry`]s one, and [`replay`]s a
//!   subscription's events since a time.
//! - [`purge`] deletes finished jobs (delivered or dead) and the events no job needs any
//!   more once they are older than the retention, in bounded batches.

use std::collections::HashMap;

use herald_core::id::{DispatchJobId, SubscriptionId};
use herald_core::problem::{ApiError, FieldError};
use herald_inbox::Tx;
use herald_store::Store;
use serde::Serialize;
use uuid::Uuid;

use crate::sql::{now_ms, on_store, on_tx, parse_rfc3339, rfc3339};
use crate::subscription::{self, Subscription};

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = DispatchJobStatus)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Waiting for its next attempt.
    Pending,
    /// An attempt is under way.
    Delivering,
    /// The endpoint took it.
    Delivered,
    /// Given up on: dead-lettered after `max_attempts`, or the endpoint answered 410.
    Dead,
}

impl Status {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivering => "delivering",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }

    /// Parses a stored or requested name.
    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Delivering, Self::Delivered, Self::Dead]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// The event a job delivers, as the dispatcher stores it.
#[derive(Debug, Clone, Copy)]
pub struct EventRecord<'a> {
    /// The event id (`webhook-id`).
    pub id: &'a str,
    /// Its type.
    pub event_type: &'a str,
    /// Its partition key, if any.
    pub partition_key: Option<&'a str>,
    /// The CloudEvents structured JSON delivered as the body.
    pub body: &'a str,
}

/// Stores `event` and a pending job for each of `subscriptions`, in the consumer's
/// transaction. FIFO subscriptions group the job by the event's partition key.
pub async fn create(
    tx: &mut Tx<'_>,
    event: EventRecord<'_>,
    subscriptions: &[(SubscriptionId, bool)],
) -> Result<(), sqlx::Error> {
    let now = now_ms();
    on_tx!(tx, conn, sql => {
        sqlx::query(sql(
            "INSERT INTO herald_dispatch_events (event_id, event_type, partition_key, body, received_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING",
        ))
        .bind(event.id)
        .bind(event.event_type)
        .bind(event.partition_key)
        .bind(event.body)
        .bind(now)
        .execute(&mut **conn)
        .await?;
        for (subscription, fifo) in subscriptions {
            let group = if *fifo { event.partition_key } else { None };
            sqlx::query(sql(
                "INSERT INTO herald_dispatch_jobs (id, subscription_id, event_id, group_key, status, \
                 next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, 'pending', $5, $5, $5)",
            ))
            .bind(DispatchJobId::new().as_uuid())
            .bind(subscription.as_uuid())
            .bind(event.id)
            .bind(group)
            .bind(now)
            .execute(&mut **conn)
            .await?;
        }
    });
    Ok(())
}

/// A job the router holds.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The job.
    pub id: DispatchJobId,
    /// Its event.
    pub event_id: String,
    /// Attempts made so far (the next is `attempts + 1`).
    pub attempts: u32,
    /// Attempts made before its last manual retry (they do not count against the limit).
    pub budget_from: u32,
    /// The lease: only its holder can finish the job.
    pub lease: Uuid,
    /// The body to deliver, read with the claim; `None` if the event is no longer stored.
    pub body: Option<String>,
}

/// Claims up to `max` due jobs of `subscription` for `lease_ms`, each with its event's body
/// (read in the same statement, to save the router a query per delivery).
pub async fn claim(
    store: &Store,
    subscription: SubscriptionId,
    max: u32,
    lease_ms: i64,
) -> Result<Vec<Claimed>, sqlx::Error> {
    if max == 0 {
        return Ok(Vec::new());
    }
    let now = now_ms();
    let lease = Uuid::now_v7();
    // `status IN (…)` repeats the partial index's condition, so both engines walk only the
    // subscription's unfinished jobs, in `next_attempt_at` order, never the finished ones.
    let statement = |lock: &str| {
        format!(
            "UPDATE herald_dispatch_jobs SET status = 'delivering', lease = $3, locked_until = $4, \
             updated_at = $1 WHERE seq IN (\
               SELECT j.seq FROM herald_dispatch_jobs j WHERE j.subscription_id = $2 \
               AND j.status IN ('pending', 'delivering') \
               AND ((j.status = 'pending' AND j.next_attempt_at <= $1) \
                 OR (j.status = 'delivering' AND j.locked_until <= $1)) \
               AND (j.group_key IS NULL OR NOT EXISTS (\
                 SELECT 1 FROM herald_dispatch_jobs e WHERE e.subscription_id = j.subscription_id \
                 AND e.group_key = j.group_key AND e.seq < j.seq \
                 AND e.status IN ('pending', 'delivering'))) \
               ORDER BY j.next_attempt_at, j.seq LIMIT $5{lock}) \
             RETURNING id, event_id, attempts, budget_from, \
             (SELECT b.body FROM herald_dispatch_events b \
               WHERE b.event_id = herald_dispatch_jobs.event_id)"
        )
    };
    let rows: Vec<(Uuid, String, i32, i32, Option<String>)> = match store {
        Store::Postgres(pool) => {
            sqlx::query_as(sqlx::AssertSqlSafe(statement(" FOR UPDATE SKIP LOCKED")))
                .bind(now)
                .bind(subscription.as_uuid())
                .bind(lease)
                .bind(now.saturating_add(lease_ms))
                .bind(i64::from(max))
                .fetch_all(pool)
                .await?
        }
        Store::Sqlite(pool) => {
            sqlx::query_as(sqlx::AssertSqlSafe(crate::sql::for_sqlite(&statement(""))))
                .bind(now)
                .bind(subscription.as_uuid())
                .bind(lease)
                .bind(now.saturating_add(lease_ms))
                .bind(i64::from(max))
                .fetch_all(pool)
                .await?
        }
    };
    Ok(rows
        .into_iter()
        .map(|(id, event_id, attempts, budget_from, body)| Claimed {
            id: DispatchJobId::from_uuid(id),
            event_id,
            attempts: u32::try_from(attempts).unwrap_or(0),
            budget_from: u32::try_from(budget_from).unwrap_or(0),
            lease,
            body,
        })
        .collect())
}

/// Gives claimed jobs back without an attempt: they are due again at once, for any router.
/// A job whose lease was lost meanwhile is left alone.
pub async fn release(store: &Store, jobs: &[Claimed]) -> Result<(), sqlx::Error> {
    if jobs.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let text = "UPDATE herald_dispatch_jobs SET status = 'pending', lease = NULL, \
                locked_until = NULL, updated_at = $3 \
                WHERE id = $1 AND lease = $2 AND status = 'delivering'";
    on_store!(store, pool, sql => {
        for job in jobs {
            sqlx::query(sql(text))
                .bind(job.id.as_uuid())
                .bind(job.lease)
                .bind(now)
                .execute(pool)
                .await?;
        }
    });
    Ok(())
}

/// SQLite binds at most 32766 parameters per statement: a renewal of more jobs than this
/// (two parameters each) takes one statement per batch of this many. PostgreSQL takes any number in one statement (arrays).
const SQLITE_RENEW_BATCH: usize = 8000;

/// Extends to `until` (epoch ms) the lease of every job of `held` (id and lease token) that
/// is still being delivered under that token, in one statement; returns those it extended. A
/// job missing from the answer is no longer held under its token: another router claimed it
/// after the lease ran out, or it was deleted. A lease that ran out is extended all the same
/// when nobody claimed the job meanwhile: the token proves it is still the holder's.
pub async fn renew(
    store: &Store,
    held: &[(DispatchJobId, Uuid)],
    until: i64,
) -> Result<Vec<(DispatchJobId, Uuid)>, sqlx::Error> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<(Uuid, Uuid)> = match store {
        Store::Postgres(pool) => {
            let ids: Vec<Uuid> = held.iter().map(|(id, _)| id.as_uuid()).collect();
            let leases: Vec<Uuid> = held.iter().map(|(_, lease)| *lease).collect();
            // The pairs, joined on the primary key: each row is found by its index.
            sqlx::query_as(
                "UPDATE herald_dispatch_jobs j SET locked_until = $1 \
                 FROM unnest($2::uuid[], $3::uuid[]) AS h (id, lease) \
                 WHERE j.id = h.id AND j.lease = h.lease AND j.status = 'delivering' \
                 RETURNING j.id, j.lease",
            )
            .bind(until)
            .bind(&ids)
            .bind(&leases)
            .fetch_all(pool)
            .await?
        }
        Store::Sqlite(pool) => {
            let mut rows = Vec::with_capacity(held.len());
            for batch in held.chunks(SQLITE_RENEW_BATCH) {
                // Only numbered placeholders are formatted into the statement; ids and tokens
                // are bound. `id IN` lets SQLite find each row by its index; the row values
                // then match the pairs exactly.
                let ids = (0..batch.len())
                    .map(|n| format!("?{}", 2 + 2 * n))
                    .collect::<Vec<_>>()
                    .join(", ");
                let pairs = (0..batch.len())
                    .map(|n| format!("(?{}, ?{})", 2 + 2 * n, 3 + 2 * n))
                    .collect::<Vec<_>>()
                    .join(", ");
                let text = format!(
                    "UPDATE herald_dispatch_jobs SET locked_until = ?1 \
                     WHERE id IN ({ids}) AND status = 'delivering' \
                     AND (id, lease) IN (VALUES {pairs}) RETURNING id, lease"
                );
                let mut query =
                    sqlx::query_as::<_, (Uuid, Uuid)>(sqlx::AssertSqlSafe(text)).bind(until);
                for (id, lease) in batch {
                    query = query.bind(id.as_uuid()).bind(*lease);
                }
                rows.extend(query.fetch_all(pool).await?);
            }
            rows
        }
    };
    Ok(rows
        .into_iter()
        .map(|(id, lease)| (DispatchJobId::from_uuid(id), lease))
        .collect())
}

/// One attempt, as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// When it started, epoch ms.
    pub started_at: i64,
    /// The endpoint's status code, if it answered.
    pub status_code: Option<u16>,
    /// How long it took.
    pub latency_ms: i64,
    /// `delivered`, `retry`, `failed` or `gone`.
    pub outcome: &'static str,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

/// What becomes of the job after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Delivered.
    Delivered,
    /// Try again at this epoch ms.
    RetryAt(i64),
    /// Give up.
    Dead,
}

/// Records `attempt` and moves the job on; `false` if the lease was lost (another router
/// claimed the job after the lease expired), in which case nothing is recorded.
pub async fn finish(
    store: &Store,
    job: &Claimed,
    attempt: &Attempt,
    next: Next,
) -> Result<bool, sqlx::Error> {
    let (status, next_at) = match next {
        Next::Delivered => (Status::Delivered, attempt.started_at),
        Next::RetryAt(at) => (Status::Pending, at),
        Next::Dead => (Status::Dead, attempt.started_at),
    };
    let number = i32::try_from(job.attempts.saturating_add(1)).unwrap_or(i32::MAX);
    let now = now_ms();
    let update = "UPDATE herald_dispatch_jobs SET status = $3, attempts = $4, next_attempt_at = $5, \
                  lease = NULL, locked_until = NULL, last_error = $6, updated_at = $7 \
                  WHERE id = $1 AND lease = $2 AND status = 'delivering'";
    // `update`'s parameters, on either engine's query.
    macro_rules! bind_update {
        ($query:expr) => {
            $query
                .bind(job.id.as_uuid())
                .bind(job.lease)
                .bind(status.as_str())
                .bind(number)
                .bind(next_at)
                .bind(attempt.error.as_deref())
                .bind(now)
        };
    }
    let done = match store {
        // One statement, so one round trip and an implicit transaction: the attempt is
        // recorded only if the job moved, i.e. its lease was still ours.
        Store::Postgres(pool) => {
            let statement = format!(
                "WITH moved AS ({update} RETURNING id) \
                 INSERT INTO herald_dispatch_attempts (job_id, number, started_at, status_code, \
                 latency_ms, outcome, error) SELECT id, $4, $8, $9, $10, $11, $6 FROM moved"
            );
            bind_update!(sqlx::query(sqlx::AssertSqlSafe(statement)))
                .bind(attempt.started_at)
                .bind(attempt.status_code.map(i32::from))
                .bind(attempt.latency_ms)
                .bind(attempt.outcome)
                .execute(pool)
                .await?
                .rows_affected()
                == 1
        }
        // SQLite has no data-modifying CTEs; it is in-process, so the extra statements cost
        // no round trips.
        Store::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let moved = bind_update!(sqlx::query(sqlx::AssertSqlSafe(crate::sql::for_sqlite(
                update
            ))))
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if moved {
                sqlx::query(
                    "INSERT INTO herald_dispatch_attempts (job_id, number, started_at, \
                     status_code, latency_ms, outcome, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .bind(job.id.as_uuid())
                .bind(number)
                .bind(attempt.started_at)
                .bind(attempt.status_code.map(i32::from))
                .bind(attempt.latency_ms)
                .bind(attempt.outcome)
                .bind(attempt.error.as_deref())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            moved
        }
    };
    Ok(done)
}

/// An attempt as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = DispatchAttempt)]
pub struct AttemptOut {
    /// 1 for the first.
    pub number: u32,
    /// RFC 3339.
    pub started_at: String,
    /// The endpoint's status code, or `null` when it did not answer.
    pub status_code: Option<u16>,
    /// Milliseconds until the answer (or the failure).
    pub latency_ms: i64,
    /// `delivered`, `retry`, `failed` or `gone`.
    pub outcome: String,
    /// What went wrong.
    pub error: Option<String>,
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = DispatchJob)]
pub struct JobOut {
    /// The job.
    pub id: DispatchJobId,
    /// Its subscription.
    pub subscription_id: SubscriptionId,
    /// Its event.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// The FIFO group (the partition key), for FIFO subscriptions.
    pub group_key: Option<String>,
    /// `pending`, `delivering`, `delivered` or `dead`.
    pub status: Status,
    /// When the next attempt is due (pending jobs), RFC 3339.
    pub next_attempt_at: Option<String>,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
    /// Every attempt, oldest first.
    pub attempts: Vec<AttemptOut>,
}

/// What `GET /v1/dispatch-jobs` filters by.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only this subscription's jobs.
    pub subscription_id: Option<SubscriptionId>,
    /// Only jobs in this state.
    pub status: Option<Status>,
    /// Only this event's jobs.
    pub event_id: Option<String>,
    /// Only jobs created before this cursor (from a previous page's `next_cursor`).
    pub before: Option<i64>,
    /// Page size.
    pub limit: u32,
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = DispatchJobPage)]
pub struct Page {
    /// The jobs.
    pub data: Vec<JobOut>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

type JobRow = (
    i64,
    Uuid,
    Uuid,
    String,
    String,
    Option<String>,
    String,
    i64,
    Option<String>,
    i64,
    i64,
);

const JOB_COLUMNS: &str = "j.seq, j.id, j.subscription_id, j.event_id, e.event_type, j.group_key, \
                           j.status, j.next_attempt_at, j.last_error, j.created_at, j.updated_at";

/// Lists jobs by `filter`, newest first, each with its attempts.
pub async fn list(store: &Store, filter: &Filter) -> Result<Page, ApiError> {
    // Conditions are fixed texts; every value is bound, in the order of `binds`.
    let mut conditions = vec!["j.seq < $1".to_owned()];
    let mut next = 2;
    let mut add = |column: &str| {
        conditions.push(format!("{column} = ${next}"));
        next += 1;
    };
    if filter.subscription_id.is_some() {
        add("j.subscription_id");
    }
    if filter.status.is_some() {
        add("j.status");
    }
    if filter.event_id.is_some() {
        add("j.event_id");
    }
    let text = format!(
        "SELECT {JOB_COLUMNS} FROM herald_dispatch_jobs j \
         JOIN herald_dispatch_events e ON e.event_id = j.event_id \
         WHERE {} ORDER BY j.seq DESC LIMIT ${next}",
        conditions.join(" AND ")
    );
    let limit = i64::from(filter.limit.max(1));
    let rows: Vec<JobRow> = on_store!(store, pool, sql => {
        let mut query = sqlx::query_as(sql(&text)).bind(filter.before.unwrap_or(i64::MAX));
        if let Some(id) = filter.subscription_id {
            query = query.bind(id.as_uuid());
        }
        if let Some(status) = filter.status {
            query = query.bind(status.as_str());
        }
        if let Some(event) = &filter.event_id {
            query = query.bind(event.clone());
        }
        query.bind(limit + 1).fetch_all(pool).await.map_err(ApiError::internal)?
    });
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    let rows: Vec<JobRow> = rows
        .into_iter()
        .take(usize::try_from(limit).unwrap_or(0))
        .collect();
    let next_cursor = if more {
        rows.last().map(|row| row.0.to_string())
    } else {
        None
    };
    let ids: Vec<Uuid> = rows.iter().map(|row| row.1).collect();
    let mut attempts = attempts_of(store, &ids).await?;
    let mut data = Vec::with_capacity(rows.len());
    for row in rows {
        let of_job = attempts.remove(&row.1).unwrap_or_default();
        data.push(job_out(row, of_job)?);
    }
    Ok(Page { data, next_cursor })
}

fn job_out(row: JobRow, attempts: Vec<AttemptOut>) -> Result<JobOut, ApiError> {
    let (
        _,
        id,
        subscription,
        event_id,
        event_type,
        group_key,
        status,
        next_at,
        error,
        created,
        updated,
    ) = row;
    let status = Status::parse(&status)
        .ok_or_else(|| ApiError::internal(format!("job {id} has unknown status `{status}`")))?;
    Ok(JobOut {
        id: DispatchJobId::from_uuid(id),
        subscription_id: SubscriptionId::from_uuid(subscription),
        event_id,
        event_type,
        group_key,
        status,
        next_attempt_at: (status == Status::Pending).then(|| rfc3339(next_at)),
        last_error: error,
        created_at: rfc3339(created),
        updated_at: rfc3339(updated),
        attempts,
    })
}

type AttemptRow = (Uuid, i32, i64, Option<i32>, i64, String, Option<String>);

/// The attempts of `jobs`, each job's oldest first, in one query for the whole page.
async fn attempts_of(
    store: &Store,
    jobs: &[Uuid],
) -> Result<HashMap<Uuid, Vec<AttemptOut>>, ApiError> {
    if jobs.is_empty() {
        return Ok(HashMap::new());
    }
    const COLUMNS: &str = "job_id, number, started_at, status_code, latency_ms, outcome, error";
    let rows: Vec<AttemptRow> = match store {
        Store::Postgres(pool) => {
            let text = format!(
                "SELECT {COLUMNS} FROM herald_dispatch_attempts WHERE job_id = ANY($1) \
                 ORDER BY job_id, number"
            );
            sqlx::query_as(sqlx::AssertSqlSafe(text))
                .bind(jobs)
                .fetch_all(pool)
                .await
                .map_err(ApiError::internal)?
        }
        Store::Sqlite(pool) => {
            // Only placeholders are formatted into the statement; the ids are bound.
            let placeholders = (1..=jobs.len())
                .map(|n| format!("?{n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let text = format!(
                "SELECT {COLUMNS} FROM herald_dispatch_attempts WHERE job_id IN ({placeholders}) \
                 ORDER BY job_id, number"
            );
            let mut query = sqlx::query_as(sqlx::AssertSqlSafe(text));
            for job in jobs {
                query = query.bind(*job);
            }
            query.fetch_all(pool).await.map_err(ApiError::internal)?
        }
    };
    let mut by_job: HashMap<Uuid, Vec<AttemptOut>> = HashMap::new();
    for (job, number, started, code, latency, outcome, error) in rows {
        by_job.entry(job).or_default().push(AttemptOut {
            number: u32::try_from(number).unwrap_or(0),
            started_at: rfc3339(started),
            status_code: code.and_then(|c| u16::try_from(c).ok()),
            latency_ms: latency,
            outcome,
            error,
        });
    }
    Ok(by_job)
}

/// One job: 404 when there is none.
pub async fn get(store: &Store, id: DispatchJobId) -> Result<JobOut, ApiError> {
    let text = format!(
        "SELECT {JOB_COLUMNS} FROM herald_dispatch_jobs j \
         JOIN herald_dispatch_events e ON e.event_id = j.event_id WHERE j.id = $1"
    );
    let row: Option<JobRow> = on_store!(store, pool, sql => {
        sqlx::query_as(sql(&text))
            .bind(id.as_uuid())
            .fetch_optional(pool)
            .await
            .map_err(ApiError::internal)?
    });
    let row = row.ok_or_else(|| ApiError::not_found(format!("there is no dispatch job {id}")))?;
    let attempts = attempts_of(store, &[row.1])
        .await?
        .remove(&row.1)
        .unwrap_or_default();
    job_out(row, attempts)
}

/// Parses a job id given by a client.
pub fn parse_id(text: &str, pointer: &str) -> Result<DispatchJobId, ApiError> {
    text.parse().map_err(|err: herald_core::id::IdError| {
        ApiError::validation(vec![FieldError::new(pointer, err.to_string())])
    })
}

/// Makes job `id` due now with a fresh attempt budget (a dead or delivered job is delivered
/// again). A job being delivered is a 409.
pub async fn retry(store: &Store, id: DispatchJobId) -> Result<JobOut, ApiError> {
    let now = now_ms();
    let moved = on_store!(store, pool, sql => {
        sqlx::query(sql(
            "UPDATE herald_dispatch_jobs SET status = 'pending', next_attempt_at = $2, \
             budget_from = attempts, updated_at = $2 WHERE id = $1 AND status <> 'delivering'",
        ))
        .bind(id.as_uuid())
        .bind(now)
        .execute(pool)
        .await
        .map_err(ApiError::internal)?
        .rows_affected()
    });
    let job = get(store, id).await?;
    if moved == 0 {
        return Err(ApiError::conflict(
            "job_in_flight",
            format!("dispatch job {id} is being delivered; retry it when the attempt is over"),
        ));
    }
    Ok(job)
}

/// The most events one replay may queue.
pub const MAX_REPLAY: u64 = 1_000_000;

/// Queues a new job for `subscription` for every event it wants that the dispatcher received
/// at or after `since` (RFC 3339, not in the future). Returns how many.
pub async fn replay(
    store: &Store,
    subscription: &Subscription,
    since: &str,
) -> Result<u64, ApiError> {
    let Some(since_ms) = parse_rfc3339(since) else {
        return Err(ApiError::validation(vec![FieldError::new(
            "/since",
            "must be an RFC 3339 time, such as 2026-01-31T12:00:00Z",
        )]));
    };
    let now = now_ms();
    if since_ms > now {
        return Err(ApiError::validation(vec![FieldError::new(
            "/since",
            "is in the future",
        )]));
    }
    // Walk the events in (received_at, event_id) order, a page at a time.
    let mut cursor = (since_ms, String::new());
    let mut queued = 0_u64;
    for _ in 0..=(MAX_REPLAY / 500) {
        let rows: Vec<(String, String, Option<String>, i64)> = on_store!(store, pool, sql => {
            sqlx::query_as(sql(
                "SELECT event_id, event_type, partition_key, received_at FROM herald_dispatch_events \
                 WHERE (received_at > $1 OR (received_at = $1 AND event_id > $2)) AND received_at <= $3 \
                 ORDER BY received_at, event_id LIMIT 500",
            ))
            .bind(cursor.0)
            .bind(&cursor.1)
            .bind(now)
            .fetch_all(pool)
            .await
            .map_err(ApiError::internal)?
        });
        let Some(last) = rows.last() else { break };
        cursor = (last.3, last.0.clone());
        let wanted: Vec<_> = rows
            .iter()
            .filter(|(_, event_type, _, _)| subscription.wants(event_type))
            .collect();
        queued += insert_jobs(store, subscription, &wanted).await?;
        if queued >= MAX_REPLAY {
            break;
        }
    }
    Ok(queued)
}

async fn insert_jobs(
    store: &Store,
    subscription: &Subscription,
    events: &[&(String, String, Option<String>, i64)],
) -> Result<u64, ApiError> {
    let now = now_ms();
    let insert = "INSERT INTO herald_dispatch_jobs (id, subscription_id, event_id, group_key, status, \
                  next_attempt_at, created_at, updated_at) VALUES ($1, $2, $3, $4, 'pending', $5, $5, $5)";
    macro_rules! run {
        ($tx:expr, $sql:expr) => {{
            for (event_id, _, key, _) in events {
                let group = if subscription.fifo {
                    key.as_deref()
                } else {
                    None
                };
                sqlx::query($sql(insert))
                    .bind(DispatchJobId::new().as_uuid())
                    .bind(subscription.id.as_uuid())
                    .bind(event_id.as_str())
                    .bind(group)
                    .bind(now)
                    .execute(&mut *$tx)
                    .await
                    .map_err(ApiError::internal)?;
            }
            $tx.commit().await.map_err(ApiError::internal)?;
        }};
    }
    match store {
        Store::Postgres(pool) => {
            let mut tx = pool.begin().await.map_err(ApiError::internal)?;
            let sql = |text: &str| sqlx::AssertSqlSafe(text.to_owned());
            run!(tx, sql);
        }
        Store::Sqlite(pool) => {
            let mut tx = pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(ApiError::internal)?;
            let sql = |text: &str| sqlx::AssertSqlSafe(crate::sql::for_sqlite(text));
            run!(tx, sql);
        }
    }
    Ok(events.len() as u64)
}

/// Loads the subscription and replays (see [`replay`]).
pub async fn replay_subscription(
    store: &Store,
    id: SubscriptionId,
    since: &str,
) -> Result<u64, ApiError> {
    let subscription = subscription::get(store, id).await?;
    replay(store, &subscription, since).await
}

/// What one [`purge`] call deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    /// Finished jobs (with their attempts).
    pub jobs: u64,
    /// Events no job refers to.
    pub events: u64,
}

/// Deletes up to `batch` finished jobs (delivered or dead) last changed before `before` (epoch
/// ms), with their attempts, and up to `batch` events received before `before` that no job
/// refers to. Pending jobs and the events they deliver are never touched. Call it again while
/// it deletes full batches.
pub async fn purge(store: &Store, before: i64, batch: u32) -> Result<Purged, sqlx::Error> {
    let batch = i64::from(batch.max(1));
    let jobs = "DELETE FROM herald_dispatch_jobs WHERE seq IN (\
                  SELECT seq FROM herald_dispatch_jobs \
                  WHERE status IN ('delivered', 'dead') AND updated_at < $1 \
                  ORDER BY seq LIMIT $2)";
    let events = "DELETE FROM herald_dispatch_events WHERE event_id IN (\
                    SELECT e.event_id FROM herald_dispatch_events e WHERE e.received_at < $1 \
                    AND NOT EXISTS (SELECT 1 FROM herald_dispatch_jobs j WHERE j.event_id = e.event_id) \
                    ORDER BY e.received_at LIMIT $2)";
    let (jobs, events) = on_store!(store, pool, sql => {
        let jobs = sqlx::query(sql(jobs)).bind(before).bind(batch).execute(pool).await?.rows_affected();
        let events = sqlx::query(sql(events)).bind(before).bind(batch).execute(pool).await?.rows_affected();
        (jobs, events)
    });
    Ok(Purged { jobs, events })
}
