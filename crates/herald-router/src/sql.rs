//! Running one statement text on either engine.
//!
//! The engine-neutral helpers live in [`herald_store::sql`]; these are the router's own: times
//! as RFC 3339 for answers, and [`on_tx!`] for a consumer's transaction.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub(crate) use herald_store::on_store;
pub(crate) use herald_store::sql::{for_sqlite, now_ms};

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

pub(crate) use on_tx;

#[cfg(test)]
mod tests {
    use super::*;

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
