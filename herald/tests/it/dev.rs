//! `herald dev`: probes, metrics, correlation ids, the admin key, errors, shutdown.

use std::os::unix::fs::PermissionsExt;

use crate::support::{client, json_body, start_dev};

#[tokio::test]
async fn starts_on_an_empty_data_dir_and_answers_probes_and_metrics() {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("fresh");
    let mut herald = start_dev(&data);
    let http = client();

    for path in ["/healthz", "/q/live"] {
        let response = http.get(herald.at(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            json_body(response, "application/json").await["status"],
            "alive"
        );
    }
    for path in ["/readyz", "/q/ready"] {
        let response = http.get(herald.at(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(
            json_body(response, "application/json").await["status"],
            "ready"
        );
    }
    let metrics = http.get(herald.at("/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("herald_build_info{version=\""), "{text}");
    assert!(
        text.contains(
            r#"herald_http_requests_total{method="GET",route="/healthz",status="200"} 1"#
        ),
        "{text}"
    );

    let printed = herald.wait_for_output("Stop with Ctrl-C");
    assert!(
        printed.contains(&format!("{}/metrics", herald.url)),
        "{printed}"
    );
    assert!(printed.contains("(created)"), "{printed}");
}

#[tokio::test]
async fn echoes_a_given_correlation_id_and_generates_one_when_absent() {
    let temp = tempfile::tempdir().unwrap();
    let herald = start_dev(temp.path());
    let http = client();

    let given = http
        .get(herald.at("/healthz"))
        .header("x-correlation-id", "checkout-7f3a")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-correlation-id"], "checkout-7f3a");

    let absent = http.get(herald.at("/healthz")).send().await.unwrap();
    let generated = absent.headers()["x-correlation-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(generated.len(), 36, "a hyphenated UUID: {generated}");
    assert_eq!(&generated[14..15], "7", "a version 7 UUID: {generated}");

    let other = http.get(herald.at("/healthz")).send().await.unwrap();
    assert_ne!(
        other.headers()["x-correlation-id"].to_str().unwrap(),
        generated
    );

    // Errors carry the id in their body too.
    let missing = http
        .get(herald.at("/nope"))
        .header("x-correlation-id", "trace-me")
        .send()
        .await
        .unwrap();
    assert_eq!(missing.headers()["x-correlation-id"], "trace-me");
    assert_eq!(
        json_body(missing, "application/problem+json").await["correlation_id"],
        "trace-me"
    );
}

#[tokio::test]
async fn creates_the_admin_key_once_and_reuses_it_after_a_restart() {
    let temp = tempfile::tempdir().unwrap();
    let herald = start_dev(temp.path());
    let key_path = temp.path().join("admin-token");
    let key = std::fs::read_to_string(&key_path)
        .unwrap()
        .trim()
        .to_owned();
    assert!(key.len() >= 32);
    assert_eq!(
        std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let http = client();
    let refused = http.get(herald.at("/v1/system")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        json_body(refused, "application/problem+json").await["code"],
        "unauthorized"
    );
    let wrong = http
        .get(herald.at("/v1/system"))
        .bearer_auth("x".repeat(40))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let allowed = http
        .get(herald.at("/v1/system"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 200);
    let body = json_body(allowed, "application/json").await;
    assert_eq!(body["mode"], "dev");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));

    let status = herald.terminate();
    assert!(status.success(), "SIGTERM is a clean exit: {status:?}");

    let mut again = start_dev(temp.path());
    again.wait_for_output("(existing)");
    assert_eq!(std::fs::read_to_string(&key_path).unwrap().trim(), key);
    let allowed = http
        .get(again.at("/v1/system"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.status(),
        200,
        "the same key works after the restart"
    );
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_are_problems() {
    let temp = tempfile::tempdir().unwrap();
    let herald = start_dev(temp.path());
    let http = client();

    let missing = http.get(herald.at("/no/such/route")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let body = json_body(missing, "application/problem+json").await;
    assert_eq!(body["code"], "route_not_found");
    assert_eq!(body["status"], 404);
    assert_eq!(body["type"], "urn:herald:problem:route_not_found");

    let wrong_method = http
        .post(herald.at("/healthz"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), 405);
    assert_eq!(
        json_body(wrong_method, "application/problem+json").await["code"],
        "method_not_allowed"
    );
}

#[tokio::test]
async fn a_taken_port_is_a_clear_error() {
    let temp = tempfile::tempdir().unwrap();
    let first = start_dev(temp.path());
    let addr = first.url.trim_start_matches("http://").to_owned();
    let output = crate::support::herald()
        .args(["dev", "--http", &addr, "--data-dir"])
        .arg(temp.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}
