//! A [`Log`] for tests on the shared servers that cleans up after itself: it records the
//! topics it creates and deletes them when dropped, so test runs do not pile streams up on
//! the brokers `scripts/test` keeps running.

use std::sync::{Arc, Mutex};

use herald_broker::log::{Log, PartitionReader, Position};
use herald_broker::{BoxFuture, BrokerError, Message};

/// Opens another log on the same server and names, for the deletes: the wrapped log's
/// connection belongs to the test's runtime, which is ending when the wrapper drops.
pub(crate) type Reopen =
    Box<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn Log>, BrokerError>> + Send + Sync>;

/// See the module docs. It derefs to the wrapped log, for what only that backend offers.
pub(crate) struct Tidy<L: Log> {
    log: L,
    reopen: Reopen,
    topics: Mutex<Vec<String>>,
}

impl<L: Log> std::ops::Deref for Tidy<L> {
    type Target = L;

    fn deref(&self) -> &L {
        &self.log
    }
}

impl<L: Log> std::fmt::Debug for Tidy<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tidy").field("log", &self.log).finish()
    }
}

impl<L: Log> Tidy<L> {
    pub(crate) fn new(log: L, reopen: Reopen) -> Self {
        Self {
            log,
            reopen,
            topics: Mutex::new(Vec::new()),
        }
    }
}

impl<L: Log> Log for Tidy<L> {
    fn kind(&self) -> &'static str {
        self.log.kind()
    }

    fn ensure_topic<'a>(
        &'a self,
        topic: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.log.ensure_topic(topic, partitions).await?;
            // Only a topic this log made or agreed with is its to delete.
            let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
            if !topics.iter().any(|t| t == topic) {
                topics.push(topic.to_owned());
            }
            Ok(())
        })
    }

    fn append<'a>(
        &'a self,
        topic: &'a str,
        records: &'a [(u32, Message)],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.log.append(topic, records)
    }

    fn end<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
    ) -> BoxFuture<'a, Result<Position, BrokerError>> {
        self.log.end(topic, partition)
    }

    fn reader<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        from: Position,
    ) -> BoxFuture<'a, Result<Box<dyn PartitionReader>, BrokerError>> {
        self.log.reader(topic, partition, from)
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        self.log.delete_topic(topic)
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.log.ping()
    }
}

impl<L: Log> Drop for Tidy<L> {
    fn drop(&mut self) {
        let topics = std::mem::take(&mut *self.topics.lock().unwrap_or_else(|e| e.into_inner()));
        if topics.is_empty() {
            return;
        }
        // Drop runs outside async code: delete on a new connection, in a small runtime on a
        // helper thread.
        let reopened = (self.reopen)();
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|err| err.to_string())?;
            runtime.block_on(async {
                let log = reopened.await.map_err(|err| err.to_string())?;
                for topic in &topics {
                    log.delete_topic(topic)
                        .await
                        .map_err(|err| format!("{topic}: {err}"))?;
                }
                Ok::<(), String>(())
            })
        })
        .join();
        match deleted {
            Ok(Ok(())) => {}
            Ok(Err(why)) => eprintln!("note: could not delete the test's topics: {why}"),
            Err(_) => eprintln!("note: deleting the test's topics panicked"),
        }
    }
}
