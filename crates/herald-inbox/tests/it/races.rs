//! Two consumers racing on one event id, in parallel: the primary key decides, so the effect
//! happens once. On PostgreSQL the test sees the second insert actually waiting on the first
//! transaction before it lets the first one finish.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use herald_broker::BoxFuture;
use herald_core::Event;
use herald_inbox::{Consumer, Handler, HandlerError, Processed, Tx};
use herald_store::Store;
use herald_testing::{TestDb, on_both_stores};
use tokio::sync::{Barrier, watch};

use crate::support::{PATIENCE, Setup, event, message, record_effect, wait_until};

on_both_stores!(
    racing_consumers_make_one_effect,
    a_rolled_back_winner_lets_the_other_run,
);

/// Records the effect, then holds its transaction open until released. Fails its first call
/// when `fail_first` is set.
#[derive(Clone)]
struct Gate {
    calls: Arc<AtomicU32>,
    release: watch::Receiver<bool>,
    fail_first: bool,
}

impl Handler for Gate {
    fn handle<'a>(
        &'a self,
        event: &'a Event,
        mut tx: Tx<'a>,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let call = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            record_effect(&mut tx, event).await?;
            let mut release = self.release.clone();
            tokio::time::timeout(PATIENCE, release.wait_for(|released| *released))
                .await
                .map_err(|_| HandlerError::transient("never released"))?
                .map_err(|_| HandlerError::transient("the test ended"))?;
            if self.fail_first && call == 1 {
                return Err(HandlerError::transient("the first attempt fails"));
            }
            Ok(())
        })
    }
}

/// Runs the same message through two consumer instances at once and returns both outcomes
/// and the number of handler calls.
async fn race(db: &TestDb, fail_first: bool) -> (Setup, Vec<Processed>, u32) {
    let setup = Setup::new(db).await;
    let (release, released) = watch::channel(false);
    let gate = Gate {
        calls: Arc::default(),
        release: released,
        fail_first,
    };
    // Two instances of one consumer (same name), as in two processes.
    let instances: Vec<Consumer> = (0..2)
        .map(|_| setup.consumer(setup.options(), gate.clone()))
        .collect();
    let incoming = message(&event(Some("K"), 1));
    let barrier = Arc::new(Barrier::new(2));
    let tasks: Vec<_> = instances
        .into_iter()
        .map(|consumer| {
            let (barrier, incoming) = (barrier.clone(), incoming.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                consumer.handle_message(&incoming).await
            })
        })
        .collect();

    wait_until("one handler to start", PATIENCE, || async {
        gate.calls.load(Ordering::SeqCst) >= 1
    })
    .await;
    if let Store::Postgres(pool) = &setup.store {
        // The other instance's insert waits on the first transaction's row lock.
        wait_until(
            "the second insert to wait for the first",
            PATIENCE,
            || async {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock' \
                 AND query LIKE 'INSERT INTO herald_inbox%'",
                )
                .fetch_one(pool)
                .await
                .unwrap();
                waiting >= 1
            },
        )
        .await;
        assert_eq!(
            gate.calls.load(Ordering::SeqCst),
            1,
            "only one handler runs"
        );
    }
    release.send(true).unwrap();

    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap());
    }
    let calls = gate.calls.load(Ordering::SeqCst);
    (setup, outcomes, calls)
}

async fn racing_consumers_make_one_effect(db: TestDb) {
    let (setup, mut outcomes, calls) = race(&db, false).await;
    outcomes.sort_by_key(|o| matches!(o, Processed::Duplicate));
    assert_eq!(outcomes, [Processed::Done, Processed::Duplicate]);
    assert_eq!(calls, 1);
    assert_eq!(setup.effects().await.len(), 1);
}

async fn a_rolled_back_winner_lets_the_other_run(db: TestDb) {
    let (setup, mut outcomes, calls) = race(&db, true).await;
    outcomes.sort_by_key(|o| matches!(o, Processed::Done));
    assert_eq!(
        outcomes,
        [
            Processed::Failed {
                error: "the first attempt fails".to_owned(),
                permanent: false,
            },
            Processed::Done,
        ]
    );
    assert_eq!(
        calls, 2,
        "the second instance ran the handler after the rollback"
    );
    assert_eq!(setup.effects().await.len(), 1);
}
