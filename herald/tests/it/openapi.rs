//! The API description: `/openapi.json` is OpenAPI 3.1, describes every route the server has
//! under `/v1` (and only those), and `/docs` serves a browsable copy from the binary itself.

use std::collections::HashSet;

use serde_json::Value;

use crate::support::{client, dev_admin_key, get_text, json_body, start_dev};

/// Every `$ref` in `value`.
fn refs(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                match (key.as_str(), item) {
                    ("$ref", Value::String(target)) => found.push(target.clone()),
                    _ => refs(item, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| refs(item, found)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_description_is_complete_and_true() {
    let temp = tempfile::tempdir().unwrap();
    let herald = start_dev(temp.path());
    let key = dev_admin_key(temp.path());
    let http = client();

    // Public: the description holds no data.
    let response = http.get(herald.at("/openapi.json")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let doc = json_body(response, "application/json").await;
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(doc["info"]["title"], "Herald");

    let paths = doc["paths"].as_object().unwrap();
    let mut listed: Vec<&str> = paths.keys().map(String::as_str).collect();
    listed.sort_unstable();
    assert_eq!(
        listed,
        [
            "/v1/dispatch-jobs",
            "/v1/dispatch-jobs/{id}",
            "/v1/dispatch-jobs/{id}/retry",
            "/v1/events",
            "/v1/events/{id}",
            "/v1/pools",
            "/v1/pools/{code}",
            "/v1/subscriptions",
            "/v1/subscriptions/{id}",
            "/v1/subscriptions/{id}/replay",
            "/v1/system",
            "/v1/users",
            "/v1/users/{id}",
        ]
    );

    // Every operation: a unique id, a description for each answer, and a route behind it.
    let mut ids = HashSet::new();
    for (path, operations) in paths {
        for (method, operation) in operations.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap();
            assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
            for (status, answer) in operation["responses"].as_object().unwrap() {
                assert!(
                    answer["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty()),
                    "{method} {path} {status} has no description"
                );
            }
            let concrete = path.replace("{id}", "x").replace("{code}", "default");
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let answer = http
                .request(method.clone(), herald.at(&concrete))
                .bearer_auth(&key)
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = answer.status().as_u16();
            let body: Value = answer.json().await.unwrap_or(Value::Null);
            assert!(
                status != 405 && body["code"] != "route_not_found",
                "{method} {concrete} is documented but not served: {status} {body}"
            );
        }
    }

    // Every reference resolves.
    let mut found = Vec::new();
    refs(&doc, &mut found);
    assert!(!found.is_empty());
    for target in found {
        let name = target.strip_prefix("#/components/schemas/").unwrap();
        assert!(
            doc["components"]["schemas"].get(name).is_some(),
            "{target} points nowhere"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["admin_key"]["scheme"],
        "bearer"
    );

    // The docs page and its assets come from the binary.
    let page = http.get(herald.at("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger-ui-bundle.js"), "{html}");
    for attribute in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(
            !html.contains(attribute),
            "the docs page loads from elsewhere: {html}"
        );
    }
    let script = http
        .get(herald.at("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.bytes().await.unwrap().len() > 100_000);
    let initializer = get_text(&http, &herald.at("/docs/swagger-initializer.js")).await;
    assert!(initializer.contains("/openapi.json"), "{initializer}");
}
