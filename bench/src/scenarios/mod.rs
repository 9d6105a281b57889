//! The scenarios `herald bench` runs.
//!
//! - [`outbox_write`]: producer commits per second, with one, 10 or 100 events per
//!   transaction and several concurrent producers.
//! - [`relay`]: how fast the relay drains a backlog, and commit→published latency at a fixed
//!   rate (open loop), on the embedded queue or a real broker.
//! - [`drain`]: a relay running as its own process drains a large backlog; its CPU and memory
//!   are measured alone.
//! - [`inbox`]: a consumer whose handler does one INSERT, with and without the inbox.
//! - [`deliver`]: signed webhook deliveries per second from the router to a local sink, and a
//!   plain HTTP client's rate against the same sink, with the same concurrency.
//! - [`soak`]: a long steady run, with and without a long-held transaction, sampling the
//!   size and dead tuples of every Herald table (PostgreSQL).
//! - [`limit`]: the raw limits of this machine in the same run — single-row INSERT commits per
//!   second on the same database, and raw publishes per second to the broker — so the Herald
//!   figures can be read as fractions of them.
//!
//! `relay`, `drain`, `inbox` and `limit` run on any broker; `outbox-write` and `deliver`
//! use no broker.

pub mod deliver;
pub mod drain;
pub mod inbox;
pub mod limit;
pub mod outbox_write;
pub mod relay;
pub mod soak;

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use herald_core::Event;

use crate::broker::BrokerChoice;
use crate::process::Usage;
use crate::report::Outcome;
use crate::target::Engine;

/// Settings shared by every scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// The database engine.
    pub engine: Engine,
    /// The PostgreSQL server (a fresh database is made on it).
    pub postgres_url: String,
    /// The broker.
    pub broker: BrokerChoice,
    /// How long each timed case runs.
    pub duration: Duration,
    /// The offered rate of latency cases, per second.
    pub rate: u32,
    /// Backlog size for the in-process relay case.
    pub events: usize,
    /// Backlog size for the `drain` scenario.
    pub drain_events: usize,
    /// Concurrent producers.
    pub producers: usize,
}

/// Paces an open-loop producer: the `n`th event starts at `n / rate` seconds after the
/// start, whatever the earlier ones are doing (so slow commits cannot hide latency), with at
/// most a set number in flight.
pub(crate) struct OpenLoop {
    /// When the first event was due.
    pub(crate) started: tokio::time::Instant,
    interval: Duration,
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
}

impl OpenLoop {
    /// Starts now, at `rate` per second, with at most `limit` events in flight.
    pub(crate) fn new(rate: u32, limit: usize) -> Self {
        Self {
            started: tokio::time::Instant::now(),
            interval: Duration::from_secs_f64(1.0 / f64::from(rate.max(1))),
            in_flight: std::sync::Arc::new(tokio::sync::Semaphore::new(limit)),
        }
    }

    /// Waits until event `n` is due and may start; the permit is its place in flight.
    pub(crate) async fn slot(&self, n: usize) -> anyhow::Result<tokio::sync::OwnedSemaphorePermit> {
        use anyhow::Context as _;
        tokio::time::sleep_until(self.started + self.interval * n as u32).await;
        self.in_flight
            .clone()
            .acquire_owned()
            .await
            .context("the limiter closed")
    }
}

/// A relay running in its own task until [`RunningRelay::stop`].
pub(crate) struct RunningRelay {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), herald_outbox::OutboxError>>,
}

impl RunningRelay {
    /// Starts `relay`.
    pub(crate) fn start(relay: std::sync::Arc<herald_outbox::Relay>) -> Self {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            relay
                .run(async {
                    let _ = stopped.await;
                })
                .await
        });
        Self {
            stop: Some(stop),
            task,
        }
    }

    /// Stops it after its round in progress, and returns how it ended.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.context("the relay panicked")??;
        Ok(())
    }
}

impl Drop for RunningRelay {
    /// A relay not stopped (the case failed) is aborted, so it does not outlive its case.
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Partition keys used by the scenarios.
pub const KEYS: usize = 100;

/// A small event like a real one: about 200 bytes of JSON data, keyed by `i % KEYS`.
pub fn sample_event(i: usize) -> Event {
    let data = serde_json::json!({
        "sequence": i,
        "customer": format!("cus_{:08}", i % 9973),
        "items": [{"sku": "sku-1", "quantity": 2}, {"sku": "sku-2", "quantity": 1}],
        "total": 42.5,
    });
    // The type, source and data above are always valid, so this cannot fail.
    Event::new("bench.order.placed", "/bench", &data)
        .map(|event| event.with_partition_key(format!("key-{}", i % KEYS)))
        .unwrap_or_else(|err| unreachable!("the sample event is valid: {err}"))
}

/// Checks that `delivered` (message id and key, in the order the broker took them) holds each
/// of `committed` exactly once and, per key, in the order of `committed`. Returns how many keys
/// were seen.
pub(crate) fn check_order<'a>(
    committed: &[String],
    delivered: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
) -> anyhow::Result<usize> {
    use anyhow::Context as _;
    let position: std::collections::HashMap<&str, usize> = committed
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let mut seen = vec![false; committed.len()];
    let mut last_per_key: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (id, key) in delivered {
        let index = *position
            .get(id)
            .with_context(|| format!("{id} was delivered but never committed"))?;
        anyhow::ensure!(!seen[index], "{id} was delivered twice");
        seen[index] = true;
        if let Some(key) = key
            && let Some(previous) = last_per_key.insert(key, index)
        {
            anyhow::ensure!(
                previous < index,
                "key {key}: {id} came before an event committed earlier"
            );
        }
    }
    let missing = seen.iter().filter(|s| !**s).count();
    anyhow::ensure!(
        missing == 0,
        "{missing} of {} committed events were not delivered",
        committed.len()
    );
    Ok(last_per_key.len())
}

/// Builds an outcome, filling CPU and memory from the usage since `before`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn outcome(
    scenario: &str,
    case: String,
    engine: Engine,
    broker: &str,
    value: f64,
    unit: &str,
    latency: Option<crate::stats::Percentiles>,
    before: Usage,
    checked: String,
    settings: String,
) -> Outcome {
    let after = crate::process::usage();
    Outcome {
        scenario: scenario.to_owned(),
        case,
        store: engine.name().to_owned(),
        broker: broker.to_owned(),
        value,
        unit: unit.to_owned(),
        latency,
        cpu_seconds: after.cpu.saturating_sub(before.cpu).as_secs_f64(),
        peak_rss_mib: after.peak_rss_bytes as f64 / (1024.0 * 1024.0),
        checked,
        settings,
    }
}

/// Shows progress on standard error: a line that rewrites itself on a terminal, a line every
/// few seconds otherwise.
#[derive(Debug)]
pub struct Progress {
    label: String,
    total: Option<u64>,
    started: Instant,
    last: Instant,
    terminal: bool,
}

impl Progress {
    /// Starts showing progress of `label`, out of `total` if known.
    pub fn new(label: impl Into<String>, total: Option<u64>) -> Self {
        let now = Instant::now();
        Self {
            label: label.into(),
            total,
            started: now,
            last: now,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// Reports `done` units so far (printed at most a few times a second).
    pub fn update(&mut self, done: u64) {
        let every = if self.terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(5)
        };
        if self.last.elapsed() < every {
            return;
        }
        self.last = Instant::now();
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(0.001);
        let of = self.total.map(|t| format!("/{t}")).unwrap_or_default();
        let line = format!(
            "{}: {done}{of} ({rate:.0}/s, {:.0} s)",
            self.label,
            self.started.elapsed().as_secs_f64()
        );
        if self.terminal {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }

    /// Ends the progress line.
    pub fn finish(self) {
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
    }
}
