//! Throw-away PostgreSQL databases, for tests and benchmarks that each need an empty one.
//!
//! [`create`] makes a database with a given name on a server and returns its URL; [`drop`]
//! removes it, disconnecting anyone still using it. Names are interpolated into SQL, so they
//! are checked to be plain identifiers first.

use std::str::FromStr;

use sqlx::{ConnectOptions, Connection};

use crate::StoreError;

fn check_name(name: &str) -> Result<(), StoreError> {
    let plain = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if plain {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "`{name}` cannot name a scratch database: use 1 to 63 lower-case letters, digits or `_`"
        )))
    }
}

/// Creates database `name` on the server at `server_url`; returns the new database's URL.
pub async fn create(server_url: &str, name: &str) -> Result<String, StoreError> {
    check_name(name)?;
    let options =
        sqlx::postgres::PgConnectOptions::from_str(server_url).map_err(StoreError::BadUrl)?;
    let mut admin = options.connect().await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await?;
    let _ = admin.close().await;
    Ok(options.database(name).to_url_lossy().to_string())
}

/// Drops database `name` on the server at `server_url`, if it exists.
pub async fn drop(server_url: &str, name: &str) -> Result<(), StoreError> {
    check_name(name)?;
    let mut admin = sqlx::PgConnection::connect(server_url).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await?;
    let _ = admin.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_names_are_accepted() {
        assert!(check_name("herald_test_0193abc").is_ok());
        for bad in [
            "",
            "Upper",
            "1st",
            "a-b",
            "x; DROP TABLE y",
            &"a".repeat(64),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
