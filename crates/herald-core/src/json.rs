//! [`ApiJson`]: axum's JSON extractor with problem+json rejections.
//!
//! Every JSON endpoint takes its body through this type, so a wrong content type, a body too
//! large, malformed JSON and JSON of the wrong shape all get a 4xx problem body that says what
//! is wrong (with the position or the field), never axum's plain-text default.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use crate::problem::{ApiError, FieldError};

/// Extracts a JSON body of type `T`; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(rejection_to_problem(rejection)),
        }
    }
}

fn rejection_to_problem(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
        )
        .with_detail("the body must be JSON, sent with `content-type: application/json`"),
        JsonRejection::JsonSyntaxError(err) => ApiError::bad_request(
            "malformed_json",
            format!("the body is not valid JSON: {}", root_cause(&err)),
        ),
        JsonRejection::JsonDataError(err) => {
            let message = root_cause(&err);
            let (pointer, detail) = split_serde_path(&message);
            ApiError::validation(vec![FieldError::new(pointer, detail)])
        }
        JsonRejection::BytesRejection(bytes) => ApiError::from(bytes),
        other => ApiError::new(other.status(), "unreadable_body", "Bad request")
            .with_detail(format!("the body could not be read: {}", other.body_text())),
    }
}

impl From<axum::extract::rejection::BytesRejection> for ApiError {
    /// For handlers that read the raw body: a body over the limit is a 413 problem.
    fn from(rejection: axum::extract::rejection::BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "Payload too large",
            )
            .with_detail("the body is larger than this endpoint accepts")
        } else {
            ApiError::new(rejection.status(), "unreadable_body", "Bad request").with_detail(
                format!("the body could not be read: {}", rejection.body_text()),
            )
        }
    }
}

fn root_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = error;
    while let Some(next) = current.source() {
        current = next;
    }
    current.to_string()
}

/// axum reports data errors as `path.to.field: message`; turn the path into a JSON pointer.
fn split_serde_path(message: &str) -> (String, String) {
    match message.split_once(": ") {
        Some((path, detail)) if !path.contains(' ') && path != "." => {
            let pointer = path
                .split('.')
                .map(|part| {
                    // `items[2]` becomes `items/2`.
                    part.replace('[', "/").replace(']', "")
                })
                .collect::<Vec<_>>()
                .join("/");
            (format!("/{pointer}"), detail.to_owned())
        }
        _ => (String::new(), message.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request as HttpRequest, header};
    use axum::routing::post;
    use tower::ServiceExt;

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Widget {
        name: String,
        sizes: Vec<u8>,
    }

    async fn accept(ApiJson(_): ApiJson<Widget>) -> StatusCode {
        StatusCode::NO_CONTENT
    }

    async fn send(
        content_type: Option<&str>,
        body: &'static str,
    ) -> (StatusCode, serde_json::Value) {
        let app = Router::new()
            .route("/widgets", post(accept))
            .layer(axum::extract::DefaultBodyLimit::max(64));
        let mut request = HttpRequest::post("/widgets");
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        let response = app
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return (status, serde_json::Value::Null);
        }
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            crate::problem::CONTENT_TYPE
        );
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn accepts_good_json() {
        let (status, _) = send(Some("application/json"), r#"{"name":"a","sizes":[1]}"#).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn malformed_json_is_a_400_problem() {
        let (status, body) = send(Some("application/json"), r#"{"name": "a", "#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["code"], "malformed_json");
        assert!(
            body["detail"].as_str().unwrap().contains("line 1"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn wrong_shape_names_the_field() {
        let (status, body) =
            send(Some("application/json"), r#"{"name":"a","sizes":[1,300]}"#).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["errors"][0]["pointer"], "/sizes/1");
        let (_, body) = send(Some("application/json"), r#"{"sizes":[]}"#).await;
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("missing field `name`"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn wrong_content_type_is_415() {
        let (status, body) = send(Some("text/plain"), r#"{"name":"a","sizes":[]}"#).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(body["code"], "unsupported_media_type");
        let (status, _) = send(None, r#"{"name":"a","sizes":[]}"#).await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[tokio::test]
    async fn oversized_body_is_413() {
        let big = r#"{"name":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","sizes":[]}"#;
        let (status, body) = send(Some("application/json"), big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(body["code"], "payload_too_large");
    }
}
