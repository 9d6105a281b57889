//! Failing events: a poison message is retried with backoff and dead-lettered with its error
//! after `max_deliveries` attempts while other keys keep flowing; a permanent failure and an
//! undecodable payload go to the dead letters at once.

use std::time::Duration;

use bytes::Bytes;
use herald_broker::Message;
use herald_inbox::HandlerError;
use herald_testing::{TestDb, on_both_stores};

use crate::support::{PATIENCE, Recorder, Running, Setup, event, message, wait_until};

on_both_stores!(
    a_poison_message_is_dead_lettered_while_others_flow,
    permanent_failures_are_dead_lettered_at_once,
);

async fn a_poison_message_is_dead_lettered_while_others_flow(db: TestDb) {
    let setup = Setup::new(&db).await;
    let poison = event(Some("bad"), 0);
    let after_poison = event(Some("bad"), 1);
    let others: Vec<_> = (0..20)
        .map(|n| event(Some(&format!("good{}", n % 4)), n))
        .collect();
    let mut messages = vec![message(&poison), message(&after_poison)];
    messages.extend(others.iter().map(message));
    setup.publish(&messages).await;

    let poison_id = poison.id.clone();
    let recorder = Recorder::failing(move |event, call| {
        (event.id == poison_id).then(|| HandlerError::transient(format!("boom, attempt {call}")))
    });
    let mut options = setup.options();
    options.max_deliveries = 3;
    // Each retry of the poison message waits at least a second.
    options.backoff_min = Duration::from_secs(2);
    options.backoff_max = Duration::from_secs(2);
    let consumer = setup.consumer(options, recorder.clone());
    let running = Running::start(&consumer);

    wait_until("the other keys' events", PATIENCE, || async {
        setup.effects().await.len() >= others.len()
    })
    .await;
    assert!(
        setup
            .broker
            .dead_letters(&setup.topic, &setup.name, 10)
            .await
            .unwrap()
            .is_empty(),
        "the other keys did not wait for the poison message's retries"
    );

    wait_until(
        "the poison message in the dead letters",
        PATIENCE,
        || async {
            !setup
                .broker
                .dead_letters(&setup.topic, &setup.name, 10)
                .await
                .unwrap()
                .is_empty()
        },
    )
    .await;
    wait_until("the event after the poison message", PATIENCE, || async {
        setup
            .effects()
            .await
            .iter()
            .any(|(id, _, _)| *id == after_poison.id)
    })
    .await;
    running.stop().await;

    let letters = setup
        .broker
        .dead_letters(&setup.topic, &setup.name, 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].message.id, poison.id);
    assert_eq!(letters[0].receive_count, 3);
    assert_eq!(letters[0].last_error, "boom, attempt 3");
    assert_eq!(recorder.calls(&poison.id), 3);
    assert_eq!(setup.effects().await.len(), others.len() + 1);
    assert_eq!(setup.settled("retry"), 2);
    assert_eq!(setup.settled("dead"), 1);
}

async fn permanent_failures_are_dead_lettered_at_once(db: TestDb) {
    let setup = Setup::new(&db).await;
    let refused = event(Some("a"), 0);
    let after_refused = event(Some("a"), 1);
    let garbage = Message {
        id: "evt_garbage".to_owned(),
        key: Some("b".to_owned()),
        headers: Vec::new(),
        payload: Bytes::from_static(b"\xffnot an event"),
    };
    let not_an_event = Message {
        id: "evt_not_an_event".to_owned(),
        key: Some("c".to_owned()),
        headers: Vec::new(),
        payload: Bytes::from_static(b"{\"id\": 7}"),
    };
    setup
        .publish(&[
            message(&refused),
            message(&after_refused),
            garbage,
            not_an_event,
        ])
        .await;

    let refused_id = refused.id.clone();
    let recorder = Recorder::failing(move |event, _| {
        (event.id == refused_id).then(|| HandlerError::permanent("cannot ever apply this"))
    });
    let mut options = setup.options();
    options.max_deliveries = 5;
    // Far beyond the test's patience: only skipping the backoff gets them dead-lettered.
    options.backoff_min = Duration::from_secs(3600);
    options.backoff_max = Duration::from_secs(3600);
    let consumer = setup.consumer(options, recorder.clone());
    let running = Running::start(&consumer);
    wait_until("three dead letters", PATIENCE, || async {
        setup
            .broker
            .dead_letters(&setup.topic, &setup.name, 10)
            .await
            .unwrap()
            .len()
            >= 3
    })
    .await;
    wait_until("the event after the refused one", PATIENCE, || async {
        !setup.effects().await.is_empty()
    })
    .await;
    running.stop().await;

    let mut letters = setup
        .broker
        .dead_letters(&setup.topic, &setup.name, 10)
        .await
        .unwrap();
    letters.sort_by(|a, b| a.message.id.cmp(&b.message.id));
    let errors: Vec<(&str, &str)> = letters
        .iter()
        .map(|l| (l.message.id.as_str(), l.last_error.as_str()))
        .collect();
    assert_eq!(letters.len(), 3, "{errors:?}");
    let by_id = |id: &str| letters.iter().find(|l| l.message.id == id).unwrap();
    assert_eq!(by_id(&refused.id).last_error, "cannot ever apply this");
    assert!(
        by_id("evt_garbage")
            .last_error
            .starts_with("the payload is not UTF-8"),
        "{errors:?}"
    );
    assert!(
        by_id("evt_not_an_event")
            .last_error
            .starts_with("the payload is not a valid CloudEvent"),
        "{errors:?}"
    );
    assert_eq!(recorder.calls(&refused.id), 1, "the handler ran once");
    assert_eq!(
        setup
            .effects()
            .await
            .into_iter()
            .map(|e| e.0)
            .collect::<Vec<_>>(),
        [after_refused.id]
    );
}
