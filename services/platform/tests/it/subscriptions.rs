//! `/v1/subscriptions`: creating, reading, changing and deleting subscriptions, and rejecting
//! every kind of bad input at once without writing anything.

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use herald_core::id::{EventId, SubscriptionId};
use herald_testing::{TestDb, on_both_stores};
use serde_json::{Value, json};

use crate::support::{app, assert_invalid, call, count, get, parse_time, send};

/// A valid secret of 24 bytes (the shortest allowed).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn new_subscription(name: &str) -> Value {
    json!({
        "name": name,
        "event_types": ["orders.*"],
        "url": "https://example.com/hooks/orders",
    })
}

async fn create(app: &Router, body: &Value) -> Value {
    let (status, created) = send(app, "POST", "/subscriptions", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created
}

async fn list(app: &Router) -> Vec<Value> {
    let (status, body) = get(app, "/subscriptions").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].as_array().unwrap().clone()
}

async fn creates_with_defaults_and_a_generated_secret(db: TestDb) {
    let app = app(&db).await;
    let created = create(&app, &new_subscription("orders")).await;

    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("sub_"), "{created}");
    id.parse::<SubscriptionId>().unwrap();
    let secret = created["secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"), "{created}");
    herald_router::signature::SigningSecret::parse(secret).unwrap();
    assert_eq!(created["name"], "orders");
    assert_eq!(created["event_types"], json!(["orders.*"]));
    assert_eq!(created["url"], "https://example.com/hooks/orders");
    assert_eq!(created["pool"], "default");
    assert_eq!(created["fifo"], false);
    assert_eq!(created["max_attempts"], 10);
    assert_eq!(created["headers"], json!({}));
    assert_eq!(created["enabled"], true);
    assert_eq!(created["disabled_reason"], Value::Null);
    assert_eq!(created["created_at"], created["updated_at"]);
    parse_time(&created["created_at"]);
    assert_eq!(count(db.store(), "subscriptions").await, 1);

    let other = create(&app, &new_subscription("orders again")).await;
    assert_ne!(other["id"], created["id"]);
    assert_ne!(
        other["secret"], created["secret"],
        "each secret is generated anew"
    );
}

async fn creates_with_every_field_given(db: TestDb) {
    let app = app(&db).await;
    let created = create(
        &app,
        &json!({
            "name": "billing",
            "event_types": ["billing.invoice.*", "billing.**", "billing.invoice.*"],
            "url": "http://billing.internal:8080/hooks?tenant=acme",
            "pool": "default",
            "fifo": true,
            "max_attempts": 3,
            "headers": {"X-Tenant": "acme", "authorization": "Bearer abc"},
            "secret": SECRET,
        }),
    )
    .await;
    assert_eq!(created["secret"], SECRET, "a given secret is kept");
    assert_eq!(
        created["event_types"],
        json!(["billing.invoice.*", "billing.**"]),
        "a repeated pattern is kept once"
    );
    assert_eq!(
        created["url"],
        "http://billing.internal:8080/hooks?tenant=acme"
    );
    assert_eq!(created["fifo"], true);
    assert_eq!(created["max_attempts"], 3);
    assert_eq!(
        created["headers"],
        json!({"X-Tenant": "acme", "authorization": "Bearer abc"})
    );
    let (status, fetched) = get(
        &app,
        &format!("/subscriptions/{}", created["id"].as_str().unwrap()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(fetched, created);
}

async fn reads_lists_changes_and_deletes(db: TestDb) {
    let app = app(&db).await;
    let first = create(&app, &new_subscription("first")).await;
    let second = create(&app, &new_subscription("second")).await;
    let path = format!("/subscriptions/{}", first["id"].as_str().unwrap());

    let (status, fetched) = get(&app, &path).await;
    assert_eq!(status, StatusCode::OK, "{fetched}");
    assert_eq!(fetched, first);
    assert_eq!(
        list(&app).await,
        [first.clone(), second.clone()],
        "oldest first"
    );

    // Only the fields given change.
    let (status, changed) = send(
        &app,
        "PATCH",
        &path,
        &json!({"url": "https://example.org/new", "event_types": ["orders.created", "users.**"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["url"], "https://example.org/new");
    assert_eq!(
        changed["event_types"],
        json!(["orders.created", "users.**"])
    );
    for same in [
        "id",
        "name",
        "pool",
        "fifo",
        "max_attempts",
        "headers",
        "secret",
        "enabled",
        "created_at",
    ] {
        assert_eq!(changed[same], first[same], "{same} did not change");
    }
    assert!(parse_time(&changed["updated_at"]) >= parse_time(&first["updated_at"]));
    assert_eq!(get(&app, &path).await.1, changed, "the change is stored");

    // Every other field.
    let (status, changed) = send(
        &app,
        "PATCH",
        &path,
        &json!({
            "name": "renamed", "fifo": true, "max_attempts": 100,
            "headers": {"x-one": "1"}, "secret": SECRET,
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["name"], "renamed");
    assert_eq!(changed["fifo"], true);
    assert_eq!(changed["max_attempts"], 100);
    assert_eq!(changed["headers"], json!({"x-one": "1"}));
    assert_eq!(changed["secret"], SECRET);
    assert_eq!(
        changed["url"], "https://example.org/new",
        "kept from before"
    );
    let (status, changed) = send(&app, "PATCH", &path, &json!({"headers": {}})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        changed["headers"],
        json!({}),
        "headers are replaced as a whole"
    );

    // Off and on again.
    let (status, off) = send(&app, "PATCH", &path, &json!({"enabled": false})).await;
    assert_eq!(status, StatusCode::OK, "{off}");
    assert_eq!(off["enabled"], false);
    assert_eq!(
        off["disabled_reason"],
        Value::Null,
        "turned off by a person"
    );
    assert_eq!(get(&app, &path).await.1["enabled"], false);
    let (status, on) = send(&app, "PATCH", &path, &json!({"enabled": true})).await;
    assert_eq!(status, StatusCode::OK, "{on}");
    assert_eq!(on["enabled"], true);
    assert_eq!(get(&app, &path).await.1["enabled"], true);

    let (status, body) = call(&app, "DELETE", &path, None, Body::empty()).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = get(&app, &path).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["code"], "not_found");
    let (status, _) = call(&app, "DELETE", &path, None, Body::empty()).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "deleting twice");
    let (status, _) = send(&app, "PATCH", &path, &json!({"name": "ghost"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "changing a deleted one");
    assert_eq!(list(&app).await, [second]);
    assert_eq!(count(db.store(), "subscriptions").await, 1);
}

async fn enabling_clears_the_reason_herald_disabled_it_for(db: TestDb) {
    let app = app(&db).await;
    let created = create(&app, &new_subscription("gone")).await;
    let id: SubscriptionId = created["id"].as_str().unwrap().parse().unwrap();
    let path = format!("/subscriptions/{id}");
    // What the router does when the endpoint answers 410.
    herald_router::subscription::disable(db.store(), id, "the endpoint answered 410 Gone")
        .await
        .unwrap();
    let (_, disabled) = get(&app, &path).await;
    assert_eq!(disabled["enabled"], false);
    assert_eq!(
        disabled["disabled_reason"],
        "the endpoint answered 410 Gone"
    );

    let (status, enabled) = send(&app, "PATCH", &path, &json!({"enabled": true})).await;
    assert_eq!(status, StatusCode::OK, "{enabled}");
    assert_eq!(enabled["enabled"], true);
    assert_eq!(enabled["disabled_reason"], Value::Null);
    assert_eq!(get(&app, &path).await.1, enabled);
}

async fn disabled_subscriptions_are_listed(db: TestDb) {
    let app = app(&db).await;
    let on = create(&app, &new_subscription("on")).await;
    let off = create(&app, &new_subscription("off")).await;
    let gone = create(&app, &new_subscription("gone")).await;
    let off_path = format!("/subscriptions/{}", off["id"].as_str().unwrap());
    let (status, off) = send(&app, "PATCH", &off_path, &json!({"enabled": false})).await;
    assert_eq!(status, StatusCode::OK);
    let gone_id: SubscriptionId = gone["id"].as_str().unwrap().parse().unwrap();
    herald_router::subscription::disable(db.store(), gone_id, "410")
        .await
        .unwrap();
    let (_, gone) = get(&app, &format!("/subscriptions/{gone_id}")).await;

    assert_eq!(
        list(&app).await,
        [on, off, gone],
        "GET /subscriptions lists every subscription, enabled or not"
    );
}

async fn unreadable_bodies_are_problems(db: TestDb) {
    let app = app(&db).await;
    let (status, body) = call(
        &app,
        "POST",
        "/subscriptions",
        Some("application/json"),
        r#"{"name": "x", "#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["code"], "malformed_json");

    let good = new_subscription("good").to_string();
    let (status, body) = call(
        &app,
        "POST",
        "/subscriptions",
        Some("text/plain"),
        good.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{body}");
    assert_eq!(body["code"], "unsupported_media_type");
    let (status, _) = call(&app, "POST", "/subscriptions", None, good).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let mut unknown = new_subscription("unknown field");
    unknown["colour"] = json!("red");
    let (status, body) = send(&app, "POST", "/subscriptions", &unknown).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `colour`"),
        "{body}"
    );

    let mut missing = new_subscription("missing url");
    missing.as_object_mut().unwrap().remove("url");
    let (status, body) = send(&app, "POST", "/subscriptions", &missing).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("missing field `url`"),
        "{body}"
    );

    let mut wrong_type = new_subscription("wrong type");
    wrong_type["max_attempts"] = json!(-1);
    let (status, body) = send(&app, "POST", "/subscriptions", &wrong_type).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["pointer"], "/max_attempts", "{body}");

    assert_eq!(
        count(db.store(), "subscriptions").await,
        0,
        "nothing was written"
    );
    assert_eq!(list(&app).await, Vec::<Value>::new());
}

async fn each_bad_field_is_a_problem_and_nothing_is_written(db: TestDb) {
    let app = app(&db).await;
    let kept = create(&app, &new_subscription("kept")).await;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("name", json!(""), "/name"),
        ("name", json!("   "), "/name"),
        ("name", json!("n".repeat(201)), "/name"),
        ("event_types", json!([]), "/event_types"),
        (
            "event_types",
            json!(["orders.created", "a..b"]),
            "/event_types/1",
        ),
        ("event_types", json!(["**.x"]), "/event_types/0"),
        (
            "event_types",
            json!(["ok.*", "ok.**", ""]),
            "/event_types/2",
        ),
        ("event_types", json!(["orders created"]), "/event_types/0"),
        ("event_types", json!(".orders"), "/event_types"),
        (
            "event_types",
            json!((0..51).map(|i| format!("t{i}")).collect::<Vec<_>>()),
            "/event_types",
        ),
        ("url", json!("ftp://x"), "/url"),
        ("url", json!("not a url"), "/url"),
        ("url", json!(""), "/url"),
        ("url", json!("http://user:pw@host/"), "/url"),
        ("url", json!("https://user@host/"), "/url"),
        ("url", json!("http://h/#frag"), "/url"),
        (
            "url",
            json!(format!("https://example.com/{}", "a".repeat(2048))),
            "/url",
        ),
        ("pool", json!("nope"), "/pool"),
        ("pool", json!("Bad Code"), "/pool"),
        ("pool", json!(""), "/pool"),
        ("max_attempts", json!(0), "/max_attempts"),
        ("max_attempts", json!(101), "/max_attempts"),
        (
            "headers",
            json!({"webhook-id": "mine"}),
            "/headers/webhook-id",
        ),
        (
            "headers",
            json!({"Content-Type": "text/plain"}),
            "/headers/Content-Type",
        ),
        (
            "headers",
            json!({"Webhook-Extra": "x"}),
            "/headers/Webhook-Extra",
        ),
        (
            "headers",
            json!({"traceparent": "x"}),
            "/headers/traceparent",
        ),
        ("headers", json!({"bad header": "x"}), "/headers/bad header"),
        ("headers", json!({"a/b": "x"}), "/headers/a~1b"),
        (
            "headers",
            json!({"x-fine": "line\nbreak"}),
            "/headers/x-fine",
        ),
        (
            "headers",
            json!({"x-long": "v".repeat(4097)}),
            "/headers/x-long",
        ),
        (
            "headers",
            json!(
                (0..21)
                    .map(|i| (format!("x-h{i}"), json!("v")))
                    .collect::<serde_json::Map<_, _>>()
            ),
            "/headers",
        ),
        ("secret", json!("nope"), "/secret"),
        ("secret", json!("whsec_!!!not base64!!!"), "/secret"),
        ("secret", json!("whsec_AAAA"), "/secret"),
    ];
    for (field, value, pointer) in cases {
        let mut body = new_subscription("bad");
        body[field] = value.clone();
        let answer = send(&app, "POST", "/subscriptions", &body).await;
        assert_eq!(
            answer.0,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{field} = {value}: {}",
            answer.1
        );
        assert_eq!(
            crate::support::pointers(&answer.1),
            [pointer],
            "{field} = {value}: {}",
            answer.1
        );
    }
    assert_eq!(
        count(db.store(), "subscriptions").await,
        1,
        "nothing was written"
    );
    assert_eq!(list(&app).await, [kept]);
}

async fn every_problem_is_reported_at_once(db: TestDb) {
    let app = app(&db).await;
    let answer = send(
        &app,
        "POST",
        "/subscriptions",
        &json!({
            "name": "",
            "event_types": ["a..b", "ok.*", "**.x"],
            "url": "ftp://x",
            "pool": "nope",
            "max_attempts": 0,
            "headers": {"webhook-id": "x", "ok": "fine", "bad header": "x"},
            "secret": "hunter2-not-a-secret",
        }),
    )
    .await;
    assert_invalid(
        &answer,
        &[
            "/name",
            "/event_types/0",
            "/event_types/2",
            "/url",
            "/pool",
            "/max_attempts",
            "/headers/bad header",
            "/headers/webhook-id",
            "/secret",
        ],
    );
    assert_eq!(answer.1["detail"], "9 fields are not valid");
    assert!(
        answer.1["errors"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !e["detail"].as_str().unwrap().is_empty()),
        "each error says what is wrong: {}",
        answer.1
    );
    assert!(
        !answer.1.to_string().contains("hunter2"),
        "a bad secret is not echoed: {}",
        answer.1
    );
    assert_eq!(count(db.store(), "subscriptions").await, 0);
}

async fn limits_are_inclusive(db: TestDb) {
    let app = app(&db).await;
    let headers: serde_json::Map<String, Value> = (0..20)
        .map(|i| (format!("x-h{i}"), json!("v".repeat(4096))))
        .collect();
    let patterns: Vec<String> = (0..50).map(|i| format!("t{i}.**")).collect();
    let url = format!(
        "https://example.com/{}",
        "a".repeat(2048 - "https://example.com/".len())
    );
    let created = create(
        &app,
        &json!({
            "name": "n".repeat(200),
            "event_types": patterns,
            "url": url,
            "max_attempts": 100,
            "headers": headers,
        }),
    )
    .await;
    assert_eq!(created["event_types"].as_array().unwrap().len(), 50);
    assert_eq!(created["headers"].as_object().unwrap().len(), 20);
    assert_eq!(created["url"], url);
    let mut one = new_subscription("one attempt");
    one["max_attempts"] = json!(1);
    assert_eq!(create(&app, &one).await["max_attempts"], 1);
    assert_eq!(count(db.store(), "subscriptions").await, 2);
}

async fn bad_and_unknown_ids_in_the_path(db: TestDb) {
    let app = app(&db).await;
    create(&app, &new_subscription("exists")).await;
    let patch = json!({"name": "x"});
    let replay = json!({"since": "2021-02-25T15:02:10Z"});
    let event_id = EventId::new().to_string();
    for bad in ["nope", event_id.as_str(), "sub_", "sub_0000"] {
        let path = format!("/subscriptions/{bad}");
        assert_invalid(&get(&app, &path).await, &["#/path/id"]);
        assert_invalid(&send(&app, "PATCH", &path, &patch).await, &["#/path/id"]);
        assert_invalid(
            &call(&app, "DELETE", &path, None, Body::empty()).await,
            &["#/path/id"],
        );
        assert_invalid(
            &send(&app, "POST", &format!("{path}/replay"), &replay).await,
            &["#/path/id"],
        );
    }
    let unknown = format!("/subscriptions/{}", SubscriptionId::new());
    for (status, body) in [
        get(&app, &unknown).await,
        send(&app, "PATCH", &unknown, &patch).await,
        call(&app, "DELETE", &unknown, None, Body::empty()).await,
        send(&app, "POST", &format!("{unknown}/replay"), &replay).await,
    ] {
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["code"], "not_found");
    }
    assert_eq!(count(db.store(), "subscriptions").await, 1);
}

async fn a_bad_patch_changes_nothing(db: TestDb) {
    let app = app(&db).await;
    let mut body = new_subscription("original");
    body["headers"] = json!({"x-tenant": "acme"});
    let original = create(&app, &body).await;
    let path = format!("/subscriptions/{}", original["id"].as_str().unwrap());

    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({"url": "ftp://x"}), vec!["/url"]),
        (
            json!({"name": "renamed", "max_attempts": 0}),
            vec!["/max_attempts"],
        ),
        (json!({"enabled": false, "url": "not a url"}), vec!["/url"]),
        (json!({"event_types": []}), vec!["/event_types"]),
        (
            json!({"event_types": ["ok.*", "**.x"]}),
            vec!["/event_types/1"],
        ),
        (json!({"pool": "nope"}), vec!["/pool"]),
        (json!({"headers": {"Host": "evil"}}), vec!["/headers/Host"]),
        (
            json!({"secret": "whsec_AAAA", "fifo": true}),
            vec!["/secret"],
        ),
        (json!({"name": " "}), vec!["/name"]),
        (
            json!({
                "name": "", "event_types": ["a..b"], "url": "http://u:p@h/", "pool": "Nope",
                "max_attempts": 101, "headers": {"webhook-signature": "x"}, "secret": "x",
                "enabled": false,
            }),
            vec![
                "/name",
                "/event_types/0",
                "/url",
                "/pool",
                "/max_attempts",
                "/headers/webhook-signature",
                "/secret",
            ],
        ),
    ];
    for (patch, expected) in cases {
        let answer = send(&app, "PATCH", &path, &patch).await;
        assert_eq!(
            answer.0,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{patch}: {}",
            answer.1
        );
        assert_eq!(crate::support::pointers(&answer.1), expected, "{patch}");
    }
    let (status, body) = send(&app, "PATCH", &path, &json!({"colour": "red"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (status, _) = send(&app, "PATCH", &path, &json!({"enabled": "no"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, body) = call(&app, "PATCH", &path, Some("application/json"), "{").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "malformed_json");
    let (status, _) = call(&app, "PATCH", &path, Some("text/plain"), r#"{"name":"x"}"#).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let (status, now) = get(&app, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        now, original,
        "no bad PATCH changed anything, not even updated_at"
    );
}

on_both_stores!(
    creates_with_defaults_and_a_generated_secret,
    creates_with_every_field_given,
    reads_lists_changes_and_deletes,
    enabling_clears_the_reason_herald_disabled_it_for,
    unreadable_bodies_are_problems,
    each_bad_field_is_a_problem_and_nothing_is_written,
    every_problem_is_reported_at_once,
    limits_are_inclusive,
    bad_and_unknown_ids_in_the_path,
    a_bad_patch_changes_nothing,
    disabled_subscriptions_are_listed,
);
