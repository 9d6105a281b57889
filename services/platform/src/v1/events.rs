//! `/v1/events`: accept events from producers, and look them up.
//!
//! `POST /v1/events` takes one CloudEvent (`application/json` or
//! `application/cloudevents+json`) or a batch (a JSON array, as `application/json` or
//! `application/cloudevents-batch+json`), at most [`MAX_BATCH`] events. Every event is checked
//! and every problem reported with a pointer into the body (`/3/source`); if any event is bad,
//! nothing is written. Otherwise all are written, with their outbox rows, in one transaction,
//! and the answer is 202 with the id Herald gave each one.
//!
//! Identity: Herald gives each event its own id (`evt_…`), which the event carries from then
//! on (as its CloudEvents `id`, the broker message id and the webhook id); the producer's `id`
//! is kept in the `originalid` extension. A producer that retries (same `source` and `id`)
//! gets the first event's id back with `duplicate: true`, and nothing new is written.
//!
//! The producer's correlation id and trace context are kept; an event without a
//! `correlationid` gets the request's.

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use herald_core::correlation;
use herald_core::envelope::Event;
use herald_core::id::EventId;
use herald_core::problem::{ApiError, FieldError, ProblemDoc as Problem};
use herald_store::Store;
use serde::Serialize;
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::PlatformState;

/// The most events one request may carry.
pub const MAX_BATCH: usize = 1000;

/// The extension that keeps the producer's own event id.
pub const ORIGINAL_ID: &str = "originalid";

/// The routes of this resource.
pub fn router() -> Router<PlatformState> {
    Router::new()
        .route("/events", post(create))
        .route("/events/{id}", get(fetch))
}

/// One accepted event in the `POST` answer.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
#[schema(as = AcceptedEvent)]
pub struct AcceptedOut {
    /// Herald's id for the event.
    pub id: EventId,
    /// The producer's `source`.
    pub source: String,
    /// The producer's `id`.
    pub source_id: String,
    /// True when this event had been accepted before (same `source` and `id`) and was not
    /// written again.
    pub duplicate: bool,
}

/// The `POST` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = AcceptedEvents)]
pub struct AcceptedListOut {
    /// One entry per event, in request order.
    pub data: Vec<AcceptedOut>,
}

/// The `GET` answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = StoredEvent)]
pub struct EventOut {
    /// Herald's id.
    pub id: EventId,
    /// When Herald accepted it (RFC 3339).
    pub received_at: String,
    /// The event as it is delivered.
    #[schema(value_type = CloudEventDoc)]
    pub event: Box<RawValue>,
}

/// A CloudEvents 1.0 event in structured JSON form, with Herald's extensions, as the API
/// documentation shows it. Unknown extension attributes are kept.
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = CloudEvent)]
pub struct CloudEventDoc {
    /// Always `1.0`.
    pub specversion: String,
    /// The producer's id; with `source`, it identifies the event (retries are recognised).
    pub id: String,
    /// Who produced it, a URI reference such as `/shop`.
    pub source: String,
    /// What happened, dot-separated: `shop.order.placed`.
    #[schema(rename = "type")]
    pub event_type: String,
    /// When it happened (RFC 3339).
    pub time: Option<String>,
    /// What it is about, within the source.
    pub subject: Option<String>,
    /// The media type of `data` (JSON when absent).
    pub datacontenttype: Option<String>,
    /// The payload.
    pub data: Option<serde_json::Value>,
    /// Binary payload, base64 (instead of `data`).
    pub data_base64: Option<String>,
    /// Events with the same key are delivered in order (FIFO subscriptions).
    pub partitionkey: Option<String>,
    /// The correlation id that follows the event; the request's when absent.
    pub correlationid: Option<String>,
    /// W3C trace context.
    pub traceparent: Option<String>,
}

/// Accept one event or a batch.
///
/// Every event is checked and every problem reported (pointers into the body); if any is
/// bad, nothing is written. Otherwise all are written, with their outbox rows, in one
/// transaction.
#[utoipa::path(post, path = "/v1/events", operation_id = "publishEvents", tag = "events",
    request_body(content(
        (CloudEventDoc = "application/cloudevents+json"),
        (Vec<CloudEventDoc> = "application/cloudevents-batch+json"),
        (CloudEventDoc = "application/json"),
    )),
    responses(
        (status = 202, description = "Accepted", body = AcceptedListOut),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Wrong content type", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid events", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn create(
    State(state): State<PlatformState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<AcceptedListOut>), ApiError> {
    let body = body.map_err(ApiError::from)?;
    let batch_only = media_type(&headers)?;
    let events = parse_events(&body, batch_only)?;
    let accepted = store_events(&state.store, events).await?;
    if let Some(wake) = &state.wake
        && accepted.iter().any(|a| !a.duplicate)
    {
        wake();
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(AcceptedListOut { data: accepted }),
    ))
}

/// Checks the content type; returns whether it demands a batch.
fn media_type(headers: &HeaderMap) -> Result<bool, ApiError> {
    let value = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" | "application/cloudevents+json" => Ok(false),
        "application/cloudevents-batch+json" => Ok(true),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
        )
        .with_detail(
            "send events as application/json, application/cloudevents+json or application/cloudevents-batch+json",
        )),
    }
}

/// Parses one event or a batch; every problem of every event is reported.
fn parse_events(body: &[u8], batch_only: bool) -> Result<Vec<Event>, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let is_batch = first == Some(b'[');
    if batch_only && !is_batch {
        return Err(ApiError::bad_request(
            "batch_expected",
            "application/cloudevents-batch+json must be a JSON array of events",
        ));
    }
    let malformed = |err: serde_json::Error| {
        ApiError::bad_request(
            "malformed_json",
            format!("the body is not valid JSON: {err}"),
        )
    };
    if !is_batch {
        let raw: &RawValue = serde_json::from_slice(body).map_err(malformed)?;
        return Event::parse(raw.get())
            .map(|e| vec![e])
            .map_err(ApiError::validation);
    }
    let raws: Vec<&RawValue> = serde_json::from_slice(body).map_err(malformed)?;
    if raws.is_empty() {
        return Err(ApiError::validation(vec![FieldError::new(
            "",
            "the batch is empty",
        )]));
    }
    if raws.len() > MAX_BATCH {
        return Err(ApiError::validation(vec![FieldError::new(
            "",
            format!(
                "the batch has {} events; the limit is {MAX_BATCH}",
                raws.len()
            ),
        )]));
    }
    let mut events = Vec::with_capacity(raws.len());
    let mut errors = Vec::new();
    for (index, raw) in raws.iter().enumerate() {
        match Event::parse(raw.get()) {
            Ok(event) => events.push(event),
            Err(found) => errors.extend(
                found
                    .into_iter()
                    .map(|e| FieldError::new(format!("/{index}{}", e.pointer), e.detail)),
            ),
        }
    }
    if errors.is_empty() {
        Ok(events)
    } else {
        Err(ApiError::validation(errors))
    }
}

/// An event on its way into the database.
struct Incoming {
    id: EventId,
    source_id: String,
    event: Event,
    body: Vec<u8>,
}

fn prepare(events: Vec<Event>) -> Result<Vec<Incoming>, ApiError> {
    let request_correlation = correlation::current().map(|id| id.to_string());
    events
        .into_iter()
        .map(|mut event| {
            let id = EventId::new();
            let source_id = std::mem::replace(&mut event.id, id.to_string());
            event.extensions.insert(
                ORIGINAL_ID.to_owned(),
                serde_json::Value::String(source_id.clone()),
            );
            if event.correlationid.is_none() {
                event.correlationid.clone_from(&request_correlation);
            }
            let body = serde_json::to_vec(&event).map_err(ApiError::internal)?;
            Ok(Incoming {
                id,
                source_id,
                event,
                body,
            })
        })
        .collect()
}

/// Inserts `$events` (or finds earlier copies) and writes the new ones to the outbox, in one
/// transaction. The SQL differs between engines only in its placeholders.
macro_rules! store_in {
    ($pool:expr, $insert:literal, $existing:literal, $incoming:expr) => {{
        let incoming: Vec<Incoming> = $incoming;
        let now = OffsetDateTime::now_utc();
        let mut tx = $pool.begin().await.map_err(ApiError::internal)?;
        let mut accepted = Vec::with_capacity(incoming.len());
        let mut fresh = Vec::with_capacity(incoming.len());
        for item in incoming {
            let inserted = sqlx::query($insert)
                .bind(item.id.as_uuid())
                .bind(&item.event.source)
                .bind(&item.source_id)
                .bind(&item.event.event_type)
                .bind(item.event.partitionkey.as_deref())
                .bind(&item.body)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(ApiError::internal)?
                .rows_affected()
                == 1;
            let id = if inserted {
                item.id
            } else {
                let uuid: uuid::Uuid = sqlx::query_scalar($existing)
                    .bind(&item.event.source)
                    .bind(&item.source_id)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(ApiError::internal)?;
                EventId::from_uuid(uuid)
            };
            accepted.push(AcceptedOut {
                id,
                source: item.event.source.clone(),
                source_id: item.source_id.clone(),
                duplicate: !inserted,
            });
            if inserted {
                fresh.push(item.event);
            }
        }
        herald_outbox::write(&mut *tx, &fresh)
            .await
            .map_err(ApiError::internal)?;
        tx.commit().await.map_err(ApiError::internal)?;
        Ok(accepted)
    }};
}

async fn store_events(store: &Store, events: Vec<Event>) -> Result<Vec<AcceptedOut>, ApiError> {
    let incoming = prepare(events)?;
    match store {
        Store::Postgres(pool) => store_in!(
            pool,
            "INSERT INTO herald_events (id, source, source_id, event_type, partition_key, body, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (source, source_id) DO NOTHING",
            "SELECT id FROM herald_events WHERE source = $1 AND source_id = $2",
            incoming
        ),
        Store::Sqlite(pool) => store_in!(
            pool,
            "INSERT INTO herald_events (id, source, source_id, event_type, partition_key, body, received_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (source, source_id) DO NOTHING",
            "SELECT id FROM herald_events WHERE source = ?1 AND source_id = ?2",
            incoming
        ),
    }
}

/// One accepted event, as delivered.
#[utoipa::path(get, path = "/v1/events/{id}", operation_id = "getEvent", tag = "events",
    params(("id" = String, Path, description = "An `evt_…` id")),
    responses(
        (status = 200, description = "OK", body = EventOut),
        (status = 404, description = "No such event", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Not an event id", body = Problem, content_type = "application/problem+json"),
    ))]
pub(crate) async fn fetch(
    State(state): State<PlatformState>,
    Path(id): Path<String>,
) -> Result<Json<EventOut>, ApiError> {
    let id: EventId = id.parse().map_err(|err: herald_core::id::IdError| {
        ApiError::validation(vec![FieldError::new("#/path/id", err.to_string())])
    })?;
    let row: Option<(Vec<u8>, OffsetDateTime)> = match &state.store {
        Store::Postgres(pool) => {
            sqlx::query_as("SELECT body, received_at FROM herald_events WHERE id = $1")
                .bind(id.as_uuid())
                .fetch_optional(pool)
                .await
                .map_err(ApiError::internal)?
        }
        Store::Sqlite(pool) => {
            sqlx::query_as("SELECT body, received_at FROM herald_events WHERE id = ?1")
                .bind(id.as_uuid())
                .fetch_optional(pool)
                .await
                .map_err(ApiError::internal)?
        }
    };
    let (body, received_at) =
        row.ok_or_else(|| ApiError::not_found(format!("there is no event {id}")))?;
    let event = String::from_utf8(body)
        .map_err(ApiError::internal)
        .and_then(|text| RawValue::from_string(text).map_err(ApiError::internal))?;
    let received_at = received_at
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(ApiError::internal)?;
    Ok(Json(EventOut {
        id,
        received_at,
        event,
    }))
}
