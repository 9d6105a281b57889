//! `herald bench` as a smoke test: every scenario runs small and checks its own results. This
//! is a correctness check of the benchmarks, not a timing gate.

use herald_testing::{POSTGRES_URL, service_url};

use crate::support::herald;

fn run_all(store: &str) -> serde_json::Value {
    let output = herald()
        .args([
            "bench",
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
            "--json",
        ])
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
    assert_eq!(outcomes.len(), 10, "{cases:#?}");
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
