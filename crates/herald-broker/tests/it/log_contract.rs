//! The contract of a backend's [`Log`], written once: what every real broker must do for
//! [`LogBroker`](herald_broker::log) to keep the broker guarantees on top of it.
//!
//! [`log_suite!`] makes one test per case for a backend from an
//! `async fn() -> Arc<dyn Log>` that connects to the test server. Each case makes its own topic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_broker::log::{Log, PartitionReader, Position, Record};
use herald_broker::{BrokerError, Message};
use herald_testing::unique_name;

/// Makes a module `$module` with one `#[tokio::test]` per case, each on a log from `$make`.
macro_rules! log_suite {
    ($module:ident, $make:path) => {
        $crate::log_contract::log_suite!(@cases $module, $make, [
            appended_records_read_back_intact,
            partitions_are_separate_and_ordered,
            reader_starts_at_a_position,
            end_is_after_every_appended_record,
            read_waits_then_returns_empty,
            read_wakes_for_a_later_append,
            ensure_topic_is_idempotent_under_races,
            many_records_in_one_append,
            a_deleted_topic_is_gone,
            ping_answers,
        ]);
    };
    (@cases $module:ident, $make:path, [$($case:ident),+ $(,)?]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let log = $make().await;
                    $crate::log_contract::$case(log).await;
                }
            )+
        }
    };
}
pub(crate) use log_suite;

const PATIENCE: Duration = Duration::from_secs(20);

fn topic() -> String {
    unique_name("log")
}

fn message(id: &str, key: Option<&str>, payload: &[u8]) -> Message {
    Message {
        id: id.to_owned(),
        key: key.map(str::to_owned),
        headers: vec![
            ("type".to_owned(), "order.placed".to_owned()),
            ("correlationid".to_owned(), format!("corr-{id}")),
            (
                "traceparent".to_owned(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
            ),
        ],
        payload: Bytes::copy_from_slice(payload),
    }
}

/// Reads `want` records from `from` of a partition, failing after [`PATIENCE`].
pub(crate) async fn read_n(
    log: &dyn Log,
    topic: &str,
    partition: u32,
    from: Position,
    want: usize,
) -> Vec<Record> {
    let mut reader = log.reader(topic, partition, from).await.unwrap();
    read_from(reader.as_mut(), want).await
}

/// Reads until `want` records came from `reader` (and no more), failing after [`PATIENCE`].
pub(crate) async fn read_from(reader: &mut dyn PartitionReader, want: usize) -> Vec<Record> {
    let deadline = Instant::now() + PATIENCE;
    let mut got = Vec::new();
    for _ in 0..10_000 {
        if got.len() >= want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {want} records came within {PATIENCE:?}",
            got.len()
        );
        got.extend(
            reader
                .read(want - got.len(), Duration::from_millis(500))
                .await
                .unwrap(),
        );
    }
    assert_eq!(got.len(), want, "no more than asked for");
    got
}

fn ids(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.message.id.as_str()).collect()
}

fn assert_increasing(records: &[Record]) {
    for pair in records.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "positions increase in log order: {} then {}",
            pair[0].position,
            pair[1].position
        );
    }
}

/// Id, key, every header and the payload (any bytes) come back unchanged.
pub(crate) async fn appended_records_read_back_intact(log: Arc<dyn Log>) {
    let topic = topic();
    log.ensure_topic(&topic, 2).await.unwrap();
    let binary: Vec<u8> = (0..=255u8).chain([0, 0, 255]).collect();
    let mut keyless = message("m2", None, &binary);
    keyless.headers.push(("x-empty".to_owned(), String::new()));
    keyless.headers.push((
        "x-unicode".to_owned(),
        "h\u{e9}ll\u{f6} \u{1f980}".to_owned(),
    ));
    let sent = vec![
        message("m1", Some("k\u{e9}y/1"), b"{\"a\":1}"),
        keyless,
        message("m3", Some(""), b""),
    ];
    let records: Vec<(u32, Message)> = sent.iter().cloned().map(|m| (1, m)).collect();
    log.append(&topic, &records).await.unwrap();

    let got = read_n(log.as_ref(), &topic, 1, 0, 3).await;
    let messages: Vec<Message> = got.iter().map(|r| r.message.clone()).collect();
    assert_eq!(messages, sent);
    assert_increasing(&got);
}

/// Each partition holds only its own records, in append order.
pub(crate) async fn partitions_are_separate_and_ordered(log: Arc<dyn Log>) {
    let topic = topic();
    log.ensure_topic(&topic, 4).await.unwrap();
    let mut records = Vec::new();
    for i in 0..40u32 {
        records.push((
            i % 4,
            message(&format!("p{}-{}", i % 4, i / 4), Some("k"), b"x"),
        ));
    }
    // Two appends, so order holds across calls too.
    log.append(&topic, &records[..20]).await.unwrap();
    log.append(&topic, &records[20..]).await.unwrap();
    for partition in 0..4u32 {
        let got = read_n(log.as_ref(), &topic, partition, 0, 10).await;
        let want: Vec<String> = (0..10).map(|n| format!("p{partition}-{n}")).collect();
        assert_eq!(ids(&got), want, "partition {partition}");
        assert_increasing(&got);
    }
}

/// A reader from a record's position starts at that record.
pub(crate) async fn reader_starts_at_a_position(log: Arc<dyn Log>) {
    let topic = topic();
    log.ensure_topic(&topic, 1).await.unwrap();
    let records: Vec<(u32, Message)> = (0..10)
        .map(|i| (0, message(&format!("m{i}"), None, b"x")))
        .collect();
    log.append(&topic, &records).await.unwrap();
    let all = read_n(log.as_ref(), &topic, 0, 0, 10).await;
    let from = all[6].position;
    let rest = read_n(log.as_ref(), &topic, 0, from, 4).await;
    assert_eq!(ids(&rest), ["m6", "m7", "m8", "m9"]);
    let past = all[9].position + 1;
    let mut reader = log.reader(&topic, 0, past).await.unwrap();
    assert!(
        reader
            .read(10, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty(),
        "nothing after the last"
    );
}

/// `end` is after every record appended so far, and a reader from it sees only later ones.
pub(crate) async fn end_is_after_every_appended_record(log: Arc<dyn Log>) {
    let topic = topic();
    log.ensure_topic(&topic, 2).await.unwrap();
    let empty_end = log.end(&topic, 0).await.unwrap();
    log.append(
        &topic,
        &[
            (0, message("before", None, b"x")),
            (1, message("other", None, b"x")),
        ],
    )
    .await
    .unwrap();
    let end = log.end(&topic, 0).await.unwrap();
    assert!(
        end > empty_end,
        "end moved past the appended record ({empty_end} then {end})"
    );
    let before = read_n(log.as_ref(), &topic, 0, empty_end, 1).await;
    assert!(before[0].position < end);
    log.append(&topic, &[(0, message("after", None, b"x"))])
        .await
        .unwrap();
    let got = read_n(log.as_ref(), &topic, 0, end, 1).await;
    assert_eq!(ids(&got), ["after"]);
}

/// A read with nothing to return waits about `wait`, then returns empty.
pub(crate) async fn read_waits_then_returns_empty(log: Arc<dyn Log>) {
    let topic = topic();
    log.ensure_topic(&topic, 1).await.unwrap();
    let mut reader = log.reader(&topic, 0, 0).await.unwrap();
    let started = Instant::now();
    let got = reader.read(10, Duration::from_millis(500)).await.unwrap();
    let waited = started.elapsed();
    assert!(got.is_empty());
    assert!(
        waited >= Duration::from_millis(400),
        "returned after {waited:?}, before the wait"
    );
    assert!(
        waited < Duration::from_secs(5),
        "returned after {waited:?}, long after the wait"
    );
}

/// A waiting read returns soon after an append, without waiting its whole `wait`.
pub(crate) async fn read_wakes_for_a_later_append(log: Arc<dyn Log>) {
    let topic = topic();
    log.ensure_topic(&topic, 1).await.unwrap();
    let mut reader = log.reader(&topic, 0, 0).await.unwrap();
    let appender = {
        let (log, topic) = (log.clone(), topic.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            log.append(&topic, &[(0, message("late", None, b"x"))])
                .await
                .unwrap();
        })
    };
    let started = Instant::now();
    let got = reader.read(10, Duration::from_secs(10)).await.unwrap();
    appender.await.unwrap();
    assert_eq!(ids(&got), ["late"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woke after {:?}",
        started.elapsed()
    );
}

/// Several processes may create one topic at once; all succeed and it works.
pub(crate) async fn ensure_topic_is_idempotent_under_races(log: Arc<dyn Log>) {
    let topic = topic();
    let mut racers = Vec::new();
    for _ in 0..4 {
        let (log, topic) = (log.clone(), topic.clone());
        racers.push(tokio::spawn(
            async move { log.ensure_topic(&topic, 3).await },
        ));
    }
    for racer in racers {
        racer.await.unwrap().unwrap();
    }
    log.ensure_topic(&topic, 3).await.unwrap();
    log.append(&topic, &[(2, message("m", None, b"x"))])
        .await
        .unwrap();
    assert_eq!(ids(&read_n(log.as_ref(), &topic, 2, 0, 1).await), ["m"]);
}

/// A large batch is appended whole and in order.
pub(crate) async fn many_records_in_one_append(log: Arc<dyn Log>) {
    let topic = topic();
    log.ensure_topic(&topic, 2).await.unwrap();
    let payload = vec![7u8; 4096];
    let records: Vec<(u32, Message)> = (0..2_000u32)
        .map(|i| {
            (
                i % 2,
                message(&format!("m{i:05}"), Some(&format!("k{}", i % 7)), &payload),
            )
        })
        .collect();
    log.append(&topic, &records).await.unwrap();
    for partition in 0..2u32 {
        let got = read_n(log.as_ref(), &topic, partition, 0, 1_000).await;
        let want: Vec<String> = (0..2_000u32)
            .filter(|i| i % 2 == partition)
            .map(|i| format!("m{i:05}"))
            .collect();
        assert_eq!(ids(&got), want);
        assert!(got.iter().all(|r| r.message.payload.len() == 4096));
    }
}

/// A deleted topic is gone with its records and its partition count: made again, with
/// another count, it is new and empty. Deleting is idempotent, also of a topic never made, and
/// refuses a bad name.
pub(crate) async fn a_deleted_topic_is_gone(log: Arc<dyn Log>) {
    let topic = topic();
    log.ensure_topic(&topic, 2).await.unwrap();
    let old: Vec<(u32, Message)> = (0..6u32)
        .map(|i| (i % 2, message(&format!("old{i}"), None, b"x")))
        .collect();
    log.append(&topic, &old).await.unwrap();
    assert_eq!(
        ids(&read_n(log.as_ref(), &topic, 1, 0, 3).await),
        ["old1", "old3", "old5"]
    );

    log.delete_topic(&topic).await.unwrap();
    log.delete_topic(&topic).await.unwrap();
    log.delete_topic(&self::topic()).await.unwrap();
    for bad in ["", "a/b", "has space"] {
        let outcome = log.delete_topic(bad).await;
        assert!(
            matches!(outcome, Err(BrokerError::Invalid(_))),
            "deleting {bad:?} gave {outcome:?}"
        );
    }

    log.ensure_topic(&topic, 3).await.unwrap();
    for partition in 0..3u32 {
        log.end(&topic, partition).await.unwrap();
    }
    let mut reader = log.reader(&topic, 1, 0).await.unwrap();
    let left = reader.read(10, Duration::from_millis(300)).await.unwrap();
    assert!(left.is_empty(), "records outlived their topic: {left:?}");
    log.append(
        &topic,
        &[
            (1, message("new1", None, b"y")),
            (2, message("new2", None, b"y")),
        ],
    )
    .await
    .unwrap();
    // From the start of each partition, only what came after the deletion.
    assert_eq!(ids(&read_from(reader.as_mut(), 1).await), ["new1"]);
    assert_eq!(ids(&read_n(log.as_ref(), &topic, 1, 0, 1).await), ["new1"]);
    assert_eq!(ids(&read_n(log.as_ref(), &topic, 2, 0, 1).await), ["new2"]);
    // Readers go first (see `Log::delete_topic`).
    drop(reader);
    log.delete_topic(&topic).await.unwrap();
}

/// The log answers a ping and names its kind.
pub(crate) async fn ping_answers(log: Arc<dyn Log>) {
    log.ping().await.unwrap();
    assert!(!log.kind().is_empty());
}

/// For a backend's own tests: a log on a port where nothing listens fails with
/// `Unavailable`, within `within`, whether connecting or at the first operation.
pub(crate) async fn assert_unreachable<F, Fut>(connect: F, within: Duration)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Arc<dyn Log>, BrokerError>>,
{
    let started = Instant::now();
    let outcome = tokio::time::timeout(within, async {
        match connect().await {
            Err(error) => Err(error),
            Ok(log) => log.ping().await,
        }
    })
    .await
    .expect("a dead broker is reported, not waited for forever");
    match outcome {
        Err(BrokerError::Unavailable(why)) => assert!(!why.is_empty()),
        other => panic!(
            "expected Unavailable, got {other:?} after {:?}",
            started.elapsed()
        ),
    }
}
