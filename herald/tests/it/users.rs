//! The users service end to end through `herald dev`: identity's events posted to the
//! platform API are relayed, consumed and served as profiles over HTTP and gRPC.

use std::time::{Duration, Instant};

use herald_core::id::UserId;
use herald_users::grpc::proto::GetUserRequest;
use herald_users::grpc::proto::users_service_client::UsersServiceClient;
use serde_json::{Value, json};

use crate::support::{client, dev_admin_key, json_body, start_dev};

/// Polls `GET /v1/users/{id}` until the profile has `version`, for at most 30 s.
async fn wait_for_version(http: &reqwest::Client, url: &str, key: &str, version: i64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = http.get(url).bearer_auth(key).send().await.unwrap();
        let status = response.status();
        if status == 200 {
            let body = json_body(response, "application/json").await;
            if body["version"] == version {
                return body;
            }
        } else {
            assert_eq!(status, 404, "only a missing profile may be awaited");
        }
        assert!(
            Instant::now() < deadline,
            "version {version} of the profile did not appear within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn user_event(id: UserId, source_id: &str, event_type: &str, data: &Value) -> Value {
    json!({
        "specversion": "1.0", "id": source_id, "source": "/identity", "type": event_type,
        "partitionkey": id.to_string(), "data": data
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profiles_follow_identity_events_over_http_and_grpc() {
    let temp = tempfile::tempdir().unwrap();
    let herald = start_dev(temp.path());
    let key = dev_admin_key(temp.path());
    let http = client();
    let id = UserId::new();
    let registered = user_event(
        id,
        "reg-1",
        "identity.user.registered",
        &json!({"user_id": id, "email": "ada@example.com", "username": "ada", "version": 1}),
    );
    let updated = user_event(
        id,
        "upd-2",
        "identity.user.updated",
        &json!({"user_id": id, "email": "ada@example.com", "username": "ada",
                "display_name": "Ada Lovelace", "version": 2}),
    );
    let response = http
        .post(herald.at("/v1/events"))
        .bearer_auth(&key)
        .json(&json!([registered, updated]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    let url = herald.at(&format!("/v1/users/{id}"));
    let profile = wait_for_version(&http, &url, &key, 2).await;
    assert_eq!(profile["display_name"], "Ada Lovelace");
    assert_eq!(profile["email"], "ada@example.com");

    let anonymous = http.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401, "the users API needs the admin key");

    // The same server answers gRPC over HTTP/2 on the same port.
    let channel = tonic::transport::Channel::from_shared(herald.at(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = UsersServiceClient::new(channel);
    let mut request = tonic::Request::new(GetUserRequest { id: id.to_string() });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    let user = grpc
        .get_user(request)
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.display_name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(user.version, 2);
    let err = grpc
        .get_user(GetUserRequest { id: id.to_string() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unauthenticated);

    // Unknown HTTP paths are still problem+json, not gRPC answers.
    let missing = http.get(herald.at("/nothing-here")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    json_body(missing, "application/problem+json").await;
}
