//! Leases and leaders against real databases, on PostgreSQL and SQLite: one holder at a time,
//! a new token whenever the lease changes hands, fences that refuse a former holder, take-over
//! after a leader dies, and the work stopped when its lease is taken. `redis.rs` does the same
//! with the leases kept in Redis.

#![allow(clippy::unwrap_used)]

mod redis;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_leader::{Fence, LeaderOptions, Leases, lead};
use herald_store::Store;
use herald_testing::{TestDb, on_both_stores};

/// Whether `holder` can take lease `name` now.
async fn free_for(leases: &Leases, name: &str, holder: &str) -> bool {
    leases
        .acquire(name, holder, 60_000)
        .await
        .unwrap()
        .is_some()
}

async fn leases(db: &TestDb) -> Leases {
    herald_store::migrate::migrate(db.store(), &[&herald_leader::MIGRATIONS])
        .await
        .unwrap();
    Leases::new(db.store().clone())
}

on_both_stores!(
    a_lease_has_one_holder_and_a_new_token_each_time_it_changes_hands,
    a_lease_that_ran_out_goes_to_the_next_holder_and_fences_the_old_one,
    a_fence_guards_a_statement_of_ones_own,
    a_dead_leader_is_replaced_within_twice_the_ttl,
    a_leader_whose_lease_is_taken_is_told_to_stop,
    shutdown_releases_the_lease_at_once,
);

async fn a_lease_has_one_holder_and_a_new_token_each_time_it_changes_hands(db: TestDb) {
    let leases = leases(&db).await;
    let (a, b) = one_holder_and_a_new_token_each_time(&leases).await;
    // In the database, tokens count the holdings.
    assert_eq!((a.token, b.token), (1, 2));
}

/// The lease contract both backends keep, on lease `relay` of a fresh `leases`: one holder at
/// a time, a holder's own re-acquire and renewals keep its token, and a new holder gets a
/// larger one that the former holder's late renew and release cannot touch. Returns the
/// first holder's fence (`a`) and the second's (`b`, which still holds the lease).
pub(crate) async fn one_holder_and_a_new_token_each_time(leases: &Leases) -> (Fence, Fence) {
    let a = leases.acquire("relay", "a", 60_000).await.unwrap().unwrap();
    assert!(!free_for(leases, "relay", "b").await);
    // Other leases are independent.
    assert!(
        leases
            .acquire("other", "b", 60_000)
            .await
            .unwrap()
            .is_some()
    );
    // The holder taking it again keeps its token.
    assert_eq!(
        leases.acquire("relay", "a", 60_000).await.unwrap(),
        Some(a.clone())
    );
    assert!(leases.renew(&a, "a", 60_000).await.unwrap());
    assert!(
        !leases.renew(&a, "b", 60_000).await.unwrap(),
        "only the holder renews"
    );
    assert!(leases.holds(&a).await.unwrap());

    leases.release(&a, "a").await.unwrap();
    assert!(!leases.holds(&a).await.unwrap());
    let b = leases.acquire("relay", "b", 60_000).await.unwrap().unwrap();
    assert!(b.token > a.token, "{b:?} after {a:?}");
    assert!(!leases.renew(&a, "a", 60_000).await.unwrap());
    assert!(!leases.holds(&a).await.unwrap());
    assert!(leases.holds(&b).await.unwrap());
    // A late release by the former holder changes nothing.
    leases.release(&a, "a").await.unwrap();
    assert!(leases.holds(&b).await.unwrap());
    let state = leases.state("relay").await.unwrap().unwrap();
    assert_eq!((state.holder.as_str(), state.token), ("b", b.token));
    assert!(state.remaining_ms > 50_000, "{state:?}");
    assert!(leases.state("never").await.unwrap().is_none());
    (a, b)
}

async fn a_lease_that_ran_out_goes_to_the_next_holder_and_fences_the_old_one(db: TestDb) {
    let leases = leases(&db).await;
    let a = leases.acquire("relay", "a", 150).await.unwrap().unwrap();
    assert!(!free_for(&leases, "relay", "b").await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Ran out: the holder's fence no longer holds, and it cannot simply renew.
    assert!(!leases.holds(&a).await.unwrap());
    assert!(!leases.renew(&a, "a", 60_000).await.unwrap());
    let b = leases.acquire("relay", "b", 60_000).await.unwrap().unwrap();
    assert_eq!(b.token, a.token + 1);
    assert!(!free_for(&leases, "relay", "a").await);

    // A holder whose lease ran out without anybody taking it gets a new token too, so
    // nothing written under the old one passes for new.
    let c = leases.acquire("solo", "c", 150).await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = leases.acquire("solo", "c", 60_000).await.unwrap().unwrap();
    assert_eq!(again.token, c.token + 1);
}

/// A write guarded by [`Fence::condition`] happens for the holder and not for a former one.
async fn a_fence_guards_a_statement_of_ones_own(db: TestDb) {
    let leases = leases(&db).await;
    let store = db.store();
    run(store, "CREATE TABLE guarded (note TEXT NOT NULL)", &[]).await;
    let old = leases.acquire("relay", "a", 60_000).await.unwrap().unwrap();
    leases.release(&old, "a").await.unwrap();
    let new = leases.acquire("relay", "b", 60_000).await.unwrap().unwrap();
    for (fence, note) in [(&old, "from the former holder"), (&new, "from the holder")] {
        let text = format!(
            "INSERT INTO guarded (note) SELECT $1 WHERE {}",
            fence.condition(store, 2)
        );
        let written = run(store, &text, &[note, &fence.name, &fence.token.to_string()]).await;
        assert_eq!(written, u64::from(fence == &new), "{note}");
    }
}

/// Runs `text` with text parameters (the token is cast where it is compared).
async fn run(store: &Store, text: &str, params: &[&str]) -> u64 {
    macro_rules! bind_all {
        ($query:expr) => {{
            let mut query = $query;
            for (i, param) in params.iter().enumerate() {
                // The third parameter, where there is one, is the token: a number.
                query = if i == 2 {
                    query.bind(param.parse::<i64>().unwrap())
                } else {
                    query.bind(*param)
                };
            }
            query
        }};
    }
    match store {
        Store::Postgres(pool) => bind_all!(sqlx::query(sqlx::AssertSqlSafe(text.to_owned())))
            .execute(pool)
            .await
            .unwrap()
            .rows_affected(),
        Store::Sqlite(pool) => bind_all!(sqlx::query(sqlx::AssertSqlSafe(
            herald_store::sql::for_sqlite(text)
        )))
        .execute(pool)
        .await
        .unwrap()
        .rows_affected(),
    }
}

const TTL: Duration = Duration::from_millis(1000);

fn options() -> LeaderOptions {
    LeaderOptions {
        ttl: TTL,
        retry: Duration::from_millis(50),
    }
}

/// Who led, with which token, and when they started.
type Log = Arc<Mutex<Vec<(String, i64, Instant)>>>;

/// Starts `lead` as `holder`; its work logs itself and runs until told to stop.
fn leader(
    leases: &Leases,
    holder: &'static str,
    log: &Log,
    shutdown: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<Result<(), std::convert::Infallible>> {
    let leases = leases.clone();
    let log = log.clone();
    tokio::spawn(async move {
        lead(
            leases,
            "relay",
            holder,
            options(),
            async move {
                let _ = shutdown.await;
            },
            |fence: Fence, stop| {
                log.lock()
                    .unwrap()
                    .push((holder.to_owned(), fence.token, Instant::now()));
                async move {
                    stop.wait().await;
                    Ok(())
                }
            },
        )
        .await
    })
}

/// Waits (at most 10 s) until `log` has `n` entries.
async fn logged(log: &Log, n: usize) -> Vec<(String, i64, Instant)> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let entries = log.lock().unwrap().clone();
        if entries.len() >= n {
            return entries;
        }
        assert!(
            Instant::now() < until,
            "only {} leaders in 10 s: {entries:?}",
            entries.len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn a_dead_leader_is_replaced_within_twice_the_ttl(db: TestDb) {
    let (a, b) = a_dead_leader_is_replaced(&leases(&db).await).await;
    assert_eq!(b, a + 1);
}

/// Two leaders of `leases`; the first dies and the second takes over within twice the TTL.
/// Returns their tokens.
async fn a_dead_leader_is_replaced(leases: &Leases) -> (i64, i64) {
    let log = Log::default();
    let (_a_stop, a_shutdown) = tokio::sync::oneshot::channel();
    let a = leader(leases, "a", &log, a_shutdown);
    logged(&log, 1).await;
    let (b_stop, b_shutdown) = tokio::sync::oneshot::channel();
    let b = leader(leases, "b", &log, b_shutdown);
    tokio::time::sleep(TTL / 2).await;
    assert_eq!(log.lock().unwrap().len(), 1, "b waits while a leads");

    // a dies: no release, no more renewals.
    let died = Instant::now();
    a.abort();
    let entries = logged(&log, 2).await;
    let (holder, token, at) = entries[1].clone();
    assert_eq!(holder, "b");
    assert!(token > entries[0].1, "a new, larger token: {entries:?}");
    let took = at.duration_since(died);
    assert!(took <= 2 * TTL, "take-over took {took:?}");
    eprintln!(
        "take-over after the leader died: {} ms (TTL {} ms)",
        took.as_millis(),
        TTL.as_millis()
    );
    b_stop.send(()).unwrap();
    b.await.unwrap().unwrap();
    (entries[0].1, token)
}

async fn a_leader_whose_lease_is_taken_is_told_to_stop(db: TestDb) {
    let leases = leases(&db).await;
    let (a, b) = a_leader_is_told_to_stop(&leases, release_as_if_ran_out(db.store())).await;
    assert_eq!(b, a + 1);
}

/// A leader of `leases` whose lease `run_out` ends (as if it had been paused) and another
/// instance takes is told to stop within the TTL, and then stands by. Returns both tokens.
async fn a_leader_is_told_to_stop(
    leases: &Leases,
    run_out: impl std::future::Future<Output = ()>,
) -> (i64, i64) {
    let stopped = Arc::new(Mutex::new(None::<Instant>));
    let (_stop, shutdown) = tokio::sync::oneshot::channel::<()>();
    let seen = stopped.clone();
    let started = Arc::new(tokio::sync::Notify::new());
    let leading = started.clone();
    let task = tokio::spawn(lead(
        leases.clone(),
        "relay",
        "a",
        options(),
        async move {
            let _ = shutdown.await;
        },
        move |_fence: Fence, stop| {
            let seen = seen.clone();
            let leading = leading.clone();
            async move {
                leading.notify_one();
                stop.wait().await;
                seen.lock().unwrap().get_or_insert_with(Instant::now);
                Ok::<(), std::convert::Infallible>(())
            }
        },
    ));
    tokio::time::timeout(Duration::from_secs(10), started.notified())
        .await
        .unwrap();
    // The holder taking it again keeps its token: this is a's fence.
    let fence = leases.acquire("relay", "a", 60_000).await.unwrap().unwrap();
    // As if a paused a: its lease ran out and b took it. a's next renewal is refused.
    run_out.await;
    let taken_at = Instant::now();
    let b = leases.acquire("relay", "b", 60_000).await.unwrap().unwrap();
    assert!(b.token > fence.token, "{b:?} after {fence:?}");
    assert!(
        !leases.holds(&fence).await.unwrap(),
        "a's lease is gone at once"
    );
    let until = Instant::now() + Duration::from_secs(10);
    while stopped.lock().unwrap().is_none() {
        assert!(Instant::now() < until, "a was not told to stop within 10 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = stopped.lock().unwrap().unwrap().duration_since(taken_at);
    assert!(after <= TTL, "a stopped {after:?} after losing its lease");
    // a campaigns again, and waits: b leads.
    tokio::time::sleep(TTL / 2).await;
    assert_eq!(leases.state("relay").await.unwrap().unwrap().holder, "b");
    task.abort();
    (fence.token, b.token)
}

/// Ends lease `relay` now, as the passing of time would.
async fn release_as_if_ran_out(store: &Store) {
    run(
        store,
        "UPDATE herald_leases SET expires_at = 0 WHERE name = $1",
        &["relay"],
    )
    .await;
}

async fn shutdown_releases_the_lease_at_once(db: TestDb) {
    let leases = leases(&db).await;
    assert_eq!(shutdown_releases(&leases).await, (1, 2));
}

/// A leader of `leases` shuts down; another takes the lease at once, with a larger token.
/// Returns both tokens.
async fn shutdown_releases(leases: &Leases) -> (i64, i64) {
    let log = Log::default();
    let (stop, shutdown) = tokio::sync::oneshot::channel();
    let a = leader(leases, "a", &log, shutdown);
    logged(&log, 1).await;
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), a)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first = log.lock().unwrap()[0].1;
    let next = leases.acquire("relay", "b", 60_000).await.unwrap();
    let next = next.expect("b takes the lease without waiting for it to run out");
    assert!(next.token > first, "{next:?} after {first}");
    (first, next.token)
}
