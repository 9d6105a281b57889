//! `herald serve`: configuration checks and the admin key from configuration.

use std::io::Write;

use crate::support::{Running, client, herald, json_body};

/// A configuration file in a directory of its own, removed when dropped.
struct ConfigFile {
    dir: tempfile::TempDir,
}

impl ConfigFile {
    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("herald.toml")
    }
}

/// A configuration file with `text`, plus a `[store]` on a fresh SQLite file unless `text`
/// has its own.
fn config_file(text: &str) -> ConfigFile {
    let dir = tempfile::tempdir().unwrap();
    let mut file = std::fs::File::create(dir.path().join("herald.toml")).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    if !text.contains("[store]") {
        let db = dir.path().join("herald.db");
        write!(file, "\n[store]\nurl = \"sqlite://{}\"\n", db.display()).unwrap();
    }
    ConfigFile { dir }
}

#[test]
fn an_unknown_key_and_a_bad_value_are_reported_together() {
    let file = config_file("[http]\nlisten = \"not-an-address\"\nlistn = \"127.0.0.1:1\"\n");
    let output = herald()
        .args(["serve", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(2),
        "configuration errors exit with 2"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("the configuration has 2 problems:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("http.listen: invalid socket address syntax"),
        "{stderr}"
    );
    assert!(
        stderr.contains("http.listn: unknown key `listn`"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing was served");
}

#[test]
fn a_missing_store_url_says_how_to_set_it() {
    let output = herald().args(["serve", "--check"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("store.url: is required"), "{stderr}");
    assert!(stderr.contains("HERALD_STORE__URL"), "{stderr}");
}

#[test]
fn environment_overrides_are_checked_and_named() {
    let output = herald()
        .args(["serve", "--check"])
        .env("HERALD_STORE__URL", "sqlite::memory:")
        .env("HERALD_HTTP__MAX_BODY_BYTES", "lots")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("http.max_body_bytes"), "{stderr}");
    assert!(
        stderr.contains("environment variable HERALD_HTTP__MAX_BODY_BYTES"),
        "{stderr}"
    );
}

#[test]
fn check_accepts_a_valid_file_and_reports_a_missing_one() {
    let file = config_file("[http]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n");
    let ok = herald()
        .args(["serve", "--check", "--config"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout).trim(),
        "the configuration is valid"
    );

    let missing = herald()
        .args(["serve", "--config", "no-such-herald.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("cannot read the configuration file no-such-herald.toml"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serves_with_the_configured_admin_key_and_json_logs() {
    let key = "k".repeat(40);
    let file = config_file("[http]\nlisten = \"127.0.0.1:0\"\n[log]\nformat = \"json\"\n");
    let mut command = herald();
    command
        .args(["serve", "--config"])
        .arg(file.path())
        .env("HERALD_API__ADMIN_TOKEN", &key);
    let running = Running::start(command);
    let http = client();
    let ok = http
        .get(running.at("/v1/system"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(json_body(ok, "application/json").await["mode"], "serve");
    let ready = http.get(running.at("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(running.terminate().success());
}

#[tokio::test]
async fn without_an_admin_key_the_platform_api_refuses_everyone() {
    let file = config_file("[http]\nlisten = \"127.0.0.1:0\"\n");
    let mut command = herald();
    command.args(["serve", "--config"]).arg(file.path());
    let running = Running::start(command);
    let refused = client()
        .get(running.at("/v1/system"))
        .bearer_auth("k".repeat(40))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let body = json_body(refused, "application/problem+json").await;
    assert!(
        body["detail"].as_str().unwrap().contains("api.admin_token"),
        "{body}"
    );
}
