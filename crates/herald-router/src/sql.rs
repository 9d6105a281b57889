//! Running one statement text on either engine.
//!
//! Statements are written once, with PostgreSQL's `$1` placeholders; on SQLite they become
//! `?1` (the same numbered form). Times are epoch milliseconds ([`now_ms`]) on both engines.

use std::time::{SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// The statement for SQLite: `$N` placeholders become `?N`. Statements never contain `$`
/// otherwise.
pub(crate) fn for_sqlite(sql: &str) -> String {
    sql.replace('$', "?")
}

/// Milliseconds since the Unix epoch, from this machine's clock.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `ms` as RFC 3339 text, for answers (UTC, millisecond precision).
pub(crate) fn rfc3339(ms: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// Parses RFC 3339 text into epoch milliseconds.
pub(crate) fn parse_rfc3339(text: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Evaluates `$body` with `$pool` the engine's pool and `$sql` a function from statement text
/// to what the engine runs.
macro_rules! on_store {
    ($store:expr, $pool:ident, $sql:ident => $body:expr) => {
        match $store {
            herald_store::Store::Postgres($pool) => {
                let $sql = |text: &str| sqlx::AssertSqlSafe(text.to_owned());
                $body
            }
            herald_store::Store::Sqlite($pool) => {
                let $sql = |text: &str| sqlx::AssertSqlSafe($crate::sql::for_sqlite(text));
                $body
            }
        }
    };
}

/// [`on_store!`] for a consumer's transaction ([`herald_inbox::Tx`]): `$conn` is the
/// connection.
macro_rules! on_tx {
    ($tx:expr, $conn:ident, $sql:ident => $body:expr) => {
        match $tx {
            herald_inbox::Tx::Postgres($conn) => {
                let $sql = |text: &str| sqlx::AssertSqlSafe(text.to_owned());
                $body
            }
            herald_inbox::Tx::Sqlite($conn) => {
                let $sql = |text: &str| sqlx::AssertSqlSafe($crate::sql::for_sqlite(text));
                $body
            }
        }
    };
}

pub(crate) use {on_store, on_tx};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_numbered_question_marks() {
        assert_eq!(
            for_sqlite("SELECT a FROM t WHERE b = $1 AND c < $2"),
            "SELECT a FROM t WHERE b = ?1 AND c < ?2"
        );
    }

    #[test]
    fn times_print_and_parse_as_rfc3339() {
        assert_eq!(rfc3339(1_614_265_330_123), "2021-02-25T15:02:10.123Z");
        assert_eq!(
            parse_rfc3339("2021-02-25T15:02:10.123Z"),
            Some(1_614_265_330_123)
        );
        assert_eq!(
            parse_rfc3339("2021-02-25T16:02:10+01:00"),
            Some(1_614_265_330_000)
        );
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
