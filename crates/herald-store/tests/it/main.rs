//! The store against real PostgreSQL and SQLite: connecting, pinging, migrating.

#![allow(clippy::unwrap_used)]

use herald_store::migrate::{Migration, MigrationSet, migrate};
use herald_store::{Backend, Store, StoreOptions};
use herald_testing::{TestDb, on_both_stores};

const V1_PG: &[Migration] = &[Migration {
    version: 1,
    name: "create notes",
    sql: "CREATE TABLE notes (id BIGSERIAL PRIMARY KEY, body TEXT NOT NULL); CREATE INDEX notes_body ON notes (body);",
}];
const V1_SQLITE: &[Migration] = &[Migration {
    version: 1,
    name: "create notes",
    sql: "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL); CREATE INDEX notes_body ON notes (body);",
}];
const NOTES: MigrationSet = MigrationSet {
    component: "notes",
    postgres: V1_PG,
    sqlite: V1_SQLITE,
};

const BROKEN_PG: &[Migration] = &[
    Migration {
        version: 1,
        name: "good",
        sql: "CREATE TABLE good (x INT);",
    },
    Migration {
        version: 2,
        name: "bad",
        sql: "CREATE TABLE half (x INT); SELECT * FROM missing_table;",
    },
];
const BROKEN_SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "good",
        sql: "CREATE TABLE good (x INT);",
    },
    Migration {
        version: 2,
        name: "bad",
        sql: "CREATE TABLE half (x INT); SELECT * FROM missing_table;",
    },
];
const BROKEN: MigrationSet = MigrationSet {
    component: "broken",
    postgres: BROKEN_PG,
    sqlite: BROKEN_SQLITE,
};

async fn table_exists(store: &Store, table: &str) -> bool {
    match store {
        Store::Postgres(pool) => {
            sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
                .bind(table)
                .fetch_one(pool)
                .await
                .unwrap()
        }
        Store::Sqlite(pool) => {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            )
            .bind(table)
            .fetch_one(pool)
            .await
            .unwrap()
                == 1
        }
    }
}

async fn applies_once_and_is_idempotent(db: TestDb) {
    let store = db.store();
    store.ping().await.unwrap();
    let first = migrate(store, &[&NOTES]).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(table_exists(store, "notes").await);
    let second = migrate(store, &[&NOTES]).await.unwrap();
    assert!(second.is_empty(), "nothing left to apply");
}
on_both_stores!(applies_once_and_is_idempotent);

async fn a_failing_script_leaves_nothing_half_done(db: TestDb) {
    let store = db.store();
    let err = migrate(store, &[&BROKEN]).await.unwrap_err();
    assert!(
        err.to_string().contains("broken migration 2 (bad) failed"),
        "{err}"
    );
    assert!(table_exists(store, "good").await, "version 1 stays applied");
    assert!(
        !table_exists(store, "half").await,
        "version 2 was rolled back whole"
    );
}
on_both_stores!(a_failing_script_leaves_nothing_half_done);

async fn refuses_a_database_from_a_newer_build(db: TestDb) {
    let store = db.store();
    migrate(store, &[&NOTES]).await.unwrap();
    let older = MigrationSet {
        component: "notes",
        postgres: &[],
        sqlite: &[],
    };
    let err = migrate(store, &[&older]).await.unwrap_err();
    assert!(err.to_string().contains("newer Herald"), "{err}");
}
on_both_stores!(refuses_a_database_from_a_newer_build);

async fn concurrent_migrations_apply_each_version_once(db: TestDb) {
    let runs = (0..4).map(|_| {
        let store = db.store().clone();
        tokio::spawn(async move { migrate(&store, &[&NOTES]).await.unwrap().len() })
    });
    let mut total = 0;
    for run in runs {
        total += run.await.unwrap();
    }
    assert_eq!(
        total, 1,
        "exactly one of the racing runs applied the migration"
    );
}
on_both_stores!(concurrent_migrations_apply_each_version_once);

#[tokio::test]
async fn backend_follows_the_url_and_bad_urls_are_named() {
    let pg = TestDb::postgres().await;
    assert_eq!(pg.store().backend(), Backend::Postgres);
    let lite = TestDb::sqlite().await;
    assert_eq!(lite.store().backend(), Backend::Sqlite);
    let err = Store::connect("mysql://root@127.0.0.1/x", &StoreOptions::default())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "`mysql` is not a database URL; use postgres://… or sqlite:PATH"
    );
}
