//! The Kafka backend's log against a Kafka-compatible server (tansu in `scripts/test`): the
//! shared log contract, a broker that cannot be reached, and what is Kafka's own: partition
//! counts, keys that are empty or absent, bad partitions and names, and reading from past the
//! end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_broker::kafka::{KafkaLog, KafkaOptions};
use herald_broker::log::Log;
use herald_broker::{BrokerError, Message};
use herald_testing::{KAFKA_URL, service_url, unique_name};

use crate::log_contract::read_n;

crate::log_contract::log_suite!(kafka_log, crate::kafka::connect);

/// Options for the test server. tansu (0.6) reads only from batch boundaries and reports the
/// end of a partition from its last batch's first offset, so records go one per batch.
fn options() -> KafkaOptions {
    let mut options = KafkaOptions::new(service_url(KAFKA_URL));
    options.one_record_per_batch = true;
    options
}

pub(crate) async fn connect() -> Arc<dyn Log> {
    Arc::new(KafkaLog::connect(options()).await.unwrap())
}

fn message(id: &str, key: Option<&str>) -> Message {
    Message {
        id: id.to_owned(),
        key: key.map(str::to_owned),
        headers: vec![("type".to_owned(), "order.placed".to_owned())],
        payload: Bytes::from(format!("payload of {id}")),
    }
}

#[tokio::test]
async fn kafka_unreachable_is_unavailable() {
    crate::log_contract::assert_unreachable(
        || async {
            let log = KafkaLog::connect(KafkaOptions::new("127.0.0.1:1")).await?;
            Ok(Arc::new(log) as Arc<dyn Log>)
        },
        Duration::from_secs(15),
    )
    .await;
}

#[tokio::test]
async fn kafka_invalid_options_are_refused() {
    let mut options = options();
    options.topic_prefix = "no spaces".to_owned();
    options.request_timeout = Duration::ZERO;
    match KafkaLog::connect(options).await {
        Err(BrokerError::Invalid(why)) => {
            assert!(
                why.contains("topic_prefix") && why.contains("request_timeout"),
                "{why}"
            );
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_partition_count_mismatch_is_refused() {
    let log = connect().await;
    let topic = unique_name("kafka");
    log.ensure_topic(&topic, 2).await.unwrap();
    for other in [1, 3] {
        match log.ensure_topic(&topic, other).await {
            Err(BrokerError::Invalid(why)) => assert!(why.contains("2 partitions"), "{why}"),
            outcome => panic!("ensure_topic with {other} partitions gave {outcome:?}"),
        }
    }
    // Another process sees the same.
    let other_log = connect().await;
    assert!(matches!(
        other_log.ensure_topic(&topic, 4).await,
        Err(BrokerError::Invalid(_))
    ));
    other_log.ensure_topic(&topic, 2).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_no_key_and_empty_key_stay_apart() {
    let log = connect().await;
    let topic = unique_name("kafka");
    log.ensure_topic(&topic, 2).await.unwrap();
    let sent = [
        message("a", None),
        message("b", Some("")),
        message("c", Some("k")),
        message("d", Some("")),
        message("e", None),
    ];
    let records: Vec<(u32, Message)> = sent.iter().cloned().map(|m| (0, m)).collect();
    log.append(&topic, &records).await.unwrap();
    let got = read_n(log.as_ref(), &topic, 0, 0, sent.len()).await;
    let keys: Vec<Option<&str>> = got.iter().map(|r| r.message.key.as_deref()).collect();
    assert_eq!(keys, [None, Some(""), Some("k"), Some(""), None]);
    let messages: Vec<Message> = got.into_iter().map(|r| r.message).collect();
    assert_eq!(messages, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_bad_partitions_and_topics_are_invalid() {
    let log = connect().await;
    let topic = unique_name("kafka");
    assert!(matches!(
        log.ensure_topic(&topic, 0).await,
        Err(BrokerError::Invalid(_))
    ));
    log.ensure_topic(&topic, 2).await.unwrap();

    // A partition that does not exist: nothing of the batch is appended.
    let batch = [(0, message("ok", None)), (2, message("nowhere", None))];
    assert!(matches!(
        log.append(&topic, &batch).await,
        Err(BrokerError::Invalid(_))
    ));
    assert_eq!(log.end(&topic, 0).await.unwrap(), 0);
    assert!(matches!(
        log.end(&topic, 2).await,
        Err(BrokerError::Invalid(_))
    ));
    assert!(matches!(
        log.reader(&topic, 5, 0).await,
        Err(BrokerError::Invalid(_))
    ));

    // A topic nobody ensured.
    let missing = unique_name("kafka");
    assert!(matches!(
        log.append(&missing, &batch[..1]).await,
        Err(BrokerError::Invalid(_))
    ));
    assert!(matches!(
        log.end(&missing, 0).await,
        Err(BrokerError::Invalid(_))
    ));

    // A header name librdkafka cannot carry.
    let mut nul = message("nul", None);
    nul.headers.push(("a\0b".to_owned(), "x".to_owned()));
    assert!(matches!(
        log.append(&topic, &[(0, nul)]).await,
        Err(BrokerError::Invalid(_))
    ));

    // Names too long for Kafka once prefixed, or not names at all.
    let mut long_prefix = options();
    long_prefix.topic_prefix = "p".repeat(49);
    let long = KafkaLog::connect(long_prefix).await.unwrap();
    assert!(matches!(
        long.ensure_topic(&"t".repeat(201), 1).await,
        Err(BrokerError::Invalid(_))
    ));
    assert!(matches!(
        log.ensure_topic("a/b", 1).await,
        Err(BrokerError::Invalid(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_reader_past_the_end_sees_only_records_from_its_position() {
    let log = connect().await;
    let topic = unique_name("kafka");
    log.ensure_topic(&topic, 1).await.unwrap();
    let first: Vec<(u32, Message)> = (0..3)
        .map(|i| (0, message(&format!("early{i}"), None)))
        .collect();
    log.append(&topic, &first).await.unwrap();
    let end = log.end(&topic, 0).await.unwrap();
    assert_eq!(end, 3, "positions are Kafka offsets");

    let from = end + 2;
    let mut reader = log.reader(&topic, 0, from).await.unwrap();
    assert!(
        reader
            .read(10, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty()
    );
    let later: Vec<(u32, Message)> = (0..4)
        .map(|i| (0, message(&format!("late{i}"), None)))
        .collect();
    log.append(&topic, &later).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while got.len() < 2 {
        assert!(Instant::now() < deadline, "got only {got:?}");
        got.extend(reader.read(10, Duration::from_millis(500)).await.unwrap());
    }
    let ids: Vec<&str> = got.iter().map(|r| r.message.id.as_str()).collect();
    assert_eq!(ids, ["late2", "late3"]);
    assert_eq!(got[0].position, from);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_records_outlive_the_log_that_wrote_them() {
    let topic = unique_name("kafka");
    {
        let writer = connect().await;
        writer.ensure_topic(&topic, 1).await.unwrap();
        writer
            .append(&topic, &[(0, message("kept", Some("k")))])
            .await
            .unwrap();
    }
    let reader = connect().await;
    reader.ensure_topic(&topic, 1).await.unwrap();
    let got = read_n(reader.as_ref(), &topic, 0, 0, 1).await;
    assert_eq!(got[0].message, message("kept", Some("k")));
    assert_eq!(reader.end(&topic, 0).await.unwrap(), 1);
}

/// A consumer that fetches from a deleted topic crashes librdkafka against tansu, so
/// `delete_topic` refuses while a reader of the topic is open, and deletes once it is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_delete_waits_for_the_topics_readers() {
    let mut options = options();
    options.request_timeout = Duration::from_secs(2);
    let log = KafkaLog::connect(options).await.unwrap();
    let topic = unique_name("kafka");
    log.ensure_topic(&topic, 1).await.unwrap();
    log.append(&topic, &[(0, message("a", None))])
        .await
        .unwrap();
    let reader = {
        let mut reader = log.reader(&topic, 0, 0).await.unwrap();
        let got = crate::log_contract::read_from(reader.as_mut(), 1).await;
        assert_eq!(got[0].message, message("a", None));
        reader
    };
    match log.delete_topic(&topic).await {
        Err(BrokerError::Invalid(why)) => assert!(why.contains("1 readers"), "{why}"),
        other => panic!("deleting a topic being read gave {other:?}"),
    }
    drop(reader);
    log.delete_topic(&topic).await.unwrap();
    log.ensure_topic(&topic, 1).await.unwrap();
    assert_eq!(log.end(&topic, 0).await.unwrap(), 0);
    log.delete_topic(&topic).await.unwrap();
}
