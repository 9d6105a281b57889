//! Webhook delivery end to end through `herald serve`, the production path: every role in one
//! process on a fresh PostgreSQL database, with the embedded broker in the same database.
//!
//! Events posted to the API are delivered, signed and in order per key, to a sink on
//! 127.0.0.1; they survive an outage of the endpoint (the failed attempts show in
//! `/v1/dispatch-jobs`); and they survive SIGKILL of the process in the middle of a backlog:
//! after a restart on the same database every event arrives at least once, still in order per
//! key at first arrival.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herald_testing::{TestDb, unique_name};
use serde_json::{Value, json};

use crate::support::sink::{Mode, Sink};
use crate::support::webhooks::{
    Api, assert_arrived_exactly, duplicates, serve, wait_until_settled,
};
use crate::support::{Running, client};

const KEYS: u64 = 20;
const FIRST: u64 = 1000;
const DURING_OUTAGE: u64 = 50;
const BACKLOG: u64 = 300;

/// Writes the configuration: every role, listening on 127.0.0.1, on `db` with the embedded
/// broker, and the admin key `token`.
fn write_config(dir: &Path, db: &TestDb, token: &str) -> PathBuf {
    let path = dir.join("herald.toml");
    let mut file = std::fs::File::create(&path).unwrap();
    write!(
        file,
        "roles = [\"api\", \"relay\", \"users\", \"dispatcher\", \"router\"]\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\
         [store]\nurl = \"{}\"\n\
         [broker]\nkind = \"embedded\"\n\
         [api]\nadmin_token = \"{token}\"\n",
        db.url()
    )
    .unwrap();
    path
}

/// Every job, once none is pending or being delivered, paged through
/// `status=delivered`: asserts there is exactly one per event of `published`, and no dead
/// letter.
async fn delivered_jobs(api: &Api, published: &BTreeSet<String>) -> Vec<Value> {
    wait_until_settled(api, Duration::from_secs(60)).await;
    let jobs = api.jobs("status=delivered&limit=500").await;
    let events: BTreeSet<String> = jobs
        .iter()
        .map(|job| job["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(jobs.len(), published.len(), "one delivered job per event");
    assert_eq!(&events, published, "the delivered jobs are the events'");
    let dead = api.get("/v1/dispatch-jobs?status=dead&limit=1").await;
    assert_eq!(dead["data"], json!([]), "{dead}");
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_postgres_delivers_through_an_outage_and_a_sigkill() {
    let started = Instant::now();
    // Declared first, dropped last: no herald is connected when the database is dropped.
    let db = TestDb::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let token = unique_name("admin-token");
    let config = write_config(dir.path(), &db, &token);
    let mut api = Api {
        herald: Running::start(serve(&config)),
        key: token,
        http: client(),
    };
    let system = api.get("/v1/system").await;
    assert_eq!(system["mode"], "serve", "{system}");

    let sink = Sink::start().await;
    api.subscribe(
        &sink,
        "test.order.*",
        json!({"fifo": true, "max_attempts": 100}),
    )
    .await;

    // 1,000 events over 20 keys: all delivered, every signature good, in order per key.
    let phase = Instant::now();
    let mut published: BTreeSet<String> = BTreeSet::new();
    published.extend(api.publish("test.order.placed", 0, FIRST, KEYS).await);
    sink.wait_for(FIRST as usize, Duration::from_secs(120))
        .await;
    eprintln!(
        "{FIRST} FIFO deliveries over {KEYS} keys in {:?}",
        phase.elapsed()
    );
    assert_arrived_exactly(&sink, &published);
    sink.seen(|seen| {
        assert_eq!(seen.per_key.len(), KEYS as usize);
        assert!(
            seen.per_key
                .values()
                .all(|s| s.len() == (FIRST / KEYS) as usize)
        );
    });

    // The endpoint fails (500) while 50 more are published, until it has refused some
    // attempts; then it recovers and everything arrives.
    let phase = Instant::now();
    let requests_before = sink.seen(|s| s.requests);
    sink.set_mode(Mode::Fail);
    published.extend(
        api.publish("test.order.shipped", FIRST, DURING_OUTAGE, KEYS)
            .await,
    );
    let until = Instant::now() + Duration::from_secs(30);
    while sink.seen(|s| s.requests) < requests_before + 10 {
        assert!(
            Instant::now() < until,
            "the router did not call the failing endpoint within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sink.set_mode(Mode::Accept);
    sink.wait_for(published.len(), Duration::from_secs(60))
        .await;
    eprintln!(
        "{DURING_OUTAGE} events through the outage in {:?}",
        phase.elapsed()
    );
    assert_arrived_exactly(&sink, &published);

    // The API shows one delivered job per event, and the 500s among the attempts.
    let jobs = delivered_jobs(&api, &published).await;
    let mut failed_500 = 0;
    for job in &jobs {
        assert_eq!(job["status"], "delivered", "{job}");
        let attempts = job["attempts"].as_array().unwrap();
        assert_eq!(attempts.last().unwrap()["outcome"], "delivered", "{job}");
        failed_500 += attempts.iter().filter(|a| a["status_code"] == 500).count();
    }
    assert!(failed_500 > 0, "no attempt recorded status 500");
    let duplicates_before_kill = duplicates(&sink);

    // A slow endpoint builds a backlog; herald is killed with SIGKILL in the middle of it.
    let phase = Instant::now();
    let before_backlog = published.len();
    sink.set_mode(Mode::Slow(Duration::from_millis(50)));
    published.extend(
        api.publish("test.order.backlog", FIRST + DURING_OUTAGE, BACKLOG, KEYS)
            .await,
    );
    let until = Instant::now() + Duration::from_secs(60);
    let arrived_at_kill = loop {
        let have = sink.seen(|s| s.first.len()) - before_backlog;
        if have >= 30 {
            break have;
        }
        assert!(
            Instant::now() < until,
            "only {have} of the backlog arrived within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let Api { herald, key, http } = api;
    drop(herald); // `Running` kills with SIGKILL (`Child::kill`) and reaps the process.
    assert!(
        arrived_at_kill < BACKLOG as usize,
        "the backlog was delivered before the kill; raise BACKLOG"
    );

    // Restarted on the same database, herald delivers the rest. Jobs the killed router held
    // come back when their lease ends (request timeout + 30 s).
    api = Api {
        herald: Running::start(serve(&config)),
        key,
        http,
    };
    sink.set_mode(Mode::Accept);
    sink.wait_for(published.len(), Duration::from_secs(90))
        .await;
    eprintln!(
        "SIGKILL with {arrived_at_kill} of {BACKLOG} delivered; all arrived {:?} after the backlog was published",
        phase.elapsed()
    );
    assert_arrived_exactly(&sink, &published);
    delivered_jobs(&api, &published).await;
    let duplicates_after = duplicates(&sink);
    eprintln!(
        "duplicates: {duplicates_before_kill} before the kill, {} after; {} requests in all; test took {:?}",
        duplicates_after - duplicates_before_kill,
        sink.seen(|s| s.requests),
        started.elapsed()
    );
    assert!(api.herald.terminate().success());
}
