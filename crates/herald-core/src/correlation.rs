//! The correlation id: one string that ties together everything done for one request.
//!
//! It arrives in the `x-correlation-id` header (or is generated as a UUIDv7), is echoed on the
//! response, sits on every span of the request, and travels on in the `correlationid` extension
//! of events, broker headers and stored rows. Inside a request it is kept in a task-local, so
//! code far from the HTTP layer (an error body, an outbox write) can read it with [`current`]
//! without threading it through every signature.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

/// The HTTP header that carries the correlation id, in both directions.
pub const HEADER: &str = "x-correlation-id";

/// The longest correlation id we accept; longer ones are replaced by a generated id.
pub const MAX_LEN: usize = 128;

/// A validated correlation id. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CorrelationId(Arc<str>);

impl CorrelationId {
    /// A fresh id (a UUIDv7 in its usual hyphenated form).
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().hyphenated().to_string().into())
    }

    /// Accepts `text` if it is 1 to [`MAX_LEN`] characters of ASCII letters, digits and
    /// `-_.:/+=@`. Anything else could break log lines or header values, so it is refused.
    pub fn parse(text: &str) -> Option<Self> {
        let allowed = |b: u8| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(&b);
        (!text.is_empty() && text.len() <= MAX_LEN && text.bytes().all(allowed))
            .then(|| Self(text.into()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CorrelationId({})", self.0)
    }
}

tokio::task_local! {
    static CURRENT: CorrelationId;
}

/// The correlation id of the request this task is serving, if any.
pub fn current() -> Option<CorrelationId> {
    CURRENT.try_with(Clone::clone).ok()
}

/// Runs `future` with `id` as the [`current`] correlation id.
pub async fn scope<F: Future>(id: CorrelationId, future: F) -> F::Output {
    CURRENT.scope(id, future).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_common_forms_and_refuses_the_rest() {
        for good in [
            "abc",
            "2f1c9a1e-5b7d-4f1e-9c55-0a1b2c3d4e5f",
            "req:42/a=b+c@d_e.f",
        ] {
            assert_eq!(CorrelationId::parse(good).unwrap().as_str(), good);
        }
        let too_long = "a".repeat(MAX_LEN + 1);
        for bad in [
            "",
            "has space",
            "new\nline",
            "quote\"",
            "é",
            too_long.as_str(),
        ] {
            assert!(
                CorrelationId::parse(bad).is_none(),
                "{bad:?} should be refused"
            );
        }
        assert!(CorrelationId::parse(&"a".repeat(MAX_LEN)).is_some());
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = CorrelationId::generate();
        let b = CorrelationId::generate();
        assert_ne!(a, b);
        assert!(CorrelationId::parse(a.as_str()).is_some());
    }

    #[tokio::test]
    async fn current_is_set_only_inside_scope() {
        assert!(current().is_none());
        let id = CorrelationId::generate();
        let seen = scope(id.clone(), async { current() }).await;
        assert_eq!(seen, Some(id));
        assert!(current().is_none());
    }
}
