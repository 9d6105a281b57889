//! `limit`: what this machine can do without Herald, measured in the same run.
//!
//! - Single-row INSERT commits per second on the same database, with the same number of
//!   concurrent producers as `outbox-write` (the ceiling for one-event transactions).
//! - Raw publishes per second to the chosen broker ([`Broker::publish`] directly), in batches
//!   of 500 (the relay's batch size) — the ceiling for the relay, which also has to read and
//!   delete its rows. With a real broker, only this case runs: the INSERT limit does not
//!   depend on the broker, and the embedded runs measure it.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;
use herald_broker::{Broker, Message};
use herald_store::Store;
use tokio::sync::Mutex;

use super::relay::BATCH;
use super::{KEYS, Options, Progress, outcome, sample_event};
use crate::broker::unique_topic;
use crate::report::Outcome;
use crate::stats::Percentiles;
use crate::target::Target;

/// Runs both cases (with a real broker, only the raw publishes).
pub async fn run(options: &Options) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    if options.broker.is_embedded() {
        outcomes.push(inserts(options).await?);
    }
    outcomes.push(publishes(options).await?);
    Ok(outcomes)
}

async fn inserts(options: &Options) -> anyhow::Result<Outcome> {
    let target = Target::create(
        options.engine,
        &options.postgres_url,
        options.producers as u32 + 2,
    )
    .await?;
    let create = match target.store {
        Store::Postgres(_) => {
            "CREATE TABLE bench_raw (id BIGSERIAL PRIMARY KEY, payload BYTEA NOT NULL)"
        }
        Store::Sqlite(_) => {
            "CREATE TABLE bench_raw (id INTEGER PRIMARY KEY, payload BLOB NOT NULL)"
        }
    };
    match &target.store {
        Store::Postgres(pool) => sqlx::raw_sql(create).execute(pool).await.map(drop)?,
        Store::Sqlite(pool) => sqlx::raw_sql(create).execute(pool).await.map(drop)?,
    }
    let payload = serde_json::to_vec(&sample_event(0))?;
    let before = crate::process::usage();
    let deadline = Instant::now() + options.duration;
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut producers = tokio::task::JoinSet::new();
    for _ in 0..options.producers {
        let (store, payload, latencies) =
            (target.store.clone(), payload.clone(), latencies.clone());
        producers.spawn(async move {
            let mut mine = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                match &store {
                    Store::Postgres(pool) => {
                        sqlx::query("INSERT INTO bench_raw (payload) VALUES ($1)")
                            .bind(&payload)
                            .execute(pool)
                            .await
                            .map(drop)?;
                    }
                    Store::Sqlite(pool) => {
                        sqlx::query("INSERT INTO bench_raw (payload) VALUES (?1)")
                            .bind(&payload)
                            .execute(pool)
                            .await
                            .map(drop)?;
                    }
                }
                mine.push(started.elapsed());
            }
            latencies.lock().await.extend(mine);
            anyhow::Ok(())
        });
    }
    let started = Instant::now();
    while let Some(joined) = producers.join_next().await {
        joined.context("a producer panicked")??;
    }
    let elapsed = started.elapsed();
    let mut samples = std::mem::take(&mut *latencies.lock().await);
    let rows: i64 = match &target.store {
        Store::Postgres(pool) => {
            sqlx::query_scalar("SELECT count(*) FROM bench_raw")
                .fetch_one(pool)
                .await?
        }
        Store::Sqlite(pool) => {
            sqlx::query_scalar("SELECT count(*) FROM bench_raw")
                .fetch_one(pool)
                .await?
        }
    };
    anyhow::ensure!(
        rows as usize == samples.len(),
        "{rows} rows for {} inserts",
        samples.len()
    );
    let result = outcome(
        "limit",
        format!("single-row INSERT, {} producers", options.producers),
        options.engine,
        "-",
        samples.len() as f64 / elapsed.as_secs_f64(),
        "commits/s",
        Percentiles::of(&mut samples),
        before,
        format!("{rows} rows"),
        target.durability.clone(),
    );
    target.finish().await?;
    Ok(result)
}

async fn publishes(options: &Options) -> anyhow::Result<Outcome> {
    let target = Target::create(options.engine, &options.postgres_url, 4).await?;
    herald_store::migrate::migrate(&target.store, &[options.broker.migrations()]).await?;
    let (target, broker) = options.broker.open(target).await?;
    let topic = unique_topic("raw");
    let case = publishes_on(options, &target, broker.as_ref(), &topic);
    let result = options
        .broker
        .deleting_topic_after(broker.as_ref(), &topic, case)
        .await?;
    target.finish().await?;
    Ok(result)
}

/// Publishes to `topic` of `broker` for the run's duration.
async fn publishes_on(
    options: &Options,
    target: &Target,
    broker: &dyn Broker,
    topic: &str,
) -> anyhow::Result<Outcome> {
    let _group = options.broker.group_before(broker, topic).await?;
    let before = crate::process::usage();
    let deadline = Instant::now() + options.duration;
    let mut progress = Progress::new("raw publishes", None);
    let started = Instant::now();
    let mut published = 0usize;
    let mut latencies = Vec::new();
    while Instant::now() < deadline {
        let messages = (published..published + BATCH)
            .map(|i| {
                let event = sample_event(i);
                Ok(Message {
                    id: event.id.clone(),
                    key: Some(format!("key-{}", i % KEYS)),
                    headers: vec![("type".to_owned(), event.event_type.clone())],
                    payload: Bytes::from(serde_json::to_vec(&event)?),
                })
            })
            .collect::<anyhow::Result<Vec<Message>>>()?;
        let at = Instant::now();
        broker.publish(topic, &messages).await?;
        latencies.push(at.elapsed());
        published += BATCH;
        progress.update(published as u64);
    }
    let elapsed = started.elapsed();
    progress.finish();
    // A real broker's publishes do not touch the database.
    let settings = if options.broker.is_embedded() {
        format!(
            "one consumer group; latency per batch; {}",
            target.durability
        )
    } else {
        options.broker.settings("latency per batch")
    };
    Ok(outcome(
        "limit",
        format!("raw publish, batches of {BATCH}"),
        options.engine,
        broker.kind(),
        published as f64 / elapsed.as_secs_f64(),
        "messages/s",
        Percentiles::of(&mut latencies),
        before,
        format!("{published} messages confirmed"),
        settings,
    ))
}
