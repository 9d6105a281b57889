//! `GET /v1/users/{id}` and the batch lookup, in-process over the router.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use herald_core::id::UserId;
use herald_testing::{TestDb, on_both_stores};
use serde_json::Value;
use tower::ServiceExt;

use crate::support::Setup;

on_both_stores!(one_user, many_users, bad_lookups_are_problems);

async fn get(app: &Router, path: &str) -> (StatusCode, Value) {
    let request = Request::builder().uri(path).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    if status.is_client_error() {
        assert!(
            content_type.starts_with("application/problem+json"),
            "a {status} must be problem+json, not {content_type:?}"
        );
    }
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn one_user(db: TestDb) {
    let setup = Setup::new(&db).await;
    let app = herald_users::router(setup.state.clone());
    let id = setup.register("grace@example.com").await;
    let (status, body) = get(&app, &format!("/users/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["id"], id.to_string());
    assert_eq!(body["email"], "grace@example.com");
    assert_eq!(body["version"], 1);
    assert!(body["created_at"].as_str().unwrap().contains('T'));

    let (status, body) = get(&app, &format!("/users/{}", UserId::new())).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "not_found");
}

async fn many_users(db: TestDb) {
    let setup = Setup::new(&db).await;
    let app = herald_users::router(setup.state.clone());
    let a = setup.register("a@example.com").await;
    let b = setup.register("b@example.com").await;
    let nobody = UserId::new();
    let (status, body) = get(&app, &format!("/users?ids={b},{nobody},{a},{b}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let ids: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [b.to_string(), a.to_string()],
        "request order, each once"
    );
    assert_eq!(body["missing"], serde_json::json!([nobody.to_string()]));
}

async fn bad_lookups_are_problems(db: TestDb) {
    let setup = Setup::new(&db).await;
    let app = herald_users::router(setup.state.clone());
    let (status, body) = get(&app, "/users/evt_068k2m3v5c7q0w1x2y3z4a5b6c").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["pointer"], "#/path/id");

    let good = UserId::new();
    let (status, body) = get(&app, &format!("/users?ids={good},nope,usr_x")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let pointers: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["#/query/ids/1", "#/query/ids/2"]);

    let too_many: Vec<String> = (0..101).map(|_| UserId::new().to_string()).collect();
    let (status, body) = get(&app, &format!("/users?ids={}", too_many.join(","))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["errors"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("limit is 100")
    );

    for path in ["/users?ids=", "/users?ids=,,"] {
        let (status, body) = get(&app, path).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {body}");
    }
    for path in [
        "/users",
        "/users?id=usr_x",
        &format!("/users?ids={good}&extra=1"),
    ] {
        let (status, body) = get(&app, path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert_eq!(body["code"], "invalid_query");
    }
}
