//! The outbox's generations on PostgreSQL: the relay starts new partitions, moves the last
//! rows of closed ones on, truncates and drops them; a producer transaction in flight holds a
//! switch back; a transaction held open elsewhere keeps only the partitions it read.

use std::time::Duration;

use herald_core::Event;
use herald_outbox::{Relay, RelayOptions};
use herald_store::Store;
use herald_testing::TestDb;
use sqlx::PgPool;

use super::drain;
use super::support::{Setup, Via, event, rows, sequences, write_committed};

/// The least time between two generations, and a little more.
const SWITCH_GAP: Duration = Duration::from_millis(1100);

fn pool(setup: &Setup) -> &PgPool {
    match &setup.store {
        Store::Postgres(pool) => pool,
        Store::Sqlite(_) => panic!("the generations are PostgreSQL's"),
    }
}

async fn current(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT herald_outbox_generation()")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The generations that have a partition, in order.
async fn partitions(pool: &PgPool) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT substring(c.relname FROM '^herald_outbox_g([0-9]+)$')::BIGINT AS g \
         FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid \
         WHERE i.inhparent = 'herald_outbox'::regclass ORDER BY g",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

/// The size on disk of one generation's partition (0 once truncated).
async fn size(pool: &PgPool, generation: i64) -> i64 {
    sqlx::query_scalar("SELECT pg_relation_size(format('herald_outbox_g%s', $1)::regclass)")
        .bind(generation)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn relay(setup: &Setup, rotate_after: u64) -> Relay {
    setup.relay(RelayOptions {
        rotate_after,
        ..setup.options()
    })
}

/// Writes `count` events of key `key` from `from`, one transaction each, so each is its own
/// committed row.
async fn write_each(store: &Store, key: &str, from: usize, count: usize) -> Vec<Event> {
    let events: Vec<Event> = (from..from + count).map(|seq| event(key, seq)).collect();
    for one in &events {
        write_committed(store, std::slice::from_ref(one)).await;
    }
    events
}

/// Generations come and go while events flow: each is published once and in order, and the
/// drained generations are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generations_come_and_go_without_losing_or_reordering() {
    let db = TestDb::postgres().await;
    let setup = Setup::new(&db, Via::Embedded).await;
    let pool = pool(&setup);
    let relay = setup.relay(RelayOptions {
        rotate_after: 20,
        batch_size: 5,
        ..setup.options()
    });
    relay.maintain().await.unwrap();
    assert_eq!(current(pool).await, 0);
    let mut last = 0;
    let mut written = 0;
    for round in 0..4 {
        write_each(&setup.store, "k", written, 30).await;
        written += 30;
        // Publish half, then switch: the closed generation still holds rows.
        for _ in 0..3 {
            relay.relay_once().await.unwrap();
        }
        tokio::time::sleep(SWITCH_GAP).await;
        relay.maintain().await.unwrap();
        // The relay also maintains the generations by itself between rounds, so the switch
        // may have come before this call; either way, one each round.
        let now = current(pool).await;
        assert!(now > last, "no switch in round {round}: still {now}");
        last = now;
    }
    drain(&relay).await;
    tokio::time::sleep(SWITCH_GAP).await;
    relay.maintain().await.unwrap();
    relay.maintain().await.unwrap();
    let left = partitions(pool).await;
    assert_eq!(
        left,
        [current(pool).await],
        "only the current generation is left once the others are drained"
    );
    let received = setup.check_delivery().await;
    assert_eq!(received.len(), written, "each event exactly once");
    assert_eq!(sequences(&received)["k"], (0..written).collect::<Vec<_>>());
    assert!(rows(&setup.store).await.is_empty());
}

/// A producer's transaction that has written to the outbox and not committed holds the switch
/// back (its row is in the current generation, which must not close under it); after its
/// commit the switch goes ahead and its event is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_in_flight_holds_the_switch_back() {
    let db = TestDb::postgres().await;
    let setup = Setup::new(&db, Via::Memory).await;
    let pool = pool(&setup);
    let relay = relay(&setup, 10);
    relay.maintain().await.unwrap();
    write_each(&setup.store, "k", 0, 10).await;
    let late = event("k", 10);
    let mut open = pool.begin().await.unwrap();
    herald_outbox::write(&mut *open, std::slice::from_ref(&late))
        .await
        .unwrap();
    relay.maintain().await.unwrap();
    assert_eq!(
        current(pool).await,
        0,
        "no switch while a producer is in flight"
    );
    open.commit().await.unwrap();
    tokio::time::sleep(SWITCH_GAP).await;
    relay.maintain().await.unwrap();
    assert_eq!(current(pool).await, 1, "the switch after the commit");
    drain(&relay).await;
    let confirmed = setup.broker.confirmed();
    assert_eq!(sequences(&confirmed)["k"], (0..11).collect::<Vec<_>>());
}

/// A row waiting for its retry in a closed generation moves to the current one, keeps its
/// place in its key's order, and its generation is then truncated and dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_row_moves_on_from_a_closed_generation() {
    let db = TestDb::postgres().await;
    let setup = Setup::new(&db, Via::Memory).await;
    let pool = pool(&setup);
    let relay = relay(&setup, 5);
    relay.maintain().await.unwrap();
    let events = write_each(&setup.store, "k", 0, 6).await;
    setup.broker.refuse(&events[2].id, None);
    // Rounds until the refused event has been charged on its own (the batch holding it is
    // refused, retried, then isolated); bounded.
    for _ in 0..200 {
        relay.relay_once().await.unwrap();
        let charged = rows(&setup.store)
            .await
            .iter()
            .any(|row| row.event_id == events[2].id && row.attempts > 0);
        if charged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        sequences(&setup.broker.confirmed())["k"],
        [0, 1],
        "the key waits behind its refused event"
    );
    tokio::time::sleep(SWITCH_GAP).await;
    relay.maintain().await.unwrap();
    relay.maintain().await.unwrap();
    assert_eq!(current(pool).await, 1);
    let generations: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT generation FROM herald_outbox")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(
        generations,
        [1],
        "the waiting rows moved to the current generation"
    );
    assert_eq!(partitions(pool).await, [1], "generation 0 was dropped");
    setup.broker.accept(&events[2].id);
    let published = {
        let mut total = 0;
        for _ in 0..200 {
            total += relay.relay_once().await.unwrap();
            if total >= 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        total
    };
    assert_eq!(published, 4);
    assert_eq!(
        sequences(&setup.broker.confirmed())["k"],
        (0..6).collect::<Vec<_>>()
    );
}

/// A transaction held open that has read the outbox keeps the partitions it read (nothing can
/// truncate or drop them under it), but not the generations started after it: those are
/// truncated as they drain, so the dead rows it pins stop growing. Once it ends, the rest go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_transaction_pins_only_what_it_read() {
    let db = TestDb::postgres().await;
    let setup = Setup::new(&db, Via::Memory).await;
    let pool = pool(&setup);
    let relay = relay(&setup, 20);
    relay.maintain().await.unwrap();
    let mut held = pool.acquire().await.unwrap();
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *held)
        .await
        .unwrap();
    sqlx::query("SELECT count(*) FROM herald_outbox")
        .execute(&mut *held)
        .await
        .unwrap();
    // Rounds of writes until three generations have started after the held transaction
    // began (bounded: the relay also maintains the generations by itself between rounds,
    // so how many rounds that takes depends on timing).
    let mut written = 0;
    for _ in 0..12 {
        if current(pool).await >= 3 {
            break;
        }
        write_each(&setup.store, "k", written, 25).await;
        written += 25;
        drain(&relay).await;
        tokio::time::sleep(SWITCH_GAP).await;
        relay.maintain().await.unwrap();
    }
    drain(&relay).await;
    relay.maintain().await.unwrap();
    let now = current(pool).await;
    assert!(now >= 3, "only {now} generations started in 12 rounds");
    let left = partitions(pool).await;
    assert_eq!(
        left[0], 0,
        "the held transaction keeps generation 0: {left:?}"
    );
    for generation in left.iter().copied().filter(|&g| g > 0 && g < now) {
        assert_eq!(
            size(pool, generation).await,
            0,
            "closed generation {generation} is truncated under the held transaction"
        );
    }
    sqlx::query("COMMIT").execute(&mut *held).await.unwrap();
    drop(held);
    relay.maintain().await.unwrap();
    assert_eq!(partitions(pool).await, [now]);
    assert_eq!(
        sequences(&setup.broker.confirmed())["k"],
        (0..written).collect::<Vec<_>>()
    );
}
