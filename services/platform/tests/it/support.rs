//! Shared test support: the app over a fresh database, calling it in-process, counting rows,
//! and writing the router's dispatch rows directly (there is no broker in these tests).

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use herald_core::id::{DispatchJobId, EventId, SubscriptionId};
use herald_platform::{PlatformState, router};
use herald_store::Store;
use herald_testing::TestDb;
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tower::ServiceExt;
use uuid::Uuid;

/// Runs `$body` with `$pool` the engine's pool and `$sql` turning a statement written with
/// PostgreSQL's `$N` placeholders into what the engine runs (`?N` on SQLite).
macro_rules! on_store {
    ($store:expr, $pool:ident, $sql:ident => $body:expr) => {
        match $store {
            Store::Postgres($pool) => {
                let $sql = |text: &str| sqlx::AssertSqlSafe(text.to_owned());
                $body
            }
            Store::Sqlite($pool) => {
                let $sql = |text: &str| sqlx::AssertSqlSafe(text.replace('$', "?"));
                $body
            }
        }
    };
}

/// The platform API over `db`, with every table it and the router need.
pub(crate) async fn app(db: &TestDb) -> Router {
    herald_store::migrate::migrate(
        db.store(),
        &[
            &herald_outbox::MIGRATIONS,
            &herald_platform::MIGRATIONS,
            &herald_router::MIGRATIONS,
        ],
    )
    .await
    .unwrap();
    router(PlatformState {
        store: db.store().clone(),
        wake: None,
        wake_router: None,
    })
    .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
}

/// Calls the app; every 4xx must be `application/problem+json`. The body is `null` when it
/// is empty (204) or not JSON.
pub(crate) async fn call(
    app: &Router,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(content_type) = content_type {
        request = request.header(header::CONTENT_TYPE, content_type);
    }
    let response = app
        .clone()
        .oneshot(request.body(body.into()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.to_str().unwrap().starts_with("application/problem+json"));
    let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .unwrap();
    let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if status.is_client_error() {
        assert!(is_problem, "a {status} must be problem+json: {json}");
    }
    (status, json)
}

/// `GET path`.
pub(crate) async fn get(app: &Router, path: &str) -> (StatusCode, Value) {
    call(app, "GET", path, None, Body::empty()).await
}

/// `method path` with `body` as `application/json`.
pub(crate) async fn send(
    app: &Router,
    method: &str,
    path: &str,
    body: &Value,
) -> (StatusCode, Value) {
    call(
        app,
        method,
        path,
        Some("application/json"),
        body.to_string(),
    )
    .await
}

/// The pointers of a 422 problem's `errors`, in order.
pub(crate) fn pointers(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .unwrap_or_else(|| panic!("a problem with errors: {problem}"))
        .iter()
        .map(|e| e["pointer"].as_str().unwrap().to_owned())
        .collect()
}

/// Asserts `(status, body)` is a 422 whose errors point exactly at `expected`.
#[track_caller]
pub(crate) fn assert_invalid(answer: &(StatusCode, Value), expected: &[&str]) {
    let (status, body) = answer;
    assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "invalid_input", "{body}");
    assert_eq!(pointers(body), expected, "{body}");
}

/// Rows in one of the tables the tests look at.
pub(crate) async fn count(store: &Store, table: &str) -> i64 {
    let sql = match table {
        "events" => "SELECT count(*) FROM herald_events",
        "outbox" => "SELECT count(*) FROM herald_outbox",
        "subscriptions" => "SELECT count(*) FROM herald_subscriptions",
        "pools" => "SELECT count(*) FROM herald_pools",
        "dispatch_events" => "SELECT count(*) FROM herald_dispatch_events",
        "jobs" => "SELECT count(*) FROM herald_dispatch_jobs",
        "attempts" => "SELECT count(*) FROM herald_dispatch_attempts",
        other => panic!("unknown table {other}"),
    };
    match store {
        Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        Store::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
    }
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    let elapsed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(elapsed.as_millis()).unwrap()
}

/// `ms` as RFC 3339 (UTC), as the API writes times.
pub(crate) fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap()
        .format(&Rfc3339)
        .unwrap()
}

/// Parses an RFC 3339 time the API wrote.
pub(crate) fn parse_time(text: &Value) -> OffsetDateTime {
    let text = text
        .as_str()
        .unwrap_or_else(|| panic!("a time, not {text}"));
    OffsetDateTime::parse(text, &Rfc3339).unwrap_or_else(|err| panic!("{text}: {err}"))
}

/// An event as the dispatcher stores it in `herald_dispatch_events`.
#[derive(Debug, Clone)]
pub(crate) struct DispatchEvent {
    /// `evt_…`.
    pub(crate) id: String,
    pub(crate) event_type: String,
    pub(crate) partition_key: Option<String>,
    /// Epoch ms.
    pub(crate) received_at: i64,
}

impl DispatchEvent {
    /// An event of `event_type` received at `received_at`, with a fresh id and no key.
    pub(crate) fn new(event_type: &str, received_at: i64) -> Self {
        Self {
            id: EventId::new().to_string(),
            event_type: event_type.to_owned(),
            partition_key: None,
            received_at,
        }
    }

    /// The same, with partition key `key`.
    pub(crate) fn keyed(mut self, key: &str) -> Self {
        self.partition_key = Some(key.to_owned());
        self
    }
}

/// Stores `events` as the dispatcher does, in one transaction.
pub(crate) async fn insert_events(store: &Store, events: &[DispatchEvent]) {
    let insert = "INSERT INTO herald_dispatch_events (event_id, event_type, partition_key, body, \
                  received_at) VALUES ($1, $2, $3, $4, $5)";
    on_store!(store, pool, sql => {
        let mut tx = pool.begin().await.unwrap();
        for event in events {
            let body = serde_json::json!({
                "specversion": "1.0", "id": event.id, "source": "/tests",
                "type": event.event_type, "data": {}
            });
            sqlx::query(sql(insert))
                .bind(&event.id)
                .bind(&event.event_type)
                .bind(event.partition_key.as_deref())
                .bind(body.to_string())
                .bind(event.received_at)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    });
}

/// A dispatch job to store directly.
#[derive(Debug, Clone)]
pub(crate) struct NewJob<'a> {
    pub(crate) subscription: SubscriptionId,
    pub(crate) event_id: &'a str,
    /// `pending`, `delivering` (leased for a minute), `delivered` or `dead`.
    pub(crate) status: &'a str,
    /// Attempts made so far.
    pub(crate) attempts: i32,
    pub(crate) group_key: Option<&'a str>,
    pub(crate) last_error: Option<&'a str>,
}

impl<'a> NewJob<'a> {
    /// A job of `subscription` for `event_id` in `status`, without attempts.
    pub(crate) fn new(subscription: SubscriptionId, event_id: &'a str, status: &'a str) -> Self {
        Self {
            subscription,
            event_id,
            status,
            attempts: 0,
            group_key: None,
            last_error: None,
        }
    }
}

/// Stores `job` (its `seq` is the next one, so jobs list newest first in insertion order).
pub(crate) async fn insert_job(store: &Store, job: &NewJob<'_>) -> DispatchJobId {
    let id = DispatchJobId::new();
    let now = now_ms();
    let delivering = job.status == "delivering";
    let lease = delivering.then(Uuid::now_v7);
    let locked_until = delivering.then_some(now + 60_000);
    let insert = "INSERT INTO herald_dispatch_jobs (id, subscription_id, event_id, group_key, \
                  status, attempts, budget_from, next_attempt_at, lease, locked_until, last_error, \
                  created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9, $10, $7, $7)";
    on_store!(store, pool, sql => {
        sqlx::query(sql(insert))
            .bind(id.as_uuid())
            .bind(job.subscription.as_uuid())
            .bind(job.event_id)
            .bind(job.group_key)
            .bind(job.status)
            .bind(job.attempts)
            .bind(now)
            .bind(lease)
            .bind(locked_until)
            .bind(job.last_error)
            .execute(pool)
            .await
            .unwrap();
    });
    id
}

/// One recorded attempt of a job.
#[derive(Debug, Clone)]
pub(crate) struct NewAttempt<'a> {
    pub(crate) number: i32,
    /// Epoch ms.
    pub(crate) started_at: i64,
    pub(crate) status_code: Option<i32>,
    pub(crate) latency_ms: i64,
    pub(crate) outcome: &'a str,
    pub(crate) error: Option<&'a str>,
}

/// Stores `attempt` of `job`.
pub(crate) async fn insert_attempt(store: &Store, job: DispatchJobId, attempt: &NewAttempt<'_>) {
    let insert = "INSERT INTO herald_dispatch_attempts (job_id, number, started_at, status_code, \
                  latency_ms, outcome, error) VALUES ($1, $2, $3, $4, $5, $6, $7)";
    on_store!(store, pool, sql => {
        sqlx::query(sql(insert))
            .bind(job.as_uuid())
            .bind(attempt.number)
            .bind(attempt.started_at)
            .bind(attempt.status_code)
            .bind(attempt.latency_ms)
            .bind(attempt.outcome)
            .bind(attempt.error)
            .execute(pool)
            .await
            .unwrap();
    });
}

/// A job's `(attempts, budget_from)` as stored.
pub(crate) async fn job_budget(store: &Store, job: DispatchJobId) -> (i32, i32) {
    let select = "SELECT attempts, budget_from FROM herald_dispatch_jobs WHERE id = $1";
    on_store!(store, pool, sql => {
        sqlx::query_as(sql(select))
            .bind(job.as_uuid())
            .fetch_one(pool)
            .await
            .unwrap()
    })
}
