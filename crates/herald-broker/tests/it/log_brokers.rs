//! [`LogBroker`] on each real broker (and on the in-memory test log), for the conformance
//! suite: the group state on a fresh PostgreSQL database, the log from the backend's own test
//! module (which isolates and tidies its names).

use std::sync::Arc;

use herald_broker::Broker;
use herald_broker::log::{Log, LogBroker, LogOptions, MIGRATIONS};
use herald_testing::TestDb;

/// A broker on `log`, its groups in a fresh PostgreSQL database that lives as long as the
/// returned guard.
pub(crate) async fn on_log(log: Arc<dyn Log>) -> (Arc<dyn Broker>, TestDb) {
    let db = TestDb::postgres().await;
    herald_store::migrate::migrate(db.store(), &[&MIGRATIONS])
        .await
        .unwrap();
    let broker = LogBroker::new(log, db.store().clone(), LogOptions::default()).unwrap();
    (Arc::new(broker), db)
}

pub(crate) async fn on_memory() -> (Arc<dyn Broker>, TestDb) {
    on_log(crate::memory_log::log().await).await
}

pub(crate) async fn on_redis() -> (Arc<dyn Broker>, TestDb) {
    on_log(crate::redis::connect().await).await
}

pub(crate) async fn on_rabbitmq() -> (Arc<dyn Broker>, TestDb) {
    on_log(crate::rabbitmq::connect().await).await
}

pub(crate) async fn on_nats() -> (Arc<dyn Broker>, TestDb) {
    on_log(crate::nats::connect().await).await
}

pub(crate) async fn on_kafka() -> (Arc<dyn Broker>, TestDb) {
    on_log(crate::kafka::connect().await).await
}
