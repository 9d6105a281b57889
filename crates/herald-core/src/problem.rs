//! [`ApiError`]: the one error type of every Herald HTTP API, answered as RFC 9457
//! `application/problem+json`.
//!
//! A body looks like this:
//!
//! ```json
//! {
//!   "type": "urn:herald:problem:invalid_input",
//!   "title": "The request is not valid",
//!   "status": 422,
//!   "detail": "2 fields are not valid",
//!   "code": "invalid_input",
//!   "correlation_id": "0193…",
//!   "errors": [{ "pointer": "/source", "detail": "is required" }]
//! }
//! ```
//!
//! `code` is stable and meant for programs; `title` and `detail` are for people. Client errors
//! say exactly what is wrong. Server errors say nothing about internals: the whole error chain
//! goes to the log, tagged with the correlation id that the body also carries.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use axum::http::{HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::correlation;

/// The media type of problem bodies.
pub const CONTENT_TYPE: &str = "application/problem+json";

type BoxError = Box<dyn StdError + Send + Sync>;

/// An error an HTTP handler returns. See the [module docs](self).
///
/// Boxed inside, so `Result<T, ApiError>` stays one pointer wide on the happy path.
pub struct ApiError(Box<Inner>);

struct Inner {
    status: StatusCode,
    code: Cow<'static, str>,
    title: Cow<'static, str>,
    detail: Option<String>,
    errors: Vec<FieldError>,
    headers: Vec<(HeaderName, HeaderValue)>,
    source: Option<BoxError>,
}

/// One problem with one part of the input, located by a JSON pointer (RFC 6901) into the
/// request body, or by `#/query/<name>` or `#/header/<name>` for other parts of the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Where the problem is.
    pub pointer: String,
    /// What is wrong there.
    pub detail: String,
}

impl FieldError {
    /// A problem at `pointer`.
    pub fn new(pointer: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            pointer: pointer.into(),
            detail: detail.into(),
        }
    }
}

impl ApiError {
    /// An error with the given status, stable code and human title.
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        title: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self(Box::new(Inner {
            status,
            code: code.into(),
            title: title.into(),
            detail: None,
            errors: Vec::new(),
            headers: Vec::new(),
            source: None,
        }))
    }

    /// Adds a sentence for people about this occurrence.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.0.detail = Some(detail.into());
        self
    }

    /// Adds per-field problems.
    #[must_use]
    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.0.errors = errors;
        self
    }

    /// Adds a response header (for example `Retry-After`).
    #[must_use]
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.0.headers.push((name, value));
        self
    }

    /// 400: the request cannot be understood.
    pub fn bad_request(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, "Bad request").with_detail(detail)
    }

    /// 422: the request is well-formed but its content is not valid; `errors` say where.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.len() {
            1 => format!("{}: {}", errors[0].pointer, errors[0].detail),
            n => format!("{n} fields are not valid"),
        };
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_input",
            "The request is not valid",
        )
        .with_detail(detail)
        .with_errors(errors)
    }

    /// 401: credentials are missing or wrong.
    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Authentication required",
        )
        .with_detail(detail)
        .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    /// 404: the named thing does not exist.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "Not found").with_detail(detail)
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(code: impl Into<Cow<'static, str>>, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, "Conflict").with_detail(detail)
    }

    /// 503: a dependency is unavailable; the client may retry.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
        )
        .with_detail(detail)
    }

    /// 500: something broke inside. `source` is logged, never shown to the client.
    pub fn internal(source: impl Into<BoxError>) -> Self {
        let mut error = Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
        )
        .with_detail(
            "The server failed to handle the request; quote the correlation id when reporting it.",
        );
        error.0.source = Some(source.into());
        error
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The stable machine-readable code.
    pub fn code(&self) -> &str {
        &self.0.code
    }

    /// The per-field problems.
    pub fn errors(&self) -> &[FieldError] {
        &self.0.errors
    }
}

/// Displays an error and all its sources as `outer: cause: root cause`.
struct Chain<'a>(&'a (dyn StdError + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(cause) = next {
            write!(f, ": {cause}")?;
            next = cause.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inner = &self.0;
        f.debug_struct("ApiError")
            .field("status", &inner.status.as_u16())
            .field("code", &inner.code)
            .field("detail", &inner.detail)
            .field("errors", &inner.errors)
            .field(
                "source",
                &inner.source.as_deref().map(|s| Chain(s).to_string()),
            )
            .finish()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.0.status.as_u16(), self.0.code)?;
        if let Some(detail) = &self.0.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl StdError for ApiError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

/// The body of every error answer (`application/problem+json`, RFC 9457), as the API
/// documentation shows it. [`ApiError`] writes it.
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDoc {
    /// A URI naming the kind of problem (`urn:herald:problem:<code>`).
    #[schema(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status.
    pub status: u16,
    /// What went wrong this time.
    pub detail: Option<String>,
    /// A stable, machine-readable code (`invalid_input`, `not_found`…).
    pub code: String,
    /// The request's correlation id, to find it in the logs.
    pub correlation_id: Option<String>,
    /// Every problem with the input, each located by a pointer.
    pub errors: Option<Vec<FieldError>>,
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    correlation_id: Option<String>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    errors: &'a [FieldError],
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let this = *self.0;
        if let Some(source) = &this.source {
            tracing::error!(code = %this.code, error = %Chain(source.as_ref()), "request failed");
        } else if this.status.is_server_error() {
            tracing::error!(code = %this.code, detail = ?this.detail, "request failed");
        }
        let body = ProblemBody {
            kind: format!("urn:herald:problem:{}", this.code),
            title: &this.title,
            status: this.status.as_u16(),
            detail: this.detail.as_deref(),
            code: &this.code,
            correlation_id: correlation::current().map(|id| id.to_string()),
            errors: &this.errors,
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_else(|_| {
            br#"{"type":"urn:herald:problem:internal","title":"Internal server error","status":500,"code":"internal"}"#.to_vec()
        });
        let mut response = (
            this.status,
            [(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))],
            bytes,
        )
            .into_response();
        response.headers_mut().extend(this.headers);
        response
    }
}

/// Router fallback for paths no route matches: 404 problem+json.
pub async fn route_not_found(uri: Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "route_not_found", "Not found")
        .with_detail(format!("no route for {}", uri.path()))
}

/// Router fallback for a known path with the wrong method: 405 problem+json.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "Method not allowed",
    )
    .with_detail(format!("{method} is not allowed on {}", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CorrelationId;

    async fn body_of(error: ApiError) -> (StatusCode, Response, serde_json::Value) {
        let id = CorrelationId::parse("test-correlation").unwrap();
        let response = correlation::scope(id, async { error.into_response() }).await;
        let status = response.status();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap();
        (
            status,
            Response::from_parts(parts, axum::body::Body::empty()),
            json,
        )
    }

    #[tokio::test]
    async fn validation_error_body() {
        let error = ApiError::validation(vec![
            FieldError::new("/source", "is required"),
            FieldError::new("/type", "must not be empty"),
        ]);
        let (status, response, body) = body_of(error).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(response.headers()[header::CONTENT_TYPE], CONTENT_TYPE);
        insta::assert_json_snapshot!(body, @r#"
        {
          "code": "invalid_input",
          "correlation_id": "test-correlation",
          "detail": "2 fields are not valid",
          "errors": [
            {
              "detail": "is required",
              "pointer": "/source"
            },
            {
              "detail": "must not be empty",
              "pointer": "/type"
            }
          ],
          "status": 422,
          "title": "The request is not valid",
          "type": "urn:herald:problem:invalid_input"
        }
        "#);
    }

    #[tokio::test]
    async fn internal_error_hides_its_source() {
        let cause = std::io::Error::other("disk on fire at /var/secret/path");
        let (status, _, body) = body_of(ApiError::internal(cause)).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!body.to_string().contains("disk on fire"), "{body}");
        assert_eq!(body["code"], "internal");
        assert_eq!(body["correlation_id"], "test-correlation");
    }

    #[tokio::test]
    async fn unauthorized_asks_for_a_bearer_token() {
        let (status, response, body) = body_of(ApiError::unauthorized("no key")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(body["detail"], "no key");
    }

    #[test]
    fn display_and_source_chain() {
        let error = ApiError::internal(std::io::Error::other("root"));
        assert_eq!(
            error.to_string(),
            "500 internal: The server failed to handle the request; quote the correlation id when reporting it."
        );
        assert_eq!(error.source().unwrap().to_string(), "root");
    }
}
