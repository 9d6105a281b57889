//! The outbox against real PostgreSQL and SQLite: the writer in the caller's transaction, and
//! the relay's commit visibility, per-key order, failure handling and wake-ups.
//!
//! Every relay case runs twice on each engine: `memory::…` publishes to the recording broker
//! double alone, and `embedded::…` puts that double (for its fault injection) in front of the
//! real embedded broker on the test database, then checks what a consumer group receives.

#![allow(clippy::unwrap_used)]

mod generations;
mod support;

use std::collections::HashSet;
use std::time::Duration;

use herald_core::Event;
use herald_outbox::{OutboxError, Relay, header};
use herald_store::Store;
use herald_testing::{TestDb, on_both_stores};
use tokio::task::JoinSet;

use support::{
    Seen, Setup, Via, event, eventually, key_seq_of, outbox_db, rows, sequences, spawn,
    write_committed,
};

const LONG: Duration = Duration::from_secs(120);

fn ids(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

/// Runs rounds until one publishes nothing (bounded).
async fn drain(relay: &Relay) -> usize {
    let mut total = 0;
    for _ in 0..1000 {
        match relay.relay_once().await.unwrap() {
            0 => return total,
            n => total += n,
        }
    }
    panic!("the relay did not drain the outbox in 1000 rounds");
}

async fn the_schema_applies_once(db: TestDb) {
    let first = herald_outbox::migrate(db.store()).await.unwrap();
    let expected = match db.store() {
        Store::Postgres(_) => herald_outbox::MIGRATIONS.postgres.len(),
        Store::Sqlite(_) => herald_outbox::MIGRATIONS.sqlite.len(),
    };
    assert_eq!(first.len(), expected);
    assert!(first.iter().all(|applied| applied.component == "outbox"));
    assert!(herald_outbox::migrate(db.store()).await.unwrap().is_empty());
    assert!(rows(db.store()).await.is_empty());
}

/// Case 5: invalid events are rejected with every problem, and nothing is written.
async fn invalid_events_are_rejected_and_nothing_is_written(db: TestDb) {
    let store = outbox_db(&db).await;
    let good = event("k", 0);
    let mut bad = event("k", 1);
    bad.event_type = "not a type".into();
    bad.traceparent = Some("00-nope".into());
    let huge = Event::new("test.item.made", "/tests", &"x".repeat(300 * 1024)).unwrap();
    let batch = [good, bad, huge];
    let err = match &store {
        Store::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            let err = herald_outbox::write(&mut *tx, &batch).await.unwrap_err();
            herald_outbox::write(&mut *tx, &[]).await.unwrap();
            tx.commit().await.unwrap();
            err
        }
        Store::Sqlite(pool) => {
            let mut tx = pool.begin().await.unwrap();
            let err = herald_outbox::write(&mut *tx, &batch).await.unwrap_err();
            herald_outbox::write(&mut *tx, &[]).await.unwrap();
            tx.commit().await.unwrap();
            err
        }
    };
    let OutboxError::Invalid(errors) = &err else {
        panic!("expected Invalid, got {err:?}");
    };
    let pointers: Vec<&str> = errors.iter().map(|e| e.pointer.as_str()).collect();
    assert_eq!(pointers, ["/1/type", "/1/traceparent", "/2"]);
    assert!(
        err.to_string()
            .starts_with("the events are not valid: /1/type"),
        "{err}"
    );
    assert!(rows(&store).await.is_empty(), "nothing is written");
}

on_both_stores!(
    the_schema_applies_once,
    invalid_events_are_rejected_and_nothing_is_written,
);

/// Case 1: a rolled-back transaction publishes nothing; committed ones all arrive.
async fn rolled_back_transactions_publish_nothing(db: TestDb, via: Via) {
    let setup = Setup::new(&db, via).await;
    let store = &setup.store;
    let rolled_back: Vec<Event> = (0..3).map(|i| event("gone", i)).collect();
    let dropped: Vec<Event> = (0..2).map(|i| event("dropped", i)).collect();
    let committed: Vec<Event> = (0..3).map(|i| event("kept", i)).collect();
    match store {
        Store::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            herald_outbox::write(&mut *tx, &rolled_back).await.unwrap();
            tx.rollback().await.unwrap();
            let mut tx = pool.begin().await.unwrap();
            herald_outbox::write(&mut *tx, &dropped).await.unwrap();
            drop(tx);
        }
        Store::Sqlite(pool) => {
            let mut tx = pool.begin().await.unwrap();
            herald_outbox::write(&mut *tx, &rolled_back).await.unwrap();
            tx.rollback().await.unwrap();
            let mut tx = pool.begin().await.unwrap();
            herald_outbox::write(&mut *tx, &dropped).await.unwrap();
            drop(tx);
        }
    }
    write_committed(store, &committed).await;

    let relay = setup.relay(setup.options());
    assert_eq!(drain(&relay).await, 3);
    let received = setup.check_delivery().await;
    assert_eq!(
        received.into_iter().map(|m| m.id).collect::<Vec<_>>(),
        ids(&committed)
    );
    assert!(rows(store).await.is_empty(), "published rows are deleted");
}

/// Case 2: a transaction that began first but commits last is not skipped.
async fn a_late_commit_of_an_early_transaction_is_not_skipped(db: TestDb, via: Via) {
    let setup = Setup::new(&db, via).await;
    let store = &setup.store;
    let relay = setup.relay(setup.options());
    let early = event("k", 0);
    let late = event("k", 1);
    match store {
        Store::Postgres(pool) => {
            // The early transaction inserts first, so its row gets the smaller id, and stays
            // open while a later one commits and is relayed.
            let mut tx = pool.begin().await.unwrap();
            herald_outbox::write(&mut *tx, std::slice::from_ref(&early))
                .await
                .unwrap();
            let early_id: i64 = sqlx::query_scalar("SELECT id FROM herald_outbox")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            write_committed(store, std::slice::from_ref(&late)).await;
            let late_id: i64 = sqlx::query_scalar("SELECT id FROM herald_outbox")
                .fetch_one(pool)
                .await
                .unwrap();
            assert!(early_id < late_id);
            assert_eq!(relay.relay_once().await.unwrap(), 1);
            assert_eq!(
                relay.relay_once().await.unwrap(),
                0,
                "uncommitted rows are invisible"
            );
            tx.commit().await.unwrap();
        }
        Store::Sqlite(pool) => {
            // SQLite has one writer at a time: a transaction that has inserted holds the write
            // lock until it commits, so no later producer can commit before it, and one that
            // has only read cannot write after another commit. What remains: a transaction
            // begun first that writes and commits after a later one was relayed.
            let mut tx = pool.begin().await.unwrap();
            write_committed(store, std::slice::from_ref(&late)).await;
            assert_eq!(relay.relay_once().await.unwrap(), 1);
            assert_eq!(relay.relay_once().await.unwrap(), 0);
            herald_outbox::write(&mut *tx, std::slice::from_ref(&early))
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    }
    assert_eq!(
        relay.relay_once().await.unwrap(),
        1,
        "the late commit is relayed"
    );
    let received = setup.check_delivery().await;
    assert_eq!(
        received.into_iter().map(|m| m.id).collect::<Vec<_>>(),
        [late.id.clone(), early.id.clone()]
    );
    assert!(rows(store).await.is_empty());
}

/// Case 3: 10,000 events over 100 keys from concurrent producers arrive exactly once each,
/// in order per key.
async fn order_per_key_with_concurrent_producers(db: TestDb, via: Via) {
    const PRODUCERS: usize = 4;
    const KEYS_EACH: usize = 25;
    const PER_KEY: usize = 100;
    const TOTAL: usize = PRODUCERS * KEYS_EACH * PER_KEY;
    let setup = Setup::new(&db, via).await;
    let mut options = setup.options();
    options.batch_size = 500;
    let running = spawn(setup.relay(options));

    let mut producers = JoinSet::new();
    for producer in 0..PRODUCERS {
        let store = setup.store.clone();
        let waker = running.waker.clone();
        producers.spawn(async move {
            let keys: Vec<String> = (0..KEYS_EACH)
                .map(|k| format!("key-{producer}-{k}"))
                .collect();
            let events: Vec<Event> = (0..PER_KEY)
                .flat_map(|seq| keys.iter().map(move |key| event(key, seq)))
                .collect();
            // Transactions of 1 to 7 events, one after another.
            let mut rest = &events[..];
            let mut size = producer + 1;
            while !rest.is_empty() {
                let n = size.min(rest.len());
                write_committed(&store, &rest[..n]).await;
                waker.wake();
                rest = &rest[n..];
                size = size % 7 + 1;
            }
        });
    }
    while let Some(done) = producers.join_next().await {
        done.unwrap();
    }
    eventually("every event to be relayed", LONG, || async {
        setup.broker.confirmed_count() >= TOTAL
    })
    .await;
    running.stop().await;

    let received = setup.check_delivery().await;
    assert_eq!(received.len(), TOTAL, "each event exactly once");
    let unique: HashSet<&str> = received.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(unique.len(), TOTAL);
    let sequences = sequences(&received);
    assert_eq!(sequences.len(), PRODUCERS * KEYS_EACH);
    let expected: Vec<usize> = (0..PER_KEY).collect();
    for (key, seqs) in &sequences {
        assert_eq!(seqs, &expected, "the order of key {key}");
    }
    assert!(rows(&setup.store).await.is_empty());
    assert!(herald_telemetry::metrics::metrics().outbox_relayed.get() >= TOTAL as u64);
}

/// Two relays on one outbox (as during a leader hand-over) still keep each key's order.
async fn two_relays_on_one_outbox_keep_order(db: TestDb, via: Via) {
    let setup = Setup::new(&db, via).await;
    let keys: Vec<String> = (0..20).map(|k| format!("key-{k}")).collect();
    let first = spawn(setup.relay(setup.options()));
    let second = spawn(setup.relay(setup.options()));
    for seq in 0..50 {
        let events: Vec<Event> = keys.iter().map(|key| event(key, seq)).collect();
        write_committed(&setup.store, &events).await;
        first.waker.wake();
        second.waker.wake();
    }
    eventually("every event to be relayed", LONG, || async {
        setup.broker.confirmed_count() >= 1000
    })
    .await;
    first.stop().await;
    second.stop().await;
    let received = setup.check_delivery().await;
    assert_eq!(received.len(), 1000);
    let expected: Vec<usize> = (0..50).collect();
    for (key, seqs) in sequences(&received) {
        assert_eq!(seqs, expected, "the order of key {key}");
    }
}

/// A relay that lost its lease while it was paused (another took it over) publishes nothing
/// when it wakes up, and stops; the new holder's relay publishes everything.
async fn a_relay_whose_lease_was_taken_publishes_nothing(db: TestDb, via: Via) {
    let setup = Setup::new(&db, via).await;
    herald_store::migrate::migrate(&setup.store, &[&herald_leader::MIGRATIONS])
        .await
        .unwrap();
    let leases = herald_leader::Leases::new(setup.store.clone());
    let old = leases.acquire("relay", "a", 60_000).await.unwrap().unwrap();
    // a is paused; its lease ends and b takes it.
    leases.release(&old, "a").await.unwrap();
    let new = leases.acquire("relay", "b", 60_000).await.unwrap().unwrap();
    let events: Vec<Event> = (0..10).map(|seq| event("k", seq)).collect();
    write_committed(&setup.store, &events).await;

    let stale = setup.relay(setup.options());
    tokio::time::timeout(
        Duration::from_secs(10),
        stale.run_fenced(old, std::future::pending()),
    )
    .await
    .expect("the fenced relay stops by itself")
    .unwrap();
    assert_eq!(
        setup.broker.confirmed_count(),
        0,
        "the former leader published"
    );
    assert_eq!(
        rows(&setup.store).await.len(),
        10,
        "nothing was claimed away"
    );

    let current = setup.relay(setup.options());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        current
            .run_fenced(new, async {
                let _ = stopped.await;
            })
            .await
    });
    eventually("the leader to relay every event", LONG, || async {
        setup.broker.confirmed_count() >= 10
    })
    .await;
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    let received = setup.check_delivery().await;
    assert_eq!(received.len(), 10);
    assert!(rows(&setup.store).await.is_empty());
}

/// Case 4: one key's failing event does not stall the other keys; its key's later events wait
/// for it, and follow it once it is published.
async fn a_failing_event_holds_back_only_its_key(db: TestDb, via: Via) {
    const SEQS: usize = 20;
    let setup = Setup::new(&db, via).await;
    let broker = &setup.broker;
    let mut keys: Vec<String> = (0..10).map(|k| format!("other-{k}")).collect();
    keys.extend(["poison".to_owned(), "flaky".to_owned()]);
    let mut all = Vec::new();
    for seq in 0..SEQS {
        all.extend(keys.iter().map(|key| event(key, seq)));
    }
    // `all` is ordered by seq, then key: the events of seq 1 of "poison" and "flaky".
    let poison = all[keys.len() + 10].id.clone();
    let flaky = all[keys.len() + 11].id.clone();
    assert_eq!(key_seq_of(&all[keys.len() + 10]), ("poison".to_owned(), 1));
    broker.refuse(&poison, None);
    broker.refuse(&flaky, Some(3));
    write_committed(&setup.store, &all).await;
    let running = spawn(setup.relay(setup.options()));

    // Everything except the poisoned key's events after the poison arrives while the poison
    // is still being refused.
    let flowing = all.len() - (SEQS - 1);
    eventually("the other keys' events to arrive", LONG, || async {
        broker.confirmed_count() >= flowing
    })
    .await;
    let sequences_now = sequences(&broker.confirmed());
    assert_eq!(
        sequences_now["poison"],
        [0],
        "the poisoned key waits for its failing event"
    );
    let expected: Vec<usize> = (0..SEQS).collect();
    for key in keys.iter().filter(|k| *k != "poison") {
        assert_eq!(sequences_now[key], expected, "the order of key {key}");
    }
    let row = rows(&setup.store)
        .await
        .into_iter()
        .find(|row| row.event_id == poison)
        .unwrap();
    assert_eq!(row.status, "pending");
    assert!(row.attempts >= 1, "{row:?}");
    assert!(
        row.last_error.as_deref().unwrap().contains("refused"),
        "{row:?}"
    );
    let flaky_refusals = broker
        .seen()
        .iter()
        .filter(|seen| **seen == Seen::Refused(flaky.clone()))
        .count();
    assert_eq!(flaky_refusals, 3);

    // Events written while the key is held wait too; other keys' new events still flow.
    let late: Vec<Event> = (SEQS..SEQS + 5)
        .flat_map(|seq| ["poison", "other-0"].map(|key| event(key, seq)))
        .collect();
    write_committed(&setup.store, &late).await;
    all.extend(late);
    running.waker.wake();
    eventually("the other key's new events to arrive", LONG, || async {
        broker.confirmed_count() >= flowing + 5
    })
    .await;
    let sequences_now = sequences(&broker.confirmed());
    assert_eq!(sequences_now["poison"], [0], "the poisoned key still waits");
    assert_eq!(sequences_now["other-0"], (0..SEQS + 5).collect::<Vec<_>>());

    // Once the broker takes it, the key continues in order.
    broker.accept(&poison);
    running.waker.wake();
    eventually("the poisoned key's events to arrive", LONG, || async {
        broker.confirmed_count() >= all.len()
    })
    .await;
    running.stop().await;
    let received = setup.check_delivery().await;
    assert_eq!(received.len(), all.len(), "each event exactly once");
    for (key, seqs) in sequences(&received) {
        let count = if key == "poison" || key == "other-0" {
            SEQS + 5
        } else {
            SEQS
        };
        assert_eq!(
            seqs,
            (0..count).collect::<Vec<_>>(),
            "the order of key {key}"
        );
    }
    assert!(rows(&setup.store).await.is_empty());
}

/// Case 4, continued: after max_attempts the event is set aside as failed with its error,
/// never retried again, and its key continues.
async fn an_event_that_keeps_failing_is_set_aside(db: TestDb, via: Via) {
    const SEQS: usize = 10;
    let setup = Setup::new(&db, via).await;
    let broker = &setup.broker;
    let keys = ["other-0", "other-1", "other-2", "other-3", "poison"];
    let mut all = Vec::new();
    for seq in 0..SEQS {
        all.extend(keys.iter().map(|key| event(key, seq)));
    }
    let of_poison: Vec<&Event> = all
        .iter()
        .filter(|e| e.partitionkey.as_deref() == Some("poison"))
        .collect();
    let poison = of_poison[1].id.clone();
    let after_poison = of_poison[2].id.clone();
    broker.refuse(&poison, None);
    write_committed(&setup.store, &all).await;
    let mut options = setup.options();
    options.max_attempts = 3;
    options.batch_size = 20;
    let running = spawn(setup.relay(options.clone()));
    eventually("all but the poison to arrive", LONG, || async {
        broker.confirmed_count() >= all.len() - 1
    })
    .await;
    running.stop().await;

    let left = rows(&setup.store).await;
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].event_id, poison);
    assert_eq!(left[0].status, "failed");
    assert_eq!(left[0].attempts, 3);
    assert_eq!(
        left[0].last_error.as_deref(),
        Some(format!("the broker is unavailable: the test broker refused {poison}").as_str())
    );
    let received = setup.check_delivery().await;
    assert_eq!(received.len(), all.len() - 1);
    let sequences = sequences(&received);
    let mut without_poison: Vec<usize> = (0..SEQS).collect();
    without_poison.remove(1);
    assert_eq!(sequences["poison"], without_poison);
    for key in &keys[..4] {
        assert_eq!(sequences[*key], (0..SEQS).collect::<Vec<_>>());
    }
    // The key's next event went out only after the poison's last refusal.
    let seen = broker.seen();
    let last_refusal = seen
        .iter()
        .rposition(|s| *s == Seen::Refused(poison.clone()))
        .unwrap();
    let next_published = seen
        .iter()
        .position(|s| *s == Seen::Confirmed(after_poison.clone()))
        .unwrap();
    assert!(next_published > last_refusal);

    // A failed row is not retried.
    let refused_before = broker.failed_publishes();
    let relay = setup.relay(options);
    assert_eq!(relay.relay_once().await.unwrap(), 0);
    assert_eq!(broker.failed_publishes(), refused_before);
    assert!(
        herald_telemetry::metrics::metrics()
            .outbox_publish_failures
            .get()
            >= 3
    );
}

/// Case 6: while the broker is down nothing is lost, and no row is charged an attempt;
/// everything is published once it is back.
async fn a_broker_outage_loses_nothing(db: TestDb, via: Via) {
    let setup = Setup::new(&db, via).await;
    let broker = &setup.broker;
    broker.set_down(true);
    let keys: Vec<String> = (0..10).map(|k| format!("key-{k}")).collect();
    let wave = |seqs: std::ops::Range<usize>| -> Vec<Event> {
        seqs.flat_map(|seq| keys.iter().map(move |key| event(key, seq)))
            .collect()
    };
    write_committed(&setup.store, &wave(0..20)).await;
    let running = spawn(setup.relay(setup.options()));
    eventually("the relay to try the broker", LONG, || async {
        broker.failed_publishes() >= 5
    })
    .await;
    write_committed(&setup.store, &wave(20..30)).await;
    running.waker.wake();
    assert_eq!(broker.confirmed_count(), 0);
    let during = rows(&setup.store).await;
    assert_eq!(during.len(), 300);
    assert!(
        during
            .iter()
            .all(|r| r.status == "pending" && r.attempts == 0),
        "an outage charges nobody"
    );
    assert!(
        during
            .iter()
            .any(|r| r.last_error.as_deref().is_some_and(|e| e.contains("down"))),
        "the outage is recorded"
    );

    broker.set_down(false);
    eventually("everything to be published", LONG, || async {
        broker.confirmed_count() >= 300
    })
    .await;
    running.stop().await;
    let received = setup.check_delivery().await;
    assert_eq!(received.len(), 300);
    let expected: Vec<usize> = (0..30).collect();
    for (key, seqs) in sequences(&received) {
        assert_eq!(seqs, expected, "the order of key {key}");
    }
    assert!(rows(&setup.store).await.is_empty());
}

/// One write of many events (several insert chunks) keeps its order, and each message carries
/// the stored envelope and its headers.
async fn a_large_write_keeps_its_order_and_content(db: TestDb, via: Via) {
    let setup = Setup::new(&db, via).await;
    let mut events: Vec<Event> = (0..2500)
        .map(|i| Event::new("test.item.made", "/tests", &i).unwrap())
        .collect();
    events[0].correlationid = Some("req-1".into());
    events[0].traceparent = Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into());
    events[1] = events[1].clone().with_partition_key("k");
    write_committed(&setup.store, &events).await;

    let mut options = setup.options();
    options.batch_size = 500;
    let relay = setup.relay(options);
    assert_eq!(relay.relay_once().await.unwrap(), 500, "one batch");
    assert_eq!(drain(&relay).await, 2000);
    let confirmed = setup.broker.confirmed();
    assert_eq!(
        confirmed.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
        ids(&events)
    );

    let received = setup.check_delivery().await;
    let first = received.iter().find(|m| m.id == events[0].id).unwrap();
    assert_eq!(first.key, None);
    assert_eq!(first.header(header::TYPE), Some("test.item.made"));
    assert_eq!(first.header(header::SOURCE), Some("/tests"));
    assert_eq!(first.header(header::CORRELATION_ID), Some("req-1"));
    assert_eq!(
        first.header(header::TRACEPARENT),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(first.payload, serde_json::to_vec(&events[0]).unwrap());
    let second = received.iter().find(|m| m.id == events[1].id).unwrap();
    assert_eq!(second.key.as_deref(), Some("k"));
    assert_eq!(second.header(header::CORRELATION_ID), None);
}

/// A wake cuts the relay's idle wait short: with an hour between polls, events still arrive
/// within seconds of being woken for.
async fn a_wake_cuts_the_idle_wait_short(db: TestDb, via: Via) {
    let setup = Setup::new(&db, via).await;
    let mut options = setup.options();
    options.idle_poll_min = Duration::from_secs(3600);
    options.idle_poll_max = Duration::from_secs(3600);
    let running = spawn(setup.relay(options));
    for i in 0..5 {
        write_committed(&setup.store, &[event("k", i)]).await;
        running.waker.wake();
        eventually(
            "the woken relay to publish",
            Duration::from_secs(30),
            || async { setup.broker.confirmed_count() > i },
        )
        .await;
    }
    running.stop().await;
    assert_eq!(setup.check_delivery().await.len(), 5);
}

/// Runs each named `async fn name(db, via)` through `$via` on both engines.
macro_rules! via {
    ($via:expr; $($name:ident),+ $(,)?) => {
        $(
            async fn $name(db: TestDb) {
                super::$name(db, $via).await;
            }
        )+
        on_both_stores!($($name),+);
    };
}

macro_rules! relay_cases {
    ($via:expr) => {
        via!(
            $via;
            rolled_back_transactions_publish_nothing,
            a_late_commit_of_an_early_transaction_is_not_skipped,
            order_per_key_with_concurrent_producers,
            two_relays_on_one_outbox_keep_order,
            a_relay_whose_lease_was_taken_publishes_nothing,
            a_failing_event_holds_back_only_its_key,
            an_event_that_keeps_failing_is_set_aside,
            a_broker_outage_loses_nothing,
            a_large_write_keeps_its_order_and_content,
            a_wake_cuts_the_idle_wait_short,
        );
    };
}

/// Through the recording broker alone.
mod memory {
    use super::*;
    relay_cases!(Via::Memory);
}

/// Through the real embedded broker, read back by a consumer group.
mod embedded {
    use super::*;
    relay_cases!(Via::Embedded);
}
