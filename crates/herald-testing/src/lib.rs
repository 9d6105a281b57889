//! Test support: every test gets its own database, and a missing service fails loudly.
//!
//! - [`service_url`] reads a `HERALD_TEST_*_URL` variable that `scripts/test` exports, and
//!   fails the test with a message naming the variable when it is absent. Tests never skip.
//! - [`TestDb`] makes a fresh PostgreSQL database (`herald_test_<random>`, dropped afterwards)
//!   or a SQLite file in a temporary directory, so tests run in parallel without sharing rows.
//! - [`unique_name`] makes topic, stream and key-prefix names no other test uses.
//! - [`server::PrivateServer`] runs a broker of a test's own on a private port, to kill and
//!   restart it.

pub mod server;

use herald_store::{Store, StoreOptions};

/// The PostgreSQL server the tests use.
pub const POSTGRES_URL: &str = "HERALD_TEST_POSTGRES_URL";
/// The Redis server the tests use.
pub const REDIS_URL: &str = "HERALD_TEST_REDIS_URL";
/// The NATS server (with JetStream) the tests use.
pub const NATS_URL: &str = "HERALD_TEST_NATS_URL";
/// The RabbitMQ server the tests use.
pub const AMQP_URL: &str = "HERALD_TEST_AMQP_URL";
/// The Kafka bootstrap address the tests use.
pub const KAFKA_URL: &str = "HERALD_TEST_KAFKA_URL";

/// The URL in `variable`, or a panic that says how to provide it.
///
/// # Panics
/// When the variable is not set: the test needs that service and must not pass without it.
pub fn service_url(variable: &str) -> String {
    match std::env::var(variable) {
        Ok(url) if !url.is_empty() => url,
        _ => panic!(
            "{variable} is not set: this test needs that service. Run the tests with `scripts/test`, \
             which starts the services and exports their URLs, or export {variable} yourself"
        ),
    }
}

/// A name no other test run uses: `prefix_<32 hex>`.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// A database for one test.
#[derive(Debug)]
pub struct TestDb {
    store: Store,
    url: String,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    Postgres { server_url: String, name: String },
    Sqlite { _dir: tempfile::TempDir },
}

impl TestDb {
    /// A fresh, empty PostgreSQL database on the server in `HERALD_TEST_POSTGRES_URL`.
    pub async fn postgres() -> Self {
        let server_url = service_url(POSTGRES_URL);
        let name = unique_name("herald_test");
        let url = herald_store::scratch::create(&server_url, &name)
            .await
            .unwrap_or_else(|err| panic!("cannot create database {name} at {POSTGRES_URL}: {err}"));
        let store = Store::connect(&url, &StoreOptions::default())
            .await
            .unwrap_or_else(|err| panic!("cannot connect to the test database {name}: {err}"));
        Self {
            store,
            url,
            cleanup: Cleanup::Postgres { server_url, name },
        }
    }

    /// A fresh SQLite database file in a temporary directory.
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("herald.db").display());
        let store = Store::connect(&url, &StoreOptions::default())
            .await
            .unwrap_or_else(|err| panic!("cannot open the test database {url}: {err}"));
        Self {
            store,
            url,
            cleanup: Cleanup::Sqlite { _dir: dir },
        }
    }

    /// The pool.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The database's URL, for a process the test starts.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Cleanup::Postgres { server_url, name } = &self.cleanup else {
            return;
        };
        let (server_url, shown, name, store) = (
            server_url.clone(),
            name.clone(),
            name.clone(),
            self.store.clone(),
        );
        // Drop runs outside async code; use a small runtime of our own on a helper thread.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                store.close().await;
                herald_store::scratch::drop(&server_url, &name).await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("note: could not drop the test database {shown}");
        }
    }
}

/// Runs an `async fn name(db: TestDb)` test body against both engines: makes a module `name`
/// (beside the function) with tests `postgres` and `sqlite`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$name($crate::TestDb::postgres().await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::TestDb::sqlite().await).await;
                }
            }
        )+
    };
}
