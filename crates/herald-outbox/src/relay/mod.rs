//! The relay: moves committed outbox rows to the broker, in order per partition key, and
//! deletes each row only once the broker has confirmed it.
//!
//! # The claim, and why there is no cursor
//!
//! Each round claims up to `batch_size` rows that are committed, `pending` and due
//! (`next_attempt_at <= now`), in id order, publishes them with one [`Broker::publish`] call
//! (messages in id order) and deletes them after the broker confirmed them.
//!
//! The relay never remembers "the last id it published" and never reads `id > last_seen`.
//! Ids are handed out when a row is inserted, not when its transaction commits: a transaction
//! that began first (small id) can commit after later ones (larger ids) were already relayed,
//! and a cursor would step over it for ever. The claim instead looks at every pending row each
//! round; rows leave the table when they are published, so "pending" is exactly "not yet
//! published", whatever the commit order. (Published rows are deleted, not flagged, so the
//! table and its indexes stay small.)
//!
//! - **PostgreSQL.** One transaction per round: `pg_try_advisory_xact_lock` (two relays on one
//!   outbox, say during a leader hand-over, take turns instead of interleaving a key's rows;
//!   the one that finds the lock taken treats the round as empty), then `SELECT … ORDER BY id
//!   LIMIT n FOR UPDATE SKIP LOCKED`, the publish, and `DELETE` of the published ids, then
//!   `COMMIT`. Uncommitted producer rows are invisible to the claim, so a rolled-back
//!   transaction publishes nothing. The transaction spans exactly one publish (bounded by
//!   `publish_timeout`; after a failure also one bounded ping) and locks only the claimed
//!   rows; producers are never blocked by it.
//! - **SQLite.** SQLite has one writer at a time, so holding a write transaction across the
//!   publish would stop every producer, and would deadlock outright with the embedded broker,
//!   which writes to the same database. So a round is three short steps: in a `BEGIN
//!   IMMEDIATE` transaction, select the rows and take a *lease* on them by moving their
//!   `next_attempt_at` past the publish timeout; publish with no transaction open; then delete
//!   them (or record the failure, which also ends the lease). A relay that dies mid-round
//!   leaves leased rows that become due again when the lease ends (`publish_timeout` + 40 s),
//!   and are published again. Ids are `AUTOINCREMENT`, never reused, so a delete by id cannot hit a newer row. SQLite
//!   also cannot have the commit-order trap (the writer holding the lock is the only one that
//!   can insert), but the relay does not rely on that.
//!
//! # Generations (PostgreSQL)
//!
//! A published row is deleted, and VACUUM reclaims it later, but only once no transaction
//! that began before the delete is still open. A transaction held open anywhere in the
//! database (a long report, a backup) therefore keeps every row published meanwhile in the
//! table and in its indexes, and each claim has to step over all of them: the relay gets
//! slower by the minute, and the table grows. So the outbox is partitioned (`LIST` on a
//! `generation` column, one partition `herald_outbox_g<n>` per generation), and the relay
//! empties whole partitions with `TRUNCATE`, which needs no VACUUM:
//!
//! - **Where rows go.** A row's `generation` defaults to the value of a sequence, read when
//!   the row is inserted (a sequence, not a table, so a writer with an old snapshot still sees
//!   the current value). Writers need not know about generations.
//! - **Switching.** After `rotate_after` new rows (and at most once a second) the relay
//!   creates and attaches the next partition (a lock that blocks neither reads nor writes),
//!   then, in one transaction, takes a `SHARE` lock on the outbox and moves the sequence on.
//!   Every producer that writes to the outbox holds a `ROW EXCLUSIVE` lock on it until it
//!   ends, taken before its rows' defaults are read; the `SHARE` lock waits for those in
//!   flight (up to 100 ms, else it tries later) and keeps new ones out until the switch
//!   commits. So after a switch no transaction can ever write to an older generation: it is
//!   *closed*.
//! - **Emptying.** A closed generation is drained by the claims like any other. Once it holds
//!   at most 1,000 rows (the ones waiting for a retry, and failed ones), they are moved, ids
//!   and all, into the current generation in one statement, so a slow key never pins a
//!   partition. An empty closed generation stays empty for good, so the claims stop reading
//!   it: every statement of a round reads only the generations from the lowest one that may
//!   hold rows (the *floor*) up, and PostgreSQL prunes the partitions below.
//! - **Truncating and dropping.** An empty closed generation is truncated as soon as no
//!   session holds a lock on its partition (`NOWAIT`: the relay never queues behind, or in
//!   front of, anyone), then dropped when the outbox as a whole is unlocked for an instant.
//!   A transaction held open that *read* the outbox keeps the partitions it read from being
//!   truncated or dropped until it ends, but not the generations started after it: so what a
//!   held transaction pins is bounded by what existed when it began, plus one generation.
//!
//! A relay keeps what it knows of the generations in memory only; a new relay starts with its
//! floor at 0 (reading every partition) and works the rest out from the catalog within a
//! second. SQLite has no such problem (a deleted row's space is reused at once) and keeps
//! one plain table.
//!
//! # Order per partition key
//!
//! A row is claimable only if no earlier pending row of its key is waiting (has
//! `next_attempt_at` in the future: a retry backoff or, on SQLite, another round's lease).
//! Since the claim takes the due rows in id order, the rows of a key in a batch are always the
//! key's oldest pending rows, in order, and the broker receives them in that order. Rows
//! without a key are never held back. (On PostgreSQL a row locked by some other transaction,
//! such as an operator's hand-made `UPDATE`, is skipped for that round by `SKIP LOCKED` and
//! its key's later rows are not; so don't edit the pending rows of a live outbox by hand.)
//! The claim also stops a batch before the first row that
//! has failed before (a *suspect*): a suspect is always published alone, and rows after it wait
//! for the next round, so a retry never reorders anything.
//!
//! When a row's failure is charged to it (below), the later pending rows of its key get their
//! `next_attempt_at` pushed to the row's retry time: they drop out of the claim's scan cheaply
//! instead of being looked at every round, and become due together with the row they wait
//! for. Rows of other keys keep flowing: a retrying row holds back only its own key.
//!
//! # Failures
//!
//! On a failed publish nothing is deleted, and the relay works out whose fault it was:
//!
//! - **The broker is down.** [`Broker::ping`] fails too (and the error is not
//!   [`BrokerError::Invalid`]): the rows are left as they are apart from `last_error`, and the
//!   relay backs off (exponential with jitter, from `backoff_min` to `backoff_max`) and
//!   retries. An outage charges no row an attempt, so any outage, however long, loses
//!   nothing: everything is published after the broker returns.
//! - **The broker answers but refused a batch.** One bad event may be poisoning it. The
//!   batch is retried once after a backoff (a passing glitch), and if it fails again the relay
//!   *isolates*: it publishes the rows of that batch one at a time. `BrokerError::Invalid`
//!   isolates at once.
//! - **The broker answers but refused a single row.** That failure is the row's: its
//!   `attempts` goes up, `last_error` records why, and it is retried after its own backoff
//!   (holding back its key, see above). After `max_attempts` charged failures it becomes
//!   `failed` and is never retried by the relay; its key continues with the next row. Failed
//!   rows stay in the table, with their error, for an operator.
//! - **The database fails.** The round's transaction rolls back (on SQLite, a lease taken
//!   runs out), and [`Relay::run`] logs the error, backs off and carries on.
//!
//! # Crash safety
//!
//! A row is deleted only after [`Broker::publish`] returned `Ok`, and (on PostgreSQL) in the
//! transaction that claimed it. A crash before the publish, during it, or after it but before
//! the delete committed, leaves the row pending, so it is published again: at-least-once, never
//! lost. Consumers deduplicate by message id (the event id).
//!
//! # Leadership
//!
//! Several instances may run the relay role on one outbox; `herald serve` makes them campaign
//! for one lease (`herald_leader::lead`) and only the holder runs [`Relay::run_fenced`].
//! Each of its rounds checks, first thing in the round's transaction, that the lease's token
//! is still its own ([`Fence`]); a relay that was paused past the end of its lease (while a
//! standby took over) finds a newer token when it wakes, claims nothing and stops. On
//! PostgreSQL the advisory lock above still keeps two rounds from overlapping, and a fenced
//! round sets `idle_in_transaction_session_timeout` to just over what a round may wait
//! (`publish_timeout` + 15 s), so a leader paused *inside* a round holds the others up only
//! that long: PostgreSQL then ends its session, rolling its round back. Its publish, if it
//! completes after it wakes, is a duplicate (same event ids) that consumers drop.
//!
//! # Wake-ups
//!
//! [`Relay::run`] polls adaptively: after a full batch it claims again at once; after a partial
//! batch it waits `idle_poll_min`; after an empty round it waits, doubling from `idle_poll_min`
//! up to `idle_poll_max`. A producer in the same process calls [`Waker::wake`] after its commit
//! to cut the wait short (a [`Notify`] permit, so a wake during a round is not lost either).
//! Producers never `NOTIFY` in their transactions (a global lock at commit).

mod generations;
mod postgres;
mod sqlite;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_broker::{Broker, BrokerError, Message};
use herald_leader::Fence;
use herald_store::Store;
use herald_telemetry::metrics::metrics;
use tokio::sync::Notify;

use crate::backoff::Backoff;
use crate::{OutboxError, header};

/// How long a ping may take before the broker counts as down.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the relay maintains the outbox's generations (PostgreSQL).
const MAINTAIN_EVERY: Duration = Duration::from_secs(1);
/// Consecutive failed multi-row publishes (while the broker answers) before isolating.
const ISOLATE_AFTER: u32 = 2;
/// The longest `last_error` kept on a row, in bytes.
const MAX_ERROR_LEN: usize = 2000;

/// How a [`Relay`] runs.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The broker topic events are published to.
    pub topic: String,
    /// The most events published in one batch (1 to 10000).
    pub batch_size: usize,
    /// Charged failures after which a row is set aside as `failed` (at least 1).
    pub max_attempts: u32,
    /// The first retry delay.
    pub backoff_min: Duration,
    /// The longest retry delay.
    pub backoff_max: Duration,
    /// The wait after a partial batch, and the first wait when idle.
    pub idle_poll_min: Duration,
    /// The longest wait between polls when idle.
    pub idle_poll_max: Duration,
    /// How long a publish may take before it counts as failed.
    pub publish_timeout: Duration,
    /// On PostgreSQL, the rows after which the relay starts a new generation of the outbox
    /// (see "Generations" in the module docs); 0 never starts one. It bounds how many
    /// published rows a claim may have to step over while a long transaction elsewhere
    /// keeps VACUUM from removing them.
    pub rotate_after: u64,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            topic: "herald.events".to_owned(),
            batch_size: 500,
            max_attempts: 10,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(60),
            idle_poll_min: Duration::from_millis(10),
            idle_poll_max: Duration::from_millis(250),
            publish_timeout: Duration::from_secs(30),
            rotate_after: 20_000,
        }
    }
}

/// Wakes a [`Relay`] in the same process, so it publishes now instead of at its next poll.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Waker(Arc<Notify>);

impl Waker {
    /// Tells the relay there is something to publish. Call it after the commit.
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// The outbox relay. See the [module docs](self).
#[derive(Debug)]
pub struct Relay {
    store: Store,
    broker: Arc<dyn Broker>,
    options: RelayOptions,
    backoff: Backoff,
    notify: Arc<Notify>,
    state: tokio::sync::Mutex<State>,
}

/// What the relay remembers between rounds (only how the last rounds went; never a position).
#[derive(Debug, Default)]
struct State {
    /// Consecutive rounds that failed as a whole (broker down, batch refused).
    failed_rounds: u32,
    /// Consecutive multi-row publishes refused while the broker answered.
    batch_failures: u32,
    /// Rows still to publish one at a time.
    isolate: usize,
    /// On PostgreSQL: the outbox's generations (what the claims read).
    generations: generations::Generations,
}

/// One claimed row.
#[derive(Debug)]
struct Claimed {
    id: i64,
    event_id: String,
    partition_key: Option<String>,
    event_type: String,
    source: String,
    correlation_id: Option<String>,
    traceparent: Option<String>,
    payload: Vec<u8>,
    attempts: i32,
}

/// The columns the claim selects, in order.
type ClaimedRow = (
    i64,
    String,
    Option<String>,
    String,
    String,
    Option<String>,
    Option<String>,
    Vec<u8>,
    i32,
);

impl From<ClaimedRow> for Claimed {
    fn from(row: ClaimedRow) -> Self {
        let (id, event_id, partition_key, event_type, source, correlation_id, traceparent) =
            (row.0, row.1, row.2, row.3, row.4, row.5, row.6);
        Self {
            id,
            event_id,
            partition_key,
            event_type,
            source,
            correlation_id,
            traceparent,
            payload: row.7,
            attempts: row.8,
        }
    }
}

/// How a round went.
#[derive(Debug)]
enum Outcome {
    /// Nothing was due.
    Empty,
    /// Another relay is in a round on this outbox.
    Busy,
    /// The relay's lease is no longer its own (see [`Relay::run_fenced`]): nothing was done.
    Fenced,
    /// The broker confirmed `published` rows.
    Published { published: usize, full: bool },
    /// The publish failed.
    Failed(Verdict),
}

/// Whose fault a failed publish was, and what happens next.
#[derive(Debug)]
enum Verdict {
    /// The broker does not answer: nothing is charged; the relay backs off by `wait`.
    Outage { wait: Duration },
    /// An answering broker refused a batch: retry it after `wait`.
    Retry { wait: Duration },
    /// An answering broker refused the batch again: publish its rows one at a time.
    Isolate,
    /// An answering broker refused a single row: charged to it.
    Charged(Charge),
}

/// A failure charged to one row.
#[derive(Debug)]
struct Charge {
    /// The row's attempts, this one included.
    attempts: i32,
    /// It has reached `max_attempts` and is set aside.
    failed: bool,
    /// When it is not failed: the delay before its retry.
    retry_in: Duration,
}

impl Relay {
    /// A relay moving the outbox in `store` to `broker`. Out-of-range options are clamped
    /// (`batch_size` to 1..=10000, `max_attempts` to at least 1).
    pub fn new(store: Store, broker: Arc<dyn Broker>, options: RelayOptions) -> Self {
        let mut options = options;
        options.batch_size = options.batch_size.clamp(1, 10_000);
        options.max_attempts = options.max_attempts.max(1);
        options.idle_poll_max = options.idle_poll_max.max(options.idle_poll_min);
        let backoff = Backoff {
            min: options.backoff_min,
            max: options.backoff_max,
        };
        Self {
            store,
            broker,
            options,
            backoff,
            notify: Arc::new(Notify::new()),
            state: tokio::sync::Mutex::new(State::default()),
        }
    }

    /// A handle that wakes this relay.
    pub fn waker(&self) -> Waker {
        Waker(self.notify.clone())
    }

    /// Runs rounds until `shutdown` completes. A round in progress is finished first (its
    /// publish confirmed and its rows deleted, or its failure recorded); waits are cut short.
    ///
    /// Database and broker errors do not stop the relay: it logs them, backs off and carries
    /// on, so a database or broker restart needs no restart of the relay.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), OutboxError> {
        self.run_with(None, shutdown).await
    }

    /// [`Relay::run`] as the holder of a lease (see `herald_leader::lead`): every round first
    /// checks, in its own transaction, that `fence` is still the lease's current holding, and
    /// the relay returns as soon as it is not, having claimed and published nothing in that
    /// round. So a relay that was paused past the end of its lease, while another took over,
    /// cannot publish or delete anything when it wakes up.
    pub async fn run_fenced(
        &self,
        fence: Fence,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), OutboxError> {
        self.run_with(Some(fence), shutdown).await
    }

    async fn run_with(
        &self,
        fence: Option<Fence>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), OutboxError> {
        tokio::pin!(shutdown);
        tracing::info!(
            topic = %self.options.topic,
            broker = self.broker.kind(),
            "outbox relay started"
        );
        let mut idle = self.options.idle_poll_min;
        let mut database_failures = 0u32;
        loop {
            let outcome = self.round(fence.as_ref()).await;
            if let Ok(Outcome::Fenced) = outcome {
                tracing::warn!(
                    lease = fence.as_ref().map(|f| f.name.as_str()),
                    "the relay lost the lease to another instance; it stops"
                );
                return Ok(());
            }
            let (wait, wakeable) = match outcome {
                Ok(outcome) => {
                    database_failures = 0;
                    match outcome {
                        Outcome::Published { full: true, .. }
                        | Outcome::Failed(Verdict::Isolate) => {
                            idle = self.options.idle_poll_min;
                            (Duration::ZERO, true)
                        }
                        Outcome::Published { full: false, .. } => {
                            idle = self.options.idle_poll_min;
                            (self.options.idle_poll_min, true)
                        }
                        Outcome::Empty | Outcome::Busy | Outcome::Fenced => {
                            let wait = idle;
                            idle = (idle * 2).min(self.options.idle_poll_max);
                            (wait, true)
                        }
                        Outcome::Failed(Verdict::Outage { wait } | Verdict::Retry { wait }) => {
                            (wait, false)
                        }
                        // The row waits for its own retry; a short pause keeps a broker that
                        // refuses everything from being hammered row after row.
                        Outcome::Failed(Verdict::Charged(_)) => (self.options.backoff_min, false),
                    }
                }
                Err(err) => {
                    database_failures = database_failures.saturating_add(1);
                    let wait = self.backoff.delay(database_failures);
                    tracing::warn!(
                        error = %error_chain(&err),
                        retry_in = ?wait,
                        "outbox relay round failed"
                    );
                    (wait, false)
                }
            };
            let notified = self.notify.notified();
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = tokio::time::sleep(wait) => {}
                () = notified, if wakeable => {}
            }
        }
        tracing::info!("outbox relay stopped");
        Ok(())
    }

    /// Runs one round: claims a batch, publishes it and deletes what the broker confirmed.
    /// Returns how many events were published (0 when nothing was due or the publish failed;
    /// a failure is recorded on the rows).
    pub async fn relay_once(&self) -> Result<usize, OutboxError> {
        Ok(match self.round(None).await? {
            Outcome::Published { published, .. } => published,
            Outcome::Empty | Outcome::Busy | Outcome::Fenced | Outcome::Failed(_) => 0,
        })
    }

    /// Starts, empties and drops the outbox's generations now, where it can (see
    /// "Generations" in the module docs); nothing on SQLite. [`Relay::run`] does this by itself
    /// about once a second.
    pub async fn maintain(&self) -> Result<(), OutboxError> {
        let mut state = self.state.lock().await;
        self.maintain_with(&mut state).await
    }

    async fn maintain_with(&self, state: &mut State) -> Result<(), OutboxError> {
        if let Store::Postgres(pool) = &self.store {
            state
                .generations
                .maintain(pool, self.options.rotate_after)
                .await?;
        }
        Ok(())
    }

    async fn round(&self, fence: Option<&Fence>) -> Result<Outcome, OutboxError> {
        let (outcome, floor) = {
            let mut state = self.state.lock().await;
            let due = state
                .generations
                .last_run
                .is_none_or(|at| at.elapsed() >= MAINTAIN_EVERY);
            if due && let Err(err) = self.maintain_with(&mut state).await {
                tracing::warn!(
                    error = %error_chain(&err),
                    "cannot maintain the outbox's generations; the relay carries on"
                );
            }
            let outcome = match &self.store {
                Store::Postgres(pool) => postgres::round(self, pool, &mut state, fence).await,
                Store::Sqlite(pool) => sqlite::round(self, pool, &mut state, fence).await,
            };
            (outcome, state.generations.floor)
        };
        let gauges = match &self.store {
            Store::Postgres(pool) => postgres::gauges(pool, floor).await,
            Store::Sqlite(pool) => sqlite::gauges(pool).await,
        };
        match gauges {
            Ok((lag, failed)) => {
                metrics().outbox_lag.set(lag.max(0.0));
                metrics().outbox_failed_rows.set(failed);
            }
            Err(err) => tracing::debug!(error = %err, "cannot read the outbox gauges"),
        }
        Ok(outcome?)
    }

    /// How many rows this round may claim.
    fn limit(&self, state: &State) -> usize {
        if state.isolate > 0 {
            1
        } else {
            self.options.batch_size
        }
    }

    /// Publishes `batch` (in order) with one call, within the publish timeout.
    async fn publish(&self, batch: &[Claimed]) -> Result<(), BrokerError> {
        let messages: Vec<Message> = batch.iter().map(message).collect();
        let publish = self.broker.publish(&self.options.topic, &messages);
        match tokio::time::timeout(self.options.publish_timeout, publish).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Unavailable(format!(
                "the broker did not confirm within {:?}",
                self.options.publish_timeout
            ))),
        }
    }

    /// Bookkeeping after the broker confirmed `batch` (out of `claimed` rows claimed).
    fn published(
        &self,
        batch: &[Claimed],
        claimed: usize,
        limit: usize,
        state: &mut State,
    ) -> Outcome {
        state.failed_rounds = 0;
        state.batch_failures = 0;
        state.isolate = state.isolate.saturating_sub(batch.len());
        let m = metrics();
        m.outbox_relayed.inc_by(batch.len() as u64);
        m.outbox_batch_size.observe(batch.len() as f64);
        for row in batch {
            tracing::trace!(event_id = %row.event_id, "published");
        }
        tracing::debug!(count = batch.len(), "published a batch from the outbox");
        Outcome::Published {
            published: batch.len(),
            full: claimed >= limit || batch.len() < claimed,
        }
    }

    /// Decides whose fault the failed publish of `batch` was. See the module docs.
    async fn judge(&self, err: &BrokerError, batch: &[Claimed], state: &mut State) -> Verdict {
        metrics().outbox_publish_failures.inc();
        let error = error_chain(err);
        let refused = matches!(err, BrokerError::Invalid(_));
        let answers = refused || self.ping().await;
        if !answers {
            state.failed_rounds = state.failed_rounds.saturating_add(1);
            let wait = self.backoff.delay(state.failed_rounds);
            tracing::warn!(
                count = batch.len(),
                error = %error,
                retry_in = ?wait,
                "the broker is unavailable; nothing published, retrying"
            );
            return Verdict::Outage { wait };
        }
        if let [row] = batch {
            state.isolate = state.isolate.saturating_sub(1);
            let attempts = row.attempts.saturating_add(1);
            let failed = u32::try_from(attempts).unwrap_or(u32::MAX) >= self.options.max_attempts;
            let retry_in = self.backoff.delay(u32::try_from(attempts).unwrap_or(1));
            if failed {
                tracing::error!(
                    event_id = %row.event_id,
                    attempts,
                    error = %error,
                    "the broker refused an event too many times; set aside as failed"
                );
            } else {
                tracing::warn!(
                    event_id = %row.event_id,
                    attempts,
                    error = %error,
                    retry_in = ?retry_in,
                    "the broker refused an event; its key waits for the retry"
                );
            }
            return Verdict::Charged(Charge {
                attempts,
                failed,
                retry_in,
            });
        }
        state.failed_rounds = state.failed_rounds.saturating_add(1);
        state.batch_failures = state.batch_failures.saturating_add(1);
        if refused || state.batch_failures >= ISOLATE_AFTER {
            state.batch_failures = 0;
            state.isolate = batch.len();
            tracing::warn!(
                count = batch.len(),
                error = %error,
                "the broker refused a batch again; publishing its events one at a time"
            );
            Verdict::Isolate
        } else {
            let wait = self.backoff.delay(state.failed_rounds);
            tracing::warn!(
                count = batch.len(),
                error = %error,
                retry_in = ?wait,
                "the broker refused a batch; retrying"
            );
            Verdict::Retry { wait }
        }
    }

    async fn ping(&self) -> bool {
        matches!(
            tokio::time::timeout(PING_TIMEOUT, self.broker.ping()).await,
            Ok(Ok(()))
        )
    }
}

/// How many of the claimed rows (a prefix) to publish now: all of them, but a row that failed
/// before is published alone, and the rows after it wait for the next round.
fn publishable(rows: &[Claimed]) -> usize {
    match rows.iter().position(|row| row.attempts > 0) {
        Some(0) => 1,
        Some(suspect) => suspect,
        None => rows.len(),
    }
}

fn message(row: &Claimed) -> Message {
    let mut headers = vec![
        (header::TYPE.to_owned(), row.event_type.clone()),
        (header::SOURCE.to_owned(), row.source.clone()),
    ];
    if let Some(id) = &row.correlation_id {
        headers.push((header::CORRELATION_ID.to_owned(), id.clone()));
    }
    if let Some(parent) = &row.traceparent {
        headers.push((header::TRACEPARENT.to_owned(), parent.clone()));
    }
    Message {
        id: row.event_id.clone(),
        key: row.partition_key.clone(),
        headers,
        payload: Bytes::from(row.payload.clone()),
    }
}

fn ids(rows: &[Claimed]) -> Vec<i64> {
    rows.iter().map(|row| row.id).collect()
}

/// An error and its causes, on one line, cut to [`MAX_ERROR_LEN`] bytes.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = herald_core::error_chain(err);
    if text.len() > MAX_ERROR_LEN {
        let mut end = MAX_ERROR_LEN;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, attempts: i32) -> Claimed {
        Claimed {
            id,
            event_id: format!("e{id}"),
            partition_key: None,
            event_type: "t".into(),
            source: "/s".into(),
            correlation_id: None,
            traceparent: None,
            payload: Vec::new(),
            attempts,
        }
    }

    #[test]
    fn a_suspect_is_published_alone_and_ends_the_batch() {
        assert_eq!(publishable(&[row(1, 0), row(2, 0), row(3, 0)]), 3);
        assert_eq!(publishable(&[row(1, 2), row(2, 0)]), 1);
        assert_eq!(
            publishable(&[row(1, 0), row(2, 0), row(3, 1), row(4, 0)]),
            2
        );
    }

    #[test]
    fn messages_carry_the_envelope_headers() {
        let mut claimed = row(1, 0);
        claimed.partition_key = Some("k".into());
        claimed.correlation_id = Some("c-1".into());
        claimed.payload = b"{}".to_vec();
        let message = message(&claimed);
        assert_eq!(message.id, "e1");
        assert_eq!(message.key.as_deref(), Some("k"));
        assert_eq!(message.header(header::TYPE), Some("t"));
        assert_eq!(message.header(header::SOURCE), Some("/s"));
        assert_eq!(message.header(header::CORRELATION_ID), Some("c-1"));
        assert_eq!(message.header(header::TRACEPARENT), None);
        assert_eq!(&message.payload[..], b"{}");
    }

    #[test]
    fn error_text_is_bounded() {
        let long = std::io::Error::other("é".repeat(MAX_ERROR_LEN));
        let text = error_chain(&long);
        assert!(text.len() <= MAX_ERROR_LEN);
    }
}
