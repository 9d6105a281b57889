//! Retention: expired inbox ids are deleted in bounded batches, fresh ones and other
//! consumers' stay, and the runtime cleans up by itself.

use std::time::Duration;

use herald_store::Store;
use herald_testing::{TestDb, on_both_stores, unique_name};

use crate::support::{PATIENCE, Recorder, Running, Setup, wait_until};

on_both_stores!(
    cleanup_deletes_expired_ids_in_batches,
    the_runtime_cleans_up_periodically,
);

const WEEK: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// Inserts `count` inbox rows for `consumer`, processed `age` ago.
async fn insert_rows(store: &Store, consumer: &str, count: usize, age: Duration) {
    for _ in 0..count {
        let id = unique_name("evt");
        match store {
            Store::Postgres(pool) => {
                sqlx::query(
                    "INSERT INTO herald_inbox (consumer, event_id, processed_at) \
                     VALUES ($1, $2, now() - make_interval(secs => $3))",
                )
                .bind(consumer)
                .bind(&id)
                .bind(age.as_secs_f64())
                .execute(pool)
                .await
                .unwrap();
            }
            Store::Sqlite(pool) => {
                sqlx::query(
                    "INSERT INTO herald_inbox (consumer, event_id, processed_at) VALUES \
                     (?1, ?2, CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) - ?3)",
                )
                .bind(consumer)
                .bind(&id)
                .bind(i64::try_from(age.as_millis()).unwrap())
                .execute(pool)
                .await
                .unwrap();
            }
        }
    }
}

async fn count_rows(store: &Store, consumer: &str) -> i64 {
    match store {
        Store::Postgres(pool) => {
            sqlx::query_scalar("SELECT count(*) FROM herald_inbox WHERE consumer = $1")
                .bind(consumer)
                .fetch_one(pool)
                .await
        }
        Store::Sqlite(pool) => {
            sqlx::query_scalar("SELECT count(*) FROM herald_inbox WHERE consumer = ?1")
                .bind(consumer)
                .fetch_one(pool)
                .await
        }
    }
    .unwrap()
}

async fn cleanup_deletes_expired_ids_in_batches(db: TestDb) {
    let setup = Setup::new(&db).await;
    let day = Duration::from_secs(24 * 60 * 60);
    insert_rows(&setup.store, &setup.name, 35, WEEK + day).await;
    insert_rows(&setup.store, &setup.name, 5, Duration::ZERO).await;
    // Five days old: inside the window.
    insert_rows(&setup.store, &setup.name, 2, 5 * day).await;
    let other = unique_name("other");
    insert_rows(&setup.store, &other, 3, WEEK + day).await;

    let consumer = setup.consumer(setup.options(), Recorder::new());
    let mut deleted = Vec::new();
    for _ in 0..10 {
        let count = consumer.cleanup(WEEK, 10).await.unwrap();
        deleted.push(count);
        if count == 0 {
            break;
        }
    }
    assert_eq!(deleted, [10, 10, 10, 5, 0]);
    assert_eq!(count_rows(&setup.store, &setup.name).await, 7);
    assert_eq!(
        count_rows(&setup.store, &other).await,
        3,
        "other consumers' rows stay"
    );
}

async fn the_runtime_cleans_up_periodically(db: TestDb) {
    let setup = Setup::new(&db).await;
    insert_rows(&setup.store, &setup.name, 12, Duration::from_secs(120)).await;
    insert_rows(&setup.store, &setup.name, 2, Duration::ZERO).await;
    let mut options = setup.options();
    options.retention = Duration::from_secs(60);
    options.cleanup_batch = 5;
    let consumer = setup.consumer(options, Recorder::new());
    let running = Running::start(&consumer);
    wait_until("the expired rows to be deleted", PATIENCE, || async {
        count_rows(&setup.store, &setup.name).await == 2
    })
    .await;
    running.stop().await;
}
