//! `herald serve` on each real broker, end to end: events posted to the API go into the
//! PostgreSQL outbox, the relay publishes them to the broker, the dispatcher consumes them and
//! the router delivers them as signed webhooks to a sink on 127.0.0.1, in order per key.
//!
//! One case per backend runs against the shared server `scripts/test` provides, on topics,
//! names and a database of its own. One more case runs `herald serve` against a Redis server
//! of its own that is down when Herald starts and is killed (SIGKILL) in the middle of a
//! stream: Herald must start anyway, say on `/readyz` that the broker is not ready, log it,
//! accept events meanwhile, and deliver every one of them once the broker is back.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herald_testing::server::{PrivateServer, durable_redis_args, find_binary};
use herald_testing::{AMQP_URL, KAFKA_URL, NATS_URL, REDIS_URL, TestDb, service_url, unique_name};
use serde_json::{Value, json};

use crate::support::sink::Sink;
use crate::support::webhooks::{Api, assert_arrived_exactly, duplicates, serve};
use crate::support::{Running, client};

/// Events per backend case, and the keys they are spread over.
const EVENTS: u64 = 300;
const KEYS: u64 = 10;

/// Writes the configuration: every role on 127.0.0.1, the store on `db`, the broker
/// section `broker` (TOML lines), topics of the test's own, and the admin key `token`.
fn write_config(dir: &Path, db: &TestDb, broker: &str, token: &str) -> PathBuf {
    let path = dir.join("herald.toml");
    let mut file = std::fs::File::create(&path).unwrap();
    write!(
        file,
        "roles = [\"api\", \"relay\", \"users\", \"dispatcher\", \"router\"]\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\
         [store]\nurl = \"{}\"\n\
         [broker]\n{broker}\
         partitions = 4\nsession_timeout = \"3s\"\n\
         [relay]\ntopic = \"{}\"\n\
         [api]\nadmin_token = \"{token}\"\n",
        db.url(),
        unique_name("events"),
    )
    .unwrap();
    path
}

/// `GET /readyz`: its status and body.
async fn readiness(api: &Api) -> (u16, Value) {
    let response = api.http.get(api.herald.at("/readyz")).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Polls `/readyz` until it answers `want`, at most `deadline`; returns the last body.
async fn wait_ready(api: &Api, want: u16, deadline: Duration) -> Value {
    let until = Instant::now() + deadline;
    loop {
        let (status, body) = readiness(api).await;
        if status == want {
            return body;
        }
        assert!(
            Instant::now() < until,
            "/readyz did not answer {want} within {deadline:?}; it answers {status}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `herald serve` on the broker described by `broker` and checks that [`EVENTS`]
/// events reach a FIFO webhook subscription, each of them, in order per key.
async fn relays_and_delivers(kind: &str, broker: &str) {
    let started = Instant::now();
    let db = TestDb::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let token = unique_name("admin-token");
    let config = write_config(dir.path(), &db, broker, &token);
    let api = Api {
        herald: Running::start(serve(&config)),
        key: token,
        http: client(),
    };
    let ready = wait_ready(&api, 200, Duration::from_secs(30)).await;
    assert_eq!(ready["status"], "ready", "{ready}");

    let sink = Sink::start().await;
    api.subscribe(&sink, "test.order.*", json!({"fifo": true}))
        .await;
    let published: BTreeSet<String> = api
        .publish("test.order.placed", 0, EVENTS, KEYS)
        .await
        .into_iter()
        .collect();
    sink.wait_for(EVENTS as usize, Duration::from_secs(90))
        .await;
    assert_arrived_exactly(&sink, &published);
    sink.seen(|seen| assert_eq!(seen.per_key.len(), KEYS as usize));
    eprintln!(
        "{kind}: {EVENTS} events posted, relayed and delivered in {:?} ({} duplicates)",
        started.elapsed(),
        duplicates(&sink)
    );
    assert!(api.herald.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_nats_relays_and_delivers() {
    let url = service_url(NATS_URL);
    relays_and_delivers("nats", &format!("kind = \"nats\"\nurl = \"{url}\"\n")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_kafka_relays_and_delivers() {
    let url = service_url(KAFKA_URL);
    let prefix = unique_name("h");
    // The test server (tansu) reads only from record-batch boundaries.
    relays_and_delivers(
        "kafka",
        &format!(
            "kind = \"kafka\"\nurl = \"{url}\"\nprefix = \"{prefix}.\"\none_record_per_batch = true\n"
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_rabbitmq_relays_and_delivers() {
    let url = service_url(AMQP_URL);
    let prefix = unique_name("h");
    relays_and_delivers(
        "rabbitmq",
        &format!("kind = \"rabbitmq\"\nurl = \"{url}\"\nprefix = \"{prefix}.\"\n"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_redis_relays_and_delivers() {
    let url = service_url(REDIS_URL);
    let prefix = unique_name("h");
    relays_and_delivers(
        "redis",
        &format!("kind = \"redis\"\nurl = \"{url}\"\nprefix = \"{prefix}\"\n"),
    )
    .await;
}

/// Posts `count` events from `first` in batches of 20, one batch every 50 ms.
async fn publish_paced(api: &Api, first: u64, count: u64) -> Vec<String> {
    let mut ids = Vec::new();
    let mut n = first;
    while n < first + count {
        let batch = 20.min(first + count - n);
        ids.extend(api.publish("test.order.placed", n, batch, KEYS).await);
        n += batch;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_survives_a_broker_down_at_start_and_killed_mid_stream() {
    let began = Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(170);
    let redis = find_binary("redis-server", &[]);
    let mut server = PrivateServer::new(redis, durable_redis_args);
    let db = TestDb::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let token = unique_name("admin-token");
    let broker = format!(
        "kind = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\n",
        server.port
    );
    let config = write_config(dir.path(), &db, &broker, &token);

    // Down at start: Herald starts, is alive, is not ready, says why, and takes events.
    let mut running = Running::start(serve(&config));
    running.wait_for_output("cannot connect to the broker");
    let api = Api {
        herald: running,
        key: token,
        http: client(),
    };
    let live = api
        .http
        .get(api.herald.at("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(live.status(), 200, "alive while the broker is down");
    let (status, body) = readiness(&api).await;
    assert_eq!(status, 503, "{body}");
    let text = body.to_string();
    assert!(
        text.contains("broker") && text.contains("not_ready"),
        "/readyz names the broker: {body}"
    );
    let sink = Sink::start().await;
    api.subscribe(&sink, "test.order.*", json!({"fifo": true}))
        .await;
    let mut published: BTreeSet<String> = api
        .publish("test.order.placed", 0, 100, KEYS)
        .await
        .into_iter()
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        sink.seen(|s| s.requests),
        0,
        "nothing can be delivered before the broker is up"
    );

    // The broker comes up: Herald becomes ready and delivers what it took meanwhile.
    let phase = Instant::now();
    server.start_again(deadline).await;
    wait_ready(&api, 200, Duration::from_secs(30)).await;
    sink.wait_for(published.len(), Duration::from_secs(60))
        .await;
    assert_arrived_exactly(&sink, &published);
    eprintln!(
        "broker up after start: ready and 100 events delivered {:?} after it started",
        phase.elapsed()
    );

    // Killed in the middle of a paced stream, down 3 s, started again on the same data.
    let outage = async {
        let until = Instant::now() + Duration::from_secs(60);
        while sink.seen(|s| s.first.len()) < 200 {
            assert!(
                Instant::now() < until,
                "the stream did not start flowing within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.kill().await;
        let killed = Instant::now();
        let at_kill = sink.seen(|s| s.first.len());
        let body = wait_ready(&api, 503, Duration::from_secs(15)).await;
        assert!(body.to_string().contains("broker"), "{body}");
        tokio::time::sleep(Duration::from_secs(3).saturating_sub(killed.elapsed())).await;
        server.start_again(deadline).await;
        (at_kill, Instant::now())
    };
    let (ids, (at_kill, restarted)) = tokio::join!(publish_paced(&api, 100, 600), outage);
    published.extend(ids);
    assert_eq!(published.len(), 700, "every post was accepted");
    assert!(
        at_kill < published.len(),
        "the stream ended before the kill; make it longer"
    );
    wait_ready(&api, 200, Duration::from_secs(30)).await;
    sink.wait_for(published.len(), Duration::from_secs(90))
        .await;
    assert_arrived_exactly(&sink, &published);
    eprintln!(
        "redis killed with {at_kill} of 700 delivered; all delivered {:?} after it restarted; \
         {} duplicates; test took {:?}",
        restarted.elapsed(),
        duplicates(&sink),
        began.elapsed()
    );
    assert!(api.herald.terminate().success());
}
