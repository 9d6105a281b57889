//! `/v1/pools`: the default pool, creating and changing pools with `PUT`, rejecting bad codes
//! and limits without writing anything, and subscriptions using a new pool.

use axum::Router;
use axum::http::StatusCode;
use herald_testing::{TestDb, on_both_stores};
use serde_json::{Value, json};

use crate::support::{app, assert_invalid, count, get, parse_time, send};

async fn put(app: &Router, code: &str, body: &Value) -> (StatusCode, Value) {
    send(app, "PUT", &format!("/pools/{code}"), body).await
}

async fn pools(app: &Router) -> Value {
    let (status, body) = get(app, "/pools").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].clone()
}

async fn the_default_pool_exists(db: TestDb) {
    let app = app(&db).await;
    let all = pools(&app).await;
    assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
    let default = &all[0];
    assert_eq!(default["code"], "default");
    assert_eq!(default["concurrency"], 16);
    assert_eq!(default["rate_limit"], Value::Null);
    parse_time(&default["created_at"]);
    parse_time(&default["updated_at"]);
    let (status, fetched) = get(&app, "/pools/default").await;
    assert_eq!(status, StatusCode::OK, "{fetched}");
    assert_eq!(&fetched, default);
}

async fn puts_a_pool_then_changes_it(db: TestDb) {
    let app = app(&db).await;
    let (status, created) = put(
        &app,
        "partners",
        &json!({"concurrency": 4, "rate_limit": {"per_second": 2.5, "burst": 5}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["code"], "partners");
    assert_eq!(created["concurrency"], 4);
    assert_eq!(
        created["rate_limit"],
        json!({"per_second": 2.5, "burst": 5})
    );
    assert_eq!(created["created_at"], created["updated_at"]);
    assert_eq!(get(&app, "/pools/partners").await.1, created);

    let (status, changed) = put(
        &app,
        "partners",
        &json!({"concurrency": 1000, "rate_limit": {"per_second": 0.5, "burst": 1}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["concurrency"], 1000);
    assert_eq!(
        changed["rate_limit"],
        json!({"per_second": 0.5, "burst": 1})
    );
    assert_eq!(
        changed["created_at"], created["created_at"],
        "still the same pool"
    );
    assert!(parse_time(&changed["updated_at"]) >= parse_time(&created["updated_at"]));
    assert_eq!(get(&app, "/pools/partners").await.1, changed);

    let (status, unlimited) = put(
        &app,
        "partners",
        &json!({"concurrency": 1, "rate_limit": null}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{unlimited}");
    assert_eq!(unlimited["concurrency"], 1);
    assert_eq!(
        unlimited["rate_limit"],
        Value::Null,
        "null removes the limit"
    );
    assert_eq!(get(&app, "/pools/partners").await.1, unlimited);

    put(
        &app,
        "partners",
        &json!({"concurrency": 2, "rate_limit": {"per_second": 1000000.0, "burst": 1000000}}),
    )
    .await;
    let (status, absent) = put(&app, "partners", &json!({"concurrency": 2})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        absent["rate_limit"],
        Value::Null,
        "an absent limit removes it too"
    );

    // The default pool can be changed like any other.
    let (status, default) = put(&app, "default", &json!({"concurrency": 32})).await;
    assert_eq!(status, StatusCode::OK, "{default}");
    assert_eq!(default["concurrency"], 32);

    // Codes at the edges of the rules.
    for code in ["a", "0", "9-to_5", &"x".repeat(63)] {
        let (status, body) = put(&app, code, &json!({"concurrency": 1})).await;
        assert_eq!(status, StatusCode::CREATED, "{code}: {body}");
        assert_eq!(body["code"], code);
    }
    let codes: Vec<String> = pools(&app)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = codes.clone();
    sorted.sort();
    assert_eq!(codes, sorted, "listed by code");
    assert_eq!(codes.len(), 6);
    assert_eq!(count(db.store(), "pools").await, 6);
}

async fn bad_pools_are_problems_and_write_nothing(db: TestDb) {
    let app = app(&db).await;
    let (status, _) = put(&app, "partners", &json!({"concurrency": 4})).await;
    assert_eq!(status, StatusCode::CREATED);
    let before = pools(&app).await;

    let long = "a".repeat(64);
    for code in [
        "Bad%20Code",
        "-x",
        "_x",
        long.as_str(),
        "UPPER",
        "dot.ted",
        "%C3%A9t%C3%A9",
    ] {
        assert_invalid(
            &put(&app, code, &json!({"concurrency": 1})).await,
            &["#/path/code"],
        );
        assert_invalid(
            &get(&app, &format!("/pools/{code}")).await,
            &["#/path/code"],
        );
    }
    let cases: Vec<(Value, Vec<&str>)> = vec![
        (json!({"concurrency": 0}), vec!["/concurrency"]),
        (json!({"concurrency": 1001}), vec!["/concurrency"]),
        (
            json!({"concurrency": 1, "rate_limit": {"per_second": 0, "burst": 1}}),
            vec!["/rate_limit/per_second"],
        ),
        (
            json!({"concurrency": 1, "rate_limit": {"per_second": -1.5, "burst": 1}}),
            vec!["/rate_limit/per_second"],
        ),
        (
            json!({"concurrency": 1, "rate_limit": {"per_second": 1000000.5, "burst": 1}}),
            vec!["/rate_limit/per_second"],
        ),
        (
            json!({"concurrency": 1, "rate_limit": {"per_second": 1, "burst": 0}}),
            vec!["/rate_limit/burst"],
        ),
        (
            json!({"concurrency": 1, "rate_limit": {"per_second": 1, "burst": 1000001}}),
            vec!["/rate_limit/burst"],
        ),
        (
            json!({"concurrency": 0, "rate_limit": {"per_second": 1, "burst": 0}}),
            vec!["/concurrency", "/rate_limit/burst"],
        ),
    ];
    for (body, expected) in cases {
        for code in ["partners", "newcomer"] {
            let answer = put(&app, code, &body).await;
            assert_eq!(
                answer.0,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{body}: {}",
                answer.1
            );
            assert_eq!(crate::support::pointers(&answer.1), expected, "{body}");
        }
    }
    assert_invalid(
        &put(
            &app,
            "Bad",
            &json!({"concurrency": 0, "rate_limit": {"per_second": 1, "burst": 0}}),
        )
        .await,
        &["#/path/code", "/concurrency", "/rate_limit/burst"],
    );

    // Bodies of the wrong shape.
    for body in [
        json!({"concurrency": 1, "colour": "red"}),
        json!({"concurrency": 1, "rate_limit": {"per_second": 1, "burst": 1, "extra": 1}}),
        json!({"rate_limit": null}),
        json!({"concurrency": -1}),
        json!({"concurrency": 1, "rate_limit": {"per_second": 1}}),
        json!({"concurrency": 1, "rate_limit": 5}),
    ] {
        let (status, problem) = put(&app, "partners", &body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
        assert_eq!(problem["code"], "invalid_input", "{problem}");
    }
    let (status, problem) = put(
        &app,
        "partners",
        &json!({"concurrency": 1, "colour": "red"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("unknown field `colour`"),
        "{problem}"
    );
    let (status, problem) = crate::support::call(
        &app,
        "PUT",
        "/pools/partners",
        Some("application/json"),
        "{\"concurrency\": ",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["code"], "malformed_json");
    let (status, _) = crate::support::call(
        &app,
        "PUT",
        "/pools/partners",
        Some("text/plain"),
        r#"{"concurrency": 1}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    assert_eq!(
        pools(&app).await,
        before,
        "no bad PUT changed or created a pool"
    );
    assert_eq!(count(db.store(), "pools").await, 2);
}

/// `PoolSpec::check` promises that all problems are reported at once.
async fn both_bad_rate_limit_fields_are_reported(db: TestDb) {
    let app = app(&db).await;
    assert_invalid(
        &put(
            &app,
            "partners",
            &json!({"concurrency": 1, "rate_limit": {"per_second": 0, "burst": 0}}),
        )
        .await,
        &["/rate_limit/per_second", "/rate_limit/burst"],
    );
    assert_eq!(count(db.store(), "pools").await, 1);
}

async fn unknown_pools_are_not_found(db: TestDb) {
    let app = app(&db).await;
    let (status, body) = get(&app, "/pools/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["code"], "not_found");
}

async fn a_subscription_can_use_a_new_pool(db: TestDb) {
    let app = app(&db).await;
    let subscription = json!({
        "name": "partner hooks", "event_types": ["**"], "url": "https://partner.example/hook",
        "pool": "partners",
    });
    assert_invalid(
        &send(&app, "POST", "/subscriptions", &subscription).await,
        &["/pool"],
    );
    assert_eq!(count(db.store(), "subscriptions").await, 0);

    let (status, _) = put(&app, "partners", &json!({"concurrency": 2})).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, created) = send(&app, "POST", "/subscriptions", &subscription).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["pool"], "partners");

    // An existing subscription moves to it, and back.
    let mut other = subscription.clone();
    other.as_object_mut().unwrap().remove("pool");
    let (_, other) = send(&app, "POST", "/subscriptions", &other).await;
    let path = format!("/subscriptions/{}", other["id"].as_str().unwrap());
    assert_eq!(other["pool"], "default");
    let (status, moved) = send(&app, "PATCH", &path, &json!({"pool": "partners"})).await;
    assert_eq!(status, StatusCode::OK, "{moved}");
    assert_eq!(moved["pool"], "partners");
    assert_invalid(
        &send(&app, "PATCH", &path, &json!({"pool": "elsewhere"})).await,
        &["/pool"],
    );
    assert_eq!(get(&app, &path).await.1["pool"], "partners");
    let (_, back) = send(&app, "PATCH", &path, &json!({"pool": "default"})).await;
    assert_eq!(back["pool"], "default");
}

on_both_stores!(
    the_default_pool_exists,
    puts_a_pool_then_changes_it,
    bad_pools_are_problems_and_write_nothing,
    unknown_pools_are_not_found,
    a_subscription_can_use_a_new_pool,
    both_bad_rate_limit_fields_are_reported,
);
