//! Job leases between routers, on both engines: a router that dies gives its jobs up within
//! about its short lease; a live one keeps a slow request's job past the lease by renewing
//! it; a router whose job was taken, or that cannot reach the store to renew, abandons the
//! request before another router can start it, and records nothing.

use std::time::{Duration, Instant};

use herald_router::job::Status;
use herald_router::{Engine, EngineOptions};
use herald_store::Store;
use herald_testing::{TestDb, on_both_stores};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::engine::fast;
use crate::support::{SlowEndpoint, dispatch, migrate, subscribe};

const LEASE: Duration = Duration::from_secs(1);

/// A lease of `lease` and a request timeout far beyond it: only the lease can explain a
/// takeover.
fn options(lease: Duration) -> EngineOptions {
    EngineOptions {
        lease,
        request_timeout: Duration::from_secs(30),
        ..fast()
    }
}

/// A running router and what stops it.
struct Running {
    stop: oneshot::Sender<()>,
    /// Ends with when the router's `run` returned (its requests over).
    task: JoinHandle<Instant>,
}

impl Running {
    fn start(store: &Store) -> Self {
        Self::with_lease(store, LEASE)
    }

    fn with_lease(store: &Store, lease: Duration) -> Self {
        let engine = Engine::new(store.clone(), options(lease)).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            engine
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            Instant::now()
        });
        Self { stop, task }
    }

    /// Asks it to stop and waits (at most `limit`) until it has: its requests are over.
    /// Returns when it stopped.
    async fn stop_within(self, limit: Duration) -> Instant {
        let _ = self.stop.send(());
        tokio::time::timeout(limit, self.task)
            .await
            .unwrap_or_else(|_| panic!("the router did not stop within {limit:?}"))
            .unwrap()
    }
}

/// The one job's id, status, attempts recorded and lease token.
async fn the_job(store: &Store) -> (Uuid, String, i64, Option<Uuid>) {
    let text = "SELECT j.id, j.status, \
                (SELECT count(*) FROM herald_dispatch_attempts a WHERE a.job_id = j.id), j.lease \
                FROM herald_dispatch_jobs j";
    match store {
        Store::Postgres(pool) => sqlx::query_as(text).fetch_one(pool).await.unwrap(),
        Store::Sqlite(pool) => sqlx::query_as(text).fetch_one(pool).await.unwrap(),
    }
}

/// Waits (at most 20 s) until the one job is delivered.
async fn until_delivered(store: &Store) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while the_job(store).await.1 != Status::Delivered.as_str() {
        assert!(
            Instant::now() < deadline,
            "the job was not delivered within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Does what another router's claim does to the job: a new token, held for a minute.
async fn take_over(store: &Store) {
    let text = "UPDATE herald_dispatch_jobs SET lease = $1, locked_until = $2";
    let until = herald_store::sql::now_ms() + 60_000;
    let lease = Uuid::now_v7();
    match store {
        Store::Postgres(pool) => {
            sqlx::query(text)
                .bind(lease)
                .bind(until)
                .execute(pool)
                .await
                .unwrap();
        }
        Store::Sqlite(pool) => {
            sqlx::query(sqlx::AssertSqlSafe(herald_store::sql::for_sqlite(text)))
                .bind(lease)
                .bind(until)
                .execute(pool)
                .await
                .unwrap();
        }
    }
}

async fn a_dead_routers_job_is_taken_over_within_its_lease(db: TestDb) {
    migrate(&db).await;
    let store = db.store();
    // The first request hangs; the next is answered at once.
    let endpoint = SlowEndpoint::start(&[Duration::from_secs(60)]).await;
    let sub = subscribe(store, "test.*", &endpoint.url, false, 10).await;
    dispatch(store, "e1", None, &[(sub.id, false)]).await;

    let dying = Running::start(store);
    endpoint.wait_for_requests(1).await;
    // Like SIGKILL: no release, no more renewals.
    dying.task.abort();
    let _ = dying.task.await;
    let died = Instant::now();

    let survivor = Running::start(store);
    until_delivered(store).await;
    let took = died.elapsed();
    assert!(
        took < 3 * LEASE,
        "the job came back {took:?} after its router died, not within about its {LEASE:?} lease"
    );
    assert_eq!(endpoint.begun().len(), 2);
    let (_, _, attempts, _) = the_job(store).await;
    assert_eq!(attempts, 1, "the dead router recorded nothing");
    survivor.stop_within(Duration::from_secs(10)).await;
}

async fn a_live_router_keeps_a_slow_job_past_its_lease(db: TestDb) {
    migrate(&db).await;
    let store = db.store();
    let slow = 3 * LEASE + Duration::from_millis(500);
    let endpoint = SlowEndpoint::start(&[slow]).await;
    let sub = subscribe(store, "test.*", &endpoint.url, false, 10).await;
    // Two routers want the job; one gets it, and renews its lease while the endpoint takes
    // three leases and more to answer.
    let routers = [Running::start(store), Running::start(store)];
    let started = Instant::now();
    dispatch(store, "e1", None, &[(sub.id, false)]).await;
    until_delivered(store).await;
    assert!(started.elapsed() >= slow);
    assert_eq!(
        endpoint.begun().len(),
        1,
        "the other router delivered the job while its holder was sending it"
    );
    assert_eq!(endpoint.answered(), 1);
    let (_, _, attempts, _) = the_job(store).await;
    assert_eq!(attempts, 1);
    for router in routers {
        router.stop_within(Duration::from_secs(10)).await;
    }
}

async fn a_router_whose_job_was_taken_abandons_it_and_records_nothing(db: TestDb) {
    migrate(&db).await;
    let store = db.store();
    let endpoint = SlowEndpoint::start(&[Duration::from_secs(60)]).await;
    let sub = subscribe(store, "test.*", &endpoint.url, false, 10).await;
    dispatch(store, "e1", None, &[(sub.id, false)]).await;

    let router = Running::start(store);
    endpoint.wait_for_requests(1).await;
    take_over(store).await;
    let (_, _, _, taken_by) = the_job(store).await;
    // The next renewal finds the job under another token: the request is dropped, so the
    // router stops at once rather than after the request timeout (30 s).
    tokio::time::sleep(LEASE).await;
    router.stop_within(2 * LEASE).await;
    let (_, status, attempts, lease) = the_job(store).await;
    assert_eq!(status, Status::Delivering.as_str());
    assert_eq!(attempts, 0, "nothing is recorded");
    assert_eq!(lease, taken_by, "the job stays with its new holder");
    assert_eq!(endpoint.begun().len(), 1);
}

async fn a_router_that_cannot_renew_stops_before_another_starts(db: TestDb) {
    migrate(&db).await;
    let store = db.store();
    let endpoint = SlowEndpoint::start(&[Duration::from_secs(60)]).await;
    let sub = subscribe(store, "test.*", &endpoint.url, false, 10).await;
    dispatch(store, "e1", None, &[(sub.id, false)]).await;

    // This router has its own pool, to lose the database while the other keeps it. Its lease
    // is 2 s, so a guard of 200 ms separates its giving up from the other's start.
    let lease = 2 * LEASE;
    let own = Store::connect(db.url(), &herald_store::StoreOptions::default())
        .await
        .unwrap();
    let cut_off = Running::with_lease(&own, lease);
    endpoint.wait_for_requests(1).await;
    tokio::time::timeout(Duration::from_secs(10), own.close())
        .await
        .expect("the pool closes");
    let other = Running::start(store);
    // The cut-off router's request ends before its lease can run out (and its run with it,
    // as it waits for its requests); the other router starts the job only after that.
    let stopped = cut_off.stop_within(2 * lease).await;
    until_delivered(store).await;
    let begun = endpoint.begun();
    assert_eq!(begun.len(), 2);
    assert!(
        begun[1] >= stopped,
        "the other router started the job while the first was still sending it"
    );
    let (_, _, attempts, _) = the_job(store).await;
    assert_eq!(attempts, 1, "the cut-off router recorded nothing");
    other.stop_within(Duration::from_secs(10)).await;
}

on_both_stores!(
    a_dead_routers_job_is_taken_over_within_its_lease,
    a_live_router_keeps_a_slow_job_past_its_lease,
    a_router_whose_job_was_taken_abandons_it_and_records_nothing,
    a_router_that_cannot_renew_stops_before_another_starts,
);

#[tokio::test]
async fn a_lease_out_of_bounds_is_refused() {
    let db = TestDb::sqlite().await;
    for lease in [Duration::from_millis(999), Duration::from_secs(301)] {
        let refused = Engine::new(
            db.store().clone(),
            EngineOptions {
                lease,
                ..EngineOptions::default()
            },
        );
        assert!(refused.is_err(), "{lease:?}");
    }
}
