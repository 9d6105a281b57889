//! [`Connecting`]: a [`Log`] that connects when first used, and again after a failed attempt,
//! so a broker that is down when Herald starts does not stop Herald from starting. Until the
//! broker answers, every operation (and so readiness) fails with
//! [`BrokerError::Unavailable`], and callers retry as they do for any broker failure.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use super::{Log, PartitionReader, Position};
use crate::{BoxFuture, BrokerError, Message};

/// Makes a connected log.
pub type Connect =
    Box<dyn Fn() -> BoxFuture<'static, Result<Arc<dyn Log>, BrokerError>> + Send + Sync>;

/// How long after a failed attempt the next one waits; operations meanwhile fail at once
/// with the same error, so a burst of callers does not hammer a broker that is down.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// See the docs of the `log::connecting` module.
pub struct Connecting {
    kind: &'static str,
    connect: Connect,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    log: Option<Arc<dyn Log>>,
    failed: Option<(Instant, String)>,
}

impl fmt::Debug for Connecting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connecting")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Connecting {
    /// A log of `kind` that `connect` makes when first needed.
    pub fn new(kind: &'static str, connect: Connect) -> Self {
        Self {
            kind,
            connect,
            state: Mutex::new(State::default()),
        }
    }

    async fn log(&self) -> Result<Arc<dyn Log>, BrokerError> {
        let mut state = self.state.lock().await;
        if let Some(log) = &state.log {
            return Ok(log.clone());
        }
        if let Some((at, why)) = &state.failed
            && at.elapsed() < RETRY_AFTER
        {
            return Err(BrokerError::Unavailable(why.clone()));
        }
        match (self.connect)().await {
            Ok(log) => {
                if state.failed.take().is_some() {
                    tracing::info!(broker = self.kind, "connected to the broker");
                }
                state.log = Some(log.clone());
                Ok(log)
            }
            Err(error) => {
                let why = match &error {
                    // Kept without the variant's own prefix, which the retried error adds.
                    BrokerError::Unavailable(why) => why.clone(),
                    other => herald_core::error_chain(other),
                };
                if state.failed.is_none() {
                    tracing::warn!(broker = self.kind, error = %why,
                        "cannot connect to the broker; retrying while Herald runs");
                }
                state.failed = Some((Instant::now(), why));
                Err(error)
            }
        }
    }
}

impl Log for Connecting {
    fn kind(&self) -> &'static str {
        self.kind
    }

    fn ensure_topic<'a>(
        &'a self,
        topic: &'a str,
        partitions: u32,
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move { self.log().await?.ensure_topic(topic, partitions).await })
    }

    fn append<'a>(
        &'a self,
        topic: &'a str,
        records: &'a [(u32, Message)],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move { self.log().await?.append(topic, records).await })
    }

    fn end<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
    ) -> BoxFuture<'a, Result<Position, BrokerError>> {
        Box::pin(async move { self.log().await?.end(topic, partition).await })
    }

    fn reader<'a>(
        &'a self,
        topic: &'a str,
        partition: u32,
        from: Position,
    ) -> BoxFuture<'a, Result<Box<dyn PartitionReader>, BrokerError>> {
        Box::pin(async move { self.log().await?.reader(topic, partition, from).await })
    }

    fn delete_topic<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move { self.log().await?.delete_topic(topic).await })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        Box::pin(async move { self.log().await?.ping().await })
    }
}
