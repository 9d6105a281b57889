//! Leases kept in Redis (the server in `HERALD_TEST_REDIS_URL`, each test under a key prefix of
//! its own), fenced in real databases: one holder at a time, tokens that only rise (even after
//! Redis forgot a lease), a former holder refused by the database once the new one checked,
//! and `lead` on top. A Redis that is down makes each operation fail; nothing skips.

use std::time::{Duration, Instant};

use herald_leader::{Fence, LeaseError, Leases, RedisLeaseOptions};
use herald_store::Store;
use herald_testing::server::{PrivateServer, find_binary, free_port};
use herald_testing::{REDIS_URL, TestDb, on_both_stores, service_url, unique_name};

/// Leases in the test Redis under a key prefix of this test's own, and a connection to poke
/// at their keys.
struct TestRedis {
    leases: Leases,
    prefix: String,
    connection: ::redis::aio::MultiplexedConnection,
}

impl TestRedis {
    async fn new() -> Self {
        Self::at(&service_url(REDIS_URL)).await
    }

    async fn at(url: &str) -> Self {
        let prefix = unique_name("herald_test_lease");
        let mut options = RedisLeaseOptions::new(url);
        options.key_prefix.clone_from(&prefix);
        let leases = Leases::redis(options).unwrap();
        let connection = ::redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|err| panic!("cannot reach Redis at {REDIS_URL}: {err}"));
        Self {
            leases,
            prefix,
            connection,
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}:lease:{name}", self.prefix)
    }

    /// Ends lease `name` now, as the passing of time would (its holder was paused, say).
    async fn run_out(&self, name: &str) {
        let _: i64 = ::redis::cmd("HSET")
            .arg(self.key(name))
            .arg("expires_at")
            .arg(0)
            .query_async(&mut self.connection.clone())
            .await
            .unwrap();
    }

    /// Redis's clock, in milliseconds.
    async fn now_ms(&self) -> i64 {
        let (secs, micros): (i64, i64) = ::redis::cmd("TIME")
            .query_async(&mut self.connection.clone())
            .await
            .unwrap();
        secs * 1000 + micros / 1000
    }
}

/// Polls `condition` every 10 ms until it holds; fails after 10 s.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, condition: impl Fn() -> F) {
    let until = Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(Instant::now() < until, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_has_one_holder_and_a_new_token_each_time_it_changes_hands() {
    let redis = TestRedis::new().await;
    let leases = &redis.leases;
    let (_, b) = super::one_holder_and_a_new_token_each_time(leases).await;

    // Released and taken again by the same holder: a new token.
    leases.release(&b, "b").await.unwrap();
    let state = leases.state("relay").await.unwrap().unwrap();
    assert!(state.remaining_ms <= 0, "released: {state:?}");
    let again = leases.acquire("relay", "b", 60_000).await.unwrap().unwrap();
    assert!(again.token > b.token, "{again:?} after {b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_holder_renews_or_releases() {
    let redis = TestRedis::new().await;
    let leases = &redis.leases;
    let a = leases.acquire("relay", "a", 60_000).await.unwrap().unwrap();
    assert!(
        !leases.renew(&a, "b", 60_000).await.unwrap(),
        "b cannot renew a's lease, even with a's token"
    );
    leases.release(&a, "b").await.unwrap();
    assert!(leases.holds(&a).await.unwrap(), "nor release it");
    let state = leases.state("relay").await.unwrap().unwrap();
    assert_eq!(state.holder, "a");

    // A fence from the database backend means nothing to Redis, whatever its token.
    let db = TestDb::sqlite().await;
    herald_store::migrate::migrate(db.store(), &[&herald_leader::MIGRATIONS])
        .await
        .unwrap();
    let elsewhere = Leases::new(db.store().clone())
        .acquire("relay", "a", 60_000)
        .await
        .unwrap()
        .unwrap();
    assert!(!leases.renew(&elsewhere, "a", 60_000).await.unwrap());
    assert!(!leases.holds(&elsewhere).await.unwrap());
    leases.release(&elsewhere, "a").await.unwrap();
    assert!(leases.holds(&a).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_that_ran_out_goes_to_the_next_holder() {
    let redis = TestRedis::new().await;
    let leases = &redis.leases;
    let a = leases.acquire("relay", "a", 150).await.unwrap().unwrap();
    assert!(
        leases
            .acquire("relay", "b", 60_000)
            .await
            .unwrap()
            .is_none()
    );
    let fence = &a;
    eventually("a's lease runs out", move || async move {
        !leases.holds(fence).await.unwrap()
    })
    .await;
    // Ran out: the holder cannot simply renew.
    assert!(!leases.renew(&a, "a", 60_000).await.unwrap());
    let b = leases.acquire("relay", "b", 60_000).await.unwrap().unwrap();
    assert!(b.token > a.token, "{b:?} after {a:?}");
    assert!(
        leases
            .acquire("relay", "a", 60_000)
            .await
            .unwrap()
            .is_none()
    );

    // A holder whose lease ran out without anybody taking it gets a new token too, so
    // nothing written under the old one passes for new.
    let c = leases.acquire("solo", "c", 150).await.unwrap().unwrap();
    let fence = &c;
    eventually("c's lease runs out", move || async move {
        !leases.holds(fence).await.unwrap()
    })
    .await;
    let again = leases.acquire("solo", "c", 60_000).await.unwrap().unwrap();
    assert!(again.token > c.token, "{again:?} after {c:?}");
}

on_both_stores!(
    a_former_holder_is_fenced_in_the_database,
    the_check_orders_the_transactions_of_two_holders,
    a_fence_guards_a_statement_of_ones_own,
    tokens_stay_ahead_when_redis_forgets_a_lease,
);

async fn migrated(db: &TestDb) -> &Store {
    herald_store::migrate::migrate(db.store(), &[&herald_leader::MIGRATIONS])
        .await
        .unwrap();
    db.store()
}

/// `fence`'s check in a transaction of its own (`BEGIN IMMEDIATE` on SQLite, as the relay's),
/// committed.
async fn check(store: &Store, fence: &Fence) -> bool {
    match store {
        Store::Postgres(pool) => {
            let mut tx = pool.begin().await.unwrap();
            let passed = fence.check_postgres(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
            passed
        }
        Store::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
            let passed = fence.check_sqlite(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
            passed
        }
    }
}

async fn a_former_holder_is_fenced_in_the_database(db: TestDb) {
    let store = migrated(&db).await;
    let redis = TestRedis::new().await;
    let leases = &redis.leases;
    let a = leases.acquire("relay", "a", 60_000).await.unwrap().unwrap();
    assert!(check(store, &a).await, "the holder passes");
    assert!(check(store, &a).await, "every time");

    // a is paused; its lease runs out and b takes it. Once b has checked, a never passes.
    redis.run_out("relay").await;
    let b = leases.acquire("relay", "b", 60_000).await.unwrap().unwrap();
    assert!(check(store, &b).await);
    assert!(!check(store, &a).await, "a's late check is refused");
    assert!(check(store, &b).await, "b still passes");

    // Until the new holder has checked, the database has not heard of it: the former holder
    // still passes (its write comes before all of the new holder's), then never again.
    redis.run_out("relay").await;
    let c = leases.acquire("relay", "c", 60_000).await.unwrap().unwrap();
    assert!(check(store, &b).await);
    assert!(check(store, &c).await);
    assert!(!check(store, &b).await);
    assert!(!check(store, &a).await);
    // Another lease's fence is its own.
    let other = leases.acquire("other", "a", 60_000).await.unwrap().unwrap();
    assert!(check(store, &other).await);
}

/// The check takes the fence's row lock (PostgreSQL) or the write lock (SQLite) until the
/// transaction ends: a new holder's check waits for a former holder's transaction in
/// progress, which so ends before the new holder's writes, and is refused afterwards.
async fn the_check_orders_the_transactions_of_two_holders(db: TestDb) {
    let store = migrated(&db).await.clone();
    let redis = TestRedis::new().await;
    let leases = &redis.leases;
    let a = leases.acquire("relay", "a", 60_000).await.unwrap().unwrap();
    assert!(check(&store, &a).await);
    redis.run_out("relay").await;
    let b = leases.acquire("relay", "b", 60_000).await.unwrap().unwrap();

    macro_rules! a_round_then_b {
        ($tx:expr, $check:ident) => {{
            let mut tx = $tx;
            assert!(a.$check(&mut *tx).await.unwrap(), "b has not checked yet");
            let b_checks = tokio::spawn({
                let (store, b) = (store.clone(), b.clone());
                async move { check(&store, &b).await }
            });
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(!b_checks.is_finished(), "b waits for a's transaction");
            tx.commit().await.unwrap();
            assert!(b_checks.await.unwrap(), "then b passes");
        }};
    }
    match &store {
        Store::Postgres(pool) => a_round_then_b!(pool.begin().await.unwrap(), check_postgres),
        Store::Sqlite(pool) => a_round_then_b!(
            pool.begin_with("BEGIN IMMEDIATE").await.unwrap(),
            check_sqlite
        ),
    }
    assert!(!check(&store, &a).await, "and a's next round is refused");
}

/// [`Fence::condition`] of a Redis lease holds, after the check in the same transaction, for
/// the holder, and never for a former one.
async fn a_fence_guards_a_statement_of_ones_own(db: TestDb) {
    let store = migrated(&db).await;
    let redis = TestRedis::new().await;
    let leases = &redis.leases;
    herald_store::on_store!(store, pool, sql => {
        sqlx::query(sql("CREATE TABLE guarded (note TEXT NOT NULL)"))
            .execute(pool)
            .await
            .unwrap();
    });
    let old = leases.acquire("relay", "a", 60_000).await.unwrap().unwrap();
    // Without a check first, the condition refuses even the holder.
    assert_eq!(
        write_guarded(store, &old, false, "unchecked").await,
        (false, 0)
    );
    leases.release(&old, "a").await.unwrap();
    let new = leases.acquire("relay", "b", 60_000).await.unwrap().unwrap();
    assert_eq!(write_guarded(store, &new, true, "holder").await, (true, 1));
    assert_eq!(write_guarded(store, &old, true, "former").await, (false, 0));
}

/// In one transaction: `fence`'s check (when `checked`), then an insert guarded by its
/// condition. Whether the check passed, and the rows written.
async fn write_guarded(store: &Store, fence: &Fence, checked: bool, note: &str) -> (bool, u64) {
    let text = format!(
        "INSERT INTO guarded (note) SELECT $1 WHERE {}",
        fence.condition(store, 2)
    );
    macro_rules! guarded {
        ($tx:expr, $check:ident, $text:expr) => {{
            let mut tx = $tx;
            let passed = checked && fence.$check(&mut *tx).await.unwrap();
            let written = sqlx::query(sqlx::AssertSqlSafe($text))
                .bind(note)
                .bind(&fence.name)
                .bind(fence.token)
                .execute(&mut *tx)
                .await
                .unwrap()
                .rows_affected();
            tx.commit().await.unwrap();
            (passed, written)
        }};
    }
    match store {
        Store::Postgres(pool) => guarded!(pool.begin().await.unwrap(), check_postgres, text),
        Store::Sqlite(pool) => guarded!(
            pool.begin_with("BEGIN IMMEDIATE").await.unwrap(),
            check_sqlite,
            herald_store::sql::for_sqlite(&text)
        ),
    }
}

/// A Redis that lost a lease (restarted without persistence, say) starts its tokens from its
/// clock, not from 1: the next holder's token is larger than those the database has seen,
/// so it is not fenced out, and the former holder is.
async fn tokens_stay_ahead_when_redis_forgets_a_lease(db: TestDb) {
    let store = migrated(&db).await;
    let redis = TestRedis::new().await;
    let leases = &redis.leases;
    let a = leases.acquire("relay", "a", 60_000).await.unwrap().unwrap();
    assert!(check(store, &a).await);
    // The next token comes from a later millisecond, as it does after a restart.
    let (clock, token) = (&redis, a.token);
    eventually("Redis's clock passes a's token", move || async move {
        clock.now_ms().await > token
    })
    .await;
    let _: i64 = ::redis::cmd("DEL")
        .arg(redis.key("relay"))
        .query_async(&mut redis.connection.clone())
        .await
        .unwrap();
    assert!(leases.state("relay").await.unwrap().is_none(), "forgotten");
    let b = leases.acquire("relay", "b", 60_000).await.unwrap().unwrap();
    assert!(b.token > a.token, "{b:?} after {a:?}");
    assert!(check(store, &b).await);
    assert!(!check(store, &a).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_leader_is_replaced_within_twice_the_ttl() {
    let redis = TestRedis::new().await;
    crate::a_dead_leader_is_replaced(&redis.leases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_whose_lease_is_taken_is_told_to_stop() {
    let redis = TestRedis::new().await;
    crate::a_leader_is_told_to_stop(&redis.leases, redis.run_out("relay")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_releases_the_lease_at_once() {
    let redis = TestRedis::new().await;
    crate::shutdown_releases(&redis.leases).await;
}

/// A Redis that is down makes each operation fail (quickly, so `lead` retries), and leases
/// work once it is up, with no new [`Leases`]. Then it restarts without its data: tokens
/// carry on above the old ones, so the database refuses the former holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_wait_out_a_redis_that_is_down() {
    let mut server = PrivateServer::new(find_binary("redis-server", &[]), |port, data| {
        [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
        ]
        .iter()
        .map(Into::into)
        .chain([data.into()])
        .collect()
    });
    let url = format!("redis://127.0.0.1:{}", server.port);
    let mut options = RedisLeaseOptions::new(&url);
    options.connect_timeout = Duration::from_secs(1);
    let leases = Leases::redis(options).unwrap();
    let asked = Instant::now();
    let err = leases.acquire("relay", "a", 60_000).await.unwrap_err();
    assert!(matches!(err, LeaseError::Redis(_)), "{err:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    assert!(leases.ping().await.is_err());

    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    server.start_again(deadline).await;
    let a = acquired(&leases, "a").await;
    let db = TestDb::sqlite().await;
    let store = migrated(&db).await;
    assert!(check(store, &a).await);

    server.kill().await;
    assert!(leases.holds(&a).await.is_err());
    server.start_again(deadline).await;
    let b = acquired(&leases, "b").await;
    assert!(b.token > a.token, "{b:?} after {a:?}");
    assert!(check(store, &b).await);
    assert!(!check(store, &a).await);
}

/// Takes lease `relay` for `holder`, retrying while Redis does not answer (10 s at most).
async fn acquired(leases: &Leases, holder: &str) -> Fence {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match leases.acquire("relay", holder, 60_000).await {
            Ok(Some(fence)) => return fence,
            Ok(None) => panic!("the lease is free"),
            Err(err) => assert!(Instant::now() < until, "Redis is back, yet: {err:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn options_that_cannot_work_fail_at_once() {
    let free = format!("redis://127.0.0.1:{}", free_port());
    for (url, prefix, says) in [
        (free.as_str(), "", "key prefix"),
        (free.as_str(), "has space", "key prefix"),
        ("http://user:hunter2@h:6379", "herald", "not valid"),
    ] {
        let mut options = RedisLeaseOptions::new(url);
        options.key_prefix = prefix.to_owned();
        let err = Leases::redis(options).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, LeaseError::Invalid(_)), "{err:?}");
        assert!(text.contains(says), "{text}");
        assert!(!text.contains("hunter2"), "the URL is not echoed: {text}");
    }
}
