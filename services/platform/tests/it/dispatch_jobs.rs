//! `/v1/dispatch-jobs` and `POST /v1/subscriptions/{id}/replay`: listing, filtering and paging
//! jobs with their attempts, retrying one, and replaying a subscription's events. Jobs and the
//! events they deliver are written straight into the router's tables, as the dispatcher and
//! the router would.

use std::collections::BTreeSet;

use axum::Router;
use axum::body::Body;
use axum::http::StatusCode;
use herald_core::id::{DispatchJobId, SubscriptionId};
use herald_testing::{TestDb, on_both_stores};
use serde_json::{Value, json};
use time::{OffsetDateTime, UtcOffset};

use crate::support::{
    DispatchEvent, NewAttempt, NewJob, app, assert_invalid, call, count, get, insert_attempt,
    insert_events, insert_job, job_budget, now_ms, parse_time, rfc3339, send,
};

/// 2021-02-25T15:02:10.123Z.
const BASE_MS: i64 = 1_614_265_330_123;

async fn subscription(app: &Router, event_types: Value, fifo: bool) -> SubscriptionId {
    let (status, created) = send(
        app,
        "POST",
        "/subscriptions",
        &json!({
            "name": "jobs", "event_types": event_types, "url": "https://example.com/hook",
            "fifo": fifo,
        }),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["id"].as_str().unwrap().parse().unwrap()
}

/// `GET /dispatch-jobs?{query}`, which must answer 200.
async fn jobs(app: &Router, query: &str) -> Value {
    let (status, page) = get(app, &format!("/dispatch-jobs?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{query}: {page}");
    page
}

/// The ids of a page's jobs, in order.
fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["id"].as_str().unwrap().to_owned())
        .collect()
}

fn texts(ids: &[DispatchJobId]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

async fn lists_jobs_newest_first_and_filters_them(db: TestDb) {
    let app = app(&db).await;
    let store = db.store();
    let a = subscription(&app, json!(["orders.*"]), false).await;
    let b = subscription(&app, json!(["**"]), true).await;
    let events = [
        DispatchEvent::new("orders.created", BASE_MS),
        DispatchEvent::new("orders.paid", BASE_MS + 1),
        DispatchEvent::new("orders.shipped", BASE_MS + 2).keyed("order-9"),
    ];
    insert_events(store, &events).await;
    let (e1, e2, e3) = (&events[0].id, &events[1].id, &events[2].id);

    let delivered = insert_job(
        store,
        &NewJob {
            attempts: 1,
            ..NewJob::new(a, e1, "delivered")
        },
    )
    .await;
    let dead = insert_job(
        store,
        &NewJob {
            attempts: 3,
            last_error: Some("the endpoint answered 500"),
            ..NewJob::new(a, e2, "dead")
        },
    )
    .await;
    let pending_b = insert_job(store, &NewJob::new(b, e1, "pending")).await;
    let delivering = insert_job(
        store,
        &NewJob {
            group_key: Some("order-9"),
            ..NewJob::new(b, e3, "delivering")
        },
    )
    .await;
    let pending_a = insert_job(store, &NewJob::new(a, e3, "pending")).await;

    let all = jobs(&app, "").await;
    assert_eq!(
        ids(&all),
        texts(&[pending_a, delivering, pending_b, dead, delivered]),
        "newest first"
    );
    assert_eq!(all["next_cursor"], Value::Null, "one page");

    let cases: Vec<(String, Vec<DispatchJobId>)> = vec![
        (
            format!("subscription_id={a}"),
            vec![pending_a, dead, delivered],
        ),
        (format!("subscription_id={b}"), vec![delivering, pending_b]),
        (format!("subscription_id={}", SubscriptionId::new()), vec![]),
        ("status=pending".into(), vec![pending_a, pending_b]),
        ("status=delivering".into(), vec![delivering]),
        ("status=delivered".into(), vec![delivered]),
        ("status=dead".into(), vec![dead]),
        (format!("event_id={e1}"), vec![pending_b, delivered]),
        (format!("event_id={e3}"), vec![pending_a, delivering]),
        ("event_id=evt_unknown".into(), vec![]),
        (
            format!("subscription_id={a}&status=pending"),
            vec![pending_a],
        ),
        (
            format!("subscription_id={b}&event_id={e1}"),
            vec![pending_b],
        ),
        (
            format!("subscription_id={a}&status=dead&event_id={e2}"),
            vec![dead],
        ),
        (
            format!("subscription_id={a}&status=dead&event_id={e1}"),
            vec![],
        ),
    ];
    for (query, expected) in cases {
        assert_eq!(ids(&jobs(&app, &query).await), texts(&expected), "{query}");
    }

    // What each job shows.
    let (status, job) = get(&app, &format!("/dispatch-jobs/{dead}")).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["id"], dead.to_string());
    assert!(job["id"].as_str().unwrap().starts_with("job_"));
    assert_eq!(job["subscription_id"], a.to_string());
    assert_eq!(job["event_id"], e2.as_str());
    assert_eq!(job["event_type"], "orders.paid");
    assert_eq!(job["group_key"], Value::Null);
    assert_eq!(job["status"], "dead");
    assert_eq!(
        job["next_attempt_at"],
        Value::Null,
        "only pending jobs are due"
    );
    assert_eq!(job["last_error"], "the endpoint answered 500");
    assert_eq!(job["attempts"], json!([]));
    parse_time(&job["created_at"]);
    parse_time(&job["updated_at"]);
    assert_eq!(all["data"][3], job, "the list shows the same");

    let (_, job) = get(&app, &format!("/dispatch-jobs/{delivering}")).await;
    assert_eq!(job["status"], "delivering");
    assert_eq!(job["group_key"], "order-9");
    assert_eq!(job["event_type"], "orders.shipped");
    let (_, job) = get(&app, &format!("/dispatch-jobs/{pending_a}")).await;
    assert_eq!(job["status"], "pending");
    parse_time(&job["next_attempt_at"]);
    assert_eq!(job["last_error"], Value::Null);
}

async fn bad_list_queries_are_problems(db: TestDb) {
    let app = app(&db).await;
    let a = subscription(&app, json!(["**"]), false).await;
    let event = DispatchEvent::new("x.y", BASE_MS);
    insert_events(db.store(), std::slice::from_ref(&event)).await;
    insert_job(db.store(), &NewJob::new(a, &event.id, "pending")).await;

    let job_id = DispatchJobId::new();
    let cases: Vec<(String, Vec<&str>)> = vec![
        ("status=bogus".into(), vec!["#/query/status"]),
        ("status=DEAD".into(), vec!["#/query/status"]),
        ("status=".into(), vec!["#/query/status"]),
        (
            "subscription_id=nope".into(),
            vec!["#/query/subscription_id"],
        ),
        (
            format!("subscription_id={job_id}"),
            vec!["#/query/subscription_id"],
        ),
        ("limit=0".into(), vec!["#/query/limit"]),
        ("limit=501".into(), vec!["#/query/limit"]),
        ("cursor=abc".into(), vec!["#/query/cursor"]),
        ("cursor=0".into(), vec!["#/query/cursor"]),
        ("cursor=-3".into(), vec!["#/query/cursor"]),
        (
            "status=x&limit=0&cursor=x&subscription_id=x".into(),
            vec![
                "#/query/limit",
                "#/query/subscription_id",
                "#/query/status",
                "#/query/cursor",
            ],
        ),
    ];
    for (query, expected) in cases {
        let answer = get(&app, &format!("/dispatch-jobs?{query}")).await;
        assert_eq!(
            answer.0,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {}",
            answer.1
        );
        assert_eq!(crate::support::pointers(&answer.1), expected, "{query}");
    }
    // Values that are not even of the right type, and unknown parameters.
    for query in ["limit=abc", "limit=-1", "colour=red"] {
        let (status, body) = get(&app, &format!("/dispatch-jobs?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert_eq!(body["code"], "invalid_query", "{body}");
    }
    // The limits themselves are fine.
    assert_eq!(ids(&jobs(&app, "limit=1").await).len(), 1);
    assert_eq!(ids(&jobs(&app, "limit=500").await).len(), 1);
}

async fn pages_return_every_job_once(db: TestDb) {
    let app = app(&db).await;
    let store = db.store();
    let a = subscription(&app, json!(["**"]), false).await;
    let b = subscription(&app, json!(["**"]), false).await;
    let events: Vec<DispatchEvent> = (0..12)
        .map(|i| DispatchEvent::new("page.test", BASE_MS + i))
        .collect();
    insert_events(store, &events).await;
    let mut inserted = Vec::new();
    let mut a_jobs = Vec::new();
    for event in &events {
        for subscription in [a, b] {
            let job = insert_job(store, &NewJob::new(subscription, &event.id, "pending")).await;
            inserted.push(job);
            if subscription == a {
                a_jobs.push(job);
            }
        }
    }
    inserted.reverse();
    a_jobs.reverse();
    let newest_first = texts(&inserted);

    // Walks the pages of `query`, returning each page's size and all ids.
    async fn walk(app: &Router, query: &str, limit: u32) -> (Vec<usize>, Vec<String>) {
        let mut sizes = Vec::new();
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..100 {
            let mut q = format!("{query}&limit={limit}");
            if let Some(cursor) = &cursor {
                q.push_str(&format!("&cursor={cursor}"));
            }
            let page = jobs(app, &q).await;
            let page_ids = ids(&page);
            sizes.push(page_ids.len());
            all.extend(page_ids);
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return (sizes, all),
            }
        }
        panic!("{query}: more than 100 pages");
    }

    let (sizes, all) = walk(&app, "", 5).await;
    assert_eq!(sizes, [5, 5, 5, 5, 4]);
    assert_eq!(all, newest_first, "every job once, newest first");

    let (sizes, all) = walk(&app, &format!("subscription_id={a}"), 4).await;
    assert_eq!(sizes, [4, 4, 4], "no empty page after an exact fit");
    let only_a: Vec<String> = texts(&a_jobs);
    assert_eq!(all, only_a, "every job of `a` once, newest first");
    let one_page = jobs(&app, &format!("subscription_id={a}&limit=500")).await;
    assert_eq!(all, ids(&one_page), "paging returns what one big page does");

    let (sizes, all) = walk(&app, "", 1).await;
    assert_eq!(sizes.len(), 24);
    assert_eq!(all, newest_first);
    let (sizes, all) = walk(&app, "", 500).await;
    assert_eq!(sizes, [24]);
    assert_eq!(all, newest_first);
}

async fn jobs_show_their_attempts_in_order(db: TestDb) {
    let app = app(&db).await;
    let store = db.store();
    let a = subscription(&app, json!(["**"]), false).await;
    let event = DispatchEvent::new("orders.created", BASE_MS);
    insert_events(store, std::slice::from_ref(&event)).await;
    let job = insert_job(
        store,
        &NewJob {
            attempts: 3,
            last_error: Some("the endpoint answered 503"),
            ..NewJob::new(a, &event.id, "dead")
        },
    )
    .await;
    let untried = insert_job(store, &NewJob::new(a, &event.id, "pending")).await;
    // Recorded out of order, to show the answer sorts them.
    for attempt in [
        NewAttempt {
            number: 3,
            started_at: BASE_MS + 180_000,
            status_code: Some(503),
            latency_ms: 45,
            outcome: "failed",
            error: Some("the endpoint answered 503"),
        },
        NewAttempt {
            number: 1,
            started_at: BASE_MS,
            status_code: Some(500),
            latency_ms: 120,
            outcome: "retry",
            error: Some("the endpoint answered 500"),
        },
        NewAttempt {
            number: 2,
            started_at: BASE_MS + 60_000,
            status_code: None,
            latency_ms: 10_000,
            outcome: "retry",
            error: Some("timed out after 10s"),
        },
    ] {
        insert_attempt(store, job, &attempt).await;
    }
    let expected = json!([
        {
            "number": 1, "started_at": "2021-02-25T15:02:10.123Z", "status_code": 500,
            "latency_ms": 120, "outcome": "retry", "error": "the endpoint answered 500",
        },
        {
            "number": 2, "started_at": "2021-02-25T15:03:10.123Z", "status_code": null,
            "latency_ms": 10000, "outcome": "retry", "error": "timed out after 10s",
        },
        {
            "number": 3, "started_at": "2021-02-25T15:05:10.123Z", "status_code": 503,
            "latency_ms": 45, "outcome": "failed", "error": "the endpoint answered 503",
        },
    ]);
    let (status, fetched) = get(&app, &format!("/dispatch-jobs/{job}")).await;
    assert_eq!(status, StatusCode::OK, "{fetched}");
    assert_eq!(fetched["attempts"], expected);
    let listed = jobs(&app, "").await;
    assert_eq!(ids(&listed), texts(&[untried, job]));
    assert_eq!(listed["data"][1], fetched);
    assert_eq!(listed["data"][0]["attempts"], json!([]));

    // A delivered job's single attempt.
    let delivered = insert_job(
        store,
        &NewJob {
            attempts: 1,
            ..NewJob::new(a, &event.id, "delivered")
        },
    )
    .await;
    insert_attempt(
        store,
        delivered,
        &NewAttempt {
            number: 1,
            started_at: BASE_MS - 123,
            status_code: Some(204),
            latency_ms: 7,
            outcome: "delivered",
            error: None,
        },
    )
    .await;
    let (_, fetched) = get(&app, &format!("/dispatch-jobs/{delivered}")).await;
    assert_eq!(
        fetched["attempts"],
        json!([{
            "number": 1, "started_at": rfc3339(BASE_MS - 123), "status_code": 204,
            "latency_ms": 7, "outcome": "delivered", "error": null,
        }])
    );
}

async fn bad_and_unknown_job_ids(db: TestDb) {
    let app = app(&db).await;
    let subscription_id = SubscriptionId::new().to_string();
    for bad in ["nope", "job_", subscription_id.as_str()] {
        assert_invalid(
            &get(&app, &format!("/dispatch-jobs/{bad}")).await,
            &["#/path/id"],
        );
        assert_invalid(
            &call(
                &app,
                "POST",
                &format!("/dispatch-jobs/{bad}/retry"),
                None,
                Body::empty(),
            )
            .await,
            &["#/path/id"],
        );
    }
    let unknown = DispatchJobId::new();
    for (status, body) in [
        get(&app, &format!("/dispatch-jobs/{unknown}")).await,
        call(
            &app,
            "POST",
            &format!("/dispatch-jobs/{unknown}/retry"),
            None,
            Body::empty(),
        )
        .await,
    ] {
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["code"], "not_found");
    }
    assert_eq!(count(db.store(), "jobs").await, 0);
}

async fn retries_finished_jobs_but_not_one_in_flight(db: TestDb) {
    let app = app(&db).await;
    let store = db.store();
    let a = subscription(&app, json!(["**"]), false).await;
    let event = DispatchEvent::new("orders.created", BASE_MS);
    insert_events(store, std::slice::from_ref(&event)).await;
    let dead = insert_job(
        store,
        &NewJob {
            attempts: 3,
            last_error: Some("the endpoint answered 500"),
            ..NewJob::new(a, &event.id, "dead")
        },
    )
    .await;
    for number in 1..=3 {
        insert_attempt(
            store,
            dead,
            &NewAttempt {
                number,
                started_at: BASE_MS + i64::from(number),
                status_code: Some(500),
                latency_ms: 5,
                outcome: if number == 3 { "failed" } else { "retry" },
                error: Some("the endpoint answered 500"),
            },
        )
        .await;
    }
    let before = now_ms();
    let (status, retried) = call(
        &app,
        "POST",
        &format!("/dispatch-jobs/{dead}/retry"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{retried}");
    assert_eq!(retried["id"], dead.to_string());
    assert_eq!(retried["status"], "pending");
    let due = parse_time(&retried["next_attempt_at"]);
    let before = OffsetDateTime::from_unix_timestamp_nanos(i128::from(before) * 1_000_000).unwrap();
    assert!(
        due >= before && due <= OffsetDateTime::now_utc(),
        "due now: {due} (asked at {before})"
    );
    assert_eq!(
        retried["attempts"].as_array().unwrap().len(),
        3,
        "the history stays"
    );
    assert_eq!(
        get(&app, &format!("/dispatch-jobs/{dead}")).await.1,
        retried
    );
    assert_eq!(
        job_budget(store, dead).await,
        (3, 3),
        "a fresh attempt budget"
    );
    let pending = jobs(&app, "status=pending").await;
    assert_eq!(ids(&pending), texts(&[dead]));

    // Delivered and pending jobs can be retried too.
    let delivered = insert_job(
        store,
        &NewJob {
            attempts: 1,
            ..NewJob::new(a, &event.id, "delivered")
        },
    )
    .await;
    let waiting = insert_job(store, &NewJob::new(a, &event.id, "pending")).await;
    for job in [delivered, waiting] {
        let (status, retried) = call(
            &app,
            "POST",
            &format!("/dispatch-jobs/{job}/retry"),
            None,
            Body::empty(),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{retried}");
        assert_eq!(retried["status"], "pending");
    }
    assert_eq!(job_budget(store, delivered).await, (1, 1));

    // One being delivered is a conflict, and stays as it is.
    let in_flight = insert_job(
        store,
        &NewJob {
            attempts: 1,
            ..NewJob::new(a, &event.id, "delivering")
        },
    )
    .await;
    let (_, before) = get(&app, &format!("/dispatch-jobs/{in_flight}")).await;
    let (status, problem) = call(
        &app,
        "POST",
        &format!("/dispatch-jobs/{in_flight}/retry"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["code"], "job_in_flight");
    assert_eq!(
        get(&app, &format!("/dispatch-jobs/{in_flight}")).await.1,
        before
    );
    assert_eq!(job_budget(store, in_flight).await, (1, 0));
}

async fn replay(app: &Router, id: SubscriptionId, since: String) -> (StatusCode, Value) {
    send(
        app,
        "POST",
        &format!("/subscriptions/{id}/replay"),
        &json!({"since": since}),
    )
    .await
}

async fn replays_wanted_events_since_a_time(db: TestDb) {
    let app = app(&db).await;
    let store = db.store();
    let orders = subscription(&app, json!(["orders.*"]), false).await;
    let users = subscription(&app, json!(["users.**"]), true).await;
    let idle = subscription(&app, json!(["billing.*"]), false).await;
    let since = now_ms() - 2 * 3_600_000;
    let minute = 60_000;
    let old = DispatchEvent::new("orders.created", since - 1);
    let at = DispatchEvent::new("orders.paid", since);
    let shipped = DispatchEvent::new("orders.shipped", since + 30 * minute).keyed("o-1");
    let user = DispatchEvent::new("users.profile.changed", since + 30 * minute).keyed("u-1");
    let deep = DispatchEvent::new("orders.item.added", since + 45 * minute);
    let later = DispatchEvent::new("orders.created", since + 60 * minute).keyed("o-1");
    insert_events(
        store,
        &[
            old.clone(),
            at.clone(),
            shipped.clone(),
            user.clone(),
            deep.clone(),
            later.clone(),
        ],
    )
    .await;

    let (status, body) = replay(&app, orders, rfc3339(since)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body, json!({"queued": 3}));
    let page = jobs(&app, &format!("subscription_id={orders}")).await;
    let events: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|job| job["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [later.id.as_str(), shipped.id.as_str(), at.id.as_str()],
        "the wanted events at or after `since`, oldest queued first"
    );
    for job in page["data"].as_array().unwrap() {
        assert_eq!(job["status"], "pending", "{job}");
        assert_eq!(job["group_key"], Value::Null, "not a FIFO subscription");
        assert_eq!(job["attempts"], json!([]));
        parse_time(&job["next_attempt_at"]);
    }

    // A FIFO subscription's replayed jobs keep their partition key's order.
    let (status, body) = replay(&app, users, rfc3339(since - 3_600_000)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["queued"], 1);
    let page = jobs(&app, &format!("subscription_id={users}")).await;
    assert_eq!(page["data"][0]["event_id"], user.id.as_str());
    assert_eq!(page["data"][0]["group_key"], "u-1");
    assert_eq!(page["data"][0]["event_type"], "users.profile.changed");

    let (status, body) = replay(&app, idle, rfc3339(since - 3_600_000)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["queued"], 0, "nothing it wants");

    let (_, body) = replay(&app, orders, rfc3339(now_ms())).await;
    assert_eq!(body["queued"], 0, "nothing since now");

    // The same instant in another offset; a second replay queues the events again.
    let shifted = OffsetDateTime::from_unix_timestamp_nanos(i128::from(since) * 1_000_000)
        .unwrap()
        .to_offset(UtcOffset::from_hms(2, 0, 0).unwrap())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    assert!(shifted.ends_with("+02:00"), "{shifted}");
    let (status, body) = replay(&app, orders, shifted).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["queued"], 3);
    assert_eq!(count(store, "jobs").await, 3 + 1 + 3);
    assert_eq!(
        count(store, "dispatch_events").await,
        6,
        "no event was added"
    );
}

async fn replays_more_than_a_page_of_simultaneous_events(db: TestDb) {
    let app = app(&db).await;
    let store = db.store();
    let wanted = subscription(&app, json!(["bulk.a"]), false).await;
    let at = now_ms() - 600_000;
    let mut events: Vec<DispatchEvent> = (0..10)
        .map(|_| DispatchEvent::new("bulk.a", at - 1))
        .collect();
    events.extend(
        (0..1_200).map(|i| DispatchEvent::new(if i % 2 == 0 { "bulk.a" } else { "bulk.b" }, at)),
    );
    insert_events(store, &events).await;
    let expected: BTreeSet<String> = events[10..]
        .iter()
        .filter(|e| e.event_type == "bulk.a")
        .map(|e| e.id.clone())
        .collect();

    let (status, body) = send(
        &app,
        "POST",
        &format!("/subscriptions/{wanted}/replay"),
        &json!({"since": rfc3339(at)}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["queued"], 600, "{body}");

    let first = jobs(&app, "limit=500").await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = jobs(&app, &format!("limit=500&cursor={cursor}")).await;
    assert_eq!(second["next_cursor"], Value::Null);
    let replayed: Vec<String> = [&first, &second]
        .iter()
        .flat_map(|page| page["data"].as_array().unwrap().iter())
        .map(|job| job["event_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(replayed.len(), 600);
    let replayed: BTreeSet<String> = replayed.into_iter().collect();
    assert_eq!(replayed, expected, "each wanted event once");
}

async fn bad_replays_are_problems(db: TestDb) {
    let app = app(&db).await;
    let id = subscription(&app, json!(["**"]), false).await;
    insert_events(db.store(), &[DispatchEvent::new("any.thing", BASE_MS)]).await;
    let path = format!("/subscriptions/{id}/replay");
    let tomorrow = rfc3339(now_ms() + 86_400_000);
    for since in [
        "yesterday",
        "",
        "2021-02-25",
        "2021-02-25 15:02:10",
        tomorrow.as_str(),
    ] {
        assert_invalid(
            &send(&app, "POST", &path, &json!({"since": since})).await,
            &["/since"],
        );
    }
    for body in [
        json!({}),
        json!({"since": 5}),
        json!({"since": "2021-02-25T15:02:10Z", "until": "2021-02-26T15:02:10Z"}),
    ] {
        let (status, problem) = send(&app, "POST", &path, &body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {problem}"
        );
    }
    let (status, problem) = call(&app, "POST", &path, Some("application/json"), "{\"since\"").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["code"], "malformed_json");
    let (status, _) = call(
        &app,
        "POST",
        &path,
        None,
        r#"{"since": "2021-02-25T15:02:10Z"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    let (status, problem) = send(
        &app,
        "POST",
        &format!("/subscriptions/{}/replay", SubscriptionId::new()),
        &json!({"since": "2021-02-25T15:02:10Z"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{problem}");
    assert_eq!(problem["code"], "not_found");
    assert_eq!(count(db.store(), "jobs").await, 0, "nothing was queued");
}

async fn deleting_a_subscription_deletes_its_jobs(db: TestDb) {
    let app = app(&db).await;
    let store = db.store();
    let doomed = subscription(&app, json!(["**"]), false).await;
    let kept = subscription(&app, json!(["**"]), false).await;
    let event = DispatchEvent::new("orders.created", BASE_MS);
    insert_events(store, std::slice::from_ref(&event)).await;
    let mut doomed_jobs = Vec::new();
    let mut kept_jobs = Vec::new();
    for status in ["pending", "delivered", "dead"] {
        doomed_jobs.push(insert_job(store, &NewJob::new(doomed, &event.id, status)).await);
        kept_jobs.push(insert_job(store, &NewJob::new(kept, &event.id, status)).await);
    }
    for job in doomed_jobs.iter().chain(&kept_jobs) {
        insert_attempt(
            store,
            *job,
            &NewAttempt {
                number: 1,
                started_at: BASE_MS,
                status_code: Some(500),
                latency_ms: 1,
                outcome: "retry",
                error: None,
            },
        )
        .await;
    }

    let (status, _) = call(
        &app,
        "DELETE",
        &format!("/subscriptions/{doomed}"),
        None,
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        ids(&jobs(&app, &format!("subscription_id={doomed}")).await),
        Vec::<String>::new()
    );
    for job in &doomed_jobs {
        let (status, _) = get(&app, &format!("/dispatch-jobs/{job}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    kept_jobs.reverse();
    assert_eq!(ids(&jobs(&app, "").await), texts(&kept_jobs));
    assert_eq!(count(store, "jobs").await, 3);
    assert_eq!(
        count(store, "attempts").await,
        3,
        "the attempts went with their jobs"
    );
    assert_eq!(
        count(store, "dispatch_events").await,
        1,
        "the event stays for replays"
    );
}

on_both_stores!(
    lists_jobs_newest_first_and_filters_them,
    bad_list_queries_are_problems,
    pages_return_every_job_once,
    jobs_show_their_attempts_in_order,
    bad_and_unknown_job_ids,
    retries_finished_jobs_but_not_one_in_flight,
    replays_wanted_events_since_a_time,
    replays_more_than_a_page_of_simultaneous_events,
    bad_replays_are_problems,
    deleting_a_subscription_deletes_its_jobs,
);
