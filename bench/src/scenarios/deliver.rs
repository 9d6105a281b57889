//! `deliver`: signed webhook deliveries per second from the router to a local sink, beside the
//! rate of a plain HTTP client against the same sink with the same concurrency, in the same
//! run, so the router's overhead shows as a ratio.
//!
//! The sink is an HTTP server on 127.0.0.1 inside the benchmark process. For every request
//! that carries a `webhook-id` it checks the signature with the subscription's secret and
//! records the id; it answers 204. The plain case sends the same bodies with a `reqwest`
//! client (no signing, no database) from [`CONCURRENCY`] workers. The router case stores one
//! dispatch job per event for one subscription (not FIFO) in the `default` pool, set to
//! [`CONCURRENCY`], then runs the router until the sink has every id and every job is
//! `delivered`: a run that lost, invented or mis-signed a delivery fails instead of reporting.
//! Duplicates (at-least-once) are allowed and counted.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use bytes::Bytes;
use herald_inbox::Tx;
use herald_router::engine::{Engine, EngineOptions};
use herald_router::job::{self, EventRecord};
use herald_router::pool::{self, PoolSpec};
use herald_router::signature::SigningSecret;
use herald_router::subscription::{self, NewSubscription};
use herald_store::Store;

use super::{Options, Progress, outcome, sample_event};
use crate::report::Outcome;
use crate::target::Target;

/// Requests in flight at once, for both cases.
pub const CONCURRENCY: u32 = 32;
/// The most deliveries a case makes.
const MAX_DELIVERIES: usize = 20_000;
/// Jobs stored per transaction.
const JOB_BATCH: usize = 500;
/// How long a case may take at the least, and per delivery on top.
const BASE_DEADLINE: Duration = Duration::from_secs(60);
const PER_DELIVERY: Duration = Duration::from_millis(5);

/// Runs the plain client, then the router, on the same sink.
pub async fn run(options: &Options) -> anyhow::Result<Vec<Outcome>> {
    herald_router::mediator::install_crypto_provider();
    let deliveries = options.events.clamp(1, MAX_DELIVERIES);
    let secret = SigningSecret::generate().context("cannot make a signing secret")?;
    let sink = Sink::start(secret.to_text()).await?;
    let bodies: Vec<(String, String)> = (0..deliveries)
        .map(|i| {
            let event = sample_event(i);
            serde_json::to_string(&event).map(|body| (event.id.clone(), body))
        })
        .collect::<Result<_, _>>()?;
    let plain = plain_case(options, &sink, &bodies).await?;
    let signed = router_case(options, &sink, &bodies).await?;
    Ok(vec![plain, signed])
}

/// What the sink has seen.
#[derive(Debug, Default)]
struct Seen {
    /// Distinct webhook ids.
    ids: HashSet<String>,
    /// Requests with a webhook id already seen.
    duplicates: u64,
    /// Requests whose signature did not verify, with why (the first few).
    bad: Vec<String>,
}

#[derive(Debug)]
struct SinkState {
    secret: SigningSecret,
    requests: AtomicU64,
    seen: Mutex<Seen>,
}

/// The local endpoint both cases call.
#[derive(Debug)]
struct Sink {
    url: String,
    state: Arc<SinkState>,
    server: tokio::task::JoinHandle<()>,
}

impl Sink {
    async fn start(secret: String) -> anyhow::Result<Self> {
        let state = Arc::new(SinkState {
            secret: SigningSecret::parse(&secret).context("the generated secret parses")?,
            requests: AtomicU64::new(0),
            seen: Mutex::default(),
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot listen on 127.0.0.1 for the sink")?;
        let url = format!("http://{}/hook", listener.local_addr()?);
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                tracing::error!(error = %err, "the benchmark sink stopped");
            }
        });
        Ok(Self { url, state, server })
    }

    fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::Relaxed)
    }

    fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.state.seen.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn receive(
    State(state): State<Arc<SinkState>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(id) = header("webhook-id") else {
        return StatusCode::NO_CONTENT;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let verified = state.secret.verify(
        id,
        header("webhook-timestamp").unwrap_or_default(),
        header("webhook-signature").unwrap_or_default(),
        &body,
        now,
        300,
    );
    let mut seen = state.seen.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(why) = verified {
        if seen.bad.len() < 5 {
            seen.bad.push(format!("{id}: {why}"));
        }
        return StatusCode::UNAUTHORIZED;
    }
    if !seen.ids.insert(id.to_owned()) {
        seen.duplicates += 1;
    }
    StatusCode::NO_CONTENT
}

/// The reference: the same bodies POSTed by a plain client with the same concurrency.
async fn plain_case(
    options: &Options,
    sink: &Sink,
    bodies: &[(String, String)],
) -> anyhow::Result<Outcome> {
    let before = crate::process::usage();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("cannot build the HTTP client")?;
    let bodies: Arc<Vec<String>> = Arc::new(bodies.iter().map(|(_, b)| b.clone()).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let requests_before = sink.requests();
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (client, bodies, next, url) = (
            client.clone(),
            bodies.clone(),
            next.clone(),
            sink.url.clone(),
        );
        workers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else {
                    return Ok::<(), anyhow::Error>(());
                };
                let response = client
                    .post(&url)
                    .header("content-type", "application/cloudevents+json")
                    .body(body.clone())
                    .send()
                    .await
                    .context("a plain request failed")?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "the sink answered {}",
                    response.status()
                );
            }
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined.context("a plain client worker panicked")??;
    }
    let elapsed = started.elapsed();
    let sent = sink.requests() - requests_before;
    anyhow::ensure!(
        sent == bodies.len() as u64,
        "the sink counted {sent} plain requests, {} were sent",
        bodies.len()
    );
    Ok(outcome(
        "limit",
        format!("plain HTTP POST, concurrency {CONCURRENCY}"),
        options.engine,
        "-",
        bodies.len() as f64 / elapsed.as_secs_f64(),
        "requests/s",
        None,
        before,
        format!("{sent} requests answered 204 by the local sink"),
        format!("reqwest client, {} bytes per body", bodies[0].len()),
    ))
}

/// The router delivering one job per event to the sink.
async fn router_case(
    options: &Options,
    sink: &Sink,
    bodies: &[(String, String)],
) -> anyhow::Result<Outcome> {
    let target = Target::create(options.engine, &options.postgres_url, 16).await?;
    let result = router_on(&target, sink, bodies).await;
    target.finish().await?;
    result
}

async fn router_on(
    target: &Target,
    sink: &Sink,
    bodies: &[(String, String)],
) -> anyhow::Result<Outcome> {
    let store = &target.store;
    herald_store::migrate::migrate(store, &[&herald_router::MIGRATIONS]).await?;
    pool::put(
        store,
        "default",
        &PoolSpec {
            concurrency: CONCURRENCY,
            rate_limit: None,
        },
    )
    .await
    .map_err(|err| anyhow::anyhow!("cannot set the default pool: {err:?}"))?;
    let subscription = subscription::create(
        store,
        NewSubscription {
            name: "bench".to_owned(),
            event_types: vec!["bench.*".to_owned()],
            url: sink.url.clone(),
            pool: None,
            fifo: false,
            max_attempts: Some(10),
            headers: Default::default(),
            secret: Some(sink.state.secret.to_text()),
        },
    )
    .await
    .map_err(|err| anyhow::anyhow!("cannot create the subscription: {err:?}"))?;
    for chunk in bodies.chunks(JOB_BATCH) {
        store_jobs(store, chunk, subscription.id).await?;
    }

    let before = crate::process::usage();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let engine = Engine::new(
        store.clone(),
        EngineOptions {
            poll_interval: Duration::from_millis(20),
            ..EngineOptions::default()
        },
    )?;
    let started = Instant::now();
    let running = tokio::spawn(engine.run(async {
        let _ = stopped.await;
    }));
    let want = bodies.len();
    let deadline = BASE_DEADLINE + PER_DELIVERY * u32::try_from(want).unwrap_or(u32::MAX);
    let mut progress = Progress::new("deliver", Some(want as u64));
    let elapsed = loop {
        let (have, bad) = sink.seen(|s| (s.ids.len(), s.bad.clone()));
        anyhow::ensure!(bad.is_empty(), "signatures did not verify: {bad:?}");
        if have >= want {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < deadline,
            "only {have} of {want} deliveries arrived within {deadline:?}"
        );
        progress.update(have as u64);
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    progress.finish();
    // The router records a delivery after the sink answered; wait for the last records.
    let delivered = loop {
        let delivered = count_delivered(store).await?;
        if delivered >= want as i64 || started.elapsed() >= deadline {
            break delivered;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let _ = stop.send(());
    running
        .await
        .context("the router panicked")?
        .context("the router failed")?;
    anyhow::ensure!(
        delivered == want as i64,
        "{delivered} of {want} jobs are marked delivered"
    );
    let (distinct, duplicates) = sink.seen(|s| (s.ids.len(), s.duplicates));
    let expected: HashSet<&str> = bodies.iter().map(|(id, _)| id.as_str()).collect();
    let unknown = sink.seen(|s| {
        s.ids
            .iter()
            .filter(|id| !expected.contains(id.as_str()))
            .count()
    });
    anyhow::ensure!(unknown == 0, "{unknown} delivered ids were never stored");
    Ok(outcome(
        "deliver",
        format!("signed webhooks, concurrency {CONCURRENCY}"),
        target.engine,
        "-",
        want as f64 / elapsed.as_secs_f64(),
        "deliveries/s",
        None,
        before,
        format!(
            "{distinct}/{want} events delivered, every signature verified, {duplicates} duplicates; {delivered} jobs delivered"
        ),
        format!(
            "one subscription, not FIFO, pool concurrency {CONCURRENCY}; {}",
            target.durability
        ),
    ))
}

/// Stores `chunk`'s events and one job each for `subscription`, in one transaction.
async fn store_jobs(
    store: &Store,
    chunk: &[(String, String)],
    subscription: herald_core::id::SubscriptionId,
) -> anyhow::Result<()> {
    let subscriptions = [(subscription, false)];
    macro_rules! in_tx {
        ($pool:expr, $variant:ident) => {{
            let mut tx = $pool.begin().await?;
            for (id, body) in chunk {
                let record = EventRecord {
                    id,
                    event_type: "bench.order.placed",
                    partition_key: None,
                    body,
                };
                job::create(&mut Tx::$variant(&mut tx), record, &subscriptions).await?;
            }
            tx.commit().await?;
        }};
    }
    match store {
        Store::Postgres(pool) => in_tx!(pool, Postgres),
        Store::Sqlite(pool) => in_tx!(pool, Sqlite),
    }
    Ok(())
}

async fn count_delivered(store: &Store) -> anyhow::Result<i64> {
    const SQL: &str = "SELECT COUNT(*) FROM herald_dispatch_jobs WHERE status = 'delivered'";
    Ok(match store {
        Store::Postgres(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
        Store::Sqlite(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
    })
}
