//! Dispatch jobs in the store, on both engines: FIFO groups release one job at a time and
//! hold back only their own key, leases expire, are renewed only by their holder and fence,
//! attempts are recorded.

use herald_router::job::{self, Attempt, Filter, Next, Status};
use herald_testing::{TestDb, on_both_stores};

use crate::support::{dispatch, migrate, subscribe};

fn delivered_at(ms: i64) -> Attempt {
    Attempt {
        started_at: ms,
        status_code: Some(200),
        latency_ms: 3,
        outcome: "delivered",
        error: None,
    }
}

async fn a_fifo_group_releases_its_jobs_one_at_a_time(db: TestDb) {
    migrate(&db).await;
    let store = db.store();
    let fifo = subscribe(store, "test.*", "http://127.0.0.1:9/hook", true, 5).await;
    let subs = [(fifo.id, true)];
    for (id, key) in [
        ("a1", "A"),
        ("a2", "A"),
        ("b1", "B"),
        ("a3", "A"),
        ("n1", ""),
    ] {
        let key = (!key.is_empty()).then_some(key);
        dispatch(store, id, key, &subs).await;
    }
    // Only each group's head, and the key-less event, may go.
    let first = job::claim(store, fifo.id, 10, 60_000).await.unwrap();
    let mut ids: Vec<&str> = first.iter().map(|c| c.event_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["a1", "b1", "n1"]);
    assert!(
        job::claim(store, fifo.id, 10, 60_000)
            .await
            .unwrap()
            .is_empty()
    );

    // A retry keeps its group waiting; finishing it releases the next.
    let a1 = first.iter().find(|c| c.event_id == "a1").unwrap();
    let retry = Attempt {
        status_code: Some(503),
        outcome: "retry",
        error: Some("the endpoint answered 503".to_owned()),
        ..delivered_at(1)
    };
    assert!(
        job::finish(store, a1, &retry, Next::RetryAt(0))
            .await
            .unwrap()
    );
    let again = job::claim(store, fifo.id, 10, 60_000).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].event_id, "a1");
    assert_eq!(again[0].attempts, 1);
    assert!(
        job::finish(store, &again[0], &delivered_at(2), Next::Delivered)
            .await
            .unwrap()
    );
    let next = job::claim(store, fifo.id, 10, 60_000).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].event_id, "a2");

    // The API shows both attempts of a1, in order.
    let page = job::list(
        store,
        &Filter {
            event_id: Some("a1".to_owned()),
            limit: 10,
            ..Filter::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(page.data.len(), 1);
    let shown = &page.data[0];
    assert_eq!(shown.status, Status::Delivered);
    let codes: Vec<Option<u16>> = shown.attempts.iter().map(|a| a.status_code).collect();
    assert_eq!(codes, [Some(503), Some(200)]);
}

async fn an_expired_lease_is_claimed_again_and_the_old_holder_is_fenced(db: TestDb) {
    migrate(&db).await;
    let store = db.store();
    let sub = subscribe(store, "test.*", "http://127.0.0.1:9/hook", false, 5).await;
    dispatch(store, "e1", None, &[(sub.id, false)]).await;
    let first = job::claim(store, sub.id, 1, 0).await.unwrap();
    assert_eq!(first.len(), 1);
    // The claim carries the body to deliver.
    let body = first[0].body.as_deref().unwrap();
    assert!(body.contains(r#""id":"e1""#), "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = job::claim(store, sub.id, 1, 60_000).await.unwrap();
    assert_eq!(second.len(), 1, "an expired lease makes the job claimable");
    assert_ne!(first[0].lease, second[0].lease);
    assert!(
        !job::finish(store, &first[0], &delivered_at(1), Next::Delivered)
            .await
            .unwrap(),
        "the first holder lost its lease and cannot finish the job"
    );
    assert!(
        job::finish(store, &second[0], &delivered_at(2), Next::Delivered)
            .await
            .unwrap()
    );
    let shown = job::get(store, first[0].id).await.unwrap();
    assert_eq!(shown.status, Status::Delivered);
    assert_eq!(
        shown.attempts.len(),
        1,
        "only the holder's attempt is recorded"
    );
}

async fn a_retried_dead_job_gets_a_fresh_budget(db: TestDb) {
    migrate(&db).await;
    let store = db.store();
    let sub = subscribe(store, "test.*", "http://127.0.0.1:9/hook", false, 1).await;
    dispatch(store, "e1", None, &[(sub.id, false)]).await;
    let claimed = job::claim(store, sub.id, 1, 60_000).await.unwrap();
    let failed = Attempt {
        status_code: Some(500),
        outcome: "retry",
        error: Some("boom".to_owned()),
        ..delivered_at(1)
    };
    assert!(
        job::finish(store, &claimed[0], &failed, Next::Dead)
            .await
            .unwrap()
    );
    let dead = job::list(
        store,
        &Filter {
            status: Some(Status::Dead),
            limit: 10,
            ..Filter::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(dead.data.len(), 1);
    assert_eq!(dead.data[0].last_error.as_deref(), Some("boom"));

    let retried = job::retry(store, claimed[0].id).await.unwrap();
    assert_eq!(retried.status, Status::Pending);
    let again = job::claim(store, sub.id, 1, 60_000).await.unwrap();
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[0].budget_from, 1, "earlier attempts no longer count");
    // While it is being delivered, a retry is refused.
    let refused = job::retry(store, claimed[0].id).await.unwrap_err();
    assert_eq!(refused.status(), 409);
}

/// The ids of the events the dispatcher has stored, in order.
async fn stored_events(store: &herald_store::Store) -> Vec<String> {
    let sql = "SELECT event_id FROM herald_dispatch_events ORDER BY event_id";
    match store {
        herald_store::Store::Postgres(pool) => sqlx::query_scalar(sql).fetch_all(pool).await,
        herald_store::Store::Sqlite(pool) => sqlx::query_scalar(sql).fetch_all(pool).await,
    }
    .unwrap()
}

async fn purge_removes_only_finished_jobs_and_unneeded_events(db: TestDb) {
    migrate(&db).await;
    let store = db.store();
    let sub = subscribe(store, "test.*", "http://127.0.0.1:9/hook", false, 5).await;
    let subs = [(sub.id, false)];
    for id in ["done-1", "done-2", "waiting"] {
        dispatch(store, id, None, &subs).await;
    }
    let claimed = job::claim(store, sub.id, 3, 60_000).await.unwrap();
    for job in &claimed {
        let next = if job.event_id == "waiting" {
            Next::RetryAt(i64::MAX / 2)
        } else {
            Next::Delivered
        };
        assert!(
            job::finish(store, job, &delivered_at(1), next)
                .await
                .unwrap()
        );
    }
    let all = Filter {
        limit: 10,
        ..Filter::default()
    };
    // Nothing is old enough yet.
    let none = job::purge(store, 0, 10).await.unwrap();
    assert_eq!(none, job::Purged::default());
    assert_eq!(job::list(store, &all).await.unwrap().data.len(), 3);

    // Batches are bounded; then the finished jobs go, and their events with them.
    let cutoff = i64::MAX / 4;
    let first = job::purge(store, cutoff, 1).await.unwrap();
    assert_eq!(first.jobs, 1);
    let second = job::purge(store, cutoff, 10).await.unwrap();
    assert_eq!(second.jobs, 1);
    assert_eq!(first.events + second.events, 2);
    let left = job::list(store, &all).await.unwrap().data;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].event_id, "waiting");
    assert_eq!(left[0].status, Status::Pending);
    assert_eq!(stored_events(store).await, ["waiting"]);
    assert_eq!(
        job::purge(store, cutoff, 10).await.unwrap(),
        job::Purged::default()
    );
}

async fn released_jobs_are_due_again_with_nothing_recorded(db: TestDb) {
    migrate(&db).await;
    let store = db.store();
    let fifo = subscribe(store, "test.*", "http://127.0.0.1:9/hook", true, 5).await;
    let subs = [(fifo.id, true)];
    dispatch(store, "k1", Some("K"), &subs).await;
    dispatch(store, "k2", Some("K"), &subs).await;
    dispatch(store, "n1", None, &subs).await;
    let claimed = job::claim(store, fifo.id, 10, 60_000).await.unwrap();
    assert_eq!(claimed.len(), 2, "k1 and n1; k2 waits behind k1");
    job::release(store, &claimed).await.unwrap();
    // Released, the same jobs are claimable at once, still first of their group, with no
    // attempt counted.
    let again = job::claim(store, fifo.id, 10, 60_000).await.unwrap();
    let mut ids: Vec<&str> = again.iter().map(|c| c.event_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["k1", "n1"]);
    assert!(again.iter().all(|c| c.attempts == 0));
    // A stale holder's release changes nothing: the new lease still finishes the job.
    job::release(store, &claimed).await.unwrap();
    assert!(
        job::claim(store, fifo.id, 10, 60_000)
            .await
            .unwrap()
            .is_empty(),
        "the new holder keeps its jobs"
    );
    for job in &again {
        assert!(
            job::finish(store, job, &delivered_at(1), Next::Delivered)
                .await
                .unwrap()
        );
    }
    let last = job::claim(store, fifo.id, 10, 60_000).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].event_id, "k2");
}

async fn a_renewal_extends_only_leases_still_held(db: TestDb) {
    migrate(&db).await;
    let store = db.store();
    let sub = subscribe(store, "test.*", "http://127.0.0.1:9/hook", false, 5).await;
    for id in ["e1", "e2", "e3"] {
        dispatch(store, id, None, &[(sub.id, false)]).await;
    }
    let pair = |c: &job::Claimed| (c.id, c.lease);
    let first = job::claim(store, sub.id, 3, 0).await.unwrap();
    assert_eq!(first.len(), 3);
    let e1 = first.iter().find(|c| c.event_id == "e1").unwrap();
    let e2 = first.iter().find(|c| c.event_id == "e2").unwrap();
    let e3 = first.iter().find(|c| c.event_id == "e3").unwrap();
    // e1 is finished by its holder, e2 runs out and another claim takes it.
    assert!(
        job::finish(store, e1, &delivered_at(1), Next::Delivered)
            .await
            .unwrap()
    );
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    job::renew(store, &[pair(e3)], herald_store::sql::now_ms() + 60_000)
        .await
        .unwrap();
    let taken = job::claim(store, sub.id, 3, 0).await.unwrap();
    assert_eq!(taken.len(), 1, "e3's renewed lease keeps it: {taken:?}");
    assert_eq!(taken[0].event_id, "e2");

    // One statement for all three: only e3 is still held under its claim's token, and a
    // lapsed lease nobody took (e2 under its new token) is extended all the same.
    let until = herald_store::sql::now_ms() + 60_000;
    let held = [pair(e1), pair(e2), pair(e3), pair(&taken[0])];
    let mut kept = job::renew(store, &held, until).await.unwrap();
    kept.sort();
    let mut want = vec![pair(e3), pair(&taken[0])];
    want.sort();
    assert_eq!(kept, want);
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    assert!(
        job::claim(store, sub.id, 3, 60_000)
            .await
            .unwrap()
            .is_empty(),
        "renewed leases keep their jobs"
    );
    assert!(
        !job::finish(store, e2, &delivered_at(2), Next::Delivered)
            .await
            .unwrap(),
        "the first holder of e2 lost it"
    );
    assert!(job::renew(store, &[], until).await.unwrap().is_empty());
}

on_both_stores!(
    a_renewal_extends_only_leases_still_held,
    released_jobs_are_due_again_with_nothing_recorded,
    purge_removes_only_finished_jobs_and_unneeded_events,
    a_fifo_group_releases_its_jobs_one_at_a_time,
    an_expired_lease_is_claimed_again_and_the_old_holder_is_fenced,
    a_retried_dead_job_gets_a_fresh_budget,
);
