//! `inbox`: what the inbox adds to a consumer whose handler does one INSERT.
//!
//! The same messages are consumed twice, from the embedded queue on the same database, with
//! the same concurrency: once by a plain consumer loop (receive, decode, one INSERT in a
//! transaction, commit, ack) and once by `herald_inbox::Consumer` running a handler that does
//! the same INSERT (plus, inside the same transaction, the inbox record). The INSERT's table
//! has the event id as its primary key, so each run also proves every message had exactly one
//! effect.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use herald_broker::{BoxFuture, Broker, Message, SubscribeOptions};
use herald_core::Event;
use herald_inbox::{Consumer, ConsumerOptions, Handler, HandlerError, Tx};
use herald_store::Store;

use super::{KEYS, Options, Progress, outcome, sample_event};
use crate::broker::unique_topic;
use crate::report::Outcome;
use crate::target::Target;

const GROUP: &str = "bench";
const CONCURRENCY: usize = 8;
/// The most messages a case consumes.
const MAX_MESSAGES: usize = 20_000;

const INSERT_PG: &str = "INSERT INTO bench_effects (event_id, data) VALUES ($1, $2)";
const INSERT_SQLITE: &str = "INSERT INTO bench_effects (event_id, data) VALUES (?1, ?2)";

/// Runs both cases; the second reports the inbox's added cost against the first.
pub async fn run(options: &Options) -> anyhow::Result<Vec<Outcome>> {
    let messages = options.events.min(MAX_MESSAGES);
    let mut plain = case(options, messages, false).await?;
    let mut with_inbox = case(options, messages, true).await?;
    let added = plain.value / with_inbox.value - 1.0;
    with_inbox.settings = format!(
        "the inbox adds {:.0}% to the cost per event (goal ≤ 20%); {}",
        added * 100.0,
        with_inbox.settings
    );
    plain.settings = format!("baseline for the inbox case; {}", plain.settings);
    Ok(vec![plain, with_inbox])
}

/// The handler both runs use: one INSERT of the event id and its data.
#[derive(Debug)]
struct InsertOne;

impl Handler for InsertOne {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        tx: Tx<'a>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let data = event
                .data
                .as_ref()
                .map(|d| d.get().to_owned())
                .unwrap_or_default();
            match tx {
                Tx::Postgres(conn) => sqlx::query(INSERT_PG)
                    .bind(&event.id)
                    .bind(data)
                    .execute(conn)
                    .await
                    .map(drop)?,
                Tx::Sqlite(conn) => sqlx::query(INSERT_SQLITE)
                    .bind(&event.id)
                    .bind(data)
                    .execute(conn)
                    .await
                    .map(drop)?,
            }
            Ok(())
        })
    }
}

async fn effects(store: &Store) -> anyhow::Result<i64> {
    let sql = "SELECT count(*) FROM bench_effects";
    Ok(match store {
        Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
        Store::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await?,
    })
}

async fn case(options: &Options, messages: usize, inbox: bool) -> anyhow::Result<Outcome> {
    let target = Target::create(
        options.engine,
        &options.postgres_url,
        CONCURRENCY as u32 + 4,
    )
    .await?;
    herald_store::migrate::migrate(
        &target.store,
        &[options.broker.migrations(), &herald_inbox::MIGRATIONS],
    )
    .await?;
    let create = "CREATE TABLE bench_effects (event_id TEXT PRIMARY KEY, data TEXT NOT NULL)";
    match &target.store {
        Store::Postgres(pool) => sqlx::raw_sql(create).execute(pool).await.map(drop)?,
        Store::Sqlite(pool) => sqlx::raw_sql(create).execute(pool).await.map(drop)?,
    }
    let (target, broker) = options.broker.open(target).await?;
    let topic = unique_topic("inbox");
    let result = options
        .broker
        .deleting_topic_after(
            broker.as_ref(),
            &topic,
            consume(options, &target, &broker, &topic, messages, inbox),
        )
        .await;
    target.finish().await?;
    result
}

/// Publishes `messages` to `topic` and consumes them once, with or without the inbox.
async fn consume(
    options: &Options,
    target: &Target,
    broker: &Arc<dyn Broker>,
    topic: &str,
    messages: usize,
    inbox: bool,
) -> anyhow::Result<Outcome> {
    // The group must exist before the messages are published.
    let mut subscription = broker
        .subscribe(topic, GROUP, SubscribeOptions::default())
        .await?;
    let mut published = 0;
    while published < messages {
        let batch: Vec<Message> = (published..messages.min(published + 500))
            .map(|i| {
                let event = sample_event(i);
                Message {
                    id: event.id.clone(),
                    key: Some(format!("key-{}", i % KEYS)),
                    headers: Vec::new(),
                    payload: Bytes::from(serde_json::to_vec(&event).unwrap_or_default()),
                }
            })
            .collect();
        broker.publish(topic, &batch).await?;
        published += batch.len();
    }

    let before = crate::process::usage();
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = tokio::task::JoinSet::new();
    subscription.close().await;
    drop(subscription);
    if inbox {
        let mut consumer_options = ConsumerOptions::new(GROUP, topic);
        consumer_options.concurrency = CONCURRENCY;
        consumer_options.receive_wait = Duration::from_millis(200);
        let consumer = Consumer::new(
            target.store.clone(),
            broker.clone(),
            consumer_options,
            InsertOne,
        )
        .map_err(|err| anyhow::anyhow!("{err}"))?;
        let stop = stop.clone();
        workers.spawn(async move {
            consumer
                .run(async move {
                    while !stop.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await
                .context("the consumer failed")
        });
    } else {
        for _ in 0..CONCURRENCY {
            let (broker, store, stop) = (broker.clone(), target.store.clone(), stop.clone());
            let topic = topic.to_owned();
            workers.spawn(async move {
                let mut subscription = broker
                    .subscribe(&topic, GROUP, SubscribeOptions::default())
                    .await?;
                while !stop.load(Ordering::Relaxed) {
                    for delivery in subscription.receive(16, Duration::from_millis(200)).await? {
                        let payload = std::str::from_utf8(&delivery.message.payload)?;
                        let event = Event::parse(payload)
                            .map_err(|e| anyhow::anyhow!("undecodable event: {e:?}"))?;
                        let data = event
                            .data
                            .as_ref()
                            .map(|d| d.get().to_owned())
                            .unwrap_or_default();
                        match &store {
                            Store::Postgres(pool) => {
                                let mut tx = pool.begin().await?;
                                sqlx::query(INSERT_PG)
                                    .bind(&event.id)
                                    .bind(&data)
                                    .execute(&mut *tx)
                                    .await?;
                                tx.commit().await?;
                            }
                            Store::Sqlite(pool) => {
                                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                                sqlx::query(INSERT_SQLITE)
                                    .bind(&event.id)
                                    .bind(&data)
                                    .execute(&mut *tx)
                                    .await?;
                                tx.commit().await?;
                            }
                        }
                        delivery.ack().await?;
                    }
                }
                subscription.close().await;
                anyhow::Ok(())
            });
        }
    }

    let label = if inbox {
        "consuming with the inbox"
    } else {
        "consuming without the inbox"
    };
    let mut progress = Progress::new(label, Some(messages as u64));
    let give_up = Instant::now() + Duration::from_secs(600);
    loop {
        let done = effects(&target.store).await? as usize;
        progress.update(done as u64);
        if done >= messages {
            break;
        }
        if let Some(finished) = workers.try_join_next() {
            finished.context("a consumer panicked")??;
            anyhow::bail!("a consumer stopped early");
        }
        anyhow::ensure!(
            Instant::now() < give_up,
            "only {done} of {messages} messages were consumed within 600 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    progress.finish();
    stop.store(true, Ordering::Relaxed);
    while let Some(finished) = workers.join_next().await {
        finished.context("a consumer panicked")??;
    }
    let done = effects(&target.store).await?;
    anyhow::ensure!(
        done as usize == messages,
        "{done} effects for {messages} messages"
    );
    let result = outcome(
        "inbox",
        if inbox {
            "with the inbox".to_owned()
        } else {
            "without the inbox".to_owned()
        },
        options.engine,
        options.broker.name(),
        messages as f64 / elapsed.as_secs_f64(),
        "events/s",
        None,
        before,
        format!("{done} effects for {messages} messages, one per event id"),
        options.broker.settings(&format!(
            "handler: one INSERT; concurrency {CONCURRENCY}, {KEYS} keys; {}",
            target.durability
        )),
    );
    Ok(result)
}
