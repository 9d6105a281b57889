//! The migration runner.
//!
//! Each component that stores data owns its schema as a [`MigrationSet`]: numbered SQL scripts
//! for PostgreSQL and for SQLite, embedded in the binary with `include_str!`. [`migrate`]
//! applies what is missing, in order, each script in its own transaction together with its
//! row in `herald_migrations` (so a crash leaves no half-applied version).
//!
//! It refuses to start when the database disagrees with this build: a script that was changed
//! after it was applied (checksum mismatch), or a version the database has and this build does
//! not know (the database was migrated by a newer Herald). Several instances may start at once:
//! PostgreSQL serialises them with an advisory lock; SQLite with `BEGIN IMMEDIATE`.

use sqlx::{Connection, Row};

use crate::{Store, StoreError};

/// One numbered schema change.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Starts at 1 and increases by 1 within a component.
    pub version: i64,
    /// A short description, e.g. `create outbox`.
    pub name: &'static str,
    /// The SQL, possibly several statements.
    pub sql: &'static str,
}

/// A component's migrations for both engines.
#[derive(Debug, Clone, Copy)]
pub struct MigrationSet {
    /// The component, e.g. `outbox`. Versions are numbered per component.
    pub component: &'static str,
    /// Scripts for PostgreSQL.
    pub postgres: &'static [Migration],
    /// Scripts for SQLite.
    pub sqlite: &'static [Migration],
}

/// A migration that [`migrate`] applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The component.
    pub component: &'static str,
    /// The version.
    pub version: i64,
    /// Its name.
    pub name: &'static str,
}

/// An arbitrary, fixed key for PostgreSQL's advisory lock: "herald migrations".
const LOCK_KEY: i64 = 0x6865_7261_6c64_6d67;

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS herald_migrations (
    component TEXT NOT NULL,
    version BIGINT NOT NULL,
    name TEXT NOT NULL,
    checksum BIGINT NOT NULL,
    applied_at TEXT NOT NULL,
    PRIMARY KEY (component, version)
)";

/// FNV-1a, 64 bits: enough to notice an edited script.
fn checksum(sql: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in sql.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

/// What the database says is applied for one component: (version, checksum).
type AppliedRows = Vec<(i64, i64)>;

/// Decides what to apply, or why not to.
fn plan<'m>(
    component: &str,
    known: &'m [Migration],
    applied: &AppliedRows,
) -> Result<Vec<&'m Migration>, StoreError> {
    for window in known.windows(2) {
        if window[1].version != window[0].version + 1 {
            return Err(StoreError::Migration(format!(
                "the {component} migrations of this build are not numbered consecutively ({} then {})",
                window[0].version, window[1].version
            )));
        }
    }
    for (version, sum) in applied {
        match known.iter().find(|m| m.version == *version) {
            None => {
                return Err(StoreError::Migration(format!(
                    "the database has {component} migration {version}, which this build does not know: it was migrated by a newer Herald; run that version or newer"
                )));
            }
            Some(migration) if checksum(migration.sql) != *sum => {
                return Err(StoreError::Migration(format!(
                    "{component} migration {version} ({}) was changed after it was applied to this database",
                    migration.name
                )));
            }
            Some(_) => {}
        }
    }
    Ok(known
        .iter()
        .filter(|m| !applied.iter().any(|(version, _)| *version == m.version))
        .collect())
}

fn now_text() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}", since.as_secs())
}

/// Applies every missing migration of `sets`, in order; returns what it applied.
pub async fn migrate(store: &Store, sets: &[&MigrationSet]) -> Result<Vec<Applied>, StoreError> {
    match store {
        Store::Postgres(pool) => {
            let mut conn = pool.acquire().await?;
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(LOCK_KEY)
                .execute(&mut *conn)
                .await?;
            let result = migrate_postgres(&mut conn, sets).await;
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(LOCK_KEY)
                .execute(&mut *conn)
                .await;
            let applied = result?;
            unlocked?;
            Ok(applied)
        }
        Store::Sqlite(pool) => {
            let mut conn = pool.acquire().await?;
            migrate_sqlite(&mut conn, sets).await
        }
    }
}

async fn migrate_postgres(
    conn: &mut sqlx::PgConnection,
    sets: &[&MigrationSet],
) -> Result<Vec<Applied>, StoreError> {
    sqlx::raw_sql(CREATE_TABLE).execute(&mut *conn).await?;
    let mut done = Vec::new();
    for set in sets {
        let rows = sqlx::query(
            "SELECT version, checksum FROM herald_migrations WHERE component = $1 ORDER BY version",
        )
        .bind(set.component)
        .fetch_all(&mut *conn)
        .await?;
        let applied: AppliedRows = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        for migration in plan(set.component, set.postgres, &applied)? {
            let mut tx = conn.begin().await?;
            sqlx::raw_sql(migration.sql)
                .execute(&mut *tx)
                .await
                .map_err(|err| failed(set, migration, &err))?;
            sqlx::query("INSERT INTO herald_migrations (component, version, name, checksum, applied_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(set.component)
                .bind(migration.version)
                .bind(migration.name)
                .bind(checksum(migration.sql))
                .bind(now_text())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            done.push(applied_entry(set, migration));
        }
    }
    Ok(done)
}

async fn migrate_sqlite(
    conn: &mut sqlx::SqliteConnection,
    sets: &[&MigrationSet],
) -> Result<Vec<Applied>, StoreError> {
    sqlx::raw_sql(CREATE_TABLE).execute(&mut *conn).await?;
    let mut done = Vec::new();
    for set in sets {
        // One transaction per version; each decides inside the write lock what is missing, so
        // two processes cannot both apply a version.
        loop {
            let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
            let rows = sqlx::query("SELECT version, checksum FROM herald_migrations WHERE component = ?1 ORDER BY version")
                .bind(set.component)
                .fetch_all(&mut *tx)
                .await?;
            let applied: AppliedRows = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            let Some(migration) = plan(set.component, set.sqlite, &applied)?.first().copied()
            else {
                tx.commit().await?;
                break;
            };
            sqlx::raw_sql(migration.sql)
                .execute(&mut *tx)
                .await
                .map_err(|err| failed(set, migration, &err))?;
            sqlx::query("INSERT INTO herald_migrations (component, version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4, ?5)")
                .bind(set.component)
                .bind(migration.version)
                .bind(migration.name)
                .bind(checksum(migration.sql))
                .bind(now_text())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            done.push(applied_entry(set, migration));
        }
    }
    Ok(done)
}

fn applied_entry(set: &MigrationSet, migration: &Migration) -> Applied {
    tracing::info!(
        component = set.component,
        version = migration.version,
        name = migration.name,
        "applied migration"
    );
    Applied {
        component: set.component,
        version: migration.version,
        name: migration.name,
    }
}

fn failed(set: &MigrationSet, migration: &Migration, err: &sqlx::Error) -> StoreError {
    StoreError::Migration(format!(
        "{} migration {} ({}) failed: {err}",
        set.component, migration.version, migration.name
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Migration = Migration {
        version: 1,
        name: "a",
        sql: "CREATE TABLE a (x INT)",
    };
    const B: Migration = Migration {
        version: 2,
        name: "b",
        sql: "CREATE TABLE b (x INT)",
    };

    #[test]
    fn plans_only_what_is_missing() {
        let todo = plan("c", &[A, B], &vec![(1, checksum(A.sql))]).unwrap();
        assert_eq!(todo.iter().map(|m| m.version).collect::<Vec<_>>(), [2]);
        assert!(
            plan(
                "c",
                &[A, B],
                &vec![(1, checksum(A.sql)), (2, checksum(B.sql))]
            )
            .unwrap()
            .is_empty()
        );
    }

    #[test]
    fn refuses_edited_unknown_and_gapped_migrations() {
        let edited = plan("c", &[A, B], &vec![(1, 42)]).unwrap_err();
        assert!(
            edited.to_string().contains("c migration 1 (a) was changed"),
            "{edited}"
        );
        let newer = plan("c", &[A], &vec![(1, checksum(A.sql)), (2, 7)]).unwrap_err();
        assert!(
            newer.to_string().contains("migrated by a newer Herald"),
            "{newer}"
        );
        let gap = Migration { version: 3, ..B };
        assert!(
            plan("c", &[A, gap], &vec![])
                .unwrap_err()
                .to_string()
                .contains("not numbered consecutively")
        );
    }
}
