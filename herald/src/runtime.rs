//! Starting the configured roles on one store and one broker, and stopping them.
//!
//! [`Runtime::start`] connects the store, applies migrations (unless `store.auto_migrate` is
//! off), builds the broker, registers readiness checks for both, starts the background roles
//! (the relay, the users service's consumer, the dispatcher, the router) and builds the HTTP
//! application with the routes of the roles that serve requests (`api`, `users`).
//! When the relay runs in the same process as the API, the API wakes it after each commit, so
//! events are published within milliseconds without the relay polling hard; likewise the API
//! wakes an in-process router after a retry or a replay.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use herald_broker::embedded::EmbeddedBroker;
use herald_broker::log::{Connect, Connecting, Log, LogBroker};
use herald_broker::{Broker, BrokerError, SubscribeOptions};
use herald_core::admin::AdminToken;
use herald_inbox::{Consumer, ConsumerOptions, Handler};
use herald_leader::{Leases, RedisLeaseOptions};
use herald_outbox::{Relay, RelayOptions};
use herald_platform::PlatformState;
use herald_store::migrate::Applied;
use herald_store::{MigrationSet, Store, StoreOptions};
use herald_telemetry::Health;
use herald_users::UsersState;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::app::{self, AppOptions};
use crate::config::{BrokerConfig, BrokerKind, Config, ConsumerConfig, LeaseConfig, Role};

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
    let mut sets = vec![
        &herald_outbox::MIGRATIONS,
        &herald_leader::MIGRATIONS,
        &herald_platform::MIGRATIONS,
    ];
    match config.broker {
        BrokerConfig::Embedded => sets.push(&herald_broker::embedded::MIGRATIONS),
        BrokerConfig::Log { .. } => sets.push(&herald_broker::log::MIGRATIONS),
    }
    sets.push(&herald_inbox::MIGRATIONS);
    sets.push(&herald_users::MIGRATIONS);
    sets.push(&herald_router::MIGRATIONS);
    sets
}

/// The configured broker, with its consumer groups' state in `store`. A real broker is
/// connected when first used, so one that is down does not stop Herald from starting:
/// readiness reports it and every role retries until it answers.
pub fn build_broker(config: &BrokerConfig, store: &Store) -> anyhow::Result<Arc<dyn Broker>> {
    let (kind, url, prefix, options, one_record_per_batch) = match config {
        BrokerConfig::Embedded => return Ok(Arc::new(EmbeddedBroker::new(store.clone()))),
        BrokerConfig::Log {
            kind,
            url,
            prefix,
            options,
            one_record_per_batch,
        } => (
            *kind,
            url.expose().clone(),
            prefix.clone(),
            options.clone(),
            *one_record_per_batch,
        ),
    };
    let connect: Connect = match kind {
        BrokerKind::Nats => Box::new(move || {
            let options = herald_broker::nats::NatsOptions::new(url.clone());
            Box::pin(async move {
                Ok(Arc::new(herald_broker::nats::connect(options).await?) as Arc<dyn Log>)
            })
        }),
        BrokerKind::Kafka => Box::new(move || {
            let mut options = herald_broker::kafka::KafkaOptions::new(url.clone());
            options.one_record_per_batch = one_record_per_batch;
            if let Some(prefix) = &prefix {
                options.topic_prefix.clone_from(prefix);
            }
            Box::pin(async move {
                Ok(
                    Arc::new(herald_broker::kafka::KafkaLog::connect(options).await?)
                        as Arc<dyn Log>,
                )
            })
        }),
        BrokerKind::Rabbitmq => Box::new(move || {
            let mut options = herald_broker::rabbitmq::RabbitMqOptions::new(url.clone());
            if let Some(prefix) = &prefix {
                options.prefix.clone_from(prefix);
            }
            Box::pin(async move {
                Ok(
                    Arc::new(herald_broker::rabbitmq::RabbitMqLog::connect(options).await?)
                        as Arc<dyn Log>,
                )
            })
        }),
        BrokerKind::Redis => Box::new(move || {
            let mut options = herald_broker::redis::RedisOptions::new(url.clone());
            if let Some(prefix) = &prefix {
                options.key_prefix.clone_from(prefix);
            }
            Box::pin(async move {
                Ok(Arc::new(herald_broker::redis::connect(options).await?) as Arc<dyn Log>)
            })
        }),
        BrokerKind::Embedded => anyhow::bail!("the embedded queue is not a log"),
    };
    let log = Arc::new(Connecting::new(kind.name(), connect));
    let broker = LogBroker::new(log, store.clone(), options)
        .context("the [broker] settings are not usable")?;
    Ok(Arc::new(broker))
}

/// The configured leases: in `store`, or in Redis (connected when first used, so a Redis that
/// is down does not stop Herald from starting: the relay campaigns until it answers).
pub fn build_leases(config: &LeaseConfig, store: &Store) -> anyhow::Result<Leases> {
    match config {
        LeaseConfig::Database => Ok(Leases::new(store.clone())),
        LeaseConfig::Redis { url, prefix } => {
            let mut options = RedisLeaseOptions::new(url.expose().clone());
            options.key_prefix.clone_from(prefix);
            Leases::redis(options).context("the relay's lease cannot be kept in Redis ([redis])")
        }
    }
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
        let broker = build_broker(&config.broker, &store)?;

        let health = Health::new();
        let check_store = store.clone();
        health.add_check("store", move || {
            let store = check_store.clone();
            async move {
                store
                    .ping()
                    .await
                    .map_err(|err| herald_core::error_chain(&err))
            }
        });
        let check_broker = broker.clone();
        health.add_check("broker", move || {
            let broker = check_broker.clone();
            async move {
                broker
                    .ping()
                    .await
                    .map_err(|err| herald_core::error_chain(&err))
            }
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
            let groups = consumer_groups(config);
            let declare_on = broker.clone();
            let relay = Arc::new(relay);
            let leases = build_leases(&config.leases, &store)?;
            if matches!(config.leases, LeaseConfig::Redis { .. }) {
                let check_leases = leases.clone();
                health.add_check("leases", move || {
                    let leases = check_leases.clone();
                    async move {
                        leases
                            .ping()
                            .await
                            .map_err(|err| herald_core::error_chain(&err))
                    }
                });
            }
            let leader = herald_leader::LeaderOptions {
                ttl: config.relay.lease_ttl.0,
                retry: (config.relay.lease_ttl.0 / 10).max(Duration::from_millis(100)),
            };
            spawn_role(&mut tasks, &shutdown, "relay", move |mut stop| async move {
                if !declare_groups(&declare_on, &groups, &mut stop).await {
                    return Ok(());
                }
                // One relay per outbox leads; the others stand by to take over.
                let holder = instance_name();
                herald_leader::lead(leases, RELAY_LEASE, &holder, leader, stop, |fence, lost| {
                    let relay = relay.clone();
                    async move { relay.run_fenced(fence, lost.wait()).await }
                })
                .await
            });
        }

        let mut wake_router = None;
        if config.roles.contains(&Role::Router) {
            let engine = herald_router::Engine::new(store.clone(), router_options(config))
                .context("cannot start the router")?;
            let waker = engine.waker();
            wake_router = Some(Arc::new(move || waker.wake()) as herald_platform::Wake);
            spawn_role(&mut tasks, &shutdown, "router", move |stop| async move {
                engine.run(stop).await
            });
        }
        if config.roles.contains(&Role::Dispatcher) {
            let consumer = consumer(
                &store,
                &broker,
                herald_router::dispatcher::CONSUMER,
                &config.dispatcher,
                herald_router::Dispatcher,
            )?;
            spawn_role(
                &mut tasks,
                &shutdown,
                "dispatcher",
                move |stop| async move { consumer.run(stop).await },
            );
        }

        let mut api = config.roles.contains(&Role::Api).then(|| {
            herald_platform::router(PlatformState {
                store: store.clone(),
                wake,
                wake_router,
            })
        });
        let mut docs = Vec::new();
        if api.is_some() {
            docs.push(<herald_platform::ApiDoc as utoipa::OpenApi>::openapi());
        }
        let mut grpc = None;
        if config.roles.contains(&Role::Users) {
            docs.push(<herald_users::ApiDoc as utoipa::OpenApi>::openapi());
            let users = UsersState {
                store: store.clone(),
            };
            let routes = herald_users::router(users.clone());
            api = Some(api.map_or(routes.clone(), |api| api.merge(routes)));
            grpc = Some(herald_users::grpc::routes(users, admin_token.clone()));
            let consumer = consumer(
                &store,
                &broker,
                herald_users::CONSUMER,
                &config.users,
                herald_users::Projector,
            )?;
            spawn_role(
                &mut tasks,
                &shutdown,
                "users consumer",
                move |stop| async move { consumer.run(stop).await },
            );
        }
        let app = app::router(AppOptions {
            health: health.clone(),
            admin_token,
            max_body_bytes: config.http.max_body_bytes,
            mode,
            api,
            grpc,
            openapi: app::openapi(docs),
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

/// The relay's lease: one per outbox, i.e. per database.
pub const RELAY_LEASE: &str = "outbox-relay";

/// This process, as a lease holder: the host, the process id and a random part (a process
/// id can come back after a restart).
fn instance_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "unknown-host".to_owned());
    let random = uuid::Uuid::now_v7().simple().to_string();
    format!(
        "{host}/{}/{}",
        std::process::id(),
        &random[random.len() - 8..]
    )
}

/// Runs a background role; `run` gets a future that completes at shutdown. Its error is
/// reported as "the `name` stopped".
fn spawn_role<F, E>(
    tasks: &mut JoinSet<anyhow::Result<()>>,
    shutdown: &watch::Receiver<bool>,
    name: &'static str,
    run: impl FnOnce(BoxedStop) -> F,
) where
    F: std::future::Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let running = run(Box::pin(crate::server::until_shutdown(shutdown.clone())));
    tasks.spawn(async move { running.await.with_context(|| format!("the {name} stopped")) });
}

/// The future a role's loop runs until.
type BoxedStop = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The (topic, group) of every consumer role of this process.
fn consumer_groups(config: &Config) -> Vec<(String, &'static str)> {
    let mut groups = Vec::new();
    if config.roles.contains(&Role::Users) {
        groups.push((config.users.topic.clone(), herald_users::CONSUMER));
    }
    if config.roles.contains(&Role::Dispatcher) {
        groups.push((
            config.dispatcher.topic.clone(),
            herald_router::dispatcher::CONSUMER,
        ));
    }
    groups
}

/// Creates the consumer groups of this process's consumers, before its relay publishes
/// anything. A group created after events were published starts after them on a log broker
/// (only a topic's first group adopts earlier events), so without this a broker that is down
/// at start-up, and comes up after the relay but before a consumer retried, would leave that
/// consumer without the events in between. Retries while the broker is unavailable; returns
/// `false` if `stop` fired first.
async fn declare_groups(
    broker: &Arc<dyn Broker>,
    groups: &[(String, &'static str)],
    stop: &mut BoxedStop,
) -> bool {
    const RETRY_MIN: Duration = Duration::from_millis(200);
    const RETRY_MAX: Duration = Duration::from_secs(5);
    for (topic, group) in groups {
        let mut wait = RETRY_MIN;
        loop {
            let subscribe = broker.subscribe(topic, group, SubscribeOptions::default());
            let result = tokio::select! {
                () = &mut *stop => return false,
                result = subscribe => result,
            };
            match result {
                // The group is kept in the broker; the consumer role subscribes again.
                Ok(subscription) => drop(subscription),
                Err(err @ BrokerError::Invalid(_)) => {
                    // The consumer itself reports this; the relay need not wait for it.
                    tracing::error!(topic, group, error = %err, "cannot create a consumer group");
                }
                Err(err) => {
                    tracing::info!(topic, group, error = %err, retry_in = ?wait,
                        "the relay waits for the broker to create its consumer groups");
                    tokio::select! {
                        () = &mut *stop => return false,
                        () = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(RETRY_MAX);
                    continue;
                }
            }
            break;
        }
    }
    true
}

/// A consumer named `name` of the topic in `section`, running `handler`.
fn consumer(
    store: &Store,
    broker: &Arc<dyn Broker>,
    name: &str,
    section: &ConsumerConfig,
    handler: impl Handler,
) -> anyhow::Result<Consumer> {
    let mut options = ConsumerOptions::new(name, &section.topic);
    options.concurrency = section.concurrency;
    options.max_deliveries = section.max_deliveries;
    options.retention = section.inbox_retention;
    options.visibility_timeout = section.visibility_timeout;
    Consumer::new(store.clone(), broker.clone(), options, handler)
        .with_context(|| format!("cannot build the {name} consumer"))
}

/// The router's options from `[router]`.
fn router_options(config: &Config) -> herald_router::EngineOptions {
    let section = &config.router;
    herald_router::EngineOptions {
        poll_interval: section.poll_interval.0,
        refresh: section.refresh_interval.0,
        request_timeout: section.request_timeout.0,
        backoff: herald_router::outcome::Backoff {
            base: section.backoff_base.0,
            max: section.backoff_max.0,
        },
        breaker: herald_router::breaker::BreakerOptions {
            threshold: section.breaker_threshold,
            cooldown: section.breaker_cooldown.0,
            max_cooldown: section.breaker_max_cooldown.0,
        },
        retention: section.retention.0,
        lease: section.lease_ttl.0,
    }
}
