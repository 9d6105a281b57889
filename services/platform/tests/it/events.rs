//! `/v1/events`: accepting, deduplicating, rejecting and fetching events.

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use herald_testing::{TestDb, on_both_stores};
use serde_json::{Value, json};

use crate::support::{app, call, count};

async fn post(app: &Router, content_type: &str, body: &Value) -> (StatusCode, Value) {
    call(app, "POST", "/events", Some(content_type), body.to_string()).await
}

fn event(id: &str) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "/orders", "type": "com.example.order.created",
        "partitionkey": "order-1", "data": {"total": 12.50}
    })
}

async fn accepts_one_event_and_serves_it_back(db: TestDb) {
    let app = app(&db).await;
    let (status, body) = post(&app, "application/cloudevents+json", &event("o-1")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let accepted = &body["data"][0];
    let id = accepted["id"].as_str().unwrap();
    assert!(id.starts_with("evt_"), "{body}");
    assert_eq!(accepted["source_id"], "o-1");
    assert_eq!(accepted["duplicate"], false);
    assert_eq!(count(db.store(), "events").await, 1);
    assert_eq!(count(db.store(), "outbox").await, 1);

    let (status, fetched) = call(&app, "GET", &format!("/events/{id}"), None, Body::empty()).await;
    assert_eq!(status, StatusCode::OK, "{fetched}");
    assert_eq!(fetched["id"], id);
    assert_eq!(fetched["event"]["id"], id, "the event carries Herald's id");
    assert_eq!(
        fetched["event"]["originalid"], "o-1",
        "and keeps the producer's"
    );
    assert_eq!(fetched["event"]["data"]["total"], 12.5);
    assert!(fetched["received_at"].as_str().unwrap().contains('T'));
}

async fn accepts_a_batch_in_order(db: TestDb) {
    let app = app(&db).await;
    let batch: Vec<Value> = (0..50).map(|i| event(&format!("b-{i}"))).collect();
    let (status, body) = post(&app, "application/cloudevents-batch+json", &json!(batch)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 50);
    for (i, accepted) in data.iter().enumerate() {
        assert_eq!(accepted["source_id"], format!("b-{i}"));
    }
    assert_eq!(count(db.store(), "outbox").await, 50);
    // A plain JSON array works too.
    let (status, _) = post(
        &app,
        "application/json",
        &json!([event("c-1"), event("c-2")]),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(count(db.store(), "events").await, 52);
}

async fn a_retried_event_is_not_written_twice(db: TestDb) {
    let app = app(&db).await;
    let (_, first) = post(&app, "application/json", &event("retry-me")).await;
    let (status, second) = post(
        &app,
        "application/json",
        &json!([event("retry-me"), event("new-one")]),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(second["data"][0]["id"], first["data"][0]["id"]);
    assert_eq!(second["data"][0]["duplicate"], true);
    assert_eq!(second["data"][1]["duplicate"], false);
    assert_eq!(count(db.store(), "events").await, 2);
    assert_eq!(
        count(db.store(), "outbox").await,
        2,
        "the duplicate was not published again"
    );
    // The same id from another source is another event.
    let mut other = event("retry-me");
    other["source"] = json!("/billing");
    let (_, third) = post(&app, "application/json", &other).await;
    assert_eq!(third["data"][0]["duplicate"], false);
}

async fn bad_input_is_a_problem_and_writes_nothing(db: TestDb) {
    let app = app(&db).await;
    let (status, body) = call(
        &app,
        "POST",
        "/events",
        Some("application/json"),
        r#"{"id": "x", "#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "malformed_json");

    let mut bad = event("bad-1");
    bad.as_object_mut().unwrap().remove("source");
    bad["time"] = json!("last tuesday");
    let (status, body) = post(&app, "application/json", &json!([event("good-1"), bad])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let pointers: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(pointers, ["/1/source", "/1/time"], "{body}");

    let (status, body) = post(&app, "text/plain", &event("t-1")).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    let (status, body) = post(&app, "application/cloudevents-batch+json", &event("t-2")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "batch_expected");
    let (status, _) = post(&app, "application/json", &json!([])).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let too_many: Vec<Value> = (0..1001).map(|i| json!({"id": i})).collect();
    let (status, body) = post(&app, "application/json", &json!(too_many)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["detail"].as_str().unwrap().contains("limit is 1000"),
        "{body}"
    );

    let mut huge = event("huge");
    huge["data"] = json!("x".repeat(300 * 1024));
    let (status, body) = post(&app, "application/json", &huge).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("the limit is 262144"),
        "{body}"
    );
    let mut over_body_limit = event("over");
    over_body_limit["data"] = json!("x".repeat(2 * 1024 * 1024));
    let (status, body) = post(&app, "application/json", &over_body_limit).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");

    assert_eq!(
        count(db.store(), "events").await,
        0,
        "no bad request wrote anything"
    );
    assert_eq!(count(db.store(), "outbox").await, 0);
}

async fn fetching_unknown_or_malformed_ids(db: TestDb) {
    let app = app(&db).await;
    let unknown = herald_core::id::EventId::new();
    let (status, body) = call(
        &app,
        "GET",
        &format!("/events/{unknown}"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "not_found");
    let (status, body) = call(&app, "GET", "/events/sub_123", None, Body::empty()).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"][0]["pointer"], "#/path/id");
}

on_both_stores!(
    accepts_one_event_and_serves_it_back,
    accepts_a_batch_in_order,
    a_retried_event_is_not_written_twice,
    bad_input_is_a_problem_and_writes_nothing,
    fetching_unknown_or_malformed_ids,
);
