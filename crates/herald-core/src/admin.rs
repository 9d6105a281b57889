//! The admin API key, which the platform API requires as `Authorization: Bearer <key>`.
//!
//! `herald dev` generates one on first start; `herald serve` reads it from configuration.
//! Comparison takes the same time whatever the presented key, so the key can't be guessed a
//! byte at a time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::problem::ApiError;
use crate::secret::Secret;

/// The shortest admin key accepted from configuration.
pub const MIN_LEN: usize = 32;

/// Text every generated key starts with, so a leaked one is easy to recognise.
const PREFIX: &str = "herald_ak_";

/// A valid admin key. Cheap to clone; never prints.
#[derive(Clone, Debug)]
pub struct AdminToken(Arc<Secret<String>>);

/// Why a configured admin key is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminTokenError {
    /// Too short to resist guessing.
    #[error("must be at least {MIN_LEN} characters long")]
    TooShort,
    /// Contains characters that cannot travel in an HTTP header.
    #[error("must contain only visible ASCII characters (no spaces)")]
    BadCharacters,
}

impl AdminToken {
    /// Checks a configured key.
    pub fn new(key: String) -> Result<Self, AdminTokenError> {
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AdminTokenError::BadCharacters);
        }
        if key.len() < MIN_LEN {
            return Err(AdminTokenError::TooShort);
        }
        Ok(Self(Arc::new(Secret::new(key))))
    }

    /// A new random key: 256 bits from the operating system's generator.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        let key = format!("{PREFIX}{}", crate::base32::encode(&bytes));
        Ok(Self(Arc::new(Secret::new(key))))
    }

    /// The key itself, to store or show once.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }

    /// Whether `headers` (HTTP headers or gRPC metadata) carry this key as
    /// `authorization: Bearer <key>`.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(Refusal::Missing)?;
        if self.matches(presented.trim()) {
            Ok(())
        } else {
            Err(Refusal::Invalid)
        }
    }

    /// Whether `presented` is this key, in time independent of where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let expected = self.0.expose().as_bytes();
        let presented = presented.as_bytes();
        let mut difference = u8::from(expected.len() != presented.len());
        for (index, &byte) in expected.iter().enumerate() {
            difference |= byte ^ presented.get(index).copied().unwrap_or(0);
        }
        difference == 0
    }
}

/// Middleware: lets the request through only with `Authorization: Bearer <admin key>`.
///
/// Use with `axum::middleware::from_fn_with_state(token, require_admin)`.
pub async fn require_admin(
    State(token): State<AdminToken>,
    request: Request,
    next: Next,
) -> Response {
    match token.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(Refusal::Invalid) => {
            ApiError::unauthorized("the admin key is not valid").into_response()
        }
        Err(Refusal::Missing) => {
            ApiError::unauthorized("send the admin key as `Authorization: Bearer <key>`")
                .into_response()
        }
    }
}

/// Why [`AdminToken::check`] refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer …` header.
    Missing,
    /// A key that is not this one.
    Invalid,
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request as HttpRequest, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt;

    #[test]
    fn configured_keys_are_checked() {
        assert_eq!(
            AdminToken::new("short".into()).unwrap_err(),
            AdminTokenError::TooShort
        );
        assert_eq!(
            AdminToken::new(format!("{} x", "a".repeat(40))).unwrap_err(),
            AdminTokenError::BadCharacters
        );
        assert!(AdminToken::new("a".repeat(MIN_LEN)).is_ok());
    }

    #[test]
    fn generated_keys_are_long_distinct_and_redacted() {
        let a = AdminToken::generate().unwrap();
        let b = AdminToken::generate().unwrap();
        assert!(a.expose().starts_with(PREFIX));
        assert!(a.expose().len() >= MIN_LEN);
        assert_ne!(a.expose(), b.expose());
        assert!(!format!("{a:?}").contains(a.expose()));
        assert!(AdminToken::new(a.expose().to_owned()).is_ok());
    }

    #[test]
    fn matches_only_the_exact_key() {
        let token = AdminToken::new("k".repeat(40)).unwrap();
        assert!(token.matches(&"k".repeat(40)));
        assert!(!token.matches(&"k".repeat(39)));
        assert!(!token.matches(&"k".repeat(41)));
        assert!(!token.matches(""));
        assert!(!token.matches(&format!("{}j", "k".repeat(39))));
    }

    #[tokio::test]
    async fn middleware_guards_routes() {
        let token = AdminToken::generate().unwrap();
        let app = Router::new()
            .route("/secret", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(
                token.clone(),
                require_admin,
            ));
        let call = |auth: Option<String>| {
            let app = app.clone();
            async move {
                let mut request = HttpRequest::get("/secret");
                if let Some(auth) = auth {
                    request = request.header(header::AUTHORIZATION, auth);
                }
                app.oneshot(request.body(Body::empty()).unwrap())
                    .await
                    .unwrap()
                    .status()
            }
        };
        assert_eq!(call(None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(
            call(Some("Bearer wrong".into())).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(Some(format!("Basic {}", token.expose()))).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            call(Some(format!("Bearer {}", token.expose()))).await,
            StatusCode::OK
        );
    }
}
