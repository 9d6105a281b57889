//! Several relays on one outbox: one leads, and a leader that dies or is paused is replaced
//! within twice the lease's TTL; a paused leader that wakes up is fenced off and publishes
//! nothing.
//!
//! Two `herald serve` relay-only processes share one PostgreSQL database (and the embedded
//! queue in it), with a 1 s lease, kept in the database or (`…_in_redis`) in Redis under a key
//! prefix of the test's own. Which one leads is read from the lease, whose holder names the
//! process id. Events are written straight into the outbox; a consumer group on the topic
//! checks at the end that every one arrived.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

use herald_broker::embedded::EmbeddedBroker;
use herald_broker::{Broker, SubscribeOptions, Subscription};
use herald_core::Event;
use herald_leader::{Leases, RedisLeaseOptions};
use herald_store::Store;
use herald_testing::{REDIS_URL, TestDb, service_url, unique_name};

use crate::support::{Running, herald};

const TTL: Duration = Duration::from_secs(1);
const LEASE: &str = "outbox-relay";

struct Cluster {
    db: TestDb,
    topic: String,
    config: tempfile::NamedTempFile,
    leases: Leases,
    written: BTreeSet<String>,
}

impl Cluster {
    /// With the lease in the database.
    async fn new() -> Self {
        Self::with_lease_in(None).await
    }

    /// With the lease in the test Redis.
    async fn with_lease_in_redis() -> Self {
        Self::with_lease_in(Some(service_url(REDIS_URL))).await
    }

    async fn with_lease_in(redis: Option<String>) -> Self {
        let db = TestDb::postgres().await;
        let topic = unique_name("leader");
        let mut config = tempfile::NamedTempFile::new().unwrap();
        write!(
            config,
            "roles = [\"relay\"]\n[http]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"{}\"\n\
             [relay]\ntopic = \"{topic}\"\nlease_ttl = \"{}s\"\npublish_timeout = \"2s\"\n",
            db.url(),
            TTL.as_secs()
        )
        .unwrap();
        let leases = match redis {
            None => Leases::new(db.store().clone()),
            Some(url) => {
                let prefix = unique_name("herald_test_lease");
                write!(
                    config,
                    "lease_backend = \"redis\"\n[redis]\nurl = \"{url}\"\nprefix = \"{prefix}\"\n"
                )
                .unwrap();
                let mut options = RedisLeaseOptions::new(url);
                options.key_prefix = prefix;
                Leases::redis(options).unwrap()
            }
        };
        crate::support::migrate(config.path());
        Self {
            db,
            topic,
            config,
            leases,
            written: BTreeSet::new(),
        }
    }

    fn start(&self) -> Running {
        let mut command = herald();
        command.args(["serve", "--config"]).arg(self.config.path());
        Running::start(command)
    }

    /// Waits (at most `limit`) until `relay` holds the lease; returns how long that took.
    async fn leader_is(&self, relay: &Running, limit: Duration) -> Duration {
        let started = Instant::now();
        let marker = format!("/{}/", relay.pid());
        loop {
            let holder = self
                .leases
                .state(LEASE)
                .await
                .unwrap()
                .filter(|s| s.remaining_ms > 0);
            if holder.as_ref().is_some_and(|s| s.holder.contains(&marker)) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "process {} did not lead within {limit:?}; the lease: {holder:?}",
                relay.pid()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Commits `n` events to the outbox.
    async fn write(&mut self, n: usize) {
        let events: Vec<Event> = (0..n)
            .map(|i| {
                Event::new("test.leader", "/leader-test", &i)
                    .unwrap()
                    .with_partition_key(format!("key-{}", i % 10))
            })
            .collect();
        self.written.extend(events.iter().map(|e| e.id.clone()));
        let Store::Postgres(pool) = self.db.store() else {
            unreachable!("the cluster runs on PostgreSQL")
        };
        let mut tx = pool.begin().await.unwrap();
        herald_outbox::write(&mut *tx, &events).await.unwrap();
        tx.commit().await.unwrap();
    }

    /// Waits (at most `limit`) until the outbox is empty; returns how long that took.
    async fn relayed(&self, limit: Duration) -> Duration {
        let started = Instant::now();
        let Store::Postgres(pool) = self.db.store() else {
            unreachable!("the cluster runs on PostgreSQL")
        };
        loop {
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM herald_outbox")
                .fetch_one(pool)
                .await
                .unwrap();
            if left == 0 {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "{left} events were still in the outbox after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A consumer group that receives everything published to the topic from now on
    /// (the embedded queue keeps messages for the groups that exist when they arrive).
    async fn ledger(&self) -> Box<dyn Subscription> {
        EmbeddedBroker::new(self.db.store().clone())
            .subscribe(&self.topic, "ledger", SubscribeOptions::default())
            .await
            .unwrap()
    }

    /// Reads the ledger group until every written event arrived (bounded); returns how many
    /// arrived more than once.
    async fn check_arrived(&self, ledger: &mut dyn Subscription) -> usize {
        let mut seen = BTreeSet::new();
        let mut duplicates = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while seen.len() < self.written.len() {
            assert!(
                Instant::now() < deadline,
                "{} of {} events arrived within 30 s",
                seen.len(),
                self.written.len()
            );
            for delivery in ledger
                .receive(500, Duration::from_millis(500))
                .await
                .unwrap()
            {
                if !seen.insert(delivery.message.id.clone()) {
                    duplicates += 1;
                }
                delivery.ack().await.unwrap();
            }
        }
        assert!(
            seen.is_subset(&self.written),
            "events that were never written arrived"
        );
        duplicates
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_within_twice_the_ttl() {
    let mut cluster = Cluster::new().await;
    let mut ledger = cluster.ledger().await;
    let first = cluster.start();
    cluster.leader_is(&first, Duration::from_secs(10)).await;
    let second = cluster.start();
    // The second stands by while the first leads.
    tokio::time::sleep(2 * TTL).await;
    cluster.leader_is(&first, Duration::ZERO).await;
    cluster.write(100).await;
    cluster.relayed(Duration::from_secs(10)).await;

    drop(first); // SIGKILL: no release, no more renewals.
    let took = cluster.leader_is(&second, 2 * TTL).await;
    cluster.write(100).await;
    let relayed = cluster.relayed(Duration::from_secs(10)).await;
    let duplicates = cluster.check_arrived(ledger.as_mut()).await;
    eprintln!(
        "leader killed: the standby led after {} ms (TTL {} ms), relayed 100 new events {} ms \
         later; 200 events, {duplicates} duplicates",
        took.as_millis(),
        TTL.as_millis(),
        relayed.as_millis()
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_replaced_and_fenced_off_when_it_wakes() {
    a_paused_leader_is_replaced_and_fenced_off(Cluster::new().await).await;
}

/// The same with the lease in Redis: the relay's rounds are fenced in the database
/// (`herald_fences`), where the woken leader finds the new leader's larger token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_is_replaced_and_fenced_off_when_it_wakes_in_redis() {
    a_paused_leader_is_replaced_and_fenced_off(Cluster::with_lease_in_redis().await).await;
}

async fn a_paused_leader_is_replaced_and_fenced_off(mut cluster: Cluster) {
    let mut ledger = cluster.ledger().await;
    let mut first = cluster.start();
    cluster.leader_is(&first, Duration::from_secs(10)).await;
    let second = cluster.start();
    tokio::time::sleep(TTL).await;

    first.signal("STOP");
    let took = cluster.leader_is(&second, 2 * TTL).await;
    let token = cluster.leases.state(LEASE).await.unwrap().unwrap().token;
    cluster.write(100).await;
    // Within 10 s, unless the first was paused inside a round: then PostgreSQL ends its
    // transaction once it has been idle longer than a round may take (publish_timeout 2 s +
    // 15 s), and the second goes on.
    cluster.relayed(Duration::from_secs(30)).await;

    // The first wakes up still "leading": its next renewal or round meets the new token, and
    // it stops relaying.
    first.signal("CONT");
    first.wait_for_output("lost the lease");
    cluster.write(100).await;
    cluster.relayed(Duration::from_secs(10)).await;
    let state = cluster.leases.state(LEASE).await.unwrap().unwrap();
    assert_eq!(
        state.token, token,
        "the lease stayed with the second: {state:?}"
    );
    cluster.leader_is(&second, Duration::ZERO).await;
    let duplicates = cluster.check_arrived(ledger.as_mut()).await;
    eprintln!(
        "leader paused: the standby led after {} ms (TTL {} ms); 200 events, {duplicates} \
         duplicates",
        took.as_millis(),
        TTL.as_millis()
    );
    drop(second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_hands_over_at_once() {
    let cluster = Cluster::new().await;
    let first = cluster.start();
    cluster.leader_is(&first, Duration::from_secs(10)).await;
    let second = cluster.start();
    tokio::time::sleep(TTL).await;
    assert!(first.terminate().success());
    // Released, not left to run out: the standby's next try (every 100 ms) takes it.
    let took = cluster.leader_is(&second, TTL / 2).await;
    eprintln!(
        "leader stopped: the standby led after {} ms",
        took.as_millis()
    );
    drop(second);
}
