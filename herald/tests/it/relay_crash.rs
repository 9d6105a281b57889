//! Crash safety of the relay: SIGKILL in the middle of a backlog loses nothing.
//!
//! The test writes a ledger of committed events straight into the outbox (PostgreSQL or a
//! SQLite file), starts `herald serve` as a relay-only process publishing to the embedded
//! queue in the same database, kills it with SIGKILL while the backlog is being published,
//! starts it again, and then reads the whole topic: every committed event must have arrived at
//! least once, and nothing that was never committed may appear.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use herald_broker::embedded::EmbeddedBroker;
use herald_broker::{Broker, SubscribeOptions};
use herald_core::Event;
use herald_store::Store;
use herald_testing::{TestDb, unique_name};

use crate::support::{Running, herald};

const EVENTS: usize = 20_000;
const KEYS: usize = 50;

async fn outbox_rows(store: &Store) -> i64 {
    let sql = "SELECT count(*) FROM herald_outbox";
    match store {
        Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
        Store::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await.unwrap(),
    }
}

/// Commits `events` to the outbox in one transaction, or rolls them back.
async fn write(store: &Store, events: &[Event], commit: bool) {
    match store {
        Store::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            herald_outbox::write(&mut *tx, events).await.unwrap();
            if commit {
                tx.commit().await.unwrap();
            } else {
                tx.rollback().await.unwrap();
            }
        }
        Store::Sqlite(pool) => {
            let mut tx = pool.begin().await.unwrap();
            herald_outbox::write(&mut *tx, events).await.unwrap();
            if commit {
                tx.commit().await.unwrap();
            } else {
                tx.rollback().await.unwrap();
            }
        }
    }
}

fn serve_command(config: &std::path::Path) -> std::process::Command {
    let mut command = herald();
    command.args(["serve", "--config"]).arg(config);
    command
}

herald_testing::on_both_stores!(sigkill_mid_backlog_loses_nothing);

async fn sigkill_mid_backlog_loses_nothing(db: TestDb) {
    let topic = unique_name("crash");
    let mut config = tempfile::NamedTempFile::new().unwrap();
    write!(
        config,
        "roles = [\"relay\"]\n[http]\nlisten = \"127.0.0.1:0\"\n[store]\nurl = \"{}\"\n[relay]\ntopic = \"{topic}\"\nbatch_size = 50\npublish_timeout = \"2s\"\n",
        db.url()
    )
    .unwrap();

    // The schema, through the real command.
    crate::support::migrate(config.path());

    // The ledger: events committed to the outbox, in transactions of 500.
    let mut ledger = BTreeSet::new();
    let mut events = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let event = Event::new("test.crash", "/crash-test", &i)
            .unwrap()
            .with_partition_key(format!("key-{}", i % KEYS));
        ledger.insert(event.id.clone());
        events.push(event);
    }
    for chunk in events.chunks(500) {
        write(db.store(), chunk, true).await;
    }
    // One rolled-back transaction, whose events must never appear.
    let ghost = Event::new("test.crash", "/crash-test", &"ghost").unwrap();
    write(db.store(), std::slice::from_ref(&ghost), false).await;

    // A consumer group that collects everything published.
    let broker = EmbeddedBroker::new(db.store().clone());
    let options = SubscribeOptions {
        visibility_timeout: Duration::from_secs(60),
        max_deliveries: 5,
    };
    let mut subscription = broker.subscribe(&topic, "ledger", options).await.unwrap();

    // Start the relay and kill it while it is in the middle of the backlog.
    let relay = Running::start(serve_command(config.path()));
    let deadline = Instant::now() + Duration::from_secs(120);
    let remaining_at_kill = loop {
        let remaining = outbox_rows(db.store()).await;
        if remaining < (EVENTS as i64) * 3 / 4 {
            break remaining;
        }
        assert!(
            Instant::now() < deadline,
            "the relay published nothing within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    drop(relay); // SIGKILL
    assert!(
        remaining_at_kill > 0,
        "the relay finished before it could be killed; raise EVENTS"
    );

    // Start it again; it must publish the rest (on SQLite, the rows the killed relay had
    // leased come back when the lease ends: publish_timeout + 40 s).
    let relay = Running::start(serve_command(config.path()));
    let deadline = Instant::now() + Duration::from_secs(180);
    while outbox_rows(db.store()).await > 0 {
        assert!(
            Instant::now() < deadline,
            "the restarted relay did not empty the outbox within 180 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(relay.terminate().success());

    // Read everything that reached the broker.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let batch = subscription
            .receive(500, Duration::from_secs(2))
            .await
            .unwrap();
        if batch.is_empty() && seen.len() >= ledger.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} events arrived within 180 s",
            seen.len(),
            ledger.len()
        );
        for delivery in batch {
            *seen.entry(delivery.message.id.clone()).or_default() += 1;
            delivery.ack().await.unwrap();
        }
    }

    let received: BTreeSet<String> = seen.keys().cloned().collect();
    let missing: Vec<_> = ledger.difference(&received).take(5).collect();
    let invented: Vec<_> = received.difference(&ledger).take(5).collect();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    eprintln!(
        "crash test ({:?}): {} committed, {} received, {} duplicates, {} remaining in the outbox at SIGKILL",
        db.store().backend(),
        ledger.len(),
        received.len(),
        duplicates,
        remaining_at_kill
    );
    assert!(
        missing.is_empty(),
        "committed events were lost, e.g. {missing:?}"
    );
    assert!(
        invented.is_empty(),
        "events that were never committed arrived, e.g. {invented:?}"
    );
    assert!(
        !received.contains(&ghost.id),
        "the rolled-back event leaked"
    );
}
