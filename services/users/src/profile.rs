//! Profiles: the event contract they are built from, how an event is applied, and the
//! lookups both front doors use.

use herald_core::Event;
use herald_core::id::UserId;
use herald_core::problem::{ApiError, FieldError};
use herald_inbox::Tx;
use herald_store::Store;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// The most ids one batch lookup may ask for.
pub const MAX_BATCH: usize = 100;

/// The `data` of `identity.user.registered` and `identity.user.updated`: the user's whole
/// public state after the change, not a diff, so applying the latest version is enough.
///
/// ```json
/// {"user_id": "usr_…", "email": "ada@example.com", "username": "ada",
///  "display_name": "Ada", "avatar_url": null, "version": 3}
/// ```
///
/// Unknown fields are ignored, so identity can add fields before this service reads them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UserSnapshot {
    /// The user.
    pub user_id: UserId,
    /// Their email address.
    pub email: String,
    /// Their user name, if they have one (SDK users may not).
    #[serde(default)]
    pub username: Option<String>,
    /// The name shown to others.
    #[serde(default)]
    pub display_name: Option<String>,
    /// An `https://` (or `http://`) picture URL.
    #[serde(default)]
    pub avatar_url: Option<String>,
    /// Identity's version of the user, from 1, growing with every change.
    pub version: i64,
}

impl UserSnapshot {
    /// Reads and checks the snapshot in `event`; the error says what is wrong.
    pub fn from_event(event: &Event) -> Result<Self, String> {
        let data = event
            .data
            .as_ref()
            .ok_or_else(|| format!("{} has no data", event.event_type))?;
        let snapshot: Self = serde_json::from_str(data.get())
            .map_err(|err| format!("the data of {} is not a user: {err}", event.event_type))?;
        let problems = snapshot.problems();
        if problems.is_empty() {
            Ok(snapshot)
        } else {
            Err(format!(
                "the data of {} is not valid: {}",
                event.event_type,
                problems.join("; ")
            ))
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(3..=320).contains(&self.email.len()) || !self.email.contains('@') {
            problems.push("email must be an address of 3 to 320 characters".to_owned());
        }
        let text_fields = [
            ("username", &self.username, 100),
            ("display_name", &self.display_name, 200),
            ("avatar_url", &self.avatar_url, 2048),
        ];
        for (name, value, limit) in text_fields {
            if value.as_ref().is_some_and(|v| v.len() > limit) {
                problems.push(format!("{name} must be at most {limit} bytes"));
            }
        }
        if let Some(url) = &self.avatar_url
            && !(url.starts_with("https://") || url.starts_with("http://"))
        {
            problems.push("avatar_url must be an http:// or https:// URL".to_owned());
        }
        if self.version < 1 {
            problems.push(format!("version must be 1 or more, not {}", self.version));
        }
        problems
    }
}

/// A user's profile as the service serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Profile {
    /// The user.
    pub id: UserId,
    /// Their email address.
    pub email: String,
    /// Their user name.
    pub username: Option<String>,
    /// The name shown to others.
    pub display_name: Option<String>,
    /// A picture URL.
    pub avatar_url: Option<String>,
    /// Identity's version of the user this profile reflects.
    pub version: i64,
    /// When the user registered (the first event's time), RFC 3339.
    pub created_at: String,
    /// When the user last changed (the latest event's time), RFC 3339.
    pub updated_at: String,
}

type Row = (
    Uuid,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    OffsetDateTime,
    OffsetDateTime,
);

fn profile_of(row: Row) -> Result<Profile, ApiError> {
    let (id, email, username, display_name, avatar_url, version, created, updated) = row;
    let format = |t: OffsetDateTime| t.format(&Rfc3339).map_err(ApiError::internal);
    Ok(Profile {
        id: UserId::from_uuid(id),
        email,
        username,
        display_name,
        avatar_url,
        version,
        created_at: format(created)?,
        updated_at: format(updated)?,
    })
}

const COLUMNS: &str =
    "id, email, username, display_name, avatar_url, version, created_at, updated_at";

/// Applies `snapshot`, made at `at`, unless the stored profile is as new or newer. Returns
/// whether anything changed.
pub async fn apply(
    tx: &mut Tx<'_>,
    snapshot: &UserSnapshot,
    at: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    let upsert = |placeholders: &str| {
        format!(
            "INSERT INTO users_profiles ({COLUMNS}) VALUES ({placeholders}) \
             ON CONFLICT (id) DO UPDATE SET email = excluded.email, username = excluded.username, \
             display_name = excluded.display_name, avatar_url = excluded.avatar_url, \
             version = excluded.version, updated_at = excluded.updated_at \
             WHERE users_profiles.version < excluded.version"
        )
    };
    macro_rules! run {
        ($conn:expr, $sql:expr) => {
            sqlx::query(sqlx::AssertSqlSafe($sql))
                .bind(snapshot.user_id.as_uuid())
                .bind(&snapshot.email)
                .bind(snapshot.username.as_deref())
                .bind(snapshot.display_name.as_deref())
                .bind(snapshot.avatar_url.as_deref())
                .bind(snapshot.version)
                .bind(at)
                .bind(at)
                .execute(&mut **$conn)
                .await?
                .rows_affected()
        };
    }
    let changed = match tx {
        Tx::Postgres(conn) => run!(conn, upsert("$1, $2, $3, $4, $5, $6, $7, $8")),
        Tx::Sqlite(conn) => run!(conn, upsert("?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8")),
    };
    Ok(changed == 1)
}

/// Parses an id given by a client; `pointer` says where it was.
pub fn parse_id(text: &str, pointer: &str) -> Result<UserId, ApiError> {
    text.parse().map_err(|err: herald_core::id::IdError| {
        ApiError::validation(vec![FieldError::new(pointer, err.to_string())])
    })
}

/// One profile: 404 when there is none.
pub async fn get(store: &Store, id: UserId) -> Result<Profile, ApiError> {
    let mut found = fetch(store, &[id]).await?;
    match found.pop() {
        Some(profile) => Ok(profile),
        None => Err(ApiError::not_found(format!("there is no user {id}"))),
    }
}

/// What a batch lookup found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = ProfileBatch)]
pub struct Batch {
    /// The profiles found, in request order, each once.
    pub data: Vec<Profile>,
    /// The requested ids that name no user.
    pub missing: Vec<UserId>,
}

/// Up to [`MAX_BATCH`] profiles by id. Every malformed id is reported (with `pointer` and its
/// index), and a repeated id is looked up once.
pub async fn batch_get(store: &Store, ids: &[&str], pointer: &str) -> Result<Batch, ApiError> {
    if ids.is_empty() {
        return Err(ApiError::validation(vec![FieldError::new(
            pointer,
            "give at least one user id",
        )]));
    }
    if ids.len() > MAX_BATCH {
        return Err(ApiError::validation(vec![FieldError::new(
            pointer,
            format!("{} ids were given; the limit is {MAX_BATCH}", ids.len()),
        )]));
    }
    let mut wanted: Vec<UserId> = Vec::with_capacity(ids.len());
    let mut errors = Vec::new();
    for (index, text) in ids.iter().enumerate() {
        match parse_id(text.trim(), &format!("{pointer}/{index}")) {
            Ok(id) if !wanted.contains(&id) => wanted.push(id),
            Ok(_) => {}
            Err(err) => errors.extend(err.errors().iter().cloned()),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::validation(errors));
    }
    let found = fetch(store, &wanted).await?;
    let mut data = Vec::with_capacity(found.len());
    let mut missing = Vec::new();
    for id in wanted {
        match found.iter().find(|p| p.id == id) {
            Some(profile) => data.push(profile.clone()),
            None => missing.push(id),
        }
    }
    Ok(Batch { data, missing })
}

async fn fetch(store: &Store, ids: &[UserId]) -> Result<Vec<Profile>, ApiError> {
    let uuids: Vec<Uuid> = ids.iter().map(UserId::as_uuid).collect();
    let rows: Vec<Row> = match store {
        Store::Postgres(pool) => {
            let sql = format!("SELECT {COLUMNS} FROM users_profiles WHERE id = ANY($1)");
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(&uuids)
                .fetch_all(pool)
                .await
                .map_err(ApiError::internal)?
        }
        Store::Sqlite(pool) => {
            // Only placeholders are formatted into the statement; the ids are bound.
            let placeholders = (1..=uuids.len())
                .map(|n| format!("?{n}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("SELECT {COLUMNS} FROM users_profiles WHERE id IN ({placeholders})");
            let mut query = sqlx::query_as(sqlx::AssertSqlSafe(sql));
            for uuid in &uuids {
                query = query.bind(*uuid);
            }
            query.fetch_all(pool).await.map_err(ApiError::internal)?
        }
    };
    rows.into_iter().map(profile_of).collect()
}
