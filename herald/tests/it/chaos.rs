//! Chaos: faults injected into two `herald serve` instances that share one PostgreSQL
//! database (and the embedded queue in it), each running the API, the relay, the dispatcher
//! and the router. One relay leads (the lease); both routers deliver.
//!
//! Every scenario keeps a ledger: the events published, and what a signature-checking sink
//! on 127.0.0.1 received. It asserts that nothing was lost, that each key's events first
//! arrived in publish order (FIFO subscription), that the dispatcher (an inbox consumer) made
//! exactly one dispatch job of each event, and that delivery recovered; and it prints
//! events sent, delivered, duplicates seen by the raw sink, lost, and the time to recover.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herald_leader::Leases;
use herald_testing::server::{PrivateServer, find_binary, private_postgres};
use herald_testing::{TestDb, unique_name};
use serde_json::json;

use crate::support::sink::{Mode, Sink};
use crate::support::webhooks::{
    Api, assert_arrived_exactly, assert_in_order_per_key, duplicates, serve,
};
use crate::support::{Running, client};

const KEYS: u64 = 10;

/// Writes the configuration of both instances: a 1 s relay lease, a 3 s visibility timeout for
/// the dispatcher's events, a 1 s request timeout and a 2 s lease on the dispatch jobs a router
/// holds, so faults are noticed quickly; `broker` is the body of `[broker]`.
fn write_config(dir: &Path, url: &str, broker: &str, token: &str) -> PathBuf {
    let path = dir.join("herald.toml");
    let mut file = std::fs::File::create(&path).unwrap();
    write!(
        file,
        "roles = [\"api\", \"relay\", \"dispatcher\", \"router\"]\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\
         [store]\nurl = \"{}\"\n\
         [broker]\n{broker}\n\
         [api]\nadmin_token = \"{token}\"\n\
         [relay]\nlease_ttl = \"1s\"\n\
         [dispatcher]\nvisibility_timeout = \"3s\"\n\
         [router]\nrequest_timeout = \"1s\"\nlease_ttl = \"2s\"\n",
        url
    )
    .unwrap();
    path
}

struct Cluster {
    // Declared first, dropped last: no herald is connected when the database is dropped.
    _db: Option<TestDb>,
    _dir: tempfile::TempDir,
    config: PathBuf,
    token: String,
    leases: Leases,
    /// The database, read directly for the ledger.
    store: herald_store::Store,
    sink: Sink,
    instances: Vec<Api>,
    published: BTreeSet<String>,
    next: u64,
}

impl Cluster {
    /// Two instances on the embedded queue, and a FIFO subscription of the sink to
    /// `test.chaos.*`.
    async fn start() -> Self {
        Self::start_on("kind = \"embedded\"").await
    }

    /// [`Cluster::start`] on the broker of `broker`, the body of `[broker]`.
    async fn start_on(broker: &str) -> Self {
        let db = TestDb::postgres().await;
        let url = db.url().to_owned();
        Self::start_with(Some(db), &url, broker).await
    }

    /// [`Cluster::start_on`] the database at `url`; `db` is dropped after the instances.
    async fn start_with(db: Option<TestDb>, url: &str, broker: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let token = unique_name("admin-token");
        let config = write_config(dir.path(), url, broker, &token);
        let store = herald_store::Store::connect(url, &herald_store::StoreOptions::default())
            .await
            .unwrap();
        crate::support::migrate(&config);
        let leases = Leases::new(store.clone());
        let mut cluster = Self {
            leases,
            store,
            _db: db,
            _dir: dir,
            config,
            token,
            sink: Sink::start().await,
            instances: Vec::new(),
            published: BTreeSet::new(),
            next: 0,
        };
        cluster.add_instance();
        cluster.add_instance();
        cluster.instances[0]
            .subscribe(
                &cluster.sink,
                "test.chaos.*",
                json!({"fifo": true, "max_attempts": 100}),
            )
            .await;
        cluster
    }

    fn add_instance(&mut self) {
        self.instances.push(Api {
            herald: Running::start(serve(&self.config)),
            key: self.token.clone(),
            http: client(),
        });
    }

    /// Publishes `count` events through instance `via`.
    async fn publish(&mut self, via: usize, count: u64) {
        let ids = self.instances[via]
            .publish("test.chaos.happened", self.next, count, KEYS)
            .await;
        self.next += count;
        self.published.extend(ids);
    }

    /// The index of the instance whose relay leads (bounded wait).
    async fn leader(&self) -> usize {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(state) = self.leases.state("outbox-relay").await.unwrap()
                && state.remaining_ms > 0
                && let Some(index) = self
                    .instances
                    .iter()
                    .position(|api| state.holder.contains(&format!("/{}/", api.herald.pid())))
            {
                return index;
            }
            assert!(Instant::now() < until, "no instance led within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// 100 events delivered; then 300 more to a slowed sink (20 ms a request), until their
    /// deliveries are under way: the moment for a fault.
    async fn stream_under_way(&mut self) {
        self.publish(0, 100).await;
        self.all_arrived(Duration::from_secs(60)).await;
        self.sink.set_mode(Mode::Slow(Duration::from_millis(20)));
        let before = self.published.len();
        self.publish(1, 300).await;
        self.under_way(before).await;
    }

    /// Waits (at most 30 s) until 30 more events than `before` have arrived: deliveries are
    /// under way, so a fault now catches some in flight.
    async fn under_way(&self, before: usize) {
        let until = Instant::now() + Duration::from_secs(30);
        while self.sink.seen(|s| s.first.len()) < before + 30 {
            assert!(
                Instant::now() < until,
                "the new events did not start arriving within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits (bounded) until the sink has every published event; returns how long it took.
    async fn all_arrived(&self, limit: Duration) -> Duration {
        let started = Instant::now();
        self.sink.wait_for(self.published.len(), limit).await;
        started.elapsed()
    }

    /// Checks the ledger and prints it.
    async fn ledger(&self, scenario: &str, recovered: Duration) {
        assert_arrived_exactly(&self.sink, &self.published);
        assert_in_order_per_key(&self.sink);
        // The dispatcher consumes every event through its inbox, whatever was redelivered to
        // it: one dispatch job per event (there is one subscription), never two.
        let herald_store::Store::Postgres(pool) = &self.store else {
            unreachable!("the chaos suite runs on PostgreSQL")
        };
        let (jobs, events): (i64, i64) =
            sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM herald_dispatch_jobs")
                .fetch_one(pool)
                .await
                .unwrap();
        assert_eq!(
            (jobs, events),
            (self.published.len() as i64, self.published.len() as i64),
            "one dispatch job per event"
        );
        let delivered = self.sink.seen(|s| s.first.len());
        eprintln!(
            "chaos {scenario}: sent {}, delivered {delivered}, duplicates {}, lost {}, \
             recovered in {} ms",
            self.published.len(),
            duplicates(&self.sink),
            self.published.len() - delivered,
            recovered.as_millis()
        );
    }
}

/// SIGKILL of the instance whose relay leads, in the middle of a stream of events: the other
/// instance's relay takes the lease over and every event arrives, in order per key. Jobs
/// the killed router held come back when their lease, no longer renewed, runs out (2 s), so
/// the survivor delivers them within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_leading_instance_loses_nothing() {
    let mut cluster = Cluster::start().await;
    cluster.publish(0, 200).await;
    cluster.all_arrived(Duration::from_secs(60)).await;
    assert_eq!(
        duplicates(&cluster.sink),
        0,
        "two routers without faults delivered something twice"
    );

    // A slow endpoint keeps deliveries in flight on both routers while the leader dies.
    cluster.sink.set_mode(Mode::Slow(Duration::from_millis(20)));
    let leader = cluster.leader().await;
    let survivor = 1 - leader;
    let before = cluster.published.len();
    cluster.publish(survivor, 300).await;
    // Kill once deliveries of the new events are under way, so that the dying router holds
    // some.
    cluster.under_way(before).await;
    let killed = Instant::now();
    let dead = cluster.instances.remove(leader);
    drop(dead); // SIGKILL
    cluster.publish(0, 200).await; // index 0 is now the survivor
    assert_eq!(
        cluster.leader().await,
        0,
        "the survivor took the relay over"
    );
    let took_over = killed.elapsed();
    cluster.sink.set_mode(Mode::Accept);
    cluster.all_arrived(Duration::from_secs(90)).await;
    eprintln!(
        "chaos leader kill: the survivor led {} ms after the kill",
        took_over.as_millis()
    );
    cluster
        .ledger("sigkill of the leading instance", killed.elapsed())
        .await;
}

/// An endpoint that hangs (answers after the request timeout) while events keep coming:
/// the attempts time out and are retried, and once it answers again everything arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_loses_nothing() {
    let mut cluster = Cluster::start().await;
    cluster.publish(0, 100).await;
    cluster.all_arrived(Duration::from_secs(60)).await;

    cluster.sink.set_mode(Mode::Slow(Duration::from_secs(5)));
    let begun = cluster.sink.seen(|s| s.begun);
    cluster.publish(1, 100).await;
    let until = Instant::now() + Duration::from_secs(30);
    // Requests the routers give up on after their 1 s timeout.
    while cluster.sink.seen(|s| s.begun) < begun + 20 {
        assert!(
            Instant::now() < until,
            "the routers did not call the hanging endpoint within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.sink.set_mode(Mode::Accept);
    let recovered = cluster.all_arrived(Duration::from_secs(60)).await;
    cluster.ledger("hanging endpoint", recovered).await;
}

/// The broker (a NATS server of the test's own, JetStream on disk) is killed with SIGKILL in
/// the middle of a stream and started again on the same data 2 s later: the relay keeps the
/// events in the outbox meanwhile, and every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing() {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(170);
    let mut nats = PrivateServer::start(
        find_binary("nats-server", &[]),
        |port, data| {
            let mut args: Vec<std::ffi::OsString> =
                ["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"]
                    .iter()
                    .map(Into::into)
                    .collect();
            args.push(data.into());
            args
        },
        deadline,
    )
    .await;
    let broker = format!("kind = \"nats\"\nurl = \"nats://127.0.0.1:{}\"", nats.port);
    let mut cluster = Cluster::start_on(&broker).await;
    cluster.stream_under_way().await;
    nats.kill().await;
    let killed = Instant::now();
    // Events keep coming while the broker is down; the outbox holds them.
    cluster.publish(0, 100).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.start_again(deadline).await;
    cluster.sink.set_mode(Mode::Accept);
    cluster.all_arrived(Duration::from_secs(120)).await;
    cluster.ledger("broker restart", killed.elapsed()).await;
}

/// PostgreSQL itself stops at once (an immediate shutdown: no checkpoint, crash recovery on
/// the next start) in the middle of a stream, and starts again 2 s later. Both instances lose
/// every connection; they retry, and every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_loses_nothing() {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(170);
    let mut postgres = private_postgres();
    postgres.start_again(deadline).await;
    let url = format!("postgres://postgres@127.0.0.1:{}/postgres", postgres.port);
    let mut cluster = Cluster::start_with(None, &url, "kind = \"embedded\"").await;
    cluster.stream_under_way().await;
    postgres.stop_with("QUIT").await;
    let stopped = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    postgres.start_again(deadline).await;
    cluster.sink.set_mode(Mode::Accept);
    // Events are taken again once the instances are ready again.
    let until = Instant::now() + Duration::from_secs(30);
    for api in &cluster.instances {
        loop {
            let ready = api.http.get(api.herald.at("/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                break;
            }
            assert!(
                Instant::now() < until,
                "an instance was not ready again within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    cluster.publish(0, 100).await;
    cluster.all_arrived(Duration::from_secs(120)).await;
    cluster.ledger("database restart", stopped.elapsed()).await;
}
