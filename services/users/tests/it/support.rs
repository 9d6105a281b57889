//! What the tests share: a migrated database with the projector's consumer, and events.

use std::sync::Arc;

use bytes::Bytes;
use herald_broker::embedded::EmbeddedBroker;
use herald_broker::{Broker, Message};
use herald_core::Event;
use herald_core::id::UserId;
use herald_inbox::{Consumer, ConsumerOptions, Processed};
use herald_testing::TestDb;
use herald_users::{Projector, UsersState};
use serde_json::{Value, json};

pub(crate) struct Setup {
    pub(crate) state: UsersState,
    pub(crate) consumer: Consumer,
}

impl Setup {
    pub(crate) async fn new(db: &TestDb) -> Self {
        let store = db.store().clone();
        herald_store::migrate::migrate(
            &store,
            &[
                &herald_outbox::MIGRATIONS,
                &herald_broker::embedded::MIGRATIONS,
                &herald_inbox::MIGRATIONS,
                &herald_users::MIGRATIONS,
            ],
        )
        .await
        .unwrap();
        let broker: Arc<dyn Broker> = Arc::new(EmbeddedBroker::new(store.clone()));
        let options =
            ConsumerOptions::new(herald_users::CONSUMER, herald_testing::unique_name("users"));
        let consumer = Consumer::new(store.clone(), broker, options, Projector).unwrap();
        Self {
            state: UsersState { store },
            consumer,
        }
    }

    /// Processes one event as a delivery of it would be.
    pub(crate) async fn deliver(&self, event: &Event) -> Processed {
        let message = Message {
            id: event.id.clone(),
            key: event.partitionkey.clone(),
            headers: vec![("type".to_owned(), event.event_type.clone())],
            payload: Bytes::from(serde_json::to_vec(event).unwrap()),
        };
        self.consumer.handle_message(&message).await
    }

    /// Registers a user through an event and returns their id.
    pub(crate) async fn register(&self, email: &str) -> UserId {
        let id = UserId::new();
        let event = user_event("identity.user.registered", &snapshot(id, email, 1));
        assert_eq!(self.deliver(&event).await, Processed::Done);
        id
    }
}

/// A snapshot as identity writes it.
pub(crate) fn snapshot(id: UserId, email: &str, version: i64) -> Value {
    json!({
        "user_id": id,
        "email": email,
        "username": email.split('@').next().unwrap(),
        "display_name": format!("User {version}"),
        "version": version,
    })
}

pub(crate) fn user_event(event_type: &str, data: &Value) -> Event {
    let key = data["user_id"].as_str().unwrap_or("none").to_owned();
    Event::new(event_type, "/identity", data)
        .unwrap()
        .with_partition_key(key)
}
