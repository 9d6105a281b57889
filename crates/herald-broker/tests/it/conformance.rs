//! The broker conformance suite: what every backend must do, written once against
//! `Arc<dyn Broker>`.
//!
//! Each case is an `async fn(Arc<dyn Broker>)` that makes its own topic and group names, so
//! cases can share a broker. [`conformance_suite!`] turns the whole list into one test per case
//! for a backend. A backend that cannot keep a guarantee must not skip its case silently: it
//! says so next to its `conformance_suite!` line, and that case fails for it.
//!
//! No case sleeps to be correct: each waits by receiving with a deadline, and every loop is
//! bounded in count and time. Timing margins are generous, for slow shared machines.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_broker::{
    Broker, BrokerError, Delivery, Message, Nacked, Sharing, SubscribeOptions, Subscription,
};
use herald_testing::unique_name;

/// Makes a module `$module` with one `#[tokio::test]` per conformance case, each on a fresh
/// broker from `$make`: an `async fn() -> (Arc<dyn Broker>, Guard)`, where the guard keeps
/// what the broker needs (a database, a server's stream) until the test ends.
macro_rules! conformance_suite {
    ($module:ident, $make:path) => {
        $crate::conformance::conformance_suite!(@cases $module, $make, [
            publish_then_receive_intact,
            every_group_receives_every_message,
            consumers_of_a_group_share_its_messages,
            nack_redelivers_after_the_delay,
            visibility_timeout_redelivers,
            extend_keeps_a_message_invisible,
            a_vanished_consumers_messages_come_back,
            stale_settles_after_a_lost_lease_fail,
            per_key_order_under_concurrent_consumers,
            a_held_key_does_not_block_others,
            dead_letter_after_max_nacks,
            dead_letter_after_max_timeouts,
            messages_before_any_group_go_to_the_first,
            bad_input_is_refused_and_publishes_nothing,
            receive_waits_then_returns_empty,
            ping_answers,
        ]);
    };
    (@cases $module:ident, $make:path, [$($case:ident),+ $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (broker, _guard) = $make().await;
                    $crate::conformance::$case(broker).await;
                }
            )+
        }
    };
}
pub(crate) use conformance_suite;

/// How long a case waits for something that should happen soon.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);
/// The most receive calls any one wait makes.
const MAX_RECEIVES: usize = 10_000;

/// Case 1: What was published (confirmed) is received once, byte for byte.
pub(crate) async fn publish_then_receive_intact(broker: Arc<dyn Broker>) {
    let (topic, group) = names();
    let mut sub = broker
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let sent = vec![
        Message {
            id: "evt_1".into(),
            key: Some("customer-1".into()),
            headers: vec![
                ("type".into(), "order.created".into()),
                ("x-repeat".into(), "one".into()),
                ("x-repeat".into(), "two".into()),
                ("x-empty".into(), String::new()),
            ],
            payload: Bytes::from_static(b"{\"total\": 42}"),
        },
        Message {
            id: "evt_2".into(),
            key: None,
            headers: vec![],
            payload: Bytes::new(),
        },
        Message {
            id: "evt_3".into(),
            key: Some("cliënt ✓".into()),
            headers: vec![("note".into(), "\"quoted\"\n\ttabbed é".into())],
            payload: (0..=255u8).collect::<Vec<_>>().into(),
        },
    ];
    broker.publish(&topic, &sent[..2]).await.unwrap();
    broker.publish(&topic, &sent[2..]).await.unwrap();
    broker.publish(&topic, &[]).await.unwrap();

    let got = receive_n(sub.as_mut(), sent.len(), PATIENCE).await;
    assert_distinct(&got);
    let mut by_id: HashMap<String, Delivery> =
        got.into_iter().map(|d| (d.message.id.clone(), d)).collect();
    for message in &sent {
        let delivery = by_id.remove(&message.id).unwrap();
        assert_eq!(&delivery.message, message);
        assert_eq!(delivery.receive_count, 1);
        delivery.ack().await.unwrap();
    }
    assert_nothing(sub.as_mut(), Duration::from_millis(300), "all were acked").await;
}

/// Case 2a: Every group gets every message published after it joined.
pub(crate) async fn every_group_receives_every_message(broker: Arc<dyn Broker>) {
    let (topic, first) = names();
    let second = unique_name("group");
    let mut a = broker
        .subscribe(&topic, &first, SubscribeOptions::default())
        .await
        .unwrap();
    let mut b = broker
        .subscribe(&topic, &second, SubscribeOptions::default())
        .await
        .unwrap();
    let sent: Vec<Message> = (0..30)
        .map(|i| {
            let key = (i % 4 != 0).then(|| format!("k{}", i % 3));
            message(&format!("m{i}"), key.as_deref(), format!("{i}").as_bytes())
        })
        .collect();
    broker.publish(&topic, &sent[..10]).await.unwrap();
    broker.publish(&topic, &sent[10..]).await.unwrap();

    for sub in [&mut a, &mut b] {
        let got = drain(sub.as_mut(), sent.len(), PATIENCE).await;
        let mut got_ids: Vec<&str> = got.iter().map(|m| m.id.as_str()).collect();
        got_ids.sort_unstable();
        let mut sent_ids: Vec<&str> = sent.iter().map(|m| m.id.as_str()).collect();
        sent_ids.sort_unstable();
        assert_eq!(got_ids, sent_ids, "each group receives each message once");
        assert_nothing(sub.as_mut(), Duration::from_millis(200), "all were acked").await;
    }
}

/// Case 2b: Consumers of one group share its messages: each goes to one of them.
pub(crate) async fn consumers_of_a_group_share_its_messages(broker: Arc<dyn Broker>) {
    if broker.sharing() == Sharing::Partitions {
        return consumers_of_a_group_share_its_partitions(broker).await;
    }
    let (topic, group) = names();
    let mut a = broker
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let mut b = broker
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let sent: Vec<Message> = (0..10)
        .map(|i| message(&format!("m{i}"), None, b"x"))
        .collect();
    broker.publish(&topic, &sent).await.unwrap();

    // `a` holds five (unacked, so invisible), and `b` must get the other five.
    let held_by_a = receive_n(a.as_mut(), 5, PATIENCE).await;
    let held_by_b = receive_n(b.as_mut(), 5, PATIENCE).await;
    let mut all: Vec<&str> = held_by_a
        .iter()
        .chain(&held_by_b)
        .map(|d| d.message.id.as_str())
        .collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 10, "no message went to both consumers");
    assert_nothing(b.as_mut(), Duration::from_millis(300), "a holds the rest").await;
    assert_nothing(a.as_mut(), Duration::from_millis(100), "b holds the rest").await;
    for delivery in held_by_a.into_iter().chain(held_by_b) {
        delivery.ack().await.unwrap();
    }
}

/// Case 2b where a group shares partitions: two consumers both get messages once the
/// partitions are divided between them, and every message goes to exactly one of them.
async fn consumers_of_a_group_share_its_partitions(broker: Arc<dyn Broker>) {
    let (topic, group) = names();
    let mut subs = Vec::new();
    for _ in 0..2 {
        subs.push(
            broker
                .subscribe(&topic, &group, SubscribeOptions::default())
                .await
                .unwrap(),
        );
    }
    // Batches of key-less messages (spread over partitions by id) until both consumers have
    // had some: the partitions are divided a moment after the second consumer joins.
    let mut published = 0usize;
    let mut got: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
    let deadline = Instant::now() + PATIENCE;
    for round in 0..MAX_RECEIVES {
        assert!(
            Instant::now() < deadline,
            "both consumers should get messages; got {} and {} of {published}",
            got[0].len(),
            got[1].len()
        );
        let batch: Vec<Message> = (0..10)
            .map(|i| message(&format!("r{round}-m{i}"), None, b"x"))
            .collect();
        broker.publish(&topic, &batch).await.unwrap();
        published += batch.len();
        for (index, sub) in subs.iter_mut().enumerate() {
            for delivery in sub.receive(10, Duration::from_millis(100)).await.unwrap() {
                got[index].push(delivery.message.id.clone());
                delivery.ack().await.unwrap();
            }
        }
        if !got[0].is_empty() && !got[1].is_empty() {
            break;
        }
    }
    // Then everything published arrives, each message at one consumer only.
    for _ in 0..MAX_RECEIVES {
        if got[0].len() + got[1].len() >= published || Instant::now() >= deadline {
            break;
        }
        for (index, sub) in subs.iter_mut().enumerate() {
            for delivery in sub.receive(10, Duration::from_millis(100)).await.unwrap() {
                got[index].push(delivery.message.id.clone());
                delivery.ack().await.unwrap();
            }
        }
    }
    let mut all: Vec<&String> = got.iter().flatten().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all.len(),
        published,
        "every message came, none to both consumers"
    );
    assert_eq!(got[0].len() + got[1].len(), published, "none came twice");
}

/// Case 3: A nacked message comes back after the delay, counted.
pub(crate) async fn nack_redelivers_after_the_delay(broker: Arc<dyn Broker>) {
    let (topic, group) = names();
    let mut sub = broker
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let sent = message("m1", Some("k"), b"payload");
    broker
        .publish(&topic, std::slice::from_ref(&sent))
        .await
        .unwrap();
    let first = receive_one(sub.as_mut()).await;
    assert_eq!(first.receive_count, 1);

    let delay = Duration::from_secs(1);
    let nacked_at = Instant::now();
    assert_eq!(first.nack(delay, "boom").await.unwrap(), Nacked::Retry);
    let again = receive_one(sub.as_mut()).await;
    let waited = nacked_at.elapsed();
    assert!(
        waited >= delay - Duration::from_millis(50),
        "redelivered after {waited:?}, before the {delay:?} delay"
    );
    assert_eq!(again.message, sent);
    assert_eq!(again.receive_count, 2);
    again.ack().await.unwrap();
    assert_nothing(sub.as_mut(), Duration::from_millis(200), "it was acked").await;
}

/// Case 4a: A message neither acked nor nacked comes back after the visibility timeout.
pub(crate) async fn visibility_timeout_redelivers(broker: Arc<dyn Broker>) {
    let (topic, group) = names();
    let timeout = Duration::from_secs(1);
    let mut sub = broker
        .subscribe(&topic, &group, visibility(timeout, 10))
        .await
        .unwrap();
    let sent = message("m1", None, b"payload");
    broker
        .publish(&topic, std::slice::from_ref(&sent))
        .await
        .unwrap();
    // The claim, and so the timeout's start, happens after this.
    let receiving_at = Instant::now();
    let first = receive_one(sub.as_mut()).await;

    let again = receive_one(sub.as_mut()).await;
    let waited = receiving_at.elapsed();
    assert!(
        waited >= timeout - Duration::from_millis(50),
        "redelivered after {waited:?}, within the {timeout:?} visibility timeout"
    );
    assert_eq!(again.message, sent);
    assert_eq!(again.receive_count, 2);
    again.ack().await.unwrap();
    drop(first);
}

/// Case 4b: Extending keeps a message invisible past its visibility timeout.
pub(crate) async fn extend_keeps_a_message_invisible(broker: Arc<dyn Broker>) {
    let (topic, group) = names();
    let timeout = Duration::from_secs(2);
    let mut sub = broker
        .subscribe(&topic, &group, visibility(timeout, 10))
        .await
        .unwrap();
    broker
        .publish(
            &topic,
            &[message("left", None, b"l"), message("kept", None, b"k")],
        )
        .await
        .unwrap();
    let got = receive_n(sub.as_mut(), 2, PATIENCE).await;
    let (kept, left): (Vec<_>, Vec<_>) = got.into_iter().partition(|d| d.message.id == "kept");
    let kept = kept.into_iter().next().unwrap();
    kept.extend(Duration::from_secs(10)).await.unwrap();
    let extended_at = Instant::now();

    // The other one times out and comes back; the extended one does not.
    let again = receive_one(sub.as_mut()).await;
    assert_eq!(again.message.id, "left");
    assert_eq!(again.receive_count, 2);
    again.ack().await.unwrap();
    let until = (extended_at + Duration::from_secs(5)).saturating_duration_since(Instant::now());
    assert_nothing(sub.as_mut(), until, "the extended message stays invisible").await;
    kept.ack().await.unwrap();
    drop(left);
}

/// Case 4c: The messages of a consumer that vanished (crashed) go to another consumer of the
/// group.
pub(crate) async fn a_vanished_consumers_messages_come_back(broker: Arc<dyn Broker>) {
    let (topic, group) = names();
    let options = visibility(Duration::from_secs(1), 10);
    let mut crashed = broker
        .subscribe(&topic, &group, options.clone())
        .await
        .unwrap();
    let sent = message("m1", Some("k"), b"payload");
    broker
        .publish(&topic, std::slice::from_ref(&sent))
        .await
        .unwrap();
    let lost = receive_one(crashed.as_mut()).await;
    drop(lost);
    drop(crashed);

    let mut survivor = broker.subscribe(&topic, &group, options).await.unwrap();
    let again = receive_one(survivor.as_mut()).await;
    assert_eq!(again.message, sent);
    assert_eq!(again.receive_count, 2);
    again.ack().await.unwrap();
}

/// Case 5: A consumer that lost its lease (the message was redelivered) cannot settle it.
pub(crate) async fn stale_settles_after_a_lost_lease_fail(broker: Arc<dyn Broker>) {
    let (topic, group) = names();
    let mut sub = broker
        .subscribe(&topic, &group, visibility(Duration::from_secs(1), 10))
        .await
        .unwrap();
    broker
        .publish(&topic, &[message("m1", Some("k"), b"payload")])
        .await
        .unwrap();
    let first = receive_one(sub.as_mut()).await;
    let second = receive_one(sub.as_mut()).await;
    assert_eq!(second.receive_count, 2);

    assert_lease_lost(first.extend(Duration::from_secs(30)).await);
    assert_lease_lost(first.ack().await);

    // The stale ack removed nothing: the redelivery times out in turn and comes back.
    let third = receive_one(sub.as_mut()).await;
    assert_eq!(third.message.id, "m1");
    assert_eq!(third.receive_count, 3);
    assert_lease_lost(second.nack(Duration::ZERO, "too late").await.map(drop));
    third.ack().await.unwrap();
    assert_nothing(sub.as_mut(), Duration::from_millis(300), "it was acked").await;
}

/// Case 6: Per-key order holds with concurrent consumers acking out of order, and nothing is
/// delivered twice.
pub(crate) async fn per_key_order_under_concurrent_consumers(broker: Arc<dyn Broker>) {
    const KEYS: usize = 20;
    const PER_KEY: usize = 100;
    const TOTAL: usize = KEYS * PER_KEY;
    const BATCH: usize = 100;
    const CONSUMERS: usize = 4;

    let (topic, group) = names();
    let options = visibility(Duration::from_secs(120), 10);
    let mut subs = Vec::new();
    for _ in 0..CONSUMERS {
        subs.push(
            broker
                .subscribe(&topic, &group, options.clone())
                .await
                .unwrap(),
        );
    }

    // Keys interleaved at random; within a key, numbers in publish order.
    let mut rng = Rng::seeded();
    let mut order: Vec<usize> = (0..TOTAL).map(|i| i % KEYS).collect();
    rng.shuffle(&mut order);
    let mut next = [0usize; KEYS];
    let sent: Vec<Message> = order
        .into_iter()
        .map(|key| {
            let n = next[key];
            next[key] += 1;
            message(
                &format!("k{key}-{n}"),
                Some(&format!("k{key}")),
                format!("{key}:{n}").as_bytes(),
            )
        })
        .collect();

    let seen: Arc<Mutex<HashMap<String, Vec<usize>>>> = Arc::default();
    let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
    let overlaps: Arc<Mutex<Vec<String>>> = Arc::default();
    let received = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(90);

    let mut consumers = Vec::new();
    for (index, mut sub) in subs.into_iter().enumerate() {
        let (seen, in_flight, overlaps, received) = (
            seen.clone(),
            in_flight.clone(),
            overlaps.clone(),
            received.clone(),
        );
        let mut rng = Rng::new(rng.next() ^ index as u64);
        consumers.push(tokio::spawn(async move {
            for _ in 0..MAX_RECEIVES {
                if received.load(Ordering::SeqCst) >= TOTAL || Instant::now() >= deadline {
                    break;
                }
                let mut batch = sub.receive(10, Duration::from_millis(200)).await.unwrap();
                for delivery in &batch {
                    let key = delivery.message.key.clone().unwrap();
                    let n: usize = std::str::from_utf8(&delivery.message.payload)
                        .unwrap()
                        .split(':')
                        .nth(1)
                        .unwrap()
                        .parse()
                        .unwrap();
                    if !in_flight.lock().unwrap().insert(key.clone()) {
                        overlaps.lock().unwrap().push(format!("{key}:{n}"));
                    }
                    seen.lock().unwrap().entry(key).or_default().push(n);
                    received.fetch_add(1, Ordering::SeqCst);
                }
                rng.shuffle(&mut batch);
                for delivery in batch {
                    tokio::time::sleep(Duration::from_micros(rng.below(2_000))).await;
                    let key = delivery.message.key.clone().unwrap();
                    in_flight.lock().unwrap().remove(&key);
                    delivery.ack().await.unwrap();
                }
            }
        }));
    }
    for batch in sent.chunks(BATCH) {
        broker.publish(&topic, batch).await.unwrap();
    }
    for consumer in consumers {
        consumer.await.unwrap();
    }

    let seen = seen.lock().unwrap();
    let total: usize = seen.values().map(Vec::len).sum();
    assert_eq!(
        total, TOTAL,
        "every message received once within the deadline"
    );
    for key in 0..KEYS {
        let numbers = seen.get(&format!("k{key}")).unwrap();
        assert_eq!(
            numbers,
            &(0..PER_KEY).collect::<Vec<_>>(),
            "key k{key} in publish order, each once"
        );
    }
    assert!(
        overlaps.lock().unwrap().is_empty(),
        "two messages of one key were in flight at once: {:?}",
        overlaps.lock().unwrap()
    );
}

/// Case 7: A key whose head is held back does not hold back other keys or key-less messages.
///
/// Where a group shares partitions, one consumer does both parts: a second would own other
/// partitions and could not be asked for these keys.
pub(crate) async fn a_held_key_does_not_block_others(broker: Arc<dyn Broker>) {
    let (topic, group) = names();
    let mut first = broker
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let mut other = match broker.sharing() {
        Sharing::Messages => Some(
            broker
                .subscribe(&topic, &group, SubscribeOptions::default())
                .await
                .unwrap(),
        ),
        Sharing::Partitions => None,
    };
    broker
        .publish(
            &topic,
            &[
                message("a1", Some("A"), b""),
                message("a2", Some("A"), b""),
                message("b1", Some("B"), b""),
                message("b2", Some("B"), b""),
                message("n1", None, b""),
                message("n2", None, b""),
            ],
        )
        .await
        .unwrap();

    let heads = receive_n(first.as_mut(), 4, PATIENCE).await;
    let mut ids: Vec<&str> = heads.iter().map(|d| d.message.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        ["a1", "b1", "n1", "n2"],
        "one message per key in flight"
    );
    let mut held = None;
    for delivery in heads {
        if delivery.message.id == "a1" {
            held = Some(delivery);
        } else {
            delivery.ack().await.unwrap();
        }
    }

    // With a1 held: B's next message and new key-less ones flow, A's next does not.
    broker
        .publish(&topic, &[message("n3", None, b"")])
        .await
        .unwrap();
    let second: &mut dyn Subscription = match other.as_mut() {
        Some(sub) => sub.as_mut(),
        None => first.as_mut(),
    };
    let flowing = receive_n(second, 2, PATIENCE).await;
    let mut ids: Vec<&str> = flowing.iter().map(|d| d.message.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["b2", "n3"]);
    for delivery in flowing {
        delivery.ack().await.unwrap();
    }
    assert_nothing(second, Duration::from_millis(500), "a2 waits for a1").await;

    held.unwrap().ack().await.unwrap();
    let next = receive_one(second).await;
    assert_eq!(next.message.id, "a2");
    next.ack().await.unwrap();
}

/// Case 8a: Nacked `max_deliveries` times, a message is dead-lettered and its key's next one
/// released; other keys flow meanwhile.
pub(crate) async fn dead_letter_after_max_nacks(broker: Arc<dyn Broker>) {
    let (topic, group) = names();
    let mut sub = broker
        .subscribe(&topic, &group, visibility(Duration::from_secs(30), 3))
        .await
        .unwrap();
    broker
        .publish(
            &topic,
            &[
                message("k1", Some("K"), b"poison"),
                message("k2", Some("K"), b"fine"),
                message("o1", Some("O"), b"other"),
            ],
        )
        .await
        .unwrap();
    let heads = receive_n(sub.as_mut(), 2, PATIENCE).await;
    let (mut poison, other): (Vec<_>, Vec<_>) =
        heads.into_iter().partition(|d| d.message.id == "k1");
    assert_eq!(other.len(), 1);
    assert_eq!(other[0].message.id, "o1");
    for delivery in other {
        delivery.ack().await.unwrap();
    }

    let mut delivery = poison.pop().unwrap();
    for attempt in 1..=3u32 {
        assert_eq!(delivery.message.id, "k1");
        assert_eq!(delivery.receive_count, attempt);
        let outcome = delivery
            .nack(Duration::ZERO, &format!("failure {attempt}"))
            .await
            .unwrap();
        if attempt < 3 {
            assert_eq!(outcome, Nacked::Retry);
            // Another key keeps flowing while K retries.
            broker
                .publish(
                    &topic,
                    &[message(&format!("o{}", attempt + 1), Some("O"), b"")],
                )
                .await
                .unwrap();
            let got = receive_n(sub.as_mut(), 2, PATIENCE).await;
            let (mut retried, other): (Vec<_>, Vec<_>) =
                got.into_iter().partition(|d| d.message.id == "k1");
            assert_eq!(other.len(), 1, "the other key's message came too");
            for d in other {
                d.ack().await.unwrap();
            }
            delivery = retried.pop().unwrap();
        } else {
            assert_eq!(outcome, Nacked::DeadLettered);
            break;
        }
    }

    let next = receive_one(sub.as_mut()).await;
    assert_eq!(next.message.id, "k2", "the key's next message is released");
    assert_eq!(next.receive_count, 1);
    next.ack().await.unwrap();
    assert_nothing(sub.as_mut(), Duration::from_millis(300), "k1 is gone").await;
}

/// Case 8b: A message whose visibility timeout expires `max_deliveries` times is dead-lettered,
/// and its key's next one released.
pub(crate) async fn dead_letter_after_max_timeouts(broker: Arc<dyn Broker>) {
    let (topic, group) = names();
    let timeout = Duration::from_secs(1);
    let mut sub = broker
        .subscribe(&topic, &group, visibility(timeout, 2))
        .await
        .unwrap();
    broker
        .publish(
            &topic,
            &[message("k1", Some("K"), b""), message("k2", Some("K"), b"")],
        )
        .await
        .unwrap();
    let first = receive_one(sub.as_mut()).await;
    assert_eq!((first.message.id.as_str(), first.receive_count), ("k1", 1));
    let second = receive_one(sub.as_mut()).await;
    assert_eq!(
        (second.message.id.as_str(), second.receive_count),
        ("k1", 2)
    );
    drop((first, second));

    let next = receive_one(sub.as_mut()).await;
    assert_eq!(next.message.id, "k2", "k1 was dead-lettered, k2 released");
    assert_eq!(next.receive_count, 1);
    next.ack().await.unwrap();
    assert_nothing(
        sub.as_mut(),
        timeout + Duration::from_millis(500),
        "k1 never comes back",
    )
    .await;
}

/// Case 9: Messages published before the topic has any group are kept for the first group.
pub(crate) async fn messages_before_any_group_go_to_the_first(broker: Arc<dyn Broker>) {
    let (topic, group) = names();
    let early = [
        message("e1", Some("K"), b"1"),
        message("e2", Some("K"), b"2"),
        message("e3", None, b"3"),
    ];
    broker.publish(&topic, &early[..2]).await.unwrap();
    broker.publish(&topic, &early[2..]).await.unwrap();

    let mut sub = broker
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    broker
        .publish(&topic, &[message("late", Some("K"), b"4")])
        .await
        .unwrap();
    let got = drain(sub.as_mut(), 4, PATIENCE).await;
    let ids: Vec<&str> = got.iter().map(|m| m.id.as_str()).collect();
    let position = |id: &str| ids.iter().position(|x| *x == id).unwrap();
    assert!(position("e1") < position("e2") && position("e2") < position("late"));
    assert!(ids.contains(&"e3"));
    assert_eq!(&got[position("e1")], &early[0]);
    assert_nothing(sub.as_mut(), Duration::from_millis(200), "all were acked").await;
}

/// Case 10: Bad input is an `Invalid` error with a message, and publishes nothing.
pub(crate) async fn bad_input_is_refused_and_publishes_nothing(broker: Arc<dyn Broker>) {
    let (topic, group) = names();
    let good = message("good", None, b"");
    assert_invalid(broker.publish("", std::slice::from_ref(&good)).await);
    assert_invalid(
        broker
            .subscribe("", &group, SubscribeOptions::default())
            .await
            .map(drop),
    );
    assert_invalid(
        broker
            .subscribe(&topic, "", SubscribeOptions::default())
            .await
            .map(drop),
    );
    assert_invalid(
        broker
            .subscribe(&topic, &group, visibility(Duration::from_secs(30), 0))
            .await
            .map(drop),
    );

    let mut sub = broker
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    assert_invalid(sub.receive(0, Duration::ZERO).await.map(drop));
    let no_id = message("", None, b"");
    assert_invalid(broker.publish(&topic, &[good.clone(), no_id]).await);

    let after = message("after", None, b"");
    broker
        .publish(&topic, std::slice::from_ref(&after))
        .await
        .unwrap();
    let got = receive_one(sub.as_mut()).await;
    assert_eq!(
        got.message, after,
        "nothing of the refused batch was published"
    );
    got.ack().await.unwrap();
    assert_nothing(
        sub.as_mut(),
        Duration::from_millis(300),
        "the refused batch is not there",
    )
    .await;
}

/// `receive` waits up to `wait` and returns empty when nothing comes.
pub(crate) async fn receive_waits_then_returns_empty(broker: Arc<dyn Broker>) {
    let (topic, group) = names();
    let mut sub = broker
        .subscribe(&topic, &group, SubscribeOptions::default())
        .await
        .unwrap();
    let wait = Duration::from_millis(400);
    let started = Instant::now();
    let got = sub.receive(10, wait).await.unwrap();
    let took = started.elapsed();
    assert!(got.is_empty());
    assert!(
        took >= wait - Duration::from_millis(20),
        "returned after {took:?}"
    );
    assert!(
        took < wait + Duration::from_secs(10),
        "returned after {took:?}"
    );
}

/// The broker answers a ping and names its kind.
pub(crate) async fn ping_answers(broker: Arc<dyn Broker>) {
    broker.ping().await.unwrap();
    assert!(!broker.kind().is_empty());
}

// Helpers.

fn names() -> (String, String) {
    (unique_name("topic"), unique_name("group"))
}

pub(crate) fn message(id: &str, key: Option<&str>, payload: &[u8]) -> Message {
    Message {
        id: id.to_owned(),
        key: key.map(str::to_owned),
        headers: vec![("type".to_owned(), "test".to_owned())],
        payload: Bytes::copy_from_slice(payload),
    }
}

fn visibility(timeout: Duration, max_deliveries: u32) -> SubscribeOptions {
    SubscribeOptions {
        visibility_timeout: timeout,
        max_deliveries,
    }
}

/// Receives until `want` deliveries are held (unsettled), failing after `within`.
pub(crate) async fn receive_n(
    sub: &mut dyn Subscription,
    want: usize,
    within: Duration,
) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    for _ in 0..MAX_RECEIVES {
        if got.len() >= want {
            return got;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "received {} of {want} messages within {within:?}: {:?}",
            got.len(),
            ids(&got)
        );
        let batch = sub
            .receive(want - got.len(), left.min(Duration::from_secs(1)))
            .await
            .unwrap();
        got.extend(batch);
    }
    panic!("gave up after {MAX_RECEIVES} receives");
}

pub(crate) async fn receive_one(sub: &mut dyn Subscription) -> Delivery {
    let mut got = receive_n(sub, 1, PATIENCE).await;
    got.pop().unwrap()
}

/// Receives and acks until `want` messages came, failing after `within`; in receive order.
async fn drain(sub: &mut dyn Subscription, want: usize, within: Duration) -> Vec<Message> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    for _ in 0..MAX_RECEIVES {
        if got.len() >= want {
            return got;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "received {} of {want} messages within {within:?}",
            got.len()
        );
        let batch = sub
            .receive(want - got.len(), left.min(Duration::from_secs(1)))
            .await
            .unwrap();
        for delivery in batch {
            assert_eq!(
                delivery.receive_count, 1,
                "{} came twice",
                delivery.message.id
            );
            got.push(delivery.message.clone());
            delivery.ack().await.unwrap();
        }
    }
    panic!("gave up after {MAX_RECEIVES} receives");
}

pub(crate) async fn assert_nothing(sub: &mut dyn Subscription, during: Duration, why: &str) {
    let got = sub.receive(10, during).await.unwrap();
    assert!(got.is_empty(), "{why}, yet received {:?}", ids(&got));
}

fn ids(deliveries: &[Delivery]) -> Vec<&str> {
    deliveries.iter().map(|d| d.message.id.as_str()).collect()
}

fn assert_distinct(deliveries: &[Delivery]) {
    let distinct: HashSet<&str> = ids(deliveries).into_iter().collect();
    assert_eq!(
        distinct.len(),
        deliveries.len(),
        "duplicates in {:?}",
        ids(deliveries)
    );
}

fn assert_invalid(result: Result<(), BrokerError>) {
    match result {
        Err(BrokerError::Invalid(reason)) => assert!(!reason.is_empty()),
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

fn assert_lease_lost(result: Result<(), BrokerError>) {
    assert!(
        matches!(result, Err(BrokerError::LeaseLost)),
        "expected LeaseLost, got {result:?}"
    );
}

/// A small, seedable generator (SplitMix64), so a failing order can be replayed: the seed is
/// printed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn seeded() -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        eprintln!("random seed: {seed}");
        Self(seed)
    }

    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}
