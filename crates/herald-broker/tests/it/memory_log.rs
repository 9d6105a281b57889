//! A [`Log`] in this process's memory, for testing [`LogBroker`]'s consumer groups apart from
//! any real broker: it passes the log contract itself (`memory_log` below), and runs the
//! broker conformance suite on PostgreSQL in seconds. It is a test fixture, not a backend.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_broker::log::{Log, PartitionReader, Position, Record};
use herald_broker::{BoxFuture, BrokerError, Message};
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct MemoryLog {
    partitions: Mutex<HashMap<(String, u32), Vec<Message>>>,
    topics: Mutex<HashMap<String, u32>>,
    appended: Notify,
}

impl Log for MemoryLog {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn ensure_topic<'a>(
        &'a self,
        topic: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut topics = self.topics.lock().unwrap();
            match topics.get(topic) {
                Some(n) if *n != partitions => {
                    Err(BrokerError::Invalid(format!("{topic} has {n} partitions")))
                }
                _ => {
                    topics.insert(topic.to_owned(), partitions);
                    Ok(())
                }
            }
        })
    }

    fn append<'a>(
        &'a self,
        topic: &'a str,
        records: &'a [(u32, Message)],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            let mut partitions = self.partitions.lock().unwrap();
            for (part, message) in records {
                partitions
                    .entry((topic.to_owned(), *part))
                    .or_default()
                    .push(message.clone());
            }
            drop(partitions);
            self.appended.notify_waiters();
            Ok(())
        })
    }

    fn end<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
    ) -> BoxFuture<'a, Result<Position, BrokerError>> {
        Box::pin(async move {
            let partitions = self.partitions.lock().unwrap();
            Ok(partitions
                .get(&(topic.to_owned(), partition))
                .map_or(0, Vec::len) as Position)
        })
    }

    fn reader<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        from: Position,
    ) -> BoxFuture<'a, Result<Box<dyn PartitionReader>, BrokerError>> {
        Box::pin(async move {
            Ok(Box::new(MemoryReader {
                log: LOG.clone(),
                topic: topic.to_owned(),
                partition,
                next: from,
            }) as Box<dyn PartitionReader>)
        })
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            herald_broker::log::check_topic(topic)?;
            self.topics.lock().unwrap().remove(topic);
            self.partitions
                .lock()
                .unwrap()
                .retain(|(name, _), _| name != topic);
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async { Ok(()) })
    }
}

/// The one in-memory log of this test process (readers reach it from here).
static LOG: std::sync::LazyLock<Arc<MemoryLog>> = std::sync::LazyLock::new(Arc::default);

#[derive(Debug)]
struct MemoryReader {
    log: Arc<MemoryLog>,
    topic: String,
    partition: u32,
    next: Position,
}

impl PartitionReader for MemoryReader {
    fn read(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> BoxFuture<'_, Result<Vec<Record>, BrokerError>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let appended = self.log.appended.notified();
                let got: Vec<Record> = {
                    let partitions = self.log.partitions.lock().unwrap();
                    let all = partitions.get(&(self.topic.clone(), self.partition));
                    all.into_iter()
                        .flatten()
                        .enumerate()
                        .skip(usize::try_from(self.next).unwrap())
                        .take(max)
                        .map(|(i, message)| Record {
                            position: i as Position,
                            message: message.clone(),
                        })
                        .collect()
                };
                if let Some(last) = got.last() {
                    self.next = last.position + 1;
                    return Ok(got);
                }
                if tokio::time::timeout_at(deadline, appended).await.is_err() {
                    return Ok(Vec::new());
                }
            }
        })
    }
}

/// The one in-memory log of this test process.
pub(crate) async fn log() -> Arc<dyn Log> {
    LOG.clone()
}
