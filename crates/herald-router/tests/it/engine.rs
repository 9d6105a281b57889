//! The router against real endpoints on 127.0.0.1, on both engines: retries until
//! delivered, dead-lettering after `max_attempts`, and 410 disabling the subscription.

use std::time::{Duration, Instant};

use herald_router::breaker::BreakerOptions;
use herald_router::job::{self, Filter, Status};
use herald_router::outcome::Backoff;
use herald_router::subscription;
use herald_router::{Engine, EngineOptions};
use herald_store::Store;
use herald_testing::{TestDb, on_both_stores};
use tokio::sync::oneshot;

use crate::support::{Endpoint, dispatch, migrate, subscribe};

/// Short waits everywhere, so the tests run quickly.
pub(crate) fn fast() -> EngineOptions {
    EngineOptions {
        poll_interval: Duration::from_millis(20),
        refresh: Duration::from_millis(100),
        request_timeout: Duration::from_secs(2),
        backoff: Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_millis(100),
        },
        breaker: BreakerOptions {
            threshold: 100,
            cooldown: Duration::from_millis(100),
            max_cooldown: Duration::from_millis(200),
        },
        retention: Duration::from_secs(3600),
        lease: Duration::from_secs(2),
    }
}

/// Runs a router until the jobs matching `status` number `count`, for at most 20 s.
async fn run_until(store: &Store, status: Status, count: usize) {
    let engine = Engine::new(store.clone(), fast()).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = tokio::spawn(engine.run(async {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let page = job::list(
            store,
            &Filter {
                status: Some(status),
                limit: 500,
                ..Filter::default()
            },
        )
        .await
        .unwrap();
        if page.data.len() >= count {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {count} jobs are {status:?} after 20 s",
            page.data.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the router stops")
        .unwrap()
        .unwrap();
}

async fn failures_are_retried_until_delivered(db: TestDb) {
    migrate(&db).await;
    let store = db.store();
    let endpoint = Endpoint::start(&[500, 503, 429, 404]).await;
    let sub = subscribe(store, "test.*", &endpoint.url, false, 10).await;
    dispatch(store, "e1", None, &[(sub.id, false)]).await;
    run_until(store, Status::Delivered, 1).await;
    assert_eq!(endpoint.hits(), 5);
    assert_eq!(endpoint.script_left(), 0);
    let page = job::list(
        store,
        &Filter {
            limit: 10,
            ..Filter::default()
        },
    )
    .await
    .unwrap();
    let outcomes: Vec<&str> = page.data[0]
        .attempts
        .iter()
        .map(|a| a.outcome.as_str())
        .collect();
    assert_eq!(outcomes, ["retry", "retry", "retry", "failed", "delivered"]);
}

async fn a_delivery_is_dead_lettered_after_max_attempts(db: TestDb) {
    migrate(&db).await;
    let store = db.store();
    let endpoint = Endpoint::start(&[500, 500, 500, 500, 500]).await;
    let sub = subscribe(store, "test.*", &endpoint.url, false, 3).await;
    dispatch(store, "poison", None, &[(sub.id, false)]).await;
    run_until(store, Status::Dead, 1).await;
    assert_eq!(endpoint.hits(), 3, "no attempt after the third");
    let job = &job::list(
        store,
        &Filter {
            limit: 10,
            ..Filter::default()
        },
    )
    .await
    .unwrap()
    .data[0];
    assert_eq!(job.attempts.len(), 3);
    assert!(
        job.last_error.as_deref().unwrap().contains("500"),
        "{job:?}"
    );
}

async fn gone_disables_the_subscription(db: TestDb) {
    migrate(&db).await;
    let store = db.store();
    let endpoint = Endpoint::start(&[410]).await;
    let sub = subscribe(store, "test.*", &endpoint.url, false, 10).await;
    dispatch(store, "e1", None, &[(sub.id, false)]).await;
    run_until(store, Status::Dead, 1).await;
    let after = subscription::get(store, sub.id).await.unwrap();
    assert!(!after.enabled);
    assert!(after.disabled_reason.unwrap().contains("410"));
    assert_eq!(endpoint.hits(), 1);
}

on_both_stores!(
    failures_are_retried_until_delivered,
    a_delivery_is_dead_lettered_after_max_attempts,
    gone_disables_the_subscription,
);
