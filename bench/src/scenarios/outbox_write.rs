//! `outbox-write`: how many producer transactions per second commit events to the outbox.
//!
//! `producers` tasks loop for the duration: begin, write a batch of 1, 10 or 100 events,
//! commit. Each commit's latency is recorded. Afterwards the outbox must hold exactly the
//! events that were committed.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use herald_store::Store;
use tokio::sync::Mutex;

use super::{Options, Progress, outcome, sample_event};
use crate::report::Outcome;
use crate::stats::Percentiles;
use crate::target::Target;

/// Runs the scenario for batches of 1, 10 and 100 events.
pub async fn run(options: &Options) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    for batch in [1usize, 10, 100] {
        let target = Target::create(
            options.engine,
            &options.postgres_url,
            options.producers as u32 + 2,
        )
        .await?;
        herald_outbox::migrate(&target.store).await?;
        outcomes.push(case(options, &target, batch).await?);
        target.finish().await?;
    }
    Ok(outcomes)
}

async fn case(options: &Options, target: &Target, batch: usize) -> anyhow::Result<Outcome> {
    let before = crate::process::usage();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + options.duration;
    let mut producers = tokio::task::JoinSet::new();
    for producer in 0..options.producers {
        let store = target.store.clone();
        let latencies = latencies.clone();
        producers.spawn(async move {
            let mut committed = 0usize;
            let mut mine = Vec::new();
            while Instant::now() < deadline {
                let events: Vec<_> = (0..batch)
                    .map(|i| sample_event(producer * 1_000_000 + committed + i))
                    .collect();
                let started = Instant::now();
                commit(&store, &events).await?;
                mine.push(started.elapsed());
                committed += batch;
            }
            latencies.lock().await.extend(mine);
            anyhow::Ok(committed)
        });
    }
    let mut progress = Progress::new(format!("outbox-write batch={batch}"), None);
    let started = Instant::now();
    let mut written = 0usize;
    while let Some(joined) = producers.join_next().await {
        written += joined.context("a producer panicked")??;
        progress.update(written as u64);
    }
    let elapsed = started.elapsed();
    progress.finish();

    let rows = count_outbox(&target.store).await?;
    anyhow::ensure!(
        rows == written as i64,
        "the outbox holds {rows} rows, but {written} events were committed"
    );
    let mut samples = std::mem::take(&mut *latencies.lock().await);
    let commits = samples.len();
    Ok(outcome(
        "outbox-write",
        format!("{batch} per tx, {} producers", options.producers),
        options.engine,
        "-",
        commits as f64 / elapsed.as_secs_f64(),
        "commits/s",
        Percentiles::of(&mut samples),
        before,
        format!(
            "{rows} rows = {written} committed events ({:.0} events/s)",
            written as f64 / elapsed.as_secs_f64()
        ),
        target.durability.clone(),
    ))
}

pub(crate) async fn commit(store: &Store, events: &[herald_core::Event]) -> anyhow::Result<()> {
    match store {
        Store::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            herald_outbox::write(&mut *tx, events).await?;
            tx.commit().await?;
        }
        Store::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            herald_outbox::write(&mut *tx, events).await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

pub(crate) async fn count_outbox(store: &Store) -> anyhow::Result<i64> {
    let sql = "SELECT count(*) FROM herald_outbox";
    Ok(match store {
        Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        Store::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
    })
}

/// Writes `events` sample events in transactions of `chunk`, showing progress (not timed);
/// returns their ids in write order.
pub(crate) async fn prefill(
    store: &Store,
    events: usize,
    chunk: usize,
) -> anyhow::Result<Vec<String>> {
    let mut progress = Progress::new("writing the backlog", Some(events as u64));
    let mut ids = Vec::with_capacity(events);
    while ids.len() < events {
        let from = ids.len();
        let batch: Vec<_> = (from..events.min(from + chunk)).map(sample_event).collect();
        commit(store, &batch).await?;
        ids.extend(batch.into_iter().map(|event| event.id));
        progress.update(ids.len() as u64);
    }
    progress.finish();
    Ok(ids)
}
