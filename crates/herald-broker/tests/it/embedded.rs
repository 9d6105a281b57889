//! The embedded backend beyond the shared suite, on PostgreSQL and SQLite: dead letters and
//! their replay, durability across reopening the store, which groups get early messages, and
//! publishers racing on one key.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use herald_broker::embedded::{EmbeddedBroker, MIGRATIONS};
use herald_broker::{Broker, BrokerError, Message, Nacked, SubscribeOptions};
use herald_store::migrate::migrate;
use herald_store::{Store, StoreOptions};
use herald_testing::{TestDb, on_both_stores, unique_name};

use crate::conformance::{PATIENCE, assert_nothing, message, receive_n, receive_one};

/// An embedded broker on a fresh PostgreSQL database, for the conformance suite.
pub(crate) async fn on_postgres() -> (Arc<dyn Broker>, TestDb) {
    let db = TestDb::postgres().await;
    (Arc::new(broker(&db).await), db)
}

/// An embedded broker on a fresh SQLite file, for the conformance suite.
pub(crate) async fn on_sqlite() -> (Arc<dyn Broker>, TestDb) {
    let db = TestDb::sqlite().await;
    (Arc::new(broker(&db).await), db)
}

async fn broker(db: &TestDb) -> EmbeddedBroker {
    migrate(db.store(), &[&MIGRATIONS]).await.unwrap();
    EmbeddedBroker::new(db.store().clone())
}

fn options(visibility_timeout: Duration, max_deliveries: u32) -> SubscribeOptions {
    SubscribeOptions {
        visibility_timeout,
        max_deliveries,
    }
}

async fn dead_letters_are_listed_and_replayed(db: TestDb) {
    let broker = broker(&db).await;
    let (topic, group) = (unique_name("topic"), unique_name("group"));
    let mut sub = broker
        .subscribe(&topic, &group, options(Duration::from_secs(30), 2))
        .await
        .unwrap();
    let poison = Message {
        id: "k1".into(),
        key: Some("K".into()),
        headers: vec![("type".into(), "t".into()), ("a".into(), "b".into())],
        payload: Bytes::from_static(b"\x00\xffpoison"),
    };
    broker
        .publish(&topic, &[poison.clone(), message("k2", Some("K"), b"")])
        .await
        .unwrap();
    let before = SystemTime::now() - Duration::from_secs(60);

    let first = receive_one(sub.as_mut()).await;
    assert_eq!(
        first.nack(Duration::ZERO, "first failure").await.unwrap(),
        Nacked::Retry
    );
    let second = receive_one(sub.as_mut()).await;
    assert_eq!(second.receive_count, 2);
    assert_eq!(
        second.nack(Duration::ZERO, "second failure").await.unwrap(),
        Nacked::DeadLettered
    );
    let next = receive_one(sub.as_mut()).await;
    assert_eq!(next.message.id, "k2");

    let letters = broker.dead_letters(&topic, &group, 10).await.unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.message, poison);
    assert_eq!(
        (letter.topic.as_str(), letter.group.as_str()),
        (topic.as_str(), group.as_str())
    );
    assert_eq!(letter.receive_count, 2);
    assert_eq!(letter.last_error, "second failure");
    assert!(
        letter.dead_at > before && letter.dead_at < SystemTime::now() + Duration::from_secs(60)
    );
    assert!(
        broker
            .dead_letters(&topic, "other", 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(matches!(
        broker.dead_letters("", &group, 10).await,
        Err(BrokerError::Invalid(_))
    ));

    assert!(broker.replay_dead_letter(letter.id).await.unwrap());
    assert!(
        !broker.replay_dead_letter(letter.id).await.unwrap(),
        "a dead letter is replayed once"
    );
    assert!(
        broker
            .dead_letters(&topic, &group, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Replayed at the end of its key: after k2, which is still held.
    assert_nothing(
        sub.as_mut(),
        Duration::from_millis(300),
        "k1 now waits behind k2",
    )
    .await;
    next.ack().await.unwrap();
    let replayed = receive_one(sub.as_mut()).await;
    assert_eq!(replayed.message, poison);
    assert_eq!(replayed.receive_count, 1, "replayed as a new message");
    replayed.ack().await.unwrap();
    assert_nothing(sub.as_mut(), Duration::from_millis(200), "all were acked").await;
}
on_both_stores!(dead_letters_are_listed_and_replayed);

async fn an_expired_message_is_dead_lettered_with_the_reason(db: TestDb) {
    let broker = broker(&db).await;
    let (topic, group) = (unique_name("topic"), unique_name("group"));
    let mut sub = broker
        .subscribe(&topic, &group, options(Duration::from_secs(1), 1))
        .await
        .unwrap();
    broker
        .publish(&topic, &[message("m1", None, b"")])
        .await
        .unwrap();
    drop(receive_one(sub.as_mut()).await);

    // The first claim after the timeout dead-letters it instead of delivering it.
    let deadline = Instant::now() + PATIENCE;
    let letters = loop {
        let got = sub.receive(10, Duration::from_millis(500)).await.unwrap();
        assert!(got.is_empty(), "it is not delivered a second time");
        let letters = broker.dead_letters(&topic, &group, 10).await.unwrap();
        if !letters.is_empty() {
            break letters;
        }
        assert!(
            Instant::now() < deadline,
            "not dead-lettered within {PATIENCE:?}"
        );
    };
    assert_eq!(letters[0].message.id, "m1");
    assert_eq!(letters[0].receive_count, 1);
    assert_eq!(letters[0].last_error, "visibility timeout expired 1 time");
}
on_both_stores!(an_expired_message_is_dead_lettered_with_the_reason);

async fn messages_survive_reopening_the_store(db: TestDb) {
    let (topic, group, parked_topic) = (
        unique_name("topic"),
        unique_name("group"),
        unique_name("parked"),
    );
    let visibility = options(Duration::from_secs(1), 10);
    {
        let broker = broker(&db).await;
        let mut sub = broker
            .subscribe(&topic, &group, visibility.clone())
            .await
            .unwrap();
        broker
            .publish(
                &topic,
                &[
                    message("a", Some("K"), b"a"),
                    message("b", Some("K"), b"b"),
                    message("c", None, b"c"),
                ],
            )
            .await
            .unwrap();
        broker
            .publish(&parked_topic, &[message("p", None, b"p")])
            .await
            .unwrap();
        // Two are in flight when the process goes away.
        let held = receive_n(sub.as_mut(), 2, PATIENCE).await;
        let mut ids: Vec<&str> = held.iter().map(|d| d.message.id.as_str()).collect();
        ids.sort_unstable();
        assert_eq!(ids, ["a", "c"]);
    }
    db.store().close().await;

    let store = Store::connect(db.url(), &StoreOptions::default())
        .await
        .unwrap();
    assert!(
        migrate(&store, &[&MIGRATIONS]).await.unwrap().is_empty(),
        "the schema is already there"
    );
    let broker = EmbeddedBroker::new(store.clone());
    let mut sub = broker.subscribe(&topic, &group, visibility).await.unwrap();
    let again = receive_n(sub.as_mut(), 2, PATIENCE).await;
    let mut got: Vec<(String, u32)> = again
        .iter()
        .map(|d| (d.message.id.clone(), d.receive_count))
        .collect();
    got.sort_unstable();
    assert_eq!(got, [("a".to_owned(), 2), ("c".to_owned(), 2)]);
    for delivery in again {
        delivery.ack().await.unwrap();
    }
    let b = receive_one(sub.as_mut()).await;
    assert_eq!((b.message.id.as_str(), b.receive_count), ("b", 1));
    b.ack().await.unwrap();

    let mut parked = broker
        .subscribe(&parked_topic, "first", SubscribeOptions::default())
        .await
        .unwrap();
    let p = receive_one(parked.as_mut()).await;
    assert_eq!(p.message.payload, Bytes::from_static(b"p"));
    p.ack().await.unwrap();
    store.close().await;
}
on_both_stores!(messages_survive_reopening_the_store);

async fn only_the_first_group_adopts_early_messages(db: TestDb) {
    let broker = broker(&db).await;
    let topic = unique_name("topic");
    broker
        .publish(&topic, &[message("early", None, b"")])
        .await
        .unwrap();
    let mut first = broker
        .subscribe(&topic, "first", SubscribeOptions::default())
        .await
        .unwrap();
    let mut second = broker
        .subscribe(&topic, "second", SubscribeOptions::default())
        .await
        .unwrap();
    broker
        .publish(&topic, &[message("late", None, b"")])
        .await
        .unwrap();

    let got = receive_n(first.as_mut(), 2, PATIENCE).await;
    let mut ids: Vec<&str> = got.iter().map(|d| d.message.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["early", "late"]);
    let late = receive_one(second.as_mut()).await;
    assert_eq!(late.message.id, "late");
    assert_nothing(
        second.as_mut(),
        Duration::from_millis(300),
        "a later group starts with what is published after it joined",
    )
    .await;
}
on_both_stores!(only_the_first_group_adopts_early_messages);

/// Publishers racing while a consumer acks: on shared keys (in batches that lock them in
/// opposite orders) there are never two heads of one key; on each publisher's own key, an ack
/// racing a publish never leaves a message behind (a later one would overtake it). Every
/// publisher's messages of every key arrive in its order. Each publisher sends its next batch
/// as soon as the consumer has received its own-key message of the last one, so that
/// message's ack and the next publish run at the same time.
async fn racing_publishers_keep_one_head_per_key(db: TestDb) {
    const PUBLISHERS: usize = 4;
    const BATCHES: usize = 60;
    const TOTAL: usize = PUBLISHERS * BATCHES * 3;

    let broker = broker(&db).await;
    let (topic, group) = (unique_name("topic"), unique_name("group"));
    let mut sub = broker
        .subscribe(&topic, &group, options(Duration::from_secs(120), 10))
        .await
        .unwrap();
    let mut publishers = Vec::new();
    let mut paces = Vec::new();
    for p in 0..PUBLISHERS {
        let (broker, topic) = (broker.clone(), topic.clone());
        let (pace, mut paced) = tokio::sync::mpsc::unbounded_channel::<()>();
        paces.push(pace);
        publishers.push(tokio::spawn(async move {
            for n in 0..BATCHES {
                if n > 0 {
                    let received = tokio::time::timeout(PATIENCE, paced.recv()).await;
                    assert!(
                        matches!(received, Ok(Some(()))),
                        "batch {n} of publisher {p} was not received"
                    );
                }
                let k = message(&format!("K-{p}-{n}"), Some("K"), b"");
                let l = message(&format!("L-{p}-{n}"), Some("L"), b"");
                let own_key = format!("P{p}");
                let own = message(&format!("{own_key}-{p}-{n}"), Some(&own_key), b"");
                let batch = if p % 2 == 0 { [k, l, own] } else { [own, l, k] };
                broker.publish(&topic, &batch).await.unwrap();
            }
        }));
    }

    let mut seen: HashMap<(String, usize), Vec<usize>> = HashMap::new();
    let mut ids = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    while ids.len() < TOTAL {
        assert!(
            Instant::now() < deadline,
            "received {} of {TOTAL} in time",
            ids.len()
        );
        // A publisher that failed fails the test now, not at the deadline.
        let (done, running): (Vec<_>, Vec<_>) =
            publishers.into_iter().partition(|p| p.is_finished());
        publishers = running;
        for publisher in done {
            publisher.await.unwrap();
        }
        let batch = sub.receive(10, Duration::from_millis(200)).await.unwrap();
        let keys: Vec<&str> = batch
            .iter()
            .map(|d| d.message.key.as_deref().unwrap())
            .collect();
        let distinct: HashSet<&&str> = keys.iter().collect();
        assert_eq!(distinct.len(), keys.len(), "two heads of one key: {keys:?}");
        for delivery in batch {
            let id = delivery.message.id.clone();
            let mut parts = id.split('-');
            let key = parts.next().unwrap().to_owned();
            let p: usize = parts.next().unwrap().parse().unwrap();
            let n: usize = parts.next().unwrap().parse().unwrap();
            if key.starts_with('P') {
                // The publisher may send its next batch while we ack this one.
                let _ = paces[p].send(());
            }
            seen.entry((key, p)).or_default().push(n);
            assert!(ids.insert(id), "delivered twice");
            delivery.ack().await.unwrap();
        }
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    for ((key, p), numbers) in &seen {
        assert_eq!(
            numbers,
            &(0..BATCHES).collect::<Vec<_>>(),
            "publisher {p}'s messages of key {key} in order"
        );
    }
}
on_both_stores!(racing_publishers_keep_one_head_per_key);

#[tokio::test]
async fn works_on_an_in_memory_sqlite_database() {
    let store = Store::connect("sqlite::memory:", &StoreOptions::default())
        .await
        .unwrap();
    migrate(&store, &[&MIGRATIONS]).await.unwrap();
    let broker = EmbeddedBroker::new(store);
    assert_eq!(broker.kind(), "embedded");
    let mut sub = broker
        .subscribe("t", "g", SubscribeOptions::default())
        .await
        .unwrap();
    broker
        .publish("t", &[message("m", Some("k"), b"x")])
        .await
        .unwrap();
    let got = receive_one(sub.as_mut()).await;
    assert_eq!(got.message.id, "m");
    got.ack().await.unwrap();
}
