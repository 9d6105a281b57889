//! Starting the configured roles on one store and one broker, and stopping them.
//!
//! [`Runtime::start`] connects the store, applies migrations (unless `store.auto_migrate` is
//! off), builds the broker, registers readiness checks for both, starts the background roles
//! (the relay, the users service's consumer) and builds the HTTP application with the routes
//! of the roles that serve requests (`api`, `users`).
//! When the relay runs in the same process as the API, the API wakes it after each commit, so
//! events are published within milliseconds without the relay polling hard.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use herald_broker::Broker;
use herald_broker::embedded::EmbeddedBroker;
use herald_core::admin::AdminToken;
use herald_inbox::{Consumer, ConsumerOptions};
use herald_outbox::{Relay, RelayOptions};
use herald_platform::PlatformState;
use herald_store::migrate::Applied;
use herald_store::{MigrationSet, Store, StoreOptions};
use herald_telemetry::Health;
use herald_users::UsersState;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::app::{self, AppOptions};
use crate::config::{BrokerConfig, Config, Role};

/// The running roles.
#[derive(Debug)]
pub struct Runtime {
    /// The HTTP application.
    pub app: Router,
    /// Readiness of the process.
    pub health: Health,
    store: Store,
    tasks: JoinSet<anyhow::Result<()>>,
}

/// Every schema the configured components need, in dependency order.
pub fn migration_sets(config: &Config) -> Vec<&'static MigrationSet> {
    let mut sets = vec![&herald_outbox::MIGRATIONS, &herald_platform::MIGRATIONS];
    match config.broker {
        BrokerConfig::Embedded {} => sets.push(&herald_broker::embedded::MIGRATIONS),
    }
    sets.push(&herald_inbox::MIGRATIONS);
    sets.push(&herald_users::MIGRATIONS);
    sets
}

/// Connects to the configured store.
pub async fn connect_store(config: &Config) -> anyhow::Result<Store> {
    let options = StoreOptions {
        max_connections: config.store.max_connections,
        ..StoreOptions::default()
    };
    Store::connect(config.store.url.expose(), &options)
        .await
        .context("cannot connect to the database given by store.url")
}

/// Applies the migrations of every configured component.
pub async fn migrate(store: &Store, config: &Config) -> anyhow::Result<Vec<Applied>> {
    let applied = herald_store::migrate::migrate(store, &migration_sets(config))
        .await
        .context("cannot migrate the database")?;
    Ok(applied)
}

impl Runtime {
    /// Starts every configured role; `shutdown` stops the background ones.
    pub async fn start(
        config: &Config,
        admin_token: Option<AdminToken>,
        mode: &'static str,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<Self> {
        let store = connect_store(config).await?;
        if config.store.auto_migrate {
            migrate(&store, config).await?;
        }
        let broker: Arc<dyn Broker> = match config.broker {
            BrokerConfig::Embedded {} => Arc::new(EmbeddedBroker::new(store.clone())),
        };

        let health = Health::new();
        let check_store = store.clone();
        health.add_check("store", move || {
            let store = check_store.clone();
            async move { store.ping().await.map_err(|err| error_chain(&err)) }
        });
        let check_broker = broker.clone();
        health.add_check("broker", move || {
            let broker = check_broker.clone();
            async move { broker.ping().await.map_err(|err| error_chain(&err)) }
        });

        let mut tasks = JoinSet::new();
        let mut wake = None;
        if config.roles.contains(&Role::Relay) {
            let relay = Relay::new(
                store.clone(),
                broker.clone(),
                RelayOptions {
                    topic: config.relay.topic.clone(),
                    batch_size: config.relay.batch_size,
                    max_attempts: config.relay.max_attempts,
                    publish_timeout: config.relay.publish_timeout.0,
                    ..RelayOptions::default()
                },
            );
            let waker = relay.waker();
            wake = Some(Arc::new(move || waker.wake()) as herald_platform::Wake);
            let stop = shutdown.clone();
            tasks.spawn(async move {
                relay
                    .run(crate::server::until_shutdown(stop))
                    .await
                    .context("the relay stopped")
            });
        }

        let mut api = config.roles.contains(&Role::Api).then(|| {
            herald_platform::router(PlatformState {
                store: store.clone(),
                wake,
            })
        });
        let mut grpc = None;
        if config.roles.contains(&Role::Users) {
            let users = UsersState {
                store: store.clone(),
            };
            let routes = herald_users::router(users.clone());
            api = Some(api.map_or(routes.clone(), |api| api.merge(routes)));
            grpc = Some(herald_users::grpc::routes(users, admin_token.clone()));
            let consumer = users_consumer(&store, &broker, config)?;
            let stop = shutdown.clone();
            tasks.spawn(async move {
                consumer
                    .run(crate::server::until_shutdown(stop))
                    .await
                    .context("the users consumer stopped")
            });
        }
        let app = app::router(AppOptions {
            health: health.clone(),
            admin_token,
            max_body_bytes: config.http.max_body_bytes,
            mode,
            api,
            grpc,
        });
        Ok(Self {
            app,
            health,
            store,
            tasks,
        })
    }

    /// Waits up to `deadline` for the background roles to finish after shutdown, then closes
    /// the store. A role that failed earlier is reported.
    pub async fn stop(mut self, deadline: Duration) -> anyhow::Result<()> {
        let finished = tokio::time::timeout(deadline, async {
            let mut first_error = None;
            while let Some(joined) = self.tasks.join_next().await {
                match joined {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        tracing::error!(error = format!("{err:#}"), "a role failed");
                        first_error.get_or_insert(err);
                    }
                    Err(err) => {
                        first_error.get_or_insert(anyhow::anyhow!("a role panicked: {err}"));
                    }
                }
            }
            first_error
        })
        .await;
        self.store.close().await;
        match finished {
            Ok(None) => Ok(()),
            Ok(Some(err)) => Err(err),
            Err(_) => {
                tracing::warn!("background roles did not stop within the shutdown timeout");
                Ok(())
            }
        }
    }
}

/// The users service's consumer of identity's events.
fn users_consumer(
    store: &Store,
    broker: &Arc<dyn Broker>,
    config: &Config,
) -> anyhow::Result<Consumer> {
    let mut options = ConsumerOptions::new(herald_users::CONSUMER, &config.users.topic);
    options.concurrency = config.users.concurrency;
    options.max_deliveries = config.users.max_deliveries;
    options.retention = config.users.inbox_retention;
    Consumer::new(
        store.clone(),
        broker.clone(),
        options,
        herald_users::Projector,
    )
    .context("cannot build the users consumer")
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
