//! Building profiles from identity's events through the real inbox consumer.

use herald_core::id::UserId;
use herald_inbox::Processed;
use herald_testing::{TestDb, on_both_stores};
use herald_users::profile;
use serde_json::json;

use crate::support::{Setup, snapshot, user_event};

on_both_stores!(
    registered_then_updated,
    stale_and_replayed_events_change_nothing,
    other_event_types_are_skipped,
    bad_data_fails_permanently_and_changes_nothing,
);

async fn registered_then_updated(db: TestDb) {
    let setup = Setup::new(&db).await;
    let id = setup.register("ada@example.com").await;
    let first = profile::get(&setup.state.store, id).await.unwrap();
    assert_eq!(first.email, "ada@example.com");
    assert_eq!(first.username.as_deref(), Some("ada"));
    assert_eq!(first.version, 1);

    let mut changed = snapshot(id, "ada@lovelace.dev", 2);
    changed["avatar_url"] = json!("https://img.example.com/ada.png");
    let event = user_event("identity.user.updated", &changed);
    assert_eq!(setup.deliver(&event).await, Processed::Done);
    let second = profile::get(&setup.state.store, id).await.unwrap();
    assert_eq!(second.email, "ada@lovelace.dev");
    assert_eq!(second.version, 2);
    assert_eq!(
        second.avatar_url.as_deref(),
        Some("https://img.example.com/ada.png")
    );
    assert_eq!(
        second.created_at, first.created_at,
        "registration time is kept"
    );
    // The same delivery again is a duplicate for the inbox.
    assert_eq!(setup.deliver(&event).await, Processed::Duplicate);
}

async fn stale_and_replayed_events_change_nothing(db: TestDb) {
    let setup = Setup::new(&db).await;
    let id = UserId::new();
    let v3 = user_event("identity.user.updated", &snapshot(id, "v3@example.com", 3));
    assert_eq!(setup.deliver(&v3).await, Processed::Done);
    // Older versions arrive later, as new events (new ids): recorded, but nothing moves back.
    for version in [1, 2, 3] {
        let old = user_event(
            "identity.user.updated",
            &snapshot(id, &format!("old{version}@example.com"), version),
        );
        assert_eq!(setup.deliver(&old).await, Processed::Done);
    }
    let stored = profile::get(&setup.state.store, id).await.unwrap();
    assert_eq!(stored.email, "v3@example.com");
    assert_eq!(stored.version, 3);
}

async fn other_event_types_are_skipped(db: TestDb) {
    let setup = Setup::new(&db).await;
    let id = UserId::new();
    let event = user_event(
        "identity.session.revoked",
        &snapshot(id, "s@example.com", 1),
    );
    assert_eq!(setup.deliver(&event).await, Processed::Skipped);
    let err = profile::get(&setup.state.store, id).await.unwrap_err();
    assert_eq!(err.status().as_u16(), 404);
}

async fn bad_data_fails_permanently_and_changes_nothing(db: TestDb) {
    let setup = Setup::new(&db).await;
    let id = UserId::new();
    let cases = [
        (json!({"email": "a@example.com", "version": 1}), "user_id"),
        (snapshot(id, "not-an-address", 1), "email must be"),
        (
            snapshot(id, "a@example.com", 0),
            "version must be 1 or more",
        ),
        (
            {
                let mut data = snapshot(id, "a@example.com", 1);
                data["avatar_url"] = json!("javascript:alert(1)");
                data
            },
            "avatar_url must be",
        ),
        (
            json!({"user_id": "evt_068k2m3v5c7q0w1x2y3z4a5b6c", "email": "a@b.c", "version": 1}),
            "usr_",
        ),
    ];
    for (data, expected) in cases {
        let event = user_event("identity.user.registered", &data);
        match setup.deliver(&event).await {
            Processed::Failed { error, permanent } => {
                assert!(permanent, "{error}");
                assert!(
                    error.contains(expected),
                    "{error} should mention {expected}"
                );
            }
            other => panic!("{data} was {other:?}"),
        }
    }
    let err = profile::get(&setup.state.store, id).await.unwrap_err();
    assert_eq!(err.status().as_u16(), 404, "nothing was stored");
}
