//! Shared set-up: a migrated store, subscriptions, dispatched events, and tiny HTTP
//! endpoints on 127.0.0.1: one answers with the status codes it is given, one takes the
//! time it is given to answer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use herald_core::id::SubscriptionId;
use herald_inbox::Tx;
use herald_router::job::{self, EventRecord};
use herald_router::subscription::{self, NewSubscription, Subscription};
use herald_store::Store;
use herald_testing::TestDb;

/// Applies the tables the router needs.
pub(crate) async fn migrate(db: &TestDb) {
    herald_store::migrate::migrate(db.store(), &[&herald_router::MIGRATIONS])
        .await
        .unwrap();
}

/// A subscription to `pattern` at `url`.
pub(crate) async fn subscribe(
    store: &Store,
    pattern: &str,
    url: &str,
    fifo: bool,
    max_attempts: u32,
) -> Subscription {
    subscription::create(
        store,
        NewSubscription {
            name: "test".to_owned(),
            event_types: vec![pattern.to_owned()],
            url: url.to_owned(),
            pool: None,
            fifo,
            max_attempts: Some(max_attempts),
            headers: Default::default(),
            secret: None,
        },
    )
    .await
    .unwrap()
}

/// Stores event `id` and a job for each of `subscriptions`, as the dispatcher does.
pub(crate) async fn dispatch(
    store: &Store,
    id: &str,
    key: Option<&str>,
    subscriptions: &[(SubscriptionId, bool)],
) {
    let body = format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/t","type":"test.thing","data":{{}}}}"#
    );
    let record = EventRecord {
        id,
        event_type: "test.thing",
        partition_key: key,
        body: &body,
    };
    match store {
        Store::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            job::create(&mut Tx::Postgres(&mut tx), record, subscriptions)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        Store::Sqlite(pool) => {
            let mut tx = pool.begin().await.unwrap();
            job::create(&mut Tx::Sqlite(&mut tx), record, subscriptions)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    }
}

/// An endpoint that answers each request with the next scripted status (204 when the
/// script is used up) and counts requests.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    pub(crate) url: String,
    script: Arc<Mutex<VecDeque<u16>>>,
    hits: Arc<Mutex<u32>>,
}

impl Endpoint {
    pub(crate) async fn start(script: &[u16]) -> Self {
        let script = Arc::new(Mutex::new(script.iter().copied().collect::<VecDeque<_>>()));
        let hits = Arc::new(Mutex::new(0));
        let (s, h) = (script.clone(), hits.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let (s, h) = (s.clone(), h.clone());
                async move {
                    *h.lock().unwrap() += 1;
                    let code = s.lock().unwrap().pop_front().unwrap_or(204);
                    StatusCode::from_u16(code).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { url, script, hits }
    }

    pub(crate) fn hits(&self) -> u32 {
        *self.hits.lock().unwrap()
    }

    pub(crate) fn script_left(&self) -> usize {
        self.script.lock().unwrap().len()
    }
}

/// An endpoint that answers 204 after the next scripted delay (at once when the script is
/// used up), and notes when each request began.
#[derive(Debug, Clone)]
pub(crate) struct SlowEndpoint {
    pub(crate) url: String,
    begun: Arc<Mutex<Vec<Instant>>>,
    answered: Arc<Mutex<u32>>,
}

impl SlowEndpoint {
    pub(crate) async fn start(delays: &[Duration]) -> Self {
        let delays = Arc::new(Mutex::new(delays.iter().copied().collect::<VecDeque<_>>()));
        let begun = Arc::new(Mutex::new(Vec::new()));
        let answered = Arc::new(Mutex::new(0));
        let (b, a) = (begun.clone(), answered.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let (d, b, a) = (delays.clone(), b.clone(), a.clone());
                async move {
                    b.lock().unwrap().push(Instant::now());
                    let delay = d.lock().unwrap().pop_front().unwrap_or_default();
                    tokio::time::sleep(delay).await;
                    *a.lock().unwrap() += 1;
                    StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self {
            url,
            begun,
            answered,
        }
    }

    /// When each request began, in order.
    pub(crate) fn begun(&self) -> Vec<Instant> {
        self.begun.lock().unwrap().clone()
    }

    /// How many requests it answered.
    pub(crate) fn answered(&self) -> u32 {
        *self.answered.lock().unwrap()
    }

    /// Waits (at most 10 s) until `count` requests have begun.
    pub(crate) async fn wait_for_requests(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.begun.lock().unwrap().len() < count {
            assert!(
                Instant::now() < deadline,
                "{count} requests did not begin within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
