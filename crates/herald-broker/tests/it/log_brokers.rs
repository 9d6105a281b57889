//! [`LogBroker`] on each real broker (and on the in-memory test log), for the conformance
//! suite: the group state on a fresh PostgreSQL database, the log from the backend's own test
//! module (which isolates and tidies its names). Then what only [`LogBroker`] offers: deleting
//! a topic with its groups' state, on both engines.

use std::sync::Arc;
use std::time::Duration;

use herald_broker::log::{Log, LogBroker, LogOptions, MIGRATIONS};
use herald_broker::{Broker, BrokerError, SubscribeOptions};
use herald_store::Store;
use herald_testing::{TestDb, unique_name};

use crate::conformance::{PATIENCE, message, receive_n};

/// A broker on `log`, its groups in a fresh PostgreSQL database that lives as long as the
/// returned guard.
pub(crate) async fn on_log(log: Arc<dyn Log>) -> (Arc<dyn Broker>, TestDb) {
    let db = TestDb::postgres().await;
    herald_store::migrate::migrate(db.store(), &[&MIGRATIONS])
        .await
        .unwrap();
    let broker = LogBroker::new(log, db.store().clone(), LogOptions::default()).unwrap();
    (Arc::new(broker), db)
}

pub(crate) async fn on_memory() -> (Arc<dyn Broker>, TestDb) {
    on_log(crate::memory_log::log().await).await
}

pub(crate) async fn on_redis() -> (Arc<dyn Broker>, TestDb) {
    on_log(crate::redis::connect().await).await
}

pub(crate) async fn on_rabbitmq() -> (Arc<dyn Broker>, TestDb) {
    on_log(crate::rabbitmq::connect().await).await
}

pub(crate) async fn on_nats() -> (Arc<dyn Broker>, TestDb) {
    on_log(crate::nats::connect().await).await
}

pub(crate) async fn on_kafka() -> (Arc<dyn Broker>, TestDb) {
    on_log(crate::kafka::connect().await).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_forgets_its_groups_on_postgres() {
    deleting_a_topic_forgets_its_groups(TestDb::postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_topic_forgets_its_groups_on_sqlite() {
    deleting_a_topic_forgets_its_groups(TestDb::sqlite().await).await;
}

/// The rows of `topic` in each group table: partitions, members, dead letters.
async fn rows_of(store: &Store, topic: &str) -> [i64; 3] {
    let mut counts = [0; 3];
    let tables = [
        "herald_log_partitions",
        "herald_log_members",
        "herald_log_dead_letters",
    ];
    for (count, table) in counts.iter_mut().zip(tables) {
        let text = format!("SELECT count(*) FROM {table} WHERE topic = $1");
        *count = herald_store::on_store!(store, pool, sql => {
            sqlx::query_scalar::<_, i64>(sql(&text)).bind(topic).fetch_one(pool).await.unwrap()
        });
    }
    counts
}

/// [`LogBroker::delete_topic`] removes the topic's records and every row of its groups, and
/// nothing of another topic; the topic made again starts empty, for a group of the same name.
async fn deleting_a_topic_forgets_its_groups(db: TestDb) {
    herald_store::migrate::migrate(db.store(), &[&MIGRATIONS])
        .await
        .unwrap();
    let options = LogOptions {
        partitions: 2,
        ..LogOptions::default()
    };
    let broker =
        LogBroker::new(crate::memory_log::log().await, db.store().clone(), options).unwrap();
    let (topic, kept, group) = (
        unique_name("deleted"),
        unique_name("kept"),
        unique_name("group"),
    );
    let once = SubscribeOptions {
        max_deliveries: 1,
        ..SubscribeOptions::default()
    };
    let mut sub = broker
        .subscribe(&topic, &group, once.clone())
        .await
        .unwrap();
    let mut other = broker
        .subscribe(&kept, &group, SubscribeOptions::default())
        .await
        .unwrap();
    broker
        .publish(
            &topic,
            &[
                message("a", Some("k1"), b"x"),
                message("b", Some("k2"), b"y"),
            ],
        )
        .await
        .unwrap();
    broker
        .publish(&kept, &[message("c", None, b"z")])
        .await
        .unwrap();
    for delivery in receive_n(sub.as_mut(), 2, PATIENCE).await {
        if delivery.message.id == "a" {
            delivery.nack(Duration::ZERO, "failed").await.unwrap();
        } else {
            delivery.ack().await.unwrap();
        }
    }
    assert_eq!(
        broker.dead_letters(&topic, &group, 10).await.unwrap().len(),
        1
    );
    let before = rows_of(db.store(), &topic).await;
    assert!(
        before[0] > 0 && before[1] > 0 && before[2] > 0,
        "{before:?}"
    );

    // Consumers of the topic stop first; those of other topics go on.
    sub.close().await;
    broker.delete_topic(&topic).await.unwrap();
    assert_eq!(rows_of(db.store(), &topic).await, [0, 0, 0]);
    let kept_rows = rows_of(db.store(), &kept).await;
    assert!(kept_rows[0] > 0 && kept_rows[1] > 0, "{kept_rows:?}");
    broker.delete_topic(&topic).await.unwrap();
    broker.delete_topic(&unique_name("never")).await.unwrap();
    assert!(matches!(
        broker.delete_topic("a/b").await,
        Err(BrokerError::Invalid(_))
    ));
    assert!(
        broker
            .dead_letters(&topic, &group, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Made again: the group starts anew, and only the new message is there.
    broker
        .publish(&topic, &[message("d", Some("k1"), b"w")])
        .await
        .unwrap();
    let mut again = broker
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    for delivery in receive_n(again.as_mut(), 1, PATIENCE).await {
        assert_eq!(
            (delivery.message.id.as_str(), delivery.receive_count),
            ("d", 1)
        );
        delivery.ack().await.unwrap();
    }
    again.close().await;
    for delivery in receive_n(other.as_mut(), 1, PATIENCE).await {
        assert_eq!(delivery.message.id, "c");
        delivery.ack().await.unwrap();
    }
    other.close().await;
}

/// First receives write a partition's row once per step, not once per receive: a row written
/// over and over is what a long-held transaction elsewhere makes slower with every write.
/// (A trigger counts the writes; receive counts after a take-over are checked by the
/// conformance suite's `a_vanished_consumers_messages_come_back`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_receives_write_the_partition_row_in_steps() {
    const MESSAGES: usize = 200;
    let db = TestDb::postgres().await;
    herald_store::migrate::migrate(db.store(), &[&MIGRATIONS])
        .await
        .unwrap();
    let Store::Postgres(pool) = db.store() else {
        unreachable!("a PostgreSQL test database");
    };
    sqlx::raw_sql(
        "CREATE TABLE test_writes (n BIGINT NOT NULL); INSERT INTO test_writes VALUES (0); \
         CREATE FUNCTION test_count_write() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN UPDATE test_writes SET n = n + 1; RETURN NEW; END $$; \
         CREATE TRIGGER test_count AFTER UPDATE ON herald_log_partitions \
           FOR EACH ROW EXECUTE FUNCTION test_count_write();",
    )
    .execute(pool)
    .await
    .unwrap();
    let options = LogOptions {
        partitions: 1,
        ..LogOptions::default()
    };
    let broker =
        LogBroker::new(crate::memory_log::log().await, db.store().clone(), options).unwrap();
    let (topic, group) = (unique_name("steps"), unique_name("group"));
    let mut sub = broker
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let messages: Vec<_> = (0..MESSAGES)
        .map(|i| message(&format!("m{i}"), None, b"x"))
        .collect();
    broker.publish(&topic, &messages).await.unwrap();
    let before: i64 = sqlx::query_scalar("SELECT n FROM test_writes")
        .fetch_one(pool)
        .await
        .unwrap();
    // One receive per message: before the steps, each one wrote the row.
    let mut received = 0;
    for _ in 0..MESSAGES * 2 {
        if received == MESSAGES {
            break;
        }
        for delivery in sub.receive(1, PATIENCE).await.unwrap() {
            assert_eq!(delivery.receive_count, 1);
            delivery.ack().await.unwrap();
            received += 1;
        }
    }
    assert_eq!(received, MESSAGES);
    let writes = sqlx::query_scalar::<_, i64>("SELECT n FROM test_writes")
        .fetch_one(pool)
        .await
        .unwrap()
        - before;
    sub.close().await;
    assert!(
        writes < (MESSAGES / 4) as i64,
        "{MESSAGES} first receives wrote the partition's row {writes} times"
    );
}
