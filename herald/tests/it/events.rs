//! Events end to end through `herald dev`: accepted over HTTP, stored, relayed to the embedded
//! queue, and errors as problem+json.

use std::time::Duration;

use herald_broker::embedded::EmbeddedBroker;
use herald_broker::{Broker, SubscribeOptions};
use herald_store::{Store, StoreOptions};
use serde_json::json;

use crate::support::{client, dev_admin_key, get_text, json_body, start_dev};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_posted_to_herald_dev_reaches_the_queue() {
    let temp = tempfile::tempdir().unwrap();
    let herald = start_dev(temp.path());
    let key = dev_admin_key(temp.path());
    let http = client();
    // A group receives what is published after it joins (`herald dev`'s own consumers joined
    // at start), so join before posting.
    let url = format!("sqlite://{}", temp.path().join("herald.db").display());
    let store = Store::connect(&url, &StoreOptions::default())
        .await
        .unwrap();
    let broker = EmbeddedBroker::new(store);
    let mut subscription = broker
        .subscribe("herald.events", "test", SubscribeOptions::default())
        .await
        .unwrap();

    let event = json!({
        "specversion": "1.0", "id": "order-7", "source": "/shop", "type": "shop.order.placed",
        "partitionkey": "order-7", "data": {"items": 3}
    });
    let response = http
        .post(herald.at("/v1/events"))
        .bearer_auth(&key)
        .header("x-correlation-id", "checkout-42")
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let body = json_body(response, "application/json").await;
    let id = body["data"][0]["id"].as_str().unwrap().to_owned();

    let fetched = http
        .get(herald.at(&format!("/v1/events/{id}")))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(fetched.status(), 200);
    let fetched = json_body(fetched, "application/json").await;
    assert_eq!(
        fetched["event"]["correlationid"], "checkout-42",
        "the request's correlation id is kept"
    );

    // The relay inside `herald dev` publishes it to the embedded queue in the data directory,
    // where this test's group (which joined before the event was posted) receives it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let delivery = loop {
        let mut batch = subscription
            .receive(1, Duration::from_secs(1))
            .await
            .unwrap();
        if let Some(delivery) = batch.pop() {
            break delivery;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the event did not reach the queue within 30 s"
        );
    };
    assert_eq!(delivery.message.id, id);
    assert_eq!(delivery.message.key.as_deref(), Some("order-7"));
    let payload: serde_json::Value = serde_json::from_slice(&delivery.message.payload).unwrap();
    assert_eq!(payload["id"], id);
    assert_eq!(payload["originalid"], "order-7");
    delivery.ack().await.unwrap();

    // The relay's work shows in the metrics. It counts an event once the published row is
    // deleted, which on SQLite is a step after the publish the consumer may already have
    // seen: poll briefly (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = get_text(&http, &herald.at("/metrics")).await;
        let relayed = metrics
            .lines()
            .find(|line| line.starts_with("herald_outbox_relayed_total "))
            .unwrap_or_else(|| panic!("no herald_outbox_relayed_total in:\n{metrics}"))
            .to_owned();
        assert!(metrics.contains("herald_outbox_lag_seconds"), "{metrics}");
        if relayed == "herald_outbox_relayed_total 1" {
            break;
        }
        assert_eq!(relayed, "herald_outbox_relayed_total 0", "{metrics}");
        assert!(
            std::time::Instant::now() < deadline,
            "the relayed counter stayed at 0 for 10 s after the event was consumed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn malformed_and_invalid_events_are_problems_through_the_binary() {
    let temp = tempfile::tempdir().unwrap();
    let herald = start_dev(temp.path());
    let key = dev_admin_key(temp.path());
    let http = client();

    let malformed = http
        .post(herald.at("/v1/events"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{\"specversion\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    assert_eq!(
        json_body(malformed, "application/problem+json").await["code"],
        "malformed_json"
    );

    let invalid = http
        .post(herald.at("/v1/events"))
        .bearer_auth(&key)
        .json(&json!({"specversion": "1.0", "id": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), 422);
    let body = json_body(invalid, "application/problem+json").await;
    assert_eq!(body["errors"][0]["pointer"], "/source");

    let unauthenticated = http
        .post(herald.at("/v1/events"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}
