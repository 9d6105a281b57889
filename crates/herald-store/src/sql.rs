//! Running one statement text on either engine.
//!
//! Statements are written once, with PostgreSQL's `$1` placeholders; on SQLite they become
//! `?1` (the same numbered form). Times are epoch milliseconds ([`now_ms`]) on both engines.

use std::time::{SystemTime, UNIX_EPOCH};

/// The statement for SQLite: `$N` placeholders become `?N`. Statements never contain `$`
/// otherwise.
pub fn for_sqlite(sql: &str) -> String {
    sql.replace('$', "?")
}

/// Milliseconds since the Unix epoch, from this machine's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Evaluates `$body` with `$pool` the engine's pool and `$sql` a function from statement text
/// (with `$N` placeholders) to what the engine runs. The calling crate depends on `sqlx`.
#[macro_export]
macro_rules! on_store {
    ($store:expr, $pool:ident, $sql:ident => $body:expr) => {
        match $store {
            $crate::Store::Postgres($pool) => {
                let $sql = |text: &str| sqlx::AssertSqlSafe(text.to_owned());
                $body
            }
            $crate::Store::Sqlite($pool) => {
                let $sql = |text: &str| sqlx::AssertSqlSafe($crate::sql::for_sqlite(text));
                $body
            }
        }
    };
}

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
}
