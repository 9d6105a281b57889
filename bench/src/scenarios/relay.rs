//! `relay`: the outbox relay's throughput on a backlog, and its commit→published latency at a
//! fixed offered rate.
//!
//! The relay runs in this process against the chosen broker: the embedded queue on the same
//! database, or a real broker. A thin wrapper around the broker records when each publish was
//! confirmed and in what order, so the scenario can check that every committed event was
//! published and that each key's events were published in commit order, and can time
//! commit→confirm exactly. On a real broker, the messages are then also read back through a
//! consumer group (not timed) and checked the same way: each exactly once, and each key's in
//! commit order.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use herald_broker::{BoxFuture, Broker, BrokerError, Message, SubscribeOptions, Subscription};
use herald_outbox::{Relay, RelayOptions};

use super::outbox_write::{commit, count_outbox, prefill};
use super::{KEYS, Options, Progress, outcome, sample_event};
use crate::broker::{read_back, unique_topic};
use crate::report::Outcome;
use crate::stats::Percentiles;
use crate::target::Target;

/// The relay's batch size, and so the batch size of the raw publishes of `limit`.
pub const BATCH: usize = 500;

/// Records every confirmed publish: the message id, its key and when it was confirmed.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn Broker>,
    confirmed: Mutex<Vec<(String, Option<String>, Instant)>>,
}

impl Broker for Recording {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn publish<'a>(
        &'a self,
        topic: &'a str,
        messages: &'a [Message],
    ) -> BoxFuture<'a, Result<(), BrokerError>> {
        Box::pin(async move {
            self.inner.publish(topic, messages).await?;
            let now = Instant::now();
            let mut confirmed = self
                .confirmed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            confirmed.extend(messages.iter().map(|m| (m.id.clone(), m.key.clone(), now)));
            Ok(())
        })
    }

    fn subscribe<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<Box<dyn Subscription>, BrokerError>> {
        self.inner.subscribe(topic, group, options)
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.ping()
    }
}

impl Recording {
    fn take(&self) -> Vec<(String, Option<String>, Instant)> {
        std::mem::take(
            &mut *self
                .confirmed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// One case's world: a fresh database with the outbox, the broker on it, a topic of its own,
/// and the recording wrapper the relay publishes through.
struct Setup {
    target: Target,
    broker: Arc<Recording>,
    topic: String,
}

async fn setup(options: &Options, connections: u32) -> anyhow::Result<Setup> {
    let target = Target::create(options.engine, &options.postgres_url, connections).await?;
    herald_store::migrate::migrate(
        &target.store,
        &[&herald_outbox::MIGRATIONS, options.broker.migrations()],
    )
    .await?;
    let (target, inner) = options.broker.open(target).await?;
    let broker = Arc::new(Recording {
        inner,
        confirmed: Mutex::new(Vec::new()),
    });
    Ok(Setup {
        target,
        broker,
        topic: unique_topic("relay"),
    })
}

impl Setup {
    /// Joins the checking group before the case publishes (see `group_before`); the
    /// subscription, if any, is held through the case.
    async fn group_before(
        &self,
        options: &Options,
    ) -> anyhow::Result<Option<Box<dyn Subscription>>> {
        options
            .broker
            .group_before(self.broker.inner.as_ref(), &self.topic)
            .await
    }

    /// Runs `case` on this setup, then deletes the topic from a real broker whatever the
    /// outcome (see `deleting_topic_after`).
    async fn deleting_topic_after(
        &self,
        options: &Options,
        case: impl Future<Output = anyhow::Result<Outcome>>,
    ) -> anyhow::Result<Outcome> {
        options
            .broker
            .deleting_topic_after(self.broker.inner.as_ref(), &self.topic, case)
            .await
    }
}

fn relay_options(topic: &str) -> RelayOptions {
    RelayOptions {
        topic: topic.to_owned(),
        batch_size: BATCH,
        ..RelayOptions::default()
    }
}

/// Checks that `published` holds each of `committed` exactly once and, per key, in commit
/// order. Returns a description of what was checked.
fn check(
    committed: &[String],
    published: &[(String, Option<String>, Instant)],
) -> anyhow::Result<String> {
    let keys = super::check_order(
        committed,
        published
            .iter()
            .map(|(id, key, _)| (id.as_str(), key.as_deref())),
    )?;
    Ok(format!(
        "{}/{} published once each, order kept on {keys} keys",
        published.len(),
        committed.len()
    ))
}

/// On a real broker, reads the topic back through a consumer group and checks that it holds
/// each of `committed` exactly once and, with `ordered`, each key's in the order of
/// `committed`. Returns what was checked, to add to the description (nothing on the
/// embedded queue, whose table the publishes went to).
async fn check_read_back(
    options: &Options,
    setup: &Setup,
    committed: &[String],
    ordered: bool,
) -> anyhow::Result<String> {
    if options.broker.is_embedded() {
        return Ok(String::new());
    }
    let kind = options.broker.name();
    let received = read_back(setup.broker.inner.as_ref(), &setup.topic, committed.len()).await?;
    let ids = received.iter().map(|m| (m.id.as_str(), m.key.as_deref()));
    let context = || format!("reading the {kind} topic back through a consumer group");
    if ordered {
        let keys = super::check_order(committed, ids).with_context(context)?;
        Ok(format!(
            "; {}/{} read back once each through a consumer group, order kept on {keys} keys",
            received.len(),
            committed.len()
        ))
    } else {
        check_set(committed, ids.map(|(id, _)| id)).with_context(context)?;
        Ok(format!(
            "; {}/{} read back once each through a consumer group",
            received.len(),
            committed.len()
        ))
    }
}

/// Runs both cases.
pub async fn run(options: &Options) -> anyhow::Result<Vec<Outcome>> {
    Ok(vec![throughput(options).await?, latency(options).await?])
}

async fn throughput(options: &Options) -> anyhow::Result<Outcome> {
    let setup = setup(options, 8).await?;
    let result = setup
        .deleting_topic_after(options, throughput_on(options, &setup))
        .await?;
    setup.target.finish().await?;
    Ok(result)
}

async fn throughput_on(options: &Options, setup: &Setup) -> anyhow::Result<Outcome> {
    let _group = setup.group_before(options).await?;
    let (target, broker) = (&setup.target, &setup.broker);
    let committed = prefill(&target.store, options.events, 1000).await?;
    let relay = Relay::new(
        target.store.clone(),
        broker.clone(),
        relay_options(&setup.topic),
    );

    let before = crate::process::usage();
    let started = Instant::now();
    let give_up = started + Duration::from_secs(600);
    let mut progress = Progress::new("relaying the backlog", Some(committed.len() as u64));
    let mut relayed = 0usize;
    loop {
        let n = relay.relay_once().await?;
        relayed += n;
        progress.update(relayed as u64);
        if n == 0 && count_outbox(&target.store).await? == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < give_up,
            "the relay did not drain {} events within 600 s",
            committed.len()
        );
    }
    let elapsed = started.elapsed();
    progress.finish();
    let checked = check(&committed, &broker.take())?;
    let mut result = outcome(
        "relay",
        format!("drain {} events", committed.len()),
        options.engine,
        options.broker.name(),
        committed.len() as f64 / elapsed.as_secs_f64(),
        "events/s",
        None,
        before,
        checked,
        options.broker.settings(&format!(
            "batch {BATCH}, {KEYS} keys; {}",
            target.durability
        )),
    );
    // After the outcome took its CPU and memory figures: reading back is not measured.
    let read_back = check_read_back(options, setup, &committed, true).await?;
    result.checked.push_str(&read_back);
    Ok(result)
}

async fn latency(options: &Options) -> anyhow::Result<Outcome> {
    let setup = setup(options, 32).await?;
    let result = setup
        .deleting_topic_after(options, latency_on(options, &setup))
        .await?;
    setup.target.finish().await?;
    Ok(result)
}

async fn latency_on(options: &Options, setup: &Setup) -> anyhow::Result<Outcome> {
    let _group = setup.group_before(options).await?;
    let (target, broker) = (&setup.target, &setup.broker);
    let relay = Arc::new(Relay::new(
        target.store.clone(),
        broker.clone(),
        relay_options(&setup.topic),
    ));
    let waker = relay.waker();
    let running = super::RunningRelay::start(relay.clone());

    let before = crate::process::usage();
    let total = (u64::from(options.rate) * options.duration.as_secs()).max(1) as usize;
    let commits: Arc<Mutex<Vec<(String, Instant)>>> =
        Arc::new(Mutex::new(Vec::with_capacity(total)));
    let mut producers = tokio::task::JoinSet::new();
    let mut progress = Progress::new(
        format!("producing at {}/s", options.rate),
        Some(total as u64),
    );
    let pace = super::OpenLoop::new(options.rate, 256);
    for n in 0..total {
        // Open loop: each event starts on its own schedule, not after the previous one.
        let permit = pace.slot(n).await?;
        let (store, commits, waker) = (target.store.clone(), commits.clone(), waker.clone());
        producers.spawn(async move {
            let event = sample_event(n);
            let id = event.id.clone();
            commit(&store, std::slice::from_ref(&event)).await?;
            let at = Instant::now();
            waker.wake();
            commits
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((id, at));
            drop(permit);
            anyhow::Ok(())
        });
        progress.update(n as u64 + 1);
    }
    while let Some(joined) = producers.join_next().await {
        joined.context("a producer panicked")??;
    }
    let offered = total as f64 / pace.started.elapsed().as_secs_f64();
    progress.finish();

    // Wait for the relay to publish the last of them.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_outbox(&target.store).await? > 0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the relay did not catch up within 60 s after the load stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    running.stop().await?;

    let mut commits = std::mem::take(
        &mut *commits
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let published = broker.take();
    let confirmed_at: HashMap<&str, Instant> = published
        .iter()
        .map(|(id, _, at)| (id.as_str(), *at))
        .collect();
    let mut samples = Vec::with_capacity(commits.len());
    for (id, committed_at) in &commits {
        let at = confirmed_at
            .get(id.as_str())
            .with_context(|| format!("{id} was committed but not published"))?;
        samples.push(at.saturating_duration_since(*committed_at));
    }
    // Order check: commit order is the order the producers' commits returned.
    commits.sort_by_key(|(_, at)| *at);
    let in_commit_order: Vec<String> = commits.into_iter().map(|(id, _)| id).collect();
    check_set(
        &in_commit_order,
        published.iter().map(|(id, _, _)| id.as_str()),
    )?;
    let checked = format!(
        "{}/{} published once each",
        published.len(),
        in_commit_order.len()
    );
    let mut result = outcome(
        "relay",
        format!("latency at {}/s", options.rate),
        options.engine,
        options.broker.name(),
        offered,
        "events/s offered",
        Percentiles::of(&mut samples),
        before,
        checked,
        options.broker.settings(&format!(
            "one event per transaction, commit→publish confirmed; {}",
            target.durability
        )),
    );
    let read_back = check_read_back(options, setup, &in_commit_order, false).await?;
    result.checked.push_str(&read_back);
    Ok(result)
}

/// Like [`check`] without the order part: concurrent single-event transactions of one key
/// have no defined commit order between them.
fn check_set<'a>(
    committed: &[String],
    published: impl IntoIterator<Item = &'a str>,
) -> anyhow::Result<()> {
    let mut counts: HashMap<&str, usize> = committed.iter().map(|id| (id.as_str(), 0)).collect();
    for id in published {
        *counts
            .get_mut(id)
            .with_context(|| format!("{id} was published but never committed"))? += 1;
    }
    let missing = counts.values().filter(|n| **n == 0).count();
    let twice = counts.values().filter(|n| **n > 1).count();
    anyhow::ensure!(
        missing == 0,
        "{missing} committed events were not published"
    );
    anyhow::ensure!(twice == 0, "{twice} events were published more than once");
    Ok(())
}
