//! `soak`: whether Herald's tables stay bounded over a long steady run, and what a long-held
//! transaction does to them (PostgreSQL only).
//!
//! Producers commit one event per transaction at `--rate` for `--duration`, open loop; the
//! relay publishes to the chosen broker (by default the embedded queue, in the same
//! database), and a consumer group (eight consumers) reads and acks everything. Every tenth
//! of the run, the size and dead tuples of each Herald table are sampled from
//! `pg_stat_user_tables` (the outbox's generations counted as one table). The run is made twice: once as it is, and
//! once with another session holding a `REPEATABLE READ` transaction open from start to
//! end, which keeps VACUUM from removing any row deleted meanwhile. Each case checks that
//! every committed event was consumed, once, before it reports.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use herald_broker::{Broker, SubscribeOptions};
use herald_outbox::{Relay, RelayOptions};
use herald_store::Store;
use sqlx::PgPool;

use super::outbox_write::commit;
use super::{Options, Progress, outcome, sample_event};
use crate::report::Outcome;
use crate::target::{Engine, Target};

/// Samples taken over a run.
const SAMPLES: u32 = 10;

/// Runs both cases.
pub async fn run(options: &Options) -> anyhow::Result<Vec<Outcome>> {
    anyhow::ensure!(
        options.engine == Engine::Postgres,
        "the soak scenario measures PostgreSQL's tables and dead tuples; run it with --store \
         postgres"
    );
    Ok(vec![
        case(options, false).await?,
        case(options, true).await?,
    ])
}

/// One table's figures at one moment.
#[derive(Debug, Clone)]
struct TableSample {
    name: String,
    bytes: i64,
    dead: i64,
}

async fn sample(pool: &PgPool) -> anyhow::Result<Vec<TableSample>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT regexp_replace(relname::text, '^herald_outbox_g[0-9]+$', 'herald_outbox') AS t, \
                sum(pg_total_relation_size(relid))::BIGINT, sum(n_dead_tup)::BIGINT \
         FROM pg_stat_user_tables WHERE relname LIKE 'herald\\_%' GROUP BY t ORDER BY t",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(name, bytes, dead)| TableSample { name, bytes, dead })
        .collect())
}

async fn case(options: &Options, hold: bool) -> anyhow::Result<Outcome> {
    let target = Target::create(Engine::Postgres, &options.postgres_url, 12).await?;
    if let Err(err) = herald_store::migrate::migrate(
        &target.store,
        &[&herald_outbox::MIGRATIONS, options.broker.migrations()],
    )
    .await
    {
        target.finish().await?;
        return Err(err.into());
    }
    let (target, broker) = options.broker.open(target).await?;
    let topic = crate::broker::unique_topic("soak");
    // Bounded even if the database grinds to a halt: the case fails, and its database (and
    // every session on it) is dropped.
    let limit = options.duration + Duration::from_secs(300);
    let run = options
        .broker
        .deleting_topic_after(broker.as_ref(), &topic, async {
            match tokio::time::timeout(limit, case_on(options, &target, &broker, &topic, hold))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(anyhow::anyhow!(
                    "the soak case did not finish within {limit:?}: Herald fell behind the \
                 offered rate and did not catch up"
                )),
            }
        });
    let result = run.await;
    target.finish().await?;
    result
}

async fn case_on(
    options: &Options,
    target: &Target,
    broker: &Arc<dyn Broker>,
    topic: &str,
    hold: bool,
) -> anyhow::Result<Outcome> {
    let Store::Postgres(pool) = &target.store else {
        anyhow::bail!("the soak scenario needs PostgreSQL");
    };
    // The consumers' group exists before anything is published, so it gets every message.
    let group = options.broker.group_before(broker.as_ref(), topic).await?;

    // The held transaction: a snapshot taken now and kept to the end.
    let mut held = None;
    if hold {
        let mut conn = pool.acquire().await?;
        sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *conn)
            .await?;
        sqlx::query("SELECT count(*) FROM herald_outbox")
            .execute(&mut *conn)
            .await?;
        held = Some(conn);
    }

    let relay = Arc::new(Relay::new(
        target.store.clone(),
        broker.clone(),
        RelayOptions {
            topic: topic.to_owned(),
            ..RelayOptions::default()
        },
    ));
    let relaying = super::RunningRelay::start(relay.clone());

    let before = crate::process::usage();
    let mut samples = vec![sample(pool).await?];
    let total = (u64::from(options.rate) * options.duration.as_secs()).max(1) as usize;
    let sample_every = (total / SAMPLES as usize).max(1);
    let mut producers = tokio::task::JoinSet::new();
    let mut committed = Vec::with_capacity(total);
    let consuming = tokio::spawn(consume(
        broker.clone(),
        topic.to_owned(),
        total,
        options.duration + Duration::from_secs(120),
    ));
    let label = if hold {
        "soak, a transaction held open"
    } else {
        "soak"
    };
    let mut progress = Progress::new(format!("{label} at {}/s", options.rate), Some(total as u64));
    let pace = super::OpenLoop::new(options.rate, 64);
    let waker = relay.waker();
    for n in 0..total {
        let permit = pace.slot(n).await?;
        let event = sample_event(n);
        committed.push(event.id.clone());
        let (store, waker) = (target.store.clone(), waker.clone());
        producers.spawn(async move {
            commit(&store, std::slice::from_ref(&event)).await?;
            waker.wake();
            drop(permit);
            anyhow::Ok(())
        });
        while let Some(done) = producers.try_join_next() {
            done??;
        }
        if (n + 1) % sample_every == 0 {
            samples.push(sample(pool).await?);
        }
        progress.update(n as u64 + 1);
    }
    while let Some(done) = producers.join_next().await {
        done??;
    }
    progress.finish();
    let (consumed, duplicates) = consuming.await.context("the consumer task failed")??;
    let elapsed = pace.started.elapsed();
    let last = sample(pool).await?;
    samples.push(last.clone());
    if let Some(mut conn) = held {
        sqlx::query("ROLLBACK").execute(&mut *conn).await?;
    }
    relaying.stop().await?;
    if let Some(mut group) = group {
        group.close().await;
    }
    anyhow::ensure!(
        committed.iter().all(|id| consumed.contains(id)),
        "a committed event was not consumed"
    );

    let result = outcome(
        "soak",
        format!(
            "{}, {} s at {}/s",
            if hold {
                "a transaction held open"
            } else {
                "no long transaction"
            },
            options.duration.as_secs(),
            options.rate
        ),
        Engine::Postgres,
        options.broker.name(),
        consumed.len() as f64 / elapsed.as_secs_f64(),
        "events/s",
        None,
        before,
        format!(
            "{}/{} consumed, {duplicates} more than once",
            consumed.len(),
            committed.len()
        ),
        options
            .broker
            .settings(&format!("{}; {}", growth(&samples), target.durability)),
    );
    Ok(result)
}

/// Consumers reading the run's group at once, as a consumer role would.
const CONSUMERS: usize = 8;

/// Reads and acks with [`CONSUMERS`] subscriptions until `total` distinct messages came, at
/// most `limit`; returns their ids and how many came more than once.
async fn consume(
    broker: Arc<dyn Broker>,
    topic: String,
    total: usize,
    limit: Duration,
) -> anyhow::Result<(HashSet<String>, usize)> {
    let give_up = Instant::now() + limit;
    let seen = Arc::new(std::sync::Mutex::new((
        HashSet::with_capacity(total),
        0usize,
    )));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONSUMERS {
        let (broker, seen, topic) = (broker.clone(), seen.clone(), topic.clone());
        workers.spawn(async move {
            let mut subscription = broker
                .subscribe(&topic, crate::broker::GROUP, SubscribeOptions::default())
                .await?;
            let done = |seen: &std::sync::Mutex<(HashSet<String>, usize)>| {
                seen.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .0
                    .len()
                    >= total
            };
            while !done(&seen) && Instant::now() < give_up {
                for delivery in subscription.receive(16, Duration::from_millis(200)).await? {
                    {
                        let mut seen = seen
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        if !seen.0.insert(delivery.message.id.clone()) {
                            seen.1 += 1;
                        }
                    }
                    delivery.ack().await?;
                }
            }
            subscription.close().await;
            anyhow::Ok(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    let (consumed, duplicates) = std::mem::take(
        &mut *seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    anyhow::ensure!(
        consumed.len() >= total,
        "only {} of {total} committed events were consumed within {limit:?}",
        consumed.len()
    );
    Ok((consumed, duplicates))
}

/// Each table that held anything, as `name first→peak→last KiB (dead first→peak→last)`.
fn growth(samples: &[Vec<TableSample>]) -> String {
    let Some(first) = samples.first() else {
        return String::new();
    };
    let mut parts = Vec::new();
    for table in first {
        let series: Vec<&TableSample> = samples
            .iter()
            .filter_map(|sample| sample.iter().find(|t| t.name == table.name))
            .collect();
        let peak_bytes = series.iter().map(|t| t.bytes).max().unwrap_or(0);
        let peak_dead = series.iter().map(|t| t.dead).max().unwrap_or(0);
        let last = series.last().copied().unwrap_or(table);
        if peak_dead == 0 && peak_bytes == table.bytes {
            continue;
        }
        parts.push(format!(
            "{} {}→{}→{} KiB (dead rows {}→{}→{})",
            table.name,
            table.bytes / 1024,
            peak_bytes / 1024,
            last.bytes / 1024,
            table.dead,
            peak_dead,
            last.dead
        ));
    }
    if parts.is_empty() {
        "no table grew".to_owned()
    } else {
        format!("first→peak→last: {}", parts.join(", "))
    }
}
