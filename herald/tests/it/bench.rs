//! `herald bench` as a smoke test: every scenario runs small and checks its own results. This
//! is a correctness check of the benchmarks, not a timing gate.

use herald_testing::{KAFKA_URL, NATS_URL, POSTGRES_URL, REDIS_URL, service_url};

use crate::support::herald;

fn run_all(store: &str) -> serde_json::Value {
    run_json(&[
        "all",
        "--store",
        store,
        "--duration",
        "1",
        "--events",
        "2000",
        "--rate",
        "100",
        "--drain-events",
        "3000",
    ])
}

fn check(report: &serde_json::Value, store: &str) {
    let outcomes = report["outcomes"].as_array().unwrap();
    let cases: Vec<String> = outcomes
        .iter()
        .map(|o| {
            format!(
                "{} / {}",
                o["scenario"].as_str().unwrap(),
                o["case"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(outcomes.len(), 12, "{cases:#?}");
    for outcome in outcomes {
        assert_eq!(outcome["store"], store);
        assert!(outcome["value"].as_f64().unwrap() > 0.0, "{outcome}");
    }
    let with_inbox = outcomes
        .iter()
        .find(|o| o["case"] == "with the inbox")
        .unwrap();
    assert_eq!(
        with_inbox["checked"],
        "2000 effects for 2000 messages, one per event id"
    );
    let process = outcomes.iter().find(|o| o["scenario"] == "drain").unwrap();
    assert_eq!(
        process["checked"],
        "3000/3000 queued once each, order kept on 100 keys"
    );
    assert!(
        process["peak_rss_mib"].as_f64().unwrap() > 1.0,
        "the relay process's own memory: {process}"
    );
    let signed = outcomes
        .iter()
        .find(|o| o["scenario"] == "deliver")
        .unwrap();
    assert_eq!(
        signed["checked"],
        "2000/2000 events delivered, every signature verified, 0 duplicates; 2000 jobs delivered"
    );
    let plain = outcomes
        .iter()
        .find(|o| o["case"].as_str().unwrap().starts_with("plain HTTP"))
        .unwrap();
    assert_eq!(
        plain["checked"],
        "2000 requests answered 204 by the local sink"
    );
    let drain = outcomes
        .iter()
        .find(|o| o["case"].as_str().unwrap().starts_with("drain"))
        .unwrap();
    assert_eq!(
        drain["checked"],
        "2000/2000 published once each, order kept on 100 keys"
    );
}

#[test]
fn every_scenario_runs_on_postgres_and_checks_itself() {
    check(&run_all("postgres"), "postgres");
}

#[test]
fn every_scenario_runs_on_sqlite_and_checks_itself() {
    check(&run_all("sqlite"), "sqlite");
}

#[test]
fn report_turns_json_into_the_benchmarks_table() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run.json");
    let output = herald()
        .args([
            "bench",
            "relay",
            "--store",
            "sqlite",
            "--duration",
            "1",
            "--events",
            "500",
            "--rate",
            "50",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(&file, &output.stdout).unwrap();
    let report = herald()
        .args(["bench", "report"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let table = String::from_utf8_lossy(&report.stdout);
    assert!(table.starts_with("| scenario | case |"), "{table}");
    assert!(
        table.contains("≥ 10,000 events/s:"),
        "the drain row carries its goal: {table}"
    );

    // With --json, the runs are combined into one report, as `scripts/bench` keeps them.
    let combined = herald()
        .args(["bench", "report", "--json"])
        .arg(&file)
        .arg(&file)
        .output()
        .unwrap();
    assert!(combined.status.success());
    let combined: serde_json::Value = serde_json::from_slice(&combined.stdout).unwrap();
    assert_eq!(
        combined["outcomes"].as_array().unwrap().len(),
        4,
        "{combined:#}"
    );

    let missing = herald().args(["bench", "report"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("needs the JSON files"));
    let not_json = dir.path().join("notes.txt");
    std::fs::write(&not_json, "hello").unwrap();
    let bad = herald()
        .args(["bench", "report"])
        .arg(&not_json)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("is not the JSON output of `herald bench`")
    );
}

/// Runs `herald bench` with `args` on the test PostgreSQL, and returns its JSON report.
fn run_json(args: &[&str]) -> serde_json::Value {
    let output = herald()
        .arg("bench")
        .args(args)
        .arg("--json")
        .env("HERALD_BENCH_POSTGRES_URL", service_url(POSTGRES_URL))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn inbox_runs_on_nats_with_one_effect_per_event() {
    let report = run_json(&[
        "inbox",
        "--broker",
        "nats",
        "--nats-url",
        &service_url(NATS_URL),
        "--events",
        "1000",
    ]);
    let outcomes = report["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2, "{report:#}");
    for (outcome, case) in outcomes.iter().zip(["without the inbox", "with the inbox"]) {
        assert_eq!(outcome["scenario"], "inbox");
        assert_eq!(outcome["case"], case);
        assert_eq!(outcome["broker"], "nats");
        assert!(outcome["value"].as_f64().unwrap() > 0.0, "{outcome}");
        assert_eq!(
            outcome["checked"],
            "1000 effects for 1000 messages, one per event id"
        );
    }
}

#[test]
fn relay_runs_on_redis_and_reads_its_events_back() {
    let report = run_json(&[
        "relay",
        "--broker",
        "redis",
        "--redis-url",
        &service_url(REDIS_URL),
        "--duration",
        "1",
        "--events",
        "2000",
        "--rate",
        "100",
    ]);
    let outcomes = report["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2, "{report:#}");
    for outcome in outcomes {
        assert_eq!(outcome["scenario"], "relay");
        assert_eq!(outcome["broker"], "redis");
        assert!(outcome["value"].as_f64().unwrap() > 0.0, "{outcome}");
        assert!(
            outcome["settings"]
                .as_str()
                .unwrap()
                .starts_with("8 partitions; "),
            "{outcome}"
        );
    }
    assert_eq!(outcomes[0]["case"], "drain 2000 events");
    assert_eq!(
        outcomes[0]["checked"],
        "2000/2000 published once each, order kept on 100 keys; 2000/2000 read back once each \
         through a consumer group, order kept on 100 keys"
    );
    assert_eq!(outcomes[1]["case"], "latency at 100/s");
    assert_eq!(
        outcomes[1]["checked"],
        "100/100 published once each; 100/100 read back once each through a consumer group"
    );
    let latency = &outcomes[1]["latency"];
    assert_eq!(latency["count"], 100, "{latency}");
    let (p50, p99) = (
        latency["p50_ms"].as_f64().unwrap(),
        latency["p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p50 <= p99, "{latency}");
}

#[test]
fn drain_runs_a_relay_process_on_kafka_and_reads_its_events_back() {
    let report = run_json(&[
        "drain",
        "--broker",
        "kafka",
        "--kafka-url",
        &service_url(KAFKA_URL),
        // Given twice, as scripts/bench does: the last one counts.
        "--drain-events",
        "200000",
        "--drain-events",
        "600",
    ]);
    let outcomes = report["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 1, "{report:#}");
    let drain = &outcomes[0];
    assert_eq!(drain["scenario"], "drain");
    assert_eq!(drain["case"], "600 events, relay process");
    assert_eq!(drain["broker"], "kafka");
    assert!(drain["value"].as_f64().unwrap() > 0.0, "{drain}");
    // The relay process's own memory, not this one's.
    assert!(drain["peak_rss_mib"].as_f64().unwrap() > 0.0, "{drain}");
    assert_eq!(
        drain["checked"],
        "600/600 read back once each through a consumer group, order kept on 100 keys"
    );
    // The relay process was told the same Kafka settings as this run's broker.
    assert!(
        drain["settings"]
            .as_str()
            .unwrap()
            .starts_with("8 partitions, one record per Kafka batch; batch 500"),
        "{drain}"
    );
}

#[test]
fn soak_samples_the_tables_with_and_without_a_held_transaction() {
    let report = run_json(&["soak", "--duration", "2", "--rate", "200"]);
    let outcomes = report["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2, "{report:#}");
    for (outcome, case) in outcomes
        .iter()
        .zip(["no long transaction", "a transaction held open"])
    {
        assert_eq!(outcome["scenario"], "soak");
        assert_eq!(outcome["case"], format!("{case}, 2 s at 200/s"));
        assert_eq!(outcome["checked"], "400/400 consumed, 0 more than once");
        let settings = outcome["settings"].as_str().unwrap();
        // Rows were written and deleted, so the outbox shows up with its sizes.
        assert!(
            settings.starts_with("first→peak→last: ") && settings.contains("herald_outbox "),
            "{outcome}"
        );
    }
}

#[test]
fn soak_runs_on_a_real_broker_with_only_the_outbox_in_the_database() {
    let report = run_json(&[
        "soak",
        "--broker",
        "nats",
        "--nats-url",
        &service_url(NATS_URL),
        "--duration",
        "2",
        "--rate",
        "100",
    ]);
    let outcomes = report["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2, "{report:#}");
    for outcome in outcomes {
        assert_eq!(outcome["broker"], "nats");
        assert_eq!(outcome["checked"], "200/200 consumed, 0 more than once");
        let settings = outcome["settings"].as_str().unwrap();
        assert!(settings.contains("herald_outbox "), "{outcome}");
        assert!(
            !settings.contains("herald_queue_messages"),
            "the embedded queue is not used: {outcome}"
        );
    }
}

#[test]
fn limit_on_nats_is_its_raw_publish_rate() {
    let report = run_json(&[
        "limit",
        "--broker",
        "nats",
        "--nats-url",
        &service_url(NATS_URL),
        "--duration",
        "1",
    ]);
    let outcomes = report["outcomes"].as_array().unwrap();
    // Only the publishes: the INSERT limit does not depend on the broker.
    assert_eq!(outcomes.len(), 1, "{report:#}");
    let limit = &outcomes[0];
    assert_eq!(limit["scenario"], "limit");
    assert_eq!(limit["case"], "raw publish, batches of 500");
    assert_eq!(limit["broker"], "nats");
    assert_eq!(limit["unit"], "messages/s");
    assert!(limit["value"].as_f64().unwrap() > 0.0, "{limit}");
    assert!(
        limit["latency"]["p50_ms"].as_f64().unwrap() > 0.0,
        "{limit}"
    );
    let confirmed: u64 = limit["checked"]
        .as_str()
        .unwrap()
        .strip_suffix(" messages confirmed")
        .unwrap()
        .parse()
        .unwrap();
    assert!(confirmed >= 500 && confirmed.is_multiple_of(500), "{limit}");
}

#[test]
fn real_brokers_refuse_what_they_cannot_run() {
    let refused = |args: &[&str], why: &str| {
        let output = herald().arg("bench").args(args).output().unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    };
    refused(
        &["relay", "--broker", "nats", "--nats-url", "localhost:4222"],
        "--nats-url (HERALD_BENCH_NATS_URL) is not a nats address; write it like nats://127.0.0.1:4222",
    );
    refused(
        &[
            "limit",
            "--broker",
            "kafka",
            "--kafka-url",
            "kafka://somewhere",
        ],
        "--kafka-url (HERALD_BENCH_KAFKA_URL) is not a kafka address",
    );
    refused(
        &["soak", "--store", "sqlite"],
        "the soak scenario measures PostgreSQL's tables and dead tuples; run it with --store \
         postgres",
    );
}
