//! Subscriptions: which events go to which endpoint, through which pool, signed with which
//! secret.
//!
//! The API creates, reads, changes and deletes them (the checks are here, so every front door
//! applies the same ones); the dispatcher matches events against the enabled ones; the router
//! delivers with their settings. A `410 Gone` from the endpoint disables a subscription
//! (`enabled: false` with the reason); `PATCH {"enabled": true}` turns it back on.

use std::collections::BTreeMap;

use herald_core::id::SubscriptionId;
use herald_core::problem::{ApiError, FieldError};
use herald_store::Store;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::pattern::TypePattern;
use crate::pool;
use crate::signature::SigningSecret;
use crate::sql::{now_ms, on_store, rfc3339};

/// The most event type patterns one subscription may have.
pub const MAX_PATTERNS: usize = 50;
/// The most custom headers one subscription may send.
pub const MAX_HEADERS: usize = 20;
/// The longest endpoint URL, in bytes.
pub const MAX_URL_LEN: usize = 2048;
/// The most attempts a subscription may ask for.
pub const MAX_ATTEMPTS: u32 = 100;
/// Attempts when a subscription does not say.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

/// Headers Herald sets itself; a subscription may not send its own.
const RESERVED_HEADERS: [&str; 9] = [
    "content-type",
    "content-length",
    "host",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-correlation-id",
    "traceparent",
    "user-agent",
];

/// A subscription as stored.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Its id.
    pub id: SubscriptionId,
    /// A name for people.
    pub name: String,
    /// The event types it wants.
    pub event_types: Vec<TypePattern>,
    /// Where deliveries go (`http://` or `https://`).
    pub url: String,
    /// The pool its deliveries go through.
    pub pool: String,
    /// Whether events of one partition key are delivered one at a time, in order.
    pub fifo: bool,
    /// Attempts before a delivery is dead-lettered.
    pub max_attempts: u32,
    /// Extra headers sent with every delivery.
    pub headers: BTreeMap<String, String>,
    /// The signing secret.
    pub secret: SigningSecret,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// Why it was disabled, when it was disabled by Herald (410).
    pub disabled_reason: Option<String>,
    /// Epoch ms.
    pub created_at: i64,
    /// Epoch ms.
    pub updated_at: i64,
}

impl Subscription {
    /// Whether it wants events of type `event_type`.
    pub fn wants(&self, event_type: &str) -> bool {
        self.event_types.iter().any(|p| p.matches(event_type))
    }
}

/// The body of `POST /v1/subscriptions`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSubscription {
    /// A name for people (1 to 200 characters).
    pub name: String,
    /// Event type patterns (1 to 50), e.g. `identity.user.*`.
    pub event_types: Vec<String>,
    /// The endpoint: an absolute `http://` or `https://` URL.
    pub url: String,
    /// The pool; `default` when absent.
    #[serde(default)]
    pub pool: Option<String>,
    /// Deliver each partition key's events one at a time, in order.
    #[serde(default)]
    pub fifo: bool,
    /// Attempts before dead-lettering (1 to 100, default 10).
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Extra headers to send.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// A `whsec_…` secret; one is generated when absent.
    #[serde(default)]
    pub secret: Option<String>,
}

/// The body of `PATCH /v1/subscriptions/{id}`: the fields to change.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionPatch {
    /// A new name.
    pub name: Option<String>,
    /// New patterns.
    pub event_types: Option<Vec<String>>,
    /// A new endpoint.
    pub url: Option<String>,
    /// A new pool.
    pub pool: Option<String>,
    /// FIFO on or off (applies to events dispatched from now on).
    pub fifo: Option<bool>,
    /// New attempt limit.
    pub max_attempts: Option<u32>,
    /// New headers (replacing all).
    pub headers: Option<BTreeMap<String, String>>,
    /// A new secret.
    pub secret: Option<String>,
    /// Turn deliveries on or off.
    pub enabled: Option<bool>,
}

/// A subscription as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = Subscription)]
pub struct SubscriptionOut {
    /// Its id.
    pub id: SubscriptionId,
    /// A name for people.
    pub name: String,
    /// The event type patterns.
    pub event_types: Vec<String>,
    /// The endpoint.
    pub url: String,
    /// The pool.
    pub pool: String,
    /// FIFO per partition key.
    pub fifo: bool,
    /// Attempts before dead-lettering.
    pub max_attempts: u32,
    /// Extra headers.
    pub headers: BTreeMap<String, String>,
    /// The `whsec_…` signing secret.
    pub secret: String,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// Why Herald disabled it, if it did.
    pub disabled_reason: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl From<&Subscription> for SubscriptionOut {
    fn from(s: &Subscription) -> Self {
        Self {
            id: s.id,
            name: s.name.clone(),
            event_types: s
                .event_types
                .iter()
                .map(|p| p.as_str().to_owned())
                .collect(),
            url: s.url.clone(),
            pool: s.pool.clone(),
            fifo: s.fifo,
            max_attempts: s.max_attempts,
            headers: s.headers.clone(),
            secret: s.secret.to_text(),
            enabled: s.enabled,
            disabled_reason: s.disabled_reason.clone(),
            created_at: rfc3339(s.created_at),
            updated_at: rfc3339(s.updated_at),
        }
    }
}

/// Checks an endpoint URL.
pub fn check_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("must be at most {MAX_URL_LEN} bytes"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|err| format!("is not a URL: {err}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("must be an http:// or https:// URL".to_owned());
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("must name a host".to_owned());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(
            "must not carry credentials; send them with `headers` instead, which are not logged"
                .to_owned(),
        );
    }
    if parsed.fragment().is_some() {
        return Err("must not have a #fragment".to_owned());
    }
    Ok(())
}

fn check_name(name: &str, errors: &mut Vec<FieldError>) {
    let len = name.chars().count();
    if name.trim().is_empty() || len > 200 {
        errors.push(FieldError::new(
            "/name",
            "must be 1 to 200 characters, not blank",
        ));
    }
}

fn check_patterns(patterns: &[String], errors: &mut Vec<FieldError>) -> Vec<TypePattern> {
    if patterns.is_empty() || patterns.len() > MAX_PATTERNS {
        errors.push(FieldError::new(
            "/event_types",
            format!("give 1 to {MAX_PATTERNS} event type patterns"),
        ));
        return Vec::new();
    }
    let mut parsed: Vec<TypePattern> = Vec::with_capacity(patterns.len());
    for (index, text) in patterns.iter().enumerate() {
        match text.parse::<TypePattern>() {
            Ok(p) if !parsed.contains(&p) => parsed.push(p),
            Ok(_) => {}
            Err(err) => errors.push(FieldError::new(
                format!("/event_types/{index}"),
                err.to_string(),
            )),
        }
    }
    parsed
}

fn check_headers(headers: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    if headers.len() > MAX_HEADERS {
        errors.push(FieldError::new(
            "/headers",
            format!("at most {MAX_HEADERS} headers"),
        ));
    }
    for (name, value) in headers {
        let pointer = format!("/headers/{}", name.replace('~', "~0").replace('/', "~1"));
        let lower = name.to_ascii_lowercase();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(FieldError::new(pointer, "is not a valid header name"));
        } else if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("webhook-") {
            errors.push(FieldError::new(
                pointer,
                "is set by Herald and cannot be overridden",
            ));
        } else if http::HeaderValue::from_str(value).is_err() || value.len() > 4096 {
            errors.push(FieldError::new(
                pointer,
                "the value must be visible ASCII text of at most 4096 bytes",
            ));
        }
    }
}

fn check_max_attempts(max: u32, errors: &mut Vec<FieldError>) {
    if !(1..=MAX_ATTEMPTS).contains(&max) {
        errors.push(FieldError::new(
            "/max_attempts",
            format!("must be between 1 and {MAX_ATTEMPTS}"),
        ));
    }
}

fn check_secret(secret: &str, errors: &mut Vec<FieldError>) -> Option<SigningSecret> {
    match SigningSecret::parse(secret) {
        Ok(secret) => Some(secret),
        Err(err) => {
            errors.push(FieldError::new("/secret", err.to_string()));
            None
        }
    }
}

async fn check_pool(
    store: &Store,
    code: &str,
    errors: &mut Vec<FieldError>,
) -> Result<(), ApiError> {
    if let Err(e) = pool::check_code(code, "/pool") {
        errors.push(e);
    } else if pool::find(store, code)
        .await
        .map_err(ApiError::internal)?
        .is_none()
    {
        errors.push(FieldError::new(
            "/pool",
            format!("there is no pool `{code}`; create it with PUT /v1/pools/{code}"),
        ));
    }
    Ok(())
}

/// Parses an id given by a client; `pointer` says where.
pub fn parse_id(text: &str, pointer: &str) -> Result<SubscriptionId, ApiError> {
    text.parse().map_err(|err: herald_core::id::IdError| {
        ApiError::validation(vec![FieldError::new(pointer, err.to_string())])
    })
}

/// Checks `new` and creates the subscription; every problem is reported at once and nothing
/// is written unless all is well.
pub async fn create(store: &Store, new: NewSubscription) -> Result<Subscription, ApiError> {
    let mut errors = Vec::new();
    check_name(&new.name, &mut errors);
    let event_types = check_patterns(&new.event_types, &mut errors);
    if let Err(detail) = check_url(&new.url) {
        errors.push(FieldError::new("/url", detail));
    }
    let pool = new.pool.unwrap_or_else(|| pool::DEFAULT.to_owned());
    check_pool(store, &pool, &mut errors).await?;
    let max_attempts = new.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    check_max_attempts(max_attempts, &mut errors);
    check_headers(&new.headers, &mut errors);
    let secret = match &new.secret {
        Some(text) => check_secret(text, &mut errors),
        None => Some(SigningSecret::generate().map_err(ApiError::internal)?),
    };
    let Some(secret) = secret.filter(|_| errors.is_empty()) else {
        return Err(ApiError::validation(errors));
    };
    let now = now_ms();
    let subscription = Subscription {
        id: SubscriptionId::new(),
        name: new.name,
        event_types,
        url: new.url,
        pool,
        fifo: new.fifo,
        max_attempts,
        headers: new.headers,
        secret,
        enabled: true,
        disabled_reason: None,
        created_at: now,
        updated_at: now,
    };
    write(store, &subscription, true).await?;
    Ok(subscription)
}

/// Applies `patch` to subscription `id`; every problem is reported at once and nothing
/// changes unless all is well.
pub async fn update(
    store: &Store,
    id: SubscriptionId,
    patch: SubscriptionPatch,
) -> Result<Subscription, ApiError> {
    let mut current = get(store, id).await?;
    let mut errors = Vec::new();
    if let Some(name) = patch.name {
        check_name(&name, &mut errors);
        current.name = name;
    }
    if let Some(patterns) = patch.event_types {
        current.event_types = check_patterns(&patterns, &mut errors);
    }
    if let Some(url) = patch.url {
        if let Err(detail) = check_url(&url) {
            errors.push(FieldError::new("/url", detail));
        }
        current.url = url;
    }
    if let Some(pool) = patch.pool {
        check_pool(store, &pool, &mut errors).await?;
        current.pool = pool;
    }
    if let Some(fifo) = patch.fifo {
        current.fifo = fifo;
    }
    if let Some(max) = patch.max_attempts {
        check_max_attempts(max, &mut errors);
        current.max_attempts = max;
    }
    if let Some(headers) = patch.headers {
        check_headers(&headers, &mut errors);
        current.headers = headers;
    }
    if let Some(text) = patch.secret
        && let Some(secret) = check_secret(&text, &mut errors)
    {
        current.secret = secret;
    }
    if let Some(enabled) = patch.enabled {
        current.enabled = enabled;
        current.disabled_reason = None;
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    current.updated_at = now_ms();
    write(store, &current, false).await?;
    Ok(current)
}

async fn write(store: &Store, s: &Subscription, insert: bool) -> Result<(), ApiError> {
    let patterns: Vec<&str> = s.event_types.iter().map(TypePattern::as_str).collect();
    let patterns = serde_json::to_string(&patterns).map_err(ApiError::internal)?;
    let headers = serde_json::to_string(&s.headers).map_err(ApiError::internal)?;
    let max_attempts = i32::try_from(s.max_attempts).unwrap_or(i32::MAX);
    let statement = if insert {
        "INSERT INTO herald_subscriptions (id, name, event_types, url, pool, fifo, max_attempts, \
         headers, secret, enabled, disabled_reason, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"
    } else {
        "UPDATE herald_subscriptions SET name = $2, event_types = $3, url = $4, pool = $5, \
         fifo = $6, max_attempts = $7, headers = $8, secret = $9, enabled = $10, \
         disabled_reason = $11, created_at = $12, updated_at = $13 WHERE id = $1"
    };
    let written = on_store!(store, pool, sql => {
        sqlx::query(sql(statement))
            .bind(s.id.as_uuid())
            .bind(&s.name)
            .bind(&patterns)
            .bind(&s.url)
            .bind(&s.pool)
            .bind(s.fifo)
            .bind(max_attempts)
            .bind(&headers)
            .bind(s.secret.to_text())
            .bind(s.enabled)
            .bind(s.disabled_reason.as_deref())
            .bind(s.created_at)
            .bind(s.updated_at)
            .execute(pool)
            .await
            .map_err(ApiError::internal)?
            .rows_affected()
    });
    if written == 1 {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "there is no subscription {}",
            s.id
        )))
    }
}

type Row = (
    Uuid,
    String,
    String,
    String,
    String,
    bool,
    i32,
    String,
    String,
    bool,
    Option<String>,
    i64,
    i64,
);

const COLUMNS: &str = "id, name, event_types, url, pool, fifo, max_attempts, headers, secret, \
                       enabled, disabled_reason, created_at, updated_at";

fn subscription_of(row: Row) -> Result<Subscription, String> {
    let (
        id,
        name,
        patterns,
        url,
        pool,
        fifo,
        max_attempts,
        headers,
        secret,
        enabled,
        reason,
        created,
        updated,
    ) = row;
    let patterns: Vec<String> =
        serde_json::from_str(&patterns).map_err(|e| format!("event_types of {id}: {e}"))?;
    let event_types = patterns
        .iter()
        .map(|p| p.parse::<TypePattern>().map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Subscription {
        id: SubscriptionId::from_uuid(id),
        name,
        event_types,
        url,
        pool,
        fifo,
        max_attempts: u32::try_from(max_attempts).unwrap_or(1),
        headers: serde_json::from_str(&headers).map_err(|e| format!("headers of {id}: {e}"))?,
        secret: SigningSecret::parse(&secret).map_err(|e| format!("secret of {id}: {e}"))?,
        enabled,
        disabled_reason: reason,
        created_at: created,
        updated_at: updated,
    })
}

/// Why stored subscriptions could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The database failed.
    #[error("cannot read subscriptions")]
    Database(#[from] sqlx::Error),
    /// A stored row is not valid (written by something other than this code).
    #[error("a stored subscription is not valid: {0}")]
    Corrupt(String),
}

impl From<LoadError> for ApiError {
    fn from(err: LoadError) -> Self {
        ApiError::internal(err)
    }
}

/// Every subscription, oldest first; only the enabled ones with `enabled_only`.
pub async fn list(store: &Store, enabled_only: bool) -> Result<Vec<Subscription>, LoadError> {
    let text = format!(
        "SELECT {COLUMNS} FROM herald_subscriptions WHERE enabled OR NOT $1 ORDER BY created_at, id"
    );
    let rows: Vec<Row> = on_store!(store, pool, sql => {
        sqlx::query_as(sql(&text)).bind(enabled_only).fetch_all(pool).await?
    });
    rows.into_iter()
        .map(|row| subscription_of(row).map_err(LoadError::Corrupt))
        .collect()
}

/// One subscription: 404 when there is none.
pub async fn get(store: &Store, id: SubscriptionId) -> Result<Subscription, ApiError> {
    let text = format!("SELECT {COLUMNS} FROM herald_subscriptions WHERE id = $1");
    let row: Option<Row> = on_store!(store, pool, sql => {
        sqlx::query_as(sql(&text))
            .bind(id.as_uuid())
            .fetch_optional(pool)
            .await
            .map_err(ApiError::internal)?
    });
    match row {
        Some(row) => subscription_of(row).map_err(|e| ApiError::from(LoadError::Corrupt(e))),
        None => Err(ApiError::not_found(format!(
            "there is no subscription {id}"
        ))),
    }
}

/// Deletes subscription `id` and its dispatch jobs (delivered or not).
pub async fn delete(store: &Store, id: SubscriptionId) -> Result<(), ApiError> {
    let deleted = on_store!(store, pool, sql => {
        sqlx::query(sql("DELETE FROM herald_subscriptions WHERE id = $1"))
            .bind(id.as_uuid())
            .execute(pool)
            .await
            .map_err(ApiError::internal)?
            .rows_affected()
    });
    if deleted == 1 {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "there is no subscription {id}"
        )))
    }
}

/// Disables subscription `id` because its endpoint said so (410), recording `reason`.
pub async fn disable(store: &Store, id: SubscriptionId, reason: &str) -> Result<(), sqlx::Error> {
    on_store!(store, pool, sql => {
        sqlx::query(sql(
            "UPDATE herald_subscriptions SET enabled = $2, disabled_reason = $3, updated_at = $4 \
             WHERE id = $1",
        ))
        .bind(id.as_uuid())
        .bind(false)
        .bind(reason)
        .bind(now_ms())
        .execute(pool)
        .await?
        .rows_affected()
    });
    Ok(())
}
