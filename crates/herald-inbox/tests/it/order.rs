//! Per-key order with concurrent processing: each key's effects commit in publish order,
//! because the broker hands out one message per key at a time and the runtime acks only
//! after the commit.

use std::collections::HashMap;

use herald_testing::{TestDb, on_both_stores};

use crate::support::{PATIENCE, Recorder, Running, Setup, event, message, wait_until};

on_both_stores!(each_key_is_processed_in_publish_order);

async fn each_key_is_processed_in_publish_order(db: TestDb) {
    let setup = Setup::new(&db).await;
    let events: Vec<_> = (0..500)
        .map(|n| event(Some(&format!("key{}", n % 10)), n))
        .collect();
    for chunk in events.chunks(100) {
        let messages: Vec<_> = chunk.iter().map(message).collect();
        setup.publish(&messages).await;
    }
    let mut options = setup.options();
    options.concurrency = 8;
    let consumer = setup.consumer(options, Recorder::new());
    let running = Running::start(&consumer);
    wait_until("every event's effect", PATIENCE, || async {
        setup.effects().await.len() >= events.len()
    })
    .await;
    running.stop().await;

    let effects = setup.effects().await;
    assert_eq!(effects.len(), events.len());
    let mut seen: HashMap<String, Vec<i64>> = HashMap::new();
    for (_, key, n) in effects {
        seen.entry(key.unwrap()).or_default().push(n);
    }
    assert_eq!(seen.len(), 10);
    for (key, order) in seen {
        let published: Vec<i64> = events
            .iter()
            .filter(|e| e.partitionkey.as_deref() == Some(key.as_str()))
            .map(crate::support::n_of)
            .collect();
        assert_eq!(order, published, "order of {key}");
    }
}
