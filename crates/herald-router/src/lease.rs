//! `Leases`: the router's hold on the dispatch jobs it claimed, kept short and renewed (a
//! heartbeat), so the jobs of a router that dies are delivered by another within seconds,
//! and never by two routers at once.
//!
//! # Claim, renew, lose
//!
//! A claim leases each job it takes until `now + lease` (the store's `locked_until`, on the
//! application's clock) under a token (`lease`) made for that claim: no other router, and no
//! other claim of this one, has it. While this router holds a job (its request in flight, or
//! claimed ahead of a free slot) the heartbeat moves `locked_until` to `now + lease` again
//! every quarter of the lease, in **one statement** for every job held ([`job::renew`]),
//! which touches only rows still `delivering` under their token. A job the
//! statement does not find there is *lost* (another router claimed it after the lease ran
//! out, or its subscription was deleted): the engine drops it and records nothing, as
//! [`job::finish`] would refuse anyway. A router that dies stops renewing, so its jobs can be
//! claimed again at most `lease` after its last renewal: that is the recovery time, not the
//! request timeout.
//!
//! # A request never overlaps another router's
//!
//! The store keeps a job this router's at least until `t + lease`, where `t` is when this
//! router sent the last statement that set `locked_until` and found the job (the claim, or a
//! renewal): the statement wrote `now + lease` with a `now` read before it was sent, and only
//! a claim by someone else, once their clock has passed `locked_until`, changes the token.
//! The router keeps that instant (`State::Until`) on its monotonic clock, per job, and:
//!
//! - starts a request only while the instant is more than a *guard* (a tenth of the lease)
//!   away (`Held::is_held`);
//! - abandons a request in flight (drops it and records nothing, `Held::run`) once the
//!   instant is only a guard away and no renewal has moved it, or as soon as a renewal finds
//!   the job lost.
//!
//! So when renewals stop (the database is unreachable, or slower than the lease) the request
//! stops a guard before the lease can lapse, and a second router can only claim the job
//! after that: the two attempts never overlap. The guard absorbs routers' clocks that
//! disagree by less than it (half a second with the default 5 s lease) and a timer that fires
//! late. A renewal may take up to `lease - guard - lease / 4` (3.25 s by default) before
//! requests in flight are abandoned for want of it. Renewals are what let a request run
//! longer than the lease; with or without them a request ends by the request timeout, so the
//! lease does not have to cover `request_timeout` up front. An abandoned request may still
//! have reached the endpoint, like a timed-out one: the job is delivered again later, by
//! whichever router claims it (at least once), but never at the same time.
//!
//! A renewal that succeeds after the guard passed (the database came back before anyone
//! claimed the job) proves that nobody else took the job, so a job waiting ahead may still
//! start; an abandoned request is not resumed, and its job is due again once `locked_until`
//! passes, for any router.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_core::id::DispatchJobId;
use herald_store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use uuid::Uuid;

use crate::engine::lock;
use crate::job::{self, Claimed};
use crate::sql::now_ms;

/// Where a held job's lease stands, as this router knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The store keeps the job this router's at least until this instant.
    Until(Instant),
    /// A renewal did not find the job under this router's token: another router may have it.
    Lost,
}

#[derive(Debug)]
struct Entry {
    lease: Uuid,
    state: Arc<watch::Sender<State>>,
}

/// The jobs this router holds, by id, with their lease. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Leases {
    length: Duration,
    held: Mutex<HashMap<DispatchJobId, Entry>>,
}

/// Why a request was abandoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lapse {
    /// A renewal found the job under another token.
    Lost,
    /// No renewal confirmed the lease in time: it could run out before the request ends.
    Expiring,
}

/// Why a renewal round failed.
#[derive(Debug, thiserror::Error)]
enum RenewError {
    #[error("the database did not answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl Leases {
    /// No job held yet; each claim lasts `length`.
    pub(crate) fn new(length: Duration) -> Arc<Self> {
        Arc::new(Self {
            length,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// The lease, in milliseconds, for a claim.
    pub(crate) fn length_ms(&self) -> i64 {
        i64::try_from(self.length.as_millis()).unwrap_or(i64::MAX / 2)
    }

    /// How long before the lease could lapse a request is abandoned, and a job no longer
    /// started.
    fn guard(&self) -> Duration {
        self.length / 10
    }

    /// Holds `job`, taken by a claim whose statement was sent at `sent`.
    pub(crate) fn hold(self: &Arc<Self>, job: &Claimed, sent: Instant) -> Held {
        let (state, _) = watch::channel(State::Until(sent + self.length));
        let state = Arc::new(state);
        lock(&self.held).insert(
            job.id,
            Entry {
                lease: job.lease,
                state: state.clone(),
            },
        );
        Held {
            leases: self.clone(),
            id: job.id,
            lease: job.lease,
            state,
        }
    }

    /// Starts the heartbeat on the runtime; it stops when the handle is dropped.
    pub(crate) fn start(self: &Arc<Self>, store: Store) -> Heartbeat {
        Heartbeat(tokio::spawn(self.clone().heartbeat(store)))
    }

    /// Renews the leases of every job held, every quarter of the lease, until aborted.
    async fn heartbeat(self: Arc<Self>, store: Store) {
        let mut tick = tokio::time::interval(self.length / 4);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            match self.renew(&store).await {
                Ok(lost) => {
                    if failing {
                        tracing::info!("the router renews the leases of its jobs again");
                        failing = false;
                    }
                    if lost > 0 {
                        tracing::warn!(
                            jobs = lost,
                            "jobs this router held are under another lease now; it drops them"
                        );
                    }
                }
                Err(err) => {
                    if !failing {
                        tracing::warn!(
                            error = herald_core::error_chain(&err),
                            "cannot renew the leases of the jobs this router holds; their \
                             requests are abandoned before the leases can run out"
                        );
                        failing = true;
                    }
                }
            }
        }
    }

    /// One renewal round: one statement for every job held (not already lost). Returns how
    /// many it found lost.
    async fn renew(&self, store: &Store) -> Result<usize, RenewError> {
        let held: Vec<(DispatchJobId, Uuid)> = lock(&self.held)
            .iter()
            .filter(|(_, entry)| *entry.state.borrow() != State::Lost)
            .map(|(id, entry)| (*id, entry.lease))
            .collect();
        if held.is_empty() {
            return Ok(0);
        }
        let sent = Instant::now();
        let until_ms = now_ms().saturating_add(self.length_ms());
        // Past the guard an answer comes too late for requests in flight; it would still
        // keep jobs ahead, but the next round does that.
        let wait = self.length.saturating_sub(self.guard());
        let kept = tokio::time::timeout(wait, job::renew(store, &held, until_ms))
            .await
            .map_err(|_| RenewError::Timeout(wait))??;
        let kept: HashSet<(DispatchJobId, Uuid)> = kept.into_iter().collect();
        let until = sent + self.length;
        let mut lost = 0;
        let entries = lock(&self.held);
        for pair in &held {
            // Given back, finished or claimed again meanwhile: not this round's business.
            let Some(entry) = entries.get(&pair.0).filter(|e| e.lease == pair.1) else {
                continue;
            };
            if kept.contains(pair) {
                entry.state.send_if_modified(|state| match state {
                    State::Until(at) if *at < until => {
                        *at = until;
                        true
                    }
                    _ => false,
                });
            } else if entry.state.send_replace(State::Lost) != State::Lost {
                lost += 1;
            }
        }
        Ok(lost)
    }
}

/// The renewal task; dropping it stops the renewals (and so, within a lease, this router's
/// hold on its jobs).
#[derive(Debug)]
pub(crate) struct Heartbeat(JoinHandle<()>);

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One job's lease, held: renewed by the heartbeat while this lives, forgotten when dropped.
#[derive(Debug)]
pub(crate) struct Held {
    leases: Arc<Leases>,
    id: DispatchJobId,
    lease: Uuid,
    state: Arc<watch::Sender<State>>,
}

impl Held {
    /// Whether a request may start: the lease is this router's for more than the guard.
    pub(crate) fn is_held(&self) -> bool {
        match *self.state.borrow() {
            State::Until(until) => Instant::now() + self.leases.guard() < until,
            State::Lost => false,
        }
    }

    /// Whether a renewal found the job under another token.
    pub(crate) fn is_lost(&self) -> bool {
        *self.state.borrow() == State::Lost
    }

    /// Runs `request` while the lease is held: `Err` (and `request` dropped, or never
    /// started) once the job is lost or its lease could lapse within the guard.
    pub(crate) async fn run<F: Future>(&self, request: F) -> Result<F::Output, Lapse> {
        let guard = self.leases.guard();
        let mut state = self.state.subscribe();
        let mut request = std::pin::pin!(request);
        loop {
            let stop = match *state.borrow_and_update() {
                State::Lost => return Err(Lapse::Lost),
                State::Until(until) => until.checked_sub(guard).unwrap_or(until),
            };
            if Instant::now() >= stop {
                return Err(Lapse::Expiring);
            }
            tokio::select! {
                biased;
                answer = &mut request => return Ok(answer),
                changed = state.changed() => {
                    if changed.is_err() {
                        // Cannot happen (`self` keeps the sender); be safe if it did.
                        return Err(Lapse::Lost);
                    }
                }
                // Looks again: a renewal may have moved the lease just now.
                () = tokio::time::sleep_until(stop) => {}
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut held = lock(&self.leases.held);
        if held
            .get(&self.id)
            .is_some_and(|entry| entry.lease == self.lease)
        {
            held.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed() -> Claimed {
        Claimed {
            id: DispatchJobId::new(),
            event_id: "e1".to_owned(),
            attempts: 0,
            budget_from: 0,
            lease: Uuid::now_v7(),
            body: None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_runs_while_renewed_and_stops_a_guard_before_the_lease() {
        let leases = Leases::new(Duration::from_secs(4));
        let job = claimed();
        let held = leases.hold(&job, Instant::now());
        assert!(held.is_held());
        // Unrenewed, a long request is cut a guard (0.4 s) before the lease's 4 s.
        let started = Instant::now();
        let run = held.run(tokio::time::sleep(Duration::from_secs(60))).await;
        assert_eq!(run, Err(Lapse::Expiring));
        assert_eq!(started.elapsed(), Duration::from_millis(3600));
        assert!(
            !held.is_held(),
            "no request starts this close to the lease's end"
        );

        // Renewed (as the heartbeat does when the store still has the job), it runs on.
        held.state
            .send_replace(State::Until(Instant::now() + leases.length));
        assert!(held.is_held());
        let renewing = async {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                held.state
                    .send_replace(State::Until(Instant::now() + leases.length));
            }
        };
        let (run, ()) = tokio::join!(
            held.run(tokio::time::sleep(Duration::from_secs(8))),
            renewing
        );
        assert_eq!(run, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_lease_stops_the_request_at_once() {
        let leases = Leases::new(Duration::from_secs(4));
        let held = leases.hold(&claimed(), Instant::now());
        let losing = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            held.state.send_replace(State::Lost);
        };
        let started = Instant::now();
        let (run, ()) = tokio::join!(
            held.run(tokio::time::sleep(Duration::from_secs(60))),
            losing
        );
        assert_eq!(run, Err(Lapse::Lost));
        assert_eq!(started.elapsed(), Duration::from_millis(500));
        assert!(held.is_lost() && !held.is_held());
    }

    #[tokio::test]
    async fn dropping_a_held_job_forgets_it_but_not_a_newer_hold() {
        let leases = Leases::new(Duration::from_secs(4));
        let job = claimed();
        let first = leases.hold(&job, Instant::now());
        let again = Claimed {
            lease: Uuid::now_v7(),
            ..job.clone()
        };
        let second = leases.hold(&again, Instant::now());
        drop(first);
        assert_eq!(lock(&leases.held).len(), 1, "the newer hold stays");
        drop(second);
        assert!(lock(&leases.held).is_empty());
    }
}
